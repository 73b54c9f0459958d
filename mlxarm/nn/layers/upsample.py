"""``Upsample``: nearest, linear and cubic resampling of the spatial axes of ``(N, *spatial, C)``
inputs, with MLX's sampling grids (``align_corners``) and antialiased downscaling.

Linear and cubic interpolation are separable: each spatial axis is resampled by an ``(M, N)``
interpolation matrix built with numpy from the axis length and scale alone (sample positions and
kernel weights in float32, as MLX computes them), applied with one ``tensordot``. Nearest neighbour
gathers along each axis.
"""
from __future__ import annotations

import math
from typing import Literal, Tuple, Union

import numpy as np

import mlxarm.core as mx

from .base import Module


def _positions(n: int, scale: float, align_corners: bool) -> np.ndarray:
    """Where each of the ``int(scale * n)`` outputs samples the input, in input coordinates."""
    m = int(scale * n)
    grid = np.arange(m, dtype=np.float32)
    if align_corners:
        return grid * ((n - 1) / max(m - 1, 1))
    step = 1 / scale
    return grid * step - ((m - 1) * step - n + 1) / 2


def _nearest_indices(n: int, scale: float) -> np.ndarray:
    m = int(scale * n)
    grid = np.arange(m, dtype=np.float32)
    if m > n:
        return np.round((grid + 0.5) * (n / m) - 0.5).astype(np.uint32)
    return (grid * (n / m)).astype(np.uint32)


def _matrix(n: int, taps) -> np.ndarray:
    """The ``(M, n)`` matrix summing ``weight * x[index]`` over taps (index, weight) per output."""
    taps = list(taps)
    m = taps[0][0].shape[0]
    out = np.zeros((m, n), np.float32)
    rows = np.arange(m)
    for index, weight in taps:
        np.add.at(out, (rows, index), weight)
    return out


def _linear_taps(n, scale, align_corners):
    pos = np.clip(_positions(n, scale, align_corners), 0, n - 1)
    left = np.floor(pos)
    frac = pos - left
    return [(left.astype(np.int64), 1 - frac), (np.ceil(pos).astype(np.int64), frac)]


def _keys(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with parameter ``a`` at distances ``x >= 0``."""
    inner = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    outer = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x <= 1.0, inner, np.where(x <= 2.0, outer, np.float32(0))).astype(np.float32)


def _cubic_taps(n, scale, align_corners):
    # The four nearest samples with a = -0.75; indices past the border repeat the edge sample.
    pos = _positions(n, scale, align_corners)
    taps = []
    for k in (-1, 0, 1, 2):
        grid = np.floor(pos) + k
        taps.append((np.clip(grid, 0, n - 1).astype(np.int64), _keys(np.abs(pos - grid), -0.75)))
    return taps


def _antialiased_taps(kernel, radius):
    """Taps of ``kernel`` widened by 1/scale when downscaling (a low-pass filter); taps outside the
    input get no weight and each output's weights are renormalized to sum to one."""

    def taps_fn(n, scale, align_corners):
        pos = _positions(n, scale, align_corners)
        widen = 1.0 / scale if scale < 1 else 1.0
        count = math.ceil(radius * widen) + 1
        base = np.floor(pos)
        idxs, weights = [], []
        for k in range(-count + 1, count):
            idx = base + k
            w = kernel(np.abs(pos - idx) / np.float32(widen))
            weights.append(np.where((idx >= 0) & (idx < n), w, np.float32(0)).astype(np.float32))
            idxs.append(idx)
        total = sum(weights)
        total = np.where(total > 0, total, np.float32(1))
        return [(np.clip(i, 0, n - 1).astype(np.int64), w / total) for i, w in zip(idxs, weights)]

    return taps_fn


_triangle_taps = _antialiased_taps(lambda d: np.maximum(1.0 - d, np.float32(0)), 1.0)
_cubic_aa_taps = _antialiased_taps(lambda d: _keys(d, -0.5), 2.0)


def _check_scales(x, scale_factor) -> None:
    if x.ndim - 2 != len(scale_factor):
        raise ValueError("A scale needs to be provided for each spatial dimension")


def _resample(x, scale_factor, align_corners, taps_fn):
    _check_scales(x, scale_factor)
    out = x.astype(mx.result_type(x.dtype, mx.float32))
    for axis, (n, scale) in enumerate(zip(x.shape[1:-1], scale_factor), start=1):
        weights = mx.array(_matrix(n, taps_fn(n, scale, align_corners)))
        out = mx.moveaxis(mx.tensordot(weights, out, axes=([1], [axis])), 0, axis)
    return out


def _check_antialias(align_corners: bool, antialias: bool) -> None:
    if antialias and align_corners:
        raise ValueError("[Upsample] antialias=True with align_corners=True is not supported. Use "
                         "align_corners=False for antialiased interpolation.")


def upsample_nearest(x: mx.array, scale_factor: Tuple):
    """Nearest-neighbour resampling of every spatial axis of ``x``."""
    _check_scales(x, scale_factor)
    for axis, (n, scale) in enumerate(zip(x.shape[1:-1], scale_factor), start=1):
        x = mx.take(x, mx.array(_nearest_indices(n, scale)), axis=axis)
    return x


def upsample_linear(x: mx.array, scale_factor: Tuple, align_corners: bool = False,
                    antialias: bool = False):
    """(Multi-)linear interpolation of every spatial axis of ``x``."""
    _check_antialias(align_corners, antialias)
    return _resample(x, scale_factor, align_corners, _triangle_taps if antialias else _linear_taps)


def upsample_cubic(x: mx.array, scale_factor: Tuple, align_corners: bool = False,
                   antialias: bool = False):
    """(Multi-)cubic interpolation of every spatial axis of ``x``."""
    _check_antialias(align_corners, antialias)
    return _resample(x, scale_factor, align_corners, _cubic_aa_taps if antialias else _cubic_taps)


class Upsample(Module):
    """Resample the spatial axes (1 to ``ndim - 2``) of the input by ``scale_factor`` (one float for
    every axis or one per axis) with ``mode`` ``"nearest"``, ``"linear"`` or ``"cubic"``.

    ``align_corners=True`` maps the first and last input samples onto the first and last outputs.
    ``antialias=True`` (linear and cubic only, not with ``align_corners``) low-pass filters when
    downscaling; for cubic it also switches the kernel parameter from -0.75 to -0.5.
    """

    def __init__(self, scale_factor: Union[float, Tuple],
                 mode: Literal["nearest", "linear", "cubic"] = "nearest",
                 align_corners: bool = False, antialias: bool = False):
        super().__init__()
        if mode not in ("nearest", "linear", "cubic"):
            raise ValueError(f"[Upsample] Got unsupported upsampling algorithm: {mode}")
        if antialias and mode == "nearest":
            raise ValueError("[Upsample] Antialiasing is not supported for nearest neighbor upsampling")
        if isinstance(scale_factor, (list, tuple)):
            scale_factor = tuple(float(s) for s in scale_factor)
        else:
            scale_factor = float(scale_factor)
        _check_antialias(align_corners, antialias)
        self.scale_factor = scale_factor
        self.mode = mode
        self.align_corners = align_corners
        self.antialias = antialias

    def _extra_repr(self) -> str:
        text = (f"scale_factor={self.scale_factor}, mode={self.mode!r}, "
                f"align_corners={self.align_corners}")
        return text + ", antialias=True" if self.antialias else text

    def __call__(self, x: mx.array) -> mx.array:
        dims = x.ndim - 2
        if dims <= 0:
            raise ValueError(f"[Upsample] The input should have at least 1 spatial dimension which "
                             f"means it should be at least 3D but {x.ndim}D was provided")
        scale_factor = self.scale_factor
        if isinstance(scale_factor, tuple):
            if len(scale_factor) != dims:
                raise ValueError(f"[Upsample] One scale per spatial dimension is required but "
                                 f"scale_factor={scale_factor} and the number of spatial dimensions "
                                 f"were {dims}")
        else:
            scale_factor = (scale_factor,) * dims
        if self.mode == "nearest":
            return upsample_nearest(x, scale_factor)
        if self.mode == "linear":
            return upsample_linear(x, scale_factor, self.align_corners, self.antialias)
        return upsample_cubic(x, scale_factor, self.align_corners, self.antialias)
