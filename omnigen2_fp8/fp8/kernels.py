"""Fused dynamic activation quantization for FP8 GEMMs: one Triton kernel, and the op torch.compile sees.

The kernel reads each BF16 row once and writes the zero-padded e4m3 row plus its float32 scale:
    x [M, K] (or [M, 2K] = [gate | up], then silu(gate) * up is taken first, in float32)
    -> q [M, Kp] e4m3 (columns K..Kp are 0), scale [M, 1] float32, with x ~= q * scale.
Written as plain torch ops the same work takes several kernels and a few extra passes over memory, which made
FP8 layers slower than BF16 (see REFERENCE.md section 3); here it is one pass at memory bandwidth.

The e4m3 encoding is done with integer arithmetic (round to nearest even, saturating at 448) instead of the
hardware conversion, for two reasons: the bit pattern is then identical to torch's `.to(float8_e4m3fn)`, and
Triton's CPU interpreter (TRITON_INTERPRET=1, used by the tests) converts subnormals and rounding carries
wrongly, so the kernel the tests run on the CPU is exactly the kernel the GPU runs. The extra integer ops are
free in a memory-bound kernel.

The reference implementation of the same function is `primitives.quantize_activation`.
"""
from __future__ import annotations

import os

import torch

from .primitives import AMAX_FLOOR, E4M3_MAX, FP8_DTYPE

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs without triton use the torch reference path
    triton = None

HAS_TRITON = triton is not None

# Kernel modes (constexpr): per-token dynamic scales / per-row absmax only / one given scale for every row.
_MODE_PER_TOKEN, _MODE_ROW_AMAX, _MODE_GIVEN_SCALE = 0, 1, 2


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


if HAS_TRITON:
    _AMAX_FLOOR = tl.constexpr(AMAX_FLOOR)
    _E4M3_MAX = tl.constexpr(E4M3_MAX)

    @triton.jit
    def _e4m3_code(v):
        """float32 v in [-448, 448] -> e4m3fn bit pattern (uint8), round to nearest even."""
        bits = v.to(tl.int32, bitcast=True)
        sign = (bits >> 24) & 0x80
        mag_bits = bits & 0x7FFFFFFF
        a = mag_bits.to(tl.float32, bitcast=True)
        # Normal range (a >= 2^-6): keep 3 mantissa bits; the carry may bump the exponent, which is correct.
        lsb = (mag_bits >> 20) & 1
        normal = ((mag_bits + 0x7FFFF + lsb) >> 20) - (120 << 3)  # rebias the exponent from 127 to 7
        # Subnormal range: multiples of 2^-9 (the code 8 that rounding can reach is exactly 2^-6).
        t = a * 512.0
        f = t.to(tl.int32)
        frac = t - f.to(tl.float32)
        sub = f + ((frac > 0.5) | ((frac == 0.5) & ((f & 1) == 1))).to(tl.int32)
        code = tl.where(a < 0.015625, sub, normal)
        return (code | sign).to(tl.uint8)

    @triton.jit
    def _quantize_rows_kernel(x_ptr, q_ptr, scale_ptr, given_scale_ptr, M, K, KP, stride_xm, stride_qm,
                              BLOCK_K: tl.constexpr, ROWS: tl.constexpr, SWIGLU: tl.constexpr,
                              MODE: tl.constexpr):
        cols = tl.arange(0, BLOCK_K)
        for r in tl.static_range(ROWS):
            row = tl.program_id(0) * ROWS + r
            row_ok = row < M
            # Rows past M get empty masks (a scalar-and-vector mask trips the CPU interpreter).
            in_k = cols < tl.where(row_ok, K, 0)
            ptr = x_ptr + row.to(tl.int64) * stride_xm + cols
            x = tl.load(ptr, mask=in_k, other=0.0).to(tl.float32)
            if SWIGLU:
                up = tl.load(ptr + K, mask=in_k, other=0.0).to(tl.float32)
                x = x / (1.0 + tl.exp(-x)) * up
            if MODE == 1:
                tl.store(scale_ptr + row, tl.max(tl.abs(x), axis=0), mask=row_ok)
            else:
                if MODE == 2:
                    scale = tl.load(given_scale_ptr)
                else:
                    scale = tl.maximum(tl.max(tl.abs(x), axis=0), _AMAX_FLOOR) / _E4M3_MAX
                    tl.store(scale_ptr + row, scale, mask=row_ok)
                code = _e4m3_code(tl.clamp(x / scale, -_E4M3_MAX, _E4M3_MAX))
                tl.store(q_ptr + row.to(tl.int64) * stride_qm + cols, code, mask=cols < tl.where(row_ok, KP, 0))


def _launch_config(block_k: int, m: int) -> tuple[int, int]:
    """(rows per program, warps): about 8-16 fp32 values per thread, several rows per program when rows are short."""
    warps = 4 if block_k <= 1024 else 8 if block_k <= 4096 else 16
    rows = 4 if block_k <= 1024 else 2 if block_k <= 4096 else 1
    return min(rows, max(m, 1)), warps


def quantize_activation_triton(x: torch.Tensor, k_padded: int, per_token: bool = True,
                               apply_swiglu: bool = False, rows_per_program: int | None = None,
                               num_warps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused Triton activation quantization; same contract as `primitives.quantize_activation`.

    x: [M, K] (or [M, 2K] with apply_swiglu), unit stride in the last dim, bf16/fp16/fp32, on CUDA (or on
    the CPU when TRITON_INTERPRET=1). Returns (e4m3 [M, k_padded], float32 [M, 1] per token or [1, 1]).
    """
    if not HAS_TRITON:
        raise RuntimeError("the fused FP8 kernel needs triton (pip install triton); or use "
                           "Fp8Config(kernel='torch-reference') for the pure-torch path")
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"expected a 2-D activation with unit stride in the last dim; got shape {tuple(x.shape)}, "
                         f"stride {x.stride()} (call .contiguous() first)")
    if not x.is_cuda and not interpreter_enabled():
        raise RuntimeError("the Triton kernel runs on CUDA tensors (or on the CPU with TRITON_INTERPRET=1); "
                           "use primitives.quantize_activation for CPU tensors")
    m, width = x.shape
    k = width // 2 if apply_swiglu else width
    if apply_swiglu and width % 2:
        raise ValueError(f"a SwiGLU input is [M, 2K] = [gate | up]; got an odd width {width}")
    if k_padded < k:
        raise ValueError(f"k_padded {k_padded} is smaller than K {k}")
    q = torch.empty((m, k_padded), dtype=FP8_DTYPE, device=x.device)
    block_k = triton.next_power_of_2(k_padded)
    rows, warps = _launch_config(block_k, m)
    rows, warps = rows_per_program or rows, num_warps or warps
    grid = (triton.cdiv(m, rows),)
    q_bits = q.view(torch.uint8)
    if per_token:
        scale = torch.empty((m, 1), dtype=torch.float32, device=x.device)
        _quantize_rows_kernel[grid](x, q_bits, scale, scale, m, k, k_padded, x.stride(0), q.stride(0),
                                    BLOCK_K=block_k, ROWS=rows, SWIGLU=apply_swiglu, MODE=_MODE_PER_TOKEN,
                                    num_warps=warps)
        return q, scale
    # Per-tensor: a first pass for the row absmax values, then one scale for every row.
    row_amax = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    _quantize_rows_kernel[grid](x, q_bits, row_amax, row_amax, m, k, k_padded, x.stride(0), q.stride(0),
                                BLOCK_K=block_k, ROWS=rows, SWIGLU=apply_swiglu, MODE=_MODE_ROW_AMAX,
                                num_warps=warps)
    scale = (row_amax.amax().clamp_min(AMAX_FLOOR) / E4M3_MAX).reshape(1, 1)
    _quantize_rows_kernel[grid](x, q_bits, scale, scale, m, k, k_padded, x.stride(0), q.stride(0),
                                BLOCK_K=block_k, ROWS=rows, SWIGLU=apply_swiglu, MODE=_MODE_GIVEN_SCALE,
                                num_warps=warps)
    return q, scale


# torch.compile sees the kernel as one opaque op with a shape function: no graph break, and with dynamic
# shapes no recompilation per token count.
@torch.library.custom_op("omnigen2_fp8::quantize_activation", mutates_args=())
def quantize_activation_op(x: torch.Tensor, k_padded: int, per_token: bool,
                           apply_swiglu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return quantize_activation_triton(x, k_padded, per_token, apply_swiglu)


@quantize_activation_op.register_fake
def _(x, k_padded, per_token, apply_swiglu):
    m = x.shape[0]
    return (x.new_empty((m, k_padded), dtype=FP8_DTYPE),
            x.new_empty((m, 1) if per_token else (1, 1), dtype=torch.float32))
