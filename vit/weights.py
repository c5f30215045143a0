"""Checkpoints in, checkpoints out: timm, Hugging Face and our own safetensors files -> a checked ViT.

Three layouts are read (`detect_layout`):
- 'timm': timm's `VisionTransformer.state_dict()` names, which are ours (`cls_token`, `pos_embed`,
  `patch_embed.proj`, `blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm`, `head`);
- 'hf': transformers' `ViTForImageClassification` (`vit.embeddings.*`, `vit.encoder.layer.N.*`,
  `classifier.*`) or `ViTModel` (the same without `vit.`), renamed to timm's by `hf_to_timm`;
- 'ours': timm's names plus our config as JSON in the safetensors metadata (`save_checkpoint`).

`load_checkpoint` is the one entry point: it reads the file, renames, casts to float32, works out the
file's architecture (from our config, from the shapes, or from a named preset), checks every key and
shape against it, then adapts the weights to what the caller asked for (image size -> pos_embed
resampled; class count -> new zero head; 'manual' <-> 'conv' patch weights) and loads them with the
missing/unexpected key sets asserted exactly. Every problem is a `VitError` naming the file.
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

from vit.errors import VitError, is_int, is_number
from vit.formats import read_safetensors, write_safetensors
from vit.model import PRESETS, ViTConfig, VisionTransformer, describe, field_problem

PathLike = Union[str, Path]
TIMM_EPS, HF_EPS = 1e-6, 1e-12  # LayerNorm eps of each library's ViT (HF's ViTConfig default)
_CONFIG_FIELDS = {f.name: f.type for f in fields(ViTConfig)}  # name -> 'int', 'float', 'bool' or 'str'
# Fields checkpoints written before they became runtime/training choices still carry in their config:
# dropped on load, never restored (the model's defaults apply; the trainer and CLI set them).
_LEGACY_FIELDS = ("fused_attn", "patch_dropout")
# No tensor bounds the image size of a 'sin' or 'none' position embedding, so a config could ask for any
# size: these bound the image and its token grid (the sin table and the attention grow with the tokens),
# far above any real ViT (timm's largest grids are 37 x 37; 4096 px at patch 16 is 256 x 256).
MAX_IMG_SIZE = 4096
MAX_TOKENS = 256 * 256
# Largest values a file may give the fields that size the model before any tensor is checked against it
# (a huge width or depth would be built, on 'meta' but element by element); far above any real ViT.
_MAX_VALUE = {"img_size": MAX_IMG_SIZE, "patch_size": MAX_IMG_SIZE, "in_chans": 1024, "num_classes": 1 << 20,
              "embed_dim": 1 << 16, "depth": 1024, "num_heads": 1 << 16, "mlp_ratio": 64.0, "norm_eps": 1.0}


def _listing(keys: object, limit: int = 8) -> str:
    """'a, b, c' for a few keys in natural order (blocks.2 before blocks.10), '(+N more)' if there are more."""
    keys = sorted(keys, key=lambda k: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", k)])
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _checked_fields(kw: dict[str, object]) -> dict[str, object]:
    """`kw` with every ViTConfig field checked on its own (vit.model.field_problem) and against
    `_MAX_VALUE` before anything uses it; numbers of float fields as floats (JSON writes 4.0 as 4).
    Anything else is a VitError naming the field."""
    unknown = set(kw) - set(_CONFIG_FIELDS)
    if unknown:
        raise VitError(f"unknown config field(s) {_listing(unknown)}")
    out = {}
    for name, value in kw.items():
        problem = field_problem(name, value)
        if problem:
            raise VitError(f"config field {name} {problem}")
        if name in _MAX_VALUE and value > _MAX_VALUE[name]:
            raise VitError(f"config field {name} is {str(value)[:50]}, above the {_MAX_VALUE[name]} "
                           "this project builds")
        out[name] = float(value) if _CONFIG_FIELDS[name] == "float" else value
    return out


def _make_config(**kw: object) -> ViTConfig:
    """ViTConfig(**kw) from checked fields (`_checked_fields`), with its own ValueError turned into VitError,
    and a token grid of at most MAX_TOKENS."""
    checked = _checked_fields(kw)
    try:
        cfg = ViTConfig(**checked)
    except ValueError as e:
        raise VitError(f"invalid config: {e}") from None
    if cfg.num_patches > MAX_TOKENS:
        raise VitError(f"img_size {cfg.img_size} / patch_size {cfg.patch_size} is a {cfg.grid_size}x{cfg.grid_size} "
                       f"grid ({cfg.num_patches} tokens), more than the {MAX_TOKENS} this project builds")
    return cfg


# ------------------------------------------------------------------------------------------ layouts

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
    raise VitError(f"unknown checkpoint layout ({what}); expected timm (cls_token, patch_embed.proj.weight, "
                   f"blocks.N.*), Hugging Face (vit.embeddings.*, vit.encoder.layer.N.*) or ours; "
                   f"the file has {len(state)} keys: {_listing(state, 6)}")


# HF name (after an optional 'vit.' prefix) -> timm name; \1 = layer index, \2 = weight|bias.
_HF_RULES = [(re.compile(p), r) for p, r in [
    (r"embeddings\.cls_token$", "cls_token"),
    (r"embeddings\.position_embeddings$", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)$", r"patch_embed.proj.\1"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)$", r"blocks.\1.attn.proj.\2"),
    (r"encoder\.layer\.(\d+)\.layernorm_before\.(weight|bias)$", r"blocks.\1.norm1.\2"),
    (r"encoder\.layer\.(\d+)\.layernorm_after\.(weight|bias)$", r"blocks.\1.norm2.\2"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)$", r"blocks.\1.mlp.fc1.\2"),
    (r"encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)$", r"blocks.\1.mlp.fc2.\2"),
    (r"layernorm\.(weight|bias)$", r"norm.\1"),
    (r"classifier\.(weight|bias)$", r"head.\1"),
]]
_HF_QKV = re.compile(r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$")
# ViTModel checkpoints (e.g. google/vit-base-patch16-224-in21k) carry a pooler, tanh(dense(class token));
# ViTForImageClassification (google/vit-base-patch16-224) has none. timm's head, and ours, read the
# normalised class token directly, so the pooler is unused: it is dropped by exact name, nothing else.
_HF_IGNORED = re.compile(r"pooler\.dense\.(weight|bias)$")


def hf_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face ViT state dict to timm's names.

    Separate query/key/value Linears become one `qkv` whose output rows are [q; k; v] (concatenated
    on dim 0, timm's order). Every key must map to exactly one name; an unknown key, a duplicate
    target or an incomplete q/k/v triple is a VitError listing the keys.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    unmapped = []
    for key, value in state.items():
        name = key[4:] if key.startswith("vit.") else key
        if _HF_IGNORED.match(name):
            continue
        m = _HF_QKV.match(name)
        if m:
            qkv.setdefault((int(m[1]), m[3]), {})[m[2]] = value
            continue
        for pattern, repl in _HF_RULES:
            if pattern.match(name):
                target = pattern.sub(repl, name)
                if target in out:
                    raise VitError(f"two Hugging Face keys map to {target!r} (one with 'vit.', one without?)")
                out[target] = value
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise VitError(f"Hugging Face checkpoint has keys with no timm equivalent: {_listing(unmapped)}")
    for (layer, kind), parts in sorted(qkv.items()):
        if len(parts) != 3:
            raise VitError(f"Hugging Face layer {layer}: attention {kind} has only {_listing(parts)} "
                           "of query, key, value")
        q, k, v = parts["query"], parts["key"], parts["value"]
        if not q.ndim or not q.shape == k.shape == v.shape:
            raise VitError(f"Hugging Face layer {layer}: attention {kind} shapes differ or are scalars: query "
                           f"{tuple(q.shape)}, key {tuple(k.shape)}, value {tuple(v.shape)}")
        out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([q, k, v])  # 3 x (D, ...) -> (3D, ...): rows [q; k; v]
    return out


# ------------------------------------------------------------------------------------ architecture


def _rows(weight: torch.Tensor | None) -> int:
    """Output size of a Linear weight (D_out, D_in); 0 when absent (or a malformed scalar)."""
    return weight.shape[0] if weight is not None and weight.ndim else 0


def infer_config(state: dict[str, torch.Tensor], **overrides: object) -> ViTConfig:
    """The ViTConfig that a timm-named state dict was made with, read from its shapes.

    embed_dim D, patch_size P and in_chans C from `patch_embed.proj.weight` (conv (D, C, P, P); a
    manual (D, C*P*P) weight needs `patch_size` or `img_size` in overrides to split C from P);
    img_size from `pos_embed` (1, 1 + g*g, D) as g * P; depth from the `blocks.N` indices; mlp_ratio
    from fc1; qkv_bias from the presence of `qkv.bias`; num_classes from `head.weight` (0 if no head).
    num_heads cannot be seen in any shape: timm's rule D / 64 (tiny 3, small 6, base 12) unless given.
    Overrides replace inferred fields (num_heads, norm_eps, global_pool, dropout rates, ...).
    """
    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise VitError(f"cannot infer the architecture: no {key!r} among {len(state)} keys "
                           f"({_listing(state, 5)})")
        return state[key]

    overrides = _checked_fields(overrides)  # patch_size and img_size are used below, before _make_config
    if any(k.startswith("patch_embed.stem.") for k in state):
        raise VitError("a conv-stem patch embedding cannot be inferred from shapes; only our own checkpoints "
                       "(with their config in the metadata) use it")
    w = need("patch_embed.proj.weight")
    if 0 in w.shape:  # a zero width or patch size would divide by zero below
        raise VitError(f"patch_embed.proj.weight has shape {tuple(w.shape)}, with a zero dimension")
    pos = need("pos_embed")
    tokens = pos.shape[1] if pos.ndim == 3 and pos.shape[0] == 1 else 0
    if tokens < 2 or math.isqrt(tokens - 1) ** 2 != tokens - 1:
        raise VitError(f"pos_embed has shape {tuple(pos.shape)}; expected (1, 1 + g*g, D): a class slot and a "
                       "square grid")
    grid = math.isqrt(pos.shape[1] - 1)
    D = _rows(w)
    if w.ndim == 4 and w.shape[2] == w.shape[3]:
        C, P = w.shape[1], w.shape[2]
    elif w.ndim == 2:
        P = overrides.get("patch_size") or (overrides["img_size"] // grid if "img_size" in overrides else None)
        if not P:
            raise VitError(f"patch_embed.proj.weight {tuple(w.shape)} is a manual (D, C*P*P) weight: give "
                           "patch_size (or img_size) to tell the channels from the patch size")
        C = w.shape[1] // (P * P)
        if C * P * P != w.shape[1]:
            raise VitError(f"patch_embed.proj.weight {tuple(w.shape)}: {w.shape[1]} is not C * {P} * {P}")
    else:
        raise VitError(f"patch_embed.proj.weight has shape {tuple(w.shape)}; expected (D, C, P, P) or (D, C*P*P)")
    blocks = {int(m[1]) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not blocks:
        raise VitError(f"cannot infer the architecture: no blocks.N.* keys among {_listing(state, 5)}")
    if max(blocks) + 1 != len(blocks):
        raise VitError(f"the file's {len(blocks)} blocks are not numbered 0..{len(blocks) - 1} "
                       f"(highest: blocks.{max(blocks)}); a whole block is missing")
    fc1 = need("blocks.0.mlp.fc1.weight")
    inferred: dict[str, object] = dict(
        img_size=grid * P, patch_size=P, in_chans=C, embed_dim=D,
        depth=len(blocks),
        num_heads=max(D // 64, 1), mlp_ratio=_rows(fc1) / D, qkv_bias="blocks.0.attn.qkv.bias" in state,
        num_classes=_rows(state.get("head.weight")),
        patch_embed="conv" if w.ndim == 4 else "manual", pos_embed="learned")
    if "num_heads" not in overrides and D % inferred["num_heads"]:
        raise VitError(f"cannot infer num_heads: timm's rule width / 64 gives {inferred['num_heads']}, "
                       f"which does not divide width {D}; give num_heads")
    return _make_config(**{**inferred, **overrides})


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: int) -> torch.Tensor:
    """timm's `resample_abs_pos_embed` for one class slot: (1, 1 + g*g, D) -> (1, 1 + new_grid**2, D).

    The class slot is kept as is; the g x g grid of patch positions is resized bicubic with antialias
    (align_corners=False), in float32, and cast back to the input dtype.
    """
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1 or pos_embed.shape[1] < 2:
        raise VitError(f"pos_embed has shape {tuple(pos_embed.shape)}, not (1, 1 + g*g, D)")
    _, T, D = pos_embed.shape
    g = math.isqrt(T - 1)
    if g * g != T - 1:
        raise VitError(f"pos_embed has {T} tokens, not 1 + a square grid")
    cls, grid = pos_embed[:, :1], pos_embed[:, 1:].float()
    grid = grid.reshape(1, g, g, D).permute(0, 3, 1, 2)  # (1, g*g, D) -> (1, g, g, D) -> (1, D, g, g)
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, D)  # (1, D, n, n) -> (1, n, n, D) -> (1, n*n, D)
    return torch.cat([cls, grid.to(pos_embed.dtype)], dim=1)  # (1, 1 + n*n, D)


# ---------------------------------------------------------------------------------------- loading


def _expected(cfg: ViTConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Every state-dict key of a model with this config, with its shape and dtype (built on 'meta': no memory)."""
    with torch.device("meta"):
        return {k: (tuple(v.shape), v.dtype) for k, v in VisionTransformer(cfg).state_dict().items()}


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


def _check_state(state: dict[str, torch.Tensor], cfg: ViTConfig, against: str) -> None:
    """VitError unless `state` has exactly the keys, shapes and dtypes of a model built from `cfg`."""
    expected = _expected(cfg)
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
        raise VitError(f"does not match {against}: " + "; ".join(problems))


def _build(cfg: ViTConfig) -> VisionTransformer:
    """A model to load weights into. Built on 'meta' (no random init of what the file overwrites, no
    memory) when every buffer is saved; a model with non-persistent buffers (the 'sin' table, which no
    file holds) is built for real, as those must be computed."""
    with torch.device("meta"):
        model = VisionTransformer(cfg)
    if set(dict(model.named_buffers())) - set(model.state_dict()):
        model = VisionTransformer(cfg)
    return model


def _read_hf_config(path: Path) -> dict:
    """The config.json beside a Hugging Face checkpoint, or {} if there is none."""
    file = path.parent / "config.json"
    if not file.is_file():
        return {}
    try:
        cfg = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise VitError(f"{file}: cannot read the Hugging Face config beside the weights: {e}") from None
    if not isinstance(cfg, dict):
        raise VitError(f"{file}: a Hugging Face config.json is a JSON object, this is a {type(cfg).__name__}")
    if cfg.get("hidden_act", "gelu") != "gelu":  # our MLP is exact (erf) GELU, as HF's 'gelu'
        raise VitError(f"{file}: hidden_act {cfg['hidden_act']!r} is not supported (only 'gelu')")
    for key, accepts, what in (("layer_norm_eps", is_number, "number"), ("num_attention_heads", is_int, "integer"),
                               ("id2label", lambda v: isinstance(v, dict), "JSON object")):
        if key in cfg and not accepts(cfg[key]):
            raise VitError(f"{file}: {key} is {str(cfg[key])[:50]!r}, not a {what}")
    return cfg


def _class_names(layout: str, metadata: dict[str, str], hf: dict, num_classes: int) -> list[str] | None:
    """Class names saved with the weights (our metadata 'classes', HF's id2label), if they fit the head."""
    names = None
    if layout == "ours" and "classes" in metadata:
        try:
            names = json.loads(metadata["classes"])
        except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than Python's stack
            raise VitError("metadata 'classes' is not JSON (or nested too deeply)") from None
    elif isinstance(hf.get("id2label"), dict):
        try:
            names = [hf["id2label"][str(i)] for i in range(num_classes)]
        except KeyError:
            names = None
    if names is None:
        return None
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names) and len(names) == num_classes):
        raise VitError(f"the saved class names do not match the head's {num_classes} classes")
    return names


def _file_config(state: dict[str, torch.Tensor], metadata: dict[str, str], layout: str, arch: str,
                 overrides: dict) -> tuple[ViTConfig, str]:
    """The architecture the file is checked against, and how to name it in an error message."""
    if arch != "auto":
        if arch not in PRESETS:
            raise VitError(f"unknown arch {arch!r}; use 'auto' or one of {', '.join(PRESETS)}")
        classes = _rows(state.get("head.weight"))  # a preset checks the body; the class count is policy
        return _make_config(**{**PRESETS[arch], "num_classes": classes, **overrides}), f"preset {arch!r}"
    if layout == "ours":
        try:
            saved = json.loads(metadata["config"])
        except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than Python's stack
            raise VitError("metadata 'config' is not JSON (or nested too deeply)") from None
        if not isinstance(saved, dict):
            raise VitError("metadata 'config' is not a JSON object")
        saved = {k: v for k, v in saved.items() if k not in _LEGACY_FIELDS}
        blocks = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        if saved.get("depth") != blocks:  # checked before building: a bogus depth would build that many blocks
            raise VitError(f"metadata config says depth {str(saved.get('depth'))[:20]}, "
                           f"the file has {blocks} blocks")
        return _make_config(**{**saved, **overrides}), "its saved config"
    cfg = infer_config(state, **overrides)
    return cfg, f"the architecture inferred from its shapes ({describe(cfg)})"


def load_checkpoint(
    path: PathLike,
    *,
    arch: str = "auto",
    img_size: int | None = None,
    num_classes: int | None = None,
    keep_head: bool = False,
    patch_embed: str | None = None,
    norm_eps: float | None = None,
    **overrides: object,
) -> tuple[VisionTransformer, dict]:
    """Load a timm, Hugging Face or our own safetensors checkpoint into a VisionTransformer.

    The file's architecture comes from our `config` metadata ('ours'), from its shapes (arch='auto',
    `infer_config`), or from `PRESETS[arch]` (the class count excepted: the head is sized from the
    file); every key and shape of the file must match it. LayerNorm eps: `norm_eps`, else our config's,
    else config.json's `layer_norm_eps` beside a HF file (default 1e-12), else timm's 1e-6. A HF
    config.json also gives num_heads. `overrides` are further ViTConfig fields (num_heads,
    drop_path_rate, global_pool, ...).

    The weights are then adapted once: `img_size` != the file's -> pos_embed resampled (timm's
    bicubic); `num_classes` != the file's -> a new zero head (refused with `keep_head`); `patch_embed`
    'manual' <-> 'conv' -> the patch weight reshaped. Floating tensors become float32; integer
    buffers (BatchNorm's num_batches_tracked) stay int64.

    Returns (model, info); the model is in training mode, its tensors on the CPU. info holds
    'layout', 'metadata' (the file's), 'file_config' (the ViTConfig the file was checked against, before
    the adaptations), 'classes' (saved class names, or None), 'head_reset' (bool) and 'resampled'
    ((old grid, new grid) or None).
    """
    path = Path(path)
    tensors, metadata = read_safetensors(path)
    try:
        layout = detect_layout(tensors, metadata)
        hf = _read_hf_config(path) if layout == "hf" else {}
        state = hf_to_timm(tensors) if layout == "hf" else dict(tensors)
        # .float() is a no-op view for F32 data, so the model's tensors share the file's one read buffer
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}

        if norm_eps is None and layout != "ours":
            norm_eps = hf.get("layer_norm_eps", HF_EPS) if layout == "hf" else TIMM_EPS
        if norm_eps is not None:
            overrides["norm_eps"] = norm_eps
        if layout == "hf" and arch == "auto" and "num_attention_heads" in hf:
            overrides.setdefault("num_heads", hf["num_attention_heads"])
        file_cfg, against = _file_config(state, metadata, layout, arch, overrides)
        _match_patch_form(state, file_cfg)
        _check_state(state, file_cfg, against)

        # adapt the checked weights to the requested model
        if num_classes is None:
            num_classes = file_cfg.num_classes
        head_reset = num_classes != file_cfg.num_classes
        if head_reset and keep_head:
            raise VitError(f"keep_head: the file's head has {file_cfg.num_classes} classes, not {num_classes}")
        patch_embed = patch_embed or file_cfg.patch_embed
        if (patch_embed == "stem") != (file_cfg.patch_embed == "stem"):
            raise VitError(f"cannot turn a {file_cfg.patch_embed!r} patch embedding into {patch_embed!r} "
                           "(only 'manual' <-> 'conv' are the same weights)")
        cfg = _make_config(**{**asdict(file_cfg), "img_size": img_size or file_cfg.img_size,
                              "patch_embed": patch_embed, "num_classes": num_classes})
        resampled = None
        if cfg.grid_size != file_cfg.grid_size and "pos_embed" in state:
            resampled = (file_cfg.grid_size, cfg.grid_size)
            state["pos_embed"] = resample_pos_embed(state["pos_embed"], cfg.grid_size)
        _match_patch_form(state, cfg)
        if head_reset:
            state = {k: v for k, v in state.items() if not k.startswith("head.")}

        model = _build(cfg)
        if head_reset:
            model.reset_head(num_classes)  # zero init (and real memory where the model was built on 'meta')
        expected_missing = {k for k in model.state_dict() if k.startswith("head.")} if head_reset else set()
        # Buffers get their own memory: the file's tensors are views of one read buffer and so share one
        # autograd version counter, and BatchNorm (the stem) updates its running stats in place in every
        # training forward, which would then count as modifying the weights the backward pass needs.
        buffers = set(dict(model.named_buffers()))
        state = {k: v.clone() if k in buffers else v for k, v in state.items()}
        # assign=True: the parameters become the file's tensors (no copy into a freshly initialised model)
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        if set(missing) != expected_missing or unexpected:
            raise VitError(f"loading left missing keys {_listing(missing) or '-'} (expected "
                           f"{_listing(expected_missing) or 'none'}) and unexpected keys "
                           f"{_listing(unexpected) or '-'}")
        classes = None if head_reset else _class_names(layout, metadata, hf, num_classes)
    except VitError as e:
        raise VitError(f"{path}: {e}") from None
    info = dict(layout=layout, metadata=metadata, file_config=file_cfg, classes=classes,
                head_reset=head_reset, resampled=resampled)
    return model, info


def save_checkpoint(path: PathLike, model: VisionTransformer, metadata: dict[str, str] | None = None) -> None:
    """Write `model.state_dict()` as safetensors (atomically) with its config in the metadata.

    metadata: extra str -> str entries, e.g. 'classes' (JSON list), 'mean'/'std' (JSON lists), 'args';
    'config' is ours: JSON of `dataclasses.asdict(model.cfg)`, from which `load_checkpoint` rebuilds
    the model exactly. Pass the bare model, not a DDP or compiled wrapper (their key names differ).
    """
    extra = dict(metadata or {})
    if "config" in extra:
        raise VitError(f"{path}: metadata key 'config' is reserved for the model's config")
    write_safetensors(path, model.state_dict(), {"config": json.dumps(asdict(model.cfg)), **extra})


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
                raise VitError(f"checkpoint metadata {key!r} is not a JSON list of numbers: "
                               f"{metadata[key][:100]}") from None
            if len(value) != channels:
                raise VitError(f"checkpoint metadata {key!r} has {len(value)} values for {channels} channels")
            if not all(math.isfinite(v) for v in value) or (key == "std" and min(value) <= 0):
                raise VitError(f"checkpoint metadata {key!r} is {metadata[key][:100]}: need finite numbers"
                               + (", all > 0" if key == "std" else ""))
        stats.append(value)
    return stats[0], stats[1]
