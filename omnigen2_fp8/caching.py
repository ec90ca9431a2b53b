"""Step caching for the denoising loop: TeaCache and TaylorSeer, computing what the official OmniGen2 code computes.

Both save work on the costly part of a transformer call, the main stack of joint blocks (32 at the shipped size),
by reusing what earlier calls of the same CFG branch (cond, ref, uncond) computed; the embedders, the refiners and
the output layer always run. Each branch keeps its own state, fresh for every generation.

- TeaCache: per call, the relative L1 change of the first block's modulated input since the branch's previous
  call, rescaled by the official polynomial, is accumulated; while the sum stays below `rel_l1_thresh` the stack is
  skipped and the residual (output minus input) of the branch's last computed call is added instead. The first
  and the last step of the schedule always compute. Whether a call skips depends on the weights and the data.
- TaylorSeer: a fixed schedule per branch (the first `first_enhance` calls, then every `fresh_threshold`-th)
  computes the stack and refreshes finite-difference derivatives of its output (up to `max_order`); the other
  calls evaluate the Taylor polynomial at the number of calls since the last computed one. The schedule does not
  depend on the weights. The official code expands every block's output, but on an extrapolated call no block
  reads its input, so the stack's output is the last block's expansion: that one alone is kept here (same numbers,
  1/32 of the memory and of the extrapolation work).

How it plugs in: `OmniGen2Transformer.forward` hands its main stack (`main_layers.MainStack`) to
`transformer.main_layers_strategy` (a `StepCache`, installed by `installed`); the pipeline calls
`begin_call(branch, step_index)` before each transformer call. A recipe's step-cache part (`precision.py`:
"fp8+taylorseer", "bf16+teacache:0.1") is one of the configs below. TaylorSeer makes every host-side decision in
`begin_call` and keeps its tensors at fixed addresses with the per-call numbers in a device tensor, so a CUDA graph
replaying a whole pass (`cuda_graphs.py`, keyed by `graph_key`) stays exact. TeaCache decides inside the pass from
the pass's own activations (a device to host read), which one captured pass cannot do: with CUDA graphs its passes
run eagerly up to the decision, and a computed call replays the main stack as its own graph (`stack_graphs`).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, ClassVar, Hashable, Iterator

import numpy as np
import torch

from .main_layers import MainStack

if TYPE_CHECKING:  # the model is only handed in; importing it here would tie the recipe vocabulary to it
    from .transformer import OmniGen2Transformer

# numpy.poly1d order (highest power first), from the official OmniGen2 TeaCache.
OFFICIAL_TEACACHE_RESCALE = (-5.48259225, 11.48772289, -4.47407401, 2.47730926, -0.03316487)


# ---------------------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class TeaCacheConfig:
    """TeaCache settings; the defaults are the official ones (threshold 0.05: "about 30% faster")."""

    rel_l1_thresh: float = 0.05
    rescale_coefficients: tuple[float, ...] = OFFICIAL_TEACACHE_RESCALE

    method: ClassVar[str] = "teacache"

    def __post_init__(self):
        object.__setattr__(self, "rescale_coefficients", tuple(float(c) for c in self.rescale_coefficients))
        if not (isinstance(self.rel_l1_thresh, (int, float)) and math.isfinite(self.rel_l1_thresh)
                and self.rel_l1_thresh > 0):
            raise ValueError(f"TeaCache rel_l1_thresh must be a positive number, got {self.rel_l1_thresh!r}; the "
                             "official default is 0.05 (larger skips more)")
        if not self.rescale_coefficients:
            raise ValueError("TeaCache rescale_coefficients is empty; leave it at the official polynomial")

    @property
    def label(self) -> str:
        return f"teacache:{self.rel_l1_thresh:g}"

    def to_dict(self) -> dict:
        return {"method": self.method, "rel_l1_thresh": float(self.rel_l1_thresh),
                "rescale_coefficients": list(self.rescale_coefficients)}


@dataclass(frozen=True)
class TaylorSeerConfig:
    """TaylorSeer settings; the defaults are the official ones ("up to 2x")."""

    first_enhance: int = 5
    fresh_threshold: int = 3
    max_order: int = 4

    method: ClassVar[str] = "taylorseer"

    def __post_init__(self):
        for name, low in (("first_enhance", 1), ("fresh_threshold", 1), ("max_order", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"TaylorSeer {name} must be an integer >= {low}, got {value!r}; the official "
                                 "values are first_enhance=5, fresh_threshold=3, max_order=4")

    @property
    def label(self) -> str:
        return "taylorseer"

    def to_dict(self) -> dict:
        return {"method": self.method, **asdict(self)}


StepCacheConfig = TeaCacheConfig | TaylorSeerConfig
CONFIG_CLASSES: dict[str, type] = {cls.method: cls for cls in (TeaCacheConfig, TaylorSeerConfig)}


def step_cache_from_dict(raw: dict) -> StepCacheConfig:
    """The config a `to_dict()` (or a golden case's `cache` entry) describes: {"method": ..., settings...}."""
    values = dict(raw)
    method = values.pop("method", None)
    if method not in CONFIG_CLASSES:
        raise ValueError(f"unknown step cache method {method!r}; choose one of {sorted(CONFIG_CLASSES)}")
    cls = CONFIG_CLASSES[method]
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{method}: unknown settings {unknown}; it takes {sorted(known)}")
    return cls(**values)


def check_step_cache(config) -> StepCacheConfig | None:
    """Validate a pipeline's `step_cache` argument (a config or None) before any model runs."""
    if config is None:
        return None
    if not isinstance(config, (TeaCacheConfig, TaylorSeerConfig)):
        raise TypeError(f"step_cache must be a TeaCacheConfig, a TaylorSeerConfig or None, got "
                        f"{type(config).__name__}; e.g. step_cache=TaylorSeerConfig()")
    return config


# ---------------------------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class CallRecord:
    """One transformer call of a cached run: its CFG branch, its step index and whether the main layers ran."""

    branch: str
    step: int
    computed: bool


@dataclass
class StepCacheStats:
    """Which calls of one denoising run computed the main layers, in call order."""

    config: dict
    calls: list[CallRecord] = field(default_factory=list)

    @property
    def computed_per_call(self) -> list[bool]:
        return [c.computed for c in self.calls]

    @property
    def computed_fraction(self) -> float:
        return sum(self.computed_per_call) / len(self.calls) if self.calls else 1.0

    def per_branch(self) -> dict[str, dict]:
        """{branch: {"calls", "computed", "computed_fraction"}} in first-call order."""
        out: dict[str, dict] = {}
        for call in self.calls:
            row = out.setdefault(call.branch, {"calls": 0, "computed": 0})
            row["calls"] += 1
            row["computed"] += int(call.computed)
        for row in out.values():
            row["computed_fraction"] = row["computed"] / row["calls"]
        return out

    def to_record(self) -> dict:
        return {"config": self.config, "calls": len(self.calls), "computed": sum(self.computed_per_call),
                "computed_fraction": self.computed_fraction, "per_branch": self.per_branch(),
                "computed_per_call": self.computed_per_call}


# ---------------------------------------------------------------------------------------------- runtime
class StepCache:
    """Runtime state of one step-cache config: `start` a run, `begin_call` before each transformer call."""

    def __init__(self, config: StepCacheConfig):
        self.config = config
        # cuda_graphs.GraphedCalls replaying the main stack, for a method whose whole pass cannot be one graph
        self.stack_graphs = None
        self.start(0)

    def start(self, num_steps: int) -> None:
        """Forget every branch's state: a new generation of `num_steps` steps begins."""
        self.num_steps = num_steps
        self._stats = StepCacheStats(self.config.to_dict())

    def begin_call(self, branch: str, step_index: int) -> None:
        raise NotImplementedError

    def __call__(self, stack: MainStack, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def graph_key(self) -> Hashable | None:
        """What a CUDA graph of the coming call must be keyed by besides its inputs; None: do not capture it."""
        return None

    def stats(self) -> StepCacheStats:
        return self._stats


def make_step_cache(config: StepCacheConfig) -> StepCache:
    return TeaCache(config) if isinstance(config, TeaCacheConfig) else TaylorSeer(config)


@contextlib.contextmanager
def installed(transformer: OmniGen2Transformer, cache: StepCache | None) -> Iterator[None]:
    """Route the transformer's main layers through `cache` inside the block (nothing when cache is None)."""
    if cache is None:
        yield
        return
    if not hasattr(transformer, "main_layers_strategy"):
        raise TypeError(f"{type(transformer).__name__} has no main_layers_strategy seam; step caching needs "
                        "omnigen2_fp8.OmniGen2Transformer")
    previous = transformer.main_layers_strategy
    transformer.main_layers_strategy = cache
    try:
        yield
    finally:
        transformer.main_layers_strategy = previous


@dataclass
class _TeaBranch:
    accumulated: float = 0.0
    previous_modulated: torch.Tensor | None = None
    previous_residual: torch.Tensor | None = None


class TeaCache(StepCache):
    """TeaCache: skip the stack while the accumulated rescaled input change stays below the threshold."""

    config: TeaCacheConfig

    def start(self, num_steps: int) -> None:
        super().start(num_steps)
        self._branches: dict[str, _TeaBranch] = {}
        self._pending: tuple[str, int] | None = None

    def begin_call(self, branch: str, step_index: int) -> None:
        self._pending = (branch, step_index)

    def __call__(self, stack: MainStack, hidden: torch.Tensor) -> torch.Tensor:
        if self._pending is None:
            raise RuntimeError("TeaCache: call begin_call(branch, step_index) before each transformer call")
        (branch, step), self._pending = self._pending, None
        state = self._branches.setdefault(branch, _TeaBranch())
        modulated = stack.attention_input(hidden)
        compute = self._should_compute(state, modulated, step)
        state.previous_modulated = modulated
        if compute:
            out = stack(hidden) if self.stack_graphs is None else stack.replayed(self.stack_graphs, hidden)
            state.previous_residual = out - hidden
        else:
            out = hidden + state.previous_residual
        self._stats.calls.append(CallRecord(branch, step, compute))
        return out

    def _should_compute(self, state: _TeaBranch, modulated: torch.Tensor, step: int) -> bool:
        # A branch's first call has nothing to compare with (the official code fails there when CFG starts late).
        if step in (0, self.num_steps - 1) or state.previous_modulated is None:
            state.accumulated = 0.0
            return True
        previous = state.previous_modulated
        change = ((modulated - previous).abs().mean() / previous.abs().mean()).item()
        state.accumulated += float(np.polyval(self.config.rescale_coefficients, change))
        if state.accumulated < self.config.rel_l1_thresh:
            return False
        state.accumulated = 0.0
        return True


@dataclass
class _TaylorBranch:
    calls: int = 0  # the official per-branch `step`
    since_full: int = 0  # calls since the last full one (the official `cache_counter`)
    last_full: int = 0
    previous_full: int = 0
    orders: int = 0  # derivative orders held, 0th included
    full: bool = True  # the coming call's plan
    first: bool = True  # the coming call is the branch's first of this run
    factors: torch.Tensor | None = None  # [max_order + 1, N, L, D], model dtype
    coefficients: torch.Tensor | None = None  # [3, max_order + 1] float32: Taylor weights, divisors, keep flags
    host_coefficients: list[float] = field(default_factory=list)


class TaylorSeer(StepCache):
    """TaylorSeer: a fixed per-branch schedule of full calls; the others extrapolate the stack's output."""

    config: TaylorSeerConfig

    def __init__(self, config: TaylorSeerConfig):
        self._branches: dict[str, _TaylorBranch] = {}  # buffers outlive runs: graphs hold their addresses
        super().__init__(config)

    def start(self, num_steps: int) -> None:
        super().start(num_steps)
        for name, old in self._branches.items():
            self._branches[name] = _TaylorBranch(factors=old.factors, coefficients=old.coefficients)
        self._planned: _TaylorBranch | None = None
        self._planned_branch = ""

    def begin_call(self, branch: str, step_index: int) -> None:
        c = self.config
        state = self._branches.setdefault(branch, _TaylorBranch())
        state.first = state.calls == 0
        state.full = state.calls < c.first_enhance or state.since_full == c.fresh_threshold - 1
        order_count = state.orders
        if state.full:
            state.since_full = 0
            state.previous_full, state.last_full = state.last_full, state.calls
            derive = state.calls > c.first_enhance - 2
            state.orders = 1 + (min(state.orders, c.max_order) if derive else 0)
            order_count = state.orders
        else:
            state.since_full += 1
        state.host_coefficients = self._coefficients(state, order_count)
        if state.coefficients is not None and not state.first:
            _load(state.coefficients, state.host_coefficients)
        self._stats.calls.append(CallRecord(branch, step_index, state.full))
        state.calls += 1
        self._planned, self._planned_branch = state, branch

    def _coefficients(self, state: _TaylorBranch, order_count: int) -> list[float]:
        """Rows: Taylor weights x^i / i!, divisors of the new differences, keep flags (0 ends the series)."""
        k = self.config.max_order + 1
        x = state.calls - state.last_full
        weights = [x ** i / math.factorial(i) if i < order_count and not state.full else 0.0 for i in range(k)]
        distance = max(state.last_full - state.previous_full, 1)
        divisors = [float(distance)] * k
        keep = [1.0 if state.full and i + 1 < order_count else 0.0 for i in range(k)]
        return weights + divisors + keep

    def __call__(self, stack: MainStack, hidden: torch.Tensor) -> torch.Tensor:
        state = self._planned
        if state is None:
            raise RuntimeError("TaylorSeer: call begin_call(branch, step_index) before each transformer call")
        if state.first:
            self._prepare_buffers(state, hidden)
        elif state.factors.shape[1:] != hidden.shape:
            raise ValueError(f"TaylorSeer: this branch's joint sequence changed shape within one run "
                             f"({tuple(state.factors.shape[1:])} -> {tuple(hidden.shape)}); start() a new run")
        if not state.full:
            return self._extrapolate(state)
        out = stack(hidden)
        self._store(state, out)
        return out

    def _prepare_buffers(self, state: _TaylorBranch, hidden: torch.Tensor) -> None:
        shape = (self.config.max_order + 1, *hidden.shape)
        f = state.factors
        if f is None or f.shape != shape or f.dtype != hidden.dtype or f.device != hidden.device:
            state.factors = torch.zeros(shape, dtype=hidden.dtype, device=hidden.device)
            state.coefficients = torch.zeros(3, shape[0], dtype=torch.float32, device=hidden.device)
        else:
            state.factors.zero_()  # a previous run's values must not leak in (0 * inf would)
        _load(state.coefficients, state.host_coefficients)

    @staticmethod
    def _store(state: _TaylorBranch, out: torch.Tensor) -> None:
        """Order 0 = out; order i+1 = (order i now - order i before) / calls between the two full calls."""
        factors, divisors, keep = state.factors, state.coefficients[1], state.coefficients[2]
        new = out
        for i in range(factors.shape[0] - 1):
            higher = ((new - factors[i]).float() / divisors[i] * keep[i]).to(factors.dtype)
            factors[i].copy_(new)
            new = higher
        factors[-1].copy_(new)

    @staticmethod
    def _extrapolate(state: _TaylorBranch) -> torch.Tensor:
        """sum_i order_i * x^i / i!, summed in float32."""
        factors, weights = state.factors, state.coefficients[0]
        total = factors[0].float() * weights[0]
        for i in range(1, factors.shape[0]):
            total = total + factors[i].float() * weights[i]
        return total.to(factors.dtype)

    def graph_key(self) -> Hashable | None:
        state = self._planned
        if state is None or state.first or state.factors is None:
            return None  # the first call of a run (re)allocates and zeroes the buffers: always eager
        return (id(self), self._planned_branch, state.full, state.factors.data_ptr(),
                state.coefficients.data_ptr())


def _load(target: torch.Tensor, values: list[float]) -> None:
    """Copy per-call numbers to the device without waiting for it (pinned host memory on CUDA)."""
    host = torch.tensor(values, dtype=torch.float32).view_as(target)
    if target.is_cuda:
        host = host.pin_memory()
    target.copy_(host, non_blocking=target.is_cuda)
