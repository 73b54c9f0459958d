"""The buffer cache behind the LLVM executor's large outputs (``backend.buffers``): a freed buffer of a
megabyte or more is kept for the next output of its size, counted as cache memory, let go by
``clear_cache`` and bounded by ``set_cache_limit``, as MLX's buffer cache."""
import gc

import numpy as np
import pytest

pytest.importorskip("llvmlite", reason="the LLVM backend needs llvmlite")

import mlxarm.core as ma  # noqa: E402
from mlxarm.backend import buffers, executor  # noqa: E402

N = 1 << 19  # float32 elements: 2 MiB, above buffers.MIN_BYTES


@pytest.fixture
def llvm(monkeypatch):
    monkeypatch.setenv("MLXARM_DEVICE", "llvm")
    gc.collect()  # earlier tests' garbage returns its buffers now, not in the middle of a test
    ma.clear_cache()
    yield executor("llvm")
    ma.clear_cache()


def _address(a) -> int:
    return a.__array__(copy=False).__array_interface__["data"][0]


def _output(x):
    y = ma.exp(x) * 2.0
    ma.eval(y)
    return y


def test_a_freed_large_output_is_reused(llvm):
    x = ma.array(np.linspace(-1, 1, N, dtype=np.float32))
    y = _output(x)
    where = _address(y)
    before = ma.get_cache_memory()
    del y
    gc.collect()
    assert ma.get_cache_memory() == before + 4 * N  # kept, counted as cache
    z = _output(x)
    assert _address(z) == where and ma.get_cache_memory() == before
    np.testing.assert_allclose(np.array(z), np.exp(np.linspace(-1, 1, N, dtype=np.float32)) * 2, rtol=1e-6)


def test_small_outputs_do_not_use_the_cache(llvm):
    reserved = ma.get_cache_memory()  # compiled programs' arenas that earlier tests keep alive
    x = ma.array(np.ones(1024, np.float32))
    y = _output(x)
    assert type(np.asarray(y).base) is not buffers.Lease
    del y
    gc.collect()
    assert ma.get_cache_memory() == reserved


def test_clear_cache_and_the_limit(llvm):
    reserved = ma.get_cache_memory()  # compiled programs' arenas that earlier tests keep alive
    x = ma.array(np.ones(N, np.float32))
    y = _output(x)
    del y
    gc.collect()
    assert ma.get_cache_memory() >= reserved + 4 * N
    ma.clear_cache()
    assert ma.get_cache_memory() == reserved
    previous = ma.set_cache_limit(0)
    try:
        y = _output(x)
        del y
        gc.collect()
        assert ma.get_cache_memory() == reserved  # nothing is kept past the limit
    finally:
        ma.set_cache_limit(previous)


def test_a_cached_buffer_is_donated_like_any_other(llvm):
    for _ in range(3):  # recorded, then replayed
        x = ma.exp(ma.array(np.full(N, 0.5, np.float32)))  # a large kernel output: from the cache
        ma.eval(x)
        where = _address(x)
        y = ma.sin(x) + 1.0
        del x
        ma.eval(y)
        assert _address(y) == where
        np.testing.assert_allclose(np.array(y), np.sin(np.exp(np.float32(0.5))) + 1, rtol=1e-6)
