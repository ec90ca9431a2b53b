"""Where the golden vectors live and how their cases are found.

The repository carries its own copy (tests/golden: the official OmniGen2 code's outputs, see the READMEs there).
OMNIGEN2_GOLDEN_DIR, when set, is the one folder searched instead; cases are found recursively, by what their
case.json describes, so further cases of the same kind dropped anywhere below it are checked too.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

GOLDEN_ROOT = Path(os.environ.get("OMNIGEN2_GOLDEN_DIR", Path(__file__).resolve().parent / "golden"))


def _cases(root: Path) -> list[tuple[Path, dict]]:
    found = []
    for case_file in sorted(root.glob("**/case.json")):
        if (case_file.parent / "io.safetensors").is_file():
            found.append((case_file.parent, json.loads(case_file.read_text())))
    return found


def transformer_cases(root: Path = GOLDEN_ROOT) -> list[Path]:
    """One transformer forward: a case folder holding `transformer/` weights and the expected outputs."""
    return [d for d, case in _cases(root) if "num_inference_steps" not in case and (d / "transformer").is_dir()]


def denoise_cases(root: Path = GOLDEN_ROOT) -> list[Path]:
    """A whole denoising loop without step caching."""
    return [d for d, case in _cases(root) if "num_inference_steps" in case and "cache" not in case]


def cached_denoise_cases(root: Path = GOLDEN_ROOT) -> list[Path]:
    """A denoising loop with the official TeaCache or TaylorSeer switched on (a `cache` entry in case.json)."""
    return [d for d, case in _cases(root) if "num_inference_steps" in case and "cache" in case]


def find_case(name: str, root: Path = GOLDEN_ROOT) -> Path:
    """The case folder called `name` anywhere below the root."""
    hits = [d for d, _ in _cases(root) if d.name == name]
    if not hits:
        raise FileNotFoundError(f"no golden case {name!r} under {root}")
    return hits[0]


def transformer_batch_call(io: dict) -> tuple:
    """The forward arguments of the `transformer_batch` case from its io.safetensors: two ragged samples (latents,
    timestep, text features, text mask, references: two for the first sample, one for the second)."""
    return ([io["latent.0"], io["latent.1"]], io["timestep"], io["text_hidden_states"], io["text_attention_mask"],
            [[io["ref.0.0"], io["ref.0.1"]], [io["ref.1.0"]]])


def scheduler_grids(root: Path = GOLDEN_ROOT) -> dict[str, list[float]]:
    grids: dict[str, list[float]] = {}
    for path in sorted(root.glob("**/scheduler_timesteps.json")):
        grids.update(json.loads(path.read_text()))
    return grids
