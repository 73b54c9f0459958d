"""Convolution layers over channels-last inputs: ``Conv1d`` (``NLC``), ``Conv2d`` (``NHWC``) and
``Conv3d`` (``NDHWC``), with weights ``(out_channels, *kernel_size, in_channels // groups)``."""
from __future__ import annotations

import math
from typing import Union

import mlxarm.core as mx

from .base import Module


def _per_axis(value, n: int):
    """An int repeated over ``n`` spatial axes; tuples are kept as given."""
    return (value,) * n if isinstance(value, int) else value


def _check_groups(in_channels: int, groups: int) -> None:
    if in_channels % groups != 0:
        raise ValueError(f"The number of input channels ({in_channels}) must be divisible by the "
                         f"number of groups ({groups})")


def _uniform_weight(out_channels: int, kernel_size: tuple, in_per_group: int):
    """Uniform in [-k, k] with k = 1 / sqrt(fan_in)."""
    bound = math.sqrt(1 / (in_per_group * math.prod(kernel_size)))
    return mx.random.uniform(low=-bound, high=bound, shape=(out_channels, *kernel_size, in_per_group))


class Conv1d(Module):
    """1-d convolution over ``(N, L, C_in)`` inputs with ``groups`` input feature groups and an
    optional learnable bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1, bias: bool = True):
        super().__init__()
        _check_groups(in_channels, groups)
        self.weight = _uniform_weight(out_channels, (kernel_size,), in_channels // groups)
        if bias:
            self.bias = mx.zeros((out_channels,))
        self.padding = padding
        self.dilation = dilation
        self.stride = stride
        self.groups = groups

    def _extra_repr(self):
        return (f"{self.weight.shape[-1] * self.groups}, {self.weight.shape[0]}, "
                f"kernel_size={self.weight.shape[1]}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"bias={'bias' in self}")

    def __call__(self, x):
        y = mx.conv1d(x, self.weight, self.stride, self.padding, self.dilation, self.groups)
        return y + self.bias if "bias" in self else y


class Conv2d(Module):
    """2-d convolution over ``(N, H, W, C_in)`` inputs; ``kernel_size``, ``stride`` and ``padding``
    are an int (both axes) or a pair."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Union[int, tuple],
                 stride: Union[int, tuple] = 1, padding: Union[int, tuple] = 0,
                 dilation: Union[int, tuple] = 1, groups: int = 1, bias: bool = True):
        super().__init__()
        _check_groups(in_channels, groups)
        kernel_size, stride, padding = (_per_axis(v, 2) for v in (kernel_size, stride, padding))
        self.weight = _uniform_weight(out_channels, tuple(kernel_size), in_channels // groups)
        if bias:
            self.bias = mx.zeros((out_channels,))
        self.padding = padding
        self.stride = stride
        self.dilation = dilation
        self.groups = groups

    def _extra_repr(self):
        return (f"{self.weight.shape[-1] * self.groups}, {self.weight.shape[0]}, "
                f"kernel_size={self.weight.shape[1:3]}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"bias={'bias' in self}")

    def __call__(self, x):
        y = mx.conv2d(x, self.weight, self.stride, self.padding, self.dilation, self.groups)
        return y + self.bias if "bias" in self else y


class Conv3d(Module):
    """3-d convolution over ``(N, D, H, W, C_in)`` inputs; ``kernel_size``, ``stride`` and
    ``padding`` are an int (every axis) or a triple."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Union[int, tuple],
                 stride: Union[int, tuple] = 1, padding: Union[int, tuple] = 0,
                 dilation: Union[int, tuple] = 1, bias: bool = True):
        super().__init__()
        kernel_size, stride, padding = (_per_axis(v, 3) for v in (kernel_size, stride, padding))
        self.weight = _uniform_weight(out_channels, tuple(kernel_size), in_channels)
        if bias:
            self.bias = mx.zeros((out_channels,))
        self.padding = padding
        self.stride = stride
        self.dilation = dilation

    def _extra_repr(self):
        return (f"{self.weight.shape[-1]}, {self.weight.shape[0]}, "
                f"kernel_size={self.weight.shape[1:4]}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, bias={'bias' in self}")

    def __call__(self, x):
        y = mx.conv3d(x, self.weight, self.stride, self.padding, self.dilation)
        return y + self.bias if "bias" in self else y
