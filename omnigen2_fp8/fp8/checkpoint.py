"""Serialized FP8 transformers: save after quantize_fp8, load straight into Fp8Linear layers.

Folder layout (a transformer folder like the official one):
    config.json  = the transformer config + "quantization_config" (Fp8Config.to_dict(), with format_version)
    diffusion_pytorch_model*.safetensors: e4m3 `<layer>.weight` [Np, Kp] and float32 `<layer>.weight_scale` [Np]
        for quantized layers (under the fused names attn.to_qkv / feed_forward.linear_13 when the config fuses),
        every other tensor in its stored dtype (BF16).
Loading builds the model (from a factory the caller passes) on the meta device, applies the same fusion and swap
as quantize_fp8 (no weights), and assigns the checkpoint tensors: the BF16 weights of quantized layers never
exist, so the load-time peak is the FP8 model's size.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from torch import nn

from ..loading import CheckpointMismatchError, check_state_dict, safetensors_files, save_tensors_sharded
from .config import Fp8Config, Fp8ConfigError
from .linear import Fp8Linear
from .quantize import apply_attention_option, apply_fused_blocks, fold_swiglu, swap_linears

SCALE_SUFFIX = ".weight_scale"


def save_fp8_checkpoint(model: nn.Module, folder: str | os.PathLike, max_shard_size: int | str = "10GB") -> Path:
    """Write a quantized OmniGen2Transformer to `folder` (config.json + safetensors); returns the folder.

    Weights are written first and config.json last, so an interrupted save never looks like a valid checkpoint.
    """
    config = getattr(model, "fp8_config", None)
    if config is None or not any(isinstance(m, Fp8Linear) for m in model.modules()):
        raise ValueError("this model holds no FP8 layers; call quantize_fp8(model) first (BF16 models are saved "
                         "with omnigen2_fp8.checkpoints.save_transformer)")
    if not hasattr(model, "config") or not hasattr(model.config, "to_dict"):
        raise TypeError(f"{type(model).__name__} has no .config.to_dict(); save_fp8_checkpoint writes "
                        "OmniGen2Transformer models")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").unlink(missing_ok=True)
    tensors = {name: t for name, t in model.state_dict().items()}
    save_tensors_sharded(tensors, folder, max_shard_size=max_shard_size,
                         metadata={"quantization": config.to_dict()["quant_method"],
                                   "format_version": str(config.format_version)})
    raw = {**model.config.to_dict(), "quantization_config": config.to_dict()}
    tmp = folder / ".config.json.tmp"
    tmp.write_text(json.dumps(raw, indent=2) + "\n")
    os.replace(tmp, folder / "config.json")
    return folder


def build_fp8_skeleton(model_factory: Callable[[], nn.Module], quantization: Fp8Config) -> nn.Module:
    """`model_factory()` built on the meta device, with the FP8 layers `quantization` implies, and no weights."""
    def build(name: str, linear: nn.Linear) -> Fp8Linear:
        pad_multiple, kernel = quantization.layer_layout(linear.in_features, linear.out_features, name)
        return Fp8Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         weight_granularity=quantization.weight_granularity,
                         activation_granularity=quantization.activation_granularity,
                         pad_multiple=pad_multiple, kernel=kernel,
                         fast_accumulation=quantization.fast_accumulation, device="meta")

    with torch.device("meta"):
        model = model_factory()
        if quantization.fuse_projections:
            model.fuse_projections()
        swap_linears(model, quantization, None, build)
        if quantization.fuse_swiglu:
            fold_swiglu(model)
        apply_fused_blocks(model)
    return model


def load_fp8_transformer(folder: Path, model_factory: Callable[[], nn.Module], quantization_config: dict,
                         dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """Load a folder written by save_fp8_checkpoint straight into FP8 layers on `device`.

    `model_factory()` builds the unquantized model (it is called on the meta device: no weights are made).

    `dtype` applies to the high-precision tensors only (e4m3 weights and float32 scales keep theirs).
    Raises Fp8ConfigError for an unreadable quantization_config and CheckpointMismatchError when the tensors do
    not match what the config implies (names, shapes or dtypes).
    """
    folder = Path(folder)
    quantization = Fp8Config.from_dict(quantization_config)
    model = build_fp8_skeleton(model_factory, quantization)
    expected = model.state_dict()
    tensors = _read_tensors(safetensors_files(folder), expected, dtype, torch.device(device))
    check_state_dict({k: v.shape for k, v in expected.items()}, tensors, folder)
    wrong = [f"{k}: {tensors[k].dtype} (expected {v.dtype})" for k, v in expected.items()
             if (v.dtype == torch.float8_e4m3fn or k.endswith(SCALE_SUFFIX)) and tensors[k].dtype != v.dtype]
    if wrong:
        raise CheckpointMismatchError(f"{folder}: FP8 tensors with the wrong dtype: {wrong[:4]}; the checkpoint does "
                                      "not match its quantization_config; re-save it with save_fp8_checkpoint")
    model.load_state_dict(tensors, strict=True, assign=True)
    for m in model.modules():
        if isinstance(m, Fp8Linear):
            m.refresh_kernel()  # checks FP8 support of `device` now rather than at the first forward
    apply_attention_option(model, quantization)
    model.fp8_config = quantization
    return model.eval().requires_grad_(False)


def _read_tensors(files: list[Path], expected: dict[str, torch.Tensor], dtype: torch.dtype | None,
                  device: torch.device) -> dict[str, torch.Tensor]:
    """Read tensors one at a time onto `device`; cast high-precision ones to `dtype`, never FP8 data or scales."""
    tensors = {}
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                keep = t.dtype == torch.float8_e4m3fn or name.endswith(SCALE_SUFFIX) or not t.is_floating_point()
                if dtype is not None and not keep:
                    t = t.to(dtype)
                tensors[name] = t.to(device)
    return tensors


__all__ = ["save_fp8_checkpoint", "load_fp8_transformer", "build_fp8_skeleton", "Fp8ConfigError"]
