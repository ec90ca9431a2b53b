"""Precision recipes x execution modes, side by side in one process, through the real edit pipeline.

Recipes (`omnigen2_fp8.precision`): bf16, fp8, fp8+fp8attn, plus this benchmark's own variant words on an fp8
recipe (alternatives measured against the library's defaults, forced with `dispatch.use_plan` or the config):
`normquant` (the FP8 layers fed by a modulated RMSNorm run the cublas-inductor-quant kernel plan), `inductorquant`
(every FP8 layer runs it: under torch.compile inductor writes the quantization kernels), `fusedblock` (the fused
block kernels of fp8/fused_block.py), `fusednormquant` (only its two norm-to-e4m3 kernels; QK-norm + RoPE and the
last residual stay torch ops for inductor), `fusedrows` (its three row kernels: both norm-to-e4m3 kernels and the
last residual; QK-norm + RoPE stays torch ops), `fusedmodnorm` (only the modulated norm -> e4m3 before to_qkv and
QK-norm + RoPE), `exactaccum` (Fp8Config(fast_accumulation=False)), `unitgateup` (gate/up as a unit-scale GEMM,
dequantized in the SwiGLU kernel); on any recipe, `torchqk` (QK-norm + RoPE as torch ops, fused by inductor under
compile, instead of the pipeline's default Triton kernel: OmniGen2Pipeline(fused_qk_norm_rope=False)),
`unfusedblock` (the block's torch ops between the FP8 GEMMs, the FP8 default before the fused block was);
`--launch-json` (a sweep's winners from bench_fp8_layers --launch-out) sets the quantization kernel's launches of
every FP8 layer. Modes: eager, compile
(regional torch.compile of every DiT block), graphs (each CFG branch's pass replayed as a CUDA graph),
compile+graphs.
Sizes: the GEdit setting (512x512 edit of one 512x512 reference, 20 steps, text 5.0 / image 1.5 guidance, shift 3)
and the 1024x1024 one-reference edit (28 steps). Every step is a 3-branch CFG step (cond, ref, uncond passes).

Measured per (size, recipe, mode), arms alternating round by round in one process:
- step_ms: median wall time of one denoising step (OmniGen2Pipeline.denoise over a few steps, CUDA synchronised);
- first_call_s: the first denoise call (compilation, autotuning, graph capture included) and startup_s = that
  minus the steady steps it ran;
- edit_ms: one whole edit (text encode, VAE encode, denoise, VAE decode) through OmniGen2Pipeline.__call__;
- peak_vram_gib: this arm's DiT weights + memory its warm-up kept (graph pools) + the transient peak of a step.
Then `ratios` per size: fp8_best_over_bf16_best, fp8_default_over_bf16_default (the `edit` CLI's default mode on
CUDA), and fp8/bf16 per mode (speed-ups: > 1 means FP8 is faster). Random full-size weights (latency only).

    python -m benchmarks.bench_recipes --out results/perf_recipes_h200.json
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from benchmarks._common import cuda_kernel_times, read_launch_table, run_keeping_partial, top_kernels
from harness.core.records import run_manifest, write_json_atomic
from harness.profile.taxonomy import categorize
from omnigen2_fp8 import synthetic
from omnigen2_fp8.modes import CUDA_DEFAULT_MODE, EAGER_MODE
from omnigen2_fp8.fp8 import Fp8Linear, Kernel, quantize_fp8
from omnigen2_fp8.fp8.attention_error import attention_error_probe, has_fp8_attention
from omnigen2_fp8.fp8.dispatch import select_kernel_plan, with_launch
from omnigen2_fp8.fp8.kernels import LaunchConfig
from omnigen2_fp8.measure import StageClock
from omnigen2_fp8.pipeline import OmniGen2Pipeline
from omnigen2_fp8.precision import Recipe, RecipeError, parse_recipe

PROMPT = "Replace the cloudy sky with a clear sunset and add a small red sailing boat on the water."
SIZES = {  # name: side (output and reference, pixels), whole-edit steps, guidance
    "gedit-512": dict(side=512, steps=20, guidance=dict(text_guidance_scale=5.0, image_guidance_scale=1.5,
                                                        time_shift=3.0)),
    "edit-1024": dict(side=1024, steps=28, guidance=dict(text_guidance_scale=5.0, image_guidance_scale=2.0)),
}
MODES = ("eager", "compile", "graphs", "compile+graphs")
RECIPES = ("bf16", "fp8", "fp8+fp8attn", "fp8+exactaccum", "fp8+unitgateup")
# This benchmark's variant words (not library recipe parts): an alternative to a library default, on an fp8 recipe.
VARIANTS = ("normquant", "inductorquant", "fusedblock", "fusednormquant", "fusedrows", "fusedmodnorm", "exactaccum",
            "unitgateup", "torchqk", "unfusedblock")
# The fused block ops each variant leaves to torch (and so to inductor under compile).
REFERENCE_OPS = {"fusedblock": (), "fusednormquant": ("qk_norm_rope", "gated_residual_rmsnorm"),
                 "fusedrows": ("qk_norm_rope",),
                 "fusedmodnorm": ("gated_residual_rmsnorm", "gated_residual_rmsnorm_quant")}
# Variant words any recipe may carry (the others change FP8 layers).
ANY_PRECISION = frozenset({"torchqk"})
NORM_ELEMENTWISE_MEMCPY_QUANT = ("quant", "memcpy", "norm-elementwise", "other")


@dataclass
class Arm:
    recipe: str
    mode: str
    pipe: OmniGen2Pipeline
    weight_bytes: int
    results: dict = field(default_factory=dict)  # size -> measurements
    error: str | None = None  # set when the arm failed: it is skipped from then on, the others go on

    @property
    def name(self) -> str:
        return f"{self.recipe}/{self.mode}"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def allocated() -> int:
    return torch.cuda.memory_allocated() if torch.cuda.is_available() else 0


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak() -> int:
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def split_recipe(name: str) -> tuple[Recipe, frozenset[str]]:
    """A benchmark recipe name -> (the library recipe, the variant words it carries)."""
    words = name.split("+")
    recipe = parse_recipe("+".join(w for w in words if w not in VARIANTS))
    variants = frozenset(w for w in words if w in VARIANTS)
    if variants - ANY_PRECISION and not recipe.quantized:
        raise RecipeError(f"{name!r}: {sorted(variants - ANY_PRECISION)} change FP8 layers; use them on an fp8 "
                          "recipe")
    return recipe, variants


def build_models(recipes: list[str], device: str, preset: str, dtype: torch.dtype,
                 launch: LaunchConfig | None = None) -> dict[str, torch.nn.Module]:
    """One DiT per recipe (eager), all from the same random weights; compile arms get their own copies."""
    base = synthetic.build_transformer(preset, device, dtype, seed=0)
    models = {}
    for name in recipes:
        recipe, variants = split_recipe(name)
        # only the plain bf16 recipe runs the base model itself: a variant sets state on its own copy
        model = base if not recipe.quantized and not variants else copy.deepcopy(base)
        if recipe.quantized:
            config = recipe.fp8_config()
            if "exactaccum" in variants:
                config = dataclasses.replace(config, fast_accumulation=False)
            quantize_fp8(model, config)
        for layer_name, module in model.named_modules():
            if isinstance(module, Fp8Linear) and module.weight.is_cuda:  # CPU layers run the reference plan
                plan = variant_plan(module, layer_name, variants, launch)
                if plan != module.kernel_plan():
                    module.use_plan(plan)
        models[name] = model
    return models


def variant_plan(layer: Fp8Linear, name: str, variants: frozenset[str], launch: LaunchConfig | None):
    """The kernel plan an FP8 layer called `name` runs in an arm with these variant words (see the module docstring).

    normquant / inductorquant: the cublas-inductor-quant plan (under torch.compile the quantization is torch ops,
    which inductor fuses into the kernel before it: for normquant the modulated RMSNorm of to_qkv and linear_13, so
    e4m3 + scales are written directly, no BF16 round trip), on those two layers or on every layer."""
    plan = layer.kernel_plan()
    if "inductorquant" in variants or ("normquant" in variants
                                       and name.endswith(("attn.to_qkv", "feed_forward.linear_13"))):
        plan = select_kernel_plan(Kernel.CUBLAS_INDUCTOR_QUANT, layer.weight.device)
    if launch is not None:
        plan = with_launch(plan, launch)
    if "unitgateup" in variants:
        plan = dataclasses.replace(plan, gate_up_unit_scales=True)
    if "unfusedblock" in variants:
        plan = dataclasses.replace(plan, fused_block=False)
    fused = [word for word in REFERENCE_OPS if word in variants]
    if fused:
        plan = dataclasses.replace(plan, fused_block=True, reference_block_ops=REFERENCE_OPS[fused[0]])
    if "torchqk" in variants and plan.fused_block:  # the fused block's QK-norm + RoPE as torch ops too
        plan = dataclasses.replace(plan, reference_block_ops=tuple(sorted({*plan.reference_block_ops,
                                                                          "qk_norm_rope"})))
    return plan


def build_arms(recipes: list[str], modes: list[str], device: str, preset: str = "full",
               only: set[str] | None = None, launch: LaunchConfig | None = None) -> list[Arm]:
    """An OmniGen2Pipeline per (recipe, mode) sharing the MLLM, VAE and tokenizer; compile modes share a copy.
    preset "tiny" (float32, CPU) only smoke-tests this script."""
    dtype = torch.bfloat16 if preset == "full" else torch.float32
    models = build_models(recipes, device, preset, dtype, launch)
    components = synthetic.build_components(preset, device, dtype, seed=0)
    arms = []
    for recipe in recipes:
        compiled_copy = None
        for mode in modes:
            if only and f"{recipe}/{mode}" not in only:
                continue
            compiled = mode.startswith("compile")
            model = models[recipe]
            if compiled:
                compiled_copy = compiled_copy or copy.deepcopy(model)
                model = compiled_copy
            # the model is quantized already, with the arm's config (a variant may change it, e.g. exactaccum)
            pipe = OmniGen2Pipeline.from_components(components, model, device=device, dtype=dtype,
                                                    precision=split_recipe(recipe)[0], compile=compiled,
                                                    fp8_config=getattr(model, "fp8_config", None),
                                                    cuda_graphs=mode.endswith("graphs"), progress=False,
                                                    fused_qk_norm_rope="torchqk" not in split_recipe(recipe)[1])
            arms.append(Arm(recipe, mode, pipe, weight_bytes(model)))
    return arms


def live(arms: list[Arm]) -> list[Arm]:
    return [a for a in arms if a.error is None]


def fail(arm: Arm, err: Exception) -> None:
    arm.error = f"{type(err).__name__}: {err}"
    print(f"  FAILED {arm.name}: {arm.error}\n{traceback.format_exc()}", flush=True)


def accuracy(arms: list[Arm], inputs) -> dict:
    """One cond pass (prompt + reference) of each recipe's eager DiT against BF16's: relative L2 of the velocity;
    and, for FP8 attention, every block's attention output against BF16 attention on the same inputs."""
    _, embeds, refs, latents = inputs
    eager = {a.recipe: a.pipe.transformer for a in arms if a.mode == "eager"}
    if "bf16" not in eager:
        return {}
    t = torch.full((1,), 0.5, device=latents.device, dtype=latents.dtype)
    call = (latents, t, embeds.prompt, embeds.prompt_mask)
    with torch.no_grad():
        reference = eager["bf16"](*call, ref_latents=[refs]).float()
        out = {"velocity_rel_err_vs_bf16": {}, "attention_rel_err_per_layer": {}}
        for recipe, model in eager.items():
            if recipe == "bf16":
                continue
            velocity = model(*call, ref_latents=[refs]).float()
            out["velocity_rel_err_vs_bf16"][recipe] = float((velocity - reference).norm() / reference.norm())
            if has_fp8_attention(model):
                with attention_error_probe(model) as probe:
                    model(*call, ref_latents=[refs])
                out["attention_rel_err_per_layer"][recipe] = probe.summary()["per_layer"]
    return out


def size_inputs(pipe: OmniGen2Pipeline, side: int):
    """Prompt embeddings, one reference latent and the noise for a side x side edit (shared by every arm)."""
    rng = np.random.default_rng(side)
    image = PIL.Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
    embeds = pipe.encode_prompt(PROMPT, "", need_negative=True)
    refs = pipe.encode_images([image], torch.Generator("cpu").manual_seed(1))
    latents = pipe.prepare_latents(side, side, torch.Generator("cpu").manual_seed(0))
    return image, embeds, refs, latents


def timed_denoise(arm: Arm, inputs, steps: int, guidance: dict) -> tuple[float, int]:
    """(seconds, transient peak bytes above what was allocated before) of `steps` denoising steps."""
    _, embeds, refs, latents = inputs
    g = {k: v for k, v in guidance.items() if k != "time_shift"}
    sync()
    before = allocated()
    reset_peak()
    start = time.perf_counter()
    arm.pipe.denoise(latents, refs, embeds, num_inference_steps=steps, progress=False, **g)
    sync()
    return time.perf_counter() - start, peak() - before


def warm_up(arms: list[Arm], size: str, inputs, warm_steps: int) -> None:
    """First call per arm (compile / capture / autotune happen here), then one more untimed call."""
    guidance = SIZES[size]["guidance"]
    for arm in live(arms):
        before = allocated()
        try:
            first_s, _ = timed_denoise(arm, inputs, warm_steps, guidance)
            second_s, _ = timed_denoise(arm, inputs, warm_steps, guidance)
        except Exception as err:  # one broken arm must not cost the others' numbers
            fail(arm, err)
            continue
        graphs = getattr(arm.pipe, "_transformer_fn", None)
        if getattr(graphs, "disabled_reason", None):  # capture failed: the arm would time a different mode
            fail(arm, RuntimeError(f"CUDA graph capture failed: {graphs.disabled_reason}"))
            continue
        arm.results[size] = {"first_call_s": first_s, "startup_s": max(first_s - second_s, 0.0),
                             "retained_bytes": max(allocated() - before, 0),
                             "step_ms_rounds": [], "transient_bytes": 0}
        print(f"  warm {size:10s} {arm.name:22s} first call {first_s:7.2f} s", flush=True)


def time_steps(arms: list[Arm], size: str, inputs, rounds: int, steps: int) -> None:
    """Per-step times, arms alternating (rotated order each round)."""
    guidance = SIZES[size]["guidance"]
    for r in range(rounds):
        order = arms[r % len(arms):] + arms[: r % len(arms)]
        for arm in live(order):
            try:
                seconds, transient = timed_denoise(arm, inputs, steps, guidance)
            except Exception as err:
                fail(arm, err)
                continue
            res = arm.results[size]
            res["step_ms_rounds"].append(seconds / steps * 1e3)
            res["transient_bytes"] = max(res["transient_bytes"], transient)
    for arm in live(arms):
        res = arm.results[size]
        res["step_ms"] = float(np.median(res["step_ms_rounds"]))
        res["peak_vram_gib"] = (arm.weight_bytes + res["retained_bytes"] + res["transient_bytes"]) / 2**30
        print(f"  step {size:10s} {arm.name:22s} {res['step_ms']:8.2f} ms  "
              f"(rounds {', '.join(f'{t:.1f}' for t in res['step_ms_rounds'])})", flush=True)


def time_edits(arms: list[Arm], size: str, inputs, steps: int, rounds: int) -> None:
    """Whole edits through OmniGen2Pipeline.__call__, arms alternating; the median of `rounds` per arm."""
    spec = SIZES[size]
    arms = live(arms)
    if not arms:
        return
    image = inputs[0]
    call = dict(num_inference_steps=steps, width=image.size[0], height=image.size[1], seed=0, progress=False,
                **spec["guidance"])
    arms[0].pipe(PROMPT, [image], **{**call, "num_inference_steps": 1})  # MLLM / VAE warm-up at this size
    for r in range(rounds):
        for arm in live(arms[r % len(arms):] + arms[: r % len(arms)]):
            sync()
            resident = allocated()
            try:
                result = arm.pipe(PROMPT, [image], **call, clock=StageClock(arm.pipe.device))
            except Exception as err:
                fail(arm, err)
                continue
            res = arm.results[size]
            res.setdefault("edit_ms_rounds", []).append(result.total_seconds * 1e3)
            res["edit_stage_s"] = result.stage_seconds
            res["edit_steps"] = steps
            res["edit_transformer_calls"] = result.transformer_calls
            over = max((result.peak_vram_bytes or 0) - resident, 0)
            res["edit_peak_over_resident_gib"] = max(res.get("edit_peak_over_resident_gib", 0), over / 2**30)
    for arm in live(arms):
        res = arm.results[size]
        res["edit_ms"] = float(np.median(res["edit_ms_rounds"]))
        print(f"  edit {size:10s} {arm.name:22s} {res['edit_ms']:9.1f} ms", flush=True)


def profile_step(arm: Arm, inputs, guidance: dict, steps: int = 1) -> dict:
    """Kernel time per 3-branch step by category (harness.profile.taxonomy.categorize on kernel names), from one
    profiled call of `steps` steps, as the timed rounds call it; its wall time per step beside the GPU's span."""
    from torch.profiler import ProfilerActivity, profile

    _, embeds, refs, latents = inputs
    g = {k: v for k, v in guidance.items() if k != "time_shift"}
    sync()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        arm.pipe.denoise(latents, refs, embeds, num_inference_steps=steps, progress=False, **g)
        sync()
    wall = (time.perf_counter() - start) * 1e3 / steps
    per_kernel = {name: (calls / steps, ms / steps) for name, (calls, ms) in cuda_kernel_times(prof).items()}
    categories: dict[str, float] = {}
    for name, (_, ms) in per_kernel.items():
        cat = categorize(name)
        categories[cat] = categories.get(cat, 0.0) + ms
    total = sum(categories.values()) or 1.0
    overhead = sum(categories.get(c, 0.0) for c in NORM_ELEMENTWISE_MEMCPY_QUANT)
    device = [e.time_range for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    # First kernel start to last kernel end: kernel_ms plus the time the GPU sat idle inside the steps.
    span = (max(r.end for r in device) - min(r.start for r in device)) / 1e3 / steps if device else 0.0
    return {"arm": arm.name, "steps": steps, "kernel_ms": total, "gpu_span_ms": span, "profiled_wall_ms": wall,
            "categories_ms": dict(sorted(categories.items(), key=lambda kv: -kv[1])),
            "norm_elementwise_memcpy_quant_share": overhead / total,
            "top_kernels": top_kernels(per_kernel, 25)}


def ratios(arms: list[Arm], size: str) -> dict:
    """Speed-ups over BF16 (BF16 ms / other ms; > 1: faster than BF16) of one 3-branch step at this size.

    fp8_best_over_bf16_best: the fastest FP8 arm without FP8 attention against the fastest BF16 arm;
    fp8attn_best_over_bf16_best: the same with FP8 attention (library recipes only: arms with a benchmark variant
    word are alternatives to the library's defaults and appear per recipe); *_default_*: the `edit` CLI's CUDA
    default mode (plain FP8 recipe); per recipe: best, default, eager and per-mode ratios. Whole-edit ratios where
    measured.
    """
    step = {(a.recipe, a.mode): a.results[size]["step_ms"] for a in arms if "step_ms" in a.results.get(size, {})}
    bf16 = {m: ms for (r, m), ms in step.items() if r == "bf16"}
    if not bf16:
        return {}
    bf16_best = min(bf16, key=bf16.get)
    out = {"bf16_best": {"mode": bf16_best, "step_ms": bf16[bf16_best]}, "recipes": {}}
    for label, keep in (("fp8", lambda r: "fp8attn" not in r), ("fp8attn", lambda r: "fp8attn" in r)):
        mine = {k: ms for k, ms in step.items() if k[0] != "bf16" and keep(k[0]) and not split_recipe(k[0])[1]}
        if mine:
            best = min(mine, key=mine.get)
            out[f"{label}_best"] = {"arm": "/".join(best), "step_ms": mine[best]}
            out[f"{label}_best_over_bf16_best"] = bf16[bf16_best] / mine[best]
    for recipe in sorted({r for r, _ in step if r != "bf16"}):
        mine = {m: ms for (r, m), ms in step.items() if r == recipe}
        best = min(mine, key=mine.get)
        row = {"best_mode": best, "best_over_bf16_best": bf16[bf16_best] / mine[best],
               "per_mode_over_bf16_same_mode": {m: bf16[m] / mine[m] for m in mine if m in bf16}}
        for label, mode in (("default", CUDA_DEFAULT_MODE), ("eager", EAGER_MODE)):
            if mode in mine and mode in bf16:
                row[f"{label}_over_bf16_{label}"] = bf16[mode] / mine[mode]
        out["recipes"][recipe] = row
    if "fp8" in out["recipes"] and "default_over_bf16_default" in out["recipes"]["fp8"]:
        out["fp8_default_over_bf16_default"] = out["recipes"]["fp8"]["default_over_bf16_default"]
    edits = {(a.recipe, a.mode): a.results[size]["edit_ms"] for a in arms if "edit_ms" in a.results.get(size, {})}
    bf16_edit = edits.get(("bf16", CUDA_DEFAULT_MODE))
    if bf16_edit:
        out["edit_default_over_bf16_default"] = {r: bf16_edit / ms for (r, m), ms in edits.items()
                                                 if m == CUDA_DEFAULT_MODE and r != "bf16"}
    return out


def arm_table(arms: list[Arm], size: str) -> dict:
    keep = ("step_ms", "step_ms_rounds", "first_call_s", "startup_s", "peak_vram_gib", "edit_ms", "edit_ms_rounds",
            "edit_stage_s", "edit_steps", "edit_transformer_calls", "edit_peak_over_resident_gib")
    return {a.name: {"weight_gib": a.weight_bytes / 2**30, **{k: v for k, v in a.results[size].items() if k in keep}}
            for a in arms if size in a.results}


def run(args, record: dict) -> None:
    save = lambda: write_json_atomic(args.out, record)  # noqa: E731
    from torch._dynamo.utils import counters

    torch._logging.set_logs(recompiles=True)  # any recompilation prints its reason (expected: none)
    # Several model variants share TransformerBlock.forward here (2 block kinds each): beyond dynamo's default
    # budget of 8 compiled versions per function, later variants would silently run eager.
    torch._dynamo.config.recompile_limit = 64
    start = time.perf_counter()
    launch = None
    if args.launch_json:
        launch, record["settings"]["quant_launch"] = read_launch_table(args.launch_json)
    arms = build_arms(args.recipes, args.modes, args.device, args.preset, set(args.arms or ()), launch)
    record["build_s"] = time.perf_counter() - start
    print(f"built {len(arms)} arms in {record['build_s']:.1f} s; {allocated() / 2**30:.1f} GiB", flush=True)
    for size in args.sizes:
        spec = SIZES[size]
        inputs = size_inputs(arms[0].pipe, spec["side"] // args.side_divisor)
        _, embeds, refs, latents = inputs
        entry = record["sizes"].setdefault(size, {
            "side": spec["side"], "guidance": spec["guidance"], "prompt_tokens": int(embeds.prompt_mask.sum()),
            "negative_tokens": int(embeds.negative_mask.sum()), "latent": list(latents.shape),
            "ref_latents": [list(r.shape) for r in refs]})
        try:
            entry["accuracy"] = accuracy(arms, inputs)
        except Exception as err:  # measured, or said why not
            entry["accuracy"] = {"error": f"{type(err).__name__}: {err}"}
        save()
        warm_up(arms, size, inputs, args.warm_steps)
        time_steps(arms, size, inputs, args.rounds, args.steps_per_round)
        entry["arms"] = arm_table(arms, size)
        entry["ratios"] = ratios(arms, size)
        save()
        if args.profile:
            entry["profiles"] = []
            for arm in (a for a in live(arms) if a.mode in args.profile):
                try:
                    entry["profiles"].append(profile_step(arm, inputs, spec["guidance"], args.steps_per_round))
                except Exception as err:  # a profile is extra: keep going
                    entry["profiles"].append({"arm": arm.name, "error": f"{type(err).__name__}: {err}"})
            save()
        if args.edit_rounds:
            time_edits([a for a in arms if a.mode in args.edit_modes and a.recipe in args.edit_recipes], size, inputs,
                       args.edit_steps or spec["steps"], args.edit_rounds)
            entry["arms"] = arm_table(arms, size)
            entry["ratios"] = ratios(arms, size)
        entry["failed_arms"] = {a.name: a.error for a in arms if a.error}
        print(f"{size}: {entry['ratios']}", flush=True)
        record["dynamo"] = {"unique_graphs": counters["stats"]["unique_graphs"],
                            "frames_ok": counters["frames"]["ok"], "frames_total": counters["frames"]["total"]}
        save()
    record["seconds"] = time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=list(SIZES))
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES),
                        help=f"recipes (library names, plus the variant words {VARIANTS}); default {RECIPES}")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per size (arms alternate)")
    parser.add_argument("--steps-per-round", type=int, default=3, help="denoising steps per timed call")
    parser.add_argument("--warm-steps", type=int, default=2, help="denoising steps of each warm-up call")
    parser.add_argument("--edit-rounds", type=int, default=1, help="whole edits per arm and size (0: none)")
    parser.add_argument("--edit-steps", type=int, default=None, help="override the whole-edit steps of every size")
    parser.add_argument("--arms", nargs="+", metavar="RECIPE/MODE",
                        help="run only these arms (default: every recipe x mode)")
    parser.add_argument("--edit-modes", nargs="+", choices=MODES, default=[EAGER_MODE, CUDA_DEFAULT_MODE],
                        help="modes whose arms also time whole edits")
    parser.add_argument("--edit-recipes", nargs="+", default=list(RECIPES), help="recipes that time whole edits")
    parser.add_argument("--profile", nargs="*", choices=MODES, default=None,
                        help="kernel categories of one step for the arms of these modes (default: none; "
                             "bare --profile: compile)")
    parser.add_argument("--launch-json", type=Path, default=None,
                        help="quantization-kernel launches of every FP8 layer: bench_fp8_layers --launch-out's table")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", choices=("full", "tiny"), default="full",
                        help="tiny: float32 toy models with sides / 8, a CPU smoke test of this script only")
    args = parser.parse_args()
    for name in args.recipes:  # a wrong name fails before minutes of model building
        try:
            split_recipe(name)
        except RecipeError as err:
            parser.error(str(err))
    args.side_divisor = 1 if args.preset == "full" else 8
    if args.profile is not None and not args.profile:
        args.profile = ["compile"]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA GPU here; the timings mean something on a GPU only (--preset tiny --device cpu "
                     "smoke-tests the script)")
    record = {"manifest": run_manifest(synthetic=args.preset, device=args.device,
                                       extra={"benchmark": "recipes x modes"}),
              "settings": {"rounds": args.rounds, "steps_per_round": args.steps_per_round,
                           "warm_steps": args.warm_steps, "edit_rounds": args.edit_rounds,
                           "edit_modes": args.edit_modes, "edit_recipes": args.edit_recipes,
                           "default_mode_cuda": CUDA_DEFAULT_MODE, "prompt": PROMPT},
              "sizes": {}}
    try:
        run_keeping_partial(lambda: run(args, record), record, args.out)
    finally:
        gc.collect()
    write_json_atomic(args.out, record)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
