"""The speed-quality trade-off of a GEdit run: one point per arm, seconds per edit against the Q_O delta to the
baseline (95% interval) and against SSIM fidelity to the baseline's edits, so the Pareto front shows at a glance.

Seconds per edit are the run's own generation records (median seconds per sample) unless the caller measured the
arm more carefully: the report passes a profile run's end-to-end medians (quiet, repeated), which win.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from harness.core import plots
from harness.core.markdown import Chart, Section, fmt, fmt_ci, fmt_signed, table
from harness.core.vocab import OVERALL_METRIC
from harness.gedit.record import GeditRun, GeditSummary

FROM_GEDIT = "gedit"      # the time source of an arm timed by the run's own generation records
FROM_PROFILE = "profile"  # ... by a profile run (what the report passes as `measured`)


@dataclass(frozen=True)
class TradeoffPoint:
    """One arm of one language: seconds per edit (and their source), Q_O delta [95% CI], SSIM to the baseline."""

    arm: str
    seconds: float | None
    time_source: str | None        # FROM_PROFILE | FROM_GEDIT | None
    speedup: float | None          # baseline seconds / arm seconds
    q_o_delta: float | None        # arm - baseline, unweighted task mean (0 for the baseline)
    q_o_ci95: tuple[float, float] | None
    ssim: float | None             # per-sample mean SSIM of the arm's edits to the baseline's (1 for the baseline)


def seconds_per_edit(summary: GeditSummary, measured: Mapping[str, float] | None = None
                     ) -> dict[str, tuple[float, str]]:
    """{arm: (seconds, source)}: `measured[arm]` (seconds, from a profile run) where given, else the median seconds
    per sample of the run's generation records."""
    measured = measured or {}
    out: dict[str, tuple[float, str]] = {}
    for arm in summary.arms:
        gen = summary.throughput.generation.get(arm)
        if measured.get(arm) is not None:
            out[arm] = (float(measured[arm]), FROM_PROFILE)
        elif gen is not None:
            out[arm] = (gen.seconds_per_sample_median, FROM_GEDIT)
    return out


def tradeoff_points(summary: GeditSummary, lang: str, measured: Mapping[str, float] | None = None
                    ) -> list[TradeoffPoint]:
    """Every arm of the run in `lang`, baseline first (delta 0, SSIM 1), the others in the run's arm order."""
    base = summary.baseline
    times = seconds_per_edit(summary, measured)
    base_s = times.get(base, (None,))[0]
    deltas = {d["arm"]: d["languages"].get(lang, {}).get(OVERALL_METRIC, {}).get("overall_task_mean") or {}
              for d in summary.deltas}
    points = []
    for arm in [base, *(a for a in summary.arms if a != base)]:
        sec, source = times.get(arm, (None, None))
        d = deltas.get(arm, {})
        fid = (summary.fidelity.get(arm) or {}).get(lang, {}).get("overall_per_sample") or {}
        ci = d.get("ci95")
        points.append(TradeoffPoint(
            arm=arm, seconds=sec, time_source=source, speedup=base_s / sec if base_s and sec else None,
            q_o_delta=0.0 if arm == base else d.get("delta"), q_o_ci95=tuple(ci) if ci else None,
            ssim=1.0 if arm == base else fid.get("ssim")))
    return points


def draw_tradeoff(path, points: list[TradeoffPoint], *, title: str, baseline: str):
    """The two-panel PNG of `points` (those with a time): Q_O delta with its 95% CI, SSIM to the baseline."""
    timed = [p for p in points if p.seconds is not None]
    x = {p.arm: p.seconds for p in timed}
    delta = {p.arm: None if p.q_o_delta is None else plots.Interval(p.q_o_delta, *(p.q_o_ci95 or (None, None)))
             for p in timed}
    ssim = {p.arm: None if p.ssim is None else plots.Interval(p.ssim) for p in timed}
    return plots.scatter_panels(path, x, {f"{OVERALL_METRIC} - {baseline} (95% CI)": delta,
                                          f"SSIM to {baseline} edits": ssim},
                                title=title, x_label="seconds per edit (lower is faster)")


def tradeoff_sections(run: GeditRun, measured: Mapping[str, float] | None = None) -> list[Section]:
    """One section per language (none for a one-arm run): the points as a table, a caption and the chart."""
    summary, base = run.summary, run.summary.baseline
    if len(summary.arms) < 2:
        return []
    out = []
    for lang in run.languages:
        title = f"Speed vs quality ({lang})"
        points = tradeoff_points(summary, lang, measured)
        if not any(p.seconds is not None for p in points):
            out.append(Section(title, ["No generation times recorded for any arm.", ""]))
            continue
        rows = [[p.arm, fmt(p.seconds, 3), p.time_source or "-", fmt(p.speedup, 2, "x"), fmt_signed(p.q_o_delta),
                 fmt_ci(p.q_o_ci95), fmt(p.ssim, 4)] for p in points]
        lines = table(["arm", "s/edit", "time from", f"speed-up vs {base}", f"{OVERALL_METRIC} delta", "95% CI",
                       "SSIM to baseline"], rows)
        lines += [f"Each point is one arm: left is faster, up is better quality than {base} (whiskers: 95% paired "
                  f"bootstrap interval); the right panel shows how close its edits stay to {base}'s. Times from "
                  f"`{FROM_GEDIT}`: median seconds per sample of this run's generation; from `{FROM_PROFILE}`: a "
                  "profile run's end-to-end median.", ""]
        chart = Chart(f"tradeoff_{lang}", f"speed vs quality ({lang})", lambda path, pts=points: draw_tradeoff(
            path, pts, title=f"Speed vs quality: {run.label}, {lang}", baseline=base))
        out.append(Section(title, lines, chart))
    return out
