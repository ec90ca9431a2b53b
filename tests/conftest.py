"""Shared fixtures: golden-vector location and the GPU marker."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from golden_cases import GOLDEN_ROOT

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN_ROOT.is_dir():
        pytest.fail(f"golden vectors not found at {GOLDEN_ROOT}; unset OMNIGEN2_GOLDEN_DIR to use tests/golden")
    return GOLDEN_ROOT
