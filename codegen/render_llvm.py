"""LLVM IR renderer: kernel IR (``codegen.ir``) to LLVM IR text, explicitly vectorized for a target.

Every kernel becomes ``void @name(ptr %args, i64 %start, i64 %end)``: ``args`` points to the buffers'
base pointers, and [start, end) is the share of the output index space (elements, or output elements
of a reduction) one thread computes. The innermost loop runs on vectors of ``Kernel.width`` lanes (a
scalable ``<vscale x 4 x T>`` on SVE, written as text because llvmlite's IR builder has no scalable
types), then a scalar loop finishes the remainder. Transcendental functions are polynomial
approximations emitted inline (Cephes-style range reduction, about 1 ulp in float32), so hot loops
never call libm; only the exact reduction of huge trigonometric arguments is a function of the module,
called when a vector holds one. Loop counters live in allocas; the optimizer promotes them to registers.
"""
from __future__ import annotations

import math
import struct

from .ir import Cast, Const, Kernel, Load, Op, Reduced
from .target import Target

# compute type (what values are in registers) and storage type (what memory holds) per dtype
_COMPUTE = {"bool": "i1", "uint8": "i8", "int8": "i8", "uint16": "i16", "int16": "i16", "uint32": "i32",
            "int32": "i32", "uint64": "i64", "int64": "i64", "float16": "float", "float32": "float",
            "bfloat16": "float", "float64": "double"}
_STORAGE = {**_COMPUTE, "bool": "i8", "float16": "half", "bfloat16": "i16"}
_SIZE = {"i1": 1, "i8": 1, "i16": 2, "i32": 4, "i64": 8, "half": 2, "float": 4, "double": 8}
_BITS = {"i1": 1, "i8": 8, "i16": 16, "i32": 32, "i64": 64}
_SUFFIX = {"float": "f32", "double": "f64", "half": "f16", "i1": "i1", "i8": "i8", "i16": "i16", "i32": "i32", "i64": "i64"}


def _is_float(dtype: str) -> bool:
    return dtype in ("float16", "float32", "bfloat16")


def _is_unsigned(dtype: str) -> bool:
    return dtype.startswith("uint") or dtype == "bool"


def float_literal(v: float, double: bool = False) -> str:
    """LLVM writes float constants as the hex bits of the (exactly representable) double."""
    if not double and math.isfinite(v):
        v = struct.unpack("<f", struct.pack("<f", v))[0]
    return "0x%016X" % struct.unpack("<Q", struct.pack("<d", v))[0]


def _int_literal(v: int, ctype: str) -> str:
    if ctype == "i1":
        return "true" if v else "false"
    bits = _BITS[ctype]
    v &= (1 << bits) - 1
    return str(v - (1 << bits) if v >> (bits - 1) else v)


def _two_over_pi_words(count: int) -> tuple:
    """2/pi's binary fraction as 32-bit words, after one word of zeros (the bits before the point),
    computed from Machin's formula in integers: pi * 2**n = 16 atan(1/5) - 4 atan(1/239)."""
    n = 32 * count + 64

    def atan_inv(x: int) -> int:  # atan(1/x) * 2**n
        total, term, k, sign = 0, (1 << n) // x, 1, 1
        while term:
            total += sign * (term // k)
            term //= x * x
            k += 2
            sign = -sign
        return total

    pi = 16 * atan_inv(5) - 4 * atan_inv(239)
    frac = (1 << (2 * n + 1)) // pi  # 2/pi * 2**n, below 1 * 2**n
    bits = frac >> (n - 32 * (count - 1))
    return (0,) + tuple((bits >> (32 * (count - 2 - i))) & 0xFFFFFFFF for i in range(count - 1))


# sin/cos reduce |x| below this by three parts of pi/4, at or above it exactly (``_reduce_exact``)
_SINCOS_EXACT = 8192.0
# the largest word index and bit position ``_reduce_exact`` reads (float32's largest exponent)
_EXACT_G_MAX = 254 - 120
_EXACT_Q_MAX = _EXACT_G_MAX >> 5
_TWO_OVER_PI_WORDS = _two_over_pi_words(_EXACT_Q_MAX + 4)


class _Body:
    """Instructions of one function, with fresh SSA names; ``declares`` collects the module-level
    text they need (intrinsic declarations, helper functions)."""

    def __init__(self, declares: set):
        self.lines: list = []
        self.n = 0
        self.declares = declares

    def tmp(self) -> str:
        self.n += 1
        return f"%t{self.n}"

    def emit(self, text: str) -> str:
        name = self.tmp()
        self.lines.append(f"  {name} = {text}")
        return name

    def raw(self, text: str) -> None:
        self.lines.append(text if text.endswith(":") else f"  {text}")

    def declare(self, text: str) -> None:
        self.declares.add(f"declare {text}")

    def define(self, text: str) -> None:
        """A helper function of the module, written after the kernel with the declarations."""
        self.declares.add(text)


class _Lanes:
    """Emits elementwise arithmetic for one lane shape: scalar, fixed vector, or scalable vector."""

    def __init__(self, body: _Body, lanes):
        self.b = body
        self.lanes = lanes  # None (scalar), an int (fixed), or "vscale" (<vscale x 4 x T>)

    # --- types ------------------------------------------------------------------------------
    def ty(self, c: str) -> str:
        if self.lanes is None:
            return c
        if self.lanes == "vscale":
            return f"<vscale x 4 x {c}>"
        return f"<{self.lanes} x {c}>"

    def sfx(self, c: str) -> str:
        if self.lanes is None:
            return _SUFFIX[c]
        if self.lanes == "vscale":
            return f"nxv4{_SUFFIX[c]}"
        return f"v{self.lanes}{_SUFFIX[c]}"

    def const(self, c: str, v) -> str:
        if c == "double":
            lit = float_literal(float(v), double=True)
        else:
            lit = float_literal(float(v)) if c in ("float", "half") else _int_literal(int(v), c)
        return lit if self.lanes is None else f"splat ({c} {lit})"

    # --- instructions ---------------------------------------------------------------------------
    def op(self, opcode: str, c: str, a: str, b: str) -> str:
        return self.b.emit(f"{opcode} {self.ty(c)} {a}, {b}")

    def call(self, name: str, c_out: str, args: list, c_overload: str | None = None) -> str:
        """Call ``llvm.<name>`` overloaded on the type of ``c_overload`` (default: the result)."""
        if name == "fptosi.sat":  # overloaded on the result and the argument
            c_in = c_overload or "float"
            full = f"llvm.fptosi.sat.{self.sfx(c_out)}.{self.sfx(c_in)}"
            self.b.declare(f"{self.ty(c_out)} @{full}({self.ty(c_in)})")
            return self.b.emit(f"call {self.ty(c_out)} @{full}({self.ty(c_in)} {args[0][1]})")
        full = f"llvm.{name}.{self.sfx(c_overload or c_out)}"
        self.b.declare(f"{self.ty(c_out)} @{full}({', '.join(t for t, _ in args)})")
        return self.b.emit(f"call {self.ty(c_out)} @{full}({', '.join(f'{t} {v}' for t, v in args)})")

    def fcall(self, name: str, *vals) -> str:
        t = self.ty("float")
        return self.call(name, "float", [(t, v) for v in vals])

    def cmp(self, kind: str, pred: str, c: str, a: str, b: str) -> str:
        return self.b.emit(f"{kind} {pred} {self.ty(c)} {a}, {b}")

    def select(self, cond: str, c: str, a: str, b: str) -> str:
        return self.b.emit(f"select {self.ty('i1')} {cond}, {self.ty(c)} {a}, {self.ty(c)} {b}")

    def conv(self, opcode: str, c_from: str, v: str, c_to: str) -> str:
        return self.b.emit(f"{opcode} {self.ty(c_from)} {v} to {self.ty(c_to)}")

    def splat(self, c: str, scalar: str) -> str:
        if self.lanes is None:
            return scalar
        one = self.b.emit(f"insertelement {self.ty(c)} poison, {c} {scalar}, i64 0")
        mask = "zeroinitializer"
        return self.b.emit(f"shufflevector {self.ty(c)} {one}, {self.ty(c)} poison, {self.ty('i32')} {mask}")

    # float helpers
    def fk(self, v: float) -> str:
        return self.const("float", v)

    def fadd(self, a, b):
        return self.op("fadd", "float", a, b)

    def fsub(self, a, b):
        return self.op("fsub", "float", a, b)

    def fmul(self, a, b):
        return self.op("fmul", "float", a, b)

    def fdiv(self, a, b):
        return self.op("fdiv", "float", a, b)

    def fma(self, a, b, c):
        return self.fcall("fma", a, b, c)

    def poly(self, x: str, coeffs, c: str = "float") -> str:
        """Horner in ``c`` (float or double): coeffs from the highest power down."""
        t = self.ty(c)
        acc = self.const(c, coeffs[0])
        for k in coeffs[1:]:
            acc = self.call("fma", c, [(t, acc), (t, x), (t, self.const(c, k))])
        return acc

    def fcmp(self, pred, a, b):
        return self.cmp("fcmp", pred, "float", a, b)

    def fsel(self, cond, a, b):
        return self.select(cond, "float", a, b)

    def bits(self, x):
        return self.conv("bitcast", "float", x, "i32")

    def from_bits(self, i):
        return self.conv("bitcast", "i32", i, "float")

    def iop(self, opcode, a, b, c="i32"):
        return self.op(opcode, c, a, b)

    # --- transcendental functions (float32, inline) ----------------------------------------------
    def exp(self, x: str) -> str:
        xc = self.fcall("minnum", self.fcall("maxnum", x, self.fk(-104.0)), self.fk(89.0))
        n = self.fcall("floor", self.fma(xc, self.fk(1.44269504088896341), self.fk(0.5)))
        y = self.exp_reduced(xc, n)
        ni = self.conv("fptosi", "float", n, "i32")
        n1 = self.iop("ashr", ni, self.const("i32", 1))
        n2 = self.iop("sub", ni, n1)
        s1 = self.from_bits(self.iop("shl", self.iop("add", n1, self.const("i32", 127)), self.const("i32", 23)))
        s2 = self.from_bits(self.iop("shl", self.iop("add", n2, self.const("i32", 127)), self.const("i32", 23)))
        out = self.fmul(self.fmul(y, s1), s2)
        return self.fsel(self.fcmp("uno", x, x), x, out)

    def exp_reduced(self, x: str, n: str) -> str:
        """e^(x - n ln 2) for a whole ``n`` near x / ln 2: ln 2 taken off in two parts, then ``exp``'s
        polynomial."""
        r = self.fma(n, self.fk(-0.693359375), x)
        r = self.fma(n, self.fk(2.12194440e-4), r)
        p = self.poly(r, [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                          1.6666665459e-1, 5.0000001201e-1])
        return self.fadd(self.fma(p, self.fmul(r, r), r), self.fk(1.0))

    def log(self, x: str) -> str:
        tiny = self.fcmp("olt", x, self.fk(1.17549435e-38))
        xs = self.fsel(tiny, self.fmul(x, self.fk(8388608.0)), x)
        adj = self.select(tiny, "i32", self.const("i32", 23), self.const("i32", 0))
        ib = self.bits(xs)
        e = self.iop("sub", self.iop("sub", self.iop("lshr", ib, self.const("i32", 23)), self.const("i32", 126)), adj)
        m = self.from_bits(self.iop("or", self.iop("and", ib, self.const("i32", 0x807FFFFF)),
                                    self.const("i32", 0x3F000000)))
        small = self.fcmp("olt", m, self.fk(0.707106781186547524))
        e = self.iop("sub", e, self.conv("zext", "i1", small, "i32"))
        m = self.fsub(self.fsel(small, self.fadd(m, m), m), self.fk(1.0))
        z = self.fmul(m, m)
        y = self.poly(m, [7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1,
                          1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1,
                          3.3333331174e-1])
        y = self.fmul(self.fmul(y, m), z)
        fe = self.conv("sitofp", "i32", e, "float")
        y = self.fma(fe, self.fk(-2.12194440e-4), y)
        y = self.fma(z, self.fk(-0.5), y)
        r = self.fma(fe, self.fk(0.693359375), self.fadd(m, y))
        r = self.fsel(self.fcmp("oeq", x, self.fk(math.inf)), x, r)
        r = self.fsel(self.fcmp("oeq", x, self.fk(0.0)), self.fk(-math.inf), r)
        return self.fsel(self.fcmp("ult", x, self.fk(0.0)), self.fk(math.nan), r)

    def log1p(self, x: str) -> str:
        u = self.fadd(x, self.fk(1.0))
        d = self.fsub(u, self.fk(1.0))
        kahan = self.fmul(self.log(u), self.fdiv(x, d))
        r = self.fsel(self.fcmp("oeq", d, self.fk(0.0)), x, kahan)
        return self.fsel(self.fcmp("oeq", u, self.fk(math.inf)), u, r)

    def expm1(self, x: str) -> str:
        u = self.exp(x)
        d = self.fsub(u, self.fk(1.0))
        kahan = self.fdiv(self.fmul(d, x), self.log(u))
        near = self.fsel(self.fcmp("oeq", u, self.fk(1.0)), x, kahan)
        return self.fsel(self.fcmp("ogt", self.fcall("fabs", x), self.fk(0.5)), d, near)

    def tanh(self, x: str) -> str:
        """tanh |x| by an odd polynomial below 0.625, else 1 - 2 / (e^(2|x|) + 1), then x's sign (so
        -0 stays -0). e^(2|x|) is ``exp``'s polynomial on 2|x| capped at 20 (tanh rounds to 1 from
        |x| = 9.01 on): the scaling 2^n, n <= 29, is one integer add to the exponent, and there is no
        clamp or NaN test of a general exp. A NaN takes the polynomial, which keeps it."""
        ax = self.fcall("fabs", x)
        z = self.fmul(x, x)
        p = self.poly(z, [-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1,
                          -3.33332819422e-1])
        small = self.fma(self.fmul(p, z), ax, ax)
        y = self.fcall("minnum", self.fadd(ax, ax), self.fk(20.0))
        n = self.fcall("roundeven", self.fmul(y, self.fk(1.44269504088896341)))
        e = self.exp_reduced(y, n)
        shift = self.iop("shl", self.conv("fptosi", "float", n, "i32"), self.const("i32", 23))
        s = self.from_bits(self.iop("add", self.bits(e), shift))
        big = self.fsub(self.fk(1.0), self.fdiv(self.fk(2.0), self.fadd(s, self.fk(1.0))))
        return self.fcall("copysign", self.fsel(self.fcmp("ult", ax, self.fk(0.625)), small, big), x)

    def sigmoid(self, x: str) -> str:
        e = self.exp(self.fsub(self.fk(-0.0), x))
        return self.fdiv(self.fk(1.0), self.fadd(self.fk(1.0), e))

    def _octant(self, ax: str) -> str:
        """The even j nearest |x| 4/pi (an i32), for the reductions of sin, cos and tan. |x| 4/pi is
        capped at 2**30 (minnum takes the number over NaN) so a plain fptosi is defined on every lane:
        fptosi.sat would go lane by lane on x86. A capped lane changes nothing: lanes at or past
        _SINCOS_EXACT (inf included) take j from the exact reduction, and a NaN lane's j, 2**30 or
        the saturating conversion's 0, is the same octant modulo 8."""
        jf = self.fcall("minnum", self.fmul(ax, self.fk(1.27323954473516)), self.fk(2.0 ** 30))  # 4 / pi
        j = self.conv("fptosi", "float", jf, "i32")
        return self.iop("and", self.iop("add", j, self.const("i32", 1)), self.const("i32", -2))

    def _sincos(self, x: str, cosine: bool) -> str:
        ax = self.fcall("fabs", x)
        j = self._octant(ax)
        y = self.conv("sitofp", "i32", j, "float")
        r = self.fma(y, self.fk(-0.78515625), ax)
        r = self.fma(y, self.fk(-2.4187564849853515625e-4), r)
        r = self.fma(y, self.fk(-3.77489497744594108e-8), r)
        # Past _SINCOS_EXACT the three-part reduction loses the remainder; those lanes (rare: the
        # call is made only when a vector holds one) are reduced exactly instead.
        x, ax, r, j = self.exact_reduction(x, ax, r, j)
        z = self.fmul(r, r)
        cos_p = self.poly(z, [2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2])
        cos_p = self.fadd(self.fma(self.fmul(cos_p, z), z, self.fmul(z, self.fk(-0.5))), self.fk(1.0))
        sin_p = self.poly(z, [-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1])
        sin_p = self.fma(self.fmul(sin_p, z), r, r)
        quadrant = self.iop("and", j, self.const("i32", 7))
        hi = self.cmp("icmp", "uge", "i32", quadrant, self.const("i32", 4))
        q2 = self.iop("and", j, self.const("i32", 3))
        use_other = self.cmp("icmp", "eq", "i32", q2, self.const("i32", 2))
        if cosine:
            val = self.fsel(use_other, sin_p, cos_p)
            neg = self.op("xor", "i1", hi, use_other)
        else:
            val = self.fsel(use_other, cos_p, sin_p)
            negative = self.cmp("icmp", "slt", "i32", self.bits(x), self.const("i32", 0))  # -0.0 too
            neg = self.op("xor", "i1", hi, negative)
        val = self.fsel(neg, self.fsub(self.fk(-0.0), val), val)
        return self.fsel(self.fcmp("oeq", ax, self.fk(math.inf)), self.fk(math.nan), val)

    def any_lane(self, mask: str) -> str:
        """One i1: whether any lane of ``mask`` is set."""
        if self.lanes is None:
            return mask
        full = f"llvm.vector.reduce.or.{self.sfx('i1')}"
        self.b.declare(f"i1 @{full}({self.ty('i1')})")
        return self.b.emit(f"call i1 @{full}({self.ty('i1')} {mask})")

    def exact_reduction(self, x: str, ax: str, r: str, j: str) -> tuple:
        """(x, |x|, r, j) after the three-part reduction of ``_sincos`` and ``tan``, with the lanes at
        or past _SINCOS_EXACT given ``_reduce_exact``'s r and j, by a call made only when a lane of
        the vector needs it. The exact reduction is a function of its own (noinline, cold), not a
        block of the loop: inline, its constants, hoisted out of the loop, crowded the registers of
        the common path (on AVX-512 the all-ones vector of ``_octant``'s + 1 was then recreated in
        the loop in a register the previous iteration's result had last written, chaining the
        iterations). x and |x| go through the call and come back, so nothing the rest needs lives
        across it (a call clobbers every vector register: the loop would spill them each time).
        Splits the current block: loop state lives in allocas, so no other phi depends on it."""
        big = self.fcmp("oge", ax, self.fk(_SINCOS_EXACT))
        fn, types = self._exact_function()
        ret = "{ " + ", ".join(types) + " }"
        values = (x, ax, r, j)
        label = f"xb{self.b.tmp()[2:]}"
        self.b.raw(f"br label %{label}.head")
        self.b.raw(f"{label}.head:")
        self.b.raw(f"br i1 {self.any_lane(big)}, label %{label}.exact, label %{label}.join")
        self.b.raw(f"{label}.exact:")
        both = self.b.emit(f"call {ret} @{fn}({', '.join(f'{t} {v}' for t, v in zip(types, values))})")
        exact = [self.b.emit(f"extractvalue {ret} {both}, {n}") for n in range(len(values))]
        self.b.raw(f"br label %{label}.join")
        self.b.raw(f"{label}.join:")
        return tuple(self.b.emit(f"phi {t} [{v}, %{label}.head], [{e}, %{label}.exact]")
                     for t, v, e in zip(types, values, exact))

    def _exact_function(self) -> tuple:
        """The name and value types of this lane shape's exact reduction, (x, |x|, r, j) -> the same
        with r and j exact where |x| >= _SINCOS_EXACT, defined once in the module (an internal
        function: each kernel's object has its own)."""
        f, i = self.ty("float"), self.ty("i32")
        types = (f, f, f, i)
        ret = "{ " + ", ".join(types) + " }"
        name = f"mlxarm_reduce_exact_{self.sfx('float')}"
        body = _Body(self.b.declares)
        inner = _Lanes(body, self.lanes)
        big = inner.fcmp("oge", "%ax", inner.fk(_SINCOS_EXACT))
        r, j = inner._reduce_exact("%ax", big, "%r", "%j")
        out = "poison"
        for n, (t, v) in enumerate(zip(types, ("%x", "%ax", r, j))):
            out = body.emit(f"insertvalue {ret} {out}, {t} {v}, {n}")
        body.raw(f"ret {ret} {out}")
        params = ", ".join(f"{t} {v}" for t, v in zip(types, ("%x", "%ax", "%r", "%j")))
        self.b.define(f"define internal {ret} @{name}({params}) noinline cold nounwind {{\n"
                      "entry:\n" + "\n".join(body.lines) + "\n}\n")
        return name, types

    def _reduce_exact(self, ax: str, big: str, r_fast: str, j_fast: str) -> tuple:
        """(r, j) of ``_sincos`` for the lanes of ``big``, by Payne and Hanek's reduction: |x| is
        m * 2**e with a 24-bit integer m, and |x| * 2/pi modulo 4 only needs the 96 bits of 2/pi
        from bit e - 1 on (earlier bits give multiples of 4). Those are picked out of 32-bit words
        (``_TWO_OVER_PI_WORDS``) by selects, not gathers, so every lane shape (SVE included) takes
        the same code; the product's low 64 bits are |x| * 2/pi mod 4 with 62 fraction bits."""
        i64 = "i64"
        bits = self.bits(ax)
        be = self.iop("lshr", bits, self.const("i32", 23))
        # bit position of 2/pi's bit e - 1 in the words, words[0] being zeros before the point;
        # clamped so lanes not taken still shift by valid amounts
        g0 = self.iop("sub", be, self.const("i32", 120))
        g0 = self.select(self.cmp("icmp", "slt", "i32", g0, self.const("i32", 0)), "i32", self.const("i32", 0), g0)
        g0 = self.select(self.cmp("icmp", "sgt", "i32", g0, self.const("i32", _EXACT_G_MAX)), "i32",
                         self.const("i32", _EXACT_G_MAX), g0)
        q = self.iop("lshr", g0, self.const("i32", 5))
        s = self.conv("zext", "i32", self.iop("and", g0, self.const("i32", 31)), i64)
        pick = [self.cmp("icmp", "eq", "i32", q, self.const("i32", n)) for n in range(_EXACT_Q_MAX + 1)]

        def word(d: int) -> str:
            w = self.const(i64, _TWO_OVER_PI_WORDS[_EXACT_Q_MAX + d])
            for n in range(_EXACT_Q_MAX - 1, -1, -1):
                w = self.select(pick[n], i64, self.const(i64, _TWO_OVER_PI_WORDS[n + d]), w)
            return w

        w0, w1, w2, w3 = (word(d) for d in range(4))
        k32 = self.const(i64, 32)
        hi = self.iop("shl", self.iop("or", self.iop("shl", w0, k32, i64), w1, i64), s, i64)
        hi = self.iop("or", hi, self.iop("lshr", self.iop("shl", w2, s, i64), k32, i64), i64)
        lo = self.iop("lshr", self.iop("shl", self.iop("or", self.iop("shl", w2, k32, i64), w3, i64), s, i64),
                      k32, i64)
        m = self.conv("zext", "i32", self.iop("or", self.iop("and", bits, self.const("i32", 0x7FFFFF)),
                                              self.const("i32", 0x800000)), i64)
        t = self.iop("add", self.iop("mul", m, hi, i64),
                     self.iop("lshr", self.iop("mul", m, lo, i64), k32, i64), i64)
        k = self.iop("lshr", self.iop("add", t, self.const(i64, 1 << 61), i64), self.const(i64, 62), i64)
        frac = self.iop("sub", t, self.iop("shl", k, self.const(i64, 62), i64), i64)
        rd = self.op("fmul", "double", self.conv("sitofp", i64, frac, "double"),
                     self.const("double", math.pi / 2 * 2.0 ** -62))
        r = self.conv("fptrunc", "double", rd, "float")
        j = self.iop("shl", self.conv("trunc", i64, k, "i32"), self.const("i32", 1))
        return self.fsel(big, r, r_fast), self.select(big, "i32", j, j_fast)

    def erf(self, x: str) -> str:
        ax = self.fcall("fabs", x)
        t = self.fdiv(self.fk(1.0), self.fma(ax, self.fk(0.3275911), self.fk(1.0)))
        p = self.poly(t, [1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592])
        e = self.exp(self.fsub(self.fk(-0.0), self.fmul(ax, ax)))
        far = self.fsub(self.fk(1.0), self.fmul(self.fmul(p, t), e))
        far = self.fcall("copysign", far, x)
        z = self.fmul(x, x)
        near = self.poly(z, [1.0 / 75600, -1.0 / 9360, 1.0 / 1320, -1.0 / 216, 1.0 / 42, -0.1, 1.0 / 3, -1.0])
        near = self.fmul(self.fmul(near, self.fk(-1.1283791670955126)), x)
        return self.fsel(self.fcmp("olt", ax, self.fk(0.5)), near, far)

    # --- tan, the inverse trigonometric functions and power (float32, inline) ---------------------
    # float32's nearest pi/2 and pi, and what each misses by: sums written (lo - a) + hi keep the
    # constant exact to well below an ulp of the result
    _PI2, _PI = (struct.unpack("<f", struct.pack("<f", v))[0] for v in (math.pi / 2, math.pi))
    _PI2_LO, _PI_LO = math.pi / 2 - _PI2, math.pi - _PI

    def dk(self, v: float) -> str:
        return self.const("double", v)

    def dop(self, opcode: str, a: str, b: str) -> str:
        return self.op(opcode, "double", a, b)

    def dfma(self, a: str, b: str, c: str) -> str:
        t = self.ty("double")
        return self.call("fma", "double", [(t, a), (t, b), (t, c)])

    def sign_of(self, v: str, x: str) -> str:
        """``v`` with its sign flipped where ``x``'s sign bit is set (-0.0 and NaNs included)."""
        sign = self.iop("and", self.bits(x), self.const("i32", -(1 << 31)))
        return self.from_bits(self.iop("xor", self.bits(v), sign))

    def tan(self, x: str) -> str:
        ax = self.fcall("fabs", x)
        j = self._octant(ax)
        # Near a pole tan(x) ~ -1 / r: r's relative error is the result's, so r = |x| - j pi/4 is
        # reduced in double (sin and cos only need r's absolute error small). pi/4 is split in two
        # doubles; the fma's exact product keeps j * hi whole.
        jd = self.conv("sitofp", "i32", j, "double")
        rd = self.dfma(jd, self.dk(-0.78539816339744828), self.conv("fpext", "float", ax, "double"))
        rd = self.dfma(jd, self.dk(-3.061616997868383e-17), rd)
        r = self.conv("fptrunc", "double", rd, "float")
        x, ax, r, j = self.exact_reduction(x, ax, r, j)
        z = self.fmul(r, r)
        p = self.poly(z, [9.38540185543e-3, 3.11992232697e-3, 2.44301354525e-2, 5.34112807005e-2,
                          1.33387994085e-1, 3.33331568548e-1])
        t = self.fma(self.fmul(p, z), r, r)
        # odd multiples of pi/2 away: tan(r + pi/2) = -1 / tan(r)
        cot = self.cmp("icmp", "ne", "i32", self.iop("and", j, self.const("i32", 2)), self.const("i32", 0))
        t = self.fsel(cot, self.fdiv(self.fk(-1.0), t), t)
        t = self.sign_of(t, x)  # odd: tan(-0) is -0
        return self.fsel(self.fcmp("oeq", ax, self.fk(math.inf)), self.fk(math.nan), t)

    def _atan01(self, t: str) -> str:
        """atan(t) for t in [0, 1] (NaN passes): t + t^3 P(t^2), a minimax fit of relative error
        below 2e-8 over the whole interval, so no further reduction (and no second division)."""
        z = self.fmul(t, t)
        p = self.poly(z, [0.002920681034898656, -0.016367886053071087, 0.04321179722674031,
                          -0.07552209292325941, 0.10666002481888262, -0.14211054804000273,
                          0.19993772778341556, -0.3333315273385134])
        return self.fma(self.fmul(p, z), t, t)

    def arctan(self, x: str) -> str:
        ax = self.fcall("fabs", x)
        far = self.fcmp("ogt", ax, self.fk(1.0))
        a = self._atan01(self.fsel(far, self.fdiv(self.fk(1.0), ax), ax))  # 1 / inf is 0: pi/2
        a = self.fsel(far, self.fadd(self.fsub(self.fk(self._PI2_LO), a), self.fk(self._PI2)), a)
        return self.fcall("copysign", a, x)

    def arctan2(self, y: str, x: str) -> str:
        """atan(min / max) of the magnitudes, then folded into the octant of (x, y): C99's special
        cases follow from 0 / 0 read as 0 and inf / inf as 1, and the sign bits of x and y."""
        ax, ay = self.fcall("fabs", x), self.fcall("fabs", y)
        steep = self.fcmp("ogt", ay, ax)
        num, den = self.fsel(steep, ax, ay), self.fsel(steep, ay, ax)
        t = self.fsel(self.fcmp("oeq", ax, ay), self.fk(1.0), self.fdiv(num, den))
        t = self.fsel(self.fcmp("oeq", den, self.fk(0.0)), self.fk(0.0), t)
        a = self._atan01(t)
        a = self.fsel(steep, self.fadd(self.fsub(self.fk(self._PI2_LO), a), self.fk(self._PI2)), a)
        west = self.cmp("icmp", "slt", "i32", self.bits(x), self.const("i32", 0))  # x < 0 or x = -0
        a = self.fsel(west, self.fadd(self.fsub(self.fk(self._PI_LO), a), self.fk(self._PI)), a)
        a = self.fcall("copysign", a, y)
        return self.fsel(self.fcmp("uno", x, y), self.fadd(x, y), a)

    def _asin_half(self, s: str) -> str:
        """asin(s) for |s| <= 0.5."""
        z = self.fmul(s, s)
        p = self.poly(z, [4.2163199048e-2, 2.4181311049e-2, 4.5470025998e-2, 7.4953002686e-2, 1.6666752422e-1])
        return self.fma(self.fmul(p, z), s, s)

    def _half_complement_root(self, ax: str) -> str:
        """sqrt((1 - |x|) / 2), exact up to the root for |x| >= 0.5; NaN past 1."""
        return self.fcall("sqrt", self.fmul(self.fsub(self.fk(1.0), ax), self.fk(0.5)))

    def arcsin(self, x: str) -> str:
        # above 0.5, asin(a) = pi/2 - 2 asin(sqrt((1 - a) / 2))
        ax = self.fcall("fabs", x)
        far = self.fcmp("ogt", ax, self.fk(0.5))
        a = self._asin_half(self.fsel(far, self._half_complement_root(ax), ax))
        folded = self.fadd(self.fsub(self.fk(self._PI2_LO), self.fadd(a, a)), self.fk(self._PI2))
        return self.fcall("copysign", self.fsel(far, folded, a), x)

    def arccos(self, x: str) -> str:
        # acos(x) = pi/2 - asin(x) near 0; 2 asin(sqrt((1 - x) / 2)) above 0.5 (small results keep
        # their relative accuracy), pi minus that below -0.5
        ax = self.fcall("fabs", x)
        far = self.fcmp("ogt", ax, self.fk(0.5))
        a = self._asin_half(self.fsel(far, self._half_complement_root(ax), x))
        near = self.fadd(self.fsub(self.fk(self._PI2_LO), a), self.fk(self._PI2))
        a2 = self.fadd(a, a)
        west = self.fadd(self.fsub(self.fk(self._PI_LO), a2), self.fk(self._PI))
        return self.fsel(far, self.fsel(self.fcmp("olt", x, self.fk(0.0)), west, a2), near)

    def _log2_wide(self, ax: str) -> str:
        """log2 of a float32 magnitude in double, within 1e-10 of its size: |x| = m 2**e with m
        in [sqrt(1/2), sqrt(2)), ln m = 2 atanh(s) for s = (m - 1) / (m + 1), |s| < 0.172 (the
        series to s**11)."""
        d, i64 = "double", "i64"
        ad = self.conv("fpext", "float", ax, d)  # float32 subnormals are normal doubles
        b = self.conv("bitcast", d, ad, i64)
        e = self.iop("sub", self.iop("lshr", b, self.const(i64, 52), i64), self.const(i64, 1023), i64)
        mb = self.iop("or", self.iop("and", b, self.const(i64, (1 << 52) - 1), i64),
                      self.const(i64, 1023 << 52), i64)
        m = self.conv("bitcast", i64, mb, d)
        high = self.cmp("fcmp", "ogt", d, m, self.dk(math.sqrt(2.0)))
        m = self.select(high, d, self.dop("fmul", m, self.dk(0.5)), m)
        e = self.iop("add", e, self.conv("zext", "i1", high, i64), i64)
        f = self.dop("fsub", m, self.dk(1.0))  # exact: f has float32's 24 bits
        s = self.dop("fdiv", f, self.dop("fadd", f, self.dk(2.0)))
        z = self.dop("fmul", s, s)
        p = self.poly(z, [1 / 11, 1 / 9, 1 / 7, 1 / 5, 1 / 3], "double")
        s2 = self.dop("fadd", s, s)
        ln_m = self.dfma(self.dop("fmul", s2, z), p, s2)
        l2 = self.dfma(ln_m, self.dk(1.4426950408889634), self.conv("sitofp", i64, e, d))
        l2 = self.select(self.cmp("fcmp", "oeq", d, ad, self.dk(0.0)), d, self.dk(-math.inf), l2)
        return self.select(self.cmp("fcmp", "uge", d, ad, self.dk(math.inf)), d, ad, l2)  # inf, NaN

    def _exp2_narrow(self, t: str) -> str:
        """2**t for a double t, within 1e-8 (a tenth of float32's ulp) before it is rounded once to
        float32: overflow to inf, gradual underflow."""
        d, i64 = "double", "i64"
        tc = self.call("maxnum", d, [(self.ty(d), t), (self.ty(d), self.dk(-200.0))])
        tc = self.call("minnum", d, [(self.ty(d), tc), (self.ty(d), self.dk(200.0))])  # NaN: -200, put back below
        n = self.call("roundeven", d, [(self.ty(d), tc)])
        r = self.dop("fsub", tc, n)  # exact, in [-1/2, 1/2]: Taylor to r**7
        ln2 = math.log(2.0)
        p = self.poly(r, [ln2 ** k / math.factorial(k) for k in range(7, -1, -1)], "double")
        scale = self.iop("shl", self.iop("add", self.conv("fptosi", d, n, i64), self.const(i64, 1023), i64),
                         self.const(i64, 52), i64)
        v = self.dop("fmul", p, self.conv("bitcast", i64, scale, d))
        v = self.select(self.cmp("fcmp", "uno", d, t, t), d, t, v)
        return self.conv("fptrunc", d, v, "float")

    def power(self, x: str, y: str) -> str:
        """C99's powf (numpy's): 2 ** (y log2|x|) with the product in double, so large results keep
        float32 accuracy; then the sign for odd integer y, and the special cases."""
        ax = self.fcall("fabs", x)
        t = self.dop("fmul", self.conv("fpext", "float", y, "double"), self._log2_wide(ax))
        r = self._exp2_narrow(t)
        integral = self.fcmp("oeq", self.fcall("trunc", y), y)  # +-inf too
        half = self.fmul(y, self.fk(0.5))
        odd = self.op("and", "i1", integral, self.fcmp("une", self.fcall("trunc", half), half))
        r = self.fsel(odd, self.sign_of(r, x), r)  # (-0) ** 3 is -0, (-0) ** -3 is -inf
        finite_negative = self.op("and", "i1", self.fcmp("olt", x, self.fk(0.0)),
                                  self.fcmp("one", x, self.fk(-math.inf)))
        r = self.fsel(self.op("and", "i1", finite_negative, self.op("xor", "i1", integral, self.const("i1", 1))),
                      self.fk(math.nan), r)
        one = self.op("or", "i1", self.fcmp("oeq", x, self.fk(1.0)), self.fcmp("oeq", y, self.fk(0.0)))
        unit_inf = self.op("and", "i1", self.fcmp("oeq", ax, self.fk(1.0)),
                           self.fcmp("oeq", self.fcall("fabs", y), self.fk(math.inf)))  # (-1) ** inf is 1
        return self.fsel(self.op("or", "i1", one, unit_inf), self.fk(1.0), r)

    # --- dtype conversions (storage <-> float32 compute) ------------------------------------
    def to_compute_scalar_or_vector(self, raw: str, dtype: str, scalar: bool) -> str:
        saved = self.lanes
        if scalar:
            self.lanes = None
        try:
            if dtype == "float16":
                return self.conv("fpext", "half", raw, "float")
            if dtype == "bfloat16":
                wide = self.conv("zext", "i16", raw, "i32")
                return self.from_bits(self.iop("shl", wide, self.const("i32", 16)))
            if dtype == "bool":
                return self.cmp("icmp", "ne", "i8", raw, self.const("i8", 0))
            return raw
        finally:
            self.lanes = saved

    def stored(self, v: str, dtype: str) -> str:
        """A computed value in its dtype's storage form."""
        if dtype == "float16":
            return self.conv("fptrunc", "float", v, "half")
        if dtype == "bfloat16":
            return self.conv("trunc", "i32", self.iop("lshr", self.bf16_bits(v), self.const("i32", 16)), "i16")
        if dtype == "bool":
            return self.conv("zext", "i1", v, "i8")
        return v

    def bf16_bits(self, v: str) -> str:
        """float32 -> bfloat16 in the high half of an i32: round to nearest even, NaN stays NaN."""
        u = self.bits(v)
        lsb = self.iop("and", self.iop("lshr", u, self.const("i32", 16)), self.const("i32", 1))
        r = self.iop("add", u, self.iop("add", lsb, self.const("i32", 0x7FFF)))
        r = self.iop("and", r, self.const("i32", -65536))
        nan = self.iop("or", self.iop("and", u, self.const("i32", -65536)), self.const("i32", 0x400000))
        return self.select(self.fcmp("uno", v, v), "i32", nan, r)

    def round(self, v: str, dtype: str) -> str:
        """Half-precision results are rounded at every node, as the numpy reference does."""
        if dtype == "float16":
            return self.conv("fpext", "half", self.conv("fptrunc", "float", v, "half"), "float")
        if dtype == "bfloat16":
            return self.from_bits(self.bf16_bits(v))
        return v


class _Values(_Lanes):
    """Emits kernel-IR expressions at a loop index, for one lane shape."""

    def __init__(self, body, lanes, ptrs: dict, index: str, width_value: str):
        super().__init__(body, lanes)
        self.ptrs = ptrs  # buffer -> SSA pointer at the current row
        self.index = index  # SSA i64: position in the innermost loop
        self.step = width_value
        self.memo: dict = {}

    def value(self, e) -> str:
        hit = self.memo.get(e)
        if hit is None:
            hit = self.memo[e] = self._value(e)
        return hit

    def _value(self, e) -> str:
        if isinstance(e, Load):
            return self.load(e)
        if isinstance(e, Const):
            return self.const(_COMPUTE[e.dtype], e.value)
        if isinstance(e, Cast):
            return self.round(self.cast(self.value(e.arg), e.arg.dtype, e.dtype), e.dtype)
        return self.round(self.alu(e), e.dtype)

    # --- memory ----------------------------------------------------------------------------------
    def address(self, buf: int, st: str, stride: int) -> str:
        if self.lanes is None or stride == 0:
            off = self.index if stride == 1 else self.b.emit(f"mul i64 {self.index}, {stride}")
            if stride == 0:
                return self.ptrs[buf]
            return self.b.emit(f"getelementptr {st}, ptr {self.ptrs[buf]}, i64 {off}")
        if stride == 1:
            return self.b.emit(f"getelementptr {st}, ptr {self.ptrs[buf]}, i64 {self.index}")
        idx = self.op("add", "i64", self.splat("i64", self.index), self.step_vector())
        idx = self.op("mul", "i64", idx, self.const("i64", stride))
        return self.b.emit(f"getelementptr {st}, ptr {self.ptrs[buf]}, {self.ty('i64')} {idx}")

    def step_vector(self) -> str:
        if self.lanes == "vscale":
            self.b.declare("<vscale x 4 x i64> @llvm.stepvector.nxv4i64()")
            return self.b.emit("call <vscale x 4 x i64> @llvm.stepvector.nxv4i64()")
        return "<" + ", ".join(f"i64 {i}" for i in range(self.lanes)) + ">"

    def load(self, e: Load) -> str:
        st = _STORAGE[e.dtype]
        stride = e.strides[-1] if e.strides else 0
        p = self.address(e.buf, st, stride)
        size = _SIZE[st]
        if self.lanes is None or stride == 0:
            raw = self.b.emit(f"load {st}, ptr {p}, align {size}")
            raw = self.to_compute_scalar_or_vector(raw, e.dtype, scalar=True)
            return self.splat(_COMPUTE[e.dtype], raw) if self.lanes is not None else raw
        if stride == 1:
            raw = self.b.emit(f"load {self.ty(st)}, ptr {p}, align {size}")
        else:
            full = f"llvm.masked.gather.{self.sfx(st)}.{self.sfx('i1').replace('i1', 'p0')}"
            self.b.declare(f"{self.ty(st)} @{full}({self.ty('ptr')}, i32, {self.ty('i1')}, {self.ty(st)})")
            raw = self.b.emit(f"call {self.ty(st)} @{full}({self.ty('ptr')} {p}, i32 {size}, "
                              f"{self.ty('i1')} {self.const('i1', 1)}, {self.ty(st)} poison)")
        return self.to_compute_scalar_or_vector(raw, e.dtype, scalar=False)


    # --- casts ----------------------------------------------------------------------------------
    def cast(self, v: str, src: str, dst: str) -> str:
        cs, cd = _COMPUTE[src], _COMPUTE[dst]
        if dst == "bool":
            if cs in ("float", "double"):
                return self.cmp("fcmp", "une", cs, v, self.const(cs, 0.0))
            if cs == "i1":
                return v
            return self.cmp("icmp", "ne", cs, v, self.const(cs, 0))
        if cs == "float" and cd == "float":
            return v
        if cs == "double" and dst == "float16":
            # Rounding to odd on the way to float32 keeps the final rounding to half exact (numpy
            # rounds once); double -> half directly would be a call of compiler-rt's __truncdfhf2,
            # which the process need not have.
            f = self.conv("fptrunc", "double", v, "float")
            back = self.conv("fpext", "float", f, "double")
            exact = self.cmp("fcmp", "oeq", "double", back, v)
            away = self.cmp("fcmp", "ogt", "double", self.call("fabs", "double", [(self.ty("double"), back)]),
                            self.call("fabs", "double", [(self.ty("double"), v)]))
            fb = self.bits(f)
            fb = self.select(away, "i32", self.iop("sub", fb, self.const("i32", 1)), fb)
            odd = self.select(exact, "i32", self.bits(f), self.iop("or", fb, self.const("i32", 1)))
            return self.round(self.from_bits(odd), "float16")
        if cs == "double" and cd == "float":
            return self.conv("fptrunc", "double", v, "float")
        if cs == "float" and cd == "double":
            return self.conv("fpext", "float", v, "double")
        if cd in ("float", "double"):
            return self.conv("uitofp" if _is_unsigned(src) else "sitofp", cs, v, cd)
        if cs in ("float", "double"):
            wide = self.call("fptosi.sat", "i64", [(self.ty(cs), v)], cs)
            return wide if cd == "i64" else self.conv("trunc", "i64", wide, cd)
        if _BITS[cs] == _BITS[cd]:
            return v
        if _BITS[cs] > _BITS[cd]:
            return self.conv("trunc", cs, v, cd)
        return self.conv("zext" if _is_unsigned(src) else "sext", cs, v, cd)

    def as_bool(self, v: str, dtype: str) -> str:
        return self.cast(v, dtype, "bool")

    # --- arithmetic -----------------------------------------------------------------------------
    def alu(self, e: Op) -> str:
        args = [self.value(a) for a in e.args]
        src = e.args[0].dtype
        c = _COMPUTE[src]
        name = e.op
        if name == "where":
            return self.select(args[0], _COMPUTE[e.dtype], args[1], args[2])
        if name in ("logical_and", "logical_or"):
            a, b = self.as_bool(args[0], src), self.as_bool(args[1], e.args[1].dtype)
            return self.op("and" if name == "logical_and" else "or", "i1", a, b)
        if name == "logical_not":
            return self.op("xor", "i1", self.as_bool(args[0], src), self.const("i1", 1))
        if src in ("float16", "bfloat16") and name in ("rsqrt", "sigmoid"):
            return self._half_stepwise(name, args[0], src)
        if c == "float":
            return self._float_op(name, args)
        if c == "double":
            return self._double_op(name, args)
        return self._int_op(name, args, c, _is_unsigned(src))

    def _half_stepwise(self, name: str, x: str, dtype: str) -> str:
        """rsqrt and sigmoid of half-precision values as MLX's half kernels round them (and the
        references, ``ops.elementwise._rsqrt``/``_sigmoid``): the root, or exp(|x|), in the half type."""
        if name == "rsqrt":
            return self.fdiv(self.fk(1.0), self.round(self.fcall("sqrt", x), dtype))
        e = self.round(self.exp(self.fcall("fabs", x)), dtype)
        y = self.fdiv(self.fk(1.0), self.fadd(self.fk(1.0), e))
        return self.fsel(self.fcmp("olt", x, self.fk(0.0)), y, self.fsub(self.fk(1.0), y))

    _FCMP = {"equal": "oeq", "not_equal": "une", "less": "olt", "less_equal": "ole", "greater": "ogt",
             "greater_equal": "oge"}
    _ICMP = {"equal": "eq", "not_equal": "ne", "less": "lt", "less_equal": "le", "greater": "gt",
             "greater_equal": "ge"}

    def _float_op(self, name: str, a: list) -> str:
        x = a[0]
        if name in self._FCMP:
            return self.fcmp(self._FCMP[name], x, a[1])
        simple = {"add": "fadd", "subtract": "fsub", "multiply": "fmul", "divide": "fdiv"}
        if name in simple:
            return self.op(simple[name], "float", x, a[1])
        if name in ("maximum", "minimum"):
            return self.fcall(name, x, a[1])
        if name in ("abs", "floor", "ceil", "sqrt"):
            return self.fcall({"abs": "fabs"}.get(name, name), x)
        if name == "round":
            return self.fcall("roundeven", x)
        if name == "negative":
            return self.fsub(self.fk(-0.0), x)
        if name == "square":
            return self.fmul(x, x)
        if name == "sign":
            pos = self.fsel(self.fcmp("ogt", x, self.fk(0.0)), self.fk(1.0), self.fk(0.0))  # NaN, -0 -> +0 as MLX
            return self.fsel(self.fcmp("olt", x, self.fk(0.0)), self.fk(-1.0), pos)
        if name == "reciprocal":
            return self.fdiv(self.fk(1.0), x)
        if name == "rsqrt":
            return self.fdiv(self.fk(1.0), self.fcall("sqrt", x))
        if name == "exp":
            return self.exp(x)
        if name == "expm1":
            return self.expm1(x)
        if name == "log":
            return self.log(x)
        if name == "log2":
            return self.fmul(self.log(x), self.fk(1.4426950408889634))
        if name == "log10":
            return self.fmul(self.log(x), self.fk(0.4342944819032518))
        if name == "log1p":
            return self.log1p(x)
        if name == "sin":
            return self._sincos(x, cosine=False)
        if name == "cos":
            return self._sincos(x, cosine=True)
        if name == "tanh":
            return self.tanh(x)
        if name == "sigmoid":
            return self.sigmoid(x)
        if name == "erf":
            return self.erf(x)
        if name == "degrees":
            return self.fmul(x, self.fk(180.0 / math.pi))
        if name == "radians":
            return self.fmul(x, self.fk(math.pi / 180.0))
        if name == "isnan":
            return self.fcmp("uno", x, x)
        if name == "isinf":
            return self.fcmp("oeq", self.fcall("fabs", x), self.fk(math.inf))
        if name == "isfinite":
            return self.fcmp("one", self.fcall("fabs", x), self.fk(math.inf))
        if name == "isposinf":
            return self.fcmp("oeq", x, self.fk(math.inf))
        if name == "isneginf":
            return self.fcmp("oeq", x, self.fk(-math.inf))
        if name in ("tan", "arcsin", "arccos", "arctan"):
            return getattr(self, name)(x)
        if name in ("arctan2", "power"):
            return getattr(self, name)(x, a[1])
        if name == "trunc":
            return self.fcall("trunc", x)
        if name == "floor_divide":
            return self.fcall("floor", self.fdiv(x, a[1]))
        if name == "remainder":
            return self.float_remainder(x, a[1])
        if name == "logaddexp":
            return self.logaddexp(x, a[1])
        if name == "sinh":
            return self.sinh(x)
        if name == "cosh":
            h = self.half_exp(self.fcall("fabs", x))
            return self.fadd(h, self.fdiv(self.fk(0.25), h))
        if name == "arctanh":
            # on |x|, then x's sign: near -1, 2x / (1 - x) rounds to -1 itself and log1p loses it
            ax = self.fcall("fabs", x)
            r = self.log1p(self.fdiv(self.fadd(ax, ax), self.fsub(self.fk(1.0), ax)))
            return self.fcall("copysign", self.fmul(r, self.fk(0.5)), x)
        if name == "arcsinh":
            ax = self.fcall("fabs", x)
            sq = self.fmul(ax, ax)
            near = self.log1p(self.fadd(ax, self.fdiv(sq, self.fadd(self.fk(1.0), self.fcall(
                "sqrt", self.fadd(self.fk(1.0), sq))))))
            far = self.fadd(self.log(ax), self.fk(math.log(2.0)))
            return self.fcall("copysign", self.fsel(self.fcmp("ogt", ax, self.fk(1e9)), far, near), x)
        if name == "arccosh":
            t = self.fsub(x, self.fk(1.0))
            near = self.log1p(self.fadd(t, self.fcall("sqrt", self.fmul(t, self.fadd(t, self.fk(2.0))))))
            far = self.fadd(self.log(x), self.fk(math.log(2.0)))
            # below 1 (where t (t + 2) can overflow to +inf for a huge negative x) it is NaN
            out = self.fsel(self.fcmp("ogt", x, self.fk(1e9)), far, near)
            return self.fsel(self.fcmp("olt", x, self.fk(1.0)), self.fk(math.nan), out)
        raise NotImplementedError(f"float op {name}")

    def float_remainder(self, x: str, y: str) -> str:
        """numpy's remainder: the sign of the divisor, and a zero result carries it too."""
        r = self.op("frem", "float", x, y)
        differ = self.op("xor", "i1", self.fcmp("olt", r, self.fk(0.0)), self.fcmp("olt", y, self.fk(0.0)))
        fix = self.op("and", "i1", self.fcmp("une", r, self.fk(0.0)), differ)
        r = self.fsel(fix, self.fadd(r, y), r)
        return self.fsel(self.fcmp("oeq", r, self.fk(0.0)), self.fcall("copysign", self.fk(0.0), y), r)

    def logaddexp(self, x: str, y: str) -> str:
        m = self.fcall("maximum", x, y)
        d = self.fcall("fabs", self.fsub(x, y))
        r = self.fadd(m, self.log1p(self.exp(self.fsub(self.fk(-0.0), d))))
        return self.fsel(self.fcmp("oeq", x, y), self.fadd(x, self.fk(math.log(2.0))), r)

    def half_exp(self, ax: str) -> str:
        """e^ax / 2 for ax >= 0, as (e^(ax/2) / 2) e^(ax/2): finite wherever the result is (e^ax itself
        overflows from 88.7 on). e^(ax - ln 2) would round ax - ln 2 first, an error of up to half an
        ulp of ax in the exponent: 24 ulps of the result at 70."""
        e = self.exp(self.fmul(ax, self.fk(0.5)))
        return self.fmul(self.fmul(e, self.fk(0.5)), e)

    def sinh(self, x: str) -> str:
        ax = self.fcall("fabs", x)
        u = self.expm1(ax)
        near = self.fmul(self.fadd(u, self.fdiv(u, self.fadd(u, self.fk(1.0)))), self.fk(0.5))
        h = self.half_exp(ax)
        far = self.fsub(h, self.fdiv(self.fk(0.25), h))
        return self.fcall("copysign", self.fsel(self.fcmp("olt", ax, self.fk(1.0)), near, far), x)

    def _double_op(self, name: str, a: list) -> str:
        """float64: exact arithmetic and comparisons only (classify keeps the rest on numpy)."""
        x, d = a[0], "double"
        if name in self._FCMP:
            return self.cmp("fcmp", self._FCMP[name], d, x, a[1])
        simple = {"add": "fadd", "subtract": "fsub", "multiply": "fmul", "divide": "fdiv"}
        if name in simple:
            return self.op(simple[name], d, x, a[1])
        unary = {"abs": "fabs", "floor": "floor", "ceil": "ceil", "sqrt": "sqrt", "round": "roundeven",
                 "trunc": "trunc"}
        if name in unary:
            return self.call(unary[name], d, [(self.ty(d), x)])
        if name in ("maximum", "minimum"):
            return self.call(name, d, [(self.ty(d), x), (self.ty(d), a[1])])
        if name == "negative":
            return self.op("fsub", d, self.const(d, -0.0), x)
        if name == "square":
            return self.op("fmul", d, x, x)
        if name == "reciprocal":
            return self.op("fdiv", d, self.const(d, 1.0), x)
        if name == "isnan":
            return self.cmp("fcmp", "uno", d, x, x)
        raise NotImplementedError(f"float64 op {name}")

    def _int_op(self, name: str, a: list, c: str, unsigned: bool) -> str:
        x = a[0]
        if name in self._ICMP:
            pred = self._ICMP[name]
            if pred not in ("eq", "ne"):
                pred = ("u" if unsigned else "s") + pred
            return self.cmp("icmp", pred, c, x, a[1])
        if c == "i1":  # booleans compute as integers and come back as != 0
            table = {"add": "or", "subtract": "xor", "multiply": "and", "maximum": "or", "minimum": "and",
                     "bitwise_and": "and", "bitwise_or": "or", "bitwise_xor": "xor"}
            if name in table:
                return self.op(table[name], "i1", x, a[1])
            if name in ("abs", "sign", "square", "floor", "ceil", "round"):
                return x
            if name == "bitwise_invert":
                return self.op("xor", "i1", x, self.const("i1", 1))
            if name == "floor_divide":  # x // 0 is 0, x // 1 is x
                return self.op("and", "i1", x, a[1])
            if name == "remainder":  # x % 0 is x, x % 1 is 0
                return self.op("and", "i1", x, self.op("xor", "i1", a[1], self.const("i1", 1)))
        simple = {"add": "add", "subtract": "sub", "multiply": "mul", "bitwise_and": "and",
                  "bitwise_or": "or", "bitwise_xor": "xor"}
        if name in simple:
            return self.op(simple[name], c, x, a[1])
        if name in ("maximum", "minimum"):
            fn = ("u" if unsigned else "s") + name[:3]
            return self.call(fn, c, [(self.ty(c), x), (self.ty(c), a[1])])
        if name in ("floor", "ceil", "round"):
            return x
        if name == "abs":
            return x if unsigned else self.call("abs", c, [(self.ty(c), x), ("i1", "false")])
        if name == "negative":
            return self.op("sub", c, self.const(c, 0), x)
        if name == "square":
            return self.op("mul", c, x, x)
        if name == "bitwise_invert":
            return self.op("xor", c, x, self.const(c, -1))
        if name == "sign":
            if unsigned:
                return self.conv("zext", "i1", self.cmp("icmp", "ne", c, x, self.const(c, 0)), c)
            pos = self.conv("zext", "i1", self.cmp("icmp", "sgt", c, x, self.const(c, 0)), c)
            neg = self.conv("zext", "i1", self.cmp("icmp", "slt", c, x, self.const(c, 0)), c)
            return self.op("sub", c, pos, neg)
        if name in ("floor_divide", "remainder"):
            return self.int_division(name, x, a[1], c, unsigned)
        if name == "trunc":
            return x
        if name in ("isnan", "isinf", "isposinf", "isneginf"):
            return self.const("i1", 0)
        if name == "isfinite":
            return self.const("i1", 1)
        raise NotImplementedError(f"integer op {name}")

    def int_division(self, name: str, x: str, y: str, c: str, unsigned: bool) -> str:
        """Floor division and remainder with MLX's answers where the hardware's are undefined:
        x // 0 is 0, x % 0 is x, and x // -1 wraps (INT_MIN // -1 is INT_MIN)."""
        zero = self.cmp("icmp", "eq", c, y, self.const(c, 0))
        if unsigned:
            safe = self.select(zero, c, self.const(c, 1), y)
            if name == "floor_divide":
                return self.select(zero, c, self.const(c, 0), self.op("udiv", c, x, safe))
            return self.select(zero, c, x, self.op("urem", c, x, safe))
        minus_one = self.cmp("icmp", "eq", c, y, self.const(c, -1))
        bad = self.op("or", "i1", zero, minus_one)
        safe = self.select(bad, c, self.const(c, 1), y)
        r = self.op("srem", c, x, safe)
        differ = self.op("xor", "i1", self.cmp("icmp", "slt", c, r, self.const(c, 0)),
                         self.cmp("icmp", "slt", c, safe, self.const(c, 0)))
        fix = self.op("and", "i1", self.cmp("icmp", "ne", c, r, self.const(c, 0)), differ)
        if name == "floor_divide":
            q = self.op("sub", c, self.op("sdiv", c, x, safe), self.conv("zext", "i1", fix, c))
            q = self.select(minus_one, c, self.op("sub", c, self.const(c, 0), x), q)
            return self.select(zero, c, self.const(c, 0), q)
        r = self.select(fix, c, self.op("add", c, r, safe), r)
        r = self.select(minus_one, c, self.const(c, 0), r)
        return self.select(zero, c, x, r)


# --- reductions ---------------------------------------------------------------------------------

def _identity(op: str, dtype: str):
    c = _COMPUTE[dtype]
    if op == "sum":
        return 0
    if op == "prod":
        return 1
    if c in ("float", "double"):
        return -math.inf if op == "max" else math.inf
    if c == "i1":
        return 0 if op == "max" else 1
    bits = _BITS[c]
    if _is_unsigned(dtype):
        return 0 if op == "max" else (1 << bits) - 1
    return -(1 << (bits - 1)) if op == "max" else (1 << (bits - 1)) - 1


def _combine(lanes: _Lanes, op: str, dtype: str, a: str, b: str) -> str:
    c = _COMPUTE[dtype]
    if c in ("float", "double"):
        if op == "sum":
            return lanes.b.emit(f"fadd reassoc {lanes.ty(c)} {a}, {b}")
        if op == "prod":
            return lanes.b.emit(f"fmul reassoc {lanes.ty(c)} {a}, {b}")
        return lanes.call("maximum" if op == "max" else "minimum", c, [(lanes.ty(c), a), (lanes.ty(c), b)])
    if c == "i1":
        return lanes.op({"max": "or", "min": "and", "sum": "or", "prod": "and"}[op], c, a, b)
    if op in ("sum", "prod"):
        return lanes.op("add" if op == "sum" else "mul", c, a, b)
    fn = ("u" if _is_unsigned(dtype) else "s") + op
    return lanes.call(fn, c, [(lanes.ty(c), a), (lanes.ty(c), b)])


def _horizontal(vec: _Lanes, op: str, dtype: str, v: str) -> str:
    c = _COMPUTE[dtype]
    t = vec.ty(c)
    if c in ("float", "double"):
        if op in ("sum", "prod"):
            name = f"llvm.vector.reduce.{'fadd' if op == 'sum' else 'fmul'}.{vec.sfx(c)}"
            vec.b.declare(f"{c} @{name}({c}, {t})")
            start = float_literal(-0.0 if op == "sum" else 1.0)
            return vec.b.emit(f"call reassoc {c} @{name}({c} {start}, {t} {v})")
        name = f"llvm.vector.reduce.{'fmaximum' if op == 'max' else 'fminimum'}.{vec.sfx(c)}"
    elif c == "i1":
        name = f"llvm.vector.reduce.{ {'max': 'or', 'min': 'and', 'sum': 'or', 'prod': 'and'}[op]}.{vec.sfx(c)}"
    elif op in ("sum", "prod"):
        name = f"llvm.vector.reduce.{'add' if op == 'sum' else 'mul'}.{vec.sfx(c)}"
    else:
        name = f"llvm.vector.reduce.{'u' if _is_unsigned(dtype) else 's'}{op}.{vec.sfx(c)}"
    vec.b.declare(f"{c} @{name}({t})")
    return vec.b.emit(f"call {c} @{name}({t} {v})")


# --- the function ---------------------------------------------------------------------------------

def _index_terms(body: _Body, linear: str, dims: tuple, strides_of: dict) -> dict:
    """Per buffer: the element offset of the multi-index that ``linear`` (row-major over ``dims``)
    names. Dims of size 1 and buffers with stride 0 cost nothing."""
    offsets = {b: "0" for b in strides_of}
    div = 1
    for d in range(len(dims) - 1, -1, -1):
        size = dims[d]
        if size > 1 and any(s[d] for s in strides_of.values()):
            q = body.emit(f"udiv i64 {linear}, {div}") if div > 1 else linear
            idx = body.emit(f"urem i64 {q}, {size}") if d > 0 else q
            for b, s in strides_of.items():
                if s[d]:
                    term = body.emit(f"mul i64 {idx}, {s[d]}")
                    offsets[b] = term if offsets[b] == "0" else body.emit(f"add i64 {offsets[b]}, {term}")
        div *= size
    return offsets


def _buffers(kernel: Kernel) -> dict:
    """Buffer -> (dtype, strides over all dims) for every load, and the store."""
    from .ir import walk

    bufs = {}
    for e in walk(kernel.store.value):
        if isinstance(e, Load):
            bufs.setdefault(e.buf, (e.dtype, e.strides))
    return bufs


_LIBM_OPS = frozenset({"remainder"})  # float frem is a libm call (fmodf), one per lane


def _scalar_only(kernel: Kernel, lanes) -> bool:
    """Whether the vector loop must go: LLVM cannot split a scalable vector into per-lane libm calls."""
    from .ir import walk

    return lanes == "vscale" and any(isinstance(e, Op) and e.op in _LIBM_OPS and _is_float(e.args[0].dtype)
                                     for e in walk(kernel.store.value))


def render(kernel: Kernel, target: Target) -> str:
    declares: set = set()
    body = _Body(declares)
    lanes = "vscale" if target.scalable else kernel.width
    if kernel.reduce_op is None:
        _render_elementwise(body, kernel, lanes)
    elif kernel.reduce_op in ("argmax", "argmin"):
        _render_argreduce(body, kernel, lanes)
    else:
        _render_reduce(body, kernel, lanes)
    head = (f'; mlxarm kernel for {target.triple} ({"scalable" if target.scalable else kernel.width} lanes)\n'
            f'target triple = "{target.triple}"\n\n'
            f"define void @{kernel.name}(ptr noalias nocapture readonly %args, i64 %start, i64 %end) "
            f"nounwind {{\nentry:\n")
    return head + "\n".join(body.lines) + "\n}\n\n" + "\n".join(sorted(declares)) + "\n"


def _epilogue_buffers(kernel: Kernel) -> dict:
    from .ir import walk

    if kernel.epilogue is None:
        return {}
    return {e.buf: (e.dtype, e.strides) for e in walk(kernel.epilogue) if isinstance(e, Load)}


def _prologue(body: _Body, kernel: Kernel, lanes) -> tuple:
    bufs = _buffers(kernel)
    base = {}
    for b in sorted(set(bufs) | {kernel.store.buf} | set(_epilogue_buffers(kernel))):
        slot = body.emit(f"getelementptr ptr, ptr %args, i64 {b}")
        base[b] = body.emit(f"load ptr, ptr {slot}, align 8")
    if lanes == "vscale":
        body.declare("i64 @llvm.vscale.i64()")
        vs = body.emit("call i64 @llvm.vscale.i64()")
        width = body.emit(f"shl i64 {vs}, 2")
    else:
        width = str(lanes)
    return bufs, base, width


def _row_pointers(body: _Body, base: dict, offsets: dict, storage: dict) -> dict:
    ptrs = {}
    for b, off in offsets.items():
        ptrs[b] = base[b] if off == "0" else body.emit(f"getelementptr {storage[b]}, ptr {base[b]}, i64 {off}")
    return ptrs


def _counter(body: _Body, name: str) -> str:
    slot = f"%{name}.slot"
    body.raw(f"{slot} = alloca i64, align 8")
    return slot


def _render_elementwise(body: _Body, k: Kernel, lanes) -> None:
    bufs, base, width = _prologue(body, k, lanes)
    store = k.store
    dims = k.dims
    inner = dims[-1]
    storage = {b: _STORAGE[d] for b, (d, _) in bufs.items()}
    storage[store.buf] = _STORAGE[store.dtype]
    i_slot, j_slot = _counter(body, "i"), _counter(body, "j")
    body.raw(f"store i64 %start, ptr {i_slot}, align 8")
    body.raw("br label %row")
    body.raw("row:")
    i = body.emit(f"load i64, ptr {i_slot}, align 8")
    done = body.emit(f"icmp sge i64 {i}, %end")
    body.raw(f"br i1 {done}, label %exit, label %rowbody")
    body.raw("rowbody:")
    row = body.emit(f"udiv i64 {i}, {inner}")
    col0 = body.emit(f"urem i64 {i}, {inner}")
    left = body.emit(f"sub i64 %end, {i}")
    avail = body.emit(f"sub i64 {inner}, {col0}")
    body.declare("i64 @llvm.umin.i64(i64, i64)")
    n = body.emit(f"call i64 @llvm.umin.i64(i64 {left}, i64 {avail})")
    strides_of = {b: s[:-1] for b, (_, s) in bufs.items()}
    strides_of[store.buf] = store.strides[:-1]
    offsets = _index_terms(body, row, dims[:-1], strides_of)
    inner_strides = {b: s[-1] for b, (_, s) in bufs.items()}
    inner_strides[store.buf] = store.strides[-1]
    for b, s in inner_strides.items():
        if s:
            term = body.emit(f"mul i64 {col0}, {s}")
            offsets[b] = term if offsets[b] == "0" else body.emit(f"add i64 {offsets[b]}, {term}")
    ptrs = _row_pointers(body, base, offsets, storage)
    body.raw(f"store i64 0, ptr {j_slot}, align 8")
    vector_ok = (lanes != "vscale" or all(s in (0, 1) for s in inner_strides.values())) \
        and not _scalar_only(k, lanes)
    vectors = [(width, "vloop", "vbody", lambda j: _store(_Values(body, lanes, ptrs, j, width), store, ptrs, j))]
    counted_loops(body, j_slot, n, (vectors if vector_ok else [])
                  + [(1, "sloop", "sbody", lambda j: _store(_Values(body, None, ptrs, j, "1"), store, ptrs, j))],
                  "rowend")
    nxt = body.emit(f"add i64 {i}, {n}")
    body.raw(f"store i64 {nxt}, ptr {i_slot}, align 8")
    body.raw("br label %row")
    body.raw("exit:")
    body.raw("ret void")


def _store(vals: _Values, store, ptrs: dict, j: str) -> None:
    v = vals.stored(vals.value(store.value), store.dtype)
    st = _STORAGE[store.dtype]
    stride = store.strides[-1] if store.strides else 0
    if vals.lanes is None:
        p = vals.address(store.buf, st, stride)
        vals.b.raw(f"store {st} {v}, ptr {p}, align {_SIZE[st]}")
        return
    p = vals.b.emit(f"getelementptr {st}, ptr {ptrs[store.buf]}, i64 {j}")
    vals.b.raw(f"store {vals.ty(st)} {v}, ptr {p}, align {_SIZE[st]}")


# A reduction keeps _ACCUMULATORS independent vector sums per output (one vector add at a time is
# latency bound). Where neighbouring outputs read the same data (``_grouped``) a kernel reduces _GROUP
# of them per pass with _GROUP_ACCUMULATORS sums each, and the leftover outputs use the same sums one
# at a time, so an output's value never depends on where the work was split between threads.
# Measured on Zen 4 against one output per pass (one thread): a float32 matvec of 1024 x 1024 took
# 53 us instead of 64 and of 4096 x 4096 the same time (memory bound); a column sum of 2048 x 1024
# 3.4 ms instead of 12.2. Outputs that share nothing (a row sum, logsumexp) gained nothing or lost
# up to a fifth, so they keep one output per pass.
_ACCUMULATORS = 4
_GROUP = 4
_GROUP_ACCUMULATORS = 2


def _grouped(k: Kernel) -> bool:
    """Whether neighbouring outputs share their loads: a buffer broadcast along the last output dim
    but not along the reduction (a matrix-vector product's vector), or one read with a stride along
    the reduction and contiguous along the outputs (a column sum: the outputs share cache lines)."""
    if k.out_size < _GROUP or k.n_out == 0:
        return False
    for _, strides in _buffers(k).values():
        out_stride, red_stride = strides[k.n_out - 1], strides[-1]
        if (out_stride == 0 and red_stride != 0) or (out_stride == 1 and red_stride not in (0, 1)):
            return True
    return False


def counted_loops(body: _Body, slot: str, bound: str, stages: list, after: str) -> None:
    """Loops over one counter, each taking up where the one before stopped: for each stage (step, head
    label, body label, ``emit``) but the last, ``for (; i + step <= bound; i += step) emit(i)``; the last
    (step 1) ``for (; i < bound; i += 1) emit(i)``. Unrolled vectors, then vectors, then the scalar
    remainder; or groups of outputs, then the ones left. The counter ``i`` lives in the alloca ``slot``,
    which the caller sets first; the loops end at label ``after``."""
    assert stages and stages[-1][0] == 1
    body.raw(f"br label %{stages[0][1]}")
    for n, (step, head, at, emit) in enumerate(stages):
        last = n == len(stages) - 1
        exit_to = after if last else stages[n + 1][1]
        body.raw(f"{head}:")
        i = body.emit(f"load i64, ptr {slot}, align 8")
        if last:
            more = body.emit(f"icmp slt i64 {i}, {bound}")
            body.raw(f"br i1 {more}, label %{at}, label %{exit_to}")
            body.raw(f"{at}:")
            emit(i)
            nxt = body.emit(f"add i64 {i}, 1")
        else:
            nxt = body.emit(f"add i64 {i}, {step}")
            fits = body.emit(f"icmp sle i64 {nxt}, {bound}")
            body.raw(f"br i1 {fits}, label %{at}, label %{exit_to}")
            body.raw(f"{at}:")
            emit(i)
        body.raw(f"store i64 {nxt}, ptr {slot}, align 8")
        body.raw(f"br label %{head}")
    body.raw(f"{after}:")


def _render_reduce(body: _Body, k: Kernel, lanes) -> None:
    bufs, base, width = _prologue(body, k, lanes)
    vec = _Lanes(body, lanes)
    c = _COMPUTE[k.store.value.dtype]
    o_slot, r_slot, j_slot = _counter(body, "o"), _counter(body, "r"), _counter(body, "j")
    grouped = _grouped(k)
    accumulators = _GROUP_ACCUMULATORS if grouped else _ACCUMULATORS
    vacc = [[f"%vacc{g}_{u}.slot" for u in range(accumulators)] for g in range(_GROUP if grouped else 1)]
    sacc = [f"%sacc{g}.slot" for g in range(len(vacc))]
    for slots, scalar in zip(vacc, sacc):
        for slot in slots:
            body.raw(f"{slot} = alloca {vec.ty(c)}")
        body.raw(f"{scalar} = alloca {c}")
    body.raw(f"store i64 %start, ptr {o_slot}, align 8")
    # groups of _GROUP outputs reduced in one pass, then the outputs left one at a time
    groups = [(_GROUP, "group", "group.body",
               lambda o: _reduce_outputs(body, k, lanes, bufs, base, width, o, vacc, sacc, (r_slot, j_slot), "group."))]
    counted_loops(body, o_slot, "%end", (groups if grouped else []) + [
        (1, "out", "outbody",
         lambda o: _reduce_outputs(body, k, lanes, bufs, base, width, o, vacc[:1], sacc[:1], (r_slot, j_slot), ""))],
        "exit")
    body.raw("ret void")


def _reduce_outputs(body: _Body, k: Kernel, lanes, bufs: dict, base: dict, width: str, o: str, vacc: list,
                    sacc: list, counters: tuple, tag: str) -> None:
    """Outputs ``o`` to ``o + len(vacc) - 1``, each reduced into its own vector sums ``vacc[g]`` and
    scalar sum ``sacc[g]`` (alloca slots) and stored; block labels start with ``tag``."""
    store, op, dtype = k.store, k.reduce_op, k.store.value.dtype
    c = _COMPUTE[dtype]
    out_dims, red_dims = k.dims[:k.n_out], k.dims[k.n_out:]
    inner = red_dims[-1]
    rows = 1
    for d in red_dims[:-1]:
        rows *= d
    storage = {b: _STORAGE[d] for b, (d, _) in bufs.items()}
    vec = _Lanes(body, lanes)
    sca = _Lanes(body, None)
    r_slot, j_slot = counters
    unroll = len(vacc[0])
    outs = [o] + [body.emit(f"add i64 {o}, {g}") for g in range(1, len(vacc))]
    ident = _identity(op, dtype)
    for slots, scalar in zip(vacc, sacc):
        for slot in slots:
            body.raw(f"store {vec.ty(c)} {vec.const(c, ident)}, ptr {slot}")
        body.raw(f"store {c} {sca.const(c, ident)}, ptr {scalar}")
    out_offsets = [_index_terms(body, og, out_dims, {b: s[:k.n_out] for b, (_, s) in bufs.items()})
                   for og in outs]
    body.raw(f"store i64 0, ptr {r_slot}, align 8")
    body.raw(f"br label %{tag}red")
    body.raw(f"{tag}red:")
    r = body.emit(f"load i64, ptr {r_slot}, align 8")
    rdone = body.emit(f"icmp sge i64 {r}, {rows}")
    body.raw(f"br i1 {rdone}, label %{tag}finish, label %{tag}redbody")
    body.raw(f"{tag}redbody:")
    red_offsets = _index_terms(body, r, red_dims[:-1], {b: s[k.n_out:-1] for b, (_, s) in bufs.items()})
    ptrs = []
    for offs in out_offsets:
        offsets = {}
        for b in bufs:
            a, bb = offs[b], red_offsets[b]
            offsets[b] = a if bb == "0" else bb if a == "0" else body.emit(f"add i64 {a}, {bb}")
        ptrs.append(_row_pointers(body, base, offsets, storage))
    inner_strides = [s[-1] for _, s in bufs.values()]
    body.raw(f"store i64 0, ptr {j_slot}, align 8")

    def accumulate(at: str, slots: list) -> None:  # one vector of each output at ``at``
        for p, slot in zip(ptrs, slots):
            x = _Values(body, lanes, p, at, width).value(store.value)
            acc = body.emit(f"load {vec.ty(c)}, ptr {slot}")
            body.raw(f"store {vec.ty(c)} {_combine(vec, op, dtype, acc, x)}, ptr {slot}")

    def unrolled(j: str) -> None:  # ``unroll`` vectors of each output, one accumulator each
        for u in range(unroll):
            at = j if u == 0 else body.emit(f"add i64 {j}, {body.emit(f'mul i64 {width}, {u}')}")
            accumulate(at, [slots[u] for slots in vacc])

    def scalar(j: str) -> None:
        for p, slot in zip(ptrs, sacc):
            x = _Values(body, None, p, j, "1").value(store.value)
            acc = body.emit(f"load {c}, ptr {slot}")
            body.raw(f"store {c} {_combine(sca, op, dtype, acc, x)}, ptr {slot}")

    stages = [(1, f"{tag}sloop", f"{tag}sbody", scalar)]
    if (lanes != "vscale" or all(s in (0, 1) for s in inner_strides)) and not _scalar_only(k, lanes):
        step = body.emit(f"mul i64 {width}, {unroll}")
        stages[:0] = [(step, f"{tag}uloop", f"{tag}ubody", unrolled),
                      (width, f"{tag}vloop", f"{tag}vbody", lambda j: accumulate(j, [slots[0] for slots in vacc]))]
    counted_loops(body, j_slot, inner, stages, f"{tag}redend")
    rn = body.emit(f"add i64 {r}, 1")
    body.raw(f"store i64 {rn}, ptr {r_slot}, align 8")
    body.raw(f"br label %{tag}red")
    body.raw(f"{tag}finish:")
    for og, slots, scalar in zip(outs, vacc, sacc):
        v_acc = body.emit(f"load {vec.ty(c)}, ptr {slots[0]}")
        for slot in slots[1:]:
            v_acc = _combine(vec, op, dtype, v_acc, body.emit(f"load {vec.ty(c)}, ptr {slot}"))
        total = _combine(sca, op, dtype, _horizontal(vec, op, dtype, v_acc),
                         body.emit(f"load {c}, ptr {scalar}"))
        out = _Values(body, None, {}, og, "1")
        if k.epilogue is None:
            v = out.stored(out.round(total, store.dtype), store.dtype)
        else:
            ebufs = _epilogue_buffers(k)
            eoffsets = _index_terms(body, og, out_dims, {b: s for b, (_, s) in ebufs.items()})
            eptrs = _row_pointers(body, base, eoffsets, {b: _STORAGE[d] for b, (d, _) in ebufs.items()})
            ev = _Values(body, None, eptrs, "0", "1")
            from .ir import walk

            for red in (e for e in walk(k.epilogue) if isinstance(e, Reduced)):
                ev.memo[red] = out.round(total, red.dtype)
            v = ev.stored(ev.value(k.epilogue), store.dtype)
        st = _STORAGE[store.dtype]
        p = body.emit(f"getelementptr {st}, ptr {base[store.buf]}, i64 {og}")
        body.raw(f"store {st} {v}, ptr {p}, align {_SIZE[st]}")


def _render_argreduce(body: _Body, k: Kernel, lanes) -> None:
    """argmax/argmin: the first position (row-major over the reduced dims) of the extreme value; a
    NaN beats every number, so the first NaN wins, as in numpy. One scalar pass per output."""
    bufs, base, _ = _prologue(body, k, lanes)
    store, dtype = k.store, k.store.value.dtype
    c = _COMPUTE[dtype]
    out_dims, red_dims = k.dims[:k.n_out], k.dims[k.n_out:]
    inner = red_dims[-1]
    rows = 1
    for d in red_dims[:-1]:
        rows *= d
    storage = {b: _STORAGE[d] for b, (d, _) in bufs.items()}
    sca = _Lanes(body, None)
    o_slot, r_slot, j_slot = _counter(body, "o"), _counter(body, "r"), _counter(body, "j")
    body.raw(f"%best.slot = alloca {c}")
    body.raw("%where.slot = alloca i64, align 8")
    body.raw(f"store i64 %start, ptr {o_slot}, align 8")
    body.raw("br label %out")
    body.raw("out:")
    o = body.emit(f"load i64, ptr {o_slot}, align 8")
    done = body.emit(f"icmp sge i64 {o}, %end")
    body.raw(f"br i1 {done}, label %exit, label %outbody")
    body.raw("outbody:")
    worst = "max" if k.reduce_op == "argmax" else "min"
    body.raw(f"store {c} {sca.const(c, _identity(worst, dtype))}, ptr %best.slot")
    body.raw("store i64 0, ptr %where.slot, align 8")
    out_offsets = _index_terms(body, o, out_dims, {b: s[:k.n_out] for b, (_, s) in bufs.items()})
    body.raw(f"store i64 0, ptr {r_slot}, align 8")
    body.raw("br label %red")
    body.raw("red:")
    r = body.emit(f"load i64, ptr {r_slot}, align 8")
    rdone = body.emit(f"icmp sge i64 {r}, {rows}")
    body.raw(f"br i1 {rdone}, label %finish, label %redbody")
    body.raw("redbody:")
    red_offsets = _index_terms(body, r, red_dims[:-1], {b: s[k.n_out:-1] for b, (_, s) in bufs.items()})
    offsets = {}
    for b in bufs:
        a, bb = out_offsets[b], red_offsets[b]
        offsets[b] = a if bb == "0" else bb if a == "0" else body.emit(f"add i64 {a}, {bb}")
    ptrs = _row_pointers(body, base, offsets, storage)
    body.raw(f"store i64 0, ptr {j_slot}, align 8")
    body.raw("br label %sloop")
    body.raw("sloop:")
    j = body.emit(f"load i64, ptr {j_slot}, align 8")
    ok = body.emit(f"icmp slt i64 {j}, {inner}")
    body.raw(f"br i1 {ok}, label %sbody, label %redend")
    body.raw("sbody:")
    sv = _Values(body, None, ptrs, j, "1")
    x = sv.value(store.value)
    best = body.emit(f"load {c}, ptr %best.slot")
    if c in ("float", "double"):
        beats = sca.cmp("fcmp", "ogt" if worst == "max" else "olt", c, x, best)
        nan_first = sca.op("and", "i1", sca.cmp("fcmp", "uno", c, x, x), sca.cmp("fcmp", "ord", c, best, best))
        beats = sca.op("or", "i1", beats, nan_first)
    else:
        pred = ("u" if _is_unsigned(dtype) else "s") + ("gt" if worst == "max" else "lt")
        beats = sca.cmp("icmp", pred, c, x, best)
    row_base = body.emit(f"mul i64 {r}, {inner}")
    pos = body.emit(f"add i64 {row_base}, {j}")
    where = body.emit("load i64, ptr %where.slot, align 8")
    body.raw(f"store {c} {sca.select(beats, c, x, best)}, ptr %best.slot")
    body.raw(f"store i64 {sca.select(beats, 'i64', pos, where)}, ptr %where.slot, align 8")
    jn = body.emit(f"add i64 {j}, 1")
    body.raw(f"store i64 {jn}, ptr {j_slot}, align 8")
    body.raw("br label %sloop")
    body.raw("redend:")
    rn = body.emit(f"add i64 {r}, 1")
    body.raw(f"store i64 {rn}, ptr {r_slot}, align 8")
    body.raw("br label %red")
    body.raw("finish:")
    where = body.emit("load i64, ptr %where.slot, align 8")
    st = _STORAGE[store.dtype]
    v = where if st == "i64" else body.emit(f"trunc i64 {where} to {st}")
    p = body.emit(f"getelementptr {st}, ptr {base[store.buf]}, i64 {o}")
    body.raw(f"store {st} {v}, ptr {p}, align {_SIZE[st]}")
    on = body.emit(f"add i64 {o}, 1")
    body.raw(f"store i64 {on}, ptr {o_slot}, align 8")
    body.raw("br label %out")
    body.raw("exit:")
    body.raw("ret void")
