"""Attention dispatch: one function over torch's scaled_dot_product_attention for every call site.

Unmasked calls (batch 1, equal-length sequences) keep the flash / cuDNN kernels and their native grouped-query
support; masked calls (ragged batches) expand the key/value heads first, because the masked kernels do not take
grouped heads and would otherwise fall back to the slow math path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def key_padding_mask(lengths: list[int], max_len: int, device: torch.device) -> torch.Tensor | None:
    """[B, 1, 1, max_len] bool mask (True = attend) for right-padded sequences, or None when no sample is padded."""
    if all(n == max_len for n in lengths):
        return None
    positions = torch.arange(max_len, device=device)
    valid = positions.unsqueeze(0) < torch.tensor(lengths, device=device).unsqueeze(1)
    return valid[:, None, None, :]


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Non-causal attention. q [B, L, Hq, D], k/v [B, L, Hkv, D]; query head j uses kv head j // (Hq/Hkv).

    Returns [B, L, Hq*D]. `mask` is [B, 1, 1, L] bool (True = real key) or None.
    """
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    groups = q.shape[1] // k.shape[1]
    if mask is None:
        out = F.scaled_dot_product_attention(q, k, v, enable_gqa=groups > 1)
    else:
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).flatten(2)


class GroupedSdpa(nn.Module):
    """The attention core of a transformer block as a module (no parameters), so that a precision recipe can swap
    it (omnigen2_fp8.fp8.attention.Fp8Sdpa) the way FP8 swaps linears. forward = `grouped_attention`."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return grouped_attention(q, k, v, mask)
