"""Scans: the ``scan`` primitives (cumsum, cumprod, cummax, cummin, logcumsumexp) and their public ops.

Each primitive records ``{"axis": int, "reverse": bool, "inclusive": bool}``. An exclusive scan
starts from the operation's identity (0, 1, the dtype's lowest/highest value, -inf), as MLX's does.
"""
from __future__ import annotations

import operator

import numpy as np

from ._base import Primitive, api, cast, dt, make_node, register, resolve_stream
from .elementwise import astype
from .reduction import _random_values, check_array, incompatible

_ALL = tuple(dt.ALL)


def _lowest(dtype: np.dtype):
    if dtype == np.bool_:
        return False
    if dtype.kind in "iu":
        return np.iinfo(dtype).min
    if dtype.kind == "c":
        return complex(-np.inf, -np.inf)
    return -np.inf


def _highest(dtype: np.dtype):
    if dtype == np.bool_:
        return True
    if dtype.kind in "iu":
        return np.iinfo(dtype).max
    if dtype.kind == "c":
        return complex(np.inf, np.inf)
    return np.inf


def _logaddexp_accumulate(x, axis):
    if x.dtype.kind != "c":
        return np.logaddexp.accumulate(x, axis=axis)
    out = np.empty_like(x)
    src = np.moveaxis(x, axis, 0)
    dst = np.moveaxis(out, axis, 0)
    if src.shape[0]:
        acc = src[0]
        dst[0] = acc
        for i in range(1, src.shape[0]):
            v = src[i]
            peak = np.where(acc.real > v.real, acc, v)
            acc = peak + np.log(np.exp(acc - peak) + np.exp(v - peak))
            dst[i] = acc
    return out


_SCANS = {
    # name: (accumulate(x, axis), identity(numpy dtype) of an exclusive scan)
    "cumsum": (lambda x, ax: np.add.accumulate(x, axis=ax), lambda d: 0),
    "cumprod": (lambda x, ax: np.multiply.accumulate(x, axis=ax), lambda d: 1),
    "cummax": (lambda x, ax: np.maximum.accumulate(x, axis=ax), _lowest),
    "cummin": (lambda x, ax: np.minimum.accumulate(x, axis=ax), _highest),
    "logcumsumexp": (_logaddexp_accumulate, lambda d: complex(-np.inf, 0) if d.kind == "c" else -np.inf),
}


def _scan_ref(accumulate, identity):
    def ref(p, x):
        ax, reverse = p["axis"], p["reverse"]
        if reverse:
            x = np.flip(x, ax)
        out = accumulate(x, ax)
        if not p["inclusive"]:
            shifted = np.empty_like(out)
            head = [slice(None)] * out.ndim
            head[ax] = slice(0, 1)
            rest = list(head)
            rest[ax] = slice(1, None)
            body = list(head)
            body[ax] = slice(0, -1)
            shifted[tuple(head)] = identity(out.dtype)
            shifted[tuple(rest)] = out[tuple(body)]
            out = shifted
        return np.flip(out, ax) if reverse else out
    return ref


def _scan_cases(name):
    def cases(rng, dtype):
        x = _random_values(rng, dtype, (3, 5))
        return [(name, (x,), {}), (name, (x,), {"axis": 1}),
                (name, (x,), {"axis": 0, "reverse": True}),
                (name, (x,), {"axis": -1, "inclusive": False}),
                (name, (x,), {"axis": 1, "reverse": True, "inclusive": False})]
    return cases


_PRIMS = {name: register(Primitive(name, "scan", _scan_ref(acc, ident),
                                   doc=f"{name} along one axis.",
                                   extra={"cases": _scan_cases(name)}))
          for name, (acc, ident) in _SCANS.items()}


_SCAN_ARGS = "axis: int | None = None, *, reverse: bool = False, inclusive: bool = True"
SIGNATURES = {
    **{n: f"{n}(a: array, /, {_SCAN_ARGS}, dtype: Dtype | None = None, stream: StreamOrDevice = None) "
          "-> array" for n in ("cumsum", "cumprod")},
    **{n: f"{n}(a: array, /, {_SCAN_ARGS}, stream: StreamOrDevice = None) -> array"
       for n in ("cummax", "cummin", "logcumsumexp")},
}


def _scan(name, a, axis, reverse, inclusive, stream):
    if axis is None:
        from .shape import reshape

        a = reshape(a, (-1,), stream=stream)
        axis = 0
    else:
        if isinstance(axis, (float, complex, str, list, tuple)) or not hasattr(axis, "__index__"):
            raise incompatible(name, SIGNATURES[name], a, axis)
        axis = int(operator.index(axis))
    ndim = a.ndim
    if axis < -ndim or axis >= ndim:
        raise IndexError(f"[{name}] Axis {axis} is out of bounds for array with {ndim} dimensions.")
    params = {"axis": axis % ndim, "reverse": bool(reverse), "inclusive": bool(inclusive)}
    return make_node(_PRIMS[name], (a,), params, a._shape, a._dtype, resolve_stream(stream))


@api(primitive="cumsum")
def cumsum(a, /, axis=None, *, reverse=False, inclusive=True, dtype=None, stream=None):
    """Cumulative sum along ``axis`` (the flattened array when None); bool sums as int32."""
    check_array(a, "cumsum", SIGNATURES["cumsum"])
    if dtype is not None:
        a = astype(a, dtype, stream=stream)
    if a._dtype is dt.bool_:
        a = cast(a, dt.int32, stream)
    return _scan("cumsum", a, axis, reverse, inclusive, stream)


@api(primitive="cumprod")
def cumprod(a, /, axis=None, *, reverse=False, inclusive=True, dtype=None, stream=None):
    """Cumulative product along ``axis`` (the flattened array when None)."""
    check_array(a, "cumprod", SIGNATURES["cumprod"])
    if dtype is not None:
        a = astype(a, dtype, stream=stream)
    return _scan("cumprod", a, axis, reverse, inclusive, stream)


@api(primitive="cummax")
def cummax(a, /, axis=None, *, reverse=False, inclusive=True, stream=None):
    """Cumulative maximum along ``axis``; a NaN propagates to everything after it."""
    return _scan("cummax", check_array(a, "cummax", SIGNATURES["cummax"]), axis, reverse, inclusive, stream)


@api(primitive="cummin")
def cummin(a, /, axis=None, *, reverse=False, inclusive=True, stream=None):
    """Cumulative minimum along ``axis``; a NaN propagates to everything after it."""
    return _scan("cummin", check_array(a, "cummin", SIGNATURES["cummin"]), axis, reverse, inclusive, stream)


@api(primitive="logcumsumexp")
def logcumsumexp(a, /, axis=None, *, reverse=False, inclusive=True, stream=None):
    """Cumulative log-sum-exp along ``axis``; integers and bool compute in float32."""
    check_array(a, "logcumsumexp", SIGNATURES["logcumsumexp"])
    if a._dtype.kind in "biu":
        a = cast(a, dt.float32, stream)
    return _scan("logcumsumexp", a, axis, reverse, inclusive, stream)
