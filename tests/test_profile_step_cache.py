"""harness.profile with a step cache: the computed fraction and computed vs cached step and call times, on tiny
weights (CPU)."""
from __future__ import annotations

import json
import warnings

import pytest

from harness.core.records import TAYLORSEER_SYNTHETIC_NOTE, TEACACHE_SYNTHETIC_NOTE
from harness.profile.record import ArmRecord, ProfileRecord
from harness.profile.step_cache import StepCacheRun, summarize
from omnigen2_fp8.caching import CallRecord, StepCacheStats

from profile_cli import run_profile, write_scenario

TINY_SCENARIO = """\
task: tiny-edit
include: {template}
height: 32
width: 32
references: [[32, 32]]
steps: 8
"""
STEPS, REPEATS = 8, 2


@pytest.fixture(scope="module")
def cached_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("profile_cache")
    scenario = write_scenario(root, TINY_SCENARIO)
    out = root / "out"
    code = run_profile(["--precision", "bf16", "bf16+taylorseer", "fp8+teacache", "--scenario", str(scenario),
                        "--synthetic", "tiny",
                        "--device", "cpu", "--warmup", "1", "--repeats", str(REPEATS), "--profile-steps", "0",
                        "--out", str(out), "--no-progress"])
    return code, out, json.loads((out / "profile.json").read_text())


def test_uncached_arm_computes_every_call(cached_run):
    code, _, rec = cached_run
    assert code == 0
    sc = rec["arms"]["bf16"]["step_cache"]
    passes = rec["scenario"]["transformer_passes"]
    assert sc["method"] is None and sc["calls_per_run"] == passes == sc["computed_calls_per_run"]
    assert sc["computed_fraction"] == 1.0 and sc["steps_per_class"]["computed"] == STEPS
    assert set(sc["step_ms"]) == {"computed"} and sc["step_ms"]["computed"]["n"] == STEPS * REPEATS


def test_taylorseer_arm_follows_the_official_schedule(cached_run):
    _, _, rec = cached_run
    sc = rec["arms"]["bf16+taylorseer"]["step_cache"]
    # official defaults: the first 5 calls of a branch compute, then every 3rd (calls 7, 10, ...)
    assert rec["scenario"]["branches_per_step"] == [3] * STEPS  # every branch runs every step here
    assert sc["step_classes"] == ["computed"] * 5 + ["cached", "cached", "computed"]
    assert sc["calls_per_run"] == 3 * STEPS and sc["computed_calls_per_run"] == 3 * 6
    assert sc["computed_fraction"] == pytest.approx(6 / 8)
    assert sc["step_ms"]["cached"]["n"] == 2 * REPEATS and sc["step_ms"]["computed"]["n"] == 6 * REPEATS
    arm = ProfileRecord.from_json(cached_run[1] / "profile.json").arms["bf16+taylorseer"]
    assert arm.computed_fraction() == pytest.approx(0.75)
    assert arm.step_class_ms("cached") == sc["step_ms"]["cached"]["median_ms"]


def test_profile_md_shows_the_step_cache_table_and_the_synthetic_note(cached_run):
    _, out, _ = cached_run
    md = (out / "profile.md").read_text()
    assert "## Step caching" in md
    row = next(line for line in md.splitlines() if line.startswith("| bf16+taylorseer | taylorseer |"))
    assert "0.750" in row
    assert TAYLORSEER_SYNTHETIC_NOTE in md and TEACACHE_SYNTHETIC_NOTE in md


@pytest.mark.parametrize("arm", ["bf16", "bf16+taylorseer", "fp8+teacache"])
def test_every_transformer_call_is_timed_and_classed_as_computed_or_cached(cached_run, arm):
    _, out, rec = cached_run
    sc = rec["arms"][arm]["step_cache"]
    counts, stats = sc["call_counts"], sc["call_ms"]
    assert "call_timing_problem" not in sc
    # every call of every timed repeat is in exactly one class, and the classes agree with the computed fraction
    assert counts["computed"] + counts["cached"] == sc["calls_per_run"] * REPEATS
    assert counts["computed"] / (sc["calls_per_run"] * REPEATS) == pytest.approx(sc["computed_fraction"])
    for cls, n in counts.items():
        if n:
            assert stats[cls]["n"] == n and stats[cls]["median_ms"] > 0 and stats[cls]["mean_ms"] > 0
        else:
            assert cls not in stats
    record = ProfileRecord.from_json(out / "profile.json").arms[arm]
    assert record.call_class_stats("computed") == stats["computed"]
    row = next(line for line in (out / "profile.md").read_text().splitlines()
               if line.startswith(f"| {arm} | {counts['computed']} |"))
    assert f"| {counts['cached']} |" in row


def test_taylorseer_calls_follow_its_schedule(cached_run):
    _, _, rec = cached_run
    sc = rec["arms"]["bf16+taylorseer"]["step_cache"]
    # per run: 6 of 8 steps compute (3 branches each); the 2 extrapolated steps' calls are the cached ones
    assert sc["call_counts"] == {"computed": 18 * REPEATS, "cached": 6 * REPEATS}
    assert rec["arms"]["bf16"]["step_cache"]["call_counts"] == {"computed": 24 * REPEATS, "cached": 0}


def test_calls_that_do_not_line_up_with_the_recorded_calls_are_left_out_and_said():
    stats = StepCacheStats({"method": "taylorseer"}, [CallRecord("cond", 0, True), CallRecord("cond", 1, False)])
    run = StepCacheRun.from_stats(stats, [1, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc = summarize([run, run], [{}, {}], [[4.0, 1.0], [4.0]])
    assert sc["call_counts"] == {"computed": 1, "cached": 1}
    assert sc["call_timing_problem"] == "repeat 1: 1 timed calls for 2 recorded calls"


def test_old_arm_records_without_step_cache_still_read():
    data = {"name": "bf16", "ok": True, "error": None, "quantization": None, "memory": {}, "latency": None,
            "kernels": None, "fallback": None}
    arm = ArmRecord.from_dict(data)
    assert arm.step_cache is None and arm.computed_fraction() is None


def test_mixed_steps_and_teacache_note():
    stats = StepCacheStats({"method": "teacache"}, [CallRecord("cond", 0, True), CallRecord("uncond", 0, True),
                                                    CallRecord("cond", 1, False), CallRecord("uncond", 1, True),
                                                    CallRecord("cond", 2, False), CallRecord("uncond", 2, False)])
    run = StepCacheRun.from_stats(stats, [2, 2, 2])
    assert run.step_classes() == ["computed", "mixed", "cached"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc = summarize([run], [{"denoise_step": [3.0, 2.0, 1.0]}])
    assert sc["computed_fraction"] == pytest.approx(3 / 6) and sc["method"] == "teacache"
    assert {c: s["median_ms"] for c, s in sc["step_ms"].items()} == {"computed": 3.0, "mixed": 2.0, "cached": 1.0}
