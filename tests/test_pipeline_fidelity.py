"""The pipeline's own denoise loop and decode against the official code (golden denoise cases, float32 CPU).

Cases are discovered (tests/golden_cases.py): every golden folder whose case.json describes a denoising run without
step caching is checked, so new cases of the same kind are picked up.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from omnigen2_fp8.checkpoints import load_transformer
from omnigen2_fp8.pipeline import OmniGen2Pipeline, PromptEmbeds
from omnigen2_fp8.scheduler import FlowMatchEulerScheduler

from golden_cases import denoise_cases


def _refs(io: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    found = [(int(m.group(1)), io[k]) for k in io if (m := re.fullmatch(r"ref\.0\.(\d+)", k))]
    return [t for _, t in sorted(found, key=lambda item: item[0])]


def _mask(io: dict[str, torch.Tensor], name: str, embeds: torch.Tensor) -> torch.Tensor:
    return io.get(name, torch.ones(embeds.shape[:2], dtype=torch.long))


def test_golden_denoise_cases_exist(golden_dir):
    assert denoise_cases(golden_dir), f"no denoise cases under {golden_dir}"


@pytest.mark.parametrize("case_dir", denoise_cases(), ids=lambda p: p.name)
def test_denoise_and_decode_match_the_official_pipeline(case_dir: Path):
    case = json.loads((case_dir / "case.json").read_text())
    if case.get("dtype", "float32") != "float32":
        pytest.fail(f"{case_dir.name}: only float32 golden cases are compared at 1e-4 (got {case['dtype']})")
    io = load_file(case_dir / "io.safetensors")
    transformer = load_transformer(case_dir / case.get("transformer", "transformer"),
                                                      dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(case_dir / case.get("vae", "vae"), torch_dtype=torch.float32)
    scheduler = FlowMatchEulerScheduler(dynamic_time_shift=case.get("dynamic_time_shift", True),
                                        time_shift=case.get("time_shift"))
    pipe = OmniGen2Pipeline(transformer, vae, scheduler, device="cpu", dtype=torch.float32, progress=False)

    prompt, negative = io["prompt_embeds"], io.get("negative_prompt_embeds")
    embeds = PromptEmbeds(prompt, _mask(io, "prompt_attention_mask", prompt), negative,
                          None if negative is None else _mask(io, "negative_prompt_attention_mask", negative))
    latents = pipe.denoise(io["latents"], _refs(io), embeds, case["num_inference_steps"],
                           case.get("text_guidance_scale", 4.0), case.get("image_guidance_scale", 1.0),
                           tuple(case.get("cfg_range", (0.0, 1.0))))
    if "final_latents" in io:
        expected = io["final_latents"]
        err = (latents - expected).abs().max() / expected.abs().max()
        assert err < 1e-4, f"final latents: relative error {err:.2e}"
    decoded = pipe.decode(latents)
    expected = io["decoded"]
    assert decoded.shape == expected.shape
    err = (decoded - expected).abs().max() / expected.abs().max()
    assert err < 1e-4, f"{case_dir.name}: decoded relative error {err:.2e}"
