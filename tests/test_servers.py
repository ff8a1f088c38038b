"""The loopback HTTP server itself honours byte ranges (fsspec's http reads depend on it)."""

import fsspec


def test_range_reads_and_counters(http_dir):
    root, srv = http_dir
    data = bytes(range(256)) * 4000
    with open(f"{root}/blob.bin", "wb") as f:
        f.write(data)
    fs = fsspec.filesystem("http")
    url = f"{srv.url}/blob.bin"
    assert fs.cat_file(url, start=1000, end=1010) == data[1000:1010]
    assert fs.size(url) == len(data)
    srv.reset()
    assert fs.cat_file(url, start=5, end=6) == data[5:6]
    assert srv.bytes_sent["/blob.bin"] == 1
