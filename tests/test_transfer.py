"""vit.transfer: the subset folders, the schedule, the time-to-accuracy, and a tiny end-to-end run."""

import csv
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from vit import transfer
from vit.errors import VitError, run_cli

CLASSES = transfer.ANIMALS + transfer.VEHICLES


def cifar_folder(root: Path, train: int = 6, test: int = 4) -> Path:
    """root/{train,test}/<the 10 CIFAR-10 classes>/NNNN.png, one flat colour per class (plus a ramp)."""
    for split, n in (("train", train), ("test", test)):
        for k, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                colour = (25 * k, 255 - 25 * k, (97 * k) % 256)
                Image.new("RGB", (32, 32), tuple(min(255, c + 3 * i) for c in colour)).save(folder / f"{i:04d}.png")
    return root


def test_link_subset_takes_the_first_files_by_name_and_refuses_too_few(tmp_path):
    src = tmp_path / "src"
    (src / "cat").mkdir(parents=True)
    for name in ("b.png", "a.png", "c.png", ".hidden.png"):
        (src / "cat" / name).write_bytes(b"x")
    assert transfer.link_subset(src, tmp_path / "two", ("cat",), 2) == 2
    assert sorted(p.name for p in (tmp_path / "two" / "cat").iterdir()) == ["a.png", "b.png"]
    assert (tmp_path / "two" / "cat" / "a.png").resolve() == (src / "cat" / "a.png").resolve()
    assert transfer.link_subset(src, tmp_path / "all", ("cat",), None) == 3
    assert (tmp_path / "all" / "cat").is_symlink()
    with pytest.raises(VitError, match=r"cat: 3 images, fewer than the --per-class 4 asked for"):
        transfer.link_subset(src, tmp_path / "four", ("cat",), 4)


def test_epochs_follow_the_folder_size_within_5_and_30():
    assert [transfer.epochs_for(n) for n in (400, 4_000, 20_000, 10)] == [30, 10, 5, 30]


def test_seconds_to_reach_is_the_first_evaluation_at_or_above_the_target():
    xs, ys = [1.0, 2.0, 3.0], [50.0, 70.0, 69.0]
    assert transfer.seconds_to_reach(xs, ys, 70.0) == 2.0
    assert transfer.seconds_to_reach(xs, ys, 60.0) == 2.0
    assert math.isnan(transfer.seconds_to_reach(xs, ys, 71.0))


def test_a_folder_without_a_test_split_is_refused(tmp_path):
    (tmp_path / "flat" / "cat").mkdir(parents=True)
    with pytest.raises(VitError, match=r"expected .*/train/<class>/ and .*/test/<class>/"):
        transfer.build_folders(tmp_path / "flat", tmp_path / "out", [1])


def test_tiny_transfer_pretrains_once_fine_tunes_from_it_and_resumes(tmp_path):
    data = cifar_folder(tmp_path / "cifar")
    out = tmp_path / "transfer"
    argv = ["--data", str(data), "--output", str(out), "--pretrain-epochs", "1", "--per-class", "4", "--lrs", "1e-3",
            "--layer-decays", "1", "--threads", "1"]
    rows = transfer.main(argv)
    assert [(r["method"], r["status"]) for r in rows] == [
        ("from scratch", "ok"), ("linear probe, lr 3e-3", "ok"), ("all weights, lr 1e-3, layer decay 1", "ok")]
    pretrain = json.loads((out / "pretrain-animals" / "results.json").read_text())
    assert pretrain["classes"] == list(transfer.ANIMALS) and pretrain["val_images"] == 24
    tuned = json.loads((Path(rows[2]["output"]) / "args.json").read_text())["command"]
    assert tuned[0] == "finetune.py"
    assert tuned[tuned.index("--weights") + 1] == str(out / "pretrain-animals" / "last.safetensors")
    assert tuned[tuned.index("--aug") + 1] == "cifar" and tuned[tuned.index("--epochs") + 1] == "30"
    results = json.loads((Path(rows[2]["output"]) / "results.json").read_text())
    assert results["classes"] == sorted(transfer.VEHICLES) and results["val_images"] == 16
    with open(out / "transfer.csv", newline="") as f:
        assert [r["method"] for r in csv.DictReader(f)] == [r["method"] for r in rows]
    md = (out / "transfer.md").read_text()
    assert "## 4 training images per class (16 images, 30 epochs)" in md and "| from scratch |" in md
    with Image.open(out / "chart_4.png") as chart:
        assert chart.size == (800, 500)

    finished = {p: p.stat().st_mtime_ns for p in out.rglob("results.json")}
    again = transfer.main(argv)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("results.json")} == finished  # every run skipped
    assert [r["val_acc"] for r in again] == [r["val_acc"] for r in rows]
    more = transfer.main([*argv[:-6], "--lrs", "3e-3", "--layer-decays", "1", "--no-head", "--threads", "1"])
    assert [r["method"] for r in more] == [r["method"] for r in rows] + ["all weights, lr 3e-3, layer decay 1"]
    assert {p for p in out.rglob("results.json")} - set(finished) == {Path(more[-1]["output"]) / "results.json"}
    assert (out / "transfer.md").read_text().count("`python -m vit.transfer") == 2  # both commands, one report


@pytest.mark.parametrize("flags, message", [
    (["--lrs", "1e-3,inf"], "--lrs inf: must be a finite number > 0, got inf"),
    (["--head-lr", "nan"], "--head-lr nan: must be a finite number > 0, got nan"),
    (["--layer-decays", "0.75,2"], "--layer-decays 2: must be in (0, 1], got 2.0"),
    (["--per-class", "5,5"], "--per-class '5,5': 5 is given more than once"),
    (["--lrs", "1e-3,0.001"], "--lrs '1e-3,0.001': 1e-3 is given more than once"),
    (["--per-class", "0"], "--per-class 0: must be > 0"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
])
def test_every_value_is_checked_as_finetune_py_would_before_anything_runs(tmp_path, capsys, flags, message):
    out = tmp_path / "transfer"
    with pytest.raises(SystemExit) as e:
        transfer.main(["--data", str(tmp_path / "cifar"), "--output", str(out), *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()  # refused before any folder is built or any run starts


def test_failed_runs_of_this_command_exit_1_and_other_commands_failures_do_not(tmp_path, monkeypatch, capsys):
    def fake_run(argv: list[str], out: Path, script: str = "train") -> dict:
        """Every run finishes at once (50%), except the fine-tunes at lr 1e-3."""
        if "lr_1e-3" in out.name:
            return {"status": "failed", "error": "error: boom"}
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.csv").write_text("epoch,seconds,eval_acc\n1,1.0,0.5\n")
        (out / "results.json").write_text(json.dumps({"epochs": 1, "val_acc": 0.5, "train_seconds": 1.0, "params": 1}))
        return {"status": "ok", "test_acc": 0.5, "train_seconds": 1.0, "error": ""}

    monkeypatch.setattr(transfer, "train_run", fake_run)
    data = cifar_folder(tmp_path / "cifar", train=4, test=1)
    argv = ["--data", str(data), "--output", str(tmp_path / "transfer"), "--per-class", "4", "--layer-decays", "1"]
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: transfer.run_command([*argv, "--lrs", "1e-3"]))
    assert e.value.code == 1 and capsys.readouterr().err.splitlines()[-1] == "error: 1 of 3 runs failed"
    transfer.run_command([*argv, "--lrs", "3e-3", "--no-head"])  # its runs finish; the earlier failure is not its own
