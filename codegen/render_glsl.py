"""GLSL 4.50 compute-shader renderer: kernel IR to one shader for Vulkan (``render_c`` does the shared work).

Kompute binds plain buffers, so every buffer is an array of 32-bit words: 8- and 16-bit elements are
extracted from their word with shifts, and written with ``atomicAnd``/``atomicOr`` on their bits so
work items writing neighbours in one word never lose each other's bits. Narrow integers compute in
32 bits and are wrapped back into their range after every operation. 64-bit integers are left to the
numpy executor (``SUPPORTED``). Element offsets of the buffers' views and the output size arrive as
push constants, so one shader serves every view of the same layout. Where the device has subgroup
arithmetic (GL_KHR_shader_subgroup_arithmetic, SPIR-V 1.3), reductions combine a workgroup's results
with subgroup operations (``render(..., subgroups=True)``; ``render_c.subgroup_tree``).
"""
from __future__ import annotations

from .ir import Cast, Kernel, Load, Op, walk
from .render_c import FLOATS, HALF_HELPERS, CRenderer, bits, unsigned

# Output elements a work item computes per step of an elementwise kernel's loop (``render_c``'s
# ``elementwise_body``). Four, not the C base's two: on an H200 a 64 MB copy's GPU time (Vulkan
# timestamps) went from 0.88 of PyTorch's to 0.95 with four, and no workload measured got slower.
ELEMENTWISE = 4

SUPPORTED = frozenset({"bool", "uint8", "uint16", "uint32", "int8", "int16", "int32", "float16", "float32",
                       "bfloat16"})

_CTYPE = {"bool": "bool", "uint8": "uint", "int8": "int", "uint16": "uint", "int16": "int", "uint32": "uint",
          "int32": "int", "float16": "float", "float32": "float", "bfloat16": "float"}

# The macros and helpers every kernel (and the kernel templates, ``kernels.gpu_*``) builds on.
PRELUDE = """#version 450
#define F2U(x) floatBitsToUint(x)
#define U2F(x) uintBitsToFloat(x)
#define RINT(x) roundEven(x)
#define ISNAN(x) isnan(x)
#define ISINF(x) isinf(x)
#define FABS(x) abs(x)
#define TO_U(x) uint(x)
#define TO_F(x) float(x)
""" + HALF_HELPERS + """
// Vulkan bounds the error of sin and cos only on [-pi, pi] (NVIDIA's are 4e-3 off at 1.6e4), so the
// argument is reduced first: x = k pi/2 + r, |r| <= pi/4, then sin or cos of r by the quadrant k. pi/2
// is taken off in parts of at most 8 significant bits (its last part: the rest, to 2^-71), k in two
// parts of at most 16 bits: every product is exact, and so is every difference until r is small, so r
// is exact to float's precision while |x| < 2^24 pi / 2 (2.6e7). ``precise``: no reordering.
float mx_sincos(float x, int shift) {
  float k = roundEven(x * 0.63661977236758134f);
  float kl = k - 256.0f * trunc(k * 0.00390625f);
  float kh = k - kl;
  precise float r = x - kh * 1.5703125f - kl * 1.5703125f;
  r = r - kh * 4.84466552734375e-4f - kl * 4.84466552734375e-4f;
  r = r + kh * 6.407499313354492e-7f + kl * 6.407499313354492e-7f;
  r = r - kh * 9.89530235528946e-10f - kl * 9.89530235528946e-10f;
  r = r - kh * 2.5579538487363607e-12f - kl * 2.5579538487363607e-12f;
  r = r - k * 5.390302953474238e-15f;
  int q = int(k) + shift;
  float v = (q & 1) != 0 ? cos(r) : sin(r);
  return (q & 2) != 0 ? -v : v;
}
float mx_sin(float x) { return mx_sincos(x, 0); }
float mx_cos(float x) { return mx_sincos(x, 1); }
uint mx_f2u32(float x) {
  if (isnan(x)) return 0u;
  float t = trunc(x);
  if (t >= 9.2233720e18) return 0xFFFFFFFFu;
  if (t < -9.2233720e18) return 0u;
  if (abs(t) < 2147483648.0) return uint(int(t));
  return uint(t - 4294967296.0 * floor(t / 4294967296.0));
}
"""


# What the subgroup form of a workgroup's reduction needs (render_c.subgroup_tree).
SUBGROUP_EXTENSIONS = ("#extension GL_KHR_shader_subgroup_basic : require\n"
                       "#extension GL_KHR_shader_subgroup_vote : require\n"
                       "#extension GL_KHR_shader_subgroup_arithmetic : require\n")
SUBGROUP = {"id": "int(gl_SubgroupID)", "lane": "int(gl_SubgroupInvocationID)", "count": "int(gl_NumSubgroups)",
            "size": "int(gl_SubgroupSize)", "first": "gl_SubgroupID == 0u && gl_SubgroupInvocationID == 0u"}
_SUBGROUP_OPS = {"sum": "subgroupAdd", "prod": "subgroupMul", "max": "subgroupMax", "min": "subgroupMin"}
_SUBGROUP_BOOL = {"sum": "subgroupOr", "max": "subgroupOr", "prod": "subgroupAnd", "min": "subgroupAnd"}


def subgroup_reduce(op: str, dtype: str, x: str) -> str:
    """The subgroup-wide ``op`` of ``x``, a value of ``dtype``'s compute type. The hardware's float
    max/min may drop NaN, so a NaN anywhere in the subgroup wins explicitly (numpy's rule)."""
    if dtype == "bool":
        return f"{_SUBGROUP_BOOL[op]}({x})"
    expr = f"{_SUBGROUP_OPS[op]}({x})"
    if dtype in FLOATS and op in ("max", "min"):
        expr = f"(subgroupAny(isnan({x})) ? uintBitsToFloat(0x7FC00000u) : {expr})"
    return expr


def with_extensions(source: str, extensions: str) -> str:
    """``source`` (which starts with its ``#version`` line) with ``extensions`` right after that line."""
    first, rest = source.split("\n", 1)
    return first + "\n" + extensions + rest


def supported(kernel: Kernel) -> bool:
    """Whether every dtype the kernel touches has a GLSL form here."""
    if kernel.store.dtype not in SUPPORTED:
        return False
    for e in walk(kernel.store.value):
        if isinstance(e, (Load, Op, Cast)) and e.dtype not in SUPPORTED:
            return False
        if isinstance(e, Cast) and e.arg.dtype not in SUPPORTED:
            return False
    return True


class GLSLRenderer(CRenderer):
    index_type = "int"

    def ctype(self, dtype: str) -> str:
        return _CTYPE[dtype]

    def to(self, ctype: str, expr: str) -> str:
        return f"{ctype}({expr})"

    def wrap(self, expr: str, dtype: str) -> str:
        b = bits(dtype)
        if b >= 32 or dtype == "bool":
            return expr
        if unsigned(dtype):
            return f"(({expr}) & {hex((1 << b) - 1)}u)"
        return f"((({expr}) << {32 - b}) >> {32 - b})"

    def load_raw(self, buf: int, dtype: str, offset: str) -> str:
        b = bits(dtype)
        if b == 32:
            word = f"b{buf}.w[{offset}]"
            return {"float32": f"uintBitsToFloat({word})", "int32": f"int({word})"}.get(dtype, word)
        per = 32 // b
        shift = per.bit_length() - 1  # log2(per)
        field = (f"((b{buf}.w[({offset}) >> {shift}] >> ((({offset}) & {per - 1}) * {b})) "
                 f"& {hex((1 << b) - 1)}u)")
        if dtype in ("int8", "int16"):
            return self.wrap(f"int({field})", dtype)
        return field

    def store_raw(self, buf: int, dtype: str, offset: str, value: str) -> None:
        b = bits(dtype)
        if b == 32:
            word = {"float32": f"floatBitsToUint({value})", "int32": f"uint({value})"}.get(dtype, value)
            self.raw(f"b{buf}.w[{offset}] = {word};")
            return
        per = 32 // b
        shift = per.bit_length() - 1
        mask = hex((1 << b) - 1)
        sh = self.emit("uint", f"uint(({offset}) & {per - 1}) * {b}u")
        idx = self.emit("int", f"({offset}) >> {shift}")
        self.raw(f"atomicAnd(b{buf}.w[{idx}], ~({mask}u << {sh}));")
        self.raw(f"atomicOr(b{buf}.w[{idx}], (uint({value}) & {mask}u) << {sh});")

    def float_op(self, name: str, a: list) -> str:
        if name in ("sin", "cos"):
            return f"mx_{name}({a[0]})"  # reduced to [-pi/4, pi/4] first (PRELUDE)
        return super().float_op(name, a)

    def int_cast(self, value: str, src: str, dst: str) -> str:
        return self.wrap(f"{_CTYPE[dst]}({value})", dst)

    def float_to_int(self, value: str, dst: str) -> str:
        return self.wrap(f"{_CTYPE[dst]}(mx_f2u32({value}))", dst)

    def header(self) -> list:
        lines = [f"layout(local_size_x = {self.workgroup}) in;"]
        for b in self.bufs:
            lines.append(f"layout(std430, set = 0, binding = {b}) buffer B{b} {{ uint w[]; }} b{b};")
        members = " ".join(f"uint o{b};" for b in self.bufs)
        lines.append(f"layout(push_constant) uniform Push {{ {members} uint n; }} pc;")
        return lines

    def offsets_from_push(self) -> list:
        return [f"  int o{b} = int(pc.o{b});" for b in self.bufs] + ["  int n = int(pc.n);"]

    def render(self, stage: str | None = None) -> str:
        k = self.k
        if k.reduce_op is None:
            body = self.elementwise_body("i", "stride", ELEMENTWISE)
            lines = self.header() + ["void main() {", *self.offsets_from_push(),
                                     f"  int stride = int(gl_NumWorkGroups.x) * {self.workgroup};",
                                     f"  for (int i = int(gl_GlobalInvocationID.x); i < n; i += {ELEMENTWISE} * stride) {{",
                                     *("    " + ln for ln in body), "  }", "}"]
            return PRELUDE + "\n" + "\n".join(lines) + "\n"
        wg = self.workgroup
        acc_t = self.ctype(k.store.value.dtype)
        header = self.header()
        if stage == "partial":
            header[-1] = header[-1].replace(" uint n; }", " uint n; uint parts; }")
            push = self.offsets_from_push() + ["  int parts = int(pc.parts);"]
        elif stage == "combine":
            header = [header[0], "layout(std430, set = 0, binding = 0) buffer B0 { uint w[]; } b0;",
                      "layout(std430, set = 0, binding = 1) buffer P { uint w[]; } part;",
                      "layout(push_constant) uniform Push { uint o0; uint n; uint parts; } pc;"]
            push = ["  int o0 = int(pc.o0);", "  int n = int(pc.n);", "  int parts = int(pc.parts);"]
        else:
            push = self.offsets_from_push()
        lines = header + [f"shared {acc_t} sh[{wg}];", "void main() {", *push,
                          *("  " + ln for ln in self.reduce_body(stage)), "}"]
        prelude = with_extensions(PRELUDE, SUBGROUP_EXTENSIONS) if self.subgroups else PRELUDE
        return prelude + "\n" + "\n".join(lines) + "\n"

    LID, GID, NGROUPS = "int(gl_LocalInvocationID.x)", "int(gl_WorkGroupID.x)", "int(gl_NumWorkGroups.x)"
    BARRIER = "barrier();"
    SUBGROUP = SUBGROUP

    def subgroup_reduce(self, op: str, dtype: str, x: str) -> str:
        return subgroup_reduce(op, dtype, x)

    def partial_store(self, index: str, value: str) -> str:
        dtype = self.k.store.value.dtype
        word = {"float": f"floatBitsToUint({value})", "bool": f"({value} ? 1u : 0u)"}.get(
            self.ctype(dtype), f"uint({value})")
        return f"b0.w[{index}] = {word};"

    def partial_load(self, index: str) -> str:
        word = f"part.w[{index}]"
        ct = self.ctype(self.k.store.value.dtype)
        return {"float": f"uintBitsToFloat({word})", "bool": f"({word} != 0u)", "int": f"int({word})"}.get(ct, word)


def render(kernel: Kernel, workgroup: int = 64, stage: str | None = None, subgroups: bool = False) -> str:
    """A GLSL compute shader for ``kernel``; a reduction's ``stage`` ("partial", "combine") renders
    one stage of its two-stage form (``CRenderer.reduce_body``), with ``parts`` as a push constant.
    ``subgroups``: the device has subgroup arithmetic, which then combines a workgroup's results."""
    r = GLSLRenderer(kernel)
    r.workgroup = workgroup
    r.subgroups = subgroups
    return r.render(stage)
