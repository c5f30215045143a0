"""A Vision Transformer (Dosovitskiy et al., 2020, "An Image is Worth 16x16 Words") in one file.

This file imports only torch and the standard library, so it can be copied on its own.

The image is cut into P x P patches, each patch becomes one token (a vector of size D), a learnable
class token is put in front, position embeddings are added, and a stack of pre-norm transformer
blocks mixes the tokens. The class token's final state (or the mean of the patch tokens) is
classified by a linear head.

Parameter names follow timm's `vision_transformer.py` (`patch_embed.proj`, `cls_token`, `pos_embed`,
`blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm`, `head`), so a timm checkpoint of
`vit_base_patch16_224` loads key for key.

Shapes: images (B, C, H, W); tokens (B, N, D); attention heads (B, h, N, d) with d = D / h.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class ViTConfig:
    """A ViT's architecture, saved in every checkpoint; each value is checked when the config is made
    (the checks are at the end of this file). Frozen: `dataclasses.replace(cfg, ...)` makes another."""

    img_size: int = 224  # input height = width, in pixels
    patch_size: int = 16  # side P of a square patch; img_size must be a multiple of it
    in_chans: int = 3  # image channels: 1 for MNIST, 3 for RGB
    num_classes: int = 1000  # size of the classification head; 0 = no head (features only)
    embed_dim: int = 768  # token width D
    depth: int = 12  # number of transformer blocks
    num_heads: int = 12  # attention heads h; each head has width D / h
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * D
    qkv_bias: bool = True  # bias in the q, k, v projections (timm and the ViT paper: yes)
    drop_rate: float = 0.0  # dropout after position embedding, in the MLP/projections and before the head
    attn_drop_rate: float = 0.0  # dropout on the attention probabilities
    drop_path_rate: float = 0.0  # stochastic depth; grows linearly from 0 (first block) to this (last)
    patch_embed: str = "conv"  # 'manual' (reshape + Linear), 'conv' (P x P stride-P Conv2d), 'stem' (conv stem)
    pos_embed: str = "learned"  # 'learned' (parameter), 'sin' (fixed 2-D sin-cos table), 'none'
    global_pool: str = "token"  # 'token' = class token's output, 'avg' = mean of the patch tokens
    norm_eps: float = 1e-6  # LayerNorm epsilon (timm uses 1e-6; Hugging Face's ViT 1e-12)
    # Only the architecture lives here (it is saved in every checkpoint). Training-time knobs (the
    # PatchDropout rate) and runtime choices (fused vs explicit attention) are model attributes set at
    # run time: `model.patch_dropout`, `model.set_fused_attn()`.

    def __post_init__(self) -> None:
        for f in fields(self):  # each value on its own: its type, then its range
            problem = _field_problem(f.name, getattr(self, f.name))
            if problem:
                raise ValueError(f"{f.name} {problem}")
            if _FIELD_TYPES[f.name] == "float":  # a JSON file may write 4.0 as 4
                object.__setattr__(self, f.name, float(getattr(self, f.name)))
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.pos_embed == "sin" and self.embed_dim % 4:
            raise ValueError(f"pos_embed='sin' needs embed_dim divisible by 4, got {self.embed_dim}")

    @property
    def grid_size(self) -> int:
        """Patches per side: the token grid is grid_size x grid_size."""
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2


# Named configurations. The small ones are tuned for the datasets (README, "How the recipes' defaults were chosen");
# the */16 ones are timm's architectures, so their checkpoints load key for key.
PRESETS: dict[str, dict] = {
    "mnist": dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=6, num_heads=4,
                  mlp_ratio=2.0, patch_embed="manual", pos_embed="sin"),
    "cifar10": dict(img_size=32, patch_size=4, in_chans=3, num_classes=10, embed_dim=128, depth=6, num_heads=4,
                    mlp_ratio=2.0, patch_embed="manual", pos_embed="sin"),
    "vit_tiny_patch16_224": dict(embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch16_224": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16_224": dict(embed_dim=768, depth=12, num_heads=12),
}


def sincos_pos_embed(grid_size: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position table of shape (grid_size**2, dim), rows in raster order.

    Layout (MAE's 2-D extension of the Transformer's 1-D table, with the row first): channels
    [0, D/2) encode the patch's row y, channels [D/2, D) its column x. Within each half, the first
    D/4 channels are sin(pos * w_k) and the next D/4 are cos(pos * w_k), with w_k = 10000^(-k / (D/4)).
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (D/4,)
    pos = torch.arange(grid_size, dtype=torch.float64)
    y, x = torch.meshgrid(pos, pos, indexing="ij")  # (G, G) each; y = row, x = column

    def encode(coord: torch.Tensor) -> torch.Tensor:
        angles = coord.reshape(-1, 1) * omega  # (G*G, 1) * (D/4,) -> (G*G, D/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (G*G, D/2)

    return torch.cat([encode(y), encode(x)], dim=1).float()  # (G*G, D)


class PatchEmbed(nn.Module):
    """Cuts (B, C, H, W) images into P x P patches and projects each to a D-dim token: (B, N, D).

    'manual' flattens each patch in (channel, row, column) order and applies `proj`, an nn.Linear;
    its weight is exactly a 'conv' weight (D, C, P, P) reshaped to (D, C*P*P), so both compute the
    same function. 'stem' replaces the single patchify layer by stride-2 3x3 convolutions with
    BatchNorm and ReLU (Xiao et al., 2021, "Early convolutions help transformers see better"),
    ending in a 1x1 `proj` onto the same token grid.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.kind, self.patch_size = cfg.patch_embed, cfg.patch_size
        P, C, D = cfg.patch_size, cfg.in_chans, cfg.embed_dim
        if self.kind == "manual":
            self.proj = nn.Linear(C * P * P, D)
        elif self.kind == "conv":
            self.proj = nn.Conv2d(C, D, kernel_size=P, stride=P)
        else:
            # Halve the resolution with 3x3 stride-2 convs while P has factors of 2, then cover what is
            # left of P (e.g. 7 for MNIST's 28 / 4) with one stride-r conv; widths double up to D.
            halvings = (P & -P).bit_length() - 1  # the power of 2 in P
            rest = P >> halvings
            widths = [max(D >> (halvings - i), 16) for i in range(1, halvings + 1)]
            layers, c_in = [], C
            for w in widths:
                layers += [nn.Conv2d(c_in, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
                c_in = w
            if rest > 1 or not layers:
                layers += [nn.Conv2d(c_in, D, rest, stride=rest, bias=False), nn.BatchNorm2d(D), nn.ReLU()]
                c_in = D
            self.stem = nn.Sequential(*layers)
            self.proj = nn.Conv2d(c_in, D, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "manual":
            B, C, H, W = x.shape
            P = self.patch_size
            x = x.reshape(B, C, H // P, P, W // P, P)  # (B, C, H, W) -> (B, C, gh, P, gw, P)
            x = x.permute(0, 2, 4, 1, 3, 5)  # -> (B, gh, gw, C, P, P): one (C, P, P) block per patch
            x = x.reshape(B, (H // P) * (W // P), C * P * P)  # -> (B, N, C*P*P), patches in raster order
            return self.proj(x)  # (B, N, D)
        if self.kind == "stem":
            x = self.stem(x)
        x = self.proj(x)  # (B, D, gh, gw)
        return x.flatten(2).transpose(1, 2)  # (B, D, gh, gw) -> (B, D, N) -> (B, N, D)


class Attention(nn.Module):
    """Multi-head self-attention: softmax(q k^T / sqrt(d)) v per head, then an output projection.

    One `qkv` Linear computes all three; its output rows are [q; k; v], each split head-major into
    h heads of width d (timm's layout).
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.embed_dim // cfg.num_heads
        self.scale = self.head_dim**-0.5
        self.fused = True  # F.scaled_dot_product_attention; False: the explicit path (a runtime choice)
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim, bias=cfg.qkv_bias)
        self.attn_drop = nn.Dropout(cfg.attn_drop_rate)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.proj_drop = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns the attended tokens (B, N, D) and, if need_weights, the probabilities (B, h, N, N)."""
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # (B, N, 3D) -> (B, N, 3, h, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # -> (3, B, h, N, d) -> 3 x (B, h, N, d)
        attn = None
        if self.fused and not need_weights:
            p = self.attn_drop.p if self.training else 0.0
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, h, N, d)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, h, N, d) @ (B, h, d, N) -> (B, h, N, N)
            attn = attn.softmax(dim=-1)
            x = self.attn_drop(attn) @ v  # (B, h, N, N) @ (B, h, N, d) -> (B, h, N, d)
        x = x.transpose(1, 2).reshape(B, N, D)  # (B, h, N, d) -> (B, N, h, d) -> (B, N, D)
        return self.proj_drop(self.proj(x)), attn


class Mlp(nn.Module):
    """Token-wise feed-forward network: Linear -> GELU (exact, erf form) -> Linear."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        hidden = int(cfg.embed_dim * cfg.mlp_ratio)
        self.fc1 = nn.Linear(cfg.embed_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, cfg.embed_dim)
        self.drop = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: in training, zeroes a residual branch for a random subset of samples and
    rescales the kept ones by 1 / (1 - p), so the expected output is unchanged."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty(x.shape[0], 1, 1).bernoulli_(keep)  # (B, 1, 1): one coin per sample
        return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, cfg: ViTConfig, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        y, attn = self.attn(self.norm1(x), need_weights)
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, attn


class VisionTransformer(nn.Module):
    """Image classifier: patch tokens + class token + position embedding -> blocks -> norm -> head.

    The position embedding has a slot for the class token ("concatenate, then add", as timm's
    `vit_base_patch16_224`): pos_embed is (1, 1 + N, D); the 'sin' table's class-token row is zero.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        D, N = cfg.embed_dim, cfg.num_patches
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        if cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + N, D))
        elif cfg.pos_embed == "sin":
            table = torch.cat([torch.zeros(1, D), sincos_pos_embed(cfg.grid_size, D)])  # (1 + N, D)
            # A buffer, not a parameter: never trained, and not saved (it is rebuilt from the config).
            self.register_buffer("pos_embed", table.unsqueeze(0), persistent=False)  # (1, 1 + N, D)
        else:
            self.pos_embed = None
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        # PatchDropout's rate in training (Liu et al., 2022), a training choice set by the trainer, not part
        # of the architecture; a trainer sets it to 0 for the final epochs, so the model ends on all tokens,
        # as it is tested (FLIP's "unmasked tuning", Li et al., 2023).
        self.patch_dropout = 0.0
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(cfg, r) for r in rates)
        self.norm = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(D, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """timm's init, with the Linear std scaled to the width: trunc-normal(0.02 * sqrt(768 / D)) for
        Linear weights (exactly timm's 0.02 for ViT-B's D = 768; a flat 0.02 starts a narrow model's
        signals too small, and the D = 64 MNIST model then sat on a loss plateau for hundreds of steps),
        trunc-normal(.02) for a learned pos_embed, zero biases, class token ~N(0, 1e-6). The patch
        projection is initialised like a Linear (xavier-uniform on the (D, C*P*P) view, as MAE does)
        so 'manual' and 'conv' start from the same distribution."""
        std = 0.02 * (768 / self.cfg.embed_dim) ** 0.5
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        proj = self.patch_embed.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))  # (D, C, P, P) viewed as (D, C*P*P)
        nn.init.zeros_(proj.bias)
        nn.init.trunc_normal_(self.cls_token, std=1e-6)  # normal_ would import torch._dynamo on meta tensors
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def set_fused_attn(self, fused: bool) -> None:
        """Chooses the attention kernel of every block: F.scaled_dot_product_attention (fused, the
        default) or the explicit softmax(q k^T / sqrt(d)) v. Both compute the same function; which is
        faster depends on the device, so it is chosen at run time and never saved."""
        for block in self.blocks:
            block.attn.fused = fused

    def reset_head(self, num_classes: int) -> None:
        """Replaces the head by a zero-initialised Linear for `num_classes` (for fine-tuning); the model's
        config becomes a new one with that class count (the caller's config is left as it was)."""
        self.cfg = replace(self.cfg, num_classes=num_classes)
        self.head = nn.Linear(self.cfg.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> input tokens (B, 1 + N, D): class token first, positions added."""
        x = self.patch_embed(x)  # (B, N, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (1, 1, D) -> (B, 1, D)
        x = torch.cat([cls, x], dim=1)  # (B, 1 + N, D)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        if self.training and self.patch_dropout > 0:
            x = self.drop_patches(x)
        return self.pos_drop(x)

    def drop_patches(self, x: torch.Tensor) -> torch.Tensor:
        """PatchDropout: keeps a random subset of each image's patch tokens, after the position
        embedding is added (so every kept token still knows where it came from) and always the class
        token. Fewer tokens make a training step cheaper: (B, 1 + N, D) -> (B, 1 + K, D)."""
        B, N, D = x.shape[0], x.shape[1] - 1, x.shape[2]
        keep = max(1, round(N * (1.0 - self.patch_dropout)))
        idx = torch.rand(B, N, device=x.device).argsort(dim=1)[:, :keep] + 1  # (B, K) kept token positions
        patches = x.gather(1, idx.unsqueeze(-1).expand(B, keep, D))  # (B, 1 + N, D) -> (B, K, D)
        return torch.cat([x[:, :1], patches], dim=1)  # (B, 1 + K, D)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> normalised output tokens (B, 1 + N, D)."""
        x = self.embed(x)
        for block in self.blocks:
            x, _ = block(x)
        return self.norm(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Output tokens (B, 1 + N, D) -> one feature vector per image (B, D): the class token's, or
        with global_pool 'avg' the mean of the patch tokens (the class token left out)."""
        return x[:, 1:].mean(dim=1) if self.cfg.global_pool == "avg" else x[:, 0]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Output tokens (B, 1 + N, D) -> logits (B, num_classes)."""
        return self.head(self.head_drop(self.pool(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Attention probabilities of every block, each (B, h, 1 + N, 1 + N), via the explicit path."""
        x, maps = self.embed(x), []
        for block in self.blocks:
            x, attn = block(x, need_weights=True)
            maps.append(attn)
        return maps


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as the sin-cos table excluded)."""
    return sum(p.numel() for p in model.parameters())


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """Optimizer parameter groups: no weight decay for biases, norms (ndim < 2), pos_embed and cls_token.

    With layer_decay < 1 (layer-wise lr decay for fine-tuning, as in BEiT/MAE), each group also gets
    `lr_scale` = layer_decay ** (L + 1 - layer), where the embeddings are layer 0, block i is layer
    i + 1 and the final norm and head are layer L + 1; the training loop multiplies the lr by it.
    """
    depth = len(model.blocks)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith(("cls_token", "pos_embed", "patch_embed")):
            layer = 0
        elif name.startswith("blocks."):
            layer = int(name.split(".")[1]) + 1
        else:
            layer = depth + 1
        decay = p.ndim >= 2 and name not in ("pos_embed", "cls_token")
        if layer_decay == 1.0:
            layer = 0  # one pair of groups is enough
        group = groups.setdefault((layer, decay), {
            "params": [], "weight_decay": weight_decay if decay else 0.0,
            "lr_scale": layer_decay ** (depth + 1 - layer) if layer_decay != 1.0 else 1.0,
        })
        group["params"].append(p)
    return list(groups.values())


def describe(cfg: ViTConfig) -> str:
    """One line summing up a config, e.g. for `--arch auto` to print what it inferred."""
    with torch.device("meta"):  # shapes only, for the parameter count
        params = count_params(VisionTransformer(cfg))
    head = f"{cfg.num_classes} classes" if cfg.num_classes else "no head"
    return (f"ViT: depth {cfg.depth}, width {cfg.embed_dim}, {cfg.num_heads} heads, mlp {cfg.mlp_ratio:g}x, "
            f"patch {cfg.patch_size} ({cfg.patch_embed}), {cfg.img_size} px ({cfg.grid_size}x{cfg.grid_size} "
            f"tokens), {cfg.in_chans} channels, pos {cfg.pos_embed}, pool {cfg.global_pool}, {head}, "
            f"LayerNorm eps {cfg.norm_eps:g}, {params / 1e6:.2f}M parameters")


# ------------------------------------------------------------------------------------------------
# The checks of a config's values, gathered here

# What each ViTConfig field accepts. A config may come from a file (a checkpoint's JSON metadata), so
# the type is checked before the range: an int is not a bool (JSON true), nor 4.0; a float is finite.
_CHOICES = {"patch_embed": ("manual", "conv", "stem"), "pos_embed": ("learned", "sin", "none"),
            "global_pool": ("token", "avg")}
_AT_LEAST_1 = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads")
_RATES = ("drop_rate", "attn_drop_rate", "drop_path_rate")
# name -> 'int', 'float', 'bool' or 'str': the type of the field's default (every field has one), so the
# check does not depend on how the annotations are stored
_FIELD_TYPES = {f.name: type(f.default).__name__ for f in fields(ViTConfig)}


def _field_problem(name: str, value: object) -> str:
    """What is wrong with `value` as the ViTConfig field `name` on its own, or '' (e.g. "must be >= 1, got 0")."""
    kind = _FIELD_TYPES[name]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    accepted = {"int": number and isinstance(value, int), "float": number and math.isfinite(value),
                "bool": isinstance(value, bool), "str": isinstance(value, str)}[kind]
    if not accepted:
        what = {"int": "an integer", "float": "a finite number", "bool": "true or false", "str": "a string"}[kind]
        return f"is {str(value)[:50]!r} ({type(value).__name__}), not {what}"
    if name in _CHOICES and value not in _CHOICES[name]:
        return f"must be one of {_CHOICES[name]}, got {value!r}"
    if name in _AT_LEAST_1 and value < 1:
        return f"must be >= 1, got {value}"
    if name == "num_classes" and value < 0:
        return f"must be >= 0, got {value}"
    if name in ("mlp_ratio", "norm_eps") and not value > 0:
        return f"must be > 0, got {value}"
    if name in _RATES and not 0.0 <= value < 1.0:
        return f"must be in [0, 1), got {value}"
    return ""
