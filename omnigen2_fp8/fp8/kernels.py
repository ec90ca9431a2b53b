"""Fused dynamic activation quantization for FP8 GEMMs: one Triton kernel, and the op torch.compile sees.

The kernel reads each BF16 row from memory once and writes the zero-padded e4m3 row plus its float32 scale:
    x [M, K] (or [M, 2K] = [gate | up], then silu(gate) * up is taken first, in float32)
    -> q [M, Kp] e4m3 (columns K..Kp are 0), scale [M, 1] float32, with x ~= q * scale.
Rows up to the block size stay in registers; longer rows are read in chunks twice, the second time from L2.
Optionally x holds raw FP8 GEMM sums and is dequantized first (x * row_scale[m] * col_scale[k]): that lets the
gate/up GEMM run with unit scales (cuBLASLt's faster tensor-wise path) and its scales be applied here, for free.
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
from typing import NamedTuple

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
    def _load_rows_chunk(x_rows, cols, K, row_ok, SWIGLU: tl.constexpr, DEQUANT: tl.constexpr, row_scale,
                         col_scale_ptr, FAST_MATH: tl.constexpr):
        """float32 values [BLOCK_M, BLOCK_K] of the rows at `cols` [1, BLOCK_K] (0 past K or past the last row);
        with SWIGLU, silu(gate) * up of [gate | up]. DEQUANT: the rows hold raw FP8 GEMM sums; multiply by
        row_scale [BLOCK_M, 1] * col_scale[col] first (one load of the column scales serves all BLOCK_M rows).
        FAST_MATH: silu's division is the approximate one (2 ulp) instead of IEEE's, whose ~10 instructions per
        value made the SwiGLU kernel ALU-bound."""
        in_k = cols < K
        ok = row_ok & in_k
        x = tl.load(x_rows + cols, mask=ok, other=0.0).to(tl.float32)
        if DEQUANT:
            x = x * row_scale * tl.load(col_scale_ptr + cols, mask=in_k, other=0.0)
        if SWIGLU:
            up = tl.load(x_rows + K + cols, mask=ok, other=0.0).to(tl.float32)
            if DEQUANT:
                up = up * row_scale * tl.load(col_scale_ptr + K + cols, mask=in_k, other=0.0)
            if FAST_MATH:
                x = tl.fdiv(x, 1.0 + tl.exp(-x), ieee_rounding=False) * up
            else:
                x = x / (1.0 + tl.exp(-x)) * up
        return x

    @triton.jit
    def _quantize_rows_kernel(x_ptr, q_ptr, scale_ptr, given_scale_ptr, row_scale_ptr, col_scale_ptr, M, K, KP,
                              stride_xm, stride_qm, stride_rs, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                              SINGLE_PASS: tl.constexpr, SWIGLU: tl.constexpr, DEQUANT: tl.constexpr,
                              MODE: tl.constexpr, X_ALIGN: tl.constexpr, HW_CAST: tl.constexpr,
                              STAGES: tl.constexpr, FAST_MATH: tl.constexpr):
        """Programs take tiles of BLOCK_M rows, tile pid, pid + programs, ... (a grid of one program per tile, or fewer
        that loop: fewer rows in flight, so a two-pass row is still in L2 when its second pass reads it).
        SINGLE_PASS: the whole padded rows in registers (BLOCK_K >= KP), read once. Otherwise chunks of BLOCK_K: a
        first pass for the absmax, a second (from L2) to quantize and store. FAST_MATH: values are multiplied by the
        row's 448 / absmax instead of divided by its scale (an e4m3 code can then differ by one step from the
        reference's, where a value lies within a float32 ulp of a rounding boundary), and see _load_rows_chunk."""
        for tile in tl.range(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.num_programs(0)):
            rows = tl.arange(0, BLOCK_M)[:, None].to(tl.int64) + tile * BLOCK_M  # int64 offsets: no overflow
            row_ok = rows < M
            # Row starts are 16-byte aligned when the stride allows it; telling Triton lets it vectorize the loads.
            x_rows = x_ptr + rows * tl.multiple_of(stride_xm, X_ALIGN)
            q_rows = q_ptr + rows * stride_qm
            row_scale = tl.load(row_scale_ptr + rows * stride_rs, mask=row_ok, other=1.0) if DEQUANT else 1.0
            if SINGLE_PASS:
                cols = tl.arange(0, BLOCK_K)[None, :]
                x = _load_rows_chunk(x_rows, cols, K, row_ok, SWIGLU, DEQUANT, row_scale, col_scale_ptr,
                                     FAST_MATH)
                amax = tl.max(tl.abs(x), axis=1, keep_dims=True)
            else:
                amax = tl.zeros([BLOCK_M, 1], dtype=tl.float32)
                for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
                    x = _load_rows_chunk(x_rows, k0 + tl.arange(0, BLOCK_K)[None, :], K, row_ok, SWIGLU, DEQUANT,
                                         row_scale, col_scale_ptr, FAST_MATH)
                    amax = tl.maximum(amax, tl.max(tl.abs(x), axis=1, keep_dims=True))
            if MODE == _MODE_ROW_AMAX_C:
                tl.store(scale_ptr + rows, amax, mask=row_ok)
            else:
                if MODE == _MODE_GIVEN_SCALE_C:
                    scale = tl.load(given_scale_ptr)
                else:
                    scale = tl.maximum(amax, _AMAX_FLOOR) / _E4M3_MAX
                    tl.store(scale_ptr + rows, scale, mask=row_ok)
                inverse = 1.0 / scale  # FAST_MATH only: one division per row, multiplications per value
                if SINGLE_PASS:
                    y = x * inverse if FAST_MATH else x / scale
                    code = _encode(tl.clamp(y, -_E4M3_MAX, _E4M3_MAX), HW_CAST)
                    tl.store(q_rows + cols, code, mask=row_ok & (cols < KP))
                else:
                    for k0 in tl.range(0, KP, BLOCK_K, num_stages=STAGES):
                        cols = k0 + tl.arange(0, BLOCK_K)[None, :]
                        x = _load_rows_chunk(x_rows, cols, K, row_ok, SWIGLU, DEQUANT, row_scale, col_scale_ptr,
                                             FAST_MATH)
                        y = x * inverse if FAST_MATH else x / scale
                        code = _encode(tl.clamp(y, -_E4M3_MAX, _E4M3_MAX), HW_CAST)
                        tl.store(q_rows + cols, code, mask=row_ok & (cols < KP))


class Launch(NamedTuple):
    """Launch settings of the quantization kernel: columns per chunk (>= the padded width: one pass, the rows kept in
    registers), warps, software-pipeline stages of the chunk loops, rows per tile (the column scales of a dequantizing
    launch are then loaded once for that many rows) and programs per SM (a looping grid)."""

    block_k: int
    num_warps: int
    stages: int
    block_m: int = 1
    programs_per_sm: int = 0  # 0: one program per tile of rows; n: n programs per SM, each looping over tiles
    fast_math: bool = False  # approximate divisions (the kernel's FAST_MATH): codes within one e4m3 step


@dataclass(frozen=True)
class LaunchConfig:
    """How the fused kernel is launched; the default is the measured heuristic (`default_launch`).

    overrides: ((K, swiglu), (block_k, num_warps, stages[, block_m[, programs_per_sm[, fast_math]]])) pairs, e.g. a benchmark's sweep winners;
    block_k >= the padded width = a single pass. hw_cast_on_cuda: the hardware e4m3 conversion on CUDA (see the
    module docstring); the CPU interpreter always uses the integer encoder.
    """

    overrides: tuple[tuple[tuple[int, bool], tuple[int, ...]], ...] = ()
    hw_cast_on_cuda: bool = True

    @classmethod
    def from_table(cls, table: dict[tuple[int, bool], tuple[int, ...]], hw_cast_on_cuda: bool = True):
        """From {(K, swiglu): (block_k, num_warps, stages[, block_m[, programs_per_sm[, fast_math]]])}."""
        return cls(tuple((tuple(key), tuple(value)) for key, value in sorted(table.items())), hw_cast_on_cuda)

    def choose(self, k: int, k_padded: int, apply_swiglu: bool) -> Launch:
        """The launch for rows of K values (2K read with SwiGLU)."""
        override = dict(self.overrides).get((k, apply_swiglu))
        return Launch(*override) if override else default_launch(k, k_padded, apply_swiglu)


DEFAULT_LAUNCH = LaunchConfig()


def default_launch(k: int, k_padded: int, apply_swiglu: bool) -> Launch:
    """The measured heuristic for rows of K values (2K read with SwiGLU)."""
    # Measured on an H100 at M = 8.5k (results/fp8_layers_h100.json, "quant_kernel_sweep").
    block = triton.next_power_of_2(k_padded)
    if apply_swiglu:
        return Launch(min(block, 2048), 8, 1)  # two passes over 2K-wide chunks; the second reads from L2
    if block <= 4096:
        return Launch(block, 4, 1)  # K = 2520: the whole row in registers (11 % faster than two passes of 512)
    return Launch(block, 8, 1)  # K = 10240: the whole row in registers


def _multiprocessors(device: torch.device) -> int:
    """SMs of a CUDA device (the CPU interpreter: 2, so that a looping grid loops in the tests)."""
    if device.type != "cuda":
        return 2
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNTS:
        _SM_COUNTS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNTS[index]


_SM_COUNTS: dict[int, int] = {}


def quantize_activation_triton(x: torch.Tensor, k_padded: int, per_token: bool = True,
                               apply_swiglu: bool = False, row_scale: torch.Tensor | None = None,
                               col_scale: torch.Tensor | None = None, block_k: int | None = None,
                               num_warps: int | None = None, hw_cast: bool | None = None,
                               stages: int | None = None, block_m: int | None = None,
                               programs_per_sm: int | None = None, fast_math: bool | None = None,
                               launch: LaunchConfig = DEFAULT_LAUNCH) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused Triton activation quantization; same contract as `primitives.quantize_activation`.

    x: [M, K] (or [M, 2K] with apply_swiglu), unit stride in the last dim, bf16/fp16/fp32, on CUDA (or on
    the CPU when TRITON_INTERPRET=1). Returns (e4m3 [M, k_padded], float32 [M, 1] per token or [1, 1]).
    row_scale [M, 1] or [1, 1] and col_scale [width] (float32, both or neither): x holds raw FP8 GEMM sums
    and is dequantized in the kernel (x * row_scale * col_scale) before anything else.
    block_k / num_warps / stages / block_m / programs_per_sm / fast_math / hw_cast override `launch` (block_k <
    padded width selects the two-pass kernel).
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
    chosen = launch.choose(k, k_padded, apply_swiglu)
    block, warps, rows = block_k or chosen.block_k, num_warps or chosen.num_warps, block_m or chosen.block_m
    single = block >= k_padded
    vec = 16 // x.element_size()
    aligned = x.stride(0) % vec == 0 and x.data_ptr() % 16 == 0 and (not apply_swiglu or k % vec == 0)
    rs = row_scale if dequant else x  # placeholders are never read when DEQUANT is off
    cs = col_scale if dequant else x
    rs_stride = (row_scale.stride(0) if row_scale.shape[0] == m and m > 1 else 0) if dequant else 0
    hw_cast = (launch.hw_cast_on_cuda and x.is_cuda) if hw_cast is None else hw_cast
    stages = stages or chosen.stages
    fast = chosen.fast_math if fast_math is None else fast_math
    common = dict(FAST_MATH=bool(fast), BLOCK_M=rows, BLOCK_K=block, SINGLE_PASS=single, SWIGLU=apply_swiglu, DEQUANT=dequant, HW_CAST=hw_cast,
                  STAGES=stages, X_ALIGN=vec if aligned else 1, num_warps=warps)
    tiles = triton.cdiv(m, rows)
    per_sm = chosen.programs_per_sm if programs_per_sm is None else programs_per_sm
    grid = (min(tiles, per_sm * _multiprocessors(x.device)) if per_sm else tiles,)
    q_bits = q.view(torch.uint8)
    if m == 0:
        return q, torch.empty((0, 1) if per_token else (1, 1), dtype=torch.float32, device=x.device)
    if per_token:
        scale = torch.empty((m, 1), dtype=torch.float32, device=x.device)
        _quantize_rows_kernel[grid](x, q_bits, scale, scale, rs, cs, m, k, k_padded, x.stride(0), q.stride(0),
                                    rs_stride, MODE=_MODE_PER_TOKEN, **common)
        return q, scale
    # Per-tensor: a first pass for the row absmax values, then one scale for every row.
    row_amax = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    _quantize_rows_kernel[grid](x, q_bits, row_amax, row_amax, rs, cs, m, k, k_padded, x.stride(0), q.stride(0),
                                rs_stride, MODE=_MODE_ROW_AMAX, **common)
    scale = (row_amax.amax().clamp_min(AMAX_FLOOR) / E4M3_MAX).reshape(1, 1)
    _quantize_rows_kernel[grid](x, q_bits, scale, scale, rs, cs, m, k, k_padded, x.stride(0), q.stride(0),
                                rs_stride, MODE=_MODE_GIVEN_SCALE, **common)
    return q, scale


# torch.compile sees the kernel as one opaque op with a shape function: no graph break, and with dynamic
# shapes no recompilation per token count. Launch settings travel as plain ints (an op takes no dataclass).
@torch.library.custom_op("omnigen2_fp8::quantize_activation", mutates_args=())
def quantize_activation_op(x: torch.Tensor, k_padded: int, per_token: bool, apply_swiglu: bool,
                           row_scale: torch.Tensor | None = None, col_scale: torch.Tensor | None = None,
                           block_k: int | None = None, num_warps: int | None = None, stages: int | None = None,
                           hw_cast: bool | None = None, block_m: int | None = None,
                           programs_per_sm: int | None = None,
                           fast_math: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    return quantize_activation_triton(x, k_padded, per_token, apply_swiglu, row_scale, col_scale, block_k=block_k,
                                      num_warps=num_warps, hw_cast=hw_cast, stages=stages, block_m=block_m,
                                      programs_per_sm=programs_per_sm, fast_math=fast_math)


@quantize_activation_op.register_fake
def _(x, k_padded, per_token, apply_swiglu, row_scale=None, col_scale=None, block_k=None, num_warps=None,
      stages=None, hw_cast=None, block_m=None, programs_per_sm=None, fast_math=None):
    m = x.shape[0]
    return (x.new_empty((m, k_padded), dtype=FP8_DTYPE),
            x.new_empty((m, 1) if per_token else (1, 1), dtype=torch.float32))
