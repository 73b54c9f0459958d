"""The OpenCL executor (pyopencl, on PoCL here) against the numpy executor: the elementwise and reduction
op matrix, casts, views, random graphs, buffers kept on the device, and the program cache.

The helpers at the top (``on``, ``assert_backends_agree``, the op lists and the graph recipes) are
shared with the Vulkan tests, which run the same matrix on their executor."""
import os

import numpy as np
import pytest
from hypothesis import given, settings

import mlxarm.core as ma
from _backends import skip_reason
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


# (reduction, dtype, layouts): every accumulator type of the two-stage form (float, signed, unsigned,
# narrow, bool); the layouts are a full reduction, one over a strided view and one over two axes.
LARGE_REDUCTIONS = [("sum", dt.float32, ("all", "view")), ("sum", dt.float32, ("axes",)), ("max", dt.float32, ("all",)),
                    ("min", dt.float16, ("all",)), ("sum", dt.bfloat16, ("all",)),
                    ("sum", dt.int32, ("all",)), ("prod", dt.int32, ("all",)), ("max", dt.uint8, ("all",)),
                    ("min", dt.int16, ("all",)), ("all", dt.bool_, ("all",)), ("any", dt.bool_, ("all",))]
LARGE_SHAPE = (5, 3, 20011)


def check_large_reduction(device, name, d, layouts):
    """Reductions over many elements into few outputs, which run as two stages (many workgroups per
    output, then a combining kernel)."""
    from mlxarm.backend.gpu_common import reduction_parts
    from mlxarm.codegen import lower

    rng = np.random.default_rng(6)
    # Float sums stay small so float16/bfloat16 results stay finite; integer products wrap the same
    # way in any order.
    domain = (0.0, 0.2) if d.kind == "f" else None
    x = ma.array(values(rng, d, LARGE_SHAPE, domain), dtype=d)
    if name in ("all", "any"):
        x = x != 0 if name == "all" else x == 0  # mostly true / mostly false: the answer rests on few
    fn = getattr(ma, name)
    ex = executor(device)
    kernel, _, _ = lower.lower(fn(x), 1)
    assert reduction_parts(kernel, ex.rt.workgroup, getattr(ex.rt, "parallel_groups", ex.rt.max_groups)) > 1
    cases = {"all": lambda: fn(x), "view": lambda: fn(x[:, ::-2, ::3]), "axes": lambda: fn(x, axis=(0, 2))}
    if d.kind == "f" and name == "sum":
        # Float sums: the order of the additions is the device's; compare with an exact sum at the
        # output's precision.
        ref = np.array(x.astype(ma.float32)).astype(np.float64)
        exact = {"all": ref.sum(), "view": ref[:, ::-2, ::3].sum(), "axes": ref.sum(axis=(0, 2))}
        for layout in layouts:
            got = on(device, cases[layout])
            assert got.dtype == d
            assert all(kind == "kernel" for kind, _ in ex.last_plan), ex.last_plan
            np.testing.assert_allclose(np.array(got.astype(ma.float32)), exact[layout], rtol=tolerance(d)[0] + 1e-5,
                                       err_msg=layout)
        return
    for layout in layouts:
        assert_backends_agree(device, cases[layout], f"{name}[{d.name}] {layout}")
        assert ex.last_plan and all(kind == "kernel" for kind, _ in ex.last_plan), ex.last_plan


def check_reduction_special_values(device):
    """NaN wins every float reduction (numpy's rule) and infinities propagate, wherever they sit in a
    two-stage reduction."""
    rng = np.random.default_rng(7)
    base = rng.uniform(-1, 1, LARGE_SHAPE).astype(np.float32).reshape(-1)
    for pos, specials in ((77777, [np.nan]), (5, [np.inf]), (299999, [-np.inf]), (3, [np.inf, -np.inf]),
                          (150000, [np.nan, np.inf])):
        x = base.copy()
        x[pos:pos + len(specials)] = specials
        x = ma.array(x.reshape(LARGE_SHAPE))
        cases = [(name, x) for name in ("sum", "max", "min")] + [("min", x.astype(ma.float16))]
        for name, a in cases:
            with np.errstate(all="ignore"):
                assert_backends_agree(device, lambda: getattr(ma, name)(a), f"{name}[{a.dtype}] {specials}@{pos}")


def check_matmul(device):
    """The tiled matmul template: sizes that are not multiples of the tile, a K shorter than one
    K step, batches (broadcast too), transposed and strided operands read in place, empty operands.
    Small integer values make every product and sum exact, so the answers must be identical."""
    rng = np.random.default_rng(8)

    def ints(*shape):
        return ma.array(rng.integers(-4, 5, shape).astype(np.float32))

    a, b = ints(37, 29), ints(29, 45)
    at, bt = ints(29, 37), ints(45, 29)
    a3, b2 = ints(3, 70, 50), ints(50, 33)
    a4, b3 = ints(2, 1, 5, 7), ints(3, 7, 4)
    s4, s2 = ints(2, 3, 40, 20), ints(20, 9)
    e1, e2, e3 = ints(0, 4), ints(4, 3), ints(3, 0)
    cases = {"37x29 @ 29x45": lambda: a @ b, "batched, B broadcast": lambda: a3 @ b2,
             "transposed operands": lambda: at.T @ bt.T, "broadcast batch dims": lambda: a4 @ b3,
             "strided view": lambda: s4[:, ::-1, ::2] @ s2, "M = 0": lambda: e1 @ e2, "K = 0": lambda: e3 @ e1,
             "with producers and consumers": lambda: ma.sum((a * 2) @ b, axis=0) + 1}
    ex = executor(device)
    for context, fn in cases.items():
        ref = on("numpy", fn)
        got = on(device, fn)
        assert got.dtype == ref.dtype and got.shape == ref.shape, context
        np.testing.assert_array_equal(np.array(got), np.array(ref), err_msg=context)
        if context == "37x29 @ 29x45":
            assert any(step[1].startswith("gemm_float32") for step in ex.last_plan), (context, ex.last_plan)
    # float16 and bfloat16 storage: exact float32 sums, rounded once to the dtype as the reference does.
    for d in (ma.float16, ma.bfloat16):
        ah, bh = a.astype(d), b.astype(d)
        cases = {"": lambda: ah @ bh, " batched": lambda: ma.stack([ah, ah * 2]) @ bh}
        if d == ma.float16:
            cases[" transposed"] = lambda: bh.T @ ah.T
        for context, fn in cases.items():
            ref, got = on("numpy", fn), on(device, fn)
            assert any(step[1].startswith(f"gemm_{d.name}") for step in ex.last_plan), (d.name, context,
                                                                                        ex.last_plan)
            assert got.dtype == d and got.shape == ref.shape
            np.testing.assert_array_equal(np.array(got.astype(ma.float32)), np.array(ref.astype(ma.float32)),
                                          err_msg=f"{d}{context}")
    # Rounded values: products and sums are rounded in the kernel's own order.
    x, y = ma.array(rng.standard_normal((3, 65, 130)).astype(np.float32)), ma.array(
        rng.standard_normal((130, 67)).astype(np.float32))
    got, ref = np.array(on(device, lambda: x @ y)), np.array(on("numpy", lambda: x @ y))
    bound = np.abs(np.array(x)) @ np.abs(np.array(y)) * 130 * np.finfo(np.float32).eps
    assert np.all(np.abs(got - ref) <= bound), f"rounded float32: largest excess {np.max(np.abs(got - ref) - bound)}"


def _ran_template(device, prefix):
    return any(step[0] == "kernel" and step[1].startswith(prefix) for step in executor(device).last_plan)


def check_row_kernels(device):
    """softmax, rms_norm and layer_norm over the last axis as one workgroup per row: rows longer than a
    workgroup and not a multiple of it, a transposed input, a strided weight, weight and bias present
    or not, and rows holding NaN or -inf."""
    rng = np.random.default_rng(9)

    def arr(*shape):
        return ma.array((rng.standard_normal(shape) * 3).astype(np.float32))

    x, w, b, xt = arr(5, 3, 300), arr(300), arr(300), arr(300, 7)
    special = np.array(rng.standard_normal((4, 70)), np.float32)
    special[0, 5], special[1, :3], special[2, :] = np.nan, -np.inf, -np.inf
    s = ma.array(special)
    cases = {"softmax": lambda: ma.softmax(x, axis=-1), "softmax of a transpose": lambda: ma.softmax(xt.T, axis=-1),
             "softmax with nan and -inf": lambda: ma.softmax(s, axis=-1),
             "rms_norm": lambda: ma.fast.rms_norm(x, w, 1e-5),
             "rms_norm, strided weight": lambda: ma.fast.rms_norm(x, w[::-1], 1e-5),
             "layer_norm": lambda: ma.fast.layer_norm(x, w, b, 1e-5),
             "layer_norm, bias only": lambda: ma.fast.layer_norm(x, None, b, 1e-5),
             "layer_norm, neither": lambda: ma.fast.layer_norm(xt.T, None, None, 1e-5)}
    for context, fn in cases.items():
        with np.errstate(invalid="ignore"):
            assert_backends_agree(device, fn, context)
        assert _ran_template(device, context.split()[0].rstrip(",")), (context, executor(device).last_plan)


def check_quantized_matvec(device):
    """Affine quantized matvec straight from the packed words: bits 2, 4 and 8, groups of 32, 64 and
    128, a number of outputs that does not fill the last workgroup, a transposed x and a 1-D x. The
    kernel sums in its own order (``scale * sum(x * q) + bias * sum(x)`` per word), so the answer is
    held to the rounding bound of a float32 dot product of that length."""
    rng = np.random.default_rng(10)
    k, n = 256, 97
    for bits in (2, 4, 8):
        for group in (32, 64, 128):
            wq, scales, biases = ma.quantize(ma.array(rng.standard_normal((n, k)).astype(np.float32)),
                                             group_size=group, bits=bits)
            dense = np.array(ma.dequantize(wq, scales, biases, group_size=group, bits=bits))
            size = np.abs(dense) + 2 * np.repeat(np.abs(np.array(biases)), group, axis=1)
            for x in (ma.array(rng.standard_normal((3, k)).astype(np.float32)),
                      ma.array(rng.standard_normal((k, 2)).astype(np.float32)).T,
                      ma.array(rng.standard_normal(k).astype(np.float32))):
                def fn():
                    return ma.quantized_matmul(x, wq, scales, biases, transpose=True, group_size=group, bits=bits)
                got, ref = on(device, fn), on("numpy", fn)
                context = f"bits={bits} group={group} x{x.shape}"
                assert got.dtype == ref.dtype and got.shape == ref.shape, context
                assert _ran_template(device, f"qmv_b{bits}"), (context, executor(device).last_plan)
                bound = (np.abs(np.array(x)) @ size.T) * (k + 2) * np.finfo(np.float32).eps
                assert np.all(np.abs(np.array(got) - np.array(ref)) <= bound), context


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

_REASON = skip_reason("opencl")
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
@pytest.mark.parametrize("name,d,layouts", LARGE_REDUCTIONS, ids=lambda v: getattr(v, "name", None))
def test_large_reduction_in_two_stages(name, d, layouts):
    check_large_reduction(DEVICE, name, d, layouts)


@needs_opencl
def test_matmul_template():
    check_matmul(DEVICE)


@needs_opencl
def test_row_kernels():
    check_row_kernels(DEVICE)


@needs_opencl
def test_quantized_matvec():
    check_quantized_matvec(DEVICE)


@needs_opencl
def test_reduction_special_values():
    check_reduction_special_values(DEVICE)


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
def test_gpu_is_a_real_opencl_device(monkeypatch):
    """An OpenCL GPU can be ``mx.gpu`` (Vulkan goes first where both drive one); PoCL's CPU device
    runs only when MLXARM_DEVICE names it."""
    import pyopencl as cl

    from mlxarm.backend import available_gpu_backend

    monkeypatch.delenv("MLXARM_DEVICE", raising=False)
    if any(d.type & cl.device_type.GPU for p in cl.get_platforms() for d in p.get_devices()):
        assert available_gpu_backend() in ("vulkan", "opencl")
    else:
        assert available_gpu_backend() != "opencl"


@needs_opencl
def test_device_info_names_the_device():
    old = os.environ.get("MLXARM_DEVICE")
    os.environ["MLXARM_DEVICE"] = DEVICE
    try:
        info = ma.device_info()
    finally:
        os.environ.pop("MLXARM_DEVICE") if old is None else os.environ.__setitem__("MLXARM_DEVICE", old)
    assert info["backend"] == "opencl" and info["device_name"] and "max_work_group_size" in info
