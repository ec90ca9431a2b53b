"""GEdit-Bench loading from local copies, schema errors, deterministic selection."""
from __future__ import annotations

import datasets
import pytest

from harness.gedit.data import (DatasetError, load_gedit_dataset, load_source_image, make_synthetic_gedit, select_samples,
                          selection_summary, write_synthetic_gedit)
from harness.gedit.config import GEDIT_TASK_GROUPS, SelectionSpec


@pytest.fixture(scope="module")
def synthetic_parquet(tmp_path_factory):
    return write_synthetic_gedit(tmp_path_factory.mktemp("gedit") / "parquet", per_task=3)


def test_synthetic_copy_loads_in_both_layouts(synthetic_parquet, tmp_path):
    ds = load_gedit_dataset(synthetic_parquet)
    assert len(ds) == 11 * 3 * 2
    assert set(ds["task_type"]) == set(GEDIT_TASK_GROUPS) and set(ds["instruction_language"]) == {"en", "cn"}
    assert isinstance(ds.features["input_image"], datasets.Image)
    assert ds[0]["input_image"].size == (64, 64)
    disk = load_gedit_dataset(write_synthetic_gedit(tmp_path / "disk", per_task=1, layout="save_to_disk"))
    assert len(disk) == 22
    single = tmp_path / "one.parquet"
    make_synthetic_gedit(per_task=1, languages=["en"]).to_parquet(str(single))
    assert len(load_gedit_dataset(single)) == 11


def test_selection_is_deterministic_paired_and_order_free(synthetic_parquet):
    ds = load_gedit_dataset(synthetic_parquet)
    spec = SelectionSpec(languages=["en", "cn"], per_task=2, selection_seed=0)
    first = select_samples(ds, spec)
    again = select_samples(ds.shuffle(seed=5).flatten_indices(), spec)
    assert [s.uid for s in first] == [s.uid for s in again]
    assert len(first) == 11 * 2 * 2
    en = {(s.task_type, s.key) for s in first if s.language == "en"}
    cn = {(s.task_type, s.key) for s in first if s.language == "cn"}
    assert en == cn  # the same images in both languages
    other = select_samples(ds, SelectionSpec(languages=["en"], per_task=2, selection_seed=1))
    assert {s.key for s in other} != {s.key for s in first if s.language == "en"}
    inter = select_samples(ds, SelectionSpec(languages=["en"], intersection=True))
    assert inter and all(s.intersection for s in inter)
    assert selection_summary(first)["uids_sha256"] == selection_summary(again)["uids_sha256"]
    assert load_source_image(ds, first[0]).mode == "RGB"


def _write(ds, path):
    ds.to_parquet(str(path))
    return path


@pytest.mark.parametrize("mutate, message", [
    (lambda ds: ds.remove_columns("instruction_language"), "missing column.*instruction_language"),
    (lambda ds: ds.cast_column("Intersection_exist", datasets.Value("string")), "Intersection_exist"),
    (lambda ds: ds.map(lambda r: {"task_type": "recolor"}), "recolor"),
    (lambda ds: ds.map(lambda r: {"instruction_language": "de"}), "instruction_language values"),
    (lambda ds: datasets.concatenate_datasets([ds, ds.select([0])]), "repeat a \\(key, language\\)"),
])
def test_schema_errors_are_explained(tmp_path, mutate, message):
    bad = _write(mutate(make_synthetic_gedit(per_task=1, languages=["en"])), tmp_path / "bad.parquet")
    with pytest.raises(DatasetError, match=message):
        load_gedit_dataset(bad)


def test_missing_paths_explain_the_fix(tmp_path):
    with pytest.raises(DatasetError, match="--dataset"):
        load_gedit_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no dataset"):
        load_gedit_dataset(tmp_path / "empty")
