"""python -m harness.profile: latency, VRAM and kernel breakdowns of OmniGen2 edits, BF16 vs FP8, side by side.

    python -m harness.profile --precision bf16 fp8 --scenario edit-1024-1ref --synthetic full --out results/profile/x
    python -m harness.profile --precision bf16 fp8 --scenario gedit-512 --model OmniGen2/OmniGen2 --repeats 5
    python -m harness.profile --precision bf16 fp8 --fp8-no-pad --scenario gedit-512 --synthetic full --steps 4

Method (profile.md and profile.json repeat it):
1. Load. The MLLM, the VAE and the tokenizer are loaded once and shared by every arm. Each arm gets its own
   transformer: BF16 as loaded; FP8 loaded in BF16 and quantized in place by the pipeline (so the FP8 arm never
   keeps a BF16 copy, but its load peak is BF16-sized); `fp8-nopad` quantized without padding (see below).
   Each load is a memory phase of its own (gc + empty_cache + reset_peak_memory_stats before it), and after
   loading, the transformer is parked on the CPU so the next arm's load starts from the shared components only.
2. Memory run. For each arm in turn, only its transformer is on the GPU (the others are parked on the CPU), the
   allocator is emptied and the peak counters reset, and the first warm-up call is the memory measurement: its
   peak allocated / reserved (the pipeline resets the counters per stage; the call's peak is the max over stages)
   can hold nothing of another arm. Then the remaining warm-up calls.
3. Timing. All transformers back on the GPU; `--repeats` rounds, each running every arm once in the same order
   (ABAB...), so drift of clocks or temperature hits every arm alike. End to end: perf_counter between two
   synchronisations. Stages: CUDA events per stage and per denoising step (harness.core.timing.StageTimer).
4. Profile (after timing, so the profiler never perturbs the timings): one call per arm with `--profile-steps`
   denoising steps under torch.profiler, with a `layer::<name>` range around every linear of the transformer
   (not under --compile); the kernel tables cover the denoising steps; per-stage kernel sums cover every stage.

`fp8-nopad` (`--fp8-no-pad`) is the deliberately unpadded arm: e4m3 weights with K and N as they are (2520, 840
and 10240 x 2520 are not all multiples of 16). cuBLASLt's FP8 GEMM refuses such shapes, so, as in vLLM, the
layers whose shapes it would refuse run a fallback GEMM (here the torch-reference path: dequantize and a high
precision matmul); the fallback detector must flag them. Layers whose shapes are aligned keep the fast kernel.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import gc
import shlex
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import PIL.Image
import torch
from torch import nn
from tqdm.auto import tqdm

from harness import kernels as K
from harness.core import timing as T
from harness.core.records import REPO_ROOT, SYNTHETIC_WARNING, run_manifest, write_json_atomic, write_text_atomic
from harness.core.tasks import TaskError, apply_overrides, build_dataclass, load_task
from omnigen2_fp8.measure import StageClock

SCHEMA_VERSION = 1
ARM_NAMES = ("bf16", "fp8", "fp8-nopad")
STAGE_LABELS = {"text_encode": "MLLM encode", "vae_encode": "VAE encode", "prepare_latents": "prepare latents",
                "denoise": "denoise (total)", "denoise_step": "denoise step", "vae_decode": "VAE decode",
                "postprocess": "postprocess"}
LOAD_METHOD = ("each load is its own phase: gc + synchronize + empty_cache + reset_peak_memory_stats before it, "
               "max_memory_allocated / max_memory_reserved after it; other arms' transformers are parked on the CPU")
RUN_METHOD = ("first warm-up call of the arm with only its own transformer on the GPU (other arms' transformers "
              "parked on the CPU), after gc + empty_cache + reset_peak_memory_stats; the pipeline resets the peak "
              "counters at each stage and the call's peak is the max over its stages")
ORDER_NOTE = "arms alternate within every repeat (ABAB...), so drift hits every arm alike"
TIMING_METHOD = ("warm-up calls excluded; end to end = perf_counter between two synchronisations; stages = CUDA "
                 "events around each pipeline stage (perf_counter on CPU), read after a synchronise; a denoise step "
                 "runs from the end of the previous one (or the start of the denoise stage) to the end of its "
                 "scheduler update; median and IQR over "
                 "repeats, warning when IQR/median > 10%")


class ProfileError(ValueError):
    """Bad profiling options or scenario; the message names the problem and the fix."""


# ---------------------------------------------------------------------------------------------------- scenarios
@dataclass(frozen=True)
class ScenarioConfig:
    """One profiling scenario (tasks/profile/*.yaml): output size, reference images, steps, guidance.

    references: [height, width] per reference image (pixels; random images of that size are generated).
    With references, a step runs 3 transformer passes (cond, ref, uncond) while text and image guidance are > 1.
    """

    task: str
    height: int
    width: int
    steps: int
    references: list[list[int]] = field(default_factory=list)
    instruction: str = "Change the color of the car to red"
    negative_prompt: str = ""
    text_guidance_scale: float = 5.0
    image_guidance_scale: float = 2.0
    cfg_range: list[float] = field(default_factory=lambda: [0.0, 1.0])
    time_shift: float | None = None
    seed: int = 0
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            value = getattr(self, name)
            if value < 16 or value % 16:
                raise ProfileError(f"scenario {self.task}: {name} {value} must be a multiple of 16 (>= 16)")
        if self.steps < 1:
            raise ProfileError(f"scenario {self.task}: steps must be >= 1, got {self.steps}")
        for i, ref in enumerate(self.references):
            if len(ref) != 2 or min(ref) < 16:
                raise ProfileError(f"scenario {self.task}: references[{i}] = {ref} must be [height, width] in pixels "
                                   "(>= 16 each)")
        if len(self.references) > 5:
            raise ProfileError(f"scenario {self.task}: at most 5 reference images, got {len(self.references)}")
        if len(self.cfg_range) != 2:
            raise ProfileError(f"scenario {self.task}: cfg_range must be [start, end], got {self.cfg_range}")

    @classmethod
    def from_dict(cls, data: dict) -> "ScenarioConfig":
        data = {k: v for k, v in data.items() if not k.startswith("_")}
        return build_dataclass(cls, data, str(data.get("task", "scenario")))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def branches_per_step(self) -> list[int]:
        """Transformer passes at each step (3 = cond/ref/uncond, 2 = cond/uncond, 1 = no guidance)."""
        from omnigen2_fp8 import guidance

        return [len(guidance.branches_for(guidance.scales_at_step(i, self.steps, self.text_guidance_scale,
                                                                  self.image_guidance_scale,
                                                                  tuple(self.cfg_range)),
                                          has_references=bool(self.references)))
                for i in range(self.steps)]


def load_scenario(name_or_path: str | Path, steps: int | None = None) -> tuple[ScenarioConfig, list[dict], str]:
    """Load a scenario by name (tasks/profile/) or YAML path; returns (config, override log, source file)."""
    try:
        raw = load_task(name_or_path, "profile")
        scenario = ScenarioConfig.from_dict(raw)
        scenario, changes = apply_overrides(scenario, {"steps": steps})
    except TaskError as err:
        raise ProfileError(str(err)) from None
    return scenario, changes, raw.get("_source", str(name_or_path))


def reference_images(scenario: ScenarioConfig) -> list[PIL.Image.Image]:
    """Seeded random RGB images of the scenario's reference sizes (content does not change the work done)."""
    rng = np.random.default_rng(scenario.seed + 1000)
    images = []
    for h, w in scenario.references:
        ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
        noise = rng.integers(0, 64, size=(h, w, 3)).astype(np.float32)
        images.append(PIL.Image.fromarray(np.clip(ramp * 0.75 + noise, 0, 255).astype(np.uint8), "RGB"))
    return images


# -------------------------------------------------------------------------------------------------- options
@dataclass
class ProfileOptions:
    """Everything a profiling run needs (the CLI fills it; tests build it directly)."""

    scenario: str
    precisions: list[str]
    out: Path
    model: str | None = None
    synthetic: str | None = None
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    steps: int | None = None
    warmup: int = 1
    repeats: int = 3
    profile_steps: int = 2
    compile: bool = False
    cuda_graphs: bool = False
    offload: bool = False
    trace: bool = False
    fp8_kernel: str = "auto"
    progress: bool = True
    seed: int = 0
    argv: list[str] | None = None  # the CLI arguments, recorded as the invocation

    def validate(self) -> None:
        if (self.model is None) == (self.synthetic is None):
            raise ProfileError("give exactly one of --model PATH|HUB_ID (real weights) or --synthetic {tiny,full} "
                               "(random weights)")
        if self.synthetic not in (None, "tiny", "full"):
            raise ProfileError(f"--synthetic must be tiny or full, got {self.synthetic!r}")
        bad = [p for p in self.precisions if p not in ARM_NAMES]
        if bad or not self.precisions:
            raise ProfileError(f"unknown precision(s) {bad}; choose from {list(ARM_NAMES)} (e.g. --precision bf16 fp8)")
        if len(set(self.precisions)) != len(self.precisions):
            raise ProfileError(f"--precision lists an arm twice: {self.precisions}")
        if self.warmup < 0 or self.repeats < 1 or self.profile_steps < 0:
            raise ProfileError(f"need --warmup >= 0, --repeats >= 1, --profile-steps >= 0 (got {self.warmup}, "
                               f"{self.repeats}, {self.profile_steps})")
        dev = torch.device(self.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ProfileError(f"--device {self.device} asked for, but this machine has no CUDA GPU; use --device cpu")
        from omnigen2_fp8.fp8.config import Kernel

        if self.fp8_kernel not in [k.value for k in Kernel]:
            raise ProfileError(f"--fp8-kernel {self.fp8_kernel!r} is not one of {[k.value for k in Kernel]}")


# ----------------------------------------------------------------------------------------------- model loading
@dataclass
class Shared:
    """Components every arm shares (loaded once) and how to build a fresh BF16 transformer."""

    vae: Any
    mllm: Any
    tokenizer: Any
    scheduler_config: dict
    synthetic_info: dict | None
    build_transformer: Callable[[torch.device], nn.Module]


def load_shared(options: ProfileOptions, device: torch.device, dtype: torch.dtype) -> Shared:
    """Load (or build, for --synthetic) the MLLM, VAE and tokenizer on `device` (the CPU with --offload)."""
    home = torch.device("cpu") if options.offload else device
    if options.synthetic:
        from omnigen2_fp8 import synthetic as S

        size, seed = options.synthetic, options.seed
        tokenizer = S.build_qwen_tokenizer(qwen_ids=(size == "full"))
        text_dim = S.transformer_config(size).text_feat_dim
        return Shared(vae=S.build_vae(size, home, dtype, seed + 1),
                      mllm=S.build_qwen2_5_vl(size, home, dtype, seed + 2, tokenizer, text_hidden_size=text_dim),
                      tokenizer=tokenizer, scheduler_config=dict(S.SCHEDULER_CONFIG),
                      synthetic_info={"size": size, "seed": seed, "what": "random-weight models built in memory"},
                      build_transformer=lambda dev: S.build_transformer(size, dev, dtype, seed))
    from diffusers import AutoencoderKL
    from transformers import Qwen2_5_VLForConditionalGeneration

    from omnigen2_fp8.loading import read_json, resolve_component_folder
    from omnigen2_fp8.loading import read_synthetic_marker
    from omnigen2_fp8.text_encoder import load_tokenizer
    from omnigen2_fp8.checkpoints import load_transformer

    model = options.model
    vae_dir = resolve_component_folder(model, "vae")
    mllm = Qwen2_5_VLForConditionalGeneration.from_pretrained(resolve_component_folder(model, "mllm"), dtype=dtype)
    return Shared(vae=AutoencoderKL.from_pretrained(vae_dir, torch_dtype=dtype).to(home),
                  mllm=mllm.to(home),
                  tokenizer=load_tokenizer(resolve_component_folder(model, "processor", "tokenizer_config.json")),
                  scheduler_config=read_json(resolve_component_folder(model, "scheduler", "scheduler_config.json")
                                             / "scheduler_config.json"),
                  synthetic_info=read_synthetic_marker(vae_dir.parent),
                  build_transformer=lambda dev: load_transformer(model, dtype=dtype, device=dev))


def fp8_config_for(options: ProfileOptions):
    from omnigen2_fp8.fp8.config import Fp8Config

    return Fp8Config(kernel=options.fp8_kernel)


def quantize_unpadded(transformer: nn.Module, config) -> dict:
    """The deliberately unpadded FP8 model: fuse, then swap each policy-selected linear for an Fp8Linear with
    pad multiple 1. Layers with K or N not a multiple of 16 get the fallback kernel (torch-reference), the others
    `config.kernel`. Returns {"layers": {name: "fp8"|"bf16"}, "fallback_layers": [...], "aligned_layers": [...]}.
    """
    from omnigen2_fp8.fp8.config import Kernel
    from omnigen2_fp8.fp8.linear import Fp8Linear
    from omnigen2_fp8.fp8.quantize import Fp8Report, fold_swiglu, swap_linears

    fallback, aligned = [], []

    def build(name: str, linear: nn.Linear) -> Fp8Linear:
        ok = linear.in_features % 16 == 0 and linear.out_features % 16 == 0
        (aligned if ok else fallback).append(name)
        return Fp8Linear.from_linear(linear, config, pad_multiple=1,
                                     kernel=config.kernel if ok else Kernel.TORCH_REFERENCE)

    if config.fuse_projections and hasattr(transformer, "fuse_projections"):
        transformer.fuse_projections()
    report = Fp8Report(config)
    swap_linears(transformer, config, report, build)
    if config.fuse_swiglu:
        fold_swiglu(transformer)
    return {"layers": {d.name: d.action for d in report.layers}, "fallback_layers": fallback,
            "aligned_layers": aligned}


@dataclass
class Arm:
    """One precision arm: its pipeline, what its layers should run, and everything measured on it."""

    name: str
    pipe: Any = None
    precisions: dict[str, str] = field(default_factory=dict)   # linear fqn -> "fp8" | "bf16" (the policy)
    quantization: dict | None = None
    load: dict | None = None
    run_memory: dict | None = None
    e2e_ms: list[float] = field(default_factory=list)
    stage_runs: list[dict[str, list[float]]] = field(default_factory=list)
    profile: dict | None = None
    error: str | None = None
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.pipe is not None


def build_arm(arm: Arm, options: ProfileOptions, shared: Shared, device: torch.device, dtype: torch.dtype) -> None:
    """Create the arm's transformer + pipeline inside a load memory phase."""
    from omnigen2_fp8.pipeline import OmniGen2Pipeline
    from omnigen2_fp8.scheduler import FlowMatchEulerScheduler

    home = torch.device("cpu") if options.offload else device
    t0 = time.perf_counter()
    with T.track_peak_memory(f"load:{arm.name}", device) as peak:
        transformer = shared.build_transformer(home)
        fp8_config = fp8_config_for(options) if arm.name != "bf16" else None
        if arm.name == "fp8-nopad":
            arm.quantization = quantize_unpadded(transformer, fp8_config)
        arm.pipe = OmniGen2Pipeline(
            transformer, shared.vae, FlowMatchEulerScheduler.from_config(shared.scheduler_config), shared.mllm,
            shared.tokenizer, device=device, dtype=dtype, precision="bf16" if arm.name == "bf16" else "fp8",
            offload=options.offload, compile=options.compile, synthetic=shared.synthetic_info, progress=False,
            fp8_config=fp8_config, cuda_graphs=options.cuda_graphs)
        T.synchronize(device)
    arm.load = {**peak.to_dict(), "seconds": time.perf_counter() - t0,
                "transformer_gib": module_bytes(arm.pipe.transformer) / T.GIB}
    if arm.pipe.fp8_report is not None:
        rep = arm.pipe.fp8_report
        arm.quantization = {"num_fp8": len(rep.quantized), "num_bf16": len(rep.kept),
                            "fused_projections": rep.fused_projections, "swiglu_folded": len(rep.swiglu_folded),
                            "config": rep.config.to_dict(),
                            "layers": {d.name: d.action for d in rep.layers}}
    elif arm.quantization is not None:
        arm.quantization["config"] = fp8_config.to_dict()
        arm.quantization["config"]["pad_multiple"] = 1  # what was actually used (Fp8Config itself refuses 1)
    arm.precisions = (dict(arm.quantization["layers"]) if arm.quantization else {})
    for fqn, p in K.layer_precisions(arm.pipe.transformer).items():
        arm.precisions.setdefault(fqn, p)
    arm.quantization = _summarise_kernels(arm)


def _summarise_kernels(arm: Arm) -> dict | None:
    """Add the resolved kernel per FP8 layer (counts) to the quantization summary."""
    if arm.quantization is None:
        return None
    counts: dict[str, int] = {}
    for m in arm.pipe.transformer.modules():
        if getattr(m, "is_fp8", False) and hasattr(m, "refresh_kernel"):
            kernel = m.refresh_kernel()
            key = getattr(kernel, "value", str(kernel))
            counts[key] = counts.get(key, 0) + 1
    out = {k: v for k, v in arm.quantization.items() if k != "layers"}
    out["resolved_kernels"] = counts
    return out


def module_bytes(module: nn.Module, device_type: str | None = None) -> int:
    """Bytes of a module's parameters and buffers (in their current dtypes); only those on `device_type` if given."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()]
               if device_type is None or t.device.type == device_type)


@contextlib.contextmanager
def only_on_device(arms: list[Arm], keep: Arm | None, device: torch.device, enabled: bool) -> Iterator[None]:
    """Park every transformer but `keep`'s on the CPU for the block (no-op when disabled or on the CPU)."""
    if not enabled or device.type != "cuda":
        yield
        return
    for arm in arms:
        if arm.ok and arm is not keep:
            arm.pipe.transformer.to("cpu")
    if keep is not None and keep.ok:
        keep.pipe.transformer.to(device)
    T.release_memory(device)
    yield


def restore_all(arms: list[Arm], device: torch.device, enabled: bool) -> None:
    if enabled and device.type == "cuda":
        for arm in arms:
            if arm.ok:
                arm.pipe.transformer.to(device)
        T.release_memory(device)


# -------------------------------------------------------------------------------------------------- the calls
class _StepMarks:
    """Marks denoising steps on a StageTimer through the pipeline's public hooks: the first step opens when the
    denoise stage starts, and each `on_step(i, n, latents)` closes step i and opens step i + 1."""

    def __init__(self, timer: T.StageTimer):
        self.timer, self.open = timer, None

    def begin(self) -> None:
        self.end()
        self.open = self.timer("denoise_step")
        self.open.__enter__()

    def end(self) -> None:
        if self.open is not None:
            self.open.__exit__(None, None, None)
            self.open = None

    def on_step(self, i: int, n: int, latents) -> None:
        self.end()
        if i + 1 < n:
            self.begin()


def call_pipeline(arm: Arm, scenario: ScenarioConfig, images: list, steps: int, timer: T.StageTimer | None,
                  clock: StageClock | None = None):
    """One pipeline call of the scenario; with a timer, every stage and every denoising step is marked.

    Returns the pipeline's EditResult.
    """
    kwargs = dict(negative_prompt=scenario.negative_prompt, num_inference_steps=steps,
                  text_guidance_scale=scenario.text_guidance_scale, image_guidance_scale=scenario.image_guidance_scale,
                  cfg_range=tuple(scenario.cfg_range), seed=scenario.seed, width=scenario.width,
                  height=scenario.height, time_shift=scenario.time_shift, progress=False, clock=clock)
    if timer is None:
        return arm.pipe(scenario.instruction, images, **kwargs)
    marks = _StepMarks(timer)

    @contextlib.contextmanager
    def hook(name: str):
        with timer(name):
            if name != "denoise":
                yield
                return
            marks.begin()
            try:
                yield
            finally:
                marks.end()

    return arm.pipe(scenario.instruction, images, stage_hook=hook, on_step=marks.on_step, **kwargs)


def timed_call(arm: Arm, scenario: ScenarioConfig, images: list, steps: int, device: torch.device):
    """(end-to-end ms, stage durations) of one call: synchronise, perf_counter, call, synchronise."""
    timer = T.StageTimer(device)
    T.synchronize(device)
    t0 = time.perf_counter()
    result = call_pipeline(arm, scenario, images, steps, timer)
    T.synchronize(device)
    return (time.perf_counter() - t0) * 1e3, timer.collect(), result


def memory_call(arm: Arm, scenario: ScenarioConfig, images: list, steps: int, device: torch.device) -> dict:
    """The arm's run-phase memory: one untimed call from a clean allocator (see RUN_METHOD)."""
    T.release_memory(device)
    before = torch.cuda.memory_allocated(device) / T.GIB if device.type == "cuda" else None
    result = call_pipeline(arm, scenario, images, steps, None, clock=StageClock(device))
    if device.type != "cuda":
        return {"method": T.MEMORY_METHOD_CPU, "peak_allocated_gib": None, "peak_reserved_gib": None}
    expected = sum(module_bytes(m, "cuda") for m in (arm.pipe.mllm, arm.pipe.vae, arm.pipe.transformer)) / T.GIB
    return {"method": RUN_METHOD, "resident_before_gib": before,
            # what was allocated beyond this arm's own models when the call began (~0: nothing of another arm)
            "resident_unexplained_gib": before - expected,
            "peak_allocated_gib": result.peak_vram_bytes / T.GIB,
            "peak_reserved_gib": result.peak_vram_reserved_bytes / T.GIB,
            "stage_peak_allocated_gib": {k: v / T.GIB for k, v in result.stage_peak_vram_bytes.items()}}


def profile_call(arm: Arm, scenario: ScenarioConfig, images: list, options: ProfileOptions,
                 device: torch.device, out: Path) -> dict:
    """Profile one call with `profile_steps` denoising steps; returns the kernel section of the arm's record."""
    steps = options.profile_steps
    # Hooks inside compiled blocks would break the graphs; replayed CUDA graphs run no Python ranges at all.
    ranges = not (options.compile or options.cuda_graphs)
    transformer = arm.pipe.transformer
    with K.capture(device) as prof:
        with K.layer_ranges(transformer) if ranges else contextlib.nullcontext({}) as layer_calls:
            call_pipeline(arm, scenario, images, steps, T.StageTimer(device))
            T.synchronize(device)
    capture = K.parse_profile(prof, device)
    fp8_layers = {f for f, p in arm.precisions.items() if p == "fp8"}
    rows = K.kernel_table(capture, fp8_layers)
    csv_name = f"kernels_{arm.name}.csv"
    K.write_kernel_csv(out / csv_name, rows)
    trace = None
    if options.trace:
        trace = K.export_trace(prof, out / f"trace_{arm.name}.json.gz").name
    report = K.detect_fallbacks(capture, arm.precisions, layer_calls=dict(layer_calls) if ranges else None,
                                expect_fp8=arm.name != "bf16")
    report.note = fallback_note(arm, options, device)
    return {
        "time_unit": capture.time_unit, "profiled_steps": capture.steps, "device_kind": capture.device_kind,
        "total_us_in_steps": sum(r.total_us for r in rows),
        "top": [dataclasses.asdict(r) for r in rows[:25]], "num_kernels": len(rows),
        "categories": K.category_rollup(rows, capture.steps),
        "stages": K.stage_kernel_summary(capture), "csv": csv_name, "trace": trace,
        "layer_ranges": ranges, "fallback": report.to_dict(),
        "kernel_coverage": capture.coverage,  # CUDA: share of all device time attributed to a launching op
    }


def fallback_note(arm: Arm, options: ProfileOptions, device: torch.device) -> str | None:
    """Context for the fallback verdict: FP8 emulated on a CPU, or the deliberately unpadded arm."""
    q = arm.quantization or {}
    if arm.name == "fp8-nopad":
        return (f"deliberately unpadded arm: {len(q.get('fallback_layers', []))} layers with K or N not a multiple "
                f"of 16 run the fallback GEMM (torch-reference: dequantise + high-precision matmul); "
                f"{len(q.get('aligned_layers', []))} aligned layers keep kernel {options.fp8_kernel}")
    kernels = q.get("resolved_kernels") or {}
    if device.type != "cuda" and set(kernels) == {"torch-reference"} and options.fp8_kernel == "auto":
        return ("FP8 is emulated on this device: Fp8Config(kernel='auto') resolves to torch-reference on a CPU, "
                "so no FP8 GEMM can run; these findings are expected here, and would be a fallback on a GPU")
    return None


# ----------------------------------------------------------------------------------------------------- runner
def run_profile(options: ProfileOptions) -> dict:
    """Run every phase and write profile.json / kernels_<arm>.csv / profile.md into options.out.

    Returns the profile.json content. An arm that fails keeps its error in the record; the others go on.
    """
    options.validate()
    scenario, overrides, source = load_scenario(options.scenario, options.steps)
    device = torch.device(options.device)
    dtype = torch.bfloat16
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    images = reference_images(scenario)
    arms = [Arm(name) for name in options.precisions]
    park = len(arms) > 1 and not options.offload
    record: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "kind": "omnigen2-profile", "complete": False,
                              "error": None}
    invocation = None if options.argv is None else "python -m harness.profile " + shlex.join(options.argv)
    record["manifest"] = run_manifest(synthetic=options.synthetic or False, device=str(device),
                                      extra={"invocation": invocation})
    record["scenario"] = {**scenario.to_dict(), "source": source, "overrides": overrides,
                          "branches_per_step": scenario.branches_per_step(),
                          "transformer_passes": sum(scenario.branches_per_step())}
    record["settings"] = settings_record(options, scenario)
    record["method"] = {"load_memory": LOAD_METHOD if device.type == "cuda" else T.MEMORY_METHOD_CPU,
                        "run_memory": RUN_METHOD if device.type == "cuda" else T.MEMORY_METHOD_CPU,
                        "order": ORDER_NOTE, "timing": TIMING_METHOD,
                        "isolation": "reset + empty cache between phases; other arms' transformers parked on the "
                                     "CPU during loads and memory runs" if park else "single arm or --offload"}
    _print_plan(record, options)
    total = len(arms) * (max(options.warmup, 1) + options.repeats + (1 if options.profile_steps else 0))
    bar = tqdm(total=total, desc="profile", disable=not options.progress, unit="call")
    caught: list[warnings.WarningMessage] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            _phases(arms, options, scenario, images, device, dtype, out, park, bar, record)
        except Exception as err:  # outside any arm (e.g. loading the shared models): the record says so
            record["error"] = f"{type(err).__name__}: {err}"
            raise
        finally:
            bar.close()
            _finish(record, arms, scenario, options, caught, out)
    seen = set()
    for w in caught:  # replay what was recorded so the console still shows it (once per message)
        text = f"{w.category.__name__}: {w.message}"
        if text not in seen and not issubclass(w.category, K.FallbackKernelWarning):  # its banner is printed
            seen.add(text)
            print(f"warning: {text}", file=sys.stderr)
    return record


def _print_plan(record: dict, options: ProfileOptions) -> None:
    """Parameters first: what will run, where, with which weights (and what the flags changed)."""
    sc, st = record["scenario"], record["settings"]
    weights = f"synthetic {options.synthetic} (random weights)" if options.synthetic else f"model {options.model}"
    print(f"profile {sc['task']}: {sc['height']}x{sc['width']}, refs {sc['references']}, {sc['steps']} steps, "
          f"{sc['transformer_passes']} transformer passes; arms {' '.join(st['precisions'])}; {weights}; "
          f"device {st['device']}; warm-up {st['warmup']}, repeats {st['repeats']}, profiled steps "
          f"{st['profile_steps']}; compile {st['compile']}, CUDA graphs {st.get('cuda_graphs', False)}, offload {st['offload']}; out {st['out']}",
          file=sys.stderr, flush=True)
    for change in sc["overrides"]:
        print(f"  override {change['field']}: {change['old']} -> {change['new']}", file=sys.stderr, flush=True)


def _phases(arms, options, scenario, images, device, dtype, out, park, bar, record) -> None:
    bar.set_postfix_str("loading shared models")
    t0 = time.perf_counter()
    with T.track_peak_memory("load:shared", device) as shared_peak:
        shared = load_shared(options, device, dtype)
    record["shared_load"] = {**shared_peak.to_dict(), "seconds": time.perf_counter() - t0,
                             "mllm_gib": module_bytes(shared.mllm) / T.GIB, "vae_gib": module_bytes(shared.vae) / T.GIB}
    for arm in arms:
        bar.set_postfix_str(f"loading {arm.name}")
        _guard(arm, lambda: build_arm(arm, options, shared, device, dtype))
        if arm.ok and park and device.type == "cuda":
            arm.pipe.transformer.to("cpu")
    steps = scenario.steps
    for arm in arms:  # memory run + warm-up, one arm on the device at a time
        bar.set_postfix_str(f"warm-up {arm.name}")
        if not arm.ok:
            bar.update(max(options.warmup, 1))
            continue
        with only_on_device(arms, arm, device, park):
            _guard(arm, lambda: setattr(arm, "run_memory", memory_call(arm, scenario, images, steps, device)))
            bar.update(1)
            for _ in range(options.warmup - 1):
                if arm.ok:
                    _guard(arm, lambda: call_pipeline(arm, scenario, images, steps, None))
                bar.update(1)
        if park and arm.ok and device.type == "cuda":
            arm.pipe.transformer.to("cpu")
    restore_all(arms, device, park)
    for r in range(options.repeats):  # ABAB...
        for arm in arms:
            bar.set_postfix_str(f"repeat {r + 1}/{options.repeats} {arm.name}")
            if arm.ok:
                def one(arm=arm):
                    ms, stages, _ = timed_call(arm, scenario, images, steps, device)
                    arm.e2e_ms.append(ms)
                    arm.stage_runs.append(stages)
                _guard(arm, one)
            bar.update(1)
    if options.profile_steps:
        for arm in arms:
            bar.set_postfix_str(f"profile {arm.name}")
            if arm.ok:
                _guard(arm, lambda: setattr(arm, "profile", profile_call(arm, scenario, images, options, device, out)))
            bar.update(1)
    record["complete"] = all(a.ok for a in arms)


def _guard(arm: Arm, fn: Callable[[], Any]) -> None:
    """Run one phase of an arm; an exception becomes the arm's error (the run goes on with the other arms)."""
    try:
        fn()
    except Exception as err:  # any failure of one arm is recorded in its row; Ctrl-C still stops the run
        if isinstance(err, torch.cuda.OutOfMemoryError) and torch.cuda.is_available():
            torch.cuda.empty_cache()
        arm.error = f"{type(err).__name__}: {err}"
        arm.traceback = traceback.format_exc()
        print(f"error in arm {arm.name}: {arm.error}", file=sys.stderr)
        gc.collect()


def settings_record(options: ProfileOptions, scenario: ScenarioConfig) -> dict:
    return {"precisions": list(options.precisions), "model": options.model, "synthetic": options.synthetic or False,
            "device": options.device, "dtype": "bfloat16", "steps": scenario.steps, "warmup": options.warmup,
            "repeats": options.repeats, "profile_steps": options.profile_steps, "compile": options.compile,
            "cuda_graphs": options.cuda_graphs,
            "offload": options.offload, "trace": options.trace, "fp8_kernel": options.fp8_kernel,
            "seed": options.seed, "out": str(options.out)}


# ------------------------------------------------------------------------------------------------- results
def arm_record(arm: Arm) -> dict:
    """The arm's section of profile.json."""
    rec: dict[str, Any] = {"name": arm.name, "ok": arm.ok, "error": arm.error,
                           "quantization": arm.quantization, "memory": {"load": arm.load, "run": arm.run_memory}}
    if arm.e2e_ms:
        rec["latency"] = {"end_to_end": T.summarize_ms(arm.e2e_ms, label=f"{arm.name} end to end").to_dict(),
                          "stages": T.summarize_stage_runs(arm.stage_runs)}
    else:
        rec["latency"] = None
    rec["kernels"] = arm.profile
    rec["fallback"] = arm.profile["fallback"] if arm.profile else None
    if arm.error and getattr(arm, "traceback", None):
        rec["traceback"] = arm.traceback
    return rec


def ratios(arms: dict[str, dict]) -> dict[str, dict]:
    """Every arm against the first one: time ratios (arm / first; < 1 is faster), speed-ups (first / arm),
    memory ratios (arm / first)."""
    names = list(arms)
    base = arms[names[0]]
    out = {}
    for name in names[1:]:
        a = arms[name]
        out[name] = {"vs": names[0]}
        for key, path in (("end_to_end", ("latency", "end_to_end", "median_ms")),
                          ("denoise", ("latency", "stages", "denoise", "per_run", "median_ms")),
                          ("denoise_step", ("latency", "stages", "denoise_step", "per_call", "median_ms")),
                          ("text_encode", ("latency", "stages", "text_encode", "per_run", "median_ms")),
                          ("vae_decode", ("latency", "stages", "vae_decode", "per_run", "median_ms")),
                          ("peak_allocated_run", ("memory", "run", "peak_allocated_gib")),
                          ("peak_reserved_run", ("memory", "run", "peak_reserved_gib")),
                          ("peak_allocated_load", ("memory", "load", "peak_allocated_gib")),
                          ("transformer_gib", ("memory", "load", "transformer_gib")),
                          ("kernel_us_per_step", ("kernels", "total_us_in_steps"))):
            x, b = _dig(a, path), _dig(base, path)
            ratio = x / b if x is not None and b not in (None, 0) else None
            out[name][f"{key}_ratio"] = ratio
            if key in ("end_to_end", "denoise", "denoise_step"):
                out[name][f"{key}_speedup"] = (1 / ratio) if ratio else None
    return out


def _dig(d: Any, path: tuple) -> float | None:
    for key in path:
        if not isinstance(d, dict) or d.get(key) is None:
            return None
        d = d[key]
    return float(d) if isinstance(d, (int, float)) else None


def _finish(record, arms, scenario, options, caught, out: Path) -> None:
    record["arms"] = {a.name: arm_record(a) for a in arms}
    record["ratios"] = ratios(record["arms"])
    # the measurement's own warnings (library deprecation notices are only shown on the console)
    record["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught
                          if issubclass(w.category, (T.HighSpreadWarning, K.FallbackKernelWarning))]
    fallbacks = {n: a["fallback"]["fallback_detected"] for n, a in record["arms"].items()
                 if a.get("fallback") and a["fallback"]["checked"]}
    record["fallback_detected"] = fallbacks
    write_json_atomic(out / "profile.json", record)
    write_text_atomic(out / "profile.md", render_markdown(record))
    for name, a in record["arms"].items():
        if a.get("fallback"):
            K.warn_fallbacks(name, _fallback_from_dict(a["fallback"]))


def _fallback_from_dict(d: dict) -> K.FallbackReport:
    return K.FallbackReport(**{**d, "findings": [K.FallbackFinding(**f) for f in d["findings"]]})


# -------------------------------------------------------------------------------------------------- markdown
def render_markdown(rec: dict) -> str:
    """profile.md: the tables a reader needs, from the profile.json record alone."""
    m, sc, st = rec["manifest"], rec["scenario"], rec["settings"]
    dev = m["device"]
    lines = [f"# Profile: {sc['task']} ({', '.join(st['precisions'])})", ""]
    if m.get("synthetic_weights"):
        lines += [f"> **{SYNTHETIC_WARNING}** (synthetic: {m['synthetic_weights']})", ""]
    lines += [f"- device: {dev.get('device_name')} ({dev.get('device')}), driver {dev.get('driver')}, "
              f"torch {dev.get('torch')}, CUDA {dev.get('cuda_runtime')}",
              f"- git {m.get('git_revision')}, {m.get('date_utc')}; "
              f"command: `{m.get('invocation') or m.get('command')}`",
              f"- scenario: {sc['height']}x{sc['width']} output, references {sc['references']}, {sc['steps']} steps, "
              f"guidance text {sc['text_guidance_scale']} / image {sc['image_guidance_scale']}, "
              f"{sc['transformer_passes']} transformer passes per call; source `{_rel(sc['source'])}`"
              + (f"; overrides {sc['overrides']}" if sc["overrides"] else ""),
              f"- warm-up {st['warmup']}, repeats {st['repeats']} ({rec['method']['order']}), profiled steps "
              f"{st['profile_steps']}, compile {st['compile']}, CUDA graphs {st.get('cuda_graphs', False)}, offload {st['offload']}, FP8 kernel {st['fp8_kernel']}",
              f"- complete: {rec['complete']}", ""]
    if rec.get("error"):
        lines += [f"**The run stopped early:** `{rec['error']}`", ""]
    arms = rec["arms"]
    names = list(arms)
    for n, a in arms.items():
        if a["error"]:
            lines += [f"**Arm {n} failed:** `{a['error']}`", ""]
    lines += ["## Latency (ms, median [IQR] over repeats)", ""]
    stages = ["text_encode", "vae_encode", "denoise", "denoise_step", "vae_decode"]
    lines += ["| arm | end to end | " + " | ".join(STAGE_LABELS[s] for s in stages) + " | speed-up vs "
              + names[0] + " |", "|---" * (len(stages) + 3) + "|"]
    for n in names:
        lat = arms[n]["latency"]
        if not lat:
            lines.append(f"| {n} | failed |" + " |" * (len(stages) + 1))
            continue
        cells = [_stat(lat["end_to_end"])]
        for s in stages:
            d = lat["stages"].get(s)
            cells.append(_stat(d["per_call" if s == "denoise_step" else "per_run"]) if d else "-")
        sp = rec["ratios"].get(n, {}).get("end_to_end_speedup")
        cells.append(f"{sp:.2f}x" if sp else ("1.00x" if n == names[0] else "-"))
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "Stage = wall time of the stage per call (CUDA events); denoise step = one step with all its CFG "
              "passes. High spread (IQR/median > 10%) is marked with `!`.", ""]
    lines += ["## Wall time vs summed kernel time per stage (profiled call)", "",
              "| arm | stage | wall ms/call (timed) | kernel ms/call (profiled) | kernel / wall |",
              "|---|---|---|---|---|"]
    for n in names:
        a = arms[n]
        if not (a["latency"] and a["kernels"]):
            continue
        for s in stages:
            kern = a["kernels"]["stages"].get(s)
            lat = a["latency"]["stages"].get(s)
            if not kern or not lat:
                continue
            wall = lat["per_call"]["median_ms"]
            k_ms = kern["kernel_us"] / max(kern["entries"], 1) / 1e3
            if s == "denoise":  # the profiled call ran fewer steps: scale its kernel time per step
                steps_prof = max(a["kernels"]["profiled_steps"], 1)
                k_ms = k_ms / steps_prof * st["steps"]
            lines.append(f"| {n} | {STAGE_LABELS[s]} | {wall:.2f} | {k_ms:.2f} | {k_ms / wall:.2f} |" if wall else "")
    lines += ["", "kernel / wall well below 1 means the GPU idles inside the stage (launch-bound or host work). "
              "On CPU runs, kernel time is the summed self CPU time of the ops.", ""]
    lines += ["## Memory (GiB)", "", "| arm | transformer | load peak alloc | load peak reserved | run peak alloc | "
              "run peak reserved |", "|---|---|---|---|---|---|"]
    for n in names:
        load, run = arms[n]["memory"]["load"] or {}, arms[n]["memory"]["run"] or {}
        lines.append(f"| {n} | {_g(load.get('transformer_gib'))} | {_g(load.get('peak_allocated_gib'))} | "
                     f"{_g(load.get('peak_reserved_gib'))} | {_g(run.get('peak_allocated_gib'))} | "
                     f"{_g(run.get('peak_reserved_gib'))} |")
    shared = rec.get("shared_load") or {}
    lines += ["", f"Shared (loaded once): MLLM {_g(shared.get('mllm_gib'))}, VAE {_g(shared.get('vae_gib'))}, "
              f"load peak {_g(shared.get('peak_allocated_gib'))}. Load: {rec['method']['load_memory']}. "
              f"Run: {rec['method']['run_memory']}.", ""]
    lines += _kernel_sections(rec, names)
    if rec["warnings"]:
        lines += ["## Warnings", ""] + [f"- {w}" for w in rec["warnings"]] + [""]
    return "\n".join(lines) + "\n"


def _kernel_sections(rec: dict, names: list[str]) -> list[str]:
    arms = rec["arms"]
    prof = [n for n in names if arms[n]["kernels"]]
    if not prof:
        return ["## Kernels", "", "not profiled (--profile-steps 0 or failed arms)", ""]
    unit = arms[prof[0]]["kernels"]["time_unit"]
    lines = [f"## Kernel categories (denoising steps; {unit}, ms per step and share)", "",
             "| category | " + " | ".join(prof) + " |", "|---" * (len(prof) + 1) + "|"]
    for c in K.CATEGORIES:
        cells = []
        for n in prof:
            d = arms[n]["kernels"]["categories"][c]
            cells.append(f"{d['us_per_step'] / 1e3:.3f} ({d['share']:.1%})")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    totals = [f"{arms[n]['kernels']['total_us_in_steps'] / max(arms[n]['kernels']['profiled_steps'], 1) / 1e3:.3f}"
              for n in prof]
    lines += ["| **total** | " + " | ".join(totals) + " |", ""]
    lines += ["## FP8 fallback check", ""]
    for n in prof:
        fb = arms[n]["fallback"]
        if not fb["checked"]:
            lines.append(f"- {n}: not an FP8 arm (BF16 GEMMs per step: {fb['bf16_gemm_calls_per_step']:g})")
            continue
        verdict = "**FALLBACK DETECTED**" if fb["fallback_detected"] else "clean: no fallback kernels"
        lines.append(f"- {n}: {verdict} ({fb['method']}); FP8 GEMMs per step {fb['fp8_gemm_calls_per_step']:g} "
                     f"(expected {_n(fb['expected_fp8_linear_calls_per_step'])}), high-precision GEMMs per step "
                     f"{fb['bf16_gemm_calls_per_step']:g} (expected {_n(fb['expected_bf16_linear_calls_per_step'])})")
        for f in fb["findings"]:
            ms = f", {f['total_us'] / 1e3:.2f} ms" if f["total_us"] else ""
            lines.append(f"  - `{f['kind']}`: {f['message']} ({f['calls']} calls{ms})")
        if fb.get("note"):
            lines.append(f"  - note: {fb['note']}")
    lines.append("")
    for n in prof:
        k = arms[n]["kernels"]
        cov = f"; {k['kernel_coverage']:.1%} of device time attributed" if k.get("kernel_coverage") else ""
        lines += [f"## Top kernels: {n} ({k['profiled_steps']} profiled steps, {k['num_kernels']} distinct{cov}; "
                  f"full table in `{k['csv']}`)", "", "| # | kernel | category | calls/step | ms/step | share |",
                  "|---|---|---|---|---|---|"]
        for i, r in enumerate(k["top"][:15], 1):
            name = r["name"].replace("|", "\\|")
            name = name if len(name) <= 100 else name[:97] + "..."
            lines.append(f"| {i} | `{name}` | {r['category']} | {r['calls_per_step']:g} | "
                         f"{r['us_per_step'] / 1e3:.3f} | {r['share']:.1%} |")
        lines.append("")
    return lines


def _stat(s: dict) -> str:
    flag = " !" if s["high_spread"] else ""
    return f"{s['median_ms']:.2f} [{s['iqr_ms']:.2f}]{flag}"


def _g(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _n(x) -> str:
    return "?" if x is None else f"{x:g}"


def _rel(p: str) -> str:
    try:
        return str(Path(p).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return p


# ------------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m harness.profile", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Latency, VRAM and kernel breakdowns of OmniGen2 edits for one or more precisions, in one "
                    "process, arms alternating.",
        epilog="examples:\n"
               "  python -m harness.profile --precision bf16 fp8 --scenario edit-1024-1ref --synthetic full\n"
               "  python -m harness.profile --precision bf16 fp8 --fp8-no-pad --scenario gedit-512 --synthetic full "
               "--steps 4\n"
               "  python -m harness.profile --precision bf16 fp8 --scenario t2i-1024 --model OmniGen2/OmniGen2\n"
               "  python -m harness.tasks ls profile     # the scenarios")
    what = p.add_argument_group("what to run")
    what.add_argument("--precision", nargs="+", default=["bf16", "fp8"], choices=ARM_NAMES,
                      help="arms, in order; ratios are against the first (default: bf16 fp8)")
    what.add_argument("--scenario", default="edit-1024-1ref", help="scenario name (tasks/profile/) or YAML path")
    src = what.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="checkpoint folder or hub id (real weights)")
    src.add_argument("--synthetic", choices=("tiny", "full"), help="random-weight models built in memory")
    what.add_argument("--fp8-no-pad", action="store_true",
                      help="add the deliberately unpadded FP8 arm 'fp8-nopad' (its fallback GEMMs must be flagged)")
    from omnigen2_fp8.fp8.config import Kernel

    what.add_argument("--fp8-kernel", default="auto", choices=[k.value for k in Kernel],
                      help="Fp8Config kernel of the FP8 arms (default auto: cublas-padded on a GPU)")
    how = p.add_argument_group("how")
    how.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    how.add_argument("--steps", type=int, default=None, help="override the scenario's denoising steps")
    how.add_argument("--warmup", type=int, default=1, help="untimed calls per arm (the first measures run memory)")
    how.add_argument("--repeats", type=int, default=3, help="timed calls per arm")
    how.add_argument("--profile-steps", type=int, default=2, help="denoising steps in the profiled call (0: none)")
    how.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks")
    how.add_argument("--cuda-graphs", action="store_true",
                     help="replay transformer passes as CUDA graphs (removes launch overhead; CUDA only)")
    how.add_argument("--offload", action="store_true", help="keep models on the CPU, move each to the GPU per stage")
    how.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights")
    outp = p.add_argument_group("output")
    outp.add_argument("--out", type=Path, default=None, help="output folder (default results/profile/<scenario>-<utc>)")
    outp.add_argument("--trace", action="store_true", help="also write a Chrome trace per arm (large)")
    outp.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def options_from_args(args: argparse.Namespace, argv: list[str]) -> ProfileOptions:
    precisions = list(args.precision)
    if args.fp8_no_pad and "fp8-nopad" not in precisions:
        precisions.append("fp8-nopad")
    out = args.out or REPO_ROOT / "results" / "profile" / (
        f"{Path(args.scenario).stem}-{_dt.datetime.now(_dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}")
    return ProfileOptions(scenario=args.scenario, precisions=precisions, out=out, model=args.model,
                          synthetic=args.synthetic, device=args.device, steps=args.steps, warmup=args.warmup,
                          repeats=args.repeats, profile_steps=args.profile_steps, compile=args.compile,
                          cuda_graphs=args.cuda_graphs,
                          offload=args.offload, trace=args.trace, fp8_kernel=args.fp8_kernel,
                          progress=not args.no_progress, seed=args.seed, argv=list(argv))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        options = options_from_args(args, argv)
        record = run_profile(options)
    except (ProfileError, FileNotFoundError) as err:  # bad options / scenario, or a checkpoint that is not there
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {options.out / 'profile.json'}, {options.out / 'profile.md'} and kernels_<arm>.csv")
    print(summary_line(record))
    return 0 if record["complete"] else 1


def summary_line(record: dict) -> str:
    parts = []
    for name, arm in record["arms"].items():
        if arm["latency"]:
            parts.append(f"{name}: {arm['latency']['end_to_end']['median_ms']:.1f} ms")
        else:
            parts.append(f"{name}: failed")
    for name, r in record["ratios"].items():
        if r.get("end_to_end_speedup"):
            parts.append(f"{name} speed-up vs {r['vs']}: {r['end_to_end_speedup']:.2f}x")
    return "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
