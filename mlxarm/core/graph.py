"""Evaluation: order the unrealized part of the graph and hand it to the executors.

``eval`` takes one process-wide lock, so arrays shared between threads evaluate once and safely.
``async_eval`` runs the same evaluation on a worker thread and returns at once; any later use of
those arrays goes through ``eval``, which waits on the lock.
"""
from __future__ import annotations

import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

from ..codegen.schedule import toposort
from .array import array

_LOCK = threading.RLock()
_async_pool = None


def _flatten(args, out):
    for a in args:
        if isinstance(a, array):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            _flatten(a, out)
        elif isinstance(a, dict):
            _flatten(list(a.values()), out)
        elif a is None:
            continue
        else:
            from ..utils import tree_flatten  # nn.Module and other containers

            leaves = [v for _, v in tree_flatten(a)] if hasattr(a, "items") else []
            out.extend(x for x in leaves if isinstance(x, array))


def eval_arrays(outputs) -> None:
    """Realize ``outputs`` and everything unrealized they depend on."""
    from ..backend import run_order

    with _LOCK:
        order = toposort(outputs)
        if not order:
            return
        # Only the outputs are held strongly: an intermediate lives while a consumer that is not yet
        # computed (or the user) refers to it, so buffers die as soon as they are used up.
        keep = [o for o in outputs if o._data is None]
        refs = [weakref.ref(n) for n in order]
        del order
        run_order(refs)
        del keep


def eval(*args) -> None:
    arrs: list = []
    _flatten(args, arrs)
    eval_arrays(arrs)


def async_eval(*args) -> None:
    global _async_pool
    arrs: list = []
    _flatten(args, arrs)
    with _LOCK:
        if _async_pool is None:
            _async_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlxarm-async")
    # The lock is taken here, before returning, so a later eval in this thread waits for this one.
    started = threading.Event()

    def work():
        with _LOCK:
            started.set()
            eval_arrays(arrs)

    _async_pool.submit(work)
    started.wait()


def synchronize(stream=None) -> None:
    """Wait for all queued work (async evaluations) to finish."""
    with _LOCK:
        pass
