"""Speed-up of a torchrun-sharded GEdit run on N GPUs over 1 GPU, and whether N GPUs give the same results.

For each GPU count it launches one `torchrun --standalone --nproc-per-node N -m harness.gedit --synthetic full
--stage all` (generation of every arm, judging by the 7B-shaped random judge, scoring) into a fresh folder, as a
user would, and times it from launch to exit. Every rank reports when it was ready (imports, process group, run
context done) and when each stage started and ended (distributed.json, unix seconds on the one host), so the
benchmark splits the wall time into:

- start-up per process: launch -> ready, plus the model loads (shared VAE + Qwen2.5-VL once, the DiT per arm, the
  judge) and the first edit's extra seconds over the arm's median edit (CUDA context warm-up, first graph capture);
- the generation stage: launch -> the last rank's last edit (what a user waits for before judging can start);
- the judge stage: first rank's start -> last rank's end (every rank starts after the same barrier);
- busy time per rank: summed per-edit seconds of its shard, summed judge-chunk seconds of its chunks.

Sameness is checked on content: every edit's pixels (max absolute difference, pixel- and byte-identical counts);
every judgement about the same images (raw answers of every attempt, statuses and scores, max score difference,
where the first differing answer is); and the judge's model batches (chunk by chunk: calls, order, padded length,
token and pixel hash). Scores of random models are meaningless; times and sameness are real. All launches get the same
OMP_NUM_THREADS (CPU thread counts change CPU float sums; torchrun would give 1 to N > 1 only).

    python -m benchmarks.distributed_speedup --gpus 1 2 --json results/distributed_speedup_nvidia-h200-x2.json
    python -m benchmarks.distributed_speedup --synthetic tiny --device cpu --gpus 1 2 --per-task 1 --json /tmp/d.json
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image

from benchmarks._common import REPO_ROOT
from harness.core.distributed import Shard
from harness.core.records import read_jsonl, run_manifest, write_json_atomic
from harness.gedit.data import GEDIT_EN_COUNTS, write_synthetic_gedit
from harness.gedit.judge_speed import DECODE_MODES
from harness.gedit.run_folder import DIST_REPORT, JUDGE_RUNS, JUDGEMENTS, RunFolder, sample_key

GROUPS = sorted(GEDIT_EN_COUNTS)
# The default size: 4 samples x 11 groups = 44 samples, 88 edits and 88 judgements per launch; 1 + 2 GPUs take
# about 7-8 minutes on H200s, and model builds are a small share of every rank's time.
DEFAULT_PER_TASK = 4


# ---------------------------------------------------------------------------------------------------- launching
def launch(n: int, cli: list[str], log: Path, env: dict, timeout_s: float) -> dict:
    """Run `torchrun --nproc-per-node n -m harness.gedit *cli`; returns command, return code, launch time (unix)
    and wall seconds. Past `timeout_s` the whole process group is killed (torchrun and its ranks)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
           "-m", "harness.gedit", *cli]
    launch_unix, start = time.time(), time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # its own group: a timeout kills the ranks too
        try:
            returncode = proc.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            returncode = "timeout"
    wall = time.perf_counter() - start
    return {"command": " ".join(["torchrun", *cmd[3:]]), "returncode": returncode, "launch_unix": launch_unix,
            "wall_seconds": wall, "log_tail": log.read_text(errors="replace")[-1500:] if returncode else None}


# ------------------------------------------------------------------------------------------------------ timings
def rank_reports(out: Path) -> list[dict]:
    """Every rank's entry of distributed.json (device, ready time, per-stage start/end, load seconds)."""
    return json.loads((out / DIST_REPORT).read_text())["ranks"]


def timings(out: Path, n: int, arms: list[str], run: dict) -> dict:
    """Stage walls, start-up and busy seconds of one launch from its records (see the module docstring)."""
    ranks, launch_unix = rank_reports(out), run["launch_unix"]
    folder = RunFolder(out, out)
    samples = folder.selection_samples()
    edit_secs = {(arm, sample_key(g)): g["seconds"] for arm in arms for g in folder.generation_records(arm)}
    chunk_secs = [(r["chunk"], r["seconds"]) for r in read_jsonl(out / JUDGE_RUNS)]
    per_rank = []
    for rank in ranks:
        shard = Shard(rank=rank["rank"], world_size=n).take(samples)
        gen, judge = rank.get("generate") or {}, rank.get("judge") or {}
        first_extra = {arm: _first_edit_extra([edit_secs.get((arm, sample_key(s))) for s in shard]) for arm in arms}
        loads = {"components": gen.get("components_load_seconds"),
                 **{f"dit_{a['arm']}": a["load_seconds"] for a in gen.get("arms", [])},
                 "judge": judge.get("load_seconds")}
        ready = rank["ready_unix"] - launch_unix
        per_rank.append({
            "rank": rank["rank"], "device": rank["device"],
            "ready_seconds": ready,  # torchrun, interpreter, imports, process group, run context
            "ready_steps_seconds": _steps(launch_unix, rank),
            "load_seconds": loads,
            "first_edit_extra_seconds": first_extra,
            "startup_seconds": ready + sum(v for v in loads.values() if v) + sum(v for v in first_extra.values() if v),
            "edit_busy_seconds": sum(edit_secs.get((arm, sample_key(s)), 0.0) for arm in arms for s in shard),
            "judge_busy_seconds": sum(sec for chunk, sec in chunk_secs
                                      if chunk is not None and chunk % n == rank["rank"]),  # chunk b on rank b mod n
            "generate_samples": gen.get("samples"), "judged_pairs": judge.get("pairs"),
            "judge_chunks": judge.get("chunks"),
        })
    gens = [r["generate"] for r in ranks if r.get("generate")]
    judges = [r["judge"] for r in ranks if r.get("judge")]
    return {
        "wall_seconds": run["wall_seconds"],
        "generate_wall_seconds": max(g["end_unix"] for g in gens) - launch_unix if gens else None,
        "judge_wall_seconds": (max(j["end_unix"] for j in judges) - min(j["start_unix"] for j in judges)
                               if judges else None),
        "after_judge_seconds": (run["wall_seconds"] - (max(j["end_unix"] for j in judges) - launch_unix)
                                if judges else None),  # merge, scoring, exit
        "n_edits": len(edit_secs), "n_judged": sum(1 for _ in read_jsonl(out / JUDGEMENTS)),
        "ranks": per_rank,
        "slowest_rank_edit_busy_seconds": max(r["edit_busy_seconds"] for r in per_rank),
        "slowest_rank_judge_busy_seconds": max(r["judge_busy_seconds"] for r in per_rank),
    }


def _steps(launch_unix: float, rank: dict) -> dict:
    """Launch -> ready in steps: to main() (torchrun, interpreter, imports), to the process group, to ready (run
    context, preflight, folder lock, leftover merge)."""
    marks = [("launch", launch_unix)] + [(k[:-5], rank[k]) for k in ("main_unix", "group_unix", "ready_unix")
                                         if rank.get(k)]
    return {f"{a}_to_{b}": t1 - t0 for (a, t0), (b, t1) in zip(marks, marks[1:])}


def _first_edit_extra(seconds: list[float | None]) -> float | None:
    """A rank's first edit of an arm minus the median of its other edits: warm-up paid once per process."""
    done = [s for s in seconds if s is not None]
    return done[0] - statistics.median(done[1:]) if len(done) > 1 else None


def _estimate_seconds(base_run: dict, n: int) -> float:
    """A launch on n GPUs from the baseline's: every process pays the start-up, the rest splits (10 % slack)."""
    wall = base_run.get("wall_seconds", 0.0)
    startup = max((r["startup_seconds"] for r in (base_run.get("timings") or {}).get("ranks", [])), default=wall / 2)
    return startup + 1.1 * (wall - startup) / n


def speedups(result: dict, base: int) -> dict:
    """speedup[N] = baseline / N for the launch's wall, each stage's wall and the slowest rank's busy seconds."""
    ref = result["runs"].get(str(base), {}).get("timings")
    out = {}
    for n, run in result["runs"].items():
        mine = run.get("timings")
        if not (ref and mine):
            continue
        pairs = {"wall": "wall_seconds", "generate_wall": "generate_wall_seconds",
                 "generate_busy": "slowest_rank_edit_busy_seconds", "judge_wall": "judge_wall_seconds",
                 "judge_busy": "slowest_rank_judge_busy_seconds"}
        out[n] = {k: ref[v] / mine[v] for k, v in pairs.items() if ref.get(v) and mine.get(v)}
    return out


# ---------------------------------------------------------------------------------------------------- sameness
def _edits(out: Path, arms: list[str]) -> dict[str, Path]:
    folder = RunFolder(out, out)
    paths = (folder.edit_path(arm, s) for arm in arms for s in folder.selection_samples())
    return {str(p.relative_to(out)): p for p in paths if p.is_file()}


def compare_edits(out: Path, base: Path, arms: list[str]) -> dict:
    """Edits of `out` against those of `base`: byte-identical PNGs, pixel-identical images, max |pixel difference|
    (0-255 levels; 255 where the sizes differ)."""
    mine, ref = _edits(out, arms), _edits(base, arms)
    common = sorted(set(mine) & set(ref))
    same_bytes = same_pixels = 0
    max_diff, differing = 0, []
    for name in common:
        same_bytes += mine[name].read_bytes() == ref[name].read_bytes()
        a = np.asarray(PIL.Image.open(mine[name]).convert("RGB"), dtype=np.int16)
        b = np.asarray(PIL.Image.open(ref[name]).convert("RGB"), dtype=np.int16)
        diff = int(np.abs(a - b).max()) if a.shape == b.shape else 255
        same_pixels += diff == 0
        max_diff = max(max_diff, diff)
        if diff:
            differing.append({"edit": name, "max_abs_pixel_difference": diff})
    return {"compared": len(common), "missing": sorted(set(ref) ^ set(mine)), "byte_identical": same_bytes,
            "pixel_identical": same_pixels, "max_abs_pixel_difference": max_diff, "differing": differing[:10],
            "identical": bool(common) and same_pixels == len(common) == len(ref) == len(mine)}


def _answers(call: dict | None) -> list[str]:
    return [a.get("answer") for a in (call or {}).get("attempts", [])]


def _first_difference(mine: dict, ref: dict) -> dict | None:
    """Where two judgements' raw answers first differ: call (sc/pq), attempt, character."""
    for name in ("sc", "pq"):
        for attempt, (a, b) in enumerate(zip(_answers(mine.get(name)), _answers(ref.get(name)))):
            if a != b:
                a, b = a or "", b or ""
                at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                return {"call": name, "attempt": attempt, "char": at}
        if len(_answers(mine.get(name))) != len(_answers(ref.get(name))):
            return {"call": name, "attempt": min(len(_answers(mine.get(name))), len(_answers(ref.get(name)))),
                    "char": None}
    return None


def compare_judgements(out: Path, base: Path) -> dict:
    """Judgements of `out` against those of `base`, per (arm, sample) about the same images (edit and input hashes):
    identical raw answers (every attempt), identical statuses and scores, largest score gap, first differences."""
    def by_pair(folder: Path) -> dict:
        return {(r["arm"], *sample_key(r)): r for r in read_jsonl(folder / JUDGEMENTS)}

    mine, ref = by_pair(out), by_pair(base)
    common = sorted(set(mine) & set(ref), key=str)
    same_images = [k for k in common if (mine[k].get("edited_sha256"), mine[k].get("source_sha256"))
                   == (ref[k].get("edited_sha256"), ref[k].get("source_sha256"))]
    answers = scores = scored = 0
    gaps, differing = [], []
    for k in same_images:
        a, b = mine[k], ref[k]
        same_answers = all(_answers(a.get(c)) == _answers(b.get(c)) for c in ("sc", "pq"))
        answers += same_answers
        scores += (a["status"], *((a.get(c) or {}).get("score") for c in ("sc", "pq"))) == \
                  (b["status"], *((b.get(c) or {}).get("score") for c in ("sc", "pq")))
        pair_gaps = [abs(a[c]["score"] - b[c]["score"]) for c in ("sc", "pq")
                     if (a.get(c) or {}).get("score") is not None and (b.get(c) or {}).get("score") is not None]
        scored += len(pair_gaps) == 2
        gaps += pair_gaps
        if not same_answers:
            differing.append({"pair": "/".join(k), **(_first_difference(a, b) or {})})
    return {"compared": len(common), "missing": len(set(mine) ^ set(ref)), "same_images": len(same_images),
            "identical_answers": answers, "identical_scores": scores, "pairs_scored_in_both": scored,
            "max_abs_score_difference": max(gaps, default=None),
            "differing": differing[:10],
            "first_differences_by_attempt": _count(d.get("attempt") for d in differing),
            "identical": bool(common) and answers == len(common) == len(mine) == len(ref)}


def compare_judge_batches(out: Path, base: Path) -> dict:
    """The judge's model batches of `out` against `base`, chunk by chunk (judge_runs.jsonl fingerprints): first
    attempts are fixed by the chunking alone; retries follow the answers, so they match when the answers do."""
    def plans(folder: Path) -> dict:
        return {r.get("chunk"): r.get("batch_plan") for r in read_jsonl(folder / JUDGE_RUNS)}

    mine, ref = plans(out), plans(base)
    common = sorted(set(mine) & set(ref), key=str)
    first = sum(_attempt(mine[c], 0) == _attempt(ref[c], 0) for c in common)
    every = sum(mine[c] == ref[c] for c in common)
    return {"chunks_compared": len(common), "missing_chunks": len(set(mine) ^ set(ref)),
            "chunks_with_identical_first_attempt_batches": first, "chunks_with_identical_batches": every,
            "differing_chunks": [c for c in common if _attempt(mine[c], 0) != _attempt(ref[c], 0)][:10],
            "identical": bool(common) and first == len(common) == len(mine) == len(ref)}


def _attempt(plan: list[dict] | None, attempt: int) -> list[dict] | None:
    return None if plan is None else [b for b in plan if b.get("attempt") == attempt]


def _count(values) -> dict:
    counts: dict = {}
    for v in values:
        counts[str(v)] = counts.get(str(v), 0) + 1
    return counts


# --------------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 2], help="process counts, the first is the baseline")
    p.add_argument("--json", required=True)
    p.add_argument("--work", default="/tmp/distributed-speedup")
    p.add_argument("--tasks", nargs="+", default=GROUPS, help="English task groups (default: all 11)")
    p.add_argument("--per-task", type=int, default=DEFAULT_PER_TASK,
                   help=f"samples per task group (default {DEFAULT_PER_TASK}: "
                        f"{DEFAULT_PER_TASK * len(GROUPS)} samples)")
    p.add_argument("--arms", nargs="+", default=["bf16", "fp8"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--mode", choices=("auto", "compile", "eager"), default="auto",
                   help="the DiT's execution mode: auto = harness.gedit's default (CUDA graphs on GPUs), compile = "
                        "--compile (compile + CUDA graphs), eager = --eager")
    p.add_argument("--no-judge", action="store_true", help="generation only (--stage generate)")
    p.add_argument("--judge-max-new-tokens", type=int, default=64)
    p.add_argument("--judge-decode", default="eager-reproducible", choices=DECODE_MODES,
                   help="the judge's decode mode (default eager-reproducible: the judgements must be comparable "
                        "across launches; eager, the harness default, is faster but not bitwise reproducible)")
    p.add_argument("--judge-batch-size", type=int, default=8,
                   help="judge calls per batch = pairs per chunk (default 8: 11 chunks of the 88 pairs to deal out)")
    p.add_argument("--budget-s", type=float, default=540,
                   help="stop (kill) a launch past this many seconds of the whole benchmark; a later GPU count "
                        "whose estimated time does not fit is skipped")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS of every rank (default: CPU cores / the largest GPU count)")
    p.add_argument("--synthetic", choices=("tiny", "full"), default="full")
    p.add_argument("--device", default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    # The harness's own synthetic dataset holds 2 rows per group; write one with enough rows for --per-task.
    dataset = work / f"dataset-{args.per_task}"
    if not (dataset / "data").is_dir():
        write_synthetic_gedit(dataset, per_task=args.per_task, languages=["en"],
                              image_size=64 if args.synthetic == "tiny" else 512)
    common = ["--synthetic", args.synthetic, "--dataset", str(dataset), "--precision", *args.arms,
              "--languages", "en", "--tasks", *args.tasks, "--per-task", str(args.per_task),
              "--steps", str(args.steps), "--resolution", str(args.resolution), "--no-progress", "--bootstrap", "1000",
              "--stage", "generate" if args.no_judge else "all"]
    if not args.no_judge:
        common += ["--max-new-tokens", str(args.judge_max_new_tokens), "--batch-size", str(args.judge_batch_size),
                   "--judge-decode", args.judge_decode]
    if args.device:
        common += ["--device", args.device]
    if args.mode != "auto":
        common += [f"--{args.mode}"]
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(args.gpus))
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": path}
    t0 = time.perf_counter()
    result = {"what": "torchrun-sharded GEdit run (generation, judging, scoring in one launch) on N GPUs vs 1; "
                      "random-weight models of the real shapes (--synthetic), one process per GPU; wall time from "
                      "launch to exit split by the ranks' own stage times; sameness of edits (pixels), judgements "
                      "(raw answers, scores) and judge batches against the baseline",
              "synthetic": args.synthetic, "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "settings": {"tasks": args.tasks, "per_task": args.per_task, "samples": args.per_task * len(args.tasks),
                           "arms": args.arms, "steps": args.steps, "resolution": args.resolution,
                           "mode": args.mode, "judge": not args.no_judge,
                           "judge_max_new_tokens": args.judge_max_new_tokens, "judge_decode": args.judge_decode,
                           "judge_batch_size": args.judge_batch_size, "omp_num_threads": threads},
              "env": {k: os.environ.get(k) for k in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST",
                                                     "NVSHMEM_DISABLE_NVLS", "CUDA_VISIBLE_DEVICES")},
              "runs": {}, "sameness": {}, "provenance": run_manifest(synthetic=args.synthetic, device=args.device)}
    base = args.gpus[0]
    for n in args.gpus:
        elapsed = time.perf_counter() - t0
        estimate = _estimate_seconds(result["runs"].get(str(base), {}), n)
        if n != base and elapsed + estimate > args.budget_s:
            result["runs"][str(n)] = {"skipped": f"an estimated {estimate:.0f} s does not fit the "
                                                 f"{args.budget_s:.0f} s budget after {elapsed:.0f} s"}
            continue
        out = work / f"run-{n}"
        run = launch(n, [*common, "--out", str(out)], work / f"run-{n}.log", env, args.budget_s - elapsed)
        if run["returncode"] == 0:
            run["timings"] = timings(out, n, args.arms, run)
            if n != base and result["runs"][str(base)].get("returncode") == 0:
                base_out = work / f"run-{base}"
                result["sameness"][str(n)] = {"edits": compare_edits(out, base_out, args.arms)}
                if not args.no_judge:
                    result["sameness"][str(n)].update(judgements=compare_judgements(out, base_out),
                                                      judge_batches=compare_judge_batches(out, base_out))
        result["runs"][str(n)] = run
        write_json_atomic(args.json, {**result, "speedup": speedups(result, base)})
    result["total_seconds"] = time.perf_counter() - t0
    result["speedup"] = speedups(result, base)
    write_json_atomic(args.json, result)
    print(json.dumps({k: result[k] for k in ("speedup", "sameness")}, indent=1, default=str)[:8000])
    return 0 if all(r.get("returncode") == 0 for r in result["runs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
