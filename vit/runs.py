"""A run's folder on disk: where it is, its resume state, and the files it leaves for the user.

Files in the output folder (each written to a temporary name and renamed, so a killed run never
leaves a half-written one under its real name):
  args.json         the run's record: the command line, the run config (TrainConfig), the model config
                    and the classes it started with; each resume that changed a setting (train.py and
                    finetune.py allow the RESUMABLE ones only) adds its command line and the changes,
                    [before, after], under "resumes"
  state.pt          resume state: model, optimizer, epoch, step, metric history and, with --ema, the
                    averaged weights (tensors and plain containers only: torch.load(weights_only=True))
  state.prev.pt     the resume state before it, which --resume auto falls back to if state.pt is
                    missing or unreadable (e.g. the process was killed while replacing it)
  last.safetensors  the model when the resume state was last written (--save-every; with --ema: the
                    average); best.safetensors: the best held-out accuracy (written by vit.engine.fit)
  metrics.csv       one row per epoch: lr, train_loss/acc, and eval_loss/acc on the held-out split the
                    run scores (a dataset's test set, a folder's val split); curves.png: loss and accuracy
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
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import PIL
import torch
import torch.nn as nn

from . import plot
from .errors import VitError, is_int
from .formats import atomic_write

STATE_FILE, PREV_STATE_FILE, LOCK_FILE = "state.pt", "state.prev.pt", ".lock"
STATE_KEYS = {"model", "optimizer", "epoch", "step", "history"}
# what makes a folder "hold a run" (a fresh start would replace it), then the rest --overwrite removes
RUN_OUTPUTS = (STATE_FILE, PREV_STATE_FILE, "last.safetensors", "best.safetensors", "results.json")
RUN_FILES = RUN_OUTPUTS + ("metrics.csv", "curves.png", "confusion.png", "args.json", STATE_FILE + ".next")
# The run config fields a resume may change: how long the run trains, when it evaluates and saves, and the
# final evaluation's views. Everything else would make the record (and the run) a mix of two settings.
RESUMABLE = ("epochs", "eval_every", "save_every", "tta")


def new_run_folder(run_name: str, runs_dir: Path = Path("runs")) -> Path:
    """Where a new run goes when no --output is given: runs/<run_name>-<YYYYmmdd-HHMMSS>."""
    return runs_dir / f"{run_name}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_folder(resume: str | None, output: Path | None, run_name: str, epochs: int,
               runs_dir: Path = Path("runs"), main: bool = True, overwrite: bool = False) -> tuple[Path, Path | None]:
    """The output folder and the state.pt to resume from (None: a fresh start).

    resume 'auto' with `output`: the state in that folder, else a fresh start there. 'auto' without
    it: the newest runs/<run_name>-* folder. If that run finished (its results.json has `epochs` or
    more), a new run starts; if it has no state yet (it stopped before its first epoch was saved), it
    starts afresh in that folder; otherwise it resumes (a folder with only state.prev.pt counts:
    `read_resume_state` falls back to it). resume PATH: a run folder or its state.pt, which must
    exist. No resume: a new run in `output`, refused if that folder holds a run unless `overwrite`,
    else in runs/<run_name>-<timestamp>. The `main` process (of a DDP job) says each choice on
    stderr and, with `overwrite`, removes the old run's files.
    """
    fresh = output or new_run_folder(run_name, runs_dir)
    if resume == "auto":
        folders = [output] if output else sorted(runs_dir.glob(f"{run_name}-*"), key=os.path.getmtime)
        if not folders:
            return fresh, None
        newest = folders[-1]
        if has_state(newest):
            finished = finished_epochs(newest) if output is None else 0
            if finished >= epochs:  # (0 with --output: its state is resumed whatever it holds)
                _say(main, f"--resume auto: the newest run {newest} finished its {finished} epochs; "
                           f"starting a new run in {fresh}")
                return fresh, None
            return newest, newest / STATE_FILE
        if output is None:
            _say(main, f"--resume auto: the newest run {newest} has no saved state yet (it stopped before its first "
                      "epoch was saved); starting it again from the beginning")
        return newest, None
    if resume:
        path = Path(resume)
        if path.is_dir():
            path = path / STATE_FILE
            if not path.exists() and (path.parent / PREV_STATE_FILE).exists():  # stopped between the two renames
                _say(main, f"--resume {resume}: no {STATE_FILE}; resuming from the previous state {PREV_STATE_FILE}")
                path = path.parent / PREV_STATE_FILE
        if not path.exists():
            raise VitError(f"--resume {resume}: {path} does not exist")
        return path.parent, path
    if output is not None and holds_run(output):
        if not overwrite:
                raise VitError(f"--output {output} holds a run; use --resume auto to continue it, another --output, "
                           "or --overwrite to replace it")
        if main:
            print(f"--overwrite: replacing the run in {output}", file=sys.stderr)
            clear_run(output)
    return fresh, None


def has_state(folder: Path) -> bool:
    return (folder / STATE_FILE).exists() or (folder / PREV_STATE_FILE).exists()


def holds_run(folder: Path) -> bool:
    """Whether `folder` holds a run's outputs (a state, weights or results), which a fresh start would replace."""
    return any((folder / name).exists() for name in RUN_OUTPUTS)


def clear_run(folder: Path) -> None:
    """--overwrite: removes the files a run writes (and nothing else) from `folder`."""
    for name in RUN_FILES:
        (folder / name).unlink(missing_ok=True)


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
    if any(f.name not in ("args.json", LOCK_FILE) and ".tmp-" not in f.name for f in files):
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
    problem = _state_problem(state)
    if problem:
        raise VitError(f"{path}: not a resume state written by this project ({problem})")
    return state


def _is_tensor_dict(value: object) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _state_problem(state: dict) -> str:
    """What is wrong with the types in a resume state, or ''."""
    if not _is_tensor_dict(state["model"]):
        return "'model' is not a non-empty dict of named tensors"
    if "ema" in state and not _is_tensor_dict(state["ema"]):
        return "'ema' is not a non-empty dict of named tensors"
    opt = state["optimizer"]
    if not (isinstance(opt, dict) and isinstance(opt.get("state"), dict) and isinstance(opt.get("param_groups"), list)
            and opt["param_groups"]):
        return "'optimizer' is not an optimizer state (state, param_groups)"
    for key in ("epoch", "step"):
        if not (is_int(state[key]) and state[key] >= 0):
            return f"{key!r} is {str(state[key])[:30]!r}, not a count"
    if not (isinstance(state["history"], list) and all(isinstance(h, dict) for h in state["history"])):
        return "'history' is not a list of per-epoch records"
    return ""


def read_resume_state(path: Path, fallback: bool, apply: Callable[[dict], None] = lambda state: None
                      ) -> tuple[dict, Path]:
    """The resume state at `path`, once `apply(state)` has loaded it (into a model and optimizer), and
    the file it came from. A state that does not fit (`apply` raises: wrong shapes or keys) is a
    VitError naming the file.

    With `fallback` (--resume auto), a missing, unreadable or unfitting state.pt gives way to the
    state.prev.pt that save_state keeps beside it (one save older), saying so on stderr; an explicit
    path never does.
    """
    prev = path.with_name(PREV_STATE_FILE)
    try:
        return _apply(path, apply), path
    except VitError as e:
        if not (fallback and path.name == STATE_FILE and prev.exists()):
            raise
        print(f"warning: {e}; resuming from the previous state {prev} instead", file=sys.stderr)
    return _apply(prev, apply), prev


def _apply(path: Path, apply: Callable[[dict], None]) -> dict:
    state = load_state(path)
    try:
        apply(state)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VitError(f"{path}: the saved state does not fit this model and optimizer ({first[:300]})") from None
    return state


def save_state(path: Path, model: nn.Module, opt: torch.optim.Optimizer, epoch: int, step: int,
               history: list[dict], ema_model: nn.Module | None) -> None:
    """Writes the resume state, keeping the one before it as state.prev.pt until the new one is in place."""
    buffer = io.BytesIO()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "step": step,
             "history": history}
    if ema_model is not None:
        state["ema"] = ema_model.state_dict()
    torch.save(state, buffer)
    # The new state is written whole (and fsynced) under another name first, so a full disk or a kill
    # while writing leaves state.pt as it was; only then do two renames rotate it into place.
    staged = path.with_name(path.name + ".next")
    with atomic_write(staged) as f:
        f.write(buffer.getvalue())
    if path.exists():
        os.replace(path, path.with_name(PREV_STATE_FILE))
    os.replace(staged, path)


def lock_run(out: Path) -> Path:
    """Claims `out` for this process with a lock file holding its PID and host; another live process's
    lock is a VitError naming it, a lock left by a killed process is taken over. Returns the lock."""
    lock, me = out / LOCK_FILE, f"{os.getpid()} {platform.node()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner is not None:
                raise VitError(f"{out} is in use by another run (process {owner}); wait for it to finish, "
                               "or choose another --output") from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me + "\n")
        return lock
    raise VitError(f"{out}: cannot take the lock {lock}")


def _lock_owner(lock: Path) -> str | None:
    """'PID on HOST' of a lock's live owner, or None when the lock is stale (its process is gone)."""
    try:
        pid_text, _, host = lock.read_text().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None  # unreadable or half-written: treated as stale
    if host and host != platform.node():
        return f"{pid} on {host}"  # another machine's process (a shared folder): cannot check, assume alive
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return str(pid)


@contextmanager
def claimed(out: Path, enabled: bool = True) -> Iterator[None]:
    """The run folder made and locked for this process (`lock_run`) while the block runs, the
    half-written files of a killed run removed first; the lock is released when the block ends."""
    if not enabled:  # DDP: only the main process writes, and claims
        yield
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VitError(f"{out}: cannot create the run folder ({e.strerror or e})") from None
    lock = lock_run(out)
    try:
        remove_stale_temporaries(out)
        yield
    finally:
        lock.unlink(missing_ok=True)


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


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    """A CSV file of `rows` (dicts; keys outside `columns` ignored, missing ones left empty), written
    atomically (see atomic_write)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(path, "w") as f:
        f.write(text.getvalue())


def write_metrics(out: Path, history: list[dict], split: str) -> None:
    """metrics.csv (one row per epoch; the eval_* cells of epochs without an evaluation are empty) and
    curves.png (loss and accuracy per epoch; the held-out curve is labelled `split`: "test" for the
    datasets that evaluate on their test set, "val" for folders)."""
    columns = ["epoch", "lr", "train_loss", "train_acc", "eval_loss", "eval_acc", "seconds", "img_per_s"]
    if any("raw_eval_acc" in h for h in history):  # --ema: eval_* score the average, raw_eval_* the trained weights
        columns += ["raw_eval_loss", "raw_eval_acc"]
    if any("tta_eval_acc" in h for h in history):  # --tta: the last evaluation's mean over views
        columns += ["tta_eval_loss", "tta_eval_acc"]
    write_csv(out / "metrics.csv", columns, history)
    accuracy = {"train": _series(history, "train_acc", 100), split: _series(history, "eval_acc", 100)}
    if "raw_eval_acc" in columns:
        accuracy[f"{split}, without EMA"] = _series(history, "raw_eval_acc", 100)
    plot.charts(out / "curves.png", [
        {"series": {"train": _series(history, "train_loss"), split: _series(history, "eval_loss")},
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


# ------------------------------------------------------------------------------------------------
# The run's record: what it trains with


def read_record(folder: Path) -> dict | None:
    """The record (args.json) of the run in `folder`, or None if there is none or it is not one."""
    try:
        record = json.loads((folder / "args.json").read_text())
    except (OSError, ValueError):
        return None
    if not (isinstance(record, dict) and isinstance(record.get("config"), dict)
            and isinstance(record.get("model"), dict) and isinstance(record.get("resumes", []), list)
            and all(_is_resume(r) for r in record.get("resumes", []))):
        return None
    return record


def _is_resume(entry: object) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("changes"), dict) and all(
        isinstance(change, list) and len(change) == 2 for change in entry["changes"].values())


def _settings(config: dict, model: dict, classes: list[str] | None) -> dict[str, object]:
    """A run's settings by one name each: 'config.<field>', 'model.<field>' and 'classes'."""
    flat = {**{f"config.{k}": v for k, v in config.items()}, **{f"model.{k}": v for k, v in model.items()}}
    return flat if classes is None else {**flat, "classes": classes}


def changed_settings(record: dict, config: dict, model: dict, classes: list[str]) -> dict[str, list]:
    """The settings that differ from those the run in `record` trains with now (its start's, with its
    resumes' changes applied): name -> [the run's value, this one]. A setting the record lacks (an
    older record without the classes) is not compared."""
    saved = _settings(record["config"], record["model"], record.get("classes"))
    for resume in record.get("resumes", []):
        saved.update({name: change[-1] for name, change in resume["changes"].items()})
    now = _settings(config, model, classes)
    return {name: [saved[name], value] for name, value in now.items() if name in saved and saved[name] != value}


def record_run(folder: Path, config: dict, model: dict, classes: list[str], resumed: bool) -> None:
    """Writes the run's record (args.json, see the module docstring): afresh at a start (or when a resumed
    run has no readable one); on a resume, the record kept as it is and, if this command changed a
    setting, its command line and changes added, so that the record stays true of the whole run."""
    record = read_record(folder) if resumed else None
    if record is None:
        write_json(folder / "args.json", {"command": sys.argv, "config": config, "model": model, "classes": classes})
        return
    changes = changed_settings(record, config, model, classes)
    if changes:
        record["resumes"] = [*record.get("resumes", []), {"command": sys.argv, "changes": changes}]
        write_json(folder / "args.json", record)
