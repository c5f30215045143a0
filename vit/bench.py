"""Benchmarks, printed as plain text tables.

    python -m vit.bench data --data-dir ../shared/data [--folder PATH]

`data`: time to load MNIST (train+test) and CIFAR-10 (binary) into uint8 tensors against the floor
of reading the same files' bytes, and the image-folder pipeline's images/s (decode + resize) with a
DataLoader at 0 and 2 workers.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from vit.data import ImageFolderDataset, folder_splits, load_tensor_dataset
from vit.formats import VitError

_CIFAR_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin", "batches.meta.txt"]


def _best_times(fns: list[Callable[[], object]], repeat: int) -> list[float]:
    """Fastest of `repeat` runs of each fn, in seconds; runs interleave so all see the same machine load."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def _read_all(paths: list[Path]) -> None:
    """The floor: all files' bytes read into one new buffer of their total size.

    One fresh buffer, because a loader's result is that much fresh memory: reading file by file into
    reused buffers skips the page faults any real load pays and looks ~3x faster than it is.
    """
    buf = memoryview(np.empty(sum(p.stat().st_size for p in paths), dtype=np.uint8))
    offset = 0
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            offset += f.readinto(buf[offset:])


class _Resize:
    """The folder benchmark's transform: resize to size x size, to a float tensor (3, size, size) in [0, 1]."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: Image.Image, generator: torch.Generator) -> torch.Tensor:
        pixels = np.array(img.resize((self.size, self.size), Image.BILINEAR))  # a writable copy for torch
        return torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255)  # (H, W, 3) -> (3, H, W)


def _cifar_dir(data_dir: Path, tmp: Path) -> Path:
    """A data_dir holding cifar10/cifar-10-batches-bin: data_dir itself, or a copy built from the JPEG tarball."""
    if all((data_dir / "cifar10" / "cifar-10-batches-bin" / f).is_file() for f in _CIFAR_FILES):
        return data_dir
    tool = data_dir.parent / "tools" / "cifar10_bin_from_jpg.py"
    if not tool.is_file():
        raise VitError(f"{data_dir / 'cifar10'} has no CIFAR-10 binary and {tool} is missing to build one")
    print(f"building CIFAR-10 binary with {tool} ...", file=sys.stderr)
    subprocess.run([sys.executable, str(tool), str(data_dir / "cifar10-jpg.tar.gz"), str(tmp / "cifar10")],
                   check=True, stdout=subprocess.DEVNULL)
    return tmp


def _jpeg_folder(data_dir: Path, tmp: Path) -> Path:
    """Extract the test split of cifar10-jpg.tar.gz (10,000 JPEGs in test/<class>/) into tmp."""
    with tarfile.open(data_dir / "cifar10-jpg.tar.gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith("test/")]
        # filter="data" confines extraction to tmp; extract_tar's per-file fsync is too slow for 10k files.
        tar.extractall(tmp, members=members, filter="data")
    return tmp / "test"


def _folder_rate(samples: list, size: int, workers: int, batch_size: int) -> float:
    """Images per second through ImageFolderDataset + DataLoader, worker start-up included."""
    loader = torch.utils.data.DataLoader(ImageFolderDataset(samples, _Resize(size)),
                                         batch_size=batch_size, num_workers=workers)
    start = time.perf_counter()
    for _ in loader:
        pass
    return len(samples) / (time.perf_counter() - start)


def bench_data(args: argparse.Namespace) -> None:
    """Print load time vs the read-the-bytes floor for the tensor datasets, and folder images/s."""
    data_dir = Path(args.data_dir)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cifar_root = _cifar_dir(data_dir, tmp)
        mnist_files = sorted((data_dir / "mnist").glob("*-ubyte*"))
        cifar_files = [cifar_root / "cifar10" / "cifar-10-batches-bin" / f for f in _CIFAR_FILES]
        rows = []
        for name, root, files in [("mnist", data_dir, mnist_files), ("cifar10", cifar_root, cifar_files)]:
            floor, load = _best_times([partial(_read_all, files),
                                       partial(load_tensor_dataset, name, root, download=False)], args.repeat)
            megabytes = sum(f.stat().st_size for f in files) / 1e6
            rows.append((f"{name} load train+test ({megabytes:.0f} MB)", f"{load:.3f} s",
                         f"{floor:.3f} s", f"{load / floor:.2f}x"))

        folder = Path(args.folder) if args.folder else _jpeg_folder(data_dir, tmp)
        train, val, _ = folder_splits(folder, val_fraction=0.0)
        samples = (train + val)[:args.folder_images]
        for workers in (0, 2):
            rate = _folder_rate(samples, args.size, workers, args.batch_size)
            rows.append((f"folder decode+resize {args.size}px, {workers} workers ({len(samples)} imgs)",
                         f"{rate:.0f} img/s", "", ""))

    header = ("what", "time / rate", "floor (read bytes)", "ratio")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vit.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", help="dataset loading and image-folder pipeline speed")
    data.add_argument("--data-dir", default="../shared/data",
                      help="holds mnist/, cifar10-jpg.tar.gz, and optionally cifar10/cifar-10-batches-bin/")
    data.add_argument("--folder", default=None,
                      help="image folder to time (default: the CIFAR-10 test JPEGs extracted to a temp dir)")
    data.add_argument("--folder-images", type=int, default=10_000, help="images to time in the folder")
    data.add_argument("--size", type=int, default=64, help="resize target for the folder pipeline")
    data.add_argument("--batch-size", type=int, default=256)
    data.add_argument("--repeat", type=int, default=5, help="timed runs per load; the fastest is reported")
    data.set_defaults(run=bench_data)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except VitError as e:
        parser.exit(1, f"error: {e}\n")


if __name__ == "__main__":
    main()
