"""Judge retry bookkeeping and prompt sets on hand-written answers (parsing: test_gedit_answers.py)."""
from __future__ import annotations

import hashlib

import pytest

from harness.gedit.judge import finish_call, parse_judge_answer
from harness.gedit.judge_prompts import INSTRUCTION_PLACEHOLDER, PROJECT_RUBRIC, PromptSetError, resolve_prompt_set


def _attempt(answer):
    return {"answer": answer, "parse": parse_judge_answer(answer).to_record()}


def test_finish_call_takes_first_valid_attempt_and_min():
    res = finish_call("x#sc", [_attempt("garbage"), _attempt('{"score": [6, 4]}')])
    assert res.status == "ok" and res.scores == [6.0, 4.0] and res.score == 4.0
    assert len(res.attempts) == 2


def test_finish_call_failure_never_invents_a_score():
    res = finish_call("x#pq", [_attempt("no"), _attempt("still no"), _attempt("nope")])
    assert res.status == "parse_failure" and res.score is None and res.scores is None
    res = finish_call("x#pq", [_attempt("[15, 3]")])
    assert res.status == "out_of_range" and res.score is None and res.scores == [15.0, 3.0]


def test_project_rubric_fills_instruction_and_hashes():
    assert INSTRUCTION_PLACEHOLDER in PROJECT_RUBRIC.sc and INSTRUCTION_PLACEHOLDER not in PROJECT_RUBRIC.pq
    prompt = PROJECT_RUBRIC.sc_prompt("Make the sky pink.")
    assert "Make the sky pink." in prompt and INSTRUCTION_PLACEHOLDER not in prompt
    assert '{"score": [' in PROJECT_RUBRIC.sc and '{"score": [' in PROJECT_RUBRIC.pq
    assert PROJECT_RUBRIC.sha256["sc"] == hashlib.sha256(PROJECT_RUBRIC.sc.encode()).hexdigest()
    assert resolve_prompt_set("project-rubric-v1") is PROJECT_RUBRIC


def test_prompt_set_names():
    assert resolve_prompt_set("project-rubric") is PROJECT_RUBRIC
    with pytest.raises(PromptSetError, match="unknown prompt set"):
        resolve_prompt_set("vieScore2")
