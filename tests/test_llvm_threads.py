"""The LLVM executor's worker threads (``mlxarm.backend.llvm_threads``): every chunk of every job runs
exactly once, on the calling thread and the helpers, whether the helpers are spinning, napping or gone."""
import ctypes
import time

import numpy as np
import pytest

pytest.importorskip("llvmlite", reason="the LLVM backend needs llvmlite")

from mlxarm.backend import llvm, llvm_threads  # noqa: E402

# out[i] += 2 * x[i] + 1 over [start, end): run twice on an element, it would add twice.
_ACCUMULATE = """
define void @accumulate(ptr %args, i64 %lo, i64 %hi) {
entry:
  %op = load ptr, ptr %args
  %ip.p = getelementptr ptr, ptr %args, i64 1
  %ip = load ptr, ptr %ip.p
  br label %loop
loop:
  %i = phi i64 [%lo, %entry], [%i1, %body]
  %more = icmp slt i64 %i, %hi
  br i1 %more, label %body, label %done
body:
  %a = getelementptr float, ptr %ip, i64 %i
  %v = load float, ptr %a
  %v2 = fmul float %v, 2.0
  %v3 = fadd float %v2, 1.0
  %b = getelementptr float, ptr %op, i64 %i
  %old = load float, ptr %b
  %new = fadd float %v3, %old
  store float %new, ptr %b
  %i1 = add i64 %i, 1
  br label %loop
done:
  ret void
}
"""


@pytest.fixture(scope="module")
def kernel():
    compiler = llvm.Compiler()
    fn = compiler.load(_ACCUMULATE, "accumulate")
    return compiler, fn, ctypes.cast(fn, ctypes.c_void_p).value


def _run_checked(workers, address, n, chunk, rng):
    x = rng.random(n, dtype=np.float32)
    out = np.zeros(n, np.float32)
    args = (ctypes.c_void_p * 2)(out.ctypes.data, x.ctypes.data)
    workers.run(address, ctypes.addressof(args), n, chunk)
    np.testing.assert_array_equal(out, x * 2 + 1)


@pytest.mark.parametrize("threads", [2, 3, 4])
def test_every_chunk_runs_once(kernel, threads):
    compiler, _, address = kernel
    workers = llvm_threads.Workers(compiler, threads)
    rng = np.random.default_rng(threads)
    try:
        for n, chunk in [(1, 1), (2, 1), (10, 3), (1000, 7), (4096, 4096), (4097, 4096), (200_000, 1000)]:
            for _ in range(30):
                _run_checked(workers, address, n, chunk, rng)
    finally:
        workers.stop()


def test_napping_or_stopped_helpers_are_never_waited_for(kernel):
    compiler, _, address = kernel
    workers = llvm_threads.Workers(compiler, 2)
    rng = np.random.default_rng(0)
    try:
        _run_checked(workers, address, 100_000, 100, rng)
        time.sleep(0.05)  # the helper naps after about a millisecond without work
        _run_checked(workers, address, 100_000, 100, rng)
        workers.stop()
        for t in workers.threads:
            t.join(timeout=10)
        assert not any(t.is_alive() for t in workers.threads)
        _run_checked(workers, address, 50_000, 64, rng)  # with no helper left, the caller does it all
    finally:
        workers.stop()


def test_executor_shares_kernels_out(monkeypatch):
    """Fused kernels big enough to share out, on an executor with three workers, give numpy's result."""
    import mlxarm.core as ma
    from mlxarm.backend import _EXECUTORS

    monkeypatch.setenv("MLXARM_THREADS", "3")
    monkeypatch.setenv("MLXARM_DEVICE", "llvm")
    ex = llvm.LLVMExecutor()
    monkeypatch.setitem(_EXECUTORS, "llvm", ex)
    rng = np.random.default_rng(1)
    a = rng.standard_normal((257, 1031)).astype(np.float32)
    b = rng.standard_normal((1031,)).astype(np.float32)
    got = np.array(ma.tanh(ma.array(a) * ma.array(b)) + ma.sum(ma.array(a), axis=1, keepdims=True))
    assert ex.pool is not None and ex.kernels_run >= 2
    ex.pool.stop()
    expected = np.tanh(a * b) + a.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_concurrent_callers_each_get_their_job_done(kernel):
    """Two threads dispatching at once: one shares its job out, the other is told to run its own."""
    import threading

    compiler, fn, address = kernel
    workers = llvm_threads.Workers(compiler, 2)
    errors = []

    def caller(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(200):
                x = rng.random(5000, dtype=np.float32)
                out = np.zeros(5000, np.float32)
                args = (ctypes.c_void_p * 2)(out.ctypes.data, x.ctypes.data)
                if not workers.run(address, ctypes.addressof(args), 5000, 64):
                    fn(args, 0, 5000)
                np.testing.assert_array_equal(out, x * 2 + 1)
        except AssertionError as e:
            errors.append(e)

    threads = [threading.Thread(target=caller, args=(s,)) for s in range(3)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        workers.stop()
    assert not errors and not any(t.is_alive() for t in threads)
