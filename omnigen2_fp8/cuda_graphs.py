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
CFG branch), which joins the signature, and None runs the pass eagerly (a run's first call of a branch, TeaCache).
TeaCache decides on the host, between the pass's first part and its main stack, whether the stack runs; it replays
the stack alone through `GraphedCalls` (the wrapper's `stack_graphs`), so most of the pass's launches are still
one graph launch. A model's run-time switches join every key too (`switches_key`: FP8 attention off for the
denoising steps its config excludes), so each branch is captured once per setting of the switches.
"""
from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from typing import Callable, Hashable, Iterator, Sequence

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


def _capture(run: Callable[[list[torch.Tensor]], torch.Tensor], flat: list[torch.Tensor],
             backends=None) -> tuple[torch.Tensor, _Captured | str]:
    """Warm `run` up on static copies of `flat`, then capture it: -> (the warm-up's result, the captured graph or
    why capture failed)."""
    static = [t.clone() for t in flat]
    # Warm up on a side stream (lazy initialisation, caches such as the RoPE tables), as capture requires.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), _attention_backends(backends):
        result = run(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with _attention_backends(backends), torch.cuda.graph(graph):
            output = run(static)
    except RuntimeError as err:  # an op that cannot be captured: the caller keeps going eagerly
        return result, f"{type(err).__name__}: {err}"
    return result, _Captured(graph, static, output)


class GraphedCalls:
    """Replay `fn(*tensors)` as CUDA graphs, one per key and input signature (shapes, dtypes, devices): a part of
    a pass that runs with the same shapes call after call (TeaCache's main stack). The first call of a signature
    runs eagerly (warm-up) and captures; later calls copy their inputs into the graph's buffers and replay it.
    `owner`'s parameters must stay where they were at capture; when they move, the graphs are dropped."""

    def __init__(self, max_graphs: int = 6, sdpa_backends=None, context: Callable[[], Hashable] = tuple):
        self.max_graphs = max_graphs
        self.sdpa_backends = sdpa_backends
        self.context = context  # what else decides what a call computes (`switches_key`): joins every key
        self._graphs: OrderedDict[tuple, _Captured] = OrderedDict()
        self._weights: tuple = ()
        self.captures = 0
        self.replays = 0
        self.disabled_reason: str | None = None
        self.paused = False

    def clear(self) -> None:
        self._graphs.clear()

    def __call__(self, key: Hashable, fn: Callable[..., torch.Tensor], tensors: Sequence[torch.Tensor],
                 owner: torch.nn.Module) -> torch.Tensor:
        flat = list(tensors)
        if self.disabled_reason or self.paused or not all(t.is_cuda for t in flat):
            return fn(*flat)
        weights = _weight_addresses(owner)
        if weights != self._weights:
            self._graphs.clear()
            self._weights = weights
        signature = (key, self.context(), tuple((tuple(t.shape), t.dtype, t.device) for t in flat))
        entry = self._graphs.get(signature)
        if entry is not None:
            self._graphs.move_to_end(signature)
            self.replays += 1
            return entry.replay(flat)
        result, captured = _capture(lambda static: fn(*static), flat, self.sdpa_backends)
        if isinstance(captured, str):
            self.disabled_reason = captured
            log.warning("CUDA graph capture failed, running eagerly from now on (%s)", captured)
            return result
        self._graphs[signature] = captured
        self.captures += 1
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        return result


class CudaGraphForward:
    """Call-compatible wrapper: `wrapper(latents, timestep, text, mask, ref_latents=None)` like the transformer.

    For tensor `latents` [B, C, H, W] on a CUDA device; anything else (lists, CPU) runs eagerly. The model's
    weights must stay where they are while graphs exist (no CPU offload), because graphs hold their addresses.
    sdpa_backends: optional attention backends (torch.nn.attention.SDPBackend list) for warm-ups and captures.
    """

    def __init__(self, model: torch.nn.Module, max_graphs: int = 6, sdpa_backends=None):
        self.model = model

        def context() -> Hashable:
            return switches_key(model)

        self.passes = GraphedCalls(max_graphs, sdpa_backends, context)  # whole transformer passes
        # Parts of a pass replayed on their own when the whole pass cannot be (a step cache's `graph_key` None).
        self.stack_graphs = GraphedCalls(max_graphs, sdpa_backends, context)

    @property
    def captures(self) -> int:
        return self.passes.captures

    @property
    def replays(self) -> int:
        return self.passes.replays

    @property
    def disabled_reason(self) -> str | None:
        return self.passes.disabled_reason

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Run every call through the wrapped model inside the block (captured graphs are kept for later), e.g.
        under torch.profiler, which cannot tie the kernels of a replayed graph to the ops that launched them."""
        saved = self.passes.paused, self.stack_graphs.paused
        self.passes.paused = self.stack_graphs.paused = True
        try:
            yield
        finally:
            self.passes.paused, self.stack_graphs.paused = saved

    def clear(self) -> None:
        """Drop every captured graph, which frees its private memory pool (on the allocator's next empty_cache);
        the next call of each signature captures again."""
        self.passes.clear()
        self.stack_graphs.clear()

    def __call__(self, latents, timestep, text, mask, ref_latents=None):
        strategy = getattr(self.model, "main_layers_strategy", None)
        path = strategy.graph_key() if strategy is not None else ()
        if (path is None or self.passes.paused or self.passes.disabled_reason or not isinstance(latents, torch.Tensor)
                or not latents.is_cuda):
            return self.model(latents, timestep, text, mask, ref_latents=ref_latents)
        mask = mask.cpu()  # lengths are read on the host; a CPU mask keeps that out of the graph
        refs = [list(r) if r is not None else [] for r in ref_latents] if ref_latents is not None else None
        flat = [latents, timestep, text, *(r for sample in refs or [] for r in sample)]

        def run(*tensors: torch.Tensor) -> torch.Tensor:
            return self.model(*tensors[:3], mask, ref_latents=_unflatten_refs(list(tensors[3:]), refs))

        # The host-side bookkeeping depends on the text lengths and the references' grouping: both join the key.
        key = (None if refs is None else tuple(len(r) for r in refs), tuple(mask.shape),
               tuple(mask.bool().sum(dim=1).tolist()), path)
        return self.passes(key, run, flat, owner=self.model)


def switches_key(model: torch.nn.Module) -> Hashable:
    """The state of `model`'s run-time switches that change what its next call computes: its FP8 attention step
    switch (`fp8.attention_steps.AttentionSteps`, present when FP8 attention is on), else ()."""
    steps = getattr(model, "fp8_attention_steps", None)
    return () if steps is None else ("fp8 attention", steps.graph_key())


def _attention_backends(backends):
    """sdpa_kernel(backends) (a torch.nn.attention.SDPBackend list), or nothing when None."""
    if backends is None:
        return contextlib.nullcontext()
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel(backends)


def _weight_addresses(model: torch.nn.Module) -> tuple:
    """Where every parameter and buffer lives now; a graph replayed after they moved would read freed memory."""
    return tuple(t.data_ptr() for t in (*model.parameters(), *model.buffers()))


def _unflatten_refs(flat_refs: list[torch.Tensor], refs) -> list[list[torch.Tensor]] | None:
    if refs is None:
        return None
    out, i = [], 0
    for sample in refs:
        out.append(flat_refs[i: i + len(sample)])
        i += len(sample)
    return out
