"""bf16 where it pays (vit.runtime.choose_amp): the rule with AMX-BF16 detection mocked both ways,
the line a run prints, and bf16 logits of a ViT-B/16-shaped model against fp32's."""

from pathlib import Path

import pytest
import torch

from vit import runtime
from vit.formats import read_safetensors
from vit.model import PRESETS, ViTConfig
from vit.weights import load_checkpoint
from helpers import write_mnist  # tests/helpers.py

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "fixtures"
from vit import train  # the command train.py runs

BASE, MNIST = ViTConfig(**PRESETS["vit_base_patch16_224"]), ViTConfig(**PRESETS["mnist"])


@pytest.fixture
def amx(monkeypatch):
    """Set whether the CPU 'has' AMX-BF16: amx(True) / amx(False)."""
    return lambda present: monkeypatch.setattr(runtime, "has_amx_bf16", lambda: present)


def test_bf16_on_a_cpu_only_with_amx_and_a_wide_model(amx):
    amx(True)
    assert runtime.choose_amp(None, "cpu", BASE) == (True, "AMX-BF16 and the model's width 768 >= 384")
    on, why = runtime.choose_amp(None, "cpu", MNIST)
    assert not on and why == "AMX-BF16, but the model's width 64 is under 384, where bf16 did not pay on every AMX CPU (--amp forces it)"
    amx(False)
    on, why = runtime.choose_amp(None, "cpu", BASE)
    assert not on and why.startswith("this CPU has no AMX-BF16")
    # the flags decide when given, whatever the CPU; CUDA defaults to bf16
    assert runtime.choose_amp(True, "cpu", MNIST) == (True, "--amp")
    amx(True)
    assert runtime.choose_amp(False, "cpu", BASE) == (False, "--no-amp")
    assert runtime.choose_amp(None, "cuda", MNIST) == (True, "CUDA")


def test_amx_detection_reads_the_cpu_flags_where_torch_has_no_check(tmp_path, monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(runtime, "CPUINFO", cpuinfo)
    cpuinfo.write_text("flags\t\t: fpu avx2 avx512f amx_bf16 amx_tile amx_int8\n")
    assert runtime.has_amx_bf16()
    cpuinfo.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16\n")  # bf16 instructions, but no AMX tiles
    assert not runtime.has_amx_bf16()
    cpuinfo.unlink()
    assert not runtime.has_amx_bf16()


def test_torch_own_amx_check_is_used_where_it_exists(monkeypatch, tmp_path):
    monkeypatch.setattr(runtime, "CPUINFO", tmp_path / "no-such-file")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert runtime.has_amx_bf16()


@pytest.mark.parametrize("flags,line", [
    ([], "in bf16 autocast (AMX-BF16 and the model's width 64 >= 64), explicit attention"),
    (["--no-amp"], "in fp32 (--no-amp), explicit attention"),
])
def test_a_run_prints_the_precision_it_chose_and_why(tmp_path, amx, monkeypatch, capsys, flags, line):
    amx(True)
    monkeypatch.setattr(runtime, "AMP_MIN_WIDTH", 64)  # the MNIST preset counts as wide here
    data = write_mnist(tmp_path / "data", n_train=32, n_test=16)
    results = train.main(["--data", "mnist", "--data-dir", str(data), "--no-download", "--epochs", "1",
                          "--batch-size", "16", "--threads", "1", "--output", str(tmp_path / "run")] + flags)
    assert f"running on cpu {line}" in capsys.readouterr().err
    assert results["epochs"] == 1


def bf16_vs_fp32(path: Path, probe: Path, **overrides) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    model, _ = load_checkpoint(path, **overrides)
    model.eval()
    x = read_safetensors(probe)[0]["input"]
    with torch.no_grad():
        fp32 = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(x).float()
    return fp32, bf16, read_safetensors(probe)[0]["logits"]


# bf16 keeps 8 bits of mantissa: logits agree to within 2% of their largest magnitude (measured: 0.5% on
# the ViT-B/16-shaped fixture and on the tiny one), probabilities within 0.01, the same top class
@pytest.mark.parametrize("name", ["tiny", "vit_b16_shaped"])
def test_bf16_logits_agree_with_fp32_within_tolerance(name):
    if name == "tiny":
        fixtures, weights, probe, overrides = ROOT / "tests" / "fixtures", "tiny_timm", "tiny_probe", {"num_heads": 3}
    else:
        fixtures, weights, probe, overrides = SHARED, "vit_small_fixture_timm", "vit_small_fixture_probe", {}
    if not (fixtures / f"{weights}.safetensors").exists():
        pytest.skip(f"../shared not found: no fixture at {fixtures}")
    fp32, bf16, reference = bf16_vs_fp32(fixtures / f"{weights}.safetensors", fixtures / f"{probe}.safetensors",
                                         **overrides)
    torch.testing.assert_close(fp32, reference, atol=1e-5, rtol=1e-5)  # fp32 is timm's to rounding
    assert (bf16 - fp32).abs().max() <= 0.02 * fp32.abs().max()
    assert (bf16.softmax(-1) - fp32.softmax(-1)).abs().max() <= 0.01
    assert torch.equal(bf16.argmax(-1), fp32.argmax(-1))
    assert not torch.equal(bf16, fp32)  # autocast did run in bf16
