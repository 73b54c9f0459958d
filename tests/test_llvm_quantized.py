"""The LLVM executor's quantized matmul template (kernels/quantized.py): every bits x group size x
transpose x dtype (float32, float16, bfloat16) against the numpy executor, half-precision products
against real MLX, the plan showing the kernel ran, batched x, the nodes that stay on numpy, the
narrower vector shapes (AVX2, NEON) on this CPU, and NEON/SVE builds run under qemu."""
import ctypes
import shutil
import subprocess

import numpy as np
import pytest

pytest.importorskip("llvmlite", reason="the LLVM backend needs llvmlite")

import mlxarm.core as ma  # noqa: E402
from _matrix import on  # noqa: E402
from mlxarm.backend import executor, llvm_quantized  # noqa: E402
from mlxarm.core import dtypes as dt  # noqa: E402
from mlxarm.core.ops.quantized import _pack  # noqa: E402
from mlxarm.kernels import quantized as template  # noqa: E402

EPS = np.finfo(np.float32).eps
DTYPES = list(template.DTYPES)


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


def _rounded(values, dtype: str) -> np.ndarray:
    """float values rounded to ``dtype`` (nearest even), as float32."""
    v = np.asarray(values, np.float32)
    if dtype == "bfloat16":
        return dt.bf16_to_f32(dt.f32_to_bf16(v))
    return v.astype(np.dtype(dtype)).astype(np.float32)


def _in_dtype(values, dtype: str) -> np.ndarray:
    """``values`` (float32, exactly representable in ``dtype``) as the template's storage of ``dtype``."""
    return dt.f32_to_bf16(values) if dtype == "bfloat16" else np.asarray(values).astype(np.dtype(dtype))


def _values(a) -> np.ndarray:
    """An array's values as float32 (bfloat16 read through float32)."""
    return np.array(a.astype(ma.float32))


def _interval(x, w, transpose, dtype):
    """(lo, hi): where a float32 sum of ``x @ w.T`` (or ``x @ w``), rounded to ``dtype``, may land:
    the float64 product +- the summation-order bound of ``_reference``, each end rounded to ``dtype``
    (rounding to nearest is monotonic)."""
    w = w.T if transpose else w
    exact = x.astype(np.float64) @ w.astype(np.float64)
    bound = 2 * np.sqrt(x.shape[-1]) * EPS * (np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64))
    return _rounded(exact - bound, dtype), _rounded(exact + bound, dtype)


def _check_within(got, lo, hi, what):
    assert got.shape == lo.shape
    bad = ~((lo <= got) & (got <= hi))
    assert not bad.any(), (f"{what}: {bad.sum()} of {bad.size} values outside the rounded bound, e.g. "
                           f"{got[bad][0]!r} not in [{lo[bad][0]!r}, {hi[bad][0]!r}]")


@pytest.mark.parametrize("transpose", [True, False], ids=["t", "n"])
@pytest.mark.parametrize("gs", template.GROUP_SIZES)
@pytest.mark.parametrize("bits", template.BITS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_numpy(dtype, bits, gs, transpose):
    """x, scales, biases and the result in ``dtype``: the template's result and the numpy executor's
    both lie within the rounded summation bound around the exact product of x and the weights
    the numpy executor dequantizes (in ``dtype``, as MLX does)."""
    rng = np.random.default_rng(bits * 1000 + gs + transpose)
    n, k = _shape(transpose, gs)
    d = getattr(ma, dtype)
    for m in (1, 3, 64):
        x, wq, scales, biases = _operands(rng, transpose, bits, gs, m, n, k)
        args = [ma.array(x).astype(d), ma.array(wq), ma.array(scales).astype(d), ma.array(biases).astype(d)]

        def product():
            return ma.quantized_matmul(*args, transpose=transpose, group_size=gs, bits=bits)

        got = on("llvm", product)
        assert got.dtype == d
        assert ("kernel", _kernel(transpose, bits, gs, m, k, (dtype,) * 3)) in executor("llvm").last_plan
        want = on("numpy", product)
        w = on("numpy", lambda: ma.dequantize(*args[1:], group_size=gs, bits=bits))
        lo, hi = _interval(_values(args[0]), _values(w), transpose, dtype)
        _check_within(_values(got), lo, hi, "llvm")
        _check_within(_values(want), lo, hi, "numpy")


def _kernel(transpose, bits, gs, m, k, types) -> str:
    """The name of the template function the LLVM executor runs an M x K product by."""
    ex = executor("llvm")
    lanes = ex.target.lanes
    mr = template.tile_rows(transpose, bits, lanes, m)
    words = template.word_lanes(transpose, bits, gs, lanes, mr, llvm_quantized._permutes(ex.target), types, k)
    return template.name(transpose, bits, gs, lanes, mr, types, words=words)


def _mlx_operands(mx, rng, dtype, transpose, bits, gs, n, k):
    """A random weight matrix quantized by MLX in ``dtype``: MLX's (w, scales, biases) and ours."""
    rows, cols = (n, k) if transpose else (k, n)
    w = (rng.standard_normal((rows, cols)) * rng.uniform(0.01, 50, (rows, 1))).astype(np.float32)
    theirs = mx.quantize(mx.array(w).astype(getattr(mx, dtype)), gs, bits)
    ours = [ma.array(np.array(theirs[0]))] + [ma.array(np.array(a.astype(mx.float32))).astype(getattr(ma, dtype))
                                              for a in theirs[1:]]
    return theirs, ours


def _same_as_mlx(ours, theirs, mx):
    assert str(ours.dtype).split(".")[-1] == str(theirs.dtype).split(".")[-1]
    np.testing.assert_array_equal(_values(ours), np.array(theirs.astype(mx.float32)))


@pytest.mark.mlx
@pytest.mark.parametrize("transpose", [True, False], ids=["t", "n"])
@pytest.mark.parametrize("bits,gs", [(2, 32), (3, 64), (4, 128), (5, 32), (6, 128), (8, 64)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_mlx_exactly(dtype, bits, gs, transpose):
    """Rows of x with one nonzero each make every output one product x_k * w_k, which MLX (its CPU
    kernel sums in x's dtype) and the template (in float32) both form exactly and round once to
    ``dtype``: the results are identical, so the dequantized weights, the widening of x and the
    rounding of the result are MLX's. A square x (M = K) reads every weight through the panel
    path; matvecs (M = 1) read three columns each. A float32 matvec computes scale * (code * x) +
    bias * x (``template.factored``, the arithmetic of MLX's GPU kernels): it lies within two
    roundings of either term of the exact (code * scale + bias) * x, as MLX's CPU result does."""
    mx = pytest.importorskip("mlx.core")
    rng = np.random.default_rng(bits + gs + transpose)
    n, k = (37, 128) if transpose else (256, 48)
    theirs, ours = _mlx_operands(mx, rng, dtype, transpose, bits, gs, n, k)
    diag = _rounded(rng.standard_normal(k) * 3, dtype)
    lanes = executor("llvm").target.lanes
    xs = [np.diag(diag)] + [np.where(np.arange(k) == c, diag, 0).astype(np.float32) for c in (0, k // 2 + 1, k - 1)]
    for x in xs:
        got = on("llvm", lambda: ma.quantized_matmul(ma.array(x).astype(getattr(ma, dtype)), *ours,
                                                     transpose=transpose, group_size=gs, bits=bits))
        mr = template.tile_rows(transpose, bits, lanes, 1 if x.ndim == 1 else k)
        assert ("kernel", _kernel(transpose, bits, gs, 1 if x.ndim == 1 else k, k, (dtype,) * 3)) \
            in executor("llvm").last_plan
        want = mx.quantized_matmul(mx.array(x).astype(getattr(mx, dtype)), *theirs, transpose, gs, bits)
        if not template.factored(transpose, bits, lanes, mr, llvm_quantized._permutes(executor("llvm").target),
                                 (dtype,) * 3):
            _same_as_mlx(got, want, mx)
            continue
        ones = mx.ones(theirs[1].shape, mx.float32)
        codes = np.array(mx.dequantize(theirs[0], ones, ones * 0, gs, bits)).astype(np.float64)
        scale, bias = (np.repeat(np.array(a.astype(mx.float32)).astype(np.float64), gs, axis=-1) for a in theirs[1:])
        if not transpose:
            codes, scale, bias = codes.T, scale.T, bias.T
        exact = ((codes * scale + bias) @ x.astype(np.float64))
        bound = 2 * EPS * (np.abs(codes * scale) + np.abs(bias)) @ np.abs(x).astype(np.float64)
        for name, value in (("llvm", _values(got)), ("MLX", np.array(want.astype(mx.float32)))):
            assert np.all(np.abs(value - exact) <= bound), name


@pytest.mark.mlx
@pytest.mark.parametrize("x_dtype,s_dtype", [("bfloat16", "float16"), ("float32", "bfloat16"), ("float16", "float32"),
                                            ("float32", "float16")])
def test_mixed_dtypes_match_mlx_exactly(x_dtype, s_dtype):
    """x and scales of different dtypes: promoted as MLX promotes them (here to float32), then the
    template; one nonzero per row of x, as in test_matches_mlx_exactly."""
    mx = pytest.importorskip("mlx.core")
    rng = np.random.default_rng(5)
    theirs, ours = _mlx_operands(mx, rng, s_dtype, True, 4, 64, 37, 128)
    x = np.diag(_rounded(rng.standard_normal(128) * 3, x_dtype))
    got = on("llvm", lambda: ma.quantized_matmul(ma.array(x).astype(getattr(ma, x_dtype)), *ours, group_size=64,
                                                 bits=4))
    assert any(s.startswith("qmm_") for _, s in executor("llvm").last_plan)
    _same_as_mlx(got, mx.quantized_matmul(mx.array(x).astype(getattr(mx, x_dtype)), *theirs, True, 64, 4), mx)


@pytest.mark.mlx
@pytest.mark.parametrize("transpose", [True, False], ids=["t", "n"])
@pytest.mark.parametrize("bits,gs", [(4, 64), (8, 32)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_mlx_float32_sums(dtype, bits, gs, transpose):
    """Dense random x: within the summation bound of _reference around MLX's float32 product of x
    and MLX's dequantized weights, its ends rounded to ``dtype`` by MLX. (MLX's CPU quantized_matmul
    itself sums half-precision products in their dtype; the numpy reference and the template sum
    in float32.)"""
    mx = pytest.importorskip("mlx.core")
    rng = np.random.default_rng(bits + gs + transpose + 7)
    n, k = (37, 256) if transpose else (256, 48)
    theirs, ours = _mlx_operands(mx, rng, dtype, transpose, bits, gs, n, k)
    w = mx.dequantize(*theirs, gs, bits).astype(mx.float32)
    w_np = np.array(w)
    for m in (1, 5):
        x = _rounded(rng.standard_normal((m, k)), dtype)
        got = on("llvm", lambda: ma.quantized_matmul(ma.array(x).astype(getattr(ma, dtype)), *ours,
                                                     transpose=transpose, group_size=gs, bits=bits))
        assert any(s.startswith("qmm_") for _, s in executor("llvm").last_plan)
        ref = np.array(mx.matmul(mx.array(x), w.T if transpose else w)).astype(np.float64)
        bound = 2 * np.sqrt(k) * EPS * (np.abs(x) @ np.abs(w_np.T if transpose else w_np)).astype(np.float64)
        lo, hi = (np.array(mx.array((ref + sign * bound).astype(np.float32)).astype(getattr(mx, dtype))
                           .astype(mx.float32)) for sign in (-1, 1))
        assert str(got.dtype).split(".")[-1] == dtype
        _check_within(_values(got), lo, hi, "llvm")


@pytest.mark.parametrize("lanes", [4, 8, None], ids=["l4", "l8", "host"])
@pytest.mark.parametrize("dtypes", [("float16", "bfloat16", "float32"), ("float32", "float16", "bfloat16"),
                                    ("bfloat16", "float32", "float16")], ids=["h-b-f", "f-h-b", "b-f-h"])
def test_kernel_mixed_dtypes(dtypes, lanes):
    """The template's own mixes of x, scales (and biases) and output dtypes (the graph casts its
    inputs to one dtype first, as MLX does): weights dequantized in the scales' dtype."""
    x_dtype, s_dtype, out_dtype = dtypes
    ex = executor("llvm")
    rng = np.random.default_rng(6)
    for transpose, bits, gs in ((True, 4, 32), (True, 5, 16), (False, 3, 64)):
        n, k = _shape(transpose, gs)
        for m in (1, 6):
            x, wq, scales, biases = _operands(rng, transpose, bits, gs, m, n, k)
            x, scales, biases = _rounded(x, x_dtype), _rounded(scales, s_dtype), _rounded(biases, s_dtype)
            got = llvm_quantized.matmul(ex, _in_dtype(x, x_dtype), wq, _in_dtype(scales, s_dtype),
                                        _in_dtype(biases, s_dtype), transpose, bits, gs, lanes=lanes,
                                        out_dtype=out_dtype)
            d = getattr(ma, s_dtype)
            w = on("numpy", lambda: ma.dequantize(ma.array(wq), ma.array(scales).astype(d), ma.array(biases).astype(d),
                                                  group_size=gs, bits=bits))
            got = dt.bf16_to_f32(got) if out_dtype == "bfloat16" else got.astype(np.float32)
            _check_within(got, *_interval(x, _values(w), transpose, out_dtype), f"{dtypes}")


def test_small_codes_are_looked_up_where_the_target_permutes():
    """On AVX-512 (16 lanes and vpermps) a transposed product's codes of at most 4 bits index a
    table of their group's values (template.looked_up); wider codes, and every code elsewhere, are
    dequantized one by one."""
    ex = executor("llvm")
    permutes = ex.target.triple.startswith("x86_64") and ex.target.has("avx512f") and ex.target.lanes == 16
    rng = np.random.default_rng(8)
    for bits in (4, 5):
        x, wq, scales, biases = _operands(rng, True, bits, 64, 1, 8, 128)
        args = [ma.array(a).astype(ma.bfloat16) if a.dtype == np.float32 else ma.array(a)
                for a in (x, wq, scales, biases)]
        on("llvm", lambda: ma.quantized_matmul(*args, group_size=64, bits=bits))
        source = ex.sources[("qmm", True, bits, 64, ex.target.lanes, 1, ("bfloat16",) * 3)]
        assert ("@llvm.x86.avx512.permvar.sf.512" in source) == (permutes and bits <= 4)


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


@pytest.mark.parametrize("case", ["float64", "batched_w", "mxfp4"])
def test_other_products_stay_on_numpy(case):
    rng = np.random.default_rng(3)
    x, wq, scales, biases = _operands(rng, True, 4, 32, 4, 8, 64)
    kwargs = {"group_size": 32, "bits": 4}
    if case == "float64":
        args = [ma.array(x).astype(ma.float64), ma.array(wq), ma.array(scales), ma.array(biases)]
    elif case == "mxfp4":
        wq, scales = (np.array(a) for a in ma.quantize(ma.array(rng.standard_normal((8, 64)).astype(np.float32)),
                                                         mode="mxfp4"))
        args, kwargs = [ma.array(x), ma.array(wq), ma.array(scales)], {"mode": "mxfp4"}
    else:
        args = [ma.array(np.stack([x, x])), ma.array(np.stack([wq, wq])), ma.array(np.stack([scales, scales])),
                ma.array(np.stack([biases, biases]))]
    got = on("llvm", lambda: ma.quantized_matmul(*args, **kwargs))
    plan = executor("llvm").last_plan
    assert ("numpy", "quantized_matmul") in plan and not any(s.startswith("qmm_") for _, s in plan)
    np.testing.assert_array_equal(np.array(got), np.array(on("numpy", lambda: ma.quantized_matmul(*args, **kwargs))))


# 3-, 5- and 6-bit codes straddle words, and with 4 lanes a 32-code block spans several vectors and
# (group size 16) two groups. 2- and 4-bit codes are read a byte per lane; a float32 matvec
# (``template.factored``) gathers x's columns to match them itself, 16 lanes wide as well.
@pytest.mark.parametrize("lanes", [4, 8, 16])
@pytest.mark.parametrize("bits,gs", [(3, 16), (5, 32), (6, 16), (2, 128), (8, 16), (4, 16), (4, 64)])
@pytest.mark.parametrize("transpose", [True, False], ids=["t", "n"])
def test_narrow_vectors(lanes, bits, gs, transpose):
    """The shapes NEON (4 lanes), AVX2 (8 lanes) and AVX-512 (16) get, compiled for this CPU."""
    ex = executor("llvm")
    rng = np.random.default_rng(lanes + bits + gs)
    n, k = _shape(transpose, gs)
    for m in (1, 6):
        x, wq, scales, biases = _operands(rng, transpose, bits, gs, m, n, k)
        got = llvm_quantized.matmul(ex, x, wq, scales, biases, transpose, bits, gs, lanes=lanes)
        _check(got, *_reference(x, wq, scales, biases, transpose, bits, gs))


@pytest.mark.parametrize("lanes", [4, 8, 16])
@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("gs", template.GROUP_SIZES)
def test_word_lanes(lanes, bits, gs):
    """A float32 matvec reading a word per lane (``template.word_lanes``): a block of ``lanes`` words
    within a group, a whole group, or (wider than a group) several groups' lanes, over K of one block
    or group, of several spans and a tail, within the rounded summation bound; the same product with
    K not a whole number of blocks reads a byte per lane instead."""
    ex = executor("llvm")
    rng = np.random.default_rng(lanes * bits + gs)
    types = ("float32",) * 3
    block = lanes * 32 // bits
    unit = max(block, gs)
    for k in (unit, 3 * unit, 2 * lanes * gs + unit):
        assert template.word_lanes(True, bits, gs, lanes, 1, False, types, k)
        x, wq, scales, biases = _operands(rng, True, bits, gs, 1, 37, k)
        got = llvm_quantized.matmul(ex, x, wq, scales, biases, True, bits, gs, lanes=lanes)
        _check(got, *_reference(x, wq, scales, biases, True, bits, gs))
    if block > gs:
        assert not template.word_lanes(True, bits, gs, lanes, 1, False, types, block + gs)


@pytest.mark.skipif(any(shutil.which(t) is None for t in ("aarch64-linux-gnu-gcc", "qemu-aarch64-static")),
                    reason="needs Debian packages gcc-aarch64-linux-gnu and qemu-user-static")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", ["neon", "sve"])
@pytest.mark.parametrize("transpose,bits,gs", [(True, 4, 32), (True, 3, 16), (False, 6, 64)], ids=["t4", "t3", "n6"])
def test_aarch64_runs_under_qemu(tmp_path, target, transpose, bits, gs, dtype):
    """Cross-compiled for aarch64, linked into the static harness of test_aarch64 and run by qemu: a
    matvec and a panel product with x, scales, biases and the result in ``dtype``."""
    from test_aarch64 import HARNESS, NEON, SVE, _compile

    t = NEON if target == "neon" else SVE
    rng = np.random.default_rng(bits + gs)
    n, k = _shape(transpose, gs)
    types = (dtype,) * 3
    (tmp_path / "harness.c").write_text(HARNESS)
    for m in (1, 3):
        x, wq, scales, biases = _operands(rng, transpose, bits, gs, m, n, k)
        x, scales, biases = (_rounded(a, dtype) for a in (x, scales, biases))
        mr = template.tile_rows(transpose, bits, t.lanes, m)
        words = template.word_lanes(transpose, bits, gs, t.lanes, mr, False, types, k)  # the 4-bit float32 matvec
        fn = template.name(transpose, bits, gs, t.lanes, mr, types, words=words)
        asm, obj = _compile(template.render(transpose, bits, gs, t.lanes, mr, types, words=words), t)
        assert "fmla\tv" in asm or "fmla v" in asm  # vector FMAs on NEON registers
        (tmp_path / "kernel.o").write_bytes(obj)
        subprocess.run(["aarch64-linux-gnu-gcc", "-static", "-O1", f"-DKERNEL={fn}", "harness.c", "kernel.o", "-o",
                        "run"], cwd=tmp_path, check=True, capture_output=True)
        xin = template.interleave_x(x, bits, t.lanes) \
            if template.x_interleaved(transpose, bits, gs, t.lanes, mr, False, types) else x
        inputs = []
        for i, a in enumerate((_in_dtype(xin, dtype), wq, _in_dtype(scales, dtype), _in_dtype(biases, dtype),
                               np.array([m, n, k], np.int64))):
            (tmp_path / f"in{i}.bin").write_bytes(np.ascontiguousarray(a).tobytes())
            inputs.append(str(tmp_path / f"in{i}.bin"))
        out_path = tmp_path / "out.bin"
        storage = dt.as_dtype(dtype).np_storage
        # Cortex-A76: NEON with the half-precision arithmetic (+fullfp16) the NEON target assumes, no SVE.
        subprocess.run(["qemu-aarch64-static", "-cpu", "max" if t.scalable else "cortex-a76", str(tmp_path / "run"),
                        str(template.panels(transpose, n, bits, t.lanes)), str(out_path),
                        str(m * n * storage.itemsize)] + inputs, check=True, capture_output=True, timeout=120)
        got = np.frombuffer(out_path.read_bytes(), storage).reshape(m, n)
        got = dt.bf16_to_f32(got) if dtype == "bfloat16" else got.astype(np.float32)
        d = getattr(ma, dtype)
        w = on("numpy", lambda: ma.dequantize(ma.array(wq), ma.array(scales).astype(d), ma.array(biases).astype(d),
                                              group_size=gs, bits=bits))
        _check_within(got, *_interval(x, _values(w), transpose, dtype), f"{target} M={m}")


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


@pytest.mark.parametrize("bits,gs,ns", [(4, 32, (40, 12, 12)), (4, 32, (37, 5)), (6, 16, (9, 13, 2)), (8, 64, (3, 8)),
                                        (3, 32, (7, 6, 5))])
def test_one_call_over_several_matrices(bits, gs, ns):
    """A float32 matvec over up to ``template.PARTS`` weight matrices of the same K in one call (what a
    program makes of the products of one x) gives each matrix's product bit for bit as a call of its
    own, in one piece or split panel by panel, ragged last panels included."""
    ex = executor("llvm")
    lanes = ex.target.lanes
    rng = np.random.default_rng(bits + gs + len(ns))
    k = 4 * max(gs, 32)
    x = rng.standard_normal((1, k)).astype(np.float32)
    dtypes = ("float32", "float16", "float32", "float32")  # float16 scales widened: a GGUF model's
    words = template.word_lanes(True, bits, gs, lanes, 1, llvm_quantized._permutes(ex.target), dtypes, k)
    joined = llvm_quantized._function(ex, True, bits, gs, lanes, 1, dtypes, len(ns), words)
    single = llvm_quantized._function(ex, True, bits, gs, lanes, 1, dtypes, words=words)
    addresses, wants, outs, keep = [], [], [], []
    for j, n in enumerate(ns):
        _, wq, scales, biases = _operands(rng, True, bits, gs, 1, n, k)
        scales, biases = scales.astype(np.float16), biases.astype(np.float16)
        want = np.empty((1, n), np.float32)
        meta = np.array([1, n, k], np.int64)
        single((ctypes.c_void_p * 6)(want.ctypes.data, x.ctypes.data, wq.ctypes.data, scales.ctypes.data,
                                     biases.ctypes.data, meta.ctypes.data), 0, template.panels(True, n, bits, lanes))
        out = np.full((1, n), np.nan, np.float32)
        parts = [out, wq, scales, biases]
        addresses += [a.ctypes.data for a in ([out, x, wq, scales, biases] if j == 0 else parts)]
        if j == 0:
            addresses.append(None)  # the joined shape array, below
        wants.append(want)
        outs.append(out)
        keep += parts
    meta = np.array([1, ns[0], k] + list(ns[1:]), np.int64)
    addresses[5] = meta.ctypes.data
    args = (ctypes.c_void_p * len(addresses))(*addresses)
    units = sum(template.panels(True, n, bits, lanes) for n in ns)
    for pieces in ([(0, units)], [(u, u + 1) for u in range(units)]):
        for out in outs:
            out[...] = np.nan
        for start, end in pieces:
            joined(args, start, end)
        for out, want in zip(outs, wants):
            np.testing.assert_array_equal(out, want)


def test_a_bound_product_holds_no_node():
    """The function ``bind`` makes for a product (kept by recorded evals and programs) holds none of the
    nodes it was made for, nor so their buffers: the float32 matvec's joining maker included (on a
    host where the matvec is factored)."""
    import gc
    import weakref

    ex = executor("llvm")
    rng = np.random.default_rng(11)
    w = ma.array(rng.standard_normal((64, 64)).astype(np.float32))
    packed = ma.quantize(w, group_size=32, bits=4)
    for m in (1, 3):
        node = ma.quantized_matmul(ma.array(np.ones((m, 64), np.float32)), *packed, group_size=32, bits=4)
        bound = llvm_quantized.bind(ex, node)
        lanes = ex.target.lanes
        assert hasattr(bound.native, "joins") == template.factored(
            True, 4, lanes, template.tile_rows(True, 4, lanes, m), llvm_quantized._permutes(ex.target))
        ref = weakref.ref(node)
        del node
        gc.collect()
        assert ref() is None
        del bound
