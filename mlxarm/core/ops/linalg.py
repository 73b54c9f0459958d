"""Products and contractions: matmul, addmm, einsum and the ops built on them (tensordot, inner, outer,
vecdot, kron).

MLX multiplies matrices only in inexact types (integers and booleans are rejected) and accumulates
half-precision products in float32, rounding once at the end; the references here do the same.
"""
from __future__ import annotations

import numpy as np

from ._base import (DtypeError, Primitive, api, broadcast_shapes, cast, dt, fmt_shape, make_node,
                    normalize_axis, register, resolve_stream, to_array)

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


def _parse_einsum(subscripts: str, shapes: list):
    """Explicit subscripts (ellipsis kept), each label's size and the output shape."""
    spec = subscripts.replace(" ", "")
    lhs, arrow, rhs = spec.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise ValueError(f"[einsum] Number of operands, {len(shapes)}, does not match number of input "
                         f"subscripts, {len(terms)}")
    sizes: dict = {}
    ellipsis_shapes = []
    counts: dict = {}
    for i, (term, shape) in enumerate(zip(terms, shapes)):
        labels = term.replace("...", "")
        if not all(ch.isalpha() for ch in labels) or term.count("...") > 1:
            raise ValueError(f"[einsum] Subscripts must be letters, got '{term}'.")
        n_ell = len(shape) - len(labels) if "..." in term else 0
        if n_ell < 0 or ("..." not in term and len(labels) != len(shape)):
            raise ValueError(f"[einsum] Invalid number of subscripts {len(labels)} for input {i} with "
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
                raise ValueError(f"[einsum] Cannot broadcast dimension {axis} of input {i} with shape "
                                 f"{fmt_shape(shape)} to size {have}.")
    ell = broadcast_shapes(*ellipsis_shapes) if ellipsis_shapes else ()
    if arrow:
        out_labels = rhs.replace("...", "")
        for ch in out_labels:
            if ch not in sizes or out_labels.count(ch) > 1:
                raise ValueError(f"[einsum] Output subscript '{ch}' must appear once and in an input.")
        if "..." not in rhs and ell:
            raise ValueError("[einsum] Output must keep the dimensions the ellipsis stands for.")
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
    if a.ndim != b.ndim:
        raise ValueError("[vecdot] axis is out of bounds.")
    nd = a.ndim
    if not -nd <= axis < nd:
        raise IndexError("[vecdot] axis is out of bounds.")
    ax = axis % nd
    if a._shape[ax] != b._shape[ax] and 1 not in (a._shape[ax], b._shape[ax]):
        raise ValueError("[vecdot] a and b must have the same size along axis.")
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
    nd = max(a.ndim, b.ndim)
    sa = (1,) * (nd - a.ndim) + a._shape
    sb = (1,) * (nd - b.ndim) + b._shape
    a_exp = reshape(a, tuple(x for s in sa for x in (s, 1)), stream=stream)
    b_exp = reshape(b, tuple(x for s in sb for x in (1, s)), stream=stream)
    return reshape(multiply(a_exp, b_exp, stream=stream), tuple(x * y for x, y in zip(sa, sb)),
                   stream=stream)
