"""Function transforms: vjp, jvp, grad, value_and_grad, checkpoint, custom_function.

A transform calls the function on tracers (identity nodes over the given arrays), so the recorded
graph between the tracers and the outputs is exactly the function's computation. ``vjp`` walks that
graph backwards applying each primitive's ``vjp`` rule, ``jvp`` walks it forwards applying ``jvp``
rules. Rules record ordinary ops, so the result of a transform is itself differentiable (grad of
grad). ``stop_gradient`` nodes end the walk.

Rules live on the primitives (``Primitive.vjp``/``jvp``, set in the module defining each one):

* ``vjp(node, cotangent, argnums) -> [grad for each input index in argnums]`` (None: no gradient);
* ``jvp(node, tangents, argnums) -> tangent of node`` (``tangents`` match ``argnums``).
"""
from __future__ import annotations

from .array import array, make_node
from .registry import api, Primitive, register
from . import dtypes as dt
from .device import resolve_stream

# While positive, the executor keeps the inputs of the nodes it realizes: a function being traced
# may evaluate intermediates, and the walk that follows still needs the graph behind them.
tracing_depth = 0


class _Tracing:
    def __enter__(self):
        global tracing_depth
        tracing_depth += 1

    def __exit__(self, *exc):
        global tracing_depth
        tracing_depth -= 1


def _ops():
    from . import ops

    return ops


def _identity(p: array) -> array:
    from .ops.shape import RESHAPE

    return make_node(RESHAPE, (p,), {"shape": p._shape}, p._shape, p._dtype, p._stream)


def _tracers(primals) -> tuple:
    """(boundaries, tracers): fresh identity nodes over the primals, the walk's boundaries, and the
    nodes the function receives. They are distinct so that a function overwriting an argument in
    place (``x[i] = v``) rewrites what it received, never the boundary."""
    bounds = [_identity(p) for p in primals]
    return bounds, [_identity(b) for b in bounds]


def _is_stop(node: array) -> bool:
    prim = node._prim
    return prim is not None and prim.name == "stop_gradient"


def _tape(outputs, boundary_ids, seed_ids) -> tuple:
    """Nodes between the boundary and ``outputs`` that depend on a seed, in topological order."""
    visited = set(boundary_ids)
    depends = set(seed_ids)
    tape = []
    stack = [(o, False) for o in reversed(outputs)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            if _is_stop(node):
                continue
            for x in node._inputs:
                if id(x) in depends:
                    tape.append(node)
                    depends.add(id(node))
                    break
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for x in reversed(node._inputs):
            if id(x) not in visited:
                stack.append((x, False))
    return tape, depends


def _zeros_like(x: array) -> array:
    return _ops().zeros_like(x)


def _as_outputs(out, tag: str) -> list:
    if isinstance(out, array):
        return [out]
    if isinstance(out, (list, tuple)) and all(isinstance(o, array) for o in out):
        return list(out)
    raise ValueError(f"[{tag}] The function should return an array or a list of arrays; "
                     f"got {type(out).__name__}.")


def _check_arrays(xs, tag: str, what: str) -> list:
    if isinstance(xs, array):
        xs = [xs]
    xs = list(xs)
    for x in xs:
        if not isinstance(x, array):
            raise TypeError(f"[{tag}] {what} must be a list of arrays; got {type(x).__name__}.")
    return xs


def _fmt(shape) -> str:
    return "(" + ",".join(str(s) for s in shape) + ")"


def vjp_flat(fun, primals: list, cotangents: list, argnums=None):
    """Outputs of ``fun(*primals)`` (a list) and the vjps for the primals in ``argnums``."""
    ops = _ops()
    argnums = list(range(len(primals))) if argnums is None else list(argnums)
    tracers, given = _tracers(primals)
    with _Tracing():
        outputs = fun(given)
        pairs = []
        k = 0
        for i, out in enumerate(outputs):
            if _is_stop(out):
                continue
            if k >= len(cotangents):
                raise ValueError(f"[vjp] Number of outputs to compute gradients for ({len(outputs)}) "
                                 f"does not match number of cotangents ({len(cotangents)}).")
            c = cotangents[k]
            if out._shape != c._shape:
                msg = (f"[vjp] Output shape {_fmt(out._shape)} does not match cotangent shape "
                       f"{_fmt(c._shape)}.")
                if len(outputs) == 1 and out.size == 1:
                    msg += " If you are using grad your function must return a scalar."
                raise ValueError(msg)
            pairs.append((out, c))
            k += 1
        seeds = [id(tracers[i]) for i in argnums]
        tape, depends = _tape(outputs, [id(t) for t in tracers], seeds)
        cot: dict = {}
        for out, c in pairs:
            c = ops.astype(c, out._dtype)
            key = id(out)
            cot[key] = ops.add(cot[key], c) if key in cot else c
        for node in reversed(tape):
            c = cot.pop(id(node), None)
            if c is None:
                continue
            inputs = node._inputs
            idx = [i for i, x in enumerate(inputs) if id(x) in depends]
            rule = node._prim.vjp
            if rule is None:
                raise ValueError(f"[{node._prim.name}] Primitive's vjp not implemented.")
            grads = rule(node, c, idx)
            for i, g in zip(idx, grads):
                if g is None:
                    continue
                x = inputs[i]
                if g._dtype is not x._dtype:
                    g = ops.astype(g, x._dtype)
                if g._shape != x._shape:
                    raise RuntimeError(f"[{node._prim.name}] vjp produced shape {g._shape} for an "
                                       f"input of shape {x._shape}")
                key = id(x)
                cot[key] = ops.add(cot[key], g) if key in cot else g
        grads = []
        for i in argnums:
            g = cot.get(id(tracers[i]))
            grads.append(g if g is not None else _zeros_like(primals[i]))
    return outputs, grads


def jvp_flat(fun, primals: list, tangents: list):
    ops = _ops()
    if len(primals) != len(tangents):
        raise ValueError("[jvp] Number of inputs does not match number of tangents.")
    for p, t in zip(primals, tangents):
        if p._shape != t._shape:
            raise ValueError("[jvp] Input shape does not match shape of tangent.")
    tracers, given = _tracers(primals)
    with _Tracing():
        outputs = fun(given)
        ids = [id(t) for t in tracers]
        tape, _ = _tape(outputs, ids, ids)
        tan = {id(tr): t for tr, t in zip(tracers, tangents)}
        for node in tape:
            idx, ts = [], []
            for i, x in enumerate(node._inputs):
                t = tan.get(id(x))
                if t is not None:
                    idx.append(i)
                    ts.append(t)
            rule = node._prim.jvp
            if rule is None:
                raise ValueError(f"[{node._prim.name}] Primitive's jvp not implemented.")
            t = rule(node, ts, idx)
            if t._shape != node._shape:
                t = ops.broadcast_to(t, node._shape)
            tan[id(node)] = t
        out_tangents = [tan.get(id(o)) for o in outputs]
        out_tangents = [t if t is not None else _zeros_like(o) for t, o in zip(out_tangents, outputs)]
    return outputs, out_tangents


@api()
def vjp(fun, primals, cotangents):
    """(outputs, vjps) of ``fun`` at ``primals`` against ``cotangents`` (MLX ``mlx.core.vjp``)."""
    primals = _check_arrays(primals, "vjp", "primals")
    cotangents = _check_arrays(cotangents, "vjp", "cotangents")
    return vjp_flat(lambda xs: _as_outputs(fun(*xs), "vjp"), primals, cotangents)


@api()
def jvp(fun, primals, tangents):
    """(outputs, jvps) of ``fun`` at ``primals`` along ``tangents`` (MLX ``mlx.core.jvp``)."""
    primals = _check_arrays(primals, "jvp", "primals")
    tangents = _check_arrays(tangents, "jvp", "tangents")
    return jvp_flat(lambda xs: _as_outputs(fun(*xs), "jvp"), primals, tangents)


# --- trees of arguments -----------------------------------------------------------------------

def _visit(tree, fn):
    """Call ``fn`` on every leaf of a tree of lists, tuples and dicts."""
    if isinstance(tree, (list, tuple)):
        for x in tree:
            _visit(x, fn)
    elif isinstance(tree, dict):
        for x in tree.values():
            _visit(x, fn)
    else:
        fn(tree)


def _update(tree, fn):
    """Replace every array leaf with ``fn(leaf)``: lists and dicts in place, tuples rebuilt."""
    if isinstance(tree, list):
        for i, x in enumerate(tree):
            tree[i] = _update(x, fn)
        return tree
    if isinstance(tree, tuple):
        items = [_update(x, fn) for x in tree]
        if type(tree) is tuple:
            return tuple(items)
        return type(tree)(*items) if hasattr(tree, "_fields") else type(tree)(items)
    if isinstance(tree, dict):
        for k in list(tree.keys()):
            tree[k] = _update(tree[k], fn)
        return tree
    if isinstance(tree, array):
        return fn(tree)
    return tree


def _unflatten_like(tree, leaves, index: int):
    """``tree`` with its array leaves replaced, in order, by ``leaves[index:]``."""
    pos = [index]

    def rebuild(t):
        if isinstance(t, list):
            return [rebuild(x) for x in t]
        if isinstance(t, tuple):
            items = [rebuild(x) for x in t]
            if type(t) is tuple:
                return tuple(items)
            return type(t)(*items) if hasattr(t, "_fields") else type(t)(items)
        if isinstance(t, dict):
            return {k: rebuild(v) for k, v in t.items()}
        if isinstance(t, array):
            v = leaves[pos[0]]
            pos[0] += 1
            return v
        return t

    return rebuild(tree)


def _flat_arrays(tree) -> list:
    out = []
    _visit(tree, lambda x: out.append(x) if isinstance(x, array) else None)
    return out


def _argnums_argnames(argnums, argnames):
    if isinstance(argnames, str):
        names = [argnames]
    else:
        names = list(argnames)
        for n in names:
            if not isinstance(n, str):
                raise TypeError("argnames must be a string or a sequence of strings.")
    if argnums is None:
        return ([] if names else [0]), names
    if isinstance(argnums, bool) or not isinstance(argnums, (int, list, tuple)):
        raise TypeError("argnums must be an int or a sequence of ints.")
    nums = [argnums] if isinstance(argnums, int) else list(argnums)
    for n in nums:
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError("argnums must be an int or a sequence of ints.")
    return nums, names


def _value_and_grad(fun, argnums, argnames, tag: str, scalar_only: bool):
    nums, names = _argnums_argnames(argnums, argnames)
    if not nums and not names:
        raise ValueError(f"{tag} Gradient wrt no argument requested")
    nums = sorted(nums)
    if nums:
        if nums[0] < 0:
            raise ValueError(f"{tag} Can't compute the gradient of negative argument index {nums[0]}")
        for a, b in zip(nums, nums[1:]):
            if a == b:
                raise ValueError(f"{tag} Duplicate argument index {nums[0]} is not allowed.")
    name_set = set(names)

    def wrapped(*args, **kwargs):
        if nums and nums[-1] >= len(args):
            raise ValueError(f"{tag} Can't compute the gradient of argument index {nums[-1]} because "
                             f"the function is called with only {len(args)} positional arguments.")
        for k in names:
            if k not in kwargs:
                raise ValueError(f"{tag} Can't compute the gradient of keyword argument '{k}' because "
                                 "the function is called with the following keyword arguments {"
                                 + "".join(f"{key}," for key in kwargs) + "}")
        arrays = []
        counts = [0]
        grad_idx = []

        def collect(tree, strict):
            start = len(arrays)

            def leaf(x):
                if isinstance(x, array):
                    arrays.append(x)
                elif strict:
                    raise ValueError("[tree_flatten] The argument should contain only arrays")
            _visit(tree, leaf)
            if strict:
                grad_idx.extend(range(start, len(arrays)))
                counts.append(len(arrays) - start)

        num_set = set(nums)
        for i, a in enumerate(args):
            collect(a, i in num_set)
        for k, v in kwargs.items():
            collect(v, k in name_set)
        if not grad_idx:
            # MLX's core value_and_grad refuses an empty set of arrays (so both transforms say "[grad]").
            raise ValueError("[grad] Must specify at least one argument.")
        offsets = [0]
        for c in counts[1:]:
            offsets.append(offsets[-1] + c)

        holder = {}

        def flat_fun(tracers):
            tree = [args, kwargs]
            pos = [0]

            def fill(_):
                t = tracers[pos[0]]
                pos[0] += 1
                return t
            tree = _update(tree, fill)
            out = fun(*tree[0], **tree[1])
            pos[0] = 0

            def restore(x):
                i = pos[0]
                pos[0] += 1
                return arrays[i] if i < len(tracers) and x is tracers[i] else x
            _update(tree, restore)
            if not isinstance(out, array):
                if scalar_only:
                    raise ValueError(f"{tag} The return value of the function whose gradient we want to "
                                     f"compute should be a scalar array; but {type(out).__name__} "
                                     "was returned.")
                if not isinstance(out, tuple):
                    raise ValueError(
                        f"{tag} The return value of the function whose gradient we want to compute "
                        "should be either a scalar array or a tuple with the first value being a "
                        "scalar array (Union[array, tuple[array, Any, ...]]); but "
                        f"{type(out).__name__} was returned.")
                if not out:
                    raise ValueError(
                        f"{tag} The return value of the function whose gradient we want to compute "
                        "should be either a scalar array or a non-empty tuple. The first value should "
                        "be a scalar array and the rest can be anything. Instead, we got an empty "
                        "tuple.")
                if not isinstance(out[0], array):
                    raise ValueError(
                        f"{tag} The return value of the function whose gradient we want to compute "
                        "should be either a scalar array or a tuple with the first value being a "
                        "scalar array (Union[array, tuple[array, Any, ...]]); but it was a tuple with "
                        f"the first value being of type {type(out[0]).__name__} .")
            holder["out"] = out
            flat = _flat_arrays(out)
            return [flat[0]] + [_ops().stop_gradient(o) for o in flat[1:]]

        one = array(1.0)
        outputs, grads = vjp_flat(flat_fun, arrays, [one], grad_idx)
        # The stop_gradient wrappers of the auxiliary outputs are not what the function returned.
        value = _unflatten_like(holder["out"], _flat_arrays(holder["out"]), 0)
        if len(nums) == 1:
            positional = _unflatten_like(args[nums[0]], grads, 0)
        elif nums:
            positional = tuple(_unflatten_like(args[n], grads, offsets[i]) for i, n in enumerate(nums))
        else:
            positional = None
        if not names:
            return value, positional
        keyword = {}
        i = len(nums)
        for k, v in kwargs.items():
            if k in name_set:
                keyword[k] = _unflatten_like(v, grads, offsets[i])
                i += 1
        return value, (positional, keyword)

    return wrapped


def _named(wrapper, fun):
    for attr in ("__name__", "__qualname__", "__doc__", "__module__"):
        try:
            setattr(wrapper, attr, getattr(fun, attr))
        except (AttributeError, TypeError):
            pass
    wrapper.__wrapped__ = fun
    return wrapper


@api()
def value_and_grad(fun, argnums=None, argnames=[]):  # noqa: B006 (MLX's signature)
    """A function returning ``(fun(...), gradients)`` (MLX ``mlx.core.value_and_grad``)."""
    return _named(_value_and_grad(fun, argnums, argnames, "[value_and_grad]", False), fun)


@api()
def grad(fun, argnums=None, argnames=[]):  # noqa: B006 (MLX's signature)
    """A function returning the gradient of scalar-valued ``fun`` (MLX ``mlx.core.grad``)."""
    vg = _value_and_grad(fun, argnums, argnames, "[grad]", True)

    def grad_fn(*args, **kwargs):
        return vg(*args, **kwargs)[1]

    return _named(grad_fn, fun)


# --- custom transforms ---------------------------------------------------------------------------

def _custom_ref(p, *inputs):
    return inputs[p["spec"].n_inputs + p["output"]]


# One node per output of a custom function. Its inputs are the function's array arguments followed
# by its (gradient-stopped) outputs, so evaluation just forwards the output it stands for.
CUSTOM = register(Primitive("custom_transforms", "kernel", _custom_ref, compute=False,
                            doc="An output of a function with custom vjp/jvp/vmap rules."))


def _custom_vjp(node, cot, argnums):
    p = node._params
    spec = p["spec"]
    n_in = spec.n_inputs
    primals = list(node._inputs[:n_in])
    outputs = list(node._inputs[n_in:])
    cots = [cot if i == p["output"] else _zeros_like(o) for i, o in enumerate(outputs)]
    grads = spec.vjp(primals, cots, outputs)
    return [grads[i] if i < n_in else None for i in argnums]


def _custom_jvp(node, tangents, argnums):
    p = node._params
    spec = p["spec"]
    n_in = spec.n_inputs
    primals = list(node._inputs[:n_in])
    keep = [(i, t) for i, t in zip(argnums, tangents) if i < n_in]
    outs = spec.jvp(primals, [t for _, t in keep], [i for i, _ in keep])
    return outs[p["output"]]


def _custom_vmap(node, xs, axes, size):
    """The user's vmap rule when there is one; otherwise the function is mapped over the batch."""
    p = node._params
    spec = p["spec"]
    if spec.vmap is None:
        from .vmap import map_rule

        return map_rule(node, xs, axes, size)
    n_in = spec.n_inputs
    outs, out_axes = spec.vmap(xs[:n_in], [-1 if ax is None else ax for ax in axes[:n_in]])
    i = p["output"]
    return outs[i], (None if out_axes[i] < 0 else out_axes[i])


CUSTOM.vjp = _custom_vjp
CUSTOM.jvp = _custom_jvp
CUSTOM.extra["vmap"] = _custom_vmap


class _CustomSpec:
    """The rules of one call of a custom function (over flat lists of arrays)."""

    __slots__ = ("n_inputs", "vjp", "jvp", "vmap", "__weakref__")  # weakly in structural keys (codegen.lower)

    def __init__(self, n_inputs, vjp_rule, jvp_rule, vmap_rule):
        self.n_inputs, self.vjp, self.jvp, self.vmap = n_inputs, vjp_rule, jvp_rule, vmap_rule


def custom_outputs(fun, inputs: list, vjp_rule=None, jvp_rule=None, vmap_rule=None) -> list:
    """``fun(inputs)`` (flat lists) as nodes whose transforms are the given rules (defaults: fun's)."""
    ops = _ops()
    outputs = [ops.stop_gradient(o) for o in fun(inputs)]
    if vjp_rule is None:
        def vjp_rule(primals, cotangents, outs):
            return vjp_flat(fun, primals, cotangents)[1]
    if jvp_rule is None:
        def jvp_rule(primals, tangents, argnums):
            full = [_zeros_like(p) for p in primals]
            for i, t in zip(argnums, tangents):
                full[i] = t
            return jvp_flat(fun, primals, full)[1]
    spec = _CustomSpec(len(inputs), vjp_rule, jvp_rule, vmap_rule)
    ins = tuple(inputs) + tuple(outputs)
    stream = outputs[0]._stream if outputs else resolve_stream(None)
    return [make_node(CUSTOM, ins, {"output": i, "spec": spec}, o._shape, o._dtype, stream)
            for i, o in enumerate(outputs)]


def _flatten_structure(tree):
    leaves = _flat_arrays(tree)
    return leaves, tree


class custom_function:
    """A function whose vjp, jvp and vmap can be replaced (MLX ``mlx.core.custom_function``)."""

    def __init__(self, f):
        self._fun = f
        self._vjp = None
        self._jvp = None
        self._vmap = None
        for attr in ("__name__", "__qualname__", "__doc__", "__module__"):
            try:
                setattr(self, attr, getattr(f, attr))
            except (AttributeError, TypeError):
                pass

    def vjp(self, f):
        self._vjp = f
        return self

    def jvp(self, f):
        self._jvp = f
        return self

    def vmap(self, f):
        self._vmap = f
        return self

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        import functools

        return functools.partial(self.__call__, obj)

    def __call__(self, *args, **kwargs):
        if self._vjp is None and self._jvp is None and self._vmap is None:
            return self._fun(*args, **kwargs)
        structure = (args, kwargs)
        inputs = _flat_arrays(structure)
        out_structure = {}

        def rebuild_inputs(xs):
            return _unflatten_like(structure, xs, 0)

        def flat_fun(xs):
            a, kw = rebuild_inputs(xs)
            out = self._fun(*a, **kw)
            out_structure["tree"] = out
            return _flat_arrays(out)

        vjp_rule = jvp_rule = vmap_rule = None
        if self._vjp is not None:
            user_vjp = self._vjp

            def vjp_rule(primals, cotangents, outputs):
                a, kw = rebuild_inputs(primals)
                tree = out_structure["tree"]
                c = _unflatten_like(tree, cotangents, 0)
                o = _unflatten_like(tree, outputs, 0)
                res = user_vjp(a[0] if len(a) == 1 else a, c, o, **kw)
                return _flat_arrays(res if not isinstance(res, array) else [res])
        if self._jvp is not None:
            user_jvp = self._jvp

            def jvp_rule(primals, tangents, argnums):
                a, kw = rebuild_inputs(primals)
                if kw:
                    raise ValueError("[custom jvp] Function should only accept positional arguments")
                full = [None] * len(primals)  # the tangent of each flat input, None where none is given
                for i, tangent in zip(argnums, tangents):
                    full[i] = tangent
                t = rebuild_inputs(full)[0]  # a structure of its own: the primals' dicts stay as they are
                res = user_jvp(a[0], t[0]) if len(a) == 1 else user_jvp(tuple(a), tuple(t))
                return _flat_arrays(res if not isinstance(res, array) else [res])
        if self._vmap is not None:
            user_vmap = self._vmap

            def vmap_rule(xs, axes):
                a, kw = rebuild_inputs(xs)
                if kw:
                    raise ValueError("[custom vmap] Function should only accept positional arguments")
                new_axes = rebuild_inputs([None if x is None or x < 0 else x for x in axes])[0]
                res = user_vmap(a[0], new_axes[0]) if len(a) == 1 else user_vmap(tuple(a), tuple(new_axes))
                if not isinstance(res, tuple) or len(res) != 2:
                    raise ValueError("[custom vmap] Vmap function should return a tuple with 2 items.")
                outs, out_axes = [], []

                def pair(o, x):
                    if isinstance(o, array):
                        outs.append(o)
                        out_axes.append(-1 if x is None else int(x))
                _visit_pairs(res[0], res[1], pair)
                return outs, out_axes

        flat = custom_outputs(flat_fun, inputs, vjp_rule, jvp_rule, vmap_rule)
        return _unflatten_like(out_structure["tree"], flat, 0)


def _visit_pairs(tree, other, fn):
    if isinstance(tree, (list, tuple)):
        for i, x in enumerate(tree):
            _visit_pairs(x, other[i] if isinstance(other, (list, tuple)) else other, fn)
    elif isinstance(tree, dict):
        for k, x in tree.items():
            _visit_pairs(x, other[k] if isinstance(other, dict) else other, fn)
    else:
        fn(tree, other)


api("custom_function")(custom_function)


@api()
def checkpoint(fun):
    """``fun``, recomputed during the backward pass instead of kept (MLX ``mlx.core.checkpoint``)."""

    def checkpointed(*args, **kwargs):
        structure = (args, kwargs)
        inputs = _flat_arrays(structure)
        out_structure = {}

        def flat_fun(xs):
            a, kw = _unflatten_like(structure, xs, 0)
            out = fun(*a, **kw)
            out_structure["tree"] = out
            return _flat_arrays(out)

        def vjp_rule(primals, cotangents, outputs):
            from .ops.misc import depends

            return vjp_flat(flat_fun, depends(primals, outputs), cotangents)[1]

        flat = custom_outputs(flat_fun, inputs, vjp_rule)
        return _unflatten_like(out_structure["tree"], flat, 0)

    return _named(checkpointed, fun)
