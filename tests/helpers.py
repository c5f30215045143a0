"""What several test files share: tiny datasets the tests write themselves, and a guard on Pillow's
resize (pytest puts tests/ on sys.path: no __init__.py there)."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


# IDX type codes of the dtypes the tests write (big-endian on disk)
IDX_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C,
             np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """`array` as an IDX file (MNIST's format: 0, 0, type code, dims, big-endian sizes, data), gzipped if `compress`."""
    array = np.asarray(array)
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    body = bytes([0, 0, IDX_CODES[dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body += np.ascontiguousarray(array, dtype=dtype).tobytes()
    Path(path).write_bytes(gzip.compress(body, mtime=0) if compress else body)


def write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """uint8 images (N, 3, 32, 32) and labels (N,) as CIFAR-10 binary records: a label byte, then the
    R, G and B planes."""
    records = np.concatenate([np.asarray(labels, np.uint8)[:, None], np.asarray(images, np.uint8).reshape(len(images), -1)],
                             axis=1)  # (N,) + (N, 3, 32, 32) -> (N, 3073)
    Path(path).write_bytes(records.tobytes())


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


def write_scenes(root: Path, per_class: int = 8) -> Path:
    """root/{train,val}/<class>/*.png: three classes told apart by colour, images of several sizes."""
    for split, n in (("train", per_class), ("val", 3)):
        for name, colour in (("beach", (230, 200, 120)), ("forest", (20, 120, 30)), ("sea", (20, 60, 200))):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40 + 3 * i, 36), tuple(min(255, c + 4 * i) for c in colour)).save(folder / f"{i}.png")
    return root


def limit_resizes(monkeypatch: pytest.MonkeyPatch, max_pixels: int) -> list[int]:
    """Make every PIL resize larger than `max_pixels` an AssertionError raised before Pillow allocates it
    (an unbounded resize of a 10000 x 1 strip is gigabytes); returns the pixel counts of the resizes made."""
    pixels: list[int] = []
    real_resize = Image.Image.resize

    def resize(self: Image.Image, size: tuple[int, int], *args: object, **kwargs: object) -> Image.Image:
        assert size[0] * size[1] <= max_pixels, f"resize to {size[0]} x {size[1]}, more than {max_pixels} pixels"
        pixels.append(size[0] * size[1])
        return real_resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", resize)
    return pixels
