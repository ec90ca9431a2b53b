"""Figures for the report: grouped bars with interval whiskers, stacked category bars, trade-off scatter panels,
image grids (PNG).

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas (no pyplot, no global backend switch) under a
fixed style, and saved without matplotlib's version stamp, so the same data always gives the same PNG bytes.
Every function takes plain values (lists, dicts, PIL images) and writes one PNG; none reads result files.
"""
from __future__ import annotations

import dataclasses
import math
import textwrap
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from harness.core.vocab import CATEGORY_COLORS

DPI = 100
# Only what the figures depend on is pinned, so a user's matplotlibrc cannot change the output.
STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "hatch.linewidth": 0.6,
    "path.simplify": True,
    "image.interpolation": "antialiased",
}
# PNG text chunks matplotlib would otherwise fill with its version ("Software"); None drops the chunk.
PNG_METADATA = {"Software": None}
# Arm colours: the usual arms get fixed colours, any other arm the next free one in order of appearance.
ARM_COLORS = {"bf16": "#4C72B0", "fp8": "#DD8452"}
EXTRA_COLORS = ("#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974", "#64B5CD")
MISSING_GREY = (0.92, 0.92, 0.92)


@dataclasses.dataclass(frozen=True)
class Interval:
    """A value with an optional interval around it (same unit). `low`/`high` None = draw no whisker."""

    value: float
    low: float | None = None
    high: float | None = None


def arm_colors(arms: Sequence[str]) -> dict[str, str]:
    """Colour per arm: fixed for bf16 / fp8, the rest in order of `arms`."""
    out, extra = {}, iter(EXTRA_COLORS * (1 + len(arms) // len(EXTRA_COLORS)))
    for arm in arms:
        out[arm] = ARM_COLORS.get(arm.lower()) or next(extra)
    return out


def save_png(fig: Figure, path: str | Path) -> Path:
    """Save `fig` as a PNG without version metadata; creates the folder. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=DPI, metadata=PNG_METADATA)
    return path


def _new_figure(width_in: float, height_in: float, **kwargs) -> Figure:
    return Figure(figsize=(width_in, height_in), dpi=DPI, **kwargs)


# ------------------------------------------------------------------------------------------------ bar charts
def _draw_grouped(ax, groups: Sequence[str], series: Mapping[str, Sequence[Interval | None]],
                  colors: Mapping[str, str], *, horizontal: bool, value_labels: bool, fmt: str) -> None:
    """Grouped bars (one bar per series inside each group) with whiskers where an interval is given."""
    n = max(len(series), 1)
    width = 0.8 / n
    for i, (name, values) in enumerate(series.items()):
        pos, val, err_lo, err_hi, has_err = [], [], [], [], []
        for g, item in enumerate(values):
            if item is None or item.value is None or not math.isfinite(item.value):
                continue
            p = g - 0.4 + width * (i + 0.5)
            pos.append(p)
            val.append(item.value)
            ok = item.low is not None and item.high is not None
            has_err.append(ok)
            err_lo.append(max(item.value - item.low, 0.0) if ok else 0.0)
            err_hi.append(max(item.high - item.value, 0.0) if ok else 0.0)
        bar = ax.barh if horizontal else ax.bar
        kw = {"height" if horizontal else "width": width * 0.95}
        bar(pos, val, color=colors[name], label=name, **kw)
        if any(has_err):
            xs = [p for p, e in zip(pos, has_err) if e]
            ys = [v for v, e in zip(val, has_err) if e]
            err = [[lo for lo, e in zip(err_lo, has_err) if e], [hi for hi, e in zip(err_hi, has_err) if e]]
            if horizontal:
                ax.errorbar(ys, xs, xerr=err, fmt="none", ecolor="black", elinewidth=0.9, capsize=2.5)
            else:
                ax.errorbar(xs, ys, yerr=err, fmt="none", ecolor="black", elinewidth=0.9, capsize=2.5)
        if value_labels:  # beside the whisker's end, so the two never overlap
            for p, v, hi in zip(pos, val, err_hi):
                xy = (v + hi, p) if horizontal else (p, v + hi)
                ax.annotate(format(v, fmt), xy, xytext=(3, 0) if horizontal else (0, 3),
                            textcoords="offset points", fontsize=7, va="center" if horizontal else "bottom",
                            ha="left" if horizontal else "center")
    ticks = list(range(len(groups)))
    if horizontal:
        ax.set_yticks(ticks, labels=list(groups))
        ax.invert_yaxis()  # first group on top, as in the tables
    else:
        ax.set_xticks(ticks, labels=list(groups), rotation=35, ha="right", rotation_mode="anchor")


def grouped_bars(path: str | Path, groups: Sequence[str], series: Mapping[str, Sequence[Interval | None]], *,
                 title: str, value_label: str, horizontal: bool = False, value_labels: bool = False,
                 fmt: str = ".2f", note: str | None = None, zero_line: bool = False) -> Path:
    """One grouped bar chart: `groups` along one axis, one bar per series (arm) in each group, with whiskers.

    series: name -> one Interval (or None = no bar) per group, in the order of `groups`. value_label names the
    value axis with its unit. note: a line of small text under the plot (e.g. what the whiskers mean).
    zero_line: draw the value axis' zero (for differences).
    """
    with matplotlib.rc_context(STYLE):
        colors = arm_colors(list(series))
        size = (7.5, max(2.2, 0.11 * len(groups) * max(len(series), 1) + 0.22 * len(groups) + 1.0)) if horizontal \
            else (max(5.0, 0.55 * len(groups) * max(len(series), 1) + 1.5), 3.6)
        fig = _new_figure(*size, layout="constrained")
        ax = fig.add_subplot()
        _draw_grouped(ax, groups, series, colors, horizontal=horizontal, value_labels=value_labels, fmt=fmt)
        if zero_line:
            (ax.axvline if horizontal else ax.axhline)(0, color="#666666", linewidth=0.8)
        if value_labels:  # room for the labels beyond the longest bar
            ax.margins(**{"x" if horizontal else "y": 0.12})
        (ax.set_xlabel if horizontal else ax.set_ylabel)(value_label)
        ax.set_title(title)
        ax.legend(loc="best", frameon=False)
        if note:
            fig.text(0.01, 0.0, note, fontsize=7, ha="left", va="bottom", color="#444444")
            fig.get_layout_engine().set(h_pad=0.15)
        return save_png(fig, path)


def metric_panels(path: str | Path, groups: Sequence[str],
                  panels: Mapping[str, Mapping[str, Sequence[Interval | None]]], *, title: str, value_label: str,
                  ylim: tuple[float, float] | None = None, note: str | None = None) -> Path:
    """Several grouped bar charts stacked vertically (one per metric, e.g. Q_SC, Q_PQ, Q_O), sharing `groups`.

    panels: metric name -> {series name -> one Interval or None per group}.
    """
    with matplotlib.rc_context(STYLE):
        names: list[str] = []
        for series in panels.values():
            names += [s for s in series if s not in names]
        colors = arm_colors(names)
        width = max(6.0, 0.5 * len(groups) * max(len(names), 1) + 1.5)
        fig = _new_figure(width, 2.5 * len(panels) + 1.0, layout="constrained")
        axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
        for ax, (metric, series) in zip(axes, panels.items()):
            _draw_grouped(ax, groups, series, colors, horizontal=False, value_labels=False, fmt=".2f")
            ax.set_ylabel(f"{metric} ({value_label})")
            if ylim:
                ax.set_ylim(*ylim)
            ax.axhline(0, color="black", linewidth=0.6)
        axes[0].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        fig.suptitle(title)
        if note:
            fig.supxlabel(note, fontsize=7, color="#444444")
        return save_png(fig, path)


def scatter_panels(path: str | Path, x: Mapping[str, float],
                   panels: Mapping[str, Mapping[str, Interval | None]], *, title: str, x_label: str,
                   note: str | None = None) -> Path:
    """Panels side by side sharing x: one labelled point per arm (x[arm], panel value) with a vertical whisker
    where the Interval has one; e.g. a speed-quality trade-off. panels: y label -> {arm -> Interval or None}."""
    with matplotlib.rc_context(STYLE):
        colors = arm_colors(list(x))
        fig = _new_figure(5.0 * len(panels) + 1.0, 4.0, layout="constrained")
        axes = fig.subplots(1, len(panels), sharex=True, squeeze=False)[0]
        for ax, (label, values) in zip(axes, panels.items()):
            for arm, point in values.items():
                if point is None or arm not in x or not math.isfinite(point.value):
                    continue
                ok = point.low is not None and point.high is not None
                err = [[point.value - point.low], [point.high - point.value]] if ok else None
                ax.errorbar([x[arm]], [point.value], yerr=err, fmt="o", color=colors[arm], ecolor="black",
                            elinewidth=0.9, capsize=2.5, label=arm)
                ax.annotate(arm, (x[arm], point.value), xytext=(4, 4), textcoords="offset points", fontsize=7)
            ax.set_xlabel(x_label)
            ax.set_ylabel(label)
        axes[0].axhline(0, color="black", linewidth=0.6)
        fig.suptitle(title)
        if note:
            fig.supxlabel(note, fontsize=7, color="#444444")
        return save_png(fig, path)


def stacked_bars(path: str | Path, bars: Sequence[str], stacks: Mapping[str, Mapping[str, float]], *,
                 title: str, value_label: str, colors: Mapping[str, str] | None = None,
                 note: str | None = None) -> Path:
    """Horizontal stacked bars: one bar per entry of `bars`, split into the parts of `stacks[bar]`.

    The parts are drawn in the order of their first appearance; colours from `colors` (default: kernel
    categories). Each bar is labelled with its total.
    """
    with matplotlib.rc_context(STYLE):
        colors = dict(colors or CATEGORY_COLORS)
        seen: list[str] = []
        for bar in bars:
            seen += [p for p in stacks.get(bar, {}) if p not in seen]
        # Known parts (kernel categories) in their fixed order, so every report stacks them alike.
        parts = [p for p in colors if p in seen] + [p for p in seen if p not in colors]
        spare = iter(EXTRA_COLORS * (1 + len(parts)))
        fig = _new_figure(7.5, 0.55 * len(bars) + 1.9, layout="constrained")
        ax = fig.add_subplot()
        left = [0.0] * len(bars)
        for part in parts:
            widths = [float(stacks.get(bar, {}).get(part, 0.0) or 0.0) for bar in bars]
            color = colors.get(part) or colors.setdefault(part, next(spare))
            ax.barh(range(len(bars)), widths, left=left, color=color, label=part, height=0.6)
            left = [lft + w for lft, w in zip(left, widths)]
        for i, total in enumerate(left):
            ax.text(total, i, f" {total:.4g}", va="center", fontsize=7)
        ax.set_yticks(range(len(bars)), labels=list(bars))
        ax.invert_yaxis()
        ax.set_xlabel(value_label)
        ax.set_xlim(0, max(left + [1e-9]) * 1.15)
        ax.set_title(title)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25 if len(bars) < 3 else -0.12),
                  ncol=min(len(parts), 4), frameon=False)
        if note:
            fig.supxlabel(note, fontsize=7, color="#444444")
        return save_png(fig, path)


# ------------------------------------------------------------------------------------------------ image grids
@dataclasses.dataclass
class GridRow:
    """One row of an image grid: a title, a caption (e.g. the instruction) and one image per column.

    images: PIL images, or None for a missing one. A caption the figure font cannot draw (CJK here) is replaced
    by `caption_fallback`, so the reader is sent to the report text instead of seeing boxes.
    """

    title: str
    images: list
    caption: str = ""
    caption_fallback: str = "(instruction in the table below the figure)"

    def text(self) -> str:
        caption = self.caption if can_render(self.caption) else self.caption_fallback
        return f"{self.title}: {caption}" if caption else self.title


@lru_cache(maxsize=1)
def _font_charmap() -> frozenset[int]:
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    path = font_manager.findfont(font_manager.FontProperties(family=STYLE["font.family"]), fallback_to_default=True)
    return frozenset(FT2Font(path).get_charmap())


def can_render(text: str) -> bool:
    """True when the figure font has a glyph for every character of `text` (CJK usually has none here)."""
    charmap = _font_charmap()
    return all(ord(c) in charmap or c in "\n\t" for c in text)


def _ascii_only(text: str) -> str:
    # Characters the font lacks would print as boxes; the report text carries the full instruction instead.
    return "".join(c if ord(c) < 128 else "?" for c in text)


def image_grid(path: str | Path, rows: Sequence[GridRow], column_titles: Sequence[str], *, thumb_px: int = 192,
               wrap: int = 70) -> Path:
    """Rows of side-by-side images (e.g. source | BF16 | FP8), each row under its wrapped title line.

    Images are shrunk (aspect kept, Lanczos) to fit thumb_px x thumb_px; a None image is drawn as a grey
    "missing" tile. Titles the figure font cannot draw are replaced by a pointer to the report text.
    """
    from PIL import Image

    ncols = len(column_titles)
    with matplotlib.rc_context(STYLE):
        tile_in = thumb_px / DPI
        titles = [textwrap.fill(_ascii_only(r.text()) if not can_render(r.text()) else r.text(), wrap) for r in rows]
        title_in = [0.1 + 0.15 * (t.count("\n") + 1) for t in titles]
        heights = [t + 0.22 + tile_in + 0.06 for t in title_in]
        fig = _new_figure(ncols * (tile_in + 0.08) + 0.12, sum(heights))
        subfigs = fig.subfigures(len(rows), 1, height_ratios=heights, squeeze=False)[:, 0]
        for sub, row, title, t_in, h_in in zip(subfigs, rows, titles, title_in, heights):
            sub.suptitle(title, fontsize=8, x=0.01, ha="left", y=1.0 - 0.04 / h_in, va="top")
            axes = sub.subplots(1, ncols, squeeze=False)[0]
            sub.subplots_adjust(left=0.01, right=0.99, bottom=0.04 / h_in, top=1.0 - (t_in + 0.2) / h_in,
                                wspace=0.04)
            for ax, col, image in zip(axes, column_titles, row.images):
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                ax.set_title(col, fontsize=8, pad=2)
                if image is None:
                    ax.imshow([[MISSING_GREY]], aspect="equal")
                    ax.text(0, 0, "missing", ha="center", va="center", fontsize=8, color="#666666")
                    continue
                thumb = image.convert("RGB").copy()
                thumb.thumbnail((thumb_px, thumb_px), Image.Resampling.LANCZOS)
                ax.imshow(thumb, interpolation="none")
        return save_png(fig, path)
