"""What every architecture's attention shares, with mlx-lm's names: the attention mask for a step and
the attention call itself. Architectures build masks and attend only through these two functions, so
the cache layout (``cache.py``) and the mask may change without touching a model file."""
from __future__ import annotations

import mlxarm.core as mx


def create_attention_mask(h, cache=None, window_size: int | None = None):
    """The mask for queries ``h`` (batch, length, dims) attending to the cache plus themselves:
    ``None`` for a single query, ``"causal"`` for a prompt chunk, or a boolean array when a sliding
    window of ``window_size`` positions limits how far back a query sees, or when the cache's
    position is an array (then the keys are the cache's whole buffer)."""
    L = h.shape[1]
    offset = cache.offset if cache is not None else 0
    if not isinstance(offset, int):
        # A position held as an array (a fixed-shape decode step, see cache.py): the keys span the
        # cache's whole buffer, valid up to the last query's position.
        q = offset + mx.arange(L, dtype=offset.dtype)[:, None]
        k = mx.arange(cache.keys.shape[2], dtype=offset.dtype)[None, :]
        mask = k <= q
        return mask & (k > q - window_size) if window_size is not None else mask
    if window_size is not None and offset + L > window_size:
        q = mx.arange(offset, offset + L)[:, None]
        k = mx.arange(offset + L)[None, :]
        return (k <= q) & (k > q - window_size)
    if L == 1:
        return None
    return "causal"


def scaled_dot_product_attention(queries, keys, values, cache, scale: float, mask):
    """softmax(scale * q k^T + mask) v over the keys/values the cache returned."""
    return mx.fast.scaled_dot_product_attention(queries, keys, values, scale=scale, mask=mask)
