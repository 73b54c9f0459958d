"""Movement primitives: views of their input (index maps, never copies), and the ops built on them."""
from __future__ import annotations

import operator

import numpy as np

from ..errors import AxisError
from ._base import (DtypeError, Primitive, api, array, cast, dt, fmt_shape, make_node,
                    register, resolve_stream, to_array)
from ._base import broadcast_shapes as _broadcast_shapes


_DIM_MIN, _DIM_MAX = -(2**31), 2**31 - 1


def checked_dim(d: int, op: str | None = None) -> int:
    """``d`` when it fits MLX's 32-bit shape dimensions, else MLX's OverflowError."""
    if not _DIM_MIN <= d <= _DIM_MAX:
        raise OverflowError(("" if op is None else f"[{op}] ") + f"Shape dimension {d} is outside "
                            f"the supported range [{_DIM_MIN}, {_DIM_MAX}]. MLX currently uses "
                            "32-bit integers for shape dimensions.")
    return d


def _dim(v, op: str) -> int:
    try:
        return checked_dim(operator.index(v))
    except TypeError:
        raise TypeError(f"{op}(): incompatible function arguments: shape entries must be integers, "
                        f"got {type(v).__name__}.") from None


def shape_arg(shape, op: str) -> tuple:
    """A shape argument (an int or a sequence of ints, anything with ``__index__``) as a tuple."""
    if isinstance(shape, (list, tuple)):
        return tuple(_dim(s, op) for s in shape)
    if isinstance(shape, array) and shape.ndim:
        return tuple(_dim(s, op) for s in shape.tolist())
    return (_dim(shape, op),)


def _case_values(rng, dtype, shape) -> np.ndarray:
    """Test inputs for the generated cases: values of ``dtype`` in its compute representation."""
    x = rng.standard_normal(shape) * 4
    if dtype.kind == "b":
        return x > 0
    if dtype.kind == "u":
        x = np.abs(x)
    if dtype.kind == "c":
        x = x + 1j * rng.standard_normal(shape)
    return x.astype(dtype.np_compute)


# --- reshape ---------------------------------------------------------------------------------------

def _reshape_cases(rng, dtype):
    x = _case_values(rng, dtype, (2, 3, 4))
    return [("reshape", (x, (4, 6)), {}), ("reshape", (x, (-1,)), {}), ("flatten", (x, 1), {}),
            ("unflatten", (x, 2, (2, -1)), {}), ("squeeze", (x[:1],), {}),
            ("expand_dims", (x, (0, -1)), {}), ("atleast_3d", (x[0, 0],), {}),
            ("tile", (x, (2, 1, 1, 2)), {}), ("repeat", (x, 2, 1), {}), ("repeat", (x, 3), {})]


RESHAPE = register(Primitive("reshape", "movement", lambda p, x: x.reshape(p["shape"]), compute=False,
                             extra={"cases": _reshape_cases}))


def _resolve_reshape(size: int, shape: tuple, op: str = "reshape") -> tuple:
    infer = [i for i, s in enumerate(shape) if s == -1]
    if len(infer) > 1:
        raise ValueError(f"[{op}] Reshape can only infer one dimension.")
    known = 1
    for s in shape:
        if s != -1:
            known *= s
    if infer:
        if known == 0:
            raise ValueError(f"[{op}] Cannot infer the shape of an empty array")
        shape = tuple(size // known if s == -1 else s for s in shape)
        known *= size // known
    if known != size or any(s < 0 for s in shape):
        raise ValueError(f"[{op}] Cannot reshape array of size {size} into shape {fmt_shape(shape)}.")
    return shape


@api(primitive="reshape")
def reshape(a, /, shape, *, stream=None):
    a = to_array(a)
    requested = shape_arg(shape, "reshape")
    shape = _resolve_reshape(a.size, requested)
    if shape == a._shape:
        return a
    params = {"shape": shape}
    if -1 in requested:  # kept so that a shapeless compiled replay infers it again
        params["infer"] = requested.index(-1)
    return make_node(RESHAPE, (a,), params, shape, a._dtype, resolve_stream(stream))


# --- transpose ---------------------------------------------------------------------------------------

def _transpose_cases(rng, dtype):
    x = _case_values(rng, dtype, (2, 3, 4))
    return [("transpose", (x,), {}), ("transpose", (x, (1, 0, 2)), {}),
            ("permute_dims", (x, (2, 0, 1)), {}), ("swapaxes", (x, 0, -1), {}),
            ("moveaxis", (x, 0, 2), {})]


TRANSPOSE = register(Primitive("transpose", "movement", lambda p, x: x.transpose(p["axes"]),
                               compute=False, extra={"cases": _transpose_cases}))


@api(primitive="transpose")
def transpose(a, /, axes=None, *, stream=None):
    a = to_array(a)
    nd = a.ndim
    if axes is None:
        axes = tuple(range(nd - 1, -1, -1))
    else:
        axes = tuple(axes)
        if len(axes) != nd:
            raise ValueError(f"[transpose] Received {len(axes)} axes for array with {nd} dimensions.")
        for ax in axes:
            if ax < -nd or ax >= nd:
                raise AxisError(f"[transpose] Invalid axis ({ax}) for array with {nd} dimensions.")
        axes = tuple(ax + nd if ax < 0 else ax for ax in axes)
        if len(set(axes)) != nd:
            raise ValueError("[transpose] Repeat axes not allowed.")
    if axes == tuple(range(nd)):
        return a
    shape = tuple(a._shape[i] for i in axes)
    return make_node(TRANSPOSE, (a,), {"axes": axes}, shape, a._dtype, resolve_stream(stream))


@api()
def swapaxes(a, /, axis1: int, axis2: int, *, stream=None):
    a = to_array(a)
    nd = a.ndim
    for ax in (axis1, axis2):
        if not -nd <= ax < nd:
            raise AxisError(f"[swapaxes] Invalid axis {ax} for array with {nd} dimensions.")
    i, j = axis1 % nd, axis2 % nd
    axes = list(range(nd))
    axes[i], axes[j] = axes[j], axes[i]
    return transpose(a, axes, stream=stream)


@api()
def matrix_transpose(a, /, *, stream=None):
    a = to_array(a)
    nd = a.ndim
    if nd < 2:
        raise ValueError("[matrix_transpose] Input array must have at least 2 dimensions.")
    return transpose(a, tuple(range(nd - 2)) + (nd - 1, nd - 2), stream=stream)


# --- broadcast ---------------------------------------------------------------------------------------

def _broadcast_cases(rng, dtype):
    x = _case_values(rng, dtype, (3, 1))
    y = _case_values(rng, dtype, (4,))
    return [("broadcast_to", (x, (2, 3, 4)), {}), ("broadcast_arrays", (x, y), {})]


BROADCAST = register(Primitive("broadcast_to", "movement",
                               lambda p, x: np.broadcast_to(x, p["shape"]), compute=False,
                               extra={"cases": _broadcast_cases}))


@api(primitive="broadcast_to")
def broadcast_to(a, /, shape, *, stream=None):
    a = to_array(a)
    shape = shape_arg(shape, "broadcast_to")
    if shape == a._shape:
        return a
    if any(s < 0 for s in shape):
        raise ValueError("[broadcast_to] Negative dimensions not allowed.")
    if len(shape) < a.ndim:
        raise ValueError(f"[broadcast_shapes] Shapes {fmt_shape(a._shape)} and {fmt_shape(shape)} "
                         "cannot be broadcast.")
    for s, t in zip(a._shape[::-1], shape[::-1]):
        if s != t and s != 1:
            raise ValueError(f"[broadcast_shapes] Shapes {fmt_shape(a._shape)} and {fmt_shape(shape)} "
                             "cannot be broadcast.")
    return make_node(BROADCAST, (a,), {"shape": shape}, shape, a._dtype, resolve_stream(stream))


@api()
def broadcast_shapes(*shapes):
    if not shapes:
        raise ValueError("[broadcast_shapes] Must provide at least one shape.")
    return _broadcast_shapes(*(tuple(s) for s in shapes))


@api()
def broadcast_arrays(*arrays, stream=None):
    arrays = [_array_arg(a, "broadcast_arrays") for a in arrays]
    if not arrays:
        return []
    shape = _broadcast_shapes(*(a._shape for a in arrays))
    return [broadcast_to(a, shape, stream=stream) for a in arrays]


# --- shape-only edits: all are reshapes (numpy views) ---------------------------------------------

def _axis(axis, ndim: int, op: str) -> int:
    """An axis in [-ndim, ndim), as MLX checks it (AxisError otherwise)."""
    if not isinstance(axis, int):
        raise TypeError(f"{op}(): axis must be an integer, got {type(axis).__name__}.")
    if axis < -ndim or axis >= ndim:
        raise AxisError(f"[{op}] Axis {axis} is out of bounds for array with {ndim} dimensions.")
    return axis + ndim if axis < 0 else axis


def _axes(axis, ndim: int, op: str) -> tuple:
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = tuple(_axis(ax, ndim, op) for ax in axes)
    if len(set(out)) != len(out):
        raise ValueError(f"[{op}] Received duplicate axes.")
    return out


def _array_arg(a, op: str) -> array:
    if isinstance(a, array):
        return a
    raise DtypeError(f"{op}(): incompatible function arguments: expected an array, got "
                    f"{type(a).__name__}.")


def _reshaped(a: array, shape: tuple, stream) -> array:
    if shape == a._shape:
        return a
    return make_node(RESHAPE, (a,), {"shape": shape}, shape, a._dtype, resolve_stream(stream))


@api()
def flatten(a, /, start_axis: int = 0, end_axis: int = -1, *, stream=None):
    a = to_array(a)
    nd = a.ndim
    if nd == 0:
        return _reshaped(a, (1,), stream)
    start = max(0, start_axis + nd if start_axis < 0 else start_axis)
    end = min(nd - 1, end_axis + nd if end_axis < 0 else end_axis)
    if end < start:
        raise ValueError("[flatten] start_axis must be less than or equal to end_axis")
    if start >= nd:
        raise ValueError(f"[flatten] Invalid start_axis {start_axis} for array with {nd} dimensions.")
    if end < 0:
        raise ValueError(f"[flatten] Invalid end_axis {end_axis} for array with {nd} dimensions.")
    s = a._shape
    n = 1
    for d in s[start:end + 1]:
        n *= d
    return _reshaped(a, s[:start] + (n,) + s[end + 1:], stream)


@api()
def unflatten(a, /, axis: int, shape, *, stream=None):
    a = to_array(a)
    shape = shape_arg(shape, "unflatten")
    if not shape:
        raise ValueError("[unflatten] Shape to unflatten to cannot be empty.")
    nd = a.ndim
    ax = axis + nd if axis < 0 else axis
    if ax < 0 or ax >= nd:
        raise AxisError(f"[unflatten] Invalid axes {ax} for array with {nd} dimensions.")
    infer = [i for i, s in enumerate(shape) if s == -1]
    if len(infer) > 1:
        raise ValueError("[Unflatten] Can only infer one dimension.")
    known = 1
    for s in shape:
        if s != -1:
            known *= s
    dim = a._shape[ax]
    if infer:
        if known == 0:
            raise ValueError(f"[Unflatten] Cannot unflatten axis {axis} with size {dim} into shape "
                             f"{fmt_shape(shape)}.")
        shape = tuple(dim // known if s == -1 else s for s in shape)
        known *= dim // known
    if known != dim:
        raise ValueError(f"[Unflatten] Cannot unflatten axis {axis} with size {dim} into shape "
                         f"{fmt_shape(shape)}.")
    return _reshaped(a, a._shape[:ax] + shape + a._shape[ax + 1:], stream)


@api()
def squeeze(a, /, axis=None, *, stream=None):
    a = to_array(a)
    s = a._shape
    if axis is None:
        return _reshaped(a, tuple(d for d in s if d != 1), stream)
    if not isinstance(axis, (int, list, tuple)):
        raise TypeError(f"squeeze(): axis must be an int or a sequence of ints, got "
                        f"{type(axis).__name__}.")
    axes = _axes(axis, a.ndim, "squeeze")
    for ax in axes:
        if s[ax] != 1:
            raise ValueError(f"[squeeze] Cannot squeeze axis {ax} with size {s[ax]} which is not "
                             "equal to 1.")
    return _reshaped(a, tuple(d for i, d in enumerate(s) if i not in axes), stream)


@api()
def expand_dims(a, /, axis, *, stream=None):
    a = to_array(a)
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out_nd = a.ndim + len(axes)
    norm = []
    for ax in axes:
        if ax < -out_nd or ax >= out_nd:
            raise AxisError(f"[expand_dims] Axis {ax} is out of bounds for array with {out_nd} "
                            "dimensions.")
        norm.append(ax + out_nd if ax < 0 else ax)
    if len(set(norm)) != len(norm):
        raise ValueError("[expand_dims] Received duplicate axes.")
    dims = iter(a._shape)
    shape = tuple(1 if i in norm else next(dims) for i in range(out_nd))
    return _reshaped(a, shape, stream)


def _at_least(arys, nd: int, stream):
    out = []
    for a in arys:
        a = _array_arg(a, f"atleast_{nd}d")
        s = a._shape
        if len(s) < nd:
            if nd == 3 and len(s) == 2:
                s = s + (1,)
            elif nd == 3 and len(s) == 1:
                s = (1,) + s + (1,)
            else:
                s = (1,) * (nd - len(s)) + s
            a = _reshaped(a, s, stream)
        out.append(a)
    return out[0] if len(out) == 1 else out


@api()
def atleast_1d(*arys, stream=None):
    return _at_least(arys, 1, stream)


@api()
def atleast_2d(*arys, stream=None):
    return _at_least(arys, 2, stream)


@api()
def atleast_3d(*arys, stream=None):
    return _at_least(arys, 3, stream)


# --- axis order ------------------------------------------------------------------------------------

@api(primitive="transpose")
def permute_dims(a, /, axes=None, *, stream=None):
    return transpose(a, axes, stream=stream)


@api()
def moveaxis(a, /, source: int, destination: int, *, stream=None):
    a = to_array(a)
    nd = a.ndim
    for ax in (source, destination):
        if ax < -nd or ax >= nd:
            raise AxisError(f"[moveaxis] Invalid axis {ax} for array with {nd} dimensions.")
    src, dst = source % nd, destination % nd
    order = [i for i in range(nd) if i != src]
    order.insert(dst, src)
    return transpose(a, order, stream=stream)


# --- flip --------------------------------------------------------------------------------------------

def _flip_ref(p, x):
    idx = [slice(None)] * x.ndim
    for ax in p["axes"]:
        idx[ax] = slice(None, None, -1)
    return x[tuple(idx)]


def _flip_cases(rng, dtype):
    x = _case_values(rng, dtype, (3, 4, 2))
    return [("flip", (x,), {}), ("flip", (x, 1), {}), ("flip", (x, (0, -1)), {})]


FLIP = register(Primitive("flip", "movement", _flip_ref, compute=False,
                          doc="Reverse the order of elements along some axes (a view).",
                          extra={"cases": _flip_cases}))


@api(primitive="flip")
def flip(a, /, axis=None, *, stream=None):
    a = to_array(a)
    nd = a.ndim
    if axis is None:
        axes = tuple(range(nd))
    else:
        # Repeating an axis flips it once, as MLX does.
        axes = tuple(sorted({_axis(ax, nd, "flip")
                             for ax in ((axis,) if isinstance(axis, int) else axis)}))
    if not axes:
        return a
    return make_node(FLIP, (a,), {"axes": axes}, a._shape, a._dtype, resolve_stream(stream))


# --- joining and splitting ---------------------------------------------------------------------------

def _concatenate_cases(rng, dtype):
    x = _case_values(rng, dtype, (2, 3))
    y = _case_values(rng, dtype, (2, 1))
    z = _case_values(rng, dtype, (4, 3))
    return [("concatenate", ([x, y],), {"axis": 1}), ("concatenate", ([x, z, x],), {}),
            ("concatenate", ([x, y],), {"axis": None}), ("stack", ([x, x],), {"axis": -1})]


CONCATENATE = register(Primitive(
    "concatenate", "movement", lambda p, *xs: np.concatenate(xs, axis=p["axis"]), compute=False,
    doc="Join N arrays along an existing axis.", extra={"cases": _concatenate_cases}))


def _array_list(arrays, op: str) -> list:
    if not isinstance(arrays, (list, tuple)):
        raise TypeError(f"{op}(): incompatible function arguments: arrays must be a list of arrays.")
    return [_array_arg(a, op) for a in arrays]


@api(primitive="concatenate")
def concatenate(arrays, axis=0, *, stream=None):
    arrays = _array_list(arrays, "concatenate")
    if not arrays:
        raise ValueError("[concatenate] No arrays provided for concatenation")
    if axis is None:
        arrays = [flatten(a, stream=stream) for a in arrays]
        axis = 0
    if len(arrays) == 1:
        return arrays[0]
    first = arrays[0]._shape
    ax = _axis(axis, len(first), "concatenate")
    total = 0
    for a in arrays:
        s = a._shape
        if len(s) != len(first):
            raise ValueError("[concatenate] All the input arrays must have the same number of "
                             f"dimensions. However, got arrays with dimensions {len(first)} and "
                             f"{len(s)}.")
        if s[:ax] != first[:ax] or s[ax + 1:] != first[ax + 1:]:
            shapes = "".join(fmt_shape(x._shape) + ", " for x in arrays)
            raise ValueError("[concatenate] All the input array dimensions must match exactly except "
                             f"for the concatenation axis. However, the provided shapes are {shapes}"
                             f"and the concatenation axis is {axis}.")
        total += s[ax]
    d = arrays[0]._dtype
    for a in arrays[1:]:
        d = dt.promote_types(d, a._dtype)
    inputs = tuple(cast(a, d, stream) for a in arrays)
    shape = first[:ax] + (checked_dim(total, "concatenate"),) + first[ax + 1:]
    return make_node(CONCATENATE, inputs, {"axis": ax}, shape, d, resolve_stream(stream))


@api(primitive="concatenate")
def concat(arrays, axis=0, *, stream=None):
    return concatenate(arrays, axis, stream=stream)


@api()
def stack(arrays, axis=0, *, stream=None):
    arrays = _array_list(arrays, "stack")
    if not arrays:
        raise ValueError("[stack] No arrays provided for stacking")
    shape = arrays[0]._shape
    if any(a._shape != shape for a in arrays):
        raise ValueError("[stack] All arrays must have the same shape")
    ax = _axis(axis, len(shape) + 1, "stack")
    return concatenate([expand_dims(a, ax, stream=stream) for a in arrays], ax, stream=stream)


def _split_cases(rng, dtype):
    x = _case_values(rng, dtype, (4, 6))
    return [("split", (x, 2), {}), ("split", (x, 3, 1), {}), ("split", (x, [1, 4], 1), {}),
            ("split", (x, [3, 1, -1]), {"axis": 1})]


SPLIT = register(Primitive(
    "split", "movement",
    lambda p, x: x[(slice(None),) * p["axis"] + (slice(p["start"], p["stop"]),)], compute=False,
    doc="One section of an array along an axis (a view).", extra={"cases": _split_cases}))


def _section(a: array, ax: int, start, stop, stream) -> array:
    lo, hi, _ = slice(start, stop).indices(a._shape[ax])
    n = max(0, hi - lo)
    shape = a._shape[:ax] + (n,) + a._shape[ax + 1:]
    return make_node(SPLIT, (a,), {"axis": ax, "start": lo, "stop": max(lo, hi)}, shape, a._dtype,
                     resolve_stream(stream))


@api(primitive="split")
def split(a, /, indices_or_sections, axis: int = 0, *, stream=None):
    a = to_array(a)
    ax = _axis(axis, a.ndim, "split")
    size = a._shape[ax]
    if isinstance(indices_or_sections, (int, np.integer)):
        n = int(indices_or_sections)
        if n <= 0:
            raise ValueError(f"[split] num_splits must be positive and non-zero but got {n}.")
        if size % n:
            raise ValueError("Array split does not result in sub arrays with equal size: attempting "
                             f"{n} splits along axis {axis} for shape {fmt_shape(a._shape)}.")
        step = size // n
        indices = [step * i for i in range(1, n)]
    else:
        indices = [int(i) for i in indices_or_sections]
    if not indices:
        return [a]
    bounds = [None] + indices + [None]
    return [_section(a, ax, bounds[i], bounds[i + 1], stream) for i in range(len(bounds) - 1)]


@api()
def unstack(x, /, *, axis: int = 0, stream=None):
    x = to_array(x)
    ax = _axis(axis, x.ndim, "unstack")
    shape = x._shape[:ax] + x._shape[ax + 1:]
    return tuple(_reshaped(_section(x, ax, i, i + 1, stream), shape, stream)
                 for i in range(x._shape[ax]))


@api()
def diff(a, /, n: int = 1, axis: int = -1, *, stream=None):
    from .elementwise import not_equal, subtract

    a = _array_arg(a, "diff")
    nd = a.ndim
    if not -nd <= axis < nd:
        raise AxisError("[diff] Axis is out of bounds for the array.")
    if n < 0:
        raise ValueError("[diff] Order `n` must be non-negative.")
    ax = axis % nd
    # Booleans difference by inequality (MLX has no boolean subtraction).
    step = not_equal if a._dtype is dt.bool_ else subtract
    for _ in range(n):
        size = a._shape[ax]
        a = step(_section(a, ax, 1, size, stream), _section(a, ax, 0, size - 1, stream),
                 stream=stream)
    return a


# --- pad -------------------------------------------------------------------------------------------

def _pad_ref(p, x, value):
    if p["mode"] == "constant":
        return np.pad(x, p["widths"], mode="constant", constant_values=value.reshape(-1)[0])
    if p["mode"] == "edge" and x.size == 0:
        out_shape = tuple(n + lo + hi for n, (lo, hi) in zip(x.shape, p["widths"]))
        return np.zeros(out_shape, x.dtype)
    return np.pad(x, p["widths"], mode=p["mode"])


def _pad_cases(rng, dtype):
    x = _case_values(rng, dtype, (3, 4))
    return [("pad", (x, 1), {}), ("pad", (x, [(0, 2), (3, 1)]), {"constant_values": 1}),
            ("pad", (x, (2, 1), "edge"), {}), ("pad", (x, 5, "reflect"), {}),
            ("pad", (x, [(2, 0), (1, 6)], "symmetric"), {})]


PAD = register(Primitive("pad", "movement", _pad_ref, compute=False,
                         doc="Pad with a constant, the edge values or a reflection.",
                         extra={"cases": _pad_cases}))

_PAD_MODES = ("constant", "edge", "reflect", "symmetric")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _pad_widths(pad_width, ndim: int) -> list:
    def bad():
        return TypeError("pad(): incompatible function arguments: pad_width must be an int, "
                         "tuple[int], tuple[int, int] or list[tuple[int, int]].")

    if _is_int(pad_width):
        return [(int(pad_width), int(pad_width))] * ndim
    if not isinstance(pad_width, (list, tuple)):
        raise bad()
    if pad_width and all(_is_int(v) for v in pad_width):
        if len(pad_width) == 1:
            return [(int(pad_width[0]), int(pad_width[0]))] * ndim
        if len(pad_width) == 2:
            return [(int(pad_width[0]), int(pad_width[1]))] * ndim
        raise bad()
    pairs = []
    for v in pad_width:
        if not isinstance(v, (list, tuple)) or len(v) != 2 or not all(_is_int(x) for x in v):
            raise bad()
        pairs.append((int(v[0]), int(v[1])))
    if len(pairs) == 1:
        return pairs * ndim
    if len(pairs) != ndim:
        raise ValueError(f"Invalid number of padding sizes passed to pad with axes of size {ndim}")
    return pairs


@api(primitive="pad")
def pad(a, pad_width, mode: str = "constant", constant_values=0, *, stream=None):
    from .creation import scalar_array

    a = to_array(a)
    if not isinstance(mode, str):
        raise TypeError(f"pad(): incompatible function arguments: mode must be a str, not {type(mode).__name__}.")
    widths = _pad_widths(pad_width, a.ndim)
    for i, (lo, hi) in enumerate(widths):
        if lo < 0:
            raise ValueError(f"Invalid low padding size ({lo}) passed to pad for axis {i}. Padding "
                             "sizes must be non-negative")
        if hi < 0:
            raise ValueError(f"Invalid high padding size ({hi}) passed to pad for axis {i}. Padding "
                             "sizes must be non-negative")
    if mode not in _PAD_MODES:
        raise ValueError(f"Invalid padding mode ({mode}) passed to pad")
    if mode in ("reflect", "symmetric"):
        for i, (n, (lo, hi)) in enumerate(zip(a._shape, widths)):
            if n == 0 and (lo or hi):
                raise ValueError(f"[pad] Cannot pad empty axis {i} using mode '{mode}'.")
    value = cast(scalar_array(constant_values, a._dtype), a._dtype, stream)
    if not a._shape:
        return a
    shape = tuple(checked_dim(n + lo + hi, "pad") for n, (lo, hi) in zip(a._shape, widths))
    return make_node(PAD, (a, value), {"widths": tuple(widths), "mode": mode}, shape, a._dtype,
                     resolve_stream(stream))



# --- repetition --------------------------------------------------------------------------------------

@api()
def tile(a, reps, /, *, stream=None):
    a = to_array(a)
    reps = [int(reps)] if _is_int(reps) else [int(r) for r in reps]
    shape = list(a._shape)
    if len(reps) < len(shape):
        reps = [1] * (len(shape) - len(reps)) + reps
    if len(reps) > len(shape):
        shape = [1] * (len(reps) - len(shape)) + shape
    if any(r < 0 for r in reps):
        raise ValueError("[broadcast_to] Negative dimensions not allowed.")
    expanded, broadcast, final = [], [], []
    for r, n in zip(reps, shape):
        if r != 1:
            expanded.append(1)
            broadcast.append(r)
        expanded.append(n)
        broadcast.append(n)
        final.append(checked_dim(r * n, "tile"))
    x = _reshaped(a, tuple(expanded), stream)
    x = broadcast_to(x, tuple(broadcast), stream=stream)
    return reshape(x, tuple(final), stream=stream)


@api()
def repeat(array, repeats: int, axis=None, *, stream=None):
    a = to_array(array)
    if not _is_int(repeats):
        raise TypeError("repeat(): incompatible function arguments: repeats must be an int.")
    if axis is None:
        a = flatten(a, stream=stream)
        axis = 0
    ax = _axis(axis, a.ndim, "repeat")
    if repeats < 0:
        raise ValueError("[repeat] Number of repeats cannot be negative")
    if repeats == 1:
        return a
    s = a._shape
    x = broadcast_to(_reshaped(a, s[:ax + 1] + (1,) + s[ax + 1:], stream),
                     s[:ax + 1] + (repeats,) + s[ax + 1:], stream=stream)
    shape = s[:ax] + (checked_dim(s[ax] * repeats, "repeat"),) + s[ax + 1:]
    return reshape(x, shape, stream=stream)


# --- roll --------------------------------------------------------------------------------------------

def _roll_cases(rng, dtype):
    x = _case_values(rng, dtype, (3, 4))
    return [("roll", (x, 2), {}), ("roll", (x, -1, 1), {}), ("roll", (x, (1, 5), (0, 1)), {}),
            ("roll", (x, 3, (0, 1)), {})]


ROLL = register(Primitive("roll", "movement",
                          lambda p, x: np.roll(x, p["shifts"], p["axes"]), compute=False,
                          doc="Rotate elements along axes.", extra={"cases": _roll_cases}))


@api(primitive="roll")
def roll(a, /, shift, axis=None, *, stream=None):
    # MLX documents ``(a, shift, axis=None, /)`` but binds shift and axis by name: mlx-lm's
    # rotating caches call ``mx.roll(mask, shift=...)``.
    a = to_array(a)
    if axis is None:
        total = int(shift) if _is_int(shift) else sum(int(s) for s in shift)
        flat = flatten(a, stream=stream)
        return reshape(roll(flat, total, 0, stream=stream), a._shape, stream=stream)
    axes = [axis] if _is_int(axis) else list(axis)
    if _is_int(shift):
        shifts = [int(shift)] * len(axes)
    elif _is_int(axis):
        shifts = [sum(int(s) for s in shift)]
    else:
        shifts = [int(s) for s in shift]
    if not axes:
        return a
    if len(shifts) < len(axes):
        raise ValueError(f"[roll] At least one shift value per axis is required, {len(shifts)} "
                         f"provided for {len(axes)} axes.")
    nd = a.ndim
    for ax in axes:
        if ax < -nd or ax >= nd:
            raise AxisError(f"[roll] Invalid axis {ax} for array with {nd} dimensions.")
    params = {"shifts": tuple(shifts[:len(axes)]), "axes": tuple(ax % nd for ax in axes)}
    return make_node(ROLL, (a,), params, a._shape, a._dtype, resolve_stream(stream))


# --- diagonals ---------------------------------------------------------------------------------------

def _diagonal_cases(rng, dtype):
    x = _case_values(rng, dtype, (3, 4, 5))
    m = _case_values(rng, dtype, (4, 3))
    v = _case_values(rng, dtype, (3,))
    return [("diagonal", (x,), {}), ("diagonal", (x, 1, 2, 0), {}), ("diagonal", (x, -2, -1, 1), {}),
            ("diag", (m,), {}), ("diag", (m, -1), {}), ("trace", (m,), {}),
            ("trace", (x, 1, 0, 2), {})]


DIAGONAL = register(Primitive(
    "diagonal", "movement",
    lambda p, x: np.diagonal(x, p["offset"], p["axis1"], p["axis2"]), compute=False,
    doc="The diagonal of two axes, moved last (a view).", extra={"cases": _diagonal_cases}))


@api(primitive="diagonal")
def diagonal(a, offset: int = 0, axis1: int = 0, axis2: int = 1, stream=None):
    a = to_array(a)
    nd = a.ndim
    if nd < 2:
        raise ValueError(f"[diagonal] Array must have at least two dimensions, but got {nd} "
                         "dimensions.")
    for name, ax in (("axis1", axis1), ("axis2", axis2)):
        if ax < -nd or ax >= nd:
            raise AxisError(f"[diagonal] Invalid {name} {ax} for array with {nd} dimensions.")
    ax1, ax2 = axis1 % nd, axis2 % nd
    if ax1 == ax2:
        raise ValueError("[diagonal] axis1 and axis2 cannot be the same axis")
    s = a._shape
    n = max(0, min(s[ax1] - max(0, -offset), s[ax2] - max(0, offset)))
    shape = tuple(d for i, d in enumerate(s) if i not in (ax1, ax2)) + (n,)
    params = {"offset": int(offset), "axis1": ax1, "axis2": ax2}
    return make_node(DIAGONAL, (a,), params, shape, a._dtype, resolve_stream(stream))


DIAG = register(Primitive("diag", "movement", lambda p, x: np.diag(x, p["k"]), compute=False,
                          doc="A square matrix with a vector on its k-th diagonal.",
                          extra={"cases": _diagonal_cases}))


@api()
def diag(a, /, k: int = 0, *, stream=None):
    a = to_array(a)
    if a.ndim == 1:
        n = a._shape[0] + abs(k)
        return make_node(DIAG, (a,), {"k": int(k)}, (n, n), a._dtype, resolve_stream(stream))
    if a.ndim == 2:
        return diagonal(a, k, 0, 1, stream=stream)
    raise ValueError(f"[diag] array must be 1-D or 2-D, got array with {a.ndim} dimensions.")


@api()
def trace(a, /, offset: int = 0, axis1: int = 0, axis2: int = 1, dtype=None, *, stream=None):
    from .reduction import sum as sum_

    a = to_array(a)
    if a.ndim < 2:
        raise ValueError(f"[trace] Array must have at least two dimensions, but got {a.ndim} "
                         "dimensions.")
    out = sum_(diagonal(a, offset, axis1, axis2, stream=stream), -1, stream=stream)
    return out if dtype is None else cast(out, dt.as_dtype(dtype), stream)


# --- strides and bits ----------------------------------------------------------------------------------

def _as_strided_ref(p, x):
    flat = np.ascontiguousarray(x).reshape(-1)[p["offset"]:]
    item = flat.itemsize
    return np.lib.stride_tricks.as_strided(flat, p["shape"], tuple(s * item for s in p["strides"]),
                                           writeable=False)


def _strided_cases(rng, dtype):
    x = _case_values(rng, dtype, (4, 5))
    return [("as_strided", (x, (3, 3), (1, 1)), {}), ("as_strided", (x, (2, 4), (5, 2), 3), {}),
            ("as_strided", (x,), {}), ("contiguous", (x,), {}), ("contiguous", (x, True), {})]


AS_STRIDED = register(Primitive("as_strided", "movement", _as_strided_ref, compute=False,
                                doc="An arbitrary strided view of the row-major data.",
                                extra={"cases": _strided_cases}))


@api(primitive="as_strided")
def as_strided(a, /, shape=None, strides=None, offset: int = 0, *, stream=None):
    a = to_array(a)
    shape = a._shape if shape is None else shape_arg(shape, "as_strided")
    if any(s < 0 for s in shape):
        raise ValueError("[as_strided] Negative dimensions not allowed.")
    if strides is None:
        strides, acc = [], 1
        for s in reversed(shape):
            strides.append(acc)
            acc *= s
        strides = strides[::-1]
    strides = tuple(int(s) for s in strides)
    if len(strides) != len(shape):
        raise ValueError(f"[as_strided] Got {len(strides)} strides for shape {fmt_shape(shape)}.")
    params = {"shape": shape, "strides": strides, "offset": int(offset)}
    return make_node(AS_STRIDED, (a,), params, shape, a._dtype, resolve_stream(stream))


CONTIGUOUS = register(Primitive("contiguous", "movement",
                                lambda p, x: np.ascontiguousarray(x), compute=False,
                                doc="The same values in a row-major buffer.",
                                extra={"cases": _strided_cases}))


@api(primitive="contiguous")
def contiguous(a, /, allow_col_major: bool = False, *, stream=None):
    a = to_array(a)
    return make_node(CONTIGUOUS, (a,), None, a._shape, a._dtype, resolve_stream(stream))


def _view_ref(p, x):
    return np.ascontiguousarray(x).view(p["storage"]).reshape(p["shape"])


def _view_cases(rng, dtype):
    x = _case_values(rng, dtype, (3, 4))
    return [("view", (x, target), {}) for target in dt.ALL
            if target is not dt.bool_ and (4 * dtype.size) % target.size == 0]


VIEW = register(Primitive("view", "movement", _view_ref, compute=False,
                          doc="Reinterpret the bytes as another dtype.",
                          extra={"cases": _view_cases}))


@api(primitive="view")
def view(a, dtype, stream=None):
    a = to_array(a)
    dtype = dt.as_dtype(dtype)
    if a._dtype is dtype:
        return a
    shape = list(a._shape)
    ib, ob = a._dtype.size, dtype.size
    if not shape:
        if ib != ob:
            raise ValueError("[view] Changing the type of a scalar is only allowed for types with "
                             "the same size.")
    elif ib < ob:
        if shape[-1] % (ob // ib):
            raise ValueError("[view] When viewing as a larger dtype, the size in bytes of the last "
                             "axis must be a multiple of the requested type size.")
        shape[-1] //= ob // ib
    elif ib > ob:
        shape[-1] *= ib // ob
    shape = tuple(shape)
    params = {"storage": dtype.np_storage, "shape": shape}
    return make_node(VIEW, (a,), params, shape, dtype, resolve_stream(stream))


# --- gradient rules -----------------------------------------------------------------------------

def _attach_gradients():
    from . import _autodiff as ad
    from ._autodiff import O, unbroadcast

    def input_shape(node, i=0):
        return node._inputs[i]._shape

    RESHAPE.vjp = lambda node, cot, argnums: [reshape(cot, input_shape(node))]
    TRANSPOSE.vjp = lambda node, cot, argnums: [
        transpose(cot, tuple(np.argsort(node._params["axes"]).tolist()))]
    BROADCAST.vjp = lambda node, cot, argnums: [unbroadcast(cot, input_shape(node))]
    FLIP.vjp = lambda node, cot, argnums: [flip(cot, node._params["axes"])]
    ROLL.vjp = lambda node, cot, argnums: [
        make_node(ROLL, (cot,), {"shifts": tuple(-s for s in node._params["shifts"]),
                                 "axes": node._params["axes"]},
                  cot._shape, cot._dtype, node._stream)]
    CONTIGUOUS.vjp = lambda node, cot, argnums: [cot]
    for prim in (RESHAPE, TRANSPOSE, BROADCAST, FLIP, ROLL, CONTIGUOUS, SPLIT, DIAGONAL, DIAG,
                 AS_STRIDED):
        prim.jvp = ad.linear_jvp
    ad.nondifferentiable(VIEW)

    def concatenate_vjp(node, cot, argnums):
        ax = node._params["axis"]
        bounds = [0]
        for x in node._inputs:
            bounds.append(bounds[-1] + x._shape[ax])
        return [_section(cot, ax, bounds[i], bounds[i + 1], None) for i in argnums]

    def concatenate_jvp(node, tangents, argnums):
        given = dict(zip(argnums, tangents))
        d = tangents[0]._dtype
        parts = [given[i] if i in given else O.zeros(x._shape, d) for i, x in enumerate(node._inputs)]
        return concatenate([cast(t, d) for t in parts], node._params["axis"])

    CONCATENATE.vjp, CONCATENATE.jvp = concatenate_vjp, concatenate_jvp

    def split_vjp(node, cot, argnums):
        p = node._params
        n = input_shape(node)[p["axis"]]
        widths = [(0, 0)] * cot.ndim
        widths[p["axis"]] = (p["start"], n - p["stop"])
        return [pad(cot, widths)]

    SPLIT.vjp = split_vjp

    def pad_vjp(node, cot, argnums):
        p = node._params
        x = node._inputs[0]
        if p["mode"] != "constant":
            # Edge, reflect and symmetric padding read every output position from one input position
            # (np.pad's index map, axis by axis): the cotangent is summed back onto the positions read.
            g = cot if x.size else O.zeros_like(x)
            for ax, ((lo, hi), n) in enumerate(zip(p["widths"], x._shape)):
                if (lo or hi) and x.size:
                    index = to_array(np.pad(np.arange(n, dtype=np.int32), (lo, hi), mode=p["mode"]))
                    moved = moveaxis(g, ax, 0)
                    g = moveaxis(O.zeros((n,) + moved._shape[1:], cot._dtype).at[index].add(moved), 0, ax)
            return [g if i == 0 else O.zeros_like(node._inputs[1]) for i in argnums]
        inner = cot[tuple(slice(lo, lo + n) for (lo, _), n in zip(p["widths"], x._shape))]
        out = []
        for i in argnums:
            if i == 0:
                out.append(inner)
            else:
                rim = O.sum(cot) - O.sum(inner)
                out.append(reshape(rim, node._inputs[1]._shape))
        return out

    def pad_jvp(node, tangents, argnums):
        given = dict(zip(argnums, tangents))
        d = tangents[0]._dtype
        tx = given.get(0, O.zeros(input_shape(node), d))
        tv = given.get(1, O.zeros(input_shape(node, 1), d))
        return make_node(PAD, (tx, cast(tv, tx._dtype)), node._params, node._shape, tx._dtype,
                         node._stream)

    PAD.vjp, PAD.jvp = pad_vjp, pad_jvp

    def diagonal_vjp(node, cot, argnums):
        p = node._params
        shape = input_shape(node)
        a1, a2, k = p["axis1"], p["axis2"], p["offset"]
        n1, n2 = shape[a1], shape[a2]
        r0 = max(0, -k)
        widths = [(0, 0)] * (cot.ndim - 1) + [(r0, n1 - r0 - cot._shape[-1])]
        rows = pad(cot, widths)
        mask = O.eye(n1, n2, k, dtype=dt.bool_)
        full_ = O.where(mask, expand_dims(rows, -1), O.zeros((), cot._dtype))
        others = [i for i in range(len(shape)) if i not in (a1, a2)]
        order = others + [a1, a2]
        return [transpose(full_, tuple(order.index(j) for j in range(len(shape))))]

    DIAGONAL.vjp = diagonal_vjp
    DIAG.vjp = lambda node, cot, argnums: [diagonal(cot, node._params["k"])]

    def as_strided_vjp(node, cot, argnums):
        p = node._params
        x = node._inputs[0]
        index = np.full(p["shape"], p["offset"], dtype=np.int64)
        for ax, (n, s) in enumerate(zip(p["shape"], p["strides"])):
            view = [1] * len(p["shape"])
            view[ax] = n
            index = index + (np.arange(n, dtype=np.int64) * s).reshape(view)
        from ._base import to_array

        flat = O.zeros((x.size,), cot._dtype).at[to_array(index.astype(np.int32))].add(cot)
        return [reshape(flat, x._shape)]

    AS_STRIDED.vjp = as_strided_vjp


_attach_gradients()
