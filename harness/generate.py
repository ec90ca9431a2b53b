"""Edited images for selected GEdit samples, one precision ("arm") at a time, resumable.

Layout (the official one): `<root>/<arm>/fullset/<task_type>/<lang>/<key>.png`, with one JSONL line per finished
sample in `<root>/<arm>/generation.jsonl` (seed, seconds, peak VRAM, settings). A PNG is written to a temporary name
and renamed, so an existing PNG is always complete and is never made again. "Which samples" (`pending_samples`,
`harness.data.select_samples` / `shard_samples`) is kept apart from "make these" (`generate_samples`), so a
multi-process run can hand each rank its shard; per-sample records merge by concatenation.
"""
from __future__ import annotations

import datetime as _dt
import gc
import os
import time
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from harness.data import SampleRef, load_source_image
from harness.distributed import rank_file
from harness.core.records import append_jsonl, read_jsonl
from harness.tasks import GenerationSpec
from omnigen2_fp8.measure import StageClock

GENERATION_LOG = "generation.jsonl"
SETTINGS_FILE = "generation_settings.json"


class SettingsMismatchError(ValueError):
    """Existing edits were made with other settings; resuming would mix them."""


def edit_path(root: str | Path, arm: str, sample: SampleRef | dict) -> Path:
    """`<root>/<arm>/fullset/<task_type>/<lang>/<key>.png` for a SampleRef or a record with those fields."""
    get = sample.get if isinstance(sample, dict) else lambda k: getattr(sample, k)
    return Path(root) / arm / "fullset" / get("task_type") / get("language") / f"{get('key')}.png"


def pending_samples(root: str | Path, arm: str, samples: Sequence[SampleRef]) -> list[SampleRef]:
    """The samples whose edited image does not exist yet (a PNG that exists is complete: it was renamed into place)."""
    return [s for s in samples if not edit_path(root, arm, s).is_file()]


def arm_settings(model: str, arm: str, gen: GenerationSpec) -> dict:
    """What decides an arm's images: resume reuses an edit only when these are unchanged."""
    return {"model": model, "precision": arm, "seed": gen.seed, "steps": gen.steps, "resolution": gen.resolution,
            "text_guidance_scale": gen.text_guidance_scale, "image_guidance_scale": gen.image_guidance_scale,
            "time_shift": gen.time_shift, "negative_prompt": gen.negative_prompt}


def check_or_record_settings(root: str | Path, arm: str, settings: dict) -> None:
    """Record an arm's settings in `<root>/<arm>/generation_settings.json`, or refuse if it holds other ones."""
    import json

    from harness.core.records import write_json_atomic

    path = Path(root) / arm / SETTINGS_FILE
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise SettingsMismatchError(f"{path.parent} holds edits made with other settings ({changes}); resuming "
                                        "would mix them. Use another --out/--edits folder, or delete that one.")
        return
    write_json_atomic(path, settings)


def read_arm_settings(root: str | Path, arm: str) -> dict | None:
    import json

    path = Path(root) / arm / SETTINGS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def generation_records(root: str | Path, arm: str) -> list[dict]:
    """The per-sample generation records of an arm (later lines win for a repeated sample)."""
    latest = {}
    for rec in read_jsonl(Path(root) / arm / GENERATION_LOG):
        latest[(rec["task_type"], rec["language"], rec["key"])] = rec
    return list(latest.values())


def load_arm_pipeline(model: str, arm: str, device: str, synthetic: str | None = None,
                      time_shift: float | None = None, dtype: torch.dtype | None = None, cuda_graphs: bool = False):
    """One OmniGen2Pipeline for precision `arm` ("bf16" or "fp8").

    synthetic "full": random full-size models built in device memory (nothing read from `model`); otherwise the
    checkpoint folder or hub id `model` (a tiny synthetic checkpoint is such a folder). dtype: bf16 on CUDA,
    fp32 on CPU unless given.
    """
    from omnigen2_fp8.pipeline import OmniGen2Pipeline

    dtype = dtype or (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
    if synthetic == "full":
        from omnigen2_fp8.scheduler import FlowMatchEulerScheduler
        from omnigen2_fp8.synthetic import SCHEDULER_CONFIG, build_synthetic_pipeline

        pipe = build_synthetic_pipeline("full", device=device, dtype=dtype, precision=arm, progress=False,
                                        cuda_graphs=cuda_graphs)
        if time_shift is not None:
            pipe.scheduler = FlowMatchEulerScheduler.from_config(SCHEDULER_CONFIG, time_shift=time_shift)
        return pipe
    return OmniGen2Pipeline.from_pretrained(model, dtype=dtype, device=device, precision=arm, time_shift=time_shift,
                                            progress=False, cuda_graphs=cuda_graphs)


def free_pipeline(pipe) -> None:
    """Drop an arm's models before the next arm loads (one arm in memory at a time)."""
    for name in ("transformer", "vae", "mllm", "text_encoder", "_transformer_fn"):
        if hasattr(pipe, name):
            setattr(pipe, name, None)
    del pipe
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


def generate_samples(pipe, dataset, samples: Sequence[SampleRef], root: str | Path, arm: str, gen: GenerationSpec,
                     progress: bool = True) -> int:
    """Edit every sample that has no image yet; returns how many were made. Every sample uses seed `gen.seed`
    (the same for every arm, so the edits are paired)."""
    todo = pending_samples(root, arm, samples)
    kwargs = edit_call_kwargs(gen)
    cuda = torch.cuda.is_available() and str(getattr(pipe, "device", "")).startswith("cuda")
    for sample in tqdm(todo, desc=f"generate {arm}", unit="edit", disable=not progress):
        target = edit_path(root, arm, sample)
        source = load_source_image(dataset, sample)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = pipe(sample.instruction, [source], **kwargs, clock=StageClock(pipe.device))
        seconds = time.perf_counter() - start
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        result.save(tmp)
        os.replace(tmp, target)
        append_jsonl(rank_file(Path(root) / arm / GENERATION_LOG), {
            **sample.to_record(), "arm": arm, "image": str(target.relative_to(root)), "seed": gen.seed,
            # The pipeline resets the peak counters per stage; its result holds the peak over the whole call.
            "seconds": seconds, "peak_vram_gib": result.peak_vram_gib,
            "stage_seconds": result.stage_seconds, "output_size": list(result.images[0].size),
            "synthetic": result.synthetic, "settings": result.settings,
            "finished_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        })
    return len(todo)
