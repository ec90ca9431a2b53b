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

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image

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

NOT_JUDGED = "not_judged"  # status of a selected (arm, sample) with no judgement about its current images
EDIT_SUFFIX_PREFERENCE = (".png",)  # upstream globs `<key>.*`; a PNG (what this harness writes) wins a tie

SampleKey = tuple[str, str, str]  # (task_type, language, key): what every per-sample record is keyed by
PairKey = tuple[str, str, str, str]  # (arm, task_type, language, key)


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


def file_sha256(path: str | Path | None) -> str | None:
    """sha256 of a file's bytes; None when it does not exist."""
    if path is None or not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def readable_image(path: Path) -> bool:
    """True when `path` is an image file PIL reads to the end (a truncated or garbage PNG is not)."""
    try:
        with Image.open(path) as im:
            im.verify()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False
    return True


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


def judge_identity(model: str, prompt_set: str, prompt_sha256: str, protocol: str, weights: str | None = None) -> dict:
    """What a judgement depends on besides the images: the judge model (`weights`: which weights it holds, wherever
    its folder lies; None when unknown), the exact prompts (by hash) and the protocol; judging with another one of
    these is a settings change."""
    return {"model": model, "prompt_set": prompt_set, "prompt_sha256": prompt_sha256, "protocol": protocol,
            "weights": weights}


def same_model(record_ref: str | None, record_weights: str | None, ref: str, weights: str | None) -> bool:
    """Two model references name the same model: by their weights when both are known (so a copied or moved run
    folder, whose synthetic models moved with it, still matches), else by the reference as given."""
    if record_weights is not None and weights is not None:
        return record_weights == weights
    return record_ref == ref


def judged_by(record: dict, ident: dict) -> bool:
    """True when `record` (a judgement or judge-run line) was made by the judge, prompts and protocol of `ident`."""
    judge = record.get("judge") or {}
    return ((judge.get("prompt_sha256"), judge.get("protocol")) == (ident["prompt_sha256"], ident["protocol"])
            and same_model(judge.get("model"), judge.get("weights"), ident["model"], ident.get("weights")))


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
        """The samples that need an edit: no PNG yet, a PNG that cannot be read (damaged since it was renamed into
        place), or a PNG whose generation record names another input image than the sample's (`source_sha256`)."""
        made_from = {sample_key(r): r.get("source_sha256") for r in self.generation_records(arm)}
        todo = []
        for s in samples:
            path, recorded = self.edit_path(arm, s), made_from.get(sample_key(s))
            if not path.is_file():
                todo.append(s)
            elif not readable_image(path):
                log.warning("%s cannot be read (damaged); it is made again", path)
                todo.append(s)
            elif None not in (recorded, s.source_sha256) and recorded != s.source_sha256:
                log.warning("%s was made from another input image than the dataset now holds; it is made again", path)
                todo.append(s)
        return todo

    def edit_sha256(self, arm: str, sample) -> str | None:
        """sha256 of an edited image (None when absent): what a judgement of it records and is checked against."""
        return file_sha256(self.found_edit(arm, sample))

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
        # keys the old file lacks were not recorded then (unknown, not different); a model that moved (a copied run
        # folder's synthetic checkpoint) is the same model when its weights are
        diff = {k: (old[k], v) for k, v in settings.items() if k in old and old[k] != v}
        if "model" in diff and same_model(old["model"], old.get("model_weights"), settings["model"],
                                          settings.get("model_weights")):
            del diff["model"]
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

    def judged_pairs(self, ident: dict) -> dict[PairKey, dict]:
        """(arm, task_type, language, key) -> the latest judgement by `ident`, from the shared file and the ranks'."""
        return {(r["arm"], *sample_key(r)): r for r in self.judgements_by(ident)}

    def check_judge_settings(self, ident: dict, settings: dict, partial: bool = False,
                             absent_is_a_value: Sequence[str] = ()) -> None:
        """Refuse to add judgements to ones `ident` made with other judge settings (batch size, ordering, decoding,
        served model...): batched decoding can change answers with them, and a run must not mix the two. Where the
        judge's folder lies is the identity's business (a moved run folder still matches), not a setting.
        `partial`: `settings` holds only some keys (those known before the judge loads); only those are compared,
        and those in `absent_is_a_value` (keys whose absence means a value, e.g. the judge's plain speed options)."""
        for rec in self.judgements_by(ident):
            if rec.get("status") in ("missing_image", "input_error") or not (rec.get("judge") or {}).get("settings"):
                continue
            old = {k: v for k, v in rec["judge"]["settings"].items() if k != "model"}
            new = {k: v for k, v in settings.items() if k != "model"}
            if partial:  # compare only what is known now, and what the record knew (older records lack keys)
                new = {k: v for k, v in new.items() if k in old or k in absent_is_a_value}
                old = {k: v for k, v in old.items() if k in new or k in absent_is_a_value}
            if old == new:
                continue
            changed = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                                if old.get(k) != new.get(k))
            raise SettingsMismatchError(
                f"{self.file(JUDGEMENTS)} holds judgements by {ident['model']} made with other judge settings "
                f"({changed}); resuming would mix them. Pass the flags that made them (e.g. --batch-size; judgements "
                "without vision_attention / decode settings: --judge-vision-attention per-window --judge-decode "
                "eager), or use another --out folder.")

    def judgement_is_current(self, record: dict | None, arm: str, sample) -> bool:
        """True when `record` judged the images `arm` and `sample` have now: the edited image it saw is the one on
        disk (or that one was deleted since), and its input image is the sample's. A judgement of a missing image
        is stale once the image exists; a replaced image or input makes it stale too."""
        if record is None:
            return False
        now = self.edit_sha256(arm, sample)
        if "edited_sha256" not in record:  # written before judgements carried hashes: only "missing" is checkable
            return not (record.get("status") == "missing_image" and now is not None)
        source = sample.get("source_sha256") if isinstance(sample, dict) else sample.source_sha256
        if None not in (record.get("source_sha256"), source) and record["source_sha256"] != source:
            return False
        return now is None and record["edited_sha256"] is not None or record["edited_sha256"] == now

    def current_judgements(self, ident: dict, arms: Sequence[str], samples: Sequence[dict],
                           fill_missing: bool = False) -> list[dict]:
        """The latest judgement by `ident` per (arm, selected sample) that is still about the current images, arm
        by arm in selection order; `fill_missing`: a NOT_JUDGED record (with the reason) for every other pair."""
        latest, others = {}, set()
        for rec in read_jsonl(self.file(JUDGEMENTS)):
            if not judged_by(rec, ident):
                judge = rec.get("judge") or {}
                others.add((judge.get("model"), judge.get("prompt_set"), judge.get("protocol")))
                continue
            latest[(rec.get("arm"), *sample_key(rec))] = rec
        out = []
        for arm in arms:
            for s in samples:
                rec = latest.get((arm, *sample_key(s)))
                if self.judgement_is_current(rec, arm, s):
                    out.append(rec)
                elif fill_missing:
                    why = ("never judged (run the judge stage)" if rec is None else
                           "the edited or input image changed since it was judged (run the judge stage)")
                    out.append({"arm": arm, **s, "status": NOT_JUDGED, "failure": why, "sc": None, "pq": None,
                                "judge": ident})
        if not any(rec.get("status") != NOT_JUDGED for rec in out) and others:
            found = "; ".join(f"--judge {m} --prompt-set {p} --protocol {pr}" for m, p, pr in sorted(others, key=str))
            log.warning("%s holds no judgement by judge %s with prompt set %s and protocol %s, only by: %s. Pass those "
                        "flags (and the same --synthetic / --task) to score them.", self.file(JUDGEMENTS),
                        ident["model"], ident["prompt_set"], ident["protocol"], found)
        return out

    def judge_settings_of_records(self, ident: dict) -> list[dict]:
        """The distinct judge settings recorded by the judgements of `ident`, in order of first use, in the shared
        file and the ranks' (records written before settings were recorded have none)."""
        found: list[dict] = []
        for rec in self.judged_pairs(ident).values():
            settings = (rec.get("judge") or {}).get("settings")
            if settings and settings not in found:
                found.append(settings)
        return found

    def judge_runs(self, ident: dict) -> list[dict]:
        """The judge-batch lines (seconds, calls, tokens, settings) of `ident`, in writing order."""
        return [r for r in read_jsonl(self.file(JUDGE_RUNS)) if judged_by(r, ident)]

    # -------------------------------------------------------------------------------------------------- ranks
    def rank_folders(self) -> list[Path]:
        """Every folder that may hold per-rank record files: `out` and each arm folder under `edits_root`."""
        folders = [self.out, *(p.parent for p in self.edits_root.glob(f"*/{RANK_DIR}"))]
        return list(dict.fromkeys(folders))
