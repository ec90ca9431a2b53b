"""Judging chunks of (arm, sample) pairs: the judge a run names, the settings check on resume, the images each pair
shows the judge (by the protocol), and the judgement and timing records appended per chunk.

A chunk is `judge.chunk_samples` pairs cut from the single-process order (`runner.judge_batches`), numbered in that
order whatever rank judges it (its timing line in judge_runs.jsonl carries the number and, for the in-process judge,
the fingerprint of every model batch, so runs with other world sizes can be compared batch by batch); its calls are
prepared (images loaded, resized by the protocol, encoded) on a worker thread while the previous chunk is judged.
The judge is in process (`QwenJudge`) or behind an OpenAI-compatible server (`ServedJudge`); nothing here branches
on which, apart from where the timing's peak VRAM comes from.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from harness.core.distributed import DistributedSetupError, Shard
from harness.core.records import RecordSink
from harness.gedit import data as gdata
from harness.gedit.context import SYNTHETIC_FULL, RunContext
from harness.gedit.judge import CallResult, Judge, QwenJudge, build_full_synthetic_judge, judge_calls_for_sample
from harness.gedit.judge_batching import prepared_in_background
from harness.gedit.protocol import ProtocolError, judge_images
from harness.gedit.run_folder import JUDGE_RUNS, JUDGEMENTS, RunFolder

log = logging.getLogger("harness.gedit")

Pair = tuple[str, gdata.SampleRef]  # (arm, sample): one judgement
Chunk = tuple[int, Sequence[Pair]]  # (chunk number in the single-process order, its pairs still to judge)


def load_judge(ctx: RunContext) -> Judge:
    """The judge ctx names: a server (--judge-url), the random full-size one, or a checkpoint loaded in process."""
    spec = ctx.config.judge
    if ctx.judge_server is not None:
        return ctx.judge_server.connect(ctx.judge_model, max_new_tokens=spec.max_new_tokens,
                                        max_retries=spec.max_retries)
    kwargs = dict(batch_size=ctx.batch_size, max_new_tokens=spec.max_new_tokens, max_retries=spec.max_retries,
                  **ctx.judge_speed)
    if ctx.judge_model == SYNTHETIC_FULL:
        return build_full_synthetic_judge(ctx.device, **kwargs)
    judge = QwenJudge.load(ctx.judge_model, ctx.device, **kwargs)
    judge.model_id = ctx.judge_model
    return judge


def check_same_on_every_rank(shard: Shard, settings: dict) -> None:
    """Refuse judge settings that differ between ranks (e.g. batch sizes chosen from unequal free memory): the
    ranks would cut the chunks differently and judge some pairs twice and others never."""
    everyone = shard.gather(settings)
    if any(s != everyone[0] for s in everyone):
        raise DistributedSetupError("the ranks' judges have different settings (" + "; ".join(
            f"rank {r}: batch_size {s.get('batch_size')}" for r, s in enumerate(everyone)) + "); pass --batch-size N "
            "so that every rank uses the same")


def judge_chunks(ctx: RunContext, ds, chunks: Sequence[Chunk], judge: Judge, shard: Shard) -> Iterator[int]:
    """Judge chunk after chunk, yielding the number done after each is appended; the next chunk's images are loaded
    and prepared (`judge.prepare`) on a worker thread while the current one is judged."""
    sinks = (RecordSink(ctx.folder.file(JUDGEMENTS), shard), RecordSink(ctx.folder.file(JUDGE_RUNS), shard))
    desc = "judge" if shard.world_size == 1 else f"judge rank {shard.rank}"
    bar = tqdm(total=2 * sum(len(pairs) for _, pairs in chunks), desc=desc, unit="call", disable=not ctx.progress)
    try:
        done = 0
        for (number, _), prepared in prepared_in_background(chunks, lambda c: prepare_chunk(ctx, ds, c[1], judge)):
            judge_chunk(ctx, prepared, judge, bar, *sinks, chunk=number)
            done += 1
            yield done
    finally:
        bar.close()


def prepare_chunk(ctx: RunContext, ds, part: Sequence[Pair], judge: Judge) -> dict:
    """A chunk's images as the protocol shows them, and its calls prepared: {"present": (arm, sample, edit path)
    triples, "missing": pairs without an edit, "inputs": judge.prepare(calls)}. Writes nothing (it runs on a worker
    thread)."""
    calls, present, missing, failed = [], [], [], []
    for arm, sample in part:
        try:  # one undecodable input fails its sample, not the run (its edit could not be made either)
            row = ds[sample.row]
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            failed.append((arm, sample, f"task {sample.task_type}, key {sample.key} ({sample.language}): the input "
                                        f"image cannot be decoded ({type(err).__name__}: {err})"))
            continue
        image_path = ctx.folder.found_edit(arm, sample)
        if image_path is None:
            missing.append((arm, sample))
            continue
        try:
            with Image.open(image_path) as opened:
                source, edited = judge_images(ctx.protocol, row, opened)
        except ProtocolError:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            failed.append((arm, sample, f"task {sample.task_type}, key {sample.key} ({sample.language}): the edit "
                                        f"{image_path.name} cannot be decoded ({type(err).__name__}: {err})"))
            continue
        calls += judge_calls_for_sample(f"{arm}|{sample.uid}", source, edited, sample.instruction, ctx.prompts)
        present.append((arm, sample, image_path))
    return {"present": present, "missing": missing, "failed": failed,
            "inputs": judge.prepare(calls) if calls else None}


def judge_chunk(ctx: RunContext, prepared: dict, judge: Judge, bar, judgements: RecordSink,
                runs: RecordSink, chunk: int | None = None) -> None:
    """Judge one prepared chunk (one judge.judge); append a judgement per pair and a timing line (with `chunk`, its
    number in the single-process order)."""
    ident, settings = ctx.judge_identity, judge.settings()
    for arm, sample in prepared["missing"]:
        expected = ctx.folder.edit_path(arm, sample).with_suffix(".*")
        judgements.append(_judgement(ctx.folder, arm, sample, ident, judge.describe(), settings,
                                     status="missing_image", failure=f"no edited image {expected}"))
        bar.update(2)
    for arm, sample, why in prepared["failed"]:
        log.error("judge %s: %s", arm, why)
        judgements.append(_judgement(ctx.folder, arm, sample, ident, judge.describe(), settings,
                                     status="input_error", failure=why))
        bar.update(2)
    present = prepared["present"]
    if not present:
        return
    cuda = str(ctx.device).startswith("cuda") and torch.cuda.is_available() and ctx.judge_server is None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    results = {r.call_id: r for r in judge.judge(prepared["inputs"], progress=bar)}
    seconds = time.perf_counter() - t0
    info = judge.describe()  # after the calls: a served judge adds what the server reported
    runs.append({"chunk": chunk, "arms": sorted({a for a, _, _ in present}), "n_samples": len(present),
                 "n_calls": len(results), "seconds": seconds,
                 "n_attempts": sum(len(r.attempts) for r in results.values()),
                 **judge.last_run_stats,
                 "peak_vram_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                 "judge": ident, "settings": info})
    for arm, sample, image_path in present:
        sc, pq = results[f"{arm}|{sample.uid}#sc"], results[f"{arm}|{sample.uid}#pq"]
        ok = sc.status == "ok" and pq.status == "ok"
        failure = "" if ok else "; ".join(f"{n}: {failure_reason(r)}" for n, r in (("sc", sc), ("pq", pq))
                                          if r.status != "ok")
        judgements.append(_judgement(ctx.folder, arm, sample, ident, info, settings,
                                     status="ok" if ok else "judge_failure", failure=failure, sc=sc.to_record(),
                                     pq=pq.to_record(), out_of_range="out_of_range" in (sc.status, pq.status),
                                     image=image_path))


def failure_reason(result: CallResult) -> str:
    """A failed call's status and why: the parser's reason and what upstream would have done, or the transport
    errors of a request that never succeeded (from its last attempt)."""
    if result.status == "out_of_range":
        return f"out_of_range (scores {result.scores})"
    last = result.attempts[-1] if result.attempts else {}
    if result.status == "transport_failure":
        return f"transport_failure ({'; '.join(last.get('transport_errors') or ['no answer'])})"
    parse = last.get("parse") or {}
    return f"{result.status} ({parse.get('error')}; upstream: {parse.get('upstream')})"


def _judgement(folder: RunFolder, arm, sample, ident, info, settings, *, status, failure="", sc=None, pq=None,
               out_of_range=False, image: Path | None = None) -> dict:
    image = image if image is not None else folder.edit_path(arm, sample)
    return {"arm": arm, **sample.to_record(), "image": str(image.relative_to(folder.edits_root)),
            "edited_sha256": folder.edit_sha256(arm, sample),  # with source_sha256: what this judgement is about
            "status": status, "failure": failure, "out_of_range": out_of_range, "sc": sc, "pq": pq,
            "judge": {**ident, "vision_preprocessing": info.get("vision_preprocessing"),
                      "synthetic": bool(info.get("synthetic")), "settings": settings}}
