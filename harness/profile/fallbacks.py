"""FP8 fallback detector: did an FP8 arm run slow fallback kernels or high-precision GEMMs where FP8 was expected?

Each finding (`detect_fallbacks`) names kernels or layers; its kind is one of:
- triton-scaled-mm: a Triton scaled-mm kernel (the vLLM-style fallback for shapes cuBLASLt refuses).
- non-tensor-core-scaled-gemm: an FP8 GEMM kernel whose name has no tensor-core marker.
- bf16-gemm-in-fp8-layer: a high-precision GEMM launched inside a layer that should run in FP8.
- fp8-layer-without-fp8-gemm: an FP8 layer call that reached no cuBLASLt/CUTLASS scaled GEMM (aten::_scaled_mm).
- excess-bf16-gemms: more high-precision GEMM calls per denoising step than the layers kept in BF16 explain.
"""
from __future__ import annotations

import re
import sys
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Literal

from harness.core.markdown import truncate
from harness.profile.kernels import KernelCall, ProfileCapture, step_calls
from harness.profile.taxonomy import (FP8_GEMM_OPS, GEMM_MARK, HP_GEMM_OPS, TENSOR_CORE_MARK, TRITON_SCALED_MM,
                                      categorize)


class FallbackKernelWarning(UserWarning):
    """An FP8 run executed slow fallback kernels or high-precision GEMMs where FP8 GEMMs were expected."""


@dataclass
class FallbackFinding:
    kind: str          # one of the kinds listed in the module docstring
    message: str       # human-readable, names the kernels / layers
    names: list[str] = field(default_factory=list)   # kernel names or layer fqns (first 20)
    calls: int = 0
    total_us: float = 0.0


@dataclass
class FallbackReport:
    checked: bool                       # False for arms that are not expected to run FP8 GEMMs
    method: Literal["per-layer ranges", "kernel names and GEMM call counts"]
    fallback_detected: bool
    findings: list[FallbackFinding]
    fp8_gemm_calls_per_step: float
    bf16_gemm_calls_per_step: float
    expected_fp8_linear_calls_per_step: float | None
    expected_bf16_linear_calls_per_step: float | None
    note: str | None = None             # context for the reader, e.g. FP8 emulated on a CPU
    emulated: bool = False              # FP8 emulated by design on this device: the check does not apply here

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FallbackReport":
        """The report back from its to_dict() form (as profile.json holds it)."""
        return cls(**{**data, "findings": [FallbackFinding(**f) for f in data["findings"]]})


def detect_fallbacks(capture: ProfileCapture, precisions: dict[str, str], *,
                     layer_calls: dict[str, int] | None = None, expect_fp8: bool = True) -> FallbackReport:
    """Check the denoising steps of a profiled FP8 run for fallback kernels (see module docstring for the kinds).

    precisions: fqn -> "fp8" | "bf16", what each linear layer SHOULD run (the layer policy, `arms.layer_policy`).
    layer_calls: fqn -> GEMM-carrying calls during the profiled run (`omnigen2_fp8.profiling.layer_ranges`);
    None when layers had no ranges (torch.compile), in which case only kernel names and GEMM counts are checked.
    """
    steps = max(capture.steps, 1)
    calls = step_calls(capture)
    step_ops = [(op, layer) for op, layer, step in capture.gemm_ops if step is not None or not capture.steps]
    fp8_ops = [x for x in step_ops if FP8_GEMM_OPS.search(x[0])]
    hp_ops = [x for x in step_ops if not FP8_GEMM_OPS.search(x[0])]
    exp_fp8 = exp_bf16 = None
    if layer_calls is not None:
        exp_fp8 = sum(n for fqn, n in layer_calls.items() if precisions.get(fqn) == "fp8") / steps
        exp_bf16 = sum(n for fqn, n in layer_calls.items() if precisions.get(fqn) != "fp8") / steps
    report = FallbackReport(checked=expect_fp8, method="per-layer ranges" if layer_calls is not None else
                            "kernel names and GEMM call counts", fallback_detected=False, findings=[],
                            fp8_gemm_calls_per_step=len(fp8_ops) / steps, bf16_gemm_calls_per_step=len(hp_ops) / steps,
                            expected_fp8_linear_calls_per_step=exp_fp8, expected_bf16_linear_calls_per_step=exp_bf16)
    if not expect_fp8:
        return report
    findings = report.findings

    triton = [c for c in calls if TRITON_SCALED_MM.search(c.name)]
    if triton:
        findings.append(_finding("triton-scaled-mm", "Triton scaled-mm kernels ran (slow fallback GEMM)", triton))
    if capture.device_kind == "cuda":
        fp8_kernels = [c for c in calls if categorize(c.name, c.op) == "gemm-fp8" and GEMM_MARK.search(c.name)]
        # helper kernels of a library GEMM (split-K reductions) carry no tensor-core marker and are not GEMMs
        slow = [c for c in fp8_kernels if not TENSOR_CORE_MARK.search(c.name) and c not in triton
                and not re.search(r"reduce|splitk", c.name, re.I)]
        if slow:
            findings.append(_finding("non-tensor-core-scaled-gemm",
                                     "FP8 GEMM kernels without a tensor-core marker in their name", slow))
    fp8_layers = {f for f, p in precisions.items() if p == "fp8"}
    if layer_calls is not None:
        bad = defaultdict(int)
        for op, layer in hp_ops:
            if layer in fp8_layers:
                bad[layer] += 1
        if capture.device_kind == "cuda":
            for c in calls:
                if (c.layer in fp8_layers and categorize(c.name, c.op) == "gemm-bf16"
                        and not HP_GEMM_OPS.search(c.op or "")):
                    bad[c.layer] += 1
        if bad:
            gemm_us = sum(c.duration_us for c in calls
                          if c.layer in bad and categorize(c.name, c.op) == "gemm-bf16")
            findings.append(FallbackFinding(
                "bf16-gemm-in-fp8-layer",
                f"high-precision GEMMs ran inside {len(bad)} layers that should be FP8: {_names(bad)}",
                names=sorted(bad)[:20], calls=sum(bad.values()), total_us=gemm_us))
        with_fp8 = {layer for op, layer in fp8_ops}
        missing = {f: n for f, n in layer_calls.items() if f in fp8_layers and n and f not in with_fp8}
        if missing:
            findings.append(FallbackFinding(
                "fp8-layer-without-fp8-gemm",
                f"{len(missing)} layers that should be FP8 never reached aten::_scaled_mm (cuBLASLt/CUTLASS): "
                f"{_names(missing)}", names=sorted(missing)[:20], calls=sum(missing.values())))
    if exp_bf16 is not None and len(hp_ops) / steps > exp_bf16 + 1e-9:
        extra = len(hp_ops) / steps - exp_bf16
        findings.append(FallbackFinding(
            "excess-bf16-gemms",
            f"{extra:g} more high-precision GEMM calls per step than the {exp_bf16:g} linear calls kept in BF16",
            names=sorted({op for op, _ in hp_ops}), calls=int(round(extra * steps))))
    report.fallback_detected = bool(findings)
    return report


def _finding(kind: str, what: str, calls: list[KernelCall]) -> FallbackFinding:
    by_name: dict[str, float] = defaultdict(float)
    for c in calls:
        by_name[c.name] += c.duration_us
    names = sorted(by_name, key=by_name.get, reverse=True)
    return FallbackFinding(kind, f"{what}: {', '.join(truncate(n, 90) for n in names[:5])}", names=names[:20],
                           calls=len(calls), total_us=sum(by_name.values()))


def _names(counts: dict[str, int], limit: int = 6) -> str:
    keys = sorted(counts)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def warn_fallbacks(arm: str, report: FallbackReport, stream=None) -> None:
    """Print a loud banner naming every finding (stderr) and raise a FallbackKernelWarning; silent when clean, one
    quiet line when FP8 is emulated on this device by design (a CPU: there is no FP8 kernel to fall back from)."""
    stream = stream or sys.stderr
    if report.emulated:
        print(f"{arm}: FP8 fallback check not applicable on this device (FP8 emulated)", file=stream, flush=True)
        return
    if not report.fallback_detected:
        return
    bar = "!" * 100
    lines = [bar, f"!!! FP8 FALLBACK DETECTED in arm '{arm}' ({report.method}):"]
    lines += [f"!!!   [{f.kind}] {f.message} ({f.calls} calls"
              + (f", {f.total_us / 1e3:.2f} ms)" if f.total_us else ")") for f in report.findings]
    if report.note:
        lines.append(f"!!! note: {report.note}")
    lines.append(bar)
    print("\n".join(lines), file=stream, flush=True)
    warnings.warn(f"FP8 fallback kernels in arm {arm!r}: " + "; ".join(f.kind for f in report.findings),
                  FallbackKernelWarning, stacklevel=2)

