"""CUDA-graph replay of transformer calls: one captured graph per input signature, replayed every step.

At 512x512 a transformer pass is ~1k-2k tokens and hundreds of small kernels; eager launching then leaves the GPU
idle (the FP8 path adds a quantization launch per linear, so it suffers most). A denoising loop calls the DiT
with the same shapes every step (one signature per CFG branch), which is exactly what CUDA graphs replay cheaply.

The signature is every input's shape and dtype plus the text lengths (read from the mask on the host), because
the forward's bookkeeping (RoPE tables, packing) is decided on the host from those. A new signature costs one
eager warm-up call (whose result is returned) and one capture; least-recently-used graphs are dropped past
`max_graphs`, which bounds the memory held by their private pools.

A step cache installed on the model (`caching.py`, `main_layers_strategy`) changes what a pass computes from call to
call; its `graph_key()` names the path the coming call takes (e.g. TaylorSeer's full or extrapolated call of one
CFG branch), which joins the signature, and None runs the call eagerly (a run's first call of a branch, TeaCache).
"""
from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from typing import Iterator, Sequence

import torch

log = logging.getLogger(__name__)


class _Captured:
    """One graph with the static input buffers it reads and the output buffer it writes."""

    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: list[torch.Tensor], output: torch.Tensor):
        self.graph, self.inputs, self.output = graph, inputs, output

    def replay(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        for static, new in zip(self.inputs, inputs):
            static.copy_(new)
        self.graph.replay()
        return self.output.clone()  # the next replay overwrites the static output


class CudaGraphForward:
    """Call-compatible wrapper: `wrapper(latents, timestep, text, mask, ref_latents=None)` like the transformer.

    For tensor `latents` [B, C, H, W] on a CUDA device; anything else (lists, CPU) runs eagerly. The model's
    weights must stay where they are while graphs exist (no CPU offload), because graphs hold their addresses.
    """

    def __init__(self, model: torch.nn.Module, max_graphs: int = 6, sdpa_backends=None):
        self.model = model
        self.max_graphs = max_graphs
        # Optional attention backends (torch.nn.attention.SDPBackend list) for the warm-up and the capture.
        self.sdpa_backends = sdpa_backends
        self._graphs: OrderedDict[tuple, _Captured] = OrderedDict()
        self.captures = 0
        self.replays = 0
        self.disabled_reason: str | None = None
        self._paused = False
        self._weights: tuple = ()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Run every call through the wrapped model inside the block (captured graphs are kept for later), e.g.
        under torch.profiler, which cannot tie the kernels of a replayed graph to the ops that launched them."""
        previous, self._paused = self._paused, True
        try:
            yield
        finally:
            self._paused = previous

    def clear(self) -> None:
        """Drop every captured graph, which frees its private memory pool (on the allocator's next empty_cache);
        the next call of each signature captures again."""
        self._graphs.clear()

    def __call__(self, latents, timestep, text, mask, ref_latents=None):
        strategy = getattr(self.model, "main_layers_strategy", None)
        path = strategy.graph_key() if strategy is not None else ()
        if (self.disabled_reason or self._paused or path is None or not isinstance(latents, torch.Tensor)
                or not latents.is_cuda):
            return self.model(latents, timestep, text, mask, ref_latents=ref_latents)
        weights = _weight_addresses(self.model)
        if weights != self._weights:  # weights moved (offload, .to(), reload): captured addresses are stale
            self._graphs.clear()
            self._weights = weights
        mask = mask.cpu()  # lengths are read on the host; a CPU mask keeps that out of the graph
        refs = [list(r) if r is not None else [] for r in ref_latents] if ref_latents is not None else None
        flat = [latents, timestep, text, *(r for sample in refs or [] for r in sample)]
        key = (_signature(flat, mask, refs), path)
        entry = self._graphs.get(key)
        if entry is not None:
            self._graphs.move_to_end(key)
            self.replays += 1
            return entry.replay(flat)
        return self._capture(key, flat, mask, refs)

    def _capture(self, key: tuple, flat: list[torch.Tensor], mask: torch.Tensor, refs) -> torch.Tensor:
        static = [t.clone() for t in flat]
        static_refs = _unflatten_refs(static[3:], refs)
        # Warm up on a side stream (lazy initialisation, caches such as the RoPE tables), as capture requires.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), self._attention_backends():
            result = self.model(static[0], static[1], static[2], mask, ref_latents=static_refs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with self._attention_backends(), torch.cuda.graph(graph):
                output = self.model(static[0], static[1], static[2], mask, ref_latents=static_refs)
        except RuntimeError as err:  # an op that cannot be captured: keep going eagerly, and say so once
            self.disabled_reason = f"{type(err).__name__}: {err}"
            log.warning("CUDA graph capture failed, running eagerly from now on (%s)", self.disabled_reason)
            return result
        self._graphs[key] = _Captured(graph, static, output)
        self.captures += 1
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        return result

    def _attention_backends(self):
        if self.sdpa_backends is None:
            return contextlib.nullcontext()
        from torch.nn.attention import sdpa_kernel

        return sdpa_kernel(self.sdpa_backends)


def _weight_addresses(model: torch.nn.Module) -> tuple:
    """Where every parameter and buffer lives now; a graph replayed after they moved would read freed memory."""
    return tuple(t.data_ptr() for t in (*model.parameters(), *model.buffers()))


def _signature(flat: Sequence[torch.Tensor], mask: torch.Tensor, refs) -> tuple:
    shapes = tuple((tuple(t.shape), t.dtype, t.device) for t in flat)
    ref_counts = None if refs is None else tuple(len(r) for r in refs)
    return shapes, ref_counts, tuple(mask.shape), tuple(mask.bool().sum(dim=1).tolist())


def _unflatten_refs(flat_refs: list[torch.Tensor], refs) -> list[list[torch.Tensor]] | None:
    if refs is None:
        return None
    out, i = [], 0
    for sample in refs:
        out.append(flat_refs[i: i + len(sample)])
        i += len(sample)
    return out
