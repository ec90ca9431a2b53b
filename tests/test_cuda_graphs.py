"""CUDA-graph replay of transformer passes: same numbers as eager, one capture per signature."""
from __future__ import annotations

import pytest
import torch

from omnigen2_fp8 import OmniGen2Transformer, TransformerConfig
from omnigen2_fp8.cuda_graphs import CudaGraphForward, GraphedCalls, switches_key
from omnigen2_fp8.fp8.attention import enable_fp8_attention
from omnigen2_fp8.synthetic import build_synthetic_pipeline


def tiny_inputs(device, text_len=6, ref=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 16, 8, 8, generator=g).to(device)
    refs = [[torch.randn(16, 8, 8, generator=g).to(device)]] if ref else None
    text = torch.randn(1, text_len, 64, generator=g).to(device)
    mask = torch.ones(1, text_len, dtype=torch.bool)
    t = torch.rand(1, generator=g).to(device)
    return latents, t, text, mask, refs


def test_cpu_calls_run_eagerly_and_match():
    torch.manual_seed(0)
    model = OmniGen2Transformer(TransformerConfig.from_name("tiny")).eval()
    wrapped = CudaGraphForward(model)
    latents, t, text, mask, refs = tiny_inputs("cpu")
    with torch.no_grad():
        assert torch.equal(wrapped(latents, t, text, mask, ref_latents=refs),
                           model(latents, t, text, mask, ref_latents=refs))
    assert wrapped.captures == 0 and wrapped.replays == 0


def test_graphed_calls_run_cpu_tensors_directly():
    calls = GraphedCalls()
    x = torch.randn(3, 4)
    assert torch.equal(calls("double", lambda t: 2 * t, [x], owner=torch.nn.Linear(1, 1)), 2 * x)
    assert (calls.captures, calls.replays) == (0, 0)


def test_graphs_and_offload_are_refused_together():
    with pytest.raises(ValueError, match="cannot be combined with offload"):
        build_synthetic_pipeline("tiny", device="cpu", dtype=torch.float32, cuda_graphs=True, offload=True)


@pytest.mark.gpu
def test_replays_match_eager_on_cuda():
    torch.manual_seed(0)
    model = OmniGen2Transformer(TransformerConfig.from_name("tiny")).cuda().eval()
    wrapped = CudaGraphForward(model, max_graphs=3)
    with torch.no_grad():
        for step in range(3):  # new inputs of the same signature every step, as in a denoising loop
            for text_len, ref in ((6, True), (4, True), (4, False)):  # three CFG-like branches
                args = tiny_inputs("cuda", text_len, ref, seed=10 * step + text_len)
                expected = model(*args[:4], ref_latents=args[4])
                got = wrapped(*args[:4], ref_latents=args[4])
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        assert wrapped.disabled_reason is None
        assert wrapped.captures == 3 and wrapped.replays == 6
        args = tiny_inputs("cuda", 9, True, seed=99)  # a fourth signature evicts the least recently used graph
        torch.testing.assert_close(wrapped(*args[:4], ref_latents=args[4]), model(*args[:4], ref_latents=args[4]),
                                   rtol=1e-5, atol=1e-5)
    assert wrapped.captures == 4 and len(wrapped.passes._graphs) == 3


@pytest.mark.gpu
def test_graphed_calls_capture_once_per_signature_and_replay_new_inputs():
    layer = torch.nn.Linear(8, 8).cuda()
    calls = GraphedCalls(max_graphs=2)
    with torch.no_grad():
        for rows in (4, 4, 4, 6, 4):
            x = torch.randn(rows, 8, device="cuda")
            torch.testing.assert_close(calls("layer", lambda t: layer(t).relu(), [x], owner=layer), layer(x).relu())
    assert (calls.captures, calls.replays, calls.disabled_reason) == (2, 3, None)
    with torch.no_grad():
        layer.cpu().cuda()  # the weights moved: graphs holding the old addresses are dropped
        x = torch.randn(4, 8, device="cuda")
        torch.testing.assert_close(calls("layer", lambda t: layer(t).relu(), [x], owner=layer), layer(x).relu())
    assert calls.captures == 3


@pytest.mark.gpu
def test_graphs_are_dropped_when_the_weights_move():
    torch.manual_seed(0)
    model = OmniGen2Transformer(TransformerConfig.from_name("tiny")).cuda().eval()
    wrapped = CudaGraphForward(model)
    args = tiny_inputs("cuda")
    with torch.no_grad():
        wrapped(*args[:4], ref_latents=args[4])
        model.cpu().cuda()  # new GPU storage for every weight, as when a harness parks a model on the CPU
        torch.testing.assert_close(wrapped(*args[:4], ref_latents=args[4]), model(*args[:4], ref_latents=args[4]),
                                   rtol=1e-5, atol=1e-5)
    assert wrapped.captures == 2


@pytest.mark.gpu
def test_paused_replays_run_the_model_and_keep_the_graphs_and_clear_drops_them():
    torch.manual_seed(0)
    model = OmniGen2Transformer(TransformerConfig.from_name("tiny")).cuda().eval()
    wrapped = CudaGraphForward(model)
    args = tiny_inputs("cuda")
    with torch.no_grad():
        wrapped(*args[:4], ref_latents=args[4])  # captures
        with wrapped.paused():  # e.g. under torch.profiler: every kernel launched by its own op
            torch.testing.assert_close(wrapped(*args[:4], ref_latents=args[4]),
                                       model(*args[:4], ref_latents=args[4]), rtol=1e-5, atol=1e-5)
        assert (wrapped.captures, wrapped.replays) == (1, 0)
        wrapped(*args[:4], ref_latents=args[4])
        assert (wrapped.captures, wrapped.replays) == (1, 1)  # the graph captured before the pause replays after it
        wrapped.clear()  # frees the graph (and its pool): the next call captures again
        torch.testing.assert_close(wrapped(*args[:4], ref_latents=args[4]), model(*args[:4], ref_latents=args[4]),
                                   rtol=1e-5, atol=1e-5)
    assert (wrapped.captures, wrapped.replays) == (2, 1)


def test_the_fp8_attention_step_switch_joins_every_graph_key():
    torch.manual_seed(0)
    model = OmniGen2Transformer(TransformerConfig.from_name("tiny")).eval()
    assert switches_key(model) == ()
    enable_fp8_attention(model, emulate=True, exclude_steps=("0",))
    on = switches_key(model)
    model.fp8_attention_steps.select(0, 2)
    assert switches_key(model) != on
    model.fp8_attention_steps.select(1, 2)
    assert switches_key(model) == on


@pytest.mark.gpu
def test_each_setting_of_the_fp8_attention_switch_is_its_own_graph():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    torch.manual_seed(0)
    model = OmniGen2Transformer(TransformerConfig.from_name("tiny")).cuda().eval()
    enable_fp8_attention(model, emulate=True, exclude_steps=("0",))  # emulated: any CUDA GPU
    wrapped = CudaGraphForward(model)
    outputs = {}
    with torch.no_grad():
        for step in (0, 1, 0, 1):
            model.fp8_attention_steps.select(step, 2)
            args = tiny_inputs("cuda", seed=7)  # the same inputs: only the switch differs
            got = wrapped(*args[:4], ref_latents=args[4])
            torch.testing.assert_close(got, model(*args[:4], ref_latents=args[4]), rtol=1e-5, atol=1e-5)
            outputs.setdefault(step, got)
    assert wrapped.disabled_reason is None and wrapped.captures == 2 and wrapped.replays == 2
    assert not torch.equal(outputs[0], outputs[1])
