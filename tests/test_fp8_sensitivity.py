"""The per-group sensitivity tool on the tiny model: every group measured on its own, FLOP shares add up."""
from __future__ import annotations

import json
import math

from benchmarks.fp8_sensitivity import GROUPS, main


def test_sensitivity_cli_reports_every_group(tmp_path, capsys):
    out = tmp_path / "sens.json"
    rows = main(["--latent-side", "8", "--text-tokens", "6", "--json", str(out)])
    assert [r["group"] for r in rows] == list(GROUPS)
    by = {r["group"]: r for r in rows}
    for r in rows:
        assert r["layers"] > 0 and math.isfinite(r["rel_err"]) and r["rel_err"] > 0
    # the four GEMM groups are where the FLOPs are; the AdaLN projection runs on one temb row per sample
    assert by["default policy (qkv + attn_out + gate_up + down)"]["flop_share"] > 0.9
    assert by["norm1.linear (AdaLN modulation)"]["flop_share"] < 0.01
    parts = sum(by[g]["flop_share"] for g in ("qkv", "attn_out", "gate_up", "down"))
    assert math.isclose(parts, by["default policy (qkv + attn_out + gate_up + down)"]["flop_share"], rel_tol=1e-9)
    saved = json.loads(out.read_text())
    assert saved["manifest"]["synthetic_weights"] == "tiny" and len(saved["rows"]) == len(GROUPS)
    assert "SYNTHETIC" in capsys.readouterr().out
