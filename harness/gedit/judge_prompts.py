"""Judge prompt sets: the project's own rubric (default) and the official VIEScore templates read at run time.

Both sets ask for the same thing: two 0-10 scores as JSON {"score": [a, b], "reasoning": "..."}; SC judges a
(source, edited) pair against the instruction (editing success, absence of over-editing), PQ judges the edited
image alone (naturalness, absence of artifacts). The VIEScore text is never stored in this repository: it is read
from a file or installed package the user names and accepted only if its SHA-256 matches the published value.
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
from pathlib import Path

INSTRUCTION_PLACEHOLDER = "<instruction>"

# SHA-256 of the assembled official templates (UTF-8, placeholder not substituted); see shared/REFERENCE.md s.4.
VIESCORE_SC_SHA256 = "8f529562c2f89f8db51a3f7cc4d487686f676909c21010b67b0e65ec78150de5"
VIESCORE_PQ_SHA256 = "2473ff2c7406e06545c5c039ceb039ff2604ebacf150868a48f0bf07c9e733b0"
# Which module-level strings form each official template, joined with "\n" in this order.
VIESCORE_SC_PARTS = ("context_no_delimit", "two_image_edit_rule", "tie_rule_SC")
VIESCORE_PQ_PARTS = ("context_no_delimit", "rule_PQ")
VIESCORE_MODULE = "viescore.vie_prompts"


class PromptSetError(ValueError):
    """A prompt set that cannot be found or does not match its published hash; the message says the fix."""


@dataclasses.dataclass(frozen=True)
class PromptSet:
    """Two templates; `sc` contains INSTRUCTION_PLACEHOLDER, `pq` takes no variable."""

    name: str
    sc: str
    pq: str
    origin: str

    @property
    def sha256(self) -> dict[str, str]:
        """Hashes of each template and of both together (sc, a NUL byte, pq)."""
        return {"sc": _sha256(self.sc), "pq": _sha256(self.pq), "set": _sha256(self.sc + "\0" + self.pq)}

    def sc_prompt(self, instruction: str) -> str:
        return self.sc.replace(INSTRUCTION_PLACEHOLDER, instruction)

    def pq_prompt(self) -> str:
        return self.pq

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
                           pq=_RUBRIC_INTRO + "\n\n" + _RUBRIC_PQ, origin="harness/judge_prompts.py")


# ----------------------------------------------------------------------------------------------- official VIEScore
def load_viescore_prompts(source: str | Path | None = None) -> PromptSet:
    """Assemble the official VIEScore SC/PQ templates from a user-named file (a copy of `vie_prompts.py`) or,
    with source None, from the installed `viescore` package; refuse them unless both SHA-256 values match.

    The file is read as Python source without running it: only top-level string assignments are used.
    """
    if source is None:
        spec = importlib.util.find_spec(VIESCORE_MODULE) if importlib.util.find_spec("viescore") else None
        if spec is None or spec.origin is None:
            raise PromptSetError("the VIEScore prompt set needs the official templates: pass --viescore-file PATH "
                                 "(a copy of viescore/vie_prompts.py from TIGER-AI-Lab/VIEScore) or install the "
                                 "viescore package; or use the default --prompt-set project-rubric-v1")
        path = Path(spec.origin)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise PromptSetError(f"--viescore-file {path} does not exist; point it at viescore/vie_prompts.py")
    strings = _top_level_strings(path)
    missing = [n for n in (*VIESCORE_SC_PARTS, *VIESCORE_PQ_PARTS) if n not in strings]
    if missing:
        raise PromptSetError(f"{path} defines no top-level string(s) {sorted(set(missing))}; it is not VIEScore's "
                             "vie_prompts.py (or a version with renamed parts)")
    sc = "\n".join(strings[n] for n in VIESCORE_SC_PARTS)
    pq = "\n".join(strings[n] for n in VIESCORE_PQ_PARTS)
    for label, text, expected in (("SC", sc, VIESCORE_SC_SHA256), ("PQ", pq, VIESCORE_PQ_SHA256)):
        if _sha256(text) != expected:
            raise PromptSetError(
                f"{path}: the assembled VIEScore {label} template has SHA-256 {_sha256(text)} ({len(text)} chars), "
                f"expected {expected}. This copy differs from the official text (copies inside other packages "
                "often do); use the file from TIGER-AI-Lab/VIEScore, or the default prompt set.")
    return PromptSet(name="viescore", sc=sc, pq=pq, origin=str(path))


def _top_level_strings(path: Path) -> dict[str, str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError) as err:
        raise PromptSetError(f"{path} is not readable Python source: {err}") from err
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    out[target.id] = node.value.value
    return out


def resolve_prompt_set(name: str, viescore_file: str | Path | None = None) -> PromptSet:
    """The prompt set called `name` ("project-rubric-v1" or "viescore")."""
    if name == PROJECT_RUBRIC.name:
        if viescore_file is not None:
            raise PromptSetError("--viescore-file is only used with --prompt-set viescore")
        return PROJECT_RUBRIC
    if name == "viescore":
        return load_viescore_prompts(viescore_file)
    raise PromptSetError(f"unknown prompt set {name!r}; choose {PROJECT_RUBRIC.name} (default) or viescore")
