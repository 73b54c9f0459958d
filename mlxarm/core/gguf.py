"""The GGUF (v2/v3) reader and writer behind ``mx.load`` and ``mx.save_gguf``.

Reading works on a byte buffer (usually a memory map of the whole file) through ``ByteReader``,
which bounds-checks every read, so a header that declares more than the file holds fails before
anything of that size is allocated. Tensors come back as MLX returns them: F32/F16/I8/I16/I32 as
views of the file; Q4_0/Q4_1/Q8_0 as MLX affine-quantized triples (``name`` uint32 weights,
``prefix.scales`` and ``prefix.biases`` float16); BF16 and the K-quants MLX dequantizes (Q2_K,
Q4_K, Q6_K) as float16. ``load_quantized`` reads the same files for model loaders, keeping every
block type that is an affine quantization (Q4_0 ... Q6_K) packed, with exact scales and biases.
"""
from __future__ import annotations

import struct

import numpy as np

from . import dtypes as dt
from .array import array, make_realized
from .device import count_buffer
from .errors import DtypeError

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 8  # GGML's own limit is 4; files with up to 8 are accepted.

# Metadata value types.
_U8, _I8, _U16, _I16, _U32, _I32, _F32, _BOOL, _STRING, _ARRAY, _U64, _I64, _F64 = range(13)
_SCALAR_TYPES = {  # value type -> (little-endian numpy dtype, the Dtype MLX returns)
    _U8: ("<u1", dt.uint8), _I8: ("<i1", dt.int8), _U16: ("<u2", dt.uint16),
    _I16: ("<i2", dt.int16), _U32: ("<u4", dt.uint32), _I32: ("<i4", dt.int32),
    _F32: ("<f4", dt.float32), _BOOL: ("|b1", dt.bool_), _U64: ("<u8", dt.uint64),
    _I64: ("<i8", dt.int64), _F64: ("<f8", dt.float32),
}
_VALUE_TYPE_OF_DTYPE = {dt.float32: _F32, dt.int64: _I64, dt.int32: _I32, dt.int16: _I16,
                        dt.int8: _I8, dt.uint64: _U64, dt.uint32: _U32, dt.uint16: _U16,
                        dt.uint8: _U8, dt.bool_: _BOOL}

# Tensor types: ggml type id -> (name, weights per block, bytes per block).
_F32_T, _F16_T, _Q4_0, _Q4_1, _Q8_0, _Q2_K, _Q4_K, _Q6_K = 0, 1, 2, 3, 8, 10, 12, 14
_I8_T, _I16_T, _I32_T, _BF16_T = 24, 25, 26, 30
_TENSOR_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
}
_RAW_TENSOR_DTYPES = {_F32_T: dt.float32, _F16_T: dt.float16, _I8_T: dt.int8,
                      _I16_T: dt.int16, _I32_T: dt.int32}
_TENSOR_TYPE_OF_DTYPE = {d: t for t, d in _RAW_TENSOR_DTYPES.items()}


class MalformedFileError(ValueError, RuntimeError):
    """A file that is truncated, corrupt or not in the format it claims. MLX raises RuntimeError
    for these; being both lets code written for either convention catch it."""


class ByteReader:
    """Sequential little-endian reads from a uint8 buffer; every read is checked against its end."""

    def __init__(self, buf: np.ndarray, label: str, prefix: str):
        self.buf = buf
        self.pos = 0
        self.label = label
        self.prefix = prefix

    def fail(self, problem: str):
        raise MalformedFileError(f"[{self.prefix}] {problem} in {self.label}. "
                                 "Perhaps an incomplete download or corrupt file?")

    @property
    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int, what: str) -> np.ndarray:
        if n < 0 or n > self.remaining:
            self.fail(f"{what} ({n} bytes at offset {self.pos}) extends past the end of the file "
                      f"({len(self.buf)} bytes)")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def check_shape(self, shape: tuple, what: str) -> int:
        """The element count of ``shape``, failing on sizes numpy cannot index."""
        n = 1
        for s in shape:
            if s < 0 or s >= 2**62:
                self.fail(f"{what} has invalid shape {shape}")
            n *= max(s, 1)
            if n >= 2**62:
                self.fail(f"{what} has a shape {shape} whose size overflows")
        return n if all(shape) else 0

    def unpack(self, fmt: str, what: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what).tobytes())

    def u32(self, what: str) -> int:
        return self.unpack("<I", what)[0]

    def u64(self, what: str) -> int:
        return self.unpack("<Q", what)[0]

    def string(self, what: str) -> str:
        n = self.u64(f"length of {what}")
        raw = self.take(n, what).tobytes()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what} is not valid UTF-8")


def _values(raw: np.ndarray, npdt: str, dtype) -> np.ndarray:
    """Owned storage of ``dtype`` from little-endian bytes (any nonzero byte is a true bool)."""
    if dtype is dt.bool_:
        return raw != 0
    return raw.view(npdt).astype(dtype.np_storage)


def _metadata_value(r: ByteReader, vtype: int, key: str, stream):
    if vtype in _SCALAR_TYPES:
        npdt, dtype = _SCALAR_TYPES[vtype]
        raw = r.take(np.dtype(npdt).itemsize, f"metadata value '{key}'")
        return make_realized(_values(raw, npdt, dtype).reshape(()), dtype, stream)
    if vtype == _STRING:
        return r.string(f"metadata value '{key}'")
    if vtype != _ARRAY:
        r.fail(f"metadata '{key}' has unknown value type {vtype}")
    etype = r.u32(f"element type of metadata '{key}'")
    count = r.u64(f"length of metadata array '{key}'")
    if etype in _SCALAR_TYPES:
        npdt, dtype = _SCALAR_TYPES[etype]
        size = np.dtype(npdt).itemsize
        if count > r.remaining // size:
            r.fail(f"metadata array '{key}' of {count} elements extends past the end of the file")
        raw = r.take(count * size, f"metadata array '{key}'")
        return make_realized(_values(raw, npdt, dtype), dtype, stream)
    if etype == _STRING:
        if count > r.remaining // 8:  # each string takes at least its 8-byte length
            r.fail(f"metadata array '{key}' of {count} strings extends past the end of the file")
        return [r.string(f"string {i} of metadata array '{key}'") for i in range(count)]
    if etype == _ARRAY:
        r.fail(f"metadata '{key}' nests arrays (only 1 level of nested arrays is supported)")
    r.fail(f"metadata array '{key}' has unknown element type {etype}")


def _f16(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw).view("<f2").astype(np.float16)


def _quantized(name, shape, ttype, data, r):
    """Q4_0/Q4_1/Q8_0 blocks as MLX's (uint32 weights, float16 scales, float16 biases)."""
    if not shape or shape[-1] % 32:
        r.fail(f"tensor '{name}' has incompatible last dim shape: {shape[-1] if shape else shape}")
    nblocks = data.size // _TENSOR_TYPES[ttype][2]
    blocks = data.reshape(nblocks, _TENSOR_TYPES[ttype][2])
    scales = _f16(blocks[:, 0:2]).reshape(nblocks)
    if ttype == _Q8_0:
        # int8 quants become unsigned with an offset of 128, the bias carries it back.
        packed = np.ascontiguousarray(blocks[:, 2:]) ^ np.uint8(0x80)
        biases = (scales.astype(np.float32) * -128).astype(np.float16)
        per_word = 4
    else:
        start = 2 if ttype == _Q4_0 else 4
        quants = blocks[:, start:start + 16]
        # Weights 0-15 are the low nibbles, 16-31 the high ones; MLX packs them in order, low first.
        nibbles = np.concatenate([quants & 0xF, quants >> 4], axis=1)
        packed = nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)
        biases = ((scales.astype(np.float32) * -8).astype(np.float16) if ttype == _Q4_0
                  else _f16(blocks[:, 2:4]).reshape(nblocks))
        per_word = 8
    weights = np.ascontiguousarray(packed).reshape(-1).view("<u4")
    wshape = shape[:-1] + (shape[-1] // per_word,)
    sshape = shape[:-1] + (shape[-1] // 32,)
    return (weights.astype(np.uint32, copy=False).reshape(wshape), scales.reshape(sshape),
            biases.reshape(sshape))


def _dequantize_k(ttype: int, data: np.ndarray, n: int) -> np.ndarray:
    """Q2_K/Q4_K/Q6_K super-blocks (256 weights) to float32 values, as gguflib decodes them."""
    nb = data.size // _TENSOR_TYPES[ttype][2]
    b = data.reshape(nb, _TENSOR_TYPES[ttype][2])
    if ttype == _Q4_K:
        d = _f16(b[:, 0:2])[:, 0].astype(np.float32)
        dmin = _f16(b[:, 2:4])[:, 0].astype(np.float32)
        s = b[:, 4:16].astype(np.uint8)
        sc = np.empty((nb, 8), np.uint8)
        mn = np.empty((nb, 8), np.uint8)
        sc[:, :4] = s[:, 0:4] & 63
        mn[:, :4] = s[:, 4:8] & 63
        sc[:, 4:] = (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)
        mn[:, 4:] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
        q = b[:, 16:144].reshape(nb, 4, 32)
        quants = np.stack([q & 0xF, q >> 4], axis=2).reshape(nb, 8, 32).astype(np.float32)
        # gguflib (and so MLX) applies each even sub-block's scale and min to the odd one too.
        pair = [0, 0, 2, 2, 4, 4, 6, 6]
        scale = sc[:, pair].astype(np.float32) * d[:, None]
        mins = mn[:, pair].astype(np.float32) * dmin[:, None]
        out = quants * scale[:, :, None] - mins[:, :, None]
    elif ttype == _Q6_K:
        lo = b[:, 0:128].reshape(nb, 2, 64)
        hi = b[:, 128:192].reshape(nb, 2, 32)
        sc = b[:, 192:208].view(np.int8).reshape(nb, 2, 8).astype(np.float32)
        d = _f16(b[:, 208:210])[:, 0].astype(np.float32)
        j = np.arange(128)
        low = (lo[:, :, j % 64] >> ((j // 64) * 4).astype(np.uint8)) & 0xF
        high = (hi[:, :, j % 32] >> ((j // 32) * 2).astype(np.uint8)) & 3
        q = (low | (high << 4)).astype(np.int8).astype(np.float32) - 32
        out = (d[:, None, None] * sc[:, :, j // 16]) * q
    else:  # Q2_K
        scm = b[:, 0:16]
        qs = b[:, 16:80].reshape(nb, 2, 32)
        d = _f16(b[:, 80:82])[:, 0].astype(np.float32)
        dmin = _f16(b[:, 82:84])[:, 0].astype(np.float32)
        j = np.arange(128)
        q = ((qs[:, :, j % 32] >> ((j // 32) * 2).astype(np.uint8)) & 3).astype(np.float32)
        blk = np.arange(2)[:, None] * 8 + j[None, :] // 16
        scale = d[:, None, None] * (scm[:, blk] & 0xF).astype(np.float32)
        mins = dmin[:, None, None] * (scm[:, blk] >> 4).astype(np.float32)
        out = q * scale - mins
    return out.astype(np.float32).reshape(-1)[:n]


def _read_header(buf: np.ndarray, label: str, stream, prefix: str):
    """(reader, metadata dict, [(name, shape, ggml type, absolute data offset)]) of a GGUF file."""
    r = ByteReader(buf, label, prefix)
    if len(buf) < 24 or buf[:4].tobytes() != MAGIC:
        r.fail("Invalid GGUF header (bad magic or file too small)")
    r.pos = 4
    version = r.u32("version")
    if version not in (2, 3):
        r.fail(f"Unsupported GGUF version {version}")
    n_tensors = r.u64("tensor count")
    n_kv = r.u64("metadata count")
    # Each metadata entry takes at least 12 bytes, each tensor info at least 24.
    if n_kv > r.remaining // 12 or n_tensors > r.remaining // 24:
        r.fail(f"Header declares {n_kv} metadata entries and {n_tensors} tensors, more than fit")

    metadata = {}
    alignment = DEFAULT_ALIGNMENT
    for i in range(n_kv):
        key = r.string(f"metadata key {i}")
        vtype = r.u32(f"type of metadata '{key}'")
        metadata[key] = _metadata_value(r, vtype, key, stream)
        if key == "general.alignment" and vtype == _U32:
            alignment = int(metadata[key].item())
    if alignment == 0:
        r.fail("general.alignment is 0")

    infos = []
    for i in range(n_tensors):
        name = r.string(f"tensor name {i}")
        ndim = r.u32(f"number of dimensions of tensor '{name}'")
        if ndim > MAX_DIMS:
            r.fail(f"Tensor '{name}' has {ndim} dimensions (at most {MAX_DIMS} are supported)")
        dims = r.unpack(f"<{ndim}Q", f"dimensions of tensor '{name}'")
        ttype = r.u32(f"type of tensor '{name}'")
        offset = r.u64(f"data offset of tensor '{name}'")
        if ttype not in _TENSOR_TYPES:
            r.fail(f"Tensor '{name}' has unknown ggml type {ttype}")
        infos.append((name, tuple(reversed(dims)), ttype, offset))
    data_start = r.pos + (-r.pos) % alignment
    return r, metadata, [(n, shape, t, data_start + off) for n, shape, t, off in infos]


def _tensor_bytes(r: ByteReader, name, shape, ttype, start):
    """(bytes, element count) of tensor ``name``, failing if the file holds fewer than its shape needs."""
    _, per_block, block_bytes = _TENSOR_TYPES[ttype]
    n = r.check_shape(shape, f"Tensor '{name}'")
    nbytes = -(-n // per_block) * block_bytes
    if start + nbytes > len(r.buf):
        r.fail(f"Tensor '{name}' ({nbytes} bytes at offset {start}) extends past the end of "
               f"the file ({len(r.buf)} bytes)")
    return r.buf[start:start + nbytes], n


def _add(arrays: dict, r: ByteReader, out: dict, stream) -> None:
    """Add the (numpy array, Dtype) entries of ``out`` to ``arrays`` as realized arrays."""
    for k, (v, dtype) in out.items():
        if k in arrays:
            r.fail(f"Duplicate parameter name {k} (this can happen when loading quantized "
                   "tensors)")
        count_buffer(v)
        arrays[k] = make_realized(v, dtype, stream)


def read_gguf(buf: np.ndarray, label: str, stream):
    """Parse a whole GGUF file held in ``buf`` (uint8) -> (arrays dict, metadata dict)."""
    r, metadata, infos = _read_header(buf, label, stream, "load_gguf")
    arrays = {}
    for name, shape, ttype, start in infos:
        with np.errstate(over="ignore"):  # float16 results saturate to inf, as in MLX
            _load_tensor(arrays, r, name, shape, ttype, start, stream)
    return arrays, metadata


def _load_tensor(arrays: dict, r: ByteReader, name, shape, ttype, start, stream) -> None:
    """Add tensor ``name`` (or its quantized triple) to ``arrays``, as MLX's ``load`` does."""
    tname = _TENSOR_TYPES[ttype][0]
    data, n = _tensor_bytes(r, name, shape, ttype, start)
    if ttype in _RAW_TENSOR_DTYPES:
        dtype = _RAW_TENSOR_DTYPES[ttype]
        out = {name: (data.view(dtype.np_storage).reshape(shape), dtype)}
    elif ttype in (_Q4_0, _Q4_1, _Q8_0):
        w, s, b = _quantized(name, shape, ttype, data, r)
        prefix = name[:len(name) - 7] if len(name) >= 7 else name  # MLX drops a ".weight"
        out = {name: (w, dt.uint32), prefix + ".scales": (s, dt.float16),
               prefix + ".biases": (b, dt.float16)}
    elif ttype == _BF16_T:
        values = dt.bf16_to_f32(np.ascontiguousarray(data).view("<u2"))
        out = {name: (values.astype(np.float16).reshape(shape), dt.float16)}
    elif ttype in (_Q2_K, _Q4_K, _Q6_K):
        values = _dequantize_k(ttype, data, n)
        out = {name: (values.astype(np.float16).reshape(shape), dt.float16)}
    else:
        r.fail(f"Tensor '{name}' has ggml type {tname}, which cannot be loaded")
    _add(arrays, r, out, stream)


# --- packed loading for model loaders ---------------------------------------------------------------
#
# Every block type below is exactly an MLX affine quantization, value = scale * code + bias per
# group, so it is kept packed (codes repacked into MLX's layout) instead of dequantized. Scales and
# biases are float16 where each is a float16 value (the block's d, m, -8d, ...), float32 where it is a
# product of two (the K-quants' d * sc): float32 holds those products, and code * scale, exactly. A
# tensor whose -8d (-16d, -128d) would overflow float16 gets float32 scales and biases too.

_Q5_0, _Q5_1, _Q5_K = 6, 7, 13
_PACKED = {  # ggml type -> (bits, group size)
    _Q4_0: (4, 32), _Q4_1: (4, 32), _Q5_0: (5, 32), _Q5_1: (5, 32), _Q8_0: (8, 32),
    _Q4_K: (4, 32), _Q5_K: (5, 32), _Q6_K: (6, 16),
}
_BIAS_STEPS = {_Q4_0: -8, _Q5_0: -16, _Q8_0: -128}  # bias = step * d: codes are offset to unsigned
_PLAIN_TYPES = {**_RAW_TENSOR_DTYPES, _BF16_T: dt.bfloat16}
_CHUNK_WEIGHTS = 1 << 20  # weights decoded at once: bounds the temporaries to some MiB


def _nibbles(q: np.ndarray) -> np.ndarray:
    """(nb, 16) bytes -> (nb, 32) codes: weights 0-15 are the low nibbles, 16-31 the high ones."""
    return np.concatenate([q & 0xF, q >> 4], axis=1)


def _high_bits(qh: np.ndarray, count: int) -> np.ndarray:
    """(nb, count / 8) bytes -> (nb, count) bits, bit j of the little-endian field first."""
    return np.unpackbits(qh, axis=1, count=count, bitorder="little")


def _k_scale_min(s: np.ndarray):
    """The 6-bit scales and mins of Q4_K/Q5_K's 8 sub-blocks from their 12 packed bytes."""
    lo, mid, hi = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([lo & 63, (hi & 0xF) | ((lo >> 6) << 4)], axis=1)
    mn = np.concatenate([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], axis=1)
    return sc.astype(np.float32), mn.astype(np.float32)


def _f16_column(raw: np.ndarray) -> np.ndarray:
    """(nb, 2) bytes -> (nb, 1) float32 values of the little-endian float16s."""
    return _f16(raw).reshape(-1, 1).astype(np.float32)


def _decode_blocks(ttype: int, b: np.ndarray):
    """(nb, block bytes) -> (codes (nb, weights per block) uint8, scales, biases (nb, groups)).

    Scales and biases come back in float32; each value is exact in that type."""
    if ttype in (_Q4_0, _Q4_1, _Q5_0, _Q5_1, _Q8_0):
        d = _f16_column(b[:, 0:2])
        if ttype == _Q8_0:
            codes = np.ascontiguousarray(b[:, 2:34]) ^ np.uint8(0x80)  # int8 + 128
        else:
            at = 2 if ttype in (_Q4_0, _Q5_0) else 4  # after d (and m)
            if ttype in (_Q4_0, _Q4_1):
                codes = _nibbles(b[:, at:at + 16])
            else:
                codes = _nibbles(b[:, at + 4:at + 20]) | (_high_bits(b[:, at:at + 4], 32) << 4)
        if ttype in _BIAS_STEPS:
            return codes, d, d * _BIAS_STEPS[ttype]
        return codes, d, _f16_column(b[:, 2:4])
    if ttype in (_Q4_K, _Q5_K):
        d, dmin = _f16_column(b[:, 0:2]), _f16_column(b[:, 2:4])
        sc, mn = _k_scale_min(b[:, 4:16])
        # The quants are 4 runs of 32 bytes; run c holds sub-block 2c in its low nibbles, 2c + 1 in
        # its high ones. Q5_K's 32 high-bit bytes hold sub-block i's fifth bits in bit i.
        q = b[:, 16:144] if ttype == _Q4_K else b[:, 48:176]
        q = q.reshape(-1, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
        codes = (q & 0xF).reshape(-1, 256)
        if ttype == _Q5_K:
            high = b[:, 16:48, None] >> np.arange(8, dtype=np.uint8)  # (nb, 32 weights, 8 sub-blocks)
            codes |= ((high & 1).transpose(0, 2, 1).reshape(-1, 256)) << 4
        return codes, d * sc, -(dmin * mn)
    # Q6_K: 128 bytes of low nibbles, 64 of 2-bit high parts, 16 int8 scales, then d. Each half of
    # 128 weights takes 64 low-nibble bytes (low nibbles first) and 32 high bytes (2 bits a quarter).
    low = b[:, 0:128].reshape(-1, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    high = b[:, 128:192].reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
    codes = ((low & 0xF).reshape(-1, 256)) | ((high & 3).reshape(-1, 256) << 4)
    scale = _f16_column(b[:, 208:210]) * b[:, 192:208].view(np.int8).astype(np.float32)
    return codes, scale, scale * -32


def _packed_tensor(r: ByteReader, name, shape, ttype, data):
    """(weights uint32, scales, biases) of a block-quantized tensor, decoded a chunk at a time."""
    from .ops.quantized import _pack

    tname, per_block, block_bytes = _TENSOR_TYPES[ttype]
    bits, gs = _PACKED[ttype]
    if not shape or shape[-1] % per_block:
        r.fail(f"Tensor '{name}' of type {tname} has shape {shape}, whose last dimension is not a "
               f"multiple of its block size {per_block}")
    nb = data.size // block_bytes
    blocks = data.reshape(nb, block_bytes)
    wide = ttype in (_Q4_K, _Q5_K, _Q6_K)
    if ttype in _BIAS_STEPS and nb:
        # step * d is a float16 value unless it overflows; then float32 keeps this tensor exact.
        d = np.abs(_f16(blocks[:, 0:2]).astype(np.float32))
        largest = np.max(np.where(np.isfinite(d), d, 0))
        wide = bool(largest * -_BIAS_STEPS[ttype] > np.finfo(np.float16).max)
    sdtype = dt.float32 if wide else dt.float16
    words = per_block * bits // 32
    groups = per_block // gs
    weights = np.empty((nb, words), np.uint32)
    scales = np.empty((nb, groups), sdtype.np_storage)
    biases = np.empty((nb, groups), sdtype.np_storage)
    step = _CHUNK_WEIGHTS // per_block
    for b0 in range(0, nb, step):
        b1 = min(nb, b0 + step)
        with np.errstate(invalid="ignore", over="ignore"):  # inf/NaN scales give inf/NaN, quietly
            codes, s, b = _decode_blocks(ttype, blocks[b0:b1])
        weights[b0:b1] = _pack(codes.reshape(-1, groups, gs), bits).reshape(-1, words)
        scales[b0:b1] = s
        biases[b0:b1] = b
    lead = shape[:-1]
    return ((weights.reshape(lead + (shape[-1] * bits // 32,)), dt.uint32),
            (scales.reshape(lead + (shape[-1] // gs,)), sdtype),
            (biases.reshape(lead + (shape[-1] // gs,)), sdtype))


def _drop_pages(data: np.ndarray) -> None:
    """Let the kernel drop the resident pages of ``data``, a block-quantized tensor's bytes in the
    file's private map, once they are repacked: nothing reads them again, so a model's peak memory
    is about its repacked weights, not those plus the file. Only whole pages inside the tensor go (a
    neighbour's view keeps its pages), and only pages never written: a file map's clean pages come
    back from the file if touched again. Nothing happens where ``madvise`` is missing."""
    import mmap

    advice = getattr(mmap, "MADV_DONTNEED", None)
    page = getattr(mmap, "PAGESIZE", 4096)
    if advice is None or not data.size:
        return
    start = data.__array_interface__["data"][0]
    lo, hi = -(-start // page) * page, (start + data.size) // page * page
    if hi <= lo:
        return
    try:
        import ctypes

        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    madvise(lo, hi - lo, advice)


def load_quantized(path, *, stream=None, on_metadata=None):
    """Read a GGUF file for a model loader: ``(tensors, metadata, quantization)``.

    Block-quantized weights (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) stay packed: tensor
    ``X.weight`` comes back as MLX's affine triple ``X.weight`` (uint32), ``X.scales`` and
    ``X.biases``, with ``quantization["X.weight"] == {"group_size": g, "bits": b}``; Q6_K has group
    size 16, which only the private quantized paths take. F32, F16, BF16 and integer tensors are
    views of the file. Any other type raises a ValueError naming the tensor and its type; a
    truncated or corrupt file raises ``MalformedFileError``. ``mx.load`` reads the same files as
    MLX does (other types dequantized to float16). ``on_metadata(metadata)``, when given, is called
    once the header is read, before any tensor is decoded (a tokenizer built then never shares the
    peak of the weights' decoding)."""
    import os

    from .device import resolve_stream
    from .io import _map_file

    path = os.fspath(path)
    s = resolve_stream(stream)
    r, metadata, infos = _read_header(_map_file(path, "load_quantized"), path, s, "load_quantized")
    if on_metadata is not None:
        on_metadata(metadata)
    arrays, quantization = {}, {}
    for name, shape, ttype, start in infos:
        tname = _TENSOR_TYPES[ttype][0]
        if ttype not in _PLAIN_TYPES and ttype not in _PACKED:
            kept = ", ".join(_TENSOR_TYPES[t][0] for t in (*_PLAIN_TYPES, *_PACKED))
            raise ValueError(f"[load_quantized] Tensor '{name}' in {path} has ggml type {tname}, "
                             f"which is not supported (supported: {kept})")
        data, _ = _tensor_bytes(r, name, shape, ttype, start)
        if ttype in _PLAIN_TYPES:
            dtype = _PLAIN_TYPES[ttype]
            view = data.view("<u2" if dtype is dt.bfloat16 else dtype.np_storage)
            _add(arrays, r, {name: (view.reshape(shape), dtype)}, s)
            continue
        w, sc, b = _packed_tensor(r, name, shape, ttype, data)
        _drop_pages(data)
        prefix = name[:-len(".weight")] if name.endswith(".weight") else name
        _add(arrays, r, {name: w, prefix + ".scales": sc, prefix + ".biases": b}, s)
        bits, gs = _PACKED[ttype]
        quantization[name] = {"group_size": gs, "bits": bits}
    return arrays, metadata, quantization


def _packed_string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _metadata_entry(key: str, value) -> bytes:
    if isinstance(value, str):
        body = struct.pack("<I", _STRING) + _packed_string(value)
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        body = struct.pack("<IIQ", _ARRAY, _STRING, len(value))
        body += b"".join(_packed_string(v) for v in value)
    elif isinstance(value, array):
        if value.ndim > 1:
            raise RuntimeError("[save_gguf] Cannot save arrays with more than one dimension.")
        if value.size == 0:
            raise RuntimeError("[save_gguf] Cannot save empty arrays.")
        vtype = _VALUE_TYPE_OF_DTYPE.get(value.dtype)
        if vtype is None:
            raise DtypeError(f"[save_gguf] array type {value.dtype} not support for metadata.")
        data = np.ascontiguousarray(value._realized()).astype(_SCALAR_TYPES[vtype][0]).tobytes()
        if value.ndim == 1:
            body = struct.pack("<IIQ", _ARRAY, vtype, value.size) + data
        else:
            body = struct.pack("<I", vtype) + data
    else:
        raise RuntimeError("[save_gguf] Received unexpected type in metadata")
    return _packed_string(key) + body


def write_gguf(f, arrays: dict, metadata: dict) -> None:
    """Write a GGUF v3 file (F32, F16, I8, I16 and I32 tensors) to the binary file ``f``."""
    kvs = [_metadata_entry(k, v) for k, v in metadata.items()]
    infos, datas = [], []
    offset = 0
    for name, a in arrays.items():
        ttype = _TENSOR_TYPE_OF_DTYPE.get(a.dtype)
        if ttype is None:
            raise DtypeError(f"[save_gguf] dtype {a.dtype} is not supported")
        offset += (-offset) % DEFAULT_ALIGNMENT
        infos.append(_packed_string(name) + struct.pack(f"<I{a.ndim}QIQ", a.ndim,
                                                        *reversed(a.shape), ttype, offset))
        datas.append(np.ascontiguousarray(a._realized()))
        offset += a.nbytes
    head = struct.pack("<4sIQQ", MAGIC, 3, len(infos), len(kvs)) + b"".join(kvs) + b"".join(infos)
    f.write(head)
    pos = len(head)
    for data in datas:
        pad = (-pos) % DEFAULT_ALIGNMENT
        f.write(b"\0" * pad)
        f.write(data.data if data.size else b"")
        pos += pad + data.nbytes
