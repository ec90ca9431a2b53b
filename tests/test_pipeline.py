"""The edit pipeline end to end on a tiny synthetic checkpoint written in the official layout (CPU, seconds)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import PIL.Image
import pytest
import torch

from omnigen2_fp8 import loading, synthetic
from omnigen2_fp8.checkpoints import load_transformer
from omnigen2_fp8.fp8.attention import fp8_attention_cores
from omnigen2_fp8.image_processing import ImageInputError
from omnigen2_fp8.loading import CheckpointNotFoundError
from omnigen2_fp8.measure import StageClock
from omnigen2_fp8.pipeline import STAGES, OmniGen2Pipeline
from omnigen2_fp8.text_encoder import SYSTEM_PROMPT, chat_text


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return synthetic.write_synthetic_checkpoint(tmp_path_factory.mktemp("omnigen2-tiny"), size="tiny", seed=0)


@pytest.fixture(scope="module")
def pipe(checkpoint):
    return OmniGen2Pipeline.from_pretrained(checkpoint, dtype=torch.float32, device="cpu", progress=False)


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(70, 100), (48, 48)]):
        path = folder / f"in{i}.png"
        PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _edit(pipe, images, **kwargs):
    settings = dict(num_inference_steps=2, text_guidance_scale=5.0, image_guidance_scale=1.5, seed=7)
    return pipe("make the sky green", images, **{**settings, **kwargs})


def test_checkpoint_has_the_official_layout_and_says_it_is_synthetic(checkpoint):
    for name in ("model_index.json", "transformer/config.json", "vae/config.json", "mllm/config.json",
                 "processor/tokenizer_config.json", "processor/preprocessor_config.json",
                 "scheduler/scheduler_config.json"):
        assert (checkpoint / name).is_file(), name
    assert json.loads((checkpoint / "transformer" / "config.json").read_text())["_class_name"] == \
        "OmniGen2Transformer2DModel"
    assert json.loads((checkpoint / loading.SYNTHETIC_MARKER).read_text())["synthetic"] is True


def test_edit_runs_every_stage_and_carries_the_synthetic_flag(pipe, image_paths, tmp_path):
    assert _edit(pipe, [image_paths[0]]).stage_seconds is None  # nothing measured unless a clock is passed
    result = _edit(pipe, [image_paths[0]], clock=StageClock("cpu"))
    assert result.synthetic and result.synthetic_info["size"] == "tiny"
    assert list(result.stage_seconds) == [*STAGES, "postprocess"]
    assert all(s >= 0 for s in result.stage_seconds.values())
    assert result.peak_vram_bytes is None  # CPU run: no VRAM to report
    record = result.to_record()
    assert record["synthetic"] is True and json.dumps(record)
    saved = result.save(tmp_path / "out.png")
    with PIL.Image.open(saved) as image:
        assert "synthetic" in image.text and json.loads(image.text["omnigen2_fp8"])["synthetic"] is True


def test_same_seed_same_image_other_seed_other_image(pipe, image_paths):
    first = _edit(pipe, [image_paths[0]])
    again = _edit(pipe, [image_paths[0]])
    other = _edit(pipe, [image_paths[0]], seed=8)
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    assert not torch.equal(first.latents, other.latents)


def test_output_size_follows_one_reference_else_the_request(pipe, image_paths):
    one = _edit(pipe, [image_paths[0]])
    assert one.image.size == (96, 64) and one.settings["generation_size"] == [96, 64]
    two = _edit(pipe, image_paths, width=80, height=48)
    assert two.image.size == (80, 48) and two.settings["reference_sizes"] == [[96, 64], [48, 48]]
    none = _edit(pipe, [], width=40, height=72)
    assert none.image.size == (40, 72) and none.settings["generation_size"] == [32, 64]  # floored to 16, resized


def test_guidance_branches_per_step(pipe, image_paths):
    assert _edit(pipe, [image_paths[0]], num_inference_steps=3).transformer_calls == 9  # 3 branches
    assert _edit(pipe, [image_paths[0]], image_guidance_scale=1.0).transformer_calls == 4  # text CFG only
    assert _edit(pipe, [], image_guidance_scale=2.0).transformer_calls == 4  # no refs: 2 branches
    assert _edit(pipe, [image_paths[0]], text_guidance_scale=1.0).transformer_calls == 2
    assert _edit(pipe, [image_paths[0]], num_inference_steps=4, cfg_range=(0.0, 0.5)).transformer_calls == 3 * 3 + 1


def test_negative_prompt_and_fixed_shift_change_the_result(pipe, image_paths):
    base = _edit(pipe, [image_paths[0]])
    assert not torch.equal(base.latents, _edit(pipe, [image_paths[0]], negative_prompt="blurry").latents)
    shifted = _edit(pipe, [image_paths[0]], time_shift=3.0)
    assert shifted.settings["time_shift"] == 3.0 and not torch.equal(base.latents, shifted.latents)


def test_text_features_are_the_mllm_last_hidden_state_of_the_chat_template(pipe):
    text = chat_text(pipe.tokenizer, "make it red")
    assert text.startswith(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nmake it red")
    assert not text.rstrip().endswith("assistant")
    embeds = pipe.encode_prompt("make it red", "", need_negative=True)
    tokens = pipe.tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        hidden = pipe.mllm(**tokens, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(embeds.prompt, hidden)
    assert embeds.negative.shape[1] < embeds.prompt.shape[1]


def test_posterior_sample_is_seeded_and_the_mean_is_deterministic(pipe, image_paths):
    image = PIL.Image.open(image_paths[0]).convert("RGB")
    sample = lambda seed: pipe.encode_images([image], torch.Generator().manual_seed(seed))[0]
    assert torch.equal(sample(1), sample(1)) and not torch.equal(sample(1), sample(2))
    mean = lambda seed: pipe.encode_images([image], torch.Generator().manual_seed(seed), sample_posterior=False)[0]
    assert torch.equal(mean(1), mean(2))


def test_stage_hook_wraps_each_stage_in_order(pipe, image_paths):
    import contextlib

    seen = []

    @contextlib.contextmanager
    def hook(name):
        seen.append(("enter", name))
        yield
        seen.append(("exit", name))

    _edit(pipe, [image_paths[0]], stage_hook=hook)
    assert [n for e, n in seen if e == "enter"] == [*STAGES, "postprocess"]
    assert seen[0] == ("enter", "text_encode") and seen[1] == ("exit", "text_encode")


def test_call_hook_wraps_each_transformer_call_with_its_branch_and_step(pipe, image_paths):
    import contextlib

    seen, depth = [], []

    @contextlib.contextmanager
    def hook(branch, step):
        seen.append((branch, step))
        depth.append(pipe._transformer_calls)  # the call is counted inside the hook, so it wraps exactly one call
        yield

    result = _edit(pipe, [image_paths[0]], call_hook=hook, text_guidance_scale=5.0, image_guidance_scale=1.5)
    assert seen == [(branch, step) for step in range(2) for branch in ("cond", "ref", "uncond")]
    assert len(seen) == result.transformer_calls and depth == list(range(len(seen)))


def test_offload_gives_the_same_image(checkpoint, pipe, image_paths):
    offloaded = OmniGen2Pipeline.from_pretrained(checkpoint, dtype=torch.float32, device="cpu", offload=True,
                                                 progress=False)
    assert torch.equal(_edit(offloaded, [image_paths[0]]).latents, _edit(pipe, [image_paths[0]]).latents)


def test_bad_inputs_get_clear_errors(pipe, image_paths, tmp_path):
    with pytest.raises(ValueError, match="at most 5"):
        _edit(pipe, [image_paths[1]] * 6)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _edit(pipe, [tmp_path / "missing.png"])
    tiny = tmp_path / "tiny.png"
    PIL.Image.new("RGB", (8, 8)).save(tiny)
    with pytest.raises(ImageInputError, match="too small"):
        _edit(pipe, [tiny])
    with pytest.raises(ValueError, match="text guidance"):
        _edit(pipe, [image_paths[0]], text_guidance_scale=0.0)
    with pytest.raises(ValueError, match="num_inference_steps"):
        _edit(pipe, [image_paths[0]], num_inference_steps=0)


def test_missing_component_is_named(checkpoint, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(CheckpointNotFoundError, match=r"vae/"):
        OmniGen2Pipeline.from_pretrained(broken, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="precision"):
        OmniGen2Pipeline.from_pretrained(checkpoint, dtype=torch.float32, device="cpu", precision="int4")


def test_fp8_precision_quantizes_the_dit_and_serialized_fp8_folders_load_as_is(checkpoint, pipe, image_paths,
                                                                              tmp_path):
    from omnigen2_fp8.fp8 import Fp8Linear, save_fp8_checkpoint

    fp8 = OmniGen2Pipeline.from_pretrained(checkpoint, dtype=torch.float32, device="cpu", precision="fp8",
                                           progress=False)
    assert fp8.fp8_report is not None and len(fp8.fp8_report.quantized) > 0
    assert any(isinstance(m, Fp8Linear) for m in fp8.transformer.modules())
    result = _edit(fp8, [image_paths[0]])
    assert result.settings["precision"] == "fp8" and result.synthetic and result.settings["attention"] == "bf16"
    reference = _edit(pipe, [image_paths[0]])
    # e4m3 weights and activations: close to the full-precision run, not equal to it.
    err = (result.latents - reference.latents).abs().max() / reference.latents.abs().max()
    assert 0 < err < 0.2

    serialized = tmp_path / "fp8-checkpoint"
    shutil.copytree(checkpoint, serialized)
    shutil.rmtree(serialized / "transformer")
    save_fp8_checkpoint(fp8.transformer, serialized / "transformer")
    loaded = OmniGen2Pipeline.from_pretrained(serialized, dtype=torch.float32, device="cpu", precision="fp8",
                                              progress=False)
    assert loaded.fp8_report is None  # already FP8: loaded, not re-quantized
    torch.testing.assert_close(_edit(loaded, [image_paths[0]]).latents, result.latents)


def test_an_fp8_checkpoint_runs_only_under_the_precision_it_was_made_with(checkpoint, tmp_path):
    """A serialized FP8 DiT runs what it was quantized with: a BF16 recipe, FP8 attention it does not have, or
    another layer policy would label results with settings the model does not run. The steps kept out of FP8
    attention are a run-time choice and apply to the loaded model."""
    from omnigen2_fp8.fp8 import Fp8Config, quantize_fp8, save_fp8_checkpoint

    serialized = tmp_path / "fp8-attention-checkpoint"
    shutil.copytree(checkpoint, serialized)
    shutil.rmtree(serialized / "transformer")
    transformer = load_transformer(checkpoint / "transformer", dtype=torch.float32)
    quantize_fp8(transformer, Fp8Config(attention="fp8"))
    save_fp8_checkpoint(transformer, serialized / "transformer")

    def load(precision):
        return OmniGen2Pipeline.from_pretrained(serialized, dtype=torch.float32, device="cpu", precision=precision,
                                                progress=False)

    for precision, words in (("bf16", "would label FP8 results as bf16"),
                             ("fp8", "attention: checkpoint 'fp8', asked 'bf16'"),
                             ("fp8-nopad+fp8attn", "misaligned: checkpoint 'pad', asked 'reference'")):
        with pytest.raises(ValueError, match=words) as err:
            load(precision)
        assert "'fp8+fp8attn'" in str(err.value)  # the precision that would run it
    pipe = load("fp8+fp8attn:exclude_steps=0:2")
    assert pipe.fp8_report is None and pipe.fp8_config.attention_exclude_steps == ("0:2",)
    assert pipe.transformer.fp8_attention_steps.exclude == ("0:2",)
    assert pipe.transformer.fp8_config.attention_exclude_steps == ("0:2",)  # a re-save keeps what it runs
    assert all(core.steps is pipe.transformer.fp8_attention_steps
               for core in fp8_attention_cores(pipe.transformer).values())
    # Refused from config.json alone, before any tensor is read: without the weights the answer is the same.
    for weights in (serialized / "transformer").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ValueError, match="would label FP8 results as bf16"):
        load("bf16")


def test_fp8_options_with_a_recipe_that_quantizes_nothing_are_refused(pipe):
    from omnigen2_fp8.fp8 import Fp8Config

    parts = dict(vae=pipe.vae, scheduler=pipe.scheduler, mllm=pipe.mllm, tokenizer=pipe.tokenizer, device="cpu",
                 dtype=torch.float32, progress=False)
    with pytest.raises(ValueError, match="fp8_config and fp8_kernel given, but precision 'bf16' quantizes nothing"):
        OmniGen2Pipeline(pipe.transformer, precision="bf16", fp8_config=Fp8Config(), fp8_kernel="auto", **parts)
    with pytest.raises(ValueError, match=r"fp8_kernel given, but precision 'bf16\+teacache' quantizes nothing"):
        OmniGen2Pipeline(pipe.transformer, precision="bf16+teacache", fp8_kernel="torch-reference", **parts)
