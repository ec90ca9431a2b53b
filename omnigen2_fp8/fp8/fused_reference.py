"""Torch references of the fused block kernels (fp8/fused_kernels.py): the same functions, plain torch ops.

Each one is the math of a piece of `TransformerBlock.forward` computed in float32 from the stored inputs, with one
rounding at the end (to e4m3 + scale, or to the model dtype), where the unfused block rounds to the model dtype
after every op. The Triton kernels must match these (tests/test_fp8_fused_kernels.py states the tolerances), and
`KernelPlan`s whose quantization runs as torch ops run these in the fused block.

Shapes: hidden rows x [N, L, D] (any strides, unit stride in D); per-sample modulation [N, D]; heads
[N, L, H, head_dim]; RoPE tables [N, L, head_dim / 2] float32.
"""
from __future__ import annotations

import torch

from ..rope import apply_rotary
from .attention import quantize_heads_static
from .primitives import quantize_activation


def rms_normalize(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """float32 x * rsqrt(mean(x^2) + eps) * weight over the last dim (RMSNorm without the final cast)."""
    xf = x.float()
    return xf * torch.rsqrt(xf.square().mean(dim=-1, keepdim=True) + eps) * weight.float()


def modulated_rmsnorm_quant(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, eps: float,
                            k_padded: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm(x) * weight * (1 + scale) -> per-token e4m3, the input of the FP8 linear(s) that follow.

    x [N, L, D]; weight [D]; scale [N, D] (the AdaLN scale of each sample) or None (plain RMSNorm).
    Returns (e4m3 [N * L, k_padded], columns D.. zero; float32 [N * L, 1]) as `primitives.quantize_activation`.
    """
    y = rms_normalize(x, weight, eps)
    if scale is not None:
        y = y * (1 + scale.float()).unsqueeze(1)
    return quantize_activation(y.reshape(-1, x.shape[-1]), k_padded, per_token=True)


def gated_residual_rmsnorm(h: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, weight: torch.Tensor,
                           eps: float) -> torch.Tensor:
    """h + gate * RMSNorm(y) * weight, rounded once to h's dtype: a block's residual update.

    h, y [N, L, D] (y may be a strided view of a padded GEMM output); gate [N, D] float32, the branch multiplier
    (tanh of the AdaLN gate), or None for 1 (unmodulated blocks). Returns a new [N, L, D] tensor.
    """
    branch = rms_normalize(y, weight, eps)
    if gate is not None:
        branch = gate.float().unsqueeze(1) * branch
    return (h.float() + branch).to(h.dtype)


def gated_residual_rmsnorm_quant(h: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, weight: torch.Tensor,
                                 eps: float, next_weight: torch.Tensor, next_scale: torch.Tensor | None,
                                 next_eps: float, k_padded: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`gated_residual_rmsnorm`, then `modulated_rmsnorm_quant` of its (rounded) result: the residual update after
    attention and the feed-forward's FP8 input in one pass. Returns (h_new [N, L, D], e4m3 [N * L, k_padded],
    float32 [N * L, 1])."""
    h_new = gated_residual_rmsnorm(h, y, gate, weight, eps)
    return (h_new, *modulated_rmsnorm_quant(h_new, next_weight, next_scale, next_eps, k_padded))


def qk_norm_rope(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                 cos: torch.Tensor, sin: torch.Tensor, q_eps: float, k_eps: float,
                 q_descale: torch.Tensor | None = None, k_descale: torch.Tensor | None = None,
                 head_dim_padded: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head RMSNorm of q [N, L, Hq, hd] and k [N, L, Hkv, hd], then RoPE on adjacent pairs (rope.py's
    `apply_rotary`: the complex form eager, the real one under torch.compile), in float32. Returns q and k in
    their dtype; or, with descales ([1, 1, 1, 1] float32, FP8 attention's static scales), e4m3
    [N, L, H, head_dim_padded] (zero padded) as `attention.quantize_heads_static` writes."""
    def one(x: torch.Tensor, weight: torch.Tensor, eps: float, descale: torch.Tensor | None) -> torch.Tensor:
        # float32 in and out; under torch.compile the real form (complex multiplies would run as eager kernels)
        rotated = apply_rotary(rms_normalize(x, weight, eps), cos, sin)
        if descale is None:
            return rotated.to(x.dtype)
        return quantize_heads_static(rotated, descale, head_dim_padded)

    return one(q, q_weight, q_eps, q_descale), one(k, k_weight, k_eps, k_descale)
