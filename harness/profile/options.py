"""What one profiling run is asked to do (the CLI fills ProfileOptions; tests build it directly)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from harness.profile.scenarios import ProfileError
from omnigen2_fp8.fp8.config import Kernel

ARM_NAMES = ("bf16", "fp8", "fp8-nopad")


@dataclass
class ProfileOptions:
    """Everything a profiling run needs (the CLI fills it; tests build it directly)."""

    scenario: str
    precisions: list[str]
    out: Path
    model: str | None = None
    synthetic: str | None = None
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    steps: int | None = None
    warmup: int = 1
    repeats: int = 3
    profile_steps: int = 2
    compile: bool = False
    cuda_graphs: bool = False
    offload: bool = False
    trace: bool = False
    fp8_kernel: str = "auto"
    progress: bool = True
    seed: int = 0
    argv: list[str] | None = None  # the CLI arguments, recorded as the invocation

    def validate(self) -> None:
        if (self.model is None) == (self.synthetic is None):
            raise ProfileError("give exactly one of --model PATH|HUB_ID (real weights) or --synthetic {tiny,full} "
                               "(random weights)")
        if self.synthetic not in (None, "tiny", "full"):
            raise ProfileError(f"--synthetic must be tiny or full, got {self.synthetic!r}")
        bad = [p for p in self.precisions if p not in ARM_NAMES]
        if bad or not self.precisions:
            raise ProfileError(f"unknown precision(s) {bad}; choose from {list(ARM_NAMES)} (e.g. --precision bf16 fp8)")
        if len(set(self.precisions)) != len(self.precisions):
            raise ProfileError(f"--precision lists an arm twice: {self.precisions}")
        if self.warmup < 0 or self.repeats < 1 or self.profile_steps < 0:
            raise ProfileError(f"need --warmup >= 0, --repeats >= 1, --profile-steps >= 0 (got {self.warmup}, "
                               f"{self.repeats}, {self.profile_steps})")
        dev = torch.device(self.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ProfileError(f"--device {self.device} asked for, but this machine has no CUDA GPU; use --device cpu")
        if self.fp8_kernel not in [k.value for k in Kernel]:
            raise ProfileError(f"--fp8-kernel {self.fp8_kernel!r} is not one of {[k.value for k in Kernel]}")
