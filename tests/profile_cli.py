"""The profile CLI as the tests run it: a tiny scenario file beside the repository's template, and `main` with the
libraries' warnings silenced."""
from __future__ import annotations

import warnings
from pathlib import Path

from harness.core.records import REPO_ROOT
from harness.profile.__main__ import main

TEMPLATE = REPO_ROOT / "tasks" / "profile" / "_template.yaml"


def write_scenario(folder: Path, text: str) -> Path:
    """`text` (a scenario with an `{template}` field for the include) written to folder/tiny.yaml."""
    scenario = folder / "tiny.yaml"
    scenario.write_text(text.format(template=TEMPLATE))
    return scenario


def run_profile(argv: list[str]) -> int:
    """`python -m harness.profile ARGV`'s exit status, without the libraries' warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(argv)
