"""Where and how a run executes: device, DDP processes, bf16 autocast, attention kernel, compile.

These are runtime choices, made afresh at every run and never saved with a model: the same
checkpoint trains or predicts on a CPU with the explicit attention and on a GPU with the fused one.
`setup_runtime()` picks them (a process launched by torchrun joins its DDP job); `shutdown()` ends it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .formats import VitError


@dataclass
class Runtime:
    """The device, this process's place in a DDP job, and how the model runs there."""
    device: torch.device
    amp: bool = False  # bf16 autocast (pays on GPUs; these CPUs have no bf16 units)
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
                  compile: bool = False, workers: int = 0) -> Runtime:
    """Picks the device ('auto': CUDA, else MPS, else the CPU), joins torchrun's DDP job if launched by
    it (gloo on the CPU, nccl on CUDA), and settles autocast (default: on for CUDA only) and the
    attention kernel ('auto': explicit on the CPU, fused elsewhere)."""
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
    return Runtime(dev, amp=(name == "cuda") if amp is None else amp, rank=rank, world_size=world_size(),
                   fused_attn=choose_fused_attn(attn, name), compile=compile, workers=workers)


def choose_fused_attn(attn: str, device_type: str) -> bool:
    """--attn fused / explicit as asked; auto: explicit on the CPU, fused elsewhere."""
    if attn not in ("auto", "fused", "explicit"):
        raise ValueError(f"attn must be auto, fused or explicit, got {attn!r}")
    # On the CPU, torch's fused (flash) kernel trained the MNIST preset 1.2-1.6x slower and CIFAR-10's
    # 1.1x slower (head widths 16 and 32) and gained nothing from a second thread (README, "How the recipes' defaults were chosen").
    return attn == "fused" or (attn == "auto" and device_type != "cpu")


def shutdown(rt: Runtime) -> None:
    """Ends a DDP job: the processes wait for each other, then close their connections together."""
    if rt.world_size > 1:
        # Rank 0 is still writing the outputs when the others get here. Without this wait a rank closed its
        # gloo connections meanwhile, and one such CI run aborted (SIGABRT, 'terminate called without an
        # active exception'); with it no process tears down while another may still use the connections.
        dist.barrier()
        dist.destroy_process_group()
