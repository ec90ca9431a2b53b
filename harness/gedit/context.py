"""What a GEdit run works with (`RunContext`), resolved from the task file and flags, and the checks before heavy work.

`make_context` also writes (or reuses) the synthetic models and dataset under <out>/_synthetic for --synthetic tiny;
`preflight` fails fast, naming the flags that fix it, when a model or the dataset for the requested stages is absent.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

from omnigen2_fp8.loading import check_safetensors_file
from omnigen2_fp8.modes import AUTO_MODE, EAGER_MODE, GRAPHS_MODE, ModeChoice, choose_mode
from omnigen2_fp8.precision import RecipeError, device_mismatches, fp8_checkpoint_mismatches, parse_recipe

from harness.gedit import data as gdata
from harness.gedit.config import GeditTaskConfig, resolve_task, unique
from harness.gedit.judge import JudgeError, write_synthetic_judge
from harness.gedit.judge_prompts import VIESCORE, PromptSet, PromptSetError, resolve_prompt_set, viescore_identity
from harness.gedit.judge_speed import resolve_modes, speed_settings
from harness.gedit.protocol import Protocol, get_protocol
from harness.gedit.run_folder import FULLSET, RunFolder, judge_identity
from harness.gedit.served_judge import JudgeServer

SYNTHETIC_FULL = "synthetic:full"  # model reference meaning "random full-size weights built in device memory"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
# OmniGen2 component folders whose config.json promises weights (scheduler/ and processor/ hold none)
WEIGHTED_COMPONENTS = ("transformer", "vae", "mllm", "text_encoder")


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
    batch_size: int | None  # judge calls per batch; None: the in-process judge sizes it from the device's capacity
    synthetic: str | None
    progress: bool = True
    bootstrap: int = 10_000
    baseline: str | None = None
    # replay transformer passes as CUDA graphs (same images, less launch overhead): True for every arm, False for
    # none, None (the default) for every arm when the device is a GPU
    cuda_graphs: bool | None = None
    # --compile: torch.compile + CUDA graphs; faster, but the edits are
    # not bitwise the same across processes (see arm_mode)
    compile: bool = False
    edits_elsewhere: bool = False  # --edits given: the images exist already; `--stage all` judges and scores only
    prompt_problem: str | None = None  # why the prompt set's text is missing; preflight reports it with the rest
    judge_server: JudgeServer | None = None  # judge through this OpenAI-compatible server instead of in process
    # the in-process judge's speed options (harness.gedit.judge_speed): vision_attention, decode; None = default
    judge_speed: dict = dataclasses.field(default_factory=dict)

    @property
    def baseline_arm(self) -> str:
        return self.baseline or ("bf16" if "bf16" in self.arms else self.arms[0])

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.out, self.edits_root)

    @property
    def judge_identity(self) -> dict:
        return judge_identity(self.judge_model, self.prompts.name, self.prompts.sha256["set"], self.protocol.name,
                              self.judge_weights)

    @functools.cached_property
    def judge_weights(self) -> str | None:
        """`weights_revision` of the judge (read once: it hashes the folder's config and lists its files)."""
        return None if self.judge_server is not None else weights_revision(self.judge_model)

    @property
    def judge_settings(self) -> dict:
        """The judge settings known before the judge loads (the judge's own `settings()` holds them and more);
        a resume is checked against them before any work."""
        spec = self.config.judge
        known = {"max_new_tokens": spec.max_new_tokens, "max_retries": spec.max_retries}
        in_process = self.judge_server is None  # a served judge batches on the server: no batch size here
        if not in_process:
            return known
        speed = speed_settings(*resolve_modes(self.judge_speed.get("vision_attention"), self.judge_speed.get("decode")))
        return known | speed | ({"batch_size": self.batch_size} if self.batch_size is not None else {})


def make_context(*, task: str, flags: dict[str, Any], synthetic: str | None, out: str | None, edits: str | None,
                 arms: Sequence[str] | None, device: str, viescore_file: str | None = None,
                 batch_size: int | None = None, progress: bool = True, bootstrap: int = 10_000,
                 cuda_graphs: bool | None = None, stage: str = "all", judge_server: JudgeServer | None = None,
                 judge_speed: dict | None = None, compile: bool = False) -> RunContext:
    """Task file + synthetic defaults + flags -> RunContext (builds synthetic models and data when asked).

    flags: dotted task fields -> flag values (None = not given); out: results folder (default
    scratch/gedit/<task>[-synthetic-<kind>]); edits: root of edits made elsewhere; arms: --precision;
    stage: --stage (a stage that judges needs the prompt texts, the others only their identity);
    judge_server: judge through that server (the judge model is then the name it serves); judge_speed: the
    in-process judge's speed options (`harness.gedit.judge_speed`; None values: the defaults).
    """
    config, changes = resolve_task(task, flags, synthetic)
    out_dir = Path(out or Path("scratch") / "gedit" / (config.task + (f"-synthetic-{synthetic}" if synthetic else "")))
    edits_root, arm_names = edits_and_arms(edits, arms, out_dir)
    prompts, prompt_problem = prompts_for(config.judge.prompt_set, viescore_file, need_text=stage in ("judge", "all"))
    ctx = RunContext(config=config, overrides=changes, arms=arm_names, out=out_dir, edits_root=edits_root,
                     dataset=config.dataset.id, model=config.generation.model, judge_model=config.judge.model,
                     prompts=prompts, protocol=get_protocol(config.judge.protocol), device=device,
                     batch_size=batch_size, synthetic=synthetic, progress=progress, bootstrap=bootstrap,
                     cuda_graphs=cuda_graphs, compile=compile, edits_elsewhere=edits is not None,
                     prompt_problem=prompt_problem,
                     judge_server=judge_server, judge_speed=dict(judge_speed or {}))
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
    arms = unique(list(arms), "--precision") if arms else arms
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


def check_device(device: str | None) -> None:
    """A one-line SetupError when `device` asks for CUDA on a machine where torch sees no GPU."""
    if device and str(device).startswith("cuda") and not torch.cuda.is_available():
        raise SetupError(f"--device {device}: torch sees no CUDA GPU here (torch {torch.__version__}, CUDA build "
                         f"{torch.version.cuda}); pass --device cpu, or run where a GPU is visible")


def arm_mode(ctx: RunContext, arm: str) -> ModeChoice:
    """How `arm`'s transformer runs: --eager eager; --cuda-graphs CUDA graphs; --compile
    `omnigen2_fp8.modes.choose_mode("auto")`, compile + CUDA graphs on a GPU; by default CUDA graphs on a GPU (a
    TeaCache arm replays the main stack of its computed calls, `caching.TeaCache`) and eager on CPUs.

    Why compile is not the default although it is the fastest mode (FP8 at 512: 59.8 vs 73.5 ms per step,
    results/perf_recipes_h200_all_modes.json): inductor's kernels depend on the shapes a process compiles for first,
    so compiled edits differ between processes. Between a 1-GPU and a 2-GPU run none of 44 compiled edits was
    byte-identical (up to 14 of 255 levels, results/distributed_compile_nvidia-h200-x2.json), where CUDA graphs
    alone replay the eager kernels and gave 88 of 88 identical edits."""
    gpu = str(ctx.device).startswith("cuda") and torch.cuda.is_available()
    if ctx.compile:
        return choose_mode(AUTO_MODE, ctx.device if gpu else "cpu")
    if ctx.cuda_graphs is not None:
        mode = GRAPHS_MODE if ctx.cuda_graphs else EAGER_MODE
        return ModeChoice(mode, mode)
    return ModeChoice(GRAPHS_MODE if gpu else EAGER_MODE, AUTO_MODE)


def preflight(ctx: RunContext, stages: Sequence[str]) -> None:
    """Fail before any heavy work: bad numbers, an unknown arm, an unwritable --out, a device without a GPU, the
    official prompts out of reach, or a model or the dataset named for the requested stages that is absent or
    damaged."""
    check_device(ctx.device)
    for name, value in (("--batch-size", ctx.batch_size), ("--bootstrap", ctx.bootstrap)):
        if value is not None and value < 1:
            raise SetupError(f"{name} {value}: must be >= 1")
    if "generate" in stages:
        for arm in ctx.arms:
            try:
                parse_recipe(arm)
            except RecipeError as err:
                raise SetupError(f"--precision {arm}: {err}. To judge edits made elsewhere under other names, pass "
                                 "--edits DIR") from None
    for flag, folder in (("--out", ctx.out), *((("--edits", ctx.edits_root),) if "generate" in stages else ())):
        problem = _unwritable(folder)
        if problem:
            raise SetupError(f"{flag} {folder} is not a writable folder ({problem}); pass a folder you can write to")
    problems = [ctx.prompt_problem] if ctx.prompt_problem and "judge" in stages else []
    if "generate" in stages and not ctx.model.startswith("synthetic:"):
        problems += _check_model(ctx.model, "OmniGen2 checkpoint", "--model", "model_index.json")
        problems += [f"--precision {arm} on --model {ctx.model}: {why}"
                     for arm, why in fp8_checkpoint_mismatches(ctx.model, ctx.arms).items()]
    if "generate" in stages:  # an arm this GPU cannot run as named stops here, not after the arms before it ran
        problems += [f"--precision {arm} on {ctx.device}: {why}"
                     for arm, why in device_mismatches(ctx.arms, ctx.device).items()]
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


def weights_revision(ref: str) -> str | None:
    """Which weights a model reference holds, independent of where the folder lies: for a local folder a hash of
    its config.json and weight file names and sizes; for a hub id the cached snapshot's commit; else None."""
    path = Path(ref).expanduser()
    if path.is_dir():
        digest = hashlib.sha256((path / "config.json").read_bytes() if (path / "config.json").is_file() else b"")
        for f in sorted(p for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES):
            digest.update(f"{f.relative_to(path).as_posix()}:{f.stat().st_size}".encode())
        return "folder:" + digest.hexdigest()[:16]
    if ref.startswith("synthetic:"):
        return ref
    # Imported here: only hub ids need the hub client.
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(ref, "config.json")
    return f"hub:{Path(cached).parent.name}" if isinstance(cached, str) else None


def _unwritable(folder: Path) -> str | None:
    """Why `folder` cannot hold results (None when it can): a probe file in it, or, while it does not exist yet, a
    probe folder in its nearest existing parent (so a run stopped by a later check leaves nothing behind)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        if existing == folder:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe."):
                pass
        else:
            with tempfile.TemporaryDirectory(dir=existing, prefix=".write-probe."):
                pass
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}"
    return None


def _check_model(ref: str, what: str, flag: str, marker: str) -> list[str]:
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / marker).is_file():
            return [f"{what} folder {path} has no {marker} ({flag})"]
        return _check_weights(path, what, flag)
    if ref.count("/") != 1 or ref.startswith((".", "/", "~")):
        return [f"{what} {ref!r} is neither an existing folder nor a hub id ({flag})"]
    return _hub_available(ref, "model", marker, what, flag)


def _check_weights(folder: Path, what: str, flag: str) -> list[str]:
    """Weights present and readable: every component folder with a config holds weight files, and every
    safetensors file has an intact header (a truncated or garbage file is named)."""
    problems = []
    for config in [folder / "config.json", *folder.glob("*/config.json")]:
        part = config.parent
        if config.is_file() and (part == folder or part.name in WEIGHTED_COMPONENTS) and \
                not any(p.suffix in WEIGHT_SUFFIXES for p in part.iterdir()):
            problems.append(f"{what} folder {part} has config.json but no weights (*.safetensors): the download "
                            f"is incomplete; download it again ({flag})")
    for file in sorted(folder.rglob("*.safetensors")):
        try:
            check_safetensors_file(file)
        except ValueError as err:
            problems.append(f"{err} ({flag})")
    return problems


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
