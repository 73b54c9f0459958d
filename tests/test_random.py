"""mx.random against real MLX: the generator's bits and every sampler, key by key."""
import numpy as np
import pytest

import mlxarm.core as ma
from mlxarm.core import ops as ma_ops

mlx = pytest.importorskip("mlx.core")

SEEDS = [0, 7, 123456789012, 2**64 - 1]
FLOATS = ["float32", "float16", "bfloat16"]


def _needs(*names):
    missing = [n for n in names if not hasattr(ma_ops, n)]
    return pytest.mark.skipif(bool(missing), reason=f"ops not available yet: {missing}")


def _np(a):
    if a.dtype in (ma.bfloat16, mlx.bfloat16):
        a = a.astype(mlx.float32 if isinstance(a, mlx.array) else ma.float32)
    return np.array(a)


def _call(module, name, args, kwargs, seed):
    kw = dict(kwargs)
    if "dtype" in kw:
        kw["dtype"] = getattr(module, kw["dtype"])
    if seed is not None:
        kw["key"] = module.random.key(seed)
    return getattr(module.random, name)(*args, **kw)


def _assert_same(ours, ref, rtol=0.0):
    """Same shape and dtype; values bit-equal, or within ``rtol`` where the float math differs."""
    assert ours.shape == ref.shape
    assert str(ours.dtype).split(".")[-1] == str(ref.dtype).split(".")[-1]
    a, b = _np(ours), _np(ref)
    if rtol == 0.0:
        np.testing.assert_array_equal(a, b)
    else:
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol / 10)


def check(name, *args, seed=0, rtol=0.0, **kwargs):
    ours = _call(ma, name, args, kwargs, seed)
    ref = _call(mlx, name, args, kwargs, seed)
    _assert_same(ours, ref, rtol)


# --- keys and bits ------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_key(seed):
    k = ma.random.key(seed)
    assert k.dtype == ma.uint32 and k.shape == (2,)
    np.testing.assert_array_equal(np.array(k), np.array(mlx.random.key(seed)))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num", [1, 2, 3, 5, 8])
def test_split(seed, num):
    ours = ma.random.split(ma.random.key(seed), num)
    ref = mlx.random.split(mlx.random.key(seed), num)
    _assert_same(ours, ref)


def test_split_default_and_lazy_key():
    k = ma.random.split(ma.random.key(3), 3)
    assert k._data is None  # recorded, not computed
    check("split", seed=3)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 33])
def test_odd_and_even_word_counts(n):
    # The counter layout differs for odd/even word counts; uniform exposes the raw words.
    for seed in SEEDS:
        check("uniform", shape=(n,), seed=seed)


def test_bits_widths_layout():
    # MLX does not expose bits in Python; its uint8/uint16 bytes are the prefix of the uint32
    # words MLX generates for the same byte count (checked against MLX's uniform words).
    key = ma.random.key(11)
    words = np.array(ma.random.bits((4,), 4, key=key))
    assert np.array_equal(np.array(ma.random.bits((8,), 2, key=key)), words.view(np.uint16))
    assert np.array_equal(np.array(ma.random.bits((16,), 1, key=key)), words.view(np.uint8))
    odd = np.array(ma.random.bits((3,), 4, key=key))
    assert np.array_equal(np.array(ma.random.bits((9,), 1, key=key)), odd.view(np.uint8)[:9])
    ref = np.array(mlx.random.uniform(shape=(4,), key=mlx.random.key(11)))
    np.testing.assert_array_equal(np.minimum(words.astype(np.float32) / np.float32(2**32),
                                             np.nextafter(np.float32(1), np.float32(0))), ref)


def test_bits_errors():
    with pytest.raises(ValueError, match=r"\[bits\] Negative dimensions not allowed."):
        ma.random.bits((-1,), key=ma.random.key(0))
    with pytest.raises(ValueError, match=r"\[bits\] Expected key shape \(2\) but received \(3\)."):
        ma.random.split(ma.array([1, 2, 3], ma.uint32))
    with pytest.raises(ValueError, match=r"\[bits\] Expected key type uint32 but received int32."):
        ma.random.split(ma.array([1, 2]))
    with pytest.raises(ValueError, match=r"Bit width must be in"):
        ma.random.bits((2,), 3, key=ma.random.key(0))
    with pytest.raises(TypeError):
        ma.random.key(-1)


# --- uniform, randint, bernoulli: exact ---------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("seed", SEEDS[:3])
def test_uniform(dtype, seed):
    check("uniform", shape=(3, 4), dtype=dtype, seed=seed)
    check("uniform", -2.5, 3.0, shape=(7,), dtype=dtype, seed=seed)
    check("uniform", shape=(), dtype=dtype, seed=seed)
    check("uniform", 1, 1000, shape=(2, 3, 5), dtype=dtype, seed=seed)


def test_uniform_array_bounds():
    low = np.array([[0.0], [10.0]], np.float32)
    high = np.array([1.0, 2.0, 30.0], np.float32)
    ours = ma.random.uniform(ma.array(low), ma.array(high), (2, 3), key=ma.random.key(5))
    ref = mlx.random.uniform(mlx.array(low), mlx.array(high), (2, 3), key=mlx.random.key(5))
    _assert_same(ours, ref)


def test_uniform_errors():
    with pytest.raises(ValueError, match=r"\[uniform\] Can only generate uniform numbers with real"):
        ma.random.uniform(dtype=ma.int32, key=ma.random.key(0))
    with pytest.raises(ValueError, match=r"Cannot generate random values of shape \(3\) from "
                                         r"broadcasted shape \(2,3\)."):
        ma.random.uniform(low=ma.zeros((2, 3)) if hasattr(ma, "zeros") else ma.array(np.zeros((2, 3))),
                          shape=(3,), key=ma.random.key(0))


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_randint(seed):
    check("randint", 0, 10, shape=(10,), seed=seed)
    check("randint", -5, 1000, shape=(3, 3), dtype="int16", seed=seed)
    check("randint", 0, 256, shape=(20,), dtype="uint8", seed=seed)
    check("randint", -(2**31), 2**31 - 1, shape=(8,), seed=seed)
    check("randint", 3, 4, shape=(4,), dtype="int64", seed=seed)


def test_randint_errors():
    with pytest.raises(ValueError, match=r"\[randint\] randint only accepts integer dtypes and bool."):
        ma.random.randint(0, 3, dtype=ma.float32, key=ma.random.key(0))


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_bernoulli(seed):
    check("bernoulli", seed=seed)
    check("bernoulli", 0.3, shape=(10,), seed=seed)
    check("bernoulli", 1.0, shape=(5,), seed=seed)
    check("bernoulli", 0.0, shape=(5,), seed=seed)
    p = np.linspace(0, 1, 12).astype(np.float32).reshape(3, 4)
    for dt in ("float32", "float16", "bfloat16"):
        ours = ma.random.bernoulli(ma.array(p).astype(getattr(ma, dt)), key=ma.random.key(seed))
        ref = mlx.random.bernoulli(mlx.array(p).astype(getattr(mlx, dt)), key=mlx.random.key(seed))
        _assert_same(ours, ref)


def test_bernoulli_errors():
    with pytest.raises(ValueError, match=r"must be a float type"):
        ma.random.bernoulli(1, key=ma.random.key(0))
    with pytest.raises(ValueError, match=r"Shapes \(2\) and \(3\) cannot be broadcast"):
        ma.random.bernoulli(ma.array(np.zeros(3, np.float32)), shape=(2,), key=ma.random.key(0))


# --- samplers built on erfinv / log -------------------------------------------------------------
# float16/bfloat16 results are bit exact. float32 results go through the elementwise erfinv, erf,
# log and log1p, whose numpy references are accurate but not bit-identical to the libm calls and
# polynomial approximations MLX's CPU backend uses (MLX's erf alone is off by up to ~1e-7), so
# float32 gets a relative tolerance (the random bits and every other step are exact).
# -log(-log(u)) amplifies a 1-ulp log difference near u = 1, hence gumbel's looser bound.

TOL = {"float32": 2e-6, "float16": 0.0, "bfloat16": 0.0}
LOOSE = {"float32": 2e-5, "float16": 0.0, "bfloat16": 0.0}


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("seed", SEEDS[:3])
def test_normal(dtype, seed):
    check("normal", shape=(4, 5), dtype=dtype, seed=seed, rtol=TOL[dtype])
    check("normal", shape=(3,), dtype=dtype, loc=1.5, scale=2.0, seed=seed, rtol=TOL[dtype])


def test_normal_array_loc_scale():
    loc = np.array([0.0, 10.0, -3.0], np.float32)
    ours = ma.random.normal((2, 3), loc=ma.array(loc), scale=0.5, key=ma.random.key(9))
    ref = mlx.random.normal((2, 3), loc=mlx.array(loc), scale=0.5, key=mlx.random.key(9))
    _assert_same(ours, ref, rtol=2e-6)


def test_normal_errors():
    with pytest.raises(ValueError, match=r"\[normal\] Only floating point and complex64"):
        ma.random.normal(dtype=ma.int32, key=ma.random.key(0))


@_needs("view", "squeeze")
def test_normal_complex():
    ours = ma.random.normal((2, 3), dtype=ma.complex64, key=ma.random.key(4))
    ref = mlx.random.normal((2, 3), dtype=mlx.complex64, key=mlx.random.key(4))
    assert ours.dtype == ma.complex64 and ours.shape == ref.shape
    np.testing.assert_allclose(np.array(ours), np.array(ref), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("seed", SEEDS[:3])
def test_gumbel(dtype, seed):
    check("gumbel", shape=(6,), dtype=dtype, seed=seed, rtol=LOOSE[dtype])
    check("gumbel", shape=(2, 3, 4), dtype=dtype, seed=seed, rtol=LOOSE[dtype])


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("seed", SEEDS[:3])
def test_laplace(dtype, seed):
    check("laplace", shape=(6,), dtype=dtype, seed=seed, rtol=TOL[dtype])
    check("laplace", shape=(3, 4), dtype=dtype, loc=0.5, scale=3.0, seed=seed, rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("seed", SEEDS[:3])
def test_truncated_normal(dtype, seed):
    lo, hi = np.full((6,), -1.0, np.float32), np.full((6,), 2.0, np.float32)
    ours = ma.random.truncated_normal(ma.array(lo), ma.array(hi), dtype=getattr(ma, dtype),
                                      key=ma.random.key(seed))
    ref = mlx.random.truncated_normal(mlx.array(lo), mlx.array(hi), dtype=getattr(mlx, dtype),
                                      key=mlx.random.key(seed))
    _assert_same(ours, ref, rtol=LOOSE[dtype])
    assert np.all(_np(ours) >= -1.0) and np.all(_np(ours) <= 2.0)


@pytest.mark.parametrize("fn", ["laplace", "gumbel", "truncated_normal"])
def test_float_only_errors(fn):
    args = (0.0, 1.0) if fn == "truncated_normal" else ()
    with pytest.raises(ValueError):
        getattr(ma.random, fn)(*args, dtype=ma.int32, key=ma.random.key(0))


# --- global key sequence ------------------------------------------------------------------------

@_needs("_getitem")
@pytest.mark.parametrize("seed", [7, 0, 42])
def test_seed_sequence(seed):
    ma.random.seed(seed)
    mlx.random.seed(seed)
    for _ in range(3):
        _assert_same(ma.random.uniform(shape=(5,)), mlx.random.uniform(shape=(5,)))
    _assert_same(ma.random.randint(0, 100, (4,)), mlx.random.randint(0, 100, (4,)))
    _assert_same(ma.random.bernoulli(0.5, (6,)), mlx.random.bernoulli(0.5, (6,)))


@_needs("_getitem")
def test_seed_normal_prints_like_mlx():
    ma.random.seed(7)
    mlx.random.seed(7)
    a, b = ma.random.normal((5,)), mlx.random.normal((5,))
    _assert_same(a, b, rtol=2e-6)
    assert repr(a) == repr(b)


# --- samplers built on other ops ----------------------------------------------------------------

@_needs("argsort", "take")
@pytest.mark.parametrize("seed", SEEDS[:3])
def test_permutation(seed):
    check("permutation", 10, seed=seed)
    check("permutation", 1, seed=seed)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    for axis in (0, 1, -1):
        ours = ma.random.permutation(ma.array(x), axis=axis, key=ma.random.key(seed))
        ref = mlx.random.permutation(mlx.array(x), axis=axis, key=mlx.random.key(seed))
        _assert_same(ours, ref)


@_needs("argmax", "expand_dims", "reshape", "max", "sum", "cumsum", "searchsorted")
@pytest.mark.parametrize("seed", SEEDS[:3])
def test_categorical(seed):
    logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]], np.float32))
    for kwargs in ({}, {"axis": 0}, {"num_samples": 5}, {"shape": (3, 2)}):
        ours = ma.random.categorical(ma.array(logits), key=ma.random.key(seed), **kwargs)
        ref = mlx.random.categorical(mlx.array(logits), key=mlx.random.key(seed), **kwargs)
        _assert_same(ours, ref)
    one = np.array([0.1, 2.0, 0.5, 1.0], np.float32)
    ours = ma.random.categorical(ma.array(one), shape=(9,), key=ma.random.key(seed))
    ref = mlx.random.categorical(mlx.array(one), shape=(9,), key=mlx.random.key(seed))
    _assert_same(ours, ref)


def test_categorical_errors():
    logits = ma.array(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"At most one of shape or num_samples"):
        ma.random.categorical(logits, shape=(2,), num_samples=2, key=ma.random.key(0))
    with pytest.raises(IndexError, match=r"\[categorical\] Invalid axis 2 for logits with 2"):
        ma.random.categorical(logits, axis=2, key=ma.random.key(0))


@_needs("matmul", "expand_dims", "squeeze")
def test_multivariate_normal():
    if not hasattr(ma.linalg, "svd"):
        pytest.skip("linalg.svd not available yet")
    mean = np.array([1.0, -2.0], np.float32)
    cov = np.array([[2.0, 0.5], [0.5, 1.0]], np.float32)
    ours = ma.random.multivariate_normal(ma.array(mean), ma.array(cov), (4,), key=ma.random.key(2))
    ref = mlx.random.multivariate_normal(mlx.array(mean), mlx.array(cov), (4,), key=mlx.random.key(2))
    assert ours.shape == ref.shape and ours.dtype == ma.float32
    # The square root of cov comes from an SVD (LAPACK in both, but not the same build).
    np.testing.assert_allclose(np.array(ours), np.array(ref), rtol=1e-4, atol=1e-5)


def test_multivariate_normal_errors():
    with pytest.raises(ValueError, match=r"dtype must be float32"):
        ma.random.multivariate_normal(ma.array([0.0]), ma.array([[1.0]]), dtype=ma.float16,
                                      key=ma.random.key(0))
    with pytest.raises(ValueError, match=r"mean and cov must have compatible shapes"):
        ma.random.multivariate_normal(ma.array([0.0, 1.0]), ma.array([[1.0]]), key=ma.random.key(0))


def test_registered():
    from mlxarm.core.registry import API, PRIMITIVES

    assert PRIMITIVES["random_bits"].kind == "random"
    for name in ("key", "split", "seed", "bits", "uniform", "normal", "randint", "bernoulli",
                 "categorical", "gumbel", "truncated_normal", "laplace", "permutation",
                 "multivariate_normal"):
        assert ("random", name) in API
        assert getattr(ma.random, name) is API[("random", name)].fn
