"""The command line that train.py and finetune.py share: flags, flags -> configs, their checks, the run.

Each training flag is a `TrainConfig` field with dashes (`--batch-size` -> `batch_size`), so the
fields themselves are the table from flags to the config: a flag left out keeps the recipe's value,
and the config's own checks become argparse errors naming the flag (exit 2). Runtime flags (device,
attention kernel, threads, ...) become a `Runtime`; output flags pick the run folder. Flags that
cannot apply together are refused before anything runs (`check_aug_flags`, `check_system_args`). A
resume continues a run with its own settings: `check_resume` refuses any other but the RESUMABLE ones.
(The error exit every command runs in, `run_cli`, is in vit/errors.py.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, fields
from pathlib import Path

from .augment import TTA_VIEWS, aug_problem
from .config import ConfigError, Runtime, TrainConfig
from .data import Data
from .engine import evaluate_held_out, fit
from .errors import VitError
from .model import ViTConfig, VisionTransformer
from .runs import RESUMABLE, changed_settings, load_scored_weights, read_record, run_folder, tta_note
from .runtime import AMP_MIN_WIDTH, FUSED_MIN_HEAD_DIM, setup_runtime, shutdown, world_size

TRAIN_FIELDS = {f.name for f in fields(TrainConfig)}
# train.py's architecture flag -> the ViTConfig field it overrides in the preset (finetune.py has --patch)
MODEL_FLAGS = {"patch": "patch_embed", "pos": "pos_embed", "patch_size": "patch_size", "embed_dim": "embed_dim",
               "depth": "depth", "heads": "num_heads", "mlp_ratio": "mlp_ratio", "pool": "global_pool",
               "drop": "drop_rate"}
# the system flags: where and how fast a run computes, never part of its record
SYSTEM_FLAGS = ("device", "attn", "amp", "threads", "workers", "compile")


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The optimisation, regularisation, system and output flags; a training flag's default of None
    means "the recipe's value" (see vit/recipes.py)."""
    o = parser.add_argument_group("optimisation (default: the recipe's)")
    o.add_argument("--epochs", type=int, help="training epochs")
    o.add_argument("--batch-size", type=int, help="images per optimizer step, over all processes")
    o.add_argument("--opt", choices=("adamw", "sgd"), help="optimizer (sgd: momentum 0.9)")
    o.add_argument("--lr", type=float, help="peak learning rate")
    o.add_argument("--min-lr", type=float, help="learning rate at the end of the cosine")
    o.add_argument("--warmup-epochs", type=float, help="linear warmup from 0, in epochs")
    o.add_argument("--weight-decay", type=float, help="decoupled weight decay (not on biases, norms, embeddings)")
    o.add_argument("--layer-decay", type=float, help="layer-wise lr decay: block i of N learns at lr x decay^(N+1-i) "
                                                     "(1 = off; fine-tuning's recipe 0.75)")
    o.add_argument("--clip-grad", type=float, help="clip the gradient norm to this")
    o.add_argument("--accum-steps", type=int, help="split each batch into this many micro-batches")
    r = parser.add_argument_group("regularisation (default: the recipe's)")
    r.add_argument("--smoothing", type=float, help="label smoothing")
    r.add_argument("--mixup", type=float, help="mixup alpha (0 = off)")
    r.add_argument("--cutmix", type=float, help="cutmix alpha (0 = off)")
    r.add_argument("--drop-path", type=float, help="stochastic depth rate of the last block")
    r.add_argument("--patch-dropout", type=float, help="fraction of patch tokens dropped per image in training")
    r.add_argument("--unmasked-epochs", type=int, help="train the last N epochs on all tokens, without PatchDropout")
    r.add_argument("--crop-padding", type=int, help="the random crop's zero padding in pixels (--aug cifar, crop)")
    r.add_argument("--jitter", type=float, help="colour jitter strength of --aug rrc (0 = off)")
    r.add_argument("--ema", type=float,
                   help="decay of an exponential moving average of the weights, evaluated and saved in their place (0 = off)")
    s = parser.add_argument_group("system")
    s.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                   help="where to train (auto: CUDA, else MPS, else the CPU)")
    s.add_argument("--attn", choices=("auto", "fused", "explicit"), default="auto",
                   help="F.scaled_dot_product_attention, or the explicit softmax(q k^T / sqrt(d)) v; auto: fused, "
                        f"except on the CPU for heads narrower than {FUSED_MIN_HEAD_DIM} (explicit was 1.1-1.6x "
                        "faster there)")
    s.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on for CUDA; on a CPU only with AMX-BF16 and a model at least "
                        f"{AMP_MIN_WIDTH} wide, where it measured faster; the run prints what it chose and why)")
    s.add_argument("--compile", action="store_true", help="torch.compile the model")
    s.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers (folders)")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    s.add_argument("--seed", type=int, help="seed of everything random (default 0)")
    w = parser.add_argument_group("output")
    w.add_argument("--output", type=Path, help="output folder (default: runs/<name>-<timestamp>)")
    w.add_argument("--resume", help="'auto' (newest run of this name), a run folder or its state.pt")
    w.add_argument("--overwrite", action="store_true", help="start afresh in an --output folder that holds a run, "
                                                            "replacing its files")
    w.add_argument("--eval-only", action="store_true", help="evaluate the --resume checkpoint and exit")
    w.add_argument("--print-config", action="store_true",
                   help="print the run config (the recipe with your flags applied) and the model, then exit")
    w.add_argument("--save-every", type=int, help="write the resume state and last.safetensors every N epochs")
    w.add_argument("--eval-every", type=int, help="evaluate every N epochs (and after the last)")
    w.add_argument("--tta", choices=TTA_VIEWS, help="test-time augmentation of the final evaluation: the mean "
                                                    "prediction over the image, its mirror and/or its 1-pixel shifts")


def flag(field: str) -> str:
    """The command-line flag of a TrainConfig field: batch_size -> --batch-size."""
    return "--" + field.replace("_", "-")


def train_config(parser: argparse.ArgumentParser, args: argparse.Namespace, recipe: TrainConfig) -> TrainConfig:
    """The recipe with every training flag the user gave applied; a value the config refuses is an
    argparse error naming the flag (exit 2)."""
    given = {name: getattr(args, name) for name in TRAIN_FIELDS if getattr(args, name, None) is not None}
    try:
        return recipe.replace(**given)
    except ConfigError as e:
        parser.error(f"{flag(e.field)} {e.problem}")


def check_aug_flags(parser: argparse.ArgumentParser, args: argparse.Namespace, recipe: TrainConfig,
                    folder: bool) -> None:
    """Refuses augmentation flags that cannot apply, before anything runs (exit 2): an --aug this data
    cannot use, --crop-padding without a batch crop, --jitter without random-resized-crop."""
    aug = args.aug or recipe.aug
    problem = aug_problem(aug, folder)
    if problem:
        parser.error("--" + problem)
    if args.crop_padding is not None and aug not in ("cifar", "crop"):
        parser.error(f"--crop-padding applies to the batch crops (--aug cifar, crop), not to --aug {aug}")
    if args.jitter is not None and aug != "rrc":
        parser.error(f"--jitter applies to --aug rrc (random-resized-crop per image), not to --aug {aug}")


def recipes_epilog(recipes: dict[str, TrainConfig], presets: dict[str, str] | None = None) -> str:
    """The per-dataset defaults as a small table for --help (every field: --print-config)."""
    rows = [("recipe", "model", "epochs", "batch", "lr", "aug", "patch-dropout", "tta")]
    for name, r in recipes.items():
        epochs = "by size" if name == "folder" else str(r.epochs)  # vit.recipes.folder_schedule
        rows.append((name, (presets or {}).get(name, "from --weights"), epochs, str(r.batch_size), f"{r.lr:g}",
                     r.aug, f"{r.patch_dropout:g}", r.tta))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "defaults per dataset (vit/recipes.py; any flag overrides them; --print-config shows all):\n" + "\n".join(lines)


def print_config(cfg: TrainConfig, model: dict | None = None) -> None:
    """--print-config: the resolved run config and model config as JSON on stdout."""
    print(json.dumps({"config": asdict(cfg), **({"model": model} if model is not None else {})}, indent=2))


def check_system_args(parser: argparse.ArgumentParser, args: argparse.Namespace, cfg: TrainConfig) -> None:
    """Refuses system and output flags that cannot work, before anything runs (exit 2)."""
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    processes = world_size()
    if cfg.batch_size % (cfg.accum_steps * processes):
        parser.error(f"--batch-size {cfg.batch_size} must be divisible by --accum-steps x processes "
                     f"({cfg.accum_steps} x {processes})")
    if args.eval_only and not args.resume:
        parser.error("--eval-only needs --resume PATH (or auto)")
    if args.overwrite and args.resume:
        parser.error("--overwrite starts afresh; it cannot be combined with --resume")


def choose_runtime(args: argparse.Namespace, model: ViTConfig) -> Runtime:
    """The Runtime the system flags ask for, for the architecture `model` (joins torchrun's DDP job when
    launched by it); prints the device, precision and attention kernel chosen, and why."""
    rt = setup_runtime(args.device, amp=args.amp, attn=args.attn, threads=args.threads, compile=args.compile,
                       workers=args.workers, model=model)
    if rt.main:
        print(f"running on {rt.device} in {'bf16 autocast' if rt.amp else 'fp32'} ({rt.amp_reason}), "
              f"{'fused' if rt.fused_attn else 'explicit'} attention", file=sys.stderr)
    return rt


def train_or_evaluate(model: VisionTransformer, data: Data, cfg: TrainConfig, rt: Runtime, args: argparse.Namespace,
                      run_name: str, metadata: dict[str, str] | None = None) -> dict:
    """What both scripts do once model and data are built: find the run folder (--output, --resume),
    then train (or, with --eval-only, score the saved state), and end the DDP job."""
    out, resume_from = run_folder(args.resume, args.output, run_name, cfg.epochs, main=rt.main,
                                  overwrite=args.overwrite)
    if resume_from is not None:
        check_resume(out, cfg, model.cfg, data.classes, args, rt.main)
    fallback = args.resume == "auto"
    if args.eval_only:
        if resume_from is None:
            raise VitError(f"--eval-only --resume {args.resume}: no saved state found in {out}; nothing to evaluate")
        results = evaluate_saved(model, data, cfg, resume_from, rt, fallback)
    else:
        results = fit(model, data, cfg, rt=rt, out=out, resume_from=resume_from, fallback=fallback, metadata=metadata)
    shutdown(rt)
    return results


def evaluate_saved(model: VisionTransformer, data: Data, cfg: TrainConfig, state: Path, rt: Runtime,
                   fallback: bool) -> dict:
    """--eval-only: scores the weights saved in the resume state `state` on data.held_out (the EMA average
    where the run kept one: that is what it reported), with cfg.tta's views; prints and returns the result."""
    scored = load_scored_weights(state, fallback, rt.place(model))
    result = evaluate_held_out(scored, data, rt, cfg.tta)
    if rt.main:
        print(f"{data.split} accuracy {100 * result['acc']:.2f}% ({result['count']} images){tta_note(result, cfg.tta)}")
    return result


def check_resume(out: Path, cfg: TrainConfig, model_cfg: ViTConfig, classes: list[str], args: argparse.Namespace,
                 main: bool) -> None:
    """A resume continues the run in `out` with the settings in its record (args.json): those of this
    command that differ are a VitError naming their flags and both values, except the RESUMABLE run
    config fields, which may change (said on stderr), and the system flags, which are not recorded.
    --eval-only compares the model and the classes alone: it trains nothing."""
    record = read_record(out)
    if record is None:
        if main:
            print(f"warning: {out} has no readable args.json: this resume's settings cannot be checked against "
                  "the run's", file=sys.stderr)
        return
    changes = changed_settings(record, asdict(cfg), asdict(model_cfg), classes)
    # these model fields follow from --drop-path and the classes, which are compared themselves
    changes.pop("model.drop_path_rate", None)
    changes.pop("model.num_classes", None)
    allowed = {k: v for k, v in changes.items() if k.startswith("config.") and k.split(".")[1] in RESUMABLE}
    refused = {k: v for k, v in changes.items()
               if k not in allowed and not (args.eval_only and k.startswith("config."))}
    classes_flag = "--data/--classes" if hasattr(args, "classes") else "--data"
    if refused:
        raise VitError(f"--resume: the run in {out} has other settings: "
                       + "; ".join(_change(name, change, classes_flag) for name, change in refused.items())
                       + f". A resume may change {', '.join(map(flag, RESUMABLE))} and "
                       f"{', '.join(map(flag, SYSTEM_FLAGS))} only; start a new run (another --output) to change the "
                       "others")
    if allowed and main and not args.eval_only:
        print(f"--resume: continuing the run in {out} with "
              + ", ".join(_change(name, change, classes_flag) for name, change in allowed.items()), file=sys.stderr)


def _change(name: str, change: list, classes_flag: str) -> str:
    """One changed setting as the flag that sets it and both values: '--lr 0.5 (the run: 0.0028)'."""
    part, _, field = name.partition(".")
    if part == "config":
        what = flag(field)
    elif part == "model":  # a field no flag sets (in_chans: the data's) is named as the model's
        flags = {**MODEL_FLAGS, "img_size": "img_size"}  # --img-size: a folder's resolution, the model's img_size
        what = next((flag(f) for f, model_field in flags.items() if model_field == field), f"model {field}")
    else:
        what = f"{classes_flag}: classes"
    return f"{what} {_shown(change[1])} (the run: {_shown(change[0])})"


def _shown(value: object) -> str:
    """A setting's value as the command line gives it; a long class list cut after 8 names."""
    if not isinstance(value, list):
        return str(value)
    return ",".join(map(str, value[:8])) + (f",... ({len(value)} classes)" if len(value) > 8 else "")
