"""Time one full-size OmniGen2 transformer forward (random weights at the shipped config, bf16), eager and compiled.

Shapes: the 1024x1024 edit with one 1024x1024 reference (4096 noisy + 4096 reference + text tokens, ~8.4k) and the
512x512 edit with one 512x512 reference. Latency does not depend on weight values, so random weights measure it.

    python -m benchmarks.bench_transformer --out results/bench_transformer_h100.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from harness.core.records import run_manifest, write_json_atomic
from benchmarks._common import build_model, time_forward

SHAPES = {  # name: (output side in pixels, reference side in pixels, text tokens)
    "edit-1024-1ref": (1024, 1024, 200),
    "edit-512-1ref": (512, 512, 200),
}


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
