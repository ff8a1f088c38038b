"""Models: built-in archs, checkpoint round trip with preprocessing, user weights for a
torchvision arch, weights-only loading, embeddings from the head's input, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dp4tl_data import PrunerError
from dp4tl_data.models import (
    ModelError,
    Preprocess,
    Runner,
    build_model,
    check_width,
    load_model,
    save_model,
)


@pytest.mark.parametrize("arch", ["small_resnet18", "small_cnn"])
def test_builtin_archs_give_logits_and_embeddings(arch: str) -> None:
    m = build_model(arch, 7, width=4, in_channels=1)
    logits, emb = Runner(m, "cpu")(torch.zeros(3, 1, 28, 28))
    assert logits.shape == (3, 7) and emb is not None and emb.shape == (3, 32 if arch == "small_resnet18" else 16)
    head = m[-1]
    assert np.allclose(logits, head(torch.from_numpy(emb)).detach().numpy(), atol=1e-5)


def test_checkpoint_round_trip(tmp_path) -> None:
    m = build_model("small_resnet18", 5, width=4)
    pre = Preprocess(32, 3, (0.1, 0.2, 0.3), (0.5, 0.5, 0.5))
    path = save_model(str(tmp_path / "m.pt"), m, arch="small_resnet18", arch_kwargs={"width": 4, "in_channels": 1},
                      preprocess=pre, classes=list("abcde"))  # fmt: skip
    loaded = load_model(path)
    assert loaded.preprocess == pre and loaded.classes == list("abcde") and loaded.num_classes == 5
    x = torch.randn(2, 1, 28, 28)
    m.eval()
    assert torch.allclose(loaded.module(x), m(x), atol=1e-6)
    check_width(loaded, 5, "t")
    with pytest.raises(PrunerError, match="outputs 5 classes but the source has 6"):
        check_width(loaded, 6, "t")


def test_user_weights_for_torchvision_arch(tmp_path) -> None:
    from torchvision.models import resnet18

    ref = resnet18(num_classes=12).eval()
    path = str(tmp_path / "ckpt.pt")
    torch.save({"model": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
    loaded = load_model(path, arch="resnet18")
    assert loaded.num_classes == 12 and loaded.preprocess.size == 224 and loaded.model_id.startswith("sha256:")
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(loaded.module(x), ref(x), atol=1e-5)
    with pytest.raises(ModelError, match="name its architecture"):
        load_model(path)
    with pytest.raises(ModelError, match="weights do not fit resnet34"):
        load_model(path, arch="resnet34")
    with pytest.raises(ModelError, match="unknown architecture"):
        load_model(path, arch="no_such_net")


def test_bad_checkpoints(tmp_path) -> None:
    p = tmp_path / "junk.pt"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not a readable weights-only checkpoint"):
        load_model(str(p))
    with pytest.raises(ModelError, match="no such model file"):
        load_model(str(tmp_path / "missing.pt"))
    m = build_model("small_cnn", 3, width=4)
    path = save_model(str(tmp_path / "m.pt"), m, arch="small_cnn", arch_kwargs={"width": 4}, preprocess=Preprocess())
    obj = torch.load(path, weights_only=True)
    obj["version"] = 99
    torch.save(obj, path)
    with pytest.raises(ModelError, match="format version 99"):
        load_model(path)


def test_preprocess() -> None:
    img = Image.fromarray(np.full((10, 14), 255, np.uint8))
    arr = Preprocess(28, 1, (0.5,), (0.5,)).array(img)
    assert arr.shape == (1, 28, 28) and np.allclose(arr, 1.0)
    rgb = Preprocess(16, 3, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)).array(img)
    assert rgb.shape == (3, 16, 16) and np.allclose(rgb, 1.0)
    with pytest.raises(ModelError):
        Preprocess(28, 2)
    with pytest.raises(ModelError):
        Preprocess(28, 1, (0.5,), (0.0,))
