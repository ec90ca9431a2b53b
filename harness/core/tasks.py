"""Declarative task files: discovery by name, `include:` templates, validation into dataclasses, overrides.

A task is one YAML file under `tasks/<kind>/` (kind = "gedit", "profile", ...). Files whose name starts with
"_" are templates: they are never listed, only included. This module knows no schema: each wing declares its
own dataclass (`harness.gedit.config.GeditTaskConfig`, the profiler's scenarios) and validates with
`build_dataclass`; `python -m harness.tasks` lists, validates and shows them.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from harness.core.records import REPO_ROOT

TASKS_ROOT = REPO_ROOT / "tasks"


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
    if origin is dict:
        if not isinstance(value, dict):
            raise TaskError(f"{where} must be a mapping, found {type(value).__name__}: {value!r}")
        _, value_tp = typing.get_args(tp) or (Any, Any)
        return {k: _coerce(value_tp, v, f"{where}.{k}") for k, v in value.items()}
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
