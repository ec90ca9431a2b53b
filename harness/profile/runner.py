"""The profiling run: timed, memory and profiled pipeline calls, the phases in order, and the error guard.

Phases (harness/profile/__init__.py says why in this order): load the shared components and every arm; one
memory run + warm-up per arm with only its transformer on the GPU; `--repeats` timed rounds over all arms (ABAB...);
one profiled call per arm. An arm that fails keeps its error in the record; the others go on.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import shlex
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from harness.core import timing
from harness.core.fidelity import image_fidelity
from harness.core.records import SYNTHETIC_WARNING, run_manifest, write_json_atomic, write_text_atomic
from harness.profile import fallbacks, kernels, step_cache
from harness.profile.arms import Arm, build_arm, load_arm_components, module_bytes, only_on_device, restore_all
from harness.profile.options import ProfileOptions
from harness.profile.record import ArmRecord, ProfileRecord, compute_ratios
from harness.profile.render import profile_markdown
from harness.profile.scenarios import ScenarioConfig, load_scenario, reference_images
from omnigen2_fp8.fp8.attention_error import attention_error_probe, has_fp8_attention
from omnigen2_fp8.measure import StageClock
from omnigen2_fp8.modes import AUTO_MODE, EAGER_MODE, mode_name
from omnigen2_fp8.profiling import layer_ranges

LOAD_METHOD = ("each load is its own phase: gc + synchronize + empty_cache + reset_peak_memory_stats before it, "
               "max_memory_allocated / max_memory_reserved after it; other arms' transformers are parked on the CPU")
RUN_METHOD = ("first warm-up call of the arm with only its own transformer on the GPU (other arms' transformers "
              "parked on the CPU), after gc + empty_cache + reset_peak_memory_stats; the pipeline resets the peak "
              "counters at each stage and the call's peak is the max over its stages")
PROFILER_LOG = "profiler.log"  # what the profiler's C++ layer prints while it starts and stops
ORDER_NOTE = "arms alternate within every repeat (ABAB...), so drift hits every arm alike"
TIMING_METHOD = ("warm-up calls excluded; end to end = perf_counter between two synchronisations; stages = CUDA "
                 "events around each pipeline stage (perf_counter on CPU), read after a synchronise; a denoise step "
                 "runs from the end of the previous one (or the start of the denoise stage) to the end of its "
                 "scheduler update; median and IQR over "
                 "repeats, warning when IQR/median > 10%")
STARTUP_METHOD = ("the arm's first call (the memory run) timed end to end (perf_counter between synchronisations): "
                  "compilation, CUDA graph capture and autotuning happen there, once per process and input shape; "
                  "startup = that call minus the median timed call, excluded from every per-edit latency; "
                  "edits_to_amortise = edits after which startup adds under 5% per edit")
GRAPHS_PROFILE_NOTE = ("CUDA graph replay launches a whole transformer pass from one cudaGraphLaunch, so the profiler "
                       "cannot tie its kernels to the ops and layers the tables and the fallback check read: the "
                       "profiled call runs the same {mode} model without graph replay (the same kernels, launched one "
                       "by one); the timings above are the graph replays")
COMPILED_FALLBACK_NOTE = ("Compiled blocks cannot carry per-layer ranges, so this check read a second profiled call "
                          "with the same model run eagerly (torch.compiler.set_stance('force_eager')); the kernel "
                          "tables are the compiled call's.")
EDITS_FOLDER = "edits"  # each arm's first timed edit, as PNG
AMORTISE_SHARE = 0.05  # startup is "amortised" once it adds less than this share to each edit


# -------------------------------------------------------------------------------------------------- the calls
class _StepMarks:
    """Marks denoising steps on a StageTimer through the pipeline's public hooks: the first step opens when the
    denoise stage starts, and each `on_step(i, n, latents)` closes step i and opens step i + 1."""

    def __init__(self, timer: timing.StageTimer):
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


def call_pipeline(arm: Arm, scenario: ScenarioConfig, images: list, steps: int, timer: timing.StageTimer | None,
                  clock: StageClock | None = None, call_timer: timing.StageTimer | None = None):
    """One pipeline call of the scenario; with a timer, every stage and every denoising step is marked; with a
    call_timer, every transformer call (entries named step_cache.CALL_ENTRY, in call order).

    Returns the pipeline's EditResult.
    """
    kwargs = dict(negative_prompt=scenario.negative_prompt, num_inference_steps=steps,
                  text_guidance_scale=scenario.text_guidance_scale, image_guidance_scale=scenario.image_guidance_scale,
                  cfg_range=tuple(scenario.cfg_range), seed=scenario.seed, width=scenario.width,
                  height=scenario.height, time_shift=scenario.time_shift, progress=False, clock=clock,
                  call_hook=None if call_timer is None else lambda branch, i: call_timer(step_cache.CALL_ENTRY))
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
    """(end-to-end ms, stage durations, ms of each transformer call in order, result) of one call: synchronise,
    perf_counter, call, synchronise. Call times are CUDA events read after that synchronise (no sync per call)."""
    timer = timing.StageTimer(device)
    call_timer = timing.StageTimer(device, profiler_ranges=False)  # no ranges: kernels keep their step's stage
    timing.synchronize(device)
    t0 = time.perf_counter()
    result = call_pipeline(arm, scenario, images, steps, timer, call_timer=call_timer)
    timing.synchronize(device)
    e2e_ms = (time.perf_counter() - t0) * 1e3
    return e2e_ms, timer.collect(), call_timer.collect().get(step_cache.CALL_ENTRY, []), result


def untimed_call_ms(arm: Arm, scenario: ScenarioConfig, images: list, steps: int, device: torch.device) -> float:
    """Wall ms of one warm-up call (not part of any latency statistic)."""
    return timing.time_call_ms(lambda: call_pipeline(arm, scenario, images, steps, None), device)


def memory_call(arm: Arm, scenario: ScenarioConfig, images: list, steps: int, device: torch.device) -> dict:
    """The arm's run-phase memory: its first call, from a clean allocator (see RUN_METHOD); that call's wall time
    (compilation and graph capture included) goes to `arm.first_call_ms`."""
    timing.release_memory(device)
    before = torch.cuda.memory_allocated(device) / timing.GIB if device.type == "cuda" else None
    t0 = time.perf_counter()
    result = call_pipeline(arm, scenario, images, steps, None, clock=StageClock(device))
    timing.synchronize(device)
    arm.first_call_ms = (time.perf_counter() - t0) * 1e3
    if device.type != "cuda":
        return {"method": timing.MEMORY_METHOD_CPU, "peak_allocated_gib": None, "peak_reserved_gib": None}
    expected = sum(module_bytes(m, "cuda") for m in (arm.pipe.mllm, arm.pipe.vae, arm.pipe.transformer)) / timing.GIB
    return {"method": RUN_METHOD, "resident_before_gib": before,
            # what was allocated beyond this arm's own models when the call began (~0: nothing of another arm)
            "resident_unexplained_gib": before - expected,
            "peak_allocated_gib": result.peak_vram_bytes / timing.GIB,
            "peak_reserved_gib": result.peak_vram_reserved_bytes / timing.GIB,
            "stage_peak_allocated_gib": {k: v / timing.GIB for k, v in result.stage_peak_vram_bytes.items()}}


def profile_call(arm: Arm, scenario: ScenarioConfig, images: list, options: ProfileOptions,
                 device: torch.device, out: Path) -> dict:
    """Profile one call with `profile_steps` denoising steps; returns the kernel section of the arm's record.

    An arm replaying CUDA graphs is profiled without the replay (GRAPHS_PROFILE_NOTE), compiled if it is compiled.
    A compiled FP8 arm's fallback check reads a second, eager call with per-layer ranges (COMPILED_FALLBACK_NOTE).
    """
    compiled = arm.mode.compile
    profiled_mode = mode_name(compiled, cuda_graphs=False)
    prof, capture, layer_calls = _profiled_run(arm, scenario, images, options, device, out, eager=False)
    fp8_layers = {f for f, p in arm.layer_policy.items() if p == "fp8"}
    rows = kernels.kernel_table(capture, fp8_layers)
    csv_name = f"kernels_{_file_stem(arm.name)}.csv"
    kernels.write_kernel_csv(out / csv_name, rows)
    trace = None
    if options.trace:
        trace = kernels.export_trace(prof, out / f"trace_{_file_stem(arm.name)}.json.gz").name
    checked_on = capture
    if compiled and arm.recipe.quantized:
        _, checked_on, layer_calls = _profiled_run(arm, scenario, images, options, device, out, eager=True)
    report = fallbacks.detect_fallbacks(checked_on, arm.layer_policy, layer_calls=layer_calls,
                                        expect_fp8=arm.recipe.quantized)
    notes = [fallback_note(arm, options, device), COMPILED_FALLBACK_NOTE if checked_on is not capture else None]
    report.note = " ".join(n if n.endswith(".") else n + "." for n in notes if n) or None
    report.emulated = report.checked and fp8_emulated(arm, options, device)
    return {
        "time_unit": capture.time_unit, "profiled_steps": capture.steps, "device_kind": capture.device_kind,
        "total_us_in_steps": sum(r.total_us for r in rows),
        "top": [dataclasses.asdict(r) for r in rows[:25]], "num_kernels": len(rows),
        "categories": kernels.category_rollup(rows, capture.steps),
        "stages": kernels.stage_kernel_summary(capture), "csv": csv_name, "trace": trace,
        "layer_ranges": not compiled, "fallback": report.to_dict(),
        "kernel_coverage": capture.coverage,  # CUDA: share of all device time attributed to a launching op
        "profiled_mode": profiled_mode,
        "profiled_mode_note": GRAPHS_PROFILE_NOTE.format(mode=profiled_mode) if arm.mode.cuda_graphs else None,
        "fallback_profiled_mode": EAGER_MODE if checked_on is not capture else profiled_mode,
    }


def _profiled_run(arm: Arm, scenario: ScenarioConfig, images: list, options: ProfileOptions, device: torch.device,
                  out: Path, eager: bool):
    """(profiler, parsed capture, layer calls or None) of one profiled call, never replaying CUDA graphs; eager:
    compiled blocks run eagerly, so every linear gets its `layer::` range (they cannot inside compiled code)."""
    ranges = eager or not arm.mode.compile
    stance = torch.compiler.set_stance("force_eager") if eager else contextlib.nullcontext()
    with kernels.capture(device, log=out / PROFILER_LOG) as prof:  # the profiler's C++ chatter goes to the file
        with stance, arm.pipe.without_cuda_graphs(), \
                layer_ranges(arm.pipe.transformer) if ranges else contextlib.nullcontext({}) as layer_calls:
            call_pipeline(arm, scenario, images, options.profile_steps, timing.StageTimer(device))
            timing.synchronize(device)
    return prof, kernels.parse_profile(prof, device), dict(layer_calls) if ranges else None


def fp8_emulated(arm: Arm, options: ProfileOptions, device: torch.device) -> bool:
    """True when FP8 is emulated by design: kernel 'auto' on a device without FP8 GEMMs resolves to torch-reference
    (the deliberately unpadded arm is a fallback on purpose, not emulation)."""
    q = arm.quantization or {}
    return ("fallback_layers" not in q and device.type != "cuda"
            and set(q.get("resolved_kernels") or {}) == {"torch-reference"} and options.fp8_kernel == "auto")


def fallback_note(arm: Arm, options: ProfileOptions, device: torch.device) -> str | None:
    """Context for the fallback verdict: FP8 emulated on a CPU, or a deliberately unpadded arm."""
    q = arm.quantization or {}
    if "fallback_layers" in q:
        return (f"deliberately unpadded arm: {len(q.get('fallback_layers', []))} layers with K or N not a multiple "
                f"of 16 run the fallback GEMM (torch-reference: dequantise + high-precision matmul); "
                f"{len(q.get('aligned_layers', []))} aligned layers keep kernel {options.fp8_kernel}")
    if fp8_emulated(arm, options, device):
        return ("FP8 is emulated on this device: Fp8Config(kernel='auto') resolves to torch-reference on a CPU, "
                "so no FP8 GEMM can run; these findings are expected here, and would be a fallback on a GPU")
    return None


# ----------------------------------------------------------------------------------------------------- runner
def run_profile(options: ProfileOptions) -> ProfileRecord:
    """Run every phase and write profile.json / kernels_<arm>.csv / profile.md into options.out.

    Returns the record profile.json holds. An arm that fails keeps its error in the record; the others go on.
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
    record: dict[str, Any] = {"complete": False, "error": None}  # the ProfileRecord's fields, as they are found
    invocation = None if options.argv is None else "python -m harness.profile " + shlex.join(options.argv)
    record["manifest"] = run_manifest(synthetic=options.synthetic or False, device=str(device),
                                      extra={"invocation": invocation})
    record["scenario"] = {**scenario.to_dict(), "source": source, "overrides": overrides,
                          "branches_per_step": scenario.branches_per_step(),
                          "transformer_passes": sum(scenario.branches_per_step())}
    record["settings"] = settings_record(options, scenario)
    record["method"] = {"load_memory": LOAD_METHOD if device.type == "cuda" else timing.MEMORY_METHOD_CPU,
                        "run_memory": RUN_METHOD if device.type == "cuda" else timing.MEMORY_METHOD_CPU,
                        "order": ORDER_NOTE, "timing": TIMING_METHOD, "startup": STARTUP_METHOD,
                        "call_timing": step_cache.CALL_TIMING,
                        "isolation": "reset + empty cache between phases; other arms' transformers parked on the "
                                     "CPU during loads and memory runs" if park else "single arm or --offload"}
    _print_plan(record, options)
    total = len(arms) * (max(options.warmup, 1) + options.repeats + (1 if options.profile_steps else 0))
    bar = tqdm(total=total, desc="profile", disable=not options.progress, unit="call")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            _phases(arms, options, scenario, images, device, dtype, out, park, bar, record)
        except Exception as err:  # outside any arm (e.g. loading the shared models): the record says so
            record["error"] = f"{type(err).__name__}: {err}"
            raise
        finally:
            bar.close()
            result = _finish(record, arms, caught, out)
    seen = set()
    spread = [w for w in caught if issubclass(w.category, timing.HighSpreadWarning)]
    for w in caught:  # replay what was recorded so the console still shows it (once per message)
        text = f"{w.category.__name__}: {w.message}"
        # fallbacks have their own line or banner; spread warnings get one note (profile.json keeps each)
        if text not in seen and not issubclass(w.category, (fallbacks.FallbackKernelWarning, timing.HighSpreadWarning)):
            seen.add(text)
            print(f"warning: {text}", file=sys.stderr)
    if spread:
        print(f"note: {len(spread)} timings spread more than {timing.SPREAD_WARN_FRACTION:.0%} (IQR/median), marked "
              "! in profile.md and listed under 'warnings' in profile.json; use more --repeats or a quieter machine",
              file=sys.stderr)
    return result


def _print_plan(record: dict, options: ProfileOptions) -> None:
    """Parameters first: what will run, where, with which weights (and what the flags changed)."""
    sc, st = record["scenario"], record["settings"]
    weights = f"synthetic {options.synthetic} (random weights)" if options.synthetic else f"model {options.model}"
    print(f"profile {sc['task']}: {sc['height']}x{sc['width']}, refs {sc['references']}, {sc['steps']} steps, "
          f"{sc['transformer_passes']} transformer passes; arms {' '.join(st['precisions'])}; {weights}; "
          f"device {st['device']}; warm-up {st['warmup']}, repeats {st['repeats']}, profiled steps "
          f"{st['profile_steps']}; offload {st['offload']}; out {st['out']}",
          file=sys.stderr, flush=True)
    for arm in st["precisions"]:
        choice = options.arm_mode(arm)
        print(f"  mode of {arm}: {choice.describe()}" + (" (--mode auto)" if options.mode == AUTO_MODE else ""),
              file=sys.stderr, flush=True)
    for change in sc["overrides"]:
        print(f"  override {change['field']}: {change['old']} -> {change['new']}", file=sys.stderr, flush=True)


def _phases(arms, options, scenario, images, device, dtype, out, park, bar, record) -> None:
    bar.set_postfix_str("loading shared models")
    t0 = time.perf_counter()
    with timing.track_peak_memory("load:shared", device) as shared_peak:
        components = load_arm_components(options, device, dtype)
    record["shared_load"] = {**shared_peak.to_dict(), "seconds": time.perf_counter() - t0,
                             "mllm_gib": module_bytes(components.mllm) / timing.GIB,
                             "vae_gib": module_bytes(components.vae) / timing.GIB}
    if components.synthetic_info and not record["manifest"]["synthetic_weights"]:
        # a checkpoint folder of random weights (its SYNTHETIC.json): the record says so, as with --synthetic
        record["manifest"].update(synthetic_weights=components.synthetic_info.get("size") or True,
                                  warning=SYNTHETIC_WARNING)
    for arm in arms:
        bar.set_postfix_str(f"loading {arm.name}")
        _guard(arm, lambda: build_arm(arm, options, components, device, dtype))
        if arm.ok and park and device.type == "cuda":
            arm.pipe.transformer.to("cpu")
    steps = scenario.steps
    for arm in arms:  # memory run (the first call: compile and capture happen here), one arm on the device
        bar.set_postfix_str(f"warm-up {arm.name}")
        if not arm.ok:
            bar.update(max(options.warmup, 1))
            continue
        with only_on_device(arms, arm, device, park):
            _guard(arm, lambda: setattr(arm, "run_memory", memory_call(arm, scenario, images, steps, device)))
            bar.update(1)
        if park and arm.ok and device.type == "cuda":
            arm.pipe.drop_cuda_graphs()  # their memory pools would count in the next arm's run memory
            arm.pipe.transformer.to("cpu")
    restore_all(arms, device, park)
    moved = park and device.type == "cuda"  # graphs captured before the weights moved back are stale
    for arm in arms:  # the other warm-up calls, with every transformer where the timed calls find it
        extra = options.warmup - 1
        if arm.ok and moved and arm.mode.cuda_graphs:
            extra = max(extra, 1)  # re-capture now, not inside the first timed call
        for _ in range(extra):
            if arm.ok:
                _guard(arm, lambda: arm.later_warmup_ms.append(untimed_call_ms(arm, scenario, images, steps, device)))
        bar.update(max(options.warmup - 1, 0))
    for r in range(options.repeats):  # ABAB...
        for arm in arms:
            bar.set_postfix_str(f"repeat {r + 1}/{options.repeats} {arm.name}")
            if arm.ok:
                def one(arm=arm):
                    ms, stages, call_ms, result = timed_call(arm, scenario, images, steps, device)
                    if arm.edit is None:
                        arm.edit = result.images[0]
                    arm.e2e_ms.append(ms)
                    arm.stage_runs.append(stages)
                    arm.call_runs.append(call_ms)
                    arm.step_cache_runs.append(step_cache.StepCacheRun.from_stats(
                        arm.pipe.step_cache_stats, scenario.branches_per_step()))
                _guard(arm, one)
            bar.update(1)
    edit_fidelity(arms, out)
    if options.profile_steps:
        for arm in arms:
            bar.set_postfix_str(f"profile {arm.name}")
            if arm.ok:
                _guard(arm, lambda: setattr(arm, "profile", profile_call(arm, scenario, images, options, device, out)))
            bar.update(1)
    for arm in arms:
        if arm.ok and has_fp8_attention(arm.pipe.transformer):
            bar.set_postfix_str(f"attention error {arm.name}")
            _guard(arm, lambda: setattr(arm, "attention_error",
                                        attention_error_call(arm, scenario, images, options, device)))
    record["complete"] = all(a.ok for a in arms)


def attention_error_call(arm: Arm, scenario: ScenarioConfig, images: list, options: ProfileOptions,
                         device: torch.device) -> dict | None:
    """One call with `profile_steps` denoising steps (at least 1) under the FP8 attention error probe: every FP8
    attention call against BF16 attention on the same q, k, v (hooks need the model eager: compiled blocks run
    eagerly, CUDA graphs are paused)."""
    steps = max(options.profile_steps, 1)
    with torch.compiler.set_stance("force_eager"), arm.pipe.without_cuda_graphs(), \
            attention_error_probe(arm.pipe.transformer) as probe:
        call_pipeline(arm, scenario, images, steps, None)
        timing.synchronize(device)
    summary = probe.summary()
    return None if summary is None else {**summary, "steps": steps}


def edit_fidelity(arms: list[Arm], out: Path) -> None:
    """Each arm's first timed edit saved as edits/<arm>.png, and PSNR / SSIM of every other arm's edit against the
    first arm's (same seed, prompt and references: what the arm's precision or acceleration did to the output)."""
    done = [a for a in arms if a.edit is not None]
    if not done:
        return
    (out / EDITS_FOLDER).mkdir(parents=True, exist_ok=True)
    saved = {arm.name: f"{EDITS_FOLDER}/{_file_stem(arm.name)}.png" for arm in done}
    for arm in done:
        arm.edit.save(out / saved[arm.name])
    base = arms[0]
    if base.edit is None:
        return
    reference = np.asarray(base.edit.convert("RGB"))
    for arm in done:
        if arm is base:
            continue
        try:
            found = image_fidelity(reference, np.asarray(arm.edit.convert("RGB")))
        except ValueError as err:  # e.g. another output size: nothing to compare, the arm's timings still stand
            found = {"psnr_db": None, "ssim": None, "identical": None, "error": str(err)}
        arm.fidelity = {"vs": base.name, **found, "image": saved[arm.name]}


def _file_stem(name: str) -> str:
    """An arm name as a file name (recipe names may hold ':' and '=')."""
    return "".join(c if c.isalnum() or c in "+-._" else "_" for c in name)


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
            "repeats": options.repeats, "profile_steps": options.profile_steps, "mode": options.mode,
            "offload": options.offload, "trace": options.trace, "fp8_kernel": options.fp8_kernel,
            "seed": options.seed, "out": str(options.out)}


# ------------------------------------------------------------------------------------------------- results
def arm_record(arm: Arm) -> ArmRecord:
    """The arm's section of profile.json: its measurements summarised (latency statistics over the repeats)."""
    latency = None
    if arm.e2e_ms:
        latency = {"end_to_end": timing.summarize_ms(arm.e2e_ms, label=f"{arm.name} end to end").to_dict(),
                   "stages": timing.summarize_stage_runs(arm.stage_runs)}
    return ArmRecord(name=arm.name, ok=arm.ok, error=arm.error, quantization=arm.quantization,
                     memory={"load": arm.load, "run": arm.run_memory}, latency=latency, kernels=arm.profile,
                     step_cache=step_cache.summarize(arm.step_cache_runs, arm.stage_runs, arm.call_runs),
                     mode=arm.mode.to_dict() if arm.mode else None, startup=startup_record(arm),
                     fidelity=arm.fidelity, attention_error=arm.attention_error,
                     fallback=arm.profile["fallback"] if arm.profile else None,
                     traceback=arm.traceback if arm.error else None)


def startup_record(arm: Arm) -> dict | None:
    """The one-off cost of the arm's mode (STARTUP_METHOD), in ms; None before its first call ran."""
    if arm.first_call_ms is None:
        return None
    steady = statistics.median(arm.e2e_ms) if arm.e2e_ms else None
    startup = max(arm.first_call_ms - steady, 0.0) if steady is not None else None
    edits = math.ceil(startup / (AMORTISE_SHARE * steady)) if startup and steady else (0 if steady else None)
    return {"first_call_ms": arm.first_call_ms, "steady_call_ms": steady, "startup_ms": startup,
            "edits_to_amortise": edits, "amortise_share": AMORTISE_SHARE, "later_warmup_ms": list(arm.later_warmup_ms)}


def _finish(record: dict, arms: list[Arm], caught: list[warnings.WarningMessage], out: Path) -> ProfileRecord:
    """Build the record, write profile.json and profile.md, and print a banner for every fallback found."""
    arm_records = {a.name: arm_record(a) for a in arms}
    result = ProfileRecord(
        **record, arms=arm_records, ratios=compute_ratios(arm_records),
        # the measurement's own warnings (library deprecation notices are only shown on the console)
        warnings=[f"{w.category.__name__}: {w.message}" for w in caught
                  if issubclass(w.category, (timing.HighSpreadWarning, fallbacks.FallbackKernelWarning))],
        fallback_detected={n: a.fallback["fallback_detected"] for n, a in arm_records.items()
                           if a.fallback and a.fallback["checked"]})
    write_json_atomic(out / "profile.json", result.to_dict())
    write_text_atomic(out / "profile.md", profile_markdown(result))
    for name, arm in result.arms.items():
        if arm.fallback:
            fallbacks.warn_fallbacks(name, fallbacks.FallbackReport.from_dict(arm.fallback))
    return result
