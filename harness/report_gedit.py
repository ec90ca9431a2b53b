"""The report's GEdit sections, read from a gedit run's summary.json, scores.csv and selection.json.

Kept apart from harness/report.py so that the gedit wing's own renderer can replace this module in one move.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.core import plots
from harness.core.markdown import (Document, cell, code, escape_emphasis, excludes_zero, fmt, fmt_ci, fmt_signed, table,
                                   truncate)
from harness.core.vocab import METRIC_LABELS, METRICS, OVERALL_METRIC

OVERALL = "overall (task mean)"


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

    @property
    def languages(self) -> list[str]:
        return sorted({r["language"] for r in self.summary.get("per_task", [])})



def headline_lines(run: GeditRun) -> list[str]:
    """Headline bullets of one gedit run: paired deltas with their intervals, and fidelity to the baseline."""
    s = run.summary
    lines = []
    for d in s.get("deltas", []):
        for lang, metrics in sorted(d.get("languages", {}).items()):
            parts = []
            for m in METRICS:
                o = _dig(metrics, m, "overall_task_mean") or {}
                parts.append(f"{METRIC_LABELS[m]} {fmt_signed(o.get('delta'))} {fmt_ci(o.get('ci95'))}"
                             + (" **distinguishable from zero**" if excludes_zero(o.get("ci95")) else ""))
            o = _dig(metrics, OVERALL_METRIC, "overall_task_mean") or {}
            verdict = o.get("verdict", "")
            heads = {h["arm"]: h for h in s.get("headline", []) if h["language"] == lang}
            absolute = " vs ".join(f"{a} {fmt(heads[a].get(OVERALL_METRIC))}" for a in (d["baseline"], d["arm"]) if a in heads)
            lines.append(f"- **{escape_emphasis(run.label)}**, {lang}: {d['arm']} - {d['baseline']} over "
                         f"{o.get('n_pairs', '?')} paired samples (unweighted task mean, 95% bootstrap CI): "
                         + "; ".join(parts) + f". Q_O {absolute or ''}: {verdict}.")
            fid = _dig(s, "fidelity", d["arm"], lang, "overall_per_sample")
            if fid:
                lines.append(f"  Fidelity of the {d['arm']} edits to the {d['baseline']} edits (same seed): PSNR "
                             f"{fmt(fid.get('psnr_db'))} dB, SSIM {fmt(fid.get('ssim'), 4)} over {fid.get('n')} "
                             f"pairs ({fid.get('n_identical')} identical).")
    if not s.get("deltas"):
        lines.append(f"- **{escape_emphasis(run.label)}**: one arm ({', '.join(s.get('arms', []))}), no comparison.")
    return lines


def section(report: Document, run: GeditRun, tag: str) -> None:
    """The quality section of one gedit run: headline scores, per-task tables and charts, paired deltas,
    fidelity, judge failures, throughput."""
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
    for lang in run.languages:
        _gedit_task_tables(report, run, lang, tag)
    _fidelity_tables(report, run)
    _judge_failures(report, run)
    _throughput(report, run)



def _gedit_headline_table(report: Document, run: GeditRun) -> None:
    rows = []
    for h in run.summary.get("headline", []):
        rows.append([h["arm"], h["language"], *(fmt(h.get(m)) for m in METRICS),
                     *(fmt(h.get(f"{m}_per_sample")) for m in METRICS),
                     f"{h.get('n_scored')}/{h.get('n_selected')}", h.get("n_judge_failures")])
    report.add("### Headline scores", "")
    report.add(*table(["arm", "lang", "Q_SC", "Q_PQ", "Q_O", "Q_SC/sample", "Q_PQ/sample", "Q_O/sample",
                       "scored", "judge fail"], rows, align=["l", "l", *["r"] * 8]))


def _gedit_task_tables(report: Document, run: GeditRun, lang: str, tag: str) -> None:
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
            rows.append([f"**{label}**", rec[OVERALL_METRIC].get("n_pairs"), *(_delta_cell(rec[m]) for m in METRICS)])
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


def _fidelity_tables(report: Document, run: GeditRun) -> None:
    fidelity = run.summary.get("fidelity") or {}
    if not fidelity:
        return
    report.add("### Fidelity to the baseline edits (PSNR / SSIM, same seed)", "",
               "No judge involved: each edit against the baseline arm's edit of the same sample. PSNR is averaged "
               "over non-identical pairs.", "")
    for arm, fid in fidelity.items():
        if fid.get("same_settings_but_precision") is False:
            report.add("> [!NOTE]", f"> The {arm} and {fid.get('baseline')} edits were not made with the same "
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


def _judge_failures(report: Document, run: GeditRun) -> None:
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
            rows = [[r.arm, r.language, r.task_type, code(str(r.key), 12), r.status, cell(truncate(str(r.failure), 80))]
                    for r in shown.itertuples()]
            report.add(f"Failed samples ({len(bad)}; first {len(shown)} from scores.csv):", "")
            report.add(*table(["arm", "lang", "task", "key", "status", "why"], rows, align=["l"] * 6))


def _throughput(report: Document, run: GeditRun) -> None:
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
        batching = (f"batch {j.get('batch_size')}" if j.get("batch_size")
                    else f"{j.get('concurrency')} requests in flight to a server")
        report.add(f"Judge: {fmt(j.get('seconds_per_sample'))} s per sample ({j.get('calls_per_sample')} calls, "
                   f"{batching}, {fmt(j.get('attempts_per_call'))} attempts per call), peak VRAM "
                   f"{fmt(j.get('peak_vram_gib_max'))} GiB, over {j.get('n_samples')} judged samples.", "")



def provenance_lines(run: GeditRun) -> list[str]:
    """What the gedit run used: model, dataset, judge and its settings, prompt set hashes, selection, overrides."""
    s = run.summary
    return [f"OmniGen2 model: `{s.get('model')}`",
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


def _judge_settings(js: dict | None) -> str:
    if not js:
        return ""
    keys = ("kind", "dtype", "device", "decoding", "max_new_tokens", "max_tokens", "max_retries", "repetition_penalty",
            "batch_size", "ordering", "attention", "served_model", "url", "concurrency", "vision_preprocessing",
            "vision_attention", "decode")
    short = {"vision_attention", "decode"}  # the speed options' mode names; the recorded text says what each does
    return " (" + ", ".join(f"{k} {str(js[k]).split()[0] if k in short else js[k]}" for k in keys if k in js) + ")"


def _dig(data: Any, *keys: Any) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data
