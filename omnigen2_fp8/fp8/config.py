"""Fp8Config: which linears become FP8, with which scale granularity, padding and kernel.

The config is the whole policy: `quantize_fp8(model, Fp8Config(...))` reads nothing else, and the same dict is
stored in an FP8 checkpoint's config.json under "quantization_config" (with a format version), so a checkpoint
always says how it was made.
"""
from __future__ import annotations

import dataclasses
import enum
import fnmatch
import re
from dataclasses import dataclass, field

from .attention_steps import parse_step_range

FORMAT_VERSION = 1
QUANT_METHOD = "omnigen2_fp8"
# FP8 tensor cores (torch._scaled_mm) need K and N divisible by 16.
TENSOR_CORE_MULTIPLE = 16
# What to do with a layer whose K or N is not a multiple of 16 (see Fp8Config.misaligned).
MISALIGNED_POLICIES = ("pad", "reference", "error")


class Fp8ConfigError(ValueError):
    """An Fp8Config (or a checkpoint's quantization_config) with an invalid or unsupported value."""


class WeightGranularity(str, enum.Enum):
    """How many scales a weight gets: one per output channel (row of W) or one for the whole tensor."""

    PER_CHANNEL = "per_channel"
    PER_TENSOR = "per_tensor"


class ActivationGranularity(str, enum.Enum):
    """Dynamic activation scales, computed on every call: one per token (row of x) or one per call."""

    PER_TOKEN = "per_token"
    PER_TENSOR = "per_tensor"


class Kernel(str, enum.Enum):
    """How an Fp8Linear computes.

    AUTO: CUBLAS_PADDED on a CUDA GPU with FP8 tensor cores, TORCH_REFERENCE on the CPU; an older GPU raises.
    CUBLAS_PADDED: fused Triton activation quantization + torch._scaled_mm (cuBLASLt) on K/N padded to 16; the
        blocks can run their norms, RoPE and residual epilogues as fused kernels too (fp8/fused_block.py; opt in
        with `use_plan(model, plan_for(Kernel.CUBLAS_PADDED, fused_block=True))`: slower than compile's fusion).
    CUBLAS_TORCH_QUANT: the same GEMM with the activation quantization as plain torch ops (the slow trap; kept
        only so benchmarks can show what the fused kernel buys).
    CUBLAS_INDUCTOR_QUANT: eager like CUBLAS_PADDED; under torch.compile the quantization is left as torch ops
        for inductor to fuse with the RMSNorm / modulation / SwiGLU around it.
    TORCH_REFERENCE: FP8 emulation: the same e4m3 values, dequantized and multiplied exactly (float64 on CPU).
    """

    AUTO = "auto"
    CUBLAS_PADDED = "cublas-padded"
    CUBLAS_TORCH_QUANT = "cublas-torch-quant"
    CUBLAS_INDUCTOR_QUANT = "cublas-inductor-quant"
    TORCH_REFERENCE = "torch-reference"


ATTENTION_CHOICES = ("bf16", "fp8")
_BLOCKS = r"(layers|noise_refiner|ref_image_refiner|context_refiner)\.\d+"
# The four GEMM groups of every block (32 main, 2 noise, 2 reference and 2 context refiners), fused or not.
DEFAULT_INCLUDE = (
    rf"re:{_BLOCKS}\.attn\.(to_q|to_k|to_v|to_qkv)",
    rf"re:{_BLOCKS}\.attn\.to_out\.0",
    rf"re:{_BLOCKS}\.feed_forward\.(linear_1|linear_3|linear_13)",
    rf"re:{_BLOCKS}\.feed_forward\.linear_2",
)
# Why each module a model declares in `high_precision_modules` stays BF16, keyed by those names (the report
# repeats these per layer). The default exclude list is derived from the model's declaration (`for_model`).
HIGH_PRECISION_REASONS = {
    "norm1.linear": "AdaLN modulation: its output scales every normalised activation and gates the residual "
                     "through tanh, so its error reaches the whole block; it runs on one temb row per sample, "
                     "so FP8 would save no time (see python -m benchmarks.fp8_sensitivity)",
    "x_embedder": "patch embedding: K = 64, a memory-bound GEMM with no FP8 gain; first layer of the image path",
    "ref_image_patch_embedder": "reference patch embedding: K = 64, memory-bound, no FP8 gain",
    "time_caption_embed": "timestep MLP and caption embedder: one row per sample / ~100 text tokens, negligible "
                            "FLOPs; conditioning that every block depends on",
    "norm_out": "output head: its error goes straight into the predicted velocity; tiny (64 outputs, or one "
                "temb row)",
    "image_index_embedding": "reference-index embedding: a learned table, not a linear",
}
# An exclude pattern "module:<name>" covers the module called <name> at any depth and everything inside it.
MODULE_PATTERN_PREFIX = "module:"


@dataclass(frozen=True)
class Fp8Config:
    """FP8 (e4m3) quantization policy for OmniGen2 linears.

    include / exclude: module-name patterns (fnmatch, a regex prefixed with "re:" that must match the whole name,
    or "module:<name>" for a named module at any depth and everything inside it); a linear is quantized when it
    matches an include pattern and no exclude pattern. exclude None (the default) means the modules the model
    declares in `high_precision_modules`; `for_model(model)` resolves it (quantize_fp8 does).
    pad_multiple: K and N are zero-padded to this multiple once, at quantization (FP8 tensor cores need 16).
    misaligned: a layer with K or N not a multiple of 16 is "pad"ded (the default, above); or kept unpadded and
    run by the torch-reference kernel ("reference": the deliberately unpadded arm, which shows what padding buys);
    or refused ("error"). Without "pad", no layer is padded.
    fuse_projections: call model.fuse_projections() first, so q/k/v and gate/up each run as one GEMM sharing
    one activation quantization.
    fuse_swiglu: fold silu(gate) * up into the down projection's activation quantization (one kernel).
    attention: "bf16" (default) or "fp8": cuDNN's FP8 attention (Hopper+, nvidia-cudnn-frontend) in every block
    whose attention module name (e.g. "layers.0.attn") matches no `attention_exclude` pattern (fnmatch); where
    the device cannot run it, BF16 attention stays and the reason is reported (see fp8/attention.py).
    attention_exclude_steps: denoising steps that run BF16 attention instead (the FP8 linears stay), as step
    ranges over the run's steps: "0:3" the first three, "-2:" the last two, "5" one step (fp8/attention_steps.py).
    fast_accumulation: cuBLASLt's fast FP8 accumulation (`torch._scaled_mm(use_fast_accum=True)`): the tensor
    cores accumulate the whole K in their own reduced-precision accumulator instead of promoting partial sums to
    float32 every few K blocks: faster GEMMs for a small added error, measured per layer shape in
    results/fp8_gemm_accumulation_h200.json (the GEMM's own error against float64, beside FP8 quantization's).
    The emulation (torch-reference) always accumulates exactly.
    """

    weight_granularity: WeightGranularity = WeightGranularity.PER_CHANNEL
    activation_granularity: ActivationGranularity = ActivationGranularity.PER_TOKEN
    include: tuple[str, ...] = DEFAULT_INCLUDE
    exclude: tuple[str, ...] | None = None
    pad_multiple: int = 16
    kernel: Kernel = Kernel.AUTO
    misaligned: str = "pad"
    fuse_projections: bool = True
    fuse_swiglu: bool = True
    attention: str = "bf16"
    attention_exclude: tuple[str, ...] = ()
    attention_exclude_steps: tuple[str, ...] = ()
    fast_accumulation: bool = True
    format_version: int = FORMAT_VERSION
    _compiled: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: normalise in place once
        set_(self, "weight_granularity", _enum(WeightGranularity, self.weight_granularity, "weight_granularity"))
        set_(self, "activation_granularity",
             _enum(ActivationGranularity, self.activation_granularity, "activation_granularity"))
        set_(self, "kernel", _enum(Kernel, self.kernel, "kernel"))
        if self.attention not in ATTENTION_CHOICES:
            raise Fp8ConfigError(f"Fp8Config.attention = {self.attention!r} is not valid; choose one of "
                                 f"{list(ATTENTION_CHOICES)}")
        for name in ("include", "exclude", "attention_exclude", "attention_exclude_steps"):
            value = getattr(self, name)
            if value is None and name == "exclude":
                continue
            if isinstance(value, str):
                raise Fp8ConfigError(f"Fp8Config.{name} must be a list of patterns, got the string {value!r}; "
                                     f"write {name}=[{value!r}]")
            set_(self, name, tuple(value))
        for text in self.attention_exclude_steps:
            try:
                parse_step_range(text)
            except ValueError as err:
                raise Fp8ConfigError(f"Fp8Config.attention_exclude_steps: {err}") from None
        if self.attention_exclude_steps and self.attention != "fp8":
            raise Fp8ConfigError(f"Fp8Config.attention_exclude_steps {list(self.attention_exclude_steps)} takes steps "
                                 f"out of FP8 attention, but attention is {self.attention!r}; set attention='fp8' "
                                 "(recipe part +fp8attn) or drop the steps")
        if not isinstance(self.fast_accumulation, bool):
            raise Fp8ConfigError(f"Fp8Config.fast_accumulation must be true or false, got {self.fast_accumulation!r}")
        if not isinstance(self.pad_multiple, int) or self.pad_multiple <= 0 or self.pad_multiple % 16:
            raise Fp8ConfigError(f"Fp8Config.pad_multiple must be a positive multiple of 16 (FP8 tensor cores need "
                                 f"K and N divisible by 16); got {self.pad_multiple!r}")
        if self.misaligned not in MISALIGNED_POLICIES:
            raise Fp8ConfigError(f"Fp8Config.misaligned = {self.misaligned!r} is not valid; choose one of "
                                 f"{list(MISALIGNED_POLICIES)}")
        if self.format_version != FORMAT_VERSION:
            raise Fp8ConfigError(f"FP8 format version {self.format_version} is not supported by this code (it reads "
                                 f"version {FORMAT_VERSION}); re-quantize the model with this version")
        set_(self, "_compiled", (tuple(_compile(p) for p in self.include),
                                 tuple(_compile(p) for p in self.exclude or ())))

    def for_model(self, model) -> "Fp8Config":
        """This config with `exclude` None resolved to the model's `high_precision_modules` ("module:<name>")."""
        if self.exclude is not None:
            return self
        declared = tuple(getattr(model, "high_precision_modules", ()))
        return dataclasses.replace(self, exclude=tuple(MODULE_PATTERN_PREFIX + name for name in declared))

    # ------------------------------------------------------------------------------------------------ policy
    def layer_layout(self, in_features: int, out_features: int, name: str = "") -> tuple[int, Kernel]:
        """(pad multiple, kernel) of one FP8 layer with K = in_features, N = out_features, by `misaligned`."""
        if self.misaligned == "pad":
            return self.pad_multiple, self.kernel
        if in_features % TENSOR_CORE_MULTIPLE == 0 and out_features % TENSOR_CORE_MULTIPLE == 0:
            return 1, self.kernel
        if self.misaligned == "reference":
            return 1, Kernel.TORCH_REFERENCE
        raise Fp8ConfigError(f"linear {name or '?'} has K x N = {in_features} x {out_features}, not multiples of "
                             f"{TENSOR_CORE_MULTIPLE}, and Fp8Config.misaligned is 'error'; use misaligned='pad' "
                             "(pad once at load) or exclude the layer")

    def decide(self, name: str) -> tuple[bool, str]:
        """(quantize?, reason) for the linear called `name` (its fully qualified module name)."""
        if self.exclude is None:
            raise Fp8ConfigError("this Fp8Config's exclude list is the model's high_precision_modules; resolve it "
                                 "with config.for_model(model) before deciding layers")
        includes, excludes = self._compiled
        for pattern, match in zip(self.exclude, excludes):
            if match(name):
                return False, f"excluded by {pattern!r}: " + _exclude_reason(pattern)
        for pattern, match in zip(self.include, includes):
            if match(name):
                return True, f"included by {_short(pattern)!r}"
        return False, "matches no include pattern"

    # ------------------------------------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        """JSON-serialisable dict (enums as their string values), as stored in config.json."""
        out = {"quant_method": QUANT_METHOD}
        for f in dataclasses.fields(self):
            if f.name.startswith("_"):
                continue
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, enum.Enum) else list(value) if isinstance(value, tuple) \
                else value
        return out

    @classmethod
    def from_dict(cls, raw: dict) -> "Fp8Config":
        """Inverse of to_dict; unknown keys, another quant_method or another format version fail loudly."""
        raw = dict(raw)
        method = raw.pop("quant_method", QUANT_METHOD)
        if method != QUANT_METHOD:
            raise Fp8ConfigError(f"quantization_config.quant_method is {method!r}; this loader reads "
                                 f"{QUANT_METHOD!r} checkpoints only (written by save_fp8_checkpoint)")
        names = {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise Fp8ConfigError(f"quantization_config has unknown keys {unknown}; known keys are {sorted(names)}. "
                                 "The checkpoint was written by a newer or different version")
        if "format_version" not in raw:
            raise Fp8ConfigError("quantization_config has no format_version; it was not written by "
                                 "save_fp8_checkpoint")
        return cls(**raw)


def _enum(kind: type[enum.Enum], value, what: str):
    try:
        return kind(value)
    except ValueError:
        raise Fp8ConfigError(f"Fp8Config.{what} = {value!r} is not valid; choose one of "
                             f"{[v.value for v in kind]}") from None


def _exclude_reason(pattern: str) -> str:
    if pattern.startswith(MODULE_PATTERN_PREFIX):
        return HIGH_PRECISION_REASONS.get(pattern[len(MODULE_PATTERN_PREFIX):], "declared high precision")
    return "user exclude"


def covers(name: str, module: str) -> bool:
    """True when the fully qualified `name` is the module `module` (at any depth) or lies inside it."""
    return f".{module}." in f".{name}."


def _compile(pattern: str):
    if not isinstance(pattern, str) or not pattern:
        raise Fp8ConfigError(f"pattern {pattern!r} must be a non-empty string (fnmatch, 're:' + regex, or "
                             "'module:' + name)")
    if pattern.startswith(MODULE_PATTERN_PREFIX):
        module = pattern[len(MODULE_PATTERN_PREFIX):]
        return lambda name: covers(name, module)
    if pattern.startswith("re:"):
        try:
            regex = re.compile(pattern[3:])
        except re.error as err:
            raise Fp8ConfigError(f"pattern {pattern!r} is not a valid regular expression ({err})") from None
        return lambda name: regex.fullmatch(name) is not None
    return lambda name: fnmatch.fnmatchcase(name, pattern)


def _short(pattern: str, n: int = 60) -> str:
    return pattern if len(pattern) <= n else pattern[: n - 3] + "..."
