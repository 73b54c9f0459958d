"""``mlx.core.fast``: fused kernels (rms_norm, layer_norm, rope, scaled_dot_product_attention).

Each is one primitive whose numpy reference computes in float32 for half types (as MLX's kernels
accumulate) and rounds once into the output dtype (a norm's is x's promoted with its weight, as in MLX;
a float16/bfloat16 norm then applies its weight and bias as separate rounded steps, as MLX does).
"""
from __future__ import annotations

import numpy as np

from . import dtypes as dt
from .ops._base import (DtypeError, Primitive, api, broadcast_shapes, cast, fmt_shape, make_node,
                        register, resolve_stream, to_array)
from .ops.linalg import sample as _sample

_FLOATS = (dt.float16, dt.bfloat16, dt.float32, dt.float64)
_HALF = (dt.float16, dt.bfloat16)


def _f32(x):
    return x.astype(np.float32) if x.dtype == np.float16 else x


def _only_floats(make):
    return lambda rng, d: make(rng, d) if d in (dt.float16, dt.bfloat16, dt.float32) else []


def _check_float(op, *xs):
    for x in xs:
        if x is not None and x._dtype not in _FLOATS:
            raise DtypeError(f"[{op}] Received unsupported type {x._dtype.name}.")


def _norm_dtype(op, x, *params):
    """A norm's output dtype, as MLX computes it: x's dtype promoted with its weight (and the bias,
    for layer_norm, when a weight is given too); x and those parameters are cast to it."""
    out = x._dtype
    for t in params:
        out = dt.promote_types(out, t._dtype)
    if out not in _FLOATS:
        raise DtypeError(f"[{op}] Received unsupported type {out.name}.")
    return out


# --- normalization -----------------------------------------------------------------------------------

def _rms_norm_ref(p, x, *w):
    x = _f32(x)
    r = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + p["eps"])
    return r * _f32(w[0]) if w else r


RMS_NORM = register(Primitive(
    "rms_norm", "kernel", _rms_norm_ref, dtypes=_FLOATS, doc="x / sqrt(mean(x^2) + eps) * weight.",
    extra={"cases": _only_floats(lambda rng, d: [
        ("fast.rms_norm", (_sample(rng, d, (2, 3, 8)), _sample(rng, d, (8,)), 1e-5), {}),
        ("fast.rms_norm", (_sample(rng, d, (4, 16)), None, 1e-3), {})])}))


@api(primitive="rms_norm", module="fast")
def rms_norm(x, weight, eps: float, *, stream=None):
    x = to_array(x)
    if weight is not None:
        weight = to_array(weight)
        if weight.ndim != 1:
            raise ValueError(f"[rms_norm] weight must have 1 dimension but has {weight.ndim} dimensions.")
        if weight._shape[0] != x._shape[-1]:
            raise ValueError(f"[rms_norm] weight must have the same size as the last dimension of x but "
                             f"has {weight._shape[0]} elements.")
    out = _norm_dtype("rms_norm", x, *(() if weight is None else (weight,)))
    if x.ndim == 0:
        raise ValueError(f"[rms_norm] Input must have at least 1 dimension but got input with "
                         f"{x.ndim} dimensions.")
    if weight is not None and out in _HALF:
        return _scale_rounded(make_node(RMS_NORM, (cast(x, out, stream),), {"eps": float(eps)}, x._shape, out,
                                        resolve_stream(stream)), weight, None, out, stream)
    ins = (cast(x, out, stream),) + (() if weight is None else (cast(weight, out, stream),))
    return make_node(RMS_NORM, ins, {"eps": float(eps)}, x._shape, out, resolve_stream(stream))


def _layer_norm_ref(p, x, *wb):
    x = _f32(x)
    mean = np.mean(x, axis=-1, keepdims=True)
    var = np.mean((x - mean) ** 2, axis=-1, keepdims=True)
    r = (x - mean) / np.sqrt(var + p["eps"])
    wb = list(wb)
    if p["weight"]:
        r = r * _f32(wb.pop(0))
    if p["bias"]:
        r = r + _f32(wb.pop(0))
    return r


LAYER_NORM = register(Primitive(
    "layer_norm", "kernel", _layer_norm_ref, dtypes=_FLOATS,
    doc="(x - mean) / sqrt(var + eps) * weight + bias over the last axis.",
    extra={"cases": _only_floats(lambda rng, d: [
        ("fast.layer_norm", (_sample(rng, d, (2, 3, 8)), _sample(rng, d, (8,)), _sample(rng, d, (8,)), 1e-5), {}),
        ("fast.layer_norm", (_sample(rng, d, (4, 16)), None, _sample(rng, d, (16,)), 1e-3), {}),
        ("fast.layer_norm", (_sample(rng, d, (4, 16)), None, None, 1e-5), {})])}))


@api(primitive="layer_norm", module="fast")
def layer_norm(x, weight, bias, eps: float, *, stream=None):
    x = to_array(x)
    if x.ndim == 0:
        raise ValueError(f"[layer_norm] Input must have at least 1 dimension but got input with "
                         f"{x.ndim} dimensions.")
    given = []
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        t = to_array(t)
        if t.ndim != 1:
            raise ValueError(f"[layer_norm] {name} must have 1 dimension but has {t.ndim} dimensions.")
        if t._shape[0] != x._shape[-1]:
            raise ValueError(f"[layer_norm] {name} must have the same size as the last dimension of x "
                             f"but has {t._shape[0]} elements.")
        given.append(t)
    # a bias alone does not take part in the promotion (MLX: result_type(x, weight[, bias]) or x's dtype)
    out = _norm_dtype("layer_norm", x, *(given if weight is not None else ()))
    if given and out in _HALF:
        normed = make_node(LAYER_NORM, (cast(x, out, stream),), {"eps": float(eps), "weight": False, "bias": False},
                           x._shape, out, resolve_stream(stream))
        return _scale_rounded(normed, weight, bias, out, stream)
    ins = tuple(cast(t, out, stream) for t in [x] + given)
    params = {"eps": float(eps), "weight": weight is not None, "bias": bias is not None}
    return make_node(LAYER_NORM, ins, params, x._shape, out, resolve_stream(stream))


def _scale_rounded(normed, weight, bias, out, stream):
    """``normed * weight + bias`` for a half-precision norm, each step rounded to ``out``: MLX normalizes in
    float32, rounds to the output dtype and only then applies the weight and bias in that dtype, so a
    float16/bfloat16 norm with parameters is not one rounding of the float32 result."""
    from .ops.elementwise import add, multiply

    if weight is not None:
        normed = multiply(normed, cast(to_array(weight), out, stream), stream=stream)
    if bias is not None:
        normed = add(normed, cast(to_array(bias), out, stream), stream=stream)
    return normed


# --- rotary embeddings -----------------------------------------------------------------------------

def rope_inv_freq(base: float, dims: int) -> np.ndarray:
    """Rope's inverse frequencies ``base ** (-2i / dims)`` for i < dims // 2, in float32 as the reference
    computes them (the kernels take the same values)."""
    return np.power(np.float32(base), -np.arange(dims // 2, dtype=np.float32) * 2 / dims)


def _rope_ref(p, x, *extra):
    extra = list(extra)
    offset = extra.pop(0)
    freqs = extra.pop(0) if p["freqs"] else None
    dims, half = p["dims"], p["dims"] // 2
    xf = x if x.dtype == np.float64 else x.astype(np.float32)
    seq = x.shape[-2]
    if freqs is None:
        inv_freq = rope_inv_freq(p["base"], dims)
    else:
        inv_freq = 1 / freqs.astype(np.float32)
    positions = np.arange(seq, dtype=np.float32)[:, None]
    off = np.asarray(offset, dtype=np.float32)
    if off.ndim:  # one starting position per batch element
        off = off.reshape((-1,) + (1,) * (x.ndim - 1))
    pos = (positions + off) * np.float32(p["scale"])
    theta = pos * inv_freq
    cos, sin = np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)
    out = xf.copy()
    if p["traditional"]:
        a, b = xf[..., 0:dims:2], xf[..., 1:dims:2]
        out[..., 0:dims:2] = a * cos - b * sin
        out[..., 1:dims:2] = a * sin + b * cos
    else:
        a, b = xf[..., :half], xf[..., half:dims]
        out[..., :half] = a * cos - b * sin
        out[..., half:dims] = a * sin + b * cos
    return out


def _rope_cases(rng, d):
    return [
        ("fast.rope", (_sample(rng, d, (2, 3, 5, 8)), 8),
         {"traditional": False, "base": 10000.0, "scale": 1.0, "offset": 0}),
        ("fast.rope", (_sample(rng, d, (2, 5, 8)), 8),
         {"traditional": True, "base": 10000.0, "scale": 0.5, "offset": 3}),
        ("fast.rope", (_sample(rng, d, (1, 4, 16)), 8),
         {"traditional": False, "base": 500.0, "scale": 1.0, "offset": 2}),
        ("fast.rope", (_sample(rng, d, (1, 4, 8)), 8),
         {"traditional": False, "base": None, "scale": 1.0, "offset": 1,
          "freqs": np.abs(np.asarray(rng.uniform(1, 100, (4,)), dtype=np.float64)).astype(np.float32)}),
    ]


ROPE = register(Primitive("rope", "kernel", _rope_ref, dtypes=_FLOATS,
                          doc="Rotary positional embedding over the first `dims` features.",
                          extra={"cases": _only_floats(_rope_cases)}))


@api(primitive="rope", module="fast")
def rope(a, dims: int, *, traditional: bool, base, scale: float, offset, freqs=None, stream=None):
    a = to_array(a)
    _check_float("rope", a)
    if a.ndim < 3:
        raise ValueError(f"[rope] Input must have at least 3 dimensions but got input with {a.ndim} "
                         "dimensions.")
    if dims <= 0:
        raise ValueError(f"[rope] dims must be positive but got {dims}.")
    if dims % 2:
        raise ValueError(f"[rope] dims must be even but got {dims}.")
    if dims > a._shape[-1]:
        raise ValueError(f"[rope] dims must not exceed the input's last dimension ({a._shape[-1]}) but "
                         f"got {dims}.")
    if base is None and freqs is None:
        raise ValueError("[rope] Neither base nor freqs has a value.")
    if base is not None and freqs is not None:
        raise ValueError("[rope] Only one of base or freqs can have a value.")
    off = to_array(offset) if not isinstance(offset, int) else to_array(offset, dt.int32)
    if off._dtype.kind not in "iu":
        raise ValueError(f"[rope] offset must be an integer but got type {off._dtype.name}.")
    if off.ndim > 1:
        raise ValueError(f"[rope] offset must have at most one dimension but has shape "
                         f"{fmt_shape(off._shape)}.")
    if off.ndim == 1 and off._shape[0] not in (1, a._shape[0]):
        raise ValueError(f"[rope] offset must be a scalar or vector with {a._shape[0]} elements but has "
                         f"shape {fmt_shape(off._shape)}.")
    ins = (a, off)
    if freqs is not None:
        freqs = to_array(freqs)
        if freqs.ndim != 1 or freqs._shape[0] != dims // 2:
            raise ValueError(f"[rope] freqs must be one dimensional with size {dims // 2} but got shape "
                             f"{fmt_shape(freqs._shape)}.")
        ins += (cast(freqs, dt.float32, stream),)
    params = {"dims": int(dims), "traditional": bool(traditional),
              "base": None if base is None else float(base), "scale": float(scale),
              "freqs": freqs is not None}
    return make_node(ROPE, ins, params, a._shape, a._dtype, resolve_stream(stream))


# --- attention ------------------------------------------------------------------------------------

def _sdpa_ref(p, q, k, v, *extra):
    q, k, v = (x.astype(np.float32) if x.dtype == np.float16 else x for x in (q, k, v))
    extra = list(extra)
    mask = extra.pop(0) if p["mask"] == "array" else None
    sinks = extra.pop(0) if p["sinks"] else None
    hq, hk = q.shape[-3], k.shape[-3]
    if hq != hk:
        k = np.repeat(k, hq // hk, axis=-3)
        v = np.repeat(v, hq // hk, axis=-3)
    scores = (q * np.asarray(p["scale"], q.dtype)) @ np.swapaxes(k, -1, -2)
    L, S = scores.shape[-2:]
    # Boolean masks use the lowest finite value, so a fully masked row averages v instead of NaN.
    lowest = np.finfo(scores.dtype).min
    if p["mask"] == "causal":
        keep = np.arange(S)[None, :] <= np.arange(L)[:, None] + (S - L)
        scores = np.where(keep, scores, lowest)
    elif mask is not None:
        scores = np.where(mask, scores, lowest) if mask.dtype == np.bool_ else scores + _f32(mask)
    top = np.max(scores, axis=-1, keepdims=True)
    if sinks is not None:
        sink = _f32(sinks).astype(scores.dtype)[:, None, None]
        top = np.maximum(top, sink)
    w = np.exp(scores - top)
    total = np.sum(w, axis=-1, keepdims=True)
    if sinks is not None:
        total = total + np.exp(sink - top)
    return (w / total) @ v


def _sdpa_cases(rng, d):
    q = _sample(rng, d, (2, 4, 5, 8))
    k = _sample(rng, d, (2, 2, 7, 8))
    v = _sample(rng, d, (2, 2, 7, 8))
    return [
        ("fast.scaled_dot_product_attention", (q, k, v), {"scale": 8 ** -0.5}),
        ("fast.scaled_dot_product_attention", (q, k, v), {"scale": 0.3, "mask": "causal"}),
        ("fast.scaled_dot_product_attention", (q, k, v),
         {"scale": 0.3, "mask": np.asarray(rng.random((5, 7)) < 0.8) | np.eye(5, 7, dtype=bool)}),
        ("fast.scaled_dot_product_attention", (q, _sample(rng, d, (2, 4, 7, 8)), _sample(rng, d, (2, 4, 7, 8))),
         {"scale": 0.3, "mask": _sample(rng, d, (1, 4, 5, 7))}),
    ]


SDPA = register(Primitive("scaled_dot_product_attention", "kernel", _sdpa_ref, dtypes=_FLOATS,
                          doc="softmax(scale * q k^T + mask) v, with grouped key/value heads.",
                          extra={"cases": _only_floats(_sdpa_cases)}))


@api(primitive="scaled_dot_product_attention", module="fast")
def scaled_dot_product_attention(q, k, v, *, scale: float, mask=None, sinks=None, stream=None):
    from .ops.shape import broadcast_to

    op = "[scaled_dot_product_attention]"
    q, k, v = to_array(q), to_array(k), to_array(v)
    for x in (q, k, v):
        if x.ndim != 4:
            raise ValueError(f"{op} input with shape {fmt_shape(x._shape)} expected to be rank 4")
    B, H, L, D = q._shape
    if k._shape[1] != v._shape[1]:
        raise ValueError(f"{op} keys, values expected to have matching n_kv_heads; found keys with n_heads "
                         f"{k._shape[1]} for values with n_heads {v._shape[1]}.")
    if H % k._shape[1]:
        raise ValueError(f"{op} n_heads must be a multiple of n_kv_heads, found n_heads {H} for n_kv_heads "
                         f"{k._shape[1]}.")
    if k._shape[-1] != D:
        raise ValueError(f"{op} query, keys expected to have matching last dimension; found query shape "
                         f"{fmt_shape(q._shape)} for keys shape {fmt_shape(k._shape)}.")
    for x in (k, v):
        if x._shape[0] != B:
            raise ValueError(f"{op} mismatching batch dimension for input with shape {fmt_shape(x._shape)}.")
    if v._shape[2] != k._shape[2]:
        raise ValueError(f"[matmul] Last dimension of first input with shape "
                         f"{fmt_shape((B, k._shape[1], H // k._shape[1], L, k._shape[2]))} must match second "
                         f"to last dimension of second input with shape "
                         f"{fmt_shape((B, v._shape[1], 1) + v._shape[2:])}.")
    d = dt.promote_types(dt.promote_types(q._dtype, k._dtype), v._dtype)
    if d not in _FLOATS:
        raise DtypeError(f"{op} Received unsupported type {d.name}.")
    q, k, v = cast(q, d, stream), cast(k, d, stream), cast(v, d, stream)
    S = k._shape[2]
    ins = (q, k, v)
    if mask is None:
        kind = None
    elif isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"{op} invalid mask option '{mask}'. Must be 'causal', or an array.")
        kind = "causal"
    else:
        m = to_array(mask)
        if m.ndim > 4:
            raise ValueError(f"{op} the mask with shape {fmt_shape(m._shape)} expected to have at most "
                             "rank 4.")
        if m._dtype is not dt.bool_:
            if dt.promote_types(m._dtype, d) is not d:
                raise ValueError(f"{op} Mask type must promote to output type {d.name}.")
            m = cast(m, d, stream)
        ins += (broadcast_to(m, (B, H, L, S), stream=stream),)
        kind = "array"
    if sinks is not None:
        sinks = to_array(sinks)
        if sinks._shape != (H,):
            raise ValueError(f"{op} Received invalid shape for sinks {fmt_shape(sinks._shape)}.")
        if dt.promote_types(sinks._dtype, d) is not d:
            raise ValueError(f"{op} Type of sinks must promote to output type {d.name}.")
        ins += (cast(sinks, d, stream),)
    params = {"scale": float(scale), "mask": kind, "sinks": sinks is not None}
    return make_node(SDPA, ins, params, (B, H, L, v._shape[-1]), d, resolve_stream(stream))


# --- cross entropy -----------------------------------------------------------------------------------

@api(module="fast")
def cross_entropy(logits, targets, *, stream=None):
    """logsumexp(logits, -1) - logits[..., targets], as float32 (reduced in the logits' dtype, as
    MLX's CPU path does)."""
    from .ops.elementwise import subtract
    from .ops.indexing import take_along_axis
    from .ops.reduction import logsumexp
    from .ops.shape import expand_dims, squeeze

    logits, targets = to_array(logits), to_array(targets)
    op = "[cross_entropy]"
    if logits._dtype.kind != "f":
        raise DtypeError(f"{op} Received unsupported logits type {logits._dtype.name}.")
    if targets._dtype.kind not in "iu":
        raise DtypeError(f"{op} targets must be integer class indices but got {targets._dtype.name}.")
    if logits.ndim < 1:
        raise ValueError(f"{op} logits must have at least 1 dimension but got input with 0 dimensions.")
    if targets._shape != logits._shape[:-1]:
        raise ValueError(f"{op} targets shape {fmt_shape(targets._shape)} does not match logits shape "
                         f"{fmt_shape(logits._shape)} with the last axis removed.")
    picked = squeeze(take_along_axis(logits, expand_dims(targets, -1, stream=stream), -1, stream=stream),
                     -1, stream=stream)
    loss = subtract(logsumexp(logits, -1, stream=stream), picked, stream=stream)
    return cast(loss, dt.float32, stream)


# --- gated delta rule ----------------------------------------------------------------------------------

@api(module="fast")
def gated_delta_update(q, k, v, gamma, beta, initial_state=None, mask=None, stream=None):
    """The gated delta recurrence over the time axis, in float32: per step the state decays by gamma,
    moves toward v along k by beta, and is read by q. Key/query heads repeat to the value heads; a
    masked step keeps the state and outputs zeros. Returns [output, final state]."""
    from . import ops as O

    q, k, v, gamma, beta = (to_array(x) for x in (q, k, v, gamma, beta))
    for x in (q, k, v):
        if x.ndim != 4:
            raise ValueError(f"[gated_delta_update] q, k and v must have 4 dimensions but got shape "
                             f"{fmt_shape(x._shape)}.")
    out_dtype = dt.promote_types(dt.promote_types(q._dtype, k._dtype), v._dtype)
    if out_dtype.kind != "f":
        out_dtype = dt.float32
    f32 = dt.float32
    batch, steps, key_heads, key_dim = q._shape
    value_heads, value_dim = v._shape[2:]
    q, k, v, gamma, beta = (cast(x, f32, stream) for x in (q, k, v, gamma, beta))
    if value_heads != key_heads and value_heads % key_heads == 0:
        q = O.repeat(q, value_heads // key_heads, axis=2, stream=stream)
        k = O.repeat(k, value_heads // key_heads, axis=2, stream=stream)
    if initial_state is None:
        state = O.zeros((batch, value_heads, value_dim, key_dim), f32, stream=stream)
    else:
        state = cast(to_array(initial_state), f32, stream)
    keep = None if mask is None else cast(to_array(mask), dt.bool_, stream)
    outputs = []
    for t in range(steps):
        k_t = O.expand_dims(k[:, t], -2, stream=stream)
        decayed = state * O.expand_dims(gamma[:, t], (-1, -2), stream=stream)
        recalled = O.sum(decayed * k_t, axis=-1, stream=stream)
        delta = (v[:, t] - recalled) * O.expand_dims(beta[:, t], -1, stream=stream)
        updated = decayed + k_t * O.expand_dims(delta, -1, stream=stream)
        y = O.sum(updated * O.expand_dims(q[:, t], -2, stream=stream), axis=-1, stream=stream)
        if keep is None:
            state = updated
        else:
            m = keep[:, t]
            y = O.where(O.reshape(m, m._shape + (1, 1), stream=stream), y, 0.0, stream=stream)
            state = O.where(O.reshape(m, m._shape + (1, 1, 1), stream=stream), updated, state, stream=stream)
        outputs.append(y)
    if outputs:
        out = O.stack(outputs, axis=1, stream=stream)
    else:
        out = O.zeros((batch, 0, value_heads, value_dim), f32, stream=stream)
    return [cast(out, out_dtype, stream), state]


# --- custom kernels: no Metal or CUDA back end here ---------------------------------------------------

class _MetalKernel:
    """What ``metal_kernel`` returns: calling it needs the Metal back end."""

    def __init__(self, name):
        self.name = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError("[metal_kernel] No Metal back-end.")


@api(module="fast")
def metal_kernel(name: str, input_names, output_names, source: str, header: str = "",
                 ensure_row_contiguous: bool = True, atomic_outputs: bool = False, compile_options=None):
    return _MetalKernel(name)


@api(module="fast")
def cuda_kernel(name: str, input_names, output_names, source: str, header: str = "",
                ensure_row_contiguous: bool = True, shared_memory: int = 0):
    raise RuntimeError("[cuda_kernel] No CUDA back-end.")


@api(module="fast")
def precompiled_cuda_kernel(*, name: str, compiled_source: bytes, inputs, output_shapes, output_dtypes,
                            scalars, grid, threadgroup, shared_memory: int = 0, init_value=None,
                            ensure_row_contiguous: bool = False, stream=None):
    raise RuntimeError("[cuda_kernel] No CUDA back-end.")


# --- gradient rules: each kernel differentiated through its composition of ops -------------------

def _attach_gradients():
    from .ops import _autodiff as ad
    from .ops._autodiff import O

    f32 = dt.float32

    def wide(x):
        return x if x._dtype is dt.float64 else O.astype(x, f32)

    def rms_norm_composite(p, x, *w):
        xf = wide(x)
        r = xf * O.rsqrt(O.mean(xf * xf, axis=-1, keepdims=True) + p["eps"])
        if w:
            r = r * wide(w[0])
        return O.astype(r, x._dtype)

    def layer_norm_composite(p, x, *wb):
        xf = wide(x)
        mu = O.mean(xf, axis=-1, keepdims=True)
        centered = xf - mu
        r = centered * O.rsqrt(O.mean(centered * centered, axis=-1, keepdims=True) + p["eps"])
        wb = list(wb)
        if p["weight"]:
            r = r * wide(wb.pop(0))
        if p["bias"]:
            r = r + wide(wb.pop(0))
        return O.astype(r, x._dtype)

    def rope_composite(p, x, offset, *freqs):
        dims, half = p["dims"], p["dims"] // 2
        xf = wide(x)
        if p["freqs"]:
            inv_freq = O.reciprocal(O.astype(O.stop_gradient(freqs[0]), f32))
        else:
            inv_freq = O.power(O.full((), float(p["base"]), f32), O.arange(half, dtype=f32) * (-2.0 / dims))
        seq = x._shape[-2]
        positions = O.reshape(O.arange(seq, dtype=f32), (seq, 1))
        off = O.astype(O.stop_gradient(offset), f32)
        if off.ndim:
            off = O.reshape(off, (-1,) + (1,) * (x.ndim - 1))
        theta = (positions + off) * float(p["scale"]) * inv_freq
        cos, sin = O.cos(theta), O.sin(theta)
        if p["traditional"]:
            a, b = xf[..., 0:dims:2], xf[..., 1:dims:2]
        else:
            a, b = xf[..., :half], xf[..., half:dims]
        first, second = a * cos - b * sin, a * sin + b * cos
        if p["traditional"]:
            rotated = O.reshape(O.stack([first, second], axis=-1), first._shape[:-1] + (dims,))
        else:
            rotated = O.concatenate([first, second], axis=-1)
        if dims < x._shape[-1]:
            rotated = O.concatenate([rotated, xf[..., dims:]], axis=-1)
        return O.astype(rotated, x._dtype)

    def sdpa_composite(p, q, k, v, *extra):
        mask = extra[:1] if p["mask"] == "array" else ()
        sinks = extra[-1] if p.get("sinks") else None
        hq, hk = q._shape[-3], k._shape[-3]
        if hq != hk:
            k = O.repeat(k, hq // hk, axis=-3)
            v = O.repeat(v, hq // hk, axis=-3)
        scores = O.matmul(q * p["scale"], O.swapaxes(k, -1, -2))
        length, keys = scores._shape[-2:]
        lowest = float(np.finfo(scores._dtype.np_compute).min)
        if p["mask"] == "causal":
            keep = np.arange(keys)[None, :] <= np.arange(length)[:, None] + (keys - length)
            scores = O.where(to_array(keep), scores, lowest)
        elif p["mask"] == "array":
            m = mask[0]  # an additive mask is differentiable, as in MLX's CPU composition (learned biases)
            scores = O.where(m, scores, lowest) if m._dtype is dt.bool_ else scores + m
        if sinks is not None:
            column = O.broadcast_to(O.reshape(sinks, (-1, 1, 1)), scores._shape[:-1] + (1,))
            scores = O.concatenate([O.astype(column, scores._dtype), scores], axis=-1)
        weights = O.softmax(scores, axis=-1, precise=True)
        if sinks is not None:
            weights = weights[..., 1:]
        return O.astype(O.matmul(weights, v), q._dtype)

    ad.composite(RMS_NORM, rms_norm_composite)
    ad.composite(LAYER_NORM, layer_norm_composite)
    ad.composite(ROPE, rope_composite)
    ad.composite(SDPA, sdpa_composite)


_attach_gradients()
