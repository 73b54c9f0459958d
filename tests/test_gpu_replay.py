"""Replayed evals on the GPU executors (OpenCL, Vulkan): an eval whose graph has the structure of one
seen twice before runs its recorded steps on its own buffers (``GPUExecutor.replay``). Each eval is
checked against the numpy executor: new input values, leaves that are views at other offsets of
their buffer, dtypes and shapes that change between evals, outputs held across evals (and fed back in),
a KV cache written in place at a new position each step (rope's offset and the write position read
from their buffers), and a replay whose recorded in-place write is no longer allowed."""
import numpy as np
import pytest

import mlxarm.core as ma
from _backends import skip_reason
from _matrix import on
from mlxarm.backend import executor

RTOL, ATOL = 2e-5, 2e-6
DEVICES = [pytest.param(d, marks=pytest.mark.skipif(bool(skip_reason(d)), reason=f"{d} unavailable: {skip_reason(d)}"))
           for d in ("opencl", "vulkan")]


def _rand(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def _mlp(x, w, b, gain):
    """Templates (rms_norm, matmul, softmax), fused kernels, a reduction and a numpy step (cumsum)
    whose output a fused kernel reads."""
    h = ma.fast.rms_norm(x, gain, 1e-5)
    h = ma.maximum(h @ w + b, 0.0) * 0.5
    s = ma.softmax(h, axis=-1)
    return ma.cumsum(s, axis=-1) * 2.0 + s.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("device", DEVICES)
def test_repeated_evals_replay_with_new_values(device):
    rng = np.random.default_rng(0)
    w, b, gain = _rand(rng, 32, 24), _rand(rng, 24), _rand(rng, 32)
    ex = executor(device)
    replays, fallbacks = ex.replays, ex.fallbacks
    plans = []
    for _ in range(5):
        x = _rand(rng, 3, 32)

        def step():
            return _mlp(ma.array(x), ma.array(w), ma.array(b), ma.array(gain))

        np.testing.assert_allclose(np.array(on(device, step)), np.array(on("numpy", step)), rtol=RTOL, atol=ATOL)
        plans.append(list(ex.last_plan))
    # the third eval of the structure on replays (the first is planned, the second kept)
    assert ex.replays - replays == 3 and ex.fallbacks == fallbacks
    assert all(p == plans[0] for p in plans), plans
    assert ("numpy", "cumsum") in plans[0] and any(name.startswith("gemm_") for _, name in plans[0])


@pytest.mark.parametrize("device", DEVICES)
def test_leaves_viewed_at_other_offsets(device):
    """A leaf that is a row of a larger buffer has the same layout at every row, so the evals share a
    structure: each replay finds the row's own offset in the buffer."""
    rng = np.random.default_rng(1)
    table = _rand(rng, 6, 40)
    w = _rand(rng, 40, 8)
    ex = executor(device)
    replays = ex.replays
    base = on(device, lambda: ma.array(table) * 1.0)  # a buffer on the device
    for row in range(6):
        x = on(device, lambda: base[row])  # a view of it, at the row's offset
        got = on(device, lambda: ma.exp(x[None] @ ma.array(w)) + x.sum())
        want = np.exp(table[row][None] @ w) + table[row].sum()
        np.testing.assert_allclose(np.array(got), want, rtol=1e-4, atol=1e-5)
    assert ex.replays - replays >= 4


@pytest.mark.parametrize("device", DEVICES)
def test_dtypes_shapes_and_strides_do_not_share_a_recording(device):
    rng = np.random.default_rng(2)
    ex = executor(device)
    replays = ex.replays
    cases = [((4, 8), np.float32, False), ((4, 8), np.float16, False), ((5, 8), np.float32, False),
             ((8, 4), np.float32, True)]  # the last: a transposed leaf, (4, 8) with other strides
    for _ in range(3):
        for shape, dtype, transposed in cases:
            a = _rand(rng, *shape, dtype=dtype)
            v = _rand(rng, 8, dtype=dtype)

            def step():
                x = ma.array(a).T if transposed else ma.array(a)
                return (ma.tanh(x * 0.5) + ma.array(v)).sum(axis=0) * 3.0

            got, want = np.array(on(device, step)), np.array(on("numpy", step))
            assert got.dtype == want.dtype == dtype
            tol = 2e-3 if dtype == np.float16 else RTOL
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    assert ex.replays - replays >= len(cases)


@pytest.mark.parametrize("device", DEVICES)
def test_outputs_held_across_evals_and_fed_back(device):
    """Outputs of replayed evals, kept without being read and fed into the next eval (as a decode
    loop's state), keep their values: no later eval writes into their buffers."""
    rng = np.random.default_rng(3)
    w = _rand(rng, 16, 16) * 0.3
    state = on(device, lambda: ma.array(np.ones((2, 16), np.float32)))
    held, wants = [], []
    want = np.ones((2, 16), np.float32)
    ex = executor(device)
    replays = ex.replays
    for _ in range(6):
        prev = state
        state = on(device, lambda: ma.tanh(prev @ ma.array(w)) + prev * 0.5)
        want = np.tanh(want @ w) + want * 0.5
        held.append(state)
        wants.append(want)
    for got, want in zip(held, wants):
        np.testing.assert_allclose(np.array(got), want, rtol=1e-4, atol=1e-5)
    assert ex.replays - replays >= 3


def _decode_step(cache, x, q, pos, mask, heads):
    """A decode step's attention: rope at the position (an array read on the host), the key written
    into the cache at it, attention over the cache."""
    k = ma.fast.rope(x, 8, traditional=False, base=10000.0, scale=1.0, offset=pos)
    cache = ma.slice_update(cache, k, pos, axes=(2,))
    qr = ma.fast.rope(q, 8, traditional=False, base=10000.0, scale=1.0, offset=pos)
    out = ma.fast.scaled_dot_product_attention(qr, cache, cache, scale=0.5, mask=mask)
    return cache, out.reshape(1, heads * 8)


def _advance(device, box: list, fn):
    """``fn(cache)`` evaluated on ``device``, ``cache`` taken out of ``box``: while the eval runs only
    its graph holds the cache, so its buffer may be written in place (as a decode loop's cache)."""
    return on(device, lambda: fn(box.pop()))


@pytest.mark.parametrize("device", DEVICES)
def test_kv_cache_written_in_place_at_each_position(device):
    rng = np.random.default_rng(4)
    heads, keys = 2, 6
    ex = executor(device)
    replays, fallbacks = ex.replays, ex.fallbacks
    box = [on(device, lambda: ma.zeros((1, heads, keys, 8)))]
    ref = [on("numpy", lambda: ma.zeros((1, heads, keys, 8)))]
    for p in range(keys):
        x, q = _rand(rng, 1, heads, 1, 8), _rand(rng, 1, heads, 1, 8)
        mask = np.arange(keys)[None, None, None, :] <= p

        def step(cache):
            return _decode_step(cache, ma.array(x), ma.array(q), ma.array(np.array([p], np.int32)), ma.array(mask),
                                heads)

        ref_cache, want = _advance("numpy", ref, step)
        cache, got = _advance(device, box, step)
        assert ("kernel", f"slice_update_into (1, {heads}, {keys}, 8)") in ex.last_plan
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(np.array(cache), np.array(ref_cache), rtol=RTOL, atol=ATOL)
        box.append(cache)
        ref.append(ref_cache)
        del cache, ref_cache
    assert ex.replays - replays >= keys - 2 and ex.fallbacks == fallbacks


@pytest.mark.parametrize("device", DEVICES)
def test_replay_does_not_write_into_a_buffer_still_seen(device):
    """A replay recorded with the cache written in place, run while a view of the cache's buffer is
    held (the structure is the same: the view is not part of the graph), writes a copy instead."""
    rng = np.random.default_rng(5)
    ex = executor(device)
    box = [on(device, lambda: ma.array(_rand(rng, 1, 2, 6, 4)) * 1.0)]

    def write(p, new):
        return lambda cache: ma.slice_update(cache, ma.array(new), ma.array(np.array([p], np.int32)), axes=(2,))

    for p in range(3):
        box.append(_advance(device, box, write(p, _rand(rng, 1, 2, 1, 4))))
        assert ("kernel", "slice_update_into (1, 2, 6, 4)") in ex.last_plan
    seen = on(device, lambda: box[0][:, :, 3])  # a view of the cache's buffer
    before = np.array(seen).copy()
    new = _rand(rng, 1, 2, 1, 4)
    want = np.array(box[0])
    want[:, :, 3:4] = new
    replays, fallbacks = ex.replays, ex.fallbacks
    out = _advance(device, box, write(3, new))
    assert ("kernel", "slice_update_copy (1, 2, 6, 4)") in ex.last_plan
    assert ex.replays == replays + 1 and ex.fallbacks == fallbacks + 1
    np.testing.assert_array_equal(np.array(out), want)
    np.testing.assert_array_equal(np.array(seen), before)
