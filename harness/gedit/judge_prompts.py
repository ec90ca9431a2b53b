"""Judge prompt sets: the official VIEScore templates (default, read at run time) and the project's own rubric.

Both sets ask for two 0-10 scores; SC judges a (source, edited) pair against the instruction (editing success,
absence of over-editing), PQ judges the edited image alone (naturalness, absence of artifacts). The VIEScore text is
never stored in this repository: `harness.gedit.viescore` finds it (flag, environment, cache or a pinned download)
and accepts it only if its SHA-256 values match the published ones. The rubric gives numbers that are not comparable
with published GEdit-Bench results.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from harness.gedit import viescore

INSTRUCTION_PLACEHOLDER = "<instruction>"

VIESCORE = "viescore"
PROJECT_RUBRIC_ALIASES = ("project-rubric", "project-rubric-v1")


class PromptSetError(ValueError):
    """A prompt set that cannot be found or does not match its published hash; the message says the fix."""


@dataclasses.dataclass(frozen=True)
class PromptSet:
    """Two templates; `sc` contains INSTRUCTION_PLACEHOLDER, `pq` takes no variable."""

    name: str
    sc: str
    pq: str
    origin: str
    known_sha256: dict | None = None  # set when the texts are not loaded (a score-only run needs just the identity)

    @property
    def sha256(self) -> dict[str, str]:
        """Hashes of each template and of both together (sc, a NUL byte, pq)."""
        if self.known_sha256 is not None:
            return dict(self.known_sha256)
        return {"sc": _sha256(self.sc), "pq": _sha256(self.pq), "set": _sha256(self.sc + "\0" + self.pq)}

    @property
    def has_text(self) -> bool:
        return bool(self.sc and self.pq)

    def sc_prompt(self, instruction: str) -> str:
        self._require_text()
        return self.sc.replace(INSTRUCTION_PLACEHOLDER, instruction)

    def pq_prompt(self) -> str:
        self._require_text()
        return self.pq

    def _require_text(self) -> None:
        if not self.has_text:
            raise PromptSetError(f"prompt set {self.name} was resolved without its text ({self.origin}); "
                                 "judging needs it: pass --viescore-file PATH")

    def describe(self) -> dict:
        return {"name": self.name, "origin": self.origin, "sha256": self.sha256}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------------ the project's rubric
_RUBRIC_INTRO = """You are a careful evaluator of AI-generated images. You rate images on integer scales from 0 to 10
and explain your rating briefly. Answer with one JSON object and nothing else, in exactly this form:
{"score": [first, second], "reasoning": "one or two sentences"}"""

_RUBRIC_SC = """You are shown two pictures. The first is the ORIGINAL image. The second is the EDITED image, produced
by an image editor that was asked to follow this instruction:

<instruction>

Give two integer scores:
1. first = how completely the edited image carries out the instruction.
   0 means the requested change is absent or wrong; 10 means it is fully and correctly done.
2. second = how well the edit leaves everything else alone.
   0 means the picture was changed far beyond what was asked (a different scene or subject);
   10 means only what the instruction asked for changed.
If the edited image is identical to the original, the first score must be 0. Judge the content,
not the beauty of the images."""

_RUBRIC_PQ = """You are shown one picture made by an AI image editor.

Give two integer scores:
1. first = how natural the picture looks: plausible lighting, shadows, perspective and proportions.
   0 means nothing about it looks real or coherent; 10 means it is fully convincing.
2. second = how free the picture is of defects: smears, distorted faces or hands, broken text,
   noise, blur or watermarks. 0 means the defects dominate; 10 means there are none.
Ignore whether the content matches any instruction; judge only how the picture looks."""

PROJECT_RUBRIC = PromptSet(name="project-rubric-v1", sc=_RUBRIC_INTRO + "\n\n" + _RUBRIC_SC,
                           pq=_RUBRIC_INTRO + "\n\n" + _RUBRIC_PQ, origin="harness/gedit/judge_prompts.py")


# ----------------------------------------------------------------------------------------------- official VIEScore
def load_viescore_prompts(source: str | Path | None = None, *, allow_download: bool = True) -> PromptSet:
    """The official VIEScore SC/PQ templates (hash-checked): from `source` (a copy of `vie_prompts.py`) or, with
    source None, from GEDIT_VIESCORE_FILE, the cache or a pinned download (`harness.gedit.viescore`)."""
    try:
        found = viescore.resolve_official_templates(source, allow_download=allow_download)
    except viescore.ViescoreError as err:
        raise PromptSetError(str(err)) from err
    return PromptSet(name=VIESCORE, sc=found.sc, pq=found.pq, origin=found.origin)


def viescore_identity(reason: str) -> PromptSet:
    """The official set's identity (published hashes) without its text, for stages that only read judgements."""
    return PromptSet(name=VIESCORE, sc="", pq="", origin=f"text not loaded: {reason}",
                     known_sha256={**viescore.OFFICIAL_SHA256, "set": viescore.OFFICIAL_SET_SHA256})


def resolve_prompt_set(name: str, viescore_file: str | Path | None = None, *, need_text: bool = True) -> PromptSet:
    """The prompt set called `name` ("viescore", the official default, or "project-rubric").

    need_text False: a missing official file is not an error (the identity alone is returned).
    """
    if name in PROJECT_RUBRIC_ALIASES:
        if viescore_file is not None:
            raise PromptSetError("--viescore-file is only used with --prompt-set viescore")
        return PROJECT_RUBRIC
    if name == VIESCORE:
        if need_text or viescore_file is not None:
            return load_viescore_prompts(viescore_file)
        try:  # no download just to label judgements that already exist
            return load_viescore_prompts(None, allow_download=False)
        except PromptSetError:
            return viescore_identity("this stage only reads judgements")
    raise PromptSetError(f"unknown prompt set {name!r}; choose {VIESCORE} (official, default) or project-rubric")
