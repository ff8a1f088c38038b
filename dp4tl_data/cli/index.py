"""`dp4tl index SOURCE... -o INDEX`: scan a source once and write its SourceIndex."""

from __future__ import annotations

import inspect

import click
import fsspec

from ..registry import get_registry


@click.command()
@click.argument("source", nargs=-1, required=True)
@click.option("-o", "--output", required=True, help="Index folder to write (path or fsspec URL).")
@click.option("--label-field", default=None, help="Where labels are: 'cls', a json field like 'json.label', ...")
@click.option("--root", default=None, help="Dataset root that shard names are relative to (default: common prefix).")
@click.option("--workers", type=int, default=None, help="Parallel scanners (default: CPU count).")
@click.option("--format", "fmt", default=None, help="Force an indexer by name (see `dp4tl index --help`).")
@click.option(
    "--reuse/--no-reuse", default=True, show_default=True, help="Take unchanged shards from an existing OUTPUT."
)
def index(
    source: tuple[str, ...],
    output: str,
    label_field: str | None,
    root: str | None,
    workers: int | None,
    fmt: str | None,
    reuse: bool,
) -> None:
    """Index SOURCE (shard files, globs, brace patterns, fsspec URLs, or a dataset spec).

    The index lists every shard with its sample count and every sample with its key, label and
    byte ranges. Keep-lists fingerprint it, and readers use it to skip pruned bytes.
    """
    reg = get_registry()
    spec = list(source)
    if fmt is not None:
        matches = [i for i in reg.indexers if i.name == fmt]
        if not matches:
            raise click.BadParameter(f"unknown format {fmt!r}; installed: {[i.name for i in reg.indexers]}")
        indexer = matches[0]
    else:
        indexer = reg.indexer_for(spec)
    extra = {}
    if reuse and "previous" in inspect.signature(indexer.build).parameters and _exists(f"{output}/index.json"):
        extra["previous"] = output  # the indexer skips shards whose size and mtime/etag are unchanged
    idx = indexer.build(spec, label_field=label_field, root=root, workers=workers, **extra)
    idx.save(output)
    click.echo(
        f"indexed {len(idx.shard_names)} shards, {idx.num_samples} samples -> {output} "
        f"(fingerprint {idx.fingerprint[:16]})"
    )


def _exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return bool(fs.exists(path))
