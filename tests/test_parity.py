"""Our ViT loads checkpoints written by the real timm and transformers and reproduces their logits.

The reference files live in tests/fixtures/ (see its README), so these run in every clone. The
ViT-B/16-shaped fixtures in test_weights.py check the same at the real architecture's shapes.
"""

from pathlib import Path

import pytest
import torch

from vit.formats import read_safetensors
from vit.model import ViTConfig
from vit.weights import load_checkpoint

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)


def probe(name: str = "tiny_probe.safetensors") -> dict[str, torch.Tensor]:
    return read_safetensors(FIXTURES / name)[0]


@pytest.mark.parametrize("name,ref,atol,kw", [
    ("tiny_timm.safetensors", "logits", 1e-4, {}),
    ("tiny_timm_bf16.safetensors", "logits_from_bf16_weights", 1e-4, {}),
    ("tiny_timm_f16.safetensors", "logits", 5e-3, {}),
    ("tiny_timm.safetensors", "logits", 1e-4, {"patch_embed": "manual"}),  # the reshape + Linear embedding
])
def test_timm_checkpoints_reproduce_timm_logits(name, ref, atol, kw):
    model, info = load_checkpoint(FIXTURES / name, num_heads=3, **kw)
    assert info["layout"] == "timm" and info["resampled"] is None
    assert model.cfg == ViTConfig(**TINY, **kw)
    with torch.no_grad():
        logits = model.eval()(probe()["input"])
    torch.testing.assert_close(logits, probe()[ref], atol=atol, rtol=0)


def test_wrong_head_count_gives_other_logits():
    # the heads cannot be read from any shape: the width / 64 guess (1 head) loads, but computes another function
    model, _ = load_checkpoint(FIXTURES / "tiny_timm.safetensors", num_heads=1)
    with torch.no_grad():
        assert (model.eval()(probe()["input"]) - probe()["logits"]).abs().max() > 1e-2


def test_pos_embed_resampled_at_load_reproduces_timm_at_48px():
    model, info = load_checkpoint(FIXTURES / "tiny_timm.safetensors", num_heads=3, img_size=48)
    assert info["resampled"] == (4, 6) and model.pos_embed.shape == (1, 1 + 6 * 6, 48)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(probe()["input_48"]), probe()["logits_48"], atol=1e-4, rtol=0)


def test_hugging_face_checkpoint_reproduces_transformers_logits():
    model, info = load_checkpoint(FIXTURES / "tiny_hf" / "model.safetensors")  # heads and eps from config.json
    assert info["layout"] == "hf" and model.cfg.num_heads == 3 and model.cfg.norm_eps == 1e-12
    assert info["classes"] == [f"LABEL_{i}" for i in range(10)]
    hf = probe("tiny_hf_probe.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(hf["input"]), hf["logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("fused", [True, False])
def test_both_attention_kernels_reproduce_timm(fused):
    model, _ = load_checkpoint(FIXTURES / "tiny_timm.safetensors", num_heads=3)
    model.set_fused_attn(fused)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(probe()["input"]), probe()["logits"], atol=1e-4, rtol=0)
