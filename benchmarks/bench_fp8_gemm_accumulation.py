"""FP8 GEMM choices of the feed-forward and every projection, measured at OmniGen2's shapes on one GPU.

1. Accumulation: cuBLASLt FP8 GEMMs (`torch._scaled_mm`) with exact accumulation (partial sums promoted to float32)
   and with fast accumulation (`use_fast_accum=True`, Fp8Config.fast_accumulation), row-wise and tensor-wise
   scaled, against the BF16 GEMM of the same layer: time, and the relative L2 error of each against the float64
   product of the very same e4m3 inputs (so the number is the GEMM's own error, not FP8 quantization's).
2. The folded SwiGLU's two layouts: gate/up as a row-wise GEMM and a plain SwiGLU quantization kernel, or gate/up
   with unit scales and the scales applied in the quantization kernel (KernelPlan.gate_up_unit_scales), with the
   kernel's launch settings swept (block width, warps; a block at least the padded row = one pass over memory).
Rows: the cond pass of a 1024 edit with one reference (8389 tokens), its uncond pass (4204), and a 512 edit (2245).
Inputs are random; the shapes, not the values, decide the times.

    python -m benchmarks.bench_fp8_gemm_accumulation --out results/fp8_gemm_accumulation_h200.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from harness.core.records import run_manifest, write_json_atomic
from omnigen2_fp8.fp8.kernels import quantize_activation_triton
from omnigen2_fp8.fp8.primitives import emulated_scaled_mm, quantize_activation, quantize_weight, round_up
from omnigen2_fp8.transformer import TransformerConfig

ROWS = (8389, 4204, 2245)
SWIGLU_LAUNCHES = ((2048, 8), (4096, 8), (8192, 16), (16384, 16), (16384, 32))


def layer_shapes(config: TransformerConfig) -> dict[str, tuple[int, int]]:
    """(N, K) of the four FP8 GEMM groups of a block, fused as the library runs them."""
    d, head = config.hidden_size, config.hidden_size // config.num_attention_heads
    qkv = d + 2 * config.num_kv_heads * head
    return {"to_qkv": (qkv, d), "to_out": (d, d), "linear_13": (2 * config.ffn_dim, d), "linear_2": (d, config.ffn_dim)}


def bench(fn) -> float:
    """Median ms (CUDA events, L2 flushed before each call)."""
    from triton.testing import do_bench
    return do_bench(fn, warmup=25, rep=150, return_mode="median")


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref).norm() / ref.norm())


def gemm_rows(shapes: dict[str, tuple[int, int]]) -> list[dict]:
    rows = []
    for m in ROWS:
        for name, (n, k) in shapes.items():
            kp = round_up(k, 16)
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
            xq, xs = quantize_activation(x, kp)  # the library's e4m3 rounding: per token, zero padded
            wq, ws = quantize_weight(w, per_channel=True)  # [Np, kp] zero padded, scales [Np] (1 on padded rows)
            exact = emulated_scaled_mm(xq, xs, wq, ws, torch.float64)  # float64: exact for these K
            one = torch.ones((), device="cuda")
            row = {"rows": m, "layer": name, "n": n, "k": k, "bf16_ms": bench(lambda: x @ w.t())}
            for fast in (False, True):
                tag = "fast" if fast else "exact"
                rowwise = lambda: torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws.view(1, -1),  # noqa: E731
                                                   out_dtype=torch.bfloat16, use_fast_accum=fast)
                unit = lambda: torch._scaled_mm(xq, wq.t(), scale_a=one, scale_b=one,  # noqa: E731
                                                out_dtype=torch.bfloat16, use_fast_accum=fast)
                row[f"rowwise_{tag}_ms"] = bench(rowwise)
                row[f"rowwise_{tag}_rel_err"] = rel(rowwise(), exact)
                row[f"unit_scales_{tag}_ms"] = bench(unit)
                row[f"unit_scales_{tag}_rel_err"] = rel(unit().double() * xs.double() * ws.double().view(1, -1),
                                                        exact)
            row["fp8_fast_rowwise_over_bf16"] = row["bf16_ms"] / row["rowwise_fast_ms"]
            rows.append(row)
            print(f"{m:5d} {name:10s} bf16 {row['bf16_ms']:.4f}  fp8 exact {row['rowwise_exact_ms']:.4f} "
                  f"fast {row['rowwise_fast_ms']:.4f} ms  err exact {row['rowwise_exact_rel_err']:.5f} "
                  f"fast {row['rowwise_fast_rel_err']:.5f}", flush=True)
    return rows


def swiglu_rows(ffn: int) -> list[dict]:
    rows = []
    for m in ROWS:
        raw = torch.randn(m, 2 * ffn, device="cuda", dtype=torch.bfloat16) * 50
        row_scale = torch.rand(m, 1, device="cuda") * 0.01 + 1e-3
        col_scale = torch.rand(2 * ffn, device="cuda") * 0.01 + 1e-3
        moved = raw.numel() * raw.element_size() + m * ffn
        row = {"rows": m, "bytes": moved, "copy_of_the_input_ms": bench(lambda: raw.clone())}
        for block, warps in SWIGLU_LAUNCHES:
            for layout, scales in (("plain", (None, None)), ("unit_scale_dequant", (row_scale, col_scale))):
                ms = bench(lambda: quantize_activation_triton(raw, ffn, True, True, *scales, block_k=block,
                                                              num_warps=warps))
                row[f"{layout}_b{block}_w{warps}_ms"] = ms
                row[f"{layout}_b{block}_w{warps}_tb_per_s"] = moved / ms / 1e9
        rows.append(row)
        best = {layout: min((v, k) for k, v in row.items() if k.startswith(layout) and k.endswith("_ms"))
                for layout in ("plain", "unit_scale_dequant")}
        print(f"{m:5d} swiglu quantization: best plain {best['plain']}, best dequant {best['unit_scale_dequant']}",
              flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        parser.error("needs a CUDA GPU with FP8 tensor cores (compute capability 8.9+)")
    torch.manual_seed(0)
    config = TransformerConfig()
    record = {"manifest": run_manifest(synthetic="random-tensors", device="cuda",
                                      extra={"benchmark": "fp8 GEMM accumulation and SwiGLU layout"}),
              "timing": "triton.testing.do_bench: CUDA events, L2 flush before each call, median",
              "error": "relative L2 against the float64 product of the same e4m3 inputs and scales",
              "gemm": gemm_rows(layer_shapes(config)), "swiglu_quantization": swiglu_rows(config.ffn_dim)}
    write_json_atomic(args.out, record)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
