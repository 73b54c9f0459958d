"""The kernel IR: what a fused group of primitives becomes before a renderer turns it into source.

A ``Kernel`` is a loop nest over an index space ``dims`` (sizes, outermost first). The first
``n_out`` dims are the output space, split between threads; the remaining ones, when there are any,
are reduced by ``reduce_op`` for every output element. Every memory access is affine in the loop
indices: element address = sum(index[d] * strides[d]) from the buffer's base pointer. A stride of 0
is a broadcast; views (transpose, slices, reshapes of compatible layouts) are nothing but strides and
the buffer's base pointer, so they never copy.

Values are expression trees (``Load``, ``Const``, ``Op``, ``Cast``) in which every node carries its
dtype name ("float32", "int64", "bool", ...). Half-precision values are computed in float32 and
rounded to their dtype at every node, as the numpy reference does. The innermost dim is vectorized by
the renderer (``Kernel.width`` lanes, or a scalable vector), with a scalar loop for the remainder.

Nodes are frozen dataclasses, so a kernel is hashable: equal kernels share one compiled function.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

# Ops an ``Op`` node may name, by arity. Their meaning is numpy's on the node's dtype.
UNARY_OPS = frozenset({
    "abs", "negative", "sign", "square", "floor", "ceil", "round", "exp", "expm1", "log", "log2", "log10",
    "log1p", "sqrt", "rsqrt", "reciprocal", "sin", "cos", "tanh", "sigmoid", "erf", "degrees", "radians",
    "isnan", "isinf", "isfinite", "isposinf", "isneginf", "logical_not", "bitwise_invert",
    # inverse trigonometric and hyperbolic functions; trunc rounds toward zero
    "tan", "arcsin", "arccos", "arctan", "sinh", "cosh", "arcsinh", "arccosh", "arctanh", "trunc",
})
BINARY_OPS = frozenset({
    "add", "subtract", "multiply", "divide", "maximum", "minimum", "equal", "not_equal", "less",
    "less_equal", "greater", "greater_equal", "logical_and", "logical_or", "bitwise_and", "bitwise_or",
    "bitwise_xor",
    # floating point only for power; floor_divide and remainder follow numpy's signs, with MLX's
    # integer answers for a zero divisor (x // 0 == 0, x % 0 == x)
    "power", "floor_divide", "remainder", "arctan2", "logaddexp",
})
TERNARY_OPS = frozenset({"where"})
ALL_OPS = UNARY_OPS | BINARY_OPS | TERNARY_OPS
REDUCE_OPS = frozenset({"sum", "prod", "max", "min"})  # all/any lower to min/max over bools
# Reductions to a position: the store's value is what is compared, the store writes the first
# position (row-major over the reduced dims) of its maximum/minimum, NaN counting as the maximum
# and the minimum both (numpy's rule).
ARG_REDUCE_OPS = frozenset({"argmax", "argmin"})

# The dtypes kernels compute on: the rest run on the numpy executor.
DTYPES = frozenset({"bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
                    "float16", "float32", "bfloat16"})
# What every renderer implements. ``fuse.plan`` and ``lower.classify`` keep to these unless a backend
# passes wider sets (the LLVM executor passes ``ALL_OPS`` and ``DTYPES | {"float64"}``).
PORTABLE_OPS = frozenset({
    "abs", "negative", "sign", "square", "floor", "ceil", "round", "exp", "expm1", "log", "log2", "log10",
    "log1p", "sqrt", "rsqrt", "reciprocal", "sin", "cos", "tanh", "sigmoid", "erf", "degrees", "radians",
    "isnan", "isinf", "isfinite", "isposinf", "isneginf", "logical_not", "bitwise_invert",
    "add", "subtract", "multiply", "divide", "maximum", "minimum", "equal", "not_equal", "less",
    "less_equal", "greater", "greater_equal", "logical_and", "logical_or", "bitwise_and", "bitwise_or",
    "bitwise_xor", "where",
})
# What a float64 value may go through in a kernel (exact in IEEE double); other float64 ops stay on
# the numpy executor, whose libm is the reference.
FLOAT64_OPS = frozenset({"add", "subtract", "multiply", "divide", "maximum", "minimum", "equal",
                         "not_equal", "less", "less_equal", "greater", "greater_equal", "abs", "floor",
                         "ceil", "sqrt", "round", "trunc", "negative", "square", "reciprocal", "isnan",
                         "where", "logical_and", "logical_or", "logical_not"})


@dataclass(frozen=True)
class Load:
    """Read buffer ``buf`` (an index into the kernel's arguments) at the affine address."""
    buf: int
    dtype: str
    strides: tuple  # elements per step of each of the kernel's dims


@dataclass(frozen=True)
class Const:
    value: Union[int, float, bool]
    dtype: str


@dataclass(frozen=True)
class Op:
    op: str
    args: tuple
    dtype: str  # the result's dtype


@dataclass(frozen=True)
class Cast:
    arg: "Expr"
    dtype: str


@dataclass(frozen=True)
class Reduced:
    """In a reduction's ``Kernel.epilogue``: the reduced value of the output element being stored."""
    dtype: str


Expr = Union[Load, Const, Op, Cast, Reduced]


@dataclass(frozen=True)
class Store:
    """Write ``value`` to buffer ``buf`` at the affine address over the output dims."""
    buf: int
    dtype: str
    strides: tuple
    value: Expr


@dataclass(frozen=True)
class Kernel:
    name: str
    dims: tuple  # loop sizes, outermost first
    n_out: int  # how many leading dims are the output space
    store: Store
    reduce_op: Optional[str] = None  # REDUCE_OPS or ARG_REDUCE_OPS over dims[n_out:], of ``store.value``
    width: int = 8  # vector lanes of the innermost loop (a scalable renderer multiplies by vscale)
    # With a REDUCE_OPS reduction: the value stored, computed from ``Reduced`` and loads whose
    # strides run over the output dims only (mean's scaling, a norm's sqrt). None stores the
    # reduced value itself.
    epilogue: Optional[Expr] = None

    @property
    def out_size(self) -> int:
        n = 1
        for d in self.dims[:self.n_out]:
            n *= d
        return n

    @property
    def n_buffers(self) -> int:
        bufs = {self.store.buf}
        for root in (self.store.value, self.epilogue):
            for e in walk(root) if root is not None else ():
                if isinstance(e, Load):
                    bufs.add(e.buf)
        return len(bufs)


def walk(e: Expr):
    """Every node of an expression, children before parents, each shared node once."""
    seen = set()
    stack = [(e, False)]
    while stack:
        node, expanded = stack.pop()
        if id(node) in seen:
            continue
        if expanded or isinstance(node, (Load, Const, Reduced)):
            seen.add(id(node))
            yield node
            continue
        stack.append((node, True))
        kids = node.args if isinstance(node, Op) else (node.arg,)
        for k in reversed(kids):
            stack.append((k, False))


def describe(e: Expr) -> str:
    """A one-line, readable form of an expression (``MLXARM_DEBUG``)."""
    if isinstance(e, Load):
        return f"b{e.buf}"
    if isinstance(e, Reduced):
        return "reduced"
    if isinstance(e, Const):
        return repr(e.value)
    if isinstance(e, Cast):
        return f"{e.dtype}({describe(e.arg)})"
    return f"{e.op}({', '.join(describe(a) for a in e.args)})"


def summary(k: Kernel) -> str:
    body = describe(k.store.value)
    if k.reduce_op:
        body = f"{k.reduce_op}[{'x'.join(map(str, k.dims[k.n_out:]))}]({body})"
        if k.epilogue is not None:
            body = describe(k.epilogue).replace("reduced", body)
    return f"{k.name} out={k.store.dtype}{list(k.dims[:k.n_out])} {body}"
