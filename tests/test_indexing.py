"""Indexing against real MLX: getitem, setitem, .at updates, take/put along axes, dynamic slices."""
import numpy as np
import pytest

import mlxarm.core as mx
from mlxarm.core import dtypes as dt
from mlxarm.core.registry import PRIMITIVES

mlx = pytest.importorskip("mlx.core")

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


def _values(x):
    return np.array(x.astype(mlx.float32) if x.dtype == mlx.bfloat16 else x)


def _ours(x):
    return np.array(x.astype(mx.float32) if x.dtype == mx.bfloat16 else x)


def assert_same(ours, ref):
    assert ours.shape == tuple(ref.shape)
    assert ours.dtype.name == str(ref.dtype).split(".")[-1]
    np.testing.assert_array_equal(_ours(ours), _values(ref))


def both(shape=(2, 3, 4, 5), dtype="int32"):
    x = np.arange(int(np.prod(shape))).reshape(shape)
    return mx.array(x).astype(getattr(mx, dtype)), mlx.array(x).astype(getattr(mlx, dtype))


def raises_like(fn_ours, fn_ref):
    with pytest.raises(Exception) as ref:
        fn_ref()
    with pytest.raises(type(ref.value)) as ours:
        fn_ours()
    assert str(ours.value) == str(ref.value)


# --- getitem ---------------------------------------------------------------------------------------

# Each index is a function of the module, so array indices are built with that module's array type.
GET_INDICES = [
    lambda m: 1, lambda m: -1, lambda m: (1, 2), lambda m: (0, -1, 2, -3), lambda m: slice(None),
    lambda m: slice(1, None), lambda m: (slice(None), slice(None, None, -1)),
    lambda m: (Ellipsis, 1), lambda m: (1, Ellipsis, slice(1, 3)), lambda m: None,
    lambda m: (None, 1, None), lambda m: (slice(None), None, 2), lambda m: Ellipsis, lambda m: (),
    lambda m: (slice(0, 10, 3), slice(-10, 2)), lambda m: (slice(None, None, -2), 0, slice(3, 0, -1)),
    lambda m: (slice(5, 1),), lambda m: m.array([1, 0, 1]), lambda m: m.array([[0, 1], [1, -1]]),
    lambda m: [1, 0], lambda m: (slice(None), [0, 2]), lambda m: (slice(None), [0, 1], slice(None), [1, 2]),
    lambda m: (slice(None), [0, 1], [1, 2]), lambda m: (0, slice(None), [1, 2]),
    lambda m: (slice(None), 0, slice(None), [1, 2]), lambda m: ([0, 1], 0, slice(None), [1, 2]),
    lambda m: (None, [0, 1], None, slice(None), [1, 2]), lambda m: (Ellipsis, [0, 1], None, [1, 2]),
    lambda m: m.array(1), lambda m: (m.array(1), m.array(2)), lambda m: (m.array(1), slice(None), m.array(2)),
    lambda m: (slice(None), m.array(1), slice(None), m.array([2, 3])),
    lambda m: (slice(None), [[0], [1]], slice(1, 3), [0, 1, 2]), lambda m: (1, slice(None), [[0], [1]], 2),
    lambda m: ([0, 1], slice(1, 2), 1), lambda m: (slice(None), 1, [0, 1], 1),
    lambda m: (1, Ellipsis, [0, 1]), lambda m: (m.array([0, 1], dtype=m.uint8), slice(None, None, -1)),
    lambda m: (m.array([1, 0], dtype=m.int64), None), lambda m: (m.array([], dtype=m.int32),),
    lambda m: (slice(1, 1),), lambda m: ([0], Ellipsis, None), lambda m: (slice(None), m.array([[-1]])),
]


@pytest.mark.parametrize("make", GET_INDICES)
def test_getitem_matches_mlx(make):
    ours, ref = both()
    assert_same(ours[make(mx)], ref[make(mlx)])


@pytest.mark.parametrize("dtype", ["bool_", "uint8", "int16", "float16", "bfloat16", "complex64", "float64"])
def test_getitem_dtypes(dtype):
    ours, ref = both((3, 4), dtype)
    for make in (lambda m: (slice(None, None, -1), 1), lambda m: (m.array([2, 0]), slice(1, 3))):
        assert_same(ours[make(mx)], ref[make(mlx)])


def test_scalar_array_indexing():
    ours, ref = mx.array(3), mlx.array(3)
    for idx in [(), None, Ellipsis, (None, Ellipsis)]:
        assert_same(ours[idx], ref[idx])


def test_basic_slicing_records_a_view():
    a = mx.array(np.arange(24, dtype=np.float32).reshape(4, 6))
    mx.eval(a)
    b = a[1:3, ::2]
    assert b._prim.kind == "movement"
    mx.eval(b)
    assert np.shares_memory(b._data, a._data)


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(st.lists(st.one_of(
    st.builds(slice, st.one_of(st.none(), st.integers(-7, 7)), st.one_of(st.none(), st.integers(-7, 7)),
              st.one_of(st.none(), st.integers(-3, 3).filter(bool))),
    st.integers(-3, 2), st.none()), max_size=4))
def test_hypothesis_slices_get_and_set(entries):
    idx = tuple(entries)
    ours, ref = both((3, 4, 5))
    try:
        expected = ref[idx]
    except ValueError:
        with pytest.raises(ValueError):
            ours[idx]
        return
    assert_same(ours[idx], expected)
    np.testing.assert_array_equal(np.array(ours[idx]), np.arange(60).reshape(3, 4, 5)[idx])
    ours[idx] = -1
    ref[idx] = -1
    assert_same(ours, ref)


GET_ERRORS = [
    lambda m: 1.0, lambda m: "a", lambda m: True, lambda m: (0, 0, 0, 0, 0), lambda m: (Ellipsis, Ellipsis),
    lambda m: ((0, 2),), lambda m: m.array([True, False]), lambda m: [True, False],
    lambda m: m.array([1.0]), lambda m: [], lambda m: np.array([0, 1]), lambda m: (1, 9),
    lambda m: (slice(1.0, 2),), lambda m: ([0, 1], [0, 1, 2]),
]


@pytest.mark.parametrize("make", GET_ERRORS)
def test_getitem_errors_match_mlx(make):
    ours, ref = both((2, 3, 4))
    raises_like(lambda: ours[make(mx)], lambda: ref[make(mlx)])


def test_getitem_zero_dim_errors():
    raises_like(lambda: mx.array(3)[0], lambda: mlx.array(3)[0])
    raises_like(lambda: mx.array(3)[:], lambda: mlx.array(3)[:])
    raises_like(lambda: mx.array(3)[0,], lambda: mlx.array(3)[0,])


# --- setitem ----------------------------------------------------------------------------------------

SET_CASES = [
    (lambda m: 0, lambda m: 5),
    (lambda m: -1, lambda m: m.array([1, 2, 3, 4])),
    (lambda m: (slice(None), 1), lambda m: 7.5),
    (lambda m: slice(None, None, -1), lambda m: m.arange(3).reshape(3, 1)),
    (lambda m: (slice(0, 2), None), lambda m: m.ones((2, 1, 4))),
    (lambda m: 0, lambda m: m.ones((1, 1, 4))),
    (lambda m: m.array([0, 0, 1]), lambda m: m.array([[1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]])),
    (lambda m: [0, 2], lambda m: 3),
    (lambda m: (0, [0, 2]), lambda m: m.array([8, 9])),
    (lambda m: (slice(None), m.array([3, -1, 0])), lambda m: m.array([10, 20, 30])),
    (lambda m: (m.array([[0], [2]]), m.array([1, 3])), lambda m: m.array([[1, 2], [3, 4]])),
    (lambda m: Ellipsis, lambda m: 3), (lambda m: None, lambda m: 4), (lambda m: (), lambda m: 1),
    (lambda m: 5, lambda m: 1), (lambda m: (1, 9), lambda m: 1),
    (lambda m: (slice(None), 1), lambda m: np.array([1, 2, 3])),
    (lambda m: m.array([True, False, True]), lambda m: 5),
    (lambda m: m.array([True, False, True]), lambda m: m.array([[1., 2, 3, 4], [5, 6, 7, 8]])),
    (lambda m: m.array([True, False, True]), lambda m: m.array([1., 2, 3, 4])),
    (lambda m: m.array([True, False, True]), lambda m: m.array([[1.], [2.]])),
    (lambda m: m.array([[True, False, True, True]] * 3), lambda m: m.arange(9)),
    (lambda m: m.array(True), lambda m: 2), (lambda m: [True, False, True], lambda m: 1),
    (lambda m: np.array([True, False, True]), lambda m: 1),
]


@pytest.mark.parametrize("dtype", ["float32", "int32", "bfloat16"])
@pytest.mark.parametrize("make_idx,make_val", SET_CASES)
def test_setitem_matches_mlx(make_idx, make_val, dtype):
    ours, ref = both((3, 4), dtype)
    ours[make_idx(mx)] = make_val(mx)
    ref[make_idx(mlx)] = make_val(mlx)
    assert_same(ours, ref)


def test_setitem_casts_and_keeps_other_references():
    ours, ref = both((3,), "int32")
    keep = ours
    ours[0] = 2.7
    ref[0] = 2.7
    assert keep is ours
    assert_same(ours, ref)
    z = mx.zeros((3,))
    z[0] = 1 + 2j
    assert z.tolist() == [1, 0, 0]


def test_setitem_update_of_the_region_shape_is_written_as_it_is():
    """An update already shaped as the region (a KV cache's, each decode step) is the slice update's
    input itself, with no reshape or broadcast node between; other shapes still broadcast."""
    base = np.arange(96, dtype=np.float32).reshape(1, 3, 8, 4)
    a = mx.array(base)
    u = mx.array(np.full((1, 3, 1, 4), -1, np.float32))
    a[..., 2:3, :] = u
    assert a._prim.name == "slice_update" and a._inputs[1] is u
    want = base.copy()
    want[..., 2:3, :] = -1
    np.testing.assert_array_equal(np.array(a), want)
    b = mx.array(base)
    b[..., 2:3, :] = mx.array(np.full((3, 1, 1), -2, np.float32))
    want[..., 2:3, :] = -2
    np.testing.assert_array_equal(np.array(b), want)


def test_setitem_duplicates_last_wins():
    ours, ref = both((3,), "float32")
    ours[mx.array([0, 0, 0, 1])] = mx.array([1., 2., 3., 4.])
    ref[mlx.array([0, 0, 0, 1])] = mlx.array([1., 2., 3., 4.])
    assert_same(ours, ref)


SET_ERRORS = [
    (lambda m: 0, lambda m: m.ones((2, 4))),
    (lambda m: m.array([0]), lambda m: m.ones((3, 4))),
    (lambda m: 1.0, lambda m: 3),
    (lambda m: np.array([0]), lambda m: 3),
    (lambda m: 0, lambda m: "a"),
    (lambda m: 0, lambda m: [1, 2]),
    (lambda m: m.array([True, False]), lambda m: 1),
    (lambda m: m.array([1.0, 2.0]), lambda m: 1),
    (lambda m: (0, 0, 0), lambda m: 1),
    (lambda m: m.array([True, False, True]), lambda m: m.arange(10)),
]


@pytest.mark.parametrize("make_idx,make_val", SET_ERRORS)
def test_setitem_errors(make_idx, make_val):
    ours, ref = both((3, 4), "float32")
    with pytest.raises(Exception) as expected:
        ref[make_idx(mlx)] = make_val(mlx)
    with pytest.raises(type(expected.value)):
        ours[make_idx(mx)] = make_val(mx)


@pytest.mark.parametrize("mask", [True, False, np.bool_(True)])
def test_setitem_python_bool_mask(mask):
    """A scalar bool as a setitem index is a mask of all or nothing, as an array(True) is."""
    ours, ref = both((3,), "float32")
    ours[mask] = 5.0
    ref[mlx.array(bool(mask))] = 5.0
    assert_same(ours, ref)


@pytest.mark.parametrize("index", [lambda: slice(None, 2**32), lambda: 2**32, lambda: slice(-2**31 - 1, None),
                                   lambda: (0, slice(2**31))])
def test_index_bounds_are_32_bit(index):
    """MLX keeps int indices and slice bounds as 32-bit integers: larger ones are a ValueError."""
    ours, ref = both((3, 4), "float32")
    with pytest.raises(ValueError):
        ref[index()]
    with pytest.raises(ValueError, match="32-bit"):
        ours[index()]
    with pytest.raises(ValueError, match="32-bit"):
        ours[index()] = 1.0


def test_masked_setitem_needs_enough_values():
    ours = mx.zeros((3, 4))
    ours[mx.array([[True, False, True, True]] * 3)] = mx.arange(2)
    with pytest.raises(RuntimeError):
        mx.eval(ours)


# --- .at ---------------------------------------------------------------------------------------------

AT_CASES = [
    ("add", lambda m: m.array([0, 0, 1]), lambda m: 1),
    ("subtract", lambda m: m.array([0, 0, 1]), lambda m: 1),
    ("multiply", lambda m: m.array([0, 0, 1]), lambda m: 2),
    ("divide", lambda m: m.array([0, 0, 1]), lambda m: 2),
    ("maximum", lambda m: m.array([0, 0, 1]), lambda m: m.array([1, 7, 9])),
    ("minimum", lambda m: m.array([0, 0, 1]), lambda m: m.array([1, 7, 9])),
    ("add", lambda m: 0, lambda m: 3.5),
    ("divide", lambda m: slice(None), lambda m: 3),
    ("add", lambda m: slice(1, None), lambda m: m.array([1, 2])),
    ("add", lambda m: slice(None, None, -1), lambda m: m.array([1, 2, 3])),
    ("add", lambda m: Ellipsis, lambda m: 1),
    ("add", lambda m: m.array([-1, 2, -1]), lambda m: m.array([5, 6, 7])),
    ("add", lambda m: None, lambda m: 1),  # a new axis is an index, not a missing one
]


@pytest.mark.parametrize("dtype", ["float32", "int32", "uint8", "bfloat16", "float16"])
@pytest.mark.parametrize("op,make_idx,make_val", AT_CASES)
def test_at_matches_mlx(op, make_idx, make_val, dtype):
    ours, ref = both((3,), dtype)
    ours, ref = ours + 4, ref + 4
    before = ours.tolist()
    out = getattr(ours.at[make_idx(mx)], op)(make_val(mx))
    expected = getattr(ref.at[make_idx(mlx)], op)(make_val(mlx))
    assert_same(out, expected)
    assert ours.tolist() == before


def test_at_nd_duplicates():
    for make_idx, make_val in [
            (lambda m: (0, m.array([0, 0])), lambda m: m.array([1., 2.])),
            (lambda m: (m.array([0, 0]), slice(1, None)), lambda m: 1.),
            (lambda m: (m.array([[0], [1], [0]]), m.array([2, 2])), lambda m: 1.)]:
        out = mx.zeros((2, 3)).at[make_idx(mx)].add(make_val(mx))
        expected = mlx.zeros((2, 3)).at[make_idx(mlx)].add(make_val(mlx))
        assert_same(out, expected)


def test_at_bool():
    out = mx.array([True, False]).at[mx.array([0, 0, 1])].add(True)
    assert_same(out, mlx.array([True, False]).at[mlx.array([0, 0, 1])].add(True))


def test_at_errors():
    raises_like(lambda: mx.array([4, 4, 4]).at[mx.array([0, 0, 1])].add(mx.array([1, 2])),
                lambda: mlx.array([4, 4, 4]).at[mlx.array([0, 0, 1])].add(mlx.array([1, 2])))
    raises_like(lambda: mx.array([4, 4, 4]).at[1:].add(mx.array([1, 2, 3])),
                lambda: mlx.array([4, 4, 4]).at[1:].add(mlx.array([1, 2, 3])))


# --- take / take_along_axis / put_along_axis / slice / slice_update ----------------------------------

def _call(name, *args, **kwargs):
    conv = [(mx.array(a), mlx.array(a)) if isinstance(a, np.ndarray) else (a, a) for a in args]
    ours = getattr(mx, name)(*[c[0] for c in conv], **kwargs)
    ref = getattr(mlx, name)(*[c[1] for c in conv], **kwargs)
    assert_same(ours, ref)


A = np.arange(12, dtype=np.int32).reshape(3, 4)
I = lambda *v: np.array(v, dtype=np.int32)  # noqa: E731


def test_take():
    _call("take", A, 1)
    _call("take", A, 1, axis=1)
    _call("take", A, -2, axis=0)
    _call("take", A, I([0, -1]), axis=1)
    _call("take", A, I(0, 11, 5))
    _call("take", np.array(3, np.int32), I(0, 0))
    raises_like(lambda: mx.take(mx.array(A), -1, axis=0), lambda: mlx.take(mlx.array(A), -1, axis=0))
    raises_like(lambda: mx.take(mx.array(A), mx.array([0]), axis=2),
                lambda: mlx.take(mlx.array(A), mlx.array([0]), axis=2))
    raises_like(lambda: mx.take(mx.array(A), mx.array([0.]), axis=1),
                lambda: mlx.take(mlx.array(A), mlx.array([0.]), axis=1))
    raises_like(lambda: mx.take(mx.array(A), mx.array([True]), axis=1),
                lambda: mlx.take(mlx.array(A), mlx.array([True]), axis=1))


def test_take_along_axis():
    _call("take_along_axis", A, I([0], [1], [2]), axis=1)
    _call("take_along_axis", A, I([0]), axis=1)
    _call("take_along_axis", A[0:1], I([0], [-1]), axis=1)
    _call("take_along_axis", A, I(0, 5, -1), axis=None)
    _call("take_along_axis", A, I([2, 0, 1, 0]), axis=0)
    for idx, axis in [(I([0, 1, 2]), 0), (I([0], [1]), 1), (I(0, 1), 1), (I([0]), 2), (I([0, 5]), None)]:
        raises_like(lambda: mx.take_along_axis(mx.array(A), mx.array(idx), axis=axis),
                    lambda: mlx.take_along_axis(mlx.array(A), mlx.array(idx), axis=axis))


def test_put_along_axis():
    _call("put_along_axis", A, I([0], [1], [2]), np.array(-5, np.int32), axis=1)
    _call("put_along_axis", A, I(0, -1), I(7, 8), axis=None)
    _call("put_along_axis", A, I(0, -1), I(7, 8))
    _call("put_along_axis", A, I([0], [1], [2]), np.array([1.5], np.float32), axis=1)
    _call("put_along_axis", A, I([0], [1], [2]), I(1, 2), axis=1)
    for idx, val, axis in [(I([0, 0]), I([7, 8]), 0), (I([0], [1]), I(1), 1), (I([[0]]), I(1), 1)]:
        raises_like(lambda: mx.put_along_axis(mx.array(A), mx.array(idx), mx.array(val), axis=axis),
                    lambda: mlx.put_along_axis(mlx.array(A), mlx.array(idx), mlx.array(val), axis=axis))


def test_slice_and_slice_update():
    _call("slice", A, I(1, 1), (0, 1), (2, 2))
    _call("slice", A, I(1), (1,), (1, 2))
    _call("slice", A, I(2, 1), [1, 0], [2, 2])
    _call("slice_update", A, I([-1, -2]), I(1, 1), (0, 1))
    _call("slice_update", A, np.array([-1.5], np.float32), I(1), (0,))
    _call("slice_update", A, I(-1), I(1), (0,))
    for start, axes, size in [(I(1), (1,), (2,)), (np.array([1.], np.float32), [0], [2, 4]),
                              (I(1, 1), [0], [2, 4]), (I(1), [3], [2, 4]), (I(1), [0], [5, 4])]:
        raises_like(lambda: mx.slice(mx.array(A), mx.array(start), axes, size),
                    lambda: mlx.slice(mlx.array(A), mlx.array(start), axes, size))
    raises_like(lambda: mx.slice_update(mx.array(A), mx.array([[1, 2, 3, 4, 5]]), mx.array([1]), (0,)),
                lambda: mlx.slice_update(mlx.array(A), mlx.array([[1, 2, 3, 4, 5]]), mlx.array([1]), (0,)))


@pytest.mark.parametrize("name", ["gather", "take_along_axis", "put_along_axis", "dynamic_slice",
                                  "dynamic_slice_update"])
def test_registered_cases(name):
    rng = np.random.default_rng(0)
    for d in dt.ALL:
        ref_dtype = getattr(mlx, "bool_" if d is dt.bool_ else d.name)
        ours_dtype = getattr(mx, "bool_" if d is dt.bool_ else d.name)
        for api_name, args, kwargs in PRIMITIVES[name].extra["cases"](rng, d):
            def conv(module, dtype, v):
                if not isinstance(v, np.ndarray):
                    return v
                return module.array(v) if v.dtype == np.int32 else module.array(v, dtype)
            ours = getattr(mx, api_name)(*[conv(mx, ours_dtype, v) for v in args], **kwargs)
            ref = getattr(mlx, api_name)(*[conv(mlx, ref_dtype, v) for v in args], **kwargs)
            assert_same(ours, ref)


@hypothesis.settings(max_examples=80, deadline=None)
@hypothesis.given(st.lists(st.one_of(
    st.sampled_from([slice(None), slice(1, None), slice(None, None, -1), None, 1, -1]),
    st.lists(st.integers(-2, 1), min_size=1, max_size=3).map(lambda v: ("arr", tuple(v))),
    st.just(("arr2", ((0,), (1,))))), min_size=1, max_size=5))
def test_hypothesis_mixed_advanced_indices(entries):
    def build(m):
        return tuple(m.array(list(e[1])) if isinstance(e, tuple) else e for e in entries)
    ours, ref = both((2, 3, 4, 2), "float32")
    try:
        expected = ref[build(mlx)]
    except ValueError:
        with pytest.raises(ValueError):
            ours[build(mx)]
        return
    assert_same(ours[build(mx)], expected)
    try:
        ref_at = ref.at[build(mlx)].add(1.0)
    except ValueError:
        # MLX's scatter fails on some index combinations its gather takes (a reshape error inside
        # MLX); numpy's unbuffered add is the reference for those.
        want = np.array(ref)
        np.add.at(want, build(np), 1.0)
        np.testing.assert_array_equal(np.array(ours.at[build(mx)].add(1.0)), want)
    else:
        assert_same(ours.at[build(mx)].add(1.0), ref_at)
    want = np.array(ref)
    try:
        ref[build(mlx)] = 0.5
        want = np.array(ref)
    except ValueError:  # the same MLX scatter failure as above: numpy's assignment is the reference
        want[build(np)] = 0.5
    ours[build(mx)] = 0.5
    np.testing.assert_array_equal(np.array(ours), want)
