"""Declarative task files: discovery by name, `include:` templates, validation into dataclasses, overrides.

A task is one YAML file under `tasks/<kind>/` (kind = "gedit", "profile", ...). Files whose name starts with
"_" are templates: they are never listed, only included. The generic part (`load_task_file`, `discover_tasks`,
`find_task`, `build_dataclass`, `apply_overrides`) knows nothing about GEdit; `GeditTaskConfig` is the GEdit schema.

    python -m harness.tasks ls [KIND]          # names and descriptions
    python -m harness.tasks validate [NAME ..] # load and validate (all tasks when no name is given)
    python -m harness.tasks show NAME          # the effective config after includes
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from harness.core.records import REPO_ROOT
from harness.gedit_protocol import PROTOCOLS

TASKS_ROOT = REPO_ROOT / "tasks"

GEDIT_TASK_GROUPS = ("background_change", "color_alter", "material_alter", "motion_change", "ps_human",
                     "style_change", "subject-add", "subject-remove", "subject-replace", "text_change",
                     "tone_transfer")
GEDIT_LANGUAGES = ("en", "cn")


class TaskError(ValueError):
    """A task file that cannot be found, read or validated; the message says what to change."""


# ----------------------------------------------------------------------------------------------- files + includes
def load_task_file(path: str | Path) -> dict:
    """Read one task YAML and resolve its `include:` chain (paths relative to the including file).

    The included file is the base; keys of the including file win, nested mappings are merged key by key.
    Returns the merged mapping without the `include` key, plus `_source` (the file's absolute path).
    """
    return {**_load_with_includes(Path(path).resolve(), ()), "_source": str(Path(path).resolve())}


def _load_with_includes(path: Path, chain: tuple[Path, ...]) -> dict:
    if path in chain:
        cycle = " -> ".join(p.name for p in (*chain, path))
        raise TaskError(f"include cycle: {cycle}; remove one of these `include:` lines")
    if not path.is_file():
        where = f" (included from {chain[-1]})" if chain else ""
        raise TaskError(f"task file not found: {path}{where}; check the path or the `include:` value")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise TaskError(f"{path} is not valid YAML: {err}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TaskError(f"{path} must hold a YAML mapping at the top level, found {type(data).__name__}")
    includes = data.pop("include", None)
    if includes is None:
        return data
    merged: dict = {}
    for inc in [includes] if isinstance(includes, str) else list(includes):
        merged = deep_merge(merged, _load_with_includes((path.parent / inc).resolve(), (*chain, path)))
    return deep_merge(merged, data)


def deep_merge(base: dict, override: dict) -> dict:
    """A new dict: `override` on top of `base`; nested dicts merge, every other value (lists too) replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# ----------------------------------------------------------------------------------------------------- registry
def discover_tasks(kind: str | None = None, root: str | Path = TASKS_ROOT) -> dict[str, Path]:
    """Map task name -> file for every non-template YAML under `root/kind` (all kinds when None).

    The name is the file's `task:` value, or its stem when it has none.
    """
    base = Path(root) / kind if kind else Path(root)
    found: dict[str, Path] = {}
    for path in sorted(base.rglob("*.yaml")) if base.is_dir() else []:
        if path.name.startswith("_"):
            continue
        try:
            head = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise TaskError(f"{path} is not valid YAML: {err}") from err
        name = str(head.get("task", path.stem)) if isinstance(head, dict) else path.stem
        if name in found:
            raise TaskError(f"task name {name!r} is defined twice: {found[name]} and {path}; rename one")
        found[name] = path
    return found


def find_task(name_or_path: str | Path, kind: str | None = None, root: str | Path = TASKS_ROOT) -> Path:
    """Resolve a task name (from the registry) or a path to a YAML file; unknown names get a "did you mean"."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        if not candidate.is_file():
            raise TaskError(f"task file not found: {candidate}; pass an existing YAML path or a task name")
        return candidate
    registry = discover_tasks(kind, root)
    if str(name_or_path) in registry:
        return registry[str(name_or_path)]
    close = difflib.get_close_matches(str(name_or_path), list(registry), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    listing = ", ".join(registry) or "(none)"
    raise TaskError(f"unknown task {str(name_or_path)!r} under {Path(root) / (kind or '')}.{hint} "
                    f"Known tasks: {listing}. `python -m harness.tasks ls` lists them; a YAML path works too.")


def load_task(name_or_path: str | Path, kind: str | None = None, root: str | Path = TASKS_ROOT) -> dict:
    """`find_task` then `load_task_file`."""
    return load_task_file(find_task(name_or_path, kind, root))


# --------------------------------------------------------------------------------------------------- validation
def build_dataclass(cls: type, data: Any, where: str) -> Any:
    """Validate a mapping into dataclass `cls` (nested dataclasses, lists, optionals, int/float/str/bool).

    Unknown keys and wrong types raise TaskError naming the field (`where` is its dotted path).
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TaskError(f"{where} must be a mapping, found {type(data).__name__}: {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(fields), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise TaskError(f"{where}: unknown key {key!r}.{hint} Allowed keys: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise TaskError(f"{where}: missing required key {name!r}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except TaskError as err:
                errors.append(str(err))
        raise TaskError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TaskError(f"{where} must be a list, found {type(value).__name__}: {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, where)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise TaskError(f"{where} must be a number, found a boolean: {value!r}")
    if tp in (int, float, str, bool, dict) and not isinstance(value, tp):
        raise TaskError(f"{where} must be {tp.__name__}, found {type(value).__name__}: {value!r}")
    return value


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
    prompt_set: str = "viescore"      # the official VIEScore templates; "project-rubric" is not comparable
    protocol: str = "gedit-v1"        # harness.gedit_protocol.PROTOCOLS
    max_new_tokens: int = 512
    max_retries: int = 0              # upstream never re-asks with sampling; > 0 makes a run non-comparable


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


def apply_overrides(config: Any, overrides: dict[str, Any]) -> tuple[Any, list[dict]]:
    """Return a copy of a (nested, frozen) dataclass with dotted-path fields replaced, and the change log.

    `overrides` maps e.g. "generation.steps" -> 20; None values are ignored (flag not given). Each log entry is
    {"field", "old", "new"}; values equal to the current one are not logged. The result is re-validated.
    """
    changes: list[dict] = []
    data = dataclasses.asdict(config)
    for dotted, new in overrides.items():
        if new is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        if leaf not in node:
            raise TaskError(f"cannot override unknown field {dotted!r}")
        old = node[leaf]
        if old != new:
            node[leaf] = new
            changes.append({"field": dotted, "old": old, "new": new})
    return type(config).from_dict(data) if hasattr(type(config), "from_dict") else build_dataclass(
        type(config), data, "config"), changes


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


# --------------------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.tasks", description="List, validate and show task files.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_ls = sub.add_parser("ls", help="list task names")
    p_ls.add_argument("kind", nargs="?", default=None, help="gedit, profile, ... (all when omitted)")
    p_val = sub.add_parser("validate", help="load and validate GEdit tasks (all when no name is given)")
    p_val.add_argument("names", nargs="*")
    p_show = sub.add_parser("show", help="print a task's effective config after includes")
    p_show.add_argument("name")
    p_show.add_argument("--kind", default=None)
    sub.add_parser("generate-gedit-groups", help="write tasks/gedit/groups/gedit-<lang>-<group>.yaml")
    args = parser.parse_args(argv)
    try:
        if args.command == "ls":
            for name, path in discover_tasks(args.kind).items():
                desc = (load_task_file(path).get("metadata") or {}).get("description", "")
                print(f"{name:28s} {path.relative_to(TASKS_ROOT)}  {' '.join(str(desc).split())[:90]}")
        elif args.command == "validate":
            names = args.names or list(discover_tasks("gedit"))
            for name in names:
                cfg = load_gedit_task(name)
                print(f"ok  {cfg.task}")
        elif args.command == "generate-gedit-groups":
            print(f"wrote {len(write_gedit_group_tasks())} task files")
        else:
            print(json.dumps(load_task(args.name, args.kind), indent=2, ensure_ascii=False))
    except TaskError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
