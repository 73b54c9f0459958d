"""LLVM IR written as text, line by line, for the hand-written kernel templates (``kernels.quantized``,
``kernels.attention`` and the compiled programs' gathers, updates and dequantize): fresh SSA names for
each value, stack slots hoisted to the entry block, where mem2reg turns them into registers, and the
kernel convention's pieces: arguments read from the argument array, a loop over [start, end), the
function around the body."""
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
