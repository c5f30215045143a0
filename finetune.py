"""Fine-tune pretrained ViT weights (timm or Hugging Face safetensors) on an image folder.

    # weights: timm's vit_base_patch16_224.augreg2_in21k_ft_in1k or google/vit-base-patch16-224 model.safetensors
    python finetune.py --weights model.safetensors --data path/to/scenes         # root/{train,val}/<class>/...
    python finetune.py --weights model.safetensors --data scenes --freeze        # linear probe: head only
    python finetune.py --weights model.safetensors --data scenes --img-size 384  # pos_embed resampled once

The weights load key for key into our hand-built ViT (vit/weights.py checks every key and shape),
the head is replaced for the folder's classes, and training runs the same engine as train.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vit.engine import (add_common_args, check_common_args, cli, fill_defaults, fit, folder_data, run_folder,
                        setup_runtime, shutdown)
from vit.model import PRESETS
from vit.weights import describe, load_checkpoint

# Fine-tuning defaults: AdamW with layer-wise lr decay, a short warmup and light regularisation (as
# BEiT/MAE fine-tune ViT-B); --opt sgd --lr 0.01 --weight-decay 0 is the ViT paper's recipe.
RECIPE = dict(epochs=10, batch_size=32, lr=1e-4, warmup_epochs=1, weight_decay=0.05, smoothing=0.1, drop_path=0.1,
              eval_every=1, tta="none")
# timm's preprocessing for the augreg and Google ViT-B/16 weights: pixels scaled to [-1, 1].
WEIGHTS_MEAN = WEIGHTS_STD = (0.5, 0.5, 0.5)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data and weights")
    d.add_argument("--weights", type=Path, required=True, help="a .safetensors file (timm, Hugging Face or ours)")
    d.add_argument("--data", type=Path, required=True, help="image folder: root/<class>/... or root/{train,val}/...")
    d.add_argument("--val-fraction", type=float, default=0.1, help="held-out fraction when there is no val/")
    d.add_argument("--img-size", type=int, default=224, help="fine-tuning resolution (pos_embed is resampled)")
    d.add_argument("--aug", choices=("rrc", "none"), default="rrc",
                   help="rrc: random-resized-crop + flip; none: eval-style resize only")
    d.add_argument("--jitter", type=float, default=0.0, help="colour jitter strength (0 = off)")
    m = p.add_argument_group("model")
    m.add_argument("--arch", default="auto", help=f"auto (infer from the file) or a preset to check it against: "
                                                  f"{', '.join(k for k in PRESETS if k.startswith('vit_'))}")
    m.add_argument("--patch", choices=("conv", "manual"), default="conv", help="patch embedding to load into")
    m.add_argument("--keep-head", action="store_true", help="keep the file's head (class count must match)")
    m.add_argument("--freeze", action="store_true", help="train the head only (linear probe)")
    m.add_argument("--layer-decay", type=float, default=0.75, help="layer-wise lr decay (1 = off)")
    add_common_args(p)
    args = p.parse_args(argv)
    fill_defaults(args, RECIPE)
    if not args.weights.is_file():
        p.error(f"--weights {args.weights}: no such file")
    if not args.data.is_dir():
        p.error(f"--data {args.data}: no such folder")
    if args.arch != "auto" and args.arch not in PRESETS:
        p.error(f"--arch {args.arch!r}: choose auto or one of {', '.join(PRESETS)}")
    if args.img_size < 1:
        p.error(f"--img-size must be >= 1, got {args.img_size}")
    if not args.jitter >= 0:
        p.error(f"--jitter must be >= 0, got {args.jitter}")
    if not 0.0 < args.layer_decay <= 1.0:
        p.error("--layer-decay must be in (0, 1]")
    if not 0.0 < args.val_fraction < 1.0:
        p.error("--val-fraction must be in (0, 1)")
    return p, args


def main(argv: list[str] | None = None) -> dict:
    p, args = parse_args(argv)
    check_common_args(p, args)
    rt = setup_runtime(args)
    data = folder_data(args, rt, args.data, args.img_size, interpolation="bicubic", mean=WEIGHTS_MEAN,
                       std=WEIGHTS_STD, jitter=args.jitter)
    model, info = load_checkpoint(args.weights, arch=args.arch, img_size=args.img_size,
                                  num_classes=len(data.classes), keep_head=args.keep_head, patch_embed=args.patch,
                                  drop_path_rate=args.drop_path)
    if args.freeze:
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith("head.")
    if rt.main:
        changes = [f"head reset to {len(data.classes)} classes"] if info["head_reset"] else []
        if info["resampled"]:
            changes.append("pos_embed resampled from {} to {}".format(*info["resampled"]))
        print(f"loaded {args.weights} ({info['layout']} layout): {describe(model.cfg)}"
              + (f"; {', '.join(changes)}" if changes else ""), file=sys.stderr)
    out, resume_from = run_folder(args, f"finetune-{args.data.resolve().name}")
    results = fit(model, data, args, rt, out, resume_from, {"weights": str(args.weights)})
    shutdown(rt)
    return results


if __name__ == "__main__":
    cli(main)
