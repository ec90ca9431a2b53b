"""A profile record as markdown: the sections profile.md and the report both show, in the same words.

`sections(record)` returns the tables (latency, fidelity of each arm's edit, FP8 attention error per layer, wall vs
kernel time, memory, kernel categories, the FP8 fallback check, top kernels per arm, warnings), each with its chart;
`profile_markdown(record)` is profile.md: a header with provenance, then those sections (no figures). The report
(harness/report.py) places the same sections under its own headings and draws their charts. Numbers are read from
the record only; units are converted (us -> ms).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from harness.core import plots
from harness.core.markdown import Chart, Section, cell, code, fmt, fmt_stat, render_sections, table, truncate
from harness.core.records import REPO_ROOT, SYNTHETIC_WARNING, step_cache_synthetic_notes
from harness.core.vocab import END_TO_END, KERNEL_CATEGORIES, REPORTED_STAGES, STEP_STAGE, stage_label
from harness.profile.record import ArmRecord, ProfileRecord
from harness.profile.step_cache import CALL_CLASSES, STEP_CLASSES

TOP_KERNELS = 15          # rows of each arm's top-kernel table (profile.json keeps 25, the CSV all)
KERNEL_NAME_WIDTH = 64    # characters of a kernel name shown in a table
FINDING_WIDTH = 300       # characters of a fallback finding's message
# Stage -> the key of the record's ratios (time of the arm / time of the first arm).
STAGE_RATIO_KEYS = {END_TO_END: "end_to_end_ratio", "denoise": "denoise_ratio", STEP_STAGE: "denoise_step_ratio",
                    "text_encode": "text_encode_ratio", "vae_decode": "vae_decode_ratio"}
MEMORY_FIELDS = (("load", "transformer_gib"), ("load", "peak_allocated_gib"), ("load", "peak_reserved_gib"),
                 ("run", "peak_allocated_gib"), ("run", "peak_reserved_gib"))


def sections(record: ProfileRecord, *, link: Callable[[str], str] = str) -> list[Section]:
    """Every section of a profile, in reading order. link(file name in the run folder) -> its link target."""
    out = [latency_section(record), fidelity_section(record, link), attention_error_section(record),
           step_cache_section(record), wall_vs_kernel_section(record), memory_section(record)]
    out = [s for s in out if s is not None]
    out += kernel_sections(record, link)
    if record.warnings:  # folded: on a busy or CPU machine there are many spread warnings
        out.append(Section("Warnings", [f"<details><summary>{len(record.warnings)} warnings recorded by the run"
                                        "</summary>", "", *(f"- {cell(w)}" for w in record.warnings), "",
                                        "</details>", ""]))
    return out


def profile_markdown(record: ProfileRecord) -> str:
    """profile.md: provenance header, then every section at level 2, from the record alone."""
    m, st = record.manifest, record.settings
    dev = m.get("device", {})
    lines = [f"# Profile: {record.task} ({', '.join(st['precisions'])})", ""]
    if record.synthetic:
        lines += [f"> **{SYNTHETIC_WARNING}** (synthetic: {record.synthetic})", ""]
    lines += [f"- device: {dev.get('device_name')} ({dev.get('device')}), driver {dev.get('driver')}, "
              f"torch {dev.get('torch')}, CUDA {dev.get('cuda_runtime')}",
              f"- git {m.get('git_revision')}, {m.get('date_utc')}; "
              f"command: `{m.get('invocation') or m.get('command')}`",
              *setup_lines(record), f"- complete: {record.complete}", ""]
    lines += failure_lines(record)
    return "\n".join(lines + render_sections(sections(record), level=2)).rstrip("\n") + "\n"


def setup_lines(record: ProfileRecord) -> list[str]:
    """What ran: the scenario (size, references, steps, guidance, source) and the measurement settings."""
    sc, st = record.scenario, record.settings
    return [f"- scenario `{record.task}`: {sc['height']}x{sc['width']} output, references {sc['references']}, "
            f"{sc['steps']} steps, guidance text {sc['text_guidance_scale']} / image {sc['image_guidance_scale']}, "
            f"{sc['transformer_passes']} transformer passes per call; source `{_rel(sc['source'])}`"
            + (f"; overrides {sc['overrides']}" if sc.get("overrides") else ""),
            f"- warm-up {st['warmup']}, repeats {st['repeats']} ({record.method.get('order')}), profiled steps "
            f"{st['profile_steps']}, offload {st['offload']}, FP8 kernel `{st['fp8_kernel']}`",
            f"- mode{' (--mode ' + st['mode'] + ')' if st.get('mode') else ''}: {mode_summary(record)}"]


def mode_summary(record: ProfileRecord) -> str:
    """How each arm's transformer ran, with the reason where an arm fell back from the default."""
    parts = []
    for name in record.arm_names:
        reason = (record.arms[name].mode or {}).get("fallback_reason")
        parts.append(f"{name} `{record.arm_mode(name)}`" + (f" (no CUDA graphs: {reason})" if reason else ""))
    return ", ".join(parts)


def failure_lines(record: ProfileRecord) -> list[str]:
    """What failed: the run (outside any arm) and each failed arm, as caution blocks."""
    lines = []
    if record.error:
        lines += ["> [!CAUTION]", f"> The run stopped early: `{cell(record.error)}`", ""]
    for name, arm in record.arms.items():
        if arm.error:
            lines += ["> [!CAUTION]", f"> Arm **{name}** failed: `{cell(arm.error)}`", ""]
    return lines + attention_fallback_lines(record)


def attention_fallback_lines(record: ProfileRecord) -> list[str]:
    """Arms that asked for FP8 attention and ran BF16 attention (a GPU or cuDNN without FP8 attention): their
    numbers are not FP8 attention's, whatever the arm's name says."""
    lines = []
    for name, arm in record.arms.items():
        q = arm.quantization or {}
        if (q.get("config") or {}).get("attention") == "fp8" and q.get("fp8_attention_blocks") == 0:
            why = "; ".join(n for n in q.get("notes", []) if "attention" in n) or "no block took it"
            lines += ["> [!WARNING]", f"> Arm **{name}** asked for FP8 attention and ran BF16 attention: "
                                      f"{cell(why)}", ""]
    return lines


def summary_line(record: ProfileRecord) -> str:
    """One console line: end-to-end median per arm and the speed-ups against the first arm (plus, for a
    synthetic run with step caches, what their numbers mean on random weights)."""
    parts = [f"{name}: {arm.stage_ms(END_TO_END):.1f} ms" if arm.latency else f"{name}: failed"
             for name, arm in record.arms.items()]
    for name, r in record.ratios.items():
        if r.get("end_to_end_speedup"):
            parts.append(f"{name} speed-up vs {r['vs']}: {r['end_to_end_speedup']:.2f}x")
    return "; ".join(parts + step_cache_notes(record))


def step_cache_notes(record: ProfileRecord) -> list[str]:
    """On synthetic weights: TeaCache's skip rate is not representative, TaylorSeer's schedule is real."""
    if not record.synthetic:
        return []
    return step_cache_synthetic_notes({(a.step_cache or {}).get("method") for a in record.arms.values()})


# ------------------------------------------------------------------------------------------------------ latency
def latency_section(record: ProfileRecord) -> Section:
    names, arms = record.arm_names, record.arms
    base = names[0]
    lines = ["Milliseconds per call: median [IQR] over the timed repeats (`!` = IQR above 10% of the median); a stage "
             "is its wall time per call (CUDA events), one denoise step includes all its CFG passes. Ratio columns: "
             f"time of the arm / time of {base} (below 1 = faster).", ""]
    rows, groups, series = [], [], {n: [] for n in names}
    for stage in (END_TO_END, *REPORTED_STAGES):
        stats = {n: arms[n].stage_stats(stage) for n in names}
        if not any(stats.values()):
            continue
        ratio_cells = [fmt(record.ratio(n, STAGE_RATIO_KEYS[stage]), 3) if stage in STAGE_RATIO_KEYS else "-"
                       for n in names[1:]]
        rows.append([stage_label(stage), *(fmt_stat(stats[n], 2) for n in names), *ratio_cells])
        if stage != END_TO_END:  # the chart shows the stages; end to end is their sum and would dwarf them
            groups.append(stage_label(stage))
            for n in names:
                s = stats[n]
                series[n].append(plots.Interval(s["median_ms"], s["q1_ms"], s["q3_ms"]) if s else None)
    rows.insert(0, ["mode", *(f"`{record.arm_mode(n)}`" for n in names), *(["-"] * (len(names) - 1))])
    if any(arms[n].startup for n in names):
        rows.append(["startup, once (not in the rows above)",
                     *(fmt(arms[n].startup_ms(), 1) for n in names), *(["-"] * (len(names) - 1))])
    lines += table(["stage", *(f"{n} ms" for n in names), *(f"{n}/{base}" for n in names[1:])], rows)
    speedups = [f"{n} {fmt(record.ratio(n, 'end_to_end_speedup'), 2, 'x')}" for n in names[1:]]
    if speedups:
        lines += [f"End-to-end speed-up vs {base}: " + ", ".join(speedups) + ".", ""]
    lines += startup_lines(record)
    chart = None
    if groups:
        chart = Chart("latency", "latency per stage", lambda path: plots.grouped_bars(
            path, groups, series, title=f"Latency per stage: {record.task}",
            value_label="ms per call (median; whiskers: interquartile range)", horizontal=True, value_labels=True,
            fmt=".1f"))
    return Section("Latency per stage", lines, chart)


def fidelity_section(record: ProfileRecord, link: Callable[[str], str] = str) -> Section:
    """PSNR / SSIM of each arm's edit against the first arm's (same seed and inputs), from the timed calls."""
    names = record.arm_names
    rows = [[n, f["vs"], cell(f["error"]) if f.get("error") else "identical" if f["identical"]
             else fmt(f["psnr_db"], 2), fmt(f["ssim"], 4), f"[`{f['image']}`]({link(f['image'])})"]
            for n in names[1:] if (f := record.arms[n].fidelity)]
    if not rows:
        return Section("Fidelity to the first arm's edit", [
            "Not recorded (one arm, no timed call finished, or a profile.json written before this check).", ""])
    lines = [f"Each arm's first timed edit against {names[0]}'s, same seed, prompt and references: what the arm's "
             "precision or acceleration did to the output, with no judge involved (PSNR in dB over 8-bit RGB; "
             "higher is closer).", ""]
    lines += table(["arm", "vs", "PSNR dB", "SSIM", "edit"], rows)
    if record.synthetic:
        lines += ["> **Synthetic weights:** these numbers say how far the outputs of random models moved, not how a "
                  "real edit would change.", ""]
    return Section("Fidelity to the first arm's edit", lines)


def attention_error_section(record: ProfileRecord) -> Section | None:
    """Per-layer error of FP8 attention against BF16 attention on the same inputs (FP8 attention arms only)."""
    measured = {n: a.attention_error for n, a in record.arms.items() if a.attention_error}
    if not measured:
        return None
    lines = ["Every FP8 attention call of one eager call against BF16 attention on the very same q, k, v (relative "
             "L2 of the output; the attention kernel's own error, apart from the FP8 linears'). Per layer: the mean "
             "over that layer's calls.", ""]
    rows = [[n, e["steps"], e["layers"], e["calls"], fmt(e["mean"], 4), fmt(e["min"], 4), fmt(e["max"], 4),
             ", ".join(f"{layer} {fmt(v, 4)}" for layer, v in e["worst_layers"].items())]
            for n, e in measured.items()]
    lines += table(["arm", "steps", "layers", "calls", "mean", "min", "max", "worst layers"], rows)
    if record.synthetic:
        lines += ["> **Synthetic weights:** the error of the kernel on random models' activations; a trained model's "
                  "may differ.", ""]
    return Section("FP8 attention error per layer", lines)


def startup_lines(record: ProfileRecord) -> list[str]:
    """What the startup row means, and after how many edits each arm's startup is amortised."""
    amortised = []
    for n in record.arm_names:
        st = record.arms[n].startup or {}
        if st.get("edits_to_amortise") is not None:
            amortised.append(f"{n} {st['edits_to_amortise']} (first call {fmt(_s(st.get('first_call_ms')), 2)} s)")
    if not amortised:
        return []
    share = (record.arms[record.arm_names[0]].startup or {}).get("amortise_share", 0.05)
    return [f"Startup: the first call of an arm minus its median timed call (compilation, CUDA graph capture, "
            f"autotuning: paid once per process and input shape), measured in the warm-up and left out of every "
            f"latency above. Edits after which it adds under {share:.0%} to each: " + ", ".join(amortised) + ".", ""]


def _s(ms: float | None) -> float | None:
    return None if ms is None else ms / 1e3


def step_cache_section(record: ProfileRecord) -> Section:
    """Per arm: transformer calls that computed the main layers, and the denoise-step time by step class."""
    names, arms = record.arm_names, record.arms
    rows = []
    for n in names:
        sc = arms[n].step_cache
        if not sc:
            continue
        steps = sc.get("steps_per_class") or {}
        rows.append([n, sc.get("method") or "none", sc["calls_per_run"], cell(sc["computed_calls_per_run"]),
                     fmt(arms[n].computed_fraction(), 3),
                     *(f"{fmt_stat(sc['step_ms'].get(c), 2)} (x{steps.get(c, 0)})" if c in sc["step_ms"] else "-"
                       for c in STEP_CLASSES)])
    if not rows:
        return Section("Step caching", ["Not recorded (a profile.json written before step-cache statistics).", ""])
    lines = ["Transformer calls per pipeline call, how many computed the main layers (the rest reused or "
             "extrapolated a cached output), and the median [IQR] ms of one denoise step whose calls all computed, "
             "none computed, or some did (steps per call in brackets).", ""]
    lines += table(["arm", "step cache", "calls", "computed", "computed fraction", "computed step ms",
                    "cached step ms", "mixed step ms"], rows, align=["l", "l", "r", "r", "r", "r", "r", "r"])
    lines += call_class_lines(record)
    lines += [f"> **Synthetic weights:** {note}." for note in step_cache_notes(record)]
    return Section("Step caching", lines + ([""] if lines[-1] else []))


def call_class_lines(record: ProfileRecord) -> list[str]:
    """Per arm: ms of one transformer call that computed the main layers vs one that reused a cached output."""
    rows = []
    for n in record.arm_names:
        sc = record.arms[n].step_cache or {}
        if "call_counts" not in sc:
            continue
        stats = {c: record.arms[n].call_class_stats(c) for c in CALL_CLASSES}
        cached, computed = (stats["cached"] or {}).get("median_ms"), (stats["computed"] or {}).get("median_ms")
        rows.append([n, *(x for c in CALL_CLASSES for x in (sc["call_counts"].get(c, 0), fmt_stat(stats[c], 2),
                                                             fmt((stats[c] or {}).get("mean_ms"), 2))),
                     fmt(cached / computed if cached is not None and computed else None, 3)])
    if not rows:
        return []
    return ["One transformer call, by whether it computed the main layers: calls timed over all repeats, median "
            "[IQR] and mean ms (CUDA events around each call, read at the end of the repeat).", "",
            *table(["arm", "computed calls", "computed call ms", "computed mean ms", "cached calls", "cached call ms",
                    "cached mean ms", "cached / computed"], rows, align=["l", "r", "r", "r", "r", "r", "r", "r"])]


def wall_vs_kernel_section(record: ProfileRecord) -> Section:
    """Timed wall time vs the profiled call's summed kernel time per stage, and kernel / wall of the profiled call."""
    names, arms = record.arm_names, record.arms
    rows = []
    for n in names:
        a = arms[n]
        if not (a.latency and a.kernels):
            continue
        for stage in REPORTED_STAGES:
            kern, wall = a.stage_kernel(stage), (a.stage_stats(stage) or {}).get("median_ms")
            if not kern or not wall:
                continue
            k_ms = kern["kernel_us"] / max(kern["entries"], 1) / 1e3
            if stage == "denoise":  # the profiled call ran fewer steps: scale its kernel time per step
                k_ms = k_ms / max(a.kernels["profiled_steps"], 1) * record.settings["steps"]
            rows.append([n, stage_label(stage), fmt(wall), fmt(k_ms), fmt(k_ms / wall)])
    if not rows:
        return Section("Wall time vs summed kernel time per stage", ["Not profiled.", ""])
    lines = table(["arm", "stage", "wall ms/call (timed)", "kernel ms/call (profiled)", "kernel / wall"], rows,
                  align=["l", "l", "r", "r", "r"])
    lines += ["Kernel / wall well below 1 means the device idles inside the stage (launch-bound or host work). On "
              "CPU runs, kernel time is the summed self CPU time of the ops.", ""]
    profiled = record.profiled_arms()
    busy = []
    for stage in REPORTED_STAGES:
        values = [(arms[n].stage_kernel(stage) or {}).get("kernel_over_wall") for n in profiled]
        if any(v is not None for v in values):
            busy.append([stage_label(stage), *(fmt(v) for v in values)])
    if busy:
        lines += ["Kernel time / wall time per stage in the profiled call (below 1: the device idles inside the "
                  "stage, waiting for launches or host work):", "", *table(["stage", *profiled], busy)]
    return Section("Wall time vs summed kernel time per stage", lines)


# ------------------------------------------------------------------------------------------------------- memory
def memory_section(record: ProfileRecord) -> Section:
    names, arms = record.arm_names, record.arms
    base = names[0]
    rows = [[n, *(fmt(arms[n].memory_gib(*f), 3) for f in MEMORY_FIELDS),
             fmt(record.ratio(n, "peak_allocated_run_ratio"), 3) if n != base else "-"] for n in names]
    lines = table(["arm", "transformer weights", "load peak alloc", "load peak reserved", "run peak alloc",
                   "run peak reserved", f"run peak / {base}"], rows)
    shared = record.shared_load or {}
    lines += [f"Shared components (loaded once for all arms): MLLM {fmt(shared.get('mllm_gib'), 3)} GiB, VAE "
              f"{fmt(shared.get('vae_gib'), 3)} GiB, load peak {fmt(shared.get('peak_allocated_gib'), 3)} GiB. Load "
              f"phases: {record.method.get('load_memory')}. Run phase: {record.method.get('run_memory')}.", ""]
    measured = [n for n in names if arms[n].memory_gib("run", "peak_allocated_gib") is not None]
    if not measured:
        device = record.manifest.get("device", {}).get("device") or "?"
        return Section("Memory (GiB)", lines + ["Peak VRAM not measured: peak memory counters exist only on CUDA "
                                                f"devices (this run: {device}).", ""])
    phases = ["load peak alloc", "load peak reserved", "run peak alloc", "run peak reserved"]
    series = {n: [_interval(arms[n].memory_gib(*f)) for f in MEMORY_FIELDS[1:]] for n in measured}
    chart = Chart("vram", "peak VRAM per arm", lambda path: plots.grouped_bars(
        path, phases, series, title=f"Peak VRAM per arm: {record.task}", value_label="GiB", value_labels=True,
        fmt=".3f"))
    return Section("Memory (GiB)", lines, chart)


def _interval(value: float | None) -> plots.Interval | None:
    return None if value is None else plots.Interval(value)


# ------------------------------------------------------------------------------------------------------ kernels
def kernel_sections(record: ProfileRecord, link: Callable[[str], str] = str) -> list[Section]:
    """Kernel categories (with chart), the FP8 fallback check, and one top-kernel table per profiled arm."""
    profiled = record.profiled_arms()
    if not profiled:
        return [Section("Kernel categories", ["Not profiled (`--profile-steps 0`, or every arm failed).", ""])]
    return [category_section(record, profiled), fallback_section(record, profiled),
            *(top_kernel_section(n, record.arms[n], link) for n in profiled)]


def category_section(record: ProfileRecord, profiled: list[str]) -> Section:
    arms = record.arms
    first = arms[profiled[0]].kernels
    unit = first.get("time_unit", "kernel time")
    lines = [f"Profiled denoising steps ({first.get('profiled_steps')} per arm), {unit}, in ms per step (share of "
             "the arm's total in brackets). Profiled mode: " + ", ".join(
                 f"{n} `{arms[n].kernels.get('profiled_mode') or record.arm_mode(n)}`" for n in profiled) + ".", ""]
    notes = sorted({note for n in profiled if (note := arms[n].kernels.get("profiled_mode_note"))})
    lines += [f"> **CUDA graphs:** {note}." for note in notes] + ([""] if notes else [])
    rows = [[c, *(f"{fmt(_ms(arms[n].category(c).get('us_per_step')), 3)} "
                  f"({fmt(_pct(arms[n].category(c).get('share')), 1)}%)" for n in profiled)]
            for c in KERNEL_CATEGORIES]
    rows.append(["**total**", *(fmt(_ms(arms[n].kernel_us_per_step()), 3) for n in profiled)])
    lines += table(["category", *profiled], rows)
    stacks = {n: {c: _ms(arms[n].category(c).get("us_per_step")) or 0.0 for c in KERNEL_CATEGORIES}
              for n in profiled}
    chart = Chart("kernel_categories", "kernel categories per arm", lambda path: plots.stacked_bars(
        path, profiled, stacks, title=f"Kernel time per denoising step by category: {record.task}",
        value_label=f"ms per step ({unit})"))
    return Section("Kernel categories", lines, chart)


def fallback_section(record: ProfileRecord, profiled: list[str]) -> Section:
    lines = []
    for n in profiled:
        fb = record.arms[n].fallback or {}
        if not fb.get("checked"):
            lines.append(f"- {n}: not an FP8 arm, not checked (high-precision GEMMs per step "
                         f"{fmt(fb.get('bf16_gemm_calls_per_step'), 1)}).")
            continue
        counts = (f"FP8 GEMMs per step {fmt(fb.get('fp8_gemm_calls_per_step'), 1)} (expected "
                  f"{fmt(fb.get('expected_fp8_linear_calls_per_step'), 1)}), high-precision GEMMs per step "
                  f"{fmt(fb.get('bf16_gemm_calls_per_step'), 1)} (expected "
                  f"{fmt(fb.get('expected_bf16_linear_calls_per_step'), 1)}); method: {fb.get('method')}")
        if fb.get("emulated"):  # a CPU: no FP8 kernel exists to fall back from; the findings stay in the record
            note = f" Note: {fb['note']}" if fb.get("note") else ""
            lines.append(f"- {n}: not applicable on this device (FP8 emulated). {counts}.{note}")
            continue
        if not fb.get("fallback_detected"):
            lines.append(f"- {n}: clean, no fallback kernels. {counts}.")
            continue
        lines += ["", "> [!CAUTION]", f"> **FP8 FALLBACK DETECTED in arm `{n}`.** {counts}."]
        for f in fb.get("findings", []):
            ms = f", {fmt(_ms(f.get('total_us')), 2)} ms" if f.get("total_us") else ""
            lines.append(f"> - `{f['kind']}`: {truncate(f['message'], FINDING_WIDTH)} ({f.get('calls')} calls{ms})")
        if fb.get("note"):
            lines += [">", f"> Note: {fb['note']}"]
        lines.append("")
    return Section("FP8 fallback check", lines if lines and not lines[-1] else lines + [""])


def top_kernel_section(name: str, arm: ArmRecord, link: Callable[[str], str] = str) -> Section:
    k = arm.kernels
    top = k.get("top", [])[:TOP_KERNELS]
    csv = k.get("csv") or f"kernels_{name}.csv"
    coverage = f"; {k['kernel_coverage']:.1%} of device time attributed" if k.get("kernel_coverage") else ""
    lines = [f"{k.get('num_kernels')} distinct names over {k.get('profiled_steps')} profiled steps{coverage}; the "
             f"first {len(top)} by time. Full table: [`{csv}`]({link(csv)}).", ""]
    rows = [[i, code(r["name"], KERNEL_NAME_WIDTH), r["category"], fmt(r["calls_per_step"], 1),
             fmt(_ms(r["us_per_step"]), 3), fmt(_pct(r["share"]), 1)] for i, r in enumerate(top, 1)]
    lines += table(["#", "kernel", "category", "calls/step", "ms/step", "share %"], rows,
                   align=["r", "l", "l", "r", "r", "r"])
    return Section(f"Top kernels: {name}", lines)


def _ms(us: float | None) -> float | None:
    return None if us is None else us / 1e3


def _pct(share: float | None) -> float | None:
    return None if share is None else share * 100


def _rel(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return path
