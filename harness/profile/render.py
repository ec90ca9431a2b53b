"""profile.md from a profile record."""
from __future__ import annotations

from pathlib import Path

from harness.core.records import REPO_ROOT, SYNTHETIC_WARNING
from harness.core.vocab import KERNEL_CATEGORIES

STAGE_LABELS = {"text_encode": "MLLM encode", "vae_encode": "VAE encode", "prepare_latents": "prepare latents",
                "denoise": "denoise (total)", "denoise_step": "denoise step", "vae_decode": "VAE decode",
                "postprocess": "postprocess"}


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
    for c in KERNEL_CATEGORIES:
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
