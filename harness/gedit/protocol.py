"""Named GEdit-Bench judging protocols: which source image the judge sees, how both images are sized, how the judge
is called, and whether a run's numbers can stand beside published GEdit-Bench numbers.

- `gedit-v1` (default): upstream's current scorer (Step1X-Edit `GEdit-Bench/run_gedit_score.py`, June 2025). The
  source is the dataset's `input_image_raw`; the source and the edit are each converted to RGB and resized on their
  own to the 512x512 area at their own aspect ratio r = width / height: width = sqrt(512*512*r), height = width / r,
  both truncated to int, with PIL's default resampling.
- `gedit-v0`: the first release (`test_gedit_score.py`, May 2025). The source is the dataset's `input_image` as
  stored; the edit is converted to RGB and resized to the source's size.

Both call the judge the same way: the images before the text in one user turn, greedy decoding, 512 new tokens,
the checkpoint's generation config left active, one attempt per call (upstream's second attempt repeats the greedy
answer, so an answer it cannot read ends in a random score or an endless loop: here, a counted failure). Answers are
read by `harness.gedit.answers.parse_official_answer`; scores aggregate as in `harness.gedit.scoring`.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any

JUDGE_AREA = 512 * 512
OFFICIAL_MAX_NEW_TOKENS = 512
OFFICIAL_MAX_RETRIES = 0
OFFICIAL_PROMPT_SET = "viescore"
NOT_COMPARABLE = "NOT COMPARABLE with published GEdit-Bench numbers"


class ProtocolError(ValueError):
    """An unknown protocol name, or data a protocol cannot use; the message says the fix."""


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How GEdit-Bench judges one sample. `edit_sizing` is "own-area" (each image to JUDGE_AREA at its own aspect
    ratio) or "edit-to-source" (the edit resized to the source's size, the source untouched)."""

    name: str
    source_column: str
    edit_sizing: str
    upstream_scorer: str
    max_new_tokens: int = OFFICIAL_MAX_NEW_TOKENS
    max_retries: int = OFFICIAL_MAX_RETRIES
    decoding: str = "greedy, the checkpoint's generation config active (repetition_penalty 1.05 in Qwen2.5-VL)"
    message_layout: str = "one user turn: images first ([source, edit] for SC, [edit] for PQ), then the text"
    answer_parsing: str = "harness.gedit.answers.parse_official_answer (upstream mllm_output_to_dict rules)"

    def describe(self) -> dict:
        return dataclasses.asdict(self)


PROTOCOLS = {
    "gedit-v1": Protocol("gedit-v1", source_column="input_image_raw", edit_sizing="own-area",
                         upstream_scorer="Step1X-Edit GEdit-Bench/run_gedit_score.py (June 2025)"),
    "gedit-v0": Protocol("gedit-v0", source_column="input_image", edit_sizing="edit-to-source",
                         upstream_scorer="Step1X-Edit GEdit-Bench/test_gedit_score.py (May 2025)"),
}
DEFAULT_PROTOCOL = "gedit-v1"


def get_protocol(name: str) -> Protocol:
    """The protocol called `name`; an unknown name gets the known ones and a "did you mean"."""
    if name in PROTOCOLS:
        return PROTOCOLS[name]
    close = difflib.get_close_matches(str(name), list(PROTOCOLS), n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]}?" if close else ""
    raise ProtocolError(f"unknown protocol {name!r}.{hint} Choose --protocol {' or '.join(PROTOCOLS)} "
                        f"(default {DEFAULT_PROTOCOL})")


# ------------------------------------------------------------------------------------------------ image sizing
def area_fit_size(width: int, height: int, area: int = JUDGE_AREA) -> tuple[int, int]:
    """(width, height) in pixels of an image rescaled to `area` pixels at its own aspect ratio, as upstream computes
    it: r = width / height, w = sqrt(area * r), h = w / r (from the unrounded w), both truncated by int()."""
    ratio = width / height
    new_width = math.sqrt(area * ratio)
    new_height = new_width / ratio
    return int(new_width), int(new_height)


def judge_images(protocol: Protocol, row: dict, edited) -> tuple[Any, Any]:
    """(source, edit) PIL images exactly as the protocol shows them to the judge.

    row: a dataset row (needs `protocol.source_column`); edited: the edit as opened from disk (any mode).
    """
    if protocol.source_column not in row or row[protocol.source_column] is None:
        raise ProtocolError(f"protocol {protocol.name} judges against the dataset's {protocol.source_column!r}, "
                            "which this row lacks; use the full stepfun-ai/GEdit-Bench copy or --protocol gedit-v0")
    source, edit = row[protocol.source_column], edited.convert("RGB")
    if protocol.edit_sizing == "own-area":
        source = source.convert("RGB")
        source = source.resize(area_fit_size(*source.size))  # PIL's default resampling, as upstream
        return source, edit.resize(area_fit_size(*edit.size))
    if protocol.edit_sizing == "edit-to-source":
        return source, edit.resize(source.size)  # the source as stored (upstream reopened a PNG copy of it)
    raise ProtocolError(f"protocol {protocol.name} has an unknown edit_sizing {protocol.edit_sizing!r}")


def check_dataset_columns(protocol: Protocol, column_names) -> None:
    """Refuse, before any work, a dataset copy without the column the protocol judges against."""
    if protocol.source_column not in column_names:
        raise ProtocolError(f"protocol {protocol.name} needs the dataset column {protocol.source_column!r}, absent "
                            f"from this copy (columns: {sorted(column_names)}); download stepfun-ai/GEdit-Bench "
                            "unchanged, or pass --protocol gedit-v0 (judges `input_image`)")


# ---------------------------------------------------------------------------------------------- comparability
def comparability_problems(protocol: str, prompt_set: str, max_new_tokens: int | None, max_retries: int | None,
                           synthetic: bool | str | None = False) -> list[str]:
    """Why a run's scores cannot stand beside published GEdit-Bench numbers (empty list: they can).

    Only the judging protocol is checked here; the judge model and the sample selection are reported beside it.
    """
    problems = []
    if synthetic:
        problems.append("synthetic models or data (every score is noise)")
    if protocol not in PROTOCOLS:
        problems.append(f"protocol {protocol!r} is not an upstream GEdit-Bench protocol")
    if prompt_set != OFFICIAL_PROMPT_SET:
        problems.append(f"prompt set {prompt_set!r} instead of the official VIEScore templates")
    if max_new_tokens is not None and max_new_tokens != OFFICIAL_MAX_NEW_TOKENS:
        problems.append(f"judge max_new_tokens {max_new_tokens} instead of {OFFICIAL_MAX_NEW_TOKENS}")
    if max_retries:
        problems.append(f"{max_retries} sampled re-asks per failed call (upstream repeats its greedy answer)")
    return problems


def comparability_headline(problems: list[str]) -> str:
    """The one line every output of a run starts with when `problems` is not empty ("" otherwise)."""
    return f"{NOT_COMPARABLE}: " + "; ".join(problems) + "." if problems else ""
