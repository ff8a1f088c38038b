"""`dp4tl prune METHOD --source source.idx ...`: compute keep-lists with a registered pruner."""

from __future__ import annotations

import inspect as pyinspect
import os
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import click

from .features import load_from_options, model_options, progress_bar


def output_paths(output: str, method: str, ratios: list[float]) -> dict[float, str]:
    """Where each list goes: a pattern with ``{ratio}``, one ``.json`` file, or a folder."""
    if "{ratio}" in output:
        return {r: output.format(ratio=f"{r:g}") for r in ratios}
    if output.endswith(".json"):
        if len(ratios) > 1:
            raise click.UsageError("several ratios: -o must be a folder or a pattern with {ratio}")
        return {ratios[0]: output}
    os.makedirs(output, exist_ok=True)
    return {r: os.path.join(output, f"{method}-{r:g}.json") for r in ratios}


@click.command()
@click.argument("method")
@click.option("--source", required=True, help="Source index folder (dp4tl index SOURCE -o source.idx).")
@click.option(
    "--target", "targets", multiple=True, help="Target data spec or features folder; repeat for several targets."
)
@click.option("--ratio", "ratios", type=float, multiple=True, help="Pruning ratio in [0, 1); repeat for several lists.")
@click.option("--keep", "keeps", type=int, multiple=True, help="Keep K classes (clusters, samples) instead of a ratio.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--soft", is_flag=True, default=None, help="LM: rank by summed softmax instead of hard votes.")
@click.option(
    "--source-features",
    default=None,
    help="Features folder of the source (dp4tl features); else computed with --model.",
)
@click.option("--clusters", type=int, default=None, help="FM: k-means clusters (default 1000).")
@click.option("--niter", type=int, default=None, help="FM: k-means iterations (default 20).")
@click.option(
    "--points-per-centroid", type=int, default=None, help="FM: k-means training rows per cluster (default 256)."
)
@click.option("--level", type=click.Choice(["sample", "shard"]), default=None, help="FM: sample- or shard-level list.")
@click.option(
    "--shard-min-fraction", type=float, default=None, help="FM --level shard: keep shards above this kept fraction."
)
@click.option(
    "--encoding", type=click.Choice(["keys", "bitmap"]), default=None, help="Sample-level lists: keys or bitmaps."
)
@click.option("--indices", default=None, help="import-indices: the reference code's .indices file.")
@click.option("-o", "--output", required=True, help="keep.json, a folder, or a pattern with {ratio}.")
@model_options
def prune(
    method: str,
    source: str,
    targets: tuple[str, ...],
    ratios: tuple[float, ...],
    keeps: tuple[int, ...],
    seed: int,
    source_features: str | None,
    indices: str | None,
    output: str,
    **opts: Any,
) -> None:
    """Compute keep-lists of the source for a target with METHOD: lm, reverse-lm, fm,
    random-class, random-sample, moderate-class, moderate-sample (or a plugin's pruner), or
    import-indices. One pass of votes serves every --ratio.

    \b
      dp4tl prune lm --source source.idx --target digits/ --model surrogate.pt --ratio 0.5 --ratio 0.8 -o lists/
      dp4tl prune fm --source source.idx --target digits/ --model encoder.pt --clusters 1000 --ratio 0.5 -o fm.json
      dp4tl prune random-class --source source.idx --ratio 0.5 --seed 0 -o random.json
    """
    from ..index import SourceIndex
    from ..models import file_id
    from ..pruners import PruneRequest, SourceInfo
    from ..registry import get_registry

    index = SourceIndex.load(source)
    if method == "import-indices":
        _import(index, indices, opts.get("encoding"), output)
        return
    fn = get_registry().pruner(method)
    params = _params(fn, method, opts)
    src = SourceInfo.from_index(index)
    model = lru_cache(maxsize=1)(lambda: load_from_options(opts))
    request = PruneRequest(
        src,
        ratios=list(ratios),
        keeps=list(keeps),
        targets=[_target(t, model, opts) for t in targets],
        seed=seed,
        model_id=file_id(opts["model"]) if opts.get("model") else None,
        source_features=_source_features(source, index, source_features, model, opts),
    )
    if source_features and not opts.get("model"):
        from ..features import FeatureStore

        request.model_id = FeatureStore.open(source_features).model_id
    lists = fn(request, **params)
    paths = output_paths(output, method, list(lists))
    for ratio, keep in lists.items():
        keep.save(paths[ratio])
        st = keep.stats()
        what = f"{st['classes_kept']} classes" if "classes_kept" in st else f"{st.get('shards_kept', 0)} shards"
        imgs = f", {st['samples_kept']} of {st['samples_total']} images" if "samples_total" in st else ""
        click.echo(f"{method} ratio {ratio:g}: {what}{imgs} -> {paths[ratio]}")


PARAM_OPTIONS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "soft": ("mode", lambda v: "soft" if v else "hard"),
    "clusters": ("clusters", int),
    "niter": ("niter", int),
    "points_per_centroid": ("max_points_per_centroid", int),
    "level": ("level", str),
    "shard_min_fraction": ("shard_min_fraction", float),
    "encoding": ("encoding", str),
}


def _params(fn: Any, method: str, opts: dict[str, Any]) -> dict[str, Any]:
    """The pruner parameters the user gave, refusing those `fn` does not take."""
    accepted = set(pyinspect.signature(fn).parameters)
    out: dict[str, Any] = {}
    for opt, (name, conv) in PARAM_OPTIONS.items():
        value = opts.pop(opt, None)
        if value is None:
            continue
        if name not in accepted:
            raise click.UsageError(f"{method} does not take --{opt.replace('_', '-')}")
        out[name] = conv(value)
    return out


def _target(spec: str, model: Any, opts: dict[str, Any]) -> Any:
    """A Target that reads a features folder, or runs the model over the data once."""
    from ..features import FeatureStore, compute, resolve
    from ..pruners import Target

    if FeatureStore.is_store(spec):
        store = FeatureStore.open(spec)
        return Target(spec, logits=lambda: [store.matrix("logits")], features=lambda: store.matrix("emb"))

    @lru_cache(maxsize=1)
    def outputs() -> tuple[Any, Any]:
        m = model()
        data = resolve(spec)
        with progress_bar(None, f"target {os.path.basename(spec.rstrip('/'))}") as bar:
            _, logits, emb = compute(m, data, progress=bar.update, **_run_opts(opts))
        return logits, emb

    def features() -> Any:
        emb = outputs()[1]
        if emb is None:
            raise click.ClickException("the model has no linear head to take embeddings from")
        return emb

    return Target(spec, logits=lambda: [outputs()[0]], features=features)


def _source_features(source: str, index: Any, folder: str | None, model: Any, opts: dict[str, Any]) -> Any:
    from ..features import FeatureStore, compute, resolve

    def read() -> Any:
        if folder is not None:
            return FeatureStore.open(folder).aligned(index, "emb")
        if not opts.get("model"):
            raise click.UsageError("source features: give --source-features FOLDER or --model")
        with progress_bar(index.num_samples, "source features") as bar:
            keys, _, emb = compute(model(), resolve(source), progress=bar.update, **_run_opts(opts))
        expected = [k for s in index.shard_names for k in index.keys(s)]
        if keys != expected:
            raise click.ClickException(f"{source}: the shards no longer match the index (keys differ); re-index them")
        return emb

    return read


def _run_opts(opts: dict[str, Any]) -> dict[str, Any]:
    return {"batch_size": opts["batch_size"], "workers": opts["workers"], "device": opts["device"]}


def _import(index: Any, indices: str | None, encoding: str | None, output: str) -> None:
    from ..pruners.importers import import_indices

    if indices is None:
        raise click.UsageError("import-indices needs --indices FILE")
    keep = import_indices(indices, index, encoding=encoding or "keys")
    keep.save(output)
    click.echo(f"imported {keep.provenance['samples_kept']} samples from {indices} -> {output}")
