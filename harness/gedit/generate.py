"""Edited images for selected GEdit samples, one precision ("arm") at a time, resumable.

Where edits and their records go is the run folder's business (`harness.gedit.run_folder`): one PNG per sample in
the official layout and one JSONL line per finished sample (seed, seconds, peak VRAM, settings), appended through a
`RecordSink` (a per-rank file under torchrun). A PNG is written to a temporary name and renamed, so an existing PNG
is always complete and is never made again. "Which samples" (`RunFolder.pending`, the runner's shard) is kept apart
from "make these" (`generate_samples`).
"""
from __future__ import annotations

import datetime as _dt
import gc
import logging
import time
from typing import Sequence

import torch
from tqdm.auto import tqdm

from harness.core.records import RecordSink, atomic_output
from harness.gedit.config import GenerationSpec
from harness.gedit.data import SampleRef, SourceImageError, load_source_image
from harness.gedit.run_folder import RunFolder
from omnigen2_fp8.checkpoints import Components, checkpoint_root, load_components, load_transformer
from omnigen2_fp8.measure import StageClock
from omnigen2_fp8.pipeline import OmniGen2Pipeline
from omnigen2_fp8.synthetic import build_components, build_transformer

log = logging.getLogger("harness.gedit")


def arm_settings(model: str, arm: str, gen: GenerationSpec, model_weights: str | None = None,
                 compiled: bool = False) -> dict:
    """What decides an arm's images: resume reuses an edit only when these are unchanged (`model_weights`: which
    weights `model` holds, so a moved folder still matches). `compiled`: torch.compile fuses the DiT's ops, which
    changes float roundings; CUDA graphs replay the eager kernels bit for bit, so they are not a setting."""
    return {"model": model, "model_weights": model_weights, "precision": arm, "seed": gen.seed, "steps": gen.steps,
            "resolution": gen.resolution,
            "text_guidance_scale": gen.text_guidance_scale, "image_guidance_scale": gen.image_guidance_scale,
            "time_shift": gen.time_shift, "negative_prompt": gen.negative_prompt, "transformer_compiled": compiled}


def load_shared_components(model: str, device: str, synthetic: str | None = None,
                           dtype: torch.dtype | None = None) -> Components:
    """The parts every arm shares (VAE, Qwen2.5-VL, tokenizer, scheduler config): an `omnigen2_fp8` `Components`,
    loaded once per run and handed to every arm's `load_arm_pipeline`, so only the DiT is made per arm.

    synthetic "full": random full-size models built in device memory; otherwise read from the checkpoint folder or
    hub id `model` straight onto `device`. dtype: bf16 on CUDA, fp32 on CPU unless given.
    """
    dtype = dtype or _default_dtype(device)
    if synthetic == "full":
        return build_components("full", device=device, dtype=dtype)
    return load_components(model, dtype=dtype, device=device)


def load_arm_pipeline(model: str, arm: str, device: str, synthetic: str | None = None,
                      time_shift: float | None = None, dtype: torch.dtype | None = None, cuda_graphs: bool = False,
                      compile: bool = False, components: Components | None = None) -> OmniGen2Pipeline:
    """One OmniGen2Pipeline for precision `arm` ("bf16" or "fp8").

    synthetic "full": random full-size models built in device memory (nothing read from `model`); otherwise the
    checkpoint folder or hub id `model` (a tiny synthetic checkpoint is such a folder). dtype: bf16 on CUDA,
    fp32 on CPU unless given. components: the shared parts (`load_shared_components`); None loads them too.
    cuda_graphs / compile: the execution mode (`omnigen2_fp8.modes`).
    Random weights are seeded as `synthetic.build_synthetic_pipeline` seeds them, so either way gives one model.
    """
    dtype = dtype or _default_dtype(device)
    components = components if components is not None else load_shared_components(model, device, synthetic, dtype)
    if synthetic == "full":
        transformer = build_transformer("full", device=device, dtype=dtype)
    else:
        transformer = load_transformer(checkpoint_root(model) / "transformer", dtype=dtype, device=device)
    return OmniGen2Pipeline.from_components(components, transformer, device=device, dtype=dtype, precision=arm,
                                            time_shift=time_shift, progress=False, cuda_graphs=cuda_graphs,
                                            compile=compile)


def _default_dtype(device: str) -> torch.dtype:
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def free_pipeline(pipe) -> None:
    """Drop an arm's models before the next arm loads (one DiT in memory at a time; shared components stay alive
    while their `Components` is held)."""
    for name in ("transformer", "vae", "mllm", "text_encoder", "_transformer_fn"):
        if hasattr(pipe, name):
            setattr(pipe, name, None)
    del pipe
    release_device_memory()


def release_device_memory() -> None:
    """Collect dropped models now and hand their cached device memory back (before the next model loads)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def edit_call_kwargs(gen: GenerationSpec) -> dict:
    """Pipeline keyword arguments for one GEdit edit. resolution R (not None) caps the edit at R*R pixels and R on
    the long side, keeping the input's aspect ratio (GEdit inputs are about 512x512, so R=512 gives 512x512)."""
    kwargs = dict(negative_prompt=gen.negative_prompt, num_inference_steps=gen.steps,
                  text_guidance_scale=gen.text_guidance_scale, image_guidance_scale=gen.image_guidance_scale,
                  seed=gen.seed, progress=False)
    if gen.time_shift is not None:
        kwargs["time_shift"] = gen.time_shift
    if gen.resolution is not None:
        kwargs.update(max_pixels=gen.resolution * gen.resolution, max_side=gen.resolution)
    return kwargs


def generate_samples(pipe, dataset, samples: Sequence[SampleRef], folder: RunFolder, arm: str, gen: GenerationSpec,
                     records: RecordSink, progress: bool = True) -> int:
    """Edit `samples` (the caller picks them, e.g. `RunFolder.pending`) into `folder`; append one record per edit
    to `records`; returns how many were made. Every sample uses seed `gen.seed` (the same for every arm, so the
    edits are paired). A sample whose input image cannot be decoded is logged by (task, key) and skipped: the
    judge stage records it as a failed sample."""
    kwargs = edit_call_kwargs(gen)
    cuda = torch.cuda.is_available() and str(getattr(pipe, "device", "")).startswith("cuda")
    made, failed = 0, []
    for sample in tqdm(samples, desc=f"generate {arm}", unit="edit", disable=not progress):
        target = folder.edit_path(arm, sample)
        try:
            source = load_source_image(dataset, sample)
        except SourceImageError as err:
            log.error("generate %s: %s", arm, err)
            failed.append(sample.uid)
            continue
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = pipe(sample.instruction, [source], **kwargs, clock=StageClock(pipe.device))
        seconds = time.perf_counter() - start
        with atomic_output(target) as tmp:
            result.save(tmp)
        records.append({
            **sample.to_record(), "arm": arm, "image": str(target.relative_to(folder.edits_root)), "seed": gen.seed,
            # The pipeline resets the peak counters per stage; its result holds the peak over the whole call.
            "seconds": seconds, "peak_vram_gib": result.peak_vram_gib,
            "stage_seconds": result.stage_seconds, "output_size": list(result.images[0].size),
            "synthetic": result.synthetic, "settings": result.settings,
            "finished_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        })
        made += 1
    if failed:
        log.error("generate %s: %d sample(s) failed on their input image: %s", arm, len(failed), ", ".join(failed))
    return made
