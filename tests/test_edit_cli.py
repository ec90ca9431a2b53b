"""The edit command line on a tiny synthetic checkpoint and on tiny in-memory models (CPU)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from omnigen2_fp8 import synthetic
from omnigen2_fp8.edit import CUDA_DEFAULT_MODE, main, resolve_mode

REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "in.png"
    PIL.Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(path)
    return path


def test_cli_edits_a_checkpoint_folder_and_reports_stages(tmp_path, image):
    checkpoint = synthetic.write_synthetic_checkpoint(tmp_path / "ckpt", size="tiny")
    out, record = tmp_path / "out.png", tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "-m", "omnigen2_fp8.edit", "--model", str(checkpoint), "--device", "cpu", "--dtype",
         "float32", "--image", str(image), "--image", str(image), "--prompt", "make the sky green", "-o", str(out),
         "--steps", "2", "--text-guidance", "5", "--image-guidance", "1.5", "--cfg-range", "0", "0.4",
         "--time-shift", "3", "--seed", "3", "--json", str(record), "--width", "48", "--height", "32"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for label in ("SYNTHETIC", "MLLM (text encode)", "VAE encode", "denoise", "VAE decode", "peak VRAM"):
        assert label in proc.stdout
    assert "denoise" in proc.stderr  # the progress bar over steps
    with PIL.Image.open(out) as edited:
        assert edited.size == (48, 32) and "synthetic" in edited.text
    data = json.loads(record.read_text())
    assert data["synthetic"] is True and data["transformer_calls"] == 3 + 1
    assert data["settings"]["time_shift"] == 3.0 and data["settings"]["num_references"] == 2


def test_cli_in_memory_synthetic_models(tmp_path, image, capsys):
    out = tmp_path / "mem.png"
    assert main(["--synthetic", "tiny", "--device", "cpu", "--dtype", "float32", "--image", str(image),
                 "--prompt", "add a hat", "-o", str(out), "--steps", "4", "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert "SYNTHETIC" in stdout
    assert "mode eager: the first step took" in stdout  # auto is eager on a CPU, and the startup cost is reported
    with PIL.Image.open(out) as edited:
        assert edited.size == (80, 64)


def test_cli_runs_a_step_cache_recipe(tmp_path, image, capsys):
    out, record = tmp_path / "cached.png", tmp_path / "cached.json"
    assert main(["--synthetic", "tiny", "--device", "cpu", "--dtype", "float32", "--image", str(image), "--prompt",
                 "add a hat", "-o", str(out), "--steps", "7", "--no-progress", "--precision", "fp8+taylorseer",
                 "--json", str(record)]) == 0
    assert "step cache taylorseer: main layers computed on 10 of 14 transformer calls" in capsys.readouterr().out
    data = json.loads(record.read_text())
    assert data["settings"]["precision"] == "fp8+taylorseer"
    assert data["settings"]["recipe"]["step_cache"] == {"method": "taylorseer", "first_enhance": 5,
                                                        "fresh_threshold": 3, "max_order": 4}
    assert data["step_cache"]["computed_per_call"] == [True] * 10 + [False] * 4  # cond, uncond


def test_cli_errors_name_the_problem(tmp_path, image, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--synthetic", "tiny", "--device", "cpu", "--image", str(tmp_path / "nope.png"), "--prompt", "x",
              "-o", str(tmp_path / "o.png")])
    assert exit_info.value.code == 2 and "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--synthetic", "tiny", "--device", "cpu", "--dtype", "float32", "--image", str(image), "--prompt",
              "x", "-o", str(tmp_path / "o.png"), "--text-guidance", "99"])
    assert "outside" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", str(tmp_path), "--device", "cpu", "--prompt", "x", "-o", str(tmp_path / "o.png")])
    assert "missing component" in capsys.readouterr().err


def test_mode_auto_is_the_fastest_on_cuda_and_eager_elsewhere():
    assert resolve_mode("auto", "cuda", offload=False) == CUDA_DEFAULT_MODE == "compile+graphs"
    assert resolve_mode("auto", "cuda:1", offload=True) == "compile"  # graphs cannot follow offloaded weights
    assert resolve_mode("auto", "cpu", offload=False) == "eager"
    assert resolve_mode("eager", "cuda", offload=False) == "eager"
    with pytest.raises(ValueError, match="--mode compile or --eager"):
        resolve_mode("graphs", "cpu", offload=False)


def test_eager_flag_and_mode_flags_are_exclusive(tmp_path, image, capsys):
    with pytest.raises(SystemExit):
        main(["--synthetic", "tiny", "--device", "cpu", "--eager", "--compile", "--prompt", "x",
              "-o", str(tmp_path / "o.png")])
    assert "not allowed with" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--synthetic", "tiny", "--device", "cpu", "--mode", "compile+graphs", "--image", str(image),
              "--prompt", "x", "-o", str(tmp_path / "o.png")])
    assert exit_info.value.code == 2 and "needs CUDA" in capsys.readouterr().err
