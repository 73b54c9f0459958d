"""Indexing: ``a[idx]``, ``a[idx] = v``, ``a.at[idx].add(v)``, take/put along axes, dynamic slices.

An index expression is first normalized into a template (ellipsis expanded; ints, slices and None as
plain Python values; each integer array as an ``("array", k)`` placeholder for input ``k``). Basic
templates record a numpy-view primitive; templates with arrays record a gather whose reference is
numpy's advanced indexing, which places the gathered dimensions exactly as MLX does (first when the
array/int indices are separated by a slice or None, in place otherwise).

Out-of-range integer array indices read clamped positions (MLX reads arbitrary memory) and updates
through out-of-range indices are dropped, as MLX's scatter does for out-of-range Python ints.
"""
from __future__ import annotations

import builtins
import math

import numpy as np

from ._base import (DtypeError, Primitive, api, array, broadcast_shapes, cast, dt, fmt_shape,
                    make_node, register, resolve_stream, to_array)
from ..convert import numpy_to_storage
from ..array import make_realized
from ..errors import AxisError

_pyslice = builtins.slice
_INT_TYPES = (int, np.integer)
_ARRAY = "array"


# --- index normalization -----------------------------------------------------------------------

def _invalid_type(in_tuple: bool):
    return ValueError("Cannot index mlx array using the given type yet" if in_tuple
                      else "Cannot index mlx array using the given type.")


def _slice_int(v):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, _INT_TYPES):
        raise ValueError("Slice indices must be integers or None.")
    return _int32(v)


def _int32(v) -> int:
    """An int index or slice bound: MLX keeps them as 32-bit integers."""
    v = int(v)
    if not -2**31 <= v < 2**31:
        raise ValueError("Slice indices must be 32-bit integers.")
    return v


def _index_array(entry, op: str) -> array:
    """An integer index array from an mx array or a (nested) list."""
    if isinstance(entry, list):
        if not entry:  # MLX builds an empty list as float32, which cannot index
            raise ValueError(f"[{op}] Got indices with invalid dtype. Indices must be integral.")
        entry = to_array(entry)
    if entry._dtype is dt.bool_:
        raise ValueError("boolean indices are not yet supported")
    if entry._dtype.kind not in "iu":
        raise ValueError(f"[{op}] Got indices with invalid dtype. Indices must be integral.")
    return entry


def _parse(a: array, idx, op: str):
    """(template, index arrays, source axis of each array) for ``a[idx]``."""
    in_tuple = isinstance(idx, tuple)
    entries = idx if in_tuple else (idx,)
    items = []
    arrays = []
    ellipsis_at = -1
    for e in entries:
        if e is None:
            items.append(None)
        elif e is Ellipsis:
            if ellipsis_at >= 0:
                raise ValueError("An index can only have a single ellipsis (...)")
            ellipsis_at = len(items)
            items.append(Ellipsis)
        elif isinstance(e, bool):
            raise _invalid_type(in_tuple)
        elif isinstance(e, _INT_TYPES):
            items.append(_int32(e))
        elif isinstance(e, _pyslice):
            items.append(_pyslice(_slice_int(e.start), _slice_int(e.stop), _slice_int(e.step)))
        elif isinstance(e, array) or isinstance(e, list):
            items.append((_ARRAY, len(arrays)))
            arrays.append(_index_array(e, op))
        else:
            raise _invalid_type(in_tuple)
    ndim = a.ndim
    consumed = sum(1 for e in items if e is not None and e is not Ellipsis)
    if not in_tuple and ndim == 0 and consumed:
        raise ValueError("too many indices for array: array is 0-dimensional")
    if consumed > ndim:
        raise ValueError(f"Too many indices for array with {ndim} dimensions.")
    if ellipsis_at >= 0:
        items[ellipsis_at:ellipsis_at + 1] = [_pyslice(None)] * (ndim - consumed)
    else:
        items.extend([_pyslice(None)] * (ndim - consumed))
    # Concrete slice bounds and non-negative ints, each checked against its axis.
    template = []
    array_axes = [0] * len(arrays)
    axis = 0
    for e in items:
        if e is None:
            template.append(None)
            continue
        n = a._shape[axis]
        if isinstance(e, _pyslice):
            if e.step == 0:
                raise ValueError("slice step cannot be zero")
            start, stop, step = e.indices(n)
            if not len(range(start, stop, step)):
                template.append(_pyslice(0, 0, 1))
            else:  # a stop of -1 (walking down past index 0) means "no stop" to numpy
                template.append(_pyslice(start, None if stop < 0 else stop, step))
        elif isinstance(e, int):
            i = e + n if e < 0 else e
            template.append(i if 0 <= i < n else _OutOfRange(axis))
        else:
            array_axes[e[1]] = axis
            template.append(e)
        axis += 1
    return template, arrays, tuple(array_axes)


class _OutOfRange:
    """An int index outside its axis (MLX: an empty slice that cannot be squeezed)."""
    __slots__ = ("axis",)

    def __init__(self, axis):
        self.axis = axis

    def error(self):
        return ValueError(f"[squeeze] Cannot squeeze axis {self.axis} with size 0 which is not "
                          "equal to 1.")


def _slice_len(s: _pyslice) -> int:
    if s.stop is None:
        return s.start // -s.step + 1
    return len(range(s.start, s.stop, s.step))


def _result_shape(template, arrays) -> tuple:
    """The shape of ``x[template]`` under numpy's (and MLX's) placement rules."""
    if not arrays:
        return tuple(1 if e is None else _slice_len(e) for e in template if not isinstance(e, int))
    bshape = broadcast_shapes(*[x._shape for x in arrays]) if len(arrays) > 1 else arrays[0]._shape
    # Advanced indices (arrays and ints) separated by a slice or None go first.
    seen_adv = seen_gap = first = False
    for e in template:
        if isinstance(e, (int, tuple, _OutOfRange)):
            if seen_adv and seen_gap:
                first = True
                break
            seen_adv = True
        elif seen_adv:
            seen_gap = True
    out = []
    placed = first
    for e in template:
        if e is None:
            out.append(1)
        elif isinstance(e, _pyslice):
            out.append(_slice_len(e))
        elif not placed:
            out.extend(bshape)
            placed = True
    return tuple(bshape) + tuple(out) if first else tuple(out)


def _numpy_index(template, arrays, axes, shape, clip: bool):
    """The numpy index for the reference: arrays wrapped (negative) and clamped into range."""
    idx = list(template)
    for k, (arr, ax) in enumerate(zip(arrays, axes)):
        n = shape[ax]
        if arr.dtype.kind == "i":
            arr = np.where(arr < 0, arr + n, arr)
        if clip and n:
            arr = np.clip(arr, 0, n - 1)
        idx[_array_slot(template, k)] = arr.astype(np.intp, copy=False)
    return tuple(idx)


def _array_slot(template, k):
    for i, e in enumerate(template):
        if isinstance(e, tuple) and e[1] == k:
            return i
    raise KeyError(k)


# --- gather (reading) ---------------------------------------------------------------------------

def _view_ref(p, x):
    return x[p["index"] + (Ellipsis,)]  # the trailing ellipsis keeps 0-d results as views


def _gather_ref(p, x, *arrays):
    out = x[_numpy_index(p["index"], arrays, p["axes"], x.shape, clip=True)]
    return np.asarray(out, order="C")


STRIDED_SLICE = register(Primitive(
    "strided_slice", "movement", _view_ref, compute=False,
    doc="Basic indexing (ints, slices with any step, None): a view of the input."))

GATHER = register(Primitive(
    "gather", "index", _gather_ref, compute=False,
    doc="Indexing with integer arrays (numpy's advanced-indexing placement)."))


def _getitem(a: array, idx):
    if isinstance(idx, _INT_TYPES) and not isinstance(idx, bool) and a.ndim and a._shape[0]:
        n = a._shape[0]
        if not -n <= _int32(idx) < n:
            # MLX reads outside the array for a lone out-of-range int; a clamped read stays defined.
            idx = n - 1 if idx > 0 else 0
    template, arrays, axes = _parse(a, idx, "gather")
    for e in template:
        if isinstance(e, _OutOfRange):
            raise e.error()
    stream = resolve_stream(None)
    shape = _result_shape(template, arrays)
    if not arrays:
        if a._data is None and a._prim is not None and a._prim.name in _ROW_PRODUCTS:
            rows = _rows_of_product(a, tuple(template), shape, stream)
            if rows is not None:
                return rows
        return make_node(STRIDED_SLICE, (a,), {"index": tuple(template)}, shape, a._dtype, stream)
    return make_node(GATHER, (a, *arrays), {"index": tuple(template), "axes": axes}, shape,
                     a._dtype, stream)


# Products whose every output row comes from one row of the first operand (the other operands shared):
# name -> position of that operand.
_ROW_PRODUCTS = {"matmul": 0, "quantized_matmul": 0, "addmm": 1}


def _rows_of_product(a: array, template: tuple, shape: tuple, stream):
    """``a[template]`` (of ``shape``) for an unrealized product ``a`` (``x @ w``) whose last axis the index
    keeps whole: the product of the picked rows, ``x[template] @ w``. A language model's logits of its last position
    (``model(x)[:, -1, :]``) then never compute the other positions' rows (a prompt's worth of
    vocabulary-wide rows). The full product stays in the graph for any other reader. None where the
    index is not of that form (new axes, a partial last axis, batched weights) or picks every row: a
    decode step's graph then keeps the shape whose plan replays from step to step."""
    pos = _ROW_PRODUCTS[a._prim.name]
    ins = a._inputs
    x = ins[pos]
    n = a._shape[-1] if a._shape else 0
    last = template[-1] if template else None
    if len(template) != a.ndim or x.ndim != a.ndim or a.ndim < 2 or not isinstance(last, _pyslice) \
            or (last.start, last.stop, last.step) != (0, n, 1) or any(e is None for e in template) \
            or any(i != pos and v.ndim > (1 if a._prim.name == "addmm" and i == 0 else 2)
                   for i, v in enumerate(ins[:pos + 2])):
        return None
    if math.prod(shape) == math.prod(a._shape):
        return None  # every row picked (a decode step's one position): nothing to save
    # an int keeps its axis (length 1) here, so the operand keeps the product's rank; a reshape drops it
    rows_index = tuple(_pyslice(e, e + 1, 1) if isinstance(e, int) else e for e in template[:-1]) \
        + (_pyslice(0, x._shape[-1], 1),)
    rows = make_node(STRIDED_SLICE, (x,), {"index": rows_index}, _result_shape(rows_index, ()), x._dtype, stream)
    new = list(ins)
    new[pos] = rows
    out = make_node(a._prim, tuple(new), a._params, rows._shape[:-1] + (n,), a._dtype, a._stream)
    if shape == out._shape:
        return out
    from .shape import reshape

    return reshape(out, shape, stream=stream)


# --- scatter (writing) --------------------------------------------------------------------------

def _scatter_positions(p, x, arrays):
    """The numpy index for an update of ``x`` and, when some index is out of range, the padded
    target whose extra slot absorbs those updates."""
    axes = p["axes"]
    invalid = []
    for arr, ax in zip(arrays, axes):
        n = x.shape[ax]
        wrapped = np.where(arr < 0, arr + n, arr) if arr.dtype.kind == "i" else arr
        invalid.append((wrapped < 0) | (wrapped >= n))
    if not any(bad.any() for bad in invalid):
        return x.copy(), _numpy_index(p["index"], arrays, axes, x.shape, clip=False), None
    padded_shape = list(x.shape)
    for ax in axes:
        padded_shape[ax] += 1
    out = np.zeros(padded_shape, dtype=x.dtype)
    region = tuple(_pyslice(0, n) for n in x.shape)
    out[region] = x
    redirected = [np.where(bad, x.shape[ax], arr) for arr, bad, ax in zip(arrays, invalid, axes)]
    return out, _numpy_index(p["index"], redirected, axes, tuple(padded_shape), clip=False), region


def _scatter_ref(ufunc):
    def ref(p, x, update, *arrays):
        out, index, region = _scatter_positions(p, x, arrays)
        if ufunc is None:
            out[index] = update
        elif arrays:
            ufunc.at(out, index, update)
        else:
            view = out[index + (Ellipsis,)]
            ufunc(view, update, out=view)
        return out if region is None else np.ascontiguousarray(out[region])
    return ref


def _slice_update_ref(p, x, update):
    return _slice_update_into(p, x.copy(), update)


def _slice_update_region(p, x, update):
    """The index of the region of ``x`` the update overwrites."""
    return p["index"]


def _slice_update_into(p, x, update):
    """The update written into ``x`` itself: for an executor that donates a dying input's buffer (a KV
    cache written at its position with ``cache[..., n:n+1, :] = kv``)."""
    x[_slice_update_region(p, x, update)] = update
    return x


SLICE_UPDATE = register(Primitive(
    "slice_update", "index", _slice_update_ref, compute=False,
    doc="Overwrite a basic-indexed region (ints, slices, None) with an update.",
    extra={"in_place": _slice_update_into, "region": _slice_update_region}))

SCATTER = register(Primitive(
    "scatter", "index", _scatter_ref(None), compute=False,
    doc="Overwrite positions chosen by integer arrays; with repeated indices the last update wins."))

_SCATTER_REDUCE = {
    name: register(Primitive(name, "index", _scatter_ref(ufunc),
                             doc=f"Combine updates into positions chosen by an index ({ufunc.__name__}"
                                 ", repeated indices accumulate)."))
    for name, ufunc in (("scatter_add", np.add), ("scatter_prod", np.multiply),
                        ("scatter_max", np.maximum), ("scatter_min", np.minimum))
}


def _update_value(value, dtype) -> array:
    """A setitem/at value as an array of the target's dtype (MLX: scalars and arrays, no lists)."""
    if isinstance(value, array):
        return cast(value, dtype)
    if isinstance(value, (list, tuple, str)) or value is None:
        raise ValueError(f"Invalid type {type(value).__name__} received in array initialization.")
    if isinstance(value, (bool, int, float, complex, np.generic)):
        v = np.asarray(value)
        if v.dtype.kind == "c" and dtype.kind != "c":
            v = v.real
        return make_realized(numpy_to_storage(v, dtype), dtype, resolve_stream(None))
    return cast(to_array(value), dtype)


def _strip_leading_ones(u: array) -> array:
    s = 0
    while s < u.ndim and u._shape[s] == 1:
        s += 1
    if not s:
        return u
    from .shape import reshape

    return reshape(u, u._shape[s:])


def _fit_update(u: array, shape: tuple, accumulate: bool) -> array:
    from .shape import broadcast_to

    if u._shape == shape:  # the common case (a KV cache's update): no reshape and broadcast nodes
        return u
    u = _strip_leading_ones(u)
    if len(u._shape) > len(shape) or any(
            s != t and s != 1 for s, t in zip(u._shape[::-1], shape[::-1])):
        if accumulate:
            raise ValueError(f"[broadcast_shapes] Shapes {fmt_shape(u._shape)} and "
                             f"{fmt_shape(shape)} cannot be broadcast.")
        raise ValueError(f"Cannot broadcast array of shape {fmt_shape(u._shape)} into shape "
                         f"{fmt_shape(shape)}.")
    return broadcast_to(u, shape) if u._shape != shape else u


def _scatter(a: array, idx, value, prim, op: str) -> array:
    template, arrays, axes = _parse(a, idx, op)
    u = _update_value(value, a._dtype)
    if any(isinstance(e, _OutOfRange) for e in template):
        return a  # MLX drops updates through out-of-range ints
    shape = _result_shape(template, arrays)
    u = _fit_update(u, shape, prim is not None)
    stream = resolve_stream(None)
    params = {"index": tuple(template), "axes": axes}
    if prim is None:
        if not arrays:
            return make_node(SLICE_UPDATE, (a, u), {"index": tuple(template)}, a._shape, a._dtype,
                             stream)
        prim = SCATTER
    return make_node(prim, (a, u, *arrays), params, a._shape, a._dtype, stream)


def _bool_mask(idx):
    """``idx`` as a boolean mask array when it is one (setitem only), else None."""
    if isinstance(idx, array):
        return idx if idx._dtype is dt.bool_ else None
    if isinstance(idx, (bool, np.bool_)):  # a scalar mask: all or nothing
        return to_array(idx)
    if isinstance(idx, np.ndarray):
        return to_array(idx) if idx.dtype == np.bool_ else None
    if isinstance(idx, list):
        arr = to_array(idx)
        return arr if arr._dtype is dt.bool_ else None
    return None


def _masked_scatter_ref(p, x, mask, src):
    out = x.copy()
    full = np.broadcast_to(mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim)), x.shape)
    count = int(full.sum())
    flat = src.reshape(-1)
    if flat.size < count:
        raise RuntimeError("[MaskedScatter::eval_cpu] Source does not have enough elements for mask.")
    out[full] = flat[:count]
    return out


MASKED_SCATTER = register(Primitive(
    "masked_scatter", "index", _masked_scatter_ref, compute=False,
    doc="Fill the positions a boolean mask selects with the source's elements, in order."))


def _masked_setitem(a: array, mask: array, value) -> array:
    from .shape import broadcast_to, reshape

    if mask.ndim > a.ndim or a._shape[:mask.ndim] != mask._shape:
        raise ValueError(
            "[masked_scatter] The boolean mask should have the same shape as the beginning of the "
            f"indexed array but the mask has shape {fmt_shape(mask._shape)} and the array has shape "
            f"{fmt_shape(a._shape)}")
    u = _update_value(value, a._dtype)
    trailing = a.ndim - mask.ndim
    if u.ndim <= trailing:
        target = a._shape
        padded = (1,) * (a.ndim - u.ndim) + u._shape
    else:
        target = u._shape[:u.ndim - trailing] + a._shape[mask.ndim:]
        padded = u._shape
    broadcast_shapes(padded, target)  # MLX's error for values that cannot fill the target
    if u._shape != target:
        u = broadcast_to(reshape(u, padded), target)
    return make_node(MASKED_SCATTER, (a, mask, u), None, a._shape, a._dtype, resolve_stream(None))


def _setitem(a: array, idx, value) -> array:
    mask = _bool_mask(idx)
    if mask is not None:
        return _masked_setitem(a, mask, value)
    if isinstance(idx, np.ndarray):
        raise _invalid_type(False)
    return _scatter(a, idx, value, None, "scatter")


class _AtIndexer:
    """``a.at[idx]``: updates that return a new array, accumulating over repeated indices."""

    __slots__ = ("_array", "_index")

    def __init__(self, a: array):
        self._array = a
        self._index = None

    def __getitem__(self, idx):
        self._index = idx
        return self

    def _apply(self, prim, value, transform=None):
        # ``ArrayAt`` asks for the index first; None here is an index (a new axis), not a missing one
        a = self._array
        if _bool_mask(self._index) is not None:
            raise ValueError("boolean indices are not yet supported")
        u = _update_value(value, a._dtype)
        if transform is not None:
            u = transform(u)
        return _scatter(a, self._index, u, prim, "scatter")

    def add(self, value):
        return self._apply(_SCATTER_REDUCE["scatter_add"], value)

    def subtract(self, value):
        from .elementwise import negative

        return self._apply(_SCATTER_REDUCE["scatter_add"], value,
                           lambda u: u if u._dtype is dt.bool_ else negative(u))

    def multiply(self, value):
        return self._apply(_SCATTER_REDUCE["scatter_prod"], value)

    def divide(self, value):
        from .elementwise import reciprocal

        return self._apply(_SCATTER_REDUCE["scatter_prod"], value,
                           lambda u: cast(reciprocal(u), u._dtype))

    def maximum(self, value):
        return self._apply(_SCATTER_REDUCE["scatter_max"], value)

    def minimum(self, value):
        return self._apply(_SCATTER_REDUCE["scatter_min"], value)


# --- take ---------------------------------------------------------------------------------------

@api(primitive="gather")
def take(a, /, indices, axis=None, *, stream=None):
    from .shape import reshape

    a = to_array(a)
    if axis is None:
        a = reshape(a, (-1,), stream=stream)
        axis = 0
    elif not -a.ndim <= axis < a.ndim:
        raise AxisError(f"[take] Received invalid axis {axis} for array with {a.ndim} dimensions.")
    axis = axis % a.ndim
    lead = [_pyslice(0, n, 1) for n in a._shape[:axis]]
    rest = [_pyslice(0, n, 1) for n in a._shape[axis + 1:]]
    if isinstance(indices, _INT_TYPES) and not isinstance(indices, bool):
        if not a.size:
            raise ValueError("[take] Cannot do a non-empty take from an array with zero elements.")
        # MLX slices [i, i+1) without wrapping a negative index first.
        s = _pyslice(*_pyslice(int(indices), int(indices) + 1).indices(a._shape[axis]))
        if len(range(s.start, s.stop, s.step)) != 1:
            raise ValueError(f"[squeeze] Cannot squeeze axis {axis} with size 0 which is not equal "
                             "to 1.")
        template = tuple(lead + [s.start] + rest)
        shape = _result_shape(template, ())
        return make_node(STRIDED_SLICE, (a,), {"index": template}, shape, a._dtype,
                         resolve_stream(stream))
    indices = to_array(indices)
    if indices._dtype is dt.bool_:
        raise ValueError("[Gather] Boolean indices not supported.")
    if indices._dtype.kind not in "iu":
        raise ValueError("[gather] Got indices with invalid dtype. Indices must be integral.")
    if not a._shape[axis] and indices.size:
        raise ValueError("[take] Cannot do a non-empty take from an empty axis.")
    template = tuple(lead + [(_ARRAY, 0)] + rest)
    shape = _result_shape(template, (indices,))
    return make_node(GATHER, (a, indices), {"index": template, "axes": (axis,)}, shape, a._dtype,
                     resolve_stream(stream))


def _along_axis_args(a, indices, axis, op, check_dtype=True):
    """(a, indices, axis) with a flattened for ``axis=None``, after MLX's checks."""
    from .shape import reshape

    a = to_array(a)
    indices = to_array(indices)
    if axis is None:
        a = reshape(a, (-1,))
        axis = 0
    if indices.ndim != a.ndim:
        raise ValueError(f"[{op}] Indices of dimension {indices.ndim} does not match array of "
                         f"dimension {a.ndim}.")
    if not -a.ndim <= axis < a.ndim:
        raise AxisError(f"[{op}] Axis {axis} is out of bounds for array with {a.ndim} dimensions.")
    axis = axis % a.ndim
    if check_dtype and indices._dtype.kind not in "iu":
        raise DtypeError(f"[{op}] Indices must be integers, got type {indices._dtype.name}.")
    return a, indices, axis


def _without(shape, axis):
    return shape[:axis] + shape[axis + 1:]


def _take_along_axis_ref(p, x, idx):
    axis = p["axis"]
    shape = p["shape"]
    n = x.shape[axis]
    if not n:  # MLX reads outside the (empty) axis; zeros stay defined
        return np.zeros(shape, x.dtype)
    idx = np.where(idx < 0, idx + n, idx) if idx.dtype.kind == "i" else idx
    idx = np.clip(idx, 0, n - 1).astype(np.intp)
    x = np.broadcast_to(x, shape[:axis] + (n,) + shape[axis + 1:])
    idx = np.broadcast_to(idx, shape)
    return np.take_along_axis(x, idx, axis)


TAKE_ALONG_AXIS = register(Primitive(
    "take_along_axis", "index", _take_along_axis_ref, compute=False,
    doc="Gather along one axis with an index array broadcast against the other axes."))


@api(primitive="take_along_axis")
def take_along_axis(a, /, indices, axis=-1, *, stream=None):
    a, indices, axis = _along_axis_args(a, indices, axis, "take_along_axis")
    rest = broadcast_shapes(_without(a._shape, axis), _without(indices._shape, axis))
    shape = rest[:axis] + (indices._shape[axis],) + rest[axis:]
    return make_node(TAKE_ALONG_AXIS, (a, indices), {"axis": axis, "shape": shape}, shape,
                     a._dtype, resolve_stream(stream))


def _put_along_axis_ref(p, x, idx, values):
    axis = p["axis"]
    n = x.shape[axis]
    idx = np.where(idx < 0, idx + n, idx) if idx.dtype.kind == "i" else idx
    shape = values.shape
    idx = np.broadcast_to(idx, shape)
    keep = (idx >= 0) & (idx < n)
    out = x.copy()
    if keep.all():
        np.put_along_axis(out, idx.astype(np.intp), values, axis)
        return out
    # Out-of-range updates land in an extra slot that is cut off afterwards.
    padded = np.concatenate([out, np.zeros(_without(x.shape, axis)[:axis] + (1,) +
                                           x.shape[axis + 1:], x.dtype)], axis=axis)
    np.put_along_axis(padded, np.where(keep, idx, n).astype(np.intp), values, axis)
    return np.ascontiguousarray(np.take(padded, np.arange(n), axis=axis))


PUT_ALONG_AXIS = register(Primitive(
    "put_along_axis", "index", _put_along_axis_ref, compute=False,
    doc="Scatter values along one axis; with repeated indices the last update wins."))


@api(primitive="put_along_axis")
def put_along_axis(a, /, indices, values, axis=None, *, stream=None):
    from .shape import broadcast_to, reshape

    a_in = to_array(a)
    # An empty target is never written, so MLX accepts any index type there.
    a, indices, axis_ = _along_axis_args(a_in, indices, axis, "put_along_axis",
                                         check_dtype=bool(a_in.size))
    rest = _without(a._shape, axis_)
    if broadcast_shapes(rest, _without(indices._shape, axis_)) != rest:
        raise ValueError(f"[broadcast_shapes] Shapes {fmt_shape(rest)} and "
                         f"{fmt_shape(_without(indices._shape, axis_))} cannot be broadcast.")
    idx_shape = rest[:axis_] + (indices._shape[axis_],) + rest[axis_:]
    values = cast(to_array(values), a._dtype)
    # Indices and values broadcast together; the other axes must still match the target's.
    shape = broadcast_shapes(values._shape, idx_shape)
    if len(shape) != a.ndim or broadcast_shapes(rest, _without(shape, axis_)) != rest:
        raise ValueError(f"[broadcast_shapes] Shapes {fmt_shape(rest)} and "
                         f"{fmt_shape(_without(shape, axis_))} cannot be broadcast.")
    values = broadcast_to(values, shape)
    indices = broadcast_to(indices, shape)
    out = make_node(PUT_ALONG_AXIS, (a, indices, values), {"axis": axis_}, a._shape, a._dtype,
                    resolve_stream(stream))
    return out if axis is not None else reshape(out, a_in._shape, stream=stream)


# --- dynamic slices -------------------------------------------------------------------------------

def _starts(a: array, start, axes, op: str):
    start = to_array(start)
    if start._dtype.kind not in "iu":
        raise ValueError(f"[{op}] Start indices must be integers, got type {start._dtype.name}.")
    axes = tuple(int(ax) for ax in axes)
    if start.size != len(axes):
        raise ValueError(f"[{op}] Number of starting indices {start.size} does not match number of "
                         f"axes {len(axes)}.")
    for ax in axes:
        if not -a.ndim <= ax < a.ndim:
            raise AxisError(f"[{op}] Invalid axis {ax} for array with dimension {a.ndim}.")
    return start, tuple(ax % a.ndim for ax in axes)


def window_start(axes, start, shape, sizes) -> tuple:
    """The start of a ``sizes`` window at positions ``start`` (an array) along ``axes``, per axis of
    ``shape``: a negative start counts from the end, and the window is moved to lie inside ``shape``."""
    begin = [0] * len(shape)
    for ax, s in zip(axes, start.reshape(-1).tolist()):
        n = shape[ax]
        s = s + n if s < 0 else s
        begin[ax] = min(max(s, 0), n - sizes[ax])
    return tuple(begin)


def _region(p, start, shape, sizes):
    """Per-axis slices of the region, its start clamped so that it lies inside ``shape``."""
    begin = window_start(p["axes"], start, shape, sizes)
    return tuple(_pyslice(b, b + k) for b, k in zip(begin, sizes))


def _dynamic_slice_ref(p, x, start):
    return x[_region(p, start, x.shape, p["sizes"])]


DYNAMIC_SLICE = register(Primitive(
    "dynamic_slice", "movement", _dynamic_slice_ref, compute=False,
    doc="A fixed-size window of the input at start positions given by an array."))


@api(name="slice", primitive="dynamic_slice")
def slice(a, /, start_indices, axes, slice_size, *, stream=None):  # noqa: A001 (MLX's name)
    a = to_array(a)
    start, axes = _starts(a, start_indices, axes, "slice")
    sizes = tuple(int(s) for s in slice_size)
    if len(sizes) != a.ndim:
        raise ValueError(f"[slice] Invalid slice size for array with {a.ndim} dimensions.")
    if any(k < 0 or k > n for k, n in zip(sizes, a._shape)):
        raise ValueError(f"[slice] Invalid slice size {fmt_shape(sizes)} for array with shape "
                         f"{fmt_shape(a._shape)}.")
    return make_node(DYNAMIC_SLICE, (a, start), {"axes": axes, "sizes": sizes}, sizes, a._dtype,
                     resolve_stream(stream))


def _dynamic_slice_update_ref(p, x, update, start):
    return _dynamic_slice_update_into(p, x.copy(), update, start)


def _dynamic_slice_update_region(p, x, update, start):
    """The index of the window of ``x`` the update overwrites."""
    return _region(p, start, x.shape, update.shape)


def _dynamic_slice_update_into(p, x, update, start):
    """The update written into ``x`` itself: for an executor that donates a dying input's buffer."""
    x[_dynamic_slice_update_region(p, x, update, start)] = update
    return x


DYNAMIC_SLICE_UPDATE = register(Primitive(
    "dynamic_slice_update", "index", _dynamic_slice_update_ref, compute=False,
    doc="Overwrite a window of the input, at start positions given by an array, with an update.",
    extra={"in_place": _dynamic_slice_update_into, "region": _dynamic_slice_update_region}))


@api(primitive="dynamic_slice_update")
def slice_update(a, /, update, start_indices, axes, *, stream=None):
    from .shape import reshape

    a = to_array(a)
    update = cast(to_array(update), a._dtype)
    start, axes = _starts(a, start_indices, axes, "slice_update")
    if update.ndim > a.ndim:
        raise ValueError(f"[slice_update] Update array of shape {fmt_shape(update._shape)} has more "
                         f"dimensions than the array of shape {fmt_shape(a._shape)}.")
    if update.ndim < a.ndim:
        update = reshape(update, (1,) * (a.ndim - update.ndim) + update._shape)
    if any(u > n for u, n in zip(update._shape, a._shape)):
        fit = tuple(builtins.min(u, n) for u, n in zip(update._shape, a._shape))
        raise ValueError(f"[broadcast_shapes] Shapes {fmt_shape(update._shape)} and {fmt_shape(fit)} "
                         "cannot be broadcast.")
    return make_node(DYNAMIC_SLICE_UPDATE, (a, update, start), {"axes": axes}, a._shape, a._dtype,
                     resolve_stream(stream))


# --- generated-test cases for the public primitives ------------------------------------------------

def _values(rng, dtype, shape):
    if dtype is dt.bool_:
        return rng.random(shape) > 0.5
    if dtype.kind in "iu":
        return rng.integers(0, 100, shape).astype(dtype.np_compute)
    if dtype.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    return rng.standard_normal(shape).astype(np.float32 if dtype is dt.bfloat16 else dtype.np_compute)


def _ids(*values):
    return np.array(values, dtype=np.int32)


def _take_cases(rng, dtype):
    x = _values(rng, dtype, (3, 4))
    return [("take", (x, _ids(0, 2, -1)), {"axis": 1}), ("take", (x, _ids(5, 0, 11)), {}),
            ("take", (x, _ids([1, 0], [2, 2])), {"axis": 0})]


def _take_along_axis_cases(rng, dtype):
    x = _values(rng, dtype, (3, 4))
    return [("take_along_axis", (x, _ids([0, 3], [1, 1], [2, -1])), {"axis": 1}),
            ("take_along_axis", (x, _ids([2, 0, 1, 1])), {"axis": 0}),
            ("take_along_axis", (x, _ids(0, 7, 11)), {"axis": None})]


def _put_along_axis_cases(rng, dtype):
    x = _values(rng, dtype, (3, 4))
    return [("put_along_axis", (x, _ids([0], [3], [1]), _values(rng, dtype, (3, 1))), {"axis": 1}),
            ("put_along_axis", (x, _ids(0, 5), _values(rng, dtype, (2,))), {"axis": None})]


def _slice_cases(rng, dtype):
    x = _values(rng, dtype, (4, 5))
    return [("slice", (x, _ids(1, 2), (0, 1), (2, 3)), {}), ("slice", (x, _ids(3), (1,), (4, 2)), {})]


def _slice_update_cases(rng, dtype):
    x = _values(rng, dtype, (4, 5))
    return [("slice_update", (x, _values(rng, dtype, (2, 3)), _ids(1, 2), (0, 1)), {}),
            ("slice_update", (x, _values(rng, dtype, (4, 1)), _ids(3), (1,)), {})]


GATHER.extra["cases"] = _take_cases
TAKE_ALONG_AXIS.extra["cases"] = _take_along_axis_cases
PUT_ALONG_AXIS.extra["cases"] = _put_along_axis_cases
DYNAMIC_SLICE.extra["cases"] = _slice_cases
DYNAMIC_SLICE_UPDATE.extra["cases"] = _slice_update_cases


# --- gradient rules -----------------------------------------------------------------------------

def _attach_gradients():
    from ._autodiff import O, linear_jvp, unbroadcast

    add_prim, prod_prim = _SCATTER_REDUCE["scatter_add"], _SCATTER_REDUCE["scatter_prod"]
    max_prim, min_prim = _SCATTER_REDUCE["scatter_max"], _SCATTER_REDUCE["scatter_min"]

    def index_error(name):
        return ValueError(f"[{name}] Cannot calculate VJP with respect to indices. "
                          "Use stop_gradient on indices to stop gradients from being computed.")

    def like(node, prim, inputs, shape, dtype=None, params=None):
        return make_node(prim, tuple(inputs), node._params if params is None else params, shape,
                         inputs[0]._dtype if dtype is None else dtype, node._stream)

    def tangent_or_zero(node, tangents, argnums, i, dtype):
        for j, t in zip(argnums, tangents):
            if j == i:
                return t
        return O.zeros(node._inputs[i]._shape, dtype)

    def gathered(node, cot, shape):
        """``cot`` read at the positions ``node`` (a scatter) wrote to."""
        arrays = node._inputs[2:]
        if not arrays:
            return make_node(STRIDED_SLICE, (cot,), {"index": node._params["index"]}, shape,
                             cot._dtype, node._stream)
        return make_node(GATHER, (cot, *arrays), node._params, shape, cot._dtype, node._stream)

    def strided_slice_vjp(node, cot, argnums):
        x = node._inputs[0]
        return [make_node(SLICE_UPDATE, (O.zeros(x._shape, cot._dtype), cot), node._params, x._shape,
                          cot._dtype, node._stream)]

    STRIDED_SLICE.vjp, STRIDED_SLICE.jvp = strided_slice_vjp, linear_jvp

    def gather_vjp(node, cot, argnums):
        if any(i > 0 for i in argnums):
            raise index_error("gather")
        x = node._inputs[0]
        zeros = O.zeros(x._shape, cot._dtype)
        return [make_node(add_prim, (zeros, cot, *node._inputs[1:]), node._params, x._shape,
                          cot._dtype, node._stream)]

    GATHER.vjp, GATHER.jvp = gather_vjp, linear_jvp

    def slice_update_vjp(node, cot, argnums):
        x, u = node._inputs
        out = []
        for i in argnums:
            if i == 0:
                out.append(like(node, SLICE_UPDATE, (cot, O.zeros(u._shape, cot._dtype)), x._shape))
            else:
                out.append(make_node(STRIDED_SLICE, (cot,), node._params, u._shape, cot._dtype,
                                     node._stream))
        return out

    def slice_update_jvp(node, tangents, argnums):
        d = tangents[0]._dtype
        tx = tangent_or_zero(node, tangents, argnums, 0, d)
        tu = tangent_or_zero(node, tangents, argnums, 1, d)
        return like(node, SLICE_UPDATE, (tx, tu), node._shape)

    SLICE_UPDATE.vjp, SLICE_UPDATE.jvp = slice_update_vjp, slice_update_jvp

    def scatter_rule(kind):
        def vjp(node, cot, argnums):
            if any(i > 1 for i in argnums):
                raise index_error("scatter")
            x, u = node._inputs[:2]
            arrays = node._inputs[2:]
            out = []
            for i in argnums:
                if i == 0:
                    if kind == "set":
                        g = like(node, node._prim, (cot, O.zeros(u._shape, cot._dtype), *arrays),
                                 x._shape)
                    elif kind == "add":
                        g = cot
                    elif kind == "prod":
                        ones = O.ones(x._shape, x._dtype)
                        g = cot * like(node, prod_prim, (ones, u, *arrays), x._shape)
                    else:
                        g = O.where(O.equal(node, x), cot, O.zeros((), cot._dtype))
                    out.append(g)
                else:
                    if kind in ("set", "add"):
                        g = gathered(node, cot, u._shape)
                    elif kind == "prod":
                        g = gathered(node, cot * node, u._shape) / u
                    else:
                        won = O.equal(gathered(node, node, u._shape), u)
                        g = O.where(won, gathered(node, cot, u._shape), O.zeros((), cot._dtype))
                    out.append(g)
            return out

        def jvp(node, tangents, argnums):
            if kind in ("max", "min"):
                tx = tangent_or_zero(node, tangents, argnums, 0, tangents[0]._dtype)
                tu = tangent_or_zero(node, tangents, argnums, 1, tangents[0]._dtype)
                x, u = node._inputs[:2]
                from_x = O.equal(node, x)
                scattered = like(node, SCATTER, (tx, tu, *node._inputs[2:]), node._shape)
                return O.where(from_x, tx, scattered)
            d = tangents[0]._dtype
            tx = tangent_or_zero(node, tangents, argnums, 0, d)
            tu = tangent_or_zero(node, tangents, argnums, 1, d)
            arrays = node._inputs[2:]
            if kind == "prod":
                x, u = node._inputs[:2]
                ones = O.ones(x._shape, x._dtype)
                factor = like(node, prod_prim, (ones, u, *arrays), x._shape)
                per_update = like(node, add_prim, (O.zeros(x._shape, d), tu / u, *arrays), x._shape)
                return tx * factor + node * per_update
            return like(node, node._prim, (tx, tu, *arrays), node._shape)

        return vjp, jvp

    SCATTER.vjp, SCATTER.jvp = scatter_rule("set")
    add_prim.vjp, add_prim.jvp = scatter_rule("add")
    prod_prim.vjp, prod_prim.jvp = scatter_rule("prod")
    max_prim.vjp, max_prim.jvp = scatter_rule("max")
    min_prim.vjp, min_prim.jvp = scatter_rule("min")

    def masked_scatter_vjp(node, cot, argnums):
        x, mask, src = node._inputs
        trailing = (1,) * (x.ndim - mask.ndim)
        full_mask = O.broadcast_to(O.reshape(mask, mask._shape + trailing), x._shape)
        out = []
        for i in argnums:
            if i == 0:
                out.append(O.where(full_mask, O.zeros((), cot._dtype), cot))
            elif i == 1:
                out.append(O.zeros_like(mask))
            else:
                flat = O.reshape(full_mask, (-1,))
                order = O.cumsum(O.astype(flat, dt.int32)) - 1
                slot = O.where(flat, order, O.full((), src.size, dt.int32))
                g = O.zeros((src.size,), cot._dtype).at[O.stop_gradient(slot)].add(O.reshape(cot, (-1,)))
                out.append(O.reshape(g, src._shape))
        return out

    def masked_scatter_jvp(node, tangents, argnums):
        d = tangents[0]._dtype
        tx = tangent_or_zero(node, tangents, argnums, 0, d)
        ts = tangent_or_zero(node, tangents, argnums, 2, d)
        return make_node(MASKED_SCATTER, (tx, node._inputs[1], ts), None, node._shape, d, node._stream)

    MASKED_SCATTER.vjp, MASKED_SCATTER.jvp = masked_scatter_vjp, masked_scatter_jvp

    def take_along_axis_vjp(node, cot, argnums):
        if any(i > 0 for i in argnums):
            raise index_error("gather_axis")
        x, idx = node._inputs
        axis, shape = node._params["axis"], node._shape
        n = x._shape[axis]
        index = []
        for d, size in enumerate(shape):
            if d == axis:
                index.append(O.broadcast_to(idx, shape))
            else:
                view = [1] * len(shape)
                view[d] = size
                index.append(O.reshape(O.arange(size, dtype=dt.int32), tuple(view)))
        full_ = shape[:axis] + (n,) + shape[axis + 1:]
        g = O.zeros(full_, cot._dtype).at[tuple(index)].add(cot)
        return [unbroadcast(g, x._shape)]

    TAKE_ALONG_AXIS.vjp, TAKE_ALONG_AXIS.jvp = take_along_axis_vjp, linear_jvp

    def put_along_axis_vjp(node, cot, argnums):
        if any(i == 1 for i in argnums):
            raise index_error("scatter_axis")
        x, idx, values = node._inputs
        out = []
        for i in argnums:
            if i == 0:
                out.append(like(node, PUT_ALONG_AXIS, (cot, idx, O.zeros(values._shape, cot._dtype)),
                                x._shape))
            else:
                out.append(make_node(TAKE_ALONG_AXIS, (cot, idx),
                                     {"axis": node._params["axis"], "shape": values._shape},
                                     values._shape, cot._dtype, node._stream))
        return out

    def put_along_axis_jvp(node, tangents, argnums):
        d = tangents[0]._dtype
        tx = tangent_or_zero(node, tangents, argnums, 0, d)
        tv = tangent_or_zero(node, tangents, argnums, 2, d)
        return like(node, PUT_ALONG_AXIS, (tx, node._inputs[1], tv), node._shape)

    PUT_ALONG_AXIS.vjp, PUT_ALONG_AXIS.jvp = put_along_axis_vjp, put_along_axis_jvp

    def dynamic_slice_vjp(node, cot, argnums):
        x, start = node._inputs
        return [make_node(DYNAMIC_SLICE_UPDATE, (O.zeros(x._shape, cot._dtype), cot, start),
                          {"axes": node._params["axes"]}, x._shape, cot._dtype, node._stream)
                if i == 0 else O.zeros_like(start) for i in argnums]

    DYNAMIC_SLICE.vjp, DYNAMIC_SLICE.jvp = dynamic_slice_vjp, linear_jvp

    def dynamic_slice_update_vjp(node, cot, argnums):
        x, u, start = node._inputs
        out = []
        for i in argnums:
            if i == 0:
                out.append(like(node, DYNAMIC_SLICE_UPDATE, (cot, O.zeros(u._shape, cot._dtype), start),
                                x._shape))
            elif i == 1:
                out.append(make_node(DYNAMIC_SLICE, (cot, start),
                                     {"axes": node._params["axes"], "sizes": u._shape}, u._shape,
                                     cot._dtype, node._stream))
            else:
                out.append(O.zeros_like(start))
        return out

    def dynamic_slice_update_jvp(node, tangents, argnums):
        d = tangents[0]._dtype
        tx = tangent_or_zero(node, tangents, argnums, 0, d)
        tu = tangent_or_zero(node, tangents, argnums, 1, d)
        return like(node, DYNAMIC_SLICE_UPDATE, (tx, tu, node._inputs[2]), node._shape)

    DYNAMIC_SLICE_UPDATE.vjp, DYNAMIC_SLICE_UPDATE.jvp = dynamic_slice_update_vjp, dynamic_slice_update_jvp


_attach_gradients()
