"""Omni-RoPE: 3-axis position ids for the joint [text | ref_1 .. ref_n | noisy] sequence, and their rotations.

Text token k sits at (k, k, k). After the text, every image (each reference, then the noisy latent) sits on its
own "frame" index `shift` with (row, col) inside it; the frame index advances by max(rows, cols) of each reference.
Head dims are split by axis (axis 0 -> the first axes_dim[0] dims, ...) and ADJACENT pairs (2i, 2i+1) are rotated,
as complex numbers would be. Angles are kept as cos/sin in float32 (real tensors compile; complex ones do not).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SampleLayout:
    """Token counts of one sample's segments: valid text tokens, each reference image's (rows, cols), the noisy image."""

    text_len: int
    ref_grids: tuple[tuple[int, int], ...]
    noisy_grid: tuple[int, int]

    @property
    def ref_lens(self) -> tuple[int, ...]:
        return tuple(h * w for h, w in self.ref_grids)

    @property
    def img_len(self) -> int:
        return self.noisy_grid[0] * self.noisy_grid[1]

    @property
    def joint_len(self) -> int:
        return self.text_len + sum(self.ref_lens) + self.img_len


def grid_position_ids(frame: int, rows: int, cols: int) -> torch.Tensor:
    """[rows*cols, 3] ids (frame, row, col) of an image's tokens in row-major order."""
    r = torch.arange(rows).repeat_interleave(cols)
    c = torch.arange(cols).repeat(rows)
    return torch.stack([torch.full_like(r, frame), r, c], dim=1)


def joint_position_ids(layout: SampleLayout) -> torch.Tensor:
    """[joint_len, 3] position ids of one sample's [text | refs | noisy] sequence."""
    text = torch.arange(layout.text_len).unsqueeze(1).expand(-1, 3)
    parts = [text]
    shift = layout.text_len
    for rows, cols in layout.ref_grids:
        parts.append(grid_position_ids(shift, rows, cols))
        shift += max(rows, cols)
    parts.append(grid_position_ids(shift, *layout.noisy_grid))
    return torch.cat(parts, dim=0)


class RotaryTables:
    """Per-axis angle tables built once per device, and per-layout cos/sin cached by the layout's shape.

    Batch 1 repeats the same layout every step and every CFG branch, so the cache turns RoPE into a lookup.
    """

    def __init__(self, axes_dim: tuple[int, ...], axes_lens: tuple[int, ...], theta: float = 10000.0,
                 cache_size: int = 64):
        self.axes_dim = tuple(axes_dim)
        self.axes_lens = tuple(axes_lens)
        self.theta = theta
        self.cache_size = cache_size
        self._angles: dict[torch.device, list[torch.Tensor]] = {}
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _axis_angles(self, device: torch.device) -> list[torch.Tensor]:
        if device not in self._angles:
            tables = []
            for dim, length in zip(self.axes_dim, self.axes_lens):
                # Built in float64, then rounded to float32 as the official tables are (cos/sin of those angles).
                inv_freq = self.theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
                pos = torch.arange(length, dtype=torch.float64)
                tables.append(torch.outer(pos, inv_freq).to(device))
            self._angles[device] = tables
        return self._angles[device]

    def angles(self, position_ids: torch.Tensor) -> torch.Tensor:
        """[L, head_dim/2] float32 rotation angles for [L, 3] position ids."""
        tables = self._axis_angles(position_ids.device)
        for axis, (table, length) in enumerate(zip(tables, self.axes_lens)):
            top = int(position_ids[:, axis].max()) if position_ids.numel() else 0
            if top >= length:
                raise ValueError(f"RoPE axis {axis} position {top} exceeds axes_lens[{axis}] = {length}; the input "
                                 "is larger than the model supports (use smaller images or fewer text tokens)")
        return torch.cat([table[position_ids[:, axis]] for axis, table in enumerate(tables)], dim=-1).float()

    def cos_sin(self, layout: SampleLayout, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin, each [joint_len, head_dim/2] float32, for one sample's joint sequence."""
        key = (layout, device)
        hit = self._cache.get(key)
        if hit is None:
            angles = self.angles(joint_position_ids(layout).to(device))
            hit = (angles.cos(), angles.sin())
            if len(self._cache) >= self.cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = hit
        return hit


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of the last dim of x [B, L, H, D] by angles with cos/sin [B, L, D/2]; math in fp32."""
    if torch.compiler.is_compiling():
        return rotate_pairs_real(x, cos, sin)  # the compiler fuses the real form into one kernel
    return rotate_pairs_complex(x, cos, sin)


def rotate_pairs_complex(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Eager form: one complex multiply instead of ~8 separate real element-wise kernels."""
    rotation = torch.complex(cos, sin).unsqueeze(2)
    rotated = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous()) * rotation
    return torch.view_as_real(rotated).flatten(-2).to(x.dtype)


def rotate_pairs_real(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Compiler form: complex tensors do not compile, real cos/sin arithmetic does."""
    pairs = x.float().unflatten(-1, (-1, 2))
    x_even, x_odd = pairs[..., 0], pairs[..., 1]
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    rotated = torch.stack([x_even * cos - x_odd * sin, x_even * sin + x_odd * cos], dim=-1)
    return rotated.flatten(-2).to(x.dtype)
