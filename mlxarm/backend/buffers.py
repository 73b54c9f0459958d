"""Large kernel outputs come from a cache of freed buffers (MLX's buffer cache), not fresh from the OS.

A buffer of a megabyte or more that the C library maps fresh costs a page fault per page on its first
write: for a 64 MB output about as long as a fused kernel takes to compute it. ``empty`` hands out
such buffers from blocks kept when earlier ones died (same size, rounded to pages), so a workload that
evaluates the same shapes again writes into memory already mapped. An array from ``empty`` is a
plain numpy array whose base is a ``Lease``; when the array (and every view of it) dies, the lease
returns its block to the cache, unless the cache would then pass ``mx.set_cache_limit``'s limit.
``mx.get_cache_memory`` counts the blocks kept and ``mx.clear_cache`` lets them go."""
from __future__ import annotations

import threading

import numpy as np

from ..core.device import memory as _memory

MIN_BYTES = 1 << 20  # smaller buffers come from numpy (the C library's heap reuses those already)
_PAGE = 4096
_lock = threading.RLock()  # RLock: a lease may die (and return its block) while the cache is in use
_free: dict = {}  # block bytes -> blocks kept
_kept = [0]


class Lease:
    """The base of an array made by ``empty``: holds its block and returns it when the array dies."""

    __slots__ = ("block", "__array_interface__")

    def __del__(self):
        put = _put  # None once the interpreter has torn this module down: the block just goes
        if put is not None:
            put(self.block)


def owns(buf: np.ndarray) -> bool:
    """Whether ``buf`` owns its memory: made by numpy itself or by ``empty`` (not a view)."""
    base = buf.base
    return base is None or type(base) is Lease


def empty(shape: tuple, dtype) -> np.ndarray:
    """``np.empty(shape, dtype)``, from a cached block when it is large."""
    dtype = np.dtype(dtype)
    n = dtype.itemsize
    for d in shape:
        n *= d
    if n < MIN_BYTES:
        return np.empty(shape, dtype)
    size = -(-n // _PAGE) * _PAGE
    with _lock:
        blocks = _free.get(size)
        block = blocks.pop() if blocks else None
        if block is not None:
            _kept[0] -= size
    if block is None:
        block = np.empty(size, np.uint8)
    lease = Lease()
    lease.block = block
    lease.__array_interface__ = {"shape": tuple(shape), "typestr": dtype.str, "version": 3,
                                 "data": (block.__array_interface__["data"][0], False)}
    return np.asarray(lease)


def _limit(memory=_memory) -> int:
    return memory.cache_limit


def _put(block: np.ndarray, limit=_limit, lock=_lock, free=_free, kept=_kept) -> None:
    # bound at definition: a lease may die while the interpreter tears modules down
    size = block.nbytes
    with lock:
        if kept[0] + size <= limit():
            free.setdefault(size, []).append(block)
            kept[0] += size


def cached_bytes() -> int:
    return _kept[0]


def clear() -> None:
    with _lock:
        _free.clear()
        _kept[0] = 0
