"""harness.profile's taxonomy, kernels and fallbacks: categories, profiler parsing, and the FP8 fallback detector
on real profiler output."""
from __future__ import annotations

import csv
import warnings

import pytest
import torch

from harness.core.timing import StageTimer
from harness.core.vocab import KERNEL_CATEGORIES
from harness.profile import fallbacks, kernels, taxonomy
from harness.profile.arms import layer_policy
from omnigen2_fp8.fp8.config import Fp8Config, Kernel
from omnigen2_fp8.fp8.dispatch import plan_for
from omnigen2_fp8.fp8.linear import Fp8Linear
from omnigen2_fp8.fp8.quantize import quantize_fp8
from omnigen2_fp8.profiling import layer_ranges
from omnigen2_fp8.transformer import OmniGen2Transformer, TransformerConfig


@pytest.mark.parametrize("name, op, expected", [
    # cuBLASLt / CUTLASS FP8 GEMMs (launched by aten::_scaled_mm, or recognisable by the e4m3 type in the name)
    ("sm90_xmma_gemm_e4m3bf16_e4m3f32_f32_tn_n_tilesize128x128x128_warpgroupsize1x1x1_execute_segment_k_off",
     "aten::_scaled_mm", "gemm-fp8"),
    # names seen on the lent H100 (results/fp8_transformer_h100.json)
    ("nvjet_sm90_qqtst_128x160_128x5_2x1_v_bz_coopA_algo2_TNT", "aten::_scaled_mm", "gemm-fp8"),
    ("nvjet_sm90_qqtst_320x64_128x4_1x2_h_bz_coopB_algo2_TNN", None, "gemm-fp8"),
    ("nvjet_sm90_tst_128x8_64x12_4x1_v_bz_bias_TNT", "aten::addmm", "gemm-bf16"),
    ("nvjet_sm90_tst_128x8_64x12_4x1_v_bz_bias_TNT", None, "gemm-bf16"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x128_4x1x1_cga1x1x1_kernel0_0",
     "aten::_cudnn_attention_forward", "attention"),
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float, false>(int)",
     "aten::native_layer_norm", "norm-elementwise"),
    ("void at::native::vectorized_elementwise_kernel<8, at::native::tanh_kernel_cuda(at::TensorIteratorBase&)>",
     "aten::tanh", "norm-elementwise"),
    ("void cutlass::device_kernel<cutlass3x_sm90_tensorop_gemm_e4m3_e4m3_f32_bf16>", None, "gemm-fp8"),
    ("scaled_mm_kernel", "layer::layers.0.attn.to_qkv", "gemm-fp8"),  # vLLM's Triton fallback
    ("Memset (Device)", "aten::_scaled_mm", "gemm-fp8"),  # cuBLASLt workspace clearing, part of the GEMM
    # BF16 GEMMs
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1", "aten::mm", "gemm-bf16"),
    ("nvjet_tst_192x192_64x4_2x1_v_bz_coopB_TNT", "aten::addmm", "gemm-bf16"),
    ("ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_stages_64x3_tn", "aten::mm", "gemm-bf16"),
    ("void splitKreduce_kernel<32, 16, int, float, __nv_bfloat16>", "aten::mm", "gemm-bf16"),
    ("void gemv2T_kernel_val<int, int, __nv_bfloat16, float, 128, 16, 4, 4>", "aten::addmm", "gemm-bf16"),
    ("cutlass_80_simt_sgemm_128x128_8x4_nn_align1", "aten::mm", "gemm-bf16"),  # fp32 fallback GEMM
    # attention
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4>>",
     "aten::_flash_attention_forward", "attention"),
    ("cudnn_generated_fort_native_sdpa_sm90_knob_7_64x128x128_4x1x1_kernel0_0", "aten::_cudnn_attention_forward",
     "attention"),
    ("fmha_cutlassF_bf16_aligned_64x128_rf_sm80", "aten::_efficient_attention_forward", "attention"),
    # our fused activation quantization, and casts to e4m3
    ("_quantize_rows_kernel", "omnigen2_fp8::quantize_activation", "quant"),
    ("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda, c10::Float8_e4m3fn>",
     "aten::copy_", "quant"),
    # copies, norms / elementwise, other
    ("Memcpy HtoD (Pageable -> Device)", "aten::copy_", "memcpy"),
    ("void at::native::(anonymous namespace)::CatArrayBatchedCopy<bf16>", "aten::cat", "memcpy"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::silu_kernel>", "aten::silu", "norm-elementwise"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, MeanOps>>", "aten::mean",
     "norm-elementwise"),
    ("triton_poi_fused_add_mul_0", None, "norm-elementwise"),
    # inductor names a kernel after its consumers too: QK-norm + RoPE feeding SDPA is no attention kernel, a norm
    # feeding the quantization op no quantization; an absmax or a clamped cast to e4m3 is
    ("triton_red_fused__fused_rms_norm__scaled_dot_product_cudnn_attention__to_copy_add_mul_select_view_1", None,
     "norm-elementwise"),
    ("triton_red_fused__fused_rms_norm_add_mul_quantize_activation_split_unsqueeze_view_0", None,
     "norm-elementwise"),
    ("triton_red_fused_abs_amax_slice_split_with_sizes_view_3", None, "quant"),
    ("triton_poi_fused__to_copy_clamp_clamp_min_constant_pad_nd_cudnn_fp8_sdpa_div_slice_view_5", None, "quant"),
    ("triton_poi_fused__scaled_mm__to_copy__unsafe_view_clamp_min_clone_constant_pad_nd_view_8", None, "quant"),
    ("triton_tem_fused_mm_0", None, "gemm-bf16"),
    ("some_unheard_of_kernel", None, "other"),
    # CPU op names (CI)
    ("aten::_scaled_mm", None, "gemm-fp8"),
    ("aten::mm", None, "gemm-bf16"),
    ("aten::addmm", None, "gemm-bf16"),
    ("aten::scaled_dot_product_attention", None, "attention"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", None, "attention"),
    ("omnigen2_fp8::quantize_activation", None, "quant"),
    ("aten::copy_", None, "memcpy"),
    ("aten::rms_norm", None, "norm-elementwise"),
    ("aten::native_layer_norm", None, "norm-elementwise"),
])
def test_categories(name, op, expected):
    assert taxonomy.categorize(name, op) == expected


def test_non_gemm_work_inside_an_fp8_layer_counts_as_quantization_overhead():
    assert taxonomy.categorize("aten::abs", None, in_fp8_layer=True) == "quant"
    assert taxonomy.categorize("aten::abs", None) == "norm-elementwise"
    assert taxonomy.categorize("aten::_scaled_mm", None, in_fp8_layer=True) == "gemm-fp8"


# ----------------------------------------------------------------------------------------- real tiny-model runs
@pytest.fixture(scope="module")
def tiny_inputs():
    config = TransformerConfig.from_name("tiny")
    g = torch.Generator().manual_seed(0)
    latents = [torch.randn(16, 8, 8, generator=g).bfloat16()]
    text = torch.randn(1, 7, config.text_feat_dim, generator=g).bfloat16()
    refs = [[torch.randn(16, 8, 8, generator=g).bfloat16()]]
    return config, latents, text, torch.ones(1, 7, dtype=torch.long), refs


def _tiny_model(config) -> OmniGen2Transformer:
    torch.manual_seed(0)
    return OmniGen2Transformer(config).to(torch.bfloat16).eval()


def _profile(model, inputs, steps=2):
    """Run `steps` transformer forwards as denoise steps under the profiler, with layer ranges."""
    _, latents, text, mask, refs = inputs
    timer = StageTimer("cpu")
    with torch.no_grad(), kernels.capture("cpu") as prof, layer_ranges(model) as layer_calls:
        with timer("denoise"):
            for _ in range(steps):
                with timer("denoise_step"):
                    model(latents, torch.tensor([0.5]), text, mask, ref_latents=refs)
    return kernels.parse_profile(prof, "cpu"), dict(layer_calls)


def _fp8_model(config, kernel_on_cpu: Kernel) -> tuple[OmniGen2Transformer, dict[str, str]]:
    model = _tiny_model(config)
    report = quantize_fp8(model, Fp8Config())
    for m in model.modules():
        if isinstance(m, Fp8Linear):
            # Fp8Linear resolves every non-reference kernel to an error on the CPU, although torch._scaled_mm has a
            # CPU implementation; pin the resolved kernel so these layers run the same op sequence as on a GPU.
            m.use_plan(plan_for(kernel_on_cpu))
    return model, layer_policy(model, report)


def test_bf16_run_tables_and_stage_sums(tiny_inputs, tmp_path):
    model = _tiny_model(tiny_inputs[0])
    capture, layer_calls = _profile(model, tiny_inputs)
    assert capture.steps == 2 and capture.device_kind == "cpu"
    rows = kernels.kernel_table(capture)
    by_name = {r.name: r for r in rows}
    # every linear call is exactly one GEMM op (linear -> addmm / matmul -> mm counted once)
    linears_per_step = sum(layer_calls.values()) / 2
    gemm_calls = sum(r.calls for r in rows if r.name in ("aten::mm", "aten::addmm")) / 2
    assert gemm_calls == linears_per_step
    assert by_name["aten::scaled_dot_product_attention"].category == "attention"
    assert sum(r.share for r in rows) == pytest.approx(1.0)
    roll = kernels.category_rollup(rows, capture.steps)
    assert list(roll) == list(KERNEL_CATEGORIES) and roll["gemm-fp8"]["calls"] == 0
    assert roll["gemm-bf16"]["share"] > 0
    stages = kernels.stage_kernel_summary(capture)
    assert stages["denoise_step"]["entries"] == 2 and stages["denoise"]["entries"] == 1
    assert stages["denoise"]["kernel_us"] == pytest.approx(stages["denoise_step"]["kernel_us"], rel=1e-6)
    report = fallbacks.detect_fallbacks(capture, layer_policy(model, None), layer_calls=layer_calls,
                                        expect_fp8=False)
    assert not report.checked and not report.fallback_detected
    assert report.bf16_gemm_calls_per_step == linears_per_step
    kernels.write_kernel_csv(tmp_path / "k.csv", rows)
    with open(tmp_path / "k.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and table[0]["name"] == rows[0].name and "category" in table[0]


def test_fp8_run_on_the_scaled_gemm_is_clean(tiny_inputs):
    model, precisions = _fp8_model(tiny_inputs[0], Kernel.CUBLAS_TORCH_QUANT)
    capture, layer_calls = _profile(model, tiny_inputs)
    # forward_swiglu (the folded down projection) is called directly, and still gets its range and count
    assert any(name.endswith("feed_forward.linear_2") for name in layer_calls)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = fallbacks.detect_fallbacks(capture, precisions, layer_calls=layer_calls)
        fallbacks.warn_fallbacks("fp8", report)
    assert report.checked and not report.fallback_detected, report.findings
    fp8_layers = sum(1 for p in precisions.values() if p == "fp8")
    assert report.fp8_gemm_calls_per_step == report.expected_fp8_linear_calls_per_step == fp8_layers
    assert report.bf16_gemm_calls_per_step == report.expected_bf16_linear_calls_per_step
    rows = kernels.kernel_table(capture, {f for f, p in precisions.items() if p == "fp8"})
    assert {r.name: r.category for r in rows}["aten::_scaled_mm"] == "gemm-fp8"


def test_fallback_gemms_in_fp8_layers_are_detected_and_named(tiny_inputs, capsys):
    # The deliberate fallback: the same e4m3 weights, but the GEMM is a dequantised high-precision matmul
    # (what an FP8 layer runs when no FP8 tensor-core kernel takes its shapes).
    model, precisions = _fp8_model(tiny_inputs[0], Kernel.TORCH_REFERENCE)
    capture, layer_calls = _profile(model, tiny_inputs)
    report = fallbacks.detect_fallbacks(capture, precisions, layer_calls=layer_calls)
    kinds = {f.kind for f in report.findings}
    assert report.fallback_detected
    assert {"bf16-gemm-in-fp8-layer", "fp8-layer-without-fp8-gemm", "excess-bf16-gemms"} <= kinds
    named = next(f for f in report.findings if f.kind == "bf16-gemm-in-fp8-layer").names
    assert "layers.0.attn.to_qkv" in named and "layers.1.feed_forward.linear_2" in named
    assert not any(n.endswith("norm1.linear") for n in named)  # kept in BF16 by the policy: not a fallback
    assert report.fp8_gemm_calls_per_step == 0
    with pytest.warns(fallbacks.FallbackKernelWarning, match="bf16-gemm-in-fp8-layer"):
        fallbacks.warn_fallbacks("fp8-nopad", report)
    assert "FP8 FALLBACK DETECTED in arm 'fp8-nopad'" in capsys.readouterr().err


def test_layer_policy_mismatch_is_caught_by_counts_without_ranges(tiny_inputs):
    # A layer the policy says is FP8 but that stayed nn.Linear: without layer ranges (torch.compile), the
    # per-step GEMM counts still expose it.
    model = _tiny_model(tiny_inputs[0])
    capture, layer_calls = _profile(model, tiny_inputs)
    precisions = layer_policy(model, None)
    precisions["layers.0.attn.to_out.0"] = "fp8"
    report = fallbacks.detect_fallbacks(capture, precisions, layer_calls=None)
    assert report.method == "kernel names and GEMM call counts"
    report = fallbacks.detect_fallbacks(capture, precisions, layer_calls=layer_calls)
    kinds = {f.kind: f for f in report.findings}
    assert kinds["bf16-gemm-in-fp8-layer"].names == ["layers.0.attn.to_out.0"]
    assert kinds["excess-bf16-gemms"].calls == 2  # one extra BF16 GEMM per step, two steps


def test_triton_scaled_mm_kernel_names_are_flagged():
    calls = [kernels.KernelCall("scaled_mm_kernel", "layer::layers.0.attn.to_qkv", "layers.0.attn.to_qkv",
                          "denoise_step", 0, 950.0),
             kernels.KernelCall("sm90_xmma_gemm_e4m3bf16_e4m3f32_f32_tn_n_tilesize128x128x128", "aten::_scaled_mm",
                          "layers.0.attn.to_out.0", "denoise_step", 0, 20.0)]
    capture = kernels.ProfileCapture("cuda", calls, {}, {}, [("aten::_scaled_mm", "layers.0.attn.to_out.0", 0)], 1)
    report = fallbacks.detect_fallbacks(capture, {"layers.0.attn.to_qkv": "fp8", "layers.0.attn.to_out.0": "fp8"},
                                layer_calls={"layers.0.attn.to_qkv": 1, "layers.0.attn.to_out.0": 1})
    kinds = {f.kind: f for f in report.findings}
    assert kinds["triton-scaled-mm"].names == ["scaled_mm_kernel"] and kinds["triton-scaled-mm"].total_us == 950.0
    assert kinds["fp8-layer-without-fp8-gemm"].names == ["layers.0.attn.to_qkv"]
    assert "non-tensor-core-scaled-gemm" not in kinds  # the xmma kernel is a tensor-core GEMM


def test_direct_calls_of_fp8_entry_points_are_ranged_and_counted_once():
    # The folded SwiGLU's fast path calls quantize_input / matmul_unscaled / matmul / finish directly, not forward.
    torch.manual_seed(0)
    parent = torch.nn.Module()
    parent.up = Fp8Linear.from_linear(torch.nn.Linear(32, 64).bfloat16(), Fp8Config(kernel="torch-reference"))
    parent.up.use_plan(plan_for(Kernel.CUBLAS_TORCH_QUANT))  # the GEMM op the GPU runs (see _fp8_model)
    x = torch.randn(8, 32).bfloat16()
    with kernels.capture("cpu") as prof, layer_ranges(parent) as calls:
        timer = StageTimer("cpu")
        with timer("denoise_step"):
            xq, scale = parent.up.quantize_input(x)            # part of a GEMM call: ranged, not counted
            raw = parent.up.matmul_unscaled(xq)                # one GEMM: counted
            parent.up.finish(parent.up.matmul(xq, scale, torch.bfloat16), x.shape[:-1])  # one more GEMM
            parent.up(x)                                       # forward (its inner quantize/matmul: not again)
    assert raw.shape == (8, 64) and calls == {"up": 3}
    capture = kernels.parse_profile(prof, "cpu")
    assert [(op, layer) for op, layer, _ in capture.gemm_ops] == [("aten::_scaled_mm", "up")] * 3
    report = fallbacks.detect_fallbacks(capture, {"up": "fp8"}, layer_calls=calls)
    assert not report.fallback_detected and report.fp8_gemm_calls_per_step == 3


def test_split_k_helper_of_a_cublas_fp8_gemm_is_not_a_fallback():
    calls = [kernels.KernelCall("nvjet_sm90_qqtst_128x160_128x5_2x1_v_bz_coopA_algo2_TNT", "aten::_scaled_mm", "a",
                          "denoise_step", 0, 30.0),
             kernels.KernelCall("void splitKreduce_kernel<32, 16, int, float, __nv_bfloat16>", "aten::_scaled_mm", "a",
                          "denoise_step", 0, 2.0),
             kernels.KernelCall("void gemmSN_TN_kernel<float, 128, 16, 2, 4, 4, 4, true>", "aten::_scaled_mm", "a",
                          "denoise_step", 0, 40.0)]
    capture = kernels.ProfileCapture("cuda", calls, {}, {}, [("aten::_scaled_mm", "a", 0)], 1)
    report = fallbacks.detect_fallbacks(capture, {"a": "fp8"}, layer_calls={"a": 1})
    assert [(f.kind, f.names) for f in report.findings] == [
        ("non-tensor-core-scaled-gemm", ["void gemmSN_TN_kernel<float, 128, 16, 2, 4, 4, 4, true>"])]


def test_kernels_the_profiler_left_unlinked_are_placed_by_their_launch_call():
    # Triton kernels launched from Python are linked to no op by the profiler; their launch call (CPU clock)
    # still falls inside our stage and layer ranges.
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import FunctionEvent

    def ev(id_, name, start, end, device=DeviceType.CPU, linked=0):
        return FunctionEvent(id_, name, thread=1, start_us=start, end_us=end, device_type=device,
                             linked_correlation_id=linked)

    op = ev(10, "aten::_scaled_mm", 150, 200)
    launch = ev(501, "cuLaunchKernelEx", 120, 125, linked=0)
    cpu_events = [op, launch]
    device_events = [ev(500, "nvjet_sm90_qqtst_128x160_128x5_2x1_v_bz_coopA_algo2_TNT", 210, 260,
                        DeviceType.CUDA, linked=10),                       # linked to its op: pass 1 has it
                     ev(501, "_quantize_rows_kernel", 130, 140, DeviceType.CUDA),   # launched inside the layer
                     ev(777, "_quantize_rows_kernel", 600, 610, DeviceType.CUDA)]   # no launch call recorded
    stages = [{"stage": "denoise_step", "step": 0, "start": 0, "end": 1000, "wall": 1000.0, "kernel": 50.0},
              {"stage": "vae_decode", "step": None, "start": 1000, "end": 2000, "wall": 1000.0, "kernel": 0.0}]
    calls: list[kernels.KernelCall] = []
    kernels._place_unlinked_kernels(device_events, cpu_events, stages, [(100, 300, "layers.0.attn.to_qkv")], calls)
    assert [(c.name, c.layer, c.stage, c.step, c.duration_us) for c in calls] == [
        ("_quantize_rows_kernel", "layers.0.attn.to_qkv", "denoise_step", 0, 10.0),
        ("_quantize_rows_kernel", None, "denoise_step", 0, 10.0)]
    assert stages[0]["kernel"] == 70.0 and stages[1]["kernel"] == 0.0
    assert taxonomy.categorize(calls[0].name, calls[0].op, in_fp8_layer=True) == "quant"


def test_unattached_kernels_are_found_without_linked_ids_too():
    # torch < 2.12 FunctionEvents carry no linked correlation id (seen on the lent H100's torch 2.11): the kernels
    # attached to ops are matched off by (name, duration) instead. Stand-ins with only the older attributes:
    from types import SimpleNamespace

    from torch.autograd.profiler_util import Interval, Kernel

    def dev(id_, name, start, end):
        return SimpleNamespace(id=id_, name=name, time_range=Interval(start, end))

    op = SimpleNamespace(id=10, name="aten::_scaled_mm", kernels=[Kernel("nvjet_sm90_qqtst_x", 0, 50.0)],
                         is_async=False)
    devices = [dev(500, "nvjet_sm90_qqtst_x", 210, 260), dev(501, "_quantize_rows_kernel", 130, 140),
               dev(502, "nvjet_sm90_qqtst_x", 300, 340)]  # same name, other duration: not the attached one
    assert [d.id for d in kernels._unattached(devices, [op])] == [501, 502]


def test_transformer_benchmark_sums_kernels_into_the_harness_categories():
    from benchmarks.bench_fp8_transformer import category_ms

    ms = category_ms({"nvjet_sm90_qqtst_128x160_128x5_2x1_v_bz_coopA_algo2_TNT": 3.0,       # cuBLASLt FP8 GEMM
                      "nvjet_sm90_tst_128x8_64x12_4x1_v_bz_bias_TNT": 2.0,                  # BF16 GEMM
                      "_quantize_rows_kernel": 0.5,                                         # omnigen2_fp8's Triton
                      "flash_fwd_kernel": 1.5, "void at::native::vectorized_elementwise_kernel<4>": 0.25})
    assert list(ms) == list(KERNEL_CATEGORIES)
    assert (ms["gemm-fp8"], ms["gemm-bf16"], ms["quant"], ms["attention"], ms["norm-elementwise"]) == (
        3.0, 2.0, 0.5, 1.5, 0.25)
    assert ms["other"] == ms["memcpy"] == 0.0
