"""Sorting: the ``sort`` primitives (sort, argsort, partition, argpartition, topk, unique) and their ops.

NaNs sort after every number and complex values sort lexicographically, as in MLX. ``argsort`` is
stable. Index outputs are uint32; ``unique``'s counts are int32. Elements inside the two sides of a
partition (and the order of ``topk``'s result) are unspecified, as MLX documents.
"""
from __future__ import annotations

import operator

import numpy as np

from ._base import Primitive, api, cast, dt, fmt_shape, make_node, register, resolve_stream, to_array
from .reduction import _random_values, check_array, incompatible
from ..errors import AxisError

_ALL = tuple(dt.ALL)


# --- references ---------------------------------------------------------------------------------------

def _sort_ref(p, x):
    return np.sort(x, axis=p["axis"], kind="stable")


def _argsort_ref(p, x):
    return np.argsort(x, axis=p["axis"], kind="stable")


def _partition_ref(p, x):
    return np.partition(x, p["kth"], axis=p["axis"])


def _argpartition_ref(p, x):
    return np.argpartition(x, p["kth"], axis=p["axis"])


def _topk_ref(p, x):
    ax, k = p["axis"], p["k"]
    n = x.shape[ax]
    if k == 0:
        return np.take(x, np.arange(0), axis=ax)
    return np.take(np.partition(x, n - k, axis=ax), np.arange(n - k, n), axis=ax)


def _unique_groups(x):
    """Sorted order, the first sorted position of each run of equal values, and run ids."""
    order = np.argsort(x, kind="stable")
    s = x[order]
    new = np.ones(s.shape, bool)
    new[1:] = s[1:] != s[:-1]  # NaN != NaN: every NaN is its own value
    return order, s, np.flatnonzero(new), np.cumsum(new) - 1


def _fit(values, size, fill):
    if len(values) >= size:
        return values[:size]
    return np.concatenate([values, np.full(size - len(values), fill, dtype=values.dtype)])


def _unique_ref(p, x, *fill):
    flat = x.reshape(-1)
    size, which = p["size"], p["output"]
    order, s, starts, run = _unique_groups(flat)
    if which == "values":
        values = s[starts]
        pad = fill[0].reshape(()) if fill else (values[0] if len(values) else np.zeros((), x.dtype))
        return _fit(values, size, pad)
    if which == "index":
        index = order[starts]
        return _fit(index, size, index[0] if len(index) else 0)
    if which == "counts":
        counts = np.diff(np.append(starts, flat.size))
        return _fit(counts, size, 0)
    inverse = np.empty(flat.size, np.int64)
    inverse[order] = np.minimum(run, max(size - 1, 0))  # dropped values point at the last entry
    return inverse.reshape(x.shape)


# --- generated test cases -----------------------------------------------------------------------------

def _distinct_rows(rng, dtype, rows, n):
    """Rows whose values along the last axis are distinct, so every order-free result is determined."""
    if dtype is dt.bool_:
        base = np.arange(n) % 2 == 1
    else:
        base = np.arange(n) - (n // 2 if dtype.kind in "ifc" else 0)
    out = np.stack([rng.permutation(base) for _ in range(rows)])
    if dtype.kind == "c":
        return (out + 0.5j * out).astype(np.complex64)
    return out.astype(np.float32 if dtype is dt.bfloat16 else dtype.np_compute)


def _sort_cases(name):
    def cases(rng, dtype):
        x = _random_values(rng, dtype, (3, 6))
        if name == "sort":
            return [(name, (x,), {}), (name, (x,), {"axis": 0}), (name, (x,), {"axis": None})]
        d = _distinct_rows(rng, dtype, 4, 2 if dtype is dt.bool_ else 6)
        return [(name, (d,), {}), (name, (d.T.copy(),), {"axis": 0})]
    return cases


def _partition_cases(name):
    def cases(rng, dtype):
        pairs = _distinct_rows(rng, dtype, 5, 2)  # two elements: a partition of them is their sort
        return [(name, (pairs, 0), {}), (name, (pairs, 1), {}), (name, (pairs.T.copy(), -1), {"axis": 0})]
    return cases


def _topk_cases(rng, dtype):
    d = _distinct_rows(rng, dtype, 4, 2 if dtype is dt.bool_ else 6)
    return [("topk", (d, 1), {}), ("topk", (d.T.copy(), 1), {"axis": 0}), ("topk", (d, 1), {"axis": None})]


def _unique_cases(rng, dtype):
    x = _random_values(rng, dtype, (4, 5))
    return [("unique", (x, 6), {}), ("unique", (x, 3), {"return_counts": True}),
            ("unique", (x, 25), {"return_index": True, "return_inverse": True, "return_counts": True})]


def _prim(name, ref, cases):
    return register(Primitive(name, "sort", ref, doc=f"{name} along one axis.", extra={"cases": cases}))


SORT = _prim("sort", _sort_ref, _sort_cases("sort"))
ARGSORT = _prim("argsort", _argsort_ref, _sort_cases("argsort"))
PARTITION = _prim("partition", _partition_ref, _partition_cases("partition"))
ARGPARTITION = _prim("argpartition", _argpartition_ref, _partition_cases("argpartition"))
TOPK = _prim("topk", _topk_ref, _topk_cases)
UNIQUE = _prim("unique", _unique_ref, _unique_cases)


# --- public ops --------------------------------------------------------------------------------------

SIGNATURES = {
    **{n: f"{n}(a: array, /, axis: None | int = -1, *, stream: StreamOrDevice = None) -> array"
       for n in ("sort", "argsort")},
    **{n: f"{n}(a: array, /, kth: int, axis: None | int = -1, *, stream: StreamOrDevice = None) -> array"
       for n in ("partition", "argpartition")},
    "topk": "topk(a: array, /, k: int, axis: None | int = -1, *, stream: StreamOrDevice = None) -> array",
    "unique": "unique(a: array, /, size: int, return_index: bool = False, return_inverse: bool = False, "
              "return_counts: bool = False, fill_value: scalar | array | None = None, *, "
              "stream: StreamOrDevice = None) -> array | tuple[array, ...]",
}


def _int_arg(v, op):
    if isinstance(v, (float, complex, str, list, tuple)) or not hasattr(v, "__index__"):
        raise incompatible(op, SIGNATURES[op], v)
    return int(operator.index(v))


def _along(a, axis, op, stream):
    """The array and the non-negative axis an op works along (None: the flattened array)."""
    if axis is None:
        from .shape import reshape

        return reshape(a, (-1,), stream=stream), 0
    axis = _int_arg(axis, op)
    ndim = a.ndim
    if axis < -ndim or axis >= ndim:
        raise AxisError(f"[{op}] Axis {axis} is out of bounds for array with {ndim} dimensions.")
    return a, axis % ndim


@api(primitive="sort")
def sort(a, /, axis=-1, *, stream=None):
    """Sorted copy along ``axis`` (the flattened array when None); NaNs last."""
    a, ax = _along(check_array(a, "sort", SIGNATURES["sort"]), axis, "sort", stream)
    return make_node(SORT, (a,), {"axis": ax}, a._shape, a._dtype, resolve_stream(stream))


@api(primitive="argsort")
def argsort(a, /, axis=-1, *, stream=None):
    """Indices that sort ``a`` along ``axis`` (stable), as uint32."""
    a, ax = _along(check_array(a, "argsort", SIGNATURES["argsort"]), axis, "argsort", stream)
    return make_node(ARGSORT, (a,), {"axis": ax}, a._shape, dt.uint32, resolve_stream(stream))


def _kth(a, kth, ax, axis, op, sep):
    kth = _int_arg(kth, op)
    n = a._shape[ax]
    if kth < -n or kth >= n:
        raise ValueError(f"[{op}] Received invalid kth {kth}{sep}along axis {axis} for array with shape: "
                         f"{fmt_shape(a._shape)}")
    return kth % n


@api(primitive="partition")
def partition(a, /, kth, axis=-1, *, stream=None):
    """A copy whose ``kth`` element along ``axis`` is in sorted position, smaller ones before it."""
    a, ax = _along(check_array(a, "partition", SIGNATURES["partition"]), axis, "partition", stream)
    kth = _kth(a, kth, ax, axis, "partition", "")
    return make_node(PARTITION, (a,), {"axis": ax, "kth": kth}, a._shape, a._dtype, resolve_stream(stream))


@api(primitive="argpartition")
def argpartition(a, /, kth, axis=-1, *, stream=None):
    """Indices that partition ``a`` around its ``kth`` element along ``axis``, as uint32."""
    a, ax = _along(check_array(a, "argpartition", SIGNATURES["argpartition"]), axis, "argpartition", stream)
    kth = _kth(a, kth, ax, axis, "argpartition", " ")
    return make_node(ARGPARTITION, (a,), {"axis": ax, "kth": kth}, a._shape, dt.uint32,
                     resolve_stream(stream))


@api(primitive="topk")
def topk(a, /, k, axis=-1, *, stream=None):
    """The ``k`` largest elements along ``axis``, in unspecified order."""
    a, ax = _along(check_array(a, "topk", SIGNATURES["topk"]), axis, "topk", stream)
    k = _int_arg(k, "topk")
    if k < 0 or k > a._shape[ax]:
        raise ValueError(f"[topk] Received invalid k={k} along axis {axis} for array with shape: "
                         f"{fmt_shape(a._shape)}")
    shape = a._shape[:ax] + (k,) + a._shape[ax + 1:]
    return make_node(TOPK, (a,), {"axis": ax, "k": k}, shape, a._dtype, resolve_stream(stream))


@api(primitive="unique")
def unique(a, /, size, return_index=False, return_inverse=False, return_counts=False, fill_value=None,
           *, stream=None):
    """The sorted unique elements of the flattened ``a``, truncated or padded to ``size``."""
    check_array(a, "unique", SIGNATURES["unique"])
    size = _int_arg(size, "unique")
    if size < 0:
        raise ValueError(f"[unique] Received negative size {size}.")
    inputs = (a,)
    if fill_value is not None:
        if type(fill_value) is int and a._dtype.kind in "iu":  # MLX range-checks Python ints only
            info = np.iinfo(a._dtype.np_storage)
            if not info.min <= fill_value <= info.max:
                raise ValueError(f"Converting {fill_value} to {a._dtype.name} would result in overflow.")
        fill = to_array(fill_value, a._dtype)
        if fill.size != 1:
            raise ValueError(f"[unique] Fill value must have one element, but got shape "
                             f"{fmt_shape(fill._shape)}.")
        inputs = (a, cast(fill, a._dtype, stream))
    elif a.size == 0 and size > 0:
        raise ValueError("[unique] A fill value is required for an empty input with a non-zero size.")
    s = resolve_stream(stream)

    def output(which, shape, dtype):
        return make_node(UNIQUE, inputs, {"size": size, "output": which}, shape, dtype, s)

    values = output("values", (size,), a._dtype)
    if not (return_index or return_inverse or return_counts):
        return values
    out = [values]
    if return_index:
        out.append(output("index", (size,), dt.uint32))
    if return_inverse:
        out.append(output("inverse", a._shape, dt.uint32))
    if return_counts:
        out.append(output("counts", (size,), dt.int32))
    return tuple(out)


# --- searchsorted ------------------------------------------------------------------------------------

def _searchsorted_ref(p, seq, values):
    return np.searchsorted(seq, values, side=p["side"]).astype(np.uint32)


def _searchsorted_cases(rng, dtype):
    seq = np.sort(_random_values(rng, dtype, (9,)))
    return [("searchsorted", (seq, _random_values(rng, dtype, (3, 4))), {}),
            ("searchsorted", (seq, seq[::2].copy()), {"side": "right"}),
            ("searchsorted", (seq, seq[1::3].copy()), {"side": "left"}),
            ("searchsorted", (seq[:0].copy(), _random_values(rng, dtype, (2,))), {})]


SEARCHSORTED = register(Primitive("searchsorted", "sort", _searchsorted_ref,
                                  doc="Insertion points of values into a sorted 1-D sequence.",
                                  extra={"cases": _searchsorted_cases}))

_SEARCHSORTED_SIGNATURE = ("searchsorted(sorted_sequence: array, values: array, /, side: str = 'left', *, "
                           "stream: StreamOrDevice = None) -> array")


@api(primitive="searchsorted")
def searchsorted(sorted_sequence, values, /, side: str = "left", *, stream=None):
    from ._base import array

    if not isinstance(sorted_sequence, array) or not isinstance(values, array):
        raise incompatible("searchsorted", _SEARCHSORTED_SIGNATURE, sorted_sequence, values)
    if sorted_sequence.ndim != 1:
        raise ValueError(f"[searchsorted] The sorted sequence must be 1-D but has {sorted_sequence.ndim} "
                         "dimensions.")
    if side not in ("left", "right"):
        raise ValueError(f"[searchsorted] Invalid side '{side}'. Expected 'left' or 'right'.")
    d = dt.promote_types(sorted_sequence._dtype, values._dtype)
    seq, values = cast(sorted_sequence, d, stream), cast(values, d, stream)
    return make_node(SEARCHSORTED, (seq, values), {"side": side}, values._shape, dt.uint32,
                     resolve_stream(stream))


def _searchsorted_vmap(node, inputs, axes, size):
    if axes[0] is not None:
        raise ValueError("[searchsorted] Cannot vmap over the sorted sequence: it must be 1-D.")
    return searchsorted(inputs[0], inputs[1], side=node._params["side"]), axes[1]


SEARCHSORTED.extra["vmap"] = _searchsorted_vmap


def _no_gradient(prim):
    from ._autodiff import nondifferentiable

    nondifferentiable(prim)


_no_gradient(SEARCHSORTED)


# --- gradient rules -----------------------------------------------------------------------------
# sort, partition and topk permute (a selection of) the input: gradients route through the
# permutation, which is locally constant, so its indices carry no gradient themselves.

def _attach_gradients():
    from . import _autodiff as ad
    from ._autodiff import O

    def permutation(node):
        p = node._params
        x = node._inputs[0]
        if node._prim is SORT:
            idx = O.argsort(x, axis=p["axis"])
        elif node._prim is PARTITION:
            idx = O.argpartition(x, p["kth"], axis=p["axis"])
        else:
            n = x._shape[p["axis"]]
            idx = O.argpartition(x, n - p["k"], axis=p["axis"])
            window = [slice(None)] * x.ndim
            window[p["axis"]] = slice(n - p["k"], n)
            idx = idx[tuple(window)]
        return O.stop_gradient(idx)

    def vjp(node, cot, argnums):
        x = node._inputs[0]
        zeros = O.zeros(x._shape, cot._dtype)
        return [O.put_along_axis(zeros, permutation(node), cot, axis=node._params["axis"])]

    def jvp(node, tangents, argnums):
        return O.take_along_axis(tangents[0], permutation(node), axis=node._params["axis"])

    for prim in (SORT, PARTITION, TOPK):
        prim.vjp, prim.jvp = vjp, jvp
    for prim in (ARGSORT, ARGPARTITION, UNIQUE):
        ad.nondifferentiable(prim)


_attach_gradients()
