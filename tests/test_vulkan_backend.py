"""The Vulkan executor (Kompute, on Mesa's lavapipe here) against the numpy executor: the same op matrix,
casts, views and random graphs as the OpenCL tests, plus what is Vulkan's own: one eval is one
sequence submit, buffers stay on the device and are pooled, and the SPIR-V cache."""
import os
import weakref

import numpy as np
import pytest
from hypothesis import given, settings

import mlxarm.core as ma
from _backends import skip_reason
import test_opencl_backend as shared
from mlxarm.backend import executor


_REASON = skip_reason("vulkan")
if _REASON:
    print(f"skipping the Vulkan backend tests: {_REASON}")
needs_vulkan = pytest.mark.skipif(bool(_REASON), reason=f"Vulkan unavailable: {_REASON}")
DEVICE = "vulkan"


@needs_vulkan
@pytest.mark.parametrize("prim,d", shared.elementwise_cases("unary"), ids=lambda v: getattr(v, "name", None))
def test_unary_matches_numpy(prim, d):
    shared.check_unary(DEVICE, prim, d)


@needs_vulkan
def test_interleaved_evals_settle_on_their_pipelines():
    """Pipelines are bound to their tensors, so each eval's n-th tensor request is given the tensor it
    got last time; evals of several structures taking turns (a prompt, decode steps, sampling) keep
    their requests apart and, once each has run, build no more pipelines."""
    rt = executor(DEVICE).rt
    rng = np.random.default_rng(0)
    x = ma.array(rng.standard_normal((64, 256)).astype(np.float32))

    def chained_softmax():
        h = x
        for _ in range(3):
            h = ma.softmax(h, axis=-1) * 2.0
        return h

    def chained_exp():
        h = x
        for _ in range(2):
            h = ma.exp(h - ma.max(h, axis=-1, keepdims=True))
        return h

    def row_sums():
        return ma.sum(x * 3.0, axis=-1)

    built = []
    for _ in range(6):
        for f in (chained_softmax, chained_softmax, chained_exp, row_sums, chained_exp):
            shared.on(DEVICE, f)
        built.append(rt.pipelines_built)
    assert built[-3] == built[-1], built
    np.testing.assert_allclose(np.array(shared.on(DEVICE, row_sums)), np.array(x).sum(-1) * 3, rtol=1e-5)


@needs_vulkan
@pytest.mark.parametrize("name", ["sin", "cos"])
def test_sin_and_cos_of_large_arguments(name):
    """Vulkan bounds the error of GLSL's sin and cos on [-pi, pi] only (a GPU may be far off beyond:
    NVIDIA's are 4e-3 off at 1.6e4): the kernels reduce the argument first and match numpy up to
    |x| = 1e7, near multiples of pi/2 too; infinities and NaN give NaN."""
    rng = np.random.default_rng(3)
    near = (np.arange(-60000, 60000, 397) * (np.pi / 2)).astype(np.float32)
    x = np.concatenate([rng.uniform(-1e4, 1e4, 1000).astype(np.float32),
                        rng.uniform(-1e7, 1e7, 1000).astype(np.float32), near, np.nextafter(near, np.inf),
                        np.float32([0.0, -0.0, 1e-30, np.pi, -np.pi, np.inf, -np.inf, np.nan])])
    fn = getattr(ma, name)
    shared.assert_backends_agree(DEVICE, lambda: fn(ma.array(x)), name)
    shared.assert_backends_agree(DEVICE, lambda: fn(ma.array(x * 0.5) * 2), f"{name}, fused")


@needs_vulkan
@pytest.mark.parametrize("prim,d", shared.elementwise_cases("binary"), ids=lambda v: getattr(v, "name", None))
def test_binary_matches_numpy(prim, d):
    shared.check_binary(DEVICE, prim, d)


@needs_vulkan
@pytest.mark.parametrize("name", ["sum", "prod", "max", "min"])
@pytest.mark.parametrize("d", shared.REDUCE_DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("axis", [None, (0, 2)], ids=str)
def test_reduction_matches_numpy(name, d, axis):
    shared.check_reduction(DEVICE, name, d, axis)


@needs_vulkan
@pytest.mark.parametrize("name,d,layouts", shared.LARGE_REDUCTIONS, ids=lambda v: getattr(v, "name", None))
def test_large_reduction_in_two_stages(name, d, layouts):
    shared.check_large_reduction(DEVICE, name, d, layouts)


@needs_vulkan
def test_matmul_template():
    shared.check_matmul(DEVICE)


@needs_vulkan
def test_row_kernels():
    shared.check_row_kernels(DEVICE)


@needs_vulkan
def test_quantized_matvec():
    shared.check_quantized_matvec(DEVICE)


@needs_vulkan
def test_reduction_special_values():
    shared.check_reduction_special_values(DEVICE)


@needs_vulkan
def test_edge_values():
    shared.check_edge_values(DEVICE)


@needs_vulkan
def test_casts():
    shared.check_casts(DEVICE)


@needs_vulkan
def test_views_read_in_place():
    shared.check_views(DEVICE)


@needs_vulkan
def test_numpy_fallback_between_kernels():
    shared.check_mixed_with_numpy_steps(DEVICE)


@needs_vulkan
def test_outputs_stay_on_device():
    shared.check_outputs_stay_on_device(DEVICE)


@needs_vulkan
@settings(max_examples=15, deadline=None)
@given(shared.graphs(max_steps=6))
def test_random_graphs_agree(recipe):
    shared.assert_backends_agree(DEVICE, lambda: shared.build_graph(*recipe), repr(recipe))


@needs_vulkan
def test_one_eval_is_one_sequence_submit():
    ex = executor(DEVICE)
    x = ma.array(np.linspace(-1, 1, 300, dtype=np.float32).reshape(3, 100))

    def graph():
        a = ma.exp(x) * 2
        b = ma.sum(a, axis=1, keepdims=True)
        c = a / b
        return [c, ma.max(c, axis=0), ma.tanh(a) + 1]

    submits, dispatches = ex.rt.submits, ex.rt.dispatches
    out = shared.on(DEVICE, graph)
    assert ex.rt.dispatches - dispatches >= 3
    assert ex.rt.submits - submits == 1
    ref = shared.on("numpy", graph)
    for o, r in zip(out, ref):
        np.testing.assert_allclose(np.array(o), np.array(r), rtol=2e-5, atol=1e-6)


@needs_vulkan
def test_dead_buffers_are_pooled_and_reused():
    """A dead array's device tensor goes back to the pool at the next submit and holds the next output
    of its size."""
    ex = executor(DEVICE)
    ex.rt.pool.clear()
    x = ma.array(np.arange(4096, dtype=np.float32))
    y = shared.on(DEVICE, lambda: x * 2)
    key = id(y._data)
    tensor = ex.resident.buffers[key]
    del y
    assert key not in ex.resident.buffers
    shared.on(DEVICE, lambda: x + 1)  # the next submit returns the dead tensor to the pool
    assert any(t is tensor for free in ex.rt.pool.values() for t in free)
    z = shared.on(DEVICE, lambda: x * 3)
    assert ex.resident.buffers[id(z._data)] is tensor
    np.testing.assert_array_equal(np.array(z), np.arange(4096, dtype=np.float32) * 3)


@needs_vulkan
def test_spirv_cache_hit(tmp_path):
    from mlxarm.backend.cache import ObjectCache
    from mlxarm.backend.vulkan import VulkanExecutor, VulkanRuntime

    x = ma.array(np.arange(10, dtype=np.float32))
    first = VulkanExecutor(VulkanRuntime(ObjectCache(str(tmp_path))))
    y = x * 5 - 1
    first.run([weakref.ref(y)])
    assert first.rt.compiled == 1
    second = VulkanExecutor(VulkanRuntime(ObjectCache(str(tmp_path))))
    z = x * 5 - 1
    second.run([weakref.ref(z)])
    assert second.rt.compiled == 0 and second.rt.cache.hits == 1
    np.testing.assert_array_equal(np.array(z), np.arange(10, dtype=np.float32) * 5 - 1)


@needs_vulkan
def test_validation_layer_errors_fail():
    """With MLXARM_VK_VALIDATION=1 (as ``make test`` runs this suite) a message of the Khronos validation
    layer raises at the submit that caused it: checked on a dispatch past the device's group limit."""
    import subprocess
    import sys

    from mlxarm.backend.vulkan import validation_layer

    if validation_layer() is None:
        pytest.skip("the Khronos validation layer is not installed (Debian: vulkan-validationlayers)")
    script = (
        "from mlxarm.backend.vulkan import VulkanRuntime, VulkanValidationError\n"
        "rt = VulkanRuntime()\n"
        "src = '#version 450\\nlayout(local_size_x = 1) in;\\nlayout(std430, binding = 0) buffer B { uint w[]; } b;\\n"
        "layout(push_constant) uniform P { uint n; } pc;\\nvoid main() { b.w[0] = pc.n; }\\n'\n"
        "groups = rt.props['max_work_group_count'][0] + 1\n"
        "rt.dispatch(rt.compile(src), 'too many groups', [rt.alloc(4)], groups, [1])\n"
        "try:\n"
        "    rt.submit([])\n"
        "except VulkanValidationError as e:\n"
        "    print('reported', 'groupCountX' in str(e))\n")
    env = dict(os.environ, MLXARM_VK_VALIDATION="1")
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == "reported True", res.stdout + res.stderr


@needs_vulkan
def test_gpu_is_a_real_vulkan_device(monkeypatch):
    """``mx.gpu`` (and the default device) is Vulkan on a real GPU; lavapipe, a CPU implementation,
    runs only when MLXARM_DEVICE names it."""
    import kp

    from mlxarm.backend import available_gpu_backend, executor_for
    from mlxarm.backend.vulkan import is_emulated

    monkeypatch.delenv("MLXARM_DEVICE", raising=False)
    manager = kp.Manager()
    try:
        names = [d["device_name"] for d in manager.list_devices()]
    finally:
        manager.destroy()
    if any(not is_emulated(n) for n in names):
        assert available_gpu_backend() == "vulkan"
        assert ma.default_device() == ma.gpu and executor_for(None).name == "vulkan"
    else:
        assert available_gpu_backend() != "vulkan", names
        assert executor_for(ma.gpu).name != "vulkan"


@needs_vulkan
def test_device_info_names_the_device():
    old = os.environ.get("MLXARM_DEVICE")
    os.environ["MLXARM_DEVICE"] = DEVICE
    try:
        info = ma.device_info()
    finally:
        os.environ.pop("MLXARM_DEVICE") if old is None else os.environ.__setitem__("MLXARM_DEVICE", old)
    assert info["backend"] == "vulkan" and info["device_name"] and "max_work_group_invocations" in info


@needs_vulkan
def test_device_limits_read_from_the_loader_match_vulkaninfo():
    """The limits the executor reads from VkPhysicalDeviceProperties itself (byte offsets into the
    limits struct) are the ones vulkaninfo prints for the same device."""
    import re
    import shutil
    import subprocess

    from mlxarm.backend import vulkan_device

    if shutil.which("vulkaninfo") is None:
        pytest.skip("vulkaninfo (vulkan-tools) is not installed")
    text = subprocess.run(["vulkaninfo"], capture_output=True, text=True, timeout=120).stdout
    caps = vulkan_device.query(0)
    section = text[text.index(caps.name):]  # the first device's properties follow its name

    def limit(name):
        return float(re.search(rf"\b{name}\s*=\s*([0-9.e+-]+)", section).group(1))

    assert caps.max_shared_bytes == limit("maxComputeSharedMemorySize")
    assert caps.timestamp_period == pytest.approx(limit("timestampPeriod"), rel=1e-6)


@needs_vulkan
def test_a_replayed_step_submits_its_recorded_commands_again():
    """A step whose launches are the same as a kept submission's (a decode step at the next position:
    new uploads, the position read from its buffer) submits that command buffer again instead of
    recording it anew, and computes each position's result."""
    rng = np.random.default_rng(3)
    step = rng.standard_normal((1, 2, 1, 8)).astype(np.float32)
    base = rng.standard_normal((1, 2, 16, 8)).astype(np.float32)
    rt = executor(DEVICE).rt

    def decode(cache, p):
        pos = ma.array(np.array([p], np.int32))
        kv = ma.slice_update(cache, ma.array(step * (p + 1)), pos, axes=(2,))
        return kv, ma.fast.rope(kv * 2.0, 8, traditional=False, base=10000.0, scale=1.0, offset=pos)

    old = os.environ.get("MLXARM_DEVICE")
    os.environ["MLXARM_DEVICE"] = DEVICE
    try:
        cache, expected = ma.array(base) * 1.0, base.copy()
        ma.eval(cache)
        again = []
        for p in range(12):
            before = rt.resubmits
            cache, q = decode(cache, p)
            ma.eval(cache, q)
            again.append(rt.resubmits - before)
            expected[:, :, p:p + 1] = step * (p + 1)
            np.testing.assert_array_equal(np.array(cache), expected)
            os.environ["MLXARM_DEVICE"] = "numpy"
            want = np.array(decode(ma.array(expected), p)[1])
            os.environ["MLXARM_DEVICE"] = DEVICE
            # float32 rounding of the rotation, relative to the largest value rotated
            np.testing.assert_allclose(np.array(q), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    finally:
        os.environ.pop("MLXARM_DEVICE") if old is None else os.environ.__setitem__("MLXARM_DEVICE", old)
    assert sum(again[-4:]) >= 3, again
