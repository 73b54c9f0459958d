"""Normalization layers: ``LayerNorm``, ``RMSNorm``, ``GroupNorm``, ``InstanceNorm`` and
``BatchNorm``. Features are on the last axis."""
from __future__ import annotations

from typing import Tuple

import mlxarm.core as mx

from .base import Module


def _check_eps(layer: str, eps: float) -> None:
    if eps <= 0.0:
        raise ValueError(f"[{layer}] 'eps' must be positive but got {eps}.")


def _affine(module: Module, x: mx.array) -> mx.array:
    return (module.weight * x + module.bias) if "weight" in module else x


class InstanceNorm(Module):
    """Normalizes each channel of each sample over its spatial axes (input ``(N, ..., C)``)."""

    def __init__(self, dims: int, eps: float = 1e-5, affine: bool = False):
        super().__init__()
        _check_eps("InstanceNorm", eps)
        if affine:
            self.weight = mx.ones((dims,))
            self.bias = mx.zeros((dims,))
        self.dims = dims
        self.eps = eps

    def _extra_repr(self):
        return f"{self.dims}, eps={self.eps}, affine={'weight' in self}"

    def __call__(self, x: mx.array) -> mx.array:
        if x.ndim < 3:
            raise ValueError(f"InstanceNorm expects inputs with at least 3 dimensions (N, ..., C)"
                             f" but the input has {x.ndim} dimensions.")
        batch, channels = x.shape[0], x.shape[-1]
        spatial = x.shape[1:-1]
        channels_first = mx.transpose(x, (0, x.ndim - 1, *range(1, x.ndim - 1)))
        y = mx.fast.layer_norm(channels_first.reshape(batch, channels, -1), None, None, self.eps)
        y = mx.transpose(y.reshape(batch, channels, *spatial), (0, *range(2, len(spatial) + 2), 1))
        return _affine(self, y)


class LayerNorm(Module):
    """Normalizes the last axis to zero mean and unit variance, then scales by ``weight`` and
    shifts by ``bias`` when ``affine`` (and ``bias``)."""

    def __init__(self, dims: int, eps: float = 1e-5, affine: bool = True, bias: bool = True):
        super().__init__()
        _check_eps("LayerNorm", eps)
        if affine:
            self.weight = mx.ones((dims,))
            if bias:
                self.bias = mx.zeros((dims,))
        self.eps = eps
        self.dims = dims

    def _extra_repr(self):
        return f"{self.dims}, eps={self.eps}, affine={'weight' in self}"

    def __call__(self, x):
        weight = self.weight if "weight" in self else None
        bias = self.bias if "bias" in self else None
        return mx.fast.layer_norm(x, weight, bias, self.eps)


class RMSNorm(Module):
    """Divides the last axis by its root mean square, then scales by ``weight``."""

    def __init__(self, dims: int, eps: float = 1e-5):
        super().__init__()
        _check_eps("RMSNorm", eps)
        self.weight = mx.ones((dims,))
        self.eps = eps

    def _extra_repr(self):
        return f"{self.weight.shape[0]}, eps={self.eps}"

    def __call__(self, x):
        return mx.fast.rms_norm(x, self["weight"], self.eps)


class GroupNorm(Module):
    """Normalizes groups of ``dims // num_groups`` features over the group and all spatial axes.

    ``pytorch_compatible`` groups consecutive features (PyTorch's layout); otherwise features
    are grouped with stride ``num_groups``.
    """

    def __init__(self, num_groups: int, dims: int, eps: float = 1e-5, affine: bool = True,
                 pytorch_compatible: bool = False):
        super().__init__()
        _check_eps("GroupNorm", eps)
        if num_groups <= 0:
            raise ValueError(f"The number of groups ({num_groups}) must be a positive integer.")
        if dims <= 0:
            raise ValueError(f"The number of features ({dims}) must be a positive integer.")
        if dims % num_groups != 0:
            raise ValueError(f"The number of features ({dims}) must be evenly divisible by the "
                             f"number of groups ({num_groups}).")
        if affine:
            self.bias = mx.zeros((dims,))
            self.weight = mx.ones((dims,))
        self.num_groups = num_groups
        self.dims = dims
        self.eps = eps
        self.pytorch_compatible = pytorch_compatible

    def _extra_repr(self):
        return (f"{self.num_groups}, {self.dims}, eps={self.eps}, affine={'weight' in self}, "
                f"pytorch_compatible={self.pytorch_compatible}")

    def _pytorch_compatible_group_norm(self, x):
        groups = self.num_groups
        batch, *rest, dims = x.shape
        group_size = dims // groups
        x = x.reshape(batch, -1, groups, group_size).transpose(0, 2, 1, 3)
        x = mx.fast.layer_norm(x.reshape(batch, groups, -1), eps=self.eps, weight=None, bias=None)
        x = x.reshape(batch, groups, -1, group_size).transpose(0, 2, 1, 3)
        return x.reshape(batch, *rest, dims)

    def _group_norm(self, x):
        batch, *rest, dims = x.shape
        x = x.reshape(batch, -1, self.num_groups)
        mean = mx.mean(x, axis=1, keepdims=True)
        var = mx.var(x, axis=1, keepdims=True)
        x = (x - mean) * mx.rsqrt(var + self.eps)
        return x.reshape(batch, *rest, dims)

    def __call__(self, x):
        norm = self._pytorch_compatible_group_norm if self.pytorch_compatible else self._group_norm
        return _affine(self, norm(x))


class BatchNorm(Module):
    """Normalizes features over the batch (and spatial) axes; input ``(N, C)``, ``(N, L, C)``
    or ``(N, H, W, C)``.

    In training mode batch statistics are used and, with ``track_running_stats``, folded into
    ``running_mean``/``running_var`` (frozen parameters) with ``momentum``; in evaluation mode
    the running statistics are used.
    """

    _RUNNING = ["running_mean", "running_var"]

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, track_running_stats: bool = True):
        super().__init__()
        _check_eps("BatchNorm", eps)
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = mx.ones((num_features,))
            self.bias = mx.zeros((num_features,))
        if self.track_running_stats:
            self.running_mean = mx.zeros((num_features,))
            self.running_var = mx.ones((num_features,))
            self.freeze(keys=self._RUNNING, recurse=False)

    def unfreeze(self, *args, **kwargs):
        """Unfreeze like ``Module.unfreeze``; the running statistics stay frozen."""
        super().unfreeze(*args, **kwargs)
        self.freeze(keys=self._RUNNING, recurse=False)

    def _extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={'weight' in self}, track_running_stats={self.track_running_stats}")

    def _calc_stats(self, x: mx.array, ddof: int = 0) -> Tuple[mx.array, mx.array]:
        axes = tuple(range(0, x.ndim - 1))
        return mx.mean(x, axis=axes), mx.var(x, axis=axes, ddof=ddof)

    def __call__(self, x: mx.array) -> mx.array:
        if x.ndim < 2 or x.ndim > 4:
            raise ValueError(
                f"Expected input tensor to have 2, 3 or 4 dimensions, but got {x.ndim}")
        if self.training:
            values_per_channel = 1
            for size in x.shape[:-1]:
                values_per_channel *= size
            if values_per_channel == 1:
                raise ValueError("BatchNorm training requires more than one value per channel.")
        mean, var = self._calc_stats(x)
        if self.training and self.track_running_stats:
            mu = self.momentum
            _, unbiased_var = self._calc_stats(x, ddof=1)
            self.running_mean = (1 - mu) * self.running_mean + mu * mean
            self.running_var = (1 - mu) * self.running_var + mu * unbiased_var
        elif self.track_running_stats:
            mean, var = self.running_mean, self.running_var
        return _affine(self, (x - mean) * mx.rsqrt(var + self.eps))
