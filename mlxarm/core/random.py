"""``mx.random``: MLX's splittable counter-based generator, bit for bit.

Owns the ``random_bits`` primitive (threefry2x32 with 20 rounds, keyed by a (2,) uint32 key, laid
out exactly as MLX's CPU backend lays out its words), the global key sequence (``seed``, ``state``)
and every sampler. Samplers are compositions of registered ops over ``random_bits``, so they stay
lazy and their float math is the same ops MLX composes.
"""
from __future__ import annotations

import math
import time

import numpy as np

from . import dtypes as dt
from .array import array, make_realized
from .convert import to_array
from .device import current_stream
from .ops._base import Primitive, api, broadcast_shapes, fmt_shape, record, register
from .ops.elementwise import (abs as _abs, add, astype, divide, equal, erf, erfinv, exp, floor,
                              isinf, less, log, log1p, maximum, minimum, multiply, negative, sign,
                              sqrt, subtract, where)

_U32 = np.uint32
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_KS_PARITY = _U32(0x1BD11BDA)
_WIDTH_DTYPES = {4: dt.uint32, 2: dt.uint16, 1: dt.uint8}


def _threefry2x32(k0, k1, c0, c1):
    """The threefry2x32 hash of counter pairs (c0, c1) under keys (k0, k1); all uint32, broadcast."""
    ks = (k0, k1, k0 ^ k1 ^ _KS_PARITY)
    x0 = c0 + ks[0]
    x1 = c1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = (x1 << _U32(r)) | (x1 >> _U32(32 - r))
            x1 = x1 ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + _U32(i + 1)
    return x0, x1


def _random_bits_ref(params, keys):
    """Each key fills its share of the output: ceil(bytes/4) words, counter j paired with j + half
    (+1 when the word count is odd, the middle word then hashing (half, 0)); trailing bytes of a
    partial last word are cut off (little endian)."""
    shape, width = params["shape"], params["width"]
    keys = np.ascontiguousarray(keys, dtype=_U32).reshape(-1, 2)
    num_keys = keys.shape[0]
    size = math.prod(shape)
    nbytes = size * width // num_keys if num_keys else 0
    words = (nbytes + 3) // 4
    half, odd = divmod(words, 2)
    k0, k1 = keys[:, :1], keys[:, 1:]
    out = np.empty((num_keys, words), _U32)
    counter = np.arange(half, dtype=_U32)[None, :]
    out[:, :half], out[:, half + odd:] = _threefry2x32(k0, k1, counter, counter + _U32(half + odd))
    if odd:
        zero = np.zeros((1, 1), _U32)
        out[:, half:half + 1] = _threefry2x32(k0, k1, zero + _U32(half), zero)[0]
    flat = out.view(np.uint8)[:, :nbytes].reshape(-1)
    return flat.view(_WIDTH_DTYPES[width].np_storage).reshape(shape)


def _bits_cases(rng, dtype):
    if dtype is not dt.uint32:
        return []
    keys = [rng.integers(0, 2**32, size=2, dtype=np.uint64).astype(np.uint32) for _ in range(3)]
    return [("random.split", (k,), {"num": n}) for k in keys for n in (1, 2, 3, 5)]


RANDOM_BITS = register(Primitive(
    "random_bits", "random", _random_bits_ref, dtypes=(dt.uint32,), compute=False,
    doc="Threefry2x32 random bits of a given shape and byte width from a (2,) uint32 key.",
    extra={"cases": _bits_cases}))


# --- keys and the global key sequence ---------------------------------------------------------

def _key_array(seed_value: int) -> array:
    if isinstance(seed_value, bool) or not isinstance(seed_value, (int, np.integer)) \
            or not 0 <= int(seed_value) < 2**64:
        raise TypeError(
            "key(): incompatible function arguments. The following argument types are supported:\n"
            "    1. key(seed: int) -> mlx.core.array\n\n"
            f"Invoked with types: {type(seed_value).__name__}")
    s = int(seed_value)
    return make_realized(np.array([s >> 32, s & 0xFFFFFFFF], dtype=_U32), dt.uint32, current_stream())


@api(module="random")
def key(seed: int) -> array:
    """A PRNG key (a (2,) uint32 array: the seed's high and low words)."""
    return _key_array(seed)


# MLX keeps the global key in a one-element container; compiled functions capture it as state.
state = [_key_array(int(time.time() * 1000))]


@api(module="random")
def seed(seed: int) -> None:
    """Seed the global PRNG."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**64:
        raise TypeError(
            "seed(): incompatible function arguments. The following argument types are supported:\n"
            "    1. seed(seed: int) -> None\n\n"
            f"Invoked with types: {type(seed).__name__}")
    state[0] = _key_array(seed)


def _next_key(stream=None) -> array:
    """Split the global key: the first half becomes the new global key, the second is used."""
    pair = split(state[0], 2, stream=stream)
    state[0] = pair[0]
    return pair[1]


def _shape_arg(shape) -> tuple:
    if isinstance(shape, (int, np.integer)):
        raise TypeError("shape must be a sequence of integers.")
    return tuple(int(s) for s in shape)


def _check_dtype_arg(dtype, default):
    return default if dtype is None else dt.as_dtype(dtype)


@api(primitive="random_bits", module="random")
def bits(shape=(), width: int = 4, key=None, stream=None) -> array:
    """Raw random bits: uint32/uint16/uint8 for ``width`` 4/2/1."""
    shape = _shape_arg(shape)
    if any(s < 0 for s in shape):
        raise ValueError("[bits] Negative dimensions not allowed.")
    k = _next_key(stream) if key is None else to_array(key)
    if k._dtype is not dt.uint32:
        raise ValueError(f"[bits] Expected key type uint32 but received {k._dtype.name}.")
    if k._shape != (2,):
        raise ValueError(f"[bits] Expected key shape (2) but received {fmt_shape(k._shape)}.")
    out_dtype = _WIDTH_DTYPES.get(width)
    if out_dtype is None:
        raise ValueError(f"[bits] Bit width must be in {{1, 2, 4}} but got {width}.")
    return record(RANDOM_BITS, (k,), {"shape": shape, "width": width}, shape, out_dtype, stream)


@api(module="random")
def split(key, num: int = 2, stream=None) -> array:
    """Split a PRNG key into ``num`` sub keys (shape (num, 2))."""
    return bits((num, 2), 4, key, stream=stream)


# --- uniform and what is built on it ----------------------------------------------------------

def _const(value, dtype) -> array:
    return make_realized(dt.to_storage(np.asarray(value, dtype=np.float64), dtype), dtype,
                         current_stream())


def _below_one(dtype) -> float:
    """The largest value below 1.0 in ``dtype`` (1.0's bit pattern minus one), as a float."""
    if dtype is dt.float32:
        return float(np.nextafter(np.float32(1), np.float32(0)))
    if dtype is dt.float16:
        return float(np.nextafter(np.float16(1), np.float16(0)))
    return float(dt.bf16_to_f32(np.array([0x3F7F], np.uint16))[0])


_UINT32_MAX_F32 = float(np.float32(2**32 - 1))
_NEG_ONE_UP = float(np.nextafter(np.float32(-1), np.float32(0)))


def _uniform(lo, hi, shape, dtype, key, stream):
    if dtype.kind != "f":
        raise ValueError("[uniform] Can only generate uniform numbers with real floating point type.")
    lo = astype(lo, dtype, stream=stream)
    hi = astype(hi, dtype, stream=stream)
    span = subtract(hi, lo, stream=stream)
    out_shape = broadcast_shapes(shape, span._shape)
    if out_shape != shape:
        raise ValueError(f"[uniform] Cannot generate random values of shape {fmt_shape(shape)} "
                         f"from broadcasted shape {fmt_shape(out_shape)}.")
    upper = _const(_below_one(dtype), dt.float32)
    u = divide(bits(shape, 4, key, stream=stream), _const(_UINT32_MAX_F32, dt.float32), stream=stream)
    u = astype(minimum(u, upper, stream=stream), dtype, stream=stream)
    return add(multiply(span, u, stream=stream), lo, stream=stream)


def _key_or_next(key, stream):
    return _next_key(stream) if key is None else to_array(key)


@api(module="random")
def uniform(low=0, high=1, shape=(), dtype=dt.float32, key=None, stream=None) -> array:
    """Uniform samples in [low, high)."""
    k = _key_or_next(key, stream)
    return _uniform(to_array(low), to_array(high), _shape_arg(shape), _check_dtype_arg(dtype, dt.float32),
                    k, stream)


def _open_unit_normal_base(shape, key, stream):
    """erfinv of a float32 uniform on (-1, 1): a normal sample scaled by 1/sqrt(2)."""
    u = _uniform(_const(_NEG_ONE_UP, dt.float32), _const(1.0, dt.float32), shape, dt.float32, key,
                 stream)
    return erfinv(u, stream=stream)


@api(module="random")
def normal(shape=(), dtype=dt.float32, loc=None, scale=None, key=None, stream=None) -> array:
    """Normal samples (complex64: real and imaginary parts each with variance 1/2)."""
    from . import ops as _ops

    shape = _shape_arg(shape)
    dtype = _check_dtype_arg(dtype, dt.float32)
    k = _key_or_next(key, stream)
    loc = None if loc is None else to_array(loc, dtype)
    scale = None if scale is None else to_array(scale, dtype)
    if dtype is dt.complex64:
        samples = _open_unit_normal_base(shape + (2,), k, stream)
        samples = _ops.squeeze(_ops.view(samples, dt.complex64, stream=stream), -1, stream=stream)
        if scale is not None:
            samples = multiply(scale, samples, stream=stream)
        if loc is not None:
            samples = add(loc, samples, stream=stream)
        return samples
    if dtype.kind != "f":
        raise ValueError("[normal] Only floating point and complex64 types are supported.")
    samples = _open_unit_normal_base(shape, k, stream)
    applied_scale = _const(math.sqrt(2.0), dtype)
    if scale is not None:
        applied_scale = multiply(applied_scale, astype(scale, dtype, stream=stream), stream=stream)
    samples = multiply(applied_scale, astype(samples, dtype, stream=stream), stream=stream)
    if loc is not None:
        samples = add(astype(loc, dtype, stream=stream), samples, stream=stream)
    return samples


@api(module="random")
def multivariate_normal(mean, cov, shape=(), dtype=dt.float32, key=None, stream=None) -> array:
    """Jointly normal samples; the covariance's square root comes from its SVD."""
    from . import ops as _ops
    from . import linalg as _linalg

    shape = _shape_arg(shape)
    dtype = _check_dtype_arg(dtype, dt.float32)
    mean, cov = to_array(mean), to_array(cov)
    k = _key_or_next(key, stream)
    if dtype is not dt.float32:
        raise ValueError("[multivariate_normal] dtype must be float32.")
    if mean.ndim < 1:
        raise ValueError("[multivariate_normal] mean must have at least one dimension.")
    if cov.ndim < 2:
        raise ValueError("[multivariate_normal] cov must have at least two dimensions.")
    n = mean._shape[-1]
    if cov._shape[-1] != cov._shape[-2]:
        raise ValueError("[multivariate_normal] last two dimensions of cov must be equal.")
    if n != cov._shape[-1]:
        raise ValueError("[multivariate_normal] mean and cov must have compatible shapes.")
    out_shape = broadcast_shapes(cov._shape[:-2], mean._shape[:-1])
    out_shape = broadcast_shapes(out_shape, shape) + (n,)
    u, s, vt = _linalg.svd(astype(cov, dt.float32, stream=stream), compute_uv=True, stream=stream)
    root = _ops.matmul(multiply(u, _ops.expand_dims(sqrt(s, stream=stream), -2, stream=stream),
                                stream=stream), vt, stream=stream)
    root = astype(root, dtype, stream=stream)
    standard = normal(out_shape, dtype, 0.0, 1.0, key=k, stream=stream)
    scaled = _ops.squeeze(_ops.matmul(_ops.expand_dims(standard, -2, stream=stream), root,
                                      stream=stream), -2, stream=stream)
    return add(mean, scaled, stream=stream)


@api(module="random")
def randint(low, high, shape=(), dtype=dt.int32, key=None, stream=None) -> array:
    """Integers in [low, high), drawn through a float32 uniform and clamped to [low, high - 1]."""
    dtype = _check_dtype_arg(dtype, dt.int32)
    k = _key_or_next(key, stream)
    if dtype.kind in "fc":
        raise ValueError("[randint] randint only accepts integer dtypes and bool.")
    low, high = to_array(low), to_array(high)
    u = _uniform(low, high, _shape_arg(shape), dt.float32, k, stream)
    out = astype(floor(u, stream=stream), dtype, stream=stream)
    one = make_realized(dt.to_storage(np.ones((), np.int64), high._dtype), high._dtype, current_stream())
    hi = astype(subtract(high, one, stream=stream), dtype, stream=stream)
    return maximum(minimum(out, hi, stream=stream), astype(low, dtype, stream=stream), stream=stream)


@api(module="random")
def bernoulli(p=0.5, shape=None, key=None, stream=None) -> array:
    """Booleans that are True with probability ``p``."""
    k = _key_or_next(key, stream)
    p = to_array(p)
    if p._dtype.kind != "f":
        raise ValueError("[bernoulli] bernoulli probability `p` must be a float type.")
    shape = p._shape if shape is None else _shape_arg(shape)
    # p scaled to [0, the float32 just above UINT32_MAX]: p >= 1 is always true, p <= 0 never.
    upper = _const(float(np.nextafter(np.float32(2**32), np.float32(np.inf))), dt.float32)
    res = less(bits(shape, 4, k, stream=stream), multiply(p, upper, stream=stream), stream=stream)
    if res._shape != shape:
        raise ValueError("[bernoulli] shape of `p` is incompatible with argument `shape`.")
    return res


@api(module="random")
def truncated_normal(lower, upper, shape=None, dtype=dt.float32, key=None, stream=None) -> array:
    """Normal samples restricted to (lower, upper), by inverting the CDF of a bounded uniform."""
    k = _key_or_next(key, stream)
    lower, upper = to_array(lower), to_array(upper)
    dtype = _check_dtype_arg(dtype, dt.float32)
    if dtype.kind != "f":
        raise ValueError("[trunc_normal] trunc_normal only accepts floating point dtypes.")
    shape = broadcast_shapes(lower._shape, upper._shape) if shape is None else _shape_arg(shape)
    sqrt2 = _const(math.sqrt(2.0), dtype)
    lower_t = astype(lower, dtype, stream=stream)
    upper_t = astype(upper, dtype, stream=stream)
    a = erf(divide(lower_t, sqrt2, stream=stream), stream=stream)
    b = erf(divide(upper_t, sqrt2, stream=stream), stream=stream)
    u = _uniform(a, b, shape, dtype, k, stream)
    out = multiply(sqrt2, erfinv(u, stream=stream), stream=stream)
    return maximum(minimum(upper_t, out, stream=stream), lower_t, stream=stream)


def _gumbel(shape, dtype, key, stream):
    u = _uniform(_const(0.0, dtype), _const(1.0, dtype), shape, dtype, key, stream)
    return negative(log(negative(log(u, stream=stream), stream=stream), stream=stream), stream=stream)


@api(module="random")
def gumbel(shape=(), dtype=dt.float32, key=None, stream=None) -> array:
    """Standard Gumbel samples: -log(-log(uniform))."""
    k = _key_or_next(key, stream)
    return _gumbel(_shape_arg(shape), _check_dtype_arg(dtype, dt.float32), k, stream)


def _categorical_axis(axis, ndim):
    ax = axis + ndim if axis < 0 else axis
    if not 0 <= ax < ndim:
        raise IndexError(f"[categorical] Invalid axis {axis} for logits with {ndim} dimensions.")
    return ax


def _categorical_inverse_cdf(logits, shape, key, stream):
    """One distribution, many samples: search a uniform in the unnormalized CDF (O(N + M))."""
    from . import ops as _ops

    x = astype(logits, dt.promote_types(logits._dtype, dt.float32), stream=stream)
    m = _ops.max(x, stream=stream)
    # With an infinite maximum, exp(x - m) is NaN; the distribution is uniform over the maxima.
    w = where(isinf(m, stream=stream), astype(equal(x, m, stream=stream), x._dtype, stream=stream),
              exp(subtract(x, m, stream=stream), stream=stream), stream=stream)
    cdf = _ops.cumsum(w, 0, reverse=False, inclusive=False, stream=stream)
    u = multiply(_uniform(_const(0.0, dt.float32), _const(1.0, dt.float32), shape, dt.float32, key,
                          stream), _ops.sum(w, stream=stream), stream=stream)
    one = make_realized(np.ones((), _U32), dt.uint32, current_stream())
    return subtract(_ops.searchsorted(cdf, u, side="right", stream=stream), one, stream=stream)


def _categorical(logits, axis, shape, key, stream):
    from . import ops as _ops

    n = logits._shape[axis]
    if n > 0 and logits.size == n and shape:
        return _categorical_inverse_cdf(_ops.reshape(logits, (n,), stream=stream), shape, key, stream)
    offset = axis + len(shape) - logits.ndim + 1
    gumbel_shape = shape[:offset] + (n,) + shape[offset:]
    g = _gumbel(gumbel_shape, dt.float32, key, stream)
    return _ops.argmax(add(g, logits, stream=stream), offset, False, stream=stream)


@api(module="random")
def categorical(logits, axis: int = -1, shape=None, num_samples=None, key=None, stream=None) -> array:
    """Indices (uint32) sampled from the unnormalized log-probabilities ``logits`` along ``axis``."""
    from . import ops as _ops

    k = _key_or_next(key, stream)
    logits = to_array(logits)
    if shape is not None and num_samples is not None:
        raise ValueError("[categorical] At most one of shape or num_samples can be specified.")
    ax = _categorical_axis(axis, logits.ndim)
    if shape is not None:
        shape = _shape_arg(shape)
        reduced = logits._shape[:ax] + logits._shape[ax + 1:]
        if broadcast_shapes(shape, reduced) != shape:
            raise ValueError(f"[categorical] Requested shape {fmt_shape(shape)} is not broadcast "
                             f"compatible with reduced logits shape{fmt_shape(reduced)}.")
        return _categorical(logits, ax, shape, k, stream)
    if num_samples is not None:
        logits = _ops.expand_dims(logits, -1, stream=stream)
        shape = logits._shape[:ax] + logits._shape[ax + 1:-1] + (int(num_samples),)
        return _categorical(logits, ax, shape, k, stream)
    return _categorical(logits, ax, logits._shape[:ax] + logits._shape[ax + 1:], k, stream)


@api(module="random")
def laplace(shape=(), dtype=dt.float32, loc: float = 0.0, scale: float = 1.0, key=None,
            stream=None) -> array:
    """Laplace samples by the inverse CDF of a uniform on (-1, 1)."""
    shape = _shape_arg(shape)
    dtype = _check_dtype_arg(dtype, dt.float32)
    k = _key_or_next(key, stream)
    if dtype.kind != "f":
        raise ValueError("[laplace] Only real floating point types are supported.")
    u = _uniform(_const(_NEG_ONE_UP, dt.float32), _const(1.0, dt.float32), shape, dt.float32, k, stream)
    mag = log1p(multiply(_const(-1.0, dtype), _abs(u, stream=stream), stream=stream), stream=stream)
    samples = astype(multiply(sign(u, stream=stream), mag, stream=stream), dtype, stream=stream)
    scale, loc = float(np.float32(scale)), float(np.float32(loc))
    if scale != 1.0:
        samples = multiply(_const(scale, dtype), samples, stream=stream)
    if loc != 0.0:
        samples = add(_const(loc, dtype), samples, stream=stream)
    return samples


@api(module="random")
def permutation(x, axis: int = 0, key=None, stream=None) -> array:
    """A random permutation of ``arange(x)``, or ``x`` shuffled along ``axis``."""
    from . import ops as _ops

    k = _key_or_next(key, stream)
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return _ops.argsort(bits((int(x),), 4, k, stream=stream), stream=stream)
    x = to_array(x)
    if not -x.ndim <= axis < x.ndim:
        raise IndexError("SmallVector out of range.")
    order = _ops.argsort(bits((x._shape[axis],), 4, k, stream=stream), stream=stream)
    return _ops.take(x, order, axis, stream=stream)
