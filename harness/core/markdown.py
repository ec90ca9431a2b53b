"""Markdown building blocks shared by every renderer: number formats, table cells, tables, inline code.

Missing values (None, NaN) always print as "-"; cells are escaped so a kernel name with a `|` cannot break a table.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

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
