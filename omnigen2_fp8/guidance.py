"""Classifier-free guidance of the OmniGen2 edit pipeline, as pure functions.

Three branches, each a separate transformer pass at batch 1:
  cond   = (prompt,          reference images)
  ref    = (negative prompt, reference images)
  uncond = (negative prompt, no reference images)
With both scales above 1: v = v_uncond + ig * (v_ref - v_uncond) + tg * (v_cond - v_ref).
With only the text scale above 1 (no references, or image guidance 1): v = v_uncond + tg * (v_cond - v_uncond),
where uncond has no references, as in the official pipeline. Otherwise v = v_cond (one pass).
Guidance applies only while cfg_range[0] <= i / N <= cfg_range[1]; outside, both scales are 1.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

MIN_GUIDANCE, MAX_GUIDANCE = 1.0, 30.0
COND, REF, UNCOND = "cond", "ref", "uncond"


class GuidanceScales(NamedTuple):
    text: float
    image: float


def check_guidance(text_guidance: float, image_guidance: float, cfg_range: tuple[float, float]) -> None:
    """Raise ValueError naming the fix when a guidance setting is out of range."""
    for name, value in (("text guidance", text_guidance), ("image guidance", image_guidance)):
        if not MIN_GUIDANCE <= float(value) <= MAX_GUIDANCE:
            raise ValueError(f"{name} {value} is outside [{MIN_GUIDANCE}, {MAX_GUIDANCE}]; 1 disables guidance, "
                             "the official settings use 4-5 (text) and 1-2 (image)")
    if len(cfg_range) != 2 or not 0.0 <= cfg_range[0] <= cfg_range[1] <= 1.0:
        raise ValueError(f"cfg_range {tuple(cfg_range)} must be two fractions of the run, 0 <= start <= end <= 1 "
                         "(e.g. (0.0, 1.0) guides every step)")


def scales_at_step(step_index: int, num_steps: int, text_guidance: float, image_guidance: float,
                   cfg_range: tuple[float, float] = (0.0, 1.0)) -> GuidanceScales:
    """The scales in force at step `step_index` of `num_steps`: both 1 outside cfg_range (fraction i / N)."""
    fraction = step_index / num_steps
    if cfg_range[0] <= fraction <= cfg_range[1]:
        return GuidanceScales(float(text_guidance), float(image_guidance))
    return GuidanceScales(1.0, 1.0)


def branches_for(scales: GuidanceScales, has_references: bool) -> tuple[str, ...]:
    """Which transformer passes a step needs: (cond,), (cond, uncond) or (cond, ref, uncond)."""
    image = scales.image if has_references else 1.0
    if scales.text > 1.0 and image > 1.0:
        return (COND, REF, UNCOND)
    if scales.text > 1.0:
        return (COND, UNCOND)
    return (COND,)


def combine(predictions: dict[str, torch.Tensor], scales: GuidanceScales) -> torch.Tensor:
    """Combine the velocities of the passes named by `branches_for` (keys cond / ref / uncond), same shapes."""
    cond = predictions[COND]
    if REF in predictions:
        ref, uncond = predictions[REF], predictions[UNCOND]
        return uncond + scales.image * (ref - uncond) + scales.text * (cond - ref)
    if UNCOND in predictions:
        uncond = predictions[UNCOND]
        return uncond + scales.text * (cond - uncond)
    return cond
