"""vit.sweep: the grid parser, expansion, the sweep.md aggregation, and a real tiny resumable sweep."""

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vit import sweep
from vit.errors import run_cli
from helpers import write_mnist  # tests/helpers.py: tiny datasets written by the tests

TINY = ["--data-dir", "DATA", "--no-download", "--embed-dim", "16", "--depth", "1", "--heads", "2",
        "--batch-size", "32", "--workers", "0", "--threads", "1"]


@pytest.fixture(scope="module")
def parser():
    return sweep.train_parser()


# ------------------------------------------------------------------------------------------ grid


def test_grid_values_are_typed_like_train_py_flags(parser):
    axes = sweep.parse_grid(["patch_size=4,7", "lr=1e-3,0.01", "pos=sin,learned", "aug=mnist,none",
                             "no-download=true,false", "amp=Yes,off"], parser)
    assert [a.name for a in axes] == ["patch_size", "lr", "pos", "aug", "no_download", "amp"]
    patch, lr, pos, aug, no_download, amp = axes
    assert patch.values == ("4", "7") and patch.argv["7"] == ("--patch-size", "7")
    assert lr.argv["1e-3"] == ("--lr", "1e-3")
    assert pos.argv == {"sin": ("--pos", "sin"), "learned": ("--pos", "learned")}
    assert aug.argv["none"] == ("--aug", "none")  # a str flag without choices
    assert no_download.values == ("true", "false")  # a store_true switch: present or absent
    assert no_download.argv == {"true": ("--no-download",), "false": ()}
    assert amp.argv == {"true": ("--amp",), "false": ("--no-amp",)}  # --amp / --no-amp


@pytest.mark.parametrize("token, message", [
    ("depht=2,4", r"'depht' is not a train.py option; did you mean depth\?"),
    ("colour=red", r"'colour' is not a train.py option; see python train.py --help"),
    ("depth=2,two", r"grid axis depth: 'two' is not a valid int for --depth"),
    ("lr=0.1,fast", r"grid axis lr: 'fast' is not a valid float for --lr"),
    ("pos=sin,rope", r"'rope' is not a choice of --pos \(sin, learned, none\)"),
    ("amp=maybe", r"'maybe' is not on or off; --amp is a switch"),
    ("depth=", r"grid axis 'depth=': empty value"),
    ("depth=2,,4", r"grid axis 'depth=2,,4': empty value"),
    ("depth", r"grid axis 'depth': expected NAME=V1,V2"),
    ("=2,4", r"expected NAME=V1,V2"),
    ("depth=2,2", r"a value is repeated"),
    ("seed=1,2", r"grid axis 'seed' is not allowed: use the sweep's --seeds"),
    ("output=a,b", r"grid axis 'output' is not allowed"),
])
def test_grid_errors_name_the_problem(parser, token, message):
    with pytest.raises(ValueError, match=message):
        sweep.parse_grid([token], parser)


def test_grid_axis_given_twice_is_refused(parser):
    with pytest.raises(ValueError, match="'depth' is given twice"):
        sweep.parse_grid(["depth=2", "depth=4"], parser)


def test_expansion_is_the_cartesian_product_in_grid_order(parser):
    axes = sweep.parse_grid(["patch_size=4,7", "depth=2,4,6", "pos=sin,learned"], parser)
    configs = sweep.expand(axes)
    assert len(configs) == 12
    assert configs[0] == {"patch_size": "4", "depth": "2", "pos": "sin"}
    assert configs[1] == {"patch_size": "4", "depth": "2", "pos": "learned"}  # the last axis varies fastest
    assert configs[-1] == {"patch_size": "7", "depth": "6", "pos": "learned"}
    assert len({sweep.config_slug(c) for c in configs}) == 12
    assert sweep.config_slug(configs[0]) == "patch_size=4,depth=2,pos=sin"
    assert sweep.config_argv(axes, configs[0]) == ["--patch-size", "4", "--depth", "2", "--pos", "sin"]


def test_command_line_errors_exit_2_with_a_message(capsys):
    cases = [
        (["--grid", "depht=2,4"], "did you mean depth"),
        (["--grid", "depth=2,4", "--", "--depth", "3"], "--depth is both a grid axis and a fixed flag"),
        (["--grid", "depth=2,4", "--", "--seed", "3"], "--seed cannot be given to a sweep"),
        (["--grid", "depth=2,4", "--", "--depht", "3"], "not train.py flags: --depht 3"),
        (["--grid", "depth=2,4", "--", "--lr", "fast"], "train.py flags: argument --lr: invalid float value"),
        (["--grid", "depth=2,4", "--lr", "0.1"], r"unrecognized arguments: --lr 0.1 \(train.py flags go after --\)"),
        (["--grid", "epochs=1,2", "--epochs", "3"], "--epochs is both a grid axis and a fixed flag"),
        (["--grid", "depth=2", "--seeds", "0"], "argument --seeds: must be >= 1, got 0"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            sweep.parse_args(argv)
        assert e.value.code == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("usage: python -m vit.sweep") and re.search(message, err), err


def test_default_output_names_the_data_and_the_axes():
    args, axes, fixed = sweep.parse_args(["--data", "mnist", "--grid", "depth=2", "pos=sin", "--epochs", "2",
                                          "--", "--lr", "0.01"])
    assert args.output == Path("sweeps/mnist-depth-pos")
    assert fixed == ["--data", "mnist", "--epochs", "2", "--lr", "0.01"]


# -------------------------------------------------------------------------------------- reports

FAKE_CSV = """\
patch_size,pos,seed,status,test_acc,params,train_seconds,train_img_per_s,output,error
4,sin,0,ok,0.97,1000,10,500,a,
4,learned,0,ok,0.99,1100,20,400,b,
7,sin,0,failed,,,,,c,train.py: error: boom
4,sin,1,ok,0.98,1000,30,700,d,
4,learned,1,ok,0.95,1100,40,600,e,
7,sin,1,ok,0.90,900,5,900,f,
"""


def read_sweep_csv(path):
    """(axis names, rows) of a sweep.csv: the axes are the columns before 'seed'."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames[:reader.fieldnames.index("seed")], list(reader)


def test_markdown_aggregates_a_fake_sweep_csv(tmp_path):
    path = tmp_path / "sweep.csv"
    path.write_text(FAKE_CSV)
    axes, rows = read_sweep_csv(path)
    assert axes == ["patch_size", "pos"]
    lines = sweep.markdown(rows, axes, "python -m vit.sweep ...").splitlines()
    table = [line for line in lines if line.startswith("| ")]
    assert table[0] == "| rank | patch_size | pos | test acc (%) | runs | params | train s | img/s |"
    # 4/sin: mean 97.5, sample std sqrt(((0.5)^2 + (0.5)^2) / 1) = 0.707; 4/learned: 97.0 ± 2.83; 7/sin: 90 (1 run)
    assert table[1:] == ["| 1 | 4 | sin | 97.50 ± 0.71 | 2 | 1,000 | 20.0 | 600 |",
                         "| 2 | 4 | learned | 97.00 ± 2.83 | 2 | 1,100 | 30.0 | 500 |",
                         "| 3 | 7 | sin | 90.00 | 1 | 900 | 5.0 | 900 |"]
    assert "## Failed runs (1)" in lines
    assert "- patch_size=7,pos=sin seed 0: train.py: error: boom" in lines
    assert "`python -m vit.sweep ...`" in lines


def test_per_value_statistics_for_the_charts(tmp_path):
    path = tmp_path / "sweep.csv"
    path.write_text(FAKE_CSV)
    _, rows = read_sweep_csv(path)
    (v4, m4, s4, n4), (v7, m7, s7, n7) = sweep.by_value(rows, "patch_size")
    assert (v4, n4, v7, n7) == ("4", 4, "7", 1)
    assert m4 == pytest.approx(0.9725) and s4 == pytest.approx(np.std([0.97, 0.99, 0.98, 0.95], ddof=1))
    assert m7 == pytest.approx(0.90) and math.isnan(s7)
    rows = [r for r in rows if r["patch_size"] == "4"] + [{**rows[2], "seed": "1"}]  # 7: every run failed
    assert math.isnan(sweep.by_value(rows, "patch_size")[1][1])


# ---------------------------------------------------------------------------------- a real sweep


def test_tiny_sweep_records_failures_and_resumes(tmp_path, capsys):
    data = write_mnist(tmp_path / "data", n_train=64, n_test=32)
    out = tmp_path / "sweep"
    argv = ["--data", "mnist", "--grid", "patch_size=7,14,5", "--epochs", "1", "--seeds", "1", "--output", str(out),
            "--"] + [str(data) if a == "DATA" else a for a in TINY]
    rows = sweep.main(argv)
    assert [(r["patch_size"], r["status"]) for r in rows] == [("7", "ok"), ("14", "ok"), ("5", "failed")]
    assert rows[2]["error"] == "train.py: error: img_size 28 is not a multiple of patch_size 5"
    assert "usage:" not in capsys.readouterr().err  # argparse's usage block is kept out of the log

    finished = out / "patch_size=7-seed0"
    results = json.loads((finished / "results.json").read_text())
    assert rows[0]["test_acc"] == results["test_acc"] and rows[0]["params"] == results["params"]
    command = json.loads((finished / "args.json").read_text())["command"]
    assert command[0] == "train.py" and command[command.index("--patch-size") + 1] == "7"  # repeatable alone

    with open(out / "sweep.csv", newline="") as f:
        saved = list(csv.DictReader(f))
    assert [(r["patch_size"], r["seed"], r["status"]) for r in saved] == [("7", "0", "ok"), ("14", "0", "ok"),
                                                                          ("5", "0", "failed")]
    assert float(saved[1]["test_acc"]) == rows[1]["test_acc"]
    md = (out / "sweep.md").read_text()
    assert "| 1 |" in md and "| 2 |" in md and "| 3 |" not in md and "## Failed runs (1)" in md
    with Image.open(out / "chart_patch_size.png") as chart:
        assert chart.size == (800, 500)

    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*/results.json")}
    assert len(mtimes) == 2
    again = sweep.main(argv)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/results.json")} == mtimes  # finished runs skipped
    assert [(r["status"], r["test_acc"]) for r in again[:2]] == [(r["status"], r["test_acc"]) for r in rows[:2]]
    assert again[2]["status"] == "failed"
    assert "finished before, skipped" in capsys.readouterr().out

    interrupted = out / "patch_size=14-seed0"  # as if killed after its last epoch, before results.json
    (interrupted / "results.json").unlink()
    metrics = (interrupted / "metrics.csv").stat().st_mtime_ns
    third = sweep.main(argv)
    assert "resumed from" in capsys.readouterr().err
    assert (interrupted / "metrics.csv").stat().st_mtime_ns == metrics  # no epoch trained again
    assert third[1]["test_acc"] == rows[1]["test_acc"] and (interrupted / "results.json").exists()


def test_curves_average_the_seeds_over_the_epochs_every_run_evaluated(tmp_path):
    def run(name: str, accs: dict[int, float]) -> str:
        folder = tmp_path / name
        folder.mkdir()
        lines = ["epoch,eval_acc"] + [f"{e},{accs[e] if e in accs else ''}" for e in range(1, 4)]
        (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
        return str(folder)

    rows = [{"pos": "sin", "seed": 0, "status": "ok", "output": run("a", {1: 0.5, 2: 0.7, 3: 0.9})},
            {"pos": "sin", "seed": 1, "status": "ok", "output": run("b", {1: 0.3, 3: 0.7})},
            {"pos": "none", "seed": 0, "status": "failed", "output": run("c", {1: 0.1})},
            {"pos": "none", "seed": 1, "status": "ok", "output": str(tmp_path / "moved")}]  # no metrics.csv: left out
    lines = sweep.curves(rows, ["pos"])
    assert list(lines) == ["sin"]
    assert lines["sin"][0] == [1.0, 3.0] and lines["sin"][1] == pytest.approx([40.0, 80.0])


def test_a_finetune_sweep_runs_finetune_py_and_draws_the_curves(tmp_path):
    weights = Path(__file__).resolve().parent / "fixtures" / "tiny_hf" / "model.safetensors"
    folder = tmp_path / "scenes"
    for split in ("train", "val"):
        for name, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
            (folder / split / name).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (32, 32), tuple(c + 5 * i for c in colour)).save(folder / split / name / f"{i}.png")
    out = tmp_path / "sweep"
    fast = ["--img-size", "32", "--batch-size", "4", "--workers", "0", "--threads", "1", "--eval-every", "1"]
    rows = sweep.main(["--script", "finetune", "--data", str(folder), "--grid", "freeze=true,false", "--epochs", "2",
                       "--output", str(out), "--", "--weights", str(weights), *fast])
    assert [(r["freeze"], r["status"]) for r in rows] == [("true", "ok"), ("false", "ok")]
    command = json.loads((out / "freeze=true-seed0" / "args.json").read_text())["command"]
    assert command[0] == "finetune.py" and "--freeze" in command
    assert set(sweep.curves(rows, ["freeze"])) == {"true", "false"}
    with Image.open(out / "chart_curves.png") as chart:
        assert chart.size == (800, 500)


def test_grid_axes_are_checked_against_the_script_they_run(capsys):
    with pytest.raises(SystemExit):
        sweep.parse_args(["--script", "finetune", "--grid", "pos=sin,learned"])  # a train.py flag, not finetune.py's
    assert "grid axis 'pos' is not a finetune.py option" in capsys.readouterr().err


def test_a_sweep_with_a_failed_run_exits_1(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["--data", "mnist", "--grid", "patch_size=5", "--epochs", "1", "--output", str(out), "--", "--no-download"]
    with pytest.raises(SystemExit) as e:  # 28 px is no multiple of 5: refused before any data is read
        run_cli(lambda: sweep.run_command(argv))
    captured = capsys.readouterr()
    assert e.value.code == 1 and "1 runs, 1 failed; wrote" in captured.out
    assert captured.err.splitlines()[-1] == "error: 1 of 1 runs failed"


def test_a_finished_run_made_with_other_flags_is_not_counted_as_this_one(tmp_path, capsys):
    data = write_mnist(tmp_path / "data", n_train=64, n_test=32)
    out = tmp_path / "sweep"
    argv = ["--data", "mnist", "--grid", "patch_size=7", "--epochs", "1", "--output", str(out), "--"] + \
        [str(data) if a == "DATA" else a for a in TINY]
    first = sweep.main(argv)
    assert first[0]["status"] == "ok"
    results = out / "patch_size=7-seed0" / "results.json"
    mtime = results.stat().st_mtime_ns
    again = sweep.main([*argv, "--threads", "2"])  # a system flag: the same run, skipped
    assert "finished before, skipped" in capsys.readouterr().out and results.stat().st_mtime_ns == mtime
    assert again[0]["test_acc"] == first[0]["test_acc"]
    other = sweep.main([*argv, "--lr", "1e-4"])  # was "finished before, skipped", reported under this command
    printed = capsys.readouterr().out
    assert "finished before, skipped" not in printed and results.stat().st_mtime_ns == mtime
    assert other[0]["status"] == "failed" and "--lr 0.0001 (the run: 0.0028)" in other[0]["error"]
    assert "| 1 |" not in (out / "sweep.md").read_text()  # no earlier numbers under the new command
    longer = sweep.main([*argv[:argv.index("--epochs") + 1], "2", *argv[argv.index("--epochs") + 2:]])
    assert longer[0]["status"] == "ok" and json.loads(results.read_text())["epochs"] == 2  # continued to epoch 2
