"""The OmniGen2 edit pipeline: instruction + reference images -> edited image, as numbered stages.

    1. text_encode      instruction (and negative prompt) -> Qwen2.5-VL last hidden state      `encode_prompt`
    2. vae_encode       reference images -> resize rules -> VAE posterior sample, scaled        `encode_images`
    3. prepare_latents  seeded Gaussian noise at the generation size                            `prepare_latents`
    4. denoise          flow-matching Euler steps with 1-, 2- or 3-branch CFG at batch 1        `denoise`
    5. vae_decode       latents -> VAE decode                                                   `decode`
    (then postprocessing to 8-bit RGB at the output size)

Each stage is a public method, so a caller with precomputed inputs (e.g. golden vectors) runs the same code as
`__call__`. Every call returns an `EditResult` holding the images, the wall time of each stage (synchronised on
CUDA), the peak VRAM of each stage and of the call, the settings used, and whether the models are synthetic
(random weights). A caller may wrap each stage in its own context manager (`stage_hook(name)`, e.g. CUDA events
or `torch.profiler.record_function`) without any measurement code living here.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Sequence

import PIL.Image
import PIL.PngImagePlugin
import torch
from tqdm.auto import tqdm

from . import guidance as cfg
from .caching import StepCache, StepCacheConfig, StepCacheStats, check_step_cache, installed, make_step_cache
from .cuda_graphs import CudaGraphForward
from .image_processing import (MAX_PIXELS, MAX_SIDE, ImageInput, check_reference_count, generation_size,
                               load_image, postprocess, preprocess)
from .loading import CheckpointNotFoundError, download_from_hub, read_json
from .scheduler import FlowMatchEulerScheduler
from .synthetic import read_synthetic_marker
from .text_encoder import TextEncoder
from .transformer import MAX_REFERENCE_IMAGES, OmniGen2Transformer

STAGES = ("text_encode", "vae_encode", "prepare_latents", "denoise", "vae_decode")
PRECISIONS = ("bf16", "fp8")
DEFAULT_SIZE = 1024

# Component folder -> a file that must be in it (the official OmniGen2 layout).
COMPONENTS = {
    "transformer": "config.json",
    "vae": "config.json",
    "mllm": "config.json",
    "processor": "tokenizer_config.json",
    "scheduler": "scheduler_config.json",
}

StageHook = Callable[[str], ContextManager]


@dataclass
class PromptEmbeds:
    """Text features of the positive and negative prompts: hidden [1, T, D] and mask [1, T] (1 = token)."""

    prompt: torch.Tensor
    prompt_mask: torch.Tensor
    negative: torch.Tensor | None = None
    negative_mask: torch.Tensor | None = None


@dataclass
class EditResult:
    """What one pipeline call produced and what it cost.

    images: the edited images (PIL, 8-bit RGB, at the output size); latents: final latents [1, C, h, w];
    decoded: VAE output [1, 3, H, W] before clamping (kept only with keep_decoded=True);
    stage_seconds: wall seconds per stage (keys from STAGES plus "postprocess"; CUDA synchronised);
    stage_peak_vram_bytes: peak allocated CUDA memory during each stage (empty on CPU); the pipeline resets
    torch.cuda peak-memory stats at the start of every stage, so read these rather than torch.cuda's own peak;
    peak_vram_bytes / peak_vram_reserved_bytes: peak allocated / reserved CUDA memory of the call (None on CPU);
    synthetic: True when the models have random weights (then `synthetic_info` says what they are);
    settings: every setting of the call (JSON-ready); transformer_calls: transformer forward passes made;
    step_cache: with a step cache, which calls computed the main layers (`StepCacheStats.to_record()`), else None.
    """

    images: list[PIL.Image.Image]
    latents: torch.Tensor
    stage_seconds: dict[str, float]
    stage_peak_vram_bytes: dict[str, int]
    peak_vram_bytes: int | None
    peak_vram_reserved_bytes: int | None
    synthetic: bool
    synthetic_info: dict | None
    settings: dict
    transformer_calls: int
    decoded: torch.Tensor | None = None
    step_cache: dict | None = None

    @property
    def image(self) -> PIL.Image.Image:
        return self.images[0]

    @property
    def total_seconds(self) -> float:
        return sum(self.stage_seconds.values())

    @property
    def peak_vram_gib(self) -> float | None:
        return None if self.peak_vram_bytes is None else self.peak_vram_bytes / 2**30

    def to_record(self) -> dict:
        """JSON-ready summary: settings, synthetic flag, stage seconds, VRAM (no tensors or images)."""
        return {
            "synthetic": self.synthetic, "synthetic_info": self.synthetic_info, "settings": self.settings,
            "stage_seconds": self.stage_seconds, "total_seconds": self.total_seconds,
            "stage_peak_vram_bytes": self.stage_peak_vram_bytes, "peak_vram_bytes": self.peak_vram_bytes,
            "peak_vram_reserved_bytes": self.peak_vram_reserved_bytes, "peak_vram_gib": self.peak_vram_gib,
            "transformer_calls": self.transformer_calls, "step_cache": self.step_cache,
        }

    def save(self, path: str | os.PathLike, index: int = 0) -> Path:
        """Save image `index` as PNG with the settings (and the synthetic flag) in its text metadata."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        info = PIL.PngImagePlugin.PngInfo()
        info.add_text("omnigen2_fp8", json.dumps({"synthetic": self.synthetic, "settings": self.settings}))
        if self.synthetic:
            info.add_text("synthetic", "random-weight models: this image says nothing about OmniGen2 quality")
        self.images[index].save(path, format="PNG", pnginfo=info)
        return path


class OmniGen2Pipeline:
    """OmniGen2 image editing with real components: Qwen2.5-VL (transformers), FLUX VAE (diffusers), our DiT.

    Build with `from_pretrained(folder_or_hub_id, ...)`, or from models (`synthetic.build_synthetic_pipeline`).
    device: where computation runs; dtype: the dtype of every model (the scheduler steps in float32);
    precision: "bf16" or "fp8" (the DiT's linear layers quantized by `omnigen2_fp8.fp8.quantize_fp8`);
    offload: keep models on the CPU and move each to `device` only for its stage;
    compile: torch.compile the DiT (its blocks, when it supports regional compilation);
    cuda_graphs: replay each CFG branch's transformer pass as a CUDA graph (CUDA only; removes the launch
    overhead that dominates small images; one capture per new input shape; not with offload);
    step_cache: a `caching.TeaCacheConfig` or `TaylorSeerConfig` (skip or extrapolate the main layers on some
    transformer calls, as the official OmniGen2 does), or None; TeaCache does not combine with cuda_graphs;
    synthetic: dict describing random weights, or None for a trained checkpoint.
    """

    def __init__(self, transformer: OmniGen2Transformer, vae, scheduler: FlowMatchEulerScheduler, mllm=None,
                 tokenizer=None, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                 precision: str = "bf16", offload: bool = False, compile: bool = False,
                 synthetic: dict | None = None, progress: bool = True, fp8_config=None, processor=None,
                 cuda_graphs: bool = False, step_cache: StepCacheConfig | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not supported; use one of {PRECISIONS}")
        self.step_cache = check_step_cache(step_cache, cuda_graphs)
        self.step_cache_stats: StepCacheStats | None = None  # of the last denoising run
        self._step_caches: dict[StepCacheConfig, StepCache] = {}
        self.device = torch.device(device) if device is not None else _default_device()
        self.dtype = dtype or next(transformer.parameters()).dtype
        self.offload = offload
        self.precision = precision
        self.synthetic_info = synthetic
        self.progress = progress
        self.stage_hook: StageHook | None = None
        self.transformer, self.vae, self.scheduler, self.mllm = transformer, vae, scheduler, mllm
        self.tokenizer, self.processor = tokenizer, processor
        self.text_encoder = TextEncoder(mllm, tokenizer) if mllm is not None and tokenizer is not None else None
        if precision == "fp8" and not _is_fp8(transformer):
            self.fp8_report = _quantize_fp8(transformer, fp8_config)
        else:
            self.fp8_report = None
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
                        device: str | torch.device | None = None, precision: str = "bf16", offload: bool = False,
                        compile: bool = False, time_shift: float | None = None, fp8_config=None,
                        progress: bool = True, cuda_graphs: bool = False,
                        step_cache: StepCacheConfig | None = None) -> "OmniGen2Pipeline":
        """Load an OmniGen2 checkpoint folder (official layout) or hub id.

        mllm/ -> transformers Qwen2_5_VLForConditionalGeneration; processor/ -> AutoProcessor (its tokenizer;
        AutoTokenizer where the processor's video part cannot load without torchvision); vae/ -> diffusers
        AutoencoderKL; transformer/ -> OmniGen2Transformer (serialized FP8 folders load as FP8); scheduler/ ->
        FlowMatchEulerScheduler (time_shift fixes the shift instead of the dynamic one). A SYNTHETIC.json at
        the root marks random weights; every result then says synthetic=True.
        """
        from diffusers import AutoencoderKL
        from transformers import Qwen2_5_VLForConditionalGeneration

        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not supported; use one of {PRECISIONS}")
        check_step_cache(step_cache, cuda_graphs)
        root = _checkpoint_root(path_or_hub_id)
        device = torch.device(device) if device is not None else _default_device()
        load_device = torch.device("cpu") if offload else device
        transformer = OmniGen2Transformer.from_pretrained(root / "transformer", dtype=dtype, device=load_device)
        vae = AutoencoderKL.from_pretrained(root / "vae", torch_dtype=dtype)
        mllm = Qwen2_5_VLForConditionalGeneration.from_pretrained(root / "mllm", dtype=dtype)
        processor, tokenizer = _load_processor(root / "processor")
        scheduler = FlowMatchEulerScheduler.from_config(read_json(root / "scheduler" / "scheduler_config.json"),
                                                        time_shift=time_shift)
        return cls(transformer, vae, scheduler, mllm, tokenizer, device=device, dtype=dtype, precision=precision,
                   offload=offload, compile=compile, synthetic=read_synthetic_marker(root), progress=progress,
                   fp8_config=fp8_config, processor=processor, cuda_graphs=cuda_graphs, step_cache=step_cache)

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
                 step_cache: StepCacheConfig | None = None) -> EditResult:
        """Edit (or, without images, generate) one image.

        prompt: the instruction; images: up to 5 reference images (paths or PIL); negative_prompt: default "".
        num_inference_steps, text_guidance_scale, image_guidance_scale, cfg_range: see `denoise`.
        seed: noise from `seed`, posterior samples from `seed + 1` (CPU generators: same seed, same image on a
        device). width/height: output size when not following a single reference (default 1024x1024; generated
        at most at max_pixels, then resized). align_to_reference: with exactly one reference, generate and return
        at its resized size (official). time_shift: fixed scheduler shift (None: the scheduler's own setting).
        sample_posterior: False uses the posterior mean instead of a sample for reference latents.
        stage_hook: callable(stage name) -> context manager wrapped around each stage (inside the timing);
        on_step(i, num_steps, latents): called after each denoising step; progress: override the progress bar.
        step_cache: this call's step cache instead of the pipeline's (None: the pipeline's `step_cache`).
        """
        step_cache = check_step_cache(step_cache, self.cuda_graphs) or self.step_cache
        images = _as_list(images)
        check_reference_count(images, MAX_REFERENCE_IMAGES)
        cfg.check_guidance(text_guidance_scale, image_guidance_scale, cfg_range)
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        pil_images = [load_image(image) for image in images]  # fail on a bad path before any model runs
        hook = stage_hook or self.stage_hook
        timer = _StageTimer(self.device, hook)
        self._transformer_calls = 0
        noise_generator = torch.Generator("cpu").manual_seed(seed)
        posterior_generator = torch.Generator("cpu").manual_seed(seed + 1)

        with timer.stage("text_encode"):
            embeds = self.encode_prompt(prompt, negative_prompt, need_negative=text_guidance_scale > 1.0)
        with timer.stage("vae_encode"):
            ref_latents = self.encode_images(pil_images, posterior_generator, sample_posterior, max_pixels, max_side)
        ref_size = None
        if ref_latents:
            ref_size = (ref_latents[0].shape[-1] * self.vae_scale_factor, ref_latents[0].shape[-2] * self.vae_scale_factor)
        out_w, out_h = width or DEFAULT_SIZE, height or DEFAULT_SIZE
        if len(ref_latents) == 1 and align_to_reference:
            out_w, out_h = ref_size
        gen_w, gen_h = generation_size(len(ref_latents) if align_to_reference else 0, ref_size, out_w, out_h,
                                       max_pixels, self.size_multiple)
        with timer.stage("prepare_latents"):
            latents = self.prepare_latents(gen_w, gen_h, noise_generator)
        with timer.stage("denoise"):
            latents = self.denoise(latents, ref_latents, embeds, num_inference_steps, text_guidance_scale,
                                   image_guidance_scale, cfg_range, time_shift=time_shift, progress=progress,
                                   on_step=on_step, step_cache=step_cache)
        with timer.stage("vae_decode"):
            decoded = self.decode(latents)
        with timer.stage("postprocess"):
            pil_out = postprocess(decoded, (out_w, out_h))

        settings = {
            "prompt": prompt, "negative_prompt": negative_prompt, "num_references": len(images),
            "num_inference_steps": num_inference_steps, "text_guidance_scale": float(text_guidance_scale),
            "image_guidance_scale": float(image_guidance_scale), "cfg_range": [float(c) for c in cfg_range],
            "seed": seed, "generation_size": [gen_w, gen_h], "output_size": [out_w, out_h],
            "reference_sizes": [[r.shape[-1] * self.vae_scale_factor, r.shape[-2] * self.vae_scale_factor]
                                for r in ref_latents],
            "time_shift": time_shift if time_shift is not None else self.scheduler.time_shift,
            "dynamic_time_shift": self.scheduler.dynamic_time_shift, "sample_posterior": sample_posterior,
            "precision": self.precision, "dtype": str(self.dtype).replace("torch.", ""), "device": str(self.device),
            "offload": self.offload, "compile": self.compiled, "cuda_graphs": self.cuda_graphs,
            "step_cache": step_cache.to_dict() if step_cache is not None else None,
        }
        return EditResult(images=pil_out, latents=latents, stage_seconds=timer.seconds,
                          stage_peak_vram_bytes=timer.peak_bytes, peak_vram_bytes=timer.peak_allocated(),
                          peak_vram_reserved_bytes=timer.peak_reserved(), synthetic=self.synthetic,
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
                step_cache: StepCacheConfig | None = None) -> torch.Tensor:
        """Stage 4: integrate from noise (t = 0) to data (t = 1) with guided velocities.

        latents: [1, C, h, w] noise; ref_latents: list of [C, h_j, w_j] (may be empty); embeds: `PromptEmbeds`
        (the negative one is needed when text guidance > 1). Guidance per step: `guidance.scales_at_step` /
        `branches_for` / `combine`, one transformer pass per branch at batch 1. Returns the final latents.
        on_step(i, num_steps, latents) is called after each step. step_cache: a step-cache config for this run
        (None: the pipeline's); each branch's calls are announced to it, and `self.step_cache_stats` says after
        the run which calls computed the main layers.
        """
        cfg.check_guidance(text_guidance_scale, image_guidance_scale, cfg_range)
        cache = self._step_cache_runtime(check_step_cache(step_cache, self.cuda_graphs) or self.step_cache)
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
        with self._on_device(self.transformer), installed(self.transformer, cache):
            for i, t in enumerate(tqdm(self.scheduler.timesteps, desc="denoise", disable=not show, leave=False)):
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

    # ------------------------------------------------------------------------------------------ internals
    def _step_cache_runtime(self, config: StepCacheConfig | None) -> StepCache | None:
        """One runtime per config, kept across runs: its buffers stay where captured CUDA graphs expect them."""
        if config is None:
            return None
        if config not in self._step_caches:
            self._step_caches[config] = make_step_cache(config)
        return self._step_caches[config]

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


class _StageTimer:
    """Wall time and peak CUDA memory per stage; synchronises CUDA around each stage so times are real."""

    def __init__(self, device: torch.device, hook: StageHook | None):
        self.cuda = device.type == "cuda"
        self.device = device
        self.hook = hook
        self.seconds: dict[str, float] = {}
        self.peak_bytes: dict[str, int] = {}
        self.reserved_bytes: dict[str, int] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        with self.hook(name) if self.hook is not None else contextlib.nullcontext():
            yield
            if self.cuda:
                torch.cuda.synchronize(self.device)
        self.seconds[name] = time.perf_counter() - start
        if self.cuda:
            self.peak_bytes[name] = torch.cuda.max_memory_allocated(self.device)
            self.reserved_bytes[name] = torch.cuda.max_memory_reserved(self.device)

    def peak_allocated(self) -> int | None:
        return max(self.peak_bytes.values()) if self.cuda and self.peak_bytes else None

    def peak_reserved(self) -> int | None:
        return max(self.reserved_bytes.values()) if self.cuda and self.reserved_bytes else None


# ---------------------------------------------------------------------------------------------- helpers
def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _as_list(images) -> list:
    if images is None:
        return []
    if isinstance(images, (str, os.PathLike, PIL.Image.Image)):
        return [images]
    return list(images)


def _checkpoint_root(path_or_hub_id: str | os.PathLike) -> Path:
    """The checkpoint's top folder, every component present; a hub id is downloaded first."""
    path = Path(path_or_hub_id).expanduser()
    if not path.exists():
        path = download_from_hub(str(path_or_hub_id), None, [path])
    if not path.is_dir():
        raise CheckpointNotFoundError(f"{path} is not a folder; pass the OmniGen2 checkpoint folder (with "
                                      f"{', '.join(c + '/' for c in COMPONENTS)}) or a hub id")
    missing = [f"{name}/ (needs {marker})" for name, marker in COMPONENTS.items() if not (path / name / marker).is_file()]
    if missing:
        raise CheckpointNotFoundError(f"checkpoint folder {path} is missing component(s): {', '.join(missing)}. "
                                      "Download the complete checkpoint, or write one with "
                                      "omnigen2_fp8.synthetic.write_synthetic_checkpoint")
    return path


def _load_processor(folder: Path):
    """(processor or None, tokenizer): AutoProcessor where it loads, else the tokenizer alone (all we use)."""
    from transformers import AutoProcessor

    from .text_encoder import load_tokenizer

    try:
        processor = AutoProcessor.from_pretrained(folder)
    except ImportError:  # the Qwen2.5-VL processor's video part needs torchvision; the edit pipeline needs text only
        return None, load_tokenizer(folder)
    return processor, processor.tokenizer


def _is_fp8(model: torch.nn.Module) -> bool:
    return any(getattr(m, "is_fp8", False) for m in model.modules())


def _quantize_fp8(transformer: torch.nn.Module, fp8_config=None):
    try:
        from .fp8 import Fp8Config, quantize_fp8
    except ImportError as err:
        raise NotImplementedError(f"precision='fp8' needs omnigen2_fp8.fp8.quantize_fp8, which is not available "
                                  f"here ({err}); use precision='bf16'") from err
    return quantize_fp8(transformer, fp8_config if fp8_config is not None else Fp8Config())


def _compile(transformer: torch.nn.Module):
    """Regional compilation when the DiT offers it (fast to compile, ragged bookkeeping stays eager)."""
    if hasattr(transformer, "compile_blocks"):
        transformer.compile_blocks()
        return transformer
    return torch.compile(transformer)
