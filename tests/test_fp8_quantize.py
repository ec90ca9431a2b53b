"""quantize_fp8 on the tiny OmniGen2 transformer: policy coverage, the per-layer report, config errors, and the
golden model quantized staying close to the official outputs."""
from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from omnigen2_fp8.fp8 import (Fp8Config, Fp8ConfigError, Fp8Linear, Fp8QuantizationError, Fp8SwiGLUFeedForward,
                              quantize_fp8)
from omnigen2_fp8.checkpoints import load_transformer
from omnigen2_fp8.transformer import OmniGen2Transformer, TransformerConfig

from golden_cases import find_case, transformer_batch_call

TARGET = re.compile(r"(layers|noise_refiner|ref_image_refiner|context_refiner)\.\d+\."
                    r"(attn\.(to_q|to_k|to_v|to_qkv|to_out\.0)|feed_forward\.(linear_1|linear_2|linear_3|linear_13))")


def tiny_model() -> OmniGen2Transformer:
    torch.manual_seed(0)
    return OmniGen2Transformer(TransformerConfig.from_name("tiny")).eval()


@pytest.mark.parametrize("fuse", [True, False])
def test_policy_covers_every_block_and_keeps_the_rest(fuse):
    model = tiny_model()
    report = quantize_fp8(model, Fp8Config(fuse_projections=fuse))
    linears = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, Fp8Linear))}
    for name, module in linears.items():
        assert isinstance(module, Fp8Linear) == bool(TARGET.fullmatch(name)), name
    blocks = 2 + 1 + 1 + 1  # tiny: 2 main layers + 1 noise, 1 reference, 1 context refiner
    assert len(report.quantized) == blocks * (4 if fuse else 7)
    assert {d.name for d in report.layers} == set(linears)  # every candidate linear is reported
    kept = {d.name: d.reason for d in report.kept}
    assert all("norm1.linear" in r for n, r in kept.items() if n.endswith("norm1.linear"))
    for must_stay in ("x_embedder", "ref_image_patch_embedder", "norm_out.linear_1", "norm_out.linear_2",
                      "time_caption_embed.timestep_embedder.linear_1", "time_caption_embed.caption_embedder.1",
                      "layers.0.norm1.linear", "noise_refiner.0.norm1.linear"):
        assert isinstance(model.get_submodule(must_stay), nn.Linear) and must_stay in kept
    if fuse:
        assert isinstance(model.layers[0].feed_forward, Fp8SwiGLUFeedForward)
        assert len(report.swiglu_folded) == blocks
        qkv = next(d for d in report.layers if d.name == "layers.0.attn.to_qkv")
        assert (qkv.in_features, qkv.out_features, qkv.in_padded, qkv.out_padded) == (120, 200, 128, 208)
    else:
        k = next(d for d in report.layers if d.name == "layers.0.attn.to_k")
        assert (k.in_features, k.out_features, k.in_padded, k.out_padded) == (120, 40, 128, 48)
    text = str(report)
    assert "layers.0.attn.to_out.0" in text and "excluded by" in text
    assert json.loads(report.to_json())["num_quantized"] == len(report.quantized)


def test_include_exclude_patterns_fnmatch_and_regex():
    model = tiny_model()
    cfg = Fp8Config(include=["layers.*.feed_forward.*"], exclude=["re:layers\\.1\\..*"], fuse_projections=False)
    report = quantize_fp8(model, cfg)
    assert sorted(d.name for d in report.quantized) == [
        "layers.0.feed_forward.linear_1", "layers.0.feed_forward.linear_2", "layers.0.feed_forward.linear_3"]


def test_golden_model_quantized_stays_close(golden_dir):
    case = find_case("transformer_batch", golden_dir)
    model = load_transformer(case / "transformer")
    io = load_file(str(case / "io.safetensors"))
    report = quantize_fp8(model)
    assert len(report.quantized) == 20
    with torch.no_grad():
        out = model(*transformer_batch_call(io))
    for i, y in enumerate(out):
        want = io[f"output.{i}"]
        err = float((y - want).norm() / want.norm())
        # e4m3 has 3 mantissa bits: each GEMM adds ~3-5 % noise on these random weights; measured ~0.08
        assert err < 0.15, (i, err)


def test_quantizing_twice_or_without_weights_fails_clearly():
    model = tiny_model()
    quantize_fp8(model)
    with pytest.raises(Fp8QuantizationError, match="already holds FP8"):
        quantize_fp8(model)
    with torch.device("meta"):
        meta = OmniGen2Transformer(TransformerConfig.from_name("tiny"))
    with pytest.raises(Fp8QuantizationError, match="meta device"):
        quantize_fp8(meta)


def test_config_round_trip_and_errors():
    cfg = Fp8Config(weight_granularity="per_tensor", include=["layers.*"], pad_multiple=32)
    assert Fp8Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(Fp8ConfigError, match="per_row.*per_channel"):
        Fp8Config(weight_granularity="per_row")
    with pytest.raises(Fp8ConfigError, match="multiple of 16"):
        Fp8Config(pad_multiple=8)
    with pytest.raises(Fp8ConfigError, match="regular expression"):
        Fp8Config(include=["re:layers.(("])
    with pytest.raises(Fp8ConfigError, match="list of patterns"):
        Fp8Config(include="layers.*")
    with pytest.raises(Fp8ConfigError, match="unknown keys"):
        Fp8Config.from_dict({**cfg.to_dict(), "block_size": 128})
    with pytest.raises(Fp8ConfigError, match="format version 2"):
        Fp8Config.from_dict({**cfg.to_dict(), "format_version": 2})
    with pytest.raises(Fp8ConfigError, match="quant_method"):
        Fp8Config.from_dict({**cfg.to_dict(), "quant_method": "fbgemm_fp8"})
    with pytest.raises(Fp8ConfigError, match="fast_accumulation must be true or false"):
        Fp8Config(fast_accumulation="yes")


def test_fast_accumulation_reaches_every_layer_and_older_checkpoints_default_to_it(tmp_path):
    from omnigen2_fp8.fp8 import save_fp8_checkpoint

    older = {k: v for k, v in Fp8Config().to_dict().items() if k != "fast_accumulation"}
    assert Fp8Config.from_dict(older).fast_accumulation  # configs written before the option existed
    model = OmniGen2Transformer(TransformerConfig.from_name("tiny")).to(torch.bfloat16)
    quantize_fp8(model, Fp8Config(fast_accumulation=False))
    layers = [m for m in model.modules() if isinstance(m, Fp8Linear)]
    assert layers and not any(m.fast_accumulation for m in layers)
    assert "exact accumulation" in repr(layers[0])
    loaded = load_transformer(save_fp8_checkpoint(model, tmp_path / "transformer"))
    assert not any(m.fast_accumulation for m in loaded.modules() if isinstance(m, Fp8Linear))
