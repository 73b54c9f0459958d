"""Shared machinery of the generated tests: input generation, conversion to both libraries, tolerances
and comparison of results against the numpy references and against real MLX.

Everything is driven by the registry, so a primitive registered anywhere is tested without edits here.
"""
from __future__ import annotations

import inspect

import os

import numpy as np
import pytest

import mlxarm.core as ma
from mlxarm.core import dtypes as dt
from mlxarm.core.registry import API, PRIMITIVES

try:
    import mlx.core as mx
except ImportError:  # numpy-only environments run the tests marked "not mlx"
    mx = None

DTYPES = list(dt.ALL)
DTYPE_NAMES = [d.name for d in DTYPES]

# (rtol, atol) per dtype. Integers and booleans must match exactly. Floating tolerances are a few ulps
# of the type (float16 eps ~1e-3, bfloat16 eps ~8e-3) because MLX evaluates transcendental functions
# with its own polynomial approximations (e.g. its fast exp) and accumulates in its own order, so
# bit-exact agreement with numpy is not a property either side promises. float64 gets float32-like
# absolute slack: MLX's CPU backend evaluates several float64 functions (sin, exp, erf, ...) with
# float32-accurate approximations (errors up to ~3e-7).
TOLERANCES = {
    "b": (0.0, 0.0),
    "u": (0.0, 0.0),
    "i": (0.0, 0.0),
    "float16": (2e-3, 2e-3),
    "bfloat16": (1.6e-2, 1.6e-2),
    "float32": (2e-5, 2e-6),
    "float64": (1e-6, 1e-6),
    "complex64": (2e-5, 2e-6),
}

def tolerance(d: dt.Dtype) -> tuple:
    return TOLERANCES.get(d.name) or TOLERANCES[d.kind]


def mlx_dtype(d: dt.Dtype):
    return getattr(mx, d.name if d.name != "bool" else "bool_")


def ours_dtype(name: str) -> dt.Dtype:
    return getattr(ma, name if name != "bool" else "bool_")


# --- values --------------------------------------------------------------------------------------

def _int_range(d: dt.Dtype, domain) -> tuple:
    info = np.iinfo(d.np_storage)
    if domain is None:
        lo, hi = (-10, 10) if d.kind == "i" else (0, 20)
    else:
        lo = int(np.ceil(max(domain[0], -1e6)))
        hi = int(np.floor(min(domain[1], 1e6)))
        if hi - lo > 40:  # keep integer products and powers inside every integer type
            hi = lo + 40
    return max(lo, int(info.min)), min(hi, int(info.max))


def values(rng: np.random.Generator, d: dt.Dtype, shape: tuple, domain=None) -> np.ndarray:
    """Random values of dtype ``d`` in its compute representation (float32 for bfloat16)."""
    if d.kind == "b":
        return rng.random(shape) < 0.5
    if d.kind in "iu":
        lo, hi = _int_range(d, domain)
        return rng.integers(lo, hi + 1, size=shape).astype(d.np_storage)
    lo, hi = domain if domain is not None else (-10.0, 10.0)
    lo, hi = max(lo, -1e4), min(hi, 1e4)
    x = rng.uniform(lo, hi, size=shape)
    if d.kind == "c":
        x = x + 1j * rng.uniform(lo, hi, size=shape)
    # Values exactly representable in the type, so both libraries start from identical inputs.
    return to_values(ma.array(x.astype(d.np_compute), dtype=d))


def to_values(a) -> np.ndarray:
    return np.array(a)


# --- conversion of call arguments ------------------------------------------------------------------

def convert_args(obj, d: dt.Dtype, lib, as_dtype: dt.Dtype | None = None):
    """numpy arrays become arrays of ``lib``: of dtype ``d`` (or ``as_dtype``) when they hold ``d``'s
    compute representation, otherwise of the dtype ``lib.array`` infers (index arrays, masks...)."""
    if isinstance(obj, np.ndarray):
        if obj.dtype == d.np_compute or (d.kind == "b" and obj.dtype == np.bool_):
            want = as_dtype or d
            target = mlx_dtype(want) if lib is mx else want
            return lib.array(obj, dtype=target)
        return lib.array(obj)
    if isinstance(obj, list):
        return [convert_args(o, d, lib, as_dtype) for o in obj]
    if isinstance(obj, tuple):
        return tuple(convert_args(o, d, lib, as_dtype) for o in obj)
    if isinstance(obj, dict):
        return {k: convert_args(v, d, lib, as_dtype) for k, v in obj.items()}
    if isinstance(obj, dt.Dtype) and lib is mx:
        return mlx_dtype(obj)
    return obj


def resolve(lib, dotted: str):
    obj = lib
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


# --- results -------------------------------------------------------------------------------------

def mlx_numpy(a) -> np.ndarray:
    if a.dtype == mx.bfloat16:
        a = a.astype(mx.float32)
    return np.array(a)


def assert_same_array(ours, theirs, context: str = "") -> None:
    """dtype and shape equal, values within the dtype's tolerance (NaNs in the same places)."""
    assert isinstance(ours, ma.array), f"{context}: expected an array, got {type(ours).__name__}"
    assert str(ours.dtype) == str(theirs.dtype), \
        f"{context}: dtype {ours.dtype} vs MLX {theirs.dtype}"
    assert tuple(ours.shape) == tuple(theirs.shape), f"{context}: shape {ours.shape} vs MLX {theirs.shape}"
    rtol, atol = tolerance(ours.dtype)
    np.testing.assert_allclose(np.array(ours), mlx_numpy(theirs), rtol=rtol, atol=atol, equal_nan=True,
                               err_msg=context)


def assert_same_result(ours, theirs, context: str = "") -> None:
    """Results of one call in both libraries: arrays, sequences/dicts of them, or plain values."""
    if mx is not None and isinstance(theirs, mx.array):
        assert_same_array(ours, theirs, context)
    elif isinstance(theirs, (list, tuple)):
        assert isinstance(ours, (list, tuple)) and len(ours) == len(theirs), \
            f"{context}: {type(ours).__name__} of {len(ours) if hasattr(ours, '__len__') else '?'} " \
            f"vs MLX {type(theirs).__name__} of {len(theirs)}"
        assert type(ours) is type(theirs), f"{context}: {type(ours).__name__} vs MLX {type(theirs).__name__}"
        for i, (o, t) in enumerate(zip(ours, theirs)):
            assert_same_result(o, t, f"{context}[{i}]")
    elif isinstance(theirs, dict):
        assert set(ours) == set(theirs), f"{context}: keys {sorted(ours)} vs MLX {sorted(theirs)}"
        for k in theirs:
            assert_same_result(ours[k], theirs[k], f"{context}[{k!r}]")
    elif mx is not None and isinstance(theirs, mx.Dtype):
        assert str(ours) == str(theirs), f"{context}: {ours} vs MLX {theirs}"
    else:
        assert ours == theirs, f"{context}: {ours!r} vs MLX {theirs!r}"


def call_both(name: str, args, kwargs, d: dt.Dtype):
    """Call ``name`` in both libraries on the same inputs. Returns (ours, theirs, error of MLX)."""
    m_args, m_kwargs = convert_args(args, d, mx), convert_args(kwargs, d, mx)
    try:
        theirs = resolve(mx, name)(*m_args, **m_kwargs)
        mx.eval(theirs) if isinstance(theirs, (mx.array, list, tuple, dict)) else None
    except Exception as e:  # noqa: BLE001 - MLX's exception is the expectation
        return None, None, e
    o_args, o_kwargs = convert_args(args, d, ma), convert_args(kwargs, d, ma)
    ours = resolve(ma, name)(*o_args, **o_kwargs)
    return ours, theirs, None


def check_case(name: str, args, kwargs, d: dt.Dtype, beyond_mlx_cpu: bool = False) -> None:
    """One (api_name, args, kwargs) case against MLX; errors must match MLX's exception type.
    ``beyond_mlx_cpu``: MLX's CPU refuses ``d`` for this op where its GPUs (and mlxarm) take it; where
    it refuses, ours is compared with MLX's float32 result rounded to ``d``."""
    context = f"{name}({_describe(args)}, {kwargs}) [{d.name}]"
    ours, theirs, err = call_both(name, args, kwargs, d)
    if err is not None and beyond_mlx_cpu:
        f32 = ma.float32
        theirs = resolve(mx, name)(*convert_args(args, d, mx, f32), **convert_args(kwargs, d, mx, f32))
        ours = resolve(ma, name)(*convert_args(args, d, ma), **convert_args(kwargs, d, ma))
        assert ours.dtype == d, f"{context}: dtype {ours.dtype}"
        rtol, atol = (max(a, b) for a, b in zip(tolerance(d), tolerance(f32)))
        np.testing.assert_allclose(np.array(ours.astype(f32)), mlx_numpy(theirs), rtol=rtol, atol=atol,
                                   err_msg=context)
        return
    if err is not None:
        o_args, o_kwargs = convert_args(args, d, ma), convert_args(kwargs, d, ma)
        with pytest.raises(type(err)):
            ma.eval(resolve(ma, name)(*o_args, **o_kwargs))
        return
    assert_same_result(ours, theirs, context)


def _describe(args) -> str:
    parts = []
    for a in args:
        if isinstance(a, np.ndarray):
            parts.append(f"<{a.dtype} {a.shape}>")
        elif isinstance(a, (list, tuple)):
            parts.append("[" + _describe(a) + "]")
        else:
            parts.append(repr(a))
    return ", ".join(parts)


# --- the registry's contents -----------------------------------------------------------------------

def _positional_arity(fn) -> int:
    params = inspect.signature(fn).parameters.values()
    return sum(1 for p in params if p.default is p.empty
               and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def elementwise_primitives(kind: str) -> list:
    """Primitives of ``kind`` ('unary'/'binary') whose public function of the same name takes just
    the operands (those needing more arguments are covered through their cases or dedicated tests)."""
    arity = 1 if kind == "unary" else 2
    out = []
    for name, prim in PRIMITIVES.items():
        entry = API.get(("core", name))
        if prim.kind != kind or entry is None or "cases" in prim.extra:
            continue
        if _positional_arity(entry.fn) == arity:
            out.append(prim)
    return out


def case_primitives() -> list:
    return [p for p in PRIMITIVES.values() if "cases" in p.extra]


def assert_same_outcome(ours_fn, mlx_fn, context: str = "", message: bool = True) -> None:
    """Run both calls (evaluating array results). If MLX raises, ours must raise an instance of MLX's
    exception type and, when ``message`` and MLX's message is an "[op] ..." message, the same text.
    Otherwise the results must agree."""
    try:
        theirs = mlx_fn()
        if isinstance(theirs, (mx.array, list, tuple)):
            mx.eval(theirs)
    except Exception as e:  # noqa: BLE001 - MLX's exception is the expectation
        with pytest.raises(type(e)) as info:
            res = ours_fn()
            if isinstance(res, (ma.array, list, tuple)):
                ma.eval(res)
        if message and str(e).startswith("["):
            assert str(info.value) == str(e), f"{context}: message {str(info.value)!r} vs MLX {str(e)!r}"
        return
    assert_same_result(ours_fn(), theirs, context)


def on(device: str, fn):
    """``fn()`` recorded and evaluated with ``MLXARM_DEVICE=device`` (the executor is chosen per eval)."""
    old = os.environ.get("MLXARM_DEVICE")
    os.environ["MLXARM_DEVICE"] = device
    try:
        out = fn()
        ma.eval(out)
        return out
    finally:
        if old is None:
            del os.environ["MLXARM_DEVICE"]
        else:
            os.environ["MLXARM_DEVICE"] = old
