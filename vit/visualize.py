"""What a trained ViT looks at, and what its position embeddings encode, as two PNGs.

    python -m vit.visualize --checkpoint runs/RUN/best.safetensors --data mnist --index 7 --output runs/RUN
    python -m vit.visualize --checkpoint vit_base.safetensors --image cat.jpg

attention.png: the input as the model sees it; attention rollout over all layers (Abnar & Zuidema,
2020, "Quantifying Attention Flow in Transformers"), as a map and laid over the input; and the class
token's attention to each patch in the last layer, one map per head. Each map is scaled to its own
maximum (bright = most attention).

pos_embed.png: the cosine similarity of every patch's position embedding to every other patch's (the
ViT paper's Figure 7, centre): tile (r, c) of the g x g tiles shows how similar the embedding of
patch (r, c) is to those of all g x g patches; the colour scale runs from the lowest similarity to 1.
For 'sin' this is the fixed table rebuilt from the config; for 'learned', what training learned;
'none' has no such file.

The checkpoint is any that vit.weights.load_checkpoint reads (ours, timm, Hugging Face). Inputs:
`--data NAME --index I` is test image I of MNIST / Fashion-MNIST / CIFAR-10, normalised with the
dataset's mean and std; `--image FILE` is resized to the model's input size (small models, up to 64
px, see the whole image; larger ones get timm's evaluation resize + centre crop) and normalised with
the checkpoint's mean and std. Outputs go to --output (default ./viz; give the run folder to keep
them beside its curves.png).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import plot
from .augment import eval_transform, normalize
from .datasets import IMAGE_SHAPES, load_tensor_dataset
from .errors import VitError, run_cli
from .folders import read_image
from .model import VisionTransformer
from .predict import CROP_PCT
from .weights import load_checkpoint, saved_normalisation

SMALL_MODEL = 64  # input side up to which an image is resized whole (MNIST / CIFAR models see full frames)
CELL = 160  # pixels per panel of attention.png
MAX_COLS = 8  # panels per row of attention.png


def attention_rollout(maps: list[torch.Tensor]) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020) of per-layer attention maps, each (B, h, T, T).

    Per layer: average the heads, add the identity (the residual connection), renormalise each row
    to sum 1; then multiply through the layers, the last on the left: R = A_L ... A_2 A_1. Row i of
    the (B, T, T) result is how much each input token flows into output token i; rows sum to 1.
    """
    rollout = None
    for attn in maps:
        a = attn.float().mean(dim=1)  # (B, h, T, T) -> (B, T, T)
        a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    if rollout is None:
        raise ValueError("attention_rollout: no attention maps (a model with depth 0?)")
    return rollout


def position_similarity(pos: torch.Tensor) -> torch.Tensor:
    """Cosine similarity (N, N) between the rows of a position table (N, D), one row per patch."""
    unit = F.normalize(pos.float(), dim=-1)
    return unit @ unit.T  # (N, D) @ (D, N) -> (N, N)


def tile_grid(similarity: torch.Tensor, grid: int, gap: int = 1) -> np.ndarray:
    """The (N, N) similarity of N = grid**2 patches laid out as a grid x grid array of grid x grid tiles:
    tile (r, c) is row r * grid + c of `similarity` in raster order, tiles `gap` cells apart (NaN)."""
    g, s = grid, gap
    tiles = similarity.reshape(g, g, g, g)  # (N, N) -> (row r, col c, y, x): tile (r, c) holds pixels (y, x)
    tiles = F.pad(tiles, (0, s, 0, s), value=float("nan"))  # -> (g, g, g + s, g + s): a NaN gap after each tile
    big = tiles.permute(0, 2, 1, 3)  # -> (r, y, c, x), so rows of tiles stack into image rows
    big = big.reshape(g * (g + s), g * (g + s))  # -> (g (g + s), g (g + s))
    return big[: g * (g + s) - s, : g * (g + s) - s].numpy()  # no gap after the last tile


def _to_display(x: torch.Tensor, mean: list[float], std: list[float]) -> np.ndarray:
    """A normalised (C, H, W) input back as uint8 pixels: (H, W) grey or (H, W, 3) RGB."""
    m = torch.tensor(mean).view(-1, 1, 1)  # (C,) -> (C, 1, 1)
    s = torch.tensor(std).view(-1, 1, 1)  # (C,) -> (C, 1, 1)
    pixels = ((x * s + m).clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels[0].numpy() if pixels.shape[0] == 1 else pixels.permute(1, 2, 0).numpy()  # (C, H, W) -> (H, W, C)


def load_input(args: argparse.Namespace, model: VisionTransformer, info: dict
               ) -> tuple[torch.Tensor, np.ndarray, str | None]:
    """(model input (1, C, H, W) normalised, the same image as uint8 pixels, its true class name or None)."""
    cfg = model.cfg
    if args.data:
        ds = load_tensor_dataset(args.data, args.data_dir, download=not args.no_download)
        if not 0 <= args.index < len(ds.test_x):
            raise VitError(f"--index {args.index}: {args.data}'s test split has images 0 to {len(ds.test_x) - 1}")
        image = ds.test_x[args.index]  # (C, H, W) uint8
        if tuple(image.shape) != (cfg.in_chans, cfg.img_size, cfg.img_size):
            raise VitError(f"{args.checkpoint}: the model takes {cfg.in_chans}x{cfg.img_size}x{cfg.img_size} "
                           f"images, {args.data}'s are {'x'.join(map(str, image.shape))}")
        mean, std = list(ds.mean), list(ds.std)
        x = normalize(image, mean, std)
        label = ds.classes[int(ds.test_y[args.index])]
    else:
        mean, std = saved_normalisation(info["layout"], info["metadata"], cfg.in_chans)
        img = read_image(args.image, "L" if cfg.in_chans == 1 else "RGB")
        if cfg.img_size <= SMALL_MODEL:
            pixels = torch.from_numpy(np.array(img.resize((cfg.img_size, cfg.img_size), Image.BICUBIC)))
            pixels = pixels.reshape(cfg.img_size, cfg.img_size, -1).permute(2, 0, 1)  # (H, W[, C]) -> (C, H, W)
            x = normalize(pixels, mean, std)
        else:
            # grey models get the luminance: "L" -> RGB copies it into 3 equal planes, of which we keep one
            transform = eval_transform(cfg.img_size, mean, std, crop_pct=CROP_PCT, interpolation=Image.BICUBIC)
            x = transform(img, torch.Generator())[:cfg.in_chans]  # deterministic; the generator is unused
        label = None
    return x.unsqueeze(0), _to_display(x, mean, std), label  # (C, H, W) -> (1, C, H, W)


def _scaled(m: torch.Tensor) -> np.ndarray:
    """A non-negative map divided by its maximum, as float32 in [0, 1] (image_grid colours it)."""
    return (m / m.max().clamp(min=1e-12)).numpy().astype(np.float32)


def attention_figure(path: Path, model: VisionTransformer, x: torch.Tensor, display: np.ndarray, caption: str) -> None:
    """attention.png: input, rollout, rollout over the input, then the last layer's heads."""
    g = model.cfg.grid_size
    maps = model.attention_maps(x)  # depth x (1, h, 1 + N, 1 + N)
    cls_rollout = attention_rollout(maps)[0, 0, 1:].reshape(g, g)  # class token's row, patches only: (N,) -> (g, g)
    heads = maps[-1][0, :, 0, 1:].reshape(-1, g, g)  # last layer, class token -> patches: (h, N) -> (h, g, g)
    H, W = display.shape[:2]
    mask = F.interpolate(cls_rollout[None, None] / cls_rollout.max().clamp(min=1e-12), size=(H, W),
                         mode="bilinear", align_corners=False)[0, 0]  # (1, 1, g, g) -> (H, W) in [0, 1]
    rgb = display[..., None].repeat(3, axis=-1) if display.ndim == 2 else display  # (H, W[, 3]) -> (H, W, 3)
    overlay = rgb.astype(np.float32) / 255 * mask.numpy()[..., None]  # (H, W, 3) * (H, W, 1)
    depth = len(maps)
    images = [display, _scaled(cls_rollout), overlay] + [_scaled(h) for h in heads]
    titles = [caption, f"rollout, {depth} layer{'s' * (depth > 1)}", "input x rollout"]
    titles += [f"layer {depth} head {k + 1}" for k in range(len(heads))]
    plot.image_grid(path, images, titles, cols=min(len(images), MAX_COLS), cell=CELL)


def pos_embed_figure(path: Path, model: VisionTransformer) -> None:
    """pos_embed.png: every patch's position-embedding cosine similarity to all patches, as tiles."""
    cfg = model.cfg
    pos = model.pos_embed.detach()[0, 1:]  # (1, 1 + N, D) -> (N, D): the patches, without the class slot
    similarity = position_similarity(pos)
    big = tile_grid(similarity, cfg.grid_size)
    n = len(big)
    side = min(1600, max(720, 3 * n + 200))  # at least ~3 pixels per cell up to 24 x 24 patches (ViT-B/16 at 384)
    # The scale ends at 1 (each patch with itself) and starts at the lowest similarity: a sin-cos table's
    # similarities are all well above 0, and on a fixed -1..1 scale its structure would be invisible.
    plot.heatmap(path, big.tolist(), [""] * n, [""] * n,
                 f"cosine similarity of position embeddings ({cfg.pos_embed}, {cfg.grid_size}x{cfg.grid_size} patches)",
                 size=(side + 40, side), xlabel="input patch column", ylabel="input patch row",
                 vmin=float(similarity.min()), vmax=1.0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vit.visualize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="safetensors file: ours, timm or Hugging Face layout")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="an image file (any format Pillow reads)")
    source.add_argument("--data", choices=IMAGE_SHAPES, help="a test image of this dataset (with --index)")
    p.add_argument("--index", type=int, default=0, help="which test image of --data (default 0)")
    p.add_argument("--data-dir", type=Path, default=Path("data"), help="where datasets are (or are downloaded to)")
    p.add_argument("--no-download", action="store_true", help="never touch the network")
    p.add_argument("--output", type=Path, default=Path("viz"), help="folder for the PNGs (default ./viz)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not Path(args.checkpoint).is_file():
        raise VitError(f"{args.checkpoint}: no such checkpoint file")
    try:
        model, info = load_checkpoint(args.checkpoint)
    except OSError as e:  # unreadable (permissions, I/O): a message, like every other bad file
        raise VitError(f"{args.checkpoint}: cannot read ({e.strerror or e})") from None
    model.eval()
    x, display, label = load_input(args, model, info)
    caption = "input" if label is None else f"input: {label}"
    if model.cfg.num_classes:
        with torch.no_grad():
            probs = model(x).softmax(dim=-1)[0]  # (1, K) -> (K,)
        k = int(probs.argmax())
        name = info["classes"][k] if info["classes"] else f"class {k}"
        print(f"predicted: {name} ({100 * probs[k]:.1f}%)" + ("" if label is None else f", true class: {label}"))
        caption += f", predicted {name}"
    out = args.output  # default ./viz: never beside a checkpoint that may sit in a read-only place
    try:
        out.mkdir(parents=True, exist_ok=True)
        attention_figure(out / "attention.png", model, x, display, caption)
        print(f"wrote {out / 'attention.png'}")
        if model.pos_embed is None:
            print("the model has no position embedding (pos 'none'): no pos_embed.png")
        else:
            pos_embed_figure(out / "pos_embed.png", model)
            print(f"wrote {out / 'pos_embed.png'}")
    except OSError as e:
        raise VitError(f"--output {out}: cannot write ({e})") from None


if __name__ == "__main__":
    run_cli(main)
