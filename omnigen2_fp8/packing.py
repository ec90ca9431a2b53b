"""Token packing for the DiT: images to patch tokens and back, ragged sequences to right-padded batches."""
from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence


def stack_padded(sequences: list[torch.Tensor]) -> torch.Tensor:
    """[L_i, D] sequences -> right-padded [N, max L_i, D] (no copy for a single sequence)."""
    return sequences[0].unsqueeze(0) if len(sequences) == 1 else pad_sequence(sequences, batch_first=True)


def pad_rotary(rotary: list[tuple[torch.Tensor, torch.Tensor]],
                segments: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack each sequence's slice of its sample's cos/sin into right-padded [N, L, head_dim/2] tables."""
    if len(rotary) == 1:
        (cos, sin), (start, end) = rotary[0], segments[0]
        return cos[start:end].unsqueeze(0), sin[start:end].unsqueeze(0)
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
