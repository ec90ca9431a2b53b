"""The judge's speed options compute what the plain path computes: the packed vision attention gives the per-window
loop's features, and the static-cache and compiled decoding give the dynamic cache's answers, token for token."""
from __future__ import annotations

import pytest
import torch

from harness.gedit import decode_attention, judge_speed as speed
from harness.gedit.judge import QwenJudge, write_synthetic_judge
from harness.gedit.judge_batching import PROMPT_TOKENS_BOUND
from harness.gedit.judge_speed import reproducibility

from judge_calls import sample_calls

# Patch grids (t, h, w) of five images: 10x14, 4x4, 3x11, 8x8 merged units give full and partial 4x4 windows.
GRIDS = [[1, 20, 28], [1, 8, 8], [1, 6, 22], [1, 16, 16], [1, 20, 28]]


@pytest.fixture(scope="module")
def tiny_qwen():
    from omnigen2_fp8 import synthetic as syn

    return syn.build_qwen2_5_vl("tiny", "cpu", torch.float32, 0, syn.build_qwen_tokenizer())


def test_packed_vision_attention_gives_the_per_window_features(tiny_qwen):
    visual = tiny_qwen.model.visual
    grid = torch.tensor(GRIDS)
    pixels = torch.randn(int(grid.prod(-1).sum()), 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(0))
    keys = list(tiny_qwen.state_dict())
    originals = [block.attn for block in visual.blocks]
    with torch.no_grad():
        reference = visual(pixels, grid_thw=grid).pooler_output
        assert speed.set_vision_attention(tiny_qwen, "packed") == len(visual.blocks)
        try:
            assert all(isinstance(block.attn, speed.PackedVisionAttention) for block in visual.blocks)
            assert list(tiny_qwen.state_dict()) == keys  # same parameters under the same names
            packed = visual(pixels, grid_thw=grid).pooler_output
        finally:
            assert speed.set_vision_attention(tiny_qwen, "per-window") == len(visual.blocks)
    torch.testing.assert_close(packed, reference, rtol=1e-5, atol=1e-6)
    assert [block.attn for block in visual.blocks] == originals


def test_packing_plan_stacks_chunks_of_equal_length():
    cu_seqlens = torch.tensor([0, 64, 96, 160, 176, 208, 272], dtype=torch.int32)  # lengths 64 32 64 16 32 64
    plan = speed._Plan(cu_seqlens)
    assert plan.groups == [(3, 64), (2, 32), (1, 16)]
    expected = [*range(0, 64), *range(96, 160), *range(208, 272), *range(64, 96), *range(176, 208), *range(160, 176)]
    assert plan.order.tolist() == expected
    plans = speed._PackingPlans()
    assert plans.get(cu_seqlens) is plans.get(cu_seqlens)  # one plan per tensor, reused by every block
    assert plans.get(cu_seqlens.clone()) is not plans.get(cu_seqlens)


@pytest.fixture(scope="module")
def judge_folder(tmp_path_factory):
    return str(write_synthetic_judge(tmp_path_factory.mktemp("judge") / "judge-tiny"))


@pytest.fixture(scope="module")
def calls():
    return sample_calls((112, 84, 56))


def answers(judge: QwenJudge, calls) -> list[str]:
    return [a["answer"] for r in judge.run_calls(calls) for a in r.attempts]


def test_fast_paths_give_the_plain_answers_token_for_token(judge_folder, calls):
    judge = QwenJudge.load(judge_folder, device="cpu", batch_size=4, max_new_tokens=8, max_retries=0,
                           vision_attention="per-window", decode="eager")
    plain = answers(judge, calls)
    assert len(set(plain)) > 1  # the answers differ from call to call: a meaningful comparison
    for vision_attention, decode in [("packed", "eager"), ("packed", "static"), ("per-window", "static"),
                                     ("packed", "eager-reproducible")]:
        judge.set_speed(vision_attention, decode)
        assert answers(judge, calls) == plain, (vision_attention, decode)
    # a static cache is kept per (batch size, length) and reset: a second run gives the same answers again
    assert answers(judge, calls) == plain


def test_reproducible_decode_sends_one_token_steps_through_the_grouped_attention_only(judge_folder, calls,
                                                                                      monkeypatch):
    # which attention function each text-attention call uses, by query length: the prefill keeps transformers' SDPA
    # function, decode steps the grouped GEMMs; the vision tower keeps its own name
    judge = QwenJudge.load(judge_folder, device="cpu", batch_size=4, max_new_tokens=4, min_new_tokens=4, max_retries=0)
    seen: list[tuple[int, int]] = []
    real = decode_attention.grouped_decode_attention

    def counting(query, *args):
        seen.append(query.shape[2])
        return real(query, *args)

    monkeypatch.setattr(decode_attention, "grouped_decode_attention", counting)
    judge.set_speed("packed", "eager-reproducible")
    assert judge.settings()["decode"].startswith("eager-reproducible v2")
    text_config = judge.model.model.language_model.config
    assert text_config._attn_implementation == decode_attention.ATTENTION_NAME
    assert judge.model.model.visual.config._attn_implementation == "sdpa"
    judge.generate(judge.prepare(calls[:2]))
    layers = len(judge.model.model.language_model.layers)
    assert seen == [1] * (3 * layers)  # 4 new tokens: 1 from the prefill, 3 decode steps through every layer
    seen.clear()
    judge.set_speed("packed", "eager")  # switching back restores transformers' attention
    assert text_config._attn_implementation == "sdpa" and "decode" not in judge.settings()
    judge.generate(judge.prepare(calls[:2]))
    assert seen == []


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_grouped_decode_attention_is_sdpa_with_repeated_key_value_heads(mask_kind):
    torch.manual_seed(0)
    batch, q_heads, kv_heads, length, dim = 3, 6, 2, 11, 16
    query = torch.randn(batch, q_heads, 1, dim, dtype=torch.float64)
    key, value = (torch.randn(batch, kv_heads, length, dim, dtype=torch.float64) for _ in range(2))
    keep = torch.ones(batch, 1, 1, length, dtype=torch.bool)
    keep[0, ..., :4] = False  # left padding of the first row
    keep[2, ..., :1] = False
    mask = {"none": None, "bool": keep,
            "float": torch.zeros(keep.shape, dtype=torch.float64).masked_fill(~keep, float("-inf"))}[mask_kind]
    got = decode_attention.grouped_decode_attention(query, key, value, mask, scaling=0.3)
    repeat = q_heads // kv_heads  # transformers' repeat_kv: query head h reads key/value head h // repeat
    want = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(repeat, 1), value.repeat_interleave(repeat, 1),
        attn_mask=None if mask is None else keep, scale=0.3).transpose(1, 2)
    assert got.shape == (batch, 1, q_heads, dim)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="one query token"):
        decode_attention.grouped_decode_attention(query.expand(-1, -1, 2, -1), key, value, None, 0.3)


def test_compiled_decode_gives_the_plain_answers(judge_folder, calls):
    # aot_eager traces the decode step through torch.compile (the graph inductor would compile) without code
    # generation, so that a CPU test stays short; batch sizes 3 and 2 go through one dynamic-shape graph
    judge = QwenJudge.load(judge_folder, device="cpu", batch_size=3, max_new_tokens=6, max_retries=0,
                           vision_attention="per-window", decode="eager")
    plain = answers(judge, calls[:5])
    judge.set_speed("packed", "compiled", compile_backend="aot_eager")
    assert answers(judge, calls[:5]) == plain
    assert judge.settings()["compile_backend"] == "aot_eager"


@pytest.mark.gpu
def test_fast_judge_on_cuda_gives_the_plain_answers(judge_folder, calls):
    # the real fast path: inductor code generation and CUDA-graph replay of the decode step (float32: no bf16 noise)
    judge = QwenJudge.load(judge_folder, device="cuda", dtype=torch.float32, batch_size=4, max_new_tokens=8,
                           max_retries=0, vision_attention="per-window", decode="eager")
    plain = answers(judge, calls)
    judge.set_speed("packed", "compiled")
    assert answers(judge, calls) == plain  # compiles, captures
    assert answers(judge, calls) == plain  # replays


@pytest.mark.gpu
def test_reproducible_decode_on_cuda_gives_the_same_tokens_in_every_run(judge_folder, calls):
    # bf16, as the judge runs on a GPU; the grouped decode attention must give bitwise the same answers run after run
    judge = QwenJudge.load(judge_folder, device="cuda", batch_size=6, max_new_tokens=16, max_retries=0,
                           decode="eager-reproducible")
    first = answers(judge, calls)
    assert all(answers(judge, calls) == first for _ in range(3))


def test_speed_options_are_recorded_in_the_settings_and_checked(judge_folder):
    judge = QwenJudge.load(judge_folder, device="cpu", max_new_tokens=4)
    assert (judge.speed.vision_attention, judge.speed.decode) == ("packed", "eager-reproducible")  # the defaults
    assert judge.settings()["vision_attention"].startswith("packed v1")
    assert judge.settings()["decode"].startswith("eager-reproducible v2")
    judge.set_speed("per-window", "eager")  # the plain path records what judges recorded before the options
    assert not {"vision_attention", "decode", "compile_backend"} & set(judge.settings())
    judge.set_speed("packed", "compiled")
    assert judge.settings()["decode"].startswith("compiled v1") and "compile_backend" not in judge.settings()
    assert speed.resolve_modes(None, None) == ("packed", "eager-reproducible")  # same everywhere, no compiling
    with pytest.raises(speed.JudgeSpeedError, match="unknown judge decode mode 'graphs': use one of eager, eager-reproducible"):
        speed.resolve_modes("packed", "graphs")
    with pytest.raises(speed.JudgeSpeedError, match="vision attention 'flash'"):
        QwenJudge.load(judge_folder, device="cpu", vision_attention="flash")


def test_static_cache_length_is_the_prompt_bound_unless_a_prompt_is_longer():
    assert speed.cache_tokens(700, 128) == speed.cache_tokens(1133, 128) == PROMPT_TOKENS_BOUND + 128
    assert speed.cache_tokens(PROMPT_TOKENS_BOUND + 1, 512) == PROMPT_TOKENS_BOUND + speed.CACHE_ROUNDING + 512


def test_throughput_benchmark_dry_run_compares_the_variants(tmp_path):
    import json

    from benchmarks.judge_throughput import main

    out = tmp_path / "judge.json"
    assert main(["--size", "tiny", "--device", "cpu", "--batch-sizes", "2", "--first-variant-batch-sizes",
                 "--variants", "packed-vision", "plain", "--new-tokens", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {row["variant"]: row for row in result["sweep"]}
    assert set(rows) == {"packed-vision", "plain"} and all(r["samples_per_s"] > 0 for r in rows.values())
    assert rows["plain"]["answers_vs"]["packed-vision"]["identical_share"] == 1.0
    assert [v["vision_attention"] for v in result["vision_tower"]] == ["packed", "per-window"]
    assert result["vision_tower"][1]["max_abs_difference"] < 1e-5 < result["vision_tower"][1]["max_abs_feature"]
    assert result["best"]["variant"] in rows and "running" not in result


def test_reproducibility_statement_names_the_cause_and_the_fix_on_gpus():
    fast = reproducibility("eager", "cuda:1", served=False)
    assert "not bitwise reproducible" in fast and "--judge-decode eager-reproducible" in fast
    assert reproducibility("eager-reproducible", "cuda", served=False).startswith("the same judgements")
    assert "server" in reproducibility("eager", "cuda", served=True)


def test_determinism_benchmark_dry_run_reports_equal_runs_and_compares_files(tmp_path, capsys):
    import json

    from benchmarks.judge_determinism import main

    files = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, decode in zip(files, ("eager", "eager-reproducible")):
        assert main(["--size", "tiny", "--device", "cpu", "--samples", "2", "--batch-size", "2", "--new-tokens", "3",
                     "--decode", decode, "--json", str(path)]) == 0
    first, second = (json.loads(f.read_text()) for f in files)
    assert (first["decode"], second["decode"]) == ("eager", "eager-reproducible")
    repeat = first["conditions"]["repeat"]  # on a CPU every run is bitwise the same
    assert repeat["batches_bitwise_equal_to_first"] == 2 and repeat["rows_with_ids_equal_to_first"] == 4
    assert all(len(row) == 3 for batch in first["conditions"]["first"]["ids"] for row in batch)
    capsys.readouterr()
    assert main(["--compare", *map(str, files)]) == 0
    assert "4/4 rows equal" in capsys.readouterr().out  # the math decode attention gives the CPU's tokens too
