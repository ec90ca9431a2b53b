"""Pure parts of the pipeline: guidance rules and the official image resize / postprocess rules."""
from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from omnigen2_fp8 import guidance as cfg
from omnigen2_fp8.image_processing import (ImageInputError, fit_size, generation_size, load_image, postprocess,
                                           preprocess)


# ---------------------------------------------------------------------------------------------- guidance
def test_three_branch_combine_is_the_official_formula():
    cond, ref, uncond = torch.tensor([3.0]), torch.tensor([2.0]), torch.tensor([0.5])
    scales = cfg.GuidanceScales(text=5.0, image=1.5)
    out = cfg.combine({"cond": cond, "ref": ref, "uncond": uncond}, scales)
    assert out.item() == pytest.approx(0.5 + 1.5 * (2.0 - 0.5) + 5.0 * (3.0 - 2.0))
    assert cfg.combine({"cond": cond, "uncond": uncond}, scales).item() == pytest.approx(0.5 + 5.0 * 2.5)
    assert cfg.combine({"cond": cond}, scales) is cond


def test_branches_follow_the_official_conditions():
    assert cfg.branches_for(cfg.GuidanceScales(5.0, 2.0), has_references=True) == ("cond", "ref", "uncond")
    # Image guidance 1 (or no references): the unconditional branch has no references, two passes.
    assert cfg.branches_for(cfg.GuidanceScales(5.0, 1.0), has_references=True) == ("cond", "uncond")
    assert cfg.branches_for(cfg.GuidanceScales(5.0, 2.0), has_references=False) == ("cond", "uncond")
    assert cfg.branches_for(cfg.GuidanceScales(1.0, 2.0), has_references=True) == ("cond",)


def test_cfg_range_gates_by_the_fraction_of_steps():
    guided = [cfg.scales_at_step(i, 6, 4.0, 2.0, (0.0, 0.6)) for i in range(6)]
    assert [s.text for s in guided] == [4.0, 4.0, 4.0, 4.0, 1.0, 1.0]  # 3/6 = 0.5 <= 0.6 < 4/6
    assert cfg.scales_at_step(0, 10, 4.0, 2.0, (0.2, 1.0)) == (1.0, 1.0)


@pytest.mark.parametrize("tg, ig, rng, match", [(0.5, 1.0, (0, 1), "text guidance"), (4.0, 31.0, (0, 1), "image"),
                                                 (4.0, 1.0, (0.8, 0.2), "cfg_range"), (4.0, 1.0, (0, 1.5), "cfg_range")])
def test_out_of_range_guidance_is_refused(tg, ig, rng, match):
    with pytest.raises(ValueError, match=match):
        cfg.check_guidance(tg, ig, rng)


# ---------------------------------------------------------------------------------------------- images
def test_resize_rules_cap_pixels_and_side_never_upscale_and_floor_to_16():
    assert fit_size(1500, 1000) == (1024, 672)  # side cap: ratio 1024/1500, 682.7 -> 672
    assert fit_size(1200, 1200) == (1024, 1024)
    assert fit_size(2048, 512) == (1024, 256)
    assert fit_size(100, 70) == (96, 64)  # never upscaled, only floored
    assert fit_size(1000, 1000, max_pixels=512 * 512) == (512, 512)


def test_too_small_or_too_thin_images_are_refused():
    with pytest.raises(ImageInputError, match="too small"):
        fit_size(10, 40)
    with pytest.raises(ImageInputError, match="too small"):
        fit_size(4000, 40)  # long side capped to 1024 leaves 10 px


def test_preprocess_is_lanczos_resized_and_in_minus_one_to_one():
    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray(rng.integers(0, 256, (70, 100, 3), dtype=np.uint8))
    pixels = preprocess(image)
    assert pixels.shape == (1, 3, 64, 96) and pixels.dtype == torch.float32
    expected = np.asarray(image.resize((96, 64), resample=PIL.Image.LANCZOS), dtype=np.float32) / 127.5 - 1
    np.testing.assert_allclose(pixels[0].permute(1, 2, 0).numpy(), expected, atol=1e-6)


def test_generation_size_follows_one_reference_else_the_request():
    assert generation_size(1, (96, 64), 1024, 1024) == (96, 64)
    assert generation_size(2, (96, 64), 1024, 768) == (1024, 768)
    assert generation_size(0, None, 2048, 2048) == (1024, 1024)  # capped at 1024*1024 pixels
    assert generation_size(0, None, 1000, 1000) == (992, 992)


def test_postprocess_maps_minus_one_one_to_bytes_and_resizes():
    decoded = torch.tensor([-1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 2, 2).expand(1, 3, 2, 2)
    image = postprocess(decoded)[0]
    assert np.asarray(image)[..., 0].tolist() == [[0, 128], [255, 255]]
    assert postprocess(torch.zeros(1, 3, 16, 16), size=(24, 8))[0].size == (24, 8)


def test_missing_and_unreadable_images_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageInputError, match="cannot read"):
        load_image(bad)
    gray = tmp_path / "gray.png"
    PIL.Image.new("L", (20, 20)).save(gray)
    assert load_image(gray).mode == "RGB"
