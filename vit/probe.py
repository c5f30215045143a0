"""A linear probe from cached features: the frozen backbone sees each image once, the head trains on what it saw.

`finetune.py --freeze` trains only the head of a pretrained ViT. Run the way a full fine-tune runs,
every epoch pushes every image through the frozen backbone again to recompute the same features:
almost all of the time, for a Linear layer's worth of training. Here each image goes through the
backbone once, in eval mode, with the eval transform (resize + centre crop, as the model is scored),
and its pooled feature vector (D,) is kept as a tensor; `fit` then trains `engine.HeadOnly(model)`
on those tensors for the epochs asked, in seconds. With `views` > 1, each training image also
contributes `views - 1` random-resized-crop + flip views (seeded by (seed, view, image)), all cached
once: augmentation for the probe at the cost of more passes through the backbone, none per epoch.

The head trained is the model's own, so the checkpoint fit writes is the whole model, backbone and new
head, and vit.predict uses it like any other. Every process of a DDP job caches all the features (the
backbone pass is the cost either way) and trains on its shard of them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from .augment import eval_transform, train_transform
from .config import Runtime, TrainConfig
from .data import INTERPOLATIONS, Data, FolderLoader, TensorLoader, batching
from .folders import ImageFolderDataset, folder_samples
from .model import VisionTransformer
from .progress import Progress


@torch.no_grad()
def extract_features(model: VisionTransformer, loader: FolderLoader, rt: Runtime, desc: str
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D) float32, labels (N,)) of every batch of `loader` through the model in eval mode
    (no dropout, drop-path or PatchDropout) and rt's precision, on rt.device."""
    model.eval()
    feats, labels = [], []
    progress = Progress(len(loader), desc, rt.main)
    done = 0
    for i, (x, y) in enumerate(loader):
        with rt.autocast():
            tokens = model.forward_features(x.to(rt.device, non_blocking=True))  # (B, 1 + N, D)
        feats.append(model.pool(tokens).float())  # (B, 1 + N, D) -> (B, D)
        labels.append(y.to(rt.device))
        done += len(y)
        if progress.due(i + 1):
            progress.show(i + 1, done)
    return torch.cat(feats), torch.cat(labels)


def feature_data(root: str | Path, model: VisionTransformer, cfg: TrainConfig, img_size: int, rt: Runtime, *,
                 mean: Sequence[float], std: Sequence[float], views: int = 1, interpolation: str = "bicubic") -> Data:
    """The image folder at `root` as `model`'s cached features: a Data (features=True) whose train
    loader shuffles and batches like folder_data's (the same order for the same seed), over the eval
    view of each training image plus `views - 1` augmented ones, and whose val loader holds the eval
    view of each held-out image."""
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    train_samples, val_samples, classes = folder_samples(root, cfg.val_fraction, cfg.seed, rt.main)
    rt.place(model)
    interp = INTERPOLATIONS[interpolation]
    eval_tf = eval_transform(img_size, mean, std, interpolation=interp)
    # every process reads every image (no shard): each needs all the features
    in_order = dict(batching(cfg, rt, len(train_samples), train=False), rank=0, world_size=1, workers=rt.workers,
                    pin_memory=rt.device.type == "cuda")
    start = time.perf_counter()
    train_f, train_y = extract_features(model, FolderLoader(ImageFolderDataset(train_samples, eval_tf), **in_order),
                                        rt, "caching train features")
    if views > 1:
        augmented = ImageFolderDataset(train_samples, train_transform(img_size, mean, std, cfg.jitter,
                                                                       interpolation=interp), seed=cfg.seed)
        for view in range(1, views):
            augmented.set_epoch(view)  # view v of image i is seeded by (seed, v, i)
            f, y = extract_features(model, FolderLoader(augmented, **in_order), rt, f"caching train view {view + 1}")
            train_f, train_y = torch.cat([train_f, f]), torch.cat([train_y, y])
    val_f, val_y = extract_features(model, FolderLoader(ImageFolderDataset(val_samples, eval_tf), **in_order), rt,
                                    "caching val features")
    if rt.main:
        images = len(train_samples) * views + len(val_samples)
        seconds = time.perf_counter() - start
        print(f"cached {images} feature vectors ({views} view(s) of each training image) in {seconds:.0f} s "
              f"({images / max(seconds, 1e-9):.1f} img/s); training the head on them", file=sys.stderr)
    train = TensorLoader(train_f, train_y, **batching(cfg, rt, len(train_f), train=True))
    val = TensorLoader(val_f, val_y, **batching(cfg, rt, len(val_f), train=False))
    return Data(train, val, lambda f, y, g: (f, y), lambda f: f, classes, list(mean), list(std), "val", features=True)
