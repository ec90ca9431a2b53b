"""Fidelity of one arm's GEdit edits to another's: PSNR and SSIM (harness.core.fidelity) of image pairs with the
same seed, per sample and summarised per task group."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
from PIL import Image

from harness.core.fidelity import image_fidelity


def fidelity_table(pairs: Iterable[tuple[dict, Path, Path]]) -> pd.DataFrame:
    """One row per (sample, reference image, test image): task_type, language, key, status, psnr_db, ssim,
    identical. status is "ok", "missing_image" or "size_mismatch"."""
    rows = []
    for sample, ref_path, test_path in pairs:
        row = {k: sample[k] for k in ("task_type", "language", "key")}
        if not (Path(ref_path).is_file() and Path(test_path).is_file()):
            rows.append({**row, "status": "missing_image", "psnr_db": None, "ssim": None, "identical": None})
            continue
        ref = np.asarray(Image.open(ref_path).convert("RGB"))
        test = np.asarray(Image.open(test_path).convert("RGB"))
        if ref.shape != test.shape:
            rows.append({**row, "status": "size_mismatch", "psnr_db": None, "ssim": None, "identical": None})
            continue
        rows.append({**row, "status": "ok", **image_fidelity(ref, test)})
    return pd.DataFrame(rows, columns=["task_type", "language", "key", "status", "psnr_db", "ssim", "identical"])


def summarize_fidelity(table: pd.DataFrame) -> dict:
    """Per language: per task (n, mean PSNR over non-identical pairs, n_identical, mean SSIM) and overall
    (unweighted mean over tasks, and per-sample means)."""
    out: dict = {}
    ok_all = table[table["status"] == "ok"]
    for lang in sorted(table["language"].unique()):
        ok = ok_all[ok_all["language"] == lang]
        per_task = []
        for task, grp in ok.groupby("task_type", sort=True):
            per_task.append(_summary(grp) | {"task_type": task})
        psnr_means = [t["psnr_db"] for t in per_task if t["psnr_db"] is not None]
        out[lang] = {
            "per_task": per_task,
            "overall_task_mean": {"psnr_db": float(np.mean(psnr_means)) if psnr_means else None,
                                  "ssim": float(np.mean([t["ssim"] for t in per_task])) if per_task else None,
                                  "n_task_groups": len(per_task)},
            "overall_per_sample": _summary(ok),
            "n_missing_or_mismatched": int(((table["language"] == lang) & (table["status"] != "ok")).sum()),
        }
    return out


def _summary(grp: pd.DataFrame) -> dict:
    finite = grp["psnr_db"].dropna()
    return {"n": len(grp), "psnr_db": float(finite.mean()) if len(finite) else None,
            "n_identical": int(grp["identical"].astype(bool).sum()),
            "ssim": float(grp["ssim"].mean()) if len(grp) else None}
