"""Reductions: the ``reduce`` primitives (sum, prod, max, min, all, any, argmax, argmin, median) and
the public reductions built on them (mean, var, std, logsumexp, count_nonzero).

Every reduce primitive records ``{"axes": tuple, "keepdims": bool}``; its reference sees computed
values (bfloat16 as float32). Accumulating dtypes (sum/prod of small integers) are reached by a
recorded ``astype`` before the reduction, so the primitive's output dtype is its input's.
"""
from __future__ import annotations

import operator

import numpy as np

from ._base import Primitive, api, array, cast, dt, make_node, register, resolve_stream
from ..errors import AxisError
from .elementwise import (abs as abs_, add, astype, exp, isinf, isnan, log, multiply, not_equal, sqrt,
                          square, stop_gradient, subtract, where)

_ALL = tuple(dt.ALL)

# sum/prod accumulate small integers (and bool) in 32 bits, as MLX does.
_ACCUMULATE = {dt.bool_: dt.int32, dt.int8: dt.int32, dt.int16: dt.int32,
               dt.uint8: dt.uint32, dt.uint16: dt.uint32}


# --- argument handling -----------------------------------------------------------------------------

_AXES = "axis: None | int | Sequence[int] = None, keepdims: bool = False"
SIGNATURES = {
    **{n: f"{n}(a: array, /, {_AXES}, *, stream: StreamOrDevice = None) -> array"
       for n in ("sum", "prod", "max", "min", "all", "any", "mean", "logsumexp", "median")},
    **{n: f"{n}(a: array, /, axis: None | int = None, keepdims: bool = False, *, "
          "stream: StreamOrDevice = None) -> array" for n in ("argmax", "argmin")},
    **{n: f"{n}(a: array, /, {_AXES}, ddof: int = 0, *, stream: StreamOrDevice = None) -> array"
       for n in ("var", "std")},
    "count_nonzero": f"count_nonzero(a: array, /, *, {_AXES}, stream: StreamOrDevice = None) -> array",
}


def incompatible(op: str, signature: str, *args) -> TypeError:
    """The TypeError MLX's bindings raise for arguments of the wrong type."""
    kinds = ", ".join(type(v).__module__.replace("builtins", "").replace("mlxarm.core.array", "mlx.core")
                      .strip(".") + ("." if type(v).__module__ != "builtins" else "") + type(v).__name__
                      for v in args)
    return TypeError(f"{op}(): incompatible function arguments. The following argument types are "
                     f"supported:\n    1. {signature}\n\nInvoked with types: {kinds}")


def check_array(a, op, signature=None):
    if not isinstance(a, array):
        raise incompatible(op, signature or SIGNATURES[op], a)
    return a


def _axis_int(ax, op):
    if isinstance(ax, int):
        return int(ax)
    if isinstance(ax, (float, complex, str)) or not hasattr(ax, "__index__"):
        raise incompatible(op, SIGNATURES[op], ax)
    return operator.index(ax)


def _normalize_axes(axis, shape, op, bounds_msg=None, dup_msg="Duplicate axes detected in reduction."):
    """MLX's reduction axes: None is every axis; bounds are checked before duplicates."""
    ndim = len(shape)
    if axis is None:
        return tuple(range(ndim))
    raw = [_axis_int(a, op) for a in axis] if isinstance(axis, (list, tuple)) else [_axis_int(axis, op)]
    axes = []
    for ax in raw:
        if ax < -ndim or ax >= ndim:
            if bounds_msg:
                raise AxisError(bounds_msg.format(axis=ax, ndim=ndim))
            raise AxisError(f"Invalid axis {ax} for array with {ndim} dimensions.")
        axes.append(ax + ndim if ax < 0 else ax)
    if len(set(axes)) != len(axes):
        raise ValueError(dup_msg)
    return tuple(sorted(axes))


def _reduced_shape(shape, axes, keepdims):
    if keepdims:
        return tuple(1 if i in axes else s for i, s in enumerate(shape))
    return tuple(s for i, s in enumerate(shape) if i not in axes)


def _count(shape, axes) -> int:
    n = 1
    for ax in axes:
        n *= shape[ax]
    return n


# --- primitives ---------------------------------------------------------------------------------------

def _sum_ref(p, x):
    acc = np.float32 if x.dtype == np.float16 else x.dtype  # half precision sums in float32
    return np.sum(x, axis=p["axes"], keepdims=p["keepdims"], dtype=acc)


def _prod_ref(p, x):
    acc = np.float32 if x.dtype == np.float16 else x.dtype
    return np.prod(x, axis=p["axes"], keepdims=p["keepdims"], dtype=acc)


def _max_ref(p, x):
    return np.max(x, axis=p["axes"], keepdims=p["keepdims"])


def _min_ref(p, x):
    return np.min(x, axis=p["axes"], keepdims=p["keepdims"])


def _all_ref(p, x):
    return np.all(x, axis=p["axes"], keepdims=p["keepdims"])


def _any_ref(p, x):
    return np.any(x, axis=p["axes"], keepdims=p["keepdims"])


def _arg_ref(fn):
    def ref(p, x):
        axes = p["axes"]
        if len(axes) == 1:
            return fn(x, axis=axes[0], keepdims=p["keepdims"])
        out = np.asarray(fn(x.reshape(-1)))  # every axis: the index into the flattened array
        return out.reshape((1,) * x.ndim if p["keepdims"] else ())
    return ref


def _median_ref(p, x):
    axes = p["axes"]
    keep = [i for i in range(x.ndim) if i not in axes]
    n = _count(x.shape, axes)
    flat = np.transpose(x, keep + list(axes)).reshape([x.shape[i] for i in keep] + [n])
    srt = np.sort(flat, axis=-1)
    lo, hi = srt[..., (n - 1) // 2], srt[..., n // 2]
    mid = lo if n % 2 else (lo + hi) / x.dtype.type(2)
    if x.dtype.kind in "fc":
        mid = np.where(np.isnan(flat).any(axis=-1), x.dtype.type(np.nan), mid)
    out = np.asarray(mid, dtype=x.dtype)
    if p["keepdims"]:
        out = out.reshape([1 if i in axes else s for i, s in enumerate(x.shape)])
    return out


def _random_values(rng, dtype, shape):
    if dtype is dt.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        lo = 0 if dtype.kind == "u" else -4
        return rng.integers(lo, 5, size=shape).astype(dtype.np_storage)
    if dtype.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    return rng.standard_normal(shape).astype(np.float32 if dtype is dt.bfloat16 else dtype.np_compute)


def _reduce_cases(name, axis_kw=True, multi_axes=True):
    def cases(rng, dtype):
        x = _random_values(rng, dtype, (3, 4, 5))
        out = [(name, (x,), {}), (name, (x,), {"axis": 1}), (name, (x,), {"axis": -1, "keepdims": True})]
        if multi_axes:
            out.append((name, (x,), {"axis": (0, 2)}))
        return out
    return cases


def _reduce_prim(name, ref, multi_axes=True, dtypes=_ALL):
    return register(Primitive(name, "reduce", ref, dtypes=dtypes,
                              doc=f"{name} over a set of axes.",
                              extra={"cases": _reduce_cases(name, multi_axes=multi_axes)}))


SUM = _reduce_prim("sum", _sum_ref)
PROD = _reduce_prim("prod", _prod_ref)
MAX = _reduce_prim("max", _max_ref)
MIN = _reduce_prim("min", _min_ref)
ALL = _reduce_prim("all", _all_ref)
ANY = _reduce_prim("any", _any_ref)
ARGMAX = _reduce_prim("argmax", _arg_ref(np.argmax), multi_axes=False)
ARGMIN = _reduce_prim("argmin", _arg_ref(np.argmin), multi_axes=False)
MEDIAN = _reduce_prim("median", _median_ref)


def _record(prim, a, axes, keepdims, dtype, stream):
    shape = _reduced_shape(a._shape, axes, keepdims)
    return make_node(prim, (a,), {"axes": axes, "keepdims": bool(keepdims)}, shape, dtype,
                     resolve_stream(stream))


# --- the primitive reductions -------------------------------------------------------------------------

def _accumulating(prim, name):
    def op(a, /, axis=None, keepdims=False, *, stream=None):
        check_array(a, name)
        axes = _normalize_axes(axis, a._shape, name)
        if not axes:
            return a
        acc = _ACCUMULATE.get(a._dtype, a._dtype)
        a = cast(a, acc, stream)
        return _record(prim, a, axes, keepdims, acc, stream)

    op.__name__ = op.__qualname__ = name
    op.__doc__ = f"{name.capitalize()} reduction over the given axes (MLX ``mlx.core.{name}``)."
    return api(name, primitive=name)(op)


sum = _accumulating(SUM, "sum")
prod = _accumulating(PROD, "prod")


def _extremum(prim, name):
    def op(a, /, axis=None, keepdims=False, *, stream=None):
        check_array(a, name)
        axes = _normalize_axes(axis, a._shape, name)
        if not axes:
            return a
        for ax in axes:
            if a._shape[ax] == 0:
                raise ValueError(f"[{name}] Cannot {name} reduce over axis {ax} with size 0.")
        return _record(prim, a, axes, keepdims, a._dtype, stream)

    op.__name__ = op.__qualname__ = name
    op.__doc__ = f"{name.capitalize()} reduction over the given axes (MLX ``mlx.core.{name}``)."
    return api(name, primitive=name)(op)


max = _extremum(MAX, "max")
min = _extremum(MIN, "min")

_MINMAX_SIGNATURE = (f"minmax(a: array, /, {_AXES}, *, stream: StreamOrDevice = None) "
                     "-> tuple[array, array]")


@api()
def minmax(a, /, axis=None, keepdims=False, *, stream=None):
    """The minimum and the maximum over the given axes, in that order."""
    check_array(a, "minmax", _MINMAX_SIGNATURE)
    return (min(a, axis, keepdims, stream=stream), max(a, axis, keepdims, stream=stream))


def _boolean(prim, name):
    def op(a, /, axis=None, keepdims=False, *, stream=None):
        check_array(a, name)
        axes = _normalize_axes(axis, a._shape, name)
        if not axes:
            return cast(a, dt.bool_, stream)
        return _record(prim, a, axes, keepdims, dt.bool_, stream)

    op.__name__ = op.__qualname__ = name
    op.__doc__ = f"Logical {name} reduction over the given axes (MLX ``mlx.core.{name}``)."
    return api(name, primitive=name)(op)


all = _boolean(ALL, "all")
any = _boolean(ANY, "any")


def _argreduce(prim, name):
    def op(a, /, axis=None, keepdims=False, *, stream=None):
        check_array(a, name)
        if isinstance(axis, (list, tuple)):
            raise incompatible(name, SIGNATURES[name], a, axis)
        if a.size == 0:
            raise ValueError(f"[{name}] Cannot {name} reduce zero size array.")
        axes = _normalize_axes(axis, a._shape, name)
        return _record(prim, a, axes, keepdims, dt.uint32, stream)

    op.__name__ = op.__qualname__ = name
    op.__doc__ = (f"Indices of the {name[3:]}imum along an axis, or of the flattened array "
                  f"(MLX ``mlx.core.{name}``).")
    return api(name, primitive=name)(op)


argmax = _argreduce(ARGMAX, "argmax")
argmin = _argreduce(ARGMIN, "argmin")


# --- composite reductions -------------------------------------------------------------------------------

def _float_dtype(d):
    return dt.float32 if d.kind in "biu" else d


def _reciprocal_count(n: int, ddof: int = 0) -> float:
    denom = n - ddof
    return 1.0 / denom if denom > 0 else float("inf")


def _reciprocal_count_ref(p, x):
    return np.array(_reciprocal_count(_count(x.shape, p["axes"]), p["ddof"])).astype(x.dtype)


RECIPROCAL_COUNT = register(Primitive(
    "reciprocal_count", "kernel", _reciprocal_count_ref,
    doc="1 / (the number of elements over some axes of the input, less ddof), as a scalar of the "
        "input's dtype: a mean's scale in a shapeless compiled function, where the input's shape "
        "changes from call to call.",
    extra={"cases": lambda rng, dtype: []}))


def _scale_of_count(total: array, a: array, axes: tuple, ddof: int, stream) -> array:
    """``total`` divided by the count of ``a``'s elements over ``axes`` (less ``ddof``), scaled by the
    reciprocal as MLX does (it rounds differently from a division). Traced for a shapeless compiled
    function, the count is a node reading ``a``, so it follows ``a``'s shape in every call."""
    from ..graph import shapeless_tracing

    if shapeless_tracing():
        scale = make_node(RECIPROCAL_COUNT, (a,), {"axes": tuple(axes), "ddof": int(ddof)}, (), a._dtype,
                          resolve_stream(stream))
        return multiply(total, scale, stream=stream)
    return multiply(total, _reciprocal_count(_count(a._shape, axes), int(ddof)), stream=stream)


@api()
def mean(a, /, axis=None, keepdims=False, *, stream=None):
    """Mean over the given axes (MLX ``mlx.core.mean``)."""
    check_array(a, "mean")
    axes = _normalize_axes(axis, a._shape, "mean",
                           bounds_msg="[mean] axis {axis} is out of bounds for array with {ndim} dimensions.")
    a = cast(a, _float_dtype(a._dtype), stream)
    if not axes:
        return a
    return _scale_of_count(sum(a, axes, keepdims, stream=stream), a, axes, 0, stream)


def _var(a, axis, keepdims, ddof, stream):
    axes = _normalize_axes(axis, a._shape, "mean",
                           bounds_msg="[mean] axis {axis} is out of bounds for array with {ndim} dimensions.")
    a = cast(a, _float_dtype(a._dtype), stream)
    mu = mean(a, axes, True, stream=stream)
    dev = subtract(a, mu, stream=stream)
    sq = square(abs_(dev, stream=stream), stream=stream) if a._dtype.kind == "c" else square(dev, stream=stream)
    if not axes:
        return sq
    return _scale_of_count(sum(sq, axes, keepdims, stream=stream), a, axes, ddof, stream)


@api()
def var(a, /, axis=None, keepdims=False, ddof: int = 0, *, stream=None):
    """Variance over the given axes, divided by ``N - ddof`` (MLX ``mlx.core.var``)."""
    check_array(a, "var")
    return _var(a, axis, keepdims, ddof, stream)


@api()
def std(a, /, axis=None, keepdims=False, ddof: int = 0, *, stream=None):
    """Standard deviation over the given axes (MLX ``mlx.core.std``)."""
    check_array(a, "std")
    return sqrt(_var(a, axis, keepdims, ddof, stream), stream=stream)


@api()
def logsumexp(a, /, axis=None, keepdims=False, *, stream=None):
    """log(sum(exp(a))) over the given axes, stable for large and infinite inputs."""
    check_array(a, "logsumexp")
    if a.ndim == 0 and axis is not None and (not isinstance(axis, (list, tuple)) or len(axis)):
        raise ValueError("[logsumexp] Received non-empty axes for array with 0 dimensions.")
    if a.size == 0:
        raise ValueError("[logsumexp] Received empty array.")
    axes = _normalize_axes(axis, a._shape, "logsumexp")
    if not axes:
        return cast(a, _float_dtype(a._dtype), stream)
    if axes == (a.ndim - 1,):
        # MLX reduces the last axis alone in floating point throughout: a half-precision row in float32,
        # rounded once at the end.
        out_dtype = _float_dtype(a._dtype)
        if out_dtype in (dt.float16, dt.bfloat16):
            return cast(logsumexp(cast(a, dt.float32, stream), axes, keepdims, stream=stream), out_dtype, stream)
        a = cast(a, out_dtype, stream)
    # Otherwise MLX shifts by the peak in the input's own dtype (unsigned and bool inputs wrap there).
    peak = stop_gradient(max(a, axes, True, stream=stream), stream=stream)
    total = sum(exp(subtract(a, peak, stream=stream), stream=stream), axes, keepdims, stream=stream)
    if not keepdims:
        from .shape import reshape

        peak = reshape(peak, total._shape, stream=stream)
    out = add(log(total, stream=stream), peak, stream=stream)
    # An infinite peak makes a - peak NaN; the result there is the peak itself.
    return where(isinf(peak, stream=stream), peak, out, stream=stream)


@api()
def median(a, /, axis=None, keepdims=False, *, stream=None):
    """Median over the given axes; NaN where a reduced slice holds a NaN (MLX ``mlx.core.median``)."""
    check_array(a, "median")
    axes = _normalize_axes(axis, a._shape, "median",
                           bounds_msg="[median] axis {axis} is out of bounds for array with {ndim} dimensions.",
                           dup_msg="[median] Received duplicate axis.")
    if axis is not None and not axes and a.ndim:
        raise ValueError("[flatten] start_axis must be less than or equal to end_axis")
    if _count(a._shape, axes) == 0:
        raise ValueError("[median] Cannot take median along empty axis.")
    a = cast(a, _float_dtype(a._dtype), stream)
    return _record(MEDIAN, a, axes, keepdims, a._dtype, stream)


@api()
def count_nonzero(a, /, axis=None, keepdims=False, *, stream=None):
    """Number of non-zero elements over the given axes, as int32."""
    check_array(a, "count_nonzero")
    axes = _normalize_axes(axis, a._shape, "count_nonzero")
    nonzero = not_equal(a, 0, stream=stream)
    if not axes:
        return cast(nonzero, dt.int32, stream)
    return sum(nonzero, axes, keepdims, stream=stream)


__all__ = ["sum", "prod", "max", "min", "minmax", "all", "any", "argmax", "argmin", "mean", "var", "std",
           "logsumexp", "median", "count_nonzero", "array"]


# --- gradient rules -----------------------------------------------------------------------------

def _attach_gradients():
    from . import _autodiff as ad
    from ._autodiff import O, conj

    def expand(node, g):
        """A reduction's output (or cotangent) broadcast back over the input's shape."""
        p = node._params
        shape = node._inputs[0]._shape
        if not p["keepdims"]:
            g = O.reshape(g, _reduced_shape(shape, p["axes"], True))
        from ..graph import shapeless_tracing

        if shapeless_tracing():
            # A broadcast_to records the traced shape; times ones like the input, a replay on inputs
            # of other shapes broadcasts to theirs (as MLX broadcasts the cotangent against the input).
            return O.multiply(g, O.ones_like(node._inputs[0], dtype=g._dtype))
        return O.broadcast_to(g, shape)

    SUM.vjp = lambda node, cot, argnums: [expand(node, cot)]
    for prim in (SUM,):
        prim.jvp = ad.linear_jvp

    def others_product(x, axes):
        """Per element, the product of the other elements of its reduced slice (exact with zeros)."""
        keep = [i for i in range(x.ndim) if i not in axes]
        order = keep + list(axes)
        moved = O.transpose(x, tuple(order))
        head = tuple(x._shape[i] for i in keep)
        flat = O.reshape(moved, head + (-1,))
        before = O.cumprod(flat, axis=-1, inclusive=False)
        after = O.cumprod(flat, axis=-1, reverse=True, inclusive=False)
        both = O.reshape(before * after, moved._shape)
        return O.transpose(both, tuple(order.index(i) for i in range(x.ndim)))

    def prod_vjp(node, cot, argnums):
        x = node._inputs[0]
        return [conj(others_product(x, node._params["axes"])) * expand(node, cot)]

    def prod_jvp(node, tangents, argnums):
        x = node._inputs[0]
        p = node._params
        return O.sum(tangents[0] * others_product(x, p["axes"]), axis=p["axes"], keepdims=p["keepdims"])

    PROD.vjp, PROD.jvp = prod_vjp, prod_jvp

    def extremum_mask(node):
        x = node._inputs[0]
        mask = O.equal(x, expand(node, node))
        count = O.sum(mask, axis=node._params["axes"], keepdims=True)
        return mask, count

    def extremum_vjp(node, cot, argnums):
        mask, count = extremum_mask(node)
        g = O.where(mask, expand(node, cot), O.zeros((), cot._dtype))
        return [g / O.astype(count, cot._dtype)]

    def extremum_jvp(node, tangents, argnums):
        mask, count = extremum_mask(node)
        p = node._params
        t = tangents[0]
        picked = O.sum(O.where(mask, t, O.zeros((), t._dtype)), axis=p["axes"], keepdims=True)
        out = picked / count
        if not p["keepdims"]:
            out = O.reshape(out, node._shape)
        return O.astype(out, t._dtype) if t._dtype.kind in "fc" else out

    for prim in (MAX, MIN):
        prim.vjp, prim.jvp = extremum_vjp, extremum_jvp
    for prim in (ALL, ANY, ARGMAX, ARGMIN, RECIPROCAL_COUNT):
        ad.nondifferentiable(prim)


_attach_gradients()
