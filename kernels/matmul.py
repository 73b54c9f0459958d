"""Tiled float32 matmul: C = act(A @ B + bias) + residual, as LLVM IR for the host's vectors.

The micro-kernel keeps an ``mr`` x ``nr`` block of C in registers (``nr`` = ``nv`` vectors): each step
of K broadcasts ``mr`` values of A (read in place, one row each, ``lda`` apart) and multiplies them
into ``nv`` vectors of B. The block's shape comes from the target's vector registers (``tile``): all of
them hold accumulators but the ``nv`` B vectors and a broadcast.

The driver's ``[start, end)`` is a range of units, each a B panel (``nr`` columns) and a group of
row blocks (``groups`` per panel, more than one only where there are too few panels to share out),
so threads split C by columns first. For each unit and each block of ``kc`` steps of K it copies
that slice of B into a contiguous buffer on its stack (zero past N), which the micro-kernel then
streams for every row block of the group: B's rows sit ``ldb`` apart, often a multiple of 4 KiB,
where reading them in place would make the slice's lines fight over a few cache sets. Packing there
rather than in numpy beforehand spreads the copy over the threads; A is read where it lies. A product
of one row block at most (a vector times a matrix) has its own kernel, ``render_few_rows``.

C is written with masked stores on the last column panel, and rows past M are neither read (A's rows
are clamped to the last) nor stored. The epilogue (bias per column, ``relu``, residual matrix) runs on
the last K block only, on registers.

Arguments (``args``, pointers): C, A, B, bias (or unused), residual (or unused), then a pointer to
int64 ``[M, N, K, lda, ldb, ldc, ld_residual, groups]`` (strides in elements; A's and B's rows
contiguous). Unit ``u`` is panel ``u // groups``, row group ``u % groups``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ACTIVATIONS = (None, "relu")
PACK_BYTES = 32 << 10  # one packed B slice at most: an L1 data cache (32 KiB on Zen 4, 48 on recent Intel)
KC_MAX = 256
FEW_ROWS_STEP = 4  # rows of B per pass of the few-rows kernel


@dataclass(frozen=True)
class Tile:
    mr: int  # rows of C per micro-kernel call
    nv: int  # vectors of C per row
    lanes: int  # float32 lanes of a vector

    @property
    def nr(self) -> int:
        return self.nv * self.lanes

    @property
    def kc(self) -> int:
        """Steps of K per packed B slice (a multiple of 8); each step of it reloads the C block."""
        return min(KC_MAX, max(32, PACK_BYTES // (4 * self.nr) // 8 * 8))


def vector_registers(target) -> int:
    """Architectural vector registers: 32 on aarch64 (NEON, SVE) and with AVX-512, 16 on other x86."""
    arch = target.triple.split("-")[0]
    if arch in ("aarch64", "arm64") or target.has("avx512f"):
        return 32
    return 16


def tile(target) -> Tile:
    """The register block for ``target``: mr * nv accumulators, nv B vectors and one broadcast fit
    the vector registers. With 16: 6 x 2 (12 accumulators). With 32: 6 x 4 (24), half the broadcasts
    per multiply-add of 6 x 2; measured on Zen 4 (AVX-512, 2 threads, 1024^3), 6 x 4 matched
    OpenBLAS where 8 x 3 was 10% slower (its 48 columns leave a masked panel at N = 1024)."""
    if vector_registers(target) >= 32:
        return Tile(6, 4, target.lanes)
    return Tile(6, 2, target.lanes)


def name(t: Tile, bias: bool, act: str | None, residual: bool) -> str:
    return f"gemm_f32_{t.mr}x{t.nr}" + ("_bias" if bias else "") + (f"_{act}" if act else "") \
        + ("_res" if residual else "")



def _load_arguments(pointers: list, meta: list) -> list:
    """IR lines loading the kernel's pointer arguments (``%<name>``, in order from ``%args``) and the
    int64 fields of its ``%meta`` array (``%<field>``)."""
    lines = []
    for i, arg in enumerate(pointers):
        lines += [f"  %slot.{arg} = getelementptr ptr, ptr %args, i64 {i}",
                  f"  %{arg} = load ptr, ptr %slot.{arg}, align 8"]
    for i, field in enumerate(meta):
        lines += [f"  %q{field} = getelementptr i64, ptr %meta, i64 {i}",
                  f"  %{field} = load i64, ptr %q{field}, align 8"]
    return lines

def render(t: Tile, bias: bool = False, act: str | None = None, residual: bool = False) -> str:
    """The module holding the driver ``name(...)`` and its micro-kernel."""
    assert act in ACTIVATIONS
    w, mr, nv, nr, kc_max = t.lanes, t.mr, t.nv, t.nr, t.kc
    vt = f"<{w} x float>"
    mt = f"<{w} x i1>"
    fn = name(t, bias, act, residual)
    zero = "zeroinitializer"
    masks = ", ".join(f"{mt} %m{v}" for v in range(nv))
    lines = [
        # fmuladd, not fma: one fused instruction where the target has FMA, a multiply and an add where
        # it has none (SSE2, AVX), where fma would be a libm call per lane
        f"declare {vt} @llvm.fmuladd.v{w}f32({vt}, {vt}, {vt})",
        f"declare {vt} @llvm.masked.load.v{w}f32.p0(ptr, i32, {mt}, {vt})",
        f"declare void @llvm.masked.store.v{w}f32.p0({vt}, ptr, i32, {mt})",
        f"declare {vt} @llvm.maximum.v{w}f32({vt}, {vt})",
        "declare i64 @llvm.smin.i64(i64, i64)",
        "",
        # The micro-kernel: an mr x nr block of C from kc steps of A's rows and the packed B slice.
        f"define internal void @{fn}_tile(ptr noalias %a, i64 %lda, ptr noalias %b, ptr noalias %c, i64 %ldc,"
        f" i64 %kc, i1 %first, i1 %last, i64 %rows, {masks}, ptr %bias, ptr %res, i64 %ldr) {{",
        "entry:",
        "  %lastrow = sub i64 %rows, 1",
    ]
    for r in range(mr):
        # rows past M read the last real row: their sums are never stored
        lines += [f"  %ar{r} = call i64 @llvm.smin.i64(i64 {r}, i64 %lastrow)",
                  f"  %aro{r} = mul i64 %ar{r}, %lda",
                  f"  %arow{r} = getelementptr float, ptr %a, i64 %aro{r}"]
    lines += ["  br label %loop", "loop:", "  %k = phi i64 [0, %entry], [%kn, %loop]"]
    for r in range(mr):
        for v in range(nv):
            lines.append(f"  %acc{r}_{v} = phi {vt} [{zero}, %entry], [%nacc{r}_{v}, %loop]")
    lines += [f"  %boff = mul i64 %k, {nr}",
              "  %bp = getelementptr float, ptr %b, i64 %boff"]
    for v in range(nv):
        lines += [f"  %bp{v} = getelementptr float, ptr %bp, i64 {v * w}",
                  f"  %bv{v} = load {vt}, ptr %bp{v}, align {4 * w}"]
    for r in range(mr):
        lines += [
            f"  %ap{r} = getelementptr float, ptr %arow{r}, i64 %k",
            f"  %as{r} = load float, ptr %ap{r}, align 4",
            f"  %ai{r} = insertelement {vt} poison, float %as{r}, i64 0",
            f"  %av{r} = shufflevector {vt} %ai{r}, {vt} poison, <{w} x i32> zeroinitializer",
        ]
        for v in range(nv):
            lines.append(f"  %nacc{r}_{v} = call {vt} @llvm.fmuladd.v{w}f32({vt} %av{r}, {vt} %bv{v}, "
                         f"{vt} %acc{r}_{v})")
    lines += [
        "  %kn = add i64 %k, 1",
        "  %done = icmp eq i64 %kn, %kc",
        "  br i1 %done, label %stores, label %loop",
    ]
    def stores(tag: str, masked: bool) -> list:
        """The block's store-back (``tag`` names its values): with the panel's column masks, or
        (a whole panel) plain vector loads and stores."""
        out = []

        def load(ptr, v):
            if masked:
                return f"call {vt} @llvm.masked.load.v{w}f32.p0(ptr {ptr}, i32 4, {mt} %m{v}, {vt} {zero})"
            return f"load {vt}, ptr {ptr}, align 4"

        for r in range(mr):
            out.append(f"store{r}{tag}:")
            if r == 0 and bias:
                for v in range(nv):
                    out += [f"  %biasp{v}{tag} = getelementptr float, ptr %bias, i64 {v * w}",
                            f"  %bias{v}{tag} = {load(f'%biasp{v}{tag}', v)}"]
            out += [f"  %crow{r}{tag} = mul i64 %ldc, {r}",
                    f"  %cp{r}{tag} = getelementptr float, ptr %c, i64 %crow{r}{tag}"]
            if residual:
                out += [f"  %rrow{r}{tag} = mul i64 %ldr, {r}",
                        f"  %rp{r}{tag} = getelementptr float, ptr %res, i64 %rrow{r}{tag}"]
            for v in range(nv):
                s_ = f"{r}_{v}{tag}"
                out += [
                    f"  %cp{s_} = getelementptr float, ptr %cp{r}{tag}, i64 {v * w}",
                    # C's previous value is read on every K block but the first (where it is garbage,
                    # and the select drops it).
                    f"  %old{s_} = {load(f'%cp{s_}', v)}",
                    f"  %prev{s_} = select i1 %first, {vt} {zero}, {vt} %old{s_}",
                    f"  %sum{s_} = fadd {vt} %nacc{r}_{v}, %prev{s_}",
                ]
                cur = f"%sum{s_}"
                if bias:
                    out.append(f"  %wb{s_} = fadd {vt} {cur}, %bias{v}{tag}")
                    cur = f"%wb{s_}"
                if act == "relu":
                    # maximum, not maxnum: a NaN stays NaN, as numpy's and MLX's maximum(x, 0) keep it
                    out.append(f"  %act{s_} = call {vt} @llvm.maximum.v{w}f32({vt} {cur}, {vt} {zero})")
                    cur = f"%act{s_}"
                if residual:
                    out += [f"  %rp{s_} = getelementptr float, ptr %rp{r}{tag}, i64 {v * w}",
                            f"  %rv{s_} = {load(f'%rp{s_}', v)}",
                            f"  %wr{s_} = fadd {vt} {cur}, %rv{s_}"]
                    cur = f"%wr{s_}"
                out.append(f"  %out{s_} = select i1 %last, {vt} {cur}, {vt} %sum{s_}")
                if masked:
                    out.append(f"  call void @llvm.masked.store.v{w}f32.p0({vt} %out{s_}, ptr %cp{s_}, i32 4, {mt} %m{v})")
                else:
                    out.append(f"  store {vt} %out{s_}, ptr %cp{s_}, align 4")
            if r + 1 < mr:
                out += [f"  %more{r}{tag} = icmp sgt i64 %rows, {r + 1}",
                        f"  br i1 %more{r}{tag}, label %store{r + 1}{tag}, label %exit"]
            else:
                out.append("  br label %exit")
        return out

    # A whole panel (every column mask set) is stored with plain vector accesses: a masked store
    # costs many times a plain one on some x86 cores.
    lines += ["stores:", "  %whole = extractelement " + f"{mt} %m{nv - 1}, i64 {w - 1}",
              "  br i1 %whole, label %store0p, label %store0m"]
    lines += stores("p", False) + stores("m", True)
    lines += ["exit:", "  ret void", "}", ""]

    lane_ids = [", ".join(f"i64 {i + v * w}" for i in range(w)) for v in range(nv)]
    meta = ["M", "N", "K", "lda", "ldb", "ldc", "ldr", "groups"]
    lines += [
        f"define void @{fn}(ptr noalias nocapture readonly %args, i64 %start, i64 %end) {{",
        "entry:",
        f"  %pack = alloca [{kc_max * nr} x float], align 64",
    ]
    lines += _load_arguments(["c", "A", "B", "bias", "res", "meta"], meta)
    lines += [
        f"  %mp1 = add i64 %M, {mr - 1}",
        f"  %mpan = udiv i64 %mp1, {mr}",
        "  %gp1 = add i64 %mpan, %groups",
        "  %gp2 = sub i64 %gp1, 1",
        "  %gpan = udiv i64 %gp2, %groups",
        "  br label %unit_loop",
        # for each of this worker's units: B panel jr, row group g (row panels [ir0, ir1))
        "unit_loop:",
        "  %u = phi i64 [%start, %entry], [%un, %unit_next]",
        "  %jr = udiv i64 %u, %groups",
        "  %g = urem i64 %u, %groups",
        "  %ir0 = mul i64 %g, %gpan",
        "  %ir1a = add i64 %ir0, %gpan",
        "  %ir1 = call i64 @llvm.smin.i64(i64 %ir1a, i64 %mpan)",
        "  %some = icmp slt i64 %ir0, %ir1",
        "  br i1 %some, label %panel, label %unit_next",
        "panel:",
        f"  %col = mul i64 %jr, {nr}",
        "  %cols = sub i64 %N, %col",
        f"  %full = icmp sge i64 %cols, {nr}",
        f"  %colsi = insertelement <{w} x i64> poison, i64 %cols, i64 0",
        f"  %colsv = shufflevector <{w} x i64> %colsi, <{w} x i64> poison, <{w} x i32> zeroinitializer",
    ]
    for v in range(nv):
        lines.append(f"  %m{v} = icmp slt <{w} x i64> <{lane_ids[v]}>, %colsv")
    lines += [
        "  %bcol = getelementptr float, ptr %B, i64 %col",
        "  %biasptr = getelementptr float, ptr %bias, i64 %col",
        "  br label %pc_loop",
        # for pc in K blocks: pack B[pc:pc+kc, col:col+nr], then every row block of A against it
        "pc_loop:",
        "  %pc = phi i64 [0, %panel], [%pcn, %pc_next]",
        "  %krem = sub i64 %K, %pc",
        f"  %kc = call i64 @llvm.smin.i64(i64 {kc_max}, i64 %krem)",
        "  %first = icmp eq i64 %pc, 0",
        "  %pcn = add i64 %pc, %kc",
        "  %last = icmp eq i64 %pcn, %K",
        "  br label %pack_loop",
        "pack_loop:",
        "  %pk = phi i64 [0, %pc_loop], [%pkn, %pack_next]",
        "  %brow = add i64 %pc, %pk",
        "  %bro = mul i64 %brow, %ldb",
        "  %bsrc = getelementptr float, ptr %bcol, i64 %bro",
        f"  %pko = mul i64 %pk, {nr}",
        "  %pdst = getelementptr float, ptr %pack, i64 %pko",
        "  br i1 %full, label %pack_full, label %pack_part",
        "pack_full:",
    ]
    for v in range(nv):
        lines += [f"  %fs{v} = getelementptr float, ptr %bsrc, i64 {v * w}",
                  f"  %fv{v} = load {vt}, ptr %fs{v}, align 4",
                  f"  %fd{v} = getelementptr float, ptr %pdst, i64 {v * w}",
                  f"  store {vt} %fv{v}, ptr %fd{v}, align {4 * w}"]
    lines += ["  br label %pack_next", "pack_part:"]
    for v in range(nv):
        lines += [f"  %ps{v} = getelementptr float, ptr %bsrc, i64 {v * w}",
                  f"  %pv{v} = call {vt} @llvm.masked.load.v{w}f32.p0(ptr %ps{v}, i32 4, {mt} %m{v}, {vt} {zero})",
                  f"  %pd{v} = getelementptr float, ptr %pdst, i64 {v * w}",
                  f"  store {vt} %pv{v}, ptr %pd{v}, align {4 * w}"]
    lines += [
        "  br label %pack_next",
        "pack_next:",
        "  %pkn = add i64 %pk, 1",
        "  %packed = icmp eq i64 %pkn, %kc",
        "  br i1 %packed, label %ir_loop, label %pack_loop",
        # for ir in A's row blocks
        "ir_loop:",
        "  %ir = phi i64 [%ir0, %pack_next], [%irn, %ir_loop]",
        f"  %row = mul i64 %ir, {mr}",
        "  %rowsleft = sub i64 %M, %row",
        f"  %rows = call i64 @llvm.smin.i64(i64 {mr}, i64 %rowsleft)",
        "  %arow = mul i64 %row, %lda",
        "  %aoff = add i64 %arow, %pc",
        "  %aptr = getelementptr float, ptr %A, i64 %aoff",
        "  %crow = mul i64 %row, %ldc",
        "  %coff = add i64 %crow, %col",
        "  %cptr = getelementptr float, ptr %c, i64 %coff",
        "  %rrow = mul i64 %row, %ldr",
        "  %roff = add i64 %rrow, %col",
        "  %rptr = getelementptr float, ptr %res, i64 %roff",
        f"  call void @{fn}_tile(ptr %aptr, i64 %lda, ptr %pack, ptr %cptr, i64 %ldc, i64 %kc, i1 %first,"
        f" i1 %last, i64 %rows, {', '.join(f'{mt} %m{v}' for v in range(nv))}, ptr %biasptr, ptr %rptr,"
        " i64 %ldr)",
        "  %irn = add i64 %ir, 1",
        "  %irdone = icmp eq i64 %irn, %ir1",
        "  br i1 %irdone, label %pc_next, label %ir_loop",
        "pc_next:",
        "  %pcdone = icmp eq i64 %pcn, %K",
        "  br i1 %pcdone, label %unit_next, label %pc_loop",
        "unit_next:",
        "  %un = add i64 %u, 1",
        "  %udone = icmp eq i64 %un, %end",
        "  br i1 %udone, label %exit, label %unit_loop",
        "exit:",
        "  ret void",
        "}",
    ]
    return "\n".join(lines) + "\n"


def rows_contiguous(x):
    """``x`` (2-d float32) itself when its rows are contiguous and ``lda`` apart (any non-negative
    multiple of 4 bytes, 0 for a broadcast row), else a contiguous copy: what the kernel reads in place."""
    s0, s1 = x.strides
    if x.dtype == np.float32 and (s1 == 4 or x.shape[1] == 1) and s0 >= 0 and s0 % 4 == 0 \
            and x.ctypes.data % 4 == 0:
        return x
    return np.ascontiguousarray(x, np.float32)


def few_rows_name(lanes: int) -> str:
    return f"gemm_f32_few_rows_{lanes}"


def render_few_rows(lanes: int) -> str:
    """For M of one row block at most (a vector, or a few, times a matrix), each element of B is
    used M times, so streaming B in its own order beats any blocking: unit ``u`` of ``units`` takes
    the rows ``[u * K / units, (u + 1) * K / units)`` of B, ``FEW_ROWS_STEP`` at a time (streams in
    flight together, and a partial sum loaded and stored once for all of them), and adds
    ``A[:, k] * B[k, :]`` into its own partial sums ``S[u]`` (M rows of ``ldp`` floats, written whole),
    which the caller adds up and finishes (bias, relu, residual) afterwards.

    Arguments (``args``, pointers): S, A, B, then int64 ``[M, N, K, lda, ldb, ldp, units]``."""
    w = lanes
    vt = f"<{w} x float>"
    mt = f"<{w} x i1>"
    fn = few_rows_name(lanes)
    lane_ids = ", ".join(f"i64 {i}" for i in range(w))
    meta = ["M", "N", "K", "lda", "ldb", "ldp", "units"]
    lines = [
        f"declare {vt} @llvm.fmuladd.v{w}f32({vt}, {vt}, {vt})",
        f"declare {vt} @llvm.masked.load.v{w}f32.p0(ptr, i32, {mt}, {vt})",
        "",
        f"define void @{fn}(ptr noalias nocapture readonly %args, i64 %start, i64 %end) {{",
        "entry:",
    ]
    lines += _load_arguments(["S", "A", "B", "meta"], meta)
    lines += [
        f"  %nfull = and i64 %N, {-w}",  # columns in whole vectors
        "  %anyfull = icmp ne i64 %nfull, 0",
        "  %tail = sub i64 %N, %nfull",
        f"  %taili = insertelement <{w} x i64> poison, i64 %tail, i64 0",
        f"  %tailv = shufflevector <{w} x i64> %taili, <{w} x i64> poison, <{w} x i32> zeroinitializer",
        f"  %tailm = icmp slt <{w} x i64> <{lane_ids}>, %tailv",
        "  %hastail = icmp ne i64 %tail, 0",
        "  %psize = mul i64 %M, %ldp",
        "  br label %unit",
        "unit:",
        "  %u = phi i64 [%start, %entry], [%un, %unit_end]",
        "  %uk0 = mul i64 %u, %K",
        "  %k0 = udiv i64 %uk0, %units",
        "  %u1 = add i64 %u, 1",
        "  %uk1 = mul i64 %u1, %K",
        "  %k1 = udiv i64 %uk1, %units",
        "  %poff = mul i64 %u, %psize",
        "  %P = getelementptr float, ptr %S, i64 %poff",
        "  br label %zero",
        # this unit's partial sums start at zero
        "zero:",
        "  %z = phi i64 [0, %unit], [%zn, %zero]",
        "  %zp = getelementptr float, ptr %P, i64 %z",
        f"  store {vt} zeroinitializer, ptr %zp, align 4",
        f"  %zn = add i64 %z, {w}",
        "  %zdone = icmp uge i64 %zn, %psize",
        f"  br i1 %zdone, label %k.{FEW_ROWS_STEP}, label %zero",
    ]

    def rows_of_b(step: int, exit_label: str) -> list:
        """for k in [k, k1) by ``step`` (while ``step`` rows are left): for r in A's rows:
        P[r, :] += sum over the step's rows i of A[r, k + i] * B[k + i, :]"""
        t = f"s{step}"
        head = [
            f"k.{step}:",
            f"  %k.{t} = phi i64 " + (f"[%k0, %zero], [%kn.{t}, %arow_end.{t}]" if step == FEW_ROWS_STEP else
                                     f"[%k.s{FEW_ROWS_STEP}, %k.{FEW_ROWS_STEP}], [%kn.{t}, %arow_end.{t}]"),
            f"  %kn.{t} = add i64 %k.{t}, {step}",
            f"  %fits.{t} = icmp ule i64 %kn.{t}, %k1",
            f"  br i1 %fits.{t}, label %krow.{t}, label %{exit_label}",
            f"krow.{t}:",
        ]
        for i in range(step):
            head += [f"  %kk{i}.{t} = add i64 %k.{t}, {i}",
                     f"  %bo{i}.{t} = mul i64 %kk{i}.{t}, %ldb",
                     f"  %brow{i}.{t} = getelementptr float, ptr %B, i64 %bo{i}.{t}"]
        head += [f"  br label %arow.{t}", f"arow.{t}:",
                 f"  %r.{t} = phi i64 [0, %krow.{t}], [%rn.{t}, %arow_end.{t}]",
                 f"  %ao.{t} = mul i64 %r.{t}, %lda",
                 f"  %ao2.{t} = add i64 %ao.{t}, %k.{t}",
                 f"  %ap.{t} = getelementptr float, ptr %A, i64 %ao2.{t}"]
        for i in range(step):
            head += [f"  %api{i}.{t} = getelementptr float, ptr %ap.{t}, i64 {i}",
                     f"  %as{i}.{t} = load float, ptr %api{i}.{t}, align 4",
                     f"  %ai{i}.{t} = insertelement {vt} poison, float %as{i}.{t}, i64 0",
                     f"  %av{i}.{t} = shufflevector {vt} %ai{i}.{t}, {vt} poison, <{w} x i32> zeroinitializer"]
        head += [f"  %po.{t} = mul i64 %r.{t}, %ldp",
                 f"  %prow.{t} = getelementptr float, ptr %P, i64 %po.{t}",
                 f"  br i1 %anyfull, label %cols.{t}, label %cols_end.{t}"]

        def update(label: str, at: str, masked: bool) -> list:
            out = [f"  %pp.{label} = getelementptr float, ptr %prow.{t}, i64 {at}",
                   f"  %pv.{label} = load {vt}, ptr %pp.{label}, align 4"]
            acc = f"%pv.{label}"
            for i in range(step):
                out.append(f"  %bp{i}.{label} = getelementptr float, ptr %brow{i}.{t}, i64 {at}")
                if masked:
                    out.append(f"  %bv{i}.{label} = call {vt} @llvm.masked.load.v{w}f32.p0(ptr %bp{i}.{label}, "
                               f"i32 4, {mt} %tailm, {vt} zeroinitializer)")
                else:
                    out.append(f"  %bv{i}.{label} = load {vt}, ptr %bp{i}.{label}, align 4")
                out.append(f"  %acc{i}.{label} = call {vt} @llvm.fmuladd.v{w}f32({vt} %av{i}.{t}, "
                           f"{vt} %bv{i}.{label}, {vt} {acc})")
                acc = f"%acc{i}.{label}"
            return out + [f"  store {vt} {acc}, ptr %pp.{label}, align 4"]

        body = [f"cols.{t}:", f"  %j.{t} = phi i64 [0, %arow.{t}], [%jn.{t}, %cols.{t}]"]
        body += update(f"c{t}", f"%j.{t}", False)
        body += [f"  %jn.{t} = add i64 %j.{t}, {w}",
                 f"  %jdone.{t} = icmp eq i64 %jn.{t}, %nfull",
                 f"  br i1 %jdone.{t}, label %cols_end.{t}, label %cols.{t}",
                 f"cols_end.{t}:",
                 f"  br i1 %hastail, label %tailcol.{t}, label %arow_end.{t}",
                 # the last columns: B read under a mask, the partial sums' padding written with the rest
                 f"tailcol.{t}:"]
        body += update(f"t{t}", "%nfull", True)
        body += [f"  br label %arow_end.{t}",
                 f"arow_end.{t}:",
                 f"  %rn.{t} = add i64 %r.{t}, 1",
                 f"  %rdone.{t} = icmp eq i64 %rn.{t}, %M",
                 f"  br i1 %rdone.{t}, label %k.{step}, label %arow.{t}"]
        return head + body

    lines += rows_of_b(FEW_ROWS_STEP, "k.1")
    lines += rows_of_b(1, "unit_end")
    lines += [
        "unit_end:",
        "  %un = add i64 %u, 1",
        "  %udone = icmp eq i64 %un, %end",
        "  br i1 %udone, label %exit, label %unit",
        "exit:",
        "  ret void",
        "}",
    ]
    return "\n".join(lines) + "\n"
