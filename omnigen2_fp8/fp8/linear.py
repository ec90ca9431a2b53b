"""Fp8Linear: a drop-in nn.Linear replacement holding a padded e4m3 weight and float32 scales.

A module swap rather than a tensor subclass: the layer owns its activation quantization and its padding, the
state dict holds plain tensors (e4m3 `weight` [Np, Kp], float32 `weight_scale` [Np]) that safetensors and
load_state_dict(assign=True) handle directly, and torch.compile traces a plain module with one custom op.

forward(x [..., K]) = quantize x per token (fused kernel, K zero-padded to Kp) -> torch._scaled_mm against the
padded weight (cuBLASLt FP8 tensor cores) -> keep the first N output columns. The BF16 weight is not kept.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import ActivationGranularity, Fp8Config, Kernel, WeightGranularity
from .dispatch import KernelPlan, select_kernel_plan
from .primitives import FP8_DTYPE, quantize_weight, round_up

class Fp8Linear(nn.Module):
    """y = x @ W.T (+ bias) with W stored as e4m3 [Np, Kp] and float32 scales [Np]; x is quantized on the fly.

    in_features K, out_features N; Kp, Np = K, N rounded up to `pad_multiple` (zero rows / columns).
    Input [..., K] (or [..., 2K] = [gate | up] through `forward_swiglu`), output [..., N] in the input dtype.
    """

    is_fp8 = True
    # Methods callers use instead of __call__ (the folded SwiGLU feed-forward calls them directly), for
    # `omnigen2_fp8.profiling.layer_ranges`: True = the call carries one GEMM (counted), False = part of one.
    profiler_entry_points = {"forward_swiglu": True, "forward_quantized": True, "matmul": True,
                             "matmul_unscaled": True, "quantize_input": False, "finish": False}

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *,
                 weight_granularity: WeightGranularity = WeightGranularity.PER_CHANNEL,
                 activation_granularity: ActivationGranularity = ActivationGranularity.PER_TOKEN,
                 pad_multiple: int = 16, kernel: Kernel = Kernel.AUTO, fast_accumulation: bool = True,
                 device=None, bias_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.in_padded, self.out_padded = round_up(in_features, pad_multiple), round_up(out_features, pad_multiple)
        self.weight_granularity = WeightGranularity(weight_granularity)
        self.activation_granularity = ActivationGranularity(activation_granularity)
        self.kernel = Kernel(kernel)
        self.fast_accumulation = bool(fast_accumulation)  # cuBLASLt's fast FP8 accumulation (see Fp8Config)
        self.weight = nn.Parameter(torch.empty(self.out_padded, self.in_padded, dtype=FP8_DTYPE, device=device),
                                   requires_grad=False)
        self.register_buffer("weight_scale", torch.ones(self.out_padded, dtype=torch.float32, device=device))
        self.bias = (nn.Parameter(torch.zeros(out_features, dtype=bias_dtype, device=device), requires_grad=False)
                     if bias else None)
        self._plan: KernelPlan | None = None  # resolved from `kernel` for the weight's device, or forced
        self._plan_forced = False

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: Fp8Config, *, pad_multiple: int | None = None,
                    kernel: Kernel | None = None) -> "Fp8Linear":
        """Quantize an nn.Linear's weight (padding once, here); the caller drops the BF16 layer afterwards.

        Padding and kernel follow `config.layer_layout` (its `misaligned` policy); `pad_multiple` / `kernel`
        override them (benchmarks build deliberately unpadded layers with them).
        """
        if linear.weight.is_meta:
            raise ValueError("cannot quantize a linear whose weight is on the meta device; load the weights first")
        layout_pad, layout_kernel = config.layer_layout(linear.in_features, linear.out_features)
        pad = layout_pad if pad_multiple is None else pad_multiple
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    weight_granularity=config.weight_granularity,
                    activation_granularity=config.activation_granularity, pad_multiple=pad,
                    kernel=layout_kernel if kernel is None else kernel,
                    fast_accumulation=config.fast_accumulation, device="meta")
        q, scale = quantize_weight(linear.weight, layer.weight_granularity == WeightGranularity.PER_CHANNEL, pad)
        layer.weight = nn.Parameter(q, requires_grad=False)
        layer.weight_scale = scale
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        layer.refresh_kernel()
        return layer

    # ------------------------------------------------------------------------------------------------ kernel
    def refresh_kernel(self) -> Kernel | None:
        """Resolve (and check) the plan for the device the weight lives on; raises on a GPU without FP8.
        Returns the concrete kernel (None on the meta device). A plan forced by `use_plan` is kept."""
        if not self._plan_forced:
            device = self.weight.device
            self._plan = None if device.type == "meta" else select_kernel_plan(self.kernel, device)
        return self.resolved_kernel

    def use_plan(self, plan: KernelPlan | None) -> None:
        """Force `plan` (e.g. `dispatch.plan_for(Kernel.CUBLAS_PADDED)` or a benchmark's launch settings) on this
        layer, whatever its device; None returns to the plan `kernel` resolves to."""
        self._plan, self._plan_forced = plan, plan is not None
        if plan is None:
            self.refresh_kernel()

    def kernel_plan(self) -> KernelPlan:
        """The plan this layer runs (resolved on first use)."""
        if self._plan is None:
            self.refresh_kernel()
        return self._plan

    @property
    def resolved_kernel(self) -> Kernel | None:
        """The concrete kernel of the current plan, None before one is resolved."""
        return None if self._plan is None else self._plan.kernel

    def _apply(self, fn, recurse=True):
        # model.to(torch.bfloat16) must not touch the e4m3 weight or the float32 scales (a bf16 scale loses
        # precision): they follow device moves only. The bias follows the model like any parameter.
        weight, scale = self._parameters.pop("weight"), self._buffers.pop("weight_scale")
        try:
            super()._apply(fn, recurse)
        finally:
            device = fn(torch.empty(0, device=weight.device)).device
            self._parameters["weight"] = nn.Parameter(weight.data.to(device), requires_grad=False)
            self._buffers["weight_scale"] = scale.to(device)
        if device.type != "meta":
            self.refresh_kernel()
        return self

    # ------------------------------------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x, apply_swiglu=False)

    def forward_swiglu(self, gate_up: torch.Tensor) -> torch.Tensor:
        """down(silu(gate) * up) for gate_up [..., 2K] = [gate | up]: the SwiGLU is folded into the quantization."""
        return self._forward(gate_up, apply_swiglu=True)

    def _forward(self, x: torch.Tensor, apply_swiglu: bool) -> torch.Tensor:
        expected = 2 * self.in_features if apply_swiglu else self.in_features
        if x.shape[-1] != expected:
            raise ValueError(f"Fp8Linear expects inputs [..., {expected}]; got {tuple(x.shape)}")
        plan = self.kernel_plan()
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        xq, x_scale = self.quantize_input(x2, apply_swiglu)
        return self.finish(plan.gemm(self, xq, x_scale, x.dtype), lead)

    def forward_quantized(self, xq: torch.Tensor, x_scale: torch.Tensor, out_dtype: torch.dtype,
                          keep_padding: bool = False) -> torch.Tensor:
        """The layer on an input already quantized to its padded width (e.g. by a fused norm kernel, which writes
        the e4m3 rows and their scales directly): xq e4m3 [M, Kp], x_scale float32 [M, 1] or [1, 1] -> [M, N] in
        out_dtype. keep_padding: return the GEMM's [M, Np] as is (no bias allowed), for a consumer that reads the
        first N columns through the row stride instead of a slicing copy."""
        if xq.dim() != 2 or xq.shape[1] != self.in_padded or xq.dtype != FP8_DTYPE:
            raise ValueError(f"Fp8Linear.forward_quantized expects e4m3 [M, {self.in_padded}] (the padded input "
                             f"width); got {xq.dtype} {tuple(xq.shape)}")
        y = self.kernel_plan().gemm(self, xq, x_scale, out_dtype)
        if not keep_padding:
            return self.finish(y, xq.shape[:1])
        if self.bias is not None:
            raise ValueError("keep_padding returns raw GEMM columns; this layer has a bias to add (use "
                             "keep_padding=False)")
        return y

    def quantize_input(self, x2: torch.Tensor, apply_swiglu: bool = False, row_scale: torch.Tensor | None = None,
                       col_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """[M, K] (or [M, 2K] gate|up) -> (e4m3 [M, Kp], float32 [M, 1] or [1, 1]) with this layer's kernel."""
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        per_token = self.activation_granularity == ActivationGranularity.PER_TOKEN
        return self.kernel_plan().quantize(x2, self.in_padded, per_token, apply_swiglu, row_scale, col_scale)

    def matmul(self, xq: torch.Tensor, x_scale: torch.Tensor, out_dtype: torch.dtype,
               weight: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled FP8 GEMM on the padded shapes: [M, Kp] x [Np, Kp]^T -> [M, Np] in out_dtype. weight: another
        e4m3 [Np, K'] layout of this layer's weight with the same scales (e.g. the head-padded one FP8 attention's
        output projects through); None: the layer's own."""
        weight = self.weight if weight is None else weight
        per_tensor_w = self.weight_granularity == WeightGranularity.PER_TENSOR
        if x_scale.numel() == 1 and per_tensor_w:
            # Tensor-wise scaling (the fastest cuBLASLt path) when both scales are single numbers.
            dtype = out_dtype if out_dtype in (torch.bfloat16, torch.float16, torch.float32) else torch.bfloat16
            return torch._scaled_mm(xq, weight.t(), scale_a=x_scale.reshape(()),
                                    scale_b=self.weight_scale[0], out_dtype=dtype,
                                    use_fast_accum=self.fast_accumulation).to(out_dtype)
        # Row-wise scaling: [M, 1] x [1, N] float32 scales, BF16 output (cuBLASLt's requirement).
        if x_scale.shape[0] != xq.shape[0]:
            x_scale = x_scale.expand(xq.shape[0], 1).contiguous()
        y = torch._scaled_mm(xq, weight.t(), scale_a=x_scale, scale_b=self.weight_scale.view(1, -1),
                             out_dtype=torch.bfloat16, use_fast_accum=self.fast_accumulation)
        return y if out_dtype == torch.bfloat16 else y.to(out_dtype)

    def matmul_unscaled(self, xq: torch.Tensor) -> torch.Tensor:
        """Raw sums xq @ W_q^T [M, Np] in BF16 through the tensor-wise GEMM (unit scales), which cuBLASLt runs
        up to 10 % faster than the row-wise one with fast accumulation (results/fp8_gemm_accumulation_h200.json);
        the consumer applies x_scale[m] * weight_scale[n] itself."""
        one = torch.ones((), dtype=torch.float32, device=xq.device)
        return torch._scaled_mm(xq, self.weight.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16,
                                use_fast_accum=self.fast_accumulation)

    def finish(self, y: torch.Tensor, lead: torch.Size) -> torch.Tensor:
        """Drop the padded output columns, add the bias, restore the leading dims."""
        if self.out_padded != self.out_features:
            y = y[:, : self.out_features]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        pad = (f", padded=({self.out_padded}, {self.in_padded})"
               if (self.out_padded, self.in_padded) != (self.out_features, self.in_features) else "")
        return (f"in_features={self.in_features}, out_features={self.out_features}{pad}, bias={self.bias is not None}, "
                f"weight=e4m3/{self.weight_granularity.value}, activations=e4m3/{self.activation_granularity.value}, "
                f"kernel={self.kernel.value}" + (f"->{self.resolved_kernel.value}" if self.resolved_kernel and
                                                  self.resolved_kernel != self.kernel else "")
                + ("" if self.fast_accumulation else ", exact accumulation"))


class Fp8SwiGLUFeedForward(nn.Module):
    """FeedForward with fused gate/up and the SwiGLU folded into the down projection's activation quantization:
    linear_2(silu(gate) * up) where [gate | up] = linear_13(x). Same parameter names as the BF16 FeedForward."""

    def __init__(self, linear_13: Fp8Linear, linear_2: Fp8Linear):
        super().__init__()
        if 2 * linear_2.in_features != linear_13.out_features:
            raise ValueError(f"linear_13 gives {linear_13.out_features} features; linear_2 takes "
                             f"{linear_2.in_features} (needs gate + up = 2 x that)")
        self.linear_13, self.linear_2 = linear_13, linear_2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up, down = self.linear_13, self.linear_2
        if not self._unscaled_gate_up():
            return down.forward_swiglu(gate_up(x))
        xq, x_scale = gate_up.quantize_input(x.reshape(-1, x.shape[-1]))
        return self.forward_quantized(xq, x_scale, x.dtype).reshape(*x.shape[:-1], down.out_features)

    def forward_quantized(self, xq: torch.Tensor, x_scale: torch.Tensor, out_dtype: torch.dtype,
                          keep_padding: bool = False) -> torch.Tensor:
        """The feed-forward on an input already quantized for linear_13 (e4m3 [M, Kp], float32 [M, 1]) -> [M, D]
        in out_dtype; keep_padding: linear_2's raw [M, Dp] (see Fp8Linear.forward_quantized)."""
        gate_up, down = self.linear_13, self.linear_2
        if self._unscaled_gate_up():
            # gate/up runs as the tensor-wise GEMM with unit scales; its per-token and per-channel scales are
            # applied inside the down projection's quantization kernel (KernelPlan.gate_up_unit_scales).
            raw = gate_up.matmul_unscaled(xq)[:, : gate_up.out_features]
            hq, h_scale = down.quantize_input(raw, apply_swiglu=True, row_scale=x_scale,
                                              col_scale=gate_up.weight_scale)
        else:
            hq, h_scale = down.quantize_input(gate_up.forward_quantized(xq, x_scale, out_dtype), apply_swiglu=True)
        return down.forward_quantized(hq, h_scale, out_dtype, keep_padding)

    def _unscaled_gate_up(self) -> bool:
        return self.linear_13.kernel_plan().unscaled_gate_up and self.linear_13.bias is None
