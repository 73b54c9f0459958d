"""The LLVM executor's wider lowering against the numpy executor: the inverse trigonometric and
hyperbolic functions, power, floor division and remainder (with MLX's answers for a zero divisor),
all/any, float64 arithmetic, and the view chains and identity ops the planner hands to numpy."""
import os

import numpy as np
import pytest

pytest.importorskip("llvmlite", reason="the LLVM backend needs llvmlite")

import mlxarm.core as ma  # noqa: E402
from _matrix import on, tolerance  # noqa: E402
from mlxarm.backend import executor  # noqa: E402

FLOATS = [ma.float32, ma.float16, ma.bfloat16]


def agree(fn, kernels: bool = True, scale: float = 1.0):
    """Both executors give the same dtype, shape and values (a sum of terms up to ``scale`` in size
    may differ by its rounding); with ``kernels``, the LLVM executor ran the whole graph as kernels
    (nothing fell back to numpy)."""
    ref = on("numpy", fn)
    got = on("llvm", fn)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    rtol, atol = tolerance(ref.dtype) if ref.dtype.kind in "fc" else (0, 0)
    atol *= scale
    np.testing.assert_allclose(np.array(got), np.array(ref), rtol=rtol, atol=atol, equal_nan=True)
    if kernels:
        assert all(kind == "kernel" for kind, _ in executor("llvm").last_plan), executor("llvm").last_plan


UNARY = [("tan", (-1.4, 1.4)), ("arcsin", (-1, 1)), ("arccos", (-1, 1)), ("arctan", (-30, 30)),
         ("sinh", (-12, 12)), ("cosh", (-12, 12)), ("arcsinh", (-1e4, 1e4)), ("arccosh", (1, 1e4)),
         ("arctanh", (-1, 1)), ("trunc", (-9, 9))]


@pytest.mark.parametrize("d", FLOATS, ids=str)
@pytest.mark.parametrize("name,domain", UNARY, ids=[u[0] for u in UNARY])
def test_unary_functions(name, domain, d):
    x = np.random.default_rng(0).uniform(*domain, size=(3, 41)).astype(np.float32)
    x[0, :4] = [domain[0], domain[1], 0.0, np.nan]
    agree(lambda: getattr(ma, name)(ma.array(x, dtype=d)))


@pytest.mark.parametrize("d", FLOATS, ids=str)
@pytest.mark.parametrize("name", ["power", "floor_divide", "remainder", "arctan2", "logaddexp"])
def test_binary_float_functions(name, d):
    rng = np.random.default_rng(1)
    x, y = rng.uniform(-6, 6, size=(2, 4, 33)).astype(np.float32)
    if name == "power":
        x = np.abs(x)
    y[0, :3] = [0.0, -0.0, np.inf]
    x[1, :5] = y[1, :5]  # logaddexp of equal values
    agree(lambda: getattr(ma, name)(ma.array(x, dtype=d), ma.array(y, dtype=d)))


@pytest.mark.parametrize("d", [ma.int8, ma.int32, ma.int64, ma.uint8, ma.uint32, ma.bool_], ids=str)
@pytest.mark.parametrize("name", ["floor_divide", "remainder"])
def test_integer_division(name, d):
    rng = np.random.default_rng(2)
    x, y = rng.integers(-100, 100, size=(2, 67))
    if d in (ma.uint8, ma.uint32):
        x, y = np.abs(x), np.abs(y) % 7
    elif d is ma.bool_:
        x, y = x > 0, y > 0
    else:
        y = y % 9 - 4  # zero and -1 divisors among them
        x[0], y[0] = np.iinfo(d.np_storage).min, -1  # the one quotient that overflows
    agree(lambda: getattr(ma, name)(ma.array(x, dtype=d), ma.array(y, dtype=d)))


@pytest.mark.parametrize("d", [ma.float32, ma.int32, ma.bool_, ma.float16], ids=str)
@pytest.mark.parametrize("name", ["all", "any"])
@pytest.mark.parametrize("axis", [None, 1, (0, 2), -1])
def test_all_any(name, d, axis):
    x = np.random.default_rng(3).integers(0, 2, size=(4, 5, 19))
    x[1] = 1
    agree(lambda: getattr(ma, name)(ma.array(x, dtype=d), axis=axis))


def test_float64_arithmetic_reductions_and_casts():
    x = np.random.default_rng(4).standard_normal((6, 35))
    agree(lambda: ma.sum(ma.maximum(ma.array(x) * 3.5 - 1, 0.25) / 7, axis=1))
    agree(lambda: (ma.array(x).astype(ma.float64) * 1e-3 + 1).astype(ma.float16))
    agree(lambda: (ma.array(x, dtype=ma.float64) * 100).astype(ma.int32))
    agree(lambda: ma.where(ma.array(x, dtype=ma.float64) > 0, ma.array(x, dtype=ma.float64), 0.5))
    agree(lambda: ma.exp(ma.array(x, dtype=ma.float64)), kernels=False)  # libm's exp stays on numpy


def test_float64_to_half_rounds_once():
    # values just past a half-way point between two halves, which rounding through float32 would
    # land exactly on (and then round to even)
    halves = np.array([1.0, 2.0, 1000.0], np.float64)
    ulp = np.spacing(halves.astype(np.float16)).astype(np.float64)
    x = halves + ulp / 2 + 2.0 ** -40 * halves
    got = np.array(on("llvm", lambda: ma.array(x, dtype=ma.float64).astype(ma.float16) + 0))
    np.testing.assert_array_equal(got, x.astype(np.float16))


def test_view_chain_of_a_buffer_runs_on_numpy():
    a = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    agree(lambda: ma.tile(ma.array(a), 2), kernels=False)
    agree(lambda: ma.repeat(ma.array(a), 2, 1), kernels=False)


def test_stop_gradient_of_a_buffer_is_not_copied():
    a = ma.ones((64,)) + 0
    ma.eval(a)
    b = on("llvm", lambda: ma.stop_gradient(a))
    assert np.shares_memory(np.array(b, copy=False), np.array(a, copy=False))


@pytest.mark.parametrize("d", [ma.float32, ma.float16, ma.bfloat16, ma.int32, ma.uint8, ma.bool_, ma.float64],
                         ids=str)
@pytest.mark.parametrize("name", ["argmax", "argmin"])
@pytest.mark.parametrize("axis,keepdims", [(None, False), (0, False), (1, True), (-1, False)])
def test_argmax_argmin(name, d, axis, keepdims):
    rng = np.random.default_rng(5)
    x = rng.integers(-3, 4, size=(4, 6, 23)).astype(np.float32)  # ties: the first one wins
    if d in (ma.float32, ma.float16, ma.float64):
        x[2, 3, 5] = x[2, 3, 9] = np.nan  # the first NaN wins
        x[1, :, 4] = np.inf
    if d is ma.uint8:
        x = np.abs(x)
    agree(lambda: getattr(ma, name)(ma.array(x, dtype=d), axis=axis, keepdims=keepdims))
    agree(lambda: getattr(ma, name)(ma.exp(ma.array(x, dtype=ma.float32)) * -1, axis=axis))


EPILOGUES = {
    "mean": lambda a: ma.mean(a, axis=1),
    "rms": lambda a: ma.sqrt(ma.mean(a * a, axis=-1, keepdims=True) + 1e-5),
    "std_all": lambda a: ma.std(a),
    "two_reductions": lambda a: ma.sum(a, 1) + ma.max(a, 1),
    "logsumexp": lambda a: ma.logsumexp(a, axis=-1),
    "moved_after": lambda a: ma.mean(a, axis=1).T * 2,
    "any_not": lambda a: ma.logical_not(ma.any(a > 1, axis=0)),
}


@pytest.mark.parametrize("d", [ma.float32, ma.bfloat16], ids=str)
@pytest.mark.parametrize("name", list(EPILOGUES))
def test_reductions_with_epilogues(name, d):
    x = np.random.default_rng(6).standard_normal((7, 33, 5)).astype(np.float32)
    agree(lambda: EPILOGUES[name](ma.array(x, dtype=d)))


def test_epilogue_fuses_into_the_reduction_kernel():
    x = ma.array(np.random.default_rng(7).standard_normal((64, 48)).astype(np.float32))
    on("llvm", lambda: ma.sqrt(ma.mean(x * x, axis=-1) + 1e-6))
    plan = executor("llvm").last_plan
    assert len(plan) == 1 and plan[0][0] == "kernel" and "sqrt(add(multiply(sum" in plan[0][1], plan


@pytest.mark.parametrize("features", ["+neon", "+neon,+sve"])
def test_new_kernels_compile_for_aarch64(features, tmp_path):
    from mlxarm.backend.cache import ObjectCache
    from mlxarm.backend.llvm import Compiler
    from mlxarm.codegen import fuse, lower, render_llvm, schedule, target

    old = os.environ.get("MLXARM_DEVICE")
    os.environ["MLXARM_DEVICE"] = "numpy"
    try:
        x = ma.array(np.random.default_rng(8).standard_normal((6, 40)).astype(np.float32))
        xd = ma.array(np.random.default_rng(8).standard_normal((6, 40)))
        ma.eval(x, xd)
        graphs = [ma.argmax(ma.exp(x), axis=1), ma.maximum(xd * 2, 1.0).astype(ma.float16),
                  ma.arcsin(x) + ma.power(x, 0.5), ma.remainder(x, 0.3), ma.floor_divide(x.astype(ma.int32), 3),
                  ma.sqrt(ma.mean(x * x, axis=1) + 1e-5)]
    finally:
        if old is None:
            del os.environ["MLXARM_DEVICE"]
        else:
            os.environ["MLXARM_DEVICE"] = old
    t = target.for_triple("aarch64-unknown-linux-gnu", "generic", features)
    compiler = Compiler(t, ObjectCache(str(tmp_path)))
    for g in graphs:
        order = schedule.toposort([g])
        root = [s.node for s in fuse.plan(order, caps=lower.EVERYTHING) if s.kind == "kernel"][-1]
        kernel, _, _ = lower.lower(root, t.lanes)
        assert compiler.object_code(render_llvm.render(kernel, t))


ROWS = {
    "softmax": lambda a, w, b: ma.softmax(a, axis=-1),
    "rms_norm": lambda a, w, b: ma.fast.rms_norm(a, w, 1e-5),
    "rms_norm_unweighted": lambda a, w, b: ma.fast.rms_norm(a, None, 1e-3),
    "layer_norm": lambda a, w, b: ma.fast.layer_norm(a, w, b, 1e-5),
    "layer_norm_plain": lambda a, w, b: ma.fast.layer_norm(a, None, None, 1e-5),
}


@pytest.mark.parametrize("shape", [(3, 7), (5, 33), (2, 3, 64), (1, 1), (300, 1000)], ids=str)
@pytest.mark.parametrize("name", list(ROWS))
def test_row_kernels(name, shape):
    rng = np.random.default_rng(9)
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    w, b = rng.standard_normal((2, shape[-1])).astype(np.float32)
    if name == "softmax" and shape[0] > 2:
        x[0, 0] = np.nan
        x[1, :] = -np.inf
        x[2, 0] = np.inf
    agree(lambda: ROWS[name](ma.array(x), ma.array(w), ma.array(b)))
    assert executor("llvm").last_plan[-1][1].startswith(f"row_{name.split('_u')[0].split('_p')[0]}")


@pytest.mark.parametrize("d", [ma.float16, ma.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(3, 7), (2, 3, 64), (1, 1, 576)], ids=str)
@pytest.mark.parametrize("name", [n for n in ROWS if n != "softmax"])
def test_half_precision_norms_are_row_kernels(name, shape, d):
    """Norms of float16 and bfloat16 rows (mlx-lm's half-precision models) load and store their dtype
    and compute in float32, as the reference does before rounding (the weight and bias then follow in
    that dtype, as in MLX)."""
    rng = np.random.default_rng(13)
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    w, b = rng.standard_normal((2, shape[-1])).astype(np.float32)
    agree(lambda: ROWS[name](ma.array(x, dtype=d), ma.array(w, dtype=d), ma.array(b, dtype=d)))
    assert any(step[1].startswith("row_") and step[1].endswith(f"_{d.name}")
               for step in executor("llvm").last_plan)


def test_row_kernels_leave_other_softmaxes_to_numpy():
    x = np.random.default_rng(10).standard_normal((4, 6)).astype(np.float32)
    agree(lambda: ma.softmax(ma.array(x), axis=0), kernels=False)  # not the last axis
    agree(lambda: ma.softmax(ma.array(x, dtype=ma.bfloat16), axis=-1), kernels=False)  # half precision


@pytest.mark.parametrize("d", FLOATS, ids=str)
@pytest.mark.parametrize("sa,sb", [((7, 33), (33,)), ((2, 5, 16), (16,)), ((3, 4), (4, 1)),
                                   ((2, 3, 8), (2, 8, 1)), ((4, 0), (0,)), ((64, 300), (300,))], ids=str)
def test_matvec_is_a_fused_reduction(sa, sb, d):
    rng = np.random.default_rng(11)
    a, b = rng.standard_normal(sa).astype(np.float32), rng.standard_normal(sb).astype(np.float32)
    k = a.shape[-1]  # float32 sums of k terms round differently in another order
    agree(lambda: ma.array(a, dtype=d) @ ma.array(b, dtype=d), kernels=False, scale=k)  # then a reshape
    agree(lambda: (ma.array(a, dtype=d) * 2) @ ma.exp(ma.array(b, dtype=d)), kernels=False, scale=10 * k)
    assert "sum[" in executor("llvm").last_plan[0][1] or 0 in sa


def test_matvec_with_an_epilogue():
    rng = np.random.default_rng(12)
    a, b = rng.standard_normal((2, 9, 40)).astype(np.float32), rng.standard_normal((2, 40, 1)).astype(np.float32)
    agree(lambda: ma.maximum(ma.array(a) @ ma.array(b) + 0.5, 0.0))
    assert len(executor("llvm").last_plan) == 1
