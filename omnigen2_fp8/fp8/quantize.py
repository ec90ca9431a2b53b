"""quantize_fp8(model, config): swap the targeted nn.Linear layers for Fp8Linear in place, report every decision.

Order of work: fuse q/k/v and gate/up (when the config asks and the model can), then for every nn.Linear ask the
config's policy, quantize (pad once, free the BF16 weight) or keep it, and finally fold the SwiGLU into the down
projection of feed-forwards whose gate/up and down are both FP8, and install the fused block kernels
(fused_block.py) in every block whose layers allow them.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Callable

from torch import nn

from .attention import enable_fp8_attention
from .config import Fp8Config, covers
from .dispatch import resolve_kernel
from .fused_block import install_fused_blocks
from .linear import Fp8Linear, Fp8SwiGLUFeedForward


class Fp8QuantizationError(RuntimeError):
    """The model cannot be quantized as asked (already FP8, weights not loaded, ...)."""


@dataclass
class LayerDecision:
    """What happened to one candidate linear. Shapes: in = K, out = N; padded = what the FP8 GEMM runs on;
    kernel: the concrete kernel an FP8 layer resolved to at quantization (None for a kept layer)."""

    name: str
    in_features: int
    out_features: int
    in_padded: int
    out_padded: int
    action: str  # "fp8" or "bf16"
    reason: str
    kernel: str | None = None


@dataclass
class Fp8Report:
    """The per-layer outcome of quantize_fp8, plus what was fused."""

    config: Fp8Config
    layers: list[LayerDecision] = field(default_factory=list)
    fused_projections: bool = False
    swiglu_folded: list[str] = field(default_factory=list)
    fp8_attention: list[str] = field(default_factory=list)
    fused_blocks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def quantized(self) -> list[LayerDecision]:
        return [d for d in self.layers if d.action == "fp8"]

    @property
    def kept(self) -> list[LayerDecision]:
        return [d for d in self.layers if d.action != "fp8"]

    @property
    def counts_by_kernel(self) -> dict[str, int]:
        """Concrete kernel -> number of FP8 layers running it."""
        counts: dict[str, int] = {}
        for d in self.quantized:
            counts[str(d.kernel)] = counts.get(str(d.kernel), 0) + 1
        return counts

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "fused_projections": self.fused_projections,
                "swiglu_folded": self.swiglu_folded, "fp8_attention": self.fp8_attention,
                "fused_blocks": self.fused_blocks, "notes": self.notes,
                "num_quantized": len(self.quantized), "num_kept": len(self.kept),
                "counts_by_kernel": self.counts_by_kernel,
                "layers": [asdict(d) for d in self.layers]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """One line per candidate linear: name, K x N, padded K x N, action, reason."""
        width = max((len(d.name) for d in self.layers), default=10)
        lines = [f"{'layer':<{width}}  {'K x N':>13}  {'padded':>13}  action  reason"]
        for d in self.layers:
            padded = f"{d.in_padded}x{d.out_padded}" if (d.in_padded, d.out_padded) != (d.in_features,
                                                                                         d.out_features) else "-"
            lines.append(f"{d.name:<{width}}  {d.in_features:>6}x{d.out_features:<6}  {padded:>13}  "
                         f"{d.action:<6}  {d.reason}")
        return "\n".join(lines)

    def __str__(self) -> str:
        head = (f"FP8: {len(self.quantized)} linears quantized, {len(self.kept)} kept in high precision; "
                f"projections fused: {self.fused_projections}; SwiGLU folded into {len(self.swiglu_folded)} "
                f"down projections; FP8 attention in {len(self.fp8_attention)} blocks; fused block kernels in "
                f"{len(self.fused_blocks)} blocks (used when the kernel plan enables them); "
                f"kernels: {self.counts_by_kernel}")
        return "\n".join([head, *self.notes, self.table()])


def quantize_fp8(model: nn.Module, config: Fp8Config | None = None) -> Fp8Report:
    """Quantize `model` in place to FP8 by `config` (default Fp8Config()); returns the per-layer report.

    Each targeted nn.Linear [N, K] becomes an Fp8Linear holding only an e4m3 [Np, Kp] weight (zero-padded to
    config.pad_multiple) and float32 scales; the high-precision weight is released as soon as it is converted.
    On a CUDA GPU without FP8 tensor cores this raises Fp8UnsupportedDeviceError (before changing anything)
    unless config.kernel is 'torch-reference'.
    """
    config = config or Fp8Config()
    if not isinstance(config, Fp8Config):
        raise TypeError(f"config must be an Fp8Config, got {type(config).__name__}")
    if any(isinstance(m, Fp8Linear) for m in model.modules()):
        raise Fp8QuantizationError("this model already holds FP8 layers; quantize a freshly loaded BF16 model")
    config = config.for_model(model)
    report = Fp8Report(config)
    _check_device_first(model, config)
    report.fused_projections = _fuse(model, config, report)
    for name, m in model.named_modules():  # refuse misaligned layers (misaligned="error") before swapping any
        if isinstance(m, nn.Linear) and config.decide(name)[0]:
            config.layer_layout(m.in_features, m.out_features, name)
    swap_linears(model, config, report, lambda name, linear: Fp8Linear.from_linear(linear, config))
    if config.fuse_swiglu:
        report.swiglu_folded = fold_swiglu(model)
    report.fused_blocks = apply_fused_blocks(model, report)
    apply_attention_option(model, config, report)
    model.fp8_config = config
    return report


def apply_fused_blocks(model: nn.Module, report: Fp8Report | None = None) -> list[str]:
    """Install the fused block kernels where the layers allow (they run when a layer's plan has `fused_block`: the
    CUDA default, see dispatch.FUSED_BLOCK_BY_DEFAULT); the report notes the blocks that cannot fuse, and why."""
    installed, skipped = install_fused_blocks(model)
    if report is not None and skipped:
        reasons = sorted(set(skipped.values()))
        report.notes.append(f"note: blocks left unfused ({len(skipped)}), no fused norm/RoPE kernels there: "
                            + "; ".join(reasons))
    return installed


def apply_attention_option(model: nn.Module, config: Fp8Config, report: Fp8Report | None = None) -> None:
    """config.attention == "fp8": swap in the FP8 attention cores (emulated on the CPU, where cuDNN cannot run,
    as the FP8 linears are); a GPU that cannot run them keeps BF16 attention and the report says why."""
    if config.attention != "fp8":
        return
    device = next(model.parameters()).device
    emulate = device.type == "cpu"
    swapped, reason = enable_fp8_attention(model, config.attention_exclude, emulate=emulate, device=device,
                                           exclude_steps=config.attention_exclude_steps)
    if report is not None:
        report.fp8_attention = swapped
        if reason:
            report.notes.append(f"note: FP8 attention asked, BF16 attention kept: {reason}")
        elif emulate:
            report.notes.append("note: FP8 attention is emulated on the CPU (same e4m3 values, no speed-up)")


def _check_device_first(model: nn.Module, config: Fp8Config) -> None:
    """Fail before touching any layer when the model's GPU cannot run the requested FP8 kernel."""
    devices = {p.device for p in model.parameters() if p.device.type == "cuda"}
    for device in devices:
        resolve_kernel(config.kernel, device)
    if any(p.is_meta for p in model.parameters()):
        raise Fp8QuantizationError("the model has weights on the meta device; load its weights before quantize_fp8 "
                                   "(or load a serialized FP8 checkpoint with checkpoints.load_transformer)")


def _fuse(model: nn.Module, config: Fp8Config, report: Fp8Report) -> bool:
    if not config.fuse_projections:
        return False
    if not hasattr(model, "fuse_projections"):
        report.notes.append(f"note: fuse_projections asked, but {type(model).__name__} has no fuse_projections(); "
                            "projections stay separate")
        return False
    model.fuse_projections()
    return True


def swap_linears(model: nn.Module, config: Fp8Config, report: Fp8Report | None,
                 build: Callable[[str, nn.Linear], Fp8Linear]) -> None:
    """Replace every nn.Linear the policy selects by build(name, linear); record each decision in `report`.

    Names are collected first and modules fetched one at a time, so no list keeps replaced BF16 layers alive.
    """
    config = config.for_model(model)
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    high_precision = tuple(getattr(model, "high_precision_modules", ()))
    for name in names:
        linear = model.get_submodule(name)
        quantize, reason = config.decide(name)
        if quantize and any(covers(name, p) for p in high_precision):
            reason += " (listed in the model's high_precision_modules; quantized because the config asks)"
        fp8 = build(name, linear) if quantize else None
        if fp8 is not None:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, fp8)
        if report is not None:
            k, n = linear.in_features, linear.out_features
            kp, np_ = (fp8.in_padded, fp8.out_padded) if fp8 is not None else (k, n)
            kernel = None if fp8 is None else (fp8.resolved_kernel or fp8.kernel).value
            report.layers.append(LayerDecision(name, k, n, kp, np_, "fp8" if fp8 is not None else "bf16", reason,
                                               kernel))
        del linear, fp8


def fold_swiglu(model: nn.Module) -> list[str]:
    """Replace SwiGLU feed-forwards whose linear_13 and linear_2 are both Fp8Linear by Fp8SwiGLUFeedForward (same
    math, one kernel less per block). A feed-forward declares itself with `is_swiglu = True`: it computes
    linear_2(silu(gate) * up) with [gate | up] = linear_13(x) once fused."""
    folded = []
    names = [name for name, m in model.named_modules()
             if getattr(m, "is_swiglu", False) and isinstance(getattr(m, "linear_13", None), Fp8Linear)
             and isinstance(getattr(m, "linear_2", None), Fp8Linear)]
    for name in names:
        ff = model.get_submodule(name)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child,
                Fp8SwiGLUFeedForward(ff.linear_13, ff.linear_2))
        folded.append(name)
    return folded
