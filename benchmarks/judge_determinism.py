"""Is the in-process judge bitwise reproducible on a GPU? The same batches judged again in one process, after the
allocator's free memory was filled with garbage (another memory history, as after a generation stage), and with
torch's deterministic algorithms; run it once per GPU and compare the JSONs (`--compare`) to see across devices.

Per condition it records, per batch, a hash of the prefill's last-position logits (the first new token's scores,
float32) and the max absolute difference from the first condition, and the greedy answers. A random 7B-shaped model
has near-tied logits, so the smallest float difference flips tokens: the logits say where the difference starts.

    CUDA_VISIBLE_DEVICES=0 python -m benchmarks.judge_determinism --json /tmp/jd0.json
    python -m benchmarks.judge_determinism --compare /tmp/jd0.json /tmp/jd1.json
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.judge_throughput import build_judge, gedit_like_calls  # noqa: E402
from harness.core.records import run_manifest, write_json_atomic  # noqa: E402
from harness.gedit import judge_batching as batching  # noqa: E402
from harness.gedit.judge_speed import DECODE_MODES  # noqa: E402


def prefill_logits(judge, batch) -> torch.Tensor:
    """Last-position logits of one batch's prefill (what decides the first new token), float32 on the CPU."""
    inputs = batching.collate_left_padded(batch, judge.tokenizer.pad_token_id)
    inputs = {k: v.to(judge.device) for k, v in inputs.items()}
    with torch.inference_mode():
        out = judge.model(**inputs, logits_to_keep=1)
    return out.logits[:, -1].float().cpu()


def run_condition(judge, batches, baseline: tuple | None) -> tuple[dict, tuple]:
    logits = [prefill_logits(judge, b) for b in batches]
    answers, ids = {}, []
    if judge.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for b in batches:
        new_ids = judge.generate_ids(b)
        texts = judge.decode_answers(new_ids)
        answers.update({e.call_id: a for e, a in zip(b, texts)})
        ids.append(new_ids)
    if judge.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    row = {"generate_seconds": seconds,
           "logits_sha256": [hashlib.sha256(t.numpy().tobytes()).hexdigest()[:16] for t in logits],
           "ids_sha256": [hashlib.sha256(t.numpy().tobytes()).hexdigest()[:16] for t in ids],
           "ids": [t.tolist() for t in ids], "answers": answers}
    if baseline is not None:
        base_logits, base_ids = baseline
        row["max_abs_logit_diff_vs_first"] = [float((a - b).abs().max()) for a, b in zip(logits, base_logits)]
        row["batches_bitwise_equal_to_first"] = sum(bool(torch.equal(a, b)) for a, b in zip(logits, base_logits))
        row["rows_with_ids_equal_to_first"] = sum(bool(torch.equal(x, y)) for a, b in zip(ids, base_ids)
                                                  for x, y in zip(a, b))
    return row, (logits, ids)


def fill_free_memory(gib: float, value: float | None) -> None:
    """Allocate and free `gib` of memory holding `value` (random numbers when None): the caching allocator then
    hands out blocks whose old contents are those values, as after other work."""
    n = int(gib * 2**30 / 2)
    t = torch.empty(n, dtype=torch.bfloat16, device="cuda")
    t.normal_() if value is None else t.fill_(value)
    torch.cuda.synchronize()
    del t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json")
    p.add_argument("--compare", nargs="+", help="JSONs of earlier runs: compare their first conditions")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--min-new-tokens", type=int, default=0, help="0: EOS may end an answer, as in a GEdit run")
    p.add_argument("--size", choices=("full", "tiny"), default="full")
    p.add_argument("--device", default="cuda")
    p.add_argument("--garbage-gib", type=float, default=40.0)
    p.add_argument("--deterministic", action="store_true",
                   help="torch.use_deterministic_algorithms(True, warn_only=True) for the whole run (set "
                        "CUBLAS_WORKSPACE_CONFIG=:4096:8 in the environment too)")
    p.add_argument("--sdpa", choices=("default", "math", "efficient", "cudnn"), default="default",
                   help="restrict scaled_dot_product_attention to one backend for the whole run")
    p.add_argument("--decode", default=None, choices=DECODE_MODES,
                   help="the judge's decode mode (default: its default)")
    args = p.parse_args(argv)
    if args.compare:
        runs = [json.loads(Path(f).read_text()) for f in args.compare]
        first = runs[0]["conditions"]["first"]
        for f, run in zip(args.compare, runs):
            cond = run["conditions"]["first"]
            same_logits = sum(a == b for a, b in zip(cond["logits_sha256"], first["logits_sha256"]))
            same_answers = sum(cond["answers"][k] == v for k, v in first["answers"].items())
            rows = [(x, y) for a, b in zip(cond["ids"], first["ids"]) for x, y in zip(a, b)]
            steps = [next((i for i, (u, w) in enumerate(zip(x, y)) if u != w), None) for x, y in rows]
            print(f"  generated ids: {sum(s is None for s in steps)}/{len(rows)} rows equal; first differing "
                  f"steps {sorted(s for s in steps if s is not None)}")
            print(f"{f}: device {run['device_name']} (visible {run['cuda_visible_devices']}), logits batches equal to "
                  f"{args.compare[0]}: {same_logits}/{len(first['logits_sha256'])}, answers {same_answers}/"
                  f"{len(first['answers'])}")
        return 0
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    cuda = args.device.startswith("cuda")
    judge = build_judge(args.size, args.device, args.new_tokens)
    judge.min_new_tokens = args.min_new_tokens
    judge.set_speed(decode=args.decode)
    judge.batch_size = args.batch_size
    calls = gedit_like_calls(args.samples, 400, 250)
    encoded = judge.prepare(calls)
    batches = batching.length_ordered_batches(encoded, args.batch_size)
    conditions: dict[str, dict] = {}
    backend = contextlib.nullcontext() if args.sdpa == "default" else sdpa_kernel(
        {"math": SDPBackend.MATH, "efficient": SDPBackend.EFFICIENT_ATTENTION,
         "cudnn": SDPBackend.CUDNN_ATTENTION}[args.sdpa])
    with warnings.catch_warnings(record=True) as caught, backend:
        warnings.simplefilter("always")
        conditions["first"], base = run_condition(judge, batches, None)
        conditions["repeat"], _ = run_condition(judge, batches, base)
        if cuda:
            fill_free_memory(args.garbage_gib, float("nan"))
            conditions["after_nan_garbage"], _ = run_condition(judge, batches, base)
            fill_free_memory(args.garbage_gib, None)
            conditions["after_random_garbage"], _ = run_condition(judge, batches, base)
            torch.cuda.empty_cache()
            conditions["after_empty_cache"], _ = run_condition(judge, batches, base)
    for name, row in conditions.items():
        if name != "first":
            row["answers_equal_to_first"] = sum(row["answers"][k] == v
                                                for k, v in conditions["first"]["answers"].items())
    out = {"manifest": run_manifest(synthetic=args.size, device=args.device),
           "device_name": torch.cuda.get_device_name() if cuda else "cpu",
           "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "deterministic": args.deterministic,
           "sdpa": args.sdpa, "decode": judge.speed.decode,
           "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
           "batch_fingerprints": [batching.batch_fingerprint(b, 0) for b in batches],
           "nondeterminism_warnings": sorted({str(w.message)[:300] for w in caught
                                              if "deterministic" in str(w.message).lower()}),
           "conditions": conditions}
    if args.json:
        write_json_atomic(args.json, out)
    for name, row in conditions.items():
        print(name, {k: v for k, v in row.items() if k not in ("answers", "logits_sha256", "ids", "ids_sha256")})
    print("warnings:", out["nondeterminism_warnings"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
