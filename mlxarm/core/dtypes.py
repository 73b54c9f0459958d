"""The 14 MLX dtypes, their categories, MLX's promotion table, finfo/iinfo.

Each dtype knows its numpy storage type. bfloat16 has none in numpy, so it is
stored as uint16 bit patterns and every op computes it in float32 and rounds
back (round to nearest even), which is what MLX's CPU backend does.
"""
from __future__ import annotations

import enum

import numpy as np

from .errors import DtypeError


class DtypeCategory(enum.Enum):
    complexfloating = 0
    floating = 1
    inexact = 2
    signedinteger = 3
    unsignedinteger = 4
    integer = 5
    number = 6
    generic = 7

    def __repr__(self):
        return f"DtypeCategory.{self.name}"

    __str__ = __repr__


complexfloating = DtypeCategory.complexfloating
floating = DtypeCategory.floating
inexact = DtypeCategory.inexact
signedinteger = DtypeCategory.signedinteger
unsignedinteger = DtypeCategory.unsignedinteger
integer = DtypeCategory.integer
number = DtypeCategory.number
generic = DtypeCategory.generic

# Which categories sit under which (the category lattice MLX documents).
_CATEGORY_PARENTS = {
    complexfloating: {complexfloating, inexact, number, generic},
    floating: {floating, inexact, number, generic},
    inexact: {inexact, number, generic},
    signedinteger: {signedinteger, integer, number, generic},
    unsignedinteger: {unsignedinteger, integer, number, generic},
    integer: {integer, number, generic},
    number: {number, generic},
    generic: {generic},
}


class Dtype:
    """An MLX data type. Instances are singletons: compare with ``==`` or ``is``."""

    __slots__ = ("name", "size", "np_storage", "np_compute", "category", "index", "kind")

    def __init__(self, name, size, np_storage, np_compute, category, index, kind):
        self.name = name
        self.size = size
        self.np_storage = np.dtype(np_storage)  # how the bytes are held
        self.np_compute = np.dtype(np_compute)  # what the numpy reference computes in
        self.category = category
        self.index = index
        self.kind = kind  # 'b', 'u', 'i', 'f', 'c'

    def __repr__(self):
        return f"mlx.core.{self.name}"

    __str__ = __repr__

    def __eq__(self, other):
        return self is other

    # equal only to itself, so hashed as any object is: in C, where every set or dict of dtypes that
    # an op consults would call a Python-level ``__hash__``
    __hash__ = object.__hash__

    def __reduce__(self):
        return (_dtype_by_name, (self.name,))

    @property
    def itemsize(self):
        return self.size


def _dtype_by_name(name):
    return _BY_NAME[name]


_SPECS = [
    # name, size, storage, compute, category, kind
    ("bool", 1, np.bool_, np.bool_, generic, "b"),
    ("uint8", 1, np.uint8, np.uint8, unsignedinteger, "u"),
    ("uint16", 2, np.uint16, np.uint16, unsignedinteger, "u"),
    ("uint32", 4, np.uint32, np.uint32, unsignedinteger, "u"),
    ("uint64", 8, np.uint64, np.uint64, unsignedinteger, "u"),
    ("int8", 1, np.int8, np.int8, signedinteger, "i"),
    ("int16", 2, np.int16, np.int16, signedinteger, "i"),
    ("int32", 4, np.int32, np.int32, signedinteger, "i"),
    ("int64", 8, np.int64, np.int64, signedinteger, "i"),
    ("float16", 2, np.float16, np.float16, floating, "f"),
    ("float32", 4, np.float32, np.float32, floating, "f"),
    ("float64", 8, np.float64, np.float64, floating, "f"),
    ("bfloat16", 2, np.uint16, np.float32, floating, "f"),
    ("complex64", 8, np.complex64, np.complex64, complexfloating, "c"),
]

ALL: list[Dtype] = [Dtype(n, s, st, c, cat, i, k) for i, (n, s, st, c, cat, k) in enumerate(_SPECS)]
_BY_NAME = {d.name: d for d in ALL}
(bool_, uint8, uint16, uint32, uint64, int8, int16, int32, int64,
 float16, float32, float64, bfloat16, complex64) = ALL

# MLX's promotion table, row/column order as ALL (checked entry by entry against MLX in tests).
_T = """
b   u8  u16 u32 u64 i8  i16 i32 i64 f16 f32 f64 bf  c64
u8  u8  u16 u32 u64 i16 i16 i32 i64 f16 f32 f64 bf  c64
u16 u16 u16 u32 u64 i32 i32 i32 i64 f16 f32 f64 bf  c64
u32 u32 u32 u32 u64 i64 i64 i64 i64 f16 f32 f64 bf  c64
u64 u64 u64 u64 u64 f32 f32 f32 f32 f16 f32 f64 bf  c64
i8  i16 i32 i64 f32 i8  i16 i32 i64 f16 f32 f64 bf  c64
i16 i16 i32 i64 f32 i16 i16 i32 i64 f16 f32 f64 bf  c64
i32 i32 i32 i64 f32 i32 i32 i32 i64 f16 f32 f64 bf  c64
i64 i64 i64 i64 f32 i64 i64 i64 i64 f16 f32 f64 bf  c64
f16 f16 f16 f16 f16 f16 f16 f16 f16 f16 f32 f64 f32 c64
f32 f32 f32 f32 f32 f32 f32 f32 f32 f32 f32 f64 f32 c64
f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 c64
bf  bf  bf  bf  bf  bf  bf  bf  bf  f32 f32 f64 bf  c64
c64 c64 c64 c64 c64 c64 c64 c64 c64 c64 c64 c64 c64 c64
"""
_SHORT = {"b": bool_, "u8": uint8, "u16": uint16, "u32": uint32, "u64": uint64, "i8": int8,
          "i16": int16, "i32": int32, "i64": int64, "f16": float16, "f32": float32,
          "f64": float64, "bf": bfloat16, "c64": complex64}
_PROMOTE = [[_SHORT[c] for c in row.split()] for row in _T.strip().splitlines()]


def promote_types(a: Dtype, b: Dtype) -> Dtype:
    return _PROMOTE[a.index][b.index]


def issubdtype(a, b) -> bool:
    """MLX's issubdtype over dtypes and categories."""
    if isinstance(a, Dtype):
        if isinstance(b, Dtype):
            return a is b
        if isinstance(b, DtypeCategory):
            return b in _CATEGORY_PARENTS[a.category]
    elif isinstance(a, DtypeCategory):
        if isinstance(b, Dtype):
            return False
        if isinstance(b, DtypeCategory):
            return b in _CATEGORY_PARENTS[a]
    raise TypeError(f"issubdtype(): incompatible function arguments {a!r}, {b!r}")


def is_floating(d: Dtype) -> bool:
    return d.kind == "f"


def is_inexact(d: Dtype) -> bool:
    return d.kind in "fc"


def is_integer(d: Dtype) -> bool:
    return d.kind in "iu"


_ISDTYPE_KINDS = {
    "bool": lambda d: d is bool_,
    "signed integer": lambda d: d.kind == "i",
    "unsigned integer": lambda d: d.kind == "u",
    "integral": is_integer,
    "real floating": is_floating,
    "complex floating": lambda d: d.kind == "c",
    "numeric": lambda d: d is not bool_,
}


def isdtype(dtype: Dtype, kind) -> bool:
    if isinstance(kind, tuple):
        return any(isdtype(dtype, k) for k in kind)
    if isinstance(kind, Dtype):
        return dtype is kind
    if isinstance(kind, DtypeCategory):
        return issubdtype(dtype, kind)
    if isinstance(kind, str):
        if kind not in _ISDTYPE_KINDS:
            raise ValueError(f"[isdtype] Unknown kind '{kind}'.")
        return _ISDTYPE_KINDS[kind](dtype)
    raise TypeError(f"[isdtype] kind must be a Dtype, str or tuple, got {type(kind).__name__}.")


_FROM_NUMPY = {np.dtype(np.bool_): bool_, np.dtype(np.uint8): uint8, np.dtype(np.uint16): uint16,
               np.dtype(np.uint32): uint32, np.dtype(np.uint64): uint64, np.dtype(np.int8): int8,
               np.dtype(np.int16): int16, np.dtype(np.int32): int32, np.dtype(np.int64): int64,
               np.dtype(np.float16): float16, np.dtype(np.float32): float32,
               # MLX turns float64/complex128 numpy data into float32/complex64.
               np.dtype(np.float64): float32, np.dtype(np.complex64): complex64,
               np.dtype(np.complex128): complex64}


def from_numpy(npdt) -> Dtype:
    """The MLX dtype ``mx.array(numpy_array)`` gives for a numpy dtype."""
    npdt = np.dtype(npdt)
    try:
        return _FROM_NUMPY[npdt]
    except KeyError:
        if npdt.name == "bfloat16":  # ml_dtypes
            return bfloat16
        raise DtypeError(f"Cannot convert numpy array of dtype {npdt} to an mlx array.") from None


def as_dtype(d) -> Dtype:
    """Accept an mlx Dtype (or, leniently, a numpy dtype/Python type) and return the Dtype."""
    if isinstance(d, Dtype):
        return d
    if d is bool:
        return bool_
    if d is int:
        return int32
    if d is float:
        return float32
    if d is complex:
        return complex64
    if isinstance(d, str) and d in _BY_NAME:
        return _BY_NAME[d]
    try:
        npdt = np.dtype(d)
    except TypeError:
        raise DtypeError(f"Expected an mlx Dtype but got {d!r}.") from None
    if npdt == np.float64:
        return float64
    return from_numpy(npdt)


def _info_dtype(dtype, who) -> Dtype:
    if not isinstance(dtype, Dtype):
        raise TypeError(f"{who}(): incompatible function arguments: expected an mlx.core.Dtype, "
                        f"got {type(dtype).__name__}.")
    return dtype


class finfo:
    """Machine limits of a floating type, as MLX's ``mx.finfo`` (a complex type reports its real
    component, as the array API asks)."""

    def __init__(self, dtype):
        dtype = _info_dtype(dtype, "finfo")
        if not is_inexact(dtype):
            raise ValueError(f"[finfo] dtype {dtype.name} is not inexact.")
        if dtype is complex64:
            dtype = float32
        self.dtype = dtype
        if dtype is bfloat16:
            self.min, self.max = -3.3895313892515355e38, 3.3895313892515355e38
            self.eps, self.smallest_normal, self.bits = 0.0078125, 1.1754943508222875e-38, 16
        else:
            f = np.finfo(dtype.np_compute)
            self.min, self.max = float(f.min), float(f.max)
            self.eps, self.smallest_normal, self.bits = float(f.eps), float(f.smallest_normal), f.bits

    def __repr__(self):
        return f"finfo(min={self.min:g}, max={self.max:g}, dtype={self.dtype.name})"


class iinfo:
    """Integer limits, as MLX's ``mx.iinfo``."""

    def __init__(self, dtype):
        dtype = _info_dtype(dtype, "iinfo")
        if not is_integer(dtype):
            raise ValueError(f"[iinfo] Only integer types supported but {dtype.name} was provided")
        self.dtype = dtype
        i = np.iinfo(dtype.np_storage)
        self.min, self.max, self.bits = int(i.min), int(i.max), i.bits

    def __repr__(self):
        return f"iinfo(min={self.min}, max={self.max}, dtype={self.dtype.name})"


# --- bfloat16 emulation -----------------------------------------------------------------------

def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bit patterns to float32 values (exact)."""
    # asarray: a 0-d input would otherwise come back as a numpy scalar.
    return np.asarray((np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16)).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 values to bfloat16 bit patterns, rounding to nearest even; every NaN becomes MLX's
    canonical quiet NaN (0x7FC0, sign dropped)."""
    x = np.asarray(x, dtype=np.float32)
    if not x.flags.c_contiguous:
        x = x.copy()
    u = x.view(np.uint32)
    rounded = ((u + (np.uint32(0x7FFF) + ((u >> 16) & 1))) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded = np.where(nan, np.uint16(0x7FC0), rounded)
    return rounded


def round_half(x: np.ndarray, half: str) -> np.ndarray:
    """float32 values rounded to the half type named ``half`` ("float16" or "bfloat16"), widened back:
    an intermediate step of MLX's half-precision kernels, as the references follow them."""
    if half == "float16":
        return x.astype(np.float16).astype(np.float32)
    return bf16_to_f32(f32_to_bf16(x))


def to_compute(data: np.ndarray, dtype: Dtype) -> np.ndarray:
    """Storage -> the numpy array the reference computes on."""
    return bf16_to_f32(data) if dtype is bfloat16 else data


def to_storage(values, dtype: Dtype) -> np.ndarray:
    """Computed values -> storage of ``dtype`` (casts, and rounds bfloat16)."""
    if dtype is bfloat16:
        return f32_to_bf16(np.asarray(values).astype(np.float32, copy=False))
    v = np.asarray(values)
    if v.dtype != dtype.np_storage:
        with np.errstate(invalid="ignore", over="ignore"):
            v = _cast_numpy(v, dtype.np_storage)
    return v


def _cast_numpy(v: np.ndarray, target: np.dtype) -> np.ndarray:
    """C-style casts as MLX does them: float->int truncates (numpy's C cast, like MLX's);
    complex->real keeps the real part."""
    if v.dtype.kind == "c" and target.kind != "c":
        v = v.real
    return v.astype(target)
