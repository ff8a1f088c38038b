"""LAION-scale commands: `dp4tl cluster`, `assign`, `shards`, `import`, `export`.

dp4tl cluster EMB -k 1000 -o centroids.npy            # k-means on a sample of the embeddings
dp4tl assign EMB --centroids centroids.npy --target target.npy --work W -o keep.json
dp4tl shards keep.json --images IMG --min-fraction 0.1 -o dense.json
dp4tl import datacomp uids.npy --source EMB -o keep.json
dp4tl export energon keep.json --source EMB -o split.yaml
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ._options import allow_foreign_option, echo_json, echo_table, json_option

F = TypeVar("F", bound=Callable[..., Any])


def shard_name_option(f: F) -> F:
    return click.option(
        "--shard-name",
        default="{N:05d}.tar",
        show_default=True,
        help="Keep-list shard name of embedding part N (img2dataset's tar name).",
    )(f)


def _load_npy(path: str, what: str) -> Any:
    import fsspec
    import numpy as np

    try:
        with fsspec.open(path, "rb") as f:
            return np.load(f, allow_pickle=False)
    except FileNotFoundError:
        raise click.BadParameter(f"{path}: no such file", param_hint=what) from None
    except (ValueError, OSError, EOFError) as exc:
        raise click.BadParameter(f"{path}: not a .npy array ({exc})", param_hint=what) from None


@click.command()
@click.argument("source")
@click.option("-k", "--clusters", type=int, required=True, help="Number of k-means clusters.")
@click.option("--sample", type=int, default=None, help="Embeddings to train on (default: 256 per cluster).")
@click.option("--per-shard", type=int, default=1000, show_default=True, help="Rows drawn from each sampled shard.")
@click.option("--niter", type=int, default=20, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--output", required=True, help="Centroids .npy to write (path or fsspec URL).")
@shard_name_option
def cluster(
    source: str, clusters: int, sample: int | None, per_shard: int, niter: int, seed: int, output: str, shard_name: str
) -> None:
    """k-means (faiss) of SOURCE's embeddings (img_emb/ + metadata/), on a seeded sample."""
    import fsspec
    import numpy as np

    from ..cluster import kmeans
    from ..distributed import sample_embeddings
    from ..plugins.laion_emb import list_parts

    parts = list_parts(source, shard_name=shard_name)
    x = sample_embeddings(parts, sample or 256 * clusters, seed=seed, per_shard=per_shard)
    km = kmeans(x, clusters, niter=niter, seed=seed)
    with fsspec.open(output, "wb") as f:
        np.save(f, km.centroids, allow_pickle=False)
    click.echo(f"k-means: {clusters} clusters of {len(x)} sampled embeddings (inertia {km.inertia:.4g}) -> {output}")


@click.command()
@click.argument("source")
@click.option("--centroids", required=True, help="Centroids .npy (from `dp4tl cluster`).")
@click.option("--target", required=True, help="Target embeddings .npy (same model as the source's).")
@click.option("--work", required=True, help="Work folder for per-shard results; a rerun resumes from it.")
@click.option("-o", "--output", required=True, help="Keep-list to write.")
@click.option(
    "--scheduler", default=None, help="Dask scheduler address of a running cluster (default: a LocalCluster)."
)
@click.option("--workers", type=int, default=2, show_default=True, help="LocalCluster workers (processes).")
@click.option("--threads", type=int, default=1, show_default=True, help="faiss threads per worker.")
@click.option("--engine", type=click.Choice(["dask", "local"]), default="dask", show_default=True)
@click.option("--retries", type=int, default=2, show_default=True, help="Retries of a shard after an I/O error.")
@click.option("--nearest", type=int, default=1, show_default=True, help="Clusters each target sample votes for.")
@click.option(
    "--min-votes", type=int, default=1, show_default=True, help="Keep clusters with at least this many votes."
)
@click.option("--top", type=int, default=None, help="Keep at most the TOP most voted clusters.")
@shard_name_option
@json_option
def assign(
    source: str,
    centroids: str,
    target: str,
    work: str,
    output: str,
    scheduler: str | None,
    workers: int,
    threads: int,
    engine: str,
    retries: int,
    nearest: int,
    min_votes: int,
    top: int | None,
    shard_name: str,
    as_json: bool,
) -> None:
    """Assign every embedding of SOURCE to its nearest centroid on Dask, shard by shard, and
    keep the samples of the clusters the TARGET embeddings fall into (DataComp-style)."""
    from tqdm import tqdm

    from ..distributed import run_assignment, write_keeplist
    from ..plugins.laion_emb import list_parts
    from ..scale import select_clusters, vote_clusters

    # distributed logs every cluster start at INFO; show that only with -v
    logging.getLogger("distributed").setLevel(max(logging.WARNING, logging.getLogger().getEffectiveLevel()))
    c = _load_npy(centroids, "--centroids")
    t = _load_npy(target, "--target")
    parts = list_parts(source, shard_name=shard_name)
    kept = select_clusters(vote_clusters(t, c, nearest=nearest), min_votes=min_votes, top=top)
    with tqdm(total=len(parts), unit="shard", desc="assign", disable=as_json) as bar:
        rep = run_assignment(
            parts,
            c,
            work,
            source=source,
            engine=engine,
            scheduler=scheduler,
            n_workers=workers,
            threads=threads,
            retries=retries,
            progress=lambda name, ok: bar.update(1),
        )
    prov = {"target_id": target, "params": {"k": len(c), "nearest": nearest, "min_votes": min_votes, "top": top}}
    write_keeplist(work, [p.name for p in parts], kept, output, provenance=prov)
    from ..keeplist import KeepList

    st = KeepList.load(output).stats()
    out = {
        "shards": len(parts),
        "assigned": len(rep.done),
        "resumed": len(rep.skipped),
        "workers": rep.workers,
        "embeddings_per_s": round(rep.throughput, 1),
        "clusters_kept": len(kept),
        "clusters": len(c),
        "samples_kept": st["samples_kept"],
        "samples_total": st.get("samples_total"),
        "keeplist": output,
    }
    if as_json:
        echo_json(out)
    else:
        echo_table([(k.replace("_", " "), v) for k, v in out.items()])


def _shard_bytes(images: str | None) -> dict[str, int] | None:
    if images is None:
        return None
    from ..plugins.laion_i2d import shard_sizes

    return shard_sizes(images)


@click.command()
@click.argument("keeplist")
@click.option("--thresholds", default="0,0.05,0.1,0.2,0.3,0.5", show_default=True, help="Kept-fraction thresholds.")
@click.option("--images", default=None, help="img2dataset folder: real tar sizes instead of an estimate.")
@click.option("--bytes-per-sample", type=float, default=125_000, show_default=True, help="Estimate without --images.")
@click.option("--read-mbps", type=float, default=1000.0, show_default=True, help="Read rate for the time estimate.")
@click.option("--min-fraction", type=float, default=None, help="Drop shards keeping less than this fraction...")
@click.option("-o", "--output", default=None, help="...and write the resulting keep-list here.")
@json_option
def shards(
    keeplist: str,
    thresholds: str,
    images: str | None,
    bytes_per_sample: float,
    read_mbps: float,
    min_fraction: float | None,
    output: str | None,
    as_json: bool,
) -> None:
    """Shard-level policy for KEEPLIST: samples lost against bytes saved when shards with a
    low kept fraction are dropped; with --min-fraction and -o, write that list."""
    from ..keeplist import KeepList
    from ..scale import drop_sparse_shards, shard_tradeoff

    if (min_fraction is None) != (output is None):
        raise click.UsageError("--min-fraction and -o go together")
    try:
        ts = [float(x) for x in thresholds.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"not a list of numbers: {thresholds!r}", param_hint="--thresholds") from None
    keep = KeepList.load(keeplist)
    rows = shard_tradeoff(
        keep, ts, shard_bytes=_shard_bytes(images), bytes_per_sample=bytes_per_sample, read_mb_s=read_mbps
    )
    written = drop_sparse_shards(keep, min_fraction, output) if min_fraction is not None and output else None
    if as_json:
        echo_json({"tradeoff": rows, "written": written})
        return
    est = " (estimated)" if rows and rows[0]["bytes_estimated"] else ""
    click.echo(f"min fraction  shards read  samples kept  samples lost    bytes read{est}  bytes saved  time saved")
    for r in rows:
        click.echo(
            f"{r['min_fraction']:>12.2f}  {r['shards_read']:>11}  {r['samples_kept']:>12}  "
            f"{r['samples_lost']:>7} ({r['lost_fraction']:>5.1%})  {r['bytes_read'] / 1e9:>10.3f} GB  "
            f"{r['saved_fraction']:>10.1%}  {r['time_saved_s']:>8.0f} s"
        )
    if written:
        click.echo(
            f"wrote {written['url']}: {written['shards_kept']} shards, {written['samples_kept']} samples "
            f"({written['shards_dropped']} shards and {written['samples_lost']} samples dropped)"
        )


FORMATS = click.Choice(["datacomp", "keys", "energon"])


@click.command("import")
@click.argument("fmt", metavar="FORMAT", type=FORMATS)
@click.argument("file")
@click.option(
    "--source", required=True, help="The source: an embedding folder (img_emb/, metadata/) or img2dataset folder."
)
@click.option("-o", "--output", required=True, help="Keep-list to write.")
@click.option(
    "--mode",
    type=click.Choice(["keep", "remove"]),
    default="keep",
    show_default=True,
    help="keys: list = kept or removed samples.",
)
@click.option("--uid-column", default="uid", show_default=True, help="datacomp: metadata column of the uids.")
@click.option("--strict", is_flag=True, help="Fail when any entry matches no sample (default: report them).")
@shard_name_option
@json_option
def import_(
    fmt: str,
    file: str,
    source: str,
    output: str,
    mode: str,
    uid_column: str,
    strict: bool,
    shard_name: str,
    as_json: bool,
) -> None:
    """Import FILE (FORMAT: datacomp uid .npy, keys text list, energon split.yaml) as a keep-list of SOURCE."""
    from .. import importers
    from ..plugins.laion import open_source

    shards = open_source(source, shard_name=shard_name)
    if fmt == "datacomp":
        rep = importers.import_datacomp(file, shards, output, uid_column=uid_column, strict=strict)
    elif fmt == "keys":
        rep = importers.import_keys(file, shards, output, mode=mode, strict=strict)
    else:
        rep = importers.import_energon(file, shards, output, strict=strict)
    out = {
        "entries": rep.entries,
        "matched": rep.matched,
        "unmatched": rep.unmatched,
        "samples_kept": rep.samples_kept,
        "emitted": rep.emitted,
        "keeplists": rep.passes or [rep.url],
    }
    if as_json:
        echo_json(out)
    else:
        echo_table([(k.replace("_", " "), v) for k, v in out.items()])
        if rep.unmatched:
            click.echo(f"warning: {rep.unmatched} entries match no sample, e.g. {rep.unmatched_examples}", err=True)


@click.command()
@click.argument("fmt", metavar="FORMAT", type=FORMATS)
@click.argument("keeplist")
@click.option("--source", required=True, help="The source the keep-list was made for.")
@click.option("-o", "--output", required=True, help="File to write.")
@click.option("--with-shard", is_flag=True, help="keys: write <shard>/<key> lines.")
@click.option("--uid-column", default="uid", show_default=True, help="datacomp: metadata column of the uids.")
@shard_name_option
@allow_foreign_option
def export(
    fmt: str,
    keeplist: str,
    source: str,
    output: str,
    with_shard: bool,
    uid_column: str,
    shard_name: str,
    allow_foreign: bool,
) -> None:
    """Export KEEPLIST of SOURCE as FORMAT (datacomp uid .npy with repeats, keys text, energon split.yaml)."""
    from .. import importers
    from ..plugins.laion import open_source

    shards = open_source(source, shard_name=shard_name)
    if fmt == "datacomp":
        n = importers.export_datacomp(keeplist, shards, output, uid_column=uid_column, allow_foreign=allow_foreign)
        what = "uids"
    elif fmt == "keys":
        n = importers.export_keys(keeplist, shards, output, with_shard=with_shard, allow_foreign=allow_foreign)
        what = "keys"
    else:
        n = importers.export_energon(keeplist, shards, output, allow_foreign=allow_foreign)
        what = "excludes"
    click.echo(f"wrote {n} {what} to {output}")
