"""mx.vmap against real MLX: batching rules per primitive family, the per-slice fallback, axes
handling (in_axes/out_axes trees) and errors."""
import numpy as np
import pytest

import mlxarm.core as ma


def run_both(build, *values, **kwargs):
    """``build(lib)`` returns a function of arrays; run it under both libraries on ``values``."""
    mlx = pytest.importorskip("mlx.core")
    ours = build(ma)(*[ma.array(v) for v in values], **kwargs)
    theirs = build(mlx)(*[mlx.array(v) for v in values], **kwargs)
    return ours, theirs


def assert_same(ours, theirs, tol=1e-5):
    if isinstance(theirs, (list, tuple)):
        assert type(ours) is type(theirs) and len(ours) == len(theirs)
        for o, t in zip(ours, theirs):
            assert_same(o, t, tol)
        return
    if isinstance(theirs, dict):
        assert ours.keys() == theirs.keys()
        for k in theirs:
            assert_same(ours[k], theirs[k], tol)
        return
    assert ours.shape == tuple(theirs.shape)
    assert ours.dtype.name == str(theirs.dtype).split(".")[-1]
    np.testing.assert_allclose(np.array(ours), np.array(theirs), rtol=tol, atol=tol)


RNG = np.random.default_rng(0)
X = RNG.standard_normal((3, 4, 5)).astype(np.float32)
Y = RNG.standard_normal((3, 4, 5)).astype(np.float32)
P = np.abs(X) + 0.5

CASES = [
    # (name, builder, inputs, vmap kwargs)
    ("unary", lambda mx: mx.exp, (X,), {}),
    ("unary_axis1", lambda mx: mx.sin, (X,), {"in_axes": 1, "out_axes": 2}),
    ("astype", lambda mx: lambda x: x.astype(mx.int32), (X * 3,), {"in_axes": 2}),
    ("binary", lambda mx: mx.add, (X, Y.transpose(1, 0, 2)), {"in_axes": (0, 1)}),
    ("binary_unbatched", lambda mx: mx.multiply, (X, Y[0]), {"in_axes": (0, None)}),
    ("binary_broadcast", lambda mx: lambda x, y: x * y, (X, Y[0, :, :1]), {"in_axes": (1, 0)}),
    ("where", lambda mx: lambda x, y: mx.where(x > 0, x, y), (X, Y.transpose(2, 0, 1)), {"in_axes": (2, 0)}),
    ("sum", lambda mx: lambda x: x.sum(axis=1), (X,), {"in_axes": 1}),
    ("sum_all_keep", lambda mx: lambda x: x.sum(keepdims=True), (X,), {}),
    ("mean", lambda mx: mx.mean, (X,), {"in_axes": 2}),
    ("max", lambda mx: lambda x: x.max(axis=-1), (X,), {"in_axes": 1}),
    ("argmax", lambda mx: mx.argmax, (X,), {}),
    ("argmax_keepdims", lambda mx: lambda x: mx.argmax(x, keepdims=True), (X,), {"in_axes": 1}),
    ("argmin_axis", lambda mx: lambda x: mx.argmin(x, axis=0), (X,), {"in_axes": 2}),
    ("cumsum", lambda mx: lambda x: mx.cumsum(x, axis=-1), (X,), {"in_axes": 1}),
    ("cummax_rev", lambda mx: lambda x: mx.cummax(x, axis=0, reverse=True), (X,), {"in_axes": 2}),
    ("softmax", lambda mx: lambda x: mx.softmax(x, axis=-1), (X,), {"in_axes": 1}),
    ("logsumexp", lambda mx: lambda x: mx.logsumexp(x, axis=0), (X,), {"in_axes": 2}),
    ("reshape", lambda mx: lambda x: x.reshape(-1), (X,), {"in_axes": 1}),
    ("transpose", lambda mx: lambda x: x.T, (X,), {"in_axes": 2, "out_axes": 1}),
    ("swapaxes", lambda mx: lambda x: mx.swapaxes(x, 0, 1), (X,), {}),
    ("broadcast_to", lambda mx: lambda x: mx.broadcast_to(x, (2, 5)), (X[:, 0, :],), {}),
    ("expand_squeeze", lambda mx: lambda x: mx.squeeze(mx.expand_dims(x, 1), 1), (X,), {"in_axes": 1}),
    ("flip_slice", lambda mx: lambda x: x[::-1, 1:3], (X,), {"in_axes": 2}),
    ("concatenate", lambda mx: lambda x, y: mx.concatenate([x, y], axis=0), (X, Y[0]), {"in_axes": (1, None)}),
    ("stack", lambda mx: lambda x, y: mx.stack([x, y], axis=1), (X, Y.transpose(1, 2, 0)), {"in_axes": (0, 2)}),
    ("split", lambda mx: lambda x: mx.split(x, 2, axis=1), (X,), {"in_axes": 2}),
    ("pad", lambda mx: lambda x: mx.pad(x, ((1, 0), (0, 2))), (X,), {"in_axes": 1}),
    ("roll", lambda mx: lambda x: mx.roll(x, 1, 0), (X,), {"in_axes": 1}),
    ("diagonal", lambda mx: mx.diagonal, (X,), {}),
    ("sort", lambda mx: lambda x: mx.sort(x, axis=0), (X,), {"in_axes": 2}),
    ("argsort", lambda mx: lambda x: mx.argsort(x), (X,), {"in_axes": 1}),
    ("topk_sorted", lambda mx: lambda x: mx.sort(mx.topk(x, 2, axis=-1), axis=-1), (X,), {}),
    ("matmul", lambda mx: mx.matmul, (X, Y[0].T), {"in_axes": (0, None)}),
    ("matmul_both", lambda mx: lambda a, b: a @ b, (X, Y.transpose(1, 2, 0)[:, :, :2]), {"in_axes": (1, 0)}),
    ("matmul_vec", lambda mx: lambda a, b: a @ b, (X[:, :, 0], Y[0, :, 0]), {"in_axes": (0, None)}),
    ("addmm", lambda mx: mx.addmm, (Y[0, 0, :4], X, Y[0].T), {"in_axes": (None, 0, None)}),
    ("index_int", lambda mx: lambda x: x[1], (X,), {"in_axes": 2}),
    ("gather_array", lambda mx: lambda x: x[mx.array([2, 0])], (X,), {"in_axes": 1}),
    ("gather_batched_idx", lambda mx: lambda x, i: x[i], (X, np.array([[0, 1], [2, 3], [1, 1]])),
     {"in_axes": (0, 0)}),
    ("gather_mixed", lambda mx: lambda x: x[:, mx.array([1, 0])], (X,), {"in_axes": 0}),
    ("take_along_axis", lambda mx: lambda x, i: mx.take_along_axis(x, i, axis=0),
     (X, np.zeros((3, 2, 5), np.int32)), {"in_axes": (0, 0)}),
    ("scatter", lambda mx: lambda x: x.at[mx.array([0, 2])].add(1.0), (X,), {"in_axes": 1}),
    ("linalg_inv", lambda mx: lambda x: mx.linalg.inv(x, stream=mx.cpu), (X[:, :3, :3] + 3 * np.eye(3, dtype=np.float32),), {}),
    ("const_output", lambda mx: lambda x: mx.array(2.0), (X,), {}),
    ("unbatched_output", lambda mx: lambda x, y: (x + 1, y), (X, Y), {"in_axes": (0, None)}),
    ("nested", lambda mx: mx.vmap(mx.sum), (X,), {"in_axes": 2}),
]


@pytest.mark.parametrize("name,build,inputs,kw", CASES, ids=[c[0] for c in CASES])
def test_vmap_matches_mlx(name, build, inputs, kw):
    ours, theirs = run_both(lambda mx: mx.vmap(build(mx), **kw), *inputs)
    assert_same(ours, theirs)


def test_trees():
    mlx = pytest.importorskip("mlx.core")

    def build(mx):
        def fun(tree):
            return {"s": tree["a"] + tree["b"][0], "p": tree["b"][1] * 2}
        return mx.vmap(fun, in_axes={"a": 0, "b": (1, 0)}, out_axes={"s": 1, "p": 0})

    def tree(mx):
        return {"a": mx.array(X[:, :, 0]), "b": (mx.array(X[:, :, 1].T), mx.array(Y[:, 0]))}

    assert_same(build(ma)(tree(ma)), build(mlx)(tree(mlx)))


def test_named_tuple_and_tuple_subclass():
    from typing import NamedTuple

    class State(NamedTuple):
        a: object
        b: object

    out = ma.vmap(lambda s: State(s.a + 1, s.b * 2))(State(ma.array([1, 2]), ma.array([3, 4])))
    assert isinstance(out, State)
    assert out.a.tolist() == [2, 3] and out.b.tolist() == [6, 8]


def test_matches_loop_for_unruled_primitives():
    # Primitives without a batching rule are mapped slice by slice.
    x = ma.array(X)
    out = ma.vmap(lambda a: ma.linalg.norm(a, ord=1), in_axes=2)(x)
    expected = ma.stack([ma.linalg.norm(x[:, :, i], ord=1) for i in range(5)])
    np.testing.assert_allclose(np.array(out), np.array(expected), rtol=1e-6)


def test_inplace_update_inside():
    def scatter(a, idx, v):
        a[idx] = v
        return a

    out = ma.vmap(scatter, in_axes=(0, 0, 0))(ma.zeros((3, 4)), ma.array([0, 1, 2]),
                                              ma.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(np.array(out), np.eye(3, 4) * np.array([[1], [2], [3]]))


ERRORS = [
    ("scalar", lambda mx: mx.vmap(mx.exp)(mx.array(1.0)), (IndexError, ValueError)),
    ("not_array", lambda mx: mx.vmap(mx.exp)("hello"), ValueError),
    ("bad_in_axes", lambda mx: mx.vmap(mx.exp, in_axes="x")(mx.array([0, 1])), ValueError),
    ("in_axis_range", lambda mx: mx.vmap(mx.exp, in_axes=2)(mx.array([0, 1])), (IndexError, ValueError)),
    ("out_axis_range", lambda mx: mx.vmap(mx.exp, out_axes=2)(mx.array([0, 1])), (IndexError, ValueError)),
    ("sizes", lambda mx: mx.vmap(lambda x, y: x + y)(mx.ones((2, 1)), mx.ones((3, 1))), ValueError),
    ("all_none", lambda mx: mx.vmap(lambda x: x, in_axes=(None,))(mx.ones((2,))), ValueError),
    ("prefix", lambda mx: mx.vmap(lambda x, y: x, in_axes=(0,))(mx.ones(2), mx.ones(2)), ValueError),
    ("out_prefix", lambda mx: mx.vmap(lambda x: {"a": x}, out_axes={"b": 0})(mx.ones(2)), ValueError),
    ("none_output", lambda mx: mx.vmap(lambda x: None)(mx.ones(2)), ValueError),
    ("eval_inside", lambda mx: mx.vmap(lambda x: x.item())(mx.ones((2, 1))), ValueError),
    ("batched_pad_value",
     lambda mx: mx.vmap(lambda a, v: mx.pad(a, 1, constant_values=v))(mx.ones((2, 3)), mx.ones(2)), ValueError),
]


@pytest.mark.parametrize("name,call,exc", ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_match_mlx(name, call, exc):
    mlx = pytest.importorskip("mlx.core")
    with pytest.raises(exc) as theirs:
        call(mlx)
    with pytest.raises(type(theirs.value)):
        call(ma)
