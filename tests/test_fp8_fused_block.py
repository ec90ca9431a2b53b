"""The fused FP8 block (fp8/fused_block.py) wired through the KernelPlan: same math as the unfused block, installed
where the layers allow, plan flag on for the CUDA plan only, FP8 attention fed by the fused QK-norm + RoPE, golden
tolerance kept. CPU runs use the torch references of the kernels (the Triton ones: test_fp8_fused_kernels.py)."""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from omnigen2_fp8.checkpoints import load_transformer
from omnigen2_fp8.fp8 import Fp8Config, Fp8Linear, Kernel, plan_for, quantize_fp8, save_fp8_checkpoint, use_plan
from omnigen2_fp8.fp8.dispatch import select_kernel_plan
from omnigen2_fp8.fp8.fused_block import fused_block_forward, unfused_blocks
from omnigen2_fp8.transformer import OmniGen2Transformer, TransformerConfig

from golden_cases import find_case, transformer_batch_call

FUSED_REFERENCE = plan_for(Kernel.TORCH_REFERENCE, fused_block=True)


def tiny(dtype=torch.float32) -> OmniGen2Transformer:
    torch.manual_seed(0)
    model = OmniGen2Transformer(TransformerConfig.from_name("tiny")).eval().to(dtype)
    with torch.no_grad():  # non-trivial norm weights, so a swapped or missing weight shows
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def ragged_call(dtype=torch.float32):
    """Two samples of different sizes, one with a reference: masked blocks and per-sample modulation."""
    g = torch.Generator().manual_seed(0)
    lat = [torch.randn(16, 8, 8, generator=g).to(dtype), torch.randn(16, 6, 10, generator=g).to(dtype)]
    refs = [[torch.randn(16, 8, 6, generator=g).to(dtype)], None]
    text = torch.randn(2, 7, 64, generator=g).to(dtype)
    mask = torch.ones(2, 7)
    mask[1, 5:] = 0
    return lat, torch.tensor([0.3, 0.7]), text, mask, refs


def rel(a, b) -> float:
    return max(float((x.float() - y.float()).norm() / y.float().norm()) for x, y in zip(a, b))


def run(model, plan, call):
    use_plan(model, plan)
    with torch.no_grad():
        return model(*call)


def test_fused_block_is_the_block_math_exactly_in_float32():
    # Without BF16 roundings between ops the fused path computes what the unfused one does, op for op.
    model = tiny()
    report = quantize_fp8(model, Fp8Config())
    assert len(report.fused_blocks) == 5 and "fused block kernels in 5 blocks" in str(report)
    call = ragged_call()
    unfused, fused = run(model, plan_for(Kernel.TORCH_REFERENCE), call), run(model, FUSED_REFERENCE, call)
    for u, f in zip(unfused, fused):
        torch.testing.assert_close(f, u, rtol=1e-5, atol=1e-6)


def test_bf16_fused_block_is_as_close_to_bf16_as_unfused_fp8():
    model = tiny(torch.bfloat16)
    call = ragged_call(torch.bfloat16)
    with torch.no_grad():
        exact = model(*call)
    quantize_fp8(model, Fp8Config())
    unfused, fused = run(model, plan_for(Kernel.TORCH_REFERENCE), call), run(model, FUSED_REFERENCE, call)
    assert 0 < rel(fused, unfused) < rel(unfused, exact)  # it differs (float32 inside), by less than FP8's error
    assert rel(fused, exact) < 1.25 * rel(unfused, exact)


def test_plan_flag_off_runs_the_unfused_block_bit_for_bit():
    model = tiny(torch.bfloat16)
    quantize_fp8(model, Fp8Config())
    plain = copy.deepcopy(model)
    for block in plain.blocks():
        block.fused_forward = None  # nothing installed at all
    call = ragged_call(torch.bfloat16)
    for a, b in zip(run(model, plan_for(Kernel.TORCH_REFERENCE), call), run(plain, plan_for(Kernel.TORCH_REFERENCE),
                                                                              call)):
        assert torch.equal(a, b)


def test_the_flag_is_on_for_the_triton_kernels_by_default_and_can_be_forced():
    # on for the CUDA default (faster with CUDA graphs on an H200, results/perf_recipes_h200_fused_block_default.json);
    # the reference kernels keep the block as the official code writes it
    assert plan_for(Kernel.CUBLAS_PADDED).fused_block
    assert select_kernel_plan(Kernel.AUTO, "cpu") == plan_for(Kernel.TORCH_REFERENCE)
    assert not any(plan_for(k).fused_block for k in (Kernel.TORCH_REFERENCE, Kernel.CUBLAS_TORCH_QUANT,
                                                     Kernel.CUBLAS_INDUCTOR_QUANT))
    assert not plan_for(Kernel.CUBLAS_PADDED, fused_block=False).fused_block
    assert plan_for(Kernel.TORCH_REFERENCE, fused_block=True).fused_block


def test_named_block_ops_run_their_torch_reference_in_a_triton_plan():
    import dataclasses

    from omnigen2_fp8.fp8 import fused_kernels, fused_reference
    from omnigen2_fp8.fp8.dispatch import BLOCK_OPS

    assert all(callable(getattr(fused_reference, name)) for name in BLOCK_OPS)
    plan = dataclasses.replace(plan_for(Kernel.CUBLAS_PADDED, fused_block=True), reference_block_ops=("qk_norm_rope",))
    like = torch.zeros(1)
    chosen = plan._block_op(fused_reference.qk_norm_rope, fused_kernels.qk_norm_rope_triton, None, like)
    assert chosen is fused_reference.qk_norm_rope
    norm = plan._block_op(fused_reference.modulated_rmsnorm_quant, fused_kernels.modulated_rmsnorm_quant_triton,
                          None, like)
    assert norm is not fused_reference.modulated_rmsnorm_quant  # the Triton kernel (bound to its e4m3 encoder)
    with pytest.raises(ValueError, match="unknown ops \\['qk_rope'\\]"):
        dataclasses.replace(plan, reference_block_ops=("qk_rope",))


def test_blocks_whose_layers_cannot_fuse_stay_unfused_and_the_report_says_why():
    model = tiny()
    report = quantize_fp8(model, Fp8Config(exclude=["re:layers\\.0\\.attn\\.to_out\\.0", "module:norm1.linear"]))
    assert "layers.0" not in report.fused_blocks and "layers.1" in report.fused_blocks
    assert model.layers[0].fused_forward is None and model.layers[1].fused_forward is fused_block_forward
    assert any("blocks left unfused (1)" in n and "output projection is not FP8" in n for n in report.notes)
    per_tensor = tiny()
    report = quantize_fp8(per_tensor, Fp8Config(activation_granularity="per_tensor"))
    assert report.fused_blocks == [] and any("per-token" in n for n in report.notes)
    unfolded = tiny()
    assert quantize_fp8(unfolded, Fp8Config(fuse_swiglu=False)).fused_blocks == []


def test_fp8_linear_takes_an_already_quantized_input():
    torch.manual_seed(0)
    layer = Fp8Linear.from_linear(torch.nn.Linear(120, 200, bias=True), Fp8Config())
    x = torch.randn(6, 120)
    xq, x_scale = layer.quantize_input(x)
    torch.testing.assert_close(layer.forward_quantized(xq, x_scale, x.dtype), layer(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="has a bias"):
        layer.forward_quantized(xq, x_scale, x.dtype, keep_padding=True)
    with pytest.raises(ValueError, match=r"e4m3 \[M, 128\]"):
        layer.forward_quantized(x, x_scale, x.dtype)
    no_bias = Fp8Linear.from_linear(torch.nn.Linear(120, 200, bias=False), Fp8Config())
    padded = no_bias.forward_quantized(xq, x_scale, x.dtype, keep_padding=True)
    assert padded.shape == (6, 208) and torch.equal(padded[:, :200], no_bias(x))


def test_fp8_attention_takes_its_quantized_q_and_k_from_the_fused_kernel(monkeypatch):
    from omnigen2_fp8.fp8 import fused_reference

    model = tiny(torch.bfloat16)
    call = ragged_call(torch.bfloat16)
    one = ([call[0][0]], call[1][:1], call[2][:1], call[3][:1], call[4][:1])  # unmasked: FP8 attention runs
    with torch.no_grad():
        exact = model(*one)
    report = quantize_fp8(model, Fp8Config(attention="fp8"))  # emulated on the CPU
    assert len(report.fp8_attention) == 5
    unfused = run(model, plan_for(Kernel.TORCH_REFERENCE), one)
    descaled = []
    original = fused_reference.qk_norm_rope
    monkeypatch.setattr(fused_reference, "qk_norm_rope",
                        lambda *args: descaled.append(args[8] is not None) or original(*args))
    fused = run(model, FUSED_REFERENCE, one)
    assert descaled == [True] * 5  # every block's q/k came out of the fused kernel as e4m3
    assert rel(fused, unfused) < rel(unfused, exact)
    assert rel(fused, exact) < 1.25 * rel(unfused, exact)


def test_hooks_on_the_attention_core_fire_inside_unfused_blocks():
    from omnigen2_fp8.fp8.attention import Fp8Sdpa

    model = tiny(torch.bfloat16)
    quantize_fp8(model, Fp8Config(attention="fp8"))
    call = ragged_call(torch.bfloat16)
    one = ([call[0][0]], call[1][:1], call[2][:1], call[3][:1], call[4][:1])
    seen = []
    for m in model.modules():
        if isinstance(m, Fp8Sdpa):
            m.register_forward_hook(lambda mod, args, out: seen.append(args[0].dtype))
    run(model, FUSED_REFERENCE, one)
    assert seen == []  # the fused path hands e4m3 q/k to forward_quantized: no module call to hook
    with unfused_blocks(model):
        run(model, FUSED_REFERENCE, one)
    assert seen == [torch.bfloat16] * 5
    assert all(block.fused_forward is fused_block_forward for block in model.blocks())  # restored


def test_a_loaded_fp8_checkpoint_gets_the_fused_blocks(tmp_path):
    model = tiny(torch.bfloat16)
    quantize_fp8(model, Fp8Config())
    loaded = load_transformer(save_fp8_checkpoint(model, tmp_path / "transformer"))
    assert all(block.fused_forward is fused_block_forward for block in loaded.blocks())
    call = ragged_call(torch.bfloat16)
    for a, b in zip(run(loaded, FUSED_REFERENCE, call), run(model, FUSED_REFERENCE, call)):
        assert torch.equal(a, b)


def test_golden_model_fused_stays_within_the_fp8_tolerance(golden_dir):
    case = find_case("transformer_batch", golden_dir)
    model = load_transformer(case / "transformer")
    io = load_file(str(case / "io.safetensors"))
    quantize_fp8(model)
    use_plan(model, FUSED_REFERENCE)
    with torch.no_grad():
        out = model(*transformer_batch_call(io))
    for i, y in enumerate(out):
        want = io[f"output.{i}"]
        assert float((y - want).norm() / want.norm()) < 0.15, i  # test_fp8_quantize's bar for the unfused model


@pytest.mark.gpu
def test_gpu_fused_fp8_model_matches_unfused_within_fp8_error(golden_dir):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability 8.9+")
    case = find_case("transformer_batch", golden_dir)
    model = load_transformer(case / "transformer", dtype=torch.bfloat16, device="cuda")
    io = {k: v.cuda() for k, v in load_file(str(case / "io.safetensors")).items()}
    call = ([io["latent.0"].bfloat16(), io["latent.1"].bfloat16()], io["timestep"],
            io["text_hidden_states"].bfloat16(), io["text_attention_mask"],
            [[io["ref.0.0"].bfloat16(), io["ref.0.1"].bfloat16()], [io["ref.1.0"].bfloat16()]])
    report = quantize_fp8(model)
    assert report.fused_blocks and model.layers[0].attn.to_qkv.kernel_plan().fused_block  # installed, on
    fused = run(model, plan_for(Kernel.CUBLAS_PADDED, fused_block=True), call)
    unfused = run(model, plan_for(Kernel.CUBLAS_PADDED, fused_block=False), call)
    for i, (f, u) in enumerate(zip(fused, unfused)):
        want = io[f"output.{i}"].float()
        fused_err, unfused_err = (float((y.float() - want).norm() / want.norm()) for y in (f, u))
        assert fused_err < 0.15 and fused_err < 1.25 * unfused_err + 1e-3, (i, fused_err, unfused_err)
