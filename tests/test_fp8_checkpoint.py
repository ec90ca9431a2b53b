"""Serialized FP8 checkpoints: save, load straight into FP8 layers through from_pretrained, fail loudly on a
mismatching config."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from omnigen2_fp8.checkpoints import load_transformer, save_transformer
from omnigen2_fp8.fp8 import Fp8Config, Fp8ConfigError, Fp8Linear, quantize_fp8, save_fp8_checkpoint
from omnigen2_fp8.fp8.checkpoint import load_fp8_transformer
from omnigen2_fp8.loading import CheckpointMismatchError
from omnigen2_fp8.transformer import OmniGen2Transformer, TransformerConfig


def inputs(dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(3)
    latents = [torch.randn(16, 8, 8, generator=g, dtype=dtype)]
    refs = [[torch.randn(16, 4, 6, generator=g, dtype=dtype)]]
    text = torch.randn(1, 5, 64, generator=g, dtype=dtype)
    return latents, torch.tensor([0.3]), text, torch.ones(1, 5, dtype=torch.long), refs


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = OmniGen2Transformer(TransformerConfig.from_name("tiny")).to(torch.bfloat16).eval()
    quantize_fp8(model, Fp8Config())
    folder = save_fp8_checkpoint(model, tmp_path_factory.mktemp("fp8") / "transformer")
    with torch.no_grad():
        out = model(*inputs())
    return model, folder, out


def test_folder_layout(saved):
    _, folder, _ = saved
    raw = json.loads((folder / "config.json").read_text())
    q = raw["quantization_config"]
    assert q["quant_method"] == "omnigen2_fp8" and q["format_version"] == 1 and q["pad_multiple"] == 16
    with safe_open(str(folder / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_slice("layers.0.attn.to_qkv.weight").get_dtype() == "F8_E4M3"
        assert f.get_slice("layers.0.attn.to_qkv.weight_scale").get_dtype() == "F32"
        assert f.get_slice("layers.0.norm1.linear.weight").get_dtype() == "BF16"
        assert "layers.0.attn.to_q.weight" not in f.keys()


def test_round_trip_through_from_pretrained(saved):
    model, folder, out = saved
    loaded = load_transformer(folder)
    fp8_layers = [n for n, m in loaded.named_modules() if isinstance(m, Fp8Linear)]
    assert len(fp8_layers) == sum(isinstance(m, Fp8Linear) for m in model.modules()) == 20
    assert all(t.device.type == "cpu" for t in loaded.state_dict().values())  # nothing left on the meta device
    for name, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name].view(torch.uint8) if t.dtype == torch.float8_e4m3fn
                           else loaded.state_dict()[name], t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn
                           else t), name
    with torch.no_grad():
        again = loaded(*inputs())
    assert all(torch.equal(a, b) for a, b in zip(out, again))


def test_dtype_applies_to_high_precision_tensors_only(saved):
    _, folder, _ = saved
    loaded = load_transformer(folder, dtype=torch.float32)
    layer = loaded.layers[0].attn.to_qkv
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.weight_scale.dtype == torch.float32
    assert loaded.layers[0].norm1.linear.weight.dtype == torch.float32


def _edit_config(folder, tmp_path, edit):
    import shutil

    copy = tmp_path / "edited"
    shutil.copytree(folder, copy)
    raw = json.loads((copy / "config.json").read_text())
    edit(raw)
    (copy / "config.json").write_text(json.dumps(raw))
    return copy


@pytest.mark.parametrize("edit,error,match", [
    (lambda r: r["quantization_config"].update(pad_multiple=32), CheckpointMismatchError, "shape mismatch"),
    (lambda r: r["quantization_config"].update(fuse_projections=False), CheckpointMismatchError, "missing tensor"),
    (lambda r: r.update(num_layers=3), CheckpointMismatchError, "missing tensor"),
    (lambda r: r["quantization_config"].update(format_version=7), Fp8ConfigError, "format version 7"),
    (lambda r: r["quantization_config"].update(group_size=64), Fp8ConfigError, "unknown keys"),
])
def test_mismatching_config_fails_loudly(saved, tmp_path, edit, error, match):
    _, folder, _ = saved
    with pytest.raises(error, match=match):
        load_transformer(_edit_config(folder, tmp_path, edit))


def test_bf16_weights_in_fp8_slots_are_refused(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    _, folder, _ = saved
    copy = _edit_config(folder, tmp_path, lambda r: None)
    path = copy / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(path))
    tensors["layers.0.attn.to_qkv.weight"] = tensors["layers.0.attn.to_qkv.weight"].to(torch.bfloat16)
    save_file(tensors, str(path))
    raw = json.loads((copy / "config.json").read_text())
    config = TransformerConfig.from_dict({k: v for k, v in raw.items() if k != "quantization_config"})
    with pytest.raises(CheckpointMismatchError, match="wrong dtype"):
        load_fp8_transformer(copy, lambda: OmniGen2Transformer(config), raw["quantization_config"])


def test_saving_needs_a_quantized_model(tmp_path):
    model = OmniGen2Transformer(TransformerConfig.from_name("tiny"))
    with pytest.raises(ValueError, match="quantize_fp8"):
        save_fp8_checkpoint(model, tmp_path / "x")
    quantize_fp8(model)
    folder = save_transformer(model, tmp_path / "y")  # an FP8 model is saved in the FP8 format
    assert "quantization_config" in json.loads((folder / "config.json").read_text())
    assert isinstance(load_transformer(folder).layers[0].attn.to_qkv, Fp8Linear)
