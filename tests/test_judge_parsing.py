"""Judge answer parsing, retry bookkeeping and prompt sets, on hand-written answers."""
from __future__ import annotations

import hashlib

import pytest

from harness.gedit.judge import finish_call, parse_judge_answer
from harness.gedit.judge_prompts import (INSTRUCTION_PLACEHOLDER, PROJECT_RUBRIC, PromptSetError, load_viescore_prompts,
                                   resolve_prompt_set)


@pytest.mark.parametrize("answer, scores, method", [
    ('{"score": [7, 8], "reasoning": "fine"}', (7.0, 8.0), "json"),
    ('Sure!\n```json\n{"score": [3, 9], "reasoning": "a {nested} brace"}\n```', (3.0, 9.0), "json"),
    ('{"score": ["6", 5.5], "reasoning": ""}', (6.0, 5.5), "json"),
    ("[4, 10]", (4.0, 10.0), "list"),
    ("My scores are [2, 3] overall.", (2.0, 3.0), "list"),
    ('{"scores": [1, 2]}', (1.0, 2.0), "list"),  # JSON without "score": falls through to the bare list
    ("7", (7.0,), "integer"),
    (" 9.\n", (9.0,), "integer"),
    ('{"score": [12, 4]}', (12.0, 4.0), "json"),
])
def test_parse_accepts_the_three_shapes(answer, scores, method):
    parsed = parse_judge_answer(answer)
    assert parsed.scores == scores
    assert parsed.method == method


@pytest.mark.parametrize("answer", [
    "", "   ", "The edit looks good.", "I give it 7 out of 10", '{"score": []}', '{"score": "high"}',
    '{"score": [true, 5]', "score: seven, eight", '{"score": [7, 8}',
])
def test_parse_rejects_garbage(answer):
    parsed = parse_judge_answer(answer)
    assert parsed.scores is None and not parsed.valid
    assert parsed.error


def test_out_of_range_is_flagged_not_valid():
    assert parse_judge_answer('{"score": [11, 4]}').out_of_range
    assert parse_judge_answer("[-1, 4]").out_of_range
    assert not parse_judge_answer("[0, 10]").out_of_range
    assert parse_judge_answer("[0, 10]").valid and not parse_judge_answer("[0, 11]").valid


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


def test_viescore_copy_with_wrong_text_is_refused(tmp_path):
    fake = tmp_path / "vie_prompts.py"
    fake.write_text('context_no_delimit = "a"\ntwo_image_edit_rule = "b"\ntie_rule_SC = "c"\nrule_PQ = "d"\n')
    with pytest.raises(PromptSetError, match="SHA-256"):
        load_viescore_prompts(fake)
    partial = tmp_path / "partial.py"
    partial.write_text('context_no_delimit = "a"\n')
    with pytest.raises(PromptSetError, match="rule_PQ"):
        load_viescore_prompts(partial)
    with pytest.raises(PromptSetError, match="does not exist"):
        load_viescore_prompts(tmp_path / "missing.py")
    with pytest.raises(PromptSetError, match="unknown prompt set"):
        resolve_prompt_set("vieScore2")


def test_viescore_templates_are_assembled_in_the_published_order(tmp_path, monkeypatch):
    import harness.gedit.judge_prompts as jp

    src = tmp_path / "vie_prompts.py"
    src.write_text('context_no_delimit = "CTX"\ntwo_image_edit_rule = "RULE <instruction>"\n'
                   'tie_rule_SC = "TIE"\nrule_PQ = "PQ"\nother = 3\n')
    monkeypatch.setattr(jp, "VIESCORE_SC_SHA256", hashlib.sha256(b"CTX\nRULE <instruction>\nTIE").hexdigest())
    monkeypatch.setattr(jp, "VIESCORE_PQ_SHA256", hashlib.sha256(b"CTX\nPQ").hexdigest())
    prompts = jp.load_viescore_prompts(src)
    assert prompts.name == "viescore" and prompts.sc_prompt("do it") == "CTX\nRULE do it\nTIE"
    assert prompts.sha256["sc"] == jp.VIESCORE_SC_SHA256 and prompts.origin == str(src)
