"""`dp4tl combine OP LIST... -o OUT`: union, intersection or difference of keep-lists."""

from __future__ import annotations

import functools
import operator
import os

import click

from ..keeplist import KeepList

OPS = {"union": operator.or_, "intersection": operator.and_, "difference": operator.sub}


@click.command()
@click.argument("op", type=click.Choice(sorted(OPS)))
@click.argument("keeplists", nargs=-1, required=True)
@click.option("-o", "--output", required=True, help="Where to write the combined keep-list (path or fsspec URL).")
@click.option(
    "--index",
    "index_url",
    default=None,
    help="Source index: resolve every list to its kept samples first, so lists of different levels "
    "(an LM class list and a dedup sample list) combine.",
)
@click.option(
    "--encoding",
    type=click.Choice(["keys", "bitmap"]),
    default="bitmap",
    show_default=True,
    help="With --index: how resolved sample sets are stored.",
)
def combine(op: str, keeplists: tuple[str, ...], output: str, index_url: str | None, encoding: str) -> None:
    """Combine KEEPLISTS left to right with OP and write the result.

    \b
    union         kept by any list
    intersection  kept by every list
    difference    kept by the first list and by none of the others

    Lists must describe the same source (same source fingerprint). Without --index, union and
    difference need lists of the same single level (all class lists, or all shard/sample lists).
    """
    if len(keeplists) < 2:
        raise click.UsageError("give at least two keep-lists")
    if _same_place(output, keeplists):
        raise click.UsageError(f"-o {output} is one of the inputs (their payloads are read lazily); write elsewhere")
    lists = [KeepList.load(url) for url in keeplists]
    if index_url is not None:
        from ..index import SourceIndex

        index = SourceIndex.load(index_url)
        lists = [keep.resolve(index, encoding=encoding) for keep in lists]
    out = functools.reduce(OPS[op], lists)
    out.provenance["params"] = {"inputs": list(keeplists), **({"index": index_url} if index_url else {})}
    out.save(output)
    st = out.stats()
    counts = ", ".join(
        f"{st[k]} {k.split('_')[0]}" for k in ("classes_kept", "shards_kept", "samples_kept") if st.get(k) is not None
    )
    click.echo(f"{op} of {len(lists)} lists: {counts or 'nothing kept'} -> {output}")


def _same_place(output: str, inputs: tuple[str, ...]) -> bool:
    def norm(url: str) -> str:
        return os.path.abspath(url) if "://" not in url else url

    return norm(output) in {norm(u) for u in inputs}
