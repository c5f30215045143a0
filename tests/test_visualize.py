"""vit.visualize: attention rollout, the position-similarity tiles, and the command on tiny checkpoints."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vit import visualize
from vit.errors import run_cli
from vit.model import ViTConfig, VisionTransformer, sincos_pos_embed
from vit.plot import GRID_TITLE_H
from vit.weights import save_checkpoint
from helpers import write_mnist  # tests/helpers.py: tiny datasets written by the tests

ROOT = Path(__file__).resolve().parents[1]


def tiny_checkpoint(path: Path, **kw) -> Path:
    """A random 1-channel 28 px model (7 x 7 patches of 4 px, 2 heads, 2 layers) with our metadata."""
    cfg = ViTConfig(**{**dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=16, depth=2,
                              num_heads=2, patch_embed="manual"), **kw})
    torch.manual_seed(0)
    model = VisionTransformer(cfg)
    save_checkpoint(path, model, {"classes": json.dumps([f"digit {i}" for i in range(10)]),
                                  "mean": "[0.1307]", "std": "[0.3081]"})
    return path


def write_png(path: Path, size: tuple[int, int] = (60, 45)) -> Path:
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB").save(path)
    return path


# ---------------------------------------------------------------------------------------- maths


def test_rollout_matches_a_hand_computation():
    # layer 1: heads [[1, 0], [0, 1]] and [[0, 1], [1, 0]] average to 0.5 everywhere; + I and row-normalised:
    #          A1 = [[.75, .25], [.25, .75]]
    # layer 2: both heads [[0, 1], [0, 1]]; + I = [[1, 1], [0, 2]]; row-normalised: A2 = [[.5, .5], [0, 1]]
    # rollout = A2 @ A1 = [[.5, .5], [.25, .75]]  (A1 @ A2 would be [[.375, .625], [.125, .875]])
    layer1 = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])[None]  # (1, 2, 2, 2)
    layer2 = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]] * 2)[None]  # (1, 2, 2, 2)
    rollout = visualize.attention_rollout([layer1, layer2])
    assert torch.allclose(rollout, torch.tensor([[[0.5, 0.5], [0.25, 0.75]]]))


def test_rollout_rows_sum_to_one_on_a_real_model():
    model = VisionTransformer(ViTConfig(img_size=16, patch_size=4, in_chans=3, num_classes=3, embed_dim=16, depth=3,
                                        num_heads=4))
    maps = model.attention_maps(torch.randn(2, 3, 16, 16))
    rollout = visualize.attention_rollout(maps)
    assert rollout.shape == (2, 17, 17)
    assert torch.allclose(rollout.sum(-1), torch.ones(2, 17), atol=1e-5)
    assert (rollout >= 0).all()


def test_position_tiles_put_patch_r_c_in_tile_r_c():
    g = 3
    sim = visualize.position_similarity(sincos_pos_embed(g, 16))
    assert torch.allclose(sim.diagonal(), torch.ones(g * g)) and torch.allclose(sim, sim.T)
    big = visualize.tile_grid(sim, g)
    assert big.shape == (g * 4 - 1, g * 4 - 1)  # 3 tiles of 3 cells and 2 gaps of 1 cell
    assert np.isnan(big[3]).all() and np.isnan(big[:, 7]).all()  # the gaps
    r, c = 1, 2  # patch (1, 2) = row 5 of sim: its tile starts at (4, 8); its own cell (1, 2) in the tile is 1
    assert np.allclose(big[4:7, 8:11], sim[r * g + c].reshape(g, g).numpy())
    assert big[4 + r, 8 + c] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------- command


def test_image_with_learned_positions_writes_both_pngs(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "learned.safetensors", pos_embed="learned")
    out = tmp_path / "viz"
    visualize.main(["--checkpoint", str(ckpt), "--image", str(write_png(tmp_path / "x.png")), "--output", str(out)])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("predicted: digit ") and printed[1:] == [f"wrote {out / 'attention.png'}",
                                                                          f"wrote {out / 'pos_embed.png'}"]
    with Image.open(out / "attention.png") as img:
        # input, rollout, input x rollout, 2 heads: one row of 5 panels
        assert img.size == (5 * visualize.CELL, visualize.CELL + GRID_TITLE_H)
        pixels = np.asarray(img.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # maps drawn, not a blank canvas
    with Image.open(out / "pos_embed.png") as img:
        assert img.size == (760, 720)
        assert len(np.unique(np.asarray(img.convert("RGB")).reshape(-1, 3), axis=0)) > 50


def test_a_16_bit_image_is_shown_and_read_as_training_reads_it(tmp_path):
    """Pillow's convert clips 16-bit pixels at 255: the input panel of a 16-bit PNG was blank white."""
    ckpt = tiny_checkpoint(tmp_path / "gray.safetensors")
    model, info = visualize.load_checkpoint(ckpt)
    eight = (np.arange(40 * 50).reshape(40, 50) % 256).astype(np.uint8)  # a ramp, mean 125
    Image.fromarray(eight).save(tmp_path / "8.png")
    Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "16.png")  # the same picture in 16 bits
    inputs = [visualize.load_input(argparse.Namespace(data=None, image=str(tmp_path / f"{bits}.png")), model, info)
              for bits in (8, 16)]
    torch.testing.assert_close(inputs[1][0], inputs[0][0], atol=0, rtol=0)
    assert np.array_equal(inputs[1][1], inputs[0][1]) and 100 < inputs[1][1].mean() < 150


def test_mnist_test_image_with_sin_positions(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "sin.safetensors", pos_embed="sin", depth=1, num_heads=4)
    data = write_mnist(tmp_path / "data", n_train=12, n_test=12)
    out = tmp_path / "viz"
    visualize.main(["--checkpoint", str(ckpt), "--data", "mnist", "--index", "7", "--data-dir", str(data),
                    "--no-download", "--output", str(out)])
    assert ", true class: 7" in capsys.readouterr().out
    with Image.open(out / "attention.png") as img:
        assert img.size == (7 * visualize.CELL, visualize.CELL + GRID_TITLE_H)  # 3 panels + 4 heads
    assert (out / "pos_embed.png").stat().st_size > 10_000


def test_no_position_embedding_skips_its_png(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "none.safetensors", pos_embed="none")
    out = tmp_path / "viz"
    visualize.main(["--checkpoint", str(ckpt), "--image", str(write_png(tmp_path / "x.png")), "--output", str(out)])
    assert "no position embedding (pos 'none'): no pos_embed.png" in capsys.readouterr().out
    assert (out / "attention.png").exists() and not (out / "pos_embed.png").exists()


def run_in_process(argv: list[str], capsys) -> tuple[int, str]:
    """(exit code, stderr) of the command's entry point, vit.cli.run_cli(main), in this process."""
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: visualize.main(argv))
    return e.value.code, capsys.readouterr().err


def test_missing_checkpoint_is_a_message_not_a_traceback(tmp_path):
    missing = tmp_path / "missing.safetensors"
    run = subprocess.run([sys.executable, "-m", "vit.visualize", "--checkpoint", str(missing), "--image", "x.png"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr == f"error: {missing}: no such checkpoint file\n"


def test_bad_inputs_are_messages_with_exit_1(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors")
    png = write_png(tmp_path / "x.png")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    data = write_mnist(tmp_path / "data", n_train=12, n_test=12)
    rgb = tiny_checkpoint(tmp_path / "rgb.safetensors", img_size=32, in_chans=3)
    cases = [
        (["--checkpoint", str(garbage), "--image", str(png)], str(garbage)),
        (["--checkpoint", str(ckpt), "--image", str(not_image)], f"{not_image}: cannot read the image"),
        (["--checkpoint", str(ckpt), "--image", str(tmp_path / "nope.png")], "cannot read the image"),
        (["--checkpoint", str(ckpt), "--data", "mnist", "--index", "12", "--data-dir", str(data), "--no-download"],
         "--index 12: mnist's test split has images 0 to 11"),
        (["--checkpoint", str(rgb), "--data", "mnist", "--data-dir", str(data), "--no-download"],
         "the model takes 3x32x32 images, mnist's are 1x28x28"),
    ]
    for args, message in cases:
        code, err = run_in_process(args + ["--output", str(tmp_path / "viz")], capsys)
        assert code == 1 and err.startswith("error: ") and message in err, (args, err)
    assert not (tmp_path / "viz").exists()


def test_bad_flags_exit_2(capsys):
    code, err = run_in_process(["--checkpoint", "x.safetensors", "--image", "a.png", "--data", "mnist"], capsys)
    assert code == 2 and "not allowed with argument" in err
    code, err = run_in_process(["--checkpoint", "x.safetensors"], capsys)
    assert code == 2 and "one of the arguments --image --data is required" in err
    code, err = run_in_process(["--checkpoint", "x.safetensors", "--data", "imagenet"], capsys)
    assert code == 2 and "invalid choice: 'imagenet'" in err
