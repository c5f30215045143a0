"""Tests for vit/augment.py: per-batch tensor ops and per-image PIL ops."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vit import augment
from vit.augment import (BATCH_PRESETS, ColorJitter, RandomResizedCrop, ResizeCenterCrop, batch_augment, eval_transform,
                         mixup_cutmix, normalize, random_affine, random_crop, random_flip, train_transform, tta_views)
from helpers import limit_resizes


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(B: int = 16, C: int = 3, H: int = 12, W: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.rand(B, C, H, W, generator=gen(seed))


def find_window(out: torch.Tensor, x: torch.Tensor, pad: int) -> tuple[int, int] | None:
    """The (dy, dx) with out == zero-padded x [dy:dy+H, dx:dx+W], or None (one image (C, H, W))."""
    _, H, W = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            if torch.equal(xp[:, dy : dy + H, dx : dx + W], out):
                return dy, dx
    return None


ALL_OPS = {
    "crop": lambda x, g: random_crop(x, 3, g),
    "flip": lambda x, g: random_flip(x, g),
    "affine": lambda x, g: random_affine(x, g),
    **{f"preset-{n}": batch_augment(n) for n in BATCH_PRESETS},
}


@pytest.mark.parametrize("name", sorted(ALL_OPS))
def test_shape_dtype_device_range_and_determinism(name: str) -> None:
    op = ALL_OPS[name]
    x = batch()
    out = op(x, gen(1))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1 + 1e-6  # zero fill and bilinear stay inside [0, 1]
    assert torch.equal(out, op(x, gen(1)))  # same seed -> same batch
    if name != "preset-none":
        assert not torch.equal(out, op(x, gen(2)))  # another seed -> another batch


def test_ops_keep_float64_and_low_precision_dtypes() -> None:
    x = batch().double()
    assert random_affine(x, gen()).dtype == torch.float64
    assert random_crop(x.half(), 2, gen()).dtype == torch.float16
    low = random_affine(x.bfloat16(), gen())  # sampled in float32, returned as bf16
    assert low.dtype == torch.bfloat16
    assert torch.allclose(low.double(), random_affine(x, gen()), atol=0.02)


def test_crop_padding_zero_is_identity() -> None:
    x = batch()
    assert torch.equal(random_crop(x, 0, gen()), x)


@pytest.mark.parametrize("pad", [1, 4])
def test_crop_is_a_window_of_the_zero_padded_image(pad: int) -> None:
    x = batch(B=32, H=9, W=7)
    out = random_crop(x, pad, gen(3))
    windows = [find_window(out[b], x[b], pad) for b in range(len(x))]
    assert all(w is not None for w in windows)
    assert len(set(windows)) > 5  # offsets differ between images


def test_flip_twice_with_same_state_is_identity_and_p1_flips_all() -> None:
    x = batch()
    once = random_flip(x, gen(5))
    assert torch.equal(random_flip(once, gen(5)), x)
    flipped = [torch.equal(once[b], x[b].flip(2)) for b in range(len(x))]
    kept = [torch.equal(once[b], x[b]) for b in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)
    assert torch.equal(random_flip(x, gen(), p=1.0), x.flip(3))
    assert torch.equal(random_flip(x, gen(), p=0.0), x)


def test_affine_identity_rotation_and_shift_are_exact() -> None:
    x = batch(B=2, C=1, H=5, W=5)
    z, one = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    assert torch.allclose(random_affine(x, gen(), degrees=0.0, translate=0.0, scale=(1.0, 1.0)), x, atol=1e-6)
    quarter = torch.full((2,), math.pi / 2, dtype=torch.float64)
    assert torch.allclose(augment._affine(x, quarter, one, z, z), torch.rot90(x, -1, (2, 3)), atol=1e-5)
    shifted = augment._affine(x, z, one, torch.full((2,), 0.2, dtype=torch.float64), z)  # 1 px right
    assert torch.allclose(shifted[..., 1:], x[..., :-1], atol=1e-5) and shifted[..., 0].abs().max() < 1e-6


def test_affine_rotation_is_rigid_on_non_square_images() -> None:
    x = torch.rand(1, 1, 4, 6, generator=gen())
    quarter = torch.full((1,), math.pi / 2, dtype=torch.float64)
    one, z = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    out = augment._affine(x, quarter, one, z, z)
    # the rotated (6 x 4) image's centre 4 x 4 lands on the output's centre columns
    assert torch.allclose(out[0, 0, :, 1:5], torch.rot90(x, -1, (2, 3))[0, 0, 1:5, :], atol=1e-5)


def test_mixup_targets_match_the_pixel_mix() -> None:
    x, y = batch(B=8), torch.arange(8) % 5
    for seed in range(5):
        out, t = mixup_cutmix(x, y, 5, gen(seed), mixup_alpha=0.8, cutmix_alpha=0.0)
        assert t.shape == (8, 5) and t.dtype == torch.float32
        assert torch.allclose(t.sum(1), torch.ones(8))
        lam = t[0, y[0]].item()  # y[0] = 0 differs from y.flip(0)[0] = 2
        assert 0 < lam < 1
        assert torch.allclose(out, lam * x + (1 - lam) * x.flip(0), atol=1e-6)
        assert torch.allclose(t, lam * F.one_hot(y, 5) + (1 - lam) * F.one_hot(y.flip(0), 5))


def test_cutmix_box_holds_the_flipped_batch_and_lam_is_its_area() -> None:
    x, y = batch(B=6, H=16, W=16), torch.arange(6)
    boxes = 0
    for seed in range(10):
        out, t = mixup_cutmix(x, y, 6, gen(seed), mixup_alpha=0.0, cutmix_alpha=1.0)
        from_flip = (out == x.flip(0)) & (out != x)  # (B, C, H, W) pixels taken from the partner
        inside = from_flip.all(dim=(0, 1))  # (H, W) box mask
        assert torch.equal(from_flip, inside.expand_as(from_flip))  # same box in every image/channel
        assert torch.equal(out[:, :, ~inside], x[:, :, ~inside])  # outside the box: untouched
        area = inside.sum().item()
        if area:
            rows, cols = inside.any(1).nonzero(), inside.any(0).nonzero()
            assert area == len(rows) * len(cols)  # one rectangle
            assert rows.max() - rows.min() + 1 == len(rows) and cols.max() - cols.min() + 1 == len(cols)
            boxes += 1
        lam = 1 - area / 256
        assert torch.allclose(t[:, y].diagonal(), torch.full((6,), lam))
        assert torch.allclose(t.sum(1), torch.ones(6))
    assert boxes >= 5


def test_mixup_prob_zero_and_smoothing() -> None:
    x, y = batch(B=4), torch.tensor([0, 1, 2, 3])
    out, t = mixup_cutmix(x, y, 4, gen(), prob=0.0, smoothing=0.2)
    assert out is x  # not mixed, not copied, never modified
    assert torch.allclose(t, F.one_hot(y, 4) * 0.8 + 0.05)
    x0 = x.clone()
    mixup_cutmix(x, y, 4, gen(), prob=1.0)
    assert torch.equal(x, x0)
    with pytest.raises(ValueError, match="at least one > 0"):
        mixup_cutmix(x, y, 4, gen(), mixup_alpha=0.0, cutmix_alpha=0.0)


def test_mixup_cutmix_is_deterministic_by_seed() -> None:
    x, y = batch(B=8), torch.arange(8)
    a, b, c = (mixup_cutmix(x, y, 8, gen(s)) for s in (7, 7, 8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_normalize_values_and_shapes() -> None:
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    mean, std = (0.0, 0.2, 0.5), (1.0, 0.5, 0.25)
    out = normalize(x, mean, std)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 2, 2)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.0, 0.0, 2.0]))
    assert torch.allclose(normalize(x[0], mean, std), out[0])
    gray = normalize(torch.full((1, 28, 28), 255, dtype=torch.uint8), (0.1307,), (0.3081,))
    assert torch.allclose(gray, torch.full((1, 28, 28), (1 - 0.1307) / 0.3081))


def test_normalize_after_augmenting_a_float_batch() -> None:
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=gen())
    xf = x.float() / 255
    xf0 = xf.clone()
    out = normalize(xf, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2))  # float input: already on [0, 1]
    assert torch.allclose(out, normalize(x, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)), atol=1e-6)
    assert torch.equal(xf, xf0)  # the input is not modified in place


def test_unknown_preset_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="'nope'.*none, mnist, cifar, flip, crop"):
        batch_augment("nope")
    x = batch()
    assert batch_augment("none")(x, gen()) is x


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_tta_shift_views_are_the_image_then_its_eight_one_pixel_shifts(dtype: torch.dtype) -> None:
    x = torch.randint(1, 256, (2, 3, 5, 6)).to(dtype)  # no zeros, so the zero fill is visible
    views = list(tta_views(x, "shift"))
    assert len(views) == 9 and views[0] is x and all(v.dtype == dtype for v in views)
    padded = F.pad(x, (1, 1, 1, 1))  # zero border
    # every window of the padded image at offsets {0, 1, 2}^2: the image itself and its 8 shifts
    windows = [padded[:, :, i:i + 5, j:j + 6] for i in range(3) for j in range(3)]
    for view in views:
        assert sum(torch.equal(view, w) for w in windows) == 1
    assert len({tuple(v.flatten().tolist()) for v in views}) == 9


def test_tta_flip_views_and_unknown_names() -> None:
    x = torch.rand(2, 1, 4, 4)
    assert [v is x for v in tta_views(x, "none")] == [True]
    flip = list(tta_views(x, "flip"))
    assert len(flip) == 2 and torch.equal(flip[1], x.flip(3))
    both = list(tta_views(x, "flip-shift"))
    assert len(both) == 18 and both[0] is x and torch.equal(both[9], x.flip(3))
    # the mirror's shifted views, mirrored back, are the image's shifted views (dx negated)
    as_set = lambda views: {tuple(v.flatten().tolist()) for v in views}  # noqa: E731
    assert as_set(v.flip(3) for v in both[9:]) == as_set(both[:9])
    with pytest.raises(ValueError, match="unknown test-time augmentation 'rotate'; choose one of: none, flip, shift"):
        next(tta_views(x, "rotate"))
    assert [augment.num_tta_views(k) for k in augment.TTA_VIEWS] == [len(list(tta_views(x, k)))
                                                                   for k in augment.TTA_VIEWS]


@pytest.mark.parametrize("padding", [None, 2])
def test_cifar_and_crop_presets_use_the_crop_padding(padding) -> None:
    x = batch(B=8)
    kwargs, pad = ({}, 4) if padding is None else ({"crop_padding": padding}, padding)  # torchvision's 4 by default
    g = gen(9)
    expected = random_flip(random_crop(x, pad, g), g)
    assert torch.equal(batch_augment("cifar", **kwargs)(x, gen(9)), expected)
    assert torch.equal(batch_augment("crop", **kwargs)(x, gen(9)), random_crop(x, pad, gen(9)))
    other = 6 - pad  # 2 <-> 4: a different padding gives different windows
    assert not torch.equal(batch_augment("crop", crop_padding=other)(x, gen(9)), random_crop(x, pad, gen(9)))
    with pytest.raises(ValueError, match="crop padding must be >= 0, got -1"):
        batch_augment("cifar", crop_padding=-1)


# ---------------------------------------------------------------------------------------------
# per-image ops


def pattern(w: int, h: int) -> Image.Image:
    """An RGB image whose every pixel is distinct: R = x, G = y, B = (x + 7 y) % 256."""
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx % 256, yy % 256, (xx + 7 * yy) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(arr)


def test_random_resized_crop_full_scale_square_is_plain_resize() -> None:
    img = pattern(40, 40)
    out = RandomResizedCrop(16, scale=(1.0, 1.0), ratio=(1.0, 1.0))(img, gen())
    assert out.size == (16, 16)
    assert np.array_equal(np.asarray(out), np.asarray(img.resize((16, 16), Image.BICUBIC)))


def test_random_resized_crop_falls_back_to_a_clamped_centre_crop() -> None:
    img = pattern(20, 10)  # aspect 2 > max ratio 1, and scale 2 never fits
    rrc = RandomResizedCrop(8, scale=(2.0, 2.0), ratio=(1.0, 1.0), interpolation=Image.NEAREST)
    assert rrc.get_params(20, 10, gen()) == (0, 5, 10, 10)
    expected = img.crop((5, 0, 15, 10)).resize((8, 8), Image.NEAREST)
    assert np.array_equal(np.asarray(rrc(img, gen())), np.asarray(expected))


def test_random_resized_crop_windows_follow_scale_and_ratio() -> None:
    rrc = RandomResizedCrop(8, scale=(0.25, 0.5), ratio=(0.5, 2.0))
    g = gen()
    params = [rrc.get_params(200, 100, g) for _ in range(300)]
    for top, left, h, w in params:
        assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 200
        assert 0.24 <= h * w / 20000 <= 0.51 and 0.48 <= w / h <= 2.1
    assert len({p[:2] for p in params}) > 100  # positions vary


def test_color_jitter_zero_is_identity_and_brightness_scales_gray() -> None:
    img = Image.new("RGB", (6, 6), (100, 100, 100))
    assert np.array_equal(np.asarray(ColorJitter()(img, gen())), np.asarray(img))
    values = {int(np.asarray(ColorJitter(brightness=0.5)(img, gen(s)))[0, 0, 0]) for s in range(20)}
    assert len(values) > 5 and min(values) >= 50 and max(values) <= 150
    with pytest.raises(ValueError, match="saturation"):
        ColorJitter(saturation=-1)


def test_eval_transform_centre_crop_is_exact() -> None:
    # shorter side 16 = int(8 / 0.5): no resize, only the centre 8 x 8 crop at top 6, left 4
    img = pattern(16, 20)
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)
    f = eval_transform(8, mean, std, crop_pct=0.5)
    out = f(img, gen())
    assert f.size == 8 and out.shape == (3, 8, 8) and out.dtype == torch.float32
    crop = torch.from_numpy(np.asarray(img)[6:14, 4:12].copy()).permute(2, 0, 1)  # (8, 8, 3) -> (3, 8, 8)
    assert torch.allclose(out, normalize(crop, mean, std))


def test_resize_centre_crop_resizes_the_shorter_side() -> None:
    out = ResizeCenterCrop(20, crop_pct=0.8)(pattern(50, 100))  # shorter side -> 25, then 20 x 20
    assert out.size == (20, 20)
    with pytest.raises(ValueError, match="crop_pct"):
        ResizeCenterCrop(20, crop_pct=1.5)


@pytest.mark.parametrize("w, h", [(50, 400), (400, 50), (37, 260)])  # up to 8:1: timm's exact resize-then-crop
def test_resize_centre_crop_is_the_whole_resize_then_the_crop(w, h) -> None:
    rng = np.random.default_rng(w * h)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    new_w, new_h = (27, int(27 * h / w)) if w <= h else (int(27 * w / h), 27)  # short side int(24 / 0.875)
    left, top = round((new_w - 24) / 2), round((new_h - 24) / 2)
    whole = img.resize((new_w, new_h), Image.BICUBIC).crop((left, top, left + 24, top + 24))
    assert np.array_equal(np.asarray(ResizeCenterCrop(24, crop_pct=0.875)(img)), np.asarray(whole))


def test_resize_centre_crop_of_an_extreme_strip_resizes_only_the_crop(monkeypatch) -> None:
    """A 10000 x 1 image resized whole for a 224 crop would be 2,480,000 x 248 pixels (2.5 GB)."""
    resizes = limit_resizes(monkeypatch, 224 * 224)
    for size in [(10000, 1), (1, 50000)]:
        out = eval_transform(224, (0.5,) * 3, (0.5,) * 3)(pattern(*size), gen())
        assert out.shape == (3, 224, 224) and torch.isfinite(out).all()
    assert len(resizes) == 4  # one axis at a time: the window's long axis, then its short one


def test_resize_centre_crop_past_the_aspect_bound_is_the_whole_resize_within_a_few_levels() -> None:
    rng = np.random.default_rng(0)  # 9:1, past MAX_ASPECT: only the crop's window is resized
    wide = Image.fromarray(rng.integers(0, 256, (90, 810, 3), dtype=np.uint8))
    for img in (wide, wide.transpose(Image.Transpose.TRANSPOSE)):  # short side 90 -> int(224 / 0.9) = 248
        resized = img.resize((2232, 248) if img.width > img.height else (248, 2232), Image.BICUBIC)
        whole = resized.crop((1004, 12, 1228, 236) if img.width > img.height else (12, 1004, 236, 1228))
        diff = np.abs(np.asarray(ResizeCenterCrop(224, crop_pct=0.9)(img), int) - np.asarray(whole, int))
        assert diff.max() <= 32 and diff.mean() < 1


def test_train_transform_shape_determinism_and_pickling() -> None:
    img = pattern(64, 48).convert("L")  # grayscale input is converted to RGB
    f = train_transform(24, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), jitter=0.4)
    out = f(img, gen(1))
    assert f.size == 24 and out.shape == (3, 24, 24) and out.dtype == torch.float32
    assert out.min() >= -1 - 1e-6 and out.max() <= 1 + 1e-6
    assert torch.equal(out, f(img, gen(1)))
    assert not torch.equal(out, f(img, gen(2)))
    g = pickle.loads(pickle.dumps(f))  # DataLoader workers may pickle the transform
    assert torch.equal(g(img, gen(1)), out)
