"""How the transformer runs (execution modes), and the one chooser every command line uses for its default.

    eager            plain PyTorch
    compile          regional torch.compile of the DiT's blocks (`OmniGen2Transformer.compile_blocks`)
    graphs           each CFG branch's transformer pass replayed as a CUDA graph (`cuda_graphs.CudaGraphForward`)
    compile+graphs   both: compiled blocks, captured and replayed

`auto` is the fastest measured mode on CUDA, compile+graphs (results/perf_recipes_h200_modes_512.json: at the 512
GEdit shape FP8 over BF16 is 0.74x eager, 0.74x compiled, 1.31x with graphs, 1.39x with both), and eager elsewhere.
A TeaCache arm decides inside each pass whether its main stack runs, so under graphs it replays the stack of each
computed call as a graph (`caching.TeaCache`, `cuda_graphs.GraphedCalls`) and runs the rest of the pass eagerly.
An arm that cannot be replayed at all (offloaded weights move between passes) gets compile alone under `auto`, with
the reason kept in its `ModeChoice`; an explicit graphs mode it cannot run is refused with the fix.
`omnigen2_fp8.edit` and `harness.profile` decide through these functions; `harness.gedit` too with --compile, and by
default replays CUDA graphs without compile, because compiled kernels depend on the shapes a process compiles for
first and a sharded evaluation must give the same edits on any number of GPUs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


EAGER_MODE, COMPILE_MODE, GRAPHS_MODE, COMPILE_GRAPHS_MODE = "eager", "compile", "graphs", "compile+graphs"
AUTO_MODE = "auto"
MODES = (EAGER_MODE, COMPILE_MODE, GRAPHS_MODE, COMPILE_GRAPHS_MODE)
CUDA_DEFAULT_MODE = COMPILE_GRAPHS_MODE
OFFLOAD_REASON = "offloaded weights move between stages, and a captured CUDA graph holds their GPU addresses"


@dataclass(frozen=True)
class ModeChoice:
    """The concrete mode of one arm, what was asked for, and why it differs from the default (None: it does not).

    mode: one of MODES; requested: "auto" or one of MODES; fallback_reason: why `auto` could not give
    CUDA_DEFAULT_MODE on CUDA (e.g. a TeaCache step cache).
    """

    mode: str
    requested: str = AUTO_MODE
    fallback_reason: str | None = None

    @property
    def compile(self) -> bool:
        return self.mode.startswith("compile")

    @property
    def cuda_graphs(self) -> bool:
        return self.mode.endswith("graphs")

    def pipeline_flags(self) -> dict[str, bool]:
        """The `OmniGen2Pipeline` keyword arguments of this mode: {"compile": ..., "cuda_graphs": ...}."""
        return {"compile": self.compile, "cuda_graphs": self.cuda_graphs}

    def describe(self) -> str:
        """The mode and, when it fell back, why: e.g. 'compile (no CUDA graphs: offloaded weights ...)'."""
        return self.mode + (f" (no CUDA graphs: {self.fallback_reason})" if self.fallback_reason else "")

    def to_dict(self) -> dict:
        return {"mode": self.mode, "requested": self.requested, "fallback_reason": self.fallback_reason}


def mode_name(compile: bool, cuda_graphs: bool) -> str:
    """The mode of a pair of pipeline flags (compile=True, cuda_graphs=True -> 'compile+graphs')."""
    return {(False, False): EAGER_MODE, (True, False): COMPILE_MODE, (False, True): GRAPHS_MODE,
            (True, True): COMPILE_GRAPHS_MODE}[(bool(compile), bool(cuda_graphs))]


def graphs_blocker(offload: bool = False) -> str | None:
    """Why this arm's passes cannot be replayed as CUDA graphs (None: they can), whatever the device."""
    return OFFLOAD_REASON if offload else None


def choose_mode(requested: str, device: str | torch.device, offload: bool = False) -> ModeChoice:
    """The concrete mode of an arm: `auto` is CUDA_DEFAULT_MODE on CUDA (compile alone, with the reason, when
    `graphs_blocker` says graphs cannot work) and eager elsewhere; an explicit mode is kept, and a graphs mode that
    cannot work raises ValueError naming the fix (before any model loads)."""
    if requested not in (AUTO_MODE, *MODES):
        raise ValueError(f"unknown mode {requested!r}; choose one of {[AUTO_MODE, *MODES]}")
    cuda = torch.device(device).type == "cuda"
    blocker = graphs_blocker(offload)
    if requested == AUTO_MODE:
        if not cuda:
            return ModeChoice(EAGER_MODE, AUTO_MODE)
        return ModeChoice(COMPILE_MODE, AUTO_MODE, blocker) if blocker else ModeChoice(CUDA_DEFAULT_MODE, AUTO_MODE)
    if requested.endswith("graphs"):
        if offload or not cuda:
            raise ValueError(f"--mode {requested} needs CUDA and no --offload (graphs hold the weights' GPU "
                             "addresses); use --mode compile or --eager")
    return ModeChoice(requested, requested)


def resolve_mode(mode: str, device: str | torch.device, offload: bool = False) -> str:
    """`choose_mode(...).mode`: the concrete mode name."""
    return choose_mode(mode, device, offload).mode
