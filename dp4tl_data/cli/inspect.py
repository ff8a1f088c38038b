"""`dp4tl inspect KEEPLIST`: what a keep-list keeps, and where it came from."""

from __future__ import annotations

from typing import Any

import click

from ..keeplist import KeepList
from ._options import echo_json, echo_table, json_option


def summary(keep: KeepList, shards: int = 0) -> dict[str, Any]:
    """The data `inspect` prints: stats, class list, provenance, and the first `shards` shards."""
    out: dict[str, Any] = {"stats": keep.stats(), "provenance": keep.provenance}
    if keep.classes is not None:
        out["classes"] = [{"id": i, "name": n} for i, n in zip(keep.classes.ids, keep.classes.names)]
    if shards and keep.shards is not None:
        out["shards"] = keep.shard_stats()[:shards]
    return out


@click.command()
@click.argument("keeplist")
@json_option
@click.option("--shards", "nshards", type=int, default=0, show_default=True, help="Also list the first N shards.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write a PNG: the vote histogram with kept classes marked (lists with vote scores), "
    "else the kept fraction per shard (shard-level lists).",
)
@click.option("--images", default=None, help="Shard-level plot: img2dataset folder whose tar sizes give bytes saved.")
@click.option(
    "--read-mbps", type=float, default=1000.0, show_default=True, help="Shard-level plot: read rate for time saved."
)
def inspect(keeplist: str, as_json: bool, nshards: int, plot: str | None, images: str | None, read_mbps: float) -> None:
    """Summarise KEEPLIST (a path or fsspec URL): levels, counts, kept fraction, provenance."""
    keep = KeepList.load(keeplist)
    if plot is not None:
        _plot(keep, plot, images, read_mbps)
    data = summary(keep, nshards)
    if as_json:
        echo_json(data)
        return
    st = data["stats"]
    rows: list[tuple[str, Any]] = [("keep-list", keeplist), ("levels", ", ".join(st["levels"]) or "(empty)")]
    if "classes_kept" in st:
        total = st.get("classes_total")
        frac = f" of {total} ({st['class_fraction']:.1%})" if total else ""
        rows.append(("classes kept", f"{st['classes_kept']}{frac}  [label field {st['label_field']!r}]"))
    if "shards_kept" in st:
        total = st.get("shards_total")
        frac = f" of {total} ({st['shard_fraction']:.1%})" if total else ""
        rows.append(("shards kept", f"{st['shards_kept']}{frac}"))
    if "samples_kept" in st:
        total = st.get("samples_total")
        frac = f" of {total} ({st['sample_fraction']:.1%})" if total else ""
        rows.append(("samples kept", f"{st['samples_kept']}{frac}"))
    rows.append(("fingerprint", st["fingerprint"][:16]))
    for k in ("method", "ratio", "model_id", "target_id", "source_fingerprint", "library_version", "created"):
        v = data["provenance"].get(k)
        if v is not None:
            rows.append((k.replace("_", " "), v[:16] if k == "source_fingerprint" else v))
    params = data["provenance"].get("params")
    if params:
        rows.append(("params", ", ".join(f"{k}={v}" for k, v in sorted(params.items()))))
    if "classes" in data:
        names = [c["name"] if c["name"] is not None else str(c["id"]) for c in data["classes"]]
        shown = ", ".join(names[:20]) + (f", ... (+{len(names) - 20})" if len(names) > 20 else "")
        rows.append(("classes", shown))
    echo_table(rows)
    for row in data.get("shards", []):
        frac = f"{row['fraction']:.1%}" if row["fraction"] is not None else "-"
        click.echo(f"  {row['shard']}  {row['encoding']}  kept={row['kept']}  total={row['total']}  {frac}")


def _plot(keep: KeepList, path: str, images: str | None = None, read_mbps: float = 1000.0) -> None:
    if keep.scores:
        from ..pruners.plots import plot_votes

        plot_votes(keep, path)
    elif keep.shards is not None:
        from ..plugins.laion_i2d import shard_sizes
        from ..scale import plot_shard_fractions

        sizes = shard_sizes(images) if images is not None else None
        info = plot_shard_fractions(keep, path, shard_bytes=sizes, read_mb_s=read_mbps)
        est = " (estimated from sample counts)" if info["bytes_estimated"] else ""
        click.echo(
            f"shards: {info['shards_kept']} kept, {info['shards_left_out']} left out; at {read_mbps:g} MB/s saves "
            f"{info['bytes_saved'] / 1e9:.3f} GB, {info['time_saved_s']:.1f} s streaming whole shards, "
            f"{info['bytes_saved_ranges'] / 1e9:.3f} GB, {info['time_saved_ranges_s']:.1f} s reading kept "
            f"samples' byte ranges{est}",
            err=True,
        )
    else:
        raise click.ClickException("nothing to plot: the keep-list has neither vote scores nor a shard level")
    click.echo(f"plot written to {path}", err=True)
