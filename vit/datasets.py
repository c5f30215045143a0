"""The built-in datasets, MNIST, Fashion-MNIST and CIFAR-10: found or downloaded, checked, read whole.

`load_tensor_dataset(name, data_dir)` returns an `InMemoryDataset`: uint8 images (N, C, H, W) and int64
labels for the official train and test splits, the class names and the published per-channel
mean/std. Missing files are downloaded from the official mirrors (md5-checked, vit/download.py),
unless the caller says not to; every file is checked against the format before it is used
(vit/formats.py). `select_classes` keeps some classes, relabelled 0..K-1.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .download import download as download_file
from .download import extract_tar, md5_file
from .errors import VitError
from .formats import FormatError, read_cifar_batch, read_idx

# name -> (channels, image side) of each built-in dataset's images
IMAGE_SHAPES = {"mnist": (1, 28), "fashion-mnist": (1, 28), "cifar10": (3, 32)}


@dataclass
class InMemoryDataset:
    """A whole dataset in memory: uint8 images (N, C, H, W), int64 labels (N,), per-channel mean/std on [0, 1]."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class _Source:
    """Where a dataset's archives come from: mirrors (tried in order), the published md5 and the size in
    bytes per file (a download is cut off as soon as it runs past the size)."""

    mirrors: tuple[str, ...]
    md5: dict[str, str]
    size: dict[str, int]

    def urls(self, filename: str) -> list[str]:
        return [mirror + filename for mirror in self.mirrors]


# Published md5s of the official archives (the same values torchvision checks) and their exact sizes
# (MNIST: LeCun's download page; Fashion-MNIST and CIFAR-10: the files as their official hosts serve them).
_SOURCES = {
    "mnist": _Source(
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        size={"train-images-idx3-ubyte.gz": 9_912_422, "train-labels-idx1-ubyte.gz": 28_881,
              "t10k-images-idx3-ubyte.gz": 1_648_877, "t10k-labels-idx1-ubyte.gz": 4_542},
    ),
    "fashion-mnist": _Source(
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                 "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        size={"train-images-idx3-ubyte.gz": 26_421_880, "train-labels-idx1-ubyte.gz": 29_515,
              "t10k-images-idx3-ubyte.gz": 4_422_102, "t10k-labels-idx1-ubyte.gz": 5_148},
    ),
    "cifar10": _Source(
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        md5={"cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"},
        size={"cifar-10-binary.tar.gz": 170_052_171},
    ),
}

_IDX_FILES = {  # split -> (images file, labels file), names without .gz
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_CLASSES = {
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
}
# Per-channel pixel statistics of the training sets on the [0, 1] scale (the commonly published values).
_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
CIFAR_DIR = "cifar-10-batches-bin"
_CIFAR_TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]
CIFAR_FILES = [*_CIFAR_TRAIN, "test_batch.bin", "batches.meta.txt"]
_CIFAR_ARCHIVE = "cifar-10-binary.tar.gz"
_CIFAR_MEMBER_MAX = 10_000 * (1 + 3 * 32 * 32)  # a batch file, the archive's largest member: 10,000 records


def _missing_error(name: str, source: _Source, missing: list[tuple[Path, str]], why: str, what_to_do: str) -> VitError:
    """Every missing file of a dataset in one message: its exact path, md5, size and official URLs
    (`missing`: (path to place it at, the archive's official name)), why it is missing, what to do."""
    lines = [f"  {path}  (md5 {source.md5[file]}, {source.size[file]:,} bytes)\n    from {' or '.join(source.urls(file))}\n"
             for path, file in missing]
    return VitError(f"{name}: {len(missing)} file(s) missing and {why}:\n" + "".join(lines) + what_to_do)


def _idx_path(folder: Path, filename: str) -> Path | None:
    """The raw or gzipped copy of an IDX file in `folder`, if either exists."""
    for path in (folder / filename, folder / f"{filename}.gz"):
        if path.is_file():
            return path
    return None


def _read_checked_idx(path: Path, ndim: int) -> np.ndarray:
    """read_idx plus the MNIST-family checks: uint8, `ndim` dims, 28x28 images."""
    try:
        array = read_idx(path)
    except FormatError as e:
        raise VitError(f"{e} (delete the file to download it again)") from None
    if array.dtype != np.uint8 or array.ndim != ndim or (ndim == 3 and array.shape[1:] != (28, 28)):
        kind = "images (N, 28, 28)" if ndim == 3 else "labels (N,)"
        raise VitError(f"{path}: expected uint8 {kind}, got {array.dtype} {array.shape}")
    return array


def _load_idx_dataset(name: str, folder: Path, download: bool) -> InMemoryDataset:
    source = _SOURCES[name]
    needed = [f for pair in _IDX_FILES.values() for f in pair]
    missing = [f for f in needed if _idx_path(folder, f) is None]
    place = "place the files at the paths above (gzipped or not)"
    if missing and not download:
        raise _missing_error(name, source, [(folder / f"{f}.gz", f"{f}.gz") for f in missing], "downloads are off",
                             f"{place}, or allow downloads")
    for f in missing:
        try:
            download_file(source.urls(f"{f}.gz"), folder / f"{f}.gz", source.md5[f"{f}.gz"], source.size[f"{f}.gz"])
        except VitError as e:  # no network: name every file still missing at once, not one per attempt
            still = [g for g in needed if _idx_path(folder, g) is None]
            raise _missing_error(name, source, [(folder / f"{g}.gz", f"{g}.gz") for g in still],
                                 f"the download failed ({e})",
                                 f"{place} and run again (with --no-download to never touch the network)") from None
    tensors = {}
    for split, (images_file, labels_file) in _IDX_FILES.items():
        images_path, labels_path = _idx_path(folder, images_file), _idx_path(folder, labels_file)
        images, labels = _read_checked_idx(images_path, 3), _read_checked_idx(labels_path, 1)
        if len(images) != len(labels):
            raise VitError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
        if labels.size and labels.max() >= 10:
            raise VitError(f"{labels_path}: label {labels.max()} out of range 0..9")
        tensors[f"{split}_x"] = torch.from_numpy(images).unsqueeze(1)  # (N, 28, 28) -> (N, 1, 28, 28)
        tensors[f"{split}_y"] = torch.from_numpy(labels).long()
    mean, std = _STATS[name]
    return InMemoryDataset(**tensors, classes=list(_IDX_CLASSES[name]), mean=mean, std=std)


def _read_cifar_files(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate CIFAR-10 binary batches into uint8 (N, 3, 32, 32) and int64 (N,) tensors."""
    parts = [read_cifar_batch(p) for p in paths]
    if len(parts) == 1:
        return torch.from_numpy(parts[0][0]), torch.from_numpy(parts[0][1])
    return (torch.from_numpy(np.concatenate([x for x, _ in parts])),
            torch.from_numpy(np.concatenate([y for _, y in parts])))


def _load_cifar10(folder: Path, download: bool) -> InMemoryDataset:
    source = _SOURCES["cifar10"]
    batches = folder / CIFAR_DIR
    missing = [batches / f for f in CIFAR_FILES if not (batches / f).is_file()]
    if missing:
        archive = folder / _CIFAR_ARCHIVE
        if not archive.is_file():
            if not download:
                raise _missing_error("cifar10", source, [(archive, _CIFAR_ARCHIVE)], "downloads are off",
                                     f"place {_CIFAR_ARCHIVE} at the path above, or its extracted files at:\n"
                                     + "".join(f"  {p}\n" for p in missing) + "or allow downloads")
            try:
                download_file(source.urls(_CIFAR_ARCHIVE), archive, source.md5[_CIFAR_ARCHIVE],
                              source.size[_CIFAR_ARCHIVE])
            except VitError as e:
                raise _missing_error("cifar10", source, [(archive, _CIFAR_ARCHIVE)], f"the download failed ({e})",
                                     f"place {_CIFAR_ARCHIVE} at the path above and run again (with --no-download "
                                     "to never touch the network)") from None
        elif md5_file(archive) != source.md5[_CIFAR_ARCHIVE]:
            # A hand-placed archive gets the same check as a downloaded one.
            raise VitError(f"{archive}: md5 is not {source.md5[_CIFAR_ARCHIVE]}; delete it to download it again")
        extract_tar(archive, folder, [f"{CIFAR_DIR}/{f}" for f in CIFAR_FILES], _CIFAR_MEMBER_MAX)
    train_x, train_y = _read_cifar_files([batches / f for f in _CIFAR_TRAIN])
    test_x, test_y = _read_cifar_files([batches / "test_batch.bin"])
    meta = batches / "batches.meta.txt"
    try:
        classes = [line.strip() for line in meta.read_text(errors="replace").splitlines() if line.strip()]
    except OSError as e:
        raise VitError(f"{meta}: cannot read ({e})") from e
    if len(classes) != 10:
        raise VitError(f"{meta}: expected 10 class names, one a line, found {len(classes)}")
    mean, std = _STATS["cifar10"]
    return InMemoryDataset(train_x, train_y, test_x, test_y, classes, mean, std)


def load_tensor_dataset(name: str, data_dir: str | Path, download: bool = True) -> InMemoryDataset:
    """Load MNIST, Fashion-MNIST or CIFAR-10 from `data_dir/<name>/` as uint8 (N, C, H, W) tensors.

    Files already present are validated by format and never fetched again. Missing files are
    downloaded (md5-checked) unless `download` is False, in which case the VitError lists the exact
    paths that are missing and the URLs to fetch them from.
    """
    if name not in IMAGE_SHAPES:
        raise VitError(f"unknown dataset {name!r}; expected one of {', '.join(IMAGE_SHAPES)}")
    folder = Path(data_dir) / name
    if name == "cifar10":
        return _load_cifar10(folder, download)
    return _load_idx_dataset(name, folder, download)


def select_classes(ds: InMemoryDataset, names: Sequence[str]) -> InMemoryDataset:
    """The samples of the classes `names` only, relabelled 0..len(names)-1 in that order (e.g. CIFAR-10's
    six animals to pre-train on, its four vehicles to fine-tune on)."""
    unknown = [n for n in names if n not in ds.classes]
    repeated = [n for n in dict.fromkeys(names) if names.count(n) > 1]
    if unknown or repeated or len(names) < 2:
        problem = (f"unknown {', '.join(map(repr, unknown))}" if unknown else
                   f"{', '.join(map(repr, repeated))} given more than once" if repeated else
                   "at least 2 different classes are needed")
        raise VitError(f"classes {', '.join(names)}: {problem}; the dataset has {', '.join(ds.classes)}")
    relabel = torch.full((len(ds.classes),), -1, dtype=torch.long)
    relabel[[ds.classes.index(n) for n in names]] = torch.arange(len(names))

    def keep(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new = relabel[y]
        return x[new >= 0], new[new >= 0]

    (train_x, train_y), (test_x, test_y) = keep(ds.train_x, ds.train_y), keep(ds.test_x, ds.test_y)
    return InMemoryDataset(train_x, train_y, test_x, test_y, list(names), ds.mean, ds.std)
