"""Finding and reading checkpoint folders: local folders, top-level checkpoints, HF hub ids; safetensors shards;
the SYNTHETIC.json marker of random-weight folders.

Errors say what was looked for and where, so a wrong path or an offline machine is a one-line fix.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable

import torch
from safetensors import safe_open
from safetensors.torch import save_file


class CheckpointNotFoundError(FileNotFoundError):
    """A checkpoint folder, file or hub repository could not be found."""


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not fit the model built from its config."""


SYNTHETIC_MARKER = "SYNTHETIC.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_component_folder(path_or_hub_id: str | os.PathLike, component: str, marker: str = "config.json") -> Path:
    """The folder holding `component` (e.g. "transformer"): `path` itself, `path/component`, or a hub download.

    `marker` is a file that must exist in the component folder.
    """
    path = Path(path_or_hub_id).expanduser()
    looked_at = []
    for candidate in (path / component, path):
        looked_at.append(candidate / marker)
        if (candidate / marker).is_file():
            return candidate
    if path.exists():
        raise CheckpointNotFoundError(
            f"{path} is not a {component} checkpoint: none of {', '.join(map(str, looked_at))} exists. "
            f"Pass the top-level checkpoint folder (with a {component}/ subfolder) or the {component}/ folder itself.")
    return download_from_hub(str(path_or_hub_id), component, looked_at)


def download_from_hub(repo_id: str, component: str | None, looked_at: Iterable[Path] = ()) -> Path:
    """Snapshot `repo_id` from the HF hub (only `component/` when given) and return the component folder."""
    looked = ", ".join(map(str, looked_at)) or repo_id
    if not _HUB_ID.match(repo_id):
        raise CheckpointNotFoundError(f"no checkpoint at {looked}, and {repo_id!r} is not a hub id (owner/name). "
                                      "Pass an existing local folder or a hub id such as OmniGen2/OmniGen2.")
    from huggingface_hub import snapshot_download

    patterns = [f"{component}/*", "model_index.json"] if component else None
    try:
        root = Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as err:  # the hub raises many types (offline, 404, auth); all mean "not available here"
        raise CheckpointNotFoundError(
            f"no local folder at {looked}, and the hub repository {repo_id!r} could not be fetched "
            f"({type(err).__name__}: {err}). Download it where the hub is reachable "
            f"(huggingface-cli download {repo_id} --local-dir DIR) and pass DIR.") from err
    folder = root / component if component else root
    if not folder.is_dir():
        raise CheckpointNotFoundError(f"hub repository {repo_id!r} has no {component}/ folder")
    return folder


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointNotFoundError(f"missing {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the checkpoint is corrupt, download it again") from err


def safetensors_files(folder: Path, weights_name: str = "diffusion_pytorch_model") -> list[Path]:
    """The weight files of a folder: one `<name>.safetensors`, or the shards listed in `<name>.safetensors.index.json`."""
    index = folder / f"{weights_name}.safetensors.index.json"
    single = folder / f"{weights_name}.safetensors"
    if index.is_file():
        shards = sorted(set(read_json(index)["weight_map"].values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise CheckpointNotFoundError(f"{index} lists shards that are missing: {missing}")
        return [folder / s for s in shards]
    if single.is_file():
        return [single]
    raise CheckpointNotFoundError(f"no weights in {folder}: expected {single.name} or {index.name}")


def check_safetensors_file(path: str | os.PathLike) -> None:
    """Raise ValueError naming `path` when it is not a complete safetensors file (empty, truncated, garbage).

    Reads only the header (8-byte length + JSON) and the file size: cheap enough to run on every file before any
    weight is loaded. safetensors' own errors ("MetadataIncompleteBuffer", "HeaderTooLarge") do not name the file.
    """
    path = Path(path)
    size = path.stat().st_size
    fix = "the file is damaged or incomplete; download it again"
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is not a safetensors file ({size} bytes); {fix}")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise ValueError(f"{path} is not a safetensors file (header of {n} bytes in a {size}-byte file); {fix}")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} has an unreadable safetensors header ({err}); {fix}") from err
    if not isinstance(header, dict):
        raise ValueError(f"{path} has an unreadable safetensors header; {fix}")
    ends = [v["data_offsets"][1] for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and len(v.get("data_offsets", ())) == 2]
    if ends and 8 + n + max(ends) > size:
        raise ValueError(f"{path} is truncated: its header needs {8 + n + max(ends)} bytes, the file has {size}; {fix}")


def load_tensors(files: list[Path], device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Read every tensor of `files` onto `device`, cast floating tensors to `dtype` (FP8 tensors keep theirs).

    One tensor at a time goes from the (memory-mapped) file to `device` and is cast there: the model never exists
    as a whole on the CPU, and a float32 checkpoint is cast to bf16 by the GPU rather than by the CPU.
    """
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        check_safetensors_file(file)
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():
                t = f.get_tensor(name).to(device)
                if dtype is not None and t.is_floating_point() and t.element_size() > 1:
                    t = t.to(dtype)
                tensors[name] = t
    return tensors


def parse_size(size: int | str) -> int:
    """Bytes from 5000000, "5GB", "500MB"."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)\s*", size, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"cannot read size {size!r}; write it like '5GB' or '500MB'")
    unit = match.group(2).upper().replace("I", "")
    return int(float(match.group(1)) * {"KB": 10**3, "MB": 10**6, "GB": 10**9}[unit])


def save_tensors_sharded(tensors: dict[str, torch.Tensor], folder: Path, weights_name: str = "diffusion_pytorch_model",
                         max_shard_size: int | str = "5GB", metadata: dict | None = None) -> list[Path]:
    """Write tensors as one safetensors file, or as shards plus an index when larger than `max_shard_size`."""
    folder.mkdir(parents=True, exist_ok=True)
    limit = parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = t.detach().contiguous().cpu()
        size += nbytes
    meta = {"format": "pt", **(metadata or {})}
    if len(shards) == 1:
        path = folder / f"{weights_name}.safetensors"
        save_file(shards[0], str(path), metadata=meta)
        return [path]
    paths, weight_map = [], {}
    for i, shard in enumerate(shards, start=1):
        path = folder / f"{weights_name}-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path), metadata=meta)
        paths.append(path)
        weight_map.update({name: path.name for name in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / f"{weights_name}.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return paths


def check_state_dict(expected: dict[str, torch.Size], found: dict[str, torch.Tensor], where: Path | str) -> None:
    """Raise CheckpointMismatchError naming missing / unexpected tensors and shape mismatches."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): {_preview(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): {_preview(unexpected)}")
    for name in sorted(set(expected) & set(found)):
        if tuple(found[name].shape) != tuple(expected[name]):
            problems.append(f"shape mismatch for {name}: checkpoint has {tuple(found[name].shape)}, "
                            f"the config expects {tuple(expected[name])}")
    if problems:
        raise CheckpointMismatchError(f"the weights in {where} do not match its config.json: " + "; ".join(problems)
                                      + ". Check that config.json and the safetensors files come from the same model.")


# ---------------------------------------------------------------------------------------------------------------
# The SYNTHETIC.json marker: a fact about a checkpoint folder, read by every loader


def mark_synthetic(folder: str | os.PathLike, **info) -> Path:
    """Write the SYNTHETIC.json marker: this folder holds random weights, not a trained model."""
    path = Path(folder) / SYNTHETIC_MARKER
    data = {"synthetic": True, "note": "random weights, not a trained model: no quality measured on it means anything",
            **info}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def read_synthetic_marker(folder: str | os.PathLike) -> dict | None:
    """The SYNTHETIC.json content of `folder` (or of its parent, for a component folder), None when absent."""
    folder = Path(folder)
    for candidate in (folder / SYNTHETIC_MARKER, folder.parent / SYNTHETIC_MARKER):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    return None


def _preview(names: list[str], n: int = 6) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names) - n} more)" if len(names) > n else "")
