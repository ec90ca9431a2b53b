"""The profile record: profile.json as frozen values, read back with its schema checked, and the arm ratios.

`ProfileRecord.to_dict()` is exactly what profile.json holds; `ProfileRecord.from_json(path)` refuses a file of
another schema version and names the first missing field. Nested sections (latency statistics, memory phases,
the kernel section) stay plain JSON values; `ArmRecord`'s accessors are the only place that knows their paths.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness.core.vocab import END_TO_END, STEP_STAGE

SCHEMA_VERSION = 1
KIND = "omnigen2-profile"


class RecordError(ValueError):
    """A profile.json that cannot be read as a profile record; the message names the field and the fix."""


def _present(cls: type, data: Any, where: str) -> dict:
    """The fields of dataclass `cls` found in `data`; a missing required field raises RecordError naming it."""
    if not isinstance(data, dict):
        raise RecordError(f"{where} should be a JSON object, got {type(data).__name__}")
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            out[f.name] = data[f.name]
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RecordError(f"{where}: field '{f.name}' is missing; the file is not a complete "
                              "`python -m harness.profile` record (rerun the profile)")
    return out


@dataclass(frozen=True)
class ArmRecord:
    """One arm of profile.json: its quantization, memory phases (GiB), latency (ms) and kernel profile."""

    name: str
    ok: bool
    error: str | None
    quantization: dict | None   # FP8 arms: layer counts, Fp8Config, resolved kernels (None for bf16)
    memory: dict                # {"load": phase | None, "run": phase | None}; values in GiB
    latency: dict | None        # {"end_to_end": TimingStats dict, "stages": {stage: {per_run, per_call, ...}}}
    kernels: dict | None        # the profiled call's kernel section (runner.profile_call); None when not profiled
    fallback: dict | None       # fallbacks.FallbackReport as a dict; None when not profiled
    traceback: str | None = None
    # step_cache.summarize: computed fraction of transformer calls, step and call ms by computed / cached (None: older
    # file)
    step_cache: dict | None = None
    mode: dict | None = None      # omnigen2_fp8.modes.ModeChoice.to_dict(): how the transformer ran (None: older file)
    startup: dict | None = None   # runner.startup_record: first call, startup (compile / capture) ms, amortisation
    # runner.edit_fidelity: PSNR / SSIM of this arm's edit against the first arm's (same seed and inputs); None: the
    # first arm itself, or an older file
    fidelity: dict | None = None
    # runner.attention_error_call (FP8 attention arms): omnigen2_fp8.fp8.attention_error's per-layer summary
    attention_error: dict | None = None

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.traceback is None:  # written only for a failed arm
            del out["traceback"]
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "arm") -> "ArmRecord":
        return cls(**_present(cls, data, where))

    def stage_stats(self, stage: str) -> dict | None:
        """TimingStats dict (ms) of `stage` per call: end to end, a whole stage, or one denoising step."""
        if not self.latency:
            return None
        if stage == END_TO_END:
            return self.latency.get("end_to_end")
        entry = (self.latency.get("stages") or {}).get(stage)
        return entry["per_call" if stage == STEP_STAGE else "per_run"] if entry else None

    def stage_ms(self, stage: str) -> float | None:
        """Median ms of `stage` per call (see stage_stats); None when not measured."""
        stats = self.stage_stats(stage)
        return _number(stats.get("median_ms")) if stats else None

    def memory_gib(self, phase: str, key: str) -> float | None:
        """A memory value of the "load" or "run" phase (GiB), e.g. memory_gib("run", "peak_allocated_gib")."""
        return _number((self.memory.get(phase) or {}).get(key))

    def computed_fraction(self) -> float | None:
        """Share of transformer calls that ran the main layers (1.0 without a step cache; None if not recorded)."""
        return _number((self.step_cache or {}).get("computed_fraction"))

    def call_class_stats(self, call_class: str) -> dict | None:
        """TimingStats dict (ms) of one transformer call of `call_class` ("computed", "cached"); None if none ran."""
        return ((self.step_cache or {}).get("call_ms") or {}).get(call_class)

    def startup_ms(self) -> float | None:
        """The one-off startup of the arm's mode (first call minus a timed call, ms); None if not recorded."""
        return _number((self.startup or {}).get("startup_ms"))

    def step_class_ms(self, step_class: str) -> float | None:
        """Median ms of one denoise step of `step_class` ("computed", "cached", "mixed"); None if none ran."""
        return _number(((self.step_cache or {}).get("step_ms") or {}).get(step_class, {}).get("median_ms"))

    def category(self, name: str) -> dict:
        """Kernel category roll-up {total_us, us_per_step, share, calls, kernels}; {} when not profiled."""
        return ((self.kernels or {}).get("categories") or {}).get(name) or {}

    def kernel_us_per_step(self) -> float | None:
        """Summed kernel (CUDA) or op (CPU) time of one profiled denoising step, in microseconds."""
        if not self.kernels or self.kernels.get("total_us_in_steps") is None:
            return None
        return self.kernels["total_us_in_steps"] / max(self.kernels.get("profiled_steps") or 1, 1)

    def stage_kernel(self, stage: str) -> dict | None:
        """Profiled-call summary of a stage {entries, wall_us, kernel_us, kernel_over_wall}; None if absent."""
        return ((self.kernels or {}).get("stages") or {}).get(stage)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# What each ratio compares; time ratios of the first three also get a speed-up (first / arm).
RATIO_SOURCES: dict[str, Callable[[ArmRecord], float | None]] = {
    "end_to_end": lambda a: a.stage_ms(END_TO_END),
    "denoise": lambda a: a.stage_ms("denoise"),
    "denoise_step": lambda a: a.stage_ms(STEP_STAGE),
    "text_encode": lambda a: a.stage_ms("text_encode"),
    "vae_decode": lambda a: a.stage_ms("vae_decode"),
    "peak_allocated_run": lambda a: a.memory_gib("run", "peak_allocated_gib"),
    "peak_reserved_run": lambda a: a.memory_gib("run", "peak_reserved_gib"),
    "peak_allocated_load": lambda a: a.memory_gib("load", "peak_allocated_gib"),
    "transformer_gib": lambda a: a.memory_gib("load", "transformer_gib"),
    "kernel_us_per_step": lambda a: _number((a.kernels or {}).get("total_us_in_steps")),
}
SPEEDUP_KEYS = ("end_to_end", "denoise", "denoise_step")


def compute_ratios(arms: dict[str, ArmRecord]) -> dict[str, dict]:
    """Every arm against the first one: `<key>_ratio` = arm / first (time: < 1 is faster; memory: < 1 is smaller),
    `<key>_speedup` = first / arm for end to end, denoise and one denoising step. None where either is missing."""
    names = list(arms)
    base = arms[names[0]]
    out = {}
    for name in names[1:]:
        ratios: dict[str, Any] = {"vs": names[0]}
        for key, source in RATIO_SOURCES.items():
            x, b = source(arms[name]), source(base)
            ratio = x / b if x is not None and b not in (None, 0) else None
            ratios[f"{key}_ratio"] = ratio
            if key in SPEEDUP_KEYS:
                ratios[f"{key}_speedup"] = (1 / ratio) if ratio else None
        out[name] = ratios
    return out


@dataclass(frozen=True, kw_only=True)
class ProfileRecord:
    """profile.json: provenance, scenario, settings, method, and one ArmRecord per arm (in --precision order)."""

    schema_version: int = SCHEMA_VERSION
    kind: str = KIND
    complete: bool
    error: str | None = None          # what stopped the run outside any arm (e.g. loading the shared models)
    manifest: dict                    # harness.core.records.run_manifest (+ "invocation")
    scenario: dict                    # ScenarioConfig fields + source, overrides, branches_per_step, transformer_passes
    settings: dict                    # the effective options (precisions, steps, warmup, repeats, ...)
    method: dict                      # how load / run memory, order and timing were measured (runner constants)
    shared_load: dict | None = None   # load phase of the shared MLLM + VAE (GiB, seconds)
    arms: dict[str, ArmRecord]
    ratios: dict[str, dict]           # compute_ratios(arms), as written
    warnings: list[str] = field(default_factory=list)
    fallback_detected: dict[str, bool] = field(default_factory=dict)

    @property
    def arm_names(self) -> list[str]:
        return list(self.arms)

    @property
    def task(self) -> str:
        return str(self.scenario.get("task", "?"))

    @property
    def synthetic(self) -> str | bool:
        """The synthetic weights size ("tiny" / "full"), or False for real weights."""
        return self.manifest.get("synthetic_weights") or False

    def ratio(self, arm: str, key: str) -> float | None:
        """A recorded ratio of `arm` against the first arm, e.g. ratio("fp8", "end_to_end_speedup")."""
        return (self.ratios.get(arm) or {}).get(key)

    def arm_mode(self, arm: str) -> str:
        """The mode `arm`'s transformer ran in; for a file written before per-arm modes, the run's flags."""
        recorded = (self.arms[arm].mode or {}).get("mode")
        if recorded:
            return recorded
        on = [m for m, flag in (("compile", "compile"), ("graphs", "cuda_graphs")) if self.settings.get(flag)]
        return "+".join(on) or "eager"

    def profiled_arms(self) -> list[str]:
        return [n for n, a in self.arms.items() if a.kernels]

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["arms"] = {name: arm.to_dict() for name, arm in self.arms.items()}
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "profile.json") -> "ProfileRecord":
        if isinstance(data, dict) and data.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise RecordError(f"{where} has schema_version {data['schema_version']}; this harness reads version "
                              f"{SCHEMA_VERSION} (rerun the profile, or report with the revision that wrote it)")
        values = _present(cls, data, where)
        if "schema_version" not in values:
            raise RecordError(f"{where}: field 'schema_version' is missing; not a `python -m harness.profile` record")
        values["arms"] = {name: ArmRecord.from_dict(arm, f"{where}: arms.{name}")
                          for name, arm in _present_arms(values["arms"], where).items()}
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | Path) -> "ProfileRecord":
        """Read profile.json; RecordError names a bad file, a wrong schema version or the missing field."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise RecordError(f"{path} is not valid JSON ({err}); rerun the command that wrote it") from err
        return cls.from_dict(data, str(path))


def _present_arms(arms: Any, where: str) -> dict:
    if not isinstance(arms, dict) or not arms:
        raise RecordError(f"{where}: 'arms' should map each arm name to its record (found {arms!r:.60})")
    return arms
