"""Opt-in timing for the pipeline: wall time and peak VRAM per stage (`StageClock`), seconds per step (`StepClock`).

The pipeline measures nothing by itself; pass `clock=StageClock(device)` to a call and the result carries
`stage_seconds`, `stage_peak_vram_bytes` and the call's peak. The clock synchronises CUDA before and after every
stage and resets the peak-memory counters at each stage start, so its numbers are real wall times, at the cost
of serialising CPU and GPU at stage borders (a harness timing with CUDA events should not add it).
"""
from __future__ import annotations

import contextlib
import time
from typing import Iterator

import torch


class StageClock:
    """Wall seconds and peak CUDA memory (allocated / reserved bytes) per named stage.

    Use as `with clock.stage("denoise"): ...`; read `seconds`, `peak_bytes`, `reserved_bytes` (empty off CUDA),
    `peak_allocated()` / `peak_reserved()` (max over stages, None off CUDA).
    """

    def __init__(self, device: str | torch.device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.seconds: dict[str, float] = {}
        self.peak_bytes: dict[str, int] = {}
        self.reserved_bytes: dict[str, int] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self.seconds[name] = time.perf_counter() - start
        if self.cuda:
            self.peak_bytes[name] = torch.cuda.max_memory_allocated(self.device)
            self.reserved_bytes[name] = torch.cuda.max_memory_reserved(self.device)

    def peak_allocated(self) -> int | None:
        return max(self.peak_bytes.values()) if self.cuda and self.peak_bytes else None

    def peak_reserved(self) -> int | None:
        return max(self.reserved_bytes.values()) if self.cuda and self.reserved_bytes else None


class StepClock:
    """Wall seconds of each denoising step (CUDA synchronised), to report the one-off startup cost of a fast mode.

    Pass `stage_hook=clock.stage_hook, on_step=clock` to the pipeline call: the clock starts when the denoise stage
    starts and ticks after every step.
    """

    def __init__(self, device: str | torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self.step_seconds: list[float] = []
        self._last: float | None = None

    @contextlib.contextmanager
    def stage_hook(self, stage: str) -> Iterator[None]:
        if stage == "denoise":
            if self.cuda:
                torch.cuda.synchronize()
            self._last = time.perf_counter()
        yield

    def __call__(self, index: int, num_steps: int, latents: torch.Tensor) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        if self._last is not None:
            self.step_seconds.append(now - self._last)
        self._last = now

    def startup_seconds(self) -> float | None:
        """First step minus the median of the others, in seconds (None with fewer than 3 steps)."""
        if len(self.step_seconds) < 3:
            return None
        rest = sorted(self.step_seconds[1:])
        return max(self.step_seconds[0] - rest[len(rest) // 2], 0.0)
