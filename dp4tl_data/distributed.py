"""Nearest-centroid assignment of every embedding, shard by shard, on Dask distributed.

One task per shard reads its embeddings, checks them, assigns each row to its nearest centroid
(faiss) and writes the cluster ids to ``WORK/parts/<shard>.npz`` atomically (a temporary file,
then a rename). So a rerun skips every shard already done, a worker that dies mid-run only
costs its in-flight shards (Dask reschedules them), and a run that is killed resumes.

    WORK/run.json         format, version, centroid hash, k, dim, source: what the results mean
    WORK/centroids.npy    the centroids the results were computed with
    WORK/parts/*.npz      per shard: ``ids`` (cluster per sample, shard order), ``digest``, ``rows``

Shards are any objects with a ``name``, ``read()`` (the embedding matrix) and ``digest()``
(what the shard adds to the source fingerprint), e.g. `dp4tl_data.plugins.laion_emb.EmbeddingPart`.
Bad input (NaN rows, row counts that disagree) fails its shard at once with the file named;
I/O errors are retried. Dask is imported only when used (the ``[laion]`` extra).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import logging
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import fsspec
import numpy as np

from .cluster import assign, check_features
from .errors import Dp4tlError, StateError, require
from .scale import KeepListWriter

log = logging.getLogger(__name__)

FORMAT = "dp4tl-assign"
VERSION = 1
ENGINES = ("dask", "local")


class Part(Protocol):
    """A shard of embeddings, as the assignment sees it."""

    name: str

    def read(self) -> np.ndarray: ...

    def digest(self) -> bytes: ...


class AssignmentError(Dp4tlError):
    """Some shards could not be assigned; the others' results are kept, so a rerun resumes."""

    def __init__(self, message: str, report: AssignReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class AssignReport:
    """What a run did: shards assigned now, skipped (done before), failed (name -> error)."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    samples: int = 0
    seconds: float = 0.0
    workers: int = 1

    @property
    def throughput(self) -> float:
        """Embeddings assigned per second in this run."""
        return self.samples / self.seconds if self.seconds > 0 else 0.0


def source_fingerprint(digests: Iterable[tuple[str, bytes]]) -> str:
    """The source fingerprint from ``(shard name, shard digest)`` pairs: SourceIndex's definition
    (sha256 over the shard digests in name order), so the two agree on the same shards."""
    h = hashlib.sha256()
    for _, d in sorted(digests):
        h.update(d)
    return h.hexdigest()


def centroid_hash(centroids: np.ndarray) -> str:
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    return hashlib.sha256(f"{c.shape}".encode() + c.tobytes()).hexdigest()


# --------------------------------------------------------------------------- work folder


def _result_name(shard: str) -> str:
    return urllib.parse.quote(shard, safe="") + ".npz"


def _shard_of(result: str) -> str | None:
    base = result.rstrip("/").rsplit("/", 1)[-1]
    return urllib.parse.unquote(base[: -len(".npz")]) if base.endswith(".npz") else None


def prepare_work(work: str, centroids: np.ndarray, source: str, **storage_options: Any) -> dict[str, Any]:
    """Create `work` for these centroids and this source, or check that it was made for them."""
    fs, path = fsspec.core.url_to_fs(work, **storage_options)
    run = {
        "format": FORMAT,
        "version": VERSION,
        "centroids": centroid_hash(centroids),
        "k": int(centroids.shape[0]),
        "dim": int(centroids.shape[1]),
        "source": source,
    }
    if fs.exists(f"{path}/run.json"):
        with fs.open(f"{path}/run.json", "rb") as f:
            try:
                found = json.loads(f.read(1 << 20))
            except ValueError as exc:
                raise StateError(f"{work}/run.json: corrupt ({exc})") from None
        if not isinstance(found, dict) or found.get("format") != FORMAT or found.get("version") != VERSION:
            raise StateError(f"{work}/run.json: not a dp4tl assignment folder of version {VERSION}")
        for k in ("centroids", "source", "k", "dim"):
            if found.get(k) != run[k]:
                raise StateError(
                    f"{work}: results were made for {k} {str(found.get(k))[:16]}, this run has {str(run[k])[:16]}; "
                    "use another work folder"
                )
        return found
    fs.makedirs(f"{path}/parts", exist_ok=True)
    _atomic_write(fs, f"{path}/centroids.npy", _npy_bytes(np.asarray(centroids, dtype=np.float32)))
    _atomic_write(fs, f"{path}/run.json", json.dumps(run, indent=1, sort_keys=True).encode())
    return run


def load_centroids(work: str, **storage_options: Any) -> np.ndarray:
    """The centroids a work folder was made with."""
    with fsspec.open(f"{work}/centroids.npy", "rb", **storage_options) as f:
        return np.load(f, allow_pickle=False)  # type: ignore[no-any-return]


def done_shards(work: str, **storage_options: Any) -> set[str]:
    """Shards whose result file exists in `work` (one listing, no reads)."""
    fs, path = fsspec.core.url_to_fs(work, **storage_options)
    try:
        files = fs.ls(f"{path}/parts", detail=False)
    except FileNotFoundError:
        return set()
    return {s for s in (_shard_of(f) for f in files) if s is not None}


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _atomic_write(fs: Any, path: str, data: bytes) -> None:
    tmp = f"{path.rsplit('/', 1)[0]}/.tmp-{uuid.uuid4().hex}"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)


def write_result(work: str, name: str, ids: np.ndarray, digest: bytes, **storage_options: Any) -> None:
    """Write one shard's cluster ids atomically."""
    fs, path = fsspec.core.url_to_fs(work, **storage_options)
    buf = io.BytesIO()
    np.savez(buf, ids=ids, digest=np.frombuffer(digest, dtype=np.uint8), rows=np.int64(len(ids)))
    _atomic_write(fs, f"{path}/parts/{_result_name(name)}", buf.getvalue())


def read_result(work: str, name: str, k: int, **storage_options: Any) -> tuple[np.ndarray, bytes]:
    """(cluster ids, digest) of one shard; StateError when missing or inconsistent."""
    url = f"{work}/parts/{_result_name(name)}"
    try:
        with fsspec.open(url, "rb", **storage_options) as f:
            data = np.load(io.BytesIO(f.read()), allow_pickle=False)
            ids, digest, rows = data["ids"], data["digest"].tobytes(), int(data["rows"])
    except FileNotFoundError:
        raise StateError(f"{url}: shard {name!r} has no assignment yet; rerun the assignment to finish it") from None
    except (ValueError, KeyError, OSError) as exc:
        raise StateError(f"{url}: corrupt result ({exc})") from None
    if ids.ndim != 1 or len(ids) != rows or len(digest) != 32:
        raise StateError(f"{url}: corrupt result (shape {ids.shape}, rows {rows})")
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= k):
        raise StateError(f"{url}: cluster ids outside [0, {k})")
    return ids, digest


# --------------------------------------------------------------------------- k-means sample


def sample_embeddings(parts: Sequence[Part], n: int, *, seed: int = 0, per_shard: int = 1000) -> np.ndarray:
    """About `n` embeddings (float32) for k-means: up to `per_shard` random rows from each of
    ``ceil(n / per_shard)`` shards drawn at random (seeded), so only those shards are read."""
    if n < 1 or not parts:
        raise Dp4tlError(f"cannot sample {n} embeddings from {len(parts)} shards")
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(parts))[: min(len(parts), -(-n // per_shard))]
    out = []
    for i in sorted(chosen.tolist()):
        p = parts[i]
        x = check_features(p.read(), getattr(p, "emb_url", p.name))
        out.append(x[np.sort(rng.permutation(len(x))[:per_shard])])
    sample = np.concatenate(out)
    if len(sample) > n:
        sample = sample[np.sort(rng.permutation(len(sample))[:n])]
    return sample


# --------------------------------------------------------------------------- the task


def assign_part(
    part: Part, centroids: np.ndarray, work: str, storage_options: Mapping[str, Any], threads: int | None
) -> dict[str, Any]:
    """Assign one shard and write its result. Bad input is returned as an error (no retry);
    other exceptions (I/O) propagate, so Dask retries them."""
    if threads is not None:
        faiss = require("faiss", "laion")
        faiss.omp_set_num_threads(threads)  # type: ignore[attr-defined]
    try:
        raw = part.read()
        x = check_features(raw, getattr(part, "emb_url", part.name), dim=centroids.shape[1])
        digest = part.digest()
        ids, _ = assign(x, centroids)
    except Dp4tlError as exc:
        return {"name": part.name, "error": f"{type(exc).__name__}: {exc}"}
    small = ids.astype(np.uint16 if len(centroids) <= 65536 else np.int32)
    write_result(work, part.name, small, digest, **storage_options)
    return {"name": part.name, "rows": len(ids)}


# --------------------------------------------------------------------------- the run


@dataclass
class _Run:
    """One assignment run: what every task gets, and the report it fills."""

    centroids: np.ndarray
    work: str
    so: dict[str, Any]
    threads: int | None
    retries: int
    task: Callable[..., dict[str, Any]]
    progress: Callable[[str, bool], None] | None
    report: AssignReport

    def args(self, part: Part, centroids: Any = None) -> tuple[Any, ...]:
        c = self.centroids if centroids is None else centroids
        return (part, c, self.work, self.so, self.threads)

    def record(self, name: str, res: dict[str, Any]) -> None:
        if "error" in res:
            self.report.failed[name] = str(res["error"])
        else:
            self.report.done.append(name)
            self.report.samples += int(res["rows"])
        if self.progress is not None:
            self.progress(name, "error" not in res)


def run_assignment(
    parts: Sequence[Part],
    centroids: np.ndarray,
    work: str,
    *,
    source: str = "",
    engine: str = "dask",
    scheduler: str | None = None,
    client: Any = None,
    n_workers: int = 2,
    processes: bool = True,
    threads: int | None = 1,
    retries: int = 2,
    max_in_flight: int = 1000,
    progress: Callable[[str, bool], None] | None = None,
    task: Callable[..., dict[str, Any]] = assign_part,
    storage_options: Mapping[str, Any] | None = None,
) -> AssignReport:
    """Assign every embedding of `parts` to its nearest centroid, skipping shards done before.

    ``engine="dask"`` runs one task per shard on `client`, or on a Client of the scheduler at
    `scheduler` (a real cluster), or on a LocalCluster of `n_workers` (each with one thread and
    `threads` faiss threads). ``engine="local"`` runs the same task in this process. Raises
    AssignmentError listing the failed shards after every other shard is done.
    """
    if engine not in ENGINES:
        raise Dp4tlError(f"engine must be one of {ENGINES}, found {engine!r}")
    so = dict(storage_options or {})
    c = check_features(centroids, "centroids")
    prepare_work(work, c, source, **so)
    done = done_shards(work, **so)
    run = _Run(c, work, so, threads, retries, task, progress, AssignReport())
    run.report.skipped = sorted(p.name for p in parts if p.name in done)
    todo = [p for p in parts if p.name not in done]
    t0 = time.perf_counter()
    if todo and engine == "local":
        for p in todo:
            run.record(p.name, _attempts(run, p))
    elif todo:
        with _client(client, scheduler, n_workers, processes) as cl:
            run.report.workers = len(cl.scheduler_info()["workers"])
            _run_dask(cl, todo, run, max_in_flight)
    run.report.seconds = time.perf_counter() - t0
    if run.report.failed:
        first = next(iter(sorted(run.report.failed.items())))
        raise AssignmentError(
            f"{len(run.report.failed)} of {len(parts)} shards failed ({len(run.report.done)} done, results kept; "
            f"rerun to resume), first {first[0]!r}: {first[1]}",
            run.report,
        )
    return run.report


def _attempts(run: _Run, part: Part) -> dict[str, Any]:
    for attempt in range(run.retries + 1):
        try:
            return run.task(*run.args(part))
        except OSError as exc:
            log.warning("shard %s: attempt %d failed: %s", part.name, attempt + 1, exc)
            if attempt == run.retries:
                return {"name": part.name, "error": f"{type(exc).__name__}: {exc}"}
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _client(client: Any, scheduler: str | None, n_workers: int, processes: bool) -> Iterator[Any]:
    """`client` as given, or a Client of `scheduler`, or of a new LocalCluster (closed after)."""
    if client is not None:
        yield client
        return
    require("distributed", "laion")
    from distributed import Client, LocalCluster

    if scheduler is not None:
        with Client(scheduler) as cl:
            yield cl
        return
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=processes,
            dashboard_address=None,  # no dashboard, and its HTTP server on a free port
            scheduler_kwargs={"dashboard_address": ":0"},
        ) as lc,
        Client(lc) as cl,
    ):
        yield cl


def _run_dask(client: Any, todo: Sequence[Part], run: _Run, max_in_flight: int) -> None:
    """One task per shard, at most `max_in_flight` submitted at a time, results as they come."""
    from distributed import as_completed

    cfut = client.scatter(run.centroids, broadcast=True)
    token = uuid.uuid4().hex[:8]
    pending = iter(todo)
    names: dict[str, str] = {}

    def submit(p: Part) -> Any:
        key = f"dp4tl-assign-{token}-{p.name}"
        names[key] = p.name
        return client.submit(run.task, *run.args(p, cfut), key=key, retries=run.retries, pure=False)

    ac = as_completed([submit(p) for p in itertools.islice(pending, max_in_flight)])
    for fut in ac:
        name = names.pop(fut.key)
        if fut.status == "error":
            exc = fut.exception()
            res = {"name": name, "error": f"{type(exc).__name__}: {exc}"}
        else:
            res = fut.result()
        fut.release()
        run.record(name, res)
        nxt = next(pending, None)
        if nxt is not None:
            ac.add(submit(nxt))


# --------------------------------------------------------------------------- results -> keep-list


def iter_assignments(
    work: str, names: Iterable[str], **storage_options: Any
) -> Iterator[tuple[str, np.ndarray, bytes]]:
    """``(shard, cluster ids, digest)`` for each named shard, one result file at a time."""
    k = int(_run_json(work, **storage_options)["k"])
    for name in names:
        ids, digest = read_result(work, name, k, **storage_options)
        yield name, ids, digest


def _run_json(work: str, **storage_options: Any) -> dict[str, Any]:
    try:
        with fsspec.open(f"{work}/run.json", "rb", **storage_options) as f:
            obj = json.loads(f.read(1 << 20))
    except FileNotFoundError:
        raise StateError(f"{work}: not an assignment folder (no run.json)") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise StateError(f"{work}/run.json: not a dp4tl assignment folder")
    return obj


def write_keeplist(
    work: str,
    names: Sequence[str],
    kept_clusters: np.ndarray,
    url: str,
    *,
    provenance: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Stream the results of shards `names` into a bitmap keep-list of the samples whose
    cluster is in `kept_clusters`; the source fingerprint comes from the shard digests."""
    so = dict(storage_options or {})
    missing = sorted(set(names) - done_shards(work, **so))
    if missing:
        raise StateError(
            f"{work}: {len(missing)} shards have no assignment yet (e.g. {missing[0]!r}); rerun the assignment"
        )
    run = _run_json(work, **so)
    kept = np.unique(np.asarray(kept_clusters, dtype=np.int64))
    prov = {
        "method": "laion-nearest-cluster",
        "params": {"k": run["k"], "kept_clusters": kept.tolist(), "centroids": run["centroids"]},
        **(provenance or {}),
    }
    digests: list[tuple[str, bytes]] = []
    with KeepListWriter(url, provenance=prov, storage_options=so) as w:
        for name, ids, digest in iter_assignments(work, sorted(names), **so):
            w.add_mask(name, np.isin(ids, kept))
            digests.append((name, digest))
        w.provenance["source_fingerprint"] = source_fingerprint(digests)
    return url
