"""A finished GEdit run as markdown: summary.md and the report (harness/report.py) compose the same sections, in
the same words.

- `banner_lines` (not-comparable and synthetic-weights warnings), `setup_lines` (what ran), `headline_lines`
  (paired deltas with their 95% intervals and verdicts, fidelity), `provenance_lines`: lines each output places.
- `sections(run)`: per block (fullset, then Intersection) the headline scores and one task table per language with
  its chart, the paired deltas per language, fidelity, judge failures, throughput and the speed-quality trade-off
  (harness/gedit/tradeoff.py).
- `summary_markdown(run)`: summary.md, all of the above without figures. The report draws the charts and adds the
  image grids (harness/gedit/grid.py) and its cross-run headline.
Numbers are read from the run's files (summary.json, scores.csv) and only rounded, never recomputed.
"""
from __future__ import annotations

from typing import Mapping

from harness.core import plots
from harness.core.markdown import (Chart, Section, cell, code, escape_emphasis, excludes_zero, fmt, fmt_ci, fmt_signed,
                                   manifest_lines, render_sections, table, truncate)
from harness.core.vocab import METRIC_LABELS, METRICS, OVERALL_METRIC
from harness.gedit.record import GeditRun, GeditSummary
from harness.gedit.tradeoff import tradeoff_sections

FULLSET, INTERSECTION = "fullset", "intersection"
OVERALL_TASK_MEAN = "overall (task mean)"
OVERALL_SCOPES = (("overall_task_mean", OVERALL_TASK_MEAN), ("overall_per_sample", "overall (per sample)"))
BLOCK_NOTES = {
    FULLSET: "Every selected sample (upstream's fullset block). Official rule: the unweighted mean over the task "
             "groups with a scored sample (their number under `task groups`), the per-sample mean beside it; "
             "scores 0-10.",
    INTERSECTION: "Only the samples whose dataset flag `Intersection_exist` is true (upstream's Intersection block); "
                  "same rules.",
}
SAME_SETTINGS_NOTES = {
    False: "were not made with the same settings apart from the precision, so PSNR / SSIM measure more than the "
           "precision change",
    None: "were made with settings this run did not record, so PSNR / SSIM may measure more than the precision change",
}
FAILED_SAMPLES_SHOWN = 20
FAILURE_WIDTH = 80  # characters of a failure reason shown in a table
KEY_WIDTH = 12      # characters of a sample key shown in a table


def summary_markdown(run: GeditRun) -> str:
    """summary.md: banners, title, settings, headline, every section at level 2 (no figures), provenance."""
    summary = run.summary
    lines = [*banner_lines(summary), f"# GEdit-Bench: {summary.task.task}", "", *setup_lines(summary),
             "## Headline", "", *headline_lines(summary), "", *render_sections(sections(run), level=2),
             "## Provenance", "", *provenance_lines(summary)]
    return "\n".join(lines).rstrip("\n") + "\n"


def sections(run: GeditRun, *, measured: Mapping[str, float] | None = None) -> list[Section]:
    """Every section of a run, in reading order. measured: seconds per edit per arm from a profile run (the
    trade-off's time where given; else the run's own generation times)."""
    summary = run.summary
    out = []
    for block, headline, per_task in ((FULLSET, summary.headline, summary.per_task),
                                      (INTERSECTION, summary.intersection.headline, summary.intersection.per_task)):
        out.append(headline_scores_section(headline, block))
        for lang in sorted({r["language"] for r in per_task}):
            out.append(per_task_section(run, [r for r in per_task if r["language"] == lang], lang, block))
            if block == FULLSET:
                out += [delta_section(run, d, lang) for d in summary.deltas if lang in d["languages"]]
    out += [s for s in (fidelity_section(summary), failures_section(run), throughput_section(summary)) if s]
    return out + tradeoff_sections(run, measured)


# --------------------------------------------------------------------------------------------------- plain lines
def banner_lines(summary: GeditSummary) -> list[str]:
    """The not-comparable line (a judge setup other than the official one) and the synthetic-weights warning."""
    lines = [f"> **{summary.comparability.headline}**", ""] if summary.comparability.headline else []
    return lines + ([f"> **{summary.warning}**", ""] if summary.synthetic and summary.warning else [])


def setup_lines(summary: GeditSummary) -> list[str]:
    """What ran: arms, samples, generation settings, judge, prompt set and protocol."""
    gen, prompts = summary.task.generation, summary.prompt_set
    return [f"Arms {', '.join(f'`{a}`' for a in summary.arms)} (baseline `{summary.baseline}`); "
            f"{summary.selection.get('n_samples')} samples per arm (selection hash "
            f"{str(summary.selection.get('uids_sha256'))[:16]}...). Steps {gen.steps}, seed {gen.seed}, resolution "
            f"{gen.resolution or 'of the input'}, guidance text {gen.text_guidance_scale} / image "
            f"{gen.image_guidance_scale}, time shift {gen.time_shift}. Judge `{summary.judge.model}` with prompt set "
            f"`{prompts.get('name')}` (sha256 {str((prompts.get('sha256') or {}).get('set'))[:16]}...), protocol "
            f"`{summary.protocol.name}`.", ""]


def headline_lines(summary: GeditSummary, label: str | None = None) -> list[str]:
    """One bullet per (arm, language): the paired deltas with their 95% intervals, Q_O per arm and the verdict, then
    the fidelity of the arm's edits to the baseline's. `label` names the run (the report's cross-run headline)."""
    who = f"**{escape_emphasis(label)}**, " if label else ""
    lines = []
    for d in summary.deltas:
        for lang, metrics in sorted(d["languages"].items()):
            parts = []
            for m in METRICS:
                o = metrics[m]["overall_task_mean"]
                parts.append(f"{METRIC_LABELS[m]} {fmt_signed(o['delta'])} {fmt_ci(o['ci95'])}"
                             + (" **distinguishable from zero**" if excludes_zero(o["ci95"]) else ""))
            o = metrics[OVERALL_METRIC]["overall_task_mean"]
            heads = {h["arm"]: h for h in summary.headline if h["language"] == lang}
            absolute = " vs ".join(f"{a} {fmt(heads[a][OVERALL_METRIC])}" for a in (d["baseline"], d["arm"])
                                   if a in heads)
            lines.append(f"- {who}{lang}: {d['arm']} - {d['baseline']} over {o['n_pairs']} paired samples "
                         f"(unweighted task mean, 95% bootstrap CI): " + "; ".join(parts)
                         + f". {METRIC_LABELS[OVERALL_METRIC]} {absolute}: {o['verdict']}.")
            fid = (summary.fidelity.get(d["arm"]) or {}).get(lang, {}).get("overall_per_sample")
            if fid:
                lines.append(f"  Fidelity of the {d['arm']} edits to the {d['baseline']} edits (same seed): PSNR "
                             f"{fmt(fid['psnr_db'])} dB, SSIM {fmt(fid['ssim'], 4)} over {fid['n']} pairs "
                             f"({fid['n_identical']} identical).")
    if not summary.deltas:
        lines.append(f"- {who}one arm ({', '.join(summary.arms)}), no comparison.")
    return lines


def provenance_lines(summary: GeditSummary) -> list[str]:
    """Command, revision, device, packages, then what the run used: model, dataset, judge and its settings, prompt set
    hashes, selection, overrides."""
    prompts, task_data = summary.prompt_set, summary.task.dataset
    sha = prompts.get("sha256") or {}
    overrides = "; ".join(f"{o['field']}: {o['old']!r} -> {o['new']!r} ({o['source']})" for o in summary.overrides)
    return [*manifest_lines(summary.provenance),
            f"- OmniGen2 model: `{summary.model}`",
            f"- dataset: `{summary.dataset}` (task dataset `{task_data.id}`, revision `{task_data.revision}`)",
            f"- judge: `{summary.judge.model}`" + _judge_settings(summary.judge_settings),
            f"- prompt set: `{prompts.get('name')}` from `{prompts.get('origin')}`, sha256 `{sha.get('set')}` "
            f"(SC `{sha.get('sc')}`, PQ `{sha.get('pq')}`); protocol `{summary.protocol.name}`",
            f"- sample selection: {summary.selection.get('n_samples')} samples, uids sha256 "
            f"`{summary.selection.get('uids_sha256')}`",
            f"- overrides: {overrides or 'none'}", ""]


def _judge_settings(js: dict | None) -> str:
    if not js:
        return ""
    keys = ("kind", "dtype", "device", "decoding", "max_new_tokens", "max_tokens", "max_retries", "repetition_penalty",
            "batch_size", "ordering", "attention", "served_model", "url", "concurrency", "vision_preprocessing",
            "vision_attention", "decode")
    short = {"vision_attention", "decode"}  # the speed options' mode names; the recorded text says what each does
    return " (" + ", ".join(f"{k} {str(js[k]).split()[0] if k in short else js[k]}" for k in keys if k in js) + ")"


# ------------------------------------------------------------------------------------------------------- scores
def _block_title(block: str, title: str) -> str:
    """Fullset sections go by their plain title; the Intersection's are prefixed."""
    return title if block == FULLSET else f"Intersection: {title[0].lower()}{title[1:]}"


def headline_scores_section(headline: list[dict], block: str) -> Section:
    """Per arm and language: the official task-mean Q_SC / Q_PQ / Q_O and the per-sample means beside them."""
    rows = [[h["arm"], h["language"], *(fmt(h[m]) for m in METRICS), *(fmt(h[f"{m}_per_sample"]) for m in METRICS),
             f"{h['n_scored']}/{h['n_selected']}", h["n_task_groups"], h["n_judge_failures"]] for h in headline]
    lines = [BLOCK_NOTES[block], ""]
    lines += table(["arm", "lang", *(METRIC_LABELS[m] for m in METRICS), *(f"{METRIC_LABELS[m]}/sample" for m in METRICS),
                    "scored", "task groups", "judge failures"], rows, align=["l", "l", *["r"] * 9]) if rows \
        else ["No scored sample in this block.", ""]
    return Section(_block_title(block, "Headline scores"), lines)


def per_task_section(run: GeditRun, per_task: list[dict], lang: str, block: str) -> Section:
    """One row per task group of one language and block: samples scored and the means of every arm side by side,
    with a chart that adds the block's headline as a last group."""
    arms = run.summary.arms
    by = {(r["arm"], r["task_type"]): r for r in per_task}
    tasks = sorted({r["task_type"] for r in per_task})
    rows = [[t, "/".join(str(by[(a, t)]["n_scored"]) if (a, t) in by else "-" for a in arms),
             *(fmt(by[(a, t)][m]) if (a, t) in by else "-" for m in METRICS for a in arms)] for t in tasks]
    lines = table(["task", "n scored (" + "/".join(arms) + ")",
                   *(f"{METRIC_LABELS[m]} {a}" for m in METRICS for a in arms)], rows)
    headline = run.summary.headline if block == FULLSET else run.summary.intersection.headline
    by |= {(h["arm"], OVERALL_TASK_MEAN): h for h in headline if h["language"] == lang}  # the headline as a last group
    groups = [*tasks, OVERALL_TASK_MEAN]
    panels = {METRIC_LABELS[m]: {a: [_score_interval(by.get((a, t)), m) for t in groups] for a in arms}
              for m in METRICS}
    name = f"{lang}_scores" if block == FULLSET else f"{lang}_{block}_scores"
    where = "" if block == FULLSET else ", Intersection"
    chart = Chart(name, f"scores per task group ({lang}{where})", lambda path: plots.metric_panels(
        path, groups, panels, title=f"GEdit-Bench scores per task group ({lang}{where}): {run.label}",
        value_label="0-10", ylim=(0, 10), note=_score_note(per_task)))
    return Section(_block_title(block, f"Per task group ({lang})"), lines, chart)


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


# ------------------------------------------------------------------------------------------------ paired deltas
def delta_section(run: GeditRun, d: dict, lang: str) -> Section:
    """One arm minus the baseline in one language, per task group and overall: the mean paired difference of each
    metric with its bootstrap 95% interval, and the Q_O verdict; a subsection of the language's task table."""
    metrics = d["languages"][lang]
    per_task = {m: {r["task_type"]: r for r in metrics[m]["per_task"]} for m in METRICS}
    tasks = sorted(per_task[OVERALL_METRIC])
    records = [(t, {m: per_task[m].get(t) for m in METRICS}) for t in tasks]
    records += [(label, {m: metrics[m][scope] for m in METRICS}) for scope, label in OVERALL_SCOPES]
    rows = [[t if t in tasks else f"**{t}**", rec[OVERALL_METRIC]["n_pairs"] if rec[OVERALL_METRIC] else "-",
             *(_delta_cell(rec[m]) for m in METRICS), _verdict(rec[OVERALL_METRIC])] for t, rec in records]
    lines = [f"Mean difference with its {round(100 * d.get('confidence', 0.95))}% bootstrap interval "
             f"({d['n_bootstrap']} resamples, seed {d['seed']}); **bold** = the interval excludes 0 (distinguishable "
             "from zero).", ""]
    lines += table(["task", "pairs", *(f"Δ{METRIC_LABELS[m]} [95% CI]" for m in METRICS),
                    f"{METRIC_LABELS[OVERALL_METRIC]} verdict"], rows, align=["l", "r", "r", "r", "r", "l"])
    series = {METRIC_LABELS[m]: [_delta_interval(rec[m]) for _, rec in records] for m in METRICS}
    labels = [t for t, _ in records]
    title = f"{d['arm']} - {d['baseline']}, paired per sample ({lang})"
    chart = Chart(f"{lang}_{_slug(d['arm'])}_deltas", f"paired deltas {d['arm']} - {d['baseline']} ({lang})",
                  lambda path: plots.grouped_bars(
                      path, labels, series, title=f"{d['arm']} - {d['baseline']} per task group ({lang})",
                      value_label="score difference (points); whiskers: 95% bootstrap CI", horizontal=True,
                      value_labels=False, zero_line=True))
    return Section(title, lines, chart, depth=1)


def _delta_cell(rec: dict | None) -> str:
    if not rec:
        return "-"
    text = f"{fmt_signed(rec['delta'])} {fmt_ci(rec['ci95'])}"
    return f"**{text}**" if excludes_zero(rec["ci95"]) else text


def _verdict(rec: dict | None) -> str:
    """The recorded verdict without its parenthesis (the bold cells already show which intervals exclude 0)."""
    return rec["verdict"].split(" (")[0] if rec else "-"


def _delta_interval(rec: dict | None) -> plots.Interval | None:
    if not rec or rec.get("delta") is None:
        return None
    return plots.Interval(rec["delta"], *(rec["ci95"] or (None, None)))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)


# -------------------------------------------------------------------------------- fidelity, failures, throughput
def fidelity_section(summary: GeditSummary) -> Section | None:
    """PSNR / SSIM of each arm's edits against the baseline's edits of the same samples (None with one arm)."""
    if not summary.fidelity:
        return None
    lines = ["No judge involved: each edit against the baseline arm's edit of the same sample. PSNR is averaged "
             "over non-identical pairs.", ""]
    for arm, fid in summary.fidelity.items():
        same = fid.get("same_settings_but_precision")
        if same in SAME_SETTINGS_NOTES:
            lines += ["> [!NOTE]", f"> The {arm} and {fid['baseline']} edits {SAME_SETTINGS_NOTES[same]}.", ""]
        for lang, res in sorted((k, v) for k, v in fid.items() if isinstance(v, dict) and "per_task" in v):
            rows = [[r["task_type"], r["n"], fmt(r["psnr_db"]), r["n_identical"], fmt(r["ssim"], 4)]
                    for r in res["per_task"]]
            t, o = res["overall_task_mean"], res["overall_per_sample"]
            rows.append([f"**{OVERALL_TASK_MEAN}**", f"{t['n_task_groups']} groups", fmt(t["psnr_db"]), "-",
                         fmt(t["ssim"], 4)])
            rows.append([f"**{OVERALL_SCOPES[1][1]}**", o["n"], fmt(o["psnr_db"]), o["n_identical"], fmt(o["ssim"], 4)])
            lines += [f"{arm} vs {fid['baseline']} ({lang}); missing or size-mismatched pairs: "
                      f"{res.get('n_missing_or_mismatched', 0)}", ""]
            lines += table(["task", "n", "PSNR dB", "identical", "SSIM"], rows)
    return Section("Fidelity to the baseline edits (PSNR / SSIM, same seed)", lines)


def failures_section(run: GeditRun) -> Section:
    """Per arm and language: judge failures, out-of-range scores, missing images, undecodable inputs, samples not
    judged yet (all excluded from the means, never scored); then the failed samples from scores.csv."""
    lines = ["A sample whose judge answers could not be parsed after the retries, or held scores outside 0-10, is "
             "excluded from the means, never given a score; so is one whose edit or input image is missing or that "
             "is not judged yet (run the judge stage).", ""]
    rows = []
    for arm, langs in run.summary.judge_failures.items():
        for lang, f in sorted(langs.items()):
            per = ", ".join(f"{t}: {n}" for t, n in sorted(f["per_task"].items()) if n) or "none"
            rows.append([arm, lang, f["total"], f["out_of_range"], f["missing_images"], f.get("input_errors", "-"),
                         f.get("not_judged", "-"), cell(per)])
    lines += table(["arm", "lang", "judge failures", "out of range", "missing images", "input errors", "not judged",
                    "per task"], rows, align=["l", "l", "r", "r", "r", "r", "r", "l"])
    unjudged = [f"- **{arm} / {lang}: {f['not_judged']} not judged yet** (run the judge stage)"
                for arm, langs in run.summary.judge_failures.items() for lang, f in sorted(langs.items())
                if f.get("not_judged")]
    lines += [*unjudged, ""] if unjudged else []
    scores = run.scores
    bad = scores[scores["status"] != "ok"] if scores is not None and len(scores) else None
    if bad is not None and len(bad):
        shown = bad.sort_values(["arm", "language", "task_type", "key"]).head(FAILED_SAMPLES_SHOWN)
        rows = [[r.arm, r.language, r.task_type, code(str(r.key), KEY_WIDTH), r.status,
                 cell(truncate(str(r.failure), FAILURE_WIDTH)) if isinstance(r.failure, str) else "-"]
                for r in shown.itertuples()]
        lines += [f"Failed samples ({len(bad)}; first {len(shown)} from scores.csv):", ""]
        lines += table(["arm", "lang", "task", "key", "status", "why"], rows, align=["l"] * 6)
    return Section("Judge failures", lines)


def throughput_section(summary: GeditSummary) -> Section | None:
    """Seconds per edit and peak VRAM of generation per arm, and of the judge (None when nothing was recorded)."""
    tp = summary.throughput
    if not tp.generation and not tp.judge:
        return None
    rows = [[arm, g.n_samples, fmt(g.seconds_per_sample_mean, 3), fmt(g.seconds_per_sample_median, 3),
             fmt(g.seconds_per_sample_after_first, 3), fmt(g.peak_vram_gib_max), g.steps if g.steps else "-",
             "x".join(str(v) for v in g.output_size or []) or "-"] for arm, g in tp.generation.items()]
    lines = table(["generation arm", "samples", "s/sample (mean)", "s/sample (median)", "s/sample after the first",
                   "peak VRAM GiB", "steps", "output"], rows) if rows else []
    j = tp.judge
    if j:
        batching = f"batch {j.batch_size}" if j.batch_size else f"{j.concurrency} requests in flight to a server"
        failed = f", {j.transport_failures} requests never answered" if j.transport_failures else ""
        lines += [f"Judge: {fmt(j.seconds_per_sample, 3)} s per sample ({j.calls_per_sample} calls, {batching}, "
                  f"{fmt(j.attempts_per_call)} attempts per call{failed}), peak VRAM {fmt(j.peak_vram_gib_max)} GiB, "
                  f"over {j.n_samples} judged samples.", ""]
    return Section("Throughput", lines)
