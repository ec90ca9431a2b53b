"""A `GeditSummary` as markdown sections: summary.md is their concatenation, and the report composes the same ones.

Every section but the first starts with its `## ` heading; `summary_markdown` joins them with one blank line.
"""
from __future__ import annotations

import math

from harness.gedit.record import GeditSummary
from harness.gedit.scoring import METRICS

SAME_SETTINGS = {True: "same seed and settings", False: "WARNING: settings differ beyond precision",
                 None: "settings not recorded"}


def summary_markdown(summary: GeditSummary) -> str:
    """summary.md: banner, headline, per-task table (official style), deltas, fidelity, failures, provenance."""
    return "\n\n".join(summary_sections(summary))


def summary_sections(summary: GeditSummary) -> list[str]:
    """Every section of summary.md, in order (one per paired delta and per fidelity comparison)."""
    blocks = (("fullset", summary.headline, summary.per_task),
              ("Intersection", summary.intersection.headline, summary.intersection.per_task))
    return [title_section(summary),
            *(part for name, headline, per_task in blocks
              for part in (headline_section(headline, name), per_task_section(per_task, summary.arms, name))),
            *(delta_section(d) for d in summary.deltas),
            *(fidelity_section(arm, fid) for arm, fid in summary.fidelity.items()),
            failures_section(summary), throughput_section(summary), provenance_section(summary)]


def title_section(summary: GeditSummary) -> str:
    """Not-comparable and synthetic banners, title and one line of run settings (arms, judge, protocol, prompts,
    samples, steps)."""
    lines = [f"> **{summary.comparability.headline}**", ""] if summary.comparability.headline else []
    lines += [f"> **{summary.warning}**", ""] if summary.synthetic else []
    task, gen = summary.task, summary.task.generation
    prompts = summary.prompt_set
    lines += [f"# GEdit-Bench: {task.task}", "",
              f"Arms: {', '.join(summary.arms)} (baseline {summary.baseline}). Judge: `{summary.judge.model}`, "
              f"protocol `{summary.protocol.name}`, prompt set `{prompts['name']}` (sha256 {prompts['sha256']['set'][:16]}...). "
              f"Samples: {summary.selection['n_samples']} (selection hash {summary.selection['uids_sha256'][:16]}...). "
              f"Steps {gen.steps}, seed {gen.seed}, resolution {gen.resolution or 'input'}."]
    return "\n".join(lines)


def headline_section(headline: list[dict], block: str = "fullset") -> str:
    """One of upstream's blocks (fullset or Intersection), per arm and language: the official task-mean
    Q_SC/Q_PQ/Q_O over the task groups with a scored sample (their number shown) and the per-sample means beside."""
    title = "Headline (fullset)" if block == "fullset" else block
    lines = [f"## {title}", "", "Official rule: unweighted mean over task groups; per-sample mean beside it.", "",
             "| arm | lang | " + " | ".join(METRICS) + " | " + " | ".join(f"{m} (per sample)" for m in METRICS)
             + " | scored / selected | task groups | judge failures |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for h in headline:
        lines.append(f"| {h['arm']} | {h['language']} | " + " | ".join(_f(h[m]) for m in METRICS) + " | "
                     + " | ".join(_f(h[f'{m}_per_sample']) for m in METRICS)
                     + f" | {h['n_scored']} / {h['n_selected']} | {h['n_task_groups']} | {h['n_judge_failures']} |")
    if not headline:
        lines.append("| - | - | no scored sample in this block |" + " |" * 8)
    return "\n".join(lines)


def per_task_section(per_task: list[dict], arms: list[str], block: str = "fullset") -> str:
    """One row per (task group, language) of one block, Q_SC/Q_PQ/Q_O and n for every arm side by side."""
    lines = [f"## Per task group ({block})", "",
             "| task | lang | " + " | ".join(" | ".join(f"{a} {m}" for m in METRICS) + f" | {a} n" for a in arms)
             + " |",
             "|" + "---|" * (2 + 4 * len(arms))]
    by_key: dict = {}
    for row in per_task:
        by_key.setdefault((row["task_type"], row["language"]), {})[row["arm"]] = row
    for (task_type, lang), per_arm in sorted(by_key.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        cells = []
        for a in arms:
            r = per_arm.get(a)
            cells += [_f(r[m]) if r else "-" for m in METRICS] + [f"{r['n_scored']}" if r else "-"]
        lines.append(f"| {task_type} | {lang} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def delta_section(d: dict) -> str:
    """One arm minus the baseline: paired deltas with bootstrap 95% intervals, overall and per task group."""
    lines = [f"## {d['arm']} minus {d['baseline']} (paired, bootstrap 95% CI, {d['n_bootstrap']} resamples, "
             f"seed {d['seed']})", "",
             "| lang | metric | scope | n pairs | delta | 95% CI | verdict |", "|---|---|---|---|---|---|---|"]
    for lang, metrics in d["languages"].items():
        for m in METRICS:
            res = metrics[m]
            for scope, r in (("overall (task mean)", res["overall_task_mean"]),
                             ("overall (per sample)", res["overall_per_sample"])):
                lines.append(f"| {lang} | {m} | {scope} | {r['n_pairs']} | {_f(r['delta'])} | {_ci(r['ci95'])} | "
                             f"{r['verdict']} |")
            for r in res["per_task"]:
                lines.append(f"| {lang} | {m} | {r['task_type']} | {r['n_pairs']} | {_f(r['delta'])} | "
                             f"{_ci(r['ci95'])} | {r['verdict']} |")
    return "\n".join(lines)


def fidelity_section(arm: str, fid: dict) -> str:
    """PSNR / SSIM of one arm's edits against the baseline's edits of the same samples."""
    lines = [f"## Fidelity: {arm} edits against {fid['baseline']} edits "
             f"({SAME_SETTINGS[fid['same_settings_but_precision']]})", "",
             "| lang | scope | n | PSNR dB (non-identical) | identical | SSIM |", "|---|---|---|---|---|---|"]
    for lang, res in ((k, v) for k, v in fid.items() if k not in ("baseline", "same_settings_but_precision")):
        o, t = res["overall_per_sample"], res["overall_task_mean"]
        lines.append(f"| {lang} | overall (task mean) | {t['n_task_groups']} groups | {_f(t['psnr_db'])} | - | "
                     f"{_f(t['ssim'], 4)} |")
        lines.append(f"| {lang} | overall (per sample) | {o['n']} | {_f(o['psnr_db'])} | {o['n_identical']} | "
                     f"{_f(o['ssim'], 4)} |")
        for r in res["per_task"]:
            lines.append(f"| {lang} | {r['task_type']} | {r['n']} | {_f(r['psnr_db'])} | {r['n_identical']} | "
                         f"{_f(r['ssim'], 4)} |")
    return "\n".join(lines)


def failures_section(summary: GeditSummary) -> str:
    """Judge failures, out-of-range scores, missing images, input errors and unjudged samples per arm and language
    (never scored)."""
    lines = ["## Judge failures and unscored samples (excluded, never scored)", ""]
    for arm, langs in summary.judge_failures.items():
        for lang, f in langs.items():
            per = ", ".join(f"{t}: {n}" for t, n in f["per_task"].items() if n) or "none"
            lines.append(f"- {arm} / {lang}: {f['total']} judge failures ({per}); {f['out_of_range']} with "
                         f"out-of-range scores; {f['missing_images']} missing images"
                         + _unscored_note(f))
    return "\n".join(lines)


def _unscored_note(f: dict) -> str:
    """Input errors and unjudged samples (absent from summaries written before they were counted)."""
    parts = ([f"{f['input_errors']} with an undecodable input image"] if f.get("input_errors") else []) + \
            ([f"**{f['not_judged']} not judged yet** (run the judge stage)"] if f.get("not_judged") else [])
    return "; " + "; ".join(parts) if parts else ""


def throughput_section(summary: GeditSummary) -> str:
    """Seconds per sample and peak VRAM of generation (per arm) and judging."""
    tp = summary.throughput
    lines = ["## Throughput", ""]
    for arm, g in tp.generation.items():
        lines.append(f"- generate {arm}: {_f(g.seconds_per_sample_mean, 3)} s/sample (median "
                     f"{_f(g.seconds_per_sample_median, 3)}, n={g.n_samples}), peak VRAM {_f(g.peak_vram_gib_max)} GiB")
    if tp.judge:
        j = tp.judge
        batching = f"batch {j.batch_size}" if j.batch_size else f"{j.concurrency} requests in flight"
        failed = f", {j.transport_failures} requests never answered" if j.transport_failures else ""
        lines.append(f"- judge: {_f(j.seconds_per_sample, 3)} s/sample (2 calls, {batching}, "
                     f"{_f(j.attempts_per_call)} attempts/call{failed}), peak VRAM {_f(j.peak_vram_gib_max)} GiB")
    return "\n".join(lines)


def provenance_section(summary: GeditSummary) -> str:
    """Command, git revision, date, device, package versions, models and every override (ends with a newline)."""
    prov = summary.provenance
    overrides = "; ".join(f"{o['field']}: {o['old']!r} -> {o['new']!r} ({o['source']})" for o in summary.overrides)
    lines = ["## Provenance", "", f"- command: `{prov['command']}`", f"- git: {prov['git_revision']}",
             f"- date: {prov['date_utc']}",
             f"- device: {prov['device'].get('device_name')} ({prov['device'].get('device')})",
             "- packages: " + ", ".join(f"{k} {v}" for k, v in prov["packages"].items()),
             f"- OmniGen2: `{summary.model}`; dataset: `{summary.dataset}`",
             "- overrides: " + (overrides or "none"), ""]
    return "\n".join(lines)


def _f(value, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _ci(ci) -> str:
    return "-" if not ci else f"[{ci[0]:.2f}, {ci[1]:.2f}]"
