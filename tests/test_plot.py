"""Tests for vit/plot.py: PNG charts drawn where the data says, at the requested size, atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vit import plot
from vit.plot import GRID_TITLE_H, PALETTE, VIRIDIS, bar_chart, charts, colormap, heatmap, image_grid, line_chart


def load(path: Path) -> np.ndarray:
    img = Image.open(path)
    assert img.format == "PNG"
    return np.asarray(img.convert("RGB")).astype(int)


def near(arr: np.ndarray, rgb: tuple[int, int, int], tol: int = 30) -> np.ndarray:
    """(H, W) mask of pixels within tol of the colour in every channel."""
    return (np.abs(arr - np.array(rgb)) <= tol).all(axis=-1)


def band(mask: np.ndarray, min_pixels: int) -> tuple[int, int]:
    """First and last row having at least min_pixels set pixels."""
    rows = np.nonzero(mask.sum(axis=1) >= min_pixels)[0]
    assert len(rows), "no row has the colour"
    return int(rows.min()), int(rows.max())


def test_nice_ticks_are_round_and_cover_the_range() -> None:
    assert plot.nice_ticks(0.0, 0.97) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert plot.nice_ticks(1, 30, 8, integer=True) == [0, 5, 10, 15, 20, 25, 30]
    assert plot.nice_ticks(1, 3, 8, integer=True) == [1, 2, 3]  # never 0.5 steps for epochs
    t = plot.nice_ticks(5.0, 5.0)  # a constant still gets an axis around it
    assert t[0] < 5 < t[-1]
    assert plot._tick_labels(plot.nice_ticks(0.94, 0.99)) == ["0.94", "0.95", "0.96", "0.97", "0.98", "0.99"]
    assert plot._tick_labels(plot.nice_ticks(0, 2e6)) == ["0.0", "0.5M", "1.0M", "1.5M", "2.0M"]
    assert plot._tick_labels([-0.2, 0.0, 0.2]) == ["-0.2", "0.0", "0.2"]


def test_colormap_ends_and_clipping() -> None:
    assert colormap(0.0) == VIRIDIS[0] and colormap(1.0) == VIRIDIS[-1]
    assert colormap(-3) == VIRIDIS[0] and colormap(7) == VIRIDIS[-1]
    assert colormap(0.5) == VIRIDIS[2]


def test_line_chart_draws_constant_series_on_one_row_band(tmp_path: Path) -> None:
    path = tmp_path / "curves.png"
    xs = list(range(11))
    line_chart(path, {"high": (xs, [2.0] * 11), "low": (xs, [1.0] * 11)}, "t", "epoch", "loss", size=(640, 400))
    arr = load(path)
    assert arr.shape == (400, 640, 3)
    assert (arr[0, 0] == 255).all()  # white background
    blue, orange = near(arr, PALETTE[0]), near(arr, PALETTE[1])
    b0, b1 = band(blue, 200)  # rows crossed by most of the width: the curve, not the legend swatch
    o0, o1 = band(orange, 200)
    assert b1 - b0 <= 8 and o1 - o0 <= 8  # a flat line (with its markers) is a thin band
    assert b1 < o0  # 2.0 is drawn above 1.0
    assert blue[b0 : b1 + 1].any(axis=0).sum() > 400  # and it spans the plot's width


def test_line_chart_slope_goes_up_and_nan_leaves_a_gap(tmp_path: Path) -> None:
    path = tmp_path / "slope.png"
    line_chart(path, {"": ([0, 1, 2, 3, 4], [0, 1, float("nan"), 3, 4])}, "", "", "", size=(400, 300))
    blue = near(load(path), PALETTE[0])
    cols = np.nonzero(blue.any(axis=0))[0]
    left_rows = np.nonzero(blue[:, cols.min() + 3])[0]
    right_rows = np.nonzero(blue[:, cols.max() - 3])[0]
    assert left_rows.mean() > right_rows.mean() + 100  # higher values are higher up
    covered = blue.any(axis=0)[cols.min() : cols.max() + 1]
    assert not covered.all()  # the NaN point breaks the line


def test_line_chart_survives_empty_and_non_finite_input(tmp_path: Path) -> None:
    line_chart(tmp_path / "empty.png", {}, "", "", "", size=(300, 200))
    line_chart(tmp_path / "nan.png", {"x": ([0, 1], [float("nan"), float("inf")])}, "t", "x", "y", size=(300, 200))
    assert load(tmp_path / "empty.png").shape == (200, 300, 3)
    assert load(tmp_path / "nan.png").shape == (200, 300, 3)


def test_charts_puts_panels_side_by_side(tmp_path: Path) -> None:
    path = tmp_path / "panels.png"
    panel = {"series": {"a": ([0, 1], [0, 1])}, "title": "p", "xlabel": "x", "ylabel": "y"}
    charts(path, [panel, panel, panel], panel_size=(300, 200))
    assert Image.open(path).size == (900, 200)


def test_bar_chart_bar_heights_follow_the_means(tmp_path: Path) -> None:
    path = tmp_path / "bars.png"
    bar_chart(path, ["a", "b", "c"], [0.5, 0.9, 0.2], [0.05, 0.02, 0.1], "acc", "accuracy", size=(600, 400))
    arr = load(path)
    assert arr.shape == (400, 600, 3)
    tops, bottoms, lefts = [], [], []
    for colour in PALETTE[:3]:
        mask = near(arr, colour, tol=10)
        assert mask.sum() > 2000  # a filled bar, not a speck
        rows, cols = np.nonzero(mask)
        tops.append(rows.min())
        bottoms.append(rows.max())
        lefts.append(cols.min())
    assert tops[1] < tops[0] < tops[2]  # 0.9 is tallest, 0.2 shortest
    assert max(bottoms) - min(bottoms) <= 2  # all start at the 0 line
    assert lefts[0] < lefts[1] < lefts[2]
    heights = [b - t for t, b in zip(tops, bottoms)]
    assert heights[1] / heights[0] == pytest.approx(0.9 / 0.5, rel=0.05)
    with pytest.raises(ValueError, match="must match"):
        bar_chart(tmp_path / "bad.png", ["a"], [1.0, 2.0], None, "", "")


def test_heatmap_colours_cells_by_value_and_writes_values(tmp_path: Path) -> None:
    path = tmp_path / "heat.png"
    heatmap(path, [[0, 10]], ["row"], ["low", "high"], "h", size=(500, 300))
    arr = load(path)
    assert arr.shape == (300, 500, 3)
    dark, bright = near(arr, VIRIDIS[0], tol=8), near(arr, VIRIDIS[-1], tol=8)
    assert dark.sum() > 5000 and bright.sum() > 5000  # two big cells
    dark_cols, bright_cols = np.nonzero(dark.any(axis=0))[0], np.nonzero(bright.any(axis=0))[0]
    assert bright_cols.min() > dark_cols.min() + 100  # the low cell is left of the high one
    rows, cols = np.nonzero(dark[:, : bright_cols.min()])
    centre = arr[(rows.min() + rows.max()) // 2 - 6 : (rows.min() + rows.max()) // 2 + 6,
                 (cols.min() + cols.max()) // 2 - 6 : (cols.min() + cols.max()) // 2 + 6]
    assert (centre.min(axis=-1) > 200).any()  # the value "0", written in white on the dark cell


def test_heatmap_large_matrix_and_errors(tmp_path: Path) -> None:
    m = np.random.default_rng(0).random((40, 40)).tolist()
    names = [str(i) for i in range(40)]
    heatmap(tmp_path / "big.png", m, names, names, "big", vmin=0.0, vmax=1.0)
    assert Image.open(tmp_path / "big.png").size == (700, 600)
    with pytest.raises(ValueError, match="rectangular"):
        heatmap(tmp_path / "bad.png", [[1, 2], [3]], ["a", "b"], ["x", "y"], "")
    with pytest.raises(ValueError, match="labels"):
        heatmap(tmp_path / "bad.png", [[1, 2]], ["a", "b"], ["x", "y"], "")


def test_image_grid_size_and_pixels(tmp_path: Path) -> None:
    path = tmp_path / "grid.png"
    attention = np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32)  # enlarged with nearest-neighbour
    grey = np.full((28, 28), 77, dtype=np.uint8)
    rgb = Image.new("RGB", (10, 20), (200, 10, 10))
    tensor = torch.zeros(5, 5)
    images = [attention, grey, rgb, tensor, np.ones((4, 4, 3))]
    image_grid(path, images, ["att", "in", "pil", "t", "w"], cols=3, cell=64)
    arr = load(path)
    assert arr.shape == (2 * (64 + GRID_TITLE_H), 3 * 64, 3)
    assert tuple(arr[16, 16]) == VIRIDIS[0] and tuple(arr[16, 48]) == VIRIDIS[-1]  # float map coloured
    assert tuple(arr[32, 64 + 32]) == (77, 77, 77)  # uint8 stays grey
    assert tuple(arr[32, 128 + 32]) == (200, 10, 10)  # PIL image as is
    assert tuple(arr[64 + GRID_TITLE_H + 32, 32]) == VIRIDIS[0]  # tensor of zeros
    assert tuple(arr[64 + GRID_TITLE_H + 32, 64 + 32]) == (255, 255, 255)  # float RGB 1.0 is white
    assert (arr[64 : 64 + GRID_TITLE_H, :64] < 128).any()  # a title under the first image
    with pytest.raises(ValueError, match="titles"):
        image_grid(tmp_path / "bad.png", [grey], [], cols=1)
    with pytest.raises(ValueError, match="shape"):
        image_grid(tmp_path / "bad.png", [np.zeros((2, 2, 2))], ["x"], cols=1)


def test_writes_are_atomic(tmp_path: Path) -> None:
    line_chart(tmp_path / "a.png", {"a": ([0, 1], [0, 1])}, "", "", "", size=(200, 150))
    image_grid(tmp_path / "sub" / "b.png", [np.zeros((2, 2))], ["x"], cols=1, cell=32)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["a.png", "sub", "sub/b.png"]
    (tmp_path / "taken.png").mkdir()  # os.replace onto a folder fails: no temp file may stay behind
    with pytest.raises(OSError):
        line_chart(tmp_path / "taken.png", {}, "", "", "", size=(200, 150))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "sub", "taken.png"]


def test_heatmap_writes_the_counts_of_a_15_class_confusion_matrix(tmp_path: Path, monkeypatch) -> None:
    written = []
    real_text = plot._Canvas.text

    def record(self, x, y, s, *args, **kwargs):
        written.append(s)
        return real_text(self, x, y, s, *args, **kwargs)

    monkeypatch.setattr(plot._Canvas, "text", record)
    counts = [[100 + 15 * i + j for j in range(15)] for i in range(15)]  # 225 distinct values
    names = [f"class {i}" for i in range(15)]
    heatmap(tmp_path / "confusion.png", counts, names, names, "confusion", xlabel="predicted", ylabel="true")
    assert {str(v) for row in counts for v in row} <= set(written)
