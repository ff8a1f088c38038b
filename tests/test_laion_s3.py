"""The LAION pipeline with everything on S3 (moto's server on loopback, s3fs): embeddings read
through fsspec, per-shard results written atomically to an S3 work folder by a 2-worker Dask
cluster, the keep-list streamed to S3; a rerun finds every shard done."""

from __future__ import annotations

import numpy as np
from dp4tl_data.plugins.laion_emb import list_parts
from test_keeplist_s3 import s3  # noqa: F401, F811  (the moto server fixture)

from benchmarks.laiongen import write_laion
from dp4tl_data.distributed import done_shards, run_assignment, write_keeplist
from dp4tl_data.keeplist import KeepList


def test_pipeline_on_s3(s3, tmp_path):  # noqa: F811
    import s3fs

    opts = s3
    fs = s3fs.S3FileSystem(**opts)
    fs.mkdir("laion")
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
