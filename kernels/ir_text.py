"""LLVM IR written as text, line by line, for the hand-written kernel templates (``kernels.quantized``,
``kernels.attention``): fresh SSA names for each value, and stack slots hoisted to the entry block, where
mem2reg turns them into registers."""
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
