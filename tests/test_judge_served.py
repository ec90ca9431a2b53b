"""The served judge end to end against a real HTTP server on 127.0.0.1 (tests/openai_standin.py): request contents,
transport retries with bounded back-off, failures counted (never scored), parse retries, concurrency, start-up
errors; and the judge stage (`python -m harness.gedit --judge-url`) on the tiny synthetic run."""
from __future__ import annotations

import json
import random

import pytest

from harness.gedit.data import synthetic_image
from harness.gedit.judge import JudgeCall, JudgeError, judge_calls_for_sample
from harness.gedit.judge_prompts import PROJECT_RUBRIC
from harness.gedit.served_judge import ServedJudge, backoff_seconds
from openai_standin import FINGERPRINT, MODEL, OpenAIStandIn, Reply

GOOD = '{"score": [7, 8], "reasoning": "fine"}'
FAST = dict(backoff_base_s=0.01, backoff_cap_s=0.02, timeout_s=5.0)  # keeps every retry test well under a second


def one_call(text: str, size=(40, 30)) -> JudgeCall:
    return JudgeCall(f"id-{text}", [synthetic_image(1, 48).resize(size)], text)


def test_requests_carry_the_protocol_and_answers_are_scored():
    calls = []
    for i, size in enumerate([(64, 48), (32, 56)]):
        source, edit = synthetic_image(i, 64).resize(size), synthetic_image(i + 5, 64).resize((size[0] + 2, size[1]))
        calls += judge_calls_for_sample(f"s{i}", source, edit, "Add a hat.", PROJECT_RUBRIC)
    with OpenAIStandIn(default=Reply.answer(GOOD)) as server:
        judge = ServedJudge(server.url, MODEL, max_new_tokens=96, **FAST)
        results = judge.run_calls(calls)
    assert [r.call_id for r in results] == [c.call_id for c in calls]
    assert all(r.status == "ok" and r.scores == [7.0, 8.0] and r.score == 7.0 for r in results)
    probe, *judged = server.received
    assert probe["max_tokens"] == 1 and probe["image_sizes"] == []
    # lossless PNGs, images in call order within each request (requests run concurrently: they arrive in any order)
    assert sorted(r["image_sizes"] for r in judged) == sorted([im.size for im in c.images] for c in calls)
    assert all(r["model"] == MODEL and r["temperature"] == 0.0 and r["max_tokens"] == 96 and r["seed"] is None
               for r in judged)
    assert {r["text"] for r in judged} == {c.prompt for c in calls}
    assert judge.settings()["served_model"] == MODEL and judge.describe()["system_fingerprints"] == [FINGERPRINT]
    attempt = results[0].attempts[0]
    assert (attempt["served_model"], attempt["system_fingerprint"], attempt["transport_errors"]) == (MODEL, FINGERPRINT, [])


def test_429_500_garbage_and_truncated_bodies_are_retried_until_an_answer():
    script = {"flaky": [Reply.error(429), Reply.error(500), Reply.garbage(), Reply.truncated(), Reply.answer(GOOD)]}
    with OpenAIStandIn(script) as server:
        judge = ServedJudge(server.url, MODEL, transport_retries=4, **FAST)
        [result] = judge.run_calls([one_call("flaky")])
    assert result.status == "ok" and result.score == 7.0
    errors = result.attempts[0]["transport_errors"]
    assert len(errors) == 4 and errors[0].startswith("HTTP 429") and errors[1].startswith("HTTP 500")
    assert len(server.requests_for("flaky")) == 5
    assert judge.last_run_stats["transport_retries"] == 4 and judge.last_run_stats["transport_failures"] == 0


def test_a_server_that_never_answers_makes_a_counted_failure_not_a_score():
    script = {"down": [Reply.error(503)], "refused": [Reply.error(400, "image too large")]}
    with OpenAIStandIn(script, default=Reply.answer(GOOD)) as server:
        judge = ServedJudge(server.url, MODEL, transport_retries=2, **FAST)
        down, refused, fine = judge.run_calls([one_call("down"), one_call("refused"), one_call("fine")])
    assert (down.status, down.score, down.scores) == ("transport_failure", None, None)
    assert len(down.attempts) == 1 and len(down.attempts[0]["transport_errors"]) == 3  # 1 + 2 retries, no resampling
    assert len(server.requests_for("down")) == 3
    assert refused.status == "transport_failure" and len(server.requests_for("refused")) == 1  # 400: not retried
    assert "image too large" in refused.attempts[0]["transport_errors"][0]
    assert fine.status == "ok"
    assert judge.last_run_stats["transport_failures"] == 2


def test_unparseable_answers_are_asked_again_with_the_protocols_seeded_sampling():
    script = {"vague": [Reply.answer("I would rather not say."), Reply.answer('{"score": [7,'), Reply.answer("[6, 9]")],
              "never": [Reply.answer("no idea")], "high": [Reply.answer("[11, 3]")]}
    with OpenAIStandIn(script) as server:
        judge = ServedJudge(server.url, MODEL, max_retries=2, seed=40, **FAST)
        vague, never, high = judge.run_calls([one_call("vague"), one_call("never"), one_call("high")])
    assert vague.status == "ok" and vague.scores == [6.0, 9.0] and len(vague.attempts) == 3
    sent = server.requests_for("vague")
    assert [(r["temperature"], r["top_p"], r["seed"]) for r in sent] == [(0.0, None, None), (0.7, 0.9, 41),
                                                                        (0.7, 0.9, 42)]
    assert never.status == "parse_failure" and never.score is None and len(never.attempts) == 3
    assert high.status == "out_of_range" and high.score is None and high.scores == [11.0, 3.0]


def test_a_request_past_its_timeout_is_retried():
    script = {"slow": [Reply.slow(GOOD, delay_s=2.0), Reply.answer('{"score": [5, 6]}')]}
    with OpenAIStandIn(script) as server:
        judge = ServedJudge(server.url, MODEL, backoff_base_s=0.01, backoff_cap_s=0.02, timeout_s=0.3)
        [result] = judge.run_calls([one_call("slow")])
    assert result.status == "ok" and result.scores == [5.0, 6.0]
    assert "Timeout" in result.attempts[0]["transport_errors"][0]


def test_concurrency_bounds_the_requests_in_flight():
    calls = [one_call(f"c{i}") for i in range(10)]
    with OpenAIStandIn(default=Reply.slow(GOOD, delay_s=0.15)) as server:
        judge = ServedJudge(server.url, MODEL, concurrency=3, **FAST)
        results = judge.run_calls(calls)
    assert all(r.status == "ok" for r in results)
    assert server.max_in_flight == 3


def test_backoff_doubles_with_jitter_and_is_capped():
    rng = random.Random(0)
    waits = [backoff_seconds(r, 1.0, 5.0, rng) for r in range(1, 7)]
    assert all(base <= w <= 1.25 * base for w, base in zip(waits, [1, 2, 4, 5, 5, 5]))


def test_start_up_errors_name_the_fix(monkeypatch):
    with OpenAIStandIn() as server:
        with pytest.raises(JudgeError, match="--judge-model"):
            ServedJudge(server.url, "no-such-model")
        url = server.url
    with pytest.raises(JudgeError, match="--judge-url"):  # nothing listens there any more
        ServedJudge(url, MODEL)
    monkeypatch.delenv("STANDIN_KEY", raising=False)
    with pytest.raises(JudgeError, match="STANDIN_KEY"):
        ServedJudge(url, MODEL, api_key_env="STANDIN_KEY")


# ------------------------------------------------------------------------------------------------ the judge stage
def test_judge_stage_through_a_server(tmp_path, monkeypatch, capsys):
    from harness.core.records import read_jsonl
    from harness.gedit.__main__ import main

    monkeypatch.setenv("STANDIN_KEY", "sk-test")
    base = ["--synthetic", "tiny", "--per-task", "1", "--tasks", "color_alter", "text_change", "--precision", "bf16",
            "--device", "cpu", "--no-progress", "--bootstrap", "50", "--out", str(tmp_path)]
    assert main([*base, "--stage", "generate"]) == 0
    with OpenAIStandIn(default=Reply.answer(GOOD)) as server:
        served = ["--judge-url", server.url, "--judge-model", MODEL, "--judge-api-key-env", "STANDIN_KEY",
                  "--judge-concurrency", "2"]
        assert main([*base, *served]) == 0
    recs = list(read_jsonl(tmp_path / "judgements.jsonl"))
    assert len(recs) == 2 and all(r["status"] == "ok" and r["sc"]["score"] == 7.0 for r in recs)
    assert all(r["judge"]["model"] == MODEL and r["judge"]["settings"]["served_model"] == MODEL for r in recs)
    judged = [r for r in server.received if r["image_sizes"]]
    assert sorted(len(r["image_sizes"]) for r in judged) == [1, 1, 2, 2]  # SC: source + edit, PQ: edit
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(h["Q_SC"], h["Q_PQ"]) for h in summary["headline"]] == [(7.0, 7.0)]
    run = list(read_jsonl(tmp_path / "judge_runs.jsonl"))[-1]
    assert run["requests"] == 4 and run["settings"]["system_fingerprints"] == [FINGERPRINT]

    # Resume: the same served model judges only what is missing; another one behind the same name is refused.
    (tmp_path / "judgements.jsonl").write_text(json.dumps(recs[0]) + "\n")
    judge_only = [*base, "--stage", "judge", "--judge-model", MODEL, "--judge-api-key-env", "STANDIN_KEY"]
    with OpenAIStandIn(default=Reply.answer(GOOD), reports_model=f"{MODEL}-2026-01-01") as other:
        assert main([*judge_only, "--judge-url", other.url]) == 2
    assert "served_model" in capsys.readouterr().err
    assert len(list(read_jsonl(tmp_path / "judgements.jsonl"))) == 1
    with OpenAIStandIn(default=Reply.answer(GOOD)) as same:
        assert main([*judge_only, "--judge-url", same.url]) == 0
    assert len(list(read_jsonl(tmp_path / "judgements.jsonl"))) == 2
    assert len([r for r in same.received if r["image_sizes"]]) == 2  # one sample: its SC and PQ calls
