"""``mx.vmap``: vectorizing a function over an axis of its inputs.

The function is traced once on placeholder inputs of the unbatched shape, which records an ordinary
graph. That graph is then rebuilt on the real (batched) inputs: every node that depends on a batched
value is re-recorded by its primitive's batching rule (``prim.extra["vmap"]``), which turns it into
one node (or a few) over the whole batch. A primitive without a rule is mapped over the batch one
slice at a time and the results are stacked: correct, only slower.

A batching rule is ``rule(node, inputs, axes, size) -> (array, axis)``: ``inputs`` are the batched
replacements of the node's inputs, ``axes`` the batch axis of each (``None``: not batched, used as
is) and ``size`` the batch size; it returns the batched result and its batch axis.

The placeholder primitive is shared with ``mx.compile``, which traces the same way.
"""
from __future__ import annotations

import threading

from .graph import tracing
from .array import array, make_node
from .registry import Primitive, register, api, PRIMITIVES
from .device import resolve_stream
from .ops._base import broadcast_shapes


_tracing = threading.local()


def in_tracing() -> bool:
    """Whether a vmap is tracing its function on this thread (compiled functions then run as
    plain functions, so the trace sees their operations)."""
    return getattr(_tracing, "depth", 0) > 0


class VmapAxisError(IndexError, ValueError):
    """An invalid vectorization axis (MLX raises it as IndexError in some versions, ValueError in
    others)."""


# --- trace inputs ---------------------------------------------------------------------------------

def _trace_input_ref(params, *inputs):
    raise ValueError("[eval] Attempting to eval an array during function transformations like compile "
                     "or vmap is not allowed.")


TRACE_INPUT = register(Primitive(
    "trace_input", "movement", _trace_input_ref, compute=False,
    doc="A function argument while a transformation (vmap, compile) traces the function; it has no "
        "value, so evaluating it is an error.",
    extra={"cases": lambda rng, dtype: []}))


def trace_input(shape: tuple, dtype, slot: int, token) -> array:
    """A placeholder for argument ``slot`` of the trace identified by ``token``.

    Placeholders are recognized by their params, not their identity: an in-place update of an
    argument inside the function rebinds the Python object but keeps a snapshot with the same
    params as the update's input.
    """
    return make_node(TRACE_INPUT, (), {"slot": slot, "token": token}, tuple(shape), dtype,
                     resolve_stream(None))


def placeholder_slot(a: array, token):
    """The argument slot of ``a`` when it is a placeholder of trace ``token``, else None."""
    if a._prim is TRACE_INPUT and a._data is None and a._params["token"] is token:
        return a._params["slot"]
    return None


# --- trees ----------------------------------------------------------------------------------------

_PREFIX_ERROR = "[tree_map] Additional input tree is not a valid prefix of the first tree."


def flatten_arrays(tree, what: str = "tree_flatten") -> list:
    """The arrays of a tree of lists, tuples and dicts; any other leaf is an error."""
    out: list = []

    def walk(t):
        if isinstance(t, array):
            out.append(t)
        elif isinstance(t, (list, tuple)):
            for x in t:
                walk(x)
        elif isinstance(t, dict):
            for x in t.values():
                walk(x)
        else:
            raise ValueError(f"[{what}] The argument should contain only arrays")

    walk(tree)
    return out


def rebuild(tree, leaves):
    """``tree`` with its array leaves replaced, in order, by ``leaves`` (an iterator)."""
    if isinstance(tree, array):
        return next(leaves)
    if isinstance(tree, list):
        return [rebuild(x, leaves) for x in tree]
    if isinstance(tree, tuple):
        items = [rebuild(x, leaves) for x in tree]
        if type(tree) is tuple:
            return tuple(items)
        if hasattr(tree, "_fields"):  # a named tuple
            return type(tree)(*items)
        return type(tree)(items)
    if isinstance(tree, dict):
        return {k: rebuild(v, leaves) for k, v in tree.items()}
    return tree


def _check_axis(axis, x: array, output: bool) -> int:
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise ValueError("[vmap] axis must be int or None.")
    n = x.ndim + (1 if output else 0)
    if axis < 0:
        axis += n
    if axis < 0 or axis >= n:
        shape = "(" + ",".join(str(s) for s in x._shape) + ")"
        raise VmapAxisError(f"[vmap] Invalid{' output ' if output else ' '}vectorization axis {axis} "
                            f"for array with shape {shape}")
    return axis


def flat_axes(tree, axes, output: bool) -> list:
    """One axis (or None) per array leaf of ``tree``; ``axes`` is a prefix tree of it."""
    out: list = []
    saw_tuple = [False]

    def leaf_axis(x, ax):
        if ax is None:
            out.append(None)
        elif isinstance(ax, tuple):
            saw_tuple[0] = True
            if len(ax) == 1 and (ax[0] is None or isinstance(ax[0], int)):
                out.append(None if ax[0] is None else _check_axis(ax[0], x, output))
            else:
                raise ValueError("[vmap] axis must be int or None.")
        else:
            out.append(_check_axis(ax, x, output))

    def walk(t, ax):
        if isinstance(t, array):
            leaf_axis(t, ax)
        elif isinstance(t, (list, tuple)):
            if isinstance(ax, (list, tuple)):
                if isinstance(ax, list) != isinstance(t, list) or len(ax) != len(t):
                    raise ValueError(_PREFIX_ERROR)
                for x, a in zip(t, ax):
                    walk(x, a)
            elif isinstance(ax, dict):
                raise ValueError(_PREFIX_ERROR)
            else:
                for x in t:
                    walk(x, ax)
        elif isinstance(t, dict):
            if isinstance(ax, dict):
                if set(ax) != set(t):
                    raise ValueError("[tree_visit] Tree is not a valid prefix tree of the first tree.")
                for k, x in t.items():
                    walk(x, ax[k])
            elif isinstance(ax, (list, tuple)):
                raise ValueError(_PREFIX_ERROR)
            else:
                for x in t.values():
                    walk(x, ax)
        else:
            raise ValueError("[vmap] The arguments should contain only arrays")

    walk(tree, axes)
    if saw_tuple[0] and not isinstance(tree, array):
        raise ValueError("[vmap] axis must be int or None.")
    return out


# --- helpers the batching rules share ---------------------------------------------------------------

def _ops():
    from . import ops
    return ops


def move_to_front(x: array, axis):
    """``x`` with its batch axis first (unbatched arrays are returned as they are)."""
    if axis is None or axis == 0:
        return x
    perm = (axis,) + tuple(i for i in range(x.ndim) if i != axis)
    return _ops().transpose(x, perm)


def align_front(x: array, axis, ndim: int):
    """A batched ``x`` (batch first) padded with unit axes after the batch axis so that its
    unbatched part has ``ndim`` dimensions; unbatched arrays are returned as they are."""
    if axis is None:
        return x
    x = move_to_front(x, axis)
    extra = ndim - (x.ndim - 1)
    if extra > 0:
        # Recorded with the positions of the new unit axes, so a shapeless replay can redo it.
        shape = (x._shape[0],) + (1,) * extra + x._shape[1:]
        x = make_node(PRIMITIVES["reshape"], (x,), {"shape": shape, "unit_axes": tuple(range(1, extra + 1))},
                      shape, x._dtype, x._stream)
    return x


def batched_everywhere(x: array, axis, size: int):
    """``x`` batched at the front: unbatched arrays are broadcast along a new first axis."""
    if axis is None:
        return _ops().broadcast_to(_ops().expand_dims(x, 0), (size,) + x._shape)
    return move_to_front(x, axis)


def _rerecord(node, inputs, params, shape):
    return make_node(node._prim, tuple(inputs), params, tuple(shape), node._dtype, node._stream)


# --- batching rules ----------------------------------------------------------------------------------

def _elementwise_rule(node, xs, axes, size):
    """Unary and n-ary elementwise primitives (they broadcast their operands)."""
    if len(xs) == 1:
        x, ax = xs[0], axes[0]
        return _rerecord(node, (x,), node._params, x._shape), ax
    nd = len(node._shape)
    ins = [align_front(x, ax, nd) for x, ax in zip(xs, axes)]
    shape = broadcast_shapes(*[x._shape for x in ins])
    return _rerecord(node, ins, node._params, shape), 0


def _front_rule(adjust):
    """Rules for primitives of one input whose params name axes: the batch axis goes first and
    ``adjust(params, ndim)`` shifts the params past it."""
    def rule(node, xs, axes, size):
        x = move_to_front(xs[0], axes[0])
        params = adjust(dict(node._params) if node._params else {}, x.ndim - 1)
        return _rerecord(node, (x,) + tuple(xs[1:]), params, (size,) + node._shape), 0
    return rule


def _shift_axes(p, nd):
    p["axes"] = tuple(a + 1 for a in p["axes"])
    return p


def _shift_axis(p, nd):
    p["axis"] = p["axis"] + 1
    return p


def _reduce_rule(node, xs, axes, size):
    x = move_to_front(xs[0], axes[0])
    p = dict(node._params)
    if node._prim.name in ("argmax", "argmin") and len(p["axes"]) > 1:
        # An arg-reduction over the whole array indexes the flattened array: flatten per element.
        x = _ops().reshape(x, (size, -1))
        p["axes"] = (1,)
        out = _rerecord(node, (x,), p, (size, 1) if p["keepdims"] else (size,))
        return _ops().reshape(out, (size,) + node._shape), 0
    p["axes"] = tuple(a + 1 for a in p["axes"])
    return _rerecord(node, (x,), p, (size,) + node._shape), 0


def _reshape_rule(node, xs, axes, size):
    x = move_to_front(xs[0], axes[0])
    shape = (size,) + node._params["shape"]
    return _rerecord(node, (x,), dict(node._params, shape=shape), shape), 0


def _transpose_rule(node, xs, axes, size):
    x = move_to_front(xs[0], axes[0])
    perm = (0,) + tuple(a + 1 for a in node._params["axes"])
    return _rerecord(node, (x,), {"axes": perm}, (size,) + node._shape), 0


def _broadcast_rule(node, xs, axes, size):
    x = align_front(xs[0], axes[0], len(node._shape))
    shape = (size,) + node._params["shape"]
    return _rerecord(node, (x,), dict(node._params, shape=shape), shape), 0


def _concatenate_rule(node, xs, axes, size):
    ins = [batched_everywhere(x, ax, size) for x, ax in zip(xs, axes)]
    p = {"axis": node._params["axis"] + 1}
    return _rerecord(node, ins, p, (size,) + node._shape), 0


def _pad_rule(node, xs, axes, size):
    if axes[1] is not None:
        raise ValueError("[pad] vmap over the padding value is not supported.")
    x = move_to_front(xs[0], axes[0])
    p = dict(node._params, widths=((0, 0),) + tuple(node._params["widths"]))
    return _rerecord(node, (x, xs[1]), p, (size,) + node._shape), 0


def _diagonal_rule(node, xs, axes, size):
    x = move_to_front(xs[0], axes[0])
    p = dict(node._params, axis1=node._params["axis1"] + 1, axis2=node._params["axis2"] + 1)
    return _rerecord(node, (x,), p, (size,) + node._shape), 0


def _strided_slice_rule(node, xs, axes, size):
    x = move_to_front(xs[0], axes[0])
    p = {"index": (slice(None),) + tuple(node._params["index"])}
    return _rerecord(node, (x,), p, (size,) + node._shape), 0


def _view_rule(node, xs, axes, size):
    x = move_to_front(xs[0], axes[0])
    shape = (size,) + node._shape
    p = dict(node._params, shape=shape) if node._params and "shape" in node._params else node._params
    return _rerecord(node, (x,), p, shape), 0


def _matmul_rule(node, xs, axes, size):
    nd = len(node._shape)
    ins = [align_front(x, ax, nd) for x, ax in zip(xs, axes)]
    return _rerecord(node, ins, node._params, (size,) + node._shape), 0


def _depends_rule(node, xs, axes, size):
    return _rerecord(node, xs, node._params, xs[0]._shape), axes[0]


def _gather_rule(node, xs, axes, size):
    if any(ax is not None for ax in axes[1:]):
        return map_rule(node, xs, axes, size)
    template = node._params["index"]
    x = move_to_front(xs[0], axes[0])
    out = make_node(node._prim, (x,) + tuple(xs[1:]),
                    {"index": (slice(None),) + tuple(template),
                     "axes": tuple(a + 1 for a in node._params["axes"])},
                    _gather_shape(node, size), node._dtype, node._stream)
    return out, _gather_batch_axis(template, xs[1:])


def _adv_first(template) -> bool:
    """Whether advanced indices (arrays, ints) separated by slices put their result first."""
    seen_adv = seen_gap = False
    for e in template:
        if isinstance(e, (int, tuple)):
            if seen_adv and seen_gap:
                return True
            seen_adv = True
        elif seen_adv:
            seen_gap = True
    return False


def _gather_batch_axis(template, arrays):
    """Where the leading full slice lands in a gather's result (numpy's placement rules)."""
    # With the slice prepended, advanced indices that were first become separated from index 0.
    has_adv = any(isinstance(e, (int, tuple)) for e in template)
    if not has_adv:
        return 0
    shapes = [a._shape for a in arrays]
    bnd = len(broadcast_shapes(*shapes)) if len(shapes) > 1 else len(shapes[0])
    return bnd if (_adv_first(template) or _adv_first((slice(None),) + tuple(template))) else 0


def _gather_shape(node, size):
    template = node._params["index"]
    arrays = node._inputs[1:]
    ax = _gather_batch_axis(template, arrays)
    s = node._shape
    return s[:ax] + (size,) + s[ax:]


def map_rule(node, xs, axes, size):
    """Any primitive: one node per batch element, stacked."""
    ops = _ops()
    outs = []
    for b in range(size):
        ins = [x if ax is None else ops._getitem(x, (slice(None),) * ax + (b,))
               for x, ax in zip(xs, axes)]
        outs.append(_rerecord(node, ins, node._params, node._shape))
    return ops.stack(outs, 0), 0


_RULES_BY_KIND = {"unary": _elementwise_rule, "binary": _elementwise_rule,
                  "ternary": _elementwise_rule, "reduce": _reduce_rule}
_RULES_BY_NAME = {
    "reshape": _reshape_rule, "transpose": _transpose_rule, "broadcast_to": _broadcast_rule,
    "full": _broadcast_rule, "flip": _front_rule(_shift_axes), "concatenate": _concatenate_rule,
    "split": _front_rule(_shift_axis), "pad": _pad_rule, "roll": _front_rule(_shift_axes),
    "diagonal": _diagonal_rule, "contiguous": _elementwise_rule, "view": _view_rule,
    "strided_slice": _strided_slice_rule, "gather": _gather_rule,
    "matmul": _matmul_rule, "addmm": _matmul_rule, "depends": _depends_rule,
    "sort": _front_rule(_shift_axis), "argsort": _front_rule(_shift_axis),
    "partition": _front_rule(_shift_axis), "argpartition": _front_rule(_shift_axis),
    "topk": _front_rule(_shift_axis), "softmax": _front_rule(_shift_axes),
    "cumsum": _front_rule(_shift_axis), "cumprod": _front_rule(_shift_axis),
    "cummax": _front_rule(_shift_axis), "cummin": _front_rule(_shift_axis),
    "logcumsumexp": _front_rule(_shift_axis),
}
# Reductions whose params are not plain axes are mapped.
_MAPPED = {"norm", "median"}


def rule_for(prim):
    """The batching rule of ``prim``: its own (``extra["vmap"]``), else the default for its name or
    kind (remembered on the primitive), else mapping over the batch."""
    rule = prim.extra.get("vmap")
    if rule is None:
        rule = _RULES_BY_NAME.get(prim.name)
        if rule is None and prim.name not in _MAPPED:
            rule = _RULES_BY_KIND.get(prim.kind)
        prim.extra["vmap"] = rule = rule or map_rule
    return rule


# --- the transformation ------------------------------------------------------------------------------

def batch_graph(outputs, token, batched: dict, size: int):
    """Rebuild the graph behind ``outputs`` with the placeholders of ``token`` replaced by
    ``batched`` (slot -> (array, axis)); returns (array, axis) per output."""
    memo: dict = {}  # id(node) -> (array, axis)
    keep = []  # holds traced nodes so their ids stay unique while memoized

    def visit(root):
        stack = [(root, False)]
        while stack:
            node, ready = stack.pop()
            key = id(node)
            if key in memo:
                continue
            slot = placeholder_slot(node, token)
            if slot is not None:
                memo[key] = batched[slot]
                keep.append(node)
                continue
            if node._data is not None or not node._inputs:
                memo[key] = (node, None)
                keep.append(node)
                continue
            if not ready:
                stack.append((node, True))
                stack.extend((x, False) for x in node._inputs if id(x) not in memo)
                continue
            ins = [memo[id(x)] for x in node._inputs]
            keep.append(node)
            if all(ax is None for _, ax in ins):
                memo[key] = (node, None)
                continue
            xs = [a for a, _ in ins]
            axes = [ax for _, ax in ins]
            memo[key] = rule_for(node._prim)(node, xs, axes, size)

    for o in outputs:
        visit(o)
    return [memo[id(o)] for o in outputs]


def _place_output(x: array, axis, out_axis, size: int):
    ops = _ops()
    if out_axis is None:
        raise ValueError("[vmap] axis must be int or None.")
    if axis is None:
        x = ops.broadcast_to(ops.expand_dims(x, 0), (size,) + x._shape)
        axis = 0
    if axis != out_axis:
        x = ops.moveaxis(x, axis, out_axis)
    return x


@api()
def vmap(fun, in_axes=0, out_axes=0):
    """Vectorize ``fun`` over an axis of its inputs (MLX ``mlx.core.vmap``)."""
    def vmapped(*args):
        inputs = flatten_arrays(args)
        axes_in = flat_axes(args[0] if len(args) == 1 else args, in_axes, output=False)
        size = None
        for x, ax in zip(inputs, axes_in):
            if ax is None:
                continue
            n = x._shape[ax]
            if size is None:
                size = n
            elif n != size:
                raise ValueError(f"[vmap] Inconsistent axis sizes: {size} and {n}.")
        if size is None:
            raise ValueError("At least one of in_axes must be non-None.")
        token = object()
        traced = []
        for i, (x, ax) in enumerate(zip(inputs, axes_in)):
            if ax is None:
                traced.append(x)
            else:
                traced.append(trace_input(x._shape[:ax] + x._shape[ax + 1:], x._dtype, i, token))
        _tracing.depth = getattr(_tracing, "depth", 0) + 1
        try:
            with tracing(allow_eval=False):
                py_out = fun(*rebuild(args, iter(traced)))
        finally:
            _tracing.depth -= 1
        outputs = flatten_arrays(py_out)
        axes_out = flat_axes(py_out, out_axes, output=True)
        batched = {i: (x, ax) for i, (x, ax) in enumerate(zip(inputs, axes_in)) if ax is not None}
        results = batch_graph(outputs, token, batched, size)
        placed = [_place_output(x, ax, oax, size) for (x, ax), oax in zip(results, axes_out)]
        return rebuild(py_out, iter(placed))

    return vmapped

