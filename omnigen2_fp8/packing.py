"""Token packing for the DiT: images to patch tokens and back, ragged sequences to right-padded batches."""
from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence


def stack_padded(sequences: list[torch.Tensor]) -> torch.Tensor:
    """[L_i, D] sequences -> right-padded [N, max L_i, D], a new tensor (never a view).

    A copy for a single sequence too (tens of MB, microseconds): the first block of a stack would otherwise get a
    view and the others fresh tensors, and torch.compile guards views apart (one recompile per block kind)."""
    return sequences[0].unsqueeze(0).clone() if len(sequences) == 1 else pad_sequence(sequences, batch_first=True)


def pad_rotary(rotary: list[tuple[torch.Tensor, torch.Tensor]],
                segments: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack each sequence's slice of its sample's cos/sin into right-padded [N, L, head_dim/2] tables."""
    if len(rotary) == 1:
        # Slices that do not start at the table's start are copied (a few hundred KB), and every result is a
        # view at offset 0: torch.compile guards a nonzero storage offset, and whether an input is a view, apart.
        (cos, sin), (start, end) = rotary[0], segments[0]
        cos, sin = cos[start:end], sin[start:end]
        if start:
            cos, sin = cos.clone(), sin.clone()
        return cos.unsqueeze(0), sin.unsqueeze(0)
    cos = pad_sequence([c[s:e] for (c, _), (s, e) in zip(rotary, segments)], batch_first=True)
    sin = pad_sequence([s_[s:e] for (_, s_), (s, e) in zip(rotary, segments)], batch_first=True)
    return cos, sin


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[C, H, W] -> [(H/p)*(W/p), p*p*C], i.e. c (h p1) (w p2) -> (h w) (p1 p2 c)."""
    c, h, w = x.shape
    return x.view(c, h // p, p, w // p, p).permute(1, 3, 2, 4, 0).reshape((h // p) * (w // p), p * p * c)


def unpatchify(tokens: torch.Tensor, grid: tuple[int, int], p: int, channels: int) -> torch.Tensor:
    """[(h*w), p*p*C] -> [C, h*p, w*p], the inverse of `patchify`."""
    h, w = grid
    return tokens.view(h, w, p, p, channels).permute(4, 0, 2, 1, 3).reshape(channels, h * p, w * p)
