"""Official GEdit-Bench aggregation (upstream `calculate_statistics.py`): per-sample Q_SC / Q_PQ / Q_O, per-task means
with n, the unweighted headline, for the fullset and for the Intersection subset, per language.

Per sample: Q_SC = min of the SC call's scores, Q_PQ = min of the PQ call's scores, Q_O = sqrt(Q_SC * Q_PQ).
A sample counts only when both calls gave valid scores; judge failures and missing images are excluded and counted.
Per (language, task group): the mean over scored samples. Headline: the UNWEIGHTED mean of the task-group means
(upstream's rule; upstream's mean is over all 11 groups, here over the groups that have a scored sample, with their
number given), the per-sample mean beside it. "Intersection" repeats all of it over the samples whose dataset flag
`Intersection_exist` is true (upstream prints both blocks).
"""
from __future__ import annotations

import math
from typing import Iterable

import pandas as pd

from harness.core.vocab import METRICS

SUBSETS = ("fullset", "intersection")
SAMPLE_COLUMNS = ("arm", "task_type", "language", "key", "intersection_exist", "status", "failure", *METRICS,
                  "sc_scores", "pq_scores", "out_of_range", "image", "judge_model", "prompt_set", "prompt_sha256",
                  "protocol")


def sample_scores(sc_scores: list[float] | None, pq_scores: list[float] | None) -> dict[str, float] | None:
    """{"Q_SC", "Q_PQ", "Q_O"} of one sample from the two calls' score lists; None if either is missing or empty."""
    if not sc_scores or not pq_scores:
        return None
    sc, pq = min(sc_scores), min(pq_scores)
    return {"Q_SC": sc, "Q_PQ": pq, "Q_O": math.sqrt(sc * pq)}


def sample_table(judgements: Iterable[dict]) -> pd.DataFrame:
    """One row per (arm, sample) from judgements.jsonl records, columns SAMPLE_COLUMNS (scores NaN unless ok).
    `intersection_exist` is the dataset's flag, recorded with each sample as "intersection"."""
    rows = []
    for rec in judgements:
        sc, pq = rec.get("sc") or {}, rec.get("pq") or {}
        scores = sample_scores(sc.get("scores"), pq.get("scores")) if rec.get("status") == "ok" else None
        judge = rec.get("judge") or {}
        rows.append({
            "arm": rec["arm"], "task_type": rec["task_type"], "language": rec["language"], "key": rec["key"],
            "intersection_exist": bool(rec.get("intersection", rec.get("intersection_exist", False))),
            "status": rec["status"], "failure": rec.get("failure") or "",
            **(scores or {m: float("nan") for m in METRICS}),
            "sc_scores": sc.get("scores"), "pq_scores": pq.get("scores"),
            "out_of_range": bool(rec.get("out_of_range")), "image": rec.get("image", ""),
            "judge_model": judge.get("model", ""), "prompt_set": judge.get("prompt_set", ""),
            "prompt_sha256": judge.get("prompt_sha256", ""), "protocol": judge.get("protocol", ""),
        })
    return pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS))


def subset_rows(samples: pd.DataFrame, subset: str) -> pd.DataFrame:
    """The samples of one block: every row ("fullset") or those with intersection_exist ("intersection")."""
    if subset == "fullset":
        return samples
    if subset == "intersection":
        return samples[samples["intersection_exist"].astype(bool)]
    raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")


def task_table(samples: pd.DataFrame, subset: str = "fullset") -> pd.DataFrame:
    """Per (arm, language, task_type) of one subset: n_selected, n_scored, n_judge_failures, n_out_of_range,
    n_missing_image, n_input_errors (undecodable input image), n_not_judged (no judgement of the current images),
    and the Q_SC / Q_PQ / Q_O means over scored samples (NaN when none)."""
    rows = []
    for (arm, lang, task), grp in subset_rows(samples, subset).groupby(["arm", "language", "task_type"], sort=True):
        ok = grp[grp["status"] == "ok"]
        rows.append({
            "subset": subset, "arm": arm, "language": lang, "task_type": task, "n_selected": len(grp),
            "n_scored": len(ok), "n_judge_failures": int((grp["status"] == "judge_failure").sum()),
            "n_out_of_range": int(grp["out_of_range"].sum()),
            "n_missing_image": int((grp["status"] == "missing_image").sum()),
            "n_input_errors": int((grp["status"] == "input_error").sum()),
            "n_not_judged": int((grp["status"] == "not_judged").sum()),
            **{m: float(ok[m].mean()) if len(ok) else float("nan") for m in METRICS},
        })
    return pd.DataFrame(rows)


def headline_table(samples: pd.DataFrame, subset: str = "fullset") -> pd.DataFrame:
    """Per (arm, language) of one subset: the unweighted mean over task groups (Q_SC, Q_PQ, Q_O) beside the
    per-sample mean (Q_SC_per_sample, ...), with n_task_groups (groups with a scored sample) and n_scored."""
    tasks = task_table(samples, subset)
    rows = []
    if not len(tasks):
        return pd.DataFrame(rows)
    chosen = subset_rows(samples, subset)
    for (arm, lang), grp in tasks.groupby(["arm", "language"], sort=True):
        scored_tasks = grp[grp["n_scored"] > 0]
        ok = chosen[(chosen["arm"] == arm) & (chosen["language"] == lang) & (chosen["status"] == "ok")]
        rows.append({
            "subset": subset, "arm": arm, "language": lang, "n_task_groups": len(scored_tasks),
            "n_scored": int(grp["n_scored"].sum()), "n_selected": int(grp["n_selected"].sum()),
            "n_judge_failures": int(grp["n_judge_failures"].sum()), "n_not_judged": int(grp["n_not_judged"].sum()),
            **{m: float(scored_tasks[m].mean()) if len(scored_tasks) else float("nan") for m in METRICS},
            **{f"{m}_per_sample": float(ok[m].mean()) if len(ok) else float("nan") for m in METRICS},
        })
    return pd.DataFrame(rows)


def official_tables(samples: pd.DataFrame) -> dict[str, dict[str, pd.DataFrame]]:
    """{subset: {"headline": headline_table, "per_task": task_table}} for the fullset and the Intersection."""
    return {subset: {"headline": headline_table(samples, subset), "per_task": task_table(samples, subset)}
            for subset in SUBSETS}
