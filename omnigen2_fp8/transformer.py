"""The OmniGen2 diffusion transformer (DiT) in plain PyTorch, with the official parameter names and shapes.

Reads top-down: config, model (embed -> refine -> joint blocks -> norm out), blocks, attention, feed-forward, norms.
The model maps noisy latents, a timestep, text features and optional reference-image latents to a velocity; no
scheduler, guidance, VAE or text encoder lives here.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attention import GroupedSdpa, key_padding_mask
from .main_layers import MainStack
from .packing import pad_rotary as _pad_rotary, patchify, stack_padded as _stack_padded, unpatchify
from .rope import RotaryTables, SampleLayout, apply_rotary

MAX_REFERENCE_IMAGES = 5
OFFICIAL_CLASS_NAME = "OmniGen2Transformer2DModel"


class ConfigError(ValueError):
    """A transformer config.json with missing, unknown or inconsistent values."""


@dataclass
class TransformerConfig:
    """Hyper-parameters; the field names are the keys of the shipped `transformer/config.json`."""

    patch_size: int = 2
    in_channels: int = 16
    out_channels: int | None = None
    hidden_size: int = 2520
    num_layers: int = 32
    num_refiner_layers: int = 2
    num_attention_heads: int = 21
    num_kv_heads: int = 7
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    axes_dim_rope: tuple[int, ...] = (40, 40, 40)
    axes_lens: tuple[int, ...] = (1024, 1664, 1664)
    text_feat_dim: int = 2048
    timestep_scale: float = 1000.0

    def __post_init__(self):
        self.axes_dim_rope = tuple(self.axes_dim_rope)
        self.axes_lens = tuple(self.axes_lens)
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                              f"{self.num_attention_heads}")
        if self.num_attention_heads % self.num_kv_heads:
            raise ConfigError(f"num_attention_heads {self.num_attention_heads} is not a multiple of num_kv_heads "
                              f"{self.num_kv_heads}")
        if sum(self.axes_dim_rope) != self.head_dim or any(d % 2 for d in self.axes_dim_rope):
            raise ConfigError(f"axes_dim_rope {list(self.axes_dim_rope)} must be even and sum to the head dim "
                              f"{self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def kv_dim(self) -> int:
        return self.head_dim * self.num_kv_heads

    @property
    def temb_dim(self) -> int:
        return min(self.hidden_size, 1024)

    @property
    def ffn_dim(self) -> int:
        inner = 4 * self.hidden_size
        if self.ffn_dim_multiplier is not None:
            inner = int(self.ffn_dim_multiplier * inner)
        return self.multiple_of * math.ceil(inner / self.multiple_of)

    @property
    def out_dim(self) -> int:
        return self.out_channels or self.in_channels

    @classmethod
    def from_name(cls, name: str) -> "TransformerConfig":
        """Named presets: "omnigen2" (as shipped) and "tiny" (the golden-vector size, for tests)."""
        if name not in PRESETS:
            raise ConfigError(f"unknown transformer preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**PRESETS[name])

    @classmethod
    def from_dict(cls, raw: dict, source: str | os.PathLike = "config") -> "TransformerConfig":
        """Validate a config.json dict: keys starting with "_" are metadata; any other unknown or missing key fails."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in raw.items() if not k.startswith("_")}
        unknown = sorted(set(values) - names)
        missing = sorted(names - set(values))
        if unknown or missing:
            parts = [f"unknown keys {unknown}" if unknown else "", f"missing keys {missing}" if missing else ""]
            raise ConfigError(f"{source}: {' and '.join(p for p in parts if p)}. An OmniGen2 transformer config has "
                              f"exactly these keys: {sorted(names)}")
        class_name = raw.get("_class_name", OFFICIAL_CLASS_NAME)
        if class_name != OFFICIAL_CLASS_NAME:
            raise ConfigError(f"{source}: _class_name is {class_name!r}, not {OFFICIAL_CLASS_NAME!r}; "
                              "this folder holds another model")
        return cls(**values)

    def to_dict(self) -> dict:
        return {"_class_name": OFFICIAL_CLASS_NAME, **dataclasses.asdict(self),
                "axes_dim_rope": list(self.axes_dim_rope), "axes_lens": list(self.axes_lens)}


PRESETS = {
    "omnigen2": {},
    "tiny": dict(hidden_size=120, num_layers=2, num_refiner_layers=1, num_attention_heads=6, num_kv_heads=2,
                 multiple_of=32, axes_dim_rope=(4, 8, 8), text_feat_dim=64),
}


class OmniGen2Transformer(nn.Module):
    """OmniGen2 DiT: velocity = model(latents, timestep, text_hidden_states, text_attention_mask, ref_latents)."""

    # Kept in high precision by the FP8 policy: tanh-gated modulation, embedders and the output projection.
    high_precision_modules = ("norm1.linear", "x_embedder", "ref_image_patch_embedder", "time_caption_embed",
                              "norm_out", "image_index_embedding")
    main_layers_strategy = None  # a step cache (caching.py) during a cached run: (MainStack, hidden) -> hidden

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = c = config
        patch_dim = c.patch_size * c.patch_size * c.in_channels
        self.time_caption_embed = TimeCaptionEmbedding(c)
        self.x_embedder = nn.Linear(patch_dim, c.hidden_size)
        self.ref_image_patch_embedder = nn.Linear(patch_dim, c.hidden_size)
        self.image_index_embedding = nn.Parameter(torch.empty(MAX_REFERENCE_IMAGES, c.hidden_size))
        nn.init.normal_(self.image_index_embedding, std=0.02)
        self.noise_refiner = nn.ModuleList(TransformerBlock(c, modulation=True) for _ in range(c.num_refiner_layers))
        self.ref_image_refiner = nn.ModuleList(TransformerBlock(c, modulation=True)
                                               for _ in range(c.num_refiner_layers))
        self.context_refiner = nn.ModuleList(TransformerBlock(c, modulation=False)
                                             for _ in range(c.num_refiner_layers))
        self.layers = nn.ModuleList(TransformerBlock(c, modulation=True) for _ in range(c.num_layers))
        self.norm_out = OutputNorm(c)
        self.rope = RotaryTables(c.axes_dim_rope, c.axes_lens)

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, latents: torch.Tensor | Sequence[torch.Tensor], timestep: torch.Tensor | float,
                text_hidden_states: torch.Tensor, text_attention_mask: torch.Tensor,
                ref_latents: Sequence[Sequence[torch.Tensor] | None] | None = None):
        """Predict the velocity (data minus noise direction) for each sample.

        latents: list of [C, H, W] (sizes may differ) or [B, C, H, W]; timestep: [B] in [0, 1], 0 = noise;
        text_hidden_states: [B, T, text_feat_dim]; text_attention_mask: [B, T], 1 = real token, right padded;
        ref_latents: length-B list of lists of [C, h, w] reference latents, or None.
        Returns a list of [C, H, W] velocities, or [B, C, H, W] when `latents` was a tensor.
        """
        images = self._check_latents(latents)
        batch = len(images)
        refs = self._check_refs(ref_latents, batch)
        timestep = self._check_timestep(timestep, batch, images[0].device)
        text_lens = self._check_text(text_hidden_states, text_attention_mask, batch)
        p = self.config.patch_size
        layouts = [SampleLayout(text_lens[i], tuple((r.shape[1] // p, r.shape[2] // p) for r in refs[i]),
                                (images[i].shape[1] // p, images[i].shape[2] // p)) for i in range(batch)]
        device = images[0].device
        rotary = [self.rope.cos_sin(layout, device) for layout in layouts]

        # 1. Timestep and caption embeddings; silu(temb) feeds every modulation.
        temb, text = self.time_caption_embed(timestep, text_hidden_states)
        temb_act = F.silu(temb)

        # 2. Context refiner: the text alone.
        text_segments = [(0, n) for n in text_lens]
        text = self._refine(self.context_refiner, [text[i, :n] for i, n in enumerate(text_lens)], text_lens, rotary,
                            text_segments, None)

        # 3. Noise refiner: the noisy image alone.
        img_tokens = [self.x_embedder(patchify(x, p)) for x in images]
        img_lens = [layout.img_len for layout in layouts]
        img_segments = [(lay.joint_len - lay.img_len, lay.joint_len) for lay in layouts]
        img_tokens = self._refine(self.noise_refiner, img_tokens, img_lens, rotary, img_segments, temb_act)

        # 4. Reference refiner: every reference image as its own sequence, tagged with its index embedding.
        ref_tokens, ref_owner, ref_segments = [], [], []
        for i, (layout, sample_refs) in enumerate(zip(layouts, refs)):
            start = layout.text_len
            for j, ref in enumerate(sample_refs):
                ref_tokens.append(self.ref_image_patch_embedder(patchify(ref, p)) + self.image_index_embedding[j])
                ref_owner.append(i)
                ref_segments.append((start, start + layout.ref_lens[j]))
                start += layout.ref_lens[j]
        if ref_tokens:
            ref_lens = [t.shape[0] for t in ref_tokens]
            ref_rotary = [rotary[i] for i in ref_owner]
            # Slices, not list indexing: no host-to-device copy, so the forward stays CUDA-graph capturable.
            ref_temb = torch.cat([temb_act[i: i + 1] for i in ref_owner])
            ref_tokens = self._refine(self.ref_image_refiner, ref_tokens, ref_lens, ref_rotary, ref_segments,
                                      ref_temb)

        # 5. Joint blocks over [text | ref_1 .. ref_n | noisy], left-packed and right-padded per sample.
        joint, next_ref = [], 0
        for i, layout in enumerate(layouts):
            n_refs = len(refs[i])
            parts = [text[i], *ref_tokens[next_ref: next_ref + n_refs], img_tokens[i]]
            next_ref += n_refs
            joint.append(torch.cat(parts, dim=0))
        joint_lens = [layout.joint_len for layout in layouts]
        hidden = _stack_padded(joint)
        cos, sin = _pad_rotary(rotary, [(0, n) for n in joint_lens])
        stack = MainStack(self.layers, key_padding_mask(joint_lens, hidden.shape[1], device), cos, sin, temb_act)
        hidden = stack(hidden) if self.main_layers_strategy is None else self.main_layers_strategy(stack, hidden)

        # 6. Output norm, the noisy image's tokens, unpatchify.
        hidden = self.norm_out(hidden, temb_act)
        outputs = [unpatchify(hidden[i, n - layout.img_len: n], layout.noisy_grid, p, self.config.out_dim)
                   for i, (layout, n) in enumerate(zip(layouts, joint_lens))]
        return torch.stack(outputs) if isinstance(latents, torch.Tensor) else outputs

    def _refine(self, blocks: nn.ModuleList, tokens: list[torch.Tensor], lens: list[int],
                rotary: list[tuple[torch.Tensor, torch.Tensor]], segments: list[tuple[int, int]],
                temb_act: torch.Tensor | None) -> list[torch.Tensor]:
        """Run refiner blocks over a ragged set of sequences; `segments` locate each in its sample's joint RoPE."""
        hidden = _stack_padded(tokens)
        cos, sin = _pad_rotary(rotary, segments)
        mask = key_padding_mask(lens, hidden.shape[1], hidden.device)
        for block in blocks:
            hidden = block(hidden, mask, cos, sin, temb_act)
        return [hidden[i, :n] for i, n in enumerate(lens)]

    # ------------------------------------------------------------------------------------- input checking
    def _check_latents(self, latents) -> list[torch.Tensor]:
        if isinstance(latents, torch.Tensor):
            if latents.dim() != 4:
                raise ValueError(f"latents must be [B, C, H, W] or a list of [C, H, W]; got {tuple(latents.shape)}")
            images = list(latents.unbind(0))
        else:
            images = list(latents)
        if not images:
            raise ValueError("latents is empty; pass at least one [C, H, W] latent")
        for i, x in enumerate(images):
            self._check_image(x, f"latents[{i}]")
        return images

    def _check_image(self, x: torch.Tensor, what: str) -> None:
        c = self.config
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            raise ValueError(f"{what} must be a [C, H, W] tensor; got {getattr(x, 'shape', type(x).__name__)}")
        if x.shape[0] != c.in_channels:
            raise ValueError(f"{what} has {x.shape[0]} channels; the model takes {c.in_channels}")
        if x.shape[1] % c.patch_size or x.shape[2] % c.patch_size or x.shape[1] == 0 or x.shape[2] == 0:
            raise ValueError(f"{what} has spatial size {tuple(x.shape[1:])}; both sides must be positive multiples "
                             f"of the patch size {c.patch_size}")

    def _check_refs(self, ref_latents, batch: int) -> list[list[torch.Tensor]]:
        if ref_latents is None:
            return [[] for _ in range(batch)]
        if len(ref_latents) != batch:
            raise ValueError(f"ref_latents has {len(ref_latents)} entries for a batch of {batch}; pass one list "
                             "(or None) per sample")
        refs = [list(r) if r is not None else [] for r in ref_latents]
        for i, sample_refs in enumerate(refs):
            if len(sample_refs) > MAX_REFERENCE_IMAGES:
                raise ValueError(f"sample {i} has {len(sample_refs)} reference images; OmniGen2 takes at most "
                                 f"{MAX_REFERENCE_IMAGES}")
            for j, r in enumerate(sample_refs):
                self._check_image(r, f"ref_latents[{i}][{j}]")
        return refs

    @staticmethod
    def _check_timestep(timestep, batch: int, device: torch.device) -> torch.Tensor:
        timestep = torch.as_tensor(timestep, device=device)
        if timestep.dim() == 0:
            timestep = timestep.expand(batch)
        if timestep.shape != (batch,):
            raise ValueError(f"timestep must be [B] = [{batch}] (or a scalar); got shape {tuple(timestep.shape)}")
        return timestep

    def _check_text(self, text: torch.Tensor, mask: torch.Tensor, batch: int) -> list[int]:
        if text.dim() != 3 or text.shape[0] != batch or text.shape[2] != self.config.text_feat_dim:
            raise ValueError(f"text_hidden_states must be [B={batch}, T, {self.config.text_feat_dim}]; got "
                             f"{tuple(text.shape)}")
        if mask.shape != text.shape[:2]:
            raise ValueError(f"text_attention_mask must be [B, T] = {tuple(text.shape[:2])}; got {tuple(mask.shape)}")
        mask = mask.bool()
        lens = mask.sum(dim=1)
        right_padded = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0) < lens.unsqueeze(1)
        lens_list = lens.tolist()  # one host sync per forward; a CPU mask costs none
        if not torch.equal(right_padded, mask) or min(lens_list) == 0:
            raise ValueError("text_attention_mask must mark at least one real token per sample and be right padded "
                             "(ones first, then zeros)")
        return lens_list

    # ------------------------------------------------------------------------------------- fusion
    def fuse_projections(self) -> "OmniGen2Transformer":
        """Fuse q/k/v into `attn.to_qkv` and gate/up into `feed_forward.linear_13` in every block (same math)."""
        for block in self.blocks():
            block.attn.fuse()
            block.feed_forward.fuse()
        return self

    def compile_blocks(self, **compile_kwargs) -> "OmniGen2Transformer":
        """torch.compile each block in place (regional compilation): every block of a kind shares one compiled
        graph, compiles in seconds rather than minutes, and the ragged-batch bookkeeping stays in eager Python."""
        compile_kwargs.setdefault("dynamic", True)  # token counts vary by branch and size: no second compile
        for block in self.blocks():
            block.compile(**compile_kwargs)
        return self

    def blocks(self) -> list["TransformerBlock"]:
        return [*self.context_refiner, *self.noise_refiner, *self.ref_image_refiner, *self.layers]

    def use_qk_norm_rope(self, fn: Callable | None) -> "OmniGen2Transformer":
        """Run every block's q/k RMSNorm + RoPE through `fn` on CUDA inputs (see `Attention.qk_norm_rope`), e.g.
        the fused kernel `omnigen2_fp8.fp8.fused_kernels.fused_qk_norm_rope`; None: the separate torch ops again."""
        for block in self.blocks():
            block.attn.qk_norm_rope = fn
        return self


# --------------------------------------------------------------------------------------------------- parts
class TimeCaptionEmbedding(nn.Module):
    """Sinusoidal timestep -> MLP (temb), and RMSNorm + Linear for the MLLM text features."""

    sinusoid_dim = 256

    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.timestep_scale = c.timestep_scale
        self.timestep_embedder = TimestepMLP(self.sinusoid_dim, c.temb_dim)
        self.caption_embedder = nn.Sequential(RMSNorm(c.text_feat_dim, c.norm_eps),
                                              nn.Linear(c.text_feat_dim, c.hidden_size))

    def forward(self, timestep: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sinusoid = timestep_sinusoid(timestep * self.timestep_scale, self.sinusoid_dim).to(text.dtype)
        return self.timestep_embedder(sinusoid), self.caption_embedder(text)


def timestep_sinusoid(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[B] -> [B, dim]: [cos | sin] of t * max_period^(-i / (dim/2)), i = 0 .. dim/2 - 1, in float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float().unsqueeze(1) * freqs.unsqueeze(0)
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class TimestepMLP(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 and cast back to the input dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch's rms_norm upcasts half inputs to float32 internally (one fused kernel on recent CUDA builds).
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


class AdaRMSNorm(nn.Module):
    """`norm1` of a modulated block: RMSNorm plus the AdaLN projection of silu(temb) into 4 modulations."""

    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.norm = RMSNorm(c.hidden_size, c.norm_eps)
        self.linear = nn.Linear(c.temb_dim, 4 * c.hidden_size)


class TransformerBlock(nn.Module):
    """Pre/post-normed attention + SwiGLU block; with modulation, scales and tanh gates come from temb."""

    def __init__(self, c: TransformerConfig, modulation: bool):
        super().__init__()
        self.modulation = modulation
        self.attn = Attention(c)
        self.feed_forward = FeedForward(c.hidden_size, c.ffn_dim)
        self.norm1 = AdaRMSNorm(c) if modulation else RMSNorm(c.hidden_size, c.norm_eps)
        self.norm2 = RMSNorm(c.hidden_size, c.norm_eps)
        self.ffn_norm1 = RMSNorm(c.hidden_size, c.norm_eps)
        self.ffn_norm2 = RMSNorm(c.hidden_size, c.norm_eps)

    # A precision recipe may install fused kernels for the whole block here (fp8/fused_block.py): called as
    # fused_forward(block, x, mask, cos, sin, temb_act), same math, falling back to `forward_unfused` itself.
    fused_forward = None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                temb_act: torch.Tensor | None) -> torch.Tensor:
        """x [N, L, D]; mask [N, 1, 1, L] or None; cos/sin [N, L, head_dim/2]; temb_act = silu(temb) [N, temb_dim]."""
        if self.fused_forward is not None:
            return self.fused_forward(self, x, mask, cos, sin, temb_act)
        return self.forward_unfused(x, mask, cos, sin, temb_act)

    def forward_unfused(self, x: torch.Tensor, mask: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                        temb_act: torch.Tensor | None) -> torch.Tensor:
        """The block as separate modules (the reference any fused implementation must match)."""
        if not self.modulation:
            x = x + self.norm2(self.attn(self.norm1(x), mask, cos, sin))
            return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))
        scale_msa, gate_msa, scale_mlp, gate_mlp = self.norm1.linear(temb_act).unsqueeze(1).chunk(4, dim=-1)
        attn_out = self.attn(self.norm1.norm(x) * (1 + scale_msa), mask, cos, sin)
        x = x + gate_msa.tanh() * self.norm2(attn_out)
        ffn_out = self.feed_forward(self.ffn_norm1(x) * (1 + scale_mlp))
        return x + gate_mlp.tanh() * self.ffn_norm2(ffn_out)


class Attention(nn.Module):
    """Grouped-query self-attention with per-head RMSNorm on q and k, then Omni-RoPE."""

    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = c.num_attention_heads, c.num_kv_heads, c.head_dim
        self.to_q = nn.Linear(c.hidden_size, c.hidden_size, bias=False)
        self.to_k = nn.Linear(c.hidden_size, c.kv_dim, bias=False)
        self.to_v = nn.Linear(c.hidden_size, c.kv_dim, bias=False)
        self.to_qkv: nn.Module | None = None
        self.norm_q = RMSNorm(c.head_dim, 1e-5)
        self.norm_k = RMSNorm(c.head_dim, 1e-5)
        self.to_out = nn.ModuleList([nn.Linear(c.hidden_size, c.hidden_size, bias=False)])
        self.sdpa: nn.Module = GroupedSdpa()  # swappable core (FP8 attention), no parameters
        # An optional fused QK-norm + RoPE for CUDA inputs (OmniGen2Transformer.use_qk_norm_rope): called as
        # fn(q, k, q_weight, k_weight, cos, sin, q_eps, k_eps) -> (q, k); the same math with one rounding at the
        # end where the torch ops round the norm's output to the model dtype before the rotation.
        self.qk_norm_rope: Callable | None = None

    def fuse(self) -> None:
        if self.to_qkv is not None:
            return
        fused = nn.Linear(self.to_q.in_features, self.to_q.out_features + 2 * self.to_k.out_features, bias=False,
                          device="meta")
        fused.weight = nn.Parameter(torch.cat([self.to_q.weight, self.to_k.weight, self.to_v.weight]),
                                    requires_grad=self.to_q.weight.requires_grad)
        self.to_qkv, self.to_q, self.to_k, self.to_v = fused, None, None, None

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.to_qkv is not None:
            q_dim, kv_dim = self.heads * self.head_dim, self.kv_heads * self.head_dim
            return self.to_qkv(x).split([q_dim, kv_dim, kv_dim], dim=-1)
        return self.to_q(x), self.to_k(x), self.to_v(x)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor):
        q, k, v = self.project_qkv(x)
        q = q.unflatten(-1, (self.heads, self.head_dim))
        k = k.unflatten(-1, (self.kv_heads, self.head_dim))
        v = v.unflatten(-1, (self.kv_heads, self.head_dim))
        if self.qk_norm_rope is not None and q.is_cuda:
            q, k = self.qk_norm_rope(q, k, self.norm_q.weight, self.norm_k.weight, cos, sin, self.norm_q.eps,
                                     self.norm_k.eps)
        else:
            q, k = self.norm_q(q), self.norm_k(k)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        project = getattr(self.sdpa, "attend_and_project", None)  # a core may feed the projection itself (FP8)
        if project is not None:
            return project(q, k, v, mask, self.to_out[0])
        return self.to_out[0](self.sdpa(q, k, v, mask))


class FeedForward(nn.Module):
    """SwiGLU: linear_2(silu(linear_1(x)) * linear_3(x)); linear_1 is the gate, linear_3 the up projection."""

    is_swiglu = True  # the FP8 package folds the SwiGLU of modules that declare this (see fp8.quantize.fold_swiglu)

    def __init__(self, dim: int, inner_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(dim, inner_dim, bias=False)
        self.linear_3 = nn.Linear(dim, inner_dim, bias=False)
        self.linear_2 = nn.Linear(inner_dim, dim, bias=False)
        self.linear_13: nn.Module | None = None

    def fuse(self) -> None:
        if self.linear_13 is not None:
            return
        fused = nn.Linear(self.linear_1.in_features, 2 * self.linear_1.out_features, bias=False, device="meta")
        fused.weight = nn.Parameter(torch.cat([self.linear_1.weight, self.linear_3.weight]),
                                    requires_grad=self.linear_1.weight.requires_grad)
        self.linear_13, self.linear_1, self.linear_3 = fused, None, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.linear_13 is not None:
            gate, up = self.linear_13(x).chunk(2, dim=-1)
        else:
            gate, up = self.linear_1(x), self.linear_3(x)
        return self.linear_2(F.silu(gate) * up)


class OutputNorm(nn.Module):
    """norm_out: linear_2(LayerNorm(x) * (1 + linear_1(silu(temb)))), LayerNorm without affine, eps 1e-6."""

    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.linear_1 = nn.Linear(c.temb_dim, c.hidden_size)
        self.linear_2 = nn.Linear(c.hidden_size, c.patch_size * c.patch_size * c.out_dim)

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor) -> torch.Tensor:
        scale = self.linear_1(temb_act).unsqueeze(1)
        return self.linear_2(F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale))
