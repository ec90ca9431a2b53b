"""python -m harness: the main job, BF16 vs FP8 end to end, then one report.

    python -m harness                    # embedded default: tiny random-weight models on this machine (CPU is fine)
    python -m harness --real             # the real checkpoints (hub ids or local folders; see --model/--judge/--dataset)
    python -m harness --synthetic full   # full-size random weights on a GPU: real latency / VRAM, meaningless scores

It runs, in order: `harness.gedit` (generate -> judge -> score, both arms), `harness.profile` (latency, VRAM and
kernel breakdown of the GEdit setting, both arms), and `harness.report` over both result folders. Each step is the
same command a user would type; they are printed before they run, so any of them can be rerun or changed alone.
Every step resumes, so rerunning after an interruption continues where it stopped.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path


def build_steps(args: argparse.Namespace) -> list[list[str]]:
    """The three commands of the main job, as argv lists."""
    out = Path(args.out)
    gedit_dir, profile_dir, report = out / "gedit", out / "profile", out / "report.md"
    weights = [] if args.real else ["--synthetic", args.synthetic]
    gedit = [sys.executable, "-m", "harness.gedit", "--precision", *args.precision, "--out", str(gedit_dir),
             *weights]
    profile = [sys.executable, "-m", "harness.profile", "--precision", *args.precision, "--scenario",
               args.scenario, "--out", str(profile_dir), *weights]
    if args.real:
        gedit += ["--task", args.task]
        for flag in ("model", "judge", "dataset", "viescore_file"):
            if getattr(args, flag):
                gedit += [f"--{flag.replace('_', '-')}", getattr(args, flag)]
        profile += ["--model", args.model or "OmniGen2/OmniGen2"]
    elif args.synthetic == "tiny":
        gedit += ["--per-task", "1", "--languages", "en"]
        profile += ["--steps", "2", "--repeats", "2", "--warmup", "1"]
    if args.device:
        gedit += ["--device", args.device]
        profile += ["--device", args.device]
    if args.cuda_graphs:
        gedit.append("--cuda-graphs")
        profile.append("--cuda-graphs")
    return [gedit, profile, [sys.executable, "-m", "harness.report", str(gedit_dir), str(profile_dir),
                             "-o", str(report)]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--synthetic", choices=["tiny", "full"], default="tiny",
                         help="random-weight models (default tiny: runs on a CPU in a few minutes)")
    weights.add_argument("--real", action="store_true", help="the real OmniGen2, judge and GEdit-Bench")
    parser.add_argument("--precision", nargs="+", default=["bf16", "fp8"])
    parser.add_argument("--task", default="gedit-en-10pct", help="GEdit task for --real (default gedit-en-10pct)")
    parser.add_argument("--scenario", default="gedit-512", help="profiling scenario (default gedit-512)")
    parser.add_argument("--model", help="OmniGen2 checkpoint folder or hub id (with --real)")
    parser.add_argument("--judge", help="Qwen2.5-VL-7B-Instruct folder or hub id (with --real)")
    parser.add_argument("--dataset", help="GEdit-Bench folder or hub id (with --real)")
    parser.add_argument("--viescore-file", help="upstream's vie_prompts.py, the official judge prompts (with --real; "
                                                "default: $GEDIT_VIESCORE_FILE, the cache or a pinned download)")
    parser.add_argument("--device", help="cuda / cpu (default: cuda when available)")
    parser.add_argument("--out", default="runs/quickstart", help="output folder (default runs/quickstart)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="every arm replays CUDA graphs without compiling (GPU; by default both steps already "
                             "run the fast mode on a GPU: gedit graphs, profile compile+graphs; a TeaCache arm "
                             "replays the main stack of its computed calls)")
    args = parser.parse_args(argv)
    if not args.real and (args.model or args.judge or args.dataset or args.viescore_file):
        parser.error("--model/--judge/--dataset/--viescore-file name real inputs: add --real")
    for step in build_steps(args):
        print("\n$ " + shlex.join([Path(step[0]).name, *step[1:]]), flush=True)
        code = subprocess.run(step).returncode
        if code:
            print(f"step failed with exit code {code}; fix it and rerun: finished work is kept", file=sys.stderr)
            return code
    print(f"\nreport: {Path(args.out) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
