"""Checkpoints in, checkpoints out: timm, Hugging Face and our own safetensors files -> a checked ViT.

Our parameter names are timm's, so a timm file loads key for key. A Hugging Face file is renamed to
timm's names first, by the table right below. Then `load_checkpoint` runs a few named steps: read the
file; rename it; work out the architecture it was made with (our saved config, its shapes, or a named
preset); check every key and shape against that; adapt the weights to the model asked for (a new image
size resamples `pos_embed`); build the model and load the weights with the missing and unexpected keys
asserted exactly. `save_checkpoint` writes our layout: timm's names plus our config in the metadata.

This file imports only torch, the standard library and its unit's `model.py` and `formats.py`: copy
the three into a package of any name. Every problem is a `CheckpointError` (a `FormatError`, so a
ValueError) naming the file.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, fields
from pathlib import Path
from typing import Union

import torch
import torch.nn.functional as F

from .formats import FormatError, read_safetensors, write_safetensors
from .model import PRESETS, ViTConfig, VisionTransformer, describe

PathLike = Union[str, Path]
TIMM_EPS, HF_EPS = 1e-6, 1e-12  # LayerNorm eps of each library's ViT (HF's ViTConfig default)


class CheckpointError(FormatError):
    """A checkpoint that is not a ViT this code can build: an unknown layout, a missing key, a wrong shape."""


# ------------------------------------------------------------------------------- the rename table

# Hugging Face name (after an optional 'vit.' prefix) -> timm's (= ours); \1 = layer index, \2 = weight|bias.
_HF_RULES = [(re.compile(p), r) for p, r in [
    (r"embeddings\.cls_token$", "cls_token"),
    (r"embeddings\.position_embeddings$", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)$", r"patch_embed.proj.\1"),
    (r"encoder\.layer\.(\d+)\.layernorm_before\.(weight|bias)$", r"blocks.\1.norm1.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)$", r"blocks.\1.attn.proj.\2"),
    (r"encoder\.layer\.(\d+)\.layernorm_after\.(weight|bias)$", r"blocks.\1.norm2.\2"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)$", r"blocks.\1.mlp.fc1.\2"),
    (r"encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)$", r"blocks.\1.mlp.fc2.\2"),
    (r"layernorm\.(weight|bias)$", r"norm.\1"),
    (r"classifier\.(weight|bias)$", r"head.\1"),
]]
# Three Linears in Hugging Face, one in timm: query, key and value are concatenated into `qkv`.
_HF_QKV = re.compile(r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$")
# ViTModel checkpoints (e.g. google/vit-base-patch16-224-in21k) carry a pooler, tanh(dense(class token));
# timm's head, and ours, read the normalised class token directly, so the pooler is dropped, nothing else.
_HF_IGNORED = re.compile(r"pooler\.dense\.(weight|bias)$")


def hf_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face ViT state dict (`ViTForImageClassification` or `ViTModel`) under timm's names.

    Separate query/key/value Linears become one `qkv` whose output rows are [q; k; v] (concatenated
    on dim 0, timm's order). Every key must map to exactly one name; an unknown key, a duplicate
    target or an incomplete q/k/v triple is a CheckpointError listing the keys.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    unmapped = []
    for key, value in state.items():
        name = key.removeprefix("vit.")
        if _HF_IGNORED.match(name):
            continue
        if m := _HF_QKV.match(name):
            qkv.setdefault((int(m[1]), m[3]), {})[m[2]] = value  # (layer, weight|bias) -> {query|key|value: tensor}
            continue
        target = next((pattern.sub(repl, name) for pattern, repl in _HF_RULES if pattern.match(name)), None)
        if target is None:
            unmapped.append(key)
        elif target in out:
            raise CheckpointError(f"two Hugging Face keys map to {target!r} (one with 'vit.', one without?)")
        else:
            out[target] = value
    if unmapped:
        raise CheckpointError(f"Hugging Face checkpoint has keys with no timm equivalent: {_listing(unmapped)}")
    for (layer, kind), parts in sorted(qkv.items()):
        _check_qkv(layer, kind, parts)
        q, k, v = parts["query"], parts["key"], parts["value"]
        out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([q, k, v])  # 3 x (D, ...) -> (3D, ...): rows [q; k; v]
    return out


# ------------------------------------------------------------------------------------------ loading


def load_checkpoint(path: PathLike, *, arch: str = "auto", img_size: int | None = None,
                    patch_embed: str | None = None, norm_eps: float | None = None,
                    **overrides: object) -> tuple[VisionTransformer, dict]:
    """Load a timm, Hugging Face or our own safetensors checkpoint into a VisionTransformer.

    The file's architecture comes from our `config` metadata ('ours'), from its shapes (arch='auto',
    `infer_config`), or from `PRESETS[arch]` (the class count excepted: the head is sized from the
    file); every key and shape of the file must match it. LayerNorm eps: `norm_eps`, else our config's,
    else config.json's `layer_norm_eps` beside a HF file (default 1e-12), else timm's 1e-6. A HF
    config.json also gives num_heads. `overrides` are further ViTConfig fields (num_heads,
    drop_path_rate, global_pool, ...). To train another class count, `model.reset_head(n)` afterwards.

    The weights are then adapted once: `img_size` != the file's -> pos_embed resampled (timm's
    bicubic); `patch_embed` 'manual' <-> 'conv' -> the patch weight reshaped. Floating tensors become
    float32; integer buffers (BatchNorm's num_batches_tracked) stay int64.

    Returns (model, info); the model is in training mode, its tensors on the CPU. info holds 'layout',
    'metadata' (the file's), 'file_config' (the ViTConfig the file was checked against, before the
    adaptations), 'classes' (saved class names, or None) and 'resampled' ((old grid, new grid) or None).
    """
    path = Path(path)
    tensors, metadata = read_safetensors(path)
    try:
        layout = detect_layout(tensors, metadata)
        hf_config = _read_hf_config(path) if layout == "hf" else {}
        state = hf_to_timm(tensors) if layout == "hf" else dict(tensors)
        # .float() is a no-op view for F32 data, so the model's tensors share the file's one read buffer
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        overrides.update(_library_defaults(layout, arch, hf_config, norm_eps))
        file_cfg, against = _file_config(state, metadata, layout, arch, overrides)
        _match_patch_form(state, file_cfg)
        _check_state(state, file_cfg, against)
        cfg = _make_config(**{**asdict(file_cfg), "img_size": img_size or file_cfg.img_size,
                              "patch_embed": _patch_form(file_cfg, patch_embed)})
        resampled = _adapt(state, file_cfg, cfg)
        model = _build_from(state, cfg)
        classes = _class_names(layout, metadata, hf_config, cfg.num_classes)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return model, dict(layout=layout, metadata=metadata, file_config=file_cfg, classes=classes, resampled=resampled)


_TIMM_MARKERS = ("cls_token", "pos_embed", "patch_embed.", "blocks.")
_HF_MARKERS = ("vit.embeddings.", "vit.encoder.", "embeddings.", "encoder.layer.")


def detect_layout(state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """'timm', 'hf' or 'ours' from the key names (and, for 'ours', our `config` metadata entry).

    Our files use timm's names, so the two differ only by the metadata: a timm file may carry
    metadata too (`{"format": "pt"}`), but never our `config`.
    """
    timm = any(k.startswith(_TIMM_MARKERS) for k in state)
    hf = any(k.startswith(_HF_MARKERS) for k in state)
    if timm != hf:
        if hf:
            return "hf"
        return "ours" if metadata and "config" in metadata else "timm"
    what = "both timm and Hugging Face keys" if timm else "no ViT keys"
    raise CheckpointError(f"unknown checkpoint layout ({what}); expected timm (cls_token, patch_embed.proj.weight, "
                          f"blocks.N.*), Hugging Face (vit.embeddings.*, vit.encoder.layer.N.*) or ours; "
                          f"the file has {len(state)} keys: {_listing(state, 6)}")


def _library_defaults(layout: str, arch: str, hf_config: dict, norm_eps: float | None) -> dict[str, object]:
    """What a timm or Hugging Face file's shapes cannot say: the library's LayerNorm eps, HF's head count."""
    found: dict[str, object] = {}
    if norm_eps is None and layout != "ours":
        norm_eps = hf_config.get("layer_norm_eps", HF_EPS) if layout == "hf" else TIMM_EPS
    if norm_eps is not None:
        found["norm_eps"] = norm_eps
    if layout == "hf" and arch == "auto" and "num_attention_heads" in hf_config:
        found["num_heads"] = hf_config["num_attention_heads"]
    return found


def _file_config(state: dict[str, torch.Tensor], metadata: dict[str, str], layout: str, arch: str,
                 overrides: dict) -> tuple[ViTConfig, str]:
    """The architecture the file is checked against, and how to name it in an error message."""
    if arch != "auto":
        if arch not in PRESETS:
            raise CheckpointError(f"unknown arch {arch!r}; use 'auto' or one of {', '.join(PRESETS)}")
        classes = _rows(state.get("head.weight"))  # a preset checks the body; the class count is the file's
        return _make_config(**{**PRESETS[arch], "num_classes": classes, **overrides}), f"preset {arch!r}"
    if layout == "ours":
        saved = _json_metadata(metadata, "config")
        if not isinstance(saved, dict):
            raise CheckpointError("metadata 'config' is not a JSON object")
        blocks = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        if saved.get("depth") != blocks:  # checked before building: a bogus depth would build that many blocks
            raise CheckpointError(f"metadata config says depth {str(saved.get('depth'))[:20]}, "
                                  f"the file has {blocks} blocks")
        return _make_config(**{**saved, **overrides}), "its saved config"
    cfg = infer_config(state, **overrides)
    return cfg, f"the architecture inferred from its shapes ({describe(cfg)})"


def _patch_form(file_cfg: ViTConfig, asked: str | None) -> str:
    """The patch embedding to load into: the file's, or 'manual' <-> 'conv' (the same weights reshaped)."""
    asked = asked or file_cfg.patch_embed
    if (asked == "stem") != (file_cfg.patch_embed == "stem"):
        raise CheckpointError(f"cannot turn a {file_cfg.patch_embed!r} patch embedding into {asked!r} "
                              "(only 'manual' <-> 'conv' are the same weights)")
    return asked


def _adapt(state: dict[str, torch.Tensor], file_cfg: ViTConfig, cfg: ViTConfig) -> tuple[int, int] | None:
    """Turns the file's checked weights into `cfg`'s in place: pos_embed resampled to a new token grid,
    the patch weight reshaped to cfg's form. Returns (old grid, new grid) when it resampled, else None."""
    _match_patch_form(state, cfg)
    if cfg.grid_size == file_cfg.grid_size or "pos_embed" not in state:
        return None
    state["pos_embed"] = resample_pos_embed(state["pos_embed"], cfg.grid_size)
    return file_cfg.grid_size, cfg.grid_size


def _build_from(state: dict[str, torch.Tensor], cfg: ViTConfig) -> VisionTransformer:
    """A model of `cfg` whose parameters are `state`'s tensors, every key accounted for.

    Built on 'meta' (no random init of what the file overwrites, no memory) when every buffer is
    saved; a model with non-persistent buffers (the 'sin' table, which no file holds) is built for
    real, as those must be computed."""
    with torch.device("meta"):
        model = VisionTransformer(cfg)
    if set(dict(model.named_buffers())) - set(model.state_dict()):
        model = VisionTransformer(cfg)
    # Buffers get their own memory: the file's tensors are views of one read buffer and so share one
    # autograd version counter, and BatchNorm (the stem) updates its running stats in place in every
    # training forward, which would then count as modifying the weights the backward pass needs.
    buffers = set(dict(model.named_buffers()))
    state = {k: v.clone() if k in buffers else v for k, v in state.items()}
    # assign=True: the parameters become the file's tensors (no copy into a freshly initialised model)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise CheckpointError(f"loading left missing keys {_listing(missing) or '-'} and unexpected keys "
                              f"{_listing(unexpected) or '-'}")
    return model


# -------------------------------------------------------------------------- the file's architecture


def infer_config(state: dict[str, torch.Tensor], **overrides: object) -> ViTConfig:
    """The ViTConfig that a timm-named state dict was made with, read from its shapes.

    embed_dim D, patch_size P and in_chans C from `patch_embed.proj.weight` (conv (D, C, P, P); a
    manual (D, C*P*P) weight needs `patch_size` or `img_size` in overrides to split C from P);
    img_size from `pos_embed` (1, 1 + g*g, D) as g * P; depth from the `blocks.N` indices; mlp_ratio
    from fc1; qkv_bias from the presence of `qkv.bias`; num_classes from `head.weight` (0 if no head).
    num_heads cannot be seen in any shape: timm's rule D / 64 (tiny 3, small 6, base 12) unless given.
    Overrides replace inferred fields (num_heads, norm_eps, global_pool, dropout rates, ...).
    """
    if any(k.startswith("patch_embed.stem.") for k in state):
        raise CheckpointError("a conv-stem patch embedding cannot be inferred from shapes; only our own "
                              "checkpoints (with their config in the metadata) use it")
    w, grid = _need(state, "patch_embed.proj.weight"), _pos_grid(_need(state, "pos_embed"))
    if 0 in w.shape:  # a zero width or patch size would divide by zero below
        raise CheckpointError(f"patch_embed.proj.weight has shape {tuple(w.shape)}, with a zero dimension")
    D = _rows(w)
    C, P = _channels_and_patch(w, grid, overrides)
    depth = _depth(state)
    inferred: dict[str, object] = dict(
        img_size=grid * P, patch_size=P, in_chans=C, embed_dim=D, depth=depth, num_heads=max(D // 64, 1),
        mlp_ratio=_rows(_need(state, "blocks.0.mlp.fc1.weight")) / D, qkv_bias="blocks.0.attn.qkv.bias" in state,
        num_classes=_rows(state.get("head.weight")), patch_embed="conv" if w.ndim == 4 else "manual",
        pos_embed="learned")
    if "num_heads" not in overrides and D % inferred["num_heads"]:
        raise CheckpointError(f"cannot infer num_heads: timm's rule width / 64 gives {inferred['num_heads']}, "
                              f"which does not divide width {D}; give num_heads")
    return _make_config(**{**inferred, **overrides})


def _channels_and_patch(w: torch.Tensor, grid: int, overrides: dict) -> tuple[int, int]:
    """(in_chans, patch_size) of a conv (D, C, P, P) patch weight, or of a manual (D, C*P*P) one with the
    patch size (or image size) given in `overrides`."""
    if w.ndim == 4 and w.shape[2] == w.shape[3]:
        return w.shape[1], w.shape[2]
    if w.ndim != 2:
        raise CheckpointError(f"patch_embed.proj.weight has shape {tuple(w.shape)}; expected (D, C, P, P) or "
                              "(D, C*P*P)")
    size, patch = overrides.get("img_size"), overrides.get("patch_size")
    P = patch if _is_size(patch) else size // grid if _is_size(size) else None
    if not P:
        raise CheckpointError(f"patch_embed.proj.weight {tuple(w.shape)} is a manual (D, C*P*P) weight: give "
                              "patch_size (or img_size) to tell the channels from the patch size")
    if w.shape[1] % (P * P):
        raise CheckpointError(f"patch_embed.proj.weight {tuple(w.shape)}: {w.shape[1]} is not C * {P} * {P}")
    return w.shape[1] // (P * P), P


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: int) -> torch.Tensor:
    """timm's `resample_abs_pos_embed` for one class slot: (1, 1 + g*g, D) -> (1, 1 + new_grid**2, D).

    The class slot is kept as is; the g x g grid of patch positions is resized bicubic with antialias
    (align_corners=False), in float32, and cast back to the input dtype.
    """
    g = _pos_grid(pos_embed)
    D = pos_embed.shape[2]
    cls, grid = pos_embed[:, :1], pos_embed[:, 1:].float()
    grid = grid.reshape(1, g, g, D).permute(0, 3, 1, 2)  # (1, g*g, D) -> (1, g, g, D) -> (1, D, g, g)
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, D)  # (1, D, n, n) -> (1, n, n, D) -> (1, n*n, D)
    return torch.cat([cls, grid.to(pos_embed.dtype)], dim=1)  # (1, 1 + n*n, D)


def _match_patch_form(state: dict[str, torch.Tensor], cfg: ViTConfig) -> None:
    """Reshape `patch_embed.proj.weight` in place to cfg's form: 'manual' (D, C*P*P) or 'conv' (D, C, P, P).

    The manual Linear flattens each patch channel-major, exactly a conv kernel's memory order, so one
    reshape converts either way. Sizes that do not fit are left alone for the shape check to report.
    """
    w = state.get("patch_embed.proj.weight")
    if w is None or cfg.patch_embed == "stem":
        return
    C, P = cfg.in_chans, cfg.patch_size
    if cfg.patch_embed == "manual" and w.ndim == 4:
        state["patch_embed.proj.weight"] = w.reshape(w.shape[0], -1)  # (D, C, P, P) -> (D, C*P*P)
    elif cfg.patch_embed == "conv" and w.ndim == 2 and w.shape[1] == C * P * P:
        state["patch_embed.proj.weight"] = w.reshape(w.shape[0], C, P, P)  # (D, C*P*P) -> (D, C, P, P)


# ----------------------------------------------------------------------------------------- saving


def save_checkpoint(file: PathLike | object, model: VisionTransformer, metadata: dict[str, str] | None = None) -> None:
    """Write `model.state_dict()` as safetensors to `file` (a path, or a binary file open for writing)
    with its config in the metadata.

    metadata: extra str -> str entries, e.g. 'classes' (JSON list), 'mean'/'std' (JSON lists), 'args';
    'config' is ours: JSON of `dataclasses.asdict(model.cfg)`, from which `load_checkpoint` rebuilds
    the model exactly. Pass the bare model, not a DDP or compiled wrapper (their key names differ).
    """
    extra = dict(metadata or {})
    if "config" in extra:
        raise CheckpointError(f"{file}: metadata key 'config' is reserved for the model's config")
    write_safetensors(file, model.state_dict(), {"config": json.dumps(asdict(model.cfg)), **extra})


def saved_normalisation(layout: str, metadata: dict[str, str], channels: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of a checkpoint's inputs: saved in our checkpoints' metadata, else timm's
    0.5 (pixels scaled to [-1, 1]: the augreg and Google ViT-B/16 weights)."""
    stats = []
    for key in ("mean", "std"):
        value = [0.5] * channels
        if layout == "ours" and key in metadata:
            try:
                value = [float(v) for v in json.loads(metadata[key])]
            except (ValueError, TypeError, RecursionError):  # RecursionError: JSON nested past Python's stack
                raise CheckpointError(f"checkpoint metadata {key!r} is not a JSON list of numbers: "
                                      f"{metadata[key][:100]}") from None
            if len(value) != channels:
                raise CheckpointError(f"checkpoint metadata {key!r} has {len(value)} values for {channels} channels")
            if not all(math.isfinite(v) for v in value) or (key == "std" and min(value) <= 0):
                raise CheckpointError(f"checkpoint metadata {key!r} is {metadata[key][:100]}: need finite numbers"
                                      + (", all > 0" if key == "std" else ""))
        stats.append(value)
    return stats[0], stats[1]


# ------------------------------------------------------------------------------ checks, gathered here

_FIELDS = {f.name for f in fields(ViTConfig)}
# No tensor bounds the image size of a 'sin' or 'none' position embedding, so a config could ask for any
# size: these bound the image and its token grid (the sin table and the attention grow with the tokens),
# far above any real ViT (timm's largest grids are 37 x 37; 4096 px at patch 16 is 256 x 256).
MAX_IMG_SIZE = 4096
MAX_TOKENS = 256 * 256
# Largest values a file may give the fields that size the model before any tensor is checked against it
# (a huge width or depth would be built, on 'meta' but element by element); far above any real ViT.
_MAX_VALUE = {"img_size": MAX_IMG_SIZE, "patch_size": MAX_IMG_SIZE, "in_chans": 1024, "num_classes": 1 << 20,
              "embed_dim": 1 << 16, "depth": 1024, "num_heads": 1 << 16, "mlp_ratio": 64.0, "norm_eps": 1.0}


def _make_config(**kw: object) -> ViTConfig:
    """ViTConfig(**kw), whose own checks name a bad field, as a CheckpointError; then the bounds above."""
    unknown = set(kw) - _FIELDS
    if unknown:
        raise CheckpointError(f"unknown config field(s) {_listing(unknown)}")
    try:
        cfg = ViTConfig(**kw)
    except ValueError as e:
        raise CheckpointError(f"invalid config: {e}") from None
    for name, most in _MAX_VALUE.items():
        if getattr(cfg, name) > most:
            raise CheckpointError(f"invalid config: {name} is {str(getattr(cfg, name))[:50]}, above the {most} "
                                  "this project builds")
    if cfg.num_patches > MAX_TOKENS:
        raise CheckpointError(f"img_size {cfg.img_size} / patch_size {cfg.patch_size} is a {cfg.grid_size}x"
                              f"{cfg.grid_size} grid ({cfg.num_patches} tokens), more than the {MAX_TOKENS} this "
                              "project builds")
    return cfg


def _check_state(state: dict[str, torch.Tensor], cfg: ViTConfig, against: str) -> None:
    """CheckpointError unless `state` has exactly the keys, shapes and dtypes of a model built from `cfg`."""
    with torch.device("meta"):  # shapes only: no memory
        expected = {k: (tuple(v.shape), v.dtype) for k, v in VisionTransformer(cfg).state_dict().items()}
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    common = sorted(set(state) & set(expected), key=lambda k: (k.startswith("blocks."), k))  # embeddings first
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {expected[k][0]}"
             for k in common if tuple(state[k].shape) != expected[k][0]]
    wrong += [f"{k}: file {state[k].dtype} vs model {expected[k][1]}"
              for k in common if state[k].dtype != expected[k][1]]
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} mismatch(es): " + "; ".join(wrong[:6]) + (" ..." if len(wrong) > 6 else ""))
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if problems:
        raise CheckpointError(f"does not match {against}: " + "; ".join(problems))


def _check_qkv(layer: int, kind: str, parts: dict[str, torch.Tensor]) -> None:
    """A Hugging Face layer's query, key and value (weights or biases): all three, of one shape."""
    if len(parts) != 3:
        raise CheckpointError(f"Hugging Face layer {layer}: attention {kind} has only {_listing(parts)} "
                              "of query, key, value")
    q, k, v = parts["query"], parts["key"], parts["value"]
    if not q.ndim or not q.shape == k.shape == v.shape:
        raise CheckpointError(f"Hugging Face layer {layer}: attention {kind} shapes differ or are scalars: query "
                              f"{tuple(q.shape)}, key {tuple(k.shape)}, value {tuple(v.shape)}")


def _need(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"cannot infer the architecture: no {key!r} among {len(state)} keys "
                              f"({_listing(state, 5)})")
    return state[key]


def _pos_grid(pos: torch.Tensor) -> int:
    """The side g of a (1, 1 + g*g, D) position embedding: a class slot and a square grid."""
    tokens = pos.shape[1] if pos.ndim == 3 and pos.shape[0] == 1 else 0
    if tokens < 2 or math.isqrt(tokens - 1) ** 2 != tokens - 1:
        raise CheckpointError(f"pos_embed has shape {tuple(pos.shape)}; expected (1, 1 + g*g, D): a class slot "
                              "and a square grid")
    return math.isqrt(tokens - 1)


def _depth(state: dict[str, torch.Tensor]) -> int:
    """The number of blocks, numbered 0..depth-1 with none missing."""
    blocks = {int(m[1]) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not blocks:
        raise CheckpointError(f"cannot infer the architecture: no blocks.N.* keys among {_listing(state, 5)}")
    if max(blocks) + 1 != len(blocks):
        raise CheckpointError(f"the file's {len(blocks)} blocks are not numbered 0..{len(blocks) - 1} "
                              f"(highest: blocks.{max(blocks)}); a whole block is missing")
    return len(blocks)


def _rows(weight: torch.Tensor | None) -> int:
    """Output size of a Linear weight (D_out, D_in); 0 when absent (or a malformed scalar)."""
    return weight.shape[0] if weight is not None and weight.ndim else 0


def _read_hf_config(path: Path) -> dict:
    """The config.json beside a Hugging Face checkpoint, or {} if there is none."""
    file = path.parent / "config.json"
    if not file.is_file():
        return {}
    try:
        cfg = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{file}: cannot read the Hugging Face config beside the weights: {e}") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{file}: a Hugging Face config.json is a JSON object, this is a {type(cfg).__name__}")
    if cfg.get("hidden_act", "gelu") != "gelu":  # our MLP is exact (erf) GELU, as HF's 'gelu'
        raise CheckpointError(f"{file}: hidden_act {cfg['hidden_act']!r} is not supported (only 'gelu')")
    for key, accepts, what in (("layer_norm_eps", _is_number, "number"),
                               ("num_attention_heads", lambda v: _is_number(v) and isinstance(v, int), "integer"),
                               ("id2label", lambda v: isinstance(v, dict), "JSON object")):
        if key in cfg and not accepts(cfg[key]):
            raise CheckpointError(f"{file}: {key} is {str(cfg[key])[:50]!r}, not a {what}")
    return cfg


def _class_names(layout: str, metadata: dict[str, str], hf_config: dict, num_classes: int) -> list[str] | None:
    """Class names saved with the weights (our metadata 'classes', HF's id2label), if they fit the head."""
    names = None
    if layout == "ours" and "classes" in metadata:
        names = _json_metadata(metadata, "classes")
    elif isinstance(hf_config.get("id2label"), dict):
        names = [hf_config["id2label"].get(str(i)) for i in range(num_classes)]
        names = None if None in names else names
    if names is None:
        return None
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names) and len(names) == num_classes):
        raise CheckpointError(f"the saved class names do not match the head's {num_classes} classes")
    return names


def _json_metadata(metadata: dict[str, str], key: str) -> object:
    try:
        return json.loads(metadata[key])
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than Python's stack
        raise CheckpointError(f"metadata {key!r} is not JSON (or nested too deeply)") from None


def _listing(keys: object, limit: int = 8) -> str:
    """'a, b, c' for a few keys in natural order (blocks.2 before blocks.10), '(+N more)' if there are more."""
    keys = sorted(keys, key=lambda k: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", k)])
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _is_number(value: object) -> bool:
    """An int or a float, but not a bool (JSON's true is no number)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_size(value: object) -> bool:
    return _is_number(value) and isinstance(value, int) and value >= 1
