"""Tiled float32 matmul: C = act(A @ B + bias) + residual, as LLVM IR for the host's vectors.

A is packed in panels of ``MR`` rows ([M/MR][K][MR], zero padded), B in panels of ``NR`` columns
([N/NR][K][NR]), so the micro-kernel streams both contiguously: each step of K broadcasts MR values of
A and multiplies them into two vectors of B, keeping an MR x NR block of C in registers (12 of the
target's vector registers at 16 lanes). The driver blocks K by ``KC`` (a B micro-panel stays in L1)
and A by ``MC_PANELS`` panels (an A block stays in L2), and its ``[start, end)`` is a range of B
panels, so threads split the columns of C.

C is written with masked stores on the last column panel; its buffer has the rows of A's padding
(the caller hands out a view of the first M), so the micro-kernel always stores whole rows. The
epilogue (bias per column, ``relu``, residual matrix) runs on the last K block only, on registers.

Arguments (``args``, pointers): C, packed A, packed B, bias (or unused), residual (or unused),
then a pointer to int64 ``[M, N, K, ldc, ld_residual]``.
"""
from __future__ import annotations

import numpy as np

MR = 6
KC = 256
MC_PANELS = 24  # 144 rows of A per block: KC * 144 * 4 bytes = 144 KiB, well inside L2
ACTIVATIONS = (None, "relu")


def panel_width(lanes: int) -> int:
    return 2 * lanes


def name(lanes: int, bias: bool, act: str | None, residual: bool) -> str:
    return f"gemm_f32_{MR}x{panel_width(lanes)}" + ("_bias" if bias else "") + (f"_{act}" if act else "") \
        + ("_res" if residual else "")


def pack_a(a: np.ndarray) -> np.ndarray:
    """(M, K) -> [ceil(M/MR)][K][MR], rows past M zero."""
    m, k = a.shape
    full = m // MR
    panels = -(-m // MR)
    out = np.empty((panels, k, MR), np.float32)
    out[:full] = a[:full * MR].reshape(full, MR, k).transpose(0, 2, 1)
    if panels > full:
        out[full] = 0
        out[full, :, :m - full * MR] = a[full * MR:].T
    return out


def pack_b(b: np.ndarray, nr: int) -> np.ndarray:
    """(K, N) -> [ceil(N/nr)][K][nr], columns past N zero."""
    k, n = b.shape
    full = n // nr
    panels = -(-n // nr)
    out = np.empty((panels, k, nr), np.float32)
    out[:full] = b[:, :full * nr].reshape(k, full, nr).transpose(1, 0, 2)
    if panels > full:
        out[full] = 0
        out[full, :, :n - full * nr] = b[:, full * nr:]
    return out


def render(lanes: int, bias: bool = False, act: str | None = None, residual: bool = False) -> str:
    """The module holding the driver ``name(...)`` and its micro-kernel."""
    assert act in ACTIVATIONS
    w = lanes
    nr = panel_width(lanes)
    vt = f"<{w} x float>"
    mt = f"<{w} x i1>"
    fn = name(lanes, bias, act, residual)
    lines = [
        f"declare {vt} @llvm.fma.v{w}f32({vt}, {vt}, {vt})",
        f"declare {vt} @llvm.masked.load.v{w}f32.p0(ptr, i32, {mt}, {vt})",
        f"declare void @llvm.masked.store.v{w}f32.p0({vt}, ptr, i32, {mt})",
        f"declare {vt} @llvm.maximum.v{w}f32({vt}, {vt})",
        "declare i64 @llvm.smin.i64(i64, i64)",
        "",
        # The micro-kernel: an MR x nr block of C from kc steps of the packed panels.
        f"define internal void @{fn}_tile(ptr noalias %a, ptr noalias %b, ptr noalias %c, i64 %ldc, i64 %kc,"
        f" i1 %first, i1 %last, i64 %rows, {mt} %m0, {mt} %m1, ptr %bias, ptr %res, i64 %ldr) {{",
        "entry:",
        "  br label %loop",
        "loop:",
        "  %k = phi i64 [0, %entry], [%kn, %loop]",
    ]
    zero = "zeroinitializer"
    for r in range(MR):
        for v in range(2):
            lines.append(f"  %acc{r}_{v} = phi {vt} [{zero}, %entry], [%nacc{r}_{v}, %loop]")
    lines += [
        f"  %boff = mul i64 %k, {nr}",
        "  %bp0 = getelementptr float, ptr %b, i64 %boff",
        f"  %bp1 = getelementptr float, ptr %bp0, i64 {w}",
        f"  %bv0 = load {vt}, ptr %bp0, align 4",
        f"  %bv1 = load {vt}, ptr %bp1, align 4",
        f"  %aoff = mul i64 %k, {MR}",
    ]
    for r in range(MR):
        lines += [
            f"  %ap{r} = getelementptr float, ptr %a, i64 %aoff",
            f"  %ap{r}x = getelementptr float, ptr %ap{r}, i64 {r}",
            f"  %as{r} = load float, ptr %ap{r}x, align 4",
            f"  %ai{r} = insertelement {vt} poison, float %as{r}, i64 0",
            f"  %av{r} = shufflevector {vt} %ai{r}, {vt} poison, <{w} x i32> zeroinitializer",
        ]
        for v in range(2):
            lines.append(f"  %nacc{r}_{v} = call {vt} @llvm.fma.v{w}f32({vt} %av{r}, {vt} %bv{v}, "
                         f"{vt} %acc{r}_{v})")
    lines += [
        "  %kn = add i64 %k, 1",
        "  %done = icmp eq i64 %kn, %kc",
        "  br i1 %done, label %store, label %loop",
        "store:",
        "  %lastrow = sub i64 %rows, 1",
    ]
    if bias:
        for v in range(2):
            lines += [f"  %biasp{v} = getelementptr float, ptr %bias, i64 {v * w}",
                      f"  %bias{v} = call {vt} @llvm.masked.load.v{w}f32.p0(ptr %biasp{v}, i32 4, "
                      f"{mt} %m{v}, {vt} {zero})"]
    for r in range(MR):
        lines += [f"  %crow{r} = mul i64 %ldc, {r}",
                  f"  %cp{r} = getelementptr float, ptr %c, i64 %crow{r}"]
        if residual:
            # Padding rows of C read the last real row of the residual: their values are never seen.
            lines += [f"  %rr{r} = call i64 @llvm.smin.i64(i64 {r}, i64 %lastrow)",
                      f"  %rrow{r} = mul i64 %ldr, %rr{r}",
                      f"  %rp{r} = getelementptr float, ptr %res, i64 %rrow{r}"]
        for v in range(2):
            t = f"{r}_{v}"
            lines += [
                f"  %cp{t} = getelementptr float, ptr %cp{r}, i64 {v * w}",
                # C's previous value is read on every K block but the first (where it is garbage,
                # and the select drops it).
                f"  %old{t} = call {vt} @llvm.masked.load.v{w}f32.p0(ptr %cp{t}, i32 4, {mt} %m{v}, "
                f"{vt} {zero})",
                f"  %prev{t} = select i1 %first, {vt} {zero}, {vt} %old{t}",
                f"  %sum{t} = fadd {vt} %nacc{t}, %prev{t}",
            ]
            cur = f"%sum{t}"
            if bias:
                lines.append(f"  %wb{t} = fadd {vt} {cur}, %bias{v}")
                cur = f"%wb{t}"
            if act == "relu":
                # maximum, not maxnum: a NaN stays NaN, as numpy's and MLX's maximum(x, 0) keep it
                lines.append(f"  %act{t} = call {vt} @llvm.maximum.v{w}f32({vt} {cur}, {vt} {zero})")
                cur = f"%act{t}"
            if residual:
                lines += [f"  %rp{t} = getelementptr float, ptr %rp{r}, i64 {v * w}",
                          f"  %rv{t} = call {vt} @llvm.masked.load.v{w}f32.p0(ptr %rp{t}, i32 4, {mt} %m{v}, "
                          f"{vt} {zero})",
                          f"  %wr{t} = fadd {vt} {cur}, %rv{t}"]
                cur = f"%wr{t}"
            lines += [f"  %out{t} = select i1 %last, {vt} {cur}, {vt} %sum{t}",
                      f"  call void @llvm.masked.store.v{w}f32.p0({vt} %out{t}, ptr %cp{t}, i32 4, {mt} %m{v})"]
    lines += ["  ret void", "}", ""]

    lane_ids = ", ".join(f"i64 {i}" for i in range(w))
    lane_ids_hi = ", ".join(f"i64 {i + w}" for i in range(w))
    lines += [
        f"define void @{fn}(ptr noalias nocapture readonly %args, i64 %start, i64 %end) {{",
        "entry:",
        "  %c = load ptr, ptr %args, align 8",
        "  %pa = getelementptr ptr, ptr %args, i64 1",
        "  %A = load ptr, ptr %pa, align 8",
        "  %pb = getelementptr ptr, ptr %args, i64 2",
        "  %B = load ptr, ptr %pb, align 8",
        "  %pbias = getelementptr ptr, ptr %args, i64 3",
        "  %bias = load ptr, ptr %pbias, align 8",
        "  %pres = getelementptr ptr, ptr %args, i64 4",
        "  %res = load ptr, ptr %pres, align 8",
        "  %pmeta = getelementptr ptr, ptr %args, i64 5",
        "  %meta = load ptr, ptr %pmeta, align 8",
        "  %M = load i64, ptr %meta, align 8",
        "  %pN = getelementptr i64, ptr %meta, i64 1",
        "  %N = load i64, ptr %pN, align 8",
        "  %pK = getelementptr i64, ptr %meta, i64 2",
        "  %K = load i64, ptr %pK, align 8",
        "  %pldc = getelementptr i64, ptr %meta, i64 3",
        "  %ldc = load i64, ptr %pldc, align 8",
        "  %pldr = getelementptr i64, ptr %meta, i64 4",
        "  %ldr = load i64, ptr %pldr, align 8",
        f"  %mp1 = add i64 %M, {MR - 1}",
        f"  %mpan = udiv i64 %mp1, {MR}",
        "  br label %pc_loop",
        # for pc in K blocks
        "pc_loop:",
        "  %pc = phi i64 [0, %entry], [%pcn, %pc_next]",
        "  %krem = sub i64 %K, %pc",
        f"  %kc = call i64 @llvm.smin.i64(i64 {KC}, i64 %krem)",
        "  %first = icmp eq i64 %pc, 0",
        "  %pcn = add i64 %pc, %kc",
        "  %last = icmp eq i64 %pcn, %K",
        "  br label %ic_loop",
        # for ic in blocks of A panels
        "ic_loop:",
        "  %ic = phi i64 [0, %pc_loop], [%icn, %ic_next]",
        f"  %icn = add i64 %ic, {MC_PANELS}",
        "  %icend = call i64 @llvm.smin.i64(i64 %icn, i64 %mpan)",
        "  br label %jr_loop",
        # for jr in this worker's B panels
        "jr_loop:",
        "  %jr = phi i64 [%start, %ic_loop], [%jrn, %jr_next]",
        f"  %col = mul i64 %jr, {nr}",
        "  %cols = sub i64 %N, %col",
        f"  %colsi = insertelement <{w} x i64> poison, i64 %cols, i64 0",
        f"  %colsv = shufflevector <{w} x i64> %colsi, <{w} x i64> poison, <{w} x i32> zeroinitializer",
        f"  %m0 = icmp slt <{w} x i64> <{lane_ids}>, %colsv",
        f"  %m1 = icmp slt <{w} x i64> <{lane_ids_hi}>, %colsv",
        "  %bk = mul i64 %jr, %K",
        "  %bk2 = add i64 %bk, %pc",
        f"  %boff = mul i64 %bk2, {nr}",
        "  %bptr = getelementptr float, ptr %B, i64 %boff",
        "  %biasptr = getelementptr float, ptr %bias, i64 %col",
        "  br label %ir_loop",
        "ir_loop:",
        "  %ir = phi i64 [%ic, %jr_loop], [%irn, %ir_loop]",
        "  %ak = mul i64 %ir, %K",
        "  %ak2 = add i64 %ak, %pc",
        f"  %aoff = mul i64 %ak2, {MR}",
        "  %aptr = getelementptr float, ptr %A, i64 %aoff",
        f"  %row = mul i64 %ir, {MR}",
        "  %rowsleft = sub i64 %M, %row",
        f"  %rows = call i64 @llvm.smin.i64(i64 {MR}, i64 %rowsleft)",
        "  %crow = mul i64 %row, %ldc",
        "  %coff = add i64 %crow, %col",
        "  %cptr = getelementptr float, ptr %c, i64 %coff",
        "  %rrow = mul i64 %row, %ldr",
        "  %roff = add i64 %rrow, %col",
        "  %rptr = getelementptr float, ptr %res, i64 %roff",
        f"  call void @{fn}_tile(ptr %aptr, ptr %bptr, ptr %cptr, i64 %ldc, i64 %kc, i1 %first, i1 %last,"
        f" i64 %rows, {mt} %m0, {mt} %m1, ptr %biasptr, ptr %rptr, i64 %ldr)",
        "  %irn = add i64 %ir, 1",
        "  %irdone = icmp eq i64 %irn, %icend",
        "  br i1 %irdone, label %jr_next, label %ir_loop",
        "jr_next:",
        "  %jrn = add i64 %jr, 1",
        "  %jrdone = icmp eq i64 %jrn, %end",
        "  br i1 %jrdone, label %ic_next, label %jr_loop",
        "ic_next:",
        "  %icdone = icmp uge i64 %icn, %mpan",
        "  br i1 %icdone, label %pc_next, label %ic_loop",
        "pc_next:",
        "  %pcdone = icmp eq i64 %pcn, %K",
        "  br i1 %pcdone, label %exit, label %pc_loop",
        "exit:",
        "  ret void",
        "}",
    ]
    return "\n".join(lines) + "\n"
