"""Checkpoint I/O above the model and the FP8 package: load / save the DiT (BF16 or FP8), load the other components.

The transformer folder's config.json decides the format, as diffusers' quantizer mapping does: a
"quantization_config" entry means a serialized FP8 model (read by `fp8.checkpoint`), none means the official BF16
layout. The other components (VAE, MLLM, tokenizer / processor, scheduler config, the SYNTHETIC marker) form one
`Components` value that `synthetic.build_components` returns too, so every caller builds pipelines from one shape.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .fp8.checkpoint import load_fp8_transformer, save_fp8_checkpoint
from .fp8.config import Fp8Config
from .loading import (CheckpointNotFoundError, check_state_dict, download_from_hub, load_tensors, read_json,
                      read_synthetic_marker, resolve_component_folder, safetensors_files, save_tensors_sharded)
from .text_encoder import load_tokenizer
from .transformer import OmniGen2Transformer, TransformerConfig

# Component folder -> a file that must be in it (the official OmniGen2 layout).
COMPONENT_FOLDERS = {
    "transformer": "config.json",
    "vae": "config.json",
    "mllm": "config.json",
    "processor": "tokenizer_config.json",
    "scheduler": "scheduler_config.json",
}


# ---------------------------------------------------------------------------------------------- the transformer
def load_transformer(path_or_hub_id: str | os.PathLike, dtype: torch.dtype | None = None,
                     device: str | torch.device = "cpu", subfolder: str = "transformer") -> OmniGen2Transformer:
    """Load a `transformer/` folder (config.json + safetensors, sharded or not), the checkpoint folder above it,
    or a hub id. Built on the meta device, then the checkpoint tensors are assigned: no random init is ever
    materialised. `dtype` None keeps the stored dtype. Folders written by `save_transformer` from an FP8 model
    (config.json with a "quantization_config") load straight into FP8 layers.
    """
    folder = resolve_component_folder(path_or_hub_id, subfolder)
    raw = read_json(folder / "config.json")
    quantization_config = raw.pop("quantization_config", None)
    config = TransformerConfig.from_dict(raw, source=folder / "config.json")
    if quantization_config is not None:
        return load_fp8_transformer(folder, lambda: OmniGen2Transformer(config), quantization_config, dtype=dtype,
                                    device=device)
    with torch.device("meta"):
        model = OmniGen2Transformer(config)
    tensors = load_tensors(safetensors_files(folder), device=device, dtype=dtype)
    check_state_dict({k: v.shape for k, v in model.state_dict().items()}, tensors, folder)
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def stored_fp8_config(folder: str | os.PathLike) -> Fp8Config | None:
    """The Fp8Config a `transformer/` folder was quantized with (its config.json's "quantization_config"), None for
    a BF16 folder: read before any tensor, so a run can refuse a mismatch before minutes of loading."""
    raw = read_json(Path(folder) / "config.json").get("quantization_config")
    return None if raw is None else Fp8Config.from_dict(raw)


def save_transformer(model: OmniGen2Transformer, folder: str | os.PathLike,
                     max_shard_size: int | str = "10GB") -> Path:
    """Write config.json + safetensors readable by `load_transformer`; returns the folder.

    A BF16 model is written under the official names (fused projections split back), readable by the official
    code too; a model quantized by `quantize_fp8` is written as an FP8 checkpoint (`fp8.save_fp8_checkpoint`).
    """
    if any(getattr(m, "is_fp8", False) for m in model.modules()):
        return save_fp8_checkpoint(model, folder, max_shard_size=max_shard_size)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    save_tensors_sharded(official_state_dict(model), folder, max_shard_size=max_shard_size)
    return folder


def official_state_dict(model: OmniGen2Transformer) -> dict[str, torch.Tensor]:
    """The state dict under the official names: fused projections are split back into their parts."""
    tensors = {}
    for name, t in model.state_dict().items():
        tensors.update(_split_fused(name, t, model.config))
    return tensors


def _split_fused(name: str, tensor: torch.Tensor, config: TransformerConfig) -> dict[str, torch.Tensor]:
    if name.endswith("attn.to_qkv.weight"):
        prefix = name[: -len("to_qkv.weight")]
        q, k, v = tensor.split([config.hidden_size, config.kv_dim, config.kv_dim], dim=0)
        return {f"{prefix}to_q.weight": q, f"{prefix}to_k.weight": k, f"{prefix}to_v.weight": v}
    if name.endswith("feed_forward.linear_13.weight"):
        prefix = name[: -len("linear_13.weight")]
        gate, up = tensor.chunk(2, dim=0)
        return {f"{prefix}linear_1.weight": gate, f"{prefix}linear_3.weight": up}
    return {name: tensor}


# ---------------------------------------------------------------------------------------------- the other parts
@dataclass
class Components:
    """Everything of an OmniGen2 checkpoint but the DiT, shared by every pipeline (arm) built from it.

    vae: diffusers AutoencoderKL; mllm: transformers Qwen2_5_VLForConditionalGeneration; tokenizer: the Qwen
    tokenizer (with chat template); processor: the Qwen2.5-VL processor, or None where it cannot load (it needs
    torchvision; the edit pipeline needs the tokenizer only); scheduler_config: the scheduler_config.json dict;
    synthetic_info: the SYNTHETIC.json content for random weights, None for a trained checkpoint.
    """

    vae: Any
    mllm: Any
    tokenizer: Any
    scheduler_config: dict
    synthetic_info: dict | None = None
    processor: Any = None

    def to(self, device: str | torch.device) -> "Components":
        """Move the VAE and the MLLM to `device` (in place); returns self."""
        self.vae.to(device)
        self.mllm.to(device)
        return self


def load_components(path_or_hub_id: str | os.PathLike, dtype: torch.dtype = torch.bfloat16,
                    device: str | torch.device = "cpu") -> Components:
    """Load vae/, mllm/, processor/ and scheduler/ of an OmniGen2 checkpoint folder (official layout) or hub id,
    in `dtype` on `device`. mllm/ -> Qwen2_5_VLForConditionalGeneration (on a GPU its safetensors are read straight
    into device memory: no CPU copy of the 7.5 GB model); processor/ -> AutoProcessor (its tokenizer;
    AutoTokenizer where the processor's video part cannot load without torchvision); vae/ -> AutoencoderKL.
    A SYNTHETIC.json at the root marks random weights.
    """
    # Heavy imports: only callers that load real components pay for diffusers / transformers.
    from diffusers import AutoencoderKL
    from transformers import Qwen2_5_VLForConditionalGeneration

    root = checkpoint_root(path_or_hub_id)
    device = torch.device(device)
    placement = {"device_map": str(device)} if device.type == "cuda" else {}
    # The two libraries spell the dtype argument differently (diffusers torch_dtype=, transformers dtype=).
    vae = AutoencoderKL.from_pretrained(root / "vae", torch_dtype=dtype).to(device)  # 168 MB: a copy is cheap
    mllm = Qwen2_5_VLForConditionalGeneration.from_pretrained(root / "mllm", dtype=dtype, **placement).to(device)
    processor, tokenizer = _load_processor(root / "processor")
    return Components(vae=vae, mllm=mllm, tokenizer=tokenizer,
                      scheduler_config=read_json(root / "scheduler" / "scheduler_config.json"),
                      synthetic_info=read_synthetic_marker(root), processor=processor)


def checkpoint_root(path_or_hub_id: str | os.PathLike) -> Path:
    """The checkpoint's top folder, every component present; a hub id is downloaded first."""
    path = Path(path_or_hub_id).expanduser()
    if not path.exists():
        path = download_from_hub(str(path_or_hub_id), None, [path])
    if not path.is_dir():
        raise CheckpointNotFoundError(f"{path} is not a folder; pass the OmniGen2 checkpoint folder (with "
                                      f"{', '.join(c + '/' for c in COMPONENT_FOLDERS)}) or a hub id")
    missing = [f"{name}/ (needs {marker})" for name, marker in COMPONENT_FOLDERS.items()
               if not (path / name / marker).is_file()]
    if missing:
        raise CheckpointNotFoundError(f"checkpoint folder {path} is missing component(s): {', '.join(missing)}. "
                                      "Download the complete checkpoint, or write one with "
                                      "omnigen2_fp8.synthetic.write_synthetic_checkpoint")
    return path


def _load_processor(folder: Path):
    """(processor or None, tokenizer): AutoProcessor where it loads, else the tokenizer alone (all we use)."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(folder)
    except ImportError:  # the Qwen2.5-VL processor's video part needs torchvision; the edit pipeline needs text only
        return None, load_tokenizer(folder)
    return processor, processor.tokenizer
