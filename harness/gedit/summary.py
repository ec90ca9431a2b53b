"""The score stage: judgements and edits -> scores.csv, tasks.csv, fidelity.csv, summary.json (a `GeditSummary`)
and summary.md. Reads only the run folder (selection.json, judgements, generation records), never the dataset.
"""
from __future__ import annotations

import dataclasses
import logging
import math

import pandas as pd

from harness.core.records import (SYNTHETIC_WARNING, atomic_output, run_manifest, step_cache_synthetic_notes,
                                  write_json_atomic, write_text_atomic)
from harness.gedit import data as gdata
from harness.gedit.config import GeditTaskConfig
from harness.gedit.context import RunContext
from harness.gedit.fidelity import fidelity_table, summarize_fidelity
from harness.gedit.protocol import comparability_headline, comparability_problems
from harness.gedit.record import (Comparability, GeditRun, GeditSummary, GenerationThroughput, JudgeIdentity,
                                  JudgeThroughput, ScoreBlock, SummaryFiles, Throughput)
from harness.gedit.render import summary_markdown
from harness.gedit.run_folder import (FIDELITY, JUDGEMENTS, SCORES, SELECTION, SUMMARY_JSON, SUMMARY_MD, TASKS,
                                      RunFolder)
from harness.gedit.scoring import SUBSETS, official_tables, sample_table
from harness.gedit.stats import paired_deltas
from omnigen2_fp8.precision import RecipeError, parse_recipe

log = logging.getLogger("harness.gedit")

# generation_settings.json keys that are GenerationSpec fields (the model is reported apart, as `model`)
RECORDED_GENERATION_FIELDS = ("seed", "steps", "resolution", "text_guidance_scale", "image_guidance_scale",
                              "time_shift", "negative_prompt")


def run_score(ctx: RunContext) -> GeditSummary:
    """Write every scored file of the run and return the summary."""
    folder = ctx.folder
    samples = folder.selection_samples()
    verdict = comparability(ctx)  # also a column of each CSV, which has no headline line to carry it
    # every (arm, selected sample) gets a row: counts are against selection.json, unjudged pairs say why
    table = sample_table(folder.current_judgements(ctx.judge_identity, ctx.arms, samples, fill_missing=True))
    _write_csv(table.assign(comparable=verdict.comparable), folder.file(SCORES))
    blocks = official_tables(table) if len(table) else {s: {"headline": pd.DataFrame(), "per_task": pd.DataFrame()}
                                                        for s in SUBSETS}
    _write_csv(pd.concat([blocks[s]["per_task"] for s in SUBSETS]).assign(comparable=verdict.comparable),
               folder.file(TASKS))
    headline, tasks = blocks["fullset"]["headline"], blocks["fullset"]["per_task"]
    base = ctx.baseline_arm
    deltas = [paired_deltas(table, base, arm, n_boot=ctx.bootstrap) for arm in ctx.arms if arm != base and len(table)]
    fidelity, fid_rows = {}, []
    for arm in (a for a in ctx.arms if a != base):
        pairs = [(s, *(folder.found_edit(a, s) or folder.edit_path(a, s) for a in (base, arm))) for s in samples]
        ftab = fidelity_table(pairs)
        fid_rows.append(ftab.assign(baseline=base, arm=arm))
        if len(ftab):
            fidelity[arm] = {"baseline": base, "same_settings_but_precision": same_settings(folder, base, arm),
                             **summarize_fidelity(ftab)}
    if fid_rows:
        _write_csv(pd.concat(fid_rows), folder.file(FIDELITY))
    config, overrides = recorded_config(ctx)
    summary = GeditSummary(
        synthetic=ctx.synthetic or False, warning=synthetic_warning(ctx),
        comparability=verdict, task=config, overrides=overrides, arms=ctx.arms, baseline=base, dataset=ctx.dataset,
        model=ctx.model,
        edits_root=str(ctx.edits_root), judge=JudgeIdentity(**ctx.judge_identity),
        judge_settings=last_judge_settings(ctx), prompt_set=ctx.prompts.describe(), protocol=ctx.protocol,
        selection=gdata.selection_summary([_as_ref(s) for s in samples]),
        headline=_records(headline), per_task=_records(tasks),
        intersection=ScoreBlock(headline=_records(blocks["intersection"]["headline"]),
                                per_task=_records(blocks["intersection"]["per_task"])),
        deltas=deltas, fidelity=fidelity,
        judge_failures=_failures(tasks), throughput=throughput(ctx),
        provenance=run_manifest(synthetic=ctx.synthetic or False, device=ctx.device,
                                extra={"prompt_set": ctx.prompts.describe(), "judge_model": ctx.judge_model,
                                       "omnigen2_model": ctx.model}),
        files=SummaryFiles(judgements=JUDGEMENTS, scores=SCORES, tasks=TASKS, fidelity=FIDELITY if fid_rows else None,
                           selection=SELECTION, markdown=SUMMARY_MD))
    write_json_atomic(folder.file(SUMMARY_JSON), summary.to_json())
    # rendered from the files just written, as any reader sees them: summary.md is what they re-render
    write_text_atomic(folder.file(SUMMARY_MD), summary_markdown(GeditRun.load(folder.out)))
    return summary


def synthetic_warning(ctx: RunContext) -> str | None:
    """The synthetic-weights warning, plus what step caching means on random weights for the run's cached arms."""
    if not ctx.synthetic:
        return None
    notes = step_cache_synthetic_notes(c.method for c in map(_step_cache_of, ctx.arms) if c is not None)
    return " ".join([SYNTHETIC_WARNING, *(f"{note}." for note in notes)])


def _step_cache_of(arm: str):
    """The arm's step-cache config; None for no cache or a name that is not a recipe (edits made elsewhere)."""
    try:
        return parse_recipe(arm).step_cache
    except RecipeError:
        return None


def recorded_config(ctx: RunContext) -> tuple[GeditTaskConfig, list[dict]]:
    """The task config as the records were made, and the overrides that still describe them.

    Generation fields come from the baseline arm's generation_settings.json (else another arm's), judge decoding
    from the judgements' recorded settings; where flags or the task file say otherwise (`--stage score --steps 30`)
    the records win, the flag's override is dropped, and a warning says so.
    """
    config, folder = ctx.config, ctx.folder
    recorded = next((st for st in map(folder.arm_settings, [ctx.baseline_arm, *ctx.arms]) if st), {})
    gen = {f: recorded[f] for f in RECORDED_GENERATION_FIELDS if f in recorded}
    judge_settings = folder.judge_settings_of_records(ctx.judge_identity)
    judge = {f: judge_settings[-1][f] for f in ("max_new_tokens", "max_retries") if judge_settings
             and f in judge_settings[-1]}
    differs = {f"generation.{k}": v for k, v in gen.items() if getattr(config.generation, k) != v}
    differs |= {f"judge.{k}": v for k, v in judge.items() if getattr(config.judge, k) != v}
    for field, value in differs.items():
        section, name = field.split(".")
        log.warning("score: %s is %r in the records, not %r as this run's task/flags say; the summary reports the "
                    "records", field, value, getattr(getattr(config, section), name))
    config = dataclasses.replace(config, generation=dataclasses.replace(config.generation, **gen),
                                 judge=dataclasses.replace(config.judge, **judge))
    return config, [o for o in ctx.overrides if o["field"] not in differs]


def comparability(ctx: RunContext) -> Comparability:
    """Whether this run's scores can stand beside published GEdit-Bench numbers, and if not, why (one line).
    Decoding limits are those the judge ran with (judge_runs.jsonl) where recorded, else the task's."""
    judge, ran = ctx.config.judge, last_judge_settings(ctx) or {}
    problems = comparability_problems(ctx.protocol.name, ctx.prompts.name,
                                      ran.get("max_new_tokens", judge.max_new_tokens),
                                      ran.get("max_retries", judge.max_retries), ctx.synthetic)
    return Comparability(comparable=not problems, problems=problems, headline=comparability_headline(problems))


def throughput(ctx: RunContext) -> Throughput:
    """Seconds per sample and peak VRAM: generation per arm (from generation.jsonl), judging (judge_runs.jsonl)."""
    gen = {}
    for arm in ctx.arms:
        recs = ctx.folder.generation_records(arm)
        if recs:
            secs = pd.Series([r["seconds"] for r in recs])
            vram = [r["peak_vram_gib"] for r in recs if r.get("peak_vram_gib") is not None]
            gen[arm] = GenerationThroughput(
                n_samples=len(recs), seconds_per_sample_mean=float(secs.mean()),
                seconds_per_sample_median=float(secs.median()),
                seconds_per_sample_after_first=float(secs.iloc[1:].mean()) if len(secs) > 1 else None,
                peak_vram_gib_max=max(vram) if vram else None, steps=recs[0]["settings"].get("num_inference_steps"),
                output_size=recs[0].get("output_size"))
    runs = ctx.folder.judge_runs(ctx.judge_identity)
    judge = None
    if runs:
        n = sum(r["n_samples"] for r in runs)
        vram = [r["peak_vram_gib"] for r in runs if r.get("peak_vram_gib") is not None]
        judge = JudgeThroughput(
            n_samples=n, seconds_per_sample=sum(r["seconds"] for r in runs) / n, calls_per_sample=2,
            attempts_per_call=sum(r["n_attempts"] for r in runs) / max(1, sum(r["n_calls"] for r in runs)),
            new_tokens_per_attempt=(sum(r.get("new_tokens") or 0 for r in runs) /
                                    max(1, sum(r["n_attempts"] for r in runs))),
            peak_vram_gib_max=max(vram) if vram else None,
            batch_size=(runs[-1].get("settings") or {}).get("batch_size", ctx.batch_size),
            concurrency=(runs[-1].get("settings") or {}).get("concurrency"),
            transport_failures=sum(r.get("transport_failures") or 0 for r in runs))
    return Throughput(generation=gen, judge=judge)


def last_judge_settings(ctx: RunContext) -> dict | None:
    """Decoding, dtype, retry policy and preprocessing of the judge as last run for this judge, prompt set and
    protocol."""
    runs = ctx.folder.judge_runs(ctx.judge_identity)
    return runs[-1].get("settings") if runs else None


def same_settings(folder: RunFolder, base: str, arm: str) -> bool | None:
    """True when both arms' edits were made with the same settings apart from precision (None: unknown)."""
    a, b = folder.arm_settings(base), folder.arm_settings(arm)
    if a is None or b is None:
        return None
    return {k: v for k, v in a.items() if k != "precision"} == {k: v for k, v in b.items() if k != "precision"}


def _write_csv(frame: pd.DataFrame, path) -> None:
    with atomic_output(path) as tmp:
        frame.to_csv(tmp, index=False)


def _as_ref(s: dict) -> gdata.SampleRef:
    return gdata.SampleRef(s["task_type"], s["language"], s["key"], s.get("instruction", ""),
                           bool(s.get("intersection")), -1)


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in frame.to_dict(orient="records")]


def _failures(tasks: pd.DataFrame) -> dict:
    out: dict = {}
    for row in _records(tasks):
        entry = out.setdefault(row["arm"], {}).setdefault(row["language"], {
            "total": 0, "missing_images": 0, "out_of_range": 0, "input_errors": 0, "not_judged": 0, "per_task": {}})
        entry["per_task"][row["task_type"]] = row["n_judge_failures"]
        entry["total"] += row["n_judge_failures"]
        entry["missing_images"] += row["n_missing_image"]
        entry["out_of_range"] += row["n_out_of_range"]
        entry["input_errors"] += row["n_input_errors"]
        entry["not_judged"] += row["n_not_judged"]
    return out
