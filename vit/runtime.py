"""Where and how a run executes: device, DDP processes, bf16 autocast, attention kernel, compile.

These are runtime choices, made afresh at every run and never saved with a model: the same
checkpoint trains or predicts on a CPU with the explicit attention and on a GPU with the fused one.
`setup_runtime()` picks them (a process launched by torchrun joins its DDP job); `shutdown()` ends it.
Precision and attention kernel depend on the model as well as the device: `choose_amp` and
`choose_fused_attn` hold the measured rules, each with the reason it gives the user.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import VitError
from .model import ViTConfig

# bf16 autocast on a CPU pays only with AMX-BF16 tiles (a 2048^3 bf16 matmul ran 6.5x fp32 on a Xeon with
# them) and only on wide models: there a ViT-B/16 (width 768) trained 3.0x and predicted 3.55x faster,
# while the MNIST (64) and CIFAR-10 (128) presets trained 0.34x and 0.73x as fast (casts and small
# matrices). Between widths 128 and 768 the speed-up grew about 1.7x per doubling, so it crosses 1x near
# width 190 and reaches ~1.7x at 384 (ViT-S): the smallest width where bf16 is switched on by itself.
# On another AMX Xeon (2 cores, family 6 model 167) the presets ran 0.97x and 1.59x and ViT-B/16 3.67x
# (`python -m vit.bench train`, `finetune`): the crossover moves between CPUs, so the rule keeps to the
# widths where bf16 won on both, and --amp turns it on below them.
AMP_MIN_WIDTH = 384
# On the CPU the explicit attention trained the MNIST and CIFAR-10 presets (head widths 16 and 32)
# 1.1-1.6x faster than torch's fused kernel; at ViT-B/16's head width 64 the fused one was faster
# (1.06x training, 1.11x inference on a 2-core Zen 3 EPYC). So: fused from this head width up.
FUSED_MIN_HEAD_DIM = 64
CPUINFO = Path("/proc/cpuinfo")  # the CPU's flags, where torch has no check of its own


@dataclass
class Runtime:
    """The device, this process's place in a DDP job, and how the model runs there."""
    device: torch.device
    amp: bool = False  # bf16 autocast (see choose_amp)
    amp_reason: str = ""  # why amp is on or off, for the line a run prints
    rank: int = 0
    world_size: int = 1
    fused_attn: bool = False  # F.scaled_dot_product_attention, or the explicit softmax(q k^T / sqrt(d)) v
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


def world_size() -> int:
    """Processes in this job: torchrun's WORLD_SIZE, 1 when run directly."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup_runtime(device: str = "auto", *, amp: bool | None = None, attn: str = "auto", threads: int | None = None,
                  compile: bool = False, workers: int = 0, model: ViTConfig | None = None) -> Runtime:
    """Picks the device ('auto': CUDA, else MPS, else the CPU), joins torchrun's DDP job if launched by
    it (gloo on the CPU, nccl on CUDA), and settles autocast (None: `choose_amp`) and the attention
    kernel ('auto': `choose_fused_attn`) for `model`, the architecture about to run."""
    if threads:
        torch.set_num_threads(threads)
    rank = int(os.environ.get("RANK", "0"))
    name = device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise VitError("--device cuda: no CUDA device is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise VitError("--device mps: no MPS device is available")
    dev = torch.device(name)
    if name == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world_size() > 1:
        dist.init_process_group("nccl" if name == "cuda" else "gloo")
    use_amp, reason = choose_amp(amp, name, model)
    return Runtime(dev, amp=use_amp, amp_reason=reason, rank=rank, world_size=world_size(),
                   fused_attn=choose_fused_attn(attn, name, model), compile=compile, workers=workers)


def has_amx_bf16() -> bool:
    """Whether this CPU has AMX-BF16 tiles: torch's own check where this torch has one (it also asks
    the kernel for permission to use them), else the CPU's flags in /proc/cpuinfo."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if check is not None:
        return bool(check())
    try:
        return "amx_bf16" in CPUINFO.read_text().split()
    except OSError:
        return False


def choose_amp(amp: bool | None, device_type: str, model: ViTConfig | None = None) -> tuple[bool, str]:
    """(bf16 autocast on?, the reason, for the user). --amp / --no-amp decide when given; else on for
    CUDA, and on a CPU only with AMX-BF16 and a model at least AMP_MIN_WIDTH wide."""
    if amp is not None:
        return amp, "--amp" if amp else "--no-amp"
    if device_type == "cuda":
        return True, "CUDA"
    if device_type != "cpu":
        return False, f"the default on {device_type}"
    if not has_amx_bf16():
        return False, "this CPU has no AMX-BF16, where bf16 runs 10-25x slower than fp32"
    if model is None or model.embed_dim < AMP_MIN_WIDTH:
        width = "" if model is None else f" {model.embed_dim}"
        return False, (f"AMX-BF16, but the model's width{width} is under {AMP_MIN_WIDTH}, where bf16 did not pay on "
                       "every AMX CPU (--amp forces it)")
    return True, f"AMX-BF16 and the model's width {model.embed_dim} >= {AMP_MIN_WIDTH}"


def choose_fused_attn(attn: str, device_type: str, model: ViTConfig | None = None) -> bool:
    """--attn fused / explicit as asked; auto: fused off the CPU, and on the CPU from a head width of
    FUSED_MIN_HEAD_DIM (explicit for narrower heads, and when the model is not known)."""
    if attn not in ("auto", "fused", "explicit"):
        raise ValueError(f"attn must be auto, fused or explicit, got {attn!r}")
    if attn != "auto":
        return attn == "fused"
    return device_type != "cpu" or (model is not None and model.embed_dim // model.num_heads >= FUSED_MIN_HEAD_DIM)


def shutdown(rt: Runtime) -> None:
    """Ends a DDP job: the processes wait for each other, then close their connections together."""
    if rt.world_size > 1:
        # Rank 0 is still writing the outputs when the others get here. Without this wait a rank closed its
        # gloo connections meanwhile, and one such CI run aborted (SIGABRT, 'terminate called without an
        # active exception'); with it no process tears down while another may still use the connections.
        dist.barrier()
        dist.destroy_process_group()
