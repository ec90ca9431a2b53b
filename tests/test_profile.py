"""harness.profile end to end on a tiny synthetic model (CPU op names), plus scenarios, arms and CLI errors."""
from __future__ import annotations

import csv
import gzip
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from harness.core.records import SYNTHETIC_WARNING
from harness.core.vocab import KERNEL_CATEGORIES
from harness.profile.__main__ import main
from harness.profile.arms import quantization_summary
from harness.profile.options import ProfileOptions
from harness.profile.record import SCHEMA_VERSION, ProfileRecord, RecordError, compute_ratios
from harness.profile.render import profile_markdown
from harness.core.tasks import TaskError
from harness.profile.scenarios import ProfileError, load_scenario, load_scenario_task, reference_images

from profile_cli import run_profile, write_scenario

TINY_SCENARIO = """\
task: tiny-edit
include: {template}
metadata:
  description: "32x32 edit of one 32x32 reference, 2 steps (CI)"
height: 32
width: 32
references: [[32, 32]]
steps: 2
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One CLI run: bf16, fp8 and the deliberately unpadded arm, on the tiny synthetic models, on the CPU."""
    root = tmp_path_factory.mktemp("profile")
    scenario = write_scenario(root, TINY_SCENARIO)
    out = root / "out"
    code = run_profile(["--precision", "bf16", "fp8", "--fp8-no-pad", "--scenario", str(scenario), "--synthetic",
                        "tiny", "--device", "cpu", "--warmup", "1", "--repeats", "2", "--profile-steps", "2",
                        "--out", str(out), "--no-progress", "--trace"])
    return code, out, json.loads((out / "profile.json").read_text())


def test_cli_writes_every_output(tiny_run):
    code, out, rec = tiny_run
    assert code == 0 and rec["complete"]
    names = {p.name for p in out.iterdir()}
    assert {"profile.json", "profile.md", "kernels_bf16.csv", "kernels_fp8.csv", "kernels_fp8-nopad.csv"} <= names
    with gzip.open(out / rec["arms"]["fp8"]["kernels"]["trace"]) as f:  # --trace: a Chrome trace per arm
        assert any(e.get("name") == "stage::denoise_step" for e in json.load(f)["traceEvents"])
    assert list(rec["arms"]) == ["bf16", "fp8", "fp8-nopad"]
    assert rec["schema_version"] == SCHEMA_VERSION and rec["kind"] == "omnigen2-profile"


def test_every_arm_edit_is_saved_and_compared_with_the_first_arm(tiny_run):
    _, out, rec = tiny_run
    assert sorted(p.name for p in (out / "edits").iterdir()) == ["bf16.png", "fp8-nopad.png", "fp8.png"]
    assert rec["arms"]["bf16"]["fidelity"] is None  # the first arm is the baseline
    for name in ("fp8", "fp8-nopad"):
        f = rec["arms"][name]["fidelity"]
        assert f["vs"] == "bf16" and f["image"] == f"edits/{name}.png" and not f["identical"]
        assert f["psnr_db"] > 0 and -1 <= f["ssim"] < 1
    # the values are PSNR / SSIM of the saved images themselves
    from harness.core.fidelity import image_fidelity
    bf16, fp8 = (np.asarray(Image.open(out / "edits" / f"{n}.png").convert("RGB")) for n in ("bf16", "fp8"))
    assert image_fidelity(bf16, fp8)["psnr_db"] == pytest.approx(rec["arms"]["fp8"]["fidelity"]["psnr_db"])
    md = (out / "profile.md").read_text()
    assert "## Fidelity to the first arm's edit" in md and "| fp8 | bf16 |" in md and "Synthetic weights:" in md
    assert "[`edits/fp8.png`](edits/fp8.png)" in md  # a link from profile.md (the report links from its own folder)


def test_edits_of_another_size_are_saved_and_say_why_they_are_not_compared(tmp_path):
    from harness.profile.arms import Arm
    from harness.profile.runner import edit_fidelity

    arms = [Arm("bf16", edit=Image.new("RGB", (8, 8))), Arm("fp8", edit=Image.new("RGB", (8, 6))),
            Arm("fp8+teacache", edit=Image.new("RGB", (8, 8))), Arm("fp8+taylorseer")]
    edit_fidelity(arms, tmp_path)
    assert sorted(p.name for p in (tmp_path / "edits").iterdir()) == ["bf16.png", "fp8+teacache.png", "fp8.png"]
    assert arms[0].fidelity is None and arms[3].fidelity is None  # the baseline; an arm without a timed edit
    assert arms[1].fidelity["psnr_db"] is None and "shapes differ" in arms[1].fidelity["error"]
    assert arms[2].fidelity["identical"] and arms[2].fidelity["psnr_db"] is None and arms[2].fidelity["ssim"] == 1


def test_fp8_attention_arm_records_its_error_per_layer_against_bf16_attention(tmp_path):
    # The arm keeps BF16 attention in step 0, the only step of the probe's call: the probe measures the kernel on
    # every step all the same.
    arm = "fp8+fp8attn:exclude_steps=0"
    scenario = write_scenario(tmp_path, TINY_SCENARIO)
    code = run_profile(["--precision", "bf16", arm, "--scenario", str(scenario), "--synthetic", "tiny",
                        "--device", "cpu", "--warmup", "1", "--repeats", "1", "--profile-steps", "1",
                        "--out", str(tmp_path / "out"), "--no-progress"])
    rec = json.loads((tmp_path / "out" / "profile.json").read_text())
    assert code == 0 and rec["arms"]["bf16"]["attention_error"] is None
    err = rec["arms"][arm]["attention_error"]  # emulated on the CPU: the same e4m3 numerics
    assert err["steps"] == 1 and err["layers"] == len(err["per_layer"]) >= 5 and err["calls"] >= err["layers"]
    assert 0 < err["min"] <= err["mean"] <= err["max"] < 0.2
    md = (tmp_path / "out" / "profile.md").read_text()
    assert "## FP8 attention error per layer" in md and f"| {arm} | 1 |" in md
    assert rec["arms"][arm]["fidelity"]["vs"] == "bf16"
    # files of an arm are named without the recipe's ':' and '='
    assert (tmp_path / "out" / "kernels_fp8+fp8attn_exclude_steps_0.csv").is_file()
    assert "(kernels_fp8+fp8attn_exclude_steps_0.csv)" in md


def test_provenance_and_synthetic_flag(tiny_run):
    _, out, rec = tiny_run
    m = rec["manifest"]
    assert m["synthetic_weights"] == "tiny" and m["warning"] == SYNTHETIC_WARNING
    assert m["invocation"].startswith("python -m harness.profile --precision bf16 fp8 --fp8-no-pad")
    assert m["device"]["device"] == "cpu" and m["device"]["torch"] == torch.__version__
    assert SYNTHETIC_WARNING in (out / "profile.md").read_text()
    assert rec["settings"]["synthetic"] == "tiny" and rec["settings"]["precisions"] == ["bf16", "fp8", "fp8-nopad"]


def test_latency_has_end_to_end_stages_and_per_step(tiny_run):
    _, _, rec = tiny_run
    for arm in rec["arms"].values():
        lat = arm["latency"]
        assert lat["end_to_end"]["n"] == 2 and lat["end_to_end"]["median_ms"] > 0
        stages = lat["stages"]
        assert {"text_encode", "vae_encode", "denoise", "denoise_step", "vae_decode"} <= set(stages)
        assert stages["denoise_step"]["calls_per_run"] == 2  # one range per denoising step
        assert stages["denoise_step"]["per_call"]["n"] == 4
        # the steps are inside the denoise stage
        assert stages["denoise"]["per_run"]["median_ms"] >= stages["denoise_step"]["per_run"]["min_ms"]
        assert lat["end_to_end"]["median_ms"] >= stages["denoise"]["per_run"]["min_ms"]
    r = rec["ratios"]["fp8"]
    assert r["vs"] == "bf16" and r["end_to_end_speedup"] == pytest.approx(1 / r["end_to_end_ratio"])


def test_cpu_runs_every_arm_eagerly_and_reports_the_startup_apart(tiny_run):
    _, out, rec = tiny_run
    assert rec["settings"]["mode"] == "auto"
    for arm in rec["arms"].values():
        assert arm["mode"] == {"mode": "eager", "requested": "auto", "fallback_reason": None}  # auto = eager on a CPU
        st = arm["startup"]
        assert st["first_call_ms"] > 0 and st["steady_call_ms"] == arm["latency"]["end_to_end"]["median_ms"]
        assert st["startup_ms"] == pytest.approx(max(st["first_call_ms"] - st["steady_call_ms"], 0.0))
        assert st["first_call_ms"] not in arm["latency"]["end_to_end"]["samples_ms"]  # the warm-up is not timed
        assert arm["kernels"]["profiled_mode"] == "eager" and arm["kernels"]["profiled_mode_note"] is None
    md = (out / "profile.md").read_text()
    assert "- mode (--mode auto): bf16 `eager`, fp8 `eager`, fp8-nopad `eager`" in md
    assert "| mode | `eager` | `eager` | `eager` | - | - |" in md
    assert "| startup, once (not in the rows above) |" in md


def test_memory_says_not_measured_on_cpu_and_fp8_transformer_is_smaller(tiny_run):
    # (on CUDA: load and run peaks per arm, and resident_unexplained_gib ~ 0 shows no other arm was resident)
    _, _, rec = tiny_run
    for arm in rec["arms"].values():
        assert arm["memory"]["run"]["peak_allocated_gib"] is None and "not measured" in arm["memory"]["run"]["method"]
    # the FP8 arm holds e4m3 weights only (no BF16 copy): its transformer is smaller than the BF16 one
    assert rec["ratios"]["fp8"]["transformer_gib_ratio"] < 0.8


def test_kernel_tables_and_categories(tiny_run):
    _, out, rec = tiny_run
    for name, arm in rec["arms"].items():
        k = arm["kernels"]
        assert k["profiled_steps"] == 2 and k["time_unit"] == "self CPU time"
        assert list(k["categories"]) == list(KERNEL_CATEGORIES)
        assert sum(c["share"] for c in k["categories"].values()) == pytest.approx(1.0)
        with open(out / k["csv"]) as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == k["num_kernels"] and rows[0]["name"] == k["top"][0]["name"]
        assert {"denoise_step", "text_encode", "vae_decode"} <= set(k["stages"])
    bf16 = {r["name"]: r for r in rec["arms"]["bf16"]["kernels"]["top"]}
    assert bf16["aten::mm"]["category"] == "gemm-bf16"
    # the FP8 arms spend time on quantisation, the BF16 arm does not
    assert rec["arms"]["bf16"]["kernels"]["categories"]["quant"]["total_us"] == 0
    assert rec["arms"]["fp8"]["kernels"]["categories"]["quant"]["total_us"] > 0


def test_fallback_verdicts(tiny_run):
    _, out, rec = tiny_run
    assert not rec["arms"]["bf16"]["fallback"]["checked"]
    nopad = rec["arms"]["fp8-nopad"]
    assert nopad["fallback"]["fallback_detected"]
    assert "bf16-gemm-in-fp8-layer" in {f["kind"] for f in nopad["fallback"]["findings"]}
    q = nopad["quantization"]
    # tiny hidden size 120 (like 2520) is not a multiple of 16: every quantized layer falls back
    assert q["config"]["misaligned"] == "reference" and q["fallback_layers"] and q["resolved_kernels"] == {
        "torch-reference": len(q["fallback_layers"]) + len(q["aligned_layers"])}
    # on the CPU, Fp8Config(kernel='auto') emulates FP8: the verdict says so instead of passing silently
    fp8 = rec["arms"]["fp8"]["fallback"]
    assert fp8["fallback_detected"] and "emulated" in fp8["note"]
    assert rec["fallback_detected"] == {"fp8": True, "fp8-nopad": True}
    md = (out / "profile.md").read_text()
    for heading in ("## Latency", "## Wall time vs summed kernel time", "## Memory", "## Kernel categories",
                    "## FP8 fallback check", "## Top kernels: fp8-nopad"):
        assert heading in md
    assert "FALLBACK DETECTED" in md


def test_record_reads_back_what_it_wrote(tiny_run):
    _, out, rec = tiny_run
    record = ProfileRecord.from_json(out / "profile.json")
    assert record.to_dict() == rec
    assert compute_ratios(record.arms) == rec["ratios"]
    assert record.arms["fp8"].stage_ms("denoise_step") == rec["arms"]["fp8"]["latency"]["stages"]["denoise_step"][
        "per_call"]["median_ms"]
    # profile.md is made from the record alone
    assert profile_markdown(record) == (out / "profile.md").read_text()


def test_a_record_written_before_per_arm_modes_reads_its_mode_from_the_run_flags(tiny_run):
    _, _, rec = tiny_run
    old = json.loads(json.dumps(rec))
    for arm in old["arms"].values():
        del arm["mode"], arm["startup"]
    old["settings"].update(compile=True, cuda_graphs=True)
    record = ProfileRecord.from_dict(old)
    assert record.arm_mode("fp8") == "compile+graphs" and record.arms["fp8"].startup_ms() is None
    assert "| mode | `compile+graphs` |" in profile_markdown(record)


def test_record_names_a_wrong_version_and_a_missing_field(tiny_run, tmp_path):
    _, _, rec = tiny_run
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({**rec, "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(RecordError, match=f"schema_version {SCHEMA_VERSION + 1}; this harness reads version"):
        ProfileRecord.from_json(path)
    arms = json.loads(json.dumps(rec["arms"]))
    del arms["fp8"]["memory"]
    path.write_text(json.dumps({**rec, "arms": arms}))
    with pytest.raises(RecordError, match=r"arms\.fp8: field 'memory' is missing"):
        ProfileRecord.from_json(path)
    path.write_text("{not json")
    with pytest.raises(RecordError, match="not valid JSON"):
        ProfileRecord.from_json(path)


# ------------------------------------------------------------------------------------------------- scenarios
def test_shipped_scenarios_load_with_their_guidance_branches():
    edit, _, src = load_scenario("edit-1024-1ref")
    assert (edit.height, edit.width, edit.steps, edit.references) == (1024, 1024, 28, [[1024, 1024]])
    assert set(edit.branches_per_step()) == {3} and src.endswith("edit-1024-1ref.yaml")
    assert load_scenario("edit-1024-2ref")[0].references == [[1024, 1024], [1024, 1024]]
    gedit = load_scenario("gedit-512")[0]
    assert (gedit.height, gedit.steps, gedit.image_guidance_scale, gedit.time_shift) == (512, 20, 1.5, 3.0)
    t2i = load_scenario("t2i-1024")[0]
    assert t2i.references == [] and set(t2i.branches_per_step()) == {2}


def test_steps_override_is_logged():
    scenario, changes, _ = load_scenario("gedit-512", steps=4)
    assert scenario.steps == 4 and changes == [{"field": "steps", "old": 20, "new": 4}]


def test_unknown_scenario_suggests_the_close_name():
    with pytest.raises(ProfileError, match="Did you mean gedit-512"):
        load_scenario("gedit-521")


def test_bad_scenario_values_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: bad\nheight: 100\nwidth: 64\nsteps: 2\n")
    with pytest.raises(ProfileError, match="height 100 must be a multiple of 16"):
        load_scenario(bad)
    bad.write_text("task: bad\nheight: 64\nwidth: 64\nsteps: 2\nreferences: [[64]]\n")
    with pytest.raises(ProfileError, match=r"references\[0\]"):
        load_scenario(bad)


def test_scenarios_validate_as_tasks(tmp_path):
    assert load_scenario_task("gedit-512").height == 512
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: bad\nheight: 100\nwidth: 64\nsteps: 2\n")
    with pytest.raises(TaskError, match="height 100 must be a multiple of 16"):
        load_scenario_task(bad)


def test_reference_images_are_seeded_and_sized():
    scenario = load_scenario("edit-1024-2ref")[0]
    a, b = reference_images(scenario), reference_images(scenario)
    assert [im.size for im in a] == [(1024, 1024), (1024, 1024)]
    assert a[0].tobytes() == b[0].tobytes()


# ------------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("kwargs, match", [
    (dict(model="x", synthetic="tiny"), "exactly one of --model"),
    (dict(), "exactly one of --model"),
    (dict(synthetic="tiny", precisions=["bf16", "int4"]), "unknown precision 'int4'"),
    (dict(synthetic="tiny", precisions=["bf16", "fp8-nopadd"]), "did you mean 'fp8-nopad'"),
    (dict(synthetic="tiny", precisions=["fp8", "fp8"]), "lists an arm twice"),
    (dict(synthetic="tiny", precisions=["fp8+teacache", "fp8+teacache:0.05"]), "lists an arm twice"),  # = default
    (dict(synthetic="tiny", precisions=[]), "no arm given"),
    (dict(synthetic="tiny", repeats=0), "--repeats >= 1"),
    (dict(synthetic="tiny", fp8_kernel="fast"), "--fp8-kernel 'fast'"),
    (dict(synthetic="tiny", mode="graphs"), "--mode graphs needs CUDA"),
    (dict(synthetic="tiny", mode="fast"), "unknown mode 'fast'"),
])
def test_bad_options_are_explained(kwargs, match, tmp_path):
    opts = dict(scenario="gedit-512", precisions=["bf16", "fp8"], out=tmp_path, device="cpu")
    opts.update(kwargs)
    with pytest.raises(ProfileError, match=match):
        ProfileOptions(**opts).validate()


def test_cli_error_exit_code(capsys, tmp_path):
    assert main(["--scenario", "nope-512", "--synthetic", "tiny", "--device", "cpu", "--out", str(tmp_path),
                   "--no-progress"]) == 2
    assert "unknown task 'nope-512'" in capsys.readouterr().err


def test_cli_answers_an_unknown_recipe_with_the_close_name(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["--precision", "bf16", "fp9", "--synthetic", "tiny", "--device", "cpu", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "argument --precision: unknown precision 'fp9' (did you mean 'fp8'?)" in capsys.readouterr().err


def test_auto_mode_is_the_fastest_per_arm_on_cuda():
    # the choice needs no GPU (the device type decides), so it is checked here without validate()'s CUDA check
    opts = ProfileOptions(scenario="gedit-512", precisions=["bf16"], out="x", synthetic="full", device="cuda")
    assert opts.arm_mode("bf16").mode == opts.arm_mode("fp8+taylorseer").mode == "compile+graphs"
    assert opts.arm_mode("fp8+teacache") == opts.arm_mode("bf16")  # TeaCache replays its main stack as graphs
    offloaded = ProfileOptions(scenario="gedit-512", precisions=["bf16"], out="x", synthetic="full", device="cuda",
                               offload=True)
    assert offloaded.arm_mode("bf16").mode == "compile" and "offloaded" in offloaded.arm_mode("bf16").fallback_reason
    explicit = ProfileOptions(scenario="gedit-512", precisions=["bf16"], out="x", synthetic="full", device="cuda",
                              mode="compile+graphs")
    assert explicit.arm_mode("fp8+teacache").mode == "compile+graphs"
    assert ProfileOptions(scenario="gedit-512", precisions=["bf16"], out="x", synthetic="tiny",
                          device="cpu").arm_mode("fp8+teacache").mode == "eager"


@pytest.mark.parametrize("flags, mode", [
    ([], "auto"), (["--eager"], "eager"), (["--mode", "compile"], "compile"), (["--compile"], "compile"),
    (["--cuda-graphs"], "graphs"), (["--compile", "--cuda-graphs"], "compile+graphs"),
])
def test_mode_flags(flags, mode):
    from harness.profile.__main__ import build_parser, mode_from_args

    assert mode_from_args(build_parser().parse_args(["--synthetic", "tiny", *flags])) == mode


def test_mode_flags_that_disagree_are_refused(capsys, tmp_path):
    common = ["--synthetic", "tiny", "--device", "cpu", "--out", str(tmp_path), "--no-progress"]
    assert main([*common, "--eager", "--compile"]) == 2
    assert "--compile/--cuda-graphs both name the mode" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*common, "--eager", "--mode", "compile"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_compiled_arms_profile_their_kernels_compiled_and_check_fp8_fallbacks_eagerly(tmp_path):
    scenario = write_scenario(tmp_path, TINY_SCENARIO)
    # Inductor's CPU code generation takes minutes on two cores; dynamo with the eager backend takes the same path
    # through the harness (blocks compiled, no layer hooks inside them, a forced-eager call for the fallback check).
    torch._dynamo.reset()
    with torch.compiler.set_stance("default", force_backend="eager"):
        code = run_profile(["--precision", "bf16", "fp8-nopad", "--mode", "compile", "--scenario", str(scenario),
                            "--synthetic", "tiny", "--device", "cpu", "--steps", "1", "--repeats", "1",
                            "--profile-steps", "1", "--out", str(tmp_path / "out"), "--no-progress"])
    rec = ProfileRecord.from_json(tmp_path / "out" / "profile.json")
    assert code == 0 and rec.settings["mode"] == "compile"
    for name, arm in rec.arms.items():
        assert arm.mode == {"mode": "compile", "requested": "compile", "fallback_reason": None}
        assert arm.kernels["profiled_mode"] == "compile" and not arm.kernels["layer_ranges"]
        assert arm.kernels["total_us_in_steps"] > 0 and arm.startup["first_call_ms"] > 0
    nopad = rec.arms["fp8-nopad"]
    # compiled blocks carry no layer ranges: the fallback check read an eager call that has them, and still flags
    assert nopad.kernels["fallback_profiled_mode"] == "eager" and nopad.fallback["method"] == "per-layer ranges"
    assert "bf16-gemm-in-fp8-layer" in {f["kind"] for f in nopad.fallback["findings"]}
    assert "force_eager" in nopad.fallback["note"]
    assert rec.arms["bf16"].kernels["fallback_profiled_mode"] == "compile"  # nothing to check: not quantized


def test_recipe_names_are_canonical_arm_names():
    opts = ProfileOptions(scenario="gedit-512", precisions=["bf16", "fp8+teacache:0.05"], out="x", synthetic="tiny",
                          device="cpu")
    opts.validate()
    assert opts.precisions == ["bf16", "fp8+teacache"]


def test_unpadded_summary_splits_the_fp8_layers_by_alignment():
    from omnigen2_fp8.fp8.quantize import quantize_fp8
    from omnigen2_fp8.precision import parse_recipe

    def model():
        return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Linear(64, 40), torch.nn.Linear(40, 16)).bfloat16()

    unpadded = model()
    every = ("*",)  # the default policy selects the DiT's block linears only
    summary = quantization_summary(quantize_fp8(unpadded, parse_recipe("fp8-nopad").fp8_config(include=every)))
    assert summary["aligned_layers"] == ["0"] and summary["fallback_layers"] == ["1", "2"]  # N = 40, K = 40
    # the misaligned layers are pinned to the reference GEMM; the aligned one keeps the configured kernel
    assert [unpadded.get_submodule(n).kernel.value for n in "012"] == ["auto", "torch-reference", "torch-reference"]
    assert summary["num_fp8"] == sum(summary["resolved_kernels"].values()) == 3  # (auto: reference on a CPU)
    assert summary["config"]["misaligned"] == "reference"
    padded = quantization_summary(quantize_fp8(model(), parse_recipe("fp8").fp8_config(include=every)))
    assert "fallback_layers" not in padded and padded["config"]["misaligned"] == "pad"


@pytest.mark.gpu
def test_gpu_tiny_run_fp8_is_clean_and_unpadded_arm_is_flagged(tmp_path):
    import gc

    scenario = write_scenario(tmp_path, TINY_SCENARIO)
    # The profile runs in this pytest process: CUDA memory other tests still hold (their cached models and compiled
    # graphs) is resident too, and is not any arm's. It is measured here, as the harness does, and subtracted below.
    gc.collect()
    torch.cuda.synchronize()
    held_by_other_tests = torch.cuda.memory_allocated() / 2**30
    code = run_profile(["--precision", "bf16", "fp8", "--fp8-no-pad", "--scenario", str(scenario), "--synthetic",
                        "tiny", "--device", "cuda", "--repeats", "2", "--out", str(tmp_path / "out"), "--no-progress",
                        "--eager"])
    rec = json.loads((tmp_path / "out" / "profile.json").read_text())
    assert code == 0
    assert {a["mode"]["mode"] for a in rec["arms"].values()} == {"eager"}
    assert not rec["arms"]["fp8"]["fallback"]["fallback_detected"], rec["arms"]["fp8"]["fallback"]["findings"]
    fb = rec["arms"]["fp8"]["fallback"]
    assert rec["arms"]["fp8"]["kernels"]["categories"]["gemm-fp8"]["calls"] > 0
    assert fb["fp8_gemm_calls_per_step"] == fb["expected_fp8_linear_calls_per_step"] > 0
    assert fb["bf16_gemm_calls_per_step"] == fb["expected_bf16_linear_calls_per_step"]
    assert rec["arms"]["fp8-nopad"]["fallback"]["fallback_detected"]
    for arm in rec["arms"].values():
        mem = arm["memory"]
        assert mem["run"]["peak_allocated_gib"] > 0 and mem["load"]["peak_allocated_gib"] > 0
        # only this arm's models (plus library workspaces) were resident when its memory run began
        assert abs(mem["run"]["resident_unexplained_gib"] - held_by_other_tests) < 0.25, held_by_other_tests


@pytest.mark.gpu
def test_gpu_default_is_the_fast_mode_with_kernels_profiled_without_graph_replay(tmp_path):
    scenario = write_scenario(tmp_path, TINY_SCENARIO)
    code = run_profile(["--precision", "bf16", "fp8", "fp8+taylorseer", "fp8+teacache", "--scenario", str(scenario),
                        "--synthetic", "tiny", "--device", "cuda", "--steps", "8", "--repeats", "2",
                        "--out", str(tmp_path / "out"), "--no-progress"])
    rec = ProfileRecord.from_json(tmp_path / "out" / "profile.json")
    assert code == 0 and rec.complete
    assert {n: a.mode["mode"] for n, a in rec.arms.items()} == {
        "bf16": "compile+graphs", "fp8": "compile+graphs", "fp8+taylorseer": "compile+graphs",
        "fp8+teacache": "compile+graphs"}
    assert all(arm.mode["fallback_reason"] is None for arm in rec.arms.values())
    bf16 = rec.arms["bf16"].startup  # the first arm compiles and captures in its warm-up; later arms of the same
    assert bf16["first_call_ms"] > bf16["steady_call_ms"]  # block kinds may reuse its compiled code
    for name, arm in rec.arms.items():
        assert arm.startup["first_call_ms"] > 0 and arm.startup["steady_call_ms"] > 0
        assert arm.kernels["profiled_mode"] == "compile" and arm.kernels["total_us_in_steps"] > 0
        assert arm.kernels["profiled_mode_note"] is not None
    fp8 = rec.arms["fp8"]
    assert fp8.category("gemm-fp8")["calls"] > 0
    assert not fp8.fallback["fallback_detected"], fp8.fallback["findings"]
    assert fp8.kernels["fallback_profiled_mode"] == "eager"
    # the per-call split holds under graph replay too (events around each replay, read at the end)
    sc = rec.arms["fp8+taylorseer"].step_cache
    assert sum(sc["call_counts"].values()) == sc["calls_per_run"] * 2 and sc["call_counts"]["cached"] > 0
    assert "| startup, once (not in the rows above) |" in (tmp_path / "out" / "profile.md").read_text()


def test_checkpoint_folder_arms_share_the_loaded_components(tmp_path):
    # --model: the components come from checkpoints.load_components, each arm's DiT from load_transformer
    from omnigen2_fp8.synthetic import write_synthetic_checkpoint

    checkpoint = write_synthetic_checkpoint(tmp_path / "ckpt", size="tiny")
    scenario = write_scenario(tmp_path, TINY_SCENARIO)
    code = run_profile(["--precision", "bf16", "fp8-nopad", "--scenario", str(scenario), "--model", str(checkpoint),
                        "--device", "cpu", "--warmup", "0", "--repeats", "1", "--profile-steps", "0",
                        "--out", str(tmp_path / "out"), "--no-progress"])
    rec = ProfileRecord.from_json(tmp_path / "out" / "profile.json")
    assert code == 0 and rec.complete and list(rec.arms) == ["bf16", "fp8-nopad"]
    # the folder's SYNTHETIC.json marker travels with the components into the record and profile.md
    assert rec.synthetic == "tiny" and SYNTHETIC_WARNING in (tmp_path / "out" / "profile.md").read_text()
    assert rec.shared_load["mllm_gib"] > 0 and rec.arms["bf16"].quantization is None
    nopad = rec.arms["fp8-nopad"].quantization
    assert nopad["config"]["misaligned"] == "reference" and nopad["num_fp8"] == len(nopad["fallback_layers"]) + len(
        nopad["aligned_layers"])


def test_missing_checkpoint_is_a_clear_error(capsys, tmp_path):
    code = main(["--scenario", "gedit-512", "--model", str(tmp_path / "no-such-folder"), "--device", "cpu",
                 "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    # one line naming the folder that is not there and what to pass instead
    assert code == 2 and f"error: no checkpoint at {tmp_path / 'no-such-folder'}" in err
    assert "Pass an existing local folder or a hub id" in err
    # the run's record says why it stopped
    assert "CheckpointNotFoundError" in ProfileRecord.from_json(tmp_path / "out" / "profile.json").error


def test_a_failing_arm_keeps_its_error_and_the_others_still_run(tmp_path, capsys):
    scenario = write_scenario(tmp_path, TINY_SCENARIO)
    # the cuBLASLt FP8 kernel cannot run on a CPU: the fp8 arm fails at load, with the fp8 package's message
    code = main(["--precision", "bf16", "fp8", "--fp8-kernel", "cublas-padded", "--scenario", str(scenario),
                   "--synthetic", "tiny", "--device", "cpu", "--steps", "1", "--repeats", "1", "--profile-steps", "0",
                   "--out", str(tmp_path / "out"), "--no-progress"])
    rec = json.loads((tmp_path / "out" / "profile.json").read_text())
    assert code == 1 and not rec["complete"]
    assert rec["arms"]["bf16"]["ok"] and rec["arms"]["bf16"]["latency"]["end_to_end"]["n"] == 1
    assert not rec["arms"]["fp8"]["ok"] and "Fp8UnsupportedDeviceError" in rec["arms"]["fp8"]["error"]
    assert rec["ratios"]["fp8"]["end_to_end_ratio"] is None
    assert "Arm **fp8** failed:" in (tmp_path / "out" / "profile.md").read_text()
    assert "error in arm fp8" in capsys.readouterr().err


def test_an_fp8_model_folder_is_refused_for_arms_it_would_mislabel(tmp_path):
    from omnigen2_fp8.checkpoints import load_transformer
    from omnigen2_fp8.fp8 import Fp8Config, quantize_fp8, save_fp8_checkpoint
    from omnigen2_fp8.synthetic import write_synthetic_checkpoint

    model = write_synthetic_checkpoint(tmp_path / "tiny")
    transformer = load_transformer(model / "transformer", dtype=torch.float32)
    shutil.rmtree(model / "transformer")
    quantize_fp8(transformer, Fp8Config(attention="fp8"))
    save_fp8_checkpoint(transformer, model / "transformer")

    def options(*arms, kernel="auto"):
        return ProfileOptions(scenario="gedit-512", precisions=list(arms), out=tmp_path / "out", model=str(model),
                              device="cpu", fp8_kernel=kernel)

    with pytest.raises(ProfileError, match=r"--precision bf16 on --model .*would label FP8 results as bf16"):
        options("bf16", "fp8+fp8attn").validate()
    with pytest.raises(ProfileError, match="kernel 'auto'; another kernel .'torch-reference'."):
        options("fp8+fp8attn", kernel="torch-reference").validate()
    options("fp8+fp8attn", "fp8+fp8attn:exclude_steps=0:3").validate()  # the steps are a run-time choice


def test_an_arm_that_ran_bf16_attention_under_an_fp8_attention_name_is_flagged(tiny_run):
    _, _, rec = tiny_run
    assert rec["arms"]["fp8"]["quantization"]["fp8_attention_blocks"] == 0  # plain fp8: nothing to flag
    assert "asked for FP8 attention" not in profile_markdown(ProfileRecord.from_dict(rec))
    fell_back = json.loads(json.dumps(rec))
    q = fell_back["arms"]["fp8"]["quantization"]
    q["config"]["attention"] = "fp8"  # what a GPU without cuDNN's FP8 attention records for an fp8+fp8attn arm
    q["notes"] = ["note: FP8 attention asked, BF16 attention kept: FP8 attention runs on CUDA GPUs (cuDNN)"]
    md = profile_markdown(ProfileRecord.from_dict(fell_back))
    assert ("> Arm **fp8** asked for FP8 attention and ran BF16 attention: note: FP8 attention asked, BF16 "
            "attention kept: FP8 attention runs on CUDA GPUs (cuDNN)") in md
