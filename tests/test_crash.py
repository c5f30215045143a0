"""Crash safety: train.py killed with SIGKILL at seeded random times resumes with `--resume auto` and
loses at most one epoch; damaged resume states are clear errors, and `--resume auto` falls back to
the state saved before (state.prev.pt); a diverging run keeps its last good checkpoint.

Counts: FAST_KILLS kill points in the default run, SLOW_KILLS under `-m slow`.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vit import engine, runs
from vit.errors import VitError, run_cli
from vit.formats import read_safetensors
from helpers import write_mnist  # tests/helpers.py: tiny datasets written by the tests

ROOT = Path(__file__).resolve().parents[1]
from vit import train  # the command train.py runs

FAST_KILLS = 2  # kill points in the default run (each costs one process start, ~3-5 s here)
SLOW_KILLS = 24  # kill points under -m slow
TINY = ["--embed-dim", "16", "--depth", "1", "--heads", "2", "--batch-size", "32", "--workers", "0", "--threads", "1"]
OUTPUTS = {"args.json", "metrics.csv", "curves.png", "last.safetensors", "best.safetensors", "state.pt",
           "state.prev.pt", "results.json", "confusion.png",
           ".lock",  # a killed process's lock: stale, taken over by the next launch
           "state.pt.next"}  # a whole new state, killed before its renames (state.pt or state.prev.pt is kept)
SUMMARY = re.compile(r"^epoch\s+(\d+)/(\d+)\s", re.M)  # the per-epoch line train.py prints on stdout
START_WINDOW_S = 4.0  # a kill anchored at the launch lands in imports, data loading or the first epochs
EPOCH_WINDOW_S = 0.4  # a kill anchored at an epoch's summary line lands in the next epochs or their saves
WAIT_S = 180.0  # bound on any one wait for a process: no test can hang


def _launch(data: Path, out: Path, epochs: int, log: Path) -> tuple[subprocess.Popen, Path, Path]:
    """Start `train.py --resume auto --output out` in the background; stdout and stderr go to files."""
    stdout, stderr = log.with_suffix(".out"), log.with_suffix(".err")
    cmd = [sys.executable, str(ROOT / "train.py"), "--data", "mnist", "--data-dir", str(data), "--no-download",
           "--epochs", str(epochs), "--output", str(out), "--resume", "auto", *TINY]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with open(stdout, "w") as o, open(stderr, "w") as e:
        process = subprocess.Popen(cmd, stdout=o, stderr=e, env=env, cwd=log.parent)
    return process, stdout, stderr


def _wait_for_summary(process: subprocess.Popen, stdout: Path) -> None:
    """Block until the process prints an epoch summary or exits (bounded by WAIT_S)."""
    deadline = time.monotonic() + WAIT_S
    while process.poll() is None and not SUMMARY.search(stdout.read_text()):
        assert time.monotonic() < deadline, f"no epoch finished within {WAIT_S} s"
        time.sleep(0.01)


def _epochs_printed(stdout: Path) -> list[int]:
    """The epochs whose summary line a launch printed, in order."""
    return [int(m.group(1)) for m in SUMMARY.finditer(stdout.read_text())]


def _check_outputs(out: Path) -> int:
    """Every file under a final name is readable; return the epoch --resume auto continues after."""
    if not out.exists():
        return 0
    names = {p.name for p in out.iterdir()}
    stray = {n for n in names - OUTPUTS if not re.search(r"\.tmp-\d+$", n)}  # a killed write leaves a temp file
    assert not stray, f"unexpected files {stray}"
    epochs = {}
    for name in ("state.pt", "state.prev.pt"):
        if name in names:
            state = torch.load(out / name, map_location="cpu", weights_only=True)
            assert state["epoch"] == len(state["history"]) == state["history"][-1]["epoch"], name
            epochs[name] = state["epoch"]
    if len(epochs) == 2:  # saved every epoch: the previous state is exactly one epoch older
        assert epochs["state.prev.pt"] == epochs["state.pt"] - 1, epochs
    for name in ("last.safetensors", "best.safetensors"):
        if name in names:
            tensors, meta = read_safetensors(out / name)
            assert "head.weight" in tensors and "config" in meta
    for name in ("args.json", "results.json"):
        if name in names:
            json.loads((out / name).read_text())
    if "metrics.csv" in names:
        rows = list(csv.DictReader((out / "metrics.csv").open()))
        assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
    return epochs.get("state.pt", epochs.get("state.prev.pt", 0))


def _check_finished(process: subprocess.Popen, stdout: Path, stderr: Path, out: Path, epochs: int,
                    resumable: int, straight: Path) -> None:
    """A launch that ran to the end: it resumed where the outputs said, trained the remaining epochs, and
    ended with the weights of an uninterrupted run."""
    assert process.returncode == 0, stderr.read_text()[-3000:]
    err = stderr.read_text()
    assert "Traceback" not in err
    if resumable:
        assert re.search(rf"resumed from .* after epoch {resumable}\n", err), err[-2000:]
    assert _epochs_printed(stdout) == list(range(resumable + 1, epochs + 1))
    assert _check_outputs(out) == epochs
    state = torch.load(out / "state.pt", weights_only=True)
    assert [h["epoch"] for h in state["history"]] == list(range(1, epochs + 1))
    assert json.loads((out / "results.json").read_text())["epochs"] == epochs
    a, _ = read_safetensors(out / "last.safetensors")
    b, _ = read_safetensors(straight / "last.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0, msg=name)


def kill_and_resume(tmp_path: Path, kills: int, seed: int, epochs: int) -> list[str]:
    """SIGKILL train.py `kills` times at seeded random times, checking the outputs after each kill; after
    the last kill (or whenever a launch finishes before its kill, on a fast machine) the run goes to the
    end and is checked against an uninterrupted one. Returns a log line per kill point."""
    rng = random.Random(seed)
    data = write_mnist(tmp_path / "data", n_test=32)
    straight = tmp_path / "straight"
    train.main(["--data", "mnist", "--data-dir", str(data), "--no-download", "--epochs", str(epochs),
                "--output", str(straight), *TINY])
    log: list[str] = []
    campaign = 0
    while len(log) < kills:
        out = tmp_path / f"run{campaign}"
        done = resumable = 0  # the highest epoch any launch finished; the epoch a resume continues after
        while True:
            k = len(log)
            anchor = "launch" if k % 2 == 0 else "epoch"  # both kinds in every run
            delay = rng.uniform(0, START_WINDOW_S if anchor == "launch" else EPOCH_WINDOW_S)
            process, stdout, stderr = _launch(data, out, epochs, tmp_path / f"run{campaign}-launch{k}")
            try:
                if k < kills:
                    if anchor == "epoch":
                        _wait_for_summary(process, stdout)
                    time.sleep(delay)
                    process.send_signal(signal.SIGKILL)
                code = process.wait(WAIT_S)
            finally:
                process.kill()
            if code == 0:
                break
            assert code == -signal.SIGKILL, f"kill point {k}: exit {code}: {stderr.read_text()[-3000:]}"
            done = max([done, *_epochs_printed(stdout)])
            now = _check_outputs(out)
            assert now >= resumable, f"kill point {k}: the resumable state went back from epoch {resumable} to {now}"
            assert done - now <= 1, f"kill point {k}: epochs 1..{done} finished but a resume starts after {now}"
            resumable = now
            notes = [f"{p.name} left by a killed write" for p in sorted(out.glob("*.tmp-*"))]
            if (out / "state.prev.pt").exists() and not (out / "state.pt").exists():
                notes.append("killed while replacing state.pt: the resume takes state.prev.pt")
            log.append(f"kill {k}: {delay:.2f} s after the {anchor}, resumable after epoch {now} of {done} "
                       f"finished{''.join(f'; {n}' for n in notes)}")
        _check_finished(process, stdout, stderr, out, epochs, resumable, straight)
        campaign += 1
    return log


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="SIGKILL is POSIX only")
def test_sigkill_then_resume_auto_fast(tmp_path):
    log = kill_and_resume(tmp_path, FAST_KILLS, seed=0, epochs=8)
    print("\n".join(log))


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="SIGKILL is POSIX only")
def test_sigkill_then_resume_auto_slow(tmp_path):
    log = kill_and_resume(tmp_path, SLOW_KILLS, seed=1, epochs=4 * SLOW_KILLS)
    print("\n".join(log))


# ---------------------------------------------------------------------------- damaged states

def _run(data: Path, out: Path, epochs: int, *extra: str) -> dict:
    """train.py in this process (imports are warm: a tiny run takes well under a second)."""
    return train.main(["--data", "mnist", "--data-dir", str(data), "--no-download", "--epochs", str(epochs),
                       "--output", str(out), *extra, *TINY])


@pytest.fixture
def finished(tmp_path) -> tuple[Path, Path]:
    """A 2-epoch run: (data folder, output folder with state.pt after epoch 2, state.prev.pt after epoch 1)."""
    data = write_mnist(tmp_path / "data", n_test=32)
    _run(data, tmp_path / "run", 2)
    return data, tmp_path / "run"


def _damage(path: Path, how: str) -> None:
    """Overwrite `path` with a damaged copy of itself (or with something that never was a checkpoint)."""
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:len(data) // 2], "empty": b"", "tail cut": data[:-100],
                      "garbage head": random.Random(0).randbytes(64) + data[64:], "text": b"not a checkpoint\n"}[how])


@pytest.mark.parametrize("how", ["truncated", "empty", "tail cut", "garbage head", "text"])
def test_damaged_state_is_a_clear_error_naming_the_file(finished, how, capsys):
    data, out = finished
    state = out / "state.pt"
    _damage(state, how)
    with pytest.raises(VitError, match=rf"{state}: not a readable resume state"):
        runs.load_state(state)
    with pytest.raises(SystemExit) as e:  # an explicit path never falls back: the user named that file
        run_cli(lambda: _run(data, out, 3, "--resume", str(state)))
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert f"error: {state}: not a readable resume state" in err and "Traceback" not in err


def test_state_from_elsewhere_is_refused_without_running_its_code(tmp_path):
    class Payload:
        def __reduce__(self) -> tuple:
            return os.mkdir, (str(tmp_path / "pwned"),)

    torch.save({"model": Payload()}, tmp_path / "evil.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(VitError, match=r"evil\.pt: not a readable resume state \(UnpicklingError"):
        runs.load_state(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(VitError, match=r"other\.pt: not a resume state written by this project"):
        runs.load_state(tmp_path / "other.pt")


@pytest.mark.parametrize("how", ["truncated", "missing"])
def test_resume_auto_falls_back_to_the_previous_state_and_says_so(finished, how, capsys):
    data, out = finished
    state, prev = out / "state.pt", out / "state.prev.pt"
    if how == "missing":  # killed between moving state.pt aside and writing the new one
        state.unlink()
    else:
        _damage(state, how)
    capsys.readouterr()
    _run(data, out, 3, "--resume", "auto")
    err = capsys.readouterr().err
    assert f"warning: {state}: not a readable resume state" in err
    assert f"resuming from the previous state {prev} instead" in err
    assert f"resumed from {prev} after epoch 1" in err
    history = torch.load(state, weights_only=True)["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert torch.load(prev, weights_only=True)["epoch"] == 2


def test_resume_auto_with_both_states_damaged_names_both(finished, capsys):
    data, out = finished
    _damage(out / "state.pt", "truncated")
    _damage(out / "state.prev.pt", "empty")
    with pytest.raises(VitError, match=rf"{out / 'state.prev.pt'}: not a readable resume state"):
        _run(data, out, 3, "--resume", "auto")
    assert f"warning: {out / 'state.pt'}: not a readable resume state" in capsys.readouterr().err


def test_divergence_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    data, out = write_mnist(tmp_path / "data", n_test=32), tmp_path / "run"
    real, calls = engine.soft_cross_entropy, []

    def nan_in_second_epoch(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
        calls.append(1)
        loss = real(logits, target, smoothing)
        return loss * float("nan") if len(calls) > 3 else loss  # 96 images / 32 = 3 steps an epoch

    monkeypatch.setattr(engine, "soft_cross_entropy", nan_in_second_epoch)
    with pytest.raises(VitError, match=rf"training diverged: loss is nan in epoch 2.*the state after epoch 1 is kept in {out}"):
        _run(data, out, 3)
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["epoch"] == 1
    last, _ = read_safetensors(out / "last.safetensors")
    for name, value in last.items():
        assert torch.isfinite(value).all() and torch.equal(value, state["model"][name]), name


def test_resume_removes_files_left_by_a_killed_write(finished):
    data, out = finished
    stale = out / "state.pt.tmp-999999"
    stale.write_bytes(b"half of a state")
    _run(data, out, 3, "--resume", "auto")
    assert not stale.exists()
    assert torch.load(out / "state.pt", weights_only=True)["epoch"] == 3
