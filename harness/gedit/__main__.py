"""python -m harness.gedit: GEdit-Bench edits per precision, a local Qwen2.5-VL judge, scores, deltas, fidelity.

Examples:
    python -m harness.gedit --precision bf16 fp8 --task gedit-en-10pct             # real models from hub/folders
    python -m harness.gedit --synthetic tiny --out /tmp/gedit-tiny                  # whole flow on a CPU, ~1 min
    python -m harness.gedit --edits DIR/mymodel --dataset D --out O                 # judge + score edits made elsewhere
    python -m harness.gedit --stage score --out DIR                                 # re-aggregate judgements
    python -m harness.gedit --judge-url http://127.0.0.1:8000/v1 --judge-model Qwen/Qwen2.5-VL-7B-Instruct  # vLLM

Settings come from the task file; flags override them and every override is logged (old -> new) and recorded.
Judging follows a named protocol (default gedit-v1, upstream's current GEdit-Bench scorer; gedit-v0 = its first
release) with the official VIEScore prompt set, found by --viescore-file, GEDIT_VIESCORE_FILE, the user's cache, or a
one-time download pinned by commit and hash. Anything else (--prompt-set project-rubric, other judge settings) is
allowed, and every output of such a run says in its first line that its scores are not comparable with published
GEdit-Bench numbers.
Stages: generate (edits per arm, resumable), judge (judgements.jsonl, resumable), score (scores.csv, tasks.csv,
fidelity.csv, summary.json, summary.md). Every stage works on a list of samples chosen before it runs, and every
per-sample record carries its own key, so a sharded run can give each process a shard and merge the JSONL lines.

Files in --out (edits go to --edits, default --out):
    <arm>/fullset/<task_type>/<lang>/<key>.png   edits (official layout); <arm>/generation.jsonl: one line per edit
    <arm>/generation_settings.json               what made the edits (resume refuses other settings)
    selection.json      the selected samples (+ counts, uids_sha256)
    judgements.jsonl    one line per (arm, sample): status ok | judge_failure | missing_image, sc/pq call records
                        with every raw answer and why it failed, judge {model, prompt_set, prompt_sha256, protocol}
    judge_runs.jsonl    one line per judge batch: seconds, calls, attempts, new tokens, peak VRAM, judge settings
    scores.csv          sample level: arm, task_type, language, key, intersection_exist, status, failure, Q_SC,
                        Q_PQ, Q_O, ..., comparable
    tasks.csv           per (subset fullset|intersection, arm, language, task_type): n_selected, n_scored,
                        failures, Q_SC, Q_PQ, Q_O, comparable
    fidelity.csv        per (arm vs baseline, sample): psnr_db, ssim, identical
    summary.json / .md  headline, per task, paired deltas with 95% CIs, fidelity, failures, throughput, provenance
"""
from __future__ import annotations

import argparse
import logging
import sys
import time

from harness.core.distributed import DistributedSetupError
from harness.core.lock import FolderLockedError
from harness.core.tasks import TaskError
from harness.gedit.config import DEFAULT_TASK
from harness.gedit.context import SetupError, check_device, make_context
from harness.gedit.data import DatasetError
from harness.gedit.judge import JudgeError
from harness.gedit.judge_batching import AUTO_BATCH_CAP, CPU_BATCH_SIZE
from harness.gedit.judge_prompts import PromptSetError
from harness.gedit.judge_speed import DECODE_MODES, VISION_ATTENTION_MODES
from harness.gedit.protocol import PROTOCOLS, ProtocolError
from harness.gedit.record import GeditSummary
from harness.gedit.run_folder import SUMMARY_MD, RunFolderError
from harness.gedit.runner import open_shard, run
from harness.gedit.served_judge import DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT_S, JudgeServer

# ------------------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.gedit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    run = p.add_argument_group("what to run")
    run.add_argument("--task", default=DEFAULT_TASK, help=f"task name or YAML path (default {DEFAULT_TASK}; "
                     "`python -m harness.tasks ls` lists them)")
    run.add_argument("--precision", nargs="+", default=None, metavar="ARM",
                     help="arms to run: bf16 and/or fp8 (default: both); with --edits, any folder names")
    run.add_argument("--stage", choices=("generate", "judge", "score", "all"), default="all")
    run.add_argument("--synthetic", choices=("tiny", "full"), default=None,
                     help="random-weight models and a PIL-drawn dataset: tiny runs on a CPU in about a minute, "
                          "full has the real shapes (GPU throughput); every score is meaningless")
    sel = p.add_argument_group("sample selection (override the task file)")
    sel.add_argument("--per-task", type=int, default=None, help="samples per task group and language")
    sel.add_argument("--languages", nargs="+", choices=("en", "cn"), default=None)
    sel.add_argument("--tasks", nargs="+", default=None, metavar="GROUP", help="task groups to keep")
    sel.add_argument("--intersection", action="store_true", default=None, help="only Intersection_exist rows")
    sel.add_argument("--selection-seed", type=int, default=None)
    gen = p.add_argument_group("generation (override the task file)")
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--steps", type=int, default=None)
    gen.add_argument("--resolution", type=int, default=None, help="cap edits at R*R pixels (aspect kept)")
    gen.add_argument("--model", default=None, help="OmniGen2 checkpoint folder or hub id")
    jud = p.add_argument_group("judge (override the task file)")
    jud.add_argument("--judge", default=None, help="Qwen2.5-VL-7B-Instruct folder or hub id")
    jud.add_argument("--protocol", default=None, choices=sorted(PROTOCOLS, reverse=True),
                     help="how the judge sees each sample: gedit-v1 (default; upstream's run_gedit_score.py: "
                          "input_image_raw, source and edit each resized to the 512x512 area) or gedit-v0 (first "
                          "release: input_image, the edit resized to it)")
    jud.add_argument("--prompt-set", default=None,
                     help="viescore (official, default) or project-rubric (this project's own wording; NOT "
                          "comparable with published GEdit-Bench numbers; the default of --synthetic runs)")
    jud.add_argument("--viescore-file", default=None,
                     help="a copy of upstream's GEdit-Bench/viescore/vie_prompts.py (hash-checked); else "
                          "$GEDIT_VIESCORE_FILE, the cache, or a one-time download pinned by commit")
    jud.add_argument("--max-new-tokens", type=int, default=None)
    jud.add_argument("--batch-size", type=int, default=None,
                     help=f"judge calls per forward batch (default: from the GPU's capacity beside the judge, a power "
                          f"of two, at most {AUTO_BATCH_CAP}; {CPU_BATCH_SIZE} on a CPU); a judge setting: a resume "
                          "must use the same")
    jud.add_argument("--judge-vision-attention", default=None, choices=VISION_ATTENTION_MODES,
                     help="in-process judge: packed (default; every vision window of a batch in a few attention "
                          "calls) or per-window (transformers' loop); a judge setting")
    jud.add_argument("--judge-decode", default=None, choices=DECODE_MODES,
                     help="in-process judge: eager-reproducible (default; dynamic cache, one-token decode steps as "
                          "grouped-query GEMMs: the same answers in every process and on every GPU, and 2.2x the "
                          "samples/s of eager at batch 256 on an H200), eager (SDPA's own decode kernel: not bitwise "
                          "reproducible on GPUs), compiled (static KV cache, decode step compiled into CUDA graphs: "
                          "compiling took 220 s per process on an H200) or static (static cache, eager); a judge "
                          "setting. Judgements made before these options used per-window + eager")
    srv = p.add_argument_group("served judge: any OpenAI-compatible server (vLLM, SGLang, a hosted model)")
    srv.add_argument("--judge-url", default=None, metavar="URL",
                     help="judge through the chat-completions API at URL, e.g. http://127.0.0.1:8000/v1")
    srv.add_argument("--judge-model", default=None, metavar="NAME",
                     help="model name the server serves (default: the task's judge model)")
    srv.add_argument("--judge-api-key-env", default=None, metavar="VAR",
                     help="environment variable holding the API key")
    srv.add_argument("--judge-concurrency", type=int, default=DEFAULT_CONCURRENCY, metavar="N",
                     help=f"requests in flight (default {DEFAULT_CONCURRENCY})")
    srv.add_argument("--judge-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                     help=f"seconds per request before it is retried (default {DEFAULT_TIMEOUT_S:g})")
    io = p.add_argument_group("data and files")
    io.add_argument("--dataset", default=None, help="hub id or local copy (save_to_disk folder, parquet/arrow)")
    io.add_argument("--out", default=None, help="results folder (default scratch/gedit/<task>)")
    io.add_argument("--edits", default=None,
                    help="judge and score edits made elsewhere, in upstream's layout: either one model's folder "
                         "DIR/fullset/<task_type>/<en|cn>/<key>.<png|jpg|...> (the arm is named after DIR) or a "
                         "folder of such model folders (pick them with --precision). Nothing is generated into it: "
                         "--stage all means judge + score here (default: edits live in --out)")
    io.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    modes = io.add_mutually_exclusive_group()
    modes.add_argument("--cuda-graphs", action="store_true", default=None,
                       help="replay transformer passes as CUDA graphs for every arm (the default on CUDA; a TeaCache "
                            "arm replays the main stack of its computed calls)")
    modes.add_argument("--compile", action="store_true",
                       help="torch.compile the DiT and replay CUDA graphs: the fastest mode, but inductor's kernels "
                            "depend on the shapes each process compiles for first, so edits are not bitwise the same "
                            "across reruns, resumes and GPU counts (up to 14/255 levels measured between 1 and 2 GPUs)")
    modes.add_argument("--eager", action="store_true",
                       help="run transformer passes eagerly (at 512x512 the FP8 arm is launch-bound and slower than "
                            "BF16 this way)")
    io.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap resamples for the 95%% intervals")
    io.add_argument("--no-progress", action="store_true")
    return p


def overrides_from_args(args: argparse.Namespace) -> dict:
    """Dotted task fields -> flag values (None = not given)."""
    return {
        "selection.per_task": args.per_task, "selection.languages": args.languages,
        "selection.task_groups": args.tasks, "selection.intersection": args.intersection,
        "selection.selection_seed": args.selection_seed, "generation.seed": args.seed,
        "generation.steps": args.steps, "generation.resolution": args.resolution, "generation.model": args.model,
        "judge.model": args.judge or args.judge_model, "judge.prompt_set": args.prompt_set,
        "judge.max_new_tokens": args.max_new_tokens,
        "judge.protocol": args.protocol, "dataset.id": args.dataset,
    }


def judge_server_from_args(args: argparse.Namespace) -> JudgeServer | None:
    """The server named by --judge-url (None: judge in process); refuses served-judge flags without a URL."""
    if args.judge_url is None:
        if args.judge_model or args.judge_api_key_env:
            raise SetupError("--judge-model / --judge-api-key-env name a served judge: add --judge-url URL")
        return None
    if args.judge:
        raise SetupError("--judge (a local checkpoint) and --judge-url (a server) exclude each other: pass one")
    if args.judge_vision_attention or args.judge_decode:
        raise SetupError("--judge-vision-attention / --judge-decode are options of the in-process judge: drop them "
                         "with --judge-url")
    return JudgeServer(args.judge_url, api_key_env=args.judge_api_key_env, concurrency=args.judge_concurrency,
                       timeout_s=args.judge_timeout)


def main(argv: list[str] | None = None) -> int:
    startup = {"main_unix": time.time()}  # interpreter and imports are done (distributed.json splits start-up)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        check_device(args.device)  # before any process group or model
        shard = open_shard(args.device)  # one process, or this rank of a torchrun launch
        startup["group_unix"] = time.time()
        finished = False
        try:
            # The main rank writes the shared files (synthetic models, data) before the others read them.
            ctx = shard.main_first(lambda: make_context(
                task=args.task, flags=overrides_from_args(args), synthetic=args.synthetic, out=args.out,
                edits=args.edits, arms=args.precision, device=shard.device, viescore_file=args.viescore_file,
                batch_size=args.batch_size, progress=not args.no_progress and shard.is_main,
                bootstrap=args.bootstrap, cuda_graphs=False if args.eager else args.cuda_graphs,
                compile=args.compile, stage=args.stage,
                judge_server=judge_server_from_args(args),
                judge_speed={"vision_attention": args.judge_vision_attention, "decode": args.judge_decode}))
            summary = run(ctx, args.stage, shard, startup=startup)
            finished = True
        finally:
            shard.close(finished)
    except (SetupError, TaskError, DatasetError, PromptSetError, ProtocolError, DistributedSetupError,
            RunFolderError, JudgeError, FolderLockedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if summary is not None:
        _announce(summary, ctx.out / SUMMARY_MD)
    return 0


def _announce(summary: GeditSummary, markdown) -> None:
    if summary.comparability.headline:
        print(summary.comparability.headline)
    if summary.synthetic:
        print(summary.warning)
    for h in summary.headline:  # what is missing from the scores, against the selection
        if h["n_scored"] < h["n_selected"]:
            f = summary.judge_failures.get(h["arm"], {}).get(h["language"], {})
            why = ", ".join(f"{f.get(k, 0)} {label}" for k, label in (
                ("not_judged", "not judged"), ("total", "judge failures"), ("missing_images", "missing images"),
                ("input_errors", "input errors")) if f.get(k))
            print(f"note: {h['arm']} / {h['language']}: {h['n_scored']} of {h['n_selected']} selected samples "
                  f"scored ({why or 'see summary.md'})")
    print(f"wrote {markdown}")


if __name__ == "__main__":
    sys.exit(main())
