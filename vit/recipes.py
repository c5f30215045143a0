"""Recipes: what `python train.py --data NAME` and `python finetune.py` train with by default.

A recipe is a `TrainConfig` (the training choices) and, for training from scratch, the name of the
architecture in `vit.model.PRESETS` it was tuned with (`RECIPE_PRESETS`). Any flag overrides a
field; from Python, `RECIPES["mnist"].replace(epochs=1)`. The MNIST and CIFAR-10 recipes were tuned
by measurement on a 2-core CPU (README, "How the recipes' defaults were chosen"): the unmasked last
epoch, PatchDropout 0.5, the learning rate and batch size each paid there. The folder recipe was
measured on CIFAR-10's images as a folder (README, Results); Fashion-MNIST's is built from the
others, and measured only as it is.
"""

from __future__ import annotations

from .config import TrainConfig
from .model import PRESETS

RECIPES: dict[str, TrainConfig] = {
    "mnist": TrainConfig(epochs=10, batch_size=128, lr=2.8e-3, warmup_epochs=0.5, weight_decay=0.05, smoothing=0.0,
                         aug="mnist", patch_dropout=0.5, unmasked_epochs=1, eval_every=5, tta="shift"),
    # Fashion-MNIST: built from what paid on the other two, not tuned on it: MNIST's batch and lr, CIFAR-10's
    # crop + flip (garments are left-right symmetric; digits are not) and label smoothing, the unmasked last
    # epoch, the shifted views (what it reaches: README, Results).
    "fashion-mnist": TrainConfig(epochs=10, batch_size=128, lr=2.8e-3, warmup_epochs=0.5, weight_decay=0.05,
                                 smoothing=0.1, aug="cifar", crop_padding=2, patch_dropout=0.5, unmasked_epochs=1,
                                 eval_every=5, tta="shift"),
    # crop padding 2, not torchvision's 4: airbench's choice for short runs
    "cifar10": TrainConfig(epochs=26, batch_size=128, lr=2e-3, warmup_epochs=1, weight_decay=0.05, smoothing=0.1,
                           aug="cifar", crop_padding=2, patch_dropout=0.5, unmasked_epochs=1, eval_every=5,
                           tta="shift"),
    # image folders from scratch: held in memory at --img-size and augmented per batch like CIFAR-10;
    # the epochs follow the folder's size (folder_schedule) unless --epochs is given
    "folder": TrainConfig(epochs=30, batch_size=128, lr=2e-3, warmup_epochs=1, weight_decay=0.05, smoothing=0.1,
                          aug="cifar", crop_padding=4, patch_dropout=0.5, unmasked_epochs=1, eval_every=5,
                          tta="flip"),
    # Fine-tuning pretrained weights: AdamW with layer-wise lr decay, a short warmup and light
    # regularisation (as BEiT/MAE fine-tune ViT-B); --opt sgd --lr 0.01 --weight-decay 0 is the ViT paper's.
    "finetune": TrainConfig(epochs=10, batch_size=32, lr=1e-4, warmup_epochs=1, weight_decay=0.05, smoothing=0.1,
                            aug="rrc", drop_path=0.1, layer_decay=0.75),
    # The linear probe (finetune.py --freeze): a zero-initialised head on cached features (vit.probe), at a
    # head's learning rate, higher than a whole network's (chosen on README's transfer task). An epoch takes
    # milliseconds and writing a backbone much longer, so the resume state is written once, at the end.
    "probe": TrainConfig(epochs=20, batch_size=64, lr=1e-2, warmup_epochs=1, weight_decay=0.0, smoothing=0.1,
                         aug="none", save_every=20),
}

# the architecture (a vit.model.PRESETS name) each from-scratch recipe was tuned with; image folders
# get a model sized from their --img-size instead (folder_arch)
RECIPE_PRESETS = {"mnist": "mnist", "fashion-mnist": "mnist", "cifar10": "cifar10"}
FOLDER_IMG_SIZE = 64  # an image folder's default training resolution, in pixels
FOLDER_IMAGES_PER_RUN = 150_000  # training images a folder run sees by default (epochs x folder size)


def folder_arch(img_size: int) -> dict:
    """The from-scratch model for an image folder at img_size px: the cifar10 preset's width and depth
    on a grid of about 8 x 8 patches (the patch side: the divisor of img_size whose grid is nearest 8),
    with the conv stem, which learned faster per epoch than a linear patch embedding on CIFAR-10."""
    patch = min((p for p in range(1, img_size + 1) if img_size % p == 0), key=lambda p: (abs(img_size // p - 8), p))
    return {**PRESETS["cifar10"], "img_size": img_size, "patch_size": patch, "patch_embed": "stem"}


def folder_schedule(cfg: TrainConfig, train_images: int) -> TrainConfig:
    """The folder recipe's epochs for a folder of `train_images`: about FOLDER_IMAGES_PER_RUN images seen
    (5 to 100 epochs), evaluated about 5 times."""
    epochs = max(5, min(100, round(FOLDER_IMAGES_PER_RUN / max(train_images, 1))))
    return cfg.replace(epochs=epochs, eval_every=max(1, epochs // 5))
