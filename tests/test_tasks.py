"""Task registry: discovery, include templates, validation errors, overrides."""
from __future__ import annotations

import pytest

from harness.core.tasks import TaskError, apply_overrides, discover_tasks, find_task, load_task_file
from harness.gedit.config import GEDIT_TASK_GROUPS, GeditTaskConfig, load_gedit_task


def test_shipped_gedit_tasks_validate():
    names = set(discover_tasks("gedit"))
    assert {"gedit-en-10pct", "gedit-en-full", "gedit-cn-full", "gedit-en-intersection"} <= names
    ten = load_gedit_task("gedit-en-10pct")
    assert (ten.selection.per_task, ten.generation.steps, ten.generation.resolution, ten.generation.seed) == (5, 20, 512, 42)
    assert ten.selection.task_groups == list(GEDIT_TASK_GROUPS) and ten.selection.languages == ["en"]
    assert ten.dataset.id == "stepfun-ai/GEdit-Bench" and ten.aggregation.weight_by_size is False
    assert load_gedit_task("gedit-cn-full").selection.languages == ["cn"]
    assert load_gedit_task("gedit-en-intersection").selection.intersection is True


def test_unknown_name_suggests_close_ones():
    with pytest.raises(TaskError, match="Did you mean gedit-en-10pct"):
        find_task("gedit-en-10pc", "gedit")


def test_include_merges_nested_and_detects_cycles(tmp_path):
    (tmp_path / "_base.yaml").write_text("task: base\ngeneration: {steps: 50, seed: 1}\nselection: {per_task: 3}\n")
    (tmp_path / "child.yaml").write_text("task: child\ninclude: _base.yaml\ngeneration: {steps: 7}\n")
    merged = load_task_file(tmp_path / "child.yaml")
    assert merged["generation"] == {"steps": 7, "seed": 1} and merged["selection"]["per_task"] == 3
    assert list(discover_tasks(root=tmp_path)) == ["child"]
    (tmp_path / "a.yaml").write_text("include: b.yaml\n")
    (tmp_path / "b.yaml").write_text("include: a.yaml\n")
    with pytest.raises(TaskError, match="include cycle"):
        load_task_file(tmp_path / "a.yaml")


@pytest.mark.parametrize("patch, message", [
    ({"generation": {"stepz": 3}}, "unknown key 'stepz'. Did you mean 'steps'"),
    ({"generation": {"steps": "many"}}, "generation.steps must be int"),
    ({"selection": {"languages": ["de"]}}, "selection.languages"),
    ({"selection": {"task_groups": ["color_alters"]}}, "Did you mean 'color_alter'"),
    ({"generation": {"resolution": 500}}, "multiple of 16"),
    ({"aggregation": {"weight_by_size": True}}, "unweighted"),
])
def test_validation_errors_name_the_field(patch, message):
    with pytest.raises(TaskError, match=message):
        GeditTaskConfig.from_dict({"task": "t", **patch})


def test_overrides_are_logged_and_revalidated():
    cfg = load_gedit_task("gedit-en-10pct")
    new, log = apply_overrides(cfg, {"generation.steps": 4, "generation.seed": 42, "selection.per_task": None})
    assert new.generation.steps == 4 and cfg.generation.steps == 20
    assert log == [{"field": "generation.steps", "old": 20, "new": 4}]
    with pytest.raises(TaskError):
        apply_overrides(cfg, {"selection.languages": ["xx"]})


def test_group_task_files_are_current(tmp_path):
    from harness.core.tasks import TASKS_ROOT
    from harness.gedit.config import write_gedit_group_tasks

    fresh = write_gedit_group_tasks(tmp_path)
    assert len(fresh) == 2 * len(GEDIT_TASK_GROUPS)
    for path in fresh:  # the committed files equal what the generator writes
        assert (TASKS_ROOT / "gedit" / "groups" / path.name).read_text() == path.read_text()
    cfg = load_gedit_task("gedit-cn-text_change")
    assert cfg.selection.task_groups == ["text_change"] and cfg.selection.languages == ["cn"]
    assert cfg.judge.model == "Qwen/Qwen2.5-VL-7B-Instruct"
