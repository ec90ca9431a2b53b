"""Judge answers read exactly as GEdit-Bench's scorer reads them, and a recorded reason where it cannot.

The upstream rules (VIEScore's `mllm_output_to_dict`, used by Step1X-Edit's `GEdit-Bench`), as facts:

1. An answer holding the delimiter `||V^=^V||` exactly twice: the text between the first and the last one.
2. Otherwise, with both a "{" and a "}": the text from the first "{" to the last "}".
   In both cases the text is stripped, its "\\n" characters are removed, and it goes to `json.loads`; a `score`
   that is not a list is wrapped into one. If that fails (bad JSON, no `score` key), one repair pass quotes bare
   keys and values (`repair_json`) and the repaired object is taken as it is (no wrapping).
3. Otherwise (no "{" or no "}"): the span from the first "[" to the last "]" if it is exactly `[d, d]` (two
   unsigned integers, at most one space after the comma), else the whole answer if `int()` reads it as 0-10.
The scorer then takes min(score list) per call and sqrt(SC * PQ) per sample, with no range check.

Where upstream cannot reach a number it does not fail: on its second pass it draws `random.randint(0, 10)` for
answers of kind 3, re-asks for ever for kinds 1-2 (greedy decoding repeats the answer), or raises and skips the
sample (min() or sqrt() of something that is not a list of numbers). This module yields upstream's score wherever
upstream has a definite one, and a failure with the reason (and what upstream would do) everywhere else. It keeps one
deliberate difference: a score outside 0-10 (or not finite) is flagged `out_of_range` and counted as a failure.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

SCORE_MIN, SCORE_MAX = 0.0, 10.0
DELIMITER = "||V^=^V||"
RATE_LIMIT_SENTINEL = "rate_limit_exceeded"  # upstream's API wrappers return this text; its scorer then raises

# What upstream does with an answer (recorded beside every failure).
UPSTREAM_SCORES = "score"            # a definite score
UPSTREAM_RANDOM = "random"           # draws random.randint(0, 10) when it asks a second time
UPSTREAM_ENDLESS = "endless-retry"   # asks again for ever (the same greedy answer never parses)
UPSTREAM_ERROR = "error"             # raises inside the scorer; the sample is left out of its CSV

_PAIR = re.compile(r"^\[\d+, ?\d+\]$")          # upstream's brace-less "[a, b]" rule
_BARE_KEY = re.compile(r"(\w+):")                 # repair step 1: quote a word followed by ":"
_KEY_VALUE = re.compile(r'(".*?"):(.*?)(,|})')    # repair step 2: a quoted key, its value up to "," or "}"
_NUMBER_VALUE = re.compile(r"^-?\d+(\.\d+)?$")
_LITERAL_VALUE = re.compile(r"^(true|false|null)$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class ParsedAnswer:
    """Scores read from one answer. `scores` is None when none could be read; then `error` says why.

    method: "delimited" | "json" | "json-repaired" | "pair" | "integer" (which upstream rule read it).
    upstream: what the upstream scorer does with this answer (UPSTREAM_*), so a failure says what it replaced.
    """

    scores: tuple[float, ...] | None
    method: str | None
    error: str | None = None
    upstream: str = UPSTREAM_SCORES

    @property
    def out_of_range(self) -> bool:
        """True when a score lies outside 0-10 or is not finite (NaN fails the comparison too)."""
        return self.scores is not None and any(not SCORE_MIN <= s <= SCORE_MAX for s in self.scores)

    @property
    def valid(self) -> bool:
        return self.scores is not None and not self.out_of_range

    def to_record(self) -> dict:
        return {"scores": list(self.scores) if self.scores is not None else None, "method": self.method,
                "error": self.error, "out_of_range": self.out_of_range, "upstream": self.upstream}


def _failure(reason: str, upstream: str, method: str | None = None) -> ParsedAnswer:
    return ParsedAnswer(None, method, reason, upstream)


# ------------------------------------------------------------------------------------------------------ parsing
def parse_official_answer(text: Any) -> ParsedAnswer:
    """Read one judge answer by the upstream GEdit-Bench rules (module docstring); never guesses a score."""
    if not isinstance(text, str):
        return _failure(f"answer is {type(text).__name__}, not text", UPSTREAM_ERROR)
    if text == RATE_LIMIT_SENTINEL:
        return _failure("answer is upstream's rate-limit marker; its scorer raises on it", UPSTREAM_ERROR)
    if text.count(DELIMITER) == 2:
        start, end = text.find(DELIMITER) + len(DELIMITER), text.rfind(DELIMITER)
        if start == end:
            return _failure("nothing between the two ||V^=^V|| delimiters", UPSTREAM_ENDLESS, "delimited")
        return _read_json_text(text[start:end], "delimited")
    start, end = text.find("{"), text.rfind("}") + 1
    if start == -1 or end == 0:
        return _read_braceless(text)
    if start == end:
        return _failure('the last "}" comes just before the first "{"', UPSTREAM_ENDLESS, "json")
    return _read_json_text(text[start:end], "json")


def _read_json_text(raw: str, method: str) -> ParsedAnswer:
    """Rules 1-2: strip, drop newlines, json.loads (scalar score wrapped), else one repair pass (taken as is)."""
    candidate = raw.strip().replace("\n", "")
    try:
        obj = json.loads(candidate)
        score = obj["score"]
    except (ValueError, RecursionError, KeyError, TypeError, IndexError) as err:
        first_error = _describe(err)
    else:
        return _scores_from(score if isinstance(score, list) else [score], method)
    try:
        repaired = json.loads(repair_json(candidate))
    except (ValueError, RecursionError) as err:
        return _failure(f"{first_error}; still not JSON after upstream's repair pass ({_describe(err)})",
                        UPSTREAM_ENDLESS, method)
    if not isinstance(repaired, dict):
        return _failure(f"{first_error}; the repaired JSON is a {type(repaired).__name__}, not an object",
                        UPSTREAM_ERROR, method)
    if "score" not in repaired:
        return _failure(f"{first_error}; the repaired object has no 'score'", UPSTREAM_ERROR, method)
    if not isinstance(repaired["score"], list):  # the repaired object is used unwrapped upstream: min() raises
        return _failure(f"{first_error}; the repaired 'score' is not a list", UPSTREAM_ERROR, method)
    return _scores_from(repaired["score"], f"{method}-repaired")


def _read_braceless(text: str) -> ParsedAnswer:
    """Rule 3: the first-"["-to-last-"]" span as an exact pair of integers, else the whole answer as one integer."""
    span = text[text.find("["):text.rfind("]") + 1]  # Python slicing exactly as upstream (find() may be -1)
    if _PAIR.match(span):
        try:
            pair = json.loads(span)
        except ValueError as err:  # e.g. "[07, 5]" or non-ASCII digits: upstream's json.loads raises here
            return _failure(f"the pair {span!r} matches upstream's [a, b] rule but JSON cannot read it "
                            f"({_describe(err)})", UPSTREAM_ERROR, "pair")
        return _scores_from(pair, "pair")
    try:
        number = int(text)
    except ValueError:
        number = None
    if number is not None and 0 <= number <= 10:
        return ParsedAnswer((float(number),), "integer")
    what = "an integer outside 0-10" if number is not None else "not one integer"
    return _failure(f"no {{...}} object, no exact [a, b] span, and the answer is {what}", UPSTREAM_RANDOM)


def _scores_from(values: list, method: str) -> ParsedAnswer:
    """The score list if upstream's min() of it is a number it can average (Python's min, so [0, true] gives 0)."""
    try:
        lowest = min(values)
    except (TypeError, ValueError) as err:  # empty list, or items that do not compare
        return _failure(f"upstream's min() of 'score' {values!r} raises ({err})", UPSTREAM_ERROR, method)
    if isinstance(lowest, bool) or not isinstance(lowest, (int, float)):
        # a bool or a string would reach upstream's CSV as text that its statistics cannot average
        return _failure(f"upstream's min() of 'score' {values!r} is {lowest!r}, not a number", UPSTREAM_ERROR,
                        method)
    return ParsedAnswer(tuple(_as_float(v) for v in values), method)


def _as_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer too large for a float is simply out of range
        return math.inf


def _describe(err: BaseException) -> str:
    if isinstance(err, json.JSONDecodeError):
        return f"invalid JSON: {err.msg} at character {err.pos}"
    if isinstance(err, KeyError):
        return "JSON object without a 'score' key"
    if isinstance(err, TypeError):
        return "JSON value is not an object with a 'score' key"
    return f"{type(err).__name__}: {err}"


# ------------------------------------------------------------------------------------------------------- repair
def repair_json(text: str) -> str:
    """Upstream's one-shot JSON repair (`fix_json`), as a rule: quote every word directly followed by ":"; then for
    each quoted key, its value up to the next "," or "}" is stripped and written back as `[number]` if it is a
    number, left alone if it is true/false/null (any case), and put in double quotes otherwise.
    """
    keys_quoted = _BARE_KEY.sub(r'"\1":', text)
    return _KEY_VALUE.sub(_rewrite_value, keys_quoted)


def _rewrite_value(match: re.Match) -> str:
    key, value, closer = match.group(1), match.group(2).strip(), match.group(3)
    if _NUMBER_VALUE.match(value):
        value = f"[{value}]"
    elif not _LITERAL_VALUE.match(value):
        value = f'"{value}"'
    return f"{key}: {value}{closer}"
