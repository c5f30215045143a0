"""Fine-tune pretrained ViT weights (timm, Hugging Face or our own safetensors) on an image folder.

    # weights: timm's vit_base_patch16_224.augreg2_in21k_ft_in1k or google/vit-base-patch16-224 model.safetensors
    python finetune.py --weights model.safetensors --data path/to/scenes         # root/{train,val}/<class>/...
    python finetune.py --weights model.safetensors --data scenes --freeze        # linear probe on cached features
    python finetune.py --weights model.safetensors --data scenes --img-size 384  # pos_embed resampled once

The weights load key for key into our hand-built ViT (vit/weights.py checks every key and shape),
the head is replaced for the folder's classes, and training runs the same loop as train.py
(defaults: RECIPES["finetune"], with --freeze RECIPES["probe"], in vit/recipes.py). Inputs are
normalised as the weights expect: with the mean/std saved in our own checkpoints, else timm's 0.5
for the ViT-B/16 weights. On a CPU, start with --freeze: the backbone runs once per image, not
once per image and epoch (README, "Fine-tune on a CPU").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .augment import BATCH_PRESETS, augmentations
from .cli import (add_common_args, check_aug_flags, check_system_args, choose_runtime, print_config, recipes_epilog,
                  train_config, train_or_evaluate)
from .config import TrainConfig
from .data import folder_data
from .errors import VitError, run_cli
from .folders import find_classes, split_folders
from .model import PRESETS, describe
from .probe import feature_data
from .recipes import RECIPES
from .weights import load_checkpoint, saved_normalisation


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=recipes_epilog({k: RECIPES[k] for k in ("finetune", "probe")}))
    d = p.add_argument_group("data and weights")
    d.add_argument("--weights", type=Path, required=True, help="a .safetensors file (timm, Hugging Face or ours)")
    d.add_argument("--data", type=Path, required=True, help="image folder: root/<class>/... or root/{train,val}/...")
    d.add_argument("--val-fraction", type=float, help="held-out fraction when there is no val/ (default 0.1)")
    d.add_argument("--img-size", type=int, default=224, help="fine-tuning resolution (pos_embed is resampled)")
    d.add_argument("--aug", choices=augmentations(folder=True),
                   help="rrc: random-resized-crop + flip per image (the default); resize: the eval view per image; "
                        f"{', '.join(BATCH_PRESETS)}: the folder decoded once at --img-size, held in memory and "
                        "augmented per batch as train.py does (for small images, e.g. a model trained by train.py)")
    m = p.add_argument_group("model")
    m.add_argument("--arch", default="auto", choices=("auto", *PRESETS), metavar="ARCH",
                   help=f"auto (infer from the file) or a preset to check it against: "
                        f"{', '.join(k for k in PRESETS if k.startswith('vit_'))}")
    m.add_argument("--patch", choices=("conv", "manual"), help="patch embedding to load a timm/HF file into "
                                                                "(default: the file's; the weights are the same)")
    m.add_argument("--keep-head", action="store_true", help="keep the file's head (class count must match)")
    m.add_argument("--freeze", action="store_true",
                   help="train the head only (linear probe): the frozen backbone runs once per image (eval "
                        "transform) and the head trains on the cached features (vit/probe.py)")
    m.add_argument("--probe-views", type=int,
                   help="--freeze: cache this many views of each training image, the eval view and "
                        "random-resized-crop + flip ones (default 1: the eval view only)")
    add_common_args(p)
    return p


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace, TrainConfig]:
    """(parser, flags, run config): the fine-tuning recipe with the flags applied, every value checked."""
    p = build_parser()
    args = p.parse_args(argv)
    if not args.weights.is_file():
        p.error(f"--weights {args.weights}: no such file")
    if not args.data.is_dir():
        p.error(f"--data {args.data}: no such folder")
    if args.img_size < 1:
        p.error(f"--img-size must be >= 1, got {args.img_size}")
    if not args.freeze:  # --freeze refuses per-batch flags below
        check_aug_flags(p, args, RECIPES["finetune"], folder=True)
    cfg = train_config(p, args, RECIPES["probe" if args.freeze else "finetune"])
    if args.probe_views is not None and (not args.freeze or args.probe_views < 1):
        p.error(f"--probe-views {args.probe_views}: " + ("needs --freeze" if not args.freeze else "must be >= 1"))
    if args.freeze:  # the head trains on cached features of whole images: nothing per batch or per token
        per_batch = {"--aug": args.aug is not None, "--crop-padding": args.crop_padding is not None,
                     "--mixup": cfg.mixup > 0, "--cutmix": cfg.cutmix > 0, "--patch-dropout": cfg.patch_dropout > 0,
                     "--tta": cfg.tta != "none"}
        given = [name for name, on in per_batch.items() if on]
        if given:
            p.error(f"{', '.join(given)}: --freeze trains the head on cached features of each image, where "
                    "these do not apply (--probe-views adds augmented views)")
    check_system_args(p, args, cfg)
    return p, args, cfg


def main(argv: list[str] | None = None) -> dict:
    p, args, cfg = parse_args(argv)
    if args.print_config:  # the model is the file's: see the line printed when it loads
        print_config(cfg)
        return {}
    model, info = load_checkpoint(args.weights, arch=args.arch, img_size=args.img_size, patch_embed=args.patch,
                                  drop_path_rate=cfg.drop_path)
    if model.cfg.in_chans != 3:
        raise VitError(f"{args.weights}: the model takes {model.cfg.in_chans}-channel images; finetune.py feeds "
                       "RGB images from a folder")
    mean, std = saved_normalisation(info["layout"], info["metadata"], model.cfg.in_chans)
    rt = choose_runtime(args, model.cfg)
    if rt.main:
        resampled = "; pos_embed resampled from {} to {}".format(*info["resampled"]) if info["resampled"] else ""
        print(f"loaded {args.weights} ({info['layout']} layout): {describe(model.cfg)}; normalised with mean "
              f"{mean}, std {std}{resampled}", file=sys.stderr)
    classes = find_classes(split_folders(args.data)[0])  # the head is settled before any image is decoded
    if len(classes) != model.cfg.num_classes:
        if args.keep_head:
            raise VitError(f"--keep-head: {args.weights} has a head for {model.cfg.num_classes} classes, "
                           f"{args.data} has {len(classes)}")
        model.reset_head(len(classes))
        if rt.main:
            print(f"head reset to {len(classes)} classes", file=sys.stderr)
    elif info["classes"] and info["classes"] != classes and rt.main:  # the head is kept: output i is class i
        print(f"warning: {args.weights}'s head was trained on the classes {', '.join(info['classes'])}; "
              f"{args.data} has {', '.join(classes)}: output i of the kept head now means the folder's "
              "class i", file=sys.stderr)
    if args.freeze:
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith("head.")
        data = feature_data(args.data, model, cfg, args.img_size, rt, mean=mean, std=std, views=args.probe_views or 1)
    else:
        data = folder_data(args.data, cfg, args.img_size, rt, mean=mean, std=std)
    return train_or_evaluate(model, data, cfg, rt, args, f"finetune-{args.data.resolve().name}", {"weights": str(args.weights)})


if __name__ == "__main__":
    run_cli(main)
