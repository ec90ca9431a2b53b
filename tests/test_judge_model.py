"""The Qwen2.5-VL judge on tiny random checkpoints: batching, retries, failures recorded without scores."""
from __future__ import annotations

import pytest

from harness.gedit.data import synthetic_image
from harness.gedit.judge import QwenJudge, judge_calls_for_sample, write_synthetic_judge
from harness.gedit.judge_prompts import PROJECT_RUBRIC


@pytest.fixture(scope="module")
def calls():
    out = []
    for i in range(3):  # SC calls carry two images, PQ calls one: mixed in one left-padded batch
        out += judge_calls_for_sample(f"s{i}", synthetic_image(i, 56), synthetic_image(i + 7, 56), "Add a hat.",
                                      PROJECT_RUBRIC)
    return out


def test_garbage_answers_are_retried_then_counted_as_failures(tmp_path, calls):
    from omnigen2_fp8.synthetic import write_tiny_qwen2_5_vl

    folder = write_tiny_qwen2_5_vl(tmp_path / "garbage-judge", seed=3)  # byte vocabulary: answers never parse
    judge = QwenJudge.load(str(folder), device="cpu", batch_size=4, max_new_tokens=6, max_retries=2, seed=11)
    results = judge.run_calls(calls)
    assert [r.call_id for r in results] == [c.call_id for c in calls]
    for r in results:
        assert r.status == "parse_failure" and r.score is None
        assert [a["sample_seed"] for a in r.attempts] == [None, 12, 13]
        assert all(a["parse"]["error"] for a in r.attempts)
    again = judge.run_calls(calls)  # greedy and seeded retries: the same answers again
    assert [a["answer"] for r in again for a in r.attempts] == [a["answer"] for r in results for a in r.attempts]


def test_tiny_score_judge_answers_parse(tmp_path, calls):
    # one token: a tiny judge repeats "[a, b]" words, and a run of pairs is not an answer the official rules read
    judge = QwenJudge.load(str(write_synthetic_judge(tmp_path / "judge")), device="cpu", batch_size=4,
                           max_new_tokens=1)
    assert judge.describe()["synthetic"]
    results = judge.run_calls(calls)
    assert all(r.status == "ok" and r.score == min(r.scores) for r in results)
    assert all(0 <= s <= 10 for r in results for s in r.scores)


def test_full_synthetic_judge_has_the_7b_shapes():
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from harness.gedit.judge import qwen2_5_vl_7b_config
    from omnigen2_fp8.synthetic import build_qwen_tokenizer

    config = qwen2_5_vl_7b_config(build_qwen_tokenizer(qwen_ids=True))
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params - 8.292e9) < 0.005e9  # Qwen2.5-VL-7B-Instruct: 8.29e9 parameters
    assert model.lm_head.weight.shape == (152064, 3584)


def test_full_synthetic_judge_is_built_on_its_device_without_a_cpu_copy():
    from harness.gedit.judge import build_full_synthetic_judge

    judge = build_full_synthetic_judge("meta")  # a device that holds no data: any CPU tensor would show
    placed = {t.device.type for t in (*judge.model.parameters(), *judge.model.buffers())}
    assert placed == {"meta"} and judge.describe()["synthetic"] == {"size": "full", "seed": 0}


@pytest.mark.gpu
def test_tiny_judge_on_cuda_uses_the_official_preprocessing(tmp_path, calls):
    import torch

    # the official resize is qwen-vl-utils' (a declared dependency, which needs torchvision); a machine without
    # them cannot show that path, and the judge's fallback is tested on the CPU
    pytest.importorskip("qwen_vl_utils", reason="qwen-vl-utils (with torchvision) is not installed")

    judge = QwenJudge.load(str(write_synthetic_judge(tmp_path / "judge")), device="cuda", batch_size=4,
                           max_new_tokens=1)
    assert judge.model.dtype == torch.bfloat16
    assert judge.describe()["vision_preprocessing"].startswith("qwen_vl_utils.process_vision_info")
    results = judge.run_calls(calls)
    assert len(results) == len(calls) and all(r.attempts[0]["answer"] for r in results)
