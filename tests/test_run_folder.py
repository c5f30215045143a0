"""A run's folder when the machine or the user misbehaves: a full disk, two runs on one folder, a fresh
run into a finished one, a resume state that is not ours."""

from __future__ import annotations

import errno
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vit import runs
from vit.errors import VitError, run_cli
from helpers import write_mnist  # tests/helpers.py: tiny datasets written by the tests

ROOT = Path(__file__).resolve().parents[1]
from vit import train  # the command train.py runs

TINY = ["--embed-dim", "32", "--depth", "1", "--heads", "2", "--batch-size", "32", "--workers", "0", "--threads", "1",
        "--tta", "none"]


def argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", "mnist", "--data-dir", str(data), "--no-download", "--output", str(out), *TINY, *extra]


def exit_of(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: train.main(args))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return e.value.code, err


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_mnist(tmp_path / "data")


def test_a_full_disk_is_one_message_and_keeps_the_last_good_state(tmp_path, data, monkeypatch, capsys):
    out = tmp_path / "run"
    real, writes = runs.atomic_write, []

    def full_on_the_second_state(path, mode="wb"):
        if Path(path).name == "state.pt.next":
            writes.append(path)
            if len(writes) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{path}.tmp-{os.getpid()}")
        return real(path, mode)

    monkeypatch.setattr(runs, "atomic_write", full_on_the_second_state)
    code, err = exit_of(argv(data, out, "--epochs", "3"), capsys)
    assert code == 1
    assert err.strip().splitlines()[-1] == (f"error: no space left on device while writing state.pt in {out}; "
                                            f"the state after epoch 1 is kept in {out}")
    assert torch.load(out / "state.pt", weights_only=True)["epoch"] == 1
    assert not list(out.glob("*.tmp-*")) and not (out / "state.pt.next").exists() and not (out / ".lock").exists()
    monkeypatch.undo()
    results = train.main(argv(data, out, "--epochs", "3", "--resume", str(out)))
    assert results["epochs"] == 3


@pytest.mark.skipif(os.geteuid() != 0 if hasattr(os, "geteuid") else True, reason="mounting a tmpfs needs root")
def test_a_really_full_disk(tmp_path, data, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        code, err = exit_of(argv(data, disk / "out", "--epochs", "2"), capsys)
        assert code == 1 and "error: no space left on device while writing" in err
        assert not list((disk / "out").glob("*.tmp-*")) if (disk / "out").exists() else True
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_explicit_resume_of_a_folder_finds_the_previous_state(tmp_path, data, capsys):
    out = tmp_path / "run"
    train.main(argv(data, out, "--epochs", "2"))
    (out / "state.pt").unlink()  # as if killed between the two renames of save_state
    results = train.main(argv(data, out, "--epochs", "3", "--resume", str(out)))
    err = capsys.readouterr().err
    assert "no state.pt; resuming from the previous state state.prev.pt" in err and "after epoch 1" in err
    assert results["epochs"] == 3


def test_a_second_run_on_a_folder_in_use_is_refused_naming_the_first(tmp_path, data, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(f"{os.getppid()} {platform.node()}\n")  # a live process: our parent
    code, err = exit_of(argv(data, out, "--epochs", "1"), capsys)
    assert code == 1 and f"{out} is in use by another run (process {os.getppid()})" in err
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / ".lock").write_text(f"{dead.stdout.strip()} {platform.node()}\n")  # a killed run's stale lock
    assert train.main(argv(data, out, "--epochs", "1"))["epochs"] == 1
    assert not (out / ".lock").exists()


def test_lock_is_exclusive_between_two_claims(tmp_path):
    with runs.claimed(tmp_path / "run"):
        lock = tmp_path / "run" / ".lock"
        assert lock.read_text().split()[0] == str(os.getpid())
        lock.write_text(f"{os.getppid()} {platform.node()}\n")  # another live process holds it now
        with pytest.raises(VitError, match="is in use by another run"):
            with runs.claimed(tmp_path / "run"):
                pass
    assert not lock.exists()


def test_a_fresh_run_into_a_finished_run_is_refused_unless_overwrite(tmp_path, data, capsys):
    out = tmp_path / "run"
    train.main(argv(data, out, "--epochs", "1"))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, err = exit_of(argv(data, out, "--epochs", "1", "--seed", "1"), capsys)
    assert code == 1
    assert (f"error: --output {out} holds a run; use --resume auto to continue it, another --output, "
            "or --overwrite to replace it") in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched
    train.main(argv(data, out, "--epochs", "1", "--seed", "1", "--overwrite"))
    assert "--overwrite: replacing the run in" in capsys.readouterr().err
    assert (out / "state.pt").read_bytes() != before["state.pt"]


def _finished(tmp_path: Path, data: Path) -> Path:
    out = tmp_path / "run"
    train.main(argv(data, out, "--epochs", "2"))
    return out


HOSTILE = {
    "model a list": lambda s: {**s, "model": [1, 2]},
    "empty model": lambda s: {**s, "model": {}},
    "empty optimizer": lambda s: {**s, "optimizer": {}},
    "wrong shapes": lambda s: {**s, "model": {k: torch.zeros(3) for k in s["model"]}},
    "missing key": lambda s: {**s, "model": dict(list(s["model"].items())[1:])},
    "epoch a string": lambda s: {**s, "epoch": "two"},
    "history not a list": lambda s: {**s, "history": {"epoch": 2}},
}


@pytest.mark.parametrize("how", HOSTILE)
def test_a_state_that_is_not_ours_is_a_message_and_auto_falls_back(tmp_path, data, capsys, how):
    out = _finished(tmp_path, data)
    state = torch.load(out / "state.pt", weights_only=True)
    torch.save(HOSTILE[how](state), out / "state.pt")
    code, err = exit_of(argv(data, out, "--epochs", "3", "--resume", str(out / "state.pt")), capsys)
    assert code == 1 and f"error: {out / 'state.pt'}: " in err
    results = train.main(argv(data, out, "--epochs", "3", "--resume", "auto"))
    err = capsys.readouterr().err
    assert "resuming from the previous state" in err and f"resumed from {out / 'state.prev.pt'} after epoch 1" in err
    assert results["epochs"] == 3


@pytest.fixture
def two_classes(tmp_path: Path, data: Path) -> Path:
    """A finished 2-epoch run on MNIST's classes 0 and 1 (lr 0.0028, batch 32, 2 heads)."""
    out = tmp_path / "run"
    train.main(argv(data, out, "--epochs", "2", "--classes", "0,1"))
    return out


@pytest.mark.parametrize("flags, changes", [
    (["--lr", "0.5"], "--lr 0.5 (the run: 0.0028)"),
    (["--batch-size", "16"], "--batch-size 16 (the run: 32)"),
    (["--classes", "1,0"], "--data/--classes: classes 1,0 (the run: 0,1)"),
    (["--data", "fashion-mnist", "--classes", "T-shirt/top,Trouser"],
     "--smoothing 0.1 (the run: 0.0); --aug cifar (the run: mnist); --crop-padding 2 (the run: 4); "  # its recipe's
     "--data/--classes: classes T-shirt/top,Trouser (the run: 0,1)"),
    (["--aug", "none", "--smoothing", "0.3", "--patch-dropout", "0", "--seed", "5"],
     "--smoothing 0.3 (the run: 0.0); --patch-dropout 0.0 (the run: 0.5); --aug none (the run: mnist); "
     "--seed 5 (the run: 0)"),
    (["--heads", "4"], "--heads 4 (the run: 2)"),  # was "does not fit this model and optimizer (...)", no flag named
], ids=["lr", "batch", "classes swapped", "other data", "regularisation", "architecture"])
def test_a_resume_with_other_settings_is_refused_naming_the_flags_and_both_values(tmp_path, data, two_classes,
                                                                                  capsys, flags, changes):
    (data / "fashion-mnist").symlink_to(data / "mnist")  # the same files under Fashion-MNIST's name
    before = {p.name: p.read_bytes() for p in two_classes.iterdir()}
    code, err = exit_of(argv(data, two_classes, "--classes", "0,1", "--epochs", "4", "--resume", "auto", *flags),
                        capsys)
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        f"error: --resume: the run in {two_classes} has other settings: {changes}. A resume may change --epochs, "
        "--eval-every, --save-every, --tta and --device, --attn, --amp, --threads, --workers, --compile only; start a "
        "new run (another --output) to change the others")
    assert {p.name: p.read_bytes() for p in two_classes.iterdir()} == before  # nothing trained, the record as it was


def test_a_resume_may_change_the_epochs_and_evaluation_and_the_record_keeps_both(data, two_classes, capsys):
    command = json.loads((two_classes / "args.json").read_text())["command"]
    results = train.main(argv(data, two_classes, "--classes", "0,1", "--epochs", "3", "--eval-every", "1", "--tta",
                              "flip", "--threads", "2", "--resume", "auto"))
    assert results["epochs"] == 3 and results["tta"] == "flip"
    assert (f"--resume: continuing the run in {two_classes} with --epochs 3 (the run: 2), --eval-every 1 (the run: 5), "
            "--tta flip (the run: none)") in capsys.readouterr().err
    train.main(argv(data, two_classes, "--classes", "0,1", "--epochs", "4", "--resume", "auto"))
    record = json.loads((two_classes / "args.json").read_text())
    assert record["command"] == command and record["config"]["epochs"] == 2  # the start's settings, as they were
    assert record["classes"] == ["0", "1"] and record["config"]["tta"] == "none"
    assert [r["changes"] for r in record["resumes"]] == [
        {"config.epochs": [2, 3], "config.eval_every": [5, 1], "config.tta": ["none", "flip"]},
        {"config.epochs": [3, 4], "config.eval_every": [1, 5], "config.tta": ["flip", "none"]}]  # against the last


def test_a_resume_to_fewer_epochs_than_trained_is_refused(data, two_classes, capsys):
    code, err = exit_of(argv(data, two_classes, "--classes", "0,1", "--epochs", "1", "--resume", "auto"), capsys)
    assert code == 1 and err.strip().splitlines()[-1] == (
        f"error: --epochs 1: the run in {two_classes} has trained 2 epochs already; resume it with --epochs 2 or more")


def test_eval_only_compares_the_model_and_classes_not_the_training(data, two_classes, capsys):
    train.main(argv(data, two_classes, "--classes", "0,1", "--lr", "0.5", "--eval-only", "--resume", "auto"))
    code, err = exit_of(argv(data, two_classes, "--classes", "0,1", "--heads", "4", "--eval-only", "--resume", "auto"),
                        capsys)
    assert code == 1 and "has other settings: --heads 4 (the run: 2). A resume may change" in err


def test_a_resume_without_a_readable_record_says_so_and_writes_one(data, two_classes, capsys):
    (two_classes / "args.json").write_text('{"config": "not a config"}')
    assert train.main(argv(data, two_classes, "--classes", "0,1", "--epochs", "3", "--resume", "auto"))["epochs"] == 3
    assert (f"warning: {two_classes} has no readable args.json: this resume's settings cannot be checked against "
            "the run's") in capsys.readouterr().err
    assert json.loads((two_classes / "args.json").read_text())["config"]["epochs"] == 3
