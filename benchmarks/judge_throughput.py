"""Judge throughput on one GPU: the in-process judge (random weights at Qwen2.5-VL-7B-Instruct's shapes) at several
batch sizes, GEdit-shaped calls, every answer forced to exactly `--new-tokens` tokens (128: a realistic VIEScore
answer length; a random judge never stops by itself).

Per sample two calls: SC sees [source, edit] + the SC prompt, PQ sees [edit] + the PQ prompt. Both images are
drawn pictures at GEdit-like sizes, resized to the 512x512 area at their own aspect ratio (the protocol's judge
input). The synthetic judge's tokenizer has no BPE merges (one token per character), so the prompt texts are cut to
the token counts the real Qwen tokenizer gives the VIEScore templates (estimated, `--sc-text-tokens`,
`--pq-text-tokens`); image tokens are exact. Per batch size: B samples (2B calls) in the judge's own batching
(length-ordered, so one batch of PQ calls and one of SC calls), timed per forward batch, plus the CPU time to
prepare them (which the judge stage overlaps with the GPU on a worker thread), the vision tower's share, peak VRAM;
then, if `--budget-s` leaves time for it, one end-to-end pass of two chunks through the stage's background
preparation at the largest measured batch size not above the one the judge would choose by itself.

    python -m benchmarks.judge_throughput --json results/judge_throughput_h200.json
    python -m benchmarks.judge_throughput --size tiny --device cpu --batch-sizes 2 4 --new-tokens 4 --json /tmp/j.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.gedit import judge_batching as batching  # noqa: E402
from harness.core.records import run_manifest, write_json_atomic  # noqa: E402
from harness.gedit.data import synthetic_image  # noqa: E402
from harness.gedit.judge import QwenJudge, build_full_synthetic_judge, judge_calls_for_sample, write_synthetic_judge  # noqa: E402
from harness.gedit.judge_prompts import PROJECT_RUBRIC  # noqa: E402
from harness.gedit.protocol import area_fit_size  # noqa: E402

TARGET_SAMPLES_PER_S = 3.0  # issue 17: a 1212-sample run judged in under 7 minutes
# GEdit source images are about 512^2 with various aspect ratios; OmniGen2 edits follow the input size.
SOURCE_SIZES = [(512, 512), (640, 480), (480, 640), (576, 448), (448, 576), (680, 384)]
INSTRUCTIONS = ["Change the color of the car to red.", "Add a small wooden boat on the lake.",
                "Remove the person standing on the left.", "Make it look like a watercolor painting.",
                "Replace the text on the sign with 'OPEN'.", "Turn the daytime scene into night."]


def to_512_area(image):
    """The protocol's judge input (gedit-v1): RGB, resized to the 512x512 area at its own aspect ratio."""
    return image.convert("RGB").resize(area_fit_size(*image.size))


def drawn_image(index: int, size: tuple[int, int], seed: int):
    return synthetic_image(index, max(size), seed=seed).resize(size)


def gedit_like_calls(n_samples: int, sc_text_tokens: int, pq_text_tokens: int):
    """2 * n_samples JudgeCalls (SC, PQ per sample) with 512^2-area images and prompt texts cut to the given lengths."""
    prompts = PROJECT_RUBRIC
    calls = []
    for i in range(n_samples):
        size = SOURCE_SIZES[i % len(SOURCE_SIZES)]
        source, edit = to_512_area(drawn_image(i, size, 0)), to_512_area(drawn_image(i, size, 1))
        sc, pq = judge_calls_for_sample(f"s{i}", source, edit, INSTRUCTIONS[i % len(INSTRUCTIONS)], prompts)
        sc.prompt, pq.prompt = _cut(sc.prompt, sc_text_tokens), _cut(pq.prompt, pq_text_tokens)
        calls += [sc, pq]
    return calls


def _cut(text: str, n_chars: int) -> str:
    return (text * (n_chars // max(1, len(text)) + 1))[:n_chars]


def build_judge(size: str, device: str, new_tokens: int) -> QwenJudge:
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, max_retries=0)
    if size == "full":
        return build_full_synthetic_judge(device, **kwargs)
    folder = write_synthetic_judge(Path(tempfile.mkdtemp()) / "judge-tiny")
    return QwenJudge.load(str(folder), device=device, **kwargs)


def time_batches(judge: QwenJudge, encoded, cuda: bool) -> list[dict]:
    """Each forward batch of the judge's own ordering, timed: calls, kind, prompt tokens, seconds, new tokens."""
    rows = []
    for batch in batching.length_ordered_batches(encoded, judge.batch_size):
        before = judge.last_run_stats["new_tokens"]
        _sync(cuda)
        t0 = time.perf_counter()
        judge.generate(batch)
        _sync(cuda)
        kinds = sorted({e.call_id.rsplit("#", 1)[1] for e in batch})
        rows.append({"n_calls": len(batch), "kinds": kinds, "prompt_tokens_min": min(e.n_tokens for e in batch),
                     "prompt_tokens_max": max(e.n_tokens for e in batch), "seconds": time.perf_counter() - t0,
                     "new_tokens": judge.last_run_stats["new_tokens"] - before})
    return rows


def measure(judge: QwenJudge, batch_size: int, calls, cuda: bool) -> dict:
    """One batch size: B samples (2B calls) prepared (CPU seconds) and generated (GPU seconds, per batch)."""
    judge.batch_size = batch_size
    chunk = calls[:2 * batch_size]
    t0 = time.perf_counter()
    encoded = judge.prepare(chunk)
    prepare_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    judge.last_run_stats = {"new_tokens": 0}
    rows = time_batches(judge, encoded, cuda)
    gpu_s = sum(r["seconds"] for r in rows)
    n_samples = len(chunk) // 2
    vision_s = time_vision_tower(judge, encoded, cuda)
    return {"batch_size": batch_size, "n_samples": n_samples, "n_calls": len(chunk), "batches": rows,
            "vision_tower_seconds": vision_s,
            "generate_seconds": gpu_s, "samples_per_s": n_samples / gpu_s,
            "calls_per_s": len(chunk) / gpu_s, "new_tokens_per_s": sum(r["new_tokens"] for r in rows) / gpu_s,
            "prepare_cpu_seconds": prepare_s, "prepare_hidden_by_overlap": prepare_s < gpu_s,
            "peak_vram_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def time_vision_tower(judge: QwenJudge, encoded, cuda: bool) -> float | None:
    """Seconds of the vision tower alone over every image of `encoded` (its share of the prefill), or None where
    the model does not expose it as `model.model.visual` (transformers layout differences)."""
    visual = getattr(getattr(judge.model, "model", None), "visual", None)
    if visual is None:
        return None
    pixels = torch.cat([e.tensors["pixel_values"] for e in encoded]).to(judge.device, judge.model.dtype)
    grid = torch.cat([e.tensors["image_grid_thw"] for e in encoded]).to(judge.device)
    _sync(cuda)
    t0 = time.perf_counter()
    with torch.inference_mode():
        visual(pixels, grid_thw=grid)
    _sync(cuda)
    return time.perf_counter() - t0


def end_to_end(judge: QwenJudge, batch_size: int, calls, cuda: bool) -> dict:
    """Two chunks of B samples through the stage's path: preparation on the worker thread one chunk ahead, judge()
    with parsing; wall time from the first image to the last answer."""
    judge.batch_size = batch_size
    chunks = [calls[:2 * batch_size], calls[2 * batch_size:4 * batch_size]]
    _sync(cuda)
    t0 = time.perf_counter()
    n = 0
    for chunk, encoded in batching.prepared_in_background(chunks, judge.prepare):
        n += len(judge.judge(encoded)) // 2
    _sync(cuda)
    wall = time.perf_counter() - t0
    return {"batch_size": batch_size, "n_samples": n, "wall_seconds": wall, "samples_per_s": n / wall}


def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, help="where to write the results (rewritten after every batch size)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--sc-text-tokens", type=int, default=400,
                        help="SC text tokens: ~1512-char VIEScore template + instruction at ~4 characters per token")
    parser.add_argument("--pq-text-tokens", type=int, default=300, help="PQ text tokens: ~1184-char template")
    parser.add_argument("--size", choices=("full", "tiny"), default="full", help="tiny: a CPU dry run of this script")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget-s", type=float, default=240.0,
                        help="stop starting new measurements once this many seconds have passed")
    parser.add_argument("--no-end-to-end", action="store_true")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here: pass --size tiny --device cpu for a dry run")

    start = time.perf_counter()
    cuda = args.device.startswith("cuda")
    judge = build_judge(args.size, args.device, args.new_tokens)
    auto = batching.auto_batch_size(args.device, judge.model.config.text_config, judge.model.dtype, 512)
    calls = gedit_like_calls(2 * max([*args.batch_sizes, auto[0]]), args.sc_text_tokens, args.pq_text_tokens)
    result = {
        "what": "in-process judge throughput, random weights at Qwen2.5-VL-7B-Instruct shapes (speed and memory are "
                "real; answers are noise), answers forced to new_tokens",
        "settings": {**{k: v for k, v in vars(args).items() if k != "json"}, "judge": judge.describe(),
                     "auto_batch_size_at_512_new_tokens": {"batch_size": auto[0], "how": auto[1]},
                     "target_samples_per_s": TARGET_SAMPLES_PER_S},
        "sweep": [], "end_to_end": None,
        "provenance": run_manifest(synthetic=args.size, device=args.device),
    }
    warm = judge.prepare(calls[:2])  # cuBLAS / allocator warm-up outside the timings
    judge.batch_size = 2
    time_batches(judge, warm, cuda)
    for batch_size in sorted(args.batch_sizes):
        if time.perf_counter() - start > args.budget_s:
            result["sweep"].append({"batch_size": batch_size, "skipped": f"past --budget-s {args.budget_s:g}"})
            continue
        try:
            row = measure(judge, batch_size, calls, cuda)
        except torch.cuda.OutOfMemoryError as err:
            row = {"batch_size": batch_size, "error": f"out of memory: {str(err).splitlines()[0]}"}
            torch.cuda.empty_cache()
        result["sweep"].append(row)
        print({k: row.get(k) for k in ("batch_size", "samples_per_s", "generate_seconds", "prepare_cpu_seconds",
                                       "peak_vram_gib", "error")}, flush=True)
        write_json_atomic(args.json, result)
    measured = [r for r in result["sweep"] if "samples_per_s" in r]
    left_s = args.budget_s - (time.perf_counter() - start)
    # two chunks take about twice one chunk's generate time: the largest measured batch that fits what is left
    fits = [r for r in measured if 2.2 * r["generate_seconds"] < left_s and r["batch_size"] <= auto[0]]
    if not args.no_end_to_end and fits:
        result["end_to_end"] = end_to_end(judge, fits[-1]["batch_size"], calls, cuda)
        print(result["end_to_end"], flush=True)
    best = max(measured, key=lambda r: r["samples_per_s"]) if measured else None
    result["best"] = best and {"batch_size": best["batch_size"], "samples_per_s": best["samples_per_s"],
                               "meets_target": best["samples_per_s"] >= TARGET_SAMPLES_PER_S,
                               "minutes_for_1212_samples": 1212 / best["samples_per_s"] / 60}
    result["total_seconds"] = time.perf_counter() - start
    write_json_atomic(args.json, result)
    print(result["best"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
