"""python -m harness: the README's main job chains gedit -> profile -> report with the flags it was given."""
from __future__ import annotations

import argparse

import pytest

from harness.__main__ import build_steps, main


def steps_for(**overrides):
    args = dict(synthetic="tiny", real=False, precision=["bf16", "fp8"], task="gedit-en-10pct",
                scenario="gedit-512", model=None, judge=None, dataset=None, viescore_file=None, device=None,
                out="runs/q", cuda_graphs=False)
    args.update(overrides)
    return [step[1:] for step in build_steps(argparse.Namespace(**args))]


def test_default_is_the_tiny_synthetic_job_and_ends_with_the_report():
    gedit, profile, report = steps_for()
    assert gedit[:2] == ["-m", "harness.gedit"] and "--synthetic" in gedit and "tiny" in gedit
    assert profile[:2] == ["-m", "harness.profile"] and ["--scenario", "gedit-512"] == profile[5:7]
    assert report == ["-m", "harness.report", "runs/q/gedit", "runs/q/profile", "-o", "runs/q/report.md"]


def test_real_run_passes_checkpoints_and_task():
    gedit, profile, _ = steps_for(real=True, model="/ckpt", judge="/judge", dataset="/data", cuda_graphs=True,
                                  viescore_file="/p/vie_prompts.py")
    assert "--synthetic" not in gedit and "--synthetic" not in profile
    for flag, value in (("--model", "/ckpt"), ("--judge", "/judge"), ("--dataset", "/data"),
                        ("--task", "gedit-en-10pct"), ("--viescore-file", "/p/vie_prompts.py")):
        assert gedit[gedit.index(flag) + 1] == value
    assert profile[profile.index("--model") + 1] == "/ckpt"
    assert "--cuda-graphs" in gedit and "--cuda-graphs" in profile


def test_checkpoint_flags_without_real_are_refused():
    with pytest.raises(SystemExit):
        main(["--model", "/ckpt"])
    with pytest.raises(SystemExit):
        main(["--viescore-file", "/p/vie_prompts.py"])
