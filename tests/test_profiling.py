"""The library's per-layer profiler ranges (omnigen2_fp8.profiling): the ranges and call counts the harness's
kernel parser reads, including the FP8 entry points the folded SwiGLU calls directly."""
from __future__ import annotations

import torch

from harness.profile import kernels as K
from harness.core.timing import StageTimer
from omnigen2_fp8.fp8 import Fp8Config, Fp8Linear, Kernel, plan_for, quantize_fp8, use_plan
from omnigen2_fp8.profiling import LAYER_RANGE_PREFIX, layer_ranges
from omnigen2_fp8.transformer import OmniGen2Transformer, TransformerConfig


def _tiny_fp8_model() -> OmniGen2Transformer:
    torch.manual_seed(0)
    model = OmniGen2Transformer(TransformerConfig.from_name("tiny")).to(torch.bfloat16).eval()
    quantize_fp8(model, Fp8Config())
    use_plan(model, plan_for(Kernel.CUBLAS_TORCH_QUANT))  # the GPU's op sequence (torch._scaled_mm runs on a CPU)
    return model


def _run(model, ranges):
    g = torch.Generator().manual_seed(0)
    latents = [torch.randn(16, 8, 8, generator=g).bfloat16()]
    text = torch.randn(1, 7, 64, generator=g).bfloat16()
    with torch.no_grad(), K.capture("cpu") as prof, ranges(model) as calls:
        with StageTimer("cpu")("denoise_step"):
            model(latents, torch.tensor([0.5]), text, torch.ones(1, 7, dtype=torch.long))
    return K.parse_profile(prof, "cpu"), dict(calls)


def test_library_ranges_match_what_the_harness_parser_reads():
    model = _tiny_fp8_model()
    ours, our_calls = _run(model, layer_ranges)
    theirs, their_calls = _run(model, K.layer_ranges)
    assert our_calls == their_calls and our_calls
    assert any(name.endswith("feed_forward.linear_2") for name in our_calls)  # forward_swiglu, called directly
    assert ours.gemm_ops == theirs.gemm_ops
    linears = {n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Fp8Linear))}
    assert {layer for _, layer, _ in ours.gemm_ops} <= linears
    assert LAYER_RANGE_PREFIX == K.LAYER_RANGE_PREFIX


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
