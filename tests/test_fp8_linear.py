"""Fp8Linear against the BF16 nn.Linear it replaces, dtype safety, and device errors."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from omnigen2_fp8.fp8 import Fp8Config, Fp8Linear, Fp8UnsupportedDeviceError, Kernel
from omnigen2_fp8.fp8.dispatch import check_fp8_device, plan_for


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).norm() / b.detach().float().norm())


@pytest.mark.parametrize("k,n,bias", [(120, 200, False), (64, 48, True), (100, 37, False)])
@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
def test_fp8_layer_close_to_bf16(k, n, bias, granularity):
    torch.manual_seed(0)
    linear = nn.Linear(k, n, bias=bias).to(torch.bfloat16)
    layer = Fp8Linear.from_linear(linear, Fp8Config(weight_granularity=granularity))
    x = torch.randn(2, 7, k, dtype=torch.bfloat16)
    y, ref = layer(x), linear(x)
    assert y.shape == ref.shape and y.dtype == torch.bfloat16
    err = rel_err(y, ref)
    # two e4m3 roundings (3 mantissa bits): a few percent; per-tensor weight scales are a little worse
    assert 1e-4 < err < (0.06 if granularity == "per_channel" else 0.08), err


def test_per_tensor_activation_scales():
    linear = nn.Linear(64, 32, bias=False)
    cfg = Fp8Config(activation_granularity="per_tensor", weight_granularity="per_tensor")
    layer = Fp8Linear.from_linear(linear, cfg)
    x = torch.randn(5, 64)
    assert rel_err(layer(x), linear(x)) < 0.08


def test_swiglu_folded_forward_matches_separate_ops():
    torch.manual_seed(1)
    down = nn.Linear(48, 32, bias=False)
    layer = Fp8Linear.from_linear(down, Fp8Config())
    gate_up = torch.randn(4, 96)
    gate, up = gate_up.chunk(2, dim=-1)
    y_folded = layer.forward_swiglu(gate_up)
    y_separate = layer(torch.nn.functional.silu(gate) * up)
    assert torch.allclose(y_folded, y_separate, rtol=1e-5, atol=1e-6)


def test_weights_stay_fp8_when_the_model_is_cast():
    model = nn.Sequential(nn.Linear(32, 32))
    model[0] = Fp8Linear.from_linear(model[0], Fp8Config())
    scale_before = model[0].weight_scale.clone()
    model.to(torch.bfloat16)
    assert model[0].weight.dtype == torch.float8_e4m3fn
    assert model[0].weight_scale.dtype == torch.float32 and torch.equal(model[0].weight_scale, scale_before)
    assert model[0].bias.dtype == torch.bfloat16
    assert not model[0].weight.requires_grad


def test_only_padded_fp8_weight_and_scales_are_resident():
    layer = Fp8Linear.from_linear(nn.Linear(2520 // 21, 840 // 21 * 5, bias=False), Fp8Config())
    tensors = dict(layer.state_dict())
    assert set(tensors) == {"weight", "weight_scale"}
    assert tensors["weight"].dtype == torch.float8_e4m3fn and tuple(tensors["weight"].shape) == (208, 128)
    assert "padded=(208, 128)" in repr(layer) and "per_channel" in repr(layer)


def test_wrong_input_width_is_a_clear_error():
    layer = Fp8Linear.from_linear(nn.Linear(16, 8), Fp8Config())
    with pytest.raises(ValueError, match=r"expects inputs \[\.\.\., 16\]"):
        layer(torch.randn(2, 15))


def test_cublas_kernel_on_cpu_names_the_emulation_option():
    with pytest.raises(Fp8UnsupportedDeviceError, match="torch-reference"):
        Fp8Linear.from_linear(nn.Linear(16, 16), Fp8Config(kernel=Kernel.CUBLAS_PADDED))


def test_old_gpu_is_refused_with_the_emulation_option(monkeypatch):
    # No GPU here: only the capability query is replaced, the check itself is the real one.
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    with pytest.raises(Fp8UnsupportedDeviceError, match=r"A100 has compute capability 8\.0.*torch-reference"):
        check_fp8_device(torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    check_fp8_device(torch.device("cuda"))  # Hopper passes


@pytest.mark.gpu
def test_gpu_fp8_linear_matches_emulation():
    torch.manual_seed(0)
    linear = nn.Linear(2520, 4200, bias=False, device="cuda", dtype=torch.bfloat16)
    layer = Fp8Linear.from_linear(linear, Fp8Config())
    x = torch.randn(300, 2520, device="cuda", dtype=torch.bfloat16)
    y = layer(x)
    layer.use_plan(plan_for(Kernel.TORCH_REFERENCE))
    assert rel_err(y, layer(x)) < 5e-3
    assert rel_err(y, linear(x)) < 0.06


def test_plans_are_chosen_in_one_place_and_forced_through_a_public_seam():
    from omnigen2_fp8.fp8 import LaunchConfig, quantize_fp8, select_kernel_plan, use_plan
    from omnigen2_fp8.transformer import OmniGen2Transformer, TransformerConfig

    cpu = torch.device("cpu")
    assert select_kernel_plan("auto", cpu) == plan_for(Kernel.TORCH_REFERENCE)
    assert (plan_for("cublas-padded").quantize_impl, plan_for("cublas-padded").gemm_impl) == ("fused", "scaled-mm")
    unit = dataclasses.replace(plan_for("cublas-padded"), gate_up_unit_scales=True)
    assert not plan_for("cublas-padded").unscaled_gate_up and unit.unscaled_gate_up
    assert not dataclasses.replace(plan_for("cublas-torch-quant"), gate_up_unit_scales=True).unscaled_gate_up
    with pytest.raises(ValueError, match="not a concrete kernel"):
        plan_for("auto")
    with pytest.raises(Fp8UnsupportedDeviceError):
        select_kernel_plan("cublas-padded", cpu)
    launch = LaunchConfig.from_table({(120, False): (64, 2, 1)})
    assert launch.choose(120, 128, False) == (64, 2, 1) and launch.choose(64, 64, False) != (64, 2, 1)

    model = OmniGen2Transformer(TransformerConfig.from_name("tiny"))
    report = quantize_fp8(model, Fp8Config())
    assert report.counts_by_kernel == {"torch-reference": len(report.quantized)}  # auto on a CPU
    assert all(d.kernel is None for d in report.kept) and report.to_dict()["counts_by_kernel"]
    forced = plan_for(Kernel.CUBLAS_TORCH_QUANT)
    assert use_plan(model, forced) == len(report.quantized)
    layer = model.layers[0].attn.to_qkv
    model.to("cpu")  # a device move keeps a forced plan
    assert layer.kernel_plan() is forced and layer.resolved_kernel == Kernel.CUBLAS_TORCH_QUANT
    use_plan(model, None)
    assert layer.resolved_kernel == Kernel.TORCH_REFERENCE
