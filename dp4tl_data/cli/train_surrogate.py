"""`dp4tl train-surrogate SOURCE --index source.idx -o surrogate.pt`: the cheap surrogate LM needs."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import click


@click.command("train-surrogate")
@click.argument("source", nargs=-1)
@click.option("--index", "index_url", required=True, help="Source index folder (labels, class names, fingerprint).")
@click.option("-o", "--output", required=True, help="Checkpoint to write (dp4tl model format).")
@click.option(
    "--arch", default="small_resnet18", show_default=True, help="small_resnet18, small_cnn, or a torchvision name."
)
@click.option("--width", type=int, default=16, show_default=True, help="Base width of small_resnet18 / small_cnn.")
@click.option("--size", type=int, default=28, show_default=True, help="Input size (low resolution keeps it cheap).")
@click.option("--channels", type=click.Choice(["1", "3"]), default="1", show_default=True)
@click.option("--mean", type=float, default=0.5, show_default=True)
@click.option("--std", type=float, default=0.5, show_default=True)
@click.option("--epochs", type=int, default=2, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=0.05, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--keep", "keep_url", default=None, help="Train on a pruned source (a keep-list).")
@click.option("--shuffle-buffer", type=int, default=2000, show_default=True)
@click.option("--device", default=None, help="torch device (default: cuda when available, else cpu).")
def train_surrogate(
    source: tuple[str, ...],
    index_url: str,
    output: str,
    keep_url: str | None,
    **cfg: Any,
) -> None:
    """Train a small surrogate on the source stream itself (SOURCE: tar shard globs; default:
    the index's shards). Cheap: few epochs at low resolution, with a progress bar. After every
    epoch a checkpoint OUTPUT.partial is written; rerunning the same command resumes from it."""
    import torch

    from ..errors import PrunerError
    from ..features import resolve
    from ..index import SourceIndex
    from ..keeplist import KeepList
    from ..models import Preprocess, build_model, pick_device, read_checkpoint, save_model
    from ..pruners.base import SourceInfo
    from ..pruners.train import fit, stream_batches
    from .features import progress_bar

    index = SourceIndex.load(index_url)
    src = SourceInfo.from_index(index)
    spec = resolve(list(source) if source else index_url)
    keep = KeepList.load(keep_url) if keep_url else None
    if keep is not None:
        keep.check_source(index.fingerprint, where=index_url)
    kept = sum(
        (keep.kept_counts(index) if keep is not None else {s: index.count(s) for s in index.shard_names}).values()
    )
    if kept == 0:
        raise PrunerError(f"{index_url}: no source samples to train on")
    channels = int(cfg["channels"])
    pre = Preprocess(cfg["size"], channels, (cfg["mean"],) * channels, (cfg["std"],) * channels)
    arch_kwargs = {"width": cfg["width"], "in_channels": channels} if cfg["arch"].startswith("small_") else {}
    config = {**cfg, "device": None, "keep": keep.fingerprint if keep else None, "source": index.fingerprint}
    tag = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    model = build_model(cfg["arch"], src.num_classes, **arch_kwargs)
    partial = f"{output}.partial"
    start, opt_state = 0, None
    if os.path.exists(partial):
        ck = read_checkpoint(partial)
        if not isinstance(ck, dict) or ck.get("config_tag") != tag:
            raise click.ClickException(f"{partial} was written with other settings; delete it to start over")
        model.load_state_dict(ck["state_dict"])
        start, opt_state = int(ck["epoch"]), ck["optimizer"]
        click.echo(f"resuming from epoch {start} ({partial})", err=True)
    steps_per_epoch = -(-kept // cfg["batch_size"])
    device = pick_device(cfg["device"])

    def save_partial(epoch: int, module: Any, opt: Any) -> None:
        if epoch < cfg["epochs"]:
            tmp = f"{partial}.tmp"
            torch.save(
                {"config_tag": tag, "epoch": epoch, "state_dict": module.state_dict(), "optimizer": opt.state_dict()},
                tmp,
            )
            os.replace(tmp, partial)

    with progress_bar((cfg["epochs"] - start) * kept, "train-surrogate") as bar:
        res = fit(
            model,
            stream_batches(
                spec.shards,
                keep,
                pre,
                label_field=src.label_field,
                num_classes=src.num_classes,
                batch_size=cfg["batch_size"],
                seed=cfg["seed"],
                shuffle_buffer=cfg["shuffle_buffer"],
                index=index,
            ),
            epochs=cfg["epochs"],
            steps_per_epoch=steps_per_epoch,
            lr=cfg["lr"],
            seed=cfg["seed"],
            start_epoch=start,
            optimizer_state=opt_state,
            on_epoch_end=save_partial,
            on_step=bar.update,
            device=device,
        )
    save_model(
        output,
        model.cpu(),
        arch=cfg["arch"],
        arch_kwargs=arch_kwargs,
        preprocess=pre,
        classes=src.names,
        extra={"source_fingerprint": index.fingerprint, "train": {**config, "losses": res.losses}},
    )
    if os.path.exists(partial):
        os.remove(partial)
    loss = f"{res.losses[-1]:.3f}" if res.losses else "-"
    click.echo(
        f"trained {cfg['arch']} on {kept} samples x {cfg['epochs'] - start} epochs in {res.seconds:.1f}s "
        f"(last epoch loss {loss}) -> {output}"
    )
