"""Building blocks for the gradient rules the op modules attach to their primitives.

Rules run when a transform walks the graph, after every op module is loaded, so they reach the public
ops through the package namespace ``O``. Conventions (see core/transforms.py): ``vjp(node, cotangent,
argnums) -> list`` aligned with argnums, ``jvp(node, tangents, argnums) -> array``.
"""
from __future__ import annotations

from .. import ops as O  # the package, complete by the time any rule runs
from ..array import make_node


def unbroadcast(g, shape: tuple):
    """Sum ``g`` over the axes a broadcast to its shape added or stretched, back to ``shape``."""
    if g._shape == shape:
        return g
    lead = len(g._shape) - len(shape)
    axes = tuple(range(lead)) + tuple(
        i + lead for i, s in enumerate(shape) if s == 1 and g._shape[i + lead] != 1)
    if axes:
        g = O.sum(g, axis=axes, keepdims=True)
    return O.reshape(g, shape)


def conj(x):
    return O.conjugate(x) if x._dtype.kind == "c" else x


def zeros_vjp(node, cot, argnums):
    return [O.zeros_like(node._inputs[i]) for i in argnums]


def zeros_jvp(node, tangents, argnums):
    return O.zeros(node._shape, tangents[0]._dtype)


def nondifferentiable(prim):
    prim.vjp = zeros_vjp
    prim.jvp = zeros_jvp


def elementwise(prim, deriv):
    """Rules of a holomorphic unary op from its derivative ``deriv(x, out)``."""
    def vjp(node, cot, argnums):
        return [cot * conj(deriv(node._inputs[0], node))]

    def jvp(node, tangents, argnums):
        return tangents[0] * deriv(node._inputs[0], node)

    prim.vjp = vjp
    prim.jvp = jvp


def reapply(node, first, *rest):
    """``node``'s primitive and parameters recorded over other inputs (linear ops' tangents)."""
    return make_node(node._prim, (first,) + tuple(rest), node._params, node._shape, first._dtype,
                     node._stream)


def linear_jvp(node, tangents, argnums):
    """The jvp of an op that is linear in its first input (the only differentiable one)."""
    return reapply(node, tangents[0], *node._inputs[1:])


def composite(prim, fn):
    """Rules from an equivalent composition ``fn(params, *inputs)`` of differentiable ops."""
    def vjp(node, cot, argnums):
        from ..transforms import vjp_flat

        return vjp_flat(lambda xs: [fn(node._params, *xs)], list(node._inputs), [cot], argnums)[1]

    def jvp(node, tangents, argnums):
        from ..transforms import jvp_flat

        full = [O.zeros_like(x) for x in node._inputs]
        for i, t in zip(argnums, tangents):
            full[i] = t
        return jvp_flat(lambda xs: [fn(node._params, *xs)], list(node._inputs), full)[1][0]

    prim.vjp = vjp
    prim.jvp = jvp
