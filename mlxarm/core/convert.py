"""Turning Python and numpy values into arrays, with MLX's dtype inference and weak scalars."""
from __future__ import annotations

import numbers

import numpy as np

from . import dtypes as dt
from .array import array, make_realized
from .device import current_stream
from .errors import DtypeError

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def _infer_list_dtype(flat) -> "dt.Dtype":
    if not flat:
        return dt.float32  # MLX: an empty list is float32
    kind = "b"
    big = False
    for v in flat:
        if isinstance(v, (bool, np.bool_)):
            continue
        if isinstance(v, (int, np.integer)):
            if kind == "b":
                kind = "i"
            if not (_INT32_MIN <= int(v) <= _INT32_MAX):
                big = True
        elif isinstance(v, (float, np.floating)):
            if kind in "bi":
                kind = "f"
        elif isinstance(v, (complex, np.complexfloating)):
            kind = "c"
        else:
            raise ValueError(f"Invalid type {type(v).__name__} received in array initialization.")
    return {"b": dt.bool_, "i": dt.int64 if big else dt.int32, "f": dt.float32, "c": dt.complex64}[kind]


def _flatten_nested(val, out):
    if isinstance(val, (list, tuple)):
        for v in val:
            _flatten_nested(v, out)
    else:
        out.append(val)


def _has_arrays(val) -> bool:
    if isinstance(val, array):
        return True
    if isinstance(val, (list, tuple)):
        return any(_has_arrays(v) for v in val)
    return False


def _arrays_to_numpy(val):
    if isinstance(val, array):
        return val._numpy()
    if isinstance(val, (list, tuple)):
        return [_arrays_to_numpy(v) for v in val]
    return val


def scalar_dtype(v) -> "dt.Dtype":
    if isinstance(v, (bool, np.bool_)):
        return dt.bool_
    if isinstance(v, (int, np.integer)):
        if isinstance(v, np.integer):
            return dt.from_numpy(np.asarray(v).dtype)
        return dt.int32 if _INT32_MIN <= v <= _INT32_MAX else dt.int64
    if isinstance(v, (float, np.floating)):
        if isinstance(v, np.floating) and not isinstance(v, float):
            return dt.from_numpy(np.asarray(v).dtype)
        return dt.float32
    if isinstance(v, (complex, np.complexfloating)):
        return dt.complex64
    raise ValueError(f"Invalid type {type(v).__name__} received in array initialization.")


def numpy_to_storage(values: np.ndarray, dtype: "dt.Dtype") -> np.ndarray:
    """Values (any numpy dtype) to a fresh, owned storage buffer of ``dtype``."""
    if dtype.kind in "iu" and values.dtype.kind in "iu" and values.size:
        info = np.iinfo(dtype.np_storage)
        lo, hi = values.min(), values.max()
        if lo < info.min or hi > info.max:
            bad = lo if lo < info.min else hi
            raise ValueError(f"Converting {int(bad)} to {dtype.name} would result in overflow.")
    out = dt.to_storage(values, dtype)
    if out is values or not out.flags.owndata or not out.flags.c_contiguous:
        out = np.array(out, order="C", copy=True)
    return out


def realized_from_value(val, dtype=None) -> array:
    """``mx.array(val, dtype)``: lists, scalars, numpy arrays, buffers and other arrays."""
    stream = current_stream()
    if dtype is not None:
        dtype = dt.as_dtype(dtype)
    if isinstance(val, array):
        if dtype is None or dtype is val._dtype:
            from .ops.elementwise import copy as _copy  # a new array that shares nothing mutable

            return _copy(val)
        from .ops.elementwise import astype

        return astype(val, dtype)
    if isinstance(val, (list, tuple)):
        if _has_arrays(val):
            val = _arrays_to_numpy(val)
            np_val = np.asarray(val)
            inferred = dt.from_numpy(np_val.dtype) if np_val.dtype != np.float64 else dt.float32
        else:
            flat: list = []
            _flatten_nested(val, flat)
            inferred = _infer_list_dtype(flat)
            try:
                np_val = np.asarray(val, dtype=inferred.np_compute if inferred is not dt.bfloat16 else np.float32)
            except ValueError as e:
                raise ValueError(f"Initialization encountered non-uniform length: {e}") from None
            if inferred.kind == "c":
                np_val = np.asarray(val, dtype=np.complex64)
        target = dtype or inferred
        return make_realized(numpy_to_storage(np_val, target), target, stream)
    if isinstance(val, (bool, int, float, complex, np.generic)):
        inferred = scalar_dtype(val)
        target = dtype or inferred
        np_val = np.asarray(val)
        return make_realized(numpy_to_storage(np_val, target), target, stream)
    if isinstance(val, np.ndarray) or hasattr(val, "__array__") or hasattr(val, "__array_interface__"):
        np_val = np.asarray(val)
        if np_val.dtype == object:
            raise ValueError("Cannot convert an object array to an mlx array.")
        target = dtype or dt.from_numpy(np_val.dtype)
        if dtype is None and np_val.dtype.kind in "iu":
            out = np.array(np_val, dtype=target.np_storage, order="C", copy=True)
            return make_realized(out, target, stream)
        return make_realized(numpy_to_storage(np_val, target), target, stream)
    try:
        mv = memoryview(val)
    except TypeError:
        raise ValueError(f"Cannot convert {type(val).__name__} to an mlx array.") from None
    return realized_from_value(np.asarray(mv), dtype)


def to_array(v, dtype=None) -> array:
    """An op's array argument: arrays pass through, anything else becomes a realized array."""
    if isinstance(v, array):
        return v
    return realized_from_value(v, dtype)


_SCALAR_CACHE: dict = {}


def weak_scalar(v, like: "dt.Dtype") -> array:
    """A Python scalar beside an array of dtype ``like`` takes that dtype where MLX says it does.

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
        d = dt.int32 if like is dt.bool_ else like
    elif isinstance(v, float):
        d = like if like.kind in "fc" else dt.float32
    elif isinstance(v, complex):
        d = dt.complex64
    else:
        return to_array(v)
    out = make_realized(numpy_to_storage(np.asarray(v), d), d, current_stream())
    if v and v == v and len(_SCALAR_CACHE) < 4096:
        _SCALAR_CACHE[key] = out
    return out


def _is_py_scalar(v) -> bool:
    return isinstance(v, (bool, int, float, complex)) and not isinstance(v, np.generic)


def operands(a, b):
    """Two op arguments as arrays, following MLX: a Python scalar is weak beside an array."""
    a_arr = isinstance(a, array)
    b_arr = isinstance(b, array)
    if a_arr and b_arr:
        return a, b
    if a_arr:
        return a, (weak_scalar(b, a._dtype) if _is_py_scalar(b) else to_array(b))
    if b_arr:
        return (weak_scalar(a, b._dtype) if _is_py_scalar(a) else to_array(a)), b
    return to_array(a), to_array(b)


def check_number(v, name="value"):
    if not isinstance(v, numbers.Number):
        raise DtypeError(f"{name} must be a number, got {type(v).__name__}.")
