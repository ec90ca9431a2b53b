"""GEdit aggregation rules on hand-written judgements."""
from __future__ import annotations

import math

import pytest

from harness.gedit.scoring import headline_table, sample_scores, sample_table, task_table


def _rec(arm, task, key, sc, pq, status="ok", lang="en"):
    return {"arm": arm, "task_type": task, "language": lang, "key": key, "status": status,
            "sc": {"scores": sc}, "pq": {"scores": pq}}


def test_sample_scores_min_and_geometric_mean():
    s = sample_scores([8, 6], [9, 4])
    assert s == {"SC": 6, "PQ": 4, "O": pytest.approx(math.sqrt(24))}
    assert sample_scores([5], [5])["O"] == pytest.approx(5.0)
    assert sample_scores(None, [1, 2]) is None and sample_scores([], [1]) is None


def test_headline_is_unweighted_mean_over_tasks_with_per_sample_beside():
    recs = [_rec("bf16", "color_alter", "a", [10, 10], [10, 10])]                 # one sample, O = 10
    recs += [_rec("bf16", "text_change", k, [2, 9], [2, 8]) for k in "bcd"]       # three samples, O = 2
    recs += [_rec("bf16", "text_change", "e", None, [5, 5], status="judge_failure")]
    df = sample_table(recs)
    tasks = task_table(df).set_index("task_type")
    assert tasks.loc["text_change", "n_scored"] == 3 and tasks.loc["text_change", "n_judge_failures"] == 1
    assert tasks.loc["text_change", "n_selected"] == 4
    head = headline_table(df).iloc[0]
    assert head["O"] == pytest.approx((10 + 2) / 2)               # official: unweighted over 2 task groups
    assert head["O_per_sample"] == pytest.approx((10 + 3 * 2) / 4)
    assert head["n_task_groups"] == 2 and head["n_scored"] == 4 and head["n_judge_failures"] == 1


def test_failed_samples_have_no_scores():
    df = sample_table([_rec("fp8", "ps_human", "k", [7, 7], None, status="judge_failure")])
    assert df["O"].isna().all()
    assert task_table(df).iloc[0]["n_scored"] == 0
    assert math.isnan(headline_table(df).iloc[0]["O"])
