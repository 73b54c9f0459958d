"""Convolutions: the ``conv_general`` primitive and every public convolution built on it.

``conv1d``/``conv2d``/``conv3d``, ``conv_general``, the transposed convolutions and ``convolve`` all
record one ``conv_general`` node (channels-last input ``(N, ..., C_in)``, weight
``(C_out, ..., C_in / groups)``). A transposed convolution is the convolution of the input dilated by
the stride with the flipped kernel, as in MLX, so both share one reference and one gradient rule.
"""
from __future__ import annotations

import operator

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ._base import (DtypeError, Primitive, api, array, cast, dt, fmt_shape, make_node, register,
                    resolve_stream)

_TRUNC = lambda a, b: -(-a // b) if (a < 0) != (b < 0) else a // b  # noqa: E731 (C++ division)


def _dilate_size(n: int, d: int) -> int:
    return 1 + d * (n - 1)


# --- reference ----------------------------------------------------------------------------------

def _conv_ref(p, x, w):
    """Cross-correlation by im2col: strided windows of the padded (dilated) input times the kernel."""
    stride, kdil, idil = p["stride"], p["kernel_dilation"], p["input_dilation"]
    if x.dtype == np.float16:
        x, w = x.astype(np.float32), w.astype(np.float32)
    elif x.dtype == np.float64 and any(d > 1 for d in kdil + idil):
        # MLX's CPU backend has no double-precision kernel for dilated convolutions.
        raise ValueError("[Convolution::eval] got unsupported data type.")
    nd = x.ndim - 2
    if any(d > 1 for d in idil):
        dilated = np.zeros((x.shape[0],) + tuple(_dilate_size(n, d) for n, d in zip(x.shape[1:-1], idil))
                           + (x.shape[-1],), x.dtype)
        dilated[(slice(None),) + tuple(slice(None, None, d) for d in idil)] = x
        x = dilated
    out_sp = p["out"]
    ksize = tuple(_dilate_size(k, d) for k, d in zip(w.shape[1:-1], kdil))
    pads = [(0, 0)]
    for i in range(nd):
        lo, hi = p["pad_lo"][i], p["pad_hi"][i]
        # C++ truncating division can ask for one window hanging past the padded end: it reads zeros.
        need = (out_sp[i] - 1) * stride[i] + ksize[i]
        hi = max(hi, need - lo - x.shape[1 + i])
        pads.append((lo, hi))
    pads.append((0, 0))
    if any(lo or hi for lo, hi in pads):
        x = np.pad(x, pads)
    win = sliding_window_view(x, ksize, axis=tuple(range(1, nd + 1)))
    win = win[(slice(None),) + tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(out_sp, stride))
              + (slice(None),) + tuple(slice(None, None, d) for d in kdil)]
    if p["flip"]:
        w = w[(slice(None),) + (slice(None, None, -1),) * nd]
    # win: (N, *out, C, *K); w: (O, *K, Cg)
    win_axes = list(range(nd + 1, 2 * nd + 2))
    w_axes = [nd + 1] + list(range(1, nd + 1))
    groups = p["groups"]
    if groups == 1:
        return np.tensordot(win, w, axes=(win_axes, w_axes))
    cg, og = w.shape[-1], w.shape[0] // groups
    parts = []
    for g in range(groups):
        xs = win[(slice(None),) * (nd + 1) + (slice(g * cg, (g + 1) * cg),)]
        parts.append(np.tensordot(xs, w[g * og:(g + 1) * og], axes=(win_axes, w_axes)))
    return np.concatenate(parts, axis=-1)


def _conv_cases(rng, d):
    if d.kind != "f":
        return []
    from .linalg import sample

    def s(*shape):
        return sample(rng, d, shape, 0.5)

    return [
        ("conv1d", (s(2, 9, 4), s(3, 3, 4)), {}),
        ("conv1d", (s(2, 9, 4), s(4, 3, 2)), {"stride": 2, "padding": 1, "dilation": 2, "groups": 2}),
        ("conv2d", (s(1, 7, 6, 3), s(2, 3, 2, 3)), {"stride": (2, 1), "padding": (1, 2)}),
        ("conv2d", (s(1, 6, 6, 4), s(4, 3, 3, 1)), {"groups": 4, "dilation": (1, 2)}),
        ("conv3d", (s(1, 4, 5, 4, 2), s(3, 2, 3, 2, 2)), {"padding": 1, "stride": (1, 2, 1)}),
        ("conv_general", (s(1, 8, 7, 2), s(3, 3, 2, 2)),
         {"stride": [2, 1], "padding": ([0, 1], [2, 0]), "kernel_dilation": [1, 2],
          "input_dilation": [2, 1], "flip": True}),
        ("conv_transpose1d", (s(2, 5, 4), s(3, 3, 4)), {"stride": 2, "padding": 1, "output_padding": 1}),
        ("conv_transpose2d", (s(1, 4, 3, 4), s(4, 3, 2, 2)), {"stride": (2, 3), "groups": 2}),
        ("conv_transpose3d", (s(1, 3, 2, 3, 2), s(2, 2, 2, 2, 2)), {"stride": 2, "dilation": (1, 2, 1)}),
        ("convolve", (s(9), s(4)), {"mode": "same"}),
    ]


def _conv_shapeless(ins, p, shape, traced_in):
    """The output shape (and ``out``) of a traced convolution replayed on new input shapes
    (``mx.compile``/``export_function`` with ``shapeless=True``)."""
    x, w = ins[0]._shape, ins[1]._shape
    out = tuple(_TRUNC(_dilate_size(x[i + 1], p["input_dilation"][i]) + p["pad_lo"][i] + p["pad_hi"][i]
                       - _dilate_size(w[i + 1], p["kernel_dilation"][i]), p["stride"][i]) + 1
                for i in range(len(p["out"])))
    if any(n <= 0 for n in out):
        raise ValueError(f"[conv] Spatial dimensions of input {fmt_shape(x)} after padding cannot be "
                         f"smaller than weight spatial dimensions {fmt_shape(w)}.")
    return (x[0],) + out + (w[0],), dict(p, out=out)


CONV = register(Primitive(
    "conv_general", "linalg", _conv_ref, dtypes=(dt.float16, dt.bfloat16, dt.float32, dt.float64),
    doc="N-d cross-correlation with stride, padding, kernel/input dilation, groups and flip "
        "(channels last).",
    extra={"cases": _conv_cases, "shapeless": _conv_shapeless}))


# --- argument handling --------------------------------------------------------------------------

def _signature_error(fname: str, sig: str, args, kwargs):
    kinds = ", ".join(_type_name(a) for a in args)
    if kwargs:
        kinds += (", " if kinds else "") + "kwargs = { " + ", ".join(
            f"{k}: {_type_name(v)}" for k, v in kwargs.items()) + " }"
    return TypeError(f"{fname}(): incompatible function arguments. The following argument types are "
                     f"supported:\n    1. {sig}\n\nInvoked with types: {kinds}")


def _type_name(v) -> str:
    t = type(v)
    return "mlx.core.array" if t is array else t.__name__


_SIGS = {
    "conv1d": "conv1d(input: array, weight: array, /, stride: int = 1, padding: int = 0, dilation: int "
              "= 1, groups: int = 1, *, stream: StreamOrDevice = None) -> array",
    "conv2d": "conv2d(input: array, weight: array, /, stride: int | tuple[int, int] = 1, padding: int | "
              "tuple[int, int] = 0, dilation: int | tuple[int, int] = 1, groups: int = 1, *, stream: "
              "StreamOrDevice = None) -> array",
    "conv3d": "conv3d(input: array, weight: array, /, stride: int | tuple[int, int, int] = 1, padding: "
              "int | tuple[int, int, int] = 0, dilation: int | tuple[int, int, int] = 1, groups: int = 1, "
              "*, stream: StreamOrDevice = None) -> array",
    "conv_transpose1d": "conv_transpose1d(input: array, weight: array, /, stride: int = 1, padding: int "
                        "= 0, dilation: int = 1, output_padding: int = 0, groups: int = 1, *, stream: "
                        "StreamOrDevice = None) -> array",
    "conv_transpose2d": "conv_transpose2d(input: array, weight: array, /, stride: int | tuple[int, int] "
                        "= 1, padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1, "
                        "output_padding: int | tuple[int, int] = 0, groups: int = 1, *, stream: "
                        "StreamOrDevice = None) -> array",
    "conv_transpose3d": "conv_transpose3d(input: array, weight: array, /, stride: int | tuple[int, int, "
                        "int] = 1, padding: int | tuple[int, int, int] = 0, dilation: int | tuple[int, "
                        "int, int] = 1, output_padding: int | tuple[int, int, int] = 0, groups: int = 1, "
                        "*, stream: StreamOrDevice = None) -> array",
    "conv_general": "conv_general(input: array, weight: array, /, stride: int | Sequence[int] = 1, "
                    "padding: int | Sequence[int] | tuple[Sequence[int], Sequence[int]] = 0, "
                    "kernel_dilation: int | Sequence[int] = 1, input_dilation: int | Sequence[int] = 1, "
                    "groups: int = 1, flip: bool = False, *, stream: StreamOrDevice = None) -> array",
    "convolve": 'convolve(a: array, v: array, /, mode: str = "full", *, stream: StreamOrDevice = None) '
                "-> array",
}


class _BadArgs(Exception):
    pass


def _int(v) -> int:
    if isinstance(v, (bool, float)) or isinstance(v, np.floating):
        raise _BadArgs
    try:
        return operator.index(v)
    except TypeError:
        raise _BadArgs from None


def _ints(v, n: int | None = None) -> tuple:
    """An int (repeated ``n`` times when ``n`` is given) or a sequence of ints (of length ``n``)."""
    if isinstance(v, (list, tuple)):
        if n is not None and len(v) != n:
            raise _BadArgs
        return tuple(_int(x) for x in v)
    i = _int(v)
    return (i,) * n if n is not None else (i,)


def _spatial(v, nd: int) -> tuple:
    """conv1d takes ints only; conv2d/conv3d an int or a tuple of one int per spatial axis."""
    if nd == 1:
        return (_int(v),)
    return _ints(v, nd)


def _parse(fname: str, args: tuple, kwargs: dict, parse):
    """Run ``parse``; a value of the wrong type raises MLX's signature TypeError."""
    try:
        return parse()
    except _BadArgs:
        raise _signature_error(fname, _SIGS[fname], args, kwargs) from None


# --- recording ----------------------------------------------------------------------------------

def _check(inp: array, wt: array, nd: int, groups: int) -> None:
    if inp._dtype.kind != "f":
        raise DtypeError(f"[conv] Invalid input array with type {inp._dtype.name}. Convolution "
                         "currently only supports floating point types")
    if inp.ndim != nd + 2:
        raise ValueError(f"[conv] Invalid input array with {inp.ndim} dimensions for {nd}D convolution."
                         f" Expected an array with {nd + 2} dimensions following the format "
                         "[N, ..., C_in].")
    if wt.ndim != nd + 2:
        raise ValueError(f"[conv] Invalid weight array with {wt.ndim} dimensions for {nd}D convolution."
                         f" Expected an array with {nd + 2} dimensions following the format "
                         "[C_out, ..., C_in].")
    cin = inp._shape[-1]
    if groups == 0:
        raise ValueError("[conv] The number of groups must be positive. Got 0 groups.")
    if cin % groups != 0:
        raise ValueError(f"[conv] The input channels must be divisible by the number of groups. Got "
                         f"input with shape {fmt_shape(inp._shape)} and {groups} groups.")
    if groups > 1 and wt._shape[0] % groups != 0:
        raise ValueError(f"[conv] If groups > 1, the output channels must be divisible by the number of "
                         f"groups. Got {wt._shape[0]} output channels and {groups} groups.")
    if cin != groups * wt._shape[-1]:
        if groups == 1:
            raise ValueError("[conv] Expect the input channels in the input and weight array to match "
                             f"but got shapes - input: {fmt_shape(inp._shape)} and weight: "
                             f"{fmt_shape(wt._shape)}")
        raise ValueError(f"Given groups={groups} and weights of shape {fmt_shape(wt._shape)}, expected "
                         f"to have {groups * wt._shape[-1]} input channels but got {cin} input "
                         "channels instead.")


def _spatial_dims(inp: array, groups: int) -> int:
    if groups != 1 and inp.ndim not in (3, 4):
        raise ValueError("[conv] Can only handle groups != 1 in 1D or 2D convolutions.")
    nd = inp.ndim - 2
    if nd < 1 or nd > 3:
        raise ValueError("[conv] Only works for inputs with 1-3 spatial dimensions. The inputs must be "
                         "in the format [N, ..., C_in]")
    return nd


def _conv(inp: array, wt: array, stride, pad_lo, pad_hi, kdil, idil, groups: int, flip: bool,
          stream) -> array:
    """MLX's conv_general: checks, promotion, negative padding as a crop, output shape, one node."""
    nd = _spatial_dims(inp, groups)
    _check(inp, wt, nd, groups)
    out_dtype = dt.promote_types(inp._dtype, wt._dtype)
    inp, wt = cast(inp, out_dtype, stream), cast(wt, out_dtype, stream)
    stride, pad_lo, pad_hi, kdil, idil = (
        list(v) * nd if len(v) == 1 else list(v) if v else [default] * nd
        for v, default in ((stride, 1), (pad_lo, 0), (pad_hi, 0), (kdil, 1), (idil, 1)))
    if any(v < 0 for v in pad_lo) or any(v < 0 for v in pad_hi):
        idx = [slice(None)] * inp.ndim
        for i in range(min(nd, len(pad_lo), len(pad_hi))):
            lo, hi = pad_lo[i], pad_hi[i]
            if lo < 0 or hi < 0:
                idx[i + 1] = slice(-lo if lo < 0 else 0, hi if hi < 0 else None)
                pad_lo[i], pad_hi[i] = max(lo, 0), max(hi, 0)
        inp = inp[tuple(idx)]
    in_shape, wt_shape = inp._shape, wt._shape
    if len(stride) != nd:
        raise ValueError(f"[conv] Invalid strides {fmt_shape(stride)} for {nd}D convolution.")
    if len(pad_lo) != nd or len(pad_hi) != nd:
        raise ValueError(f"[conv] Invalid padding {fmt_shape(pad_lo)} | {fmt_shape(pad_hi)} for {nd}D "
                         "convolution.")
    if len(kdil) != nd:
        raise ValueError(f"[conv] Invalid kernel dilation {fmt_shape(kdil)} for {nd}D convolution.")
    if len(idil) != nd:
        raise ValueError(f"[conv] Invalid input dilation {fmt_shape(idil)} for {nd}D convolution.")
    out = [in_shape[0]]
    for i in range(nd):
        if kdil[i] <= 0:
            raise ValueError(f"[conv] Kernel dilation sizes must be positive. Got kernel dilation "
                             f"{fmt_shape(kdil)}.")
        if idil[i] <= 0:
            raise ValueError(f"[conv] Input dilation sizes must be positive. Got input dilation "
                             f"{fmt_shape(idil)}.")
        if stride[i] <= 0:
            raise ValueError(f"[conv] Stride sizes must be positive. Got strides {fmt_shape(stride)}.")
        size = _TRUNC(_dilate_size(in_shape[i + 1], idil[i]) + pad_lo[i] + pad_hi[i]
                      - _dilate_size(wt_shape[i + 1], kdil[i]), stride[i]) + 1
        if size <= 0:
            raise ValueError("[conv] Spatial dimensions of input after padding cannot be smaller than "
                             f"weight spatial dimensions. Got error at axis {i + 1} for input with shape "
                             f"{fmt_shape(in_shape)}, padding low {fmt_shape(pad_lo)}, padding high "
                             f"{fmt_shape(pad_hi)}, and weight of shape {fmt_shape(wt_shape)}.")
        out.append(size)
    out.append(wt_shape[0])
    params = {"stride": tuple(stride), "pad_lo": tuple(pad_lo), "pad_hi": tuple(pad_hi),
              "kernel_dilation": tuple(kdil), "input_dilation": tuple(idil), "groups": groups,
              "flip": bool(flip), "out": tuple(out[1:-1])}
    return make_node(CONV, (inp, wt), params, tuple(out), out_dtype, resolve_stream(stream))


def _arrays(fname: str, args: tuple, kwargs: dict):
    if not all(isinstance(a, array) for a in args[:2]):
        raise _signature_error(fname, _SIGS[fname], args, kwargs)


def _conv_nd(fname, nd, input, weight, stride, padding, dilation, groups, stream):
    args, kwargs = (input, weight), {"stride": stride, "padding": padding, "dilation": dilation,
                                     "groups": groups}
    _arrays(fname, args, kwargs)

    def parse():
        return (_spatial(stride, nd), _spatial(padding, nd), _spatial(dilation, nd), _int(groups))

    stride, padding, dilation, groups = _parse(fname, args, kwargs, parse)
    return _conv(input, weight, stride, padding, padding, dilation, (1,) * nd, groups, False, stream)


@api(primitive="conv_general")
def conv1d(input, weight, /, stride=1, padding=0, dilation=1, groups=1, *, stream=None):
    return _conv_nd("conv1d", 1, input, weight, stride, padding, dilation, groups, stream)


@api(primitive="conv_general")
def conv2d(input, weight, /, stride=1, padding=0, dilation=1, groups=1, *, stream=None):
    return _conv_nd("conv2d", 2, input, weight, stride, padding, dilation, groups, stream)


@api(primitive="conv_general")
def conv3d(input, weight, /, stride=1, padding=0, dilation=1, groups=1, *, stream=None):
    return _conv_nd("conv3d", 3, input, weight, stride, padding, dilation, groups, stream)


@api(primitive="conv_general")
def conv_general(input, weight, /, stride=1, padding=0, kernel_dilation=1, input_dilation=1, groups=1,
                 flip=False, *, stream=None):
    args = (input, weight)
    kwargs = {"stride": stride, "padding": padding, "kernel_dilation": kernel_dilation,
              "input_dilation": input_dilation, "groups": groups, "flip": flip}
    _arrays("conv_general", args, kwargs)

    def parse():
        if (isinstance(padding, (list, tuple)) and len(padding) == 2
                and all(isinstance(p, (list, tuple)) for p in padding)):
            lo, hi = _ints(padding[0]), _ints(padding[1])
        else:
            lo = hi = _ints(padding)
        if not isinstance(flip, (bool, np.bool_)):
            raise _BadArgs
        return _ints(stride), lo, hi, _ints(kernel_dilation), _ints(input_dilation), _int(groups)

    s, lo, hi, kd, idl, g = _parse("conv_general", args, kwargs, parse)
    return _conv(input, weight, s, lo, hi, kd, idl, g, bool(flip), stream)


def _conv_transpose(fname, nd, input, weight, stride, padding, dilation, output_padding, groups,
                    stream):
    args = (input, weight)
    kwargs = {"stride": stride, "padding": padding, "dilation": dilation,
              "output_padding": output_padding, "groups": groups}
    _arrays(fname, args, kwargs)

    def parse():
        return (_spatial(stride, nd), _spatial(padding, nd), _spatial(dilation, nd),
                _spatial(output_padding, nd), _int(groups))

    stride, padding, dilation, output_padding, groups = _parse(fname, args, kwargs, parse)
    # The weight's spatial sizes are read before conv_general's checks run, as in MLX.
    _spatial_dims(input, groups)
    _check(input, weight, input.ndim - 2, groups)
    pad_lo, pad_hi = [], []
    for i in range(nd):
        k = weight._shape[1 + i]
        pad_lo.append(_dilate_size(k, dilation[i]) - padding[i] - 1)
        conv_out = (input._shape[1 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (k - 1) + 1
        pad_hi.append(conv_out - _dilate_size(input._shape[1 + i], stride[i]) + padding[i]
                      + output_padding[i])
    return _conv(input, weight, (1,) * nd, pad_lo, pad_hi, dilation, stride, groups, True, stream)


@api(primitive="conv_general")
def conv_transpose1d(input, weight, /, stride=1, padding=0, dilation=1, output_padding=0, groups=1, *,
                     stream=None):
    return _conv_transpose("conv_transpose1d", 1, input, weight, stride, padding, dilation,
                           output_padding, groups, stream)


@api(primitive="conv_general")
def conv_transpose2d(input, weight, /, stride=1, padding=0, dilation=1, output_padding=0, groups=1, *,
                     stream=None):
    return _conv_transpose("conv_transpose2d", 2, input, weight, stride, padding, dilation,
                           output_padding, groups, stream)


@api(primitive="conv_general")
def conv_transpose3d(input, weight, /, stride=1, padding=0, dilation=1, output_padding=0, groups=1, *,
                     stream=None):
    return _conv_transpose("conv_transpose3d", 3, input, weight, stride, padding, dilation,
                           output_padding, groups, stream)


@api(primitive="conv_general")
def convolve(a, v, /, mode="full", *, stream=None):
    _arrays("convolve", (a, v), {"mode": mode})
    if a.ndim != 1 or v.ndim != 1:
        raise ValueError("[convolve] Inputs must be 1D.")
    if a.size == 0 or v.size == 0:
        raise ValueError("[convolve] Inputs cannot be empty.")
    from .shape import reshape
    from .shape import pad as pad_op

    signal, kernel = (v, a) if a.size < v.size else (a, v)
    k = kernel.size
    kernel = reshape(kernel[::-1], (1, k, 1), stream=stream)
    signal = reshape(signal, (1, signal.size, 1), stream=stream)
    if mode == "full":
        padding = k - 1
    elif mode == "valid":
        padding = 0
    elif mode == "same":
        padding = k // 2
        if k % 2 == 0:
            signal = pad_op(signal, [(0, 0), (k // 2, max(0, k // 2 - 1)), (0, 0)], stream=stream)
            padding = 0
    else:
        raise ValueError("[convolve] Invalid mode.")
    out = conv1d(signal, kernel, 1, padding, 1, 1, stream=stream)
    return reshape(out, (-1,), stream=stream)


# --- gradient rules -----------------------------------------------------------------------------
#
# Both gradients are convolutions again. With x' the input dilated by input_dilation and padded,
# y[n, i, o] = sum_{k, c} x'[n, i * stride + k * kernel_dilation, c] * w'[o, k, c] (w' = flipped w
# when flip). The input gradient correlates the stride-dilated cotangent with the flipped kernel
# (channels swapped within each group) and keeps every input_dilation-th position of x's span; the
# weight gradient correlates x' with the cotangent, batch and channel axes swapped, at stride
# kernel_dilation and kernel dilation stride.

def _swap_groups(a: array, groups: int, axis: int) -> array:
    """``a`` with axis 0 and the last axis exchanged, ``axis`` being split as (groups, rest) and the
    group index kept in front of what lands there: (G*A, ..., B) <-> (G*B, ..., A) blockwise."""
    from .shape import reshape, swapaxes

    if groups == 1:
        return swapaxes(a, 0, -1)
    shape = list(a._shape)
    nd = len(shape)
    axis %= nd
    split = shape[:axis] + [groups, shape[axis] // groups] + shape[axis + 1:]
    swapped = swapaxes(reshape(a, split), 0 if axis else 1, -1)
    out = list(swapped._shape)
    return reshape(swapped, out[:axis] + [out[axis] * out[axis + 1]] + out[axis + 2:])


def _input_grad(node: array, cot: array) -> array:
    from .shape import pad as pad_op

    x, w = node._inputs
    p = node._params
    nd = x.ndim - 2
    ksize = [_dilate_size(k, d) for k, d in zip(w._shape[1:-1], p["kernel_dilation"])]
    wt = _swap_groups(w, p["groups"], 0)
    full = _conv(cot, wt, (1,) * nd, [k - 1 for k in ksize], [k - 1 for k in ksize],
                 p["kernel_dilation"], p["stride"], p["groups"], not p["flip"], node._stream)
    spans = [_dilate_size(n, d) for n, d in zip(x._shape[1:-1], p["input_dilation"])]
    short = [max(0, lo + span - n) for lo, span, n in zip(p["pad_lo"], spans, full._shape[1:-1])]
    if any(short):
        full = pad_op(full, [(0, 0)] + [(0, s) for s in short] + [(0, 0)], stream=node._stream)
    return full[(slice(None),) + tuple(slice(lo, lo + span, d) for lo, span, d in
                                       zip(p["pad_lo"], spans, p["input_dilation"]))]


def _weight_grad(node: array, cot: array) -> array:
    from .shape import flip as flip_op, swapaxes

    x, w = node._inputs
    p = node._params
    nd = x.ndim - 2
    xt = _swap_groups(x, p["groups"], -1)
    # Cover every window the forward pass read, including one hanging past the padded end.
    pad_hi = [max(hi, (o - 1) * s + _dilate_size(k, kd) - lo - _dilate_size(n, d))
              for hi, lo, o, s, k, kd, n, d in zip(p["pad_hi"], p["pad_lo"], p["out"], p["stride"],
                                                   w._shape[1:-1], p["kernel_dilation"],
                                                   x._shape[1:-1], p["input_dilation"])]
    grad = _conv(xt, swapaxes(cot, 0, -1), p["kernel_dilation"], p["pad_lo"], pad_hi,
                 p["stride"], p["input_dilation"], p["groups"], False, node._stream)
    grad = grad[(slice(None),) + tuple(slice(0, k) for k in w._shape[1:-1])]
    grad = swapaxes(grad, 0, -1)
    if p["flip"]:
        grad = flip_op(grad, tuple(range(1, nd + 1)))
    return grad


def _conv_vjp(node, cot, argnums):
    return [_input_grad(node, cot) if i == 0 else _weight_grad(node, cot) for i in argnums]


def _conv_jvp(node, tangents, argnums):
    x, w = node._inputs
    out = None
    for i, t in zip(argnums, tangents):
        t = cast(t, node._dtype)
        ins = (t, w) if i == 0 else (x, t)
        term = make_node(CONV, ins, node._params, node._shape, node._dtype, node._stream)
        out = term if out is None else out + term
    return out


CONV.vjp = _conv_vjp
CONV.jvp = _conv_jvp
