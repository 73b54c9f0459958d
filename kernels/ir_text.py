"""LLVM IR written as text, line by line, for the hand-written kernel templates (``kernels.quantized``,
``kernels.attention`` and the compiled programs' gathers, updates and dequantize): fresh SSA names for
each value, stack slots hoisted to the entry block, where mem2reg turns them into registers, and the
kernel convention's pieces: arguments read from the argument array, a loop over [start, end), the
function around the body; and ``Values``, the loads, stores and roundings of float32, float16 and bfloat16
data for templates that compute in float32."""
from __future__ import annotations


class IrText:
    def __init__(self):
        self.lines: list = []
        self.allocas: list = []
        self.n = 0

    def __call__(self, text: str) -> str:
        """Emit ``%tN = text`` and return the new value's name."""
        self.n += 1
        v = f"%t{self.n}"
        self.lines.append(f"  {v} = {text}")
        return v

    def raw(self, text: str) -> None:
        """Emit a line that defines no value (a store, a branch) or a block label (``name:``)."""
        self.lines.append(text if text.endswith(":") else f"  {text}")

    def alloca(self, slot: str, ty: str, align: int) -> None:
        """A stack slot named ``slot``, allocated in the entry block."""
        self.allocas.append(f"  {slot} = alloca {ty}, align {align}")

    def slot(self, ty: str) -> str:
        """A fresh stack slot of type ``ty``."""
        self.n += 1
        v = f"%s{self.n}"
        self.alloca(v, ty, 16)
        return v

    def arg(self, i: int, ty: str = "ptr") -> str:
        """Argument ``i`` of the argument array (its address when ``ty`` is not "ptr")."""
        p = self(f"getelementptr ptr, ptr %args, i64 {i}")
        return self(f"load ptr, ptr {p}, align 8") if ty == "ptr" else p

    def at(self, ty: str, base: str, index) -> str:
        return self(f"getelementptr {ty}, ptr {base}, i64 {index}")

    def loop(self, tag: str, start: str, end: str, body) -> None:
        """``body(i)`` for i in [start, end)."""
        slot = self.slot("i64")
        self.raw(f"store i64 {start}, ptr {slot}")
        self.raw(f"br label %{tag}.head")
        self.raw(f"{tag}.head:")
        i = self(f"load i64, ptr {slot}")
        self.raw(f"br i1 {self(f'icmp slt i64 {i}, {end}')}, label %{tag}.body, label %{tag}.end")
        self.raw(f"{tag}.body:")
        body(i)
        self.raw(f"store i64 {self(f'add i64 {i}, 1')}, ptr {slot}")
        self.raw(f"br label %{tag}.head")
        self.raw(f"{tag}.end:")

    def module(self, name: str, declares) -> str:
        """The kernel ``void name(ptr args, i64 start, i64 end)`` around what was emitted (ending in a
        return), then the declarations it needs."""
        return (f"define void @{name}(ptr noalias nocapture readonly %args, i64 %start, i64 %end) nounwind {{\n"
                "entry:\n" + "\n".join(self.allocas) + "\n" + "\n".join(self.lines) + "\n}\n\n"
                + "\n".join(declares) + "\n")


def consts(ty: str, values) -> str:
    return "<" + ", ".join(f"{ty} {v}" for v in values) + ">"


_ELEMENT = {"float32": "float", "float16": "half", "bfloat16": "i16"}  # one stored element's LLVM type
_BF16_NAN = 0x7FC0  # MLX's canonical bfloat16 NaN


class Values:
    """Loads, stores and rounding for one operand's dtype, as float32 in registers: a scalar when
    ``n`` is None, else ``n`` lanes."""

    def __init__(self, dtype: str):
        assert dtype in _ELEMENT
        self.dtype = dtype
        self.element = _ELEMENT[dtype]
        self.align = self.size = 4 if dtype == "float32" else 2  # bytes of an element

    @staticmethod
    def _ty(scalar: str, n) -> str:
        return scalar if n is None else f"<{n} x {scalar}>"

    @staticmethod
    def _int(value: int, n) -> str:
        return str(value) if n is None else consts("i32", [value] * n)

    def load(self, ir: IrText, ptr: str, n=None) -> str:
        raw = ir(f"load {self._ty(self.element, n)}, ptr {ptr}, align {self.align}")
        f, i32 = self._ty("float", n), self._ty("i32", n)
        if self.dtype == "float16":
            return ir(f"fpext {self._ty('half', n)} {raw} to {f}")
        if self.dtype == "bfloat16":
            wide = ir(f"zext {self._ty('i16', n)} {raw} to {i32}")
            return ir(f"bitcast {i32} {ir(f'shl {i32} {wide}, {self._int(16, n)}')} to {f}")
        return raw

    def _bf16_bits(self, ir: IrText, v: str, n) -> str:
        """v's bits rounded to bfloat16's 8-bit significand, nearest even (low half zero). A NaN
        whose low half is zero stays a NaN: every NaN of a dequantized weight is one, since its
        operands are codes and bfloat16 values; ``store`` writes MLX's NaN for any other."""
        i32 = self._ty("i32", n)
        u = ir(f"bitcast {self._ty('float', n)} {v} to {i32}")
        odd = ir(f"and {i32} {ir(f'lshr {i32} {u}, {self._int(16, n)}')}, {self._int(1, n)}")
        up = ir(f"add {i32} {u}, {ir(f'add {i32} {odd}, {self._int(0x7FFF, n)}')}")
        return ir(f"and {i32} {up}, {self._int(-0x10000, n)}")

    def round(self, ir: IrText, v: str, n=None) -> str:
        """float32 ``v`` rounded to this dtype (nearest even), still float32."""
        f, half = self._ty("float", n), self._ty("half", n)
        if self.dtype == "float16":
            return ir(f"fpext {half} {ir(f'fptrunc {f} {v} to {half}')} to {f}")
        if self.dtype == "bfloat16":
            return ir(f"bitcast {self._ty('i32', n)} {self._bf16_bits(ir, v, n)} to {f}")
        return v

    def store(self, ir: IrText, v: str, ptr: str, n=None) -> None:
        """Round float32 ``v`` to this dtype and store it at ``ptr``."""
        f, ty = self._ty("float", n), self._ty(self.element, n)
        if self.dtype == "float16":
            v = ir(f"fptrunc {f} {v} to {ty}")
        elif self.dtype == "bfloat16":
            i32 = self._ty("i32", n)
            top = ir(f"trunc {i32} {ir(f'lshr {i32} {self._bf16_bits(ir, v, n)}, {self._int(16, n)}')} to {ty}")
            nan = ir(f"fcmp uno {f} {v}, {v}")
            canonical = str(_BF16_NAN) if n is None else consts("i16", [_BF16_NAN] * n)
            v = ir(f"select {self._ty('i1', n)} {nan}, {ty} {canonical}, {ty} {top}")
        ir.raw(f"store {ty} {v}, ptr {ptr}, align {self.align}")
