"""Speed-up of a torchrun-sharded GEdit run on N GPUs over 1 GPU, and whether N GPUs give the same results.

For each GPU count it launches `torchrun --standalone --nproc-per-node N -m harness.gedit --synthetic full` twice:
generation of every arm into a fresh folder, then (optionally) judging the 1-GPU run's edits into another fresh
folder, and times each command from launch to exit (process start, model builds and the work: what a user waits
for). Per rank it gives the busy time: the summed per-edit seconds of its shard (shards recomputed with
`Shard.take`, start-up and model builds left out) and the stage seconds every rank reports in distributed.json.

Sameness is checked on content, not on file bytes alone: every edit's pixels (max absolute difference, count of
pixel-identical edits) and PNG bytes, and every judgement's raw answers, status and scores. Scores of random models
are meaningless; times and sameness are real.

    python -m benchmarks.distributed_speedup --gpus 1 2 --judge --json results/distributed_speedup_nvidia-h200-x2.json
    python -m benchmarks.distributed_speedup --synthetic tiny --device cpu --gpus 1 2 --judge --per-task 1 --json /tmp/d.json
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
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
from harness.gedit.run_folder import DIST_REPORT, JUDGEMENTS, RunFolder, sample_key

GROUPS = sorted(GEDIT_EN_COUNTS)


def _launch(n: int, cli: list[str], log: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
           "-m", "harness.gedit", *cli]
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    return {"command": " ".join(["torchrun", *cmd[3:]]), "returncode": proc.returncode, "wall_seconds": wall,
            "log_tail": log.read_text(errors="replace")[-1500:] if proc.returncode else None}


def _busy(out: Path, n: int, arms: list[str]) -> dict:
    """Per rank: summed per-edit seconds of its shard over every arm (the runner's shard rule, `Shard.take`), and
    the stage seconds the ranks reported (distributed.json, written for N > 1)."""
    folder = RunFolder(out, out)
    secs = {(arm, sample_key(g)): g["seconds"] for arm in arms for g in folder.generation_records(arm)}
    samples = folder.selection_samples()
    per_rank = [sum(secs[(arm, sample_key(s))] for arm in arms for s in Shard(rank=r, world_size=n).take(samples))
                for r in range(n)]
    return {"per_rank_edit_seconds": per_rank, "slowest_rank_seconds": max(per_rank), "n_edits": len(secs),
            "ranks": _rank_report(out)}


def _rank_report(out: Path) -> list[dict] | None:
    path = out / DIST_REPORT
    return json.loads(path.read_text())["ranks"] if path.is_file() else None


def _edits(out: Path, arms: list[str]) -> dict[str, Path]:
    folder = RunFolder(out, out)
    paths = (folder.edit_path(arm, s) for arm in arms for s in folder.selection_samples())
    return {str(p.relative_to(out)): p for p in paths if p.is_file()}


def compare_edits(out: Path, base: Path, arms: list[str]) -> dict:
    """Edits of `out` against those of `base`: byte-identical PNGs, pixel-identical images, max |pixel difference|."""
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
            differing.append(name)
    return {"compared": len(common), "missing": sorted(set(ref) ^ set(mine)), "byte_identical": same_bytes,
            "pixel_identical": same_pixels, "max_abs_pixel_difference": max_diff, "differing": differing[:10],
            "identical": bool(common) and same_pixels == len(common) == len(ref) == len(mine)}


def _judgement_content(rec: dict) -> dict:
    """What a judgement says (answers, parses, status, scores), without where or when it was made."""
    return {k: rec.get(k) for k in ("status", "failure", "out_of_range", "sc", "pq")}


def compare_judgements(out: Path, base: Path) -> dict:
    """Judgements of `out` against those of `base`, per (arm, sample): same answers and scores; largest score gap."""
    def by_pair(folder: Path) -> dict:
        return {(r["arm"], *sample_key(r)): _judgement_content(r) for r in read_jsonl(folder / JUDGEMENTS)}
    mine, ref = by_pair(out), by_pair(base)
    common = sorted(set(mine) & set(ref), key=str)
    same = sum(mine[k] == ref[k] for k in common)
    gaps = [abs((mine[k][c] or {}).get("score") - (ref[k][c] or {}).get("score"))
            for k in common for c in ("sc", "pq")
            if (mine[k][c] or {}).get("score") is not None and (ref[k][c] or {}).get("score") is not None]
    return {"compared": len(common), "missing": len(set(mine) ^ set(ref)), "identical_records": same,
            "max_abs_score_difference": max(gaps, default=0.0),
            "identical": bool(common) and same == len(common) == len(mine) == len(ref)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 2], help="process counts, the first is the baseline")
    p.add_argument("--json", required=True)
    p.add_argument("--work", default="/tmp/distributed-speedup")
    p.add_argument("--tasks", nargs="+", default=GROUPS, help="English task groups (default: all 11)")
    p.add_argument("--per-task", type=int, default=3, help="samples per task group (default 3: 33 samples)")
    p.add_argument("--arms", nargs="+", default=["bf16", "fp8"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--eager", action="store_true", help="without CUDA graphs (the fast mode is the default)")
    p.add_argument("--judge", action="store_true", help="also time the judge stage (7B-shaped random judge)")
    p.add_argument("--judge-max-new-tokens", type=int, default=64)
    p.add_argument("--judge-batch-size", type=int, default=8)
    p.add_argument("--budget-s", type=float, default=540, help="skip the judge configs past this many seconds")
    p.add_argument("--synthetic", choices=("tiny", "full"), default="full")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    # The harness's own synthetic dataset holds 2 rows per group; write one with enough rows for --per-task.
    dataset = work / "dataset"
    if not (dataset / "data").is_dir():
        write_synthetic_gedit(dataset, per_task=args.per_task, languages=["en"],
                              image_size=64 if args.synthetic == "tiny" else 512)
    common = ["--synthetic", args.synthetic, "--dataset", str(dataset), "--precision", *args.arms, "--languages", "en", "--tasks", *args.tasks,
              "--per-task", str(args.per_task), "--steps", str(args.steps), "--resolution", str(args.resolution),
              "--no-progress"]
    if args.device:
        common += ["--device", args.device]
    if not args.eager and args.device != "cpu":
        common += ["--cuda-graphs"]
    t0 = time.perf_counter()
    result = {"what": "torchrun-sharded GEdit generation (and judging) on N GPUs vs 1; random-weight models of the "
                      "real shapes (--synthetic), one process per GPU; times from launch to exit; sameness of edits "
                      "(pixels) and judgements (answers, scores) against the baseline",
              "synthetic": args.synthetic, "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "settings": {"tasks": args.tasks, "per_task": args.per_task, "arms": args.arms, "steps": args.steps,
                           "resolution": args.resolution, "cuda_graphs": "--cuda-graphs" in common,
                           "judge_max_new_tokens": args.judge_max_new_tokens, "judge_batch_size": args.judge_batch_size},
              "env": {k: os.environ.get(k) for k in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST",
                                                     "NVSHMEM_DISABLE_NVLS", "CUDA_VISIBLE_DEVICES")},
              "generate": {}, "judge": {}, "provenance": run_manifest(synthetic=args.synthetic, device=args.device)}
    base = args.gpus[0]
    for n in args.gpus:
        out = work / f"gen-{n}"
        run = _launch(n, [*common, "--stage", "generate", "--out", str(out)], work / f"gen-{n}.log")
        if run["returncode"] == 0:
            run.update(_busy(out, n, args.arms), same_as_baseline=compare_edits(out, work / f"gen-{base}", args.arms))
            run["samples_per_second"] = run["n_edits"] / run["wall_seconds"]
            run["busy_samples_per_second"] = run["n_edits"] / run["slowest_rank_seconds"]
        result["generate"][str(n)] = run
        write_json_atomic(args.json, _with_speedups(result, base))
    if args.judge and result["generate"][str(base)]["returncode"] == 0:
        for n in args.gpus:
            if time.perf_counter() - t0 > args.budget_s:
                result["judge"][str(n)] = {"skipped": f"past the {args.budget_s:.0f} s budget"}
                continue
            out = work / f"judge-{n}"
            cli = [*common, "--stage", "judge", "--edits", str(work / f"gen-{base}"), "--out", str(out),
                   "--max-new-tokens", str(args.judge_max_new_tokens), "--batch-size", str(args.judge_batch_size)]
            run = _launch(n, cli, work / f"judge-{n}.log")
            if run["returncode"] == 0:
                run["n_judged"] = sum(1 for _ in read_jsonl(out / JUDGEMENTS))
                run["samples_per_second"] = run["n_judged"] / run["wall_seconds"]
                run["ranks"] = _rank_report(out)
                run["same_as_baseline"] = compare_judgements(out, work / f"judge-{base}")
            result["judge"][str(n)] = run
            write_json_atomic(args.json, _with_speedups(result, base))
    result["total_seconds"] = time.perf_counter() - t0
    result = _with_speedups(result, base)
    write_json_atomic(args.json, result)
    print(json.dumps({k: result[k] for k in ("generate", "judge", "speedup")}, indent=1, default=str)[:8000])
    return 0 if all(r.get("returncode") == 0 for r in result["generate"].values()) else 1


def _with_speedups(result: dict, base: int) -> dict:
    """speedup[stage][N] = baseline wall / N wall (and busy-time ratio for generation)."""
    speed = {}
    for stage in ("generate", "judge"):
        ref = result[stage].get(str(base), {})
        for n, run in result[stage].items():
            if run.get("returncode") == 0 and ref.get("returncode") == 0:
                entry = {"wall": ref["wall_seconds"] / run["wall_seconds"]}
                if "slowest_rank_seconds" in run:
                    entry["busy"] = ref["slowest_rank_seconds"] / run["slowest_rank_seconds"]
                speed.setdefault(stage, {})[n] = entry
    return {**result, "speedup": speed}


if __name__ == "__main__":
    sys.exit(main())
