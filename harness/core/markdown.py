"""Markdown building blocks shared by every renderer: number formats, table cells, tables, inline code, sections
and a document that links its figures.

Missing values (None, NaN) always print as "-"; cells are escaped so a kernel name with a `|` cannot break a table.
A renderer returns `Section`s (title, lines, an optional chart); each output file places them at its own heading
level and decides whether charts are drawn (`render_sections`).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from harness.core.records import write_text_atomic

ELLIPSIS = "..."


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    """A number rounded to `digits` decimals; "-" for missing values."""
    return "-" if is_missing(value) else f"{value:.{digits}f}{suffix}"


def fmt_signed(value: Any, digits: int = 2) -> str:
    """A number with its sign (+0.12 / -0.12); "-" for missing values."""
    return "-" if is_missing(value) else f"{value:+.{digits}f}"


def fmt_ci(ci: Sequence[float] | None, digits: int = 2) -> str:
    """A confidence interval as "[+low, +high]"; "-" when there is none."""
    return "-" if not ci else f"[{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def fmt_stat(stat: dict | None, digits: int = 1, *, flag_spread: bool = True) -> str:
    """A TimingStats dict (ms) as "median [IQR]", with " !" when the run flagged a high spread."""
    if not stat:
        return "-"
    flag = " !" if flag_spread and stat.get("high_spread") else ""
    return f"{stat['median_ms']:.{digits}f} [{stat['iqr_ms']:.{digits}f}]{flag}"


def excludes_zero(ci: Sequence[float] | None) -> bool:
    """True when the interval lies entirely above or below zero."""
    return bool(ci) and (ci[0] > 0 or ci[1] < 0)


def truncate(text: str, width: int) -> str:
    """`text` cut to at most `width` characters, the cut marked with an ellipsis."""
    return text if len(text) <= width else text[: width - len(ELLIPSIS)] + ELLIPSIS


def cell(text: Any) -> str:
    """Text safe inside a markdown table cell (pipes escaped, no line breaks)."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def code(text: str, width: int = 64) -> str:
    """A (shortened) name as inline code, safe inside a table cell."""
    return "`" + truncate(text, width).replace("`", "'").replace("|", "\\|") + "`"


def escape_emphasis(text: Any) -> str:
    """Text whose `*` and `_` print as themselves (task names inside bold text)."""
    return str(text).replace("*", "\\*").replace("_", "\\_")


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: Sequence[str] | None = None) -> list[str]:
    """GitHub markdown table lines and a blank line; align per column: "l" or "r" (default: first left, rest right)."""
    align = align or ["l"] + ["r"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def heading(level: int, title: str) -> str:
    """A markdown heading line ("## title" for level 2)."""
    return "#" * level + " " + title


# ------------------------------------------------------------------------------------------------------ sections
@dataclass(frozen=True)
class Chart:
    """A figure belonging to a section: `draw(path)` writes the PNG at `path` and returns it."""

    name: str          # file-name part, e.g. "latency" -> <tag>_latency.png
    alt: str
    draw: Callable[[Path], Path]


@dataclass(frozen=True)
class Section:
    """A titled block of markdown lines, its chart (drawn after the lines, if the output draws charts).

    depth: 1 for a subsection of the section before it (one heading level deeper).
    more_charts: further figures of the section, drawn after `chart` (an image grid cut into parts).
    """

    title: str
    lines: list[str]
    chart: Chart | None = None
    depth: int = 0
    more_charts: tuple[Chart, ...] = ()

    @property
    def charts(self) -> tuple[Chart, ...]:
        return ((self.chart,) if self.chart is not None else ()) + self.more_charts


def render_sections(sections: Sequence[Section], level: int,
                    draw: Callable[[Chart], list[str]] | None = None) -> list[str]:
    """Sections as markdown lines under `level` (+ their depth) headings; `draw(chart)` returns the lines that link
    its figure (None: no figures, as in profile.md and summary.md)."""
    lines: list[str] = []
    for section in sections:
        lines += [heading(level + section.depth, section.title), "", *section.lines]
        for chart in section.charts if draw is not None else ():
            lines += draw(chart)
    return lines


def manifest_lines(manifest: dict) -> list[str]:
    """A run manifest (harness.core.records.run_manifest) as bullets: command, git revision and date, device and
    versions, packages."""
    dev = manifest.get("device") or {}
    packages = ", ".join(f"{k} {v}" for k, v in sorted((manifest.get("packages") or {}).items()))
    return [f"- command: `{manifest.get('command')}`",
            f"- git revision: `{manifest.get('git_revision')}`; date {manifest.get('date_utc')}",
            f"- device: {dev.get('device_name')} ({dev.get('device')}, compute capability "
            f"{dev.get('compute_capability', '-')}, {dev.get('total_memory_gib', '-')} GiB, driver "
            f"{dev.get('driver', '-')}); torch {dev.get('torch')}, CUDA {dev.get('cuda_runtime')}, "
            f"Python {dev.get('python')}",
            f"- packages: {packages}"]


@dataclass
class Document:
    """Markdown lines and the figures written so far, for one output file; figures go to `<stem>_files/`."""

    out: Path
    lines: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)

    @property
    def figure_dir(self) -> Path:
        return self.out.parent / f"{self.out.stem}_files"

    def figure_path(self, name: str) -> Path:
        return self.figure_dir / name

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def link(self, path: Path, alt: str) -> list[str]:
        """Record a figure already written at `path`; the lines that show it (relative link: renders on GitHub)."""
        self.figures.append(path)
        rel = os.path.relpath(path, self.out.parent).replace(os.sep, "/")
        return [f"![{alt}]({rel})", ""]

    def image(self, path: Path, alt: str) -> None:
        self.add(*self.link(path, alt))

    def chart_drawer(self, tag: str) -> Callable[[Chart], list[str]]:
        """A `draw` for render_sections: each chart becomes `<tag>_<name>.png` beside the document, linked here."""
        return lambda chart: self.link(chart.draw(self.figure_path(f"{tag}_{chart.name}.png")), chart.alt)

    def write(self) -> Path:
        """Write the markdown atomically and return its path; PNGs left in the figure folder by an earlier build
        and not written by this one are removed."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        written = {p.resolve() for p in self.figures}
        if self.figure_dir.is_dir():
            for stale in self.figure_dir.glob("*.png"):
                if stale.resolve() not in written:
                    stale.unlink()
        write_text_atomic(self.out, "\n".join(self.lines).rstrip("\n") + "\n")
        return self.out
