"""Transfer learning on CIFAR-10, measured: pre-train on the six animal classes, fine-tune on the four vehicles.

    python -m vit.transfer --data cifar10-jpg                     # cifar10-jpg/{train,test}/<class>/*.jpg
    python -m vit.transfer --data cifar10-jpg --per-class 5000 --lrs 1e-3,3e-3 --layer-decays 0.75

Does a model pre-trained on other classes reach a given accuracy on a new task sooner, and end
higher, than one trained from scratch, and at which fine-tuning learning rate? The ViT paper's
question, at a size a CPU answers in minutes. Every run is train.py or finetune.py (their own code
path, as vit.sweep runs them):

1. Folders of symbolic links in OUTPUT/data: animals/{train,test} (bird, cat, deer, dog, frog, horse:
   30,000 / 6,000 images) and vehicles-N/{train,test} (airplane, automobile, ship, truck: the first N
   training images of each class by file name, all 4,000 test images).
2. Pre-training, once (seed 0): `train.py --data OUTPUT/data/animals --img-size 32 --epochs P`, the
   folder recipe (conv stem, 4 px patches, 0.89M parameters).
3. For each N, at the same epochs for every method (epochs_for): from scratch (`train.py`, the folder
   recipe); a linear probe (`finetune.py --freeze`: the head on cached features, at --head-lr); every
   weight (`finetune.py`) at each --lrs x --layer-decays. Fine-tuning every weight augments as the
   pre-training did (--aug cifar --crop-padding 4) and scores the mean of two flipped views (--tta
   flip), as train.py's folder recipe does.

Re-running the same command resumes: finished runs are skipped (vit.sweep.train_run); another command
into the same OUTPUT (more levels, other rates) reuses the pre-training and adds its rows. A failed run
is recorded and the others go on; the command then exits with status 1. Writes in OUTPUT:
  transfer.csv   one row per run: N, method, seed, status, accuracy, single-view accuracy, seconds, command
  transfer.md    per N and method: accuracy mean ± std over seeds, and the training seconds until the
                 single-view accuracy first reached the scratch runs' mean final one
  chart_N.png    single-view held-out accuracy against training seconds, one curve per method
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from . import plot
from .config import ConfigError
from .errors import VitError, run_cli
from .folders import find_classes, split_folders
from .files import atomic_write
from .recipes import RECIPES
from .runs import write_csv
from .sweep import exit_if_failed, mean_std, train_run

ANIMALS = ("bird", "cat", "deer", "dog", "frog", "horse")
VEHICLES = ("airplane", "automobile", "ship", "truck")
IMG_SIZE = 32  # CIFAR-10's own size: no resampling anywhere
IMAGES_PER_RUN = 40_000  # training images a fine-tuning run sees (epochs x folder size), within 5 to 30 epochs
FIELDS = ["per_class", "method", "seed", "epochs", "status", "val_acc", "single_acc", "train_seconds", "output",
          "error", "command"]


def epochs_for(train_images: int) -> int:
    """Epochs of every run at one N: about IMAGES_PER_RUN images seen, at least 5 and at most 30."""
    return max(5, min(30, round(IMAGES_PER_RUN / train_images)))


def link_subset(src: Path, dst: Path, classes: tuple[str, ...], per_class: int | None) -> int:
    """dst/<class>/ for each class of src: a link to the class folder (per_class None), or a folder
    of links to its first per_class image files by name. Returns the number of images linked."""
    total = 0
    for name in classes:
        files = sorted(p for p in (src / name).iterdir() if p.is_file() and not p.name.startswith("."))
        if per_class is not None and len(files) < per_class:
            raise VitError(f"{src / name}: {len(files)} images, fewer than the --per-class {per_class} asked for")
        target = dst / name
        if per_class is None:
            if not target.is_symlink():
                dst.mkdir(parents=True, exist_ok=True)
                os.symlink((src / name).resolve(), target)
            total += len(files)
            continue
        target.mkdir(parents=True, exist_ok=True)
        for f in files[:per_class]:
            link = target / f.name
            if not link.is_symlink():
                os.symlink(f.resolve(), link)
        total += per_class
    return total


def build_folders(data: Path, out: Path, levels: list[int]) -> tuple[dict[str, Path], dict[str, int]]:
    """The animals folder and a vehicles-N folder per level under out/data (see the module docstring),
    and the number of images in each split ('animals/train', 'vehicles/test', ...)."""
    train_dir, test_dir = split_folders(data)
    if test_dir is None:
        raise VitError(f"--data {data}: expected {data}/train/<class>/ and {data}/test/<class>/ (CIFAR-10's images "
                       "as a folder)")
    missing = sorted(set(ANIMALS + VEHICLES) - set(find_classes(train_dir)))
    if missing:
        raise VitError(f"--data {data}: no class folder {', '.join(missing)} in {train_dir}")
    folders = {"animals": out / "data" / "animals"}
    counts = {"animals/train": link_subset(train_dir, folders["animals"] / "train", ANIMALS, None),
              "animals/test": link_subset(test_dir, folders["animals"] / "test", ANIMALS, None)}
    for n in levels:
        folders[f"vehicles-{n}"] = out / "data" / f"vehicles-{n}"
        link_subset(train_dir, folders[f"vehicles-{n}"] / "train", VEHICLES, n)
        counts["vehicles/test"] = link_subset(test_dir, folders[f"vehicles-{n}"] / "test", VEHICLES, None)
    return folders, counts


@dataclass(frozen=True)
class Method:
    """One way to train on the vehicles: a label, the script and its flags (besides data, epochs, seed)."""
    label: str
    script: str
    flags: tuple[str, ...]


def methods(weights: Path, lrs: list[str], layer_decays: list[str], head_lr: str | None) -> list[Method]:
    """From scratch, a linear probe (unless head_lr is None), and every weight at each lr x layer decay."""
    tuned = ("--weights", str(weights), "--aug", "cifar", "--crop-padding", "4", "--tta", "flip")
    out = [Method("from scratch", "train", ())]
    if head_lr is not None:  # a probe on cached features: the eval view of each image, nothing per batch
        out.append(Method(f"linear probe, lr {head_lr}", "finetune", ("--weights", str(weights), "--freeze",
                                                                       "--lr", head_lr)))
    out += [Method(f"all weights, lr {lr}, layer decay {ld}", "finetune", (*tuned, "--lr", lr, "--layer-decay", ld))
            for ld in layer_decays for lr in lrs]
    return out


def _slug(label: str) -> str:
    return label.replace(", ", "-").replace(" ", "_")


def curve(run: Path) -> tuple[list[float], list[float]]:
    """(training seconds so far, single-view held-out accuracy %) at each evaluated epoch of a run."""
    xs, ys, seconds = [], [], 0.0
    with open(run / "metrics.csv", newline="") as f:
        for r in csv.DictReader(f):
            seconds += float(r["seconds"])
            if r.get("eval_acc"):
                xs.append(seconds)
                ys.append(100 * float(r["eval_acc"]))
    return xs, ys


def seconds_to_reach(xs: list[float], ys: list[float], target: float) -> float:
    """Training seconds at the first evaluation at or above target (NaN if none)."""
    return next((x for x, y in zip(xs, ys) if y >= target - 1e-9), math.nan)


def report(rows: list[dict], pretrain: dict, counts: dict[str, int]) -> str:
    """transfer.md: one table per N (see the module docstring); `pretrain` is its results.json."""
    intro = (f"Pre-trained on the {len(ANIMALS)} animal classes ({counts['animals/train']:,} images) for "
             f"{pretrain['epochs']} epoch(s): {100 * pretrain['val_acc']:.2f}% on their {counts['animals/test']:,} "
             f"test images, {pretrain['train_seconds']:.0f} s, {pretrain['params']:,} parameters. Fine-tuned and "
             f"scored on the {len(VEHICLES)} vehicle classes ({counts['vehicles/test']:,} test images). Accuracy: "
             "mean of two flipped "
             "views, mean ± sample std over seeds; 'reaches scratch': training seconds until the single-view "
             "accuracy first reached the from-scratch runs' final single-view accuracy (mean over the seeds "
             "that did; 'never' if none).")
    commands = [f"`{c}`" for c in dict.fromkeys(r["command"] for r in rows)]
    lines = ["# Transfer: CIFAR-10 animals -> vehicles", "", *commands, "", intro, ""]
    for n in sorted({int(r["per_class"]) for r in rows}):
        level = [r for r in rows if int(r["per_class"]) == n and r["status"] == "ok"]
        by_method: dict[str, list[dict]] = {}
        for r in level:
            by_method.setdefault(r["method"], []).append(r)
        scratch = by_method.get("from scratch", [])
        target = statistics.fmean(100 * float(r["single_acc"]) for r in scratch) if scratch else math.nan
        epochs = level[0]["epochs"] if level else "?"
        lines += [f"## {n} training images per class ({len(VEHICLES) * n:,} images, {epochs} epochs)", "",
                  "| method | accuracy (%) | single view (%) | seeds | train s | reaches scratch (s) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for method, runs in by_method.items():
            acc, std = mean_std([100 * float(r["val_acc"]) for r in runs])
            single, _ = mean_std([100 * float(r["single_acc"]) for r in runs])
            reach = [seconds_to_reach(*curve(Path(r["output"])), target) for r in runs]
            reached = [s for s in reach if not math.isnan(s)]
            when = "never" if not reached else f"{statistics.fmean(reached):.0f}" + (
                f" ({len(reached)} of {len(reach)} seeds)" if len(reached) < len(reach) else "")
            lines.append(f"| {method} | {acc:.2f}" + ("" if math.isnan(std) else f" ± {std:.2f}") +
                         f" | {single:.2f} | {len(runs)} | {statistics.fmean(float(r['train_seconds']) for r in runs):.0f}"
                         f" | {when} |")
        lines.append("")
    failed = [r for r in rows if r["status"] != "ok"]
    lines += [f"- FAILED: {r['per_class']} per class, {r['method']}, seed {r['seed']}: {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def chart(path: Path, rows: list[dict], n: int) -> None:
    """Single-view accuracy against training seconds at one N, one curve per method (its seed 0)."""
    series = {r["method"]: curve(Path(r["output"])) for r in rows
              if int(r["per_class"]) == n and r["status"] == "ok" and int(r["seed"]) == 0}
    plot.line_chart(path, series, f"vehicles, {n} images per class: held-out accuracy (single view, seed 0)",
                    "training seconds", "accuracy (%)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vit.transfer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="CIFAR-10 as an image folder: DATA/{train,test}/<class>/")
    p.add_argument("--output", type=Path, default=Path("transfer"), help="folder of the runs and reports")
    p.add_argument("--pretrain-epochs", type=int, default=10, help="epochs of the pre-training on the animals")
    p.add_argument("--per-class", default="100,1000", help="comma-separated N: vehicle training images per class")
    p.add_argument("--lrs", default="3e-4,1e-3,3e-3", help="fine-tuning learning rates (all weights)")
    p.add_argument("--layer-decays", default="0.75,1", help="layer-wise lr decays (1 = off), each with every lr")
    p.add_argument("--head-lr", default="3e-3", help="learning rate of the linear-probe runs (the head on cached features)")
    p.add_argument("--no-head", action="store_true", help="leave out the linear-probe runs")
    p.add_argument("--seeds", type=int, default=1, help="fine-tuning runs per method, seeds 0 .. N-1")
    p.add_argument("--threads", type=int, help="torch CPU threads of every run (default: torch's choice)")
    return p


def _numbers(p: argparse.ArgumentParser, flag: str, text: str, kind: type, field: str | None = None) -> list[str]:
    """The comma-separated values of `flag`, each a `kind` and, with `field`, one that finetune.py's
    config takes for that field (its own check, so nothing it would refuse starts a run), else > 0;
    each value once (a repeat would run the same runs twice)."""
    values = [t.strip() for t in text.split(",")]
    try:
        numbers = [kind(v) for v in values]
    except ValueError:
        p.error(f"{flag} {text!r}: expected comma-separated numbers")
    for value, number in zip(values, numbers):
        if field is None and number <= 0:
            p.error(f"{flag} {value}: must be > 0")
        if field is not None:
            try:
                RECIPES["finetune"].replace(**{field: number})
            except ConfigError as e:
                p.error(f"{flag} {value}: {e.problem}")
    repeated = [v for v, n in zip(values, numbers) if numbers.count(n) > 1]
    if repeated:
        p.error(f"{flag} {text!r}: {repeated[0]} is given more than once")
    return values


def main(argv: list[str] | None = None) -> list[dict]:
    p = build_parser()
    args = p.parse_args(argv)
    levels = [int(v) for v in _numbers(p, "--per-class", args.per_class, int)]
    lrs = _numbers(p, "--lrs", args.lrs, float, "lr")
    layer_decays = _numbers(p, "--layer-decays", args.layer_decays, float, "layer_decay")
    _numbers(p, "--head-lr", args.head_lr, float, "lr")
    if args.pretrain_epochs < 1 or args.seeds < 1:
        p.error("--pretrain-epochs and --seeds must be >= 1")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    command = command_line(argv)
    folders, counts = build_folders(args.data, args.output, levels)
    system = ["--threads", str(args.threads)] if args.threads else []

    pretrain_out = args.output / "pretrain-animals"
    pre = train_run(["--data", str(folders["animals"]), "--img-size", str(IMG_SIZE), "--epochs",
                     str(args.pretrain_epochs), *system], pretrain_out)
    if pre["status"] != "ok":
        raise VitError(f"the pre-training failed: {pre['error']}")
    weights = pretrain_out / "last.safetensors"
    pretrain = json.loads((pretrain_out / "results.json").read_text())

    rows = _earlier_rows(args.output / "transfer.csv")  # other levels and methods run into this --output before
    for seed in range(args.seeds):
        for n in levels:
            epochs = epochs_for(len(VEHICLES) * n)
            schedule = ["--epochs", str(epochs), "--eval-every", str(max(1, epochs // 10))]
            for m in methods(weights, lrs, layer_decays, None if args.no_head else args.head_lr):
                out = args.output / f"vehicles-{n}" / f"{_slug(m.label)}-seed{seed}"
                result = train_run(["--data", str(folders[f"vehicles-{n}"]), "--img-size", str(IMG_SIZE), *schedule,
                                    *m.flags, *system, "--seed", str(seed)], out, m.script)
                row = {"per_class": n, "method": m.label, "seed": seed, "epochs": epochs, "output": str(out),
                       "command": command,
                       "status": result["status"], "error": result["error"], "val_acc": result.get("test_acc", ""),
                       "train_seconds": result.get("train_seconds", "")}
                if row["status"] == "ok":
                    row["single_acc"] = json.loads((out / "results.json").read_text()).get("single_view_val_acc", row["val_acc"])
                keys = [_key(r) for r in rows]
                if _key(row) in keys:  # run again (or skipped as finished): its row keeps its place
                    rows[keys.index(_key(row))] = row
                else:
                    rows.append(row)
                print(f"[transfer] {n}/class, {m.label}, seed {seed}: " + (
                    f"{100 * float(row['val_acc']):.2f}%" if row["status"] == "ok" else f"FAILED: {row['error']}"),
                    flush=True)
                _write(args.output, rows, report(rows, pretrain, counts))
    return rows


def _key(row: dict) -> tuple[str, str, str]:
    return str(row["per_class"]), str(row["method"]), str(row["seed"])


def _earlier_rows(path: Path) -> list[dict]:
    """The rows of an earlier transfer.csv in the same --output (none if there is none)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write(out: Path, rows: list[dict], markdown: str) -> None:
    """transfer.csv, transfer.md and the charts, rewritten after every run."""
    write_csv(out / "transfer.csv", FIELDS, rows)
    with atomic_write(out / "transfer.md", "w") as f:
        f.write(markdown)
    for n in sorted({int(r["per_class"]) for r in rows}):
        if any(int(r["per_class"]) == n and r["status"] == "ok" for r in rows):
            chart(out / f"chart_{n}.png", rows, n)


def command_line(argv: list[str] | None = None) -> str:
    """This command as typed, which each of its rows records."""
    return "python -m vit.transfer " + " ".join(sys.argv[1:] if argv is None else argv)


def run_command(argv: list[str] | None = None) -> None:
    """python -m vit.transfer: main(), then exit 1 if any run of this command failed (the rows of
    other commands into the same --output, kept in its reports, do not count)."""
    command = command_line(argv)
    exit_if_failed([r for r in main(argv) if r["command"] == command])


if __name__ == "__main__":
    run_cli(run_command)
