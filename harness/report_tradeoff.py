"""The report's speed-quality trade-off: one point per arm, seconds per edit against the Q_O delta to the baseline
(95% interval) and against SSIM fidelity to the baseline's edits, so the Pareto front shows at a glance.

Seconds per edit come from a profile run's end-to-end median when one holds the arm (a quiet, repeated measurement),
else from the gedit run's generation records (median seconds per sample).
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.core import plots
from harness.core.markdown import Chart, Section, fmt, fmt_ci, fmt_signed, table
from harness.core.vocab import END_TO_END, OVERALL_METRIC
from harness.profile.record import ProfileRecord
from harness.report_gedit import GeditRun


@dataclass(frozen=True)
class TradeoffPoint:
    """One arm of one language: seconds per edit (and their source), Q_O delta [95% CI], SSIM to the baseline."""

    arm: str
    seconds: float | None
    time_source: str | None        # "profile" | "gedit" | None
    speedup: float | None          # baseline seconds / arm seconds
    q_o_delta: float | None        # arm - baseline, unweighted task mean (0 for the baseline)
    q_o_ci95: tuple[float, float] | None
    ssim: float | None             # per-sample mean SSIM of the arm's edits to the baseline's (1 for the baseline)


def seconds_per_edit(run: GeditRun, profiles: list[ProfileRecord]) -> dict[str, tuple[float, str]]:
    """{arm: (seconds, source)}: a profile's end-to-end median where one holds the arm, else the gedit median."""
    out: dict[str, tuple[float, str]] = {}
    gen = (run.summary.get("throughput") or {}).get("generation") or {}
    for arm in run.summary.get("arms", []):
        ms = next((p.arms[arm].stage_ms(END_TO_END) for p in profiles if arm in p.arms
                   and p.arms[arm].stage_ms(END_TO_END) is not None), None)
        if ms is not None:
            out[arm] = (ms / 1e3, "profile")
        elif (gen.get(arm) or {}).get("seconds_per_sample_median") is not None:
            out[arm] = (float(gen[arm]["seconds_per_sample_median"]), "gedit")
    return out


def tradeoff_points(run: GeditRun, lang: str, profiles: list[ProfileRecord] = ()) -> list[TradeoffPoint]:
    """Every arm of `run` in `lang`, baseline first (delta 0, SSIM 1), the others in the run's arm order."""
    s = run.summary
    base = s.get("baseline")
    times = seconds_per_edit(run, list(profiles))
    base_s = times.get(base, (None,))[0]
    deltas = {d["arm"]: ((d.get("languages") or {}).get(lang) or {}).get(OVERALL_METRIC, {}).get("overall_task_mean")
              or {} for d in s.get("deltas", [])}
    points = []
    for arm in [base, *(a for a in s.get("arms", []) if a != base)]:
        sec, source = times.get(arm, (None, None))
        d = deltas.get(arm, {})
        fid = (((s.get("fidelity") or {}).get(arm) or {}).get(lang) or {}).get("overall_per_sample") or {}
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
    return plots.scatter_panels(path, x, {f"Q_O - {baseline} (95% CI)": delta, f"SSIM to {baseline} edits": ssim},
                                title=title, x_label="seconds per edit (lower is faster)")


def tradeoff_sections(run: GeditRun, profiles: list[ProfileRecord] = ()) -> list[Section]:
    """One section per language: the points as a table, a one-line caption and the chart."""
    base = run.summary.get("baseline")
    out = []
    for lang in run.languages:
        points = tradeoff_points(run, lang, profiles)
        if not any(p.seconds is not None for p in points):
            out.append(Section(f"Speed vs quality ({lang})", ["No generation times recorded for any arm.", ""]))
            continue
        rows = [[p.arm, fmt(p.seconds, 3), p.time_source or "-", fmt(p.speedup, 2, "x"), fmt_signed(p.q_o_delta),
                 fmt_ci(list(p.q_o_ci95) if p.q_o_ci95 else None), fmt(p.ssim, 4)] for p in points]
        lines = table(["arm", "s/edit", "time from", f"speed-up vs {base}", "Q_O delta", "95% CI",
                       "SSIM to baseline"], rows)
        lines += [f"Each point is one arm: left is faster, up is better quality than {base} (whiskers: 95% paired "
                  f"bootstrap interval); the right panel shows how close its edits stay to {base}'s.", ""]
        chart = Chart(f"tradeoff_{lang}", f"speed vs quality ({lang})", lambda path, pts=points: draw_tradeoff(
            path, pts, title=f"Speed vs quality: {run.label}, {lang}", baseline=base))
        out.append(Section(f"Speed vs quality ({lang})", lines, chart))
    return out
