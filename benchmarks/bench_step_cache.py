"""Side-by-side edit latency of step caching (TeaCache, TaylorSeer) with BF16 and FP8, in one process.

Full-size random weights (OmniGen2 DiT, Qwen2.5-VL-3B, FLUX.1 VAE), one 1024x1024 reference, 28 steps, 3-branch CFG.
Per arm: one short warm-up edit, then one measured edit: whole-edit and per-stage seconds, per-step seconds (CUDA
events), and which transformer calls computed the main layers. Latency does not depend on the weights, except for
TeaCache, whose skip decisions do: its synthetic-weight skip rate and speed-up say nothing about real weights.
TaylorSeer's schedule is fixed, so its synthetic-weight speed is real. Arms are recipes (`omnigen2_fp8.precision`);
the FP8 arms run after the BF16 ones because quantization replaces the DiT's linear layers in place.

    python -m benchmarks.bench_step_cache --out results/step_cache_h200.json
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.pipeline_smoke import reference_images
from harness.core.records import run_manifest, write_json_atomic
from omnigen2_fp8 import synthetic
from omnigen2_fp8.measure import StageClock
from omnigen2_fp8.pipeline import OmniGen2Pipeline
from omnigen2_fp8.precision import Recipe, RecipeError, parse_recipe

# BF16 arms first (FP8 quantizes the shared DiT in place).
ARMS = ("bf16", "bf16+taylorseer", "bf16+teacache", "fp8", "fp8+taylorseer")
PROMPT = "Make the sky green and add a small red boat."
TEACACHE_CAVEAT = ("TeaCache decides from the model's activations: with random weights its skip rate and speed-up "
                   "are not representative of the real model")


def arm_pipeline(components, transformer, recipe: Recipe, device: str, dtype: torch.dtype) -> OmniGen2Pipeline:
    """The shared models under `recipe` (an fp8 base quantizes the DiT in place, once)."""
    return OmniGen2Pipeline.from_components(components, transformer, device=device, dtype=dtype,
                                            precision=recipe, progress=False)


def timed_edit(pipe: OmniGen2Pipeline, images, steps: int, side: int) -> tuple[dict, list[float]]:
    """One edit; returns its record and the seconds of each denoising step (CUDA events: no extra syncs)."""
    marks = [_Mark(pipe.device)]

    def on_step(i, n, latents):
        marks.append(_Mark(pipe.device))

    def hook(stage):
        return _Restart(marks[0]) if stage == "denoise" else contextlib.nullcontext()

    result = pipe(PROMPT, images, num_inference_steps=steps, text_guidance_scale=5.0, image_guidance_scale=2.0,
                  width=side, height=side, seed=0, on_step=on_step, stage_hook=hook, clock=StageClock(pipe.device))
    return result.to_record(), [a.seconds_until(b) for a, b in zip(marks, marks[1:])]


class _Mark:
    """A point in time on the device's stream (a CUDA event) or on the host clock."""

    def __init__(self, device: torch.device):
        self.event = torch.cuda.Event(enable_timing=True) if device.type == "cuda" else None
        self.record()

    def record(self) -> None:
        if self.event is not None:
            self.event.record()
        self.host = time.perf_counter()

    def seconds_until(self, later: "_Mark") -> float:
        return self.event.elapsed_time(later.event) / 1e3 if self.event is not None else later.host - self.host


@contextlib.contextmanager
def _Restart(mark: _Mark):
    mark.record()  # the denoise stage starts now: step 0 is timed from here
    yield


def run_arm(pipe: OmniGen2Pipeline, images, steps: int, side: int) -> dict:
    timed_edit(pipe, images, 2, side)  # warm-up: kernels, allocator, autotuning
    record, step_seconds = timed_edit(pipe, images, steps, side)
    record.update(edit_seconds=record["total_seconds"], denoise_step_seconds=step_seconds)
    if record.get("step_cache") is not None:
        record.update(_full_vs_cached_steps(record["step_cache"]["computed_per_call"], steps, step_seconds))
    return record


def _full_vs_cached_steps(per_call: list[bool], steps: int, step_seconds: list[float]) -> dict:
    """Median seconds of steps whose calls all computed the main layers vs none did (cfg_range (0, 1): every
    step has the same number of calls)."""
    n = len(per_call) // steps
    per_step = [per_call[i * n: (i + 1) * n] for i in range(steps)]
    full = [s for s, calls in zip(step_seconds, per_step) if all(calls)]
    cached = [s for s, calls in zip(step_seconds, per_step) if not any(calls)]
    return {"full_steps": len(full), "cached_steps": len(cached),
            "median_full_step_seconds": statistics.median(full) if full else None,
            "median_cached_step_seconds": statistics.median(cached) if cached else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--arms", nargs="+", type=_recipe, default=[parse_recipe(a) for a in ARMS],
                        metavar="RECIPE", help=f"recipes to run (default: {' '.join(ARMS)}); bf16 bases run first")
    parser.add_argument("--source-revision", default=None, help="git revision of the code (the device copy has no git)")
    parser.add_argument("--size", choices=("full", "tiny"), default="full",
                        help="tiny: a CPU smoke test of this script")
    args = parser.parse_args()
    device = "cuda" if args.size == "full" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (or --size tiny for a CPU smoke test)")

    start = time.perf_counter()
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    transformer = synthetic.build_transformer(args.size, device, dtype)
    components = synthetic.build_components(args.size, device, dtype)
    build_seconds = time.perf_counter() - start
    images = reference_images(args.side, 1)
    manifest = run_manifest(synthetic=args.size, device=device, extra={
        "benchmark": "step cache side by side", "source_revision": args.source_revision,
        "teacache_caveat": TEACACHE_CAVEAT, "steps": args.steps, "side": args.side, "references": 1,
        "text_guidance_scale": 5.0, "image_guidance_scale": 2.0, "cfg_range": [0.0, 1.0]})
    results = {}
    for recipe in sorted(dict.fromkeys(args.arms), key=lambda r: r.quantized):
        name = recipe.name
        try:
            pipe = arm_pipeline(components, transformer, recipe, device, dtype)
            results[name] = run_arm(pipe, images, args.steps, args.side)
        except Exception as err:  # a failed arm gets a row holding the error; the others still run
            results[name] = {"error": f"{type(err).__name__}: {err}"}
        _report(name, results[name])
        # Written after every arm: a run stopped at its time limit keeps the arms it finished.
        write_json_atomic(args.out, {"manifest": manifest, "build_seconds": build_seconds,
                                     "speedup_over_bf16_per_edit": _speedups(results), "arms": results})
    print("speed-up over bf16 per edit:", {k: round(v, 2) for k, v in _speedups(results).items()})
    print(f"wrote {args.out}")
    return 0 if all("error" not in r for r in results.values()) else 1


def _recipe(text: str) -> Recipe:
    try:
        return parse_recipe(text)
    except RecipeError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _speedups(results: dict) -> dict:
    base = results.get("bf16", {}).get("edit_seconds")
    return {name: base / row["edit_seconds"] for name, row in results.items() if base and "edit_seconds" in row}


def _report(name: str, row: dict) -> None:
    if "error" in row:
        print(f"{name}: FAILED {row['error']}", flush=True)
        return
    fraction = row["step_cache"]["computed_fraction"] if row.get("step_cache") else 1.0
    peak = row["peak_vram_gib"]
    print(f"{name}: edit {row['edit_seconds']:.2f} s, denoise {row['stage_seconds']['denoise']:.2f} s, main layers "
          f"computed on {fraction:.0%} of calls, peak {peak if peak is None else round(peak, 1)} GiB", flush=True)


if __name__ == "__main__":
    sys.exit(main())
