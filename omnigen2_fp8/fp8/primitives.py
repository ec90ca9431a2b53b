"""Pure tensor functions for FP8 (e4m3fn): scales, quantize / dequantize, padding, and an exact emulated GEMM.

Conventions: a weight W is [N, K] (nn.Linear layout), an activation x is [M, K]; scales are float32 and
dequantized = fp8_value * scale. Padding appends zeros to K and N up to a multiple of 16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

FP8_DTYPE = torch.float8_e4m3fn
E4M3_MAX = 448.0
# Absmax floor: an all-zero row gets a tiny positive scale instead of 0 (no division by zero, quantizes to 0).
AMAX_FLOOR = 1e-12


def round_up(n: int, multiple: int) -> int:
    """Smallest multiple of `multiple` that is >= n."""
    return (n + multiple - 1) // multiple * multiple


def pad_2d(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Zero-pad a [R, C] tensor to [rows, cols] (returns `t` itself when nothing to pad)."""
    r, c = t.shape
    if (r, c) == (rows, cols):
        return t
    if rows < r or cols < c:
        raise ValueError(f"cannot pad a {tuple(t.shape)} tensor down to {(rows, cols)}")
    return F.pad(t, (0, cols - c, 0, rows - r))


def scale_from_amax(amax: torch.Tensor) -> torch.Tensor:
    """float32 scale such that amax maps to the largest e4m3 value (448)."""
    return amax.float().clamp_min(AMAX_FLOOR) / E4M3_MAX


def cast_to_e4m3(x_over_scale: torch.Tensor) -> torch.Tensor:
    """Saturating round-to-nearest-even cast (torch's plain cast turns out-of-range values into NaN)."""
    return x_over_scale.clamp(-E4M3_MAX, E4M3_MAX).to(FP8_DTYPE)


def weight_scales(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """Scales of a [N, K] weight: float32 [N] (one per output channel), or [N] all equal (per tensor)."""
    amax = w.detach().abs().amax(dim=1) if per_channel else w.detach().abs().amax().expand(w.shape[0])
    return scale_from_amax(amax).contiguous()


def quantize_weight(w: torch.Tensor, per_channel: bool, pad_multiple: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float weight -> (e4m3 [Np, Kp] zero-padded, float32 scales [Np]); padded rows get scale 1.

    Np, Kp = N, K rounded up to `pad_multiple`. The quantization is done in float32 one weight at a time.
    """
    n, k = w.shape
    n_pad, k_pad = round_up(n, pad_multiple), round_up(k, pad_multiple)
    scale = weight_scales(w, per_channel)
    q = cast_to_e4m3(w.detach().float() / scale.unsqueeze(1))
    q = pad_2d(q.view(torch.uint8), n_pad, k_pad).view(FP8_DTYPE)  # pad in uint8: F.pad has no fp8 kernel
    scale = torch.cat([scale, scale.new_ones(n_pad - n)]) if n_pad > n else scale
    return q.contiguous(), scale


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up in float32, for [.., 2F] = [gate | up] (the order of feed_forward.linear_13)."""
    gate, up = gate_up.float().chunk(2, dim=-1)
    return F.silu(gate) * up


def quantize_activation(x: torch.Tensor, k_padded: int, per_token: bool = True, apply_swiglu: bool = False,
                        row_scale: torch.Tensor | None = None,
                        col_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference (pure torch) dynamic activation quantization; the fused Triton kernel must match it.

    x: [M, K] (or [M, 2K] = [gate | up] with apply_swiglu, which first computes silu(gate) * up in float32).
    row_scale [M, 1] / [1, 1] and col_scale [>= width] (float32): x holds raw FP8 GEMM sums, dequantized first.
    Returns (e4m3 [M, k_padded] with zero columns K..k_padded, float32 scales [M, 1] per token or [1, 1]).
    """
    xf = x.float()
    if row_scale is not None:
        xf = xf * row_scale.float() * col_scale.float()[: x.shape[1]]
    xf = swiglu(xf) if apply_swiglu else xf
    amax = xf.abs().amax(dim=1, keepdim=True) if per_token else xf.abs().amax().reshape(1, 1)
    scale = scale_from_amax(amax)
    q = cast_to_e4m3(xf / scale)
    k = q.shape[1]
    if k_padded > k:
        q = F.pad(q.view(torch.uint8), (0, k_padded - k)).view(FP8_DTYPE)
    return q.contiguous(), scale


def emulated_scaled_mm(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
                       out_dtype: torch.dtype, compute_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """What torch._scaled_mm computes, emulated: (xq @ wq.T) * x_scale * w_scale, cast to out_dtype.

    xq [M, K] e4m3, x_scale [M, 1] or [1, 1]; wq [N, K] e4m3, w_scale [N] float32. In float64 every product of
    two e4m3 values and every partial sum over K <= 2^14 terms is exact, so the result does not depend on the
    summation order, and zero padding of K provably changes nothing.
    """
    acc = xq.to(compute_dtype) @ wq.to(compute_dtype).t()
    return (acc * x_scale.to(compute_dtype) * w_scale.to(compute_dtype).reshape(1, -1)).to(out_dtype)
