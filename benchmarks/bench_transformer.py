"""Time one full-size OmniGen2 transformer forward (random weights at the shipped config, bf16), eager and compiled.

Shapes: the 1024x1024 edit with one 1024x1024 reference (4096 noisy + 4096 reference + text tokens, ~8.4k) and the
512x512 edit with one 512x512 reference. Latency does not depend on weight values, so random weights measure it.

    python benchmarks/bench_transformer.py --out results/bench_transformer_h100.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.core.records import run_manifest, write_json_atomic  # noqa: E402
from omnigen2_fp8 import OmniGen2Transformer, TransformerConfig  # noqa: E402

SHAPES = {  # name: (output side in pixels, reference side in pixels, text tokens)
    "edit-1024-1ref": (1024, 1024, 200),
    "edit-512-1ref": (512, 512, 200),
}


def build_model(device: str, dtype: torch.dtype, preset: str = "omnigen2") -> OmniGen2Transformer:
    """A model with random weights made directly on the device (no CPU init, no checkpoint)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = OmniGen2Transformer(TransformerConfig.from_name(preset))
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def make_inputs(side: int, ref_side: int, text_len: int, device: str, dtype: torch.dtype):
    g = torch.Generator(device=device).manual_seed(0)
    lat = side // 8
    ref = ref_side // 8
    latents = [torch.randn(16, lat, lat, device=device, dtype=dtype, generator=g)]
    refs = [[torch.randn(16, ref, ref, device=device, dtype=dtype, generator=g)]]
    text = torch.randn(1, text_len, 2048, device=device, dtype=dtype, generator=g)
    mask = torch.ones(1, text_len, dtype=torch.bool)  # on the CPU: reading its lengths costs no device sync
    t = torch.full((1,), 0.5, device=device)
    tokens = (lat // 2) ** 2 + (ref // 2) ** 2 + text_len
    return (latents, t, text, mask, refs), tokens


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_forward(model, inputs, device: str, warmup: int, repeats: int) -> dict:
    """Median and spread of whole-forward times (CUDA events, perf_counter on a CPU); the first of the `warmup`
    untimed calls is reported as `first_call_s` (compilation, autotuning, lazy initialisation)."""
    with torch.inference_mode():
        t0 = time.perf_counter()
        model(*inputs)
        sync(device)
        first_s = time.perf_counter() - t0
        for _ in range(warmup - 1):
            model(*inputs)
        sync(device)
        times = []
        for _ in range(repeats):
            if str(device).startswith("cuda"):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model(*inputs)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t = time.perf_counter()
                model(*inputs)
                times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    q1, med, q3 = times[len(times) // 4], times[len(times) // 2], times[(3 * len(times)) // 4]
    return {"median_ms": med, "q1_ms": q1, "q3_ms": q3, "min_ms": times[0], "repeats": repeats,
            "iqr_over_median": (q3 - q1) / med, "first_call_s": first_s}


def top_kernels(model, inputs, n: int = 15) -> list[dict]:
    """The kernels of one eager forward by self CUDA time (checks that flash/cuDNN attention really runs)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        model(*inputs)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(*inputs)
            torch.cuda.synchronize()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_device_time_total, reverse=True)[:n]
    total = sum(e.self_device_time_total for e in prof.key_averages())
    out = [{"name": e.key[:120], "calls": e.count, "ms": e.self_device_time_total / 1e3,
            "share": e.self_device_time_total / total} for e in rows]
    for row in out:
        print(f"  {row['share']:6.1%} {row['ms']:8.2f} ms {row['calls']:5d}x  {row['name']}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--kernels", action="store_true", help="print the top CUDA kernels of one eager forward")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")
    device, dtype = "cuda", torch.bfloat16
    model = build_model(device, dtype)
    results = {"manifest": run_manifest(synthetic="full", device=device), "model": "OmniGen2 DiT, shipped config, "
               "random weights (synthetic: latency only)", "params": sum(p.numel() for p in model.parameters()),
               "shapes": {}}
    if args.kernels:
        results["top_kernels_eager_1024"] = top_kernels(model, make_inputs(*SHAPES["edit-1024-1ref"], device, dtype)[0])
    modes = ["eager"] + ([] if args.no_compile else ["compiled"])
    for mode in modes:
        if mode == "compiled":
            model.compile_blocks()
        for name, (side, ref_side, text_len) in SHAPES.items():
            inputs, tokens = make_inputs(side, ref_side, text_len, device, dtype)
            stats = time_forward(model, inputs, device, args.warmup, args.repeats)
            entry = results["shapes"].setdefault(name, {"tokens": tokens, "side": side, "ref_side": ref_side,
                                                        "text_tokens": text_len})
            entry[mode] = stats
            print(f"{name:16s} {mode:9s} tokens={tokens:6d} median {stats['median_ms']:8.2f} ms "
                  f"(IQR/median {stats['iqr_over_median']:.1%})", flush=True)
    for name, entry in results["shapes"].items():
        if "compiled" in entry:
            entry["compiled_speedup"] = entry["eager"]["median_ms"] / entry["compiled"]["median_ms"]
            print(f"{name}: compiled speed-up {entry['compiled_speedup']:.2f}x")
    results["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    write_json_atomic(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
