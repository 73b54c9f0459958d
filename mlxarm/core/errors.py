"""Error types shared by the API layer.

MLX raises ValueError or RuntimeError for dtype misuse (ValueError for a float-only op given a complex
input, RuntimeError for bitwise ops on floats) where Python convention and our contract say TypeError:
DtypeError is all three, so code written against either convention catches it.
"""


class DtypeError(TypeError, ValueError, RuntimeError):
    pass


class AxisError(IndexError, ValueError):
    """An axis outside an array's dimensions: MLX 0.32 raises IndexError, later releases ValueError."""


class CompileError(RuntimeError):
    """A kernel that a backend could not compile or load; the message names the backend ("[llvm] ...")."""
