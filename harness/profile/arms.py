"""Precision arms: the shared components, one transformer per arm, and parking transformers on the CPU.

The MLLM, VAE and tokenizer are loaded once (`load_shared`) and shared by every arm; each arm builds its own
transformer and pipeline inside a load memory phase (`build_arm`). With several arms on one GPU, the transformers
not in use are parked on the CPU (`only_on_device`, `restore_all`).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from harness.core import timing
from harness.profile.kernels import layer_precisions
from harness.profile.options import ProfileOptions
from omnigen2_fp8 import synthetic
from omnigen2_fp8.fp8.config import Fp8Config, Kernel
from omnigen2_fp8.fp8.linear import Fp8Linear
from omnigen2_fp8.fp8.quantize import Fp8Report, fold_swiglu, swap_linears
from omnigen2_fp8.checkpoints import load_transformer
from omnigen2_fp8.loading import read_json, read_synthetic_marker, resolve_component_folder
from omnigen2_fp8.pipeline import OmniGen2Pipeline
from omnigen2_fp8.scheduler import FlowMatchEulerScheduler
from omnigen2_fp8.text_encoder import load_tokenizer


@dataclass
class Shared:
    """Components every arm shares (loaded once) and how to build a fresh BF16 transformer."""

    vae: Any
    mllm: Any
    tokenizer: Any
    scheduler_config: dict
    synthetic_info: dict | None
    build_transformer: Callable[[torch.device], nn.Module]


def load_shared(options: ProfileOptions, device: torch.device, dtype: torch.dtype) -> Shared:
    """Load (or build, for --synthetic) the MLLM, VAE and tokenizer on `device` (the CPU with --offload)."""
    home = torch.device("cpu") if options.offload else device
    if options.synthetic:
        size, seed = options.synthetic, options.seed
        tokenizer = synthetic.build_qwen_tokenizer(qwen_ids=(size == "full"))
        text_dim = synthetic.transformer_config(size).text_feat_dim
        return Shared(vae=synthetic.build_vae(size, home, dtype, seed + 1),
                      mllm=synthetic.build_qwen2_5_vl(size, home, dtype, seed + 2, tokenizer,
                                                      text_hidden_size=text_dim),
                      tokenizer=tokenizer, scheduler_config=dict(synthetic.SCHEDULER_CONFIG),
                      synthetic_info={"size": size, "seed": seed, "what": "random-weight models built in memory"},
                      build_transformer=lambda dev: synthetic.build_transformer(size, dev, dtype, seed))
    # heavy packages, needed only for real checkpoints
    from diffusers import AutoencoderKL
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = options.model
    vae_dir = resolve_component_folder(model, "vae")
    mllm = Qwen2_5_VLForConditionalGeneration.from_pretrained(resolve_component_folder(model, "mllm"), dtype=dtype)
    return Shared(vae=AutoencoderKL.from_pretrained(vae_dir, torch_dtype=dtype).to(home),
                  mllm=mllm.to(home),
                  tokenizer=load_tokenizer(resolve_component_folder(model, "processor", "tokenizer_config.json")),
                  scheduler_config=read_json(resolve_component_folder(model, "scheduler", "scheduler_config.json")
                                             / "scheduler_config.json"),
                  synthetic_info=read_synthetic_marker(vae_dir.parent),
                  build_transformer=lambda dev: load_transformer(model, dtype=dtype, device=dev))


def fp8_config_for(options: ProfileOptions) -> Fp8Config:
    return Fp8Config(kernel=options.fp8_kernel)


def quantize_unpadded(transformer: nn.Module, config) -> dict:
    """The deliberately unpadded FP8 model: fuse, then swap each policy-selected linear for an Fp8Linear with
    pad multiple 1. Layers with K or N not a multiple of 16 get the fallback kernel (torch-reference), the others
    `config.kernel`. Returns {"layers": {name: "fp8"|"bf16"}, "fallback_layers": [...], "aligned_layers": [...]}.
    """
    fallback, aligned = [], []

    def build(name: str, linear: nn.Linear) -> Fp8Linear:
        ok = linear.in_features % 16 == 0 and linear.out_features % 16 == 0
        (aligned if ok else fallback).append(name)
        return Fp8Linear.from_linear(linear, config, pad_multiple=1,
                                     kernel=config.kernel if ok else Kernel.TORCH_REFERENCE)

    if config.fuse_projections and hasattr(transformer, "fuse_projections"):
        transformer.fuse_projections()
    report = Fp8Report(config)
    swap_linears(transformer, config, report, build)
    if config.fuse_swiglu:
        fold_swiglu(transformer)
    return {"layers": {d.name: d.action for d in report.layers}, "fallback_layers": fallback,
            "aligned_layers": aligned}


@dataclass
class Arm:
    """One precision arm: its pipeline, what its layers should run, and everything measured on it."""

    name: str
    pipe: Any = None
    layer_policy: dict[str, str] = field(default_factory=dict)   # linear fqn -> "fp8" | "bf16" (what it should run)
    quantization: dict | None = None
    load: dict | None = None
    run_memory: dict | None = None
    e2e_ms: list[float] = field(default_factory=list)
    stage_runs: list[dict[str, list[float]]] = field(default_factory=list)
    profile: dict | None = None
    error: str | None = None
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.pipe is not None


def build_arm(arm: Arm, options: ProfileOptions, shared: Shared, device: torch.device, dtype: torch.dtype) -> None:
    """Create the arm's transformer + pipeline inside a load memory phase."""
    home = torch.device("cpu") if options.offload else device
    t0 = time.perf_counter()
    with timing.track_peak_memory(f"load:{arm.name}", device) as peak:
        transformer = shared.build_transformer(home)
        fp8_config = fp8_config_for(options) if arm.name != "bf16" else None
        if arm.name == "fp8-nopad":
            arm.quantization = quantize_unpadded(transformer, fp8_config)
        arm.pipe = OmniGen2Pipeline(
            transformer, shared.vae, FlowMatchEulerScheduler.from_config(shared.scheduler_config), shared.mllm,
            shared.tokenizer, device=device, dtype=dtype, precision="bf16" if arm.name == "bf16" else "fp8",
            offload=options.offload, compile=options.compile, synthetic=shared.synthetic_info, progress=False,
            fp8_config=fp8_config, cuda_graphs=options.cuda_graphs)
        timing.synchronize(device)
    arm.load = {**peak.to_dict(), "seconds": time.perf_counter() - t0,
                "transformer_gib": module_bytes(arm.pipe.transformer) / timing.GIB}
    if arm.pipe.fp8_report is not None:
        rep = arm.pipe.fp8_report
        arm.quantization = {"num_fp8": len(rep.quantized), "num_bf16": len(rep.kept),
                            "fused_projections": rep.fused_projections, "swiglu_folded": len(rep.swiglu_folded),
                            "config": rep.config.to_dict(),
                            "layers": {d.name: d.action for d in rep.layers}}
    elif arm.quantization is not None:
        arm.quantization["config"] = fp8_config.to_dict()
        arm.quantization["config"]["pad_multiple"] = 1  # what was actually used (Fp8Config itself refuses 1)
    arm.layer_policy = (dict(arm.quantization["layers"]) if arm.quantization else {})
    for fqn, p in layer_precisions(arm.pipe.transformer).items():
        arm.layer_policy.setdefault(fqn, p)
    arm.quantization = _summarise_kernels(arm)


def _summarise_kernels(arm: Arm) -> dict | None:
    """Add the resolved kernel per FP8 layer (counts) to the quantization summary."""
    if arm.quantization is None:
        return None
    counts: dict[str, int] = {}
    for m in arm.pipe.transformer.modules():
        if getattr(m, "is_fp8", False) and hasattr(m, "refresh_kernel"):
            kernel = m.refresh_kernel()
            key = getattr(kernel, "value", str(kernel))
            counts[key] = counts.get(key, 0) + 1
    out = {k: v for k, v in arm.quantization.items() if k != "layers"}
    out["resolved_kernels"] = counts
    return out


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
