"""Fidelity of one precision's edits to another's: PSNR and SSIM (scikit-image) of image pairs with the same seed.

It costs no judge time and is far less noisy than the judge: identical pipelines with the same seed give identical
images, so any drop measures what the precision change did to the output.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
from PIL import Image


def image_fidelity(reference: np.ndarray, test: np.ndarray) -> dict:
    """PSNR (dB, data range 255; None when the images are identical) and SSIM of two uint8 images [H, W, 3]."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if reference.shape != test.shape:
        raise ValueError(f"image shapes differ: {reference.shape} vs {test.shape}")
    identical = bool(np.array_equal(reference, test))
    psnr = None if identical else float(peak_signal_noise_ratio(reference, test, data_range=255))
    side = min(7, *reference.shape[:2])
    win = side if side % 2 else side - 1  # SSIM needs an odd window no larger than the image
    ssim = float(structural_similarity(reference, test, channel_axis=2, data_range=255, win_size=win))
    return {"psnr_db": psnr, "ssim": ssim, "identical": identical}


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
