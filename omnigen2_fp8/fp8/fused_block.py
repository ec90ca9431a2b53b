"""The FP8 transformer block with fused kernels between its GEMMs (installed by quantize_fp8 where it applies).

Per block pass, unfused (transformer.TransformerBlock.forward_unfused) vs fused (`fused_block_forward`):

    RMSNorm -> * (1 + scale) -> quantize           modulated_rmsnorm_quant: one kernel, e4m3 + scales out
    to_qkv GEMM -> slice/copy -> split              to_qkv GEMM; q, k, v read through strides of its padded output
    q/k RMSNorm -> RoPE (~8 kernels)                qk_norm_rope: one kernel (e4m3 for FP8 attention)
    attention -> to_out (quantize + GEMM)           unchanged
    slice -> RMSNorm -> * tanh(gate) -> + h         gated_residual_rmsnorm_quant: one kernel that also writes
    -> RMSNorm -> * (1 + scale) -> quantize          the feed-forward's e4m3 input
    feed-forward (gate/up GEMM, SwiGLU + quantize, down GEMM)   unchanged
    slice -> RMSNorm -> * tanh(gate) -> + h         gated_residual_rmsnorm: one kernel

Which implementation runs is the KernelPlan's choice (its `fused_block` flag, read from the block's to_qkv layer;
Triton kernels or their torch references, fp8/fused_reference.py); a plan without the flag runs the unfused block.
The math is the block's, in float32 between the GEMMs: BF16 roundings between the ops disappear, so the fused
block is not bit-equal to the unfused one (tests bound the difference), only closer to the exact math.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from .attention import fp8_attention_cores
from .config import ActivationGranularity
from .linear import Fp8Linear, Fp8SwiGLUFeedForward


def fused_block_forward(block: nn.Module, x: torch.Tensor, mask: torch.Tensor | None, cos: torch.Tensor,
                        sin: torch.Tensor, temb_act: torch.Tensor | None) -> torch.Tensor:
    """TransformerBlock.forward with fused kernels: x [N, L, D] -> [N, L, D] (same arguments as the block's)."""
    plan = block.attn.to_qkv.kernel_plan()
    if not plan.fused_block:
        return block.forward_unfused(x, mask, cos, sin, temb_act)
    n, seq, d = x.shape
    if block.modulation:
        # [N, 4D] -> four [N, D] views; the gates' tanh is taken once per sample here, in float32.
        scale_msa, gate_msa, scale_mlp, gate_mlp = block.norm1.linear(temb_act).chunk(4, dim=-1)
        gate_msa, gate_mlp = gate_msa.float().tanh(), gate_mlp.float().tanh()
        norm1 = block.norm1.norm
    else:
        scale_msa = gate_msa = scale_mlp = gate_mlp = None
        norm1 = block.norm1
    ff = block.feed_forward
    xq, x_scale = plan.modulated_rmsnorm_quant(x, norm1.weight, scale_msa, norm1.eps, block.attn.to_qkv.in_padded)
    attn_out = _attention(block.attn, plan, xq, x_scale, (n, seq), mask, cos, sin, x.dtype)[..., :d]
    h, hq, h_scale = plan.gated_residual_rmsnorm_quant(x, attn_out, gate_msa, block.norm2.weight, block.norm2.eps,
                                                       block.ffn_norm1.weight, scale_mlp, block.ffn_norm1.eps,
                                                       ff.linear_13.in_padded)
    ffn_out = ff.forward_quantized(hq, h_scale, x.dtype, keep_padding=True).view(n, seq, -1)[..., :d]
    return plan.gated_residual_rmsnorm(h, ffn_out, gate_mlp, block.ffn_norm2.weight, block.ffn_norm2.eps)


def _attention(attn: nn.Module, plan, xq: torch.Tensor, x_scale: torch.Tensor, lead: tuple[int, int],
               mask: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Attention from the quantized input rows: -> to_out's output [N, L, D], or its padded [N, L, Dp] (the caller
    reads the first D columns)."""
    hd, kv = attn.heads * attn.head_dim, attn.kv_heads * attn.head_dim
    qkv = attn.to_qkv.forward_quantized(xq, x_scale, dtype, keep_padding=True).view(*lead, -1)
    q = qkv[..., :hd].unflatten(-1, (attn.heads, attn.head_dim))
    k = qkv[..., hd: hd + kv].unflatten(-1, (attn.kv_heads, attn.head_dim))
    v = qkv[..., hd + kv: hd + 2 * kv].unflatten(-1, (attn.kv_heads, attn.head_dim))
    norms = (attn.norm_q.weight, attn.norm_k.weight, cos, sin, attn.norm_q.eps, attn.norm_k.eps)
    sdpa, to_out = attn.sdpa, attn.to_out[0]
    if getattr(sdpa, "is_fp8_attention", False) and mask is None and sdpa.fp8_now:
        # FP8 attention: the kernel writes q and k as e4m3 with the core's static scales and padded head dim.
        q8, k8 = plan.qk_norm_rope(q, k, *norms, sdpa.q_descale, sdpa.k_descale, sdpa.head_dim_padded)
        return sdpa.project_quantized(q8, k8, v, to_out, dtype).view(*lead, -1)
    q, k = plan.qk_norm_rope(q, k, *norms)
    out = sdpa(q, k, v, mask)
    oq, o_scale = to_out.quantize_input(out.reshape(-1, hd))
    return to_out.forward_quantized(oq, o_scale, dtype, keep_padding=True).view(*lead, -1)


def fusable(block: nn.Module) -> str | None:
    """None when `block` (a TransformerBlock) can run `fused_block_forward`; otherwise why not."""
    attn, ff = block.attn, block.feed_forward
    to_qkv, to_out = attn.to_qkv, attn.to_out[0]
    if not isinstance(to_qkv, Fp8Linear) or not isinstance(to_out, Fp8Linear):
        return "its q/k/v projections are not one fused FP8 layer, or its output projection is not FP8"
    if not isinstance(ff, Fp8SwiGLUFeedForward):
        return "its feed-forward is not FP8 with the SwiGLU folded"
    layers = (to_qkv, to_out, ff.linear_13, ff.linear_2)
    if any(layer.bias is not None for layer in layers):
        return "a projection has a bias (OmniGen2's have none)"
    if any(layer.activation_granularity != ActivationGranularity.PER_TOKEN for layer in (to_qkv, ff.linear_13)):
        return "the fused norm kernels write per-token activation scales; this policy asks per tensor"
    return None


def install_fused_blocks(model: nn.Module) -> tuple[list[str], dict[str, str]]:
    """Install `fused_block_forward` on every block that can run it. Returns (installed block names,
    {name: reason} for blocks left unfused). Whether the kernels run is still each call's plan's choice."""
    installed, skipped = [], {}
    for name, module in model.named_modules():
        if not hasattr(module, "forward_unfused"):
            continue
        reason = fusable(module)
        if reason is None:
            module.fused_forward = fused_block_forward
            installed.append(name)
        else:
            skipped[name] = reason
    return installed, skipped


@contextlib.contextmanager
def unfused_blocks(model: nn.Module) -> Iterator[None]:
    """Run every block of `model` unfused inside the context, whatever its plans, and every FP8 attention core
    through its forward (dequantized output, then the projection): the fused path and the direct projection call
    the attention core's and the layers' entry points directly, so forward hooks on those modules (per-layer error
    studies) fire only on this path."""
    blocks = [m for m in model.modules() if hasattr(m, "forward_unfused")]
    cores = list(fp8_attention_cores(model).values())
    saved = [block.fused_forward for block in blocks]
    saved_cores = [core.direct_projection for core in cores]
    for block in blocks:
        block.fused_forward = None
    for core in cores:
        core.direct_projection = False
    try:
        yield
    finally:
        for block, fused in zip(blocks, saved):
            block.fused_forward = fused
        for core, direct in zip(cores, saved_cores):
            core.direct_projection = direct
