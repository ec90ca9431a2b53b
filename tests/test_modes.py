"""The execution-mode chooser every command line shares (omnigen2_fp8.modes): the fastest mode on CUDA by default,
a named fallback for arms that cannot be captured, refusals that name the fix."""
from __future__ import annotations

import pytest

from omnigen2_fp8.caching import TaylorSeerConfig, TeaCacheConfig
from omnigen2_fp8.modes import (CUDA_DEFAULT_MODE, MODES, OFFLOAD_REASON, ModeChoice, choose_mode, graphs_blocker,
                                mode_name)


@pytest.mark.parametrize("device, offload, cache, mode, reason", [
    ("cuda", False, None, "compile+graphs", None),
    ("cuda:1", False, TaylorSeerConfig(), "compile+graphs", None),   # TaylorSeer replays graphs
    ("cuda", False, TeaCacheConfig(), "compile", TeaCacheConfig.not_capturable_reason),
    ("cuda", True, None, "compile", OFFLOAD_REASON),
    ("cpu", False, None, "eager", None),
    ("cpu", False, TeaCacheConfig(), "eager", None),
])
def test_auto_is_the_fastest_mode_on_cuda_and_says_why_when_it_falls_back(device, offload, cache, mode, reason):
    choice = choose_mode("auto", device, offload, cache)
    assert (choice.mode, choice.requested, choice.fallback_reason) == (mode, "auto", reason)
    assert CUDA_DEFAULT_MODE == "compile+graphs"


def test_explicit_modes_are_kept_or_refused_with_the_fix():
    assert choose_mode("eager", "cuda") == ModeChoice("eager", "eager")
    assert choose_mode("compile", "cpu", step_cache=TeaCacheConfig()).mode == "compile"
    with pytest.raises(ValueError, match="teacache:0.05 cannot be combined with cuda_graphs=True.*compile=True"):
        choose_mode("graphs", "cuda", step_cache=TeaCacheConfig())
    with pytest.raises(ValueError, match="needs CUDA and no --offload"):
        choose_mode("compile+graphs", "cuda", offload=True)
    with pytest.raises(ValueError, match="unknown mode 'fastest'"):
        choose_mode("fastest", "cuda")


def test_a_choice_spells_the_pipeline_flags_and_describes_itself():
    for mode in MODES:
        choice = ModeChoice(mode)
        assert mode_name(**choice.pipeline_flags()) == mode
    assert ModeChoice("compile+graphs").pipeline_flags() == {"compile": True, "cuda_graphs": True}
    teacache = choose_mode("auto", "cuda", step_cache=TeaCacheConfig())
    assert teacache.describe().startswith("compile (no CUDA graphs: TeaCache decides inside each pass")
    assert teacache.to_dict() == {"mode": "compile", "requested": "auto",
                                  "fallback_reason": TeaCacheConfig.not_capturable_reason}
    assert graphs_blocker() is None and graphs_blocker(step_cache=TaylorSeerConfig()) is None
