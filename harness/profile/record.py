"""The profile record (profile.json) and the ratios of every arm against the first."""
from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 1


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


