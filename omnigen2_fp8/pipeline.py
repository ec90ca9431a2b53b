"""The OmniGen2 edit pipeline: instruction + reference images -> edited image, as numbered stages.

    1. text_encode      instruction (and negative prompt) -> Qwen2.5-VL last hidden state      `encode_prompt`
    2. vae_encode       reference images -> resize rules -> VAE posterior sample, scaled        `encode_images`
    3. prepare_latents  seeded Gaussian noise at the generation size                            `prepare_latents`
    4. denoise          flow-matching Euler steps with 1-, 2- or 3-branch CFG at batch 1        `denoise`
    5. vae_decode       latents -> VAE decode                                                   `decode`
    (then postprocessing to 8-bit RGB at the output size)

Each stage is a public method, so a caller with precomputed inputs (e.g. golden vectors) runs the same code as
`__call__`. Every call returns an `EditResult` holding the images, the settings used, and whether the models are
synthetic (random weights); with `clock=measure.StageClock(device)` also the wall time and peak VRAM of each stage
and of the call. Without a clock the pipeline neither synchronises nor touches the CUDA memory counters. A caller
may wrap each stage in its own context manager (`stage_hook(name)`, e.g. CUDA events or
`torch.profiler.record_function`) without any measurement code living here.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ContextManager, Iterator, Sequence

import PIL.Image
import torch
from tqdm.auto import tqdm

from . import guidance as cfg
from .caching import StepCache, StepCacheConfig, StepCacheStats, check_step_cache, installed, make_step_cache
from .checkpoints import Components, checkpoint_root, load_components, load_transformer, stored_fp8_config
from .cuda_graphs import CudaGraphForward
from .edit_result import EditResult
from .fp8 import fused_kernels, quantize_fp8
from .fp8.attention import fp8_attention_cores, set_attention_steps
from .image_processing import (MAX_PIXELS, MAX_SIDE, ImageInput, check_reference_count, generation_size,
                               load_image, postprocess, preprocess)
from .precision import Recipe, check_fp8_checkpoint, parse_recipe
from .scheduler import FlowMatchEulerScheduler
from .text_encoder import TextEncoder
from .transformer import MAX_REFERENCE_IMAGES, OmniGen2Transformer

STAGES = ("text_encode", "vae_encode", "prepare_latents", "denoise", "vae_decode")
DEFAULT_SIZE = 1024

if TYPE_CHECKING:  # the clock is passed in by callers that measure; the pipeline only calls it
    from .measure import StageClock

StageHook = Callable[[str], ContextManager]
CallHook = Callable[[str, int], ContextManager]  # (CFG branch, step index) -> wrapped around one transformer call


@dataclass
class PromptEmbeds:
    """Text features of the positive and negative prompts: hidden [1, T, D] and mask [1, T] (1 = token)."""

    prompt: torch.Tensor
    prompt_mask: torch.Tensor
    negative: torch.Tensor | None = None
    negative_mask: torch.Tensor | None = None


class OmniGen2Pipeline:
    """OmniGen2 image editing with real components: Qwen2.5-VL (transformers), FLUX VAE (diffusers), our DiT.

    Build with `from_pretrained(folder_or_hub_id, ...)`, `from_components(components, transformer, ...)`, or from
    models (`synthetic.build_synthetic_pipeline`).
    device: where computation runs; dtype: the dtype of every model (the scheduler steps in float32);
    precision: a recipe name or `precision.Recipe` ("bf16", "fp8", "fp8-nopad", ...: the DiT's linear layers
    quantized by `omnigen2_fp8.fp8.quantize_fp8` with the recipe's Fp8Config); fp8_config replaces that config,
    fp8_kernel overrides its kernel; a step-cache part ("fp8+taylorseer", "bf16+teacache:0.1") skips or
    extrapolates the main layers on some transformer calls as the official OmniGen2 does (`caching.py`;
    with cuda_graphs, TeaCache replays the main stack of computed calls, TaylorSeer whole passes);
    offload: keep models on the CPU and move each to `device` only for its stage;
    compile: torch.compile the DiT (its blocks, when it supports regional compilation);
    cuda_graphs: replay each CFG branch's transformer pass as a CUDA graph (CUDA only; removes the launch
    overhead that dominates small images; one capture per new input shape; not with offload);
    synthetic: dict describing random weights, or None for a trained checkpoint;
    fused_qk_norm_rope: on CUDA (with triton), the DiT's q/k RMSNorm + RoPE run as one Triton kernel in every
    precision (fp8/fused_kernels.py; 2.6x faster than inductor's fusion of the torch ops at 1024 on an H200,
    results/row_kernels_h200.json); False keeps the torch ops (what the official code runs).
    """

    def __init__(self, transformer: OmniGen2Transformer, vae, scheduler: FlowMatchEulerScheduler, mllm=None,
                 tokenizer=None, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                 precision: str | Recipe = "bf16", offload: bool = False, compile: bool = False,
                 synthetic: dict | None = None, progress: bool = True, fp8_config=None, processor=None,
                 cuda_graphs: bool = False, fp8_kernel: str | None = None, fused_qk_norm_rope: bool = True):
        self.recipe = parse_recipe(precision)
        _check_fp8_options(self.recipe, fp8_config, fp8_kernel)
        self.step_cache = check_step_cache(self.recipe.step_cache)
        self.step_cache_stats: StepCacheStats | None = None  # of the last denoising run
        self._step_caches: dict[StepCacheConfig, StepCache] = {}
        self.device = torch.device(device) if device is not None else _default_device()
        self.dtype = dtype or next(transformer.parameters()).dtype
        self.offload = offload
        self.precision = self.recipe.name
        self.synthetic_info = synthetic
        self.progress = progress
        self.stage_hook: StageHook | None = None
        self.transformer, self.vae, self.scheduler, self.mllm = transformer, vae, scheduler, mllm
        self.tokenizer, self.processor = tokenizer, processor
        self.text_encoder = TextEncoder(mllm, tokenizer) if mllm is not None and tokenizer is not None else None
        self.fp8_config = _requested_fp8_config(self.recipe, fp8_config, fp8_kernel)
        self.fp8_report = None
        if _is_fp8(transformer):  # an FP8 checkpoint: it runs what it was quantized with, which the recipe must say
            stored = getattr(transformer, "fp8_config", None)
            if stored is None:
                raise ValueError("the transformer holds FP8 layers but no fp8_config; load it with "
                                 "checkpoints.load_transformer or quantize it with fp8.quantize_fp8")
            self.fp8_config = check_fp8_checkpoint(stored, self.recipe, self.fp8_config, transformer)
            if self.fp8_config.attention_exclude_steps != stored.attention_exclude_steps:
                set_attention_steps(transformer, self.fp8_config.attention_exclude_steps)
                transformer.fp8_config = self.fp8_config  # what it runs now, and what a re-save writes
        elif self.fp8_config is not None:
            self.fp8_report = quantize_fp8(transformer, self.fp8_config)
        has_hook = hasattr(transformer, "use_qk_norm_rope")
        self.fused_qk_norm_rope = (fused_qk_norm_rope and has_hook and self.device.type == "cuda"
                                   and fused_kernels.HAS_TRITON)
        if has_hook:  # set either way: a model may come from another pipeline
            transformer.use_qk_norm_rope(fused_kernels.fused_qk_norm_rope if self.fused_qk_norm_rope else None)
        home = torch.device("cpu") if offload else self.device
        for module in (transformer, vae, mllm):
            if module is not None:
                module.to(home).eval().requires_grad_(False)
        self.compiled = compile
        self._transformer_fn = _compile(transformer) if compile else transformer
        if cuda_graphs and offload:
            raise ValueError("cuda_graphs=True cannot be combined with offload=True: graphs hold the weights' GPU "
                             "addresses, and offloading moves them; choose one")
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        if self.cuda_graphs:
            self._transformer_fn = CudaGraphForward(self._transformer_fn)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.size_multiple = self.vae_scale_factor * transformer.config.patch_size
        self._transformer_calls = 0

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, dtype: torch.dtype = torch.bfloat16,
                        device: str | torch.device | None = None, precision: str | Recipe = "bf16",
                        offload: bool = False, compile: bool = False, time_shift: float | None = None,
                        fp8_config=None, progress: bool = True, cuda_graphs: bool = False,
                        fp8_kernel: str | None = None, fused_qk_norm_rope: bool = True) -> "OmniGen2Pipeline":
        """Load an OmniGen2 checkpoint folder (official layout) or hub id.

        The components come from `checkpoints.load_components` (Qwen2.5-VL, FLUX VAE, tokenizer / processor,
        scheduler config, SYNTHETIC marker), the DiT from `checkpoints.load_transformer` (serialized FP8 folders
        load as FP8); scheduler/ -> FlowMatchEulerScheduler (time_shift fixes the shift instead of the dynamic
        one). A SYNTHETIC.json at the root marks random weights; every result then says synthetic=True.
        """
        precision = parse_recipe(precision)  # a wrong name or combination fails before minutes of loading
        _check_fp8_options(precision, fp8_config, fp8_kernel)
        root = checkpoint_root(path_or_hub_id)
        stored = stored_fp8_config(root / "transformer")
        if stored is not None:  # a serialized FP8 DiT: refuse a precision it cannot run before loading anything
            check_fp8_checkpoint(stored, precision, _requested_fp8_config(precision, fp8_config, fp8_kernel))
        device = torch.device(device) if device is not None else _default_device()
        load_device = torch.device("cpu") if offload else device
        transformer = load_transformer(root / "transformer", dtype=dtype, device=load_device)
        components = load_components(root, dtype=dtype, device=load_device)
        return cls.from_components(components, transformer, device=device, dtype=dtype, precision=precision,
                                   offload=offload, compile=compile, time_shift=time_shift, progress=progress,
                                   fp8_config=fp8_config, cuda_graphs=cuda_graphs, fp8_kernel=fp8_kernel,
                                   fused_qk_norm_rope=fused_qk_norm_rope)

    @classmethod
    def from_components(cls, components: Components, transformer: OmniGen2Transformer, *,
                        time_shift: float | None = None, **pipeline_kwargs) -> "OmniGen2Pipeline":
        """A pipeline of `transformer` and shared `components` (several pipelines may share one `Components`).

        time_shift fixes the scheduler's shift instead of the dynamic one; `pipeline_kwargs` go to __init__.
        """
        scheduler = FlowMatchEulerScheduler.from_config(components.scheduler_config, time_shift=time_shift)
        return cls(transformer, components.vae, scheduler, components.mllm, components.tokenizer,
                   synthetic=components.synthetic_info, processor=components.processor, **pipeline_kwargs)

    @property
    def synthetic(self) -> bool:
        return self.synthetic_info is not None

    # ------------------------------------------------------------------------------------------ the call
    @torch.no_grad()
    def __call__(self, prompt: str, images: Sequence[ImageInput] | ImageInput | None = None, *,
                 negative_prompt: str = "", num_inference_steps: int = 28, text_guidance_scale: float = 4.0,
                 image_guidance_scale: float = 1.0, cfg_range: tuple[float, float] = (0.0, 1.0), seed: int = 0,
                 width: int | None = None, height: int | None = None, max_pixels: int = MAX_PIXELS,
                 max_side: int = MAX_SIDE, align_to_reference: bool = True, time_shift: float | None = None,
                 sample_posterior: bool = True, keep_decoded: bool = False, stage_hook: StageHook | None = None,
                 progress: bool | None = None, on_step: Callable[[int, int, torch.Tensor], None] | None = None,
                 clock: StageClock | None = None, step_cache: StepCacheConfig | None = None,
                 call_hook: CallHook | None = None) -> EditResult:
        """Edit (or, without images, generate) one image.

        prompt: the instruction; images: up to 5 reference images (paths or PIL); negative_prompt: default "".
        num_inference_steps, text_guidance_scale, image_guidance_scale, cfg_range: see `denoise`.
        seed: noise from `seed`, posterior samples from `seed + 1` (CPU generators: same seed, same image on a
        device). width/height: output size when not following a single reference (default 1024x1024; generated
        at most at max_pixels, then resized). align_to_reference: with exactly one reference, generate and return
        at its resized size (official). time_shift: fixed scheduler shift (None: the scheduler's own setting).
        sample_posterior: False uses the posterior mean instead of a sample for reference latents.
        stage_hook: callable(stage name) -> context manager wrapped around each stage (inside the clock's timing);
        on_step(i, num_steps, latents): called after each denoising step; progress: override the progress bar;
        clock: a `measure.StageClock` that times every stage (and records its peak VRAM) into the result;
        step_cache: a `caching` config for this call instead of the recipe's (None: the recipe's);
        call_hook: callable(branch, step index) -> context manager wrapped around each transformer call (see `denoise`).
        """
        step_cache = check_step_cache(step_cache) or self.step_cache
        images = _as_list(images)
        check_reference_count(images, MAX_REFERENCE_IMAGES)
        cfg.check_guidance(text_guidance_scale, image_guidance_scale, cfg_range)
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        pil_images = [load_image(image) for image in images]  # fail on a bad path before any model runs
        hook = stage_hook or self.stage_hook

        @contextlib.contextmanager
        def stage(name: str) -> Iterator[None]:
            with clock.stage(name) if clock is not None else contextlib.nullcontext():
                with hook(name) if hook is not None else contextlib.nullcontext():
                    yield
        self._transformer_calls = 0
        noise_generator = torch.Generator("cpu").manual_seed(seed)
        posterior_generator = torch.Generator("cpu").manual_seed(seed + 1)

        with stage("text_encode"):
            embeds = self.encode_prompt(prompt, negative_prompt, need_negative=text_guidance_scale > 1.0)
        with stage("vae_encode"):
            ref_latents = self.encode_images(pil_images, posterior_generator, sample_posterior, max_pixels, max_side)
        ref_size = None
        if ref_latents:
            ref_size = (ref_latents[0].shape[-1] * self.vae_scale_factor, ref_latents[0].shape[-2] * self.vae_scale_factor)
        out_w, out_h = width or DEFAULT_SIZE, height or DEFAULT_SIZE
        if len(ref_latents) == 1 and align_to_reference:
            out_w, out_h = ref_size
        gen_w, gen_h = generation_size(len(ref_latents) if align_to_reference else 0, ref_size, out_w, out_h,
                                       max_pixels, self.size_multiple)
        with stage("prepare_latents"):
            latents = self.prepare_latents(gen_w, gen_h, noise_generator)
        with stage("denoise"):
            latents = self.denoise(latents, ref_latents, embeds, num_inference_steps, text_guidance_scale,
                                   image_guidance_scale, cfg_range, time_shift=time_shift, progress=progress,
                                   on_step=on_step, step_cache=step_cache, call_hook=call_hook)
        with stage("vae_decode"):
            decoded = self.decode(latents)
        with stage("postprocess"):
            pil_out = postprocess(decoded, (out_w, out_h))

        recipe = self.recipe.with_step_cache(step_cache)  # what ran: a per-call step cache replaces the recipe's
        settings = {
            "prompt": prompt, "negative_prompt": negative_prompt, "num_references": len(images),
            "num_inference_steps": num_inference_steps, "text_guidance_scale": float(text_guidance_scale),
            "image_guidance_scale": float(image_guidance_scale), "cfg_range": [float(c) for c in cfg_range],
            "seed": seed, "generation_size": [gen_w, gen_h], "output_size": [out_w, out_h],
            "reference_sizes": [[r.shape[-1] * self.vae_scale_factor, r.shape[-2] * self.vae_scale_factor]
                                for r in ref_latents],
            "time_shift": time_shift if time_shift is not None else self.scheduler.time_shift,
            "dynamic_time_shift": self.scheduler.dynamic_time_shift, "sample_posterior": sample_posterior,
            "precision": recipe.name, "dtype": str(self.dtype).replace("torch.", ""), "device": str(self.device),
            "offload": self.offload, "compile": self.compiled, "cuda_graphs": self.cuda_graphs,
            "recipe": {**recipe.to_dict(), "fp8": None if self.fp8_config is None else self.fp8_config.to_dict()},
            # what the attention ran, whatever the recipe asked (a GPU without cuDNN's FP8 attention keeps BF16)
            "attention": "fp8" if fp8_attention_cores(self.transformer) else "bf16",
        }
        timed = clock is not None
        return EditResult(images=pil_out, latents=latents, stage_seconds=dict(clock.seconds) if timed else None,
                          stage_peak_vram_bytes=dict(clock.peak_bytes) if timed else None,
                          peak_vram_bytes=clock.peak_allocated() if timed else None,
                          peak_vram_reserved_bytes=clock.peak_reserved() if timed else None, synthetic=self.synthetic,
                          synthetic_info=self.synthetic_info, settings=settings,
                          transformer_calls=self._transformer_calls, decoded=decoded if keep_decoded else None,
                          step_cache=self.step_cache_stats.to_record() if step_cache is not None else None)

    # ------------------------------------------------------------------------------------------ stages
    @torch.no_grad()
    def encode_prompt(self, prompt: str, negative_prompt: str = "", need_negative: bool = True) -> PromptEmbeds:
        """Stage 1: Qwen2.5-VL last hidden states of the templated prompt (and negative prompt), [1, T, D]."""
        if self.text_encoder is None:
            raise RuntimeError("this pipeline has no MLLM/tokenizer; pass prompt embeddings to `denoise` directly "
                               "or build the pipeline with from_pretrained")
        with self._on_device(self.mllm):
            hidden, mask = self.text_encoder.encode(prompt, self.device)
            negative = negative_mask = None
            if need_negative:
                negative, negative_mask = self.text_encoder.encode(negative_prompt, self.device)
        # Masks stay on the CPU: the DiT reads their lengths, which would otherwise sync the GPU on every pass.
        return PromptEmbeds(hidden.to(self.dtype), mask.cpu(), None if negative is None else negative.to(self.dtype),
                            None if negative_mask is None else negative_mask.cpu())

    @torch.no_grad()
    def encode_images(self, images: Sequence[PIL.Image.Image], generator: torch.Generator | None = None,
                      sample_posterior: bool = True, max_pixels: int = MAX_PIXELS,
                      max_side: int = MAX_SIDE) -> list[torch.Tensor]:
        """Stage 2: reference latents, one [C, h, w] per image: resize rules -> VAE posterior -> (z - shift) * scale.

        sample_posterior: True draws z from the posterior with `generator` (official); False takes its mean, which
        removes the one random input besides the noise.
        """
        latents = []
        if not images:
            return latents
        config = self.vae.config
        with self._on_device(self.vae):
            for image in images:
                pixels = preprocess(image, max_pixels, max_side, self.size_multiple).to(self.device, self.vae.dtype)
                posterior = self.vae.encode(pixels).latent_dist
                z = posterior.sample(generator) if sample_posterior else posterior.mode()
                z = (z - (config.shift_factor or 0.0)) * (config.scaling_factor or 1.0)
                latents.append(z.squeeze(0).to(self.dtype))
        return latents

    def prepare_latents(self, width: int, height: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Stage 3: Gaussian noise [1, C, height / f, width / f] (f = VAE downscale), drawn on the CPU in float32."""
        if width % self.size_multiple or height % self.size_multiple:
            raise ValueError(f"generation size {width}x{height} must be a multiple of {self.size_multiple}")
        shape = (1, self.transformer.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device, self.dtype)

    @torch.no_grad()
    def denoise(self, latents: torch.Tensor, ref_latents: Sequence[torch.Tensor], embeds: PromptEmbeds,
                num_inference_steps: int = 28, text_guidance_scale: float = 4.0, image_guidance_scale: float = 1.0,
                cfg_range: tuple[float, float] = (0.0, 1.0), time_shift: float | None = None,
                progress: bool | None = None, on_step: Callable[[int, int, torch.Tensor], None] | None = None,
                step_cache: StepCacheConfig | None = None, call_hook: CallHook | None = None) -> torch.Tensor:
        """Stage 4: integrate from noise (t = 0) to data (t = 1) with guided velocities.

        latents: [1, C, h, w] noise; ref_latents: list of [C, h_j, w_j] (may be empty); embeds: `PromptEmbeds`
        (the negative one is needed when text guidance > 1). Guidance per step: `guidance.scales_at_step` /
        `branches_for` / `combine`, one transformer pass per branch at batch 1. Returns the final latents.
        on_step(i, num_steps, latents) is called after each step. step_cache: a `caching` config for this run
        (None: the recipe's); each branch's calls are announced to it, and `self.step_cache_stats` says after the
        run which calls computed the main layers. call_hook(branch, i): a context manager wrapped around each
        transformer call alone (e.g. CUDA events timing it; the step cache's bookkeeping stays outside).
        """
        cfg.check_guidance(text_guidance_scale, image_guidance_scale, cfg_range)
        cache = self._step_cache_runtime(check_step_cache(step_cache) or self.step_cache)
        refs = list(ref_latents)
        n = num_inference_steps
        self.scheduler.set_timesteps(n, num_tokens=latents.shape[-2] * latents.shape[-1], device=self.device,
                                     time_shift=time_shift)
        branch_inputs = {
            cfg.COND: (embeds.prompt, embeds.prompt_mask, [refs] if refs else None),
            cfg.REF: (embeds.negative, embeds.negative_mask, [refs] if refs else None),
            cfg.UNCOND: (embeds.negative, embeds.negative_mask, None),
        }
        show = self.progress if progress is None else progress
        if cache is not None:
            cache.start(n)
        attention_steps = getattr(self.transformer, "fp8_attention_steps", None)  # fp8/attention_steps.py
        with self._on_device(self.transformer), installed(self.transformer, cache), _resets(attention_steps):
            for i, t in enumerate(tqdm(self.scheduler.timesteps, desc="denoise", disable=not show, leave=False)):
                if attention_steps is not None:
                    attention_steps.select(i, n)
                scales = cfg.scales_at_step(i, n, text_guidance_scale, image_guidance_scale, cfg_range)
                branches = cfg.branches_for(scales, has_references=bool(refs))
                predictions = {}
                for branch in branches:
                    text, mask, branch_refs = branch_inputs[branch]
                    if text is None:
                        raise ValueError("text guidance > 1 needs negative prompt embeddings; encode_prompt with "
                                         "need_negative=True")
                    if cache is not None:
                        cache.begin_call(branch, i)
                    with call_hook(branch, i) if call_hook is not None else contextlib.nullcontext():
                        predictions[branch] = self._predict(latents, t, text, mask, branch_refs)
                latents = self.scheduler.step(cfg.combine(predictions, scales), i, latents)
                if on_step is not None:
                    on_step(i, n, latents)
        self.step_cache_stats = cache.stats() if cache is not None else None
        return latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Stage 5: VAE decode of z = latents / scale + shift; [1, 3, H, W] in about [-1, 1], not clamped."""
        config = self.vae.config
        with self._on_device(self.vae):
            z = latents.to(self.device, self.vae.dtype) / (config.scaling_factor or 1.0) + (config.shift_factor or 0.0)
            return self.vae.decode(z).sample

    @contextlib.contextmanager
    def without_cuda_graphs(self) -> Iterator[None]:
        """Inside the block, transformer calls run the (compiled, if compile=True) model directly instead of
        replaying CUDA graphs; captured graphs are kept. For torch.profiler, which cannot tie a replayed graph's
        kernels to the ops that launched them. A no-op without cuda_graphs."""
        with self._transformer_fn.paused() if self.cuda_graphs else contextlib.nullcontext():
            yield

    def drop_cuda_graphs(self) -> None:
        """Free every captured CUDA graph and its memory pool (e.g. before the transformer is parked elsewhere, whose
        move would make them stale anyway); later calls capture again. A no-op without cuda_graphs."""
        if self.cuda_graphs:
            self._transformer_fn.clear()

    # ------------------------------------------------------------------------------------------ internals
    def _step_cache_runtime(self, config: StepCacheConfig | None) -> StepCache | None:
        """One runtime per config, kept across runs: its buffers stay where captured CUDA graphs expect them."""
        if config is None:
            return None
        if config not in self._step_caches:
            self._step_caches[config] = make_step_cache(config)
        cache = self._step_caches[config]
        cache.stack_graphs = self._transformer_fn.stack_graphs if self.cuda_graphs else None
        return cache

    def _predict(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor, mask: torch.Tensor,
                 refs: list | None) -> torch.Tensor:
        # The official pipeline casts the timestep to the latents' dtype (bf16 rounds it); kept for parity.
        timestep = t.reshape(1).to(latents.dtype)
        self._transformer_calls += 1
        return self._transformer_fn(latents, timestep, text, mask, ref_latents=refs)

    @contextlib.contextmanager
    def _on_device(self, module) -> Iterator[None]:
        """With offload, move `module` to the compute device for the block and back to the CPU after it."""
        if not self.offload or module is None:
            yield
            return
        module.to(self.device)
        try:
            yield
        finally:
            module.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- helpers
def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _as_list(images) -> list:
    if images is None:
        return []
    if isinstance(images, (str, os.PathLike, PIL.Image.Image)):
        return [images]
    return list(images)


@contextlib.contextmanager
def _resets(attention_steps) -> Iterator[None]:
    """FP8 attention back on after a denoising run (also one that fails), for calls outside a run."""
    try:
        yield
    finally:
        if attention_steps is not None:
            attention_steps.reset()


def _requested_fp8_config(recipe: Recipe, fp8_config, fp8_kernel: str | None):
    """The FP8 config a run asks for: `fp8_config`, else the recipe's, with `fp8_kernel` when given; None for a
    recipe that quantizes nothing."""
    if not recipe.quantized:
        return None
    config = fp8_config if fp8_config is not None else recipe.fp8_config()
    return config if fp8_kernel is None else dataclasses.replace(config, kernel=fp8_kernel)


def _check_fp8_options(recipe: Recipe, fp8_config, fp8_kernel: str | None) -> None:
    """FP8 options with a recipe that quantizes nothing would be dropped without a word: refuse them."""
    given = [name for name, value in (("fp8_config", fp8_config), ("fp8_kernel", fp8_kernel)) if value is not None]
    if given and not recipe.quantized:
        raise ValueError(f"{' and '.join(given)} given, but precision {recipe.name!r} quantizes nothing; drop "
                         f"{'them' if len(given) > 1 else 'it'} or use an FP8 precision (e.g. 'fp8')")


def _is_fp8(model: torch.nn.Module) -> bool:
    return any(getattr(m, "is_fp8", False) for m in model.modules())


def _compile(transformer: torch.nn.Module):
    """Regional compilation when the DiT offers it (fast to compile, ragged bookkeeping stays eager)."""
    if hasattr(transformer, "compile_blocks"):
        transformer.compile_blocks()
        return transformer
    return torch.compile(transformer)
