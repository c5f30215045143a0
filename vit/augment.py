"""Data augmentation, written by hand: per-batch tensor ops and per-image PIL ops.

Per-batch ops are for small datasets held as tensors on the training device (MNIST, CIFAR-10; the
airbench way): one call augments a whole (B, C, H, W) float batch with no Python loop over images.
They expect floats in [0, 1], i.e. they run *before* `normalize`, so the zero fill of crops,
translations and rotations is black, as torchvision's `pad(fill=0)` gives. The intended order:
`x = x_uint8.float() / 255; x = aug(x, generator); x = normalize(x, mean, std)`.

Per-image ops are for image folders decoded in DataLoader workers: each takes `(img, generator)`
with a PIL image and returns a PIL image; `train_transform` / `eval_transform` chain them and end
with to-tensor + normalise, giving a float32 (3, size, size) tensor.

Randomness: every random op draws from the explicit CPU `torch.Generator` it is given (never from
the global RNG) and only then moves its few parameters to the batch's device, so the same seed gives
the same output, and the same random draws on CPU and GPU.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance

# The augmentations a run can name (TrainConfig.aug), in one place. Per batch (`batch_augment`), on
# images held as uint8 tensors: the built-in datasets, and an image folder decoded once. Per image
# (`train_transform` / `eval_transform`), decoded in every epoch: image folders only.
BATCH_PRESETS = ("none", "mnist", "cifar", "flip", "crop")
IMAGE_TRANSFORMS = ("rrc", "resize")  # random-resized-crop + flip (+ jitter); resize + centre crop (the eval view)


def augmentations(folder: bool) -> tuple[str, ...]:
    """The augmentation names a run on this data can use: the batch presets; an image folder also the
    per-image transforms."""
    return (*IMAGE_TRANSFORMS, *BATCH_PRESETS) if folder else BATCH_PRESETS


def aug_problem(name: str, folder: bool) -> str:
    """Why `name` is no augmentation for this kind of data ('' if it is one), naming the choices."""
    if name in augmentations(folder):
        return ""
    data = "an image folder" if folder else "MNIST, Fashion-MNIST and CIFAR-10"
    return f"aug {name!r} is not available for {data}; choose from {', '.join(augmentations(folder))}"
ImageOp = Callable[[Image.Image, torch.Generator], Image.Image]  # a per-image op: (img, generator) -> img


def mix_seed(seed: int, epoch: int, stream: int | None = None) -> int:
    """The one seed-mixing rule: a 32-bit seed for (seed, epoch), or for one `stream` of that epoch
    (a process's rank, an image's index), distinct for every stream of one epoch.

    32 bits because torch's CPU generator ignores the higher bits of a seed. (seed, epoch) alone
    orders the data; a stream's seed spreads it by Knuth's multiplicative constant and adds the stream.
    """
    base = (seed * 1_000_003 + epoch) % (1 << 32)
    return base if stream is None else (base * 2_654_435_761 + stream) % (1 << 32)


# --------------------------------------------------------------------------------------------------
# per-batch tensor ops


def _shift(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int) -> torch.Tensor:
    """out[b, :, i, j] = xpad[b, :, i + dy[b], j + dx[b]] where xpad is x zero-padded by `pad`.

    One gather over the flattened padded images: index (row * Wp + col) per output pixel, shared by
    all channels. dy, dx are int64 (B,) offsets in [0, 2 * pad] on x's device.
    """
    B, C, H, W = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))  # (B, C, H + 2p, W + 2p)
    Wp = W + 2 * pad
    rows = dy[:, None] + torch.arange(H, device=x.device)  # (B, H)
    cols = dx[:, None] + torch.arange(W, device=x.device)  # (B, W)
    idx = rows[:, :, None] * Wp + cols[:, None, :]  # (B, H, W) flat index into a padded image
    idx = idx.view(B, 1, H * W).expand(B, C, H * W)  # (B, H, W) -> (B, C, H*W)
    out = torch.gather(xp.flatten(2), 2, idx)  # (B, C, Hp*Wp) -> (B, C, H*W)
    return out.view(B, C, H, W)  # (B, C, H*W) -> (B, C, H, W)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad each image by `padding` on every side, then take a random H x W window per image.

    Same as torchvision's RandomCrop(size=(H, W), padding=padding) applied to every image, with the
    window offset (dy, dx) drawn uniformly from {0..2p} x {0..2p} per image. padding=0 returns x.
    """
    if padding < 0:
        raise ValueError(f"random_crop: padding must be >= 0, got {padding}")
    if padding == 0:
        return x
    B = x.shape[0]
    offsets = torch.randint(0, 2 * padding + 1, (2, B), generator=generator).to(x.device)
    return _shift(x, offsets[0], offsets[1], padding)


def random_flip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability p (one coin per image)."""
    B = x.shape[0]
    flip = (torch.rand(B, generator=generator) < p).to(x.device)
    return torch.where(flip.view(B, 1, 1, 1), x.flip(3), x)  # (B,) -> (B, 1, 1, 1)


def random_affine(
    x: torch.Tensor,
    generator: torch.Generator,
    degrees: float = 10.0,
    translate: float = 0.1,
    scale: tuple[float, float] = (0.9, 1.1),
) -> torch.Tensor:
    """Rotate, scale and translate each image by its own random amounts (bilinear, zero fill).

    Per image: angle ~ U(-degrees, degrees), zoom ~ U(scale), shift ~ U(-translate, translate) as a
    fraction of the width / height (torchvision's RandomAffine ranges, without rounding the shift
    to whole pixels), all about the image centre.
    """
    B = x.shape[0]
    u = torch.rand(4, B, generator=generator, dtype=torch.float64) * 2 - 1  # 4 draws per image in [-1, 1)
    zoom = scale[0] + (u[1] + 1) / 2 * (scale[1] - scale[0])
    return _affine(x, u[0] * math.radians(degrees), zoom, u[2] * translate, u[3] * translate)


def _affine(
    x: torch.Tensor, angle: torch.Tensor, zoom: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor
) -> torch.Tensor:
    """Warp each image: rotate by angle (radians), zoom, then shift by (tx * W, ty * H) pixels.

    angle, zoom, tx, ty are float64 (B,) CPU tensors. The map is built in pixel units so rotations
    stay rigid on non-square images, then expressed in affine_grid's [-1, 1] coordinates.
    """
    _, _, H, W = x.shape
    # affine_grid wants the inverse map (output -> input): p_in = R(-angle) / zoom @ (p_out - t).
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    a = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)  # (B, 2, 2) in pixels
    # pixel = D @ normalised with D = diag(W/2, H/2), so in normalised units A_n = D^-1 A D.
    a[:, 0, 1] *= H / W
    a[:, 1, 0] *= W / H
    t = torch.stack([2 * tx, 2 * ty], -1)  # (B, 2): the shift in normalised units
    theta = torch.cat([a, -(a @ t[:, :, None])], dim=2)  # (B, 2, 2) + (B, 2, 1) -> (B, 2, 3)
    # sample in at least float32: a bf16 grid would put the sample points up to ~0.1 px off
    work = torch.promote_types(x.dtype, torch.float32)
    theta = theta.to(device=x.device, dtype=work)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
    out = F.grid_sample(x.to(work), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.to(x.dtype)


def _one_hot_smooth(y: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Label-smoothed one-hot rows: off = smoothing / K everywhere, on = 1 - smoothing + off."""
    off = smoothing / num_classes
    out = torch.full((y.shape[0], num_classes), off, dtype=torch.float32, device=y.device)
    return out.scatter_(1, y.long().view(-1, 1), 1.0 - smoothing + off)  # (B,) -> (B, 1)


def mixup_cutmix(x: torch.Tensor, y: torch.Tensor, num_classes: int, generator: torch.Generator,
                 mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0, switch_prob: float = 0.5,
                 smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix with one lambda per batch (timm's `Mixup`, mode='batch'); returns (x, targets).

    With probability `prob` the batch is mixed with itself reversed (x.flip(0)): CutMix (chosen with
    `switch_prob` when both alphas are > 0) pastes one box from the reversed batch, mixup blends
    lam * x + (1 - lam) * x_rev; lam ~ Beta(alpha, alpha), and for CutMix lam is corrected to the
    area the clipped box leaves. Targets are float32 (B, num_classes): lam * y + (1 - lam) * y_rev
    of label-smoothed one-hots, so every row sums to 1. The input x is never modified.
    """
    if mixup_alpha < 0 or cutmix_alpha < 0 or (mixup_alpha == 0 and cutmix_alpha == 0):
        raise ValueError(f"mixup_cutmix: need alphas >= 0 and at least one > 0, got mixup_alpha={mixup_alpha}, "
                         f"cutmix_alpha={cutmix_alpha}")
    # numpy has Beta sampling; seed it from the torch generator so the result is still a pure
    # function of the generator's state.
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
    lam, use_cutmix = 1.0, False
    if rng.random() < prob:
        if mixup_alpha > 0 and cutmix_alpha > 0:
            use_cutmix = bool(rng.random() < switch_prob)
        else:
            use_cutmix = cutmix_alpha > 0
        alpha = cutmix_alpha if use_cutmix else mixup_alpha
        lam = float(rng.beta(alpha, alpha))
    out = x
    if lam < 1.0 and use_cutmix:
        H, W = x.shape[-2:]
        # timm's rand_bbox: a box of side sqrt(1 - lam) times the image, centred anywhere, clipped
        cut_h, cut_w = int(H * math.sqrt(1 - lam)), int(W * math.sqrt(1 - lam))
        cy, cx = int(rng.integers(0, H)), int(rng.integers(0, W))
        y0, y1 = min(max(cy - cut_h // 2, 0), H), min(max(cy + cut_h // 2, 0), H)
        x0, x1 = min(max(cx - cut_w // 2, 0), W), min(max(cx + cut_w // 2, 0), W)
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(H * W)
        out = x.clone()
        out[:, :, y0:y1, x0:x1] = x.flip(0)[:, :, y0:y1, x0:x1]
    elif lam < 1.0:
        out = x * lam + x.flip(0) * (1.0 - lam)
    y1h = _one_hot_smooth(y.to(x.device), num_classes, smoothing)
    targets = y1h * lam + y1h.flip(0) * (1.0 - lam)
    return out, targets


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel as a new float32 tensor; x is (B, C, H, W) or (C, H, W).

    uint8 input is pixels (divided by 255 first); floating input is taken as already on the [0, 1]
    scale (an augmented batch). mean and std are per channel on the [0, 1] scale (one value each
    for MNIST, three for RGB).
    """
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)  # (C,) -> (C, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(-1, 1, 1)  # (C,) -> (C, 1, 1)
    out = x.to(torch.float32, copy=True)  # a copy, so the in-place ops below never touch x
    if x.dtype == torch.uint8:
        out.div_(255.0)
    return out.sub_(m).div_(s)


def batch_augment(name: str, crop_padding: int = 4) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """A named per-batch preset `aug(x, generator)`, for float batches in [0, 1] before normalising.

    "none": identity; "mnist": random_affine(10 degrees, 10% shift, zoom 0.9-1.1); "cifar":
    random_crop(crop_padding) then random_flip; "flip": random_flip; "crop": random_crop(crop_padding).
    crop_padding 4 is torchvision's CIFAR-10 recipe; airbench's short runs shift by at most 2 pixels.
    """
    if crop_padding < 0:
        raise ValueError(f"crop padding must be >= 0, got {crop_padding}")
    presets = {
        "none": lambda x, g: x,
        "mnist": lambda x, g: random_affine(x, g, degrees=10.0, translate=0.1, scale=(0.9, 1.1)),
        "cifar": lambda x, g: random_flip(random_crop(x, crop_padding, g), g),
        "flip": random_flip,
        "crop": lambda x, g: random_crop(x, crop_padding, g),
    }
    if name not in presets:
        raise ValueError(f"unknown batch augmentation {name!r}; choose one of: {', '.join(BATCH_PRESETS)}")
    return presets[name]


# --------------------------------------------------------------------------------------------------
# test-time augmentation

TTA_VIEWS = ("none", "flip", "shift", "flip-shift")  # names accepted by tta_views


def num_tta_views(kind: str) -> int:
    """How many views `tta_views` yields for `kind`: 1, 2 (flip), 9 (shift) or 18 (flip-shift)."""
    return (2 if "flip" in kind else 1) * (9 if "shift" in kind else 1)


def tta_views(x: torch.Tensor, kind: str) -> Iterator[torch.Tensor]:
    """The views of a (B, C, H, W) batch that test-time augmentation averages over, the batch itself first.

    "none": x only; "flip": x and its left-right mirror; "shift": x and its 8 shifts by one pixel
    (every (dy, dx) in {-1, 0, 1}^2 but (0, 0)), zero fill; "flip-shift": those 9 of x and of its
    mirror (18). A patch-4 ViT sees a one-pixel shift as new patch contents, so these views differ
    far more to it than to a CNN, which is why averaging them pays. Works on any dtype: uint8 pixels
    get black borders, normalised inputs get the mean colour.
    """
    if kind not in TTA_VIEWS:
        raise ValueError(f"unknown test-time augmentation {kind!r}; choose one of: {', '.join(TTA_VIEWS)}")
    bases = (x, x.flip(3)) if "flip" in kind else (x,)
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)] if "shift" in kind else []

    def offset(shift: int) -> torch.Tensor:  # _shift takes window offsets into the 1-pixel padded image
        return torch.full((x.shape[0],), 1 + shift, device=x.device)

    for base in bases:
        yield base
        for dy, dx in shifts:
            yield _shift(base, offset(dy), offset(dx), 1)


# --------------------------------------------------------------------------------------------------
# per-image PIL ops: each is a picklable object called as op(img, generator) -> img


def _uniform(lo: float, hi: float, generator: torch.Generator) -> float:
    return float(torch.empty(1).uniform_(lo, hi, generator=generator))


class RandomResizedCrop:
    """Crop a random area / aspect-ratio window and resize it to size x size (torchvision semantics).

    Up to 10 tries: area fraction ~ U(scale), log(aspect) ~ U(log ratio), w = round(sqrt(A * r)),
    h = round(sqrt(A / r)); the first window that fits is placed uniformly. If none fits, the centre
    crop of the whole image with its aspect clamped into `ratio` is used.
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        interpolation: int = Image.BICUBIC,
    ) -> None:
        self.size, self.scale, self.ratio, self.interpolation = size, scale, ratio, interpolation

    def get_params(self, width: int, height: int, generator: torch.Generator) -> tuple[int, int, int, int]:
        """The window (top, left, h, w) for an image of width x height."""
        area = height * width
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target_area = area * _uniform(self.scale[0], self.scale[1], generator)
            aspect = math.exp(_uniform(log_lo, log_hi, generator))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            w, h = int(round(height * max(self.ratio))), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img: Image.Image, generator: torch.Generator) -> Image.Image:
        top, left, h, w = self.get_params(img.width, img.height, generator)
        # crop first, then resize, as torchvision does: resize(box=...) would differ at the borders
        # because its filter also reads pixels outside the box
        return img.crop((left, top, left + w, top + h)).resize((self.size, self.size), self.interpolation)


class RandomHorizontalFlip:
    """Mirror the image left-right with probability p."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: Image.Image, generator: torch.Generator) -> Image.Image:
        if float(torch.rand(1, generator=generator)) < self.p:
            return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img


class ColorJitter:
    """Random brightness, contrast and saturation, applied in a random order (torchvision semantics).

    Each factor ~ U(max(0, 1 - v), 1 + v) and is applied with PIL.ImageEnhance (Brightness,
    Contrast, Color), as torchvision does for PIL images; v = 0 leaves that property alone.
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0) -> None:
        for name, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if v < 0:
                raise ValueError(f"ColorJitter: {name} must be >= 0, got {v}")
        self.amounts = (brightness, contrast, saturation)

    def __call__(self, img: Image.Image, generator: torch.Generator) -> Image.Image:
        enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
        order = torch.randperm(3, generator=generator).tolist()
        factors = [_uniform(max(0.0, 1 - v), 1 + v, generator) if v > 0 else None for v in self.amounts]
        for k in order:
            if factors[k] is not None:
                img = enhancers[k](img).enhance(factors[k])
        return img


class ResizeCenterCrop:
    """Resize the shorter side to int(size / crop_pct), then take the centre size x size (timm eval).

    The longer side keeps the aspect ratio (int(new_short * long / short)); the crop's offsets are
    round((side - size) / 2), as torchvision's CenterCrop. The generator is accepted and unused.

    An image more than MAX_ASPECT times longer than wide (or the reverse) is not resized whole: a
    10000 x 1 strip would become 2,480,000 x 248 pixels (2.5 GB) for a 224 crop. Only the window the
    crop keeps is resized, one axis at a time (Pillow's `box`), the long axis first, so no image is
    larger than size x the short side. Pixels can differ from the whole resize by a few levels
    (Pillow may run its two passes in the other order); the 8:1 and narrower images of real datasets
    get exactly the whole resize.
    """

    MAX_ASPECT = 8  # up to 8:1, the exact timm transform: the whole resize is at most 8 crops' worth of pixels

    def __init__(self, size: int, crop_pct: float = 0.9, interpolation: int = Image.BICUBIC) -> None:
        if not 0 < crop_pct <= 1:
            raise ValueError(f"ResizeCenterCrop: crop_pct must be in (0, 1], got {crop_pct}")
        self.size, self.crop_pct, self.interpolation = size, crop_pct, interpolation

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        short_new = int(self.size / self.crop_pct)
        w, h = img.size
        if w <= h:
            new_w, new_h = short_new, int(short_new * h / w)
        else:
            new_w, new_h = int(short_new * w / h), short_new
        left = int(round((new_w - self.size) / 2))
        top = int(round((new_h - self.size) / 2))
        if max(w, h) > self.MAX_ASPECT * min(w, h):
            n = self.size
            x0, x1 = left * w / new_w, (left + n) * w / new_w  # the window, in source pixels
            y0, y1 = top * h / new_h, (top + n) * h / new_h
            if w > h:  # (w, h) -> (n, h) -> (n, n)
                img = img.resize((n, h), self.interpolation, box=(x0, 0, x1, h))
                return img.resize((n, n), self.interpolation, box=(0, y0, n, y1))
            img = img.resize((w, n), self.interpolation, box=(0, y0, w, y1))  # (w, h) -> (w, n) -> (n, n)
            return img.resize((n, n), self.interpolation, box=(x0, 0, x1, n))
        if (new_w, new_h) != img.size:
            img = img.resize((new_w, new_h), self.interpolation)
        return img.crop((left, top, left + self.size, top + self.size))


class ImageTransform:
    """Chain of per-image ops, then to-tensor and normalise: f(img, generator) -> float32 (3, size, size).

    `size` is the output side, which the image-folder dataset reads to pick a JPEG draft size.
    """

    def __init__(self, ops: list[ImageOp], size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.ops, self.size, self.mean, self.std = ops, size, tuple(mean), tuple(std)

    def __call__(self, img: Image.Image, generator: torch.Generator) -> torch.Tensor:
        if img.mode != "RGB":
            img = img.convert("RGB")
        for op in self.ops:
            img = op(img, generator)
        x = torch.from_numpy(np.array(img, dtype=np.uint8))  # (H, W, 3); np.array copies, so writable
        x = x.permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)
        return normalize(x, self.mean, self.std)

    def __repr__(self) -> str:
        return f"ImageTransform(size={self.size}, ops={[type(op).__name__ for op in self.ops]})"


def train_transform(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    jitter: float = 0.0,
    interpolation: int = Image.BICUBIC,
) -> ImageTransform:
    """Training pipeline: RandomResizedCrop(size) -> horizontal flip (p=0.5) -> ColorJitter(jitter
    for brightness, contrast and saturation; skipped when 0) -> to-tensor -> normalise."""
    ops: list[ImageOp] = [RandomResizedCrop(size, interpolation=interpolation), RandomHorizontalFlip(0.5)]
    if jitter > 0:
        ops.append(ColorJitter(jitter, jitter, jitter))
    return ImageTransform(ops, size, mean, std)


def eval_transform(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_pct: float = 0.9,
    interpolation: int = Image.BICUBIC,
) -> ImageTransform:
    """Evaluation pipeline: resize shorter side to int(size / crop_pct) -> centre crop size ->
    to-tensor -> normalise. Deterministic (the generator is unused)."""
    return ImageTransform([ResizeCenterCrop(size, crop_pct, interpolation)], size, mean, std)
