"""Datasets and the loaders a run uses: MNIST / Fashion-MNIST / CIFAR-10 as uint8 tensors, image folders.

Small datasets are loaded whole as uint8 tensors (N, C, H, W) and batched by `TensorLoader`, which
gathers batches with one index op on tensors that already live on the training device (augmentation
is then done per batch, see vit/augment.py). Image folders are decoded lazily, one item at a time in
DataLoader workers, by `ImageFolderDataset`. `tensor_data` and `folder_data` (at the end) turn either
into a `Data`: the loaders plus the per-batch preparation that `vit.engine.fit` trains on.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from vit.augment import BATCH_PRESETS, ResizeCenterCrop, batch_augment, eval_transform, mixup_cutmix, normalize, train_transform
from vit.config import TrainConfig
from vit.download import download as download_file
from vit.download import extract_tar, md5_file
from vit.formats import VitError, open_regular, read_cifar_batch, read_idx
from vit.runtime import Runtime

# name -> (channels, image side) of the datasets held in memory as tensors
TENSOR_DATASETS = {"mnist": (1, 28), "fashion-mnist": (1, 28), "cifar10": (3, 32)}


def mix_seed(seed: int, epoch: int, stream: int | None = None) -> int:
    """The one seed-mixing rule: a 32-bit seed for (seed, epoch), or for one `stream` of that epoch
    (a process's rank, an image's index), distinct for every stream of one epoch.

    32 bits because torch's CPU generator ignores the higher bits of a seed. (seed, epoch) alone
    orders the data; a stream's seed spreads it by Knuth's multiplicative constant and adds the stream.
    """
    base = (seed * 1_000_003 + epoch) % (1 << 32)
    return base if stream is None else (base * 2_654_435_761 + stream) % (1 << 32)


@dataclass
class TensorDataset:
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
_CIFAR_DIR = "cifar-10-batches-bin"
_CIFAR_TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]
_CIFAR_FILES = [*_CIFAR_TRAIN, "test_batch.bin", "batches.meta.txt"]
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
    except VitError as e:
        raise VitError(f"{e} (delete the file to download it again)") from e
    if array.dtype != np.uint8 or array.ndim != ndim or (ndim == 3 and array.shape[1:] != (28, 28)):
        kind = "images (N, 28, 28)" if ndim == 3 else "labels (N,)"
        raise VitError(f"{path}: expected uint8 {kind}, got {array.dtype} {array.shape}")
    return array


def _load_idx_dataset(name: str, folder: Path, download: bool) -> TensorDataset:
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
    return TensorDataset(**tensors, classes=list(_IDX_CLASSES[name]), mean=mean, std=std)


def _read_cifar_files(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate CIFAR-10 binary batches into uint8 (N, 3, 32, 32) and int64 (N,) tensors."""
    parts = [read_cifar_batch(p) for p in paths]
    if len(parts) == 1:
        return torch.from_numpy(parts[0][0]), torch.from_numpy(parts[0][1])
    return (torch.from_numpy(np.concatenate([x for x, _ in parts])),
            torch.from_numpy(np.concatenate([y for _, y in parts])))


def _load_cifar10(folder: Path, download: bool) -> TensorDataset:
    source = _SOURCES["cifar10"]
    batches = folder / _CIFAR_DIR
    missing = [batches / f for f in _CIFAR_FILES if not (batches / f).is_file()]
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
        extract_tar(archive, folder, [f"{_CIFAR_DIR}/{f}" for f in _CIFAR_FILES], _CIFAR_MEMBER_MAX)
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
    return TensorDataset(train_x, train_y, test_x, test_y, classes, mean, std)


def load_tensor_dataset(name: str, data_dir: str | Path, download: bool = True) -> TensorDataset:
    """Load MNIST, Fashion-MNIST or CIFAR-10 from `data_dir/<name>/` as uint8 (N, C, H, W) tensors.

    Files already present are validated by format and never fetched again. Missing files are
    downloaded (md5-checked) unless `download` is False, in which case the VitError lists the exact
    paths that are missing and the URLs to fetch them from.
    """
    if name not in TENSOR_DATASETS:
        raise VitError(f"unknown dataset {name!r}; expected one of {', '.join(TENSOR_DATASETS)}")
    folder = Path(data_dir) / name
    if name == "cifar10":
        return _load_cifar10(folder, download)
    return _load_idx_dataset(name, folder, download)


def select_classes(ds: TensorDataset, names: Sequence[str]) -> TensorDataset:
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
    return TensorDataset(train_x, train_y, test_x, test_y, list(names), ds.mean, ds.std)


class TensorLoader:
    """Iterate (x, y) batches of in-memory tensors with one gather per batch, no per-sample Python.

    The order is a pure function of (seed, epoch): the permutation is drawn on the CPU (so it is the
    same whatever the data's device) and moved to the data's device. With world_size > 1, rank r
    takes the disjoint shard perm[r::world_size]; the shards cover every sample exactly once (no
    padding duplicates). With drop_last every rank yields the same number of full batches,
    (N // world_size) // batch_size, so DDP ranks stay in step; without it a rank may have one batch
    more than another.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool,
                 drop_last: bool, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation for `epoch` (call before iterating, as with DistributedSampler)."""
        self.epoch = epoch

    def _shard_size(self) -> int:
        n = len(self.x)
        if self.drop_last:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        size = self._shard_size()
        return size // self.batch_size if self.drop_last else -(-size // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x)
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        order = order[self.rank::self.world_size][:self._shard_size()].to(self.x.device)
        for i in range(len(self)):
            index = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.x[index], self.y[index.to(self.y.device)]


# ---------------------------------------------------------------------------------------------
# Image folders

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def find_classes(root: str | Path) -> list[str]:
    """Class names = the non-hidden sub-folders of `root`, sorted lexicographically (by code point).

    Lexicographic, not natural, order: it is what torchvision's ImageFolder and timm use, so class
    index i here is class index i for a model trained or evaluated with those tools ("10" sorts
    before "2", as there).
    """
    root = Path(root)
    if not root.is_dir():
        raise VitError(f"{root}: not a folder; expected root/<class>/<images>")
    try:
        with os.scandir(root) as entries:
            classes = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    except OSError as e:
        raise _scan_error(e) from None
    if not classes:
        raise VitError(f"{root}: no class folders; expected root/<class>/<images>")
    return classes


def _scan_error(e: OSError) -> VitError:
    """An unreadable folder or a looping link met while listing a folder, as a VitError naming it."""
    return VitError(f"{e.filename}: cannot read ({e.strerror}); fix its permissions, or remove it if it is a "
                    "broken or looping link")


def _image_files(folder: Path) -> list[Path]:
    """Image files under `folder` at any depth, sorted; hidden entries, non-images and special files skipped.

    Symlinked folders are not followed (no loops, nothing outside the tree); only regular files
    (or links to them) count, so a fifo named x.jpg cannot hang a worker. An unreadable folder or
    a link named like an image that cannot be followed (a loop) is a VitError naming it.
    """
    found, stack = [], [folder]
    try:
        while stack:
            with os.scandir(stack.pop()) as entries:
                for e in entries:
                    if e.name.startswith("."):
                        continue
                    if e.is_dir(follow_symlinks=False):
                        stack.append(Path(e.path))
                    elif e.name.lower().endswith(IMG_EXTENSIONS) and e.is_file():
                        found.append(Path(e.path))
    except OSError as e:
        raise _scan_error(e) from None
    return sorted(found)


def _class_files(root: Path, name: str) -> list[Path]:
    """The sorted image files of class folder root/name; an empty class is a VitError."""
    files = _image_files(root / name)
    if not files:
        raise VitError(f"{root / name}: class folder has no images ({' '.join(IMG_EXTENSIONS)})")
    return files


def _scan(root: Path, classes: list[str], labels: dict[str, int]) -> list[tuple[Path, int]]:
    """(path, label) for every image of each class in `classes`."""
    return [(path, labels[name]) for name in classes for path in _class_files(root, name)]


def _stratified_split(per_class: list[list[Path]], val_fraction: float, seed: int
                      ) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Seeded split of each class: round(k * val_fraction) images to val, at least 1 when k >= 2."""
    train, val = [], []
    g = torch.Generator().manual_seed(seed)
    for label, files in enumerate(per_class):
        k = len(files)
        n_val = round(k * val_fraction)
        if val_fraction > 0 and k >= 2:
            n_val = min(max(n_val, 1), k - 1)  # every class in both splits
        elif k < 2:
            n_val = 0
        picked = set(torch.randperm(k, generator=g)[:n_val].tolist())
        val += [(f, label) for i, f in enumerate(files) if i in picked]
        train += [(f, label) for i, f in enumerate(files) if i not in picked]
    return train, val


def split_folders(root: str | Path) -> tuple[Path, Path | None]:
    """(the folder whose class sub-folders are trained on, the validation folder or None to split it).

    root/train with root/val (else root/test) beside it: those two; root/train alone: it is split;
    otherwise root itself is the class folder and is split."""
    root = Path(root)
    train_dir = root / "train"
    val_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if train_dir.is_dir():
        return train_dir, val_dir
    return root, None


def folder_splits(root: str | Path, val_fraction: float = 0.1, seed: int = 0
                  ) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]], list[str]]:
    """Train samples, val samples and class names of an image folder.

    If root/train exists, its classes define the labels and root/val (else root/test) is the
    validation set (a val class missing from train is a VitError); with neither, root/train is split
    as below. Otherwise root/<class>/... is split per class with a seeded stratified split:
    round(k * val_fraction) images of a class with k images go to val, at least one when k >= 2.
    """
    if not 0 <= val_fraction < 1:
        raise VitError(f"val_fraction must be in [0, 1), got {val_fraction}")
    train_dir, val_dir = split_folders(root)
    classes = find_classes(train_dir)
    if val_dir is not None:
        labels = {c: i for i, c in enumerate(classes)}
        val_classes = find_classes(val_dir)
        unknown = [c for c in val_classes if c not in labels]
        if unknown:
            raise VitError(f"{val_dir}: classes {unknown} are not in {train_dir}")
        return _scan(train_dir, classes, labels), _scan(val_dir, val_classes, labels), classes
    train, val = _stratified_split([_class_files(train_dir, c) for c in classes], val_fraction, seed)
    return train, val, classes


# A larger file named like an image is junk or hostile, not a photo (ImageNet's largest is ~15 MB, a
# 100-megapixel JPEG ~50 MB): Pillow's JPEG header parser walks junk in Python at ~8 MB/s, so a 1 GiB
# file starting with a JPEG marker took minutes to refuse, every epoch.
MAX_IMAGE_BYTES = 64 << 20


def open_image(path: str | Path, draft_size: int = 0) -> Image.Image:
    """Decode the image file at `path` in full, so a bad file fails here with its name (`read_image`
    converts it to the mode a model takes).

    Before decoding: a regular file (a fifo would block the reader), at most MAX_IMAGE_BYTES, and
    Pillow's header parse, which refuses a decompression bomb (more than twice its pixel limit) from
    the declared size alone. With `draft_size`, a JPEG at least twice that on its shorter side is
    decoded in Pillow's draft mode (DCT scaling by 1/2, 1/4 or 1/8), keeping the shorter side >= it.
    Any problem is a VitError naming the file.
    """
    try:
        f = open_regular(path)
    except OSError as e:  # missing, unreadable
        raise VitError(f"{path}: cannot read the image ({e.strerror or e})") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_IMAGE_BYTES:
            raise VitError(f"{path}: cannot read the image: {size} bytes, more than the {MAX_IMAGE_BYTES} "
                           "an image file may have; remove or replace the file")
        try:
            with Image.open(f) as img:
                if draft_size and img.format == "JPEG" and min(img.size) >= 2 * draft_size:
                    img.draft("RGB", (draft_size, draft_size))
                img.load()  # decode now, while the file is open
                return img
        except Exception as e:
            # Pillow raises many types on bad input (OSError, SyntaxError, struct.error, ValueError,
            # DecompressionBombError...); for the user they all mean "this file is not a usable image".
            raise VitError(f"{path}: cannot read the image ({type(e).__name__}: {e}); "
                           "remove or replace the file") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded image of any mode to 8-bit RGB."""
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")  # palette transparency is only applied correctly through RGBA
    elif img.mode.startswith("I"):
        # Integer grayscale (16-bit PNG/TIFF decode to I;16 or I): Pillow's convert clips at 255,
        # so scale the 16-bit range 0..65535 to 0..255 instead.
        pixels = np.asarray(img).astype(np.float32) / 257.0
        img = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "L")
    return img if img.mode == "RGB" else img.convert("RGB")


def read_image(path: str | Path, mode: str = "RGB", draft_size: int = 0) -> Image.Image:
    """The image file at `path` as 8-bit `mode` ("RGB", or "L" for a grey model): the one reader of
    training (image folders) and inference (vit.predict, vit.visualize), so a 16-bit or palette image
    reaches a model the same way in both. Decoded by `open_image` (`draft_size`: see there), then
    converted by `_to_rgb`; any problem is a VitError naming the file."""
    img = open_image(path, draft_size)
    try:
        rgb = _to_rgb(img)
    except (ValueError, OSError) as e:  # a decoded mode Pillow cannot convert to RGB
        raise VitError(f"{path}: cannot read the image (mode {img.mode}: {e}); remove or replace the file") from None
    # "L" from grey RGB is exact (its weights sum to 1), so a grey image keeps its values
    return rgb if mode == "RGB" else rgb.convert(mode)


class ImageFolderDataset(torch.utils.data.Dataset):
    """Decode (path, label) samples lazily with `read_image`: PIL RGB -> transform(img, generator).

    The transform's generator is seeded from (seed, epoch, index) alone, so an item's augmentation
    does not depend on worker count or order. JPEGs at least twice the transform's `size` on their
    shorter side are decoded with Pillow's draft mode (DCT scaling by 1/2, 1/4 or 1/8), keeping the
    shorter side >= size: much faster for large photos, at the cost of detail in small random crops.
    """

    def __init__(self, samples: list[tuple[Path, int]],
                 transform: Callable[[Image.Image, torch.Generator], torch.Tensor], seed: int = 0) -> None:
        self.samples, self.transform, self.seed = samples, transform, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draws for the next pass (workers see it when they are re-created)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        size = getattr(self.transform, "size", None)  # only a plain int size enables draft decoding
        img = read_image(path, draft_size=size if isinstance(size, int) else 0)
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, i))
        return self.transform(img, g), label


class _IndexBatches:
    """A DataLoader batch_sampler view of a TensorLoader over sample indices."""

    def __init__(self, indices: TensorLoader) -> None:
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[list[int]]:
        return (batch.tolist() for batch, _ in self.indices)


_WORKER_ERROR_MARK = f"\n{VitError.__module__}.{VitError.__qualname__}: "  # how a worker's traceback names VitError


class FolderLoader:
    """Batches (x, y) of an ImageFolderDataset, decoded in DataLoader workers.

    The order (and each rank's shard) is TensorLoader's, drawn over the sample indices, so it is a
    pure function of (seed, epoch) like the in-memory datasets; the augmentation is seeded per item
    by the dataset. Workers are re-created every epoch, so they see set_epoch.
    """

    def __init__(self, dataset: ImageFolderDataset, batch_size: int, *, shuffle: bool, drop_last: bool,
                 seed: int = 0, rank: int = 0, world_size: int = 1, workers: int = 0,
                 pin_memory: bool = False) -> None:
        index = torch.arange(len(dataset))
        self.dataset = dataset
        self.indices = TensorLoader(index, index, batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed,
                                    rank=rank, world_size=world_size)
        self.loader = torch.utils.data.DataLoader(dataset, batch_sampler=_IndexBatches(self.indices),
                                                  num_workers=workers, pin_memory=pin_memory)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)
        self.indices.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            yield from self.loader
        except VitError as e:
            # A worker's error comes back as "Caught VitError in DataLoader worker N. Original Traceback
            # ...<the traceback>... vit.formats.VitError: <message>"; the user gets the message alone.
            _, mark, message = str(e).rpartition(_WORKER_ERROR_MARK)
            if not mark:  # raised in this process (workers=0): already just the message
                raise
            raise VitError(message.rstrip("\n")) from None


# ---------------------------------------------------------------------------------------------
# The loaders of a run

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INTERPOLATIONS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


@dataclass
class Data:
    """What `vit.engine.fit` trains on. Loaders yield (x, y) and have set_epoch(epoch) and len().

    prepare_train(x, y, generator) -> (inputs, targets) turns a raw batch into model inputs and
    class indices (B,) or soft targets (B, K): uint8 -> float, augmentation, normalisation, mixup.
    prepare_eval(x) -> inputs does the same without randomness. With `features`, the loaders yield
    a frozen backbone's pooled features (B, D) instead of images (vit.probe), and fit trains and
    scores the model's head alone.
    """
    train: Iterable
    val: Iterable
    prepare_train: Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
    prepare_eval: Callable[[torch.Tensor], torch.Tensor]
    classes: list[str]
    mean: list[float]  # normalisation of the inputs, saved in checkpoints for vit.predict
    std: list[float]
    split: str = "val"  # what `val` is: "test" (a dataset's official test set) or "val" (a held-out split)
    features: bool = False  # the loaders yield cached features (B, D), not images (see vit.probe)


def _mixer(cfg: TrainConfig, num_classes: int) -> Callable:
    """(x, y, generator) -> (x, targets): mixup/cutmix soft targets when enabled, else labels as they are."""
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return lambda x, y, g: (x, y)
    return lambda x, y, g: mixup_cutmix(x, y, num_classes, g, mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix,
                                        smoothing=cfg.smoothing)


def tensor_data(name: str, data_dir: str | Path, cfg: TrainConfig, rt: Runtime | None = None,
                download: bool = True, classes: Sequence[str] | None = None) -> Data:
    """MNIST / Fashion-MNIST / CIFAR-10 as uint8 tensors on the training device, augmented per batch
    (the airbench way: cfg.aug, cfg.crop_padding, mixup/cutmix), optionally only some `classes`.
    Evaluates on the official test set."""
    if cfg.aug not in BATCH_PRESETS:
        raise VitError(f"aug {cfg.aug!r} is not a batch augmentation for {name}; choose from {', '.join(BATCH_PRESETS)}")
    ds = load_tensor_dataset(name, data_dir, download=download)
    if classes:
        ds = select_classes(ds, classes)
    return in_memory_data(ds, cfg, rt or Runtime(torch.device("cpu")), "test")


def in_memory_data(ds: TensorDataset, cfg: TrainConfig, rt: Runtime, split: str) -> Data:
    """The loaders of a dataset held as uint8 tensors, moved to the training device: batches gathered
    by TensorLoader, augmented per batch (cfg.aug, cfg.crop_padding), normalised, mixed."""
    dev = rt.device
    per_process = cfg.batch_size // rt.world_size
    # full batches only, so DDP ranks stay in step; a set smaller than one batch trains on it whole
    train = TensorLoader(ds.train_x.to(dev), ds.train_y.to(dev), per_process, shuffle=True,
                         drop_last=len(ds.train_x) >= per_process * rt.world_size, seed=cfg.seed, rank=rt.rank,
                         world_size=rt.world_size)
    # evaluation in training-size batches: on the CPU batches of 512 ran 1.3x (MNIST) to 1.6x (CIFAR-10)
    # slower than 128, the attention maps no longer fitting in cache
    test = TensorLoader(ds.test_x.to(dev), ds.test_y.to(dev), per_process, shuffle=False, drop_last=False,
                        rank=rt.rank, world_size=rt.world_size)
    augment, mix = batch_augment(cfg.aug, cfg.crop_padding), _mixer(cfg, len(ds.classes))

    def prepare_train(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = augment(x.float() / 255, g)  # on [0, 1], so padding and fill are black
        return mix(normalize(x, ds.mean, ds.std), y, g)

    return Data(train, test, prepare_train, lambda x: normalize(x, ds.mean, ds.std), ds.classes, list(ds.mean),
                list(ds.std), split)


class _Pixels:
    """An image as uint8 pixels (3, size, size): shorter side resized to `size`, centre crop (no margin)."""

    def __init__(self, size: int, interpolation: int) -> None:
        self.size, self.resize = size, ResizeCenterCrop(size, crop_pct=1.0, interpolation=interpolation)

    def __call__(self, img: Image.Image, generator: torch.Generator) -> torch.Tensor:
        pixels = np.array(self.resize(img.convert("RGB")), dtype=np.uint8)  # (H, W, 3)
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)


class _Decoded(torch.utils.data.Dataset):
    """An ImageFolderDataset whose items never raise: (pixels, label, '') or (zeros, label, the error)."""

    def __init__(self, dataset: ImageFolderDataset, size: int) -> None:
        self.dataset, self.size = dataset, size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        try:
            x, label = self.dataset[i]
            return x, label, ""
        except VitError as e:
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), self.dataset.samples[i][1], str(e)


def _decode_all(samples: list[tuple[Path, int]], size: int, interpolation: int, workers: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of `samples` decoded once, in `workers` processes: uint8 (N, 3, size, size), labels (N,).
    Every unreadable image is found in this one pass: a VitError names the first few and counts them."""
    images = _Decoded(ImageFolderDataset(samples, _Pixels(size, interpolation)), size)
    # filled in place, batch by batch: concatenating the batches would hold the set twice
    xs, ys, errors, done = torch.empty(len(samples), 3, size, size, dtype=torch.uint8), [], [], 0
    for x, y, problems in torch.utils.data.DataLoader(images, batch_size=256, num_workers=workers):
        xs[done:done + len(x)] = x
        done += len(x)
        ys.append(y)
        errors += [p for p in problems if p]
    if errors:
        shown = "\n  ".join(errors[:5])
        more = f"\n  ... and {len(errors) - 5} more" if len(errors) > 5 else ""
        raise VitError(f"{len(errors)} of {len(samples)} images cannot be read; remove or replace them:\n  {shown}{more}")
    return xs, torch.cat([torch.zeros(0, dtype=torch.long), *ys]).long()


def pixel_stats(x: torch.Tensor, chunk: int = 64) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and sample std (n - 1) of uint8 images (N, C, H, W) on the [0, 1] scale, from a
    histogram of each channel's 256 values summed over chunks of `chunk` images: exact integer sums, and
    no float copy of the set (four bytes a pixel, which a folder held in memory may not have to spare)."""
    counts = torch.zeros(x.shape[1], 256, dtype=torch.long)
    for part in x.split(chunk):
        for c in range(x.shape[1]):
            counts[c] += torch.bincount(part[:, c].reshape(-1), minlength=256)  # (n, H, W) -> (n H W,)
    means, stds = [], []
    for row in counts.tolist():  # Python integers: the sums of squares overflow nothing
        n = sum(row)
        total = sum(v * k for v, k in enumerate(row))
        squares = sum(v * v * k for v, k in enumerate(row))
        variance = (n * squares - total * total) / (n * (n - 1)) if n > 1 else 0.0  # of the 0..255 values
        means.append(total / n / 255)
        stds.append(max(variance ** 0.5 / 255, 1e-3))  # a flat channel: 1e-3, not a division by 0
    return tuple(means), tuple(stds)


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


def _check_fits_in_memory(root: str | Path, images: int, size: int, batch: int) -> None:
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


def folder_samples(root: str | Path, cfg: TrainConfig, verbose: bool = True
                   ) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]], list[str]]:
    """(train samples, val samples, class names) of the image folder a run trains on (`folder_splits`
    with cfg's held-out fraction and seed), refusing a folder of fewer than 2 classes; with `verbose`,
    says on stderr what it found."""
    train_samples, val_samples, classes = folder_splits(root, cfg.val_fraction, cfg.seed)
    train_dir, val_dir = split_folders(root)
    if len(classes) < 2:
        raise VitError(f"{train_dir}: an image classifier needs at least 2 classes (sub-folders of images), "
                       f"found 1: {classes[0]}")
    if verbose:
        held_out = (f"validating on {val_dir} ({len(val_samples)} images)" if val_dir is not None else
                    f"validating on {len(val_samples)} of its images held out (--val-fraction {cfg.val_fraction:g})")
        print(f"{root}: {len(classes)} classes; training on {train_dir} ({len(train_samples)} images), {held_out}",
              file=sys.stderr)
    return train_samples, val_samples, classes


def folder_data(root: str | Path, cfg: TrainConfig, img_size: int, rt: Runtime | None = None, *,
                interpolation: str = "bicubic", mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None) -> Data:
    """An image folder (see `folder_splits`) in one of two ways, by cfg.aug:

    - a batch preset ('cifar', 'crop', 'flip', 'mnist', as for the tensor datasets): every image is
      decoded once, resized (shorter side to img_size) and centre-cropped, and kept as uint8 tensors
      on the device, augmented per batch. Fast, for folders that fit in memory (N x 3 x S x S bytes);
      normalised with the training images' own mean/std unless `mean`/`std` are given;
    - 'rrc' or 'none': decoded per item in every epoch, in rt.workers DataLoader workers, with
      random-resized-crop + flip (+ cfg.jitter), or eval-style resizing; ImageNet's mean/std by default.
    Validation: resize + centre crop (the first: no margin; the second: timm's crop_pct 0.9)."""
    rt = rt or Runtime(torch.device("cpu"))
    if cfg.aug not in (*BATCH_PRESETS, "rrc"):
        raise VitError(f"aug {cfg.aug!r} is not available for image folders; choose from rrc, "
                       f"{', '.join(BATCH_PRESETS)}")
    train_samples, val_samples, classes = folder_samples(root, cfg, rt.main)
    interp = INTERPOLATIONS[interpolation]
    if cfg.aug in BATCH_PRESETS and cfg.aug != "none":
        _check_fits_in_memory(root, len(train_samples) + len(val_samples), img_size, cfg.batch_size // rt.world_size)
        x, y = _decode_all(train_samples + val_samples, img_size, interp, rt.workers)  # one pass names every bad file
        (train_x, val_x), (train_y, val_y) = x.split([len(train_samples), len(val_samples)]), \
            y.split([len(train_samples), len(val_samples)])
        own_mean, own_std = pixel_stats(train_x)
        mean = tuple(mean) if mean is not None else own_mean
        std = tuple(std) if std is not None else own_std
        return in_memory_data(TensorDataset(train_x, train_y, val_x, val_y, classes, mean, std), cfg, rt, "val")
    mean, std = mean or IMAGENET_MEAN, std or IMAGENET_STD
    eval_tf = eval_transform(img_size, mean, std, interpolation=interp)
    train_tf = eval_tf if cfg.aug == "none" else train_transform(img_size, mean, std, cfg.jitter, interpolation=interp)
    per_process = cfg.batch_size // rt.world_size
    common = dict(workers=rt.workers, rank=rt.rank, world_size=rt.world_size, pin_memory=rt.device.type == "cuda")
    train = FolderLoader(ImageFolderDataset(train_samples, train_tf, seed=cfg.seed), per_process, shuffle=True,
                         drop_last=len(train_samples) >= per_process * rt.world_size, seed=cfg.seed, **common)
    val = FolderLoader(ImageFolderDataset(val_samples, eval_tf), per_process, shuffle=False, drop_last=False, **common)
    return Data(train, val, _mixer(cfg, len(classes)), lambda x: x, classes, list(mean), list(std), "val")
