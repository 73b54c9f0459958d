"""The LLVM executor's quantized matmul template (kernels/quantized.py): every bits x group size x
transpose against the numpy executor, the plan showing the kernel ran, batched x, the nodes that
stay on numpy, the narrower vector shapes (AVX2, NEON) on this CPU, and NEON/SVE builds run under
qemu."""
import shutil
import subprocess

import numpy as np
import pytest

pytest.importorskip("llvmlite", reason="the LLVM backend needs llvmlite")

import mlxarm.core as ma  # noqa: E402
from _matrix import on  # noqa: E402
from mlxarm.backend import executor, llvm_quantized  # noqa: E402
from mlxarm.core.ops.quantized import _pack  # noqa: E402
from mlxarm.kernels import quantized as template  # noqa: E402

EPS = np.finfo(np.float32).eps


def _operands(rng, transpose, bits, gs, m, n, k):
    """x (m, k) and packed w with its scales and biases, for x @ W.T (W: n x k) or x @ W (W: k x n)."""
    rows, cols = (n, k) if transpose else (k, n)
    codes = rng.integers(0, 1 << bits, (rows, cols))
    scales = rng.uniform(-0.5, 0.5, (rows, cols // gs)).astype(np.float32)
    biases = rng.uniform(-2, 2, (rows, cols // gs)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    return x, _pack(codes, bits), scales, biases


def _reference(x, wq, scales, biases, transpose, bits, gs):
    """(product, bound): the numpy executor's quantized_matmul, and the difference two float32
    summation orders of the same products may make: 2 sqrt(K) eps sum_k |x w|, the random-walk growth
    of rounding errors (the worst case, 2 K eps sum_k |x w|, would let a wrong code or two through).
    The template dequantizes exactly as the reference does, so only the order of the sums differs."""
    def graph():
        args = [ma.array(a) for a in (x, wq, scales, biases)]
        return (ma.quantized_matmul(*args, transpose=transpose, group_size=gs, bits=bits),
                ma.dequantize(*args[1:], group_size=gs, bits=bits))

    prod, w = (np.array(a) for a in on("numpy", graph))
    mags = np.abs(x) @ (np.abs(w).T if transpose else np.abs(w))
    return prod, 2 * np.sqrt(x.shape[-1]) * EPS * mags


def _check(got, want, bound):
    err = np.abs(got - want)
    assert got.shape == want.shape
    assert np.all(err <= bound), f"max error {err.max():.3g} where the bound is {bound.flat[err.argmax()]:.3g}"


def _shape(transpose, gs):
    """(n, k): an odd number of output rows (transposed) or of inner rows (not), whole groups and
    whole 32-code runs in the packed dimension."""
    packed = 3 * max(gs, 32)
    return (37, packed) if transpose else (packed, 37)


@pytest.mark.parametrize("transpose", [True, False], ids=["t", "n"])
@pytest.mark.parametrize("gs", template.GROUP_SIZES)
@pytest.mark.parametrize("bits", template.BITS)
def test_matches_numpy(bits, gs, transpose):
    rng = np.random.default_rng(bits * 1000 + gs + transpose)
    n, k = _shape(transpose, gs)
    for m in (1, 3, 64):
        x, wq, scales, biases = _operands(rng, transpose, bits, gs, m, n, k)
        args = [ma.array(a) for a in (x, wq, scales, biases)]
        got = on("llvm", lambda: ma.quantized_matmul(*args, transpose=transpose, group_size=gs, bits=bits))
        lanes = executor("llvm").target.lanes
        kernel = template.name(transpose, bits, gs, lanes, template.tile_rows(transpose, bits, lanes, m))
        assert ("kernel", kernel) in executor("llvm").last_plan
        _check(np.array(got), *_reference(x, wq, scales, biases, transpose, bits, gs))


def test_quantized_weights_batched_x():
    """The LLM case: x (B, L, K) times a 2-D matrix from ma.quantize is one product of B*L rows."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((45, 256)).astype(np.float32)
    x = rng.standard_normal((2, 5, 256)).astype(np.float32)

    def graph():
        wq, s, b = ma.quantize(ma.array(w), group_size=64, bits=4)
        return ma.quantized_matmul(ma.array(x), wq, s, b, group_size=64, bits=4)

    got = on("llvm", graph)
    lanes = executor("llvm").target.lanes
    assert ("kernel", template.name(True, 4, 64, lanes, template.max_rows(True, 4, lanes))) \
        in executor("llvm").last_plan
    want = on("numpy", graph)
    assert got.shape == want.shape == (2, 5, 45) and got.dtype == ma.float32
    wq, s, b = (np.array(a) for a in on("numpy", lambda: ma.quantize(ma.array(w), group_size=64, bits=4)))
    _, bound = _reference(x.reshape(10, 256), wq, s, b, True, 4, 64)
    _check(np.array(got), np.array(want), bound.reshape(2, 5, 45))


def test_vector_x():
    rng = np.random.default_rng(2)
    x, wq, scales, biases = _operands(rng, True, 8, 32, 1, 19, 64)
    args = [ma.array(a) for a in (x[0], wq, scales, biases)]
    got = on("llvm", lambda: ma.quantized_matmul(*args, group_size=32, bits=8))
    assert got.shape == (19,)
    want, bound = _reference(x, wq, scales, biases, True, 8, 32)
    _check(np.array(got), want[0], bound[0])


@pytest.mark.parametrize("case", ["float16", "batched_w"])
def test_other_products_stay_on_numpy(case):
    rng = np.random.default_rng(3)
    x, wq, scales, biases = _operands(rng, True, 4, 32, 4, 8, 64)
    if case == "float16":
        args = [ma.array(x).astype(ma.float16), ma.array(wq), ma.array(scales).astype(ma.float16),
                ma.array(biases).astype(ma.float16)]
    else:
        args = [ma.array(np.stack([x, x])), ma.array(np.stack([wq, wq])), ma.array(np.stack([scales, scales])),
                ma.array(np.stack([biases, biases]))]
    got = on("llvm", lambda: ma.quantized_matmul(*args, group_size=32, bits=4))
    plan = executor("llvm").last_plan
    assert ("numpy", "quantized_matmul") in plan and not any(s.startswith("qmm_") for _, s in plan)
    np.testing.assert_array_equal(np.array(got),
                                  np.array(on("numpy", lambda: ma.quantized_matmul(*args, group_size=32, bits=4))))


# 3-, 5- and 6-bit codes straddle words, and with 4 lanes a 32-code block spans several vectors and
# (group size 16) two groups.
@pytest.mark.parametrize("lanes", [4, 8])
@pytest.mark.parametrize("bits,gs", [(3, 16), (5, 32), (6, 16), (2, 128), (8, 16)])
@pytest.mark.parametrize("transpose", [True, False], ids=["t", "n"])
def test_narrow_vectors(lanes, bits, gs, transpose):
    """The shapes NEON (4 lanes) and AVX2 (8 lanes) get, compiled for this CPU."""
    ex = executor("llvm")
    rng = np.random.default_rng(lanes + bits + gs)
    n, k = _shape(transpose, gs)
    for m in (1, 6):
        x, wq, scales, biases = _operands(rng, transpose, bits, gs, m, n, k)
        got = llvm_quantized.matmul(ex, x, wq, scales, biases, transpose, bits, gs, lanes=lanes)
        _check(got, *_reference(x, wq, scales, biases, transpose, bits, gs))


@pytest.mark.skipif(any(shutil.which(t) is None for t in ("aarch64-linux-gnu-gcc", "qemu-aarch64-static")),
                    reason="needs Debian packages gcc-aarch64-linux-gnu and qemu-user-static")
@pytest.mark.parametrize("target", ["neon", "sve"])
@pytest.mark.parametrize("transpose,bits,gs", [(True, 4, 32), (True, 3, 16), (False, 6, 64)], ids=["t4", "t3", "n6"])
def test_aarch64_runs_under_qemu(tmp_path, target, transpose, bits, gs):
    """Cross-compiled for aarch64, linked into the static harness of test_aarch64 and run by qemu."""
    from test_aarch64 import HARNESS, NEON, SVE, _compile

    t = NEON if target == "neon" else SVE
    rng = np.random.default_rng(bits + gs)
    n, k = _shape(transpose, gs)
    m = 3
    x, wq, scales, biases = _operands(rng, transpose, bits, gs, m, n, k)
    mr = template.tile_rows(transpose, bits, t.lanes, m)
    fn = template.name(transpose, bits, gs, t.lanes, mr)
    asm, obj = _compile(template.render(transpose, bits, gs, t.lanes, mr), t)
    assert "fmla\tv" in asm or "fmla v" in asm  # vector FMAs on NEON registers
    (tmp_path / "kernel.o").write_bytes(obj)
    (tmp_path / "harness.c").write_text(HARNESS)
    subprocess.run(["aarch64-linux-gnu-gcc", "-static", "-O1", f"-DKERNEL={fn}", "harness.c", "kernel.o", "-o",
                    "run"], cwd=tmp_path, check=True, capture_output=True)
    xin = template.interleave_x(x, bits, t.lanes) if template.interleaved(transpose, bits, gs, t.lanes) else x
    inputs = []
    for i, a in enumerate((xin, wq, scales, biases, np.array([m, n, k], np.int64))):
        (tmp_path / f"in{i}.bin").write_bytes(np.ascontiguousarray(a).tobytes())
        inputs.append(str(tmp_path / f"in{i}.bin"))
    out_path = tmp_path / "out.bin"
    subprocess.run(["qemu-aarch64-static", "-cpu", "max" if t.scalable else "cortex-a72", str(tmp_path / "run"),
                    str(template.panels(transpose, n, bits, t.lanes)), str(out_path), str(m * n * 4)] + inputs,
                   check=True, capture_output=True, timeout=120)
    got = np.frombuffer(out_path.read_bytes(), np.float32).reshape(m, n)
    _check(got, *_reference(x, wq, scales, biases, transpose, bits, gs))


@pytest.mark.parametrize("transpose,m,n,k", [(True, 1, 1, 32), (True, 5, 2, 64), (True, 2, 3, 128),
                                             (False, 1, 32, 1), (False, 9, 64, 2)])
def test_small_edges(transpose, m, n, k):
    """Fewer weight rows than a panel, fewer x rows than a tile, a single inner row."""
    rng = np.random.default_rng(m + n + k)
    x, wq, scales, biases = _operands(rng, transpose, 4, 32, m, n, k)
    args = [ma.array(a) for a in (x, wq, scales, biases)]
    got = on("llvm", lambda: ma.quantized_matmul(*args, transpose=transpose, group_size=32, bits=4))
    assert any(s.startswith("qmm_") for _, s in executor("llvm").last_plan)
    _check(np.array(got), *_reference(x, wq, scales, biases, transpose, 4, 32))


def test_strided_x():
    """x read through a transposed view."""
    rng = np.random.default_rng(4)
    x, wq, scales, biases = _operands(rng, True, 4, 64, 7, 13, 128)
    xt = np.ascontiguousarray(x.T)
    args = [ma.array(a) for a in (wq, scales, biases)]
    got = on("llvm", lambda: ma.quantized_matmul(ma.array(xt).T, *args, group_size=64, bits=4))
    assert any(s.startswith("qmm_") for _, s in executor("llvm").last_plan)
    _check(np.array(got), *_reference(x, wq, scales, biases, True, 4, 64))
