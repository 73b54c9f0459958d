"""The ``array`` type: a node of the lazy graph until it is realized, then a buffer.

An unrealized array holds (primitive, inputs, params, shape, dtype, stream). ``eval`` (graph.py)
realizes it: ``_data`` then holds the buffer and the node forgets its inputs, so the graph behind it
can be freed. Every operator and method here only records nodes through the public op functions; none
computes anything itself.
"""
from __future__ import annotations

import gc
import sys

import numpy as np

from . import dtypes as dt
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
        """The storage buffer as a numpy array (evaluates first)."""
        if self._data is None:
            from .graph import eval_arrays

            eval_arrays((self,))
        return self._data

    def _numpy(self) -> np.ndarray:
        """Values as numpy (bfloat16 widened to float32)."""
        data = self._realized()
        if self._dtype is dt.bfloat16:
            return dt.bf16_to_f32(data)
        return data

    def __array__(self, dtype=None, copy=None):
        out = self._numpy()
        if dtype is not None:
            out = out.astype(dtype)
        elif copy:
            out = out.copy()
        return out

    def item(self):
        if self.size != 1:
            raise ValueError("item can only be called on arrays of size 1.")
        v = self._numpy().reshape(()).item()
        return v

    def tolist(self):
        return self._numpy().tolist()

    def __bool__(self):
        if self.size != 1:
            raise ValueError("The truth value of an array with more than one element is ambiguous.")
        return bool(self.item())

    def __int__(self):
        return int(self.item())

    def __float__(self):
        return float(self.item())

    def __index__(self):
        if not dt.is_integer(self._dtype) and self._dtype is not dt.bool_:
            raise TypeError("Only integer arrays can be converted to an index.")
        return int(self.item())

    def __complex__(self):
        return complex(self.item())

    def __repr__(self):
        from .printing import format_array

        return format_array(self)

    __str__ = __repr__

    def __format__(self, spec):
        if spec and self.size == 1:
            return format(self.item(), spec)
        return repr(self) if not spec else format(repr(self), spec)

    def __hash__(self):
        return id(self)

    def __iter__(self):
        if not self._shape:
            raise TypeError("iteration over a 0-d array")
        for i in range(self._shape[0]):
            yield self[i]

    def __getstate__(self):
        return {"data": self._numpy(), "dtype": self._dtype.name}

    def __setstate__(self, state):
        self.__init__(state["data"], getattr(dt, state["dtype"] + ("_" if state["dtype"] == "bool" else "")))

    def __copy__(self):
        return _ops.copy(self)

    def __deepcopy__(self, memo):
        return _ops.copy(self)

    # --- overwriting in place (setitem and the in-place operators) -------------------------------
    def _overwrite(self, other: "array", old: "array") -> "array":
        """Make this Python object the node ``other`` (MLX's overwrite_descriptor).

        Every Python reference to this array sees the new value, but nodes already recorded on it
        keep the value they were recorded with (``old``, a snapshot): they are re-pointed at it.
        Consumers are found through the garbage collector's referrer lists rather than back-pointers
        kept on every node, so recording stays cheap and only the rare in-place update pays.
        """
        if other._shape != self._shape:
            raise ValueError(
                f"Cannot broadcast the result of shape {other._shape} to the in-place target "
                f"of shape {self._shape}.")
        # References: the caller's name, the interpreter stack of the statement, the frame of
        # __setitem__ (or the in-place operator), this frame, getrefcount's argument. More than
        # that may be recorded consumers (or just aliases): only then search.
        if sys.getrefcount(self) > _OVERWRITE_BASE_REFS:
            self._repoint_consumers(old)
        self._prim, self._inputs, self._params = other._prim, other._inputs, other._params
        self._dtype, self._data, self._stream = other._dtype, other._data, other._stream
        return self

    def _repoint_consumers(self, old: "array") -> None:
        for ref in gc.get_referrers(self):
            if type(ref) is tuple:
                for holder in gc.get_referrers(ref):
                    if type(holder) is array and holder._inputs is ref:
                        holder._inputs = tuple(old if x is self else x for x in ref)

    def _snapshot(self) -> "array":
        """A new node with this one's current contents (the old value, before an overwrite)."""
        out = _new(array)
        out._prim, out._inputs, out._params = self._prim, self._inputs, self._params
        out._shape, out._dtype, out._data, out._stream = self._shape, self._dtype, self._data, self._stream
        return out

    def __getitem__(self, idx):
        return _ops._getitem(self, idx)

    def __setitem__(self, idx, value):
        old = self._snapshot()
        self._overwrite(_ops._setitem(old, idx, value), old)

    @property
    def at(self):
        return _ops._AtIndexer(self)

    # --- properties that are ops -----------------------------------------------------------------
    @property
    def T(self):
        return _ops.transpose(self)

    @property
    def mT(self):
        if self.ndim < 2:
            raise ValueError("[mT] Array must have at least two dimensions.")
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
_OVERWRITE_BASE_REFS = 5


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
    return a


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
    return a


# --- operators: each binds to the public op of the same meaning --------------------------------

def _binary(name, reflected=False):
    if reflected:
        def op(self, other):
            return getattr(_ops, name)(other, self)
    else:
        def op(self, other):
            return getattr(_ops, name)(self, other)
    op.__name__ = name
    return op


def _inplace(name):
    def op(self, other):
        old = self._snapshot()
        res = getattr(_ops, name)(old, other)
        if res._dtype is not self._dtype:
            res = _ops.astype(res, self._dtype)
        if res._shape != self._shape:
            res = _ops.broadcast_to(res, self._shape)
        return self._overwrite(res, old)
    return op


_BINARY_DUNDERS = {
    "add": "add", "sub": "subtract", "mul": "multiply", "truediv": "divide",
    "floordiv": "floor_divide", "mod": "remainder", "pow": "power", "matmul": "matmul",
    "and": "_bitwise_and_op", "or": "_bitwise_or_op", "xor": "_bitwise_xor_op",
    "lshift": "left_shift", "rshift": "right_shift",
}
for _d, _f in _BINARY_DUNDERS.items():
    setattr(array, f"__{_d}__", _binary(_f))
    setattr(array, f"__r{_d}__", _binary(_f, reflected=True))
    setattr(array, f"__i{_d}__", _inplace(_f))

for _d, _f in {"eq": "equal", "ne": "not_equal", "lt": "less", "le": "less_equal",
               "gt": "greater", "ge": "greater_equal"}.items():
    setattr(array, f"__{_d}__", _binary(_f))


def _divmod(self, other):
    return _ops.divmod(self, other)


def _rdivmod(self, other):
    return _ops.divmod(other, self)


array.__divmod__ = _divmod
array.__rdivmod__ = _rdivmod
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

__all__ = ["array", "make_node", "make_realized", "DtypeError"]
