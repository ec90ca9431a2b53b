"""Input images in, output images out: the official OmniGen2 resize rules, normalisation and postprocessing.

Inputs: scaled by r = min(1, sqrt(max_pixels / (h*w)), max_side / h, max_side / w) (never upscaled), floored to
a multiple of `multiple` (VAE downscale x patch size = 16), resized with Lanczos, mapped to [-1, 1].
Outputs: decoded [-1, 1] tensors -> [0, 1] -> 8-bit RGB, optionally resized (bilinear) to the requested size.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

MAX_PIXELS = 1024 * 1024
MAX_SIDE = 1024
SIZE_MULTIPLE = 16

ImageInput = Union[str, os.PathLike, PIL.Image.Image]


class ImageInputError(ValueError):
    """An input image that cannot be used: unreadable, or too small after the resize rules."""


def load_image(image: ImageInput) -> PIL.Image.Image:
    """An RGB PIL image from a path or a PIL image; clear errors for missing or unreadable files."""
    if isinstance(image, PIL.Image.Image):
        return image.convert("RGB")
    path = Path(image).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"input image {path} does not exist; check the path (relative paths are relative to "
                                f"{Path.cwd()})")
    try:
        with PIL.Image.open(path) as opened:
            return opened.convert("RGB")
    except PIL.Image.DecompressionBombError as err:
        raise ImageInputError(f"{path} is over PIL's size limit ({err}); resize it below "
                              f"{PIL.Image.MAX_IMAGE_PIXELS} pixels (it is scaled to about 1 MP anyway)") from err
    except (PIL.UnidentifiedImageError, OSError) as err:
        raise ImageInputError(f"cannot read {path} as an image ({err}); pass a PNG, JPEG or WebP file") from err


def fit_size(width: int, height: int, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE,
             multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """(width, height) after the official rules: cap the pixel count and the long side, never upscale, floor to
    `multiple`. Raises ImageInputError when a side would become 0."""
    ratio = min(1.0, (max_pixels / (width * height)) ** 0.5, max_side / height, max_side / width)
    new_w = int(width * ratio) // multiple * multiple
    new_h = int(height * ratio) // multiple * multiple
    if new_w < multiple or new_h < multiple:
        raise ImageInputError(f"a {width}x{height} image becomes {new_w}x{new_h} after resizing to multiples of "
                              f"{multiple}: too small for the VAE. Use an image at least {multiple}x{multiple} "
                              f"pixels (and not thinner than 1:{max_side // multiple})")
    return new_w, new_h


def preprocess(image: PIL.Image.Image, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE,
               multiple: int = SIZE_MULTIPLE) -> torch.Tensor:
    """[1, 3, H, W] float32 in [-1, 1], resized by `fit_size` with Lanczos."""
    width, height = fit_size(image.width, image.height, max_pixels, max_side, multiple)
    if (width, height) != image.size:
        image = image.resize((width, height), resample=PIL.Image.LANCZOS)
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    return (pixels.permute(2, 0, 1).unsqueeze(0) * 2.0 - 1.0).contiguous()


def generation_size(num_references: int, reference_size: tuple[int, int] | None, width: int, height: int,
                    max_pixels: int = MAX_PIXELS, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """(width, height) to generate at, official rules: with exactly one reference, its resized size
    (`reference_size`); otherwise the requested size capped at max_pixels and floored to `multiple`."""
    if num_references == 1 and reference_size is not None:
        return reference_size
    ratio = min(1.0, (max_pixels / (width * height)) ** 0.5)
    gen_w, gen_h = int(width * ratio) // multiple * multiple, int(height * ratio) // multiple * multiple
    if gen_w < multiple or gen_h < multiple:
        raise ImageInputError(f"output size {width}x{height} is too small: both sides must be at least {multiple} "
                              "pixels")
    return gen_w, gen_h


def postprocess(decoded: torch.Tensor, size: tuple[int, int] | None = None) -> list[PIL.Image.Image]:
    """8-bit RGB images from decoded [B, 3, H, W] values in [-1, 1]; resized (bilinear) to `size` = (w, h) if given.

    Resize and [-1, 1] -> [0, 1] run in the decoded dtype, as officially (bf16 rounding can move a byte by one).
    """
    images = decoded
    if size is not None and tuple(images.shape[-2:]) != (size[1], size[0]):
        images = F.interpolate(images, size=(size[1], size[0]), mode="bilinear")
    images = (images / 2 + 0.5).clamp(0, 1)
    array = (images.permute(0, 2, 3, 1).float().cpu().numpy() * 255).round().astype(np.uint8)
    return [PIL.Image.fromarray(a) for a in array]


def check_reference_count(images: Sequence, limit: int) -> None:
    if len(images) > limit:
        raise ValueError(f"{len(images)} reference images given; OmniGen2 takes at most {limit}. Combine some "
                         "images into one, or drop some")
