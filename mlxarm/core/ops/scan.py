"""Scans: the ``scan`` primitives (cumsum, cumprod, cummax, cummin, logcumsumexp) and their public ops.

Each primitive records ``{"axis": int, "reverse": bool, "inclusive": bool}``. An exclusive scan
starts from the operation's identity (0, 1, the dtype's lowest/highest value, -inf), as MLX's does.
"""
from __future__ import annotations

import operator

import numpy as np

from ._base import Primitive, api, cast, dt, make_node, register, resolve_stream
from .elementwise import astype
from ..errors import AxisError
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
        raise AxisError(f"[{name}] Axis {axis} is out of bounds for array with {ndim} dimensions.")
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


# The array-API names: the same functions.
cumulative_sum = api("cumulative_sum", primitive="cumsum")(cumsum)
cumulative_prod = api("cumulative_prod", primitive="cumprod")(cumprod)


# --- gradient rules -----------------------------------------------------------------------------
# cumsum is linear. The other scans have rules for the forward inclusive scan over the last axis;
# any other direction, axis or exclusive scan is differentiated through its rewriting as that one
# (move the axis last, flip for reverse, shift by the identity for exclusive).

def _attach_gradients():
    from . import _autodiff as ad
    from ._autodiff import O, conj

    cumsum_prim = _PRIMS["cumsum"]
    cumsum_prim.vjp = lambda node, cot, argnums: [make_node(
        cumsum_prim, (cot,), dict(node._params, reverse=not node._params["reverse"]), cot._shape,
        cot._dtype, node._stream)]
    cumsum_prim.jvp = ad.linear_jvp

    def canonical(node):
        p = node._params
        return p["axis"] == node.ndim - 1 and not p["reverse"] and p["inclusive"]

    def rewritten(name, p):
        """The scan ``p`` describes, written with a forward inclusive scan over the last axis."""
        def fn(params, x):
            from .shape import concatenate, flip, moveaxis

            y = moveaxis(x, p["axis"], -1)
            if p["reverse"]:
                y = flip(y, -1)
            if not p["inclusive"]:
                first = O.full(y._shape[:-1] + (1,), _identity_value(name, y._dtype), y._dtype)
                y = concatenate([first, y[..., :-1]], -1)
            y = make_node(_PRIMS[name], (y,), {"axis": y.ndim - 1, "reverse": False, "inclusive": True},
                          y._shape, y._dtype, y._stream)
            if p["reverse"]:
                y = flip(y, -1)
            return moveaxis(y, -1, p["axis"])
        return fn

    def rules(name, direct_vjp, direct_jvp):
        prim = _PRIMS[name]

        def vjp(node, cot, argnums):
            if canonical(node):
                return [direct_vjp(node, cot)]
            from ..transforms import vjp_flat

            fn = rewritten(name, node._params)
            return vjp_flat(lambda xs: [fn(None, xs[0])], [node._inputs[0]], [cot])[1]

        def jvp(node, tangents, argnums):
            if canonical(node):
                return direct_jvp(node, tangents[0])
            from ..transforms import jvp_flat

            fn = rewritten(name, node._params)
            return jvp_flat(lambda xs: [fn(None, xs[0])], [node._inputs[0]], tangents)[1][0]

        prim.vjp, prim.jvp = vjp, jvp

    def partial_products(x):
        """C[..., i, j] = product of x[..., k] for k <= j, k != i (exact with zeros)."""
        n = x._shape[-1]
        eye = O.eye(n, dtype=dt.bool_)
        replaced = O.where(eye, O.ones((), x._dtype), O.expand_dims(x, -2))
        return O.cumprod(replaced, axis=-1)

    def upper(n):
        return O.triu(O.ones((n, n), dt.bool_))  # j >= i

    def cumprod_vjp(node, cot):
        x = node._inputs[0]
        c = partial_products(x)
        zero = O.zeros((), cot._dtype)
        terms = O.where(upper(x._shape[-1]), O.expand_dims(cot, -2) * conj(c), zero)
        return O.sum(terms, axis=-1)

    def cumprod_jvp(node, t):
        x = node._inputs[0]
        c = partial_products(x)
        zero = O.zeros((), t._dtype)
        terms = O.where(upper(x._shape[-1]), O.expand_dims(t, -1) * c, zero)
        return O.sum(terms, axis=-2)

    rules("cumprod", cumprod_vjp, cumprod_jvp)

    def owners(node):
        """For each output position, the input position whose value it is (the latest on ties)."""
        x = node._inputs[0]
        n = x._shape[-1]
        pos = O.arange(n, dtype=dt.int32)
        fresh = O.equal(x, node)
        marks = O.where(fresh, pos, O.full((), -1, dt.int32))
        return O.stop_gradient(O.cummax(marks, axis=-1))

    def route_vjp(node, cot):
        n = cot._shape[-1]
        onehot = O.equal(O.expand_dims(owners(node), -1), O.arange(n, dtype=dt.int32))  # [..., j, k]
        return O.sum(O.where(onehot, O.expand_dims(cot, -1), O.zeros((), cot._dtype)), axis=-2)

    def route_jvp(node, t):
        return O.take_along_axis(t, owners(node), axis=-1)

    rules("cummax", route_vjp, route_jvp)
    rules("cummin", route_vjp, route_jvp)

    def lcse_vjp(node, cot):
        x = node._inputs[0]
        return O.exp(x) * O.cumsum(cot * O.exp(-node), axis=-1, reverse=True)

    def lcse_jvp(node, t):
        x = node._inputs[0]
        return O.cumsum(t * O.exp(x), axis=-1) * O.exp(-node)

    rules("logcumsumexp", lcse_vjp, lcse_jvp)


def _identity_value(name, d):
    if name == "cumprod":
        return 1
    if name == "logcumsumexp":
        return float("-inf")
    if d.kind == "f" or d.kind == "c":
        return float("-inf") if name == "cummax" else float("inf")
    if d.kind == "b":
        return name != "cummax"
    info = dt.iinfo(d)
    return info.min if name == "cummax" else info.max


_attach_gradients()
