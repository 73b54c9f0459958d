"""Turning Python and numpy values into arrays, with MLX's dtype inference and weak scalars."""
from __future__ import annotations

import numbers

import numpy as np

from . import dtypes as dt
from .array import _NOT_OPERAND, array, coerce_operand, make_realized
from .device import current_stream
from .errors import DtypeError
from .registry import api

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# MLX keeps shape dimensions in 32-bit integers.
_DIM_MAX = 2**31 - 1


def _bad_cast():
    """What MLX raises when a Python int does not fit the C++ integer it is read into."""
    return RuntimeError("std::bad_cast")


def _invalid_type(v):
    t = type(v)  # a class defined in Python is named with its module (a heap type), a built-in type plainly
    heap = t.__flags__ & (1 << 9) and t.__module__ != "builtins"
    name = f"{t.__module__}.{t.__qualname__}" if heap else t.__name__
    return ValueError(f"Invalid type {name} received in array initialization.")


# --- nested lists -----------------------------------------------------------------------------

def _list_shape(val) -> list:
    """The shape a nested list claims through its first elements (arrays count with their shape)."""
    shape = []
    while True:
        if isinstance(val, (list, tuple)):
            shape.append(len(val))
            if not val:
                return shape
            val = val[0]
        elif isinstance(val, array):
            return shape + list(val._shape)
        else:
            return shape


def _check_and_flatten(val, shape, depth, out) -> None:
    """Validate every element against ``shape`` (MLX's messages) and collect the leaves."""
    if depth == len(shape):
        if isinstance(val, (list, tuple)):
            raise ValueError("Initialization encountered extra dimension.")
        if isinstance(val, array) and val._shape:
            raise ValueError("Initialization encountered non-uniform length.")
        out.append(val)
        return
    if isinstance(val, array):
        if list(val._shape) != shape[depth:]:
            raise ValueError("Initialization encountered non-uniform length.")
        out.append(val)
        return
    if not isinstance(val, (list, tuple)) or len(val) != shape[depth]:
        raise ValueError("Initialization encountered non-uniform length.")
    for v in val:
        _check_and_flatten(v, shape, depth + 1, out)


def _leaf_kind(v) -> str:
    if isinstance(v, bool):
        return "b"
    if isinstance(v, int):
        if not _INT64_MIN <= v <= _INT64_MAX:
            raise _bad_cast()
        return "i" if _INT32_MIN <= v <= _INT32_MAX else "l"
    if isinstance(v, float):  # numpy's float64 is a float; other numpy scalars are not accepted
        return "f"
    if isinstance(v, complex) and not isinstance(v, np.generic):
        return "c"
    raise _invalid_type(v)


_KIND_ORDER = "bilfc"
_KIND_DTYPE = {"b": dt.bool_, "i": dt.int32, "l": dt.int64, "f": dt.float32, "c": dt.complex64}


def _list_int_range(target: "dt.Dtype") -> tuple:
    """The Python ints a list may hold for ``target``: MLX reads them into a C++ integer of the
    target's width class (int for the narrow types, then a wrapping cast)."""
    if target is dt.int64 or target.kind in "fc":
        return _INT64_MIN, _INT64_MAX
    if target is dt.uint64:
        return 0, _INT64_MAX
    if target is dt.uint32:
        return 0, 2**32 - 1
    return _INT32_MIN, _INT32_MAX


def _from_scalar_list(val, leaves, shape, dtype) -> array:
    kind = "b"
    for v in leaves:
        k = _leaf_kind(v)
        if _KIND_ORDER.index(k) > _KIND_ORDER.index(kind):
            kind = k
    inferred = _KIND_DTYPE[kind] if leaves else dt.float32
    target = dtype or inferred
    if kind in "il":
        lo, hi = _list_int_range(target)
        if any(not lo <= v <= hi for v in leaves):
            raise _bad_cast()
        values = np.array(leaves, dtype=np.int64)
    else:
        values = np.array(leaves, dtype={"b": np.bool_, "f": np.float64, "c": np.complex128}[kind])
    values = values.reshape(shape)
    return make_realized(_owned(dt.to_storage(values, target)), target, current_stream())


def _from_mixed_list(val, dtype) -> array:
    """Lists holding arrays stay in the graph: the pieces are stacked (MLX differentiates through)."""
    from .ops.shape import stack

    arrays: list = []
    scalars: list = []

    def collect(v):
        if isinstance(v, array):
            arrays.append(v)
        elif isinstance(v, (list, tuple)):
            for x in v:
                collect(x)
        else:
            scalars.append(v)

    collect(val)
    target = dtype
    if target is None:
        target = arrays[0]._dtype
        for a in arrays[1:]:
            target = dt.promote_types(target, a._dtype)
        if scalars:
            kind = max((_leaf_kind(v) for v in scalars), key=_KIND_ORDER.index)
            target = dt.promote_types(target, _KIND_DTYPE[kind])

    def build(v):
        if isinstance(v, array):
            return v if v._dtype is target else _astype(v, target)
        if isinstance(v, (list, tuple)):
            return stack([build(x) for x in v])
        return realized_from_value(v, target)

    return build(val)


# --- scalars and buffers --------------------------------------------------------------------

def scalar_dtype(v) -> "dt.Dtype":
    """The dtype ``mx.array(v)`` gives a Python or numpy scalar."""
    if isinstance(v, np.generic):
        return dt.from_numpy(v.dtype)
    if isinstance(v, bool):
        return dt.bool_
    if isinstance(v, int):
        return dt.int32 if _INT32_MIN <= v <= _INT32_MAX else dt.int64
    if isinstance(v, float):
        return dt.float32
    if isinstance(v, complex):
        return dt.complex64
    raise _invalid_type(v)


def _scalar_storage(v, target: "dt.Dtype") -> np.ndarray:
    """A Python scalar as 0-d storage of ``target``, with C casts (ints wrap, floats truncate)."""
    if isinstance(v, int) and not isinstance(v, bool):
        if not _INT64_MIN <= v <= _INT64_MAX:
            raise _bad_cast()
        return dt.to_storage(np.array(v, dtype=np.int64), target)
    return dt.to_storage(np.asarray(v), target)


def _owned(out: np.ndarray) -> np.ndarray:
    if not out.flags.owndata or not out.flags.c_contiguous or not out.flags.writeable:
        out = np.array(out, order="C", copy=True)
    return out


def numpy_to_storage(values: np.ndarray, dtype: "dt.Dtype") -> np.ndarray:
    """Values (any numpy dtype) to a fresh, owned storage buffer of ``dtype``, refusing integer
    values the dtype cannot hold (MLX's check on scalars it converts for an op)."""
    if dtype.kind in "iu" and values.dtype.kind in "iu" and values.size:
        info = np.iinfo(dtype.np_storage)
        lo, hi = values.min(), values.max()
        if lo < info.min or hi > info.max:
            bad = lo if lo < info.min else hi
            raise ValueError(f"Converting {int(bad)} to {dtype.name} would result in overflow.")
    out = dt.to_storage(values, dtype)
    return _owned(out) if out is not values else np.array(out, order="C", copy=True)


def _check_dims(shape) -> None:
    for d in shape:
        if d > _DIM_MAX:
            raise OverflowError(
                f"Shape dimension {d} is outside the supported range [-2147483648, 2147483647]. "
                "MLX currently uses 32-bit integers for shape dimensions.")


def _from_numpy(np_val: np.ndarray, dtype) -> array:
    if np_val.dtype == object:
        raise ValueError("Cannot convert an object array to an mlx array.")
    _check_dims(np_val.shape)
    target = dtype or dt.from_numpy(np_val.dtype)
    out = dt.to_storage(np_val, target)
    return make_realized(np.array(out, order="C", copy=True) if out is np_val else _owned(out),
                         target, current_stream())


def _astype(a, dtype):
    from .ops.elementwise import astype

    return astype(a, dtype)


def realized_from_value(val, dtype=None) -> array:
    """``mx.array(val, dtype)``: lists, scalars, numpy arrays, buffers and other arrays."""
    if dtype is not None:
        dtype = dt.as_dtype(dtype)
    if isinstance(val, array):
        if dtype is None or dtype is val._dtype:
            from .ops.elementwise import copy as _copy  # a new array that shares nothing mutable

            return _copy(val)
        return _astype(val, dtype)
    if isinstance(val, (list, tuple)):
        shape = _list_shape(val)
        leaves: list = []
        _check_and_flatten(val, shape, 0, leaves)
        if any(isinstance(v, array) for v in leaves):
            return _from_mixed_list(val, dtype)
        return _from_scalar_list(val, leaves, shape, dtype)
    if isinstance(val, np.generic) and not isinstance(val, float):
        return _from_numpy(np.asarray(val), dtype)
    if isinstance(val, (bool, int, float, complex)):
        target = dtype or scalar_dtype(val)
        return make_realized(_owned(_scalar_storage(val, target)), target, current_stream())
    if isinstance(val, np.ndarray):
        return _from_numpy(val, dtype)
    if hasattr(val, "__dlpack__") and hasattr(val, "__dlpack_device__"):
        return _from_numpy(np.from_dlpack(val), dtype)
    to_mlx = getattr(type(val), "__mlx_array__", None)
    if to_mlx is not None:
        return realized_from_value(to_mlx(val), dtype)
    if hasattr(val, "__array__") or hasattr(val, "__array_interface__"):
        return _from_numpy(np.asarray(val), dtype)
    try:
        mv = memoryview(val)
    except TypeError:
        raise _invalid_type(val) from None
    return _from_numpy(np.asarray(mv), dtype)


def _is_dlpack(v) -> bool:
    return hasattr(v, "__dlpack__") and hasattr(v, "__dlpack_device__")


@api()
def from_dlpack(x, /, *, copy=None) -> array:
    """An array from any object that supports DLPack. Buffers are always copied into memory the
    graph owns, so ``copy=False`` is refused, as MLX's CPU build refuses it."""
    if not _is_dlpack(x):
        raise TypeError(f"from_dlpack(): incompatible function arguments: expected an object "
                        f"implementing __dlpack__ and __dlpack_device__, got {type(x).__name__}.")
    if copy is False:
        raise ValueError("[convert] Cannot import a CPU array without a copy.")
    return _from_numpy(np.from_dlpack(x), None)


@api()
def asarray(a, dtype=None, *, copy=None) -> array:
    """``a`` as an array (MLX's array API ``asarray``); ``copy=False`` is refused wherever sharing
    the input's memory is impossible, which here is always."""
    if copy is False:
        if not isinstance(a, array) and _is_dlpack(a):
            if dtype is not None and dt.as_dtype(dtype) is not dt.from_numpy(np.from_dlpack(a).dtype):
                raise ValueError("[convert] Cannot convert array to the requested dtype without a copy.")
            raise ValueError("[convert] Cannot import a CPU array without a copy.")
        raise ValueError("Unable to avoid copy while creating an array as requested.")
    return array(a, dtype)


def to_array(v, dtype=None) -> array:
    """An op's array argument: arrays pass through, anything else becomes a realized array."""
    if isinstance(v, array):
        return v
    try:
        return realized_from_value(v, dtype)
    except ValueError:
        value = coerce_operand(v)  # a number type Python makes a complex of (``__mlx_array__`` took above)
        if value is _NOT_OPERAND:
            if v is None:
                raise _none_argument() from None
            raise
        return realized_from_value(value, dtype)


_SCALAR_CACHE: dict = {}


def weak_scalar(v, like: "dt.Dtype") -> array:
    """A Python scalar beside an array of dtype ``like`` takes that dtype where MLX says it does:
    bools and ints take it (ints become int32 beside bool, and must fit a narrow integer type),
    floats take a floating one, complex is complex64.

    Scalar arrays are immutable inputs of the nodes that use them, so the common ones (``x * 0.5``)
    are made once and shared. Zero is not cached: 0.0 and -0.0 compare equal as keys.
    """
    key = (type(v), v, like.index)
    hit = _SCALAR_CACHE.get(key)
    if hit is not None:
        return hit
    if isinstance(v, bool):
        d = like
    elif isinstance(v, int):
        if not _INT64_MIN <= v <= _INT64_MAX:
            raise _bad_cast()
        d = dt.int32 if like is dt.bool_ else like
        if like.kind in "iu" and like.size < 8:
            info = np.iinfo(like.np_storage)
            if not info.min <= v <= info.max:
                raise ValueError(f"Converting {v} to {like.name} would result in overflow.")
    elif isinstance(v, float):
        d = like if like.kind in "fc" else dt.float32
    else:
        d = dt.complex64
    out = make_realized(_owned(_scalar_storage(v, d)), d, current_stream())
    if v and v == v and len(_SCALAR_CACHE) < 4096:
        _SCALAR_CACHE[key] = out
    return out


def beside(v, like: "dt.Dtype") -> array:
    """An op argument next to an array: Python scalars are weak, numpy data takes the array's
    dtype (C casts); anything else is not an array value."""
    if isinstance(v, (bool, int, float)) or (isinstance(v, complex) and not isinstance(v, np.generic)):
        return weak_scalar(v, like)
    if isinstance(v, (np.ndarray, np.generic)):
        return _from_numpy(np.asarray(v), like)
    return operand(v)


def _none_argument():
    # no overload of an MLX op takes None for an array
    return TypeError("incompatible function arguments: an array argument must be a scalar or an array-like, "
                     "not None.")


def operand(v) -> array:
    """An op's array argument where MLX takes a scalar or an array, never a list."""
    if v is None:
        raise _none_argument()
    if isinstance(v, (list, tuple, str)):
        raise _invalid_type(v)
    return to_array(v)


def operands(a, b):
    """Two op arguments as arrays, following MLX: a Python scalar is weak beside an array, and
    numpy data beside an array takes its dtype."""
    a_arr = isinstance(a, array)
    b_arr = isinstance(b, array)
    if a_arr and b_arr:
        return a, b
    if a_arr:
        return a, beside(b, a._dtype)
    if b_arr:
        return beside(a, b._dtype), b
    return operand(a), operand(b)


def check_number(v, name="value"):
    if not isinstance(v, numbers.Number):
        raise DtypeError(f"{name} must be a number, got {type(v).__name__}.")
