"""mx.compile against real MLX: results equal to the uncompiled function, tracing only once per
signature (side effects), constants and tree arguments, captured state, shapeless replay, errors."""
from functools import partial

import numpy as np
import pytest

import mlxarm.core as ma

RNG = np.random.default_rng(1)
A = RNG.standard_normal((3, 4)).astype(np.float32)
B = RNG.standard_normal((4, 5)).astype(np.float32)


def same(ours, theirs):
    assert ours.shape == tuple(theirs.shape)
    assert ours.dtype.name == str(theirs.dtype).split(".")[-1]
    np.testing.assert_array_equal(np.array(ours), np.array(theirs))


FUNS = [
    ("elementwise", lambda mx: lambda x, y: mx.abs(mx.exp(x) - 2 * y[:3, :1]), (A, B.T)),
    ("matmul_reduce", lambda mx: lambda x, y: (x @ y).sum(axis=0) + x.mean(), (A, B)),
    ("multi_output", lambda mx: lambda x, y: [x + 1, {"s": (x * 2).sum()}, (y.T, 3)], (A, B)),
    ("int_dtypes", lambda mx: lambda x, y: x.astype(mx.int16) * 3 + 1, (A * 10, B)),
    ("indexing", lambda mx: lambda x, y: x[::-1, 1:3] * y[0, :2], (A, B)),
    ("creation", lambda mx: lambda x, y: x + mx.ones((3, 4)) * mx.array(2.5), (A, B)),
    ("cse", lambda mx: lambda x, y: (x + 1) + (x + 1), (A, B)),
]


@pytest.mark.parametrize("name,build,inputs", FUNS, ids=[f[0] for f in FUNS])
def test_compiled_equals_uncompiled_and_mlx(name, build, inputs):
    mlx = pytest.importorskip("mlx.core")
    fun = build(ma)
    cfun = ma.compile(fun)
    args = [ma.array(v) for v in inputs]
    expected = fun(*args)
    # MLX's compiled kernels are built by a C++ compiler (slow); its uncompiled result is the same.
    theirs = build(mlx)(*[mlx.array(v) for v in inputs])
    for _ in range(2):  # the traced call and a replay
        out = cfun(*args)
        flat_out, flat_exp, flat_mlx = [], [], []
        for tree, dest in ((out, flat_out), (expected, flat_exp), (theirs, flat_mlx)):
            _leaves(tree, dest)
        assert len(flat_out) == len(flat_exp) == len(flat_mlx)
        for o, e, t in zip(flat_out, flat_exp, flat_mlx):
            if isinstance(o, ma.array):
                np.testing.assert_array_equal(np.array(o), np.array(e))
                np.testing.assert_allclose(np.array(o), np.array(t), rtol=1e-5, atol=1e-5)
                assert o.dtype.name == str(t.dtype).split(".")[-1]
            else:
                assert o == e == t


def _leaves(tree, out):
    if isinstance(tree, (list, tuple)):
        for x in tree:
            _leaves(x, out)
    elif isinstance(tree, dict):
        for k in sorted(tree):
            _leaves(tree[k], out)
    else:
        out.append(tree)


def test_traces_once_per_signature():
    calls = []

    @ma.compile
    def fun(x, y, scale=1.0):
        calls.append(1)
        return x * scale + y

    x, y = ma.array([1.0, 2.0]), ma.array([3.0, 4.0])
    assert fun(x, y).tolist() == [4.0, 6.0]
    assert fun(ma.array([0.0, 1.0]), y).tolist() == [3.0, 5.0]
    assert len(calls) == 1
    fun(x, y, scale=2.0)  # a new constant
    fun(ma.array([1, 2]), ma.array([3, 4]))  # new dtypes
    fun(ma.array([1.0]), ma.array([3.0]))  # new shapes
    assert len(calls) == 4
    fun(x, y, scale=2.0)
    assert len(calls) == 4


def test_closures_are_frozen_at_trace():
    y = ma.array(1.0)
    fun = ma.compile(lambda x: x + y)
    assert fun(ma.array(1.0)).item() == 2.0
    y = ma.array(5.0)  # noqa: F841 (the compiled function keeps the traced value)
    assert fun(ma.array(1.0)).item() == 2.0


def test_captured_state():
    state = {"count": ma.array(0.0)}

    @partial(ma.compile, inputs=state, outputs=state)
    def step(x):
        state["count"] = state["count"] + x
        return state["count"] * 2

    for _ in range(3):
        out = step(ma.array(1.0))
    assert state["count"].item() == 3.0
    assert out.item() == 6.0


def test_random_state_advances_and_seeds():
    fun = partial(ma.compile, inputs=ma.random.state, outputs=ma.random.state)(
        lambda: ma.random.uniform(shape=(4,)))
    a, b = fun(), fun()
    assert not np.allclose(np.array(a), np.array(b))
    ma.random.seed(3)
    c = fun()
    ma.random.seed(3)
    np.testing.assert_array_equal(np.array(fun()), np.array(c))
    ma.random.seed(3)
    np.testing.assert_array_equal(np.array(ma.random.uniform(shape=(4,))), np.array(c))


def test_shapeless():
    mlx = pytest.importorskip("mlx.core")
    calls = []

    def build(mx):
        def fun(x, y):
            calls.append(1)
            return mx.exp(x) * y.sum(-1, keepdims=True) + (x * 2).reshape(-1).max()
        return fun

    ours, theirs = ma.compile(build(ma), shapeless=True), build(mlx)
    for shape in [(2, 3), (4, 3), (5, 6)]:
        x = RNG.standard_normal(shape).astype(np.float32)
        y = RNG.standard_normal(shape).astype(np.float32)
        o, t = ours(ma.array(x), ma.array(y)), theirs(mlx.array(x), mlx.array(y))
        assert o.shape == tuple(t.shape)
        np.testing.assert_allclose(np.array(o), np.array(t), rtol=1e-5, atol=1e-5)
    assert len(calls) == 4  # ours traced once, MLX ran three times


def test_shapeless_broadcast_and_matmul():
    fun = ma.compile(lambda a, b: a @ b + 1, shapeless=True)
    for sa, sb in [((2, 1, 4, 2), (3, 2, 5)), ((3, 1, 2, 3), (2, 3, 4))]:
        a = RNG.standard_normal(sa).astype(np.float32)
        b = RNG.standard_normal(sb).astype(np.float32)
        np.testing.assert_allclose(np.array(fun(ma.array(a), ma.array(b))), a @ b + 1, rtol=1e-5)


def test_shapeless_gradients_follow_new_shapes():
    """The gradient of a reduction broadcasts the cotangent back over the input: in a shapeless
    compiled gradient, over each call's input (a batched matmul's operands may swap their batch
    shapes between calls)."""
    grad = ma.compile(ma.grad(lambda args: (args[0] @ args[1]).sum() + args[0].max()), shapeless=True)
    plain = ma.grad(lambda args: (args[0] @ args[1]).sum() + args[0].max())
    for sa, sb in [((2, 1, 4, 2), (3, 2, 5)), ((3, 1, 4, 2), (2, 2, 5)), ((1, 1, 3, 2), (4, 2, 6))]:
        args = (ma.array(RNG.standard_normal(sa).astype(np.float32)),
                ma.array(RNG.standard_normal(sb).astype(np.float32)))
        for ours, want in zip(grad(args), plain(args)):
            assert ours.shape == want.shape
            np.testing.assert_allclose(np.array(ours), np.array(want), rtol=1e-5, atol=1e-5)


SHAPE_DEPENDENT = [
    ("mean", lambda m, x: m.mean(x, axis=-1, keepdims=True) + m.mean(x)),
    ("var_std", lambda m, x: m.var(x, axis=0) + m.std(x, axis=-1, ddof=1).sum()),
    ("zeros_ones_like", lambda m, x: m.zeros_like(x) + m.ones_like(x) * 2 + m.full_like(x, 3.0) * x),
]


@pytest.mark.parametrize("name,build", SHAPE_DEPENDENT, ids=[n for n, _ in SHAPE_DEPENDENT])
def test_shapeless_shape_dependent_values(name, build):
    """What depends on an input's shape (a mean's count, a fill like the input) follows the shape
    of each call of a shapeless compiled function, traced once."""
    calls = []

    def fun(x):
        calls.append(1)
        return build(ma, x)

    compiled = ma.compile(fun, shapeless=True)
    for shape in [(1, 3), (4, 3), (7, 5), (2, 1)]:
        x = ma.array(RNG.standard_normal(shape).astype(np.float32))
        ours, plain = compiled(x), build(ma, x)
        assert ours.shape == plain.shape
        np.testing.assert_allclose(np.array(ours), np.array(plain), rtol=1e-6, atol=1e-6)
    assert len(calls) == 1  # traced once


def test_shapeless_mean_after_take():
    """A mean over indices taken by an input index array: traced on one index, replayed on more."""
    compiled = ma.compile(lambda buf, idx: ma.mean(ma.take(buf, idx, axis=0)), shapeless=True)
    buf = ma.array([10.0, 20.0, 30.0, 40.0, 50.0])
    for n in (1, 2, 3, 5, 1):
        idx = ma.arange(n)
        assert compiled(buf, idx).item() == ma.mean(ma.take(buf, idx, axis=0)).item()


SLICES = [
    # mlx-lm's MoE aggregation: a whole-axis index with a new axis is an expand_dims, traced on two tokens
    ("new_axis", lambda x: (x * x[..., 0][..., None]).sum(axis=-2)),
    ("whole_slices", lambda x: x[:, :, ::-1] + x[..., None][..., 0]),
    ("partial_slice_of_kept_axis", lambda x: x[..., 1:3] * 2),
]


@pytest.mark.parametrize("name,fun", SLICES, ids=[n for n, _ in SLICES])
def test_shapeless_slices_follow_new_shapes(name, fun):
    """A slice over a whole axis takes the whole of the new axis on a shapeless replay (as MLX, where such
    a slice is the array itself); a partial slice of an axis that kept its size keeps its bounds."""
    compiled = ma.compile(fun, shapeless=True)
    for shape in [(1, 2, 2, 4), (1, 1, 2, 4), (3, 5, 4, 4), (2, 4, 1, 4)]:
        x = ma.array(RNG.standard_normal(shape).astype(np.float32))
        ours, plain = compiled(x), fun(x)
        assert ours.shape == plain.shape
        np.testing.assert_array_equal(np.array(ours), np.array(plain))


@pytest.mark.parametrize("fun", [lambda x: x[:, 1:3], lambda x: x[:, 1]], ids=["slice", "index"])
def test_shapeless_partial_slice_of_a_resized_axis_raises(fun):
    """Where the sliced axis changed size the traced bounds mean nothing: an error, as MLX's."""
    compiled = ma.compile(fun, shapeless=True)
    compiled(ma.zeros((2, 4)))
    with pytest.raises(ValueError, match="Slice cannot infer output shapes"):
        compiled(ma.zeros((2, 6)))
    assert compiled(ma.ones((3, 4))).shape == fun(ma.ones((3, 4))).shape


def test_shapeless_gather_matmuls():
    """gather_mm and gather_qmm follow new row counts in a shapeless compiled function."""
    k, n, experts = 64, 32, 4
    idx = ma.array([0, 1, 2, 3])
    b = ma.array(RNG.standard_normal((experts, k, n)).astype(np.float32))
    qw, s, bias = ma.quantize(ma.array(RNG.standard_normal((experts, n, k)).astype(np.float32)))
    funs = [lambda x: ma.gather_mm(x, b, lhs_indices=idx, rhs_indices=idx),
            lambda x: ma.gather_qmm(x, qw, s, bias, lhs_indices=idx, rhs_indices=idx, transpose=True)]
    for fun in funs:
        compiled = ma.compile(fun, shapeless=True)
        for rows in (4, 8, 1):
            x = ma.array(RNG.standard_normal((experts, rows, k)).astype(np.float32))
            ours, plain = compiled(x), fun(x)
            assert ours.shape == plain.shape
            np.testing.assert_allclose(np.array(ours), np.array(plain), rtol=1e-5, atol=1e-5)


def test_disable_enable():
    calls = []

    @ma.compile
    def fun(x):
        calls.append(1)
        return x + 1

    ma.disable_compile()
    try:
        fun(ma.array(1.0))
        fun(ma.array(1.0))
        assert len(calls) == 2
    finally:
        ma.enable_compile()
    fun(ma.array(1.0))
    fun(ma.array(1.0))
    assert len(calls) == 3


def test_vmap_of_compiled():
    x = ma.array(A)
    np.testing.assert_array_equal(np.array(ma.vmap(ma.compile(lambda v: -ma.exp(v)))(x)),
                                  np.array(-ma.exp(x)))


def test_preserves_function_attributes():
    def documented(x, y: int = 2):
        """Doc."""
        return x

    c = ma.compile(documented)
    assert c.__name__ == "documented" and c.__doc__ == "Doc."
    import inspect
    assert inspect.signature(c) == inspect.signature(documented)


ERRORS = [
    ("bad_argument", lambda mx: mx.compile(lambda x, y: x)(mx.array(1.0), object())),
    ("eval_inside", lambda mx: mx.compile(lambda x: x.item())(mx.array(1.0))),
    ("uncaptured_input", None),
    ("shapeless_reshape", lambda mx: [f(mx.zeros(s)) for f in
                                      [mx.compile(lambda x: x.reshape(6, -1), shapeless=True)]
                                      for s in [(2, 3, 4), (5, 5, 5)]]),
]


@pytest.mark.parametrize("name,call", ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_match_mlx(name, call):
    mlx = pytest.importorskip("mlx.core")
    if call is None:
        def call(mx):
            x = mx.array([1, 2, 3]) + 2
            return mx.compile(lambda a: a + (x + 1))(x)
    with pytest.raises(ValueError) as theirs:
        call(mlx)
    with pytest.raises(ValueError) as ours:
        call(ma)
    assert str(ours.value) == str(theirs.value)


def test_traces_are_kept_per_stream():
    """A trace records its steps on the default stream: a function first called in a thread with a stream
    of its own (a server's generation thread) is traced again where it is called next, as MLX does,
    rather than replayed onto a stream that thread cannot use."""
    import threading

    fun = ma.compile(lambda x: x * 2 + 1)
    done = {}

    def worker():
        with ma.stream(ma.new_stream(ma.cpu)):
            done["value"] = fun(ma.array([1.0])).item()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert done["value"] == 3.0
    assert fun(ma.array([3.0])).item() == 7.0
    with ma.stream(ma.new_stream(ma.cpu)):
        assert fun(ma.array([4.0])).item() == 9.0
