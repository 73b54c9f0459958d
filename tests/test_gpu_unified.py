"""Unified memory on the GPU executors: where the device's memory is the host's (lavapipe is a CPU
Vulkan device, PoCL reports CL_DEVICE_HOST_UNIFIED_MEMORY), buffers are host-visible (Kompute host
tensors, OpenCL CL_MEM_ALLOC_HOST_PTR) and transfers are copies to and from their mappings. Each test
runs its graphs with the unified path on and forced off on the same executor, checks that the buffers
are of the kind the setting asks for, that both settings give bitwise the same results, and that those
agree with the numpy executor. ``MLXARM_UNIFIED=0`` forces the path off for a whole process."""
import contextlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import mlxarm.core as ma
from _backends import require, skip_reason
from _matrix import on
from mlxarm.backend import executor
from mlxarm.backend.gpu_common import root_of

DEVICES = ["vulkan", "opencl"]


@pytest.fixture(autouse=True)
def _device_available(request):
    """A test run for a device this machine cannot drive skips (with the reason) before touching it."""
    device = getattr(getattr(request.node, "callspec", None), "params", {}).get("device")
    if device is not None:
        require(device)


@contextlib.contextmanager
def unified(device, flag):
    """(runtime, whether new buffers are host-visible) for the executor of ``device`` with its unified
    path on (where the device shares the host's memory and MLXARM_UNIFIED is not 0) or forced off, and
    OpenCL's pooled and mapped paths from ``_LARGE`` bytes."""
    require(device)
    rt = executor(device).rt
    old, large = rt.unified, getattr(rt, "large", None)
    rt.unified = flag and old
    if large is not None:
        rt.large = _LARGE
    try:
        yield rt, rt.unified
    finally:
        rt.unified = old
        if large is not None:
            rt.large = large


def host_visible(device, buf) -> bool:
    if device == "vulkan":
        import kp

        return buf.tensor_type() == kp.TensorTypes.host
    import pyopencl as cl

    return bool(buf.flags & cl.mem_flags.ALLOC_HOST_PTR)


def on_and_off(device, fn):
    """``fn()`` (a list of arrays, built from host data inside ``fn`` so that every buffer is made under
    the setting) with the unified path on and off: the same bits both ways, and the numpy executor's
    values. Returns the host copies."""
    ex = executor(device)
    results = {}
    for flag in (True, False):
        with unified(device, flag) as (rt, uses):
            out = on(device, fn)
            bufs = [ex.resident.get(root_of(o._data)) for o in out]
            bufs = [b for b in bufs if b is not None]
            assert bufs, "no output stayed on the device"
            assert all(host_visible(device, b) == uses for b in bufs), (flag, uses)
            results[flag] = [np.array(o) for o in out]
    ref = [np.array(o) for o in on("numpy", fn)]
    for i, (a, b, r) in enumerate(zip(results[True], results[False], ref)):
        assert a.dtype == b.dtype == r.dtype and a.shape == b.shape == r.shape, i
        np.testing.assert_array_equal(a, b, err_msg=f"output {i}: unified on and off differ")
        if r.dtype.kind == "f":
            np.testing.assert_allclose(a, r, rtol=2e-5, atol=1e-6, err_msg=f"output {i}")
        else:
            np.testing.assert_array_equal(a, r, err_msg=f"output {i}")
    return results[True]


# OpenCL pools buffers and maps transfers from 32 MiB (opencl._LARGE); the tests lower that bound to
# 1 MiB so that _DATA (1 MiB) takes those paths and the small arrays the write/read commands.
_LARGE = 1 << 20
_DATA = np.random.default_rng(7).standard_normal((256, 1024)).astype(np.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_device_reports_unified_memory(device):
    """lavapipe (a CPU device) and PoCL share the host's memory; ``info`` tells whether the path is on."""
    require(device)
    ex = executor(device)
    rt = ex.rt
    if device == "vulkan":
        from mlxarm.backend.vulkan import is_emulated

        if is_emulated(rt.props["device_name"]):
            assert rt.host_memory
    else:
        assert rt.host_memory == bool(rt.device.host_unified_memory)
    assert rt.unified == (rt.host_memory and os.environ.get("MLXARM_UNIFIED") != "0")
    assert ex.info()["unified_memory"] is rt.unified


@pytest.mark.parametrize("device", DEVICES)
def test_read_back_changed_on_the_host_and_uploaded_again(device):
    """An output read back, changed by numpy on the host, uploaded again and combined with the output
    still on the device; a full sum (two stages, a scratch buffer) of each."""

    def graph():
        x = ma.array(_DATA)
        y = ma.exp(x * 0.5) + 1
        h = np.array(y)  # evaluates y and downloads it
        h[:, ::3] *= -2
        z = ma.array(h)
        w = z * y - 1
        h2 = np.array(w)
        h2[1] = 0
        return [y, w, ma.array(h2) + z, ma.sum(z), ma.sum(ma.array(h2))]

    on_and_off(device, graph)


@pytest.mark.parametrize("device", DEVICES)
def test_numpy_steps_between_kernels(device):
    """Nodes no kernel covers (sort, cumsum, int64) run on numpy between kernels within one eval: their
    inputs are downloaded mid-eval and their outputs uploaded to the next kernels."""

    def graph():
        x = ma.array(_DATA[:4, :33])
        a = ma.sort(ma.exp(x), axis=1) * 2 + ma.cumsum(x, axis=0)
        b = ma.sum((x * 100).astype(ma.int64), axis=1) + 1
        return [a, b, ma.max(a, axis=0) - a[0]]

    on_and_off(device, graph)


@pytest.mark.parametrize("device", DEVICES)
def test_views_with_offsets(device):
    """Kernels read views of uploaded arrays and of outputs still on the device at element offsets into
    their buffers, of dtypes whose arrays end within a 32-bit word (int8, float16)."""

    def graph():
        a = ma.array(np.arange(3 * 4 * 37, dtype=np.float32).reshape(3, 4, 37))
        y = a * 2 - 5
        i8 = ma.array(np.arange(-6, 7, dtype=np.int8))
        f16 = ma.array(np.linspace(-3, 3, 7, dtype=np.float16))
        flat = y.reshape(-1)
        return [a[1:, 2:, 3::4] + 1, y[2, 1:] * a[0, :3], flat[7:] + flat[:-7], ma.sum(y[:, ::-2].T, axis=(0, 2)),
                i8[3:] * 3, i8[1::2] + i8[:-1:2], f16[1:] * 2, (f16 * 2)[2:5] + 1]

    on_and_off(device, graph)


@pytest.mark.parametrize("flag", [True, False], ids=["unified", "staged"])
@pytest.mark.parametrize("device", DEVICES)
def test_buffers_reused_after_arrays_die(device, flag):
    """The buffers of dead arrays go back to a pool at the next submit and serve new arrays of their size
    (uploads and kernel outputs): of the kind the setting asks for, with nothing of their old contents left."""
    ex = executor(device)
    n = _DATA.size
    with unified(device, flag) as (rt, uses):
        old = on(device, lambda: ma.array(np.full(n, 9, np.float32)) * 2)
        np.testing.assert_array_equal(np.array(old), np.full(n, 18, np.float32))
        del old
        on(device, lambda: ma.array(np.ones(3, np.float32)) + 1)  # this submit pools the dead buffers
        pooled = {id(b) for bs in rt.pool.values() for b in bs if host_visible(device, b) == uses}
        assert pooled
        data = np.arange(n, dtype=np.float32)
        inp = ma.array(data)
        new = on(device, lambda: inp - 3)
        bufs = [ex.resident.get(root_of(a._data)) for a in (inp, new)]
        assert bufs[0] is not bufs[1] and all(id(b) in pooled and host_visible(device, b) == uses for b in bufs)
        np.testing.assert_array_equal(np.array(new), data - 3)
        half = on(device, lambda: ma.array(data[: n // 2].astype(np.int32)).astype(ma.float32) + new[: n // 2])
        np.testing.assert_array_equal(np.array(half), 2 * data[: n // 2] - 3)


@pytest.mark.parametrize("device", DEVICES)
def test_settings_switched_between_evals(device):
    """Arrays made under one setting are read by kernels recorded under the other (a host-visible buffer
    beside a device-local one in one kernel), both ways."""
    require(device)
    results = []
    for first, second in ((True, False), (False, False)):  # switched, and the same kernels unswitched
        with unified(device, first):
            a = on(device, lambda: ma.array(_DATA[0]) * 3)
        with unified(device, second):
            b = on(device, lambda: a + ma.array(_DATA[1]))
        with unified(device, first):
            c = on(device, lambda: b * a - ma.array(_DATA[2]))
        results.append(np.array(c))
    np.testing.assert_array_equal(results[0], results[1])
    d0, d1, d2 = (_DATA[i].astype(np.float32) for i in range(3))
    product = (d0 * 3 + d1) * (d0 * 3)
    expected = product - d2
    # a device may contract b * a - d2 into one fused multiply-add (OpenCL allows it; NVIDIA's does):
    # it skips the product's rounding (half an ulp of the product) and rounds the result once
    bound = 2.0 ** -23 * (np.abs(product) + np.abs(expected))
    assert np.all(np.abs(results[0] - expected) <= bound)


def test_environment_switch():
    """``MLXARM_UNIFIED=0`` turns the path off for the process; unset, it is on where the device shares
    the host's memory."""
    devices = [d for d in DEVICES if not skip_reason(d)]
    if not devices:
        pytest.skip("neither Vulkan nor OpenCL is usable here")
    script = ("import json, sys\nfrom mlxarm.backend import executor\n"
              "print(json.dumps({d: [executor(d).info()['unified_memory'], executor(d).rt.host_memory] "
              "for d in sys.argv[1:]}))")
    seen = {}
    for value in ("0", None):
        env = {k: v for k, v in os.environ.items() if k != "MLXARM_UNIFIED"}
        if value is not None:
            env["MLXARM_UNIFIED"] = value
        res = subprocess.run([sys.executable, "-c", script, *devices], env=env, capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, res.stderr
        seen[value] = json.loads(res.stdout.strip().splitlines()[-1])
    for d in devices:
        assert seen["0"][d][0] is False
        assert seen[None][d][0] is seen[None][d][1]


@pytest.mark.parametrize("device", DEVICES)
def test_outputs_stay_on_the_device_until_the_host_reads_them(device):
    """A chain of evals moves no output back to the host: each eval's kernels read the last one's
    output on the device. Reading an output writes its host buffer (once); an eval on another
    executor first writes every output still on the device only."""
    rt = executor(device).rt
    x = ma.array(_DATA)
    start = rt.downloads
    ys = [on(device, lambda: [ma.exp(x * 0.25) + 1])[0]]
    for k in range(3):
        ys.append(on(device, lambda: [ys[-1] * 0.5 - k])[0])
    assert rt.downloads == start, "an eval downloaded its outputs before the host read them"
    ref = np.exp(_DATA * np.float32(0.25)) + 1
    for k in range(3):
        ref = ref * np.float32(0.5) - k
    np.testing.assert_allclose(np.array(ys[-1]), ref, rtol=2e-5, atol=1e-6)
    assert rt.downloads == start + 1, "reading one output downloaded more or less than that output"
    np.testing.assert_allclose(ys[-1].tolist(), ref, rtol=2e-5, atol=1e-6)
    assert rt.downloads == start + 1, "an output read twice was downloaded twice"
    # An array read before it is evaluated is written to the host by its eval's own submission.
    submits = getattr(rt, "submits", None)
    w = ys[-1] + 1
    np.testing.assert_allclose(on(device, lambda: np.array(w)), ref + 1, rtol=2e-5, atol=1e-6)
    assert rt.downloads == start + 2
    if submits is not None:  # Vulkan counts its submissions
        assert rt.submits == submits + 1, "the read took a submission of its own"
    # A numpy eval reads the first output: the three still on the device only are written first.
    z = on("numpy", lambda: [ys[0] + 0])[0]
    assert rt.downloads == start + 5
    np.testing.assert_allclose(np.array(z), np.exp(_DATA * np.float32(0.25)) + 1, rtol=2e-5, atol=1e-6)
