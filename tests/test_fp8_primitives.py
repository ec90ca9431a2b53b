"""FP8 primitives against float64 arithmetic: scales, rounding, padding, and the exact emulated GEMM."""
from __future__ import annotations

import torch

from omnigen2_fp8.fp8 import primitives as P


def e4m3_half_step(v: torch.Tensor) -> torch.Tensor:
    """Half the e4m3 spacing at |v| (3 mantissa bits; subnormal spacing 2^-9 below 2^-6)."""
    exp = torch.floor(torch.log2(v.abs().clamp_min(2.0**-6)))
    return 2.0 ** (exp - 3) / 2


def test_weight_quantization_per_channel_rounds_to_nearest_and_pads():
    torch.manual_seed(0)
    w = torch.randn(40, 100, dtype=torch.float64) * torch.logspace(-3, 1, 40, dtype=torch.float64)[:, None]
    q, scale = P.quantize_weight(w, per_channel=True, pad_multiple=16)
    assert q.dtype == P.FP8_DTYPE and q.shape == (48, 112) and scale.shape == (48,) and scale.dtype == torch.float32
    ratio = w / scale[:40, None].double()
    assert torch.allclose(ratio.abs().amax(1), torch.full((40,), 448.0, dtype=torch.float64), rtol=1e-6)
    err = (q[:40, :100].double() - ratio).abs()
    assert (err <= e4m3_half_step(ratio) * (1 + 1e-9)).all()
    assert (q[40:].view(torch.uint8) == 0).all() and (q[:, 100:].view(torch.uint8) == 0).all()
    assert (scale[40:] == 1).all()


def test_weight_quantization_per_tensor_shares_one_scale():
    w = torch.randn(20, 32)
    _, scale = P.quantize_weight(w, per_channel=False)
    assert torch.all(scale[:20] == scale[0])
    assert torch.isclose(scale[0], w.abs().max() / 448)


def test_activation_quantization_per_token_and_zero_rows():
    x = torch.randn(6, 50, dtype=torch.bfloat16)
    x[2] = 0
    q, s = P.quantize_activation(x, 64, per_token=True)
    assert q.shape == (6, 64) and s.shape == (6, 1)
    assert not torch.isnan(q.float()).any()
    assert (q[2].float() == 0).all()
    nonzero = [i for i in range(6) if i != 2]
    assert (q[nonzero, :50].float().abs().amax(1) == 448).all()  # each row uses the full e4m3 range
    assert (q[:, 50:].view(torch.uint8) == 0).all()


def test_cast_saturates_instead_of_nan():
    q = P.cast_to_e4m3(torch.tensor([1e6, -1e6, 449.0, 500.0]))
    assert q.float().tolist() == [448.0, -448.0, 448.0, 448.0]


def test_emulated_gemm_equals_float64_dequantized_matmul():
    torch.manual_seed(1)
    x, w = torch.randn(9, 40), torch.randn(24, 40)
    xq, xs = P.quantize_activation(x, 48)
    wq, ws = P.quantize_weight(w, per_channel=True)
    got = P.emulated_scaled_mm(xq, xs, wq, ws, torch.float64)
    want = (xq.double() * xs.double()) @ (wq.double() * ws.double()[:, None]).t()
    assert torch.allclose(got, want, rtol=1e-12, atol=0)


def test_padding_is_exact():
    """Padded vs unpadded emulation: identical bits (float64 sums of e4m3 products are exact in any order)."""
    torch.manual_seed(2)
    x, w = torch.randn(13, 120, dtype=torch.bfloat16), torch.randn(200, 120)
    xq, xs = P.quantize_activation(x, 120)
    wq, ws = P.quantize_weight(w, per_channel=True, pad_multiple=16)  # [208, 128]
    xq_pad, xs_pad = P.quantize_activation(x, 128)
    unpadded = P.emulated_scaled_mm(xq, xs, wq[:200, :120], ws[:200], torch.bfloat16)
    padded = P.emulated_scaled_mm(xq_pad, xs_pad, wq, ws, torch.bfloat16)[:, :200]
    assert torch.equal(unpadded, padded)
    assert torch.equal(xq_pad[:, :120].view(torch.uint8), xq.view(torch.uint8))


def test_round_up_and_pad():
    assert [P.round_up(n, 16) for n in (1, 16, 2520, 840, 4200, 10240)] == [16, 16, 2528, 848, 4208, 10240]
    t = torch.ones(3, 5)
    assert P.pad_2d(t, 4, 8).sum() == 15 and P.pad_2d(t, 3, 5) is t
