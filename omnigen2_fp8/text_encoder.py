"""Instruction -> text features: the Qwen2.5-VL chat template and the language model's last hidden state.

As in the official edit pipeline: a system turn with the OmniGen2 system line, the instruction as the user turn,
no assistant header; the text alone goes through the MLLM (the reference images are not shown to it), and the
features are the last hidden state, after the final norm. The LM head is not run: only hidden states are needed.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

SYSTEM_PROMPT = "You are a helpful assistant that generates high-quality images based on user instructions."


def chat_text(tokenizer, instruction: str) -> str:
    """The chat-templated text for one instruction (system line + user turn, no generation prompt)."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": instruction}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)


def load_tokenizer(folder: str | os.PathLike):
    """The Qwen tokenizer of a `processor/` folder (AutoTokenizer: works with or without torchvision)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(folder))


class TextEncoder:
    """Qwen2.5-VL text features for instructions: `encode(text) -> (hidden [1, T, D], mask [1, T])`."""

    def __init__(self, mllm, tokenizer):
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("the tokenizer has no chat template; load it from the checkpoint's processor/ folder, "
                             "which ships one")
        self.mllm = mllm
        self.tokenizer = tokenizer

    @property
    def hidden_size(self) -> int:
        return self.mllm.config.text_config.hidden_size

    @torch.no_grad()
    def encode(self, instruction: str, device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Last hidden state of the templated `instruction`: ([1, T, D] in the MLLM dtype, [1, T] int64 mask of ones).

        One prompt per call (batch 1, no padding), as each CFG branch is encoded on its own.
        """
        if not isinstance(instruction, str):
            raise TypeError(f"the instruction must be a string, got {type(instruction).__name__}")
        device = device or next(self.mllm.parameters()).device
        tokens = self.tokenizer([chat_text(self.tokenizer, instruction)], return_tensors="pt")
        input_ids = tokens.input_ids.to(device)
        attention_mask = tokens.attention_mask.to(device)
        # The base model (without the LM head) returns the normed last hidden state.
        hidden = self.mllm.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return hidden, attention_mask
