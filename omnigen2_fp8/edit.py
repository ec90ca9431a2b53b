"""Command line: edit an image with OmniGen2 and print the time of each stage and the peak VRAM.

    python -m omnigen2_fp8.edit --image a.png [--image b.png] --prompt "make the sky green" -o out.png
    python -m omnigen2_fp8.edit --synthetic tiny --device cpu --dtype float32 --image a.png --prompt "..." -o out.png

--model takes a checkpoint folder (official layout) or a hub id; --synthetic builds random-weight models in
memory instead (tiny: seconds on a CPU; full: the released sizes, for speed and memory work on a GPU). Outputs made
from random weights say so (stdout, PNG metadata, the --json record).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from .fp8.config import Kernel
from .image_processing import MAX_PIXELS
from .measure import StageClock, StepClock
from .modes import AUTO_MODE, CUDA_DEFAULT_MODE, EAGER_MODE, MODES, ModeChoice, choose_mode, resolve_mode
from .precision import RecipeError, parse_recipe, recipe_help
DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32,
          "fp32": torch.float32}
STAGE_LABELS = {"text_encode": "MLLM (text encode)", "vae_encode": "VAE encode", "prepare_latents": "prepare latents",
                "denoise": "denoise", "vae_decode": "VAE decode", "postprocess": "postprocess"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m omnigen2_fp8.edit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    io = parser.add_argument_group("input and output")
    io.add_argument("--image", action="append", default=[], metavar="PATH",
                    help="reference image (repeat for up to 5); none generates from text")
    io.add_argument("--prompt", required=True, help="the edit instruction")
    io.add_argument("--negative-prompt", default="", help="negative prompt (default: empty, as officially)")
    io.add_argument("-o", "--output", required=True, type=Path, help="PNG to write")
    io.add_argument("--json", type=Path, metavar="PATH", help="also write settings, stage times and VRAM as JSON")
    io.add_argument("--width", type=int, help="output width when not following a single reference (default 1024)")
    io.add_argument("--height", type=int, help="output height when not following a single reference (default 1024)")

    model = parser.add_argument_group("model")
    source = model.add_mutually_exclusive_group()
    source.add_argument("--model", default="OmniGen2/OmniGen2", help="checkpoint folder or hub id")
    source.add_argument("--synthetic", choices=("tiny", "full"),
                        help="random-weight models built in memory instead of --model")
    model.add_argument("--precision", type=_recipe, default="bf16", metavar="RECIPE",
                       help=recipe_help() + "; default bf16 (fp8: the DiT's linear layers in FP8)")
    model.add_argument("--fp8-kernel", choices=[k.value for k in Kernel],
                       help="FP8 GEMM kernel of an fp8 recipe (default: the recipe's, auto)")
    model.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16", help="dtype of all models")
    model.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    model.add_argument("--offload", action="store_true", help="keep models on the CPU, each on the device only "
                                                              "while its stage runs")
    speed = model.add_mutually_exclusive_group()
    speed.add_argument("--mode", choices=(AUTO_MODE, *MODES), default=AUTO_MODE,
                       help=f"how the transformer runs: {AUTO_MODE} = {CUDA_DEFAULT_MODE} on CUDA (the fastest "
                            f"measured, results/perf_recipes_h200.json; compile time is reported; compile alone "
                            f"with --offload), {EAGER_MODE} elsewhere")
    speed.add_argument("--eager", action="store_const", const=EAGER_MODE, dest="mode",
                       help="plain eager PyTorch (same as --mode eager)")
    speed.add_argument("--compile", action="store_const", const="compile", dest="mode",
                       help="torch.compile the transformer's blocks (same as --mode compile)")
    speed.add_argument("--cuda-graphs", action="store_const", const="graphs", dest="mode",
                       help="replay transformer passes as CUDA graphs (same as --mode graphs)")

    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--steps", type=int, default=28, help="Euler steps (official demo: 50)")
    sampling.add_argument("--text-guidance", type=float, default=4.0, help="text guidance scale")
    sampling.add_argument("--image-guidance", type=float, default=1.0, help="image guidance scale")
    sampling.add_argument("--cfg-range", type=float, nargs=2, default=(0.0, 1.0), metavar=("START", "END"),
                          help="fraction of the steps that use guidance")
    sampling.add_argument("--time-shift", type=float, help="fixed time shift (GEdit-Bench setting: 3.0); "
                                                           "default: the dynamic, resolution-based shift")
    sampling.add_argument("--seed", type=int, default=0)
    sampling.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="pixel cap for inputs and output")
    sampling.add_argument("--posterior-mean", action="store_true",
                          help="encode references with the VAE posterior mean instead of a seeded sample")
    sampling.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _recipe(text: str):
    try:
        return parse_recipe(text)
    except RecipeError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def load_pipeline(args: argparse.Namespace, mode: ModeChoice):
    """The pipeline the flags ask for (synthetic in memory, or from --model), in `mode`."""
    from .pipeline import OmniGen2Pipeline
    from .synthetic import build_synthetic_pipeline

    dtype = DTYPES[args.dtype]
    options = dict(precision=args.precision, fp8_kernel=args.fp8_kernel, offload=args.offload,
                   progress=not args.no_progress, **mode.pipeline_flags())
    if args.synthetic:
        pipe = build_synthetic_pipeline(args.synthetic, device=args.device, dtype=dtype, seed=0, **options)
        if args.time_shift is not None:
            pipe.scheduler.time_shift = args.time_shift
        return pipe
    return OmniGen2Pipeline.from_pretrained(args.model, dtype=dtype, device=args.device, time_shift=args.time_shift,
                                            **options)


def format_report(result) -> str:
    """Human-readable stage times and peak VRAM of one result."""
    lines = []
    if result.synthetic:
        lines.append("SYNTHETIC: random-weight models; timings are real, the image means nothing")
    settings = result.settings
    lines.append(f"generated {settings['generation_size'][0]}x{settings['generation_size'][1]}, "
                 f"{settings['num_inference_steps']} steps, {result.transformer_calls} transformer passes, "
                 f"precision={settings['precision']} dtype={settings['dtype']} device={settings['device']}")
    if settings.get("attention") == "bf16" and (settings.get("recipe") or {}).get("attention"):
        lines.append("note: FP8 attention was asked and BF16 attention ran (this GPU or cuDNN has no FP8 attention; "
                     "the log says why)")
    for stage, seconds in result.stage_seconds.items():
        peak = result.stage_peak_vram_bytes.get(stage)
        vram = f"   peak {peak / 2**30:6.2f} GiB" if peak is not None else ""
        lines.append(f"  {STAGE_LABELS.get(stage, stage):<20} {seconds:9.3f} s{vram}")
    lines.append(f"  {'total':<20} {result.total_seconds:9.3f} s")
    if result.step_cache is not None:
        cache = result.step_cache
        lines.append(f"step cache {cache['config']['method']}: main layers computed on {cache['computed']} of "
                     f"{cache['calls']} transformer calls")
    if result.peak_vram_bytes is not None:
        lines.append(f"peak VRAM {result.peak_vram_bytes / 2**30:.2f} GiB allocated, "
                     f"{result.peak_vram_reserved_bytes / 2**30:.2f} GiB reserved")
    else:
        lines.append("peak VRAM: n/a (not a CUDA device)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (FileNotFoundError, ValueError, NotImplementedError) as err:  # user errors: the message names the fix
        parser.exit(2, f"error: {err}\n")


def check_args(args: argparse.Namespace) -> None:
    """ValueError naming the flag for inputs that would fail only after the models are loaded."""
    if not args.prompt.strip():
        raise ValueError("--prompt is empty; give the edit instruction, e.g. --prompt 'make the sky green'")
    out = args.output
    if out.suffix.lower() != ".png":
        raise ValueError(f"-o {out}: the edit is written as PNG (its text metadata carries the settings and the "
                         "synthetic flag); name the output *.png")
    if out.is_dir():
        raise ValueError(f"-o {out} is a folder; give a file name, e.g. -o {out / 'edit.png'}")
    for path in (out, *((args.json,) if args.json else ())):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".write-probe."):
                pass
        except OSError as err:
            raise ValueError(f"cannot write {path} ({err.strerror or err}); pass a path in a writable folder") from err
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: torch sees no CUDA GPU here; pass --device cpu")
    if args.steps < 1:
        raise ValueError(f"--steps {args.steps}: must be >= 1")
    if args.fp8_kernel is not None and not args.precision.quantized:
        raise ValueError(f"--fp8-kernel {args.fp8_kernel} with --precision {args.precision.name}, which quantizes "
                         "nothing; drop --fp8-kernel or pass an FP8 precision (e.g. --precision fp8)")
    resolve_mode(args.mode, args.device, args.offload)  # e.g. graphs with --offload


def run(args: argparse.Namespace) -> int:
    """Load, edit, save, report; returns the exit status."""
    from .image_processing import check_reference_count, load_image
    from .transformer import MAX_REFERENCE_IMAGES

    check_args(args)
    check_reference_count(args.image, MAX_REFERENCE_IMAGES)
    for path in args.image:  # fail on a bad image before minutes of model loading
        load_image(path)
    if len(args.image) == 1 and (args.width or args.height):
        print("note: --width/--height are ignored with one --image: the output follows its (resized) size",
              file=sys.stderr)
    choice = choose_mode(args.mode, args.device, args.offload)
    pipe = load_pipeline(args, choice)
    steps = StepClock(pipe.device)
    result = pipe(args.prompt, args.image, negative_prompt=args.negative_prompt, num_inference_steps=args.steps,
                  text_guidance_scale=args.text_guidance, image_guidance_scale=args.image_guidance,
                  cfg_range=tuple(args.cfg_range), seed=args.seed, width=args.width, height=args.height,
                  max_pixels=args.max_pixels, time_shift=args.time_shift, sample_posterior=not args.posterior_mean,
                  clock=StageClock(pipe.device), on_step=steps, stage_hook=steps.stage_hook)
    result.save(args.output)
    print(format_report(result))
    startup = steps.startup_seconds()
    print(f"mode {choice.describe()}" + (f": the first step took {startup:.2f} s longer than the others "
                                         "(compilation, graph capture, autotuning; paid once per process and input "
                                         "shape)" if startup is not None else ""))
    print(f"wrote {args.output}")
    if args.json:
        record = {**result.to_record(), "images": [str(p) for p in args.image], "output": str(args.output),
                  "mode": choice.mode, "mode_choice": choice.to_dict(), "step_seconds": steps.step_seconds,
                  "startup_seconds": startup}
        _write_json_atomic(args.json, record)
        print(f"wrote {args.json}")
    return 0


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
