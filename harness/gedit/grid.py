"""Image grids of a GEdit run: the source image and each arm's edit of chosen samples, side by side.

The edits are read from the run folder; the source images only exist in the dataset, so the grids are drawn only
where the caller names a GEdit-Bench copy to read (the report: the one the run recorded, or --dataset). summary.md
has no figures and no grids.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image

from harness.core import plots
from harness.core.markdown import Chart, Section, cell, code, fmt, table
from harness.core.vocab import OVERALL_METRIC
from harness.gedit.data import DatasetError, load_gedit_dataset
from harness.gedit.record import GeditRun
from harness.gedit.run_folder import find_edit

GRID_ROWS_PER_FIGURE = 6
KEY_WIDTH = 12  # characters of a sample key shown in a table
CAPTION_FALLBACK = "(instruction in the table above the figure)"  # for captions the figure font cannot draw


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
        self._problem: str | None = None

    def location(self) -> str:
        """The dataset the run used; a copy inside a moved run folder is found under the folder's new path."""
        if self.override:
            return self.override
        recorded, root = self.run.summary.dataset, self.run.summary.edits_root
        if recorded and not Path(recorded).exists() and root:
            try:
                moved = self.run.path / Path(recorded).relative_to(root)
            except ValueError:
                return recorded
            return str(moved) if moved.exists() else recorded
        return recorded

    @property
    def problem(self) -> str | None:
        """Why the source images cannot be read (None when they can); loads the dataset."""
        if self._rows is None:
            self._load()
        return self._problem

    def get(self, sample: dict) -> Image.Image | None:
        if self._rows is None:
            self._load()
        row = (self._rows or {}).get((sample["key"], sample["language"]))
        return None if row is None else self._ds[row]["input_image"].convert("RGB")

    def _load(self) -> None:
        self._rows = {}
        where = self.location()
        if not where:
            self._problem = "summary.json names no dataset; pass --dataset"
            return
        recorded = self.run.summary.task.dataset
        try:
            self._ds = load_gedit_dataset(where, revision=recorded.revision, split=recorded.split or "train")
        except DatasetError as err:
            self._problem = f"source images unavailable ({err}); pass --dataset with a local copy"
            return
        cols = self._ds.select_columns(["key", "instruction_language"]).to_pandas()
        self._rows = {(k, lang): i for i, (k, lang) in enumerate(zip(cols["key"], cols["instruction_language"]))}


def edit_image(run: GeditRun, arm: str, sample: dict) -> Image.Image | None:
    """The arm's edit of `sample` from the run folder (or the edits root it recorded); None when absent."""
    for root in (run.path, Path(run.summary.edits_root or run.path)):
        path = find_edit(root, arm, sample)  # <key>.png, or any suffix for edits made elsewhere
        if path is not None:
            with Image.open(path) as im:
                return im.convert("RGB")
    return None


def grid_sections(run: GeditRun, *, dataset: str | None, limit: int) -> list[Section]:
    """One section per language of the run (none when limit is 0): a table of the chosen samples (instruction and
    Q_O per arm) and the grid figures, `GRID_ROWS_PER_FIGURE` rows each."""
    if limit <= 0:
        return []
    sources = SourceImages(run, dataset)
    return [s for lang in run.languages if (s := grid_section(run, lang, sources, limit)) is not None]


def grid_section(run: GeditRun, lang: str, sources: SourceImages, limit: int) -> Section | None:
    chosen = grid_selection(run.samples, lang, limit)
    if not chosen:
        return None
    arms = run.summary.arms
    lines = [f"Source | {' | '.join(arms)}, one row per sample (one per task group in turn, by key); the "
             "instruction of each row is in the table.", ""]
    if sources.problem:
        lines += [f"Source column: {sources.problem}.", ""]
    scores = {}
    if run.scores is not None:
        scores = {(r.arm, r.task_type, r.language, r.key): r for r in run.scores.itertuples()}
    rows = []
    for i, s in enumerate(chosen, 1):
        cells = []
        for a in arms:
            r = scores.get((a, s["task_type"], s["language"], s["key"]))
            cells.append(fmt(getattr(r, OVERALL_METRIC)) if r is not None and r.status == "ok"
                         else (r.status if r is not None else "-"))
        rows.append([i, s["task_type"], code(s["key"], KEY_WIDTH), cell(s.get("instruction", "")), *cells])
    lines += table(["#", "task", "key", "instruction", *(f"{OVERALL_METRIC} {a}" for a in arms)], rows,
                   align=["r", "l", "l", "l", *["r"] * len(arms)])
    # A figure may be looked at alone: say on it that the edits come from random weights.
    columns = ["source", *(f"{a} (random weights)" if run.synthetic else a for a in arms)]
    charts = tuple(
        Chart(f"{lang}_grid{part}", f"sample edits ({lang}) part {part}",
              lambda path, start=start: plots.image_grid(path, _grid_rows(run, chosen, start, sources, lang), columns))
        for part, start in enumerate(range(0, len(chosen), GRID_ROWS_PER_FIGURE), 1))
    return Section(f"Sample edits ({lang})", lines, charts[0], more_charts=charts[1:])


def _grid_rows(run: GeditRun, chosen: list[dict], start: int, sources: SourceImages, lang: str) -> list[plots.GridRow]:
    """The figure rows of chosen[start:start + GRID_ROWS_PER_FIGURE], numbered as in the table."""
    return [plots.GridRow(title=f"#{i} {s['task_type']} ({lang})",
                          images=[sources.get(s), *(edit_image(run, a, s) for a in run.summary.arms)],
                          caption=s.get("instruction", ""), caption_fallback=CAPTION_FALLBACK)
            for i, s in enumerate(chosen[start:start + GRID_ROWS_PER_FIGURE], start + 1)]
