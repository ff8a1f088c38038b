"""Keep-list round trip through a real S3-compatible server on loopback (moto) and s3fs."""

from __future__ import annotations

import urllib.request

import moto.server as moto_server
import numpy as np
import pytest

from dp4tl_data import KeepList


@pytest.fixture
def s3(monkeypatch):
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # moto keeps its buckets in process-wide state: start every test from an empty server
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST"))
    for k, v in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    opts = {"client_kwargs": {"endpoint_url": f"http://{host}:{port}"}, "use_listings_cache": False}
    import s3fs

    fs = s3fs.S3FileSystem(**opts)
    fs.mkdir("lists")
    yield opts
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def test_round_trip_through_s3(s3):
    masks = {f"laion/{i:05d}.tar": np.arange(500) % (i + 2) == 0 for i in range(4)}
    keep = KeepList.from_masks(masks, method="fm", source_fingerprint="c" * 64)
    keep.save("s3://lists/fm/keep.json", **s3)
    back = KeepList.load("s3://lists/fm/keep.json", **s3)
    assert back.fingerprint == keep.fingerprint and back.source_fingerprint == "c" * 64
    for name, m in masks.items():
        assert np.array_equal(back.shard(name).mask(), m)
