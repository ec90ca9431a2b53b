"""Precision arms: the shared components, one transformer per arm, and parking transformers on the CPU.

The MLLM, VAE and tokenizer are loaded once (`load_arm_components`: the library's `Components`) and shared by every
arm; each arm loads its own transformer and asks the library for its pipeline by recipe name inside a load memory
phase (`build_arm`). With several arms on one GPU, the transformers not in use are parked on the CPU
(`only_on_device`, `restore_all`).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from harness.core import timing
from harness.profile.options import ProfileOptions
from omnigen2_fp8 import synthetic
from omnigen2_fp8.checkpoints import Components, load_components, load_transformer
from omnigen2_fp8.fp8.config import TENSOR_CORE_MULTIPLE
from omnigen2_fp8.fp8.quantize import Fp8Report
from omnigen2_fp8.modes import ModeChoice
from omnigen2_fp8.pipeline import OmniGen2Pipeline
from omnigen2_fp8.precision import Recipe, parse_recipe
from omnigen2_fp8.profiling import is_linear_layer


def load_arm_components(options: ProfileOptions, device: torch.device, dtype: torch.dtype) -> Components:
    """The MLLM, VAE and tokenizer every arm shares, on `device` (the CPU with --offload): built in memory for
    --synthetic, loaded from the checkpoint folder (or hub id) for --model."""
    home = torch.device("cpu") if options.offload else device
    if options.synthetic:
        return synthetic.build_components(options.synthetic, device, dtype, options.seed, home=home)
    return load_components(options.model, dtype=dtype, device=home)


def build_transformer(options: ProfileOptions, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A fresh BF16 (`dtype`) transformer for one arm, on `device`."""
    if options.synthetic:
        return synthetic.build_transformer(options.synthetic, device, dtype, options.seed)
    return load_transformer(options.model, dtype=dtype, device=device)


@dataclass
class Arm:
    """One precision arm: its pipeline, what its layers should run, and everything measured on it."""

    name: str                    # the canonical recipe name (omnigen2_fp8.precision)
    mode: ModeChoice | None = None  # how its transformer runs (omnigen2_fp8.modes), chosen when it is built
    pipe: Any = None
    layer_policy: dict[str, str] = field(default_factory=dict)   # linear fqn -> "fp8" | "bf16" (what it should run)
    quantization: dict | None = None
    load: dict | None = None
    run_memory: dict | None = None
    first_call_ms: float | None = None   # the first warm-up call: compilation, graph capture, autotuning included
    later_warmup_ms: list[float] = field(default_factory=list)  # the other warm-up calls (graphs re-captured here)
    e2e_ms: list[float] = field(default_factory=list)
    call_runs: list[list[float]] = field(default_factory=list)  # per timed repeat: ms of each transformer call
    stage_runs: list[dict[str, list[float]]] = field(default_factory=list)
    step_cache_runs: list = field(default_factory=list)  # one step_cache.StepCacheRun per timed repeat
    profile: dict | None = None
    edit: Any = None                     # the first timed call's edited image (PIL), for the fidelity check
    fidelity: dict | None = None         # runner.edit_fidelity: this arm's edit against the first arm's
    attention_error: dict | None = None  # runner.attention_error_call: FP8 attention against BF16, per layer
    error: str | None = None
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.pipe is not None

    @property
    def recipe(self) -> Recipe:
        return parse_recipe(self.name)


def build_arm(arm: Arm, options: ProfileOptions, components: Components, device: torch.device,
              dtype: torch.dtype) -> None:
    """Create the arm's transformer + pipeline (by its recipe name) inside a load memory phase."""
    home = torch.device("cpu") if options.offload else device
    recipe = arm.recipe
    arm.mode = options.arm_mode(arm.name)
    t0 = time.perf_counter()
    with timing.track_peak_memory(f"load:{arm.name}", device) as peak:
        transformer = build_transformer(options, home, dtype)
        arm.pipe = OmniGen2Pipeline.from_components(
            components, transformer, device=device, dtype=dtype, precision=recipe,
            fp8_config=recipe.fp8_config(kernel=options.fp8_kernel), offload=options.offload, progress=False,
            **arm.mode.pipeline_flags())
        timing.synchronize(device)
    arm.load = {**peak.to_dict(), "seconds": time.perf_counter() - t0,
                "transformer_gib": module_bytes(arm.pipe.transformer) / timing.GIB}
    report = arm.pipe.fp8_report
    arm.quantization = quantization_summary(report) if report is not None else None
    arm.layer_policy = layer_policy(arm.pipe.transformer, report)


def quantization_summary(report: Fp8Report) -> dict:
    """The arm's quantization in profile.json: counts, fusions, the config, the FP8 kernel per layer (counts), the
    blocks running FP8 attention and the quantization's notes (e.g. why FP8 attention was asked and not run);
    with an unpadding policy also which FP8 layers run misaligned shapes (the fallback GEMM) and which do not."""
    summary = {"num_fp8": len(report.quantized), "num_bf16": len(report.kept),
               "fused_projections": report.fused_projections, "swiglu_folded": len(report.swiglu_folded),
               "config": report.config.to_dict(), "resolved_kernels": report.counts_by_kernel,
               "fp8_attention_blocks": len(report.fp8_attention), "notes": list(report.notes)}
    if report.config.misaligned != "pad":
        fallback, aligned = [], []
        for d in report.quantized:
            misaligned = d.in_padded % TENSOR_CORE_MULTIPLE or d.out_padded % TENSOR_CORE_MULTIPLE
            (fallback if misaligned else aligned).append(d.name)
        summary["fallback_layers"], summary["aligned_layers"] = fallback, aligned
    return summary


def layer_policy(transformer: nn.Module, report: Fp8Report | None) -> dict[str, str]:
    """Linear fqn -> "fp8" | "bf16", what each layer should run: the quantization report's decision, else what
    the layer holds (a serialized FP8 checkpoint loads already quantized, with no report)."""
    policy = {fqn: ("fp8" if getattr(m, "is_fp8", False) else "bf16")
              for fqn, m in transformer.named_modules() if fqn and is_linear_layer(fqn, m)}
    if report is not None:
        policy.update({d.name: d.action for d in report.layers})
    return policy


def module_bytes(module: nn.Module, device_type: str | None = None) -> int:
    """Bytes of a module's parameters and buffers (in their current dtypes); only those on `device_type` if given."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()]
               if device_type is None or t.device.type == device_type)


@contextlib.contextmanager
def only_on_device(arms: list[Arm], keep: Arm | None, device: torch.device, enabled: bool) -> Iterator[None]:
    """Park every transformer but `keep`'s on the CPU for the block (no-op when disabled or on the CPU)."""
    if not enabled or device.type != "cuda":
        yield
        return
    for arm in arms:
        if arm.ok and arm is not keep:
            arm.pipe.transformer.to("cpu")
    if keep is not None and keep.ok:
        keep.pipe.transformer.to(device)
    timing.release_memory(device)
    yield


def restore_all(arms: list[Arm], device: torch.device, enabled: bool) -> None:
    if enabled and device.type == "cuda":
        for arm in arms:
            if arm.ok:
                arm.pipe.transformer.to(device)
        timing.release_memory(device)
