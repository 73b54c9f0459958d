"""The ``array`` type: a node of the lazy graph until it is realized, then a buffer.

An unrealized array holds (primitive, inputs, params, shape, dtype, stream). ``eval`` (graph.py)
realizes it: ``_data`` then holds the buffer and the node forgets its inputs, so the graph behind it
can be freed. Every operator and method here only records nodes through the public op functions; none
computes anything itself.
"""
from __future__ import annotations

import collections
import gc
import sys
import weakref

import numpy as np

from . import dtypes as dt
from ..backend import device_writers as _device_writers
from .dtypes import Dtype
from .errors import DtypeError

# The public op namespace, bound by mlxarm.core once every op module is loaded (ops import array).
_ops = None


def _bind_ops(namespace):
    global _ops
    _ops = namespace


class array:
    """An N-dimensional array, recorded lazily (MLX's ``mlx.core.array``)."""

    __slots__ = ("_prim", "_inputs", "_params", "_shape", "_dtype", "_data", "_stream", "__weakref__")

    def __init__(self, val, dtype: Dtype | None = None):
        from .convert import realized_from_value

        if val is None:
            raise TypeError("__init__(): incompatible function arguments: val must be a scalar, "
                            "list, tuple, DLPack-compatible object or array, not NoneType.")
        src = realized_from_value(val, dtype)
        self._prim = None
        self._inputs = ()
        self._params = None
        self._shape = src._shape
        self._dtype = src._dtype
        self._data = src._data
        self._stream = src._stream
        if src._data is None:  # built from lazy arrays (a list of them): keep the graph
            self._prim, self._inputs, self._params = src._prim, src._inputs, src._params
        note_inputs(self)  # among the arrays made last, and a consumer of watched inputs

    # --- metadata (no evaluation) ------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return self._shape

    @property
    def dtype(self) -> Dtype:
        return self._dtype

    @property
    def ndim(self) -> int:
        return len(self._shape)

    @property
    def size(self) -> int:
        n = 1
        for s in self._shape:
            n *= s
        return n

    @property
    def itemsize(self) -> int:
        return self._dtype.size

    @property
    def nbytes(self) -> int:
        return self.size * self._dtype.size

    def __len__(self):
        if not self._shape:
            raise TypeError("len() 0-dimensional array.")
        return self._shape[0]

    # --- realization ---------------------------------------------------------------------------
    def _realized(self) -> np.ndarray:
        """The storage buffer as a numpy array (evaluates first, and has a GPU executor write it where
        its contents are still on the device only)."""
        if self._data is None:
            from .graph import eval_arrays

            eval_arrays((self,), read=True)
        if _device_writers:
            from .graph import host_data

            host_data(self._data)
        return self._data

    def _numpy(self) -> np.ndarray:
        """Values as numpy (bfloat16 widened to float32)."""
        data = self._realized()
        if self._dtype is dt.bfloat16:
            return dt.bf16_to_f32(data)
        return data

    def __array__(self, dtype=None, copy=None):
        if copy is False and dtype is None and self._dtype is not dt.bfloat16:
            # A view of the buffer that keeps this array alive (MLX shares memory the same way).
            return np.asarray(_BufferOwner(self, self._realized()))
        out = self._numpy()
        if dtype is not None:
            out = out.astype(dtype)
        elif copy or out is self._data:
            out = out.copy()
        return out

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        if self._dtype is dt.bfloat16:
            raise DtypeError("bfloat16 arrays cannot be exported through DLPack.")
        view = np.asarray(_BufferOwner(self, self._realized()))
        kwargs = {"stream": stream}
        if max_version is not None:
            kwargs.update(max_version=max_version, dl_device=dl_device, copy=copy)
        return view.__dlpack__(**kwargs)

    def __buffer__(self, flags: int) -> memoryview:
        """The buffer protocol from Python (PEP 688, Python 3.12 on): ``memoryview(a)`` shares this
        array's memory, writeable, with numpy's shape, strides and format, and keeps the array alive
        while it lives (as MLX's arrays do). 64-bit integers are ``q``/``Q`` (long long), as MLX gives
        them, where numpy says ``l``/``L``. bfloat16 has no format Python or numpy knows: its arrays
        have no buffer (a ``BufferError``). numpy tries the buffer protocol before ``__array__``; with
        a buffer of 16-bit patterns, ``np.array`` of a bfloat16 array would be those integers on Python
        3.12 and its float32 values before."""
        if self._dtype is dt.bfloat16:
            raise BufferError("bfloat16 arrays have no buffer format (np.array gives their float32 values).")
        data = np.asarray(_BufferOwner(self, self._realized()))
        if data.dtype.kind in "iu" and data.itemsize == 8:
            data = data.view(np.longlong if data.dtype.kind == "i" else np.ulonglong)
        return memoryview(data)

    def __dlpack_device__(self):
        return (1, 0)  # kDLCPU, device 0: the buffers live in host memory

    def __bytes__(self):
        return np.ascontiguousarray(self._realized()).tobytes()

    def __array_namespace__(self, *, api_version=None):
        if api_version is not None:
            raise ValueError("Explicitly specifying api_version is not yet implemented.")
        return sys.modules[__name__.rpartition(".")[0]]

    def _scalar(self):
        if self.size != 1:
            raise ValueError("[convert] Only length-1 arrays can be converted to Python scalars.")
        return self._numpy().reshape(()).item()

    def item(self):
        return self._scalar()

    def tolist(self):
        return self._numpy().tolist()

    def __bool__(self):
        return bool(self._scalar())

    def __int__(self):
        return int(self._scalar())

    def __float__(self):
        return float(self._scalar())

    def __index__(self):
        if self._shape or not dt.is_integer(self._dtype):
            raise TypeError("Only 0-dimensional integer arrays can be converted to an index.")
        return int(self.item())

    def __complex__(self):
        return complex(self._scalar())

    def __repr__(self):
        from .printing import format_array

        return format_array(self)

    __str__ = __repr__

    def __format__(self, spec):
        if not spec:
            return repr(self)
        if self._shape:
            raise TypeError("unsupported format string passed to mx.array.__format__")
        return format(self.item(), spec)

    def __hash__(self):
        return id(self)

    def __iter__(self):
        return ArrayIterator(self)

    def __getstate__(self):
        return (self._realized().copy(), self._dtype.index)

    def __setstate__(self, state):
        data, index = state
        dtype = dt.ALL[index]
        from .device import current_stream

        src = make_realized(np.array(data, dtype=dtype.np_storage, order="C", copy=True), dtype,
                            current_stream())
        self._prim, self._inputs, self._params = None, (), None
        self._shape, self._dtype, self._data, self._stream = src._shape, dtype, src._data, src._stream

    def __copy__(self):
        return _ops.copy(self)

    def __deepcopy__(self, memo):
        return _ops.copy(self)

    # --- overwriting in place (setitem and the in-place operators) -------------------------------
    def _overwrite(self, other: "array", old: "array") -> "array":
        """Make this Python object the node ``other`` (MLX's overwrite_descriptor); its dtype and
        shape are the result's, as in MLX, where ``a += b`` rebinds ``a`` to ``a + b``.

        Every Python reference to this array sees the new value, but nodes already recorded on it
        keep the value they were recorded with (``old``, a snapshot): they are re-pointed at it.
        Consumers are found through the garbage collector's referrer lists rather than back-pointers
        kept on every node, so recording stays cheap and only the rare in-place update pays.
        """
        watched = _WATCHED.get(id(self))
        if watched is not None and watched[0]() is self:
            self._repoint_watched(watched, old)
        # References: the caller's name, the interpreter stack of the statement, the frame of
        # __setitem__ (or the in-place operator), that of _update_in_place, this frame, getrefcount's
        # argument. More than that may be recorded consumers (or just aliases): only then search.
        elif sys.getrefcount(self) > _OVERWRITE_BASE_REFS:
            self._repoint_consumers(old)
        if self._data is None and self._prim is not None and self._prim.kind == "program":
            from .compile import repoint_output  # a compiled call's result: its program fills in ``old``

            repoint_output(self, old)
        self._prim, self._inputs, self._params = other._prim, other._inputs, other._params
        self._shape, self._dtype = other._shape, other._dtype
        self._data, self._stream = other._data, other._stream
        note_inputs(self)  # this object now reads what ``other`` reads
        return self

    def _repoint_consumers(self, old: "array") -> None:
        """Re-point the nodes recorded on this array at ``old``. A node is recorded on an array
        after the array itself, so when this array is among the arrays made last (``_RECENT``) the
        ones made after it are all there is to look at; otherwise they are found through the garbage
        collector (a walk over every tracked object: 13 ms a call with a tokenizer loaded, where
        mlx-lm's first write of each new cache buffer comes here). An array updated in place while
        other names refer to it is updated again and again (a KV cache written a position per step,
        whose last step's nodes may still read it): from then on ``make_node`` notes its consumers
        (``_WATCHED``), so its later updates visit those alone."""
        recent = list(_RECENT)  # a copy: another thread may record nodes meanwhile
        holders = []
        for i in range(len(recent) - 1, -1, -1):
            holder = recent[i]()
            if holder is self:
                break
            if holder is not None and any(x is self for x in holder._inputs):
                holders.append(holder)
        else:
            holders = [h for ref in gc.get_referrers(self) if type(ref) is tuple
                       for h in gc.get_referrers(ref) if type(h) is array and h._inputs is ref]
        del recent
        for holder in holders:
            holder._inputs = tuple(old if x is self else x for x in holder._inputs)
        key = id(self)
        _WATCHED[key] = [weakref.ref(self, lambda _, key=key: _WATCHED.pop(key, None)), []]

    def _repoint_watched(self, watched: list, old: "array") -> None:
        consumers, watched[1] = watched[1], []
        for ref in consumers:
            holder = ref()
            if holder is not None and any(x is self for x in holder._inputs):
                holder._inputs = tuple(old if x is self else x for x in holder._inputs)

    def _snapshot(self) -> "array":
        """A new node with this one's current contents (the old value, before an overwrite)."""
        out = _new(array)
        out._prim, out._inputs, out._params = self._prim, self._inputs, self._params
        out._shape, out._dtype, out._data, out._stream = self._shape, self._dtype, self._data, self._stream
        note_inputs(out)  # a node reading what this one reads
        return out

    def __getitem__(self, idx):
        return _ops._getitem(self, idx)

    def __setitem__(self, idx, value):
        self._update_in_place(lambda old: _ops._setitem(old, idx, value))

    def _update_in_place(self, compute) -> "array":
        """Make this object ``compute(old)``, ``old`` a snapshot of its current value, under the graph
        lock: an ``async_eval`` in flight may be evaluating this very node, and its worker must not
        realize (or release the inputs of) an object rebound under it. (In MLX the Python object only
        points at an immutable node, so an evaluation in flight keeps the old one.)"""
        from .graph import _LOCK

        with _LOCK:
            old = self._snapshot()
            return self._overwrite(compute(old), old)

    @property
    def at(self):
        return ArrayAt(self)

    # --- properties that are ops -----------------------------------------------------------------
    @property
    def T(self):
        return _ops.transpose(self)

    @property
    def mT(self):
        if len(self._shape) < 2:
            raise ValueError("[matrix_transpose] Input array must have at least 2 dimensions.")
        return _ops.swapaxes(self, -1, -2)

    @property
    def real(self):
        return _ops.real(self)

    @property
    def imag(self):
        return _ops.imag(self)

    def astype(self, dtype, stream=None):
        return _ops.astype(self, dtype, stream=stream)

    def reshape(self, *shape, stream=None):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = shape[0]
        return _ops.reshape(self, tuple(shape), stream=stream)

    def transpose(self, *axes, stream=None):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = axes[0]
        return _ops.transpose(self, tuple(axes) if axes else None, stream=stream)

    def view(self, dtype, stream=None):
        return _ops.view(self, dtype, stream=stream)

    def conj(self, stream=None):
        return _ops.conjugate(self, stream=stream)


_new = object.__new__
_OVERWRITE_BASE_REFS = 6


# Weak references to the arrays made last (by ``make_node``, ``make_realized`` or given inputs by
# ``note_inputs``), oldest first: where an overwritten array is among them, its consumers are among
# those after it (``array._repoint_consumers``).
_RECENT: collections.deque = collections.deque(maxlen=4096)
_remember = _RECENT.append
_ref = weakref.ref


def make_node(prim, inputs, params, shape, dtype, stream) -> array:
    """Record a node. The only way ops create unrealized arrays."""
    a = _new(array)
    a._prim = prim
    a._inputs = inputs
    a._params = params
    a._shape = shape
    a._dtype = dtype
    a._data = None
    a._stream = stream
    _remember(_ref(a))
    if _WATCHED:
        _note_consumer(a, inputs)
    return a


# id(array) -> [weak reference to it, weak references to the nodes recorded on it since its last
# in-place update]: the arrays updated in place while nodes recorded on them were alive (``_overwrite``).
_WATCHED: dict = {}
_WATCH_MAX = 4096  # consumers noted between two updates before the array's watch is given up


def note_inputs(node) -> None:
    """Note ``node`` as a consumer of its watched inputs: for a node given its inputs other than by
    ``make_node`` (a snapshot, an overwritten array, an expanded program's output)."""
    _remember(_ref(node))
    if _WATCHED:
        _note_consumer(node, node._inputs)


def _note_consumer(node, inputs) -> None:
    for x in inputs:
        watched = _WATCHED.get(id(x))
        if watched is not None and watched[0]() is x:
            consumers = watched[1]
            consumers.append(weakref.ref(node))
            if len(consumers) > _WATCH_MAX:
                consumers[:] = [r for r in consumers if r() is not None]
                if len(consumers) > _WATCH_MAX // 2:  # read by many live nodes: back to the search
                    del _WATCHED[id(x)]


def make_realized(data: np.ndarray, dtype: Dtype, stream) -> array:
    """Wrap an existing storage buffer (numpy, in storage dtype) as a realized array."""
    a = _new(array)
    a._prim = None
    a._inputs = ()
    a._params = None
    a._shape = tuple(data.shape)
    a._dtype = dtype
    a._data = data
    a._stream = stream
    _remember(_ref(a))
    return a


class _BufferOwner:
    """Exposes an array's buffer to numpy while holding the array: numpy views of an mlx array keep
    it alive, as MLX's do. Broadcast views are exported writeable, like MLX's."""

    __slots__ = ("owner", "__array_interface__")

    def __init__(self, owner: array, data: np.ndarray):
        self.owner = owner
        iface = dict(data.__array_interface__)
        iface["data"] = (iface["data"][0], False)
        self.__array_interface__ = iface


class ArrayIterator:
    """Iterates over the first axis of an array (MLX's ``mlx.core.ArrayIterator``)."""

    __slots__ = ("_array", "_index")

    def __init__(self, a: array):
        if not a._shape:
            raise TypeError("iter() 0-dimensional array.")
        self._array = a
        self._index = 0

    def __iter__(self):
        return self

    def __next__(self):
        if self._index >= self._array._shape[0]:
            raise StopIteration
        self._index += 1
        return self._array[self._index - 1]


_NO_INDEX = object()


class ArrayAt:
    """``a.at[idx].add(v)`` and friends: updates that return a new array and accumulate over
    repeated indices (MLX's ``mlx.core.ArrayAt``)."""

    __slots__ = ("_array", "_index")

    def __init__(self, a: array):
        self._array = a
        self._index = _NO_INDEX

    def __getitem__(self, index):
        out = ArrayAt(self._array)
        out._index = index
        return out

    def _updater(self):
        if self._index is _NO_INDEX:
            raise ValueError("Must give indices to array.at (e.g. `x.at[0].add(4)`).")
        return _ops._AtIndexer(self._array)[self._index]

    def add(self, value):
        return self._updater().add(value)

    def subtract(self, value):
        return self._updater().subtract(value)

    def multiply(self, value):
        return self._updater().multiply(value)

    def divide(self, value):
        return self._updater().divide(value)

    def maximum(self, value):
        return self._updater().maximum(value)

    def minimum(self, value):
        return self._updater().minimum(value)


# --- operators: each binds to the public op of the same meaning --------------------------------
# MLX accepts scalars, arrays and numpy data as the other operand. Anything else is a ValueError
# naming the operation (a TypeError for None); == and != with such objects are just False/True.

_OPERAND_FAST = frozenset((array, int, float, bool))


_NOT_OPERAND = object()
_NOT_SCALARS = (str, bytes, bytearray, list, tuple, dict, set, frozenset)


def coerce_operand(x):
    """``x`` as an operand of an array's operators (or an op's scalar-or-array argument), else
    ``_NOT_OPERAND``. As MLX: arrays, numbers, numpy and DLPack arrays; an object's ``__mlx_array__``;
    and any other object Python can make a complex number of (a Fraction, a Decimal: MLX's operand
    caster tries ``complex`` last), as a complex64 scalar."""
    if type(x) in _OPERAND_FAST or isinstance(x, (int, float, complex, np.ndarray, np.generic)) \
            or hasattr(x, "__dlpack__"):
        return x
    to_mlx = getattr(type(x), "__mlx_array__", None)
    if to_mlx is not None:
        return to_mlx(x)
    if x is not None and not isinstance(x, _NOT_SCALARS) and (
            hasattr(x, "__complex__") or hasattr(x, "__float__") or hasattr(x, "__index__")):
        try:
            return complex(x)
        except (TypeError, ValueError, OverflowError):
            return _NOT_OPERAND
    return _NOT_OPERAND


def _reject(desc, dunder, other):
    if other is None:
        return TypeError(f"{dunder}(): incompatible function arguments: the other operand must be "
                         "a scalar, an array or array-like, not NoneType.")
    return ValueError(f"Cannot perform {desc} on an mlx.core.array and {type(other).__name__}")


def _operand(other, desc, dunder):
    """``other`` as an operator's operand (``coerce_operand``), or MLX's error for it."""
    value = coerce_operand(other)
    if value is _NOT_OPERAND:
        raise _reject(desc, dunder, other)
    return value


def _binary(name, desc, dunder, reflected=False):
    if reflected:
        def op(self, other):
            if type(other) not in _OPERAND_FAST:
                other = _operand(other, desc, dunder)
            return getattr(_ops, name)(other, self)
    else:
        def op(self, other):
            if type(other) not in _OPERAND_FAST:
                other = _operand(other, desc, dunder)
            return getattr(_ops, name)(self, other)
    op.__name__ = dunder
    return op


def _inplace(name, desc, dunder):
    def op(self, other):
        if type(other) not in _OPERAND_FAST:
            other = _operand(other, f"inplace {desc}", dunder)
        if name == "divide" and self._dtype.kind not in "fc":
            raise ValueError("In place division cannot cast to non-floating point type.")
        return self._update_in_place(lambda old: getattr(_ops, name)(old, other))
    op.__name__ = dunder
    return op


# dunder -> (public op, MLX's name for it in messages, has a reflected form)
_BINARY_DUNDERS = {
    "add": ("add", "addition", True), "sub": ("subtract", "subtraction", True),
    "mul": ("multiply", "multiplication", True), "truediv": ("divide", "division", True),
    "div": ("divide", "division", True), "floordiv": ("floor_divide", "floor division", True),
    "mod": ("remainder", "modulus", True), "pow": ("power", "power", True),
    "and": ("_bitwise_and_op", "bitwise and", False), "or": ("_bitwise_or_op", "bitwise or", False),
    "xor": ("_bitwise_xor_op", "bitwise xor", False), "lshift": ("left_shift", "left shift", False),
    "rshift": ("right_shift", "right shift", False),
}
for _d, (_f, _desc, _reflected) in _BINARY_DUNDERS.items():
    setattr(array, f"__{_d}__", _binary(_f, _desc, f"__{_d}__"))
    if _reflected:
        setattr(array, f"__r{_d}__", _binary(_f, _desc, f"__r{_d}__", reflected=True))
    if _d != "div":
        setattr(array, f"__i{_d}__", _inplace(_f, _desc, f"__i{_d}__"))

for _d, (_f, _desc) in {"lt": ("less", "less than"), "le": ("less_equal", "less than or equal"),
                        "gt": ("greater", "greater than"),
                        "ge": ("greater_equal", "greater than or equal")}.items():
    setattr(array, f"__{_d}__", _binary(_f, _desc, f"__{_d}__"))


def _matmul(self, other):
    if not isinstance(other, array):
        raise TypeError("__matmul__(): incompatible function arguments: the other operand must be "
                        f"an mlx.core.array, not {type(other).__name__}.")
    return _ops.matmul(self, other)


def _imatmul(self, other):
    return self._update_in_place(lambda old: _matmul(old, other))


def _equality(name, desc, dunder, unlike):
    """``==`` / ``!=``: what is no operand compares unequal (``unlike``), None raises, as MLX."""
    def op(self, other):
        if type(other) not in _OPERAND_FAST:
            value = coerce_operand(other)
            if value is _NOT_OPERAND:
                if other is None:
                    raise _reject(desc, dunder, other)
                return unlike
            other = value
        return getattr(_ops, name)(self, other)
    op.__name__ = dunder
    return op


array.__matmul__ = _matmul
array.__imatmul__ = _imatmul
array.__eq__ = _equality("equal", "equal", "__eq__", False)
array.__ne__ = _equality("not_equal", "not equal", "__ne__", True)
array.__neg__ = lambda self: _ops.negative(self)
array.__pos__ = lambda self: self
array.__abs__ = lambda self: _ops.abs(self)
array.__invert__ = lambda self: _ops._invert_op(self)

# Methods that are the public op of the same name with the array as first argument.
_METHODS = [
    "abs", "all", "any", "argmax", "argmin", "cummax", "cummin", "cumprod", "cumsum", "diag",
    "diagonal", "exp", "flatten", "log", "log10", "log1p", "log2", "logcumsumexp", "logsumexp", "max",
    "mean", "min", "moveaxis", "prod", "reciprocal", "round", "rsqrt", "sin", "cos", "split", "sqrt",
    "square", "squeeze", "std", "sum", "swapaxes", "var", "maximum", "minimum", "conjugate",
]


def _method(name):
    def m(self, *args, **kwargs):
        return getattr(_ops, name)(self, *args, **kwargs)
    m.__name__ = name
    return m


for _m in _METHODS:
    if not hasattr(array, _m):
        setattr(array, _m, _method(_m))

__all__ = ["array", "ArrayAt", "ArrayIterator", "make_node", "make_realized", "DtypeError"]

from . import printing as _printing  # noqa: E402,F401  (registers the print options API)
from .registry import api as _api  # noqa: E402

_api("ArrayAt")(ArrayAt)
_api("ArrayIterator")(ArrayIterator)
