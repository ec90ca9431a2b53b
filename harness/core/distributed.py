"""One process or many: a `Shard` says which part of the work this process does, and per-rank record files merge back.

Under torchrun (or any env:// launcher with WORLD_SIZE > 1) each process joins a torch.distributed process group
and works on its own device, cuda:LOCAL_RANK (or the CPU). The group only carries barriers and small Python objects,
so it is gloo (TCP, on the CPU) on GPUs too: no NCCL communicator to start, and no NCCL buffers in GPU memory. A
single process is a shard of a world of one, so the same code runs either way: `shard.take(items)` is every item for
one process and every world_size-th item (starting at its rank) for one of several; `barrier` and `gather` are no-ops
or their collective.

Records: each rank appends to its own per-rank file (`records.RecordSink`); after a barrier, one process folds them
into the shared files with `merge_rank_files`, in an order the caller supplies (this module knows no record format).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import torch
import torch.distributed as dist

from harness.core.records import RANK_DIR, read_jsonl, write_text_atomic

T = TypeVar("T")
_RANK_FILE = re.compile(r"^(?P<stem>.+)\.rank(?P<rank>\d+)(?P<suffix>\.[^.]+)$")
OrderKey = Callable[[Path], Callable[[dict], Any]]


class DistributedSetupError(RuntimeError):
    """torchrun's environment or the requested device cannot form the process group; the message says the fix."""


@dataclasses.dataclass(frozen=True)
class Shard:
    """This process's place in the work: rank `rank` of `world_size`, computing on `device`.

    backend: the process-group backend ("gloo"), None for a single process that joined no group.
    """

    rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    backend: str | None = None
    local_rank: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside 0..{self.world_size - 1}")

    # ------------------------------------------------------------------------------------------- construction
    @classmethod
    def single(cls, device: str | None = None) -> "Shard":
        """The whole work in this process, on `device` (default: cuda when a GPU is visible, else cpu)."""
        return cls(device=device or ("cuda" if torch.cuda.is_available() else "cpu"))

    @classmethod
    def from_env(cls, requested_device: str | None = None, timeout_s: float = 3600.0,
                 launch_hint: str = "torchrun --nproc-per-node N -m <module> ...") -> "Shard":
        """Join the process group the launcher described in the environment (RANK, WORLD_SIZE, LOCAL_RANK,
        MASTER_ADDR, MASTER_PORT); on CUDA also make cuda:LOCAL_RANK this process's current device.

        timeout_s: the longest wait at a collective (the slowest rank's extra work), not the run's length.
        """
        missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise DistributedSetupError(f"{', '.join(missing)} not set: start several ranks with `{launch_hint}`")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device, backend = rank_device(requested_device, local_rank)
        if device.startswith("cuda"):
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, init_method="env://", timeout=_dt.timedelta(seconds=timeout_s))
        return cls(dist.get_rank(), dist.get_world_size(), device, backend, local_rank)

    # ---------------------------------------------------------------------------------------------- the work
    @property
    def is_main(self) -> bool:
        """The rank that writes shared files and merges (rank 0)."""
        return self.rank == 0

    def take(self, items: Sequence[T]) -> list[T]:
        """This rank's share of `items`: every world_size-th item starting at `rank` (all of them for one rank)."""
        return list(items[self.rank::self.world_size])

    def main_first(self, make: Callable[[], T]) -> T:
        """`make()` on the main rank first, then on the others: for work that writes shared files (synthetic models,
        data) which the other ranks then reuse instead of writing them concurrently."""
        if self.is_main:
            value = make()
            self.barrier()
            return value
        self.barrier()
        return make()

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for in a single process)."""
        if self._in_group():
            dist.barrier()

    def gather(self, obj: T) -> list[T]:
        """Every rank's `obj`, in rank order, on every rank (also a barrier)."""
        if not self._in_group():
            return [obj]
        everyone: list = [None] * self.world_size
        dist.all_gather_object(everyone, obj)
        return everyone

    def close(self, finished: bool = True) -> None:
        """Leave the process group (a single process has none). finished: this rank's work ended normally, so it
        first waits at a barrier for every rank to get here, then tears its gloo connections down. Without it a rank
        leaving while the main rank still worked was aborted at exit ("terminate called without an active
        exception") in 3 of about 30 sharded CPU test runs, none in 9 loaded runs with it. After an error it leaves
        at once: the other ranks may never get here."""
        if self._in_group():
            if finished:
                dist.barrier()
            dist.destroy_process_group()

    def label_logs(self) -> None:
        """Prefix every log line with this process's rank (only worth it with several ranks)."""
        if self.world_size > 1:
            for handler in logging.getLogger().handlers:
                handler.setFormatter(logging.Formatter(
                    f"%(levelname)s [rank {self.rank}/{self.world_size}] %(name)s: %(message)s"))

    def _in_group(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()


def launched_with_several_ranks() -> bool:
    """True under torchrun (or any env:// launcher) with WORLD_SIZE > 1; a single process never joins a group."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError as err:
        raise DistributedSetupError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer; launch with "
                                    "torchrun, which sets it") from err


def rank_device(requested: str | None, local_rank: int) -> tuple[str, str]:
    """(device, backend) of one rank: ("cuda:LOCAL_RANK", "gloo") for --device cuda (default when a GPU is
    visible), ("cpu", "gloo") for --device cpu. gloo on GPUs too: the group carries only barriers and small objects."""
    requested = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cpu":
        return "cpu", "gloo"
    if requested != "cuda":
        raise DistributedSetupError(
            f"--device {requested} under torchrun: every rank uses its own GPU, cuda:LOCAL_RANK. Pass --device cuda "
            "(choose the GPUs with CUDA_VISIBLE_DEVICES) or --device cpu.")
    if not torch.cuda.is_available():
        raise DistributedSetupError("--device cuda under torchrun, but this machine has no visible CUDA GPU; "
                                    "pass --device cpu to shard over CPU processes (gloo backend)")
    if local_rank >= torch.cuda.device_count():
        raise DistributedSetupError(
            f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) are visible: use "
            f"--nproc-per-node {torch.cuda.device_count()} or fewer (one process per GPU)")
    return f"cuda:{local_rank}", "gloo"


# ------------------------------------------------------------------------------------------------------ merging
def merge_rank_files(folder: str | Path, order_key: OrderKey) -> dict[str, int]:
    """Fold every per-rank JSONL file of `folder`/_ranks into its shared file in `folder`; returns
    {shared file: records added}. Removes the per-rank files, and the _ranks folder once empty.

    order_key(shared file) -> key(record): new records are sorted by it (stably: rank order, then writing order,
    within equal keys) and go after the shared file's existing records. A record already in the shared file is not
    added twice, so a merge interrupted between writing and deleting is harmless. Run by one process while no rank
    appends.
    """
    ranks = Path(folder) / RANK_DIR
    added = {}
    for shared, parts in _rank_files(ranks).items():
        added[str(shared)] = _merge_into(shared, parts, order_key(shared))
    if ranks.is_dir() and not any(ranks.iterdir()):
        ranks.rmdir()
    return added


def _rank_files(ranks: Path) -> dict[Path, list[Path]]:
    """{shared file: its per-rank files in rank order} for one _ranks folder."""
    found: dict[Path, list[tuple[int, Path]]] = {}
    for part in ranks.glob("*.rank*.*") if ranks.is_dir() else ():
        m = _RANK_FILE.match(part.name)
        if m:
            found.setdefault(ranks.parent / f"{m['stem']}{m['suffix']}", []).append((int(m["rank"]), part))
    return {shared: [p for _, p in sorted(parts)] for shared, parts in found.items()}


def _merge_into(shared: Path, parts: Sequence[Path], key: Callable[[dict], Any]) -> int:
    lines = [_line(r) for r in read_jsonl(shared)]  # a torn last line (crash mid-append) is dropped here
    seen = set(lines)
    new = [r for part in parts for r in read_jsonl(part)]
    new.sort(key=key)
    fresh = [line for line in map(_line, new) if line not in seen and not seen.add(line)]
    if fresh:
        write_text_atomic(shared, "".join(line + "\n" for line in lines + fresh))
    for part in parts:
        part.unlink()
    return len(fresh)


def _line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False)  # what records.append_jsonl writes for a JSON-born record
