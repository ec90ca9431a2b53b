"""summary.json as a typed record: `GeditSummary` is what the score stage writes and what readers get back.

`to_json()` gives the dict written to summary.json (keys in the order shown); `GeditSummary.from_json(path)` checks
`schema_version` and validates every field, naming the one that is missing or has the wrong type. Tables whose
columns belong to the scoring code (headline, per-task rows, paired deltas, fidelity) stay lists of row dicts.
`GeditRun` is a finished run folder as its readers (summary.md, the report) see it: the summary and the per-sample
files beside it.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd

from harness.core.tasks import TaskError, build_dataclass
from harness.gedit.config import GeditTaskConfig
from harness.gedit.protocol import Protocol
from harness.gedit.run_folder import SELECTION, SUMMARY_JSON

SCHEMA_VERSION = 2  # 2: Q_SC/Q_PQ/Q_O names, comparability, protocol, the Intersection block


class RecordError(ValueError):
    """A summary.json that cannot be read as this code's GeditSummary; the message says which field and the fix."""


@dataclasses.dataclass(frozen=True)
class JudgeIdentity:
    """What makes judgements comparable: the judge model, the exact prompts (by hash) and the protocol."""

    model: str
    prompt_set: str
    prompt_sha256: str
    protocol: str
    weights: str | None = None  # which weights the judge holds (a hash or hub commit), wherever its folder lies


@dataclasses.dataclass(frozen=True)
class Comparability:
    """Whether the scores can stand beside published GEdit-Bench numbers; `headline` is the first line of every
    output when they cannot ("" when they can)."""

    comparable: bool
    problems: list[str]
    headline: str


@dataclasses.dataclass(frozen=True)
class ScoreBlock:
    """One of upstream's blocks (here the Intersection): headline rows per (arm, language) and per-task rows."""

    headline: list[dict]
    per_task: list[dict]


@dataclasses.dataclass(frozen=True)
class GenerationThroughput:
    """Per arm, from generation.jsonl: seconds per edit (whole pipeline call) and peak VRAM in GiB."""

    n_samples: int
    seconds_per_sample_mean: float
    seconds_per_sample_median: float
    seconds_per_sample_after_first: float | None
    peak_vram_gib_max: float | None
    steps: int | None
    output_size: list[int] | None


@dataclasses.dataclass(frozen=True)
class JudgeThroughput:
    """From judge_runs.jsonl: seconds per judged sample (2 calls), attempts, decoded tokens, peak VRAM in GiB
    (None for a served judge); batch_size for the in-process judge, concurrency (requests in flight) for a served
    one, whose requests that never succeeded are counted in transport_failures."""

    n_samples: int
    seconds_per_sample: float
    calls_per_sample: int
    attempts_per_call: float
    new_tokens_per_attempt: float
    peak_vram_gib_max: float | None
    batch_size: int | None
    concurrency: int | None = None
    transport_failures: int = 0


@dataclasses.dataclass(frozen=True)
class Throughput:
    generation: dict[str, GenerationThroughput]
    judge: JudgeThroughput | None


@dataclasses.dataclass(frozen=True)
class SummaryFiles:
    """The run's files beside summary.json (names relative to the run folder; fidelity None with one arm)."""

    judgements: str
    scores: str
    tasks: str
    fidelity: str | None
    selection: str
    markdown: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class GeditSummary:
    """One scored GEdit run: what was run, the scores, deltas, fidelity, failures, throughput and provenance."""

    schema_version: int = SCHEMA_VERSION
    synthetic: str | bool  # "tiny" / "full" for random-weight models, False for real ones
    warning: str | None = None  # the synthetic-weights warning (absent from the JSON for real weights)
    comparability: Comparability
    task: GeditTaskConfig
    overrides: list[dict]
    arms: list[str]
    baseline: str
    dataset: str
    model: str
    edits_root: str
    judge: JudgeIdentity
    judge_settings: dict | None
    prompt_set: dict
    protocol: Protocol
    selection: dict
    headline: list[dict]  # the fullset block (upstream's first), per (arm, language)
    per_task: list[dict]
    intersection: ScoreBlock  # the same over the samples whose Intersection_exist is true
    deltas: list[dict]
    fidelity: dict
    judge_failures: dict
    throughput: Throughput
    provenance: dict
    files: SummaryFiles

    def to_json(self) -> dict:
        """The summary.json mapping (JSON types only)."""
        data = dataclasses.asdict(self)
        if data["warning"] is None:
            del data["warning"]
        return data

    @classmethod
    def from_json(cls, path: str | Path) -> "GeditSummary":
        """Read and validate a summary.json written by this code (same schema_version)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise RecordError(f"{path} cannot be read as JSON ({err}); rerun the score stage "
                              f"(python -m harness.gedit --stage score --out {path.parent})") from err
        if not isinstance(data, dict) or not isinstance(data.get("synthetic"), (bool, str)):
            # never let a summary that does not say whether its weights were random be read as real results
            raise RecordError(f"{path} does not record whether its weights were synthetic (written by another tool, "
                              f"or damaged); rewrite it with python -m harness.gedit --stage score --out {path.parent}")
        found = data.get("schema_version")
        if found != SCHEMA_VERSION:
            command = (data.get("provenance") or {}).get("command")
            rerun = f" (it was made by `{command}`)" if command else ""
            raise RecordError(f"{path} has schema_version {found!r} (written by an older harness), this code reads "
                              f"{SCHEMA_VERSION}; rewrite it with python -m harness.gedit --stage score --out "
                              f"{path.parent}, or, where its judgements are that old too (the rewritten summary "
                              f"then says 'not judged'), rerun the whole run with this code{rerun}")
        try:
            return build_dataclass(cls, data, str(path))
        except TaskError as err:
            raise RecordError(str(err)) from err


@dataclasses.dataclass(frozen=True)
class GeditRun:
    """A finished `python -m harness.gedit` folder: summary.json, scores.csv (None before the score stage wrote it)
    and the selected samples of selection.json (dicts with task_type, language, key, instruction)."""

    path: Path
    summary: GeditSummary
    scores: pd.DataFrame | None
    samples: list[dict]

    kind = "gedit"

    @classmethod
    def load(cls, path: str | Path) -> "GeditRun":
        """Read a run folder; RecordError (naming the fix) when its summary.json is not this code's."""
        path = Path(path)
        summary = GeditSummary.from_json(path / SUMMARY_JSON)
        scores_path = path / summary.files.scores
        # keys stay text ("0123" is a key, not a number); an empty failure cell is missing
        scores = (pd.read_csv(scores_path, dtype={"key": str}, keep_default_na=False, na_values=[""])
                  if scores_path.is_file() else None)
        selection = path / (summary.files.selection or SELECTION)
        try:
            samples = json.loads(selection.read_text(encoding="utf-8")).get("samples", []) if selection.is_file() else []
        except json.JSONDecodeError as err:
            raise RecordError(f"{selection} is not valid JSON ({err}); the generate and judge stages rewrite it: "
                              f"rerun the run's command with --out {path} (finished work is not redone)") from err
        return cls(path, summary, scores, samples)

    @property
    def synthetic(self) -> str | bool:
        return self.summary.synthetic

    @property
    def label(self) -> str:
        return f"GEdit {self.summary.task.task} ({self.path.name})"

    @property
    def languages(self) -> list[str]:
        """The languages with a scored (or selected) per-task row, sorted."""
        return sorted({r["language"] for r in self.summary.per_task})
