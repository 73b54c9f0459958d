"""Array creation: constant fills, ranges, identity-like and triangular matrices, meshgrid.

Constant fills are lazy ``full`` nodes over a (usually scalar) value; ranges, ``eye`` and ``tri`` are
input-less nodes whose parameters say everything, so nothing is allocated before evaluation.
"""
from __future__ import annotations

import math

import numpy as np

from ._base import (DtypeError, Primitive, api, array, cast, dt, fmt_shape, make_node, register, resolve_stream,
                    to_array)
from ..array import make_realized
from ..convert import realized_from_value
from ..device import current_stream
from .shape import shape_arg

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def scalar_array(v, dtype=None) -> array:
    """A fill value as an array, typed the way MLX types a scalar that has a requested dtype:
    ints and bools take it (bool becomes int32 for ints), floats only a floating one."""
    if isinstance(v, array):
        return v
    if isinstance(v, (bool, np.bool_)):
        return realized_from_value(bool(v), dtype or dt.bool_)
    if isinstance(v, (int, np.integer)):
        v = int(v)
        out = dtype or (dt.int32 if _INT32_MIN <= v <= _INT32_MAX else dt.int64)
        if out.kind in "iu" and out.size < 8:
            info = np.iinfo(out.np_storage)
            if not info.min <= v <= info.max:
                raise ValueError(f"Converting {v} to {out.name} would result in overflow.")
        if out is dt.bool_:
            out = dt.int32
        if out.kind in "iu":
            return realized_from_value(np.array(v, dtype=np.int64 if v < 0 else np.uint64)
                                       .astype(out.np_storage), out)
        return realized_from_value(v, out)
    if isinstance(v, (float, np.floating)):
        return realized_from_value(float(v), dtype if dtype is not None and dtype.kind == "f"
                                   else dt.float32)
    if isinstance(v, (complex, np.complexfloating)):
        return realized_from_value(complex(v), dt.complex64)
    if isinstance(v, np.ndarray):
        return to_array(v)
    raise ValueError(f"Invalid type {type(v).__name__} received in array initialization.")


def _shape(shape, op: str = "full") -> tuple:
    shape = shape_arg(shape, op)
    if any(s < 0 for s in shape):
        raise ValueError(f"[{op}] Negative dimensions not allowed.")
    return shape


def _constant(v: int, dtype) -> array:
    """A realized scalar 0 or 1 of ``dtype`` (exact in every dtype, so no conversion checks)."""
    return make_realized(dt.to_storage(np.array(v, dtype=np.float32 if dtype is dt.bfloat16
                                                 else dtype.np_storage), dtype), dtype,
                         current_stream())


def _dtype(dtype, default):
    return default if dtype is None else dt.as_dtype(dtype)


def _need_array(a, op: str) -> array:
    if not isinstance(a, array):
        raise DtypeError(f"{op}(): incompatible function arguments: expected an array, got "
                        f"{type(a).__name__}.")
    return a


# --- constant fills ------------------------------------------------------------------------------------

def _full_ref(p, v, like=None):  # ``like``: the array a shapeless trace's ``full_like`` takes its shape from
    return np.broadcast_to(v, p["shape"]).copy()


def _full_cases(rng, dtype):
    from .shape import _case_values

    v = _case_values(rng, dtype, (3,))
    cases = [("full", ((2, 3), v), {}), ("full", ((4, 1, 3), v[:1]), {}),
             ("zeros_like", (v,), {}), ("ones_like", (v,), {}), ("full_like", (v, v[:1]), {})]
    return cases


FULL = register(Primitive("full", "movement", _full_ref, compute=False,
                          doc="An array of a shape filled from a broadcast value.",
                          extra={"cases": _full_cases}))


def _filled(shape: tuple, vals: array, stream, like: array | None = None) -> array:
    vs = vals._shape
    if len(vs) > len(shape):
        raise ValueError(f"Cannot broadcast array of shape {fmt_shape(vs)} into shape "
                         f"{fmt_shape(shape)}.")
    for s, t in zip(vs[::-1], shape[::-1]):
        if s != t and s != 1:
            raise ValueError(f"[broadcast_shapes] Shapes {fmt_shape(vs)} and {fmt_shape(shape)} "
                             "cannot be broadcast.")
    return make_node(FULL, (vals,) if like is None else (vals, like), {"shape": shape}, shape, vals._dtype,
                     resolve_stream(stream))


@api(primitive="full")
def full(shape, vals, dtype=None, *, stream=None):
    shape = _shape(shape)
    dtype = None if dtype is None else dt.as_dtype(dtype)
    return _filled(shape, scalar_array(vals, dtype), stream)


@api(primitive="full")
def zeros(shape, dtype=dt.float32, *, stream=None):
    dtype = _dtype(dtype, dt.float32)
    return _filled(_shape(shape), _constant(0, dtype), stream)


@api(primitive="full")
def ones(shape, dtype=dt.float32, *, stream=None):
    dtype = _dtype(dtype, dt.float32)
    return _filled(_shape(shape), _constant(1, dtype), stream)


@api(primitive="full")
def full_like(a, vals, dtype=None, *, stream=None):
    from ._base import broadcast_shapes

    a = _need_array(a, "full_like")
    dtype = _dtype(dtype, a._dtype)
    vals = scalar_array(vals, dtype)
    shape = broadcast_shapes(a._shape, vals._shape)
    from ..graph import shapeless_tracing

    # in a shapeless compiled function the fill reads ``a``, so a replay takes the shape of its ``a``
    return _filled(shape, cast(vals, dtype, stream), stream, a if shapeless_tracing() else None)


@api(primitive="full")
def zeros_like(a, /, dtype=None, *, stream=None):
    a = _need_array(a, "zeros_like")
    return full_like(a, 0, dtype, stream=stream)


@api(primitive="full")
def ones_like(a, /, dtype=None, *, stream=None):
    a = _need_array(a, "ones_like")
    return full_like(a, 1, dtype, stream=stream)


# MLX's empty and empty_like are its zeros and zeros_like.
api(name="empty", primitive="full")(zeros)
api(name="empty_like", primitive="full")(zeros_like)


# --- ranges ----------------------------------------------------------------------------------------------

def _arange_ref(p):
    d, n, start, step = p["dtype"], p["n"], p["start"], p["step"]
    if d.kind in "iu":
        # MLX steps by T(start + step) - T(start) in the output type, wrapping like C integers
        # (C truncates the doubles toward zero; uint64 arithmetic wraps mod 2**64).
        s0 = int(start)
        inc = int(start + step) - s0
        i = np.arange(n, dtype=np.uint64)
        return (np.uint64(s0 % 2**64) + i * np.uint64(inc % 2**64)).astype(d.np_storage)
    if d is dt.bfloat16:
        cur = dt.f32_to_bf16(np.float32(start))
        nxt = dt.f32_to_bf16(np.float32(start + step))
        inc = dt.bf16_to_f32(nxt) - dt.bf16_to_f32(cur)
        out = np.empty(n, np.uint16)
        for i in range(n):
            out[i] = cur
            cur = dt.f32_to_bf16(dt.bf16_to_f32(cur) + inc)
        return out
    t = d.np_storage.type
    s0, s1 = t(start), t(start + step)
    seq = np.full(n, s1 - s0, dtype=d.np_storage)
    if n:
        seq[0] = s0
    return np.add.accumulate(seq, dtype=d.np_storage) if n else seq


def _arange_cases(rng, dtype):
    if dtype is dt.bool_:
        return []
    return [("arange", (7,), {"dtype": dtype}), ("arange", (1, 9, 2), {"dtype": dtype}),
            ("arange", (10, 0, -3), {"dtype": dtype})]


ARANGE = register(Primitive("arange", "creation", _arange_ref, compute=False,
                            dtypes=tuple(d for d in dt.ALL if d is not dt.bool_),
                            doc="Evenly spaced values in [start, stop).",
                            extra={"cases": _arange_cases}))


def _scalar_dtype(v):
    """The dtype MLX infers for an arange bound, or None when ``v`` is not a number."""
    if isinstance(v, (bool, np.bool_)):
        return dt.bool_
    if isinstance(v, (int, np.integer)):
        return dt.int32 if _INT32_MIN <= int(v) <= _INT32_MAX else dt.int64
    if isinstance(v, (float, np.floating)):
        return dt.float32
    return None


# MLX's two overloads: arange(start, stop, step=None, dtype=None) and arange(stop, step=None,
# dtype=None); stop may be None only in the first, which then counts from 0 to start.
_ARANGE_OVERLOADS = ((("start", "stop", "step", "dtype"), 2), (("stop", "step", "dtype"), 1))
_ARANGE_USAGE = (
    "arange(): incompatible function arguments. The following argument types are supported:\n"
    "    1. arange(start : int | float, stop : None | int | float, step : None | int | float, "
    "dtype: Dtype | None = None, *, stream: StreamOrDevice = None) -> array\n"
    "    2. arange(stop : int | float, step : None | int | float = None, dtype: Dtype | None = "
    "None, *, stream: StreamOrDevice = None) -> array\n")


def _arange_bind(args, kwargs):
    """(start, stop, step, dtype) from the first overload the arguments fit (start None: from 0)."""
    for names, required in _ARANGE_OVERLOADS:
        if len(args) > len(names) or any(k not in names for k in kwargs):
            continue
        bound = dict(zip(names, args))
        if any(k in bound for k in kwargs):
            continue
        bound.update(kwargs)
        if any(n not in bound for n in names[:required]):
            continue
        first = bound.get("start", bound["stop"])
        if _scalar_dtype(first) is None or any(
                bound.get(n) is not None and _scalar_dtype(bound[n]) is None for n in ("stop", "step")):
            continue
        d = bound.get("dtype")
        if d is not None and not isinstance(d, dt.Dtype):
            continue
        if "start" in bound and bound["stop"] is not None:
            return bound["start"], bound["stop"], bound.get("step"), d
        return None, first, bound.get("step"), d
    raise TypeError(_ARANGE_USAGE + f"\nInvoked with types: {', '.join(type(a).__name__ for a in args)}"
                    + (f"{', ' if args else ''}kwargs = {{ "
                       + ", ".join(f"{k}: {type(v).__name__}" for k, v in kwargs.items()) + " }"
                       if kwargs else ""))


@api(primitive="arange")
def arange(*args, stream=None, **kwargs):
    start, stop, step, dtype = _arange_bind(args, kwargs)
    kinds = [v for v in (start, stop, step) if v is not None]
    inferred = [_scalar_dtype(v) for v in kinds]
    if dtype is None:
        dtype = inferred[-1]
        for d in inferred[-2::-1]:
            dtype = dt.promote_types(d, dtype)
    else:
        dtype = dt.as_dtype(dtype)
    if dtype is dt.bool_:
        raise ValueError("bool not supported for arange.")
    start, stop = float(start or 0), float(stop)
    step = 1.0 if step is None else float(step)
    if math.isnan(start) or math.isnan(stop) or math.isnan(step) or math.isinf(start) \
            or math.isinf(stop):
        raise ValueError("[arange] Cannot compute length.")
    if step == 0:
        raise ValueError("[arange] step must be nonzero.")
    if math.isinf(step):
        n = 1 if (step > 0 and start < stop) or (step < 0 and start > stop) else 0
    else:
        real = math.ceil((stop - start) / step)
        if real > _INT32_MAX:
            raise ValueError("[arange] Maximum size exceeded.")
        n = max(int(real), 0)
    params = {"start": start, "step": step, "n": n, "dtype": dtype}
    return make_node(ARANGE, (), params, (n,), dtype, resolve_stream(stream))


@api()
def linspace(start, stop, num: int = 50, endpoint: bool = True, dtype=dt.float32, stream=None):
    from .elementwise import add, divide, multiply, subtract

    dtype = _dtype(dtype, dt.float32)
    num = int(num)
    if num < 0:
        raise ValueError(f"[linspace] number of samples, {num}, must be non-negative.")
    if num == 1:
        return cast(realized_from_value([float(start)], dt.float32), dtype, stream)
    inner = dt.float64 if dtype is dt.float64 else dt.float32
    # MLX's formula (t spaced in [0, 1], then (1 - t) * start + t * stop), for its rounding.
    t = divide(arange(0, num, dtype=inner, stream=stream),
               realized_from_value(num - 1 if endpoint else num, inner), stream=stream)
    t_bar = subtract(realized_from_value(1, inner), t, stream=stream)
    out = add(multiply(t_bar, realized_from_value(float(start), inner), stream=stream),
              multiply(t, realized_from_value(float(stop), inner), stream=stream), stream=stream)
    return cast(out, dtype, stream)


# --- windows ------------------------------------------------------------------------------------------------

def _window_ref(p):
    m = p["m"]
    if m == 1:
        return np.ones(1, np.float32)
    # numpy's float64 formulas, rounded once to float32.
    return getattr(np, p["window"])(m).astype(np.float32)


def _window_cases(rng, dtype):
    if dtype is not dt.float32:
        return []
    return [(name, (m,), {}) for name in _WINDOWS for m in (0, 1, 2, 7, 16)]


WINDOW = register(Primitive("window", "creation", _window_ref, compute=False, dtypes=(dt.float32,),
                            doc="A tapering window (Hanning, Hamming, Blackman or Bartlett).",
                            extra={"cases": _window_cases}))
_WINDOWS = ("hanning", "hamming", "blackman", "bartlett")


def _window(name: str, M, stream) -> array:
    if isinstance(M, float) or not isinstance(M, (int, np.integer)):
        raise TypeError(f"{name}(): incompatible function arguments: M must be an int, got "
                        f"{type(M).__name__}.")
    m = max(int(M), 0)
    return make_node(WINDOW, (), {"window": name, "m": m}, (m,), dt.float32, resolve_stream(stream))


@api(primitive="window")
def hanning(M: int, *, stream=None):
    return _window("hanning", M, stream)


@api(primitive="window")
def hamming(M: int, *, stream=None):
    return _window("hamming", M, stream)


@api(primitive="window")
def blackman(M: int, *, stream=None):
    return _window("blackman", M, stream)


@api(primitive="window")
def bartlett(M: int, *, stream=None):
    return _window("bartlett", M, stream)


# --- matrices ----------------------------------------------------------------------------------------------

def _eye_ref(p):
    d = p["dtype"]
    ref = np.eye(p["n"], p["m"], p["k"], dtype=np.float32 if d is dt.bfloat16 else d.np_storage)
    return dt.to_storage(ref, d)


def _tri_ref(p):
    d = p["dtype"]
    ref = np.tri(p["n"], p["m"], p["k"], dtype=np.float32 if d is dt.bfloat16 else d.np_storage)
    return dt.to_storage(ref, d)


def _matrix_cases(rng, dtype):
    from .shape import _case_values

    m = _case_values(rng, dtype, (2, 4, 5))
    return [("eye", (3,), {"dtype": dtype}), ("eye", (3, 5, 2), {"dtype": dtype}),
            ("eye", (4, 2, -1), {"dtype": dtype}), ("identity", (2,), {"dtype": dtype}),
            ("tri", (3, 4, 1), {"dtype": dtype}), ("tri", (4,), {"dtype": dtype}),
            ("tril", (m,), {}), ("tril", (m, -1), {}), ("triu", (m, 2), {})]


EYE = register(Primitive("eye", "creation", _eye_ref, compute=False,
                         doc="Ones on the k-th diagonal, zeros elsewhere.",
                         extra={"cases": _matrix_cases}))
TRI = register(Primitive("tri", "creation", _tri_ref, compute=False,
                         doc="Ones at and below the k-th diagonal, zeros above.",
                         extra={"cases": _matrix_cases}))


@api(primitive="eye")
def eye(n: int, m=None, k: int = 0, dtype=dt.float32, *, stream=None):
    m = n if m is None else m
    if n < 0 or m < 0:
        raise ValueError("[eye] N and M must be positive integers.")
    params = {"n": int(n), "m": int(m), "k": int(k), "dtype": _dtype(dtype, dt.float32)}
    return make_node(EYE, (), params, (params["n"], params["m"]), params["dtype"],
                     resolve_stream(stream))


@api(primitive="eye")
def identity(n: int, dtype=dt.float32, *, stream=None):
    return eye(n, n, 0, dtype, stream=stream)


@api(primitive="tri")
def tri(n: int, m=None, k: int = 0, dtype=None, *, stream=None):
    m = n if m is None else m
    n, m = max(int(n), 0), max(int(m), 0)
    params = {"n": n, "m": m, "k": int(k), "dtype": _dtype(dtype, dt.float32)}
    return make_node(TRI, (), params, (n, m), params["dtype"], resolve_stream(stream))


def _triangle(x, k, op: str, stream):
    from .elementwise import where

    x = to_array(x)
    if x.ndim < 2:
        raise ValueError(f"[{op}] array must be at least 2-D")
    if op == "tril":
        mask = tri(x._shape[-2], x._shape[-1], k, dt.bool_, stream=stream)
        return where(mask, x, realized_from_value(0, x._dtype), stream=stream)
    mask = tri(x._shape[-2], x._shape[-1], k - 1, dt.bool_, stream=stream)
    return where(mask, realized_from_value(0, x._dtype), x, stream=stream)


@api()
def tril(x, k: int = 0, *, stream=None):
    return _triangle(x, k, "tril", stream)


@api()
def triu(x, k: int = 0, *, stream=None):
    return _triangle(x, k, "triu", stream)


# --- grids -----------------------------------------------------------------------------------------------

@api()
def meshgrid(*arrays, sparse=False, indexing="xy", stream=None):
    from .shape import broadcast_arrays, reshape

    if indexing not in ("xy", "ij"):
        raise ValueError("[meshgrid] Invalid indexing value. Valid values are 'xy' and 'ij'.")
    arrays = [_need_array(a, "meshgrid") for a in arrays]
    nd = len(arrays)
    outs = []
    for i, a in enumerate(arrays):
        shape = [1] * nd
        shape[i] = -1
        if indexing == "xy" and nd > 1 and i < 2:
            shape[i] = 1
            shape[1 - i] = a.size
        outs.append(reshape(a, tuple(shape), stream=stream))
    if not sparse:
        outs = broadcast_arrays(*outs, stream=stream)
    return tuple(outs)


# --- gradient rules -----------------------------------------------------------------------------

def _attach_gradients():
    from . import _autodiff as ad

    FULL.vjp = lambda node, cot, argnums: [ad.unbroadcast(cot, node._inputs[0]._shape)]
    FULL.jvp = ad.linear_jvp
    for prim in (ARANGE, WINDOW, EYE, TRI):
        ad.nondifferentiable(prim)


_attach_gradients()
