"""The LLVM executor's row gather for compiled programs (``backend.llvm_program``): ``x[idx]`` along
x's first axis, each index wrapped when negative and clamped into range (the ``gather`` reference's
rule), whole rows copied. A decode step reads its token's embedding row this way.

``void fn(ptr args, i64 start, i64 end)`` runs over the indices [start, end); args = (out, x, idx,
meta), meta = (rows of x, bytes of a row); x and the output are C-contiguous."""
from __future__ import annotations

from dataclasses import dataclass

from .ir_text import IrText

# index dtypes: the IR integer type and whether it is signed
INDEX_TYPES = {"int8": ("i8", True), "int16": ("i16", True), "int32": ("i32", True), "int64": ("i64", True),
               "uint8": ("i8", False), "uint16": ("i16", False), "uint32": ("i32", False)}


@dataclass(frozen=True)
class TakeRows:
    index: str  # an INDEX_TYPES key

    @property
    def name(self) -> str:
        return f"take_rows_{self.index}"


def render(k: TakeRows, triple: str) -> str:
    ity, signed = INDEX_TYPES[k.index]
    ir = IrText()
    out, x, idx, meta = (ir(f"load ptr, ptr {ir(f'getelementptr ptr, ptr %args, i64 {i}')}") for i in range(4))
    n, row = (ir(f"load i64, ptr {ir(f'getelementptr i64, ptr {meta}, i64 {i}')}") for i in range(2))
    top = ir(f"sub i64 {n}, 1")
    ir.raw("br label %head")
    ir.raw("head:")
    ir.raw("%j = phi i64 [ %start, %entry ], [ %next, %body ]")
    ir.raw(f"br i1 {ir('icmp slt i64 %j, %end')}, label %body, label %exit")
    ir.raw("body:")
    raw = ir(f"load {ity}, ptr {ir(f'getelementptr {ity}, ptr {idx}, i64 %j')}")
    i = raw if ity == "i64" else ir(f"{'sext' if signed else 'zext'} {ity} {raw} to i64")
    wrapped = ir(f"select i1 {ir(f'icmp slt i64 {i}, 0')}, i64 {ir(f'add i64 {i}, {n}')}, i64 {i}")
    low = ir(f"select i1 {ir(f'icmp slt i64 {wrapped}, 0')}, i64 0, i64 {wrapped}")
    at = ir(f"select i1 {ir(f'icmp sgt i64 {low}, {top}')}, i64 {top}, i64 {low}")
    src = ir(f"getelementptr i8, ptr {x}, i64 {ir(f'mul i64 {at}, {row}')}")
    dst = ir(f"getelementptr i8, ptr {out}, i64 {ir(f'mul i64 %j, {row}')}")
    ir.raw(f"call void @llvm.memcpy.p0.p0.i64(ptr {dst}, ptr {src}, i64 {row}, i1 false)")
    ir.raw("%next = add i64 %j, 1")
    ir.raw("br label %head")
    ir.raw("exit:")
    ir.raw("ret void")
    body = "\n".join(ir.lines)
    return (f'; mlxarm row gather\ntarget triple = "{triple}"\n\n'
            "declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)\n\n"
            f"define void @{k.name}(ptr %args, i64 %start, i64 %end) {{\nentry:\n{body}\n}}\n")
