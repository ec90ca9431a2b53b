"""GEdit-Bench rows: loading (hub id or local copy), schema check, deterministic sample selection, synthetic copy.

The real dataset is `stepfun-ai/GEdit-Bench` (split `train`, 1212 rows: 606 English + 606 Chinese, the same
`key` in both languages). A local copy may be a folder written by `datasets.save_to_disk`, a folder of parquet or
arrow files (e.g. a hub snapshot), or one such file. The synthetic copy has the same columns and feature types and
is saved in the hub's parquet layout, so it goes through exactly the same loader.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import random
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from harness.core.records import atomic_output
from harness.gedit.config import GEDIT_LANGUAGES, GEDIT_TASK_GROUPS, SelectionSpec

# English sample counts of the real benchmark (the Chinese half has the same keys).
GEDIT_EN_COUNTS = {"background_change": 40, "color_alter": 40, "material_alter": 40, "motion_change": 40,
                   "ps_human": 70, "style_change": 60, "subject-add": 60, "subject-remove": 57,
                   "subject-replace": 60, "text_change": 99, "tone_transfer": 40}
REQUIRED_COLUMNS = ("key", "task_type", "instruction", "instruction_language", "input_image", "Intersection_exist")
OPTIONAL_COLUMNS = ("input_image_raw",)

SYNTHETIC_DATASET_NOTE = ("SYNTHETIC DATASET: rows were drawn with PIL by harness.gedit.data.write_synthetic_gedit; "
                          "they are not GEdit-Bench and no score computed on them means anything.")


class DatasetError(ValueError):
    """A GEdit-Bench copy that cannot be found or does not have the expected schema; the message says the fix."""


class SourceImageError(DatasetError):
    """One row's input image cannot be decoded; the sample fails, the run goes on."""


@dataclasses.dataclass(frozen=True)
class SampleRef:
    """One selected benchmark row. `row` indexes the loaded dataset; `uid` is what results are keyed by."""

    task_type: str
    language: str
    key: str
    instruction: str
    intersection: bool
    row: int
    source_sha256: str | None = None  # sha256 of the encoded input image: the input an edit of this row is made from

    @property
    def uid(self) -> str:
        return f"{self.task_type}/{self.language}/{self.key}"

    def to_record(self) -> dict:
        return {"task_type": self.task_type, "language": self.language, "key": self.key,
                "instruction": self.instruction, "intersection": self.intersection,
                "source_sha256": self.source_sha256}


# ------------------------------------------------------------------------------------------------------ loading
def load_gedit_dataset(source: str | os.PathLike, revision: str | None = "main", split: str = "train"):
    """Load GEdit-Bench rows as a `datasets.Dataset` and validate the schema.

    source: a hub dataset id (e.g. "stepfun-ai/GEdit-Bench"), a `save_to_disk` folder, a folder holding parquet or
    arrow files (searched recursively), or a single .parquet / .arrow file.
    """
    import datasets

    path = Path(source).expanduser()
    if path.exists():
        ds = _load_local(path, split)
    elif _looks_like_path(str(source)):
        raise DatasetError(f"dataset path {str(source)!r} does not exist. Pass --dataset with a folder written by "
                           "datasets.save_to_disk, a folder of parquet/arrow files, or the hub id "
                           "stepfun-ai/GEdit-Bench; --synthetic tiny builds a small synthetic copy instead.")
    else:
        try:
            ds = datasets.load_dataset(str(source), revision=revision, split=split)
        except Exception as err:  # the hub client raises many types (offline, 404, gated, ...)
            raise DatasetError(
                f"could not load dataset {str(source)!r} (revision {revision}, split {split}) from the hub: "
                f"{type(err).__name__}: {err}. Download it elsewhere (`datasets.load_dataset(...).save_to_disk(DIR)` "
                "or a hub snapshot of the parquet files) and pass --dataset DIR, or run --synthetic tiny.") from err
    validate_gedit_schema(ds, str(source))
    return ds


def _looks_like_path(text: str) -> bool:
    # A hub id is exactly "owner/name"; anything else that does not exist is a mistyped path.
    return text.startswith((".", "/", "~")) or text.count("/") != 1 or text.endswith((".parquet", ".arrow"))


def _load_local(path: Path, split: str):
    import datasets

    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DatasetError(f"{path} has splits {list(loaded)}, not {split!r}; pick one with the task's "
                                   "dataset.split")
            return loaded[split]
        return loaded
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in (".parquet", ".arrow"))
    if path.is_dir():  # skip hidden folders such as a hub snapshot's .cache
        files = [f for f in files if not any(part.startswith(".") for part in f.relative_to(path).parts)]
    if not files:
        raise DatasetError(f"{path} holds no dataset: expected a datasets.save_to_disk folder (dataset_dict.json or "
                           "state.json), parquet/arrow files, or one such file")
    # A hub snapshot names files "<split>-00000-of-000NN.parquet": keep the requested split when names say so.
    named = [f for f in files if f.name.startswith(f"{split}-") or f.parent.name == split]
    files = named or files
    kinds = {f.suffix for f in files}
    if len(kinds) > 1:
        raise DatasetError(f"{path} mixes parquet and arrow files; point --dataset at one kind")
    builder = "parquet" if kinds == {".parquet"} else "arrow"
    if builder == "parquet":
        for f in files:
            check_parquet_file(f)
    return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")


def check_parquet_file(path: Path) -> None:
    """DatasetError naming `path` when it is empty or not a complete parquet file (reads only its footer)."""
    import pyarrow
    import pyarrow.parquet as pq

    try:
        pq.read_metadata(path)
    except (OSError, pyarrow.ArrowException) as err:
        raise DatasetError(f"{path} is not a complete parquet file ({path.stat().st_size} bytes: {err}); the "
                           "download is damaged or incomplete, download the dataset again") from err


def validate_gedit_schema(ds, source: str = "dataset") -> None:
    """Raise DatasetError naming every problem of a GEdit-Bench copy: columns, feature types, values, duplicates."""
    import datasets

    columns = list(ds.column_names)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise DatasetError(f"{source}: missing column(s) {missing}; found {columns}. A GEdit-Bench copy needs "
                           f"{list(REQUIRED_COLUMNS)} (download stepfun-ai/GEdit-Bench unchanged)")
    if len(ds) == 0:
        raise DatasetError(f"{source}: the dataset has no rows")
    problems = []
    for col in ("input_image", *[c for c in OPTIONAL_COLUMNS if c in columns]):
        if not isinstance(ds.features[col], datasets.Image):
            problems.append(f"column {col!r} has feature type {ds.features[col]!r}, expected datasets.Image()")
    for col in ("key", "task_type", "instruction", "instruction_language"):
        feat = ds.features[col]
        if not (isinstance(feat, datasets.Value) and feat.dtype in ("string", "large_string")):
            problems.append(f"column {col!r} has feature type {feat!r}, expected a string Value")
    if not (isinstance(ds.features["Intersection_exist"], datasets.Value)
            and ds.features["Intersection_exist"].dtype == "bool"):
        problems.append(f"column 'Intersection_exist' has feature type {ds.features['Intersection_exist']!r}, "
                        "expected Value('bool')")
    if problems:
        raise DatasetError(f"{source}: " + "; ".join(problems))
    table = ds.select_columns(["key", "task_type", "instruction_language", "instruction"]).to_pandas()
    bad_lang = sorted(set(table["instruction_language"]) - set(GEDIT_LANGUAGES))
    if bad_lang:
        problems.append(f"instruction_language values {bad_lang} are not in {list(GEDIT_LANGUAGES)}")
    bad_task = sorted(set(table["task_type"]) - set(GEDIT_TASK_GROUPS))
    if bad_task:
        problems.append(f"task_type values {bad_task} are not GEdit task groups {list(GEDIT_TASK_GROUPS)}")
    empty = int((table["instruction"].str.strip() == "").sum())
    if empty:
        problems.append(f"{empty} row(s) have an empty instruction")
    dup = table.duplicated(["key", "instruction_language"], keep=False)
    if dup.any():
        first = table[dup].iloc[0]
        problems.append(f"{int(dup.sum())} rows repeat a (key, language) pair, e.g. "
                        f"({first['key']}, {first['instruction_language']})")
    if problems:
        raise DatasetError(f"{source}: " + "; ".join(problems) + ". Re-download the dataset or fix the copy.")


# ---------------------------------------------------------------------------------------------------- selection
def select_samples(ds, selection: SelectionSpec) -> list[SampleRef]:
    """Deterministic subset: per (task group, language), rows ordered by sha256(f"{selection_seed}:{key}"), first
    `per_task` kept (all when None). The order does not depend on the row order of the copy, and because the
    same key exists in both languages, en and cn pick the same images. Result is ordered group, language, rank.
    """
    table = ds.select_columns(["key", "task_type", "instruction_language", "instruction",
                               "Intersection_exist"]).to_pandas()
    chosen: list[SampleRef] = []
    for group in selection.task_groups:
        for lang in selection.languages:
            rows = table[(table["task_type"] == group) & (table["instruction_language"] == lang)]
            if selection.intersection:
                rows = rows[rows["Intersection_exist"].astype(bool)]
            ranked = sorted(rows.itertuples(), key=lambda r: _rank(selection.selection_seed, r.key))
            if selection.per_task is not None:
                ranked = ranked[: selection.per_task]
            chosen += [SampleRef(task_type=group, language=lang, key=str(r.key), instruction=str(r.instruction),
                                 intersection=bool(r.Intersection_exist), row=int(r.Index)) for r in ranked]
    hashes = source_image_hashes(ds, [s.row for s in chosen])
    return [dataclasses.replace(s, source_sha256=h) for s, h in zip(chosen, hashes)]


def source_image_hashes(ds, rows: Sequence[int]) -> list[str | None]:
    """sha256 of each row's encoded input image (read, not decoded: a corrupt image still has a hash); None when
    a row holds no image bytes."""
    import datasets

    raw = ds.select_columns(["input_image"]).cast_column("input_image", datasets.Image(decode=False))
    out = []
    for row in rows:
        cell = raw[row]["input_image"] or {}
        data = cell.get("bytes")
        if data is None and cell.get("path") and Path(cell["path"]).is_file():
            data = Path(cell["path"]).read_bytes()
        out.append(hashlib.sha256(data).hexdigest() if data is not None else None)
    return out


def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def selection_summary(samples: Sequence[SampleRef]) -> dict:
    """Counts per task/language and a hash of the selected uids (equal hashes = the same samples)."""
    counts = Counter(f"{s.task_type}/{s.language}" for s in samples)
    uids = "\n".join(sorted(s.uid for s in samples))
    return {"n_samples": len(samples), "per_task_language": dict(sorted(counts.items())),
            "uids_sha256": hashlib.sha256(uids.encode()).hexdigest()}


def load_source_image(ds, sample: SampleRef):
    """The image to edit (PIL, RGB) of a selected row; SourceImageError naming the row when it cannot be decoded."""
    from PIL import Image

    try:
        image = ds[sample.row]["input_image"]
        if image is None:
            raise ValueError("the cell is empty")
        return image.convert("RGB")
    except Image.DecompressionBombError as err:
        raise SourceImageError(f"task {sample.task_type}, key {sample.key} ({sample.language}): the input image is "
                               f"over PIL's size limit ({err}); this sample fails, the others go on") from err
    except (OSError, ValueError, SyntaxError) as err:
        raise SourceImageError(f"task {sample.task_type}, key {sample.key} ({sample.language}): the input image "
                               f"cannot be decoded ({type(err).__name__}: {err}); this sample fails, the others go "
                               "on (re-download the dataset to fix it)") from err


# ----------------------------------------------------------------------------------------------------- synthetic
_INSTRUCTIONS = {
    "background_change": ("Change the background to a {c} wall.", "把背景换成{c}的墙。"),
    "color_alter": ("Make the {s} {c}.", "把{s}变成{c}。"),
    "material_alter": ("Make the {s} look like it is made of wood.", "让{s}看起来是木头做的。"),
    "motion_change": ("Move the {s} to the left.", "把{s}移到左边。"),
    "ps_human": ("Smooth the skin of the person.", "让人物的皮肤更光滑。"),
    "style_change": ("Turn the picture into a watercolor painting.", "把图片变成水彩画风格。"),
    "subject-add": ("Add a {c} {s} next to the first one.", "在旁边添加一个{c}的{s}。"),
    "subject-remove": ("Remove the {s}.", "去掉{s}。"),
    "subject-replace": ("Replace the {s} with a star.", "把{s}换成星星。"),
    "text_change": ("Change the text to 'FP8'.", "把文字改成“FP8”。"),
    "tone_transfer": ("Make the scene look like sunset.", "让画面看起来像日落。"),
}
_COLORS = (("red", "红色", (200, 40, 40)), ("blue", "蓝色", (40, 70, 200)), ("green", "绿色", (40, 160, 60)),
           ("yellow", "黄色", (220, 200, 40)))
_SHAPES = (("circle", "圆形"), ("square", "方块"))


def synthetic_image(index: int, size: int, seed: int = 0):
    """A PIL RGB picture: a coloured background, a shape and a word, different for every index."""
    from PIL import Image, ImageDraw

    rng = random.Random(f"{seed}:{index}")
    bg = tuple(rng.randrange(60, 230) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    _, _, fill = _COLORS[index % len(_COLORS)]
    x0, y0 = rng.randrange(size // 8, size // 3), rng.randrange(size // 8, size // 3)
    x1, y1 = x0 + size // 3 + rng.randrange(size // 6), y0 + size // 3 + rng.randrange(size // 6)
    (draw.ellipse if _SHAPES[index % 2][0] == "circle" else draw.rectangle)((x0, y0, x1, y1), fill=fill,
                                                                            outline=(0, 0, 0))
    draw.text((size // 16, size - size // 5), f"S{index}", fill=(255, 255, 255))
    return img


def make_synthetic_gedit(per_task: int = 2, languages: Iterable[str] = GEDIT_LANGUAGES, image_size: int = 64,
                         seed: int = 0):
    """A `datasets.Dataset` with GEdit-Bench's columns and feature types: every task group x language,
    `per_task` rows each (the same keys in both languages), PIL-drawn images of image_size^2 (raw: twice that)."""
    import datasets

    features = datasets.Features({
        "key": datasets.Value("string"), "task_type": datasets.Value("string"),
        "instruction": datasets.Value("string"), "instruction_language": datasets.Value("string"),
        "input_image": datasets.Image(), "input_image_raw": datasets.Image(),
        "Intersection_exist": datasets.Value("bool"),
    })
    rows: dict[str, list] = {name: [] for name in features}
    index = 0
    for group in GEDIT_TASK_GROUPS:
        for i in range(per_task):
            key = hashlib.md5(f"synthetic:{seed}:{group}:{i}".encode()).hexdigest()
            color_en, color_cn, _ = _COLORS[(index + 1) % len(_COLORS)]
            shape_en, shape_cn = _SHAPES[index % 2]
            image = synthetic_image(index, image_size, seed)
            for lang in languages:
                template = _INSTRUCTIONS[group][0 if lang == "en" else 1]
                rows["key"].append(key)
                rows["task_type"].append(group)
                rows["instruction"].append(template.format(c=color_en if lang == "en" else color_cn,
                                                           s=shape_en if lang == "en" else shape_cn))
                rows["instruction_language"].append(lang)
                rows["input_image"].append(image)
                rows["input_image_raw"].append(image.resize((2 * image_size, 2 * image_size)))
                rows["Intersection_exist"].append(i % 2 == 0)
            index += 1
    return datasets.Dataset.from_dict(rows, features=features)


def write_synthetic_gedit(folder: str | os.PathLike, per_task: int = 2, languages: Iterable[str] = GEDIT_LANGUAGES,
                          image_size: int = 64, seed: int = 0, layout: str = "parquet") -> Path:
    """Write a synthetic GEdit-format dataset and return the folder to pass as --dataset.

    layout "parquet": the hub's layout (`data/train-00000-of-00001.parquet`); "save_to_disk": a DatasetDict
    folder with a `train` split. Both load through `load_gedit_dataset`.
    """
    import datasets

    folder = Path(folder)
    ds = make_synthetic_gedit(per_task, languages, image_size, seed)
    if layout == "parquet":
        with atomic_output(folder / "data" / "train-00000-of-00001.parquet") as tmp:
            ds.to_parquet(str(tmp))
        (folder / "SYNTHETIC.txt").write_text(SYNTHETIC_DATASET_NOTE + "\n", encoding="utf-8")
    elif layout == "save_to_disk":
        datasets.DatasetDict({"train": ds}).save_to_disk(str(folder))
    else:
        raise ValueError(f"layout must be 'parquet' or 'save_to_disk', got {layout!r}")
    return folder
