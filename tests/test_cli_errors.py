"""Invalid flags and combinations of train.py, finetune.py and vit.predict: an argparse message and exit
code 2, never a traceback; missing data: a message and exit code 1.

Cases already in test_train.py / test_finetune.py / test_predict.py are not repeated.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from vit.errors import run_cli
from vit.predict import main as predict_main

ROOT = Path(__file__).resolve().parents[1]
from vit import finetune, train  # the commands train.py and finetune.py run


def _exit_code(main: object, argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """Run main(argv) as the scripts do (VitError -> exit 1); return (exit code, stderr)."""
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: main(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return e.value.code, err


# ------------------------------------------------------------------------------------- train.py

TRAIN_REFUSED = [
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--save-every", "0"], "--save-every must be >= 1"),
    (["--accum-steps", "0"], "--accum-steps must be >= 1"),
    (["--lr", "0"], "--lr must be a finite number > 0"),
    (["--lr", "abc"], "argument --lr: invalid float value: 'abc'"),
    (["--smoothing", "1"], "--smoothing must be in [0, 1)"),
    (["--smoothing", "nan"], "--smoothing must be in [0, 1)"),
    (["--val-fraction", "0"], "--val-fraction must be in (0, 1)"),
    (["--val-fraction", "nan"], "--val-fraction must be in (0, 1)"),
    (["--drop", "1"], "drop_rate must be in [0, 1)"),
    (["--drop-path", "nan"], "--drop-path must be in [0, 1)"),
    (["--mlp-ratio", "0"], "mlp_ratio must be > 0"),
    (["--depth", "0"], "depth must be >= 1"),
    (["--embed-dim", "30", "--heads", "4"], "embed_dim 30 is not divisible by num_heads 4"),
    (["--embed-dim", "18", "--heads", "2", "--pos", "sin"], "pos_embed='sin' needs embed_dim divisible by 4"),
    (["--patch-size", "0"], "patch_size must be >= 1"),
    (["--preset", "vit_giant"], "argument --preset: invalid choice: 'vit_giant'"),
    (["--patch", "pixel"], "argument --patch: invalid choice"),
    (["--pos", "rope"], "argument --pos: invalid choice"),
    (["--pool", "max"], "argument --pool: invalid choice"),
    (["--opt", "lion"], "argument --opt: invalid choice"),
    (["--device", "tpu"], "argument --device: invalid choice"),
    (["--attn", "flash"], "argument --attn: invalid choice"),
    (["--epochs"], "argument --epochs: expected one argument"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
]

NUMERIC_FLAGS_TRAIN = [  # (extra argv, the flag the message must name)
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--min-lr", "-1"], "--min-lr"),
    (["--warmup-epochs", "-1"], "--warmup-epochs"),
    (["--warmup-epochs", "nan"], "--warmup-epochs"),
    (["--weight-decay", "-1"], "--weight-decay"),
    (["--clip-grad", "-1"], "--clip-grad"),
    (["--mixup", "-1"], "--mixup"),
    (["--cutmix", "-1"], "--cutmix"),
    (["--ema", "1"], "--ema"),
    (["--ema", "nan"], "--ema"),
    (["--threads", "-1"], "--threads"),
    (["--seed", str(2**70)], "--seed"),
]


@pytest.mark.parametrize("argv, message", TRAIN_REFUSED)
def test_train_flag_refused_with_exit_2(argv, message, tmp_path, capsys):
    code, err = _exit_code(train.main, ["--data", "mnist", "--data-dir", str(tmp_path), "--no-download", *argv],
                           capsys)
    assert code == 2 and message in err, err


def _folder(root: Path) -> Path:
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (100 * i, 0, 0)).save(root / name / f"{i}.png")
    return root


def test_train_folder_only_and_tensor_only_flags(tmp_path, capsys):
    folder = _folder(tmp_path / "folder")
    code, err = _exit_code(train.main, ["--data", str(folder), "--aug", "rotate"], capsys)
    assert code == 2 and "--aug 'rotate' is not available for an image folder; choose from rrc, resize, none, mnist" in err


@pytest.mark.parametrize("argv, flag", NUMERIC_FLAGS_TRAIN)
def test_train_numeric_flag_refused(argv, flag, tmp_path, capsys):
    code, err = _exit_code(train.main, ["--data", "mnist", "--data-dir", str(tmp_path), "--no-download", *argv],
                           capsys)
    assert code == 2 and flag in err, err


def test_train_negative_workers_refused(tmp_path, capsys):
    code, err = _exit_code(train.main, ["--data", str(_folder(tmp_path / "f")), "--workers", "-1", "--epochs", "1",
                                        "--output", str(tmp_path / "run")], capsys)
    assert code == 2 and "--workers" in err


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_train_unavailable_mps_is_a_message(tmp_path, capsys):
    code, err = _exit_code(train.main, ["--data", "mnist", "--data-dir", str(tmp_path), "--no-download",
                                        "--device", "mps"], capsys)
    assert code in (1, 2) and "--device mps" in err


def test_eval_only_without_a_state_is_an_error(tmp_path, capsys):
    from helpers import write_mnist  # tests/helpers.py (tests/ is on sys.path)
    from test_crash import TINY
    data = write_mnist(tmp_path / "data", n_test=32)
    code, err = _exit_code(train.main, ["--data", "mnist", "--data-dir", str(data), "--no-download", "--eval-only",
                                        "--resume", "auto", "--output", str(tmp_path / "none"), *TINY], capsys)
    assert code in (1, 2) and "--eval-only" in err


def test_train_missing_data_is_explained(tmp_path, capsys):
    code, err = _exit_code(train.main, ["--data", "cifar10", "--data-dir", str(tmp_path), "--no-download"], capsys)
    assert code == 1
    assert f"{tmp_path / 'cifar10' / 'cifar-10-binary.tar.gz'}" in err and "https://www.cs.toronto.edu/" in err
    (tmp_path / "empty").mkdir()
    code, err = _exit_code(train.main, ["--data", str(tmp_path / "empty")], capsys)
    assert code == 1 and f"{tmp_path / 'empty'}: no class folders" in err


# ---------------------------------------------------------------------------------- finetune.py

@pytest.fixture
def ft_args(tmp_path) -> list[str]:
    """Valid finetune.py arguments; the weights file only has to exist for the flag checks."""
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"not read before the flags are checked")
    return ["--weights", str(weights), "--data", str(_folder(tmp_path / "folder")), "--workers", "0"]


FINETUNE_REFUSED = [
    (["--layer-decay", "1.5"], "--layer-decay must be in (0, 1]"),
    (["--layer-decay", "nan"], "--layer-decay must be in (0, 1]"),
    (["--val-fraction", "1"], "--val-fraction must be in (0, 1)"),
    (["--patch", "stem"], "argument --patch: invalid choice: 'stem'"),
    (["--aug", "rotate"], "argument --aug: invalid choice: 'rotate'"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--batch-size", "8", "--accum-steps", "3"], "--batch-size 8 must be divisible by --accum-steps"),
    (["--img-size", "big"], "argument --img-size: invalid int value: 'big'"),
]


@pytest.mark.parametrize("argv, message", FINETUNE_REFUSED)
def test_finetune_flag_refused_with_exit_2(argv, message, ft_args, capsys):
    code, err = _exit_code(finetune.main, [*ft_args, *argv], capsys)
    assert code == 2 and message in err, err


def test_finetune_required_and_missing_paths(tmp_path, capsys):
    code, err = _exit_code(finetune.main, ["--data", str(tmp_path)], capsys)
    assert code == 2 and "the following arguments are required: --weights" in err
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    code, err = _exit_code(finetune.main, ["--weights", str(weights), "--data", str(tmp_path / "nope")], capsys)
    assert code == 2 and f"--data {tmp_path / 'nope'}: no such folder" in err


@pytest.mark.parametrize("argv, flag", [(["--img-size", "0"], "--img-size"), (["--img-size", "-16"], "--img-size"),
                                        (["--jitter", "-1"], "--jitter"), (["--workers", "-1"], "--workers")])
def test_finetune_bad_value_refused(argv, flag, ft_args, capsys):
    code, err = _exit_code(finetune.main, [*ft_args, *argv], capsys)
    assert code == 2 and flag in err, err


# ----------------------------------------------------------------------------------- vit.predict

@pytest.mark.parametrize("argv, message", [
    (["--checkpoint", "c.safetensors", "--top-k", "1.5", "a.png"], "argument --top-k: invalid positive_int value"),
    (["--checkpoint", "c.safetensors", "--img-size", "-3", "a.png"], "argument --img-size: must be >= 1, got -3"),
    (["a.png"], "the following arguments are required: --checkpoint"),
    (["--checkpoint", "c.safetensors", "--bogus", "a.png"], "unrecognized arguments: --bogus"),
])
def test_predict_flag_refused_with_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        predict_main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err


# ------------------------------------------------------------------------------ as a user runs it

def test_real_command_lines_exit_2_without_a_traceback(tmp_path):
    """One bad flag per program through a real interpreter (started together: ~1 start-up of wall time)."""
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    commands = {
        "train.py": ([sys.executable, str(ROOT / "train.py"), "--data", "mnist", "--epochs", "0", "--no-download",
                      "--data-dir", str(tmp_path)], "--epochs must be >= 1"),
        "finetune.py": ([sys.executable, str(ROOT / "finetune.py"), "--weights", str(weights), "--data", str(tmp_path),
                         "--layer-decay", "0"], "--layer-decay must be in (0, 1]"),
        "vit.predict": ([sys.executable, "-m", "vit.predict", "--checkpoint", str(weights), "--top-k", "0", "x.png"],
                        "argument --top-k: must be >= 1, got 0"),
    }
    running = {name: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
               for name, (cmd, _) in commands.items()}
    for name, process in running.items():
        out, err = process.communicate(timeout=120)
        lines = err.strip().splitlines()
        assert process.returncode == 2, (name, err)
        assert lines[0].startswith("usage: ") and commands[name][1] in lines[-1], (name, err)
        assert "Traceback" not in err and out == "", name
