"""The LLVM executor against the numpy executor: the elementwise and reduction part of the op matrix,
random graphs of elementwise/broadcast/reduce/movement ops, and the compiled-kernel disk cache."""
import os

import numpy as np
import pytest

pytest.importorskip("llvmlite", reason="the LLVM backend needs llvmlite")

from hypothesis import given, settings  # noqa: E402

import mlxarm.core as ma  # noqa: E402
from _graphs import build_graph, graphs  # noqa: E402
from _matrix import convert_args, elementwise_primitives, on, tolerance, values  # noqa: E402
from mlxarm.backend import executor  # noqa: E402
from mlxarm.backend.cache import ObjectCache  # noqa: E402
from mlxarm.backend.llvm import CompileError, Compiler  # noqa: E402
from mlxarm.core import dtypes as dt  # noqa: E402
from mlxarm.core.registry import API  # noqa: E402

# Dtypes the matrix runs on (kernels compute every dtype in ir.DTYPES; these cover each code path:
# float32, half precision in both formats, signed, unsigned and boolean integers).
MATRIX_DTYPES = [dt.float32, dt.float16, dt.bfloat16, dt.int32, dt.bool_]
REDUCE_DTYPES = MATRIX_DTYPES + [dt.int64, dt.uint8]


def assert_backends_agree(fn, context=""):
    ref = on("numpy", fn)
    got = on("llvm", fn)
    assert got.dtype == ref.dtype and got.shape == ref.shape, context
    rtol, atol = tolerance(ref.dtype) if ref.dtype.kind in "fc" else (0, 0)
    np.testing.assert_allclose(np.array(got), np.array(ref), rtol=rtol, atol=atol, equal_nan=True,
                               err_msg=context)


def _cases(kind):
    # Unary ops on booleans are identities or constants; the binary matrix covers the i1 code paths.
    dtypes = MATRIX_DTYPES if kind == "binary" else [d for d in MATRIX_DTYPES if d is not dt.bool_]
    return [(p, d) for p in elementwise_primitives(kind) for d in dtypes if d in p.dtypes]


@pytest.mark.parametrize("prim,d", _cases("unary"), ids=lambda v: getattr(v, "name", None))
def test_unary_matches_numpy(prim, d):
    rng = np.random.default_rng(1)
    x = values(rng, d, (5, 37), prim.domain)
    fn = API[("core", prim.name)].fn
    assert_backends_agree(lambda: fn(*convert_args([x], d, ma)), f"{prim.name}[{d.name}]")


@pytest.mark.parametrize("prim,d", _cases("binary"), ids=lambda v: getattr(v, "name", None))
def test_binary_matches_numpy(prim, d):
    rng = np.random.default_rng(2)
    x, y = values(rng, d, (5, 37), prim.domain), values(rng, d, (37,), prim.domain)
    fn = API[("core", prim.name)].fn
    assert_backends_agree(lambda: fn(*convert_args([x, y], d, ma)), f"{prim.name}[{d.name}]")


@pytest.mark.parametrize("name", ["sum", "prod", "max", "min"])
@pytest.mark.parametrize("d", REDUCE_DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("axis", [None, 0, (0, 2)], ids=str)
def test_reduction_matches_numpy(name, d, axis):
    rng = np.random.default_rng(3)
    x = values(rng, d, (3, 6, 19), (-2, 2) if name != "prod" else (0.5, 1.5))
    fn = getattr(ma, name)
    assert_backends_agree(lambda: fn(ma.array(x, dtype=d), axis=axis), f"{name}[{d.name}] axis={axis}")


def test_float_edge_values():
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -1e-40, 88.8, -104, 1e30, -1e30, 3.0],
                       np.float32)
    for name in ("sin", "cos"):
        assert_backends_agree(lambda: getattr(ma, name)(ma.array(special)), name)
    for name in ("exp", "log", "log1p", "expm1", "tanh", "sigmoid", "erf", "sqrt", "sign",
                 "abs", "isnan", "isinf", "floor", "round"):
        fn = getattr(ma, name)
        assert_backends_agree(lambda: fn(ma.array(special)), name)


def test_transcendentals_accuracy_wide_range():
    x = np.linspace(-30, 30, 20001, dtype=np.float32)
    for name in ("exp", "tanh", "sigmoid", "sin", "cos", "erf"):
        assert_backends_agree(lambda: getattr(ma, name)(ma.array(x)), name)
    pos = np.geomspace(1e-30, 1e30, 20001).astype(np.float32)
    # sin and cos reduce huge arguments exactly (mixed into vectors of small ones: both paths at once)
    signs = np.where(np.arange(pos.size) % 3 == 0, -1, 1).astype(np.float32)
    for name in ("sin", "cos"):
        assert_backends_agree(lambda: getattr(ma, name)(ma.array(pos * signs)), name)
    for name in ("log", "log2", "log10", "log1p", "rsqrt"):
        assert_backends_agree(lambda: getattr(ma, name)(ma.array(pos)), name)


def test_casts_between_lowered_dtypes():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal(77) * 100).astype(np.float32)
    for src in REDUCE_DTYPES:
        for dst in REDUCE_DTYPES:
            assert_backends_agree(lambda: ma.array(x).astype(src).astype(dst) * 1, f"{src.name}->{dst.name}")


def _without_f16c(t):
    """``t`` (an x86 host) as a CPU of SSE4.2 alone: no F16C, AVX or FMA."""
    off = ("avx", "f16c", "fma", "amx", "vaes", "vpclmulqdq", "gfni", "evex512")
    feats = ",".join(("-" if f[1:].startswith(off) else f[0]) + f[1:] for f in t.features.split(","))
    return type(t)(t.triple, "x86-64-v2", feats, 128, False)


@pytest.mark.skipif(not os.uname().machine.startswith(("x86_64", "i686")),
                    reason="only x86 CPUs convert half precision through library calls")
def test_half_precision_without_f16c(monkeypatch, tmp_path):
    """On an x86 CPU without F16C, LLVM calls __extendhfsf2 and __truncsfhf2 for every float16
    conversion; the executor provides them (``llvm_runtime``), rounding exactly as numpy does: every
    float16 value widened, and floats (each halfway point between float16 neighbours among them)
    narrowed, bit for bit."""
    import llvmlite.binding as llvm
    from mlxarm.backend import _EXECUTORS, llvm_runtime
    from mlxarm.backend.llvm import LLVMExecutor
    from mlxarm.codegen import target

    old = _without_f16c(target.host())
    assert llvm_runtime.needed(old)
    ex = LLVMExecutor(old, ObjectCache(str(tmp_path)))
    monkeypatch.setitem(_EXECUTORS, "llvm", ex)
    monkeypatch.setenv("MLXARM_DEVICE", "llvm")
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    wide = np.array(ma.array(halves).astype(ma.float32) * 1)
    ref = halves.astype(np.float32)
    nan = np.isnan(ref)
    np.testing.assert_array_equal(wide.view(np.uint32)[~nan], ref.view(np.uint32)[~nan])
    assert np.isnan(wide[nan]).all()
    rng = np.random.default_rng(5)
    finite = halves[np.isfinite(halves)].astype(np.float64)
    ties = np.unique((finite[:-1] + finite[1:]) / 2).astype(np.float32)  # exact in float32
    x = np.concatenate([ties, rng.standard_normal(4096).astype(np.float32) * 1e-6,
                        rng.standard_normal(4096).astype(np.float32) * 3e4,
                        np.array([65504, 65519.996, 65520, 1e9, np.inf, -np.inf, np.nan, -0.0], np.float32)])
    with np.errstate(over="ignore"):
        ref = x.astype(np.float16)
    narrow = np.array(ma.array(x).astype(ma.float16) * 1)
    nan = np.isnan(ref)
    np.testing.assert_array_equal(narrow.view(np.uint16)[~nan], ref.view(np.uint16)[~nan])
    assert np.isnan(narrow[nan]).all()
    # the kernels did call the functions: a float16 kernel's code for this CPU names them
    source = next(iter(ex.sources.values()))
    asm = ex.compiler.machine.emit_assembly(llvm.parse_assembly(source))
    assert "__truncsfhf2" in asm or "__extendhfsf2" in asm


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the code model question is x86-64's")
def test_x86_objects_need_no_32_bit_displacements(tmp_path, monkeypatch):
    """Kernel objects on x86-64 reach their constants, the other sections and external functions (libm,
    the C library) through 64-bit addresses only (the large code model, which the cached objects' keys
    name; LLVM's JIT, which loaded them before ``elf_loader``, could map an object's sections over
    2 GiB apart, beyond a 32-bit displacement)."""
    import shutil
    import subprocess

    from mlxarm.backend import _EXECUTORS
    from mlxarm.backend.llvm import LLVMExecutor

    readelf = shutil.which("readelf")
    assert readelf, "readelf (binutils) is needed to read the objects' relocations"
    monkeypatch.setitem(_EXECUTORS, "llvm", LLVMExecutor(cache=ObjectCache(str(tmp_path))))
    monkeypatch.setenv("MLXARM_DEVICE", "llvm")
    x = ma.array(np.linspace(-3, 3, 999, dtype=np.float32))
    w = ma.array(np.linspace(-1, 1, 37 * 27, dtype=np.float32).reshape(37, 27))
    ma.eval(ma.sin(x) * 2 + ma.arctan2(x, x + 1), ma.softmax(x.reshape(9, 111), axis=-1),
            x[:37 * 27].reshape(27, 37) @ w, ma.sum(ma.exp(x)))
    kinds: dict = {}
    entries = list(tmp_path.rglob("*.o"))
    assert len(entries) >= 4
    for entry in entries:
        obj = tmp_path / "object.o"
        obj.write_bytes(entry.read_bytes()[len(b"MLXARM-OBJ1\n") + 32:])
        table = subprocess.run([readelf, "-rW", str(obj)], capture_output=True, text=True, check=True).stdout
        for line in table.splitlines():
            fields = line.split()
            if len(fields) > 2 and fields[2].startswith("R_X86_64_"):
                kinds[fields[2]] = kinds.get(fields[2], 0) + 1
    assert kinds and set(kinds) <= {"R_X86_64_64", "R_X86_64_PC64"}, kinds


def test_large_input_splits_across_threads():
    n = 1 << 20
    a = np.arange(n, dtype=np.float32) / n
    assert_backends_agree(lambda: ma.tanh(ma.array(a) * 3 - 1) * 0.5, "chain")
    assert_backends_agree(lambda: ma.sum(ma.array(a).reshape(256, -1) * 2, axis=1), "rows")


# --- random graphs -------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(graphs())
def test_random_graphs_agree(recipe):
    assert_backends_agree(lambda: build_graph(*recipe), repr(recipe))


# --- the compiled-kernel cache -------------------------------------------------------------------

_SOURCE = """
define void @k_test(ptr %args, i64 %start, i64 %end) {
entry:
  ret void
}
"""


def test_cache_miss_then_hit(tmp_path):
    first = Compiler(cache=ObjectCache(str(tmp_path)))
    first.load(_SOURCE, "k_test")
    assert (first.cache.misses, first.cache.hits, first.compiled) == (1, 0, 1)
    second = Compiler(cache=ObjectCache(str(tmp_path)))
    second.load(_SOURCE, "k_test")
    assert (second.cache.hits, second.compiled) == (1, 0)


def test_cache_detects_corruption_and_rebuilds(tmp_path):
    cache = ObjectCache(str(tmp_path))
    Compiler(cache=cache).load(_SOURCE, "k_test")
    (entry,) = [p for p in tmp_path.rglob("*.o")]
    blob = bytearray(entry.read_bytes())
    blob[-10] ^= 0xFF
    entry.write_bytes(bytes(blob))
    again = Compiler(cache=ObjectCache(str(tmp_path)))
    again.load(_SOURCE, "k_test")
    assert again.cache.corrupt == 1 and again.compiled == 1
    third = Compiler(cache=ObjectCache(str(tmp_path)))
    third.load(_SOURCE, "k_test")
    assert third.cache.hits == 1 and third.compiled == 0


def test_cache_writes_atomically(tmp_path):
    Compiler(cache=ObjectCache(str(tmp_path))).load(_SOURCE, "k_test")
    assert not [p for p in tmp_path.rglob(".tmp-*")]


def test_compile_failure_names_backend_and_keeps_source(tmp_path):
    comp = Compiler(cache=ObjectCache(str(tmp_path)))
    with pytest.raises(CompileError) as info:
        comp.load("define void @broken( {", "broken")
    msg = str(info.value)
    assert msg.startswith("[llvm]")
    path = msg.rsplit(" ", 1)[-1]
    assert os.path.isfile(path) and "broken" in open(path).read()


def test_executor_info():
    info = executor("llvm").info()
    assert info["backend"] == "llvm" and info["threads"] >= 1


def test_plans_are_cached_by_structure():
    """A graph shape seen before skips lowering: scalars are buffers, so ``x + i`` for any i is one
    plan, while another layout of the same values is another plan with the right answer."""
    ex = executor("llvm")
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    x = ma.array(base)

    def run(fn):
        old = os.environ.get("MLXARM_DEVICE")
        os.environ["MLXARM_DEVICE"] = "llvm"
        try:
            out = fn()
            ma.eval(out)
            return np.array(out)
        finally:
            if old is None:
                del os.environ["MLXARM_DEVICE"]
            else:
                os.environ["MLXARM_DEVICE"] = old

    run(lambda: x + 0.5)
    before = len(ex.plans)
    for i in range(5):
        np.testing.assert_array_equal(run(lambda: x + float(i)), base + i)
    assert len(ex.plans) == before
    np.testing.assert_array_equal(run(lambda: x.T + 1.0), base.T + 1)
    np.testing.assert_array_equal(run(lambda: x[1:, ::2] * 2.0), base[1:, ::2] * 2)
    np.testing.assert_array_equal(run(lambda: x[1:, ::2] * 3.0), base[1:, ::2] * 3)
    # The same buffer read by two nodes, and one node read twice, through different views.
    y = ma.array(base)
    np.testing.assert_array_equal(run(lambda: x * y.T.T + x), base * base + base)
    np.testing.assert_array_equal(run(lambda: x[:, :3] - x[:, 3:]), base[:, :3] - base[:, 3:])


GEMM_SHAPES = [(1, 1, 1), (7, 5, 3), (6, 1, 32), (37, 300, 45), (64, 64, 64), (100, 513, 33), (13, 600, 97)]


@pytest.mark.parametrize("m,k,n", GEMM_SHAPES)
def test_gemm_template(m, k, n):
    ex = executor("llvm")
    rng = np.random.default_rng(m * 1000 + k + n)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    res = rng.standard_normal((m, n)).astype(np.float32)
    tol = dict(rtol=1e-4, atol=1e-4 * np.sqrt(k))
    np.testing.assert_allclose(ex.gemm(a, b), a @ b, **tol)
    at, bt = np.asfortranarray(a), b.T.copy().T  # transposed layouts of the same values
    np.testing.assert_allclose(ex.gemm(at, bt), a @ b, **tol)
    np.testing.assert_allclose(ex.gemm(a, b, bias=bias), a @ b + bias, **tol)
    np.testing.assert_allclose(ex.gemm(a, b, bias=bias, act="relu", residual=res),
                               np.maximum(a @ b + bias, 0) + res, **tol)
    np.testing.assert_allclose(ex.gemm(a, b, act="relu"), np.maximum(a @ b, 0), **tol)


def test_gemm_empty():
    ex = executor("llvm")
    assert ex.gemm(np.ones((3, 0), np.float32), np.ones((0, 4), np.float32)).tolist() == [[0.0] * 4] * 3
    assert ex.gemm(np.ones((0, 5), np.float32), np.ones((5, 4), np.float32)).shape == (0, 4)


@pytest.mark.parametrize("sa,sb,ta,tb", [((64, 48), (48, 80), False, False), ((64, 48), (80, 48), False, True),
                                         ((3, 40, 50), (50, 70), True, False),
                                         ((2, 1, 33, 65), (3, 65, 40), False, False)])
def test_matmul_runs_on_the_template(sa, sb, ta, tb):
    mx = pytest.importorskip("mlx.core")
    rng = np.random.default_rng(0)
    a = rng.standard_normal(sa[:-2] + (sa[-1], sa[-2]) if ta else sa).astype(np.float32)
    b = rng.standard_normal(sb).astype(np.float32)

    def graph(lib):
        x, y = lib.array(a), lib.array(b)
        x = lib.swapaxes(x, -1, -2) if ta else x
        y = lib.swapaxes(y, -1, -2) if tb else y
        return x @ y

    got = on("llvm", lambda: graph(ma))
    assert ("kernel", "gemm") in executor("llvm").last_plan
    want = graph(mx)
    assert got.shape == tuple(want.shape) and got.dtype == ma.float32
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-4, atol=1e-4)
