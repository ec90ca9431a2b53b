"""How far FP8 attention moves each block's attention output: a probe against BF16 attention on the same inputs.

    with attention_error_probe(model) as probe:
        model(...)                       # or a whole pipeline call; compiled blocks must run eagerly
    probe.summary()                      # {"per_layer": {name: mean rel. L2}, "mean": ..., "max": ..., ...}

Inside the block every FP8 attention core (fp8/attention.py `Fp8Sdpa`) also runs BF16 attention
(`omnigen2_fp8.attention.grouped_attention`) on the very q, k, v it received, and the relative L2 error of its own
output against that is recorded per call. This isolates the attention kernel's error from the FP8 linears' (the
edit-level effect is the fidelity of whole edits). The probe runs the blocks unfused and the cores through their
forward (`fused_block.unfused_blocks`), because the fused path and the direct FP8 output projection bypass the
module call the hook watches: inside the probe the attention output reaches the FP8 projection dequantized and
requantized per token, not as the e4m3 values cuDNN wrote, so the model's output moves slightly (the attention
errors recorded are the same). Steps the config keeps out of FP8 attention (`attention_exclude_steps`) run it inside
the probe too: it measures the kernel, on every step it sees.
"""
from __future__ import annotations

import contextlib
import statistics
from typing import Iterator

import torch
from torch import nn

from ..attention import grouped_attention
from .attention import fp8_attention_cores
from .fused_block import unfused_blocks


class AttentionErrorProbe:
    """Relative L2 errors of every FP8 attention call seen, per attention module name."""

    def __init__(self):
        self.calls: dict[str, list[float]] = {}

    def record(self, name: str):
        def hook(module: nn.Module, args, output: torch.Tensor) -> None:
            if args[3] is not None:  # a masked ragged batch: the core ran BF16 attention itself
                return
            exact = grouped_attention(*args).float()
            self.calls.setdefault(name, []).append(float((output.float() - exact).norm() / exact.norm()))
        return hook

    def summary(self, worst: int = 3) -> dict | None:
        """Mean error per layer, their mean and max, the `worst` layers; None when no FP8 attention call ran."""
        if not self.calls:
            return None
        per_layer = {name: statistics.fmean(errors) for name, errors in self.calls.items()}
        ranked = sorted(per_layer, key=per_layer.get, reverse=True)
        return {"metric": "relative L2 of the FP8 attention output against BF16 attention on the same q, k, v",
                "layers": len(per_layer), "calls": sum(len(e) for e in self.calls.values()),
                "mean": statistics.fmean(per_layer.values()), "max": per_layer[ranked[0]],
                "min": per_layer[ranked[-1]], "worst_layers": {n: per_layer[n] for n in ranked[:worst]},
                "per_layer": per_layer}


def has_fp8_attention(model: nn.Module) -> bool:
    return bool(fp8_attention_cores(model))


@contextlib.contextmanager
def attention_error_probe(model: nn.Module) -> Iterator[AttentionErrorProbe]:
    """Record every FP8 attention call of `model` inside the block (see the module docstring)."""
    probe = AttentionErrorProbe()
    cores = fp8_attention_cores(model).items()
    steps = getattr(model, "fp8_attention_steps", None)
    with unfused_blocks(model), steps.every_step() if steps is not None else contextlib.nullcontext():
        hooks = [core.register_forward_hook(probe.record(name.removesuffix(".sdpa"))) for name, core in cores]
        try:
            yield probe
        finally:
            for hook in hooks:
                hook.remove()
