"""FP8 attention (Fp8Config.attention="fp8"): the emulated numerics on the CPU, the static q/k scale bound, the
module swap and its fallbacks; the cuDNN kernel itself against BF16 on a GPU."""
from __future__ import annotations

import math

import PIL.Image
import pytest
import torch
import torch.nn.functional as F

from omnigen2_fp8 import synthetic
from omnigen2_fp8.attention import GroupedSdpa, grouped_attention
from omnigen2_fp8.fp8 import Fp8Config, Fp8ConfigError, quantize_fp8, save_fp8_checkpoint
from omnigen2_fp8.fp8.attention import (Fp8Sdpa, enable_fp8_attention, fp8_attention_reference, qk_descale_bound,
                                        quantize_heads, quantize_heads_static)
from omnigen2_fp8.fp8.attention_error import attention_error_probe
from omnigen2_fp8.fp8.attention_steps import excluded_steps, parse_step_range
from omnigen2_fp8.precision import RecipeError, parse_recipe
from omnigen2_fp8.rope import apply_rotary
from omnigen2_fp8.checkpoints import load_transformer


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def normed_heads(g, batch, length, heads, weight):
    x = torch.randn(batch, length, heads, weight.numel(), generator=g) * 3
    return F.rms_norm(x, (weight.numel(),), weight, 1e-5)


def test_static_qk_bound_holds_after_norm_and_rope():
    g = torch.Generator().manual_seed(0)
    weight = torch.rand(40, generator=g) * 2
    x = normed_heads(g, 2, 64, 3, weight)
    x[0, 0, 0] = 0
    x[0, 0, 0, 5] = 1e3  # a spike: RMS norm caps it at sqrt(d) * |w|
    x = F.rms_norm(x, (40,), weight, 1e-5)
    angles = torch.rand(2, 64, 20, generator=g) * 6.3
    rotated = apply_rotary(x, angles.cos(), angles.sin())
    bound = qk_descale_bound(weight).item() * 448
    assert rotated.abs().max().item() <= bound * (1 + 1e-6)
    assert rotated.abs().max().item() > 0.5 * bound  # and it is reached by the spike: not a vacuous bound


def test_emulated_fp8_attention_is_close_to_bf16_attention():
    g = torch.Generator().manual_seed(1)
    ones = torch.ones(24)
    q, k = normed_heads(g, 1, 96, 6, ones), normed_heads(g, 1, 96, 2, ones)
    v = torch.randn(1, 96, 2, 24, generator=g)
    exact = grouped_attention(q, k, v, None)
    q8 = quantize_heads_static(q, qk_descale_bound(ones), 32)
    k8 = quantize_heads_static(k, qk_descale_bound(ones), 32)
    v8, dv = quantize_heads(v, 32)
    assert q8.shape == (1, 96, 6, 32) and (q8[..., 24:].view(torch.uint8) == 0).all()
    o8 = fp8_attention_reference(q8, k8, v8, qk_descale_bound(ones), qk_descale_bound(ones), dv, head_dim=24)
    out = o8[..., :24].float() * dv
    err = rel(out.flatten(2), exact)
    assert 1e-3 < err < 0.1  # FP8 changes the result, by a few percent


def test_swap_runs_emulated_on_cpu_and_masked_batches_fall_back_exactly():
    model = synthetic.build_transformer("tiny", "cpu", torch.float32, seed=0)
    swapped, reason = enable_fp8_attention(model, exclude=("layers.1.attn",), emulate=True)
    assert reason is None and "layers.0.attn" in swapped and "layers.1.attn" not in swapped
    assert isinstance(model.layers[1].attn.sdpa, GroupedSdpa)
    core = model.layers[0].attn.sdpa
    assert isinstance(core, Fp8Sdpa) and core.head_dim_padded == 32
    assert "q_descale" not in model.state_dict() and not any("descale" in k for k in model.state_dict())
    g = torch.Generator().manual_seed(2)
    q, k, v = torch.randn(2, 9, 6, 20, generator=g), torch.randn(2, 9, 2, 20, generator=g), torch.randn(2, 9, 2, 20)
    mask = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    mask[1, ..., 7:] = False
    assert torch.equal(core(q, k, v, mask), grouped_attention(q, k, v, mask))


def test_error_probe_compares_every_fp8_attention_call_with_bf16_attention_on_its_inputs():
    from omnigen2_fp8.fp8.attention_error import attention_error_probe, has_fp8_attention

    model = synthetic.build_transformer("tiny", "cpu", torch.float32, seed=0)
    quantize_fp8(model, Fp8Config(attention="fp8", attention_exclude=("layers.1.attn",)))
    assert has_fp8_attention(model)
    g = torch.Generator().manual_seed(0)
    call = ([torch.randn(16, 8, 8, generator=g)], torch.tensor([0.4]), torch.randn(1, 5, 64, generator=g),
            torch.ones(1, 5))
    refs = [[torch.randn(16, 6, 8, generator=g)]]
    with torch.no_grad():
        plain = model(*call, ref_latents=refs)
        with attention_error_probe(model) as probe:
            probed = model(*call, ref_latents=refs)
        after = model(*call, ref_latents=refs)
    summary = probe.summary()
    swapped = {n.removesuffix(".sdpa") for n, m in model.named_modules() if isinstance(m, Fp8Sdpa)}
    assert set(summary["per_layer"]) == swapped and "layers.1.attn" not in swapped
    assert summary["calls"] == len(swapped)  # one unmasked pass: one call per FP8 core
    assert 0 < summary["min"] <= summary["mean"] <= summary["max"] < 0.2  # e4m3 error, not a broken kernel
    assert summary["max"] == max(summary["worst_layers"].values())
    # the probe restores the model (same outputs after it, no hook left behind); inside it the attention output is
    # dequantized and requantized per token for the projection instead of going in as e4m3: close, not equal
    assert all(torch.equal(a, c) for a, c in zip(plain, after))
    assert all(float((a - b).norm() / a.norm()) < 0.02 for a, b in zip(plain, probed))
    assert not any(m._forward_hooks for m in model.modules() if isinstance(m, Fp8Sdpa))
    with attention_error_probe(synthetic.build_transformer("tiny", "cpu", torch.float32, seed=0)) as none:
        pass
    assert none.summary() is None


def test_fp8_output_projection_takes_the_attention_output_as_it_is():
    # O8 (e4m3, one descale) into the FP8 projection: the exact product of the values attention returned, without
    # the per-token requantization of the dequantized path, which adds its own rounding
    from omnigen2_fp8.fp8.fused_block import unfused_blocks

    model = synthetic.build_transformer("tiny", "cpu", torch.float32, seed=0)
    quantize_fp8(model, Fp8Config(attention="fp8"))
    attn = model.layers[0].attn
    core, to_out = attn.sdpa, attn.to_out[0]
    assert core.projects_directly(to_out)
    g = torch.Generator().manual_seed(4)
    ones = torch.ones(20)
    q, k = normed_heads(g, 1, 12, 6, ones), normed_heads(g, 1, 12, 2, ones)
    v = torch.randn(1, 12, 2, 20, generator=g)
    o8, descale = core.attend_quantized(quantize_heads_static(q, core.q_descale, 32),
                                        quantize_heads_static(k, core.k_descale, 32), v)
    exact = (o8[..., :20].double() * descale.double()).flatten(2) @ (
        to_out.weight.double()[: to_out.out_features, : to_out.in_features] * to_out.weight_scale.double()[
            : to_out.out_features, None]).t()
    direct = core.attend_and_project(q, k, v, None, to_out)
    assert direct.shape == (1, 12, to_out.out_features)
    assert rel(direct, exact) < 1e-6  # float32 output of an exact (emulated) GEMM of the same e4m3 values
    # O8 goes in with its head padding, through a head-padded copy of the weight: the same exact sums
    assert core.projection_weight.shape == (to_out.out_padded, 6 * 32)
    assert torch.equal(core.projection_weight.view(torch.uint8).unflatten(1, (6, 32))[..., :20].flatten(1),
                       to_out.weight.view(torch.uint8)[:, :120])
    assert not core.projection_weight.view(torch.uint8).unflatten(1, (6, 32))[..., 20:].any()
    bound = core.projection_weight
    core.projection_weight = None  # the copy that drops the padding instead
    assert torch.equal(core.attend_and_project(q, k, v, None, to_out), direct)
    core.projection_weight = bound
    assert "projection_weight" not in model.state_dict() and core.bind_projection(to_out)
    with unfused_blocks(model):  # module by module: the core's forward, then the projection's own quantization
        assert not core.projects_directly(to_out)
        requantized = core.attend_and_project(q, k, v, None, to_out)
    assert core.projects_directly(to_out)
    assert 1e-4 < rel(requantized, exact) < 0.1
    masked = torch.ones(1, 1, 1, 12, dtype=torch.bool)
    assert torch.equal(core.attend_and_project(q, k, v, masked, to_out), to_out(core(q, k, v, masked)))


def test_without_cudnn_support_the_model_keeps_bf16_attention_and_says_why():
    model = synthetic.build_transformer("tiny", "cpu", torch.float32, seed=0)
    swapped, reason = enable_fp8_attention(model)  # not emulated: needs cuDNN on a GPU
    assert swapped == [] and "CUDA" in reason
    assert all(isinstance(m.attn.sdpa, GroupedSdpa) for m in model.blocks())


def test_config_option_quantizes_attention_and_survives_a_checkpoint(tmp_path):
    g = torch.Generator().manual_seed(3)
    inputs = ([torch.randn(16, 8, 8, generator=g)], torch.tensor([0.3]), torch.randn(1, 6, 64, generator=g),
              torch.ones(1, 6, dtype=torch.bool), [[torch.randn(16, 8, 8, generator=g)]])
    model = synthetic.build_transformer("tiny", "cpu", torch.float32, seed=0)
    with torch.no_grad():
        exact = model(*inputs)[0]
    config = Fp8Config(attention="fp8", attention_exclude=("context_refiner.*",))
    report = quantize_fp8(model, config)
    assert len(report.fp8_attention) == 4 and "emulated" in " ".join(report.notes)  # 5 blocks, 1 excluded
    with torch.no_grad():
        fp8_out = model(*inputs)[0]
    assert 1e-4 < rel(fp8_out, exact) < 0.1
    save_fp8_checkpoint(model, tmp_path / "ckpt")
    loaded = load_transformer(tmp_path / "ckpt")
    assert loaded.fp8_config.attention == "fp8"
    assert sum(isinstance(m, Fp8Sdpa) for m in loaded.modules()) == 4
    with torch.no_grad():
        assert torch.allclose(loaded(*inputs)[0], fp8_out, atol=1e-5)  # as a reloaded FP8 model without it


def test_the_fp8attn_recipe_swaps_attention_in_the_pipeline():
    pipe = synthetic.build_synthetic_pipeline("tiny", device="cpu", dtype=torch.float32, progress=False,
                                              precision="fp8+fp8attn")
    assert pipe.fp8_config.attention == "fp8" and len(pipe.fp8_report.fp8_attention) == 5  # every block, emulated
    assert sum(isinstance(m, Fp8Sdpa) for m in pipe.transformer.modules()) == 5
    result = pipe("add a red hat", PIL.Image.new("RGB", (64, 64)), num_inference_steps=1)
    assert result.settings["attention"] == "fp8"  # what ran (a GPU without cuDNN FP8 attention records bf16)


def test_config_rejects_unknown_attention_values():
    with pytest.raises(Fp8ConfigError, match="attention"):
        Fp8Config(attention="fp4")
    assert Fp8Config.from_dict(Fp8Config(attention="fp8").to_dict()).attention == "fp8"


@pytest.mark.gpu
def test_cudnn_fp8_attention_matches_bf16_within_fp8_error():
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("needs a Hopper (or newer) GPU")
    pytest.importorskip("cudnn")
    g = torch.Generator("cuda").manual_seed(0)
    ones = torch.ones(120, device="cuda")
    q = F.rms_norm(torch.randn(1, 1000, 21, 120, device="cuda", generator=g), (120,)).bfloat16()
    k = F.rms_norm(torch.randn(1, 1000, 7, 120, device="cuda", generator=g), (120,)).bfloat16()
    v = torch.randn(1, 1000, 7, 120, device="cuda", generator=g).bfloat16()
    core = Fp8Sdpa(120, qk_descale_bound(ones), qk_descale_bound(ones)).cuda()
    emulated = Fp8Sdpa(120, qk_descale_bound(ones), qk_descale_bound(ones), emulate=True).cuda()
    exact = grouped_attention(q, k, v, None)
    out = core(q, k, v, None)
    assert rel(out, exact) < 0.1
    assert rel(out, emulated(q, k, v, None)) < rel(out, exact)
    assert math.isfinite(out.float().sum().item())


# ------------------------------------------------------------------------------------ steps excluded from FP8 attention
def test_step_ranges_select_the_same_steps_in_runs_of_any_length():
    assert [parse_step_range(t) for t in ("0:3", "-2:", "5", "-1", ":2", "-3")] == [
        slice(0, 3), slice(-2, None), slice(5, 6), slice(-1, None), slice(None, 2), slice(-3, -2)]
    assert excluded_steps(("0:3", "-2:"), 10) == [0, 1, 2, 8, 9]
    assert excluded_steps(("0:3", "-2:"), 4) == [0, 1, 2, 3]  # overlapping ranges: each step once
    assert excluded_steps(("5",), 3) == [] and excluded_steps(("-1",), 3) == [2]
    for bad, why in (("3:3", "no step"), ("5:2", "no step"), ("1:2:3", "3 fields"), ("a", "not understood"),
                     ("", "empty"), (3, "must be text")):
        with pytest.raises(ValueError, match=why):
            parse_step_range(bad)


def test_config_checks_its_excluded_steps_and_stores_them():
    config = Fp8Config(attention="fp8", attention_exclude_steps=["0:3", "-1"])
    assert config.attention_exclude_steps == ("0:3", "-1")
    assert Fp8Config.from_dict(config.to_dict()) == config
    assert Fp8Config.from_dict({k: v for k, v in config.to_dict().items()
                                if k != "attention_exclude_steps"}).attention_exclude_steps == ()  # older files
    with pytest.raises(Fp8ConfigError, match="attention_exclude_steps.*'0-3' is not understood"):
        Fp8Config(attention="fp8", attention_exclude_steps=("0-3",))
    with pytest.raises(Fp8ConfigError, match="attention is 'bf16'"):
        Fp8Config(attention_exclude_steps=("0:3",))


def test_excluded_steps_survive_an_fp8_checkpoint(tmp_path):
    model = synthetic.build_transformer("tiny", "cpu", torch.float32, seed=0)
    quantize_fp8(model, Fp8Config(attention="fp8", attention_exclude_steps=("0:2",)))
    assert model.fp8_attention_steps.exclude == ("0:2",)
    save_fp8_checkpoint(model, tmp_path / "ckpt")
    loaded = load_transformer(tmp_path / "ckpt")
    assert loaded.fp8_config.attention_exclude_steps == ("0:2",)
    cores = [m for m in loaded.modules() if isinstance(m, Fp8Sdpa)]
    assert len(cores) == 5 and all(core.steps is loaded.fp8_attention_steps for core in cores)


def test_the_recipe_names_the_excluded_steps():
    recipe = parse_recipe("fp8 + fp8attn:exclude_steps=0:3, -2:")
    assert recipe.name == "fp8+fp8attn:exclude_steps=0:3,-2:" and parse_recipe(recipe.name) == recipe
    config = recipe.fp8_config()
    assert config.attention == "fp8" and config.attention_exclude_steps == ("0:3", "-2:")
    assert parse_recipe("fp8+fp8attn").fp8_config().attention_exclude_steps == ()
    with pytest.raises(RecipeError, match="exclude_steps=RANGES"):
        parse_recipe("fp8+fp8attn:0:3")
    with pytest.raises(RecipeError, match="selects no step"):
        parse_recipe("fp8+fp8attn:exclude_steps=2:1")


def denoise_recording_the_switch(precision: str, steps: int = 4):
    """A tiny CPU pipeline's denoising run -> (latents, FP8 attention on/off per step as the run saw it, model)."""
    pipe = synthetic.build_synthetic_pipeline("tiny", device="cpu", dtype=torch.float32, progress=False,
                                              precision=precision)
    g = torch.Generator().manual_seed(0)
    embeds = pipe.encode_prompt("add a red hat", "", need_negative=True)
    refs = [torch.randn(16, 8, 8, generator=g)]
    latents = torch.randn(1, 16, 8, 8, generator=g)
    switch = getattr(pipe.transformer, "fp8_attention_steps", None)
    seen = []
    out = pipe.denoise(latents, refs, embeds, num_inference_steps=steps, text_guidance_scale=5.0,
                       image_guidance_scale=2.0, progress=False,
                       on_step=lambda i, n, x: seen.append(None if switch is None else switch.fp8_now))
    return out, seen, pipe.transformer


def test_excluded_steps_run_the_bf16_attention_and_the_rest_fp8():
    linears_only, _, _ = denoise_recording_the_switch("fp8")
    every_step, seen_every, _ = denoise_recording_the_switch("fp8+fp8attn")
    no_step, seen_none, _ = denoise_recording_the_switch("fp8+fp8attn:exclude_steps=0:")
    first_two, seen_first, model = denoise_recording_the_switch("fp8+fp8attn:exclude_steps=0:2")
    assert seen_every == [True] * 4 and seen_none == [False] * 4 and seen_first == [False, False, True, True]
    assert torch.equal(no_step, linears_only)  # excluded steps are exactly the FP8-linears model's attention
    assert not torch.equal(first_two, every_step) and not torch.equal(first_two, linears_only)
    assert model.fp8_attention_steps.fp8_now  # on again after the run, for calls outside one
    # The error probe measures the kernel: FP8 attention runs inside it whatever the switch says, and the switch's
    # setting and exclusion come back after it.
    model.fp8_attention_steps.fp8_now = False
    inputs = ([torch.randn(16, 8, 8)], torch.tensor([0.3]), torch.randn(1, 6, 64), torch.ones(1, 6, dtype=torch.bool),
              [[torch.randn(16, 8, 8)]])
    with attention_error_probe(model) as probe, torch.no_grad():
        model(*inputs)
    assert probe.summary()["calls"] == 5  # one per block
    assert not model.fp8_attention_steps.fp8_now and model.fp8_attention_steps.exclude == ("0:2",)
    # Outside the probe, a core whose switch is off runs BF16 attention itself.
    core = model.layers[0].attn.sdpa
    q, k, v = torch.randn(1, 6, 6, 20), torch.randn(1, 6, 2, 20), torch.randn(1, 6, 2, 20)  # the tiny heads
    assert torch.equal(core(q, k, v, None), grouped_attention(q, k, v, None))
    model.fp8_attention_steps.reset()
    assert not torch.equal(core(q, k, v, None), grouped_attention(q, k, v, None))
