"""Per-layer profiler ranges, offered by the library that knows its layers' entry points.

    with torch.profiler.profile() as prof, layer_ranges(model) as calls:
        model(...)

Every linear layer (nn.Linear, Fp8Linear) then runs inside a `record_function("layer::<fqn>")` range, so a
profile attributes each kernel to the layer that launched it, and `calls` counts the GEMM-carrying calls per
layer. A layer's range opens at its outermost entry: its forward, or one of the methods it declares in
`profiler_entry_points` (Fp8Linear's quantize_input / matmul / ...: the folded SwiGLU feed-forward calls those
directly instead of forward). Everything is removed on exit. Do not combine with torch.compile: the hooks would
break the graphs (and replayed CUDA graphs run no Python at all).
"""
from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Callable, Iterator

import torch
from torch import nn

LAYER_RANGE_PREFIX = "layer::"


@contextlib.contextmanager
def layer_ranges(model: nn.Module, predicate: Callable[[str, nn.Module], bool] | None = None,
                 prefix: str = "") -> Iterator[dict[str, int]]:
    """Open a `record_function("layer::<prefix><fqn>")` range around all work of the selected modules.

    predicate(fqn, module): which modules get a range (default `is_linear_layer`). Yields a dict
    `prefix + fqn` -> number of GEMM-carrying calls (forward, and the entry points the layer marks True) made
    while the context was open.
    """
    predicate = predicate or is_linear_layer
    calls: dict[str, int] = defaultdict(int)
    handles, patched = [], []
    for fqn, module in model.named_modules():
        if not fqn or not predicate(fqn, module):
            continue
        scope = _LayerScope(f"{LAYER_RANGE_PREFIX}{prefix}{fqn}", prefix + fqn, calls)
        handles.append(module.register_forward_pre_hook(lambda mod, args, _s=scope: _s.enter(counts=True)))
        handles.append(module.register_forward_hook(lambda mod, args, out, _s=scope: _s.exit(), always_call=True))
        for method_name, counts in getattr(module, "profiler_entry_points", {}).items():
            # Shadow the bound method with an instance attribute (deleted on exit), so direct callers and the
            # layer's own forward both go through the scope.
            module.__dict__[method_name] = scope.wrap(getattr(module, method_name), counts)
            patched.append((module, method_name))
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()
        for module, method_name in patched:
            module.__dict__.pop(method_name, None)


class _LayerScope:
    """One layer's profiler range: opened at depth 0 -> 1, closed at 1 -> 0; GEMM-carrying entries counted."""

    def __init__(self, range_name: str, fqn: str, calls: dict[str, int]):
        self.range_name, self.fqn, self.calls = range_name, fqn, calls
        self.depth = 0
        self.range = None

    def enter(self, counts: bool) -> None:
        if self.depth == 0:
            if counts:
                self.calls[self.fqn] += 1
            self.range = torch.profiler.record_function(self.range_name)
            self.range.__enter__()
        self.depth += 1

    def exit(self) -> None:
        self.depth -= 1
        if self.depth == 0 and self.range is not None:
            self.range.__exit__(None, None, None)
            self.range = None

    def wrap(self, method: Callable, counts: bool) -> Callable:
        def wrapper(*args, **kwargs):
            self.enter(counts)
            try:
                return method(*args, **kwargs)
            finally:
                self.exit()
        return wrapper


def is_linear_layer(fqn: str, module: nn.Module) -> bool:
    """True for nn.Linear and linear-like swaps (class name ending in "Linear" with a 2-D weight)."""
    if isinstance(module, nn.Linear):
        return True
    weight = getattr(module, "weight", None)
    return type(module).__name__.endswith("Linear") and isinstance(weight, torch.Tensor) and weight.dim() == 2
