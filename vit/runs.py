"""A run's folder on disk: where it is, its resume state, and the files it leaves for the user.

Files in the output folder (each written to a temporary name and renamed, so a killed run never
leaves a half-written one under its real name):
  args.json         the command line, the run config (TrainConfig) and the model config
  state.pt          resume state: model, optimizer, epoch, step, metric history and, with --ema, the
                    averaged weights (tensors and plain containers only: torch.load(weights_only=True))
  state.prev.pt     the resume state before it, which --resume auto falls back to if state.pt is
                    missing or unreadable (e.g. the process was killed while replacing it)
  last.safetensors  the model after the last epoch (with --ema: the average); best.safetensors: the
                    best held-out accuracy (written by vit.engine.fit)
  metrics.csv       one row per epoch; curves.png: loss and accuracy per epoch
  results.json      final accuracy (test_acc on a dataset's test set, val_acc on a folder's validation
                    split), per-class accuracy, confusion matrix, parameters, time, img/s;
                    confusion.png: the confusion matrix
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import PIL
import torch
import torch.nn as nn

from . import plot
from .formats import VitError, atomic_write

STATE_FILE, PREV_STATE_FILE = "state.pt", "state.prev.pt"
STATE_KEYS = {"model", "optimizer", "epoch", "step", "history"}


def run_folder(resume: str | None, output: Path | None, run_name: str, epochs: int,
               runs_dir: Path = Path("runs"), say: bool = True) -> tuple[Path, Path | None]:
    """The output folder and the state.pt to resume from (None: a fresh start).

    resume 'auto' with `output`: the state in that folder, else a fresh start there. 'auto' without
    it: the newest runs/<run_name>-* folder. If that run finished (its results.json has `epochs` or
    more), a new run starts; if it has no state yet (it stopped before its first epoch was saved), it
    starts afresh in that folder; otherwise it resumes (a folder with only state.prev.pt counts:
    `read_resume_state` falls back to it). Each choice is said on stderr (`say`). resume PATH: a run
    folder or its state.pt, which must exist. Without `output` a new run goes to
    runs/<run_name>-<timestamp>.
    """
    fresh = output or runs_dir / f"{run_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if resume == "auto":
        folders = [output] if output else sorted(runs_dir.glob(f"{run_name}-*"), key=os.path.getmtime)
        if not folders:
            return fresh, None
        newest = folders[-1]
        if has_state(newest):
            if output is None and finished_epochs(newest) >= epochs:
                _say(say, f"--resume auto: the newest run {newest} finished its {finished_epochs(newest)} epochs; "
                          f"starting a new run in {fresh}")
                return fresh, None
            return newest, newest / STATE_FILE
        if output is None:
            _say(say, f"--resume auto: the newest run {newest} has no saved state yet (it stopped before its first "
                      "epoch was saved); starting it again from the beginning")
        return newest, None
    if resume:
        path = Path(resume)
        path = path / STATE_FILE if path.is_dir() else path
        if not path.exists():
            raise VitError(f"--resume {resume}: {path} does not exist")
        return path.parent, path
    return fresh, None


def has_state(folder: Path) -> bool:
    return (folder / STATE_FILE).exists() or (folder / PREV_STATE_FILE).exists()


def finished_epochs(folder: Path) -> int:
    """The epochs of the finished run in `folder` (its results.json), or 0 if it has not finished."""
    try:
        epochs = json.loads((folder / "results.json").read_text()).get("epochs", 0)
    except (OSError, ValueError, AttributeError):
        return 0
    return epochs if isinstance(epochs, int) else 0


def remove_unstarted(out: Path) -> bool:
    """Deletes `out` if it holds nothing a user could want (no state, no weights: at most args.json and
    half-written temporaries), so a run stopped before its first epoch leaves nothing behind."""
    if not out.is_dir():
        return False
    files = list(out.iterdir())
    if any(f.name != "args.json" and ".tmp-" not in f.name for f in files):
        return False
    for f in files:
        f.unlink(missing_ok=True)
    out.rmdir()
    return True


def _say(enabled: bool, text: str) -> None:
    if enabled:
        print(text, file=sys.stderr)


# ------------------------------------------------------------------------------------------------
# Resume state


def load_state(path: Path) -> dict:
    """A resume state written by `save_state`, or a VitError saying why `path` is not one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a damaged file; all mean the same here
        raise VitError(f"{path}: not a readable resume state ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not STATE_KEYS <= set(state):
        raise VitError(f"{path}: not a resume state written by this project")
    return state


def read_resume_state(path: Path, fallback: bool) -> tuple[dict, Path]:
    """The resume state at `path` and the file it was read from.

    With `fallback` (--resume auto), a missing or unreadable state.pt gives way to the state.prev.pt
    that save_state keeps beside it (one save older), saying so on stderr; an explicit path never does.
    """
    prev = path.with_name(PREV_STATE_FILE)
    try:
        return load_state(path), path
    except VitError as e:
        if not (fallback and path.name == STATE_FILE and prev.exists()):
            raise
        print(f"warning: {e}; resuming from the previous state {prev} instead", file=sys.stderr)
    return load_state(prev), prev


def save_state(path: Path, model: nn.Module, opt: torch.optim.Optimizer, epoch: int, step: int,
               history: list[dict], ema_model: nn.Module | None) -> None:
    """Writes the resume state, keeping the one before it as state.prev.pt until the new one is in place."""
    buffer = io.BytesIO()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "step": step,
             "history": history}
    if ema_model is not None:
        state["ema"] = ema_model.state_dict()
    torch.save(state, buffer)
    if path.exists():  # keep the last good state (atomically renamed) until the new one is in place
        os.replace(path, path.with_name(PREV_STATE_FILE))
    with atomic_write(path) as f:
        f.write(buffer.getvalue())


def remove_stale_temporaries(out: Path) -> None:
    """Deletes the half-written files (*.tmp-*) a killed run left: never read, only in the way."""
    for stale in out.glob("*.tmp-*"):
        stale.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------
# Files for the user


def write_json(path: Path, obj: dict) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def _series(history: list[dict], key: str, scale: float = 1.0) -> tuple[list[int], list[float]]:
    """(epochs, values) of `key` over the epochs that have it (held-out scores exist on evaluated epochs only)."""
    rows = [h for h in history if key in h]
    return [h["epoch"] for h in rows], [scale * h[key] for h in rows]


def write_metrics(out: Path, history: list[dict], split: str) -> None:
    """metrics.csv (one row per epoch; the val_* cells of epochs without an evaluation are empty) and
    curves.png (loss and accuracy per epoch; the held-out curve is labelled `split`: "test" for the
    datasets that evaluate on their test set, "val" for folders)."""
    columns = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "img_per_s"]
    if any("raw_val_acc" in h for h in history):  # --ema: val_* score the average, raw_val_* the trained weights
        columns += ["raw_val_loss", "raw_val_acc"]
    if any("tta_val_acc" in h for h in history):  # --tta: the last evaluation's mean over views
        columns += ["tta_val_loss", "tta_val_acc"]
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    with atomic_write(out / "metrics.csv", "w") as f:
        f.write(text.getvalue())
    accuracy = {"train": _series(history, "train_acc", 100), split: _series(history, "val_acc", 100)}
    if "raw_val_acc" in columns:
        accuracy[f"{split}, without EMA"] = _series(history, "raw_val_acc", 100)
    plot.charts(out / "curves.png", [
        {"series": {"train": _series(history, "train_loss"), split: _series(history, "val_loss")},
         "title": "loss", "xlabel": "epoch", "ylabel": "cross-entropy"},
        {"series": accuracy, "title": "accuracy (single view)", "xlabel": "epoch", "ylabel": "%"},
    ])


def write_results(out: Path, results: dict, classes: list[str]) -> None:
    """results.json and confusion.png (rows = true class; the title says which accuracy it is)."""
    write_json(out / "results.json", results)
    split = results["split"]
    views = f", mean of {results['views']} test-time views" if "views" in results else ""
    plot.heatmap(out / "confusion.png", results["confusion"], classes, classes,
                 f"confusion matrix ({split}, {100 * results[f'{split}_acc']:.2f}% correct{views})",
                 xlabel="predicted", ylabel="true")


def versions() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "pillow": PIL.__version__}
