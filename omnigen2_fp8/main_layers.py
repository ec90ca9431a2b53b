"""The main stack of joint blocks as one callable unit: what a step cache (`caching.py`) may run, skip or forecast.

`OmniGen2Transformer.forward` binds its joint blocks to one call's mask, RoPE tables and silu(temb) in a
`MainStack` and runs it, or hands it to the model's `main_layers_strategy` when a step cache is installed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class MainStack:
    """The main joint blocks bound to one call's mask [N, 1, 1, L] or None, cos/sin [N, L, head_dim/2] and
    temb_act = silu(temb) [N, temb_dim]."""

    blocks: nn.ModuleList
    mask: torch.Tensor | None
    cos: torch.Tensor
    sin: torch.Tensor
    temb_act: torch.Tensor

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """Run every block: [N, L, D] -> [N, L, D]."""
        for block in self.blocks:
            hidden = block(hidden, self.mask, self.cos, self.sin, self.temb_act)
        return hidden

    def replayed(self, graphs, hidden: torch.Tensor) -> torch.Tensor:
        """`self(hidden)` through `graphs` (a `cuda_graphs.GraphedCalls`): one CUDA graph per input signature,
        replayed with this call's hidden rows, mask, RoPE tables and temb_act copied into its buffers."""
        tensors = [hidden, self.cos, self.sin, self.temb_act] + ([self.mask] if self.mask is not None else [])

        def run(hidden, cos, sin, temb_act, mask=None):
            return MainStack(self.blocks, mask, cos, sin, temb_act)(hidden)

        return graphs("main stack", run, tensors, owner=self.blocks)

    def attention_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the first block's attention reads: RMSNorm(hidden) * (1 + scale_msa) of its norm1, [N, L, D]."""
        norm1 = self.blocks[0].norm1
        scale_msa = norm1.linear(self.temb_act).unsqueeze(1).chunk(4, dim=-1)[0]
        return norm1.norm(hidden) * (1 + scale_msa)
