"""Positional encodings: rotary (``RoPE``), sinusoidal and ALiBi attention biases."""
from __future__ import annotations

import math
from typing import Optional

import mlxarm.core as mx

from .base import Module


class RoPE(Module):
    """Rotary positional encoding of the first ``dims`` features of the last axis
    (``traditional`` rotates adjacent pairs instead of the two halves)."""

    def __init__(self, dims: int, traditional: bool = False, base: float = 10000,
                 scale: float = 1.0):
        super().__init__()
        self.dims = dims
        self.traditional = traditional
        self.base = base
        self.scale = scale

    def _extra_repr(self):
        return f"{self.dims}, traditional={self.traditional}"

    def __call__(self, x, offset: int = 0):
        return mx.fast.rope(x, self.dims, traditional=self.traditional, base=self.base,
                            scale=self.scale, offset=offset)


class SinusoidalPositionalEncoding(Module):
    """Maps positions ``x`` to ``[sin(x * f), cos(x * f)]`` over ``dims // 2`` frequencies
    ``f`` spaced geometrically from ``max_freq`` down to ``min_freq``."""

    def __init__(self, dims: int, min_freq: float = 0.0001, max_freq: float = 1,
                 scale: Optional[float] = None, cos_first: bool = False,
                 full_turns: bool = False):
        super().__init__()
        if dims <= 0 or dims % 2 != 0:
            raise ValueError(f"[SinusoidalPositionalEncoding] dims must be positive and even but "
                             f"got {dims}.")
        half = dims // 2
        # Goes from 1 down to 0 over the frequencies (a single frequency sits at max_freq).
        one_zero = mx.array([1.0]) if dims == 2 else 1 - mx.arange(0, half) / (half - 1)
        log_min, log_max = math.log(min_freq), math.log(max_freq)
        self._sigmas = mx.exp(one_zero * (log_max - log_min) + log_min)
        if full_turns:
            self._sigmas = self._sigmas * (2 * math.pi)
        self.scale = scale if scale is not None else (2 / dims) ** 0.5
        self.cos_first = cos_first

    def __call__(self, x):
        y = x[..., None] * self._sigmas
        parts = [mx.cos(y), mx.sin(y)] if self.cos_first else [mx.sin(y), mx.cos(y)]
        y = mx.concatenate(parts, axis=-1)
        if self.scale != 1:
            y = y * self.scale
        return y


def _alibi_slopes(n: int):
    if math.log2(n).is_integer():
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]
    # Not a power of two: the nearest lower power's slopes, then every other slope of the
    # next power up.
    lower = 2 ** math.floor(math.log2(n))
    return _alibi_slopes(lower) + _alibi_slopes(2 * lower)[0::2][: n - lower]


class ALiBi(Module):
    """Adds per-head linear distance penalties to attention scores ``(B, H, Lq, Lk)``."""

    @staticmethod
    def create_alibi_matrix(q_sequence_length: int, k_sequence_length: int, num_heads: int,
                            offset: int = 0, dtype: mx.Dtype = mx.float32) -> mx.array:
        queries = mx.arange(offset, q_sequence_length)
        keys = mx.arange(0, k_sequence_length)
        distance = -mx.abs(mx.expand_dims(queries[:, None] - keys[None, :], axis=(0, 1)))
        slope = ALiBi.create_alibi_slope(num_heads=num_heads, dtype=dtype)
        return (distance * slope).astype(dtype)

    @staticmethod
    def create_alibi_slope(num_heads: int, dtype: mx.Dtype = mx.float32) -> mx.array:
        return mx.expand_dims(mx.array(_alibi_slopes(num_heads), dtype=dtype), axis=(-1, -2))

    def __call__(self, attention_scores: mx.array, offset: int = 0,
                 mask: Optional[mx.array] = None) -> mx.array:
        alibi = ALiBi.create_alibi_matrix(
            q_sequence_length=attention_scores.shape[-2] + offset,
            k_sequence_length=attention_scores.shape[-1],
            num_heads=attention_scores.shape[1], offset=offset, dtype=attention_scores.dtype)
        if mask is not None:
            alibi = alibi + mask
        return attention_scores + alibi
