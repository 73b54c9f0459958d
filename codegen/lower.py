"""Lowering: a fused group of graph nodes to one ``codegen.ir.Kernel`` plus the buffers it reads.

``classify`` says how code generation treats a node: an ``elementwise`` op it can compute, a ``view``
(a movement primitive whose numpy reference returns a view), a ``reduce`` it can compute, or None
(the numpy executor runs it). ``lower`` runs when the group's inputs are realized: it walks from the
root through unrealized nodes, pushes every view down to the realized buffers by applying the view's
own numpy reference to them (so a kernel reads transposed, sliced, broadcast or reshaped data in
place, through strides), and merges loop dims that every buffer walks contiguously.
"""
from __future__ import annotations

import dataclasses
import hashlib
import weakref

import numpy as np

from . import ir
from ..core.dtypes import Dtype

# stop_gradient returns its input unchanged, so on a buffer it is a view, as in the numpy executor.
VIEWS = frozenset({"reshape", "transpose", "broadcast_to", "strided_slice", "flip", "stop_gradient"})
_IDENTITY = frozenset({"copy"})
_ELEMENTWISE = ir.UNARY_OPS | ir.BINARY_OPS | ir.TERNARY_OPS | _IDENTITY | {"astype"}
_FLOAT_ONLY = frozenset({"exp", "expm1", "log", "log2", "log10", "log1p", "sqrt", "rsqrt", "reciprocal",
                         "sin", "cos", "tanh", "sigmoid", "erf", "degrees", "radians", "divide"})
_ELEMENTWISE_KINDS = ("unary", "binary", "ternary")
# reduction primitive -> the kernel's reduce op (all and any reduce booleans)
# A matrix times a column lowers to a sum over the shared dim (bandwidth bound; no template needed).
MATVEC = "matvec"
_MATVEC_DTYPES = frozenset({"float32", "float16", "bfloat16"})
_REDUCTIONS = {"sum": "sum", "prod": "prod", "max": "max", "min": "min", "all": "min", "any": "max",
               "argmax": "argmax", "argmin": "argmin"}


def _broadcast(params, x):
    return np.broadcast_to(x, params)


def _transpose(params, x):
    return x.transpose(params)


# What a backend's renderer covers: (op and reduction names, dtypes). Every renderer covers PORTABLE;
# the LLVM renderer covers EVERYTHING.
PORTABLE = (ir.PORTABLE_OPS | ir.REDUCE_OPS, ir.DTYPES)
# The name in a caps' ops that lets the planner fuse a reduction with its elementwise consumers.
EPILOGUES = "reduce+epilogue"
EVERYTHING = (ir.ALL_OPS | ir.REDUCE_OPS | ir.ARG_REDUCE_OPS | {"all", "any", EPILOGUES, MATVEC},
              ir.DTYPES | {"float64"})
_FLOAT_INPUT = frozenset({"power", "tan", "arcsin", "arccos", "arctan", "sinh", "cosh", "arcsinh",
                          "arccosh", "arctanh", "arctan2", "logaddexp"})


def classify(node, caps=PORTABLE):
    """'elementwise', 'view', 'reduce', or None when only the numpy executor can run ``node``."""
    prim = node._prim
    name = prim.name
    if name in VIEWS:
        return "view"
    ops, dtypes = caps
    if node._dtype.name not in dtypes:
        return None
    if prim.kind in _ELEMENTWISE_KINDS and name in _ELEMENTWISE:
        if name not in ops and name not in _IDENTITY and name != "astype":
            return None
        wide = node._dtype.name == "float64"
        for i in node._inputs:
            if i._dtype.name not in dtypes:
                return None
            wide = wide or i._dtype.name == "float64"
        if wide and name not in ir.FLOAT64_OPS and name not in _IDENTITY and name != "astype":
            return None
        kind = node._inputs[0]._dtype.kind
        if (name in _FLOAT_ONLY or name in _FLOAT_INPUT) and kind != "f":
            return None
        if name == "round" and node._params and node._params.get("decimals", 0):
            return None
        return "elementwise"
    if prim.kind == "reduce" and name in ops and name in _REDUCTIONS \
            and node._inputs[0]._dtype.name in dtypes:
        return "reduce"
    if name == "matmul" and MATVEC in ops and node._shape[-1] == 1 and node._dtype.name in _MATVEC_DTYPES:
        return "reduce"
    return None


def _is_reduction(node) -> bool:
    return node._prim.kind == "reduce" or node._prim.name == "matmul"


def _matvec(group: "_Group", node) -> tuple:
    """A matrix times a column, (..., M, K) @ (..., K, 1), as a reduction over K of the products
    (in float32: half inputs are widened first, as the reference does): (value, dims, n_out)."""
    a, b = node._inputs
    batch = node._shape[:-2]
    m, k = a._shape[-2], a._shape[-1]
    nd = len(batch) + 2
    swap = tuple(range(nd - 2)) + (nd - 1, nd - 2)
    left = group.expr(a, ((_broadcast, batch + (m, k)),))
    right = group.expr(b, ((_broadcast, batch + (k, 1)), (_transpose, swap), (_broadcast, batch + (m, k))))
    if left.dtype != "float32":
        left, right = ir.Cast(left, "float32"), ir.Cast(right, "float32")
    return ir.Op("multiply", (left, right), "float32"), batch + (m, k), len(batch) + 1


class _Group:
    """Builds the expression of one kernel and collects the buffer views it loads."""

    def __init__(self, final_moves: tuple, arrays: list | None = None, slots: dict | None = None,
                 sources: list | None = None):
        self.final = final_moves  # applied to every leaf after the graph's own views
        self.arrays: list = [] if arrays is None else arrays  # shared by a reduction and its epilogue
        self.slots: dict = {} if slots is None else slots
        self.sources = sources  # per buffer: (leaf node, view's byte offset or None for a copy)
        self.memo: dict = {}
        self.reduced = None  # the reduction an epilogue group reads

    def expr(self, node, moves: tuple):
        key = (id(node), tuple((id(f), id(p)) for f, p in moves))
        hit = self.memo.get(key)
        if hit is None:
            hit = self.memo[key] = self._expr(node, moves)
        return hit

    def _expr(self, node, moves):
        if node._data is not None:
            return self.leaf(node, moves)
        prim = node._prim
        if prim.name in VIEWS:
            return self.expr(node._inputs[0], ((prim.ref, node._params),) + moves)
        if _is_reduction(node):  # the planner fused it with this epilogue (fuse.absorb_reductions)
            assert not moves and self.reduced in (None, node), "one reduction per kernel, unmoved"
            self.reduced = node
            return ir.Reduced(node._dtype.name)
        shape = node._shape
        args = []
        for i in node._inputs:
            m = moves if i._shape == shape else ((_broadcast, shape),) + moves
            args.append(self.expr(i, m))
        dtype = node._dtype.name
        name = prim.name
        if name == "astype":
            return ir.Cast(args[0], dtype)
        if name in _IDENTITY:
            return args[0]
        return ir.Op(name, tuple(args), dtype)

    def leaf(self, node, moves):
        arr = node._data
        for fn, params in moves + self.final:
            arr = fn(params, arr)
        ptr = arr.__array_interface__["data"][0]
        # Keyed by the node too: a buffer shared by distinct nodes gets one slot per node, so a kernel
        # depends on the graph's structure only, never on where buffers happen to live.
        key = (id(node), ptr, arr.strides, arr.shape, node._dtype.name, bool(self.final))
        slot = self.slots.get(key)
        if slot is None:
            slot = self.slots[key] = len(self.arrays) + 1  # buffer 0 is the output
            self.arrays.append(arr)
            if self.sources is not None:
                base = node._data
                view = arr.size == 0 or np.may_share_memory(arr, base)
                self.sources.append((node, ptr - base.__array_interface__["data"][0] if view else None))
        size = arr.itemsize
        return ir.Load(slot, node._dtype.name, tuple(s // size for s in arr.strides))


def _coalesce(dims: tuple, strides: list, n_out: int, reducing: bool = False) -> tuple:
    """Drop size-1 dims and merge neighbours every buffer walks contiguously; a reduction keeps one
    reduced dim (of size 1 when it reduces nothing, as argmax of a scalar does). Returns
    (dims, strides per buffer, n_out)."""
    groups = []
    for lo, hi in ((0, n_out), (n_out, len(dims))):
        kept = [d for d in range(lo, hi) if dims[d] != 1]
        merged: list = []  # [size, [stride per buffer]]
        for d in kept:
            if merged and all(s[d] * dims[d] == m for s, m in zip(strides, merged[-1][1])):
                merged[-1][0] *= dims[d]
                merged[-1][1] = [s[d] for s in strides]
            else:
                merged.append([dims[d], [s[d] for s in strides]])
        groups.append(merged)
    out, red = groups
    if n_out == len(dims) and not out:
        out = [[1, [0] * len(strides)]]
    if (reducing or n_out < len(dims)) and not red:
        red = [[1, [0] * len(strides)]]
    new_dims = tuple(m[0] for m in out + red)
    new_strides = [tuple(m[1][b] for m in out + red) for b in range(len(strides))]
    return new_dims, new_strides, len(out)


def contiguous_strides(shape: tuple) -> tuple:
    """The element strides of a C-contiguous array of ``shape``."""
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= s
    return tuple(reversed(out))


def _restride(e, strides_of: dict):
    if isinstance(e, ir.Load):
        return ir.Load(e.buf, e.dtype, strides_of[e.buf])
    if isinstance(e, (ir.Const, ir.Reduced)):
        return e
    if isinstance(e, ir.Cast):
        return ir.Cast(_restride(e.arg, strides_of), e.dtype)
    return ir.Op(e.op, tuple(_restride(a, strides_of) for a in e.args), e.dtype)


# Params values that are plain data: kept (in keys and in the caches below) as they are.
_PLAIN = (type(None), bool, int, float, complex, str, bytes, slice, type(Ellipsis), np.generic, np.dtype, Dtype)


class _Opaque:
    """A params value that is not plain data (a custom function's rules, a trace's token): it stands
    in keys for that very object, without keeping it alive (its rules may hold a whole graph's
    arrays). Equal to another only while both refer to the same live object, so an id reused after
    the object died never makes two keys equal."""
    __slots__ = ("ref", "key")

    def __init__(self, obj):
        self.ref = weakref.ref(obj)
        self.key = id(obj)

    def __hash__(self):
        return self.key

    def __eq__(self, other):
        if type(other) is not _Opaque:
            return NotImplemented
        obj = self.ref()
        return obj is not None and obj is other.ref()


def _plain(v):
    """``v`` for a key: plain data as it is, tuples item by item, an object that can be referenced
    weakly as an ``_Opaque`` (None when something in ``v`` is neither, so the caller keeps ``v``)."""
    if isinstance(v, _PLAIN):
        return v
    if type(v) is tuple:
        items = tuple(_plain(x) for x in v)
        return None if any(i is None and x is not None for i, x in zip(items, v)) else items
    try:
        return _Opaque(v)
    except TypeError:
        return None


def _plain_data(v) -> bool:
    """Whether ``v`` is plain data or tuples of it (shapes, axes, index tuples): a key holds it as it is."""
    if isinstance(v, _PLAIN):
        return True
    return type(v) is tuple and all(isinstance(x, _PLAIN) or _plain_data(x) for x in v)


def frozen(params):
    """``params`` as a hashable value (for structural keys)."""
    if params is None:
        return None
    hit = _FROZEN.get(id(params))
    if hit is not None and hit[0] is params:
        return hit[1]
    value = tuple(params.items()) if type(params) is dict else params
    keep = True  # remembered by identity: only params of plain data, which hold nothing large alive
    if type(params) is dict and not all(_plain_data(v) for v in params.values()):
        items = tuple((k, _plain(v)) for k, v in value)
        if all(p is not None or v is None for (_, p), (_, v) in zip(items, value)):
            value = items
            keep = not any(type(p) is _Opaque or (type(p) is tuple and _holds_opaque(p)) for _, p in items)
    try:
        hash(value)
    except TypeError:
        try:  # slices (an index's) are hashable from Python 3.12 on; before, as their fields
            value = _slices_as_tuples(value)
            hash(value)
        except TypeError:
            return repr(value)
    if keep:
        if len(_FROZEN) >= 8192:
            _FROZEN.clear()
        _FROZEN[id(params)] = (params, value)
    return value


def _slices_as_tuples(v):
    if type(v) is slice:
        return (slice, v.start, v.stop, v.step)
    if type(v) is tuple:
        return tuple(_slices_as_tuples(x) for x in v)
    return v


def _holds_opaque(t: tuple) -> bool:
    return any(type(x) is _Opaque or (type(x) is tuple and _holds_opaque(x)) for x in t)


_SIMPLE = frozenset({type(None), bool, int, float, str})
_INDEX_ITEMS = frozenset({int, type(None), type(Ellipsis)})
_BOUNDS = frozenset({int, type(None)})


def _simple_values(params: dict):
    """Whether every value of ``params`` is a number, string, None or a tuple of ints, slices of ints,
    None and Ellipsis (most ops' params: shapes, axes, flags, index tuples), so that its items are a
    key as they are (the common case, made fresh by every op call of an uncompiled graph, kept by no
    cache): None when not, else whether a slice is among them."""
    slices = False
    for v in params.values():
        t = type(v)
        if t in _SIMPLE:
            continue
        if t is not tuple:
            return None
        for x in v:
            tx = type(x)
            if tx in _INDEX_ITEMS:
                continue
            if tx is not slice or type(x.start) not in _BOUNDS or type(x.stop) not in _BOUNDS \
                    or type(x.step) not in _BOUNDS:
                return None
            slices = True
    return slices


def _new_token(value) -> int:
    if len(_TOKEN_OF) >= 1 << 16:
        _TOKEN_OF.clear()  # later params get fresh tokens: keys built before just stop matching
    token = _TOKEN_OF[value] = _NEXT_TOKEN[0]
    _NEXT_TOKEN[0] += 1
    return token


_TOKENS: dict = {}  # id(params) -> (params, token): one lookup for a params object seen before
_TOKEN_OF: dict = {}  # frozen params -> token
_NEXT_TOKEN = [0]


def params_token(params) -> int:
    """A small int standing for ``frozen(params)``: equal params get equal tokens, different ones never
    share a token. A structural key holding tokens hashes and compares a node's params in constant
    time (a compiled graph reuses its params objects, so most are found by identity)."""
    hit = _TOKENS.get(id(params))
    if hit is not None and hit[0] is params:
        return hit[1]
    simple = _simple_values(params) if type(params) is dict else None
    if simple is not None:
        # its items as they are (slices as their fields, hashable before Python 3.12), without
        # ``frozen``'s checks: params of one form always take the same path, so tokens stay consistent
        value = tuple(params.items()) if simple is False else \
            tuple([(k, tuple([(slice, x.start, x.stop, x.step) if type(x) is slice else x for x in v])
                    if type(v) is tuple else v) for k, v in params.items()])
        token = _TOKEN_OF.get(value)
        if token is None:
            token = _new_token(value)
        return token
    value = frozen(params)
    token = _TOKEN_OF.get(value)
    if token is None:
        token = _new_token(value)
    if _FROZEN.get(id(params), (None,))[0] is not params:
        return token  # params ``frozen`` would not keep alive (they hold objects) are not kept here either
    if len(_TOKENS) >= 8192:
        _TOKENS.clear()
    _TOKENS[id(params)] = (params, token)
    return token


# id(params) -> (params, frozen value): a compiled function's replays share their params objects,
# so a structural key of a replayed graph freezes nothing. The entry keeps params alive, so an id
# is never taken by another object while it is here; params are never changed once recorded.
_FROZEN: dict = {}


def structure(root) -> tuple:
    """(key, leaves): a hashable description of the group rooted at ``root`` (its primitives,
    params, shapes and dtypes, and the layout of the realized buffers it reads, but not their
    contents or addresses), and those buffers' nodes in a fixed order. Two groups with equal keys
    lower to the same kernel, reading the same byte offsets into their leaves."""
    key = []
    leaves = []
    seen: dict = {}
    stack = [root]
    while stack:
        n = stack.pop()
        k = id(n)
        at = seen.get(k)
        if at is not None:
            key.append(at)  # a node reached again: the DAG's sharing is part of the structure
            continue
        seen[k] = len(seen)
        data = n._data
        if data is not None:
            key.append((data.shape, data.strides, n._dtype.name))
            leaves.append(n)
        else:
            key.append((n._prim.name, frozen(n._params), n._shape, n._dtype.name, len(n._inputs)))
            stack.extend(n._inputs)
    return tuple(key), leaves


def lower(root, width: int, sources: list | None = None):
    """(kernel, [input arrays in buffer order 1..n], output array) for the group rooted at ``root``.
    ``sources``, when given, receives for each input buffer its leaf node and the byte offset of
    the array read from that node's buffer (None when a view had to copy)."""
    out = np.empty(root._shape, dtype=root._dtype.np_storage)
    reduction, epilogue = (root, None) if _is_reduction(root) else (None, None)
    arrays: list = []
    if reduction is None:
        group = _Group((), arrays, sources=sources)
        value = group.expr(root, ())
        if group.reduced is not None:
            reduction, epilogue = group.reduced, value
            slots = group.slots
    if reduction is not None and reduction._prim.name == "matmul":
        group = _Group((), arrays, slots if epilogue is not None else None, sources)
        value, dims, n_out = _matvec(group, reduction)
        axes = (n_out,)  # the reduced dim's position, for the epilogue's keepdims rule
        out_strides = contiguous_strides(dims[:n_out]) + (0,)
        reduce_op = "sum"
    elif reduction is not None:
        src = reduction._inputs[0]
        axes = reduction._params["axes"]
        kept = tuple(d for d in range(len(src._shape)) if d not in axes)
        perm = kept + tuple(axes)
        group = _Group(((_transpose, perm),), arrays, slots if epilogue is not None else None, sources)
        value = group.expr(src, ())
        if reduction._prim.name in ("all", "any") and value.dtype != "bool":
            value = ir.Cast(value, "bool")
        dims = tuple(src._shape[d] for d in perm)
        n_out = len(kept)
        out_strides = contiguous_strides(tuple(src._shape[d] for d in kept)) + (0,) * len(axes)
        reduce_op = _REDUCTIONS[reduction._prim.name]
    else:
        dims = root._shape
        n_out = len(dims)
        out_strides = contiguous_strides(dims)
        reduce_op = None
    by_buf = {l.buf: l.strides for l in ir.walk(value) if isinstance(l, ir.Load)}
    tail = {}
    if epilogue is not None:
        # Epilogue loads index the output (with keepdims' size-1 axes dropped); they stay put
        # while the reduced dims run.
        keepdims = reduction._prim.name == "matmul" or reduction._params["keepdims"]
        drop = set(axes) if keepdims else set()
        for l in ir.walk(epilogue):
            if isinstance(l, ir.Load):
                tail[l.buf] = tuple(st for d, st in enumerate(l.strides) if d not in drop) + (0,) * len(axes)
    bufs = sorted(by_buf)
    ebufs = sorted(tail)
    dims, strides, n_out = _coalesce(dims, [out_strides] + [by_buf[b] for b in bufs]
                                     + [tail[b] for b in ebufs], n_out, reduce_op is not None)
    value = _restride(value, dict(zip(bufs, strides[1:1 + len(bufs)])))
    if epilogue is not None:
        epilogue = _restride(epilogue, {b: st[:n_out] for b, st in zip(ebufs, strides[1 + len(bufs):])})
    store = ir.Store(0, root._dtype.name, strides[0][:n_out] if reduce_op else strides[0], value)
    kernel = ir.Kernel("", dims, n_out, store, reduce_op, width, epilogue)
    name = _NAMES.get(kernel)
    if name is None:
        # A digest of the IR, stable across processes, so the disk cache finds the kernel again.
        name = _NAMES[kernel] = "k" + hashlib.sha1(repr(kernel).encode()).hexdigest()[:16]
    return dataclasses.replace(kernel, name=name), arrays, out


_NAMES: dict = {}  # unnamed kernel -> its name (a digest is costlier than the dict lookup)
