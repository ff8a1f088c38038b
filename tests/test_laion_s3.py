"""The LAION pipeline with everything on S3 (moto's server on loopback, s3fs): embeddings read
through fsspec, per-shard results written atomically to an S3 work folder by a 2-worker Dask
cluster, the keep-list streamed to S3; a rerun finds every shard done."""

from __future__ import annotations

import moto.server as moto_server
import numpy as np
import pytest
from dp4tl_data.plugins.laion_emb import list_parts

from benchmarks.laiongen import write_laion
from dp4tl_data.distributed import done_shards, run_assignment, write_keeplist
from dp4tl_data.keeplist import KeepList


@pytest.fixture
def s3(monkeypatch):
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for k, v in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    opts = {"client_kwargs": {"endpoint_url": f"http://{host}:{port}"}, "use_listings_cache": False}
    import s3fs

    fs = s3fs.S3FileSystem(**opts)
    fs.mkdir("laion")
    yield fs, opts
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def test_pipeline_on_s3(s3, tmp_path):
    fs, opts = s3
    sim = write_laion(str(tmp_path / "laion"), nshards=4, per_shard=150, dim=16, tars=False, seed=4)
    fs.put(sim.emb_root, "laion/emb", recursive=True)
    parts = list_parts("s3://laion/emb", storage_options=opts)
    assert [p.name for p in parts] == sim.shards and parts[0].emb_url.startswith("s3://laion/emb/img_emb/")
    work = "s3://laion/work"
    rep = run_assignment(
        parts, sim.centers, work, n_workers=2, processes=False, storage_options=opts, source="s3://laion/emb"
    )
    assert sorted(rep.done) == sim.shards and rep.workers == 2
    assert done_shards(work, **opts) == set(sim.shards)
    assert not [f for f in fs.ls("laion/work/parts") if ".tmp-" in f]
    url = write_keeplist(work, sim.shards, [2, 6], "s3://laion/keep.json", storage_options=opts)
    keep = KeepList.load(url, **opts)
    for name, m in sim.masks({2, 6}).items():
        if m.any():
            assert np.array_equal(keep.shards[name].mask(), m)
    again = run_assignment(parts, sim.centers, work, engine="local", storage_options=opts, source="s3://laion/emb")
    assert again.done == [] and again.skipped == sim.shards
