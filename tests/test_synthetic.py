"""Synthetic checkpoints: offline tokenizer/processor, tiny Qwen2.5-VL folders, full-size configs as released."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from omnigen2_fp8 import loading, synthetic


def test_tokenizer_encodes_any_text_and_keeps_special_tokens_whole():
    tok = synthetic.build_qwen_tokenizer(words=["score"])
    text = "héllo score <|im_start|>日本"
    ids = tok(text).input_ids
    assert tok.decode(ids) == text
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 1
    assert tok.convert_tokens_to_ids("score") in ids
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"


def test_tokenizer_can_use_the_real_qwen_special_token_ids():
    tok = synthetic.build_qwen_tokenizer(qwen_ids=True)
    for token, real_id in synthetic.QWEN_SPECIAL_TOKEN_IDS.items():
        assert tok.convert_tokens_to_ids(token) == real_id


def test_chat_template_is_the_qwen_format():
    tok = synthetic.build_qwen_tokenizer()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "rate it"}]}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|image_pad|><|vision_end|>rate it<|im_end|>\n<|im_start|>assistant\n")
    system = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert tok.apply_chat_template(system, tokenize=False) == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"


def test_tiny_qwen_folder_loads_with_transformers_and_sees_images(tmp_path):
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    folder = synthetic.write_tiny_qwen2_5_vl(tmp_path / "judge", vocab=["score"], seed=3)
    assert json.loads((folder / loading.SYNTHETIC_MARKER).read_text())["synthetic"] is True
    assert loading.read_synthetic_marker(folder)["seed"] == 3
    tok = AutoTokenizer.from_pretrained(folder)
    image_processor = AutoImageProcessor.from_pretrained(folder)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder)
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert tok.convert_tokens_to_ids("score") < model.config.text_config.vocab_size

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8))
    pixels = image_processor(images=[image], return_tensors="pt")
    n_tokens = int(pixels["image_grid_thw"].prod()) // image_processor.merge_size**2
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe"}]}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = tok([text.replace("<|image_pad|>", "<|image_pad|>" * n_tokens)], return_tensors="pt")
    with torch.no_grad():
        with_image = model(**inputs, pixel_values=pixels["pixel_values"], image_grid_thw=pixels["image_grid_thw"])
        other = image_processor(images=[Image.new("RGB", (90, 60))], return_tensors="pt")
        other_image = model(**inputs, pixel_values=other["pixel_values"], image_grid_thw=other["image_grid_thw"])
    # The image reaches the language model: a different image changes the logits.
    assert not torch.allclose(with_image.logits, other_image.logits)


def test_full_size_configs_are_the_released_ones():
    config = synthetic.qwen2_5_vl_config("full", synthetic.build_qwen_tokenizer(qwen_ids=True))
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads,
            text.intermediate_size, text.vocab_size) == (2048, 36, 16, 2, 11008, 151936)
    assert text.rope_parameters["mrope_section"] == [16, 24, 24]
    assert (vision.depth, vision.hidden_size, vision.out_hidden_size, vision.fullatt_block_indexes) == (
        32, 1280, 2048, [7, 15, 23, 31])
    assert config.image_token_id == 151655 and config.tie_word_embeddings
    vae = synthetic.vae_config("full")
    assert vae["block_out_channels"] == [128, 256, 512, 512] and vae["latent_channels"] == 16
    assert (vae["scaling_factor"], vae["shift_factor"], vae["use_quant_conv"]) == (0.3611, 0.1159, False)


def test_full_config_follows_the_tokenizer_token_ids():
    # Compact ids fit any vocabulary, so the full config accepts them and follows the tokenizer's ids.
    tok = synthetic.build_qwen_tokenizer()
    config = synthetic.qwen2_5_vl_config("full", tok)
    assert config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")


def test_tiny_vae_keeps_the_8x_downscale():
    vae = synthetic.build_vae("tiny", seed=0)
    with torch.no_grad():
        latents = vae.encode(torch.zeros(1, 3, 32, 48)).latent_dist.mean
    assert latents.shape == (1, 16, 4, 6)


def test_unknown_size_is_refused():
    with pytest.raises(ValueError, match="tiny"):
        synthetic.vae_config("huge")


def test_full_size_models_have_the_released_parameter_counts():
    # Built on the meta device: shapes only, no memory, so the full configs are checked in seconds.
    dit = synthetic.build_transformer("full", "meta", torch.bfloat16)
    assert sum(p.numel() for p in dit.parameters()) == 3_967_161_400 and len(dit.state_dict()) == 582
    mllm = synthetic.build_qwen2_5_vl("full", "meta", torch.bfloat16,
                                      tokenizer=synthetic.build_qwen_tokenizer(qwen_ids=True))
    assert sum(p.numel() for p in mllm.parameters()) == 3_754_622_976  # Qwen2.5-VL-3B, tied embeddings
    assert mllm.dtype == torch.bfloat16
    vae = synthetic.build_vae("full", "meta", torch.bfloat16)
    assert sum(p.numel() for p in vae.parameters()) == 83_819_683  # FLUX.1 VAE


def test_building_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = synthetic.build_vae("tiny", seed=5)
    after = torch.rand(1)
    b = synthetic.build_vae("tiny", seed=5)
    assert torch.equal(before, after)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_command_line_writes_a_marked_checkpoint(tmp_path):
    assert synthetic.main([str(tmp_path / "ckpt"), "--size", "tiny", "--seed", "2"]) == 0
    marker = loading.read_synthetic_marker(tmp_path / "ckpt")
    assert marker["size"] == "tiny" and marker["seed"] == 2
    assert (tmp_path / "ckpt" / "transformer" / "config.json").is_file()
