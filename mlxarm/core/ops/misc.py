"""Small core ops that fit no other family: softmax and depends.

softmax follows MLX's two code paths, whose dtypes and numerics differ: reducing over the last axis
(other reduced axes being of size 1) runs the fused kernel, which returns a floating type (integers and
booleans give float32) and, for half types unless ``precise``, computes exp and the normalization in
the half type itself; any other set of axes is the composite max/exp/sum/divide, cast back to the
input's dtype (so integer inputs truncate).
"""
from __future__ import annotations

import numpy as np

from ._base import Primitive, api, dt, make_node, register, resolve_stream, to_array

_HALF = (dt.float16, dt.bfloat16)


def _round_half(x: np.ndarray, half: str) -> np.ndarray:
    if half == "float16":
        return x.astype(np.float16).astype(np.float32)
    return dt.bf16_to_f32(dt.f32_to_bf16(x))


def _softmax_ref(p, x):
    axes, half = p["axes"], p["half"]
    if x.size == 0:
        return x.astype(np.float32) if x.dtype.kind in "biu" else x
    if x.dtype.kind in "iu" and not p["fused"]:
        # The composite subtracts in the integer type (unsigned differences wrap), then exps in float.
        x = (x - np.max(x, axis=axes, keepdims=True)).astype(np.float32)
    elif x.dtype.kind in "biu":
        x = x.astype(np.float32)
    if half is None:
        m = np.max(x, axis=axes, keepdims=True) if x.dtype.kind != "c" else _complex_max(x, axes)
        e = np.exp(x - m)
        return e / np.sum(e, axis=axes, keepdims=True)
    # Half precision throughout, as MLX's half kernels do (x arrives widened to float32).
    x = x.astype(np.float32)
    m = np.max(x, axis=axes, keepdims=True)
    e = _round_half(np.exp(_round_half(x - m, half)), half)
    s = _round_half(np.sum(e, axis=axes, keepdims=True), half)
    if p["fused"]:
        return _round_half(e * _round_half(1 / s, half), half)
    return _round_half(e / s, half)


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
    out = []
    for ax in axes:
        if not -ndim <= ax < ndim:
            raise IndexError(f"Invalid axis {ax} for array with {ndim} dimensions.")
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
