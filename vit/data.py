"""The loaders a run trains on, and the per-batch preparation: `Data`, built by `tensor_data` or `folder_data`.

A built-in dataset (vit/datasets.py), or an image folder decoded once (vit/folders.py), is held as
uint8 tensors on the training device and batched by `TensorLoader`, which gathers each batch with
one index op (augmentation is then done per batch, vit/augment.py: the airbench way). An image
folder with a per-image transform (random-resized-crop) is decoded in every epoch, one item at a
time in DataLoader workers, by `FolderLoader`. Either becomes a `Data`: the loaders plus the
per-batch preparation that `vit.engine.fit` trains on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch
from PIL import Image

from .augment import (BATCH_PRESETS, aug_problem, batch_augment, eval_transform, mix_seed, mixup_cutmix, normalize,
                      train_transform)
from .config import Runtime, TrainConfig
from .datasets import load_tensor_dataset, select_classes
from .errors import VitError
from .folders import ImageFolderDataset, decode_all, folder_samples, pixel_stats
from .memory import check_fits_in_memory


class TensorLoader:
    """Iterate (x, y) batches of in-memory tensors with one gather per batch, no per-sample Python.

    The order is a pure function of (seed, epoch): the permutation is drawn on the CPU (so it is the
    same whatever the data's device) and moved to the data's device. With world_size > 1, rank r
    takes the disjoint shard perm[r::world_size]; the shards cover every sample exactly once (no
    padding duplicates). With drop_last every rank yields the same number of full batches,
    (N // world_size) // batch_size, so DDP ranks stay in step; without it a rank may have one batch
    more than another.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool,
                 drop_last: bool, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation for `epoch` (call before iterating, as with DistributedSampler)."""
        self.epoch = epoch

    def _shard_size(self) -> int:
        n = len(self.x)
        if self.drop_last:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        size = self._shard_size()
        return size // self.batch_size if self.drop_last else -(-size // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x)
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        order = order[self.rank::self.world_size][:self._shard_size()].to(self.x.device)
        for i in range(len(self)):
            index = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.x[index], self.y[index.to(self.y.device)]


class _IndexBatches:
    """A DataLoader batch_sampler view of a TensorLoader over sample indices."""

    def __init__(self, indices: TensorLoader) -> None:
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[list[int]]:
        return (batch.tolist() for batch, _ in self.indices)


_WORKER_ERROR_MARK = f"\n{VitError.__module__}.{VitError.__qualname__}: "  # how a worker's traceback names VitError


class FolderLoader:
    """Batches (x, y) of an ImageFolderDataset, decoded in DataLoader workers.

    The order (and each rank's shard) is TensorLoader's, drawn over the sample indices, so it is a
    pure function of (seed, epoch) like the in-memory datasets; the augmentation is seeded per item
    by the dataset. Workers are re-created every epoch, so they see set_epoch.
    """

    def __init__(self, dataset: ImageFolderDataset, batch_size: int, *, shuffle: bool, drop_last: bool,
                 seed: int = 0, rank: int = 0, world_size: int = 1, workers: int = 0,
                 pin_memory: bool = False) -> None:
        index = torch.arange(len(dataset))
        self.dataset = dataset
        self.indices = TensorLoader(index, index, batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed,
                                    rank=rank, world_size=world_size)
        self.loader = torch.utils.data.DataLoader(dataset, batch_sampler=_IndexBatches(self.indices),
                                                  num_workers=workers, pin_memory=pin_memory)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)
        self.indices.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            yield from self.loader
        except VitError as e:
            # A worker's error comes back as "Caught VitError in DataLoader worker N. Original Traceback
            # ...<the traceback>... vit.errors.VitError: <message>"; the user gets the message alone.
            _, mark, message = str(e).rpartition(_WORKER_ERROR_MARK)
            if not mark:  # raised in this process (workers=0): already just the message
                raise
            raise VitError(message.rstrip("\n")) from None


def batching(cfg: TrainConfig, rt: Runtime, samples: int, train: bool) -> dict:
    """How this process batches a set of `samples` (TensorLoader's and FolderLoader's arguments): its share
    of cfg.batch_size, over its own shard of the set. Training shuffles by cfg.seed and takes full batches
    only, so that DDP ranks stay in step (a set smaller than one batch trains whole); evaluation goes in
    order and keeps the last, partial batch."""
    per_process = cfg.batch_size // rt.world_size
    return dict(batch_size=per_process, shuffle=train, drop_last=train and samples >= per_process * rt.world_size,
                seed=cfg.seed, rank=rt.rank, world_size=rt.world_size)


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INTERPOLATIONS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


@dataclass
class Data:
    """What `vit.engine.fit` trains on. Loaders yield (x, y) and have set_epoch(epoch) and len().

    prepare_train(x, y, generator) -> (inputs, targets) turns a raw batch into model inputs and
    class indices (B,) or soft targets (B, K): uint8 -> float, augmentation, normalisation, mixup.
    prepare_eval(x) -> inputs does the same without randomness. With `features`, the loaders yield
    a frozen backbone's pooled features (B, D) instead of images (vit.probe), and fit trains and
    scores the model's head alone.
    """
    train: Iterable
    held_out: Iterable  # the images scored during training: a validation split, or a dataset's test set (`split`)
    prepare_train: Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
    prepare_eval: Callable[[torch.Tensor], torch.Tensor]
    classes: list[str]
    mean: list[float]  # normalisation of the inputs, saved in checkpoints for vit.predict
    std: list[float]
    split: str = "val"  # what `held_out` is: "test" (a dataset's official test set) or "val" (a held-out split)
    features: bool = False  # the loaders yield cached features (B, D), not images (see vit.probe)


def _mixer(cfg: TrainConfig, num_classes: int) -> Callable:
    """(x, y, generator) -> (x, targets): mixup/cutmix soft targets when enabled, else labels as they are."""
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return lambda x, y, g: (x, y)
    return lambda x, y, g: mixup_cutmix(x, y, num_classes, g, mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix,
                                        smoothing=cfg.smoothing)


def tensor_data(name: str, data_dir: str | Path, cfg: TrainConfig, rt: Runtime | None = None,
                download: bool = True, classes: Sequence[str] | None = None) -> Data:
    """MNIST / Fashion-MNIST / CIFAR-10 as uint8 tensors on the training device, augmented per batch
    (the airbench way: cfg.aug, cfg.crop_padding, mixup/cutmix), optionally only some `classes`.
    Evaluates on the official test set."""
    problem = aug_problem(cfg.aug, folder=False)
    if problem:
        raise VitError(problem)
    ds = load_tensor_dataset(name, data_dir, download=download)
    if classes:
        ds = select_classes(ds, classes)
    return in_memory_data((ds.train_x, ds.train_y), (ds.test_x, ds.test_y), ds.classes, ds.mean, ds.std, cfg,
                          rt or Runtime(), "test")


def in_memory_data(train: tuple[torch.Tensor, torch.Tensor], held_out: tuple[torch.Tensor, torch.Tensor],
                   classes: list[str], mean: Sequence[float], std: Sequence[float], cfg: TrainConfig, rt: Runtime,
                   split: str) -> Data:
    """The loaders of images held as uint8 tensors, (images, labels) to train on and to score, moved to the
    training device: batches gathered by TensorLoader, augmented per batch (cfg.aug, cfg.crop_padding),
    normalised with `mean` and `std`, mixed. `split` names what `held_out` is ("test" or "val")."""
    (train_x, train_y), (held_x, held_y) = [(x.to(rt.device), y.to(rt.device)) for x, y in (train, held_out)]
    mean, std = list(mean), list(std)
    # evaluation in training-size batches: larger ones ran slower on the CPU (the attention maps no longer
    # fit in cache)
    loaders = (TensorLoader(train_x, train_y, **batching(cfg, rt, len(train_x), train=True)),
               TensorLoader(held_x, held_y, **batching(cfg, rt, len(held_x), train=False)))
    augment, mix = batch_augment(cfg.aug, cfg.crop_padding), _mixer(cfg, len(classes))

    def prepare_train(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = augment(x.float() / 255, g)  # on [0, 1], so padding and fill are black
        return mix(normalize(x, mean, std), y, g)

    return Data(*loaders, prepare_train, lambda x: normalize(x, mean, std), classes, mean, std, split)


def folder_data(root: str | Path, cfg: TrainConfig, img_size: int, rt: Runtime | None = None, *,
                interpolation: str = "bicubic", mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None) -> Data:
    """An image folder (see `folder_splits`) in one of two ways, by cfg.aug:

    - a batch preset ('none', 'cifar', 'crop', 'flip', 'mnist', as for the built-in datasets): every image is
      decoded once, resized (shorter side to img_size) and centre-cropped, and kept as uint8 tensors
      on the device, augmented per batch. Fast, for folders that fit in memory (N x 3 x S x S bytes);
      normalised with the training images' own mean/std unless `mean`/`std` are given;
    - a per-image transform, 'rrc' or 'resize': decoded per item in every epoch, in rt.workers DataLoader
      workers, with random-resized-crop + flip (+ cfg.jitter), or the eval view (resize + centre crop);
      ImageNet's mean/std by default.
    Validation: resize + centre crop (the first: no margin; the second: timm's crop_pct 0.9)."""
    rt = rt or Runtime()
    problem = aug_problem(cfg.aug, folder=True)
    if problem:
        raise VitError(problem)
    train_samples, val_samples, classes = folder_samples(root, cfg.val_fraction, cfg.seed, rt.main)
    interp = INTERPOLATIONS[interpolation]
    if cfg.aug in BATCH_PRESETS:
        check_fits_in_memory(root, len(train_samples) + len(val_samples), img_size, cfg.batch_size // rt.world_size)
        x, y = decode_all(train_samples + val_samples, img_size, interp, rt.workers)  # one pass names every bad file
        (train_x, val_x), (train_y, val_y) = x.split([len(train_samples), len(val_samples)]), \
            y.split([len(train_samples), len(val_samples)])
        own_mean, own_std = pixel_stats(train_x)
        mean = tuple(mean) if mean is not None else own_mean
        std = tuple(std) if std is not None else own_std
        return in_memory_data((train_x, train_y), (val_x, val_y), classes, mean, std, cfg, rt, "val")
    mean, std = mean or IMAGENET_MEAN, std or IMAGENET_STD
    eval_tf = eval_transform(img_size, mean, std, interpolation=interp)
    train_tf = (eval_tf if cfg.aug == "resize"
                else train_transform(img_size, mean, std, cfg.jitter, interpolation=interp))
    loading = dict(workers=rt.workers, pin_memory=rt.device.type == "cuda")
    train = FolderLoader(ImageFolderDataset(train_samples, train_tf, seed=cfg.seed),
                         **batching(cfg, rt, len(train_samples), train=True), **loading)
    val = FolderLoader(ImageFolderDataset(val_samples, eval_tf), **batching(cfg, rt, len(val_samples), train=False),
                       **loading)
    return Data(train, val, _mixer(cfg, len(classes)), lambda x: x, classes, list(mean), list(std), "val")
