"""How judge calls become batches: per-call encoding collated like the processor's batch, length ordering, the batch
size from the GPU's capacity (not what other processes leave free), batch fingerprints, background preparation; and
the in-process judge's settings as the stage records them."""
from __future__ import annotations

import re
import threading
import time

import pytest
import torch

from harness.gedit import judge_batching as batching
from harness.gedit.judge import QwenJudge, qwen2_5_vl_7b_config, write_synthetic_judge

from judge_calls import sample_calls


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    folder = write_synthetic_judge(tmp_path_factory.mktemp("judge") / "judge-tiny")
    return QwenJudge.load(str(folder), device="cpu", max_new_tokens=4, max_retries=1)


@pytest.fixture(scope="module")
def calls():
    return sample_calls((56, 84, 28))


def test_collated_calls_equal_the_batch_encoding_of_the_same_calls(judge, calls):
    encoded = judge.prepare(calls)
    batch = batching.collate_left_padded(encoded, judge.tokenizer.pad_token_id)
    # Reference: the whole batch encoded at once, as the processor does it (texts padded on the left together).
    texts, images = [], []
    for c in calls:
        conv = [{"role": "user", "content": [*({"type": "image", "image": im} for im in c.images),
                                             {"type": "text", "text": c.prompt}]}]
        texts.append(judge.tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True))
        images += c.images
    vision = judge.image_processor(images=images, return_tensors="pt")
    counts = iter(int(t.prod()) // judge.image_processor.merge_size ** 2 for t in vision["image_grid_thw"])
    texts = [re.sub(re.escape("<|image_pad|>"), lambda _: "<|image_pad|>" * next(counts), t) for t in texts]
    ref = judge.tokenizer(texts, padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], ref["input_ids"])
    assert torch.equal(batch["attention_mask"], ref["attention_mask"])
    assert torch.equal(batch["pixel_values"], vision["pixel_values"])
    assert torch.equal(batch["image_grid_thw"], vision["image_grid_thw"])


def test_batches_are_ordered_by_prompt_length_with_call_order_breaking_ties(judge, calls):
    encoded = judge.prepare(calls)
    batches = batching.length_ordered_batches(encoded, 4)
    flat = [e for b in batches for e in b]
    assert [len(b) for b in batches] == [4, 2]
    assert [(e.n_tokens, e.index) for e in flat] == sorted((e.n_tokens, e.index) for e in encoded)
    assert {e.call_id.split("#")[1] for e in batches[0][:3]} == {"pq"}  # one image: the shorter prompts first


def test_judgements_are_reproducible_and_follow_the_batch_size(judge, calls):
    first = judge.run_calls(calls)
    assert [r.call_id for r in first] == [c.call_id for c in calls]
    assert [a["answer"] for r in judge.run_calls(calls) for a in r.attempts] == \
           [a["answer"] for r in first for a in r.attempts]
    assert judge.settings()["batch_size"] == batching.CPU_BATCH_SIZE
    assert judge.settings()["ordering"] == batching.ORDERING and judge.settings()["attention"] == "sdpa"
    assert judge.last_run_stats["batches"] >= 2 and judge.last_run_stats["new_tokens"] > 0


def test_batch_size_from_free_memory_is_a_capped_power_of_two():
    text = qwen2_5_vl_7b_config_text()
    assert batching.kv_bytes_per_token(text, torch.bfloat16) == 2 * 28 * 4 * 128 * 2  # 56 KiB per token
    per_call = (1536 + 512) * 57344 + 1536 * (3 * 18944 + 6 * 3584) * 2
    assert batching.batch_size_for_memory(120 * 2**30, text, torch.bfloat16, 512) == batching.AUTO_BATCH_CAP == 256
    assert batching.batch_size_for_memory(62 * 2**30, text, torch.bfloat16, 512) == 128  # an 80 GB card, 7B loaded
    assert batching.batch_size_for_memory(int(20.5 * per_call / 0.85), text, torch.bfloat16, 512) == 16
    assert batching.batch_size_for_memory(per_call // 2, text, torch.bfloat16, 512) == 1
    assert batching.auto_batch_size("cpu", text, torch.bfloat16, 512) == (batching.CPU_BATCH_SIZE, "auto: 4 on a CPU")


def test_batch_size_does_not_depend_on_memory_other_processes_hold(caplog):
    text = qwen2_5_vl_7b_config_text()
    per_call = (1536 + 64) * 57344 + 1536 * (3 * 18944 + 6 * 3584) * 2
    total, own = 40 * 2**30, 16 * 2**30  # a 40 GiB GPU holding the 7B judge's weights
    alone = batching.batch_size_for_device(total, own, total - own, text, torch.bfloat16, 64)
    # Another rank's process-group buffers (or another process) take 2 GiB: the same batch, so the same judgements,
    # where sizing from free memory would have halved it.
    others = 2 * 2**30
    assert batching.batch_size_for_device(total, own, total - own - others, text, torch.bfloat16, 64) == alone
    assert alone[0] == 64 and "capacity" in alone[1]
    assert batching.batch_size_for_memory(total - own - others, text, torch.bfloat16, 64) == 32
    # Only a device too full for that batch gets a smaller one, with a warning naming the fix.
    crowded = batching.batch_size_for_device(total, own, 10 * per_call, text, torch.bfloat16, 64)
    assert crowded[0] == 8 and "other processes" in crowded[1] and "--batch-size" in caplog.text


def test_batch_fingerprint_names_calls_order_padding_and_tokens(judge, calls):
    encoded = judge.prepare(calls)
    batch = batching.length_ordered_batches(encoded, 4)[0]
    fingerprint = batching.batch_fingerprint(batch, attempt=0)
    assert fingerprint["calls"] == [e.call_id for e in batch] and fingerprint["attempt"] == 0
    assert fingerprint["padded_tokens"] == batching.collate_left_padded(batch, 0)["input_ids"].shape[1]
    again = batching.length_ordered_batches(judge.prepare(calls), 4)[0]  # encoding the calls again: same inputs
    assert batching.batch_fingerprint(again, 0) == fingerprint
    assert batching.batch_fingerprint(batch[::-1], 0)["inputs_sha256"] != fingerprint["inputs_sha256"]
    for key, change in (("input_ids", 1), ("pixel_values", 2.0**-20)):  # one token, or one pixel value by a hair
        tensors = [{**e.tensors} for e in batch]
        tensors[0][key] = tensors[0][key].clone()
        tensors[0][key].view(-1)[-1] += change
        changed = [batching.EncodedCall(e.index, e.call_id, t) for e, t in zip(batch, tensors)]
        assert batching.batch_fingerprint(changed, 0)["inputs_sha256"] != fingerprint["inputs_sha256"], key
    judge.run_calls(calls)  # the judge records one fingerprint per model batch it ran, retries included
    plan = judge.last_run_stats["batch_plan"]
    assert len(plan) == judge.last_run_stats["batches"]
    assert sorted(c for p in plan if p["attempt"] == 0 for c in p["calls"]) == sorted(c.call_id for c in calls)


def qwen2_5_vl_7b_config_text():
    from omnigen2_fp8.synthetic import build_qwen_tokenizer

    return qwen2_5_vl_7b_config(build_qwen_tokenizer(qwen_ids=True)).text_config


def test_background_preparation_keeps_order_runs_ahead_and_raises_where_it_failed():
    main_thread = threading.get_ident()
    seen = []

    def prepare(item):
        seen.append((item, threading.get_ident() != main_thread))
        if item == 3:
            raise ValueError("broken image 3")
        return item * 10

    out = []
    with pytest.raises(ValueError, match="broken image 3"):
        for item, prepared in batching.prepared_in_background(range(5), prepare):
            if item == 0:
                deadline = time.monotonic() + 5
                while len(seen) < 2 and time.monotonic() < deadline:  # the worker prepares item 1 meanwhile
                    time.sleep(0.01)
                assert len(seen) >= 2
            out.append((item, prepared))
    assert out == [(0, 0), (1, 10), (2, 20)]
    assert all(on_worker for _, on_worker in seen) and 4 not in [i for i, _ in seen]
