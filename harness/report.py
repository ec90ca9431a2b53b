"""python -m harness.report: gedit and profile result folders -> one markdown report with figures.

    python -m harness.report results/gedit-run results/profile-edit-1024 -o results/report/report.md
    python -m harness.report RUN_DIR [RUN_DIR ...] -o report.md [--dataset DIR] [--grid-samples 8]

Each RUN_DIR is recognised by its files, never by its name: `summary.json` = a `python -m harness.gedit` run,
`profile.json` = a `python -m harness.profile` run. Any mix and number of folders may be given.

Every number in the report is read from those files (summary.json, scores.csv, selection.json, profile.json);
the report converts units (us -> ms) and rounds, and computes nothing else. The only inputs read from outside the
run folders are the source images of the image grid, taken from the dataset the gedit run recorded (or --dataset).
Figures are PNGs in `<report stem>_files/` beside the report, linked relatively, so the report renders on GitHub.
The same inputs give the same bytes except for the one "Generated ..." line.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from harness.core import plots
from harness.core.records import SYNTHETIC_WARNING, write_text_atomic
from harness.scoring import METRICS

METRIC_LABELS = {m: m for m in METRICS}  # summary.json already uses GEdit-Bench's names (Q_SC, Q_PQ, Q_O)
STAGES = ("text_encode", "vae_encode", "denoise", "denoise_step", "vae_decode")
STAGE_LABELS = {"end_to_end": "end to end", "text_encode": "MLLM encode", "vae_encode": "VAE encode",
                "denoise": "denoise (total)", "denoise_step": "one denoise step", "vae_decode": "VAE decode"}
# Stage -> the key of profile.json's "ratios" entry (time of arm / time of the first arm).
STAGE_RATIO_KEYS = {"end_to_end": "end_to_end_ratio", "denoise": "denoise_ratio", "denoise_step": "denoise_step_ratio",
                    "text_encode": "text_encode_ratio", "vae_decode": "vae_decode_ratio"}
CATEGORIES = ("gemm-fp8", "gemm-bf16", "attention", "quant", "memcpy", "norm-elementwise", "other")
TOP_KERNELS = 12
KERNEL_NAME_WIDTH = 64
GRID_ROWS_PER_FIGURE = 6
TIMESTAMP_PREFIX = "Generated "
OVERALL = "overall (task mean)"


class ReportError(ValueError):
    """A folder that is not a result folder, or a result file that cannot be read; the message says the fix."""


# ------------------------------------------------------------------------------------------------------ loading
@dataclass
class GeditRun:
    """A `python -m harness.gedit` output folder: summary.json plus the sample-level files beside it."""

    path: Path
    summary: dict
    scores: pd.DataFrame | None
    samples: list[dict]

    kind = "gedit"

    @property
    def synthetic(self) -> str | bool:
        return self.summary.get("synthetic") or self.summary.get("provenance", {}).get("synthetic_weights") or False

    @property
    def label(self) -> str:
        return f"GEdit {self.summary.get('task', {}).get('task', '?')} ({self.path.name})"


@dataclass
class ProfileRun:
    """A `python -m harness.profile` output folder: profile.json (+ kernels_<arm>.csv, profile.md)."""

    path: Path
    profile: dict

    kind = "profile"

    @property
    def synthetic(self) -> str | bool:
        return self.profile.get("manifest", {}).get("synthetic_weights") or False

    @property
    def label(self) -> str:
        return f"profile {self.profile.get('scenario', {}).get('task', '?')} ({self.path.name})"


def load_run(path: str | os.PathLike) -> GeditRun | ProfileRun:
    """Read one result folder; its kind is decided by the files it holds (summary.json or profile.json)."""
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"{path} is not a folder; pass the --out folder of a `python -m harness.gedit` or "
                          "`python -m harness.profile` run")
    has_summary, has_profile = (path / "summary.json").is_file(), (path / "profile.json").is_file()
    if has_summary and has_profile:
        raise ReportError(f"{path} holds both summary.json and profile.json; give each run its own --out folder")
    if has_profile:
        return ProfileRun(path, _read_json(path / "profile.json"))
    if has_summary:
        summary = _read_json(path / "summary.json")
        files = summary.get("files") or {}
        scores_path = path / (files.get("scores") or "scores.csv")
        scores = pd.read_csv(scores_path, keep_default_na=False, na_values=[""]) if scores_path.is_file() else None
        selection = path / (files.get("selection") or "selection.json")
        samples = _read_json(selection).get("samples", []) if selection.is_file() else []
        return GeditRun(path, summary, scores, samples)
    raise ReportError(f"{path} holds neither summary.json (a `python -m harness.gedit` run; its score stage writes "
                      "it) nor profile.json (a `python -m harness.profile` run); point at the run's --out folder")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ReportError(f"{path} is not valid JSON ({err}); rerun the command that wrote it") from err


# --------------------------------------------------------------------------------------------------- formatting
def fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    """A number rounded to `digits` decimals; "-" for missing values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}{suffix}"


def fmt_signed(value: Any, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:+.{digits}f}"


def fmt_ci(ci: Sequence[float] | None, digits: int = 2) -> str:
    return "-" if not ci else f"[{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def fmt_stat(stat: dict | None, digits: int = 1, *, flag_spread: bool = True) -> str:
    """TimingStats dict -> "median [IQR]", with "!" when the run flagged a high spread."""
    if not stat:
        return "-"
    flag = " !" if flag_spread and stat.get("high_spread") else ""
    return f"{stat['median_ms']:.{digits}f} [{stat['iqr_ms']:.{digits}f}]{flag}"


def excludes_zero(ci: Sequence[float] | None) -> bool:
    return bool(ci) and (ci[0] > 0 or ci[1] < 0)


def cell(text: Any) -> str:
    """Text safe inside a markdown table cell (pipes escaped, no line breaks)."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def code(text: str, width: int = KERNEL_NAME_WIDTH) -> str:
    """A (shortened) name as inline code inside a table cell."""
    text = text if len(text) <= width else text[: width - 3] + "..."
    return "`" + text.replace("`", "'").replace("|", "\\|") + "`"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: Sequence[str] | None = None) -> list[str]:
    """GitHub markdown table lines; align per column: "l" or "r" (default: first column left, others right)."""
    align = align or ["l"] + ["r"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _dig(data: Any, *keys: Any) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


# ------------------------------------------------------------------------------------------------------- builder
@dataclass
class Report:
    """Markdown lines and the figures written so far, for one output file."""

    out: Path
    lines: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)

    @property
    def figure_dir(self) -> Path:
        return self.out.parent / f"{self.out.stem}_files"

    def figure_path(self, name: str) -> Path:
        return self.figure_dir / name

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def image(self, path: Path, alt: str) -> None:
        self.figures.append(path)
        rel = os.path.relpath(path, self.out.parent).replace(os.sep, "/")
        self.add(f"![{alt}]({rel})", "")


def build_report(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike, *, dataset: str | None = None,
                 grid_samples: int = 8, timestamp: str | None = None) -> Path:
    """Read every run folder, write the markdown report at `out` and its figures beside it; returns `out`.

    dataset: where the gedit runs' source images are read from (default: the dataset each summary.json names).
    grid_samples: rows of the image grid per gedit run and language (0 = no grid).
    timestamp: the "Generated" time (default: now, UTC).
    PNGs left in the figure folder by an earlier build and not written by this one are removed.
    """
    if not run_dirs:
        raise ReportError("no run folders given; pass one or more --out folders of harness.gedit / harness.profile")
    runs = [load_run(p) for p in run_dirs]
    out = Path(out)
    if out.suffix.lower() != ".md":
        raise ReportError(f"output {out} should be a markdown file name ending in .md (e.g. -o report.md)")
    report = Report(out)
    gedit = [r for r in runs if isinstance(r, GeditRun)]
    profile = [r for r in runs if isinstance(r, ProfileRun)]
    stamp = timestamp or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    report.add("# OmniGen2 BF16 vs FP8: quality, latency, memory and kernels", "")
    _banner(report, runs)
    report.add(f"{TIMESTAMP_PREFIX}{stamp} by `python -m harness.report` from "
               + ", ".join(f"[`{_rel(r.path, out)}`]({_rel(r.path, out)}) ({r.kind})" for r in runs) + ".", "")
    _headline(report, gedit, profile)
    for i, run in enumerate(profile, 1):
        _profile_section(report, run, f"p{i}")
    for i, run in enumerate(gedit, 1):
        _gedit_section(report, run, f"g{i}", dataset=dataset, grid_samples=grid_samples)
    _provenance(report, runs)
    _write(report)
    return out


def _write(report: Report) -> None:
    report.out.parent.mkdir(parents=True, exist_ok=True)
    written = {p.resolve() for p in report.figures}
    if report.figure_dir.is_dir():  # drop figures of an earlier build that this one did not write again
        for stale in report.figure_dir.glob("*.png"):
            if stale.resolve() not in written:
                stale.unlink()
    text = "\n".join(report.lines).rstrip("\n") + "\n"
    write_text_atomic(report.out, text)


def _rel(path: Path, out: Path) -> str:
    return os.path.relpath(Path(path).resolve(), out.resolve().parent).replace(os.sep, "/")


def _banner(report: Report, runs: Sequence[GeditRun | ProfileRun]) -> None:
    synthetic = [r for r in runs if r.synthetic]
    if not synthetic:
        return
    which = ", ".join(f"{r.label}: synthetic {r.synthetic}" for r in synthetic)
    report.add("> [!WARNING]", f"> **{SYNTHETIC_WARNING}**", ">",
               f"> Synthetic runs in this report: {which}. Their quality numbers and images are meaningless; "
               "timings and memory measure the real model shapes only when the synthetic size is `full`.", "")


# ------------------------------------------------------------------------------------------------------ headline
def _headline(report: Report, gedit: Sequence[GeditRun], profile: Sequence[ProfileRun]) -> None:
    report.add("## Headline", "")
    if not gedit and not profile:
        report.add("No runs.", "")
    for run in profile:
        for line in _profile_headline(run):
            report.add(line)
    for run in gedit:
        for line in _gedit_headline(run):
            report.add(line)
    report.add("")


def _profile_headline(run: ProfileRun) -> list[str]:
    p = run.profile
    arms = p.get("arms", {})
    names = list(arms)
    if not names:
        return [f"- **{run.label}**: no arms recorded."]
    base = names[0]
    sc = p.get("scenario", {})
    dev = _dig(p, "manifest", "device", "device_name") or "?"
    modes = [m for m, on in (("compiled", _dig(p, "settings", "compile")),
                             ("CUDA graphs", _dig(p, "settings", "cuda_graphs"))) if on]
    where = (f"{sc.get('height')}x{sc.get('width')}, {len(sc.get('references') or [])} reference(s), "
             f"{sc.get('steps')} steps, {', '.join(modes) or 'eager'}, {dev}")
    lines = []
    for name in names[1:]:
        r = _dig(p, "ratios", name) or {}
        a, b = arms[name], arms[base]
        e2e_a, e2e_b = _dig(a, "latency", "end_to_end"), _dig(b, "latency", "end_to_end")
        n = (e2e_a or {}).get("n")
        parts = [f"- **{_escape(sc.get('task', '?'))}** ({where}): **{name}** end to end "
                 f"**{fmt(r.get('end_to_end_speedup'), 2, 'x')}** the speed of {base} (median [IQR] "
                 f"{fmt_stat(e2e_a, 0, flag_spread=False)} ms vs {fmt_stat(e2e_b, 0, flag_spread=False)} ms over "
                 f"{n if n is not None else '?'} repeats)"]
        if any((x or {}).get("high_spread") for x in (e2e_a, e2e_b)):
            parts.append(" (**high spread**: the interquartile range of the repeats exceeds 10% of the median, "
                         "so this ratio is not reliable)")
        parts.append(f"; one denoise step {fmt(r.get('denoise_step_speedup'), 2, 'x')}")
        mem_a, mem_b = _dig(a, "memory", "run", "peak_allocated_gib"), _dig(b, "memory", "run", "peak_allocated_gib")
        if mem_a is not None or mem_b is not None:
            parts.append(f"; peak VRAM of a run {fmt(mem_a, 3)} GiB vs {fmt(mem_b, 3)} GiB "
                         f"({name}/{base} = {fmt(r.get('peak_allocated_run_ratio'))})")
        else:
            parts.append("; VRAM not measured on this device")
        parts.append(f"; transformer weights {name}/{base} = {fmt(r.get('transformer_gib_ratio'))}")
        fb = a.get("fallback") or {}
        if fb.get("checked"):
            parts.append("; **FP8 FALLBACK KERNELS DETECTED** (see below)" if fb.get("fallback_detected")
                         else "; no fallback kernels")
        lines.append("".join(parts) + ".")
    if len(names) == 1:
        lines.append(f"- **{run.label}**: one arm ({base}), no comparison.")
    return lines


def _gedit_headline(run: GeditRun) -> list[str]:
    s = run.summary
    lines = []
    for d in s.get("deltas", []):
        for lang, metrics in sorted(d.get("languages", {}).items()):
            parts = []
            for m in METRICS:
                o = _dig(metrics, m, "overall_task_mean") or {}
                parts.append(f"{METRIC_LABELS[m]} {fmt_signed(o.get('delta'))} {fmt_ci(o.get('ci95'))}"
                             + (" **distinguishable from zero**" if excludes_zero(o.get("ci95")) else ""))
            o = _dig(metrics, "Q_O", "overall_task_mean") or {}
            verdict = o.get("verdict", "")
            heads = {h["arm"]: h for h in s.get("headline", []) if h["language"] == lang}
            absolute = " vs ".join(f"{a} {fmt(heads[a].get('Q_O'))}" for a in (d["baseline"], d["arm"]) if a in heads)
            lines.append(f"- **{_escape(run.label)}**, {lang}: {d['arm']} - {d['baseline']} over "
                         f"{o.get('n_pairs', '?')} paired samples (unweighted task mean, 95% bootstrap CI): "
                         + "; ".join(parts) + f". Q_O {absolute or ''}: {verdict}.")
            fid = _dig(s, "fidelity", d["arm"], lang, "overall_per_sample")
            if fid:
                lines.append(f"  Fidelity of the {d['arm']} edits to the {d['baseline']} edits (same seed): PSNR "
                             f"{fmt(fid.get('psnr_db'))} dB, SSIM {fmt(fid.get('ssim'), 4)} over {fid.get('n')} "
                             f"pairs ({fid.get('n_identical')} identical).")
    if not s.get("deltas"):
        lines.append(f"- **{_escape(run.label)}**: one arm ({', '.join(s.get('arms', []))}), no comparison.")
    return lines


def _escape(text: str) -> str:
    return str(text).replace("*", "\\*").replace("_", "\\_")


# ------------------------------------------------------------------------------------------------ profile runs
def _profile_section(report: Report, run: ProfileRun, tag: str) -> None:
    p = run.profile
    arms = p.get("arms", {})
    names = list(arms)
    sc = p.get("scenario", {})
    st = p.get("settings", {})
    report.add(f"## Latency and memory: {run.label}", "",
               f"Scenario `{sc.get('task')}`: {sc.get('height')}x{sc.get('width')} output, references "
               f"{sc.get('references')}, {sc.get('steps')} steps, {sc.get('transformer_passes')} transformer passes "
               f"per call; warm-up {st.get('warmup')}, repeats {st.get('repeats')}, compile {st.get('compile')}, "
               f"CUDA graphs {st.get('cuda_graphs', False)}, "
               f"offload {st.get('offload')}, FP8 kernel `{st.get('fp8_kernel')}`. "
               f"{_dig(p, 'method', 'order') or ''}.", "")
    for name in names:
        if arms[name].get("error"):
            report.add(f"> [!CAUTION]", f"> Arm **{name}** failed: `{cell(arms[name]['error'])}`", "")
    _latency_table(report, run, names, tag)
    _memory_table(report, run, names, tag)
    _kernel_sections(report, run, names, tag)
    warnings = p.get("warnings") or []
    if warnings:  # folded: on a busy or CPU machine there are many spread warnings
        report.add(f"<details><summary>{len(warnings)} warnings recorded by the run</summary>", "",
                   *(f"- {cell(w)}" for w in warnings), "", "</details>", "")


def _latency_table(report: Report, run: ProfileRun, names: list[str], tag: str) -> None:
    p = run.profile
    arms = p["arms"]
    base = names[0] if names else None
    report.add("### Latency per stage", "",
               "Milliseconds per call: median [IQR] over the timed repeats (`!` = IQR above 10% of the median). "
               f"Ratio columns: time of the arm / time of {base} (below 1 = faster), as profile.json records them.",
               "")
    rows, groups, series = [], [], {n: [] for n in names}
    for stage in ("end_to_end", *STAGES):
        stats = {}
        for n in names:
            lat = arms[n].get("latency") or {}
            stats[n] = lat.get("end_to_end") if stage == "end_to_end" else _dig(
                lat, "stages", stage, "per_call" if stage == "denoise_step" else "per_run")
        if not any(stats.values()):
            continue
        ratio_cells = [fmt(_dig(p, "ratios", n, STAGE_RATIO_KEYS[stage]), 3) if stage in STAGE_RATIO_KEYS else "-"
                       for n in names[1:]]
        rows.append([STAGE_LABELS[stage], *(fmt_stat(stats[n]) for n in names), *ratio_cells])
        if stage != "end_to_end":  # the chart shows the stages; end to end is their sum and would dwarf them
            groups.append(STAGE_LABELS[stage])
            for n in names:
                s = stats[n]
                series[n].append(plots.Interval(s["median_ms"], s["q1_ms"], s["q3_ms"]) if s else None)
    header = ["stage", *(f"{n} ms" for n in names), *(f"{n}/{base}" for n in names[1:])]
    report.add(*table(header, rows))
    if groups:
        path = plots.grouped_bars(report.figure_path(f"{tag}_latency.png"), groups, series,
                                  title=f"Latency per stage: {p.get('scenario', {}).get('task')}",
                                  value_label="ms per call (median; whiskers: interquartile range)",
                                  horizontal=True, value_labels=True, fmt=".1f")
        report.image(path, "latency per stage")


def _memory_table(report: Report, run: ProfileRun, names: list[str], tag: str) -> None:
    p = run.profile
    arms = p["arms"]
    base = names[0] if names else None
    report.add("### Memory (GiB)", "")
    rows = []
    fields = (("load", "transformer_gib"), ("load", "peak_allocated_gib"), ("load", "peak_reserved_gib"),
              ("run", "peak_allocated_gib"), ("run", "peak_reserved_gib"))
    for n in names:
        mem = arms[n].get("memory") or {}
        ratio = _dig(p, "ratios", n, "peak_allocated_run_ratio") if n != base else None
        rows.append([n, *(fmt(_dig(mem, *f), 3) for f in fields), fmt(ratio, 3) if n != base else "-"])
    report.add(*table(["arm", "transformer weights", "load peak alloc", "load peak reserved", "run peak alloc",
                       "run peak reserved", f"run peak / {base}"], rows))
    shared = p.get("shared_load") or {}
    report.add(f"Shared components (loaded once for all arms): MLLM {fmt(shared.get('mllm_gib'), 3)} GiB, VAE "
               f"{fmt(shared.get('vae_gib'), 3)} GiB. Load phases: {_dig(p, 'method', 'load_memory')}. Run phase: "
               f"{_dig(p, 'method', 'run_memory')}.", "")
    measured = [n for n in names if _dig(arms[n], "memory", "run", "peak_allocated_gib") is not None]
    if measured:
        phases = ["load peak alloc", "load peak reserved", "run peak alloc", "run peak reserved"]
        series = {n: [None if _dig(arms[n], "memory", *f) is None else plots.Interval(_dig(arms[n], "memory", *f))
                      for f in fields[1:]] for n in measured}
        path = plots.grouped_bars(report.figure_path(f"{tag}_vram.png"), phases, series,
                                  title=f"Peak VRAM per arm: {p.get('scenario', {}).get('task')}",
                                  value_label="GiB", value_labels=True, fmt=".3f")
        report.image(path, "peak VRAM per arm")
    else:
        report.add("No VRAM chart: peak memory counters exist only on CUDA devices (this run: "
                   f"{_dig(p, 'manifest', 'device', 'device') or '?'}).", "")


def _kernel_sections(report: Report, run: ProfileRun, names: list[str], tag: str) -> None:
    p = run.profile
    arms = p["arms"]
    prof = [n for n in names if arms[n].get("kernels")]
    report.add("### Kernel breakdown", "")
    if not prof:
        report.add("Not profiled (`--profile-steps 0`, or every arm failed).", "")
        return
    k0 = arms[prof[0]]["kernels"]
    unit = k0.get("time_unit", "kernel time")
    report.add(f"Profiled denoising steps ({k0.get('profiled_steps')} per arm), {unit}, in ms per step "
               "(share of the arm's total in brackets).", "")
    rows = []
    for c in CATEGORIES:
        cells = []
        for n in prof:
            d = _dig(arms[n], "kernels", "categories", c) or {}
            cells.append(f"{fmt(_us_to_ms(d.get('us_per_step')), 3)} ({fmt(_pct(d.get('share')), 1)}%)")
        rows.append([c, *cells])
    totals = [fmt(_us_to_ms(_per_step(arms[n]["kernels"])), 3) for n in prof]
    rows.append(["**total**", *totals])
    report.add(*table(["category", *prof], rows))
    stacks = {n: {c: _us_to_ms(_dig(arms[n], "kernels", "categories", c, "us_per_step")) or 0.0 for c in CATEGORIES}
              for n in prof}
    path = plots.stacked_bars(report.figure_path(f"{tag}_kernel_categories.png"), prof, stacks,
                              title=f"Kernel time per denoising step by category: {p.get('scenario', {}).get('task')}",
                              value_label=f"ms per step ({unit})")
    report.image(path, "kernel categories per arm")
    _busy_table(report, run, prof)
    _fallback_section(report, run, prof)
    for n in prof:
        k = arms[n]["kernels"]
        csv = k.get("csv") or f"kernels_{n}.csv"
        report.add(f"#### Top kernels: {n}", "",
                   f"{k.get('num_kernels')} distinct names; the first {min(TOP_KERNELS, len(k.get('top', [])))} by "
                   f"time. Full table: [`{csv}`]({_rel(run.path / csv, report.out)}).", "")
        rows = [[i, code(r["name"]), r["category"], fmt(r["calls_per_step"], 1), fmt(_us_to_ms(r["us_per_step"]), 3),
                 fmt(_pct(r["share"]), 1)] for i, r in enumerate(k.get("top", [])[:TOP_KERNELS], 1)]
        report.add(*table(["#", "kernel", "category", "calls/step", "ms/step", "share %"], rows,
                          align=["r", "l", "l", "r", "r", "r"]))


def _busy_table(report: Report, run: ProfileRun, names: list[str]) -> None:
    """Summed kernel time / wall time per stage of the profiled call: below 1, the device idles in the stage."""
    arms = run.profile["arms"]
    rows = []
    for stage in STAGES:
        values = [_dig(arms[n], "kernels", "stages", stage, "kernel_over_wall") for n in names]
        if any(v is not None for v in values):
            rows.append([STAGE_LABELS[stage], *(fmt(v) for v in values)])
    if rows:
        report.add("Kernel time / wall time per stage in the profiled call (below 1: the device idles inside the "
                   "stage, waiting for launches or host work):", "")
        report.add(*table(["stage", *names], rows))


def _per_step(k: dict) -> float | None:
    total, steps = k.get("total_us_in_steps"), k.get("profiled_steps")
    return None if total is None else total / max(steps or 1, 1)


def _us_to_ms(us: float | None) -> float | None:
    return None if us is None else us / 1e3


def _pct(share: float | None) -> float | None:
    return None if share is None else share * 100


def _fallback_section(report: Report, run: ProfileRun, names: list[str]) -> None:
    arms = run.profile["arms"]
    report.add("#### FP8 fallback check", "")
    for n in names:
        fb = arms[n].get("fallback") or {}
        if not fb.get("checked"):
            report.add(f"- {n}: not an FP8 arm, not checked.")
            continue
        counts = (f"FP8 GEMMs per step {fmt(fb.get('fp8_gemm_calls_per_step'), 1)} (expected "
                  f"{fmt(fb.get('expected_fp8_linear_calls_per_step'), 1)}), high-precision GEMMs per step "
                  f"{fmt(fb.get('bf16_gemm_calls_per_step'), 1)} (expected "
                  f"{fmt(fb.get('expected_bf16_linear_calls_per_step'), 1)}); method: {fb.get('method')}")
        if not fb.get("fallback_detected"):
            report.add(f"- {n}: clean, no fallback kernels. {counts}.")
            continue
        report.add("", "> [!CAUTION]", f"> **FP8 fallback kernels in arm `{n}`.** {counts}.")
        for f in fb.get("findings", []):
            ms = f", {fmt(_us_to_ms(f.get('total_us')), 2)} ms" if f.get("total_us") else ""
            report.add(f"> - `{f['kind']}`: {_short(f['message'], 300)} ({f.get('calls')} calls{ms})")
        if fb.get("note"):
            report.add(f">", f"> Note: {fb['note']}")
        report.add("")
    report.add("")


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


# -------------------------------------------------------------------------------------------------- gedit runs
def _gedit_section(report: Report, run: GeditRun, tag: str, *, dataset: str | None, grid_samples: int) -> None:
    s = run.summary
    task = s.get("task", {})
    gen = task.get("generation", {})
    judge = s.get("judge", {})
    prompts = s.get("prompt_set", {})
    arms = s.get("arms", [])
    report.add(f"## Quality: {run.label}", "")
    if _dig(s, "comparability", "headline"):  # judged with something other than the official protocol
        report.add(f"> **{s['comparability']['headline']}**", "")
    report.add(f"Arms {', '.join(f'`{a}`' for a in arms)} (baseline `{s.get('baseline')}`); "
               f"{_dig(s, 'selection', 'n_samples')} samples per arm; {gen.get('steps')} steps, seed "
               f"{gen.get('seed')}, resolution {gen.get('resolution') or 'of the input'}, guidance text "
               f"{gen.get('text_guidance_scale')} / image {gen.get('image_guidance_scale')}, time shift "
               f"{gen.get('time_shift')}. Judge `{judge.get('model')}` with prompt set `{prompts.get('name')}`, "
               f"protocol `{judge.get('protocol', 'not recorded')}`. "
               "Scores 0-10; headline = unweighted mean over task groups (the official rule), per-sample mean "
               "beside it.", "")
    _gedit_headline_table(report, run)
    languages = sorted({r["language"] for r in s.get("per_task", [])})
    for lang in languages:
        _gedit_task_tables(report, run, lang, tag)
    _fidelity_tables(report, run)
    _judge_failures(report, run)
    _throughput(report, run)
    if grid_samples > 0:
        for lang in languages:
            _image_grid(report, run, lang, tag, dataset=dataset, limit=grid_samples)


def _gedit_headline_table(report: Report, run: GeditRun) -> None:
    rows = []
    for h in run.summary.get("headline", []):
        rows.append([h["arm"], h["language"], *(fmt(h.get(m)) for m in METRICS),
                     *(fmt(h.get(f"{m}_per_sample")) for m in METRICS),
                     f"{h.get('n_scored')}/{h.get('n_selected')}", h.get("n_judge_failures")])
    report.add("### Headline scores", "")
    report.add(*table(["arm", "lang", "Q_SC", "Q_PQ", "Q_O", "Q_SC/sample", "Q_PQ/sample", "Q_O/sample",
                       "scored", "judge fail"], rows, align=["l", "l", *["r"] * 8]))


def _gedit_task_tables(report: Report, run: GeditRun, lang: str, tag: str) -> None:
    s = run.summary
    arms = s.get("arms", [])
    per_task = [r for r in s.get("per_task", []) if r["language"] == lang]
    tasks = sorted({r["task_type"] for r in per_task})
    by = {(r["arm"], r["task_type"]): r for r in per_task}
    report.add(f"### Per task group ({lang})", "")
    rows = []
    for t in tasks:
        n = "/".join(str(_dig(by, (a, t), "n_scored") if (a, t) in by else "-") for a in arms)
        rows.append([t, n, *(fmt(by[(a, t)].get(m)) if (a, t) in by else "-" for m in METRICS for a in arms)])
    header = ["task", "n scored (" + "/".join(arms) + ")",
              *(f"{METRIC_LABELS[m]} {a}" for m in METRICS for a in arms)]
    report.add(*table(header, rows))
    for h in s.get("headline", []):  # the official headline as a last group
        if h["language"] == lang:
            by[(h["arm"], OVERALL)] = h
    groups = [*tasks, OVERALL]
    panels = {METRIC_LABELS[m]: {a: [_score_interval(by.get((a, t)), m) for t in groups] for a in arms}
              for m in METRICS}
    path = plots.metric_panels(report.figure_path(f"{tag}_{lang}_scores.png"), groups, panels,
                               title=f"GEdit-Bench scores per task group ({lang}): {run.label}", value_label="0-10",
                               ylim=(0, 10), note=_score_note(per_task))
    report.image(path, f"scores per task group ({lang})")
    for d in s.get("deltas", []):
        metrics = _dig(d, "languages", lang)
        if not metrics:
            continue
        report.add(f"#### {d['arm']} - {d['baseline']}, paired per sample ({lang})", "",
                   f"Mean difference with its {int(round(100 * d.get('confidence', 0.95)))}% bootstrap interval "
                   f"({d.get('n_bootstrap')} resamples, seed {d.get('seed')}); **bold** = the interval excludes 0 "
                   "(distinguishable from zero).", "")
        rows, labels = [], []
        series = {METRIC_LABELS[m]: [] for m in METRICS}
        per_task_by = {m: {r["task_type"]: r for r in metrics[m]["per_task"]} for m in METRICS}
        for t in tasks:
            rec = {m: per_task_by[m].get(t) for m in METRICS}
            n = next((r["n_pairs"] for r in rec.values() if r), 0)
            rows.append([t, n, *(_delta_cell(rec[m]) for m in METRICS)])
            labels.append(t)
            for m in METRICS:
                series[METRIC_LABELS[m]].append(_interval(rec[m]))
        for scope, label in (("overall_task_mean", "overall (task mean)"),
                             ("overall_per_sample", "overall (per sample)")):
            rec = {m: metrics[m][scope] for m in METRICS}
            rows.append([f"**{label}**", rec["Q_O"].get("n_pairs"), *(_delta_cell(rec[m]) for m in METRICS)])
            labels.append(label)
            for m in METRICS:
                series[METRIC_LABELS[m]].append(_interval(rec[m]))
        report.add(*table(["task", "pairs", *(f"Δ{METRIC_LABELS[m]} [95% CI]" for m in METRICS)], rows))
        path = plots.grouped_bars(report.figure_path(f"{tag}_{lang}_{_slug(d['arm'])}_deltas.png"), labels, series,
                                  title=f"{d['arm']} - {d['baseline']} per task group ({lang})",
                                  value_label="score difference (points); whiskers: 95% bootstrap CI",
                                  horizontal=True, value_labels=False, zero_line=True)
        report.image(path, f"paired deltas {d['arm']} - {d['baseline']} ({lang})")


def _score_note(per_task: list[dict]) -> str:
    if any(f"{m}_ci95" in r for r in per_task for m in METRICS):
        return "bars: task-group means; whiskers: the 95% intervals recorded in summary.json"
    return "bars: task-group means; summary.json holds no per-arm intervals, so the whiskers are on the paired deltas"


def _score_interval(rec: dict | None, metric: str) -> plots.Interval | None:
    """A task-group mean as a bar; whiskers only where the run file holds an interval for it (`<metric>_ci95`)."""
    if not rec or rec.get(metric) is None:
        return None
    ci = rec.get(f"{metric}_ci95")
    return plots.Interval(rec[metric], *(ci if ci and len(ci) == 2 else (None, None)))


def _delta_cell(rec: dict | None) -> str:
    if not rec:
        return "-"
    text = f"{fmt_signed(rec.get('delta'))} {fmt_ci(rec.get('ci95'))}"
    return f"**{text}**" if excludes_zero(rec.get("ci95")) else text


def _interval(rec: dict | None) -> plots.Interval | None:
    if not rec or rec.get("delta") is None:
        return None
    ci = rec.get("ci95")
    return plots.Interval(rec["delta"], ci[0] if ci else None, ci[1] if ci else None)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)


def _fidelity_tables(report: Report, run: GeditRun) -> None:
    fidelity = run.summary.get("fidelity") or {}
    if not fidelity:
        return
    report.add("### Fidelity to the baseline edits (PSNR / SSIM, same seed)", "",
               "No judge involved: each edit against the baseline arm's edit of the same sample. PSNR is averaged "
               "over non-identical pairs.", "")
    for arm, fid in fidelity.items():
        if fid.get("same_settings_but_precision") is False:
            report.add(f"> [!NOTE]", f"> The {arm} and {fid.get('baseline')} edits were not made with the same "
                       "settings apart from the precision, so PSNR / SSIM measure more than the precision change.", "")
        for lang, res in sorted((k, v) for k, v in fid.items() if isinstance(v, dict) and "per_task" in v):
            rows = [[r["task_type"], r.get("n"), fmt(r.get("psnr_db")), r.get("n_identical"), fmt(r.get("ssim"), 4)]
                    for r in res.get("per_task", [])]
            t, o = res.get("overall_task_mean", {}), res.get("overall_per_sample", {})
            rows.append(["**overall (task mean)**", f"{t.get('n_task_groups')} groups", fmt(t.get("psnr_db")), "-",
                         fmt(t.get("ssim"), 4)])
            rows.append(["**overall (per sample)**", o.get("n"), fmt(o.get("psnr_db")), o.get("n_identical"),
                         fmt(o.get("ssim"), 4)])
            report.add(f"{arm} vs {fid.get('baseline')} ({lang}); missing or size-mismatched pairs: "
                       f"{res.get('n_missing_or_mismatched', 0)}", "")
            report.add(*table(["task", "n", "PSNR dB", "identical", "SSIM"], rows))


def _judge_failures(report: Report, run: GeditRun) -> None:
    failures = run.summary.get("judge_failures") or {}
    report.add("### Judge failures", "",
               "A sample whose judge answers could not be parsed after the retries, or held scores outside 0-10, is "
               "excluded from the means, never given a score.", "")
    rows = []
    for arm, langs in failures.items():
        for lang, f in sorted(langs.items()):
            per = ", ".join(f"{t}: {n}" for t, n in sorted(f.get("per_task", {}).items()) if n) or "none"
            rows.append([arm, lang, f.get("total"), f.get("out_of_range"), f.get("missing_images"), cell(per)])
    report.add(*table(["arm", "lang", "judge failures", "out of range", "missing images", "per task"], rows,
                      align=["l", "l", "r", "r", "r", "l"]))
    if run.scores is not None and len(run.scores):
        bad = run.scores[run.scores["status"] != "ok"]
        if len(bad):
            shown = bad.sort_values(["arm", "language", "task_type", "key"]).head(20)
            rows = [[r.arm, r.language, r.task_type, code(str(r.key), 12), r.status, cell(_short(str(r.failure), 80))]
                    for r in shown.itertuples()]
            report.add(f"Failed samples ({len(bad)}; first {len(shown)} from scores.csv):", "")
            report.add(*table(["arm", "lang", "task", "key", "status", "why"], rows, align=["l"] * 6))


def _throughput(report: Report, run: GeditRun) -> None:
    tp = run.summary.get("throughput") or {}
    gen = tp.get("generation") or {}
    if not gen and not tp.get("judge"):
        return
    report.add("### Throughput of this run", "")
    rows = [[arm, g.get("n_samples"), fmt(g.get("seconds_per_sample_mean")), fmt(g.get("seconds_per_sample_median")),
             fmt(g.get("peak_vram_gib_max")), g.get("steps"), "x".join(str(v) for v in g.get("output_size") or [])]
            for arm, g in gen.items()]
    report.add(*table(["generation arm", "samples", "s/sample (mean)", "s/sample (median)", "peak VRAM GiB",
                       "steps", "output"], rows))
    j = tp.get("judge")
    if j:
        report.add(f"Judge: {fmt(j.get('seconds_per_sample'))} s per sample ({j.get('calls_per_sample')} calls, batch "
                   f"{j.get('batch_size')}, {fmt(j.get('attempts_per_call'))} attempts per call), peak VRAM "
                   f"{fmt(j.get('peak_vram_gib_max'))} GiB, over {j.get('n_samples')} judged samples.", "")


# -------------------------------------------------------------------------------------------------- image grid
def grid_selection(samples: Sequence[dict], language: str, limit: int) -> list[dict]:
    """Samples for the image grid: round-robin over task groups (sorted), by key within a group, `limit` rows."""
    groups: dict[str, list[dict]] = {}
    for s in sorted((s for s in samples if s["language"] == language), key=lambda s: (s["task_type"], s["key"])):
        groups.setdefault(s["task_type"], []).append(s)
    chosen, depth = [], 0
    while len(chosen) < limit and any(len(g) > depth for g in groups.values()):
        for task in sorted(groups):
            if len(groups[task]) > depth and len(chosen) < limit:
                chosen.append(groups[task][depth])
        depth += 1
    return chosen


class SourceImages:
    """Source images of GEdit samples, read from the dataset a gedit run recorded (loaded on first use)."""

    def __init__(self, run: GeditRun, override: str | None):
        self.run, self.override = run, override
        self._rows: dict | None = None
        self._ds = None
        self.problem: str | None = None

    def location(self) -> str:
        """The dataset the run used; a copy inside a moved run folder is found under the folder's new path."""
        if self.override:
            return self.override
        recorded = str(self.run.summary.get("dataset") or "")
        root = self.run.summary.get("edits_root")
        if recorded and not Path(recorded).exists() and root:
            try:
                moved = self.run.path / Path(recorded).relative_to(root)
            except ValueError:
                return recorded
            return str(moved) if moved.exists() else recorded
        return recorded

    def get(self, sample: dict):
        if self._rows is None:
            self._load()
        row = (self._rows or {}).get((sample["key"], sample["language"]))
        if row is None:
            return None
        return self._ds[row]["input_image"].convert("RGB")

    def _load(self) -> None:
        from harness.data import DatasetError, load_gedit_dataset

        self._rows = {}
        where = self.location()
        if not where:
            self.problem = "summary.json names no dataset; pass --dataset"
            return
        revision = _dig(self.run.summary, "task", "dataset", "revision")
        split = _dig(self.run.summary, "task", "dataset", "split") or "train"
        try:
            self._ds = load_gedit_dataset(where, revision=revision, split=split)
        except DatasetError as err:
            self.problem = f"source images unavailable ({err}); pass --dataset with a local copy"
            return
        cols = self._ds.select_columns(["key", "instruction_language"]).to_pandas()
        self._rows = {(k, lang): i for i, (k, lang) in enumerate(zip(cols["key"], cols["instruction_language"]))}


def _edit_image(run: GeditRun, arm: str, sample: dict):
    from PIL import Image

    rel = Path(arm) / "fullset" / sample["task_type"] / sample["language"] / f"{sample['key']}.png"
    for root in (run.path, Path(run.summary.get("edits_root") or run.path)):
        if (root / rel).is_file():
            with Image.open(root / rel) as im:
                return im.convert("RGB")
    return None


def _image_grid(report: Report, run: GeditRun, lang: str, tag: str, *, dataset: str | None, limit: int) -> None:
    chosen = grid_selection(run.samples, lang, limit)
    if not chosen:
        return
    arms = run.summary.get("arms", [])
    sources = SourceImages(run, dataset)
    scores = {}
    if run.scores is not None:
        for r in run.scores.itertuples():
            scores[(r.arm, r.task_type, r.language, r.key)] = r
    report.add(f"### Sample edits ({lang})", "",
               f"Source | {' | '.join(arms)}, one row per sample (one per task group in turn, by key). "
               "The instruction of each row is in the table under the figure.", "")
    rows = []
    for i, s in enumerate(chosen, 1):
        images = [sources.get(s), *(_edit_image(run, a, s) for a in arms)]
        rows.append(plots.GridRow(title=f"#{i} {s['task_type']} ({lang})", images=images,
                                  caption=s.get("instruction", "")))
    for part, start in enumerate(range(0, len(rows), GRID_ROWS_PER_FIGURE), 1):
        # A figure may be looked at alone: say on it that the edits come from random weights.
        columns = ["source", *(f"{a} (random weights)" if run.synthetic else a for a in arms)]
        path = plots.image_grid(report.figure_path(f"{tag}_{lang}_grid{part}.png"),
                                rows[start:start + GRID_ROWS_PER_FIGURE], columns)
        report.image(path, f"sample edits ({lang}) part {part}")
    if sources.problem:
        report.add(f"Source column: {sources.problem}.", "")
    table_rows = []
    for i, s in enumerate(chosen, 1):
        cells = []
        for a in arms:
            r = scores.get((a, s["task_type"], s["language"], s["key"]))
            cells.append(fmt(r.Q_O) if r is not None and r.status == "ok" else (r.status if r is not None else "-"))
        table_rows.append([i, s["task_type"], code(s["key"], 12), cell(s.get("instruction", "")), *cells])
    report.add(*table(["#", "task", "key", "instruction", *(f"Q_O {a}" for a in arms)], table_rows,
                      align=["r", "l", "l", "l", *["r"] * len(arms)]))


# -------------------------------------------------------------------------------------------------- provenance
def _provenance(report: Report, runs: Sequence[GeditRun | ProfileRun]) -> None:
    report.add("## Provenance", "")
    for run in runs:
        if isinstance(run, GeditRun):
            s = run.summary
            m = s.get("provenance", {})
            extra = [f"OmniGen2 model: `{s.get('model')}`",
                     f"dataset: `{s.get('dataset')}` (task dataset `{_dig(s, 'task', 'dataset', 'id')}`, revision "
                     f"`{_dig(s, 'task', 'dataset', 'revision')}`)",
                     f"judge: `{_dig(s, 'judge', 'model')}`" + _judge_settings(s.get("judge_settings")),
                     f"prompt set: `{_dig(s, 'prompt_set', 'name')}` from `{_dig(s, 'prompt_set', 'origin')}`, sha256 "
                     f"`{_dig(s, 'prompt_set', 'sha256', 'set')}` (SC `{_dig(s, 'prompt_set', 'sha256', 'sc')}`, PQ "
                     f"`{_dig(s, 'prompt_set', 'sha256', 'pq')}`)",
                     f"sample selection: {_dig(s, 'selection', 'n_samples')} samples, uids sha256 "
                     f"`{_dig(s, 'selection', 'uids_sha256')}`",
                     "overrides: " + ("; ".join(f"{o.get('field')}: {o.get('old')!r} -> {o.get('new')!r} "
                                                f"({o.get('source')})" for o in s.get("overrides", [])) or "none")]
        else:
            p = run.profile
            m = p.get("manifest", {})
            sc = p.get("scenario", {})
            extra = [f"model: `{_dig(p, 'settings', 'model') or 'synthetic ' + str(_dig(p, 'settings', 'synthetic'))}`",
                     f"scenario `{sc.get('task')}` (overrides {sc.get('overrides') or 'none'})",
                     f"complete: {p.get('complete')}; schema version {p.get('schema_version')}"]
        dev = m.get("device", {})
        packages = ", ".join(f"{k} {v}" for k, v in sorted((m.get("packages") or {}).items()))
        report.add(f"### {run.label}", "",
                   f"- folder: [`{_rel(run.path, report.out)}`]({_rel(run.path, report.out)}) ({run.kind})",
                   f"- weights: **{'synthetic ' + str(run.synthetic) if run.synthetic else 'real'}**",
                   f"- command: `{m.get('command')}`",
                   f"- git revision: `{m.get('git_revision')}`; date {m.get('date_utc')}",
                   f"- device: {dev.get('device_name')} ({dev.get('device')}, compute capability "
                   f"{dev.get('compute_capability', '-')}, {dev.get('total_memory_gib', '-')} GiB, driver "
                   f"{dev.get('driver', '-')}); torch {dev.get('torch')}, CUDA {dev.get('cuda_runtime')}, "
                   f"Python {dev.get('python')}",
                   f"- packages: {packages}",
                   *(f"- {line}" for line in extra), "")


def _judge_settings(js: dict | None) -> str:
    if not js:
        return ""
    keys = ("dtype", "device", "decoding", "max_new_tokens", "max_retries", "repetition_penalty", "batch_size",
            "vision_preprocessing")
    return " (" + ", ".join(f"{k} {js[k]}" for k in keys if k in js) + ")"


# --------------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="result folders of python -m harness.gedit (summary.json) or harness.profile (profile.json)")
    p.add_argument("-o", "--out", required=True, help="markdown file to write; figures go to <stem>_files/ beside it")
    p.add_argument("--dataset", default=None,
                   help="GEdit-Bench copy to read the grid's source images from (default: the one each run recorded)")
    p.add_argument("--grid-samples", type=int, default=8,
                   help="image-grid rows per gedit run and language (0 = no grid; default 8)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.grid_samples < 0:
        print("error: --grid-samples must be >= 0", file=sys.stderr)
        return 2
    try:
        out = build_report(args.runs, args.out, dataset=args.dataset, grid_samples=args.grid_samples)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} and its figures in {out.parent / (out.stem + '_files')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
