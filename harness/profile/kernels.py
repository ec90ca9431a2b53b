"""Kernel profiles: torch.profiler capture, the flattened calls, top-kernel table, category roll-up.

What is counted
- CUDA runs: device kernels (and memcpy / memset) launched while a `stage::denoise_step` range was open
  (harness.core.timing.StageTimer opens these ranges), with their self time on the GPU. Each kernel is attributed to the
  CPU op that launched it (aten::_scaled_mm, aten::addmm, ...) and to the enclosing layer range (`layer::<fqn>`,
  opened around every linear layer of the transformer by the library's `omnigen2_fp8.profiling.layer_ranges`).
- CPU runs (CI): there are no kernels, so the rows are the leaf CPU ops (aten::_scaled_mm, aten::mm, ...) with
  their self CPU time. Everything else works the same way.

Categories: harness/profile/taxonomy.py. Fallback detector: harness/profile/fallbacks.py.
"""
from __future__ import annotations

import bisect
import contextlib
import csv
import io
import os
import re
import sys
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Literal

import torch

from harness.core.records import write_text_atomic
from harness.core.timing import STAGE_RANGE_PREFIX
from harness.core.vocab import KERNEL_CATEGORIES as CATEGORIES
from harness.core.vocab import STEP_STAGE
from harness.profile.taxonomy import ATTENTION_OPS, FP8_GEMM_OPS, HP_GEMM_OPS, categorize
from omnigen2_fp8.profiling import LAYER_RANGE_PREFIX


# ---------------------------------------------------------------------------------------------- capture + parse
@dataclass
class KernelCall:
    """One kernel (CUDA) or leaf op (CPU) execution, in microseconds."""

    name: str
    op: str | None          # launching CPU op (CUDA); None on CPU
    layer: str | None       # innermost enclosing layer range (fqn), if any
    stage: str | None       # innermost enclosing stage range, if any
    step: int | None        # index of the enclosing denoise_step range among all of them, if any
    duration_us: float
    in_attention: bool = False  # launched inside an attention op (e.g. the bmm of SDPA's math path)


@dataclass
class ProfileCapture:
    """Flattened profiler output of one profiled run."""

    device_kind: Literal["cuda", "cpu"]
    calls: list[KernelCall]
    stage_wall_us: dict[str, list[float]]                  # stage -> CPU-side range durations (us)
    stage_kernel_us: dict[str, list[float]]                # stage -> summed kernel (self) time per range entry
    gemm_ops: list[tuple[str, str | None, int | None]]     # (op name, layer fqn, step) of every GEMM CPU op
    steps: int                                             # number of denoise_step ranges seen
    # CUDA: device time of every kernel / memcpy the profiler saw, attributed to a CPU op or not (us); None on CPU.
    # calls cover device_total_us unless the profiler failed to link some kernels to the op that launched them.
    device_total_us: float | None = None

    @property
    def coverage(self) -> float | None:
        """Fraction of the device time seen that is attributed to an op (CUDA); None on CPU."""
        if not self.device_total_us:
            return None
        return sum(c.duration_us for c in self.calls) / self.device_total_us

    @property
    def time_unit(self) -> str:
        return "self CUDA time" if self.device_kind == "cuda" else "self CPU time"


def profiler_activities(device: str | torch.device) -> list:
    acts = [torch.profiler.ProfilerActivity.CPU]
    if torch.device(device).type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    return acts


@contextlib.contextmanager
def capture(device: str | torch.device, log: str | Path | None = None) -> Iterator[torch.profiler.profile]:
    """A torch.profiler session for `device` (CPU ops, plus CUDA kernels on a CUDA device).

    log: a file that receives this process's stderr while the profiler starts and stops (its C++ layer prints
    "USDT: ... profiler_start" and driver probes there, past Python's logging); None leaves stderr alone.
    """
    with stderr_to(log) if log else contextlib.nullcontext():
        prof = torch.profiler.profile(activities=profiler_activities(device), record_shapes=False)
        prof.__enter__()
    try:
        yield prof
    finally:
        with stderr_to(log) if log else contextlib.nullcontext():
            prof.__exit__(None, None, None)


@contextlib.contextmanager
def stderr_to(path: str | Path) -> Iterator[None]:
    """Send file descriptor 2 (stderr of Python and of C++ libraries alike) to the end of `path` for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as f:
            os.dup2(f.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def parse_profile(prof: torch.profiler.profile, device: str | torch.device) -> ProfileCapture:
    """Flatten the profiler's events into KernelCalls with stage / step / layer context.

    Pass 1 walks the CPU event tree: the profiler attaches each kernel to the op that launched it. Pass 2 takes
    the device kernels it could not link to an op (Triton kernels launched from Python, e.g. the fused FP8
    quantization) and places each one by the CPU time of its launch call (cuLaunchKernel...) inside our
    stage / layer ranges.
    """
    kind = torch.device(device).type
    with warnings.catch_warnings():  # torch notes that events of earlier profiler cycles are dropped; we use one
        warnings.filterwarnings("ignore", message=".*Profiler clears events")
        all_events = list(prof.events())
    cpu_events = [e for e in all_events if e.device_type == torch.autograd.DeviceType.CPU]
    roots = [e for e in cpu_events if e.cpu_parent is None]
    calls: list[KernelCall] = []
    gemm_ops: list[tuple[str, str | None, int | None]] = []
    stage_records: list[dict] = []   # one per stage range entry: stage, start/end (us), wall, kernel
    layer_spans: list[tuple[float, float, str]] = []
    step_counter = [0]

    def visit(evt, stage, step, layer, in_op, in_attn=False) -> float:
        """Add evt's subtree to `calls`; returns its summed kernel (CUDA) or CPU (CPU) time in us.

        in_op: inside an attention or FP8 GEMM op, or a GEMM already counted (nested GEMM ops are its internals).
        """
        name = evt.name
        own = 0.0
        record = None
        if name.startswith(STAGE_RANGE_PREFIX):
            stage = name[len(STAGE_RANGE_PREFIX):]
            if stage == STEP_STAGE:
                step = step_counter[0]
                step_counter[0] += 1
            record = {"stage": stage, "step": step, "start": evt.time_range.start, "end": evt.time_range.end,
                      "wall": float(evt.cpu_time_total), "kernel": 0.0}
            stage_records.append(record)
        elif name.startswith(LAYER_RANGE_PREFIX):
            layer = name[len(LAYER_RANGE_PREFIX):]
            layer_spans.append((evt.time_range.start, evt.time_range.end, layer))
        elif not in_op:
            fp8_gemm = bool(FP8_GEMM_OPS.search(name))
            # Composite ops (linear -> addmm, matmul -> mm) are counted once, at the innermost GEMM op.
            hp_gemm = bool(HP_GEMM_OPS.search(name)) and not any(
                HP_GEMM_OPS.search(c.name) or FP8_GEMM_OPS.search(c.name) for c in _descendants(evt))
            attention = bool(ATTENTION_OPS.search(name))
            in_attn = in_attn or attention
            if fp8_gemm or hp_gemm:
                gemm_ops.append((name, layer, step))
            terminal = fp8_gemm or hp_gemm or attention
            if kind == "cpu" and terminal:
                # CPU: a GEMM / attention op is one "kernel" with its inclusive time (CPU _scaled_mm runs mm inside).
                own = float(evt.cpu_time_total)
                calls.append(KernelCall(name, None, layer, stage, step, own, attention))
                return own
            in_op = terminal
            if kind == "cpu":  # other ops: self time only, children are visited below
                own = float(evt.self_cpu_time_total)
                calls.append(KernelCall(name, None, layer, stage, step, own, in_attn))
        elif kind == "cpu":
            own = float(evt.self_cpu_time_total)
            calls.append(KernelCall(name, None, layer, stage, step, own, in_attn))
        if kind == "cuda":
            for k in evt.kernels:  # attached by the profiler to the innermost op / range open at launch time
                calls.append(KernelCall(k.name, name, layer, stage, step, float(k.duration), in_attn))
                own += float(k.duration)
        total = own + sum(visit(c, stage, step, layer, in_op, in_attn) for c in evt.cpu_children)
        if record is not None:
            record["kernel"] = total
        return total

    for root in sorted(roots, key=lambda e: e.time_range.start):
        visit(root, None, None, None, False)
    device_total = None
    if kind == "cuda":
        device_events = [e for e in all_events if e.device_type != torch.autograd.DeviceType.CPU
                         and not e.name.startswith((STAGE_RANGE_PREFIX, LAYER_RANGE_PREFIX))]
        device_total = sum(e.time_range.elapsed_us() for e in device_events)
        _place_unlinked_kernels(device_events, cpu_events, stage_records, layer_spans, calls)
    stage_wall: dict[str, list[float]] = defaultdict(list)
    stage_kernel: dict[str, list[float]] = defaultdict(list)
    for rec in stage_records:
        stage_wall[rec["stage"]].append(rec["wall"])
        stage_kernel[rec["stage"]].append(rec["kernel"])
    return ProfileCapture(device_kind=kind, calls=calls, stage_wall_us=dict(stage_wall),
                          stage_kernel_us=dict(stage_kernel), gemm_ops=gemm_ops, steps=step_counter[0],
                          device_total_us=device_total)


LAUNCH_CALL = re.compile(r"^cu(da)?[A-Za-z]*Launch")  # cudaLaunchKernel, cuLaunchKernelEx, cudaGraphLaunch


def _place_unlinked_kernels(device_events: list, cpu_events: list, stage_records: list[dict],
                            layer_spans: list[tuple[float, float, str]], calls: list[KernelCall]) -> None:
    """Add the kernels the profiler attached to no op, placed by the CPU time of their launch call.

    A kernel is attached when its linked correlation id is the id of a CPU op; the others are looked up by their
    own correlation id among the launch calls (cuLaunchKernel, cudaLaunchKernel...). Without a launch call, the
    kernel's start time on the GPU places it in a stage (not a layer: the GPU may run behind the CPU).
    """
    unlinked = _unattached(device_events, cpu_events)
    if not unlinked:
        return
    launches = {e.id: e for e in cpu_events if LAUNCH_CALL.search(e.name)}
    stages = sorted(stage_records, key=lambda r: r["start"])
    layers = sorted(layer_spans)
    layer_starts = [span[0] for span in layers]
    for d in unlinked:
        launch = launches.get(d.id)
        t = launch.time_range.start if launch is not None else d.time_range.start
        duration = float(d.time_range.elapsed_us())
        containing = [r for r in stages if r["start"] <= t <= r["end"]]
        for r in containing:  # nested stages (denoise > denoise_step) all contain the kernel's time
            r["kernel"] += duration
        inner = max(containing, key=lambda r: r["start"]) if containing else None
        step = next((r["step"] for r in containing if r["stage"] == STEP_STAGE), None)
        layer = None
        if launch is not None:
            i = bisect.bisect_right(layer_starts, t) - 1
            if i >= 0 and layers[i][1] >= t:  # linear layers do not nest: the last one started is the only candidate
                layer = layers[i][2]
        calls.append(KernelCall(d.name, LAYER_RANGE_PREFIX + layer if layer else None, layer,
                                inner["stage"] if inner else None, step, duration))


def _unattached(device_events: list, cpu_events: list) -> list:
    """The device events pass 1 did not see (attached to no CPU op's `kernels`).

    torch >= 2.12 keeps each event's linked correlation id (attached = linked to a CPU op's id); older releases do
    not, so the attached (name, duration) pairs are matched off against the device events instead.
    """
    if device_events and hasattr(device_events[0], "linked_correlation_id"):
        op_ids = {e.id for e in cpu_events if e.linked_correlation_id == 0 and not e.is_async and e.id}
        return [d for d in device_events if d.linked_correlation_id not in op_ids]
    attached: dict[tuple[str, float], int] = defaultdict(int)
    for e in cpu_events:
        for k in e.kernels:
            attached[(k.name, round(float(k.duration), 3))] += 1
    out = []
    for d in device_events:
        key = (d.name, round(float(d.time_range.elapsed_us()), 3))
        if attached[key] > 0:
            attached[key] -= 1
        else:
            out.append(d)
    return out


def _descendants(evt) -> Iterator:
    for c in evt.cpu_children:
        yield c
        yield from _descendants(c)


# ---------------------------------------------------------------------------------------------- tables
@dataclass
class KernelRow:
    """One row of the top-kernel table: all calls of one kernel name in the profiled denoising steps."""

    name: str
    category: str
    calls: int
    total_us: float
    share: float              # fraction of all kernel time in the profiled steps
    calls_per_step: float
    us_per_step: float
    launched_by: str | None   # most frequent launching CPU op (CUDA)


def step_calls(capture: ProfileCapture) -> list[KernelCall]:
    """The calls made inside denoise_step ranges (all calls when the run had no step ranges)."""
    inside = [c for c in capture.calls if c.step is not None]
    return inside if capture.steps else list(capture.calls)


def kernel_table(capture: ProfileCapture, fp8_layers: set[str] | frozenset = frozenset()) -> list[KernelRow]:
    """Top kernels (CUDA) / ops (CPU) of the profiled denoising steps, by total self time, largest first.

    Calls are categorised one by one (the same kernel can be FP8 overhead inside an FP8 layer and plain
    elementwise work elsewhere) and grouped by (name, category).
    """
    calls = step_calls(capture)
    total = sum(c.duration_us for c in calls) or 1.0
    steps = max(capture.steps, 1)
    groups: dict[tuple[str, str], list[KernelCall]] = defaultdict(list)
    for c in calls:
        groups[(c.name, categorize(c.name, c.op, in_fp8_layer=c.layer in fp8_layers,
                                   in_attention=c.in_attention))].append(c)
    rows = []
    for (name, category), cs in groups.items():
        t = sum(c.duration_us for c in cs)
        ops: dict[str, int] = defaultdict(int)
        for c in cs:
            if c.op:
                ops[c.op] += 1
        rows.append(KernelRow(name=name, category=category, calls=len(cs), total_us=t, share=t / total,
                              calls_per_step=len(cs) / steps, us_per_step=t / steps,
                              launched_by=max(ops, key=ops.get) if ops else None))
    rows.sort(key=lambda r: r.total_us, reverse=True)
    return rows


def category_rollup(rows: list[KernelRow], steps: int) -> dict[str, dict]:
    """category -> {total_us, us_per_step, share, calls, kernels}; every category is present (zeros included)."""
    total = sum(r.total_us for r in rows) or 1.0
    out = {c: {"total_us": 0.0, "us_per_step": 0.0, "share": 0.0, "calls": 0, "kernels": 0} for c in CATEGORIES}
    for r in rows:
        d = out[r.category]
        d["total_us"] += r.total_us
        d["calls"] += r.calls
        d["kernels"] += 1
    for d in out.values():
        d["share"] = d["total_us"] / total
        d["us_per_step"] = d["total_us"] / max(steps, 1)
    return out


def stage_kernel_summary(capture: ProfileCapture) -> dict[str, dict]:
    """stage -> {entries, wall_us (CPU-side range time), kernel_us (summed kernel/self time), kernel_over_wall}."""
    out = {}
    for stage, kern in capture.stage_kernel_us.items():
        wall = capture.stage_wall_us.get(stage, [])
        w, k = sum(wall), sum(kern)
        out[stage] = {"entries": len(kern), "wall_us": w, "kernel_us": k,
                      "kernel_over_wall": (k / w) if w > 0 else None}
    return out


def write_kernel_csv(path: str | Path, rows: list[KernelRow]) -> None:
    """kernels_<arm>.csv: one row per kernel name (columns = KernelRow fields), atomically."""
    buf = io.StringIO()
    names = list(KernelRow.__dataclass_fields__)
    writer = csv.DictWriter(buf, fieldnames=names)
    writer.writeheader()
    for r in rows:
        d = asdict(r)
        d["total_us"] = f"{r.total_us:.3f}"
        d["share"] = f"{r.share:.6f}"
        d["calls_per_step"] = f"{r.calls_per_step:.3f}"
        d["us_per_step"] = f"{r.us_per_step:.3f}"
        writer.writerow(d)
    write_text_atomic(path, buf.getvalue())



def export_trace(prof: torch.profiler.profile, path: str | Path) -> Path:
    """Write a Chrome trace (open in ui.perfetto.dev or chrome://tracing); a `.gz` suffix compresses it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(path))
    return path
