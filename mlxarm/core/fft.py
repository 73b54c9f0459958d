"""``mlx.core.fft``: discrete Fourier transforms, frequency helpers and the short-time transform.

Every transform records one ``fft`` node over the input already cut or zero-padded to the transform
sizes (as MLX does), computed by numpy's pocketfft in double precision. Complex transforms take and
give complex64, ``rfft*`` take float32 and ``irfft*`` give float32; a non-default ``norm`` is a
multiplication by the scale after the unnormalized (``"backward"``) transform.
"""
from __future__ import annotations

import math
import operator

import numpy as np

from . import dtypes as dt
from .ops._base import Primitive, api, array, cast, make_node, register, resolve_stream


class _AxisError(IndexError, ValueError):
    """An axis out of range: MLX raises IndexError in some versions and ValueError in others."""


def _fft_ref(p, x):
    axes, sizes = p["axes"], p["sizes"]
    if p["real"] and p["inverse"]:
        return np.fft.irfftn(x.astype(np.complex128), s=sizes, axes=axes)
    if p["real"]:
        return np.fft.rfftn(x.astype(np.float64), axes=axes)
    fn = np.fft.ifftn if p["inverse"] else np.fft.fftn
    return fn(x.astype(np.complex128), axes=axes)


def _fft_cases(rng, d):
    if d.kind not in "fc" or d is dt.float64:
        return []
    from .ops.linalg import sample

    x = sample(rng, d, (4, 6))
    return [("fft.fft", (x,), {}), ("fft.ifft", (x,), {"n": 5, "axis": 0}),
            ("fft.fft2", (x,), {"s": (3, 8), "norm": "ortho"}),
            ("fft.fftn", (x,), {"axes": (1, 0), "norm": "forward"}),
            ("fft.rfft", (x,), {}) if d.kind == "f" else ("fft.rfft", (x,), {"n": 4}),
            ("fft.irfft", (x,), {"n": 9}), ("fft.rfftn", (x,), {"s": (5, 4), "axes": (0, 1)}),
            ("fft.irfft2", (x,), {}), ("fft.fftshift", (x,), {}), ("fft.ifftshift", (x,), {"axes": 0})]


FFT = register(Primitive(
    "fft", "kernel", _fft_ref, dtypes=(dt.float32, dt.complex64),
    doc="Unnormalized n-d DFT (complex, real-to-complex or complex-to-real, forward or inverse).",
    extra={"cases": _fft_cases}))

_NORMS = ("backward", "ortho", "forward")


def _signature_error(fname: str, args) -> TypeError:
    kinds = ", ".join("mlx.core.array" if type(a) is array else type(a).__name__ for a in args)
    return TypeError(f"{fname}(): incompatible function arguments. The following argument types are "
                     f"supported:\n    1. {_SIGNATURES[fname]}\n\nInvoked with types: {kinds}")


_STREAM = ("stream: mlx.core.Stream | mlx.core.ThreadLocalStream | mlx.core.Device | "
           "mlx.core.DeviceType | None = None")
_SIGNATURES = {
    **{n: f"{n}(a: mlx.core.array, n: int | None = None, axis: int = -1, norm: str = 'backward', "
          f"{_STREAM}) -> mlx.core.array" for n in ("fft", "ifft", "rfft", "irfft")},
    **{n: f"{n}(a: mlx.core.array, s: tuple[int, ...] | None = None, axes: "
          f"collections.abc.Sequence[int] | None = [-2, -1], norm: str = 'backward', {_STREAM}) -> "
          "mlx.core.array" for n in ("fft2", "ifft2", "rfft2", "irfft2")},
    **{n: f"{n}(a: mlx.core.array, s: tuple[int, ...] | None = None, axes: "
          f"collections.abc.Sequence[int] | None = None, norm: str = 'backward', {_STREAM}) -> "
          "mlx.core.array" for n in ("fftn", "ifftn", "rfftn", "irfftn")},
    **{n: f"{n}(a: mlx.core.array, axes: int | collections.abc.Sequence[int] | None = None, "
          f"{_STREAM}) -> mlx.core.array" for n in ("fftshift", "ifftshift")},
}


def _check_array(fname: str, a):
    if not isinstance(a, array):
        raise _signature_error(fname, (a,))


def _check_norm(fname: str, norm: str) -> None:
    if norm not in _NORMS:
        raise ValueError(f"[{fname}] Invalid norm. Expected one of {{'backward', 'ortho', 'forward'}}.")


def _transform(a: array, sizes, axes, real: bool, inverse: bool, norm: str, stream) -> array:
    """MLX's fft_impl: validate, cut/pad the input to the transform sizes, one node, then scale."""
    if a.ndim < 1:
        raise ValueError("[fftn] Requires array with at least one dimension.")
    if len(sizes) != len(axes):
        raise ValueError("[fftn] Shape and axes have different sizes.")
    if not axes:
        return a
    nd = a.ndim
    valid = [ax + nd if ax < 0 else ax for ax in axes]
    if len(set(valid)) != len(valid):
        raise ValueError("[fftn] Duplicated axis received (" + ",".join(str(x) for x in axes) + ")")
    if min(valid) < 0 or max(valid) >= nd:
        raise _AxisError(f"[fftn] Invalid axis received for array with {nd} dimensions.")
    if any(n <= 0 for n in sizes):
        raise ValueError("[fftn] Invalid FFT output size requested (" + ",".join(str(n) for n in sizes)
                         + ")")
    in_shape = list(a._shape)
    for ax, n in zip(valid, sizes):
        in_shape[ax] = n
    if real and inverse:
        in_shape[valid[-1]] = sizes[-1] // 2 + 1
    x = a
    if any(n < m for n, m in zip(in_shape, a._shape)):
        x = x[tuple(slice(0, min(n, m)) for n, m in zip(in_shape, a._shape))]
    if any(n > m for n, m in zip(in_shape, a._shape)):
        from .ops.shape import pad

        x = pad(x, [(0, max(0, n - m)) for n, m in zip(in_shape, x._shape)], stream=stream)
    out_shape = list(in_shape)
    if real:
        out_shape[valid[-1]] = sizes[-1] if inverse else in_shape[valid[-1]] // 2 + 1
    in_dtype = dt.float32 if real and not inverse else dt.complex64
    out_dtype = dt.float32 if real and inverse else dt.complex64
    x = cast(x, in_dtype, stream)
    params = {"axes": tuple(valid), "sizes": tuple(sizes), "real": real, "inverse": inverse}
    out = make_node(FFT, (x,), params, tuple(out_shape), out_dtype, resolve_stream(stream))
    scale = _scale(sizes, norm, inverse)
    if scale != 1.0:
        from .ops.elementwise import multiply

        out = multiply(out, array(scale, out_dtype), stream=stream)
    return out


def _scale(sizes, norm: str, inverse: bool) -> float:
    if norm == "backward":
        return 1.0
    n = float(math.prod(sizes))
    if norm == "ortho":
        return math.sqrt(n) if inverse else 1.0 / math.sqrt(n)
    return n if inverse else 1.0 / n


def _one_axis(fname, a, n, axis, norm, real, inverse, stream):
    _check_array(fname, a)
    _check_norm(fname, norm)
    axis = operator.index(axis)
    if a.ndim < 1 or not -a.ndim <= axis < a.ndim:
        raise _AxisError(f"[{fname}] Invalid axis {axis} for array with {a.ndim} dimensions.")
    if n is None:
        n = a._shape[axis]
        if real and inverse:
            n = (n - 1) * 2
    return _transform(a, [operator.index(n)], [axis], real, inverse, norm, stream)


def _many_axes(fname, a, s, axes, norm, real, inverse, stream):
    _check_array(fname, a)
    _check_norm(fname, norm)
    if axes is None:
        if s is not None:
            raise ValueError(f"[{fname}] `axes` should not be `None` if `s` is not `None`.")
        axes = list(range(a.ndim))
    axes = [operator.index(ax) for ax in axes]
    if s is None:
        nd = a.ndim
        for ax in axes:
            if not -nd <= ax < nd:
                if nd < 1 and real and inverse:
                    raise ValueError("[fftn] Requires array with at least one dimension.")
                raise _AxisError(f"[{fname}] Invalid axis {ax} for array with {nd} dimensions.")
        s = [a._shape[ax] for ax in axes]
        if real and inverse and a.ndim > 0 and s:
            s[-1] = (s[-1] - 1) * 2
    return _transform(a, [operator.index(n) for n in s], axes, real, inverse, norm, stream)


@api(module="fft")
def fft(a, n=None, axis=-1, norm="backward", stream=None):
    return _one_axis("fft", a, n, axis, norm, False, False, stream)


@api(module="fft")
def ifft(a, n=None, axis=-1, norm="backward", stream=None):
    return _one_axis("ifft", a, n, axis, norm, False, True, stream)


@api(module="fft")
def rfft(a, n=None, axis=-1, norm="backward", stream=None):
    return _one_axis("rfft", a, n, axis, norm, True, False, stream)


@api(module="fft")
def irfft(a, n=None, axis=-1, norm="backward", stream=None):
    return _one_axis("irfft", a, n, axis, norm, True, True, stream)


@api(module="fft")
def fft2(a, s=None, axes=(-2, -1), norm="backward", stream=None):
    return _many_axes("fft2", a, s, axes, norm, False, False, stream)


@api(module="fft")
def ifft2(a, s=None, axes=(-2, -1), norm="backward", stream=None):
    return _many_axes("ifft2", a, s, axes, norm, False, True, stream)


@api(module="fft")
def rfft2(a, s=None, axes=(-2, -1), norm="backward", stream=None):
    return _many_axes("rfft2", a, s, axes, norm, True, False, stream)


@api(module="fft")
def irfft2(a, s=None, axes=(-2, -1), norm="backward", stream=None):
    return _many_axes("irfft2", a, s, axes, norm, True, True, stream)


@api(module="fft")
def fftn(a, s=None, axes=None, norm="backward", stream=None):
    return _many_axes("fftn", a, s, axes, norm, False, False, stream)


@api(module="fft")
def ifftn(a, s=None, axes=None, norm="backward", stream=None):
    return _many_axes("ifftn", a, s, axes, norm, False, True, stream)


@api(module="fft")
def rfftn(a, s=None, axes=None, norm="backward", stream=None):
    return _many_axes("rfftn", a, s, axes, norm, True, False, stream)


@api(module="fft")
def irfftn(a, s=None, axes=None, norm="backward", stream=None):
    return _many_axes("irfftn", a, s, axes, norm, True, True, stream)


# --- shifts and frequencies ---------------------------------------------------------------------

def _shift(fname: str, a, axes, inverse: bool, stream):
    _check_array(fname, a)
    if axes is None:
        if a.ndim < 1:
            return a
        axes = list(range(a.ndim))
    elif not isinstance(axes, (list, tuple)):
        axes = [operator.index(axes)]
    if not axes:
        return a
    shifts = []
    for ax in axes:
        ax = operator.index(ax)
        axis = ax + a.ndim if ax < 0 else ax
        if not 0 <= axis < a.ndim:
            raise _AxisError(f"[{fname}] Invalid axis {ax} for array with {a.ndim} dimensions.")
        half = a._shape[axis] // 2
        shifts.append(-half if inverse else half)
    from .ops.shape import roll

    return roll(a, shifts, [operator.index(ax) for ax in axes], stream=stream)


@api(module="fft")
def fftshift(a, axes=None, stream=None):
    return _shift("fftshift", a, axes, False, stream)


@api(module="fft")
def ifftshift(a, axes=None, stream=None):
    return _shift("ifftshift", a, axes, True, stream)


def _freq_scale(fname: str, n: int, d: float) -> np.float32:
    if n <= 0:
        raise ValueError(f"[{fname}] `n` must be greater than 0.")
    if d == 0.0:
        raise ValueError(f"[{fname}] `d` must be non-zero.")
    return np.float32(1.0 / (float(n) * float(d)))


@api(module="fft")
def fftfreq(n, d=1.0, stream=None):
    n = operator.index(n)
    scale = _freq_scale("fftfreq", n, d)
    freqs = np.concatenate([np.arange(0, (n + 1) // 2), np.arange(-(n // 2), 0)]).astype(np.float32)
    return array(freqs * scale)


@api(module="fft")
def rfftfreq(n, d=1.0, stream=None):
    n = operator.index(n)
    scale = _freq_scale("rfftfreq", n, d)
    return array(np.arange(0, n // 2 + 1).astype(np.float32) * scale)


# --- gradient rules -----------------------------------------------------------------------------
#
# The unnormalized transforms are linear: a tangent goes through the same transform. Cotangents go
# through the opposite-direction transform scaled by the transform size; the real transforms also
# weight the bins that stand for two conjugate-symmetric bins (all but DC and Nyquist) by 1/2
# (rfft) or 2 (irfft).

def _record(x: array, axes, sizes, real: bool, inverse: bool, stream) -> array:
    shape = list(x._shape)
    if real:
        shape[axes[-1]] = sizes[-1] if inverse else sizes[-1] // 2 + 1
    in_dtype = dt.float32 if real and not inverse else dt.complex64
    out_dtype = dt.float32 if real and inverse else dt.complex64
    params = {"axes": tuple(axes), "sizes": tuple(sizes), "real": real, "inverse": inverse}
    return make_node(FFT, (cast(x, in_dtype, stream),), params, tuple(shape), out_dtype,
                     resolve_stream(stream))


def _paired_bins(n_bins: int, odd: bool, ndim: int, axis: int, paired: float, single: float,
                 dtype) -> array:
    """Weights along ``axis``: ``paired`` for bins 1 .. n_bins - 2 + odd, ``single`` elsewhere."""
    idx = np.arange(n_bins)
    weights = np.where((idx > 0) & (idx < n_bins - 1 + odd), paired, single)
    shape = [1] * ndim
    shape[axis] = n_bins
    return array(weights.reshape(shape), dtype)


def _fft_vjp(node, cot, argnums):
    from .ops.elementwise import multiply

    p = node._params
    x = node._inputs[0]
    axes, real, inverse = p["axes"], p["real"], p["inverse"]
    n = float(math.prod((cot if inverse else x)._shape[ax] for ax in axes))
    if real and inverse:
        bins = x._shape[axes[-1]]
        mask = _paired_bins(bins, cot._shape[axes[-1]] % 2 == 1, x.ndim, axes[-1], 2 / n, 1 / n,
                            dt.float32)
        sizes = [cot._shape[ax] for ax in axes]
        return [multiply(_record(cot, axes, sizes, True, False, node._stream), mask)]
    if real:
        sizes = [x._shape[ax] for ax in axes]
        mask = _paired_bins(cot._shape[axes[-1]], x._shape[axes[-1]] % 2 == 1, x.ndim, axes[-1],
                            0.5, 1.0, dt.complex64)
        back = _record(multiply(cot, mask), axes, sizes, True, True, node._stream)
        return [multiply(back, array(n, dt.float32))]
    back = _record(cot, axes, [cot._shape[ax] for ax in axes], False, not inverse, node._stream)
    return [multiply(back, array(1 / n if inverse else n, dt.complex64))]


def _fft_jvp(node, tangents, argnums):
    p = node._params
    return _record(tangents[0], p["axes"], p["sizes"], p["real"], p["inverse"], node._stream)


FFT.vjp = _fft_vjp
FFT.jvp = _fft_jvp
