"""The GEdit task schema (`GeditTaskConfig`, one YAML under tasks/gedit/) and how flags and --synthetic change it.

Settings come from the task file; `resolve_task` applies the --synthetic defaults (only where no flag is given)
and then the flags, and returns the change log (field, old, new, source) that the run records.
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
from pathlib import Path
from typing import Any

from harness.core.tasks import TASKS_ROOT, TaskError, apply_overrides, build_dataclass, load_task
from harness.gedit.judge_prompts import PROJECT_RUBRIC
from harness.gedit.protocol import DEFAULT_PROTOCOL, OFFICIAL_MAX_RETRIES, OFFICIAL_PROMPT_SET, PROTOCOLS

log = logging.getLogger("harness.gedit")

DEFAULT_TASK = "gedit-en-full"
# Synthetic runs judge noise, so they skip the official prompt download and use the project rubric by default.
# The tiny judge answers one token: its "[a, b]" words repeat, and a run of pairs is no answer the official rules read.
SYNTHETIC_TINY_SETTINGS = {"generation.steps": 2, "generation.resolution": 64, "judge.max_new_tokens": 1,
                           "judge.prompt_set": PROJECT_RUBRIC.name}
SYNTHETIC_FULL_SETTINGS = {"selection.per_task": 1, "judge.max_retries": 0, "judge.prompt_set": PROJECT_RUBRIC.name}

GEDIT_TASK_GROUPS = ("background_change", "color_alter", "material_alter", "motion_change", "ps_human",
                     "style_change", "subject-add", "subject-remove", "subject-replace", "text_change",
                     "tone_transfer")
GEDIT_LANGUAGES = ("en", "cn")


# --------------------------------------------------------------------------------------------------- GEdit schema
@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    id: str = "stepfun-ai/GEdit-Bench"
    revision: str = "main"
    split: str = "train"


@dataclasses.dataclass(frozen=True)
class SelectionSpec:
    languages: list[str] = dataclasses.field(default_factory=lambda: ["en"])
    task_groups: list[str] = dataclasses.field(default_factory=lambda: list(GEDIT_TASK_GROUPS))
    per_task: int | None = None
    intersection: bool = False
    selection_seed: int = 0


@dataclasses.dataclass(frozen=True)
class GenerationSpec:
    model: str = "OmniGen2/OmniGen2"
    seed: int = 42
    steps: int = 50
    resolution: int | None = None
    text_guidance_scale: float = 5.0
    image_guidance_scale: float = 1.5
    time_shift: float | None = 3.0
    negative_prompt: str = ""


@dataclasses.dataclass(frozen=True)
class JudgeSpec:
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    prompt_set: str = OFFICIAL_PROMPT_SET  # the official VIEScore templates; "project-rubric" is not comparable
    protocol: str = DEFAULT_PROTOCOL        # harness.gedit.protocol.PROTOCOLS
    max_new_tokens: int = 512
    max_retries: int = OFFICIAL_MAX_RETRIES  # upstream never re-asks with sampling; > 0 makes a run non-comparable


@dataclasses.dataclass(frozen=True)
class AggregationSpec:
    weight_by_size: bool = False


@dataclasses.dataclass(frozen=True)
class GeditTaskConfig:
    """One GEdit-Bench run definition: which rows, how to edit them, how to judge and aggregate."""

    task: str
    metadata: dict = dataclasses.field(default_factory=dict)
    dataset: DatasetSpec = DatasetSpec()
    selection: SelectionSpec = SelectionSpec()
    generation: GenerationSpec = GenerationSpec()
    judge: JudgeSpec = JudgeSpec()
    aggregation: AggregationSpec = AggregationSpec()

    def __post_init__(self) -> None:
        bad_lang = [x for x in self.selection.languages if x not in GEDIT_LANGUAGES]
        if bad_lang or not self.selection.languages:
            raise TaskError(f"{self.task}: selection.languages {self.selection.languages} must be a non-empty "
                            f"subset of {list(GEDIT_LANGUAGES)}")
        bad_groups = [g for g in self.selection.task_groups if g not in GEDIT_TASK_GROUPS]
        if bad_groups or not self.selection.task_groups:
            close = difflib.get_close_matches(bad_groups[0], GEDIT_TASK_GROUPS, n=1) if bad_groups else []
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise TaskError(f"{self.task}: unknown task group(s) {bad_groups}.{hint} "
                            f"Known groups: {', '.join(GEDIT_TASK_GROUPS)}")
        if self.selection.per_task is not None and self.selection.per_task < 1:
            raise TaskError(f"{self.task}: selection.per_task must be >= 1 or null (all), got {self.selection.per_task}")
        if self.judge.max_new_tokens < 1 or self.judge.max_retries < 0:
            raise TaskError(f"{self.task}: judge.max_new_tokens must be >= 1 (got {self.judge.max_new_tokens}) and "
                            f"judge.max_retries >= 0 (got {self.judge.max_retries})")
        if self.generation.steps < 1:
            raise TaskError(f"{self.task}: generation.steps must be >= 1, got {self.generation.steps}")
        if self.generation.resolution is not None and (self.generation.resolution < 16 or self.generation.resolution % 16):
            raise TaskError(f"{self.task}: generation.resolution must be a multiple of 16 (>= 16) or null, "
                            f"got {self.generation.resolution}")
        if self.judge.protocol not in PROTOCOLS:
            raise TaskError(f"{self.task}: judge.protocol {self.judge.protocol!r} is not one of {sorted(PROTOCOLS)}")
        if self.judge.max_retries < 0 or self.judge.max_new_tokens < 1:
            raise TaskError(f"{self.task}: judge.max_retries must be >= 0 and judge.max_new_tokens >= 1")
        if self.aggregation.weight_by_size:
            raise TaskError(f"{self.task}: aggregation.weight_by_size: true is not supported; GEdit-Bench's headline "
                            "is the unweighted mean of task groups (the per-sample mean is reported beside it)")

    @classmethod
    def from_dict(cls, data: dict) -> "GeditTaskConfig":
        data = {k: v for k, v in data.items() if not k.startswith("_")}
        where = data.get("task", "task")
        return build_dataclass(cls, data, str(where))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_gedit_task(name_or_path: str | Path, root: str | Path = TASKS_ROOT) -> GeditTaskConfig:
    """Load and validate a GEdit task by registry name or YAML path."""
    return GeditTaskConfig.from_dict(load_task(name_or_path, "gedit", root))


def write_gedit_group_tasks(folder: str | Path = TASKS_ROOT / "gedit" / "groups") -> list[Path]:
    """Write one task file per task group and language (`gedit-<lang>-<group>.yaml`, all its samples), each
    including the GEdit template; returns the paths. Rerun after changing GEDIT_TASK_GROUPS."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for lang in GEDIT_LANGUAGES:
        for group in GEDIT_TASK_GROUPS:
            path = folder / f"gedit-{lang}-{group}.yaml"
            path.write_text(f"# Generated by `python -m harness.tasks generate-gedit-groups`; do not edit by hand.\n"
                            f"task: gedit-{lang}-{group}\ninclude: ../_template.yaml\nmetadata:\n"
                            f"  description: GEdit-Bench task group {group}, {lang} instructions only.\n"
                            f"selection:\n  languages: [{lang}]\n  task_groups: [{group}]\n", encoding="utf-8")
            paths.append(path)
    return paths


def unique(values: list, what: str) -> list:
    """`values` without repeats (first occurrence kept); a note is logged when there were any."""
    kept = list(dict.fromkeys(values))
    if len(kept) < len(values):
        log.warning("%s %s repeat names; each is done once: %s", what, values, kept)
    return kept


def dedupe_lists(flags: dict[str, Any]) -> dict[str, Any]:
    """Flags whose list values name things to do (task groups, languages) without repeats."""
    return {k: unique(v, f"--{k.split('.')[-1].replace('_', '-')}") if isinstance(v, list) else v
            for k, v in flags.items()}


def resolve_task(task: str | Path, flags: dict[str, Any], synthetic: str | None = None
                 ) -> tuple[GeditTaskConfig, list[dict]]:
    """Task file + --synthetic defaults + flags -> (config, change log); every change is logged old -> new.

    flags: dotted task fields -> flag values (None = flag not given); synthetic: "tiny", "full" or None.
    """
    config = load_gedit_task(task)
    changes: list[dict] = []
    if synthetic:
        auto = dict(SYNTHETIC_TINY_SETTINGS if synthetic == "tiny" else SYNTHETIC_FULL_SETTINGS)
        config, auto_changes = apply_overrides(config, {k: v for k, v in auto.items() if flags.get(k) is None})
        changes += [{**c, "source": f"--synthetic {synthetic} default"} for c in auto_changes]
    config, flag_changes = apply_overrides(config, dedupe_lists(flags))
    changes += [{**c, "source": "flag"} for c in flag_changes]
    for c in changes:
        log.info("override %s: %r -> %r (%s)", c["field"], c["old"], c["new"], c["source"])
    return config, changes
