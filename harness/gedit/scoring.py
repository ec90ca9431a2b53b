"""Official GEdit-Bench aggregation: per-sample SC / PQ / O, per-task means with n, unweighted headline.

Per sample: SC = min of the SC call's scores, PQ = min of the PQ call's scores, O = sqrt(SC * PQ), all 0-10.
A sample counts only when both calls gave valid scores; judge failures and missing images are excluded and counted.
Per task group: mean over scored samples. Headline: the UNWEIGHTED mean of the task-group means (the official rule);
the per-sample mean is reported beside it.
"""
from __future__ import annotations

import math
from typing import Iterable

import pandas as pd

METRICS = ("SC", "PQ", "O")
SAMPLE_COLUMNS = ("arm", "task_type", "language", "key", "status", "failure", "SC", "PQ", "O", "sc_scores",
                  "pq_scores", "out_of_range", "image", "judge_model", "prompt_set", "prompt_sha256")


def sample_scores(sc_scores: list[float] | None, pq_scores: list[float] | None) -> dict[str, float] | None:
    """{"SC", "PQ", "O"} of one sample from the two calls' score lists; None if either list is missing or empty."""
    if not sc_scores or not pq_scores:
        return None
    sc, pq = min(sc_scores), min(pq_scores)
    return {"SC": sc, "PQ": pq, "O": math.sqrt(sc * pq)}


def sample_table(judgements: Iterable[dict]) -> pd.DataFrame:
    """One row per (arm, sample) from judgements.jsonl records, columns SAMPLE_COLUMNS (scores NaN unless ok)."""
    rows = []
    for rec in judgements:
        sc, pq = rec.get("sc") or {}, rec.get("pq") or {}
        scores = sample_scores(sc.get("scores"), pq.get("scores")) if rec.get("status") == "ok" else None
        rows.append({
            "arm": rec["arm"], "task_type": rec["task_type"], "language": rec["language"], "key": rec["key"],
            "status": rec["status"], "failure": rec.get("failure") or "",
            **(scores or {m: float("nan") for m in METRICS}),
            "sc_scores": sc.get("scores"), "pq_scores": pq.get("scores"),
            "out_of_range": bool(rec.get("out_of_range")), "image": rec.get("image", ""),
            **{k: (rec.get("judge") or {}).get(k.replace("judge_", ""), "") for k in ("judge_model", "prompt_set",
                                                                                    "prompt_sha256")},
        })
    return pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS))


def task_table(samples: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, language, task_type): n_selected, n_scored, n_judge_failures, n_out_of_range, n_missing_image,
    n_input_errors (undecodable input image), n_not_judged (no judgement of the current images), and the SC / PQ /
    O means over scored samples (NaN when none)."""
    rows = []
    for (arm, lang, task), grp in samples.groupby(["arm", "language", "task_type"], sort=True):
        ok = grp[grp["status"] == "ok"]
        rows.append({
            "arm": arm, "language": lang, "task_type": task, "n_selected": len(grp), "n_scored": len(ok),
            "n_judge_failures": int((grp["status"] == "judge_failure").sum()),
            "n_out_of_range": int(grp["out_of_range"].sum()),
            "n_missing_image": int((grp["status"] == "missing_image").sum()),
            "n_input_errors": int((grp["status"] == "input_error").sum()),
            "n_not_judged": int((grp["status"] == "not_judged").sum()),
            **{m: float(ok[m].mean()) if len(ok) else float("nan") for m in METRICS},
        })
    return pd.DataFrame(rows)


def headline_table(samples: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, language): the official unweighted mean over task groups (SC, PQ, O) beside the per-sample mean
    (SC_per_sample, ...), with n_task_groups (groups with at least one scored sample) and n_scored."""
    tasks = task_table(samples)
    rows = []
    for (arm, lang), grp in tasks.groupby(["arm", "language"], sort=True):
        scored_tasks = grp[grp["n_scored"] > 0]
        ok = samples[(samples["arm"] == arm) & (samples["language"] == lang) & (samples["status"] == "ok")]
        rows.append({
            "arm": arm, "language": lang, "n_task_groups": len(scored_tasks), "n_scored": int(grp["n_scored"].sum()),
            "n_selected": int(grp["n_selected"].sum()), "n_judge_failures": int(grp["n_judge_failures"].sum()),
            "n_not_judged": int(grp["n_not_judged"].sum()),
            **{m: float(scored_tasks[m].mean()) if len(scored_tasks) else float("nan") for m in METRICS},
            **{f"{m}_per_sample": float(ok[m].mean()) if len(ok) else float("nan") for m in METRICS},
        })
    return pd.DataFrame(rows)
