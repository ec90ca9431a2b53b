"""Judge throughput on one GPU: the in-process judge (random weights at Qwen2.5-VL-7B-Instruct's shapes) with its
speed options side by side, GEdit-shaped calls, every answer forced to exactly `--new-tokens` tokens (128: a realistic
VIEScore answer length; a random judge never stops by itself).

Variants (`harness.gedit.judge_speed`): "packed-reproducible" = packed vision attention + eager decoding with the
reproducible decode attention (harness.gedit.decode_attention; the default), "packed-vision" = packed vision
attention + eager decoding on SDPA's own decode kernel, "fast" = packed vision attention + compiled decoding,
"plain" = transformers' per-window vision attention + eager decoding (the judge before the speed options). The first
variant is measured at every `--batch-sizes` and `--first-variant-batch-sizes` entry, the others at every
`--batch-sizes` entry, in that order, while `--budget-s` has time left (what is skipped is recorded as skipped).

Per sample two calls: SC sees [source, edit] + the SC prompt, PQ sees [edit] + the PQ prompt. Both images are drawn
pictures at GEdit-like sizes, resized to the 512x512 area at their own aspect ratio (the protocol's judge input). The
synthetic judge's tokenizer has no BPE merges (one token per character), so the prompt texts are cut to the token
counts the real Qwen tokenizer gives the VIEScore templates (estimated, `--sc-text-tokens`, `--pq-text-tokens`);
image tokens are exact. Per (variant, batch size B): B samples (2B calls) in the judge's own batching (length-ordered:
one batch of PQ calls, one of SC calls), each timed; peak VRAM; the answers compared with those of the variants
measured before at the same B (float rounding can flip a near-tied token of a random model, so this is a check of
scale, not of equality). A compiled variant first runs the PQ batch once untimed (compilation, CUDA-graph capture:
`warmup_seconds`). The vision tower alone is timed once per vision attention at the smallest batch size, with the
largest difference between the two attentions' features.

    python -m benchmarks.judge_throughput --json results/judge_speed_h200.json
    python -m benchmarks.judge_throughput --size tiny --device cpu --batch-sizes 2 --first-variant-batch-sizes \\
        --variants packed-vision plain --new-tokens 2 --json /tmp/j.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import run_keeping_partial  # noqa: E402
from harness.core.records import run_manifest, write_json_atomic  # noqa: E402
from harness.gedit import judge_batching as batching  # noqa: E402
from harness.gedit.data import synthetic_image  # noqa: E402
from harness.gedit.judge import QwenJudge, build_full_synthetic_judge, judge_calls_for_sample, write_synthetic_judge  # noqa: E402
from harness.gedit.judge_prompts import PROJECT_RUBRIC  # noqa: E402
from harness.gedit.protocol import area_fit_size  # noqa: E402

TARGET_SAMPLES_PER_S = 3.0  # issue 17: a 1212-sample run judged in under 7 minutes
VARIANTS = {"fast": ("packed", "compiled"), "packed-vision": ("packed", "eager"),
            "packed-reproducible": ("packed", "eager-reproducible"), "plain": ("per-window", "eager")}
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
    calls = []
    for i in range(n_samples):
        size = SOURCE_SIZES[i % len(SOURCE_SIZES)]
        source, edit = to_512_area(drawn_image(i, size, 0)), to_512_area(drawn_image(i, size, 1))
        sc, pq = judge_calls_for_sample(f"s{i}", source, edit, INSTRUCTIONS[i % len(INSTRUCTIONS)], PROJECT_RUBRIC)
        sc.prompt, pq.prompt = _cut(sc.prompt, sc_text_tokens), _cut(pq.prompt, pq_text_tokens)
        calls += [sc, pq]
    return calls


def _cut(text: str, n_chars: int) -> str:
    return (text * (n_chars // max(1, len(text)) + 1))[:n_chars]


def build_judge(size: str, device: str, new_tokens: int) -> QwenJudge:
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, max_retries=0)
    if size == "full":
        return build_full_synthetic_judge(device, **kwargs)  # weights made on the device itself
    folder = write_synthetic_judge(Path(tempfile.mkdtemp()) / "judge-tiny")
    return QwenJudge.load(str(folder), device=device, **kwargs)


def run_batches(judge: QwenJudge, batches, cuda: bool) -> tuple[list[dict], dict[str, str]]:
    """Each forward batch generated and timed: rows (calls, kind, prompt tokens, seconds, new tokens) and the
    answers by call id."""
    rows, answers = [], {}
    for batch in batches:
        before = judge.last_run_stats["new_tokens"]
        _sync(cuda)
        t0 = time.perf_counter()
        texts = judge.generate(batch)
        _sync(cuda)
        answers.update({e.call_id: text for e, text in zip(batch, texts)})
        rows.append({"n_calls": len(batch), "kinds": sorted({e.call_id.rsplit("#", 1)[1] for e in batch}),
                     "prompt_tokens_min": min(e.n_tokens for e in batch),
                     "prompt_tokens_max": max(e.n_tokens for e in batch), "seconds": time.perf_counter() - t0,
                     "new_tokens": judge.last_run_stats["new_tokens"] - before})
    return rows, answers


def measure(judge: QwenJudge, variant: str, batch_size: int, encoded, cuda: bool) -> tuple[dict, dict]:
    """One (variant, batch size): a chunk of B samples (2B encoded calls) generated batch by batch, after an untimed
    run of its first batch when the variant compiles. Returns (row, answers by call id)."""
    judge.batch_size = batch_size
    batches = batching.length_ordered_batches(encoded, batch_size)
    judge.last_run_stats = {"new_tokens": 0}
    warmup_s = None
    if judge.speed.decode == "compiled":
        _sync(cuda)
        t0 = time.perf_counter()
        judge.generate(batches[0])
        _sync(cuda)
        warmup_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    judge.last_run_stats = {"new_tokens": 0}
    rows, answers = run_batches(judge, batches, cuda)
    seconds = sum(r["seconds"] for r in rows)
    n_samples = len(encoded) // 2
    row = {"variant": variant, "vision_attention": judge.speed.vision_attention, "decode": judge.speed.decode,
           "batch_size": batch_size, "n_samples": n_samples, "n_calls": len(encoded), "batches": rows,
           "warmup_seconds": warmup_s, "generate_seconds": seconds, "samples_per_s": n_samples / seconds,
           "calls_per_s": len(encoded) / seconds, "new_tokens_per_s": sum(r["new_tokens"] for r in rows) / seconds,
           "peak_vram_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}
    if judge.speed.decode == "compiled":
        row["torch_compile_counters"] = compile_counters()
    return row, answers


def compile_counters() -> dict:
    """torch.compile's graph-break and CUDA-graph-skip counts so far (a skipped CUDA graph runs slower, not wrong)."""
    from torch._dynamo.utils import counters

    return {"graph_breaks": sum(counters["graph_break"].values()),
            **{k: v for k, v in counters["inductor"].items() if "cudagraph" in k}}


def agreement(answers: dict[str, str], reference: dict[str, str]) -> dict:
    """Share of identical answers and mean common prefix (characters = tokens for this tokenizer) vs `reference`."""
    same = [answers[k] == reference[k] for k in reference]
    prefixes = [_common_prefix(answers[k], reference[k]) for k in reference]
    return {"identical_share": sum(same) / len(same), "mean_common_prefix_chars": sum(prefixes) / len(prefixes)}


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def vision_tower(judge: QwenJudge, encoded, cuda: bool) -> tuple[float, torch.Tensor] | None:
    """(seconds, merged features) of the vision tower alone over every image of `encoded`, or None where the model
    does not expose it as `model.model.visual` (transformers layout differences)."""
    visual = getattr(getattr(judge.model, "model", None), "visual", None)
    if visual is None:
        return None
    pixels = torch.cat([e.tensors["pixel_values"] for e in encoded]).to(judge.device, judge.model.dtype)
    grid = torch.cat([e.tensors["image_grid_thw"] for e in encoded]).to(judge.device)
    _sync(cuda)
    t0 = time.perf_counter()
    with torch.inference_mode():
        features = visual(pixels, grid_thw=grid).pooler_output
    _sync(cuda)
    return time.perf_counter() - t0, features


def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def plan(variants: list[str], batch_sizes: list[int], first_only: list[int]) -> list[tuple[str, int]]:
    """(variant, batch size) in measuring order: the first variant at all its batch sizes, then each other one."""
    first = sorted({*batch_sizes, *first_only})
    return [(variants[0], b) for b in first] + [(v, b) for v in variants[1:] for b in sorted(batch_sizes)]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, help="where to write the results (rewritten after every step)")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS),
                        default=["packed-reproducible", "packed-vision", "plain"],
                        help="measured in this order")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--first-variant-batch-sizes", type=int, nargs="*", default=[256],
                        help="measured for the first variant only (an H200 fits 256; an 80 GB card may not)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--sc-text-tokens", type=int, default=400,
                        help="SC text tokens: ~1512-char VIEScore template + instruction at ~4 characters per token")
    parser.add_argument("--pq-text-tokens", type=int, default=300, help="PQ text tokens: ~1184-char template")
    parser.add_argument("--size", choices=("full", "tiny"), default="full", help="tiny: a CPU dry run of this script")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend of the compiled variant (aot_eager: a CPU dry run)")
    parser.add_argument("--budget-s", type=float, default=270.0,
                        help="start no new measurement once this many seconds have passed")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here: pass --size tiny --device cpu for a dry run")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    cuda = args.device.startswith("cuda")
    result = {"what": "in-process judge throughput by speed option, random weights at Qwen2.5-VL-7B-Instruct shapes "
                      "(speed and memory are real; answers are noise), answers forced to new_tokens",
              "settings": {**{k: v for k, v in vars(args).items() if k != "json"},
                           "target_samples_per_s": TARGET_SAMPLES_PER_S},
              "sweep": [], "vision_tower": [],
              "provenance": run_manifest(synthetic=args.size, device=args.device)}
    run_keeping_partial(lambda: sweep(args, result, start, cuda), result, args.json)
    return 0


def sweep(args, result: dict, start: float, cuda: bool) -> None:
    steps = plan(args.variants, args.batch_sizes, args.first_variant_batch_sizes)
    judge = build_judge(args.size, args.device, args.new_tokens)
    result["settings"]["build_seconds"] = time.perf_counter() - start
    auto = batching.auto_batch_size(args.device, judge.model.config.text_config, judge.model.dtype, 512)
    result["settings"]["auto_batch_size_at_512_new_tokens"] = {"batch_size": auto[0], "how": auto[1]}
    largest = max(b for _, b in steps)
    calls = gedit_like_calls(largest, args.sc_text_tokens, args.pq_text_tokens)
    t0 = time.perf_counter()
    encoded = judge.prepare(calls)  # once; each batch size takes the first 2B calls (all of them are alike)
    result["settings"]["prepare_cpu_seconds_per_sample"] = (time.perf_counter() - t0) / largest
    warm_up(judge, encoded[:2], cuda)
    answers: dict[int, list[tuple[str, dict]]] = {}
    features: dict[str, torch.Tensor] = {}  # vision features by attention, compared once both are timed
    for variant, batch_size in steps:
        if time.perf_counter() - start > args.budget_s:
            result["sweep"].append({"variant": variant, "batch_size": batch_size,
                                    "skipped": f"past --budget-s {args.budget_s:g}"})
            continue
        vision_attention, decode = VARIANTS[variant]
        judge.set_speed(vision_attention, decode, compile_backend=args.compile_backend)
        result["running"] = f"{variant} at batch {batch_size}"  # what a killed run was doing
        write_json_atomic(args.json, result)
        chunk = encoded[:2 * batch_size]
        try:
            row, got = measure(judge, variant, batch_size, chunk, cuda)
        except torch.cuda.OutOfMemoryError as err:
            row, got = {"variant": variant, "batch_size": batch_size,
                        "error": f"out of memory: {str(err).splitlines()[0]}"}, None
            torch.cuda.empty_cache()
        if got is not None:
            row["answers_vs"] = {name: agreement(got, ref) for name, ref in answers.get(batch_size, [])}
            answers.setdefault(batch_size, []).append((variant, got))
        result["sweep"].append(row)
        if batch_size == min(args.batch_sizes) and vision_attention not in features:
            result["vision_tower"].append(time_vision(judge, chunk, cuda, features))
        print({k: row.get(k) for k in ("variant", "batch_size", "samples_per_s", "warmup_seconds", "peak_vram_gib",
                                       "error")}, flush=True)
        write_json_atomic(args.json, result)
    result.pop("running", None)
    result["best"] = best_of(result["sweep"])
    result["total_seconds"] = time.perf_counter() - start
    write_json_atomic(args.json, result)
    print(result["best"])


def warm_up(judge: QwenJudge, encoded, cuda: bool) -> None:
    """cuBLAS / allocator warm-up outside the timings: two calls, two new tokens, plain path."""
    judge.set_speed("per-window", "eager")
    saved = judge.max_new_tokens, judge.min_new_tokens
    judge.max_new_tokens = judge.min_new_tokens = 2
    judge.batch_size = len(encoded)
    try:
        run_batches(judge, [encoded], cuda)
    finally:
        judge.max_new_tokens, judge.min_new_tokens = saved


def time_vision(judge: QwenJudge, chunk, cuda: bool, features: dict[str, torch.Tensor]) -> dict:
    """The vision tower alone on `chunk`'s images with the judge's vision attention (its features join `features`);
    the largest difference from the other attention's features, when that one ran before."""
    mode = judge.speed.vision_attention
    out = vision_tower(judge, chunk, cuda)
    features[mode] = out[1] if out is not None else None
    row = {"vision_attention": mode, "n_images": sum(int(e.tensors["image_grid_thw"].shape[0]) for e in chunk),
           "seconds": out[0] if out is not None else None}
    other = next((f for m, f in features.items() if m != mode and f is not None), None)
    if out is not None and other is not None:
        row["max_abs_difference"] = float((out[1].float() - other.float()).abs().max())
        row["max_abs_feature"] = float(other.float().abs().max())
        features.update({m: None for m in features})  # compared: free the features, keep the modes as timed
    return row


def best_of(sweep: list[dict]) -> dict | None:
    measured = [r for r in sweep if "samples_per_s" in r]
    if not measured:
        return None
    best = max(measured, key=lambda r: r["samples_per_s"])
    return {"variant": best["variant"], "batch_size": best["batch_size"], "samples_per_s": best["samples_per_s"],
            "meets_target": best["samples_per_s"] >= TARGET_SAMPLES_PER_S,
            "minutes_for_1212_samples": 1212 / best["samples_per_s"] / 60}


if __name__ == "__main__":
    sys.exit(main())
