"""Rotary position embeddings as the architectures configure them (``rope_scaling`` in
``config.json``): plain or linearly scaled ``nn.RoPE``, Llama 3's per-frequency scaling, and the
"longrope" (su) scaling of Phi-3, with mlx-lm's formulas so the same configs give the same rotations."""
from __future__ import annotations

import math
from typing import Optional

import mlxarm.core as mx
import mlxarm.nn as nn


class Llama3RoPE(nn.Module):
    """Rotation frequencies stretched by ``factor`` for long wavelengths, kept for short ones, and
    blended in between (Llama 3.1's scheme)."""

    def __init__(self, dims: int, base: float, traditional: bool, scaling: dict):
        super().__init__()
        self.dims, self.traditional = dims, traditional
        factor = scaling["factor"]
        low = scaling.get("low_freq_factor", 1.0)
        high = scaling.get("high_freq_factor", 4.0)
        old_context = scaling.get("original_max_position_embeddings", 8192)
        freqs = base ** (mx.arange(0, dims, 2) / dims)
        wavelens = 2 * math.pi * freqs
        freqs = mx.where(wavelens > old_context / low, freqs * factor, freqs)
        medium = (wavelens > old_context / high) & (wavelens < old_context / low)
        smooth = (old_context / wavelens - low) / (high - low)
        self._freqs = mx.where(medium, freqs / ((1 - smooth) / factor + smooth), freqs)

    def __call__(self, x, offset=0):
        return mx.fast.rope(x, self.dims, traditional=self.traditional, base=None, scale=1.0,
                            offset=offset, freqs=self._freqs)


class SuScaledRoPE(nn.Module):
    """Phi-3's "longrope": frequencies times the long factors, inputs scaled by a magnitude that
    grows with the context extension."""

    def __init__(self, dims: int, base: float, max_position_embeddings: int,
                 original_max_position_embeddings: int, long_factor, long_mscale=None):
        super().__init__()
        self.dims = dims
        freqs = base ** (mx.arange(0, dims, 2, dtype=mx.float32) / dims)
        self._freqs = mx.array(long_factor, dtype=mx.float32) * freqs
        factor = max_position_embeddings / original_max_position_embeddings
        self._scale = long_mscale or (1.0 if factor <= 1.0 else math.sqrt(
            1 + math.log(factor) / math.log(original_max_position_embeddings)))

    def __call__(self, x, offset=0):
        if self._scale != 1.0:
            rotated = x[..., :self.dims] * self._scale
            x = rotated if self.dims == x.shape[-1] else mx.concatenate([rotated, x[..., self.dims:]], -1)
        return mx.fast.rope(x, self.dims, traditional=False, base=None, scale=1.0, offset=offset,
                            freqs=self._freqs)


def initialize_rope(dims: int, base: float, traditional: bool, scaling_config: Optional[dict] = None,
                    max_position_embeddings: Optional[int] = None):
    """The rotary embedding ``scaling_config`` (a config's ``rope_scaling``) describes."""
    kind = "default"
    if scaling_config:
        kind = scaling_config.get("type") or scaling_config.get("rope_type", "default")
    if kind in ("default", "linear"):
        scale = 1 / scaling_config["factor"] if kind == "linear" else 1.0
        return nn.RoPE(dims, traditional=traditional, base=base, scale=scale)
    if kind == "llama3":
        return Llama3RoPE(dims, base, traditional, scaling_config)
    if kind in ("longrope", "su"):
        return SuScaledRoPE(dims, base, max_position_embeddings,
                            scaling_config["original_max_position_embeddings"],
                            scaling_config["long_factor"], scaling_config.get("long_mscale"))
    raise ValueError(f"rope scaling type '{kind}' is not supported (supported: default, linear, "
                     "llama3, longrope)")
