"""softmax, depends and the ``fast`` kernels (rms_norm, layer_norm, rope, attention), against real MLX."""
import numpy as np
import pytest

import mlxarm.core as ma
from mlxarm.core.ops.linalg import sample
from mlxarm.core.registry import PRIMITIVES
from test_linalg import check, rnd

mx = pytest.importorskip("mlx.core")

DTYPES = ["float16", "bfloat16", "float32", "float64", "int32", "uint8", "bool", "complex64"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("prim", ["softmax", "depends", "rms_norm", "layer_norm", "rope",
                                  "scaled_dot_product_attention"])
def test_primitive_cases(prim, dtype):
    d = getattr(ma, dtype if dtype != "bool" else "bool_")
    for name, args, kwargs in PRIMITIVES[prim].extra["cases"](np.random.default_rng(2), d):
        check(name, args, kwargs, dtype, tol={"float16": (5e-3, 5e-3), "bfloat16": (3e-2, 3e-2)}.get(dtype))


@pytest.mark.parametrize("shape,axis", [((2, 3), None), ((2, 3), 0), ((2, 3), -1), ((1, 3), None),
                                        ((3, 1), (0, 1)), ((2, 1, 3), (0, 1)), ((2, 3), 2), ((2, 3), [0, 0]),
                                        ((0, 3), 0), ((), None)])
@pytest.mark.parametrize("dtype", ["int32", "bool", "float16", "float32"])
def test_softmax_paths(shape, axis, dtype):
    check("softmax", (rnd(shape, dtype, scale=2.0),), {"axis": axis}, dtype,
          tol=(5e-3, 5e-3) if dtype == "float16" else None)


def test_softmax_half_not_precise_rounds_in_half():
    x = rnd((4, 33), "float32", 3, scale=4.0)
    for dtype in ("float16", "bfloat16"):
        for precise in (False, True):
            ours = ma.softmax(ma.array(x, dtype=getattr(ma, dtype)), axis=-1, precise=precise)
            theirs = mx.softmax(mx.array(x, dtype=getattr(mx, dtype)), axis=-1, precise=precise)
            np.testing.assert_allclose(np.array(ours), np.array(theirs.astype(mx.float32)),
                                       atol=1e-3 if dtype == "float16" else 8e-3)


def test_depends_returns_inputs():
    a, b = ma.array([1.0, 2.0]), ma.array([3.0])
    out = ma.depends(a, b)
    assert any(x is b for x in out._inputs)
    assert isinstance(out, ma.array) and out.tolist() == [1.0, 2.0]
    outs = ma.depends([a, a * 2], [b])
    assert isinstance(outs, list) and [o.tolist() for o in outs] == [[1.0, 2.0], [2.0, 4.0]]


# --- fast ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_norms_broadcast_batches(dtype):
    tol = {"float16": (5e-3, 5e-3), "bfloat16": (3e-2, 3e-2)}.get(dtype)
    x, w, b = rnd((2, 3, 4, 16), dtype), rnd((16,), dtype, 1), rnd((16,), dtype, 2)
    check("fast.rms_norm", (x, w, 1e-6), dtype=dtype, tol=tol)
    check("fast.layer_norm", (x, w, b, 1e-6), dtype=dtype, tol=tol)
    check("fast.layer_norm", (x, w, None, 1e-6), dtype=dtype, tol=tol)
    check("fast.rms_norm", (x, rnd((8,), dtype), 1e-6), dtype=dtype)  # wrong weight size


@pytest.mark.parametrize("xd,wd", [("bfloat16", "float16"), ("float16", "float32"), ("bfloat16", "float32"),
                                   ("float32", "float16"), ("int32", "float32"), ("int32", "int32")])
def test_norms_promote_x_with_weight(xd, wd):
    """A norm's output dtype is x's promoted with its weight (an mxfp4 model's bfloat16 embeddings
    under float16 norm weights compute in float32); a bias alone leaves x's dtype."""
    x, w, b = rnd((3, 16), xd, 5, scale=3.0), rnd((16,), wd, 6), rnd((16,), wd, 7)

    def run(lib, fn, *args):
        args = [None if a is None else lib.array(a[0], dtype=getattr(lib, a[1])) for a in args]
        return getattr(lib.fast, fn)(*args, 1e-5)

    for fn, args in (("rms_norm", [(x, xd), (w, wd)]), ("layer_norm", [(x, xd), (w, wd), (b, wd)]),
                     ("layer_norm", [(x, xd), (w, wd), None]), ("layer_norm", [(x, xd), None, (b, wd)])):
        try:
            theirs = run(mx, fn, *args)
        except ValueError:
            with pytest.raises(ValueError):
                run(ma, fn, *args)
            continue
        ours = run(ma, fn, *args)
        assert str(ours.dtype) == str(theirs.dtype), (fn, ours.dtype, theirs.dtype)
        half = "float16" in (xd, wd) or "bfloat16" in (xd, wd)
        np.testing.assert_allclose(np.array(ours.astype(ma.float32)), np.array(theirs.astype(mx.float32)),
                                   rtol=3e-2 if half else 1e-5, atol=3e-2 if half else 1e-5)


@pytest.mark.parametrize("traditional", [False, True])
@pytest.mark.parametrize("dims,shape", [(8, (2, 3, 5, 8)), (4, (1, 6, 8)), (8, (4, 8))])
def test_rope(traditional, dims, shape):
    x = rnd(shape, "float32", 4)
    for offset in (0, 5):
        check("fast.rope", (x, dims), {"traditional": traditional, "base": 10000.0, "scale": 1.0,
                                      "offset": offset}, tol=(1e-4, 1e-4))


def test_rope_array_offset_and_errors():
    x = rnd((2, 5, 8), "float32", 4)
    kw = {"traditional": False, "base": 10000.0, "scale": 1.0}
    ours = ma.fast.rope(ma.array(x), 8, offset=ma.array(3), **kw)
    theirs = mx.fast.rope(mx.array(x), 8, offset=mx.array(3), **kw)
    np.testing.assert_allclose(np.array(ours), np.array(theirs), atol=1e-4)
    check("fast.rope", (x, 7), dict(kw, offset=0))
    check("fast.rope", (x, 16), dict(kw, offset=0))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("mask", [None, "causal", "bool", "additive"])
@pytest.mark.parametrize("hq,hk,L,S", [(4, 4, 5, 5), (4, 2, 3, 7), (8, 1, 1, 6)])
def test_sdpa(dtype, mask, hq, hk, L, S):
    rng = np.random.default_rng(7)
    d = getattr(ma, dtype)
    q, k, v = sample(rng, d, (2, hq, L, 16)), sample(rng, d, (2, hk, S, 16)), sample(rng, d, (2, hk, S, 16))
    kw = {"scale": 0.25}
    if mask == "causal":
        kw["mask"] = "causal"
    elif mask == "bool":
        kw["mask"] = (rng.random((L, S)) < 0.7) | (np.arange(S)[None, :] == 0)
    elif mask == "additive":
        kw["mask"] = sample(rng, d, (2, 1, L, S))
    check("fast.scaled_dot_product_attention", (q, k, v), kw, dtype,
          tol={"float16": (5e-3, 5e-3), "bfloat16": (3e-2, 3e-2), "float32": (1e-5, 1e-5)}[dtype])
