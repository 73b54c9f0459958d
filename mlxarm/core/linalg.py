"""``mlx.core.linalg``: norms, factorizations, inverses and solvers, each a primitive over numpy.linalg.

MLX runs these on the CPU in float32 or float64 (a few accept complex64) and checks dtype and shape
when the op is recorded; the messages below are MLX's. A factorization with several outputs records one
node per output (each node's reference picks its part of the factorization).
"""
from __future__ import annotations

import numpy as np

from . import dtypes as dt
from .ops._base import (DtypeError, Primitive, api, broadcast_shapes, cast, fmt_shape, make_node, register,
                        resolve_stream, to_array)
from .ops.linalg import sample as _sample

_REAL = (dt.float32, dt.float64)
_WITH_COMPLEX = (dt.float32, dt.float64, dt.complex64)


def _check(op, a, allowed=_REAL, square=True, square_msg=None):
    if a._dtype not in allowed:
        names = "float32, float64 or complex64" if dt.complex64 in allowed else "float32 or float64"
        raise DtypeError(f"[linalg::{op}] Arrays must have type {names}. Received array with type "
                         f"{a._dtype.name}.")
    if a.ndim < 2:
        raise ValueError(f"[linalg::{op}] Arrays must have >= 2 dimensions. Received array with "
                         f"{a.ndim} dimensions.")
    if square and a._shape[-1] != a._shape[-2]:
        raise ValueError(square_msg or f"[linalg::{op}] Only defined for square matrices.")


def _lapack(name, fn):
    """A reference whose numpy failure (singular matrix...) surfaces as MLX's RuntimeError."""
    def ref(p, *xs):
        try:
            return fn(p, *xs)
        except np.linalg.LinAlgError as e:
            raise RuntimeError(f"[{name}::eval_cpu] {e}") from None
    return ref


def _spd(rng, d, n, batch=()):
    x = _sample(rng, d, batch + (n, n))
    return (x @ np.swapaxes(x, -1, -2) + n * np.eye(n)).astype(x.dtype)


def _well_conditioned(rng, d, n, batch=()):
    return (_sample(rng, d, batch + (n, n)) + 2 * n * np.eye(n)).astype(d.np_compute)


def _prim(name, fn, cases, dtypes=_REAL, doc=""):
    return register(Primitive(name, "linalg", _lapack(name, fn), dtypes=dtypes, doc=doc,
                              extra={"cases": cases}))


def _record(prim, inputs, params, shape, dtype, stream):
    return make_node(prim, tuple(inputs), params, tuple(shape), dtype, resolve_stream(stream))


def _only(dtypes, make):
    return lambda rng, d: make(rng, d) if d in dtypes else []


# --- inverses ----------------------------------------------------------------------------------------

INV = _prim("inv", lambda p, x: np.linalg.inv(x),
            _only(_REAL, lambda rng, d: [("linalg.inv", (_well_conditioned(rng, d, 4),), {}),
                                         ("linalg.inv", (_well_conditioned(rng, d, 3, (2,)),), {})]),
            doc="Matrix inverse.")


@api(primitive="inv", module="linalg")
def inv(a, *, stream=None):
    a = to_array(a)
    _check("inv", a, square_msg="[linalg::inv] Inverses are only defined for square matrices.")
    return _record(INV, (a,), None, a._shape, a._dtype, stream)


def _tri_inv_ref(p, x):
    if p["upper"]:
        return np.triu(np.linalg.inv(np.triu(x)))
    return np.tril(np.linalg.inv(np.tril(x)))


TRI_INV = _prim("tri_inv", _tri_inv_ref,
                _only(_REAL, lambda rng, d: [("linalg.tri_inv", (_well_conditioned(rng, d, 4),), {}),
                                             ("linalg.tri_inv", (_well_conditioned(rng, d, 3, (2,)),),
                                              {"upper": True})]),
                doc="Inverse of the lower (or upper) triangle of a matrix.")


@api(primitive="tri_inv", module="linalg")
def tri_inv(a, upper: bool = False, *, stream=None):
    a = to_array(a)
    _check("tri_inv", a, square_msg="[linalg::tri_inv] Inverses are only defined for square matrices.")
    return _record(TRI_INV, (a,), {"upper": bool(upper)}, a._shape, a._dtype, stream)


def _cholesky_inv_ref(p, x):
    tri = np.triu(x) if p["upper"] else np.tril(x)
    full = np.swapaxes(tri, -1, -2) @ tri if p["upper"] else tri @ np.swapaxes(tri, -1, -2)
    return np.linalg.inv(full)


CHOLESKY_INV = _prim("cholesky_inv", _cholesky_inv_ref,
                     _only(_REAL, lambda rng, d: [
                         ("linalg.cholesky_inv", (np.linalg.cholesky(_spd(rng, d, 4)),), {}),
                         ("linalg.cholesky_inv", (np.swapaxes(np.linalg.cholesky(_spd(rng, d, 3)), -1, -2),),
                          {"upper": True})]),
                     doc="Inverse of a matrix given its Cholesky factor.")


@api(primitive="cholesky_inv", module="linalg")
def cholesky_inv(a, upper: bool = False, *, stream=None):
    a = to_array(a)
    _check("cholesky_inv", a,
           square_msg="[linalg::cholesky_inv] Cholesky inverse is only defined for square matrices.")
    return _record(CHOLESKY_INV, (a,), {"upper": bool(upper)}, a._shape, a._dtype, stream)


PINV = _prim("pinv", lambda p, x: np.linalg.pinv(x),
             _only(_REAL, lambda rng, d: [("linalg.pinv", (_sample(rng, d, (4, 3)),), {}),
                                          ("linalg.pinv", (_sample(rng, d, (2, 3, 5)),), {})]),
             doc="Moore-Penrose pseudo-inverse.")


@api(primitive="pinv", module="linalg")
def pinv(a, *, stream=None):
    a = to_array(a)
    _check("pinv", a, square=False)
    return _record(PINV, (a,), None, a._shape[:-2] + (a._shape[-1], a._shape[-2]), a._dtype, stream)


# --- solvers ------------------------------------------------------------------------------------------

def _solve_ref(p, a, b):
    if p["vector"]:
        return np.linalg.solve(a, b[..., None])[..., 0]
    return np.linalg.solve(a, b)


SOLVE = _prim("solve", _solve_ref,
              _only(_REAL, lambda rng, d: [
                  ("linalg.solve", (_well_conditioned(rng, d, 4), _sample(rng, d, (4,))), {}),
                  ("linalg.solve", (_well_conditioned(rng, d, 3), _sample(rng, d, (3, 2))), {}),
                  ("linalg.solve", (_well_conditioned(rng, d, 3, (2,)), _sample(rng, d, (2, 3, 2))), {})]),
              doc="Solve a x = b.")


def _solve_shapes(op, a, b):
    if a.ndim < 2:
        raise ValueError(f"[linalg::{op}] First input must have >= 2 dimensions. Received array with "
                         f"{a.ndim} dimensions.")
    if b.ndim < 1:
        raise ValueError(f"[linalg::{op}] Second input must have >= 1 dimensions. Received array with "
                         f"{b.ndim} dimensions.")
    vector = b.ndim == 1
    k = b._shape[0] if vector else b._shape[-2]
    if a._shape[-1] != k:
        raise ValueError(f"[linalg::{op}] Last dimension of first input with shape {fmt_shape(a._shape)} "
                         f"must match second to last dimension of second input with shape "
                         f"{fmt_shape(b._shape)}.")
    if vector:
        return True, a._shape[:-1]
    if b.ndim > a.ndim:  # MLX gathers b's rows by a's pivots, which needs a's rank
        raise ValueError(f"[take_along_axis] Indices of dimension {a.ndim} does not match array of "
                         f"dimension {b.ndim}.")
    batch = broadcast_shapes(a._shape[:-2], b._shape[:-2])
    return False, batch + (a._shape[-2], b._shape[-1])


@api(primitive="solve", module="linalg")
def solve(a, b, *, stream=None):
    a, b = to_array(a), to_array(b)
    d = dt.promote_types(a._dtype, b._dtype)
    if d not in _REAL:
        raise DtypeError(f"[linalg::solve] Input array must have type float32 or float64. Received "
                         f"arrays with type {a._dtype.name} and {b._dtype.name}.")
    _check("solve", a, square_msg="[linalg::solve] First input must be a square matrix.")
    vector, shape = _solve_shapes("solve", a, b)
    a, b = cast(a, d, stream), cast(b, d, stream)
    return _record(SOLVE, (a, b), {"vector": vector}, shape, d, stream)


def _solve_triangular_ref(p, a, b):
    tri = np.triu(a) if p["upper"] else np.tril(a)
    if p["vector"]:
        return np.linalg.solve(tri, b[..., None])[..., 0]
    return np.linalg.solve(tri, b)


SOLVE_TRIANGULAR = _prim(
    "solve_triangular", _solve_triangular_ref,
    _only(_REAL, lambda rng, d: [
        ("linalg.solve_triangular", (_well_conditioned(rng, d, 4), _sample(rng, d, (4,))), {}),
        ("linalg.solve_triangular", (_well_conditioned(rng, d, 3), _sample(rng, d, (3, 2))), {"upper": True})]),
    doc="Solve a x = b for triangular a.")


@api(primitive="solve_triangular", module="linalg")
def solve_triangular(a, b, *, upper: bool = False, stream=None):
    a, b = to_array(a), to_array(b)
    d = dt.promote_types(a._dtype, b._dtype)
    if d not in _REAL:
        raise DtypeError(f"[linalg::solve_triangular] Input array must have type float32 or float64. "
                         f"Received arrays with type {a._dtype.name} and {b._dtype.name}.")
    _check("solve_triangular", a,
           square_msg="[linalg::solve_triangular] First input must be a square matrix.")
    vector, shape = _solve_shapes("solve_triangular", a, b)
    a, b = cast(a, d, stream), cast(b, d, stream)
    return _record(SOLVE_TRIANGULAR, (a, b), {"vector": vector, "upper": bool(upper)}, shape, d, stream)


# --- factorizations -------------------------------------------------------------------------------------

def _potrf(a):
    """LAPACK's recursive potrf on the lower triangle of one matrix, in place, failure included: at
    the first pivot that is not positive the recursion stops and leaves the rest as it stands (MLX
    returns that instead of raising). Returns False on failure."""
    n = a.shape[0]
    if n == 1:
        if not a[0, 0] > 0:
            return False
        a[0, 0] = np.sqrt(a[0, 0])
        return True
    n1 = n // 2
    if not _potrf(a[:n1, :n1]):
        return False
    a[n1:, :n1] = np.linalg.solve(np.tril(a[:n1, :n1]), a[n1:, :n1].T).T
    a[n1:, n1:] -= a[n1:, :n1] @ a[n1:, :n1].T
    return _potrf(a[n1:, n1:])


def _cholesky_one(x):
    try:
        return np.linalg.cholesky(np.tril(x) + np.tril(x, -1).T)
    except np.linalg.LinAlgError:
        work = x.copy()
        if work.size:
            _potrf(work)
        return np.tril(work)


def _cholesky_ref(p, x):
    if p["upper"]:  # the upper factor is read from the upper triangle: the lower one of x^T
        x = np.swapaxes(x, -1, -2)
    try:
        low = np.linalg.cholesky(np.tril(x) + np.swapaxes(np.tril(x, -1), -1, -2))
    except np.linalg.LinAlgError:
        flat = x.reshape((-1,) + x.shape[-2:])
        low = np.stack([_cholesky_one(m) for m in flat]).reshape(x.shape)
    return np.swapaxes(low, -1, -2) if p["upper"] else low


CHOLESKY = _prim("cholesky", _cholesky_ref,
                 _only(_REAL, lambda rng, d: [("linalg.cholesky", (_spd(rng, d, 4),), {}),
                                              ("linalg.cholesky", (_spd(rng, d, 3, (2,)),), {"upper": True})]),
                 doc="Cholesky factor of a symmetric positive definite matrix (its lower triangle).")


@api(primitive="cholesky", module="linalg")
def cholesky(a, upper: bool = False, *, stream=None):
    a = to_array(a)
    _check("cholesky", a, square_msg="[linalg::cholesky] Cholesky decomposition is only defined for "
                                     "square matrices.")
    return _record(CHOLESKY, (a,), {"upper": bool(upper)}, a._shape, a._dtype, stream)


QR = _prim("qr", lambda p, x: np.linalg.qr(x)[p["out"]],
           _only(_REAL, lambda rng, d: [("linalg.qr", (_sample(rng, d, (4, 4)),), {}),
                                        ("linalg.qr", (_sample(rng, d, (2, 5, 3)),), {}),
                                        ("linalg.qr", (_sample(rng, d, (3, 5)),), {})]),
           doc="QR factorization (reduced); params['out'] picks Q (0) or R (1).")


@api(primitive="qr", module="linalg")
def qr(a, *, stream=None):
    a = to_array(a)
    _check("qr", a, square=False)
    m, n = a._shape[-2:]
    k = min(m, n)
    batch = a._shape[:-2]
    return (_record(QR, (a,), {"out": 0}, batch + (m, k), a._dtype, stream),
            _record(QR, (a,), {"out": 1}, batch + (k, n), a._dtype, stream))


def _svd_ref(p, x):
    if not p["uv"]:
        return np.linalg.svd(x, compute_uv=False)
    return np.linalg.svd(x, full_matrices=True)[p["out"]]


SVD = _prim("svd", _svd_ref,
            _only(_WITH_COMPLEX, lambda rng, d: [
                ("linalg.svd", (_sample(rng, d, (4, 3)),), {"compute_uv": False}),
                ("linalg.svd", (_sample(rng, d, (2, 3, 5)),), {"compute_uv": False})]),
            dtypes=_WITH_COMPLEX, doc="Singular value decomposition (full U and Vt).")


@api(primitive="svd", module="linalg")
def svd(a, compute_uv: bool = True, *, stream=None):
    a = to_array(a)
    _check("svd", a, _WITH_COMPLEX, square=False)
    m, n = a._shape[-2:]
    batch = a._shape[:-2]
    real = dt.float32 if a._dtype is dt.complex64 else a._dtype
    s_shape = batch + (min(m, n),)
    if not compute_uv:
        return _record(SVD, (a,), {"uv": False, "out": 1}, s_shape, real, stream)
    return (_record(SVD, (a,), {"uv": True, "out": 0}, batch + (m, m), a._dtype, stream),
            _record(SVD, (a,), {"uv": True, "out": 1}, s_shape, real, stream),
            _record(SVD, (a,), {"uv": True, "out": 2}, batch + (n, n), a._dtype, stream))


def _eigh_ref(p, x):
    w, v = np.linalg.eigh(x, UPLO=p["uplo"])
    return w if p["out"] == 0 else v


EIGH = _prim("eigh", _eigh_ref,
             _only(_REAL, lambda rng, d: [("linalg.eigvalsh", (_spd(rng, d, 4),), {}),
                                          ("linalg.eigvalsh", (_sample(rng, d, (2, 3, 3)),), {"UPLO": "U"})]),
             dtypes=_WITH_COMPLEX, doc="Eigen decomposition of a Hermitian matrix from one triangle.")


def _uplo(op, UPLO):
    if UPLO not in ("L", "U"):
        raise ValueError(f"[linalg::{op}] UPLO must be 'L' or 'U'.")
    return UPLO


@api(primitive="eigh", module="linalg")
def eigh(a, UPLO: str = "L", *, stream=None):
    a = to_array(a)
    _check("eigh", a, _WITH_COMPLEX,
           square_msg="[linalg::eigh] Eigen decomposition is only defined for square matrices.")
    uplo = _uplo("eigh", UPLO)
    real = dt.float32 if a._dtype is dt.complex64 else a._dtype
    return (_record(EIGH, (a,), {"uplo": uplo, "out": 0}, a._shape[:-1], real, stream),
            _record(EIGH, (a,), {"uplo": uplo, "out": 1}, a._shape, a._dtype, stream))


@api(primitive="eigh", module="linalg")
def eigvalsh(a, UPLO: str = "L", *, stream=None):
    a = to_array(a)
    _check("eigvalsh", a, _WITH_COMPLEX,
           square_msg="[linalg::eigvalsh] Eigen decomposition is only defined for square matrices.")
    real = dt.float32 if a._dtype is dt.complex64 else a._dtype
    return _record(EIGH, (a,), {"uplo": _uplo("eigvalsh", UPLO), "out": 0}, a._shape[:-1], real, stream)


def _eig_ref(p, x):
    w, v = np.linalg.eig(x)
    return (w if p["out"] == 0 else v).astype(np.complex64)


EIG = _prim("eig", _eig_ref, lambda rng, d: [], dtypes=_WITH_COMPLEX,
            doc="Eigen decomposition of a general matrix (complex results).")


@api(primitive="eig", module="linalg")
def eig(a, *, stream=None):
    a = to_array(a)
    _check("eig", a, _WITH_COMPLEX,
           square_msg="[linalg::eig] Eigen decomposition is only defined for square matrices.")
    return (_record(EIG, (a,), {"out": 0}, a._shape[:-1], dt.complex64, stream),
            _record(EIG, (a,), {"out": 1}, a._shape, dt.complex64, stream))


@api(primitive="eig", module="linalg")
def eigvals(a, *, stream=None):
    a = to_array(a)
    _check("eigvals", a, _WITH_COMPLEX,
           square_msg="[linalg::eigvals] Eigen decomposition is only defined for square matrices.")
    return _record(EIG, (a,), {"out": 0}, a._shape[:-1], dt.complex64, stream)


def _lu_one(x):
    """Partial-pivoting LU of one matrix: (combined LU, LAPACK pivots, row permutation)."""
    lu = x.copy()
    m, n = lu.shape
    k = min(m, n)
    piv = np.zeros(k, np.uint32)
    perm = np.arange(m)
    for j in range(k):
        i = j + int(np.argmax(np.abs(lu[j:, j])))
        piv[j] = i
        if i != j:
            lu[[j, i]] = lu[[i, j]]
            perm[[j, i]] = perm[[i, j]]
        if lu[j, j] != 0:
            lu[j + 1:, j] /= lu[j, j]
        lu[j + 1:, j + 1:] -= np.outer(lu[j + 1:, j], lu[j, j + 1:])
    return lu, piv, perm


def _lu_ref(p, x):
    batch = x.shape[:-2]
    m, n = x.shape[-2:]
    k = min(m, n)
    flat = x.reshape((-1, m, n))
    part = p["part"]
    outs = []
    for mat in flat:
        lu, piv, perm = _lu_one(mat)
        if part == "lu":
            outs.append(lu)
        elif part == "pivots":
            outs.append(piv)
        elif part == "perm":
            outs.append(np.argsort(perm).astype(np.uint32))
        elif part == "L":
            outs.append(np.tril(lu[:, :k], -1) + np.eye(m, k, dtype=lu.dtype))
        else:
            outs.append(np.triu(lu[:k]))
    out = np.stack(outs) if outs else np.zeros((0,) + _LU_SHAPES[part](m, n, k),
                                                 np.uint32 if part in ("pivots", "perm") else x.dtype)
    return out.reshape(batch + out.shape[1:])


_LU_SHAPES = {"lu": lambda m, n, k: (m, n), "pivots": lambda m, n, k: (k,), "perm": lambda m, n, k: (m,),
              "L": lambda m, n, k: (m, k), "U": lambda m, n, k: (k, n)}

LU = _prim("lu", _lu_ref,
           _only(_REAL, lambda rng, d: [("linalg.lu", (_sample(rng, d, (4, 4)),), {}),
                                        ("linalg.lu", (_sample(rng, d, (2, 4, 3)),), {}),
                                        ("linalg.lu_factor", (_sample(rng, d, (3, 3)),), {})]),
           doc="LU factorization with partial pivoting; params['part'] picks the output.")


def _lu_outputs(a, parts, stream):
    m, n = a._shape[-2:]
    k = min(m, n)
    batch = a._shape[:-2]
    return tuple(_record(LU, (a,), {"part": part}, batch + _LU_SHAPES[part](m, n, k),
                         dt.uint32 if part in ("pivots", "perm") else a._dtype, stream) for part in parts)


@api(primitive="lu", module="linalg")
def lu(a, *, stream=None):
    a = to_array(a)
    _check("lu", a, square=False)
    return _lu_outputs(a, ("perm", "L", "U"), stream)


@api(primitive="lu", module="linalg")
def lu_factor(a, *, stream=None):
    a = to_array(a)
    _check("lu_factor", a, square=False)
    return _lu_outputs(a, ("lu", "pivots"), stream)


def _small_det(x):
    """Determinant of matrices up to 3x3 by cofactors, in the input's own precision (as MLX does)."""
    n = x.shape[-1]
    if n == 0:
        return np.ones(x.shape[:-2], x.dtype)
    if n == 1:
        return x[..., 0, 0]
    if n == 2:
        return x[..., 0, 0] * x[..., 1, 1] - x[..., 0, 1] * x[..., 1, 0]
    a, b, c = x[..., 0, 0], x[..., 0, 1], x[..., 0, 2]
    return (a * (x[..., 1, 1] * x[..., 2, 2] - x[..., 1, 2] * x[..., 2, 1])
            - b * (x[..., 1, 0] * x[..., 2, 2] - x[..., 1, 2] * x[..., 2, 0])
            + c * (x[..., 1, 0] * x[..., 2, 1] - x[..., 1, 1] * x[..., 2, 0]))


def _slogdet_ref(p, x):
    if x.shape[-1] <= _SMALL_DET:
        d = np.asarray(_small_det(x))
        if p["out"] == "det":
            return d
        if p["out"] == "sign":
            return np.sign(d)
        with np.errstate(divide="ignore"):
            return np.log(np.abs(d))
    if p["out"] == "det":
        return np.asarray(np.linalg.det(x))
    sign, logdet = np.linalg.slogdet(x)
    return np.asarray(sign if p["out"] == "sign" else logdet)


# MLX computes determinants of matrices up to this size directly in the input dtype; larger ones go
# through an LU factorization, which only float32 and float64 support.
_SMALL_DET = 3


def _det_cases(rng, d):
    if d is dt.complex64:
        return []
    out = [("linalg.det", (_sample(rng, d, (2, 2)),), {}),
           ("linalg.det", (_sample(rng, d, (2, 3, 3)),), {}),
           ("linalg.slogdet", (_sample(rng, d, (3, 3)),), {}),
           ("linalg.det", (_sample(rng, d, (1, 1)),), {})]
    if d.kind in "iu":  # well away from |det| = 1, where float32 LU leaves log|det| a few ulps off 0
        out += [("linalg.det", (_sample(rng, d, (4, 4)) + 5 * np.eye(4, dtype=d.np_storage),), {}),
                ("linalg.slogdet", (_sample(rng, d, (2, 5, 5)) + 5 * np.eye(5, dtype=d.np_storage),), {})]
    elif d in _REAL:
        out += [("linalg.det", (_sample(rng, d, (4, 4)),), {}),
                ("linalg.slogdet", (_sample(rng, d, (2, 5, 5)),), {})]
    return out


SLOGDET = _prim("slogdet", _slogdet_ref, _det_cases, dtypes=tuple(d for d in dt.ALL if d.kind != "c"),
                doc="Determinant, or its sign and log magnitude.")


def _det_input(op, a, stream):
    if a._dtype.kind == "c":
        raise DtypeError(f"[linalg::{op}] Complex inputs are not supported.")
    if a.ndim < 2:
        raise ValueError(f"[linalg::{op}] Arrays must have >= 2 dimensions. Received array with "
                         f"{a.ndim} dimensions.")
    if a._shape[-1] != a._shape[-2]:
        raise ValueError(f"[linalg::{op}] Only defined for square matrices.")
    if a._dtype.kind != "f":
        return cast(a, dt.float32, stream)
    if a._shape[-1] > _SMALL_DET and a._dtype not in _REAL:
        raise DtypeError(f"[linalg::lu_factor] Arrays must have type float32 or float64. Received array "
                         f"with type {a._dtype.name}.")
    return a


@api(primitive="slogdet", module="linalg")
def det(a, *, stream=None):
    a = _det_input("det", to_array(a), stream)
    return _record(SLOGDET, (a,), {"out": "det"}, a._shape[:-2], a._dtype, stream)


@api(primitive="slogdet", module="linalg")
def slogdet(a, *, stream=None):
    a = _det_input("slogdet", to_array(a), stream)
    return (_record(SLOGDET, (a,), {"out": "sign"}, a._shape[:-2], a._dtype, stream),
            _record(SLOGDET, (a,), {"out": "logdet"}, a._shape[:-2], a._dtype, stream))


def _slogdet_composite(p, a):
    """A small determinant as MLX composes it from ops (the cofactor formula up to 3x3), which is what its
    gradient follows; a larger one goes through an LU factorization, which has no gradient in MLX."""
    from .ops._autodiff import O

    n = a._shape[-1]
    if n > _SMALL_DET:
        raise ValueError("[lu_factor] Primitive's vjp not implemented.")

    def e(i, j):
        return a[..., i, j]

    if n == 0:
        raw = O.ones(a._shape[:-2], a._dtype)
    elif n == 1:
        raw = e(0, 0)
    elif n == 2:
        raw = e(0, 0) * e(1, 1) - e(0, 1) * e(1, 0)
    else:
        raw = (e(0, 0) * (e(1, 1) * e(2, 2) - e(1, 2) * e(2, 1))
               - e(0, 1) * (e(1, 0) * e(2, 2) - e(1, 2) * e(2, 0))
               + e(0, 2) * (e(1, 0) * e(2, 1) - e(1, 1) * e(2, 0)))
    if p["out"] == "det":
        return raw
    return O.sign(raw) if p["out"] == "sign" else O.log(O.abs(raw))


# --- cross product ------------------------------------------------------------------------------------

def _cross_ref(p, a, b):
    ax = p["axis"]
    pad = [(0, 0)] * a.ndim
    if a.shape[ax] == 2:
        pad[ax] = (0, 1)
        a = np.pad(a, pad)
    if b.shape[ax] == 2:
        pad[ax] = (0, 1)
        b = np.pad(b, pad)
    return np.cross(a, b, axis=ax)


def _cross_cases(rng, d):
    if d.kind not in "fi":
        return []
    return [("linalg.cross", (_sample(rng, d, (3,)), _sample(rng, d, (3,))), {}),
            ("linalg.cross", (_sample(rng, d, (2, 3)), _sample(rng, d, (3,))), {}),
            ("linalg.cross", (_sample(rng, d, (3, 2)), _sample(rng, d, (3, 2))), {"axis": 0})]


CROSS = register(Primitive("cross", "linalg", _cross_ref, doc="Cross product of 3-vectors along an axis.",
                           extra={"cases": _cross_cases}))


@api(primitive="cross", module="linalg")
def cross(a, b, axis: int = -1, *, stream=None):
    a, b = to_array(a), to_array(b)
    if a.ndim != b.ndim:
        nd = max(a.ndim, b.ndim)
        from .ops.shape import reshape

        a = reshape(a, (1,) * (nd - a.ndim) + a._shape, stream=stream)
        b = reshape(b, (1,) * (nd - b.ndim) + b._shape, stream=stream)
    nd = a.ndim
    if not -nd <= axis < nd:
        raise ValueError(f"[linalg::cross] axis {axis} invalid for array with {nd} dimensions.")
    ax = axis % nd
    if a._shape[ax] not in (2, 3) or b._shape[ax] not in (2, 3):
        raise ValueError(f"[linalg::cross] The specified axis must have size 2 or 3, got "
                         f"{a._shape[ax]} and {b._shape[ax]}.")
    d = dt.promote_types(a._dtype, b._dtype)
    rest = broadcast_shapes(a._shape[:ax] + a._shape[ax + 1:], b._shape[:ax] + b._shape[ax + 1:])
    shape = rest[:ax] + (3,) + rest[ax:]
    from .ops.shape import broadcast_to

    a = broadcast_to(cast(a, d, stream), rest[:ax] + (a._shape[ax],) + rest[ax:], stream=stream)
    b = broadcast_to(cast(b, d, stream), rest[:ax] + (b._shape[ax],) + rest[ax:], stream=stream)
    return _record(CROSS, (a, b), {"axis": ax}, shape, d, stream)


# --- norm ----------------------------------------------------------------------------------------------

def _norm_ref(p, x):
    x = x.astype(np.float32) if x.dtype == np.float16 else x
    if x.dtype.kind in "biu":
        x = x.astype(np.float32)
    ord_, axes = p["ord"], p["axes"]
    half = p.get("half")
    if half and (ord_ in (None, "fro") or (ord_ == 2.0 and len(axes) == 1)):
        # MLX's sqrt(sum(square(x))) in the half type: the squares and their sum are rounded to it too.
        squares = dt.round_half(x * x, half)
        return np.sqrt(dt.round_half(np.sum(squares, axis=axes, keepdims=p["keepdims"]), half))
    if ord_ is None:
        r = np.sqrt(np.sum(np.abs(x) ** 2, axis=axes, keepdims=p["keepdims"]))
    else:
        r = np.linalg.norm(x, ord=ord_, axis=axes if len(axes) > 1 else axes[0], keepdims=p["keepdims"])
    return np.asarray(r)


def _norm_cases(rng, d):
    if d.kind not in "fc" and d is not dt.int32:
        return []
    out = [("linalg.norm", (_sample(rng, d, (3, 4)),), {"axis": 0}),
           ("linalg.norm", (_sample(rng, d, (2, 3, 4)),), {"axis": 1, "keepdims": True}),
           ("linalg.norm", (_sample(rng, d, (2, 5)),), {"ord": 1, "axis": -1}),
           ("linalg.norm", (_sample(rng, d, (2, 5)),), {"ord": np.inf, "axis": 1}),
           ("linalg.norm", (_sample(rng, d, (2, 3, 4)),), {"ord": "fro", "axis": (1, 2)}),
           ("linalg.norm", (_sample(rng, d, (2, 3, 4)),), {"ord": -np.inf, "axis": (0, 2)})]
    if d in _REAL:
        out.append(("linalg.norm", (_sample(rng, d, (3, 4)),), {"ord": 2}))
        out.append(("linalg.norm", (_sample(rng, d, (2, 3, 4)),), {"ord": "nuc", "axis": (1, 2)}))
    return out


NORM = register(Primitive("norm", "reduce", _norm_ref, doc="Vector and matrix norms.",
                          extra={"cases": _norm_cases}))


def _norm_composite(p, x):
    """The norm as MLX composes it from ops (mlx/linalg.cpp), which is what its gradient follows."""
    from .ops._autodiff import O

    ord_, axes, keep = p["ord"], p["axes"], p["keepdims"]
    out = dt.float32 if x._dtype.kind in "biu" else x._dtype
    mag = O.abs(x)
    if ord_ is None or ord_ == "fro" or (ord_ == 2.0 and len(axes) == 1):
        squares = mag * mag if x._dtype.kind == "c" else O.square(x)
        return O.sqrt(O.sum(squares, axis=axes, keepdims=keep))
    if len(axes) == 1:
        if ord_ == 0.0:
            r = O.sum(O.not_equal(x, 0), axis=axes, keepdims=keep)
        elif ord_ == 1.0:
            r = O.sum(mag, axis=axes, keepdims=keep)
        elif ord_ in (float("inf"), float("-inf")):
            r = (O.max if ord_ > 0 else O.min)(mag, axis=axes, keepdims=keep)
        else:
            r = O.power(O.sum(O.power(mag, O.full((), ord_, out)), axis=axes, keepdims=keep),
                        O.full((), 1.0 / ord_, out))
        return O.astype(r, out)
    row, col = axes
    if ord_ in ("nuc", 2.0, -2.0):
        m = O.moveaxis(O.moveaxis(x, row, -1), col, -1) if row > col else \
            O.moveaxis(O.moveaxis(x, col, -1), row, -2)
        sv = svd(m, compute_uv=False)
        r = O.sum(sv, axis=-1) if ord_ == "nuc" else (O.max if ord_ > 0 else O.min)(sv, axis=-1)
        return O.astype(O.expand_dims(r, sorted(axes)) if keep else r, out)
    # Induced 1 / inf norms: sum |x| over one axis, then the max (min for -1 / -inf) over the other.
    inner, outer = (row, col) if abs(ord_) == 1.0 else (col, row)
    r = (O.max if ord_ > 0 else O.min)(O.sum(mag, axis=inner, keepdims=True), axis=outer, keepdims=True)
    return O.astype(r if keep else O.squeeze(r, axis=axes), out)


def _cross_composite(p, a, b):
    """The cross product as MLX composes it from ops (a 2-vector's third component is zero)."""
    from .ops._autodiff import O

    ax = p["axis"]
    sa = O.split(a, a._shape[ax], axis=ax)
    sb = O.split(b, b._shape[ax], axis=ax)
    if len(sa) == 2 and len(sb) == 2:
        zero = O.zeros_like(sa[0])
        parts = [zero, zero, sa[0] * sb[1] - sa[1] * sb[0]]
    elif len(sb) == 2:
        parts = [-(sa[2] * sb[1]), sa[2] * sb[0], sa[0] * sb[1] - sa[1] * sb[0]]
    elif len(sa) == 2:
        parts = [sa[1] * sb[2], -(sa[0] * sb[2]), sa[0] * sb[1] - sa[1] * sb[0]]
    else:
        parts = [sa[1] * sb[2] - sa[2] * sb[1], sa[2] * sb[0] - sa[0] * sb[2], sa[0] * sb[1] - sa[1] * sb[0]]
    return O.concatenate(parts, axis=ax)


def _attach_gradients():
    from .ops import _autodiff as ad

    ad.composite(NORM, _norm_composite)
    ad.composite(CROSS, _cross_composite)
    ad.composite(SLOGDET, _slogdet_composite)


_attach_gradients()

_MATRIX_ORDS = {"fro", "nuc", 1, -1, 2, -2, float("inf"), float("-inf")}


@api(primitive="norm", module="linalg")
def norm(a, /, ord=None, axis=None, keepdims: bool = False, *, stream=None):
    a = to_array(a)
    nd = a.ndim
    if axis is None:
        if ord is not None and nd > 2:
            raise ValueError("[linalg::norm] Received too many axes for norm.")
        axes = tuple(range(nd))
    else:
        axes = (axis,) if isinstance(axis, int) else tuple(axis)
        for ax in axes:
            if not -nd <= ax < nd:
                raise ValueError(f"[linalg::norm] Invalid axis {ax} for array with {nd} dimensions.")
        axes = tuple(ax % nd for ax in axes)
        if len(set(axes)) != len(axes):
            raise ValueError("[linalg::norm] Received duplicate axes.")
    if ord is not None:
        if len(axes) > 2:
            raise ValueError("[linalg::norm] Received too many axes for norm.")
        if len(axes) == 1 and isinstance(ord, str):
            raise ValueError(f"[linalg::norm] Norm '{ord}' only supported for matrices, but received "
                             "1 axis/axes.")
        if len(axes) == 2:
            if isinstance(ord, str) and ord not in _MATRIX_ORDS:
                raise ValueError(f"[linalg::norm] Invalid ord value '{ord}' for matrix norm.")
            if not isinstance(ord, str) and ord not in _MATRIX_ORDS:
                raise ValueError(f"[linalg::norm] Invalid ord {ord} for matrix norm.")
            if ord in ("nuc", 2, -2) and a._dtype not in _WITH_COMPLEX:
                raise DtypeError(f"[linalg::svd] Arrays must have type float32, float64 or complex64. "
                                 f"Received array with type {a._dtype.name}.")
        ord = ord if isinstance(ord, str) else float(ord)
    d = a._dtype
    real_result = ord in (None, "fro", "nuc") or (ord == 2 and len(axes) == 1)
    out = dt.float32 if d.kind in "biu" or (d is dt.complex64 and real_result) else d
    shape = tuple(1 if i in axes else n for i, n in enumerate(a._shape)) if keepdims else \
        tuple(n for i, n in enumerate(a._shape) if i not in axes)
    params = {"ord": ord, "axes": axes, "keepdims": bool(keepdims),
              "half": d.name if d in (dt.float16, dt.bfloat16) else None}
    return _record(NORM, (a,), params, shape, out, stream)
