"""Shared fixtures: golden-vector location and the GPU marker."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# The golden vectors live beside the checkout (../shared/golden/omnigen2); OMNIGEN2_GOLDEN_DIR overrides.
GOLDEN_DIR = Path(os.environ.get("OMNIGEN2_GOLDEN_DIR", REPO_ROOT.parent / "shared" / "golden" / "omnigen2"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN_DIR.is_dir():
        pytest.fail(f"golden vectors not found at {GOLDEN_DIR}; set OMNIGEN2_GOLDEN_DIR to the shared/golden/omnigen2 folder")
    return GOLDEN_DIR
