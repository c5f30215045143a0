"""train.py and vit.engine end to end on tiny synthetic datasets the tests write themselves."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vit import augment, engine, runtime
from vit.config import Runtime
from vit.errors import run_cli
from vit.formats import read_safetensors
from vit.model import PRESETS, ViTConfig
from helpers import write_cifar_batch, write_mnist  # tests/helpers.py: tiny datasets written by the tests

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
from vit import train  # the command train.py runs

TINY = ["--embed-dim", "32", "--depth", "1", "--heads", "2", "--batch-size", "32", "--workers", "0", "--threads", "1"]


def write_cifar(root: Path, n: int = 20) -> Path:
    folder = root / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        write_cifar_batch(folder / name, rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), np.arange(n) % 10)
    names = "airplane automobile bird cat deer dog frog horse ship truck".split()
    (folder / "batches.meta.txt").write_text("\n".join(names) + "\n")
    return root


def write_folder(root: Path, per_class: int = 8) -> Path:
    for c, colour in enumerate(((255, 0, 0), (0, 0, 255))):
        d = root / f"class_{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (20 + i, 18), colour).save(d / f"{i}.png")
    return root


def run(args: list[str]) -> dict:
    return train.main(args + TINY)


def test_mnist_end_to_end_writes_every_output(tmp_path):
    data = write_mnist(tmp_path / "data")
    out = tmp_path / "run"
    results = run(["--data", "mnist", "--data-dir", str(data), "--no-download", "--epochs", "2", "--output", str(out)])
    names = {p.name for p in out.iterdir()}
    assert names == {"args.json", "metrics.csv", "last.safetensors", "best.safetensors", "state.pt", "state.prev.pt",
                     "results.json", "curves.png", "confusion.png"}
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,lr,train_loss") and len(rows) == 3
    saved = json.loads((out / "results.json").read_text())
    assert saved["test_acc"] == results["test_acc"] and saved["test_images"] == 64
    assert set(saved["per_class_acc"]) == {str(i) for i in range(10)}
    assert np.array(saved["confusion"]).sum() == 64
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["epoch"] == 2 and len(state["history"]) == 2
    tensors, meta = read_safetensors(out / "last.safetensors")
    assert json.loads(meta["config"])["in_chans"] == 1 and json.loads(meta["classes"])[3] == "3"
    assert "pos_embed" not in tensors  # the sin table is rebuilt from the config, never stored


def test_cifar_binary_and_image_folder_run(tmp_path):
    data = write_cifar(tmp_path / "data")
    results = run(["--data", "cifar10", "--data-dir", str(data), "--no-download", "--epochs", "1",
                   "--output", str(tmp_path / "c")])
    assert results["test_images"] == 20 and results["classes"][0] == "airplane"
    folder = write_folder(tmp_path / "folder")
    results = run(["--data", str(folder), "--img-size", "16", "--patch-size", "4", "--epochs", "1",
                   "--val-fraction", "0.25", "--output", str(tmp_path / "f")])
    assert results["classes"] == ["class_0", "class_1"] and results["val_images"] == 4
    assert results["split"] == "val" and "test_acc" not in results  # a folder's held-out split is not a test set


def test_learns_the_synthetic_task(tmp_path):
    data = write_mnist(tmp_path / "data", n_train=640, n_test=100)
    results = run(["--data", "mnist", "--data-dir", str(data), "--no-download", "--epochs", "20", "--aug", "none",
                   "--lr", "3e-3", "--tta", "none", "--output", str(tmp_path / "run")])
    assert results["test_acc"] >= 0.9


def test_evaluate_averages_the_probabilities_of_the_tta_views():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 6 * 6, 4))  # sees every pixel shift
    x, y = torch.rand(10, 2, 6, 6), torch.arange(10) % 4
    loader = [(x[:6], y[:6]), (x[6:], y[6:])]
    rt = Runtime(torch.device("cpu"), amp=False)
    plain = engine.evaluate(model, loader, lambda v: v * 2, 4, rt)
    with torch.no_grad():
        logits = model(x * 2)
        views = [model(v * 2).softmax(-1) for v in augment.tta_views(x, "flip-shift")]
    assert plain["acc"] == (logits.argmax(-1) == y).sum().item() / 10 and "single_acc" not in plain
    assert plain["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-6)
    tta = engine.evaluate(model, loader, lambda v: v * 2, 4, rt, tta="flip-shift")
    mean = torch.stack(views).mean(0)  # the probabilities are averaged, not the logits
    assert tta["views"] == 18 and tta["count"] == 10
    assert tta["acc"] == (mean.argmax(-1) == y).sum().item() / 10
    assert tta["loss"] == pytest.approx(-mean[torch.arange(10), y].log().mean().item(), rel=1e-5)
    assert (tta["single_acc"], tta["single_loss"]) == (plain["acc"], pytest.approx(plain["loss"], rel=1e-9))
    assert sum(map(sum, tta["confusion"])) == 10 and tta["acc"] != plain["acc"]


def test_ema_update_is_the_warmed_up_moving_average():
    source = torch.nn.Linear(3, 2)
    ema = engine.EMA(source, decay=0.99)
    start = ema.model.weight.clone()
    with torch.no_grad():
        source.weight.add_(1.0)
    ema.update(step=0)  # warm-up decay min(0.99, 1 / 10) = 0.1
    torch.testing.assert_close(ema.model.weight, 0.1 * start + 0.9 * source.weight)
    before = ema.model.weight.clone()
    ema.update(step=10_000)  # past the warm-up: the decay itself
    torch.testing.assert_close(ema.model.weight, 0.99 * before + 0.01 * source.weight)
    assert not ema.model.training and not any(p.requires_grad for p in ema.model.parameters())


def test_ema_run_saves_and_reports_the_average(tmp_path):
    data = write_mnist(tmp_path / "data")
    out = tmp_path / "run"
    results = run(["--data", "mnist", "--data-dir", str(data), "--no-download", "--epochs", "2", "--ema", "0.9",
                   "--output", str(out)])
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert ",eval_loss,eval_acc," in header and ",raw_eval_loss,raw_eval_acc" in header
    state = torch.load(out / "state.pt", weights_only=True)
    saved, _ = read_safetensors(out / "last.safetensors")
    for k, v in saved.items():  # the checkpoint holds the average, which differs from the trained weights
        torch.testing.assert_close(v, state["ema"][k], atol=0, rtol=0)
    assert not torch.equal(saved["head.weight"], state["model"]["head.weight"])
    assert 0 <= results["raw_test_acc"] <= 1 and results["ema"] == 0.9
    again = run(["--data", "mnist", "--data-dir", str(data), "--no-download", "--eval-only", "--resume", str(out)])
    assert again["acc"] == results["test_acc"]  # --eval-only scores the average the run reported


@pytest.mark.parametrize("extra", [[], ["--ema", "0.9"]], ids=["plain", "ema"])
def test_resume_after_an_interruption_equals_a_straight_run(tmp_path, monkeypatch, extra):
    data = write_mnist(tmp_path / "data")
    common = ["--data", "mnist", "--data-dir", str(data), "--no-download", "--epochs", "2", "--drop-path", "0.1",
              *extra]
    run(common + ["--output", str(tmp_path / "straight")])

    real_epoch, calls = engine.train_epoch, []

    def crash_in_second_epoch(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the process died after epoch 1's checkpoint
        return real_epoch(*a, **kw)

    monkeypatch.setattr(engine, "train_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run(common + ["--output", str(tmp_path / "resumed")])
    monkeypatch.setattr(engine, "train_epoch", real_epoch)
    assert torch.load(tmp_path / "resumed" / "state.pt", weights_only=True)["epoch"] == 1
    run(common + ["--output", str(tmp_path / "resumed"), "--resume", "auto"])
    a, _ = read_safetensors(tmp_path / "straight" / "last.safetensors")
    b, _ = read_safetensors(tmp_path / "resumed" / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    rows = (tmp_path / "resumed" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3


def test_eval_only_reproduces_the_stored_accuracy(tmp_path, capsys):
    data = write_mnist(tmp_path / "data")
    out = tmp_path / "run"
    results = run(["--data", "mnist", "--data-dir", str(data), "--no-download", "--epochs", "1", "--output", str(out)])
    capsys.readouterr()
    again = run(["--data", "mnist", "--data-dir", str(data), "--no-download", "--eval-only", "--resume", str(out)])
    assert again["acc"] == results["test_acc"]
    assert f"test accuracy {100 * results['test_acc']:.2f}%" in capsys.readouterr().out


def test_unmasked_epochs_train_the_last_epochs_on_every_token(tmp_path, monkeypatch):
    data = write_mnist(tmp_path / "data")
    real_epoch, rates = engine.train_epoch, []

    def record(model, *a, **kw):
        rates.append(model.patch_dropout)
        return real_epoch(model, *a, **kw)

    monkeypatch.setattr(engine, "train_epoch", record)
    out = tmp_path / "run"
    run(["--data", "mnist", "--data-dir", str(data), "--no-download", "--epochs", "3", "--patch-dropout", "0.5",
         "--unmasked-epochs", "2", "--output", str(out)])
    assert rates == [0.5, 0.0, 0.0]
    tensors, meta = read_safetensors(out / "last.safetensors")
    assert "patch_dropout" not in json.loads(meta["config"])  # a training choice: never saved with the model
    assert json.loads((out / "args.json").read_text())["config"]["patch_dropout"] == 0.5  # but in the run's record


def test_eval_every_evaluates_on_its_epochs_and_after_the_last(tmp_path, capsys):
    data = write_mnist(tmp_path / "data")
    out = tmp_path / "run"
    results = run(["--data", "mnist", "--data-dir", str(data), "--no-download", "--epochs", "3", "--eval-every", "2",
                   "--output", str(out)])
    rows = [line.split(",") for line in (out / "metrics.csv").read_text().splitlines()]
    eval_acc, tta_acc = rows[0].index("eval_acc"), rows[0].index("tta_eval_acc")
    assert [r[eval_acc] != "" for r in rows[1:]] == [False, True, True]
    # the recipe's --tta shift averages views in the last evaluation only; eval_acc stays single-view
    assert [r[tta_acc] != "" for r in rows[1:]] == [False, False, True] and results["tta"] == "shift"
    assert float(rows[3][eval_acc]) == results["single_view_test_acc"]
    assert float(rows[3][tta_acc]) == results["test_acc"]
    out_lines = capsys.readouterr().out.splitlines()
    printed = [line for line in out_lines if line.startswith("epoch")]
    assert ["test loss" in line for line in printed] == [False, True, True]
    assert "with TTA" in printed[2] and "with TTA" not in printed[1]
    assert (f"final test accuracy {100 * results['test_acc']:.2f}% (64 images) with --tta shift (9 views; "
            f"{100 * results['single_view_test_acc']:.2f}% from the image alone)") in out_lines[-1]
    assert (out / "best.safetensors").exists() and (out / "curves.png").exists()


def test_evaluating_less_often_trains_the_same_weights(tmp_path):
    # README's CIFAR-10 row was timed with --eval-every 1; the recipe evaluates less often and must
    # reach the same weights, so evaluation may not touch the training randomness or the model
    data = write_mnist(tmp_path / "data")
    weights = []
    for every in ("1", "3"):
        out = tmp_path / f"every{every}"
        run(["--data", "mnist", "--data-dir", str(data), "--no-download", "--epochs", "3", "--eval-every", every,
             "--output", str(out)])
        weights.append(read_safetensors(out / "last.safetensors")[0])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_attention_is_explicit_on_the_cpu_for_narrow_heads_unless_asked(tmp_path, monkeypatch):
    assert not runtime.choose_fused_attn("auto", "cpu") and runtime.choose_fused_attn("auto", "cuda")
    narrow, wide = ViTConfig(**PRESETS["cifar10"]), ViTConfig(**PRESETS["vit_base_patch16_224"])  # heads 32, 64 wide
    assert not runtime.choose_fused_attn("auto", "cpu", narrow) and runtime.choose_fused_attn("auto", "cpu", wide)
    assert runtime.choose_fused_attn("fused", "cpu") and not runtime.choose_fused_attn("explicit", "cuda")
    # and the run applies it to every block of the model it trains
    kernels = []
    real_epoch = engine.train_epoch

    def record(model, *a, **kw):
        kernels.append({block.attn.fused for block in model.blocks})
        return real_epoch(model, *a, **kw)

    monkeypatch.setattr(engine, "train_epoch", record)
    data = write_mnist(tmp_path / "data")
    for attn in ("auto", "fused"):
        run(["--data", "mnist", "--data-dir", str(data), "--no-download", "--epochs", "1", "--attn", attn,
             "--output", str(tmp_path / attn)])
    assert kernels == [{False}, {True}]


@pytest.mark.parametrize("argv,message", [
    (["--data", "imagenet"], "neither one of mnist, fashion-mnist, cifar10 nor a folder"),
    (["--data", "mnist", "--patch-size", "5"], "img_size 28 is not a multiple of patch_size 5"),
    (["--data", "mnist", "--aug", "rrc"], "--aug 'rrc' is not available for MNIST, Fashion-MNIST and CIFAR-10; choose from none, mnist, cifar"),
    (["--data", "mnist", "--img-size", "32"], "--img-size applies to image folders only"),
    (["--data", "mnist", "--epochs", "0"], "--epochs must be >= 1"),
    (["--data", "mnist", "--eval-every", "0"], "--eval-every must be >= 1"),
    (["--data", "mnist", "--batch-size", "30", "--accum-steps", "4"], "must be divisible by --accum-steps"),
    (["--data", "mnist", "--eval-only"], "--eval-only needs --resume"),
    (["--data", "mnist", "--epochs", "2", "--unmasked-epochs", "3"], "--unmasked-epochs must be in [0, epochs]"),
    (["--data", "mnist", "--unmasked-epochs", "-1"], "--unmasked-epochs must be in [0, epochs]"),
    (["--data", "mnist", "--tta", "rotate"], "--tta: invalid choice: 'rotate' (choose from"),
    (["--data", "cifar10", "--crop-padding", "-1"], "--crop-padding must be >= 0, got -1"),
])
def test_bad_flags_exit_2_with_a_message(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        train.main(argv + ["--data-dir", str(tmp_path), "--no-download"])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_crop_padding_is_refused_with_per_image_crops(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        train.main(["--data", str(tmp_path), "--aug", "rrc", "--crop-padding", "2"])
    assert e.value.code == 2
    assert "--crop-padding applies to the batch crops (--aug cifar, crop), not to --aug rrc" in capsys.readouterr().err


def test_train_sets_layer_decay_and_jitter_which_needs_random_resized_crops(capsys, tmp_path):
    train.main(["--data", str(tmp_path), "--aug", "rrc", "--jitter", "0.4", "--layer-decay", "0.8", "--print-config"])
    config = json.loads(capsys.readouterr().out)["config"]
    assert (config["aug"], config["jitter"], config["layer_decay"]) == ("rrc", 0.4, 0.8)
    with pytest.raises(SystemExit) as e:
        train.main(["--data", str(tmp_path), "--jitter", "0.4"])  # the folder recipe's batch crops
    assert e.value.code == 2
    assert "--jitter applies to --aug rrc (random-resized-crop per image), not to --aug cifar" in capsys.readouterr().err


def test_missing_data_without_download_is_a_message_not_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--data", "mnist", "--data-dir", str(tmp_path),
                             "--no-download"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert str(tmp_path / "mnist" / "train-images-idx3-ubyte") in result.stderr


def test_divergence_stops_with_a_message(tmp_path, capsys):
    data = write_mnist(tmp_path / "data")
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: run(["--data", "mnist", "--data-dir", str(data), "--no-download", "--epochs", "1",
                                "--lr", "1e30", "--output", str(tmp_path / "run")]))
    assert e.value.code == 1
    assert "training diverged: loss is nan" in capsys.readouterr().err


def test_ddp_two_processes_match_a_single_process_evaluation(tmp_path):
    data = write_mnist(tmp_path / "data", n_train=128, n_test=67)  # odd test count: no padding duplicates
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}  # a crashing rank prints its stack
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "train.py"), "--data", "mnist", "--data-dir", str(data), "--no-download", "--epochs", "1",
           "--output", str(out), "--tta", "none"] + TINY
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("final test accuracy") == 1  # only rank 0 prints
    saved = json.loads((out / "results.json").read_text())
    assert saved["processes"] == 2 and saved["test_images"] == 67
    # single-view: 9 near-uniform views of an untrained model average to near-ties, which the two runs'
    # different batch shapes (hence rounding) could break differently
    single = run(["--data", "mnist", "--data-dir", str(data), "--no-download", "--eval-only", "--resume", str(out),
                  "--tta", "none"])
    assert single["count"] == 67 and single["acc"] == saved["test_acc"]


def test_ddp_shutdown_waits_for_every_process_before_tearing_down(monkeypatch):
    calls = []
    monkeypatch.setattr(runtime.dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(runtime.dist, "destroy_process_group", lambda: calls.append("destroy"))
    runtime.shutdown(Runtime(torch.device("cpu"), amp=False, rank=1, world_size=2))
    assert calls == ["barrier", "destroy"]
    runtime.shutdown(Runtime(torch.device("cpu"), amp=False))  # one process: no process group to end
    assert calls == ["barrier", "destroy"]


@pytest.mark.slow
def test_headline_command_one_epoch_on_real_mnist(tmp_path):
    if not (SHARED / "data" / "mnist").is_dir():
        pytest.skip(f"../shared not found: real MNIST expected in {SHARED / 'data' / 'mnist'}")
    results = train.main(["--data", "mnist", "--patch", "manual", "--pos", "sin", "--data-dir", str(SHARED / "data"),
                          "--no-download", "--epochs", "1", "--output", str(tmp_path / "run")])
    assert results["test_acc"] >= 0.95


def test_fit_from_python_runs_the_models_own_attention_kernel_unless_the_runtime_names_one(tmp_path):
    """Runtime() names no kernel, so the model's default (fused, as timm's) runs; one that names a kernel sets it."""
    from vit.config import TrainConfig
    from vit.data import in_memory_data
    from vit.engine import fit
    from vit.model import VisionTransformer

    x, y = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8), torch.arange(16) % 2
    cfg = TrainConfig(epochs=1, batch_size=8)
    data = in_memory_data((x, y), (x, y), ["a", "b"], [0.5], [0.5], cfg, Runtime(), "val")
    model = VisionTransformer(ViTConfig(img_size=8, patch_size=4, in_chans=1, num_classes=2, embed_dim=8, depth=2,
                                        num_heads=2))
    fit(model, data, cfg, out=tmp_path / "default")
    assert all(block.attn.fused for block in model.blocks)
    fit(model, data, cfg, rt=Runtime(fused_attn=False), out=tmp_path / "explicit")
    assert not any(block.attn.fused for block in model.blocks)
