"""Official GEdit-Bench answer parsing: every upstream branch, with upstream's score or the failure we record."""
from __future__ import annotations

import math

import pytest

from harness.gedit.answers import (UPSTREAM_ENDLESS, UPSTREAM_ERROR, UPSTREAM_RANDOM, parse_official_answer,
                                   repair_json)
from harness.gedit.judge import parse_judge_answer

D = "||V^=^V||"

# (raw answer, scores upstream reads, which rule read it)
DEFINITE = [
    # rule 1: exactly two delimiters; whatever is outside them is ignored, braces included
    (f'{D}\n{{\n"score" : [7, 8],\n"reasoning" : "ok"\n}}\n{D}', (7, 8), "delimited"),
    (f'Note {{x}}\n{D}{{"score": [3, 4], "reasoning": "r"}}{D} trailing }}', (3, 4), "delimited"),
    (f'{D} {{"score": 5}} {D}', (5,), "delimited"),                                    # scalar wrapped
    # rule 2: first "{" to last "}", newlines removed (a newline inside the reasoning string is fine)
    ('{"score": [7, 8], "reasoning": "fine"}', (7, 8), "json"),
    ('{"score": [5, 6], "reasoning": "line one\nline two"}', (5, 6), "json"),
    ('Sure!\n```json\n{\n  "score": [3, 9],\n  "reasoning": "a {nested} brace"\n}\n```', (3, 9), "json"),
    ('{"score": 6, "reasoning": "x"}', (6,), "json"),                                     # scalar wrapped
    ('{"score": [7.5, 8]}', (7.5, 8), "json"),
    ('{"score": [0, true]}', (0, 1), "json"),                                             # Python's min() is 0
    ('{"reasoning": "has [1, 2] inside", "score": [9, 9]}', (9, 9), "json"),              # never the reasoning's pair
    (f'{D}\n{{"score": [2, 3]}}', (2, 3), "json"),                                        # one delimiter: ignored
    (f'{D}{D}{D}{{"score": [2, 4]}}', (2, 4), "json"),                                   # three: ignored
    # rule 2, one repair pass: bare keys and values quoted, numbers put in a list
    ("{score: 6, reasoning: fine}", (6,), "json-repaired"),
    ('{"score": 7, "reasoning": no quotes here}', (7,), "json-repaired"),
    (f"{D}{{score: 4}}{D}", (4,), "delimited-repaired"),
    # rule 3 (no "{" or no "}"): the first-"["-to-last-"]" span as an exact pair, or the whole answer as 0-10
    ("[4, 10]", (4, 10), "pair"),
    ("[4,10]", (4, 10), "pair"),
    ("My scores are [2, 3] overall.", (2, 3), "pair"),
    ('{"score": [6, 7], "reasoning": "The edit is', (6, 7), "pair"),                     # cut off: no "}"
    ("7", (7,), "integer"),
    (" 10\n", (10,), "integer"),
    ("+3", (3,), "integer"),                                                              # int() reads it
    # definite upstream, but outside 0-10: read here, then counted as out of range (the one deliberate difference)
    ('{"score": [12, 4]}', (12, 4), "json"),
    ("[11, 3]", (11, 3), "pair"),
]

# (raw answer, what upstream does, a word the recorded reason must contain)
FAILURES = [
    # brace-less and unreadable: upstream's second pass draws random.randint(0, 10)
    ("", UPSTREAM_RANDOM, "not one integer"),
    ("The edit looks good.", UPSTREAM_RANDOM, "not one integer"),
    ("I give it 7 out of 10", UPSTREAM_RANDOM, "not one integer"),
    ("[6, 7] and [8, 9]", UPSTREAM_RANDOM, "[a, b]"),          # the span is not one exact pair
    ("[6,  7]", UPSTREAM_RANDOM, "[a, b]"),                    # two spaces
    ("[6]", UPSTREAM_RANDOM, "[a, b]"),
    ("[-1, 4]", UPSTREAM_RANDOM, "[a, b]"),                    # the pair rule takes unsigned integers only
    ("11", UPSTREAM_RANDOM, "outside 0-10"),
    ("7.", UPSTREAM_RANDOM, "not one integer"),
    # braces or delimiters that never parse: upstream asks again for ever (the greedy answer repeats)
    ('{"score": [7, 8}', UPSTREAM_ENDLESS, "repair"),
    ('{"score": [6, 7], "reasoning": "a\tb"}', UPSTREAM_ENDLESS, "repair"),  # raw tab: JSON refuses it
    ('{"scores": [1, 2]}', UPSTREAM_ENDLESS, "repair"),         # no 'score'; the repair breaks it
    ("}{", UPSTREAM_ENDLESS, "before"),
    (f"{D}{D}", UPSTREAM_ENDLESS, "nothing between"),
    (f"{D} no json {D} {{\"score\": [1, 2]}}", UPSTREAM_ENDLESS, "repair"),
    # parsed, but upstream's min() / sqrt() raise or give no number: the sample never reaches its CSV
    ('{"score": []}', UPSTREAM_ERROR, "min()"),
    ('{"score": "high"}', UPSTREAM_ERROR, "not a number"),
    ('{"score": ["6", 5.5]}', UPSTREAM_ERROR, "raises"),
    ('{"score": [true, 5]}', UPSTREAM_ERROR, "not a number"),
    ('{"score": null}', UPSTREAM_ERROR, "not a number"),
    ("[07, 5]", UPSTREAM_ERROR, "JSON cannot read"),
    (f"{D}[6, 7]{D}", UPSTREAM_ERROR, "not an object"),
    ("rate_limit_exceeded", UPSTREAM_ERROR, "rate-limit"),
]


@pytest.mark.parametrize("answer, scores, method", DEFINITE)
def test_upstream_scores_are_read_exactly(answer, scores, method):
    parsed = parse_official_answer(answer)
    assert parsed.scores == tuple(float(s) for s in scores)
    assert parsed.method == method and parsed.error is None and parsed.upstream == "score"
    assert parsed.out_of_range == any(not 0 <= s <= 10 for s in scores)
    assert parse_judge_answer(answer) == parsed  # the judge's entry point delegates


@pytest.mark.parametrize("answer, upstream, reason", FAILURES)
def test_where_upstream_guesses_or_loops_we_record_why(answer, upstream, reason):
    parsed = parse_official_answer(answer)
    assert parsed.scores is None and not parsed.valid
    assert parsed.upstream == upstream
    assert reason in parsed.error
    assert parsed.to_record()["upstream"] == upstream and parsed.to_record()["error"] == parsed.error


def test_non_finite_scores_are_out_of_range():
    assert parse_official_answer('{"score": [NaN, 5]}').out_of_range
    assert parse_official_answer('{"score": [1e400, 5]}').out_of_range
    assert parse_official_answer("{\"score\": [%s, 5]}" % ("9" * 400)).scores[0] == math.inf


def test_repair_pass_rules():
    assert repair_json("{score: 6, reasoning: fine}") == '{"score": [6], "reasoning": "fine"}'
    assert repair_json('{"a": true, "b": NULL}') == '{"a": true, "b": NULL}'   # literals kept, any case
    assert repair_json('{"a": -2.5}') == '{"a": [-2.5]}'
    assert repair_json('{"r": "Time: 5pm"}') == '{"r": """Time": 5pm""}'     # inside strings too, as upstream


def test_non_text_answer_is_a_failure():
    parsed = parse_official_answer(None)
    assert parsed.scores is None and "not text" in parsed.error
