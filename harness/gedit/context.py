"""What a GEdit run works with (`RunContext`), resolved from the task file and flags, and the checks before heavy work.

`make_context` also writes (or reuses) the synthetic models and dataset under <out>/_synthetic for --synthetic tiny;
`preflight` fails fast, naming the flags that fix it, when a model or the dataset for the requested stages is absent.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from harness.gedit import data as gdata
from harness.gedit.config import GeditTaskConfig, resolve_task
from harness.gedit.judge import JudgeError, write_synthetic_judge
from harness.gedit.judge_prompts import VIESCORE, PromptSet, PromptSetError, resolve_prompt_set, viescore_identity
from harness.gedit.protocol import Protocol, get_protocol
from harness.gedit.run_folder import FULLSET, RunFolder, judge_identity
from harness.gedit.served_judge import JudgeServer

SYNTHETIC_FULL = "synthetic:full"  # model reference meaning "random full-size weights built in device memory"


class SetupError(RuntimeError):
    """Models or data needed by the requested stages cannot be found; the message lists the flags that fix it."""


@dataclasses.dataclass
class RunContext:
    """Everything the stages need, resolved from the task file and flags."""

    config: GeditTaskConfig
    overrides: list[dict]
    arms: list[str]
    out: Path
    edits_root: Path
    dataset: str
    model: str
    judge_model: str
    prompts: PromptSet
    protocol: Protocol
    device: str
    batch_size: int | None  # judge calls per batch; None: the in-process judge sizes it from free memory
    synthetic: str | None
    progress: bool = True
    bootstrap: int = 10_000
    baseline: str | None = None
    cuda_graphs: bool = False  # replay transformer passes as CUDA graphs (same images, less launch overhead)
    edits_elsewhere: bool = False  # --edits given: the images exist already; `--stage all` judges and scores only
    prompt_problem: str | None = None  # why the prompt set's text is missing; preflight reports it with the rest
    judge_server: JudgeServer | None = None  # judge through this OpenAI-compatible server instead of in process

    @property
    def baseline_arm(self) -> str:
        return self.baseline or ("bf16" if "bf16" in self.arms else self.arms[0])

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.out, self.edits_root)

    @property
    def judge_identity(self) -> dict:
        return judge_identity(self.judge_model, self.prompts.name, self.prompts.sha256["set"], self.protocol.name)


def make_context(*, task: str, flags: dict[str, Any], synthetic: str | None, out: str | None, edits: str | None,
                 arms: Sequence[str] | None, device: str, viescore_file: str | None = None,
                 batch_size: int | None = None, progress: bool = True, bootstrap: int = 10_000,
                 cuda_graphs: bool = False, stage: str = "all", judge_server: JudgeServer | None = None
                 ) -> RunContext:
    """Task file + synthetic defaults + flags -> RunContext (builds synthetic models and data when asked).

    flags: dotted task fields -> flag values (None = not given); out: results folder (default
    scratch/gedit/<task>[-synthetic-<kind>]); edits: root of edits made elsewhere; arms: --precision;
    stage: --stage (a stage that judges needs the prompt texts, the others only their identity);
    judge_server: judge through that server (the judge model is then the name it serves).
    """
    config, changes = resolve_task(task, flags, synthetic)
    out_dir = Path(out or Path("scratch") / "gedit" / (config.task + (f"-synthetic-{synthetic}" if synthetic else "")))
    edits_root, arm_names = edits_and_arms(edits, arms, out_dir)
    prompts, prompt_problem = prompts_for(config.judge.prompt_set, viescore_file, need_text=stage in ("judge", "all"))
    ctx = RunContext(config=config, overrides=changes, arms=arm_names, out=out_dir, edits_root=edits_root,
                     dataset=config.dataset.id, model=config.generation.model, judge_model=config.judge.model,
                     prompts=prompts, protocol=get_protocol(config.judge.protocol), device=device,
                     batch_size=batch_size, synthetic=synthetic, progress=progress, bootstrap=bootstrap,
                     cuda_graphs=cuda_graphs, edits_elsewhere=edits is not None, prompt_problem=prompt_problem,
                     judge_server=judge_server)
    if synthetic:
        prepare_synthetic(ctx, explicit_dataset=flags.get("dataset.id") is not None,
                          explicit_model=flags.get("generation.model") is not None,
                          explicit_judge=flags.get("judge.model") is not None or judge_server is not None)
    return ctx


def prompts_for(name: str, viescore_file: str | None, need_text: bool) -> tuple[PromptSet, str | None]:
    """The prompt set, or (when the official text cannot be found) its identity and the reason, which `preflight`
    reports with every other missing input before any work starts."""
    try:
        return resolve_prompt_set(name, viescore_file, need_text=need_text), None
    except PromptSetError as err:
        if name != VIESCORE or viescore_file is not None:
            raise  # a wrong name or a wrong file: nothing else to check first
        return viescore_identity("not found"), str(err)


def edits_and_arms(edits: str | None, arms: Sequence[str] | None, out: Path) -> tuple[Path, list[str]]:
    """(edits root, arms): --out and bf16+fp8 by default; with --edits, the named arms or the folders found."""
    if edits is None:
        return out, list(arms or ["bf16", "fp8"])
    root = Path(edits)
    if (root / FULLSET).is_dir():  # DIR is one model's folder: the arm is its name
        return root.parent, list(arms or [root.name])
    if arms:
        return root, list(arms)
    found = sorted(p.name for p in root.glob("*") if (p / FULLSET).is_dir()) if root.is_dir() else []
    if not found:
        raise SetupError(f"--edits {root} holds no <arm>/fullset/ folder; pass the folder that contains them "
                         "(official layout <root>/<arm>/fullset/<task_type>/<lang>/<key>.png)")
    return root, found


def prepare_synthetic(ctx: RunContext, explicit_dataset: bool, explicit_model: bool, explicit_judge: bool) -> None:
    """Write (or reuse) the synthetic dataset and tiny checkpoints under <out>/_synthetic; point ctx at them."""
    # Imported here: the library's synthetic builders pull in transformers and diffusers, needed only for this.
    from omnigen2_fp8.synthetic import write_synthetic_checkpoint

    work = ctx.out / "_synthetic"
    if not explicit_dataset:
        folder = work / ("dataset" if ctx.synthetic == "tiny" else "dataset-512")
        if not (folder / "data").is_dir():
            gdata.write_synthetic_gedit(folder, per_task=2, image_size=64 if ctx.synthetic == "tiny" else 512)
        ctx.dataset = str(folder)
    if ctx.synthetic == "tiny":
        if not explicit_model:
            folder = work / "omnigen2-tiny"
            if not (folder / "model_index.json").is_file():
                write_synthetic_checkpoint(folder, "tiny")
            ctx.model = str(folder)
        if not explicit_judge:
            ctx.judge_model = str(write_synthetic_judge(work / "judge-tiny"))
    else:  # "full": models are built in device memory by the stages
        ctx.model = ctx.model if explicit_model else SYNTHETIC_FULL
        ctx.judge_model = ctx.judge_model if explicit_judge else SYNTHETIC_FULL


def preflight(ctx: RunContext, stages: Sequence[str]) -> None:
    """Fail before any heavy work when a model or the dataset named for the requested stages is not available."""
    problems = [ctx.prompt_problem] if ctx.prompt_problem and "judge" in stages else []
    if "generate" in stages and not ctx.model.startswith("synthetic:"):
        problems += _check_model(ctx.model, "OmniGen2 checkpoint", "--model", "model_index.json")
    if "judge" in stages and ctx.judge_server is not None:
        spec = ctx.config.judge
        try:  # one 1-token request: URL, key and model name checked before any real work
            ctx.judge_server.connect(ctx.judge_model, max_new_tokens=spec.max_new_tokens, max_retries=spec.max_retries)
        except JudgeError as err:
            problems.append(str(err))
    elif "judge" in stages and not ctx.judge_model.startswith("synthetic:"):
        problems += _check_model(ctx.judge_model, "judge", "--judge", "config.json")
    if {"generate", "judge"} & set(stages):
        problems += _check_dataset(ctx.dataset)
    if problems:
        raise SetupError("cannot start:\n  - " + "\n  - ".join(problems) + "\n"
                         "Fix: --model DIR|HUB_ID (OmniGen2 checkpoint), --judge DIR|HUB_ID (Qwen2.5-VL-7B-Instruct), "
                         "--dataset DIR|FILE|HUB_ID (GEdit-Bench copy), or --synthetic tiny to run the whole flow "
                         "on random models and a drawn dataset (scores meaningless).")


def _check_model(ref: str, what: str, flag: str, marker: str) -> list[str]:
    path = Path(ref).expanduser()
    if path.is_dir():
        return [] if (path / marker).is_file() else [f"{what} folder {path} has no {marker} ({flag})"]
    if ref.count("/") != 1 or ref.startswith((".", "/", "~")):
        return [f"{what} {ref!r} is neither an existing folder nor a hub id ({flag})"]
    return _hub_available(ref, "model", marker, what, flag)


def _check_dataset(ref: str) -> list[str]:
    if Path(ref).expanduser().exists():
        return []
    if ref.count("/") != 1 or ref.startswith((".", "/", "~")):
        return [f"dataset {ref!r} does not exist (--dataset)"]
    return _hub_available(ref, "dataset", None, "dataset", "--dataset")


def _hub_available(repo_id: str, repo_type: str, marker: str | None, what: str, flag: str) -> list[str]:
    # Imported here: only hub ids (not local folders) need the hub client.
    from huggingface_hub import HfApi, try_to_load_from_cache

    if marker and isinstance(try_to_load_from_cache(repo_id, marker, repo_type=repo_type), str):
        return []
    try:
        (HfApi().model_info if repo_type == "model" else HfApi().dataset_info)(repo_id, timeout=15)
    except Exception as err:  # offline, 404, gated: all mean "not available from here"
        return [f"{what} {repo_id!r} is not a local folder, not in the hub cache, and the hub did not answer "
                f"({type(err).__name__}) ({flag})"]
    return []
