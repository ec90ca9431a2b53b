"""Which denoising steps run FP8 attention: `Fp8Config.attention_exclude_steps`, and the switch the pipeline sets.

A step range is written like a Python slice over the run's step indices 0 .. n-1, so one setting serves runs of
any length: "0:3" the first three steps, "-2:" the last two, "5" step 5 alone, "-1" the last step. Excluded steps
run BF16 attention in every FP8 attention core (the FP8 linears stay FP8); early steps, which lay out the image,
are the usual candidates.

One `AttentionSteps` is shared by all cores of a model (`fp8.attention.enable_fp8_attention` installs it as the
model's `fp8_attention_steps`). The pipeline selects the step before each denoising step; the cores read
`fp8_now`. Under torch.compile each value is one compiled variant per block kind; under CUDA graphs it joins every
graph's key (`cuda_graphs`), so each branch is captured once per attention mode.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

SYNTAX = ('a step range is "start:stop" (a Python slice over the step indices 0 .. n-1, either end may be left '
          'out, negative counts from the end) or one step index, e.g. "0:3" (the first three steps), "-2:" (the '
          'last two), "5"')


def parse_step_range(text: str) -> slice:
    """"0:3" -> slice(0, 3); "-2:" -> slice(-2, None); "5" -> slice(5, 6); "-1" -> slice(-1, None).

    Raises ValueError naming the syntax for anything else (a slice step such as "0:6:2", a range that selects no
    step in any run such as "3:3", text that is no number)."""
    if not isinstance(text, str):
        raise ValueError(f"step range {text!r} must be text; {SYNTAX}")
    if not text.strip():
        raise ValueError(f"step range {text!r} is empty; {SYNTAX}")
    fields = text.strip().split(":")
    try:
        ends = [int(f) if f.strip() else None for f in fields]
    except ValueError:
        raise ValueError(f"step range {text!r} is not understood; {SYNTAX}") from None
    if len(ends) == 1:
        index = ends[0]
        return slice(index, None if index == -1 else index + 1)
    if len(ends) != 2:
        raise ValueError(f"step range {text!r} has {len(ends)} fields; {SYNTAX}")
    start, stop = ends
    if start is not None and stop is not None and (start >= 0) == (stop >= 0) and stop <= start:
        raise ValueError(f"step range {text!r} selects no step in any run; {SYNTAX}")
    return slice(start, stop)


def excluded_steps(ranges: tuple[str, ...], num_steps: int) -> list[int]:
    """The step indices of a run of `num_steps` steps that `ranges` (step-range texts) select, in order."""
    chosen: set[int] = set()
    for text in ranges:
        chosen.update(range(num_steps)[parse_step_range(text)])
    return sorted(chosen)


class AttentionSteps:
    """The run-time switch of a model's FP8 attention cores: `fp8_now` is False while an excluded step runs.

    exclude: step-range texts (see the module docstring); they are checked here, before any run."""

    def __init__(self, exclude: tuple[str, ...] = ()):
        for text in exclude:
            parse_step_range(text)
        self.exclude = tuple(exclude)
        self.fp8_now = True

    def select(self, step: int, num_steps: int) -> bool:
        """Set the switch for step `step` of a run of `num_steps`; returns fp8_now."""
        self.fp8_now = step not in excluded_steps(self.exclude, num_steps)
        return self.fp8_now

    def reset(self) -> None:
        """FP8 attention on again (outside a denoising run every call is an FP8 one)."""
        self.fp8_now = True

    @contextlib.contextmanager
    def every_step(self) -> Iterator[None]:
        """FP8 attention in every step inside the block (error studies of the kernel); the exclusion and the
        switch's setting come back after it."""
        saved = self.exclude, self.fp8_now
        self.exclude, self.fp8_now = (), True
        try:
            yield
        finally:
            self.exclude, self.fp8_now = saved

    def graph_key(self) -> bool:
        """What the switch makes the next transformer call compute, for CUDA-graph keys."""
        return self.fp8_now

    def __repr__(self) -> str:
        return f"AttentionSteps(exclude={self.exclude}, fp8_now={self.fp8_now})"
