"""`dp4tl features DATA --model M -o feats/`: logits and embeddings per shard, resumable.

Also home of the model options shared by `prune` and `features`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def _floats(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"not a comma-separated list of numbers: {text!r}") from None


def model_options(f: F) -> F:
    """``--model/--weights``, ``--arch``, preprocessing overrides, ``--device``, batching."""
    opts = [
        click.option(
            "--model",
            "--weights",
            "model",
            default=None,
            help="Model checkpoint (dp4tl, or plain weights with --arch).",
        ),
        click.option(
            "--arch",
            default=None,
            help="Architecture of plain weights: a torchvision name or small_resnet18 / small_cnn.",
        ),
        click.option(
            "--size", type=int, default=None, help="Input size (default: the checkpoint's, 224 for plain weights)."
        ),
        click.option("--channels", type=click.Choice(["1", "3"]), default=None, help="Input channels (1 grey, 3 RGB)."),
        click.option("--mean", default=None, help="Per-channel mean, comma-separated."),
        click.option("--std", default=None, help="Per-channel std, comma-separated."),
        click.option("--device", default=None, help="torch device (default: cuda when available, else cpu)."),
        click.option("--batch-size", type=int, default=256, show_default=True),
        click.option("--workers", type=int, default=0, show_default=True, help="DataLoader workers decoding images."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def load_from_options(opts: dict[str, Any]) -> Any:
    """The LoadedModel the model options name (ModelError on a bad file)."""
    from ..models import Preprocess, load_model

    if not opts.get("model"):
        raise click.UsageError("this needs a model: --model surrogate.pt (or --arch NAME --weights FILE)")
    pre = None
    if any(opts.get(k) is not None for k in ("size", "channels", "mean", "std")):
        base = load_model(opts["model"], arch=opts.get("arch")).preprocess
        mean, std = _floats(opts.get("mean")), _floats(opts.get("std"))
        pre = Preprocess(
            opts.get("size") or base.size,
            int(opts.get("channels") or base.channels),
            mean or base.mean,
            std or base.std,
        )
    return load_model(opts["model"], arch=opts.get("arch"), preprocess=pre)


def progress_bar(total: int | None, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, leave=False, mininterval=2.0)


@click.command()
@click.argument("data", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Features folder to write.")
@click.option(
    "--kind", "kinds", multiple=True, type=click.Choice(["logits", "emb"]), help="What to write (default: both)."
)
@click.option("--float16", is_flag=True, help="Store float16 (half the disk); read back as float32.")
@model_options
def features(data: tuple[str, ...], output: str, kinds: tuple[str, ...], float16: bool, **opts: Any) -> None:
    """Stream DATA through a model; write logits and/or embeddings per shard as .npy, aligned
    with the sample keys. DATA: tar shard globs or brace patterns, an index folder, or an
    image folder. A rerun skips the shards already written (resume)."""
    from ..features import resolve, write_features

    model = load_from_options(opts)
    spec = resolve(list(data))
    total = spec.index.num_samples if spec.index is not None else None
    with progress_bar(total, "features") as bar:
        manifest = write_features(
            model,
            spec,
            output,
            kinds=kinds or ("logits", "emb"),
            float16=float16,
            batch_size=opts["batch_size"],
            workers=opts["workers"],
            device=opts["device"],
            progress=bar.update,
        )
    n = sum(manifest["shards"].values())
    dims = ", ".join(f"{k} {d}" for k, d in sorted(manifest["dims"].items()))
    click.echo(f"features of {n} samples in {len(manifest['shards'])} shards ({dims}, {manifest['dtype']}) -> {output}")
