"""Kernel dispatch: the one place that turns a `Kernel` choice into what an FP8 layer runs.

`select_kernel_plan(kernel, device)` checks the device and returns a `KernelPlan`: how activations are quantized
(fused Triton kernel, or torch ops) and how the GEMM runs (cuBLASLt `torch._scaled_mm`, or exact emulation).
`Fp8Linear`, `Fp8SwiGLUFeedForward` and the fused block (fused_block.py) call their plan and never branch on the
kernel themselves. Benchmarks and
tests build plans directly (`plan_for`, `KernelPlan(...)`, a `LaunchConfig`) and force them on layers with
`Fp8Linear.use_plan` / `use_plan(model, plan)`: no module globals to overwrite.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from . import fused_kernels, fused_reference
from .config import Kernel
from .kernels import DEFAULT_LAUNCH, LaunchConfig, quantize_activation_triton
from .primitives import emulated_scaled_mm, quantize_activation

MIN_FP8_CAPABILITY = (8, 9)
QUANTIZE_IMPLS = ("fused", "fused-eager", "torch")
# The fused block's ops (fp8/fused_block.py), named as their torch references in fp8/fused_reference.py.
BLOCK_OPS = ("modulated_rmsnorm_quant", "gated_residual_rmsnorm", "gated_residual_rmsnorm_quant", "qk_norm_rope")
GEMM_IMPLS = ("scaled-mm", "emulated")


class Fp8UnsupportedDeviceError(RuntimeError):
    """FP8 GEMMs were asked for on a device without FP8 tensor cores."""


def check_fp8_device(device: torch.device) -> None:
    """Raise Fp8UnsupportedDeviceError unless `device` is a CUDA GPU with compute capability >= 8.9."""
    if device.type != "cuda":
        raise Fp8UnsupportedDeviceError(
            f"the FP8 GEMM kernel runs on CUDA GPUs; this layer is on {device}. Use "
            "Fp8Config(kernel='torch-reference') (or kernel='auto') to emulate FP8 on this device")
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_FP8_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        raise Fp8UnsupportedDeviceError(
            f"{name} has compute capability {capability[0]}.{capability[1]}; FP8 tensor cores need 8.9 or newer "
            "(Ada, Hopper, Blackwell). Run in BF16, or emulate FP8 with Fp8Config(kernel='torch-reference') "
            "(same numerics, no speed-up)")


def resolve_kernel(kernel: Kernel, device: torch.device) -> Kernel:
    """The concrete kernel for `device`: AUTO becomes CUBLAS_PADDED on CUDA and TORCH_REFERENCE elsewhere."""
    if kernel == Kernel.TORCH_REFERENCE:
        return kernel
    if kernel == Kernel.AUTO and device.type != "cuda":
        return Kernel.TORCH_REFERENCE
    check_fp8_device(device)
    return Kernel.CUBLAS_PADDED if kernel == Kernel.AUTO else kernel


@dataclass(frozen=True)
class KernelPlan:
    """What an FP8 layer runs.

    kernel: the concrete `Kernel` this plan implements (what reports record);
    quantize_impl: "fused" (the Triton kernel; its custom op under torch.compile), "fused-eager" (Triton when
    eager, torch ops under compile so inductor fuses them with their neighbours) or "torch" (reference ops);
    gemm_impl: "scaled-mm" (cuBLASLt FP8 tensor cores) or "emulated" (dequantize + exact matmul, float64 on CPU);
    launch: the fused kernel's launch settings;
    fused_block: blocks whose FP8 layers run this plan take the fused path (fused_block.py): modulated RMSNorm
    straight to e4m3, residual + gate + norm epilogues, QK-norm + RoPE, each one kernel ("fused" quantize_impl)
    or its torch reference ("torch"; "fused-eager": Triton eager, torch ops under compile);
    gate_up_unit_scales: the folded SwiGLU runs gate/up as a GEMM with unit scales and applies the per-token and
    per-channel scales inside the down projection's quantization kernel (a float32 column scale read per value).
    Off by default: slower on an H200 (results/fp8_gemm_accumulation_h200.json; the `unitgateup` arm of
    results/perf_recipes_h200_round1.json);
    reference_block_ops: names of fused block ops (BLOCK_OPS) that run their torch reference even so, which
    torch.compile then fuses with its neighbours (e.g. QK-norm + RoPE, whose inductor kernel beats ours).
    Tried and left out (H200, results/perf_recipes_h200_epilogue_trial.json): compiled GEMMs run tensor-wise with
    unit scales and the scales applied by torch ops for inductor to fuse into the consumer: the GEMMs got 3.5 ms
    faster per 1024 step, inductor's consumers as much slower (279.8 vs 279.0 ms per step).
    """

    kernel: Kernel
    quantize_impl: str
    gemm_impl: str
    launch: LaunchConfig = DEFAULT_LAUNCH
    fused_block: bool = False
    gate_up_unit_scales: bool = False
    reference_block_ops: tuple[str, ...] = ()

    def __post_init__(self):
        if self.quantize_impl not in QUANTIZE_IMPLS or self.gemm_impl not in GEMM_IMPLS:
            raise ValueError(f"KernelPlan({self.quantize_impl!r}, {self.gemm_impl!r}): quantize_impl is one of "
                             f"{QUANTIZE_IMPLS}, gemm_impl one of {GEMM_IMPLS}")
        unknown = sorted(set(self.reference_block_ops) - set(BLOCK_OPS))
        if unknown:
            raise ValueError(f"KernelPlan.reference_block_ops: unknown ops {unknown}; the fused block ops are "
                             f"{BLOCK_OPS}")

    @property
    def unscaled_gate_up(self) -> bool:
        """Does the folded SwiGLU run gate/up with unit scales and dequantize inside the down quantization?"""
        return self.gate_up_unit_scales and self.gemm_impl == "scaled-mm" and self.quantize_impl != "torch"

    def quantize(self, x2: torch.Tensor, k_padded: int, per_token: bool, apply_swiglu: bool = False,
                 row_scale: torch.Tensor | None = None,
                 col_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """[M, K] (or [M, 2K] gate|up) -> (e4m3 [M, k_padded], float32 [M, 1] or [1, 1])."""
        compiling = torch.compiler.is_compiling()
        if self.quantize_impl == "torch" or (self.quantize_impl == "fused-eager" and compiling):
            return quantize_activation(x2, k_padded, per_token, apply_swiglu, row_scale, col_scale)
        if not compiling:  # eager calls skip the custom op's dispatch overhead
            return quantize_activation_triton(x2, k_padded, per_token, apply_swiglu, row_scale, col_scale,
                                              launch=self.launch)
        k = x2.shape[-1] // 2 if apply_swiglu else x2.shape[-1]
        block, warps, stages = self.launch.choose(k, k_padded, apply_swiglu)
        return torch.ops.omnigen2_fp8.quantize_activation(x2, k_padded, per_token, apply_swiglu, row_scale,
                                                          col_scale, block, warps, stages,
                                                          self.launch.hw_cast_on_cuda and x2.is_cuda)

    # ------------------------------------------------------------------------------- fused block ops
    def _block_op(self, reference, triton_fn, op, like: torch.Tensor):
        """The implementation of one fused block op this plan runs: the torch reference, or the Triton kernel
        (its custom op under torch.compile) with the e4m3 conversion chosen for `like`'s device."""
        compiling = torch.compiler.is_compiling()
        if (self.quantize_impl == "torch" or (self.quantize_impl == "fused-eager" and compiling)
                or reference.__name__ in self.reference_block_ops):
            return reference
        kernel = op if compiling else triton_fn  # eager calls skip the custom op's dispatch overhead
        hw_cast = self.launch.hw_cast_on_cuda and like.is_cuda
        return lambda *args: kernel(*args, hw_cast)

    def modulated_rmsnorm_quant(self, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None,
                                eps: float, k_padded: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, L, D] -> RMSNorm * weight * (1 + scale [N, D]) -> (e4m3 [N*L, k_padded], float32 [N*L, 1])."""
        return self._block_op(fused_reference.modulated_rmsnorm_quant, fused_kernels.modulated_rmsnorm_quant_triton,
                              torch.ops.omnigen2_fp8.modulated_rmsnorm_quant, x)(x, weight, scale, eps, k_padded)

    def gated_residual_rmsnorm(self, h: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None,
                               weight: torch.Tensor, eps: float) -> torch.Tensor:
        """h + gate [N, D] * RMSNorm(y) * weight for h, y [N, L, D] -> h_new [N, L, D] in h's dtype."""
        return self._block_op(fused_reference.gated_residual_rmsnorm, fused_kernels.gated_residual_rmsnorm_triton,
                              torch.ops.omnigen2_fp8.gated_residual_rmsnorm, h)(h, y, gate, weight, eps)

    def gated_residual_rmsnorm_quant(self, h: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None,
                                     weight: torch.Tensor, eps: float, next_weight: torch.Tensor,
                                     next_scale: torch.Tensor | None, next_eps: float, k_padded: int):
        """`gated_residual_rmsnorm`, and h_new's modulated norm quantized for the next FP8 linear:
        -> (h_new [N, L, D], e4m3 [N*L, k_padded], float32 [N*L, 1]). Listed in reference_block_ops: the two
        ops one after the other, each as this plan runs it (the reference's own definition)."""
        if "gated_residual_rmsnorm_quant" in self.reference_block_ops:
            h_new = self.gated_residual_rmsnorm(h, y, gate, weight, eps)
            return (h_new, *self.modulated_rmsnorm_quant(h_new, next_weight, next_scale, next_eps, k_padded))
        fn = self._block_op(fused_reference.gated_residual_rmsnorm_quant,
                            fused_kernels.gated_residual_rmsnorm_quant_triton,
                            torch.ops.omnigen2_fp8.gated_residual_rmsnorm_quant, h)
        return fn(h, y, gate, weight, eps, next_weight, next_scale, next_eps, k_padded)

    def qk_norm_rope(self, q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                     cos: torch.Tensor, sin: torch.Tensor, q_eps: float, k_eps: float,
                     q_descale: torch.Tensor | None = None, k_descale: torch.Tensor | None = None,
                     head_dim_padded: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head RMSNorm + RoPE of q [N, L, Hq, hd], k [N, L, Hkv, hd]; e4m3 [.., head_dim_padded] with
        descales (FP8 attention), else q's dtype."""
        fn = self._block_op(fused_reference.qk_norm_rope, fused_kernels.qk_norm_rope_triton,
                            torch.ops.omnigen2_fp8.qk_norm_rope, q)
        return fn(q, k, q_weight, k_weight, cos, sin, q_eps, k_eps, q_descale, k_descale, head_dim_padded)

    def gemm(self, layer: nn.Module, xq: torch.Tensor, x_scale: torch.Tensor, out_dtype: torch.dtype,
             weight: torch.Tensor | None = None) -> torch.Tensor:
        """[M, Kp] e4m3 x layer's [Np, Kp] e4m3 weight -> [M, Np] in out_dtype, scales applied. weight: another
        layout of the layer's weight with the same scales ([Np, K'], Fp8Linear.matmul); None: the layer's own."""
        if self.gemm_impl == "emulated":
            compute = torch.float64 if xq.device.type == "cpu" else torch.float32
            weight = layer.weight if weight is None else weight
            return emulated_scaled_mm(xq, x_scale, weight, layer.weight_scale, out_dtype, compute)
        return layer.matmul(xq, x_scale, out_dtype, weight)


# The implementation of every concrete kernel (AUTO resolves to one of these first): quantize, GEMM.
_IMPLS = {
    Kernel.CUBLAS_PADDED: ("fused", "scaled-mm"),
    Kernel.CUBLAS_TORCH_QUANT: ("torch", "scaled-mm"),
    Kernel.CUBLAS_INDUCTOR_QUANT: ("fused-eager", "scaled-mm"),
    Kernel.TORCH_REFERENCE: ("torch", "emulated"),
}


# Kernels whose plan takes the fused block path unless told otherwise: CUBLAS_PADDED's Triton kernels. On an H200
# (results/perf_recipes_h200_fused_block_default.json, 3-branch step) the fused block is 1.09x (1024) and 1.13x
# (512) faster than the unfused FP8 block with CUDA graphs alone (gedit's default mode) and ties under compile +
# graphs (1.00x at 1024, 0.98x at 512), where inductor fuses the unfused block's ops itself; with FP8 attention
# its q and k leave QK-norm + RoPE as e4m3. Earlier kernels (one row per program) lost to inductor's fusion
# (results/perf_recipes_h200_fused_norms.json). The reference kernels keep the unfused block, as the official
# code writes it (the golden tests check that block).
FUSED_BLOCK_BY_DEFAULT = frozenset({Kernel.CUBLAS_PADDED})


def plan_for(kernel: Kernel | str, launch: LaunchConfig = DEFAULT_LAUNCH,
             fused_block: bool | None = None) -> KernelPlan:
    """The plan of a concrete kernel, without device checks (for tests and benchmarks that force one).
    fused_block None: on for the kernels in FUSED_BLOCK_BY_DEFAULT."""
    kernel = Kernel(kernel)
    if kernel not in _IMPLS:
        raise ValueError(f"{kernel.value!r} is not a concrete kernel; resolve it with select_kernel_plan(kernel, "
                         "device)")
    quantize_impl, gemm_impl = _IMPLS[kernel]
    fused_block = kernel in FUSED_BLOCK_BY_DEFAULT if fused_block is None else fused_block
    return KernelPlan(kernel, quantize_impl, gemm_impl, launch, fused_block)


def select_kernel_plan(kernel: Kernel | str, device: torch.device | str, launch: LaunchConfig = DEFAULT_LAUNCH,
                       fused_block: bool | None = None) -> KernelPlan:
    """The plan for `kernel` on `device` (AUTO resolved; raises Fp8UnsupportedDeviceError on a GPU without FP8).

    Whether a call is being compiled is decided per call inside the plan ("fused" uses the custom op then).
    """
    return plan_for(resolve_kernel(Kernel(kernel), torch.device(device)), launch, fused_block)


def use_plan(model: nn.Module, plan: KernelPlan | None) -> int:
    """Force `plan` on every FP8 layer of `model` (None: back to each layer's configured kernel); returns the count."""
    layers = [m for m in model.modules() if hasattr(m, "use_plan") and getattr(m, "is_fp8", False)]
    for layer in layers:
        layer.use_plan(plan)
    return len(layers)


def with_launch(plan: KernelPlan, launch: LaunchConfig) -> KernelPlan:
    """The same plan with other launch settings."""
    return dataclasses.replace(plan, launch=launch)
