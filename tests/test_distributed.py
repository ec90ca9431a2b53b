"""Sharded GEdit runs on a CPU: two gloo ranks under torchrun against one process, a killed rank and its resume.

The reference is a single-process run; the sharded runs reuse its synthetic models and dataset (--model, --judge,
--dataset), so every judgement names the same judge and any difference would come from the sharding. Both sides run
one CPU thread per process (torchrun's default), so the arithmetic is the same.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from benchmarks.distributed_speedup import compare_edits, compare_judge_batches, compare_judgements
from harness.core.distributed import DistributedSetupError, Shard, launched_with_several_ranks, rank_device
from harness.core.records import RANK_DIR, RecordSink, append_jsonl, rank_path, read_jsonl
from harness.gedit.__main__ import main
from harness.gedit.data import SampleRef
from harness.gedit.run_folder import DIST_REPORT, RunFolder
from harness.gedit.runner import FAULT_ENV, fault_after, judge_batches, merge_rank_records, open_shard

REPO_ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--synthetic", "tiny", "--no-progress", "--bootstrap", "200", "--per-task", "2", "--languages", "en",
        "--tasks", "color_alter", "text_change", "--batch-size", "2", "--device", "cpu"]
RESULT_FILES = ("judgements.jsonl", "scores.csv", "tasks.csv", "fidelity.csv")
SUMMARY_NUMBERS = ("headline", "per_task", "deltas", "fidelity", "judge_failures", "selection", "arms")


# ------------------------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A single-process run (one thread, like each torchrun rank)."""
    out = tmp_path_factory.mktemp("single")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*ARGS, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def _assets(reference: Path) -> list[str]:
    work = reference / "_synthetic"
    return ["--dataset", str(work / "dataset"), "--model", str(work / "omnigen2-tiny"),
            "--judge", str(work / "judge-tiny")]


def torchrun(out: Path, reference: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "harness.gedit", *ARGS, *_assets(reference), "--out", str(out)]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


def _images(root: Path) -> dict[Path, bytes]:
    return {p.relative_to(root): p.read_bytes() for p in root.glob("*/fullset/*/*/*.png")}


def _mtimes(root: Path) -> dict[Path, int]:
    return {p.relative_to(root): p.stat().st_mtime_ns for p in root.glob("*/fullset/*/*/*.png")}


def _summary_numbers(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    return {k: summary[k] for k in SUMMARY_NUMBERS}


def _sorted_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return sorted(csv.DictReader(f), key=lambda r: json.dumps(r, sort_keys=True))


def _selection(out: Path) -> list[dict]:
    return json.loads((out / "selection.json").read_text())["samples"]


def _batch_plans(out: Path) -> list[tuple[int, list[dict]]]:
    """(chunk number, fingerprint of every model batch the judge ran for it), in judge_runs.jsonl order."""
    return [(r["chunk"], r["batch_plan"]) for r in read_jsonl(out / "judge_runs.jsonl")]


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-4000:]


def _assert_same_results(run: Path, reference: Path, ordered: bool) -> None:
    """Scores, per-task tables, fidelity and images equal those of the single-process run."""
    assert _images(run) == _images(reference)
    assert _summary_numbers(run) == _summary_numbers(reference)
    for name in RESULT_FILES:
        if ordered:
            assert (run / name).read_text() == (reference / name).read_text(), name
        elif name.endswith(".csv"):
            assert _sorted_csv(run / name) == _sorted_csv(reference / name), name
        else:
            assert sorted((run / name).read_text().splitlines()) == sorted((reference / name).read_text().splitlines())
    for arm in ("bf16", "fp8"):  # one generation record per sample, in selection order unless resumed
        gen = [(g["task_type"], g["language"], g["key"]) for g in read_jsonl(run / arm / "generation.jsonl")]
        chosen = [(s["task_type"], s["language"], s["key"]) for s in _selection(run)]
        assert gen == chosen if ordered else sorted(gen) == sorted(chosen)
    assert not list(run.rglob(RANK_DIR)), "per-rank files were left behind"


# ------------------------------------------------------------------------------------------- two gloo processes
def test_two_ranks_write_exactly_the_single_process_outputs(reference, tmp_path):
    _ok(torchrun(tmp_path, reference))
    _assert_same_results(tmp_path, reference, ordered=True)
    report = json.loads((tmp_path / DIST_REPORT).read_text())
    assert report["world_size"] == 2 and report["backend"] == "gloo" and report["synthetic"] == "tiny"
    # 4 samples: 2 edits per arm on each rank; 8 pairs in 4 batches of 2: 2 batches (4 pairs) per rank.
    assert [(r["rank"], r["generate_shard_samples"], r["judged_pairs"]) for r in report["ranks"]] == [(0, 2, 4),
                                                                                                      (1, 2, 4)]
    assert report["merged_records"][str(tmp_path / "judgements.jsonl")] == 8
    # The judge ran exactly the model batches of one process: the same chunks, and in each the same calls in the same
    # order, padded to the same length, with the same tokens and pixels (retries included); chunk b on rank b mod 2.
    assert _batch_plans(tmp_path) == _batch_plans(reference)
    assert [chunk for chunk, _ in _batch_plans(reference)] == [0, 1, 2, 3]
    assert [r["judge"]["chunks"] for r in report["ranks"]] == [[0, 2], [1, 3]]
    assert compare_judge_batches(tmp_path, reference)["chunks_with_identical_batches"] == 4
    judged = compare_judgements(tmp_path, reference)
    assert judged["identical"] and judged["same_images"] == judged["identical_answers"] == 8
    single = json.loads((reference / DIST_REPORT).read_text())
    assert single["world_size"] == 1 and single["ranks"][0]["judge"]["chunks"] == [0, 1, 2, 3]
    # what a rerun on any number of processes shares with this one is said where the ranks are reported
    assert report["reproducibility"] == single["reproducibility"]
    assert report["reproducibility"]["judgements"].startswith("the same judgements for any number of processes on CPUs")
    assert report["reproducibility"]["edits"].startswith("the same edits for any number of processes")
    for rank in (*report["ranks"], *single["ranks"]):  # every stage says when it ran, comparable across ranks
        for stage in ("generate", "judge"):
            assert rank["ready_unix"] <= rank[stage]["start_unix"] <= rank[stage]["end_unix"]
        assert rank["generate"]["components_load_seconds"] > 0 and rank["judge"]["load_seconds"] > 0
        assert [a["arm"] for a in rank["generate"]["arms"]] == ["bf16", "fp8"]


def test_killed_rank_loses_only_unfinished_samples_and_reruns_resume(reference, tmp_path):
    samples = _selection(reference)
    bf16 = tmp_path / "bf16" / "fullset"
    # Rank 1 (samples 1 and 3) dies after its first bf16 edit; torchrun stops rank 0 too.
    crashed = torchrun(tmp_path, reference, fault="1:generate:1")
    assert crashed.returncode != 0 and "rank 1 exits now" in crashed.stderr
    assert (bf16 / samples[1]["task_type"] / "en" / f"{samples[1]['key']}.png").is_file()
    assert not (bf16 / samples[3]["task_type"] / "en" / f"{samples[3]['key']}.png").exists()
    assert not (tmp_path / "summary.json").exists()
    assert len(list(read_jsonl(tmp_path / "bf16" / RANK_DIR / "generation.rank001.jsonl"))) == 1
    first = _mtimes(tmp_path)

    # The rerun makes the missing edits, then rank 1 dies after its first judge batch.
    crashed = torchrun(tmp_path, reference, fault="1:judge:1")
    assert crashed.returncode != 0 and "rank 1 exits now" in crashed.stderr
    second = _mtimes(tmp_path)
    assert len(second) == 2 * len(samples) and all(second[p] == t for p, t in first.items())
    assert len(list(read_jsonl(tmp_path / RANK_DIR / "judgements.rank001.jsonl"))) == 2
    interrupted = tmp_path.parent / f"{tmp_path.name}-copy"
    shutil.copytree(tmp_path, interrupted)

    # A sharded rerun judges what is left and merges everything: the single-process results.
    _ok(torchrun(tmp_path, reference))
    assert _mtimes(tmp_path) == second
    _assert_same_results(tmp_path, reference, ordered=False)
    judged = [(r["arm"], r["key"]) for r in read_jsonl(tmp_path / "judgements.jsonl")]
    assert len(judged) == len(set(judged)) == 2 * len(samples)

    # A single-process rerun of the same interrupted state folds the per-rank records in as well.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*ARGS, *_assets(reference), "--out", str(interrupted)]) == 0
    finally:
        torch.set_num_threads(threads)
    _assert_same_results(interrupted, reference, ordered=False)


def test_benchmark_comparison_finds_a_changed_answer_a_changed_batch_and_a_changed_pixel(reference, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(reference, changed)
    records = list(read_jsonl(changed / "judgements.jsonl"))
    answer = records[3]["pq"]["attempts"][0]["answer"]
    records[3]["pq"]["attempts"][0]["answer"] = ("X" if answer[:1] != "X" else "Y") + answer[1:]
    (changed / "judgements.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    runs = list(read_jsonl(changed / "judge_runs.jsonl"))
    runs[1]["batch_plan"][0]["padded_tokens"] += 1
    (changed / "judge_runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    edit = sorted(changed.glob("fp8/fullset/*/*/*.png"))[0]
    pixels = np.asarray(PIL.Image.open(edit).convert("RGB")).copy()
    pixels[0, 0, 0] = (int(pixels[0, 0, 0]) + 3) % 256
    PIL.Image.fromarray(pixels).save(edit)

    judged = compare_judgements(changed, reference)
    assert judged["identical_answers"] == 7 and not judged["identical"]
    assert {k: judged["differing"][0][k] for k in ("call", "attempt", "char")} == {"call": "pq", "attempt": 0, "char": 0}
    batches = compare_judge_batches(changed, reference)
    assert batches["differing_chunks"] == [runs[1]["chunk"]] and not batches["identical"]
    edits = compare_edits(changed, reference, ["bf16", "fp8"])
    assert edits["pixel_identical"] == 7 and edits["max_abs_pixel_difference"] == 3 and not edits["identical"]


# ------------------------------------------------------------------------------------------------------- pieces
def _refs(n: int) -> list[SampleRef]:
    return [SampleRef("color_alter", "en", f"k{i}", "make it red", False, i) for i in range(n)]


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_judge_batches_are_the_single_process_batches_dealt_round_robin(world_size):
    arms, samples = ["bf16", "fp8"], _refs(7)
    batches = judge_batches(arms, samples, batch_size=3)
    pairs = [(a, s) for a in arms for s in samples]
    assert [p for b in batches for p in b] == pairs and all(len(b) == 3 for b in batches[:-1])
    dealt = [Shard(rank=r, world_size=world_size).take(list(enumerate(batches))) for r in range(world_size)]
    owners = sorted(b for shard in dealt for b, _ in shard)
    assert owners == list(range(len(batches)))  # every batch once
    assert all(batch == batches[b] and b % world_size == r for r, shard in enumerate(dealt) for b, batch in shard)
    with pytest.raises(ValueError, match="outside"):
        Shard(rank=world_size, world_size=world_size)


def test_merge_restores_single_process_order_skips_duplicates_and_torn_lines(tmp_path):
    keys = [f"k{i}" for i in range(4)]
    (tmp_path / "selection.json").write_text(json.dumps(
        {"samples": [{"task_type": "t", "language": "en", "key": k} for k in keys]}))
    folder, arms = RunFolder(tmp_path, tmp_path), ["bf16", "fp8"]
    rec = lambda arm, k: {"arm": arm, "task_type": "t", "language": "en", "key": k, "status": "ok", "note": "é"}
    shared = tmp_path / "judgements.jsonl"
    append_jsonl(shared, rec("bf16", "k0"))
    # batches: 0 = bf16 k0,k1; 1 = bf16 k2,k3; 2 = fp8 k0,k1; 3 = fp8 k2,k3 (rank 0: 0, 2; rank 1: 1, 3)
    for r in (rec("bf16", "k1"), rec("bf16", "k0"), rec("fp8", "k0"), rec("fp8", "k1")):  # bf16 k0 written twice
        append_jsonl(rank_path(shared, 0), r)
    for r in (rec("bf16", "k3"), rec("bf16", "k2"), rec("fp8", "k2")):
        append_jsonl(rank_path(shared, 1), r)
    with open(rank_path(shared, 1), "a") as f:
        f.write('{"arm": "fp8", "ta')  # rank 1 died mid-append
    gen = tmp_path / "fp8" / "generation.jsonl"
    for rank, k in ((1, "k3"), (0, "k2"), (1, "k1"), (0, "k0")):
        append_jsonl(rank_path(gen, rank), {"task_type": "t", "language": "en", "key": k, "seconds": 1.0})

    added = merge_rank_records(folder, arms, batch_size=2)

    assert added == {str(shared): 6, str(gen): 4}
    order = [(r["arm"], r["key"]) for r in read_jsonl(shared)]
    assert order == [("bf16", "k0"), ("bf16", "k1"), ("bf16", "k3"), ("bf16", "k2"), ("fp8", "k0"), ("fp8", "k1"),
                     ("fp8", "k2")]  # batch order; writing order inside a batch
    assert shared.read_text().count("é") == 7  # written as append_jsonl writes it (UTF-8, not escaped)
    assert [r["key"] for r in read_jsonl(gen)] == keys
    assert not list(tmp_path.rglob(RANK_DIR))
    assert merge_rank_records(folder, arms, batch_size=2) == {}  # nothing left to merge


def test_rank_files_only_inside_a_process_group(tmp_path):
    path = tmp_path / "fp8" / "generation.jsonl"
    assert RecordSink(path, open_shard("cpu")).path == path  # a single process writes the shared file, as before
    assert rank_path(path, 12) == tmp_path / "fp8" / "_ranks" / "generation.rank012.jsonl"


def test_setup_errors_name_the_fix(monkeypatch):
    with pytest.raises(DistributedSetupError, match="--device cuda"):
        rank_device("cuda:1", 0)
    assert rank_device("cpu", 3) == ("cpu", "gloo")
    if not torch.cuda.is_available():
        with pytest.raises(DistributedSetupError, match="--device cpu"):
            rank_device("cuda", 0)
    else:  # GPU ranks keep their GPU for the work; the group (barriers, small objects) stays on gloo
        assert rank_device("cuda", 0) == ("cuda:0", "gloo")
    monkeypatch.setenv(FAULT_ENV, "1:judging:2")
    with pytest.raises(DistributedSetupError, match="RANK:STAGE:N"):
        fault_after(1, "judge")
    monkeypatch.setenv(FAULT_ENV, "1:judge:2")
    assert fault_after(1, "judge") == 2 and fault_after(0, "judge") is None
    assert fault_after(1, "generate") is None
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(DistributedSetupError, match="torchrun"):
        launched_with_several_ranks()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(DistributedSetupError, match="MASTER_ADDR.*-m harness.gedit"):
        open_shard("cpu")


def test_setup_errors_under_torchrun_are_messages_not_tracebacks(tmp_path):
    """`python -m harness.gedit` runs as __main__: the ranks must raise the exceptions its CLI catches."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "harness.gedit", "--device", "cpu", "--model", str(tmp_path / "no-model"), "--judge", str(tmp_path / "no-judge"),
           "--dataset", str(tmp_path / "no-data"), "--out", str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.count("error: cannot start") == 2 and "--model" in proc.stderr
    assert "SetupError" not in proc.stderr  # no traceback of an uncaught harness exception
