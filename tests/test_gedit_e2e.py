"""`python -m harness.gedit --synthetic tiny` end to end on a CPU: both arms, every output, resume, --edits."""
from __future__ import annotations

import csv
import json

import pytest

from harness.gedit import main
from harness.core.records import SYNTHETIC_WARNING, read_jsonl

GROUPS = ["color_alter", "ps_human", "subject-remove", "text_change"]  # 4 of the 11, to keep the test short
TASK_GROUPS = len(GROUPS)
BASE = ["--synthetic", "tiny", "--no-progress", "--bootstrap", "300", "--per-task", "1", "--tasks", *GROUPS]


def _mtimes(root):
    return {p.relative_to(root): p.stat().st_mtime_ns for p in root.glob("*/fullset/*/*/*.png")}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("gedit-tiny")
    # An interrupted run: only part of the work (bf16, English) was done.
    assert main([*BASE, "--out", str(out), "--stage", "generate", "--precision", "bf16", "--languages", "en"]) == 0
    partial = _mtimes(out)
    assert len(partial) == TASK_GROUPS
    # The full run resumes: the finished edits stay untouched, the rest is made, judged and scored.
    assert main([*BASE, "--out", str(out), "--languages", "en", "cn"]) == 0
    return out, partial


def test_outputs_exist_and_say_synthetic(run_dir):
    out, _ = run_dir
    for name in ("judgements.jsonl", "scores.csv", "tasks.csv", "fidelity.csv", "summary.json", "summary.md",
                 "selection.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["synthetic"] == "tiny" and summary["warning"] == SYNTHETIC_WARNING
    assert summary["provenance"]["synthetic_weights"] == "tiny"
    assert SYNTHETIC_WARNING in (out / "summary.md").read_text()
    assert summary["prompt_set"]["name"] == "project-rubric-v1" and len(summary["prompt_set"]["sha256"]["set"]) == 64
    assert summary["selection"]["n_samples"] == 2 * TASK_GROUPS
    assert {(h["arm"], h["language"]) for h in summary["headline"]} == {(a, l) for a in ("bf16", "fp8")
                                                                        for l in ("en", "cn")}
    assert {d["arm"] for d in summary["deltas"]} == {"fp8"}
    assert set(summary["fidelity"]["fp8"]) >= {"en", "cn"}
    fid = summary["fidelity"]["fp8"]["en"]["overall_per_sample"]
    assert fid["n"] == TASK_GROUPS and 0.0 < fid["ssim"] <= 1.0
    assert set(summary["throughput"]["generation"]) == {"bf16", "fp8"} and summary["throughput"]["judge"]
    assert any(o["field"] == "generation.steps" for o in summary["overrides"])


def test_every_sample_is_judged_once_per_arm_with_raw_answers(run_dir):
    out, _ = run_dir
    recs = list(read_jsonl(out / "judgements.jsonl"))
    assert len(recs) == 2 * 2 * TASK_GROUPS
    assert len({(r["arm"], r["language"], r["key"]) for r in recs}) == len(recs)
    for r in recs:
        assert r["judge"]["synthetic"] is True
        if r["status"] == "ok":
            assert r["sc"]["attempts"][0]["answer"] and r["pq"]["attempts"][0]["answer"]
        else:
            assert r["status"] == "judge_failure" and r["failure"]
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(recs)
    for row in rows:  # scores only for judged samples; O = sqrt(SC * PQ)
        if row["status"] == "ok":
            assert float(row["O"]) == pytest.approx((float(row["SC"]) * float(row["PQ"])) ** 0.5)
        else:
            assert row["O"] == ""


def test_resume_redid_nothing_and_rerun_is_a_no_op(run_dir):
    out, partial = run_dir
    after = _mtimes(out)
    assert len(after) == 2 * 2 * TASK_GROUPS
    assert all(after[p] == t for p, t in partial.items())
    gen = list(read_jsonl(out / "bf16" / "generation.jsonl"))
    assert len(gen) == 2 * TASK_GROUPS and len({(g["language"], g["key"]) for g in gen}) == len(gen)
    assert all(g["seed"] == 42 and g["seconds"] > 0 and g["synthetic"] for g in gen)
    lines = (out / "judgements.jsonl").read_text()
    assert main([*BASE, "--out", str(out), "--languages", "en", "cn"]) == 0
    assert _mtimes(out) == after and (out / "judgements.jsonl").read_text() == lines
    assert not list(out.rglob(".*.tmp"))


def test_judge_stage_on_edits_made_elsewhere(run_dir, tmp_path):
    out, _ = run_dir
    args = ["--no-progress", "--bootstrap", "200", "--per-task", "1", "--tasks", *GROUPS, "--languages", "en",
            "--max-new-tokens", "8",
            "--dataset", str(out / "_synthetic" / "dataset"), "--judge", str(out / "_synthetic" / "judge-tiny")]
    assert main([*args, "--out", str(tmp_path), "--stage", "judge", "--edits", str(out / "fp8")]) == 0
    assert main([*args, "--out", str(tmp_path), "--stage", "score", "--edits", str(out / "fp8")]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["arms"] == ["fp8"] and summary["deltas"] == [] and summary["fidelity"] == {}
    assert len(list(read_jsonl(tmp_path / "judgements.jsonl"))) == TASK_GROUPS


def test_missing_models_explain_the_flags(tmp_path, capsys):
    code = main(["--precision", "fp8", "--model", str(tmp_path / "no-model"), "--judge", str(tmp_path / "no-judge"),
                 "--dataset", str(tmp_path / "no-data"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    for flag in ("--model", "--judge", "--dataset", "--synthetic tiny"):
        assert flag in err


def test_resume_refuses_edits_made_with_other_settings(run_dir, capsys):
    out, _ = run_dir
    before = _mtimes(out)
    code = main([*BASE, "--out", str(out), "--languages", "en", "--stage", "generate", "--steps", "3"])
    assert code == 2 and "steps: 2 -> 3" in capsys.readouterr().err
    assert _mtimes(out) == before
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fidelity"]["fp8"]["same_settings_but_precision"] is True


def test_judging_with_another_batch_size_is_a_settings_change(run_dir, tmp_path, capsys):
    out, _ = run_dir
    args = ["--no-progress", "--per-task", "1", "--tasks", *GROUPS, "--languages", "en", "--stage", "judge",
            "--dataset", str(out / "_synthetic" / "dataset"), "--judge", str(out / "_synthetic" / "judge-tiny"),
            "--edits", str(out / "fp8"), "--out", str(tmp_path)]
    assert main([*args, "--batch-size", "2"]) == 0
    lines = (tmp_path / "judgements.jsonl").read_text().splitlines()
    assert all(json.loads(line)["judge"]["settings"]["batch_size"] == 2 for line in lines)
    (tmp_path / "judgements.jsonl").write_text("\n".join(lines[:1]) + "\n")  # an interrupted run
    code = main([*args, "--batch-size", "3"])
    assert code == 2 and "batch_size: 2 -> 3" in capsys.readouterr().err
    assert len((tmp_path / "judgements.jsonl").read_text().splitlines()) == 1
    assert main([*args, "--batch-size", "2"]) == 0  # the recorded settings resume
    assert len((tmp_path / "judgements.jsonl").read_text().splitlines()) == len(lines)
