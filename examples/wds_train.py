"""Train a small CNN on WebDataset shards pruned to the classes a target task needs: one line.

    python examples/wds_train.py            # CPU, well under a minute

It writes real JPEG tar shards, indexes them (same as `dp4tl index SHARDS -o source.idx`), and
trains through a torch DataLoader with workers. PrunedStream never opens a shard without kept
samples and reads only the kept samples' bytes; `len(loader)` is exact, and the loader's
`state_dict()` resumes mid-epoch.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
import webdataset as wds
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dp4tl_data.plugins.wds import index_shards  # noqa: E402

from benchmarks.shardgen import write_shards  # noqa: E402
from dp4tl_data import KeepList, PrunedStream  # noqa: E402


def model(nclasses: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, nclasses),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--per-shard", type=int, default=250)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--keep", default="0,1,2,3,4", help="classes the target task needs")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        data = write_shards(tmp, nshards=args.shards, per_shard=args.per_shard, nclasses=args.classes, image_size=32)
        index_shards(data.paths, progress=False).save(os.path.join(tmp, "source.idx"))
        print(f"wrote and indexed {args.shards} shards x {args.per_shard} JPEGs in {time.perf_counter() - t0:.1f}s")

        keep = KeepList.from_classes([int(c) for c in args.keep.split(",")], label_field="cls")
        dataset = wds.WebDataset(data.paths, shardshuffle=False).decode("torchrgb").to_tuple("jpg", "cls")
        loader = DataLoader(dataset, batch_size=64, num_workers=args.workers)
        loader = PrunedStream(loader, keep, index=os.path.join(tmp, "source.idx"), shuffle=True, shuffle_buffer=256)

        net = model(args.classes)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        total = sum(len(s) for s in data.samples.values())
        print(f"{len(loader)} batches per epoch ({len(loader.reader)} of {total} samples kept)")
        for epoch in range(args.epochs):
            loader.set_epoch(epoch)
            t, seen, correct, loss_sum = time.perf_counter(), 0, 0, 0.0
            for images, labels in loader:
                labels = labels.long()
                out = net(images)
                loss = nn.functional.cross_entropy(out, labels)
                opt.zero_grad()
                loss.backward()
                opt.step()
                seen += len(labels)
                correct += int((out.argmax(1) == labels).sum())
                loss_sum += loss.item() * len(labels)
                if epoch == 0 and seen == 128:
                    state = loader.state_dict()  # save this with the model to resume mid-epoch
            print(
                f"epoch {epoch}: {seen} samples, loss {loss_sum / seen:.3f}, "
                f"train acc {correct / seen:.2f}, {time.perf_counter() - t:.1f}s"
            )
        print(f"a state saved mid-epoch: position {state['position']['samples']} of epoch {state['epoch']}")
        print(f"total {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
