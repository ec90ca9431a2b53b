"""Fidelity of one image to another made with the same seed and inputs: PSNR and SSIM (scikit-image).

It costs no judge time and is far less noisy than a judge: identical pipelines with the same seed give identical
images, so any drop measures what the change between them (a precision, a step cache) did to the output.
"""
from __future__ import annotations

import numpy as np


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
