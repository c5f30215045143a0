"""finetune.py on a tiny synthetic image folder, starting from the timm fixture weights in ../shared."""

import csv
import json
from pathlib import Path

import pytest
import torch

from vit.formats import read_safetensors
from helpers import write_scenes as scenes  # tests/helpers.py

ROOT = Path(__file__).resolve().parents[1]
TIMM = ROOT.parent / "shared" / "fixtures" / "vit_small_fixture_timm.safetensors"
from vit import finetune  # the command finetune.py runs

FAST = ["--img-size", "32", "--batch-size", "8", "--workers", "0", "--threads", "1", "--warmup-epochs", "0"]


@pytest.fixture
def weights() -> Path:
    if not TIMM.exists():
        pytest.skip(f"../shared not found: no timm fixture at {TIMM}")
    return TIMM


def test_finetune_learns_and_writes_every_output(tmp_path, weights):
    out = tmp_path / "run"
    results = finetune.main(["--weights", str(weights), "--data", str(scenes(tmp_path / "scenes")), "--epochs", "4",
                             "--lr", "1e-3", "--output", str(out)] + FAST)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert results["classes"] == ["beach", "forest", "sea"] and results["val_images"] == 9
    assert results["split"] == "val" and results["val_acc"] == 1.0
    assert (out / "confusion.png").stat().st_size > 0 and (out / "curves.png").exists()
    tensors, meta = read_safetensors(out / "best.safetensors")
    assert json.loads(meta["classes"]) == ["beach", "forest", "sea"]
    assert tensors["head.weight"].shape == (3, 192) and tensors["pos_embed"].shape == (1, 5, 192)  # 2x2 grid + class
    assert json.loads(meta["mean"]) == [0.5, 0.5, 0.5]


def test_freeze_trains_the_head_only(tmp_path, weights):
    out = tmp_path / "run"
    finetune.main(["--weights", str(weights), "--data", str(scenes(tmp_path / "scenes")), "--epochs", "1", "--freeze",
                   "--patch", "manual", "--output", str(out)] + FAST)
    before, _ = read_safetensors(weights)
    after, _ = read_safetensors(out / "last.safetensors")
    assert torch.equal(after["blocks.1.mlp.fc2.weight"], before["blocks.1.mlp.fc2.weight"])
    assert torch.equal(after["patch_embed.proj.weight"], before["patch_embed.proj.weight"].reshape(192, -1))
    assert after["head.weight"].abs().sum() > 0  # started at zero, trained


@pytest.mark.parametrize("extra,message", [
    (["--weights", "missing.safetensors"], "--weights missing.safetensors: no such file"),
    (["--arch", "vit_huge"], "argument --arch: invalid choice: 'vit_huge'"),
    (["--layer-decay", "0"], "--layer-decay must be in (0, 1]"),
])
def test_bad_flags_exit_2(tmp_path, weights, extra, message, capsys):
    argv = ["--weights", str(weights), "--data", str(scenes(tmp_path / "scenes"))] + extra
    with pytest.raises(SystemExit) as e:
        finetune.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_our_own_checkpoint_fine_tunes_on_every_token_with_its_own_normalisation(tmp_path, monkeypatch):
    from vit import engine

    folder = scenes(tmp_path / "scenes")
    pretrained = tmp_path / "pretrained"
    from vit import train
    train.main(["--data", str(folder), "--img-size", "32", "--patch-size", "8", "--embed-dim", "32", "--depth", "1",
                "--heads", "2", "--epochs", "1", "--patch-dropout", "0.5", "--output", str(pretrained)] + FAST[2:])
    rates, real_epoch = [], engine.train_epoch

    def record(model, *a, **kw):
        rates.append(model.patch_dropout)
        return real_epoch(model, *a, **kw)

    monkeypatch.setattr(engine, "train_epoch", record)
    out = tmp_path / "tuned"
    finetune.main(["--weights", str(pretrained / "last.safetensors"), "--data", str(folder), "--epochs", "2",
                   "--output", str(out)] + FAST)
    assert rates == [0.0, 0.0]  # trained with PatchDropout 0.5, fine-tuned on all tokens by default
    _, meta = read_safetensors(out / "last.safetensors")
    _, own = read_safetensors(pretrained / "last.safetensors")
    assert json.loads(meta["mean"]) == json.loads(own["mean"]) != [0.5, 0.5, 0.5]  # the checkpoint's own, not timm's
    finetune.main(["--weights", str(pretrained / "last.safetensors"), "--data", str(folder), "--epochs", "1",
                   "--patch-dropout", "0.25", "--output", str(tmp_path / "masked")] + FAST)
    assert rates[-1] == 0.25


def test_finetune_from_the_tiny_hugging_face_checkpoint_in_every_clone(tmp_path):
    # tests/fixtures (no ../shared needed): transformers' layout, 3 heads and eps 1e-12 from its config.json
    weights = Path(__file__).resolve().parent / "fixtures" / "tiny_hf" / "model.safetensors"
    out = tmp_path / "run"
    results = finetune.main(["--weights", str(weights), "--data", str(scenes(tmp_path / "scenes")), "--epochs", "4",
                             "--lr", "1e-3", "--output", str(out)] + FAST)
    assert results["split"] == "val" and results["val_acc"] == 1.0
    tensors, meta = read_safetensors(out / "best.safetensors")
    config = json.loads(meta["config"])
    assert (config["num_heads"], config["norm_eps"], config["num_classes"]) == (3, 1e-12, 3)
    assert tensors["head.weight"].shape == (3, 48) and json.loads(meta["mean"]) == [0.5, 0.5, 0.5]


def test_batch_augmentation_holds_the_folder_in_memory_like_train_py(tmp_path, monkeypatch):
    # --aug cifar: decoded once at --img-size, augmented per batch (vit.data.in_memory_data), as train.py
    # does for small images; the crop's padding is the flag's
    from vit import data as data_module

    weights = Path(__file__).resolve().parent / "fixtures" / "tiny_hf" / "model.safetensors"
    seen, real = [], data_module.in_memory_data
    # in_memory_data(train, held_out, classes, mean, std, cfg, rt, split): the run config is the sixth
    monkeypatch.setattr(data_module, "in_memory_data", lambda *a: seen.append(a[5]) or real(*a))
    out = tmp_path / "run"
    finetune.main(["--weights", str(weights), "--data", str(scenes(tmp_path / "scenes")), "--epochs", "1",
                   "--aug", "cifar", "--crop-padding", "2", "--output", str(out)] + FAST)
    assert [(c.aug, c.crop_padding) for c in seen] == [("cifar", 2)]
    assert json.loads((out / "results.json").read_text())["val_images"] == 9


def test_crop_padding_without_a_batch_crop_exits_2(tmp_path, capsys):
    weights = Path(__file__).resolve().parent / "fixtures" / "tiny_hf" / "model.safetensors"
    with pytest.raises(SystemExit) as e:
        finetune.main(["--weights", str(weights), "--data", str(scenes(tmp_path / "scenes")), "--crop-padding", "2"])
    assert e.value.code == 2 and "--crop-padding applies to the batch crops (--aug cifar, crop)" in capsys.readouterr().err


def test_a_kept_head_trained_on_other_class_names_is_a_warning_naming_both(tmp_path, capsys):
    from vit.model import ViTConfig, VisionTransformer
    from vit.weights import save_checkpoint

    folder = scenes(tmp_path / "scenes", per_class=2)
    model = VisionTransformer(ViTConfig(img_size=32, patch_size=8, num_classes=3, embed_dim=32, depth=1, num_heads=2))
    weights = tmp_path / "three.safetensors"
    warnings = []
    for classes in (["beach", "forest", "sea"], ["cat", "dog", "eel"]):
        save_checkpoint(weights, model, {"classes": json.dumps(classes)})
        finetune.main(["--weights", str(weights), "--data", str(folder), "--keep-head", "--epochs", "1",
                       "--output", str(tmp_path / classes[0])] + FAST)
        warnings.append([line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")])
    assert warnings == [[], [f"warning: {weights}'s head was trained on the classes cat, dog, eel; {folder} has "
                             "beach, forest, sea: output i of the kept head now means the folder's class i"]]
