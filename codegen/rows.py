"""Row kernels: softmax, rms_norm and layer_norm over the last axis of a contiguous float32 array,
each one LLVM function that reads a row from memory once per pass and keeps its statistics in
registers (fusion alone would write the row's max/sum/mean to memory and read the row again per
kernel).

A ``RowKernel`` names the operation, the row length and its options; ``render`` gives LLVM IR text
with the same calling convention as every kernel, ``void @name(ptr %args, i64 %start, i64 %end)``:
``args`` holds the output, the input, then the optional weight and bias; [start, end) are rows.
Arithmetic is float32 throughout, as the numpy references compute it. The norms also take float16 and
bfloat16 rows (input, weight, bias and output all of one dtype, as the API casts them): widened as they
are loaded, rounded once as they are stored, as the reference's float32 result is cast. Softmax stays
float32 (it keeps its exponentials in the output between passes).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from .render_llvm import _STORAGE, _Body, _Lanes, counted_loops
from .target import Target

OPS = ("softmax", "rms_norm", "layer_norm")


@dataclass(frozen=True)
class RowKernel:
    op: str  # one of OPS
    n: int  # row length
    eps: float = 0.0
    weight: bool = False
    bias: bool = False
    width: int = 8  # vector lanes
    dtype: str = "float32"  # of the rows in memory (NORM_DTYPES for the norms)

    @property
    def name(self) -> str:
        eps = "%016x" % struct.unpack("<Q", struct.pack("<d", self.eps))[0]
        kind = "" if self.dtype == "float32" else f"_{self.dtype}"
        return f"row_{self.op}_{self.n}_{eps}_{int(self.weight)}{int(self.bias)}_{self.width}{kind}"


NORM_DTYPES = ("float32", "float16", "bfloat16")


class _Row:
    """Loops over one row: a vector loop of ``width`` lanes, then a scalar tail."""

    def __init__(self, body: _Body, k: RowKernel):
        self.b = body
        self.k = k
        self.vec = _Lanes(body, k.width)
        self.sca = _Lanes(body, None)
        self.loops = 0

    def loop(self, emit) -> None:
        """``emit(lanes, j)`` once for the vector body and once for the scalar tail."""
        self.loops += 1
        tag = f"L{self.loops}"
        slot = f"%{tag}.j"
        self.b.raw(f"store i64 0, ptr {slot}, align 8")
        counted_loops(self.b, slot, self.k.n, [(self.k.width, f"{tag}.v", f"{tag}.vb", lambda j: emit(self.vec, j)),
                                               (1, f"{tag}.s", f"{tag}.sb", lambda j: emit(self.sca, j))], f"{tag}.end")

    def load(self, lanes: _Lanes, ptr: str, j: str) -> str:
        """Elements j.. of a row, as float32."""
        st = _STORAGE[self.k.dtype]
        p = self.b.emit(f"getelementptr {st}, ptr {ptr}, i64 {j}")
        raw = self.b.emit(f"load {lanes.ty(st)}, ptr {p}, align {2 if st != 'float' else 4}")
        return lanes.to_compute_scalar_or_vector(raw, self.k.dtype, scalar=False)

    def store(self, lanes: _Lanes, ptr: str, j: str, v: str) -> None:
        """Store float32 ``v`` at elements j.. of a row, rounded to the row's dtype."""
        st = _STORAGE[self.k.dtype]
        p = self.b.emit(f"getelementptr {st}, ptr {ptr}, i64 {j}")
        self.b.raw(f"store {lanes.ty(st)} {lanes.stored(v, self.k.dtype)}, ptr {p}, align {2 if st != 'float' else 4}")


def _accumulate(row: _Row, acc: str, x_of, combine) -> str:
    """Reduce ``x_of(lanes, j)`` over the row into a scalar: vector and scalar accumulators (in
    allocas ``acc``.v / ``acc``.s), combined by ``combine(lanes, a, b)`` and at the end."""
    b = row.b

    def step(lanes, j):
        slot = f"%{acc}.v" if lanes is row.vec else f"%{acc}.s"
        cur = b.emit(f"load {lanes.ty('float')}, ptr {slot}")
        b.raw(f"store {lanes.ty('float')} {combine(lanes, cur, x_of(lanes, j))}, ptr {slot}")

    row.loop(step)
    v = b.emit(f"load {row.vec.ty('float')}, ptr %{acc}.v")
    s = b.emit(f"load float, ptr %{acc}.s")
    total = s
    for i in range(row.k.width):
        lane = b.emit(f"extractelement {row.vec.ty('float')} {v}, i64 {i}")
        total = combine(row.sca, total, lane)
    return total


def render(k: RowKernel, target: Target) -> str:
    assert k.dtype == "float32" or (k.op != "softmax" and k.dtype in NORM_DTYPES)
    b = _Body(set())
    row = _Row(b, k)
    vec, sca = row.vec, row.sca
    names = ["out", "x"] + (["w"] if k.weight else []) + (["bias"] if k.bias else [])
    base = {}
    for i, name in enumerate(names):
        slot = b.emit(f"getelementptr ptr, ptr %args, i64 {i}")
        base[name] = b.emit(f"load ptr, ptr {slot}, align 8")
    accs = ("m", "s", "q")
    for a in accs:
        b.raw(f"%{a}.v = alloca {vec.ty('float')}")
        b.raw(f"%{a}.s = alloca float")
    for i in range(1, 5):
        b.raw(f"%L{i}.j = alloca i64, align 8")
    b.raw("%r.slot = alloca i64, align 8")
    b.raw("store i64 %start, ptr %r.slot, align 8")
    b.raw("br label %row")
    b.raw("row:")
    r = b.emit("load i64, ptr %r.slot, align 8")
    b.raw(f"br i1 {b.emit('icmp sge i64 ' + r + ', %end')}, label %exit, label %rowbody")
    b.raw("rowbody:")
    off = b.emit(f"mul i64 {r}, {k.n}")
    x = b.emit(f"getelementptr {_STORAGE[k.dtype]}, ptr {base['x']}, i64 {off}")
    out = b.emit(f"getelementptr {_STORAGE[k.dtype]}, ptr {base['out']}, i64 {off}")

    def reset(acc, value):
        b.raw(f"store {vec.ty('float')} {vec.fk(value)}, ptr %{acc}.v")
        b.raw(f"store float {sca.fk(value)}, ptr %{acc}.s")

    def add(lanes, a, c):
        return lanes.fadd(a, c)

    def load_x(lanes, j):
        return row.load(lanes, x, j)

    if k.op == "softmax":
        reset("m", float("-inf"))
        peak = _accumulate(row, "m", load_x, lambda lanes, a, c: lanes.fcall("maximum", a, c))
        reset("s", 0.0)

        def exp_and_store(lanes, j):
            e = lanes.exp(lanes.fsub(row.load(lanes, x, j), lanes.splat("float", peak)))
            row.store(lanes, out, j, e)
            return e

        total = _accumulate(row, "s", exp_and_store, add)
        row.loop(lambda lanes, j: row.store(lanes, out, j, lanes.fdiv(row.load(lanes, out, j),
                                                                      lanes.splat("float", total))))
    else:
        shift = None
        if k.op == "layer_norm":
            reset("m", 0.0)
            shift = sca.fdiv(_accumulate(row, "m", load_x, add), sca.fk(float(k.n)))

        def centered(lanes, j):
            v = row.load(lanes, x, j)
            return v if shift is None else lanes.fsub(v, lanes.splat("float", shift))

        reset("q", 0.0)
        squares = _accumulate(row, "q", lambda lanes, j: lanes.fmul(centered(lanes, j), centered(lanes, j)), add)
        var = sca.fadd(sca.fdiv(squares, sca.fk(float(k.n))), sca.fk(k.eps))
        root = sca.fcall("sqrt", var)

        def normalize(lanes, j):
            v = lanes.fdiv(centered(lanes, j), lanes.splat("float", root))  # the references divide
            if k.weight:
                v = lanes.fmul(v, row.load(lanes, base["w"], j))
            if k.bias:
                v = lanes.fadd(v, row.load(lanes, base["bias"], j))
            row.store(lanes, out, j, v)

        row.loop(normalize)
    b.raw(f"store i64 {b.emit(f'add i64 {r}, 1')}, ptr %r.slot, align 8")
    b.raw("br label %row")
    b.raw("exit:")
    b.raw("ret void")
    head = (f"; mlxarm row kernel {k.op} for {target.triple}\n"
            f'target triple = "{target.triple}"\n\n'
            f"define void @{k.name}(ptr noalias nocapture readonly %args, i64 %start, i64 %end) "
            f"nounwind {{\nentry:\n")
    return head + "\n".join(b.lines) + "\n}\n\n" + "\n".join(sorted(b.declares)) + "\n"


def match(node, width: int, dtypes: tuple = NORM_DTYPES) -> RowKernel | None:
    """The row kernel, of ``width`` lanes, that computes ``node`` (a float32 softmax over the last
    axis, or an rms_norm or layer_norm of one of ``dtypes``), or None."""
    prim = node._prim
    name = prim.name if prim is not None else None
    dtype = node._dtype.name
    if name not in OPS or dtype not in dtypes or not node._shape or node._shape[-1] == 0:
        return None
    if (name == "softmax" and dtype != "float32") or any(i._dtype.name != dtype for i in node._inputs):
        return None
    p = node._params
    n = node._shape[-1]
    if name == "softmax":
        if not p["fused"] or p["half"] is not None:
            return None
        return RowKernel("softmax", n, width=width)
    if name == "rms_norm":
        return RowKernel("rms_norm", n, p["eps"], weight=len(node._inputs) > 1, width=width, dtype=dtype)
    return RowKernel("layer_norm", n, p["eps"], weight=p["weight"], bias=p["bias"], width=width, dtype=dtype)
