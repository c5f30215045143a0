"""Choosing the `Runtime` of a command: the device, the DDP job, bf16 autocast and the attention kernel.

`setup_runtime()` picks them (a process launched by torchrun joins its DDP job); `shutdown()` ends the
job. Precision and attention kernel depend on the model as well as the device: `choose_amp` and
`choose_fused_attn` hold the measured rules, each with the reason it gives the user (the figures behind
them: README, "Speed levers").
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from .config import Runtime
from .errors import VitError
from .model import ViTConfig

# bf16 autocast pays on a CPU only with AMX-BF16 tiles, and there only for wide models: for narrow ones
# the casts and small matrices cost more than the faster matmuls save, and where the two cross moves
# between CPUs. From this width (ViT-S) up it paid on every AMX CPU measured (README, "Speed levers"); --amp
# turns it on below.
AMP_MIN_WIDTH = 384
# On the CPU the explicit attention beats torch's fused kernel for narrow heads (the small presets' 16 and
# 32) and loses from ViT-B/16's 64 (README, "Speed levers"). So: fused from this head width up.
FUSED_MIN_HEAD_DIM = 64
CPUINFO = Path("/proc/cpuinfo")  # the CPU's flags, where torch has no check of its own


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
        # Rank 0 may still be writing the outputs when the others get here: they wait, so that no process
        # closes its connections while another may still use them (gloo aborts the whole job then).
        dist.barrier()
        dist.destroy_process_group()
