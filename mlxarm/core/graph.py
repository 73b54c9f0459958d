"""Evaluation: order the unrealized part of the graph and hand it to the executors.

``eval`` takes one process-wide lock, so arrays shared between threads evaluate once and safely.
``async_eval`` runs the same evaluation on a worker thread and returns at once; any later use of
those arrays goes through ``eval``, which waits on the lock. An error raised by asynchronous work is
kept on its stream and raised (once) by the next ``synchronize`` of that stream, as in MLX.
Also here: ``export_to_dot``, which writes the unrealized graph behind some arrays in DOT format.
"""
from __future__ import annotations

import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

from ..backend import device_writers
from ..codegen.schedule import toposort
from .array import array
from .device import check_stream_usable, resolve_stream
from .registry import api

_LOCK = threading.RLock()
_async_pool = None
# Stream -> message of the first error raised by asynchronous work queued on it.
_async_errors: dict = {}


class _Transforming(threading.local):
    def __init__(self):
        self.depth = 0  # transforms being traced in this thread
        self.no_eval = 0  # of which forbid evaluation (vmap, compile)
        self.shapeless = 0  # of which trace a shapeless compiled function


_transforming = _Transforming()


class tracing:
    """``with tracing(allow_eval=...):`` marks a function transformation being traced in this thread.

    ``async_eval`` is refused inside any transformation; ``eval`` only inside those that cannot
    evaluate their intermediates (vmap, compile), as in MLX.
    """

    def __init__(self, allow_eval: bool = True, shapeless: bool = False):
        self._forbid = 0 if allow_eval else 1
        self._shapeless = int(shapeless)

    def __enter__(self):
        _transforming.depth += 1
        _transforming.no_eval += self._forbid
        _transforming.shapeless += self._shapeless

    def __exit__(self, *exc):
        _transforming.depth -= 1
        _transforming.no_eval -= self._forbid
        _transforming.shapeless -= self._shapeless
        return False


def shapeless_tracing() -> bool:
    """Whether a shapeless compiled function is being traced in this thread: its graph is replayed
    on other shapes, so ops record what depends on an input's shape (a mean's count, a
    ``zeros_like``'s shape) as nodes reading that input, never as constants of the trace."""
    return _transforming.shapeless > 0


def _in_transform() -> bool:
    from . import transforms

    return _transforming.depth > 0 or transforms.tracing_depth > 0


def array_leaves(tree) -> list:
    """The arrays in a tree of lists, tuples, dicts and other mappings (nn.Module); any other leaf
    holds no arrays and is ignored, as MLX's eval ignores it."""
    out: list = []
    _flatten((tree,), out)
    return out


def _flatten(args, out):
    for a in args:
        if isinstance(a, array):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            _flatten(a, out)
        elif isinstance(a, dict):
            _flatten(list(a.values()), out)
        elif hasattr(a, "items") and callable(a.items):
            _flatten([v for _, v in a.items()], out)


def _check_streams(order) -> None:
    last = None
    for node in order:
        s = node._stream
        if s is not last:
            check_stream_usable(s)
            last = s


# (backend.run_order, compile.PENDING, compile.expand_programs): imported at the first eval (those modules
# import this one); PENDING is a dict, changed in place only
_LATE: list = []


def _run(outputs, order: list | None = None, read=False) -> None:
    """Evaluate ``outputs``; ``order``, when given, is their ``toposort`` taken earlier (``async_eval``'s:
    nodes realized since then are passed over; its streams were checked in the caller's thread, as the
    worker running it owns none). ``read``: the outputs the host reads next (True: all of them), which
    a GPU executor writes to their host buffers in the eval's own submission."""
    if not _LATE:
        from ..backend import run_order
        from .compile import PENDING, expand_programs

        _LATE.extend((run_order, PENDING, expand_programs))
    run_order, pending, expand_programs = _LATE
    check = order is None
    order = toposort(outputs) if check else [n for n in order if n._data is None]
    if not order:
        return
    if pending and not getattr(_executor(), "runs_programs", False) and expand_programs(order):
        order = toposort(outputs)  # the program nodes' graphs are in place of them now
    if check:
        _check_streams(order)
    # Only the outputs are held strongly: an intermediate lives while a consumer that is not yet
    # computed (or the user) refers to it, so buffers die as soon as they are used up.
    keep = [o for o in outputs if o._data is None]
    refs = [weakref.ref(n) for n in order]
    del order
    run_order(refs, keep if read is True else [o for o in read if o._data is None] if read else ())
    del keep


def _executor():
    from ..backend import executor_for

    return executor_for(None)


def eval_arrays(outputs, read=False) -> None:
    """Realize ``outputs`` and everything unrealized they depend on (``read``: as ``_run``)."""
    with _LOCK:
        _run(outputs, read=read)


def run_program_now(state, inputs: list, free: dict):
    """Run a compiled call's program on realized ``inputs`` at once (``compile._Compiled.now``):
    {tape step index: (buffer, counted)}, or None where the executor has no such program. ``free``:
    id -> uses of the inputs nothing else holds."""
    from ..backend import run_program_now as run

    with _LOCK:
        return run(state, inputs, free)


def bind_program(state, inputs: list, free: dict, tops: list):
    """A compiled call's program bound to the buffers of its state (``compile._Compiled.bind``):
    (executor, bound program), or None."""
    from ..backend import bind_program as bind

    with _LOCK:
        return bind(state, inputs, free, tops)


def run_bound(ex, bound, given: tuple, layout: tuple):
    """One call of a bound program on ``given``: {tape step index: fresh buffer}, or None."""
    from ..backend import run_bound as run

    with _LOCK:
        return run(ex, bound, given, layout)


def host_data(data) -> None:
    """Have the executors that may hold ``data``'s current contents on the device only (GPU outputs
    stay there until the host reads them) write its host buffer."""
    with _LOCK:
        for ex in device_writers:
            ex.to_host(data)


def eval(*args) -> None:
    arrs: list = []
    _flatten(args, arrs)
    if _transforming.no_eval:
        raise ValueError("[eval] Attempting to eval an array during function transformations like "
                         "compile or vmap is not allowed.")
    eval_arrays(arrs)


def async_eval(*args) -> None:
    global _async_pool
    if _in_transform():
        raise ValueError("[async_eval] Not allowed inside a graph transformation.")
    arrs: list = []
    _flatten(args, arrs)
    if not arrs:
        return
    order = toposort(arrs)
    if not order:
        return
    # Checked here, in the caller's thread: the worker thread owns no streams.
    _check_streams(order)
    stream = arrs[0]._stream
    with _LOCK:
        if _async_pool is None:
            _async_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlxarm-async")
    # The lock is taken before returning, so a later eval in this thread waits for this one.
    started = threading.Event()

    def work():
        with _LOCK:
            started.set()
            try:
                _run(arrs, box.pop())  # the order walked once, here (an LLM step's graph is large)
            except Exception as e:  # noqa: BLE001 - kept for synchronize, as MLX keeps it on the stream
                _async_errors.setdefault(stream, str(e))

    box = [order]  # handed over: ``_run`` lets the intermediates go as they are used up
    del order
    _async_pool.submit(work)
    started.wait()


def synchronize(stream=None) -> None:
    """Wait for all queued work (async evaluations) to finish; raise the first error it met."""
    s = resolve_stream(stream)
    with _LOCK:
        message = _async_errors.pop(s, None)
    if message is not None:
        raise RuntimeError(message)


# --- DOT export ---------------------------------------------------------------------------------

def _letters(i: int) -> str:
    name = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        name = chr(ord("A") + r) + name
    return name


def _label(prim) -> str:
    return "".join(part[:1].upper() + part[1:] for part in prim.name.split("_"))


def _post_order(outputs) -> list:
    """Every array behind ``outputs``, inputs first, stopping at realized ones (the sources)."""
    order, done = [], set()
    for out in outputs:
        stack = [(out, False)]
        while stack:
            node, expanded = stack.pop()
            if id(node) in done:
                continue
            if expanded or node._data is not None:
                done.add(id(node))
                order.append(node)
                continue
            stack.append((node, True))
            stack.extend((i, False) for i in reversed(node._inputs))
    return order


@api()
def export_to_dot(file, *args, **kwargs) -> None:
    """Write the graph behind ``args`` (its unevaluated part) to ``file`` (a path or a text stream)
    in DOT format. ``kwargs`` name arrays of the graph."""
    outputs = []
    for a in args:
        if not isinstance(a, array):
            raise ValueError("[tree_flatten] The argument should contain only arrays")
        outputs.append(a)
    names = {}
    for name, a in kwargs.items():
        if not isinstance(a, array):
            raise ValueError("[tree_flatten] The argument should contain only arrays")
        names[id(a)] = name
    counter = [0]

    def name_of(a):
        key = id(a)
        if key not in names:
            names[key] = _letters(counter[0])
            counter[0] += 1
        return names[key]

    output_ids = {id(o) for o in outputs}
    lines = ["digraph {"]
    for x in _post_order(outputs):
        if x._data is not None:
            lines.append(f'{{ rank=source; "{name_of(x)}"; }}')
            continue
        lines.append(f'{{ {id(x)} [label ="{_label(x._prim)}", shape=rectangle]; }}')
        for i in x._inputs:
            lines.append(f'"{name_of(i)}" -> {id(x)}')
        rank = "rank=sink; " if id(x) in output_ids else ""
        lines.append(f'{{ {rank}"{name_of(x)}"; }}')
        lines.append(f'{id(x)} -> "{name_of(x)}"')
    text = "\n".join(lines) + "\n}"
    if isinstance(file, str):
        with open(file, "w") as f:
            f.write(text + "\n")
    else:
        file.write(text)
