"""How judge calls become padded model batches: per-call encoding, length ordering, collation, batch size from the
GPU's capacity, a fingerprint per batch, and preparation on a background thread while the GPU works.

Each call is encoded alone (tokens + vision inputs, unpadded), so calls can be ordered by prompt length before they
are grouped; a batch is then collated by left-padding its calls, exactly as the processor pads a batch. The order and
the batch size change padding and batch numerics, so both are part of the judge's recorded settings (`ORDERING`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import queue
import threading
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import torch

# The rule that forms batches; a resume with another rule is a settings change (bump the version on any change).
ORDERING = "v1: within each judge() call, calls sorted by prompt tokens (stable, ties in call order), cut into batch_size"
# Calls per forward batch at most when chosen from the device's memory. The plain judge on an H200
# (results/judge_throughput_h200.json): 1.10 samples/s at 32, 1.76 at 64, 2.18 at 128 (45 GiB peak): an eager decode
# step costs about the same at any batch size, so larger batches pay. 256 fits an H200 (about 100 GiB by the estimate
# below at 512 new tokens; measured at 128 new tokens with packed vision attention: 76 GiB peak and 7.36 samples/s with
# the default reproducible decoding, results/judge_reproducible_decode_h200.json); an 80 GB card gets 128.
AUTO_BATCH_CAP = 256
CPU_BATCH_SIZE = 4  # on a CPU there is no memory to size by; small batches keep the tiny test judges fast
PROMPT_TOKENS_BOUND = 1536  # a two-image GEdit call at the 512x512 area (~650 image + ~450 text tokens), rounded up
MEMORY_HEADROOM = 0.85  # share of free memory the batch may fill (allocator fragmentation, vision activations)

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclasses.dataclass
class EncodedCall:
    """One call as model inputs without padding: `tensors` holds input_ids (1, L), attention_mask (1, L) and any other
    per-token rows, plus the vision inputs (pixel_values (patches, dim), image_grid_thw (images, 3))."""

    index: int  # position in the judge() call, the tie-break of the ordering
    call_id: str
    tensors: dict[str, torch.Tensor]
    inputs_sha256: str = dataclasses.field(init=False)  # of every tensor: what the model is fed for this call

    def __post_init__(self) -> None:
        # Hashed where the call is encoded (the preparation thread), off the GPU's critical path.
        digest = hashlib.sha256()
        for key in sorted(self.tensors):
            t = self.tensors[key].detach().cpu().contiguous()
            digest.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode() + t.view(torch.uint8).numpy().tobytes())
        self.inputs_sha256 = digest.hexdigest()[:16]

    @property
    def n_tokens(self) -> int:
        return int(self.tensors["input_ids"].shape[1])


def length_ordered_batches(encoded: Sequence[EncodedCall], batch_size: int) -> list[list[EncodedCall]]:
    """`encoded` sorted by prompt tokens (stable), cut into batches of `batch_size` (the last may be shorter)."""
    ordered = sorted(encoded, key=lambda e: (e.n_tokens, e.index))
    width = max(1, batch_size)
    return [ordered[i:i + width] for i in range(0, len(ordered), width)]


def batch_fingerprint(batch: Sequence[EncodedCall], attempt: int) -> dict:
    """What one model batch is, for comparing runs: its calls in batch order, the padded length (every call is
    left-padded to it) and a hash over the calls' own input hashes in that order (token ids and pixel values). Two
    batches with equal fingerprints feed the model the same tensors."""
    digest = hashlib.sha256("".join(e.inputs_sha256 for e in batch).encode())
    return {"attempt": attempt, "calls": [e.call_id for e in batch], "padded_tokens": max(e.n_tokens for e in batch),
            "inputs_sha256": digest.hexdigest()[:16]}


PER_TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


def collate_left_padded(batch: Sequence[EncodedCall], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One batch: per-token rows left-padded to the longest call (input_ids with pad_token_id, the rest with 0);
    vision inputs concatenated in batch order (the order their image tokens appear in)."""
    longest = max(e.n_tokens for e in batch)
    out: dict[str, torch.Tensor] = {}
    for key in batch[0].tensors:
        parts = [e.tensors[key] for e in batch]
        if key in PER_TOKEN_KEYS:
            fill = pad_token_id if key == "input_ids" else 0
            out[key] = torch.cat([torch.nn.functional.pad(p, (longest - p.shape[1], 0), value=fill) for p in parts])
        else:
            out[key] = torch.cat(parts)
    return out


# --------------------------------------------------------------------------------------------------- batch size
def kv_bytes_per_token(text_config, dtype: torch.dtype) -> int:
    """Key + value cache bytes of one token over all layers."""
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * text_config.num_hidden_layers * text_config.num_key_value_heads * head_dim * itemsize


def prefill_bytes_per_token(text_config, dtype: torch.dtype) -> int:
    """Peak transient activation bytes of one prompt token inside one decoder layer (MLP gate/up/product + a few
    hidden-size buffers); layers run one at a time, so this is not multiplied by the depth."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return (3 * text_config.intermediate_size + 6 * text_config.hidden_size) * itemsize


def bytes_per_call(text_config, dtype: torch.dtype, max_new_tokens: int,
                   prompt_tokens: int = PROMPT_TOKENS_BOUND) -> int:
    """Device bytes one call of a batch needs at most: KV cache of prompt + answer and the prefill activations."""
    return ((prompt_tokens + max_new_tokens) * kv_bytes_per_token(text_config, dtype)
            + prompt_tokens * prefill_bytes_per_token(text_config, dtype))


def batch_size_for_memory(free_bytes: int, text_config, dtype: torch.dtype, max_new_tokens: int,
                          prompt_tokens: int = PROMPT_TOKENS_BOUND, cap: int = AUTO_BATCH_CAP) -> int:
    """Calls per batch that fit in `free_bytes` (after the weights are loaded) within MEMORY_HEADROOM; a power of
    two (so that nearby readings give the same batch, hence the same numerics), between 1 and `cap`."""
    fit = int(free_bytes * MEMORY_HEADROOM) // bytes_per_call(text_config, dtype, max_new_tokens, prompt_tokens)
    if fit < 1:
        return 1
    return min(cap, 2 ** int(math.log2(fit)))


def batch_size_for_device(total_bytes: int, own_bytes: int, free_bytes: int, text_config, dtype: torch.dtype,
                          max_new_tokens: int, cap: int = AUTO_BATCH_CAP) -> tuple[int, str]:
    """(batch size, how it was chosen) for a judge whose weights take `own_bytes` of a device of `total_bytes`.

    Sized from the device's capacity less this process's own tensors, not from free memory: free memory also
    depends on what other processes hold (another rank, a CUDA context, NCCL buffers), and the batch decides the
    chunks and the numerics, so it must not change with the world size. Only when the device's actual
    `free_bytes` cannot hold that batch (another job on the GPU) is it sized from free memory, with a warning.
    """
    capacity = max(0, total_bytes - own_bytes)
    size = batch_size_for_memory(capacity, text_config, dtype, max_new_tokens, cap=cap)
    if size * bytes_per_call(text_config, dtype, max_new_tokens) <= free_bytes:
        return size, f"auto: {capacity / 2**30:.1f} GiB of device capacity beside the weights, cap {cap}"
    fits = batch_size_for_memory(free_bytes, text_config, dtype, max_new_tokens, cap=cap)
    log.warning("judge batch size %d instead of %d: only %.1f GiB of the device is free (other processes hold "
                "memory), so judgements may differ from runs on a free device; pass --batch-size N to fix it",
                fits, size, free_bytes / 2**30)
    return fits, f"auto: {free_bytes / 2**30:.1f} GiB free (device partly held by other processes), cap {cap}"


def auto_batch_size(device: str, text_config, dtype: torch.dtype, max_new_tokens: int,
                    cap: int = AUTO_BATCH_CAP) -> tuple[int, str]:
    """(batch size, how it was chosen) for a model already on `device`: `batch_size_for_device` on a GPU,
    CPU_BATCH_SIZE on a CPU."""
    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return CPU_BATCH_SIZE, f"auto: {CPU_BATCH_SIZE} on a CPU"
    dev = torch.device(device)
    free, total = torch.cuda.mem_get_info(dev)
    return batch_size_for_device(total, torch.cuda.memory_allocated(dev), free, text_config, dtype, max_new_tokens,
                                 cap=cap)


# ------------------------------------------------------------------------------------------ background preparation
_DONE = object()


def prepared_in_background(items: Iterable[T], prepare: Callable[[T], Any], depth: int = 1) -> Iterator[tuple[T, Any]]:
    """Yield (item, prepare(item)) in order, pulling items and preparing them on one worker thread up to `depth`
    items ahead, so that loading images and vision preprocessing overlap the caller's GPU work. An exception in the
    worker is raised here, at the item it belongs to; closing the generator early stops the worker."""
    slots: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                slots.put((item, prepare(item), None))
        except BaseException as err:  # noqa: BLE001  re-raised in the consumer's thread, with its traceback
            slots.put((None, None, err))
        slots.put(_DONE)

    worker = threading.Thread(target=work, name="judge-prepare", daemon=True)
    worker.start()
    try:
        while True:
            entry = slots.get()
            if entry is _DONE:
                return
            item, prepared, err = entry
            if err is not None:
                raise err
            yield item, prepared
    finally:
        stop.set()
        while worker.is_alive():  # unblock a worker waiting on a full queue
            try:
                slots.get(timeout=0.05)
            except queue.Empty:
                pass
