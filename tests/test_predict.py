import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vit.augment import eval_transform
from vit.errors import run_cli
from vit.formats import read_safetensors, write_safetensors
from vit.model import ViTConfig, VisionTransformer
from vit.predict import main
from vit.weights import load_checkpoint, save_checkpoint
from helpers import limit_resizes

ROOT = Path(__file__).resolve().parents[1]
TIMM = ROOT.parent / "shared" / "fixtures" / "vit_small_fixture_timm.safetensors"


def biased_checkpoint(path: Path, favourite: int = 2, **kw) -> Path:
    """A tiny model whose head ignores the image and strongly prefers class `favourite`."""
    cfg = ViTConfig(**{**dict(img_size=32, patch_size=8, num_classes=4, embed_dim=32, depth=1, num_heads=2), **kw})
    model = VisionTransformer(cfg)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.arange(4.0) == favourite).mul_(10.0)  # p = e^10 / (e^10 + 3) = 99.99%
    meta = {"classes": json.dumps(["ant", "bee", "cat", "dog"])}
    if cfg.in_chans == 1:
        meta.update(mean="[0.1307]", std="[0.3081]")
    save_checkpoint(path, model, meta)
    return path


def write_png(path: Path, size: tuple[int, int] = (50, 40), mode: str = "RGB") -> Path:
    rng = np.random.default_rng(0)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def sensitive_checkpoint(path: Path) -> Path:
    """A tiny random model whose head is far from zero, so its prediction follows the image."""
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(img_size=32, patch_size=8, num_classes=4, embed_dim=32, depth=1, num_heads=2))
    with torch.no_grad():
        model.head.weight.normal_(0, 3)
    save_checkpoint(path, model, {"classes": json.dumps(["ant", "bee", "cat", "dog"])})
    return path


def test_command_line_prints_the_favoured_class(tmp_path):
    ckpt = biased_checkpoint(tmp_path / "tiny.safetensors")
    png = write_png(tmp_path / "photo.png")
    run = subprocess.run([sys.executable, "-m", "vit.predict", "--checkpoint", str(ckpt), str(png), "--top-k", "2"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == f"{png}:" and len(lines) == 3
    assert lines[1].split() == ["99.99%", "cat"]
    assert lines[2].split()[1] in {"ant", "bee", "dog"}
    assert "ours layout" in run.stderr and "Traceback" not in run.stderr


def test_command_line_missing_image_is_a_message_not_a_traceback(tmp_path):
    ckpt = biased_checkpoint(tmp_path / "tiny.safetensors")
    missing = tmp_path / "nope.jpg"
    run = subprocess.run([sys.executable, "-m", "vit.predict", "--checkpoint", str(ckpt), str(missing)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 1 and run.stdout == ""
    assert f"{missing}: no such image file" in run.stderr and "Traceback" not in run.stderr


def test_several_images_gray_model_and_top_k_capped(tmp_path, capsys):
    ckpt = biased_checkpoint(tmp_path / "gray.safetensors", favourite=0, in_chans=1, img_size=28, patch_size=7)
    pngs = [str(write_png(tmp_path / "a.png", mode="L")), str(write_png(tmp_path / "b.png", (20, 64)))]
    main(["--checkpoint", str(ckpt), *pngs, "--top-k", "9"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{pngs[0]}:" and out[5] == f"{pngs[1]}:" and len(out) == 10  # 4 classes each
    assert out[1].split() == ["99.99%", "ant"] and out[6].split() == ["99.99%", "ant"]


def test_bad_inputs_exit_1_with_the_reason(tmp_path, capsys):
    ckpt = biased_checkpoint(tmp_path / "tiny.safetensors")
    png = str(write_png(tmp_path / "photo.png"))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "bad.safetensors").write_bytes(b"\x01\x00")
    for argv, message in [
        (["--checkpoint", str(tmp_path / "bad.safetensors"), png], "truncated"),
        (["--checkpoint", str(tmp_path / "absent.safetensors"), png], "No such file"),
        (["--checkpoint", str(ckpt), str(tmp_path / "broken.png")], "broken.png: cannot read the image"),
    ]:
        with pytest.raises(SystemExit) as e:
            run_cli(lambda: main(argv))
        assert e.value.code == 1
        err = capsys.readouterr().err.splitlines()
        assert err[-1].startswith("error: ") and message in err[-1], err


@pytest.mark.parametrize("argv", [["--top-k", "0"], ["--img-size", "x"], []])
def test_bad_flags_are_argparse_errors(tmp_path, argv):
    with pytest.raises(SystemExit) as e:
        main(["--checkpoint", "x.safetensors", *argv, *(["a.png"] if argv else [])])
    assert e.value.code == 2


def test_timm_fixture_gives_the_models_own_top_classes(tmp_path, capsys):
    if not TIMM.is_file():
        pytest.skip(f"../shared not found: no timm fixture at {TIMM}")
    png = write_png(tmp_path / "photo.png", (300, 240))
    main(["--checkpoint", str(TIMM), str(png), "--top-k", "3", "--img-size", "256"])
    printed = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    model, _ = load_checkpoint(TIMM, img_size=256)
    x = eval_transform(256, [0.5] * 3, [0.5] * 3, crop_pct=0.9)(Image.open(png), torch.Generator())
    with torch.no_grad():
        probs = model.eval()(x[None]).softmax(-1)[0]  # (3, H, W) -> (1, 3, H, W) -> (10,)
    p, i = probs.topk(3)
    assert [row[1:] for row in printed] == [["class", str(c)] for c in i.tolist()]
    assert [row[0] for row in printed] == [f"{100 * v:6.2f}%".strip() for v in p.tolist()]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no fifos on this platform")
def test_command_line_refuses_a_fifo_checkpoint_instead_of_waiting_on_it(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)  # nobody ever writes to it: reading it would wait forever
    png = write_png(tmp_path / "photo.png")
    run = subprocess.run([sys.executable, "-m", "vit.predict", "--checkpoint", str(fifo), str(png)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.splitlines()[-1] == f"error: {fifo}: not a regular file (a fifo); give the path of a file"


@pytest.mark.parametrize("field, value", [("norm_eps", float("nan")), ("in_chans", 1.5), ("img_size", 20000)])
def test_a_bad_saved_config_field_exits_1_naming_the_file_and_field(tmp_path, capsys, field, value):
    """norm_eps NaN used to print 'nan%' for every class."""
    ckpt = biased_checkpoint(tmp_path / "tiny.safetensors")
    tensors, meta = read_safetensors(ckpt)
    config = {**json.loads(meta["config"]), field: value}
    write_safetensors(ckpt, tensors, {**meta, "config": json.dumps(config)})
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: main(["--checkpoint", str(ckpt), str(write_png(tmp_path / "photo.png"))]))
    captured = capsys.readouterr()
    assert e.value.code == 1 and captured.out == ""
    assert captured.err.splitlines()[-1].startswith(f"error: {ckpt}: invalid config: {field} is "), captured.err


def test_an_extreme_strip_is_classified_within_the_crops_memory(tmp_path, capsys, monkeypatch):
    """A 10000 x 1 PNG at 224 px: the eval resize of the whole image would be 2,480,000 x 248 (2.5 GB)."""
    ckpt = biased_checkpoint(tmp_path / "tiny.safetensors")
    strip = tmp_path / "strip.png"
    Image.new("RGB", (10_000, 1), (200, 100, 0)).save(strip)
    limit_resizes(monkeypatch, 224 * 224)
    main(["--checkpoint", str(ckpt), str(strip), "--img-size", "224", "--top-k", "1"])
    assert capsys.readouterr().out.splitlines() == [f"{strip}:", "   99.99%  cat"]


def test_a_16_bit_image_is_read_as_training_reads_it(tmp_path, capsys):
    """Pillow's convert clips 16-bit pixels at 255: predict read a 16-bit PNG as a white picture."""
    ckpt = sensitive_checkpoint(tmp_path / "tiny.safetensors")
    eight = (np.arange(40 * 50).reshape(40, 50) % 256).astype(np.uint8)  # a ramp, mean 125
    Image.fromarray(eight).save(tmp_path / "8.png")
    Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "16.png")  # the same picture in 16 bits
    Image.new("L", (50, 40), 255).save(tmp_path / "white.png")
    printed = {}
    for name in ("8", "16", "white"):
        main(["--checkpoint", str(ckpt), str(tmp_path / f"{name}.png"), "--top-k", "4"])
        printed[name] = capsys.readouterr().out.splitlines()[1:]
    assert printed["16"] == printed["8"] != printed["white"]


def test_every_readable_image_is_classified_and_the_others_named(tmp_path, capsys):
    ckpt = biased_checkpoint(tmp_path / "tiny.safetensors")
    good = [str(write_png(tmp_path / "a.png")), str(write_png(tmp_path / "b.png"))]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "folder").mkdir()
    bad = [str(tmp_path / "missing.png"), str(tmp_path / "folder"), str(tmp_path / "broken.png")]
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: main(["--checkpoint", str(ckpt), good[0], bad[0], bad[1], good[1], bad[2], "--top-k", "1"]))
    captured = capsys.readouterr()
    assert e.value.code == 1
    assert captured.out.splitlines() == [f"{good[0]}:", "   99.99%  cat", f"{good[1]}:", "   99.99%  cat"]
    last = captured.err.splitlines()[-1]
    assert last.startswith(f"error: 3 of 5 images could not be classified: {bad[0]}: no such image file; "
                           f"{bad[1]}: a folder, not an image file; {bad[2]}: cannot read the image"), last
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: main(["--checkpoint", str(ckpt), bad[1]]))
    assert e.value.code == 1
    assert capsys.readouterr().err.splitlines()[-1] == f"error: {bad[1]}: a folder, not an image file"
