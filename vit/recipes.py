"""Recipes: what `python train.py --data NAME` and `python finetune.py` train with by default.

A recipe is a `TrainConfig` (the training choices) and, for training from scratch, the name of the
architecture in `vit.model.PRESETS` it was tuned with (`RECIPE_PRESETS`). Any flag overrides a
field; from Python, `RECIPES["mnist"].replace(epochs=1)`. The MNIST and CIFAR-10 recipes were tuned
by measurement on a 2-core CPU (README, Results): the unmasked last epoch, PatchDropout 0.5, the
learning rate and batch size each paid there; Fashion-MNIST and image folders were not tuned.
"""

from __future__ import annotations

from .config import TrainConfig

RECIPES: dict[str, TrainConfig] = {
    "mnist": TrainConfig(epochs=10, batch_size=128, lr=2.8e-3, warmup_epochs=0.5, weight_decay=0.05, smoothing=0.0,
                         aug="mnist", patch_dropout=0.5, unmasked_epochs=1, eval_every=5, tta="shift"),
    "fashion-mnist": TrainConfig(epochs=10, batch_size=256, lr=1e-3, warmup_epochs=1, weight_decay=0.05,
                                 smoothing=0.1, aug="flip", patch_dropout=0.5),
    # crop padding 2, not torchvision's 4: airbench's choice for short runs
    "cifar10": TrainConfig(epochs=26, batch_size=128, lr=2e-3, warmup_epochs=1, weight_decay=0.05, smoothing=0.1,
                           aug="cifar", crop_padding=2, patch_dropout=0.5, unmasked_epochs=1, eval_every=5,
                           tta="shift"),
    "folder": TrainConfig(epochs=30, batch_size=64, lr=5e-4, warmup_epochs=2, weight_decay=0.05, smoothing=0.1,
                          aug="rrc", drop_path=0.1),
    # Fine-tuning pretrained weights: AdamW with layer-wise lr decay, a short warmup and light
    # regularisation (as BEiT/MAE fine-tune ViT-B); --opt sgd --lr 0.01 --weight-decay 0 is the ViT paper's.
    "finetune": TrainConfig(epochs=10, batch_size=32, lr=1e-4, warmup_epochs=1, weight_decay=0.05, smoothing=0.1,
                            aug="rrc", drop_path=0.1, layer_decay=0.75),
}

# the architecture (a vit.model.PRESETS name) each from-scratch recipe was tuned with
RECIPE_PRESETS = {"mnist": "mnist", "fashion-mnist": "mnist", "cifar10": "cifar10", "folder": "vit_tiny_patch16_224"}
