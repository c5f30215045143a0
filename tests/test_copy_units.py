"""The pieces README says can be copied out work where they are copied to, without the rest of `vit`.

Each test copies a unit into an empty folder, imports it there in a fresh Python in which `vit` cannot
be imported at all, and uses it: a forward pass; an IDX, a CIFAR and a safetensors file read; the tiny
timm and Hugging Face checkpoints loaded, their reference logits reproduced.
"""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vit"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# prepended to every script: `vit` (installed in this environment) cannot be imported, and nothing of it
# may have been loaded at the end
NO_VIT = """
import sys
sys.modules["vit"] = None  # any `import vit...` now fails
"""
CHECK_NO_VIT = """
assert not [m for m in sys.modules if m == "vit" and sys.modules[m] is not None or m.startswith("vit.")]
print("ok")
"""


def run_in(folder: Path, script: str) -> None:
    code = NO_VIT + textwrap.dedent(script) + CHECK_NO_VIT
    done = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_model_py_alone_builds_and_runs_a_vit(tmp_path):
    shutil.copy(PACKAGE / "model.py", tmp_path / "model.py")
    # and without its `from __future__ import annotations` line: nothing in it may depend on that line
    text = (PACKAGE / "model.py").read_text()
    assert "from __future__ import annotations\n" in text
    (tmp_path / "model_plain.py").write_text(text.replace("from __future__ import annotations\n", ""))
    run_in(tmp_path, """
        import torch
        import model, model_plain
        for m in (model, model_plain):
            cfg = m.ViTConfig(**m.PRESETS["mnist"])
            net = m.VisionTransformer(cfg).eval()
            assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
            try:
                m.ViTConfig(embed_dim=True)
            except ValueError as e:
                assert "embed_dim is 'True' (bool), not an integer" in str(e)
            else:
                raise AssertionError("a bool width was accepted")
    """)


def test_formats_py_alone_reads_idx_cifar_and_safetensors(tmp_path):
    shutil.copy(PACKAGE / "formats.py", tmp_path / "formats.py")
    shutil.copy(FIXTURES / "tiny_timm.safetensors", tmp_path / "tiny.safetensors")
    run_in(tmp_path, """
        import gzip, struct
        import numpy as np
        import torch
        from formats import FormatError, read_cifar_batch, read_idx, read_safetensors, write_safetensors

        images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
        raw = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2, 3, 4) + images.tobytes()
        open("images-idx3-ubyte", "wb").write(raw)
        open("images-idx3-ubyte.gz", "wb").write(gzip.compress(raw))
        assert (read_idx("images-idx3-ubyte") == images).all() and (read_idx("images-idx3-ubyte.gz") == images).all()

        record = bytes([7]) + bytes(range(256)) * 12  # a label byte, then 3 x 32 x 32 pixels
        open("batch.bin", "wb").write(record * 2)
        x, y = read_cifar_batch("batch.bin")
        assert x.shape == (2, 3, 32, 32) and y.tolist() == [7, 7] and x[1, 2, 31, 31] == 255

        tensors, meta = read_safetensors("tiny.safetensors")
        assert tensors["pos_embed"].shape == (1, 17, 48) and tensors["head.weight"].dtype == torch.float32
        write_safetensors("copy.safetensors", tensors, {"note": "round trip"})
        again, meta = read_safetensors("copy.safetensors")
        assert meta == {"note": "round trip"} and all(torch.equal(again[k], tensors[k]) for k in tensors)

        open("bad.safetensors", "wb").write(b"\\xff" * 16)
        try:
            read_safetensors("bad.safetensors")
        except FormatError as e:
            assert "bad.safetensors" in str(e) and isinstance(e, ValueError)
        else:
            raise AssertionError("a bad file was read")
    """)


def test_model_formats_and_weights_load_timm_and_hugging_face_under_another_package_name(tmp_path):
    package = tmp_path / "my_vit"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("model.py", "formats.py", "weights.py"):
        shutil.copy(PACKAGE / name, package / name)
    run_in(tmp_path, f"""
        import json
        import torch
        from my_vit.formats import read_safetensors
        from my_vit.weights import CheckpointError, load_checkpoint, save_checkpoint

        fixtures = {str(FIXTURES)!r}
        probe = read_safetensors(fixtures + "/tiny_probe.safetensors")[0]
        model, info = load_checkpoint(fixtures + "/tiny_timm.safetensors", num_heads=3)
        assert info["layout"] == "timm"
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(probe["input"]), probe["logits"], atol=1e-4, rtol=0)

        hf_probe = read_safetensors(fixtures + "/tiny_hf_probe.safetensors")[0]
        model, info = load_checkpoint(fixtures + "/tiny_hf/model.safetensors")
        assert info["layout"] == "hf" and model.cfg.num_heads == 3 and model.cfg.norm_eps == 1e-12
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(hf_probe["input"]), hf_probe["logits"], atol=1e-4, rtol=0)

        save_checkpoint("ours.safetensors", model, {{"classes": json.dumps(list("abcdefghij"))}})
        again, info = load_checkpoint("ours.safetensors")
        assert info["layout"] == "ours" and again.cfg == model.cfg and info["classes"] == list("abcdefghij")
        try:
            load_checkpoint(fixtures + "/tiny_timm.safetensors", arch="vit_base_patch16_224")
        except CheckpointError as e:
            assert "does not match preset 'vit_base_patch16_224'" in str(e)
        else:
            raise AssertionError("a tiny file passed as ViT-B/16")
    """)
