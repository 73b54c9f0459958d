"""``fast.rope`` and ``fast.scaled_dot_product_attention`` as LLVM kernels (kernels/attention.py) against
the numpy references: traditional and not, partial rotation, offsets as ints and per batch element,
grouped-query heads, no mask, causal, boolean and additive masks, a fully masked row, keys and values
read through strides, odd head sizes, and a replayed eval with new buffers. The plan shows the kernel
ran; what the kernels do not take (rope with explicit frequencies, attention sinks) stays on numpy."""
import numpy as np
import pytest

pytest.importorskip("llvmlite", reason="the LLVM backend needs llvmlite")

import mlxarm.core as ma  # noqa: E402
from _matrix import on  # noqa: E402
from mlxarm.backend import executor  # noqa: E402

# float32 results of the same operations summed in another order (dot products, softmax totals)
RTOL, ATOL = 2e-5, 2e-6


def _both(fn):
    want = np.array(on("numpy", fn))
    got = on("llvm", fn)
    return np.array(got), want


def _plan_has(kind, name):
    assert (kind, name) in executor("llvm").last_plan, executor("llvm").last_plan


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("traditional", [False, True], ids=["half", "traditional"])
@pytest.mark.parametrize("shape,dims,offset,base,scale", [
    ((1, 9, 1, 64), 64, 37, 10000.0, 1.0),  # a decode step's queries
    ((2, 3, 5, 10), 6, 3, 500.0, 0.5),  # prompt rows, features past dims pass through
    ((1, 2, 4, 7, 12), 12, 0, 10000.0, 2.0),  # more leading axes
    ((3, 5, 8), 4, 11, 10000.0, 1.0),  # no head axis
])
def test_rope_matches_reference(traditional, shape, dims, offset, base, scale):
    rng = np.random.default_rng(0)
    x = _rand(rng, *shape)
    got, want = _both(lambda: ma.fast.rope(ma.array(x), dims, traditional=traditional, base=base,
                                           scale=scale, offset=offset))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    _plan_has("kernel", "rope")


@pytest.mark.parametrize("offset", [np.array([5, 2], np.int32), np.array([1000], np.int64),
                                    np.array(4096, np.int64)], ids=["per-batch", "one", "scalar-i64"])
def test_rope_offset_arrays(offset):
    x = _rand(np.random.default_rng(1), 2, 4, 3, 16)
    got, want = _both(lambda: ma.fast.rope(ma.array(x), 16, traditional=False, base=10000.0, scale=1.0,
                                           offset=ma.array(offset)))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    _plan_has("kernel", "rope")


def test_rope_transposed_input_and_freqs_on_numpy():
    x = _rand(np.random.default_rng(2), 1, 5, 3, 8)  # (B, L, H, D) seen as (B, H, L, D)
    got, want = _both(lambda: ma.fast.rope(ma.array(x).transpose(0, 2, 1, 3), 8, traditional=False,
                                           base=10000.0, scale=1.0, offset=2))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    freqs = np.linspace(1, 50, 4).astype(np.float32)
    got, want = _both(lambda: ma.fast.rope(ma.array(x), 8, traditional=True, base=None, scale=1.0, offset=1,
                                           freqs=ma.array(freqs)))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    _plan_has("numpy", "rope")


@pytest.mark.parametrize("B,hq,hk,L,S,D,dv", [
    (1, 9, 3, 1, 37, 64, 64),  # decode, grouped-query heads
    (2, 4, 4, 5, 11, 13, 7),  # prompt rows, odd head sizes
    (1, 6, 2, 3, 3, 8, 16),
])
@pytest.mark.parametrize("mask", [None, "causal", "bool", "float"])
def test_attention_matches_reference(B, hq, hk, L, S, D, dv, mask):
    rng = np.random.default_rng(3)
    q, k, v = _rand(rng, B, hq, L, D), _rand(rng, B, hk, S, D), _rand(rng, B, hk, S, dv)
    m = {"bool": rng.random((L, S)) < 0.7, "float": _rand(rng, B, hq, L, S)}.get(mask, mask)

    def graph():
        mm = ma.array(m) if isinstance(m, np.ndarray) else m
        return ma.fast.scaled_dot_product_attention(ma.array(q), ma.array(k), ma.array(v), scale=D ** -0.5,
                                                    mask=mm)

    got, want = _both(graph)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    _plan_has("kernel", "scaled_dot_product_attention")


def test_attention_fully_masked_row_and_strided_cache():
    """Keys and values as the first S positions of a larger cache (strided), a boolean mask hiding
    everything from one query: that row averages v, as the reference's lowest-value masking does."""
    rng = np.random.default_rng(4)
    q = _rand(rng, 1, 4, 2, 16)
    kc, vc = _rand(rng, 1, 2, 20, 16), _rand(rng, 1, 2, 20, 16)
    m = rng.random((2, 9)) < 0.5
    m[0] = False

    def graph():
        k, v = ma.array(kc)[:, :, :9, :], ma.array(vc)[:, :, :9, :]
        return ma.fast.scaled_dot_product_attention(ma.array(q), k, v, scale=0.25, mask=ma.array(m))

    got, want = _both(graph)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got[0, :, 0], np.broadcast_to(vc[0, :, :9].mean(1).repeat(2, 0), (4, 16)),
                               rtol=1e-5, atol=1e-5)
    _plan_has("kernel", "scaled_dot_product_attention")


@pytest.mark.parametrize("L", [1, 3])
def test_attention_reads_no_hidden_key_or_value(L):
    """A key the mask hides is not read, nor its value (as MLX's fused decode kernel skips them): NaN
    in the unwritten tail of a cache gives the result of zeros there, which is the reference's."""
    rng = np.random.default_rng(5)
    S = 40
    q, k, v = _rand(rng, 1, 9, L, 16), _rand(rng, 1, 3, S, 16), _rand(rng, 1, 3, S, 16)
    seen = np.arange(S)[None, :] <= np.arange(L)[:, None] + 23  # a cache written up to 23 + L
    hidden = ~seen.any(axis=0)
    clean_k, clean_v = k.copy(), v.copy()
    clean_k[:, :, hidden] = clean_v[:, :, hidden] = 0
    k[:, :, hidden] = v[:, :, hidden] = np.nan

    def graph(kk, vv):
        return lambda: ma.fast.scaled_dot_product_attention(ma.array(q), ma.array(kk), ma.array(vv),
                                                            scale=0.25, mask=ma.array(seen))

    got = np.array(on("llvm", graph(k, v)))
    _plan_has("kernel", "scaled_dot_product_attention")
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, np.array(on("llvm", graph(clean_k, clean_v))))
    np.testing.assert_allclose(got, np.array(on("numpy", graph(clean_k, clean_v))), rtol=RTOL, atol=ATOL)


def test_attention_sinks_stay_on_numpy():
    rng = np.random.default_rng(5)
    q, k, v = _rand(rng, 1, 2, 1, 8), _rand(rng, 1, 2, 4, 8), _rand(rng, 1, 2, 4, 8)
    sinks = _rand(rng, 2)
    got, want = _both(lambda: ma.fast.scaled_dot_product_attention(
        ma.array(q), ma.array(k), ma.array(v), scale=0.3, sinks=ma.array(sinks)))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    _plan_has("numpy", "scaled_dot_product_attention")


def test_replayed_step_uses_new_buffers(monkeypatch):
    """The same structure evaluated again replays the bound kernels on that eval's buffers."""
    monkeypatch.setenv("MLXARM_DEVICE", "llvm")
    ex = executor("llvm")
    rng = np.random.default_rng(6)

    def step(q, k, v, position):
        mask = ma.arange(k.shape[2])[None, :] <= position
        qr = ma.fast.rope(q, 16, traditional=False, base=10000.0, scale=1.0, offset=position)
        kr = ma.fast.rope(k, 16, traditional=False, base=10000.0, scale=1.0, offset=position)
        return ma.fast.scaled_dot_product_attention(qr, kr, v, scale=0.25, mask=mask)

    replays = ex.replays
    for position in (3, 5, 8, 2):
        q, k, v = _rand(rng, 1, 4, 1, 16), _rand(rng, 1, 2, 10, 16), _rand(rng, 1, 2, 10, 16)
        args = lambda: (ma.array(q), ma.array(k), ma.array(v), ma.array(position, ma.int32))  # noqa: E731
        want = np.array(on("numpy", lambda: step(*args())))
        got = step(*args())
        ma.eval(got)
        np.testing.assert_allclose(np.array(got), want, rtol=RTOL, atol=ATOL)
    assert ex.replays > replays


@pytest.mark.parametrize("dtype", [ma.float16, ma.bfloat16], ids=str)
def test_half_precision_rope_and_attention_are_kernels(dtype):
    """mlx-lm's float16 and bfloat16 models: rope and attention load their dtype, compute in float32
    and round once as they store, as the references' float32 results are cast once."""
    from _matrix import tolerance

    rtol, atol = tolerance(dtype)
    rng = np.random.default_rng(6)
    x = _rand(rng, 1, 9, 1, 64)
    for traditional, dims in ((False, 64), (True, 48)):
        got, want = _both(lambda: ma.fast.rope(ma.array(x, dtype=dtype), dims, traditional=traditional,
                                               base=10000.0, scale=1.0, offset=37).astype(ma.float32))
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
        _plan_has("kernel", "rope")
    q, kc, vc = _rand(rng, 1, 9, 1, 64), _rand(rng, 1, 3, 40, 64), _rand(rng, 1, 3, 40, 64)
    for mask in (None, "causal"):
        def graph(mask=mask):
            k = ma.array(kc, dtype=dtype)[:, :, :29, :]  # the filled part of a cache
            v = ma.array(vc, dtype=dtype)[:, :, :29, :]
            out = ma.fast.scaled_dot_product_attention(ma.array(q, dtype=dtype), k, v, scale=0.125, mask=mask)
            return out.astype(ma.float32)

        got, want = _both(graph)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
        _plan_has("kernel", "scaled_dot_product_attention")
