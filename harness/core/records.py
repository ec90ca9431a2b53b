"""Run provenance and crash-safe result files.

Every result this harness writes carries a manifest (command, git revision, device, versions, date, whether the
weights were synthetic), and every file is written to a temporary name and renamed (`atomic_output`, the one
atomic writer: JSON, text, CSV, PNG and parquet all go through it), so an interrupted run never leaves a
half-written result behind. Per-sample records are JSONL lines appended through a `RecordSink`, which writes the
shared file in a single process and its per-rank twin (`rank_path`) inside a process group of several ranks.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

REPO_ROOT = Path(__file__).resolve().parents[2]
RANK_DIR = "_ranks"

log = logging.getLogger("harness.records")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` for any writer (PIL, pandas, datasets, open()); when the block ends
    without an error the file is fsync'd and renamed onto `path`, otherwise it is removed.

    The temporary name (`.<name>.<random>.tmp`) is unique, so concurrent writers of one path never share it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:  # writers such as PIL close without fsync: the rename must follow the data
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())  # mkstemp makes files owner-only; results are shared like any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def default_file_mode() -> int:
    """The mode `open()` gives a new file under the current umask (0o666 minus the umask bits)."""
    mask = os.umask(0)  # the only portable way to read the umask is to set it; restored at once
    os.umask(mask)
    return 0o666 & ~mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder and an atomic rename."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON (keys in insertion order), atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line and flush it to disk (a crash loses at most the line being written).

    A torn last line left by such a crash is cut off first (and logged), so the new record starts on a line of
    its own instead of being glued to the fragment.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_torn_tail(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False, default=_json_default) + "\n")
        f.flush()
        os.fsync(f.fileno())


def repair_torn_tail(path: str | os.PathLike, chunk_bytes: int = 1 << 16) -> int:
    """Truncate a JSONL file after its last newline when its final line is incomplete; returns the bytes dropped
    (0 when the file is missing, empty or ends with a newline)."""
    path = Path(path)
    if not path.is_file():
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        keep, end = 0, size  # scan backwards for the last newline
        while end > 0:
            start = max(0, end - chunk_bytes)
            f.seek(start)
            block = f.read(end - start)
            cut = block.rfind(b"\n")
            if cut != -1:
                keep = start + cut + 1
                break
            end = start
        f.seek(keep)
        fragment = f.read(min(size - keep, 120))
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    log.warning("%s: cut off a torn last line (%d bytes, from an interrupted write: %r...) before appending "
                "(the interrupted record is dropped; a resumed run redoes it)", path, size - keep,
                fragment[:60].decode("utf-8", "replace"))
    return size - keep


class RankInfo(Protocol):
    """What a sink needs to know about its process (`harness.core.distributed.Shard` is one)."""

    rank: int
    world_size: int


def rank_path(path: str | os.PathLike, rank: int) -> Path:
    """`<dir>/<stem><suffix>` -> `<dir>/_ranks/<stem>.rank<NNN><suffix>`: where rank `rank` appends the records of
    the shared file `path` (`harness.core.distributed.merge_rank_files` folds them back)."""
    path = Path(path)
    return path.parent / RANK_DIR / f"{path.stem}.rank{rank:03d}{path.suffix}"


class RecordSink:
    """Appends JSON records for the shared file `path`: to `path` itself in a single process, to its per-rank twin
    (`rank_path`) when `shard` has several ranks, so ranks never append to one file concurrently."""

    def __init__(self, path: str | os.PathLike, shard: RankInfo | None = None):
        self.shared = Path(path)
        several = shard is not None and shard.world_size > 1
        self.path = rank_path(self.shared, shard.rank) if several else self.shared

    def append(self, record: dict) -> None:
        """Append one record as a JSON line, flushed to disk (see `append_jsonl`)."""
        append_jsonl(self.path, record)

    def __repr__(self) -> str:
        return f"RecordSink({str(self.path)!r})"


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Yield the records of a JSONL file; a torn last line (from a crash mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue  # torn final line from an interrupted append
            raise ValueError(f"{path}: line {i + 1} is not valid JSON; the file is corrupt (delete the line to resume)")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def git_revision(repo: Path = REPO_ROOT) -> str | None:
    """The current commit, with '-dirty' when the work tree has uncommitted changes; None outside a checkout.

    A copy of the tree without .git (a remote GPU box) can pass the revision in OMNIGEN2_FP8_GIT_REVISION.
    """
    if os.environ.get("OMNIGEN2_FP8_GIT_REVISION"):
        return os.environ["OMNIGEN2_FP8_GIT_REVISION"]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_info(device: str | None = None) -> dict:
    """Describe the accelerator (or CPU) a run used: name, capability, memory, driver, CUDA and torch versions."""
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    use_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if not use_cuda:
        info.update(device="cpu", device_name=platform.processor() or platform.machine())
        return info
    idx = torch.device(device or "cuda").index or 0
    props = torch.cuda.get_device_properties(idx)
    info.update(
        device=f"cuda:{idx}",
        device_name=props.name,
        compute_capability=f"{props.major}.{props.minor}",
        total_memory_gib=round(props.total_memory / 2**30, 2),
        driver=_nvidia_driver_version(),
    )
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    return info


def _nvidia_driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def package_versions(names: Iterable[str] = ("torch", "diffusers", "transformers", "triton", "datasets",
                                             "safetensors", "qwen-vl-utils")) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def run_manifest(*, synthetic: str | bool | None, device: str | None = None, extra: dict | None = None) -> dict:
    """Provenance recorded with every result: what ran, where, on which code, with which weights.

    `synthetic` is the synthetic-weights flag of the models used ("tiny", "full", or False for real weights);
    anything but False makes the result say its quality numbers are meaningless.
    """
    manifest = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "argv": list(sys.argv),
        "cwd": os.getcwd(),
        "git_revision": git_revision(),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_info(device),
        "packages": package_versions(),
        "synthetic_weights": synthetic or False,
    }
    if synthetic:
        manifest["warning"] = SYNTHETIC_WARNING
    if extra:
        manifest.update(extra)
    return manifest


SYNTHETIC_WARNING = ("SYNTHETIC WEIGHTS: models were built with random weights; latency and memory are real, "
                     "but every image and every quality score from this run is meaningless.")
TEACACHE_SYNTHETIC_NOTE = ("TeaCache decides from the model's own activations: on random (synthetic) weights its skip "
                           "rate, and so its speed, is not representative of the real model")
TAYLORSEER_SYNTHETIC_NOTE = ("TaylorSeer's schedule does not depend on the weights: its skip rate and speed on "
                             "synthetic weights are real")


def step_cache_synthetic_notes(methods) -> list[str]:
    """What a synthetic run must say about the step-cache methods among `methods` ("teacache", "taylorseer")."""
    methods = set(methods)
    return ([TEACACHE_SYNTHETIC_NOTE] if "teacache" in methods else []) + (
        [TAYLORSEER_SYNTHETIC_NOTE] if "taylorseer" in methods else [])
