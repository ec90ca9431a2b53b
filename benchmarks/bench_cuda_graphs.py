"""Eager vs CUDA-graph transformer passes at the GEdit shape (512x512, one 512x512 reference), BF16 and FP8.

Each configuration runs in its own subprocess (with faulthandler), so a crash in one is reported, not fatal.
    python -m benchmarks.bench_cuda_graphs --out results/cuda_graphs_h100.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks._common import REPO_ROOT


CONFIGS = [(p, mode, attn) for p in ("bf16", "fp8") for mode, attn in
           (("eager", "default"), ("graphs", "default"), ("graphs", "flash"))]


def run_one(precision: str, mode: str, attention: str, repeats: int = 30) -> dict:
    import torch
    from torch.nn.attention import SDPBackend

    from benchmarks._common import build_model
    from benchmarks.bench_transformer import make_inputs
    from omnigen2_fp8.cuda_graphs import CudaGraphForward
    from omnigen2_fp8.fp8 import Fp8Config, quantize_fp8

    model = build_model("cuda", torch.bfloat16)
    if precision == "fp8":
        quantize_fp8(model, Fp8Config())
    (latents, t, text, mask, refs), tokens = make_inputs(512, 512, 100, "cuda", torch.bfloat16)
    latents = torch.stack(latents)
    backends = [SDPBackend.FLASH_ATTENTION] if attention == "flash" else None
    fn = CudaGraphForward(model, sdpa_backends=backends) if mode == "graphs" else model
    times = []
    with torch.inference_mode():
        reference = model(latents, t, text, mask, ref_latents=refs)
        for i in range(repeats + 3):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn(latents, t, text, mask, ref_latents=refs)
            end.record()
            torch.cuda.synchronize()
            if i >= 3:
                times.append(start.elapsed_time(end))
    times.sort()
    err = ((out.float() - reference.float()).norm() / reference.float().norm()).item()
    return {"precision": precision, "mode": mode, "attention": attention, "tokens": tokens,
            "median_ms": times[len(times) // 2], "min_ms": times[0], "rel_error_vs_eager": err,
            "captures": getattr(fn, "captures", 0), "replays": getattr(fn, "replays", 0),
            "disabled_reason": getattr(fn, "disabled_reason", None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--one", nargs=3, metavar=("PRECISION", "MODE", "ATTENTION"))
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(*args.one)), flush=True)
        return
    from harness.core.records import run_manifest, write_json_atomic

    rows = []
    for precision, mode, attention in CONFIGS:
        proc = subprocess.run([sys.executable, "-X", "faulthandler", "-m", "benchmarks.bench_cuda_graphs", "--one",
                               precision, mode, attention], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=300)
        line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        row = json.loads(line[0][7:]) if line else {"precision": precision, "mode": mode, "attention": attention,
                                                   "error": f"exit {proc.returncode}", "stderr": proc.stderr[-3000:]}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "stderr"}), flush=True)
        if "stderr" in row:
            print(row["stderr"][-2500:], flush=True)
    result = {"manifest": run_manifest(synthetic="full", device="cuda"), "shape": "512x512 edit, one 512x512 "
              "reference, 100 text tokens (one CFG branch)", "rows": rows}
    if args.out:
        write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
