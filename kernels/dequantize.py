"""The LLVM executor's affine dequantize for compiled programs (``backend.llvm_program``): packed codes
(uint32 words, low bits first, ``bits`` dividing 32) to ``code * scale + bias``, rounded as the
``dequantize`` reference rounds (``ops.quantized._affine_values``): the product in float32 rounded to
the scales' dtype, then the sum of it and the bias in float32 rounded to the result's dtype. A decode
step dequantizes its token's embedding row this way.

``void fn(ptr args, i64 start, i64 end)`` runs over the groups [start, end); args = (out, w, scales,
biases). Scales and biases are float32 or float16 (``half`` in the IR: LLVM rounds to nearest even, as
numpy does); the result is float16 when both are, else float32."""
from __future__ import annotations

from dataclasses import dataclass

from .ir_text import IrText

DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class Dequantize:
    bits: int
    group_size: int
    scales: str  # a DTYPES name
    biases: str

    @property
    def out(self) -> str:  # the promoted type of scales and biases
        return "float16" if self.scales == self.biases == "float16" else "float32"

    @property
    def name(self) -> str:
        return f"dequantize_b{self.bits}_g{self.group_size}_{self.scales}_{self.biases}"


def supported(bits: int, group_size: int, scales: str, biases: str) -> bool:
    return 32 % bits == 0 and group_size % (32 // bits) == 0 and scales in DTYPES and biases in DTYPES


_TY = {"float32": "float", "float16": "half"}


def render(k: Dequantize, triple: str) -> str:
    ir = IrText()
    out, w, scales, biases = (ir.arg(i) for i in range(4))
    per = 32 // k.bits
    words = k.group_size // per
    sty, bty, oty = _TY[k.scales], _TY[k.biases], _TY[k.out]

    def group(g):
        s_raw = ir(f"load {sty}, ptr {ir.at(sty, scales, g)}")
        b_raw = ir(f"load {bty}, ptr {ir.at(bty, biases, g)}")
        s = s_raw if sty == "float" else ir(f"fpext half {s_raw} to float")
        b = b_raw if bty == "float" else ir(f"fpext half {b_raw} to float")
        first_word = ir(f"mul i64 {g}, {words}")
        first_out = ir(f"mul i64 {g}, {k.group_size}")
        for t in range(words):  # a group's words, unrolled (a group is at most 128 codes)
            word = ir(f"load i32, ptr {ir.at('i32', w, ir(f'add i64 {first_word}, {t}'))}")
            for c in range(per):
                code = ir(f"and i32 {ir(f'lshr i32 {word}, {c * k.bits}')}, {(1 << k.bits) - 1}")
                prod = ir(f"fmul float {ir(f'uitofp i32 {code} to float')}, {s}")
                if sty == "half":  # the product rounded to the scales' dtype
                    prod = ir(f"fpext half {ir(f'fptrunc float {prod} to half')} to float")
                value = ir(f"fadd float {prod}, {b}")
                if oty == "half":
                    value = ir(f"fptrunc float {value} to half")
                ir.raw(f"store {oty} {value}, ptr {ir.at(oty, out, ir(f'add i64 {first_out}, {t * per + c}'))}")

    ir.loop("group", "%start", "%end", group)
    ir.raw("ret void")
    return f'; mlxarm affine dequantize\ntarget triple = "{triple}"\n\n' + ir.module(k.name, [])
