"""Laziness and evaluation: nothing computes before eval/item/printing/numpy conversion; eval,
async_eval and synchronize; streams and devices (names and reprs as MLX); memory figures; many threads
evaluating shared graphs; very deep graphs."""
import gc
import threading

import numpy as np
import pytest

import mlxarm.core as ma
from mlxarm.backend.numpy_executor import NumpyExecutor


@pytest.fixture
def runs(monkeypatch):
    """Counts the nodes the numpy executor realizes (so it must be the executor)."""
    monkeypatch.setenv("MLXARM_DEVICE", "numpy")
    count = {"nodes": 0}
    real_run = NumpyExecutor.run

    def counting_run(self, refs):
        count["nodes"] += len(refs)
        return real_run(self, refs)

    monkeypatch.setattr(NumpyExecutor, "run", counting_run)
    return count


def _graph():
    x = ma.array(np.arange(6, dtype=np.float32).reshape(2, 3))
    return ma.exp(x) * 2 + x.T.T


@pytest.mark.parametrize("trigger", [
    lambda a: ma.eval(a), lambda a: a.tolist(), lambda a: np.array(a), lambda a: repr(a),
    lambda a: str(a), lambda a: a.sum().item() if hasattr(ma, "sum") else a.reshape(-1)[0].item(),
])
def test_nothing_runs_before_a_value_is_needed(runs, trigger):
    y = _graph()
    assert y._data is None and runs["nodes"] == 0
    _ = (y.shape, y.dtype, y.ndim, y.size, y.nbytes, y.itemsize)
    assert runs["nodes"] == 0
    trigger(y)
    assert y._data is not None and runs["nodes"] > 0
    done = runs["nodes"]
    ma.eval(y)
    np.array(y)
    assert runs["nodes"] == done  # realized arrays are not recomputed


def test_eval_accepts_containers_and_returns_none(runs):
    a, b, c = _graph(), _graph(), _graph()
    assert ma.eval({"a": a, "rest": [b, (c, None)]}) is None
    assert all(x._data is not None for x in (a, b, c))
    assert ma.eval() is None


def test_shared_subgraph_runs_once(runs):
    x = ma.array(np.ones(4, np.float32))
    shared = ma.exp(x)
    outs = [shared + i for i in range(5)]
    ma.eval(outs)
    assert runs["nodes"] == 6  # exp once, five adds


def test_async_eval_then_use():
    y = _graph()
    assert ma.async_eval(y) is None
    ma.synchronize()
    np.testing.assert_allclose(np.array(y), np.exp(np.arange(6).reshape(2, 3)) * 2
                               + np.arange(6).reshape(2, 3), rtol=1e-6)
    z = _graph()
    ma.async_eval(z)
    assert z.tolist() == y.tolist()  # using the array waits for the evaluation
    ma.synchronize(ma.default_stream(ma.cpu))


def test_async_eval_on_a_stream_of_this_thread():
    """Work on a stream this thread made (an LLM server's generation stream) is evaluated in the
    background without error: the streams are this thread's, whichever thread computes them."""
    s = ma.new_stream(ma.cpu)
    with ma.stream(s):
        y = ma.arange(4) * 2
    ma.async_eval(y)
    ma.synchronize(s)  # raises the background evaluation's error, if it met one
    assert y.tolist() == [0, 2, 4, 6]


# --- devices and streams ----------------------------------------------------------------------------------

STREAM_API = ["Device", "DeviceType", "Stream", "StreamContext", "cpu", "gpu", "default_device",
              "set_default_device", "default_stream", "set_default_stream", "new_stream", "stream",
              "eval", "async_eval", "synchronize", "get_active_memory", "get_peak_memory",
              "reset_peak_memory", "get_cache_memory", "clear_cache", "set_memory_limit",
              "set_cache_limit", "set_wired_limit", "device_info", "is_available"]


@pytest.mark.mlx
def test_stream_and_device_api_matches_mlx():
    mx = pytest.importorskip("mlx.core")
    for name in STREAM_API:
        assert hasattr(mx, name), name
        assert hasattr(ma, name), name
    assert repr(ma.default_stream(ma.cpu)) == repr(mx.default_stream(mx.cpu))
    assert repr(ma.cpu) == repr(mx.cpu) and repr(ma.gpu) == repr(mx.gpu)
    assert repr(ma.Device(ma.cpu)) == repr(mx.Device(mx.cpu))
    assert repr(ma.Device(ma.cpu, 0)) == repr(mx.Device(mx.cpu, 0))
    assert ma.Device(ma.cpu) == ma.cpu and mx.Device(mx.cpu) == mx.cpu
    s, t = ma.new_stream(ma.cpu), mx.new_stream(mx.cpu)
    assert repr(s.device) == repr(t.device)
    assert s != ma.default_stream(ma.cpu) and t != mx.default_stream(mx.cpu)


def test_streams_route_ops():
    s = ma.new_stream(ma.cpu)
    x = ma.array([1.0, 2.0])
    y = ma.add(x, 1, stream=s)
    assert y._stream == s
    z = ma.exp(x, stream=ma.cpu)
    assert z._stream == ma.default_stream(ma.cpu)
    with ma.stream(s):
        w = x * 3
        assert ma.default_stream(ma.default_device()) is not None
    assert w._stream == s
    assert (x * 3)._stream != s
    assert y.tolist() == [2.0, 3.0] and w.tolist() == [3.0, 6.0]
    ma.synchronize(s)


def test_stream_context_is_per_thread():
    s = ma.new_stream(ma.cpu)
    seen = []
    with ma.stream(s):
        t = threading.Thread(target=lambda: seen.append((ma.array([1.0]) + 1)._stream))
        t.start()
        t.join()
    assert seen[0] != s


# --- memory ---------------------------------------------------------------------------------------------------

def test_active_memory_follows_live_buffers():
    gc.collect()
    base = ma.get_active_memory()
    a = ma.array(np.ones((512, 512), np.float32)) * 2  # 1 MiB result
    assert ma.get_active_memory() - base < 1 << 20  # nothing computed yet
    ma.eval(a)
    assert ma.get_active_memory() - base >= 1 << 20
    del a
    gc.collect()
    assert ma.get_active_memory() - base < 1 << 20


def test_peak_memory_and_reset():
    gc.collect()
    ma.reset_peak_memory()
    assert ma.get_peak_memory() == 0  # as MLX's: zero, whatever arrays live (an earlier test's model)
    start = ma.get_active_memory()
    a = ma.array(np.ones((1024, 512), np.float32)) + 1
    ma.eval(a)
    peak = ma.get_peak_memory()
    assert peak - start >= 2 << 20
    del a
    gc.collect()
    assert ma.get_peak_memory() == peak  # the peak stays until reset
    ma.reset_peak_memory()
    assert ma.get_peak_memory() < peak
    assert ma.get_cache_memory() >= 0
    ma.clear_cache()


def test_memory_limits_return_previous():
    prev = ma.set_memory_limit(1 << 40)
    assert isinstance(prev, int) and prev > 0
    assert ma.set_memory_limit(prev) == 1 << 40
    prev_cache = ma.set_cache_limit(1 << 30)
    assert ma.set_cache_limit(prev_cache) == 1 << 30


# --- threads ------------------------------------------------------------------------------------------------------

def test_threads_evaluating_shared_arrays():
    base = ma.array(np.arange(1000, dtype=np.float32))
    shared = ma.sqrt(base) * 3 + 1  # unevaluated, used by every thread
    expected = np.sqrt(np.arange(1000, dtype=np.float32)) * 3 + 1
    errors, results = [], {}
    barrier = threading.Barrier(16)

    def work(i):
        try:
            barrier.wait()
            for j in range(20):
                out = shared * (i + 1) - j
                results[(i, j)] = np.array(out)
                np.testing.assert_allclose(np.array(shared), expected, rtol=1e-6)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    for (i, j), got in results.items():
        np.testing.assert_allclose(got, expected * (i + 1) - j, rtol=1e-5)


# --- deep graphs ------------------------------------------------------------------------------------------------

def test_deep_chain_evaluates():
    x = ma.array(np.zeros(3, np.float32))
    y = x
    for _ in range(10_000):
        y = y + 1
    assert y._data is None
    assert y.tolist() == [10_000.0] * 3


def test_deep_chain_printed_and_dropped_unevaluated():
    y = ma.array([0.0])
    for _ in range(20_000):
        y = ma.negative(y)
    z = y * 2
    del y
    assert repr(z) == "array([0], dtype=float32)"
    w = ma.array([1])
    for _ in range(20_000):
        w = w + 1
    del w  # freeing a long unevaluated chain must not overflow the C stack
    gc.collect()


@pytest.mark.parametrize("form", ["matmul", "addmm", "quantized_matmul"])
def test_rows_picked_from_a_product_compute_only_those_rows(form):
    """``(x @ w)[:, -1, :]`` (a language model's last logits) is the product of the picked rows: the
    same values as slicing the whole product, without ever allocating it."""
    rng = np.random.default_rng(0)
    x = ma.array(rng.standard_normal((2, 1024, 64)).astype(np.float32))
    w = ma.array(rng.standard_normal((64, 2048)).astype(np.float32))
    bias = ma.array(rng.standard_normal((2048,)).astype(np.float32))
    qw, scales, biases = ma.quantize(w.T)
    product = {"matmul": lambda x: x @ w, "addmm": lambda x: ma.addmm(bias, x, w),
               "quantized_matmul": lambda x: ma.quantized_matmul(x, qw, scales, biases)}[form]
    rows = x[1]  # a 2-D operand: an int picks a single row (a vector)
    ma.eval(x, rows, w, bias, qw, scales, biases)
    gc.collect()
    before = ma.get_active_memory()
    ma.reset_peak_memory()
    last = product(x)[:, -1, :]
    some = product(x)[1, 3:9:2]
    one = product(rows)[-1]
    ma.eval(last, some, one)
    assert ma.get_peak_memory() - before < 2 * 1024 * 2048 * 4 // 4  # the whole product: 16 MiB
    whole = np.array(product(x))
    np.testing.assert_allclose(np.array(last), whole[:, -1, :], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.array(some), whole[1, 3:9:2], rtol=1e-5, atol=1e-4)
    assert one.shape == (2048,)
    np.testing.assert_allclose(np.array(one), whole[1, -1], rtol=1e-5, atol=1e-4)
