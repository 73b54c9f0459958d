"""Fusion: cut the execution order of one eval into kernels and nodes the numpy executor runs.

A node is *materialized* (gets a buffer) when something outside one kernel needs it: it is an output
or the user holds it (a reference from outside the graph), more than one node consumes it, it is a
reduction, or a node only numpy can run reads it. Every other elementwise or view node is folded into
the kernel of its consumer: elementwise chains fuse through views and broadcasts, and a reduction
takes its elementwise producers as a prologue. Intermediates that stay inside a kernel are never
allocated. A view of a materialized buffer stays a numpy view (no kernel, no copy).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

from .lower import EPILOGUES, PORTABLE, classify, params_token


MAX_DEPTH = 128


@dataclass
class Step:
    kind: str  # 'kernel' or 'numpy'
    node: object


def _uses(nodes) -> tuple:
    """Distinct consumers per node, and references held by consumers' input tuples."""
    consumers: dict = {}
    refs: dict = {}
    for n in nodes:
        seen = set()
        for i in n._inputs:
            k = id(i)
            refs[k] = refs.get(k, 0) + 1
            if k not in seen:
                seen.add(k)
                consumers[k] = consumers.get(k, 0) + 1
    return consumers, refs


def _observed(nodes, refs: dict, held_by_caller: int) -> set:
    """Nodes referenced from outside the graph (the user, the eval's outputs). ``getrefcount`` sees
    the consumers' input tuples, ``nodes``, the loop variable, its own argument, and whatever the
    caller holds besides ``nodes``; anything more is an outside reference."""
    base = 3 + held_by_caller
    return {id(n) for n in nodes if sys.getrefcount(n) - base > refs.get(id(n), 0)}


# Primitives a *loose* key describes by their kind, dtype, rank and inputs alone, leaving out their params
# and shape: the slices an uncompiled decode step takes of a growing KV cache (``cache[..., :n, :]``) and
# its update at the position (``cache[..., n - 1:n, :] = kv``) change every step and nothing else does.
# An executor replays a plan recorded under a loose key only where every step touching such a node reads
# its params and shapes when it runs (``LLVMExecutor``'s dynamic calls).
LOOSE = frozenset({"strided_slice", "slice_update"})


def loosened(key: tuple, swaps: list) -> tuple:
    """``key`` (a ``signature`` key) with the loose entries ``swaps`` (from ``signature``) in place."""
    out = list(key)
    for at, entry in swaps:
        out[at] = entry
    return tuple(out)


def signature(nodes: list, held_by_caller: int = 0, swaps: list | None = None) -> tuple:
    """(key, leaves, counted) of one eval's ``nodes`` (topologically ordered, all unrealized).

    ``key`` is hashable and equal for two evals exactly when ``plan`` and lowering treat them
    alike: per node its primitive, params, shape, dtype and inputs (earlier nodes by position,
    realized buffers by first use), per realized buffer its shape, strides and dtype, and which
    nodes something outside the graph holds, and which leaves nothing outside it holds (``free``).
    ``leaves`` are those realized inputs in that order, so a plan recorded for one eval runs on
    another's buffers. ``counted`` is (input references per position, positions read twice by one
    consumer, observed positions, references per leaf from the nodes, free leaves); ``uses`` turns
    it into what ``plan`` needs besides the nodes, and an executor may donate a free leaf's buffer
    to the last kernel reading it (as MLX donates a dying input's buffer).
    ``held_by_caller`` counts the caller's own references to each node besides ``nodes``.
    ``swaps``, when a list, receives (position in ``key``, loose entry) per node of a ``LOOSE``
    primitive: ``loosened(key, swaps)`` is the eval's loose key.
    It runs on every eval, so it walks the graph once and counts per position, not per id."""
    position: dict = {}  # id -> position of a node (from 0 up) or of a leaf (from -1 down)
    leaves: list = []
    key: list = []
    refs = [0] * len(nodes)  # references from consumers' input tuples, per node
    leaf_refs: list = []  # the same per leaf
    repeats = []  # positions a consumer reads more than once (one consumer, several references)
    at, add = position.get, key.append  # the loop below runs per node of every eval
    for i, n in enumerate(nodes):
        ins = []
        for x in n._inputs:
            j = at(id(x))
            if j is None:  # a realized buffer read first: numbered from -1 down, in order of first use
                j = position[id(x)] = -1 - len(leaves)
                leaves.append(x)
                leaf_refs.append(1)
                add((x._shape, x._data.strides, x._dtype.name))
            elif j < 0:
                leaf_refs[-1 - j] += 1
            else:
                refs[j] += 1
            ins.append(j)
        if len(ins) > 1 and (ins[0] == ins[1] if len(ins) == 2 else len(set(ins)) < len(ins)):
            repeats.extend(j for j in set(ins) if j >= 0 for _ in range(ins.count(j) - 1))
        position[id(n)] = i
        name = n._prim.name
        if swaps is not None and name in LOOSE:
            swaps.append((len(key), (name, None, len(n._shape), n._dtype.name, tuple(ins))))
        p = n._params  # None for most elementwise nodes: no token to look up
        add((name, None if p is None else params_token(p), n._shape, n._dtype.name, tuple(ins)))
    n = x = p = None  # the loop variables would count as references from outside
    base = 3 + held_by_caller  # as in _observed: the list, the loop variable, getrefcount's argument
    observed = []
    i = 0
    for n in nodes:
        if sys.getrefcount(n) - base > refs[i]:
            observed.append(i)
        i += 1
    n = None
    key.append(tuple(observed))
    # a leaf is held by the consumers' input tuples, ``leaves``, the loop variable and getrefcount's
    # argument; anything more (the user, a compiled function's constants) keeps its buffer visible
    free = []
    i = 0
    for x in leaves:
        if sys.getrefcount(x) - 3 == leaf_refs[i]:
            free.append(i)
        i += 1
    x = None
    key.append(tuple(free))
    return tuple(key), leaves, (refs, repeats, observed, leaf_refs, free)


class Structure:
    """A ``signature`` key with its hash computed once, as executors keep recorded evals under it:
    hashing a decode step's key (a thousand nested tuples) costs about a millisecond, and a dict looks
    it up, then stores it again as the most recently used."""
    __slots__ = ("key", "hash")

    def __init__(self, key: tuple):
        self.key = key
        self.hash = hash(key)

    def __hash__(self) -> int:
        return self.hash

    def __eq__(self, other) -> bool:
        return self.hash == other.hash and self.key == other.key


def uses(nodes: list, counted: tuple) -> tuple:
    """What ``plan`` reads besides the nodes, from ``signature``'s third result (per position, as
    a replay never needs it): (distinct consumers per node id, ids of observed nodes)."""
    refs, repeats, observed = counted[:3]
    consumers = refs.copy()
    for j in repeats:
        consumers[j] -= 1
    return {id(n): c for n, c in zip(nodes, consumers)}, {id(nodes[i]) for i in observed}


def plan(nodes: list, held_by_caller: int = 0, caps=PORTABLE, uses_: tuple | None = None) -> list:
    """The steps that realize ``nodes`` (topologically ordered, all unrealized); ``caps`` is what
    the backend's renderer covers (``lower.PORTABLE`` or ``lower.EVERYTHING``); ``uses_``, when
    given, is ``uses(nodes, signature(nodes, held_by_caller)[2])``, computed by the caller."""
    if uses_ is None:
        consumers, refs = _uses(nodes)
        observed = _observed(nodes, refs, held_by_caller)
    else:
        consumers, observed = uses_
    kinds = {id(n): classify(n, caps) for n in nodes}
    materialized = set()
    shared_views = []
    for n in nodes:
        k = id(n)
        kind = kinds[k]
        if kind is None:
            materialized.add(k)
            for i in n._inputs:
                if i._data is None:
                    materialized.add(id(i))
        elif kind == "reduce" or k in observed or consumers.get(k, 0) == 0:
            materialized.add(k)
        elif consumers[k] > 1:
            if kind == "view":
                shared_views.append(n)
            else:
                materialized.add(k)
    # A view read by several kernels is free to repeat when it only re-indexes a buffer.
    for n in shared_views:
        if not _views_a_buffer(n, materialized, kinds):
            materialized.add(id(n))
    # A materialized view of a buffer runs on numpy, which needs every view below it realized too
    # (they are views as well, so this costs no copies).
    for n in nodes:
        if id(n) in materialized and kinds[id(n)] == "view" and _views_a_buffer(n, materialized, kinds):
            src = n._inputs[0]
            while src._data is None and id(src) not in materialized:
                materialized.add(id(src))
                src = src._inputs[0]
    # Very long chains are cut into kernels of bounded depth (lowering walks a kernel recursively).
    depth: dict = {}
    for n in nodes:
        k = id(n)
        d = 1 + max((depth.get(id(i), 0) for i in n._inputs), default=0)
        if d > MAX_DEPTH:
            materialized.add(k)
        depth[k] = 0 if k in materialized else d
    if EPILOGUES in caps[0]:
        absorb_reductions(nodes, kinds, materialized, consumers, observed)
    steps = []
    for n in nodes:
        k = id(n)
        if k not in materialized:
            continue
        kind = kinds[k]
        if kind is None or (kind == "view" and _views_a_buffer(n, materialized, kinds)):
            steps.append(Step("numpy", n))
        else:
            steps.append(Step("kernel", n))
    return steps


_EPILOGUE_REDUCTIONS = frozenset({"sum", "prod", "max", "min", "all", "any", "matmul"})


def absorb_reductions(nodes, kinds: dict, materialized: set, consumers: dict, observed: set) -> None:
    """Fold a reduction into the kernel of its elementwise consumers (mean's scaling, a norm's
    sqrt): it stays unmaterialized when its one consumer is elementwise over the same shape and
    reaches the kernel's root through such nodes only, one reduction per kernel."""
    candidates = {}
    for n in nodes:
        for i in n._inputs:
            k = id(i)
            if kinds.get(k) == "reduce" and i._prim.name in _EPILOGUE_REDUCTIONS and k not in observed \
                    and consumers.get(k) == 1 and kinds[id(n)] == "elementwise" and n._shape == i._shape:
                candidates[k] = i
    if not candidates:
        return
    materialized.difference_update(candidates)
    taken = set()
    for root in nodes:
        if id(root) not in materialized or kinds[id(root)] != "elementwise":
            continue
        have = False
        stack = [(root, True)]
        seen = set()
        while stack:
            node, clean = stack.pop()
            for i in node._inputs:
                k = id(i)
                if i._data is not None or k in materialized or k in seen:
                    continue
                seen.add(k)
                if k in candidates:
                    if clean and not have:
                        have = True
                        taken.add(k)
                    else:
                        materialized.add(k)
                    continue
                stack.append((i, clean and kinds[k] == "elementwise" and i._shape == root._shape))
    for k in candidates:
        if k not in taken:
            materialized.add(k)


def _views_a_buffer(node, materialized: set, kinds: dict) -> bool:
    """Whether ``node`` is views all the way down to a buffer (realized or materialized)."""
    src = node._inputs[0]
    while src._data is None and id(src) not in materialized and kinds.get(id(src)) == "view":
        src = src._inputs[0]
    return src._data is not None or id(src) in materialized
