"""The library's per-layer profiler ranges (omnigen2_fp8.profiling) read back by the harness's kernel parser:
every GEMM lands in the layer that ran it, including the FP8 entry points the folded SwiGLU calls directly."""
from __future__ import annotations

from collections import Counter

import torch

from harness.core.timing import StageTimer
from harness.profile import kernels as K
from harness.profile.arms import layer_policy
from omnigen2_fp8.fp8 import Fp8Config, Fp8Linear, Kernel, plan_for, quantize_fp8, use_plan
from omnigen2_fp8.profiling import LAYER_RANGE_PREFIX, is_linear_layer, layer_ranges
from omnigen2_fp8.transformer import OmniGen2Transformer, TransformerConfig


def _tiny_fp8_model() -> tuple[OmniGen2Transformer, dict[str, str]]:
    torch.manual_seed(0)
    model = OmniGen2Transformer(TransformerConfig.from_name("tiny")).to(torch.bfloat16).eval()
    report = quantize_fp8(model, Fp8Config())
    use_plan(model, plan_for(Kernel.CUBLAS_TORCH_QUANT))  # the GPU's op sequence (torch._scaled_mm runs on a CPU)
    return model, layer_policy(model, report)


def _run(model):
    g = torch.Generator().manual_seed(0)
    latents = [torch.randn(16, 8, 8, generator=g).bfloat16()]
    text = torch.randn(1, 7, 64, generator=g).bfloat16()
    with torch.no_grad(), K.capture("cpu") as prof, layer_ranges(model) as calls:
        with StageTimer("cpu")("denoise_step"):
            model(latents, torch.tensor([0.5]), text, torch.ones(1, 7, dtype=torch.long))
    return K.parse_profile(prof, "cpu"), dict(calls)


def test_parser_attributes_every_gemm_to_the_layer_range_that_ran_it():
    model, policy = _tiny_fp8_model()
    capture, calls = _run(model)
    linears = {n for n, m in model.named_modules() if n and is_linear_layer(n, m)}
    assert linears == set(policy) and set(calls) <= linears  # (no reference image: the ref refiners do not run)
    assert {policy[name] for name in calls} == {"fp8", "bf16"}
    assert any(name.endswith("feed_forward.linear_2") for name in calls)  # forward_swiglu, called directly
    # one GEMM op per counted call, in that layer's range; FP8 layers run the scaled GEMM, the others mm/addmm
    assert Counter(layer for _, layer, _ in capture.gemm_ops) == Counter(calls)
    for op, layer, step in capture.gemm_ops:
        assert step == 0 and (op == "aten::_scaled_mm") == (policy[layer] == "fp8"), (op, layer)
    assert all(c.layer in linears for c in capture.calls if c.layer is not None)
    assert LAYER_RANGE_PREFIX == "layer::"


def test_direct_entry_points_counted_once_and_everything_removed_on_exit():
    layer = Fp8Linear.from_linear(torch.nn.Linear(32, 64).bfloat16(), Fp8Config(kernel="torch-reference"))
    layer.use_plan(plan_for(Kernel.CUBLAS_TORCH_QUANT))
    parent = torch.nn.Module()
    parent.up = layer
    x = torch.randn(8, 32).bfloat16()
    with torch.profiler.profile() as prof, layer_ranges(parent, prefix="dit.") as calls:
        xq, scale = layer.quantize_input(x)                       # part of a GEMM: ranged, not counted
        layer.finish(layer.matmul(xq, scale, torch.bfloat16), x.shape[:-1])  # one GEMM
        layer(x)                                                  # forward: its inner calls are not counted again
    assert dict(calls) == {"dit.up": 2}
    assert sum(e.name == "layer::dit.up" for e in prof.events()) == 4  # quantize_input, matmul, finish, forward
    assert not set(Fp8Linear.profiler_entry_points) & set(layer.__dict__)  # the instance is clean again
    assert not layer._forward_hooks and not layer._forward_pre_hooks
