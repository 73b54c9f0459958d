"""tan, arcsin, arccos, arctan, tanh, arctan2 and power on the LLVM executor, which computes them inline
(polynomials, no libm): float32 against numpy over dense grids and every special value (signed zeros,
infinities, NaN, subnormals, tan's poles and huge arguments, arctan2's quadrants, C99's special cases
of pow), float16 and bfloat16 against the numpy executor, on each x86 vector width the host runs and on
aarch64 (NEON and SVE, under qemu), and the kernels' code calls no libm function for them. For sin,
cos and tan also their range reduction: octants converted a whole vector at a time, and lanes reduced
exactly (huge arguments) beside ordinary ones in one vector. The other inline functions at special
values, and the hyperbolic ones within 4 ulps on dense grids to the ends of their ranges."""
import os
import re
import shutil

import numpy as np
import pytest

pytest.importorskip("llvmlite", reason="the LLVM backend needs llvmlite")

import mlxarm.core as ma  # noqa: E402
from _matrix import on, tolerance  # noqa: E402
from mlxarm.backend.cache import ObjectCache  # noqa: E402
from mlxarm.codegen import lower, render_llvm, target  # noqa: E402
from mlxarm.core import dtypes as dt  # noqa: E402
from test_aarch64 import NEON, SVE, TOOLS, optimized_module, run_under_qemu  # noqa: E402

F32 = np.float32
UNARY = ("tan", "arcsin", "arccos", "arctan", "tanh")
BINARY = ("arctan2", "power")

SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1e-40, -1e-40, 1.1754944e-38,
                    -1.1754942e-38, 1e-30, -1e-30, 1e-7, -1e-7, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0, 3.0, -3.0,
                    1e30, -1e30, 3.4028235e38, -3.4028235e38], F32)


def _neighbours(x):
    x = np.asarray(x, F32)
    return np.concatenate([x, np.nextafter(x, F32(np.inf)), np.nextafter(x, F32(-np.inf))])


def _grid(n=6000):
    """Special values, magnitudes from the smallest subnormal to the largest float of both signs, and
    a dense stretch around zero."""
    mags = np.geomspace(1e-45, 3.4e38, n).astype(F32)
    return np.concatenate([SPECIAL, mags, -mags, np.linspace(-12, 12, n, dtype=F32)])


def _unary_inputs(name):
    x = _grid()
    if name == "tan":
        # float32's neighbours of multiples of pi/2 (the zeros and poles) up to past 8192, where the
        # reduction turns exact, a dense stretch around that point, and huge arguments
        k = np.arange(-6000, 6000)
        x = np.concatenate([x, _neighbours(k * (np.pi / 2)), np.linspace(8100, 8300, 2001, dtype=F32),
                            _neighbours([1e4, 1e6, 1.6e7, 1e20])])
    if name in ("arcsin", "arccos"):
        x = np.concatenate([x, np.linspace(-1.1, 1.1, 20001, dtype=F32), _neighbours([1, -1, 0.5, -0.5])])
    return x


def _binary_inputs(name):
    rng = np.random.default_rng(7)
    values = np.concatenate([SPECIAL, F32([0.25, -0.25, 0.33, 4, -4, 127, 128, -149, -150, 1e10, -1e10,
                                           16777215, 16777216, -16777215, 0.999999, 1.000001])])
    y, x = (a.ravel() for a in np.meshgrid(values, values))  # every special pair, in both roles
    n = 20000
    if name == "arctan2":
        # all four quadrants, magnitudes from subnormal to huge, and ratios near the octants' edges
        scale = lambda: np.exp(rng.uniform(-100, 85, n))  # noqa: E731
        ry = rng.standard_normal(n) * scale()
        rx = rng.standard_normal(n) * scale()
        t = rng.uniform(-4, 4, n)
        return (np.concatenate([y, ry, np.sin(t) * 3, np.linspace(-5, 5, n)]).astype(F32),
                np.concatenate([x, rx, np.cos(t) * 3, np.full(n, 1.5)]).astype(F32))
    # power: negative bases with integer exponents, fractional ones, results near overflow and
    # underflow, bases near 1 with large exponents
    base = np.concatenate([rng.uniform(-10, 10, n), rng.uniform(0, 3, n), np.exp(rng.uniform(-88, 88, n)),
                           1 + rng.uniform(-1e-3, 1e-3, n)])
    expo = np.concatenate([np.round(rng.uniform(-40, 40, n)), rng.uniform(-200, 200, n), rng.uniform(-2, 2, n),
                           rng.uniform(-1e5, 1e5, n)])
    return np.concatenate([y, base]).astype(F32), np.concatenate([x, expo]).astype(F32)


def _call(name, args, d=dt.float32):
    fn = getattr(ma, name)
    return lambda: fn(*(ma.array(a).astype(d) for a in args))


def _assert_close(got, ref, d, context):
    rtol, atol = tolerance(d)
    got, ref = np.asarray(got, F32), np.asarray(ref, F32)
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol, equal_nan=True, err_msg=context)
    zero = ref == 0
    np.testing.assert_array_equal(np.signbit(got[zero]), np.signbit(ref[zero]), err_msg=f"{context}: zero signs")


def _numpy(name, args):
    with np.errstate(all="ignore"):
        return getattr(np, name)(*args)


@pytest.mark.parametrize("name", UNARY)
def test_unary_float32_matches_numpy(name):
    x = _unary_inputs(name)
    got = on("llvm", _call(name, [x]))
    _assert_close(np.array(got), _numpy(name, [x]), dt.float32, name)


@pytest.mark.parametrize("name", BINARY)
def test_binary_float32_matches_numpy(name):
    a, b = _binary_inputs(name)
    got = on("llvm", _call(name, [a, b]))
    _assert_close(np.array(got), _numpy(name, [a, b]), dt.float32, name)


def test_power_is_accurate_for_large_results():
    """y * log2(x) is formed in double: results up to float32's largest stay within an ulp (float32
    exp(y * log(x)) is off by up to about 180 of them here)."""
    rng = np.random.default_rng(8)
    x = rng.uniform(1.01, 10, 20000).astype(F32)
    y = (rng.uniform(80, 127, x.size) / np.log2(x)).astype(F32)
    got = np.array(on("llvm", _call("power", [x, y]))).astype(np.float64)
    exact = np.power(x.astype(np.float64), y.astype(np.float64))
    keep = exact < 3.4e38
    ulp = np.spacing(exact[keep].astype(F32)).astype(np.float64)
    assert np.max(np.abs(got[keep] - exact[keep]) / ulp) <= 1.0


@pytest.mark.parametrize("d", [dt.float16, dt.bfloat16], ids=lambda d: d.name)
@pytest.mark.parametrize("name", UNARY + BINARY)
def test_half_precision_matches_numpy_executor(name, d):
    args = [_unary_inputs(name)] if name in UNARY else list(_binary_inputs(name))
    fn = _call(name, args, d)
    ref, got = on("numpy", fn), on("llvm", fn)
    assert got.dtype == ref.dtype == d
    _assert_close(np.array(got), np.array(ref), d, f"{name}[{d.name}]")


# --- every vector width, and the code itself ------------------------------------------------------

def _x86(bits):
    """The host as an x86 CPU with ``bits``-wide vectors."""
    host = target.host()
    return target.Target(host.triple, host.cpu, host.features, bits, False)


# the vector widths this x86 host can run (each needs its instruction set); none elsewhere
_WIDTHS = [bits for bits, feature in ((128, "sse2"), (256, "avx2"), (512, "avx512f"))
           if os.uname().machine == "x86_64" and _x86(bits).has(feature)]


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86 vector widths")
@pytest.mark.parametrize("bits", _WIDTHS)
def test_x86_vector_widths_match_numpy(bits, monkeypatch, tmp_path):
    from mlxarm.backend import _EXECUTORS
    from mlxarm.backend.llvm import LLVMExecutor

    monkeypatch.setitem(_EXECUTORS, "llvm", LLVMExecutor(_x86(bits), ObjectCache(str(tmp_path))))
    for name in UNARY + BINARY:
        args = [_unary_inputs(name)] if name in UNARY else list(_binary_inputs(name))
        _assert_close(np.array(on("llvm", _call(name, args))), _numpy(name, args), dt.float32, f"{name} {bits}")


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86 vector widths")
@pytest.mark.parametrize("bits", _WIDTHS)
def test_trig_lanes_do_not_depend_on_their_neighbours(bits, monkeypatch, tmp_path):
    """sin, cos and tan of a vector whose lanes mix small arguments with huge, infinite and NaN ones
    (reduced exactly, in a call made for that vector): every lane has the bits it has among its own
    kind, and matches numpy."""
    from mlxarm.backend import _EXECUTORS
    from mlxarm.backend.llvm import LLVMExecutor

    monkeypatch.setitem(_EXECUTORS, "llvm", LLVMExecutor(_x86(bits), ObjectCache(str(tmp_path))))
    rng = np.random.default_rng(3)
    small = rng.uniform(-10, 10, 4099).astype(F32)  # not a whole number of vectors: the scalar loop too
    huge = np.concatenate([_neighbours([8192, 1e4, 1e6, 1e20, 3.4e38]), F32([np.inf, np.nan]),
                           np.exp(rng.uniform(9, 88, 100)).astype(F32)])
    huge = np.concatenate([huge, -huge])
    at = np.arange(0, small.size, 3)[:huge.size]  # a third of the lanes, so most vectors hold both
    mixed = small.copy()
    mixed[at] = huge[:at.size]
    for name in ("sin", "cos", "tan"):
        got = np.array(on("llvm", _call(name, [mixed])))
        expected = np.array(on("llvm", _call(name, [small])))
        expected[at] = np.array(on("llvm", _call(name, [huge[:at.size]])))
        np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32), err_msg=f"{name} {bits}")
        _assert_close(got, _numpy(name, [mixed]), dt.float32, f"{name} {bits}")


def _kernel(name, args, lanes):
    node = _call(name, args)()
    return lower.lower(node, lanes)


_X86_64 = "x86_64-unknown-linux-gnu"
_TARGETS = {"x86-128": target.Target(_X86_64, "x86-64-v3", "+avx2,+fma,+f16c", 128),
            "x86-256": target.Target(_X86_64, "x86-64-v3", "+avx2,+fma,+f16c", 256),
            "x86-512": target.Target(_X86_64, "skylake-avx512", "+avx512f,+avx512vl,+fma,+f16c", 512),
            "neon": NEON, "sve": SVE}
_LIBM = re.compile(r"@(?:llvm\.)?(?:tan|asin|acos|atan2?|pow)[fl]?\b")


def _optimized(source, t):
    """The kernel's IR after the optimizer, and its machine code."""
    machine, module = optimized_module(source, t)
    return str(module), machine.emit_assembly(module)


_CALL = re.compile(r"^\s*(call\w*|bl|blr)\s", re.M)


@pytest.mark.parametrize("where", list(_TARGETS))
@pytest.mark.parametrize("name", UNARY + BINARY)
def test_code_calls_no_libm(name, where):
    """No call to (or intrinsic lowered to) tan, asin, acos, atan, atan2 or pow in the kernel's IR,
    no call in its machine code (these targets have fma) but those its optimized IR makes to
    functions of its own module (tan's exact reduction), and the scalable vector loop stays."""
    t = _TARGETS[where]
    x = np.linspace(0.5, 2, 37, dtype=F32)
    kernel, _, _ = _kernel(name, [x] if name in UNARY else [x, x[::-1]], t.lanes)
    source = render_llvm.render(kernel, t)
    assert not _LIBM.search(source), _LIBM.search(source).group(0)
    if t.scalable:
        assert not render_llvm._scalar_only(kernel, "vscale")
        assert re.search(r"= f(add|sub|mul|div) <vscale x 4 x float>", source)
    ir, asm = _optimized(source, t)
    defined = set(re.findall(r"^define [^@]*@([\w.]+)\(", ir, re.M))
    called = re.findall(r"\bcall [^@]*@([\w.]+)\(", ir)
    assert all(f in defined or f.startswith("llvm.") for f in called), called
    own = sum(f in defined for f in called)
    assert len(_CALL.findall(asm)) == own, "a call in the kernel's code that its IR does not make"


@pytest.mark.parametrize("where", ["x86-128", "x86-256", "x86-512"])
@pytest.mark.parametrize("name", ["sin", "cos", "tan"])
def test_trig_reduction_converts_whole_vectors(name, where):
    """The octant of sin, cos and tan is converted to an integer by one vector instruction, not lane
    by lane (what a saturating conversion becomes on x86): fewer scalar conversions in the code than
    the vector has lanes (the scalar remainder loop has its own)."""
    t = _TARGETS[where]
    kernel, _, _ = _kernel(name, [np.linspace(-10, 10, 37, dtype=F32)], t.lanes)
    _, asm = _optimized(render_llvm.render(kernel, t), t)
    assert re.search(r"\bv?cvttps2dq\b", asm)
    assert len(re.findall(r"\bv?cvttss2si[lq]?\b", asm)) < t.lanes


@pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                    reason="needs Debian packages gcc-aarch64-linux-gnu and qemu-user-static")
@pytest.mark.parametrize("where", ["neon", "sve"])
def test_runs_under_qemu(tmp_path, where):
    """Each op's kernel cross-compiled for aarch64 and run on an emulated CPU (qemu's "max" for
    SVE), against numpy, special values included."""
    t = _TARGETS[where]
    cases = [(name, [_unary_inputs(name)[::7]]) for name in UNARY]
    cases += [(name, [v[::9] for v in _binary_inputs(name)]) for name in BINARY]
    for name, args in cases:
        kernel, views, out = _kernel(name, args, t.lanes)
        got = run_under_qemu(tmp_path, kernel, t, views, out)
        _assert_close(got, _numpy(name, args), dt.float32, f"{name} on {where}")


@pytest.mark.parametrize("name", ["sin", "cos", "sinh", "cosh", "arcsinh", "arccosh", "arctanh", "exp", "expm1",
                                  "log", "log1p", "log2", "log10", "sqrt", "erf"])
def test_other_unary_functions_at_special_values(name):
    """The other inline functions at every special value and its neighbours (arccosh of a huge negative
    number is NaN: its t (t + 2) overflows to +inf), as numpy gives them, zero signs included."""
    x = _neighbours(SPECIAL)
    ref = getattr(np, name, None)
    if ref is None:
        import math

        ref = np.vectorize(getattr(math, name), otypes=[np.float64])
    with np.errstate(all="ignore"):
        want = ref(x.astype(np.float64) if name == "erf" else x).astype(F32)
    got = on("llvm", _call(name, [x]))
    _assert_close(np.array(got), want, dt.float32, name)


@pytest.mark.parametrize("name,lo,hi", [("sinh", -89.0, 89.0), ("cosh", -89.0, 89.0), ("tanh", -12.0, 12.0),
                                        ("arctanh", -1.0, 1.0)])
def test_hyperbolic_functions_within_four_ulps(name, lo, hi):
    """Dense grids to the ends of their ranges (sinh and cosh up to where they overflow, arctanh up to
    +-1) within 4 ulps of float64's values: sinh and cosh scaled by e^(|x| - ln 2) with |x| - ln 2
    rounded were 24 ulps off at 70, and arctanh at -0.99999994 4% off."""
    x = np.concatenate([np.linspace(lo, hi, 400001, dtype=F32), _neighbours(F32([lo, hi, 0.625, -0.625]))])
    x = x[(x >= lo) & (x <= hi)]
    got = np.array(on("llvm", _call(name, [x]))).astype(np.float64)
    with np.errstate(all="ignore"):
        exact = getattr(np, name)(x.astype(np.float64))
    keep = np.isfinite(exact) & (np.abs(exact) > 1e-37)
    ulp = np.spacing(np.abs(exact[keep]).astype(F32)).astype(np.float64)
    assert np.max(np.abs(got[keep] - exact[keep]) / ulp) <= 4.0
