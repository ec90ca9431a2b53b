"""The official VIEScore judge templates, found at run time and accepted only by their published hashes.

The text is never stored in this repository. It is read, in this order, from: the file passed as `--viescore-file`;
the file named by the environment variable GEDIT_VIESCORE_FILE; the user's cache (`viescore/<commit>/` under
`$OMNIGEN2_FP8_CACHE`, else `$XDG_CACHE_HOME/omnigen2-fp8`, else `~/.cache/omnigen2-fp8`); and finally a one-time
download of `vie_prompts.py` at a pinned upstream commit into that cache (skipped when HF_HUB_OFFLINE is set).
The file is parsed as Python source and never executed: only its top-level string assignments are read.
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import http.client
import os
import urllib.request
from pathlib import Path
from typing import Sequence

from harness.core.records import write_bytes_atomic

ENV_FILE = "GEDIT_VIESCORE_FILE"
ENV_CACHE = "OMNIGEN2_FP8_CACHE"
# Upstream's names of the module-level strings; each template joins its parts with "\n" in this order.
SC_PARTS = ("_context_no_delimit", "_prompts_0shot_two_image_edit_rule", "_prompts_0shot_tie_rule_SC")
PQ_PARTS = ("_context_no_delimit", "_prompts_0shot_rule_PQ")
# SHA-256 of the assembled templates (UTF-8, "<instruction>" not substituted); shared/REFERENCE.md section 4.
OFFICIAL_SHA256 = {"sc": "8f529562c2f89f8db51a3f7cc4d487686f676909c21010b67b0e65ec78150de5",
                   "pq": "2473ff2c7406e06545c5c039ceb039ff2604ebacf150868a48f0bf07c9e733b0"}
# sha256(sc + "\0" + pq): the prompt-set identity recorded with every judgement (see judge_prompts.PromptSet).
OFFICIAL_SET_SHA256 = "df6f3e7a683d212a91623bf2705056900b946655231fbae4baa2853aa3f84f29"
MAX_DOWNLOAD_BYTES = 1 << 20
DOWNLOAD_TIMEOUT_S = 20


@dataclasses.dataclass(frozen=True)
class PinnedSource:
    """One upstream copy of `vie_prompts.py` at a fixed commit."""

    repo: str
    commit: str
    path: str

    @property
    def url(self) -> str:
        return f"https://raw.githubusercontent.com/{self.repo}/{self.commit}/{self.path}"


# Tried in order. The Step1X-Edit copy is the one GEdit-Bench imports (commit of 2025-05-22, after the benchmark's
# release); the VIEScore copy at this commit was checked to assemble to OFFICIAL_SHA256.
PINNED_SOURCES = (
    PinnedSource("stepfun-ai/Step1X-Edit", "055f808168a10e2333cd598475417b7d5f3d3ea9",
                 "GEdit-Bench/viescore/vie_prompts.py"),
    PinnedSource("TIGER-AI-Lab/VIEScore", "a35f13fa20e5930a14a1901e6659a987d43bf69b", "viescore/vie_prompts.py"),
)


class ViescoreError(ValueError):
    """The official templates cannot be found, read or verified; the message says the fix."""


@dataclasses.dataclass(frozen=True)
class OfficialTemplates:
    """The assembled SC and PQ templates and where they came from (a path or a URL)."""

    sc: str
    pq: str
    origin: str


# ---------------------------------------------------------------------------------------------- read + verify
def top_level_strings(source: str, where: str = "vie_prompts.py") -> dict[str, str]:
    """Names -> values of the module-level `NAME = "..."` assignments of Python source text (not executed)."""
    try:
        tree = ast.parse(source, filename=where)
    except SyntaxError as err:
        raise ViescoreError(f"{where} is not readable Python source: {err}") from err
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        value = node.value
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            out.update({t.id: value.value for t in targets if isinstance(t, ast.Name)})
    return out


def assemble_templates(source: str, where: str, expected: dict[str, str] = OFFICIAL_SHA256) -> OfficialTemplates:
    """SC and PQ templates from the text of a `vie_prompts.py`; refused unless both SHA-256 values match."""
    strings = top_level_strings(source, where)
    missing = sorted({n for n in (*SC_PARTS, *PQ_PARTS) if n not in strings})
    if missing:
        raise ViescoreError(f"{where} defines no top-level string(s) {missing}; it is not VIEScore's vie_prompts.py "
                            "(GEdit-Bench/viescore/vie_prompts.py in stepfun-ai/Step1X-Edit)")
    sc = "\n".join(strings[n] for n in SC_PARTS)
    pq = "\n".join(strings[n] for n in PQ_PARTS)
    for label, text in (("sc", sc), ("pq", pq)):
        digest = _sha256(text)
        if digest != expected[label]:
            raise ViescoreError(
                f"{where}: the assembled {label.upper()} template has SHA-256 {digest} ({len(text)} chars), expected "
                f"{expected[label]}. This copy differs from the official text (copies inside other packages often "
                f"do); use {PINNED_SOURCES[0].url}")
    return OfficialTemplates(sc, pq, where)


def load_file(path: str | os.PathLike, expected: dict[str, str] = OFFICIAL_SHA256) -> OfficialTemplates:
    """Templates from a local copy of `vie_prompts.py` (hash-checked)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ViescoreError(f"VIEScore prompt file {path} does not exist; point --viescore-file (or {ENV_FILE}) at "
                            "a copy of GEdit-Bench/viescore/vie_prompts.py")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ViescoreError(f"{path} is not UTF-8 text: {err}") from err
    return assemble_templates(text, str(path), expected)


# ------------------------------------------------------------------------------------------------ cache + fetch
def cache_root() -> Path:
    """The user's cache folder for this project (created on first download)."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "omnigen2-fp8"


def cached_path(source: PinnedSource, root: Path | None = None) -> Path:
    return (root or cache_root()) / "viescore" / source.commit / Path(source.path).name


def download(source: PinnedSource, root: Path | None = None, expected: dict[str, str] = OFFICIAL_SHA256,
             url: str | None = None) -> OfficialTemplates:
    """Fetch `source` (or `url` standing in for it), verify it, then store it in the cache; nothing is stored
    unless the hashes match."""
    url = url or source.url
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:  # noqa: S310  fixed https URL
        data = response.read(MAX_DOWNLOAD_BYTES + 1)
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise ViescoreError(f"{url} is larger than {MAX_DOWNLOAD_BYTES} bytes; it is not vie_prompts.py")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ViescoreError(f"{url} did not return UTF-8 text: {err}") from err
    templates = assemble_templates(text, url, expected)
    write_bytes_atomic(cached_path(source, root), data)
    return templates


def resolve_official_templates(viescore_file: str | os.PathLike | None = None, *, allow_download: bool = True,
                               sources: Sequence[PinnedSource] = PINNED_SOURCES, cache: Path | None = None,
                               expected: dict[str, str] = OFFICIAL_SHA256,
                               urls: Sequence[str] | None = None) -> OfficialTemplates:
    """The official templates from the flag, the environment, the cache or a pinned download (module docstring).

    `urls`, when given, replaces the sources' URLs one for one (tests serve a stand-in file locally).
    """
    if viescore_file is not None:
        return load_file(viescore_file, expected)
    if os.environ.get(ENV_FILE):
        return load_file(os.environ[ENV_FILE], expected)
    for source in sources:
        path = cached_path(source, cache)
        if path.is_file():
            try:
                return load_file(path, expected)
            except ViescoreError:
                path.unlink()  # a damaged or foreign cache entry: fetch it again below
    problems = []
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if allow_download and not offline:
        for i, source in enumerate(sources):
            url = urls[i] if urls is not None else source.url
            try:
                return download(source, cache, expected, url=url)
            except (OSError, ValueError, http.client.HTTPException) as err:  # offline, 404, bad text, wrong hash
                problems.append(f"{url}: {err}")
    reason = ("downloads are off (HF_HUB_OFFLINE)" if offline else "download not allowed here" if not allow_download
              else "download failed: " + " | ".join(problems))
    raise ViescoreError(
        f"the official GEdit-Bench judge prompts (VIEScore vie_prompts.py) are not available: {reason}. Fix: pass "
        f"--viescore-file PATH (or set {ENV_FILE}) to a copy of {PINNED_SOURCES[0].url}, or run with "
        "--prompt-set project-rubric for a deliberately non-comparable run.")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
