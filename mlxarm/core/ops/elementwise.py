"""Elementwise primitives: one table entry per op.

Each ``unary``/``binary`` entry registers the primitive (shape/dtype rule, numpy reference, supported
dtypes, test domain) and generates the public function with MLX's signature. Inputs are promoted to
the op's compute dtype by recorded ``astype`` nodes; binary primitives broadcast implicitly (their
output shape is the broadcast shape), so a broadcast never materializes.
"""
from __future__ import annotations

import math

import numpy as np

from ._base import (DtypeError, Primitive, _broadcast_two, api, array, broadcast_shapes, cast, dt, make_node,
                    operands, register, resolve_stream, to_array)
from ..convert import operand, weak_scalar
from ..device import current_stream

INT_BOOL = tuple(d for d in dt.ALL if d.kind in "biu")
REAL = tuple(d for d in dt.ALL if d.kind != "c")
NUMERIC = tuple(d for d in dt.ALL if d is not dt.bool_)
FLOATS = tuple(d for d in dt.ALL if d.kind == "f")
ALL = tuple(dt.ALL)


def _dtype_error(op, a):
    if op == "negative" and a._dtype is dt.bool_:
        return DtypeError("[negative] Not supported for bool, use logical_not instead.")
    if op == "bitwise_invert":
        return DtypeError("[bitwise_invert] Bitwise inverse only allowed on integer types.")
    return DtypeError(f"[{op}] Not supported for {a._dtype.name}.")


# --- astype / copy ---------------------------------------------------------------------------

def _astype_ref(params, x):
    return x  # the executor casts the result to the node's dtype (storage rules live in dtypes.py)


ASTYPE = register(Primitive("astype", "unary", _astype_ref, doc="Cast to another dtype."))


@api(primitive="astype")
def astype(a, dtype, stream=None):
    a = to_array(a)
    dtype = dt.as_dtype(dtype)
    if a._dtype is dtype:
        return a
    return make_node(ASTYPE, (a,), None, a._shape, dtype, resolve_stream(stream))


COPY = register(Primitive("copy", "unary", lambda p, x: np.array(x, copy=True), compute=False,
                          doc="A new buffer with the same contents."))


def copy(a, stream=None):
    a = to_array(a)
    return make_node(COPY, (a,), None, a._shape, a._dtype, resolve_stream(stream))


# --- unary --------------------------------------------------------------------------------------

def _erf(x):
    f = np.frompyfunc(math.erf, 1, 1)
    # frompyfunc hands back a Python float for 0-d input: asarray keeps it an array.
    return np.asarray(f(np.asarray(x, dtype=np.float64)), dtype=np.float64)


def _erfinv(y):
    """erf^-1 in float64: Giles' single-precision start, then Newton steps on math.erf."""
    y = np.asarray(y, dtype=np.float64)
    w = -np.log((1.0 - y) * (1.0 + y))
    small = w < 5.0
    ws = w - 2.5
    wl = np.sqrt(np.where(small, 5.0, w)) - 3.0
    ps = 2.81022636e-08
    for c in (3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087, -0.00125372503,
              -0.00417768164, 0.246640727, 1.50140941):
        ps = c + ps * ws
    pl = -0.000200214257
    for c in (0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773, -0.0076224613,
              0.00943887047, 1.00167406, 2.83297682):
        pl = c + pl * wl
    x = np.where(small, ps, pl) * y
    finite = np.abs(y) < 1
    xs = np.where(finite, x, 0.0)
    for _ in range(2):
        err = _erf(xs) - y
        xs = xs - np.where(finite, err / (2.0 / math.sqrt(math.pi) * np.exp(-xs * xs)), 0.0)
    return np.where(finite, xs, np.where(np.abs(y) == 1, np.copysign(np.inf, y), np.nan))


def _in_float(fn):
    """Compute a float op in float64 (for refs numpy lacks) and hand back the input's width."""
    def ref(p, x):
        return fn(x).astype(x.dtype)
    return ref


def _round_ref(p, x):
    decimals = p["decimals"] if p else 0
    if x.dtype.kind in "biu":
        if decimals >= 0:
            return x
        return np.round(x.astype(np.int64) if x.dtype.kind == "b" else x, decimals).astype(x.dtype)
    return np.round(x, decimals)


def _sign_ref(p, x):
    if x.dtype == np.bool_:
        return x
    if x.dtype.kind == "c":
        mag = np.abs(x)
        return np.where(mag == 0, 0, x / np.where(mag == 0, 1, mag)).astype(x.dtype)
    if x.dtype.kind == "f":
        # MLX's (x > 0) - (x < 0): NaN and -0.0 give +0.0 (np.sign keeps NaN and the zero's sign).
        return ((x > 0).astype(x.dtype) - (x < 0).astype(x.dtype)).astype(x.dtype)
    return np.sign(x)


def _isposinf(p, x):
    return x == np.inf if x.dtype.kind in "fc" else np.zeros(x.shape, bool)


def _isneginf(p, x):
    return x == -np.inf if x.dtype.kind in "fc" else np.zeros(x.shape, bool)


def _trunc(p, x):
    return np.trunc(x) if x.dtype.kind == "f" else x


def _float_test(p, fn):
    def ref(p_, x):
        if x.dtype.kind in "biu":
            return np.zeros(x.shape, bool) if fn is not np.isfinite else np.ones(x.shape, bool)
        return fn(x)
    return ref


def _sigmoid(p, x):
    if p:
        # MLX's half kernel rounds exp(|x|) to the half type, then takes y = 1 / (1 + e) in float32
        # and 1 - y for x >= 0 (the executor rounds the result once more).
        w = x.astype(np.float32)
        y = 1 / (1 + dt.round_half(np.exp(np.abs(w)), p["half"]))
        return np.where(w < 0, y, 1 - y)
    # float16 computes in float32 so that sigmoid(8) stays below 1 before rounding, as in MLX.
    wide = x.astype(np.float32) if x.dtype == np.float16 else x
    return (1 / (1 + np.exp(-wide))).astype(x.dtype)


def _rsqrt(p, x):
    if p:  # MLX's half kernel rounds the root to the half type before taking its reciprocal
        return 1 / dt.round_half(np.sqrt(x.astype(np.float32)), p["half"])
    return (1 / np.sqrt(x)).astype(x.dtype)


def _reciprocal(p, x):
    return (1 / x).astype(x.dtype)


def _imag(p, x):
    return x.imag if x.dtype.kind == "c" else np.zeros_like(x)


def _real(p, x):
    return x.real if x.dtype.kind == "c" else x


# (name, reference, output rule, accepted dtypes, test domain)
#   'same': the input's dtype; 'float': integers and bool become float32; 'bool': boolean;
#   'realpart': complex64 becomes float32.
_UNARY = [
    ("abs", lambda p, x: np.abs(x) if x.dtype != np.bool_ else x, "realpart", ALL, None),
    ("negative", lambda p, x: np.negative(x), "same", NUMERIC, None),
    ("sign", _sign_ref, "same", ALL, None),
    ("square", lambda p, x: np.square(x) if x.dtype != np.bool_ else x, "same", ALL, None),
    ("floor", lambda p, x: np.floor(x) if x.dtype.kind == "f" else x, "same", REAL, None),
    ("ceil", lambda p, x: np.ceil(x) if x.dtype.kind == "f" else x, "same", REAL, None),
    ("conjugate", lambda p, x: np.conjugate(x), "same", ALL, None),
    ("real", _real, "realpart", ALL, None),
    ("imag", _imag, "realpart", ALL, None),
    ("exp", lambda p, x: np.exp(x), "float", ALL, (-10, 10)),
    ("expm1", lambda p, x: np.expm1(x), "float", REAL, (-10, 10)),
    ("log", lambda p, x: np.log(x), "float", ALL, (0.01, 100)),
    ("log2", lambda p, x: np.log2(x), "float", ALL, (0.01, 100)),
    ("log10", lambda p, x: np.log10(x), "float", ALL, (0.01, 100)),
    ("log1p", lambda p, x: np.log1p(x), "float", ALL, (-0.9, 100)),
    ("sqrt", lambda p, x: np.sqrt(x), "float", ALL, (0, 100)),
    ("rsqrt", _rsqrt, "float", ALL, (0.01, 100)),
    ("reciprocal", _reciprocal, "float", ALL, (0.1, 10)),
    ("sin", lambda p, x: np.sin(x), "float", ALL, (-6, 6)),
    ("cos", lambda p, x: np.cos(x), "float", ALL, (-6, 6)),
    ("tan", lambda p, x: np.tan(x), "float", ALL, (-1.4, 1.4)),
    ("arcsin", lambda p, x: np.arcsin(x), "float", ALL, (-0.99, 0.99)),
    ("arccos", lambda p, x: np.arccos(x), "float", ALL, (-0.99, 0.99)),
    ("arctan", lambda p, x: np.arctan(x), "float", ALL, (-10, 10)),
    ("sinh", lambda p, x: np.sinh(x), "float", ALL, (-5, 5)),
    ("cosh", lambda p, x: np.cosh(x), "float", ALL, (-5, 5)),
    ("tanh", lambda p, x: np.tanh(x), "float", ALL, (-5, 5)),
    ("arcsinh", lambda p, x: np.arcsinh(x), "float", ALL, (-10, 10)),
    ("arccosh", lambda p, x: np.arccosh(x), "float", ALL, (1.01, 10)),
    ("arctanh", lambda p, x: np.arctanh(x), "float", ALL, (-0.99, 0.99)),
    ("degrees", lambda p, x: x * x.real.dtype.type(180 / math.pi), "float", ALL, None),
    ("radians", lambda p, x: x * x.real.dtype.type(math.pi / 180), "float", ALL, None),
    ("sigmoid", _sigmoid, "float", REAL, (-10, 10)),
    ("erf", _in_float(_erf), "float", REAL, (-3, 3)),
    ("erfinv", _in_float(_erfinv), "float", REAL, (-0.99, 0.99)),
    ("isnan", _float_test(None, np.isnan), "bool", ALL, None),
    ("isinf", _float_test(None, np.isinf), "bool", ALL, None),
    ("isfinite", _float_test(None, np.isfinite), "bool", ALL, None),
    ("isposinf", _isposinf, "bool", ALL, None),
    ("isneginf", _isneginf, "bool", ALL, None),
    ("logical_not", lambda p, x: np.logical_not(x), "bool", ALL, None),
    ("bitwise_invert", lambda p, x: np.invert(x), "same", INT_BOOL, None),
    ("stop_gradient", lambda p, x: x, "same", ALL, None),
    ("trunc", _trunc, "same", REAL, None),
]


def _unary_out_dtype(rule, d):
    if rule == "same":
        return d
    if rule == "bool":
        return dt.bool_
    if rule == "realpart":
        return dt.float32 if d is dt.complex64 else d
    # 'float'
    return dt.float32 if d.kind in "biu" else d


# Unary ops whose half-precision result MLX rounds at an intermediate step too (their references
# and renderers follow it); their half nodes carry {"half": dtype name}.
_HALF_STEPWISE = frozenset({"rsqrt", "sigmoid"})


def _make_unary(name, ref, rule, dtypes, domain):
    prim = register(Primitive(name, "unary", ref, dtypes=dtypes, domain=domain,
                              extra={"out": rule}))
    allowed = frozenset(dtypes)
    float_in = rule == "float"
    stepwise = name in _HALF_STEPWISE

    def op(a, /, *, stream=None):
        if not isinstance(a, array):
            a = operand(a)
        d = a._dtype
        if d not in allowed:
            raise _dtype_error(name, a)
        if float_in and d.kind in "biu":
            a = astype(a, dt.float32, stream=stream)
        params = {"half": d.name} if stepwise and d in (dt.float16, dt.bfloat16) else None
        return make_node(prim, (a,), params, a._shape, _unary_out_dtype(rule, d), resolve_stream(stream))

    op.__name__ = op.__qualname__ = name
    op.__doc__ = f"Elementwise {name} (MLX ``mlx.core.{name}``)."
    api(name, primitive=name)(op)
    return op


for _spec in _UNARY:
    globals()[_spec[0]] = _make_unary(*_spec)

ROUND = register(Primitive("round", "unary", _round_ref, dtypes=REAL + (dt.complex64,),
                           extra={"out": "same"}))


@api(primitive="round")
def round(a, /, decimals: int = 0, stream=None):
    a = to_array(a)
    return make_node(ROUND, (a,), {"decimals": int(decimals)}, a._shape, a._dtype, resolve_stream(stream))


# --- binary --------------------------------------------------------------------------------------

def _int_domain(fn):
    """Booleans compute as integers and come back as ``!= 0`` (MLX's bool arithmetic)."""
    def ref(p, x, y):
        if x.dtype == np.bool_:
            return fn(x.astype(np.int8), y.astype(np.int8)) != 0
        return fn(x, y)
    return ref


def _floor_divide(x, y):
    if x.dtype.kind in "iu":
        zero = y == 0
        q = np.floor_divide(x, np.where(zero, 1, y))
        return np.where(zero, 0, q).astype(x.dtype)
    return np.floor(x / y) if x.dtype.kind == "f" else x / y  # MLX: complex // is the quotient


def _remainder(x, y):
    if x.dtype.kind in "iu":
        zero = y == 0
        r = np.remainder(x, np.where(zero, 1, y))
        return np.where(zero, x, r).astype(x.dtype)  # x % 0 is x in MLX
    return np.remainder(x, y)


def _power(x, y):
    if x.dtype.kind in "iu":
        neg = y < 0 if x.dtype.kind == "i" else np.zeros(np.broadcast(x, y).shape, bool)
        r = np.power(x, np.where(neg, 0, y))
        return np.where(neg, 0, r).astype(x.dtype)
    return np.power(x, y)


def _logaddexp(x, y):
    if x.dtype.kind == "c":
        m = np.where(x.real > y.real, x, y)
        return m + np.log(np.exp(x - m) + np.exp(y - m))
    return np.logaddexp(x, y)


def _shift(fn):
    def ref(p, x, y):
        if x.dtype == np.bool_:
            x, y = x.astype(np.uint8), y.astype(np.uint8)
        bits = x.dtype.itemsize * 8
        big = (y >= bits) | (y < 0) if y.dtype.kind == "i" else (y >= bits)
        r = fn(x, np.where(big, 0, y).astype(y.dtype))
        if fn is np.right_shift:
            fill = np.where(x < 0, -1, 0).astype(x.dtype) if x.dtype.kind == "i" else np.zeros_like(r)
        else:
            fill = np.zeros_like(r)
        return np.where(big, fill, r).astype(x.dtype)
    return ref


# (name, reference, output rule, accepted dtypes, test domain)
#   'same': promoted dtype; 'float': promoted, then integers/bool as float32; 'bool': boolean result.
_BINARY = [
    ("add", _int_domain(np.add), "same", ALL, None),
    ("subtract", _int_domain(np.subtract), "same", ALL, None),
    ("multiply", _int_domain(np.multiply), "same", ALL, None),
    ("divide", lambda p, x, y: np.true_divide(x, y), "float", ALL, (0.5, 4)),
    ("floor_divide", _int_domain(_floor_divide), "same", ALL, (0.5, 4)),
    ("remainder", _int_domain(_remainder), "same", REAL, (0.5, 4)),
    ("power", _int_domain(_power), "same", ALL, (0.5, 2)),
    ("maximum", _int_domain(np.maximum), "same", ALL, None),
    ("minimum", _int_domain(np.minimum), "same", ALL, None),
    ("logaddexp", lambda p, x, y: _logaddexp(x, y), "float", ALL, (-10, 10)),
    ("arctan2", lambda p, x, y: np.arctan2(x, y), "float", REAL, None),
    ("logical_xor", lambda p, x, y: np.logical_xor(x, y), "bool", ALL, None),
    ("equal", lambda p, x, y: np.equal(x, y), "bool", ALL, None),
    ("not_equal", lambda p, x, y: np.not_equal(x, y), "bool", ALL, None),
    ("less", lambda p, x, y: np.less(x, y), "bool", ALL, None),
    ("less_equal", lambda p, x, y: np.less_equal(x, y), "bool", ALL, None),
    ("greater", lambda p, x, y: np.greater(x, y), "bool", ALL, None),
    ("greater_equal", lambda p, x, y: np.greater_equal(x, y), "bool", ALL, None),
    ("logical_and", lambda p, x, y: np.logical_and(x, y), "bool", ALL, None),
    ("logical_or", lambda p, x, y: np.logical_or(x, y), "bool", ALL, None),
    ("bitwise_and", lambda p, x, y: np.bitwise_and(x, y), "same", INT_BOOL, None),
    ("bitwise_or", lambda p, x, y: np.bitwise_or(x, y), "same", INT_BOOL, None),
    ("bitwise_xor", lambda p, x, y: np.bitwise_xor(x, y), "same", INT_BOOL, None),
    ("left_shift", _shift(np.left_shift), "same", INT_BOOL, (0, 8)),
    ("right_shift", _shift(np.right_shift), "same", INT_BOOL, (0, 8)),
]

_BITWISE = {"bitwise_and", "bitwise_or", "bitwise_xor", "left_shift", "right_shift"}


_PY_SCALARS = frozenset({bool, int, float})


def _make_binary(name, ref, rule, dtypes, domain):
    prim = register(Primitive(name, "binary", ref, dtypes=dtypes, domain=domain, extra={"out": rule}))
    allowed = frozenset(dtypes)
    promote = dt._PROMOTE
    bitwise = name in _BITWISE
    shifts = name in ("left_shift", "right_shift")

    def op(a, b, /, *, stream=None):
        if type(b) in _PY_SCALARS and isinstance(a, array):  # ``x * 0.5``: ``operands``' most common case
            b = weak_scalar(b, a._dtype)
        else:
            a, b = operands(a, b)
        d = promote[a._dtype.index][b._dtype.index]
        if d not in allowed:
            if bitwise:
                raise DtypeError(f"[{name}] Only allowed on integer or boolean types but got types "
                                 f"{a._dtype.name} and {b._dtype.name}.")
            if name == "remainder":
                raise DtypeError("[remainder] Complex type not supported.")
            raise DtypeError(f"[{name}] Not supported for {d.name}.")
        if shifts and d is dt.bool_:
            d = dt.uint8
        if rule == "float" and d.kind in "biu":
            d = dt.float32
        sa, sb = a._shape, b._shape
        shape = sa if sa == sb else _broadcast_two(sa, sb, "broadcast_shapes")
        if a._dtype is not d:
            a = astype(a, d, stream=stream)
        if b._dtype is not d:
            b = astype(b, d, stream=stream)
        out = dt.bool_ if rule == "bool" else d
        return make_node(prim, (a, b), None, shape, out,
                         current_stream() if stream is None else resolve_stream(stream))

    op.__name__ = op.__qualname__ = name
    op.__doc__ = f"Elementwise {name} with broadcasting (MLX ``mlx.core.{name}``)."
    api(name, primitive=name)(op)
    return op


for _spec in _BINARY:
    globals()[_spec[0]] = _make_binary(*_spec)


_bitwise_and_op = bitwise_and  # noqa: F821  (generated above)
_bitwise_or_op = bitwise_or  # noqa: F821
_bitwise_xor_op = bitwise_xor  # noqa: F821
_invert_op = bitwise_invert  # noqa: F821

# MLX's other names for the same operations (array API spellings).
for _alias, _op in {"acos": "arccos", "acosh": "arccosh", "asin": "arcsin", "asinh": "arcsinh",
                    "atan": "arctan", "atan2": "arctan2", "atanh": "arctanh", "pow": "power",
                    "conj": "conjugate", "bitwise_left_shift": "left_shift",
                    "bitwise_right_shift": "right_shift"}.items():
    globals()[_alias] = api(_alias, primitive=_op)(globals()[_op])


@api()
def positive(a, /, *, stream=None):
    if not isinstance(a, array):
        raise TypeError(f"positive(): incompatible function arguments: expected an array, "
                        f"got {type(a).__name__}.")
    return a


@api()
def divmod(a, b, /, *, stream=None):
    # Like MLX's DivMod, neither output carries a gradient.
    return [stop_gradient(floor_divide(a, b, stream=stream), stream=stream),  # noqa: F821
            stop_gradient(remainder(a, b, stream=stream), stream=stream)]  # noqa: F821


# --- ternary ------------------------------------------------------------------------------------

WHERE = register(Primitive("where", "ternary", lambda p, c, x, y: np.where(c, x, y), compute=False,
                           doc="Select from x where condition is true, else from y."))


@api(primitive="where")
def where(condition, x, y, /, *, stream=None):
    condition = to_array(condition)
    x, y = operands(x, y)
    d = dt.promote_types(x._dtype, y._dtype)
    shape = broadcast_shapes(condition._shape, x._shape, y._shape)
    c = cast(condition, dt.bool_, stream)
    x = cast(x, d, stream)
    y = cast(y, d, stream)
    return make_node(WHERE, (c, x, y), None, shape, d, resolve_stream(stream))


@api()
def clip(a, /, a_min, a_max, *, stream=None):
    if a_min is None and a_max is None:
        raise ValueError("[clip] One of a_min or a_max must be provided.")
    a = to_array(a)
    if a_min is not None:
        a = maximum(a, a_min, stream=stream)  # noqa: F821
    if a_max is not None:
        a = minimum(a, a_max, stream=stream)  # noqa: F821
    return a


def _nan_to_num_ref(p, x):
    if x.dtype.kind not in "fc":
        return x
    info = np.finfo(x.dtype)
    posinf = info.max if p["posinf"] is None else p["posinf"]
    neginf = info.min if p["neginf"] is None else p["neginf"]
    return np.nan_to_num(x, nan=p["nan"], posinf=posinf, neginf=neginf)


NAN_TO_NUM = register(Primitive("nan_to_num", "unary", _nan_to_num_ref,
                                dtypes=tuple(d for d in REAL if d is not dt.float64),
                                extra={"out": "same"}))


@api(primitive="nan_to_num")
def nan_to_num(a, nan: float = 0.0, posinf=None, neginf=None, *, stream=None):
    a = to_array(a)
    if a._dtype is dt.complex64 or a._dtype is dt.float64:
        raise DtypeError(f"[nan_to_num] Does not yet support given type: {a._dtype.name}.")
    if a._dtype is dt.bfloat16:
        # bfloat16's range, not float32's, bounds the replacement of infinities.
        bf = dt.finfo(dt.bfloat16)
        posinf = bf.max if posinf is None else posinf
        neginf = bf.min if neginf is None else neginf
    params = {"nan": float(nan), "posinf": posinf, "neginf": neginf}
    return make_node(NAN_TO_NUM, (a,), params, a._shape, a._dtype, resolve_stream(stream))


# --- comparisons built from the primitives above -------------------------------------------------

@api()
def isclose(a, b, /, rtol: float = 1e-05, atol: float = 1e-08, *, equal_nan: bool = False, stream=None):
    a, b = operands(a, b)
    diff = abs(subtract(a, b, stream=stream), stream=stream)  # noqa: F821
    bound = add(atol, multiply(rtol, abs(b, stream=stream), stream=stream), stream=stream)  # noqa: F821
    # An infinity is close only to itself: inf - (-inf) is inf, which the bound inf would admit.
    any_inf = logical_or(isinf(a, stream=stream), isinf(b, stream=stream), stream=stream)  # noqa: F821
    out = logical_and(less_equal(diff, bound, stream=stream), logical_not(any_inf, stream=stream),  # noqa: F821
                      stream=stream)
    out = logical_or(out, equal(a, b, stream=stream), stream=stream)  # noqa: F821
    if equal_nan:
        both = logical_and(isnan(a, stream=stream), isnan(b, stream=stream), stream=stream)  # noqa: F821
        out = logical_or(out, both, stream=stream)  # noqa: F821
    return out


@api()
def allclose(a, b, /, rtol: float = 1e-05, atol: float = 1e-08, *, equal_nan: bool = False, stream=None):
    from .reduction import all as all_

    return all_(isclose(a, b, rtol=rtol, atol=atol, equal_nan=equal_nan, stream=stream), stream=stream)


@api()
def array_equal(a, b, /, equal_nan: bool = False, *, stream=None):
    from .reduction import all as all_

    a, b = to_array(a), to_array(b)
    if a._shape != b._shape:
        from .creation import full

        return full((), False, dt.bool_)
    d = dt.promote_types(a._dtype, b._dtype)
    a, b = cast(a, d, stream), cast(b, d, stream)
    eq = equal(a, b, stream=stream)  # noqa: F821
    if equal_nan:
        eq = logical_or(eq, logical_and(isnan(a), isnan(b)))  # noqa: F821
    return all_(eq, stream=stream)


# --- gradient rules -----------------------------------------------------------------------------

def _attach_gradients():
    from . import _autodiff as ad
    from ._autodiff import O, conj, unbroadcast
    from ._base import PRIMITIVES

    prims = {name: PRIMITIVES[name] for name in [s[0] for s in _UNARY] + [s[0] for s in _BINARY]}
    ln2, ln10 = math.log(2.0), math.log(10.0)
    derivs = {
        "square": lambda x, y: 2 * x,
        "exp": lambda x, y: y,
        "expm1": lambda x, y: y + 1,
        "log": lambda x, y: O.reciprocal(x),
        "log2": lambda x, y: O.reciprocal(x * ln2),
        "log10": lambda x, y: O.reciprocal(x * ln10),
        "log1p": lambda x, y: O.reciprocal(x + 1),
        "sqrt": lambda x, y: 0.5 / y,
        "rsqrt": lambda x, y: -0.5 * y / x,
        "reciprocal": lambda x, y: -(y * y),
        "sin": lambda x, y: O.cos(x),
        "cos": lambda x, y: -O.sin(x),
        "tan": lambda x, y: O.reciprocal(O.square(O.cos(x))),
        "arcsin": lambda x, y: O.rsqrt(1 - x * x),
        "arccos": lambda x, y: -O.rsqrt(1 - x * x),
        "arctan": lambda x, y: O.reciprocal(1 + x * x),
        "sinh": lambda x, y: O.cosh(x),
        "cosh": lambda x, y: O.sinh(x),
        "tanh": lambda x, y: 1 - y * y,
        "arcsinh": lambda x, y: O.rsqrt(x * x + 1),
        "arccosh": lambda x, y: O.rsqrt(x * x - 1),
        "arctanh": lambda x, y: O.reciprocal(1 - x * x),
        "degrees": lambda x, y: O.full(x._shape, 180.0 / math.pi, x._dtype),
        "radians": lambda x, y: O.full(x._shape, math.pi / 180.0, x._dtype),
        "sigmoid": lambda x, y: y * (1 - y),
        "erf": lambda x, y: (2.0 / math.sqrt(math.pi)) * O.exp(-(x * x)),
        "erfinv": lambda x, y: (math.sqrt(math.pi) / 2.0) * O.exp(y * y),
    }
    for name, d in derivs.items():
        ad.elementwise(prims[name], d)
    for name in ("sign", "floor", "ceil", "isnan", "isinf", "isfinite", "isposinf", "isneginf",
                 "logical_not", "bitwise_invert", "stop_gradient", "equal", "not_equal", "less",
                 "less_equal", "greater", "greater_equal", "logical_and", "logical_or", "bitwise_and",
                 "bitwise_or", "bitwise_xor", "left_shift", "right_shift", "floor_divide", "trunc",
                 "logical_xor"):
        ad.nondifferentiable(prims[name])
    ad.nondifferentiable(ROUND)

    def identity(node, cot, argnums):
        return [cot]

    def same_jvp(node, tangents, argnums):
        return tangents[0]

    COPY.vjp, COPY.jvp = identity, same_jvp
    prims["negative"].vjp = lambda node, cot, argnums: [-cot]
    prims["negative"].jvp = lambda node, ts, argnums: -ts[0]
    prims["conjugate"].vjp = lambda node, cot, argnums: [O.conjugate(cot)]
    prims["conjugate"].jvp = lambda node, ts, argnums: O.conjugate(ts[0])

    ASTYPE.vjp = lambda node, cot, argnums: [astype(cot, node._inputs[0]._dtype)]
    ASTYPE.jvp = lambda node, ts, argnums: astype(ts[0], node._dtype)

    def abs_vjp(node, cot, argnums):
        x = node._inputs[0]
        if x._dtype.kind == "c":
            return [multiply(astype(cot, x._dtype), _safe_div(x, node))]  # noqa: F821
        return [cot * sign(x)]  # noqa: F821

    def abs_jvp(node, ts, argnums):
        x, t = node._inputs[0], ts[0]
        if x._dtype.kind == "c":
            return _safe_div(real(multiply(O.conjugate(x), t)), node)  # noqa: F821
        return t * sign(x)  # noqa: F821

    def _safe_div(a, mag):
        zero = equal(mag, 0)  # noqa: F821
        return where(zero, 0, divide(a, where(zero, 1, mag)))  # noqa: F821

    prims["abs"].vjp, prims["abs"].jvp = abs_vjp, abs_jvp

    def real_vjp(node, cot, argnums):
        x = node._inputs[0]
        return [astype(cot, x._dtype)]

    def imag_vjp(node, cot, argnums):
        x = node._inputs[0]
        if x._dtype.kind == "c":
            return [multiply(astype(cot, x._dtype), 1j)]  # noqa: F821
        return [O.zeros_like(x)]

    prims["real"].vjp, prims["real"].jvp = real_vjp, lambda node, ts, argnums: real(ts[0])  # noqa: F821
    prims["imag"].vjp, prims["imag"].jvp = imag_vjp, lambda node, ts, argnums: imag(ts[0])  # noqa: F821

    def nan_to_num_vjp(node, cot, argnums):
        return [where(isfinite(node._inputs[0]), cot, 0)]  # noqa: F821

    NAN_TO_NUM.vjp = nan_to_num_vjp
    NAN_TO_NUM.jvp = lambda node, ts, argnums: where(isfinite(node._inputs[0]), ts[0], 0)  # noqa: F821

    # Binary ops: their inputs broadcast implicitly, so gradients are summed back to each shape.
    def binary(name, partials):
        """partials(x, y, out) -> (d out/dx, d out/dy) as lazily built factors."""
        def vjp(node, cot, argnums):
            x, y = node._inputs
            grads = partials(x, y, node, cot)
            return [unbroadcast(grads[i], node._inputs[i]._shape) for i in argnums]

        def jvp(node, tangents, argnums):
            x, y = node._inputs
            out = None
            for i, t in zip(argnums, tangents):
                term = partials_jvp[name](x, y, node, t, i)
                out = term if out is None else add(out, term)  # noqa: F821
            return out

        prims[name].vjp, prims[name].jvp = vjp, jvp

    def pow_dy(x, y, out):
        return where(greater(x, 0), log(where(greater(x, 0), x, 1)), 0) * out  # noqa: F821

    def pow_dx(x, y, out):
        return y * power(x, y - 1)  # noqa: F821

    # At a tie the gradient goes to the second argument, as in MLX: relu(x) = maximum(x, 0) has
    # gradient 0 at x = 0, and leaky_relu's maximum(slope * x, x) gradient 1.
    def max_mask(x, y, first):
        return greater(x, y) if first else less_equal(x, y)  # noqa: F821

    def min_mask(x, y, first):
        return less(x, y) if first else greater_equal(x, y)  # noqa: F821

    def atan2_den(x, y):
        return x * x + y * y

    vjps = {
        "add": lambda x, y, o, c: (c, c),
        "subtract": lambda x, y, o, c: (c, -c),
        "multiply": lambda x, y, o, c: (conj(y) * c, conj(x) * c),
        "divide": lambda x, y, o, c: (c / conj(y), -c * conj(o / y)),
        "remainder": lambda x, y, o, c: (c, -c * floor_divide(x, y)),  # noqa: F821
        "power": lambda x, y, o, c: (c * conj(pow_dx(x, y, o)), c * conj(pow_dy(x, y, o))),
        "maximum": lambda x, y, o, c: (where(max_mask(x, y, True), c, 0),  # noqa: F821
                                       where(max_mask(x, y, False), c, 0)),  # noqa: F821
        "minimum": lambda x, y, o, c: (where(min_mask(x, y, True), c, 0),  # noqa: F821
                                       where(min_mask(x, y, False), c, 0)),  # noqa: F821
        "logaddexp": lambda x, y, o, c: (c * exp(x - o), c * exp(y - o)),  # noqa: F821
        "arctan2": lambda x, y, o, c: (c * y / atan2_den(x, y), -c * x / atan2_den(x, y)),
    }
    partials_jvp = {
        "add": lambda x, y, o, t, i: t,
        "subtract": lambda x, y, o, t, i: t if i == 0 else -t,
        "multiply": lambda x, y, o, t, i: t * (y if i == 0 else x),
        "divide": lambda x, y, o, t, i: t / y if i == 0 else -t * o / y,
        "remainder": lambda x, y, o, t, i: t if i == 0 else -t * floor_divide(x, y),  # noqa: F821
        "power": lambda x, y, o, t, i: t * (pow_dx(x, y, o) if i == 0 else pow_dy(x, y, o)),
        "maximum": lambda x, y, o, t, i: where(max_mask(x, y, i == 0), t, 0),  # noqa: F821
        "minimum": lambda x, y, o, t, i: where(min_mask(x, y, i == 0), t, 0),  # noqa: F821
        "logaddexp": lambda x, y, o, t, i: t * exp((x if i == 0 else y) - o),  # noqa: F821
        "arctan2": lambda x, y, o, t, i: t * (y if i == 0 else -x) / atan2_den(x, y),
    }
    for name, partials in vjps.items():
        binary(name, partials)

    def where_vjp(node, cot, argnums):
        c, x, y = node._inputs
        out = []
        for i in argnums:
            if i == 0:
                out.append(O.zeros_like(c))
            else:
                g = where(c, cot, 0) if i == 1 else where(c, 0, cot)  # noqa: F821
                out.append(unbroadcast(g, node._inputs[i]._shape))
        return out

    def where_jvp(node, tangents, argnums):
        c, x, y = node._inputs
        tx = ty = None
        for i, t in zip(argnums, tangents):
            if i == 1:
                tx = t
            elif i == 2:
                ty = t
        if tx is None and ty is None:
            return O.zeros(node._shape, node._dtype)
        zero = O.zeros((), (tx if tx is not None else ty)._dtype)
        return where(c, zero if tx is None else tx, zero if ty is None else ty)  # noqa: F821

    WHERE.vjp, WHERE.jvp = where_vjp, where_jvp


_attach_gradients()
