"""The training loop: `fit(model, data, cfg)` trains a VisionTransformer and evaluates it.

Read top to bottom: the optimizer and its warmup + cosine schedule, an EMA of the weights, the loss,
one training epoch (`train_epoch`), one evaluation with optional test-time views (`evaluate`), then
`fit`, which runs the epochs, resumes exactly, and leaves the run folder of vit/runs.py behind.
Everything random in an epoch is seeded from (seed, epoch, rank), so resuming after epoch k replays
epochs k+1... bit for bit on the CPU. What to train with is a `vit.config.TrainConfig`; where to run
it, a `vit.runtime.Runtime`; the data, a `vit.data.Data`.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .augment import mix_seed, num_tta_views, tta_views
from .config import TrainConfig
from .data import Data
from .errors import VitError
from .model import VisionTransformer, count_params, param_groups
from .runs import (STATE_FILE, claimed, new_run_folder, read_resume_state, record_run, remove_unstarted, save_state,
                   versions, write_metrics, write_results)
from .runtime import Runtime
from .weights import save_checkpoint


# ------------------------------------------------------------------------------------------------
# Optimisation


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (or SGD with momentum) over the trainable parameters, grouped by `param_groups`."""
    groups = param_groups(model, cfg.weight_decay, cfg.layer_decay)
    if cfg.opt == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))


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


class HeadOnly(nn.Module):
    """A VisionTransformer's head on pooled features (B, D) -> logits: what fit trains and scores when the
    data are a frozen backbone's cached features (Data.features, see vit.probe). It holds the whole
    model, so the optimizer, EMA and checkpoints are the model's, backbone and head."""

    def __init__(self, model: VisionTransformer):
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.head(self.model.head_drop(features))


def runs_on(model: VisionTransformer, data: Data) -> nn.Module:
    """The module a batch of `data` goes through: the model on images, its head alone on cached features."""
    return HeadOnly(model) if data.features else model


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy against class indices (B,) with label smoothing, or soft targets (B, K)."""
    if target.ndim == 2:
        return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
    return F.cross_entropy(logits.float(), target, label_smoothing=smoothing)


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

    def show(self, done: int, images: int, loss: float | None = None) -> None:
        now = time.perf_counter()
        self.last = now
        rate = images / max(now - self.start, 1e-9)
        eta = (now - self.start) / done * (self.total - done)
        shown = "" if loss is None else f" loss {loss:.4f}"
        text = f"{self.desc} {done}/{self.total}{shown} {rate:.1f} img/s ETA {eta:.0f}s"
        if self.tty:
            bar = "#" * int(20 * done / self.total)
            print(f"\r{text} [{bar:<20}]", end="\n" if done == self.total else "", file=sys.stderr, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)


class RunEstimate:
    """Says once how long this process's training (its epochs and evaluations) takes, when the steps timed
    so far mean something: at least `min_steps` steps and `min_seconds` seconds of them after the first
    `warmup` steps (start-up: allocations, thread pools, caches), over as many epochs as that takes. On
    15-Scene (11 steps an epoch), an estimate from the first 11 steps said 50 min for a run that trained
    488 s.

    The rate is per unit of work, where a step on all tokens (an unmasked epoch) counts 1 / (1 - p) steps
    on the 1 - p share PatchDropout keeps. The rest of the run is the work left at that rate, plus the
    evaluations to come: a forward pass over the held-out images each (x the test-time views in the
    last; once more with an EMA) at a third of a masked training image's cost per token (forward only).
    The time so far, evaluations and checkpoints included, is read from `clock`.
    """

    def __init__(self, cfg: TrainConfig, first_epoch: int, steps_per_epoch: int, eval_images: int,
                 enabled: bool, ema: bool, *, warmup: int = 3, min_steps: int = 30, min_seconds: float = 30.0,
                 clock: Callable[[], float] = time.perf_counter):
        self.enabled, self.warmup, self.min_steps, self.min_seconds = enabled, warmup, min_steps, min_seconds
        keep = 1.0 - cfg.patch_dropout
        epochs = range(first_epoch, cfg.epochs)
        self.costs = [1.0 if e < cfg.epochs - cfg.unmasked_epochs else 1.0 / keep for e in epochs]  # per step
        self.steps_per_epoch = steps_per_epoch
        self.work_left = steps_per_epoch * sum(self.costs)
        views = num_tta_views(cfg.tta)
        # (this process's epochs trained before it, images it scores) of each evaluation to come
        self.evals = [(i + 1, eval_images * ((views if e + 1 == cfg.epochs else 1) + ema)) for i, e in enumerate(epochs)
                      if (e + 1) % cfg.eval_every == 0 or e + 1 == cfg.epochs]
        self.eval_cost = 1.0 / (3 * keep)  # an evaluated image's work, in masked training images
        self.clock, self.start = clock, clock()
        self.steps = self.timed_steps = 0
        self.timed_seconds = self.timed_work = self.timed_images = 0.0  # after the warm-up

    def step(self, seconds: float, images: int) -> None:
        """One training step of `images` that took `seconds`; says the estimate once they are enough."""
        if not self.enabled:
            return
        epoch = min(self.steps // self.steps_per_epoch, len(self.costs) - 1)  # of this process's epochs
        cost = self.costs[epoch]
        self.steps += 1
        self.work_left -= cost
        if self.steps <= self.warmup:
            return
        self.timed_steps += 1
        self.timed_seconds += seconds
        self.timed_work += cost
        self.timed_images += images * cost
        if self.timed_steps < self.min_steps or self.timed_seconds < self.min_seconds:
            return
        self.enabled = False
        eval_images = sum(n for after, n in self.evals if after > epoch)  # this epoch's evaluation is to come
        left = (self.timed_seconds * max(self.work_left, 0.0) / self.timed_work
                + self.timed_seconds / self.timed_images * self.eval_cost * eval_images)
        print(f"estimate: the rest of this run ({len(self.costs)} epoch(s), {len(self.evals)} evaluation(s)) takes "
              f"about {_duration(self.clock() - self.start + left)} in all, {_duration(left)} from now",
              file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


# ------------------------------------------------------------------------------------------------
# One epoch, one evaluation


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


def train_epoch(model: nn.Module, data: Data, opt: torch.optim.Optimizer, cfg: TrainConfig, rt: Runtime,
                epoch: int, step: int, total_steps: int, warmup_steps: int, ema: EMA | None = None,
                estimate: RunEstimate | None = None) -> tuple[dict, int]:
    """One pass over the training data, updating `ema` after every step; returns (metrics summed over
    processes, next step)."""
    model.train()
    seed = mix_seed(cfg.seed, epoch, rt.rank * 104_729)  # one stream per process and epoch
    generator = torch.Generator().manual_seed(seed)  # augmentation and mixing
    torch.manual_seed(seed)  # dropout, drop-path and PatchDropout draw from here
    data.train.set_epoch(epoch)
    sums = torch.zeros(3, device=rt.device)  # loss * n, correct, n
    progress = Progress(len(data.train), f"epoch {epoch + 1}", rt.main)
    start = step_end = time.perf_counter()
    for i, (x, y) in enumerate(data.train):
        x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
        inputs, targets = data.prepare_train(x, y, generator)
        lr = lr_at(step, total_steps, warmup_steps, cfg.lr, cfg.min_lr)
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        for micro, (xm, tm) in enumerate(zip(inputs.chunk(cfg.accum_steps), targets.chunk(cfg.accum_steps))):
            last = micro == cfg.accum_steps - 1
            sync = nullcontext() if last or not isinstance(model, nn.parallel.DistributedDataParallel) \
                else model.no_sync()
            with sync:
                with rt.autocast():
                    logits = model(xm)
                loss = soft_cross_entropy(logits, tm, cfg.smoothing)
                (loss * len(xm) / len(inputs)).backward()
            labels = tm.argmax(-1) if tm.ndim == 2 else tm
            sums += torch.stack([loss.detach() * len(xm), (logits.argmax(-1) == labels).sum(), torch.tensor(
                len(xm), device=rt.device)]).float()
        if cfg.clip_grad:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(step)
        step += 1
        if estimate is not None:
            now = time.perf_counter()
            estimate.step(now - step_end, len(inputs))
            step_end = now
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
# The whole run


def _restore(model: nn.Module, opt: torch.optim.Optimizer, cfg: TrainConfig, path: Path | None, fallback: bool,
             rt: Runtime, keep_ema: bool = False) -> tuple[int, int, list[dict], EMA | None]:
    """(epoch, step, history, EMA or None) after loading the resume state at `path` (a fresh start if
    None). The EMA exists with cfg.ema > 0, or with `keep_ema` when the state holds one."""
    state, epoch, step, history = None, 0, 0, []
    if path is not None:
        def apply(state: dict) -> None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])

        state, path = read_resume_state(path, fallback, apply)
        epoch, step, history = state["epoch"], state["step"], state["history"]
        if rt.main:
            print(f"resumed from {path} after epoch {epoch}", file=sys.stderr)
    has_ema = state is not None and "ema" in state
    ema = EMA(model, cfg.ema) if cfg.ema > 0 or (keep_ema and has_ema) else None
    if ema is not None and has_ema:
        ema.model.load_state_dict(state["ema"])
    elif ema is not None and state is not None and rt.main:
        print(f"warning: {path} holds no EMA weights; the average starts from the resumed weights", file=sys.stderr)
    return epoch, step, history, ema


def _final(result: dict, history: list[dict], data: Data, model: nn.Module, cfg: TrainConfig, rt: Runtime,
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


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during `fit`, with what the user needs to know: what was saved, and how to continue."""


def _stopped(e: BaseException, out: Path, saved: int | None, rt: Runtime) -> BaseException:
    """The exception to raise for a run stopped by Ctrl-C, a diverged loss or a failed write, after
    removing its folder when nothing was saved yet (so no empty run is left for the user or --resume auto)."""
    removed = rt.main and saved is None and remove_unstarted(out)
    kept = (f"the state after epoch {saved} is kept in {out}" if saved is not None
            else f"no epoch was saved{'; removed ' + str(out) if removed else ''}")
    if isinstance(e, OSError):
        what = (e.strerror or str(e)).lower()
        where = f" while writing {Path(e.filename).name.split('.tmp-')[0].removesuffix('.next')}" if e.filename else ""
        return VitError(f"{what}{where} in {out}; {kept}")
    if isinstance(e, Diverged):
        return VitError(f"training diverged: {e}; {kept}")
    if saved is None:
        return Interrupted(f"interrupted before the first epoch was saved{'; removed ' + str(out) if removed else ''}")
    return Interrupted(f"interrupted after epoch {saved}; continue with --resume auto --output {out}")


def fit(model: VisionTransformer, data: Data, cfg: TrainConfig, *, rt: Runtime | None = None,
        out: str | Path | None = None, resume_from: Path | None = None, fallback: bool = False,
        metadata: dict[str, str] | None = None) -> dict:
    """Trains `model` on data.train for cfg.epochs (continuing from the state at `resume_from`; with
    `fallback`, from the state before it if that one is unreadable), evaluates on data.val every
    cfg.eval_every epochs and after the last, writes the run folder `out` (default runs/fit-<timestamp>)
    on the main process, and returns the final results (results.json). Checkpoints carry the class
    names, normalisation and command line in their metadata (plus `metadata`)."""
    rt = rt or Runtime(torch.device("cpu"))
    out = Path(out) if out is not None else new_run_folder("fit")
    with claimed(out, rt.main):  # one run per folder: a second process is refused, naming the first
        metadata = {"classes": json.dumps(data.classes), "mean": json.dumps(data.mean), "std": json.dumps(data.std),
                    "args": json.dumps(sys.argv), **(metadata or {})}
        model.to(rt.device).set_fused_attn(rt.fused_attn)
        opt = build_optimizer(model, cfg)
        epoch, step, history, ema = _restore(model, opt, cfg, resume_from, fallback, rt)
        scored = model if ema is None else ema.model  # the weights evaluated, saved and reported
        trained, scored_net = runs_on(model, data), runs_on(scored, data)  # what a batch goes through
        net = trained
        if rt.world_size > 1:
            net = nn.parallel.DistributedDataParallel(net, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
        if rt.compile:
            net = torch.compile(net)
        steps_per_epoch, num_classes = len(data.train), len(data.classes)
        total_steps, warmup_steps = cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch)
        if epoch > cfg.epochs:  # results.json would claim the run trained cfg.epochs
            raise VitError(f"--epochs {cfg.epochs}: the run in {out} has trained {epoch} epochs already; resume it "
                           f"with --epochs {epoch} or more")
        if rt.main:
            record_run(out, asdict(cfg), asdict(model.cfg), data.classes, resumed=resume_from is not None)
        estimate = RunEstimate(cfg, epoch, steps_per_epoch, len(data.val) * cfg.batch_size, rt.main, ema is not None)
        best = max((h["eval_acc"] for h in history if "eval_acc" in h), default=-1.0)
        run_start, result, saved = time.perf_counter(), None, epoch if resume_from is not None else None
        try:
            while epoch < cfg.epochs:
                model.patch_dropout = 0.0 if epoch >= cfg.epochs - cfg.unmasked_epochs else cfg.patch_dropout
                stats, step = train_epoch(net, data, opt, cfg, rt, epoch, step, total_steps, warmup_steps, ema, estimate)
                epoch += 1
                history.append({"epoch": epoch, **stats})
                evaluated = epoch % cfg.eval_every == 0 or epoch == cfg.epochs
                if evaluated:  # the per-epoch curve is single-view; the test-time views are averaged after the last epoch
                    tta = cfg.tta if epoch == cfg.epochs else "none"
                    result = evaluate(scored_net, data.val, data.prepare_eval, num_classes, rt, tta)
                    history[-1].update(eval_loss=result.get("single_loss", result["loss"]),
                                       eval_acc=result.get("single_acc", result["acc"]))
                    if tta != "none":
                        history[-1].update(tta_eval_loss=result["loss"], tta_eval_acc=result["acc"])
                if evaluated and ema is not None:  # the trained weights themselves, to show what the average adds
                    raw = evaluate(trained, data.val, data.prepare_eval, num_classes, rt)
                    history[-1].update(raw_eval_loss=raw["loss"], raw_eval_acc=raw["acc"])
                if rt.main:
                    print(summary_line(history[-1], cfg.epochs, data.split), flush=True)
                    if evaluated and history[-1]["eval_acc"] > best:
                        best = history[-1]["eval_acc"]
                        save_checkpoint(out / "best.safetensors", scored, metadata)
                    if epoch % cfg.save_every == 0 or epoch == cfg.epochs:  # the weights with their resume state
                        save_checkpoint(out / "last.safetensors", scored, metadata)
                        save_state(out / STATE_FILE, model, opt, epoch, step, history, None if ema is None else ema.model)
                        saved = epoch
                    write_metrics(out, history, data.split)
            if result is None:  # resumed a finished run: evaluate what it left
                result = evaluate(scored_net, data.val, data.prepare_eval, num_classes, rt, cfg.tta)
            results = _final(result, history, data, model, cfg, rt, best, time.perf_counter() - run_start)
            if rt.main:
                write_results(out, results, data.classes)
                print(f"final {data.split} accuracy {100 * result['acc']:.2f}% ({result['count']} images)"
                      f"{tta_note(result, cfg.tta)}, {results['train_seconds']:.0f}s training, outputs in {out}", flush=True)
        except (KeyboardInterrupt, Diverged, OSError) as e:  # OSError: writing the outputs (a full disk)
            raise _stopped(e, out, saved, rt) from None
        return results


def evaluate_saved(model: VisionTransformer, data: Data, cfg: TrainConfig, state: Path, *, rt: Runtime | None = None,
                   fallback: bool = False) -> dict:
    """Scores the weights saved in the resume state `state` on data.val (the EMA average where the
    run kept one: that is what it reported), with cfg.tta's views; prints and returns the result."""
    rt = rt or Runtime(torch.device("cpu"))
    model.to(rt.device).set_fused_attn(rt.fused_attn)
    _, _, _, ema = _restore(model, build_optimizer(model, cfg), cfg, state, fallback, rt, keep_ema=True)
    result = evaluate(runs_on(model if ema is None else ema.model, data), data.val, data.prepare_eval, len(data.classes), rt,
                      cfg.tta)
    if rt.main:
        print(f"{data.split} accuracy {100 * result['acc']:.2f}% ({result['count']} images){tta_note(result, cfg.tta)}")
    return result


def summary_line(h: dict, epochs: int, split: str) -> str:
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
