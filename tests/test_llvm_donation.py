"""Buffer donation on the LLVM executor: an elementwise kernel writes its output into the buffer of an
input that dies with the eval, as MLX does, and never into a buffer anything else can still read."""
import numpy as np
import pytest

pytest.importorskip("llvmlite", reason="the LLVM backend needs llvmlite")

import mlxarm.core as ma  # noqa: E402
from mlxarm.backend import executor  # noqa: E402


@pytest.fixture
def llvm(monkeypatch):
    monkeypatch.setenv("MLXARM_DEVICE", "llvm")
    return executor("llvm")


def _address(a) -> int:
    return a.__array__(copy=False).__array_interface__["data"][0]  # a view of its buffer


def _fresh(values):
    x = ma.array(np.asarray(values, np.float32))
    ma.eval(x)
    return x, _address(x)


def test_dying_input_buffer_is_reused(llvm):
    for _ in range(3):  # recorded, then replayed
        x, where = _fresh(np.arange(4096))
        y = ma.exp(ma.sin(x) * 2) + 1
        del x
        ma.eval(y)
        assert _address(y) == where
        np.testing.assert_allclose(np.array(y), np.exp(np.sin(np.arange(4096, dtype=np.float32)) * 2) + 1,
                                   rtol=1e-5)


def test_compiled_function_donates_its_input(llvm):
    fun = ma.compile(lambda x: ma.sin(x) + 1)
    for _ in range(3):
        x, where = _fresh(np.arange(16))
        out = fun(x)
        del x
        ma.eval(out)
        assert _address(out) == where


def test_slice_output_keeps_the_whole_buffer(llvm):
    x = ma.ones((1 << 16,)) * 1  # computed, so counted in the memory statistics
    ma.eval(x)
    where = _address(x)
    before = ma.get_peak_memory()
    y = ma.exp(x[:-3])
    del x
    ma.eval(y)
    assert _address(y) == where and y.shape == ((1 << 16) - 3,)
    assert ma.get_peak_memory() == before
    np.testing.assert_allclose(np.array(y), np.e, rtol=1e-6)


def test_held_or_viewed_inputs_are_never_written(llvm):
    x, where = _fresh(np.arange(64))
    y = ma.abs(x) * 3  # the user still holds x
    ma.eval(y)
    assert _address(y) != where
    np.testing.assert_array_equal(np.array(x), np.arange(64, dtype=np.float32))

    x, where = _fresh(np.arange(64))
    view = x.__array__(copy=False)  # a numpy view of x's buffer
    y = ma.abs(x) * 3
    del x
    ma.eval(y)
    assert _address(y) != where
    np.testing.assert_array_equal(view, np.arange(64, dtype=np.float32))


def test_inputs_read_by_later_kernels_or_elsewhere_are_kept(llvm):
    """The buffer stays intact while another kernel of the eval still reads it: a view folded into
    several kernels (the backward pass of x ** x reads x through one reshape in three kernels), a
    reduction and a transpose (read at other positions than the output's)."""
    def fun(x, y):
        return (x - y) ** x

    g = ma.grad(fun)(ma.array(1.0), ma.array(1.0)).item()  # (an assert's operands would stay held)
    assert g == 1.0
    rng = np.random.default_rng(0)
    a = rng.standard_normal((33, 65)).astype(np.float32)
    x = ma.array(a)
    total = ma.sum(x)
    y = ma.exp(x) + total
    z = ma.abs(ma.reshape(x, (65, 33))) + ma.transpose(x)[:, :1].reshape(65, 1)
    del x
    ma.eval(y, z)
    np.testing.assert_allclose(np.array(y), np.exp(a) + a.sum(), rtol=1e-4)
    np.testing.assert_allclose(np.array(z), np.abs(a.reshape(65, 33)) + a.T[:, :1], rtol=1e-6)
    t = ma.array(a)
    w = ma.transpose(t) * 2  # reads t at transposed positions: written in place it would corrupt itself
    del t
    np.testing.assert_array_equal(np.array(w), a.T * 2)


def test_input_read_again_through_another_argument_is_kept(llvm):
    """A dying input that the kernel also reads through a second argument (the same leaf through
    another view folded in, or a realized view of its buffer) is not written: its later elements, or
    the element a broadcast reads, would already hold outputs."""
    a = np.arange(64, dtype=np.float32)
    for _ in range(3):  # recorded, then replayed
        x = ma.array(a)
        y = x + x[::-1]  # reversed: position i reads element 63 - i
        del x
        np.testing.assert_array_equal(np.array(y), a + a[::-1])

    b = np.random.default_rng(1).standard_normal((7, 31)).astype(np.float32)
    for _ in range(3):
        base = ma.array(b)
        # the flat view is read element for element; the first element, broadcast, through a
        # realized view of the same buffer
        y = ma.sin(base.reshape(-1)) * base[..., :1].reshape(-1)[:1]
        del base
        np.testing.assert_allclose(np.array(y), np.sin(b.ravel()) * b[0, 0], rtol=1e-6, atol=1e-7)
