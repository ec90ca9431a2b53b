"""Judge calls the judge tests share: three samples (SC + PQ each) with drawn images and instructions of three lengths."""
from __future__ import annotations

from harness.gedit.data import synthetic_image
from harness.gedit.judge import JudgeCall, judge_calls_for_sample
from harness.gedit.judge_prompts import PROJECT_RUBRIC

INSTRUCTIONS = ("Add a hat.", "Make the sky a deep orange at dusk.", "Remove it.")


def sample_calls(sizes: tuple[int, int, int]) -> list[JudgeCall]:
    """Six calls: sample i has square images of sizes[i] pixels and the i-th instruction."""
    out = []
    for i, (size, instruction) in enumerate(zip(sizes, INSTRUCTIONS)):
        out += judge_calls_for_sample(f"s{i}", synthetic_image(i, size), synthetic_image(i + 7, size), instruction,
                                      PROJECT_RUBRIC)
    return out
