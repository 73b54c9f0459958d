"""Compiled programs: a compiled function's whole graph run as one call into native code.

From its second call on, ``mx.compile`` hands the LLVM executor one *program node* per call instead of
the function's graph (``core.compile``). The first time the executor meets a program node for given
input layouts it evaluates the graph as usual while *capturing* what each recorded action did (the
kernel, the buffers it read and wrote, or the call a template or the numpy executor made), and builds a
``Program`` from the capture:

* every buffer is a *root*: an input of the call, a constant of the trace (its address is fixed), a
  region of the program's arena (an intermediate that never leaves the call: regions are reused once
  their buffer is dead, as ``plan_arena`` packs them), a buffer made fresh on each call (an output), or
  an input buffer donated to an output (a KV cache update written in place, when nothing else can see
  the input: checked on every call, else the output gets a fresh buffer);
* every kernel becomes a row of a table (function, prebuilt argument array, units, chunk, how to share
  it out), run by ``mlxarm_program``, a driver function that calls the kernels in order and shares the
  big ones out to the worker threads (``llvm_threads``) itself: a call costs one crossing into native
  code, not one per kernel;
* views cost nothing (their buffer is a root at an offset); the templates (quantized matmul, rope,
  attention, row kernels) and the dynamic slice update (``kernels.slice_update``) are table rows too;
  a step nothing native covers runs its reference on the numpy executor between native segments.

Each call then fills in the addresses of its inputs and fresh outputs (a few hundred words for an LLM
decode step) and runs the segments: no graph is built, planned or walked. A capture that cannot become a
program (a kernel lowered afresh on a copy, a step that cannot be replayed on buffers) leaves that
call's layouts on the ordinary path.

A plain eval whose structure comes a third time is captured the same way (``LLVMExecutor.capture_eval``):
its leaves are the inputs, the nodes held outside its graph the results."""
from __future__ import annotations

import bisect
import ctypes
import math
from time import perf_counter

import numpy as np

from ..codegen import ir
from ..core import dtypes as dt
from ..core.device import cache_room, count_buffer as count, reserve_buffer
from .buffers import MIN_BYTES, empty
from ..kernels import dequantize as dequantize_template
from ..kernels import slice_update as update_template
from ..kernels import take_rows as take_template

# the kinds of a root (a constant of the trace is no root: its address is written into the rows)
_INPUT, _ARENA, _FRESH, _DONATE = "input", "arena", "fresh", "donate"
_ALIGN = 64  # bytes: arena regions start on a cache line
# a table row: function, argument array, units, chunk, mode (0: this thread; 1: shared with the
# workers that are awake; 2: shared, waking sleeping workers), unused
_ROW = 6

_DRIVER_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                              ctypes.c_int64)


def render_driver(triple: str) -> str:
    """``void mlxarm_program(ptr table, i64 rows, ptr dispatch, ptr state, i64 share)``: each row's
    kernel over [0, units), on this thread or, when ``share`` and the row says so, by ``dispatch`` (the
    workers' ``mlxarm_dispatch``) with the workers' state block."""
    return f"""; mlxarm program driver
target triple = "{triple}"

define void @mlxarm_program(ptr %table, i64 %rows, ptr %dispatch, ptr %state, i64 %share) {{
entry:
  %sharing = icmp ne i64 %share, 0
  br label %head
head:
  %i = phi i64 [ 0, %entry ], [ %next, %tail ]
  %more = icmp slt i64 %i, %rows
  br i1 %more, label %body, label %exit
body:
  %base = mul i64 %i, {_ROW}
  %fnp = getelementptr i64, ptr %table, i64 %base
  %fn = load ptr, ptr %fnp, align 8
  %argsi = add i64 %base, 1
  %argsp = getelementptr i64, ptr %table, i64 %argsi
  %args = load ptr, ptr %argsp, align 8
  %totali = add i64 %base, 2
  %totalp = getelementptr i64, ptr %table, i64 %totali
  %total = load i64, ptr %totalp, align 8
  %chunki = add i64 %base, 3
  %chunkp = getelementptr i64, ptr %table, i64 %chunki
  %chunk = load i64, ptr %chunkp, align 8
  %modei = add i64 %base, 4
  %modep = getelementptr i64, ptr %table, i64 %modei
  %mode = load i64, ptr %modep, align 8
  %split = icmp ne i64 %mode, 0
  %go = and i1 %split, %sharing
  br i1 %go, label %shared, label %alone
alone:
  call void %fn(ptr %args, i64 0, i64 %total)
  br label %tail
shared:
  %wake = icmp eq i64 %mode, 2
  %wakes = zext i1 %wake to i64
  call void %dispatch(ptr %state, ptr %fn, ptr %args, i64 %total, i64 %chunk, i64 %wakes)
  br label %tail
tail:
  %next = add i64 %i, 1
  br label %head
exit:
  ret void
}}
"""


class _Root:
    __slots__ = ("kind", "nbytes", "index", "first", "last", "offset", "alias", "shape", "dtype")

    def __init__(self, kind, nbytes, index=None):
        self.kind, self.nbytes, self.index = kind, nbytes, index  # index: the call's input it is
        self.first = self.last = None  # steps writing it first and reading it last
        self.offset = None  # in the arena
        self.alias = None  # the root whose memory this one shares (an update written in place)
        self.shape = self.dtype = None  # the array a fresh root is made as, when one output is all of it


class Unsupported(Exception):
    """The capture has a step a program cannot replay: the call stays on the ordinary path."""


def _bounds(shape: tuple, strides: tuple, itemsize: int, at: int) -> tuple:
    """[lo, hi): the bytes an array at address ``at`` spans."""
    lo = hi = at
    for n, s in zip(shape, strides):
        if n == 0:
            return at, at
        if s < 0:
            lo += (n - 1) * s
        else:
            hi += (n - 1) * s
    return lo, hi + itemsize


def _span(a: np.ndarray, at: int) -> tuple:
    return _bounds(a.shape, a.strides, a.itemsize, at)


def view(at: int, shape: tuple, strides: tuple, dtype) -> np.ndarray:
    """An array over the memory at address ``at`` (the caller keeps that memory alive)."""
    if any(n == 0 for n in shape):
        return np.empty(shape, dtype)
    lo, hi = _bounds(shape, strides, np.dtype(dtype).itemsize, at)
    buf = (ctypes.c_char * (hi - lo)).from_address(lo)
    return np.ndarray(shape, dtype, buffer=buf, offset=at - lo, strides=strides)


class Capture:
    """What an eval did, step by step (``LLVMExecutor._run`` appends while capturing): per recorded
    action, (action, node's shape, dtype, stream, primitive, params, its inputs' (buffer, dtype) for a
    call, its output buffer), and the eval's leaves."""

    def __init__(self):
        self.entries: list = []
        self.nodes: list = []  # the node of each entry (the capture keeps the graph until it is built)
        self.leaves: list = []
        self.leaf_refs: dict = {}  # id(leaf) -> references to it from the graph's nodes
        # (buffer, index, the values there before) per update written into a leaf only it reads: a
        # KV cache is not copied for the capture; ``capture_program`` puts the values back
        self.restores: list = []

    def let_go(self, more=()) -> None:
        """Drop the inputs and params of the captured nodes and of ``more`` (the capture kept the
        graph; an eval that keeps none lets it go as each node is realized)."""
        for nodes in (self.nodes, more):
            for n in nodes:
                n._inputs = ()
                n._params = None


class _Builder:
    def __init__(self, executor, inputs: tuple):
        from .llvm import address

        self.address = address
        self.roots: list = []
        self.known: dict = {}  # id(buffer) -> (root index, byte offset, buffer)
        self.dynamic: list = []  # (lo, hi, root index, base address) of roots that are not constants
        # the same entries that span memory, ordered by ``lo``, for ``within`` to bisect while no two
        # of them overlap (``overlap``: then it scans ``dynamic`` in order, as it always did); a
        # decode step's capture looks up a thousand buffers among a thousand roots
        self.starts: list = []
        self.spans: list = []
        self.overlap = False
        self.keep: list = []  # what the program keeps alive (constant buffers, bound calls)
        self.steps: list = []  # ("native", fn, [(root, offset) | address], units, per_unit, align, shares)
        #                        or ("python", call, [input spec], output spec, node description)
        self.updates: list = []  # (step index, x root, y root) of slice updates
        self.donors: list = []  # (step index, input root, output root) of kernels that may write in place
        self.temps: dict = {}
        # the last matvec step, which another matvec of the same x may join (``_template_rows``):
        # (its index, the join key, x's spec, [N, ...], the joined function's maker)
        self.joinable = None
        for i, x in enumerate(inputs):
            data = x._data
            if id(data) in self.known:  # an input passed twice
                continue
            at = address(data)
            lo, hi = _span(data, at)
            if any(lo < h and l_ < hi for l_, h, _, _ in self.dynamic):
                raise Unsupported("inputs share memory")
            r = self.root(_Root(_INPUT, hi - lo, index=i))
            self.add((lo, hi, r, at))
            self.known[id(data)] = (r, 0, data)

    def add(self, entry: tuple) -> None:
        """A root's (lo, hi, root index, base address) among the dynamic ones."""
        self.dynamic.append(entry)
        lo, hi = entry[0], entry[1]
        if lo >= hi or self.overlap:
            return  # an empty span holds no buffer (``within``)
        i = bisect.bisect_right(self.starts, lo)
        if (i and self.spans[i - 1][1] > lo) or (i < len(self.starts) and self.starts[i] < hi):
            self.overlap = True
            return
        self.starts.insert(i, lo)
        self.spans.insert(i, entry)

    def drop(self, r: int) -> None:
        """Root ``r`` leaves the dynamic ones."""
        self.dynamic = [d for d in self.dynamic if d[2] != r]
        kept = [(lo, d) for lo, d in zip(self.starts, self.spans) if d[2] != r]
        self.starts, self.spans = [lo for lo, _ in kept], [d for _, d in kept]

    def root(self, root: _Root) -> int:
        self.roots.append(root)
        return len(self.roots) - 1

    def locate(self, buf: np.ndarray, step: int):
        """(root, byte offset) of ``buf`` read by ``step``, or its address when it is a constant."""
        hit = self.known.get(id(buf))
        if hit is not None and hit[2] is buf:
            r, off = hit[0], hit[1]
        else:
            found = self.within(buf)
            if found is None:
                self.keep.append(buf)
                return self.address(buf)
            r, off = found
        self.use(r, step)
        return r, off

    def within(self, buf: np.ndarray):
        """(root, byte offset) of a root that holds all of ``buf``'s memory, or None."""
        at = self.address(buf)
        lo, hi = _span(buf, at)
        if not self.overlap:  # at most one span can hold it: the last starting at or before ``lo``
            i = bisect.bisect_right(self.starts, lo)
            candidates = self.spans[i - 1:i] if i else ()
        else:
            candidates = self.dynamic
        for l_, h, r, base in candidates:
            if l_ <= lo and hi <= h and lo < h:
                self.known[id(buf)] = (r, at - base, buf)
                return r, at - base
        return None

    def use(self, r: int, step: int) -> None:
        root = self.roots[r]
        root.last = step if root.last is None else max(root.last, step)

    def made(self, buf: np.ndarray, step: int):
        """A new root for ``buf``, the output ``step`` writes."""
        at = self.address(buf)
        lo, hi = _span(buf, at)
        hit = self.known.get(id(buf))
        if hit is not None and hit[2] is buf:
            # The step wrote into a root's buffer (an update the capture made in place,
            # ``LLVMExecutor.run_in_place``): what reads that memory from here on reads the new root.
            self.drop(hit[0])
        r = self.root(_Root(_ARENA, hi - lo))
        self.roots[r].first = self.roots[r].last = step
        self.add((lo, hi, r, lo))
        self.known[id(buf)] = (r, at - lo, buf)
        return r, at - lo

    # -- steps -------------------------------------------------------------------------------------

    def native(self, fn, args: list, units: int, per_unit: int, align: int, shares: bool = True) -> None:
        self.steps.append(("native", fn, args, units, per_unit, align, shares))

    def python(self, call, entry, step: int) -> None:
        action, shape, dtype, stream, prim, params, ins, out = entry
        specs = []
        for data, dt_ in ins:
            if data is None:
                raise Unsupported("a call reads a value no step made")
            specs.append((self.locate(data, step), data.shape, data.strides, data.dtype, dt_))
        where = self.made(out, step)
        self.steps.append(("python", call, specs, (where, out.shape, out.strides, out.dtype),
                           (prim, params, shape, dtype, stream)))


def build(executor, capture: Capture, inputs: tuple, outputs: dict, arena_max: int | None = None):
    """A ``Program`` for the captured eval of a compiled call on ``inputs``, whose results are
    ``outputs`` (tape step index -> realized node); ``Unsupported`` when a step cannot be replayed, or
    when its arena would exceed ``arena_max`` bytes or the cache limit (``arena_max`` given)."""
    from .llvm import _CALL, _KERNEL, _ROWS, _KERNEL_FN

    b = _Builder(executor, inputs)
    made: list = []  # per action, its output buffer
    for step, entry in enumerate(capture.entries):
        action, shape, dtype, stream, prim, params, ins, out = entry
        made.append(out)
        if out is None:
            raise Unsupported("a step left no buffer")
        kind = action[0]
        if kind in (_KERNEL, _ROWS):
            fn, reads, split = action[4], action[5], action[8]
            if split is None:  # an empty output: nothing runs
                b.made(out, len(b.steps))
                continue
            if not isinstance(fn, _KERNEL_FN):
                raise Unsupported("a kernel without a machine code address")
            at = len(b.steps)
            args = []
            for (where, i), off in reads:
                buf = capture.leaves[i]._data if where == 0 else made[i]
                spec = b.locate(buf, at)
                args.append(spec + off if isinstance(spec, int) else (spec[0], spec[1] + off))
            r, off = b.made(out, at)
            if kind == _KERNEL:
                _donor(b, action[2], args, r, at)
            b.native(fn, [(r, off)] + args, *split)
            continue
        if kind != _CALL:
            raise Unsupported("a kernel lowered on a copy")
        call = action[2]
        if call == executor.run_program or call == executor.run_program_output:
            raise Unsupported("a compiled call inside a compiled call")
        if call == executor.run_view and b.within(out) is not None:
            continue  # a view of a root: nothing to run
        if call == executor.run_in_place:
            if not _update(b, entry, executor):
                b.python(executor.run_numpy, entry, len(b.steps))
            continue
        if call == executor.run_numpy and (_take_rows(b, entry, executor) or _dequantize(b, entry, executor)):
            continue
        native = getattr(call, "native", None)
        if native is not None and all(d is not None for d, _ in ins):
            rows = native([d for d, _ in ins], out)
            if rows is not None:
                _template_rows(b, rows, out, getattr(native, "joins", None))
                continue
        b.python(call, entry, len(b.steps))
    return Program(executor, b, outputs, arena_max)


def _template_rows(b: _Builder, rows: list, out: np.ndarray, joins=None) -> None:
    """Rows a bound template gives (``native``): (function, arguments, units, per unit, align,
    shares), an argument being a buffer (the output, a root or a constant the program keeps), or a
    temporary ("temp", kernel, bytes, source buffer) that the row listing it first writes: a later
    row with the same kernel and source reads it (q, k and v projections interleave one x once).

    ``joins`` (key, maker) marks a quantized matvec row (out, x, w, scales, biases, meta) that may
    join the last such step when that is one of the same key reading the same x: the step becomes
    one call of ``maker(parts)`` over both weight matrices (query, key and value projections, or gate
    and up: one row and one wait for the workers instead of three or two)."""
    if joins is not None and len(rows) == 1 and _join(b, rows[0], out, joins):
        return
    placed = False
    for fn, args, units, per_unit, align, shares in rows:
        at = len(b.steps)
        specs = []
        skip = False
        for n, a in enumerate(args):
            if isinstance(a, np.ndarray):
                if a is out:
                    specs.append(b.made(out, at))
                    placed = True
                else:
                    specs.append(b.locate(a, at))
            elif isinstance(a, tuple) and a and a[0] == "temp":
                key = (a[1], b.locate(a[3], at))
                hit = b.temps.get(key)
                if hit is None:
                    r = b.root(_Root(_ARENA, a[2]))
                    b.roots[r].first = b.roots[r].last = at
                    b.temps[key] = r
                    specs.append((r, 0))
                else:
                    b.use(hit, at)
                    specs.append((hit, 0))
                    skip = skip or n == 0  # the row that makes it ran already
            elif a is None:  # a null pointer (an argument the kernel does not read)
                specs.append(0)
            else:
                raise Unsupported(f"a template argument of type {type(a).__name__}")
        if not skip:
            b.native(fn, specs, units, per_unit, align, shares)
    if not placed:
        raise Unsupported("a template row list without its output")
    if joins is not None and len(rows) == 1:
        meta = rows[0][1][5]
        b.joinable = (len(b.steps) - 1, joins[0], b.steps[-1][2][1], [int(meta[1])], joins[1])


def _join(b: _Builder, row: tuple, out: np.ndarray, joins) -> bool:
    """Fold matvec ``row`` into the last matvec step when ``b.joinable`` allows (``_template_rows``):
    True when done."""
    from ..kernels import quantized as template

    last = b.joinable
    # Steps between the two never read the new row's output (they came first), and the row reads
    # what the earlier step reads (x: the same root, or an update in between would have made it a
    # new one) and weights that no step from the earlier one on writes, so it can run there.
    if last is None or last[1] != joins[0] or len(last[3]) >= template.PARTS:
        return False
    at, key, x_spec, ns, maker = last
    _, args, units, *_ = row
    _, x, w, scales, biases, meta = args
    if not all(isinstance(a, np.ndarray) for a in args) or b.locate(x, at) != x_spec:
        return False
    reads = [b.locate(a, at) for a in (w, scales, biases)]
    if any(not isinstance(r, int) and b.roots[r[0]].first is not None and b.roots[r[0]].first >= at
           for r in reads):
        return False  # a weight some step writes, at the earlier step or after it
    step = b.steps[at]
    specs = list(step[2])
    ns = ns + [int(meta[1])]
    joined_meta = np.array([int(meta[0]), ns[0], int(meta[2])] + ns[1:], np.int64)
    b.keep.append(joined_meta)
    specs[5] = b.address(joined_meta)
    specs += [b.made(out, at)] + reads
    b.steps[at] = ("native", maker(len(ns)), specs, step[3] + units, step[4], step[5], step[6])
    b.joinable = (at, key, x_spec, ns, maker)
    return True


def _donor(b: _Builder, kernel: ir.Kernel, args: list, out: int, at: int) -> None:
    """Note the input a kernel may write its output into, as ``LLVMExecutor.donor`` allows: read
    element for element where the output is stored (no reduction, the store's strides, offset 0),
    through one argument only, with the output's size; whether it dies is settled once every step
    is known (``Program``)."""
    from .llvm import read_in_place

    if kernel.reduce_op is not None:
        return
    loads = read_in_place(kernel)
    size = dt.as_dtype(kernel.store.dtype).size
    sizes = {e.buf: dt.as_dtype(e.dtype).size for e in ir.walk(kernel.store.value) if isinstance(e, ir.Load)}
    for slot, spec in enumerate(args, start=1):
        if isinstance(spec, int) or spec[1] or not loads.get(slot) or sizes[slot] != size:
            continue
        if any(j != slot and not isinstance(o, int) and o[0] == spec[0] for j, o in enumerate(args, start=1)):
            continue
        b.donors.append((at, spec[0], out))
        return


def _update(b: _Builder, entry, executor) -> bool:
    """A dynamic slice update along one axis as a native row; False when it is not that."""
    action, shape, dtype, stream, prim, params, ins, out = entry
    if prim is None or prim.name != "dynamic_slice_update" or len(params["axes"]) != 1:
        return False
    (x, _), (upd, _), (start, start_dt) = ins
    if start.size != 1 or start_dt.name not in update_template.POSITION_TYPES or x.dtype != upd.dtype \
            or not (x.flags.c_contiguous and upd.flags.c_contiguous) or x.ndim != upd.ndim:
        return False
    axis = params["axes"][0]
    if any(u != n for d, (u, n) in enumerate(zip(upd.shape, x.shape)) if d != axis) or not x.size:
        return False
    at = len(b.steps)
    xs, us, ps = b.locate(x, at), b.locate(upd, at), b.locate(start, at)
    y = b.made(out, at)
    outer = math.prod(x.shape[:axis])
    meta = np.array([x.shape[axis], upd.shape[axis], math.prod(x.shape[axis + 1:]) * x.itemsize], np.int64)
    b.keep.append(meta)
    kernel = update_template.SliceUpdate(start_dt.name)
    fn = executor.template_function(kernel, update_template.render)
    b.updates.append((at, xs, y))
    b.native(fn, [y, xs, us, ps, meta.ctypes.data], outer, x.shape[axis] * meta[2] // max(x.itemsize, 1), 1)
    return True


def _take_rows(b: _Builder, entry, executor) -> bool:
    """``x[idx]`` along x's first axis (whole rows) as a native row; False when the gather is not that."""
    action, shape, dtype, stream, prim, params, ins, out = entry
    if prim is None or prim.name != "gather" or params["axes"] != (0,) or len(ins) != 2:
        return False
    (x, _), (idx, idx_dt) = ins
    index = params["index"]
    if index[:1] != (("array", 0),) or idx_dt.name not in take_template.INDEX_TYPES or not x.ndim \
            or not x.shape[0] or not (x.flags.c_contiguous and idx.flags.c_contiguous and out.flags.c_contiguous):
        return False
    if any(not isinstance(e, slice) or e.indices(n) != (0, n, 1) for e, n in zip(index[1:], x.shape[1:])):
        return False  # only whole rows
    if out.shape != idx.shape + x.shape[1:]:
        return False
    at = len(b.steps)
    xs, ids = b.locate(x, at), b.locate(idx, at)
    y = b.made(out, at)
    meta = np.array([x.shape[0], x.nbytes // x.shape[0]], np.int64)
    b.keep.append(meta)
    fn = executor.template_function(take_template.TakeRows(idx_dt.name), take_template.render)
    b.native(fn, [y, xs, ids, meta.ctypes.data], idx.size, int(meta[1]), 1)
    return True


def _dequantize(b: _Builder, entry, executor) -> bool:
    """An affine ``dequantize`` (float32 or float16 scales and biases) as a native row; False when the
    node is not that."""
    action, shape, dtype, stream, prim, params, ins, out = entry
    if prim is None or prim.name != "dequantize" or params.get("mode") != "affine" or len(ins) != 3:
        return False
    (w, _), (scales, s_dt), (biases, b_dt) = ins
    bits, gs = params["bits"], params["group_size"]
    if not dequantize_template.supported(bits, gs, s_dt.name, b_dt.name) \
            or params.get("sdtype") != s_dt.name or params.get("bdtype") != b_dt.name:
        return False
    kernel = dequantize_template.Dequantize(bits, gs, s_dt.name, b_dt.name)
    if dtype.name != kernel.out or w.dtype != np.uint32 \
            or not all(a.flags.c_contiguous for a in (w, scales, biases, out)) \
            or scales.size != biases.size or scales.size * gs != out.size or w.size * (32 // bits) != out.size:
        return False
    at = len(b.steps)
    ws, ss, bs = b.locate(w, at), b.locate(scales, at), b.locate(biases, at)
    y = b.made(out, at)
    fn = executor.template_function(kernel, dequantize_template.render)
    b.native(fn, [y, ws, ss, bs], scales.size, gs, 1)
    return True


def plan_arena(roots: list) -> int:
    """Offsets for the arena roots, regions reused once their buffer is dead (first fit over the
    free regions, ordered by the step that first writes each); returns the arena's size."""
    order = sorted((i for i, r in enumerate(roots) if r.kind == _ARENA and r.alias is None),
                   key=lambda i: roots[i].first)
    free: list = []  # (offset, size), sorted by offset
    live: list = []  # (last step, offset, size)
    top = 0
    for i in order:
        r = roots[i]
        size = -(-max(r.nbytes, 1) // _ALIGN) * _ALIGN
        still = []
        for last, off, n in live:
            if last < r.first:
                free.append((off, n))
            else:
                still.append((last, off, n))
        live = still
        free.sort()
        merged: list = []
        for off, n in free:
            if merged and merged[-1][0] + merged[-1][1] == off:
                merged[-1] = (merged[-1][0], merged[-1][1] + n)
            else:
                merged.append((off, n))
        free = merged
        for k, (off, n) in enumerate(free):
            if n >= size:
                r.offset = off
                free[k:k + 1] = [(off + size, n - size)] if n > size else []
                break
        else:
            if free and free[-1][0] + free[-1][1] == top:  # extend the region ending at the top
                off = free.pop()[0]
            else:
                off = top
            r.offset = off
            top = off + size
        live.append((r.last, r.offset, size))
    return top


def _c_strides(shape: tuple, dtype) -> tuple:
    strides = []
    step = np.dtype(dtype).itemsize
    for d in reversed(shape):
        strides.append(step)
        step *= d
    return tuple(reversed(strides))


def _native_segment(rows: list) -> tuple:
    """("native", table, its address, its rows) for rows of the driver's table."""
    table = np.array(rows, np.int64)
    return ("native", table, table.ctypes.data, len(table))


class Bound:
    """A program bound to a call's state (``Program.bind``): each ``step`` fills in the addresses of
    the inputs given anew and of fresh result buffers, and runs the segments. The state's addresses
    stay in the argument slots from one step to the next (they are written again only after
    another call of the program moved them)."""

    def __init__(self, program: Program, fixed: list, varying: list, fresh: list, state_results: dict):
        self.program = program
        self.fixed = fixed  # (root, address) of the state's buffers and reads of them
        self.varying = varying  # (root, position among the inputs given to ``step``)
        self.fresh = fresh  # (tape step index, root, shape, dtype) of the results in fresh buffers
        self.state_results = state_results  # state input index -> tape step index of its result

    def step(self, executor, given: tuple) -> dict:
        """Run on ``given`` (realized arrays in the layouts bound): {tape step index: fresh buffer}."""
        program = self.program
        address = program.address
        set_root = program.set_root
        if program.owner is not self:
            for r, a in self.fixed:
                set_root(r, a)
            program.owner = self
        for r, i in self.varying:
            set_root(r, address(given[i]._data))
        out = {}
        made: dict = {}
        for v, r, shape, dtype in self.fresh:
            buf = made.get(r)
            if buf is None:
                buf = made[r] = empty(shape, dtype)
                set_root(r, address(buf))
            out[v] = buf
        buf = None
        program.run_segments(executor)
        return out


class Program:
    """A captured compiled call, replayed on new inputs of the same layouts (``run``); or a captured
    plain eval, replayed on the leaves of a graph of the same structure (``LLVMExecutor.capture_eval``)."""

    def __init__(self, executor, b: _Builder, outputs: dict, arena_max: int | None = None):
        from .llvm import address

        roots = b.roots
        self.keep = b.keep
        self.address = address  # (an import in ``run`` would cost a microsecond a call)
        # where each result is: (root, byte offset, shape, strides, dtype)
        self.results = {}
        for v, node in outputs.items():
            data = node._data
            if data is None:
                raise Unsupported("a result was not computed")
            hit = b.known.get(id(data))
            where = (hit[0], hit[1]) if hit is not None and hit[2] is data else b.within(data)
            if where is None:
                raise Unsupported("a result is no step's buffer")
            r, off = where
            if roots[r].kind == _ARENA:
                roots[r].kind = _FRESH
                if off == 0 and data.flags.c_contiguous and data.nbytes == roots[r].nbytes:
                    roots[r].shape, roots[r].dtype = data.shape, data.dtype
            self.results[v] = (r, off, data.shape, data.strides, data.dtype)
        # Updates whose input dies with them write in place: into a dying arena region, or into an
        # input's buffer when the caller's array dies too (decided per call: ``_DONATE``).
        for at, xs, y in b.updates:
            if isinstance(xs, int):
                continue
            x, xoff = xs
            yr, yoff = y
            xr, yr_ = roots[x], roots[yr]
            if xoff or yoff or xr.last != at or xr.nbytes != yr_.nbytes:
                continue
            if xr.kind == _INPUT and yr_.kind in (_FRESH, _ARENA) \
                    and not any(r == x for r, *_ in self.results.values()):
                yr_.kind, yr_.index = _DONATE, xr.index
            elif xr.kind == _ARENA and yr_.kind == _ARENA:
                yr_.alias = x
                xr.last = max(xr.last, yr_.last)
        # A result a kernel computes element for element from an input of the call that dies with it
        # is written into that input's buffer when the caller's array dies too (``LLVMExecutor.donor``).
        results = {r for r, *_ in self.results.values()}
        for at, x, y in b.donors:
            xr, yr = roots[x], roots[y]
            if xr.kind == _INPUT and yr.kind == _FRESH and xr.last == at and x not in results \
                    and xr.nbytes == yr.nbytes and yr.shape is not None \
                    and not any(r.kind == _DONATE and r.index == xr.index for r in roots):
                yr.kind, yr.index = _DONATE, xr.index
        size = plan_arena(roots)
        if arena_max is not None and (size > arena_max or not cache_room(size + _ALIGN)):
            raise Unsupported(f"its intermediates would keep {size} bytes of arena")
        self.arena = np.empty(size + _ALIGN if size else 0, np.uint8)
        if size:
            reserve_buffer(self.arena)  # cache memory, as MLX's buffer cache: no array's
        base = address(self.arena)
        base += -base % _ALIGN

        def resolve(r):
            while roots[r].alias is not None:
                r = roots[r].alias
            return r

        at = [0] * len(roots)
        for i in range(len(roots)):
            r = roots[resolve(i)]
            if r.kind == _ARENA:
                at[i] = base + r.offset
        self.roots = roots
        self.donations = [i for i, r in enumerate(roots) if r.alias is None and r.kind == _DONATE]
        self.input_roots = [i for i, r in enumerate(roots) if r.alias is None and r.kind == _INPUT]
        self.fresh = [i for i, r in enumerate(roots) if r.alias is None and r.kind == _FRESH]
        self.at = at
        self.segments: list = []
        # root -> (argument array, slot, offset) of each slot holding an address in it, filled on a call
        # where the root's address moved since the last one (a decode step's KV caches, written in place,
        # keep theirs: 300 writes a step saved)
        groups: dict = {}
        rows: list = []
        self.args: list = []  # the argument arrays, alive as long as the program
        for step in b.steps:
            if step[0] == "python":
                if rows:
                    self.segments.append(_native_segment(rows))
                    rows = []
                _, call, specs, out, node = step
                self.segments.append(("python", call, [((resolve(s[0][0]), s[0][1]) if isinstance(s[0], tuple)
                                                        else s[0],) + s[1:] for s in specs],
                                      ((resolve(out[0][0]), out[0][1]),) + out[1:], node))
                continue
            _, fn, args, units, per_unit, align, shares = step
            array = (ctypes.c_void_p * len(args))()
            self.args.append(array)
            for slot, a in enumerate(args):
                if isinstance(a, int):
                    array[slot] = a
                    continue
                r, off = resolve(a[0]), a[1]
                if roots[r].kind == _ARENA:
                    array[slot] = at[r] + off
                else:
                    groups.setdefault(r, []).append((array, slot, off))
            chunk = executor.chunk(units, per_unit, align) if shares else 0
            # Rows follow each other with no Python between them: a worker woken for one stays awake
            # (spinning) for the next, so every shared row may ring (mode 2).
            mode = 2 if chunk else 0
            rows.append((ctypes.cast(fn, ctypes.c_void_p).value, ctypes.addressof(array), units, chunk, mode, 0))
            self.keep.append(fn)
        if rows:
            self.segments.append(_native_segment(rows))
        self.groups = groups
        # per fresh root: what ``run`` makes it as, and its argument slots (the roots of an eval of
        # a thousand small kernels are mostly fresh: each is made and placed in one pass)
        self.fresh_specs = [((r, roots[r].shape, roots[r].dtype) if roots[r].shape is not None else
                             (r, (roots[r].nbytes,), np.uint8))
                            + (np.empty if roots[r].nbytes < MIN_BYTES else empty, tuple(groups.get(r, ())))
                            for r in self.fresh]
        # the results that are a fresh root's whole buffer as ``run`` makes it: handed out as they are
        self.whole = {v for v, (r, off, shape, strides, dtype) in self.results.items()
                      if not off and roots[r].kind == _FRESH and roots[r].shape == shape
                      and roots[r].dtype == dtype and strides == _c_strides(shape, dtype)}
        self.patched: dict = {}  # root -> the address its slots hold
        self.owner = None  # the ``Bound`` whose buffers the slots hold, None after ``run``
        self.native_rows = sum(s[3] for s in self.segments if s[0] == "native")
        self.python_steps = sum(1 for s in self.segments if s[0] == "python")
        self.driver = executor.program_driver()

    def run(self, executor, inputs: tuple) -> dict:
        """Run on ``inputs`` (the call's arrays, realized, laid out as the capture's: the executor keeps
        a program per layout): {tape step index: (buffer, counted)}."""
        address = self.address
        roots, at, set_root = self.roots, self.at, self.set_root
        buffers: dict = {}
        counted: set = set()
        self.owner = None
        # Donations first: nothing here may hold an input's buffer while it is checked.
        for r in self.donations:
            root = roots[r]
            buf = executor.donatable(inputs[root.index])
            if buf is None:
                buf = empty(root.shape, root.dtype) if root.shape is not None else empty((root.nbytes,), np.uint8)
            else:
                counted.add(r)
            buffers[r] = buf
            set_root(r, address(buf))
        buf = None
        for r in self.input_roots:
            d = buffers[r] = inputs[roots[r].index]._data
            set_root(r, address(d))
            counted.add(r)
        patched = self.patched
        for r, shape, dtype, make, slots in self.fresh_specs:  # ``set_root`` for each, inline
            buf = buffers[r] = make(shape, dtype)
            a = at[r] = address(buf)
            if patched.get(r) != a:
                for array, slot, off in slots:
                    array[slot] = a + off
                patched[r] = a
        buf = None
        self.run_segments(executor)
        out = {}
        whole = self.whole
        for v, (r, off, shape, strides, dtype) in self.results.items():
            buf = buffers[r]
            if v in whole or off == 0 and buf.shape == shape and buf.strides == strides and buf.dtype == dtype:
                out[v] = (buf, r in counted)
                counted.add(r)
                continue
            if r not in counted:
                count(buf)
                counted.add(r)
            if buf.flags.c_contiguous:  # a view that keeps the buffer alive
                out[v] = (np.ndarray(shape, dtype, buffer=buf.reshape(-1).view(np.uint8), offset=off,
                                     strides=strides), True)
            else:
                out[v] = (np.array(view(at[r] + off, shape, strides, dtype)), False)
        return out

    def run_segments(self, executor) -> None:
        """The native segments (one driver call each) and the steps run by their references, in order,
        on the addresses the slots hold."""
        driver, pool = self.driver, executor.pool
        for segment in self.segments:
            if segment[0] == "native":
                _, _, table_at, rows = segment
                start = perf_counter()
                if pool is not None and pool.lock.acquire(blocking=False):
                    try:
                        driver(table_at, rows, pool.dispatch_address, pool.address, 1)
                    finally:
                        pool.lock.release()
                else:
                    driver(table_at, rows, 0, 0, 0)
                executor.native_seconds += perf_counter() - start
            else:
                self.call(segment)

    def set_root(self, r: int, a: int) -> None:
        """Root ``r`` at address ``a``: its argument slots are rewritten when it moved."""
        self.at[r] = a
        if self.patched.get(r) != a:
            for array, slot, off in self.groups.get(r, ()):
                array[slot] = a + off
            self.patched[r] = a

    def bind(self, executor, inputs: list, free: dict, tops: list):
        """A ``Bound`` running this program on the buffers of ``inputs`` that are not in ``tops`` (the
        call's state: every one free, donated to the result that updates it, written in place by
        every call), with the inputs at ``tops`` (indices into ``inputs``) given anew on each call.
        None where the program does not fit that: a state input it does not write into, a result
        neither state nor a fresh buffer of its own."""
        from .llvm import address

        top_set = set(tops)
        state = [i for i in range(len(inputs)) if i not in top_set]
        if len({id(inputs[i]) for i in state}) != len(state) or any(id(inputs[i]) not in free for i in state):
            return None
        roots = self.roots
        donated: dict = {}  # input index -> its donation root
        for r in self.donations:
            i = roots[r].index
            if i in top_set or i in donated:
                return None
            donated[i] = r
        if set(donated) != set(state):
            return None
        results: dict = {}  # state input index -> tape step index of its result
        fresh: list = []  # (tape step index, root, shape, dtype) of the results made fresh by every call
        for v, (r, off, shape, strides, dtype) in self.results.items():
            root = roots[r]
            if off:
                return None
            if root.kind == _DONATE:
                buf = inputs[root.index]._data
                if buf.shape != shape or buf.strides != strides or buf.dtype != dtype or root.index in results:
                    return None
                results[root.index] = v
            elif root.kind == _FRESH and strides == _c_strides(shape, dtype) \
                    and math.prod(shape) * np.dtype(dtype).itemsize == root.nbytes:
                if any(r == r2 and (shape, dtype) != (s2, d2) for _, r2, s2, d2 in fresh):
                    return None
                fresh.append((v, r, shape, dtype))
            else:
                return None
        buf = None  # (``donatable`` counts the references to each buffer)
        if set(results) != set(state):
            return None
        # Every check passed: take the state's buffers (as ``run`` donates them, so the memory count
        # and the executor see the same), then hold them in place.
        fixed = []
        for i, r in donated.items():
            buf = executor.donatable(inputs[i])
            if buf is None or buf is not inputs[i]._data:
                return None
            fixed.append((r, address(buf)))
        del buf
        for r in self.input_roots:
            i = roots[r].index
            if i not in top_set:
                fixed.append((r, address(inputs[i]._data)))
        varying = [(r, tops.index(roots[r].index)) for r in self.input_roots if roots[r].index in top_set]
        return Bound(self, fixed, varying, fresh, results)

    def call(self, segment) -> None:
        """A step run by its reference (or template) on views of the roots, its result copied into
        its root in the capture's layout."""
        from ..core.array import make_node, make_realized

        _, call, specs, out, (prim, params, shape, dtype, stream) = segment
        at = self.at
        ins = []
        for where, s_shape, s_strides, s_np, s_dtype in specs:
            address = where if isinstance(where, int) else at[where[0]] + where[1]
            ins.append(make_realized(view(address, s_shape, s_strides, s_np), s_dtype, stream))
        node = make_node(prim, tuple(ins), params, shape, dtype, stream)
        del ins
        call(node)
        (r, off), o_shape, o_strides, o_np = out
        np.copyto(view(at[r] + off, o_shape, o_strides, o_np), node._data, casting="no")

