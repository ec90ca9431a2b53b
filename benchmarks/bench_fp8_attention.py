"""FP8 attention (cuDNN FP8 SDPA) against BF16 attention: speed and error, op by op, per layer and end to end.

1. The op at OmniGen2's joint lengths (21 query / 7 key-value heads, head dim 120 padded to 128): time of torch's
   BF16 SDPA, of cuDNN's FP8 kernel alone and of the whole FP8 core (quantize q/k/v + kernel + dequantize);
   relative L2 error of the FP8 output against BF16, and of cuDNN against the float32 emulation of its numerics.
2. Per layer: the full-size DiT (random weights) with FP8 linears and FP8 attention, one 1024 edit pass; every
   block's FP8 attention output against BF16 attention on the very same inputs.
3. End to end: the transformer output of BF16, FP8 (linears) and FP8 + FP8 attention, relative L2 against BF16.
Random weights: the error numbers describe the kernel on these activations, not edit quality.

    python -m benchmarks.bench_fp8_attention --out results/fp8_attention_ops_h200.json
"""
from __future__ import annotations

import argparse
import copy
import sys
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks._common import cuda_event_ms
from benchmarks.bench_fp8_transformer import make_inputs
from harness.core.records import run_manifest, write_json_atomic
from omnigen2_fp8 import synthetic
from omnigen2_fp8.attention import grouped_attention
from omnigen2_fp8.fp8 import Fp8Config, quantize_fp8
from omnigen2_fp8.fp8.attention import (Fp8Sdpa, cudnn_fp8_sdpa, fp8_attention_reference, qk_descale_bound,
                                        quantize_heads)
from omnigen2_fp8.fp8.attention_error import attention_error_probe

LENGTHS = (2148, 8460)  # 512 and 1024 edits with one reference: joint tokens of the cond pass


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def op_level(length: int) -> dict:
    g = torch.Generator("cuda").manual_seed(length)
    # q and k as RMS-normed (unit weight) heads, as the model's QK-norm gives them
    q = F.rms_norm(torch.randn(1, length, 21, 120, device="cuda", generator=g), (120,)).bfloat16()
    k = F.rms_norm(torch.randn(1, length, 7, 120, device="cuda", generator=g), (120,)).bfloat16()
    v = torch.randn(1, length, 7, 120, device="cuda", generator=g).bfloat16()
    ones = torch.ones(120, device="cuda")
    core = Fp8Sdpa(120, qk_descale_bound(ones), qk_descale_bound(ones)).cuda()
    bf16 = grouped_attention(q, k, v, None)
    fp8 = core(q, k, v, None)
    q8, dq = quantize_heads(q, 128)
    k8, dk = quantize_heads(k, 128)
    v8, dv = quantize_heads(v, 128)
    kernel_out = cudnn_fp8_sdpa(q8, k8, v8, dq, dk, dv, 120)
    emulated = fp8_attention_reference(q8, k8, v8, dq, dk, dv, 120)
    steps = (kernel_out[..., :120].float() - emulated[..., :120].float()).abs() * dv
    out = {"tokens": length,
           "bf16_sdpa_ms": cuda_event_ms(lambda: grouped_attention(q, k, v, None)),
           "fp8_kernel_ms": cuda_event_ms(lambda: cudnn_fp8_sdpa(q8, k8, v8, dq, dk, dv, 120)),
           "fp8_core_ms": cuda_event_ms(lambda: core(q, k, v, None)),
           "fp8_vs_bf16_rel_err": rel(fp8, bf16),
           "cudnn_vs_emulation_rel_err": rel(kernel_out[..., :120].float() * dv, emulated[..., :120].float() * dv),
           "cudnn_vs_emulation_max_abs": float(steps.max())}
    out["kernel_speedup"] = out["bf16_sdpa_ms"] / out["fp8_kernel_ms"]
    out["core_speedup"] = out["bf16_sdpa_ms"] / out["fp8_core_ms"]
    return out


def per_layer_and_end_to_end(latent_side: int, text_tokens: int) -> dict:
    base = synthetic.build_transformer("full", "cuda", torch.bfloat16, seed=0)
    inputs = make_inputs(base, latent_side, latent_side, text_tokens, "cuda")
    with torch.inference_mode():
        reference = torch.stack(base(*inputs)).float()
    fp8 = copy.deepcopy(base)
    quantize_fp8(fp8, Fp8Config())
    quantize_fp8(base, Fp8Config(attention="fp8"))  # base becomes FP8 + FP8 attention (saves a copy)
    with torch.inference_mode():
        with attention_error_probe(base) as probe:
            base(*inputs)
        errors = probe.summary()["per_layer"]
        out_attn = torch.stack(base(*inputs)).float()
        out_fp8 = torch.stack(fp8(*inputs)).float()
    return {"latent_side": latent_side, "text_tokens": text_tokens, "per_layer_rel_err": errors,
            "per_layer_rel_err_max": max(errors.values()), "per_layer_rel_err_mean": sum(errors.values()) / len(errors),
            "end_to_end_rel_err": {"fp8_linears": rel(out_fp8, reference),
                                   "fp8_linears_and_attention": rel(out_attn, reference),
                                   "fp8_attention_alone_vs_fp8": rel(out_attn, out_fp8)}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--no-model", action="store_true", help="op level only")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU with cuDNN FP8 attention (Hopper or newer)")
    record = {"manifest": run_manifest(synthetic="full", device="cuda", extra={"benchmark": "fp8 attention"})}
    try:
        import cudnn

        record["cudnn_backend_version"] = cudnn.backend_version()
        record["ops"] = [op_level(n) for n in LENGTHS]
        for row in record["ops"]:
            print(row, flush=True)
        write_json_atomic(args.out, record)
        if not args.no_model:
            record["model"] = per_layer_and_end_to_end(128, 120)
            print({k: v for k, v in record["model"].items() if k != "per_layer_rel_err"}, flush=True)
    except Exception as err:  # keep what was measured, say what failed
        record["error"] = f"{type(err).__name__}: {err}"
        record["traceback"] = traceback.format_exc()
        print(record["traceback"], flush=True)
    write_json_atomic(args.out, record)
    print(f"wrote {args.out}")
    return 0 if "error" not in record else 1


if __name__ == "__main__":
    sys.exit(main())
