"""Step caching (TeaCache, TaylorSeer) against the official code, and how it composes with the rest of the pipeline.

The golden cases (tests/golden_cases.py `cached_denoise_cases`) are denoising runs of the official OmniGen2 with its
caching switched on: every case must match at 1e-4 (float32, CPU) and take the same per-call decisions.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from omnigen2_fp8 import synthetic
from omnigen2_fp8.caching import (OFFICIAL_TEACACHE_RESCALE, TaylorSeerConfig, TeaCacheConfig,
                                  check_step_cache, installed, make_step_cache, step_cache_from_dict)
from omnigen2_fp8.checkpoints import load_transformer
from omnigen2_fp8.cuda_graphs import CudaGraphForward
from omnigen2_fp8.pipeline import OmniGen2Pipeline, PromptEmbeds
from omnigen2_fp8.scheduler import FlowMatchEulerScheduler
from omnigen2_fp8.transformer import OmniGen2Transformer, TransformerConfig

from golden_cases import cached_denoise_cases
from test_pipeline_fidelity import _mask, _refs


def _golden_pipeline(case_dir: Path, case: dict) -> OmniGen2Pipeline:
    transformer = load_transformer(case_dir / case["transformer"], dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(case_dir / case["vae"], torch_dtype=torch.float32)
    scheduler = FlowMatchEulerScheduler(dynamic_time_shift=case.get("dynamic_time_shift", True),
                                        time_shift=case.get("time_shift"))
    return OmniGen2Pipeline(transformer, vae, scheduler, device="cpu", dtype=torch.float32, progress=False)


def _golden_denoise(pipe: OmniGen2Pipeline, case: dict, io: dict, **kwargs) -> torch.Tensor:
    prompt, negative = io["prompt_embeds"], io.get("negative_prompt_embeds")
    embeds = PromptEmbeds(prompt, _mask(io, "prompt_attention_mask", prompt), negative,
                          None if negative is None else _mask(io, "negative_prompt_attention_mask", negative))
    return pipe.denoise(io["latents"], _refs(io), embeds, case["num_inference_steps"],
                        case.get("text_guidance_scale", 4.0), case.get("image_guidance_scale", 1.0),
                        tuple(case.get("cfg_range", (0.0, 1.0))), **kwargs)


def test_golden_cases_cover_both_methods(golden_dir):
    methods = {json.loads((d / "case.json").read_text())["cache"]["method"] for d in cached_denoise_cases(golden_dir)}
    assert methods >= {"teacache", "taylorseer"}, f"cached denoise cases under {golden_dir} cover only {methods}"


def test_official_made_cases_cover_what_the_held_out_check_varies():
    """Cases made here with the official code (README "Cases made here"): several references, the full CFG range,
    two-branch CFG, and TeaCache skipping in the cond-only phase after cfg_range ends. The repository's own copy,
    whatever OMNIGEN2_GOLDEN_DIR says."""
    covered = set()
    for d in cached_denoise_cases(Path(__file__).resolve().parent / "golden"):
        case, io = json.loads((d / "case.json").read_text()), load_file(d / "io.safetensors")
        if "step_latents" not in io:
            continue  # a case from ../shared without per-step latents
        method, computed = case["cache"]["method"], case["main_layers_computed_per_call"]
        covered.add(method)
        covered |= {"several references"} if len(_refs(io)) > 1 else set()
        covered |= {"full cfg range"} if case["cfg_range"] == [0.0, 1.0] else set()
        covered |= {"two-branch cfg"} if not _refs(io) else set()
        cfg_steps = sum(1 for i in range(case["num_inference_steps"])
                        if case["cfg_range"][0] <= i / case["num_inference_steps"] <= case["cfg_range"][1])
        cond_only = computed[len(computed) - (case["num_inference_steps"] - cfg_steps):]
        covered |= {"teacache skips after cfg"} if method == "teacache" and not all(cond_only) else set()
    assert covered >= {"teacache", "taylorseer", "several references", "full cfg range", "two-branch cfg",
                       "teacache skips after cfg"}, covered


# The two cases shipped in ../shared (denoise_teacache, denoise_taylorseer) cannot be reproduced by the official
# code: rebuilt outside the repository and run on these inputs (CPU, float32), it matches the plain 6-step golden at
# 1e-6 but lands 0.35 (TeaCache) and 0.30 (TaylorSeer) from them, exactly where this package lands (ours vs official:
# <= 5e-6 per transformer call, <= 2e-6 per step, the same per-call decisions). No variation of the settings tried
# reproduces them (README "Cases made here" lists what was tried). teacache_cfg_ends and taylorseer_cfg_ends hold
# what the official code computes for the same inputs and settings. Strict: the markers go when ../shared fixes them.
SUSPECT = {("decoded", "denoise_teacache"), ("decoded", "denoise_taylorseer"), ("decisions", "denoise_teacache")}


def _cases(check: str) -> list:
    mark = pytest.mark.xfail(strict=True, reason="shipped case not reproducible by the official code (its run is "
                             "0.3 from the case and 5e-6 from ours; see the comment above SUSPECT)")
    return [pytest.param(d, marks=mark) if (check, d.name) in SUSPECT else d for d in cached_denoise_cases()]


@dataclasses.dataclass
class _CachedRun:
    case: dict
    io: dict
    latents: torch.Tensor
    step_latents: list[torch.Tensor]
    pipe: OmniGen2Pipeline


@functools.lru_cache(maxsize=None)
def _cached_run(case_dir: Path) -> _CachedRun:
    case = json.loads((case_dir / "case.json").read_text())
    if case.get("dtype", "float32") != "float32":
        pytest.fail(f"{case_dir.name}: only float32 golden cases are compared at 1e-4 (got {case['dtype']})")
    io = load_file(case_dir / "io.safetensors")
    pipe = _golden_pipeline(case_dir, case)
    steps: list[torch.Tensor] = []
    latents = _golden_denoise(pipe, case, io, step_cache=step_cache_from_dict(case["cache"]),
                              on_step=lambda i, n, lat: steps.append(lat.clone()))
    return _CachedRun(case, io, latents, steps, pipe)


def _relative(ours: torch.Tensor, expected: torch.Tensor) -> float:
    return float((ours - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("case_dir", _cases("decisions"), ids=lambda p: p.name)
def test_cached_denoise_takes_the_official_decisions(case_dir: Path):
    run = _cached_run(case_dir)
    stats = run.pipe.step_cache_stats
    assert len(stats.calls) == run.case["transformer_calls"]
    assert stats.computed_per_call == run.case["main_layers_computed_per_call"], (
        f"{case_dir.name}: computed/skipped pattern differs from the official one")


@pytest.mark.parametrize("case_dir", _cases("decoded"), ids=lambda p: p.name)
def test_cached_denoise_matches_the_official_pipeline(case_dir: Path):
    run = _cached_run(case_dir)
    if "step_latents" in run.io:  # the first step that parts from the official run says where to look
        expected_steps = run.io["step_latents"]
        assert len(run.step_latents) == len(expected_steps)
        errors = [_relative(ours, official) for ours, official in zip(run.step_latents, expected_steps)]
        first = next((i for i, err in enumerate(errors) if err >= 1e-4), None)
        assert first is None, f"{case_dir.name}: latents leave the official run at step {first}: {errors[first]:.2e}"
    decoded, expected = run.pipe.decode(run.latents), run.io["decoded"]
    assert decoded.shape == expected.shape
    err = _relative(decoded, expected)
    assert err < 1e-4, f"{case_dir.name}: decoded relative error {err:.2e}"


# --------------------------------------------------------------------------------------------- configs
def test_defaults_are_the_official_settings():
    tea, taylor = TeaCacheConfig(), TaylorSeerConfig()
    assert tea.rel_l1_thresh == 0.05 and tea.rescale_coefficients == OFFICIAL_TEACACHE_RESCALE
    assert (taylor.first_enhance, taylor.fresh_threshold, taylor.max_order) == (5, 3, 4)
    for config in (tea, taylor, TeaCacheConfig(0.2)):
        assert step_cache_from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(dataclasses.FrozenInstanceError):
        tea.rel_l1_thresh = 0.1


@pytest.mark.parametrize("make, match", [
    (lambda: TeaCacheConfig(rel_l1_thresh=0), "positive number"),
    (lambda: TeaCacheConfig(rel_l1_thresh=float("nan")), "positive number"),
    (lambda: TaylorSeerConfig(first_enhance=0), "first_enhance must be an integer >= 1"),
    (lambda: TaylorSeerConfig(max_order=1.5), "max_order must be an integer"),
    (lambda: step_cache_from_dict({"method": "teacash"}), "unknown step cache method"),
    (lambda: step_cache_from_dict({"method": "taylorseer", "order": 2}), r"unknown settings \['order'\]"),
    (lambda: check_step_cache("taylorseer"), "must be a TeaCacheConfig, a TaylorSeerConfig or None"),
])
def test_bad_settings_fail_with_the_fix(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


# --------------------------------------------------------------------------------------------- schedules
def _schedule(config: TaylorSeerConfig, branch_calls: list[str]) -> list[bool]:
    cache = make_step_cache(config)
    cache.start(len(branch_calls))
    for step, branch in enumerate(branch_calls):
        cache.begin_call(branch, step)
    return cache.stats().computed_per_call


def test_taylorseer_schedule_is_per_branch_and_fixed():
    # 28 steps, one branch: the first 5 calls, then every 3rd call computes.
    pattern = _schedule(TaylorSeerConfig(), ["cond"] * 28)
    assert [i for i, full in enumerate(pattern) if full] == [0, 1, 2, 3, 4, 7, 10, 13, 16, 19, 22, 25]
    # Interleaved branches count their own calls: the same pattern per branch.
    interleaved = _schedule(TaylorSeerConfig(), ["cond", "ref", "uncond"] * 10)
    assert interleaved[0::3] == interleaved[1::3] == interleaved[2::3] == pattern[:10]
    assert _schedule(TaylorSeerConfig(first_enhance=1, fresh_threshold=1), ["cond"] * 6) == [True] * 6


def test_calls_without_begin_call_are_refused():
    model = OmniGen2Transformer(TransformerConfig.from_name("tiny")).eval()
    latents, t, text, mask, refs = _tiny_inputs()
    for config in (TeaCacheConfig(), TaylorSeerConfig()):
        cache = make_step_cache(config)
        cache.start(4)
        with installed(model, cache), torch.no_grad(), pytest.raises(RuntimeError, match="begin_call"):
            model(latents, t, text, mask, ref_latents=refs)
    assert model.main_layers_strategy is None


def _tiny_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 16, 8, 8, generator=g), torch.rand(1, generator=g), torch.randn(1, 6, 64, generator=g),
            torch.ones(1, 6, dtype=torch.bool), [[torch.randn(16, 8, 8, generator=g)]])


# --------------------------------------------------------------------------------------------- the pipeline
@pytest.fixture(scope="module")
def tiny_pipe() -> OmniGen2Pipeline:
    return synthetic.build_synthetic_pipeline("tiny", device="cpu", dtype=torch.float32, progress=False)


def _denoiser(**pipeline_kwargs) -> OmniGen2Pipeline:
    """The tiny DiT and VAE without a text encoder: `denoise` on random prompt features (fast)."""
    return OmniGen2Pipeline(synthetic.build_transformer("tiny"), synthetic.build_vae("tiny"),
                            FlowMatchEulerScheduler(), device="cpu", dtype=torch.float32, progress=False,
                            **pipeline_kwargs)


def _denoise(pipe: OmniGen2Pipeline, steps: int = 8, device: str = "cpu", **kwargs) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    embeds = PromptEmbeds(torch.randn(1, 7, 64, generator=g).to(device), torch.ones(1, 7, dtype=torch.long),
                          torch.randn(1, 3, 64, generator=g).to(device), torch.ones(1, 3, dtype=torch.long))
    latents, ref = torch.randn(1, 16, 8, 8, generator=g), torch.randn(16, 8, 6, generator=g)
    return pipe.denoise(latents.to(device), [ref.to(device)], embeds, steps, 4.0, 2.0, (0.0, 0.7), **kwargs)


def test_pipeline_records_the_cache_and_every_run_starts_fresh(tiny_pipe):
    ref = PIL.Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    call = dict(num_inference_steps=6, text_guidance_scale=4.0, image_guidance_scale=2.0, cfg_range=(0.0, 0.5),
                seed=3)
    first = tiny_pipe("make it blue", [ref], step_cache=TaylorSeerConfig(first_enhance=2), **call)
    second = tiny_pipe("make it blue", [ref], step_cache=TaylorSeerConfig(first_enhance=2), **call)
    assert torch.equal(first.latents, second.latents)  # no state leaks from one generation into the next
    record = first.to_record()["step_cache"]
    assert record == second.step_cache
    # The record names what ran: the per-call cache replaces the (plain) recipe's, with every setting.
    assert first.settings["precision"] == "bf16+taylorseer:first_enhance=2"
    assert first.settings["recipe"]["step_cache"] == TaylorSeerConfig(first_enhance=2).to_dict()
    assert record["calls"] == first.transformer_calls == 4 * 3 + 2
    assert record["per_branch"]["cond"] == {"calls": 6, "computed": 3, "computed_fraction": 0.5}
    assert record["per_branch"]["ref"] == record["per_branch"]["uncond"] == {"calls": 4, "computed": 2,
                                                                            "computed_fraction": 0.5}
    assert record["computed_fraction"] == 7 / 14 and len(record["computed_per_call"]) == 14
    plain = tiny_pipe("make it blue", [ref], **call)
    assert plain.step_cache is None and "step_cache" not in plain.settings["recipe"]
    assert not torch.equal(first.latents, plain.latents)
    assert tiny_pipe.transformer.main_layers_strategy is None


def test_a_cache_that_always_computes_is_the_plain_pipeline():
    pipe = _denoiser()
    plain = _denoise(pipe)
    for config in (TaylorSeerConfig(first_enhance=100), TeaCacheConfig(rel_l1_thresh=1e-12)):
        cached = _denoise(pipe, step_cache=config)
        assert all(pipe.step_cache_stats.computed_per_call)
        assert torch.equal(cached, plain), config.label


def test_teacache_with_a_huge_threshold_computes_only_first_and_last_steps():
    pipe = _denoiser(precision="bf16+teacache:1e6")
    latents = _denoise(pipe)
    computed = [(c.branch, c.step) for c in pipe.step_cache_stats.calls if c.computed]
    assert computed == [("cond", 0), ("ref", 0), ("uncond", 0), ("cond", 7)]
    assert torch.isfinite(latents).all()


def test_fp8_and_regional_compile_compose_with_step_caches():
    eager, compiled = _denoiser(), _denoiser()
    compiled.transformer.compile_blocks(backend="eager")  # dynamo traces every block; no C++ toolchain needed
    for config in (TaylorSeerConfig(), TeaCacheConfig(0.3)):
        expected = _denoise(eager, step_cache=config)
        pattern = eager.step_cache_stats.computed_per_call
        torch.testing.assert_close(_denoise(compiled, step_cache=config), expected, rtol=1e-5, atol=1e-5)
        assert compiled.step_cache_stats.computed_per_call == pattern and not all(pattern)
    taylor = _denoise(eager, step_cache=TaylorSeerConfig())
    fp8 = _denoiser(precision="fp8+taylorseer")
    fp8_latents = _denoise(fp8)
    assert fp8.step_cache_stats.computed_per_call == eager.step_cache_stats.computed_per_call
    assert torch.isfinite(fp8_latents).all() and not torch.equal(fp8_latents, taylor)  # the FP8 layers ran


# --------------------------------------------------------------------------------------------- CUDA graphs
def test_a_recipe_carries_its_step_cache_and_bad_names_fail_before_loading(tmp_path):
    with pytest.raises(ValueError, match="teacache"):
        OmniGen2Pipeline.from_pretrained(tmp_path / "no-checkpoint-here", precision="fp8+teacache:-1",
                                         cuda_graphs=True, device="cpu")
    pipe = _denoiser(precision="bf16+taylorseer:first_enhance=2")
    assert pipe.step_cache == TaylorSeerConfig(first_enhance=2) and pipe.precision == "bf16+taylorseer:first_enhance=2"
    _denoise(pipe, steps=4)
    assert pipe.step_cache_stats.per_branch()["cond"]["computed"] == 2  # calls 0 and 1; the next full one is 4


def test_graph_keys_name_the_path_and_first_calls_run_eagerly():
    model = OmniGen2Transformer(TransformerConfig.from_name("tiny")).eval()
    cache = make_step_cache(TaylorSeerConfig(first_enhance=2, fresh_threshold=2))
    latents, t, text, mask, refs = _tiny_inputs()
    keys = []
    with installed(model, cache), torch.no_grad():
        for run in range(2):
            cache.start(5)
            for step in range(5):
                cache.begin_call("cond", step)
                keys.append(cache.graph_key())
                model(latents, t, text, mask, ref_latents=refs)
    assert keys[0] is None and keys[5] is None  # each run's first call (re)initialises the buffers
    assert [k[2] for k in keys[1:5]] == [True, False, True, False]
    assert keys[1:5] == keys[6:10]  # later runs reuse the same buffers, so captured graphs stay valid
    assert make_step_cache(TeaCacheConfig()).graph_key() is None


def test_taylorseer_through_the_graph_wrapper_on_cpu_runs_eagerly_and_matches():
    model = OmniGen2Transformer(TransformerConfig.from_name("tiny")).eval()
    wrapped = CudaGraphForward(model)
    outputs = []
    for fn in (model, wrapped):
        cache = make_step_cache(TaylorSeerConfig(first_enhance=2, fresh_threshold=2))
        cache.start(6)
        with installed(model, cache), torch.no_grad():
            for step in range(6):
                cache.begin_call("cond", step)
                outputs.append(fn(*_tiny_inputs(step)[:4], ref_latents=_tiny_inputs(step)[4]))
    for a, b in zip(outputs[:6], outputs[6:]):
        assert torch.equal(a, b)
    assert wrapped.captures == 0


@pytest.mark.gpu
def test_taylorseer_replays_cuda_graphs_and_matches_eager():
    results = {}
    for graphs in (False, True):
        pipe = OmniGen2Pipeline(synthetic.build_transformer("tiny"), synthetic.build_vae("tiny"),
                                FlowMatchEulerScheduler(), device="cuda", dtype=torch.float32, progress=False,
                                cuda_graphs=graphs, precision="bf16+taylorseer")
        results[graphs] = [_denoise(pipe, steps=12, device="cuda") for _ in range(2)]  # run 2 replays run 1's graphs
        if graphs:
            wrapper = pipe._transformer_fn
            assert wrapper.disabled_reason is None and wrapper.captures == 6 and wrapper.replays > 40
    for eager, graphed in zip(results[False], results[True]):
        torch.testing.assert_close(graphed, eager, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_teacache_replays_its_main_stack_as_graphs_and_matches_eager():
    # The decision reads each pass's activations on the host, so whole passes run eagerly and every computed
    # call's main stack replays a graph: the same kernels with the same inputs, so the same numbers and decisions.
    results, stats = {}, {}
    for graphs in (False, True):
        pipe = OmniGen2Pipeline(synthetic.build_transformer("tiny"), synthetic.build_vae("tiny"),
                                FlowMatchEulerScheduler(), device="cuda", dtype=torch.float32, progress=False,
                                cuda_graphs=graphs, precision="bf16+teacache:0.3")
        results[graphs] = [_denoise(pipe, steps=12, device="cuda") for _ in range(2)]
        stats[graphs] = pipe.step_cache_stats.computed_per_call
        if graphs:
            wrapper = pipe._transformer_fn
            assert wrapper.captures == 0  # no whole pass is captured
            parts = wrapper.stack_graphs
            assert parts.disabled_reason is None and parts.captures == 3  # one main stack per CFG branch shape
            assert parts.replays == 2 * sum(stats[graphs]) - parts.captures
    assert stats[True] == stats[False] and not all(stats[True])  # some calls skipped, the same ones
    for eager, graphed in zip(results[False], results[True]):
        torch.testing.assert_close(graphed, eager, rtol=1e-5, atol=1e-5)
