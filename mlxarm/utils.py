"""MLX's ``mlx.utils``: functions over Python trees (nested lists, tuples and dicts of leaves).

A tree's containers are ``list``, ``tuple`` (named tuples keep their type) and ``dict`` (subclasses,
such as ``nn.Module``, are walked as dicts and rebuilt as plain dicts); anything else is a leaf unless
``is_leaf`` says so first. Flat forms name each leaf by its dotted path, e.g. ``"layers.0.weight"``.
"""
from __future__ import annotations

from itertools import zip_longest
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

__all__ = ["tree_flatten", "tree_unflatten", "tree_map", "tree_map_with_path", "tree_reduce",
           "tree_merge"]


def _rebuild(sequence, children):
    """A list/tuple of ``sequence``'s type from ``children`` (named tuples take positional fields)."""
    kind = type(sequence)
    return kind(*children) if hasattr(sequence, "_fields") else kind(children)


def tree_map(fn: Callable, tree: Any, *rest: Any, is_leaf: Optional[Callable] = None) -> Any:
    """Apply ``fn`` to every leaf of ``tree`` and return a tree of the results.

    Each tree in ``rest`` must contain ``tree``'s structure; its matching leaves (or subtrees) are
    passed to ``fn`` as extra positional arguments.
    """
    if is_leaf is not None and is_leaf(tree):
        return fn(tree, *rest)
    if isinstance(tree, (list, tuple)):
        return _rebuild(tree, [tree_map(fn, child, *(r[i] for r in rest), is_leaf=is_leaf)
                               for i, child in enumerate(tree)])
    if isinstance(tree, dict):
        return {k: tree_map(fn, child, *(r[k] for r in rest), is_leaf=is_leaf)
                for k, child in tree.items()}
    return fn(tree, *rest)


def tree_map_with_path(fn: Callable, tree: Any, *rest: Any, is_leaf: Optional[Callable] = None,
                       path: Optional[Any] = None) -> Any:
    """Like ``tree_map`` but ``fn(path, leaf, *rest_leaves)`` also receives the leaf's dotted path.

    ``path`` prefixes every path (the root leaf's path is ``path`` itself, ``None`` by default).
    """
    if is_leaf is not None and is_leaf(tree):
        return fn(path, tree, *rest)
    if isinstance(tree, (list, tuple)):
        head = f"{path}." if path else ""
        return _rebuild(tree, [
            tree_map_with_path(fn, child, *(r[i] for r in rest), is_leaf=is_leaf, path=f"{head}{i}")
            for i, child in enumerate(tree)])
    if isinstance(tree, dict):
        head = f"{path}." if path else ""
        return {k: tree_map_with_path(fn, child, *(r[k] for r in rest), is_leaf=is_leaf,
                                      path=f"{head}{k}")
                for k, child in tree.items()}
    return fn(path, tree, *rest)


def _flatten_into(tree, prefix, is_leaf, add):
    if is_leaf is not None and is_leaf(tree):
        add(prefix[1:], tree)
    elif isinstance(tree, (list, tuple)):
        for i, child in enumerate(tree):
            _flatten_into(child, f"{prefix}.{i}", is_leaf, add)
    elif isinstance(tree, dict):
        for k, child in tree.items():
            _flatten_into(child, f"{prefix}.{k}", is_leaf, add)
    else:
        add(prefix[1:], tree)


def tree_flatten(tree: Any, prefix: str = "", is_leaf: Optional[Callable] = None,
                 destination: Optional[Union[List[Tuple[str, Any]], Dict[str, Any]]] = None
                 ) -> Union[List[Tuple[str, Any]], Dict[str, Any]]:
    """The leaves of ``tree`` as ``(dotted_path, leaf)`` pairs, in traversal order.

    ``prefix``'s first character is dropped (it stands for the separator), so ``prefix=".x"`` names
    leaves ``"x.0"``, .... ``destination`` (a list or a dict) receives the pairs and is returned.
    """
    if destination is None:
        destination = []
    if isinstance(destination, list):
        _flatten_into(tree, prefix, is_leaf, lambda k, v: destination.append((k, v)))
    elif isinstance(destination, dict):
        _flatten_into(tree, prefix, is_leaf, destination.__setitem__)
    else:
        raise ValueError("Destination should be either a list or a dictionary or None")
    return destination


def tree_unflatten(tree: Union[List[Tuple[str, Any]], Dict[str, Any]]) -> Any:
    """Rebuild a tree from its flat form (``tree_flatten``'s pairs, or a dict of path -> leaf).

    A level whose keys are all distinct integers becomes a list (gaps filled with ``{}``);
    any other level becomes a dict.
    """
    pairs = list(tree.items()) if isinstance(tree, dict) else list(tree)
    if len(pairs) == 1 and pairs[0][0] == "":
        return pairs[0][1]

    groups: dict = {}
    for key, value in pairs:
        head, _, tail = key.partition(".")
        groups.setdefault(head, []).append((tail, value))

    try:
        positions = {int(head): head for head in groups}
    except ValueError:
        positions = None
    # "1" and "01" are distinct keys with one integer value: that level is a dict.
    if positions is None or len(positions) != len(groups):
        return {head: tree_unflatten(sub) for head, sub in groups.items()}

    out = []
    for index, head in sorted(positions.items()):
        out.extend({} for _ in range(index - len(out)))
        out.append(tree_unflatten(groups[head]))
    return out


def tree_reduce(fn, tree, initializer=None, is_leaf=None):
    """Fold ``fn(accumulator, leaf)`` over the leaves in order; without ``initializer`` the first
    leaf starts the accumulation."""
    if is_leaf is not None and is_leaf(tree):
        return tree if initializer is None else fn(initializer, tree)
    if isinstance(tree, (list, tuple, dict)):
        accumulator = initializer
        for child in (tree.values() if isinstance(tree, dict) else tree):
            accumulator = tree_reduce(fn, child, accumulator, is_leaf)
        return accumulator
    return tree if initializer is None else fn(initializer, tree)


def _is_empty_container(x):
    return isinstance(x, (dict, list, tuple)) and len(x) == 0


def tree_merge(tree_a, tree_b, merge_fn=None):
    """A deep ``dict.update``: one tree holding the leaves of both.

    Empty containers and ``None`` count as absent subtrees. Where both trees hold a leaf at the
    same place, ``merge_fn(leaf_a, leaf_b)`` decides (an error without one).
    """
    empty_a, empty_b = _is_empty_container(tree_a), _is_empty_container(tree_b)
    if empty_a and empty_b:
        if type(tree_a) is not type(tree_b):
            raise ValueError(f"Cannot merge {type(tree_a).__name__} with {type(tree_b).__name__}")
        return type(tree_a)()
    if empty_a:
        tree_a = None
    if empty_b:
        tree_b = None
    if tree_a is None and tree_b is not None:
        return tree_b
    if tree_b is None and tree_a is not None:
        return tree_a

    if isinstance(tree_a, (list, tuple)) and isinstance(tree_b, (list, tuple)):
        return _rebuild(tree_a, [tree_merge(a, b, merge_fn) for a, b in zip_longest(tree_a, tree_b)])
    if isinstance(tree_a, dict) and isinstance(tree_b, dict):
        keys = list(tree_a) + [k for k in tree_b if k not in tree_a]
        return {k: tree_merge(tree_a.get(k), tree_b.get(k), merge_fn) for k in keys}
    if merge_fn is None:
        raise ValueError("Trees contain elements at the same locations but no merge function "
                         "was provided")
    return merge_fn(tree_a, tree_b)
