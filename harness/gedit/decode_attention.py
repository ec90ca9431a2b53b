"""Bitwise reproducible attention for the judge's one-token decode steps, at the cost of two batched GEMMs.

On an H200 (torch 2.11, transformers 5.17) the kernel SDPA picks for a one-token decode step gave other greedy tokens
when the same batch was decoded again, even in the same process, while the prefill logits stayed bitwise equal
(results/judge_determinism_h200.json). SDPA's math backend is reproducible but cost 1.6x the generation time: it
repeats the key/value heads of the whole cache for grouped-query attention and upcasts the cache to float32 on every
step. A decode step needs neither: the query heads that share a key/value head are one small GEMM against that head's
cache, so a step is two batched cuBLAS GEMMs (same shapes, same algorithm, no atomics: the same bits every time) and a
float32 softmax, reading the cache once in bf16. Measured on H200s (results/judge_reproducible_decode_h200.json): 128
of 128 answers kept their token ids in every repeat and on a second GPU, and the judge ran 2.15x the samples/s of
SDPA's own decode path at batch 256, which repeats the key/value heads of a padded batch's cache on every step.

Installed by name through transformers' attention interface on the text decoder's config only: the vision tower and
every prefill (more than one query token) keep transformers' SDPA path unchanged.
"""
from __future__ import annotations

import torch

ATTENTION_NAME = "omnigen2-reproducible-decode"
_HAS_FLOAT_OUT_BMM = hasattr(torch.ops.aten.bmm, "dtype")  # bf16 x bf16 -> float32 product (torch >= 2.8, CUDA)


def grouped_decode_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, scaling: float) -> torch.Tensor:
    """Attention of one new token per sequence. query [B, Hq, 1, D], key/value [B, Hkv, L, D] (query head h uses
    key/value head h // (Hq / Hkv), as transformers' repeat_kv orders them); attention_mask None, bool [B, 1, 1, L]
    (True = attend) or additive float [B, 1, 1, L]. Returns [B, 1, Hq, D] in value's dtype, as transformers'
    attention functions do. Scores and softmax in float32; the probabilities are rounded to value's dtype for the
    second GEMM, as flash kernels do."""
    batch, q_heads, q_len, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    if q_len != 1 or q_heads % kv_heads:
        raise ValueError(f"expected one query token and query heads a multiple of key/value heads; got query "
                         f"{tuple(query.shape)}, key {tuple(key.shape)}")
    groups = q_heads // kv_heads
    q = query.reshape(batch * kv_heads, groups, dim)
    k = key.reshape(batch * kv_heads, length, dim)
    accumulate = torch.promote_types(query.dtype, torch.float32)
    if query.is_cuda and _HAS_FLOAT_OUT_BMM and query.dtype in (torch.bfloat16, torch.float16):
        scores = torch.bmm(q, k.transpose(1, 2), out_dtype=torch.float32)
    else:
        scores = torch.bmm(q.to(accumulate), k.to(accumulate).transpose(1, 2))
    scores = (scores * scaling).view(batch, kv_heads, groups, length)
    if attention_mask is not None:
        mask = attention_mask[..., -1:, :]  # [B, 1, 1, L]: the new token's row
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.to(scores.dtype)
    probs = torch.softmax(scores, dim=-1).to(value.dtype).view(batch * kv_heads, groups, length)
    out = torch.bmm(probs, value.reshape(batch * kv_heads, length, dim))
    return out.view(batch, q_heads, 1, dim).transpose(1, 2)


def reproducible_decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                                  scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers' attention-function signature: one-token steps through `grouped_decode_attention`, everything
    else (prefill) through transformers' own SDPA function with the same arguments."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.shape[2] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    return grouped_decode_attention(query, key, value, attention_mask, scale), None


def register() -> None:
    """Make ATTENTION_NAME known to transformers: the attention function, and SDPA's mask format for it (transformers
    >= 4.53 builds masks per attention name; older versions build eager masks for unknown names, which
    `grouped_decode_attention` takes too)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, reproducible_decode_attention)
    try:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    except ImportError:
        return
    AttentionMaskInterface.register(ATTENTION_NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def set_decode_attention(model, reproducible: bool) -> int:
    """Give the text decoder(s) of `model` the reproducible decode attention, or their attention of before; returns
    how many decoder configs were changed. The decoder is Qwen2_5_VLTextModel since transformers 4.52; before,
    Qwen2_5_VLModel was the decoder itself. Its layers share its config object, so its name reaches every layer."""
    names = {type(m).__name__ for m in model.modules()}
    decoder_class = "Qwen2_5_VLTextModel" if "Qwen2_5_VLTextModel" in names else "Qwen2_5_VLModel"
    if reproducible:
        register()
    changed = 0
    for module in model.modules():
        if type(module).__name__ != decoder_class:
            continue
        config = module.config
        current = config._attn_implementation
        if reproducible and current != ATTENTION_NAME:
            module._attention_before_decode = current
            config._attn_implementation = ATTENTION_NAME
            changed += 1
        elif not reproducible and current == ATTENTION_NAME:
            config._attn_implementation = getattr(module, "_attention_before_decode", "sdpa")
            changed += 1
    return changed
