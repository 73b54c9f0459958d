"""Quantization: quantize, dequantize, quantized_matmul, gather_qmm, qqmm and gather_qqmm.

Packed weights are MLX's: each row is a little-endian bit stream of ``bits``-wide codes in uint32
words, first element in the lowest bits (3-, 5- and 6-bit codes straddle word boundaries). "affine"
groups keep a scale and a bias in the weight's dtype; the floating point modes ("mxfp4", "mxfp8",
"nvfp4") keep one uint8 scale per group (e8m0, or e4m3 for nvfp4) and E2M1 or E4M3 codes.

The numpy references follow MLX's CPU arithmetic: affine quantization in float32 with round half to
even, the floating point modes and dequantization step by step in the weight's (or output's) dtype.
The matrix products never unpack a whole weight matrix: they dequantize a block of rows at a time.
"""
from __future__ import annotations

import numpy as np

from ._base import (Primitive, api, broadcast_shapes, cast, dt, fmt_shape, make_node, register,
                    resolve_stream, to_array)
from .misc import _FP8_VALUES, _to_fp8_ref

_MODES = {"affine": (64, 4), "mxfp4": (32, 4), "nvfp4": (16, 4), "mxfp8": (32, 8)}
_FP4_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                        -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)
_NVFP4_ENCODE = 448.0 * 6.0  # global scale -> e4m3 scale range
# Dequantized weight elements held at once by the matrix products: a block's temporaries are a few of
# 512 KiB. With blocks of 1M elements (temporaries of 4 MiB) a decode step of the embedded model on the
# numpy executor ran at 1.1 tokens/s instead of 2.9 (the cause not pinned down: not the allocator's mmap
# threshold, which made no difference when raised).
_BLOCK_ELEMENTS = 1 << 17
_GROUP_SIZES = (32, 64, 128)  # the affine group sizes MLX's quantize takes
# Model loaders may also make affine groups of 16 (GGUF's Q6_K) through the private _loader_quantize.
# dequantize and quantized_matmul take any group size that divides the rows, as their numpy
# references do (MLX's dequantize does too; its quantized_matmul kernels stop at 32, 64 and 128).
_LOADER_GROUP_SIZES = (16,) + _GROUP_SIZES


# --- numpy helpers ----------------------------------------------------------------------------------

def _rounder(d: dt.Dtype):
    """Round float values to ``d``'s precision, kept in ``d``'s compute type (float32 for bfloat16)."""
    if d is dt.bfloat16:
        return lambda x: dt.bf16_to_f32(dt.f32_to_bf16(np.asarray(x, np.float32)))
    return lambda x: np.asarray(x).astype(d.np_compute, copy=False)


def _layout(bits: int) -> tuple:
    """(codes per pack, bytes per pack): packs never straddle a byte boundary."""
    if bits in (3, 5):
        return 8, bits
    if bits == 6:
        return 4, 3
    return 32 // bits, 4


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes (..., n) -> uint32 words (..., n * bits / 32)."""
    lead, n = codes.shape[:-1], codes.shape[-1]
    per, nbytes = _layout(bits)
    wide = np.uint32 if 32 % bits == 0 else np.uint64  # a pack of 3-, 5- or 6-bit codes spans 3 or 5 bytes
    c = codes.reshape(lead + (n // per, per))
    # One pass per code position: far faster than numpy's reduce along a short last axis.
    words = c[..., 0].astype(wide)
    for i in range(1, per):
        words |= c[..., i].astype(wide) << wide(i * bits)
    if wide is np.uint32:
        return words
    raw = words.astype("<u8").view(np.uint8).reshape(words.shape + (8,))[..., :nbytes]
    return np.ascontiguousarray(raw).reshape(lead + (-1,)).view("<u4").astype(np.uint32)


def _unpack(w: np.ndarray, bits: int) -> np.ndarray:
    """uint32 words (..., m) -> codes (..., m * 32 / bits) as uint32."""
    w = np.ascontiguousarray(w, dtype=np.uint32)
    lead = w.shape[:-1]
    mask = np.uint32((1 << bits) - 1)
    if 32 % bits == 0:
        shifts = np.arange(0, 32, bits, dtype=np.uint32)
        return ((w[..., None] >> shifts) & mask).reshape(lead + (-1,))
    per, nbytes = _layout(bits)
    raw = w.astype("<u4").view(np.uint8).reshape(lead + (-1, nbytes))
    padded = np.zeros(raw.shape[:-1] + (8,), np.uint8)
    padded[..., :nbytes] = raw
    words = padded.view("<u8")[..., 0]
    shifts = np.arange(per, dtype=np.uint64) * np.uint64(bits)
    return ((words[..., None] >> shifts) & np.uint64(mask)).astype(np.uint32).reshape(lead + (-1,))


def _groups(x: np.ndarray, group_size: int) -> np.ndarray:
    return x.reshape(x.shape[:-1] + (x.shape[-1] // group_size, group_size))


def _affine_quantize(w: np.ndarray, group_size: int, bits: int):
    """(codes, scales, biases) in float32, as MLX's CPU kernel computes them."""
    g = _groups(w.astype(np.float32), group_size)
    n_bins = np.float32((1 << bits) - 1)
    w_max = np.fmax.reduce(g, axis=-1)  # NaNs are skipped, as a running std::max skips them
    w_min = np.fmin.reduce(g, axis=-1)
    if bits == 1:  # two levels: the group's minimum and maximum, no zero alignment
        scales = np.maximum(w_max - w_min, np.float32(1e-7))
        q = np.nan_to_num(np.clip(np.rint((g - w_min[..., None]) / scales[..., None]), 0, 1), nan=0.0)
        return q.astype(np.uint32).reshape(w.shape), scales, w_min
    mask = np.abs(w_min) > np.abs(w_max)
    scales = np.maximum((w_max - w_min) / n_bins, np.float32(1e-7))
    scales = np.where(mask, scales, -scales)
    edge = np.where(mask, w_min, w_max)
    q0 = np.rint(edge / scales)
    nonzero = q0 != 0
    scales = np.where(nonzero, edge / np.where(nonzero, q0, np.float32(1)), scales).astype(np.float32)
    biases = np.where(nonzero, edge, np.float32(0)).astype(np.float32)
    q = np.rint((g - biases[..., None]) / scales[..., None])
    q = np.nan_to_num(np.clip(q, 0, n_bins), nan=0.0)
    return q.astype(np.uint32).reshape(w.shape), scales, biases


def _fp_quantize(w: np.ndarray, wdtype: dt.Dtype, group_size: int, bits: int, global_scale):
    """(codes, scale codes) of the floating point modes, step by step in the weight's dtype."""
    rw = _rounder(wdtype)
    g = _groups(w, group_size)
    maxval = 6.0 if bits == 4 else 448.0
    scales = rw(np.max(np.abs(g), axis=-1, keepdims=True) / np.float32(maxval))
    if group_size == 16:
        wide = _rounder(dt.promote_types(wdtype, dt.float32))
        encode = (np.float32(_NVFP4_ENCODE) / np.float32(global_scale.reshape(()))
                  if global_scale is not None else np.float32(1.0))
        scale_codes = _to_fp8_ref(None, wide(scales * encode))
        wq = wide(rw(g / rw(_FP8_VALUES[scale_codes])) * encode)
    else:
        # The e8m0 exponent is ceil(log2(scale)), taken exactly from the float's exponent and mantissa.
        finite = np.isfinite(scales)
        mant, exps = np.frexp(np.where(finite, scales, 1).astype(np.float64))
        exps = np.where(mant == 0.5, exps - 1, exps)
        exps = np.where(scales == 0, 0, exps)
        wq = rw(g / rw(np.ldexp(np.float64(1), exps)))
        wq = np.where(finite, wq, np.nan)
        scale_codes = (np.where(finite, exps + 127, 128) & 0xFF).astype(np.uint8)  # wraps, as MLX's does
        wide = rw
    if bits == 4:
        lut = rw(_FP4_VALUES)
        codes = np.argmin(np.abs(wide(wq[..., None] - lut)), axis=-1)
    else:
        codes = _to_fp8_ref(None, wq)
    return codes.reshape(w.shape), scale_codes[..., 0]


def _affine_values(codes, scales, biases, group_size, sdtype, bdtype):
    """code * scale + bias, rounded as MLX rounds each op: the product in the scales' dtype."""
    prod = _rounder(sdtype)(_groups(codes.astype(np.float32), group_size) * scales[..., None])
    return _rounder(dt.promote_types(sdtype, bdtype))(prod + biases[..., None])


def _fp_values(codes, scale_codes, group_size, bits, out: dt.Dtype, global_scale):
    ro = _rounder(out)
    vals = ro((_FP4_VALUES if bits == 4 else _FP8_VALUES)[codes])
    if group_size == 16:
        scales = ro(_FP8_VALUES[scale_codes])
        if global_scale is not None:
            wide = _rounder(dt.promote_types(out, dt.float32))
            scales = wide(scales * wide(np.float32(global_scale.reshape(())) / np.float32(_NVFP4_ENCODE)))
            ro = wide
    else:
        scales = ro(np.ldexp(np.float64(1), scale_codes.astype(np.int32) - 127))
    return ro(_groups(vals, group_size) * scales[..., None])


def _dequantize_block(p, w, scales, biases, global_scale):
    """Dequantized rows of a packed matrix block, in the values' dtype (float32 for bfloat16)."""
    codes = _unpack(w, p["bits"])
    if p["mode"] == "affine":
        vals = _affine_values(codes, scales, biases, p["group_size"], dt.as_dtype(p["sdtype"]),
                              dt.as_dtype(p["bdtype"]))
    else:
        vals = _fp_values(codes, scales, p["group_size"], p["bits"], dt.as_dtype(p["vdtype"]), global_scale)
    return vals.reshape(codes.shape)


# --- quantize / dequantize --------------------------------------------------------------------------

def _quantize_ref(p, w, global_scale=None):
    if p["mode"] == "affine":
        if p["wdtype"] == "float64":  # recorded, but MLX's CPU kernel has no float64 version
            raise RuntimeError("[fast::Quantize::eval_cpu] Only supports floating point inputs")
        codes, scales, biases = _affine_quantize(w, p["group_size"], p["bits"])
        if p["part"] == "wq":
            return _pack(codes, p["bits"])
        return (scales if p["part"] == "scales" else biases).reshape(w.shape[:-1] + (-1,))
    codes, scale_codes = _fp_quantize(w, dt.as_dtype(p["wdtype"]), p["group_size"], p["bits"], global_scale)
    return _pack(codes, p["bits"]) if p["part"] == "wq" else scale_codes.reshape(w.shape[:-1] + (-1,))


def _dequantize_ref(p, w, scales, *rest):
    biases = rest[0] if p["mode"] == "affine" else None
    global_scale = rest[0] if p["mode"] != "affine" and rest else None
    vals = _dequantize_block(p, w, scales, biases, global_scale)
    return vals.reshape(w.shape[:-1] + (-1,))


def _sample_weights(rng, d, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    return dt.bf16_to_f32(dt.f32_to_bf16(x)) if d is dt.bfloat16 else x.astype(d.np_compute)


def _quantize_cases(rng, d):
    if d not in (dt.float16, dt.bfloat16, dt.float32):
        return []
    w = _sample_weights(rng, d, (4, 256))
    cases = [("quantize", (w,), {"group_size": gs, "bits": b}) for gs in (32, 64, 128) for b in (2, 3, 4, 5, 6, 8)]
    return cases + [("quantize", (w,), {"mode": m}) for m in ("mxfp4", "mxfp8", "nvfp4")]


QUANTIZE = register(Primitive(
    "quantize", "kernel", _quantize_ref, dtypes=(dt.float16, dt.bfloat16, dt.float32),
    doc="Group-wise quantization; params['part'] picks the packed weights, the scales or the biases.",
    extra={"cases": _quantize_cases}))
DEQUANTIZE = register(Primitive(
    "dequantize", "kernel", _dequantize_ref, dtypes=(dt.uint32,),
    doc="Values of packed quantized weights from their scales (and biases)."))


def _mode_params(mode, group_size, bits, tag):
    if mode not in _MODES:
        raise ValueError(f"[{tag}] Invalid quantization mode '{mode}'.")
    gs, b = _MODES[mode]
    return (gs if group_size is None else group_size), (b if bits is None else bits)


def _check_fp_params(mode, group_size, bits, tag):
    expected_gs = 16 if mode == "nvfp4" else 32
    expected_bits = 8 if mode == "mxfp8" else 4
    if group_size != expected_gs:
        raise ValueError(f"[{tag}] {mode} quantization requires group size {expected_gs} but got {group_size}.")
    if bits != expected_bits:
        raise ValueError(f"[{tag}] {mode} quantization requires bits to be {expected_bits} but got {bits}.")


def _check_global_scale(mode, global_scale, tag):
    if global_scale is None:
        return None
    if mode != "nvfp4":
        raise ValueError(f"[{tag}] Global scale is only supported for 'nvfp4' quantization mode.")
    global_scale = to_array(global_scale)
    if global_scale.size != 1:
        raise ValueError(f"[{tag}] Global scale must be a scalar but got shape {fmt_shape(global_scale._shape)}.")
    if global_scale._dtype is not dt.float32:
        raise ValueError(f"[{tag}] Global scale must have dtype float32 but got {global_scale._dtype.name}.")
    return global_scale


def _output_type(tag, scales, biases, dtype, mode):
    """The values' dtype (MLX's validate_mode_with_type)."""
    if dtype is not None and dtype.kind != "f":
        raise ValueError(f"[{tag}] Only real floating types are supported but output dtype == {dtype.name}.")
    if mode == "affine":
        if biases is None:
            raise ValueError(f"[{tag}] Biases must be provided for affine quantization.")
        d = dt.promote_types(scales._dtype, biases._dtype)
        if d.kind != "f":
            raise ValueError(f"[{tag}] Only real floating types are supported but scales.dtype() == "
                             f"{scales._dtype.name} and biases.dtype() == {biases._dtype.name}.")
        return dtype or d
    if scales._dtype is not dt.uint8:
        raise ValueError(f"[{tag}] Scale type must be uint8 but received type {scales._dtype.name}.")
    if biases is not None:
        raise ValueError(f"[{tag}] Biases must be null for quantization mode '{mode}'.")
    return dtype or dt.bfloat16


@api(primitive="quantize")
def quantize(w, /, group_size=None, bits=None, mode="affine", *, global_scale=None, stream=None):
    """Quantize ``w`` group by group: (packed weights, scales, biases) for "affine", else (weights,
    scales)."""
    return _quantize(w, group_size, bits, mode, global_scale, stream, _GROUP_SIZES)


def _loader_quantize(w, group_size, bits, *, stream=None):
    """Private to model loaders: affine :func:`quantize` that also takes group size 16 (GGUF's Q6_K
    blocks), so quantized layers of that group size can be made and then given loaded weights."""
    return _quantize(w, group_size, bits, "affine", None, stream, _LOADER_GROUP_SIZES)


def _quantize(w, group_size, bits, mode, global_scale, stream, group_sizes):
    w = to_array(w)
    group_size, bits = _mode_params(mode, group_size, bits, "quantize")
    if w._dtype.kind != "f":
        raise ValueError(f"[quantize] Only real floating types can be quantized but w has type {w._dtype.name}.")
    if w.ndim < 2:
        raise ValueError("[quantize] The matrix to be quantized must have at least 2 dimension but it has only "
                         f"{w.ndim}.")
    if w._shape[-1] % group_size:
        raise ValueError("[quantize] The last dimension of the matrix needs to be divisible by the quantization "
                         f"group size {group_size}. However the provided  matrix has shape {fmt_shape(w._shape)}")
    global_scale = _check_global_scale(mode, global_scale, "quantize")
    if mode == "affine":
        if group_size not in group_sizes:
            raise ValueError(f"[quantize] The requested group size {group_size} is not supported. The supported "
                             "group sizes are 32, 64, and 128.")
        if bits not in (1, 2, 3, 4, 5, 6, 8):
            raise ValueError(f"[quantize] The requested number of bits {bits} is not supported. The supported "
                             "bits are 1, 2, 3, 4, 5, 6 and 8.")
    else:
        _check_fp_params(mode, group_size, bits, "quantize")
    s = resolve_stream(stream)
    params = {"group_size": group_size, "bits": bits, "mode": mode, "wdtype": w._dtype.name}
    inputs = (w,) if global_scale is None else (w, global_scale)
    wq_shape = w._shape[:-1] + (w._shape[-1] * bits // 32,)
    s_shape = w._shape[:-1] + (w._shape[-1] // group_size,)
    outs = [make_node(QUANTIZE, inputs, dict(params, part="wq"), wq_shape, dt.uint32, s)]
    if mode == "affine":
        outs += [make_node(QUANTIZE, inputs, dict(params, part=part), s_shape, w._dtype, s)
                 for part in ("scales", "biases")]
    else:
        outs.append(make_node(QUANTIZE, inputs, dict(params, part="scales"), s_shape, dt.uint8, s))
    return outs


@api(primitive="dequantize")
def dequantize(w, /, scales, biases=None, group_size=None, bits=None, mode="affine", global_scale=None,
               dtype=None, *, stream=None):
    """The values of quantized ``w`` (``scales * code + biases`` for "affine")."""
    w, scales = to_array(w), to_array(scales)
    biases = None if biases is None else to_array(biases)
    if mode not in _MODES:
        raise ValueError(f"[dequantize] Invalid quantization mode '{mode}'.")
    out = _output_type("dequantize", scales, biases, None if dtype is None else dt.as_dtype(dtype), mode)
    group_size, bits = _mode_params(mode, group_size, bits, "dequantize")
    if bits <= 0:
        raise ValueError(f"[dequantize] Invalid value for bits: {bits}")
    if group_size <= 0:
        raise ValueError(f"[dequantize] Invalid value for group_size: {group_size}")
    if w._dtype is not dt.uint32:
        raise ValueError("[dequantize] The matrix should be given as a uint32")
    if w.ndim < 2:
        raise ValueError("[dequantize] The matrix to be dequantized must have at least 2 dimension but it has "
                         f"only {w.ndim}.")
    global_scale = _check_global_scale(mode, global_scale, "dequantize")
    what = "scales and biases" if mode == "affine" else "scales"
    if mode != "affine":
        _check_fp_params(mode, group_size, bits, "dequantize")
    if w.ndim != scales.ndim or w._shape[:-1] != scales._shape[:-1]:
        raise ValueError(f"[dequantize] Shape of {what} does not match the matrix")
    out_size = w._shape[-1] * 32 // bits
    if out_size != scales._shape[-1] * group_size:
        tail = (f" with group_size={group_size} and bits={bits}." if mode == "affine" else ".")
        raise ValueError(f"[dequantize] Shape of {what} does not match the matrix given the quantization "
                         f"parameters. Provided matrix of shape {fmt_shape(w._shape)} and {what.replace(' and ', '/')} "
                         f"of shape {fmt_shape(scales._shape)}{tail}")
    params = {"group_size": group_size, "bits": bits, "mode": mode}
    shape = w._shape[:-1] + (out_size,)
    s = resolve_stream(stream)
    if mode == "affine":
        values = dt.promote_types(scales._dtype, biases._dtype)
        params.update(sdtype=scales._dtype.name, bdtype=biases._dtype.name)
        node = make_node(DEQUANTIZE, (w, scales, biases), params, shape, values, s)
        return cast(node, out, stream)
    params["vdtype"] = out.name
    values = dt.promote_types(out, dt.float32) if global_scale is not None else out
    inputs = (w, scales) if global_scale is None else (w, scales, global_scale)
    return make_node(DEQUANTIZE, inputs, params, shape, values, s)


# --- matrix products ----------------------------------------------------------------------------------

def _qmm(p, x, w, scales, biases, global_scale=None):
    """x (..., M, K) times one packed matrix, a block of weight rows at a time (float accumulation)."""
    transpose, bits = p["transpose"], p["bits"]
    acc = np.float64 if x.dtype == np.float64 else np.float32
    x = x.astype(acc, copy=False)
    rows = w.shape[0]
    width = w.shape[1] * 32 // bits
    step = max(1, _BLOCK_ELEMENTS // max(width, 1))
    n_out = rows if transpose else width
    out = np.zeros(x.shape[:-1] + (n_out,), acc)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        blk = _dequantize_block(p, w[r0:r1], scales[r0:r1], None if biases is None else biases[r0:r1],
                                global_scale).astype(acc, copy=False)
        if transpose:
            out[..., r0:r1] = x @ blk.T
        else:
            out += x[..., r0:r1] @ blk
    return out


def _split_scales(p, rest):
    """(biases, global_scale) from the inputs after the scales."""
    if p["mode"] == "affine":
        return rest[0], None
    return None, (rest[0] if rest else None)


def _quantized_matmul_ref(p, x, w, scales, *rest):
    biases, global_scale = _split_scales(p, rest)
    if w.ndim == 2:
        return _qmm(p, x, w, scales, biases, global_scale)
    if x.ndim <= 2:  # a single product: MLX reads the first weight matrix
        first = (0,) * (w.ndim - 2)
        return _qmm(p, x, w[first], scales[first], None if biases is None else biases[first], global_scale)
    batch = x.shape[:-2]
    out = np.empty(batch + x.shape[-2:-1] + (p["n"],), np.float64 if x.dtype == np.float64 else np.float32)
    for i in np.ndindex(*batch):
        out[i] = _qmm(p, x[i], w[i], scales[i], None if biases is None else biases[i], global_scale)
    return out


def _gather_qmm_ref(p, x, w, scales, *rest):
    *rest, lhs, rhs = rest
    biases, global_scale = _split_scales(p, rest)
    lhs, rhs = lhs.reshape(-1), rhs.reshape(-1)
    x = x.reshape((-1,) + x.shape[-2:])
    w = w.reshape((-1,) + w.shape[-2:])
    scales = scales.reshape((-1,) + scales.shape[-2:])
    biases = None if biases is None else biases.reshape((-1,) + biases.shape[-2:])
    out = np.empty((lhs.size, x.shape[-2], p["n"]), np.float64 if x.dtype == np.float64 else np.float32)
    for r in np.unique(rhs):  # each weight matrix is unpacked once, for every product that uses it
        at = np.nonzero(rhs == r)[0]
        out[at] = _qmm(p, x[lhs[at]], w[r], scales[r], None if biases is None else biases[r], global_scale)
    return out.reshape(p["shape"])


QUANTIZED_MATMUL = register(Primitive(
    "quantized_matmul", "kernel", _quantized_matmul_ref, dtypes=(dt.float16, dt.bfloat16, dt.float32),
    doc="x times a packed quantized matrix (transposed or not), unpacked a block of rows at a time."))
GATHER_QMM = register(Primitive(
    "gather_qmm", "kernel", _gather_qmm_ref, dtypes=(dt.float16, dt.bfloat16, dt.float32),
    doc="Products of x's and packed quantized matrices picked by batch indices."))


def _check_quantized(tag, w, scales, biases, group_size, bits):
    if w._dtype is not dt.uint32:
        raise ValueError(f"[{tag}] The weight matrix should be uint32 but received {w._dtype.name}")
    if biases is not None and scales._shape != biases._shape:
        raise ValueError(f"[{tag}] Scales and biases should have the same shape. Received scales with shape "
                         f"{fmt_shape(scales._shape)} and biases with {fmt_shape(biases._shape)}")
    if w._shape[:-2] != scales._shape[:max(w.ndim - 2, 0)]:
        raise ValueError(f"[{tag}] Weight and scales should have the same batch shape. Received weight with "
                         f"shape {fmt_shape(w._shape)}, scales with {fmt_shape(scales._shape)}.")
    if w._shape[-1] * 32 // bits != scales._shape[-1] * group_size:
        raise ValueError(f"[{tag}] The shapes of the weight and scales are incompatible based on bits and "
                         f"group_size. w.shape() == {fmt_shape(w._shape)} and scales.shape() == "
                         f"{fmt_shape(scales._shape)} with group_size={group_size} and bits={bits}")


def _matmul_dims(tag, x, w, scales, biases, transpose, group_size, bits):
    """(inner, outer) dimensions of the unpacked matrix, checked against x."""
    _check_quantized(tag, w, scales, biases, group_size, bits)
    unpacked = w._shape[-1] * 32 // bits
    inner, outer = (unpacked, w._shape[-2]) if transpose else (w._shape[-2], unpacked)
    if inner != x._shape[-1]:
        raise ValueError(f"[{tag}] Last dimension of first input with shape (..., {x._shape[-1]}) does not "
                         f"match the expanded quantized matrix ({inner}, {outer}) computed from shape "
                         f"{fmt_shape(w._shape)} with group_size={group_size}, bits={bits} and "
                         f"transpose={'true' if transpose else 'false'}")
    return inner, outer


def _array_args(tag, *xs):
    from .shape import _array_arg

    return [None if x is None else _array_arg(x, tag) for x in xs]


def _matmul_setup(tag, x, w, scales, biases, transpose, group_size, bits, mode, stream, widen=False):
    """Checked inputs (cast as MLX casts them), the output dtype and the recorded parameters.

    With ``widen``, float16 scales and biases of a float32 product stay float16: the product still
    computes with their float32 values (``sdtype`` and ``bdtype`` say so; widening is exact, so the
    result is MLX's), but no float32 copy of them is made. A quantized float16 model run in float32
    would otherwise hold both copies of every layer's scales and biases."""
    if mode not in _MODES:
        raise ValueError(f"[{tag}] Invalid quantization mode '{mode}'.")
    vals = _output_type(tag, scales, biases, None, mode)
    group_size, bits = _mode_params(mode, group_size, bits, tag)
    _, outer = _matmul_dims(tag, x, w, scales, biases, transpose, group_size, bits)
    out = dt.promote_types(x._dtype, vals) if mode == "affine" else x._dtype
    if out.kind != "f":
        raise ValueError(f"[{tag}] Only real floating types are supported but x.dtype() == {x._dtype.name}.")
    params = {"group_size": group_size, "bits": bits, "mode": mode, "transpose": bool(transpose), "n": outer,
              "vdtype": out.name}
    if mode == "affine":
        params.update(sdtype=out.name, bdtype=out.name)
        keep = widen and out is dt.float32 and scales._dtype is biases._dtype is dt.float16
        inputs = [cast(x, out, stream), w] + [a if keep else cast(a, out, stream) for a in (scales, biases)]
    else:
        inputs = [x, w, scales]
    return inputs, out, params


@api(primitive="quantized_matmul")
def quantized_matmul(x, w, /, scales, biases=None, transpose=True, group_size=None, bits=None, mode="affine",
                     *, stream=None):
    """``x @ w.T`` (or ``x @ w``) with ``w`` packed by :func:`quantize`."""
    x, w, scales, biases = _array_args("quantized_matmul", x, w, scales, biases)
    inputs, out, params = _matmul_setup("quantized_matmul", x, w, scales, biases, transpose, group_size, bits,
                                        mode, stream, widen=True)
    if x.ndim > 2 and w.ndim > 2:
        from .shape import broadcast_to

        batch = broadcast_shapes(x._shape[:-2], w._shape[:-2])
        inputs = [broadcast_to(a, batch + a._shape[-2:], stream=stream) for a in inputs]
    shape = inputs[0]._shape[:-1] + (params["n"],)
    return make_node(QUANTIZED_MATMUL, tuple(inputs), params, shape, out, resolve_stream(stream))


@api(primitive="gather_qmm")
def gather_qmm(x, w, /, scales, biases=None, lhs_indices=None, rhs_indices=None, transpose=True,
               group_size=None, bits=None, mode="affine", global_scale=None, *, sorted_indices=False,
               stream=None):
    """Quantized :func:`gather_mm`: products of the x and w matrices the batch indices pick."""
    from .linalg import _batch_index
    from .shape import broadcast_to

    if lhs_indices is None and rhs_indices is None:
        return quantized_matmul(x, w, scales, biases, transpose, group_size, bits, mode, stream=stream)
    x, w, scales, biases = _array_args("gather_qmm", x, w, scales, biases)
    inputs, out, params = _matmul_setup("gather_qmm", x, w, scales, biases, transpose, group_size, bits, mode,
                                        stream)
    lhs = _batch_index(lhs_indices, x._shape[:-2], "gather_qmm", stream)
    rhs = _batch_index(rhs_indices, w._shape[:-2], "gather_qmm", stream)
    idx = broadcast_shapes(lhs._shape, rhs._shape)
    shape = idx + (x._shape[-2] if x.ndim > 1 else 1, params["n"])
    params["shape"] = shape
    if mode != "affine":
        inputs[0] = cast(inputs[0], out, stream)
    inputs += [broadcast_to(lhs, idx, stream=stream), broadcast_to(rhs, idx, stream=stream)]
    return make_node(GATHER_QMM, tuple(inputs), params, shape, out, resolve_stream(stream))


# --- gradients ------------------------------------------------------------------------------------

def _weight_grad(x, cot, transpose):
    """d(loss)/d(unpacked weights) for each product: cot^T x (transposed) or x^T cot."""
    from .. import ops as O

    if transpose:
        return O.matmul(O.swapaxes(cot, -1, -2), x)
    return O.matmul(O.swapaxes(x, -1, -2), cot)


def _group_grads(p, dw, w, argnums, scales_at, biases_at):
    """Gradients of the affine scales and biases from the unpacked weights' gradient ``dw``."""
    from .. import ops as O

    gs = p["group_size"]
    grouped = O.reshape(dw, dw._shape[:-1] + (dw._shape[-1] // gs, gs))
    out = {}
    if scales_at in argnums:
        ones = O.ones(w._shape[:-1] + (w._shape[-1] * 32 // p["bits"] // gs,), dw._dtype)
        codes = dequantize(w, ones, O.zeros_like(ones), gs, p["bits"])
        codes = O.reshape(codes, grouped._shape)
        out[scales_at] = O.sum(grouped * codes, axis=-1)
    if biases_at in argnums:
        out[biases_at] = O.sum(grouped, axis=-1)
    return out


def _as_inputs(grads: dict, inputs) -> dict:
    """Gradients in their inputs' dtypes (float16 scales a float32 product widened itself)."""
    return {i: cast(g, inputs[i]._dtype) for i, g in grads.items()}


def _check_grad_args(p, argnums, tag, n_inputs):
    # MLX's error types: RuntimeError for the packed weights and the indices, ValueError for the scales.
    if 1 in argnums:
        raise RuntimeError(f"[{tag}::vjp] no gradient wrt the quantized weights.")
    if p["mode"] != "affine" and 2 in argnums:
        raise ValueError(f"[{tag}::vjp] no gradient wrt scales in {p['mode']} quantization.")
    if any(i >= n_inputs for i in argnums):
        raise RuntimeError(f"[{tag}::vjp] cannot compute the gradient wrt the indices.")


def _quantized_matmul_vjp(node, cot, argnums):
    from .. import ops as O

    p = node._params
    x, w, scales, *rest = node._inputs
    _check_grad_args(p, argnums, "QuantizedMatmul", 4 if p["mode"] == "affine" else 3)
    grads = {}
    if 0 in argnums:
        grads[0] = quantized_matmul(cot, w, scales, rest[0] if p["mode"] == "affine" else None,
                                    not p["transpose"], p["group_size"], p["bits"], p["mode"])
    if 2 in argnums or 3 in argnums:
        x2 = O.reshape(x, (-1, x._shape[-1])) if w.ndim == 2 else x
        c2 = O.reshape(cot, (-1, cot._shape[-1])) if w.ndim == 2 else cot
        if x2.ndim == 1:
            x2, c2 = O.reshape(x2, (1, -1)), O.reshape(c2, (1, -1))
        grads.update(_as_inputs(_group_grads(p, _weight_grad(x2, c2, p["transpose"]), w, argnums, 2, 3),
                                node._inputs))
    return [grads[i] for i in argnums]


def _quantized_matmul_jvp(node, tangents, argnums):
    if argnums != [0] and tuple(argnums) != (0,):
        raise ValueError("[QuantizedMatmul::jvp] No JVP wrt the quantized matrix.")
    p = node._params
    x, w, scales, *rest = node._inputs
    return quantized_matmul(tangents[0], w, scales, rest[0] if p["mode"] == "affine" else None, p["transpose"],
                            p["group_size"], p["bits"], p["mode"])


def _gather_qmm_vjp(node, cot, argnums):
    from .. import ops as O

    p = node._params
    x, w, scales, *rest = node._inputs
    lhs, rhs = rest[-2], rest[-1]
    biases = rest[0] if p["mode"] == "affine" else None
    _check_grad_args(p, argnums, "GatherQMM", len(node._inputs) - 2)
    flat_lhs, flat_rhs = O.reshape(lhs, (-1,)), O.reshape(rhs, (-1,))
    xs = O.reshape(x, (-1,) + x._shape[-2:])
    grads = {}
    if 0 in argnums:
        g = gather_qmm(cot, w, scales, biases, rhs_indices=rhs, transpose=not p["transpose"],
                       group_size=p["group_size"], bits=p["bits"], mode=p["mode"])
        g = O.reshape(g, (-1,) + xs._shape[-2:])
        grads[0] = O.reshape(O.zeros_like(xs).at[flat_lhs].add(g), x._shape)
    if 2 in argnums or 3 in argnums:
        ws = O.reshape(w, (-1,) + w._shape[-2:])
        cots = O.reshape(cot, (-1,) + cot._shape[-2:])
        dw = _weight_grad(O.take(xs, flat_lhs, axis=0), cots, p["transpose"])
        per = _group_grads(p, dw, O.take(ws, flat_rhs, axis=0), argnums, 2, 3)
        for i, g in per.items():
            target = node._inputs[i]
            flat = O.reshape(target, (-1,) + target._shape[-2:])
            grads[i] = O.reshape(O.zeros_like(flat).at[flat_rhs].add(g), target._shape)
    return [grads[i] for i in argnums]


QUANTIZED_MATMUL.vjp, QUANTIZED_MATMUL.jvp = _quantized_matmul_vjp, _quantized_matmul_jvp
GATHER_QMM.vjp = _gather_qmm_vjp


# --- products with quantized inputs (qqmm) ------------------------------------------------------------

def _fp_round_trip(x: np.ndarray, group_size: int, bits: int) -> np.ndarray:
    """x quantized to a floating point mode and back, as MLX's CPU does it for qqmm's input: the
    scale rounded to e4m3 (nvfp4) or to the nearest power of two (e8m0), codes to nearest."""
    g = _groups(x.astype(np.float32), group_size)
    scale = np.max(np.abs(g), axis=-1, keepdims=True) / np.float32(6.0 if bits == 4 else 448.0)
    if group_size == 16:
        scale = _FP8_VALUES[_to_fp8_ref(None, scale)]
    else:
        mant, e = np.frexp(np.where(np.isfinite(scale), scale, 1).astype(np.float64))
        e = np.where(scale == 0, 0, np.where(mant == 0.5, e - 1, e))
        scale = np.where(np.isfinite(scale), np.ldexp(np.float64(1), e), np.nan).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        el = np.where(scale == 0, np.float32(0), g / scale)
    if bits == 8:
        vals = _FP8_VALUES[_to_fp8_ref(None, el)]
    else:
        mag = np.abs(el)
        edges = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], np.float32)
        # Ties go to the even code: 0.25 -> 0, 0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4.
        idx = np.searchsorted(edges, mag, side="left") + np.isin(mag, edges[[1, 3, 5]])
        idx = np.where(np.isnan(mag), 7, idx)
        vals = np.where(np.signbit(el), -1, 1) * _FP4_VALUES[idx]
    return (scale * vals).reshape(x.shape)


def _qqmm_ref(p, x, w, *rest):
    xhat = _fp_round_trip(x, p["group_size"], p["bits"])
    if p["quantized"]:
        q = dict(p, transpose=True)
        out = _qmm(q, xhat, w, rest[0], None)
    else:
        what = _fp_round_trip(w, p["group_size"], p["bits"])
        out = xhat @ what.astype(np.float32).T
    return out


def _gather_qqmm_ref(p, x, w, lhs, rhs, *rest):
    lhs, rhs = lhs.reshape(-1), rhs.reshape(-1)
    x = x.reshape((-1,) + x.shape[-2:])
    w = w.reshape((-1,) + w.shape[-2:])
    scales = rest[0].reshape((-1,) + rest[0].shape[-2:]) if p["quantized"] else None
    out = np.empty((lhs.size, x.shape[-2], p["n"]), np.float32)
    for i, (a, b) in enumerate(zip(lhs, rhs)):
        out[i] = _qqmm_ref(p, x[a], w[b], *(() if scales is None else (scales[b],)))
    return out.reshape(p["shape"])


QQMM = register(Primitive(
    "qqmm", "kernel", _qqmm_ref, dtypes=(dt.float16, dt.bfloat16, dt.float32),
    doc="x quantized on the fly times a quantized (or quantized on the fly) matrix, transposed."))
GATHER_QQMM = register(Primitive(
    "gather_qqmm", "kernel", _gather_qqmm_ref, dtypes=(dt.float16, dt.bfloat16, dt.float32),
    doc="qqmm over matrices picked by batch indices."))


def _qqmm_setup(tag, x, w, scales, group_size, bits, mode, global_scale_x, global_scale_w):
    if mode not in _MODES:
        raise ValueError(f"[{tag}] Invalid quantization mode '{mode}'.")
    group_size, bits = _mode_params(mode, group_size, bits, tag)
    quantized = w._dtype is dt.uint32
    if quantized:
        if scales is None:
            raise ValueError(f"[{tag}] Scales must be provided if second argument is quantized.")
        _check_quantized(tag, w, scales, None, group_size, bits)
        unpacked = w._shape[-1] * 32 // bits
        if unpacked != x._shape[-1]:
            raise ValueError(f"[{tag}] Last dimension of first input with shape (..., {x._shape[-1]}) does not "
                             f"match the expanded quantized matrix ({unpacked}, {w._shape[-2]}) computed from "
                             f"shape {fmt_shape(w._shape)} with group_size={group_size}, bits={bits} and "
                             "transpose=true")
    else:
        if w._dtype.kind != "f" or w._dtype is dt.float64:
            raise ValueError(f"[{tag}] Only real floating types except float64 are supported but second "
                             f"argument dtype == {w._dtype.name}.")
        if x._shape[-1] != w._shape[-1]:
            raise ValueError(f"[{tag}] Last dimension of first input with shape {fmt_shape(x._shape)} must match "
                             f"last dimension of second input with shape {fmt_shape(w._shape)}.")
    if x._dtype.kind != "f" or x._dtype is dt.float64:
        raise ValueError(f"[{tag}] Only real floating types except float64 are supported but first argument "
                         f"dtype == {x._dtype.name}.")
    gx = _check_global_scale(mode, global_scale_x, tag)
    gw = _check_global_scale(mode, global_scale_w, tag)
    if mode == "nvfp4" and (gx is None) != (gw is None):
        raise ValueError(f"[{tag}] For nvfp4 mode, either both global_scale_x and global_scale_w must be "
                         "provided, or neither.")
    inputs = [w] + ([scales] if scales is not None else [])
    params = {"group_size": group_size, "bits": bits, "mode": mode, "quantized": quantized, "n": w._shape[-2],
              "vdtype": "float32"}
    return inputs, params


@api(primitive="qqmm")
def qqmm(x, w, scales=None, group_size=None, bits=None, mode="nvfp4", global_scale_x=None, global_scale_w=None,
         *, stream=None):
    """``x @ w.T`` with ``x`` quantized on the fly and ``w`` quantized (or quantized on the fly)."""
    from .shape import reshape

    x, w, scales = _array_args("qqmm", x, w, scales)
    shape_in = x._shape
    if x.ndim == 1:
        x = reshape(x, (1, -1), stream=stream)
    elif w.ndim == 2 and x.ndim > 2:
        x = reshape(x, (-1, x._shape[-1]), stream=stream)
    if x.ndim > 2 or w.ndim > 2:
        raise ValueError(f"[qqmm] Only 2D inputs are supported but x.ndim() == {x.ndim} and w.ndim() == "
                         f"{w.ndim}.")
    inputs, params = _qqmm_setup("qqmm", x, w, scales, group_size, bits, mode, global_scale_x, global_scale_w)
    out = make_node(QQMM, (x, *inputs), params, x._shape[:-1] + (params["n"],), x._dtype,
                    resolve_stream(stream))
    if len(shape_in) != 2:
        out = reshape(out, shape_in[:-1] + (params["n"],), stream=stream)
    return out


@api(primitive="gather_qqmm")
def gather_qqmm(x, w, scales=None, lhs_indices=None, rhs_indices=None, group_size=None, bits=None,
                mode="nvfp4", global_scale_x=None, global_scale_w=None, *, sorted_indices=False, stream=None):
    """qqmm over the x and w matrices the batch indices pick."""
    from .linalg import _batch_index
    from .shape import broadcast_to

    x, w, scales = _array_args("gather_qqmm", x, w, scales)
    inputs, params = _qqmm_setup("gather_qqmm", x, w, scales, group_size, bits, mode, global_scale_x,
                                 global_scale_w)
    lhs = _batch_index(lhs_indices, x._shape[:-2], "gather_qqmm", stream)
    rhs = _batch_index(rhs_indices, w._shape[:-2], "gather_qqmm", stream)
    idx = broadcast_shapes(lhs._shape, rhs._shape)
    shape = idx + (x._shape[-2], params["n"])
    params["shape"] = shape
    lhs, rhs = broadcast_to(lhs, idx, stream=stream), broadcast_to(rhs, idx, stream=stream)
    return make_node(GATHER_QQMM, (x, w, lhs, rhs) + tuple(inputs[1:]), params, shape, x._dtype,
                     resolve_stream(stream))
