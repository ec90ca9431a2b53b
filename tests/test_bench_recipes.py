"""benchmarks/bench_recipes.py on the tiny CPU models: every arm builds and is timed (a smoke test of the script;
its numbers mean nothing on a CPU). Arms whose model is quantized before the pipeline sees it (the benchmark's
variant words) must reach the pipeline with their own FP8 config."""
from __future__ import annotations

import json
import sys

from benchmarks import bench_recipes


def test_every_recipe_arm_builds_and_is_timed(tmp_path, monkeypatch):
    out = tmp_path / "recipes.json"
    monkeypatch.setattr(sys, "argv", [
        "bench_recipes", "--out", str(out), "--device", "cpu", "--preset", "tiny", "--sizes", "gedit-512",
        "--modes", "eager", "--recipes", "bf16", "fp8", "fp8+fp8attn", "fp8+exactaccum", "--rounds", "1",
        "--steps-per-round", "1", "--warm-steps", "1", "--edit-rounds", "0"])
    assert bench_recipes.main() == 0
    record = json.loads(out.read_text())
    size = record["sizes"]["gedit-512"]
    assert not size["failed_arms"], size["failed_arms"]
    assert set(size["ratios"]["recipes"]) == {"fp8", "fp8+fp8attn", "fp8+exactaccum"}
    assert all(arm["step_ms"] > 0 for arm in size["arms"].values())
