"""Surrogates and encoders: small built-in networks, torchvision architectures with the user's
weights, and the checkpoint format that carries a model's preprocessing with its weights.

Checkpoints are read with ``torch.load(weights_only=True)`` only: plain dicts of tensors,
numbers and strings, nothing unpickled. A model's embedding is the input of its last
``nn.Linear`` (the classifier head), so logits and embeddings come from one forward pass.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import Dp4tlError, PrunerError, require

FORMAT = "dp4tl-model"
VERSION = 1


class ModelError(Dp4tlError):
    """A model checkpoint is unreadable, unsafe, or does not fit the architecture."""


@dataclass(frozen=True)
class Preprocess:
    """How images become model inputs: square size, channels (1 grey, 3 RGB), mean and std."""

    size: int = 28
    channels: int = 1
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)

    def __post_init__(self) -> None:
        if self.channels not in (1, 3) or self.size < 1:
            raise ModelError(f"preprocess: size {self.size} and channels {self.channels} (1 or 3) are invalid")
        if len(self.mean) not in (1, self.channels) or len(self.std) not in (1, self.channels):
            raise ModelError(f"preprocess: mean/std need 1 or {self.channels} values")
        if any(s <= 0 for s in self.std):
            raise ModelError("preprocess: std must be positive")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> Preprocess:
        if not isinstance(obj, dict):
            raise ModelError("preprocess must be a dict")
        try:
            return cls(int(obj["size"]), int(obj["channels"]), tuple(obj["mean"]), tuple(obj["std"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"preprocess is malformed: {exc}") from None

    def array(self, image: Any) -> np.ndarray:
        """A PIL image as a normalised float32 array (channels x size x size)."""
        from PIL import Image

        img = image.convert("L" if self.channels == 1 else "RGB")
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        arr = arr[None] if self.channels == 1 else arr.transpose(2, 0, 1)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1)
        return np.ascontiguousarray((arr - mean) / std)


def _torch_nn() -> Any:
    require("torch", "torch")
    import torch.nn as nn

    return nn


def SmallResNet18(num_classes: int, width: int = 16, in_channels: int = 1) -> Any:  # noqa: N802 - a model class
    """ResNet-18 (torchvision's BasicBlock, [2, 2, 2, 2]) narrowed for small images: a 3x3
    stride-1 stem without max-pool, and stage widths width x (1, 2, 4, 8)."""
    nn = _torch_nn()
    from torchvision.models.resnet import BasicBlock

    layers: list[Any] = [
        nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
    ]
    inp = width
    for mult, stride in ((1, 1), (2, 2), (4, 2), (8, 2)):
        out = width * mult
        down = None
        if stride != 1 or inp != out:
            down = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))
        layers += [BasicBlock(inp, out, stride, down), BasicBlock(out, out)]
        inp = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(inp, num_classes)]
    return nn.Sequential(*layers)


def SmallCNN(num_classes: int, width: int = 16, in_channels: int = 1) -> Any:  # noqa: N802 - a model class
    """Three conv-BN-ReLU blocks (width, 2x, 4x), global average pool, linear head: a cheap
    model to pretrain many times on 2 CPU cores."""
    nn = _torch_nn()

    def block(i: int, o: int, pool: bool) -> list[Any]:
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)] + (
            [nn.MaxPool2d(2)] if pool else []
        )

    w = width
    return nn.Sequential(
        *block(in_channels, w, True),
        *block(w, 2 * w, True),
        *block(2 * w, 4 * w, False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * w, num_classes),
    )


ARCHS = {"small_resnet18": SmallResNet18, "small_cnn": SmallCNN}


def build_model(arch: str, num_classes: int, **kwargs: Any) -> Any:
    """A fresh model: one of ours (`ARCHS`) or any torchvision architecture by name."""
    if num_classes < 1:
        raise ModelError(f"{arch}: num_classes must be positive, found {num_classes}")
    if arch in ARCHS:
        return ARCHS[arch](num_classes, **kwargs)
    require("torchvision", "vision")
    import torchvision

    try:
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    except ValueError as exc:
        raise ModelError(f"unknown architecture {arch!r}: {exc}") from None


@dataclass
class LoadedModel:
    """A model ready to run: module (eval mode), preprocessing, id for provenance, class info."""

    module: Any
    preprocess: Preprocess
    model_id: str
    arch: str
    num_classes: int
    classes: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def file_id(path: str) -> str:
    """A content id for a checkpoint file: ``sha256:`` and 16 hex digits."""
    import fsspec

    h = hashlib.sha256()
    with fsspec.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()[:16]


def read_checkpoint(path: str) -> Any:
    """A checkpoint's contents, read with ``weights_only=True`` (ModelError if unsafe or corrupt)."""
    import fsspec
    import torch

    try:
        with fsspec.open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"{path}: no such model file") from None
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        raise ModelError(f"{path}: not a readable weights-only checkpoint ({type(exc).__name__}: {exc})") from None


def save_model(
    path: str,
    module: Any,
    *,
    arch: str,
    arch_kwargs: dict[str, Any],
    preprocess: Preprocess,
    classes: Sequence[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Write a dp4tl model checkpoint (weights, architecture, preprocessing, classes); atomic locally."""
    import torch

    head = last_linear(module)
    obj = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs),
        "num_classes": int(head.out_features) if head is not None else None,
        "preprocess": preprocess.to_json(),
        "classes": list(classes) if classes is not None else None,
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        **(extra or {}),
    }
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def load_model(
    path: str,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    preprocess: Preprocess | None = None,
    arch_kwargs: dict[str, Any] | None = None,
) -> LoadedModel:
    """Load a dp4tl checkpoint, or the user's weights for architecture `arch` (a torchvision name
    or one of ours; plain state dicts, or dicts holding one under 'state_dict' / 'model')."""
    obj = read_checkpoint(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj.get("version") != VERSION:
            raise ModelError(f"{path}: model format version {obj.get('version')!r}, expected {VERSION}")
        arch = str(obj["arch"])
        kwargs = dict(obj.get("arch_kwargs") or {})
        state = obj["state_dict"]
        n = int(obj["num_classes"])
        pre = preprocess or Preprocess.from_json(obj["preprocess"])
        classes = obj.get("classes")
        meta = {k: v for k, v in obj.items() if k not in ("state_dict", "optimizer")}
    else:
        if arch is None:
            raise ModelError(f"{path}: not a dp4tl model checkpoint; name its architecture (--arch resnet18)")
        state = obj
        if isinstance(obj, dict):
            for k in ("state_dict", "model"):
                if isinstance(obj.get(k), dict):
                    state = obj[k]
                    break
        if not isinstance(state, dict) or not state:
            raise ModelError(f"{path}: no state dict found")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        n = num_classes or _head_width(state, path)
        kwargs = dict(arch_kwargs or {})
        pre = preprocess or Preprocess(224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        classes = None
        meta = {"arch": arch}
    module = build_model(arch, n, **kwargs)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ModelError(f"{path}: weights do not fit {arch}: {' '.join(first[:2])[:300]}") from None
    module.eval()
    return LoadedModel(module, pre, file_id(path), arch, n, list(classes) if classes else None, meta)


def _head_width(state: dict[str, Any], path: str) -> int:
    weights = [v for k, v in state.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2]
    if not weights:
        raise ModelError(f"{path}: cannot tell the class count (no 2-D weight); pass num_classes")
    return int(weights[-1].shape[0])


def last_linear(module: Any) -> Any:
    """The last ``nn.Linear`` of `module` (its classifier head), or None."""
    import torch.nn as nn

    head = None
    for m in module.modules():
        if isinstance(m, nn.Linear):
            head = m
    return head


def pick_device(device: str | None = None) -> str:
    """`device`, else ``cuda`` when a GPU is there, else ``cpu``."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Runner:
    """Runs a model on batches and returns logits and embeddings (input of the head) as numpy."""

    def __init__(self, module: Any, device: str | None = None) -> None:
        import torch

        self.device = pick_device(device)
        self.module = module.to(self.device).eval()
        self._emb: Any = None
        head = last_linear(module)
        self.num_outputs = int(head.out_features) if head is not None else None
        if head is not None:
            head.register_forward_pre_hook(self._grab)
        self._torch = torch

    def _grab(self, _module: Any, inputs: tuple[Any, ...]) -> None:
        self._emb = inputs[0].flatten(1)

    def __call__(self, x: Any) -> tuple[np.ndarray, np.ndarray | None]:
        torch = self._torch
        with torch.inference_mode():
            xt = torch.as_tensor(x).to(self.device, non_blocking=True)
            self._emb = None
            out = self.module(xt)
            logits = out.float().cpu().numpy()
            emb = self._emb.float().cpu().numpy() if self._emb is not None else None
        return logits, emb


def check_width(model: LoadedModel, num_classes: int, where: str) -> None:
    """PrunerError unless the model outputs one score per source class."""
    if model.num_classes != num_classes:
        raise PrunerError(f"{where}: the model outputs {model.num_classes} classes but the source has {num_classes}")
