"""Step caching in a profile: which transformer calls computed the main layers, and what computed vs cached calls
and steps cost.

Per timed repeat the runner keeps one `StepCacheRun` (from the pipeline's `step_cache_stats`, or every call computed
for an arm without a cache) and the time of each transformer call (CUDA events around each call, read after the
repeat's closing synchronise; perf_counter on a CPU); `summarize` turns them, with the repeats' per-step times, into
the arm's `step_cache` section of profile.json. A call is "computed" when it ran the main layers and "cached" when
it reused or extrapolated an earlier output. A step is "computed" when all its calls computed, "cached" when none
did, and "mixed" otherwise (the CFG branches of one step can follow different schedules).
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.core import timing
from harness.core.vocab import STEP_STAGE
from omnigen2_fp8.caching import StepCacheStats

STEP_CLASSES = ("computed", "cached", "mixed")
CALL_CLASSES = ("computed", "cached")
CALL_ENTRY = "transformer_call"  # the call timer's entry name (its own StageTimer, apart from the stages)
CALL_TIMING = ("each transformer call's own time: a CUDA event recorded before and after the call (inside a CUDA "
               "graph replay's stream order, no synchronisation added) and read after the repeat's closing "
               "synchronise; perf_counter on a CPU. The step cache's host-side bookkeeping before a call is outside")


@dataclass(frozen=True)
class StepCacheRun:
    """One denoising run: the cache config (None: no cache); per step, its calls and how many computed; and per
    call, in call order, whether it computed the main layers."""

    config: dict | None
    calls_per_step: list[int]
    computed_per_step: list[int]
    computed_per_call: tuple[bool, ...] = ()

    @classmethod
    def from_stats(cls, stats: StepCacheStats | None, branches_per_step: list[int]) -> "StepCacheRun":
        """From the pipeline's stats of the run; None (no cache) means every call of every step computed."""
        if stats is None:
            return cls(None, list(branches_per_step), list(branches_per_step), (True,) * sum(branches_per_step))
        steps = len(branches_per_step)
        calls, computed = [0] * steps, [0] * steps
        for call in stats.calls:
            calls[call.step] += 1
            computed[call.step] += int(call.computed)
        return cls(stats.config, calls, computed, tuple(stats.computed_per_call))

    def step_classes(self) -> list[str]:
        """"computed" / "cached" / "mixed" for each step, in order."""
        return ["computed" if done == n else "cached" if done == 0 else "mixed"
                for n, done in zip(self.calls_per_step, self.computed_per_step)]


def summarize(runs: list[StepCacheRun], stage_runs: list[dict[str, list[float]]],
              call_runs: list[list[float]] | None = None) -> dict | None:
    """The arm's step_cache section: config, calls and computed calls per run, the computed fraction, the per-step
    latency (ms, TimingStats dicts) split by step class, and (with `call_runs`, the ms of each transformer call per
    repeat, in call order) the per-call latency split by call class with the counts. `stage_runs` are the same
    repeats' StageTimer results (their "denoise_step" entries are the steps in order). None when nothing was timed.
    """
    if not runs:
        return None
    first = runs[0]
    calls = sum(first.calls_per_step)
    computed = [sum(r.computed_per_step) for r in runs]
    step_ms: dict[str, list[float]] = {c: [] for c in STEP_CLASSES}
    for run, stages in zip(runs, stage_runs):
        for cls, ms in zip(run.step_classes(), stages.get(STEP_STAGE, [])):
            step_ms[cls].append(ms)
    classes = first.step_classes()
    out = {
        "config": first.config, "method": (first.config or {}).get("method"),
        "calls_per_run": calls, "computed_calls_per_run": computed[0] if len(set(computed)) == 1 else computed,
        "computed_fraction": sum(computed) / (calls * len(runs)) if calls else 1.0,
        "step_classes": classes, "steps_per_class": {c: classes.count(c) for c in STEP_CLASSES},
        "step_ms": {c: timing.summarize_ms(v, label=f"{c} steps", warn_min_ms=timing.STAGE_WARN_MIN_MS).to_dict()
                    for c, v in step_ms.items() if v},
        "timing": "each denoise step's wall time (see method.timing), grouped by whether its transformer calls "
                  "computed the main layers",
    }
    if call_runs is not None:
        out.update(summarize_calls(runs, call_runs))
    return out


def split_call_times(computed_per_call, times: list[float]) -> dict[str, list[float]]:
    """{"computed": [...], "cached": [...]}: each call's time under its class, calls and times in call order."""
    ms: dict[str, list[float]] = {c: [] for c in CALL_CLASSES}
    for did_compute, t in zip(computed_per_call, times):
        ms["computed" if did_compute else "cached"].append(t)
    return ms


def summarize_calls(runs: list[StepCacheRun], call_runs: list[list[float]]) -> dict:
    """{"call_counts": {class: calls timed over all repeats}, "call_ms": {class: TimingStats dict}, "call_timing",
    and "call_timing_problem" when a repeat's call times do not line up with its calls (that repeat is left out)}."""
    ms: dict[str, list[float]] = {c: [] for c in CALL_CLASSES}
    problems = []
    for i, (run, times) in enumerate(zip(runs, call_runs)):
        if len(times) != len(run.computed_per_call):
            problems.append(f"repeat {i}: {len(times)} timed calls for {len(run.computed_per_call)} recorded calls")
            continue
        for cls, values in split_call_times(run.computed_per_call, times).items():
            ms[cls] += values
    out = {"call_counts": {c: len(v) for c, v in ms.items()},
           "call_ms": {c: timing.summarize_ms(v, label=f"{c} transformer calls",
                                              warn_min_ms=timing.STAGE_WARN_MIN_MS).to_dict()
                       for c, v in ms.items() if v},
           "call_timing": CALL_TIMING}
    if problems:
        out["call_timing_problem"] = "; ".join(problems)
    return out
