"""The layout of a GEdit run folder, in one place: every path, file name and record key the stages share.

    <out>/selection.json      the selected samples (+ counts, uids_sha256)
    <out>/judgements.jsonl    one line per (arm, sample) and judge; judge_runs.jsonl: one line per judge batch
    <out>/scores.csv tasks.csv fidelity.csv summary.json summary.md distributed.json
    <edits>/<arm>/fullset/<task_type>/<lang>/<key>.png   edits (official layout; <edits> defaults to <out>); edits
                              made elsewhere may have any image suffix (`<key>.*`, as upstream globs them)
    <edits>/<arm>/generation.jsonl  one line per edit; <edits>/<arm>/generation_settings.json  what made them
    <dir>/_ranks/<name>.rankNNN.jsonl   records a rank of a torchrun launch appended (merged into <dir>/<name>.jsonl)

Readers (the report, benchmarks) open a finished folder through `RunFolder` as well.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from harness.core.records import RANK_DIR, read_jsonl, write_json_atomic

log = logging.getLogger("harness.gedit")

SELECTION = "selection.json"
JUDGEMENTS = "judgements.jsonl"
JUDGE_RUNS = "judge_runs.jsonl"
SCORES = "scores.csv"
TASKS = "tasks.csv"
FIDELITY = "fidelity.csv"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
DIST_REPORT = "distributed.json"
GENERATION_LOG = "generation.jsonl"
SETTINGS_FILE = "generation_settings.json"
FULLSET = "fullset"

EDIT_SUFFIX_PREFERENCE = (".png",)  # upstream globs `<key>.*`; a PNG (what this harness writes) wins a tie

SampleKey = tuple[str, str, str]  # (task_type, language, key): what every per-sample record is keyed by


class RunFolderError(ValueError):
    """A run folder that lacks a file a stage needs, or holds files that do not fit; the message says the fix."""


class SettingsMismatchError(RunFolderError):
    """Existing edits were made with other settings; resuming would mix them."""


def sample_key(sample) -> SampleKey:
    """(task_type, language, key) of a SampleRef or of a record with those fields."""
    get = sample.get if isinstance(sample, dict) else lambda k: getattr(sample, k)
    return get("task_type"), get("language"), get("key")


def edit_path(root: str | Path, arm: str, sample) -> Path:
    """`<root>/<arm>/fullset/<task_type>/<lang>/<key>.png` for a SampleRef or a record with those fields."""
    task_type, language, key = sample_key(sample)
    return Path(root) / arm / FULLSET / task_type / language / f"{key}.png"


def find_edit_image(folder: str | Path, key: str) -> Path | None:
    """The edit of sample `key` in an official-layout folder (`.../fullset/<task>/<lang>/`): upstream globs
    `<key>.*` and takes a match; here `<key>.png` if present, else the first other match by name (None if none)."""
    folder = Path(folder)
    for suffix in EDIT_SUFFIX_PREFERENCE:
        if (folder / f"{key}{suffix}").is_file():
            return folder / f"{key}{suffix}"
    others = sorted(p for p in folder.glob(f"{_glob_escape(key)}.*") if p.is_file())
    return others[0] if others else None


def find_edit(root: str | Path, arm: str, sample) -> Path | None:
    """The existing edit of `sample` by `arm` under `root`, whatever its image suffix (None if there is none)."""
    return find_edit_image(edit_path(root, arm, sample).parent, sample_key(sample)[2])


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def judge_identity(model: str, prompt_set: str, prompt_sha256: str, protocol: str) -> dict:
    """What a judgement depends on besides the images: the judge model, the exact prompts (by hash) and the
    protocol; judging with another one of these is a settings change."""
    return {"model": model, "prompt_set": prompt_set, "prompt_sha256": prompt_sha256, "protocol": protocol}


def judged_by(record: dict, ident: dict) -> bool:
    """True when `record` (a judgement or judge-run line) was made by the judge, prompts and protocol of `ident`."""
    judge = record.get("judge") or {}
    return ((judge.get("model"), judge.get("prompt_sha256"), judge.get("protocol"))
            == (ident["model"], ident["prompt_sha256"], ident["protocol"]))


@dataclass(frozen=True)
class RunFolder:
    """One GEdit run: results in `out`, edited images under `edits_root` (the same folder unless --edits)."""

    out: Path
    edits_root: Path

    @classmethod
    def reopen(cls, out: str | Path, recorded_edits_root: str | Path | None, arm: str | None = None) -> "RunFolder":
        """A finished run, perhaps moved since: its recorded edits root when `arm`'s edits are still there, else
        `out` itself."""
        out = Path(out)
        edits = Path(recorded_edits_root or out)
        return cls(out, edits if arm is None or (edits / arm).is_dir() else out)

    def file(self, name: str) -> Path:
        """A result file of the run (`SELECTION`, `JUDGEMENTS`, `SCORES`, ...)."""
        return self.out / name

    # ---------------------------------------------------------------------------------------------------- edits
    def edit_path(self, arm: str, sample) -> Path:
        return edit_path(self.edits_root, arm, sample)

    def found_edit(self, arm: str, sample) -> Path | None:
        """The existing edit of `sample` by `arm`: `<key>.png`, else `<key>.*` as upstream globs (None: absent)."""
        return find_edit(self.edits_root, arm, sample)

    def pending(self, arm: str, samples: Sequence) -> list:
        """The samples whose edited image does not exist yet (a PNG that exists is complete: it was renamed into
        place)."""
        return [s for s in samples if not self.edit_path(arm, s).is_file()]

    def generation_log(self, arm: str) -> Path:
        return self.edits_root / arm / GENERATION_LOG

    def generation_records(self, arm: str) -> list[dict]:
        """The per-sample generation records of an arm (later lines win for a repeated sample)."""
        latest = {}
        for rec in read_jsonl(self.generation_log(arm)):
            latest[sample_key(rec)] = rec
        return list(latest.values())

    def arm_settings(self, arm: str) -> dict | None:
        """What made an arm's edits (`generation_settings.json`), None when not recorded."""
        path = self.edits_root / arm / SETTINGS_FILE
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def check_or_record_settings(self, arm: str, settings: dict) -> None:
        """Record an arm's settings, or refuse if its folder holds edits made with other ones."""
        path = self.edits_root / arm / SETTINGS_FILE
        old = self.arm_settings(arm)
        if old is None:
            write_json_atomic(path, settings)
            return
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise SettingsMismatchError(f"{path.parent} holds edits made with other settings ({changes}); resuming "
                                        "would mix them. Use another --out/--edits folder, or delete that one.")

    # ------------------------------------------------------------------------------------------------ selection
    def write_selection(self, summary: dict, dataset: str, selection: dict, samples: list[dict]) -> None:
        """selection.json: the counts and hash (`summary`), where the rows came from, and the sample records."""
        write_json_atomic(self.file(SELECTION), {**summary, "dataset": dataset, "selection": selection,
                                                 "samples": samples})

    def selection_samples(self) -> list[dict]:
        """The sample records of selection.json (the score stage needs no dataset)."""
        path = self.file(SELECTION)
        if not path.is_file():
            raise RunFolderError(f"{path} not found: run the generate or judge stage first (they record the "
                                 "selection)")
        return json.loads(path.read_text(encoding="utf-8"))["samples"]

    def selection_order(self) -> dict[SampleKey, int]:
        """(task_type, language, key) -> position in selection.json (empty when there is none)."""
        if not self.file(SELECTION).is_file():
            return {}
        return {sample_key(s): i for i, s in enumerate(self.selection_samples())}

    # ----------------------------------------------------------------------------------------------- judgements
    def judgements_by(self, ident: dict) -> list[dict]:
        """Every judgement by `ident`, in the shared file or a rank's file not merged yet (file order)."""
        shared = self.file(JUDGEMENTS)
        parts = sorted((self.out / RANK_DIR).glob(f"{shared.stem}.rank*{shared.suffix}"))
        return [r for path in (shared, *parts) for r in read_jsonl(path) if judged_by(r, ident)]

    def judged_pairs(self, ident: dict) -> set[tuple[str, str, str, str]]:
        """(arm, task_type, language, key) of every judgement by `ident`, in the shared file or a rank's file."""
        return {(r["arm"], *sample_key(r)) for r in self.judgements_by(ident)}

    def check_judge_settings(self, ident: dict, settings: dict) -> None:
        """Refuse to add judgements to ones `ident` made with other judge settings (batch size, ordering, decoding,
        served model...): batched decoding can change answers with them, and a run must not mix the two."""
        for rec in self.judgements_by(ident):
            if rec.get("status") == "missing_image":
                continue
            old = (rec.get("judge") or {}).get("settings")
            if old != settings:
                changed = ("settings not recorded" if old is None else ", ".join(
                    f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in sorted(set(old) | set(settings))
                    if old.get(k) != settings.get(k)))
                raise SettingsMismatchError(
                    f"{self.file(JUDGEMENTS)} holds judgements by {ident['model']} made with other judge settings "
                    f"({changed}); resuming would mix them. Pass the flags that made them (e.g. --batch-size), or "
                    "use another --out folder.")

    def current_judgements(self, ident: dict, arms: Sequence[str], samples: Sequence[dict]) -> list[dict]:
        """The latest judgement per (arm, sample) by `ident`, restricted to `arms` and the selected `samples`."""
        wanted = {sample_key(s) for s in samples}
        latest, others = {}, set()
        for rec in read_jsonl(self.file(JUDGEMENTS)):
            if not judged_by(rec, ident):
                judge = rec.get("judge") or {}
                others.add((judge.get("model"), judge.get("prompt_set"), judge.get("protocol")))
                continue
            if rec["arm"] in arms and sample_key(rec) in wanted:
                latest[(rec["arm"], *sample_key(rec))] = rec
        if not latest and others:
            found = "; ".join(f"--judge {m} --prompt-set {p} --protocol {pr}"
                              for m, p, pr in sorted(others, key=str))
            log.warning("%s holds no judgement by judge %s with prompt set %s and protocol %s, only by: %s. Pass those "
                        "flags (and the same --synthetic / --task) to score them.", self.file(JUDGEMENTS),
                        ident["model"], ident["prompt_set"], ident["protocol"], found)
        return list(latest.values())

    def judge_runs(self, ident: dict) -> list[dict]:
        """The judge-batch lines (seconds, calls, tokens, settings) of `ident`, in writing order."""
        return [r for r in read_jsonl(self.file(JUDGE_RUNS)) if r.get("judge") == ident]

    # -------------------------------------------------------------------------------------------------- ranks
    def rank_folders(self) -> list[Path]:
        """Every folder that may hold per-rank record files: `out` and each arm folder under `edits_root`."""
        folders = [self.out, *(p.parent for p in self.edits_root.glob(f"*/{RANK_DIR}"))]
        return list(dict.fromkeys(folders))
