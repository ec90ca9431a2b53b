"""The fused Triton quantization kernel, run on the CPU by Triton's interpreter, against the torch reference.

TRITON_INTERPRET must be set before triton is imported, so the checks run in a fresh subprocess
(tests/fp8_interpreter_checks.py) and this module asserts on what it measured.
"""
from __future__ import annotations

import pytest

from interpreted_script import run_interpreted

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def interpreted() -> dict:
    return run_interpreted("fp8_interpreter_checks.py", timeout_s=600)


def test_kernel_really_ran_in_the_interpreter(interpreted):
    assert interpreted["interpreted"] == "InterpretedFunction"


@pytest.mark.parametrize("case", ["per_token", "per_token_two_pass", "per_tensor", "strided_rows", "fp32_input",
                                  "swiglu", "swiglu_two_pass", "swiglu_dequant", "resident", "resident_per_tensor",
                                  "resident_swiglu_dequant", "resident_real_2520"])
def test_kernel_matches_torch_reference(interpreted, case):
    r = interpreted["cases"][case]
    assert r["q_dtype"] == "torch.float8_e4m3fn"
    assert r["max_step_diff"] <= 1, r  # exact, or within one e4m3 step
    assert r["scale_max_rel_diff"] < 1e-6, r
    assert r["padding_zero"] and not r["nan"], r
    assert r["scale_shape"][0] == (1 if case.endswith("per_tensor") else r["q_shape"][0])


def test_integer_e4m3_encoder_is_bit_identical_to_torch_cast(interpreted):
    assert interpreted["encoder_bit_identical"]


def test_fp8_linear_fused_path_matches_emulation(interpreted):
    assert interpreted["linear_rel_diff_fused_vs_emulated"] < 1e-3


def test_fp8_linear_compiles_without_graph_breaks(interpreted):
    # fullgraph=True raises on a graph break; dynamic shapes serve a second token count without retracing
    assert interpreted["compiled_max_abs_diff"] == 0.0
    assert interpreted["compiled_second_shape_max_abs_diff"] == 0.0
