"""A local Qwen2.5-VL judge for GEdit-Bench: batched calls, answer parsing, bounded retries, failures counted.

Per sample two calls: SC sees [source, edited] and the instruction, PQ sees [edited]; each answer should carry two
0-10 scores. Decoding is greedy with 512 new tokens and the checkpoint's generation config left active (as the
official Qwen judge does). Answers are read by the official rules (`harness.gedit.answers`). An answer that cannot
be read, or holds a score outside 0-10, is asked again up to `max_retries` times with seeded sampling (temperature
RETRY_TEMPERATURE, seed = base seed + attempt; the official protocols use 0 retries); if every attempt fails the
call is a judge failure: it is recorded with all raw answers and the reason, excluded from the means, never given
an invented score.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import re
import tempfile
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch

from harness.gedit import judge_batching as batching
from harness.gedit.answers import ParsedAnswer, parse_official_answer
from harness.gedit.judge_prompts import PromptSet
from harness.gedit.judge_speed import COMPILE_BACKEND, JudgeSpeed

RETRY_TEMPERATURE = 0.7
RETRY_TOP_P = 0.9
ATTENTION = "sdpa"  # PyTorch's fused attention: FlashAttention-2 is not a dependency, eager is slower

# Qwen2.5-VL-7B-Instruct where it differs from the 3B (for a full-size random judge only); mrope sections
# [16, 24, 24] and rope theta 1e6 are the same in both.
QWEN2_5_VL_7B_TEXT = dict(
    vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
    num_key_value_heads=4, max_window_layers=28,
)
QWEN2_5_VL_7B_VISION_OUT = 3584
# What a tiny random judge may emit as single tokens, so that a few of its (meaningless) answers parse.
# Whole "[a, b]" pairs are single tokens, so a random choice of tokens is sometimes a parseable answer.
TINY_JUDGE_WORDS = (*[f"[{a}, {b}]" for a in range(11) for b in range(11)], "{", "}", '"score": ', ", ",
                    '"reasoning": "random"', "7", "x")
TINY_JUDGE_LOGIT_GAIN = 2.0


class JudgeError(RuntimeError):
    """The judge model or its processor cannot be loaded or run; the message says the fix."""


# ------------------------------------------------------------------------------------------------------ parsing
def parse_judge_answer(text: str) -> ParsedAnswer:
    """Read the scores of one answer by the official GEdit-Bench rules (`harness.gedit.answers`): upstream's score
    wherever upstream has a definite one, else no scores and the reason. Range is NOT checked here (see
    `ParsedAnswer.out_of_range`)."""
    return parse_official_answer(text)


# -------------------------------------------------------------------------------------------------- call records
@dataclasses.dataclass
class JudgeCall:
    """One request: `images` (PIL, in order) before `prompt`, in one user turn. `call_id` is free-form."""

    call_id: str
    images: list
    prompt: str


@dataclasses.dataclass
class CallResult:
    """Outcome of one call after retries. status: "ok" | "parse_failure" | "out_of_range"."""

    call_id: str
    status: str
    scores: list[float] | None
    score: float | None  # min(scores) when ok: the official per-call reduction
    attempts: list[dict]

    def to_record(self) -> dict:
        return dataclasses.asdict(self)


def finish_call(call_id: str, attempts: list[dict]) -> CallResult:
    """Status and score of a call from its attempts (each has "parse": ParsedAnswer.to_record())."""
    last = attempts[-1]["parse"]
    for attempt in attempts:
        parse = attempt["parse"]
        if parse["scores"] is not None and not parse["out_of_range"]:
            return CallResult(call_id, "ok", parse["scores"], min(parse["scores"]), attempts)
    status = "out_of_range" if last["scores"] is not None else "parse_failure"
    return CallResult(call_id, status, last["scores"], None, attempts)


# --------------------------------------------------------------------------------------------------------- judge
class Judge(Protocol):
    """What the judge stage needs from a judge, in process (`QwenJudge`) or behind an HTTP API
    (`harness.gedit.served_judge.ServedJudge`); the stage never branches on which one it has.

    chunk_samples: samples per unit of work: the stage judges the selection in chunks of this many (arm, sample)
        pairs, deals whole chunks to ranks and appends a chunk's judgements together.
    settings(): what decides the judgements (model, decoding, batching...): judgements made with other
        ones are not resumed into the same run.
    describe(): settings() plus what was observed (device, served model ids, fingerprints), recorded per chunk.
    prepare(calls): the CPU work for `calls` (images to model or request inputs); thread-safe against judge(), so
        the stage runs it on a worker thread one chunk ahead.
    judge(prepared, progress): one CallResult per call, in call order, after the protocol's retries; never raises
        for a bad answer or an unreachable server (those become failed calls).
    last_run_stats: counts of the last judge() (new tokens, requests, transport retries) for judge_runs.jsonl.
    """

    chunk_samples: int
    last_run_stats: dict

    def settings(self) -> dict: ...

    def describe(self) -> dict: ...

    def prepare(self, calls: Sequence[JudgeCall]) -> Any: ...

    def judge(self, prepared: Any, progress=None) -> list[CallResult]: ...


class QwenJudge:
    """Qwen2.5-VL judge through transformers: calls encoded one by one, ordered by prompt length, left-padded into
    batches of `batch_size` (from the GPU's capacity beside the weights unless given), SDPA attention, greedy
    first, seeded retries. `vision_attention` and `decode` are the speed options of `harness.gedit.judge_speed`
    (None: the default); they join the settings.

    Vision preprocessing uses `qwen_vl_utils.process_vision_info` (the official resize) when it imports, and the
    checkpoint's `AutoProcessor` when torchvision allows it; otherwise the images go straight to the Qwen2-VL image
    processor and image tokens are expanded by the processor's rule. `self.preprocessing` records which path ran.
    """

    def __init__(self, model, tokenizer, image_processor, processor=None, *, model_id: str, device: str,
                 batch_size: int | None = None, max_new_tokens: int = 512, min_new_tokens: int = 0,
                 max_retries: int = 2, seed: int = 0, synthetic: dict | None = None,
                 batch_cap: int = batching.AUTO_BATCH_CAP, vision_attention: str | None = None,
                 decode: str | None = None, compile_backend: str = COMPILE_BACKEND):
        self.model, self.tokenizer, self.image_processor, self.processor = model, tokenizer, image_processor, processor
        self.model_id, self.device = model_id, device
        self.max_new_tokens, self.min_new_tokens = max_new_tokens, min_new_tokens
        self.max_retries, self.seed, self.synthetic = max_retries, seed, synthetic
        self.last_run_stats: dict = {"new_tokens": 0}
        self.set_speed(vision_attention, decode, compile_backend)
        self.tokenizer.padding_side = "left"
        # Decoding runs on the caller's thread while prepare() encodes on a worker: each gets its own tokenizer.
        self._decoder = copy.deepcopy(tokenizer)
        self._process_vision_info = _import_process_vision_info()
        self.preprocessing = " + ".join(
            (["qwen_vl_utils.process_vision_info"] if self._process_vision_info is not None else [])
            + (["AutoProcessor"] if processor is not None else
               ["fallback: Qwen2-VL image processor + image-token expansion (torchvision missing)"]))
        if batch_size is None:
            batch_size, self.batch_size_source = batching.auto_batch_size(
                device, model.config.text_config, model.dtype, max_new_tokens, cap=batch_cap)
        else:
            self.batch_size_source = "given"
        self.batch_size = batch_size

    @property
    def chunk_samples(self) -> int:
        return self.batch_size  # 2 * batch_size calls: one batch of the short PQ calls, one of the long SC calls

    @classmethod
    def load(cls, model_path: str, device: str = "cuda", dtype: torch.dtype | None = None, **kwargs) -> "QwenJudge":
        """Load a Qwen2.5-VL checkpoint (hub id or folder) in bf16 on CUDA, fp32 on CPU unless `dtype` is given."""
        from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        dtype = dtype or (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
        try:
            # device_map places weights straight on the GPU (no CPU copy of 16 GB first)
            placement = {"device_map": device} if str(device).startswith("cuda") else {}
            model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_path, dtype=dtype, attn_implementation=ATTENTION,
                                                                       **placement)
            model = model.to(device).eval()
            tokenizer = AutoTokenizer.from_pretrained(model_path)
            image_processor = AutoImageProcessor.from_pretrained(model_path)
        except OSError as err:
            raise JudgeError(f"cannot load the judge {model_path!r}: {err}. Pass --judge with a local "
                             "Qwen2.5-VL-7B-Instruct folder or hub id, or --synthetic tiny for a random test judge") from err
        try:
            processor = AutoProcessor.from_pretrained(model_path)
            processor.tokenizer.padding_side = "left"
            tokenizer = processor.tokenizer
        except ImportError:  # AutoProcessor needs torchvision for Qwen's video processor
            processor = None
        kwargs.setdefault("synthetic", _synthetic_marker(model_path))
        return cls(model, tokenizer, image_processor, processor, model_id=str(model_path), device=device, **kwargs)

    def settings(self) -> dict:
        """Everything that decides the answers: a resume with any of it changed is a settings change."""
        gen = self.model.generation_config
        return {"kind": "in-process", "model": self.model_id, "dtype": str(self.model.dtype).replace("torch.", ""),
                "attention": self.model.config._attn_implementation, "batch_size": self.batch_size,
                "ordering": batching.ORDERING, "max_new_tokens": self.max_new_tokens,
                **({"min_new_tokens": self.min_new_tokens} if self.min_new_tokens else {}),
                "decoding": "greedy", "max_retries": self.max_retries,
                "retry": {"temperature": RETRY_TEMPERATURE, "top_p": RETRY_TOP_P, "seed": f"{self.seed} + attempt"},
                "repetition_penalty": getattr(gen, "repetition_penalty", None),
                "vision_preprocessing": self.preprocessing, "synthetic": self.synthetic or False,
                **self.speed.settings()}

    def describe(self) -> dict:
        return {**self.settings(), "device": self.device, "batch_size_source": self.batch_size_source}

    def set_speed(self, vision_attention: str | None = None, decode: str | None = None,
                  compile_backend: str = COMPILE_BACKEND) -> None:
        """Switch the speed options (None: the default), e.g. to compare them on one loaded model."""
        self.speed = JudgeSpeed(self.model, self.device, vision_attention, decode, compile_backend)

    # ---- inputs
    def prepare(self, calls: Sequence[JudgeCall]) -> list[batching.EncodedCall]:
        """Each call tokenized with its images preprocessed, unpadded (CPU work; safe on a worker thread)."""
        return [batching.EncodedCall(i, call.call_id, self._encode_one(call)) for i, call in enumerate(calls)]

    def _encode_one(self, call: JudgeCall) -> dict[str, torch.Tensor]:
        conversation = [{"role": "user", "content": [*({"type": "image", "image": im} for im in call.images),
                                                     {"type": "text", "text": call.prompt}]}]
        text = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        images = [im.convert("RGB") for im in call.images]
        if self._process_vision_info is not None:
            images, _ = self._process_vision_info([conversation])
        if self.processor is not None:
            return dict(self.processor(text=[text], images=images or None, return_tensors="pt"))
        vision = dict(self.image_processor(images=images, return_tensors="pt")) if images else {}
        merge = self.image_processor.merge_size ** 2
        counts = iter([int(thw.prod()) // merge for thw in vision.get("image_grid_thw", [])])
        pad = "<|image_pad|>"
        # Each image placeholder becomes one token per merged patch (the Qwen2-VL processor's rule).
        text = re.sub(re.escape(pad), lambda _: pad * next(counts), text)
        enc = dict(self.tokenizer([text], return_tensors="pt"))
        image_id = self.tokenizer.convert_tokens_to_ids(pad)
        enc["mm_token_type_ids"] = (enc["input_ids"] == image_id).to(torch.int32)
        return {**enc, **vision}

    # ---- one batch of raw generations
    def generate(self, batch: Sequence[batching.EncodedCall], sample_seed: int | None = None) -> list[str]:
        """Answers (decoded new tokens) for one batch of encoded calls; greedy when sample_seed is None. Stops when
        every sequence has ended (EOS) or after max_new_tokens."""
        return self.decode_answers(self.generate_ids(batch, sample_seed))

    def generate_ids(self, batch: Sequence[batching.EncodedCall], sample_seed: int | None = None) -> torch.Tensor:
        """The new token ids of `generate` (batch, new tokens) on the CPU, padded after an answer's end."""
        inputs = batching.collate_left_padded(batch, self.tokenizer.pad_token_id)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "min_new_tokens": self.min_new_tokens or None}
        if sample_seed is None:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            torch.manual_seed(sample_seed)
            kwargs.update(do_sample=True, temperature=RETRY_TEMPERATURE, top_p=RETRY_TOP_P, top_k=None)
        with self.speed.no_grad():
            kwargs.update(self.speed.generate_kwargs(len(batch), inputs["input_ids"].shape[1], self.max_new_tokens))
            out = self.model.generate(**inputs, **kwargs)
        new_tokens = out[:, inputs["input_ids"].shape[1]:].cpu()
        pad = self.tokenizer.pad_token_id
        self.last_run_stats["new_tokens"] += int((new_tokens != pad).sum()) if pad is not None else new_tokens.numel()
        return new_tokens

    def decode_answers(self, new_tokens: torch.Tensor) -> list[str]:
        """Answer texts of `generate_ids`' rows."""
        return self._decoder.batch_decode(new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    # ---- calls with retries
    def judge(self, prepared: Sequence[batching.EncodedCall], progress=None) -> list[CallResult]:
        """Judge the calls prepare() encoded: greedy in length-ordered batches, then up to
        max_retries seeded resamples of the failed ones, batched by the same rule."""
        encoded = list(prepared)
        attempts: dict[int, list[dict]] = {e.index: [] for e in encoded}
        self.last_run_stats = {"new_tokens": 0, "batches": 0, "batch_plan": []}
        pending = encoded
        for attempt in range(self.max_retries + 1):
            seed = None if attempt == 0 else self.seed + attempt
            for batch in batching.length_ordered_batches(pending, self.batch_size):
                self.last_run_stats["batches"] += 1
                # what the model is fed, so runs with other world sizes can be checked batch by batch
                self.last_run_stats["batch_plan"].append(batching.batch_fingerprint(batch, attempt))
                for e, answer in zip(batch, self.generate(batch, sample_seed=seed)):
                    attempts[e.index].append({"attempt": attempt, "answer": answer, "sample_seed": seed,
                                              "parse": parse_judge_answer(answer).to_record()})
                if progress is not None and attempt == 0:
                    progress.update(len(batch))
            pending = [e for e in pending if not _valid(attempts[e.index][-1])]
            if not pending:
                break
        return [finish_call(e.call_id, attempts[e.index]) for e in encoded]

    def run_calls(self, calls: Sequence[JudgeCall], progress=None) -> list[CallResult]:
        """judge() on JudgeCalls (prepared on this thread)."""
        return self.judge(self.prepare(calls) if calls else [], progress)


def _synthetic_marker(model_path: str) -> dict | None:
    if not Path(model_path).is_dir():
        return None
    from omnigen2_fp8.loading import read_synthetic_marker

    return read_synthetic_marker(model_path)


def _valid(attempt: dict) -> bool:
    return attempt["parse"]["scores"] is not None and not attempt["parse"]["out_of_range"]


def _import_process_vision_info():
    # Imported lazily: qwen_vl_utils imports torchvision at module level, absent on some CPU machines.
    try:
        from qwen_vl_utils import process_vision_info
    except ImportError:
        return None
    return process_vision_info


# --------------------------------------------------------------------------------------------- sample-level judging
def judge_calls_for_sample(sample_uid: str, source_image, edited_image, instruction: str,
                           prompts: PromptSet) -> list[JudgeCall]:
    """The two calls of one sample: SC ([source, edited] + instruction) and PQ ([edited])."""
    return [JudgeCall(f"{sample_uid}#sc", [source_image, edited_image], prompts.sc_prompt(instruction)),
            JudgeCall(f"{sample_uid}#pq", [edited_image], prompts.pq_prompt())]


# ------------------------------------------------------------------------------------------------ synthetic judges
def write_synthetic_judge(folder: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """A random-weight Qwen2.5-VL judge folder (transformers format, processor files included), marked synthetic.

    "tiny": the pipeline's tiny Qwen2.5-VL with TINY_JUDGE_WORDS as whole tokens, so a few random answers parse
    (every such score is meaningless). "full" is built in memory instead: see `build_full_synthetic_judge`.
    """
    from omnigen2_fp8.synthetic import write_tiny_qwen2_5_vl

    if size != "tiny":
        raise ValueError("only the tiny judge is written to disk; use build_full_synthetic_judge for 7B shapes")
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    write_tiny_qwen2_5_vl(folder, vocab=TINY_JUDGE_WORDS, seed=seed, size="tiny")
    # Zero the output rows of every token but the score words and EOS (and amplify those): decoding then emits
    # mostly those words, so the real parser sees some well-formed answers. Their content is still random noise.
    tokenizer = AutoTokenizer.from_pretrained(folder)
    keep = tokenizer.convert_tokens_to_ids([*TINY_JUDGE_WORDS, "<|im_end|>"])
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        mask = torch.ones(model.lm_head.weight.shape[0], dtype=torch.bool)
        mask[keep] = False
        model.lm_head.weight[mask] = 0.0
        model.lm_head.weight[~mask] *= TINY_JUDGE_LOGIT_GAIN
    model.save_pretrained(folder)
    return folder


def qwen2_5_vl_7b_config(tokenizer):
    """`Qwen2_5_VLConfig` with the shapes of Qwen2.5-VL-7B-Instruct (8.29e9 parameters), token ids from `tokenizer`."""
    from omnigen2_fp8 import synthetic as syn

    config = syn.qwen2_5_vl_config("full", tokenizer)
    for key, value in QWEN2_5_VL_7B_TEXT.items():
        setattr(config.text_config, key, value)
    config.vision_config.out_hidden_size = QWEN2_5_VL_7B_VISION_OUT
    config.tie_word_embeddings = config.text_config.tie_word_embeddings = False
    return config


def build_full_synthetic_judge(device: str = "cuda", dtype: torch.dtype = torch.bfloat16, seed: int = 0, **kwargs) -> QwenJudge:
    """A random-weight judge with the shapes of Qwen2.5-VL-7B-Instruct, built in device memory (speed and memory
    are those of the real judge; its answers are noise)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from omnigen2_fp8 import synthetic as syn

    tokenizer = syn.build_qwen_tokenizer(qwen_ids=True)
    config = qwen2_5_vl_7b_config(tokenizer)
    previous = torch.get_default_dtype()
    cuda_devices = [torch.device(device).index or 0] if str(device).startswith("cuda") else []
    with torch.random.fork_rng(devices=cuda_devices):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype,
                                                                        attn_implementation=ATTENTION).eval()
        finally:
            torch.set_default_dtype(previous)
    # As in the released generation_config.json: both end tokens stop an answer; repetition penalty 1.05.
    model.generation_config.repetition_penalty = 1.05
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    image_processor = syn.build_qwen_image_processor("full")
    processor = None
    with tempfile.TemporaryDirectory() as tmp:  # the real processor class, where torchvision allows it
        syn.write_qwen_processor(tmp, tokenizer, image_processor)
        try:
            from transformers import AutoProcessor

            processor = AutoProcessor.from_pretrained(tmp)
            tokenizer = processor.tokenizer
        except Exception as err:  # noqa: BLE001  any failure here only means the fallback path is used, and it is recorded
            logging.getLogger(__name__).warning("synthetic judge: AutoProcessor unavailable (%s: %s); using the "
                                                "fallback preprocessing", type(err).__name__, err)
            processor = None
    return QwenJudge(model, tokenizer, image_processor, processor, model_id="synthetic-full-qwen2.5-vl-7b",
                     device=device, synthetic={"size": "full", "seed": seed}, **kwargs)
