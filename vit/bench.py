"""Benchmarks, printed as plain text tables. Every ratio is measured side by side in one run.

    python -m vit.bench data --data-dir data [--folder PATH]
    python -m vit.bench model      # fwd+bwd img/s per preset, explicit vs fused attention, vs matmul peak
    python -m vit.bench train      # a real training step (augment + model + AdamW) per recipe, fp32 vs bf16,
                                   # each recipe beside itself with one speed lever undone
    python -m vit.bench weights    # loading a ViT-B/16-size timm file vs reading its bytes; ViT-B/16 inference
    python -m vit.bench finetune   # ViT-B/16 fine-tuning img/s at 224 / 160 px, PatchDropout 0 / 0.5, fp32 vs
                                   # bf16 (where the CPU has AMX-BF16), projected minutes, the linear probe

`data`: time to load MNIST (train+test) and CIFAR-10 (binary) into uint8 tensors against the floor
of reading the same files' bytes, and the image-folder pipeline's images/s (decode + resize) with a
DataLoader at 0 and 2 workers.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

import torch.nn.functional as F
from torch import nn

from .augment import batch_augment
from .datasets import CIFAR_FILES, load_tensor_dataset
from .errors import VitError, run_cli
from .folders import ImageFolderDataset, folder_splits
from .formats import read_safetensors, write_safetensors
from .model import PRESETS, PatchEmbed, ViTConfig, VisionTransformer, count_params
from .recipes import RECIPE_PRESETS, RECIPES
from .runtime import has_amx_bf16
from .weights import load_checkpoint


def _best_times(fns: list[Callable[[], object]], repeat: int) -> list[float]:
    """Fastest of `repeat` runs of each fn, in seconds; runs interleave so all see the same machine load."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def _read_all(paths: list[Path]) -> None:
    """The floor: all files' bytes read into one new buffer of their total size.

    One fresh buffer, because a loader's result is that much fresh memory: reading file by file into
    reused buffers skips the page faults any real load pays and looks ~3x faster than it is.
    """
    buf = memoryview(np.empty(sum(p.stat().st_size for p in paths), dtype=np.uint8))
    offset = 0
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            offset += f.readinto(buf[offset:])


class _Resize:
    """The folder benchmark's transform: resize to size x size, to a float tensor (3, size, size) in [0, 1]."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: Image.Image, generator: torch.Generator) -> torch.Tensor:
        pixels = np.array(img.resize((self.size, self.size), Image.BILINEAR))  # a writable copy for torch
        return torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255)  # (H, W, 3) -> (3, H, W)


def _cifar_dir(data_dir: Path, tmp: Path) -> Path:
    """A data_dir holding cifar10/cifar-10-batches-bin: data_dir itself, or a copy built from the JPEG tarball."""
    if all((data_dir / "cifar10" / "cifar-10-batches-bin" / f).is_file() for f in CIFAR_FILES):
        return data_dir
    tool = data_dir.parent / "tools" / "cifar10_bin_from_jpg.py"
    if not tool.is_file():
        raise VitError(f"{data_dir / 'cifar10'} has no CIFAR-10 binary and {tool} is missing to build one")
    print(f"building CIFAR-10 binary with {tool} ...", file=sys.stderr)
    subprocess.run([sys.executable, str(tool), str(data_dir / "cifar10-jpg.tar.gz"), str(tmp / "cifar10")],
                   check=True, stdout=subprocess.DEVNULL)
    return tmp


def _jpeg_folder(data_dir: Path, tmp: Path) -> Path:
    """Extract the test split of cifar10-jpg.tar.gz (10,000 JPEGs in test/<class>/) into tmp."""
    with tarfile.open(data_dir / "cifar10-jpg.tar.gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith("test/")]
        # filter="data" confines extraction to tmp; extract_tar's per-file fsync is too slow for 10k files.
        tar.extractall(tmp, members=members, filter="data")
    return tmp / "test"


def _folder_rate(samples: list, size: int, workers: int, batch_size: int) -> float:
    """Images per second through ImageFolderDataset + DataLoader, worker start-up included."""
    loader = torch.utils.data.DataLoader(ImageFolderDataset(samples, _Resize(size)),
                                         batch_size=batch_size, num_workers=workers)
    start = time.perf_counter()
    for _ in loader:
        pass
    return len(samples) / (time.perf_counter() - start)


def bench_data(args: argparse.Namespace) -> None:
    """Print load time vs the read-the-bytes floor for the tensor datasets, and folder images/s."""
    data_dir = Path(args.data_dir)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cifar_root = _cifar_dir(data_dir, tmp)
        mnist_files = sorted((data_dir / "mnist").glob("*-ubyte*"))
        cifar_files = [cifar_root / "cifar10" / "cifar-10-batches-bin" / f for f in CIFAR_FILES]
        rows = []
        for name, root, files in [("mnist", data_dir, mnist_files), ("cifar10", cifar_root, cifar_files)]:
            floor, load = _best_times([partial(_read_all, files),
                                       partial(load_tensor_dataset, name, root, download=False)], args.repeat)
            megabytes = sum(f.stat().st_size for f in files) / 1e6
            rows.append((f"{name} load train+test ({megabytes:.0f} MB)", f"{load:.3f} s",
                         f"{floor:.3f} s", f"{load / floor:.2f}x"))

        folder = Path(args.folder) if args.folder else _jpeg_folder(data_dir, tmp)
        train, val, _ = folder_splits(folder, val_fraction=0.0)
        samples = (train + val)[:args.folder_images]
        for workers in (0, 2):
            rate = _folder_rate(samples, args.size, workers, args.batch_size)
            rows.append((f"folder decode+resize {args.size}px, {workers} workers ({len(samples)} imgs)",
                         f"{rate:.0f} img/s", "", ""))

    _table(("what", "time / rate", "floor (read bytes)", "ratio"), rows)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip(), flush=True)


def matmul_peak(threads: int, n: int = 2048, repeat: int = 5) -> float:
    """Measured fp32 GFLOP/s of an n x n x n matmul: the machine's practical peak for this run."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    (best,) = _best_times([lambda: a @ b], repeat)
    return 2 * n**3 / best / 1e9


def embed_flops(cfg: ViTConfig) -> float:
    """Forward multiply-add FLOPs of the patch embedding for one image, counted on the real layers
    (so a conv stem's 3x3 convolutions are included): 2 * outputs * inputs-per-output per layer."""
    embed = PatchEmbed(cfg)
    total = 0

    def count(layer: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        nonlocal total
        per_output = layer.in_features if isinstance(layer, nn.Linear) else \
            layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
        total += 2 * out.numel() * per_output

    for layer in embed.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            layer.register_forward_hook(count)
    with torch.no_grad():
        embed.eval()(torch.zeros(1, cfg.in_chans, cfg.img_size, cfg.img_size))
    return total


def vit_flops(cfg: ViTConfig, patch_dropout: float = 0.0) -> float:
    """Forward multiply-add FLOPs of one image (matmuls, convolutions and attention; norms and
    activations ignored). Training with PatchDropout leaves 1 + round(N * (1 - patch_dropout)) tokens
    after the embedding."""
    kept = round(cfg.num_patches * (1 - patch_dropout)) if patch_dropout > 0 else cfg.num_patches
    n, d, hidden = kept + 1, cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio)
    block = 2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d + 2 * 2 * n * d * hidden
    return cfg.depth * block + embed_flops(cfg) + 2 * d * max(cfg.num_classes, 0)


def _stepper(cfg: ViTConfig, batch: int, train: bool, amp: bool = False, augment: Callable | None = None,
             fused: bool = False, patch_dropout: float = 0.0) -> Callable[[], None]:
    """One training step (augment + forward + backward + AdamW) or inference forward on a fixed random
    batch, as a function; built and run once here so allocations and kernel choice are not timed."""
    torch.manual_seed(0)
    model = VisionTransformer(cfg).train(train)
    model.set_fused_attn(fused)
    model.patch_dropout = patch_dropout
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, 256, (batch, cfg.in_chans, cfg.img_size, cfg.img_size), dtype=torch.uint8)
    y = torch.randint(0, max(cfg.num_classes, 1), (batch,))
    g = torch.Generator().manual_seed(0)

    def step() -> None:
        with torch.set_grad_enabled(train):
            inputs = x.float() / 255
            if augment is not None:
                inputs = augment(inputs, g)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                logits = model(inputs)
            if train:
                F.cross_entropy(logits.float(), y).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

    step()
    return step


def _run_steps(step: Callable[[], None], steps: int) -> None:
    for _ in range(steps):
        step()


def _step_rate(cfg: ViTConfig, batch: int, steps: int, train: bool, amp: bool = False,
               augment: Callable | None = None, fused: bool = False, patch_dropout: float = 0.0) -> float:
    """Images/s of `steps` training steps or inference forwards (see _stepper)."""
    step = _stepper(cfg, batch, train, amp, augment, fused, patch_dropout)
    (seconds,) = _best_times([partial(_run_steps, step, steps)], repeat=1)
    return batch * steps / seconds


def bench_model(args: argparse.Namespace) -> None:
    """Forward+backward img/s of the dataset presets and ViT-B/16 inference, explicit vs fused attention."""
    peak = matmul_peak(args.threads)
    print(f"fp32 matmul peak (2048^3, {args.threads} threads): {peak:.0f} GFLOP/s", flush=True)
    rows = []
    cases = [("mnist", "train", 256), ("cifar10", "train", 256), ("vit_base_patch16_224", "infer", 8)]
    for preset, mode, batch in cases:
        cfg = ViTConfig(**PRESETS[preset])
        drop = RECIPES[preset].patch_dropout if mode == "train" else 0.0  # as the dataset's recipe trains it
        rates = [_step_rate(cfg, batch, args.steps, train=mode == "train", fused=fused, patch_dropout=drop)
                 for fused in (False, True)]
        gflop = vit_flops(cfg, drop) * (3 if mode == "train" else 1) / 1e9
        best = max(rates)
        rows.append((preset, mode, str(batch), f"{rates[0]:.1f}", f"{rates[1]:.1f}", f"{rates[0] / rates[1]:.2f}x",
                     f"{gflop * best:.0f}", f"{100 * gflop * best / peak:.0f}%"))
    _table(("preset", "mode", "batch", "explicit img/s", "fused img/s", "explicit/fused", "GFLOP/s (best)",
            "of peak"), rows)


def bench_train(args: argparse.Namespace) -> None:
    """A real training step per recipe: batch augmentation + fwd/bwd + AdamW; fp32 vs bf16 autocast."""
    peak = matmul_peak(args.threads)
    print(f"fp32 matmul peak (2048^3, {args.threads} threads): {peak:.0f} GFLOP/s", flush=True)
    rows = []
    # each recipe as train.py runs it on the CPU (explicit attention), then with one lever undone:
    # (data, label, model config change, run change: batch, patch_dropout, fused attention)
    cases = [("mnist", "mnist", {}, {}), ("mnist", "mnist without PatchDropout", {}, {"patch_dropout": 0.0}),
             ("mnist", "mnist with fused attention", {}, {"fused": True}),
             ("mnist", "mnist at batch 64", {}, {"batch": 64}),
             ("cifar10", "cifar10", {}, {}), ("cifar10", "cifar10 without PatchDropout", {}, {"patch_dropout": 0.0}),
             ("cifar10", "cifar10 with fused attention", {}, {"fused": True}),
             ("cifar10", "cifar10 --patch stem", {"patch_embed": "stem"}, {})]
    built = []
    for data, label, change, run in cases:
        recipe = RECIPES[data]
        cfg = ViTConfig(**{**PRESETS[RECIPE_PRESETS[data]], **change})
        run = {"batch": recipe.batch_size, "patch_dropout": recipe.patch_dropout, "fused": False, **run}
        built.append((data, label, cfg, run, batch_augment(recipe.aug, recipe.crop_padding)))
    # fp32 cases take turns, best of --repeat rounds each, so the ratios between rows see the same
    # machine; this CPU's speed drifts by tens of percent within minutes
    steppers = [_stepper(cfg, run["batch"], True, augment=augment, fused=run["fused"],
                         patch_dropout=run["patch_dropout"]) for _, _, cfg, run, augment in built]
    seconds = _best_times([partial(_run_steps, step, args.steps) for step in steppers], args.repeat)
    for (data, label, cfg, run, augment), fp32_seconds in zip(built, seconds):
        batch = run["batch"]
        fp32 = batch * args.steps / fp32_seconds
        bf16 = _step_rate(cfg, batch, max(1, args.steps // 4), True, amp=True, augment=augment, fused=run["fused"],
                          patch_dropout=run["patch_dropout"])
        gflops = 3 * vit_flops(cfg, run["patch_dropout"]) * fp32 / 1e9
        rows.append((label, f"{count_params(VisionTransformer(cfg)) / 1e6:.2f}M",
                     str(batch), f"{fp32:.0f}", f"{bf16:.0f}", f"{bf16 / fp32:.2f}x",
                     f"{gflops:.0f}", f"{100 * gflops / peak:.0f}%", f"{60_000 / fp32 if data == 'mnist' else 50_000 / fp32:.0f}"))
    _table(("recipe", "params", "batch", "fp32 img/s", "bf16 img/s", "bf16/fp32", "GFLOP/s", "of peak",
            "s/epoch"), rows)


def bench_weights(args: argparse.Namespace) -> None:
    """Load a random ViT-B/16-size timm-layout file with our loader vs reading its bytes."""
    torch.set_num_threads(args.threads)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in VisionTransformer(ViTConfig(**PRESETS["vit_base_patch16_224"])).state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp_name:
        path = Path(tmp_name) / "vit_base_patch16_224.safetensors"
        write_safetensors(path, {k: torch.randn(s) * 0.02 for k, s in shapes.items()})
        floor, read, load = _best_times([partial(_read_all, [path]), partial(read_safetensors, path),
                                         partial(load_checkpoint, path)], args.repeat)
        size = path.stat().st_size / 1e6
        model, _ = load_checkpoint(path)
    model.set_fused_attn(True)
    model.eval()
    x = torch.randn(8, 3, 224, 224)
    with torch.no_grad():
        model(x)
        start = time.perf_counter()
        for _ in range(args.steps):
            model(x)
        rate = 8 * args.steps / (time.perf_counter() - start)
    _table(("what", "time / rate", "vs reading the bytes"), [
        (f"read the bytes ({size:.0f} MB)", f"{floor:.3f} s", "1.00x"),
        ("read_safetensors", f"{read:.3f} s", f"{read / floor:.2f}x"),
        ("load_checkpoint (checked, into the model)", f"{load:.3f} s", f"{load / floor:.2f}x"),
        ("ViT-B/16 inference, batch 8, fused attention", f"{rate:.1f} img/s", ""),
    ])


def bench_finetune(args: argparse.Namespace) -> None:
    """ViT-B/16 as finetune.py trains it (fused attention, drop-path 0.1, AdamW): training and inference
    img/s at 224 and 160 px (pos_embed resampled: 196 and 100 tokens), PatchDropout 0 and 0.5, fp32 and
    bf16 autocast; the minutes 10 epochs of a 1,500-image folder take, and the linear probe's seconds."""
    peak = matmul_peak(args.threads)
    amx = has_amx_bf16()
    bf16 = args.bf16 == "yes" or (args.bf16 == "auto" and amx)
    print(f"fp32 matmul peak (2048^3, {args.threads} threads): {peak:.0f} GFLOP/s; AMX-BF16: {'yes' if amx else 'no'}"
          f"{'' if bf16 else ' (bf16 not timed: --bf16 yes times it anyway)'}; batch {args.batch}, {args.steps} "
          "timed steps per case", flush=True)
    precisions = (False, True) if bf16 else (False,)
    rows = []
    for img_size, mode, drop in [(224, "train", 0.0), (224, "train", 0.5), (160, "train", 0.0), (160, "train", 0.5),
                                 (224, "infer", 0.0), (160, "infer", 0.0)]:
        cfg = ViTConfig(**{**PRESETS["vit_base_patch16_224"], "img_size": img_size, "num_classes": 10,
                           "drop_path_rate": 0.1})
        rates = {amp: _step_rate(cfg, args.batch, args.steps, train=mode == "train", amp=amp, fused=True,
                                 patch_dropout=drop) for amp in precisions}
        best = max(rates.values())
        if mode == "train":  # 10 epochs of the folder, training steps only (evaluation adds ~1/3 of a pass)
            cost = f"{10 * args.folder_images / best / 60:.0f} min for 10 epochs of {args.folder_images}"
        else:
            cost = f"{args.probe_images / best:.0f} s to cache {args.probe_images} images" if img_size == 224 else ""
        rows.append((f"{img_size} px ({cfg.num_patches} tokens)", mode, f"{drop:g}", f"{rates[False]:.2f}",
                     f"{rates[True]:.2f}" if bf16 else "-", f"{rates[True] / rates[False]:.2f}x" if bf16 else "-", cost))
    _table(("resolution", "mode", "PatchDropout", "fp32 img/s", "bf16 img/s", "bf16/fp32", "at the faster"), rows)
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(**PRESETS["vit_base_patch16_224"])).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        fp32 = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x).float()
    print(f"bf16 vs fp32 logits (ViT-B/16, random init, 2 images): max |difference| {(low - fp32).abs().max():.4f} "
          f"= {100 * (low - fp32).abs().max() / fp32.abs().max():.2f}% of the largest |logit|, same top class: "
          f"{bool(torch.equal(low.argmax(-1), fp32.argmax(-1)))}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vit.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", help="dataset loading and image-folder pipeline speed")
    data.add_argument("--data-dir", default="data",
                      help="holds mnist/, cifar10-jpg.tar.gz, and optionally cifar10/cifar-10-batches-bin/")
    data.add_argument("--folder", default=None,
                      help="image folder to time (default: the CIFAR-10 test JPEGs extracted to a temp dir)")
    data.add_argument("--folder-images", type=int, default=10_000, help="images to time in the folder")
    data.add_argument("--size", type=int, default=64, help="resize target for the folder pipeline")
    data.add_argument("--batch-size", type=int, default=256)
    data.add_argument("--repeat", type=int, default=5, help="timed runs per load; the fastest is reported")
    data.set_defaults(run=bench_data)
    for name, run, help_text, steps in [
            ("model", bench_model, "fwd+bwd img/s per preset: explicit vs fused attention, vs matmul peak", 5),
            ("train", bench_train, "training-step img/s per recipe: fp32 vs bf16 autocast, vs matmul peak", 8),
            ("weights", bench_weights, "ViT-B/16 file load vs reading its bytes; ViT-B/16 inference", 3)]:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
        sub.add_argument("--steps", type=int, default=steps, help="timed steps per case")
        sub.add_argument("--repeat", type=int, default=3,
                         help="timed rounds (train: all cases take turns; weights: loads); the fastest is reported")
        sub.set_defaults(run=run)
    ft = commands.add_parser("finetune", help="ViT-B/16 fine-tuning and probe img/s: 224 / 160 px, PatchDropout, "
                                              "fp32 vs bf16")
    ft.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    ft.add_argument("--steps", type=int, default=2, help="timed steps per case (after one untimed)")
    ft.add_argument("--batch", type=int, default=16, help="images per step")
    ft.add_argument("--bf16", choices=("auto", "yes", "no"), default="auto",
                    help="time bf16 autocast too (auto: where the CPU has AMX-BF16; elsewhere it is 10-25x slower)")
    ft.add_argument("--folder-images", type=int, default=1500, help="the folder size the minutes are projected for")
    ft.add_argument("--probe-images", type=int, default=2400, help="images the probe's caching time is projected for")
    ft.set_defaults(run=bench_finetune)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    run_cli(main)
