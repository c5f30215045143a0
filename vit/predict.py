"""Classify images with any checkpoint (ours, timm or Hugging Face) and print the top-k classes.

    python -m vit.predict --checkpoint run/best.safetensors img1.jpg [img2.jpg ...] [--top-k 5] [--img-size N]

Preprocessing is timm's evaluation transform for these weights: resize the shorter side to
img_size / 0.9 (bicubic), centre crop img_size, normalise with mean = std = 0.5 per channel (our own
checkpoints: the 'mean'/'std' saved in their metadata, if any). Class names come from the checkpoint
(our 'classes' metadata, a Hugging Face config.json's id2label), else "class N". Every image that
can be read is classified; the others are named at the end, in one error line (exit 1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image

from .augment import eval_transform
from .errors import VitError, positive_int, run_cli
from .folders import read_image
from .model import describe
from .weights import load_checkpoint, saved_normalisation

CROP_PCT = 0.9  # timm's default eval crop for vit_base_patch16_224
BATCH = 16  # images per forward pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vit.predict", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="safetensors file: ours, timm or Hugging Face layout")
    p.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    p.add_argument("--top-k", type=positive_int, default=5, help="classes to print per image (default 5)")
    p.add_argument("--img-size", type=positive_int, default=None,
                   help="input size; default the checkpoint's (pos_embed resampled when it differs)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # a mistyped name or a folder is found before the (slower) model load, and does not stop the others
    problems = {p: f"{p}: a folder, not an image file" if Path(p).is_dir() else f"{p}: no such image file"
                for p in args.images if not Path(p).is_file()}
    readable = [p for p in args.images if p not in problems]
    if not readable:
        raise VitError(unreadable(args.images, problems))
    try:
        model, info = load_checkpoint(args.checkpoint, img_size=args.img_size)
        cfg = model.cfg
        if cfg.num_classes == 0:
            raise VitError(f"{args.checkpoint}: the checkpoint has no classification head")
        mean, std = saved_normalisation(info["layout"], info["metadata"], cfg.in_chans)
        print(f"{args.checkpoint} ({info['layout']} layout): {describe(cfg)}", file=sys.stderr)
        names = info["classes"] or [f"class {i}" for i in range(cfg.num_classes)]
        transform = eval_transform(cfg.img_size, mean, std, crop_pct=CROP_PCT, interpolation=Image.BICUBIC)
        generator = torch.Generator()  # the eval transform is deterministic; its signature wants one
        # a gray model gets the luminance: "L" -> RGB copies it into 3 equal planes, of which we keep one
        mode = "L" if cfg.in_chans == 1 else "RGB"
        k = min(args.top_k, cfg.num_classes)
        model.eval()
        for start in range(0, len(readable), BATCH):
            paths, inputs = [], []
            for path in readable[start:start + BATCH]:
                try:
                    inputs.append(transform(read_image(path, mode), generator)[:cfg.in_chans])
                    paths.append(path)
                except VitError as e:  # named at the end, after every image that can be read
                    problems[path] = str(e)
            if not inputs:
                continue
            x = torch.stack(inputs)  # B x (C, H, W) -> (B, C, H, W)
            with torch.no_grad():
                probs = model(x).softmax(dim=-1)  # (B, num_classes)
            top_p, top_i = probs.topk(k, dim=-1)  # (B, k) each
            for path, ps, idx in zip(paths, top_p.tolist(), top_i.tolist()):
                print(f"{path}:")
                for p, i in zip(ps, idx):
                    print(f"  {100 * p:6.2f}%  {names[i]}")
    except OSError as e:  # unreadable (permissions, I/O): a message, like every other bad file
        raise VitError(str(e)) from None
    if problems:
        raise VitError(unreadable(args.images, problems))


def unreadable(images: list[str], problems: dict[str, str]) -> str:
    """The error line for the images that could not be classified (`problems`: image -> why), in the
    order given: the reason alone for a single image, else how many and each reason."""
    given = list(dict.fromkeys(images))
    failed = [problems[p] for p in given if p in problems]
    if len(given) == 1:
        return failed[0]
    return f"{len(failed)} of {len(given)} images could not be classified: " + "; ".join(failed)


if __name__ == "__main__":
    run_cli(main)
