"""CPU kernels shaped for speed. The float32 matmul template (``kernels.matmul``) in the register block
of every target the LLVM renderers support: the block fits the target's vector registers, each block
gives numpy's product on this machine (edges of every kind: partial row blocks and column panels, K
past one packed slice, strided operands, the epilogue, work split into units and row groups), and
the NEON build runs under qemu; so does the kernel for products of a few rows, which gives the
product here too. Reductions whose neighbouring outputs share their loads (a matrix-vector product,
a column sum) are rendered a group of outputs per pass: their answers are numpy's and do not depend
on how the outputs are split between calls."""
import ctypes
import re
import shutil

import numpy as np
import pytest

pytest.importorskip("llvmlite", reason="the template is compiled by llvmlite")

import mlxarm.core as ma  # noqa: E402
from mlxarm.backend import executor  # noqa: E402
from mlxarm.codegen import lower, render_llvm  # noqa: E402
from mlxarm.codegen.target import for_triple  # noqa: E402
from mlxarm.kernels import matmul as gemm  # noqa: E402

X86 = "x86_64-unknown-linux-gnu"
TARGETS = {
    "avx512": for_triple(X86, "generic", "+avx512f,+avx2,+fma"),
    "avx2": for_triple(X86, "generic", "+avx2,+fma"),
    "sse2": for_triple(X86, "generic", "+sse2"),
    "neon": for_triple("aarch64-unknown-linux-gnu", "generic", "+neon,+fp-armv8"),
}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_tile_fits_the_vector_registers(name):
    target = TARGETS[name]
    t = gemm.tile(target)
    assert t.lanes == target.lanes
    # accumulators, the B vectors of one step and a broadcast of A
    assert t.mr * t.nv + t.nv + 1 <= gemm.vector_registers(target)
    assert t.kc % 8 == 0 and 4 * t.kc * t.nr <= gemm.PACK_BYTES


@pytest.mark.parametrize("name", ["sse2", "avx2", "neon"])
def test_block_multiply_adds_without_libm_calls(name):
    """Where the target has FMA the block's multiply-adds are fused vector instructions; where it has
    none (SSE2) they are vector multiplies and adds, never a libm ``fmaf`` per lane."""
    from test_aarch64 import _compile

    target = TARGETS[name]
    asm, _ = _compile(gemm.render(gemm.tile(target)), target)
    assert "fmaf" not in asm
    fused = {"sse2": r"\bmulps\s", "avx2": r"\bvfmadd\w*ps\s+%ymm", "neon": r"\bfmla\s+v\d+\.4s"}[name]
    assert re.search(fused, asm), asm[:2000]


def _reference(a, b, bias, residual, act):
    out = a.astype(np.float64) @ b.astype(np.float64)
    if bias is not None:
        out += bias
    if act == "relu":
        out = np.maximum(out, 0)
    return out if residual is None else out + residual


def _run(fn, t, a, b, bias=None, residual=None, groups=1, pieces=3):
    """The compiled template over units cut into ``pieces`` calls, as workers would take them."""
    m, k = a.shape
    n = b.shape[1]
    c = np.full((m, n), np.nan, np.float32)
    meta = np.array([m, n, k, a.strides[0] // 4, b.strides[0] // 4, n,
                     0 if residual is None else residual.strides[0] // 4, groups], np.int64)
    args = (ctypes.c_void_p * 6)(c.ctypes.data, a.ctypes.data, b.ctypes.data,
                                 0 if bias is None else bias.ctypes.data,
                                 0 if residual is None else residual.ctypes.data, meta.ctypes.data)
    units = -(-n // t.nr) * groups
    cuts = sorted({0, units, *(units * i // pieces for i in range(1, pieces))})
    for lo, hi in zip(cuts, cuts[1:]):
        fn(args, lo, hi)
    return c


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_targets_block_computes_the_product_here(name):
    """Each target's block, compiled for this machine (LLVM splits or widens vectors the host lacks)."""
    t = gemm.tile(TARGETS[name])
    compiler = executor("llvm").compiler
    plain = compiler.load(gemm.render(t), gemm.name(t, False, None, False))
    full = compiler.load(gemm.render(t, True, "relu", True), gemm.name(t, True, "relu", True))
    rng = np.random.default_rng(7)
    # rows past a whole block, a partial last panel, K over two packed slices and a bit
    m, n, k = 2 * t.mr + 1, 2 * t.nr + 3, 2 * t.kc + 5
    wide_a = rng.standard_normal((m, k + 9)).astype(np.float32)
    wide_b = rng.standard_normal((k, n + 4)).astype(np.float32)
    a, b = wide_a[:, 3:3 + k], wide_b[:, 1:1 + n]  # rows lda and ldb apart, wider than K and N
    bias = rng.standard_normal(n).astype(np.float32)
    residual = rng.standard_normal((m, n + 2)).astype(np.float32)[:, :n]
    tol = dict(rtol=1e-4, atol=1e-4 * np.sqrt(k))
    for groups in (1, 2, 3):
        np.testing.assert_allclose(_run(plain, t, a, b, groups=groups), _reference(a, b, None, None, None), **tol)
        np.testing.assert_allclose(_run(full, t, a, b, bias, residual, groups=groups),
                                   _reference(a, b, bias, residual, "relu"), **tol)
    # fewer rows than one block, one partial panel, one step of K
    small_a, small_b = a[:2, :1], b[:1, :5]
    np.testing.assert_allclose(_run(plain, t, small_a, small_b, pieces=1), small_a @ small_b, rtol=1e-6)


def test_executor_splits_a_narrow_product_into_row_groups():
    """One column panel and many rows: the rows are shared out, and the answer is numpy's."""
    ex = executor("llvm")
    t = gemm.tile(ex.target)
    rng = np.random.default_rng(3)
    a = rng.standard_normal((40 * t.mr + 5, 70)).astype(np.float32)
    b = rng.standard_normal((70, t.nr - 1)).astype(np.float32)
    np.testing.assert_allclose(ex.gemm(a, b), a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4 * np.sqrt(70))


@pytest.mark.parametrize("lanes", [4, 8, 16])
def test_few_rows_kernel_computes_the_product_here(lanes):
    """The kernel for a few rows of A (``render_few_rows``): its units' partial sums add up to the
    product, for strided operands, a column count that is no multiple of the vector, and rows of B
    shared unevenly between units (and none for some)."""
    compiler = executor("llvm").compiler
    fn = compiler.load(gemm.render_few_rows(lanes), gemm.few_rows_name(lanes))
    rng = np.random.default_rng(lanes)
    for m, k, n, units in [(1, 70, 2 * lanes + 3, 3), (5, 9, lanes - 1, 4), (3, 2, 3 * lanes, 5)]:
        a = rng.standard_normal((m, k + 3)).astype(np.float32)[:, 2:2 + k]
        b = rng.standard_normal((k, n + 5)).astype(np.float32)[:, :n]
        ldp = -(-n // lanes) * lanes
        partial = np.full((units, m, ldp), np.nan, np.float32)
        meta = np.array([m, n, k, a.strides[0] // 4, b.strides[0] // 4, ldp, units], np.int64)
        args = (ctypes.c_void_p * 4)(partial.ctypes.data, a.ctypes.data, b.ctypes.data, meta.ctypes.data)
        fn(args, 0, 1)
        fn(args, 1, units)
        np.testing.assert_allclose(partial[:, :, :n].sum(0), a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("m", [1, 2, 6])
def test_executor_runs_few_rows_with_the_epilogue(m):
    ex = executor("llvm")
    rng = np.random.default_rng(m)
    a = rng.standard_normal((m, 900)).astype(np.float32)
    b = rng.standard_normal((900, 75)).astype(np.float32)
    bias = rng.standard_normal(75).astype(np.float32)
    residual = rng.standard_normal((m, 75)).astype(np.float32)
    a[0, 3] = np.nan
    got = ex.gemm(a, b, bias=bias, act="relu", residual=residual)
    assert got.shape == (m, 75) and got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, _reference(a, b, bias, residual, "relu"), rtol=1e-4, atol=1e-4 * 30,
                               equal_nan=True)
    assert np.isnan(got[0]).all()


@pytest.mark.skipif(any(shutil.which(t) is None for t in ("aarch64-linux-gnu-gcc", "qemu-aarch64-static")),
                    reason="needs Debian packages gcc-aarch64-linux-gnu and qemu-user-static")
@pytest.mark.parametrize("groups", [1, 3])
def test_neon_block_runs_under_qemu(tmp_path, groups):
    """One row group per panel, and three (of two row blocks, two and none: an empty unit)."""
    from test_aarch64 import run_source_under_qemu

    target = TARGETS["neon"]
    t = gemm.tile(target)
    rng = np.random.default_rng(11)
    m, n, k = 3 * t.mr + 2, 2 * t.nr + 1, t.kc + 3  # four row blocks
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    residual = rng.standard_normal((m, n)).astype(np.float32)
    meta = np.array([m, n, k, k, n, n, n, groups], np.int64)
    got = run_source_under_qemu(tmp_path, gemm.render(t, True, "relu", True), gemm.name(t, True, "relu", True),
                                target, -(-n // t.nr) * groups, (a, b, bias, residual, meta),
                                np.empty((m, n), np.float32))
    np.testing.assert_allclose(got, _reference(a, b, bias, residual, "relu"), rtol=1e-4, atol=1e-4 * np.sqrt(k))


def _reductions():
    rng = np.random.default_rng(5)
    m = rng.standard_normal((23, 133)).astype(np.float32)
    v = rng.standard_normal(133).astype(np.float32)
    i = rng.integers(-50, 50, (41, 22)).astype(np.int32)
    xm, xv, xi = ma.array(m), ma.array(v), ma.array(i)
    return {
        # name: (graph, numpy's answer, grouped)
        "matvec": (lambda: ma.sum(xm * xv, axis=-1), m.astype(np.float64) @ v, True),
        "row sum of a product": (lambda: ma.sum(ma.exp(xm * 0.1) * xv, axis=-1),
                                 (np.exp(m.astype(np.float64) * 0.1) * v).sum(-1), True),
        "column mean": (lambda: ma.mean(xm, axis=0), m.astype(np.float64).mean(0), True),
        "column max": (lambda: ma.max(xm * 2.0, axis=0), (m * 2).max(0), True),
        "integer column sum": (lambda: ma.sum(xi, axis=0), i.sum(0), True),
        "row sum": (lambda: ma.sum(xm, axis=1), m.astype(np.float64).sum(1), False),
    }


@pytest.mark.parametrize("name", sorted(_reductions()))
def test_grouped_reductions_match_numpy_however_split(name):
    graph, expected, grouped = _reductions()[name]
    ex = executor("llvm")
    kernel, arrays, out = lower.lower(graph(), ex.target.lanes)
    source = render_llvm.render(kernel, ex.target)
    assert ("group.body:" in source) == grouped
    fn = ex.compiler.load(source, kernel.name)
    n = kernel.out_size

    def run(cuts):
        result = np.empty_like(out)
        args = (ctypes.c_void_p * (1 + len(arrays)))(result.ctypes.data, *[a.ctypes.data for a in arrays])
        for lo, hi in zip(cuts, cuts[1:]):
            fn(args, lo, hi)
        return result

    whole = run([0, n])
    np.testing.assert_allclose(whole.reshape(expected.shape), expected, rtol=1e-5, atol=1e-5)
    for cuts in ([0, 1, 3, n], [0, 5, n - 2, n], [0] + list(range(3, n, 3)) + [n]):
        np.testing.assert_array_equal(run(cuts), whole)


@pytest.mark.skipif(any(shutil.which(t) is None for t in ("aarch64-linux-gnu-gcc", "qemu-aarch64-static")),
                    reason="needs Debian packages gcc-aarch64-linux-gnu and qemu-user-static")
def test_neon_few_rows_kernel_runs_under_qemu(tmp_path):
    from test_aarch64 import run_source_under_qemu

    target = TARGETS["neon"]
    lanes = target.lanes
    rng = np.random.default_rng(13)
    m, n, k, units = 3, 4 * lanes + 3, 67, 4
    ldp = -(-n // lanes) * lanes
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    meta = np.array([m, n, k, k, n, ldp, units], np.int64)
    partial = run_source_under_qemu(tmp_path, gemm.render_few_rows(lanes), gemm.few_rows_name(lanes), target, units,
                                    (a, b, meta), np.empty((units, m, ldp), np.float32))
    np.testing.assert_allclose(partial[:, :, :n].sum(0), a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)
