"""Quantization against real MLX: bit-exact packing, scales, biases and values; products; errors; nn."""
import numpy as np
import pytest

import mlxarm.core as ma
import mlxarm.nn as nn

mx = pytest.importorskip("mlx.core")

DTYPES = ["float32", "float16", "bfloat16"]


def _np(a):
    """Values as numpy (bfloat16 through float32), for either library's arrays."""
    if "bfloat16" in str(a.dtype):
        lib = mx if isinstance(a, mx.array) else ma
        a = a.astype(lib.float32)
    return np.array(a)


def _same(o, m, exact=True, tol=0.0):
    assert o.shape == m.shape
    assert str(o.dtype).split(".")[-1] == str(m.dtype).split(".")[-1]
    a, b = _np(o), _np(m)
    if exact:
        np.testing.assert_array_equal(a, b)
    else:
        np.testing.assert_allclose(b, a, rtol=tol, atol=tol)


@pytest.fixture
def weights():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, 256)) * rng.uniform(0.1, 3, (8, 1))).astype(np.float32)
    w[0, :64] = 0
    return w


@pytest.mark.parametrize("dname", DTYPES)
@pytest.mark.parametrize("gs", [32, 64, 128])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 8])
def test_affine_bit_exact(weights, dname, gs, bits):
    o = mx.quantize(mx.array(weights).astype(getattr(mx, dname)), gs, bits)
    m = ma.quantize(ma.array(weights).astype(getattr(ma, dname)), gs, bits)
    assert len(o) == len(m) == 3
    for a, b in zip(o, m):
        _same(a, b)
    _same(mx.dequantize(*o, gs, bits), ma.dequantize(*m, gs, bits))


@pytest.mark.parametrize("dname", DTYPES)
@pytest.mark.parametrize("mode", ["mxfp4", "mxfp8", "nvfp4"])
def test_fp_modes_bit_exact(weights, dname, mode):
    o = mx.quantize(mx.array(weights).astype(getattr(mx, dname)), mode=mode)
    m = ma.quantize(ma.array(weights).astype(getattr(ma, dname)), mode=mode)
    assert len(o) == len(m) == 2
    for a, b in zip(o, m):
        _same(a, b)
    for od in [None, "float32", "float16"]:
        _same(mx.dequantize(*o, mode=mode, dtype=od and getattr(mx, od)),
              ma.dequantize(*m, mode=mode, dtype=od and getattr(ma, od)))
    if mode == "nvfp4":
        go, gm = mx.array(3.0), ma.array(3.0)
        o = mx.quantize(mx.array(weights), mode=mode, global_scale=go)
        m = ma.quantize(ma.array(weights), mode=mode, global_scale=gm)
        for a, b in zip(o, m):
            _same(a, b)
        _same(mx.dequantize(*o, mode=mode, global_scale=go), ma.dequantize(*m, mode=mode, global_scale=gm))


_QMM_SHAPES = [((3, 128), (64, 128)), ((2, 5, 128), (64, 128)), ((2, 5, 128), (2, 64, 128)),
               ((128,), (128, 128))]


# Untransposed weights are quantized along their output dimension, which must hold whole groups
# of 128: only the shapes where it does are drawn for transpose=False.
@pytest.mark.parametrize("transpose,xs,ws", [(t, xs, ws) for t in (True, False) for xs, ws in _QMM_SHAPES
                                             if t or ws[-2] >= 128])
@pytest.mark.parametrize("gs,bits", [(32, 2), (64, 4), (128, 8), (32, 3), (64, 5), (64, 6)])
def test_quantized_matmul(transpose, gs, bits, xs, ws):
    rng = np.random.default_rng(1)
    if not transpose:
        ws = ws[:-2] + (ws[-1], ws[-2])
        xs = xs[:-1] + (ws[-2],)
    w = rng.standard_normal(ws).astype(np.float32)
    x = rng.standard_normal(xs).astype(np.float32)
    o = mx.quantize(mx.array(w), gs, bits)
    m = ma.quantize(ma.array(w), gs, bits)
    _same(mx.quantized_matmul(mx.array(x), *o, transpose, gs, bits),
          ma.quantized_matmul(ma.array(x), *m, transpose, gs, bits), exact=False, tol=1e-4)


@pytest.mark.parametrize("mode", ["mxfp4", "mxfp8", "nvfp4"])
@pytest.mark.parametrize("dname", DTYPES)
def test_quantized_matmul_fp_modes(mode, dname):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((64, 128)).astype(np.float32)
    x = rng.standard_normal((2, 3, 128)).astype(np.float32)
    o = mx.quantize(mx.array(w), mode=mode)
    m = ma.quantize(ma.array(w), mode=mode)
    tol = 1e-4 if dname == "float32" else 0.5
    _same(mx.quantized_matmul(mx.array(x).astype(getattr(mx, dname)), *o, mode=mode),
          ma.quantized_matmul(ma.array(x).astype(getattr(ma, dname)), *m, mode=mode), exact=False, tol=tol)


def test_gather_qmm():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((3, 32, 128)).astype(np.float32)
    x = rng.standard_normal((2, 4, 128)).astype(np.float32)
    lhs, rhs = np.array([1, 0, 1]), np.array([2, 0, 1])
    o = mx.quantize(mx.array(w))
    m = ma.quantize(ma.array(w))
    _same(mx.gather_qmm(mx.array(x), *o, mx.array(lhs), mx.array(rhs)),
          ma.gather_qmm(ma.array(x), *m, ma.array(lhs), ma.array(rhs)), exact=False, tol=1e-4)


def test_qqmm_vector():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((64, 256)).astype(np.float32)
    x = rng.standard_normal((1, 256)).astype(np.float32)
    for mode in ["nvfp4", "mxfp8"]:
        o = mx.quantize(mx.array(w), mode=mode)
        m = ma.quantize(ma.array(w), mode=mode)
        _same(mx.qqmm(mx.array(x), *o, mode=mode), ma.qqmm(ma.array(x), *m, mode=mode), exact=False, tol=1e-4)


def test_vjp_matches_mlx():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((64, 128)).astype(np.float32)
    x = rng.standard_normal((2, 3, 128)).astype(np.float32)
    c = rng.standard_normal((2, 3, 64)).astype(np.float32)

    def run(lib):
        wq, s, b = lib.quantize(lib.array(w))
        _, g = lib.vjp(lambda x, s, b: lib.quantized_matmul(x, wq, s, b), [lib.array(x), s, b], [lib.array(c)])
        return g

    for a, b in zip(run(mx), run(ma)):
        _same(a, b, exact=False, tol=1e-3)


@pytest.mark.parametrize("device", ["numpy", "llvm", "vulkan", "opencl"])
def test_float16_scales_of_a_float32_product_are_widened_by_the_kernel(device):
    """A float32 x with float16 scales and biases (a float16 GGUF model run in float32): MLX casts the
    scales and biases to float32 first. Here the product reads the float16 arrays themselves (no
    float32 copy in the graph, so none is kept) and widens them as it loads them: the result is the
    one the cast gives, bit for bit, on each backend, and MLX's; the packed-weight kernel ran it."""
    from _backends import require
    from _matrix import on
    from mlxarm.backend import executor

    require(device)
    rng = np.random.default_rng(8)
    w = rng.standard_normal((40, 256)).astype(np.float32)
    for bits, gs in ((4, 32), (8, 64), (2, 128)):
        o = [a.astype(mx.float16) if i else a for i, a in enumerate(mx.quantize(mx.array(w), gs, bits))]
        wq, s16, b16 = (ma.array(np.array(a)) for a in o)
        for rows in ((1, 256), (3, 256)):
            x = rng.standard_normal(rows).astype(np.float32)
            got = ma.quantized_matmul(ma.array(x), wq, s16, b16, group_size=gs, bits=bits)
            assert got._inputs[2] is s16 and got._inputs[3] is b16
            on(device, lambda: got)
            if device != "numpy":
                assert any(kind == "kernel" and name.startswith(("qmm_", "qmv_"))
                           for kind, name in executor(device).last_plan), executor(device).last_plan
            cast = on(device, lambda: ma.quantized_matmul(ma.array(x), wq, s16.astype(ma.float32),
                                                         b16.astype(ma.float32), group_size=gs, bits=bits))
            assert got.dtype == ma.float32
            np.testing.assert_array_equal(np.array(got), np.array(cast))
            _same(mx.quantized_matmul(mx.array(x), *o, True, gs, bits), got, exact=False, tol=1e-4)


def test_vjp_wrt_float16_scales_of_a_float32_product_matches_mlx():
    """The scales' and biases' gradients come in their own dtype (float16), as MLX's cast gives them."""
    rng = np.random.default_rng(9)
    w = rng.standard_normal((64, 128)).astype(np.float32)
    x = rng.standard_normal((3, 128)).astype(np.float32)
    c = rng.standard_normal((3, 64)).astype(np.float32)

    def run(lib):
        wq, s, b = lib.quantize(lib.array(w))
        s, b = s.astype(lib.float16), b.astype(lib.float16)
        _, g = lib.vjp(lambda x, s, b: lib.quantized_matmul(x, wq, s, b), [lib.array(x), s, b], [lib.array(c)])
        return g

    for a, b in zip(run(mx), run(ma)):
        _same(a, b, exact=False, tol=1e-2)


def _error(lib, fn):
    try:
        fn(lib)
    except Exception as e:  # noqa: BLE001
        return type(e).__name__, str(e)
    return None


@pytest.mark.parametrize("fn", [
    lambda L: L.quantize(L.zeros((4, 128)), bits=7),
    lambda L: L.quantize(L.zeros((4, 128)), group_size=16),
    lambda L: L.quantize(L.zeros((4, 128), L.int32)),
    lambda L: L.quantize(L.zeros((128,))),
    lambda L: L.quantize(L.zeros((4, 100))),
    lambda L: L.quantize(L.zeros((4, 128)), mode="xyz"),
    lambda L: L.quantize(L.zeros((4, 128)), mode="mxfp4", bits=8),
    lambda L: L.quantize(L.zeros((4, 128)), mode="mxfp8", global_scale=L.array(1.0)),
    lambda L: L.dequantize(*L.quantize(L.zeros((4, 128)))[:2]),
    lambda L: L.dequantize(*L.quantize(L.zeros((4, 128))), group_size=32),
    lambda L: L.dequantize(*L.quantize(L.zeros((4, 128))), dtype=L.int32),
    lambda L: L.dequantize(*L.quantize(L.zeros((4, 128)), mode="mxfp4"), mode="mxfp4", bits=8),
    lambda L: L.quantized_matmul(L.zeros((3, 128)), *L.quantize(L.zeros((4, 128))), transpose=False),
    lambda L: L.quantized_matmul(L.zeros((3, 128)), L.quantize(L.zeros((4, 128)))[0].T,
                                 *L.quantize(L.zeros((4, 128)))[1:]),
    lambda L: L.quantized_matmul(L.zeros((3, 128), L.int32), L.zeros((4, 16), L.uint32),
                                 L.zeros((4, 2), L.int32), L.zeros((4, 2), L.int32)),
])
def test_errors_match(fn):
    assert _error(ma, fn) == _error(mx, fn)


def test_nn_quantize_layers():
    m = nn.Sequential(nn.Embedding(5, 256), nn.ReLU(), nn.Linear(256, 128))
    nn.quantize(m)
    assert isinstance(m.layers[0], nn.QuantizedEmbedding)
    assert isinstance(m.layers[2], nn.QuantizedLinear)
    assert set(dict(m.layers[2].parameters())) == {"weight", "scales", "biases", "bias"}
    assert set(m.layers[2].trainable_parameters()) == {"bias"}  # from_linear sets it after freezing
    y = m.layers[2](ma.ones((2, 256)))
    assert y.shape == (2, 128)
    e = m.layers[0]
    assert e(ma.array([1, 2])).shape == (2, 256)
    assert e.as_linear(ma.ones((3, 256))).shape == (3, 5)
    lin = nn.Linear(64, 32, bias=False)
    q = lin.to_quantized(group_size=32, bits=8)
    w_hat = ma.dequantize(q.weight, q.scales, q.biases, 32, 8)
    x = ma.ones((1, 64))
    np.testing.assert_allclose(np.array(q(x)), np.array(x @ w_hat.T), rtol=1e-5, atol=1e-5)
