"""Dropout layers: zero elements (``Dropout``) or whole channels (``Dropout2d``/``Dropout3d``)
with probability ``p`` in training mode, rescaling the rest by ``1 / (1 - p)``."""
from __future__ import annotations

import mlxarm.core as mx

from .base import Module


class _DropoutBase(Module):
    # Trailing axes of the input that share one mask value (0: every element is independent).
    _shared_axes = 0
    _valid_ndims = None

    def __init__(self, p: float = 0.5):
        super().__init__()
        if p < 0 or p >= 1:
            raise ValueError(f"The dropout probability {p} is not in [0, 1)")
        self._p_1 = 1 - p

    def _extra_repr(self) -> str:
        return f"p={1 - self._p_1}"

    def __call__(self, x: mx.array) -> mx.array:
        if self._valid_ndims is not None and x.ndim not in self._valid_ndims:
            low, high = self._valid_ndims
            raise ValueError(f"Received input with {x.ndim} dimensions. Expected {low} or "
                             f"{high} dimensions.")
        if self._p_1 == 1 or not self.training:
            return x
        mask_shape = list(x.shape)
        for axis in range(2, 2 + self._shared_axes):
            mask_shape[-axis] = 1
        mask = mx.random.bernoulli(p=self._p_1, shape=mask_shape)
        return (mask * x) * (1 / self._p_1)


class Dropout(_DropoutBase):
    """Zeroes each element with probability ``p`` during training."""


class Dropout2d(_DropoutBase):
    """Zeroes whole channels of ``(N, H, W, C)`` or ``(H, W, C)`` inputs during training."""

    _shared_axes = 2
    _valid_ndims = (3, 4)


class Dropout3d(_DropoutBase):
    """Zeroes whole channels of ``(N, D, H, W, C)`` or ``(D, H, W, C)`` inputs during
    training."""

    _shared_axes = 3
    _valid_ndims = (4, 5)
