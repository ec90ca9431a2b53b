"""The execution-mode chooser every command line shares (omnigen2_fp8.modes): the fastest mode on CUDA by default,
a named fallback for offloaded weights, refusals that name the fix."""
from __future__ import annotations

import pytest

from omnigen2_fp8.modes import (CUDA_DEFAULT_MODE, MODES, OFFLOAD_REASON, ModeChoice, choose_mode, graphs_blocker,
                                mode_name)


@pytest.mark.parametrize("device, offload, mode, reason", [
    ("cuda", False, "compile+graphs", None),
    ("cuda:1", False, "compile+graphs", None),
    ("cuda", True, "compile", OFFLOAD_REASON),
    ("cpu", False, "eager", None),
    ("cpu", True, "eager", None),
])
def test_auto_is_the_fastest_mode_on_cuda_and_says_why_when_it_falls_back(device, offload, mode, reason):
    choice = choose_mode("auto", device, offload)
    assert (choice.mode, choice.requested, choice.fallback_reason) == (mode, "auto", reason)
    assert CUDA_DEFAULT_MODE == "compile+graphs"


def test_explicit_modes_are_kept_or_refused_with_the_fix():
    assert choose_mode("eager", "cuda") == ModeChoice("eager", "eager")
    assert choose_mode("compile", "cpu").mode == "compile"
    assert choose_mode("graphs", "cuda") == ModeChoice("graphs", "graphs")
    with pytest.raises(ValueError, match="needs CUDA and no --offload"):
        choose_mode("compile+graphs", "cuda", offload=True)
    with pytest.raises(ValueError, match="unknown mode 'fastest'"):
        choose_mode("fastest", "cuda")


def test_a_choice_spells_the_pipeline_flags_and_describes_itself():
    for mode in MODES:
        choice = ModeChoice(mode)
        assert mode_name(**choice.pipeline_flags()) == mode
    assert ModeChoice("compile+graphs").pipeline_flags() == {"compile": True, "cuda_graphs": True}
    offloaded = choose_mode("auto", "cuda", offload=True)
    assert offloaded.describe() == f"compile (no CUDA graphs: {OFFLOAD_REASON})"
    assert offloaded.to_dict() == {"mode": "compile", "requested": "auto", "fallback_reason": OFFLOAD_REASON}
    assert graphs_blocker() is None and graphs_blocker(offload=True) == OFFLOAD_REASON
