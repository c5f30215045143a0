"""Memory: whether a folder decoded into memory, and a training step on it, fit in what this process may take.

Checked before any image is decoded, so that a folder too large is one clear line naming the flags
that help, instead of a traceback or a silent kill by the kernel once the folder is decoded.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import VitError

# What a folder held in memory and a training step may take of the memory available together (the rest:
# the loader's workers, the process's own growth, whatever else runs there), and what a training step takes
# per byte of its uint8 batch: the batch's float copies and the activations kept for the backward pass (the
# conv stem's full-resolution maps most). Measured on the CPU with the folder recipe's model: 2.6 GB for
# 128 images at 224 px (19 MB of pixels), 0.6 GB at 128 px; a larger model takes more.
MEMORY_SHARE = 0.8
STEP_BYTES_PER_BATCH_BYTE = 120


def available_memory(proc: Path = Path("/proc"), cgroup: Path = Path("/sys/fs/cgroup")) -> tuple[int, str] | None:
    """(bytes this process can still take, what sets that), the least of: the machine's MemAvailable; a
    cgroup's memory limit less its working set (v2 memory.max, v1 memory/memory.limit_in_bytes), past
    which the process is killed without a word; the address-space limit (ulimit -v) less this process's
    size, past which an allocation fails. None where none of them can be read (no /proc: not Linux)."""
    found = []
    meminfo = _proc_numbers(proc / "meminfo")
    if "MemAvailable" in meminfo:
        found.append((meminfo["MemAvailable"] * 1024, "MemAvailable"))
    for folder, limit_file, usage_file, cache in ((cgroup, "memory.max", "memory.current", "inactive_file"),
                                                  (cgroup / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes",
                                                   "total_inactive_file")):
        limit, usage = (_proc_numbers(folder / name).get("") for name in (limit_file, usage_file))
        if limit is not None and usage is not None:  # the working set: use less the page cache it can drop
            found.append((limit - usage + _proc_numbers(folder / "memory.stat").get(cache, 0),
                          f"the cgroup limit {folder / limit_file} less its use"))
    address_space = _proc_numbers(proc / "self" / "limits").get("Max address space")
    size = _proc_numbers(proc / "self" / "status").get("VmSize")
    if address_space is not None and size is not None:
        found.append((address_space - size * 1024, "the address-space limit (ulimit -v) less this process's size"))
    return min(found) if found else None


def _proc_numbers(path: Path) -> dict[str, int]:
    """The numbers of a /proc or cgroup file by name: 'MemAvailable:  123 kB' -> {'MemAvailable': 123},
    a limits row by its words before the first number, a file holding one number -> {'': number}; {} if
    the file cannot be read. Words such as 'max' or 'unlimited' are no number, so no limit."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    numbers = {}
    for line in lines:
        words = line.replace(":", " ").split()
        first = next((i for i, w in enumerate(words) if w.isdigit() or w in ("max", "unlimited")), None)
        if first is not None and words[first].isdigit():
            numbers[" ".join(words[:first])] = int(words[first])
    return numbers


def check_fits_in_memory(root: str | Path, images: int, size: int, batch: int) -> None:
    """Before any image is decoded: a VitError when `images` held in memory at `size` px (uint8, N x 3 x
    size x size bytes) and a training step on `batch` of them take more than MEMORY_SHARE of the memory
    available (once per process of a DDP job on this machine), instead of a traceback or a silent kill
    once the folder is decoded."""
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    image_bytes = 3 * size * size * processes
    pixels, step = images * image_bytes, STEP_BYTES_PER_BATCH_BYTE * batch * image_bytes
    available = available_memory()
    if available is not None and pixels + step > MEMORY_SHARE * available[0]:
        each = f" ({processes} processes on this machine, each with its own)" if processes > 1 else ""
        raise VitError(f"{root}: its {images:,} images held in memory at --img-size {size} take {_size(pixels)}, and "
                       f"a training step on batches of {batch} about {_size(step)} more{each}: more than "
                       f"{MEMORY_SHARE:.0%} of the {_size(available[0])} available ({available[1]}); use --aug rrc, "
                       "which decodes the images batch by batch instead of holding them, or a smaller --img-size "
                       "or --batch-size")


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"
