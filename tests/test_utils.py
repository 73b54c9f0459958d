"""mlxarm.utils against MLX's mlx.utils on nested dict/list/tuple trees."""
from collections import namedtuple

import pytest

from mlxarm import utils as ours



@pytest.fixture
def real():
    return pytest.importorskip("mlx.utils")


Point = namedtuple("Point", ["x", "y"])

TREES = [
    1,
    [],
    {},
    [[[0]]],
    (1, (2, 3), [4, {"a": 5}]),
    {"model": [{"w": 0, "b": 1}, {"w": 2, "b": 3}], "opt": {"step": 7, "lr": (0.1, 0.2)}},
    {"p": Point(1, [2, 3]), "q": None, "e": [], "d": {}},
    {"layers": [{"w": [1, 2]}, {"w": [3, 4]}], "b": 5},
]

NAMES = ["tree_flatten", "tree_unflatten", "tree_map", "tree_map_with_path", "tree_reduce",
         "tree_merge"]


@pytest.mark.mlx
def test_public_names_match(real):
    for name in NAMES:
        assert callable(getattr(ours, name))
    public_real = {n for n in dir(real) if n.startswith("tree_")}
    assert public_real == set(NAMES)


@pytest.mark.mlx
@pytest.mark.parametrize("tree", TREES)
@pytest.mark.parametrize("prefix", ["", ".x", "ab"])
def test_flatten(real, tree, prefix):
    assert ours.tree_flatten(tree, prefix) == real.tree_flatten(tree, prefix)
    assert ours.tree_flatten(tree, prefix, destination={}) == real.tree_flatten(
        tree, prefix, destination={})


@pytest.mark.mlx
@pytest.mark.parametrize("tree", TREES)
def test_flatten_is_leaf(real, tree):
    is_leaf = lambda x: isinstance(x, (list, Point)) and len(x) == 2  # noqa: E731
    assert ours.tree_flatten(tree, is_leaf=is_leaf) == real.tree_flatten(tree, is_leaf=is_leaf)


@pytest.mark.mlx
def test_flatten_destination_appends_and_rejects_other_types(real):
    dest = [("pre", 0)]
    out = ours.tree_flatten({"a": 1}, destination=dest)
    assert out is dest and dest == [("pre", 0), ("a", 1)]
    with pytest.raises(ValueError) as e_ours:
        ours.tree_flatten({"a": 1}, destination=set())
    with pytest.raises(ValueError) as e_real:
        real.tree_flatten({"a": 1}, destination=set())
    assert str(e_ours.value) == str(e_real.value)


@pytest.mark.mlx
@pytest.mark.parametrize("flat", [
    [("hello.world", 42)],
    {"hello.world": 42},
    [("", 3)],
    [("0", 1), ("2", 3)],
    [("1", "a"), ("01", "b")],
    [("a.0.b", 1), ("a.0.c", 2), ("a.1", 3), ("d", 4)],
    [("x.10", 1), ("x.2", 2)],
    [],
])
def test_unflatten(real, flat):
    assert ours.tree_unflatten(flat) == real.tree_unflatten(flat)


@pytest.mark.mlx
@pytest.mark.parametrize("tree", TREES)
def test_flatten_roundtrip(real, tree):
    flat = ours.tree_flatten(tree)
    if flat:
        assert ours.tree_unflatten(flat) == real.tree_unflatten(flat)


@pytest.mark.mlx
@pytest.mark.parametrize("tree", TREES)
def test_map(real, tree):
    fn = lambda x: None if x is None else (x, "leaf")  # noqa: E731
    got, want = ours.tree_map(fn, tree), real.tree_map(fn, tree)
    assert got == want and type(got) is type(want)
    is_leaf = lambda x: isinstance(x, tuple)  # noqa: E731
    assert ours.tree_map(repr, tree, is_leaf=is_leaf) == real.tree_map(repr, tree, is_leaf=is_leaf)


@pytest.mark.mlx
def test_map_rest_and_namedtuple(real):
    a = {"w": [1, 2], "p": Point(3, 4)}
    b = {"w": [10, 20], "p": Point(30, 40), "extra": 0}
    add = lambda x, y: x + y  # noqa: E731
    got, want = ours.tree_map(add, a, b), real.tree_map(add, a, b)
    assert got == want and type(got["p"]) is Point


@pytest.mark.mlx
@pytest.mark.parametrize("tree", TREES)
@pytest.mark.parametrize("path", [None, "root"])
def test_map_with_path(real, tree, path):
    fn = lambda p, x: (p, x)  # noqa: E731
    assert ours.tree_map_with_path(fn, tree, path=path) == real.tree_map_with_path(fn, tree, path=path)
    is_leaf = lambda x: isinstance(x, dict)  # noqa: E731
    assert ours.tree_map_with_path(fn, tree, is_leaf=is_leaf) == real.tree_map_with_path(
        fn, tree, is_leaf=is_leaf)


@pytest.mark.mlx
def test_map_with_path_rest(real):
    a, b = [1, {"k": 2}], [3, {"k": 4}]
    fn = lambda p, x, y: f"{p}:{x + y}"  # noqa: E731
    assert ours.tree_map_with_path(fn, a, b) == real.tree_map_with_path(fn, a, b)


@pytest.mark.mlx
@pytest.mark.parametrize("tree", [t for t in TREES if t is not None])
@pytest.mark.parametrize("initializer", [None, 100])
def test_reduce(real, tree, initializer):
    fn = lambda acc, x: acc + (x if isinstance(x, (int, float)) else 0)  # noqa: E731
    assert ours.tree_reduce(fn, tree, initializer) == real.tree_reduce(fn, tree, initializer)
    is_leaf = lambda x: isinstance(x, list)  # noqa: E731
    collect = lambda acc, x: (acc if isinstance(acc, list) else [acc]) + [repr(x)]  # noqa: E731
    assert (ours.tree_reduce(collect, tree, initializer, is_leaf)
            == real.tree_reduce(collect, tree, initializer, is_leaf))


@pytest.mark.mlx
@pytest.mark.parametrize("a,b", [
    ({"a": 1, "b": {"c": 2}}, {"b": {"d": 3}, "e": [4]}),
    ([1, None, 3], [None, 2]),
    ((1, {}), (None, {"x": 2})),
    ({}, {"a": 1}),
    ([], []),
    (Point(1, None), Point(None, 2)),
    ({"a": [1, {"b": 2}]}, {"a": [None, {"c": 3}, 4]}),
])
def test_merge(real, a, b):
    got, want = ours.tree_merge(a, b), real.tree_merge(a, b)
    assert got == want and type(got) is type(want)


@pytest.mark.mlx
@pytest.mark.parametrize("a,b,merge_fn", [
    ({"a": 1}, {"a": 2}, None),
    ([], {}, None),
    (None, None, None),
])
def test_merge_errors(real, a, b, merge_fn):
    with pytest.raises(ValueError) as e_ours:
        ours.tree_merge(a, b, merge_fn)
    with pytest.raises(ValueError) as e_real:
        real.tree_merge(a, b, merge_fn)
    assert str(e_ours.value) == str(e_real.value)


@pytest.mark.mlx
def test_merge_fn(real):
    fn = lambda x, y: (x, y)  # noqa: E731
    a, b = {"a": 1, "l": [1, 2]}, {"a": 2, "l": [3]}
    assert ours.tree_merge(a, b, fn) == real.tree_merge(a, b, fn)
    assert ours.tree_merge(None, None, fn) == real.tree_merge(None, None, fn)


def test_arrays_as_leaves():
    import numpy as np

    import mlxarm.core as mx

    params = {"w": mx.array([[1.0, 2.0]]), "b": [mx.array([3.0])]}
    flat = ours.tree_flatten(params)
    assert [k for k, _ in flat] == ["w", "b.0"]
    doubled = ours.tree_map(lambda x: x * 2, params)
    np.testing.assert_allclose(np.array(doubled["b"][0]), [6.0])
    total = ours.tree_reduce(lambda acc, x: acc + x, params)
    np.testing.assert_allclose(np.array(total), [[4.0, 5.0]])


def test_documented_examples():
    assert ours.tree_flatten([[[0]]]) == [("0.0.0", 0)]
    assert ours.tree_flatten([[[0]]], prefix=".hello") == [("hello.0.0.0", 0)]
    assert ours.tree_flatten({"a": {"b": 1}}, destination={}) == {"a.b": 1}
    assert ours.tree_unflatten([("hello.world", 42)]) == {"hello": {"world": 42}}
    assert ours.tree_unflatten({"hello.world": 42}) == {"hello": {"world": 42}}
    assert ours.tree_unflatten([("a.2", 1)]) == {"a": [{}, {}, 1]}
    assert ours.tree_reduce(lambda acc, x: acc + x, {"a": [1, 2, 3], "b": [4, 5]}, 0) == 15
    paths = []
    ours.tree_map_with_path(lambda p, _: paths.append(p), {"model": [{"w": 0, "b": 1}]})
    assert paths == ["model.0.w", "model.0.b"]
    assert ours.tree_merge({"a": {"b": 1}}, {"a": {"c": 2}}) == {"a": {"b": 1, "c": 2}}
