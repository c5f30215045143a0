"""Grid sweeps over train.py's (or finetune.py's) flags: every configuration x seed, trained one after another in this process.

    python -m vit.sweep --data mnist --grid patch_size=4,7 depth=2,4 pos=sin,learned --epochs 5 --seeds 2
    python -m vit.sweep --data cifar10 --grid patch=manual,conv,stem --seeds 3 -- --threads 2 --lr 5e-4
    python -m vit.sweep --script finetune --data scenes --grid lr=1e-4,3e-4 freeze=true,false -- --weights m.safetensors

Every flag of the script can be a grid axis (but --output, --resume, --seed and --eval-only, which the
sweep sets): its name without the dashes ('patch_size' or 'patch-size'), then '=' and comma-separated
values, checked against the flag's type and choices; on/off switches take true/false (yes/no,
on/off, 1/0). Flags after `--` go unchanged to every run. Each run is `vit.train.main(argv)` (what
`python train.py` runs) with `--seed k --output <sweep>/<config>-seed<k> --resume auto`; the sweep
runs seed 0 of every configuration first, then seed 1, and so on.

Re-running the same command resumes: a finished run (its results.json) made with the same flags is
skipped, an interrupted one continues from its state.pt. "The same" is by the run's record (its
args.json), in every flag but the system ones (--device, --threads, ...): a run made with other flags
goes to the script's --resume, which continues it when only --epochs or the evaluation differ and
otherwise refuses, naming them (use another --output for other settings). A run that fails (a bad
flag combination, a bad file, a diverged loss, any exception) is recorded with its error message and
the sweep goes on; the command then exits with status 1.

Files in --output (default sweeps/<data>-<axis>-<axis>...):
  <config>-seed<k>/  the run's outputs (args.json, checkpoints, curves.png, metrics.csv, results.json, ...)
  sweep.csv          one row per run: the axes, seed, status, test_acc, params, train_seconds,
                     train_img_per_s, output, error (rewritten after every run)
  sweep.md           one row per configuration: test accuracy mean ± std over seeds, params, training
                     time, img/s; sorted by mean accuracy; failed runs listed below the table
  chart_<axis>.png   test accuracy per value of the axis, mean ± std over all runs with that value
  chart_curves.png   held-out accuracy per evaluated epoch, one curve per configuration (mean over
                     seeds): who learns faster, and who ends higher (with --eval-every 1, every epoch)
"""

from __future__ import annotations

import argparse
import csv
import difflib
import importlib
import itertools
import json
import math
import re
import shlex
import statistics
import sys
import time
import traceback
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Iterator, Sequence, TextIO

from . import plot
from .cli import SYSTEM_FLAGS
from .errors import USER_ERRORS, VitError, positive_int, run_cli
from .files import atomic_write
from .runs import read_record, write_csv

# Options the sweep sets itself for every run, so they cannot be an axis or a fixed flag.
RESERVED = {"output": "each run gets its own folder under the sweep's --output",
            "resume": "the sweep resumes its runs by itself",
            "seed": "use the sweep's --seeds N (runs seeds 0 .. N-1)",
            "eval_only": "a sweep trains",
            "help": "not a training option"}
# Options that change where and how fast a run computes, not what, and those the sweep sets: a finished run
# made with other values of these is still the same run
NOT_SETTINGS = {*SYSTEM_FLAGS, "output", "resume", "overwrite", "eval_only", "print_config"}
SWITCH_VALUES = {"true": True, "yes": True, "on": True, "1": True,
                 "false": False, "no": False, "off": False, "0": False}
RESULT_COLUMNS = ["seed", "status", "test_acc", "params", "train_seconds", "train_img_per_s", "output", "error"]


@dataclass(frozen=True)
class Axis:
    """One grid axis: a train.py option (`name` is its dest, e.g. 'patch_size') and the values to try.

    `argv[value]` is what selects the value on train.py's command line: ('--depth', '4'); for an on/off
    switch ('--no-download',) or () (store_true) and ('--amp',) or ('--no-amp',) (--amp/--no-amp).
    """
    name: str
    values: tuple[str, ...]
    argv: dict[str, tuple[str, ...]]


# ------------------------------------------------------------------------------------------------
# The grid: parsing and expansion (pure functions of the command line and train.py's parser)


SCRIPTS = ("train", "finetune")  # the commands a sweep can run: vit/train.py and vit/finetune.py


def _script(name: str = "train") -> ModuleType:
    """The command a run is: vit.train (`python train.py`) or vit.finetune (`python finetune.py`); each
    run calls its main(), the command's own code path."""
    return importlib.import_module(f".{name}", __package__)


def train_parser(script: str = "train") -> argparse.ArgumentParser:
    """train.py's (or finetune.py's) argument parser (a fresh one, which the caller may modify)."""
    return _script(script).build_parser()


def train_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """train.py's long options by name without dashes, '-' as '_' ('patch_size' -> the --patch-size action)."""
    # argparse has no public way to list a parser's options; _actions is the list add_argument fills.
    return {a.option_strings[0].lstrip("-").replace("-", "_"): a for a in parser._actions
            if a.option_strings and a.option_strings[0].startswith("--")}


def _folder_safe(value: str) -> str:
    """A value as it appears in a run's folder name: characters other than [A-Za-z0-9._+-] become '_'."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", value)


def _parse_value(axis: str, action: argparse.Action, text: str) -> tuple[str, tuple[str, ...]]:
    """(the value as recorded, the argv selecting it) for one grid value, checked like train.py would."""
    flag = action.option_strings[0]
    if action.nargs == 0:  # an on/off switch: store_true / store_false / --x/--no-x
        on = SWITCH_VALUES.get(text.lower())
        if on is None:
            raise ValueError(f"grid axis {axis}: {text!r} is not on or off; {flag} is a switch, "
                             f"use true or false (or yes/no, on/off, 1/0)")
        if isinstance(action, argparse.BooleanOptionalAction):
            return str(on).lower(), (flag if on else "--no-" + flag[2:],)
        return str(on).lower(), (flag,) if on == action.const else ()
    convert = action.type or str
    try:
        value = convert(text)
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        raise ValueError(f"grid axis {axis}: {text!r} is not a valid {getattr(convert, '__name__', 'value')} "
                         f"for {flag}") from None
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"grid axis {axis}: {text!r} is not a choice of {flag} "
                         f"({', '.join(map(str, action.choices))})")
    return text, (flag, text)


def parse_grid(tokens: Sequence[str], parser: argparse.ArgumentParser, script: str = "train") -> list[Axis]:
    """Axes from 'NAME=V1,V2,...' tokens, NAME an option of `script`.py (`parser`) without dashes ('_' or '-').

    Every name must be an option of `parser` and not one the sweep sets itself (RESERVED); every value
    must convert with the option's type and be one of its choices. Raises ValueError with a message
    naming the token for a malformed token, an unknown or repeated axis, an empty or repeated value.
    """
    options = train_options(parser)
    axes: list[Axis] = []
    for token in tokens:
        name, eq, listed = token.partition("=")
        name = name.strip().lstrip("-").replace("-", "_")
        if not eq or not name:
            raise ValueError(f"grid axis {token!r}: expected NAME=V1,V2,... (e.g. depth=2,4)")
        if name in RESERVED:
            raise ValueError(f"grid axis {name!r} is not allowed: {RESERVED[name]}")
        if name not in options:
            close = difflib.get_close_matches(name, options, n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else f"; see python {script}.py --help"
            raise ValueError(f"grid axis {name!r} is not a {script}.py option{hint}")
        if any(a.name == name for a in axes):
            raise ValueError(f"grid axis {name!r} is given twice; list all its values once: {name}=A,B")
        texts = [t.strip() for t in listed.split(",")]
        if "" in texts:
            raise ValueError(f"grid axis {token!r}: empty value; expected {name}=V1,V2,...")
        parsed = [_parse_value(name, options[name], t) for t in texts]
        values = [v for v, _ in parsed]
        folders = [_folder_safe(v) for v in values]
        if len(set(folders)) < len(folders):
            raise ValueError(f"grid axis {token!r}: a value is repeated (or two values give the same folder "
                             f"name: {', '.join(folders)})")
        axes.append(Axis(name, tuple(values), dict(parsed)))
    return axes


def check_fixed_flags(argv: Sequence[str], parser: argparse.ArgumentParser, axes: Sequence[Axis],
                      script: str = "train") -> None:
    """Checks the flags every run gets (`argv`) against `script`.py's parser (which it sets to raise
    instead of exiting): known flags, valid values, none the sweep sets itself, none that is also an
    axis. Raises ValueError with the reason."""
    parser.exit_on_error = False  # raise ArgumentError instead of exiting, to report it as the sweep's error
    parser.allow_abbrev = False  # an abbreviated flag would slip past the axis check below
    try:
        _, unknown = parser.parse_known_args(list(argv))
    except argparse.ArgumentError as e:
        raise ValueError(f"{script}.py flags: {e}") from None
    if unknown:
        raise ValueError(f"not {script}.py flags: {' '.join(unknown)}")
    options = train_options(parser)
    by_flag = {s: name for name, a in options.items() for s in a.option_strings}
    given = {by_flag[t.split("=")[0]] for t in argv if t.split("=")[0] in by_flag}
    reserved, both = sorted(given & set(RESERVED)), sorted(given & {a.name for a in axes})
    if reserved:
        raise ValueError(f"--{reserved[0].replace('_', '-')} cannot be given to a sweep: {RESERVED[reserved[0]]}")
    if both:
        raise ValueError(f"--{both[0].replace('_', '-')} is both a grid axis and a fixed flag; give it once")


def expand(axes: Sequence[Axis]) -> list[dict[str, str]]:
    """Every configuration of the grid (the cartesian product), the last axis varying fastest."""
    names = [a.name for a in axes]
    return [dict(zip(names, combo)) for combo in itertools.product(*(a.values for a in axes))]


def config_slug(config: dict[str, str]) -> str:
    """The folder-name form of a configuration, e.g. 'patch_size=4,pos=sin'."""
    return ",".join(f"{name}={_folder_safe(value)}" for name, value in config.items())


def config_argv(axes: Sequence[Axis], config: dict[str, str]) -> list[str]:
    """train.py flags selecting `config`."""
    return [token for a in axes for token in a.argv[config[a.name]]]


# ------------------------------------------------------------------------------------------------
# Running


class _StderrTail:
    """A stderr that writes through and keeps the last few kilobytes, to recover argparse's message
    (train.py reports a bad flag combination on stderr, then raises SystemExit)."""

    def __init__(self, stream: TextIO, keep: int = 4000) -> None:
        self.stream, self.keep, self.tail = stream, keep, ""

    def write(self, text: str) -> int:
        self.tail = (self.tail + text)[-self.keep:]
        if text.startswith("usage: "):  # argparse's 20-line usage, once per failed run, would drown the log
            return len(text)
        return self.stream.write(text)

    def __getattr__(self, name: str) -> object:  # flush, isatty (the progress bar asks), fileno, ...
        return getattr(self.stream, name)

    def last_error(self) -> str | None:
        """The last 'prog: error: message' line written, if any."""
        lines = [line for line in self.tail.splitlines() if ": error: " in line]
        return lines[-1].strip() if lines else None


@contextmanager
def _script_argv(script: str, argv: list[str]) -> Iterator[None]:
    """sys.argv set to the equivalent `<script>.py ...` command line for the duration of one run, so
    the run's args.json and checkpoint metadata (which record sys.argv) say how to repeat it alone."""
    saved = sys.argv
    sys.argv = [f"{script}.py", *argv]
    try:
        yield
    finally:
        sys.argv = saved


def _result_fields(results: dict) -> dict[str, object]:
    held_out = results[f"{results.get('split', 'test')}_acc"]  # val_acc for an image folder
    return {"status": "ok", "test_acc": held_out, "params": results["params"],
            "train_seconds": results["train_seconds"], "train_img_per_s": results["train_img_per_s"], "error": ""}


def finished_before(out: Path, argv: list[str], script: str = "train") -> bool:
    """Whether `out` holds a finished run (its results.json) made with the flags `argv`: those of the last
    command line in its record (its start's, or its last resume's that changed a setting) and `argv`'s
    agree in every option but NOT_SETTINGS."""
    record = read_record(out)
    if record is None or not (out / "results.json").exists():
        return False
    command = (record.get("resumes") or [record])[-1].get("command")
    then = _run_settings(command[1:], script) if isinstance(command, list) else None
    return then is not None and then == _run_settings(argv, script)


def _run_settings(argv: Sequence[object], script: str) -> tuple[dict, list[str]] | None:
    """The script's options as `argv` sets them (parsed, so 1e-3 is 0.001) but NOT_SETTINGS, and the
    tokens it does not know; None if its parser refuses `argv` (a record of another version of it)."""
    parser = train_parser(script)
    parser.exit_on_error = False
    try:
        known, unknown = parser.parse_known_args([str(token) for token in argv])
    except (argparse.ArgumentError, SystemExit):
        return None
    return {k: v for k, v in vars(known).items() if k not in NOT_SETTINGS}, unknown


def train_run(argv: list[str], out: Path, script: str = "train") -> dict[str, object]:
    """One run, `<script>.main(argv + --output out --resume auto)` in this process, or its saved results
    when it finished with these flags (`finished_before`). Returns the sweep.csv fields status..error
    (not seed and output)."""
    finished = out / "results.json"
    if finished_before(out, argv, script):
        try:
            return _result_fields(json.loads(finished.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            return {"status": "failed", "error": f"{finished}: unreadable results ({type(e).__name__}: {e})"}
    module = _script(script)
    argv = [*argv, "--output", str(out), "--resume", "auto"]
    tail = _StderrTail(sys.stderr)
    try:
        with redirect_stderr(tail), _script_argv(script, argv):
            return _result_fields(module.main(argv))
    except SystemExit as e:  # the script's argparse error (exit 2): its message is the last error line
        error = tail.last_error() or f"{script}.py exited with status {e.code}"
    except USER_ERRORS as e:
        error = f"error: {e}"
    except Exception as e:  # a bug or a crash: keep the traceback for whoever debugs it, and go on
        traceback.print_exc()
        error = f"{type(e).__name__}: {e}"
    return {"status": "failed", "error": error}


def run_sweep(axes: Sequence[Axis], seeds: int, fixed: list[str], output: Path, script: str = "train"
              ) -> list[dict[str, object]]:
    """Runs (or skips, when finished) every configuration x seed; seed 0 of every configuration first.
    Rewrites output/sweep.csv after each run and returns its rows."""
    configs = expand(axes)
    rows: list[dict[str, object]] = []
    total = len(configs) * seeds
    for seed in range(seeds):
        for config in configs:
            out = output / f"{config_slug(config)}-seed{seed}"
            argv = [*fixed, *config_argv(axes, config), "--seed", str(seed)]
            skipped = finished_before(out, argv, script)
            start = time.perf_counter()
            row = {**config, "seed": seed, **train_run(argv, out, script), "output": str(out)}
            rows.append(row)
            # sweep.csv: the axis columns, then RESULT_COLUMNS; test_acc a fraction, as in results.json
            write_csv(output / "sweep.csv", [*(a.name for a in axes), *RESULT_COLUMNS], rows)
            what = (f"test accuracy {100 * row['test_acc']:.2f}%" if row["status"] == "ok"
                    else f"FAILED: {row['error']}")
            when = "finished before, skipped" if skipped else f"{time.perf_counter() - start:.0f}s"
            print(f"[{len(rows)}/{total}] {config_slug(config)} seed {seed}: {what} ({when})", flush=True)
    return rows


# ------------------------------------------------------------------------------------------------
# Reports (pure functions of the rows, so that a sweep.csv can be re-summarised)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator); NaN for what is undefined."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def summarize(rows: Sequence[dict], axes: Sequence[str]) -> list[dict]:
    """One entry per configuration with at least one finished run, sorted by mean test accuracy
    (highest first; ties keep the grid order): 'config' (axis -> value), 'runs', 'acc' and 'acc_std'
    (fractions), and the means of 'params', 'train_seconds' and 'img_per_s'."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["status"] == "ok":
            groups.setdefault(tuple(str(row[a]) for a in axes), []).append(row)
    out = []
    for key, runs in groups.items():
        acc, acc_std = mean_std([float(r["test_acc"]) for r in runs])
        out.append({"config": dict(zip(axes, key)), "runs": len(runs), "acc": acc, "acc_std": acc_std,
                    "params": statistics.fmean(float(r["params"]) for r in runs),
                    "train_seconds": statistics.fmean(float(r["train_seconds"]) for r in runs),
                    "img_per_s": statistics.fmean(float(r["train_img_per_s"]) for r in runs)})
    return sorted(out, key=lambda s: -s["acc"])


def by_value(rows: Sequence[dict], axis: str) -> list[tuple[str, float, float, int]]:
    """(value, mean, std, finished runs) of test accuracy per value of `axis`, in order of first
    appearance, over all finished runs with that value; a value whose runs all failed has NaNs."""
    accs: dict[str, list[float]] = {}
    for row in rows:
        accs.setdefault(str(row[axis]), [])
        if row["status"] == "ok":
            accs[str(row[axis])].append(float(row["test_acc"]))
    return [(value, *mean_std(a), len(a)) for value, a in accs.items()]


def curves(rows: Sequence[dict], axes: Sequence[str]) -> dict[str, tuple[list[float], list[float]]]:
    """Held-out accuracy (%, single view) per evaluated epoch of each configuration with a finished run:
    the mean over its finished runs, read from their metrics.csv, keyed by the configuration's values
    ('manual, sin'). Epochs that not every one of those runs evaluated are left out."""
    per_config: dict[str, list[dict[int, float]]] = {}
    for row in rows:
        if row["status"] != "ok":
            continue
        try:
            with open(Path(str(row["output"])) / "metrics.csv", newline="") as f:
                accs = {int(r["epoch"]): 100 * float(r["eval_acc"]) for r in csv.DictReader(f) if r.get("eval_acc")}
        except (OSError, ValueError, KeyError):  # a run folder moved or pruned: its curve is left out
            continue
        per_config.setdefault(", ".join(str(row[a]) for a in axes), []).append(accs)
    out = {}
    for name, runs in per_config.items():
        epochs = sorted(set.intersection(*(set(r) for r in runs)))
        out[name] = ([float(e) for e in epochs], [statistics.fmean(r[e] for r in runs) for e in epochs])
    return out


def _percent(mean: float, std: float) -> str:
    return f"{100 * mean:.2f}" + ("" if math.isnan(std) else f" ± {100 * std:.2f}")


def markdown(rows: Sequence[dict], axes: Sequence[str], command: str = "") -> str:
    """sweep.md: one table row per configuration (see `summarize`), then the failed runs."""
    lines = ["# Sweep", ""]
    if command:
        lines += [f"`{command}`", ""]
    seeds = len({str(r["seed"]) for r in rows})
    lines += [f"{len(rows)} runs ({seeds} seed{'s' * (seeds != 1)} per configuration). Test accuracy in %: mean ± "
              "sample std over the finished seeds (runs). Params: trainable parameters. Train s: wall-clock "
              "seconds of the training epochs, img/s: training images per second (means over seeds). "
              "Sorted by mean accuracy.", ""]
    header = ["rank", *axes, "test acc (%)", "runs", "params", "train s", "img/s"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---:|" + "---|" * len(axes) + "---:|" * 5]
    for rank, s in enumerate(summarize(rows, axes), 1):
        cells = [str(rank), *s["config"].values(), _percent(s["acc"], s["acc_std"]), str(s["runs"]),
                 f"{s['params']:,.0f}", f"{s['train_seconds']:.1f}", f"{s['img_per_s']:,.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        lines += ["", f"## Failed runs ({len(failed)})", ""]
        lines += [f"- {','.join(f'{a}={r[a]}' for a in axes)} seed {r['seed']}: {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def write_reports(output: Path, axes: list[str], rows: list[dict], command: str) -> list[Path]:
    """sweep.md, one chart_<axis>.png per axis and chart_curves.png (when the runs evaluated more than
    one epoch); returns the paths written."""
    with atomic_write(output / "sweep.md", "w") as f:
        f.write(markdown(rows, axes, command))
    written = [output / "sweep.md"]
    for axis in axes:
        stats = by_value(rows, axis)
        counts = {n for *_, n in stats}
        if len(counts) == 1:  # the usual case: every value has the same number of finished runs
            labels, over = [value for value, *_ in stats], f"{counts.pop()} runs each"
        else:
            labels, over = [f"{value} (n={n})" for value, _, _, n in stats], "its n finished runs"
        path = output / f"chart_{axis}.png"
        plot.bar_chart(path, labels, [100 * m for _, m, _, _ in stats], [100 * s for _, _, s, _ in stats],
                       f"test accuracy by {axis} (mean ± std over {over})", "test accuracy (%)")
        written.append(path)
    lines = {name: xy for name, xy in curves(rows, axes).items() if len(xy[0]) > 1}
    if lines:  # who learns faster, and who ends higher
        path = output / "chart_curves.png"
        plot.line_chart(path, lines, "held-out accuracy per epoch (single view, mean over seeds)", "epoch",
                        "accuracy (%)")
        written.append(path)
    return written


# ------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    """The sweep's own options (the script's flags for every run go after `--`)."""
    p = argparse.ArgumentParser(prog="python -m vit.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--script", choices=SCRIPTS, default="train",
                   help="what every run is: train.py (from scratch, the default) or finetune.py (from --weights)")
    p.add_argument("--grid", nargs="+", required=True, metavar="NAME=V1,V2",
                   help="axes: the script's options without dashes and the values to try, e.g. depth=2,4 pos=sin,learned")
    p.add_argument("--data", help="dataset of every run (the script's --data; default train.py's)")
    p.add_argument("--epochs", type=positive_int, help="epochs of every run (default: the dataset's recipe)")
    p.add_argument("--seeds", type=positive_int, default=1, help="runs per configuration, seeds 0 .. N-1")
    p.add_argument("--output", type=Path, help="sweep folder (default sweeps/<data>-<axis>-<axis>...)")
    return p


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[Axis], list[str]]:
    """(sweep options, grid axes, the fixed flags of every run); bad flags exit 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    own, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = build_parser()
    args, unknown = p.parse_known_args(own)
    if unknown:
        p.error(f"unrecognized arguments: {' '.join(unknown)} ({args.script}.py flags go after --)")
    fixed = ((["--data", args.data] if args.data else []) + (["--epochs", str(args.epochs)] if args.epochs else [])
             + extra)
    try:
        parser = train_parser(args.script)
        axes = parse_grid(args.grid, parser, args.script)
        check_fixed_flags(fixed, parser, axes, args.script)
    except ValueError as e:
        p.error(str(e))
    if args.output is None:
        parts = ([Path(args.data).name] if args.data else []) + [a.name for a in axes]
        args.output = Path("sweeps") / _folder_safe("-".join(parts))
    return args, axes, fixed


def main(argv: list[str] | None = None) -> list[dict]:
    """Runs the sweep and writes its reports; returns the sweep.csv rows."""
    args, axes, fixed = parse_args(argv)
    command = "python -m vit.sweep " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VitError(f"--output {args.output}: cannot create the folder ({e.strerror})") from None
    rows = run_sweep(axes, args.seeds, fixed, args.output, args.script)
    written = write_reports(args.output, [a.name for a in axes], rows, command)
    failed = sum(r["status"] != "ok" for r in rows)
    print(f"{len(rows)} runs, {failed} failed; wrote {args.output / 'sweep.csv'}, " + ", ".join(map(str, written)))
    return rows


def exit_if_failed(rows: Sequence[dict]) -> None:
    """A VitError (exit 1) when any of these runs failed, as a failed training script exits: a script
    running the command must not read success. The reports name each failed run and its error."""
    failed = sum(r["status"] != "ok" for r in rows)
    if failed:
        raise VitError(f"{failed} of {len(rows)} runs failed")


def run_command(argv: list[str] | None = None) -> None:
    """python -m vit.sweep: main(), then exit 1 if any run failed."""
    exit_if_failed(main(argv))


if __name__ == "__main__":
    run_cli(run_command)
