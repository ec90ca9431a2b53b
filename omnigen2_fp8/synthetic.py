"""Random-weight OmniGen2 checkpoints: tiny ones written to disk in the official formats, full-size ones in memory.

Nothing here is a trained model. Every folder written gets a `SYNTHETIC.json` marker at its root, and the pipeline
carries `synthetic=True` from it into every output, so no number measured on random weights can pass for a real one.

The full-size configs below are facts about the released models (OmniGen2 DiT, Qwen2.5-VL-3B-Instruct, FLUX.1 VAE):
with them, speed and memory measured on random weights are those of the real model (values do not change the work
a GEMM does). Tokenizers are built offline: a byte-level BPE with no merges (every UTF-8 text encodes, one token per
byte) plus the Qwen special tokens, so chat templates and the Qwen2-VL image processor work as with the real files.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
from pathlib import Path
from typing import Iterator, Sequence

import torch

from .checkpoints import Components, save_transformer
from .loading import mark_synthetic
from .pipeline import OmniGen2Pipeline
from .transformer import OmniGen2Transformer, TransformerConfig

SIZES = ("tiny", "full")

# Qwen2 special tokens (real ids in Qwen2.5-VL: <|endoftext|> 151643 ... <|video_pad|> 151656).
QWEN_SPECIAL_TOKEN_IDS = {
    "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
    "<|object_ref_start|>": 151646, "<|object_ref_end|>": 151647, "<|box_start|>": 151648, "<|box_end|>": 151649,
    "<|quad_start|>": 151650, "<|quad_end|>": 151651, "<|vision_start|>": 151652, "<|vision_end|>": 151653,
    "<|vision_pad|>": 151654, "<|image_pad|>": 151655, "<|video_pad|>": 151656,
}

# Qwen2.5-VL-3B-Instruct (the OmniGen2 mllm/): text model and vision tower, as released.
QWEN2_5_VL_3B_TEXT = dict(
    vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
    num_key_value_heads=2, hidden_act="silu", max_position_embeddings=128000, rms_norm_eps=1e-6,
    rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}, rope_theta=1000000.0,
    use_sliding_window=False, sliding_window=32768, max_window_layers=70, attention_dropout=0.0,
    bos_token_id=151643, eos_token_id=151645,
)
QWEN2_5_VL_3B_VISION = dict(
    depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3, out_hidden_size=2048,
    patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu",
)
QWEN2_5_VL_3B_TIE_WORD_EMBEDDINGS = True

# Tiny Qwen2.5-VL: same structure, sizes for seconds on a CPU (head_dim 16, mrope sections sum to 16/2).
QWEN_TINY_TEXT = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    hidden_act="silu", max_position_embeddings=4096, rms_norm_eps=1e-6,
    rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, rope_theta=1000000.0,
    use_sliding_window=False, sliding_window=4096, max_window_layers=2, attention_dropout=0.0,
)
QWEN_TINY_VISION = dict(
    depth=2, hidden_size=32, intermediate_size=64, num_heads=2, in_channels=3, out_hidden_size=64,
    patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
    fullatt_block_indexes=[1], tokens_per_second=2, hidden_act="silu",
)

# Qwen2-VL image processor settings of the released processor/ (pixels in [min, max], CLIP mean/std).
QWEN_IMAGE_PROCESSOR = dict(
    min_pixels=3136, max_pixels=12845056, patch_size=14, temporal_patch_size=2, merge_size=2,
    image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
)
# Tiny: at most 64*56*56 pixels reach the tiny vision tower, so a CPU test stays fast.
QWEN_TINY_IMAGE_MAX_PIXELS = 56 * 56 * 4

# FLUX.1 VAE (the OmniGen2 vae/): diffusers AutoencoderKL as released.
FLUX_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=16, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, act_fn="silu",
    norm_num_groups=32, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159, force_upcast=True,
    use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True,
)
# Tiny VAE: four blocks keep the 8x downscale of the real one.
TINY_VAE = dict(FLUX_VAE, block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=4, sample_size=64)

# The OmniGen2 scheduler/ config: flow matching, Euler, resolution-dependent time shift.
SCHEDULER_CONFIG = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000,
                    "dynamic_time_shift": True}

MODEL_INDEX = {
    "_class_name": "OmniGen2Pipeline",
    "mllm": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
    "processor": ["transformers", "Qwen2_5_VLProcessor"],
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "transformer": ["omnigen2_fp8", "OmniGen2Transformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

# Qwen chat format: default system turn when none is given, images as vision_start/image_pad/vision_end.
QWEN_CHAT_TEMPLATE = (
    "{% if not messages or messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'video' or 'video' in item %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in item %}{{ item['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _check_size(size: str) -> None:
    if size not in SIZES:
        raise ValueError(f"unknown synthetic size {size!r}; use one of {SIZES}")


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer and processor


def build_qwen_tokenizer(words: Sequence[str] = (), qwen_ids: bool = False):
    """A Qwen2 fast tokenizer built offline: byte-level BPE without merges + Qwen special tokens + chat template.

    `words`: extra whole-word tokens (e.g. what a tiny judge should be able to emit as single tokens); they get
    the ids after the special tokens. `qwen_ids=True` places the special tokens at their real Qwen ids (151643...),
    so a full-size model keeps the released token-id layout; otherwise they follow the 256 byte tokens.
    Returns a `transformers.Qwen2Tokenizer`.
    """
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    vocab = {symbol: i for i, symbol in enumerate(sorted(ByteLevel.alphabet()))}
    specials = list(QWEN_SPECIAL_TOKEN_IDS)
    for i, token in enumerate(specials):
        vocab[token] = QWEN_SPECIAL_TOKEN_IDS[token] if qwen_ids else 256 + i
    next_id = max(vocab.values()) + 1
    for word in words:
        if word not in vocab:
            vocab[word] = next_id
            next_id += 1
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token="<|endoftext|>", eos_token="<|im_end|>",
                               pad_token="<|endoftext|>", model_max_length=32768)
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    # Words are whole tokens only if the tokenizer matches them before byte splitting.
    tokenizer.add_tokens([w for w in words], special_tokens=False)
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def build_qwen_image_processor(size: str = "full"):
    """The Qwen2-VL image processor (PIL backend, no torchvision needed) with the released settings."""
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as processor
    except ImportError:  # transformers releases without the separate PIL backend: there it is the default class
        from transformers import Qwen2VLImageProcessor as processor

    _check_size(size)
    settings = dict(QWEN_IMAGE_PROCESSOR)
    if size == "tiny":
        settings["max_pixels"] = QWEN_TINY_IMAGE_MAX_PIXELS
    return processor(**settings)


def write_qwen_processor(folder: str | os.PathLike, tokenizer, image_processor) -> Path:
    """Write a processor folder in the layout of the released `processor/` (tokenizer files, preprocessor_config.json,
    chat template, processor_config.json naming Qwen2_5_VLProcessor).

    Written piece by piece because building a `Qwen2_5_VLProcessor` object needs torchvision (its video processor);
    `AutoProcessor.from_pretrained(folder)` loads it where torchvision is installed, `AutoTokenizer` /
    `AutoImageProcessor` load it everywhere.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    _write_json(folder / "processor_config.json", {"processor_class": "Qwen2_5_VLProcessor"})
    config = json.loads((folder / "preprocessor_config.json").read_text())
    config["processor_class"] = "Qwen2_5_VLProcessor"
    _write_json(folder / "preprocessor_config.json", config)
    return folder


# ---------------------------------------------------------------------------------------------------------------
# Model configs and builders


def qwen2_5_vl_config(size: str, tokenizer=None, text_hidden_size: int | None = None):
    """`Qwen2_5_VLConfig` for "full" (Qwen2.5-VL-3B) or "tiny"; token ids follow `tokenizer` when given.

    `text_hidden_size` overrides the tiny text width (it must equal the DiT's text_feat_dim).
    """
    from transformers import Qwen2_5_VLConfig

    _check_size(size)
    if size == "full":
        text, vision, tie = dict(QWEN2_5_VL_3B_TEXT), dict(QWEN2_5_VL_3B_VISION), QWEN2_5_VL_3B_TIE_WORD_EMBEDDINGS
    else:
        text, vision, tie = copy.deepcopy(QWEN_TINY_TEXT), dict(QWEN_TINY_VISION), False
        if text_hidden_size is not None:
            text["hidden_size"] = text_hidden_size
            text["intermediate_size"] = 2 * text_hidden_size
        vision["out_hidden_size"] = text["hidden_size"]
    ids = {name: QWEN_SPECIAL_TOKEN_IDS[token] for name, token in _CONFIG_TOKENS.items()}
    if tokenizer is not None:
        ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in _CONFIG_TOKENS.items()}
        if size == "tiny":
            text["vocab_size"] = _round_up(len(tokenizer), 64)
        elif len(tokenizer) > text["vocab_size"] or max(ids.values()) >= text["vocab_size"]:
            raise ValueError(f"the tokenizer ({len(tokenizer)} tokens) does not fit the Qwen2.5-VL-3B vocabulary "
                             f"of {text['vocab_size']}; build it with build_qwen_tokenizer(qwen_ids=True)")
    text["bos_token_id"], text["eos_token_id"] = ids.pop("bos_token_id"), ids.pop("eos_token_id")
    text["pad_token_id"] = text["bos_token_id"]
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tie, **ids)


_CONFIG_TOKENS = {
    "image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>",
    "bos_token_id": "<|endoftext|>", "eos_token_id": "<|im_end|>",
}


@contextlib.contextmanager
def _building_on(device: str | torch.device, dtype: torch.dtype, seed: int) -> Iterator[None]:
    """Construct modules straight on `device` in `dtype` (no CPU copy, no fp32 detour), seeded nn default init."""
    previous = torch.get_default_dtype()
    device = torch.device(device)
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):  # seed the init without touching the caller's RNG state
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            with device:
                yield
        finally:
            torch.set_default_dtype(previous)


def build_qwen2_5_vl(size: str = "tiny", device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                     seed: int = 0, tokenizer=None, text_hidden_size: int | None = None):
    """A random-weight `Qwen2_5_VLForConditionalGeneration`, built directly on `device` (fast on a GPU)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    config = qwen2_5_vl_config(size, tokenizer, text_hidden_size)
    with _building_on(device, dtype, seed):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    return model.eval()


def vae_config(size: str) -> dict:
    """AutoencoderKL kwargs: the FLUX.1 VAE ("full") or a tiny one with the same 8x downscale."""
    _check_size(size)
    return copy.deepcopy(FLUX_VAE if size == "full" else TINY_VAE)


def build_vae(size: str = "tiny", device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
              seed: int = 0):
    """A random-weight diffusers `AutoencoderKL`, built directly on `device`."""
    from diffusers import AutoencoderKL

    with _building_on(device, dtype, seed):
        vae = AutoencoderKL(**vae_config(size))
    return vae.eval()


def transformer_config(size: str):
    """The OmniGen2 DiT config as shipped ("full") or the project's tiny preset."""
    _check_size(size)
    return TransformerConfig.from_name("omnigen2" if size == "full" else "tiny")


def build_transformer(size: str = "tiny", device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                      seed: int = 0):
    """A random-weight OmniGen2 DiT built directly on `device` (nn default init)."""
    config = transformer_config(size)
    with _building_on(device, dtype, seed):
        model = OmniGen2Transformer(config)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# Folders and pipelines


def write_tiny_qwen2_5_vl(folder: str | os.PathLike, vocab: Sequence[str] = (), seed: int = 0, size: str = "tiny",
                          text_hidden_size: int | None = None, processor_folder: str | os.PathLike | None = None) -> Path:
    """Write a random-weight Qwen2.5-VL checkpoint folder loadable with transformers, processor files included.

    folder: gets config.json + model.safetensors (save_pretrained) and, unless `processor_folder` is given, the
    tokenizer / image-processor / chat-template files beside them (so `AutoProcessor.from_pretrained(folder)`
    works where torchvision is installed, and `AutoTokenizer` / `AutoImageProcessor` work everywhere).
    vocab: extra whole-word tokens for the tokenizer (see `build_qwen_tokenizer`).
    size: "tiny" (seconds on a CPU) or "full" (Qwen2.5-VL-3B shapes: 7.5 GB in float32, slow on a CPU).
    Marks the folder synthetic. Returns `folder`.
    """
    folder = Path(folder)
    tokenizer = build_qwen_tokenizer(vocab, qwen_ids=(size == "full"))
    model = build_qwen2_5_vl(size, "cpu", torch.float32, seed, tokenizer, text_hidden_size)
    model.save_pretrained(folder)
    write_qwen_processor(processor_folder if processor_folder is not None else folder, tokenizer,
                         build_qwen_image_processor(size))
    mark_synthetic(folder, size=size, seed=seed, what="random-weight Qwen2.5-VL")
    return folder


def write_synthetic_checkpoint(folder: str | os.PathLike, size: str = "tiny", seed: int = 0,
                               device: str | torch.device = "cpu") -> Path:
    """Write a complete random-weight OmniGen2 checkpoint in the official layout.

    Layout: model_index.json, transformer/ (config.json + diffusion_pytorch_model*.safetensors), vae/ (diffusers
    AutoencoderKL), mllm/ (transformers Qwen2_5_VLForConditionalGeneration), processor/ (tokenizer + Qwen2-VL
    image processor + chat template), scheduler/scheduler_config.json, and SYNTHETIC.json saying it is synthetic.
    size: "tiny" (about a second on a CPU, a few MB) or "full" (the released shapes: about 31 GB in float32;
    weights are written in bfloat16 for "full" to halve that). device: where the random weights are made (a GPU
    makes the full-size init take seconds instead of minutes); the files are the same format either way.
    """
    _check_size(size)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = torch.float32 if size == "tiny" else torch.bfloat16
    transformer = build_transformer(size, device, dtype, seed)
    save_transformer(transformer, folder / "transformer")
    text_dim = transformer.config.text_feat_dim
    del transformer
    build_vae(size, device, dtype, seed + 1).save_pretrained(folder / "vae")
    tokenizer = build_qwen_tokenizer(qwen_ids=(size == "full"))
    mllm = build_qwen2_5_vl(size, device, dtype, seed + 2, tokenizer, text_hidden_size=text_dim)
    mllm.save_pretrained(folder / "mllm")
    del mllm
    write_qwen_processor(folder / "processor", tokenizer, build_qwen_image_processor(size))
    (folder / "scheduler").mkdir(exist_ok=True)
    _write_json(folder / "scheduler" / "scheduler_config.json", SCHEDULER_CONFIG)
    _write_json(folder / "model_index.json", MODEL_INDEX)
    mark_synthetic(folder, size=size, seed=seed, what="random-weight OmniGen2 checkpoint")
    return folder


def build_components(size: str = "full", device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16,
                     seed: int = 0, home: str | torch.device | None = None) -> Components:
    """Random-weight VAE, Qwen2.5-VL and tokenizer as `checkpoints.Components` (nothing on disk), marked synthetic.

    Each model is built on `device` (fast init on a GPU) and then moved to `home` (default: `device`), so with
    home="cpu" the device never holds more than one of them. Seeds: VAE seed + 1, MLLM seed + 2 (the DiT, built
    by `build_transformer`, takes `seed`).
    """
    _check_size(size)
    home = device if home is None else home
    tokenizer = build_qwen_tokenizer(qwen_ids=(size == "full"))
    vae = build_vae(size, device, dtype, seed + 1).to(home)
    mllm = build_qwen2_5_vl(size, device, dtype, seed + 2, tokenizer,
                            text_hidden_size=transformer_config(size).text_feat_dim).to(home)
    return Components(vae=vae, mllm=mllm, tokenizer=tokenizer, scheduler_config=dict(SCHEDULER_CONFIG),
                      synthetic_info={"size": size, "seed": seed, "what": "random-weight models built in memory"})


def build_synthetic_pipeline(size: str = "full", device: str | torch.device = "cuda",
                             dtype: torch.dtype = torch.bfloat16, seed: int = 0, **pipeline_kwargs):
    """An `OmniGen2Pipeline` of random-weight models built directly in `device` memory (nothing on disk).

    size "full": OmniGen2 DiT as shipped + Qwen2.5-VL-3B + FLUX.1 VAE (about 8 + 7.5 + 0.17 GB in bf16);
    seconds on a GPU. The pipeline's results say synthetic=True. `pipeline_kwargs` go to `OmniGen2Pipeline`
    (e.g. precision="fp8", offload=True, compile=True).
    """
    _check_size(size)
    # With offload, each model is still built on the device (fast init) and parked on the CPU right away,
    # so the device never holds more than one of them.
    home = "cpu" if pipeline_kwargs.get("offload") else device
    transformer = build_transformer(size, device, dtype, seed).to(home)
    components = build_components(size, device, dtype, seed, home=home)
    return OmniGen2Pipeline.from_components(components, transformer, device=device, dtype=dtype, **pipeline_kwargs)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def main(argv: Sequence[str] | None = None) -> int:
    """python -m omnigen2_fp8.synthetic OUT [--size tiny|full] [--seed N] [--device cuda]: write a checkpoint."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m omnigen2_fp8.synthetic",
                                     description="Write a random-weight OmniGen2 checkpoint in the official layout "
                                                 "(marked synthetic).")
    parser.add_argument("out", type=Path, help="folder to write")
    parser.add_argument("--size", choices=SIZES, default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where to make the weights (cuda is much faster for full)")
    args = parser.parse_args(argv)
    folder = write_synthetic_checkpoint(args.out, size=args.size, seed=args.seed, device=args.device)
    print(f"wrote a synthetic ({args.size}) OmniGen2 checkpoint to {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
