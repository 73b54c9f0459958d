"""Products and contractions (matmul, addmm, einsum, tensordot, inner, outer, vecdot, kron) and the
``linalg`` submodule, compared against real MLX."""
import numpy as np
import pytest

import mlxarm.core as ma
from mlxarm.core.ops.linalg import sample
from mlxarm.core.registry import PRIMITIVES

mx = pytest.importorskip("mlx.core")

TOL = {"float16": (3e-3, 3e-3), "bfloat16": (2e-2, 2e-2), "float32": (1e-5, 1e-5),
       "float64": (1e-6, 1e-6), "complex64": (1e-5, 1e-5)}
FLOATS = ["float16", "bfloat16", "float32"]


def _as(lib, x, dtype):
    """numpy values become arrays: of ``dtype`` when they hold its compute representation."""
    if isinstance(x, np.ndarray):
        compute = getattr(ma, dtype if dtype != "bool" else "bool_").np_compute
        if x.dtype == compute:
            return lib.array(x, dtype=getattr(lib, dtype if dtype != "bool" else "bool_"))
        return lib.array(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_as(lib, v, dtype) for v in x)
    if isinstance(x, dict):
        return {k: _as(lib, v, dtype) for k, v in x.items()}
    return x


def _values(a):
    if isinstance(a, mx.array) and a.dtype == mx.bfloat16:
        a = a.astype(mx.float32)
    return np.array(a)


def _same(ours, theirs, tol=None):
    if isinstance(theirs, (list, tuple)):
        assert isinstance(ours, (list, tuple)) and len(ours) == len(theirs)
        for o, t in zip(ours, theirs):
            _same(o, t, tol)
        return
    assert str(ours.dtype) == str(theirs.dtype), (ours.dtype, theirs.dtype)
    assert tuple(ours.shape) == tuple(theirs.shape), (ours.shape, theirs.shape)
    rtol, atol = tol or TOL.get(str(theirs.dtype).split(".")[-1], (0, 0))
    np.testing.assert_allclose(_values(ours), _values(theirs), rtol=rtol, atol=atol, equal_nan=True)


def check(fn, args, kwargs=None, dtype="float32", tol=None):
    """Call ``fn`` (a dotted name) on both libraries; results or exception types must match."""
    kwargs = kwargs or {}

    def get(lib):
        obj = lib
        for part in fn.split("."):
            obj = getattr(obj, part)
        return obj

    try:
        theirs = get(mx)(*_as(mx, args, dtype), **_as(mx, kwargs, dtype))
        mx.eval(theirs)
    except Exception as e:  # noqa: BLE001 - MLX's exception is the expectation
        with pytest.raises(type(e)):
            ma.eval(get(ma)(*_as(ma, args, dtype), **_as(ma, kwargs, dtype)))
        return e
    ours = get(ma)(*_as(ma, args, dtype), **_as(ma, kwargs, dtype))
    _same(ours, theirs, tol)
    return None


def rnd(shape, dtype="float32", seed=0, scale=1.0):
    return sample(np.random.default_rng(seed), getattr(ma, dtype if dtype != "bool" else "bool_"),
                  shape, scale)


# --- the primitives' own cases ------------------------------------------------------------------

_CASE_PRIMS = [n for n in ("matmul", "addmm", "einsum") if n in PRIMITIVES]


@pytest.mark.parametrize("dtype", ["bool", "int32", "uint8", "float16", "bfloat16", "float32", "float64",
                                   "complex64"])
@pytest.mark.parametrize("prim", _CASE_PRIMS)
def test_primitive_cases(prim, dtype):
    d = getattr(ma, dtype if dtype != "bool" else "bool_")
    for name, args, kwargs in PRIMITIVES[prim].extra["cases"](np.random.default_rng(1), d):
        if dtype == "bfloat16" and name in ("matmul", "einsum") and (
                name == "einsum" and args[0] == "ij->" or name == "matmul" and args[0].ndim == 1
                and args[1].ndim == 1):
            continue  # 0-d bfloat16 results are covered in test_scalar_results
        check(name, args, kwargs, dtype)


# --- matmul ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sa,sb", [
    ((2, 3), (4, 5)), ((3,), (4,)), ((3,), (2, 4)), ((3, 2), (3,)), ((), (3,)), ((3,), ()),
    ((2, 3, 4), (3, 4, 5)), ((1, 3, 4), (5, 1, 4, 6)), ((0, 3), (3, 2)), ((2, 0), (0, 3)),
])
def test_matmul_shapes(sa, sb):
    check("matmul", (rnd(sa), rnd(sb, seed=1)))


@pytest.mark.parametrize("da,db", [("int32", "int32"), ("bool", "bool"), ("int32", "float16"),
                                   ("float16", "bfloat16"), ("uint8", "float32"), ("float32", "complex64")])
def test_matmul_dtypes(da, db):
    a = ma.array(rnd((2, 3), da), dtype=getattr(ma, da if da != "bool" else "bool_"))
    b = ma.array(rnd((3, 2), db), dtype=getattr(ma, db if db != "bool" else "bool_"))
    am = mx.array(np.array(a), dtype=getattr(mx, da if da != "bool" else "bool_"))
    bm = mx.array(np.array(b), dtype=getattr(mx, db if db != "bool" else "bool_"))
    try:
        theirs = mx.matmul(am, bm)
    except ValueError as e:
        with pytest.raises(ValueError, match=r"\[matmul\] Only inexact types"):
            ma.matmul(a, b)
        assert "[matmul]" in str(e)
        return
    _same(ma.matmul(a, b), theirs)
    _same(a @ b, am @ bm)


def test_matmul_error_message():
    with pytest.raises(ValueError) as e:
        ma.matmul(ma.array(rnd((2, 3))), ma.array(rnd((4, 5))))
    assert str(e.value) == ("[matmul] Last dimension of first input with shape (2,3) must match second "
                            "to last dimension of second input with shape (4,5).")


def test_scalar_results():
    a, b = rnd((4,)), rnd((4,), seed=2)
    check("matmul", (a, b), dtype="float16")
    check("einsum", ("i,i", a, b), dtype="float32")


# --- addmm -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("sc,sa,sb", [
    ((2, 4), (2, 3), (3, 4)), ((4,), (2, 3), (3, 4)), ((1,), (2, 3), (3, 4)), ((2,), (2, 3), (3,)),
    ((4,), (3,), (3, 4)), ((5, 2, 4), (5, 2, 3), (3, 4)), ((2, 4), (5, 2, 3), (3, 4)),
    ((3, 2, 4), (2, 3), (3, 4)), ((2, 5), (2, 3), (3, 4)), ((3,), (3,), (3,)),
])
def test_addmm(sc, sa, sb, dtype):
    check("addmm", (rnd(sc, dtype), rnd(sa, dtype, 1), rnd(sb, dtype, 2)), {"alpha": 0.5, "beta": 2.0},
          dtype)


def test_addmm_mixed_dtypes():
    c = ma.array(np.ones((2, 4), np.int32))
    a = ma.array(rnd((2, 3)), dtype=ma.float16)
    b = ma.array(rnd((3, 4)), dtype=ma.float16)
    assert ma.addmm(c, a, b).dtype == ma.float16
    assert ma.addmm(ma.array(np.ones((2, 4), np.float32)), a, b).dtype == ma.float32
    ai = ma.array(np.ones((2, 3), np.int32))
    bi = ma.array(np.ones((3, 4), np.int32))
    assert ma.addmm(ma.array(np.ones((2, 4), np.float32)), ai, bi).dtype == ma.float32


# --- einsum ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("subs,shapes", [
    ("ij,jk->ik", [(2, 3), (3, 4)]), ("ij,jk", [(2, 3), (3, 4)]), ("ii", [(3, 3)]), ("ii->i", [(3, 3)]),
    ("...ij,...jk", [(5, 2, 3), (3, 4)]), ("ij,jk", [(2, 3), (4, 4)]), ("ij", [(2, 3, 4)]),
    ("ij,jk->ik", [(2, 3)]), ("ij,ij->ij", [(2, 1), (1, 3)]), ("ij,kj->ik", [(2, 3), (4, 3)]),
    ("ab,cd->abcd", [(2, 3), (1, 2)]), ("i,i,i->", [(3,), (3,), (3,)]), ("bhqd,bhkd->bhqk",
                                                                         [(2, 3, 4, 5), (2, 3, 6, 5)]),
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 5)]), ("i...->...", [(2, 3, 4)]), ("ba", [(2, 3)]),
    ("ij,i->", [(2, 3), (2,)]),
])
@pytest.mark.parametrize("dtype", ["float32", "float16", "int32"])
def test_einsum(subs, shapes, dtype):
    check("einsum", (subs,) + tuple(rnd(s, dtype, i) for i, s in enumerate(shapes)), dtype=dtype)


def test_einsum_sum_dtypes():
    for dtype in ["bool", "uint8", "int8", "uint16", "int64"]:
        check("einsum", ("ij->j", rnd((2, 3), dtype)), dtype=dtype)
        check("einsum", ("ij->ji", rnd((2, 3), dtype)), dtype=dtype)
        check("einsum", ("ij,ij->ij", rnd((2, 3), dtype), rnd((2, 3), dtype, 1)), dtype=dtype)


# --- tensordot / inner / outer / vecdot / kron --------------------------------------------------------

@pytest.mark.parametrize("sa,sb,axes", [
    ((2, 3), (3, 4), 1), ((2, 3, 4), (3, 4, 5), 2), ((2, 3), (3, 4), 0), ((2, 3), (4, 4), 1),
    ((2, 3), (3, 4), 3), ((2, 3), (3, 4), -1), ((2, 3), (3, 4), [[1], [0]]), ((3, 2, 4), (4, 3), [[0, 2], [1, 0]]),
    ((2, 3), (3, 4), [[1, 0], [0]]), ((2, 3), (2, 3), [[-1, 0], [-1, 0]]),
])
def test_tensordot(sa, sb, axes):
    check("tensordot", (rnd(sa), rnd(sb, seed=1)), {"axes": axes})


def test_tensordot_int_rejected():
    check("tensordot", (rnd((2, 3), "int32"), rnd((3, 4), "int32")), {"axes": 1}, "int32")


@pytest.mark.parametrize("sa,sb", [((3,), (3,)), ((2, 3), (4, 3)), ((2, 3), (4, 2)), ((), (4, 2)),
                                   ((2, 3, 4), (5, 4))])
@pytest.mark.parametrize("dtype", ["float32", "float16", "int32"])
def test_inner(sa, sb, dtype):
    check("inner", (rnd(sa, dtype), rnd(sb, dtype, 1)), dtype=dtype)


@pytest.mark.parametrize("sa,sb", [((3,), (2,)), ((2, 3), (4, 2)), ((), (2,)), ((0,), (3,))])
@pytest.mark.parametrize("dtype", ["float32", "int32", "bool", "bfloat16"])
def test_outer(sa, sb, dtype):
    check("outer", (rnd(sa, dtype), rnd(sb, dtype, 1)), dtype=dtype)


@pytest.mark.parametrize("sa,sb,axis", [((3,), (3,), -1), ((2, 3), (1, 3), -1), ((3,), (2, 3), -1),
                                        ((2, 3), (2, 3), 0), ((2, 3), (2, 3), 2), ((2, 3), (2, 3), -3),
                                        ((2, 3), (2, 4), -1)])
@pytest.mark.parametrize("dtype", ["float32", "int32", "bool", "complex64", "float16"])
def test_vecdot(sa, sb, axis, dtype):
    check("vecdot", (rnd(sa, dtype), rnd(sb, dtype, 1)), {"axis": axis}, dtype=dtype)


@pytest.mark.parametrize("sa,sb", [((2, 2), (3,)), ((2, 2), (3, 1, 1)), ((), (3,)), ((2, 2, 2), (3, 3)),
                                   ((2, 3), (4, 5))])
@pytest.mark.parametrize("dtype", ["float32", "int32", "bool"])
def test_kron(sa, sb, dtype):
    check("kron", (rnd(sa, dtype), rnd(sb, dtype, 1)), dtype=dtype)


# --- mx.linalg -------------------------------------------------------------------------------------

_LINALG_PRIMS = ["inv", "tri_inv", "cholesky_inv", "pinv", "solve", "solve_triangular", "cholesky", "qr",
                 "svd", "eigh", "lu", "slogdet", "cross", "norm"]


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "int32", "complex64"])
@pytest.mark.parametrize("prim", _LINALG_PRIMS)
def test_linalg_cases(prim, dtype):
    d = getattr(ma, dtype)
    for name, args, kwargs in PRIMITIVES[prim].extra["cases"](np.random.default_rng(3), d):
        check(name, args, kwargs, dtype, tol=(1e-4, 1e-4) if dtype == "float32" else None)


@pytest.mark.parametrize("expr", [
    "L.inv(F(2, 3))", "L.inv(F(3))", "L.inv(A.astype(lib.float16))", "L.inv(A.astype(lib.int32))",
    "L.solve(A, F(4))", "L.solve(A, F(2, 3, 2))", "L.solve(A, F(3).astype(lib.int32))",
    "L.cholesky(F(2, 3))", "L.qr(F(4, 3))", "L.qr(F(3, 4))", "L.svd(F(2, 4, 3))", "L.eigh(F(2, 3))",
    "L.svd(A.astype(lib.float16))", "L.eigvalsh(A, UPLO='U')", "L.det(F(2, 3))",
    "L.cross(F(2, 3), F(3))", "L.cross(F(2), F(2))", "L.cross(F(4), F(4))",
    "L.norm(F(2, 3, 4))", "L.norm(F(2, 3, 4), ord=2)", "L.norm(F(3), ord='fro')",
    "L.norm(F(2, 3), ord='foo')", "L.norm(F(2, 3), ord=3)", "L.norm(F(3), ord=0)", "L.norm(F(3), ord=0.5)",
    "L.norm(F(2, 3).astype(lib.int32), ord='nuc')", "L.norm(F(2, 3), axis=(0, 0))",
    "L.norm(F(2, 3).astype(lib.float16), axis=1)", "L.norm(F(2, 3), axis=1, keepdims=True)",
])
def test_linalg_shapes_and_errors(expr):
    base = np.random.default_rng(0).standard_normal((3, 3)).astype(np.float32) + 3 * np.eye(3, dtype=np.float32)

    def run(lib):
        env = {"L": lib.linalg, "lib": lib, "A": lib.array(base),
               "F": lambda *s: lib.array(np.arange(1, 1 + int(np.prod(s)), dtype=np.float32).reshape(s))}
        out = eval(expr, env)
        if lib is ma:
            ma.eval(out)
        return out

    try:
        theirs = run(mx)
        mx.eval(theirs)
    except Exception as e:  # noqa: BLE001
        with pytest.raises(type(e)):
            run(ma)
        return
    ours = run(ma)
    if isinstance(theirs, (list, tuple)):
        assert [(str(o.dtype), o.shape) for o in ours] == [(str(t.dtype), t.shape) for t in theirs]
    else:
        _same(ours, theirs, (1e-3, 1e-3))


@pytest.mark.parametrize("shape", [(4, 4), (2, 5, 3), (3, 5)])
def test_decompositions_reconstruct(shape):
    a = rnd(shape, "float32", 5)
    q, r = ma.linalg.qr(ma.array(a))
    np.testing.assert_allclose(np.array(q) @ np.array(r), a, atol=1e-5)
    qm, rm = mx.linalg.qr(mx.array(a), stream=mx.cpu)
    assert (q.shape, r.shape) == (qm.shape, rm.shape)
    u, s, vt = ma.linalg.svd(ma.array(a))
    um, sm, vtm = mx.linalg.svd(mx.array(a), stream=mx.cpu)
    assert (u.shape, s.shape, vt.shape) == (um.shape, sm.shape, vtm.shape)
    k = min(shape[-2:])
    np.testing.assert_allclose((np.array(u)[..., :k] * np.array(s)[..., None, :]) @ np.array(vt)[..., :k, :],
                               a, atol=1e-4)
    p, low, up = ma.linalg.lu(ma.array(a))
    pm, lm, um_ = mx.linalg.lu(mx.array(a), stream=mx.cpu)
    for o, t in ((p, pm), (low, lm), (up, um_)):
        _same(o, t, (1e-4, 1e-4))


def test_eigh_and_eig():
    x = rnd((4, 4), "float32", 6)
    sym = x + x.T
    w, v = ma.linalg.eigh(ma.array(sym))
    wm, _ = mx.linalg.eigh(mx.array(sym), stream=mx.cpu)
    _same(w, wm, (1e-4, 1e-4))
    np.testing.assert_allclose(np.array(v) @ np.diag(np.array(w)) @ np.array(v).T, sym, atol=1e-4)
    vals, vecs = ma.linalg.eig(ma.array(x))
    valsm = mx.linalg.eigvals(mx.array(x), stream=mx.cpu)
    assert vals.dtype == ma.complex64 and vecs.dtype == ma.complex64
    np.testing.assert_allclose(np.sort_complex(np.array(vals)), np.sort_complex(np.array(valsm)), atol=1e-4)


def test_linalg_is_a_module_of_functions():
    for name in ["norm", "inv", "solve", "cholesky", "qr", "svd", "eigh", "eigvalsh", "pinv", "tri_inv",
                 "cross", "lu", "lu_factor", "det", "slogdet", "solve_triangular", "cholesky_inv", "eig",
                 "eigvals"]:
        assert callable(getattr(ma.linalg, name))
