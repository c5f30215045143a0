"""Train a Vision Transformer from scratch on MNIST, Fashion-MNIST, CIFAR-10 or an image folder.

    python train.py --data mnist --patch manual --pos sin      # downloads MNIST into ./data if missing
    python train.py --data cifar10 --patch stem
    python train.py --data path/to/folder --img-size 64        # root/<class>/<image>, or root/{train,val}/...
    torchrun --nproc_per_node=2 train.py --data mnist          # DDP: gloo on CPU, nccl on CUDA

Each dataset has a tuned recipe (RECIPES below); any flag overrides it. Outputs go to
runs/<data>-<patch>-<pos>-<timestamp>/ (see vit/engine.py for the files).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch

from vit.augment import BATCH_PRESETS
from vit.data import TENSOR_DATASETS
from vit.engine import (add_common_args, check_common_args, cli, fill_defaults, fit, folder_data, run_folder,
                        setup_runtime, shutdown, tensor_data)
from vit.model import PRESETS, ViTConfig, VisionTransformer

# Per-dataset defaults: what `python train.py --data NAME` runs. Tuned on a 2-core CPU (README "Results").
RECIPES = {
    "mnist": dict(preset="mnist", epochs=10, batch_size=128, lr=2.8e-3, warmup_epochs=0.5, weight_decay=0.05,
                  smoothing=0.0, aug="mnist", crop_padding=4, drop_path=0.0, unmasked_epochs=1, eval_every=5,
                  tta="shift"),
    "fashion-mnist": dict(preset="mnist", epochs=10, batch_size=256, lr=1e-3, warmup_epochs=1, weight_decay=0.05,
                          smoothing=0.1, aug="flip", crop_padding=4, drop_path=0.0, unmasked_epochs=0,
                          eval_every=1, tta="none"),
    "cifar10": dict(preset="cifar10", epochs=26, batch_size=128, lr=2e-3, warmup_epochs=1, weight_decay=0.05,
                    smoothing=0.1, aug="cifar", crop_padding=2, drop_path=0.0, unmasked_epochs=1, eval_every=5,
                    tta="shift"),
    "folder": dict(preset="vit_tiny_patch16_224", epochs=30, batch_size=64, lr=5e-4, warmup_epochs=2,
                   weight_decay=0.05, smoothing=0.1, aug="rrc", drop_path=0.1, unmasked_epochs=0, eval_every=1,
                   tta="none"),
}
FOLDER_AUGS = ("none", "rrc")  # per-image: eval-style resize only, or random-resized-crop + flip

# model flag -> ViTConfig field
MODEL_FLAGS = {"patch": "patch_embed", "pos": "pos_embed", "patch_size": "patch_size", "embed_dim": "embed_dim",
               "depth": "depth", "heads": "num_heads", "mlp_ratio": "mlp_ratio", "pool": "global_pool",
               "drop_path": "drop_path_rate", "drop": "drop_rate", "img_size": "img_size",
               "patch_dropout": "patch_dropout"}


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--data", default="mnist", help=f"{' | '.join(TENSOR_DATASETS)} | PATH to an image folder")
    d.add_argument("--data-dir", type=Path, default=Path("data"), help="where datasets are (or are downloaded to)")
    d.add_argument("--no-download", action="store_true", help="never touch the network")
    d.add_argument("--val-fraction", type=float, default=0.1, help="folders without train/val: held-out fraction")
    d.add_argument("--img-size", type=int, help="folders: training resolution (default: the preset's)")
    d.add_argument("--aug", help=f"augmentation: {', '.join(BATCH_PRESETS)} (tensor datasets); "
                                 f"{', '.join(FOLDER_AUGS)} (folders)")
    d.add_argument("--crop-padding", type=int, help="tensor datasets: the random crop's zero padding in pixels "
                                                    "(--aug cifar, crop)")
    m = p.add_argument_group("model")
    m.add_argument("--preset", choices=sorted(PRESETS), help="base architecture (default: the dataset's)")
    m.add_argument("--patch", choices=("manual", "conv", "stem"), help="patch embedding")
    m.add_argument("--pos", choices=("sin", "learned", "none"), help="position embedding")
    m.add_argument("--patch-size", type=int)
    m.add_argument("--embed-dim", type=int)
    m.add_argument("--depth", type=int)
    m.add_argument("--heads", type=int)
    m.add_argument("--mlp-ratio", type=float)
    m.add_argument("--pool", choices=("token", "avg"))
    m.add_argument("--drop", type=float, help="dropout rate")
    m.add_argument("--patch-dropout", type=float, help="training only: fraction of patch tokens dropped per image")
    m.add_argument("--unmasked-epochs", type=int, help="train the last N epochs on all tokens, without PatchDropout")
    m.add_argument("--attn", choices=("auto", "fused", "explicit"), default="auto",
                   help="F.scaled_dot_product_attention, or the explicit softmax(q k^T / sqrt(d)) v; "
                        "auto: explicit on the CPU (faster there for these small models, README), else fused")
    add_common_args(p)
    args = p.parse_args(argv)
    args.kind = args.data if args.data in TENSOR_DATASETS else "folder"
    if args.kind == "folder" and not Path(args.data).is_dir():
        p.error(f"--data {args.data!r} is neither one of {', '.join(TENSOR_DATASETS)} nor a folder")
    fill_defaults(args, RECIPES[args.kind])
    augs = FOLDER_AUGS if args.kind == "folder" else tuple(BATCH_PRESETS)
    if args.aug not in augs:
        p.error(f"--aug {args.aug!r} is not available for {args.kind} data; choose from {', '.join(augs)}")
    if args.kind == "folder" and args.crop_padding is not None:
        p.error("--crop-padding applies to MNIST, Fashion-MNIST and CIFAR-10 (folders use --aug rrc)")
    if args.kind != "folder" and args.crop_padding < 0:
        p.error(f"--crop-padding must be >= 0, got {args.crop_padding}")
    if args.img_size is not None and args.kind != "folder":
        p.error(f"--img-size applies to image folders only ({args.data} images have a fixed size)")
    if not 0.0 < args.val_fraction < 1.0:
        p.error("--val-fraction must be in (0, 1)")
    return p, args


def model_config(p: argparse.ArgumentParser, args: argparse.Namespace, device: torch.device) -> ViTConfig:
    """The preset, overridden by the data's image shape and by every model flag given; checked before
    any data is read. num_classes is a placeholder until the data is loaded."""
    in_chans, img_size = TENSOR_DATASETS.get(args.kind) or (3, PRESETS[args.preset].get("img_size", 224))
    # On the CPU, torch's fused (flash) kernel trained the MNIST preset 1.2-1.6x slower and CIFAR-10's
    # 1.1x slower (head widths 16 and 32) and gained nothing from a second thread (README, Results).
    fused = args.attn == "fused" or (args.attn == "auto" and device.type != "cpu")
    values = {**PRESETS[args.preset], "in_chans": in_chans, "img_size": img_size, "fused_attn": fused}
    values.update({field: getattr(args, flag) for flag, field in MODEL_FLAGS.items() if getattr(args, flag) is not None})
    try:
        return ViTConfig(**{f.name: values[f.name] for f in fields(ViTConfig) if f.name in values})
    except ValueError as e:
        p.error(str(e))


def main(argv: list[str] | None = None) -> dict:
    p, args = parse_args(argv)
    check_common_args(p, args)
    rt = setup_runtime(args)
    cfg = model_config(p, args, rt.device)
    if args.kind == "folder":
        name = Path(args.data).resolve().name
        data = folder_data(args, rt, Path(args.data), cfg.img_size, interpolation="bicubic")
    else:
        name = args.data
        data = tensor_data(args, rt, name)
    cfg = replace(cfg, num_classes=len(data.classes))
    out, resume_from = run_folder(args, f"{name}-{cfg.patch_embed}-{cfg.pos_embed}")
    model = VisionTransformer(cfg)
    if rt.main:
        params = sum(q.numel() for q in model.parameters())
        print(f"{name}: {len(data.classes)} classes | model {params / 1e6:.2f}M params {json.dumps(asdict(cfg))}",
              file=sys.stderr)
    results = fit(model, data, args, rt, out, resume_from)
    shutdown(rt)
    return results


if __name__ == "__main__":
    cli(main)
