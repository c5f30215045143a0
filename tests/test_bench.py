"""vit.bench: the FLOP count behind the achieved-vs-peak figures, and a quick run of a subcommand."""

import re

import torch

from vit.bench import _step_rate, embed_flops, main, vit_flops
from vit.model import PRESETS, ViTConfig


def test_vit_base_flops_match_the_published_count():
    # timm lists vit_base_patch16_224 at 17.6 GMACs per 224 px image; vit_flops counts 2 FLOPs per MAC.
    assert abs(vit_flops(ViTConfig(**PRESETS["vit_base_patch16_224"])) / 2e9 - 17.56) < 0.05


def test_flops_grow_with_tokens_and_depth():
    small = ViTConfig(**PRESETS["mnist"])
    assert vit_flops(ViTConfig(**{**PRESETS["mnist"], "depth": 2 * small.depth})) > 1.9 * vit_flops(small)
    assert vit_flops(ViTConfig(**{**PRESETS["mnist"], "patch_size": 7})) < vit_flops(small) / 2
    # PatchDropout 0.5 (the MNIST recipe's) keeps 25 of MNIST's 49 patch tokens
    assert vit_flops(small, patch_dropout=0.5) < 0.6 * vit_flops(small)


def test_embedding_flops_count_the_real_layers():
    cfg = ViTConfig(**PRESETS["cifar10"])  # 32 px, 4x4 patches, 3 channels
    linear = 2 * cfg.num_patches * cfg.in_chans * cfg.patch_size**2 * cfg.embed_dim
    assert embed_flops(cfg) == linear  # manual: one Linear per patch
    assert embed_flops(ViTConfig(**{**PRESETS["cifar10"], "patch_embed": "conv"})) == linear
    # stem for P = 4 and D = 128: 3x3 stride-2 convs 3 -> 64 (16x16 out) and 64 -> 128 (8x8), then the 1x1 proj
    stem = 2 * (16 * 16 * 64 * 3 * 9 + 8 * 8 * 128 * 64 * 9 + 8 * 8 * 128 * 128)
    assert embed_flops(ViTConfig(**{**PRESETS["cifar10"], "patch_embed": "stem"})) == stem


def test_step_rate_times_real_optimizer_steps(monkeypatch):
    import vit.bench as bench
    cfg = ViTConfig(img_size=16, patch_size=4, in_chans=1, num_classes=3, embed_dim=16, depth=1, num_heads=2)
    steps = []
    real_step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: steps.append(1) or real_step(self, *a, **k))
    monkeypatch.setattr(bench, "_best_times", lambda fns, repeat: [fn() or 0.5 for fn in fns])  # each 'takes' 0.5 s
    assert _step_rate(cfg, batch=4, steps=3, train=True) == 4 * 3 / 0.5  # images of the timed steps / seconds
    assert len(steps) == 1 + 3  # one untimed warm-up step, then the timed ones: each a real AdamW step
    steps.clear()
    assert _step_rate(cfg, batch=4, steps=3, train=False) == 4 * 3 / 0.5
    assert steps == []  # inference: forwards only


def test_model_benchmark_prints_a_table(capsys, monkeypatch):
    import vit.bench as bench
    tiny = dict(embed_dim=32, depth=1, num_heads=2, img_size=32, patch_size=8, num_classes=10)
    for preset in ("mnist", "cifar10", "vit_base_patch16_224"):  # the table, not the timing, is under test
        monkeypatch.setitem(bench.PRESETS, preset, tiny)
    monkeypatch.setattr(bench, "matmul_peak", lambda threads: 100.0)
    main(["model", "--steps", "1", "--threads", "1"])
    out = capsys.readouterr().out
    assert "fp32 matmul peak" in out and "explicit/fused" in out
    assert len([line for line in out.splitlines() if line.startswith(("mnist", "cifar10", "vit_base"))]) == 3


def test_train_benchmark_has_one_row_per_lever(capsys, monkeypatch):
    import vit.bench as bench
    tiny = dict(embed_dim=32, depth=1, num_heads=2, img_size=16, patch_size=4, num_classes=10)
    for preset in ("mnist", "cifar10"):
        monkeypatch.setitem(bench.PRESETS, preset, {**tiny, "in_chans": 1 if preset == "mnist" else 3})
    monkeypatch.setattr(bench, "matmul_peak", lambda threads: 100.0)
    main(["train", "--steps", "1", "--threads", "1"])
    cells = [re.split(r"\s{2,}", line.strip()) for line in capsys.readouterr().out.splitlines()]
    rows = {row[0]: row for row in cells}
    assert {"mnist", "mnist without PatchDropout", "mnist with fused attention", "mnist at batch 64", "cifar10",
            "cifar10 without PatchDropout", "cifar10 with fused attention", "cifar10 --patch stem"} <= set(rows)
    assert rows["mnist at batch 64"][2] == "64" and rows["mnist"][2] == "128"  # the recipe's batch


def test_finetune_benchmark_times_bf16_only_with_amx_and_projects_the_folder(capsys, monkeypatch):
    import vit.bench as bench
    monkeypatch.setitem(bench.PRESETS, "vit_base_patch16_224", dict(embed_dim=32, depth=1, num_heads=2))
    monkeypatch.setattr(bench, "matmul_peak", lambda threads: 100.0)
    # the table's arithmetic is under test, not the timing: fp32 5 img/s, bf16 10 img/s everywhere
    monkeypatch.setattr(bench, "_step_rate", lambda cfg, batch, steps, train, amp=False, **kw: 10.0 if amp else 5.0)

    def rows(amx: bool, *flags: str) -> dict:
        monkeypatch.setattr(bench, "has_amx_bf16", lambda: amx)
        main(["finetune", "--threads", "1", *flags])
        lines = capsys.readouterr().out.splitlines()
        cells = [re.split(r"\s{2,}", line.strip()) for line in lines]
        return {(row[0], row[1], row[2]): row[3:] for row in cells if len(row) >= 6}, lines

    table, lines = rows(True)
    assert table[("224 px (196 tokens)", "train", "0")] == ["5.00", "10.00", "2.00x", "25 min for 10 epochs of 1500"]
    assert table[("160 px (100 tokens)", "train", "0.5")][:3] == ["5.00", "10.00", "2.00x"]
    assert table[("224 px (196 tokens)", "infer", "0")][3] == "240 s to cache 2400 images"
    assert "AMX-BF16: yes" in lines[0] and lines[-1].startswith("bf16 vs fp32 logits")
    table, lines = rows(False)  # no AMX: bf16 is not timed, the projection is fp32's
    assert table[("224 px (196 tokens)", "train", "0")] == ["5.00", "-", "-", "50 min for 10 epochs of 1500"]
    assert "bf16 not timed" in lines[0]
    table, _ = rows(False, "--bf16", "yes")
    assert table[("224 px (196 tokens)", "train", "0")][1] == "10.00"
