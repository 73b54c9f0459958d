"""Shape, creation, indexing and misc ops against MLX: errors (types and messages), argument parsing,
windows, diff, hadamard_transform and the fp8 conversions."""
import numpy as np
import pytest

import mlxarm.core as ma

TOL = {"float32": 2e-6, "float16": 2e-3, "bfloat16": 1.6e-2}


def _mx():
    return pytest.importorskip("mlx.core")


def _outcome(fn):
    try:
        r = fn()
    except Exception as e:  # noqa: BLE001 (the outcome is what is compared)
        return ("error", e)
    return ("value", r)


def _same_error(expr, check_message=True):
    """Both libraries raise for ``expr``; ours is an instance of MLX's exception type."""
    mx = _mx()
    kind, theirs = _outcome(lambda: eval(expr, {"mx": mx, "np": np}))
    assert kind == "error", f"MLX accepted {expr}"
    with pytest.raises(type(theirs)) as info:
        eval(expr, {"mx": ma, "np": np})
    if check_message:
        assert str(info.value).split("\n")[0] == str(theirs).split("\n")[0]
    return info.value


def _same_value(expr, atol=0.0):
    mx = _mx()
    theirs = eval(expr, {"mx": mx, "np": np})
    ours = eval(expr, {"mx": ma, "np": np})
    if isinstance(theirs, (list, tuple)):
        assert len(ours) == len(theirs)
        for o, t in zip(ours, theirs):
            _compare(o, t, atol)
    else:
        _compare(ours, theirs, atol)


def _compare(ours, theirs, atol):
    assert ours.shape == theirs.shape
    assert str(ours.dtype) == str(theirs.dtype)
    if str(theirs.dtype).endswith("bfloat16"):
        ours, theirs = ours.astype(ma.float32), theirs.astype(_mx().float32)
    np.testing.assert_allclose(np.array(ours), np.array(theirs), rtol=0, atol=atol, equal_nan=True)


# --- reshape and shape arguments -------------------------------------------------------------------

@pytest.mark.parametrize("expr", [
    "mx.reshape(mx.zeros(6), (-1, 4))",
    "mx.reshape(mx.zeros(7), (-1, 2))",
    "mx.reshape(mx.zeros(0), (0, -1))",
    "mx.reshape(mx.zeros(6), (0, -1))",
    "mx.reshape(mx.zeros(6), (-1, -1))",
    "mx.reshape(mx.zeros(6), (-2, 3))",
    "mx.reshape(mx.zeros(6), (4,))",
    "mx.broadcast_to(mx.zeros(3), (-1, 3))",
    "mx.zeros(-1)",
])
def test_shape_errors_match_mlx(expr):
    _same_error(expr)


@pytest.mark.parametrize("expr", [
    "mx.zeros(2**31)", "mx.ones([2**31])", "mx.full(2**31, 0.0)", "mx.zeros([-(2**31) - 1])",
    "mx.reshape(mx.zeros(4), [2**31])", "mx.broadcast_to(mx.zeros(4), [2**31, 1])",
    "mx.concatenate([mx.zeros(2**30)] * 3)", "mx.repeat(mx.zeros(2**30), 3)",
    "mx.tile(mx.zeros(2**30), 3)", "mx.pad(mx.zeros(2**31 - 1), 3)",
])
def test_shape_overflow_matches_mlx(expr):
    assert isinstance(_same_error(expr, check_message=False), OverflowError)


def test_shape_overflow_names_the_dimension():
    with pytest.raises(OverflowError, match="3221225472"):
        ma.concatenate([ma.zeros(2**30)] * 3)
    with pytest.raises(OverflowError, match="2147483648"):
        ma.zeros(2**31)


@pytest.mark.parametrize("expr", [
    "mx.reshape(mx.zeros(4), [np.int32(2), 2])",
    "mx.reshape(mx.zeros(4), [mx.array(2), 2])",
    "mx.reshape(mx.zeros(4), (2, -1))",
    "mx.reshape(mx.zeros(0), (2, -1))",
    "mx.zeros([np.int64(3)], mx.int8)",
])
def test_shape_arguments_match_mlx(expr):
    _same_value(expr)


@pytest.mark.parametrize("value", [np.float32(2), "2", 2.0])
def test_shape_entries_must_be_integers(value):
    mx = _mx()
    with pytest.raises(TypeError):
        mx.reshape(mx.zeros(4), [value, 2])
    with pytest.raises(TypeError):
        ma.reshape(ma.zeros(4), [value, 2])


# --- axis errors: MLX 0.32 raises IndexError, later releases ValueError; ours is both ----------------

@pytest.mark.parametrize("expr", [
    "mx.take_along_axis(mx.zeros((2, 3)), mx.zeros((2, 3), mx.int32), axis=2)",
    "mx.put_along_axis(mx.zeros((2, 3)), mx.zeros((2, 3), mx.int32), mx.zeros((2, 3)), axis=-3)",
    "mx.flip(mx.zeros((2, 3)), axis=2)",
    "mx.split(mx.zeros((2, 3)), 3, axis=2)",
    "mx.unstack(mx.zeros((2, 3)), axis=2)",
    "mx.expand_dims(mx.zeros((2, 2)), (-5, -4))",
    "mx.squeeze(mx.zeros((1, 1, 1)), (-4,))",
    "mx.swapaxes(mx.zeros((2, 3)), 2, 0)",
    "mx.moveaxis(mx.zeros((2, 3)), 2, 0)",
    "mx.take(mx.zeros((2, 3)), mx.array([0]), axis=3)",
    "mx.softmax(mx.zeros(3), axis=1)",
    "mx.diff(mx.array([1, 2, 4]), axis=1)",
    "mx.slice(mx.zeros((3, 3)), mx.array([0]), [2], [1, 1])",
])
def test_axis_errors_are_index_and_value_errors(expr):
    err = _same_error(expr)
    assert isinstance(err, IndexError) and isinstance(err, ValueError)


# --- arange's two overloads ------------------------------------------------------------------------

@pytest.mark.parametrize("expr", [
    "mx.arange(5)", "mx.arange(1, 5)", "mx.arange(5, step=2)", "mx.arange(stop=3)",
    "mx.arange(stop=2, step=0.5)", "mx.arange(-3, step=-1)", "mx.arange(-3, None, -1)",
    "mx.arange(5, None, 2)", "mx.arange(1, stop=4)", "mx.arange(start=1, stop=5)",
    "mx.arange(5, 2, mx.float16)", "mx.arange(1, 5, 2, mx.float16)", "mx.arange(1.5, stop=4)",
    "mx.arange(start=0, stop=4, step=2, dtype=mx.int8)",
])
def test_arange_overloads_match_mlx(expr):
    _same_value(expr)


@pytest.mark.parametrize("expr", [
    "mx.arange(start=1, step=2)", "mx.arange(start=1)", "mx.arange()", "mx.arange(step=2)",
    "mx.arange(None, 4)", "mx.arange(5, mx.float16)",
])
def test_arange_rejected_calls_are_type_errors(expr):
    _same_error(expr, check_message=False)


@pytest.mark.parametrize("expr", [
    "mx.arange(float('nan'), 1, 5)", "mx.arange(0, float('inf'), float('inf'))",
    "mx.arange(0, 2**40)", "mx.arange(True)", "mx.arange(0, 5, step=0)",
])
def test_arange_value_errors_match_mlx(expr):
    _same_error(expr)


# --- creation ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["hanning", "hamming", "blackman", "bartlett"])
@pytest.mark.parametrize("m", [-2, 0, 1, 2, 3, 10, 31])
def test_windows_match_mlx(name, m):
    _same_value(f"mx.{name}({m})", atol=2e-6)


def test_empty_is_zeros():
    mx = _mx()
    assert ma.empty is ma.zeros and ma.empty_like is ma.zeros_like
    assert mx.empty is mx.zeros
    _same_value("mx.empty_like(mx.array([1, 2, 3]), mx.float16)")
    _same_value("mx.empty((2, 3), mx.int8)")


# --- diff and matrix_transpose -------------------------------------------------------------------------

@pytest.mark.parametrize("expr", [
    "mx.diff(mx.array([1, 2, 4, 7, 0]))", "mx.diff(mx.array([1, 2, 4, 7, 0]), n=2)",
    "mx.diff(mx.array([1, 2, 4, 7, 0]), n=0)", "mx.diff(mx.array([1, 2, 4]), n=5)",
    "mx.diff(mx.array([[1, 3, 6], [0, 5, 6]]), axis=0)", "mx.diff(mx.array([True, False, True]))",
    "mx.diff(mx.array([1, 5, 2], mx.uint8))", "mx.diff(mx.array([1.5, 2, 4], mx.float16))",
    "mx.diff(mx.zeros((3, 0)), axis=0)", "mx.diff(mx.array([[1, 2, 4]]), axis=-2)",
])
def test_diff_matches_mlx(expr):
    _same_value(expr)


@pytest.mark.parametrize("expr", ["mx.diff(mx.array([1, 2]), n=-1)", "mx.diff(mx.array(3))",
                                  "mx.matrix_transpose(mx.zeros((3,)))"])
def test_diff_and_matrix_transpose_errors(expr):
    _same_error(expr)


def test_matrix_transpose_matches_mlx():
    _same_value("mx.matrix_transpose(mx.arange(24).reshape(2, 3, 4))")
    _same_value("mx.matrix_transpose(mx.arange(6).reshape(2, 3))")


# --- indexing ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("expr", [
    "mx.take(mx.zeros((0,)), mx.array([1]))",
    "mx.take(mx.zeros((4, 0)), mx.array([[1]]), axis=1)",
    "mx.take(mx.zeros((4, 0)), 1, axis=1)",
])
def test_take_from_empty_errors(expr):
    _same_error(expr)


@pytest.mark.parametrize("expr", [
    "mx.take(mx.zeros((4, 0)), mx.array([1, 2]), axis=0)",
    "mx.take(mx.arange(8).reshape(2, 4), mx.array(1), axis=0)",
    "mx.arange(6)[mx.array(3)]",
    "mx.arange(6).reshape(2, 3)[mx.array(1)]",
    "mx.put_along_axis(mx.array([], mx.float32), mx.array([], mx.float32), mx.array([], mx.float32), axis=None)",
])
def test_indexing_edge_cases_match_mlx(expr):
    _same_value(expr)


def test_take_along_an_empty_axis_gives_zeros():
    # MLX reads uninitialized memory here (usually zeros, sometimes not): ours defines it as zeros.
    out = ma.take_along_axis(ma.zeros((4, 0)), ma.zeros((4, 1), ma.int32), axis=1)
    assert out.shape == (4, 1) and out.dtype == ma.float32 and out.tolist() == [[0.0]] * 4


def test_out_of_range_int_index_reads_inside_the_array():
    # MLX does not check a lone int index (it reads past the buffer); ours reads a clamped position.
    assert ma.arange(6)[7].shape == () and ma.arange(6)[7].item() == 5
    assert ma.arange(6).reshape(2, 3)[3].tolist() == [3, 4, 5]
    assert ma.arange(6)[-9].item() == 0


# --- softmax -----------------------------------------------------------------------------------------------

def test_softmax_scalar_axes():
    _same_error("mx.softmax(mx.array(1.0), axis=-1)")
    _same_value("mx.softmax(mx.array(1.0))")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_softmax_precise_half_matches_float32(dtype):
    x = (10 * np.random.default_rng(0).standard_normal(1024)).astype(np.float32)
    a = ma.array(x).astype(getattr(ma, dtype))
    expect = ma.softmax(a.astype(ma.float32)).astype(a.dtype)
    assert ma.array_equal(ma.softmax(a, axis=-1, precise=True), expect).item()


# --- hadamard_transform --------------------------------------------------------------------------------------

def _hadamard(n):
    h = np.array([[1.0]])
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("n,scale", [(1, 0.5), (8, None), (12, 0.3), (24, None), (40, 1.0), (56, 0.25),
                                     (256, None)])
def test_hadamard_matches_mlx(dtype, n, scale):
    mx = _mx()
    x = np.random.default_rng(n).standard_normal((3, n)).astype(np.float32)
    kw = {} if scale is None else {"scale": scale}
    theirs = mx.hadamard_transform(mx.array(x).astype(getattr(mx, dtype)), **kw)
    ours = ma.hadamard_transform(ma.array(x).astype(getattr(ma, dtype)), **kw)
    assert ours.dtype == getattr(ma, dtype) and ours.shape == theirs.shape
    tol = TOL[dtype] * max(1.0, np.sqrt(n))
    np.testing.assert_allclose(np.array(ours.astype(ma.float32)),
                               np.array(theirs.astype(mx.float32)), atol=tol, rtol=tol)


def test_hadamard_power_of_two_is_walsh_hadamard():
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    expect = x @ _hadamard(64).T * 0.34
    np.testing.assert_allclose(np.array(ma.hadamard_transform(ma.array(x), scale=0.34)), expect,
                               atol=1e-4)


@pytest.mark.parametrize("expr", [
    "mx.hadamard_transform(mx.array([5]))", "mx.hadamard_transform(mx.array(5), scale=0.2)",
    "mx.hadamard_transform(mx.array([1, 2, 3, 4]))", "mx.hadamard_transform(mx.array([True, False]))",
    "mx.hadamard_transform(mx.ones((2, 1)))",
])
def test_hadamard_dtypes_match_mlx(expr):
    _same_value(expr, atol=1e-6)


@pytest.mark.parametrize("expr", [
    "mx.hadamard_transform(mx.array([]))", "mx.eval(mx.hadamard_transform(mx.ones(6)))",
    "mx.eval(mx.hadamard_transform(mx.ones(4, mx.float64)))",
])
def test_hadamard_errors_match_mlx(expr):
    _same_error(expr)


# --- fp8 ---------------------------------------------------------------------------------------------------------

def test_fp8_round_trip_matches_mlx_on_every_float16():
    mx = _mx()
    h = np.arange(65536, dtype=np.uint16).view(np.float16)
    assert np.array_equal(np.array(ma.to_fp8(ma.array(h))), np.array(mx.to_fp8(mx.array(h))))
    for d in ("float32", "float16", "bfloat16"):
        _same_value(f"mx.from_fp8(mx.array(np.arange(256, dtype=np.uint8)), mx.{d})")
    _same_value("mx.from_fp8(mx.array(np.arange(256, dtype=np.uint8)))")


def test_to_fp8_float32_matches_mlx():
    mx = _mx()
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(20000) * np.exp(rng.uniform(-12, 8, 20000))).astype(np.float32)
    x = np.concatenate([x, [np.inf, -np.inf, np.nan, 0.0, -0.0, 448, 464, 465, 480, 1e30]])
    x = x.astype(np.float32)
    assert np.array_equal(np.array(ma.to_fp8(ma.array(x))), np.array(mx.to_fp8(mx.array(x))))


@pytest.mark.parametrize("expr", [
    "mx.to_fp8(mx.array([1, 2]))", "mx.from_fp8(mx.array([1, 2], mx.int32))",
    "mx.from_fp8(mx.array([1, 2], mx.uint8), mx.int32)",
])
def test_fp8_errors_match_mlx(expr):
    _same_error(expr)
