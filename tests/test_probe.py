"""The linear probe on cached features (vit/probe.py, finetune.py --freeze): the same head as the
uncached probe, augmented views, the flags it refuses, and a checkpoint vit.predict reads."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vit import predict
from vit.data import folder_data
from vit.engine import fit
from vit.formats import read_safetensors
from vit.probe import feature_data
from vit.recipes import RECIPES
from vit.config import Runtime
from vit.weights import load_checkpoint
from helpers import write_scenes  # tests/helpers.py

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "tiny_timm.safetensors"  # 32 px, patch 8, width 48, 3 heads
TIMM = ROOT.parent / "shared" / "fixtures" / "vit_small_fixture_timm.safetensors"  # heads inferable from the file
from vit import finetune  # the command finetune.py runs

MEAN = STD = (0.5, 0.5, 0.5)


def frozen_tiny() -> torch.nn.Module:
    """The tiny timm fixture with a new 3-class head, everything but the head frozen."""
    model, _ = load_checkpoint(TINY, num_heads=3)
    model.reset_head(3)
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("head.")
    return model


def test_cached_probe_trains_the_same_head_as_the_uncached_one(tmp_path):
    root = write_scenes(tmp_path / "scenes", per_class=12)
    # aug "resize": the uncached probe trains on the eval transform too; no drop-path, so train mode is eval mode
    cfg = RECIPES["finetune"].replace(epochs=3, batch_size=8, aug="resize", drop_path=0.0, warmup_epochs=0, lr=1e-2)
    rt = Runtime(torch.device("cpu"))
    uncached, cached = frozen_tiny(), frozen_tiny()
    images = fit(uncached, folder_data(root, cfg, 32, rt, mean=MEAN, std=STD), cfg, rt=rt, out=tmp_path / "images")
    data = feature_data(root, cached, cfg, 32, rt, mean=MEAN, std=STD)
    assert data.features and len(data.train) == 36 // 8  # 36 training images, full batches only, as folder_data
    features = fit(cached, data, cfg, rt=rt, out=tmp_path / "features")
    assert uncached.head.weight.abs().sum() > 0  # it trained
    torch.testing.assert_close(cached.head.weight, uncached.head.weight, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(cached.head.bias, uncached.head.bias, atol=2e-6, rtol=1e-5)
    assert features["val_loss"] == pytest.approx(images["val_loss"], rel=1e-5)
    assert features["confusion"] == images["confusion"]
    # the checkpoint is the whole model: the backbone as loaded, the head as trained
    saved, _ = read_safetensors(tmp_path / "features" / "last.safetensors")
    original, _ = read_safetensors(TINY)
    assert torch.equal(saved["blocks.1.mlp.fc1.weight"], original["blocks.1.mlp.fc1.weight"])
    assert torch.equal(saved["head.weight"], cached.head.weight.detach())


def textured(root: Path, per_class: int = 4) -> Path:
    """root/{train,val}/<class>/*.png of random noise: a crop of it differs from the whole image."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("a", "b", "c"):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class if split == "train" else 3):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def test_probe_views_add_seeded_augmented_views_of_the_training_images(tmp_path):
    root = textured(tmp_path / "noise")
    cfg = RECIPES["finetune"].replace(batch_size=4)
    rt = Runtime(torch.device("cpu"))
    model = frozen_tiny()
    one = feature_data(root, model, cfg, 32, rt, mean=MEAN, std=STD)
    three = feature_data(root, model, cfg, 32, rt, mean=MEAN, std=STD, views=3)
    again = feature_data(root, model, cfg, 32, rt, mean=MEAN, std=STD, views=3)
    assert len(one.train.x) == 12 and len(three.train.x) == 36 and torch.equal(three.train.y, one.train.y.repeat(3))
    assert torch.equal(three.train.x[:12], one.train.x)  # the eval view first
    assert not torch.allclose(three.train.x[12:24], one.train.x)  # then random-resized crops
    assert not torch.allclose(three.train.x[12:24], three.train.x[24:])  # a different draw per view
    assert torch.equal(three.train.x, again.train.x)  # seeded
    assert torch.equal(three.held_out.x, one.held_out.x)  # validation: the eval view only


def test_finetune_freeze_caches_features_and_predict_reads_the_checkpoint(tmp_path, capsys):
    if not TIMM.exists():
        pytest.skip(f"../shared not found: no timm fixture at {TIMM}")
    root = write_scenes(tmp_path / "scenes")
    out = tmp_path / "run"
    results = finetune.main(["--weights", str(TIMM), "--data", str(root), "--freeze", "--epochs", "20", "--lr", "3e-2",
                             "--batch-size", "8", "--img-size", "32", "--workers", "0", "--threads", "1",
                             "--warmup-epochs", "0", "--probe-views", "2", "--output", str(out)])
    err = capsys.readouterr().err
    assert "cached 57 feature vectors (2 view(s) of each training image)" in err  # 24 x 2 + 9
    assert results["val_acc"] == 1.0 and results["classes"] == ["beach", "forest", "sea"]
    predict.main(["--checkpoint", str(out / "best.safetensors"), str(root / "val" / "sea" / "0.png")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].endswith("sea")  # the top class of the first (only) image


@pytest.mark.parametrize("extra,message", [
    (["--freeze", "--aug", "rrc"], "--aug: --freeze trains the head on cached features"),
    (["--freeze", "--mixup", "0.8", "--tta", "flip"], "--mixup, --tta: --freeze trains the head on cached features"),
    (["--freeze", "--patch-dropout", "0.5"], "--patch-dropout: --freeze"),
    (["--probe-views", "2"], "--probe-views 2: needs --freeze"),
    (["--freeze", "--probe-views", "0"], "--probe-views 0: must be >= 1"),
])
def test_probe_flags_that_cannot_apply_exit_2(tmp_path, extra, message, capsys):
    argv = ["--weights", str(TINY), "--data", str(write_scenes(tmp_path / "scenes"))] + extra
    with pytest.raises(SystemExit) as e:
        finetune.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
