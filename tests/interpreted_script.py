"""Run a check script under Triton's CPU interpreter (TRITON_INTERPRET=1 must be set before triton is imported, hence
a subprocess) and read the JSON line it prints."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_interpreted(script: str, timeout_s: int) -> dict:
    """The `JSON:` line printed by tests/<script>, run with TRITON_INTERPRET=1; the test fails with its output if the
    script fails."""
    path = f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / script)], env=env, capture_output=True,
                          text=True, timeout=timeout_s)
    if proc.returncode != 0:
        pytest.fail(f"interpreter checks failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    line = next(l for l in proc.stdout.splitlines() if l.startswith("JSON:"))
    return json.loads(line[len("JSON:"):])
