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
``int`` kernel arguments in OpenCL, push constants in GLSL; 64-bit index arithmetic costs GPUs dearly).
The grid is ``(ceil(N / BN), ceil(M / BM), batch)`` workgroups of ``TX * TY`` work items (OpenCL: global
size ``(groups_x * TX * TY, groups_y, batch)``).

float16 matmuls on a Vulkan device with float16 cooperative matrices (VK_KHR_cooperative_matrix) run on
them instead (``coop_glsl``, below): same arguments, same grid shape, the same single rounding.
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


# 128 x 128 tiles, 8 x 8 per work item, 8 deep (with the next step's panels prefetched into registers,
# measured the fastest of the candidates on an H100 under OpenCL and Vulkan: 4096^3 float32 in 4.2 ms
# against 5.2 ms for 16 deep without the prefetch), for GPUs; 32 x 32 tiles, 4 x 4 per work item, for
# devices emulated on a CPU (and as the fallback where a GPU's limits refuse the large one).
LARGE = Tiling(16, 16, 8, 8, 8)
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
    dialect, and ``RAW``, ``ZERO`` and ``WIDEN``: ``A`` and ``B`` read an element as stored, of type
    ``RAW``, which ``WIDEN`` makes a float as it is staged in local memory; a half is widened only then,
    after the step's arithmetic, so the prefetch's loads stay in flight behind it). ``pairs``: a work
    item owns pairs of neighbouring columns (``2 * (lx + p * TX)`` and the next), so 16-bit results can
    be written a 32-bit word at a time."""
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
    ]
    a_load = "(gr < M && gk < K) ? A(abase + gr * sam + gk * sak) : ZERO"
    b_load = "(gk < K && gc < N) ? B(bbase + gk * sbk + gc * sbn) : ZERO"
    na, nb = bm * bk // t.threads, bk * bn // t.threads
    if na * t.threads == bm * bk and nb * t.threads == bk * bn:
        # Each work item's share of the panels is a fixed number of words, held in registers: the next
        # step's share is loaded from global memory while the staged panels are multiplied (the loads'
        # latency hides behind the arithmetic), then stored to local memory after the second barrier.
        def fetch(k0: str) -> list:
            return ([f"{{ {idx} i = tid + {u * t.threads}; {a_rc} {idx} gr = row0 + r; {idx} gk = {k0} + c; "
                     f"pa[{u}] = {a_load}; }}" for u in range(na)]
                    + [f"{{ {idx} i = tid + {u * t.threads}; {b_rc} {idx} gk = {k0} + r; {idx} gc = col0 + c; "
                       f"pb[{u}] = {b_load}; }}" for u in range(nb)])
        lines += [f"RAW pa[{na}];", f"RAW pb[{nb}];", *fetch("0"),
                  f"for ({idx} k0 = 0; k0 < K; k0 += {bk}) {{",
                  *(f"  {{ {idx} i = tid + {u * t.threads}; {a_rc} As[c * {amp} + r] = WIDEN(pa[{u}]); }}"
                    for u in range(na)),
                  *(f"  {{ {idx} i = tid + {u * t.threads}; {b_rc} Bs[r * {bnp} + c] = WIDEN(pb[{u}]); }}"
                    for u in range(nb)),
                  "  BARRIER",
                  f"  if (k0 + {bk} < K) {{",
                  *("    " + ln for ln in fetch(f"(k0 + {bk})")),
                  "  }"]
    else:
        lines += [
            f"for ({idx} k0 = 0; k0 < K; k0 += {bk}) {{",
            f"  for ({idx} i = tid; i < {bm * bk}; i += {t.threads}) {{",
            f"    {a_rc}",
            f"    {idx} gr = row0 + r;",
            f"    {idx} gk = k0 + c;",
            f"    As[c * {amp} + r] = WIDEN({a_load});",
            "  }",
            f"  for ({idx} i = tid; i < {bk * bn}; i += {t.threads}) {{",
            f"    {b_rc}",
            f"    {idx} gk = k0 + r;",
            f"    {idx} gc = col0 + c;",
            f"    Bs[r * {bnp} + c] = WIDEN({b_load});",
            "  }",
            "  BARRIER"]
    lines += [
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
    widen, store = {"float32": ("(x)", "{p}[i] = v"),
                    "float16": ("mx_f16_to_f32((uint)(x))", "{p}[i] = (ushort)mx_f32_to_f16(v)"),
                    "bfloat16": ("mx_bf16_to_f32((uint)(x))", "{p}[i] = (ushort)mx_f32_to_bf16(v)")}[dtype]
    lines = [render_opencl.PRELUDE] if dtype != "float32" else []
    lines += [
        "#define LID ((int)get_local_id(0))",
        "#define GROUP_X ((int)get_group_id(0))",
        "#define GROUP_Y ((int)get_group_id(1))",
        "#define GROUP_Z ((int)get_group_id(2))",
        "#define BARRIER barrier(CLK_LOCAL_MEM_FENCE);",
        f"#define RAW {st}",
        f"#define ZERO (({st})0)",
        f"#define WIDEN(x) {widen}",
        "#define A(i) a_[i]",
        "#define B(i) b_[i]",
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
        macros = ["#define RAW float", "#define ZERO 0.0", "#define WIDEN(x) (x)", "#define A(i) a_[i]",
                  "#define B(i) b_[i]", "#define STORE_C(i, v) c_[i] = v"]
    else:
        # Kompute binds 32-bit words: a 16-bit element is half of one; neighbouring outputs of one word
        # belong to different work items, so stores go through atomics on their half.
        head = [render_glsl.PRELUDE]
        bufs = ["buffer BC { uint c_[]; };", "readonly buffer BA { uint a_[]; };", "readonly buffer BB { uint b_[]; };"]
        half = "((({p}[(i) >> 1]) >> (((i) & 1) * 16)) & 0xFFFFu)"
        conv, back = ("mx_f16_to_f32", "mx_f32_to_f16") if dtype == "float16" else ("mx_bf16_to_f32", "mx_f32_to_bf16")
        # A pair that starts a word is written whole; one that straddles two words (odd N or offset)
        # or has no second column sets its halves with atomics, as neighbours may share the word.
        macros = ["#define RAW uint", "#define ZERO 0u", f"#define WIDEN(x) {conv}(x)",
                  f"#define A(i) {half.format(p='a_')}", f"#define B(i) {half.format(p='b_')}",
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


# --- float16 matmul on cooperative matrices (Vulkan, GL_KHR_cooperative_matrix) -------------------------
#
# A workgroup of ``subgroups`` subgroups computes a ``BM x BN`` tile of C; each subgroup owns a ``WM x WN``
# part of it as ``(WM / SM) x (WN / SN)`` float32 accumulator matrices of the device's shape
# ``SM x SN x SK``. Per step of ``BK`` along K the workgroup stages a ``BM x BK`` panel of A and a
# ``BK x BN`` panel of B as float16 in shared memory (rows padded by 8 halves: 16-byte aligned rows, fewer
# bank conflicts); while the subgroups multiply the staged panels, every work item already holds the next
# step's share of the panels in registers. Loads past M, N or K read zero and stores past M or N are
# skipped, so any sizes work. The ``vec`` variant reads the operands 8 halves at a time and needs
# row-major operands whose rows, offsets and batch strides are multiples of 8 elements (and K, N too);
# the other variant reads one element at a time through any strides, like the tiled template. Each
# accumulator goes through shared memory once more on its way out so that every C element is rounded to
# float16 by the same round-to-nearest-even helper as everywhere else. Same arguments and grid as the
# tiled template (``ARGS``).

@dataclass(frozen=True)
class CoopTiling:
    bm: int
    bn: int
    bk: int
    wm: int  # rows of C per subgroup
    wn: int  # columns of C per subgroup
    sm: int = 16  # the device's cooperative-matrix shape (M x N x K)
    sn: int = 16
    sk: int = 16
    subgroup: int = 32  # work items per subgroup

    @property
    def subgroups(self) -> int:
        return (self.bm // self.wm) * (self.bn // self.wn)

    @property
    def threads(self) -> int:
        return self.subgroups * self.subgroup

    @property
    def shared_bytes(self) -> int:
        return 2 * (self.bm * (self.bk + 8) + self.bk * (self.bn + 8)) + 4 * self.subgroups * self.sm * self.sn


def coop_tiling(shape, subgroup: int, max_threads: int, shared_bytes: int) -> CoopTiling | None:
    """The cooperative-matrix tiling for a device whose float16 shape is ``shape`` (``(M, N, K)``, or
    None: the device has none), or None where its limits refuse every candidate."""
    if shape is None or subgroup <= 0:
        return None
    sm, sn, sk = shape
    # On an H100, 128 x 256 tiles of 8 subgroups (64 x 64 each) ran fastest of the candidates tried
    # (larger K steps, other shapes, vectors of halves in shared memory: benchmarks/gpu.py's
    # matmul_big_f16); the smaller tiles are for devices with less shared memory.
    for bm, bn, bk, wm, wn in ((128, 256, 32, 64, 64), (128, 128, 32, 64, 32), (64, 64, 32, 32, 32)):
        t = CoopTiling(bm, bn, bk, wm, wn, sm, sn, sk, subgroup)
        if (wm % sm or wn % sn or bk % sk or bm % wm or bn % wn or t.threads > max_threads
                or t.shared_bytes > shared_bytes or (bm * bk // 8) % t.threads or (bk * bn // 8) % t.threads):
            continue
        return t
    return None


def coop_name(t: CoopTiling, vec: bool, a_rows: bool, b_rows: bool) -> str:
    layout = "vec" if vec else f"{'ak' if a_rows else 'am'}{'bn' if b_rows else 'bk'}"
    return f"gemm_f16_coop_{t.bm}x{t.bn}x{t.bk}_{t.wm}x{t.wn}_{t.sm}x{t.sn}x{t.sk}_s{t.subgroup}_{layout}"


def coop_vec_ok(k: int, n: int, oa: int, sa: list, ob: int, sb: list) -> bool:
    """Whether the ``vec`` variant can read these operands (strides: batch, row, column elements)."""
    return (sa[2] == 1 and sb[2] == 1 and k % 8 == 0 and n % 8 == 0
            and all(v % 8 == 0 for v in (oa, sa[0], sa[1], ob, sb[0], sb[1])))


def coop_glsl(t: CoopTiling, vec: bool, a_rows: bool = True, b_rows: bool = True) -> str:
    bm, bn, bk = t.bm, t.bn, t.bk
    lda, ldb = bk + 8, bn + 8
    tm, tn = t.wm // t.sm, t.wn // t.sn
    warps_n = bn // t.wn
    threads = t.threads
    a_mat = f"coopmat<float16_t, gl_ScopeSubgroup, {t.sm}, {t.sk}, gl_MatrixUseA>"
    b_mat = f"coopmat<float16_t, gl_ScopeSubgroup, {t.sk}, {t.sn}, gl_MatrixUseB>"
    c_mat = f"coopmat<float, gl_ScopeSubgroup, {t.sm}, {t.sn}, gl_MatrixUseAccumulator>"
    extensions = "".join(f"#extension {e} : require\n" for e in (
        "GL_KHR_cooperative_matrix", "GL_KHR_memory_scope_semantics",
        "GL_EXT_shader_explicit_arithmetic_types_float16", "GL_KHR_shader_subgroup_basic"))
    head = render_glsl.PRELUDE.replace("#version 450\n", "#version 450\n" + extensions, 1)
    bufs = ["buffer BC { uint c_[]; };", "readonly buffer BA { uint a_[]; };", "readonly buffer BB { uint b_[]; };"]
    # The vec variant reads the same buffers 16 bytes at a time.
    bufs_vec = [(1, "readonly buffer BA4 { uvec4 a4[]; };"), (2, "readonly buffer BB4 { uvec4 b4[]; };")] if vec else []
    na, nb = bm * bk // (8 if vec else 1) // threads, bk * bn // (8 if vec else 1) // threads
    lines = [
        head,
        f"layout(local_size_x = {threads}) in;",
        *(f"layout(std430, set = 0, binding = {i}) {b}" for i, b in enumerate(bufs)),
        *(f"layout(std430, set = 0, binding = {i}) {b}" for i, b in bufs_vec),
        f"layout(push_constant) uniform Push {{ {' '.join(f'int p_{a};' for a in ARGS)} }} pc;",
        *(f"#define {a} pc.p_{a}" for a in ARGS),
        "#define HALF(p, i) unpackFloat2x16((p[(i) >> 1]) >> (((i) & 1) * 16)).x",
        "#define STORE_HALF(i, v) { int w_ = (i) >> 1; uint s_ = uint((i) & 1) * 16u; "
        "atomicAnd(c_[w_], ~(0xFFFFu << s_)); atomicOr(c_[w_], (mx_f32_to_f16(v) & 0xFFFFu) << s_); }",
        "#define STORE_PAIR(i, v0, v1, two) { if (((i) & 1) == 0 && (two)) "
        "c_[(i) >> 1] = (mx_f32_to_f16(v0) & 0xFFFFu) | ((mx_f32_to_f16(v1) & 0xFFFFu) << 16); "
        "else { STORE_HALF(i, v0); if (two) STORE_HALF((i) + 1, v1); } }",
        f"shared float16_t As[{bm * lda}];",
        f"shared float16_t Bs[{bk * ldb}];",
        f"shared float Cs[{t.subgroups * t.sm * t.sn}];",
        "void main() {",
        "  int tid = int(gl_LocalInvocationID.x);",
        "  int warp = int(gl_SubgroupID);",
        "  int lane = int(gl_SubgroupInvocationID);",
        f"  int wr = (warp / {warps_n}) * {t.wm};",
        f"  int wc = (warp % {warps_n}) * {t.wn};",
        f"  int row0 = int(gl_WorkGroupID.y) * {bm};",
        f"  int col0 = int(gl_WorkGroupID.x) * {bn};",
        "  int z = int(gl_WorkGroupID.z);",
        "  int abase = oa + z * sab;",
        "  int bbase = ob + z * sbb;",
    ]
    # Every loop over accumulators, fragments and staged shares is unrolled here: with constant
    # indices (separate variables) the compiler keeps them in registers.
    lines += [f"  {c_mat} acc{i}_{j} = {c_mat}(0.0);" for i in range(tm) for j in range(tn)]

    fetch, put = [], []
    if vec:
        lines += [f"  uvec4 ra{u};" for u in range(na)] + [f"  uvec4 rb{u};" for u in range(nb)]
        for u in range(na):
            rc = f"int r = {u * threads // (bk // 8)} + tid / {bk // 8}; int c = (tid % {bk // 8}) * 8;" \
                if threads % (bk // 8) == 0 else None
            assert rc is not None
            fetch.append(f"{{ {rc} int gr = row0 + r; int gk = k0 + c; "
                         f"ra{u} = (gr < M && gk < K) ? a4[(abase + gr * sam + gk) >> 3] : uvec4(0u); }}")
            put.append(_put_vec(f"ra{u}", "As", rc, lda))
        for u in range(nb):
            rc = f"int r = {u * threads // (bn // 8)} + tid / {bn // 8}; int c = (tid % {bn // 8}) * 8;"
            assert threads % (bn // 8) == 0
            fetch.append(f"{{ {rc} int gk = k0 + r; int gc = col0 + c; "
                         f"rb{u} = (gk < K && gc < N) ? b4[(bbase + gk * sbk + gc) >> 3] : uvec4(0u); }}")
            put.append(_put_vec(f"rb{u}", "Bs", rc, ldb))
    else:
        # Consecutive work items walk the operand's contiguous axis (as in the tiled template).
        lines += [f"  float16_t ra{u};" for u in range(na)] + [f"  float16_t rb{u};" for u in range(nb)]
        for u in range(na):
            i = f"(tid + {u * threads})"
            rc = f"int r = {i} / {bk}; int c = {i} % {bk};" if a_rows else f"int c = {i} / {bm}; int r = {i} % {bm};"
            fetch.append(f"{{ {rc} int gr = row0 + r; int gk = k0 + c; "
                         f"ra{u} = (gr < M && gk < K) ? HALF(a_, abase + gr * sam + gk * sak) : float16_t(0.0); }}")
            put.append(f"{{ {rc} As[r * {lda} + c] = ra{u}; }}")
        for u in range(nb):
            i = f"(tid + {u * threads})"
            rc = f"int r = {i} / {bn}; int c = {i} % {bn};" if b_rows else f"int c = {i} / {bk}; int r = {i} % {bk};"
            fetch.append(f"{{ {rc} int gk = k0 + r; int gc = col0 + c; "
                         f"rb{u} = (gk < K && gc < N) ? HALF(b_, bbase + gk * sbk + gc * sbn) : float16_t(0.0); }}")
            put.append(f"{{ {rc} Bs[r * {ldb} + c] = rb{u}; }}")
    mma = []
    for kk in range(0, bk, t.sk):
        for i in range(tm):
            mma.append(f"coopMatLoad(fa{i}, As, uint((wr + {i * t.sm}) * {lda} + {kk}), {lda}u, "
                       "gl_CooperativeMatrixLayoutRowMajor);")
        for j in range(tn):
            mma.append(f"coopMatLoad(fb{j}, Bs, uint({kk * ldb} + wc + {j * t.sn}), {ldb}u, "
                       "gl_CooperativeMatrixLayoutRowMajor);")
        for i in range(tm):
            for j in range(tn):
                mma.append(f"acc{i}_{j} = coopMatMulAdd(fa{i}, fb{j}, acc{i}_{j});")
    lines += [*(f"  {a_mat} fa{i};" for i in range(tm)), *(f"  {b_mat} fb{j};" for j in range(tn)),
              "  int k0 = 0;", *("  " + ln for ln in fetch), *("  " + ln for ln in put), "  barrier();",
              f"  for (k0 = {bk}; k0 - {bk} < K; k0 += {bk}) {{",
              "    if (k0 < K) {", *("      " + ln for ln in fetch), "    }",
              *("    " + ln for ln in mma),
              "    barrier();",
              "    if (k0 < K) {", *("      " + ln for ln in put), "    }",
              "    barrier();",
              "  }"]
    # The way out: each accumulator into this subgroup's corner of Cs, then pairs of neighbouring
    # columns rounded to float16 and written a 32-bit word at a time where the pair owns the word.
    per_lane = max(1, t.sm * t.sn // 2 // t.subgroup)
    lines += ["  int cbase = oc + z * M * N;", f"  int stage = warp * {t.sm * t.sn};"]
    for i in range(tm):
        for j in range(tn):
            lines += [f"  coopMatStore(acc{i}_{j}, Cs, uint(stage), {t.sn}u, gl_CooperativeMatrixLayoutRowMajor);",
                      "  subgroupBarrier();",
                      f"  for (int p = 0; p < {per_lane}; p++) {{",
                      f"    int e = (lane + p * {t.subgroup}) * 2;",
                      f"    int r = row0 + wr + {i * t.sm} + e / {t.sn};",
                      f"    int c = col0 + wc + {j * t.sn} + e % {t.sn};",
                      f"    if (e < {t.sm * t.sn} && r < M && c < N) "
                      "STORE_PAIR(cbase + r * N + c, Cs[stage + e], Cs[stage + e + 1], c + 1 < N);",
                      "  }",
                      "  subgroupBarrier();"]
    return "\n".join(lines + ["}", ""])


def _put_vec(reg: str, arr: str, rc: str, ld: int) -> str:
    """A statement writing the 8 halves of ``reg`` (a uvec4) to (r, c..c+7) of a panel of row length ``ld``."""
    return (f"{{ {rc} int h_ = r * {ld} + c; " +
            " ".join(f"f16vec2 p{q}_ = unpackFloat2x16({reg}[{q}]); {arr}[h_ + {2 * q}] = p{q}_.x; "
                     f"{arr}[h_ + {2 * q + 1}] = p{q}_.y;" for q in range(4)) + " }")
