"""Helpers every op module uses: argument checks, broadcasting, axes, recording nodes."""
from __future__ import annotations

from ..array import array, make_node
from ..convert import beside, operands, to_array
from ..device import resolve_stream
from ..registry import register, Primitive, api, PRIMITIVES
from .. import dtypes as dt
from ..errors import AxisError, DtypeError

__all__ = ["array", "make_node", "beside", "operands", "to_array", "resolve_stream", "register", "Primitive",
           "api", "PRIMITIVES", "dt", "DtypeError", "broadcast_shapes", "normalize_axis",
           "normalize_axes", "fmt_shape", "record", "cast", "broadcast_to_shape"]


def fmt_shape(shape) -> str:
    """Shapes in error messages, as MLX writes them: (2,3) and (4)."""
    return "(" + ",".join(str(s) for s in shape) + ")"


def _broadcast_two(a, b, op):
    if a == b or not b:
        return a
    if not a:
        return b
    n = max(len(a), len(b))
    pa, pb = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(pa, pb):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            raise ValueError(f"[{op}] Shapes {fmt_shape(a)} and {fmt_shape(b)} cannot be broadcast.")
    return tuple(out)


def broadcast_shapes(*shapes, op="broadcast_shapes"):
    """MLX broadcasts left to right, so a clash names the shape so far and the next one."""
    out = shapes[0]
    for s in shapes[1:]:
        out = _broadcast_two(out, s, op)
    return out


def normalize_axis(axis: int, ndim: int, op: str | None = None) -> int:
    if not isinstance(axis, int):
        try:
            axis = axis.__index__()
        except AttributeError:
            raise TypeError(f"axis must be an integer, got {type(axis).__name__}.") from None
    if axis < -ndim or axis >= ndim:
        raise AxisError(f"[{op}] Invalid axis {axis} for array with {ndim} dimensions." if op else
                         f"Invalid axis {axis} for array with {ndim} dimensions.")
    return axis + ndim if axis < 0 else axis


def normalize_axes(axis, ndim: int, op: str | None = None) -> tuple:
    """None -> all axes; int or sequence -> sorted, non-negative, unique (IndexError for an axis
    out of range, ValueError for a repeated one)."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (list, tuple)):
        axes = tuple(normalize_axis(a, ndim, op) for a in axis)
        if len(set(axes)) != len(axes):
            raise ValueError(f"[{op}] Received duplicate axes.")
        return tuple(sorted(axes))
    return (normalize_axis(axis, ndim, op),)


def record(prim: Primitive, inputs: tuple, params, shape: tuple, dtype, stream) -> array:
    return make_node(prim, inputs, params, shape, dtype, resolve_stream(stream))


def cast(a: array, dtype, stream=None) -> array:
    """``a`` as ``dtype`` (a recorded astype node, or ``a`` itself when it already is)."""
    if a._dtype is dtype:
        return a
    from .elementwise import astype

    return astype(a, dtype, stream=stream)


def broadcast_to_shape(a: array, shape: tuple, stream=None) -> array:
    if a._shape == shape:
        return a
    from .shape import broadcast_to

    return broadcast_to(a, shape, stream=stream)
