"""Type promotion against MLX: dtype pairs, casting rules, categories, machine limits, weak Python
scalars in binary ops and dtype inference in ``mx.array``."""
import numpy as np
import pytest


import mlxarm.core as ma
from mlxarm.core import dtypes as dt

from _matrix import DTYPES, assert_same_array, assert_same_outcome, mlx_dtype

mx = None
pytestmark = pytest.mark.mlx


@pytest.fixture(autouse=True)
def _mlx():
    global mx
    mx = pytest.importorskip("mlx.core")


CATEGORIES = ["complexfloating", "floating", "inexact", "signedinteger", "unsignedinteger", "integer",
              "number", "generic"]


@pytest.mark.parametrize("a", DTYPES, ids=lambda d: d.name)
def test_result_type_every_pair(a):
    for b in DTYPES:
        want = mx.result_type(mlx_dtype(a), mlx_dtype(b))
        assert str(ma.result_type(a, b)) == str(want), (a, b)
        assert str(dt.promote_types(a, b)) == str(want), (a, b)
        arr = mx.array([1], dtype=mlx_dtype(a))
        assert str(ma.result_type(ma.array([1], dtype=a), b)) == str(mx.result_type(arr, mlx_dtype(b)))


def test_result_type_many_and_errors():
    assert str(ma.result_type(ma.int8, ma.uint8, ma.float16)) == str(
        mx.result_type(mx.int8, mx.uint8, mx.float16))
    assert_same_outcome(lambda: ma.result_type(), lambda: mx.result_type())
    assert_same_outcome(lambda: ma.result_type(1, ma.int8), lambda: mx.result_type(1, mx.int8))


@pytest.mark.parametrize("a", DTYPES, ids=lambda d: d.name)
def test_can_cast_every_pair(a):
    for b in DTYPES:
        assert ma.can_cast(a, b) == mx.can_cast(mlx_dtype(a), mlx_dtype(b)), (a, b)
        assert ma.can_cast(ma.array([1], dtype=a), b) == mx.can_cast(mx.array([1], dtype=mlx_dtype(a)),
                                                                     mlx_dtype(b)), (a, b)


def test_can_cast_rejects_scalars():
    assert_same_outcome(lambda: ma.can_cast(1, ma.int8), lambda: mx.can_cast(1, mx.int8))


def test_issubdtype_dtypes_and_categories():
    ours_all = [*DTYPES, *(getattr(ma, c) for c in CATEGORIES)]
    names = [d.name for d in DTYPES] + CATEGORIES
    theirs_all = [*(mlx_dtype(d) for d in DTYPES), *(getattr(mx, c) for c in CATEGORIES)]
    for oa, ta, na in zip(ours_all, theirs_all, names):
        for ob, tb, nb in zip(ours_all, theirs_all, names):
            assert ma.issubdtype(oa, ob) == mx.issubdtype(ta, tb), (na, nb)


def test_isdtype_kinds():
    kinds = ["bool", "signed integer", "unsigned integer", "integral", "real floating",
             "complex floating", "numeric"]
    for d in DTYPES:
        for k in kinds:
            assert ma.isdtype(d, k) == mx.isdtype(mlx_dtype(d), k), (d, k)
        assert ma.isdtype(d, ("bool", "real floating")) == mx.isdtype(mlx_dtype(d), ("bool", "real floating"))


@pytest.mark.parametrize("d", [d for d in DTYPES if d.kind in "fc"], ids=lambda d: d.name)
def test_finfo_fields_and_repr(d):
    o, t = ma.finfo(d), mx.finfo(mlx_dtype(d))
    assert repr(o) == repr(t)
    for field in ("min", "max", "eps", "smallest_normal", "bits"):
        assert getattr(o, field) == getattr(t, field), field
    assert str(o.dtype) == str(t.dtype)


@pytest.mark.parametrize("d", [d for d in DTYPES if d.kind in "iu"], ids=lambda d: d.name)
def test_iinfo_fields_and_repr(d):
    o, t = ma.iinfo(d), mx.iinfo(mlx_dtype(d))
    assert repr(o) == repr(t)
    assert (o.min, o.max) == (t.min, t.max)
    assert str(o.dtype) == str(t.dtype)


@pytest.mark.parametrize("d", [d for d in DTYPES if d.kind not in "fc"], ids=lambda d: d.name)
def test_finfo_rejects_non_inexact(d):
    assert_same_outcome(lambda: ma.finfo(d), lambda: mx.finfo(mlx_dtype(d)))


@pytest.mark.parametrize("d", [d for d in DTYPES if d.kind not in "iu"], ids=lambda d: d.name)
def test_iinfo_rejects_non_integer(d):
    assert_same_outcome(lambda: ma.iinfo(d), lambda: mx.iinfo(mlx_dtype(d)))


# --- weak Python scalars ---------------------------------------------------------------------------------

SCALARS = [True, False, 0, 3, -2, 300, 70000, 2**40, 1.5, -0.25, 1e10, 2j, 1 + 1j]
OPS = ["add", "subtract", "multiply", "maximum", "equal", "less"]


@pytest.mark.parametrize("d", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("op", OPS)
def test_weak_scalar_both_sides(d, op):
    x = np.array([1, 2], dtype=d.np_compute)
    for s in SCALARS:
        for left in (True, False):
            ma_a, mx_a = ma.array(x, dtype=d), mx.array(x, dtype=mlx_dtype(d))
            args_o, args_m = ((ma_a, s), (mx_a, s)) if left else ((s, ma_a), (s, mx_a))
            try:
                theirs = getattr(mx, op)(*args_m)
                mx.eval(theirs)
            except Exception as e:  # noqa: BLE001
                with pytest.raises(type(e)):
                    ma.eval(getattr(ma, op)(*args_o))
                continue
            assert_same_array(getattr(ma, op)(*args_o), theirs, f"{op} {args_m}")


@pytest.mark.parametrize("d", DTYPES, ids=lambda d: d.name)
def test_weak_scalar_operators(d):
    x = np.array([1, 2], dtype=d.np_compute)
    for s in (True, 2, 0.5, 1j):
        for fo, fm in ((lambda a: a + s, lambda a: a + s), (lambda a: s * a, lambda a: s * a),
                       (lambda a: a / s, lambda a: a / s), (lambda a: s - a, lambda a: s - a),
                       (lambda a: a == s, lambda a: a == s)):
            try:
                theirs = fm(mx.array(x, dtype=mlx_dtype(d)))
                mx.eval(theirs)
            except Exception as e:  # noqa: BLE001
                with pytest.raises(type(e)):
                    ma.eval(fo(ma.array(x, dtype=d)))
                continue
            assert_same_array(fo(ma.array(x, dtype=d)), theirs, f"{d.name} with {s!r}")


def test_numpy_scalars_beside_arrays():
    for s in (np.float64(1.5), np.int64(3), np.float16(2), np.int8(-1), np.uint8(3), np.bool_(True)):
        for d in (dt.int8, dt.float16, dt.bool_, dt.int32):
            try:
                theirs = mx.add(mx.array([1], dtype=mlx_dtype(d)), s)
                mx.eval(theirs)
            except Exception as e:  # noqa: BLE001
                with pytest.raises(type(e)):
                    ma.eval(ma.add(ma.array([1], dtype=d), s))
                continue
            assert_same_array(ma.add(ma.array([1], dtype=d), s), theirs, f"{d} + {s!r}")


# --- mx.array dtype inference -----------------------------------------------------------------------------

PY_VALUES = [1, True, 1.5, 1j, -3, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**40, [], [[]],
             [1, 2], [True, False], [1, 2.5], [True, 2], [True, 1.5], [1, 1j], [[1, 2], [3, 4]],
             [2**40, 1], [[1.0], [2]], (1, 2), [(1, 2), (3, 4)], [0.1, 1e-40, 1e40], [-0.0]]


@pytest.mark.parametrize("val", PY_VALUES, ids=repr)
def test_array_from_python(val):
    assert_same_array(ma.array(val), mx.array(val), repr(val))


NP_DTYPES = [np.bool_, np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64,
             np.float16, np.float32, np.float64, np.complex64, np.complex128]


@pytest.mark.parametrize("npdt", NP_DTYPES, ids=lambda t: np.dtype(t).name)
def test_array_from_numpy(npdt):
    for shape in [(), (0,), (3,), (2, 3)]:
        x = (np.arange(int(np.prod(shape))).reshape(shape) % 3).astype(npdt)
        assert_same_array(ma.array(x), mx.array(x), f"{np.dtype(npdt)} {shape}")
        if x.size:
            element = x.flat[0]  # a numpy scalar of that dtype
            assert_same_array(ma.array(element), mx.array(element), f"{np.dtype(npdt)} scalar")
    strided = np.arange(12).astype(npdt).reshape(3, 4)[:, ::2].T
    assert_same_array(ma.array(strided), mx.array(strided), "strided")


@pytest.mark.parametrize("d", DTYPES, ids=lambda d: d.name)
def test_array_with_explicit_dtype(d):
    for val in ([1, 0, 3], [0.5, -1.5], [True, False], 2, 2.5):
        try:
            theirs = mx.array(val, dtype=mlx_dtype(d))
        except Exception as e:  # noqa: BLE001
            with pytest.raises(type(e)):
                ma.array(val, dtype=d)
            continue
        assert_same_array(ma.array(val, dtype=d), theirs, f"{val!r} as {d.name}")


def test_array_from_array_keeps_or_casts_dtype():
    a, b = ma.array([1, 2], dtype=ma.int16), mx.array([1, 2], dtype=mx.int16)
    assert_same_array(ma.array(a), mx.array(b))
    assert_same_array(ma.array(a, dtype=ma.float16), mx.array(b, dtype=mx.float16))
    assert_same_array(ma.array([a, a]), mx.array([b, b]))
