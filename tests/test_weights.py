import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch


from vit.formats import read_safetensors, write_safetensors
from vit.model import ViTConfig, VisionTransformer, describe
from vit.weights import (CheckpointError, detect_layout, hf_to_timm, infer_config, load_checkpoint, resample_pos_embed, save_checkpoint,
                         saved_normalisation)

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
TIMM = FIXTURES / "vit_small_fixture_timm.safetensors"


def fixtures() -> Path:
    if not TIMM.is_file():
        pytest.skip(f"../shared not found: the timm/HF reference checkpoints are expected in {FIXTURES}")
    return FIXTURES


def tiny(**kw) -> ViTConfig:
    base = dict(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=64, depth=2, num_heads=1)
    return ViTConfig(**{**base, **kw})


def randomized(model: VisionTransformer, seed: int = 0) -> VisionTransformer:
    """Every parameter and float buffer random (far from init), so a misplaced tensor shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in [t for t in model.state_dict().values() if t.is_floating_point()]:  # not the fixed sin table
            vectors = torch.rand(t.shape, generator=g) + 0.5  # norm scales, biases, BatchNorm variances
            t.copy_(vectors if t.ndim == 1 else torch.randn(t.shape, generator=g) * 0.1)
    return model.eval()


def write_timm(path: Path, model: VisionTransformer, drop: str = "", **extra: torch.Tensor) -> Path:
    """A timm-layout file (no config metadata) of a model's state, optionally minus a key / plus others."""
    state = {k: v for k, v in model.state_dict().items() if k != drop}
    write_safetensors(path, {**state, **extra}, {"format": "pt"})
    return path


def to_hf(state: dict[str, torch.Tensor], prefix: str = "vit.") -> dict[str, torch.Tensor]:
    """The inverse of hf_to_timm, written out by hand from transformers' ViT names."""
    out = {}
    for k, v in state.items():
        parts = k.split(".")
        if k == "cls_token":
            out[prefix + "embeddings.cls_token"] = v
        elif k == "pos_embed":
            out[prefix + "embeddings.position_embeddings"] = v
        elif k.startswith("patch_embed.proj."):
            out[prefix + "embeddings.patch_embeddings.projection." + parts[-1]] = v
        elif k.startswith("blocks."):
            layer, name, kind = parts[1], ".".join(parts[2:-1]), parts[-1]
            base = f"{prefix}encoder.layer.{layer}."
            if name == "attn.qkv":
                for part, chunk in zip(("query", "key", "value"), v.chunk(3)):
                    out[f"{base}attention.attention.{part}.{kind}"] = chunk
            else:
                hf = {"attn.proj": "attention.output.dense", "norm1": "layernorm_before", "norm2": "layernorm_after",
                      "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}[name]
                out[f"{base}{hf}.{kind}"] = v
        elif k.startswith("norm."):
            out[prefix + "layernorm." + parts[-1]] = v
        elif k.startswith("head."):
            out["classifier." + parts[-1]] = v
    return out


# ------------------------------------------------------------------ parity with the real timm / HF


@pytest.mark.parametrize("name,ref,atol,kw", [
    ("vit_small_fixture_timm.safetensors", "logits", 1e-4, {}),
    ("vit_small_fixture_timm_bf16.safetensors", "logits_from_bf16_weights", 1e-3, {}),
    ("vit_small_fixture_timm_f16.safetensors", "logits", 5e-3, {}),
    ("vit_small_fixture_timm.safetensors", "logits", 1e-4, {"patch_embed": "manual"}),
])
def test_timm_fixtures_reproduce_timm_logits(name, ref, atol, kw):
    probe, _ = read_safetensors(fixtures() / "vit_small_fixture_probe.safetensors")
    model, info = load_checkpoint(fixtures() / name, **kw)
    assert info["layout"] == "timm" and info["resampled"] is None
    assert model.cfg == ViTConfig(embed_dim=192, depth=2, num_heads=3, num_classes=10, **kw)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(probe["input"]), probe[ref], atol=atol, rtol=0)


def test_resampled_pos_embed_reproduces_timm_at_288px():
    probe, _ = read_safetensors(fixtures() / "vit_small_fixture_probe.safetensors")
    model, info = load_checkpoint(TIMM, img_size=288)
    assert info["resampled"] == (14, 18) and model.pos_embed.shape == (1, 1 + 18 * 18, 192)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(probe["input_288"]), probe["logits_288"], atol=1e-3, rtol=0)


def test_hugging_face_fixture_reproduces_transformers_logits(tmp_path):
    probe, _ = read_safetensors(fixtures() / "vit_small_fixture_hf_probe.safetensors")
    model, info = load_checkpoint(fixtures() / "vit_small_fixture_hf" / "model.safetensors")
    assert info["layout"] == "hf" and model.cfg.norm_eps == 1e-12 and model.cfg.num_heads == 3
    assert info["classes"] == [f"LABEL_{i}" for i in range(10)]  # id2label of its config.json
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(probe["input"]), probe["logits"], atol=1e-4, rtol=0)
    alone = tmp_path / "model.safetensors"  # without config.json: HF's default eps, no class names
    shutil.copy(fixtures() / "vit_small_fixture_hf" / "model.safetensors", alone)
    model, info = load_checkpoint(alone)
    assert model.cfg.norm_eps == 1e-12 and info["classes"] is None


def test_hf_config_json_with_another_activation_is_refused(tmp_path):
    shutil.copy(fixtures() / "vit_small_fixture_hf" / "model.safetensors", tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"hidden_act": "gelu_new"}))
    with pytest.raises(CheckpointError, match="hidden_act 'gelu_new' is not supported"):
        load_checkpoint(tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"layer_norm_eps": "tiny"}))
    with pytest.raises(CheckpointError, match="layer_norm_eps is 'tiny', not a number"):
        load_checkpoint(tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: cannot read"):
        load_checkpoint(tmp_path / "model.safetensors")


@pytest.mark.parametrize("arch,message", [
    ("vit_tiny_patch16_224", r"does not match preset 'vit_tiny_patch16_224': missing keys: blocks\.2\.attn"),
    ("vit_small_patch16_224", r"cls_token: file \(1, 1, 192\) vs model \(1, 1, 384\)"),
    ("vit_huge", "unknown arch 'vit_huge'"),
])
def test_arch_preset_check_names_keys_and_both_shapes(arch, message):
    with pytest.raises(CheckpointError, match=message) as e:
        load_checkpoint(fixtures() / "vit_small_fixture_timm.safetensors", arch=arch)
    assert str(TIMM) in str(e.value)


def test_reset_head_gives_a_zero_head_and_a_new_config():
    model, info = load_checkpoint(fixtures() / "vit_small_fixture_timm.safetensors")
    file_cfg = model.cfg
    model.reset_head(3)
    assert info["file_config"].num_classes == 10 and file_cfg.num_classes == 10  # the config is replaced, not changed
    assert model.head.weight.shape == (3, 192) and not model.head.weight.any() and not model.head.bias.any()
    assert model.cfg.num_classes == 3
    with torch.no_grad():
        assert not model.eval()(torch.randn(2, 3, 224, 224)).any()  # zero head: zero logits
    model.reset_head(0)  # features only
    assert isinstance(model.head, torch.nn.Identity) and model.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 192)


def test_loaded_model_trains():
    model, _ = load_checkpoint(fixtures() / "vit_small_fixture_timm.safetensors")  # a zero head would stop gradients
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 224, 224)), torch.tensor([0, 1])).backward()
    opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert {"head.weight", "blocks.0.attn.qkv.weight", "patch_embed.proj.weight"} <= changed


# ----------------------------------------------------------------------- layouts and key sets


def test_detect_layout():
    timm = VisionTransformer(tiny()).state_dict()
    assert detect_layout(timm) == "timm"
    assert detect_layout(timm, {"format": "pt"}) == "timm"
    assert detect_layout(timm, {"config": "{}"}) == "ours"
    assert detect_layout(to_hf(timm)) == "hf"
    assert detect_layout(to_hf(timm, prefix="")) == "hf"
    with pytest.raises(CheckpointError, match=r"unknown checkpoint layout \(no ViT keys\).*2 keys: conv1.weight, fc.bias"):
        detect_layout({"conv1.weight": torch.zeros(1), "fc.bias": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="both timm and Hugging Face keys"):
        detect_layout({**timm, **to_hf(timm)})


@pytest.mark.parametrize("prefix", ["vit.", ""])
def test_hf_to_timm_inverts_the_hf_names_exactly(prefix):
    state = randomized(VisionTransformer(tiny())).state_dict()
    hf = to_hf(state, prefix)
    if not prefix:  # a ViTModel: no classifier, and a pooler that is dropped
        hf = {k: v for k, v in hf.items() if not k.startswith("classifier.")}
        hf.update({"pooler.dense.weight": torch.zeros(64, 64), "pooler.dense.bias": torch.zeros(64)})
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    out = hf_to_timm(hf)
    assert out.keys() == state.keys()
    for k in state:
        assert torch.equal(out[k], state[k]), k


def test_hf_to_timm_refuses_unknown_and_incomplete_keys():
    hf = to_hf(VisionTransformer(tiny()).state_dict())
    with pytest.raises(CheckpointError, match=r"no timm equivalent: vit\.embeddings\.mask_token"):
        hf_to_timm({**hf, "vit.embeddings.mask_token": torch.zeros(1, 1, 64)})
    del hf["vit.encoder.layer.1.attention.attention.key.weight"]
    with pytest.raises(CheckpointError, match="layer 1: attention weight has only query, value"):
        hf_to_timm(hf)


def test_hf_layout_file_loads_like_the_timm_file(tmp_path):
    model = randomized(VisionTransformer(tiny(embed_dim=128, num_heads=2)))
    write_safetensors(tmp_path / "hf.safetensors", to_hf(model.state_dict()))
    loaded, info = load_checkpoint(tmp_path / "hf.safetensors", norm_eps=1e-6)
    assert info["layout"] == "hf" and loaded.cfg == model.cfg  # 128 / 64 = 2 heads, timm's rule
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model(x), atol=1e-5, rtol=0)


def test_extra_missing_and_misshapen_keys_are_named(tmp_path):
    model = VisionTransformer(tiny())
    path = write_timm(tmp_path / "extra.safetensors", model, **{"blocks.0.attn.extra": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"extra.safetensors: does not match the architecture inferred .*"
                                       r"unexpected keys: blocks\.0\.attn\.extra"):
        load_checkpoint(path)
    path = write_timm(tmp_path / "missing.safetensors", model, drop="blocks.1.norm1.weight")
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.1\.norm1\.weight$"):
        load_checkpoint(path)
    path = write_timm(tmp_path / "shape.safetensors", model, drop="norm.bias", **{"norm.bias": torch.zeros(65)})
    with pytest.raises(CheckpointError, match=r"norm\.bias: file \(65,\) vs model \(64,\)"):
        load_checkpoint(path)
    path = write_timm(tmp_path / "dtype.safetensors", model, drop="norm.bias",
                      **{"norm.bias": torch.zeros(64, dtype=torch.int32)})
    with pytest.raises(CheckpointError, match=r"norm\.bias: file torch.int32 vs model torch.float32"):
        load_checkpoint(path)
    write_safetensors(tmp_path / "other.safetensors", {"layer1.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"other.safetensors: unknown checkpoint layout.*layer1\.weight"):
        load_checkpoint(tmp_path / "other.safetensors")


def test_infer_config_reads_every_shape_and_needs_a_patch_size_for_manual_weights():
    cfg = tiny(embed_dim=128, num_heads=2, mlp_ratio=3.0, qkv_bias=False, num_classes=7, in_chans=1, depth=3)
    state = VisionTransformer(cfg).state_dict()
    assert infer_config(state) == cfg
    assert infer_config(state, num_heads=4, norm_eps=1e-12) == ViTConfig(**{**asdict(cfg), "num_heads": 4,
                                                                               "norm_eps": 1e-12})
    assert infer_config({k: v for k, v in state.items() if not k.startswith("head.")}).num_classes == 0
    manual = VisionTransformer(tiny(patch_embed="manual")).state_dict()
    with pytest.raises(CheckpointError, match=r"manual \(D, C\*P\*P\) weight: give patch_size"):
        infer_config(manual)
    assert infer_config(manual, patch_size=4) == tiny(patch_embed="manual")
    assert infer_config(manual, img_size=16) == tiny(patch_embed="manual")
    renumbered = {k.replace("blocks.1.", "blocks.7."): v for k, v in state.items()}
    with pytest.raises(CheckpointError, match=r"3 blocks are not numbered 0..2 \(highest: blocks.7\)"):
        infer_config(renumbered)
    with pytest.raises(CheckpointError, match="no 'pos_embed'"):
        infer_config({k: v for k, v in state.items() if k != "pos_embed"})
    with pytest.raises(CheckpointError, match="give num_heads"):
        infer_config(VisionTransformer(tiny(embed_dim=200, num_heads=4)).state_dict())  # 200 // 64 = 3 heads


def test_describe_is_one_line_with_the_numbers():
    text = describe(ViTConfig(embed_dim=768, depth=12, num_heads=12))
    assert "\n" not in text and "depth 12, width 768, 12 heads" in text and "86.57M parameters" in text


def test_resample_pos_embed_keeps_the_class_slot_and_constants():
    pos = torch.randn(1, 1 + 4 * 4, 8)
    pos[:, 1:] = torch.arange(8.0)  # the same vector at every grid position
    out = resample_pos_embed(pos, 6)
    assert out.shape == (1, 1 + 36, 8)
    assert torch.equal(out[:, 0], pos[:, 0])
    torch.testing.assert_close(out[:, 1:], torch.arange(8.0).expand(1, 36, 8), atol=1e-5, rtol=0)
    assert resample_pos_embed(torch.randn(1, 10, 4), 2).shape == (1, 5, 4)
    with pytest.raises(CheckpointError, match="a class slot and a square grid"):
        resample_pos_embed(torch.randn(1, 11, 4), 2)
    with pytest.raises(CheckpointError, match=r"shape \(1, 1, 4\); expected \(1, 1 \+ g\*g, D\)"):
        resample_pos_embed(torch.randn(1, 1, 4), 2)


# --------------------------------------------------------------------------- our own checkpoints


@pytest.mark.parametrize("kw", [
    dict(patch_embed="manual", pos_embed="sin"),
    dict(patch_embed="stem", pos_embed="learned", global_pool="avg"),
    dict(patch_embed="conv", pos_embed="none", qkv_bias=False, norm_eps=1e-5, mlp_ratio=2.0),
])
def test_our_checkpoint_round_trips_exactly(tmp_path, kw):
    model = randomized(VisionTransformer(tiny(**kw)))
    if kw["patch_embed"] == "stem":
        model.patch_embed.stem[1].num_batches_tracked.fill_(7)
    save_checkpoint(tmp_path / "ours.safetensors", model, {"classes": json.dumps(list("abcde")), "args": "--x 1"})
    loaded, info = load_checkpoint(tmp_path / "ours.safetensors")
    assert info["layout"] == "ours" and loaded.cfg == model.cfg
    assert info["classes"] == list("abcde") and info["metadata"]["args"] == "--x 1"
    saved, got = model.state_dict(), loaded.state_dict()
    assert saved.keys() == got.keys()
    for k in saved:
        assert got[k].dtype == saved[k].dtype and torch.equal(got[k], saved[k]), k
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model(x))


def test_our_checkpoint_changes_size_patching_and_head(tmp_path):
    model = randomized(VisionTransformer(tiny(patch_embed="manual", pos_embed="sin")))
    save_checkpoint(tmp_path / "ours.safetensors", model)
    conv, _ = load_checkpoint(tmp_path / "ours.safetensors", patch_embed="conv")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(conv.eval()(x), model(x), atol=1e-5, rtol=0)
    bigger, info = load_checkpoint(tmp_path / "ours.safetensors", img_size=24)
    assert bigger.cfg.img_size == 24 and info["resampled"] is None  # the sin table is rebuilt, not resampled
    assert bigger.eval()(torch.randn(1, 3, 24, 24)).shape == (1, 5) and info["classes"] is None
    with pytest.raises(CheckpointError, match="cannot turn a 'manual' patch embedding into 'stem'"):
        load_checkpoint(tmp_path / "ours.safetensors", patch_embed="stem")
    with pytest.raises(CheckpointError, match="metadata key 'config' is reserved"):
        save_checkpoint(tmp_path / "bad.safetensors", model, {"config": "{}"})


def test_our_checkpoint_with_a_bad_config_is_refused(tmp_path):
    state = VisionTransformer(tiny()).state_dict()
    good = asdict(tiny())
    for config, message in [("{oops", "metadata 'config' is not JSON"),
                            ({**good, "colour": 1}, r"unknown config field\(s\) colour"),
                            ({**good, "img_size": 15}, "img_size 15 is not a multiple"),
                            ({**good, "depth": 10**9}, "depth 1000000000, the file has 2 blocks")]:
        text = config if isinstance(config, str) else json.dumps(config)
        write_safetensors(tmp_path / "bad.safetensors", state, {"config": text})
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(tmp_path / "bad.safetensors")
    write_safetensors(tmp_path / "bad.safetensors", state, {"config": json.dumps(asdict(tiny())), "classes": '["a"]'})
    with pytest.raises(CheckpointError, match="class names do not match the head's 5 classes"):
        load_checkpoint(tmp_path / "bad.safetensors")


def test_a_learned_pos_embed_file_does_not_go_into_a_sin_model(tmp_path):
    path = write_timm(tmp_path / "timm.safetensors", VisionTransformer(tiny(embed_dim=64)))
    with pytest.raises(CheckpointError, match="unexpected keys: pos_embed"):
        load_checkpoint(path, pos_embed="sin")


def _with_config(path: Path, state: dict, config: object, **metadata: str) -> Path:
    """Our layout with `config` (a dict, dumped as JSON, or raw text) as the saved config."""
    text = config if isinstance(config, str) else json.dumps(config)
    write_safetensors(path, state, {"config": text, **metadata})
    return path


@pytest.mark.parametrize("field, value, message", [
    ("in_chans", 1.5, "in_chans is '1.5' (float), not an integer"),
    ("num_classes", True, "num_classes is 'True' (bool), not an integer"),
    ("num_classes", float("inf"), "num_classes is 'inf' (float), not an integer"),
    ("num_classes", 10**30, f"num_classes is {10**30}, above the 1048576 this project builds"),
    ("embed_dim", 4.0, "embed_dim is '4.0' (float), not an integer"),
    ("mlp_ratio", float("nan"), "mlp_ratio is 'nan' (float), not a finite number"),
    ("mlp_ratio", "4", "mlp_ratio is '4' (str), not a finite number"),
    ("norm_eps", "x", "norm_eps is 'x' (str), not a finite number"),
    ("norm_eps", float("nan"), "norm_eps is 'nan' (float), not a finite number"),
    ("norm_eps", 0, "norm_eps must be > 0, got 0"),
    ("drop_rate", float("-inf"), "drop_rate is '-inf' (float), not a finite number"),
    ("qkv_bias", 1, "qkv_bias is '1' (int), not true or false"),
    ("pos_embed", ["sin"], "pos_embed is \"['sin']\" (list), not a string"),
    ("global_pool", {"avg": 1}, "global_pool is \"{'avg': 1}\" (dict), not a string"),
])
def test_every_saved_config_field_is_type_and_range_checked(tmp_path, field, value, message):
    state = VisionTransformer(tiny()).state_dict()
    path = _with_config(tmp_path / "bad.safetensors", state, {**asdict(tiny()), field: value})
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(e.value) == f"{path}: invalid config: {message}", e.value


def test_config_and_class_names_nested_past_the_recursion_limit_are_refused(tmp_path):
    state = VisionTransformer(tiny()).state_dict()
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(CheckpointError, match="metadata 'config' is not JSON"):
        load_checkpoint(_with_config(tmp_path / "a.safetensors", state, deep))
    with pytest.raises(CheckpointError, match="metadata 'classes' is not JSON"):
        load_checkpoint(_with_config(tmp_path / "b.safetensors", state, asdict(tiny()), classes=deep))


def test_a_nan_layer_norm_eps_is_refused_from_any_source(tmp_path):
    path = write_timm(tmp_path / "timm.safetensors", VisionTransformer(tiny(embed_dim=64)))
    with pytest.raises(CheckpointError, match=rf"{path}: invalid config: norm_eps is 'nan'"):
        load_checkpoint(path, norm_eps=float("nan"))
    shutil.copy(path, tmp_path / "model.safetensors")  # a Hugging Face file's config.json is read too
    hf = tmp_path / "model.safetensors"
    write_safetensors(hf, to_hf(read_safetensors(path)[0]))
    (tmp_path / "config.json").write_text('{"layer_norm_eps": NaN}')
    with pytest.raises(CheckpointError, match="invalid config: norm_eps is 'nan'"):
        load_checkpoint(hf)


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (64, 3, 0, 0), (64, 0, 4, 4)])
def test_a_timm_patch_weight_with_a_zero_dimension_is_refused(tmp_path, shape):
    path = write_timm(tmp_path / "timm.safetensors", VisionTransformer(tiny(embed_dim=64)),
                      drop="patch_embed.proj.weight", **{"patch_embed.proj.weight": torch.zeros(shape)})
    with pytest.raises(CheckpointError, match=rf"{path}: patch_embed.proj.weight has shape \({', '.join(map(str, shape))}\), "
                                       "with a zero dimension"):
        load_checkpoint(path)


@pytest.mark.parametrize("img_size, patch_size, message", [
    (20000, 4, "img_size is 20000, above the 4096 this project builds"),
    (10**6, 4, "img_size is 1000000, above the 4096 this project builds"),
    (4096, 4, r"img_size 4096 / patch_size 4 is a 1024x1024 grid \(1048576 tokens\), more than the 65536"),
])
def test_an_image_size_no_tensor_bounds_is_refused_before_allocating(tmp_path, img_size, patch_size, message):
    """A 'sin' model's image size is in no tensor: a 1 MB file could ask for a 500 GB position table."""
    model = VisionTransformer(tiny(patch_embed="manual", pos_embed="sin"))
    config = {**asdict(model.cfg), "img_size": img_size, "patch_size": patch_size}
    path = _with_config(tmp_path / "huge.safetensors", model.state_dict(), config)
    with pytest.raises(CheckpointError, match=rf"{path}: (invalid config: |config field )?{message}"):  # before the model is built
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="img_size is 8192, above the 4096"):  # a requested size, too
        load_checkpoint(_with_config(tmp_path / "ok.safetensors", model.state_dict(), asdict(model.cfg)), img_size=8192)


def test_the_largest_image_size_still_loads(tmp_path):
    model = VisionTransformer(tiny(patch_size=16, patch_embed="manual", pos_embed="sin"))
    path = _with_config(tmp_path / "big.safetensors", model.state_dict(), {**asdict(model.cfg), "img_size": 4096})
    loaded, _ = load_checkpoint(path)
    assert loaded.cfg.img_size == 4096 and loaded.pos_embed.shape == (1, 1 + 256 * 256, 64)


def test_a_config_field_the_model_does_not_have_is_refused(tmp_path):
    """A runtime choice (the attention kernel) or a training one (PatchDropout) is no architecture field."""
    model = randomized(VisionTransformer(tiny(patch_embed="manual", pos_embed="sin")))
    path = _with_config(tmp_path / "extra.safetensors", model.state_dict(), {**asdict(model.cfg), "fused_attn": False})
    with pytest.raises(CheckpointError, match=r"unknown config field\(s\) fused_attn"):
        load_checkpoint(path)
    save_checkpoint(path, model)
    with pytest.raises(CheckpointError, match=r"unknown config field\(s\) patch_dropout"):  # as an argument
        load_checkpoint(path, patch_dropout=0.5)


@pytest.mark.parametrize("key, text, message", [
    ("mean", "[" * 100_000 + "]" * 100_000, "'mean' is not a JSON list of numbers"),
    ("mean", "[NaN, 0.5, 0.5]", "'mean' is .*: need finite numbers"),
    ("std", "[0.5, 1e999, 0.5]", "'std' is .*: need finite numbers, all > 0"),
    ("std", "[0.5, 0, 0.5]", "'std' is .*: need finite numbers, all > 0"),
])
def test_saved_normalisation_refuses_what_would_make_the_inputs_nan(key, text, message):
    with pytest.raises(CheckpointError, match=message):
        saved_normalisation("ours", {key: text}, 3)
    assert saved_normalisation("ours", {key: "[0.25, 0.5, 0.75]"}, 3)[key == "std"] == [0.25, 0.5, 0.75]
