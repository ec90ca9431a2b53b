"""`python -m harness.gedit --synthetic tiny` end to end on a CPU: both arms, every output, resume, --edits."""
from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from harness.gedit.__main__ import main
from harness.gedit.record import SCHEMA_VERSION, GeditRun, GeditSummary, RecordError
from harness.gedit.render import summary_markdown
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
    markdown = (out / "summary.md").read_text()
    assert SYNTHETIC_WARNING in markdown
    assert summary["prompt_set"]["name"] == "project-rubric-v1" and len(summary["prompt_set"]["sha256"]["set"]) == 64
    # judged with the project rubric (synthetic default): every output says so in its first line
    assert not summary["comparability"]["comparable"]
    assert markdown.splitlines()[0] == f"> **{summary['comparability']['headline']}**"
    assert "NOT COMPARABLE" in markdown.splitlines()[0] and "project-rubric-v1" in markdown.splitlines()[0]
    assert summary["protocol"]["name"] == "gedit-v1" and summary["judge"]["protocol"] == "gedit-v1"
    assert "## Intersection" in markdown
    selected = json.loads((out / "selection.json").read_text())["samples"]
    flagged = {s["language"] for s in selected if s["intersection"]}
    assert {(h["arm"], h["language"]) for h in summary["intersection"]["headline"]} == {
        (a, lang) for a in ("bf16", "fp8") for lang in flagged}
    assert all(h["subset"] == "intersection" for h in summary["intersection"]["headline"])
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
        assert r["judge"]["synthetic"] is True and r["judge"]["protocol"] == "gedit-v1"
        if r["status"] == "ok":
            assert r["sc"]["attempts"][0]["answer"] and r["pq"]["attempts"][0]["answer"]
        else:
            assert r["status"] == "judge_failure" and r["failure"]
            for call in (r["sc"], r["pq"]):  # one attempt (official protocol), the reason recorded
                assert len(call["attempts"]) == 1
                parse = call["attempts"][0]["parse"]
                assert call["status"] == "ok" or parse["error"] or call["status"] == "out_of_range"
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(recs)
    flags = {(r["language"], r["key"]): r["intersection"] for r in recs}
    for row in rows:  # scores only for judged samples; Q_O = sqrt(Q_SC * Q_PQ); the dataset's Intersection flag kept
        assert row["intersection_exist"] == str(flags[(row["language"], row["key"])])
        if row["status"] == "ok":
            assert float(row["Q_O"]) == pytest.approx((float(row["Q_SC"]) * float(row["Q_PQ"])) ** 0.5)
        else:
            assert row["Q_O"] == ""
    with open(out / "tasks.csv") as f:
        subsets = {r["subset"] for r in csv.DictReader(f)}
    has_flag = any(r["intersection"] for r in recs)
    assert subsets == ({"fullset", "intersection"} if has_flag else {"fullset"})


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
    """Edits in upstream's layout `{model}/fullset/{task}/{lang}/{key}.<ext>` (JPEGs here, beside upstream's
    `<key>_SRCIMG.png` copies) are judged and scored without generating anything."""
    out, _ = run_dir
    model = tmp_path / "published" / "othermodel"
    for png in (out / "fp8").glob("fullset/*/en/*.png"):
        target = model / png.relative_to(out / "fp8")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(png).convert("RGB").save(target.with_suffix(".jpg"))
        Image.open(png).save(target.with_name(f"{png.stem}_SRCIMG.png"))
    args = ["--no-progress", "--bootstrap", "200", "--per-task", "1", "--tasks", *GROUPS, "--languages", "en",
            "--max-new-tokens", "8", "--prompt-set", "project-rubric",
            "--dataset", str(out / "_synthetic" / "dataset"), "--judge", str(out / "_synthetic" / "judge-tiny")]
    res = tmp_path / "res"
    assert main([*args, "--out", str(res), "--stage", "judge", "--edits", str(model)]) == 0
    assert main([*args, "--out", str(res), "--stage", "score", "--edits", str(model)]) == 0
    summary = json.loads((res / "summary.json").read_text())
    assert summary["arms"] == ["othermodel"] and summary["deltas"] == [] and summary["fidelity"] == {}
    recs = list(read_jsonl(res / "judgements.jsonl"))
    assert len(recs) == TASK_GROUPS and {r["status"] for r in recs} <= {"ok", "judge_failure"}
    assert all(r["image"].endswith(".jpg") and r["image"].startswith("othermodel/fullset/") for r in recs)
    # the same judgements under the first release's protocol are a settings change: judged again, kept apart
    assert main([*args, "--out", str(res), "--stage", "all", "--edits", str(model), "--protocol", "gedit-v0"]) == 0
    recs = list(read_jsonl(res / "judgements.jsonl"))
    assert [r["judge"]["protocol"] for r in recs] == ["gedit-v1"] * TASK_GROUPS + ["gedit-v0"] * TASK_GROUPS
    summary = json.loads((res / "summary.json").read_text())
    assert summary["protocol"]["name"] == "gedit-v0" and summary["headline"][0]["n_selected"] == TASK_GROUPS


def test_official_prompt_set_from_a_file_or_the_environment(run_dir, tmp_path, monkeypatch):
    """--prompt-set viescore with a stand-in vie_prompts.py (upstream's names, our words) accepted by its own hash:
    the judge identity carries that hash, and the prompt set is no longer a reason for non-comparability."""
    from harness.gedit import viescore as gv
    from test_gedit_viescore import STAND_IN, STAND_IN_SHA256

    out, _ = run_dir
    for label, digest in STAND_IN_SHA256.items():
        monkeypatch.setitem(gv.OFFICIAL_SHA256, label, digest)
    stand_in = tmp_path / "vie_prompts.py"
    stand_in.write_text(STAND_IN, encoding="utf-8")
    args = ["--no-progress", "--bootstrap", "200", "--per-task", "1", "--tasks", *GROUPS[:2], "--languages", "en",
            "--max-new-tokens", "1", "--prompt-set", "viescore", "--dataset", str(out / "_synthetic" / "dataset"),
            "--judge", str(out / "_synthetic" / "judge-tiny"), "--edits", str(out / "fp8")]
    assert main([*args, "--out", str(tmp_path / "a"), "--viescore-file", str(stand_in)]) == 0
    monkeypatch.setenv("GEDIT_VIESCORE_FILE", str(stand_in))
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    for run in ("a", "b"):
        summary = json.loads((tmp_path / run / "summary.json").read_text())
        recs = list(read_jsonl(tmp_path / run / "judgements.jsonl"))
        assert summary["prompt_set"]["name"] == "viescore" and summary["prompt_set"]["origin"] == str(stand_in)
        assert {r["judge"]["prompt_sha256"] for r in recs} == {summary["prompt_set"]["sha256"]["set"]}
        assert not any("prompt set" in p for p in summary["comparability"]["problems"])
        with open(tmp_path / run / "scores.csv") as f:
            assert {r["comparable"] for r in csv.DictReader(f)} == {"False"}  # still synthetic and 1 token


def test_real_run_without_the_official_prompts_stops_before_any_work(run_dir, tmp_path, monkeypatch, capsys):
    out, _ = run_dir
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMNIGEN2_FP8_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("GEDIT_VIESCORE_FILE", raising=False)
    code = main(["--precision", "bf16", "--no-progress", "--model", str(out / "_synthetic" / "omnigen2-tiny"),
                 "--judge", str(out / "_synthetic" / "judge-tiny"), "--dataset", str(out / "_synthetic" / "dataset"),
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "--viescore-file" in err and "--prompt-set project-rubric" in err
    assert not (tmp_path / "o").exists()


def test_missing_models_explain_the_flags(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the official prompts are missing too: reported with the rest
    monkeypatch.setenv("OMNIGEN2_FP8_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("GEDIT_VIESCORE_FILE", raising=False)
    code = main(["--precision", "fp8", "--model", str(tmp_path / "no-model"), "--judge", str(tmp_path / "no-judge"),
                 "--dataset", str(tmp_path / "no-data"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    for flag in ("--model", "--judge", "--dataset", "--synthetic tiny", "--viescore-file",
                 "--prompt-set project-rubric"):
        assert flag in err


def test_resume_refuses_edits_made_with_other_settings(run_dir, capsys):
    out, _ = run_dir
    before = _mtimes(out)
    code = main([*BASE, "--out", str(out), "--languages", "en", "--stage", "generate", "--steps", "3"])
    assert code == 2 and "steps: 2 -> 3" in capsys.readouterr().err
    assert _mtimes(out) == before
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fidelity"]["fp8"]["same_settings_but_precision"] is True


def test_summary_json_is_a_typed_record_that_renders_summary_md(run_dir, tmp_path):
    out, _ = run_dir
    summary = GeditSummary.from_json(out / "summary.json")
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["schema_version"] == SCHEMA_VERSION and summary.to_json() == on_disk
    assert summary_markdown(GeditRun.load(out)) == (out / "summary.md").read_text()
    assert summary.task.generation.steps == 2 and summary.judge.prompt_set == "project-rubric-v1"
    assert summary.throughput.generation["bf16"].n_samples == 2 * TASK_GROUPS
    broken = tmp_path / "summary.json"
    broken.write_text(json.dumps({k: v for k, v in on_disk.items() if k != "headline"}))
    with pytest.raises(RecordError, match="missing required key 'headline'"):
        GeditSummary.from_json(broken)
    broken.write_text(json.dumps({**on_disk, "schema_version": 0}))
    with pytest.raises(RecordError, match="schema_version 0.*--stage score"):
        GeditSummary.from_json(broken)


def test_judging_with_another_batch_size_is_a_settings_change(run_dir, tmp_path, capsys):
    out, _ = run_dir
    args = ["--no-progress", "--per-task", "1", "--tasks", *GROUPS, "--languages", "en", "--stage", "judge",
            "--prompt-set", "project-rubric", "--max-new-tokens", "1",
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
