"""`torchrun --nproc-per-node N -m harness.gedit ...`: GEdit generation and judging sharded over processes.

torchrun starts N copies of `harness.gedit`; each copy joins a torch.distributed process group through the
env:// rendezvous torchrun sets up (NCCL on GPUs, gloo on CPUs), loads its own models on cuda:LOCAL_RANK and works
on its own share of the selected samples:

- generation: round-robin over the selection (`harness.data.shard_samples`: rank r edits samples r, r+N, ...);
- judging: the (arm, sample) pairs in the order a single process judges them, cut into batches of --batch-size,
  batch b going to rank b mod N. Each rank therefore runs exactly the batches a single process would (same batch
  composition, so the same numerics), and every sample keeps its seed, which never depends on rank or world size.

Every record a rank appends goes to its own file (`rank_file`: `<dir>/_ranks/<name>.rankNNN.jsonl` beside the
shared `<dir>/<name>.jsonl`); edited images go straight to the shared layout (atomic renames). After a barrier, rank
0 folds the per-rank files into the shared ones in single-process order (`merge_rank_records`) and scores, so the
outputs are those of a single-process run. A rank that dies takes the whole group down (torchrun stops the other
workers), and only unfinished samples are lost: finished images and appended records stay, the next run (sharded
or not, any world size) merges the leftovers first and does only the rest.

Fault injection for tests: GEDIT_DIST_FAULT="RANK:STAGE:N" makes rank RANK exit abruptly (os._exit, like a crash)
after N edits of the first arm (STAGE "generate") or N judge batches (STAGE "judge").
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist

from harness.core.records import read_jsonl, run_manifest, write_json_atomic, write_text_atomic

log = logging.getLogger("harness.distributed")

RANK_DIR = "_ranks"
DIST_REPORT = "distributed.json"
FAULT_ENV = "GEDIT_DIST_FAULT"
TIMEOUT_ENV = "GEDIT_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 3600  # longest wait at a barrier (the slowest rank's extra work), not the run's length
FAULT_EXIT_CODE = 3
_RANK_FILE = re.compile(r"^(?P<stem>.+)\.rank(?P<rank>\d+)(?P<suffix>\.[^.]+)$")


class DistributedSetupError(RuntimeError):
    """torchrun's environment or the requested device cannot form the process group; the message says the fix."""


@dataclasses.dataclass(frozen=True)
class Rank:
    """This process's place in the group."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# ------------------------------------------------------------------------------------------------ process group
def launched_with_several_ranks() -> bool:
    """True under torchrun (or any env:// launcher) with WORLD_SIZE > 1; a single process never joins a group."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError as err:
        raise DistributedSetupError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer; launch with "
                                    "torchrun, which sets it") from err


def rank_device(requested: str | None, local_rank: int) -> tuple[str, str]:
    """(device, backend) of one rank: ("cuda:LOCAL_RANK", "nccl") for --device cuda (default when a GPU is
    visible), ("cpu", "gloo") for --device cpu."""
    requested = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cpu":
        return "cpu", "gloo"
    if requested != "cuda":
        raise DistributedSetupError(
            f"--device {requested} under torchrun: every rank uses its own GPU, cuda:LOCAL_RANK. Pass --device cuda "
            "(choose the GPUs with CUDA_VISIBLE_DEVICES) or --device cpu.")
    if not torch.cuda.is_available():
        raise DistributedSetupError("--device cuda under torchrun, but this machine has no visible CUDA GPU; "
                                    "pass --device cpu to shard over CPU processes (gloo backend)")
    if local_rank >= torch.cuda.device_count():
        raise DistributedSetupError(
            f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) are visible: use "
            f"--nproc-per-node {torch.cuda.device_count()} or fewer (one process per GPU)")
    return f"cuda:{local_rank}", "nccl"


def init_from_env(requested_device: str | None) -> Rank:
    """Join the process group torchrun described in the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT); on CUDA also make cuda:LOCAL_RANK this process's current device."""
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise DistributedSetupError(f"{', '.join(missing)} not set: start several ranks with "
                                    "`torchrun --nproc-per-node N -m harness.gedit ...`")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device, backend = rank_device(requested_device, local_rank)
    timeout = _dt.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    kwargs = {}
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        kwargs["device_id"] = torch.device(device)
    dist.init_process_group(backend=backend, init_method="env://", timeout=timeout, **kwargs)
    return Rank(dist.get_rank(), dist.get_world_size(), local_rank, backend, device)


def _several_ranks() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _several_ranks():
        dist.barrier()


# -------------------------------------------------------------------------------------------- per-rank records
def rank_path(path: str | Path, rank: int) -> Path:
    """`<dir>/<stem><suffix>` -> `<dir>/_ranks/<stem>.rankNNN<suffix>`."""
    path = Path(path)
    return path.parent / RANK_DIR / f"{path.stem}.rank{rank:03d}{path.suffix}"


def rank_file(path: str | Path) -> Path:
    """Where this process appends the records of the shared file `path`: `path` itself in a single process,
    its per-rank twin (`rank_path`) inside a process group of several ranks."""
    return rank_path(path, dist.get_rank()) if _several_ranks() else Path(path)


def _selection_order(out: Path) -> dict[tuple[str, str, str], int]:
    """(task_type, language, key) -> position in <out>/selection.json (empty when there is none)."""
    path = out / "selection.json"
    if not path.is_file():
        return {}
    samples = json.loads(path.read_text(encoding="utf-8"))["samples"]
    return {(s["task_type"], s["language"], s["key"]): i for i, s in enumerate(samples)}


def merge_rank_records(ctx) -> dict[str, int]:
    """Fold every per-rank record file under ctx.out and ctx.edits_root/<arm> into its shared file; returns
    {shared file: records added}.

    New records go after the existing ones, in single-process order: judgements by judge batch (the
    single-process batch of each (arm, sample), writing order kept inside a batch), generation records by
    selection order, other files rank by rank. A record already in the shared file is not added twice (a merge
    interrupted between writing and deleting is harmless). Run by one process while no rank appends.
    """
    order = _selection_order(ctx.out)
    width = max(1, ctx.batch_size or 1)  # None before a judge chose its chunk width: no judgement to order yet
    batch_of = {(arm, *k): (a * len(order) + i) // width for a, arm in enumerate(ctx.arms) for k, i in order.items()}
    last = float("inf")  # records outside the current selection keep their order, after the rest

    def sort_key(shared: Path):
        if shared.name == "judgements.jsonl":
            return lambda r: batch_of.get((r.get("arm"), r.get("task_type"), r.get("language"), r.get("key")), last)
        if shared.name == "generation.jsonl":
            return lambda r: order.get((r.get("task_type"), r.get("language"), r.get("key")), last)
        return lambda r: 0

    rank_dirs = [ctx.out / RANK_DIR, *Path(ctx.edits_root).glob(f"*/{RANK_DIR}")]
    added = {}
    for folder in dict.fromkeys(rank_dirs):
        for shared, parts in _rank_files(folder).items():
            added[str(shared)] = _merge_into(shared, parts, sort_key(shared))
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return added


def _rank_files(folder: Path) -> dict[Path, list[Path]]:
    """{shared file: its per-rank files in rank order} for one _ranks folder."""
    found: dict[Path, list[tuple[int, Path]]] = {}
    for part in folder.glob("*.rank*.*") if folder.is_dir() else ():
        m = _RANK_FILE.match(part.name)
        if m:
            found.setdefault(folder.parent / f"{m['stem']}{m['suffix']}", []).append((int(m["rank"]), part))
    return {shared: [p for _, p in sorted(parts)] for shared, parts in found.items()}


def _merge_into(shared: Path, parts: Sequence[Path], key) -> int:
    lines = [_line(r) for r in read_jsonl(shared)]  # a torn last line (crash mid-append) is dropped here
    seen = set(lines)
    new = [r for part in parts for r in read_jsonl(part)]
    new.sort(key=key)  # stable: rank order, then writing order, within equal keys
    fresh = [line for line in map(_line, new) if line not in seen and not seen.add(line)]
    if fresh:
        write_text_atomic(shared, "".join(line + "\n" for line in lines + fresh))
    for part in parts:
        part.unlink()
    return len(fresh)


def _line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False)  # what records.append_jsonl writes for a JSON-born record


# ---------------------------------------------------------------------------------------------------- sharding
def judge_batches(arms: Sequence[str], samples: Sequence, batch_size: int) -> list[list[tuple[str, object]]]:
    """The (arm, sample) pairs in single-process order (arm by arm, selection order), cut into batches."""
    pairs = [(arm, s) for arm in arms for s in samples]
    width = max(1, batch_size)
    return [pairs[i:i + width] for i in range(0, len(pairs), width)]


def shard_batches(batches: Sequence, rank: int, world_size: int) -> list[tuple[int, list]]:
    """(batch index, batch) for every world_size-th batch starting at `rank`."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    return [(b, batches[b]) for b in range(rank, len(batches), world_size)]


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


def generate_shard(gedit, ctx, ds, samples: Sequence, me: Rank) -> int:
    """Edit this rank's share of the selection (every arm) with `gedit.run_generate`; returns the share's size."""
    from harness.data import shard_samples
    from harness.generate import pending_samples

    shard = shard_samples(samples, me.rank, me.world_size)
    stop = fault_after(me.rank, "generate")
    if stop is not None:
        arm = ctx.arms[0]
        part = pending_samples(ctx.edits_root, arm, shard)[:stop]
        gedit.run_generate(dataclasses.replace(ctx, arms=[arm]), ds, part)
        _crash(me.rank, f"{len(part)} {arm} edits")
    gedit.run_generate(ctx, ds, shard)
    return len(shard)


def judge_shard(gedit, ctx, ds, samples: Sequence, me: Rank) -> int:
    """Judge this rank's chunks with `gedit.judge_chunks` (pairs already judged, here or in another rank's file, are
    left out); returns how many pairs it judged. Every rank loads the judge while any pair is left, since the
    chunks are cut by the judge's chunk width, which must be the same on every rank."""
    if gedit.all_judged(ctx, samples):
        log.info("judge: all judgements exist")
        return 0
    judge = gedit.load_judge(ctx)
    gedit.check_judge_settings(ctx, judge)
    _check_same_on_every_rank(judge.settings())
    ctx.batch_size = judge.chunk_samples
    todo = gedit.judge_chunks_of(ctx, samples, judge.chunk_samples, me.rank, me.world_size)
    stop = fault_after(me.rank, "judge")
    if stop == 0:
        _crash(me.rank, "0 judge batches")
    for done, _ in enumerate(gedit.judge_chunks(ctx, ds, todo, judge), 1):
        if done == stop:
            _crash(me.rank, f"{done} judge batches")
    return sum(len(chunk) for chunk in todo)


def _check_same_on_every_rank(settings: dict) -> None:
    """Refuse judge settings that differ between ranks (e.g. batch sizes chosen from unequal free memory): the
    ranks would cut the chunks differently and judge some pairs twice and others never."""
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, settings)
    if any(s != everyone[0] for s in everyone):
        raise DistributedSetupError("the ranks' judges have different settings (" + "; ".join(
            f"rank {r}: batch_size {s.get('batch_size')}" for r, s in enumerate(everyone)) + "); pass --batch-size N "
            "so that every rank uses the same")


# ------------------------------------------------------------------------------------------------------- driver
def _label_logs(me: Rank) -> None:
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter(
            f"%(levelname)s [rank {me.rank}/{me.world_size}] %(name)s: %(message)s"))


def run_sharded(args, stage: str = "all", gedit=None):
    """`harness.gedit.run` for one rank of a torchrun launch. Returns (ctx, summary): the summary on rank 0 when the
    score stage ran, None elsewhere.

    gedit: the harness.gedit module that parsed `args` (under `python -m` it is __main__, and a second import would
    raise exception classes its caller does not catch); default: import it.
    """
    if gedit is None:
        from harness import gedit
    me = init_from_env(args.device)
    try:
        _label_logs(me)
        if me.is_main:  # rank 0 writes the shared files (synthetic models, data) before anyone reads them
            ctx = gedit.make_context(args)
            barrier()
        else:
            barrier()
            ctx = gedit.make_context(args)
        ctx.device, ctx.progress = me.device, ctx.progress and me.is_main
        stages = ("generate", "judge", "score") if stage == "all" else (stage,)
        gedit.preflight(ctx, stages)
        ctx.out.mkdir(parents=True, exist_ok=True)
        ds = samples = None
        if {"generate", "judge"} & set(stages):
            ds, samples = gedit.select(ctx)
        if me.is_main:
            leftovers = merge_rank_records(ctx)  # an interrupted run's records, before anyone decides what is done
            if any(leftovers.values()):
                log.info("merged records left by an interrupted run: %s", leftovers)
        barrier()
        mine = {"rank": me.rank, "local_rank": me.local_rank, "host": socket.gethostname(), "device": me.device}
        if "generate" in stages:
            start = time.perf_counter()
            mine["generate_shard_samples"] = generate_shard(gedit, ctx, ds, samples, me)
            mine["generate_seconds"] = time.perf_counter() - start
            barrier()  # every edit exists before any rank judges it
        if "judge" in stages:
            start = time.perf_counter()
            mine["judged_pairs"] = judge_shard(gedit, ctx, ds, samples, me)
            mine["judge_seconds"] = time.perf_counter() - start
        everyone = [None] * me.world_size
        dist.all_gather_object(everyone, mine)  # also the barrier before rank 0 merges
        summary = None
        if me.is_main:
            merged = merge_rank_records(ctx)
            if {"generate", "judge"} & set(stages):
                write_json_atomic(ctx.out / DIST_REPORT, {
                    "synthetic": ctx.synthetic or False, "world_size": me.world_size, "backend": me.backend,
                    "stages": list(stages), "ranks": everyone, "merged_records": merged,
                    "provenance": run_manifest(synthetic=ctx.synthetic or False, device=me.device)})
            if "score" in stages:
                summary = gedit.run_score(ctx)
        return ctx, summary
    finally:
        dist.destroy_process_group()
