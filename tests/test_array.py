"""The array type against MLX: metadata, conversion to Python and numpy, operators (plain, reflected,
in place), T/mT, iteration, len, bool, hash and printing."""
import operator

import numpy as np
import pytest

import mlxarm.core as ma

from _matrix import DTYPES, assert_same_array, assert_same_outcome, mlx_dtype, values

mx = None


@pytest.fixture
def mlx():
    global mx
    mx = pytest.importorskip("mlx.core")
    return mx


def _pair(x, d):
    return ma.array(x, dtype=d), mx.array(x, dtype=mlx_dtype(d))


SHAPES = [(), (0,), (1,), (3,), (2, 3), (2, 0, 3), (2, 1, 4)]


# --- metadata and conversion ---------------------------------------------------------------------------

@pytest.mark.mlx
@pytest.mark.parametrize("d", DTYPES, ids=lambda d: d.name)
def test_metadata_item_tolist_numpy(mlx, d):
    rng = np.random.default_rng(d.index)
    for shape in SHAPES:
        x = values(rng, d, shape)
        o, t = _pair(x, d)
        assert (o.shape, o.ndim, o.size, o.itemsize, o.nbytes) == (t.shape, t.ndim, t.size, t.itemsize, t.nbytes)
        assert str(o.dtype) == str(t.dtype)
        assert type(o.shape) is type(t.shape)
        ol, tl = o.tolist(), t.tolist()
        assert ol == tl if d.kind != "f" else np.allclose(ol, tl, equal_nan=True)
        assert type(ol) is type(tl)
        if t.size == 1:
            oi, ti = o.reshape(()).item(), t.reshape(()).item()
            assert type(oi) is type(ti) and (oi == ti or (oi != oi and ti != ti))
        if d is not ma.bfloat16:
            on, tn = np.array(o), np.array(t)
            assert on.dtype == tn.dtype and on.shape == tn.shape
            np.testing.assert_array_equal(on, tn)


def test_metadata_needs_no_evaluation():
    a = ma.array(np.ones((3, 4), np.float32)) + 1
    assert (a.shape, a.ndim, a.size, a.nbytes, a.dtype) == ((3, 4), 2, 12, 48, ma.float32)
    assert a._data is None


@pytest.mark.mlx
def test_numpy_conversion_of_bfloat16_and_views(mlx):
    o = ma.array([1.5, 2.25], dtype=ma.bfloat16)
    np.testing.assert_array_equal(np.array(o), [1.5, 2.25])
    o, t = _pair(np.arange(12, dtype=np.float32).reshape(3, 4), ma.float32)
    np.testing.assert_array_equal(np.array(o.T), np.array(t.T))
    np.testing.assert_array_equal(np.asarray(o, dtype=np.float64), np.asarray(t, dtype=np.float64))


# --- operators ---------------------------------------------------------------------------------------------

BINARY_OPERATORS = [operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv,
                    operator.mod, operator.pow, operator.and_, operator.or_, operator.xor,
                    operator.lshift, operator.rshift, operator.eq, operator.ne, operator.lt, operator.le,
                    operator.gt, operator.ge]
INPLACE = {operator.add: operator.iadd, operator.sub: operator.isub, operator.mul: operator.imul,
           operator.truediv: operator.itruediv, operator.floordiv: operator.ifloordiv,
           operator.mod: operator.imod, operator.pow: operator.ipow, operator.and_: operator.iand,
           operator.or_: operator.ior, operator.xor: operator.ixor, operator.lshift: operator.ilshift,
           operator.rshift: operator.irshift}


@pytest.mark.mlx
@pytest.mark.parametrize("d", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("op", BINARY_OPERATORS, ids=lambda f: f.__name__)
def test_binary_operators(mlx, op, d):
    rng = np.random.default_rng(d.index)
    x, y = values(rng, d, (2, 3), (1, 4)), values(rng, d, (3,), (1, 4))
    ox, tx = _pair(x, d)
    oy, ty = _pair(y, d)
    assert_same_outcome(lambda: op(ox, oy), lambda: op(tx, ty), f"{op.__name__} {d.name}")
    for s in (2, 1.5, True):
        assert_same_outcome(lambda: op(ox, s), lambda: op(tx, s), f"{op.__name__} {d.name} with {s!r}")
        assert_same_outcome(lambda: op(s, ox), lambda: op(s, tx), f"reflected {op.__name__} {d.name} {s!r}")


@pytest.mark.mlx
@pytest.mark.parametrize("d", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("op", list(INPLACE), ids=lambda f: f.__name__)
def test_inplace_operators_mutate_the_same_object(mlx, op, d):
    rng = np.random.default_rng(d.index)
    x, y = values(rng, d, (2, 3), (1, 4)), values(rng, d, (3,), (1, 4))
    iop = INPLACE[op]
    ox, tx = _pair(x, d)
    oy, ty = _pair(y, d)
    o_alias, t_alias = ox, tx
    try:
        t_res = iop(tx, ty)
        mx.eval(t_res)
    except Exception as e:  # noqa: BLE001
        with pytest.raises(type(e)):
            ma.eval(iop(ox, oy))
        return
    o_res = iop(ox, oy)
    assert (o_res is ox) == (t_res is tx)
    assert_same_array(o_res, t_res, f"{iop.__name__} {d.name}")
    assert_same_array(o_alias, t_alias, f"{iop.__name__} {d.name} seen through another reference")


@pytest.mark.mlx
@pytest.mark.parametrize("d", DTYPES, ids=lambda d: d.name)
def test_unary_operators(mlx, d):
    x = values(np.random.default_rng(0), d, (2, 3))
    o, t = _pair(x, d)
    for op in (operator.neg, operator.pos, operator.abs, operator.invert):
        assert_same_outcome(lambda: op(o), lambda: op(t), f"{op.__name__} {d.name}")


def test_inplace_shares_with_earlier_results():
    a = ma.array([1, 2, 3])
    b = a * 2  # recorded before the update: must keep the old value
    alias = a
    a += 10
    assert alias is a
    assert b.tolist() == [2, 4, 6]
    assert a.tolist() == [11, 12, 13]


@pytest.mark.mlx
def test_repeated_setitem_keeps_every_earlier_result(mlx):
    """An array written in place step after step (a KV cache) while the nodes recorded on it in
    earlier steps are still unevaluated: each keeps the value it was recorded with. From the second
    such update on, the consumers are found through the watch ``make_node`` keeps, not a search."""
    from mlxarm.core.array import _WATCHED

    def run(m):
        cache, slices = m.zeros((2, 6)), []
        for step in range(6):
            slices.append(cache[:, :step + 1] * 1)  # unevaluated, recorded on the current value
            holder = [cache]  # a second reference, as a cache object's attribute is
            cache[:, step] = m.array([step + 1, -step - 1], dtype=m.float32)
            if m is ma and step:
                assert id(cache) in _WATCHED
            del holder
        return [np.array(s) for s in slices] + [np.array(cache)]
    for o, t in zip(run(ma), run(mlx)):
        np.testing.assert_array_equal(o, t)


@pytest.mark.parametrize("age", ["recent", "old"])
def test_first_update_finds_the_consumers_of_an_aliased_array(monkeypatch, age):
    """The first in-place update of an array other names refer to re-points the nodes recorded on it
    at its old value. Among the arrays made last, those are among the ones made after it, with no
    walk over the heap; an array older than that is searched through the garbage collector."""
    import gc
    import sys

    array_module = sys.modules["mlxarm.core.array"]

    keys = ma.zeros((2, 4))
    alias = keys  # noqa: F841 (a second reference, as mlx-lm's local name for a new cache is)
    before = [keys * 1.0, keys[:, 1:] + 1.0]  # consumers recorded on the current value
    if age == "old":
        filler = [ma.array(np.float32(i)) + 1 for i in range(array_module._RECENT.maxlen)]
        del filler
    walks = []
    real = gc.get_referrers
    monkeypatch.setattr(gc, "get_referrers", lambda *objs: walks.append(1) or real(*objs))
    keys[:, 2] = ma.array([5.0, 6.0])
    assert bool(walks) == (age == "old")
    np.testing.assert_array_equal(np.array(before[0]), np.zeros((2, 4)))
    np.testing.assert_array_equal(np.array(before[1]), np.ones((2, 3)))
    np.testing.assert_array_equal(np.array(keys), [[0, 0, 5, 0], [0, 0, 6, 0]])


def test_aliased_array_updated_with_nothing_reading_it_is_watched_from_then_on():
    """A cache object's array written in place once a step, each step's reads evaluated before the
    next write (mlx-lm's decode loop): the first update finds no consumer but starts the watch, so
    later updates do not search the heap again; the reads recorded after it keep their values."""
    from mlxarm.core.array import _WATCHED

    holder = {"keys": ma.zeros((2, 5))}
    cache = holder["keys"]
    cache[:, 0] = ma.array([1.0, -1.0])
    assert id(cache) in _WATCHED
    outs = []
    for step in range(1, 5):
        outs.append(cache[:, :step] * 2)  # recorded on the current value, then overwritten
        cache[:, step] = ma.array([step + 1.0, -step - 1.0])
    for step, out in enumerate(outs, start=1):
        want = np.array([[k + 1.0 for k in range(step)], [-k - 1.0 for k in range(step)]]) * 2
        np.testing.assert_array_equal(np.array(out), want)
    assert holder["keys"] is cache


def test_item_updates_in_place_on_a_watched_array():
    """``a[i] += d`` reads ``a[i]`` (a node on ``a``), updates that node in place, then writes it back
    into ``a``: the snapshot of the read must still read the old ``a``, or ``a`` would depend on itself.
    Repeated while earlier results on ``a`` are unevaluated (so ``a`` is watched)."""
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    a = ma.array(base)
    keep = [a * 2]  # a consumer alive at the first update: from then on ``a`` is watched
    sums, expected = [], base.copy()
    for i, d in [((0, 1), 0.5), ((2, 3), -1.0), ((0, 1), 0.25)]:
        a[i] += d
        expected[i] += d
        sums.append((a.sum(), float(expected.sum())))
        a[i] -= 2 * d
        expected[i] -= 2 * d
        sums.append((a.sum(), float(expected.sum())))
    np.testing.assert_array_equal(np.array(a), expected)
    for got, want in sums:
        assert got.item() == want
    np.testing.assert_array_equal(np.array(keep[0]), base * 2)


@pytest.mark.mlx
def test_setitem_visible_through_aliases(mlx):
    o, t = ma.array([1, 2, 3]), mx.array([1, 2, 3])
    oa, ta = o, t
    o[1] = 7
    t[1] = 7
    assert oa.tolist() == ta.tolist()


@pytest.mark.mlx
@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 4), (3,), ()], ids=lambda s: "x".join(map(str, s)) or "0d")
def test_T_and_mT(mlx, shape):
    x = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    o, t = _pair(x, ma.float32)
    assert_same_outcome(lambda: o.T, lambda: t.T)
    assert_same_outcome(lambda: o.mT, lambda: t.mT)


@pytest.mark.mlx
def test_iteration_len_bool(mlx):
    x = np.arange(6, dtype=np.int32).reshape(3, 2)
    o, t = _pair(x, ma.int32)
    assert len(o) == len(t)
    rows_o, rows_t = list(o), list(t)
    assert len(rows_o) == len(rows_t)
    for a, b in zip(rows_o, rows_t):
        assert_same_array(a, b)
    for val in ([0], [3], [[1.5]], True, 0.0):
        assert bool(ma.array(val)) == bool(mx.array(val))
    assert_same_outcome(lambda: len(ma.array(1)), lambda: len(mx.array(1)))
    assert_same_outcome(lambda: list(ma.array(1)), lambda: list(mx.array(1)))
    assert_same_outcome(lambda: bool(ma.array([1, 2])), lambda: bool(mx.array([1, 2])))
    assert_same_outcome(lambda: bool(ma.array([])), lambda: bool(mx.array([])))
    assert int(ma.array(3.7)) == int(mx.array(3.7))
    assert float(ma.array(2)) == float(mx.array(2))
    assert [10, 20, 30][ma.array(1)] == [10, 20, 30][mx.array(1)]


def test_hash_is_identity():
    a, b = ma.array([1]), ma.array([1])
    assert hash(a) == hash(a) and hash(a) != hash(b)
    assert len({a, b, a}) == 2


# --- printing ------------------------------------------------------------------------------------------------

REPR_CASES = [
    ([1.0, float("nan"), float("inf"), -float("inf"), -0.0, 1e20], "float32"),
    ([1e-5, 1e6, 123.456, 0.1 + 0.2, 1e-20, 123456789.0], "float32"),
    ([[1 + 2j, -0.0 - 1j], [complex("nan"), 1e10j]], "complex64"),
    ([1.5, 2, -0.0, 3.14159], "bfloat16"),
    ([1.5, 2, 65504, 1e-7], "float16"),
    ([0.1, 0.25, 1e100, -2.5e-300], "float64"),
    ([True, False], "bool_"),
    ([0, 255], "uint8"),
    ([-128, 127], "int8"),
    ([2**63 - 1, -(2**63)], "int64"),
    ([2**64 - 1], "uint64"),
    (3.5, "float32"),
    (True, "bool_"),
    (-7, "int32"),
    (1 - 1j, "complex64"),
]


@pytest.mark.mlx
@pytest.mark.parametrize("val,dtype", REPR_CASES, ids=[f"{d}-{i}" for i, (_, d) in enumerate(REPR_CASES)])
def test_repr_values(mlx, val, dtype):
    o, t = ma.array(val, dtype=getattr(ma, dtype)), mx.array(val, dtype=getattr(mx, dtype))
    assert repr(o) == repr(t)
    assert str(o) == str(t)


@pytest.mark.mlx
@pytest.mark.parametrize("shape", [(0,), (2, 0), (0, 2, 3), (3, 3), (2, 3, 4), (6,), (7,), (7, 2), (2, 12),
                                   (10, 100), (1000,), (4, 5, 6), (1, 1, 1), (2, 1, 7)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", ["float32", "int32", "bool_"])
def test_repr_shapes_and_summaries(mlx, shape, dtype):
    x = np.arange(int(np.prod(shape))).reshape(shape) % 11
    o, t = ma.array(x, dtype=getattr(ma, dtype)), mx.array(x, dtype=getattr(mx, dtype))
    assert repr(o) == repr(t)


@pytest.mark.mlx
def test_repr_of_lazy_results(mlx):
    x = np.linspace(-3, 3, 9, dtype=np.float32).reshape(3, 3)
    assert repr(ma.exp(ma.array(x)) * 2) == repr(mx.exp(mx.array(x)) * 2)
    assert repr(ma.array(x).T) == repr(mx.array(x).T)


@pytest.mark.parametrize("dtype", ["bool_", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32",
                                   "int64", "float16", "float32", "complex64"])
def test_buffer_protocol_shares_memory_like_numpy(dtype):
    """``memoryview(a)`` (PEP 688's ``__buffer__``, Python 3.12 on; called directly before that): numpy's
    shape, strides and format (but ``q``/``Q`` for 64-bit integers, as MLX), writeable, the same values, for
    the array and its transpose."""
    import sys

    values = (np.arange(12).reshape(3, 4) % 7).astype(getattr(np, dtype))
    a = ma.array(values)
    for f in (lambda x: x, lambda x: x.T):
        view = memoryview(f(a)) if sys.version_info >= (3, 12) else f(a).__buffer__(0)
        want = memoryview(f(values))
        fmt = {"int64": "q", "uint64": "Q"}.get(dtype, want.format)
        assert (view.shape, view.strides, view.format, view.readonly) == (want.shape, want.strides, fmt, False)
        np.testing.assert_array_equal(np.asarray(view), f(values))


def test_bfloat16_has_no_buffer_and_converts_to_its_float32_values():
    """Python's and numpy's buffer formats have no bfloat16: a bfloat16 array has no buffer, so numpy
    (which tries the buffer protocol first on Python 3.12) takes its float32 values through
    ``__array__`` on every Python version, never its 16-bit patterns."""
    import sys

    values = np.array([1.5, -2.25, 3e38], np.float32)
    a = ma.array(values).astype(ma.bfloat16)
    with pytest.raises(BufferError, match="bfloat16"):
        memoryview(a) if sys.version_info >= (3, 12) else a.__buffer__(0)
    want = np.array(a.astype(ma.float32))
    np.testing.assert_array_equal(want[:2], values[:2])  # exactly representable in bfloat16
    for got in (np.array(a), np.asarray(a)):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)


def test_buffer_protocol_keeps_the_array_alive():
    import gc
    import weakref

    a = ma.arange(3)
    ref = weakref.ref(a)
    view = a.__buffer__(0)
    a = None
    gc.collect()
    assert ref() is not None and np.asarray(view).tolist() == [0, 1, 2]
    view.release()
    view = None
    gc.collect()
    assert ref() is None
