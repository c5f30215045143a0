"""The training loop: `fit(model, data, cfg)` trains a VisionTransformer and evaluates it.

Read top to bottom: the optimizer and its warmup + cosine schedule, an EMA of the weights, the loss,
one optimizer step (`train_step`), one epoch (`train_epoch`), one evaluation with optional test-time
views (`evaluate`), then `fit`, which runs the epochs. Everything random in an epoch is seeded from
(seed, epoch, rank), so resuming after epoch k replays epochs k+1... bit for bit on the CPU.

What to train with is a `vit.config.TrainConfig`; where to run it, a `vit.config.Runtime`; the data,
a `vit.data.Data`. What a run leaves on disk and says on the way (the run folder, the resume state,
checkpoints, metrics, progress, and what a stop keeps) is the plumbing's: `fit` reaches it through
one door, the `Run` of vit/runs.py.
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .augment import mix_seed, tta_views
from .config import Runtime, TrainConfig
from .data import Data
from .model import VisionTransformer, param_groups
from .runs import Run

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
# One step, one epoch, one evaluation


def train_step(model: nn.Module, opt: torch.optim.Optimizer, inputs: torch.Tensor, targets: torch.Tensor,
               cfg: TrainConfig, rt: Runtime) -> torch.Tensor:
    """One optimizer step on a batch, in cfg.accum_steps micro-batches whose gradients add up to the
    batch's (the same step in less memory); returns (loss x images, correct, images) of the batch."""
    parts = []
    for micro, (xm, tm) in enumerate(zip(inputs.chunk(cfg.accum_steps), targets.chunk(cfg.accum_steps))):
        # DDP averages the gradients across processes in the backward pass: once a step, at the last micro-batch
        last = micro == cfg.accum_steps - 1
        ddp = isinstance(model, nn.parallel.DistributedDataParallel)
        with nullcontext() if last or not ddp else model.no_sync():
            with rt.autocast():
                logits = model(xm)
            loss = soft_cross_entropy(logits, tm, cfg.smoothing)
            (loss * len(xm) / len(inputs)).backward()
        labels = tm.argmax(-1) if tm.ndim == 2 else tm
        parts.append(torch.stack([loss.detach() * len(xm), (logits.argmax(-1) == labels).sum(),
                                  torch.tensor(len(xm), device=rt.device)]).float())
    if cfg.clip_grad:
        nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return torch.stack(parts).sum(0)  # (micro-batches, 3) -> (3,)


def train_epoch(model: nn.Module, data: Data, opt: torch.optim.Optimizer, cfg: TrainConfig, rt: Runtime,
                epoch: int, step: int, ema: EMA | None = None,
                on_step: Callable[[int, int, float, torch.Tensor], None] | None = None) -> tuple[dict, int]:
    """One pass over the training data, the learning rate set before each step and `ema` updated after
    it; `on_step(steps done, the step's images, its seconds, the sums so far)` hears of each step.
    Returns (metrics summed over processes, next step)."""
    model.train()
    seed = mix_seed(cfg.seed, epoch, rt.rank * 104_729)  # one stream per process and epoch
    generator = torch.Generator().manual_seed(seed)  # augmentation and mixing
    torch.manual_seed(seed)  # dropout, drop-path and PatchDropout draw from here
    data.train.set_epoch(epoch)
    total_steps, warmup_steps = cfg.epochs * len(data.train), int(cfg.warmup_epochs * len(data.train))
    sums = torch.zeros(3, device=rt.device)  # loss * n, correct, n
    start = step_start = time.perf_counter()
    for i, (x, y) in enumerate(data.train):
        x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
        inputs, targets = data.prepare_train(x, y, generator)
        lr = lr_at(step, total_steps, warmup_steps, cfg.lr, cfg.min_lr)
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        sums += train_step(model, opt, inputs, targets, cfg, rt)
        if ema is not None:
            ema.update(step)
        step += 1
        if on_step is not None:
            now = time.perf_counter()
            on_step(i + 1, len(inputs), now - step_start, sums)
            step_start = now
    seconds = time.perf_counter() - start
    sums = rt.all_reduce(sums).tolist()
    if not math.isfinite(sums[0]):
        raise FloatingPointError(f"loss is {sums[0] / sums[2]} at the end of epoch {epoch + 1}")
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


def evaluate_held_out(model: VisionTransformer, data: Data, rt: Runtime, tta: str = "none") -> dict:
    """`evaluate` on the data's held-out images (`data.split` says which), through `runs_on`."""
    return evaluate(runs_on(model, data), data.held_out, data.prepare_eval, len(data.classes), rt, tta)


# ------------------------------------------------------------------------------------------------
# The whole run


def fit(model: VisionTransformer, data: Data, cfg: TrainConfig, *, rt: Runtime | None = None,
        out: str | Path | None = None, resume_from: Path | None = None, fallback: bool = False,
        metadata: dict[str, str] | None = None) -> dict:
    """Trains `model` on data.train for cfg.epochs, evaluates on data.held_out every cfg.eval_every epochs
    and after the last, and returns the final results. The run folder `out` (default
    runs/fit-<timestamp>) gets the checkpoints, the resume state and the results (vit/runs.py); with
    `resume_from`, training continues from that state (with `fallback`, from the one before it if it
    is unreadable). Checkpoints carry the class names, normalisation and command line (plus `metadata`)."""
    rt = rt or Runtime()
    run = Run(out, data, cfg, rt, metadata)
    with run.open():  # the folder claimed; Ctrl-C, a diverged loss or a full disk end saying what was kept
        rt.place(model)
        opt = build_optimizer(model, cfg)
        ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
        scored = model if ema is None else ema.model  # the weights evaluated, saved and reported
        first, step = run.resume(resume_from, fallback, model, opt, ema)  # (0, 0) for a fresh start
        net = rt.wrap(runs_on(model, data))
        result = None
        for epoch in range(first, cfg.epochs):
            # the last unmasked_epochs train on every token, as the model is tested (FLIP's unmasked tuning)
            model.patch_dropout = 0.0 if epoch >= cfg.epochs - cfg.unmasked_epochs else cfg.patch_dropout
            stats, step = train_epoch(net, data, opt, cfg, rt, epoch, step, ema, run.step_report(epoch))
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                tta = cfg.tta if epoch + 1 == cfg.epochs else "none"  # the views only in the final evaluation
                result = evaluate_held_out(scored, data, rt, tta)
                stats.update(eval_loss=result.get("single_loss", result["loss"]),
                             eval_acc=result.get("single_acc", result["acc"]))
                if tta != "none":
                    stats.update(tta_eval_loss=result["loss"], tta_eval_acc=result["acc"])
                if ema is not None:  # the trained weights themselves, to show what the average adds
                    raw = evaluate_held_out(model, data, rt)
                    stats.update(raw_eval_loss=raw["loss"], raw_eval_acc=raw["acc"])
            run.end_epoch(epoch + 1, stats, step, model, opt, None if ema is None else ema.model)
        if result is None:  # a resumed run that had finished: score what it left
            result = evaluate_held_out(scored, data, rt, cfg.tta)
        return run.finish(result, model)
