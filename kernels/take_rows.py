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
    out, x, idx, meta = (ir.arg(i) for i in range(4))
    n, row = (ir(f"load i64, ptr {ir.at('i64', meta, i)}") for i in range(2))
    top = ir(f"sub i64 {n}, 1")

    def copy(j):
        raw = ir(f"load {ity}, ptr {ir.at(ity, idx, j)}")
        i = raw if ity == "i64" else ir(f"{'sext' if signed else 'zext'} {ity} {raw} to i64")
        wrapped = ir(f"select i1 {ir(f'icmp slt i64 {i}, 0')}, i64 {ir(f'add i64 {i}, {n}')}, i64 {i}")
        low = ir(f"select i1 {ir(f'icmp slt i64 {wrapped}, 0')}, i64 0, i64 {wrapped}")
        at = ir(f"select i1 {ir(f'icmp sgt i64 {low}, {top}')}, i64 {top}, i64 {low}")
        src = ir.at("i8", x, ir(f"mul i64 {at}, {row}"))
        dst = ir.at("i8", out, ir(f"mul i64 {j}, {row}"))
        ir.raw(f"call void @llvm.memcpy.p0.p0.i64(ptr {dst}, ptr {src}, i64 {row}, i1 false)")

    ir.loop("row", "%start", "%end", copy)
    ir.raw("ret void")
    return (f'; mlxarm row gather\ntarget triple = "{triple}"\n\n'
            + ir.module(k.name, ["declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)"]))
