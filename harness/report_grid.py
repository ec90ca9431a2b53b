"""The report's image grids: source image and each arm's edit of chosen GEdit samples, side by side.

The edits are read from the run folder; the source images only exist in the dataset, so this module (alone in the
report) reads the GEdit-Bench copy the run recorded (or --dataset) through harness.gedit.data.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image

from harness.core import plots
from harness.core.markdown import Document, cell, code, fmt, table
from harness.gedit.data import DatasetError, load_gedit_dataset
from harness.gedit.run_folder import find_edit
from harness.report_gedit import GeditRun

GRID_ROWS_PER_FIGURE = 6


def grid_selection(samples: Sequence[dict], language: str, limit: int) -> list[dict]:
    """Samples for the image grid: round-robin over task groups (sorted), by key within a group, `limit` rows."""
    groups: dict[str, list[dict]] = {}
    for s in sorted((s for s in samples if s["language"] == language), key=lambda s: (s["task_type"], s["key"])):
        groups.setdefault(s["task_type"], []).append(s)
    chosen, depth = [], 0
    while len(chosen) < limit and any(len(g) > depth for g in groups.values()):
        for task in sorted(groups):
            if len(groups[task]) > depth and len(chosen) < limit:
                chosen.append(groups[task][depth])
        depth += 1
    return chosen


class SourceImages:
    """Source images of GEdit samples, read from the dataset a gedit run recorded (loaded on first use)."""

    def __init__(self, run: GeditRun, override: str | None):
        self.run, self.override = run, override
        self._rows: dict | None = None
        self._ds = None
        self.problem: str | None = None

    def location(self) -> str:
        """The dataset the run used; a copy inside a moved run folder is found under the folder's new path."""
        if self.override:
            return self.override
        recorded = str(self.run.summary.get("dataset") or "")
        root = self.run.summary.get("edits_root")
        if recorded and not Path(recorded).exists() and root:
            try:
                moved = self.run.path / Path(recorded).relative_to(root)
            except ValueError:
                return recorded
            return str(moved) if moved.exists() else recorded
        return recorded

    def get(self, sample: dict):
        if self._rows is None:
            self._load()
        row = (self._rows or {}).get((sample["key"], sample["language"]))
        if row is None:
            return None
        return self._ds[row]["input_image"].convert("RGB")

    def _load(self) -> None:
        self._rows = {}
        where = self.location()
        if not where:
            self.problem = "summary.json names no dataset; pass --dataset"
            return
        recorded = (self.run.summary.get("task") or {}).get("dataset") or {}
        revision, split = recorded.get("revision"), recorded.get("split") or "train"
        try:
            self._ds = load_gedit_dataset(where, revision=revision, split=split)
        except DatasetError as err:
            self.problem = f"source images unavailable ({err}); pass --dataset with a local copy"
            return
        cols = self._ds.select_columns(["key", "instruction_language"]).to_pandas()
        self._rows = {(k, lang): i for i, (k, lang) in enumerate(zip(cols["key"], cols["instruction_language"]))}


def _edit_image(run: GeditRun, arm: str, sample: dict) -> Image.Image | None:
    for root in (run.path, Path(run.summary.get("edits_root") or run.path)):
        path = find_edit(root, arm, sample)  # <key>.png, or any suffix for edits made elsewhere
        if path is not None:
            with Image.open(path) as im:
                return im.convert("RGB")
    return None


def image_grids(report: Document, run: GeditRun, tag: str, *, dataset: str | None, limit: int) -> None:
    """One grid per language of the run (none when limit is 0)."""
    if limit > 0:
        for lang in run.languages:
            image_grid(report, run, lang, tag, dataset=dataset, limit=limit)


def image_grid(report: Document, run: GeditRun, lang: str, tag: str, *, dataset: str | None, limit: int) -> None:
    """Source | each arm's edit, one row per chosen sample, as PNG figures, with a table of instructions and Q_O."""
    chosen = grid_selection(run.samples, lang, limit)
    if not chosen:
        return
    arms = run.summary.get("arms", [])
    sources = SourceImages(run, dataset)
    scores = {}
    if run.scores is not None:
        for r in run.scores.itertuples():
            scores[(r.arm, r.task_type, r.language, r.key)] = r
    report.add(f"### Sample edits ({lang})", "",
               f"Source | {' | '.join(arms)}, one row per sample (one per task group in turn, by key). "
               "The instruction of each row is in the table under the figure.", "")
    rows = []
    for i, s in enumerate(chosen, 1):
        images = [sources.get(s), *(_edit_image(run, a, s) for a in arms)]
        rows.append(plots.GridRow(title=f"#{i} {s['task_type']} ({lang})", images=images,
                                  caption=s.get("instruction", "")))
    for part, start in enumerate(range(0, len(rows), GRID_ROWS_PER_FIGURE), 1):
        # A figure may be looked at alone: say on it that the edits come from random weights.
        columns = ["source", *(f"{a} (random weights)" if run.synthetic else a for a in arms)]
        path = plots.image_grid(report.figure_path(f"{tag}_{lang}_grid{part}.png"),
                                rows[start:start + GRID_ROWS_PER_FIGURE], columns)
        report.image(path, f"sample edits ({lang}) part {part}")
    if sources.problem:
        report.add(f"Source column: {sources.problem}.", "")
    table_rows = []
    for i, s in enumerate(chosen, 1):
        cells = []
        for a in arms:
            r = scores.get((a, s["task_type"], s["language"], s["key"]))
            cells.append(fmt(r.Q_O) if r is not None and r.status == "ok" else (r.status if r is not None else "-"))
        table_rows.append([i, s["task_type"], code(s["key"], 12), cell(s.get("instruction", "")), *cells])
    report.add(*table(["#", "task", "key", "instruction", *(f"Q_O {a}" for a in arms)], table_rows,
                      align=["r", "l", "l", "l", *["r"] * len(arms)]))

