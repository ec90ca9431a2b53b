"""`python -m harness.gedit` with several non-baseline arms (FP8 and step caches): each gets paired deltas and
fidelity to the baseline, and the synthetic warning says what step caching means on random weights."""
from __future__ import annotations

import json

import pytest

from harness.core.records import SYNTHETIC_WARNING, TAYLORSEER_SYNTHETIC_NOTE, TEACACHE_SYNTHETIC_NOTE
from harness.gedit.__main__ import main

ARMS = ["bf16", "fp8", "bf16+taylorseer", "bf16+teacache"]
GROUPS = ["color_alter", "text_change"]


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    out = tmp_path_factory.mktemp("gedit-arms")
    assert main(["--synthetic", "tiny", "--no-progress", "--bootstrap", "200", "--per-task", "1", "--tasks", *GROUPS,
                 "--languages", "en", "--precision", *ARMS, "--out", str(out)]) == 0
    return out, json.loads((out / "summary.json").read_text())


def test_every_non_baseline_arm_has_paired_deltas_and_fidelity(summary):
    _, s = summary
    assert s["baseline"] == "bf16"
    assert [d["arm"] for d in s["deltas"]] == ARMS[1:]
    for d in s["deltas"]:
        q_o = d["languages"]["en"]["Q_O"]["overall_task_mean"]
        assert d["baseline"] == "bf16" and q_o["n_pairs"] == len(GROUPS) and q_o["delta"] is not None
    assert list(s["fidelity"]) == ARMS[1:]
    for arm in ARMS[1:]:
        overall = s["fidelity"][arm]["en"]["overall_task_mean"]
        assert overall["n_task_groups"] == len(GROUPS) and overall["ssim"] is not None


def test_synthetic_warning_names_the_step_cache_caveats(summary):
    out, s = summary
    assert s["warning"].startswith(SYNTHETIC_WARNING)
    assert TEACACHE_SYNTHETIC_NOTE in s["warning"] and TAYLORSEER_SYNTHETIC_NOTE in s["warning"]
    assert TEACACHE_SYNTHETIC_NOTE in (out / "summary.md").read_text()
