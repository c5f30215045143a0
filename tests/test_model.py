import ast
import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vit.model import PRESETS, ViTConfig, VisionTransformer, param_groups, sincos_pos_embed


def tiny(**kw) -> ViTConfig:
    base = dict(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=32, depth=2, num_heads=4)
    return ViTConfig(**{**base, **kw})


@pytest.mark.parametrize("patch,pos,pool", list(itertools.product(("manual", "conv", "stem"), ("sin", "learned", "none"),
                                                                  ("token", "avg"))))
def test_every_combination_runs_and_trains_every_parameter(patch, pos, pool):
    torch.manual_seed(0)
    model = VisionTransformer(tiny(patch_embed=patch, pos_embed=pos, global_pool=pool))
    x = torch.randn(3, 3, 16, 16)
    logits = model(x)
    assert logits.shape == (3, 5) and torch.isfinite(logits).all()
    # the zero-free init must give every parameter a gradient (the head's input is not constant)
    F.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    names = set(model.state_dict())
    assert ("pos_embed" in names) == (pos == "learned")  # the sin table is a non-persistent buffer
    assert "pos_embed" not in dict(model.named_parameters()) or pos == "learned"


def test_manual_patching_equals_conv_patching():
    torch.manual_seed(0)
    conv = VisionTransformer(tiny(patch_embed="conv")).eval()
    manual = VisionTransformer(tiny(patch_embed="manual")).eval()
    state = conv.state_dict()
    w = state["patch_embed.proj.weight"]
    state["patch_embed.proj.weight"] = w.reshape(w.shape[0], -1)  # (D, C, P, P) -> (D, C*P*P)
    manual.load_state_dict(state)
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(manual(x), conv(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("pool", ("token", "avg"))
def test_explicit_attention_equals_fused(pool):
    torch.manual_seed(0)
    fused = VisionTransformer(tiny(global_pool=pool)).eval()
    explicit = VisionTransformer(tiny(global_pool=pool)).eval()
    explicit.load_state_dict(fused.state_dict())
    explicit.set_fused_attn(False)
    assert all(b.attn.fused for b in fused.blocks) and not any(b.attn.fused for b in explicit.blocks)
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(explicit(x), fused(x), atol=1e-5, rtol=0)


def test_dropout_only_acts_in_training_and_attention_maps_are_probabilities():
    torch.manual_seed(0)
    model = VisionTransformer(tiny(drop_rate=0.3, attn_drop_rate=0.3, drop_path_rate=0.3))
    x = torch.randn(2, 3, 16, 16)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    maps = model.attention_maps(x)
    assert len(maps) == 2 and maps[0].shape == (2, 4, 17, 17)
    torch.testing.assert_close(maps[-1].sum(-1), torch.ones(2, 4, 17))


def test_avg_pool_ignores_the_class_token():
    torch.manual_seed(0)
    model = VisionTransformer(tiny(global_pool="avg")).eval()
    tokens = torch.randn(2, 17, 32)
    changed = tokens.clone()
    changed[:, 0] += 100.0
    torch.testing.assert_close(model.forward_head(tokens), model.forward_head(changed))


def test_sincos_table_values_and_layout():
    table = sincos_pos_embed(grid_size=3, dim=8)  # D/4 = 2 frequencies: 1 and 1/100
    assert table.shape == (9, 8)
    # patch (row 1, col 2) is raster index 5: row channels [0:4], column channels [4:8]
    w = torch.tensor([1.0, 0.01])
    expected = torch.cat([torch.sin(1 * w), torch.cos(1 * w), torch.sin(2 * w), torch.cos(2 * w)])
    torch.testing.assert_close(table[5], expected)
    assert torch.equal(table[0], torch.tensor([0.0, 0, 1, 1, 0, 0, 1, 1]))
    assert len({tuple(r.tolist()) for r in sincos_pos_embed(14, 64)}) == 196  # every position distinct
    model = VisionTransformer(tiny(pos_embed="sin"))
    assert torch.equal(model.pos_embed[0, 0], torch.zeros(32))  # class-token slot
    torch.testing.assert_close(model.pos_embed[0, 1:], sincos_pos_embed(4, 32))


@pytest.mark.parametrize("kw,message", [
    (dict(img_size=30), "img_size 30 is not a multiple of patch_size 4"),
    (dict(num_heads=5), "embed_dim 32 is not divisible by num_heads 5"),
    (dict(embed_dim=30, num_heads=3, pos_embed="sin"), "needs embed_dim divisible by 4"),
    (dict(patch_embed="linear"), "patch_embed must be one of"),
    (dict(pos_embed="rope"), "pos_embed must be one of"),
    (dict(global_pool="max"), "global_pool must be one of"),
    (dict(drop_path_rate=1.0), r"drop_path_rate must be in \[0, 1\)"),
    (dict(depth=0), "depth must be >= 1"),
])
def test_bad_config_is_refused_with_a_clear_message(kw, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kw)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed(4, 30)


def test_vit_base_matches_timm_layout_exactly():
    with torch.device("meta"):  # shapes only: no 346 MB allocation
        model = VisionTransformer(ViTConfig(**PRESETS["vit_base_patch16_224"]))
    state = model.state_dict()
    assert len(state) == 152
    assert sum(p.numel() for p in model.parameters()) == 86_567_656
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["cls_token"] == (1, 1, 768)
    assert shapes["pos_embed"] == (1, 197, 768)
    assert shapes["patch_embed.proj.weight"] == (768, 3, 16, 16)
    assert shapes["blocks.11.attn.qkv.weight"] == (2304, 768)
    assert shapes["blocks.11.mlp.fc1.weight"] == (3072, 768)
    assert shapes["head.weight"] == (1000, 768)
    per_block = {"norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
                 "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                 "mlp.fc2.weight", "mlp.fc2.bias"}
    expected = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight",
                "norm.bias", "head.weight", "head.bias"} | {f"blocks.{i}.{k}" for i in range(12) for k in per_block}
    assert set(state) == expected


def test_param_groups_split_decay_and_layer_scales():
    model = VisionTransformer(tiny(pos_embed="learned"))
    groups = param_groups(model, weight_decay=0.05)
    by_id = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert by_id[id(named["blocks.0.attn.qkv.weight"])]["weight_decay"] == 0.05
    for name in ("pos_embed", "cls_token", "blocks.0.norm1.weight", "head.bias"):
        assert by_id[id(named[name])]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(named)
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.5)
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert by_id[id(named["head.weight"])]["lr_scale"] == 1.0
    assert by_id[id(named["blocks.1.mlp.fc1.weight"])]["lr_scale"] == 0.5
    assert by_id[id(named["patch_embed.proj.weight"])]["lr_scale"] == 0.125


def test_reset_head_is_zero_and_resized():
    model = VisionTransformer(tiny())
    model.reset_head(7)
    assert model.head.weight.shape == (7, 32) and model.head.weight.abs().sum() == 0
    assert model.cfg.num_classes == 7


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = VisionTransformer(tiny(num_classes=10, embed_dim=64, num_heads=4, depth=2))
    x, y = torch.randn(32, 3, 16, 16), torch.randint(0, 10, (32,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(200):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_model_file_imports_only_torch_and_stdlib():
    tree = ast.parse(Path(__file__).resolve().parents[1].joinpath("vit", "model.py").read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "model.py must not use relative imports"
            roots.add(node.module.split(".")[0])
    assert roots <= {"torch", "math", "dataclasses", "__future__"}, roots


def test_patch_dropout_keeps_the_class_token_and_a_random_subset_in_training_only():
    torch.manual_seed(0)
    model = VisionTransformer(tiny())
    assert model.patch_dropout == 0.0  # off unless a trainer sets it
    model.patch_dropout = 0.5
    images = torch.randn(2, 3, 16, 16)
    kept = model.embed(images)
    assert kept.shape == (2, 1 + 8, 32)  # 16 patches -> 8 kept, plus the class token
    full = model.eval().embed(images)
    assert full.shape == (2, 17, 32)
    torch.testing.assert_close(kept[:, 0], full[:, 0])
    for b in range(2):  # every kept token is one of the image's own tokens, each at most once
        matches = (kept[b, 1:, None] == full[b, None, 1:]).all(-1)  # (8, 16)
        assert (matches.sum(1) == 1).all() and (matches.sum(0) <= 1).all()
    model.train().patch_dropout = 0.0  # unmasked tuning: training on every token
    torch.testing.assert_close(model.embed(images), full, atol=0, rtol=0)
