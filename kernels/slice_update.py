"""The LLVM executor's dynamic slice update along one axis, for compiled programs
(``backend.llvm_program``): ``x`` with the window that starts at a position read from memory
overwritten by ``update``. A decode step writes its new key and value into the KV cache this way, at
the position the step takes as an array input.

``void fn(ptr args, i64 start, i64 end)`` runs over the outer rows [start, end) of x (its dims before
the axis); args = (dst, x, update, position, meta), meta = (n: x's size along the axis, u: the update's,
inner bytes: the bytes of one position, the dims after the axis). The window starts at the position,
counted from the end when negative and moved to lie inside x (``ops.indexing.window_start``, MLX's rule).
When dst is not x, each row of x is copied to dst first; x and the update are C-contiguous."""
from __future__ import annotations

from dataclasses import dataclass

from .ir_text import IrText

# position dtypes: the IR integer type and whether it is signed
POSITION_TYPES = {"int32": ("i32", True), "int64": ("i64", True), "uint32": ("i32", False)}


@dataclass(frozen=True)
class SliceUpdate:
    position: str  # a POSITION_TYPES key

    @property
    def name(self) -> str:
        return f"slice_update_{self.position}"


def render(k: SliceUpdate, triple: str) -> str:
    ity, signed = POSITION_TYPES[k.position]
    ir = IrText()
    dst, x, update, position, meta = (ir.arg(i) for i in range(5))
    n, u, inner = (ir(f"load i64, ptr {ir.at('i64', meta, i)}") for i in range(3))
    raw = ir(f"load {ity}, ptr {position}")
    pos = ir(f"{'sext' if signed else 'zext'} {ity} {raw} to i64") if ity != "i64" else raw
    wrapped = ir(f"select i1 {ir(f'icmp slt i64 {pos}, 0')}, i64 {ir(f'add i64 {pos}, {n}')}, i64 {pos}")
    low = ir(f"select i1 {ir(f'icmp slt i64 {wrapped}, 0')}, i64 0, i64 {wrapped}")
    last = ir(f"sub i64 {n}, {u}")
    begin = ir(f"select i1 {ir(f'icmp sgt i64 {low}, {last}')}, i64 {last}, i64 {low}")
    row_bytes = ir(f"mul i64 {n}, {inner}")
    window_bytes = ir(f"mul i64 {u}, {inner}")
    skip = ir(f"mul i64 {begin}, {inner}")
    copy = ir(f"icmp ne ptr {dst}, {x}")

    def write(r):
        out_row = ir.at("i8", dst, ir(f"mul i64 {r}, {row_bytes}"))
        ir.raw(f"br i1 {copy}, label %whole, label %window")
        ir.raw("whole:")  # the row of x first, when the update is not written in place
        in_row = ir.at("i8", x, ir(f"mul i64 {r}, {row_bytes}"))
        ir.raw(f"call void @llvm.memcpy.p0.p0.i64(ptr {out_row}, ptr {in_row}, i64 {row_bytes}, i1 false)")
        ir.raw("br label %window")
        ir.raw("window:")
        source = ir.at("i8", update, ir(f"mul i64 {r}, {window_bytes}"))
        ir.raw(f"call void @llvm.memmove.p0.p0.i64(ptr {ir.at('i8', out_row, skip)}, ptr {source}, "
               f"i64 {window_bytes}, i1 false)")

    ir.loop("row", "%start", "%end", write)
    ir.raw("ret void")
    return (f'; mlxarm dynamic slice update\ntarget triple = "{triple}"\n\n'
            + ir.module(k.name, ["declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)",
                                 "declare void @llvm.memmove.p0.p0.i64(ptr, ptr, i64, i1)"]))
