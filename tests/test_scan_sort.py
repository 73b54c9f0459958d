"""Scans (cumsum, cumprod, cummax, cummin, logcumsumexp) and sorting (sort, argsort, partition,
argpartition, topk, unique) against real MLX over every dtype."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import mlxarm.core as mx
from test_reduction import DTYPES, both, same, same_outcome, values

mlx = pytest.importorskip("mlx.core")

SCANS = ["cumsum", "cumprod", "cummax", "cummin", "logcumsumexp"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", SCANS)
def test_scans_every_dtype(op, dtype):
    a, b = both(values(np.random.default_rng(0), dtype, (3, 5)), dtype)
    for axis in (None, 0, 1, -1):
        for reverse in (False, True):
            for inclusive in (False, True):
                kw = dict(axis=axis, reverse=reverse, inclusive=inclusive)
                same_outcome(lambda: getattr(mx, op)(a, **kw), lambda: getattr(mlx, op)(b, **kw), dtype)


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(0, 4), max_size=3), data=st.data(), op=st.sampled_from(SCANS),
       dtype=st.sampled_from(["int8", "float32", "bool_", "uint8"]))
def test_scans_shapes(shape, data, op, dtype):
    nd = len(shape)
    axis = data.draw(st.one_of(st.none(), st.integers(-nd - 1, nd)))
    kw = dict(axis=axis, reverse=data.draw(st.booleans()), inclusive=data.draw(st.booleans()))
    a, b = both(values(np.random.default_rng(2), dtype, tuple(shape)), dtype)
    same_outcome(lambda: getattr(mx, op)(a, **kw), lambda: getattr(mlx, op)(b, **kw), dtype)


@pytest.mark.parametrize("vals", [[1.0, np.nan, 3.0], [-np.inf, -np.inf, 1.0, np.inf], [np.inf, np.inf]])
@pytest.mark.parametrize("op", SCANS)
def test_scans_special(op, vals):
    x = np.array(vals, np.float32)
    for reverse in (False, True):
        same(getattr(mx, op)(mx.array(x), reverse=reverse), getattr(mlx, op)(mlx.array(x), reverse=reverse))


def test_cumsum_dtype_argument_and_overflow():
    same(mx.cumsum(mx.array([1, 2], dtype=mx.int8), dtype=mx.float32),
         mlx.cumsum(mlx.array([1, 2], dtype=mlx.int8), dtype=mlx.float32))
    same(mx.cumsum(mx.array([100, 100], dtype=mx.int8)), mlx.cumsum(mlx.array([100, 100], dtype=mlx.int8)))
    same(mx.cumprod(mx.array([True, False]), dtype=mx.int32), mlx.cumprod(mlx.array([True, False]), dtype=mlx.int32))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sort_argsort_every_dtype(dtype):
    x = values(np.random.default_rng(3), dtype, (4, 7))
    a, b = both(x, dtype)
    for axis in (None, 0, -1):
        same(mx.sort(a, axis=axis), mlx.sort(b, axis=axis), dtype)
        same(mx.argsort(a, axis=axis), mlx.argsort(b, axis=axis), dtype)  # stable: ties by index


def test_sort_nan_and_complex():
    x = np.array([3.0, np.nan, 1.0, -np.inf, np.nan, np.inf, -0.0, 0.0], np.float32)
    same(mx.sort(mx.array(x)), mlx.sort(mlx.array(x)))
    same(mx.argsort(mx.array(x)), mlx.argsort(mlx.array(x)))
    z = np.array([1 + 2j, 1 + 3j, 0 + 5j, 1 + 0j], np.complex64)
    same(mx.sort(mx.array(z)), mlx.sort(mlx.array(z)), "complex64")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["partition", "argpartition"])
def test_partition_properties(op, dtype):
    x = values(np.random.default_rng(4), dtype, (3, 8))
    a, b = both(x, dtype)
    for kth in (0, 3, -1):
        for axis in (-1, 0, None):
            if axis == 0 and kth == 3:
                continue
            o, r = getattr(mx, op)(a, kth, axis=axis), getattr(mlx, op)(b, kth, axis=axis)
            assert str(o.dtype) == str(r.dtype) and o.shape == r.shape
            if op == "argpartition":  # indices: compare the values they select
                src_o = a if axis is not None else a.reshape(-1)
                src_r = b if axis is not None else b.reshape(-1)
                ax = -1 if axis is None else axis
                o = mx.take_along_axis(src_o, o, axis=ax) if hasattr(mx, "take_along_axis") else None
                r = mlx.take_along_axis(src_r, r, axis=ax)
                if o is None:
                    continue
            ax = -1 if axis is None else axis
            same(mx.sort(o, axis=ax), mlx.sort(r, axis=ax), dtype)
            k = kth % o.shape[ax]
            same(mx.take(o, mx.array([k]), axis=ax) if hasattr(mx, "take") else mx.sort(o, axis=ax),
                 mlx.take(r, mlx.array([k]), axis=ax) if hasattr(mx, "take") else mlx.sort(r, axis=ax), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_properties(dtype):
    a, b = both(values(np.random.default_rng(5), dtype, (3, 8)), dtype)
    for k in (0, 1, 3, 8):
        for axis in (-1, None):
            same(mx.sort(mx.topk(a, k, axis=axis)), mlx.sort(mlx.topk(b, k, axis=axis)), dtype)


@pytest.mark.parametrize("call", [
    "sort(a, axis=2)", "argsort(a, axis=-3)", "partition(a, 5)", "argpartition(a, 3)", "partition(a, -3)",
    "topk(a, 4)", "topk(a, -1)", "sort(a, axis=[0])", "partition(a, 1.0)", "cumsum(a, axis=2)",
    "cummax(a, axis=-3)", "cumsum(a, axis=[0])", "sort(mx0)", "topk(mx0, 1)", "cumsum(mx0)", "cumsum(mx0, axis=0)",
    "sort([3, 1])", "unique(a, -1)", "unique(a, 2.0)", "unique(empty, 3)", "unique(a, 3, fill_value=arr2)",
    "unique(ua, 3, fill_value=1000)",
])
def test_errors(call):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)

    def env(lib):
        return {"lib": lib, "a": lib.array(x), "mx0": lib.array(3.0), "empty": lib.zeros((0,)),
                "arr2": lib.array([7, 8]), "ua": lib.array([1, 2], dtype=lib.uint8)}
    same_outcome(lambda: eval("lib." + call, env(mx)), lambda: eval("lib." + call, env(mlx)))


UNIQUE_INPUTS = [
    ([2, 1, 2, 3, 1], "int32"), ([3.0, np.nan, 1.0, np.nan], "float32"), ([-0.0, 0.0], "float32"),
    ([0.0, -0.0], "float32"), ([True, False, True], "bool_"), ([1 + 1j, 1 + 0j, 1 + 1j], "complex64"),
    ([[3, 1], [2, 1]], "int32"), ([1.0, 2.0, 1.0], "bfloat16"), (5, "int32"),
]


@pytest.mark.parametrize("vals,dtype", UNIQUE_INPUTS)
@pytest.mark.parametrize("size", [0, 1, 2, 3, 6])
@pytest.mark.parametrize("fill", [None, 7])
def test_unique(vals, dtype, size, fill):
    a = mx.array(vals).astype(getattr(mx, dtype))
    b = mlx.array(vals).astype(getattr(mlx, dtype))
    o = mx.unique(a, size, True, True, True, fill_value=fill)
    r = mlx.unique(b, size, True, True, True, fill_value=fill)
    for oo, rr in zip(o, r):
        same(oo, rr, dtype)
    same(mx.unique(a, size, fill_value=fill), mlx.unique(b, size, fill_value=fill), dtype)
    same(mx.unique(a, size, return_inverse=True)[1], mlx.unique(b, size, return_inverse=True)[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_unique_every_dtype(dtype):
    a, b = both(values(np.random.default_rng(6), dtype, (4, 5)), dtype)
    for size in (3, 20, 25):
        for oo, rr in zip(mx.unique(a, size, True, True, True), mlx.unique(b, size, True, True, True)):
            same(oo, rr, dtype)


def test_methods():
    x = np.array([[3.0, 1.0, 2.0], [0.0, 5.0, 4.0]], np.float32)
    a, b = mx.array(x), mlx.array(x)
    same(a.cumsum(1), b.cumsum(1))
    same(a.cummax(0, reverse=True), b.cummax(0, reverse=True))
    same(a.logcumsumexp(), b.logcumsumexp())
