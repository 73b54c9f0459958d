"""Products and contractions: matmul, addmm, einsum and the ops built on them (tensordot, inner, outer,
vecdot, kron).

MLX multiplies matrices only in inexact types (integers and booleans are rejected) and accumulates
half-precision products in float32, rounding once at the end; the references here do the same.
"""
from __future__ import annotations

import numpy as np

from ._base import (DtypeError, Primitive, api, array, broadcast_shapes, cast, dt, fmt_shape, make_node,
                    normalize_axis, register, resolve_stream, to_array)
from ..errors import AxisError

INEXACT = tuple(d for d in dt.ALL if d.kind in "fc")


def _wide(x: np.ndarray) -> np.ndarray:
    """Half-precision inputs accumulate in float32."""
    return x.astype(np.float32) if x.dtype == np.float16 else x


def sample(rng: np.random.Generator, d, shape, scale: float = 1.0) -> np.ndarray:
    """Random values exactly representable in ``d``, in its compute representation."""
    if d.kind == "b":
        return np.asarray(rng.random(shape) < 0.5)
    if d.kind in "iu":
        return np.asarray(rng.integers(0 if d.kind == "u" else -5, 6, size=shape), dtype=d.np_storage)
    x = np.asarray(rng.standard_normal(shape)) * scale
    if d.kind == "c":
        x = x + 1j * rng.standard_normal(shape) * scale
    x = np.asarray(x, dtype=d.np_compute)
    return np.asarray(dt.bf16_to_f32(dt.f32_to_bf16(x))) if d is dt.bfloat16 else x


def _inexact_check(op: str, a, b, d) -> None:
    if d.kind not in "fc":
        raise DtypeError(f"[{op}] Only inexact types are supported but {a._dtype.name} and {b._dtype.name} "
                         f"were provided which results in {d.name}, which is not a floating point type.")


# --- matmul ----------------------------------------------------------------------------------------

def _matmul_ref(p, a, b):
    return np.matmul(_wide(a), _wide(b))


def _matmul_cases(rng, d):
    if d not in INEXACT:
        return []
    return [
        ("matmul", (sample(rng, d, (3, 4)), sample(rng, d, (4, 5))), {}),
        ("matmul", (sample(rng, d, (2, 1, 3, 4)), sample(rng, d, (3, 4, 2))), {}),
        ("matmul", (sample(rng, d, (4,)), sample(rng, d, (2, 4, 3))), {}),
        ("matmul", (sample(rng, d, (2, 3, 4)), sample(rng, d, (4,))), {}),
        ("matmul", (sample(rng, d, (4,)), sample(rng, d, (4,))), {}),
        ("matmul", (sample(rng, d, (0, 4)), sample(rng, d, (4, 2))), {}),
        ("matmul", (sample(rng, d, (2, 3)), sample(rng, d, (4, 2))), {}),
    ]


MATMUL = register(Primitive("matmul", "linalg", _matmul_ref, dtypes=INEXACT,
                            doc="Batched matrix product (batch dimensions broadcast).",
                            extra={"cases": _matmul_cases}))


def _matmul_shapes(op, sa, sb):
    """Operand shapes as matrices (1-D operands become a row/column) and the output shape."""
    if not sa or not sb:
        raise ValueError(f"[{op}] Got 0 dimension input. Inputs must have at least one dimension.")
    ma = (1,) + sa if len(sa) == 1 else sa
    mb = sb + (1,) if len(sb) == 1 else sb
    if ma[-1] != mb[-2]:
        raise ValueError(f"[{op}] Last dimension of first input with shape {fmt_shape(ma)} must match "
                         f"second to last dimension of second input with shape {fmt_shape(mb)}.")
    batch = broadcast_shapes(ma[:-2], mb[:-2])
    out = batch + ((ma[-2],) if len(sa) > 1 else ()) + ((mb[-1],) if len(sb) > 1 else ())
    return ma, mb, batch + (ma[-2], mb[-1]), out


@api(primitive="matmul")
def matmul(a, b, /, *, stream=None):
    from .shape import reshape

    a, b = to_array(a), to_array(b)
    ma, mb, full, out = _matmul_shapes("matmul", a._shape, b._shape)
    d = dt.promote_types(a._dtype, b._dtype)
    _inexact_check("matmul", a, b, d)
    a, b = cast(a, d, stream), cast(b, d, stream)
    if ma != a._shape:
        a = reshape(a, ma, stream=stream)
    if mb != b._shape:
        b = reshape(b, mb, stream=stream)
    res = make_node(MATMUL, (a, b), None, full, d, resolve_stream(stream))
    return res if full == out else reshape(res, out, stream=stream)


def _addmm_ref(p, c, a, b):
    return p["alpha"] * np.matmul(_wide(a), _wide(b)) + p["beta"] * _wide(c)


def _addmm_cases(rng, d):
    if d not in INEXACT:
        return []
    return [
        ("addmm", (sample(rng, d, (3, 5)), sample(rng, d, (3, 4)), sample(rng, d, (4, 5))), {}),
        ("addmm", (sample(rng, d, (5,)), sample(rng, d, (2, 3, 4)), sample(rng, d, (4, 5))),
         {"alpha": 0.5, "beta": 2.0}),
        ("addmm", (sample(rng, d, (3,)), sample(rng, d, (3, 4)), sample(rng, d, (4,))), {"beta": -1.0}),
        ("addmm", (sample(rng, d, (2, 3, 5)), sample(rng, d, (3, 4)), sample(rng, d, (4, 5))), {}),
    ]


ADDMM = register(Primitive("addmm", "linalg", _addmm_ref, dtypes=INEXACT,
                           doc="alpha * (a @ b) + beta * c in one rounding.",
                           extra={"cases": _addmm_cases}))


@api(primitive="addmm")
def addmm(c, a, b, /, alpha: float = 1.0, beta: float = 1.0, *, stream=None):
    from .shape import reshape

    a, b, c = to_array(a), to_array(b), to_array(c)
    ma, mb, full, out = _matmul_shapes("addmm", a._shape, b._shape)
    d = dt.promote_types(dt.promote_types(a._dtype, b._dtype), c._dtype)
    if d.kind not in "fc":
        raise DtypeError(f"[addmm] Only inexact types are supported but {a._dtype.name} and "
                         f"{b._dtype.name} were provided which results in {d.name}, which is not a "
                         "floating point type.")
    c_out = broadcast_shapes(out, c._shape)
    if c_out != out:
        if d is not dt.complex64:
            raise ValueError("[addmm] input c must broadcast to the output shape")
        # MLX computes complex addmm as alpha * (a @ b) + beta * c, which broadcasts both ways.
        full, out = c_out[:len(c_out) - len(out)] + full, c_out
    a, b, c = cast(a, d, stream), cast(b, d, stream), cast(c, d, stream)
    if ma != a._shape:
        a = reshape(a, ma, stream=stream)
    if mb != b._shape:
        b = reshape(b, mb, stream=stream)
    if full != out and c._shape == out:
        c = reshape(c, full, stream=stream)
    params = {"alpha": float(alpha), "beta": float(beta)}
    res = make_node(ADDMM, (c, a, b), params, full, d, resolve_stream(stream))
    return res if full == out else reshape(res, out, stream=stream)


# --- gather_mm, block_masked_mm, segmented_mm ----------------------------------------------------

def _real_float_check(op, a, b, d):
    if d.kind != "f":
        raise DtypeError(f"[{op}] Only real floating point types are supported but {a._dtype.name} and "
                         f"{b._dtype.name} were provided which results in {d.name}, which is not a real "
                         "floating point type.")


def _gather_mm_ref(p, a, b, lhs, rhs):
    a = np.take(a, lhs.astype(np.int64), axis=0, mode="wrap")
    b = np.take(b, rhs.astype(np.int64), axis=0, mode="wrap")
    return np.matmul(_wide(a), _wide(b))


def _gather_mm_cases(rng, d):
    if d.kind != "f":
        return []
    idx = lambda *shape, hi: rng.integers(0, hi, size=shape).astype(np.uint32)  # noqa: E731
    return [
        ("gather_mm", (sample(rng, d, (3, 2, 4)), sample(rng, d, (2, 4, 5)), idx(4, hi=3), idx(4, hi=2)), {}),
        ("gather_mm", (sample(rng, d, (2, 3, 4)), sample(rng, d, (5, 4, 2)), None, idx(2, hi=5)), {}),
        ("gather_mm", (sample(rng, d, (2, 2, 3, 4)), sample(rng, d, (4, 2)), idx(3, 1, hi=4), None), {}),
        ("gather_mm", (sample(rng, d, (4,)), sample(rng, d, (3, 4, 5)), None, idx(2, hi=3)), {}),
        ("gather_mm", (sample(rng, d, (2, 1, 4)), sample(rng, d, (3, 4, 5)), None, idx(2, hi=3)),
         {"sorted_indices": True}),
    ]


GATHER_MM = register(Primitive("gather_mm", "linalg", _gather_mm_ref,
                               dtypes=tuple(d for d in INEXACT if d.kind == "f"),
                               doc="Matrix products of operand matrices picked by index (batch gather).",
                               # MLX's CPU computes it in float32 only; its GPUs take half precision
                               extra={"cases": _gather_mm_cases,
                                      "beyond_mlx_cpu": ("float16", "bfloat16", "float64")}))


def _gather_mm_as_ops(p, a, b, lhs, rhs):
    from .indexing import take

    return matmul(take(a, lhs, axis=0), take(b, rhs, axis=0))


def _gather_mm_vjp(node, cot, argnums):
    if any(i >= 2 for i in argnums):
        raise ValueError("[GatherMM] Cannot calculate VJP with respect to indices. Use stop_gradient on "
                         "indices to stop gradients from being computed.")
    from ..transforms import vjp_flat

    return vjp_flat(lambda xs: [_gather_mm_as_ops(None, *xs)], list(node._inputs), [cot], argnums)[1]


def _gather_mm_jvp(node, tangents, argnums):
    from ..transforms import jvp_flat
    from .creation import zeros_like

    full = [zeros_like(x) for x in node._inputs]
    for i, t in zip(argnums, tangents):
        full[i] = t
    return jvp_flat(lambda xs: [_gather_mm_as_ops(None, *xs)], list(node._inputs), full)[1][0]


GATHER_MM.vjp, GATHER_MM.jvp = _gather_mm_vjp, _gather_mm_jvp


def _batch_index(idx, batch, op, stream):
    """Indices into the flattened batch of an operand (all of it, in order, when None)."""
    if idx is None:
        from .creation import arange
        from .shape import reshape

        n = 1
        for s in batch:
            n *= s
        return reshape(arange(n, dtype=dt.uint32, stream=stream), batch, stream=stream)
    idx = to_array(idx)
    if idx._dtype.kind not in "iu":
        raise ValueError(f"[{op}] Got indices with invalid dtype. Indices must be integral.")
    return idx


@api(primitive="gather_mm")
def gather_mm(a, b, /, lhs_indices=None, rhs_indices=None, *, sorted_indices: bool = False, stream=None):
    from .shape import broadcast_to, reshape

    a, b = to_array(a), to_array(b)
    if lhs_indices is None and rhs_indices is None:
        return matmul(a, b, stream=stream)
    if not a.ndim or not b.ndim:
        raise ValueError("[matmul] Got 0 dimension input. Inputs must have at least one dimension.")
    # Batches are gathered, not broadcast: only the matrix dimensions must agree.
    ma = (1,) + a._shape if a.ndim == 1 else a._shape
    mb = b._shape + (1,) if b.ndim == 1 else b._shape
    if ma[-1] != mb[-2]:
        raise ValueError(f"[gather_mm] Last dimension of first input with shape {fmt_shape(ma)} must match "
                         f"second to last dimension of second input with shape {fmt_shape(mb)}.")
    d = dt.promote_types(a._dtype, b._dtype)
    _real_float_check("gather_mm", a, b, d)
    lhs = _batch_index(lhs_indices, ma[:-2], "gather_mm", stream)
    rhs = _batch_index(rhs_indices, mb[:-2], "gather_mm", stream)
    idx_shape = broadcast_shapes(lhs._shape, rhs._shape)
    out_shape = idx_shape + ((ma[-2],) if a.ndim > 1 else ()) + ((mb[-1],) if b.ndim > 1 else ())
    # stacks of matrices as they are (a shapeless replay keeps their shapes following the inputs)
    a = cast(a, d, stream)
    a = a if a.ndim == 3 else reshape(a, (-1,) + ma[-2:], stream=stream)
    b = cast(b, d, stream)
    b = b if b.ndim == 3 else reshape(b, (-1,) + mb[-2:], stream=stream)
    lhs = broadcast_to(lhs, idx_shape, stream=stream)
    rhs = broadcast_to(rhs, idx_shape, stream=stream)
    full = idx_shape + (ma[-2], mb[-1])
    out = make_node(GATHER_MM, (a, b, lhs, rhs), None, full, d, resolve_stream(stream))
    return out if full == out_shape else reshape(out, out_shape, stream=stream)


def _block_mask(mask, batch, block, rows, cols, dtype, stream):
    """A block mask (..., ceil(rows/block), ceil(cols/block)) spread over the elements it covers."""
    from .shape import broadcast_to, reshape

    mask = to_array(mask)
    tiles = (-(-rows // block), -(-cols // block))
    target = batch + tiles
    broadcast_shapes(mask._shape, target)
    mask = broadcast_to(mask, target, stream=stream)
    if mask._dtype is not dt.bool_:
        mask = cast(mask, dtype, stream)
    mask = reshape(mask, batch + (tiles[0], 1, tiles[1], 1), stream=stream)
    mask = broadcast_to(mask, batch + (tiles[0], block, tiles[1], block), stream=stream)
    mask = reshape(mask, batch + (tiles[0] * block, tiles[1] * block), stream=stream)
    if tiles[0] * block != rows or tiles[1] * block != cols:
        mask = mask[..., :rows, :cols]
    return mask


def _apply_mask(x, mask):
    """Boolean masks select (a masked-out inf stays out); numeric masks scale."""
    from .elementwise import multiply, where

    if mask._dtype is dt.bool_:
        return where(mask, x, array(0, x._dtype))
    return multiply(x, mask)


@api()
def block_masked_mm(a, b, /, block_size: int = 64, mask_out=None, mask_lhs=None, mask_rhs=None, *,
                    stream=None):
    from .shape import reshape

    a, b = to_array(a), to_array(b)
    if mask_out is None and mask_lhs is None and mask_rhs is None:
        return matmul(a, b, stream=stream)
    ma, mb, _, out_shape = _matmul_shapes("matmul", a._shape, b._shape)
    d = dt.promote_types(a._dtype, b._dtype)
    _real_float_check("block_masked_mm", a, b, d)
    if block_size not in (32, 64):
        raise ValueError(f"[block_masked_mm] Only block_sizes 32, 64 are supported.Got block size "
                         f"{block_size}.")
    if d is not dt.float32:
        raise RuntimeError("[BlockMaskedMM::eval] Currently only supports float32.")
    a = reshape(cast(a, d, stream), ma, stream=stream)
    b = reshape(cast(b, d, stream), mb, stream=stream)
    batch = broadcast_shapes(ma[:-2], mb[:-2])
    m, k, n = ma[-2], ma[-1], mb[-1]
    block = int(block_size)
    if mask_lhs is not None:
        a = _apply_mask(a, _block_mask(mask_lhs, batch, block, m, k, d, stream))
    if mask_rhs is not None:
        b = _apply_mask(b, _block_mask(mask_rhs, batch, block, k, n, d, stream))
    out = matmul(a, b, stream=stream)
    if mask_out is not None:
        out = _apply_mask(out, _block_mask(mask_out, batch, block, m, n, d, stream))
    return out if out._shape == out_shape else reshape(out, out_shape, stream=stream)


def _segmented_mm_ref(p, a, b, segments):
    k = min(a.shape[-1], b.shape[0])
    flat = segments.reshape(-1, 2).astype(np.int64)
    # Offsets are unsigned in MLX: a negative one is past the end.
    flat = np.where(flat < 0, k, np.minimum(flat, k))
    out = np.zeros((len(flat),) + (a.shape[0], b.shape[1]), dtype=np.result_type(_wide(a), _wide(b)))
    for i, (lo, hi) in enumerate(flat):
        if hi > lo:
            out[i] = _wide(a[:, lo:hi]) @ _wide(b[lo:hi])
    return out.reshape(segments.shape[:-1] + out.shape[1:])


def _segmented_mm_cases(rng, d):
    # MLX's half-precision CPU kernel misplaces every output row after the first.
    if d not in (dt.float32, dt.float64):
        return []
    segs = np.array([[0, 3], [3, 3], [1, 7], [4, 8]], dtype=np.uint32)
    return [("segmented_mm", (sample(rng, d, (3, 8)), sample(rng, d, (8, 2)), segs), {}),
            ("segmented_mm", (sample(rng, d, (2, 8)), sample(rng, d, (8, 4)), segs.reshape(2, 2, 2)), {}),
            ("segmented_mm", (sample(rng, d, (2, 5)), sample(rng, d, (5, 3)), np.array([0, 5], np.int32)), {})]


SEGMENTED_MM = register(Primitive("segmented_mm", "linalg", _segmented_mm_ref,
                                  dtypes=tuple(x for x in INEXACT if x.kind == "f"),
                                  doc="One product per segment [start, end) of the inner dimension.",
                                  extra={"cases": _segmented_mm_cases}))


@api(primitive="segmented_mm")
def segmented_mm(a, b, /, segments, *, stream=None):
    a, b, segments = to_array(a), to_array(b), to_array(segments)
    d = dt.promote_types(a._dtype, b._dtype)
    _real_float_check("segmented_mm", a, b, d)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError("[segmented_mm] Batched matmul not supported")
    if segments._dtype.kind not in "iu":
        raise ValueError("[segmented_mm] Got segments with invalid dtype. Segments must be integral.")
    if segments.ndim < 1 or segments._shape[-1] != 2:
        raise ValueError(f"[segmented_mm] The segments should have shape (..., 2) but "
                         f"{fmt_shape(segments._shape)} was provided.")
    a, b = cast(a, d, stream), cast(b, d, stream)
    shape = segments._shape[:-1] + (a._shape[0], b._shape[1])
    return make_node(SEGMENTED_MM, (a, b, segments), None, shape, d, resolve_stream(stream))


@api()
def matrix_norm(a, /, ord=None, axis=None, keepdims: bool = False, *, stream=None):
    """``mlx.core.linalg.norm`` under its top-level name."""
    from ..linalg import norm

    return norm(a, ord, axis, keepdims, stream=stream)


# --- einsum --------------------------------------------------------------------------------------

def _einsum_ref(p, *xs):
    acc = np.dtype(p["acc"])
    xs = [x.astype(acc) if x.dtype != acc else x for x in xs]
    return np.einsum(p["subscripts"], *xs, optimize=len(xs) > 2)


def _einsum_cases(rng, d):
    floats = d in INEXACT
    out = [
        ("einsum", ("ii->i", sample(rng, d, (3, 3))), {}),
        ("einsum", ("ij->", sample(rng, d, (2, 3))), {}),
        ("einsum", ("ij,ij->ij", sample(rng, d, (2, 1)), sample(rng, d, (1, 3))), {}),
        ("einsum", ("i,j", sample(rng, d, (2,)), sample(rng, d, (3,))), {}),
        ("einsum", ("ij->ji", sample(rng, d, (2, 3))), {}),
        ("einsum", ("ij,j->i", sample(rng, d, (2, 3)), sample(rng, d, (3,))), {}),
    ]
    if floats:
        out += [
            ("einsum", ("ij,jk", sample(rng, d, (2, 3)), sample(rng, d, (3, 4))), {}),
            ("einsum", ("...ij,...jk->...ik", sample(rng, d, (5, 2, 3)), sample(rng, d, (3, 4))), {}),
            ("einsum", ("ij,jk,kl->il", sample(rng, d, (2, 3)), sample(rng, d, (3, 4)),
                        sample(rng, d, (4, 2))), {}),
            ("einsum", ("bij,bkj->bik", sample(rng, d, (2, 3, 4)), sample(rng, d, (2, 5, 4))), {}),
        ]
    return out


EINSUM = register(Primitive("einsum", "linalg", _einsum_ref, dtypes=tuple(dt.ALL),
                            doc="Einstein summation over any number of operands.",
                            extra={"cases": _einsum_cases}))

_SUM_DTYPE = {dt.bool_: dt.int32, dt.int8: dt.int32, dt.int16: dt.int32, dt.uint8: dt.uint32,
              dt.uint16: dt.uint32}


def _parse_einsum(subscripts: str, shapes: list, op: str = "einsum"):
    """Explicit subscripts (ellipsis kept), each label's size and the output shape."""
    spec = subscripts.replace(" ", "")
    lhs, arrow, rhs = spec.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise ValueError(f"[{op}] Number of operands, {len(shapes)}, does not match number of input "
                         f"subscripts, {len(terms)}")
    sizes: dict = {}
    ellipsis_shapes = []
    counts: dict = {}
    for i, (term, shape) in enumerate(zip(terms, shapes)):
        labels = term.replace("...", "")
        if not all(ch.isalpha() for ch in labels) or term.count("...") > 1:
            raise ValueError(f"[{op}] Subscripts must be letters, got '{term}'.")
        n_ell = len(shape) - len(labels) if "..." in term else 0
        if n_ell < 0 or ("..." not in term and len(labels) != len(shape)):
            raise ValueError(f"[{op}] Invalid number of subscripts {len(labels)} for input {i} with "
                             f"{len(shape)} dimensions.")
        pos = term.find("...")
        dims = list(shape)
        if pos >= 0:
            ellipsis_shapes.append(tuple(dims[pos:pos + n_ell]))
            del dims[pos:pos + n_ell]
        for j, (ch, n) in enumerate(zip(labels, dims)):
            counts[ch] = counts.get(ch, 0) + 1
            have = sizes.get(ch)
            if have is None or have == 1:
                sizes[ch] = n
            elif n != have and n != 1:
                axis = j + (n_ell if 0 <= pos <= term.index(ch) else 0)
                raise ValueError(f"[{op}] Cannot broadcast dimension {axis} of input {i} with shape "
                                 f"{fmt_shape(shape)} to size {have}.")
    ell = broadcast_shapes(*ellipsis_shapes) if ellipsis_shapes else ()
    if arrow:
        out_labels = rhs.replace("...", "")
        for ch in out_labels:
            if ch not in sizes or out_labels.count(ch) > 1:
                raise ValueError(f"[{op}] Output subscript '{ch}' must appear once and in an input.")
        if "..." not in rhs and ell:
            raise ValueError(f"[{op}] Output must keep the dimensions the ellipsis stands for.")
    else:
        rhs = ("..." if ellipsis_shapes else "") + "".join(sorted(c for c in counts if counts[c] == 1))
    head, _, tail = rhs.partition("...")
    out_shape = [sizes[c] for c in head] + (list(ell) if "..." in rhs else []) + [sizes[c] for c in tail]
    return terms, rhs, sizes, tuple(out_shape)


@api(primitive="einsum")
def einsum(subscripts: str, *operands, stream=None):
    return _einsum(subscripts, [to_array(o) for o in operands], True, stream)


def _einsum(subscripts: str, ops: list, matmul_rules: bool, stream):
    """``matmul_rules``: contracting across operands requires inexact types (MLX's einsum contracts
    through matmul; vecdot does not)."""
    from .shape import broadcast_to

    terms, rhs, sizes, out_shape = _parse_einsum(subscripts, [o._shape for o in ops])
    d = ops[0]._dtype
    for o in ops[1:]:
        d = dt.promote_types(d, o._dtype)
    out_labels = set(rhs)
    contracted = any(sum(ch in t for t in terms) > 1 and ch not in out_labels for ch in sizes)
    if contracted and matmul_rules:
        _inexact_check("matmul", ops[0], ops[-1] if len(ops) > 1 else ops[0], d)
    summed = contracted or any(ch not in out_labels for ch in sizes)
    out_dtype = _SUM_DTYPE.get(d, d) if summed else d
    acc = np.dtype(np.float32) if d in (dt.float16, dt.bfloat16) else out_dtype.np_compute
    inputs = []
    for t, o in zip(terms, ops):
        o = cast(o, d, stream)
        if "..." not in t:
            want = tuple(sizes[c] for c in t)
            if want != o._shape:
                o = broadcast_to(o, want, stream=stream)
        inputs.append(o)
    params = {"subscripts": ",".join(terms) + "->" + rhs, "acc": acc.str}
    return make_node(EINSUM, tuple(inputs), params, out_shape, out_dtype, resolve_stream(stream))


# --- einsum_path: MLX's greedy contraction order (after opt_einsum's) ---------------------------------

def _term_size(labels, dims) -> int:
    n = 1
    for c in labels:
        n *= dims[c]
    return n


def _flop_count(labels, inner: bool, n_terms: int, dims) -> int:
    return _term_size(labels, dims) * (max(1, n_terms - 1) + inner)


def _naive_cost(inputs, output, dims):
    labels = frozenset().union(*inputs)
    return _flop_count(labels, bool(labels - output), len(inputs), dims), len(labels)


def _greedy_path(inputs, output, dims, cost_limit, memory_limit):
    """Repeatedly contract the pair that removes the most elements (cheapest on ties), skipping outer
    products while any other pair is possible. Candidates found in earlier rounds are kept, so only
    pairs with the newest intermediate are scored each round."""
    inputs = list(inputs)
    pairs = [(i, j) for i in range(len(inputs)) for j in range(i + 1, len(inputs))]
    candidates = []  # (removed size, cost, result labels, number of labels, x, y)
    path, path_cost, scaling = [], 0, 0

    def consider(x, y):
        union = inputs[x] | inputs[y]
        keep = frozenset(c for c in union if c in output or any(
            c in t for k, t in enumerate(inputs) if k != x and k != y))
        size = _term_size(keep, dims)
        if size > memory_limit:
            return
        cost = _flop_count(union, len(union) > len(keep), 2, dims)
        if path_cost + cost > cost_limit:
            return
        removed = _term_size(inputs[x], dims) + _term_size(inputs[y], dims) - size
        candidates.append((removed, cost, keep, len(union), x, y))

    for _ in range(len(inputs) - 1):
        for x, y in pairs:
            if inputs[x] & inputs[y]:
                consider(x, y)
        if not candidates:
            for x, y in pairs:
                consider(x, y)
        if not candidates:
            cost, n_labels = _naive_cost(inputs, output, dims)
            path.append(tuple(range(len(inputs))))
            path_cost += cost
            scaling = max(scaling, n_labels)
            break
        best = min(candidates, key=lambda c: (-c[0], c[1]))
        removed, cost, keep, n_labels, bx, by = best
        scaling = max(scaling, n_labels)
        path.append((bx, by))
        del inputs[by], inputs[bx]
        inputs.append(keep)
        candidates = [(r, c, k, n, x - (x > bx) - (x > by), y - (y > bx) - (y > by))
                      for r, c, k, n, x, y in candidates if not {x, y} & {bx, by}]
        pairs = [(i, len(inputs) - 1) for i in range(len(inputs) - 1)]
        path_cost += cost
    return path, path_cost, scaling


def _expand_ellipses(terms, rhs, shapes, subscripts):
    """Each ``...`` replaced by unused letters (the last ones, so shorter ellipses broadcast)."""
    used = set(subscripts)
    spare = [c for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in used]
    longest = 0
    out = []
    for term, shape in zip(terms, shapes):
        if "..." in term:
            n = len(shape) - len(term) + 3
            longest = max(longest, n)
            term = term.replace("...", "".join(spare[len(spare) - n:]))
        out.append(term)
    return out, rhs.replace("...", "".join(spare[len(spare) - longest:]))


@api()
def einsum_path(subscripts: str, *operands):
    ops = [to_array(o) for o in operands]
    if not ops:
        raise ValueError("[einsum_path] At least one operand is required.")
    shapes = [o._shape for o in ops]
    terms, rhs, _, _ = _parse_einsum(subscripts, shapes, "einsum_path")
    terms, rhs = _expand_ellipses(terms, rhs, shapes, subscripts.replace(" ", ""))
    dims: dict = {}
    for term, shape in zip(terms, shapes):
        for c, n in zip(term, shape):
            dims[c] = max(dims.get(c, 1), n)
    inputs = [frozenset(t) for t in terms]
    output = frozenset(rhs)
    naive_cost, naive_scaling = _naive_cost(inputs, output, dims)
    if len(inputs) <= 2:
        path, cost, scaling = [tuple(range(len(inputs)))], naive_cost, naive_scaling
    else:
        memory_limit = max(_term_size(t, dims) for t in terms + [rhs])
        path, cost, scaling = _greedy_path(inputs, output, dims, naive_cost, memory_limit)
    info = (f"  Complete contraction:  {subscripts}\n"
            f"         Naive scaling:  {naive_scaling}\n"
            f"     Optimized scaling:  {scaling}\n"
            f"      Naive FLOP count:  {naive_cost}\n"
            f"  Optimized FLOP count:  {cost}\n")
    return path, info


# --- ops built on matmul and einsum ----------------------------------------------------------------

def _axes_list(ax, ndim, op):
    if isinstance(ax, int):
        ax = [ax]
    return [normalize_axis(int(x), ndim, op) for x in ax]


@api()
def tensordot(a, b, /, axes=2, *, stream=None):
    from .shape import reshape, transpose

    a, b = to_array(a), to_array(b)
    if isinstance(axes, int):
        if axes < 0:
            raise ValueError("[tensordot] axis must be greater or equal to 0.")
        if axes > min(a.ndim, b.ndim):
            raise ValueError("[tensordot] axis must be less than the number of dimensions of a and b.")
        ax_a = list(range(a.ndim - axes, a.ndim))
        ax_b = list(range(axes))
    else:
        if (not isinstance(axes, (list, tuple)) or len(axes) != 2
                or any(not isinstance(x, (list, tuple)) for x in axes)):
            raise TypeError("tensordot(): axes must be an int or a list of two sequences of ints.")
        if len(axes[0]) != len(axes[1]):
            raise ValueError("[tensordot] axes must have the same size.")
        ax_a = _axes_list(axes[0], a.ndim, "tensordot")
        ax_b = _axes_list(axes[1], b.ndim, "tensordot")
    if any(a._shape[i] != b._shape[j] for i, j in zip(ax_a, ax_b)):
        raise ValueError("[tensordot] a and b must have the same shape on the contracted axes.")
    free_a = [i for i in range(a.ndim) if i not in ax_a]
    free_b = [j for j in range(b.ndim) if j not in ax_b]
    k = 1
    for i in ax_a:
        k *= a._shape[i]
    m_shape = [a._shape[i] for i in free_a]
    n_shape = [b._shape[j] for j in free_b]
    m = int(np.prod(m_shape, dtype=np.int64))
    n = int(np.prod(n_shape, dtype=np.int64))
    a2 = reshape(transpose(a, free_a + ax_a, stream=stream), (m, k), stream=stream)
    b2 = reshape(transpose(b, ax_b + free_b, stream=stream), (k, n), stream=stream)
    return reshape(matmul(a2, b2, stream=stream), tuple(m_shape + n_shape), stream=stream)


@api()
def inner(a, b, /, *, stream=None):
    from .elementwise import multiply

    a, b = to_array(a), to_array(b)
    if a.ndim == 0 or b.ndim == 0:
        return multiply(a, b, stream=stream)
    if a._shape[-1] != b._shape[-1]:
        raise ValueError("[inner] a and b must have the same last dimension.")
    return tensordot(a, b, [[-1], [-1]], stream=stream)


@api()
def outer(a, b, /, *, stream=None):
    from .elementwise import multiply
    from .shape import reshape

    a, b = to_array(a), to_array(b)
    return multiply(reshape(a, (-1, 1), stream=stream), reshape(b, (1, -1), stream=stream), stream=stream)


@api()
def vecdot(a, b, /, *, axis: int = -1, stream=None):
    from .elementwise import conjugate

    a, b = to_array(a), to_array(b)
    if not a.ndim or not b.ndim:
        raise ValueError("[vecdot] inputs must be at least 1D.")
    nd = a.ndim
    if not -nd <= axis < nd:
        raise AxisError("[vecdot] axis is out of bounds.")
    if not -b.ndim <= axis < b.ndim:
        raise ValueError("[vecdot] axis is out of bounds.")
    ax = axis % nd
    if a._shape[ax] != b._shape[axis % b.ndim]:
        raise ValueError("[vecdot] a and b must have the same size along axis.")
    broadcast_shapes(a._shape, b._shape)
    if a.ndim != b.ndim:
        raise ValueError("[vecdot] axis is out of bounds.")
    labels = "".join(chr(ord("a") + i) for i in range(nd))
    out = labels[:ax] + labels[ax + 1:]
    if a._dtype is dt.complex64 or b._dtype is dt.complex64:
        a = conjugate(a, stream=stream)
    return _einsum(f"{labels},{labels}->{out}", [a, b], False, stream)


@api()
def kron(a, b, *, stream=None):
    from .elementwise import multiply
    from .shape import reshape

    a, b = to_array(a), to_array(b)
    if a.size == 0 or b.size == 0:
        raise ValueError("[kron] Input arrays cannot be empty.")
    nd = max(a.ndim, b.ndim)
    sa = (1,) * (nd - a.ndim) + a._shape
    sb = (1,) * (nd - b.ndim) + b._shape
    a_exp = reshape(a, tuple(x for s in sa for x in (s, 1)), stream=stream)
    b_exp = reshape(b, tuple(x for s in sb for x in (1, s)), stream=stream)
    return reshape(multiply(a_exp, b_exp, stream=stream), tuple(x * y for x, y in zip(sa, sb)),
                   stream=stream)


# --- gradient rules -----------------------------------------------------------------------------

def _attach_gradients():
    from ._autodiff import O, conj, unbroadcast

    def mT(x):
        return O.swapaxes(x, -1, -2)

    def matmul_vjp(node, cot, argnums):
        a, b = node._inputs
        return [unbroadcast(O.matmul(cot, conj(mT(b))), a._shape) if i == 0
                else unbroadcast(O.matmul(conj(mT(a)), cot), b._shape) for i in argnums]

    def matmul_jvp(node, tangents, argnums):
        a, b = node._inputs
        out = None
        for i, t in zip(argnums, tangents):
            term = O.matmul(t, b) if i == 0 else O.matmul(a, t)
            out = term if out is None else out + term
        return out

    MATMUL.vjp, MATMUL.jvp = matmul_vjp, matmul_jvp

    def addmm_vjp(node, cot, argnums):
        c, a, b = node._inputs
        alpha, beta = node._params["alpha"], node._params["beta"]
        out = []
        for i in argnums:
            if i == 0:
                out.append(unbroadcast(cot * beta, c._shape))
            elif i == 1:
                out.append(unbroadcast(O.matmul(cot, conj(mT(b))) * alpha, a._shape))
            else:
                out.append(unbroadcast(O.matmul(conj(mT(a)), cot) * alpha, b._shape))
        return out

    def addmm_jvp(node, tangents, argnums):
        c, a, b = node._inputs
        alpha, beta = node._params["alpha"], node._params["beta"]
        out = None
        for i, t in zip(argnums, tangents):
            if i == 0:
                term = O.broadcast_to(t * beta, node._shape)
            elif i == 1:
                term = O.matmul(t, b) * alpha
            else:
                term = O.matmul(a, t) * alpha
            out = term if out is None else out + term
        return out

    ADDMM.vjp, ADDMM.jvp = addmm_vjp, addmm_jvp

    def einsum_vjp(node, cot, argnums):
        lhs, rhs = node._params["subscripts"].split("->")
        terms = lhs.split(",")
        xs = node._inputs
        out = []
        for i in argnums:
            sub = terms[i]
            letters = sub.replace("...", "")
            if len(set(letters)) != len(letters):
                raise ValueError("[einsum] vjp of an operand with a repeated subscript is not supported.")
            others = [t for j, t in enumerate(terms) if j != i]
            seen = set(rhs) | set("".join(others))
            kept = "".join(c for c in sub.replace("...", "\0") if c in seen or c == "\0").replace("\0", "...")
            spec = ",".join([rhs] + others) + "->" + kept
            g = O.einsum(spec, cot, *[conj(x) for j, x in enumerate(xs) if j != i])
            x = xs[i]
            if kept != sub:
                shape = []
                pos = 0
                for c in sub.replace("...", "\0"):
                    if c == "\0":
                        n = x.ndim - len(letters)
                        shape.extend(g._shape[pos:pos + n])
                        pos += n
                    elif c in seen:
                        shape.append(g._shape[pos])
                        pos += 1
                    else:
                        shape.append(1)
                g = O.broadcast_to(O.reshape(g, tuple(shape)), x._shape)
            out.append(unbroadcast(g, x._shape))
        return out

    def einsum_jvp(node, tangents, argnums):
        spec = node._params["subscripts"]
        out = None
        for i, t in zip(argnums, tangents):
            ops = list(node._inputs)
            ops[i] = t
            term = O.einsum(spec, *ops)
            out = term if out is None else out + term
        return out

    EINSUM.vjp, EINSUM.jvp = einsum_vjp, einsum_jvp


_attach_gradients()
