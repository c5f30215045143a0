"""A run's folder on disk: where it is, its resume state, and the files it leaves for the user.

`Run`, at the end of this file, is the one door through which the training loop (`vit.engine.fit`)
reaches all of it: it claims the folder, restores and writes the resume state, saves checkpoints and
metrics, reports progress, and turns a stop (Ctrl-C, a diverged loss, a full disk) into a message.

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
                    average); best.safetensors: the best held-out accuracy so far
  metrics.csv       one row per epoch: lr, train_loss/acc, and eval_loss/acc on the held-out split the
                    run scores (a dataset's test set, a folder's val split); curves.png: loss and accuracy
  results.json      final accuracy (test_acc on a dataset's test set, val_acc on a folder's validation
                    split), per-class accuracy, confusion matrix, parameters, time, img/s;
                    confusion.png: the confusion matrix
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import PIL
import torch
import torch.nn as nn

from . import plot
from .config import Runtime, TrainConfig
from .data import Data
from .errors import VitError, is_int
from .files import atomic_write
from .model import count_params
from .progress import Progress, RunEstimate
from .weights import save_checkpoint

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


def save_weights(path: Path, model: nn.Module, metadata: dict[str, str]) -> None:
    """A checkpoint of the run (vit.weights.save_checkpoint), written whole or not at all."""
    with atomic_write(path) as f:
        save_checkpoint(f, model, metadata)


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


# ------------------------------------------------------------------------------------------------
# The run, as vit.engine.fit sees it: one object for all of the above


class Run:
    """What `fit` leaves on disk and says on the way, behind one door: the run folder (claimed and
    recorded), the resume state, the checkpoints, metrics and results, the progress lines, and the
    message a stopped run ends with. Only the main process of a DDP job writes."""

    def __init__(self, out: str | Path | None, data: Data, cfg: TrainConfig, rt: Runtime,
                 metadata: dict[str, str] | None = None) -> None:
        self.out = Path(out) if out is not None else new_run_folder("fit")
        self.data, self.cfg, self.rt = data, cfg, rt
        # what every checkpoint carries besides the weights, for vit.predict and the user
        self.metadata = {"classes": json.dumps(data.classes), "mean": json.dumps(data.mean),
                         "std": json.dumps(data.std), "args": json.dumps(sys.argv), **(metadata or {})}
        self.history: list[dict] = []
        self.saved: int | None = None  # the last epoch whose resume state is on disk
        self.best = -1.0  # the best held-out accuracy so far, which best.safetensors holds
        self.estimate: RunEstimate | None = None
        self.start = time.perf_counter()

    @contextmanager
    def open(self) -> Iterator[None]:
        """The folder claimed for this process while the block runs (one run per folder); Ctrl-C, a
        diverged loss (FloatingPointError) or a failed write (a full disk) ends it with a message saying
        what was kept and how to continue."""
        with claimed(self.out, self.rt.main):
            try:
                yield
            except (KeyboardInterrupt, FloatingPointError, OSError) as e:
                raise self._stopped(e) from None

    def resume(self, path: Path | None, fallback: bool, model: nn.Module, opt: torch.optim.Optimizer,
               ema: object | None) -> tuple[int, int]:
        """Loads the resume state at `path` (None: a fresh start) into the model, the optimizer and the EMA
        (an `engine.EMA`), records the run in args.json and returns (epochs done, steps done). With
        `fallback`, an unreadable state gives way to the one before it (`read_resume_state`)."""
        epoch = step = 0
        if path is not None:
            def apply(state: dict) -> None:
                model.load_state_dict(state["model"])
                opt.load_state_dict(state["optimizer"])

            state, path = read_resume_state(path, fallback, apply)
            epoch, step, self.history, self.saved = state["epoch"], state["step"], state["history"], state["epoch"]
            _say(self.rt.main, f"resumed from {path} after epoch {epoch}")
            if ema is not None and "ema" in state:
                ema.model.load_state_dict(state["ema"])
            elif ema is not None:
                _say(self.rt.main, f"warning: {path} holds no EMA weights; the average starts from the resumed weights")
                ema.model.load_state_dict(model.state_dict())
        if epoch > self.cfg.epochs:  # results.json would claim the run trained cfg.epochs
            raise VitError(f"--epochs {self.cfg.epochs}: the run in {self.out} has trained {epoch} epochs already; "
                           f"resume it with --epochs {epoch} or more")
        if self.rt.main:
            record_run(self.out, asdict(self.cfg), asdict(model.cfg), self.data.classes, resumed=path is not None)
        held_out_images = len(self.data.held_out) * self.cfg.batch_size
        self.estimate = RunEstimate(self.cfg, epoch, len(self.data.train), held_out_images, self.rt.main, ema is not None)
        self.best = max((h["eval_acc"] for h in self.history if "eval_acc" in h), default=-1.0)
        self.start = time.perf_counter()
        return epoch, step

    def step_report(self, epoch: int) -> Callable[[int, int, float, torch.Tensor], None]:
        """What `train_epoch` calls after each step of `epoch`: the estimate, the progress line, and a stop
        as soon as the running loss is no longer a number."""
        progress = Progress(len(self.data.train), f"epoch {epoch + 1}", self.rt.main)

        def report(done: int, images: int, seconds: float, sums: torch.Tensor) -> None:
            self.estimate.step(seconds, images)
            if progress.due(done):
                mean_loss = (sums[0] / sums[2]).item()
                if not math.isfinite(mean_loss):
                    raise FloatingPointError(f"loss is {mean_loss} in epoch {epoch + 1}, step {done}")
                progress.show(done, int(sums[2].item()) * self.rt.world_size, mean_loss)

        return report

    def end_epoch(self, epoch: int, stats: dict, step: int, model: nn.Module, opt: torch.optim.Optimizer,
                  ema_model: nn.Module | None) -> None:
        """After `epoch`: its line, best.safetensors if it scored best, every cfg.save_every epochs (and
        after the last) last.safetensors with the resume state, and the metrics so far."""
        self.history.append({"epoch": epoch, **stats})
        if not self.rt.main:
            return
        scored = model if ema_model is None else ema_model
        print(summary_line(self.history[-1], self.cfg.epochs, self.data.split), flush=True)
        if stats.get("eval_acc", -1.0) > self.best:
            self.best = stats["eval_acc"]
            save_weights(self.out / "best.safetensors", scored, self.metadata)
        if epoch % self.cfg.save_every == 0 or epoch == self.cfg.epochs:
            save_weights(self.out / "last.safetensors", scored, self.metadata)
            save_state(self.out / STATE_FILE, model, opt, epoch, step, self.history, ema_model)
            self.saved = epoch
        write_metrics(self.out, self.history, self.data.split)

    def finish(self, result: dict, model: nn.Module) -> dict:
        """results.json (and confusion.png) from the final evaluation `result`, and the line saying it."""
        results = run_results(result, self.history, self.data, model, self.cfg, self.rt, self.best,
                              time.perf_counter() - self.start)
        if self.rt.main:
            split = self.data.split
            write_results(self.out, results, self.data.classes)
            print(f"final {split} accuracy {100 * result['acc']:.2f}% ({result['count']} images)"
                  f"{tta_note(result, self.cfg.tta)}, {results['train_seconds']:.0f}s training, outputs in {self.out}",
                  flush=True)
        return results

    def _stopped(self, e: BaseException) -> BaseException:
        """The exception to raise for a run stopped by Ctrl-C, a diverged loss or a failed write, after
        removing its folder when nothing was saved yet (so no empty run is left for the user or --resume
        auto)."""
        out, saved = self.out, self.saved
        removed = f"; removed {out}" if self.rt.main and saved is None and remove_unstarted(out) else ""
        kept = f"the state after epoch {saved} is kept in {out}" if saved is not None else f"no epoch was saved{removed}"
        if isinstance(e, OSError):
            what = (e.strerror or str(e)).lower()
            file = Path(e.filename).name.split(".tmp-")[0].removesuffix(".next") if e.filename else ""
            where = f" while writing {file}" if file else ""
            return VitError(f"{what}{where} in {out}; {kept}")
        if isinstance(e, FloatingPointError):
            return VitError(f"training diverged: {e}; {kept}")
        if saved is None:
            return KeyboardInterrupt(f"interrupted before the first epoch was saved{removed}")
        return KeyboardInterrupt(f"interrupted after epoch {saved}; continue with --resume auto --output {out}")


def run_results(result: dict, history: list[dict], data: Data, model: nn.Module, cfg: TrainConfig, rt: Runtime,
                best: float, wall: float) -> dict:
    """results.json's content: the final evaluation, named by its split (test_acc or val_acc), and the run."""
    split = data.split
    train_seconds = sum(h["seconds"] for h in history)
    results = {
        "split": split, f"{split}_acc": result["acc"], f"{split}_loss": result["loss"], f"{split}_images": result["count"],
        f"best_{split}_acc": best, "per_class_acc": dict(zip(data.classes, result["per_class_acc"])),
        "confusion": result["confusion"], "classes": data.classes, "epochs": cfg.epochs,
        "params": count_params(model), "train_seconds": train_seconds, "wall_seconds_this_process": wall,
        "train_img_per_s": sum(h["img_per_s"] * h["seconds"] for h in history) / max(train_seconds, 1e-9),
        "device": str(rt.device), "processes": rt.world_size, "command": " ".join(sys.argv), "versions": versions(),
        "ema": cfg.ema, "tta": cfg.tta,
    }
    if "single_acc" in result:  # the accuracy above is the --tta views' mean prediction
        results.update({"views": result["views"], f"single_view_{split}_acc": result["single_acc"],
                        f"single_view_{split}_loss": result["single_loss"]})
    if "raw_eval_acc" in history[-1]:
        results[f"raw_{split}_acc"] = history[-1]["raw_eval_acc"]
    return results


def summary_line(h: dict, epochs: int, split: str) -> str:
    """An epoch's line on stdout: learning rate, training and held-out loss and accuracy, time, speed."""
    held_out = f"{split} loss {h['eval_loss']:.4f} acc {100 * h['eval_acc']:6.2f}%" if "eval_acc" in h else ""
    raw = f" (without EMA {100 * h['raw_eval_acc']:6.2f}%)" if "raw_eval_acc" in h else ""
    tta = f" (with TTA {100 * h['tta_eval_acc']:6.2f}%)" if "tta_eval_acc" in h else ""
    return (f"epoch {h['epoch']:>3}/{epochs}  lr {h['lr']:.2e}  train loss {h['train_loss']:.4f} "
            f"acc {100 * h['train_acc']:6.2f}%  {held_out}{raw}{tta}  {h['seconds']:6.1f}s  {h['img_per_s']:7.0f} img/s")


def tta_note(result: dict, tta: str) -> str:
    """' with --tta NAME (V views; X% from the image alone)' after a reported accuracy, or ''."""
    if tta == "none":
        return ""
    return f" with --tta {tta} ({result['views']} views; {100 * result['single_acc']:.2f}% from the image alone)"


def load_scored_weights(path: Path, fallback: bool, model: nn.Module) -> nn.Module:
    """The weights a run reported, from its resume state at `path`: its EMA average where it kept one (in
    a copy of `model`), else the trained weights (loaded into `model`)."""
    state, _ = read_resume_state(path, fallback, lambda state: model.load_state_dict(state["model"]))
    if "ema" not in state:
        return model
    average = copy.deepcopy(model)
    average.load_state_dict(state["ema"])
    return average
