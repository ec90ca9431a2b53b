"""python -m harness.gedit: GEdit-Bench edits per precision, a local Qwen2.5-VL judge, scores, deltas, fidelity.

Examples:
    python -m harness.gedit --precision bf16 fp8 --task gedit-en-10pct             # real models from hub/folders
    python -m harness.gedit --synthetic tiny --out /tmp/gedit-tiny                  # whole flow on a CPU, ~1 min
    python -m harness.gedit --stage judge --edits DIR --precision mymodel           # judge edits made elsewhere
    python -m harness.gedit --stage score --out DIR                                 # re-aggregate judgements

Settings come from the task file; flags override them and every override is logged (old -> new) and recorded.
Stages: generate (edits per arm, resumable), judge (judgements.jsonl, resumable), score (scores.csv, tasks.csv,
fidelity.csv, summary.json, summary.md). Every stage works on a list of samples chosen before it runs, and every
per-sample record carries its own key, so a sharded run can give each process a shard and merge the JSONL lines.

Files in --out (edits go to --edits, default --out):
    <arm>/fullset/<task_type>/<lang>/<key>.png   edits (official layout); <arm>/generation.jsonl: one line per edit
    <arm>/generation_settings.json               what made the edits (resume refuses other settings)
    selection.json      the selected samples (+ counts, uids_sha256)
    judgements.jsonl    one line per (arm, sample): status ok | judge_failure | missing_image, sc/pq call records
                        with every raw answer, judge {model, prompt_set, prompt_sha256, ...}
    judge_runs.jsonl    one line per judge batch: seconds, calls, attempts, new tokens, peak VRAM, judge settings
    scores.csv          sample level: arm, task_type, language, key, status, failure, SC, PQ, O, ...
    tasks.csv           per (arm, language, task_type): n_selected, n_scored, failures, SC, PQ, O
    fidelity.csv        per (arm vs baseline, sample): psnr_db, ssim, identical
    summary.json / .md  headline, per task, paired deltas with 95% CIs, fidelity, failures, throughput, provenance
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from harness import data as gdata
from harness import distributed
from harness.fidelity import fidelity_table, summarize_fidelity
from harness.generate import (SettingsMismatchError, arm_settings, check_or_record_settings, edit_path,
                              free_pipeline, generate_samples, generation_records, load_arm_pipeline, pending_samples,
                              read_arm_settings)
from harness import judge_batching
from harness.judge import Judge, JudgeError, QwenJudge, judge_calls_for_sample
from harness.judge_served import DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT_S, ServedJudge
from harness.judge_prompts import PromptSet, PromptSetError, resolve_prompt_set
from harness.core.records import (SYNTHETIC_WARNING, append_jsonl, read_jsonl, run_manifest, write_json_atomic,
                             write_text_atomic)
from harness.scoring import METRICS, headline_table, sample_table, task_table
from harness.stats import paired_deltas
from harness.tasks import GeditTaskConfig, TaskError, apply_overrides, load_gedit_task

log = logging.getLogger("harness.gedit")

DEFAULT_TASK = "gedit-en-full"
JUDGEMENTS = "judgements.jsonl"
JUDGE_RUNS = "judge_runs.jsonl"
SYNTHETIC_TINY_SETTINGS = {"generation.steps": 2, "generation.resolution": 64, "judge.max_new_tokens": 24}
SYNTHETIC_FULL_SETTINGS = {"selection.per_task": 1, "judge.max_retries": 0}


class SetupError(RuntimeError):
    """Models or data needed by the requested stages cannot be found; the message lists the flags that fix it."""


@dataclasses.dataclass
class RunContext:
    """Everything the stages need, resolved from the task file and flags."""

    config: GeditTaskConfig
    overrides: list[dict]
    arms: list[str]
    out: Path
    edits_root: Path
    dataset: str
    model: str
    judge_model: str
    prompts: PromptSet
    device: str
    batch_size: int | None  # judge calls per batch; None: from free memory (the judge's chunk width once loaded)
    synthetic: str | None
    progress: bool = True
    bootstrap: int = 10_000
    baseline: str | None = None
    cuda_graphs: bool = False  # replay transformer passes as CUDA graphs (same images, less launch overhead)
    judge_server: dict | None = None  # {url, api_key_env, concurrency, timeout_s}: judge through that server

    @property
    def baseline_arm(self) -> str:
        return self.baseline or ("bf16" if "bf16" in self.arms else self.arms[0])


# ------------------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.gedit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    run = p.add_argument_group("what to run")
    run.add_argument("--task", default=DEFAULT_TASK, help=f"task name or YAML path (default {DEFAULT_TASK}; "
                     "`python -m harness.tasks ls` lists them)")
    run.add_argument("--precision", nargs="+", default=None, metavar="ARM",
                     help="arms to run: bf16 and/or fp8 (default: both); with --edits, any folder names")
    run.add_argument("--stage", choices=("generate", "judge", "score", "all"), default="all")
    run.add_argument("--synthetic", choices=("tiny", "full"), default=None,
                     help="random-weight models and a PIL-drawn dataset: tiny runs on a CPU in about a minute, "
                          "full has the real shapes (GPU throughput); every score is meaningless")
    sel = p.add_argument_group("sample selection (override the task file)")
    sel.add_argument("--per-task", type=int, default=None, help="samples per task group and language")
    sel.add_argument("--languages", nargs="+", choices=("en", "cn"), default=None)
    sel.add_argument("--tasks", nargs="+", default=None, metavar="GROUP", help="task groups to keep")
    sel.add_argument("--intersection", action="store_true", default=None, help="only Intersection_exist rows")
    sel.add_argument("--selection-seed", type=int, default=None)
    gen = p.add_argument_group("generation (override the task file)")
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--steps", type=int, default=None)
    gen.add_argument("--resolution", type=int, default=None, help="cap edits at R*R pixels (aspect kept)")
    gen.add_argument("--model", default=None, help="OmniGen2 checkpoint folder or hub id")
    jud = p.add_argument_group("judge (override the task file)")
    jud.add_argument("--judge", default=None, help="Qwen2.5-VL-7B-Instruct folder or hub id")
    jud.add_argument("--prompt-set", default=None, help="project-rubric-v1 (default) or viescore")
    jud.add_argument("--viescore-file", default=None, help="path to VIEScore's vie_prompts.py (hash-checked)")
    jud.add_argument("--max-new-tokens", type=int, default=None)
    jud.add_argument("--batch-size", type=int, default=None,
                     help=f"judge calls per forward batch (default: from free GPU memory, at most "
                          f"{judge_batching.AUTO_BATCH_CAP}; {judge_batching.CPU_BATCH_SIZE} on a CPU); a judge "
                          "setting: a resume must use the same")
    srv = p.add_argument_group("served judge: any OpenAI-compatible server (vLLM, SGLang, a hosted model)")
    srv.add_argument("--judge-url", default=None, metavar="URL",
                     help="judge through the chat-completions API at URL, e.g. http://127.0.0.1:8000/v1")
    srv.add_argument("--judge-model", default=None, metavar="NAME",
                     help="model name the server serves (default: the task's judge model)")
    srv.add_argument("--judge-api-key-env", default=None, metavar="VAR", help="environment variable holding the API key")
    srv.add_argument("--judge-concurrency", type=int, default=DEFAULT_CONCURRENCY, metavar="N",
                     help=f"requests in flight (default {DEFAULT_CONCURRENCY})")
    srv.add_argument("--judge-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                     help=f"seconds per request before it is retried (default {DEFAULT_TIMEOUT_S:g})")
    io = p.add_argument_group("data and files")
    io.add_argument("--dataset", default=None, help="hub id or local copy (save_to_disk folder, parquet/arrow)")
    io.add_argument("--out", default=None, help="results folder (default scratch/gedit/<task>)")
    io.add_argument("--edits", default=None, help="root of edited images <root>/<arm>/fullset/... (default --out)")
    io.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    io.add_argument("--cuda-graphs", action="store_true",
                    help="replay transformer passes as CUDA graphs: same images, no launch overhead (the FP8 arm "
                         "is launch-bound at 512x512 without it)")
    io.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap resamples for the 95%% intervals")
    io.add_argument("--no-progress", action="store_true")
    return p


def overrides_from_args(args: argparse.Namespace) -> dict:
    """Dotted task fields -> flag values (None = not given)."""
    return {
        "selection.per_task": args.per_task, "selection.languages": args.languages,
        "selection.task_groups": args.tasks, "selection.intersection": args.intersection,
        "selection.selection_seed": args.selection_seed, "generation.seed": args.seed,
        "generation.steps": args.steps, "generation.resolution": args.resolution, "generation.model": args.model,
        "judge.model": args.judge or args.judge_model, "judge.prompt_set": args.prompt_set, "judge.max_new_tokens": args.max_new_tokens,
        "dataset.id": args.dataset,
    }


# ------------------------------------------------------------------------------------------------ context + setup
def make_context(args: argparse.Namespace) -> RunContext:
    """Task file + synthetic defaults + flags -> RunContext (builds synthetic models and data when asked)."""
    if args.judge_url is None and (args.judge_model or args.judge_api_key_env):
        raise SetupError("--judge-model / --judge-api-key-env name a served judge: add --judge-url URL")
    if args.judge_url is not None and args.judge:
        raise SetupError("--judge (a local checkpoint) and --judge-url (a server) exclude each other: pass one")
    config = load_gedit_task(args.task)
    changes: list[dict] = []
    flags = overrides_from_args(args)
    if args.synthetic:
        auto = dict(SYNTHETIC_TINY_SETTINGS if args.synthetic == "tiny" else SYNTHETIC_FULL_SETTINGS)
        config, auto_changes = apply_overrides(config, {k: v for k, v in auto.items() if flags.get(k) is None})
        changes += [{**c, "source": f"--synthetic {args.synthetic} default"} for c in auto_changes]
    config, flag_changes = apply_overrides(config, flags)
    changes += [{**c, "source": "flag"} for c in flag_changes]
    for c in changes:
        log.info("override %s: %r -> %r (%s)", c["field"], c["old"], c["new"], c["source"])
    out = Path(args.out or Path("scratch") / "gedit" / (config.task + (f"-synthetic-{args.synthetic}"
                                                                         if args.synthetic else "")))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    edits_root, arms = _edits_and_arms(args, out)
    prompts = resolve_prompt_set(config.judge.prompt_set, args.viescore_file)
    ctx = RunContext(config=config, overrides=changes, arms=arms, out=out, edits_root=edits_root,
                     dataset=config.dataset.id, model=config.generation.model, judge_model=config.judge.model,
                     prompts=prompts, device=device, batch_size=args.batch_size, synthetic=args.synthetic,
                     progress=not args.no_progress, bootstrap=args.bootstrap, cuda_graphs=args.cuda_graphs)
    if args.judge_url is not None:
        ctx.judge_server = {"url": args.judge_url, "api_key_env": args.judge_api_key_env,
                            "concurrency": args.judge_concurrency, "timeout_s": args.judge_timeout}
    if args.synthetic:
        prepare_synthetic(ctx, explicit_dataset=args.dataset is not None, explicit_model=args.model is not None,
                          explicit_judge=args.judge is not None or args.judge_url is not None)
    return ctx


def _edits_and_arms(args: argparse.Namespace, out: Path) -> tuple[Path, list[str]]:
    if args.edits is None:
        return out, list(args.precision or ["bf16", "fp8"])
    root = Path(args.edits)
    if (root / "fullset").is_dir():  # DIR is one model's folder: the arm is its name
        return root.parent, list(args.precision or [root.name])
    if args.precision:
        return root, list(args.precision)
    found = sorted(p.name for p in root.glob("*") if (p / "fullset").is_dir()) if root.is_dir() else []
    if not found:
        raise SetupError(f"--edits {root} holds no <arm>/fullset/ folder; pass the folder that contains them "
                         "(official layout <root>/<arm>/fullset/<task_type>/<lang>/<key>.png)")
    return root, found


def prepare_synthetic(ctx: RunContext, explicit_dataset: bool, explicit_model: bool, explicit_judge: bool) -> None:
    """Write (or reuse) the synthetic dataset and tiny checkpoints under <out>/_synthetic; point ctx at them."""
    from omnigen2_fp8.synthetic import write_synthetic_checkpoint

    from harness.judge import write_synthetic_judge

    work = ctx.out / "_synthetic"
    if not explicit_dataset:
        folder = work / ("dataset" if ctx.synthetic == "tiny" else "dataset-512")
        if not (folder / "data").is_dir():
            gdata.write_synthetic_gedit(folder, per_task=2, image_size=64 if ctx.synthetic == "tiny" else 512)
        ctx.dataset = str(folder)
    if ctx.synthetic == "tiny":
        if not explicit_model:
            folder = work / "omnigen2-tiny"
            if not (folder / "model_index.json").is_file():
                write_synthetic_checkpoint(folder, "tiny")
            ctx.model = str(folder)
        if not explicit_judge:
            ctx.judge_model = str(write_synthetic_judge(work / "judge-tiny"))
    else:  # "full": models are built in device memory by the stages
        ctx.model = ctx.model if explicit_model else "synthetic:full"
        ctx.judge_model = ctx.judge_model if explicit_judge else "synthetic:full"


def preflight(ctx: RunContext, stages: Sequence[str]) -> None:
    """Fail before any heavy work when a model or the dataset named for the requested stages is not available."""
    problems = []
    if "generate" in stages and not ctx.model.startswith("synthetic:"):
        problems += _check_model(ctx.model, "OmniGen2 checkpoint", "--model", "model_index.json")
    if "judge" in stages and ctx.judge_server is not None:
        try:
            load_judge(ctx)  # one 1-token request: URL, key and model name checked before any real work
        except JudgeError as err:
            problems.append(str(err))
    elif "judge" in stages and not ctx.judge_model.startswith("synthetic:"):
        problems += _check_model(ctx.judge_model, "judge", "--judge", "config.json")
    if {"generate", "judge"} & set(stages):
        problems += _check_dataset(ctx.dataset)
    if problems:
        raise SetupError("cannot start:\n  - " + "\n  - ".join(problems) + "\n"
                         "Fix: --model DIR|HUB_ID (OmniGen2 checkpoint), --judge DIR|HUB_ID (Qwen2.5-VL-7B-Instruct), "
                         "--dataset DIR|FILE|HUB_ID (GEdit-Bench copy), or --synthetic tiny to run the whole flow "
                         "on random models and a drawn dataset (scores meaningless).")


def _check_model(ref: str, what: str, flag: str, marker: str) -> list[str]:
    path = Path(ref).expanduser()
    if path.is_dir():
        return [] if (path / marker).is_file() else [f"{what} folder {path} has no {marker} ({flag})"]
    if ref.count("/") != 1 or ref.startswith((".", "/", "~")):
        return [f"{what} {ref!r} is neither an existing folder nor a hub id ({flag})"]
    return _hub_available(ref, "model", marker, what, flag)


def _check_dataset(ref: str) -> list[str]:
    if Path(ref).expanduser().exists():
        return []
    if ref.count("/") != 1 or ref.startswith((".", "/", "~")):
        return [f"dataset {ref!r} does not exist (--dataset)"]
    return _hub_available(ref, "dataset", None, "dataset", "--dataset")


def _hub_available(repo_id: str, repo_type: str, marker: str | None, what: str, flag: str) -> list[str]:
    from huggingface_hub import HfApi, try_to_load_from_cache

    if marker and isinstance(try_to_load_from_cache(repo_id, marker, repo_type=repo_type), str):
        return []
    try:
        (HfApi().model_info if repo_type == "model" else HfApi().dataset_info)(repo_id, timeout=15)
    except Exception as err:  # offline, 404, gated: all mean "not available from here"
        return [f"{what} {repo_id!r} is not a local folder, not in the hub cache, and the hub did not answer "
                f"({type(err).__name__}) ({flag})"]
    return []


# ---------------------------------------------------------------------------------------------------- selection
def select(ctx: RunContext):
    """Load the dataset, choose the samples, record the choice in <out>/selection.json. Returns (dataset, samples)."""
    ds = gdata.load_gedit_dataset(ctx.dataset, ctx.config.dataset.revision, ctx.config.dataset.split)
    samples = gdata.select_samples(ds, ctx.config.selection)
    if not samples:
        raise SetupError(f"the selection {ctx.config.selection} matches no row of {ctx.dataset}")
    write_json_atomic(ctx.out / "selection.json", {
        **gdata.selection_summary(samples), "dataset": ctx.dataset, "selection": dataclasses.asdict(
            ctx.config.selection), "samples": [s.to_record() for s in samples]})
    return ds, samples


def samples_from_selection(out: Path) -> list[dict]:
    """The sample records saved by `select` (for the score stage, which needs no dataset)."""
    path = out / "selection.json"
    if not path.is_file():
        raise SetupError(f"{path} not found: run the generate or judge stage first (they record the selection)")
    import json

    return json.loads(path.read_text(encoding="utf-8"))["samples"]


# ------------------------------------------------------------------------------------------------------- stages
def run_generate(ctx: RunContext, ds, samples: Sequence[gdata.SampleRef]) -> None:
    """Edits for every arm; one model load per arm, freed before the next; finished samples are skipped."""
    for arm in ctx.arms:
        check_or_record_settings(ctx.edits_root, arm, arm_settings(ctx.model, arm, ctx.config.generation))
        todo = pending_samples(ctx.edits_root, arm, samples)
        if not todo:
            log.info("generate %s: all %d edits exist", arm, len(samples))
            continue
        log.info("generate %s: %d of %d edits to make", arm, len(todo), len(samples))
        pipe = load_arm_pipeline(ctx.model, arm, ctx.device, ctx.synthetic, time_shift=ctx.config.generation.time_shift,
                                 cuda_graphs=ctx.cuda_graphs)
        try:
            generate_samples(pipe, ds, todo, ctx.edits_root, arm, ctx.config.generation, progress=ctx.progress)
        finally:
            free_pipeline(pipe)


def judge_identity(ctx: RunContext) -> dict:
    return {"model": ctx.judge_model, "prompt_set": ctx.prompts.name, "prompt_sha256": ctx.prompts.sha256["set"]}


def load_judge(ctx: RunContext) -> Judge:
    """The judge ctx names: a server (--judge-url), the random full-size one, or a checkpoint loaded in process."""
    spec = ctx.config.judge
    if ctx.judge_server is not None:
        srv = ctx.judge_server
        return ServedJudge(srv["url"], ctx.judge_model, api_key_env=srv["api_key_env"], concurrency=srv["concurrency"],
                           timeout_s=srv["timeout_s"], max_new_tokens=spec.max_new_tokens, max_retries=spec.max_retries)
    kwargs = dict(batch_size=ctx.batch_size, max_new_tokens=spec.max_new_tokens, max_retries=spec.max_retries)
    if ctx.judge_model == "synthetic:full":
        from harness.judge import build_full_synthetic_judge

        return build_full_synthetic_judge(ctx.device, **kwargs)
    judge = QwenJudge.load(ctx.judge_model, ctx.device, **kwargs)
    judge.model_id = ctx.judge_model
    return judge


def judgement_records(ctx: RunContext) -> list[dict]:
    """This judge's (judge_identity) records in judgements.jsonl and in per-rank files not merged yet."""
    ident = judge_identity(ctx)
    shared = ctx.out / JUDGEMENTS
    paths = (shared, *sorted((ctx.out / distributed.RANK_DIR).glob(f"{shared.stem}.rank*{shared.suffix}")))
    return [r for path in paths for r in read_jsonl(path)
            if (r.get("judge", {}).get("model"), r.get("judge", {}).get("prompt_sha256"))
            == (ident["model"], ident["prompt_sha256"])]


def judge_chunks_of(ctx: RunContext, samples: Sequence[gdata.SampleRef], chunk_samples: int,
                    rank: int = 0, world_size: int = 1) -> list[list[tuple[str, gdata.SampleRef]]]:
    """The chunks this rank judges, less the pairs already judged: the (arm, sample) pairs in single-process order
    cut into chunks of `chunk_samples` whatever was judged before, so a resumed or sharded run forms the same
    batches as one uninterrupted process; chunk b goes to rank b mod world_size."""
    done = {(r["arm"], r["task_type"], r["language"], r["key"]) for r in judgement_records(ctx)}
    mine = distributed.shard_batches(distributed.judge_batches(ctx.arms, samples, chunk_samples), rank, world_size)
    todo = [[(arm, s) for arm, s in chunk if (arm, s.task_type, s.language, s.key) not in done] for _, chunk in mine]
    return [chunk for chunk in todo if chunk]


def all_judged(ctx: RunContext, samples: Sequence[gdata.SampleRef]) -> bool:
    done = {(r["arm"], r["task_type"], r["language"], r["key"]) for r in judgement_records(ctx)}
    return all((arm, s.task_type, s.language, s.key) in done for arm in ctx.arms for s in samples)


def check_judge_settings(ctx: RunContext, judge: Judge) -> None:
    """Refuse to add judgements to ones this judge made with other settings (batch size, ordering, decoding, served
    model...): batched decoding can change answers with them, and a run must not mix the two."""
    current = judge.settings()
    for rec in judgement_records(ctx):
        if rec.get("status") == "missing_image":
            continue
        old = rec["judge"].get("settings")
        if old != current:
            changed = ("settings not recorded" if old is None else ", ".join(
                f"{k}: {old.get(k)!r} -> {current.get(k)!r}" for k in sorted(set(old) | set(current))
                if old.get(k) != current.get(k)))
            raise SettingsMismatchError(f"{ctx.out / JUDGEMENTS} holds judgements by {ctx.judge_model} made with other "
                                        f"judge settings ({changed}); resuming would mix them. Pass the flags that "
                                        "made them (e.g. --batch-size), or use another --out folder.")


def run_judge(ctx: RunContext, ds, samples: Sequence[gdata.SampleRef], judge: Judge | None = None) -> None:
    """Judge every (arm, sample) not yet in judgements.jsonl for this judge and prompt set; missing edits are
    recorded as such. Work goes in chunks of the judge's chunk_samples, each appended as soon as it is done."""
    if all_judged(ctx, samples):
        log.info("judge: all %d judgements exist", len(ctx.arms) * len(samples))
        return
    judge = judge or load_judge(ctx)
    check_judge_settings(ctx, judge)
    ctx.batch_size = judge.chunk_samples  # the chunk width, which also orders merged records
    for _ in judge_chunks(ctx, ds, judge_chunks_of(ctx, samples, judge.chunk_samples), judge):
        pass


def judge_chunks(ctx: RunContext, ds, chunks: Sequence[Sequence[tuple[str, gdata.SampleRef]]], judge: Judge):
    """Judge chunk after chunk, yielding after each is appended; the next chunk's images are loaded and prepared
    (`judge.prepare`) on a worker thread while the current one is judged."""
    bar = tqdm(total=2 * sum(len(c) for c in chunks), desc="judge", unit="call", disable=not ctx.progress)
    try:
        for part, prepared in judge_batching.prepared_in_background(chunks, lambda c: prepare_chunk(ctx, ds, c, judge)):
            judge_batch(ctx, ds, part, judge, bar, prepared=prepared)
            yield part
    finally:
        bar.close()


def prepare_chunk(ctx: RunContext, ds, part: Sequence[tuple[str, gdata.SampleRef]], judge: Judge) -> dict:
    """Load a chunk's images and prepare its calls: {"present": pairs with an edit, "missing": pairs without one,
    "inputs": judge.prepare(calls)} (no file is written here: it may run on a worker thread)."""
    calls, present, missing = [], [], []
    for arm, sample in part:
        image_path = edit_path(ctx.edits_root, arm, sample)
        if not image_path.is_file():
            missing.append((arm, sample))
            continue
        calls += judge_calls_for_sample(f"{arm}|{sample.uid}", gdata.load_source_image(ds, sample), _open(image_path),
                                        sample.instruction, ctx.prompts)
        present.append((arm, sample))
    return {"present": present, "missing": missing, "inputs": judge.prepare(calls) if calls else None}


def judge_batch(ctx: RunContext, ds, part: Sequence[tuple[str, gdata.SampleRef]], judge: Judge, bar,
                prepared: dict | None = None) -> None:
    """Judge one chunk of (arm, sample) pairs (one judge.judge); append a judgement per pair and a timing line.
    Under torchrun the lines go to this rank's files (`distributed.rank_file`), merged by rank 0 afterwards."""
    path, runs_path = distributed.rank_file(ctx.out / JUDGEMENTS), distributed.rank_file(ctx.out / JUDGE_RUNS)
    ident = judge_identity(ctx)
    info = judge.describe()
    prepared = prepared or prepare_chunk(ctx, ds, part, judge)
    cuda = str(ctx.device).startswith("cuda") and torch.cuda.is_available() and ctx.judge_server is None
    for arm, sample in prepared["missing"]:
        append_jsonl(path, _judgement(arm, sample, ident, info, judge.settings(), ctx, status="missing_image",
                                      failure=f"no edited image at {edit_path(ctx.edits_root, arm, sample)}"))
        bar.update(2)
    present = prepared["present"]
    if not present:
        return
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    results = {r.call_id: r for r in judge.judge(prepared["inputs"], progress=bar)}
    seconds = time.perf_counter() - t0
    info = judge.describe()  # after the calls: a served judge adds what the server reported
    append_jsonl(runs_path, {"arms": sorted({a for a, _ in present}), "n_samples": len(present),
                             "n_calls": len(results), "seconds": seconds,
                             "n_attempts": sum(len(r.attempts) for r in results.values()),
                             **judge.last_run_stats,
                             "peak_vram_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                             "judge": ident, "settings": info})
    for arm, sample in present:
        sc, pq = results[f"{arm}|{sample.uid}#sc"], results[f"{arm}|{sample.uid}#pq"]
        ok = sc.status == "ok" and pq.status == "ok"
        failure = "" if ok else "; ".join(f"{n}: {r.status}" for n, r in (("sc", sc), ("pq", pq)) if r.status != "ok")
        append_jsonl(path, _judgement(arm, sample, ident, info, judge.settings(), ctx, status="ok" if ok else "judge_failure",
                                      failure=failure, sc=sc.to_record(), pq=pq.to_record(),
                                      out_of_range="out_of_range" in (sc.status, pq.status)))


def _open(path: Path):
    from PIL import Image

    return Image.open(path).convert("RGB")


def _judgement(arm, sample, ident, info, settings, ctx, *, status, failure="", sc=None, pq=None, out_of_range=False) -> dict:
    return {"arm": arm, **sample.to_record(), "image": str(edit_path(ctx.edits_root, arm, sample).relative_to(ctx.edits_root)),
            "status": status, "failure": failure, "out_of_range": out_of_range, "sc": sc, "pq": pq,
            "judge": {**ident, "vision_preprocessing": info.get("vision_preprocessing"),
                      "synthetic": bool(info.get("synthetic")), "settings": settings}}


def current_judgements(ctx: RunContext, samples: Sequence[dict]) -> list[dict]:
    """The latest judgement per (arm, sample) for this judge + prompt set, restricted to the selected samples."""
    ident = judge_identity(ctx)
    wanted = {(s["task_type"], s["language"], s["key"]) for s in samples}
    latest, others = {}, set()
    for rec in read_jsonl(ctx.out / JUDGEMENTS):
        j = rec.get("judge", {})
        if (j.get("model"), j.get("prompt_sha256")) != (ident["model"], ident["prompt_sha256"]):
            others.add((j.get("model"), j.get("prompt_set")))
            continue
        if rec["arm"] in ctx.arms and (rec["task_type"], rec["language"], rec["key"]) in wanted:
            latest[(rec["arm"], rec["task_type"], rec["language"], rec["key"])] = rec
    if not latest and others:
        found = "; ".join(f"--judge {m} --prompt-set {p}" for m, p in sorted(others, key=str))
        log.warning("%s holds no judgement by judge %s with prompt set %s, only by: %s. Pass those flags (and the "
                    "same --synthetic / --task) to score them.", ctx.out / JUDGEMENTS, ident["model"],
                    ident["prompt_set"], found)
    return list(latest.values())


def run_score(ctx: RunContext) -> dict:
    """scores.csv, tasks.csv, fidelity.csv, summary.json, summary.md from judgements and edits; returns the summary."""
    samples = samples_from_selection(ctx.out)
    table = sample_table(current_judgements(ctx, samples))
    table.to_csv(_tmp(ctx.out / "scores.csv"), index=False)
    _commit(ctx.out / "scores.csv")
    tasks = task_table(table) if len(table) else pd.DataFrame()
    tasks.to_csv(_tmp(ctx.out / "tasks.csv"), index=False)
    _commit(ctx.out / "tasks.csv")
    headline = headline_table(table) if len(table) else pd.DataFrame()
    base = ctx.baseline_arm
    deltas = [paired_deltas(table, base, arm, n_boot=ctx.bootstrap) for arm in ctx.arms if arm != base and len(table)]
    fidelity, fid_rows = {}, []
    for arm in (a for a in ctx.arms if a != base):
        pairs = [(s, edit_path(ctx.edits_root, base, s), edit_path(ctx.edits_root, arm, s)) for s in samples]
        ftab = fidelity_table(pairs)
        fid_rows.append(ftab.assign(baseline=base, arm=arm))
        if len(ftab):
            fidelity[arm] = {"baseline": base, "same_settings_but_precision": _same_settings(ctx, base, arm),
                             **summarize_fidelity(ftab)}
    if fid_rows:
        pd.concat(fid_rows).to_csv(_tmp(ctx.out / "fidelity.csv"), index=False)
        _commit(ctx.out / "fidelity.csv")
    summary = {
        "synthetic": ctx.synthetic or False,
        **({"warning": SYNTHETIC_WARNING} if ctx.synthetic else {}),
        "task": ctx.config.to_dict(), "overrides": ctx.overrides, "arms": ctx.arms, "baseline": base,
        "dataset": ctx.dataset, "model": ctx.model, "edits_root": str(ctx.edits_root),
        "judge": judge_identity(ctx), "judge_settings": _last_judge_settings(ctx), "prompt_set": ctx.prompts.describe(),
        "selection": {k: v for k, v in gdata.selection_summary([_as_ref(s) for s in samples]).items()},
        "headline": _records(headline), "per_task": _records(tasks), "deltas": deltas, "fidelity": fidelity,
        "judge_failures": _failures(tasks), "throughput": throughput(ctx),
        "provenance": run_manifest(synthetic=ctx.synthetic or False, device=ctx.device,
                                   extra={"prompt_set": ctx.prompts.describe(), "judge_model": ctx.judge_model,
                                          "omnigen2_model": ctx.model}),
        "files": {"judgements": JUDGEMENTS, "scores": "scores.csv", "tasks": "tasks.csv",
                  "fidelity": "fidelity.csv" if fid_rows else None, "selection": "selection.json",
                  "markdown": "summary.md"},
    }
    write_json_atomic(ctx.out / "summary.json", summary)
    write_text_atomic(ctx.out / "summary.md", render_markdown(summary))
    return summary


def _last_judge_settings(ctx: RunContext) -> dict | None:
    """Decoding, dtype, retry policy and preprocessing of the judge as last run for this judge + prompt set."""
    runs = [r for r in read_jsonl(ctx.out / JUDGE_RUNS) if r.get("judge") == judge_identity(ctx)]
    return runs[-1].get("settings") if runs else None


def _same_settings(ctx: RunContext, base: str, arm: str) -> bool | None:
    """True when both arms' edits were made with the same settings apart from precision (None: unknown)."""
    a, b = read_arm_settings(ctx.edits_root, base), read_arm_settings(ctx.edits_root, arm)
    if a is None or b is None:
        return None
    return {k: v for k, v in a.items() if k != "precision"} == {k: v for k, v in b.items() if k != "precision"}


def _tmp(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp")


def _commit(path: Path) -> None:
    _tmp(path).replace(path)


def _as_ref(s: dict) -> gdata.SampleRef:
    return gdata.SampleRef(s["task_type"], s["language"], s["key"], s.get("instruction", ""),
                           bool(s.get("intersection")), -1)


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in frame.to_dict(orient="records")]


def _failures(tasks: pd.DataFrame) -> dict:
    out: dict = {}
    for row in _records(tasks):
        entry = out.setdefault(row["arm"], {}).setdefault(row["language"], {"total": 0, "missing_images": 0,
                                                                            "out_of_range": 0, "per_task": {}})
        entry["per_task"][row["task_type"]] = row["n_judge_failures"]
        entry["total"] += row["n_judge_failures"]
        entry["missing_images"] += row["n_missing_image"]
        entry["out_of_range"] += row["n_out_of_range"]
    return out


def throughput(ctx: RunContext) -> dict:
    """Seconds per sample and peak VRAM: generation per arm (from generation.jsonl), judging (judge_runs.jsonl)."""
    gen = {}
    for arm in ctx.arms:
        recs = generation_records(ctx.edits_root, arm)
        if recs:
            secs = pd.Series([r["seconds"] for r in recs])
            vram = [r["peak_vram_gib"] for r in recs if r.get("peak_vram_gib") is not None]
            gen[arm] = {"n_samples": len(recs), "seconds_per_sample_mean": float(secs.mean()),
                        "seconds_per_sample_median": float(secs.median()),
                        "seconds_per_sample_after_first": float(secs.iloc[1:].mean()) if len(secs) > 1 else None,
                        "peak_vram_gib_max": max(vram) if vram else None,
                        "steps": recs[0]["settings"].get("num_inference_steps"),
                        "output_size": recs[0].get("output_size")}
    ident = judge_identity(ctx)
    runs = [r for r in read_jsonl(ctx.out / JUDGE_RUNS) if r.get("judge") == ident]
    judge = None
    if runs:
        n = sum(r["n_samples"] for r in runs)
        vram = [r["peak_vram_gib"] for r in runs if r.get("peak_vram_gib") is not None]
        judge = {"n_samples": n, "seconds_per_sample": sum(r["seconds"] for r in runs) / n,
                 "calls_per_sample": 2, "attempts_per_call": sum(r["n_attempts"] for r in runs) /
                 max(1, sum(r["n_calls"] for r in runs)),
                 "new_tokens_per_attempt": (sum(r.get("new_tokens") or 0 for r in runs) /
                                            max(1, sum(r["n_attempts"] for r in runs))),
                 "peak_vram_gib_max": max(vram) if vram else None,
                 "batch_size": (runs[-1].get("settings") or {}).get("batch_size"),
                 "concurrency": (runs[-1].get("settings") or {}).get("concurrency")}
    return {"generation": gen, "judge": judge}


# ------------------------------------------------------------------------------------------------------ markdown
def render_markdown(summary: dict) -> str:
    """summary.md: banner, headline, per-task table (official style), deltas, fidelity, failures, provenance."""
    lines = []
    if summary["synthetic"]:
        lines += [f"> **{summary['warning']}**", ""]
    task = summary["task"]
    lines += [f"# GEdit-Bench: {task['task']}", "",
              f"Arms: {', '.join(summary['arms'])} (baseline {summary['baseline']}). Judge: `{summary['judge']['model']}`, "
              f"prompt set `{summary['prompt_set']['name']}` (sha256 {summary['prompt_set']['sha256']['set'][:16]}...). "
              f"Samples: {summary['selection']['n_samples']} (selection hash {summary['selection']['uids_sha256'][:16]}...). "
              f"Steps {task['generation']['steps']}, seed {task['generation']['seed']}, "
              f"resolution {task['generation']['resolution'] or 'input'}.", ""]
    lines += ["## Headline", "", "Official rule: unweighted mean over task groups; per-sample mean beside it.", "",
              "| arm | lang | SC | PQ | O | SC (per sample) | PQ (per sample) | O (per sample) | scored / selected | task groups | judge failures |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for h in summary["headline"]:
        lines.append(f"| {h['arm']} | {h['language']} | " + " | ".join(_f(h[m]) for m in METRICS) + " | "
                     + " | ".join(_f(h[f'{m}_per_sample']) for m in METRICS)
                     + f" | {h['n_scored']} / {h['n_selected']} | {h['n_task_groups']} | {h['n_judge_failures']} |")
    lines += ["", "## Per task group", ""]
    arms = summary["arms"]
    header = "| task | lang | " + " | ".join(f"{a} SC | {a} PQ | {a} O | {a} n" for a in arms) + " |"
    lines += [header, "|" + "---|" * (2 + 4 * len(arms))]
    by_key: dict = {}
    for row in summary["per_task"]:
        by_key.setdefault((row["task_type"], row["language"]), {})[row["arm"]] = row
    for (task_type, lang), per_arm in sorted(by_key.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        cells = []
        for a in arms:
            r = per_arm.get(a)
            cells += [_f(r[m]) if r else "-" for m in METRICS] + [f"{r['n_scored']}" if r else "-"]
        lines.append(f"| {task_type} | {lang} | " + " | ".join(cells) + " |")
    for d in summary["deltas"]:
        lines += ["", f"## {d['arm']} minus {d['baseline']} (paired, bootstrap 95% CI, {d['n_bootstrap']} resamples, "
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
    for arm, fid in summary["fidelity"].items():
        same = {True: "same seed and settings", False: "WARNING: settings differ beyond precision",
                None: "settings not recorded"}[fid["same_settings_but_precision"]]
        lines += ["", f"## Fidelity: {arm} edits against {fid['baseline']} edits ({same})", "",
                  "| lang | scope | n | PSNR dB (non-identical) | identical | SSIM |", "|---|---|---|---|---|---|"]
        for lang, res in ((k, v) for k, v in fid.items() if k not in ("baseline", "same_settings_but_precision")):
            o = res["overall_per_sample"]
            t = res["overall_task_mean"]
            lines.append(f"| {lang} | overall (task mean) | {t['n_task_groups']} groups | {_f(t['psnr_db'])} | - | "
                         f"{_f(t['ssim'], 4)} |")
            lines.append(f"| {lang} | overall (per sample) | {o['n']} | {_f(o['psnr_db'])} | {o['n_identical']} | "
                         f"{_f(o['ssim'], 4)} |")
            for r in res["per_task"]:
                lines.append(f"| {lang} | {r['task_type']} | {r['n']} | {_f(r['psnr_db'])} | {r['n_identical']} | "
                             f"{_f(r['ssim'], 4)} |")
    lines += ["", "## Judge failures (excluded, never scored)", ""]
    for arm, langs in summary["judge_failures"].items():
        for lang, f in langs.items():
            per = ", ".join(f"{t}: {n}" for t, n in f["per_task"].items() if n) or "none"
            lines.append(f"- {arm} / {lang}: {f['total']} judge failures ({per}); {f['out_of_range']} with "
                         f"out-of-range scores; {f['missing_images']} missing images")
    tp = summary["throughput"]
    lines += ["", "## Throughput", ""]
    for arm, g in tp["generation"].items():
        lines.append(f"- generate {arm}: {_f(g['seconds_per_sample_mean'], 3)} s/sample (median "
                     f"{_f(g['seconds_per_sample_median'], 3)}, n={g['n_samples']}), peak VRAM {_f(g['peak_vram_gib_max'])} GiB")
    if tp["judge"]:
        j = tp["judge"]
        batching = f"batch {j['batch_size']}" if j.get("batch_size") else f"{j.get('concurrency')} requests in flight"
        lines.append(f"- judge: {_f(j['seconds_per_sample'], 3)} s/sample (2 calls, {batching}, "
                     f"{_f(j['attempts_per_call'])} attempts/call), peak VRAM {_f(j['peak_vram_gib_max'])} GiB")
    prov = summary["provenance"]
    lines += ["", "## Provenance", "", f"- command: `{prov['command']}`", f"- git: {prov['git_revision']}",
              f"- date: {prov['date_utc']}", f"- device: {prov['device'].get('device_name')} ({prov['device'].get('device')})",
              f"- packages: " + ", ".join(f"{k} {v}" for k, v in prov["packages"].items()),
              f"- OmniGen2: `{summary['model']}`; dataset: `{summary['dataset']}`",
              f"- overrides: " + ("; ".join(f"{o['field']}: {o['old']!r} -> {o['new']!r} ({o['source']})"
                                           for o in summary["overrides"]) or "none"), ""]
    return "\n".join(lines)


def _f(value, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _ci(ci) -> str:
    return "-" if not ci else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


# --------------------------------------------------------------------------------------------------------- main
def run(ctx: RunContext, stage: str = "all") -> dict | None:
    """Run the requested stage(s); returns the summary when the score stage ran."""
    stages = ("generate", "judge", "score") if stage == "all" else (stage,)
    preflight(ctx, stages)
    ctx.out.mkdir(parents=True, exist_ok=True)
    distributed.merge_rank_records(ctx)  # records an interrupted torchrun run left in per-rank files (usually none)
    if {"generate", "judge"} & set(stages):
        ds, samples = select(ctx)
        if "generate" in stages:
            run_generate(ctx, ds, samples)
        if "judge" in stages:
            run_judge(ctx, ds, samples)
    return run_score(ctx) if "score" in stages else None


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if distributed.launched_with_several_ranks():  # torchrun: this process runs one shard
            ctx, summary = distributed.run_sharded(args, args.stage, sys.modules[__name__])
        else:
            ctx = make_context(args)
            summary = run(ctx, args.stage)
    except (SetupError, TaskError, gdata.DatasetError, PromptSetError, distributed.DistributedSetupError,
            SettingsMismatchError, JudgeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if summary is not None:
        if summary["synthetic"]:
            print(summary["warning"])
        print(f"wrote {ctx.out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
