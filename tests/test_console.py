"""What a first run prints on a CPU: a quiet line for FP8 emulated by design (no fallback alarm), no profiler
chatter, and one note for timing spread; the files keep everything."""
from __future__ import annotations

import json

from harness.core.records import REPO_ROOT
from harness.profile.__main__ import main as profile_main
from harness.profile.runner import PROFILER_LOG

SCENARIO = """\
task: tiny-console
include: {template}
metadata:
  description: "32x32 edit of one 32x32 reference, 2 steps"
height: 32
width: 32
references: [[32, 32]]
steps: 2
"""


def test_cpu_profile_console_is_one_line_per_finding_and_files_keep_everything(tmp_path, capfd):
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(SCENARIO.format(template=REPO_ROOT / "tasks" / "profile" / "_template.yaml"))
    out = tmp_path / "out"
    code = profile_main(["--precision", "bf16", "fp8", "--scenario", str(scenario), "--synthetic", "tiny", "--device", "cpu",
                   "--warmup", "1", "--repeats", "3", "--profile-steps", "1", "--out", str(out), "--no-progress"])
    err = capfd.readouterr().err
    assert code == 0
    assert "fp8: FP8 fallback check not applicable on this device (FP8 emulated)" in err
    assert "FALLBACK DETECTED" not in err and "!!!" not in err
    assert "USDT" not in err and "profiler_start" not in err
    assert (out / PROFILER_LOG).is_file()
    rec = json.loads((out / "profile.json").read_text())
    assert rec["arms"]["fp8"]["fallback"]["emulated"] and rec["arms"]["fp8"]["fallback"]["findings"]  # kept in full
    assert "fp8: not applicable on this device (FP8 emulated)" in (out / "profile.md").read_text()
    spread = [w for w in rec["warnings"] if w.startswith("HighSpreadWarning")]
    assert "HighSpreadWarning" not in err
    assert err.count("timings spread more than") == (1 if spread else 0)
    if spread:
        assert f"note: {len(spread)} timings spread" in err
