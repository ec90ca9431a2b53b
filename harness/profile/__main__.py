"""python -m harness.profile: the command line (the method: harness/profile/__init__.py)."""
from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path

import torch

from harness.core.records import REPO_ROOT
from harness.profile.options import UNPADDED_ARM, ProfileOptions, arm_name
from harness.profile.render import summary_line
from harness.profile.runner import run_profile
from harness.profile.scenarios import ProfileError
from omnigen2_fp8.fp8.config import Kernel
from omnigen2_fp8.modes import AUTO_MODE, CUDA_DEFAULT_MODE, EAGER_MODE, MODES, mode_name
from omnigen2_fp8.precision import recipe_help


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m harness.profile", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Latency, VRAM and kernel breakdowns of OmniGen2 edits for one or more precisions, in one "
                    "process, arms alternating.",
        epilog="examples:\n"
               "  python -m harness.profile --precision bf16 fp8 --scenario edit-1024-1ref --synthetic full\n"
               "  python -m harness.profile --precision bf16 fp8 --fp8-no-pad --scenario gedit-512 --synthetic full "
               "--steps 4\n"
               "  python -m harness.profile --precision bf16 fp8 --scenario t2i-1024 --model OmniGen2/OmniGen2\n"
               "  python -m harness.tasks ls profile     # the scenarios")
    what = p.add_argument_group("what to run")
    what.add_argument("--precision", nargs="+", default=["bf16", "fp8"], type=_arm_name, metavar="RECIPE",
                      help=f"arms, in order; ratios are against the first (default: bf16 fp8). {recipe_help()}")
    what.add_argument("--scenario", default="edit-1024-1ref", help="scenario name (tasks/profile/) or YAML path")
    src = what.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="checkpoint folder or hub id (real weights)")
    src.add_argument("--synthetic", choices=("tiny", "full"), help="random-weight models built in memory")
    what.add_argument("--fp8-no-pad", action="store_true",
                      help=f"add the deliberately unpadded FP8 arm {UNPADDED_ARM!r} (its fallback GEMMs must be "
                           "flagged); the same as naming it in --precision")
    what.add_argument("--fp8-kernel", default="auto", choices=[k.value for k in Kernel],
                      help="FP8 GEMM kernel of the FP8 arms (default auto: cublas-padded on a GPU)")
    how = p.add_argument_group("how")
    how.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    how.add_argument("--steps", type=int, default=None, help="override the scenario's denoising steps")
    how.add_argument("--warmup", type=int, default=1, help="untimed calls per arm (the first measures run memory)")
    how.add_argument("--repeats", type=int, default=3, help="timed calls per arm")
    how.add_argument("--profile-steps", type=int, default=2, help="denoising steps in the profiled call (0: none)")
    speed = how.add_mutually_exclusive_group()
    speed.add_argument("--mode", choices=(AUTO_MODE, *MODES), default=None,
                       help=f"how every arm's transformer runs (default {AUTO_MODE}: {CUDA_DEFAULT_MODE} on CUDA, the "
                            "fastest measured, with compile alone when weights are offloaded, the reason recorded; "
                            f"{EAGER_MODE} on a CPU). Compile and capture happen in the "
                            "warm-up, reported apart from the per-edit latency")
    speed.add_argument("--eager", action="store_const", const=EAGER_MODE, dest="mode",
                       help="plain eager PyTorch for every arm (same as --mode eager)")
    how.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks (with "
                                                            "--cuda-graphs: --mode compile+graphs)")
    how.add_argument("--cuda-graphs", action="store_true",
                     help="replay transformer passes as CUDA graphs (same as --mode graphs; CUDA only)")
    how.add_argument("--offload", action="store_true", help="keep models on the CPU, move each to the GPU per stage")
    how.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights")
    outp = p.add_argument_group("output")
    outp.add_argument("--out", type=Path, default=None, help="output folder (default results/profile/<scenario>-<utc>)")
    outp.add_argument("--trace", action="store_true", help="also write a Chrome trace per arm (large)")
    outp.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def options_from_args(args: argparse.Namespace, argv: list[str]) -> ProfileOptions:
    precisions = list(args.precision)
    if args.fp8_no_pad and UNPADDED_ARM not in precisions:
        precisions.append(UNPADDED_ARM)
    out = args.out or REPO_ROOT / "results" / "profile" / (
        f"{Path(args.scenario).stem}-{_dt.datetime.now(_dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}")
    return ProfileOptions(scenario=args.scenario, precisions=precisions, out=out, model=args.model,
                          synthetic=args.synthetic, device=args.device, steps=args.steps, warmup=args.warmup,
                          repeats=args.repeats, profile_steps=args.profile_steps, mode=mode_from_args(args),
                          offload=args.offload, trace=args.trace, fp8_kernel=args.fp8_kernel,
                          progress=not args.no_progress, seed=args.seed, argv=list(argv))


def mode_from_args(args: argparse.Namespace) -> str:
    """--mode / --eager, or the mode --compile and --cuda-graphs spell; auto when none is given."""
    if args.compile or args.cuda_graphs:
        if args.mode is not None:
            raise ProfileError(f"--mode {args.mode} (or --eager) and --compile/--cuda-graphs both name the mode; give "
                               "one, e.g. --mode compile+graphs")
        return mode_name(args.compile, args.cuda_graphs)
    return args.mode or AUTO_MODE


def _arm_name(text: str) -> str:
    try:
        return arm_name(text)
    except ProfileError as err:  # argparse prints it as "argument --precision: ..." and exits with 2
        raise argparse.ArgumentTypeError(str(err).removeprefix("--precision: ")) from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        options = options_from_args(args, argv)
        record = run_profile(options)
    except (ProfileError, FileNotFoundError) as err:  # bad options / scenario, or a checkpoint that is not there
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {options.out / 'profile.json'}, {options.out / 'profile.md'} and kernels_<arm>.csv")
    print(summary_line(record))
    return 0 if record.complete else 1


if __name__ == "__main__":
    sys.exit(main())