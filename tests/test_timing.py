"""harness.core.timing: statistics, warm-up exclusion, stage timers, peak-memory phases."""
from __future__ import annotations

import time
import warnings

import pytest
import torch

from harness.core import timing
from harness.core.timing import HighSpreadWarning, StageTimer, summarize_ms, summarize_stage_runs


def test_summary_statistics_match_hand_computed_quartiles():
    with pytest.warns(HighSpreadWarning, match="spread IQR/median = 66.7%"):
        s = summarize_ms([5.0, 1.0, 4.0, 2.0, 3.0], label="toy")
    assert (s.n, s.median_ms, s.q1_ms, s.q3_ms, s.iqr_ms) == (5, 3.0, 2.0, 4.0, 2.0)
    assert (s.min_ms, s.max_ms, s.mean_ms) == (1.0, 5.0, 3.0)
    assert s.spread == pytest.approx(2.0 / 3.0) and s.high_spread
    assert s.samples_ms == [5.0, 1.0, 4.0, 2.0, 3.0]  # kept in measurement order


def test_tight_samples_do_not_warn_and_single_sample_has_zero_spread():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = summarize_ms([10.0, 10.2, 9.9, 10.1, 10.0])
        one = summarize_ms([7.5])
    assert not s.high_spread and s.spread < 0.1 and s.median_ms == 10.0
    assert (one.median_ms, one.iqr_ms, one.spread, one.high_spread) == (7.5, 0.0, 0.0, False)


def test_no_samples_is_a_clear_error():
    with pytest.raises(ValueError, match="--repeats >= 1"):
        summarize_ms([], label="end to end")


def test_benchmark_discards_warmup_calls():
    calls = []

    def fn():
        # First call is slow (like a first CUDA call paying for heuristics / compilation), later ones fast.
        time.sleep(0.15 if not calls else 0.005)
        calls.append(1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HighSpreadWarning)  # sleep jitter on a busy machine
        stats = timing.benchmark(fn, "cpu", warmup=1, repeats=4, label="toy")
    assert len(calls) == 5 and stats.n == 4
    assert stats.max_ms < 100.0 and stats.median_ms >= 5.0


def test_benchmark_rejects_bad_counts():
    with pytest.raises(ValueError, match="repeats >= 1"):
        timing.benchmark(lambda: None, "cpu", warmup=0, repeats=0)


def test_stage_timer_records_nested_and_repeated_stages_and_profiler_ranges():
    timer = StageTimer("cpu")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with timer("denoise"):
            for _ in range(3):
                with timer("denoise_step"):
                    time.sleep(0.004)
        with timer("vae_decode"):
            time.sleep(0.002)
    out = timer.collect()
    assert set(out) == {"denoise", "denoise_step", "vae_decode"}
    assert len(out["denoise_step"]) == 3 and len(out["denoise"]) == 1
    assert all(x >= 4.0 for x in out["denoise_step"])
    assert out["denoise"][0] >= sum(out["denoise_step"])  # the outer stage contains the steps
    names = [e.name for e in prof.events()]
    assert names.count("stage::denoise_step") == 3 and "stage::vae_decode" in names
    assert timer.collect() == {}  # collect() clears


def test_stage_runs_are_summarised_per_run_and_per_call():
    runs = [{"denoise_step": [1.0, 2.0], "vae_decode": [5.0]}, {"denoise_step": [1.0, 4.0], "vae_decode": [7.0]}]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HighSpreadWarning)
        out = summarize_stage_runs(runs)
    assert out["denoise_step"]["calls_per_run"] == 2
    assert out["denoise_step"]["per_run"]["samples_ms"] == [3.0, 5.0]
    assert out["denoise_step"]["per_call"]["n"] == 4 and out["denoise_step"]["per_call"]["median_ms"] == 1.5
    assert out["vae_decode"]["per_run"]["median_ms"] == 6.0


def test_cpu_memory_phase_says_it_did_not_measure():
    with timing.track_peak_memory("run", "cpu") as peak:
        torch.ones(1000)
    assert peak.peak_allocated_gib is None and "not measured" in peak.method


@pytest.mark.gpu
def test_cuda_peak_of_one_phase_does_not_leak_into_the_next():
    with timing.track_peak_memory("big", "cuda") as big:
        x = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")  # 0.25 GiB
        del x
    with timing.track_peak_memory("small", "cuda") as small:
        y = torch.empty(16 * 2**20, dtype=torch.uint8, device="cuda")
        del y
    assert big.peak_allocated_gib - big.allocated_before_gib >= 0.25
    assert small.peak_allocated_gib - small.allocated_before_gib < 0.05
    assert "reset_peak_memory_stats" in big.method


@pytest.mark.gpu
def test_cuda_benchmark_times_gpu_work():
    a = torch.randn(2048, 2048, device="cuda")
    stats = timing.benchmark(lambda: a @ a, "cuda", warmup=2, repeats=5)
    assert stats.n == 5 and stats.median_ms > 0
