"""Run by tests/test_fp8_fused_kernels.py in a subprocess with TRITON_INTERPRET=1 (set before triton is imported):
the fused block kernels (the very code the GPU runs) execute on the CPU against their torch references
(fp8/fused_reference.py), and the tiny model runs its fused FP8 block through them, eager and compiled.
Prints one JSON object of measurements; the test asserts on it."""
from __future__ import annotations

import json
import os
import sys

if os.environ.get("TRITON_INTERPRET") != "1":
    sys.exit("run with TRITON_INTERPRET=1")

import torch  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

from omnigen2_fp8.fp8 import Fp8Config, Kernel, fused_kernels as K, fused_reference as R  # noqa: E402
from omnigen2_fp8.fp8 import KernelPlan, plan_for, quantize_fp8, use_plan  # noqa: E402
from omnigen2_fp8.transformer import OmniGen2Transformer, TransformerConfig  # noqa: E402


def ordinal(t: torch.Tensor) -> torch.Tensor:
    """Integers in the order of the floating-point values (one step = one ulp), for e4m3 and bf16 bit patterns."""
    bits = t.view(torch.uint8).int() if t.element_size() == 1 else t.view(torch.int16).int() & 0xFFFF
    top = 0x80 if t.element_size() == 1 else 0x8000
    return torch.where(bits >= top, -(bits - top), bits)


def steps(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Largest distance in representable steps, and the fraction of bit-identical values, of two e4m3/bf16 tensors."""
    if a.dtype == torch.float32:  # relative to the largest value: rotations cancel, small outputs have no ulp scale
        return {"max_diff_over_max": float((a - b).abs().max() / b.abs().max())}
    d = (ordinal(a) - ordinal(b)).abs()
    return {"max_steps": int(d.max()) if d.numel() else 0, "identical": float((d == 0).float().mean()),
            "nan": bool(torch.isnan(a.float()).any())}


def rows(n: int, seq: int, d: int, dtype=torch.bfloat16, spread: bool = True) -> torch.Tensor:
    """[n, seq, d] rows whose magnitudes span 1e-3 .. 1e3 (subnormal e4m3 codes appear after normalisation)."""
    x = torch.randn(n, seq, d)
    if spread:
        x = x * torch.logspace(-3, 3, n * seq).reshape(n, seq, 1) * (1 + torch.rand(1, 1, d) * 10)
    return x.to(dtype)


def padded_view(n: int, seq: int, d: int, dp: int, dtype=torch.bfloat16) -> torch.Tensor:
    """[n, seq, d] read through the row stride of a [n, seq, dp] buffer (a padded GEMM output)."""
    return rows(n, seq, dp, dtype)[..., :d]


def modulation(n: int, d: int) -> torch.Tensor:
    """An AdaLN chunk: a strided [n, d] view of [n, 4d], as block.norm1.linear(temb).chunk(4) gives."""
    return (torch.randn(n, 4 * d) * 0.5).to(torch.bfloat16)[:, d: 2 * d]


def modulated_case(x, scale, k_padded, eps=1e-5, launch=None) -> dict:
    torch.manual_seed(1)
    weight = torch.rand(x.shape[-1]) + 0.5
    q, s = K.modulated_rmsnorm_quant_triton(x, weight, scale, eps, k_padded, launch=launch)
    qr, sr = R.modulated_rmsnorm_quant(x, weight, scale, eps, k_padded)
    d = x.shape[-1]
    return {**steps(q, qr), "scale_max_rel_diff": float(((s - sr).abs() / sr).max()), "q_shape": list(q.shape),
            "padding_zero": bool((q[:, d:].view(torch.uint8) == 0).all()), "q_dtype": str(q.dtype)}


def residual_case(h, y, gate, quant: bool, k_padded: int = 0, launch=None) -> dict:
    d = h.shape[-1]
    w, nw = torch.rand(d) + 0.5, (torch.rand(d) + 0.5).to(h.dtype)
    if not quant:
        return {"h": steps(K.gated_residual_rmsnorm_triton(h, y, gate, w, 1e-5, launch=launch),
                           R.gated_residual_rmsnorm(h, y, gate, w, 1e-5))}
    scale = modulation(h.shape[0], d)
    out = K.gated_residual_rmsnorm_quant_triton(h, y, gate, w, 1e-5, nw, scale, 1e-6, k_padded, launch=launch)
    ref = R.gated_residual_rmsnorm_quant(h, y, gate, w, 1e-5, nw, scale, 1e-6, k_padded)
    # the quantized part against the reference norm-quant of the kernel's own h_new (the same input exactly)
    q_own, _ = R.modulated_rmsnorm_quant(out[0], nw, scale, 1e-6, k_padded)
    return {"h": steps(out[0], ref[0]), "q": steps(out[1], ref[1]),
            "scale_max_rel_diff": float(((out[2] - ref[2]).abs() / ref[2]).max()),
            "padding_zero": bool((out[1][:, d:].view(torch.uint8) == 0).all()),
            "q_vs_own_h": steps(out[1], q_own)}


def prefetch_case(h, y, gate, k_padded: int, rows_per_program: int) -> bool:
    """Do the resident kernel's launches with and without prefetching write the very same bits (every output)?"""
    d = h.shape[-1]
    w, nw = torch.rand(d) + 0.5, (torch.rand(d) + 0.5).to(h.dtype)
    scale = modulation(h.shape[0], d)
    outs = []
    for prefetch in (False, True):
        launch = K.RowLaunch(rows_per_program, 1, 4, resident=True, prefetch=prefetch)
        if y is None:
            outs.append(K.modulated_rmsnorm_quant_triton(h, nw, scale, 1e-6, k_padded, launch=launch))
        elif k_padded:
            outs.append(K.gated_residual_rmsnorm_quant_triton(h, y, gate, w, 1e-5, nw, scale, 1e-6, k_padded,
                                                              launch=launch))
        else:
            outs.append((K.gated_residual_rmsnorm_triton(h, y, gate, w, 1e-5, launch=launch),))
    return all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) if a.element_size() == 1 else torch.equal(a, b)
               for a, b in zip(*outs))


def rope_case(n, seq, hq, hk, hd, fp8_pad: int = 0, dtype=torch.bfloat16, launch=None) -> dict:
    width = (hq + 2 * hk) * hd
    qkv = rows(n, seq, width + 8, dtype, spread=False)[..., :width] * 3  # a padded qkv GEMM output
    q = qkv[..., : hq * hd].unflatten(-1, (hq, hd))
    k = qkv[..., hq * hd: (hq + hk) * hd].unflatten(-1, (hk, hd))
    angles = torch.rand(n, seq, hd // 2) * 50
    cos, sin = angles.cos(), angles.sin()
    wq, wk = (torch.rand(hd) + 0.5).to(dtype), (torch.rand(hd) + 0.5).to(dtype)
    descales = (torch.full((1, 1, 1, 1), 0.01), torch.full((1, 1, 1, 1), 0.02)) if fp8_pad else (None, None)
    args = (q, k, wq, wk, cos, sin, 1e-5, 1e-6, *descales, fp8_pad)
    out, ref = K.qk_norm_rope_triton(*args, launch=launch), R.qk_norm_rope(*args)
    result = {"q": steps(out[0], ref[0]), "k": steps(out[1], ref[1]), "q_shape": list(out[0].shape),
              "dtype": str(out[0].dtype)}
    if fp8_pad:
        result["padding_zero"] = bool(all((t[..., hd:].view(torch.uint8) == 0).all() for t in out))
    return result


def model_checks() -> dict:
    """The tiny model (bf16) with its FP8 blocks fused by the Triton kernels vs the same blocks fused by the torch
    references, vs unfused; then regionally compiled (counters: one graph per block kind, no recompiles)."""
    torch.manual_seed(0)
    model = OmniGen2Transformer(TransformerConfig.from_name("tiny")).eval().to(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    lat = [torch.randn(16, 8, 8, generator=g).bfloat16(), torch.randn(16, 6, 10, generator=g).bfloat16()]
    refs = [[torch.randn(16, 8, 6, generator=g).bfloat16()], None]
    text = torch.randn(2, 7, 64, generator=g).bfloat16()
    mask = torch.ones(2, 7)
    mask[1, 5:] = 0
    t = torch.tensor([0.3, 0.7])
    call = (lat, t, text, mask, refs)  # a ragged batch of two: masked blocks, two samples' modulations
    out = {}
    plans = {"triton": plan_for(Kernel.CUBLAS_PADDED, fused_block=True),  # the CUDA plan + fused blocks, on the CPU
             "triton_unfused": plan_for(Kernel.CUBLAS_PADDED, fused_block=False),
             # the Triton kernels with the exact emulated GEMM: against "reference" only the kernels differ
             "triton_emulated": KernelPlan(Kernel.TORCH_REFERENCE, "fused", "emulated", fused_block=True),
             "reference": plan_for(Kernel.TORCH_REFERENCE, fused_block=True),
             "reference_unfused": plan_for(Kernel.TORCH_REFERENCE)}
    with torch.no_grad():
        exact = [y.float() for y in model(*call)]
        report = quantize_fp8(model, Fp8Config())
        out["fused_blocks"] = len(report.fused_blocks)
        runs = {}
        for name, plan in plans.items():
            use_plan(model, plan)
            runs[name] = [y.float() for y in model(*call)]

        def rel(a, b):
            return max(float((x - y).norm() / y.norm()) for x, y in zip(a, b))

        out["rel_vs_bf16"] = {name: rel(ys, exact) for name, ys in runs.items()}
        out["triton_emulated_vs_reference"] = rel(runs["triton_emulated"], runs["reference"])
        out["triton_fused_vs_unfused"] = rel(runs["triton"], runs["triton_unfused"])
        out["reference_fused_vs_unfused"] = rel(runs["reference"], runs["reference_unfused"])

        use_plan(model, plans["triton"])
        torch._dynamo.reset()
        counters.clear()
        model.compile_blocks()
        single = ([lat[0]], t[:1], text[:1], mask[:1], refs[:1])  # batch 1 as the pipeline calls: no masks
        compiled = [y.float() for y in model(*single)]
        lat2 = [torch.randn(16, 10, 6, generator=g).bfloat16()]
        model(lat2, t[:1], text[:1], mask[:1], [[torch.randn(16, 4, 6, generator=g).bfloat16()]])  # other counts
        out["unique_graphs"] = counters["stats"]["unique_graphs"]
        out["frames_ok"] = counters["frames"]["ok"]
        for block in model.blocks():
            block._compiled_call_impl = None  # back to eager, for the comparison
        eager = [y.float() for y in model(*single)]
        out["compiled_vs_eager"] = rel(compiled, eager)
    return out


def main() -> None:
    torch.manual_seed(0)
    out = {"interpreted": type(K._residual_norm_quant_kernel).__name__}
    out["modulated"] = {
        "tiny_bf16": modulated_case(rows(2, 5, 120), modulation(2, 120), 128),
        "tiny_no_scale_fp32": modulated_case(rows(2, 5, 120, torch.float32), None, 128),
        "strided_rows": modulated_case(padded_view(2, 4, 120, 136), modulation(2, 120), 128),
        "real_2520": modulated_case(rows(1, 3, 2520), modulation(1, 2520), 2528),
        # launches that split a sample's rows unevenly: masked tail rows, one row per program, 4 rows at once
        "rows_4x2_tail": modulated_case(rows(2, 7, 120), modulation(2, 120), 128, launch=K.RowLaunch(4, 2, 4)),
        "rows_1x1": modulated_case(rows(2, 5, 120), modulation(2, 120), 128, launch=K.RowLaunch(1, 1, 4)),
        "rows_8x4_tail": modulated_case(rows(3, 5, 120), modulation(3, 120), 128, launch=K.RowLaunch(8, 4, 2)),
        # the chunked kernel: 120 values in chunks of 32 (a partial last chunk), 2 rows per program (a tail row)
        "chunked_32x2": modulated_case(rows(2, 5, 120), modulation(2, 120), 128, launch=K.RowLaunch(2, 2, 4, 32)),
        "chunked_real_512": modulated_case(rows(1, 3, 2520), modulation(1, 2520), 2528,
                                           launch=K.RowLaunch(1, 1, 4, 512)),
        "chunked_no_scale": modulated_case(rows(2, 3, 120, torch.float32), None, 128,
                                           launch=K.RowLaunch(1, 1, 2, 64)),
        # the resident kernel: 120 -> 5 x 32 lanes, 3 rows per program (a partial last program); 2528 -> 5 x 512 lanes
        "resident_3rows": modulated_case(rows(2, 5, 120), modulation(2, 120), 128,
                                         launch=K.RowLaunch(3, 1, 4, resident=True)),
        "resident_real": modulated_case(rows(1, 3, 2520), modulation(1, 2520), 2528,
                                        launch=K.RowLaunch(2, 1, 4, resident=True)),
        # prefetching the next row: a partial last program (its prefetch past the rows reads nothing), 128 -> 5 x 32
        "prefetch_3rows": modulated_case(rows(2, 5, 120), modulation(2, 120), 128,
                                         launch=K.RowLaunch(3, 1, 4, resident=True, prefetch=True)),
        "prefetch_one_piece": modulated_case(rows(2, 3, 128), modulation(2, 128), 128,
                                             launch=K.RowLaunch(2, 1, 2, resident=True, prefetch=True)),
        "prefetch_real": modulated_case(rows(1, 3, 2520), modulation(1, 2520), 2528,
                                        launch=K.RowLaunch(2, 1, 4, resident=True, prefetch=True)),
    }
    gate = torch.randn(2, 120).tanh()
    out["residual"] = {
        "tiny_gate": residual_case(rows(2, 5, 120), padded_view(2, 5, 120, 128), gate, False),
        "tiny_no_gate": residual_case(rows(2, 5, 120), padded_view(2, 5, 120, 128), None, False),
        "tiny_gate_quant": residual_case(rows(2, 5, 120), padded_view(2, 5, 120, 128), gate, True, 128),
        "real_2520_quant": residual_case(rows(1, 3, 2520), padded_view(1, 3, 2520, 2528),
                                         torch.randn(1, 2520).tanh(), True, 2528),
        "rows_4x2_tail_quant": residual_case(rows(2, 7, 120), padded_view(2, 7, 120, 128), gate, True, 128,
                                             launch=K.RowLaunch(4, 2, 4)),
        "rows_8x4_tail": residual_case(rows(2, 5, 120), padded_view(2, 5, 120, 128), gate, False,
                                       launch=K.RowLaunch(8, 4, 2)),
        "chunked_32x2": residual_case(rows(2, 5, 120), padded_view(2, 5, 120, 128), gate, False,
                                      launch=K.RowLaunch(2, 2, 4, 32)),
        "chunked_32x2_quant": residual_case(rows(2, 5, 120), padded_view(2, 5, 120, 128), gate, True, 128,
                                            launch=K.RowLaunch(2, 2, 4, 32)),
        "chunked_no_gate_quant": residual_case(rows(2, 3, 120), padded_view(2, 3, 120, 128), None, True, 128,
                                               launch=K.RowLaunch(1, 1, 4, 64)),
        "chunked_real_512_quant": residual_case(rows(1, 3, 2520), padded_view(1, 3, 2520, 2528),
                                                torch.randn(1, 2520).tanh(), True, 2528,
                                                launch=K.RowLaunch(1, 1, 4, 512)),
        "resident_no_gate": residual_case(rows(2, 3, 120), padded_view(2, 3, 120, 128), None, False,
                                          launch=K.RowLaunch(1, 1, 2, resident=True)),
        "resident_3rows_quant": residual_case(rows(2, 5, 120), padded_view(2, 5, 120, 128), gate, True, 128,
                                              launch=K.RowLaunch(3, 1, 4, resident=True)),
        "resident_real_quant": residual_case(rows(1, 3, 2520), padded_view(1, 3, 2520, 2528),
                                             torch.randn(1, 2520).tanh(), True, 2528,
                                             launch=K.RowLaunch(2, 1, 4, resident=True)),
        "prefetch_no_gate": residual_case(rows(2, 3, 120), padded_view(2, 3, 120, 128), None, False,
                                          launch=K.RowLaunch(2, 1, 2, resident=True, prefetch=True)),
        "prefetch_3rows_quant": residual_case(rows(2, 5, 120), padded_view(2, 5, 120, 128), gate, True, 128,
                                              launch=K.RowLaunch(3, 1, 4, resident=True, prefetch=True)),
        "prefetch_real_quant": residual_case(rows(1, 3, 2520), padded_view(1, 3, 2520, 2528),
                                             torch.randn(1, 2520).tanh(), True, 2528,
                                             launch=K.RowLaunch(2, 1, 4, resident=True, prefetch=True)),
    }
    out["prefetch_same_bits"] = {
        "modulated_real": prefetch_case(rows(1, 5, 2520), None, None, 2528, 2),
        "residual_real_quant": prefetch_case(rows(1, 5, 2520), padded_view(1, 5, 2520, 2528),
                                             torch.randn(1, 2520).tanh(), 2528, 4),
        "residual_tiny": prefetch_case(rows(2, 7, 120), padded_view(2, 7, 120, 128), gate, 0, 3),
    }
    out["rope"] = {
        "tiny_bf16": rope_case(2, 5, 6, 2, 20),
        "tiny_fp8_pad32": rope_case(2, 5, 6, 2, 20, fp8_pad=32),
        "tiny_fp32": rope_case(1, 3, 6, 2, 20, dtype=torch.float32),
        "real_bf16": rope_case(1, 3, 21, 7, 120),
        "real_fp8_pad128": rope_case(1, 3, 21, 7, 120, fp8_pad=128),
        # 4 tokens per program over 2 samples of 5: programs that straddle samples, a partial last program
        "tokens_4_straddle": rope_case(2, 5, 6, 2, 20, launch=K.RopeLaunch(4, 2)),
        "tokens_1_fp8": rope_case(2, 3, 6, 2, 20, fp8_pad=32, launch=K.RopeLaunch(1, 1)),
    }
    out["model"] = model_checks()
    print("JSON:" + json.dumps(out))


if __name__ == "__main__":
    main()
