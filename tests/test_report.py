"""harness.report on real tiny runs: the report is written, its figures open, its tables equal the run files.

One session fixture runs `python -m harness.gedit --synthetic tiny` (one task group, two samples per language, both
languages) and `python -m harness.profile --synthetic tiny` (a 64x64 one-reference scenario, one step) in this
process, exactly as a user would, and every test reads those folders.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness import report
from harness.core import plots
from harness.core.markdown import Chart, Section, code, render_sections
from harness.core.records import REPO_ROOT, SYNTHETIC_WARNING
from harness.gedit import grid
from harness.gedit import render as gedit_render
from harness.gedit.tradeoff import draw_tradeoff, tradeoff_points
from harness.profile import render
from harness.profile.record import ProfileRecord

SCENARIO = f"""task: tiny-64
include: {REPO_ROOT / "tasks" / "profile" / "_template.yaml"}
metadata:
  description: "64x64 edit with one 64x64 reference (CPU test scenario)"
height: 64
width: 64
references: [[64, 64]]
steps: 2
"""


# ------------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Path]:
    from harness.gedit import __main__ as gedit
    from harness.profile.__main__ import main as profile_main

    root = tmp_path_factory.mktemp("runs")
    rc = gedit.main(["--synthetic", "tiny", "--out", str(root / "gedit"), "--tasks", "color_alter",
                     "--per-task", "2", "--languages", "en", "cn", "--bootstrap", "200", "--no-progress"])
    assert rc == 0
    scenario = root / "tiny-64.yaml"
    scenario.write_text(SCENARIO, encoding="utf-8")
    rc = profile_main(["--synthetic", "tiny", "--scenario", str(scenario), "--precision", "bf16", "fp8",
                       "--out", str(root / "profile"), "--steps", "1", "--repeats", "1", "--profile-steps", "1",
                       "--no-progress"])
    assert rc == 0
    return {"gedit": root / "gedit", "profile": root / "profile"}


@pytest.fixture(scope="session")
def built(runs, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("report") / "report.md"
    assert report.main([str(runs["profile"]), str(runs["gedit"]), "-o", str(out)]) == 0
    return out, out.read_text(encoding="utf-8")


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def md_table(text: str, heading: str) -> list[dict[str, str]]:
    """The first markdown table after the first line starting with `heading`, as dicts keyed by the header."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    first = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("|"))
    rows = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])])
    header, body = rows[0], rows[2:]
    return [dict(zip(header, r)) for r in body]


def row(rows: list[dict[str, str]], **match) -> dict[str, str]:
    found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    assert len(found) == 1, f"{match} matches {len(found)} rows of {rows}"
    return found[0]


# ---------------------------------------------------------------------------------------------- report content
def test_synthetic_banner_on_top(built):
    _, text = built
    head = text.split("## Headline")[0]
    assert "[!WARNING]" in head and SYNTHETIC_WARNING in head
    assert "synthetic tiny" in head


def test_figures_exist_open_and_are_all_linked(built):
    out, text = built
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links, "the report links no figure"
    for link in links:
        assert not Path(link).is_absolute() and link.startswith("report_files/"), link
        path = out.parent / link
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG" and min(im.size) > 50
            assert "Software" not in im.info  # no version stamp: same data, same bytes
    on_disk = {p.name for p in (out.parent / "report_files").iterdir()}
    assert on_disk == {Path(link).name for link in links}
    names = " ".join(sorted(on_disk))
    for expected in ("p1_latency", "p1_kernel_categories", "g1_en_scores", "g1_cn_scores", "g1_en_fp8_deltas",
                     "g1_en_grid1", "g1_cn_grid1"):
        assert expected in names
    assert "p1_vram" not in names  # CPU run: no memory counters, so no VRAM chart


def test_gedit_tables_equal_summary(built, runs):
    _, text = built
    summary = _json(runs["gedit"] / "summary.json")
    assert f"> **{summary['comparability']['headline']}**" in text  # a non-official judge setup says so
    headline = md_table(text, "### Headline scores")
    for h in summary["headline"]:
        r = row(headline, arm=h["arm"], lang=h["language"])
        for m in ("Q_SC", "Q_PQ", "Q_O"):
            assert r[m] == f"{h[m]:.2f}"
            assert r[f"{m}/sample"] == f"{h[m + '_per_sample']:.2f}"
        assert r["scored"] == f"{h['n_scored']}/{h['n_selected']}"
    for lang in ("en", "cn"):
        per_task = md_table(text, f"### Per task group ({lang})")
        for t in (x for x in summary["per_task"] if x["language"] == lang):
            r = row(per_task, task=t["task_type"])
            for m in ("Q_SC", "Q_PQ", "Q_O"):
                assert r[f"{m} {t['arm']}"] == f"{t[m]:.2f}"
        (delta,) = summary["deltas"]
        table = md_table(text, f"#### fp8 - bf16, paired per sample ({lang})")
        for m in ("Q_SC", "Q_PQ", "Q_O"):
            res = delta["languages"][lang][m]
            checks = [(r["task_type"], r) for r in res["per_task"]] + [
                ("**overall (task mean)**", res["overall_task_mean"]),
                ("**overall (per sample)**", res["overall_per_sample"])]
            for task, rec in checks:
                lo, hi = rec["ci95"]
                expected = f"{rec['delta']:+.2f} [{lo:+.2f}, {hi:+.2f}]"
                assert row(table, task=task)[f"Δ{m} [95% CI]"].strip("*") == expected
        fid = summary["fidelity"]["fp8"][lang]
        table = md_table(text, f"fp8 vs bf16 ({lang})")
        for t in fid["per_task"]:
            r = row(table, task=t["task_type"])
            assert (r["PSNR dB"], r["SSIM"], r["n"]) == (f"{t['psnr_db']:.2f}", f"{t['ssim']:.4f}", str(t["n"]))
    failures = md_table(text, "### Judge failures")
    for arm, langs in summary["judge_failures"].items():
        for lang, f in langs.items():
            assert row(failures, arm=arm, lang=lang)["judge failures"] == str(f["total"])


def test_report_and_summary_md_show_the_same_gedit_sections(built, runs):
    """One renderer: summary.md (level 2) and the report (level 3) show the same tables and headline words."""
    _, text = built
    summary_md = (runs["gedit"] / "summary.md").read_text(encoding="utf-8")
    for title in ("Headline scores", "Per task group (en)", "Per task group (cn)", "Intersection: headline scores",
                  "Fidelity to the baseline edits", "Judge failures", "Throughput"):
        assert md_table(summary_md, f"## {title}") == md_table(text, f"### {title}"), title
    run = report.load_run(runs["gedit"])
    for line in gedit_render.headline_lines(run.summary):  # the report's headline names the run before the same words
        assert line in summary_md and line.split(": ", 1)[1] in text
    summary = _json(runs["gedit"] / "summary.json")
    languages = sorted({t["language"] for t in summary["intersection"]["per_task"]})
    assert languages, "the synthetic selection flags no Intersection sample"
    for lang in languages:
        table = md_table(text, f"### Intersection: per task group ({lang})")
        for t in (x for x in summary["intersection"]["per_task"] if x["language"] == lang):
            assert row(table, task=t["task_type"])[f"Q_O {t['arm']}"] == f"{t['Q_O']:.2f}"


def test_profile_tables_equal_profile_json(built, runs):
    _, text = built
    prof = _json(runs["profile"] / "profile.json")
    arms = prof["arms"]
    latency = md_table(text, "### Latency per stage")
    for label, path in (("end to end", ("end_to_end",)), ("denoise (total)", ("stages", "denoise", "per_run")),
                        ("one denoise step", ("stages", "denoise_step", "per_call")),
                        ("VAE decode", ("stages", "vae_decode", "per_run"))):
        r = row(latency, stage=label)
        for name, arm in arms.items():
            stat = arm["latency"]
            for key in path:
                stat = stat[key]
            flag = " !" if stat["high_spread"] else ""
            assert r[f"{name} ms"] == f"{stat['median_ms']:.2f} [{stat['iqr_ms']:.2f}]{flag}"
    assert row(latency, stage="end to end")["fp8/bf16"] == f"{prof['ratios']['fp8']['end_to_end_ratio']:.3f}"
    memory = md_table(text, "### Memory (GiB)")
    for name, arm in arms.items():
        assert row(memory, arm=name)["transformer weights"] == f"{arm['memory']['load']['transformer_gib']:.3f}"
    categories = md_table(text, "### Kernel categories")
    for name, arm in arms.items():
        for cat, d in arm["kernels"]["categories"].items():
            assert row(categories, category=cat)[name] == f"{d['us_per_step'] / 1e3:.3f} ({d['share'] * 100:.1f}%)"
    for name, arm in arms.items():
        top = md_table(text, f"### Top kernels: {name}")
        assert len(top) == min(render.TOP_KERNELS, len(arm["kernels"]["top"]))
        for i, (r, k) in enumerate(zip(top, arm["kernels"]["top"]), 1):
            assert r["#"] == str(i) and r["kernel"] == f"`{k['name']}`" and r["category"] == k["category"]
            assert r["ms/step"] == f"{k['us_per_step'] / 1e3:.3f}" and r["share %"] == f"{k['share'] * 100:.1f}"
    busy = md_table(text, "Kernel time / wall time per stage")
    for name, arm in arms.items():
        ratio = arm["kernels"]["stages"]["denoise_step"]["kernel_over_wall"]
        assert row(busy, stage="one denoise step")[name] == f"{ratio:.2f}"
    # The FP8 arm's fallback verdict is reported exactly as profile.json has it (on a CPU FP8 is emulated: the
    # check does not apply there, and the report says so instead of raising the alarm).
    fb = arms["fp8"]["fallback"]
    assert ("**FP8 FALLBACK DETECTED in arm `fp8`.**" in text) == (fb["fallback_detected"] and not fb.get("emulated"))
    assert ("- fp8: not applicable on this device (FP8 emulated)" in text) == bool(fb.get("emulated"))
    if arms["fp8"]["fallback"].get("note"):
        assert arms["fp8"]["fallback"]["note"] in text


def test_provenance_names_revisions_devices_and_prompt_hash(built, runs):
    _, text = built
    prov = text.split("## Provenance")[1]
    summary, prof = _json(runs["gedit"] / "summary.json"), _json(runs["profile"] / "profile.json")
    for m in (summary["provenance"], prof["manifest"]):
        assert m["command"] in prov and m["git_revision"] in prov and m["device"]["torch"] in prov
    assert summary["prompt_set"]["sha256"]["set"] in prov
    assert summary["selection"]["uids_sha256"] in prov
    assert prov.count("weights: **synthetic tiny**") == 2


def test_image_grid_rows_and_instructions(built, runs):
    _, text = built
    samples = _json(runs["gedit"] / "selection.json")["samples"]
    for lang in ("en", "cn"):
        grid = md_table(text, f"### Sample edits ({lang})")
        expected = [s for s in samples if s["language"] == lang]
        assert sorted(r["instruction"] for r in grid) == sorted(s["instruction"] for s in expected)
    assert "Source column" not in text  # the recorded synthetic dataset was found


def test_same_inputs_same_report_apart_from_timestamp(runs, tmp_path):
    out = tmp_path / "r" / "report.md"
    args = [runs["gedit"], runs["profile"]]
    report.build_report(args, out, timestamp="2000-01-01T00:00:00+00:00")
    first = out.read_text(encoding="utf-8")
    figures = {p.name: p.read_bytes() for p in (out.parent / "report_files").iterdir()}
    report.build_report(args, out)
    second = out.read_text(encoding="utf-8")
    differing = [(a, b) for a, b in zip(first.splitlines(), second.splitlines()) if a != b]
    assert len(first.splitlines()) == len(second.splitlines())
    assert len(differing) == 1 and all(x.startswith(report.TIMESTAMP_PREFIX) for x in differing[0])
    assert figures == {p.name: p.read_bytes() for p in (out.parent / "report_files").iterdir()}


# ------------------------------------------------------------------------------------------------ inputs, errors
def test_kind_is_read_from_files_not_folder_names(runs, tmp_path):
    looks_like_profile = tmp_path / "profile-run"
    looks_like_profile.mkdir()
    for name in ("summary.json", "scores.csv", "selection.json"):
        shutil.copy(runs["gedit"] / name, looks_like_profile / name)
    looks_like_gedit = tmp_path / "gedit-summary"
    shutil.copytree(runs["profile"], looks_like_gedit)
    assert isinstance(report.load_run(looks_like_profile), report.GeditRun)
    assert isinstance(report.load_run(looks_like_gedit), report.ProfileRun)
    only_profile = tmp_path / "only-profile.md"
    report.build_report([looks_like_gedit], only_profile)
    text = only_profile.read_text(encoding="utf-8")
    assert "## Latency and memory" in text and "## Quality" not in text


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "neither summary.json"),
    (lambda d: [(d / n).write_text("{}") for n in ("summary.json", "profile.json")], "both summary.json"),
    (lambda d: (d / "profile.json").write_text("{not json"), "not valid JSON"),
])
def test_bad_folders_get_clear_errors(tmp_path, capsys, make, message):
    folder = tmp_path / "run"
    folder.mkdir()
    make(folder)
    with pytest.raises(report.ReportError, match=message):
        report.load_run(folder)
    assert report.main([str(folder), "-o", str(tmp_path / "r.md")]) == 2
    assert message in capsys.readouterr().err


def test_summary_of_an_older_harness_is_refused_with_the_way_to_rewrite_it(runs, tmp_path, capsys):
    folder = tmp_path / "old"
    shutil.copytree(runs["gedit"], folder, ignore=shutil.ignore_patterns("_synthetic"))
    summary = _json(folder / "summary.json")
    del summary["schema_version"]  # as the summaries written before the field existed
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    with pytest.raises(report.ReportError, match="schema_version None"):
        report.load_run(folder)
    assert report.main([str(folder), "-o", str(tmp_path / "r.md")]) == 2
    err = capsys.readouterr().err
    assert f"--stage score --out {folder}" in err and summary["provenance"]["command"] in err


def test_missing_folder_and_bad_output_name(runs, tmp_path):
    with pytest.raises(report.ReportError, match="is not a folder"):
        report.load_run(tmp_path / "nope")
    with pytest.raises(report.ReportError, match=r"\.md"):
        report.build_report([runs["profile"]], tmp_path / "report.html")


def test_moved_run_still_finds_its_dataset_and_a_missing_one_is_reported(runs, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(runs["gedit"], moved, ignore=shutil.ignore_patterns("omnigen2-tiny", "judge-tiny"))
    summary = _json(moved / "summary.json")
    old_root = Path(summary["edits_root"])
    summary["edits_root"] = "/nonexistent/old-place"
    summary["dataset"] = str(Path("/nonexistent/old-place") / Path(summary["dataset"]).relative_to(old_root))
    (moved / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    run, original = report.load_run(moved), report.load_run(runs["gedit"])
    sample = run.samples[0]
    image = grid.SourceImages(run, None).get(sample)
    assert image is not None
    assert np.array_equal(np.asarray(image), np.asarray(grid.SourceImages(original, None).get(sample)))
    out = tmp_path / "missing" / "report.md"
    report.build_report([moved], out, dataset=str(tmp_path / "no-such-dataset"))
    assert "Source column: source images unavailable" in out.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------------- plots unit
def test_grid_selection_takes_one_per_task_group_first():
    samples = [{"task_type": t, "language": lang, "key": k, "instruction": "x"}
               for t in ("b", "a") for k in ("k2", "k1") for lang in ("en", "cn")]
    chosen = grid.grid_selection(samples, "en", 3)
    assert [(s["task_type"], s["key"]) for s in chosen] == [("a", "k1"), ("b", "k1"), ("a", "k2")]
    assert grid.grid_selection(samples, "en", 0) == []


def test_captions_the_font_cannot_draw_are_replaced():
    assert plots.can_render("Make the car red.")
    assert not plots.can_render("把背景换成红色的墙。")
    row = plots.GridRow("#1 color_alter (cn)", [], caption="把背景换成红色的墙。")
    assert row.text() == f"#1 color_alter (cn): {row.caption_fallback}"


def test_sections_render_at_their_depth_with_every_chart():
    charts = [Chart(f"c{i}", f"alt {i}", lambda path: path) for i in range(3)]
    sections = [Section("A", ["a", ""], charts[0]), Section("B", ["b", ""], charts[1], depth=1,
                                                            more_charts=(charts[2],))]
    drawn = render_sections(sections, level=3, draw=lambda chart: [f"![{chart.alt}]", ""])
    assert drawn == ["### A", "", "a", "", "![alt 0]", "", "#### B", "", "b", "", "![alt 1]", "", "![alt 2]", ""]
    assert render_sections(sections, level=2) == ["## A", "", "a", "", "### B", "", "b", ""]


def test_figures_are_byte_identical_for_the_same_data(tmp_path):
    series = {"bf16": [plots.Interval(3.0, 2.5, 3.5), None], "fp8": [plots.Interval(2.0), plots.Interval(1.0)]}
    a = plots.grouped_bars(tmp_path / "a.png", ["x", "y"], series, title="t", value_label="ms", value_labels=True)
    b = plots.grouped_bars(tmp_path / "b.png", ["x", "y"], series, title="t", value_label="ms", value_labels=True)
    assert a.read_bytes() == b.read_bytes()
    c = plots.stacked_bars(tmp_path / "c.png", ["bf16"], {"bf16": {"attention": 1.0, "gemm-bf16": 2.0}},
                           title="t", value_label="ms")
    with Image.open(c) as im:
        assert im.size[0] > 100 and "Software" not in im.info


def test_gpu_style_profile_with_memory_and_a_failed_arm(runs, tmp_path):
    """A CUDA run records peak memory (here written into a copy of the CPU run's file) and may lose an arm."""
    folder = tmp_path / "gpu-like"
    shutil.copytree(runs["profile"], folder)
    prof = _json(folder / "profile.json")
    for i, arm in enumerate(prof["arms"].values()):
        arm["memory"]["load"].update(peak_allocated_gib=10.0 + i, peak_reserved_gib=11.0 + i)
        arm["memory"]["run"].update(peak_allocated_gib=20.0 - i, peak_reserved_gib=21.5 - i)
    prof["ratios"]["fp8"]["peak_allocated_run_ratio"] = 19.0 / 20.0
    prof["arms"]["fp8-nopad"] = {"name": "fp8-nopad", "ok": False, "error": "RuntimeError: out of memory",
                                 "quantization": None, "memory": {"load": None, "run": None}, "latency": None,
                                 "kernels": None, "fallback": None}
    (folder / "profile.json").write_text(json.dumps(prof), encoding="utf-8")
    out = tmp_path / "r" / "report.md"
    report.build_report([folder], out)
    text = out.read_text(encoding="utf-8")
    memory = md_table(text, "### Memory (GiB)")
    assert row(memory, arm="bf16")["run peak alloc"] == "20.000"
    assert row(memory, arm="fp8")["load peak reserved"] == "12.000"
    assert row(memory, arm="fp8")["run peak / bf16"] == "0.950"
    assert row(memory, arm="fp8-nopad")["run peak alloc"] == "-"
    assert "Arm **fp8-nopad** failed: `RuntimeError: out of memory`" in text
    assert (out.parent / "report_files" / "p1_vram.png").is_file()
    assert "peak VRAM of a run 19.000 GiB vs 20.000 GiB (fp8/bf16 = 0.95)" in text


def test_failed_judge_samples_are_listed(runs, tmp_path):
    folder = tmp_path / "failures"
    shutil.copytree(runs["gedit"], folder, ignore=shutil.ignore_patterns("_synthetic"))
    scores = (folder / "scores.csv").read_text(encoding="utf-8").splitlines()
    header = scores[0].split(",")
    cells = scores[1].split(",")
    cells[header.index("status")], cells[header.index("failure")] = "judge_failure", "sc: parse_failure"
    scores[1] = ",".join(cells)
    (folder / "scores.csv").write_text("\n".join(scores) + "\n", encoding="utf-8")
    out = tmp_path / "r" / "report.md"
    report.build_report([folder], out, grid_samples=0)
    failed = md_table(out.read_text(encoding="utf-8"), "Failed samples (1;")
    key = cells[header.index("key")]
    assert failed == [{"arm": cells[0], "lang": cells[header.index("language")],
                       "task": cells[header.index("task_type")], "key": code(key, 12),
                       "status": "judge_failure", "why": "sc: parse_failure"}]


def test_per_arm_intervals_are_drawn_when_the_run_file_has_them(runs, tmp_path):
    folder = tmp_path / "with-ci"
    shutil.copytree(runs["gedit"], folder, ignore=shutil.ignore_patterns("_synthetic"))
    summary = _json(folder / "summary.json")
    for r in summary["per_task"]:
        r["Q_O_ci95"] = [r["Q_O"] - 1.0, r["Q_O"] + 0.5]
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    plain, with_ci = tmp_path / "a" / "report.md", tmp_path / "b" / "report.md"
    report.build_report([runs["gedit"]], plain, grid_samples=0)
    report.build_report([folder], with_ci, grid_samples=0)
    figure = Path("report_files") / "g1_en_scores.png"
    assert (plain.parent / figure).read_bytes() != (with_ci.parent / figure).read_bytes()


# ------------------------------------------------------------------------------------------- speed vs quality
def test_tradeoff_chart_is_written_and_its_points_match_the_records(built, runs):
    out, text = built
    summary, profile = _json(runs["gedit"] / "summary.json"), ProfileRecord.from_json(runs["profile"] / "profile.json")
    for lang in ("en", "cn"):
        link = f"report_files/g1_tradeoff_{lang}.png"
        assert f"]({link})" in text
        with Image.open(out.parent / link) as im:
            assert im.format == "PNG" and min(im.size) > 50
        run = report.load_run(runs["gedit"])
        points = {p.arm: p for p in tradeoff_points(run.summary, lang, report.profile_seconds(run.summary.arms,
                                                                                             [profile]))}
        assert list(points) == ["bf16", "fp8"]
        delta = next(d for d in summary["deltas"] if d["arm"] == "fp8")["languages"][lang]["Q_O"]["overall_task_mean"]
        fp8, bf16 = points["fp8"], points["bf16"]
        assert fp8.q_o_delta == delta["delta"] and list(fp8.q_o_ci95) == delta["ci95"]
        assert fp8.ssim == summary["fidelity"]["fp8"][lang]["overall_per_sample"]["ssim"]
        assert bf16.q_o_delta == 0.0 and bf16.ssim == 1.0
        for arm, p in points.items():  # the profile holds both arms: its end-to-end median is the time
            assert p.time_source == "profile" and p.seconds == pytest.approx(profile.arms[arm].stage_ms("end_to_end") / 1e3)
        assert fp8.speedup == pytest.approx(bf16.seconds / fp8.seconds)
        table_rows = md_table(text, f"### Speed vs quality ({lang})")
        assert row(table_rows, arm="fp8")["s/edit"] == f"{fp8.seconds:.3f}"


def test_tradeoff_times_come_from_the_gedit_run_without_a_profile(runs):
    summary = _json(runs["gedit"] / "summary.json")
    points = tradeoff_points(report.load_run(runs["gedit"]).summary, "en")
    gen = summary["throughput"]["generation"]
    assert [(p.arm, p.time_source, p.seconds) for p in points] == [
        (arm, "gedit", gen[arm]["seconds_per_sample_median"]) for arm in ("bf16", "fp8")]


def test_tradeoff_png_is_byte_identical_for_the_same_points(runs, tmp_path):
    points = tradeoff_points(report.load_run(runs["gedit"]).summary, "en")
    a = draw_tradeoff(tmp_path / "a.png", points, title="t", baseline="bf16").read_bytes()
    b = draw_tradeoff(tmp_path / "b.png", points, title="t", baseline="bf16").read_bytes()
    assert a == b
