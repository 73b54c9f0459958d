"""Movement primitives: views of their input (index maps, never copies), and the ops built on them."""
from __future__ import annotations

import numpy as np

from ._base import (Primitive, api, array, dt, fmt_shape, make_node, normalize_axis, register,
                    resolve_stream, to_array)


def _shape_arg(shape) -> tuple:
    if isinstance(shape, int):
        return (shape,)
    return tuple(int(s) for s in shape)


# --- reshape ---------------------------------------------------------------------------------------

RESHAPE = register(Primitive("reshape", "movement", lambda p, x: x.reshape(p["shape"]), compute=False))


def _resolve_reshape(size: int, shape: tuple, op: str = "reshape") -> tuple:
    infer = [i for i, s in enumerate(shape) if s == -1]
    if len(infer) > 1:
        raise ValueError(f"[{op}] Reshape can only infer one dimension.")
    known = 1
    for s in shape:
        if s != -1:
            if s < 0:
                raise ValueError(f"[{op}] Invalid dimension {s} in shape {fmt_shape(shape)}.")
            known *= s
    if infer:
        if known == 0 or size % known:
            raise ValueError(f"[{op}] Cannot infer the shape of an array of size {size} into shape "
                             f"{fmt_shape(shape)}.")
        shape = tuple(size // known if s == -1 else s for s in shape)
    elif known != size:
        raise ValueError(f"[{op}] Cannot reshape array of size {size} into shape {fmt_shape(shape)}.")
    return shape


@api(primitive="reshape")
def reshape(a, /, shape, *, stream=None):
    a = to_array(a)
    shape = _resolve_reshape(a.size, _shape_arg(shape))
    if shape == a._shape:
        return a
    return make_node(RESHAPE, (a,), {"shape": shape}, shape, a._dtype, resolve_stream(stream))


# --- transpose ---------------------------------------------------------------------------------------

TRANSPOSE = register(Primitive("transpose", "movement", lambda p, x: x.transpose(p["axes"]), compute=False))


@api(primitive="transpose")
def transpose(a, /, axes=None, *, stream=None):
    a = to_array(a)
    nd = a.ndim
    if axes is None:
        axes = tuple(range(nd - 1, -1, -1))
    else:
        axes = tuple(axes)
        if len(axes) != nd:
            raise ValueError(f"[transpose] Recived {len(axes)} axes for array with {nd} dimensions.")
        axes = tuple(normalize_axis(ax, nd, "transpose") for ax in axes)
        if len(set(axes)) != nd:
            raise ValueError("[transpose] Repeat axes not allowed in transpose.")
    if axes == tuple(range(nd)):
        return a
    shape = tuple(a._shape[i] for i in axes)
    return make_node(TRANSPOSE, (a,), {"axes": axes}, shape, a._dtype, resolve_stream(stream))


@api()
def swapaxes(a, /, axis1: int, axis2: int, *, stream=None):
    a = to_array(a)
    nd = a.ndim
    i, j = normalize_axis(axis1, nd, "swapaxes"), normalize_axis(axis2, nd, "swapaxes")
    axes = list(range(nd))
    axes[i], axes[j] = axes[j], axes[i]
    return transpose(a, axes, stream=stream)


# --- broadcast ---------------------------------------------------------------------------------------

BROADCAST = register(Primitive("broadcast_to", "movement",
                               lambda p, x: np.broadcast_to(x, p["shape"]), compute=False))


@api(primitive="broadcast_to")
def broadcast_to(a, /, shape, *, stream=None):
    a = to_array(a)
    shape = _shape_arg(shape)
    if shape == a._shape:
        return a
    if len(shape) < a.ndim:
        raise ValueError(f"[broadcast_shapes] Shapes {fmt_shape(a._shape)} and {fmt_shape(shape)} "
                         "cannot be broadcast.")
    for s, t in zip(a._shape[::-1], shape[::-1]):
        if s != t and s != 1:
            raise ValueError(f"[broadcast_shapes] Shapes {fmt_shape(a._shape)} and {fmt_shape(shape)} "
                             "cannot be broadcast.")
    return make_node(BROADCAST, (a,), {"shape": shape}, shape, a._dtype, resolve_stream(stream))
