"""The flow-matching Euler scheduler against the official time grids (every case in scheduler_timesteps.json)."""
from __future__ import annotations

import re

import pytest
import torch

from omnigen2_fp8.scheduler import FlowMatchEulerScheduler, dynamic_shift, shift_times

from golden_cases import scheduler_grids


def test_dynamic_shift_grids_match_the_official_scheduler(golden_dir):
    grids = scheduler_grids(golden_dir)
    assert grids, "no golden scheduler cases"
    for name, expected in grids.items():
        match = re.fullmatch(r"steps(\d+)_tokens(\d+)", name)
        assert match, f"unexpected golden case name {name}"
        steps, tokens = int(match.group(1)), int(match.group(2))
        scheduler = FlowMatchEulerScheduler(dynamic_time_shift=True)
        timesteps = scheduler.set_timesteps(steps, num_tokens=tokens)
        expected = torch.tensor(expected, dtype=torch.float32)
        assert len(timesteps) == steps and scheduler.grid.shape == expected.shape
        err = (scheduler.grid - expected).abs().max() / expected.abs().max()
        assert err < 1e-4, f"{name}: relative error {err:.2e}"


def test_fixed_shift_overrides_the_dynamic_one():
    scheduler = FlowMatchEulerScheduler(dynamic_time_shift=True, time_shift=3.0)
    grid = scheduler.set_timesteps(4, num_tokens=4096)
    expected = torch.tensor([0.0, 0.25, 0.5, 0.75], dtype=torch.float64)
    expected = expected / (3 - 3 * expected + expected)
    torch.testing.assert_close(grid, expected.float())
    # m = 1 leaves the linear grid; 4096 latent pixels (a 512x512 image) give m = 1.6
    assert shift_times(torch.tensor([0.5]), 1.0).item() == 0.5
    assert dynamic_shift(4096) == pytest.approx(1.6)


def test_euler_step_reaches_the_data_in_float32_and_keeps_dtype():
    scheduler = FlowMatchEulerScheduler()
    scheduler.set_timesteps(3, num_tokens=1600)
    noise = torch.randn(1, 4, 2, 2)
    data = torch.randn(1, 4, 2, 2)
    x = noise.clone()
    for i, t in enumerate(scheduler.timesteps):
        x_t = (1 - t) * noise + t * data
        torch.testing.assert_close(x, x_t, rtol=1e-5, atol=1e-5)
        x = scheduler.step(data - noise, i, x)  # exact velocity of the straight path
    torch.testing.assert_close(x, data, rtol=1e-5, atol=1e-5)
    assert scheduler.step(torch.ones(2, dtype=torch.bfloat16), 0, torch.zeros(2, dtype=torch.bfloat16)).dtype == \
        torch.bfloat16


def test_bad_use_is_refused_with_a_fix():
    scheduler = FlowMatchEulerScheduler()
    with pytest.raises(RuntimeError, match="set_timesteps"):
        scheduler.timesteps
    with pytest.raises(ValueError, match="num_tokens"):
        scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match="positive"):
        scheduler.set_timesteps(0, num_tokens=16)
