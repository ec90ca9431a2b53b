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

This module adds the cross-run headline and the provenance; the profile sections are harness/profile/render.py's
(the same ones profile.md shows), the GEdit sections harness/gedit/render.py's (the same ones summary.md shows, with
the trade-off timed by the profiles given here), the image grids harness/gedit/grid.py's.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from harness.core.markdown import Document, escape_emphasis, fmt, fmt_stat, manifest_lines, render_sections
from harness.core.records import SYNTHETIC_WARNING
from harness.core.vocab import END_TO_END
from harness.gedit import render as gedit_render
from harness.gedit.grid import grid_sections
from harness.gedit.record import GeditRun
from harness.gedit.record import RecordError as GeditRecordError
from harness.gedit.run_folder import SUMMARY_JSON
from harness.profile import render as profile_render
from harness.profile.record import ProfileRecord, RecordError

TIMESTAMP_PREFIX = "Generated "


class ReportError(ValueError):
    """A folder that is not a result folder, or a result file that cannot be read; the message says the fix."""


# ------------------------------------------------------------------------------------------------------ loading
@dataclass
class ProfileRun:
    """A `python -m harness.profile` output folder: profile.json (+ kernels_<arm>.csv, profile.md)."""

    path: Path
    record: ProfileRecord

    kind = "profile"

    @property
    def synthetic(self) -> str | bool:
        return self.record.synthetic

    @property
    def label(self) -> str:
        return f"profile {self.record.task} ({self.path.name})"


def load_run(path: str | os.PathLike) -> GeditRun | ProfileRun:
    """Read one result folder; its kind is decided by the files it holds (summary.json or profile.json)."""
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"{path} is not a folder; pass the --out folder of a `python -m harness.gedit` or "
                          "`python -m harness.profile` run")
    has_summary, has_profile = (path / SUMMARY_JSON).is_file(), (path / "profile.json").is_file()
    if has_summary and has_profile:
        raise ReportError(f"{path} holds both summary.json and profile.json; give each run its own --out folder")
    if has_profile:
        try:
            return ProfileRun(path, ProfileRecord.from_json(path / "profile.json"))
        except RecordError as err:
            raise ReportError(str(err)) from None
    if has_summary:  # typed: a summary that does not say whether its weights were synthetic is refused
        try:
            return GeditRun.load(path)
        except GeditRecordError as err:
            raise ReportError(str(err)) from None
    raise ReportError(f"{path} holds neither summary.json (a `python -m harness.gedit` run; its score stage writes "
                      "it) nor profile.json (a `python -m harness.profile` run); point at the run's --out folder")


# ------------------------------------------------------------------------------------------------------- builder
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
    doc = Document(out)
    gedit = [r for r in runs if isinstance(r, GeditRun)]
    profile = [r for r in runs if isinstance(r, ProfileRun)]
    stamp = timestamp or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    doc.add("# OmniGen2 BF16 vs FP8: quality, latency, memory and kernels", "")
    _banner(doc, runs)
    doc.add(f"{TIMESTAMP_PREFIX}{stamp} by `python -m harness.report` from "
            + ", ".join(f"[`{_rel(r.path, out)}`]({_rel(r.path, out)}) ({r.kind})" for r in runs) + ".", "")
    _headline(doc, gedit, profile)
    for i, run in enumerate(profile, 1):
        _profile_section(doc, run, f"p{i}")
    for i, run in enumerate(gedit, 1):
        _gedit_section(doc, run, f"g{i}", [p.record for p in profile], dataset=dataset, grid_samples=grid_samples)
    _provenance(doc, runs)
    return doc.write()


def _rel(path: Path, out: Path) -> str:
    return os.path.relpath(Path(path).resolve(), out.resolve().parent).replace(os.sep, "/")


def _banner(doc: Document, runs: Sequence[GeditRun | ProfileRun]) -> None:
    synthetic = [r for r in runs if r.synthetic]
    if not synthetic:
        return
    which = ", ".join(f"{r.label}: synthetic {r.synthetic}" for r in synthetic)
    doc.add("> [!WARNING]", f"> **{SYNTHETIC_WARNING}**", ">",
            f"> Synthetic runs in this report: {which}. Their quality numbers and images are meaningless; "
            "timings and memory measure the real model shapes only when the synthetic size is `full`.", "")


def _profile_section(doc: Document, run: ProfileRun, tag: str) -> None:
    """The profile renderer's sections under one heading per run, with their charts drawn."""
    rec = run.record
    doc.add(f"## Latency and memory: {run.label}", "", *profile_render.setup_lines(rec), "",
            *profile_render.failure_lines(rec))
    sections = profile_render.sections(rec, link=lambda name: _rel(run.path / name, doc.out))
    doc.add(*render_sections(sections, level=3, draw=doc.chart_drawer(tag)))


def _gedit_section(doc: Document, run: GeditRun, tag: str, profiles: Sequence[ProfileRecord], *, dataset: str | None,
                   grid_samples: int) -> None:
    """The gedit renderer's sections (those of summary.md) under one heading per run, with their charts drawn, and
    the image grids."""
    summary = run.summary
    sections = gedit_render.sections(run, measured=profile_seconds(summary.arms, profiles))
    sections += grid_sections(run, dataset=dataset, limit=grid_samples)
    doc.add(f"## Quality: {run.label}", "", *gedit_render.banner_lines(summary), *gedit_render.setup_lines(summary))
    doc.add(*render_sections(sections, level=3, draw=doc.chart_drawer(tag)))


def profile_seconds(arms: Sequence[str], profiles: Sequence[ProfileRecord]) -> dict[str, float]:
    """{arm: seconds per edit} from the first profile run holding the arm (its end-to-end median): a quiet,
    repeated measurement, which the speed-quality trade-off prefers to the gedit run's own generation times."""
    out = {}
    for arm in arms:
        ms = next((p.arms[arm].stage_ms(END_TO_END) for p in profiles if arm in p.arms
                   and p.arms[arm].stage_ms(END_TO_END) is not None), None)
        if ms is not None:
            out[arm] = ms / 1e3
    return out


# ------------------------------------------------------------------------------------------------------ headline
def _headline(doc: Document, gedit: Sequence[GeditRun], profile: Sequence[ProfileRun]) -> None:
    doc.add("## Headline", "")
    if not gedit and not profile:
        doc.add("No runs.", "")
    for run in profile:
        doc.add(*_profile_headline(run))
    for run in gedit:
        doc.add(*gedit_render.headline_lines(run.summary, run.label))
    doc.add("")


def _profile_headline(run: ProfileRun) -> list[str]:
    """One bullet per arm after the first: end-to-end and per-step speed-up, peak VRAM, weights, fallback verdict."""
    rec = run.record
    names, sc = rec.arm_names, rec.scenario
    base = names[0]
    dev = rec.manifest.get("device", {}).get("device_name") or "?"
    modes = sorted({rec.arm_mode(n) for n in names})
    where = (f"{sc.get('height')}x{sc.get('width')}, {len(sc.get('references') or [])} reference(s), "
             f"{sc.get('steps')} steps, {'mode ' + modes[0] if len(modes) == 1 else 'modes per arm below'}, {dev}")
    lines = []
    for name in names[1:]:
        a, b = rec.arms[name], rec.arms[base]
        e2e_a, e2e_b = a.stage_stats(END_TO_END), b.stage_stats(END_TO_END)
        n = (e2e_a or {}).get("n")
        parts = [f"- **{escape_emphasis(rec.task)}** ({where}): **{name}** end to end "
                 f"**{fmt(rec.ratio(name, 'end_to_end_speedup'), 2, 'x')}** the speed of {base} (median [IQR] "
                 f"{fmt_stat(e2e_a, 0, flag_spread=False)} ms vs {fmt_stat(e2e_b, 0, flag_spread=False)} ms over "
                 f"{n if n is not None else '?'} repeats)"]
        if any((x or {}).get("high_spread") for x in (e2e_a, e2e_b)):
            parts.append(" (**high spread**: the interquartile range of the repeats exceeds 10% of the median, "
                         "so this ratio is not reliable)")
        if len(modes) > 1:
            parts.append(f" ({name} `{rec.arm_mode(name)}`, {base} `{rec.arm_mode(base)}`)")
        parts.append(f"; one denoise step {fmt(rec.ratio(name, 'denoise_step_speedup'), 2, 'x')}")
        mem_a, mem_b = a.memory_gib("run", "peak_allocated_gib"), b.memory_gib("run", "peak_allocated_gib")
        if mem_a is not None or mem_b is not None:
            parts.append(f"; peak VRAM of a run {fmt(mem_a, 3)} GiB vs {fmt(mem_b, 3)} GiB "
                         f"({name}/{base} = {fmt(rec.ratio(name, 'peak_allocated_run_ratio'))})")
        else:
            parts.append("; VRAM not measured on this device")
        parts.append(f"; transformer weights {name}/{base} = {fmt(rec.ratio(name, 'transformer_gib_ratio'))}")
        fb = a.fallback or {}
        if fb.get("checked"):
            parts.append("; FP8 fallback check not applicable on this device (FP8 emulated)" if fb.get("emulated")
                         else "; **FP8 FALLBACK DETECTED** (see below)" if fb.get("fallback_detected")
                         else "; no fallback kernels")
        lines.append("".join(parts) + ".")
    if len(names) == 1:
        lines.append(f"- **{run.label}**: one arm ({base}), no comparison.")
    return lines


# -------------------------------------------------------------------------------------------------- provenance
def _provenance(doc: Document, runs: Sequence[GeditRun | ProfileRun]) -> None:
    doc.add("## Provenance", "")
    for run in runs:
        doc.add(f"### {run.label}", "",
                f"- folder: [`{_rel(run.path, doc.out)}`]({_rel(run.path, doc.out)}) ({run.kind})",
                f"- weights: **{'synthetic ' + str(run.synthetic) if run.synthetic else 'real'}**")
        if isinstance(run, GeditRun):
            doc.add(*gedit_render.provenance_lines(run.summary))
            continue
        rec = run.record
        doc.add(*manifest_lines(rec.manifest),
                f"- model: `{rec.settings.get('model') or 'synthetic ' + str(rec.settings.get('synthetic'))}`",
                f"- scenario `{rec.task}` (overrides {rec.scenario.get('overrides') or 'none'})",
                f"- complete: {rec.complete}; schema version {rec.schema_version}", "")


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
    problem = _unwritable_output(Path(args.out))
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        out = build_report(args.runs, args.out, dataset=args.dataset, grid_samples=args.grid_samples)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} and its figures in {out.parent / (out.stem + '_files')}")
    return 0


def _unwritable_output(out: Path) -> str | None:
    """Why -o cannot be written (None when it can), found before any run folder is read."""
    if out.is_dir():
        return f"-o {out} is a folder; give the markdown file to write, e.g. -o {out / 'report.md'}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=".write-probe."):
            pass
    except OSError as err:
        return f"cannot write {out} ({err.strerror or err}); pass -o in a writable folder"
    return None


if __name__ == "__main__":
    sys.exit(main())
