"""FP8 (e4m3) inference for OmniGen2: padded cuBLASLt GEMMs, fused activation quantization, FP8 checkpoints.

    from omnigen2_fp8.fp8 import Fp8Config, quantize_fp8, save_fp8_checkpoint
    report = quantize_fp8(transformer, Fp8Config())   # in place; print(report) lists every linear
    save_fp8_checkpoint(transformer, "out/transformer")  # checkpoints.load_transformer loads it as FP8
"""
from .checkpoint import load_fp8_transformer, save_fp8_checkpoint
from .config import ActivationGranularity, Fp8Config, Fp8ConfigError, Kernel, WeightGranularity
from .dispatch import Fp8UnsupportedDeviceError, KernelPlan, plan_for, select_kernel_plan, use_plan
from .kernels import LaunchConfig
from .linear import Fp8Linear, Fp8SwiGLUFeedForward
from .quantize import Fp8QuantizationError, Fp8Report, LayerDecision, quantize_fp8

__all__ = ["Fp8Config", "WeightGranularity", "ActivationGranularity", "Kernel", "quantize_fp8", "Fp8Report",
           "LayerDecision", "Fp8Linear", "Fp8SwiGLUFeedForward", "save_fp8_checkpoint", "load_fp8_transformer",
           "Fp8ConfigError", "Fp8QuantizationError", "Fp8UnsupportedDeviceError", "KernelPlan", "LaunchConfig",
           "plan_for", "select_kernel_plan", "use_plan"]
