"""Train a classifier on a (pruned) source stream: the surrogate for LM, or a pretraining run.

The stream is the source's tar shards through `PrunedStream` (when a keep-list is given),
a seeded shuffle buffer, decoding and batching; each epoch reshuffles with a seed derived
from (seed, epoch). Training runs for a number of epochs or of SGD steps (the same-steps
control), with SGD + momentum and a cosine learning-rate schedule over the total steps.
Checkpoints after every epoch carry the optimizer state, so a run resumes where it stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import PrunerError, require
from ..features import Shard, batches
from ..keeplist import KeepList
from ..shards import ShardRef, filter_shards
from ..world import stable_seed


def source_stream(
    shards: Sequence[Shard],
    keep: KeepList | None,
    *,
    epoch: int,
    seed: int,
    shuffle_buffer: int = 2000,
    index: Any = None,
) -> Iterator[dict[str, Any]]:
    """Raw samples of one epoch: shards filtered by the keep-list's shard level, shuffled
    shard order, `PrunedStream`, then a seeded shuffle buffer.

    When the installed webdataset adapter takes the source and an index is given, it reads
    only the kept samples' bytes; otherwise the generic adapter filters every sample."""
    wds: Any = require("webdataset", "webdataset")
    from ..registry import get_registry
    from ..stream import PrunedStream

    refs = [ShardRef(s.name, s.url) for s in shards]
    if keep is not None:
        refs = filter_shards(refs, keep)
    if not refs:
        return iter(())
    s = stable_seed("train-stream", seed, epoch) % (2**31)
    ds = wds.WebDataset(
        [r.url for r in refs],
        shardshuffle=len(refs) or False,
        seed=s,
        nodesplitter=None,
        workersplitter=None,
        empty_check=False,
    )
    stream: Iterable[dict[str, Any]] = ds
    if keep is not None:
        indexed = has_byte_ranges(index) and get_registry().adapter_for(ds).name == "webdataset"
        stream = PrunedStream(ds, keep, index=index, shuffle=True, seed=s) if indexed else PrunedStream(ds, keep)
    if shuffle_buffer > 1:
        return iter(wds.shuffle(shuffle_buffer, min(shuffle_buffer, 500), seed=s + 1)(iter(stream)))
    return iter(stream)


def has_byte_ranges(index: Any) -> bool:
    """Whether `index` records each sample's byte range (what readers need to skip bytes)."""
    if index is None or not index.shard_names:
        return False
    return bool(index.table(index.shard_names[0]).column("offset").null_count == 0)


@dataclass
class TrainResult:
    """What a run did: SGD steps, samples seen, wall and CPU seconds (this process, all threads;
    robust to other load on the machine), epochs, mean loss per epoch."""

    steps: int = 0
    samples: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    epochs: int = 0
    losses: list[float] = field(default_factory=list)


def fit(
    module: Any,
    make_batches: Callable[[int], Iterable[tuple[Any, Any]]],
    *,
    epochs: int | None = None,
    steps: int | None = None,
    steps_per_epoch: int | None = None,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    seed: int = 0,
    start_epoch: int = 0,
    optimizer_state: dict[str, Any] | None = None,
    on_epoch_end: Callable[[int, Any, Any], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    device: str = "cpu",
) -> TrainResult:
    """Train `module` with cross-entropy on `make_batches(epoch)` for `epochs` epochs, or until
    `steps` SGD steps (running as many epochs as that takes). The cosine schedule spans
    `steps`, or `epochs` x `steps_per_epoch` (per-epoch steps when that is unknown)."""
    import torch

    if (epochs is None) == (steps is None):
        raise PrunerError("train for a number of epochs or of steps (exactly one)")
    if (epochs is not None and epochs < 1) or (steps is not None and steps < 1):
        raise PrunerError("epochs and steps must be positive")
    torch.manual_seed(stable_seed("fit", seed) % (2**31))
    module.to(device).train()
    opt = torch.optim.SGD(module.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    total = steps if steps is not None else (epochs * steps_per_epoch if steps_per_epoch else None)  # type: ignore[operator]
    res = TrainResult(epochs=start_epoch)
    step = start_epoch * steps_per_epoch if steps_per_epoch else 0
    t0, c0 = time.perf_counter(), time.process_time()
    epoch = start_epoch
    while (epochs is not None and epoch < epochs) or (steps is not None and step < steps):
        loss_sum, n_batches = 0.0, 0
        for x, y in make_batches(epoch):
            frac = step / total if total else epoch / max(epochs or 1, 1)
            for g in opt.param_groups:
                g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = torch.nn.functional.cross_entropy(module(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            res.samples += len(y)
            loss_sum += loss.item()
            n_batches += 1
            if on_step is not None:
                on_step(len(y))
            if steps is not None and step >= steps:
                break
        if n_batches == 0:
            raise PrunerError(f"epoch {epoch}: the stream yielded no samples (is everything pruned?)")
        res.losses.append(loss_sum / n_batches)
        epoch += 1
        res.epochs = epoch
        if on_epoch_end is not None:
            on_epoch_end(epoch, module, opt)
    res.steps = step
    res.seconds = time.perf_counter() - t0
    res.cpu_seconds = time.process_time() - c0
    module.eval()
    return res


def stream_batches(
    shards: Sequence[Shard],
    keep: KeepList | None,
    preprocess: Any,
    *,
    label_field: str,
    num_classes: int,
    batch_size: int,
    seed: int,
    shuffle_buffer: int = 2000,
    index: Any = None,
) -> Callable[[int], Iterator[tuple[Any, Any]]]:
    """`make_batches(epoch)` for `fit`: decoded, labelled batches of the kept source."""

    def make(epoch: int) -> Iterator[tuple[Any, Any]]:
        raw = source_stream(shards, keep, epoch=epoch, seed=seed, shuffle_buffer=shuffle_buffer, index=index)
        return batches(raw, preprocess, batch_size=batch_size, label_field=label_field, num_classes=num_classes)

    return make
