"""What one profiling run is asked to do (the CLI fills ProfileOptions; tests build it directly)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from harness.profile.scenarios import ProfileError
from omnigen2_fp8.fp8.config import Kernel
from omnigen2_fp8.modes import AUTO_MODE, ModeChoice, choose_mode
from omnigen2_fp8.precision import RecipeError, fp8_checkpoint_mismatches, parse_recipe

UNPADDED_ARM = "fp8-nopad"  # the arm --fp8-no-pad adds: FP8 without padding, its fallback GEMMs must be flagged


@dataclass
class ProfileOptions:
    """Everything a profiling run needs (the CLI fills it; tests build it directly)."""

    scenario: str
    precisions: list[str]             # arm recipe names (omnigen2_fp8.precision), in order
    out: Path
    model: str | None = None
    synthetic: str | None = None
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    steps: int | None = None
    warmup: int = 1
    repeats: int = 3
    profile_steps: int = 2
    # how the transformer runs (omnigen2_fp8.modes): "auto" = the fastest on CUDA (compile+graphs; compile with
    # offloaded weights, with the reason), eager on a CPU; or one of MODES for every arm
    mode: str = AUTO_MODE
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
        if not self.precisions:
            raise ProfileError("no arm given; name at least one recipe (e.g. --precision bf16 fp8)")
        self.precisions = [arm_name(p) for p in self.precisions]
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
        kernel = None if self.fp8_kernel == "auto" else self.fp8_kernel
        mismatches = fp8_checkpoint_mismatches(self.model, self.precisions, kernel) if self.model else {}
        if mismatches:  # an FP8 checkpoint runs only what it was made with: a "bf16" arm would run FP8
            raise ProfileError("; ".join(f"--precision {arm} on --model {self.model}: {why}"
                                         for arm, why in mismatches.items()))
        try:  # an explicit graphs mode that cannot run here is refused before any model loads
            self.arm_mode(self.precisions[0])
        except ValueError as err:
            raise ProfileError(f"--mode {self.mode}: {err} (or leave --mode at auto, which then runs compiled "
                               "without graphs and records why)") from None

    def arm_mode(self, arm: str) -> ModeChoice:
        """How `arm`'s transformer runs under this run's --mode (omnigen2_fp8.modes.choose_mode). Every arm runs
        the same mode today (a TeaCache arm replays what it can, `caching.TeaCache`); the record keeps it per arm."""
        return choose_mode(self.mode, self.device, self.offload)


def arm_name(text: str) -> str:
    """The canonical recipe name of an arm ('fp8+teacache:0.05' -> 'fp8+teacache'); a ProfileError with the
    closest known names for an unknown one."""
    try:
        return parse_recipe(text).name
    except RecipeError as err:
        raise ProfileError(f"--precision: {err}") from None
