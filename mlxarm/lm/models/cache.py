"""The key/value cache: buffers allocated ahead, written in place one step at a time.

The position of the next entry (``offset``) is a Python int, as in mlx-lm. A decode step that must
keep one graph structure from token to token (``generate.generate_step`` compiles it) sets
``offset`` to an integer *array* instead: ``update_and_fetch`` then writes at that position with
``mx.slice_update`` and returns the whole buffer, and ``base.create_attention_mask`` masks the
positions not yet written, so no shape or op parameter depends on the position. The caller makes
room first (``reserve``) and puts an int back afterwards (``state`` and ``trim`` slice by it)."""
from __future__ import annotations

import mlxarm.core as mx


class KVCache:
    """Keys and values of one attention layer, shape (batch, kv_heads, capacity, head_dim).

    Capacity grows in ``step``-sized chunks; ``make_prompt_cache(model, max_size)`` allocates the
    whole generation up front so decode steps never reallocate."""

    step = 256

    def __init__(self, capacity: int = 0):
        self.keys = None
        self.values = None
        self.offset = 0
        self.capacity = capacity

    def _grow(self, like_k, like_v, needed: int):
        B, H, _, Dk = like_k.shape
        Dv = like_v.shape[3]
        size = self.capacity if self.capacity >= needed else -(-needed // self.step) * self.step
        keys = mx.zeros((B, H, size, Dk), like_k.dtype)
        values = mx.zeros((B, H, size, Dv), like_v.dtype)
        if self.keys is not None and self.offset:
            keys[..., :self.offset, :] = self.keys[..., :self.offset, :]
            values[..., :self.offset, :] = self.values[..., :self.offset, :]
        self.keys, self.values, self.capacity = keys, values, size

    def reserve(self, n: int) -> bool:
        """Make room for ``n`` more positions after ``offset`` (an int); False when nothing has been
        stored yet (the buffers' shape is unknown until the first update)."""
        if self.keys is None:
            return False
        if self.offset + n > self.keys.shape[2]:
            self._grow(self.keys, self.values, self.offset + n)
        return True

    def update_and_fetch(self, keys, values):
        if not isinstance(self.offset, int):
            return self._update_at_position(keys, values)
        start = self.offset
        end = start + keys.shape[2]
        if self.keys is None or end > self.keys.shape[2]:
            self._grow(keys, values, end)
        self.keys[..., start:end, :] = keys
        self.values[..., start:end, :] = values
        self.offset = end
        return self.keys[..., :end, :], self.values[..., :end, :]

    def _update_at_position(self, keys, values):
        """``offset`` is an integer array: write there and return the whole buffers (the caller
        reserved room; ``create_attention_mask`` hides what lies past the position)."""
        position = self.offset
        self.keys = mx.slice_update(self.keys, keys, position, axes=(2,))
        self.values = mx.slice_update(self.values, values, position, axes=(2,))
        self.offset = position + keys.shape[2]
        return self.keys, self.values

    @property
    def state(self):
        if self.keys is None:
            return []
        return [self.keys[..., :self.offset, :], self.values[..., :self.offset, :]]

    def trim(self, n: int) -> int:
        n = min(self.offset, n)
        self.offset -= n
        return n


def make_prompt_cache(model, max_size: int = 0) -> list:
    """One ``KVCache`` per layer of ``model``, each with room for ``max_size`` positions."""
    return [KVCache(max_size) for _ in model.layers]
