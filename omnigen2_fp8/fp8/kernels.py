"""Fused dynamic activation quantization for FP8 GEMMs: one Triton kernel, and the op torch.compile sees.

The kernel reads each BF16 row from memory once and writes the zero-padded e4m3 row plus its float32 scale:
    x [M, K] (or [M, 2K] = [gate | up], then silu(gate) * up is taken first, in float32)
    -> q [M, Kp] e4m3 (columns K..Kp are 0), scale [M, 1] float32, with x ~= q * scale.
Rows up to the block size stay in registers; a resident launch (stages RESIDENT, the default at the real widths)
keeps a longer row in registers as up to five chunks, read once; otherwise longer rows are read in chunks twice,
the second time from L2.
Optionally x holds raw FP8 GEMM sums and is dequantized first (x * row_scale[m] * col_scale[k]): that lets the
gate/up GEMM run with unit scales (KernelPlan.gate_up_unit_scales; off by default: the float32 column scale read
per value costs more than the tensor-wise GEMM saves, results/fp8_gemm_accumulation_h200.json).
Written as plain torch ops the same work takes several kernels and extra passes over memory, which made FP8
layers slower than BF16 (see REFERENCE.md section 3).

The kernel carries its own e4m3 encoder in integer arithmetic (round to nearest even, saturating at 448; bit-
identical to torch's `.to(float8_e4m3fn)` after the clamp), because Triton's CPU interpreter (TRITON_INTERPRET=1,
used by the tests) converts subnormals and rounding carries wrongly. On CUDA the hardware conversion gives the same
bits and is 10-40 % faster, so it is used there (LaunchConfig.hw_cast_on_cuda); everything else in the kernel is
the same code on both, and the GPU benchmark checks the hardware path against torch.

The reference implementation of the same function is `primitives.quantize_activation`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

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
    _MODE_ROW_AMAX_C = tl.constexpr(_MODE_ROW_AMAX)
    _MODE_GIVEN_SCALE_C = tl.constexpr(_MODE_GIVEN_SCALE)

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
    def _encode(v, HW_CAST: tl.constexpr):
        """e4m3 bits of clamped v: the hardware conversion (GPU only), or the integer encoder (same bits)."""
        if HW_CAST:
            return v.to(tl.float8e4nv).to(tl.uint8, bitcast=True)
        return _e4m3_code(v)

    @triton.jit
    def _load_row_chunk(row_ptr, cols, K, SWIGLU: tl.constexpr, DEQUANT: tl.constexpr, row_scale, col_scale_ptr):
        """float32 values of one row at `cols` (0 past K); with SWIGLU, silu(gate) * up of [gate | up].
        DEQUANT: the row holds raw FP8 GEMM sums; multiply by row_scale * col_scale[col] first."""
        in_k = cols < K
        x = tl.load(row_ptr + cols, mask=in_k, other=0.0).to(tl.float32)
        if DEQUANT:
            x = x * row_scale * tl.load(col_scale_ptr + cols, mask=in_k, other=0.0)
        if SWIGLU:
            up = tl.load(row_ptr + K + cols, mask=in_k, other=0.0).to(tl.float32)
            if DEQUANT:
                up = up * row_scale * tl.load(col_scale_ptr + K + cols, mask=in_k, other=0.0)
            x = x / (1.0 + tl.exp(-x)) * up
        return x

    @triton.jit
    def _quantize_rows_kernel(x_ptr, q_ptr, scale_ptr, given_scale_ptr, row_scale_ptr, col_scale_ptr, K, KP,
                              stride_xm, stride_qm, stride_rs, BLOCK_K: tl.constexpr, SINGLE_PASS: tl.constexpr,
                              SWIGLU: tl.constexpr, DEQUANT: tl.constexpr, MODE: tl.constexpr,
                              X_ALIGN: tl.constexpr, HW_CAST: tl.constexpr, STAGES: tl.constexpr):
        """One program per row. SINGLE_PASS: the whole padded row in registers (BLOCK_K >= KP), read once.
        Otherwise chunks of BLOCK_K: a first pass for the absmax, a second (from L2) to quantize and store."""
        row = tl.program_id(0).to(tl.int64)
        # Row starts are 16-byte aligned when the stride allows it; telling Triton lets it vectorize the loads.
        x_row = x_ptr + row * tl.multiple_of(stride_xm, X_ALIGN)
        q_row = q_ptr + row * stride_qm
        row_scale = tl.load(row_scale_ptr + row * stride_rs) if DEQUANT else 1.0
        if SINGLE_PASS:
            cols = tl.arange(0, BLOCK_K)
            x = _load_row_chunk(x_row, cols, K, SWIGLU, DEQUANT, row_scale, col_scale_ptr)
            amax = tl.max(tl.abs(x), axis=0)
        else:
            amax = 0.0
            for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
                x = _load_row_chunk(x_row, k0 + tl.arange(0, BLOCK_K), K, SWIGLU, DEQUANT, row_scale,
                                    col_scale_ptr)
                amax = tl.maximum(amax, tl.max(tl.abs(x), axis=0))
        scale = _row_scale(amax, scale_ptr, given_scale_ptr, row, MODE)
        if MODE != _MODE_ROW_AMAX_C:
            if SINGLE_PASS:
                _store_codes(x, scale, q_row, cols, cols < KP, HW_CAST)
            else:
                for k0 in tl.range(0, KP, BLOCK_K, num_stages=STAGES):
                    cols = k0 + tl.arange(0, BLOCK_K)
                    x = _load_row_chunk(x_row, cols, K, SWIGLU, DEQUANT, row_scale, col_scale_ptr)
                    _store_codes(x, scale, q_row, cols, cols < KP, HW_CAST)


    @triton.jit
    def _quantize_rows_resident_kernel(x_ptr, q_ptr, scale_ptr, given_scale_ptr, row_scale_ptr, col_scale_ptr, K, KP,
                                       stride_xm, stride_qm, stride_rs, BLOCK_K: tl.constexpr, NC: tl.constexpr,
                                       SWIGLU: tl.constexpr, DEQUANT: tl.constexpr, MODE: tl.constexpr,
                                       X_ALIGN: tl.constexpr, HW_CAST: tl.constexpr):
        """`_quantize_rows_kernel` with the row held in registers as NC (1..5) chunks of BLOCK_K: read once like
        the single pass, but NC * BLOCK_K fits the width far closer than one power of two (10240 = 5 x 2048,
        2528 <= 5 x 512), and every load is issued before the absmax needs it."""
        row = tl.program_id(0).to(tl.int64)
        x_row = x_ptr + row * tl.multiple_of(stride_xm, X_ALIGN)
        q_row = q_ptr + row * stride_qm
        row_scale = tl.load(row_scale_ptr + row * stride_rs) if DEQUANT else 1.0
        span = tl.arange(0, BLOCK_K)
        x0 = _load_row_chunk(x_row, span, K, SWIGLU, DEQUANT, row_scale, col_scale_ptr)
        if NC > 1:
            x1 = _load_row_chunk(x_row, BLOCK_K + span, K, SWIGLU, DEQUANT, row_scale, col_scale_ptr)
        if NC > 2:
            x2 = _load_row_chunk(x_row, 2 * BLOCK_K + span, K, SWIGLU, DEQUANT, row_scale, col_scale_ptr)
        if NC > 3:
            x3 = _load_row_chunk(x_row, 3 * BLOCK_K + span, K, SWIGLU, DEQUANT, row_scale, col_scale_ptr)
        if NC > 4:
            x4 = _load_row_chunk(x_row, 4 * BLOCK_K + span, K, SWIGLU, DEQUANT, row_scale, col_scale_ptr)
        amax = tl.max(tl.abs(x0), axis=0)
        if NC > 1:
            amax = tl.maximum(amax, tl.max(tl.abs(x1), axis=0))
        if NC > 2:
            amax = tl.maximum(amax, tl.max(tl.abs(x2), axis=0))
        if NC > 3:
            amax = tl.maximum(amax, tl.max(tl.abs(x3), axis=0))
        if NC > 4:
            amax = tl.maximum(amax, tl.max(tl.abs(x4), axis=0))
        scale = _row_scale(amax, scale_ptr, given_scale_ptr, row, MODE)
        if MODE != _MODE_ROW_AMAX_C:
            _store_codes(x0, scale, q_row, span, span < KP, HW_CAST)
            if NC > 1:
                _store_codes(x1, scale, q_row, BLOCK_K + span, BLOCK_K + span < KP, HW_CAST)
            if NC > 2:
                _store_codes(x2, scale, q_row, 2 * BLOCK_K + span, 2 * BLOCK_K + span < KP, HW_CAST)
            if NC > 3:
                _store_codes(x3, scale, q_row, 3 * BLOCK_K + span, 3 * BLOCK_K + span < KP, HW_CAST)
            if NC > 4:
                _store_codes(x4, scale, q_row, 4 * BLOCK_K + span, 4 * BLOCK_K + span < KP, HW_CAST)

    @triton.jit
    def _row_scale(amax, scale_ptr, given_scale_ptr, row, MODE: tl.constexpr):
        """Stores what MODE keeps per row (the absmax, or the per-token scale); returns the scale codes divide by."""
        if MODE == _MODE_ROW_AMAX_C:
            tl.store(scale_ptr + row, amax)
            scale = amax
        elif MODE == _MODE_GIVEN_SCALE_C:
            scale = tl.load(given_scale_ptr)
        else:
            scale = tl.maximum(amax, _AMAX_FLOOR) / _E4M3_MAX
            tl.store(scale_ptr + row, scale)
        return scale

    @triton.jit
    def _store_codes(x, scale, q_row, cols, mask, HW_CAST: tl.constexpr):
        """e4m3 codes of x / scale (clamped to the e4m3 range) stored at q_row + cols where mask holds."""
        tl.store(q_row + cols, _encode(tl.clamp(x / scale, -_E4M3_MAX, _E4M3_MAX), HW_CAST), mask=mask)


MAX_RESIDENT_CHUNKS = 5  # the chunk variables `_quantize_rows_resident_kernel` spells out
RESIDENT = 0  # the `stages` value of a launch whose row stays in registers as chunks of block_k (see LaunchConfig)


@dataclass(frozen=True)
class LaunchConfig:
    """How the fused kernel is launched; the default is the measured heuristic (`default_launch`).

    overrides: ((K, swiglu), (block_k, num_warps, stages)) pairs, e.g. a benchmark's sweep winners;
    block_k >= the padded width = a single pass; stages RESIDENT (0) with a smaller block_k = the row held in
    registers as at most MAX_RESIDENT_CHUNKS chunks of block_k and read once; otherwise two passes over chunks.
    hw_cast_on_cuda: the hardware e4m3 conversion on CUDA (see the module docstring); the CPU interpreter always
    uses the integer encoder.
    """

    overrides: tuple[tuple[tuple[int, bool], tuple[int, int, int]], ...] = ()
    hw_cast_on_cuda: bool = True

    @classmethod
    def from_table(cls, table: dict[tuple[int, bool], tuple[int, int, int]], hw_cast_on_cuda: bool = True):
        """From {(K, swiglu): (block_k, num_warps, stages)}."""
        return cls(tuple((tuple(key), tuple(value)) for key, value in sorted(table.items())), hw_cast_on_cuda)

    def choose(self, k: int, k_padded: int, apply_swiglu: bool) -> tuple[int, int, int]:
        """(block_k, num_warps, pipeline stages) for rows of K values (2K read with SwiGLU)."""
        return dict(self.overrides).get((k, apply_swiglu)) or default_launch(k, k_padded, apply_swiglu)


DEFAULT_LAUNCH = LaunchConfig()


def default_launch(k: int, k_padded: int, apply_swiglu: bool) -> tuple[int, int, int]:
    """The measured heuristic: (block_k, num_warps, pipeline stages) for rows of K values (2K read with SwiGLU)."""
    # Measured on an H100 at M = 8.5k (results/fp8_layers_h100.json, "quant_kernel_sweep") and on an H200 at 8.5k
    # and 2.2k (results/quant_kernel_sweep_h200.json: also several rows per program, a looping grid and approximate
    # divisions for the SwiGLU rows, none faster at the step level). Since then the resident kernel (the row in
    # registers as a few chunks, no power-of-two padding) beats the whole-row launch at both real widths, on an H200
    # (results/row_kernels_h200.json, 8392 / 2245 rows): SwiGLU K = 10240 as 5 x 2048 with 8 warps 0.104 / 0.032 ms
    # against 0.131 / 0.039 (16384 lanes, 16 warps); K = 2520 as 5 x 512 with 4 warps 0.023 / 0.007 against
    # 0.031 / 0.010 (4096 lanes).
    block = triton.next_power_of_2(k_padded)
    if apply_swiglu:
        if 2048 < k_padded <= MAX_RESIDENT_CHUNKS * 2048:
            return 2048, 8, RESIDENT
        if block <= 16384:
            return block, (16 if block > 8192 else 8), 1  # gate and up rows whole in registers, read once
        return 2048, 8, 1  # two passes over 2K-wide chunks; the second reads from L2
    if 512 < k_padded <= MAX_RESIDENT_CHUNKS * 512:
        return 512, 4, RESIDENT
    if block <= 4096:
        return block, 4, 1  # the whole row in registers
    return block, 8, 1  # K = 10240: the whole row in registers (not measured against the resident kernel)


def quantize_activation_triton(x: torch.Tensor, k_padded: int, per_token: bool = True,
                               apply_swiglu: bool = False, row_scale: torch.Tensor | None = None,
                               col_scale: torch.Tensor | None = None, block_k: int | None = None,
                               num_warps: int | None = None, hw_cast: bool | None = None,
                               stages: int | None = None,
                               launch: LaunchConfig = DEFAULT_LAUNCH) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused Triton activation quantization; same contract as `primitives.quantize_activation`.

    x: [M, K] (or [M, 2K] with apply_swiglu), unit stride in the last dim, bf16/fp16/fp32, on CUDA (or on
    the CPU when TRITON_INTERPRET=1). Returns (e4m3 [M, k_padded], float32 [M, 1] per token or [1, 1]).
    row_scale [M, 1] or [1, 1] and col_scale [width] (float32, both or neither): x holds raw FP8 GEMM sums
    and is dequantized in the kernel (x * row_scale * col_scale) before anything else.
    block_k / num_warps / stages / hw_cast override `launch` (block_k < padded width: the two-pass kernel, or with
    stages=RESIDENT the row in registers as chunks).
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
    dequant = row_scale is not None
    if dequant != (col_scale is not None):
        raise ValueError("row_scale and col_scale come together (dequantization of raw GEMM sums)")
    if dequant and (col_scale.numel() < width or row_scale.shape[0] not in (1, m)):
        raise ValueError(f"scales do not fit x {tuple(x.shape)}: row_scale {tuple(row_scale.shape)}, "
                         f"col_scale {tuple(col_scale.shape)}")
    q = torch.empty((m, k_padded), dtype=FP8_DTYPE, device=x.device)
    default_block, default_warps, default_stages = launch.choose(k, k_padded, apply_swiglu)
    block, warps = block_k or default_block, num_warps or default_warps
    single = block >= k_padded
    stages = default_stages if stages is None else stages
    chunks = -(-k_padded // block)
    resident = not single and stages == RESIDENT
    if resident and chunks > MAX_RESIDENT_CHUNKS:
        raise ValueError(f"a resident launch holds at most {MAX_RESIDENT_CHUNKS} chunks; rows of {k_padded} values "
                         f"need {chunks} of block_k={block} (take a larger block_k)")
    vec = 16 // x.element_size()
    aligned = x.stride(0) % vec == 0 and x.data_ptr() % 16 == 0 and (not apply_swiglu or k % vec == 0)
    rs = row_scale if dequant else x  # placeholders are never read when DEQUANT is off
    cs = col_scale if dequant else x
    rs_stride = (row_scale.stride(0) if row_scale.shape[0] == m and m > 1 else 0) if dequant else 0
    hw_cast = (launch.hw_cast_on_cuda and x.is_cuda) if hw_cast is None else hw_cast
    kernel = _quantize_rows_resident_kernel if resident else _quantize_rows_kernel
    common = dict(BLOCK_K=block, SWIGLU=apply_swiglu, DEQUANT=dequant, HW_CAST=hw_cast, X_ALIGN=vec if aligned else 1,
                  num_warps=warps)
    if resident:
        common["NC"] = chunks
    else:
        common.update(SINGLE_PASS=single, STAGES=max(stages, 1))
    grid = (m,)
    q_bits = q.view(torch.uint8)
    if m == 0:
        return q, torch.empty((0, 1) if per_token else (1, 1), dtype=torch.float32, device=x.device)
    if per_token:
        scale = torch.empty((m, 1), dtype=torch.float32, device=x.device)
        kernel[grid](x, q_bits, scale, scale, rs, cs, k, k_padded, x.stride(0), q.stride(0), rs_stride,
                     MODE=_MODE_PER_TOKEN, **common)
        return q, scale
    # Per-tensor: a first pass for the row absmax values, then one scale for every row.
    row_amax = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    kernel[grid](x, q_bits, row_amax, row_amax, rs, cs, k, k_padded, x.stride(0), q.stride(0), rs_stride,
                 MODE=_MODE_ROW_AMAX, **common)
    scale = (row_amax.amax().clamp_min(AMAX_FLOOR) / E4M3_MAX).reshape(1, 1)
    kernel[grid](x, q_bits, scale, scale, rs, cs, k, k_padded, x.stride(0), q.stride(0), rs_stride,
                 MODE=_MODE_GIVEN_SCALE, **common)
    return q, scale


# torch.compile sees the kernel as one opaque op with a shape function: no graph break, and with dynamic
# shapes no recompilation per token count. Launch settings travel as plain ints (an op takes no dataclass).
@torch.library.custom_op("omnigen2_fp8::quantize_activation", mutates_args=())
def quantize_activation_op(x: torch.Tensor, k_padded: int, per_token: bool, apply_swiglu: bool,
                           row_scale: torch.Tensor | None = None, col_scale: torch.Tensor | None = None,
                           block_k: int | None = None, num_warps: int | None = None, stages: int | None = None,
                           hw_cast: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    return quantize_activation_triton(x, k_padded, per_token, apply_swiglu, row_scale, col_scale, block_k=block_k,
                                      num_warps=num_warps, hw_cast=hw_cast, stages=stages)


@quantize_activation_op.register_fake
def _(x, k_padded, per_token, apply_swiglu, row_scale=None, col_scale=None, block_k=None, num_warps=None,
      stages=None, hw_cast=None):
    m = x.shape[0]
    return (x.new_empty((m, k_padded), dtype=FP8_DTYPE),
            x.new_empty((m, 1) if per_token else (1, 1), dtype=torch.float32))
