"""The op-by-dtype matrix, generated from the registry.

For every elementwise primitive and every dtype it accepts, hypothesis draws shapes (0-d, empty,
broadcasting pairs) and values in the primitive's domain, and the op must agree with (a) its numpy
reference applied directly (checks the lazy graph's promotion, casting and broadcasting plumbing) and
(b) real MLX (dtype and shape exactly, values within the dtype's tolerance). Primitives that publish
``extra["cases"]`` are run case by case against MLX. Dtypes a primitive does not accept must raise.
"""
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import mlxarm.core as ma
from mlxarm.backend import executor_for
from mlxarm.core import dtypes as dt
from mlxarm.core.errors import DtypeError
from mlxarm.core.registry import API

from _matrix import (DTYPES, assert_same_array, case_primitives, check_case, elementwise_primitives,
                     mlx_dtype, tolerance, values)

# No shrinking: a failure reports its first example, which keeps a broken op from stalling the matrix.
MATRIX = settings(max_examples=6, deadline=None, derandomize=True, database=None,
                  phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck))

UNARY = elementwise_primitives("unary")
BINARY = elementwise_primitives("binary")
CASES = case_primitives()

SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)
PAIRS = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=0, max_side=4)
SEEDS = st.integers(0, 2**32 - 1)


def _grid(prims, supported=True):
    out = []
    for p in prims:
        for d in DTYPES:
            if (d in p.dtypes) == supported:
                out.append(pytest.param(p, d, id=f"{p.name}-{d.name}"))
    return out


def _fn(prim):
    return API[("core", prim.name)].fn


def _mlx_fn(mx, prim):
    if not hasattr(mx, prim.name):
        pytest.skip(f"mlx.core has no {prim.name}")
    return getattr(mx, prim.name)


def _unary_dtypes(prim, d):
    """(compute dtype of the operand, output dtype) from the primitive's declared output rule."""
    rule = prim.extra.get("out", "same")
    compute = dt.float32 if rule == "float" and d.kind in "biu" else d
    out = {"same": d, "bool": dt.bool_, "float": compute,
           "realpart": dt.float32 if d is dt.complex64 else d}[rule]
    return compute, out


def _binary_dtypes(prim, d):
    rule = prim.extra.get("out", "same")
    compute = d
    if prim.name in ("left_shift", "right_shift") and d is dt.bool_:
        compute = dt.uint8
    if rule == "float" and compute.kind in "biu":
        compute = dt.float32
    return compute, (dt.bool_ if rule == "bool" else compute)


def _reference(prim, node, compute, out, *xs):
    """The reference called directly on the operands cast to the compute dtype."""
    ins = [x.astype(compute.np_compute) for x in xs]
    if not prim.compute:
        ins = [dt.to_storage(x, compute) for x in ins]
    params = node._params if node._prim is prim else None
    with np.errstate(all="ignore"):
        res = np.asarray(prim.ref(params, *ins))
    return dt.to_compute(dt.to_storage(res, out) if prim.compute else res, out)


def _check_against_reference(prim, ours, compute, out, *xs):
    expected = _reference(prim, ours, compute, out, *xs)
    assert ours.dtype is out, f"{prim.name}: dtype {ours.dtype}, declared rule gives {out}"
    got = np.array(ours)
    assert got.shape == expected.shape
    # The numpy executor is the reference itself; a compiling executor may differ by rounding.
    rtol, atol = (0, 0) if executor_for(None).name == "numpy" else tolerance(out)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, equal_nan=True)


# --- (a) against the numpy references -------------------------------------------------------------

@pytest.mark.parametrize("prim,d", _grid(UNARY))
@MATRIX
@given(shape=SHAPES, seed=SEEDS)
def test_unary_matches_reference(prim, d, shape, seed):
    x = values(np.random.default_rng(seed), d, shape, prim.domain)
    compute, out = _unary_dtypes(prim, d)
    ours = _fn(prim)(ma.array(x, dtype=d))
    _check_against_reference(prim, ours, compute, out, x)


@pytest.mark.parametrize("prim,d", _grid(BINARY))
@MATRIX
@given(shapes=PAIRS, seed=SEEDS)
def test_binary_matches_reference(prim, d, shapes, seed):
    rng = np.random.default_rng(seed)
    sa, sb = shapes.input_shapes
    x, y = values(rng, d, sa, prim.domain), values(rng, d, sb, prim.domain)
    compute, out = _binary_dtypes(prim, d)
    ours = _fn(prim)(ma.array(x, dtype=d), ma.array(y, dtype=d))
    assert ours.shape == shapes.result_shape
    _check_against_reference(prim, ours, compute, out, x, y)


# --- (b) against MLX ----------------------------------------------------------------------------------

@pytest.mark.mlx
@pytest.mark.parametrize("prim,d", _grid(UNARY))
@MATRIX
@given(shape=SHAPES, seed=SEEDS)
def test_unary_matches_mlx(prim, d, shape, seed):
    mx = pytest.importorskip("mlx.core")
    x = values(np.random.default_rng(seed), d, shape, prim.domain)
    theirs = _mlx_fn(mx, prim)(mx.array(x, dtype=mlx_dtype(d)))
    ours = _fn(prim)(ma.array(x, dtype=d))
    assert_same_array(ours, theirs, f"{prim.name}({d.name}{list(shape)})")


@pytest.mark.mlx
@pytest.mark.parametrize("prim,d", _grid(BINARY))
@MATRIX
@given(shapes=PAIRS, seed=SEEDS)
def test_binary_matches_mlx(prim, d, shapes, seed):
    mx = pytest.importorskip("mlx.core")
    rng = np.random.default_rng(seed)
    sa, sb = shapes.input_shapes
    x, y = values(rng, d, sa, prim.domain), values(rng, d, sb, prim.domain)
    md = mlx_dtype(d)
    theirs = _mlx_fn(mx, prim)(mx.array(x, dtype=md), mx.array(y, dtype=md))
    ours = _fn(prim)(ma.array(x, dtype=d), ma.array(y, dtype=d))
    assert_same_array(ours, theirs, f"{prim.name}({d.name}{list(sa)}, {d.name}{list(sb)})")


@pytest.mark.mlx
@pytest.mark.parametrize("prim,d", _grid(CASES) or [pytest.param(None, None, marks=pytest.mark.skip(
    reason="no primitive publishes cases"))])
def test_cases_match_mlx(prim, d):
    pytest.importorskip("mlx.core")
    cases = prim.extra["cases"]
    for seed in (0, 1):
        rng = np.random.default_rng(zlib.crc32(f"{prim.name}/{d.name}/{seed}".encode()))
        for name, args, kwargs in cases(rng, d):
            check_case(name, args, kwargs, d, beyond_mlx_cpu=d.name in prim.extra.get("beyond_mlx_cpu", ()))


# --- dtypes a primitive does not accept -----------------------------------------------------------------

def _operands(prim, d, lib):
    x = np.ones((2,), dtype=d.np_compute)
    make = (lambda v: lib.array(v, dtype=mlx_dtype(d))) if lib is not ma else (lambda v: ma.array(v, dtype=d))
    return [make(x)] * (1 if prim.kind == "unary" else 2)


@pytest.mark.parametrize("prim,d", _grid(UNARY + BINARY, supported=False))
def test_unsupported_dtype_raises(prim, d):
    with pytest.raises(DtypeError):
        ma.eval(_fn(prim)(*_operands(prim, d, ma)))


@pytest.mark.mlx
@pytest.mark.parametrize("prim,d", _grid(UNARY + BINARY, supported=False))
def test_unsupported_dtype_raises_in_mlx(prim, d):
    mx = pytest.importorskip("mlx.core")
    with pytest.raises(Exception) as info:
        mx.eval(_mlx_fn(mx, prim)(*_operands(prim, d, mx)))
    with pytest.raises(type(info.value)):
        ma.eval(_fn(prim)(*_operands(prim, d, ma)))


# --- astype: every (source, target) pair ------------------------------------------------------------------

@pytest.mark.mlx
@pytest.mark.parametrize("src", DTYPES, ids=lambda d: d.name)
def test_astype_every_pair_matches_mlx(src):
    mx = pytest.importorskip("mlx.core")
    rng = np.random.default_rng(src.index)
    x = values(rng, src, (3, 4), (-100, 100) if src.kind != "u" else (0, 200))
    if src.kind == "f":
        x.flat[:4] = [0.5, -0.0, 2.75, -3.5]  # exact halves and signed zero go through each target
    for dst in DTYPES:
        theirs = mx.array(x, dtype=mlx_dtype(src)).astype(mlx_dtype(dst))
        ours = ma.array(x, dtype=src).astype(dst)
        assert_same_array(ours, theirs, f"astype {src.name} -> {dst.name}")


def _recast(obj, src, d):
    """Case arguments made for dtype ``src`` with their ``src`` arrays turned into ``d`` values."""
    if isinstance(obj, np.ndarray) and obj.dtype == src.np_compute:
        return obj != 0 if d.kind == "b" else np.real(obj).astype(d.np_compute) if d.kind != "c" \
            else obj.astype(d.np_compute)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_recast(o, src, d) for o in obj)
    if isinstance(obj, dict):
        return {k: _recast(v, src, d) for k, v in obj.items()}
    return obj


@pytest.mark.mlx
@pytest.mark.parametrize("prim,d", _grid(CASES, supported=False) or [pytest.param(None, None, marks=pytest.mark.skip(
    reason="no primitive publishes cases"))])
def test_cases_unsupported_dtype_like_mlx(prim, d):
    """A dtype the primitive does not declare: where MLX raises, ours raises the same type."""
    pytest.importorskip("mlx.core")
    src = dt.float32 if dt.float32 in prim.dtypes else prim.dtypes[0]
    rng = np.random.default_rng(zlib.crc32(prim.name.encode()))
    for name, args, kwargs in prim.extra["cases"](rng, src)[:3]:
        check_case(name, _recast(args, src, d), _recast(kwargs, src, d), d)
