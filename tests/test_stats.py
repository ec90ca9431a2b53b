"""Paired deltas and bootstrap intervals: a known difference is detected, no difference is not."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from harness.gedit.stats import bootstrap_mean_ci, bootstrap_task_mean_ci, paired_deltas, verdict


def _frame(deltas_by_task, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for task, shift in deltas_by_task.items():
        for i in range(40):
            base = rng.uniform(3, 8)
            noise = rng.normal(0, 0.3)
            for arm, value in (("bf16", base), ("fp8", base + shift + noise)):
                rows.append({"arm": arm, "task_type": task, "language": "en", "key": f"{task}{i}", "status": "ok",
                             "Q_SC": value, "Q_PQ": value, "Q_O": value})
    return pd.DataFrame(rows)


def test_known_difference_is_detected():
    res = paired_deltas(_frame({"color_alter": -1.0, "text_change": -1.0}), "bf16", "fp8", n_boot=2000, seed=1)
    overall = res["languages"]["en"]["Q_O"]["overall_task_mean"]
    assert overall["delta"] == pytest.approx(-1.0, abs=0.15)
    assert overall["ci95"][1] < 0 and overall["verdict"].startswith("distinguishable")
    assert all(t["ci95"][1] < 0 for t in res["languages"]["en"]["Q_O"]["per_task"])


def test_zero_difference_is_not_detected():
    res = paired_deltas(_frame({"color_alter": 0.0, "text_change": 0.0}, seed=3), "bf16", "fp8", n_boot=2000, seed=1)
    overall = res["languages"]["en"]["Q_SC"]["overall_task_mean"]
    assert overall["ci95"][0] < 0 < overall["ci95"][1]
    assert overall["verdict"].startswith("not distinguishable")


def test_unpaired_and_failed_samples_are_left_out():
    df = _frame({"color_alter": 0.5})
    df.loc[(df["arm"] == "fp8") & (df["key"] == "color_alter0"), "status"] = "judge_failure"
    df = df[~((df["arm"] == "bf16") & (df["key"] == "color_alter1"))]
    res = paired_deltas(df, "bf16", "fp8", n_boot=200)
    assert res["languages"]["en"]["Q_O"]["overall_per_sample"]["n_pairs"] == 38


def test_bootstrap_is_seeded_and_within_task_resampling():
    values = np.arange(10.0)
    assert bootstrap_mean_ci(values, 500, seed=4) == bootstrap_mean_ci(values, 500, seed=4)
    assert bootstrap_mean_ci(np.array([1.0]), 500) is None
    # Two tasks with constant deltas: the within-task resampling cannot move the unweighted mean.
    lo, hi = bootstrap_task_mean_ci([np.full(5, 1.0), np.full(50, 3.0)], 500)
    assert lo == pytest.approx(2.0) and hi == pytest.approx(2.0)
    assert verdict(None).startswith("too few") and verdict((0.1, 0.4)).startswith("distinguishable")
