"""Run by tests/test_fp8_kernels.py in a subprocess with TRITON_INTERPRET=1 (set before triton is imported):
the fused Triton kernel (the very code the GPU runs) executes on the CPU and is compared with the torch reference.
Prints one JSON object of measurements; the test asserts on it."""
from __future__ import annotations

import json
import os
import sys

if os.environ.get("TRITON_INTERPRET") != "1":
    sys.exit("run with TRITON_INTERPRET=1")

import torch  # noqa: E402

from omnigen2_fp8.fp8 import Fp8Config, Fp8Linear, Kernel, kernels, plan_for  # noqa: E402
from omnigen2_fp8.fp8 import primitives as P  # noqa: E402


def ordinal(q: torch.Tensor) -> torch.Tensor:
    c = q.view(torch.uint8).int()
    return torch.where(c >= 128, -(c - 128), c)


def compare(x, k_padded, per_token, swiglu, row_scale=None, col_scale=None, block_k=None, stages=None) -> dict:
    q, s = kernels.quantize_activation_triton(x, k_padded, per_token, swiglu, row_scale, col_scale, block_k=block_k,
                                              stages=stages)
    qr, sr = P.quantize_activation(x, k_padded, per_token, swiglu, row_scale, col_scale)
    k = x.shape[1] // 2 if swiglu else x.shape[1]
    return {"max_step_diff": int((ordinal(q) - ordinal(qr)).abs().max()),
            "bit_identical": bool(torch.equal(q.view(torch.uint8), qr.view(torch.uint8))),
            "scale_max_rel_diff": float(((s - sr).abs() / sr).max()),
            "scale_shape": list(s.shape), "q_shape": list(q.shape), "q_dtype": str(q.dtype),
            "padding_zero": bool((q[:, k:].view(torch.uint8) == 0).all()),
            "nan": bool(torch.isnan(q.float()).any())}


def main() -> None:
    torch.manual_seed(0)
    out = {"interpreted": type(kernels._quantize_rows_kernel).__name__}
    # rows spanning many magnitudes (subnormal e4m3 codes included), an all-zero row, K not a multiple of 16
    x = (torch.randn(24, 100) * torch.logspace(-4, 3, 24)[:, None]).to(torch.bfloat16)
    x[5] = 0
    cases = {
        "per_token": compare(x, 112, True, False),
        "per_token_two_pass": compare(x, 112, True, False, block_k=32),
        "per_tensor": compare(x, 112, False, False),
        "strided_rows": compare(torch.randn(9, 150, dtype=torch.bfloat16)[:, :100], 112, True, False),
        "fp32_input": compare(torch.randn(7, 64) * 5, 64, True, False),
        "swiglu": compare(torch.randn(11, 200, dtype=torch.bfloat16) * 4, 112, True, True),
        "swiglu_two_pass": compare(torch.randn(11, 200, dtype=torch.bfloat16) * 4, 112, True, True, block_k=32),
        "swiglu_dequant": compare(torch.randn(11, 200, dtype=torch.bfloat16) * 300, 112, True, True,
                                  torch.rand(11, 1) * 1e-2, torch.rand(208) * 1e-2),
        # the row in registers as chunks: 4 of 32 (a partial one past K, padding), 5 of 512 at the real 2528 width
        "resident": compare(x, 112, True, False, block_k=32, stages=kernels.RESIDENT),
        "resident_per_tensor": compare(x, 112, False, False, block_k=32, stages=kernels.RESIDENT),
        "resident_swiglu_dequant": compare(torch.randn(11, 200, dtype=torch.bfloat16) * 300, 112, True, True,
                                           torch.rand(11, 1) * 1e-2, torch.rand(208) * 1e-2, block_k=32,
                                           stages=kernels.RESIDENT),
        "resident_real_2520": compare(torch.randn(3, 2520, dtype=torch.bfloat16) * 3, 2528, True, False,
                                      block_k=512, stages=kernels.RESIDENT),
    }
    out["cases"] = cases
    # the exhaustive encoder check: every e4m3 rounding boundary region, against torch's cast
    v = torch.cat([torch.linspace(-460, 460, 20001), torch.linspace(-0.03, 0.03, 20001), torch.tensor([0.0, -0.0])])
    q, _ = kernels.quantize_activation_triton(v.reshape(1, -1), v.numel(), False, False)  # one row, per tensor
    ref = P.cast_to_e4m3(v / (v.abs().max() / P.E4M3_MAX)).reshape(1, -1)
    out["encoder_bit_identical"] = bool(torch.equal(q.view(torch.uint8), ref.view(torch.uint8)))

    # Fp8Linear's GPU path (fused kernel + torch._scaled_mm, which has a CPU implementation) vs exact emulation
    lin = torch.nn.Linear(120, 200, bias=True).to(torch.bfloat16)
    layer = Fp8Linear.from_linear(lin, Fp8Config())
    xin = torch.randn(3, 5, 120, dtype=torch.bfloat16)
    emulated = layer(xin).float()
    layer.use_plan(plan_for(Kernel.CUBLAS_PADDED))  # the CUDA kernel choice, forced on the CPU
    fused = layer(xin).float()
    out["linear_rel_diff_fused_vs_emulated"] = float((fused - emulated).norm() / emulated.norm())
    compiled = torch.compile(layer, fullgraph=True, dynamic=True)  # fullgraph: any graph break raises
    out["compiled_max_abs_diff"] = float((compiled(xin).float() - fused).abs().max())
    xin2 = torch.randn(7, 120, dtype=torch.bfloat16)
    out["compiled_second_shape_max_abs_diff"] = float((compiled(xin2).float() - layer(xin2).float()).abs().max())
    print("JSON:" + json.dumps(out))


if __name__ == "__main__":
    main()
