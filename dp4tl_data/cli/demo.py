"""`dp4tl demo`: the main job on embedded real data.

For now (foundation): keep half the classes of scikit-learn's handwritten digits, stream them
through a torch DataLoader pruned by PrunedStream, and check the kept set. The pruner issue
replaces this with the label-mapping pipeline end to end.
"""

from __future__ import annotations

import tempfile
import time

import click


@click.command()
@click.option("--keep-classes", default="0,1,2,3,4", show_default=True, help="Comma-separated digit classes to keep.")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--workers", default=2, show_default=True, help="DataLoader workers.")
def demo(keep_classes: str, batch_size: int, workers: int) -> None:
    """Prune a real dataset (sklearn digits, 1,797 images) by class and stream it."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from torch.utils.data import DataLoader, TensorDataset

    from .. import KeepList, PrunedStream

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    ds = TensorDataset(x, y)
    ds.targets = y  # type: ignore[attr-defined]
    names = [str(i) for i in range(10)]
    try:
        wanted = [int(c) for c in keep_classes.split(",") if c.strip()]
    except ValueError:
        raise click.BadParameter(f"not a list of ints: {keep_classes!r}", param_hint="--keep-classes") from None
    keep = KeepList.from_classes(wanted, label_field="label", names=names, method="demo", num_classes=10)
    with tempfile.TemporaryDirectory() as tmp:
        keep.save(f"{tmp}/keep.json")
        keep = KeepList.load(f"{tmp}/keep.json")
    loader = DataLoader(
        ds, batch_size=batch_size, shuffle=True, num_workers=workers, generator=torch.Generator().manual_seed(0)
    )
    t0 = time.perf_counter()
    full = sum(len(b[1]) for b in loader)
    t_full = time.perf_counter() - t0
    pruned = PrunedStream(loader, keep)
    t0 = time.perf_counter()
    seen = np.concatenate([b[1].numpy() for b in pruned])
    t_pruned = time.perf_counter() - t0
    expected = int(np.isin(digits.target, wanted).sum())
    click.echo(f"source: sklearn digits, {full} images, 10 classes")
    click.echo(f"keep-list: classes {sorted(set(wanted))} ({keep.fingerprint[:12]})")
    click.echo(f"pruned epoch: {len(seen)} images in {len(pruned)} batches (expected {expected})")
    click.echo(f"classes seen: {sorted(set(seen.tolist()))}")
    click.echo(f"epoch time: full {t_full:.2f}s, pruned {t_pruned:.2f}s")
    if len(seen) != expected or not set(seen.tolist()) <= set(wanted):
        raise click.ClickException("pruned stream does not match the keep-list")
