"""`python -m harness.gedit` under interrupted, resumed, moved, damaged and badly configured runs (tiny CPU models):
no run reports wrong numbers with exit code 0, and bad input stops before heavy work with a one-line error."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from PIL import Image

from harness.core.lock import LOCK_NAME
from harness.core.records import read_jsonl
from harness.gedit.__main__ import main
from harness.gedit.context import make_context
from harness.gedit.data import make_synthetic_gedit
from harness.gedit.run_folder import file_sha256, readable_image
from harness.report import ReportError, load_run

BASE = ["--synthetic", "tiny", "--no-progress", "--bootstrap", "100", "--per-task", "1", "--languages", "en",
        "--tasks", "color_alter", "ps_human", "--device", "cpu"]
N = 2  # selected samples per arm


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """bf16 edits only, then a judge stage for both arms (fp8's images missing), then a full run."""
    out = tmp_path_factory.mktemp("staged")
    assert main([*BASE, "--out", str(out), "--stage", "generate", "--precision", "bf16"]) == 0
    assert main([*BASE, "--out", str(out), "--stage", "judge"]) == 0
    early = list(read_jsonl(out / "judgements.jsonl"))
    assert sorted(r["status"] for r in early if r["arm"] == "fp8") == ["missing_image"] * N
    assert main([*BASE, "--out", str(out)]) == 0
    return out


@pytest.fixture
def copy(staged, tmp_path):
    """A copy of the finished run to damage (file times kept)."""
    return shutil.copytree(staged, tmp_path / "copy")


def _summary(out):
    return json.loads((out / "summary.json").read_text())


def _headline(out, arm):
    return next(h for h in _summary(out)["headline"] if h["arm"] == arm and h["language"] == "en")


def _pngs(out):
    return {p.relative_to(out): (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*/fullset/*/*/*.png")}


# ---------------------------------------------------------------------------------------- 1. stale judgements
def test_judgements_of_missing_images_are_redone_once_the_images_exist(staged):
    scores = (staged / "scores.csv").read_text()
    assert "missing_image" not in scores
    fp8 = _headline(staged, "fp8")
    assert fp8["n_selected"] == N and fp8["n_scored"] + fp8["n_judge_failures"] == N
    assert _summary(staged)["judge_failures"]["fp8"]["en"]["missing_images"] == 0
    for rec in read_jsonl(staged / "judgements.jsonl"):  # every judgement names the images it was about
        assert len(rec["source_sha256"]) == 64 and "edited_sha256" in rec


def test_a_replaced_edit_is_judged_again(copy):
    edit = sorted((copy / "fp8").glob("fullset/*/*/*.png"))[0]
    Image.new("RGB", Image.open(edit).size, (10, 200, 30)).save(edit)
    before = list(read_jsonl(copy / "judgements.jsonl"))
    assert main([*BASE, "--out", str(copy), "--stage", "judge"]) == 0
    added = list(read_jsonl(copy / "judgements.jsonl"))[len(before):]
    assert [(r["arm"], r["key"], r["edited_sha256"]) for r in added] == [("fp8", edit.stem, file_sha256(edit))]


# ------------------------------------------------------------------------------------ 2. counts vs the selection
def test_counts_are_against_the_selection_and_unjudged_arms_keep_their_rows(copy, capsys):
    lines = (copy / "judgements.jsonl").read_text().splitlines()
    (copy / "judgements.jsonl").write_text("".join(l + "\n" for l in lines if json.loads(l)["arm"] == "bf16"))
    assert main([*BASE, "--out", str(copy), "--stage", "score"]) == 0
    fp8 = _headline(copy, "fp8")
    assert (fp8["n_scored"], fp8["n_selected"], fp8["n_not_judged"]) == (0, N, N)
    assert _summary(copy)["judge_failures"]["fp8"]["en"]["not_judged"] == N
    assert f"{N} not judged yet" in (copy / "summary.md").read_text()
    assert f"fp8 / en: 0 of {N} selected samples scored ({N} not judged)" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ 4. judge settings
def test_judge_settings_are_checked_on_resume_and_the_summary_keeps_the_records_settings(copy, capsys):
    before = (copy / "judgements.jsonl").read_text()
    recorded = json.loads(before.splitlines()[0])["judge"]["settings"]
    assert main([*BASE, "--out", str(copy), "--stage", "judge", "--max-new-tokens", "8"]) == 2
    assert f"max_new_tokens: {recorded['max_new_tokens']} -> 8" in capsys.readouterr().err
    assert main([*BASE, "--out", str(copy), "--stage", "judge", "--batch-size", "3"]) == 2
    assert f"batch_size: {recorded['batch_size']} -> 3" in capsys.readouterr().err
    # the speed options are settings too; the plain path records none (as judges did before the options existed)
    assert recorded["vision_attention"].startswith("packed") and recorded["decode"].startswith("eager-reproducible")
    assert main([*BASE, "--out", str(copy), "--stage", "all", "--judge-vision-attention", "per-window"]) == 2
    assert f"vision_attention: {recorded['vision_attention']!r} -> None" in capsys.readouterr().err
    assert main([*BASE, "--out", str(copy), "--stage", "judge", "--judge-decode", "eager"]) == 2
    assert f"decode: {recorded['decode']!r} -> None" in capsys.readouterr().err
    assert (copy / "judgements.jsonl").read_text() == before
    assert main([*BASE, "--out", str(copy), "--stage", "score", "--steps", "30", "--seed", "5"]) == 0
    summary = _summary(copy)
    assert (summary["task"]["generation"]["steps"], summary["task"]["generation"]["seed"]) == (2, 42)
    assert not [o for o in summary["overrides"] if o["field"] in ("generation.steps", "generation.seed")]
    assert "Steps 2, seed 42" in (copy / "summary.md").read_text()


# ------------------------------------------------------------------------------------- 5. damaged inputs/edits
def test_a_damaged_edit_is_made_again(copy):
    edit = sorted((copy / "bf16").glob("fullset/*/*/*.png"))[0]
    whole = edit.read_bytes()
    edit.write_bytes(whole[: len(whole) // 2])
    assert main([*BASE, "--out", str(copy)]) == 0
    assert readable_image(edit)
    assert len(list(read_jsonl(copy / "bf16" / "generation.jsonl"))) == N + 1


def test_an_undecodable_source_image_fails_that_sample_only(tmp_path, caplog):
    import datasets

    ds = make_synthetic_gedit(per_task=1, languages=["en"])
    bad = ds["task_type"].index("color_alter")
    raw = ds.cast_column("input_image", datasets.Image(decode=False))
    raw = raw.map(lambda row, i: {"input_image": {"bytes": b"not an image" if i == bad else row["input_image"]["bytes"],
                                                  "path": None}}, with_indices=True)
    (tmp_path / "data").mkdir()
    raw.cast_column("input_image", datasets.Image()).to_parquet(str(tmp_path / "data" / "train-00000-of-00001.parquet"))
    out = tmp_path / "run"
    assert main([*BASE, "--out", str(out), "--dataset", str(tmp_path / "data")]) == 0
    key = ds["key"][bad]
    assert f"task color_alter, key {key}" in caplog.text
    for arm in ("bf16", "fp8"):
        assert _summary(out)["judge_failures"][arm]["en"]["input_errors"] == 1
        head = _headline(out, arm)
        assert head["n_selected"] == N and head["n_scored"] + head["n_judge_failures"] == N - 1


# ------------------------------------------------------------------------------------------------ 6. the lock
def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(copy, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (copy / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid,
                                                  "started_utc": "2025-01-01T00:00:00+00:00"}))
        assert main([*BASE, "--out", str(copy), "--stage", "score"]) == 2
        err = capsys.readouterr().err
        assert f"process {holder.pid} on host {socket.gethostname()}" in err and "--out" in err
    finally:
        holder.kill()
        holder.wait()
    assert main([*BASE, "--out", str(copy), "--stage", "score"]) == 0  # its holder is gone: stale
    assert not (copy / LOCK_NAME).exists()


# ---------------------------------------------------------------------------------------- 8. moved run folders
def test_a_moved_run_folder_resumes_without_redoing_anything(staged, tmp_path):
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    shutil.move(str(shutil.copytree(staged, tmp_path / "copied")), str(moved))
    before, judged = _pngs(moved), (moved / "judgements.jsonl").read_text()
    assert main([*BASE, "--out", str(moved)]) == 0
    assert _pngs(moved) == before and (moved / "judgements.jsonl").read_text() == judged
    assert _headline(moved, "bf16") == _headline(staged, "bf16")


# ---------------------------------------------------------------------------------------- 7. fail fast, 8. dups
@pytest.fixture
def assets(staged):
    work = staged / "_synthetic"
    return {"--dataset": work / "dataset", "--model": work / "omnigen2-tiny", "--judge": work / "judge-tiny"}


def _flags(assets, **replace):
    out = []
    for flag, path in {**assets, **replace}.items():
        out += [flag, str(path)]
    return out


FAST = ["--no-progress", "--per-task", "1", "--languages", "en", "--tasks", "color_alter", "--device", "cpu",
        "--prompt-set", "project-rubric"]  # real-run flags without the official prompts (not downloadable here)


def _damaged_judge(assets, tmp_path, how):
    judge = shutil.copytree(assets["--judge"], tmp_path / "judge")
    weights = judge / "model.safetensors"
    if how == "missing":
        weights.unlink()
    elif how == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    else:
        weights.write_bytes(b"\x00garbage" * 4)
    return judge


@pytest.mark.parametrize("case, extra, message", [
    ("judge without weights", "missing", "has config.json but no weights"),
    ("truncated safetensors", "truncated", "model.safetensors is truncated"),
    ("garbage safetensors", "garbage", "model.safetensors is not a safetensors file"),
])
def test_damaged_judge_folders_are_named_before_any_edit(assets, tmp_path, capsys, case, extra, message):
    judge = _damaged_judge(assets, tmp_path, extra)
    assert main([*FAST, *_flags(assets, **{"--judge": judge}), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "--judge" in err
    assert not (tmp_path / "o" / "bf16").exists()


@pytest.mark.parametrize("flags, message", [
    (["--precision", "bf16", "fp9"], "--precision fp9: unknown precision 'fp9' (did you mean 'fp8'?)"),
    (["--batch-size", "0"], "--batch-size 0: must be >= 1"),
    (["--bootstrap", "0"], "--bootstrap 0: must be >= 1"),
    (["--max-new-tokens", "0"], "judge.max_new_tokens must be >= 1"),
])
def test_bad_numbers_and_names_stop_before_any_edit(assets, tmp_path, capsys, flags, message):
    assert main([*FAST, *_flags(assets), "--out", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err
    assert any(line.startswith("error: ") and message in line for line in err.splitlines())
    assert not (tmp_path / "o" / "bf16").exists()


def test_an_fp8_model_folder_is_refused_for_arms_it_would_mislabel(assets, tmp_path, capsys):
    """--model whose DiT is a serialized FP8 checkpoint: a bf16 arm would run FP8 under the name bf16, so every arm
    it cannot run is named before any edit; the fp8 arm alone runs."""
    from omnigen2_fp8.checkpoints import load_transformer
    from omnigen2_fp8.fp8 import quantize_fp8, save_fp8_checkpoint

    model = shutil.copytree(assets["--model"], tmp_path / "omnigen2-tiny-fp8")
    transformer = load_transformer(model / "transformer", dtype=torch.float32)
    shutil.rmtree(model / "transformer")
    quantize_fp8(transformer)
    save_fp8_checkpoint(transformer, model / "transformer")
    flags = [*FAST, *_flags(assets, **{"--model": model})]
    assert main([*flags, "--out", str(tmp_path / "o"), "--precision", "bf16", "fp8", "fp8+fp8attn"]) == 2
    err = capsys.readouterr().err
    assert "--precision bf16 on --model" in err and "would label FP8 results as bf16" in err
    assert "--precision fp8+fp8attn on --model" in err and "attention: checkpoint 'bf16', asked 'fp8'" in err
    assert "--precision fp8 on" not in err and not (tmp_path / "o" / "bf16").exists()
    assert main([*flags, "--out", str(tmp_path / "o"), "--precision", "fp8", "--stage", "generate"]) == 0


def test_arms_a_gpu_cannot_run_as_named_stop_before_any_edit(assets, tmp_path, capsys, monkeypatch):
    # An Ada-class GPU as this machine's (capability 8.9): FP8 GEMMs run there, cuDNN's FP8 attention does not.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "an Ada GPU")
    flags = [*FAST, *_flags(assets), "--device", "cuda", "--out", str(tmp_path / "o")]
    assert main([*flags, "--precision", "bf16", "fp8", "fp8+fp8attn"]) == 2
    err = capsys.readouterr().err
    assert "--precision fp8+fp8attn on cuda: FP8 attention cannot run here" in err and "--precision fp8 on" not in err
    assert not (tmp_path / "o" / "bf16").exists()


def test_unwritable_out_and_absent_gpu_are_one_line_errors(assets, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main([*FAST, *_flags(assets), "--out", str(blocker / "sub")]) == 2
    assert f"--out {blocker / 'sub'} is not a writable folder" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([*FAST, *_flags(assets), "--out", str(tmp_path / "o"), "--device", "cuda"]) == 2
        assert "torch sees no CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_damaged_parquet_is_named(assets, tmp_path, capsys, damage):
    data = shutil.copytree(assets["--dataset"], tmp_path / "data")
    parquet = next(data.rglob("*.parquet"))
    parquet.write_bytes(b"" if damage == "empty" else parquet.read_bytes()[:-200])
    assert main([*FAST, *_flags(assets, **{"--dataset": data}), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{parquet} is not a complete parquet file" in err
    assert not (tmp_path / "o" / "bf16").exists()


def test_repeated_task_groups_and_arms_are_done_once(assets, tmp_path, caplog):
    ctx = make_context(task="gedit-en-full", flags={"selection.task_groups": ["color_alter", "ps_human", "color_alter"],
                                                    "dataset.id": str(assets["--dataset"]),
                                                    "generation.model": str(assets["--model"]),
                                                    "judge.model": str(assets["--judge"])},
                       synthetic=None, out=str(tmp_path), edits=None, arms=["bf16", "fp8", "bf16"], device="cpu")
    assert ctx.arms == ["bf16", "fp8"] and ctx.config.selection.task_groups == ["color_alter", "ps_human"]
    assert "repeat names" in caplog.text


# -------------------------------------------------------------------------------------------- reports, edit CLI
def test_a_summary_that_does_not_say_synthetic_is_not_reported_as_real(tmp_path):
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(ReportError, match="does not record whether its weights were synthetic"):
        load_run(tmp_path)


@pytest.mark.parametrize("args, message", [
    (["--prompt", "  ", "-o", "{tmp}/out.png"], "--prompt is empty"),
    (["--prompt", "x", "-o", "{tmp}/out.jpg"], "name the output *.png"),
    (["--prompt", "x", "-o", "{tmp}/folder.png"], "is a folder"),
    (["--prompt", "x", "-o", "{tmp}/a-file/out.png"], "cannot write"),
    (["--prompt", "x", "-o", "{tmp}/out.png", "--image", "{tmp}/huge.png"], "over PIL's size limit"),
    (["--prompt", "x", "-o", "{tmp}/out.png", "--fp8-kernel", "torch-reference"],
     "--fp8-kernel torch-reference with --precision bf16, which quantizes nothing"),
])
def test_edit_cli_refuses_bad_arguments_before_loading(tmp_path, capsys, args, message, monkeypatch):
    from omnigen2_fp8.edit import main as edit_main

    (tmp_path / "folder.png").mkdir()
    (tmp_path / "a-file").write_text("x")
    Image.new("L", (64, 64)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64*64 > 2 * 1000: PIL refuses to decode it
    with pytest.raises(SystemExit) as exit_:
        edit_main(["--synthetic", "tiny", "--device", "cpu", *[a.format(tmp=tmp_path) for a in args]])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists() and not (tmp_path / "out.jpg").exists()


def test_edit_cli_refuses_cuda_without_a_gpu(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    from omnigen2_fp8.edit import main as edit_main

    with pytest.raises(SystemExit):
        edit_main(["--synthetic", "tiny", "--device", "cuda", "--prompt", "x", "-o", str(tmp_path / "o.png")])
    assert "no CUDA GPU" in capsys.readouterr().err


def test_truncated_safetensors_are_named_by_the_loader(tmp_path):
    from safetensors.torch import save_file

    from omnigen2_fp8.loading import load_tensors

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(64)}, str(path))
    path.write_bytes(path.read_bytes()[:-16])
    with pytest.raises(ValueError, match=f"{path} is truncated"):
        load_tensors([path])


# ------------------------------------------------------------------------------- the fast mode by default on GPUs
@pytest.mark.parametrize("asked, compile, device, gpu, arm, expected", [
    (None, False, "cpu", False, "fp8", "eager"),                     # no GPU: eager
    (None, False, "cuda", False, "fp8", "eager"),                    # asked for CUDA where torch sees none: eager
    (None, False, "cuda", True, "fp8", "graphs"),                    # the default on a GPU (same edits any GPU count)
    (None, False, "cuda", True, "bf16+taylorseer", "graphs"),        # TaylorSeer replays graphs
    (None, False, "cuda", True, "bf16+teacache", "graphs"),          # TeaCache replays its main stack
    (False, False, "cuda", True, "fp8", "eager"),                    # --eager
    (True, False, "cuda", True, "fp8", "graphs"),                    # --cuda-graphs
    (None, True, "cuda", True, "fp8", "compile+graphs"),             # --compile: the fastest mode
    (None, True, "cuda", True, "bf16+teacache", "compile+graphs"),   # --compile, TeaCache: the same
    (None, True, "cpu", False, "fp8", "eager"),                      # --compile without a GPU: eager
])
def test_arm_modes_by_default_and_as_asked(monkeypatch, asked, compile, device, gpu, arm, expected):
    from types import SimpleNamespace

    from harness.gedit.context import arm_mode

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    choice = arm_mode(SimpleNamespace(cuda_graphs=asked, compile=compile, device=device), arm)
    assert choice.mode == expected
    assert choice.fallback_reason is None


def test_compiled_edits_are_a_setting_and_older_runs_without_it_resume(tmp_path):
    from harness.gedit.config import GenerationSpec
    from harness.gedit.generate import arm_settings
    from harness.gedit.run_folder import RunFolder, SettingsMismatchError

    folder = RunFolder(tmp_path, tmp_path)
    gen = GenerationSpec()
    eager, compiled = (arm_settings("m", "fp8", gen, compiled=c) for c in (False, True))
    folder.check_or_record_settings("fp8", eager)
    with pytest.raises(SettingsMismatchError, match="transformer_compiled: False -> True"):
        folder.check_or_record_settings("fp8", compiled)
    older = {k: v for k, v in eager.items() if k != "transformer_compiled"}  # recorded before the key existed
    (tmp_path / "fp8" / "generation_settings.json").write_text(json.dumps(older))
    folder.check_or_record_settings("fp8", compiled)
    from types import SimpleNamespace

    from harness.gedit.runner import edits_reproducibility

    assert "not bitwise reproducible across processes" in edits_reproducibility(SimpleNamespace(compile=True))
    assert edits_reproducibility(SimpleNamespace(compile=False)).startswith("the same edits")


def test_eager_cuda_graphs_and_compile_are_exclusive(capsys):
    for flags in (["--eager", "--cuda-graphs"], ["--compile", "--eager"], ["--cuda-graphs", "--compile"]):
        with pytest.raises(SystemExit):
            main([*BASE, *flags])
        assert "not allowed with argument" in capsys.readouterr().err
