"""Fusion on the LLVM executor: which graphs become how many kernels, what gets a buffer, and that
numpy-only nodes run between kernels."""
import os
import subprocess
import sys
import weakref

import numpy as np
import pytest

pytest.importorskip("llvmlite", reason="the LLVM backend needs llvmlite")

import mlxarm.core as ma  # noqa: E402
from mlxarm.backend import executor  # noqa: E402


@pytest.fixture
def llvm(monkeypatch):
    monkeypatch.setenv("MLXARM_DEVICE", "llvm")
    return executor("llvm")


def arrays(*shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [ma.array(rng.standard_normal(s).astype(np.float32)) for s in shapes]


def kinds(ex):
    return [k for k, _ in ex.last_plan]


def test_elementwise_chain_is_one_kernel(llvm):
    a, b, c = arrays((64, 32), (32,), (64, 1))
    y = ma.tanh(a * b + c) * 0.5
    ma.eval(y)
    assert kinds(llvm) == ["kernel"]
    an, bn, cn = np.array(a), np.array(b), np.array(c)
    np.testing.assert_allclose(np.array(y), np.tanh(an * bn + cn) * 0.5, rtol=2e-5, atol=2e-6)


def test_views_fuse_as_strides(llvm):
    a, b = arrays((16, 8), (8, 16))
    y = ma.exp(a.T[1:, ::2]) * ma.broadcast_to(b.T[1:8, :1], (7, 8)) + a.T[1:, 1::2]
    ma.eval(y)
    assert kinds(llvm) == ["kernel"]
    an, bn = np.array(a), np.array(b)
    ref = np.exp(an.T[1:, ::2]) * bn.T[1:8, :1] + an.T[1:, 1::2]
    np.testing.assert_allclose(np.array(y), ref, rtol=2e-5, atol=2e-6)


def test_reduction_takes_elementwise_prologue(llvm):
    a, b = arrays((32, 48), (48,))
    y = ma.sum(ma.exp(a) * b, axis=-1)
    ma.eval(y)
    assert kinds(llvm) == ["kernel"]
    np.testing.assert_allclose(np.array(y), (np.exp(np.array(a)) * np.array(b)).sum(-1), rtol=2e-5, atol=1e-4)


def test_reduction_feeds_next_kernel(llvm):
    (a,) = arrays((32, 48))
    m = ma.max(a, axis=1, keepdims=True)
    y = ma.exp(a - m)  # softmax's numerator: the reduction is a buffer, the rest one kernel
    del m
    ma.eval(y)
    assert kinds(llvm) == ["kernel", "kernel"]
    an = np.array(a)
    np.testing.assert_allclose(np.array(y), np.exp(an - an.max(1, keepdims=True)), rtol=2e-5, atol=2e-6)


def test_held_intermediate_is_materialized(llvm):
    a, b = arrays((8, 8), (8,))
    x = a * b
    y = ma.exp(x) + 1
    ma.eval(y)
    assert kinds(llvm) == ["kernel", "kernel"]  # x is held by the caller, so it gets a buffer
    assert x._data is not None
    np.testing.assert_allclose(np.array(x), np.array(a) * np.array(b), rtol=1e-6)


def test_unheld_intermediates_are_never_allocated(llvm):
    a, b = arrays((8, 8), (8,))
    y = ma.exp(a * b - 1) + 1
    inner = weakref.ref(y._inputs[0]._inputs[0])  # exp(a * b - 1), known only to y
    ma.eval(y)
    assert kinds(llvm) == ["kernel"]
    assert inner() is None  # computed in registers and gone with the graph, never given a buffer


def test_shared_intermediate_gets_one_buffer(llvm):
    a, b = arrays((8, 8), (8,))
    y = ma.sin(a * b) + ma.cos(a * b)  # two distinct nodes: each fuses
    ma.eval(y)
    assert kinds(llvm) == ["kernel"]
    x = a * b
    z = ma.sin(x) + ma.cos(x)
    del x  # consumed twice: it becomes a buffer both kernels read
    ma.eval(z)
    assert kinds(llvm) == ["kernel", "kernel"]
    np.testing.assert_allclose(np.array(z), np.array(y), rtol=1e-6)


def test_numpy_nodes_run_between_kernels(llvm):
    (a,) = arrays((16, 16))
    y = ma.exp(ma.cumsum(ma.abs(a) * 2, axis=1)) * 0.5  # cumsum has no kernel lowering
    ma.eval(y)
    assert kinds(llvm) == ["kernel", "numpy", "kernel"]
    an = np.array(a)
    np.testing.assert_allclose(np.array(y), np.exp(np.cumsum(np.abs(an) * 2, 1)) * 0.5, rtol=2e-5)


def test_view_of_buffer_stays_a_view(llvm):
    (a,) = arrays((6, 4))
    t = a.T
    ma.eval(t)
    assert kinds(llvm) == ["numpy"]
    assert np.shares_memory(t._data, a._data)


def test_outputs_evaluated_together(llvm):
    a, b = arrays((8, 8), (8,))
    x = a + b
    y = x * 2
    ma.eval(x, y)
    assert kinds(llvm) == ["kernel", "kernel"]
    np.testing.assert_allclose(np.array(y), (np.array(a) + np.array(b)) * 2, rtol=1e-6)


def test_debug_prints_kernels(llvm, monkeypatch, capsys):
    monkeypatch.setenv("MLXARM_DEBUG", "2")
    a, b = arrays((4, 4), (4,), seed=5)
    ma.eval(ma.tanh(a * b))
    err = capsys.readouterr().err
    assert "[mlxarm] kernel" in err and "tanh(multiply(b1, b2))" in err and "define void" in err


def test_cpu_runs_on_llvm_when_llvmlite_is_installed(monkeypatch):
    monkeypatch.delenv("MLXARM_DEVICE", raising=False)
    from mlxarm.backend import executor_for, llvm as llvm_backend

    assert executor_for(ma.cpu).name == ("llvm" if llvm_backend.available() is None else "numpy")
    assert os.environ.get("MLXARM_DEVICE") is None


def test_cpu_falls_back_to_numpy_without_llvmlite():
    code = ("import sys; sys.modules['llvmlite'] = None\n"
            "import mlxarm.core as mx\n"
            "from mlxarm.backend import executor_for\n"
            "x = mx.array([1.0, 2.0]) * 3\n"
            "print(executor_for(mx.cpu).name, x.tolist())")
    env = {k: v for k, v in os.environ.items() if k != "MLXARM_DEVICE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split("\n")[0] == "numpy [3.0, 6.0]"


def test_deep_chain_is_cut_into_bounded_kernels(llvm):
    (a,) = arrays((4, 4))
    y = a
    for _ in range(1000):
        y = y * 1.0001 + 0.0
    ma.eval(y)
    assert 1 < kinds(llvm).count("kernel") < 100
    ref = np.array(a)
    for _ in range(1000):
        ref = ref * np.float32(1.0001)
    np.testing.assert_allclose(np.array(y), ref, rtol=1e-4)


def _numpy_result(fn):
    old = os.environ.get("MLXARM_DEVICE")
    os.environ["MLXARM_DEVICE"] = "numpy"
    try:
        return np.array(fn())
    finally:
        os.environ["MLXARM_DEVICE"] = old


@pytest.mark.parametrize("case", ["addmm", "matmul+bias", "bias+matmul", "matmul+residual", "relu(addmm)",
                                  "relu(matmul+bias)", "linear 3-d", "threshold 0.5"])
def test_matmul_takes_its_epilogue(llvm, case):
    """A float32 product followed by a bias row or a residual, and by relu, is one template call
    (``gemm+...``): the product and the add are never realized. NaN rows stay NaN through relu, and
    a replay with another threshold than 0 still gives maximum's answer."""
    a, w, b, r = arrays((70, 96), (96, 130), (130,), (70, 130), seed=3)
    a_np = np.array(a)
    a_np[5, 7] = np.nan
    a = ma.array(a_np)
    x3 = ma.array(np.stack([a_np, a_np * 0.5]))
    fns = {"addmm": lambda: ma.addmm(b, a, w), "matmul+bias": lambda: a @ w + b,
           "bias+matmul": lambda: b + a @ w, "matmul+residual": lambda: a @ w + r,
           "relu(addmm)": lambda: ma.maximum(ma.addmm(b, a, w), 0),
           "relu(matmul+bias)": lambda: ma.maximum(a @ w + b, 0.0),
           "linear 3-d": lambda: ma.maximum(ma.addmm(b, x3, w), 0),
           "threshold 0.5": lambda: ma.maximum(a @ w + b, 0.5)}
    fn = fns[case]
    expected = _numpy_result(fn)
    for _ in range(3):  # planned, recorded, replayed
        got = fn()
        ma.eval(got)
        assert [name for _, name in llvm.last_plan if name.startswith("gemm")] and len(llvm.last_plan) == 1, \
            llvm.last_plan
        np.testing.assert_allclose(np.array(got), expected, rtol=1e-4, atol=1e-4, equal_nan=True)
    assert np.isnan(np.array(got)[..., 5, :]).all()  # the row with a NaN input


def test_matmul_epilogue_keeps_what_others_see(llvm):
    """A product the user holds, one read twice, or an addmm scaled by alpha keeps its own steps."""
    a, w, b = arrays((40, 64), (64, 50), (50,), seed=4)
    p = a @ w
    y = ma.maximum(p + b, 0)
    ma.eval(y)
    assert not any(name.startswith("gemm+") for _, name in llvm.last_plan)
    np.testing.assert_allclose(np.array(y), np.maximum(np.array(p) + np.array(b), 0), rtol=1e-5, atol=1e-5)
    del p
    q = a @ w
    y = (q + b) * q
    ma.eval(y)
    assert not any(name.startswith("gemm+") for _, name in llvm.last_plan)
    z = ma.addmm(b, a, w, alpha=2.0)
    ma.eval(z)
    assert not any(name.startswith("gemm+") for _, name in llvm.last_plan)
    np.testing.assert_allclose(np.array(z), 2 * (np.array(a) @ np.array(w)) + np.array(b), rtol=1e-4, atol=1e-4)


def test_params_tokens_tell_params_apart_by_value():
    """A node's params stand in structural keys as small tokens: params of equal value (made afresh
    by each op call, as an uncompiled graph's are) share one, any difference in a value (a shape, a
    flag, a slice's bounds, where an Ellipsis or None stands) gives another, and params the fast path
    leaves to ``frozen`` (other value types) are told apart the same way."""
    from mlxarm.codegen.lower import params_token

    forms = [
        {"shape": (1, 8, 192)}, {"shape": (1, 8, 193)}, {"shape": (8, 1, 192)},
        {"axes": (3,), "keepdims": True}, {"axes": (3,), "keepdims": False}, {"axes": (2,), "keepdims": True},
        {"index": (slice(0, 1, 1), slice(2, 4, 1))}, {"index": (slice(0, 1, 1), slice(2, 5, 1))},
        {"index": (slice(0, 1, 1), slice(2, 4, None))}, {"index": (slice(None, 1, 1), slice(2, 4, 1))},
        {"index": (Ellipsis, None, 3)}, {"index": (None, Ellipsis, 3)}, {"index": (Ellipsis, None, 4)},
        {"dtype": ma.float16, "axes": (1,)}, {"dtype": ma.float32, "axes": (1,)},
        {"values": (1.5, 2.0)}, {"values": (1.5, 2.5)}, {"eps": 1e-5}, {"eps": 1e-6}, None,
    ]
    tokens = [params_token(dict(p) if p is not None else p) for p in forms]
    assert len(set(tokens)) == len(forms), "two different params share a token"
    again = [params_token(dict(p) if p is not None else p) for p in forms]
    assert again == tokens, "equal params made afresh got another token"
