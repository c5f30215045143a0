"""Tiny datasets the tests write themselves (pytest puts tests/ on sys.path: no __init__.py there)."""

from pathlib import Path

import numpy as np

from vit.formats import write_idx


def write_mnist(root: Path, n_train: int = 96, n_test: int = 64) -> Path:
    """MNIST-format files (raw IDX) under root/mnist whose class is readable from the image: dark
    noise with a bright row at 2 * label + 4. Returns root, the --data-dir to pass."""
    rng = np.random.default_rng(0)
    folder = root / "mnist"
    folder.mkdir(parents=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n, dtype=np.uint8) % 10
        images = rng.integers(0, 30, (n, 28, 28), dtype=np.uint8)
        images[np.arange(n), 2 * labels + 4] = 255
        write_idx(folder / f"{split}-images-idx3-ubyte", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels)
    return root
