"""GEdit aggregation rules on hand-written judgements: min per call, sqrt per sample, unweighted task mean, the
fullset and Intersection blocks per language."""
from __future__ import annotations

import math

import pytest

from harness.gedit.scoring import headline_table, official_tables, sample_scores, sample_table, task_table


def _rec(arm, task, key, sc, pq, status="ok", lang="en", intersection=False):
    return {"arm": arm, "task_type": task, "language": lang, "key": key, "status": status, "intersection": intersection,
            "sc": {"scores": sc}, "pq": {"scores": pq}, "judge": {"protocol": "gedit-v1", "prompt_set": "viescore"}}


def test_sample_scores_min_and_geometric_mean():
    s = sample_scores([8, 6], [9, 4])
    assert s == {"Q_SC": 6, "Q_PQ": 4, "Q_O": pytest.approx(math.sqrt(24))}
    assert sample_scores([5], [5])["Q_O"] == pytest.approx(5.0)
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
    assert head["Q_O"] == pytest.approx((10 + 2) / 2)               # official: unweighted over 2 task groups
    assert head["Q_O_per_sample"] == pytest.approx((10 + 3 * 2) / 4)
    assert head["n_task_groups"] == 2 and head["n_scored"] == 4 and head["n_judge_failures"] == 1


def test_failed_samples_have_no_scores():
    df = sample_table([_rec("fp8", "ps_human", "k", [7, 7], None, status="judge_failure")])
    assert df["Q_O"].isna().all()
    assert task_table(df).iloc[0]["n_scored"] == 0
    assert math.isnan(headline_table(df).iloc[0]["Q_O"])


def test_fullset_and_intersection_blocks_per_language():
    o_a = math.sqrt(6 * 4)
    recs = [
        _rec("bf16", "color_alter", "a", [8, 6], [9, 4], intersection=True),      # 6, 4, sqrt(24)
        _rec("bf16", "color_alter", "b", [10, 10], [10, 10]),                     # 10, 10, 10; not in Intersection
        _rec("bf16", "text_change", "c", [2, 9], [2, 8], intersection=True),      # 2, 2, 2
        _rec("bf16", "text_change", "d", None, None, status="judge_failure", intersection=True),
        _rec("bf16", "color_alter", "a", [5], [5], lang="cn", intersection=True),  # 5, 5, 5
    ]
    df = sample_table(recs)
    assert df["intersection_exist"].tolist() == [True, False, True, True, True]
    assert set(df["protocol"]) == {"gedit-v1"}
    blocks = official_tables(df)
    full = blocks["fullset"]["headline"].set_index("language")
    assert full.loc["en", "Q_SC"] == pytest.approx((8 + 2) / 2)          # color_alter (6+10)/2 = 8, text_change 2
    assert full.loc["en", "Q_PQ"] == pytest.approx((7 + 2) / 2)
    assert full.loc["en", "Q_O"] == pytest.approx(((o_a + 10) / 2 + 2) / 2)
    assert full.loc["en", "n_selected"] == 4 and full.loc["en", "n_scored"] == 3
    inter = blocks["intersection"]["headline"].set_index("language")
    assert inter.loc["en", "Q_SC"] == pytest.approx((6 + 2) / 2)          # b left out; d failed
    assert inter.loc["en", "Q_O"] == pytest.approx((o_a + 2) / 2)
    assert inter.loc["en", "n_selected"] == 3 and inter.loc["en", "n_scored"] == 2
    assert inter.loc["cn", "Q_PQ"] == pytest.approx(5.0) and set(inter["subset"]) == {"intersection"}
    per_task = blocks["intersection"]["per_task"].set_index(["language", "task_type"])
    assert per_task.loc[("en", "color_alter"), "Q_PQ"] == pytest.approx(4.0)
    assert per_task.loc[("en", "text_change"), "n_judge_failures"] == 1
