"""The array type, conversion, printing and dtype helpers, compared with real MLX: in-place operators,
operands MLX refuses, weak scalars and numpy data beside arrays, list construction, print options,
finfo/iinfo/result_type/can_cast, and the elementwise names and dtype rules MLX has."""
import copy
import decimal
import fractions
import operator
import pickle
import weakref

import numpy as np
import pytest

import mlxarm.core as ma

from _shape_compare import check

mx = pytest.importorskip("mlx.core")


TOLERANCE = {"float16": 1e-3, "bfloat16": 1e-2}


def same(expr, rtol=0.0, **env):
    """``expr`` gives the same value, dtype and shape (or the same error type and message) in both."""
    check(mx, expr, env, rtol=rtol, atol=rtol)


# --- in-place and reflected operators -------------------------------------------------------------

@pytest.mark.parametrize("expr", [
    "_inplace(mx.array([1, 2], mx.int8), 'iadd', 1.5)",
    "_inplace(mx.array([True, False]), 'ilshift', mx.array([True, True]))",
    "_inplace(mx.array([1, 2]), 'iadd', mx.array([[1, 2]]))",
    "_inplace(mx.array([1, 2]), 'itruediv', 1)",
    "_inplace(mx.array([True]), 'itruediv', 2)",
    "_inplace(mx.array([2.0, 4.0]), 'itruediv', 2)",
    "_inplace(mx.array([1, 2]), 'imul', 'x')",
    "_inplace(mx.array([1.5]), 'itruediv', [1, 2])",
])
def test_inplace_rebinds_to_the_plain_result(expr):
    def inplace(a, op, other):
        b = a
        b = getattr(operator, op)(b, other)
        assert b is a
        return a
    same(expr, _inplace=lambda lib: inplace)


def test_inplace_keeps_recorded_consumers_on_the_old_value():
    a = ma.array([1, 2], ma.int8)
    doubled = a * 2
    a += 1.5
    assert a.dtype == ma.float32 and a.tolist() == [2.5, 3.5]
    assert doubled.tolist() == [2, 4] and doubled.dtype == ma.int8


@pytest.mark.parametrize("op", ["and_", "or_", "xor", "lshift", "rshift", "matmul"])
def test_no_reflected_bitwise_or_matmul(op):
    same(f"_call(2 if '{op}' != 'matmul' else [[1]], mx.array([1, 2]))",
         _call=lambda lib: getattr(operator, op))


@pytest.mark.parametrize("op", ["add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and_", "or_", "xor",
                                "lshift", "rshift", "lt", "le", "gt", "ge", "eq", "ne"])
@pytest.mark.parametrize("other", ["[1, 2, 3]", "(1, 2, 3)", "'hello'", "{}"])
def test_operators_with_non_array_operands(op, other):
    same(f"_f(mx.array([1, 2, 3]), {other})", _f=lambda lib: getattr(operator, op))
    if op in ("add", "sub", "lt", "ge", "eq"):
        same(f"_f({other}, mx.array([1, 2, 3]))", _f=lambda lib: getattr(operator, op))


class _Number:
    """A number type of a user's own: Python makes a complex (so MLX an operand) of what ``__float__`` gives."""

    def __float__(self):
        return 2.5


def _wrapper(lib):
    """An object that gives an array through ``__mlx_array__``."""
    return type("Wrapper", (), {"__mlx_array__": lambda self: lib.array([1.0, 2.0])})()


@pytest.mark.parametrize("op", ["add", "sub", "mul", "truediv", "lt", "eq", "ne"])
@pytest.mark.parametrize("other", ["fractions.Fraction(1, 2)", "decimal.Decimal('1.5')", "Number()", "wrapper"])
def test_operators_with_number_like_and_mlx_array_operands(op, other):
    env = dict(_f=lambda lib: getattr(operator, op), fractions=fractions, decimal=decimal,
               Number=lambda lib: _Number, wrapper=_wrapper)
    same(f"_f(mx.array([1.0, 2.0]), {other})", **env)
    same(f"_f({other}, mx.array([1.0, 2.0]))", **env)


@pytest.mark.parametrize("expr", ["mx.array(wrapper)", "mx.exp(wrapper)", "mx.exp(fractions.Fraction(1, 2))",
                                  "mx.array(fractions.Fraction(1, 2))", "mx.array([Number()])",
                                  "mx.exp(None)", "mx.add(1, None)", "mx.where(None, 1, 2)"])
def test_op_arguments_beyond_numbers_and_arrays(expr):
    same(expr, rtol=1e-6, fractions=fractions, Number=lambda lib: _Number, wrapper=_wrapper)


def test_divmod_and_round_are_not_defined():
    for expr in ["divmod(mx.array([5]), 2)", "divmod(2, mx.array([5]))", "round(mx.array(1.5))"]:
        with pytest.raises(TypeError):
            eval(expr, {"mx": ma})
        with pytest.raises(TypeError):
            eval(expr, {"mx": mx})


@pytest.mark.parametrize("expr", [
    "mx.array([1, 2]).item()", "bool(mx.array([1, 2]))", "int(mx.zeros((2, 1)))", "float(mx.zeros((2,)))",
    "complex(mx.zeros((2,)))", "mx.array(3).item()", "mx.array([[2.5]]).item()",
    "[10, 20, 30][mx.array(1)]", "[10, 20][mx.array([1])]", "[10, 20][mx.array(True)]", "[10, 20][mx.array(1.0)]",
    "mx.array([1, 2, 3]).mT", "mx.array(1).mT", "mx.zeros((2, 3, 4)).mT",
])
def test_scalar_conversions_and_mT(expr):
    same(expr)


def test_format_iter_and_protocols():
    for lib in (ma, mx):
        assert f"{lib.arange(3)[0]:.2f}" == "0.00"
        assert f"{lib.array(0.35487):.1f}" == "0.4"
        assert f"{lib.array([1, 2, 3])}" == "array([1, 2, 3], dtype=int32)"
        with pytest.raises(TypeError):
            f"{lib.arange(3):.2f}"
        with pytest.raises(TypeError):
            f"{lib.array([1.5]):.2f}"
        it = iter(lib.array([[1, 2], [3, 4]]))
        assert type(it).__name__ == "ArrayIterator" and type(it) is lib.ArrayIterator
        assert [x.tolist() for x in it] == [[1, 2], [3, 4]]
        with pytest.raises(TypeError, match="iter"):
            iter(lib.array(1))
        assert bytes(lib.array([1, 2], lib.int16)) == b"\x01\x00\x02\x00"
        assert lib.array(1.0).__array_namespace__() is lib
        with pytest.raises(ValueError):
            lib.array(1.0).__array_namespace__(api_version="2023.12")
        assert lib.array([1]).__dlpack_device__() == (1, 0)


@pytest.mark.parametrize("dtype", ["bool_", "uint8", "int16", "uint64", "float16", "float32", "bfloat16", "complex64"])
def test_pickle_and_copy(dtype):
    a = ma.array([1, 0, 3], getattr(ma, dtype))
    for b in (pickle.loads(pickle.dumps(a)), copy.copy(a), copy.deepcopy(a)):
        assert b is not a and b.dtype == a.dtype and ma.array_equal(a, b).item()
    ours, theirs = a.__getstate__(), mx.array([1, 0, 3], getattr(mx, dtype)).__getstate__()
    assert ours[1] == theirs[1]
    np.testing.assert_array_equal(ours[0], theirs[0])


def test_array_at_object():
    a = ma.array([0, 1, 2])
    assert type(a.at) is ma.ArrayAt
    with pytest.raises(ValueError, match=r"Must give indices to array.at"):
        a.at.add(1)
    assert a.at[1].add(2).tolist() == [0, 3, 2]
    assert a.at[ma.array([0, 0])].subtract(1).tolist() == [-2, 1, 2]


def test_numpy_views_keep_the_array_alive():
    a = ma.ones((2, 2))
    b = ma.broadcast_to(a, (5, 2, 2))
    a_np, b_np = np.array(a, copy=False), np.array(b, copy=False)
    assert not a_np.flags.owndata and a_np.flags.writeable
    assert b_np.strides == (0, 8, 4)
    assert np.array(a).flags.owndata
    c = ma.arange(3)
    ref = weakref.ref(c)
    view = np.array(c, copy=False)
    c = None
    assert ref() is not None
    view = None  # noqa: F841
    assert ref() is None


def test_dlpack_round_trip():
    x = ma.arange(16).reshape(4, 4)[::2, ::2]
    np.testing.assert_array_equal(np.from_dlpack(x), np.arange(16).reshape(4, 4)[::2, ::2])
    src = np.arange(3, dtype=np.float32)
    y = ma.from_dlpack(src, copy=True)
    src += 10
    assert y.tolist() == [0.0, 1.0, 2.0]
    for lib in (ma, mx):
        for np_dtype, name in [(np.float64, "float32"), (np.complex128, "complex64"), (np.uint16, "uint16")]:
            assert lib.from_dlpack(np.ones(3, np_dtype)).dtype == getattr(lib, name)
    same("mx.from_dlpack(np.arange(3.0), copy=False)")
    same("mx.from_dlpack([1, 2])")


@pytest.mark.parametrize("expr", [
    "mx.asarray([1, 2, 3])", "mx.asarray(((1, 2), (3, 4)))", "mx.asarray(3.14)", "mx.asarray(1 + 2j)",
    "mx.asarray(mx.array([1, 2]), dtype=mx.float32)", "mx.asarray(mx.array([1, 2]), copy=True)",
    "mx.asarray(mx.array([1, 2]), copy=False)", "mx.asarray([1, 2], copy=False)",
    "mx.asarray(np.arange(3, dtype=np.float32), copy=False)",
    "mx.asarray(np.arange(3, dtype=np.float32), dtype=mx.int32, copy=False)",
    "mx.asarray(42, dtype=mx.float16)",
])
def test_asarray(expr):
    same(expr)


# --- construction ---------------------------------------------------------------------------------

@pytest.mark.parametrize("expr", [
    "mx.array([300, -1], dtype=mx.uint8)", "mx.array(300, dtype=mx.uint8)", "mx.array(-1, dtype=mx.uint32)",
    "mx.array([1e100, 1 / 3], dtype=mx.float64)", "mx.array(39.14223403241, dtype=mx.float64)",
    "mx.array([2**53 + 1], dtype=mx.float64)", "mx.array([2**53 + 1])", "mx.array([2**31 - 1], dtype=mx.float32)",
    "mx.array([2**40], dtype=mx.int32)", "mx.array([2**31], dtype=mx.uint32)", "mx.array([-1], dtype=mx.uint32)",
    "mx.array([-1], dtype=mx.uint64)", "mx.array([2**63 - 1], dtype=mx.uint64)", "mx.array([2**63])",
    "mx.array(2**63)", "mx.array(2**40, dtype=mx.int32)", "mx.array([2**64 - 1], dtype=mx.uint64)",
    "mx.array([1.7, -1.7, 300.5], dtype=mx.int16)", "mx.array([1 + 2j], dtype=mx.float32)",
    "mx.array([True, 2.5], dtype=mx.bool_)", "mx.array([1e40], dtype=mx.float16)",
    "mx.array([[1], 2])", "mx.array([[1], [2, 3]])", "mx.array([1, [3]])", "mx.array([[1, 2], [[3], [4]]])",
    "mx.array([1, 'a'])", "mx.array([None])", "mx.array(object())", "mx.array([np.int64(3)])",
    "mx.array([np.float64(1.5)])", "mx.array([np.bool_(True)])", "mx.array([])", "mx.array([[], []])",
    "mx.array(np.float32(2.5))", "mx.array(np.int16(2))", "mx.array(np.uint64(2**64 - 1))",
    "mx.array(b'Hello')", "mx.array(np.array([300]), dtype=mx.uint8)",
    "mx.array([mx.array(3, mx.int8), 2])", "mx.array([mx.array(3, mx.int8), 2.5])",
    "mx.array([mx.array([1.0]), 1.0])", "mx.array([1.0, mx.array([1.0])])",
    "mx.array([[mx.array([True], mx.int8), [2.0]], [[3.0], mx.array([False], mx.bfloat16)]])",
    "mx.array([mx.array([1], mx.uint8), mx.array([2], mx.int8)])",
])
def test_array_construction(expr):
    same(expr)


def test_array_from_lists_of_arrays_stays_in_the_graph():
    x = ma.array([1.0])
    y = ma.array([x, ma.array([2.0])])
    assert y._data is None and y.tolist() == [[1.0], [2.0]]


# --- scalars and numpy data beside arrays -----------------------------------------------------------

@pytest.mark.parametrize("dtype", ["bool_", "uint8", "int8", "int32", "uint32", "int64", "uint64", "float16",
                                   "bfloat16", "float32", "complex64"])
@pytest.mark.parametrize("scalar", ["-2", "300", "2**31", "2**40", "-(2**31) - 1", "2**63 - 1", "2**63", "1.5",
                                    "True", "2j", "np.float32(2.5)", "np.float64(1.5)", "np.int64(2**40)",
                                    "np.int16(-1)", "np.bool_(True)", "np.complex64(3j)", "np.complex128(3j)",
                                    "np.array([2.5, 300.7])", "np.array(2.5, dtype=np.float32)"])
def test_scalars_beside_arrays(dtype, scalar):
    same(f"mx.array([1, 0], mx.{dtype}) + {scalar}")
    same(f"mx.multiply({scalar}, mx.array([1, 0], mx.{dtype}))")


@pytest.mark.parametrize("expr", [
    "mx.add([1, 2], [3, 4])", "mx.add(mx.array([1]), [1.5, 2])", "mx.add(mx.array([1]), 'x')",
    "mx.exp([1.0, 2.0])", "mx.add(1, 2)", "mx.add(np.int64(2), np.float32(2))", "mx.add(1, 2.5)",
    "mx.where(mx.array([True]), np.float32(1.5), mx.array([1], dtype=mx.int8))",
])
def test_op_arguments(expr):
    same(expr)


# --- printing ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(6,), (7,), (10,), (999,), (7, 2), (2, 12), (2, 1, 7), (6, 6), (7, 7), (0, 3)],
                         ids=lambda s: "x".join(map(str, s)))
def test_summaries(shape):
    same(f"repr(mx.arange({int(np.prod(shape))}).reshape({shape}))")


VALUES = ("[1.123456789, 100000.5, 1e-5, 1e10, 123456789.0, 0.9, 1, -0.0, float('nan'), -float('nan'), "
          "float('inf'), -float('inf')]")


@pytest.mark.parametrize("precision", [-1, 0, 1, 2, 4, 8, -5])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64", "complex64", "int32"])
def test_print_precision(precision, dtype):
    def printed(lib):
        with lib.printoptions(precision=precision):
            vals = eval(VALUES)[:6] if dtype == "int32" else eval(VALUES)
            x = lib.array(vals, getattr(lib, dtype))
            if dtype == "complex64":
                x = x * lib.array(1 - 2j)
            return repr(x), str(lib.array(3.14159, getattr(lib, dtype)))
    assert printed(ma) == printed(mx)


def test_print_options_api():
    for lib in (ma, mx):
        assert lib.get_printoptions().precision == -1
        with lib.printoptions(precision=3) as ctx:
            assert type(ctx).__name__ == "_PrintOptionsContext"
            assert lib.get_printoptions().precision == 3
            with lib.printoptions():
                assert lib.get_printoptions().precision == -1
        assert lib.get_printoptions().precision == -1
        lib.set_printoptions(precision=2)
        assert str(lib.sin(lib.array([1.123456789]))) == "array([0.90], dtype=float32)"
        lib.set_printoptions()
        assert lib.get_printoptions().precision == -1
        options = lib.PrintOptions()
        assert options.precision == -1 and isinstance(lib.get_printoptions(), lib.PrintOptions)


# --- dtype helpers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("expr", [
    "mx.finfo(mx.int16)", "mx.finfo(mx.bool_)", "mx.finfo(mx.complex64).dtype", "mx.finfo(mx.complex64).bits",
    "repr(mx.finfo(mx.complex64))", "repr(mx.finfo(mx.float16))", "mx.finfo(mx.bfloat16).eps",
    "mx.iinfo(mx.float32)", "mx.iinfo(mx.bool_)", "repr(mx.iinfo(mx.uint64))",
    "mx.result_type()", "mx.result_type(1)", "mx.result_type(mx.array([1], mx.int8), mx.int16, mx.float16)",
    "mx.can_cast(1, mx.int8)", "mx.can_cast(mx.int64, mx.float32)", "mx.can_cast(mx.uint64, mx.int64)",
    "mx.can_cast(mx.float16, mx.bfloat16)", "mx.can_cast(mx.array([1], mx.int8), mx.int32)",
    "type(mx.finfo(float)).__name__",
])
def test_dtype_helpers(expr):
    same(expr)


def test_names_mlx_does_not_have():
    assert not hasattr(mx, "copy") and not hasattr(ma, "copy")


# --- elementwise names and rules --------------------------------------------------------------------

ALIASES = {"acos": "arccos", "acosh": "arccosh", "asin": "arcsin", "asinh": "arcsinh", "atan": "arctan",
           "atanh": "arctanh", "conj": "conjugate"}


@pytest.mark.parametrize("dtype", ["bool_", "int8", "uint32", "float16", "bfloat16", "float32", "complex64"])
@pytest.mark.parametrize("name", ["trunc", "positive", "degrees", "radians", "isposinf", "isneginf", "nan_to_num",
                                  "negative", "floor", "sigmoid", "erf", "bitwise_invert", *ALIASES])
def test_unary(name, dtype):
    vals = "[0.5, -0.25, 0.0]" if dtype != "complex64" else "[0.5 - 0.25j, -0.25 + 0.5j, float('inf') + 1j]"
    same(f"mx.{name}(mx.array({vals}, mx.{dtype}))", rtol=TOLERANCE.get(dtype, 1e-6))


@pytest.mark.parametrize("dtype", ["bool_", "int8", "uint32", "float16", "float32", "float64", "complex64"])
@pytest.mark.parametrize("name", ["logical_xor", "floor_divide", "remainder", "atan2", "pow",
                                  "bitwise_left_shift", "bitwise_right_shift"])
def test_binary(name, dtype):
    same(f"mx.{name}(mx.array([5, 1, 0], mx.{dtype}), mx.array([2, 0, 1], mx.{dtype}))",
         rtol=TOLERANCE.get(dtype, 1e-6))


def test_positive_and_nan_to_num_arguments():
    same("mx.positive(2)")
    same("mx.nan_to_num(mx.array([float('nan')], mx.float64))")
    same("mx.trunc(mx.array(-2.7))")


def test_aliases_are_registered():
    for alias, name in {**ALIASES, "atan2": "arctan2", "pow": "power", "bitwise_left_shift": "left_shift",
                        "bitwise_right_shift": "right_shift"}.items():
        assert getattr(ma, alias) is getattr(ma, name)


@pytest.mark.parametrize("shapes", [((2,), (3,), (1,)), ((1,), (3,), (2,)), ((2, 1), (1, 3), (4,))])
def test_broadcast_messages_name_the_clashing_pair(shapes):
    c, x, y = shapes
    same(f"mx.where(mx.zeros({c}, dtype=mx.bool_), mx.zeros({x}), mx.zeros({y}))")
    same(f"mx.broadcast_shapes({c}, {x}, {y})")


@pytest.mark.parametrize("expr", ["mx.swapaxes(mx.zeros((2, 3)), 0, 5)", "mx.sum(mx.zeros((2, 3)), -3)"])
def test_axis_errors_are_index_errors(expr):
    with pytest.raises(IndexError):
        eval(expr, {"mx": ma})
    with pytest.raises(IndexError):
        eval(expr, {"mx": mx})


@pytest.mark.parametrize("expr", [
    "mx.round(mx.array([15, 122, 25, -15], mx.int32), decimals=-1)",
    "mx.round(mx.array([15, 122], mx.int32), decimals=-2)",
    "mx.round(mx.array([True, False]), decimals=-1)",
    "mx.isclose(mx.array([float('inf'), float('inf'), float('-inf'), 1.0]), "
    "mx.array([float('inf'), float('-inf'), float('-inf'), 1.0 + 1e-9]))",
    "mx.isclose(mx.array([float('nan')]), mx.array([float('nan')]), equal_nan=True)",
    "mx.sigmoid(mx.array([-8.0, 8.0], mx.float16))",
])
def test_round_isclose_sigmoid(expr):
    same(expr)
