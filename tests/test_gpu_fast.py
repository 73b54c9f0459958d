"""``fast.rope``, ``fast.scaled_dot_product_attention`` and ``slice_update`` at array positions as GPU kernel
templates (kernels/gpu_attention.py, kernels/gpu_update.py) on OpenCL and Vulkan, against the numpy
executor: traditional and half rope, partial rotation, offsets as ints, int32/int64 arrays and per batch
element, explicit frequencies, float16; attention without a mask, causal, boolean and additive masks,
grouped-query heads, keys and values through strides, head sizes that fill no workgroup, prefill
lengths past one chunk of keys, float16; the KV cache's write into its own buffer and into a copy when
the input is still seen, for 1-, 2- and 4-byte elements. The plan shows each template ran (no numpy
step)."""
import numpy as np
import pytest

import mlxarm.core as ma
from _backends import skip_reason
from _matrix import on
from mlxarm.backend import executor

# float32 results of the same operations summed in another order (dot products, softmax totals), and
# GPU cos/sin within a few ulp of numpy's on the reduced angle.
RTOL, ATOL = 2e-5, 2e-6
DEVICES = [pytest.param(d, marks=pytest.mark.skipif(bool(skip_reason(d)), reason=f"{d} unavailable: {skip_reason(d)}"))
           for d in ("opencl", "vulkan")]


def _both(device, fn):
    want = np.array(on("numpy", fn))
    got = np.array(on(device, fn))
    return got, want


def _numpy_steps(device):
    return [name for kind, name in executor(device).last_plan if kind == "numpy"]


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("traditional", [False, True], ids=["half", "traditional"])
@pytest.mark.parametrize("shape,dims,offset,base,scale", [
    ((1, 9, 1, 64), 64, 37, 10000.0, 1.0),  # a decode step's queries
    ((2, 3, 5, 10), 6, 3, 500.0, 0.5),  # prompt rows, features past dims pass through
    ((1, 2, 4, 7, 12), 12, 0, 10000.0, 2.0),  # more leading axes
    ((3, 5, 8), 4, 11, 10000.0, 1.0),  # no head axis
    ((1, 2, 300, 16), 16, 4000, 10000.0, 1.0),  # large angles: reduced modulo 2 pi
])
def test_rope_matches_numpy(device, traditional, shape, dims, offset, base, scale):
    x = _rand(np.random.default_rng(0), *shape)
    got, want = _both(device, lambda: ma.fast.rope(ma.array(x), dims, traditional=traditional, base=base,
                                                   scale=scale, offset=offset))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    assert ("kernel", f"rope_float32 {shape}") in executor(device).last_plan


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("offset", [np.array([5, 2], np.int32), np.array([1000], np.int64),
                                    np.array(4096, np.int64), np.array([7, 300], np.int64)],
                         ids=["per-batch", "one", "scalar-i64", "per-batch-i64"])
def test_rope_offset_arrays(device, offset):
    x = _rand(np.random.default_rng(1), 2, 4, 3, 16)
    got, want = _both(device, lambda: ma.fast.rope(ma.array(x), 16, traditional=False, base=10000.0, scale=1.0,
                                                   offset=ma.array(offset)))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    assert _numpy_steps(device) == []


@pytest.mark.parametrize("device", DEVICES)
def test_rope_offset_computed_on_the_device(device):
    x = _rand(np.random.default_rng(9), 1, 2, 3, 8)

    def fn():
        position = ma.array(np.array([40], np.int32)) * 3  # a kernel's output of the same eval
        return ma.fast.rope(ma.array(x), 8, traditional=True, base=10000.0, scale=1.0, offset=position)

    got, want = _both(device, fn)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    assert _numpy_steps(device) == []
    # read from its device buffer by the rope template (which takes its offsets from their buffer)
    assert any(key[1].startswith("rope_10_") for key in executor(device).rt.sources if key[0] == "template")


@pytest.mark.parametrize("device", DEVICES)
def test_rope_transposed_input_freqs_and_float16(device):
    rng = np.random.default_rng(2)
    x = _rand(rng, 1, 5, 3, 8)  # (B, L, H, D) seen as (B, H, L, D)
    got, want = _both(device, lambda: ma.fast.rope(ma.array(x).transpose(0, 2, 1, 3), 8, traditional=False,
                                                   base=10000.0, scale=1.0, offset=2))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    assert _numpy_steps(device) == []
    freqs = np.linspace(1, 50, 4).astype(np.float32)
    got, want = _both(device, lambda: ma.fast.rope(ma.array(x), 8, traditional=True, base=None, scale=1.0,
                                                   offset=1, freqs=ma.array(freqs)))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    assert _numpy_steps(device) == []
    # float16: an odd element count, so the last 32-bit word holds one element
    h = _rand(rng, 1, 3, 5, 6).astype(np.float16)[..., :5]
    got, want = _both(device, lambda: ma.fast.rope(ma.array(h), 4, traditional=False, base=10000.0, scale=1.0,
                                                   offset=9))
    assert got.dtype == np.float16
    # float32 arithmetic rounded once to float16: a cos or sin an ulp away may round to the neighbour
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=2 ** -10, atol=2 ** -24)
    assert ("kernel", "rope_float16 (1, 3, 5, 5)") in executor(device).last_plan


def _qkv(rng, B, Hq, Hk, L, S, D, Dv):
    return _rand(rng, B, Hq, L, D), _rand(rng, B, Hk, S, D), _rand(rng, B, Hk, S, Dv)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask", ["none", "causal", "bool", "float"])
@pytest.mark.parametrize("dims", [
    (1, 9, 3, 1, 40, 64, 64),  # a decode step, grouped-query heads
    (2, 4, 2, 5, 7, 8, 12),  # small heads, v wider than q
    (1, 2, 1, 3, 2500, 80, 72),  # keys past one chunk, head dims past one workgroup's width
    (1, 2, 2, 6, 4, 8, 8),  # more queries than keys: causal rows with every key masked
], ids=["decode", "small", "long", "short-keys"])
def test_attention_matches_numpy(device, mask, dims):
    B, Hq, Hk, L, S, D, Dv = dims
    rng = np.random.default_rng(3)
    q, k, v = _qkv(rng, B, Hq, Hk, L, S, D, Dv)
    if mask == "bool":
        m = (rng.random((L, S)) < 0.7) | (np.arange(S)[None, :] == 0)
    elif mask == "float":
        m = _rand(rng, 1, Hq, L, S)
    else:
        m = None if mask == "none" else "causal"
    got, want = _both(device, lambda: ma.fast.scaled_dot_product_attention(
        ma.array(q), ma.array(k), ma.array(v), scale=D ** -0.5, mask=None if m is None else
        m if isinstance(m, str) else ma.array(m)))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    assert _numpy_steps(device) == []


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask", ["none", "causal", "bool", "float"])
def test_attention_float16(device, mask):
    # Dv odd: neighbouring rows' outputs share 32-bit words
    B, Hq, Hk, L, S, D, Dv = 2, 4, 2, 3, 37, 16, 7
    rng = np.random.default_rng(8)
    q, k, v = (a.astype(np.float16) for a in _qkv(rng, B, Hq, Hk, L, S, D, Dv))
    m = {"none": None, "causal": "causal", "bool": rng.random((L, S)) < 0.7,
         "float": _rand(rng, B, 1, L, S).astype(np.float16)}[mask]
    got, want = _both(device, lambda: ma.fast.scaled_dot_product_attention(
        ma.array(q), ma.array(k), ma.array(v), scale=D ** -0.5, mask=None if m is None else
        m if isinstance(m, str) else ma.array(m)))
    assert got.dtype == np.float16
    # the float32 result rounded once to float16: a sum in another order may round to the neighbour
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=2 ** -10, atol=2 ** -24)
    assert _numpy_steps(device) == []


@pytest.mark.parametrize("device", DEVICES)
def test_attention_prefill_strided_and_masked_rows(device):
    rng = np.random.default_rng(4)
    # keys and values read through a transpose, as a model's projections give them; a causal prefill
    # of 260 rows over a cache of 1300 keys
    q = _rand(rng, 1, 260, 4, 16)
    kt, vt = _rand(rng, 1, 1300, 2, 16), _rand(rng, 1, 1300, 2, 16)
    got, want = _both(device, lambda: ma.fast.scaled_dot_product_attention(
        ma.array(q).transpose(0, 2, 1, 3), ma.array(kt).transpose(0, 2, 1, 3), ma.array(vt).transpose(0, 2, 1, 3),
        scale=0.25, mask="causal"))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    assert _numpy_steps(device) == []
    # a fully masked row averages v (the lowest finite score), as the reference does
    q, k, v = _qkv(rng, 1, 2, 2, 3, 9, 8, 8)
    m = np.ones((3, 9), bool)
    m[1] = False
    got, want = _both(device, lambda: ma.fast.scaled_dot_product_attention(
        ma.array(q), ma.array(k), ma.array(v), scale=0.3, mask=ma.array(m)))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got[0, :, 1], v[0].mean(1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("position", [np.array([5], np.int32), np.array([-3], np.int64), np.array([99], np.int32)],
                         ids=["int32", "negative-int64", "clamped"])
def test_slice_update_matches_numpy(device, position):
    rng = np.random.default_rng(5)
    cache = _rand(rng, 1, 3, 16, 8)
    new = _rand(rng, 1, 2, 3, 8).transpose(0, 2, 1, 3)  # written through a transposed view
    got, want = _both(device, lambda: ma.slice_update(ma.array(cache), ma.array(new), ma.array(position),
                                                      axes=(2,)))
    np.testing.assert_array_equal(got, want)
    assert _numpy_steps(device) == []
    ints = rng.integers(-9, 9, (4, 5, 6)).astype(np.int32)
    got, want = _both(device, lambda: ma.slice_update(ma.array(ints), ma.array(ints[:2, 1:3, :4] * 10),
                                                      ma.array(np.array([1, 2, 2], np.int32)), axes=(0, 1, 2)))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("keep", [True, False], ids=["copy", "into"])
def test_slice_update_at_a_position_computed_on_the_device(device, keep):
    """A start the device computed in the same eval is read by the kernel from its buffer (counted
    from the end when negative, clamped into the array), not downloaded for a numpy step."""
    rng = np.random.default_rng(8)
    base, step = _rand(rng, 1, 3, 16, 8), _rand(rng, 1, 3, 2, 8)
    for p in (5, -3, 99, -40):
        def write():
            cache = ma.array(base) * 1.0  # realized on the device first
            ma.eval(cache)
            pos = ma.array(np.array([p], np.int32)) * 1  # computed on the device
            out = ma.slice_update(cache, ma.array(step), pos, axes=(2,))
            if keep:
                return cache, out
            del cache
            return out

        got = on(device, write)
        if keep:
            np.testing.assert_array_equal(np.array(got[0]), base)
            got = got[1]
        assert _numpy_steps(device) == []
        start = min(max(p + 16 if p < 0 else p, 0), 14)
        want = base.copy()
        want[:, :, start:start + 2] = step
        np.testing.assert_array_equal(np.array(got), want)


@pytest.mark.parametrize("device", DEVICES)
def test_slice_update_at_an_int64_position_past_32_bits(device):
    """An int64 start is clamped by its whole value (the kernels read 32 bits of a start): one past
    32 bits, on the host or computed on the device, puts the window at the end, as MLX does."""
    rng = np.random.default_rng(10)
    base, step = _rand(rng, 1, 2, 16, 8), _rand(rng, 1, 2, 3, 8)
    want = base.copy()
    want[:, :, 13:16] = step
    for computed in (False, True):
        def write():
            cache = ma.array(base) * 1.0
            pos = ma.array(np.array([2 ** 32 + 3], np.int64))
            return ma.slice_update(cache, ma.array(step), pos * 1 if computed else pos, axes=(2,))

        np.testing.assert_array_equal(np.array(on(device, write)), want)


@pytest.mark.skipif(bool(skip_reason("vulkan")), reason=f"vulkan unavailable: {skip_reason('vulkan')}")
def test_vulkan_decode_writes_launch_alike_at_every_position():
    """On Vulkan, where every set of push constants is an operation made anew, a replayed step's
    cache write and rotary embedding read the position from its buffer: once the step has run,
    later positions make no new operation."""
    rng = np.random.default_rng(9)
    x, step = _rand(rng, 1, 2, 1, 8), _rand(rng, 1, 2, 1, 8)
    cache = on("vulkan", lambda: ma.array(_rand(rng, 1, 2, 16, 8)) * 1.0)
    rt = executor("vulkan").rt
    made = []
    for p in range(8):
        def decode():
            pos = ma.array(np.array([p], np.int32))
            kv = ma.slice_update(cache, ma.array(step), pos, axes=(2,))
            q = ma.fast.rope(ma.array(x), 8, traditional=False, base=10000.0, scale=1.0, offset=pos)
            return kv, q

        before = rt.operations_made
        kv, q = on("vulkan", decode)
        made.append(rt.operations_made - before)
        want = on("numpy", decode)
        np.testing.assert_array_equal(np.array(kv), np.array(want[0]))
        np.testing.assert_allclose(np.array(q), np.array(want[1]), rtol=1e-5, atol=1e-6)
    assert made[3:] == [0] * 5, made


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [np.float16, np.int8, np.bool_])
@pytest.mark.parametrize("keep", [True, False], ids=["copy", "into"])
def test_slice_update_narrow_elements(device, dtype, keep):
    # 1- and 2-byte elements share 32-bit words with neighbours outside the window (odd sizes)
    rng = np.random.default_rng(7)
    base = rng.integers(-50, 50, (1, 3, 7, 5)).astype(dtype)
    new = rng.integers(-50, 50, (1, 3, 2, 3)).astype(dtype)

    def write():
        cache = ma.array(base) + ma.array(np.zeros((), dtype))  # realized on the device first
        ma.eval(cache)
        out = ma.slice_update(cache, ma.array(new), ma.array(np.array([3, 1], np.int32)), axes=(2, 3))
        if keep:
            return cache, out
        del cache
        return out

    got = on(device, write)
    want = base.copy()
    want[:, :, 3:5, 1:4] = new
    if keep:
        np.testing.assert_array_equal(np.array(got[0]), base)
        got = got[1]
    np.testing.assert_array_equal(np.array(got), want)
    mode = "copy" if keep else "into"
    assert ("kernel", f"slice_update_{mode} (1, 3, 7, 5)") in executor(device).last_plan


_BOXES = [  # (shape, index, update shape): ints, unit-step slices, one Ellipsis; broadcast updates
    ((1, 3, 16, 8), (Ellipsis, slice(2, 7), slice(None)), (1, 3, 5, 8)),  # a prompt's keys into a cache
    ((4, 6), (1, slice(None)), (6,)),
    ((4, 6), (slice(1, 3), 2), (2,)),
    ((2, 5, 7), (slice(None), slice(0, 5), slice(3, 7)), (1, 4)),
    ((3, 4), (-1,), (1,)),
    ((6,), (slice(-4, None),), (4,)),
    ((3, 4), (slice(2, 2),), (0, 4)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int8], ids=lambda d: d.__name__)
@pytest.mark.parametrize("keep", [False, True], ids=["into", "copy"])
def test_static_slice_update_runs_as_a_kernel(device, dtype, keep):
    """``a[box] = v`` (a KV cache's prompt write) by the slice_update template, into the input's own
    buffer, or into a copy while the old value is still seen; no numpy step, so no download. A strided
    box or a new axis stays on numpy, and so does every one where the runtime keeps an eval's tensors
    apart until it submits (Vulkan: ``whole_evals``)."""
    kernels = executor(device).rt.whole_evals
    rng = np.random.default_rng(11)
    for shape, index, ushape in _BOXES:
        x = rng.integers(-50, 50, shape).astype(dtype)
        u = rng.integers(-50, 50, ushape).astype(dtype)
        a = ma.array(x) + ma.array(np.zeros((), dtype))  # on the device
        on(device, lambda: a)
        old = a + ma.array(np.zeros((), dtype)) if keep else None  # reads the value before the write
        a[index] = ma.array(u) + ma.array(np.zeros((), dtype))
        on(device, lambda: a)
        mode = "copy" if keep else "into"
        if kernels:
            assert not _numpy_steps(device), (index, executor(device).last_plan)
            assert ("kernel", f"slice_update_{mode} {shape}") in executor(device).last_plan, index
        else:
            assert _numpy_steps(device) == ["slice_update"], (index, executor(device).last_plan)
        want = x.copy()
        want[index] = u
        np.testing.assert_array_equal(np.array(a), want)
        if keep:
            np.testing.assert_array_equal(np.array(on(device, lambda: old)), x)
    for index in ((Ellipsis, slice(None, None, 2)), (slice(None), None, slice(None))):
        a = ma.array(np.zeros((4, 6), dtype)) + ma.array(np.ones((), dtype))
        on(device, lambda: a)
        a[index] = ma.array(np.full((1,), 3, dtype))
        on(device, lambda: a)
        assert _numpy_steps(device) == ["slice_update"]
        want = np.ones((4, 6), dtype)
        want[index] = 3
        np.testing.assert_array_equal(np.array(a), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=lambda d: d.__name__)
def test_reshape_of_a_transposed_output_is_copied_on_the_device(device, dtype):
    """A reshape no view can make, read by a kernel template (attention's heads joined for the output
    projection: ``o.transpose(0, 2, 1, 3).reshape(...) @ w``), is a copy kernel reading the transposed
    output where it is: nothing is downloaded before the host reads the result (a numpy step where the
    runtime keeps an eval's tensors apart until it submits: Vulkan, ``whole_evals``)."""
    kernels = executor(device).rt.whole_evals
    rng = np.random.default_rng(12)
    x = rng.integers(-8, 8, (1, 3, 5, 4)).astype(dtype)
    w = rng.integers(-8, 8, (12, 6)).astype(dtype)
    for view, want in ((lambda a: ma.transpose(a, (0, 2, 1, 3)).reshape(5, 12), x.transpose(0, 2, 1, 3).reshape(5, 12)),
                       (lambda a: a[:, ::-1, :, ::-1].transpose(0, 2, 1, 3).reshape(5, 12),  # negative strides
                        x[:, ::-1, :, ::-1].transpose(0, 2, 1, 3).reshape(5, 12))):
        rt = executor(device).rt
        before = rt.downloads
        a = ma.array(x) + ma.array(np.zeros((), dtype))
        out = ma.matmul(view(a), ma.array(w))
        on(device, lambda: out)
        if kernels:
            assert ("kernel", "reshape_copy (5, 12)") in executor(device).last_plan, executor(device).last_plan
            assert not _numpy_steps(device) and rt.downloads == before
        else:
            assert _numpy_steps(device) == ["reshape"]
        np.testing.assert_array_equal(np.array(out), want @ w)


@pytest.mark.parametrize("device", DEVICES)
def test_slice_update_in_place_only_when_unseen(device):
    rng = np.random.default_rng(6)
    base, step = _rand(rng, 1, 2, 8, 4), _rand(rng, 1, 2, 1, 4)

    def write(keep: bool):
        cache = ma.array(base) * 1.0  # realized on the device first
        ma.eval(cache)
        out = ma.slice_update(cache, ma.array(step), ma.array(np.array([3], np.int32)), axes=(2,))
        if keep:
            return cache, out
        del cache
        return out

    kept, out = on(device, lambda: write(True))
    assert ("kernel", "slice_update_copy (1, 2, 8, 4)") in executor(device).last_plan
    np.testing.assert_array_equal(np.array(kept), base)  # the input is still seen: not written
    want = base.copy()
    want[:, :, 3:4] = step
    np.testing.assert_array_equal(np.array(out), want)
    out = on(device, lambda: write(False))
    assert ("kernel", "slice_update_into (1, 2, 8, 4)") in executor(device).last_plan
    np.testing.assert_array_equal(np.array(out), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["argmax", "argmin"])
@pytest.mark.parametrize("shape,axis", [((5, 1000), -1), ((3, 4, 37), 2), ((49152,), None), ((2, 300), 1),
                                        ((6, 3), -1), ((300, 1), -1)])
def test_argmax_rows_match_numpy(device, op, shape, axis):
    """argmax/argmin of float32 over the last axis run as a row template (an LLM's greedy token): the
    first index of the extreme value, of the first NaN where a row has one, ties and all-infinite rows
    included; a transposed input is read through its strides."""
    rng = np.random.default_rng(3)
    a = _rand(rng, *shape)
    flat = a.reshape(-1)
    flat[::97] = a.max() if op == "argmax" else a.min()  # ties, first one wins
    if a.ndim > 1 and shape[-1] > 9:
        a[1, ..., 5] = a[1, ..., 9] = np.nan
        a[0, ...] = -np.inf if op == "argmax" else np.inf
    ref = getattr(np, op)
    got = np.array(on(device, lambda: getattr(ma, op)(ma.array(a), axis=axis)))
    np.testing.assert_array_equal(got, ref(a, axis=axis))
    assert ("kernel", f"{op} rows of {shape[-1]}") in executor(device).last_plan
    assert not _numpy_steps(device)
    t = np.ascontiguousarray(_rand(rng, 40, 8))
    got = np.array(on(device, lambda: getattr(ma, op)(ma.array(t).T, axis=-1)))
    np.testing.assert_array_equal(got, ref(t.T, axis=-1))
    assert not _numpy_steps(device)
