"""Progress and estimates: what a long run says on stderr while it works.

`Progress` redraws a bar per epoch on a terminal (a plain line every 30 s otherwise); `RunEstimate`
says once, when enough steps are timed, how long the whole run takes.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

from .augment import num_tta_views
from .config import TrainConfig


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
    `warmup` steps (start-up: allocations, thread pools, caches), over as many epochs as that takes. (The
    first few steps of a run are slow: an estimate from them alone can be several times too long.)

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
