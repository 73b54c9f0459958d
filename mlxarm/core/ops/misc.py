"""Small core ops that fit no other family: softmax and depends.

softmax follows MLX's two code paths, whose dtypes and numerics differ: reducing over the last axis
(other reduced axes being of size 1) runs the fused kernel, which returns a floating type (integers and
booleans give float32) and, for half types unless ``precise``, computes exp and the normalization in
the half type itself; any other set of axes is the composite max/exp/sum/divide, cast back to the
input's dtype (so integer inputs truncate).
"""
from __future__ import annotations

import numpy as np

from ._base import DtypeError, Primitive, api, dt, make_node, register, resolve_stream, to_array
from ..errors import AxisError

_HALF = (dt.float16, dt.bfloat16)


def _softmax_ref(p, x):
    axes, half = p["axes"], p["half"]
    if x.size == 0:
        return x.astype(np.float32) if x.dtype.kind in "biu" else x
    if x.dtype.kind in "iu" and not p["fused"]:
        # The composite subtracts in the integer type (unsigned differences wrap), then exps in float.
        x = (x - np.max(x, axis=axes, keepdims=True)).astype(np.float32)
    elif x.dtype.kind in "biu" or x.dtype == np.float16:  # precise half inputs compute in float32
        x = x.astype(np.float32)
    if half is None:
        m = np.max(x, axis=axes, keepdims=True) if x.dtype.kind != "c" else _complex_max(x, axes)
        e = np.exp(x - m)
        return e / np.sum(e, axis=axes, keepdims=True)
    # Half precision throughout, as MLX's half kernels do (x arrives widened to float32).
    x = x.astype(np.float32)
    m = np.max(x, axis=axes, keepdims=True)
    e = dt.round_half(np.exp(dt.round_half(x - m, half)), half)
    if p["fused"] and half == "float16":
        # MLX's kernel adds the row's exponentials one at a time in float16 (numpy's float16 accumulate
        # rounds each step the same way); bfloat16 has no such numpy loop: its sum is rounded once.
        s = np.add.accumulate(e.astype(np.float16), axis=-1)[..., -1:].astype(np.float32)
    else:
        s = dt.round_half(np.sum(e, axis=axes, keepdims=True), half)
    if p["fused"]:
        return dt.round_half(e * dt.round_half(1 / s, half), half)
    return dt.round_half(e / s, half)


def _complex_max(x, axes):
    """MLX orders complex numbers lexicographically (real part, then imaginary)."""
    flat = np.moveaxis(x, axes, tuple(range(-len(axes), 0)))
    flat = flat.reshape(flat.shape[:x.ndim - len(axes)] + (-1,))
    idx = np.lexsort((flat.imag, flat.real), axis=-1)[..., -1:]
    m = np.take_along_axis(flat, idx, axis=-1)
    shape = [1 if i in axes else n for i, n in enumerate(x.shape)]
    return m.reshape(shape)


def _softmax_cases(rng, d):
    from .linalg import sample

    if d.kind == "c":
        return [("softmax", (sample(rng, d, (2, 3)),), {"axis": (0, 1)})]
    scale = 3.0 if d.kind == "f" else 1.0
    if d.kind == "u":  # the composite's wrapped differences overflow exp; its casts of nan differ
        return [("softmax", (sample(rng, d, (3, 7)),), {"axis": -1})]
    return [
        ("softmax", (sample(rng, d, (3, 7), scale),), {"axis": -1}),
        ("softmax", (sample(rng, d, (3, 7), scale),), {"axis": -1, "precise": True}),
        ("softmax", (sample(rng, d, (2, 3, 4), scale),), {}),
        ("softmax", (sample(rng, d, (2, 3, 4), scale),), {"axis": 1}),
        ("softmax", (sample(rng, d, (1, 5), scale),), {"axis": (0, 1)}),
        ("softmax", (sample(rng, d, (4, 5), scale),), {"axis": [0, 1], "precise": True}),
    ]


SOFTMAX = register(Primitive("softmax", "kernel", _softmax_ref, domain=(-5, 5),
                             doc="exp(x - max) / sum(exp(x - max)) over the given axes.",
                             extra={"cases": _softmax_cases}))


def _softmax_axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    if axes and not ndim:
        raise ValueError("[softmax] Received non-empty axes for array with 0 dimensions.")
    out = []
    for ax in axes:
        if not -ndim <= ax < ndim:
            raise AxisError(f"Invalid axis {ax} for array with {ndim} dimensions.")
        out.append(ax % ndim)
    if len(set(out)) != len(out):
        raise ValueError("Duplicate axes detected in reduction.")
    return tuple(sorted(out))


@api(primitive="softmax")
def softmax(a, /, axis=None, *, precise: bool = False, stream=None):
    a = to_array(a)
    shape, d = a._shape, a._dtype
    axes = _softmax_axes(axis, len(shape))
    fused = bool(axes) and axes[-1] == len(shape) - 1 and all(shape[i] == 1 for i in axes[:-1])
    out = dt.float32 if fused and d.kind in "biu" else d
    half = d.name if d in _HALF and not precise else None
    params = {"axes": axes, "half": half, "fused": fused}
    return make_node(SOFTMAX, (a,), params, shape, out, resolve_stream(stream))


# --- depends ---------------------------------------------------------------------------------------

def _depends_cases(rng, d):
    from .linalg import sample

    return [("depends", (sample(rng, d, (2, 3)), sample(rng, d, (4,))), {}),
            ("depends", ([sample(rng, d, (2,)), sample(rng, d, (1,))], [sample(rng, d, (3,))]), {})]


DEPENDS = register(Primitive("depends", "movement", lambda p, x, *deps: x, compute=False,
                             doc="Its first input, available only once the others are computed.",
                             extra={"cases": _depends_cases}))


@api(primitive="depends")
def depends(inputs, dependencies):
    single = not isinstance(inputs, (list, tuple))
    ins = [to_array(inputs)] if single else [to_array(x) for x in inputs]
    deps = ((to_array(dependencies),) if not isinstance(dependencies, (list, tuple))
            else tuple(to_array(x) for x in dependencies))
    outs = [make_node(DEPENDS, (x,) + deps, None, x._shape, x._dtype, x._stream) for x in ins]
    return outs[0] if single else outs


# --- gradient rules -----------------------------------------------------------------------------

def _attach_gradients():
    from ._autodiff import O

    def softmax_vjp(node, cot, argnums):
        axes = node._params["axes"]
        return [node * (cot - O.sum(cot * node, axis=axes, keepdims=True))]

    def softmax_jvp(node, tangents, argnums):
        t = tangents[0]
        axes = node._params["axes"]
        return node * (t - O.sum(t * node, axis=axes, keepdims=True))

    SOFTMAX.vjp, SOFTMAX.jvp = softmax_vjp, softmax_jvp

    def depends_vjp(node, cot, argnums):
        return [cot if i == 0 else O.zeros_like(node._inputs[i]) for i in argnums]

    def depends_jvp(node, tangents, argnums):
        for i, t in zip(argnums, tangents):
            if i == 0:
                return t
        return O.zeros(node._shape, tangents[0]._dtype)

    DEPENDS.vjp, DEPENDS.jvp = depends_vjp, depends_jvp


_attach_gradients()


# --- hadamard_transform ----------------------------------------------------------------------------

# The Hadamard matrices of orders 12, 20 and 28 that MLX composes with a power-of-two Walsh-Hadamard
# transform (n = m * 2**k is kron(H_m, H_2**k)), one row per string.
_HADAMARD_ROWS = {
    12: "+-++++++++++ --+-+-+-+-+- +++-++----++ +---+--+-++- +++++-++---- +-+---+--+-+ "
        "++--+++-++-- +--++---+--+ ++----+++-++ +--+-++---+- ++++----+++- +-+--+-++---",
    20: "+----+----++--++-++- -+----+---+++---+-++ --+----+---+++-+-+-+ ---+----+---+++++-+- "
        "----+----++--++-++-+ -+++++-----+--+++--+ +-+++-+---+-+--+++-- ++-++--+---+-+--+++- "
        "+++-+---+---+-+--+++ ++++-----++--+-+--++ --++-+-++-+-----++++ ---++-+-++-+---+-+++ "
        "+---++-+-+--+--++-++ ++---++-+----+-+++-+ -++---++-+----+++++- -+--+--++-+----+---- "
        "+-+-----++-+----+--- -+-+-+---+--+----+-- --+-+++------+----+- +--+--++------+----+",
    28: "+------++----++-+--+-+--++-- -+-----+++-----+-+--+-+--++- --+-----+++---+-+-+----+--++ "
        "---+-----+++---+-+-+-+--+--+ ----+-----+++---+-+-+++--+-- -----+-----++++--+-+--++--+- "
        "------++----++-+--+-+--++--+ --++++-+-------++--+++-+--+- ---++++-+-----+-++--+-+-+--+ "
        "+---+++--+----++-++--+-+-+-- ++---++---+----++-++--+-+-+- +++---+----+----++-++--+-+-+ "
        "++++--------+-+--++-++--+-+- -++++--------+++--++--+--+-+ -+-++-++--++--+--------++++- "
        "+-+-++--+--++--+--------++++ -+-+-++--+--++--+----+---+++ +-+-+-++--+--+---+---++---++ "
        "++-+-+-++--+------+--+++---+ -++-+-+-++--+------+-++++--- +-++-+---++--+------+-++++-- "
        "-++--++-+-++-+++----++------ +-++--++-+-++-+++-----+----- ++-++---+-+-++-+++-----+---- "
        "-++-++-+-+-+-+--+++-----+--- --++-++++-+-+----+++-----+-- +--++-+-++-+-+----+++-----+- "
        "++--++-+-++-+-+----++------+",
}


def _hadamard_matrix(m: int) -> np.ndarray:
    return np.array([[1.0 if c == "+" else -1.0 for c in row]
                     for row in _HADAMARD_ROWS[m].split()], np.float32)


def _hadamard_factor(n: int):
    """(m, 2**k) with n = m * 2**k and m in (1, 12, 20, 28), or None."""
    for m in (1, 12, 20, 28):
        if n % m == 0:
            p = n // m
            if p & (p - 1) == 0:
                return m, p
    return None


def _hadamard_ref(p, x):
    m, pow2 = p["m"], p["pow2"]
    shape = x.shape
    y = x.astype(np.float32).reshape(-1, m, pow2)
    h = 1
    while h < pow2:  # in-place butterflies of the Walsh-Hadamard transform
        y = y.reshape(y.shape[0], m, pow2 // (2 * h), 2, h)
        y = np.stack([y[..., 0, :] + y[..., 1, :], y[..., 0, :] - y[..., 1, :]], axis=-2)
        h *= 2
    y = y.reshape(-1, m, pow2)
    if m > 1:
        y = np.einsum("ij,bjk->bik", _hadamard_matrix(m), y)
    return (y * np.float32(p["scale"])).reshape(shape)


def _hadamard_cases(rng, d):
    from .linalg import sample

    if d.kind != "f" or d is dt.float64:
        return []
    return [("hadamard_transform", (sample(rng, d, (3, 16)),), {}),
            ("hadamard_transform", (sample(rng, d, (2, 24)),), {"scale": 0.5}),
            ("hadamard_transform", (sample(rng, d, (40,)),), {}),
            ("hadamard_transform", (sample(rng, d, (2, 56)),), {"scale": 0.25})]


HADAMARD = register(Primitive(
    "hadamard_transform", "kernel", _hadamard_ref,
    dtypes=(dt.float16, dt.bfloat16, dt.float32),
    doc="The Walsh-Hadamard transform along the last axis, scaled.",
    extra={"cases": _hadamard_cases}))


@api(primitive="hadamard_transform")
def hadamard_transform(a, scale=None, stream=None):
    from .shape import _array_arg
    from ._base import cast

    a = _array_arg(a, "hadamard_transform")
    if a.size == 0:
        raise ValueError("[hadamard_transform] Does not support empty arrays.")
    n = a._shape[-1] if a.ndim else 1
    scale = 1.0 / np.sqrt(n) if scale is None else float(scale)
    if n == 1 and scale == 1.0:
        return a
    factor = _hadamard_factor(n)
    if factor is None:
        raise ValueError("[hadamard] Only supports n = m*2^k where m in (1, 12, 20, 28).")
    if a._dtype is dt.float64:
        raise DtypeError("[hadamard] Unsupported type.")
    out = a._dtype if a._dtype in (dt.float16, dt.bfloat16, dt.float32) else dt.float32
    params = {"m": factor[0], "pow2": factor[1], "scale": scale}
    return make_node(HADAMARD, (cast(a, out, stream),), params, a._shape, out,
                     resolve_stream(stream))


def _hadamard_vjp(node, cot, argnums):
    return [hadamard_transform(cot, node._params["scale"])]


def _hadamard_jvp(node, tangents, argnums):
    return hadamard_transform(tangents[0], node._params["scale"])


HADAMARD.vjp, HADAMARD.jvp = _hadamard_vjp, _hadamard_jvp


# --- fp8 (e4m3) conversions -------------------------------------------------------------------------

def _fp8_table() -> np.ndarray:
    """The float32 value of every e4m3 code: 4 exponent bits (bias 7), 3 mantissa bits, no
    infinities, NaN at 0x7f and 0xff."""
    code = np.arange(256)
    exp, man = (code >> 3) & 0xF, (code & 7).astype(np.float64)
    mag = np.where(exp == 0, man * 2.0**-9, (1 + man / 8) * 2.0 ** (exp - 7))
    mag[(code & 0x7F) == 0x7F] = np.nan
    return np.where(code & 0x80, -mag, mag).astype(np.float32)


_FP8_VALUES = _fp8_table()
_FP8_POSITIVE = _FP8_VALUES[:0x7F].astype(np.float64)  # codes 0..126, increasing up to 448


def _to_fp8_ref(p, x):
    mag = np.abs(x.astype(np.float64))
    mag = np.where(np.isnan(mag), np.inf, mag)  # MLX saturates NaN like infinity
    hi = np.clip(np.searchsorted(_FP8_POSITIVE, mag), 1, 0x7E)
    lo = hi - 1
    d_lo, d_hi = mag - _FP8_POSITIVE[lo], _FP8_POSITIVE[hi] - mag
    code = np.where((d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0)) | (mag >= 448), hi, lo)
    return (code | np.where(np.signbit(x), 0x80, 0)).astype(np.uint8)


def _to_fp8_cases(rng, d):
    from .linalg import sample

    # MLX misreads float64 inputs, so float64 is declared but not compared.
    if d.kind != "f" or d is dt.float64:
        return []
    return [("to_fp8", (sample(rng, d, (4, 33), 100.0),), {})]


def _from_fp8_cases(rng, d):
    codes = rng.integers(0, 256, (4, 32)).astype(np.uint8)
    return [("from_fp8", (codes,), {}), ("from_fp8", (codes, dt.float32), {}),
            ("from_fp8", (codes,), {"dtype": dt.float16})]


TO_FP8 = register(Primitive("to_fp8", "kernel", _to_fp8_ref,
                            dtypes=(dt.float16, dt.bfloat16, dt.float32, dt.float64),
                            doc="Round to the nearest fp8 (e4m3) code, saturating at 448.",
                            extra={"cases": _to_fp8_cases}))
FROM_FP8 = register(Primitive("from_fp8", "kernel", lambda p, x: _FP8_VALUES[x], dtypes=(dt.uint8,),
                              doc="The value of fp8 (e4m3) codes.", extra={"cases": _from_fp8_cases}))


@api(primitive="to_fp8")
def to_fp8(x, *, stream=None):
    from .shape import _array_arg

    x = _array_arg(x, "to_fp8")
    if x._dtype.kind != "f":
        raise DtypeError("[to_fp8] Only real floating types are supported but x.dtype() == "
                         f"{x._dtype.name}.")
    return make_node(TO_FP8, (x,), None, x._shape, dt.uint8, resolve_stream(stream))


@api(primitive="from_fp8")
def from_fp8(x, dtype=dt.bfloat16, *, stream=None):
    from .shape import _array_arg

    x = _array_arg(x, "from_fp8")
    dtype = dt.as_dtype(dtype)
    if x._dtype is not dt.uint8:
        raise DtypeError(f"[from_fp8] Input must have type uint8 but x.dtype() == {x._dtype.name}.")
    if dtype.kind != "f":
        raise DtypeError("[from_fp8] Only real floating types are supported but dtype == "
                         f"{dtype.name}.")
    return make_node(FROM_FP8, (x,), None, x._shape, dtype, resolve_stream(stream))
