"""Full OmniGen2 transformer: FP8 vs BF16 forward (eager and compiled), weight memory, and load-time peak VRAM.

Shape: the 1024x1024 edit with one 1024x1024 reference, batch 1: noisy latent [16, 128, 128] -> 4096 tokens,
reference [16, 128, 128] -> 4096 tokens, 100 text tokens (joint sequence 8292). Full-size model with random
weights made on the GPU (latency and memory do not depend on weight values; quality numbers would be meaningless).
Every ratio is measured in this one process: BF16 eager, BF16 compiled (regional: each block), then the same model
quantized in place with quantize_fp8(model, Fp8Config()), FP8 eager, FP8 compiled. Then both models are saved to
local disk and reloaded with checkpoints.load_transformer to measure the load-time peak.

    python -m benchmarks.bench_fp8_transformer --out results/fp8_transformer_h100.json
"""
from __future__ import annotations

import argparse
import gc
import shutil
import tempfile
import time
from pathlib import Path

import torch

from harness.core.records import run_manifest, write_json_atomic
from harness.core.vocab import KERNEL_CATEGORIES
from harness.profile.taxonomy import categorize
from omnigen2_fp8.fp8 import Fp8Config, Kernel, quantize_fp8, save_fp8_checkpoint
from omnigen2_fp8.fp8.dispatch import select_kernel_plan, use_plan
from omnigen2_fp8.fp8.kernels import DEFAULT_LAUNCH, LaunchConfig
from benchmarks._common import (build_model, cuda_kernel_times, read_launch_table, run_keeping_partial, sync,
                               time_forward, top_kernels)
from omnigen2_fp8.checkpoints import load_transformer, save_transformer
from omnigen2_fp8.transformer import OmniGen2Transformer

GOALS = {"fp8_vs_bf16_same_mode": 1.25, "fp8_compiled_vs_bf16_eager": 1.8, "fp8_weight_fraction": 0.55}


def make_inputs(model: OmniGen2Transformer, latent_side: int, ref_side: int, text_len: int, device: str):
    c = model.config
    g = torch.Generator(device=device).manual_seed(0)
    latents = [torch.randn(c.in_channels, latent_side, latent_side, device=device, dtype=torch.bfloat16, generator=g)]
    refs = [[torch.randn(c.in_channels, ref_side, ref_side, device=device, dtype=torch.bfloat16, generator=g)]]
    text = torch.randn(1, text_len, c.text_feat_dim, device=device, dtype=torch.bfloat16, generator=g)
    mask = torch.ones(1, text_len, dtype=torch.bool)  # CPU mask: reading its lengths costs no device sync
    t = torch.full((1,), 0.5, device=device)
    return latents, t, text, mask, refs


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def kernel_profile(model, inputs) -> dict:
    """Kernel time of one forward grouped by category (ms; harness.profile.taxonomy's rules), and the top kernels."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        model(*inputs)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(*inputs)
            torch.cuda.synchronize()
    per_kernel = cuda_kernel_times(prof)
    categories = category_ms({name: ms for name, (_, ms) in per_kernel.items()})
    return {"total_kernel_ms": sum(categories.values()), "categories_ms": categories,
            "top_kernels": top_kernels(per_kernel, 20)}


def category_ms(kernel_ms: dict[str, float]) -> dict[str, float]:
    """Kernel name -> ms summed into every category of the harness vocabulary (in its order, zeros included).

    Only kernel names are seen here (a CUDA-only trace has no launching CPU op), so categorize() decides by name.
    """
    out = dict.fromkeys(KERNEL_CATEGORIES, 0.0)
    for name, ms in kernel_ms.items():
        out[categorize(name)] += ms
    return out


def set_kernel(model: torch.nn.Module, kernel: Kernel, device: str, launch: LaunchConfig = DEFAULT_LAUNCH) -> None:
    """Run every FP8 layer of `model` with `kernel`'s plan and `launch` settings (the library's public seam)."""
    use_plan(model, select_kernel_plan(kernel, device, launch))


def uncompile(model: OmniGen2Transformer) -> None:
    for block in model.blocks():
        block._compiled_call_impl = None
    torch._dynamo.reset()


def load_peak(folder: Path, device: str, then_quantize: bool = False) -> tuple[dict, OmniGen2Transformer]:
    """Peak allocated memory while checkpoints.load_transformer loads `folder` (and optionally quantizes)."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    model = load_transformer(folder, dtype=torch.bfloat16, device=device)
    if then_quantize:
        quantize_fp8(model, Fp8Config())
    torch.cuda.synchronize()
    out = {"seconds": time.perf_counter() - t0,
           "peak_allocated_gib": (torch.cuda.max_memory_allocated() - base) / 2**30,
           "resident_after_gib": (torch.cuda.memory_allocated() - base) / 2**30}
    return out, model


def run(args, result: dict) -> None:
    device = args.device
    save = lambda: write_json_atomic(args.out, result)  # noqa: E731
    model = build_model(device, torch.bfloat16, args.preset)
    inputs = make_inputs(model, args.latent_side, args.latent_side, args.text_tokens, device)
    tokens = 2 * (args.latent_side // 2) ** 2 + args.text_tokens
    result["shape"] = {"latent": [16, args.latent_side, args.latent_side], "ref_latent": [16, args.latent_side,
                       args.latent_side], "text_tokens": args.text_tokens, "joint_tokens": tokens, "batch": 1}
    mem = result.setdefault("memory", {})
    mem["bf16_weight_bytes"] = weight_bytes(model)
    timing = result.setdefault("forward", {})

    timing["bf16_eager"] = time_forward(model, inputs, device, args.warmup, args.repeats)
    with torch.inference_mode():
        reference = torch.stack(model(*inputs)).float()
    print("bf16 eager", timing["bf16_eager"]["median_ms"])
    save()
    if not args.no_compile:
        model.compile_blocks()
        timing["bf16_compiled"] = time_forward(model, inputs, device, args.warmup, args.repeats)
        print("bf16 compiled", timing["bf16_compiled"]["median_ms"])
        if args.profile:
            result["profile_bf16_compiled"] = kernel_profile(model, inputs)
        uncompile(model)
        save()

    tmp = Path(tempfile.mkdtemp(prefix="fp8bench-", dir=args.tmp))
    if args.load_peak:
        t0 = time.perf_counter()
        save_transformer(model, tmp / "bf16")
        result.setdefault("checkpoints", {})["bf16_save_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report = quantize_fp8(model, Fp8Config())
    set_kernel(model, Kernel.AUTO, device, args.launch)
    sync(device)
    result["quantize_s"] = time.perf_counter() - t0
    result["quantize_report"] = {"num_quantized": len(report.quantized), "num_kept": len(report.kept),
                                 "swiglu_folded": len(report.swiglu_folded),
                                 "kept": [[d.name, d.reason.split(":")[0]] for d in report.kept]}
    gc.collect()
    mem["fp8_weight_bytes"] = weight_bytes(model)
    mem["fp8_weight_fraction"] = mem["fp8_weight_bytes"] / mem["bf16_weight_bytes"]
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        mem["fp8_model_allocated_gib"] = torch.cuda.memory_allocated() / 2**30
    print("weight fraction", mem["fp8_weight_fraction"])

    timing["fp8_eager"] = time_forward(model, inputs, device, args.warmup, args.repeats)
    with torch.inference_mode():
        out = torch.stack(model(*inputs)).float()
    result["fp8_output_rel_err_vs_bf16"] = float((out - reference).norm() / reference.norm())
    print("fp8 eager", timing["fp8_eager"]["median_ms"], "rel err", result["fp8_output_rel_err_vs_bf16"])
    if args.profile:
        result["profile_fp8_eager"] = kernel_profile(model, inputs)
    save()
    if not args.no_compile:
        model.compile_blocks()
        timing["fp8_compiled"] = time_forward(model, inputs, device, args.warmup, args.repeats)
        print("fp8 compiled", timing["fp8_compiled"]["median_ms"])
        if args.profile:
            result["profile_fp8_compiled"] = kernel_profile(model, inputs)
        uncompile(model)
        save()
        if args.inductor_quant:  # the alternative: quantization as torch ops, fused by inductor with its neighbours
            set_kernel(model, Kernel.CUBLAS_INDUCTOR_QUANT, device, args.launch)
            model.compile_blocks()
            timing["fp8_compiled_inductor_quant"] = time_forward(model, inputs, device, args.warmup, args.repeats)
            print("fp8 compiled, inductor quantization", timing["fp8_compiled_inductor_quant"]["median_ms"])
            if args.profile:
                result["profile_fp8_compiled_inductor_quant"] = kernel_profile(model, inputs)
            uncompile(model)
            set_kernel(model, Kernel.AUTO, device, args.launch)
            save()

    ratios = result.setdefault("ratios", {})
    if "fp8_compiled_inductor_quant" in timing:
        ratios["fp8_inductor_quant_vs_bf16_compiled"] = (timing["bf16_compiled"]["median_ms"]
                                                        / timing["fp8_compiled_inductor_quant"]["median_ms"])
    ratios["fp8_vs_bf16_eager"] = timing["bf16_eager"]["median_ms"] / timing["fp8_eager"]["median_ms"]
    if "fp8_compiled" in timing:
        ratios["fp8_vs_bf16_compiled"] = timing["bf16_compiled"]["median_ms"] / timing["fp8_compiled"]["median_ms"]
        ratios["fp8_compiled_vs_bf16_eager"] = timing["bf16_eager"]["median_ms"] / timing["fp8_compiled"]["median_ms"]
    print("ratios", ratios)
    save()

    if args.load_peak:
        t0 = time.perf_counter()
        save_fp8_checkpoint(model, tmp / "fp8")
        result["checkpoints"]["fp8_save_s"] = time.perf_counter() - t0
        with torch.inference_mode():
            fp8_out = torch.stack(model(*inputs)).float()
        del model
        loads = result.setdefault("load_peak", {})
        loads["bf16_checkpoint"], m = load_peak(tmp / "bf16", device)
        del m
        loads["fp8_checkpoint"], m = load_peak(tmp / "fp8", device)
        with torch.inference_mode():
            loaded_out = torch.stack(m(*inputs)).float()
        result["fp8_reloaded_max_abs_diff"] = float((loaded_out - fp8_out).abs().max())
        del m
        loads["bf16_checkpoint_then_quantize"], m = load_peak(tmp / "bf16", device, then_quantize=True)
        del m
        loads["fp8_over_bf16_peak"] = (loads["fp8_checkpoint"]["peak_allocated_gib"]
                                       / loads["bf16_checkpoint"]["peak_allocated_gib"])
        print("load peaks", loads)
        save()
    shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--preset", default="omnigen2", help="TransformerConfig preset (tiny for a smoke test)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--latent-side", type=int, default=128, help="latent side (1024 px / 8)")
    parser.add_argument("--text-tokens", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--profile", action="store_true", help="kernel-time roll-up of one forward per mode")
    parser.add_argument("--inductor-quant", action="store_true", help="also time FP8 compiled with the "
                        "quantization left to inductor (Kernel.CUBLAS_INDUCTOR_QUANT)")
    parser.add_argument("--load-peak", action="store_true", help="save both checkpoints and measure load peaks")
    parser.add_argument("--tmp", default=None, help="folder for the temporary checkpoints (local disk)")
    parser.add_argument("--launch-json", default=None, help="quantization-kernel launch table from bench_fp8_layers")
    args = parser.parse_args()
    args.launch = DEFAULT_LAUNCH
    if args.launch_json:
        args.launch, _ = read_launch_table(args.launch_json)
    torch.manual_seed(0)
    result = {"manifest": run_manifest(synthetic="full" if args.preset == "omnigen2" else args.preset,
                                       device=args.device, extra={"benchmark": "fp8 transformer"}),
              "goals": GOALS, "config": Fp8Config().to_dict(),
              "quant_launch": {"hw_cast": args.launch.hw_cast_on_cuda,
                               **{f"{k}-{sw}": list(v) for (k, sw), v in args.launch.overrides}}}
    run_keeping_partial(lambda: run(args, result), result, args.out)
    r, m = result.get("ratios", {}), result.get("memory", {})
    result["goals_met"] = {
        "fp8_vs_bf16_eager": r.get("fp8_vs_bf16_eager", 0) >= GOALS["fp8_vs_bf16_same_mode"],
        "fp8_vs_bf16_compiled": r.get("fp8_vs_bf16_compiled", 0) >= GOALS["fp8_vs_bf16_same_mode"],
        "fp8_compiled_vs_bf16_eager": r.get("fp8_compiled_vs_bf16_eager", 0) >= GOALS["fp8_compiled_vs_bf16_eager"],
        "fp8_weight_fraction": m.get("fp8_weight_fraction", 1) <= GOALS["fp8_weight_fraction"],
    }
    if "load_peak" in result:
        result["goals_met"]["fp8_load_peak_below_bf16"] = result["load_peak"]["fp8_over_bf16_peak"] < 1
    write_json_atomic(args.out, result)
    print("goals met:", result["goals_met"])


if __name__ == "__main__":
    main()
