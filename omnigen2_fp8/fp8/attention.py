"""FP8 attention (optional, off by default): cuDNN's FP8 scaled-dot-product attention on Hopper.

Numerics (what cuDNN's FP8 SDPA computes, and `fp8_attention_reference` emulates):
    q8, k8, v8 = e4m3(q / s_q), e4m3(k / s_k), e4m3(v / s_v)      one float32 scale per tensor, head dim zero-padded
    S  = (q8 k8^T) * s_q * s_k / sqrt(head_dim)                   head_dim = the real 120, not the padded 128
    P8 = e4m3(exp(S - rowmax(S)) * 448)                            flash-style: unnormalised P in [0, 1]
    O8 = e4m3((P8 v8) / (448 rowsum(exp(S - rowmax))) * s_v / s_o)  s_o = s_v: |O| <= max|v| (convex weights)
Scales: s_q, s_k static, from the QK-norm weights (`qk_descale_bound`: no pass over q and k); s_v = absmax(v) / 448,
computed on the device (no host sync, graph capturable).
Head dim 120 is padded to 128 (cuDNN needs a multiple of 16); the padding is zero, so scores are unchanged.
On Hopper cuDNN returns O in e4m3. An FP8 output projection takes it as it is (`attend_and_project`,
`project_quantized`): through a head-padded copy of its weight (`bind_projection`; without one, a byte copy drops the
head padding), with O's per-tensor descale s_v as the GEMM's activation scale, so O is quantized once (no
dequantize-to-BF16 and per-token requantize pass); otherwise O is dequantized for the projection.

Measured error: see benchmarks/bench_fp8_attention.py (per layer and end to end against BF16 attention).
Without cuDNN FP8 support (no CUDA, a GPU before Hopper, nvidia-cudnn-frontend missing, a graph cuDNN refuses)
the module says why once and runs the BF16 attention instead.
"""
from __future__ import annotations

import fnmatch
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import grouped_attention
from .attention_steps import AttentionSteps
from .primitives import AMAX_FLOOR, E4M3_MAX, FP8_DTYPE, round_up

log = logging.getLogger(__name__)

HEAD_DIM_MULTIPLE = 16  # cuDNN FP8 SDPA: head dim a multiple of 16
P_SCALE = E4M3_MAX  # softmax probabilities in [0, 1] are stored times 448
MIN_CAPABILITY = (9, 0)  # FP8 SDPA forward kernels: Hopper and newer


# --------------------------------------------------------------------------------------------- quantization
def quantize_heads(x: torch.Tensor, head_dim_padded: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L, H, D] -> (e4m3 [B, L, H, Dp] with zero padding, float32 descale [1, 1, 1, 1] = absmax / 448)."""
    descale = (x.abs().amax().float().clamp_min(AMAX_FLOOR) / E4M3_MAX).reshape(1, 1, 1, 1)
    q = (x.float() / descale).clamp(-E4M3_MAX, E4M3_MAX).to(FP8_DTYPE)
    pad = head_dim_padded - x.shape[-1]
    if pad:
        q = F.pad(q.view(torch.uint8), (0, pad)).view(FP8_DTYPE)
    return q, descale


def quantize_heads_static(x: torch.Tensor, descale: torch.Tensor, head_dim_padded: int) -> torch.Tensor:
    """[B, L, H, D] -> e4m3 [B, L, H, Dp] with a given float32 descale (no reduction: fuses into the producer)."""
    q = (x.float() / descale).clamp(-E4M3_MAX, E4M3_MAX).to(FP8_DTYPE)
    pad = head_dim_padded - x.shape[-1]
    return F.pad(q.view(torch.uint8), (0, pad)).view(FP8_DTYPE) if pad else q


def qk_descale_bound(norm_weight: torch.Tensor) -> torch.Tensor:
    """Static descale [1, 1, 1, 1] for q or k after RMSNorm (weight w, head dim d) and RoPE: |value| <=
    sqrt(d) * max|w| (an RMS-normed vector has norm <= sqrt(d), a rotation keeps each pair's norm), / 448.
    e4m3 is floating point, so a loose bound costs no precision until values fall 2^9 below it."""
    bound = math.sqrt(norm_weight.numel()) * norm_weight.detach().abs().max().float().clamp_min(AMAX_FLOOR)
    return (bound / E4M3_MAX).reshape(1, 1, 1, 1)


def dequantize_heads(o8: torch.Tensor, descale: torch.Tensor, head_dim: int, dtype: torch.dtype) -> torch.Tensor:
    """e4m3 [B, L, H, Dp] -> [B, L, H * head_dim] in `dtype` (padding dropped)."""
    return (o8[..., :head_dim].float() * descale).to(dtype).flatten(2)


def fp8_attention_reference(q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor, descale_q: torch.Tensor,
                            descale_k: torch.Tensor, descale_v: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Emulation of the cuDNN FP8 SDPA forward in float32: q8 [B, L, Hq, Dp], k8/v8 [B, L, Hkv, Dp] (e4m3, GQA:
    query head j uses kv head j // (Hq/Hkv)) -> O8 [B, L, Hq, Dp] e4m3, whose descale is descale_v."""
    q = q8.float().transpose(1, 2) * descale_q
    groups = q8.shape[2] // k8.shape[2]
    k = (k8.float() * descale_k).transpose(1, 2).repeat_interleave(groups, dim=1)
    v8f = v8.float().transpose(1, 2).repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(head_dim)
    # Flash-style: the unnormalised exp(S - rowmax) in [0, 1] is quantized, the row sum stays in float32.
    unnormalised = (scores - scores.amax(dim=-1, keepdim=True)).exp()
    p8 = (unnormalised * P_SCALE).to(FP8_DTYPE).float()
    o = (p8 @ v8f) / (P_SCALE * unnormalised.sum(dim=-1, keepdim=True))  # in v's units: O's scale is v's
    return o.clamp(-E4M3_MAX, E4M3_MAX).to(FP8_DTYPE).transpose(1, 2).contiguous()


# --------------------------------------------------------------------------------------------- cuDNN graphs
def fp8_attention_unsupported_reason(device: torch.device) -> str | None:
    """None when cuDNN FP8 SDPA can run on `device`; otherwise why not, with the fix."""
    if device.type != "cuda":
        return f"FP8 attention runs on CUDA GPUs (cuDNN); the model is on {device}"
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        return (f"{torch.cuda.get_device_name(device)} has compute capability {capability[0]}.{capability[1]}; "
                "cuDNN's FP8 attention needs Hopper (9.0) or newer")
    try:
        import cudnn  # noqa: F401  (nvidia-cudnn-frontend: heavy, and optional)
    except Exception as err:  # ImportError, or a wheel whose native part cannot load here
        return f"nvidia-cudnn-frontend is not usable ({type(err).__name__}: {err}); pip install nvidia-cudnn-frontend"
    return None


class _CudnnGraph:
    """One built cuDNN FP8 SDPA graph for fixed shapes and strides, with its workspace."""

    def __init__(self, q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor, head_dim: int):
        import cudnn

        self.handle = cudnn.create_handle()
        e4m3, fp32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
        graph = cudnn.pygraph(io_data_type=e4m3, intermediate_data_type=fp32, compute_data_type=fp32,
                              handle=self.handle)

        def heads(name: str, t: torch.Tensor):  # [B, L, H, D] memory seen as [B, H, L, D]
            b, s, h, d = t.shape
            return graph.tensor(name=name, dim=(b, h, s, d), stride=(t.stride(0), t.stride(2), t.stride(1), 1),
                                data_type=e4m3)

        scalar = dict(dim=(1, 1, 1, 1), stride=(1, 1, 1, 1), data_type=fp32)
        self.q, self.k, self.v = heads("q", q8), heads("k", k8), heads("v", v8)
        self.dq, self.dk, self.dv, self.ds, self.ss, self.so = (
            graph.tensor(name=n, **scalar) for n in ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s",
                                                      "scale_o"))
        o, _, amax_s, amax_o = graph.sdpa_fp8(q=self.q, k=self.k, v=self.v, descale_q=self.dq, descale_k=self.dk,
                                              descale_v=self.dv, descale_s=self.ds, scale_s=self.ss,
                                              scale_o=self.so, is_inference=True,
                                              attn_scale=1.0 / math.sqrt(head_dim), use_causal_mask=False,
                                              name="omnigen2_fp8_sdpa")
        b, s, h, d = q8.shape
        self.out_shape = (b, s, h, d)
        o.set_output(True).set_dim((b, h, s, d)).set_stride((s * h * d, d, h * d, 1)).set_data_type(e4m3)
        for amax in (amax_s, amax_o):
            amax.set_output(True).set_dim((1, 1, 1, 1)).set_stride((1, 1, 1, 1)).set_data_type(fp32)
        self.o, self.amax_s, self.amax_o = o, amax_s, amax_o
        graph.validate()
        graph.build_operation_graph()
        graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        graph.check_support()
        graph.build_plans()
        self.graph = graph
        device = q8.device
        self.workspace = torch.empty(graph.get_workspace_size(), dtype=torch.uint8, device=device)
        self.amax_buffers = torch.empty(2, 1, 1, 1, 1, dtype=torch.float32, device=device)
        self.p_scale = torch.full((1, 1, 1, 1), P_SCALE, dtype=torch.float32, device=device)
        self.p_descale = torch.full((1, 1, 1, 1), 1.0 / P_SCALE, dtype=torch.float32, device=device)

    def __call__(self, q8, k8, v8, descale_q, descale_k, descale_v) -> torch.Tensor:
        import cudnn

        out = torch.empty(self.out_shape, dtype=FP8_DTYPE, device=q8.device)
        scale_o = 1.0 / descale_v  # O is stored in v's units (|O| <= max|v|)
        cudnn.set_stream(self.handle, torch.cuda.current_stream(q8.device).cuda_stream)
        self.graph.execute({self.q: q8, self.k: k8, self.v: v8, self.dq: descale_q, self.dk: descale_k,
                            self.dv: descale_v, self.ds: self.p_descale, self.ss: self.p_scale, self.so: scale_o,
                            self.o: out, self.amax_s: self.amax_buffers[0], self.amax_o: self.amax_buffers[1]},
                           self.workspace, handle=self.handle)
        return out


_GRAPHS: dict[tuple, _CudnnGraph] = {}


def cudnn_fp8_sdpa(q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor, descale_q: torch.Tensor,
                   descale_k: torch.Tensor, descale_v: torch.Tensor, head_dim: int) -> torch.Tensor:
    """cuDNN FP8 attention: q8 [B, L, Hq, Dp], k8/v8 [B, L, Hkv, Dp] e4m3 (+ float32 [1,1,1,1] descales) ->
    O8 [B, L, Hq, Dp] e4m3 in v's scale. One graph per shape and stride set, built on first use."""
    key = tuple((tuple(t.shape), tuple(t.stride())) for t in (q8, k8, v8)) + (head_dim, q8.device.index)
    graph = _GRAPHS.get(key)
    if graph is None:
        graph = _GRAPHS[key] = _CudnnGraph(q8, k8, v8, head_dim)
    return graph(q8, k8, v8, descale_q, descale_k, descale_v)


# torch.compile sees cuDNN's FP8 attention as one opaque op with a shape function.
@torch.library.custom_op("omnigen2_fp8::cudnn_fp8_sdpa", mutates_args=())
def cudnn_fp8_sdpa_op(q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor, descale_q: torch.Tensor,
                      descale_k: torch.Tensor, descale_v: torch.Tensor, head_dim: int) -> torch.Tensor:
    return cudnn_fp8_sdpa(q8, k8, v8, descale_q, descale_k, descale_v, head_dim)


@cudnn_fp8_sdpa_op.register_fake
def _(q8, k8, v8, descale_q, descale_k, descale_v, head_dim):
    return torch.empty_like(q8, memory_format=torch.contiguous_format)


# --------------------------------------------------------------------------------------------- the module
class Fp8Sdpa(nn.Module):
    """FP8 attention core: q, k, v [B, L, H, D] (after QK-norm and RoPE) -> [B, L, Hq * D] in q's dtype.

    q/k scales are static bounds from the QK-norm weights; v's is its absmax. Unmasked (batch-1) passes run
    cuDNN's FP8 SDPA (or, with emulate=True, `fp8_attention_reference`: CPU tests
    and error studies); a masked ragged batch runs the BF16 attention (logged once), and so does every call while
    the model's `AttentionSteps` switch is off (a denoising step excluded by Fp8Config.attention_exclude_steps).
    Installed by `enable_fp8_attention`, which checks the device first.
    """

    is_fp8_attention = True

    def __init__(self, head_dim: int, q_descale: torch.Tensor, k_descale: torch.Tensor, emulate: bool = False):
        super().__init__()
        self.head_dim = head_dim
        self.head_dim_padded = round_up(head_dim, HEAD_DIM_MULTIPLE)
        self.emulate = emulate
        # Static q/k scales from the QK-norm weights (qk_descale_bound): no reduction pass over q and k. Not
        # persistent: derived from the checkpoint's norm weights, never stored.
        self.register_buffer("q_descale", q_descale.float().reshape(1, 1, 1, 1), persistent=False)
        self.register_buffer("k_descale", k_descale.float().reshape(1, 1, 1, 1), persistent=False)
        # The output projection's e4m3 weight with each head's columns padded to head_dim_padded (`bind_projection`),
        # so O8 [M, H * Dp] goes into its GEMM as cuDNN writes it: no copy that drops the head padding.
        self.register_buffer("projection_weight", None, persistent=False)
        # The switch shared by the model's cores (enable_fp8_attention); None: FP8 on every call.
        self.steps: AttentionSteps | None = None

    @property
    def fp8_now(self) -> bool:
        """Does the coming call run FP8 attention (False during a step the config excludes)?"""
        return self.steps is None or self.steps.fp8_now

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if not self.fp8_now:
            return grouped_attention(q, k, v, mask)
        if mask is not None:
            _say_once("masked", "FP8 attention takes unmasked (batch-1) passes; a masked ragged batch runs BF16 "
                                "attention")
            return grouped_attention(q, k, v, mask)
        return self.forward_quantized(*self.quantize_qk(q, k), v)

    def quantize_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q, k [B, L, H, D] -> e4m3 [B, L, H, Dp] with this module's static descales."""
        return (quantize_heads_static(q, self.q_descale, self.head_dim_padded),
                quantize_heads_static(k, self.k_descale, self.head_dim_padded))

    def forward_quantized(self, q8: torch.Tensor, k8: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Unmasked FP8 attention on q and k already in e4m3 with this module's static descales and padded head
        dim (the fused QK-norm + RoPE kernel writes them so): q8 [B, L, Hq, Dp], k8 [B, L, Hkv, Dp], v
        [B, L, Hkv, D] -> [B, L, Hq * D] in v's dtype."""
        o8, descale = self.attend_quantized(q8, k8, v)
        return dequantize_heads(o8, descale, self.head_dim, v.dtype)

    def attend_quantized(self, q8: torch.Tensor, k8: torch.Tensor,
                         v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward_quantized` up to cuDNN's output: (O8 e4m3 [B, L, Hq, Dp], its float32 descale [1, 1, 1, 1])."""
        dq, dk = self.q_descale, self.k_descale
        v8, dv = quantize_heads(v, self.head_dim_padded)  # v has no norm: its scale comes from its absmax
        if self.emulate:
            return fp8_attention_reference(q8, k8, v8, dq, dk, dv, self.head_dim), dv
        return torch.ops.omnigen2_fp8.cudnn_fp8_sdpa(q8, k8, v8, dq, dk, dv, self.head_dim), dv

    # Module-by-module studies turn this off (fused_block.unfused_blocks): forward hooks on this module then see
    # its dequantized output on every path.
    direct_projection = True

    def projects_directly(self, out_proj: nn.Module) -> bool:
        """Can `out_proj` take this core's e4m3 output as it is (an FP8 layer over all heads, without bias)?"""
        return (self.direct_projection and getattr(out_proj, "is_fp8", False) and out_proj.bias is None
                and out_proj.in_features % self.head_dim == 0)

    def attend_and_project(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                           out_proj: nn.Module) -> torch.Tensor:
        """out_proj(attention(q, k, v)): [B, L, H, D] inputs -> [B, L, out_features]. With an FP8 `out_proj`, O8
        goes into its GEMM as it is (`project`); otherwise through this module's forward (which hooks see)."""
        if mask is not None or not self.fp8_now or not self.projects_directly(out_proj):
            return out_proj(self(q, k, v, mask))
        return self.project_quantized(*self.quantize_qk(q, k), v, out_proj, v.dtype)

    def project_quantized(self, q8: torch.Tensor, k8: torch.Tensor, v: torch.Tensor, out_proj: nn.Module,
                          dtype: torch.dtype) -> torch.Tensor:
        """out_proj(attention) from q8, k8 as `forward_quantized` takes them: -> [B, L, out_features] in dtype;
        O8 into `out_proj` as it is when it can take it (`project`), else dequantized first."""
        o8, descale = self.attend_quantized(q8, k8, v)
        if self.projects_directly(out_proj):
            return self.project(o8, descale, out_proj, dtype)
        return out_proj(dequantize_heads(o8, descale, self.head_dim, dtype))

    def bind_projection(self, out_proj: nn.Module) -> bool:
        """Derive `projection_weight` from `out_proj` (an FP8 layer this core projects into directly): its e4m3
        weight [Np, H * D] laid out as [Np, H * Dp], each head's columns followed by Dp - D zero columns. Zero
        columns add nothing to the sums, so the projection's result is the same (exactly so with exact
        accumulation). Derived once, from the weight as it is now: re-bind after changing out_proj's weight.
        Returns whether it bound (False: the layer cannot take O8 directly)."""
        self.projection_weight = None
        if not self.projects_directly(out_proj) or self.head_dim_padded == self.head_dim:
            return False
        heads = out_proj.in_features // self.head_dim
        w = out_proj.weight.view(torch.uint8)[:, : out_proj.in_features].unflatten(1, (heads, self.head_dim))
        padded = F.pad(w, (0, self.head_dim_padded - self.head_dim)).flatten(1)
        self.projection_weight = padded.contiguous().view(FP8_DTYPE)
        return True

    def project(self, o8: torch.Tensor, descale: torch.Tensor, out_proj: nn.Module,
                dtype: torch.dtype) -> torch.Tensor:
        """The FP8 output projection of O8 [B, L, H, Dp] (descale [1, 1, 1, 1]) -> [B, L, out_features] in dtype;
        O's per-tensor descale is the activation scale of the GEMM. With a bound `projection_weight` O8 goes in
        as it is; otherwise the head padding is dropped and the width padded to the layer's, as bytes (e4m3
        copies exactly)."""
        b, seq, heads, padded = o8.shape
        weight = self.projection_weight
        if weight is not None and weight.shape == (out_proj.out_padded, heads * padded):
            y = out_proj.kernel_plan().gemm(out_proj, o8.reshape(b * seq, heads * padded), descale.reshape(1, 1),
                                            dtype, weight)
            return out_proj.finish(y, (b * seq,)).view(b, seq, -1)
        rows = o8.view(torch.uint8)[..., : self.head_dim].reshape(b * seq, heads * self.head_dim)
        pad = out_proj.in_padded - rows.shape[1]
        x8 = (F.pad(rows, (0, pad)) if pad else rows.contiguous()).view(FP8_DTYPE)
        return out_proj.forward_quantized(x8, descale.reshape(1, 1), dtype).view(b, seq, -1)

    def extra_repr(self) -> str:
        excluded = f", BF16 in steps {','.join(self.steps.exclude)}" if self.steps and self.steps.exclude else ""
        return (f"head_dim={self.head_dim} (padded {self.head_dim_padded}), q/k/v/P/O e4m3 per tensor, "
                f"{'emulated' if self.emulate else 'cuDNN'}{excluded}")


def fp8_attention_cores(model: nn.Module) -> dict[str, nn.Module]:
    """The FP8 attention cores (`Fp8Sdpa`) of `model` by module name (empty when it has none)."""
    return {name: m for name, m in model.named_modules() if getattr(m, "is_fp8_attention", False)}


def enable_fp8_attention(model: nn.Module, exclude: tuple[str, ...] = (), emulate: bool = False,
                         device: torch.device | None = None,
                         exclude_steps: tuple[str, ...] = ()) -> tuple[list[str], str | None]:
    """Swap the attention core of every block whose name matches no `exclude` pattern (fnmatch on the attention
    module's name, e.g. "layers.0.attn") for Fp8Sdpa. Returns (swapped names, reason it is off or None).
    exclude_steps: denoising steps that run BF16 attention (step ranges, fp8/attention_steps.py); the cores share
    one `AttentionSteps`, installed as the model's `fp8_attention_steps` for the pipeline to set.

    Unless `emulate`, the device (default: the model's) must run cuDNN FP8 SDPA; if it cannot, nothing is swapped
    and the reason is logged once and returned: the model keeps BF16 attention.
    """
    device = device or next(model.parameters()).device
    steps = AttentionSteps(tuple(exclude_steps))  # checked before anything is swapped
    reason = None if emulate else fp8_attention_unsupported_reason(device)
    if reason:
        _say_once("unsupported", f"FP8 attention off, BF16 attention runs instead: {reason}")
        return [], reason
    swapped = []
    for name, module in model.named_modules():
        core = getattr(module, "sdpa", None)
        if core is None or not hasattr(module, "head_dim") or any(fnmatch.fnmatchcase(name, p) for p in exclude):
            continue
        module.sdpa = Fp8Sdpa(module.head_dim, qk_descale_bound(module.norm_q.weight),
                              qk_descale_bound(module.norm_k.weight), emulate=emulate).to(device)
        to_out = getattr(module, "to_out", None)
        if to_out is not None:
            module.sdpa.bind_projection(to_out[0])
        swapped.append(name)
    if swapped:
        _share_steps(model, steps)
    return swapped, None


def set_attention_steps(model: nn.Module, exclude_steps: tuple[str, ...]) -> None:
    """Give the FP8 attention cores of `model` (an FP8 checkpoint, say) another step exclusion: one new shared
    `AttentionSteps`. The exclusion is a run-time choice, so it needs no re-quantization."""
    if not fp8_attention_cores(model):
        raise ValueError("the model has no FP8 attention cores; quantize it with Fp8Config(attention='fp8')")
    _share_steps(model, AttentionSteps(tuple(exclude_steps)))


def _share_steps(model: nn.Module, steps: AttentionSteps) -> None:
    """`steps` as the switch of every FP8 attention core of `model`, and as its `fp8_attention_steps`."""
    for core in fp8_attention_cores(model).values():
        core.steps = steps
    model.fp8_attention_steps = steps


_SAID: set[str] = set()


def _say_once(kind: str, message: str) -> None:
    if kind not in _SAID:
        _SAID.add(kind)
        log.warning(message)
