"""Kernel taxonomy: which category a kernel (CUDA) or leaf op (CPU) belongs to, from its name and launcher.

Categories (`categorize`, first matching rule wins; names are matched case-insensitively)
- gemm-fp8: launched by aten::_scaled_mm / _scaled_grouped_mm, or a GEMM-like kernel name carrying an FP8 type
  marker (e4m3, e5m2, fp8, float8, f8f8, cuBLASLt `nvjet_*qq*`), or a Triton scaled-mm kernel.
- gemm-bf16: any other GEMM: launched by aten::mm / addmm / bmm / baddbmm / matmul / linear, or a kernel name that
  looks like a GEMM (gemm, gemv, xmma, nvjet, cutlass, wgmma, s16816, tensorop, splitK). On CPU this is "every
  non-FP8 matmul" (CPU op names carry no dtype).
- attention: flash / fmha / efficient / cudnn SDPA kernels, aten::*scaled_dot_product*, *flash_attention*.
- quant: activation quantisation and FP8 casts: kernel names with quant, fp8, float8, e4m3, amax; the Triton
  kernels of omnigen2_fp8/fp8/kernels.py; and every non-GEMM kernel launched inside an FP8 layer's range (the
  layer's quantise / pad / slice overhead).
- memcpy: Memcpy / Memset, copy and concatenation kernels (aten::copy_, cat, contiguous).
- norm-elementwise: normalisation, reductions, softmax, activations, elementwise and Triton pointwise kernels.
- other: the rest.
Kernels inductor generates (`triton_poi_` / `triton_red_` / `triton_per_fused_*`) are named after every op their
fused nodes came from, consumers included: the QK-norm + RoPE kernel that feeds SDPA carries
`scaled_dot_product_*`, a norm feeding the quantization op carries `quantize_activation`. Their names say nothing
about GEMMs or attention, so they are quant when they compute an FP8 conversion (an absmax, or a clamped `_to_copy`)
or run inside an FP8 layer's range, and norm-elementwise otherwise.
"""
from __future__ import annotations

import re

# Launching CPU ops: these decide the GEMM category regardless of the kernel's (library-specific) name.
FP8_GEMM_OPS = re.compile(r"^aten::_scaled_(grouped_)?mm$")
HP_GEMM_OPS = re.compile(r"^aten::(mm|addmm|bmm|baddbmm|addbmm|matmul|linear|addmv|mv|dot|_addmm_activation|"
                         r"mkldnn_linear|_mkldnn_linear|_int_mm)$")
ATTENTION_OPS = re.compile(r"scaled_dot_product|flash_attention|efficient_attention|cudnn_attention|_fused_sdp|"
                           r"flex_attention", re.I)
# Kernel names (CUDA) and op names (CPU). Patterns are searched, case-insensitive.
FP8_MARK = re.compile(r"e4m3|e5m2|fp8|float8|f8f8|nvjet_(?:sm\d+_)?q|_qq", re.I)
GEMM_MARK = re.compile(r"gemm|gemv|xmma|nvjet|cutlass|wgmma|s16816|s1688|tensorop|splitk|_mm_|matmul|"
                       r"^triton_tem_|scaled_mm", re.I)
TENSOR_CORE_MARK = re.compile(r"xmma|nvjet|tensorop|wgmma|gmma|hmma|qmma|mma|cutlass|sm\d\d_|s16816|tilesize",
                              re.I)
TRITON_SCALED_MM = re.compile(r"scaled_mm_kernel|triton.*scaled_mm|_w8a8|fp8.*matmul.*kernel|fp8_gemm_kernel|"
                              r"_fp8_mm_kernel|triton_.*fp8.*mm", re.I)
ATTENTION_MARK = re.compile(r"flash|fmha|attention|_attn|sdpa|mha_|fort_native_sdpa", re.I)
QUANT_MARK = re.compile(r"quant|fp8|float8|e4m3|e5m2|amax|absmax", re.I)
MEMCPY_MARK = re.compile(r"memcpy|memset|copy|catarray|^aten::cat$|^aten::(contiguous|clone|_to_copy|to|stack)$", re.I)
INDUCTOR_FUSED = re.compile(r"^triton_(poi|red|per)_", re.I)
INDUCTOR_QUANT = re.compile(r"amax|absmax|_to_copy.*clamp|clamp.*_to_copy", re.I)
NORM_ELEMENTWISE_MARK = re.compile(
    r"elementwise|reduce|norm|softmax|^triton_(poi|per|red)_|silu|gelu|tanh|sigmoid|rsqrt|exp|pow|mean|sum|"
    r"^aten::(add|sub|mul|div|neg|cos|sin|where|fill_|zero_|zeros|ones|empty|abs|clamp|maximum|minimum|"
    r"index|index_select|gather|scatter|masked_fill|view_as_complex|view_as_real|polar|arange|full|"
    r"linspace|_softmax|rms_norm|_fused_rms_norm|layer_norm|native_layer_norm|group_norm|native_group_norm|"
    r"upsample|pad|constant_pad_nd|slice|narrow|chunk|split|unbind|select|expand|reshape|view|permute|"
    r"transpose|flatten|squeeze|unsqueeze|t|as_strided|type_as|lt|gt|eq|ne|ge|le|bitwise_\w+|any|all|"
    r"round|floor|ceil|reciprocal|sqrt|log|erf|cumsum|argmax|topk|repeat|repeat_interleave|roll|flip|"
    r"embedding|conv\w*|_convolution|convolution|silu_|copy_)$", re.I)


def categorize(name: str, op: str | None = None, *, in_fp8_layer: bool = False, in_attention: bool = False) -> str:
    """Category of one kernel (CUDA) or leaf op (CPU), from its name and the CPU op that launched it.

    name: kernel name (CUDA) or op name (CPU). op: launching CPU op (CUDA only; None on CPU).
    in_fp8_layer: it ran inside the range of a layer that should be FP8 (its non-GEMM work is FP8 overhead).
    in_attention: it ran inside an attention op (everything there is attention, GEMMs of the math path included).
    Returns one of harness.core.vocab.KERNEL_CATEGORIES.
    """
    launcher = op or ""
    if in_attention:
        return "attention"
    if INDUCTOR_FUSED.search(name):
        return "quant" if in_fp8_layer or INDUCTOR_QUANT.search(name) else "norm-elementwise"
    # everything an FP8 GEMM op launches (cuBLASLt's kernel and its workspace memsets) is that GEMM's cost
    if FP8_GEMM_OPS.search(name) or FP8_GEMM_OPS.search(launcher) or TRITON_SCALED_MM.search(name):
        return "gemm-fp8"
    if GEMM_MARK.search(name) and FP8_MARK.search(name):
        return "gemm-fp8"
    if ATTENTION_OPS.search(name) or ATTENTION_MARK.search(name) or (op and ATTENTION_OPS.search(launcher)):
        return "attention"
    # torch's own reduction / elementwise kernels are not GEMMs (cuBLAS's splitKreduce_kernel is part of one)
    not_gemm = re.search(r"elementwise|(?<![A-Za-z])reduce_kernel", name)
    if HP_GEMM_OPS.search(name) or (GEMM_MARK.search(name) and not not_gemm) or (
            HP_GEMM_OPS.search(launcher) and not not_gemm and not MEMCPY_MARK.search(name)):
        return "gemm-bf16"
    if in_fp8_layer or QUANT_MARK.search(name):
        return "quant"
    if MEMCPY_MARK.search(name):
        return "memcpy"
    if NORM_ELEMENTWISE_MARK.search(name):
        return "norm-elementwise"
    return "other"
