"""Smoke-test the full-size synthetic pipeline on a GPU: build time, then per-stage times and peak VRAM of edits.

Random weights at the released configs (OmniGen2 DiT, Qwen2.5-VL-3B, FLUX.1 VAE), built directly in GPU memory.
Latency and memory are real; the images mean nothing (the JSON says synthetic). Each scenario is run once to warm
up (kernels, allocator, autotuning) and then measured once; this is a smoke test, not the latency study.

    python -m benchmarks.pipeline_smoke --out results/pipeline_smoke_h100.json
    python -m benchmarks.pipeline_smoke --scenarios issue8 --out results/pipeline_stages_h100.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from harness.core.records import run_manifest, write_json_atomic
from omnigen2_fp8 import synthetic
from omnigen2_fp8.measure import StageClock

# name: (side in pixels, references, steps, pipeline settings)
GEDIT = dict(text_guidance_scale=5.0, image_guidance_scale=1.5, time_shift=3.0)
THREE_BRANCH = dict(text_guidance_scale=5.0, image_guidance_scale=2.0)
SCENARIOS = {
    "smoke": {
        "gedit-512-1ref-20steps": (512, 1, 20, GEDIT),
        "edit-1024-1ref-6steps": (1024, 1, 6, THREE_BRANCH),
    },
    "issue8": {
        "gedit-512-1ref-20steps": (512, 1, 20, GEDIT),
        "edit-1024-1ref-28steps": (1024, 1, 28, THREE_BRANCH),
        "edit-1024-2ref-28steps": (1024, 2, 28, THREE_BRANCH),
    },
}


def reference_images(side: int, count: int) -> list[PIL.Image.Image]:
    rng = np.random.default_rng(side + count)
    return [PIL.Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(count)]


def build(device: str, dtype: torch.dtype, precision: str, compile: bool):
    """The full-size synthetic pipeline and its build seconds (CUDA synchronised)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    pipe = synthetic.build_synthetic_pipeline("full", device=device, dtype=dtype, precision=precision,
                                              compile=compile, progress=False)
    torch.cuda.synchronize()
    return pipe, time.perf_counter() - start


def run_scenario(pipe, side: int, refs: int, steps: int, settings: dict) -> dict:
    images = reference_images(side, refs)
    call = dict(num_inference_steps=steps, width=side, height=side, seed=0, **settings)
    warm = pipe("Make the sky green and add a small red boat.", images, **{**call, "num_inference_steps": 2},
                clock=StageClock(pipe.device))
    result = pipe("Make the sky green and add a small red boat.", images, **call, clock=StageClock(pipe.device))
    record = result.to_record()
    denoise = result.stage_seconds["denoise"]
    record.update(warmup_stage_seconds=warm.stage_seconds, denoise_seconds_per_step=denoise / steps,
                  denoise_seconds_per_transformer_pass=denoise / result.transformer_calls,
                  finite_output=bool(torch.isfinite(result.latents).all()))
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scenarios", choices=sorted(SCENARIOS), default="smoke")
    parser.add_argument("--precision", choices=("bf16", "fp8"), default="bf16")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")

    pipe, build_seconds = build("cuda", torch.bfloat16, args.precision, args.compile)
    after_build = torch.cuda.memory_allocated()
    print(f"built full-size synthetic pipeline in {build_seconds:.1f} s, {after_build / 2**30:.2f} GiB on the GPU",
          flush=True)
    results = {}
    for name, (side, refs, steps, settings) in SCENARIOS[args.scenarios].items():
        try:
            results[name] = run_scenario(pipe, side, refs, steps, settings)
        except Exception as err:  # a failed scenario gets a row holding the error, the others still run
            results[name] = {"error": f"{type(err).__name__}: {err}"}
        row = results[name]
        if "error" in row:
            print(f"{name}: FAILED {row['error']}", flush=True)
            continue
        stages = ", ".join(f"{k} {v:.3f}s" for k, v in row["stage_seconds"].items())
        print(f"{name}: total {row['total_seconds']:.2f} s ({stages}); "
              f"{row['denoise_seconds_per_step']:.3f} s/step; peak {row['peak_vram_gib']:.2f} GiB", flush=True)
    write_json_atomic(args.out, {
        "manifest": run_manifest(synthetic="full", device="cuda",
                                 extra={"precision": args.precision, "compile": args.compile, "dtype": "bfloat16"}),
        "build_seconds": build_seconds, "allocated_after_build_bytes": after_build,
        "scenarios": results,
    })
    print(f"wrote {args.out}")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
