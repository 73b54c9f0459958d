"""Reductions, scans, sorts, products, linalg and fast kernels compared with real MLX: determinants of
every real dtype, LAPACK-style Cholesky failures, einsum_path, gather_mm/block_masked_mm/segmented_mm,
searchsorted, minmax and the array-API aliases, rope/attention validation, attention sinks and
fast.cross_entropy."""
import random

import numpy as np
import pytest

import mlxarm.core as ma

mx = pytest.importorskip("mlx.core")

pytestmark = pytest.mark.mlx

TOL = {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 1e-5, "float64": 1e-10}


def both(fn):
    """fn(lib) on both libraries: (result, exception type name or None) each."""
    out = []
    for lib in (mx, ma):
        try:
            out.append((fn(lib), None))
        except Exception as e:  # noqa: BLE001 - the exception type is what is compared
            out.append((None, e))
    return out


def assert_same(fn, atol=1e-5, rtol=1e-5):
    (r, re), (o, oe) = both(fn)
    if re is not None:
        assert oe is not None, f"MLX raised {re!r}, ours returned"
        assert isinstance(oe, type(re)), (re, oe)
        assert str(oe) == str(re)
        return
    assert oe is None, f"ours raised {oe!r}"
    rs = r if isinstance(r, (tuple, list)) else [r]
    os_ = o if isinstance(o, (tuple, list)) else [o]
    assert len(rs) == len(os_)
    for x, y in zip(rs, os_):
        assert str(x.dtype).split(".")[-1] == str(y.dtype).split(".")[-1]
        assert tuple(x.shape) == tuple(y.shape)
        xv = np.array(x.astype(mx.float32) if x.dtype == mx.bfloat16 else x)
        yv = np.array(y.astype(ma.float32) if y.dtype == ma.bfloat16 else y)
        np.testing.assert_allclose(yv, xv, atol=atol, rtol=rtol, equal_nan=True)


def arr(lib, x, dtype=None):
    a = lib.array(np.asarray(x))
    return a.astype(getattr(lib, dtype)) if dtype else a


# --- determinants ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["bool_", "uint8", "int32", "int64", "float16", "bfloat16", "float32",
                                   "float64"])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_det_and_slogdet_of_every_real_dtype(dtype, n):
    rng = np.random.default_rng(n)
    x = rng.integers(-3, 4, size=(2, n, n)).astype(np.float32)
    if dtype in ("bool_", "uint8"):
        x = np.abs(x)
    tol = max(TOL.get(dtype, 1e-5), 1e-5) * 20
    for op in ("det", "slogdet"):
        assert_same(lambda lib: getattr(lib.linalg, op)(arr(lib, x, dtype), stream=lib.cpu), atol=tol,
                    rtol=tol)


def test_det_errors_and_empty():
    for op in ("det", "slogdet"):
        for x in (np.ones((2, 2), np.complex64), np.ones((3,), np.float32), np.ones((2, 3), np.float32),
                  np.ones((3,), np.complex64), np.ones((0, 0), np.float32), np.ones((2, 0, 0), np.float32)):
            assert_same(lambda lib: getattr(lib.linalg, op)(lib.array(x), stream=lib.cpu))
    assert_same(lambda lib: lib.linalg.det(lib.array([[1e20, 0], [0, 1e20]]), stream=lib.cpu))
    assert_same(lambda lib: lib.linalg.slogdet(lib.array([[0.0, 0.0], [0.0, 0.0]]), stream=lib.cpu))
    assert_same(lambda lib: lib.linalg.det(lib.array([[300.0, 600], [900, 1200]], lib.float16)))


# --- cholesky and tri_inv --------------------------------------------------------------------------

@pytest.mark.parametrize("matrix", [
    [[1.0, 2], [2, 1]],
    [[-1.0, 0], [0, 1]],
    [[4.0, 2, 1], [2, 1, 0], [1, 0, 3]],
    [[[1.0, 2], [2, 1]], [[4.0, 1], [1, 4]]],
    np.random.default_rng(0).standard_normal((6, 6)).tolist(),
])
@pytest.mark.parametrize("upper", [False, True])
def test_cholesky_of_matrices_that_are_not_positive_definite(matrix, upper):
    assert_same(lambda lib: lib.linalg.cholesky(lib.array(matrix), upper=upper, stream=lib.cpu))


def test_cholesky_of_a_singular_product():
    s = np.arange(1.0, 10.0, dtype=np.float32).reshape(3, 3)
    a = s.T @ s / 81
    low = np.array(ma.linalg.cholesky(ma.array(a)))
    np.testing.assert_allclose(low @ low.T, a, rtol=1e-5, atol=1e-6)


def test_tri_inv_zeroes_the_other_triangle():
    x = np.random.default_rng(1).standard_normal((2, 8, 8)).astype(np.float32)
    for upper in (False, True):
        y = np.array(ma.linalg.tri_inv(ma.array(x), upper=upper))
        assert (y == (np.triu(y) if upper else np.tril(y))).all()
        assert_same(lambda lib: lib.linalg.tri_inv(lib.array(x), upper=upper, stream=lib.cpu), atol=1e-3,
                    rtol=1e-3)


# --- einsum_path -------------------------------------------------------------------------------------

def test_einsum_path_matches_mlx_on_random_contractions():
    rng = random.Random(0)
    letters = "abcdefg"
    for _ in range(150):
        dims = {c: rng.randint(1, 6) for c in letters}
        terms = ["".join(rng.sample(letters[:6], rng.randint(1, 4))) for _ in range(rng.randint(1, 5))]
        labels = sorted(set("".join(terms)))
        out = "".join(rng.sample(labels, rng.randint(0, min(3, len(labels)))))
        spec = ",".join(terms) + ("->" + out if rng.random() < 0.7 else "")
        shapes = [[dims[c] for c in t] for t in terms]
        (r, re), (o, oe) = both(lambda lib: lib.einsum_path(spec, *[lib.zeros(s) for s in shapes]))
        assert re is None and oe is None
        assert r == o, spec


@pytest.mark.parametrize("spec,shapes", [
    ("ii", [(5, 5)]), ("ij,jk,kl", [(5, 8), (8, 10), (10, 7)]), ("...ij,...jk", [(2, 3, 4), (4, 5)]),
    ("ab...,bc...,cd", [(2, 3, 5), (3, 4, 5), (4, 2)]), ("ij,jk", [(2, 3), (4, 5)]),
    ("ij,jk", [(2, 3)]),
])
def test_einsum_path_cases_and_errors(spec, shapes):
    (r, re), (o, oe) = both(lambda lib: lib.einsum_path(spec, *[lib.zeros(s) for s in shapes]))
    if re is not None:
        assert isinstance(oe, ValueError)
    else:
        assert r == o


# --- gather_mm, block_masked_mm, segmented_mm ---------------------------------------------------------

def _normal(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("a_shape,b_shape,lhs,rhs", [
    ((1, 8, 4), (3, 4, 5), [0], [2, 1]),
    ((2, 8, 4), (3, 4, 5), None, [2, 1]),
    ((5, 8, 4), (3, 4, 5), [0, 2], [2, 1]),
    ((4, 2, 3, 4), (4, 1, 4, 2), [[7, 6], [5, 4], [1, 2]], [[2], [0], [1]]),
    ((5, 1, 4), (3, 6, 4), [3, 1], [0, 2]),
    ((4,), (3, 4, 5), None, [2, 1]),
    ((2, 3, 4), (4,), [[1], [0]], None),
    ((3, 4), (3, 4, 5), 0, [1, 2]),
    ((2, 3, 4), (3, 4, 5), None, None),
    ((2, 3, 4), (3, 3, 5), [0, 1], None),
])
def test_gather_mm(a_shape, b_shape, lhs, rhs):
    a, b = _normal(*a_shape), _normal(*b_shape, seed=1)
    b_ = b if len(b_shape) > 1 else b

    def run(lib):
        li = None if lhs is None else lib.array(lhs)
        ri = None if rhs is None else lib.array(rhs)
        return lib.gather_mm(lib.array(a), lib.array(b_), li, ri)

    assert_same(run, atol=1e-5)


def test_gather_mm_dtypes_and_index_errors():
    a, b = _normal(2, 3, 4), _normal(2, 4, 5)
    for da, db in [("float16", "float32"), ("bfloat16", "float16"), ("int32", "int32"),
                   ("complex64", "complex64")]:
        assert_same(lambda lib: lib.gather_mm(arr(lib, a, da), arr(lib, b, db), lib.array([1, 0]), None),
                    atol=2e-2, rtol=2e-2)
        assert_same(lambda lib: lib.gather_mm(arr(lib, a, da), arr(lib, b, db)), atol=2e-2, rtol=2e-2)
    # MLX's CPU GatherMM takes float32 only; its GPUs (and mlxarm everywhere) take every real float
    for d in ("float16", "bfloat16", "float64"):
        x, y = arr(ma, a, d), arr(ma, b, d)
        wide = lambda v: np.array(v.astype(ma.float64))  # noqa: E731
        got = ma.gather_mm(x, y, ma.array([1, 0]), None)
        assert got.dtype == getattr(ma, d)
        # accumulated wide and rounded once to the output's precision
        rtol = {"float16": 2 ** -11, "bfloat16": 2 ** -8, "float64": 1e-15}[d]
        np.testing.assert_allclose(wide(got), np.matmul(wide(x)[[1, 0]], wide(y)), rtol=rtol, atol=1e-30)
    assert_same(lambda lib: lib.gather_mm(lib.array(a), lib.array(b), lib.array([0.0, 1.0]), None))


def test_gather_mm_gradients_and_index_gradient_error():
    pytest.importorskip("mlxarm.core.transforms")
    a, b = _normal(4, 2, 3, 3), _normal(4, 1, 3, 3, seed=2)
    lhs, rhs = [[7, 6], [4, 1], [0, 2]], [[2], [0], [1]]

    def grads(lib):
        li, ri = lib.array(lhs, lib.uint32), lib.array(rhs, lib.uint32)
        f = lambda x, y: lib.gather_mm(x, y, li, ri)  # noqa: E731
        out, g = lib.vjp(f, [lib.array(a), lib.array(b)], [lib.ones((3, 2, 3, 3))])
        return out + g

    assert_same(grads, atol=1e-4)

    def index_grad(lib):
        x = lib.ones((4, 1, 2, 2))
        return lib.grad(lambda w: lib.gather_mm(x, x, lib.reshape(lib.argsort(w)[:2], (1, 2)),
                                                lib.reshape(lib.argsort(w)[:2], (1, 2))).sum())(
            lib.array([3.0, 1.0, 2.0, 0.0]))

    with pytest.raises(ValueError, match="stop_gradient"):
        index_grad(ma)


@pytest.mark.parametrize("mask_kind", ["bool", "float"])
@pytest.mark.parametrize("m,n,k,block,batch_a,batch_b", [
    (40, 20, 70, 32, (), ()), (64, 64, 16, 32, (), ()), (1, 64, 64, 32, (1, 2), (2, 2)),
    (70, 1, 64, 64, (), ()),
])
def test_block_masked_mm(mask_kind, m, n, k, block, batch_a, batch_b):
    a, b = _normal(*batch_a, m, k), _normal(*batch_b, k, n, seed=3)
    batch = np.broadcast_shapes(batch_a, batch_b)
    tm, tn, tk = (-(-m // block), -(-n // block), -(-k // block))
    rng = np.random.default_rng(4)

    def mask(*shape):
        x = rng.standard_normal(shape).astype(np.float32)
        return x > 0 if mask_kind == "bool" else np.maximum(x, 0)

    mo, ml, mr = mask(*batch, tm, tn), mask(*batch_a, tm, tk), mask(*batch_b, tk, tn)
    for masks in ((mo, ml, mr), (mo, None, None), (None, ml, mr)):
        assert_same(lambda lib: lib.block_masked_mm(
            lib.array(a), lib.array(b), block, *[None if x is None else lib.array(x) for x in masks]),
            atol=1e-4)


def test_block_masked_mm_dtypes_and_errors():
    a, b = _normal(40, 70), _normal(70, 20)
    mask = np.ones((2, 3), np.float32)
    assert_same(lambda lib: lib.block_masked_mm(arr(lib, a, "float16"), arr(lib, b, "float32"), 32, None,
                                                lib.array(mask)), atol=1e-4)
    assert_same(lambda lib: lib.block_masked_mm(arr(lib, a, "float16"), arr(lib, b, "float16"), 16),
                atol=5e-2, rtol=1e-2)
    for d in ("int32", "complex64"):
        assert_same(lambda lib: lib.block_masked_mm(arr(lib, a, d), arr(lib, b, d), 32))
        assert_same(lambda lib: lib.block_masked_mm(arr(lib, a, d), arr(lib, b, d), 32, None, lib.array(mask)))
    assert_same(lambda lib: lib.block_masked_mm(lib.array(a), lib.array(b), 16, None, lib.array(mask)))
    with pytest.raises(RuntimeError):
        ma.eval(ma.block_masked_mm(arr(ma, a, "float16"), arr(ma, b, "float16"), 32, None, ma.array(mask)))
    assert_same(lambda lib: lib.block_masked_mm(lib.array(a), lib.array(b), 32, lib.ones((3, 1), lib.bool_)))
    assert_same(lambda lib: lib.block_masked_mm(lib.array(a), lib.ones((71, 20)), 32))


@pytest.mark.parametrize("segments", [
    [[0, 2], [2, 6]], [[[0, 2], [2, 6]]], [0, 6], [[3, 1]], [[-2, 2]], [[0, 0], [0, 3], [5, 6]],
])
def test_segmented_mm(segments):
    a, b = _normal(3, 6), _normal(6, 4, seed=5)
    assert_same(lambda lib: lib.segmented_mm(lib.array(a), lib.array(b), lib.array(segments)), atol=1e-5)
    assert_same(lambda lib: lib.segmented_mm(lib.array(a.T.copy()).T, lib.array(b), lib.array(segments)),
                atol=1e-5)


def test_segmented_mm_errors_and_dtypes():
    a, b = _normal(2, 6), _normal(6, 3)
    for segs in ([[0, 2, 3]], [[0.0, 2.0]]):
        assert_same(lambda lib: lib.segmented_mm(lib.array(a), lib.array(b), lib.array(segs)))
    assert_same(lambda lib: lib.segmented_mm(lib.ones((2, 2, 6)), lib.array(b), lib.array([[0, 2]])))
    # MLX's half-precision CPU kernel misplaces every output row after the first: not compared.
    for dtype in ("int32", "complex64", "float64"):
        assert_same(lambda lib: lib.segmented_mm(arr(lib, a, dtype), arr(lib, b, dtype),
                                                 lib.array([[0, 2], [1, 6]])), atol=3e-2, rtol=3e-2)


# --- searchsorted, minmax, aliases, kron, median ------------------------------------------------------

@pytest.mark.parametrize("seq,values,side", [
    ([1, 2, 2, 4], [0.5, 2.0, 3.7], "left"), ([1.0, 2, 2, 4], [0, 1, 2, 3, 5], "right"),
    ([1, 2, float("nan")], [float("nan"), 2.0, float("inf")], "left"),
    ([1, 2, float("nan")], [float("nan")], "right"), ([], [1.0, -1.0], "left"),
    ([1, 3, 4, 7], [4.5], "left"), ([1, 2, 3], [[0, 5], [2, 2]], "right"),
])
def test_searchsorted(seq, values, side):
    assert_same(lambda lib: lib.searchsorted(lib.array(seq), lib.array(values), side=side))


def test_searchsorted_mixed_dtypes_and_errors():
    seq = np.array([1, 2, 2, 4])
    assert_same(lambda lib: lib.searchsorted(arr(lib, seq, "uint8"), lib.array([-1, 300])))
    assert_same(lambda lib: lib.searchsorted(arr(lib, seq, "bfloat16"), arr(lib, [2.0], "float16")))
    assert_same(lambda lib: lib.searchsorted(lib.zeros((3, 4)), lib.array([1.0])))
    assert_same(lambda lib: lib.searchsorted(lib.array(1.0), lib.array([1.0])))
    assert_same(lambda lib: lib.searchsorted(lib.array([1.0]), lib.array([1.0]), side="middle"))
    (_, re), (_, oe) = both(lambda lib: lib.searchsorted(lib.array([1.0]), 2))
    assert isinstance(re, TypeError) and isinstance(oe, TypeError)


def test_minmax_and_array_api_aliases():
    x = _normal(3, 4)
    assert_same(lambda lib: lib.minmax(lib.array(x)))
    assert_same(lambda lib: lib.minmax(lib.array(x), axis=1, keepdims=True))
    assert_same(lambda lib: lib.minmax(lib.array(x), (0, 1)))
    assert ma.cumulative_sum is ma.cumsum and ma.cumulative_prod is ma.cumprod
    assert_same(lambda lib: lib.cumulative_sum(lib.array(x), axis=1, reverse=True))
    assert_same(lambda lib: lib.cumulative_prod(lib.array(x)))
    for kwargs in ({}, {"ord": "fro"}, {"ord": 1, "axis": 1}, {"axis": 0, "keepdims": True}):
        assert_same(lambda lib: lib.matrix_norm(lib.array(x), **kwargs))
    with pytest.raises(IndexError):
        ma.minmax(ma.array(x), axis=3)


def test_kron_of_empty_arrays_and_median_axes():
    assert_same(lambda lib: lib.kron(lib.array([]), lib.array([1, 2])))
    assert_same(lambda lib: lib.kron(lib.array(2), lib.array([1, 2])))
    x = ma.array([0, 1, 2, 3, 4])
    for axis in ((0, 1), 1, -2):
        # MLX 0.32.4 raises IndexError; its test suite expects ValueError: ours is both.
        with pytest.raises(IndexError):
            ma.median(x, axis=axis)
        with pytest.raises(ValueError):
            ma.median(x, axis=axis)


# --- fast ----------------------------------------------------------------------------------------------

def test_rope_validation_and_per_batch_offsets():
    x = np.random.default_rng(6).random((8, 4, 4, 32)).astype(np.float32)
    kw = {"traditional": True, "base": 1e4, "scale": 1.0}
    for dims in (0, -2, 7, 128):
        assert_same(lambda lib: lib.fast.rope(lib.array(x), dims, offset=0, **kw))
    for offset in ([1, 2, 3], [[1]], [1]):
        assert_same(lambda lib: lib.fast.rope(lib.array(x), 32, offset=lib.array(offset), **kw))
    assert_same(lambda lib: lib.fast.rope(lib.array(x), 32, traditional=True, base=None, scale=1.0, offset=0))
    y = np.random.default_rng(7).random((3, 2, 4, 32)).astype(np.float32)
    for traditional in (True, False):
        assert_same(lambda lib: lib.fast.rope(lib.array(y), 16, traditional=traditional, base=1e4, scale=1.0,
                                              offset=lib.array([1, 5, 2])))
    z = np.random.default_rng(8).random((2, 3, 2, 4, 8)).astype(np.float32)
    assert_same(lambda lib: lib.fast.rope(lib.array(z), 8, traditional=False, base=1e4, scale=1.0,
                                          offset=lib.array([1, 5])))


def _qkv(hq=4, hk=2, lq=3, lk=5, d=8, seed=9):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in ((1, hq, lq, d), (1, hk, lk, d), (1, hk, lk, d))]


def test_sdpa_masks_sinks_and_errors():
    q, k, v = _qkv()
    sdpa = lambda lib, **kw: lib.fast.scaled_dot_product_attention(  # noqa: E731
        lib.array(q), lib.array(k), lib.array(v), scale=0.5, **kw)
    assert_same(lambda lib: sdpa(lib, mask=lib.array(False)))
    partly = np.ones((3, 5), bool)
    partly[0] = False
    assert_same(lambda lib: sdpa(lib, mask=lib.array(partly)))
    assert_same(lambda lib: sdpa(lib, sinks=lib.array([1.0, 2, 3, 4])))
    assert_same(lambda lib: sdpa(lib, sinks=lib.array([1.0, 2, 3, 4]), mask="causal"))
    assert_same(lambda lib: sdpa(lib, mask=lib.ones((3, 5), lib.int32)))
    for sinks in (np.ones(5, np.float32), np.ones((), np.float32), np.ones((1, 4), np.float32)):
        assert_same(lambda lib: sdpa(lib, sinks=lib.array(sinks)))
    assert_same(lambda lib: sdpa(lib, mask=lib.ones((2, 1, 4, 1, 5), lib.bool_)))
    assert_same(lambda lib: sdpa(lib, mask="foo"))
    (_, re), (_, oe) = both(lambda lib: sdpa(lib, mask=lib.ones((4, 2, 5), lib.bool_)))
    assert isinstance(re, ValueError) and isinstance(oe, ValueError)
    half = lambda lib, x: lib.array(x).astype(lib.float16)  # noqa: E731
    assert_same(lambda lib: lib.fast.scaled_dot_product_attention(
        half(lib, q), half(lib, k), half(lib, v), scale=1.0, sinks=lib.ones((4,))))
    assert_same(lambda lib: lib.fast.scaled_dot_product_attention(
        half(lib, q), half(lib, k), half(lib, v), scale=1.0, mask=lib.ones((3, 5))))
    assert_same(lambda lib: lib.fast.scaled_dot_product_attention(
        half(lib, q), lib.array(k), lib.array(v), scale=1.0), atol=1e-3, rtol=1e-3)
    assert_same(lambda lib: lib.fast.scaled_dot_product_attention(
        lib.ones((2, 3, 8)), lib.ones((2, 5, 8)), lib.ones((2, 5, 8)), scale=1.0))
    q, k, v = _qkv(hq=3)
    assert_same(lambda lib: lib.fast.scaled_dot_product_attention(
        lib.array(q), lib.array(k), lib.array(v), scale=1.0))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
def test_cross_entropy(dtype):
    logits = _normal(2, 3, 7)
    targets = np.random.default_rng(10).integers(0, 7, (2, 3))
    tol = 1e-5 if dtype in ("float32", "float64") else 2e-2
    assert_same(lambda lib: lib.fast.cross_entropy(arr(lib, logits, dtype), lib.array(targets)), atol=tol,
                rtol=tol)


def test_cross_entropy_errors_and_kernels_without_a_gpu():
    logits = _normal(2, 3)
    for targets in ([1], [[1], [2]], 1, [0.0, 1.0]):
        assert_same(lambda lib: lib.fast.cross_entropy(lib.array(logits), lib.array(targets)))
    assert_same(lambda lib: lib.fast.cross_entropy(lib.array(logits).astype(lib.int32), lib.array([0, 1])))
    assert_same(lambda lib: lib.fast.cross_entropy(lib.array(1.0), lib.array(1)))
    assert_same(lambda lib: lib.fast.metal_kernel(name="k", input_names=["a"], output_names=["b"], source="")(
        inputs=[lib.ones(3)], grid=(3, 1, 1), threadgroup=(3, 1, 1), output_shapes=[(3,)],
        output_dtypes=[lib.float32]))
    assert_same(lambda lib: lib.fast.cuda_kernel(name="k", input_names=["a"], output_names=["b"], source=""))


@pytest.mark.parametrize("sa,sb,axis", [
    ((2, 3), (3,), -1), ((2, 3), (1, 3), -1), ((2, 3), (4, 1, 3), -1), ((2, 3), (3,), 0), ((3, 2), (3,), 0),
    ((3, 2), (3, 1), 0), ((3, 2), (3,), 1), ((2, 3), (2,), 0), ((2,), (), -1), ((2,), (2,), 1),
    ((1, 2), (2, 1), -3), ((2,), (1,), -1), ((2, 1, 3), (1, 4, 3), -1),
])
def test_vecdot_shapes_and_errors(sa, sb, axis):
    a, b = _normal(*sa), _normal(*sb, seed=11)
    assert_same(lambda lib: lib.vecdot(lib.array(a), lib.array(b), axis=axis))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("with_state,with_mask", [(False, False), (True, False), (True, True), (False, True)])
def test_gated_delta_update(dtype, with_state, with_mask):
    rng = np.random.default_rng(12)
    b, t, hk, hv, dk, dv = 2, 5, 2, 4, 3, 6
    q, k = rng.standard_normal((b, t, hk, dk)), rng.standard_normal((b, t, hk, dk))
    v = rng.standard_normal((b, t, hv, dv))
    gamma, beta = rng.uniform(0.5, 1, (b, t, hv)), rng.uniform(0, 1, (b, t, hv))
    state = rng.standard_normal((b, hv, dv, dk)).astype(np.float32) if with_state else None
    mask = rng.random((b, t)) < 0.6 if with_mask else None

    def run(lib):
        xs = [arr(lib, x.astype(np.float32), dtype) for x in (q, k, v, gamma, beta)]
        out = lib.fast.gated_delta_update(*xs, None if state is None else lib.array(state),
                                          None if mask is None else lib.array(mask))
        assert isinstance(out, list)
        return out

    assert_same(run, atol=1e-5)
