"""PNG charts with Pillow only: line charts, bar charts with error bars, heat maps, image grids.

One small module serves training curves, sweep charts, confusion matrices and attention maps. It
imports only Pillow and the standard library, so it can be copied on its own. Axes get ticks at
round values (1, 2 or 5 x 10^k), a light grid, labels, a title and a legend; colours come from a
fixed palette and maps use a viridis-like colour scale.

Charts are drawn at 2x and shrunk by averaging 2 x 2 blocks, which antialiases the lines (Pillow's
ImageDraw does not). Every file is written to a temporary name in the same folder and renamed into
place, so a reader never sees half a PNG.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw, ImageFont

SS = 2  # supersampling factor for charts
PALETTE = [  # matplotlib's tab10: distinct, colour-blind-friendlier than pure hues
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]
VIRIDIS = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]  # 5 stops, 0 -> 1
BG, GRID, AXIS, TEXT = (255, 255, 255), (228, 228, 228), (90, 90, 90), (30, 30, 30)
TITLE_PX, LABEL_PX, TICK_PX = 18, 14, 13  # font sizes in output pixels
GRID_TITLE_H = 22  # height of the title band under each image_grid cell


def colormap(t: float) -> tuple[int, int, int]:
    """Viridis-like colour for t in [0, 1] (clipped): linear between 5 stops; NaN gives grey."""
    if t != t:
        return (200, 200, 200)
    t = min(max(t, 0.0), 1.0) * (len(VIRIDIS) - 1)
    k = min(int(t), len(VIRIDIS) - 2)
    f = t - k
    return tuple(round(a + (b - a) * f) for a, b in zip(VIRIDIS[k], VIRIDIS[k + 1]))  # type: ignore[return-value]


@lru_cache(maxsize=None)
def _font(px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=px)


def _save_png(img: Image.Image, path: str | os.PathLike) -> None:
    """Write img as PNG to a temp file beside path, fsync, then rename onto path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            img.save(f, format="PNG")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def nice_ticks(lo: float, hi: float, max_ticks: int = 7, integer: bool = False) -> list[float]:
    """Round tick values covering [lo, hi]: a step of 1, 2 or 5 x 10^k, at most max_ticks + 1 ticks.

    The first tick is <= lo and the last >= hi, so they make the axis limits. integer=True keeps
    the step >= 1 (epochs, counts). lo == hi is widened so a constant series still gets an axis.
    """
    if not (_finite(lo) and _finite(hi)):
        lo, hi = 0.0, 1.0
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max_ticks
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw * (1 - 1e-9))
    if integer:
        step = max(step, 1)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [k * step for k in range(first, last + 1)]


def _tick_labels(ticks: list[float]) -> list[str]:
    """Labels with as many decimals as the step needs; k / M / G suffixes for large values and
    scientific notation for tiny ones."""
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    biggest = max(abs(t) for t in ticks) or 1.0
    k = math.floor(math.log10(step) + 1e-9)
    # (unit, suffix, from): 2500 stays "2500", 25000 becomes "25k"
    units = ((1e9, "G", 1e9), (1e6, "M", 1e6), (1e3, "k", 1e4))
    unit, suffix = next(((u, s) for u, s, start in units if biggest >= start), (1.0, ""))
    out = []
    for t in ticks:
        t = 0.0 if abs(t) < step * 1e-6 else t  # no "-0.0"
        if k < -4:
            out.append(f"{t:.{max(0, math.floor(math.log10(biggest)) - k)}e}" if t else "0")
        else:
            out.append(f"{t / unit:.{max(0, round(math.log10(unit)) - k)}f}{suffix if t else ''}")
    return out


class _Canvas:
    """An RGB image drawn at SS x resolution; all coordinates are given in output pixels."""

    def __init__(self, width: int, height: int, ss: int = SS) -> None:
        self.width, self.height, self.ss = width, height, ss
        self.img = Image.new("RGB", (width * ss, height * ss), BG)
        self.draw = ImageDraw.Draw(self.img)

    def _p(self, x: float, y: float) -> tuple[float, float]:
        return x * self.ss, y * self.ss

    def line(self, pts: Sequence[tuple[float, float]], fill: tuple, width: float = 1) -> None:
        self.draw.line([self._p(x, y) for x, y in pts], fill=fill, width=max(1, round(width * self.ss)),
                       joint="curve")

    def rect(self, box: tuple[float, float, float, float], fill: tuple | None = None,
             outline: tuple | None = None, width: float = 1) -> None:
        x0, y0, x1, y1 = box
        self.draw.rectangle([self._p(x0, y0), self._p(x1, y1)], fill=fill, outline=outline,
                            width=max(1, round(width * self.ss)))

    def dot(self, x: float, y: float, r: float, fill: tuple) -> None:
        self.draw.ellipse([self._p(x - r, y - r), self._p(x + r, y + r)], fill=fill, outline=BG)

    def text_w(self, s: str, px: int) -> float:
        return _font(px * self.ss).getlength(s) / self.ss

    def text(self, x: float, y: float, s: str, px: int = LABEL_PX, fill: tuple = TEXT,
             anchor: str = "la") -> None:
        """Draw s with Pillow's anchor convention ('mm' = centred, 'rm' = right-middle, 'mt' = top-centre)."""
        self.draw.text(self._p(x, y), s, font=_font(px * self.ss), fill=fill, anchor=anchor)

    def text_rotated(self, x: float, y: float, s: str, angle: float, px: int = LABEL_PX,
                     fill: tuple = TEXT, end: bool = False) -> None:
        """Draw s rotated counter-clockwise by angle degrees, its centre (or, with end=True, the
        middle of its right end) placed at (x, y)."""
        font = _font(px * self.ss)
        ascent, descent = font.getmetrics()
        w, h = max(1, math.ceil(font.getlength(s))), ascent + descent
        mask = Image.new("L", (w, h), 0)
        ImageDraw.Draw(mask).text((0, 0), s, font=font, fill=255)
        rot = mask.rotate(angle, resample=Image.BICUBIC, expand=True)
        # where the anchor point lands: rotate its offset from the text centre (y points down)
        px_, py_ = (w / 2, 0.0) if end else (0.0, 0.0)
        a = math.radians(angle)
        rx, ry = px_ * math.cos(a) + py_ * math.sin(a), -px_ * math.sin(a) + py_ * math.cos(a)
        ox, oy = self._p(x, y)
        origin = (round(ox - rot.width / 2 - rx), round(oy - rot.height / 2 - ry))
        self.img.paste(Image.new("RGB", rot.size, fill), origin, rot)

    def finish(self) -> Image.Image:
        return self.img.reduce(self.ss)  # box filter: each output pixel averages ss x ss samples


def _ellipsize(c: _Canvas, s: str, px: int, max_w: float) -> str:
    """s shortened with '…' so it fits in max_w pixels."""
    if c.text_w(s, px) <= max_w:
        return s
    while s and c.text_w(s + "…", px) > max_w:
        s = s[:-1]
    return s + "…"


def _y_axis(c: _Canvas, box: tuple[float, float, float, float], ticks: list[float]) -> None:
    """Horizontal grid lines, tick marks and labels on the left edge of the plot box."""
    x0, y0, x1, y1 = box
    lo, hi = ticks[0], ticks[-1]
    for t, label in zip(ticks, _tick_labels(ticks)):
        y = y1 - (t - lo) / (hi - lo) * (y1 - y0)
        c.line([(x0, y), (x1, y)], GRID)
        c.line([(x0 - 4, y), (x0, y)], AXIS)
        c.text(x0 - 7, y, label, TICK_PX, anchor="rm")


def _frame_and_labels(c: _Canvas, box: tuple[float, float, float, float], title: str, xlabel: str,
                      ylabel: str, outer: tuple[float, float, float, float]) -> None:
    """Axis lines, title above the box, x label under it, y label rotated at the outer left edge."""
    x0, y0, x1, y1 = box
    c.line([(x0, y0), (x0, y1), (x1, y1)], AXIS, 1.2)
    if title:
        c.text((outer[0] + outer[2]) / 2, outer[1] + 10, _ellipsize(c, title, TITLE_PX, outer[2] - outer[0] - 10),
               TITLE_PX, anchor="mt")
    if xlabel:
        c.text((x0 + x1) / 2, outer[3] - 8, xlabel, LABEL_PX, anchor="md")
    if ylabel:
        c.text_rotated(outer[0] + 14, (y0 + y1) / 2, ylabel, 90, LABEL_PX)


def _legend(c: _Canvas, box: tuple[float, float, float, float], names: list[str],
            points: list[tuple[float, float]]) -> None:
    """A legend box in the inner corner of the plot box that covers the fewest data points."""
    if not names:
        return
    row_h, swatch = LABEL_PX + 8, 22
    w = max(c.text_w(n, LABEL_PX) for n in names) + swatch + 24
    h = row_h * len(names) + 10
    x0, y0, x1, y1 = box
    corners = [(x1 - w - 10, y0 + 10), (x0 + 10, y0 + 10), (x1 - w - 10, y1 - h - 10), (x0 + 10, y1 - h - 10)]

    def covered(corner: tuple[float, float]) -> int:
        lx, ly = corner
        return sum(lx - 4 <= px <= lx + w + 4 and ly - 4 <= py <= ly + h + 4 for px, py in points)

    lx, ly = min(corners, key=covered)  # min keeps the first (top right) on ties
    c.rect((lx, ly, lx + w, ly + h), fill=BG, outline=(200, 200, 200))
    for i, name in enumerate(names):
        y = ly + 5 + row_h * (i + 0.5)
        colour = PALETTE[i % len(PALETTE)]
        c.line([(lx + 8, y), (lx + 8 + swatch, y)], colour, 2.5)
        c.text(lx + 14 + swatch, y, name, LABEL_PX, anchor="lm")


def _draw_line_chart(c: _Canvas, outer: tuple[float, float, float, float],
                     series: dict[str, tuple[Sequence[float], Sequence[float]]],
                     title: str, xlabel: str, ylabel: str) -> None:
    """One line chart inside the outer box (x0, y0, x1, y1) of the canvas."""
    pts = {name: [(float(x), float(y)) for x, y in zip(xs, ys)] for name, (xs, ys) in series.items()}
    good = [(x, y) for p in pts.values() for x, y in p if _finite(x) and _finite(y)]
    xs_all = [x for x, _ in good] or [0.0, 1.0]
    ys_all = [y for _, y in good] or [0.0, 1.0]
    integer_x = all(x == int(x) for x in xs_all)
    xt = nice_ticks(min(xs_all), max(xs_all), 8, integer=integer_x)
    yt = nice_ticks(min(ys_all), max(ys_all), 6)
    y_label_w = max(c.text_w(s, TICK_PX) for s in _tick_labels(yt))
    right = max(22.0, c.text_w(_tick_labels(xt)[-1], TICK_PX) / 2 + 6)  # room for the last x label
    box = (outer[0] + (30 if ylabel else 8) + y_label_w + 10, outer[1] + (44 if title else 14),
           outer[2] - right, outer[3] - (52 if xlabel else 30))
    bx0, by0, bx1, by1 = box

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (bx0 + (x - xt[0]) / (xt[-1] - xt[0]) * (bx1 - bx0),
                by1 - (y - yt[0]) / (yt[-1] - yt[0]) * (by1 - by0))

    _y_axis(c, box, yt)
    for t, label in zip(xt, _tick_labels(xt)):
        x = to_px(t, yt[0])[0]
        c.line([(x, by0), (x, by1)], GRID)
        c.line([(x, by1), (x, by1 + 4)], AXIS)
        c.text(x, by1 + 7, label, TICK_PX, anchor="mt")
    _frame_and_labels(c, box, title, xlabel, ylabel, outer)
    drawn: list[tuple[float, float]] = []  # pixel positions along the curves, to place the legend
    for i, p in enumerate(pts.values()):
        colour = PALETTE[i % len(PALETTE)]
        run: list[tuple[float, float]] = []  # NaN / inf break the line into runs
        for x, y in p + [(math.nan, math.nan)]:
            if _finite(x) and _finite(y):
                run.append(to_px(x, y))
                continue
            if len(run) > 1:
                c.line(run, colour, 2)
            if len(run) == 1 or 0 < len(p) <= 30:
                for q in run:
                    c.dot(q[0], q[1], 3.2, colour)
            for (ax, ay), (bx, by) in zip(run, run[1:]):
                drawn += [(ax + (bx - ax) * k / 8, ay + (by - ay) * k / 8) for k in range(8)]
            drawn += run
            run = []
    _legend(c, box, [n for n in pts if n], drawn)


def line_chart(path: str | os.PathLike, series: dict[str, tuple[Sequence[float], Sequence[float]]],
               title: str, xlabel: str, ylabel: str, size: tuple[int, int] = (800, 500)) -> None:
    """Curves y(x), one per entry {name: (xs, ys)}, with a legend; NaN / inf points leave gaps."""
    c = _Canvas(*size)
    _draw_line_chart(c, (0, 0, size[0], size[1]), series, title, xlabel, ylabel)
    _save_png(c.finish(), path)


def charts(path: str | os.PathLike, panels: list[dict[str, Any]],
           panel_size: tuple[int, int] = (560, 420)) -> None:
    """Several line charts side by side in one PNG; each panel is a dict of line_chart's arguments
    (series, title, xlabel, ylabel)."""
    w, h = panel_size
    c = _Canvas(w * len(panels), h)
    for i, p in enumerate(panels):
        _draw_line_chart(c, (i * w, 0, (i + 1) * w, h), p["series"], p.get("title", ""),
                         p.get("xlabel", ""), p.get("ylabel", ""))
    _save_png(c.finish(), path)


def bar_chart(path: str | os.PathLike, labels: list[str], means: list[float], stds: list[float] | None,
              title: str, ylabel: str, size: tuple[int, int] = (800, 500)) -> None:
    """Bars from 0 to each mean, with +-std error bars (when given) and the value above each bar.

    Labels that do not fit under their bar are drawn at 45 degrees.
    """
    if len(means) != len(labels) or (stds is not None and len(stds) != len(labels)):
        raise ValueError(f"bar_chart: {len(labels)} labels, {len(means)} means, "
                         f"{'no' if stds is None else len(stds)} stds; they must match")
    errs = [s if _finite(s) else 0.0 for s in (stds or [0.0] * len(means))]
    finite = [(m, e) for m, e in zip(means, errs) if _finite(m)]
    yt = nice_ticks(min([0.0] + [m - e for m, e in finite]), max([0.0] + [m + e for m, e in finite]), 6)
    W, H = size
    c = _Canvas(W, H)
    y_label_w = max(c.text_w(s, TICK_PX) for s in _tick_labels(yt))
    x0 = (30 if ylabel else 8) + y_label_w + 10
    slot = (W - 22 - x0) / max(1, len(labels))
    widest = max([c.text_w(s, TICK_PX) for s in labels] + [0])
    slanted = widest > slot - 6
    bottom = 30 + (widest * 0.71 if slanted else 0)  # a 45-degree label is w * sin(45) tall
    box = (x0, 44 if title else 14, W - 22, H - bottom)
    bx0, by0, bx1, by1 = box

    def to_y(v: float) -> float:
        return by1 - (v - yt[0]) / (yt[-1] - yt[0]) * (by1 - by0)

    _y_axis(c, box, yt)
    # value labels: 2 significant digits of the largest error bar, or 3 of the largest mean
    biggest_err = max(errs, default=0.0)
    biggest = max([abs(m) for m, _ in finite] + [1e-12])
    ndigits = min(6, max(0, 1 - math.floor(math.log10(biggest_err)) if biggest_err > 0
                      else 2 - math.floor(math.log10(biggest))))
    for i, (label, m, e) in enumerate(zip(labels, means, errs)):
        cx = bx0 + slot * (i + 0.5)
        if not _finite(m):
            c.text(cx, to_y(0) - 4, "n/a", TICK_PX - 1, fill=AXIS, anchor="md")
        else:
            c.rect((cx - slot * 0.35, min(to_y(m), to_y(0)), cx + slot * 0.35, max(to_y(m), to_y(0))),
                   fill=PALETTE[i % len(PALETTE)])
            if e > 0:
                cap = min(8.0, slot * 0.15)
                c.line([(cx, to_y(m - e)), (cx, to_y(m + e))], TEXT, 1.5)
                c.line([(cx - cap, to_y(m + e)), (cx + cap, to_y(m + e))], TEXT, 1.5)
                c.line([(cx - cap, to_y(m - e)), (cx + cap, to_y(m - e))], TEXT, 1.5)
            value = f"{m:.{ndigits}f}" + (f" ± {e:.{ndigits}f}" if e > 0 else "")
            if c.text_w(value, TICK_PX - 1) <= slot:
                # above the bar (a negative bar: above its base, where the plot is empty)
                c.text(cx, to_y(max(m + e, 0.0)) - 4, value, TICK_PX - 1, anchor="md")
        c.line([(cx, by1), (cx, by1 + 4)], AXIS)
        if slanted:
            c.text_rotated(cx + 4, by1 + 10, label, 45, TICK_PX, end=True)
        else:
            c.text(cx, by1 + 7, label, TICK_PX, anchor="mt")
    c.line([(bx0, to_y(0)), (bx1, to_y(0))], AXIS, 1)
    _frame_and_labels(c, box, title, "", ylabel, (0, 0, W, H))
    _save_png(c.finish(), path)


def _cell_text(v: float, all_int: bool, biggest: float) -> str:
    if v != v:
        return ""
    if all_int:
        return str(int(v))
    return f"{v:.2f}" if biggest < 10 else f"{v:.3g}"


def heatmap(path: str | os.PathLike, matrix: list[list[float]], row_labels: list[str], col_labels: list[str],
            title: str, size: tuple[int, int] = (700, 600), xlabel: str = "", ylabel: str = "",
            vmin: float | None = None, vmax: float | None = None) -> None:
    """Matrix as coloured cells (row 0 at the top) with a colour bar; values written in every cell
    they fit in. The colour scale spans [vmin, vmax], by default the data's
    min and max. For a confusion matrix: rows = true class (ylabel), columns = predicted (xlabel)."""
    rows, cols = len(matrix), max((len(r) for r in matrix), default=0)
    if rows == 0 or cols == 0 or any(len(r) != cols for r in matrix):
        raise ValueError(f"heatmap: need a non-empty rectangular matrix, got row lengths "
                         f"{[len(r) for r in matrix]}")
    if len(row_labels) != rows or len(col_labels) != cols:
        raise ValueError(f"heatmap: {rows}x{cols} matrix but {len(row_labels)} row and "
                         f"{len(col_labels)} column labels")
    vals = [float(v) for r in matrix for v in r if _finite(float(v))]
    lo = vmin if vmin is not None else min(vals, default=0.0)
    hi = vmax if vmax is not None else max(vals, default=1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    W, H = size
    c = _Canvas(W, H)
    row_w = max(c.text_w(s, TICK_PX) for s in row_labels)
    col_w = max(c.text_w(s, TICK_PX) for s in col_labels)
    cbar_ticks = [t for t in nice_ticks(lo, hi, 6) if lo - 1e-9 * (hi - lo) <= t <= hi + 1e-9 * (hi - lo)]
    cbar_w = 16 + 8 + max([c.text_w(s, TICK_PX) for s in _tick_labels(cbar_ticks)] + [0]) + 14
    left = (30 if ylabel else 8) + row_w + 10
    top = 44 if title else 14
    avail_w = W - left - cbar_w - 20
    cell = min(avail_w / cols, (H - top - 40 - (30 if xlabel else 0)) / rows)
    slanted = col_w > cell - 4
    bottom_needed = 10 + (col_w * 0.71 if slanted else TICK_PX + 4) + (30 if xlabel else 0)
    cell = max(1.0, min(cell, (H - top - bottom_needed) / rows))
    x0 = left + (avail_w - cell * cols) / 2
    y0 = top
    # label every k-th row / column so labels never overlap
    krow = max(1, math.ceil((TICK_PX + 2) / cell))
    kcol = krow if slanted else max(1, math.ceil((col_w + 6) / cell))
    _draw_cells(c, matrix, x0, y0, cell, lo, hi, vals)
    ybot = y0 + rows * cell
    for i, s in enumerate(row_labels):
        if i % krow == 0:
            c.text(x0 - 6, y0 + (i + 0.5) * cell, s, TICK_PX, anchor="rm")
    for j, s in enumerate(col_labels):
        if j % kcol == 0:
            cx = x0 + (j + 0.5) * cell
            if slanted:
                c.text_rotated(cx + 4, ybot + 10, s, 45, TICK_PX, end=True)
            else:
                c.text(cx, ybot + 6, s, TICK_PX, anchor="mt")
    _draw_colour_bar(c, x0 + cols * cell + 20, y0, rows * cell, lo, hi, cbar_ticks)
    if title:
        c.text(W / 2, 10, _ellipsize(c, title, TITLE_PX, W - 10), TITLE_PX, anchor="mt")
    if xlabel:
        c.text(x0 + cols * cell / 2, H - 8, xlabel, LABEL_PX, anchor="md")
    if ylabel:
        c.text_rotated(14, y0 + rows * cell / 2, ylabel, 90, LABEL_PX)
    _save_png(c.finish(), path)


def _draw_cells(c: _Canvas, matrix: list[list[float]], x0: float, y0: float, cell: float, lo: float, hi: float,
                vals: list[float]) -> None:
    """A heatmap's cells, coloured on [lo, hi], each with its value where the value fits."""
    all_int = all(v == int(v) for v in vals)
    biggest = max([abs(v) for v in vals] + [0.0])
    value_px = max(8, min(TICK_PX, int(cell / 3.2)))
    for i, r in enumerate(matrix):
        for j, v in enumerate(r):
            v = float(v)
            colour = colormap((v - lo) / (hi - lo)) if _finite(v) else colormap(math.nan)
            box = (x0 + j * cell, y0 + i * cell, x0 + (j + 1) * cell, y0 + (i + 1) * cell)
            c.rect(box, fill=colour)
            if _finite(v):  # the value in the cell, wherever it fits
                lum = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
                text = _cell_text(v, all_int, biggest)
                if c.text_w(text, value_px) <= cell - 2:
                    c.text((box[0] + box[2]) / 2, (box[1] + box[3]) / 2, text, value_px,
                           fill=(255, 255, 255) if lum < 140 else TEXT, anchor="mm")


def _draw_colour_bar(c: _Canvas, x: float, top: float, height: float, lo: float, hi: float,
                     ticks: list[float]) -> None:
    """A vertical colour strip `height` tall from hi (top) to lo (bottom) at x, with its ticks."""
    bottom = top + height
    steps = max(2, round(height))
    for k in range(steps):
        t0 = top + height * k / steps
        c.rect((x, t0, x + 16, t0 + height / steps + 0.5), fill=colormap(1 - k / (steps - 1)))
    c.rect((x, top, x + 16, bottom), outline=AXIS)
    for t, label in zip(ticks, _tick_labels(ticks)):
        ty = bottom - (t - lo) / (hi - lo) * height
        c.line([(x + 16, ty), (x + 20, ty)], AXIS)
        c.text(x + 23, ty, label, TICK_PX, anchor="lm")


def _to_pil(img: Any) -> Image.Image:
    """An RGB PIL image from a PIL image, a torch tensor or a numpy array (H, W) / (H, W, 1|3|4).

    uint8 arrays are pixel values (grey or RGB); other arrays are floats in [0, 1] (clipped, NaN as
    0): 2-D maps get the viridis colour scale, 3-channel ones are RGB.
    """
    if isinstance(img, Image.Image):
        return img.convert("RGB")
    if hasattr(img, "detach"):  # a torch tensor, without importing torch
        img = img.detach().cpu().numpy()
    if img.ndim == 3 and img.shape[2] in (1, 4):
        img = img[:, :, 0] if img.shape[2] == 1 else img[:, :, :3]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f"image_grid: need an (H, W) or (H, W, 3) array, got shape {tuple(img.shape)}")
    if str(img.dtype) == "uint8":
        return Image.fromarray(img).convert("RGB")
    f = img.astype("float32")
    f[f != f] = 0.0
    u8 = (f.clip(0.0, 1.0) * 255.0 + 0.5).astype("uint8")
    if u8.ndim == 3:
        return Image.fromarray(u8, "RGB")
    grey = Image.fromarray(u8, "L")
    lut = [colormap(k / 255) for k in range(256)]
    return Image.merge("RGB", [grey.point([rgb[ch] for rgb in lut]) for ch in range(3)])


def image_grid(path: str | os.PathLike, images: list[Any], titles: list[str], cols: int, cell: int = 128) -> None:
    """Images in a grid of `cols` columns, each fitted into a cell x cell square with its title
    underneath. The PNG is cols * cell wide and rows * (cell + GRID_TITLE_H) tall.

    Arrays: uint8 are pixels; float maps (e.g. attention) in [0, 1] get the viridis colour scale,
    so scale them first. Small images are enlarged with nearest-neighbour (patches stay crisp).
    """
    if len(titles) != len(images):
        raise ValueError(f"image_grid: {len(images)} images but {len(titles)} titles")
    if cols < 1 or cell < 8:
        raise ValueError(f"image_grid: need cols >= 1 and cell >= 8, got cols={cols}, cell={cell}")
    rows = max(1, math.ceil(len(images) / cols))
    c = _Canvas(cols * cell, rows * (cell + GRID_TITLE_H), ss=1)
    pad = max(2, cell // 32)
    for k, (img, title) in enumerate(zip(images, titles)):
        pil = _to_pil(img)
        scale = min((cell - 2 * pad) / pil.width, (cell - 2 * pad) / pil.height)
        new = (max(1, round(pil.width * scale)), max(1, round(pil.height * scale)))
        pil = pil.resize(new, Image.NEAREST if scale >= 1 else Image.LANCZOS)
        x0, y0 = (k % cols) * cell, (k // cols) * (cell + GRID_TITLE_H)
        c.img.paste(pil, (x0 + (cell - new[0]) // 2, y0 + (cell - new[1]) // 2))
        c.text(x0 + cell / 2, y0 + cell + GRID_TITLE_H / 2 - 2, _ellipsize(c, title, LABEL_PX - 1, cell - 4),
               LABEL_PX - 1, anchor="mm")
    _save_png(c.finish(), path)
