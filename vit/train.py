"""Train a Vision Transformer from scratch on MNIST, Fashion-MNIST, CIFAR-10 or an image folder.

    python train.py --data mnist --patch manual --pos sin      # downloads MNIST into ./data if missing
    python train.py --data cifar10 --patch stem
    python train.py --data path/to/folder --img-size 64        # root/<class>/<image>, or root/{train,val}/...
    torchrun --nproc_per_node=2 train.py --data mnist          # DDP: gloo on CPU, nccl on CUDA

Each dataset has a tuned recipe (vit/recipes.py); any flag overrides it. Outputs go to
runs/<data>-<patch>-<pos>-<timestamp>/ (see vit/runs.py for the files).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch

from .augment import BATCH_PRESETS, IMAGE_TRANSFORMS
from .cli import (MODEL_FLAGS, add_common_args, check_aug_flags, check_system_args, choose_runtime, print_config,
                  recipes_epilog, train_config, train_or_evaluate)
from .config import TrainConfig
from .data import folder_data, tensor_data
from .datasets import IMAGE_SHAPES
from .errors import run_cli
from .model import PRESETS, ViTConfig, VisionTransformer, describe
from .recipes import FOLDER_IMG_SIZE, RECIPE_PRESETS, RECIPES, folder_arch, folder_schedule


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=recipes_epilog({k: RECIPES[k] for k in (*RECIPE_PRESETS, "folder")},
                                                      {**RECIPE_PRESETS, "folder": "sized from --img-size"}))
    d = p.add_argument_group("data")
    d.add_argument("--data", default="mnist", help=f"{' | '.join(IMAGE_SHAPES)} | PATH to an image folder")
    d.add_argument("--data-dir", type=Path, default=Path("data"), help="where datasets are (or are downloaded to)")
    d.add_argument("--no-download", action="store_true", help="never touch the network")
    d.add_argument("--classes", help="comma-separated class names: train and test on these classes only "
                                     "(MNIST, Fashion-MNIST, CIFAR-10), e.g. bird,cat,deer,dog,frog,horse")
    d.add_argument("--val-fraction", type=float, help="folders without train/val: held-out fraction (default 0.1)")
    d.add_argument("--img-size", type=int, help=f"folders: training resolution (default {FOLDER_IMG_SIZE}, or the "
                                                "--preset's)")
    d.add_argument("--aug", help=f"augmentation per batch: {', '.join(BATCH_PRESETS)}; folders also, per image "
                                 f"and decoded every epoch: {', '.join(IMAGE_TRANSFORMS)} (random-resized-crop + "
                                 "flip; the eval view)")
    m = p.add_argument_group("model (default: the preset's)")
    m.add_argument("--preset", choices=sorted(PRESETS), help="base architecture (default: the dataset's)")
    m.add_argument("--patch", choices=("manual", "conv", "stem"), help="patch embedding")
    m.add_argument("--pos", choices=("sin", "learned", "none"), help="position embedding")
    m.add_argument("--patch-size", type=int, help="side of a square patch, in pixels")
    m.add_argument("--embed-dim", type=int, help="token width")
    m.add_argument("--depth", type=int, help="transformer blocks")
    m.add_argument("--heads", type=int, help="attention heads (must divide --embed-dim)")
    m.add_argument("--mlp-ratio", type=float, help="MLP hidden width / token width")
    m.add_argument("--pool", choices=("token", "avg"), help="classify the class token, or the mean patch token")
    m.add_argument("--drop", type=float, help="dropout rate")
    add_common_args(p)
    return p


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace, TrainConfig]:
    """(parser, flags, run config): the dataset's recipe with the flags applied, every value checked."""
    p = build_parser()
    args = p.parse_args(argv)
    args.kind = args.data if args.data in IMAGE_SHAPES else "folder"
    if args.kind == "folder" and not Path(args.data).is_dir():
        p.error(f"--data {args.data!r} is neither one of {', '.join(IMAGE_SHAPES)} nor a folder")
    check_aug_flags(p, args, RECIPES[args.kind], folder=args.kind == "folder")
    if args.classes is not None and args.kind == "folder":
        p.error("--classes applies to MNIST, Fashion-MNIST and CIFAR-10; for a folder, keep only those class folders")
    if args.classes is not None and not any(args.classes.split(",")):  # '' would train on every class
        p.error(f"--classes {args.classes!r} names no class; give comma-separated class names, e.g. --classes 3,5")
    if args.img_size is not None and args.kind != "folder":
        p.error(f"--img-size applies to image folders only ({args.data} images have a fixed size)")
    cfg = train_config(p, args, RECIPES[args.kind])
    check_system_args(p, args, cfg)
    return p, args, cfg


def model_config(p: argparse.ArgumentParser, args: argparse.Namespace, cfg: TrainConfig) -> ViTConfig:
    """The preset for the data's images, overridden by every model flag given; checked before any data
    is read. num_classes is a placeholder until the data is loaded."""
    if args.kind != "folder":  # a built-in dataset: its images' one shape, the recipe's preset
        base = PRESETS[args.preset or RECIPE_PRESETS[args.kind]]
        in_chans, img_size = IMAGE_SHAPES[args.kind]
    else:  # a folder: trained at --img-size, else the --preset's size, else FOLDER_IMG_SIZE with a model sized for it
        base = PRESETS[args.preset] if args.preset else folder_arch(args.img_size or FOLDER_IMG_SIZE)
        in_chans, img_size = 3, args.img_size or base.get("img_size", ViTConfig.img_size)
    values = {**base, "in_chans": in_chans, "img_size": img_size, "drop_path_rate": cfg.drop_path}
    values.update({field: getattr(args, flag) for flag, field in MODEL_FLAGS.items() if getattr(args, flag) is not None})
    try:
        return ViTConfig(**{f.name: values[f.name] for f in fields(ViTConfig) if f.name in values})
    except ValueError as e:
        p.error(str(e))


def main(argv: list[str] | None = None) -> dict:
    p, args, cfg = parse_args(argv)
    model_cfg = model_config(p, args, cfg)
    if args.print_config:  # num_classes is the preset's until the data is read
        print_config(cfg, asdict(model_cfg))
        if args.kind == "folder" and args.epochs is None:
            print("(a folder's epochs and eval_every follow its size once it is read: vit.recipes.folder_schedule)",
                  file=sys.stderr)
        return {}
    rt = choose_runtime(args, model_cfg)
    if args.kind == "folder":
        name = Path(args.data).resolve().name
        data = folder_data(args.data, cfg, model_cfg.img_size, rt)
        # the recipe's epochs follow the folder's size; the user's flags still win
        cfg = train_config(p, args, folder_schedule(RECIPES["folder"], len(data.train) * cfg.batch_size))
    else:
        name = args.data
        data = tensor_data(name, args.data_dir, cfg, rt, download=not args.no_download,
                           classes=args.classes.split(",") if args.classes else None)
    model_cfg = replace(model_cfg, num_classes=len(data.classes))
    torch.manual_seed(cfg.seed)  # the model's initial weights; each epoch reseeds from (seed, epoch, rank)
    model = VisionTransformer(model_cfg)
    if rt.main:
        print(f"{name}: {len(data.classes)} classes, {cfg.epochs} epochs | model {describe(model_cfg)}",
              file=sys.stderr)
    return train_or_evaluate(model, data, cfg, rt, args, f"{name}-{model_cfg.patch_embed}-{model_cfg.pos_embed}")


if __name__ == "__main__":
    run_cli(main)
