"""Profiling scenarios (tasks/profile/*.yaml): the schema, the loader and the synthetic reference images."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image

from harness.core.tasks import TaskError, apply_overrides, build_dataclass, load_task
from omnigen2_fp8 import guidance


class ProfileError(ValueError):
    """Bad profiling options or scenario; the message names the problem and the fix."""


@dataclass(frozen=True)
class ScenarioConfig:
    """One profiling scenario (tasks/profile/*.yaml): output size, reference images, steps, guidance.

    references: [height, width] per reference image (pixels; random images of that size are generated).
    With references, a step runs 3 transformer passes (cond, ref, uncond) while text and image guidance are > 1.
    """

    task: str
    height: int
    width: int
    steps: int
    references: list[list[int]] = field(default_factory=list)
    instruction: str = "Change the color of the car to red"
    negative_prompt: str = ""
    text_guidance_scale: float = 5.0
    image_guidance_scale: float = 2.0
    cfg_range: list[float] = field(default_factory=lambda: [0.0, 1.0])
    time_shift: float | None = None
    seed: int = 0
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            value = getattr(self, name)
            if value < 16 or value % 16:
                raise ProfileError(f"scenario {self.task}: {name} {value} must be a multiple of 16 (>= 16)")
        if self.steps < 1:
            raise ProfileError(f"scenario {self.task}: steps must be >= 1, got {self.steps}")
        for i, ref in enumerate(self.references):
            if len(ref) != 2 or min(ref) < 16:
                raise ProfileError(f"scenario {self.task}: references[{i}] = {ref} must be [height, width] in pixels "
                                   "(>= 16 each)")
        if len(self.references) > 5:
            raise ProfileError(f"scenario {self.task}: at most 5 reference images, got {len(self.references)}")
        if len(self.cfg_range) != 2:
            raise ProfileError(f"scenario {self.task}: cfg_range must be [start, end], got {self.cfg_range}")

    @classmethod
    def from_dict(cls, data: dict) -> "ScenarioConfig":
        data = {k: v for k, v in data.items() if not k.startswith("_")}
        return build_dataclass(cls, data, str(data.get("task", "scenario")))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def branches_per_step(self) -> list[int]:
        """Transformer passes at each step (3 = cond/ref/uncond, 2 = cond/uncond, 1 = no guidance)."""
        return [len(guidance.branches_for(guidance.scales_at_step(i, self.steps, self.text_guidance_scale,
                                                                  self.image_guidance_scale,
                                                                  tuple(self.cfg_range)),
                                          has_references=bool(self.references)))
                for i in range(self.steps)]


def load_scenario(name_or_path: str | Path, steps: int | None = None) -> tuple[ScenarioConfig, list[dict], str]:
    """Load a scenario by name (tasks/profile/) or YAML path; returns (config, override log, source file)."""
    try:
        raw = load_task(name_or_path, "profile")
        scenario = ScenarioConfig.from_dict(raw)
        scenario, changes = apply_overrides(scenario, {"steps": steps})
    except TaskError as err:
        raise ProfileError(str(err)) from None
    return scenario, changes, raw.get("_source", str(name_or_path))


def load_scenario_task(name_or_path: str | Path) -> ScenarioConfig:
    """A scenario validated by name or path, errors as TaskError: the "profile" validator of `harness.tasks`."""
    try:
        return ScenarioConfig.from_dict(load_task(name_or_path, "profile"))
    except ProfileError as err:
        raise TaskError(str(err)) from None


def reference_images(scenario: ScenarioConfig) -> list[PIL.Image.Image]:
    """Seeded random RGB images of the scenario's reference sizes (content does not change the work done)."""
    rng = np.random.default_rng(scenario.seed + 1000)
    images = []
    for h, w in scenario.references:
        ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
        noise = rng.integers(0, 64, size=(h, w, 3)).astype(np.float32)
        images.append(PIL.Image.fromarray(np.clip(ramp * 0.75 + noise, 0, 255).astype(np.uint8), "RGB"))
    return images
