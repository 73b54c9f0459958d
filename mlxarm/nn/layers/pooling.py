"""Max and average pooling over 1, 2 or 3 spatial axes of channels-last inputs
``(N, *spatial, C)``."""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import mlxarm.core as mx

from .base import Module

IntOrTuple = Union[int, Tuple[int, ...]]


def _per_axis(value, n, message):
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(message)
        return list(value)
    if not isinstance(value, int):
        raise ValueError(message)
    return [value] * n


def _row_major_strides(shape):
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return strides[::-1]


def _sliding_windows(x, window_shape, window_strides):
    """``x`` viewed as ``(N, *out_spatial, *window, C)``."""
    if x.ndim < 3:
        raise ValueError(f"To extract sliding windows at least 1 spatial dimension (3 total) is "
                         f"needed but the input only has {x.ndim} dimensions.")
    spatial = x.shape[1:-1]
    if not (len(spatial) == len(window_shape) == len(window_strides)):
        raise ValueError(
            "To extract sliding windows the window shapes and strides must have the same "
            "number of spatial dimensions as the signal but the signal has "
            f"{len(spatial)} dims and the window shape has {len(window_shape)} and strides "
            f"have {len(window_strides)}.")
    if all(w == s and size % w == 0 for size, w, s in zip(spatial, window_shape, window_strides)):
        # Windows tile the input exactly: a reshape and transpose suffice.
        split = [x.shape[0]]
        for size, w in zip(spatial, window_shape):
            split += [size // w, w]
        split.append(x.shape[-1])
        last = len(split) - 1
        return x.reshape(split).transpose([0, *range(1, last, 2), *range(2, last, 2), last])
    strides = _row_major_strides(x.shape)
    out_spatial = [(size - w) // s + 1 for size, w, s in zip(spatial, window_shape, window_strides)]
    shape = [x.shape[0], *out_spatial, *window_shape, x.shape[-1]]
    view_strides = [strides[0], *(st * s for st, s in zip(strides[1:-1], window_strides)),
                    *strides[1:-1], strides[-1]]
    return mx.as_strided(x, shape, view_strides)


class _Pool(Module):
    _spatial_dims = 0

    def __init__(self, pooling_function, padding_value, kernel_size: IntOrTuple,
                 stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0):
        super().__init__()
        name, n = type(self).__name__, self._spatial_dims
        what = "1 integer" if n == 1 else f"{n} integers"
        message = f"[{name}] '{{}}' must be an integer or a tuple containing {what}"
        kernel_size = _per_axis(kernel_size, n, message.format("kernel_size"))
        stride = kernel_size if stride is None else _per_axis(stride, n,
                                                              message.format("stride"))
        padding = _per_axis(padding, n, message.format("padding"))
        for label, values in (("kernel_size", kernel_size), ("stride", stride)):
            if any(v <= 0 for v in values):
                raise ValueError(f"[{name}] '{label}' must be positive but got {tuple(values)}.")
        if any(p < 0 for p in padding):
            raise ValueError(f"[{name}] 'padding' must be non-negative but got {tuple(padding)}.")
        self._pooling_function = pooling_function
        self._kernel_size = kernel_size
        self._stride = stride
        self._padding = [(p, p) for p in padding]
        self._padding_value = padding_value
        self._axes = tuple(range(-n - 1, -1))

    def _extra_repr(self):
        return (f"kernel_size={tuple(self._kernel_size)}, stride={tuple(self._stride)}, "
                f"padding={tuple(p for p, _ in self._padding)}")

    def __call__(self, x):
        if any(p > 0 for p, _ in self._padding):
            x = mx.pad(x, [(0, 0)] + self._padding + [(0, 0)],
                       constant_values=self._padding_value)
        windows = _sliding_windows(x, self._kernel_size, self._stride)
        return self._pooling_function(windows, self._axes)


class _MaxPool(_Pool):
    def __init__(self, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
                 padding: IntOrTuple = 0):
        super().__init__(mx.max, -math.inf, kernel_size, stride, padding)


class _AvgPool(_Pool):
    def __init__(self, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
                 padding: IntOrTuple = 0):
        super().__init__(mx.mean, 0, kernel_size, stride, padding)


class MaxPool1d(_MaxPool):
    """Max over windows of ``kernel_size`` along the one spatial axis of ``(N, L, C)``."""
    _spatial_dims = 1


class AvgPool1d(_AvgPool):
    """Mean over windows of ``kernel_size`` along the one spatial axis of ``(N, L, C)``."""
    _spatial_dims = 1


class MaxPool2d(_MaxPool):
    """Max over windows of ``kernel_size`` of ``(N, H, W, C)`` inputs."""
    _spatial_dims = 2


class AvgPool2d(_AvgPool):
    """Mean over windows of ``kernel_size`` of ``(N, H, W, C)`` inputs."""
    _spatial_dims = 2


class MaxPool3d(_MaxPool):
    """Max over windows of ``kernel_size`` of ``(N, D, H, W, C)`` inputs."""
    _spatial_dims = 3


class AvgPool3d(_AvgPool):
    """Mean over windows of ``kernel_size`` of ``(N, D, H, W, C)`` inputs."""
    _spatial_dims = 3
