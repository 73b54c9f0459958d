"""Functions LLVM's code may call that the process may not have: the half-precision conversions.

On an x86 CPU without F16C, LLVM turns ``fpext half`` and ``fptrunc ... to half`` into calls of
compiler-rt's ``__extendhfsf2`` and ``__truncsfhf2``. A process running Python need not have them
(libgcc has them only from GCC 12 on, and only where it is loaded). So the LLVM executor compiles them
here, from integer operations on the bits (no ``half`` arithmetic, which would call them again), and
registers them with its loader (``elf_loader``) before any kernel is loaded.
Both round as IEEE 754 does (to nearest, ties to even; NaN stays NaN with its sign, infinities and
subnormals are exact), as numpy converts.
"""
from __future__ import annotations

# half -> float: the half's exponent and significand are moved into float's fields, and a
# multiplication by 2**112 rebiases the exponent (making a half subnormal a float normal exactly);
# infinities and NaNs get float's all-ones exponent instead.
_EXTEND = """
define float @__extendhfsf2(half %h) {
entry:
  %x16 = bitcast half %h to i16
  %x = zext i16 %x16 to i32
  %sign = and i32 %x, 32768
  %sign32 = shl i32 %sign, 16
  %mag = and i32 %x, 32767
  %moved = shl i32 %mag, 13
  %exp = and i32 %x, 31744
  %special = icmp eq i32 %exp, 31744
  br i1 %special, label %infnan, label %finite
infnan:
  %o1 = or i32 %moved, 2139095040
  br label %done
finite:
  %f = bitcast i32 %moved to float
  %scaled = fmul float %f, 0x46F0000000000000
  %o2 = bitcast float %scaled to i32
  br label %done
done:
  %o = phi i32 [ %o1, %infnan ], [ %o2, %finite ]
  %r = or i32 %o, %sign32
  %rf = bitcast i32 %r to float
  ret float %rf
}
"""

# float -> half, round to nearest even: overflow gives infinity and NaN a quiet NaN; a result below
# half's normal range is rounded by one float addition of 0.5 (the float's significand then holds the
# half subnormal's bits); a normal one is rebiased, with 0xFFF plus the kept significand's lowest bit
# added below the cut so that a tie rounds to even.
_TRUNC = """
define half @__truncsfhf2(float %f) {
entry:
  %u0 = bitcast float %f to i32
  %sign = and i32 %u0, -2147483648
  %u = xor i32 %u0, %sign
  %big = icmp uge i32 %u, 1199570944
  br i1 %big, label %overflow, label %range
overflow:
  %nan = icmp ugt i32 %u, 2139095040
  %o1 = select i1 %nan, i32 32256, i32 31744
  br label %done
range:
  %small = icmp ult i32 %u, 947912704
  br i1 %small, label %subnormal, label %normal
subnormal:
  %fu = bitcast i32 %u to float
  %sum = fadd float %fu, 0x3FE0000000000000
  %sb = bitcast float %sum to i32
  %o2 = sub i32 %sb, 1056964608
  br label %done
normal:
  %odd0 = lshr i32 %u, 13
  %odd = and i32 %odd0, 1
  %r0 = add i32 %u, -939520001
  %r1 = add i32 %r0, %odd
  %o3 = lshr i32 %r1, 13
  br label %done
done:
  %o = phi i32 [ %o1, %overflow ], [ %o2, %subnormal ], [ %o3, %normal ]
  %s16 = lshr i32 %sign, 16
  %r = or i32 %o, %s16
  %r16 = trunc i32 %r to i16
  %h = bitcast i16 %r16 to half
  ret half %h
}
"""

NAMES = ("__extendhfsf2", "__truncsfhf2")


def needed(target) -> bool:
    """Whether code for ``target`` may call these functions: an x86 CPU without F16C."""
    return target.triple.split("-")[0] in ("x86_64", "i386", "i686") and not target.has("f16c")


def source(target) -> str:
    return f'target triple = "{target.triple}"\n' + _EXTEND + _TRUNC


def link(compiler) -> None:
    """Compile (or find in the cache) and load the functions for ``compiler``'s target, and make them
    what kernels' calls resolve to."""
    if not needed(compiler.target):
        return
    text = source(compiler.target)
    for name in NAMES:
        compiler.loader.define(name, compiler.address(text, name))
