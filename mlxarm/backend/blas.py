"""Keeping numpy's BLAS threads out of the way of an executor's own worker threads.

The LLVM executor runs its kernels on a pool of one thread per core. numpy's OpenBLAS keeps its own
threads, which spin for a while after each call; when the executor hands a step to numpy (attention,
say) between its own kernels, both pools fight for the same cores. Measured here on 2 cores: a
128-token prefill of the embedded model took 5.0 s with OpenBLAS on 2 threads and 0.47 s on 1.
``single_threaded()`` makes numpy's BLAS use one thread for the duration of a ``with`` block (the
executor's eval) and restores the previous count after it. It finds OpenBLAS among the loaded
libraries by its exported functions (plain, 64-bit-integer and SciPy-built variants); with another
BLAS, or none found, it changes nothing.
"""
from __future__ import annotations

import ctypes
import threading

_NAMES = (("openblas_set_num_threads", "openblas_get_num_threads"),
          ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
          ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
          ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"))
_lock = threading.Lock()
_found: list = []  # [(set, get)] once looked up; [] before, [None] when there is no OpenBLAS
_depth = [0, 0]  # nesting depth, thread count to restore


def _openblas():
    if not _found:
        import numpy  # noqa: F401  (its BLAS must be loaded to be found)

        pair = None
        try:
            with open("/proc/self/maps") as f:
                paths = sorted({line.split()[-1] for line in f if "blas" in line.lower() and "/" in line})
        except OSError:
            paths = []
        for path in paths:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for set_name, get_name in _NAMES:
                if hasattr(lib, set_name) and hasattr(lib, get_name):
                    setter, getter = getattr(lib, set_name), getattr(lib, get_name)
                    setter.argtypes, setter.restype = [ctypes.c_int], None
                    getter.argtypes, getter.restype = [], ctypes.c_int
                    pair = (setter, getter)
                    break
            if pair:
                break
        _found.append(pair)
    return _found[0]


class _SingleThreaded:
    """The context manager ``single_threaded`` returns: one object for every block (an executor enters
    one per eval, so it costs a lock and two counters, not a generator)."""

    def __enter__(self):
        blas = _found[0] if _found else _openblas()
        if blas is not None:
            with _lock:
                if _depth[0] == 0:
                    _depth[1] = blas[1]()
                    if _depth[1] != 1:
                        blas[0](1)
                _depth[0] += 1
        return self

    def __exit__(self, *exc):
        blas = _found[0]
        if blas is not None:
            with _lock:
                _depth[0] -= 1
                if _depth[0] == 0 and _depth[1] != 1:
                    blas[0](_depth[1])
        return False


_SINGLE = _SingleThreaded()


def single_threaded() -> _SingleThreaded:
    """numpy's BLAS on one thread inside the block (nested blocks and threads share one setting)."""
    return _SINGLE


def threads() -> int | None:
    """numpy's BLAS thread count, or None when its BLAS is not OpenBLAS."""
    blas = _openblas()
    return None if blas is None else blas[1]()
