"""The pipeline on a CUDA GPU (tiny synthetic models): VRAM is reported, seeds reproduce, offload frees the GPU."""
from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from omnigen2_fp8 import synthetic
from omnigen2_fp8.measure import StageClock

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def reference():
    return PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8))


def _edit(pipe, reference, **kwargs):
    return pipe("make it blue", [reference], num_inference_steps=3, text_guidance_scale=5.0,
                image_guidance_scale=2.0, seed=3, progress=False, **kwargs)


def test_cuda_run_reports_stage_vram_and_reproduces_with_a_seed(reference):
    pipe = synthetic.build_synthetic_pipeline("tiny", device="cuda", dtype=torch.bfloat16, progress=False)
    first, again = _edit(pipe, reference, clock=StageClock("cuda")), _edit(pipe, reference)
    assert first.latents.device.type == "cuda" and first.synthetic
    assert first.peak_vram_bytes > 0 and set(first.stage_peak_vram_bytes) == set(first.stage_seconds)
    assert first.peak_vram_bytes == max(first.stage_peak_vram_bytes.values())
    assert torch.equal(first.latents, again.latents)


def test_offload_keeps_models_on_the_cpu_between_stages(reference):
    pipe = synthetic.build_synthetic_pipeline("tiny", device="cuda", dtype=torch.bfloat16, offload=True,
                                              progress=False)
    result = _edit(pipe, reference)
    assert result.latents.device.type == "cuda"
    for module in (pipe.transformer, pipe.vae, pipe.mllm):
        assert next(module.parameters()).device.type == "cpu"
