"""Reductions (sum, prod, max, min, all, any, argmax, argmin, mean, var, std, logsumexp, median,
count_nonzero) against real MLX: values, dtypes, shapes, errors, over every dtype."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import mlxarm.core as mx

mlx = pytest.importorskip("mlx.core")

DTYPES = ["bool_", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
          "float16", "float32", "float64", "bfloat16", "complex64"]
TOL = {"float16": 2e-2, "bfloat16": 5e-2, "complex64": 1e-4}
REDUCTIONS = ["sum", "prod", "max", "min", "all", "any", "mean", "var", "std", "logsumexp", "median",
              "count_nonzero"]


def values(rng, dtype, shape):
    if dtype == "bool_":
        return rng.random(shape) < 0.5
    if dtype.startswith(("uint", "int")):
        return rng.integers(0 if dtype.startswith("u") else -3, 4, size=shape).astype(dtype)
    if dtype == "complex64":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    return rng.standard_normal(shape).astype(np.float32)


def both(x, dtype):
    if x.size == 0:
        # MLX reduces an empty array made from numpy data inconsistently; mx.zeros gives its real rule.
        return mx.zeros(x.shape, getattr(mx, dtype)), mlx.zeros(x.shape, getattr(mlx, dtype))
    return mx.array(x).astype(getattr(mx, dtype)), mlx.array(x).astype(getattr(mlx, dtype))


def as_numpy(r, lib):
    if r.dtype == lib.bfloat16:
        r = r.astype(lib.float32)
    return np.array(r)


def same(ours, ref, dtype="float32"):
    assert str(ours.dtype) == str(ref.dtype)
    assert ours.shape == ref.shape
    o, r = as_numpy(ours, mx), as_numpy(ref, mlx)
    tol = TOL.get(dtype, 1e-5)
    if o.dtype.kind in "fc":
        np.testing.assert_allclose(o, r, rtol=tol, atol=tol, equal_nan=True)
    else:
        np.testing.assert_array_equal(o, r)


def outcome(fn):
    try:
        return fn(), None
    except Exception as e:  # compared by type and message
        return None, e


def same_outcome(f_ours, f_ref, dtype="float32"):
    o, oe = outcome(f_ours)
    r, re = outcome(f_ref)
    if re is not None or oe is not None:
        assert type(oe) is type(re) or isinstance(oe, type(re)), (oe, re)
        assert str(oe).split("\n")[0] == str(re).split("\n")[0]
        return
    same(o, r, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", REDUCTIONS + ["argmax", "argmin"])
def test_every_dtype(op, dtype):
    rng = np.random.default_rng(0)
    a, b = both(values(rng, dtype, (3, 4, 5)), dtype)
    axes = [None, 0, -1, 2] if op.startswith("arg") else [None, 0, -1, (0, 2), [1, 2], ()]
    for axis in axes:
        for keepdims in (False, True):
            same_outcome(lambda: getattr(mx, op)(a, axis=axis, keepdims=keepdims),
                         lambda: getattr(mlx, op)(b, axis=axis, keepdims=keepdims), dtype)


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(0, 4), min_size=0, max_size=4), data=st.data(),
       op=st.sampled_from(REDUCTIONS + ["argmax", "argmin"]),
       dtype=st.sampled_from(["int32", "float32", "bool_", "float16", "uint8"]))
def test_shapes_and_axes(shape, data, op, dtype):
    nd = len(shape)
    if op.startswith("arg"):
        axis = data.draw(st.one_of(st.none(), st.integers(-nd - 1, nd)))
    else:
        axis = data.draw(st.one_of(st.none(), st.integers(-nd - 1, nd),
                                   st.lists(st.integers(-nd - 1, nd), max_size=3)))
    keepdims = data.draw(st.booleans())
    if op.startswith("arg") and nd == 0 and keepdims:
        return  # MLX fails internally here ("cannot create std::vector larger than max_size()")
    a, b = both(values(np.random.default_rng(1), dtype, tuple(shape)), dtype)
    same_outcome(lambda: getattr(mx, op)(a, axis=axis, keepdims=keepdims),
                 lambda: getattr(mlx, op)(b, axis=axis, keepdims=keepdims), dtype)


@pytest.mark.parametrize("op", ["var", "std"])
@pytest.mark.parametrize("ddof", [0, 1, 2, 5, 6, -1])
def test_ddof(op, ddof):
    x = np.arange(6, dtype=np.float32).reshape(2, 3) ** 2
    for axis in (None, 0, 1):
        same(getattr(mx, op)(mx.array(x), axis=axis, ddof=ddof), getattr(mlx, op)(mlx.array(x), axis=axis, ddof=ddof))


SPECIALS = [
    [1.0, np.nan, 3.0], [np.inf, 1.0], [-np.inf, -np.inf], [np.inf, -np.inf], [np.inf, np.inf],
    [np.nan, np.nan], [0.0, -0.0], [1e6 + 1, 1e6 + 2, 1e6 + 4],
]


@pytest.mark.parametrize("vals", SPECIALS)
@pytest.mark.parametrize("op", REDUCTIONS + ["argmax", "argmin"])
def test_special_values(op, vals):
    x = np.array(vals, np.float32)
    same_outcome(lambda: getattr(mx, op)(mx.array(x)), lambda: getattr(mlx, op)(mlx.array(x)))


@pytest.mark.parametrize("shape,axis", [((0, 3), 0), ((0, 3), 1), ((3, 0), 1), ((3, 0), 0), ((0, 0), 0),
                                        ((0,), None), ((2, 0), None)])
@pytest.mark.parametrize("op", REDUCTIONS + ["argmax", "argmin"])
def test_empty(op, shape, axis):
    a, b = mx.zeros(shape), mlx.zeros(shape)
    same_outcome(lambda: getattr(mx, op)(a, axis=axis), lambda: getattr(mlx, op)(b, axis=axis))


def test_accumulation_dtypes_and_overflow():
    cases = [([200, 100], "uint8"), ([100, 100], "int8"), ([2**31 - 1, 5], "int32"), ([2**32 - 1, 5], "uint32"),
             ([True, True], "bool_")]
    for vals, d in cases:
        for op in ("sum", "prod"):
            a = mx.array(vals, dtype=getattr(mx, d))
            b = mlx.array(vals, dtype=getattr(mlx, d))
            same(getattr(mx, op)(a), getattr(mlx, op)(b))
    # half precision accumulates in float32
    x = np.full(10000, 0.1, np.float32)
    for d in ("float16", "bfloat16"):
        same(mx.sum(mx.array(x).astype(getattr(mx, d))), mlx.sum(mlx.array(x).astype(getattr(mlx, d))), d)


@pytest.mark.parametrize("call", [
    "sum(a, axis=2)", "sum(a, axis=-3)", "sum(a, axis=(0, 0))", "sum(a, axis=[0, -2])", "argmax(a, axis=2)",
    "argmax(a, axis=(0,))", "mean(a, axis=5)", "var(a, axis=(0, 0))", "median(a, axis=(0, 0))", "median(a, axis=-3)",
    "median(a, axis=())", "logsumexp(a, axis=5)", "count_nonzero(a, axis=5)", "sum(a, axis=1.0)", "mean(a, axis=(0, 0, 5))",
    "sum(a, 1, True)", "count_nonzero(a, 1)", "sum(a, axis=True)", "sum([1, 2])", "mean(3)",
])
def test_errors_and_arguments(call):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    same_outcome(lambda: eval("lib." + call, {"lib": mx, "a": mx.array(x)}),
                 lambda: eval("lib." + call, {"lib": mlx, "a": mlx.array(x)}))


def test_complex_ordering():
    x = np.array([1 + 2j, 1 + 3j, 0 + 5j, 1 + 0j], np.complex64)
    for op in ("max", "min", "argmax", "argmin", "median", "var", "logsumexp"):
        same(getattr(mx, op)(mx.array(x)), getattr(mlx, op)(mlx.array(x)), "complex64")


def test_methods_and_laziness():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    a, b = mx.array(x), mlx.array(x)
    same(a.sum(1), b.sum(1))
    same(a.max(axis=0, keepdims=True), b.max(axis=0, keepdims=True))
    same(a.std(ddof=1), b.std(ddof=1))
    same(a.logsumexp(), b.logsumexp())
    same(a.argmin(1), b.argmin(1))
    out = mx.sum(a, axis=0)
    assert out._data is None  # recorded, not computed
