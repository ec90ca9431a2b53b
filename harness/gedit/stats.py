"""Paired differences between two precisions with seeded bootstrap 95% confidence intervals.

Pairs are the samples (same task, language, key, hence the same source image, instruction and seed) scored in both
arms. Per task: the mean of per-sample deltas, CI by resampling pairs. Overall, official rule: the unweighted mean
over task groups of the per-task mean deltas, CI by resampling pairs WITHIN each task (tasks stay fixed, as in the
benchmark). Overall per-sample: the mean of all deltas, CI by resampling all pairs.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from harness.gedit.scoring import METRICS

N_BOOTSTRAP = 10_000
CONFIDENCE = 0.95


def bootstrap_mean_ci(values: np.ndarray, n_boot: int = N_BOOTSTRAP, seed: int = 0,
                      confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the mean of `values` [n]; None when n < 2."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    return _percentiles(means, confidence)


def bootstrap_task_mean_ci(groups: list[np.ndarray], n_boot: int = N_BOOTSTRAP, seed: int = 0,
                           confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the unweighted mean of group means, resampling within each group [n_g].

    A group of one value contributes a constant (it cannot be resampled); None when no group has 2 values.
    """
    groups = [np.asarray(g, dtype=np.float64) for g in groups if len(g)]
    if not groups or all(len(g) < 2 for g in groups):
        return None
    rng = np.random.default_rng(seed)
    total = np.zeros(n_boot)
    for g in groups:
        total += g[rng.integers(0, len(g), size=(n_boot, len(g)))].mean(axis=1)
    return _percentiles(total / len(groups), confidence)


def _percentiles(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(draws, [alpha, 1.0 - alpha])
    return float(low), float(high)


def verdict(ci: tuple[float, float] | None) -> str:
    """Plain words: does the 95% interval exclude zero?"""
    if ci is None:
        return "too few paired samples for an interval"
    if ci[0] > 0 or ci[1] < 0:
        return "distinguishable from zero (the 95% interval excludes 0)"
    return "not distinguishable from zero (the 95% interval includes 0)"


def paired_frame(samples: pd.DataFrame, baseline: str, arm: str, metric: str) -> pd.DataFrame:
    """Rows scored in both arms: task_type, language, key, base, other, delta (= other - base)."""
    cols = ["task_type", "language", "key", metric]
    ok = samples[samples["status"] == "ok"]
    base = ok[ok["arm"] == baseline][cols].rename(columns={metric: "base"})
    other = ok[ok["arm"] == arm][cols].rename(columns={metric: "other"})
    pairs = base.merge(other, on=["task_type", "language", "key"], how="inner")
    pairs["delta"] = pairs["other"] - pairs["base"]
    return pairs


def paired_deltas(samples: pd.DataFrame, baseline: str, arm: str, n_boot: int = N_BOOTSTRAP,
                  seed: int = 0) -> dict:
    """`arm` minus `baseline` for Q_SC, Q_PQ, Q_O, per language: per task and overall (task-mean and per-sample).

    Returns {"baseline", "arm", "n_bootstrap", "seed", "confidence", "languages": {lang: {metric: {
      "per_task": [{"task_type", "n_pairs", "delta", "ci95", "verdict"}],
      "overall_task_mean": {"n_pairs", "n_task_groups", "delta", "ci95", "verdict"},
      "overall_per_sample": {"n_pairs", "delta", "ci95", "verdict"}}}}}. Seeds differ per metric/task but are
    derived from `seed`, so reruns give the same intervals.
    """
    out: dict = {"baseline": baseline, "arm": arm, "n_bootstrap": n_boot, "seed": seed, "confidence": CONFIDENCE,
                 "languages": {}}
    for lang in sorted(samples["language"].unique()):
        per_lang = samples[samples["language"] == lang]
        out["languages"][lang] = {}
        for m_index, metric in enumerate(METRICS):
            pairs = paired_frame(per_lang, baseline, arm, metric)
            per_task, groups = [], []
            for t_index, (task, grp) in enumerate(pairs.groupby("task_type", sort=True)):
                deltas = grp["delta"].to_numpy()
                ci = bootstrap_mean_ci(deltas, n_boot, seed + 1000 * m_index + t_index + 1)
                per_task.append({"task_type": task, "n_pairs": len(deltas), "delta": float(deltas.mean()),
                                 "ci95": list(ci) if ci else None, "verdict": verdict(ci)})
                groups.append(deltas)
            task_ci = bootstrap_task_mean_ci(groups, n_boot, seed + 1000 * m_index)
            all_deltas = pairs["delta"].to_numpy()
            sample_ci = bootstrap_mean_ci(all_deltas, n_boot, seed + 1000 * m_index + 999)
            out["languages"][lang][metric] = {
                "per_task": per_task,
                "overall_task_mean": {"n_pairs": len(all_deltas), "n_task_groups": len(groups),
                                      "delta": float(np.mean([g.mean() for g in groups])) if groups else None,
                                      "ci95": list(task_ci) if task_ci else None, "verdict": verdict(task_ci)},
                "overall_per_sample": {"n_pairs": len(all_deltas),
                                       "delta": float(all_deltas.mean()) if len(all_deltas) else None,
                                       "ci95": list(sample_ci) if sample_ci else None, "verdict": verdict(sample_ci)},
            }
    return out
