"""What a GEdit-Bench run costs on this GPU: seconds per sample and peak VRAM for generation (per arm) and judging.

Runs `python -m harness.gedit --synthetic full` (random weights with the real shapes: OmniGen2 DiT + Qwen2.5-VL-3B +
FLUX VAE, and a Qwen2.5-VL-7B-shaped judge) on a handful of samples, then writes one JSON with the measured numbers
and a linear estimate for the 606-sample English set. Speed and memory of random weights are those of the real
models; the judge is the exception in one respect: a random judge rarely stops early, so it decodes all
max_new_tokens (512) per call, an upper bound for a real judge (whose answers are typically far shorter); the JSON
gives the decoded tokens per call so the estimate can be rescaled.

    python -m benchmarks.gedit_throughput --out /tmp/gedit-tp --json results/gedit_throughput.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

FULL_SET_EN = 606


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="run folder (edits, judgements)")
    parser.add_argument("--json", required=True, help="where to write the throughput JSON")
    parser.add_argument("--task", default="gedit-en-10pct")
    parser.add_argument("--tasks", nargs="+", default=["color_alter", "ps_human", "style_change", "text_change",
                                                       "subject-add", "tone_transfer"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--synthetic", choices=("tiny", "full"), default="full", help="tiny: a CPU dry run of this script")
    parser.add_argument("--from-run", action="store_true",
                        help="do not run anything: summarise the finished run already in --out")
    args = parser.parse_args(argv)

    from harness.gedit.__main__ import main as gedit_main

    if args.from_run:
        return summarize(Path(args.out), Path(args.json), args.batch_size)
    cli = ["--synthetic", args.synthetic, "--task", args.task, "--per-task", "1", "--tasks", *args.tasks, "--out", args.out,
           "--batch-size", str(args.batch_size), "--no-progress", "--bootstrap", "200"]
    if args.steps:
        cli += ["--steps", str(args.steps)]
    code = gedit_main(cli)
    if code:
        return code
    return summarize(Path(args.out), Path(args.json), args.batch_size)


def summarize(out: Path, json_path: Path, batch_size: int) -> int:
    """Throughput JSON from a finished `harness.gedit` run folder (its summary.json and generation.jsonl)."""
    from harness.core.records import read_jsonl, write_json_atomic
    from harness.gedit.run_folder import SUMMARY_JSON, RunFolder

    # Read as plain JSON, not as a GeditSummary: summaries written before schema_version existed still work here.
    summary = json.loads((out / SUMMARY_JSON).read_text())
    tp = summary["throughput"]
    gen, judge = tp["generation"], tp["judge"]
    steps = summary["task"]["generation"]["steps"]
    folder = RunFolder.reopen(out, summary.get("edits_root"), next(iter(gen), None))  # the run may have moved
    records = {arm: list(read_jsonl(folder.generation_log(arm))) for arm in gen}
    per_arm = {}
    for arm, g in gen.items():
        warm = records[arm][1:] or records[arm]  # the first edit pays one-time compilation and allocator warm-up
        denoise = sum(r["stage_seconds"]["denoise"] for r in warm) / len(warm)
        total = sum(r["seconds"] for r in warm) / len(warm)
        per_arm[arm] = {**g, "seconds_per_sample_warm": total, "denoise_seconds_warm": denoise,
                        "estimated_seconds_per_sample_at_50_steps": total - denoise + denoise * 50 / steps,
                        "first_sample_seconds": records[arm][0]["seconds"]}
    warm_gen = sum(a["seconds_per_sample_warm"] for a in per_arm.values())
    result = {
        "what": "GEdit-Bench throughput with random-weight models of the real shapes (--synthetic full)",
        "synthetic": summary["synthetic"], "warning": summary.get("warning"),
        "settings": {"task": summary["task"]["task"], "steps": steps,
                     "resolution": summary["task"]["generation"]["resolution"],
                     "samples_per_arm": summary["selection"]["n_samples"],
                     "task_groups": summary["task"]["selection"]["task_groups"],
                     "judge_batch_size": (summary.get("judge_settings") or {}).get("batch_size", batch_size),
                     "judge_max_new_tokens": summary["task"]["judge"]["max_new_tokens"]},
        "generation": per_arm,
        "judge": judge,
        "judge_settings": summary.get("judge_settings"),
        "estimate_606_samples_en": {
            "generation_hours_all_arms": FULL_SET_EN * warm_gen / 3600,
            "judge_hours_all_arms_upper_bound": (FULL_SET_EN * len(per_arm) * judge["seconds_per_sample"] / 3600
                                                 if judge else None),
            "note": f"at {steps} steps and the measured resolution; judge bound assumes every call decodes "
                    f"{summary['task']['judge']['max_new_tokens']} tokens and no retry",
        },
        "provenance": summary["provenance"],
    }
    write_json_atomic(json_path, result)
    print(json.dumps({k: result[k] for k in ("generation", "judge", "estimate_606_samples_en")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
