"""Dask assignment on a simulated LAION: a 2-worker LocalCluster (reached by its scheduler
address, as a real cluster is) writes the same keep-list as one process, and it is the planted
answer; a failed shard, a killed run and a killed worker all resume without recomputing."""

import os
import shutil
import sys

import cloudpickle
import numpy as np
import pytest
from dp4tl_data.plugins.laion_emb import list_parts

from benchmarks.laiongen import write_laion
from dp4tl_data.cluster import kmeans
from dp4tl_data.distributed import (
    AssignmentError,
    assign_part,
    done_shards,
    run_assignment,
    sample_embeddings,
    write_keeplist,
)
from dp4tl_data.errors import StateError
from dp4tl_data.keeplist import KeepList
from dp4tl_data.scale import select_clusters, vote_clusters

TARGET = [1, 4]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return write_laion(str(tmp_path_factory.mktemp("laion")), nshards=6, per_shard=400, dim=16, tars=False, seed=7)


@pytest.fixture(scope="module")
def plan(sim):
    """k-means on a sample (2x over-clustered) and the clusters the target votes for."""
    parts = list_parts(sim.emb_root)
    sample = sample_embeddings(parts, 1200, seed=0, per_shard=300)
    assert sample.shape == (1200, 16) and sample.dtype == np.float32
    centroids = kmeans(sample, 16, niter=25, seed=0).centroids
    kept = select_clusters(vote_clusters(sim.targets(TARGET, 300), centroids))
    return centroids, kept


@pytest.fixture(scope="module")
def reference(sim, plan, tmp_path_factory):
    """The single-process result."""
    centroids, kept = plan
    work = str(tmp_path_factory.mktemp("ref") / "work")
    parts = list_parts(sim.emb_root)
    rep = run_assignment(parts, centroids, work, engine="local", source=sim.emb_root)
    assert rep.done == sim.shards and rep.samples == sim.num_samples and not rep.skipped
    url = write_keeplist(work, [p.name for p in parts], kept, work + "/keep.json")
    return KeepList.load(url)


def _assert_planted(keep, sim):
    truth = sim.masks(set(TARGET))
    for name in sim.shards:
        want = {sim.keys[name][i] for i in np.flatnonzero(truth[name])}
        got = (
            set()
            if not keep.keeps_shard(name)
            else {sim.keys[name][i] for i in np.flatnonzero(keep.shards[name].mask())}
        )
        assert got == want, name


def test_single_process_finds_the_planted_answer(reference, sim):
    _assert_planted(reference, sim)
    assert reference.provenance["method"] == "laion-nearest-cluster"
    assert reference.provenance["num_samples"] == sim.num_samples


def test_local_cluster_of_two_workers_is_identical(sim, plan, reference, tmp_path):
    from distributed import LocalCluster

    centroids, kept = plan
    parts = list_parts(sim.emb_root)
    seen = []
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=False,
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": ":0"},
    ) as cluster:
        rep = run_assignment(
            parts,
            centroids,
            str(tmp_path / "work"),
            scheduler=cluster.scheduler_address,
            source=sim.emb_root,
            progress=lambda name, ok: seen.append((name, ok)),
        )
    assert rep.workers == 2 and sorted(rep.done) == sim.shards and rep.samples == sim.num_samples
    assert sorted(seen) == [(n, True) for n in sim.shards]
    keep = KeepList.load(write_keeplist(str(tmp_path / "work"), sim.shards, kept, str(tmp_path / "keep.json")))
    assert keep.fingerprint == reference.fingerprint
    assert keep.source_fingerprint == reference.source_fingerprint
    for name in reference.shards:
        assert np.array_equal(keep.shards[name].mask(), reference.shards[name].mask())


def test_failed_shard_is_reported_and_rerun_resumes(sim, plan, reference, tmp_path):
    centroids, kept = plan
    root = str(tmp_path / "laion")
    shutil.copytree(sim.emb_root, root)
    emb = f"{root}/img_emb/img_emb_3.npy"
    good = np.load(emb)
    bad = good.copy()
    bad[[5, 9]] = np.nan
    np.save(emb, bad)
    work = str(tmp_path / "work")
    with pytest.raises(
        AssignmentError,
        match=r"1 of 6 shards failed .* '00003.tar': PrunerError: .*img_emb_3\.npy: 2 rows hold NaN or inf \(first at row 5\)",
    ):
        run_assignment(list_parts(root), centroids, work, engine="local", source=root)
    assert done_shards(work) == set(sim.shards) - {"00003.tar"}
    with pytest.raises(StateError, match="1 shards have no assignment yet .*'00003.tar'"):
        write_keeplist(work, sim.shards, kept, str(tmp_path / "keep.json"))
    np.save(emb, good)  # fixed
    rep = run_assignment(list_parts(root), centroids, work, engine="local", source=root)
    assert rep.done == ["00003.tar"] and len(rep.skipped) == 5
    keep = KeepList.load(write_keeplist(work, sim.shards, kept, str(tmp_path / "keep.json")))
    assert keep.fingerprint == reference.fingerprint


def test_work_folder_refuses_other_centroids_or_source(sim, plan, tmp_path):
    centroids, _ = plan
    parts = list_parts(sim.emb_root)[:1]
    work = str(tmp_path / "work")
    run_assignment(parts, centroids, work, engine="local", source="a")
    with pytest.raises(StateError, match="results were made for centroids"):
        run_assignment(parts, centroids + 1, work, engine="local", source="a")
    with pytest.raises(StateError, match="results were made for source a"):
        run_assignment(parts, centroids, work, engine="local", source="b")


def test_row_count_mismatch_fails_its_shard(sim, plan, tmp_path):
    import pyarrow.parquet as pq

    centroids, _ = plan
    root = str(tmp_path / "laion")
    shutil.copytree(sim.emb_root, root)
    meta = f"{root}/metadata/metadata_2.parquet"
    pq.write_table(pq.read_table(meta).slice(1), meta)
    with pytest.raises(AssignmentError, match=r"'00002.tar': ShardError: .*img_emb_2\.npy: \d+ embedding rows, but"):
        run_assignment(list_parts(root), centroids, str(tmp_path / "w"), engine="local")


def test_interrupted_run_resumes_without_recomputing(sim, plan, reference, tmp_path):
    centroids, kept = plan
    parts = list_parts(sim.emb_root)
    work = str(tmp_path / "work")

    class StopRunError(Exception):
        pass

    def stop_after_two(name, ok):
        if len(done_shards(work)) == 2:
            raise StopRunError  # the driver dies mid-run

    with pytest.raises(StopRunError):
        run_assignment(parts, centroids, work, engine="local", progress=stop_after_two)
    assert len(done_shards(work)) == 2
    assert not [f for f in os.listdir(f"{work}/parts") if f.startswith(".tmp")]
    rep = run_assignment(parts, centroids, work, engine="local")
    assert len(rep.skipped) == 2 and len(rep.done) == 4
    keep = KeepList.load(write_keeplist(work, sim.shards, kept, str(tmp_path / "keep.json")))
    assert keep.fingerprint == reference.fingerprint


def die_once(part, centroids, work, so, threads):
    """The real task, except that the first attempt at shard 00002 kills its worker process."""
    marker = os.path.join(work, "killed")
    if part.name == "00002.tar":
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            pass
        else:
            os._exit(1)
    return assign_part(part, centroids, work, so, threads)


def test_worker_killed_mid_run_is_not_an_error(sim, plan, reference, tmp_path):
    centroids, kept = plan
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    work = str(tmp_path / "work")
    rep = run_assignment(list_parts(sim.emb_root), centroids, work, n_workers=2, processes=True, task=die_once)
    assert os.path.exists(os.path.join(work, "killed"))  # a worker did die
    assert sorted(rep.done) == sim.shards and not rep.failed
    keep = KeepList.load(write_keeplist(work, sim.shards, kept, str(tmp_path / "keep.json")))
    assert keep.fingerprint == reference.fingerprint


def test_keeplist_streams_through_webdataset_with_the_tar_index(tmp_path):
    """The list made from embeddings carries the fingerprint of a SourceIndex of the tars, and
    PrunedStream over the img2dataset tars yields exactly the planted samples."""
    import webdataset as wds
    from dp4tl_data.plugins.wds_index import index_shards

    from dp4tl_data import PrunedStream

    sim = write_laion(str(tmp_path / "laion"), nshards=3, per_shard=120, dim=16, seed=8)
    work = str(tmp_path / "work")
    run_assignment(list_parts(sim.emb_root), sim.centers, work, engine="local")
    keep = KeepList.load(write_keeplist(work, sim.shards, TARGET, str(tmp_path / "keep.json")))
    urls = sorted(str(tmp_path / "laion" / "images" / n) for n in sim.shards)
    idx = index_shards(urls, progress=False)
    assert idx.fingerprint == keep.source_fingerprint
    got = [s["__key__"] for s in PrunedStream(wds.WebDataset(urls, shardshuffle=False), keep, index=idx)]
    truth = sim.masks(set(TARGET))
    assert sorted(got) == sorted(sim.keys[n][i] for n in sim.shards for i in np.flatnonzero(truth[n]))
