"""Flow-matching Euler scheduler of OmniGen2: a shifted linear time grid and plain Euler steps in float32.

Time runs from 0 (pure noise) to 1 (data); the model predicts the velocity dx/dt. The grid is
t_i = i / N (i = 0..N-1) bent towards the noise end by t' = t / (m - m*t + t): larger m spends more steps at
high noise. OmniGen2 picks m from the resolution (dynamic shift, m = sqrt(latent_h * latent_w) / 40, so 1 at
320x320 pixels and 3.2 at 1024x1024); a fixed m (the authors used 3.0 for GEdit-Bench) is the other option.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def shift_times(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Apply the time shift t / (m - m*t + t) with m = `shift` (m = 1 leaves t unchanged)."""
    return t / (shift - shift * t + t)


def dynamic_shift(num_tokens: int) -> float:
    """The resolution-dependent shift m = sqrt(num_tokens) / 40; num_tokens = latent_h * latent_w (before patchify)."""
    return math.sqrt(num_tokens) / 40.0


@dataclass
class FlowMatchEulerScheduler:
    """Euler integration of the flow from t = 0 (noise) to t = 1 (data).

    dynamic_time_shift: shift the grid by the resolution (the released scheduler/ config sets it).
    time_shift: a fixed shift m used instead (when not None), whatever `dynamic_time_shift` says.
    """

    dynamic_time_shift: bool = True
    time_shift: float | None = None
    num_train_timesteps: int = 1000

    def __post_init__(self):
        self.grid: torch.Tensor | None = None  # [N + 1] float32, ends with 1.0

    @classmethod
    def from_config(cls, config: dict, time_shift: float | None = None) -> "FlowMatchEulerScheduler":
        """From a `scheduler/scheduler_config.json` dict; keys other than the ones used here are ignored."""
        return cls(dynamic_time_shift=bool(config.get("dynamic_time_shift", True)), time_shift=time_shift,
                   num_train_timesteps=int(config.get("num_train_timesteps", 1000)))

    def set_timesteps(self, num_steps: int, num_tokens: int | None = None, device: str | torch.device = "cpu",
                      time_shift: float | None = None) -> torch.Tensor:
        """Build the time grid for `num_steps` Euler steps and return the N step times ([N] float32).

        num_tokens: latent_h * latent_w of the image being generated (needed for the dynamic shift).
        time_shift: a fixed shift for this call, overriding the scheduler's own setting.
        """
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
        shift = time_shift if time_shift is not None else self.time_shift
        t = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)[:-1]
        if shift is not None:
            if shift <= 0:
                raise ValueError(f"time_shift must be positive, got {shift}")
            t = shift_times(t, shift)
        elif self.dynamic_time_shift:
            if num_tokens is None or num_tokens < 1:
                raise ValueError("the dynamic time shift needs num_tokens = latent_h * latent_w; pass it, or use "
                                 "a fixed time_shift")
            t = shift_times(t, dynamic_shift(num_tokens))
        # Official grids are float32; the final 1.0 makes the last step land on the data.
        self.grid = torch.cat([t.float(), torch.ones(1, dtype=torch.float32)]).to(device)
        return self.timesteps

    @property
    def timesteps(self) -> torch.Tensor:
        """The N step times, [N] float32 (without the final 1.0)."""
        return self._require_grid()[:-1]

    @property
    def num_steps(self) -> int:
        return len(self._require_grid()) - 1

    def step(self, velocity: torch.Tensor, step_index: int, latents: torch.Tensor) -> torch.Tensor:
        """One Euler step x + (t_{i+1} - t_i) * v, computed in float32 and returned in the latents' dtype."""
        grid = self._require_grid()
        if not 0 <= step_index < len(grid) - 1:
            raise IndexError(f"step_index {step_index} is outside 0..{len(grid) - 2}")
        dt = grid[step_index + 1] - grid[step_index]
        return (latents.float() + dt.to(latents.device) * velocity.float()).to(latents.dtype)

    def _require_grid(self) -> torch.Tensor:
        if self.grid is None:
            raise RuntimeError("call set_timesteps(num_steps, num_tokens) before using the scheduler")
        return self.grid
