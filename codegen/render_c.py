"""The C-style renderer base: kernel IR (``codegen.ir``) to the body of a GPU kernel in a C-like language.

OpenCL C (``render_opencl``) and GLSL (``render_glsl``) differ in how a kernel is declared, how buffers
are read and written, the names of a few builtins and which integer types exist; everything else is
shared here: index arithmetic from a linear id through the affine strides, expressions with numpy's
semantics (half precision computed in float32 and rounded at every node, NaN-propagating
maximum/minimum, saturating float-to-integer casts), and both kernel shapes:

* elementwise: a grid-stride loop over the output space, each step of a work item computing
  ``ELEMENTWISE`` elements one grid apart (all loads first, then the stores), so that enough loads are in
  flight to reach the device's bandwidth;
* reduce: one workgroup per output element; each work item folds a strided share of the reduced
  space, then a tree in shared memory combines the work items' partial results (or, where the device
  has subgroup arithmetic and the dialect a subgroup reduction for the op and type, each subgroup
  reduces its work items' results at once and the first subgroup combines the subgroups' ones:
  ``subgroup_tree``). With few outputs
  the reduction runs in two stages (``reduce_body``): several workgroups per output element each
  write a partial result, and a second kernel, shared by all reductions of the same op and dtypes
  (``combine_name``), combines them.

Every buffer ``b`` is read at ``o{b} + sum(index[d] * stride[d])`` where ``o{b}`` (a kernel argument) is
the element offset of the buffer's view inside its device allocation, so views never copy.
"""
from __future__ import annotations

import math
import struct

from .ir import Cast, Const, Kernel, Load, Op, walk

FLOATS = frozenset({"float16", "float32", "bfloat16"})
UNROLL = 4  # reduced elements a work item folds per step of a reduction's main loop
ELEMENTWISE = 2  # output elements a work item of an elementwise kernel computes per step of its loop
_BITS = {"bool": 8, "uint8": 8, "int8": 8, "uint16": 16, "int16": 16, "uint32": 32, "int32": 32,
         "uint64": 64, "int64": 64, "float16": 16, "bfloat16": 16, "float32": 32}


def unsigned(dtype: str) -> bool:
    return dtype.startswith("uint") or dtype == "bool"


def bits(dtype: str) -> int:
    return _BITS[dtype]


def combine_name(kernel: Kernel) -> str:
    """The name of the second stage of a two-stage reduction (``CRenderer.reduce_body``), shared by
    every reduction with the same op and dtypes."""
    return f"combine_{kernel.reduce_op}_{kernel.store.value.dtype}_{kernel.store.dtype}"


def buffers(kernel: Kernel) -> dict:
    """Buffer -> dtype for every buffer the kernel touches (the store's buffer included)."""
    out = {kernel.store.buf: kernel.store.dtype}
    for e in walk(kernel.store.value):
        if isinstance(e, Load):
            out.setdefault(e.buf, e.dtype)
    return dict(sorted(out.items()))


# Half-precision conversions done on bits, so rounding is round-to-nearest-even on every device
# (builtins such as GLSL's packHalf2x16 leave the rounding mode to the implementation). F2U/U2F
# reinterpret float bits and RINT rounds half to even; each dialect defines them.
# (OpenCL C puts its built-in conversion in place of ``HALF_TO_FLOAT``.)
HALF_TO_FLOAT = """float mx_f16_to_f32(uint h) {
  uint sign = (h & 0x8000u) << 16;
  uint e = (h >> 10) & 0x1Fu;
  uint m = h & 0x3FFu;
  if (e == 0u) { float v = TO_F(m) * 5.9604644775390625e-8f; return sign != 0u ? -v : v; }
  if (e == 31u) return U2F(sign | 0x7F800000u | (m << 13));
  return U2F(sign | ((e + 112u) << 23) | (m << 13));
}
"""
HALF_HELPERS = """
uint mx_f32_to_f16(float f) {
  uint x = F2U(f);
  uint sign = (x >> 16) & 0x8000u;
  uint ax = x & 0x7FFFFFFFu;
  if (ax > 0x7F800000u) return sign | 0x7E00u;
  if (ax >= 0x477FF000u) return sign | 0x7C00u;
  if (ax < 0x38800000u) return sign | TO_U(RINT(U2F(ax) * 16777216.0f));
  uint m = ax - 0x38000000u;
  return sign | ((m + 0xFFFu + ((m >> 13) & 1u)) >> 13);
}
""" + HALF_TO_FLOAT + """uint mx_f32_to_bf16(float f) {
  uint u = F2U(f);
  if (ISNAN(f)) return ((u >> 16) | 0x40u) & 0xFFFFu;
  return ((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16) & 0xFFFFu;
}
float mx_bf16_to_f32(uint h) { return U2F(h << 16); }
float mx_round_f16(float x) { return mx_f16_to_f32(mx_f32_to_f16(x)); }
float mx_round_bf16(float x) { return mx_bf16_to_f32(mx_f32_to_bf16(x)); }
float mx_max(float a, float b) { return (a > b || ISNAN(a)) ? a : b; }
float mx_min(float a, float b) { return (a < b || ISNAN(a)) ? a : b; }
float mx_sign(float x) { return TO_F(x > 0.0f) - TO_F(x < 0.0f); }
float mx_expm1(float x) {
  if (FABS(x) > 0.5f) return exp(x) - 1.0f;
  float u = exp(x);
  if (u == 1.0f) return x;
  float d = u - 1.0f;
  return d * x / log(u);
}
float mx_log1p(float x) {
  float u = 1.0f + x;
  if (u == 1.0f) return x;
  if (ISINF(u) && u > 0.0f) return u;
  return log(u) * x / (u - 1.0f);
}
float mx_erf(float x) {
  float ax = FABS(x);
  if (ax < 0.5f) {
    float z = x * x;
    return x * (1.128379167f + z * (-0.3761263890f + z * (0.1128349154f + z * (-0.02685780f
           + z * (0.005220f - z * 0.000854f)))));
  }
  float t = 1.0f / (1.0f + 0.5f * ax);
  float y = t * exp(-ax * ax - 1.26551223f + t * (1.00002368f + t * (0.37409196f + t * (0.09678418f
            + t * (-0.18628806f + t * (0.27886807f + t * (-1.13520398f + t * (1.48851587f
            + t * (-0.82215223f + t * 0.17087277f)))))))));
  float r = 1.0f - y;
  return x < 0.0f ? -r : r;
}
"""


def subgroup_tree(sg: dict, index_type: str, var: str, ident: str, merge, reduce: str, barrier: str) -> list:
    """Statements combining ``var`` over a workgroup with subgroup operations. ``sg`` names the
    dialect's subgroup id, lane, count and size; ``reduce`` is the subgroup reduction of ``var`` (an
    expression), ``merge(a, b)`` combines two values. Each subgroup reduces its work items' values, its
    first lane puts the result in ``sh[subgroup id]``, then the first subgroup folds those (any number
    of subgroups: each of its lanes folds a strided share) and reduces again: the total ends in ``var``
    of the first lane of subgroup 0 (``sg["first"]`` tests for it)."""
    return [f"{var} = {reduce};",
            f"if ({sg['lane']} == 0) sh[{sg['id']}] = {var};",
            barrier,
            f"if ({sg['id']} == 0) {{",
            f"  {var} = {ident};",
            f"  for ({index_type} q = {sg['lane']}; q < {sg['count']}; q += {sg['size']}) {var} = {merge(var, 'sh[q]')};",
            f"  {var} = {reduce};",
            "}"]


class CRenderer:
    """Shared emission of kernel bodies. Dialects override the hooks marked as such."""

    index_type = "long"  # the type of linear ids and element offsets
    workgroup = 64  # work items per workgroup of a reduction
    subgroups = False  # whether the device's subgroup arithmetic may combine a workgroup's results
    SUBGROUP: dict = {}  # dialect hook: names of the subgroup id, lane, count and size, and the first-lane test

    def subgroup_reduce(self, op: str, dtype: str, x: str) -> str | None:
        """Dialect hook: the subgroup-wide ``op`` of ``x`` (accumulator type of ``dtype``), or None
        where the dialect has none for them."""
        return None

    def __init__(self, kernel: Kernel):
        self.k = kernel
        self.lines: list = []
        self.n = 0
        self.bufs = buffers(kernel)

    # --- dialect hooks -----------------------------------------------------------------------------
    def ctype(self, dtype: str) -> str:
        """The type a value of ``dtype`` is computed in."""
        raise NotImplementedError

    def load_raw(self, buf: int, dtype: str, offset: str) -> str:
        """An expression reading the storage bits of element ``offset`` (as ``ctype`` for 32-bit and
        wider dtypes, as an unsigned integer holding the bits for narrower ones)."""
        raise NotImplementedError

    def store_raw(self, buf: int, dtype: str, offset: str, value: str) -> None:
        raise NotImplementedError

    def int_cast(self, value: str, src: str, dst: str) -> str:
        """An integer (or bool) of ``src`` converted, with wraparound, to integer ``dst``."""
        raise NotImplementedError

    def float_to_int(self, value: str, dst: str) -> str:
        raise NotImplementedError

    def to(self, ctype: str, expr: str) -> str:
        """``expr`` converted to ``ctype`` (C's cast or GLSL's constructor)."""
        raise NotImplementedError

    def bool_const(self, v: bool) -> str:
        return "true" if v else "false"

    # --- lines and names ---------------------------------------------------------------------------
    def emit(self, ctype: str, expr: str) -> str:
        self.n += 1
        name = f"v{self.n}"
        self.lines.append(f"{ctype} {name} = {expr};")
        return name

    def raw(self, line: str) -> None:
        self.lines.append(line)

    # --- values --------------------------------------------------------------------------------------
    def const(self, value, dtype: str) -> str:
        if dtype == "bool":
            return self.bool_const(bool(value))
        if dtype in FLOATS:
            v = float(value)
            if math.isnan(v):
                return "U2F(0x7FC00000u)"
            if math.isinf(v):
                return "U2F(0x7F800000u)" if v > 0 else "U2F(0xFF800000u)"
            v = struct.unpack("<f", struct.pack("<f", v))[0]
            return f"{v!r}f"
        return self.int_literal(int(value), dtype)

    def int_literal(self, v: int, dtype: str) -> str:
        b = bits(dtype)
        v &= (1 << b) - 1
        if not unsigned(dtype) and v >> (b - 1):
            v -= 1 << b
        ct = self.ctype(dtype)
        if unsigned(dtype):
            return self.to(ct, f"{v}u" if b <= 32 else f"{v}ul")
        if b == 64:
            return self.to(ct, f"{v}l" if v != -(1 << 63) else f"(-{(1 << 63) - 1}l - 1l)")
        return self.to(ct, f"({v})" if v != -(1 << 31) else "(-2147483647 - 1)")

    def load(self, e: Load, offset: str) -> str:
        raw = self.load_raw(e.buf, e.dtype, offset)
        if e.dtype == "float16":
            return self.emit("float", f"mx_f16_to_f32({raw})")
        if e.dtype == "bfloat16":
            return self.emit("float", f"mx_bf16_to_f32({raw})")
        if e.dtype == "bool":
            return self.emit(self.ctype("bool"), f"({raw}) != 0u")
        return self.emit(self.ctype(e.dtype), raw)

    def round_to(self, v: str, dtype: str) -> str:
        if dtype == "float16":
            return self.emit("float", f"mx_round_f16({v})")
        if dtype == "bfloat16":
            return self.emit("float", f"mx_round_bf16({v})")
        return v

    def stored_bits(self, v: str, dtype: str) -> str:
        """A computed value as what ``store_raw`` takes."""
        if dtype == "float16":
            return f"mx_f32_to_f16({v})"
        if dtype == "bfloat16":
            return f"mx_f32_to_bf16({v})"
        if dtype == "bool":
            return f"({v} ? 1u : 0u)"
        return v

    def value(self, e, offsets: dict, memo: dict) -> str:
        hit = memo.get(e)
        if hit is not None:
            return hit
        if isinstance(e, Load):
            out = self.load(e, offsets[e.buf])
        elif isinstance(e, Const):
            out = self.const(e.value, e.dtype)
        elif isinstance(e, Cast):
            arg = self.value(e.arg, offsets, memo)
            out = self.round_to(self.cast(arg, e.arg.dtype, e.dtype), e.dtype)
        else:
            args = [self.value(a, offsets, memo) for a in e.args]
            out = self.round_to(self.alu(e, args), e.dtype)
        memo[e] = out
        return out

    def cast(self, v: str, src: str, dst: str) -> str:
        if src == dst or (src in FLOATS and dst in FLOATS):
            return v
        ct = self.ctype(dst)
        if dst == "bool":
            zero = "0.0f" if src in FLOATS else self.const(0, src)
            return self.emit(ct, f"{v} != {zero}") if src != "bool" else v
        if dst in FLOATS:
            if src == "bool":
                return self.emit("float", f"({v} ? 1.0f : 0.0f)")
            return self.emit("float", self.to("float", v))
        if src in FLOATS:
            return self.emit(ct, self.float_to_int(v, dst))
        if src == "bool":
            return self.emit(ct, f"({v} ? {self.const(1, dst)} : {self.const(0, dst)})")
        return self.emit(ct, self.int_cast(v, src, dst))

    def as_bool(self, v: str, dtype: str) -> str:
        return self.cast(v, dtype, "bool")

    _CMP = {"equal": "==", "not_equal": "!=", "less": "<", "less_equal": "<=", "greater": ">",
            "greater_equal": ">="}

    def alu(self, e: Op, a: list) -> str:
        name, src, out = e.op, e.args[0].dtype, e.dtype
        ct = self.ctype(out)
        if name == "where":
            return self.emit(ct, f"({a[0]} ? {a[1]} : {a[2]})")
        if name in ("logical_and", "logical_or"):
            x, y = self.as_bool(a[0], src), self.as_bool(a[1], e.args[1].dtype)
            return self.emit(ct, f"({x} {'&&' if name == 'logical_and' else '||'} {y})")
        if name == "logical_not":
            return self.emit(ct, f"!({self.as_bool(a[0], src)})")
        if name in self._CMP:
            x, y = a
            if src == "bool" and name not in ("equal", "not_equal"):
                x, y = self.to("int", x), self.to("int", y)
            return self.emit(ct, f"({x} {self._CMP[name]} {y})")
        if src in ("float16", "bfloat16") and name in ("rsqrt", "sigmoid"):
            # MLX's half kernels round the root, or exp(|x|), to the half type (ops.elementwise._rsqrt)
            x = a[0]
            if name == "rsqrt":
                return self.emit(ct, f"(1.0f / {self.round_to(self.emit('float', f'sqrt({x})'), src)})")
            e = self.round_to(self.emit("float", f"exp(FABS({x}))"), src)
            y = self.emit("float", f"(1.0f / (1.0f + {e}))")
            return self.emit(ct, f"({x} < 0.0f ? {y} : 1.0f - {y})")
        if src in FLOATS:
            return self.emit(ct, self.float_op(name, a))
        if src == "bool":
            return self.emit(ct, self.bool_op(name, a))
        return self.emit(ct, self.int_op(name, a, src))

    def float_op(self, name: str, a: list) -> str:
        x = a[0]
        infix = {"add": "+", "subtract": "-", "multiply": "*", "divide": "/"}
        if name in infix:
            return f"({x} {infix[name]} {a[1]})"
        if name in ("maximum", "minimum"):
            return f"mx_{name[:3]}({x}, {a[1]})"
        table = {
            "abs": f"FABS({x})", "floor": f"floor({x})", "ceil": f"ceil({x})", "sqrt": f"sqrt({x})",
            "round": f"RINT({x})", "negative": f"(-{x})", "square": f"({x} * {x})", "sign": f"mx_sign({x})",
            "reciprocal": f"(1.0f / {x})", "rsqrt": f"(1.0f / sqrt({x}))", "exp": f"exp({x})",
            "expm1": f"mx_expm1({x})", "log": f"log({x})", "log2": f"log2({x})",
            "log10": f"(log2({x}) * 0.30102999566398120f)", "log1p": f"mx_log1p({x})", "sin": f"sin({x})",
            "cos": f"cos({x})", "tanh": f"tanh({x})", "sigmoid": f"(1.0f / (1.0f + exp(-{x})))",
            "erf": f"mx_erf({x})", "degrees": f"({x} * 57.295779513082323f)",
            "radians": f"({x} * 0.017453292519943295f)", "isnan": f"ISNAN({x})", "isinf": f"ISINF({x})",
            "isfinite": f"!(ISNAN({x}) || ISINF({x}))", "isposinf": f"({x} == U2F(0x7F800000u))",
            "isneginf": f"({x} == U2F(0xFF800000u))",
        }
        if name not in table:
            raise NotImplementedError(f"float op {name}")
        return table[name]

    def bool_op(self, name: str, a: list) -> str:
        x = a[0]
        table = {"add": "||", "subtract": "!=", "multiply": "&&", "maximum": "||", "minimum": "&&",
                 "bitwise_and": "&&", "bitwise_or": "||", "bitwise_xor": "!="}
        if name in table:
            return f"({x} {table[name]} {a[1]})"
        if name in ("abs", "sign", "square", "floor", "ceil", "round"):
            return x
        if name == "bitwise_invert":
            return f"!{x}"
        if name in ("isnan", "isinf", "isposinf", "isneginf"):
            return "false"
        if name == "isfinite":
            return "true"
        raise NotImplementedError(f"bool op {name}")

    def int_op(self, name: str, a: list, dtype: str) -> str:
        x = a[0]
        ct = self.ctype(dtype)
        if name in ("isnan", "isinf", "isposinf", "isneginf"):
            return self.bool_const(False)
        if name == "isfinite":
            return self.bool_const(True)
        if name in ("floor", "ceil", "round"):
            return x
        if name == "maximum":
            return f"({x} > {a[1]} ? {x} : {a[1]})"
        if name == "minimum":
            return f"({x} < {a[1]} ? {x} : {a[1]})"
        if name == "sign":
            if unsigned(dtype):
                return f"({x} != {self.const(0, dtype)} ? {self.const(1, dtype)} : {self.const(0, dtype)})"
            return (f"({x} > {self.const(0, dtype)} ? {self.const(1, dtype)} : "
                    f"({x} < {self.const(0, dtype)} ? {self.const(-1, dtype)} : {self.const(0, dtype)}))")
        infix = {"add": "+", "subtract": "-", "multiply": "*", "bitwise_and": "&", "bitwise_or": "|",
                 "bitwise_xor": "^"}
        if name in infix:
            expr = f"({x} {infix[name]} {a[1]})"
        elif name == "abs":
            expr = x if unsigned(dtype) else f"({x} < {self.const(0, dtype)} ? -{x} : {x})"
        elif name == "negative":
            expr = f"(-{x})"
        elif name == "square":
            expr = f"({x} * {x})"
        elif name == "bitwise_invert":
            expr = f"(~{x})"
        else:
            raise NotImplementedError(f"integer op {name}")
        return self.wrap(self.to(ct, expr), dtype)

    def wrap(self, expr: str, dtype: str) -> str:
        """Narrow integer arithmetic wrapped back into ``dtype``'s range (a no-op where the language
        has the type itself)."""
        return expr

    # --- reductions ----------------------------------------------------------------------------------
    def identity(self, op: str, dtype: str) -> str:
        if op == "sum":
            return self.const(0, dtype)
        if op == "prod":
            return self.const(1, dtype)
        if dtype in FLOATS:
            return self.const(-math.inf if op == "max" else math.inf, dtype)
        if dtype == "bool":
            return self.bool_const(op == "min")
        b = bits(dtype)
        if unsigned(dtype):
            return self.const(0 if op == "max" else (1 << b) - 1, dtype)
        return self.const(-(1 << (b - 1)) if op == "max" else (1 << (b - 1)) - 1, dtype)

    def combine(self, op: str, dtype: str, a: str, b: str) -> str:
        if dtype == "bool":
            return f"({a} {'||' if op in ('sum', 'max') else '&&'} {b})"
        if dtype in FLOATS:
            if op in ("sum", "prod"):
                return f"({a} {'+' if op == 'sum' else '*'} {b})"
            return f"mx_{op}({a}, {b})"
        if op in ("sum", "prod"):
            return self.wrap(self.to(self.ctype(dtype), f"({a} {'+' if op == 'sum' else '*'} {b})"), dtype)
        return f"({a} {'>' if op == 'max' else '<'} {b} ? {a} : {b})"

    # --- index arithmetic ----------------------------------------------------------------------------
    def offsets(self, linear: str, dims: tuple, strides: dict, base: dict) -> dict:
        """Per buffer: its element offset at the multi-index that ``linear`` names (row-major over
        ``dims``), starting from ``base`` (buffer -> expression)."""
        it = self.index_type
        terms = {b: [base[b]] if base.get(b) else [] for b in strides}
        div = 1
        for d in range(len(dims) - 1, -1, -1):
            size = dims[d]
            if size > 1 and any(s[d] for s in strides.values()):
                q = f"({linear} / {div})" if div > 1 else linear
                idx = self.emit(it, f"{q} % {size}" if d > 0 else q)
                for b, s in strides.items():
                    if s[d]:
                        terms[b].append(idx if s[d] == 1 else f"{idx} * {s[d]}")
            div *= size
        return {b: self.emit(it, " + ".join(t) if t else "0") for b, t in terms.items()}

    def strides_of(self, lo: int, hi: int) -> dict:
        out = {}
        for e in walk(self.k.store.value):
            if isinstance(e, Load):
                out.setdefault(e.buf, e.strides[lo:hi])
        return out

    # --- kernel bodies ---------------------------------------------------------------------------------
    def elementwise_body(self, linear: str, step: str = "", count: int = 1) -> list:
        """Statements computing output elements ``linear + u * step`` for ``u`` below ``count``, then
        storing them: all their loads come before any store, so a work item has ``count`` independent
        loads of each input in flight. An element past the end (``n``) is computed at element
        ``n - 1`` and not stored."""
        k = self.k
        it = self.index_type
        lines = []
        strides = self.strides_of(0, len(k.dims))
        strides[k.store.buf] = k.store.strides
        stores = []
        for u in range(count):
            self.lines = []
            at = linear if u == 0 else self.emit(it, f"min({linear} + {u} * {step}, n - {self.to(it, '1')})")
            offs = self.offsets(at, k.dims, strides, {b: f"o{b}" for b in strides})
            v = self.value(k.store.value, offs, {})
            lines += self.lines
            self.lines = []
            self.store_raw(k.store.buf, k.store.dtype, offs[k.store.buf], self.stored_bits(v, k.store.dtype))
            stores.append(self.lines if u == 0 else
                          [f"if ({linear} + {u} * {step} < n) {{", *("  " + ln for ln in self.lines), "}"])
        self.lines = lines + [ln for block in stores for ln in block]
        return self.lines

    def reduce_parts(self, out_index: str, red_indices) -> tuple:
        """(statements computing the output's base offsets, then per name in ``red_indices`` the
        statements folding that reduced element into ``acc``). The first set runs once per output
        element."""
        k = self.k
        n = k.n_out
        self.lines = []
        out_strides = self.strides_of(0, n)
        base = self.offsets(out_index, k.dims[:n], out_strides, {b: f"o{b}" for b in out_strides})
        head = self.lines
        folds = []
        for red_index in ([red_indices] if isinstance(red_indices, str) else red_indices):
            self.lines = []
            red = self.offsets(red_index, k.dims[n:], self.strides_of(n, len(k.dims)), base)
            v = self.value(k.store.value, red, {})
            dtype = k.store.value.dtype
            self.raw(f"acc = {self.combine(k.reduce_op, dtype, 'acc', v)};")
            folds.append(self.lines)
        return (head, *folds)

    def reduce_store(self, out_index: str, acc: str) -> list:
        k = self.k
        self.lines = []
        v = self.round_to(acc, k.store.dtype)
        off = self.offsets(out_index, k.dims[:k.n_out], {k.store.buf: k.store.strides},
                           {k.store.buf: f"o{k.store.buf}"})[k.store.buf]
        self.store_raw(k.store.buf, k.store.dtype, off, self.stored_bits(v, k.store.dtype))
        return self.lines

    @property
    def reduced_size(self) -> int:
        n = 1
        for d in self.k.dims[self.k.n_out:]:
            n *= d
        return n

    # --- reduction kernels ----------------------------------------------------------------------------
    # Dialect hooks: the work item's and workgroup's ids, a workgroup barrier, and how a partial result
    # (a reduction's accumulator, in the accumulator's own type) is written and read back.
    LID = GID = NGROUPS = BARRIER = ""

    def partial_store(self, index: str, value: str) -> str:
        raise NotImplementedError

    def partial_load(self, index: str) -> str:
        raise NotImplementedError

    def reduce_body(self, stage: str | None) -> list:
        """The statements of a reduction kernel (``shared`` holds ``workgroup`` accumulators):

        * ``stage=None``: one workgroup per output element, which it stores;
        * ``"partial"``: ``parts`` workgroups per output element, each folding one contiguous
          ``chunk`` of the reduced space and writing its accumulator to ``b0[o * parts + part]``;
        * ``"combine"``: one workgroup per output element folds its ``parts`` partial results and
          stores the output (with the output's rounding).

        Within a workgroup every work item folds a strided share, then a tree in shared memory
        combines the work items' accumulators."""
        k = self.k
        wg = self.workgroup
        it = self.index_type
        dtype = k.store.value.dtype
        acc_t = self.ctype(dtype)
        ident = self.identity(k.reduce_op, dtype)
        merged = self.combine(k.reduce_op, dtype, "sh[lid]", "sh[lid + s]")
        total = self.to(it, str(self.reduced_size))
        sg_reduce = self.subgroup_reduce(k.reduce_op, dtype, "acc") if self.subgroups else None
        if sg_reduce is not None and k.reduce_op in ("sum", "prod") and dtype not in FLOATS and dtype != "bool":
            sg_reduce = self.wrap(sg_reduce, dtype)  # narrow integers: the wrapped sum is the sum wrapped
        unrolled = []
        if stage == "combine":
            head = []
            fold = [f"acc = {self.combine(k.reduce_op, dtype, 'acc', self.partial_load('o * parts + r'))};"]
        else:
            # The main loop folds UNROLL elements per step (in the order the plain loop would), so a
            # work item has several independent loads in flight.
            head, fold, *more = self.reduce_parts("o", ["r"] + [f"r{u}" for u in range(1, UNROLL)])
            unrolled = [f"{it} r{u} = r + {u * wg};" for u in range(1, UNROLL)] + fold
            for lines in more:
                unrolled += lines
        if stage == "partial":
            loop = [f"{it} chunk = ({total} + parts - 1) / parts;",
                    f"for ({it} g = {self.GID}; g < n * parts; g += {self.NGROUPS}) {{",
                    f"  {it} o = g / parts;",
                    f"  {it} lo = (g % parts) * chunk;",
                    f"  {it} hi = min(lo + chunk, {total});"]
            first, end = "lo + lid", "hi"
            finish = [f"  if (lid == 0) {self.partial_store('g', 'sh[0]')}"]
            if sg_reduce is not None:
                finish = [f"  if ({self.SUBGROUP['first']}) {self.partial_store('g', 'acc')}"]
        else:
            loop = [f"for ({it} o = {self.GID}; o < n; o += {self.NGROUPS}) {{"]
            first, end = "lid", ("parts" if stage == "combine" else total)
            if stage == "combine":
                # A reduction's output is contiguous: the combining kernel depends on the reduction's
                # op and dtypes only, so every reduction of the same kind shares it (combine_name).
                self.lines = []
                v = self.round_to("acc", k.store.dtype)
                self.store_raw(k.store.buf, k.store.dtype, "o0 + o", self.stored_bits(v, k.store.dtype))
                store = self.lines
            else:
                store = self.reduce_store("o", "acc")
            finish = ["  if (lid == 0) {", "    acc = sh[0];", *("    " + ln for ln in store), "  }"]
            if sg_reduce is not None:
                finish = [f"  if ({self.SUBGROUP['first']}) {{", *("    " + ln for ln in store), "  }"]
        main = []
        if unrolled:
            main = [f"  for (; r + {(UNROLL - 1) * wg} < {end}; r += {UNROLL * wg}) {{",
                    *("    " + ln for ln in unrolled), "  }"]
        if sg_reduce is not None:
            tree = subgroup_tree(self.SUBGROUP, it, "acc", ident,
                                 lambda a, b: self.combine(k.reduce_op, dtype, a, b), sg_reduce, self.BARRIER)
        else:
            tree = ["sh[lid] = acc;", self.BARRIER, f"for ({it} s = {wg // 2}; s > 0; s >>= 1) {{",
                    f"  if (lid < s) sh[lid] = {merged};", f"  {self.BARRIER}", "}"]
        return [f"{it} lid = {self.LID};", *loop,
                *("  " + ln for ln in head),
                f"  {acc_t} acc = {ident};",
                f"  {it} r = {first};",
                *main,
                f"  for (; r < {end}; r += {wg}) {{",
                *("    " + ln for ln in fold), "  }",
                *("  " + ln for ln in tree),
                *finish,
                f"  {self.BARRIER}", "}"]
