"""Speed-up of a torchrun-sharded GEdit run on N GPUs over 1 GPU, on random-weight models of the real shapes.

For each GPU count it launches `torchrun --standalone --nproc-per-node N -m harness.gedit --synthetic full` twice:
generation of the bf16 arm into a fresh folder, then (optionally) judging the 1-GPU run's edits into another fresh
folder, and times each command from launch to exit (process start, model builds and the work: what a user waits
for). From the per-sample records it also gives the generation busy time (the slowest rank's summed per-edit
seconds, shards recomputed with harness.core.distributed.Shard.take), which leaves out start-up and model builds. It checks
that the edits and the judgements of every N equal those of 1 GPU. Scores of random models are meaningless; times
are real.

    python benchmarks/distributed_speedup.py --gpus 1 2 --json results/distributed_speedup_h200x2.json
    python benchmarks/distributed_speedup.py --synthetic tiny --device cpu --gpus 1 2 --json /tmp/d.json  # dry run
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

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from harness.core.distributed import Shard  # noqa: E402
from harness.core.records import run_manifest, write_json_atomic  # noqa: E402
from harness.gedit.run_folder import JUDGEMENTS, RunFolder, sample_key  # noqa: E402

GROUPS = ["background_change", "color_alter", "material_alter", "motion_change", "ps_human", "style_change",
          "subject-add", "text_change"]


def _launch(n: int, cli: list[str], log: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
           "-m", "harness.gedit", *cli]
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    return {"command": " ".join(["torchrun", *cmd[3:]]), "returncode": proc.returncode, "wall_seconds": wall,
            "log_tail": log.read_text(errors="replace")[-1500:] if proc.returncode else None}


def _busy(out: Path, n: int) -> dict:
    """Per rank: summed per-edit seconds of its shard (the shard rule of the GEdit runner, `Shard.take`)."""
    folder = RunFolder(out, out)
    secs = {sample_key(g): g["seconds"] for g in folder.generation_records("bf16")}
    samples = folder.selection_samples()
    per_rank = [sum(secs[sample_key(s)] for s in Shard(rank=r, world_size=n).take(samples)) for r in range(n)]
    return {"per_rank_seconds": per_rank, "slowest_rank_seconds": max(per_rank), "n_edits": len(secs)}


def _images(out: Path) -> dict[str, bytes]:
    folder = RunFolder(out, out)
    edits = (folder.edit_path("bf16", s) for s in folder.selection_samples())
    return {str(p.relative_to(out)): p.read_bytes() for p in edits if p.is_file()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 2], help="process counts, the first is the baseline")
    p.add_argument("--json", required=True)
    p.add_argument("--work", default="/tmp/distributed-speedup")
    p.add_argument("--tasks", nargs="+", default=GROUPS, help="one English sample per task group")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--judge", action="store_true", help="also time the judge stage (7B-shaped random judge)")
    p.add_argument("--judge-max-new-tokens", type=int, default=64)
    p.add_argument("--judge-batch-size", type=int, default=4)
    p.add_argument("--budget-s", type=float, default=420, help="skip the judge configs past this many seconds")
    p.add_argument("--synthetic", choices=("tiny", "full"), default="full")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    common = ["--synthetic", args.synthetic, "--precision", "bf16", "--languages", "en", "--tasks", *args.tasks,
              "--per-task", "1", "--steps", str(args.steps), "--resolution", str(args.resolution), "--no-progress"]
    if args.device:
        common += ["--device", args.device]
    t0 = time.perf_counter()
    result = {"what": "torchrun-sharded GEdit generation (and judging) on N GPUs vs 1; random-weight models of the "
                      "real shapes (--synthetic), one process per GPU; times from launch to exit",
              "synthetic": args.synthetic, "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "settings": {"samples": len(args.tasks), "arm": "bf16", "steps": args.steps,
                           "resolution": args.resolution, "judge_max_new_tokens": args.judge_max_new_tokens,
                           "judge_batch_size": args.judge_batch_size},
              "env": {k: os.environ.get(k) for k in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST",
                                                     "NVSHMEM_DISABLE_NVLS", "CUDA_VISIBLE_DEVICES")},
              "generate": {}, "judge": {}, "provenance": run_manifest(synthetic=args.synthetic, device=args.device)}
    base = args.gpus[0]
    for n in args.gpus:
        out = work / f"gen-{n}"
        run = _launch(n, [*common, "--stage", "generate", "--out", str(out)], work / f"gen-{n}.log")
        if run["returncode"] == 0:
            run.update(_busy(out, n), identical_to_baseline=_images(out) == _images(work / f"gen-{base}"))
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
                lines = (out / JUDGEMENTS).read_text()
                run["n_judged"] = len(lines.splitlines())
                run["samples_per_second"] = run["n_judged"] / run["wall_seconds"]
                run["identical_to_baseline"] = lines == (work / f"judge-{base}" / JUDGEMENTS).read_text()
            result["judge"][str(n)] = run
            write_json_atomic(args.json, _with_speedups(result, base))
    result["total_seconds"] = time.perf_counter() - t0
    result = _with_speedups(result, base)
    write_json_atomic(args.json, result)
    print(json.dumps({k: result[k] for k in ("generate", "judge", "speedup")}, indent=1, default=str)[:6000])
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
