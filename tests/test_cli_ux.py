"""The command line as a new user meets it: Ctrl-C, --resume auto, folders with one class or a test/
split, help for every flag, --print-config."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from vit import engine, progress
from vit.errors import VitError, run_cli
from helpers import write_mnist  # tests/helpers.py: tiny datasets written by the tests

ROOT = Path(__file__).resolve().parents[1]
from vit import finetune, train  # the commands train.py and finetune.py run

TINY = ["--embed-dim", "32", "--depth", "1", "--heads", "2", "--batch-size", "32", "--workers", "0", "--threads", "1"]


def mnist_argv(data: Path, *extra: str) -> list[str]:
    return ["--data", "mnist", "--data-dir", str(data), "--no-download", "--tta", "none", *TINY, *extra]


def interrupt_in_epoch(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Ctrl-C (KeyboardInterrupt) at the start of the n-th epoch this process trains."""
    real, calls = engine.train_epoch, []

    def epoch(*a, **kw):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(engine, "train_epoch", epoch)


def exit_of(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: train.main(argv))
    return e.value.code, capsys.readouterr().err


def test_ctrl_c_is_one_line_and_exit_130_naming_how_to_continue(tmp_path, monkeypatch, capsys):
    data, out = write_mnist(tmp_path / "data"), tmp_path / "run"
    interrupt_in_epoch(monkeypatch, 2)
    code, err = exit_of(mnist_argv(data, "--epochs", "3", "--output", str(out)), capsys)
    assert code == 130 and "Traceback" not in err
    assert err.rstrip().splitlines()[-1] == f"interrupted after epoch 1; continue with --resume auto --output {out}"
    monkeypatch.undo()
    results = train.main(mnist_argv(data, "--epochs", "3", "--output", str(out), "--resume", "auto"))
    assert results["epochs"] == 3 and "resumed from" in capsys.readouterr().err


def test_ctrl_c_before_the_first_epoch_leaves_no_folder_behind(tmp_path, monkeypatch, capsys):
    data, out = write_mnist(tmp_path / "data"), tmp_path / "run"
    interrupt_in_epoch(monkeypatch, 1)
    code, err = exit_of(mnist_argv(data, "--epochs", "2", "--output", str(out)), capsys)
    assert code == 130
    assert err.rstrip().splitlines()[-1] == f"interrupted before the first epoch was saved; removed {out}"
    assert not out.exists()


def test_a_real_sigint_exits_130_without_a_traceback(tmp_path):
    data, out = write_mnist(tmp_path / "data", n_train=960), tmp_path / "run"
    # A job started in the background by a non-interactive shell (`cmd &`, as CI scripts do) inherits
    # SIGINT ignored, and Python then installs no handler: the child gets the default disposition back
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *mnist_argv(data, "--epochs", "50"),
                             "--output", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (out / "state.pt").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and f"continue with --resume auto --output {out}" in err


def test_resume_auto_takes_the_newest_run_not_an_older_finished_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # runs/ is relative to the working folder
    data = write_mnist(tmp_path / "data")
    argv = mnist_argv(data, "--epochs", "1")
    train.main(argv)  # a finished run
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 1
    time.sleep(1.1)  # run folders are named to the second
    capsys.readouterr()
    train.main(argv + ["--resume", "auto"])  # the newest run is finished: a new run, said so
    err = capsys.readouterr().err
    assert f"the newest run {Path('runs') / runs[0].name} finished its 1 epochs; starting a new run" in err
    assert len(list((tmp_path / "runs").iterdir())) == 2
    # a run killed before its first state (only args.json left): --resume auto starts it again in place
    newest = max((tmp_path / "runs").iterdir(), key=lambda f: f.stat().st_mtime)
    time.sleep(1.1)
    killed = tmp_path / "runs" / (newest.name[:-6] + "999999")
    killed.mkdir()
    (killed / "args.json").write_text("{}")
    train.main(argv + ["--resume", "auto"])
    err = capsys.readouterr().err
    assert "has no saved state yet" in err and (killed / "results.json").exists()
    assert len(list((tmp_path / "runs").iterdir())) == 3


def test_a_folder_with_one_class_is_refused(tmp_path, capsys):
    (tmp_path / "only").mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8)).save(tmp_path / "only" / f"{i}.png")
    code, err = exit_of(["--data", str(tmp_path), "--epochs", "1", "--workers", "0"], capsys)
    assert code == 1 and "needs at least 2 classes (sub-folders of images), found 1: only" in err


def test_every_unreadable_image_of_a_folder_is_named_in_one_pass(tmp_path, capsys):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(4):
            Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(tmp_path / name / f"{i}.png")
    broken = [tmp_path / "a" / "0.png", tmp_path / "b" / "2.png", tmp_path / "b" / "3.png"]
    for path in broken:
        path.write_bytes(b"not an image")
    code, err = exit_of(["--data", str(tmp_path), "--epochs", "1", "--workers", "0"], capsys)
    assert code == 1 and "3 of " in err and "images cannot be read; remove or replace them" in err
    assert all(str(path) in err for path in broken)


def test_a_folder_run_says_which_split_it_validates_on(tmp_path, capsys):
    for split in ("train", "test"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (120 * i, 0, 0)).save(tmp_path / split / name / f"{i}.png")
    train.main(["--data", str(tmp_path), "--img-size", "16", "--patch-size", "4", "--output", str(tmp_path / "out"),
                "--epochs", "1", *TINY])
    err = capsys.readouterr().err
    assert f"training on {tmp_path / 'train'} (4 images), validating on {tmp_path / 'test'} (4 images)" in err


@pytest.mark.parametrize("script", [train, finetune])
def test_every_flag_has_help(script):
    missing = [a.option_strings for a in script.build_parser()._actions
               if a.option_strings and a.help in (None, "") and "-h" not in a.option_strings]
    assert not missing


def test_help_shows_the_per_dataset_defaults(capsys):
    with pytest.raises(SystemExit):
        train.main(["-h"])
    out = capsys.readouterr().out
    assert "defaults per dataset" in out
    assert any(line.split()[:5] == ["cifar10", "cifar10", "26", "128", "0.002"] for line in out.splitlines())


def test_print_config_shows_the_resolved_recipe_and_model(tmp_path, capsys):
    assert train.main(["--data", "cifar10", "--lr", "1e-3", "--patch", "stem", "--print-config",
                       "--data-dir", str(tmp_path)]) == {}
    shown = json.loads(capsys.readouterr().out)
    assert shown["config"]["lr"] == 1e-3 and shown["config"]["epochs"] == 26 and shown["config"]["tta"] == "shift"
    assert shown["model"]["patch_embed"] == "stem" and shown["model"]["embed_dim"] == 128
    assert not (tmp_path / "cifar10").exists()  # nothing was read or downloaded


def test_abbreviations_resolve_as_timm_users_expect():
    # argparse's prefixes are kept (timm's train.py has them too); an exact flag always wins over a longer
    # one it is the prefix of, and these are the only such pairs, so a new flag cannot add a surprise
    for script, pairs in ((train, {"--data": ["--data-dir"], "--patch": ["--patch-size", "--patch-dropout"],
                                   "--drop": ["--drop-path"]}),
                          (finetune, {"--patch": ["--patch-dropout"]})):
        flags = [o for a in script.build_parser()._actions for o in a.option_strings if o.startswith("--")]
        assert {f: [g for g in flags if g != f and g.startswith(f)] for f in flags
                if any(g != f and g.startswith(f) for g in flags)} == pairs
    args = train.build_parser().parse_args(["--epoch", "3", "--drop", "0.1", "--patch", "stem", "--data", "mnist"])
    assert (args.epochs, args.drop, args.drop_path, args.patch, args.patch_size, args.data) == (3, 0.1, None, "stem",
                                                                                              None, "mnist")
    with pytest.raises(SystemExit):
        train.build_parser().parse_args(["--eval", "1"])  # --eval-only or --eval-every: ambiguous, refused


def test_the_whole_run_estimate_counts_unmasked_epochs_and_evaluations(capsys):
    cfg = train.RECIPES["mnist"].replace(epochs=10, patch_dropout=0.5, unmasked_epochs=1, eval_every=5, tta="shift")
    clock = [0.0]
    estimate = progress.RunEstimate(cfg, first_epoch=0, steps_per_epoch=100, eval_images=1000, enabled=True, ema=False,
                                  warmup=0, min_steps=10, min_seconds=0.0, clock=lambda: clock[0])
    for _ in range(9):
        clock[0] += 0.1
        estimate.step(0.1, 128)
    assert capsys.readouterr().err == ""  # not yet: said once, after `min_steps` steps
    clock[0] += 0.1
    estimate.step(0.1, 128)
    # 9 masked epochs + 1 unmasked at twice the cost = 1,100 steps of 0.1 s, 1,090 left; evaluations after epochs
    # 5 and 10 (the last with 9 views): 10,000 images at 2/3 of a masked training image's 1/1280 s
    assert capsys.readouterr().err.strip() == ("estimate: the rest of this run (10 epoch(s), 2 evaluation(s)) "
                                               "takes about 115 s in all, 114 s from now")
    estimate.step(0.1, 128)
    assert capsys.readouterr().err == ""  # once only


def test_the_whole_run_estimate_waits_past_the_start_up_for_enough_steps_and_seconds(capsys):
    """15-Scene: 11 steps an epoch; the estimate after the first 11 steps, start-up in them, said 50 min for a
    run that trained 488 s. Here the first 3 steps take 5 s (start-up), the others 0.5 s (1 s unmasked)."""
    cfg = train.RECIPES["folder"].replace(epochs=100, eval_every=100, tta="none")
    clock, said = [0.0], []
    estimate = progress.RunEstimate(cfg, first_epoch=0, steps_per_epoch=11, eval_images=150, enabled=True, ema=False,
                                  clock=lambda: clock[0])
    for step in range(1100):
        seconds = 5.0 if step < 3 else 1.0 if step >= 99 * 11 else 0.5
        clock[0] += seconds
        estimate.step(seconds, 128)
        said += [(step + 1, line) for line in capsys.readouterr().err.splitlines()]
    # said after 3 + 60 steps (30 s timed past the warm-up, epochs 1 to 6); the run trained 15 + 1086 x 0.5 + 11 s
    assert clock[0] == 569.0
    assert said == [(63, "estimate: the rest of this run (100 epoch(s), 1 evaluation(s)) takes about 9 min in all, "
                         "9 min from now")]


def test_classes_trains_and_tests_on_a_subset_relabelled_in_the_given_order(tmp_path):
    data = write_mnist(tmp_path / "data")  # label k has a bright row at 2k + 4
    results = train.main(mnist_argv(data, "--epochs", "1", "--classes", "7,2", "--output",
                                    str(tmp_path / "run")))
    assert results["classes"] == ["7", "2"] and results["test_images"] == 13  # of 64 test images labelled i % 10: 7 twos, 6 sevens
    from vit import data as vit_data
    from vit.recipes import RECIPES
    subset = vit_data.tensor_data("mnist", data, RECIPES["mnist"], classes=["7", "2"])
    x, y = subset.held_out.x, subset.held_out.y
    assert set(y.tolist()) == {0, 1} and (x[y == 0][:, 0, 2 * 7 + 4] == 255).all()  # seven is now label 0
    with pytest.raises(VitError, match="unknown 'eleven'"):
        vit_data.tensor_data("mnist", data, RECIPES["mnist"], classes=["eleven", "2"])


def test_the_estimate_is_given_each_steps_own_time_and_images(tmp_path, monkeypatch):
    data, timed = write_mnist(tmp_path / "data"), []
    monkeypatch.setattr(progress.RunEstimate, "step", lambda self, seconds, images: timed.append((seconds, images)))
    results = train.main(mnist_argv(data, "--epochs", "2", "--accum-steps", "2", "--output", str(tmp_path / "run")))
    assert [images for _, images in timed] == [32, 32, 32] * 2  # 96 images in batches of 32, two epochs
    assert 0 < sum(seconds for seconds, _ in timed) <= results["train_seconds"]


def test_classes_naming_no_class_is_refused_and_a_repeated_class_is_named(tmp_path, capsys):
    data = write_mnist(tmp_path / "data")
    with pytest.raises(SystemExit) as e:  # '' used to train on every class
        train.main(mnist_argv(data, "--classes", ""))
    assert e.value.code == 2
    assert "--classes '' names no class; give comma-separated class names" in capsys.readouterr().err
    from vit import data as vit_data
    from vit.recipes import RECIPES
    with pytest.raises(VitError, match=r"^classes 1, 1, 2: '1' given more than once; the dataset has 0, 1, 2,"):
        vit_data.tensor_data("mnist", data, RECIPES["mnist"], classes=["1", "1", "2"])


def test_a_folder_schedule_follows_its_size_but_flags_win(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "f" / name).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (8, 8), (30 * i, 0, 0)).save(tmp_path / "f" / name / f"{i}.png")
    common = ["--data", str(tmp_path / "f"), "--img-size", "16", *TINY[:6], "--batch-size", "4", "--workers", "0"]
    scheduled = train.main(common + ["--output", str(tmp_path / "a")])
    assert scheduled["epochs"] == 100  # 12 training images: the 100-epoch cap
    config = json.loads((tmp_path / "a" / "args.json").read_text())["config"]
    assert config["eval_every"] == 20
    train.main(common + ["--eval-every", "50", "--output", str(tmp_path / "b")])  # the schedule, but this flag
    config = json.loads((tmp_path / "b" / "args.json").read_text())["config"]
    assert (config["epochs"], config["eval_every"]) == (100, 50)
