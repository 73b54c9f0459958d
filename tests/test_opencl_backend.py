"""The OpenCL executor (pyopencl, on PoCL here) against the numpy executor: the elementwise and reduction
op matrix, casts, views, random graphs, buffers kept on the device, and the program cache.

The helpers at the top (``on``, ``assert_backends_agree``, the op lists and the graph recipes) are
shared with the Vulkan tests, which run the same matrix on their executor."""
import os

import numpy as np
import pytest
from hypothesis import given, settings

import mlxarm.core as ma
from _graphs import build_graph, graphs
from _matrix import convert_args, elementwise_primitives, on, tolerance, values
from mlxarm.backend import executor
from mlxarm.core import dtypes as dt
from mlxarm.core.registry import API

MATRIX_DTYPES = [dt.float32, dt.float16, dt.bfloat16, dt.int32, dt.bool_]
REDUCE_DTYPES = [dt.float32, dt.float16, dt.int32, dt.uint8, dt.bool_]
# GPU transcendental builtins are allowed a few ulps more than the numpy reference.
GPU_TOLERANCE = {"float32": (2e-5, 1e-6)}


def assert_backends_agree(device, fn, context=""):
    ref = on("numpy", fn)
    got = on(device, fn)
    assert got.dtype == ref.dtype and got.shape == ref.shape, context
    rtol, atol = (GPU_TOLERANCE.get(ref.dtype.name) or tolerance(ref.dtype)) if ref.dtype.kind in "fc" \
        else (0, 0)
    np.testing.assert_allclose(np.array(got), np.array(ref), rtol=rtol, atol=atol, equal_nan=True,
                               err_msg=context)


def elementwise_cases(kind):
    dtypes = MATRIX_DTYPES if kind == "binary" else [d for d in MATRIX_DTYPES if d is not dt.bool_]
    return [(p, d) for p in elementwise_primitives(kind) for d in dtypes if d in p.dtypes]


def check_unary(device, prim, d):
    rng = np.random.default_rng(1)
    x = values(rng, d, (5, 37), prim.domain)
    fn = API[("core", prim.name)].fn
    assert_backends_agree(device, lambda: fn(*convert_args([x], d, ma)), f"{prim.name}[{d.name}]")


def check_binary(device, prim, d):
    rng = np.random.default_rng(2)
    x, y = values(rng, d, (5, 37), prim.domain), values(rng, d, (37,), prim.domain)
    fn = API[("core", prim.name)].fn
    assert_backends_agree(device, lambda: fn(*convert_args([x, y], d, ma)), f"{prim.name}[{d.name}]")


def check_reduction(device, name, d, axis):
    rng = np.random.default_rng(3)
    x = values(rng, d, (3, 6, 19), (-2, 2) if name != "prod" else (0.5, 1.5))
    fn = getattr(ma, name)
    assert_backends_agree(device, lambda: fn(ma.array(x, dtype=d), axis=axis), f"{name}[{d.name}] axis={axis}")


def check_edge_values(device):
    # No subnormal inputs: GPUs (lavapipe included) may flush them to zero in arithmetic.
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, -1e-30, 88.0, -104, 1e30, -1e30, 3.0],
                       np.float32)
    for name in ("exp", "log", "log1p", "expm1", "tanh", "sigmoid", "erf", "sqrt", "sign", "abs", "isnan",
                 "isinf", "floor", "round"):
        fn = getattr(ma, name)
        with np.errstate(all="ignore"):
            assert_backends_agree(device, lambda: fn(ma.array(special)), name)
    halves = np.array([65504, 65519, 65520, 1e5, 6e-8, 3e-8, 2.9e-8, 1e-5, -0.0, np.nan, 1 / 3], np.float32)
    for d in (ma.float16, ma.bfloat16):
        assert_backends_agree(device, lambda: ma.array(halves).astype(d) * 1, f"round to {d}")


def check_casts(device):
    rng = np.random.default_rng(4)
    x = (rng.standard_normal(77) * 100).astype(np.float32)
    kinds = [dt.float32, dt.float16, dt.bfloat16, dt.int32, dt.int8, dt.uint8, dt.uint16, dt.int16, dt.bool_]
    for src in kinds:
        for dst in kinds:
            assert_backends_agree(device, lambda: ma.array(x).astype(src).astype(dst) * 1,
                                  f"{src.name}->{dst.name}")


def check_views(device):
    a = ma.array(np.arange(60, dtype=np.float32).reshape(3, 4, 5))
    assert_backends_agree(device, lambda: a.transpose(2, 0, 1) * 2 + a[1, 2, 3], "transpose")
    assert_backends_agree(device, lambda: a[::-1, 1:, ::2] - 1, "flip/slice")
    assert_backends_agree(device, lambda: ma.broadcast_to(a[:, :1], (3, 4, 5)) + a, "broadcast")
    assert_backends_agree(device, lambda: ma.sum(a[:, ::-2].T, axis=(0, 2)), "reduce of a view")


def check_mixed_with_numpy_steps(device):
    """Nodes no kernel covers (sort, cumsum, int64 on devices without it) run on numpy in between."""
    x = ma.array(np.random.default_rng(5).standard_normal((4, 33)).astype(np.float32))
    assert_backends_agree(device, lambda: ma.sort(ma.exp(x), axis=1) * 2 + ma.cumsum(x, axis=0), "mixed")
    assert_backends_agree(device, lambda: ma.sum((x * 100).astype(ma.int64), axis=1) + 1, "int64")


def check_outputs_stay_on_device(device):
    ex = executor(device)
    x = ma.array(np.arange(1000, dtype=np.float32))
    y = on(device, lambda: x * 2)
    uploads = ex.rt.uploads
    z = on(device, lambda: y + x)
    assert ex.rt.uploads == uploads, "inputs already on the device were uploaded again"
    np.testing.assert_array_equal(np.array(z), np.arange(1000, dtype=np.float32) * 3)
    key = id(y._data)
    del y, z
    assert key not in ex.resident.buffers, "a dead array's device buffer was kept"


# --- OpenCL ----------------------------------------------------------------------------------------

def _skip_reason():
    try:
        from mlxarm.backend.opencl import available
    except ImportError as e:  # noqa: F841
        return f"the OpenCL backend cannot be imported ({e})"
    return available()


_REASON = _skip_reason()
if _REASON:
    print(f"skipping the OpenCL backend tests: {_REASON}")
needs_opencl = pytest.mark.skipif(bool(_REASON), reason=f"OpenCL unavailable: {_REASON}")
DEVICE = "opencl"


@needs_opencl
@pytest.mark.parametrize("prim,d", elementwise_cases("unary"), ids=lambda v: getattr(v, "name", None))
def test_unary_matches_numpy(prim, d):
    check_unary(DEVICE, prim, d)


@needs_opencl
@pytest.mark.parametrize("prim,d", elementwise_cases("binary"), ids=lambda v: getattr(v, "name", None))
def test_binary_matches_numpy(prim, d):
    check_binary(DEVICE, prim, d)


@needs_opencl
@pytest.mark.parametrize("name", ["sum", "prod", "max", "min"])
@pytest.mark.parametrize("d", REDUCE_DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("axis", [None, (0, 2)], ids=str)
def test_reduction_matches_numpy(name, d, axis):
    check_reduction(DEVICE, name, d, axis)


@needs_opencl
def test_edge_values():
    check_edge_values(DEVICE)


@needs_opencl
def test_casts():
    check_casts(DEVICE)


@needs_opencl
def test_views_read_in_place():
    check_views(DEVICE)


@needs_opencl
def test_numpy_fallback_between_kernels():
    check_mixed_with_numpy_steps(DEVICE)


@needs_opencl
def test_outputs_stay_on_device():
    check_outputs_stay_on_device(DEVICE)


@needs_opencl
@settings(max_examples=15, deadline=None)
@given(graphs(max_steps=6))
def test_random_graphs_agree(recipe):
    assert_backends_agree(DEVICE, lambda: build_graph(*recipe), repr(recipe))


@needs_opencl
def test_program_cache_hit(tmp_path):
    from mlxarm.backend.cache import ObjectCache
    from mlxarm.backend.opencl import OpenCLExecutor, OpenCLRuntime

    first = OpenCLExecutor(OpenCLRuntime(ObjectCache(str(tmp_path))))
    x = ma.array(np.arange(10, dtype=np.float32))
    y = x * 3 + 1
    first.run([__import__("weakref").ref(n) for n in [y]])
    assert first.rt.compiled == 1
    second = OpenCLExecutor(OpenCLRuntime(ObjectCache(str(tmp_path))))
    z = x * 3 + 1
    second.run([__import__("weakref").ref(z)])
    assert second.rt.compiled == 0 and second.rt.cache.hits == 1
    np.testing.assert_array_equal(np.array(z), np.arange(10, dtype=np.float32) * 3 + 1)


@needs_opencl
def test_device_info_names_the_device():
    old = os.environ.get("MLXARM_DEVICE")
    os.environ["MLXARM_DEVICE"] = DEVICE
    try:
        info = ma.device_info()
    finally:
        os.environ.pop("MLXARM_DEVICE") if old is None else os.environ.__setitem__("MLXARM_DEVICE", old)
    assert info["backend"] == "opencl" and info["device_name"] and "max_work_group_size" in info
