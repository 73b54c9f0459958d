"""Function transforms (grad, value_and_grad, vjp, jvp, checkpoint, custom_function) against MLX."""
import numpy as np
import pytest

import mlxarm.core as mx


def _both(fn_of_module):
    """Run ``fn_of_module(module)`` with mlxarm and with MLX; return both results as numpy trees."""
    mlx = pytest.importorskip("mlx.core")
    return _np(fn_of_module(mx)), _np(fn_of_module(mlx))


def _np(tree):
    if isinstance(tree, (list, tuple)):
        return [_np(t) for t in tree]
    if isinstance(tree, dict):
        return {k: _np(v) for k, v in tree.items()}
    return np.array(tree)


def _close(ours, theirs, rtol=1e-4, atol=1e-5):
    if isinstance(theirs, list):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            _close(a, b, rtol, atol)
    elif isinstance(theirs, dict):
        assert ours.keys() == theirs.keys()
        for k in theirs:
            _close(ours[k], theirs[k], rtol, atol)
    else:
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol)


RNG = np.random.default_rng(0)
X = RNG.uniform(0.5, 2.0, (3, 4)).astype(np.float32)
Y = RNG.uniform(0.5, 2.0, (4,)).astype(np.float32)
W = RNG.standard_normal((4, 5)).astype(np.float32)

# Scalar functions of two arrays, written against either module.
FUNCTIONS = {
    "arith": lambda m, x, y: (x * y - x / y + m.power(x, y)).sum(),
    "unary": lambda m, x, y: (m.exp(-x) + m.log(x) + m.sin(x) * m.cos(y) + m.tanh(x) + m.sqrt(x)
                              + m.sigmoid(y) + m.erf(x) + m.arctan(x) + m.rsqrt(y)).sum(),
    "reduce": lambda m, x, y: ((m.max(x, axis=1) * m.min(x, axis=0).sum()).sum() + m.prod(y)
                               + m.logsumexp(x, axis=0).sum() + m.mean(x) + m.var(x, axis=1).sum()),
    "shape": lambda m, x, y: (m.transpose(x).reshape(-1)[::2] * 3).sum()
    + m.concatenate([x, y[None]], axis=0).sum(axis=0)[1] + m.pad(x, 1)[1:3].sum()
    + m.flip(x, 0)[0, 1] + m.roll(x, 1, 1)[0, 0] + m.broadcast_to(y, (3, 4))[1:].sum(),
    "indexing": lambda m, x, y: (x[m.array([0, 2, 2])] * y).sum()
    + m.take_along_axis(x, m.array([[0], [3], [1]]), axis=1).sum()
    + x.at[m.array([0, 0])].add(y).sum() + m.where(x > 1, x, y).sum(),
    "linalg": lambda m, x, y: (m.matmul(x, m.array(W)) ** 2).sum() + m.addmm(y, x, m.ones((4, 4))).sum()
    + m.einsum("ij,j->i", x, y).sum() + (y @ m.transpose(x)).sum(),
    "scan": lambda m, x, y: (m.cumsum(x, axis=1) * m.cumprod(y)).sum() + m.cummax(x, axis=0).sum()
    + m.logcumsumexp(y, reverse=True).sum() + m.cummin(x, axis=1, inclusive=False)[:, 1:].sum(),
    "sort": lambda m, x, y: (m.sort(x, axis=0) * m.arange(4)).sum() + m.topk(y, 2).sum()
    + (m.softmax(x, axis=-1) * m.arange(4)).sum(),
    "fast": lambda m, x, y: m.fast.rms_norm(x, y, 1e-5).sum() * 0.5
    + (m.fast.layer_norm(x, y, y, 1e-5) * m.arange(4)).sum()
    + m.fast.rope(x[None], 4, traditional=False, base=10000.0, scale=1.0, offset=1).sum(),
}


@pytest.mark.mlx
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_grad_matches_mlx(name):
    f = FUNCTIONS[name]
    ours, theirs = _both(lambda m: m.grad(lambda x, y: f(m, x, y), argnums=(0, 1))(m.array(X), m.array(Y)))
    _close(ours, theirs)


@pytest.mark.mlx
@pytest.mark.parametrize("name", ["arith", "unary", "linalg", "shape", "sort"])
def test_jvp_matches_mlx(name):
    f = FUNCTIONS[name]
    tx, ty = RNG.standard_normal(X.shape).astype(np.float32), RNG.standard_normal(Y.shape).astype(np.float32)
    ours, theirs = _both(lambda m: m.jvp(lambda x, y: f(m, x, y), [m.array(X), m.array(Y)],
                                         [m.array(tx), m.array(ty)]))
    _close(ours, theirs)


@pytest.mark.mlx
def test_second_and_third_order():
    def run(m):
        f = lambda x: (m.sin(x) * x ** 3).sum()
        g2 = m.grad(lambda x: m.grad(f)(x).sum())
        g3 = m.grad(lambda x: g2(x).sum())
        x = m.array(Y)
        return [g2(x), g3(x)]
    ours, theirs = _both(run)
    _close(ours, theirs)


@pytest.mark.mlx
def test_hessian_vector_product_through_sort_and_cummax():
    def run(m):
        v = m.array([1.0, -2.0, 0.5, 1.5])
        outs = []
        for fn in (lambda a: m.sort(a), lambda a: m.cummax(a, axis=0, reverse=True)):
            f = lambda a: m.sum(fn(a) ** 2)
            outs.append(m.grad(lambda a: m.sum(m.grad(f)(a) * v))(m.array([3.0, 1.0, 2.0, 5.0])))
        return outs
    ours, theirs = _both(run)
    _close(ours, theirs)


@pytest.mark.mlx
def test_argnums_argnames_and_trees():
    def run(m):
        f = lambda p, b, *, z: (p["w"] @ p["v"][0] * b).sum() * z
        p = {"w": m.array(X), "v": [m.array(Y)]}
        vg = m.value_and_grad(f, argnums=[0, 1], argnames="z")
        (value, ((gp, gb), gz)) = vg(p, m.array(2.0), z=m.array(3.0))
        loss_aux = m.value_and_grad(lambda x: ((x * x).sum(), {"aux": x + 1}))(m.array(Y))
        return [value, gp, gb, gz, loss_aux]
    ours, theirs = _both(run)
    _close(ours, theirs)


@pytest.mark.mlx
@pytest.mark.parametrize("call", [
    lambda m: m.grad(lambda x: x)(m.array([1.0, 2.0])),
    lambda m: m.grad(lambda x: x, argnums=2)(m.array(1.0)),
    lambda m: m.grad(lambda x: x, argnums=-1)(m.array(1.0)),
    lambda m: m.grad(lambda x: x, argnums=(0, 0)),
    lambda m: m.grad(lambda x: "no")(m.array(1.0)),
    lambda m: m.grad(lambda x, y: x * y, argnames=["y"])(m.array(1.0), m.array(2.0)),
    lambda m: m.value_and_grad(lambda x: x, ())(m.array(1.0)),
    lambda m: m.vjp(lambda x: m.take(x, m.array([0])), [m.array([1.0, 2.0])], [m.ones((2,))]),
])
def test_errors_match_mlx(call):
    mlx = pytest.importorskip("mlx.core")
    with pytest.raises(Exception) as theirs:
        call(mlx)
    with pytest.raises(type(theirs.value)) as ours:
        call(mx)
    assert str(ours.value).split("]")[0] == str(theirs.value).split("]")[0]


@pytest.mark.mlx
def test_vjp_stop_gradient_inplace_and_dtypes():
    def run(m):
        def f(a, b):
            a[1:3] = b * m.stop_gradient(a[0])
            return a * 2

        _, vjps = m.vjp(f, [m.ones((4,)), m.full((2,), 3.0)], [m.arange(4, dtype=m.float32)])
        grads = [m.grad(lambda x: (x * x).sum())(m.array([1.5, 2.0], dtype=d))
                 for d in (m.float16, m.bfloat16, m.float32)]
        return vjps + [g.astype(m.float32) for g in grads]
    ours, theirs = _both(run)
    _close(ours, theirs)
    assert mx.grad(lambda x: x.sum())(mx.array([1.0], mx.float16)).dtype == mx.float16


@pytest.mark.mlx
def test_custom_function_and_checkpoint():
    def run(m):
        f = m.custom_function(lambda x, y: m.exp(x) * y)

        @f.vjp
        def f_vjp(primals, cotangent, output):
            x, y = primals
            return cotangent * 3, cotangent * x

        @f.jvp
        def f_jvp(primals, tangents):
            return tangents[0] * 5 + tangents[1]

        g = m.grad(lambda x, y: f(x, y).sum(), argnums=(0, 1))(m.array(Y), m.array(Y))
        _, t = m.jvp(f, [m.array(Y), m.array(Y)], [m.ones(4), m.ones(4)])
        c = m.grad(m.checkpoint(lambda x: (m.sin(x) * x).sum()))(m.array(Y))
        return [g, t, c]
    ours, theirs = _both(run)
    _close(ours, theirs)


@pytest.mark.mlx
def test_custom_rules_on_tree_arguments():
    """Custom jvp and vmap rules receive their primals, tangents and axes as separate trees of the
    argument's structure (a rule's tangents are not its primals)."""
    def run(m):
        @m.custom_function
        def double(params):
            return {"out": 2 * params["x"] * params["y"]}

        @double.jvp
        def double_jvp(primals, tangents):
            return {"out": 2 * primals["x"] * tangents["y"] + 2 * primals["y"] * tangents["x"] + 1}

        @double.vmap
        def double_vmap(params, axes):
            return {"out": params["x"] * 3 + params["y"]}, {"out": axes["x"]}

        outer = lambda a, b: double({"x": a, "y": b})["out"]  # noqa: E731
        primals, tangents = [m.array(Y), m.array(Y + 1)], [m.array(Y * 2), m.array(Y - 1)]
        outs, jvps = m.jvp(outer, primals, tangents)
        mapped = m.vmap(outer)(m.array(X), m.array(X * 2))
        return [outs, jvps, mapped]
    ours, theirs = _both(run)
    _close(ours, theirs)


@pytest.mark.parametrize("device", ["numpy", "llvm"])
def test_custom_function_arrays_are_freed(device, monkeypatch):
    """Once the caller lets go, nothing keeps a custom function's arrays alive: its rules (which hold
    the call's outputs) live in its nodes' params, and the executors' structural keys refer to
    params objects without holding them."""
    import gc

    if device == "llvm":
        pytest.importorskip("llvmlite")
    monkeypatch.setenv("MLXARM_DEVICE", device)
    gc.collect()
    before = mx.get_active_memory()

    @mx.custom_function
    def double(params):
        return {"out": 2 * params["x"] * params["y"]}

    @double.jvp
    def double_jvp(primals, tangents):
        return {"out": 2 * primals["x"] * tangents["y"] + 2 * primals["y"] * tangents["x"]}

    for _ in range(3):
        outs, jvps = mx.jvp(lambda a, b: double({"x": a, "y": b})["out"], [mx.array(Y), mx.array(Y + 1)],
                            [mx.array(Y), mx.array(Y)])
        mx.eval(outs, jvps)
    del outs, jvps, double, double_jvp
    gc.collect()
    assert mx.get_active_memory() == before


def test_finite_differences_on_random_graph():
    """The gradient of a randomly composed graph agrees with central differences (float64 values)."""
    rng = np.random.default_rng(1)
    unary = [mx.sin, mx.tanh, mx.exp, lambda v: v * v, mx.sigmoid, lambda v: mx.log1p(v * v)]
    binary = [mx.add, mx.multiply, mx.subtract, lambda a, b: a / (1 + b * b), mx.maximum]
    for trial in range(5):
        plan = [(rng.integers(2), rng.integers(6), rng.integers(5)) for _ in range(8)]

        def f(x, plan=plan):
            vals = [x, mx.roll(x, 1)]
            for kind, u, b in plan:
                a = vals[rng_pick(len(vals), u)]
                if kind == 0:
                    vals.append(unary[u](a) * 0.5)
                else:
                    vals.append(binary[b](a, vals[-1]) * 0.5)
            return mx.sum(vals[-1] * mx.arange(1, 6, dtype=mx.float32))

        x0 = rng.uniform(-1, 1, 5).astype(np.float32)
        g = np.array(mx.grad(f)(mx.array(x0)))
        eps = 1e-3
        num = np.zeros(5)
        for i in range(5):
            d = np.zeros(5, np.float32)
            d[i] = eps
            num[i] = (f(mx.array(x0 + d)).item() - f(mx.array(x0 - d)).item()) / (2 * eps)
        np.testing.assert_allclose(g, num, rtol=2e-2, atol=2e-2)


def rng_pick(n, u):
    return int(u) % n


def test_grad_preserves_argument_identity():
    arrs = [mx.array(1.0), mx.array(2.0)]
    first = arrs[0]
    mx.grad(lambda a: a[0] * a[1])(arrs)
    assert arrs[0] is first
