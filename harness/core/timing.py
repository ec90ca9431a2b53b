"""Latency and peak-memory measurement: CUDA events done right, a perf_counter fallback, per-stage timers.

Rules this module enforces (the usual ways GPU timings go wrong):
- Warm-up calls are run and thrown away before any sample is kept (first calls pay for cuBLAS heuristics,
  allocator growth, Triton/inductor compilation).
- On CUDA every sample is closed by a synchronisation before it is read: events are read only after
  `torch.cuda.synchronize`, and end-to-end wall time is taken with perf_counter between two synchronisations.
- A result is a distribution, not a number: median and interquartile range (IQR) over repeats, with a warning when
  the relative spread (IQR / median) is above 10 %.
- Stage timers record a CUDA event pair per stage entry (no synchronisation inside the pipeline, so timing does
  not serialise CPU and GPU) and wrap each stage in a `record_function("stage::<name>")` range, so a profiled run
  can add up the kernel time of each stage (see harness/profile/kernels.py). Wall time / kernel time per stage
  shows where a step is launch-bound.
- Peak memory per phase: `gc.collect()`, `torch.cuda.synchronize()`, `torch.cuda.empty_cache()` and
  `torch.cuda.reset_peak_memory_stats()` before the phase, `max_memory_allocated` / `max_memory_reserved` after it.
  The method string is stored with every measurement.
"""
from __future__ import annotations

import contextlib
import gc
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import torch

SPREAD_WARN_FRACTION = 0.10  # IQR / median above this gets a warning
STAGE_RANGE_PREFIX = "stage::"  # record_function names of stages; harness/profile/kernels.py finds them by it
GIB = 2**30

MEMORY_METHOD_CUDA = ("torch.cuda: gc.collect + synchronize + empty_cache + reset_peak_memory_stats before the "
                      "phase; max_memory_allocated / max_memory_reserved after it (caching-allocator counters, "
                      "this process only)")
MEMORY_METHOD_CPU = "not measured: peak memory counters exist only for CUDA devices"


class HighSpreadWarning(UserWarning):
    """Repeats disagree by more than SPREAD_WARN_FRACTION (IQR / median): the median is not trustworthy."""


# --------------------------------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class TimingStats:
    """Summary of repeated duration samples, all in milliseconds. `spread` = IQR / median (dimensionless)."""

    n: int
    median_ms: float
    q1_ms: float
    q3_ms: float
    iqr_ms: float
    min_ms: float
    max_ms: float
    mean_ms: float
    spread: float
    high_spread: bool
    samples_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def summarize_ms(samples_ms: list[float], *, spread_warn: float = SPREAD_WARN_FRACTION,
                 label: str | None = None, warn_min_ms: float = 0.0) -> TimingStats:
    """Median, quartiles (linear interpolation, inclusive method) and spread of `samples_ms` (milliseconds).

    Warns with HighSpreadWarning when IQR / median > `spread_warn` and the median is at least `warn_min_ms`
    (sub-millisecond host stages are all timer noise); `label` names the measurement in the warning.
    `high_spread` is set either way. One sample gives IQR 0 and no warning.
    """
    if not samples_ms:
        raise ValueError(f"no timing samples for {label or 'measurement'}: run at least one repeat (--repeats >= 1)")
    xs = sorted(float(x) for x in samples_ms)
    if len(xs) == 1:
        q1 = q3 = xs[0]
    else:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    median = statistics.median(xs)
    iqr = q3 - q1
    spread = iqr / median if median > 0 else 0.0
    high = spread > spread_warn
    if high and median >= warn_min_ms:
        warnings.warn(f"{label or 'timing'}: spread IQR/median = {spread:.1%} > {spread_warn:.0%} over {len(xs)} "
                      f"repeats (median {median:.3f} ms, IQR {iqr:.3f} ms); use more repeats or a quieter machine",
                      HighSpreadWarning, stacklevel=2)
    return TimingStats(n=len(xs), median_ms=median, q1_ms=q1, q3_ms=q3, iqr_ms=iqr, min_ms=xs[0], max_ms=xs[-1],
                       mean_ms=statistics.fmean(xs), spread=spread, high_spread=high, samples_ms=list(samples_ms))


# ------------------------------------------------------------------------------------------------------ clocks
def is_cuda(device: str | torch.device) -> bool:
    return torch.device(device).type == "cuda"


def synchronize(device: str | torch.device) -> None:
    """Wait for all queued work on `device` (no-op on CPU)."""
    if is_cuda(device):
        torch.cuda.synchronize(torch.device(device))


class _Mark:
    """One point in time: a recorded CUDA event, or a perf_counter reading (seconds) on CPU."""

    __slots__ = ("event", "t_s")

    def __init__(self, cuda: bool):
        if cuda:
            self.event = torch.cuda.Event(enable_timing=True)
            self.event.record()
            self.t_s = None
        else:
            self.event = None
            self.t_s = time.perf_counter()


def _elapsed_ms(start: _Mark, end: _Mark) -> float:
    if start.event is not None:
        return float(start.event.elapsed_time(end.event))  # needs a synchronize first (done in StageTimer.collect)
    return (end.t_s - start.t_s) * 1e3


def time_call_ms(fn: Callable[[], object], device: str | torch.device) -> float:
    """Wall time of one call of `fn` in ms: synchronise, perf_counter, call, synchronise, perf_counter."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return (time.perf_counter() - t0) * 1e3


def benchmark(fn: Callable[[], object], device: str | torch.device, *, warmup: int = 1, repeats: int = 5,
              label: str | None = None) -> TimingStats:
    """Run `fn` `warmup` times (discarded), then `repeats` timed calls; returns their TimingStats (ms).

    On CUDA each timed call is bracketed by CUDA events on the current stream and read after a synchronise.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"warmup must be >= 0 and repeats >= 1 (got warmup={warmup}, repeats={repeats})")
    cuda = is_cuda(device)
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        start = _Mark(cuda)
        fn()
        end = _Mark(cuda)
        synchronize(device)
        samples.append(_elapsed_ms(start, end))
    return summarize_ms(samples, label=label)


# ------------------------------------------------------------------------------------------------ stage timers
class StageTimer:
    """Per-stage timer for one pipeline call; also a stage-hook factory: `timer("vae_decode")` is a context manager.

    Each entry of a stage records a start and end mark (CUDA events on the current stream, or perf_counter) and opens
    a `record_function("stage::<name>")` range for the profiler. Stages may nest (denoise contains denoise_step) and
    repeat (one denoise_step per step). Nothing synchronises until `collect()`.

        timer = StageTimer("cuda")
        with timer("denoise"):
            for i in range(n):
                with timer("denoise_step"):
                    ...
        durations = timer.collect()   # {"denoise": [ms], "denoise_step": [ms, ms, ...]}
    """

    def __init__(self, device: str | torch.device, *, profiler_ranges: bool = True):
        self.device = torch.device(device)
        self.cuda = is_cuda(self.device)
        self.profiler_ranges = profiler_ranges
        self._marks: list[tuple[str, _Mark, _Mark]] = []

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        rf = (torch.profiler.record_function(STAGE_RANGE_PREFIX + name) if self.profiler_ranges
              else contextlib.nullcontext())
        with rf:
            start = _Mark(self.cuda)
            try:
                yield
            finally:
                self._marks.append((name, start, _Mark(self.cuda)))

    def collect(self) -> dict[str, list[float]]:
        """Synchronise, then return {stage: [duration_ms per entry, in order of completion]} and clear the marks."""
        synchronize(self.device)
        out: dict[str, list[float]] = {}
        for name, start, end in self._marks:
            out.setdefault(name, []).append(_elapsed_ms(start, end))
        self._marks.clear()
        return out


STAGE_WARN_MIN_MS = 1.0  # stages shorter than this get no spread warning (their high_spread flag is still set)


def summarize_stage_runs(runs: list[dict[str, list[float]]]) -> dict[str, dict]:
    """Combine per-run stage durations into statistics.

    `runs` is one `StageTimer.collect()` result per timed repeat. For every stage returns
    {"per_run": TimingStats of the per-run total (ms), "per_call": TimingStats over every single entry (ms),
    "calls_per_run": entries in one run}; per_call of "denoise_step" is the per-step latency.
    """
    names: list[str] = []
    for run in runs:
        names += [n for n in run if n not in names]
    out = {}
    for name in names:
        totals = [sum(run.get(name, [])) for run in runs]
        calls = [x for run in runs for x in run.get(name, [])]
        counts = sorted({len(run.get(name, [])) for run in runs})
        per_run = summarize_ms(totals, label=f"stage {name} (per run)", warn_min_ms=STAGE_WARN_MIN_MS)
        # one entry per run: per call is the same distribution, warned about once
        per_call = per_run if len(calls) == len(totals) else summarize_ms(
            calls, label=f"stage {name} (per call)", warn_min_ms=STAGE_WARN_MIN_MS)
        out[name] = {
            "per_run": per_run.to_dict(),
            "per_call": per_call.to_dict(),
            "calls_per_run": counts[0] if len(counts) == 1 else counts,
        }
    return out


# ------------------------------------------------------------------------------------------------------ memory
@dataclass
class MemoryPeak:
    """Peak CUDA memory of one phase, in GiB (None on CPU). `*_before` is what was held when the phase began."""

    phase: str
    device: str
    method: str
    allocated_before_gib: float | None = None
    reserved_before_gib: float | None = None
    peak_allocated_gib: float | None = None
    peak_reserved_gib: float | None = None
    allocated_after_gib: float | None = None
    reserved_after_gib: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def release_memory(device: str | torch.device) -> None:
    """Free what Python and the caching allocator hold and zero the peak counters, so a new phase starts clean."""
    gc.collect()
    if is_cuda(device):
        dev = torch.device(device)
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


@contextlib.contextmanager
def track_peak_memory(phase: str, device: str | torch.device) -> Iterator[MemoryPeak]:
    """Measure the peak allocated / reserved CUDA memory of the enclosed phase (see MEMORY_METHOD_CUDA).

    Yields a MemoryPeak that is filled in when the block exits. On CPU every number stays None and `method`
    says so.
    """
    dev = torch.device(device)
    if not is_cuda(dev):
        yield MemoryPeak(phase=phase, device=str(dev), method=MEMORY_METHOD_CPU)
        return
    release_memory(dev)
    peak = MemoryPeak(phase=phase, device=str(dev), method=MEMORY_METHOD_CUDA,
                      allocated_before_gib=torch.cuda.memory_allocated(dev) / GIB,
                      reserved_before_gib=torch.cuda.memory_reserved(dev) / GIB)
    try:
        yield peak
    finally:
        torch.cuda.synchronize(dev)
        peak.peak_allocated_gib = torch.cuda.max_memory_allocated(dev) / GIB
        peak.peak_reserved_gib = torch.cuda.max_memory_reserved(dev) / GIB
        peak.allocated_after_gib = torch.cuda.memory_allocated(dev) / GIB
        peak.reserved_after_gib = torch.cuda.memory_reserved(dev) / GIB
