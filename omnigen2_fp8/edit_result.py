"""What one pipeline call returns: the edited images, the settings used, what it cost, and how the step cache ran."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
import PIL.PngImagePlugin
import torch


@dataclass
class EditResult:
    """What one pipeline call produced and what it cost.

    images: the edited images (PIL, 8-bit RGB, at the output size); latents: final latents [1, C, h, w];
    decoded: VAE output [1, 3, H, W] before clamping (kept only with keep_decoded=True);
    stage_seconds: wall seconds per stage (keys from STAGES plus "postprocess"; CUDA synchronised), None unless
    the call was given a `clock`; stage_peak_vram_bytes: peak allocated CUDA memory during each stage (empty on
    CPU, None without a clock); the clock resets torch.cuda peak-memory stats at the start of every stage, so read
    these rather than torch.cuda's own peak; peak_vram_bytes / peak_vram_reserved_bytes: peak allocated /
    reserved CUDA memory of the call (None on CPU or without a clock);
    synthetic: True when the models have random weights (then `synthetic_info` says what they are);
    settings: every setting of the call (JSON-ready); transformer_calls: transformer forward passes made;
    step_cache: with a step cache, which calls computed the main layers (`caching.StepCacheStats.to_record()`),
    else None.
    """

    images: list[PIL.Image.Image]
    latents: torch.Tensor
    stage_seconds: dict[str, float] | None
    stage_peak_vram_bytes: dict[str, int] | None
    peak_vram_bytes: int | None
    peak_vram_reserved_bytes: int | None
    synthetic: bool
    synthetic_info: dict | None
    settings: dict
    transformer_calls: int
    decoded: torch.Tensor | None = None
    step_cache: dict | None = None

    @property
    def image(self) -> PIL.Image.Image:
        return self.images[0]

    @property
    def total_seconds(self) -> float | None:
        return None if self.stage_seconds is None else sum(self.stage_seconds.values())

    @property
    def peak_vram_gib(self) -> float | None:
        return None if self.peak_vram_bytes is None else self.peak_vram_bytes / 2**30

    def to_record(self) -> dict:
        """JSON-ready summary: settings, synthetic flag, stage seconds, VRAM (no tensors or images)."""
        return {
            "synthetic": self.synthetic, "synthetic_info": self.synthetic_info, "settings": self.settings,
            "stage_seconds": self.stage_seconds, "total_seconds": self.total_seconds,
            "stage_peak_vram_bytes": self.stage_peak_vram_bytes, "peak_vram_bytes": self.peak_vram_bytes,
            "peak_vram_reserved_bytes": self.peak_vram_reserved_bytes, "peak_vram_gib": self.peak_vram_gib,
            "transformer_calls": self.transformer_calls, "step_cache": self.step_cache,
        }

    def save(self, path: str | os.PathLike, index: int = 0) -> Path:
        """Save image `index` as PNG with the settings (and the synthetic flag) in its text metadata."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        info = PIL.PngImagePlugin.PngInfo()
        # The device stays out of the file: the same edit made on cuda:0 or cuda:1 is the same PNG, byte for byte.
        settings = {k: v for k, v in self.settings.items() if k != "device"}
        info.add_text("omnigen2_fp8", json.dumps({"synthetic": self.synthetic, "settings": settings}))
        if self.synthetic:
            info.add_text("synthetic", "random-weight models: this image says nothing about OmniGen2 quality")
        self.images[index].save(path, format="PNG", pnginfo=info)
        return path
