"""Every committed measurement says how it was made: the command, the device, the date and the versions.

The files are read as text (their layouts differ by benchmark): a result without its provenance cannot be rerun or
trusted, so it does not belong in results/."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parent.parent / "results"
# Top-level measurements, profile runs, and the record of each example run folder (its other files are the run's).
FILES = sorted([*RESULTS.glob("*.json"), *RESULTS.glob("profile/*/profile.json"),
                *RESULTS.glob("example-*/runs/*/summary.json"), *RESULTS.glob("example-*/runs/*/profile.json")])
MARKS = {
    "command": re.compile(r'"(command|argv)"|python3? -m '),
    "device": re.compile(r'H100|H200|"device"'),
    "date": re.compile(r"20\d\d-\d\d-\d\d"),
    "versions": re.compile(r"torch"),
}


def test_results_are_found():
    assert len(FILES) > 40


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(RESULTS)))
def test_each_result_says_how_it_was_made(path):
    text = path.read_text(encoding="utf-8")
    json.loads(text)  # and it is JSON
    missing = [what for what, mark in MARKS.items() if not mark.search(text)]
    assert not missing, f"{path.relative_to(RESULTS)} does not say its {', '.join(missing)}"
