"""Runtime behaviour against MLX: devices and streams (thread rules, thread-local streams), memory
figures and limits, eval/async_eval/synchronize semantics, DOT export, deferred file reads and
``nn.value_and_grad``."""
import gc
import io
import os
import re
import threading

import numpy as np
import pytest

import mlxarm.core as ma
import mlxarm.nn as mann


@pytest.fixture(autouse=True)
def _main_default_streams():
    """Both libraries make the main thread's default stream before any other (MLX does so lazily):
    stream numbering then agrees between them for tests run after these."""
    ma.default_stream(ma.cpu)
    try:
        import mlx.core as mx
    except ImportError:
        return
    mx.default_stream(mx.cpu)


def _in_thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def _error(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return type(e), str(e)
    return None


# --- devices ---------------------------------------------------------------------------------------------

def test_device_count_and_info_match_mlx():
    mx = pytest.importorskip("mlx.core")
    assert ma.device_count(ma.cpu) == mx.device_count(mx.cpu) == 1
    assert ma.device_count(ma.gpu) == mx.device_count(mx.gpu)
    assert isinstance(ma.device_count(ma.cpu), int)
    for got, want in ((ma.device_info(ma.cpu), mx.device_info(mx.cpu)),
                      (ma.device_info(), mx.device_info())):
        assert {k: got[k] for k in want} == want
    assert ma.device_info(ma.gpu) == mx.device_info(mx.gpu)
    with pytest.raises(TypeError, match="device_count"):
        ma.device_count(ma.Device(ma.cpu))


def test_gpu_streams_refused_like_mlx():
    mx = pytest.importorskip("mlx.core")
    if mx.is_available(mx.gpu):
        pytest.skip("the oracle has a GPU")
    for name in ("default_stream", "new_stream", "set_default_device"):
        want = _error(lambda: getattr(mx, name)(mx.gpu))
        got = _error(lambda: getattr(ma, name)(ma.gpu))
        assert got[0] is want[0] is ValueError and got[1] == want[1]
    want = _error(lambda: mx.abs(mx.array(1), stream=mx.gpu))
    assert _error(lambda: ma.abs(ma.array(1), stream=ma.gpu)) == (ValueError, want[1])


def test_stream_api_names_and_reprs():
    mx = pytest.importorskip("mlx.core")
    for name in ("ThreadLocalStream", "clear_streams", "new_thread_local_stream",
                 "new_thread_unsafe_stream", "device_count", "get_memory_limit", "export_to_dot"):
        assert hasattr(mx, name) and hasattr(ma, name), name
    t, u = ma.new_thread_local_stream(ma.cpu), mx.new_thread_local_stream(mx.cpu)
    pattern = r"ThreadLocalStream\(Device\(cpu, 0\), \d+\)"
    assert re.fullmatch(pattern, repr(t)) and re.fullmatch(pattern, repr(u))
    assert t == t and t != ma.new_thread_local_stream(ma.cpu)
    assert repr(t.device) == repr(u.device)
    with ma.stream(t) as ctx:
        assert ctx is None
        assert ma.arange(3).tolist() == [0, 1, 2]
    with pytest.raises(TypeError):
        ma.stream(None)
    with pytest.raises(TypeError):
        ma.StreamContext(None)


def test_each_thread_has_its_own_default_stream():
    mx = pytest.importorskip("mlx.core")
    for m in (ma, mx):
        main = m.default_stream(m.cpu)
        other = _in_thread(lambda: m.default_stream(m.cpu))
        assert main != other and main == m.default_stream(m.cpu)
        assert other.device == m.cpu


def test_new_stream_belongs_to_its_thread():
    mx = pytest.importorskip("mlx.core")
    for m in (ma, mx):
        s = m.new_stream(m.cpu)

        def use():
            with m.stream(s):
                return _error(lambda: m.eval(m.arange(3) * 2))

        err = _in_thread(use)
        assert err == (RuntimeError, f"There is no Stream(cpu, {repr(s).split(', ')[-1][:-1]}) "
                                     "in current thread.")
        with m.stream(s):
            assert (m.arange(3) * 2).tolist() == [0, 2, 4]  # fine in its own thread


def test_thread_unsafe_and_thread_local_streams_work_anywhere():
    mx = pytest.importorskip("mlx.core")
    for m in (ma, mx):
        u = m.new_thread_unsafe_stream(m.cpu)
        t = m.new_thread_local_stream(m.cpu)

        def use():
            with m.stream(u):
                a = (m.arange(3) + 1).tolist()
            with m.stream(t):
                b = (m.arange(3) * 3).tolist()
            return a, b

        assert _in_thread(use) == ([1, 2, 3], [0, 3, 6])


def test_clear_streams_drops_this_threads_streams():
    mx = pytest.importorskip("mlx.core")
    for m in (ma, mx):
        def use():
            s = m.new_stream(m.cpu)
            with m.stream(s):
                x = m.arange(3) + 1
            m.clear_streams()
            return _error(lambda: m.eval(x))

        err = _in_thread(use)
        assert err[0] is RuntimeError and "in current thread" in err[1]


# --- memory --------------------------------------------------------------------------------------------

def test_memory_limits_match_mlx():
    mx = pytest.importorskip("mlx.core")
    assert ma.get_memory_limit() == mx.get_memory_limit()
    prev = ma.set_memory_limit(10)
    assert ma.set_memory_limit(0) == 10
    assert ma.get_memory_limit() == 0
    assert ma.set_memory_limit(prev) == 0 and ma.get_memory_limit() == prev
    prev_cache = ma.set_cache_limit(0)
    mprev_cache = mx.set_cache_limit(0)
    assert ma.set_cache_limit(prev_cache) == mx.set_cache_limit(mprev_cache) == 0
    assert ma.set_cache_limit(prev_cache) == prev_cache
    assert ma.set_wired_limit(1000) == mx.set_wired_limit(1000) == 0
    assert ma.set_wired_limit(0) == mx.set_wired_limit(0) == 0


def test_reset_peak_memory_is_zero():
    a = ma.ones((64,)) + 1
    ma.eval(a)
    ma.reset_peak_memory()
    assert ma.get_peak_memory() == 0
    b = ma.ones((64,)) * 2
    ma.eval(b)
    assert ma.get_peak_memory() >= ma.get_active_memory() > 0


def test_elementwise_chains_reuse_dying_buffers():
    x = ma.zeros((1 << 20,))
    ma.eval(x)
    pre = ma.get_peak_memory()
    y = x
    del x
    for _ in range(5):
        y = ma.abs(y)
        y = ma.reshape(y, (-1,)).T
        y = ma.stop_gradient(y)
        y = ma.exp(y[:-1])
    ma.eval(y)
    assert ma.get_peak_memory() == pre


def test_arrays_returned_unchanged_are_counted_once():
    gc.collect()
    base = ma.get_active_memory()
    a = ma.ones((1 << 16,)) + 0
    b = ma.stop_gradient(a)
    ma.eval(b)
    assert ma.get_active_memory() - base == 4 << 16
    del a, b
    gc.collect()
    assert ma.get_active_memory() == base


# --- eval / async_eval / synchronize ----------------------------------------------------------------

def test_eval_ignores_non_arrays_like_mlx():
    mx = pytest.importorskip("mlx.core")
    for args in ([1], ["a"], [[1, 2]], [{"a": 1}], [None], [[None]], [object()], [1.5]):
        assert mx.eval(*args) is None
        assert ma.eval(*args) is None
        assert ma.async_eval(*args) is None
    a = ma.arange(3) + 1
    ma.eval({"x": [a, 3], "y": None})
    assert a._data is not None


def test_async_eval_error_raised_once_by_synchronize():
    # (MLX may also report it from async_eval itself when its worker is quick: a race.)
    a = ma.linalg.inv(ma.array([[1.0, 2.0], [2.0, 4.0]]), stream=ma.cpu)
    ma.async_eval(a)
    with pytest.raises(RuntimeError, match="Singular"):
        ma.synchronize(ma.cpu)
    ma.synchronize(ma.cpu)  # the error was reported: the stream is clean again
    assert (ma.array(1) + 1).item() == 2


def test_async_eval_results():
    x = ma.array(1) + ma.array(1) + ma.array(1)
    ma.async_eval(x)
    y = x + 1
    ma.async_eval(y)
    assert x.item() == 3 and y.item() == 4
    ma.synchronize()


def test_async_eval_refused_inside_grad():
    mx = pytest.importorskip("mlx.core")

    def fun(m):
        def f(x):
            y = x + 1.0
            m.async_eval(y)
            return m.exp(y)
        return f

    want = _error(lambda: mx.grad(fun(mx))(mx.array(1.0)))
    assert want[0] is ValueError
    assert _error(lambda: ma.grad(fun(ma))(ma.array(1.0))) == want


# --- DOT export --------------------------------------------------------------------------------------

def _dot(m, make):
    f = io.StringIO()
    args, kwargs = make(m)
    m.export_to_dot(f, *args, **kwargs)
    return re.sub(r"\d{6,}", "N", f.getvalue())


@pytest.mark.parametrize("make", [
    lambda m: ((m.array(1.0),), {}),
    lambda m: ((m.array(1.0) + m.array(2.0),), {}),
    lambda m: ((lambda a, b: (m.exp(a + b) * (a + b), a))(m.array(1.0), m.array(2.0)), {}),
    lambda m: ((lambda a: (m.sqrt(a) - 1,))(m.array(2.0)), {}),
])
def test_export_to_dot_matches_mlx(make):
    mx = pytest.importorskip("mlx.core")
    assert _dot(ma, make) == _dot(mx, make)


def test_export_to_dot_names_and_paths(tmp_path):
    x = ma.array(1.0)
    f = io.StringIO()
    ma.export_to_dot(f, x + 1, x=x)
    assert '"x" ->' in f.getvalue()
    path = str(tmp_path / "g.dot")
    ma.export_to_dot(path, x)
    assert open(path).read().startswith("digraph {")
    with pytest.raises(ValueError, match="tree_flatten"):
        ma.export_to_dot(io.StringIO(), 1)


# --- deferred reads ---------------------------------------------------------------------------------

def test_truncated_npy_fails_when_evaluated(tmp_path):
    mx = pytest.importorskip("mlx.core")
    path = str(tmp_path / "t.npy")
    np.save(path, np.arange(16, dtype=np.float32))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 40)
    outs = [m.load(path, stream=m.cpu) for m in (ma, mx)]
    assert outs[0].shape == outs[1].shape and outs[0].dtype == ma.float32
    want = _error(lambda: mx.eval(outs[1]))
    assert want[0] is RuntimeError
    # Ours is MLX's RuntimeError with MLX's text, and also a ValueError naming the file and the problem.
    for got in (_error(lambda: ma.eval(outs[0])), _error(lambda: ma.eval(ma.add(ma.load(path), 1.0)))):
        assert issubclass(got[0], RuntimeError) and issubclass(got[0], ValueError)
        assert got[1].startswith(want[1].rstrip(".")) and path in got[1] and "declares" in got[1]


def test_loaded_buffers_are_counted(tmp_path):
    path = str(tmp_path / "d.npy")
    np.save(path, np.ones(1024, np.float32))
    ma.reset_peak_memory()
    y = ma.load(path)
    ma.eval(y)
    load_only = ma.get_peak_memory()
    scale = ma.array(2.0)
    y = ma.load(path) * scale
    ma.eval(y)
    assert load_only >= 4096 and ma.get_peak_memory() == load_only


# --- nn ----------------------------------------------------------------------------------------------

def test_nn_value_and_grad_matches_mlx():
    mx = pytest.importorskip("mlx.core")
    mnn = pytest.importorskip("mlx.nn")
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    xs = rng.standard_normal((5, 4)).astype(np.float32)
    results = []
    for m, nn in ((ma, mann), (mx, mnn)):
        model = nn.Linear(4, 3)
        model.update({"weight": m.array(w), "bias": m.array(b)})
        fn = nn.value_and_grad(model, lambda x: (model(x) ** 2).mean())
        value, grads = fn(m.array(xs))
        results.append((np.array(value), np.array(grads["weight"]), np.array(grads["bias"])))
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
