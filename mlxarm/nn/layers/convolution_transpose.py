"""Transposed convolution layers over channels-last inputs: ``ConvTranspose1d``,
``ConvTranspose2d`` and ``ConvTranspose3d``, with weights ``(out_channels, *kernel_size,
in_channels)``."""
from __future__ import annotations

from typing import Union

import mlxarm.core as mx

from .base import Module
from .convolution import _per_axis, _uniform_weight


class _ConvTransposeNd(Module):
    _ndim = 0

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation,
                 output_padding, bias):
        super().__init__()
        if self._ndim > 1:
            kernel_size, stride, padding, output_padding = (
                _per_axis(v, self._ndim) for v in (kernel_size, stride, padding, output_padding))
            kernel = tuple(kernel_size)
        else:
            kernel = (kernel_size,)
        self.weight = _uniform_weight(out_channels, kernel, in_channels)
        if bias:
            self.bias = mx.zeros((out_channels,))
        self.padding = padding
        self.dilation = dilation
        self.stride = stride
        self.output_padding = output_padding

    def _extra_repr(self):
        kernel = self.weight.shape[1] if self._ndim == 1 else self.weight.shape[1:1 + self._ndim]
        return (f"{self.weight.shape[-1]}, {self.weight.shape[0]}, kernel_size={kernel}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"output_padding={self.output_padding}, bias={'bias' in self}")

    def __call__(self, x):
        conv = (mx.conv_transpose1d, mx.conv_transpose2d, mx.conv_transpose3d)[self._ndim - 1]
        y = conv(x, self.weight, self.stride, self.padding, self.dilation, self.output_padding)
        return y + self.bias if "bias" in self else y


class ConvTranspose1d(_ConvTransposeNd):
    """1-d transposed convolution over ``(N, L, C_in)`` inputs."""

    _ndim = 1

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, output_padding: int = 0, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         output_padding, bias)


class ConvTranspose2d(_ConvTransposeNd):
    """2-d transposed convolution over ``(N, H, W, C_in)`` inputs."""

    _ndim = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Union[int, tuple],
                 stride: Union[int, tuple] = 1, padding: Union[int, tuple] = 0,
                 dilation: Union[int, tuple] = 1, output_padding: Union[int, tuple] = 0,
                 bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         output_padding, bias)


class ConvTranspose3d(_ConvTransposeNd):
    """3-d transposed convolution over ``(N, D, H, W, C_in)`` inputs."""

    _ndim = 3

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Union[int, tuple],
                 stride: Union[int, tuple] = 1, padding: Union[int, tuple] = 0,
                 dilation: Union[int, tuple] = 1, output_padding: Union[int, tuple] = 0,
                 bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         output_padding, bias)
