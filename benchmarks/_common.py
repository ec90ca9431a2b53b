"""Builders and timers every benchmark shares (run benchmarks from the repository root: python -m benchmarks.NAME)."""
from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

from omnigen2_fp8 import OmniGen2Transformer, TransformerConfig
from omnigen2_fp8.fp8.kernels import LaunchConfig

REPO_ROOT = Path(__file__).resolve().parents[1]


def build_model(device: str, dtype: torch.dtype, preset: str = "omnigen2") -> OmniGen2Transformer:
    """A model with random weights made directly on the device (no CPU init, no checkpoint)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = OmniGen2Transformer(TransformerConfig.from_name(preset))
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def cuda_event_ms(fn, warmup: int = 5, repeats: int = 30) -> float:
    """Median ms of fn() between CUDA events, synchronised after each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def time_forward(model, inputs, device: str, warmup: int, repeats: int) -> dict:
    """Median and spread of whole-forward times (CUDA events, perf_counter on a CPU); the first of the `warmup`
    untimed calls is reported as `first_call_s` (compilation, autotuning, lazy initialisation)."""
    with torch.inference_mode():
        t0 = time.perf_counter()
        model(*inputs)
        sync(device)
        first_s = time.perf_counter() - t0
        for _ in range(warmup - 1):
            model(*inputs)
        sync(device)
        times = []
        for _ in range(repeats):
            if str(device).startswith("cuda"):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model(*inputs)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t = time.perf_counter()
                model(*inputs)
                times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    q1, med, q3 = times[len(times) // 4], times[len(times) // 2], times[(3 * len(times)) // 4]
    return {"median_ms": med, "q1_ms": q1, "q3_ms": q3, "min_ms": times[0], "repeats": repeats,
            "iqr_over_median": (q3 - q1) / med, "first_call_s": first_s}


def run_keeping_partial(run: Callable[[], None], record: dict, out: str | Path) -> None:
    """Run a benchmark that fills `record`; if it fails, write what was measured with the error, then re-raise."""
    from harness.core.records import write_json_atomic  # the benchmarks' one JSON writer (atomic)

    try:
        run()
    except Exception as err:  # keep what was measured, and say what failed
        record["error"] = f"{type(err).__name__}: {err}"
        record["traceback"] = traceback.format_exc()
        write_json_atomic(out, record)
        raise


def cuda_kernel_times(prof) -> dict[str, list]:
    """Kernel name -> [calls, summed device ms] over the CUDA events of a finished torch.profiler run."""
    per_kernel: dict[str, list] = {}
    for evt in prof.events():
        if evt.device_type != torch.autograd.DeviceType.CUDA:
            continue
        entry = per_kernel.setdefault(evt.name, [0, 0.0])
        entry[0] += 1
        entry[1] += (evt.device_time if hasattr(evt, "device_time") else evt.cuda_time) / 1e3
    return per_kernel


def top_kernels(per_kernel: dict[str, list], n: int) -> list[dict]:
    """The `n` kernels with the most device time, as JSON rows (name cut to 160 characters)."""
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1][1])[:n]
    return [{"name": name[:160], "calls": calls, "ms": ms} for name, (calls, ms) in top]


def read_launch_table(path: str | Path) -> tuple[LaunchConfig, list]:
    """The quantization-kernel launches that bench_fp8_layers --launch-out wrote: rows [K, swiglu, block_k,
    num_warps, stages] -> (LaunchConfig, the rows as read, for the result record)."""
    rows = json.loads(Path(path).read_text())["launch"]
    return LaunchConfig.from_table({(k, bool(swiglu)): tuple(launch) for k, swiglu, *launch in rows}), rows
