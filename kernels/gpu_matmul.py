"""Tiled matmul for the GPU backends, C[z] = A[z] @ B[z], as OpenCL C or GLSL from one body, for
float32, float16 and bfloat16 storage (half inputs are widened as the panels are staged, every sum is
float32, the result is rounded to its dtype to nearest even once: what the numpy reference does).

A workgroup of ``TX * TY`` work items computes a ``BM x BN`` tile of C (``BM = TY * TM``,
``BN = TX * TN``): for each step of ``BK`` along K it stages a ``BM x BK`` panel of A and a
``BK x BN`` panel of B in local (shared) memory, then every work item accumulates its ``TM x TN``
outputs in registers. A work item's rows and columns are strided by ``TY`` and ``TX``, so the work
items of a warp read neighbouring words of the panels. Loads past M, N or K read zero and stores past
M or N are skipped, so any sizes work. Operands are read through element strides (batch, row,
column) from an element offset, so transposed and broadcast operands are never copied; the panel
loads walk whichever of an operand's axes is contiguous. C is contiguous, batch after batch.

Arguments: C, A, B, then ``M, N, K, oc, oa, sab, sam, sak, ob, sbb, sbk, sbn`` (32-bit integers:
``int`` kernel arguments in OpenCL, push constants in GLSL; 64-bit index arithmetic costs GPUs dearly). The grid is ``(ceil(N / BN), ceil(M / BM), batch)``
workgroups of ``TX * TY`` work items (OpenCL: global size ``(groups_x * TX * TY, groups_y, batch)``).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..codegen import render_glsl, render_opencl

DTYPES = ("float32", "float16", "bfloat16")

ARGS = ("M", "N", "K", "oc", "oa", "sab", "sam", "sak", "ob", "sbb", "sbk", "sbn")


@dataclass(frozen=True)
class Tiling:
    tx: int  # work items along N
    ty: int  # work items along M
    tm: int  # rows of C per work item
    tn: int  # columns of C per work item
    bk: int  # K step staged in local memory

    @property
    def bm(self) -> int:
        return self.ty * self.tm

    @property
    def bn(self) -> int:
        return self.tx * self.tn

    @property
    def threads(self) -> int:
        return self.tx * self.ty

    @property
    def local_bytes(self) -> int:
        return 4 * self.bk * (self.bm + 1 + self.bn + 1)


# 128 x 128 tiles, 8 x 8 per work item, for GPUs; 32 x 32 tiles, 4 x 4 per work item, for devices
# emulated on a CPU (and as the fallback where a GPU's limits refuse the large one).
LARGE = Tiling(16, 16, 8, 8, 16)
SMALL = Tiling(8, 8, 4, 4, 16)


def choose(max_threads: int, local_bytes: int, cpu: bool) -> Tiling | None:
    """The tiling the device's limits allow (None: none does, use the host)."""
    for t in ((SMALL,) if cpu else (LARGE, SMALL)):
        if t.threads <= max_threads and t.local_bytes <= local_bytes:
            return t
    return None


def name(t: Tiling, a_rows: bool, b_rows: bool, dtype: str = "float32") -> str:
    tag = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}[dtype]
    return f"gemm_{tag}_{t.bm}x{t.bn}x{t.bk}_{t.tm}x{t.tn}_{'ak' if a_rows else 'am'}{'bn' if b_rows else 'bk'}"


def _body(t: Tiling, a_rows: bool, b_rows: bool, idx: str, pairs: bool = False) -> list:
    """The kernel body in the C subset OpenCL C and GLSL share (``idx``: the index type; ``LID``,
    ``GROUP_X/Y/Z``, ``BARRIER``, ``A``, ``B`` and ``STORE_C`` (or ``STORE_PAIR``) come from the
    dialect). ``pairs``: a work item owns pairs of neighbouring columns (``2 * (lx + p * TX)`` and the
    next), so 16-bit results can be written a 32-bit word at a time."""
    bm, bn, bk = t.bm, t.bn, t.bk
    amp, bnp = bm + 1, bn + 1  # one word of padding per row of a panel: no bank conflicts on writes
    # Panel loads: consecutive work items walk the operand's contiguous axis (a_rows: A's rows are
    # contiguous along K; b_rows: B's rows are contiguous along N).
    a_rc = (f"{idx} r = i / {bk}; {idx} c = i % {bk};" if a_rows else f"{idx} c = i / {bm}; {idx} r = i % {bm};")
    b_rc = (f"{idx} r = i / {bn}; {idx} c = i % {bn};" if b_rows else f"{idx} c = i / {bk}; {idx} r = i % {bk};")
    lines = [
        "int tid = LID;",
        f"int lx = tid % {t.tx};",
        f"int ly = tid / {t.tx};",
        f"{idx} row0 = GROUP_Y * {bm};",
        f"{idx} col0 = GROUP_X * {bn};",
        f"{idx} z = GROUP_Z;",
        f"{idx} abase = oa + z * sab;",
        f"{idx} bbase = ob + z * sbb;",
        f"float acc[{t.tm * t.tn}];",
        f"for (int i = 0; i < {t.tm * t.tn}; i++) acc[i] = 0.0f;",
        f"float av[{t.tm}];",
        f"float bv[{t.tn}];",
        f"for ({idx} k0 = 0; k0 < K; k0 += {bk}) {{",
        f"  for ({idx} i = tid; i < {bm * bk}; i += {t.threads}) {{",
        f"    {a_rc}",
        f"    {idx} gr = row0 + r;",
        f"    {idx} gk = k0 + c;",
        f"    As[c * {amp} + r] = (gr < M && gk < K) ? A(abase + gr * sam + gk * sak) : 0.0f;",
        "  }",
        f"  for ({idx} i = tid; i < {bk * bn}; i += {t.threads}) {{",
        f"    {b_rc}",
        f"    {idx} gk = k0 + r;",
        f"    {idx} gc = col0 + c;",
        f"    Bs[r * {bnp} + c] = (gk < K && gc < N) ? B(bbase + gk * sbk + gc * sbn) : 0.0f;",
        "  }",
        "  BARRIER",
        f"  for (int kk = 0; kk < {bk}; kk++) {{",
        f"    for (int i = 0; i < {t.tm}; i++) av[i] = As[kk * {amp} + ly + i * {t.ty}];",
        (f"    for (int j = 0; j < {t.tn}; j++) bv[j] = Bs[kk * {bnp} + (lx + (j >> 1) * {t.tx}) * 2 + (j & 1)];"
         if pairs else f"    for (int j = 0; j < {t.tn}; j++) bv[j] = Bs[kk * {bnp} + lx + j * {t.tx}];"),
        f"    for (int i = 0; i < {t.tm}; i++)",
        f"      for (int j = 0; j < {t.tn}; j++) acc[i * {t.tn} + j] = fma(av[i], bv[j], acc[i * {t.tn} + j]);",
        "  }",
        "  BARRIER",
        "}",
        f"{idx} cbase = oc + z * M * N;",
    ]
    # The stores are unrolled here: with every index of ``acc`` a constant the compiler keeps the
    # accumulators in registers (a loop it does not unroll would put them in memory).
    for i in range(t.tm):
        lines.append(f"{{ {idx} r = row0 + ly + {i * t.ty};")
        if pairs:
            for p in range(t.tn // 2):
                lines.append(f"  {{ {idx} c = col0 + (lx + {p * t.tx}) * 2; if (r < M && c < N) "
                             f"STORE_PAIR(cbase + r * N + c, acc[{i * t.tn + 2 * p}], acc[{i * t.tn + 2 * p + 1}], "
                             "c + 1 < N); }")
        else:
            for j in range(t.tn):
                lines.append(f"  {{ {idx} c = col0 + lx + {j * t.tx}; if (r < M && c < N) "
                             f"STORE_C(cbase + r * N + c, acc[{i * t.tn + j}]); }}")
        lines.append("}")
    return lines


def _panels(t: Tiling, shared: str) -> list:
    return [f"{shared} float As[{t.bk * (t.bm + 1)}];", f"{shared} float Bs[{t.bk * (t.bn + 1)}];"]


def opencl(t: Tiling, a_rows: bool, b_rows: bool, dtype: str = "float32") -> str:
    fn = name(t, a_rows, b_rows, dtype)
    st = "float" if dtype == "float32" else "ushort"
    params = [f"__global {st}* restrict c_", f"__global const {st}* restrict a_",
              f"__global const {st}* restrict b_"] + [f"int {a}" for a in ARGS]
    body = _body(t, a_rows, b_rows, "int")
    load, store = {"float32": ("{p}[i]", "{p}[i] = v"),
                   "float16": ("mx_f16_to_f32((uint){p}[i])", "{p}[i] = (ushort)mx_f32_to_f16(v)"),
                   "bfloat16": ("mx_bf16_to_f32((uint){p}[i])", "{p}[i] = (ushort)mx_f32_to_bf16(v)")}[dtype]
    lines = [render_opencl.PRELUDE] if dtype != "float32" else []
    lines += [
        "#define LID ((int)get_local_id(0))",
        "#define GROUP_X ((int)get_group_id(0))",
        "#define GROUP_Y ((int)get_group_id(1))",
        "#define GROUP_Z ((int)get_group_id(2))",
        "#define BARRIER barrier(CLK_LOCAL_MEM_FENCE);",
        f"#define A(i) {load.format(p='a_')}",
        f"#define B(i) {load.format(p='b_')}",
        f"#define STORE_C(i, v) {store.format(p='c_')}",
        f"__kernel __attribute__((reqd_work_group_size({t.threads}, 1, 1))) void {fn}({', '.join(params)}) {{",
        *("  " + ln for ln in _panels(t, "__local")),
        *("  " + ln for ln in body),
        "}", ""]
    return "\n".join(lines)


def source(dialect: str, t: Tiling, a_rows: bool, b_rows: bool, dtype: str = "float32") -> str:
    return opencl(t, a_rows, b_rows, dtype) if dialect == "opencl" else glsl(t, a_rows, b_rows, dtype)


def glsl(t: Tiling, a_rows: bool, b_rows: bool, dtype: str = "float32") -> str:
    members = " ".join(f"int p_{a};" for a in ARGS)
    body = _body(t, a_rows, b_rows, "int", pairs=dtype != "float32")
    if dtype == "float32":
        head = ["#version 450"]
        bufs = ["writeonly buffer BC { float c_[]; };", "readonly buffer BA { float a_[]; };",
                "readonly buffer BB { float b_[]; };"]
        macros = ["#define A(i) a_[i]", "#define B(i) b_[i]", "#define STORE_C(i, v) c_[i] = v"]
    else:
        # Kompute binds 32-bit words: a 16-bit element is half of one; neighbouring outputs of one word
        # belong to different work items, so stores go through atomics on their half.
        head = [render_glsl.PRELUDE]
        bufs = ["buffer BC { uint c_[]; };", "readonly buffer BA { uint a_[]; };", "readonly buffer BB { uint b_[]; };"]
        half = "((({p}[(i) >> 1]) >> (((i) & 1) * 16)) & 0xFFFFu)"
        conv, back = ("mx_f16_to_f32", "mx_f32_to_f16") if dtype == "float16" else ("mx_bf16_to_f32", "mx_f32_to_bf16")
        # A pair that starts a word is written whole; one that straddles two words (odd N or offset)
        # or has no second column sets its halves with atomics, as neighbours may share the word.
        macros = [f"#define A(i) {conv}({half.format(p='a_')})", f"#define B(i) {conv}({half.format(p='b_')})",
                  "#define STORE_HALF(i, v) { int w_ = (i) >> 1; uint s_ = uint((i) & 1) * 16u; "
                  f"atomicAnd(c_[w_], ~(0xFFFFu << s_)); atomicOr(c_[w_], ({back}(v) & 0xFFFFu) << s_); }}",
                  "#define STORE_PAIR(i, v0, v1, two) { if (((i) & 1) == 0 && (two)) "
                  f"c_[(i) >> 1] = ({back}(v0) & 0xFFFFu) | (({back}(v1) & 0xFFFFu) << 16); "
                  "else { STORE_HALF(i, v0); if (two) STORE_HALF((i) + 1, v1); } }"]
    return "\n".join([
        *head,
        f"layout(local_size_x = {t.threads}) in;",
        *(f"layout(std430, set = 0, binding = {i}) {b}" for i, b in enumerate(bufs)),
        f"layout(push_constant) uniform Push {{ {members} }} pc;",
        *(f"#define {a} pc.p_{a}" for a in ARGS),
        "#define LID int(gl_LocalInvocationID.x)",
        "#define GROUP_X int(gl_WorkGroupID.x)",
        "#define GROUP_Y int(gl_WorkGroupID.y)",
        "#define GROUP_Z int(gl_WorkGroupID.z)",
        "#define BARRIER barrier();",
        *macros,
        *_panels(t, "shared"),
        "void main() {",
        *("  " + ln for ln in body),
        "}", ""])
