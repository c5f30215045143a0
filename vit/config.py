"""The typed run configs: what a run trains with (`TrainConfig`) and where it runs (`Runtime`).

`TrainConfig` holds every training choice (optimisation, regularisation, augmentation, evaluation),
with its checks gathered below the fields; never the architecture (`vit.model.ViTConfig`). The
commands build one from a recipe (`vit.recipes.RECIPES`) and the flags the user gave; from Python,
take a recipe and `.replace()` what you want to change. It is saved in each run's args.json.

`Runtime` says where and how the loop computes: the device, this process's place in a DDP job, bf16
autocast, the attention kernel, compilation. These are chosen afresh at every run and never saved
with a model (the same checkpoint trains on a CPU and on a GPU); `vit.runtime.setup_runtime` makes
the choices for the commands, by measurement. `Runtime()` is one process on the CPU in fp32.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn as nn

from .augment import TTA_VIEWS, augmentations
from .errors import is_int, is_number


class ConfigError(ValueError):
    """A TrainConfig field with a value it cannot take; `field` names it, so the scripts can name the flag."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field, self.problem = field, problem


@dataclass(frozen=True)
class TrainConfig:
    # optimisation
    epochs: int = 10  # passes over the training data
    batch_size: int = 128  # images per optimizer step, over all processes
    opt: str = "adamw"  # 'adamw', or 'sgd' (momentum 0.9)
    lr: float = 1e-3  # peak learning rate, reached after the warmup
    min_lr: float = 1e-6  # learning rate at the end of the cosine decay
    warmup_epochs: float = 1.0  # linear warmup from 0, in epochs (fractions allowed)
    weight_decay: float = 0.05  # decoupled weight decay; not on biases, norms, pos_embed, cls_token
    layer_decay: float = 1.0  # layer-wise lr decay for fine-tuning (block i gets decay^(depth+1-i)); 1 = off
    clip_grad: float | None = None  # clip the gradient norm to this; None = no clipping
    accum_steps: int = 1  # split each batch into this many micro-batches (same result, less memory)
    # regularisation
    smoothing: float = 0.1  # label smoothing of the cross-entropy targets
    mixup: float = 0.0  # mixup's Beta(alpha, alpha); 0 = off
    cutmix: float = 0.0  # cutmix's Beta(alpha, alpha); 0 = off
    drop_path: float = 0.0  # stochastic depth rate of the last block, given to the model (drop_path_rate)
    patch_dropout: float = 0.0  # fraction of each image's patch tokens dropped in training (PatchDropout)
    unmasked_epochs: int = 0  # the last N epochs train on every token, without PatchDropout (FLIP)
    ema: float = 0.0  # decay of an average of the weights, evaluated and saved in their place; 0 = off
    # data
    aug: str = "none"  # augmentation: a batch preset, or for folders a per-image transform (vit.augment.augmentations)
    crop_padding: int = 4  # tensor data: zero padding of the random crop, in pixels (aug 'cifar', 'crop')
    jitter: float = 0.0  # folders: colour jitter strength of the training transform; 0 = off
    val_fraction: float = 0.1  # folders without a val/ split: the fraction of each class held out
    seed: int = 0  # model init, data order, augmentation, dropout: everything random derives from it
    # evaluation and saving
    eval_every: int = 1  # evaluate every N epochs, and after the last
    tta: str = "none"  # test-time views averaged in the final evaluation (vit.augment.TTA_VIEWS)
    save_every: int = 1  # write the resume state and last.safetensors every N epochs, and after the last

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "accum_steps", "eval_every", "save_every"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ConfigError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.opt not in ("adamw", "sgd"):
            raise ConfigError("opt", f"must be 'adamw' or 'sgd', got {self.opt!r}")
        if not (is_number(self.lr) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError("lr", f"must be a finite number > 0, got {self.lr}")
        for name in ("min_lr", "warmup_epochs", "weight_decay", "mixup", "cutmix", "jitter"):
            value = getattr(self, name)
            if not (is_number(value) and math.isfinite(value) and value >= 0):
                raise ConfigError(name, f"must be a finite number >= 0, got {value}")
        if self.clip_grad is not None and not (is_number(self.clip_grad) and math.isfinite(self.clip_grad)
                                               and self.clip_grad > 0):
            raise ConfigError("clip_grad", f"must be a finite number > 0, got {self.clip_grad}")
        if not (is_number(self.layer_decay) and 0.0 < self.layer_decay <= 1.0):
            raise ConfigError("layer_decay", f"must be in (0, 1], got {self.layer_decay}")
        for name in ("smoothing", "drop_path", "patch_dropout", "ema"):
            if not (is_number(getattr(self, name)) and 0.0 <= getattr(self, name) < 1.0):
                raise ConfigError(name, f"must be in [0, 1), got {getattr(self, name)}")
        if not (is_int(self.unmasked_epochs) and 0 <= self.unmasked_epochs <= self.epochs):
            raise ConfigError("unmasked_epochs", f"must be in [0, epochs], got {self.unmasked_epochs}")
        if self.aug not in augmentations(folder=True):
            raise ConfigError("aug", f"must be one of {', '.join(augmentations(folder=True))}, got {self.aug!r}")
        if not (is_int(self.crop_padding) and self.crop_padding >= 0):
            raise ConfigError("crop_padding", f"must be >= 0, got {self.crop_padding}")
        if not (is_number(self.val_fraction) and 0.0 < self.val_fraction < 1.0):
            raise ConfigError("val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        if not (is_int(self.seed) and 0 <= self.seed < 2**32):
            raise ConfigError("seed", f"must be in [0, 2**32), got {self.seed}")
        if self.tta not in TTA_VIEWS:
            raise ConfigError("tta", f"must be one of {', '.join(TTA_VIEWS)}, got {self.tta!r}")

    def replace(self, **changes: object) -> TrainConfig:
        """A copy with `changes` applied, checked like a new config."""
        return dataclasses.replace(self, **changes)


@dataclass
class Runtime:
    """The device, this process's place in a DDP job, and how the model runs there."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp: bool = False  # bf16 autocast
    amp_reason: str = ""  # why amp is on or off, for the line a run prints
    rank: int = 0  # this process in a DDP job (0: the main process, which writes the outputs)
    world_size: int = 1  # processes in the job
    fused_attn: bool | None = None  # F.scaled_dot_product_attention (True) or explicit; None: the model's own
    compile: bool = False  # torch.compile the model for training
    workers: int = 0  # DataLoader worker processes for image folders

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

    def place(self, model: nn.Module) -> nn.Module:
        """The model moved to the device, with the attention kernel this runtime names (else the model's own)."""
        model.to(self.device)
        if self.fused_attn is not None:
            model.set_fused_attn(self.fused_attn)
        return model

    def wrap(self, module: nn.Module) -> nn.Module:
        """The module as it trains here: replicated across the DDP job's processes, compiled if asked."""
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            module = nn.parallel.DistributedDataParallel(module, device_ids=ids)
        return torch.compile(module) if self.compile else module
