"""Image folders: classes, splits, decoding, and whether the decoded folder fits in memory.

A folder is root/<class>/<image> (a held-out fraction is split off, stratified and seeded) or
root/{train,val}/<class>/<image>. `folder_samples` lists a run's (path, label) pairs and classes;
`read_image` is the one image reader of the package (training, vit.predict, vit.visualize);
`ImageFolderDataset` decodes one item at a time with a transform (for DataLoader workers);
`decode_all` decodes a whole folder once into uint8 tensors.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from .augment import ResizeCenterCrop, mix_seed
from .errors import VitError
from .formats import FormatError, open_regular

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
# 100-megapixel JPEG ~50 MB), and Pillow's JPEG header parser walks junk in Python, a few MB a second: a
# large file starting with a JPEG marker would take minutes to refuse, every epoch.
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
    except FormatError as e:  # a fifo, a device, a folder
        raise VitError(str(e)) from None
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


def decode_all(samples: list[tuple[Path, int]], size: int, interpolation: int, workers: int
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


def folder_samples(root: str | Path, val_fraction: float, seed: int, verbose: bool = True
                   ) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]], list[str]]:
    """(train samples, val samples, class names) of the image folder a run trains on (`folder_splits`
    with the run's held-out fraction and seed), refusing a folder of fewer than 2 classes; with `verbose`,
    says on stderr what it found."""
    train_samples, val_samples, classes = folder_splits(root, val_fraction, seed)
    train_dir, val_dir = split_folders(root)
    if len(classes) < 2:
        raise VitError(f"{train_dir}: an image classifier needs at least 2 classes (sub-folders of images), "
                       f"found 1: {classes[0]}")
    if verbose:
        held_out = (f"validating on {val_dir} ({len(val_samples)} images)" if val_dir is not None else
                    f"validating on {len(val_samples)} of its images held out (--val-fraction {val_fraction:g})")
        print(f"{root}: {len(classes)} classes; training on {train_dir} ({len(train_samples)} images), {held_out}",
              file=sys.stderr)
    return train_samples, val_samples, classes
