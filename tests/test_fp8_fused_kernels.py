"""The fused block kernels (fp8/fused_kernels.py) against their torch references (fp8/fused_reference.py): on the
CPU through Triton's interpreter (tests/fused_interpreter_checks.py in a subprocess, as test_fp8_kernels does), and
on a GPU with the hardware e4m3 conversion at the real 1024 shapes.

Tolerances: e4m3 and bf16 outputs within one representable step of the reference and >= 99 % bit-identical
(summation order and rsqrt may differ by an ulp in float32, which can move a value across a rounding boundary);
scales within 1e-5 relative. On the interpreter every case measured is bit-identical.
"""
from __future__ import annotations

import pytest
import torch

from interpreted_script import run_interpreted

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def interpreted() -> dict:
    return run_interpreted("fused_interpreter_checks.py", timeout_s=900)


def within_one_step(r: dict) -> bool:
    return r["max_steps"] <= 1 and r["identical"] >= 0.99 and not r["nan"]


def test_kernels_really_ran_in_the_interpreter(interpreted):
    assert interpreted["interpreted"] == "InterpretedFunction"


@pytest.mark.parametrize("case", ["tiny_bf16", "tiny_no_scale_fp32", "strided_rows", "real_2520", "rows_4x2_tail",
                                  "rows_1x1", "rows_8x4_tail", "chunked_32x2", "chunked_real_512",
                                  "chunked_no_scale", "resident_3rows", "resident_real", "prefetch_3rows",
                                  "prefetch_one_piece", "prefetch_real"])
def test_modulated_norm_quant_matches_reference(interpreted, case):
    r = interpreted["modulated"][case]
    assert r["q_dtype"] == "torch.float8_e4m3fn" and r["padding_zero"], r
    assert within_one_step(r) and r["scale_max_rel_diff"] < 1e-5, r


@pytest.mark.parametrize("case", ["tiny_gate", "tiny_no_gate", "tiny_gate_quant", "real_2520_quant",
                                  "rows_4x2_tail_quant", "rows_8x4_tail", "chunked_32x2", "chunked_32x2_quant",
                                  "chunked_no_gate_quant", "chunked_real_512_quant", "resident_no_gate",
                                  "resident_3rows_quant", "resident_real_quant", "prefetch_no_gate",
                                  "prefetch_3rows_quant", "prefetch_real_quant"])
def test_gated_residual_norm_matches_reference(interpreted, case):
    r = interpreted["residual"][case]
    assert within_one_step(r["h"]), r
    if "q" in r:
        assert within_one_step(r["q"]) and r["padding_zero"] and r["scale_max_rel_diff"] < 1e-5, r
        assert within_one_step(r["q_vs_own_h"]), r  # the quantized part reads h_new as stored


def test_prefetching_the_next_row_changes_no_bit(interpreted):
    # the same operations on the same values, only issued earlier: every output identical to the resident launch's
    assert interpreted["prefetch_same_bits"] == {"modulated_real": True, "residual_real_quant": True,
                                                 "residual_tiny": True}


@pytest.mark.parametrize("case", ["tiny_bf16", "tiny_fp8_pad32", "real_bf16", "real_fp8_pad128", "tokens_4_straddle",
                                  "tokens_1_fp8"])
def test_qk_norm_rope_matches_reference(interpreted, case):
    r = interpreted["rope"][case]
    assert within_one_step(r["q"]) and within_one_step(r["k"]), r
    if "fp8" in case:
        assert r["dtype"] == "torch.float8_e4m3fn" and r["padding_zero"] and r["q_shape"][-1] in (32, 128), r


def test_qk_norm_rope_in_float32(interpreted):
    r = interpreted["rope"]["tiny_fp32"]
    assert r["q"]["max_diff_over_max"] < 1e-6 and r["k"]["max_diff_over_max"] < 1e-6, r


def test_model_fused_by_triton_equals_the_reference_fused_model(interpreted):
    m = interpreted["model"]
    assert m["fused_blocks"] == 5  # tiny: 2 main layers + 3 refiners, all fusable
    # Same GEMM (exact emulation), kernels vs torch references: the whole ragged-batch forward agrees exactly.
    assert m["triton_emulated_vs_reference"] < 1e-3, m
    # Fused vs unfused differ by the BF16 roundings the fused path skips: far below FP8's own error vs BF16.
    errors = m["rel_vs_bf16"]
    assert m["triton_fused_vs_unfused"] < errors["triton_unfused"], m
    assert errors["triton"] < 1.25 * errors["triton_unfused"], m


def test_fused_model_compiles_once_per_block_kind(interpreted):
    m = interpreted["model"]
    assert m["unique_graphs"] == 2 and m["frames_ok"] == 2, m  # second token count: no recompilation
    assert m["compiled_vs_eager"] < 1e-3, m  # the custom ops run the same kernels compiled or not


# ------------------------------------------------------------------------------------------------------ GPU
def _steps(a: torch.Tensor, b: torch.Tensor) -> tuple[int, float]:
    def ordinal(t):
        bits = t.view(torch.uint8).int() if t.element_size() == 1 else t.view(torch.int16).int() & 0xFFFF
        top = 0x80 if t.element_size() == 1 else 0x8000
        return torch.where(bits >= top, -(bits - top), bits)
    d = (ordinal(a) - ordinal(b)).abs()
    return int(d.max()), float((d == 0).float().mean())


def _within_rounding(got: torch.Tensor, want: torch.Tensor, magnitude: torch.Tensor) -> bool:
    """|got - want| <= one bf16 step (2^-7 relative) of the operands' magnitude: sums that cancel (h + gated y, the
    rotation's a*cos - b*sin) differ by many steps of their tiny result while agreeing to the operands' rounding."""
    return bool(((got.float() - want.float()).abs() <= 2.0 ** -7 * magnitude + 1e-30).all())


@pytest.mark.gpu
def test_gpu_kernels_match_references_at_the_1024_shapes():
    from omnigen2_fp8.fp8 import fused_kernels as K, fused_reference as R

    torch.manual_seed(0)
    dev, n, seq, d = "cuda", 1, 8392, 2520
    x = torch.randn(n, seq, d, device=dev, dtype=torch.bfloat16) * 3
    y = torch.randn(n, seq, 2528, device=dev, dtype=torch.bfloat16)[..., :d]
    mod = torch.randn(n, 4 * d, device=dev, dtype=torch.bfloat16) * 0.3
    scale, gate = mod[:, :d], mod[:, d: 2 * d].float().tanh()
    w = torch.rand(d, device=dev, dtype=torch.bfloat16) + 0.5
    q, s = K.modulated_rmsnorm_quant_triton(x, w, scale, 1e-5, 2528)
    qr, sr = R.modulated_rmsnorm_quant(x, w, scale, 1e-5, 2528)
    worst, same = _steps(q, qr)
    assert worst <= 1 and same > 0.99 and float(((s - sr).abs() / sr).max()) < 1e-5
    h, hq, hs = K.gated_residual_rmsnorm_quant_triton(x, y, gate, w, 1e-5, w, scale, 1e-5, 2528)
    hr, hqr, hsr = R.gated_residual_rmsnorm_quant(x, y, gate, w, 1e-5, w, scale, 1e-5, 2528)
    y_normed = y.float() * torch.rsqrt(y.float().pow(2).mean(-1, keepdim=True) + 1e-5) * w.float()
    assert _within_rounding(h, hr, x.float().abs() + (gate[:, None] * y_normed).abs()) and _steps(h, hr)[1] > 0.99
    assert _steps(hq, hqr)[0] <= 1 and float(((hs - hsr).abs() / hsr).max()) < 1e-5
    qkv = torch.randn(n, seq, 4208, device=dev, dtype=torch.bfloat16) * 2
    qh = qkv[..., :d].unflatten(-1, (21, 120))
    kh = qkv[..., d: d + 840].unflatten(-1, (7, 120))
    angles = torch.rand(n, seq, 60, device=dev) * 100
    args = (qh, kh, w[:120], w[120:240], angles.cos(), angles.sin(), 1e-5, 1e-5)
    for extra in ((), (torch.full((1, 1, 1, 1), 0.02, device=dev), torch.full((1, 1, 1, 1), 0.03, device=dev), 128)):
        for got, want in zip(K.qk_norm_rope_triton(*args, *extra), R.qk_norm_rope(*args, *extra)):
            worst, same = _steps(got, want)
            if got.dtype == torch.bfloat16:  # a rotated pair can cancel: bound by the head's magnitude instead
                assert _within_rounding(got, want, want.float().abs().amax(-1, keepdim=True)), extra
            else:  # e4m3 of the rotated values: one step
                assert worst <= 1, (extra, worst, same)
            assert same > 0.99, (extra, worst, same)


def _tiny_bf16_call(device: str):
    from omnigen2_fp8.transformer import OmniGen2Transformer, TransformerConfig

    torch.manual_seed(0)
    model = OmniGen2Transformer(TransformerConfig.from_name("tiny")).eval().to(device, torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    call = ([torch.randn(16, 8, 8, generator=g).bfloat16().to(device)], torch.tensor([0.4], device=device),
            torch.randn(1, 7, 64, generator=g).bfloat16().to(device), torch.ones(1, 7, device=device),
            [[torch.randn(16, 8, 6, generator=g).bfloat16().to(device)]])
    return model, call


def test_the_pipeline_sets_the_qk_hook_on_every_block_and_cpu_blocks_keep_the_torch_ops():
    from omnigen2_fp8.fp8 import fused_kernels as K
    from omnigen2_fp8.synthetic import build_synthetic_pipeline

    pipe = build_synthetic_pipeline("tiny", device="cpu", dtype=torch.float32)
    assert not pipe.fused_qk_norm_rope  # a CPU pipeline: no kernel
    assert all(block.attn.qk_norm_rope is None for block in pipe.transformer.blocks())
    model, call = _tiny_bf16_call("cpu")
    with torch.no_grad():
        plain = model(*call)
        model.use_qk_norm_rope(K.fused_qk_norm_rope)
        assert all(block.attn.qk_norm_rope is K.fused_qk_norm_rope for block in model.blocks())
        hooked = model(*call)  # CPU inputs: the hook is for CUDA tensors only, the torch ops run
    assert all(torch.equal(a, b) for a, b in zip(plain, hooked))


@pytest.mark.gpu
def test_gpu_bf16_model_with_the_fused_qk_kernel_matches_the_torch_ops_eager_and_compiled():
    from omnigen2_fp8.fp8 import fused_kernels as K

    model, call = _tiny_bf16_call("cuda")
    calls = []

    def counted(*args):
        calls.append(1)
        return K.fused_qk_norm_rope(*args)

    with torch.no_grad():
        want = [y.float() for y in model(*call)]
        model.use_qk_norm_rope(counted)
        eager = [y.float() for y in model(*call)]
        assert len(calls) == len(model.blocks())
        model.compile_blocks()
        compiled = [y.float() for y in model(*call)]
    for got in (eager, compiled):
        for a, b in zip(got, want):  # one rounding instead of the norm's BF16 output before the rotation
            assert float((a - b).norm() / b.norm()) < 2e-2


def test_launch_settings_refuse_what_the_kernels_cannot_run(monkeypatch):
    from omnigen2_fp8.fp8 import fused_kernels as K, kernels as KQ

    for bad in (dict(rows_per_program=16, sub_rows=2, num_warps=2), dict(rows_per_program=1, sub_rows=1, num_warps=2,
                                                                          chunk=512)):
        with pytest.raises(ValueError, match="one at a time"):
            K.RowLaunch(**bad, resident=True)
    with pytest.raises(ValueError, match="prefetch is a form of the resident kernel"):
        K.RowLaunch(1, 1, 4, 512, prefetch=True)
    # the resident row: five chunks of the smallest power of two (>= 16) that covers it
    assert K.resident_chunk_width(2528) == 512 and K.resident_chunk_width(120) == 32
    assert K.resident_chunk_width(40) == 16 and K.resident_chunk_width(2560) == 512
    # a resident row quantization holds at most 5 chunks: refused before any launch
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ValueError, match="at most 5 chunks"):
        KQ.quantize_activation_triton(torch.zeros(2, 4096), 4096, block_k=512, stages=KQ.RESIDENT)
