"""The GEdit flow, one code path for one process or many: select -> generate -> judge -> merge -> score.

A single process is a `Shard` of a world of one. Under `torchrun --nproc-per-node N -m harness.gedit ...` each of
the N processes loads its own models on cuda:LOCAL_RANK (a gloo group for barriers) and takes its share:

- generation: round-robin over the selection (`shard.take(samples)`: rank r edits samples r, r+N, ...);
- judging: the (arm, sample) pairs in single-process order cut into chunks of the judge's `chunk_samples`
  (`judge_batches`; --batch-size for the in-process judge, chosen from the GPU's capacity, not its free memory,
  when not given; twice --judge-concurrency for a served one), chunk b going to rank b mod N. Chunks are never
  re-formed: pairs already judged are left out of their chunk, so every rank runs exactly the batches a single
  process would (same composition, same numerics; each chunk's timing line carries its number and the fingerprint
  of every model batch), and every sample keeps its seed, which never depends on rank or world size. The judge's
  settings are recorded with every judgement; a resume with other ones is refused (`check_judge_settings`).

Records go through `RecordSink`s (a rank appends to its own per-rank file); edited images go straight to the shared
layout (atomic renames). After the work, the main rank folds the per-rank files into the shared ones in
single-process order (`merge_rank_records`), writes distributed.json (every rank's device, shard, and when each
stage started and ended, for any world size) and scores, so the outputs are those of a single-process run. A rank
that dies takes the whole group down (torchrun stops the others), and only unfinished samples are lost: the next
run (sharded or not, any world size) merges the leftovers first and does only the rest.

Fault injection for tests: GEDIT_DIST_FAULT="RANK:STAGE:N" makes rank RANK exit abruptly (os._exit, like a crash)
after N edits of the first arm (STAGE "generate") or N judge batches (STAGE "judge").
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import time
from typing import Iterator, Sequence

from omnigen2_fp8.modes import ModeChoice

from harness.core.distributed import DistributedSetupError, Shard, launched_with_several_ranks, merge_rank_files
from harness.core.lock import FolderLock
from harness.core.records import RecordSink, run_manifest, write_json_atomic
from harness.gedit import data as gdata
from harness.gedit.context import RunContext, SetupError, arm_mode, preflight, weights_revision
from harness.gedit.generate import (arm_settings, free_pipeline, generate_samples, load_arm_pipeline,
                                    load_shared_components, release_device_memory)
from harness.gedit.judging import Pair, check_same_on_every_rank, judge_chunks, load_judge
from harness.gedit.judge_speed import SPEED_SETTING_KEYS, reproducibility, resolve_modes
from harness.gedit.protocol import check_dataset_columns
from harness.gedit.record import GeditSummary
from harness.gedit.run_folder import DIST_REPORT, GENERATION_LOG, JUDGE_RUNS, JUDGEMENTS, RunFolder, sample_key
from harness.gedit.summary import run_score

log = logging.getLogger("harness.gedit")

STAGES = ("generate", "judge", "score")
FAULT_ENV = "GEDIT_DIST_FAULT"
TIMEOUT_ENV = "GEDIT_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 3600  # longest wait at a barrier (the slowest rank's extra work), not the run's length
FAULT_EXIT_CODE = 3


# --------------------------------------------------------------------------------------------------------- flow
def open_shard(requested_device: str | None) -> Shard:
    """This process's shard: a torchrun rank (joins the process group) or the whole work in one process."""
    if not launched_with_several_ranks():
        return Shard.single(requested_device)
    shard = Shard.from_env(requested_device, timeout_s=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)),
                           launch_hint="torchrun --nproc-per-node N -m harness.gedit ...")
    shard.label_logs()
    return shard


def stages_of(stage: str, edits_elsewhere: bool = False) -> tuple[str, ...]:
    """--stage value -> the stages it runs, in order; edits made elsewhere (--edits) are never generated into."""
    if stage != "all":
        return (stage,)
    return ("judge", "score") if edits_elsewhere else STAGES


def run(ctx: RunContext, stage: str = "all", shard: Shard | None = None,
        startup: dict | None = None) -> GeditSummary | None:
    """Run the requested stage(s) on this shard; returns the summary on the main rank when the score stage ran.

    The main rank holds the --out folder's lock throughout (one launch writes a folder at a time). startup: unix
    times of the process's start-up steps (e.g. {"main_unix", "group_unix"}), recorded in distributed.json."""
    shard = shard or Shard.single(ctx.device)
    stages = stages_of(stage, ctx.edits_elsewhere)
    if stage == "all" and ctx.edits_elsewhere:
        log.info("--edits %s: judging and scoring the edits found there (no generation)", ctx.edits_root)
    preflight(ctx, stages)
    ctx.out.mkdir(parents=True, exist_ok=True)
    lock = (FolderLock(ctx.out, purpose=f"python -m harness.gedit --stage {stage}") if shard.is_main
            else contextlib.nullcontext())
    with lock:
        return _run_stages(ctx, stages, shard, startup or {})


def _run_stages(ctx: RunContext, stages: tuple[str, ...], shard: Shard, startup: dict) -> GeditSummary | None:
    ready_unix = time.time()  # imports, the process group and the run context are done: start-up ends here
    chunk_width = ctx.batch_size  # judge chunk width; a judge chooses it when --batch-size is not given
    if "judge" in stages:  # before any edit is made: the settings known without loading the judge must not change
        ctx.folder.check_judge_settings(ctx.judge_identity, ctx.judge_settings, partial=True,
                                        absent_is_a_value=SPEED_SETTING_KEYS if ctx.judge_server is None else ())
    if shard.is_main:  # an interrupted run's records, before anyone decides what is done
        leftovers = merge_rank_records(ctx.folder, ctx.arms, chunk_width)
        if any(leftovers.values()):
            log.info("merged records left by an interrupted run: %s", leftovers)
    shard.barrier()
    mine = {"rank": shard.rank, "local_rank": shard.local_rank, "host": socket.gethostname(), "device": shard.device,
            **startup, "ready_unix": ready_unix}
    if {"generate", "judge"} & set(stages):
        ds, samples = select(ctx, record=shard.is_main, for_judging="judge" in stages)
        if "generate" in stages:
            with _stage_times(mine, "generate") as report:
                report.update(generate_shard(ctx, ds, samples, shard))
            mine["generate_shard_samples"], mine["generate_seconds"] = report["samples"], report["seconds"]
            shard.barrier()  # every edit exists before any rank judges it
        if "judge" in stages:
            with _stage_times(mine, "judge") as report:
                report.update(judge_shard(ctx, ds, samples, shard))
            chunk_width = report["chunk_width"] or chunk_width
            mine["judged_pairs"], mine["judge_seconds"] = report["pairs"], report["seconds"]
    everyone = shard.gather(mine)  # also the barrier before the main rank merges
    if not shard.is_main:
        return None
    merged = merge_rank_records(ctx.folder, ctx.arms, chunk_width)
    if {"generate", "judge"} & set(stages):
        write_json_atomic(ctx.folder.file(DIST_REPORT), {
            "synthetic": ctx.synthetic or False, "world_size": shard.world_size, "backend": shard.backend,
            "stages": list(stages), "ranks": everyone, "merged_records": merged,
            "reproducibility": {
                "edits": edits_reproducibility(ctx),
                **({"judgements": reproducibility(resolve_modes(None, ctx.judge_speed.get("decode"))[1],
                                                  shard.device, ctx.judge_server is not None)}
                   if "judge" in stages else {})},
            "provenance": run_manifest(synthetic=ctx.synthetic or False, device=shard.device)})
    return run_score(ctx) if "score" in stages else None


def edits_reproducibility(ctx: RunContext) -> str:
    """What a run's edits share with a rerun on any number of processes (recorded in distributed.json)."""
    if ctx.compile:
        return ("--compile: not bitwise reproducible across processes; inductor's kernels depend on the shapes each "
                "process compiles for first (0 of 44 edits identical between 1 and 2 H200s, up to 14/255 levels)")
    return "the same edits for any number of processes: each sample's noise comes from its own seed"


@contextlib.contextmanager
def _stage_times(mine: dict, stage: str) -> Iterator[dict]:
    """mine[stage] = what the stage reports, plus when it started and ended (unix seconds: comparable across ranks
    and with a launcher's clock on one host) and its seconds."""
    report = mine[stage] = {"start_unix": time.time()}
    start = time.perf_counter()
    yield report
    report.update(seconds=time.perf_counter() - start, end_unix=time.time())


def select(ctx: RunContext, record: bool = True, for_judging: bool = True) -> tuple[object, list[gdata.SampleRef]]:
    """Load the dataset and choose the samples; `record`: write the choice to selection.json; `for_judging`: also
    refuse a copy without the column the protocol judges against (before any edit is made). Returns (dataset,
    samples)."""
    ds = gdata.load_gedit_dataset(ctx.dataset, ctx.config.dataset.revision, ctx.config.dataset.split)
    if for_judging:
        check_dataset_columns(ctx.protocol, ds.column_names)
    samples = gdata.select_samples(ds, ctx.config.selection)
    if not samples:
        raise SetupError(f"the selection {ctx.config.selection} matches no row of {ctx.dataset}")
    if record:
        ctx.folder.write_selection(gdata.selection_summary(samples), ctx.dataset,
                                   dataclasses.asdict(ctx.config.selection), [s.to_record() for s in samples])
    return ds, samples


# --------------------------------------------------------------------------------------------------- generation
def generate_shard(ctx: RunContext, ds, samples: Sequence[gdata.SampleRef], shard: Shard) -> dict:
    """Edit this shard's samples for every arm; returns {"samples": how many the shard holds, and
    `generate_arms`' report}."""
    mine = shard.take(samples)
    stop = fault_after(shard.rank, "generate")
    if stop is not None:
        arm = ctx.arms[0]
        part = ctx.folder.pending(arm, mine)[:stop]
        generate_arms(ctx, ds, part, shard, arms=[arm])
        _crash(shard.rank, f"{len(part)} {arm} edits")
    return {"samples": len(mine), **generate_arms(ctx, ds, mine, shard)}


def generate_arms(ctx: RunContext, ds, samples: Sequence[gdata.SampleRef], shard: Shard,
                  arms: Sequence[str] | None = None) -> dict:
    """Edits for every arm; finished samples are skipped. The parts every arm shares (VAE, Qwen2.5-VL) are loaded
    once; each arm loads only its DiT, freed before the next. Returns {"components_load_seconds": None when nothing
    was loaded, "arms": [{"arm", "mode", "edits", "load_seconds", "seconds"}] for the arms that made edits}."""
    folder = ctx.folder
    todo, modes = {}, {}
    for arm in arms or ctx.arms:
        modes[arm] = arm_mode(ctx, arm)  # recorded in the settings and run by _generate_arm: one decision
        folder.check_or_record_settings(arm, arm_settings(ctx.model, arm, ctx.config.generation,
                                                          model_weights=weights_revision(ctx.model),
                                                          compiled=modes[arm].compile))
        todo[arm] = folder.pending(arm, samples)
        if not todo[arm]:
            log.info("generate %s: all %d edits exist", arm, len(samples))
    report: dict = {"components_load_seconds": None, "arms": []}
    if not any(todo.values()):
        return report
    start = time.perf_counter()
    components = load_shared_components(ctx.model, ctx.device, ctx.synthetic)
    report["components_load_seconds"] = time.perf_counter() - start
    try:
        for arm, part in todo.items():
            if part:
                report["arms"].append(_generate_arm(ctx, ds, part, shard, arm, modes[arm], components))
    finally:
        del components
        release_device_memory()
    return report


def _generate_arm(ctx: RunContext, ds, todo: Sequence[gdata.SampleRef], shard: Shard, arm: str, mode: ModeChoice,
                  components) -> dict:
    log.info("generate %s (%s): %d edits to make", arm, mode.describe(), len(todo))
    start = time.perf_counter()
    pipe = load_arm_pipeline(ctx.model, arm, ctx.device, ctx.synthetic, time_shift=ctx.config.generation.time_shift,
                             components=components, **mode.pipeline_flags())
    loaded = time.perf_counter()
    try:
        generate_samples(pipe, ds, todo, ctx.folder, arm, ctx.config.generation,
                         RecordSink(ctx.folder.generation_log(arm), shard), progress=ctx.progress)
    finally:
        free_pipeline(pipe)
    return {"arm": arm, "mode": mode.describe(), "edits": len(todo), "load_seconds": loaded - start,
            "seconds": time.perf_counter() - start}


# ------------------------------------------------------------------------------------------------------ judging
def judge_batches(arms: Sequence[str], samples: Sequence, batch_size: int) -> list[list[Pair]]:
    """The (arm, sample) pairs in single-process order (arm by arm, selection order), cut into chunks of
    `batch_size` pairs (the judge's chunk_samples)."""
    pairs = [(arm, s) for arm in arms for s in samples]
    width = max(1, batch_size)
    return [pairs[i:i + width] for i in range(0, len(pairs), width)]


def judge_shard(ctx: RunContext, ds, samples: Sequence[gdata.SampleRef], shard: Shard) -> dict:
    """Judge this shard's chunks: the (arm, sample) pairs in single-process order cut into chunks of the judge's
    `chunk_samples` whatever was judged before, chunk b going to rank b mod N, and pairs already judged (in the
    shared file or any rank's file, about the images there now) left out of their chunk. So a resumed or sharded
    run forms the same chunks as one uninterrupted process. Every rank loads the judge while any pair is left
    (they must agree on its settings, which decide the chunks). Returns {"pairs": judged, "chunks": the numbers
    of the chunks judged, "chunk_width": None when nothing was left to judge, "load_seconds": None when no judge
    was loaded}."""
    done, folder = ctx.folder.judged_pairs(ctx.judge_identity), ctx.folder
    # pairs without a judgement about the edited and input images there now (each image is hashed once)
    pending = {(arm, *sample_key(s)) for arm in ctx.arms for s in samples
               if not folder.judgement_is_current(done.get((arm, *sample_key(s))), arm, s)}
    if not pending:
        log.info("judge: all %d judgements exist", len(ctx.arms) * len(samples))
        return {"pairs": 0, "chunks": [], "chunk_width": None, "load_seconds": None}
    start = time.perf_counter()
    judge = load_judge(ctx)
    load_seconds = time.perf_counter() - start
    settings = judge.settings()
    folder.check_judge_settings(ctx.judge_identity, settings)
    check_same_on_every_rank(shard, settings)
    numbered = list(enumerate(judge_batches(ctx.arms, samples, judge.chunk_samples)))
    todo = [(b, [(arm, s) for arm, s in chunk if (arm, *sample_key(s)) in pending])
            for b, chunk in shard.take(numbered)]
    todo = [(b, chunk) for b, chunk in todo if chunk]
    stop = fault_after(shard.rank, "judge")
    if stop == 0:
        _crash(shard.rank, "0 judge batches")
    for n_done in judge_chunks(ctx, ds, todo, judge, shard):
        if n_done == stop:
            _crash(shard.rank, f"{n_done} judge batches")
    return {"pairs": sum(len(chunk) for _, chunk in todo), "chunks": [b for b, _ in todo],
            "chunk_width": judge.chunk_samples, "load_seconds": load_seconds}


# ------------------------------------------------------------------------------------------------------ merging
def merge_rank_records(folder: RunFolder, arms: Sequence[str], batch_size: int | None) -> dict[str, int]:
    """Fold every per-rank record file of the run into its shared file; returns {shared file: records added}.

    New records go after the existing ones, in single-process order: judgements by judge batch (the single-process
    batch of each (arm, sample), writing order kept inside a batch), judge timing lines by chunk number, generation
    records by selection order, other files rank by rank. Records outside the current selection keep their order,
    after the rest. batch_size: the judge's chunk width (None when not known yet: judgements are then ordered pair
    by pair).
    """
    order = folder.selection_order()
    width = max(1, batch_size or 1)
    batch_of = {(arm, *k): (a * len(order) + i) // width for a, arm in enumerate(arms) for k, i in order.items()}
    last = float("inf")

    def order_key(shared):
        if shared.name == JUDGEMENTS:
            return lambda r: batch_of.get((r.get("arm"), *sample_key(r)), last)
        if shared.name == JUDGE_RUNS:
            return lambda r: last if r.get("chunk") is None else r["chunk"]
        if shared.name == GENERATION_LOG:
            return lambda r: order.get(sample_key(r), last)
        return lambda r: 0

    added: dict[str, int] = {}
    for parent in folder.rank_folders():
        added.update(merge_rank_files(parent, order_key))
    return added


# ---------------------------------------------------------------------------------------------- fault injection
def fault_after(rank: int, stage: str) -> int | None:
    """N from GEDIT_DIST_FAULT="RANK:STAGE:N" when it names this rank and stage, else None."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    parts = spec.split(":")
    if len(parts) != 3 or parts[1] not in ("generate", "judge") or not parts[0].isdigit() or not parts[2].isdigit():
        raise DistributedSetupError(f"{FAULT_ENV}={spec!r}: expected RANK:STAGE:N with STAGE generate or judge, "
                                    "e.g. 1:generate:2 (or unset it)")
    return int(parts[2]) if (int(parts[0]), parts[1]) == (rank, stage) else None


def _crash(rank: int, what: str) -> None:
    log.error("%s=%s: rank %d exits now, after %s", FAULT_ENV, os.environ[FAULT_ENV], rank, what)
    logging.shutdown()
    os._exit(FAULT_EXIT_CODE)
