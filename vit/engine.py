"""The training loop that train.py and finetune.py share.

`fit()` runs epochs of AdamW/SGD with warmup + cosine by step, label smoothing or mixup/cutmix soft
targets, gradient clipping and accumulation, an EMA of the weights, bf16 autocast and DDP; it
evaluates every --eval-every epochs, writes checkpoints, metrics and plots, and resumes exactly.
Everything random in an epoch is seeded from (seed, epoch, rank), so resuming after epoch k replays
epochs k+1... bit for bit on the CPU.

Files in the output folder (each written to a temporary name and renamed):
  args.json         the command line and every option
  state.pt          resume state: model, optimizer, epoch, step, metric history and, with --ema, the
                    averaged weights (tensors and plain containers only: torch.load(weights_only=True))
  state.prev.pt     the resume state before it, which --resume auto falls back to if state.pt is
                    missing or unreadable (e.g. the process was killed while replacing it)
  last.safetensors  the model after the last epoch (with --ema: the average); best.safetensors: the
                    best validation accuracy
  metrics.csv       one row per epoch; curves.png: loss and accuracy per epoch
  results.json      final test accuracy, per-class accuracy, confusion matrix, parameters, time, img/s
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import math
import os
import platform
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import PIL
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from . import plot
from .augment import TTA_VIEWS, batch_augment, eval_transform, mixup_cutmix, normalize, train_transform, tta_views
from .data import FolderLoader, ImageFolderDataset, TensorLoader, folder_splits, load_tensor_dataset
from .formats import VitError, atomic_write
from .model import VisionTransformer, param_groups
from .weights import save_checkpoint

STATE_FILE, PREV_STATE_FILE = "state.pt", "state.prev.pt"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------------------
# Command-line options shared by train.py and finetune.py


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Adds the optimisation, system and output options; defaults of None are filled per recipe."""
    o = parser.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, help="training epochs")
    o.add_argument("--batch-size", type=int, help="images per optimizer step, over all processes")
    o.add_argument("--opt", choices=("adamw", "sgd"), default="adamw", help="optimizer (sgd: momentum 0.9)")
    o.add_argument("--lr", type=float, help="peak learning rate")
    o.add_argument("--min-lr", type=float, default=1e-6, help="learning rate at the end of the cosine")
    o.add_argument("--warmup-epochs", type=float, help="linear warmup from 0, in epochs")
    o.add_argument("--weight-decay", type=float, help="decoupled weight decay (not on biases, norms, embeddings)")
    o.add_argument("--smoothing", type=float, help="label smoothing")
    o.add_argument("--clip-grad", type=float, default=None, help="clip the gradient norm to this")
    o.add_argument("--accum-steps", type=int, default=1, help="split each batch into this many micro-batches")
    o.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (0 = off)")
    o.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (0 = off)")
    o.add_argument("--drop-path", type=float, help="stochastic depth rate of the last block")
    o.add_argument("--ema", type=float, default=0.0,
                   help="decay of an exponential moving average of the weights, evaluated and saved in their place (0 = off)")
    s = parser.add_argument_group("system")
    s.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    s.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on for CUDA, off for CPU/MPS)")
    s.add_argument("--compile", action="store_true", help="torch.compile the model")
    s.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers (folders)")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    s.add_argument("--seed", type=int, default=0)
    w = parser.add_argument_group("output")
    w.add_argument("--output", type=Path, help="output folder (default: runs/<name>-<timestamp>)")
    w.add_argument("--resume", help="'auto' (newest run of this name), a run folder or its state.pt")
    w.add_argument("--eval-only", action="store_true", help="evaluate the --resume checkpoint and exit")
    w.add_argument("--save-every", type=int, default=1, help="write the resume state every N epochs")
    w.add_argument("--eval-every", type=int, help="evaluate every N epochs (and after the last)")
    w.add_argument("--tta", choices=TTA_VIEWS, help="test-time augmentation of the final evaluation: the mean "
                                                    "prediction over the image, its mirror and/or its 1-pixel shifts")


def fill_defaults(args: argparse.Namespace, recipe: dict) -> None:
    """Sets every option the user left at None from `recipe` (the dataset's tuned defaults)."""
    for key, value in recipe.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def check_common_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses invalid values and combinations with an argparse error (exit 2), before anything runs."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    for name in ("epochs", "batch_size", "accum_steps", "save_every", "eval_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 <= getattr(args, "unmasked_epochs", 0) <= args.epochs:  # train.py's --unmasked-epochs
        parser.error(f"--unmasked-epochs must be in [0, --epochs], got {args.unmasked_epochs}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be a finite number > 0, got {args.lr}")
    if not 0.0 <= args.ema < 1.0:
        parser.error(f"--ema must be in [0, 1), got {args.ema}")
    for name in ("min_lr", "warmup_epochs", "weight_decay", "mixup", "cutmix"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value >= 0):
            parser.error(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
    if args.clip_grad is not None and not (math.isfinite(args.clip_grad) and args.clip_grad > 0):
        parser.error(f"--clip-grad must be a finite number > 0, got {args.clip_grad}")
    if not 0.0 <= args.smoothing < 1.0:
        parser.error("--smoothing must be in [0, 1)")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    if not 0 <= args.seed < 2**32:
        parser.error(f"--seed must be in [0, 2**32), got {args.seed}")
    if args.batch_size % (args.accum_steps * world_size):
        parser.error(f"--batch-size {args.batch_size} must be divisible by --accum-steps x processes "
                     f"({args.accum_steps} x {world_size})")
    if args.eval_only and not args.resume:
        parser.error("--eval-only needs --resume PATH (or auto)")


# ------------------------------------------------------------------------------------------------
# Devices and processes


@dataclass
class Runtime:
    """Where the run executes: device, autocast, and this process's place in a DDP job."""
    device: torch.device
    amp: bool
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sums `t` over processes (exact for counts and sums; identity in a single process)."""
        if self.world_size > 1:
            dist.all_reduce(t)
        return t


def setup_runtime(args: argparse.Namespace) -> Runtime:
    """Picks the device, starts DDP when launched by torchrun, and sets threads and autocast."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # model init; each epoch reseeds from (seed, epoch, rank)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    name = args.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise VitError("--device cuda: no CUDA device is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise VitError("--device mps: no MPS device is available")
    device = torch.device(name)
    if name == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world_size > 1:
        dist.init_process_group("nccl" if name == "cuda" else "gloo")
    # bf16 pays on GPUs; on CPUs only with native bf16 units (AVX-512 BF16 / AMX), absent on many.
    amp = (name == "cuda") if args.amp is None else args.amp
    return Runtime(device, amp, rank, world_size)


def shutdown(rt: Runtime) -> None:
    """Ends a DDP job: the processes wait for each other, then close their connections together."""
    if rt.world_size > 1:
        # Rank 0 is still writing the outputs when the others get here. Without this wait a rank closed its
        # gloo connections meanwhile, and one such CI run aborted (SIGABRT, 'terminate called without an
        # active exception'); with it no process tears down while another may still use the connections.
        dist.barrier()
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------
# Optimisation


def build_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    groups = param_groups(model, args.weight_decay, getattr(args, "layer_decay", 1.0))
    if args.opt == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=0.9)
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999))


def lr_at(step: int, total: int, warmup: int, base: float, minimum: float) -> float:
    """Linear warmup from 0 to `base` over `warmup` steps, then cosine from `base` to `minimum`."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return minimum + 0.5 * (base - minimum) * (1.0 + math.cos(math.pi * min(1.0, progress)))


class EMA:
    """An exponential moving average of a model's weights (timm's ModelEmaV3 convention).

    After each optimizer step: ema = d * ema + (1 - d) * weights, with d = min(decay, (1 + step) /
    (10 + step)), so early averages are not anchored to the random initial weights; buffers are
    copied as they are. `model` is the averaged copy, kept in eval mode and never trained.
    """

    def __init__(self, source: nn.Module, decay: float):
        self.source, self.decay = source, decay
        self.model = copy.deepcopy(source).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in self.source.parameters()], 1 - d)
        for mine, theirs in zip(self.model.buffers(), self.source.buffers()):
            mine.copy_(theirs)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy against class indices (B,) with label smoothing, or soft targets (B, K)."""
    if target.ndim == 2:
        return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
    return F.cross_entropy(logits.float(), target, label_smoothing=smoothing)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A seed for everything random in one epoch of one process (dropout, drop-path, augmentation)."""
    # 32 bits: torch's CPU generator ignores higher seed bits. Knuth's multiplier spreads (seed, epoch).
    return ((seed * 1_000_003 + epoch) * 2_654_435_761 + rank * 104_729) % (1 << 32)


# ------------------------------------------------------------------------------------------------
# Progress


class Progress:
    """Per-epoch progress on stderr: a redrawn bar on a terminal, a plain line every 30 s otherwise."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.tty = sys.stderr.isatty()
        self.interval = 0.5 if self.tty else 30.0
        self.start = self.last = time.perf_counter()

    def due(self, done: int) -> bool:
        return self.enabled and (done == self.total or time.perf_counter() - self.last >= self.interval)

    def show(self, done: int, images: int, loss: float) -> None:
        now = time.perf_counter()
        self.last = now
        rate = images / max(now - self.start, 1e-9)
        eta = (now - self.start) / done * (self.total - done)
        text = f"{self.desc} {done}/{self.total} loss {loss:.4f} {rate:.0f} img/s ETA {eta:.0f}s"
        if self.tty:
            bar = "#" * int(20 * done / self.total)
            print(f"\r{text} [{bar:<20}]", end="\n" if done == self.total else "", file=sys.stderr, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# One epoch


@dataclass
class Data:
    """What fit() needs from a dataset. Loaders yield (x, y) and have set_epoch(epoch) and len().

    prepare_train(x, y, generator) -> (inputs, targets) turns a raw batch into model inputs and
    class indices (B,) or soft targets (B, K): uint8 -> float, augmentation, normalisation, mixup.
    prepare_eval(x) -> inputs does the same without randomness.
    """
    train: Iterable
    val: Iterable
    prepare_train: Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
    prepare_eval: Callable[[torch.Tensor], torch.Tensor]
    classes: list[str]
    mean: list[float]  # normalisation of the inputs, saved in checkpoints for vit.predict
    std: list[float]
    val_name: str = "val"


def _mixer(args: argparse.Namespace, num_classes: int) -> Callable:
    """(x, y, generator) -> (x, targets): mixup/cutmix soft targets when enabled, else labels as they are."""
    if args.mixup <= 0 and args.cutmix <= 0:
        return lambda x, y, g: (x, y)
    return lambda x, y, g: mixup_cutmix(x, y, num_classes, g, mixup_alpha=args.mixup, cutmix_alpha=args.cutmix,
                                        smoothing=args.smoothing)


def tensor_data(args: argparse.Namespace, rt: Runtime, name: str) -> Data:
    """MNIST / Fashion-MNIST / CIFAR-10 as uint8 tensors on the training device, augmented per batch
    (the airbench way). Evaluates on the official test set."""
    ds = load_tensor_dataset(name, args.data_dir, download=not args.no_download)
    dev = rt.device
    per_process = args.batch_size // rt.world_size
    train = TensorLoader(ds.train_x.to(dev), ds.train_y.to(dev), per_process, shuffle=True, drop_last=True,
                         seed=args.seed, rank=rt.rank, world_size=rt.world_size)
    # evaluation in training-size batches: on the CPU batches of 512 ran 1.3x (MNIST) to 1.6x (CIFAR-10)
    # slower than 128, the attention maps no longer fitting in cache
    test = TensorLoader(ds.test_x.to(dev), ds.test_y.to(dev), per_process, shuffle=False, drop_last=False,
                        rank=rt.rank, world_size=rt.world_size)
    augment, mix = batch_augment(args.aug, args.crop_padding), _mixer(args, len(ds.classes))

    def prepare_train(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = augment(x.float() / 255, g)  # on [0, 1], so padding and fill are black
        return mix(normalize(x, ds.mean, ds.std), y, g)

    return Data(train, test, prepare_train, lambda x: normalize(x, ds.mean, ds.std), ds.classes, list(ds.mean),
                list(ds.std), "test")


INTERPOLATIONS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


def folder_data(args: argparse.Namespace, rt: Runtime, root: Path, img_size: int, interpolation: str,
                mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD, jitter: float = 0.0) -> Data:
    """An image folder, decoded per item in DataLoader workers: random-resized-crop + flip for
    training (or eval-style resizing with --aug none), resize + centre crop for validation."""
    train_samples, val_samples, classes = folder_splits(root, args.val_fraction, args.seed)
    interp = INTERPOLATIONS[interpolation]
    eval_tf = eval_transform(img_size, mean, std, interpolation=interp)
    train_tf = eval_tf if args.aug == "none" else train_transform(img_size, mean, std, jitter, interpolation=interp)
    per_process = args.batch_size // rt.world_size
    common = dict(workers=args.workers, rank=rt.rank, world_size=rt.world_size, pin_memory=rt.device.type == "cuda")
    train = FolderLoader(ImageFolderDataset(train_samples, train_tf, seed=args.seed), per_process, shuffle=True,
                         drop_last=len(train_samples) >= per_process * rt.world_size, seed=args.seed, **common)
    val = FolderLoader(ImageFolderDataset(val_samples, eval_tf), per_process, shuffle=False, drop_last=False, **common)
    return Data(train, val, _mixer(args, len(classes)), lambda x: x, classes, list(mean), list(std), "val")


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


def train_epoch(model: nn.Module, data: Data, opt: torch.optim.Optimizer, args: argparse.Namespace,
                rt: Runtime, epoch: int, step: int, total_steps: int, warmup_steps: int,
                ema: EMA | None = None) -> tuple[dict, int]:
    """One pass over the training data, updating `ema` after every step; returns (metrics summed over
    processes, next step)."""
    model.train()
    generator = torch.Generator().manual_seed(epoch_seed(args.seed, epoch, rt.rank))
    torch.manual_seed(epoch_seed(args.seed, epoch, rt.rank))  # dropout and drop-path draw from here
    data.train.set_epoch(epoch)
    sums = torch.zeros(3, device=rt.device)  # loss * n, correct, n
    progress = Progress(len(data.train), f"epoch {epoch + 1}", rt.main)
    start = time.perf_counter()
    for i, (x, y) in enumerate(data.train):
        x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
        inputs, targets = data.prepare_train(x, y, generator)
        lr = lr_at(step, total_steps, warmup_steps, args.lr, args.min_lr)
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        for micro, (xm, tm) in enumerate(zip(inputs.chunk(args.accum_steps), targets.chunk(args.accum_steps))):
            last = micro == args.accum_steps - 1
            sync = nullcontext() if last or not isinstance(model, nn.parallel.DistributedDataParallel) \
                else model.no_sync()
            with sync:
                with rt.autocast():
                    logits = model(xm)
                loss = soft_cross_entropy(logits, tm, args.smoothing)
                (loss * len(xm) / len(inputs)).backward()
            labels = tm.argmax(-1) if tm.ndim == 2 else tm
            sums += torch.stack([loss.detach() * len(xm), (logits.argmax(-1) == labels).sum(), torch.tensor(
                len(xm), device=rt.device)]).float()
        if args.clip_grad:
            nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(step)
        step += 1
        if progress.due(i + 1):
            mean_loss = (sums[0] / sums[2]).item()
            if not math.isfinite(mean_loss):
                raise Diverged(f"loss is {mean_loss} in epoch {epoch + 1}, step {i + 1}")
            progress.show(i + 1, int(sums[2].item()) * rt.world_size, mean_loss)
    seconds = time.perf_counter() - start
    sums = rt.all_reduce(sums).tolist()
    if not math.isfinite(sums[0]):
        raise Diverged(f"loss is {sums[0] / sums[2]} at the end of epoch {epoch + 1}")
    return {"train_loss": sums[0] / sums[2], "train_acc": sums[1] / sums[2], "seconds": seconds,
            "img_per_s": sums[2] / seconds, "lr": lr}, step


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, prepare: Callable, num_classes: int, rt: Runtime,
             tta: str = "none") -> dict:
    """Loss, accuracy and confusion matrix (rows = true class) over the loader, exact over processes.

    With `tta` (see augment.tta_views) the prediction is the mean of the views' softmax outputs and
    the loss its negative log-likelihood; "views" then counts them and "single_acc" / "single_loss"
    score the unaugmented view from the same pass."""
    model.eval()
    loss_sum = torch.zeros(2, device=rt.device, dtype=torch.float64)  # averaged views, first view alone
    confusion = torch.zeros(2, num_classes * num_classes, device=rt.device, dtype=torch.float64)
    for x, y in loader:
        x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
        log_probs = []
        for view in tta_views(x, tta):
            with rt.autocast():
                log_probs.append(F.log_softmax(model(prepare(view)).float(), dim=-1))
        # log of the mean probability over V views: logsumexp over views - log V
        mean = torch.logsumexp(torch.stack(log_probs), dim=0) - math.log(len(log_probs))  # (V, B, K) -> (B, K)
        for row, lp in enumerate((mean, log_probs[0]) if len(log_probs) > 1 else (mean,)):
            loss_sum[row] += F.nll_loss(lp, y, reduction="sum")
            confusion[row] += torch.bincount(y * num_classes + lp.argmax(-1), minlength=num_classes**2)
    rt.all_reduce(loss_sum)
    rt.all_reduce(confusion)
    loss_sum = loss_sum.tolist()
    confusion = confusion.reshape(2, num_classes, num_classes).cpu()  # (2, K*K) -> (2, K, K)
    n = max(confusion[0].sum().item(), 1)
    result = {"loss": loss_sum[0] / n, "acc": confusion[0].diag().sum().item() / n,
              "per_class_acc": (confusion[0].diag() / confusion[0].sum(1).clamp(min=1)).tolist(),
              "confusion": confusion[0].long().tolist(), "count": int(confusion[0].sum().item())}
    if tta != "none":
        result.update(views=len(log_probs), single_loss=loss_sum[1] / n,
                      single_acc=confusion[1].diag().sum().item() / n)
    return result


# ------------------------------------------------------------------------------------------------
# Checkpoints and outputs


def run_folder(args: argparse.Namespace, run_name: str, runs_dir: Path = Path("runs")) -> tuple[Path, Path | None]:
    """The output folder and the state.pt to resume from (None: a fresh start).

    --resume auto: the state in --output if given, else in the newest runs/<run_name>-* folder, else a
    fresh start (a folder with only state.prev.pt counts: `resume_state` falls back to it); --resume PATH:
    a run folder or its state.pt, which must exist. Without --output a new run goes to
    runs/<run_name>-<timestamp>.
    """
    if args.resume == "auto":
        folders = [args.output] if args.output else sorted(runs_dir.glob(f"{run_name}-*"), key=os.path.getmtime)
        resumable = [f for f in folders if (f / STATE_FILE).exists() or (f / PREV_STATE_FILE).exists()]
        if resumable:
            return resumable[-1], resumable[-1] / STATE_FILE
    elif args.resume:
        path = Path(args.resume)
        path = path / STATE_FILE if path.is_dir() else path
        if not path.exists():
            raise VitError(f"--resume {args.resume}: {path} does not exist")
        return path.parent, path
    return args.output or runs_dir / f"{run_name}-{time.strftime('%Y%m%d-%H%M%S')}", None


def cli(main: Callable[[], object]) -> None:
    """Runs a script's main(); a VitError (a user mistake or a bad file) becomes a message and exit 1."""
    try:
        main()
    except VitError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def load_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a damaged file; all mean the same here
        raise VitError(f"{path}: not a readable resume state ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not {"model", "optimizer", "epoch", "step", "history"} <= set(state):
        raise VitError(f"{path}: not a resume state written by this project")
    return state


def resume_state(path: Path, auto: bool) -> tuple[dict, Path]:
    """The resume state at `path` and the file it was read from.

    With `auto` (--resume auto), a missing or unreadable state.pt gives way to the state.prev.pt that
    save_state keeps beside it (one save older), saying so on stderr; an explicit path never does.
    """
    prev = path.with_name(PREV_STATE_FILE)
    try:
        return load_state(path), path
    except VitError as e:
        if not (auto and path.name == STATE_FILE and prev.exists()):
            raise
        print(f"warning: {e}; resuming from the previous state {prev} instead", file=sys.stderr)
    return load_state(prev), prev


def save_state(path: Path, model: nn.Module, opt: torch.optim.Optimizer, epoch: int, step: int,
               history: list[dict], ema: EMA | None) -> None:
    buffer = io.BytesIO()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "step": step,
             "history": history}
    if ema is not None:
        state["ema"] = ema.model.state_dict()
    torch.save(state, buffer)
    if path.exists():  # keep the last good state (atomically renamed) until the new one is in place
        os.replace(path, path.with_name(PREV_STATE_FILE))
    with atomic_write(path) as f:
        f.write(buffer.getvalue())


def write_json(path: Path, obj: dict) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def _series(history: list[dict], key: str, scale: float = 1.0) -> tuple[list[int], list[float]]:
    """(epochs, values) of `key` over the epochs that have it (held-out scores exist on evaluated epochs only)."""
    rows = [h for h in history if key in h]
    return [h["epoch"] for h in rows], [scale * h[key] for h in rows]


def write_metrics(out: Path, history: list[dict], val_name: str) -> None:
    """metrics.csv (one row per epoch; the val_* cells of epochs without an evaluation are empty) and
    curves.png (loss and accuracy per epoch; the held-out curve is labelled `val_name`, "test" for the
    datasets that evaluate on their test set)."""
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
    accuracy = {"train": _series(history, "train_acc", 100), val_name: _series(history, "val_acc", 100)}
    if "raw_val_acc" in columns:
        accuracy[f"{val_name}, without EMA"] = _series(history, "raw_val_acc", 100)
    plot.charts(out / "curves.png", [
        {"series": {"train": _series(history, "train_loss"), val_name: _series(history, "val_loss")},
         "title": "loss", "xlabel": "epoch", "ylabel": "cross-entropy"},
        {"series": accuracy, "title": "accuracy", "xlabel": "epoch", "ylabel": "%"},
    ])


def versions() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "pillow": PIL.__version__}


def summary_line(h: dict, epochs: int, val_name: str) -> str:
    held_out = f"{val_name} loss {h['val_loss']:.4f} acc {100 * h['val_acc']:6.2f}%" if "val_acc" in h else ""
    raw = f" (without EMA {100 * h['raw_val_acc']:6.2f}%)" if "raw_val_acc" in h else ""
    tta = f" (with TTA {100 * h['tta_val_acc']:6.2f}%)" if "tta_val_acc" in h else ""
    return (f"epoch {h['epoch']:>3}/{epochs}  lr {h['lr']:.2e}  train loss {h['train_loss']:.4f} "
            f"acc {100 * h['train_acc']:6.2f}%  {held_out}{raw}{tta}  {h['seconds']:6.1f}s  {h['img_per_s']:7.0f} img/s")


def tta_note(result: dict, tta: str) -> str:
    """' with --tta NAME (V views; X% from the image alone)' after a reported accuracy, or ''."""
    if tta == "none":
        return ""
    return f" with --tta {tta} ({result['views']} views; {100 * result['single_acc']:.2f}% from the image alone)"


# ------------------------------------------------------------------------------------------------
# The whole run


def fit(model: VisionTransformer, data: Data, args: argparse.Namespace, rt: Runtime, out: Path,
        resume_from: Path | None, extra_metadata: dict[str, str] | None = None) -> dict:
    """Trains `model` for args.epochs (resuming from `resume_from`), evaluates on data.val every
    args.eval_every epochs and after the last, writes the output folder on the main process, and
    returns the final results. Checkpoints carry the class names, normalisation and command line in
    their metadata (plus `extra_metadata`)."""
    metadata = {"classes": json.dumps(data.classes), "mean": json.dumps(data.mean), "std": json.dumps(data.std),
                "args": json.dumps(sys.argv), **(extra_metadata or {})}
    model.to(rt.device)
    opt = build_optimizer(model, args)
    history: list[dict] = []
    epoch = step = 0
    state = None
    if resume_from is not None:
        state, resume_from = resume_state(resume_from, auto=args.resume == "auto")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        epoch, step, history = state["epoch"], state["step"], state["history"]
        if rt.main:
            print(f"resumed from {resume_from} after epoch {epoch}", file=sys.stderr)
            for stale in out.glob("*.tmp-*"):  # half-written files of a killed run: never read, only in the way
                stale.unlink(missing_ok=True)
    # --eval-only scores the average whenever the run kept one: that is what it reported
    has_ema = state is not None and "ema" in state
    ema = EMA(model, args.ema) if args.ema > 0 or (args.eval_only and has_ema) else None
    if ema is not None and has_ema:
        ema.model.load_state_dict(state["ema"])
    elif ema is not None and state is not None and rt.main:
        print(f"warning: {resume_from} holds no EMA weights; the average starts from the resumed weights",
              file=sys.stderr)
    scored = model if ema is None else ema.model  # the weights evaluated, saved and reported
    num_classes = len(data.classes)
    if args.eval_only:
        if resume_from is None:
            raise VitError(f"--eval-only --resume {args.resume}: no saved state found in {out}; nothing to evaluate")
        result = evaluate(scored, data.val, data.prepare_eval, num_classes, rt, args.tta)
        if rt.main:
            print(f"{data.val_name} accuracy {100 * result['acc']:.2f}% ({result['count']} images)"
                  f"{tta_note(result, args.tta)}")
        return result
    net = model
    if rt.world_size > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    if args.compile:
        net = torch.compile(net)
    steps_per_epoch = len(data.train)
    total_steps = args.epochs * steps_per_epoch
    warmup_steps = int(args.warmup_epochs * steps_per_epoch)
    if rt.main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "args.json", {"command": sys.argv, "args": {k: str(v) if isinstance(v, Path) else v
                                                                      for k, v in vars(args).items()}})
    best = max((h["val_acc"] for h in history if "val_acc" in h), default=-1.0)
    run_start = time.perf_counter()
    result = None
    unmasked_from = args.epochs - getattr(args, "unmasked_epochs", 0)  # train.py's --unmasked-epochs
    while epoch < args.epochs:
        model.patch_dropout = 0.0 if epoch >= unmasked_from else model.cfg.patch_dropout
        try:
            stats, step = train_epoch(net, data, opt, args, rt, epoch, step, total_steps, warmup_steps, ema)
        except Diverged as e:
            raise VitError(f"training diverged: {e}; the last good checkpoint is kept in {out}") from None
        epoch += 1
        history.append({"epoch": epoch, **stats})
        evaluated = epoch % args.eval_every == 0 or epoch == args.epochs
        if evaluated:  # the per-epoch curve is single-view; --tta views are averaged after the last epoch only
            tta = args.tta if epoch == args.epochs else "none"
            result = evaluate(scored, data.val, data.prepare_eval, num_classes, rt, tta)
            history[-1].update(val_loss=result.get("single_loss", result["loss"]),
                               val_acc=result.get("single_acc", result["acc"]))
            if tta != "none":
                history[-1].update(tta_val_loss=result["loss"], tta_val_acc=result["acc"])
        if evaluated and ema is not None:  # the trained weights themselves, to show what the average adds
            raw = evaluate(model, data.val, data.prepare_eval, num_classes, rt)
            history[-1].update(raw_val_loss=raw["loss"], raw_val_acc=raw["acc"])
        if rt.main:
            print(summary_line(history[-1], args.epochs, data.val_name), flush=True)
            save_checkpoint(out / "last.safetensors", scored, metadata)
            if evaluated and history[-1]["val_acc"] > best:
                best = history[-1]["val_acc"]
                save_checkpoint(out / "best.safetensors", scored, metadata)
            if epoch % args.save_every == 0 or epoch == args.epochs:
                save_state(out / STATE_FILE, model, opt, epoch, step, history, ema)
            write_metrics(out, history, data.val_name)
    if result is None:  # resumed a finished run: evaluate what it left
        result = evaluate(scored, data.val, data.prepare_eval, num_classes, rt, args.tta)
    train_seconds = sum(h["seconds"] for h in history)
    results = {
        "test_acc": result["acc"], "test_loss": result["loss"], "test_images": result["count"],
        "best_val_acc": best, "per_class_acc": dict(zip(data.classes, result["per_class_acc"])),
        "confusion": result["confusion"], "classes": data.classes, "epochs": args.epochs,
        "params": sum(p.numel() for p in model.parameters()), "train_seconds": train_seconds,
        "wall_seconds_this_process": time.perf_counter() - run_start,
        "train_img_per_s": sum(h["img_per_s"] * h["seconds"] for h in history) / max(train_seconds, 1e-9),
        "device": str(rt.device), "processes": rt.world_size, "command": " ".join(sys.argv), "versions": versions(),
        "ema": args.ema, "tta": args.tta,
    }
    if "single_acc" in result:  # test_acc above is the --tta views' mean prediction
        results.update(single_view_test_acc=result["single_acc"], single_view_test_loss=result["single_loss"])
    if "raw_val_acc" in history[-1]:
        results["raw_test_acc"] = history[-1]["raw_val_acc"]
    if rt.main:
        write_json(out / "results.json", results)
        plot.heatmap(out / "confusion.png", result["confusion"], data.classes, data.classes,
                     f"confusion matrix ({data.val_name}, {100 * result['acc']:.2f}% correct)",
                     xlabel="predicted", ylabel="true")
        print(f"final {data.val_name} accuracy {100 * result['acc']:.2f}% ({result['count']} images)"
              f"{tta_note(result, args.tta)}, {train_seconds:.0f}s training, outputs in {out}", flush=True)
    return results
