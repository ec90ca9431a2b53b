"""Speed options of the in-process Qwen2.5-VL judge. Each computes what the plain path computes, up to float rounding
(so a greedy answer can differ only where two tokens nearly tie); each is part of the judge's recorded settings.

vision attention
    "packed" (default): the vision tower attends every window (28 windowed blocks) and every image (4 full blocks) of
        a batch in one attention call per distinct length: windows of equal length are stacked into one batch. Without
        FlashAttention-2, transformers' vision attention loops in Python over windows instead, one small SDPA call
        each (about 25 windows per 512x512 image): on an H200 that loop was a quarter of the judge's time.
    "per-window": transformers' own loop.
decode
    "compiled": a static KV cache of a fixed length (`cache_tokens`) and transformers' generate
        compiling the decode step (torch.compile, inductor, mode reduce-overhead, which replays CUDA graphs; dynamic
        shapes, so one compile serves every batch size). An eager decode step of the 7B is about a thousand small
        kernels launched from Python: launch-bound at any batch size. The prefill stays eager; EOS still stops early.
    "static": the same static cache, eager (the cache alone; for checking, no speed-up expected).
    "eager": transformers' dynamic cache, eager, SDPA choosing its kernel for every attention call.
        Not bitwise reproducible on a GPU: on an H200 (torch 2.11, transformers 5.17) the kernel SDPA picks for the
        one-token decode steps gave other tokens from the second new token on when the same batch was decoded again
        in the same process (2 to 6 of 128 random-judge answers kept all their token ids), while the prefill logits
        stayed bitwise equal; torch.use_deterministic_algorithms does not change that kernel.
    "eager-reproducible" (default): "eager" with every one-token decode step's attention as two batched GEMMs per
        layer (harness.gedit.decode_attention): the same token ids in every repeat, memory state, process and GPU
        measured (128 of 128 on two H200s), and faster, since transformers' SDPA path repeats the key/value heads of
        the whole cache for every decode step of a padded batch and this one reads each head once.

Why this default (H200, 7B-shaped random weights, 128 new tokens, results/judge_reproducible_decode_h200.json):
packed vision + eager-reproducible decoding reached 7.36 samples/s at batch 256 against 3.42 for packed + eager in
the same process (76 vs 74 GiB peak; 256 is the auto batch size on a 141 GiB GPU), with nothing to compile: a
1212-sample run in 2.7 min. Packed + compiled reached 3.87 samples/s at batch 64 after 220 s of compilation per
process (results/judge_speed_h200.json).

The vision option is installed by swapping each vision block's attention module for `PackedVisionAttention`, which
keeps the original's parameters (same state-dict keys): transformers' attention interface is handed one window at a
time by the vision block and cannot batch them, and its varlen route is reserved for FlashAttention packages.
"""
from __future__ import annotations

import inspect
import weakref
from typing import Any

import torch

from harness.gedit.decode_attention import set_decode_attention
from harness.gedit.judge_batching import PROMPT_TOKENS_BOUND

VISION_ATTENTION_MODES = ("packed", "per-window")
DECODE_MODES = ("eager", "eager-reproducible", "compiled", "static")
DYNAMIC_CACHE_MODES = ("eager", "eager-reproducible")  # the others keep a static KV cache
# What each non-plain option does, as recorded in the judge's settings (bump the version on any change).
VISION_ATTENTION_SETTINGS = {"packed": "v1: windows and images of equal length stacked, one attention call per length"}
DECODE_SETTINGS = {
    "eager-reproducible": "v2: dynamic cache, eager; one-token decode steps as grouped-query bmm attention with float32 "
                          "scores and softmax (harness.gedit.decode_attention)",
    "static": "v1: StaticCache of cache_tokens() tokens, eager",
    "compiled": "v1: StaticCache of cache_tokens() tokens, decode step torch.compile'd by generate "
                "(inductor, reduce-overhead = CUDA graphs, dynamic shapes); prefill eager",
}
SPEED_SETTING_KEYS = ("vision_attention", "decode", "compile_backend")  # absent from the settings: the plain path
CACHE_ROUNDING = 256  # prompts past PROMPT_TOKENS_BOUND get a cache rounded up to this many tokens (few shapes)
COMPILE_BACKEND = "inductor"


class JudgeSpeedError(ValueError):
    """A speed option that does not exist or cannot run on this device; the message says the fix."""


def resolve_modes(vision_attention: str | None, decode: str | None) -> tuple[str, str]:
    """(vision attention, decode) with None meaning the default (the same on every device); unknown names are
    refused."""
    vision_attention = vision_attention or "packed"
    decode = decode or "eager-reproducible"  # bitwise reproducible and the fastest measured without compiling
    if vision_attention not in VISION_ATTENTION_MODES:
        raise JudgeSpeedError(f"unknown judge vision attention {vision_attention!r}: use one of "
                              f"{', '.join(VISION_ATTENTION_MODES)}")
    if decode not in DECODE_MODES:
        raise JudgeSpeedError(f"unknown judge decode mode {decode!r}: use one of {', '.join(DECODE_MODES)}")
    return vision_attention, decode


def reproducibility(decode: str, device: str, served: bool) -> str:
    """What a run's judgements share with a rerun on any number of processes (recorded in distributed.json)."""
    if served:
        return "decided by the judge server (its kernels and batching); not checked by this harness"
    if not str(device).startswith("cuda"):
        return "the same judgements for any number of processes on CPUs with the same thread count"
    if decode == "eager-reproducible":
        return ("the same judgements for any number of processes and GPUs of one kind: one-token decode steps run "
                "as grouped-query GEMMs (harness.gedit.decode_attention), the batches do not depend on the world size")
    return (f"decode {decode}: not bitwise reproducible on GPUs; SDPA's kernel for the one-token decode steps can "
            "give other tokens when the same batch is decoded again (a rerun, another process or GPU); the default "
            "--judge-decode eager-reproducible gives the same judgements in every run")


def speed_settings(vision_attention: str, decode: str, compile_backend: str = COMPILE_BACKEND) -> dict:
    """The non-plain options (resolved names), as recorded in the judge's settings. Absent keys mean the plain path,
    which is what judges recorded before these options existed, so their runs resume with the plain options."""
    out: dict[str, Any] = {}
    if vision_attention != "per-window":
        out["vision_attention"] = f"{vision_attention} {VISION_ATTENTION_SETTINGS[vision_attention]}"
    if decode != "eager":
        out["decode"] = f"{decode} {DECODE_SETTINGS[decode]}"
        if decode == "compiled" and compile_backend != COMPILE_BACKEND:
            out["compile_backend"] = compile_backend
    return out


def cache_tokens(prompt_tokens: int, max_new_tokens: int) -> int:
    """Static KV-cache length for a batch whose longest prompt has `prompt_tokens` tokens: PROMPT_TOKENS_BOUND (a
    GEdit call's bound) unless the prompt is longer, then that rounded up to CACHE_ROUNDING; plus the answer. One
    length for every GEdit batch keeps the compiled decode step to one shape per batch size, and the answers
    independent of which batches ran before."""
    rounded = -(-prompt_tokens // CACHE_ROUNDING) * CACHE_ROUNDING
    return max(PROMPT_TOKENS_BOUND, rounded) + max_new_tokens


class JudgeSpeed:
    """The speed options of one judge model: installs the vision attention on `model` and supplies generate's extra
    arguments (cache, compile config) for each batch. `compile_backend` is torch.compile's backend for "compiled"
    (inductor; "aot_eager" traces the same graph without code generation, for CPU checks)."""

    def __init__(self, model, device: str, vision_attention: str | None = None, decode: str | None = None,
                 compile_backend: str = COMPILE_BACKEND):
        self.model, self.device = model, str(device)
        self.vision_attention, self.decode = resolve_modes(vision_attention, decode)
        self.compile_backend = compile_backend
        self._cache_key: tuple | None = None
        self._cache = None
        self._compile_config = self._make_compile_config() if self.decode == "compiled" else None
        set_vision_attention(model, self.vision_attention)
        set_decode_attention(model, reproducible=self.decode == "eager-reproducible")

    def settings(self) -> dict:
        return speed_settings(self.vision_attention, self.decode, self.compile_backend)

    def no_grad(self):
        """The autograd context for generate: inference mode for the dynamic cache; plain no_grad with a static cache
        (it is reused across batches, and transformers' compiled decode step runs under no_grad)."""
        return torch.inference_mode() if self.decode in DYNAMIC_CACHE_MODES else torch.no_grad()

    def generate_kwargs(self, batch_size: int, prompt_tokens: int, max_new_tokens: int) -> dict:
        """Extra `generate` arguments for one batch: none when eager; else a static cache (one kept per shape and
        reset, so that CUDA graphs see the same addresses) and, when compiled, the compile config."""
        if self.decode in DYNAMIC_CACHE_MODES:
            return {}
        from transformers import StaticCache  # heavy import, only where a static cache is used

        key = (batch_size, cache_tokens(prompt_tokens, max_new_tokens))
        if key != self._cache_key:
            self._cache = None  # free the previous cache before allocating the next
            self._cache = StaticCache(config=self.model.config, max_cache_len=key[1])
            self._cache_key = key
        else:
            self._cache.reset()
        kwargs = {_cache_argument(self.model): self._cache}
        if self._compile_config is not None:
            kwargs["compile_config"] = self._compile_config
        return kwargs

    def _make_compile_config(self):
        from transformers import CompileConfig

        config = CompileConfig(backend=self.compile_backend, dynamic=True, fullgraph=False,
                               mode="reduce-overhead" if self.compile_backend == "inductor" else None)
        if not self.device.startswith("cuda"):
            config._compile_all_devices = True  # transformers compiles only on accelerators unless told
        return config


def _cache_argument(model) -> str:
    # transformers renamed generate's/forward's `past_key_values` to `cache` (5.2x; the old name is deprecated)
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


# ---------------------------------------------------------------------------------------------- vision attention
def set_vision_attention(model, mode: str) -> int:
    """Install ("packed") or remove ("per-window") PackedVisionAttention in every vision block of `model`; returns
    how many modules it changed."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLVisionAttention

    plans = _PackingPlans()
    changed = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if mode == "packed" and isinstance(child, Qwen2_5_VLVisionAttention):
                setattr(parent, name, PackedVisionAttention(child, plans))
                changed += 1
            elif mode == "per-window" and isinstance(child, PackedVisionAttention):
                setattr(parent, name, child.original)
                changed += 1
    return changed


class PackedVisionAttention(torch.nn.Module):
    """Qwen2.5-VL vision attention over packed patches (seq, dim) with `cu_seqlens` boundaries, as the module it
    replaces: same qkv/proj parameters and rotary embedding, same attention function (the config's
    `_attn_implementation` through transformers' attention interface); only the chunks are stacked by length."""

    def __init__(self, original: torch.nn.Module, plans: "_PackingPlans"):
        super().__init__()
        from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen

        self.qkv, self.proj = original.qkv, original.proj  # shared: the state dict keeps its keys
        self.num_heads, self.scaling, self.config = original.num_heads, original.scaling, original.config
        self.num_key_value_groups, self.is_causal = 1, False  # read by transformers' attention functions
        self._original = (original,)  # a tuple: not registered as a submodule (no duplicate parameters)
        self._plans = plans
        self._qwen = qwen  # its rotary embedding and attention functions, as the replaced module uses them

    @property
    def original(self) -> torch.nn.Module:
        return self._original[0]

    def forward(self, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs) -> torch.Tensor:
        """hidden_states (seq, dim) -> (seq, dim); cu_seqlens (chunks + 1,) int: chunk boundaries (windows or
        images), attention stays inside each chunk."""
        seq = hidden_states.shape[0]
        q, k, v = self.qkv(hidden_states).reshape(seq, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        q, k = self._qwen.apply_rotary_pos_emb_vision(q, k, *position_embeddings)
        attention = self._qwen.ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation,
                                                                     self._qwen.eager_attention_forward)
        plan = self._plans.get(cu_seqlens)
        q, k, v = (t.index_select(0, plan.order) for t in (q, k, v))  # (seq, heads, head_dim) in stacking order
        outputs, offset = [], 0
        for count, length in plan.groups:
            part = [t[offset:offset + count * length].unflatten(0, (count, length)).transpose(1, 2) for t in (q, k, v)]
            out, _ = attention(self, *part, attention_mask=None, scaling=self.scaling, dropout=0.0,
                               is_causal=False)  # (count, length, heads, head_dim)
            outputs.append(out.reshape(count * length, *out.shape[2:]))
            offset += count * length
        stacked = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
        result = torch.empty_like(stacked).index_copy_(0, plan.order, stacked)  # back to patch order
        return self.proj(result.reshape(seq, -1))


class _Plan:
    """How to stack chunks: `order` (seq,) patch indices, chunk after chunk grouped by length; `groups`
    [(chunks, length)] in that order."""

    def __init__(self, cu_seqlens: torch.Tensor):
        bounds = cu_seqlens.tolist()
        by_length: dict[int, list[int]] = {}
        for start, end in zip(bounds[:-1], bounds[1:]):
            if end > start:
                by_length.setdefault(end - start, []).append(start)
        self.groups = [(len(starts), length) for length, starts in by_length.items()]
        order = [torch.tensor(starts)[:, None] + torch.arange(length) for length, starts in by_length.items()]
        self.order = torch.cat([o.reshape(-1) for o in order]).to(cu_seqlens.device)


class _PackingPlans:
    """Plans for the cu_seqlens tensors of the forward in progress: the vision tower hands the same two tensors
    (windows, whole images) to all its blocks, so each plan is made once per forward. Entries are matched by
    identity and die with their tensor."""

    def __init__(self):
        self._entries: list[tuple[weakref.ref, _Plan]] = []

    def get(self, cu_seqlens: torch.Tensor) -> _Plan:
        self._entries = [(ref, plan) for ref, plan in self._entries if ref() is not None]
        for ref, plan in self._entries:
            if ref() is cu_seqlens:
                return plan
        plan = _Plan(cu_seqlens)
        self._entries.append((weakref.ref(cu_seqlens), plan))
        return plan

