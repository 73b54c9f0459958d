"""Affine quantized matmul as LLVM IR: ``out = x @ dequant(w).T`` (transposed, the LLM case) or
``x @ dequant(w)``, reading MLX's packed weights directly.

Packing is MLX's (``mlxarm.core.ops.quantized``): each weight row is a little-endian stream of
``bits``-wide codes in uint32 words, first code in the lowest bits; a value is ``code * scale + bias``
with one float32 scale and bias per ``group_size`` consecutive codes of a row. The kernel computes
that product and that sum as two separate float32 operations (never fused), so every dequantized
weight is bit-identical to the numpy reference's; only the order of the float32 accumulation differs.

Codes are unpacked a *block* at a time: the fewest codes that fill whole vectors and start on a word
boundary (``block_codes``). Within a block every lane's word and shift are constants, so one vector
load, a constant shuffle per vector and per-lane shifts (plus a second shuffle for the 3-, 5- and
6-bit codes that straddle words) give ``lanes`` codes. The transposed product's 2- and 4-bit codes
are cheaper read *interleaved*, a byte per lane, with x's columns reordered to match (``interleaved``).
Vectors are fixed-width (the target's float32 lanes): the constant shuffles have no scalable-vector
form, so an SVE target gets its 128-bit NEON shape.

Work is split in *panels*: ``PANEL_ROWS`` weight rows (transposed) or one block of weight columns
(not transposed), spread over the worker threads. A product of several rows of x dequantizes each
panel once into a float32 buffer on the stack (``scratch_floats``; the caller keeps it small) and
reuses it for every row of x, ``mr`` rows at a time with ``mr`` x panel accumulators in registers. The
transposed matvec (decode, M = 1) multiplies each dequantized vector straight into its row's
accumulators, reading every packed word once.

Arguments (``args``, pointers): out (M, N) float32, x (M, K) float32, packed w, scales, biases (float32,
one per group), a pointer to int64 ``[M, N, K]``; ``[start, end)`` is a range of panels.
"""
from __future__ import annotations

from math import gcd

from .ir_text import IrText as _Ir

BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (16, 32, 64, 128)
PANEL_ROWS = 4  # weight rows per panel (transposed): x rows are read once per 4 outputs


def run_codes(bits: int) -> int:
    """Codes in the shortest run of whole uint32 words."""
    return 32 // gcd(bits, 32)


def block_codes(bits: int, lanes: int) -> int:
    """Codes unpacked together: whole vectors starting on a word boundary."""
    return max(lanes, run_codes(bits))


def max_rows(transpose: bool, bits: int, lanes: int) -> int:
    """Rows of x per register tile: accumulators = rows x panel vectors, at most 16."""
    if transpose:
        return 4
    return max(1, min(8, 16 // (block_codes(bits, lanes) // lanes)))


def interleaved(transpose: bool, bits: int, group_size: int, lanes: int) -> bool:
    """Whether the template reads x's columns interleaved (``interleave_x``): 2- and 4-bit codes of a
    transposed product then unpack a byte per lane (a widening load, a shift and a mask per vector)
    instead of a shuffle and per-lane shifts. The order of a dot product's terms is free, but the
    group of every lane must be one: the interleaved block (``lanes`` bytes) must fit in a group."""
    return transpose and bits in (2, 4) and group_size % (lanes * 8 // bits) == 0


def interleave_x(x, bits: int, lanes: int):
    """x (M, K) with each block of ``lanes * 8 / bits`` columns reordered as ``_Shape.unpack`` reads
    the codes: column t + j * 8/bits goes to t * lanes + j."""
    per = 8 // bits
    m, k = x.shape
    return x.reshape(m, k // (lanes * per), lanes, per).swapaxes(-1, -2).reshape(m, k)


def tile_rows(transpose: bool, bits: int, lanes: int, m: int) -> int:
    """The register tile's rows of x for an M-row product: 1 for a matvec (decode), else the most
    (a ragged last tile repeats x's last row), so one kernel serves every M > 1."""
    return 1 if m == 1 else max_rows(transpose, bits, lanes)


def panels(transpose: bool, n: int, bits: int, lanes: int) -> int:
    return -(-n // PANEL_ROWS) if transpose else n // block_codes(bits, lanes)


def scratch_floats(transpose: bool, k: int, bits: int, lanes: int) -> int:
    """float32 elements of one panel's dequantized buffer (on the kernel's stack)."""
    return k * (PANEL_ROWS if transpose else block_codes(bits, lanes))


def supported(transpose: bool, n: int, k: int, bits: int, group_size: int) -> bool:
    """Whether the shapes fit the template (K, and N when not transposed, whole groups and blocks)."""
    if bits not in BITS or group_size not in GROUP_SIZES:
        return False
    inner = k if transpose else n
    return inner % group_size == 0 and inner % run_codes(bits) == 0 and inner % 16 == 0


def name(transpose: bool, bits: int, group_size: int, lanes: int, mr: int) -> str:
    return f"qmm_{'t' if transpose else 'n'}_b{bits}_g{group_size}_l{lanes}_m{mr}"


def _consts(ty: str, values) -> str:
    return "<" + ", ".join(f"{ty} {v}" for v in values) + ">"


class _Shape:
    def __init__(self, bits: int, group_size: int, lanes: int, interleave: bool):
        self.bits, self.gs, self.lanes, self.interleave = bits, group_size, lanes, interleave
        self.block = lanes * 8 // bits if interleave else block_codes(bits, lanes)
        self.block_words = self.block * bits // 32
        self.vt = f"<{lanes} x float>"
        self.it = f"<{lanes} x i32>"

    def unpack(self, ir: _Ir, src: str) -> list:
        """Float codes (one vector per ``lanes`` codes) of the block of words at ``src``; interleaved:
        vector t holds the codes t, t + 8/bits, t + 2*8/bits... (lane j: byte j's t-th code)."""
        bits, w, nw = self.bits, self.lanes, self.block_words
        if self.interleave:
            wide = ir(f"zext <{w} x i8> {ir(f'load <{w} x i8>, ptr {src}, align 1')} to {self.it}")
            out = []
            for t in range(8 // bits):
                shifted = ir(f"lshr {self.it} {wide}, {_consts('i32', [t * bits] * w)}") if t else wide
                code = ir(f"and {self.it} {shifted}, {_consts('i32', [(1 << bits) - 1] * w)}")
                out.append(self.to_float(ir, code))
            return out
        wt = f"<{nw} x i32>"
        words = ir(f"load {wt}, ptr {src}, align 4")
        mask = _consts("i32", [(1 << bits) - 1] * w)
        out = []
        for v in range(self.block // w):
            pos = [(v * w + i) * bits for i in range(w)]
            lo_idx = [p // 32 for p in pos]
            lo_sh = [p % 32 for p in pos]
            lo = ir(f"shufflevector {wt} {words}, {wt} poison, {self.it} {_consts('i32', lo_idx)}")
            val = ir(f"lshr {self.it} {lo}, {_consts('i32', lo_sh)}")
            if any(s + bits > 32 for s in lo_sh):
                # The high part of a straddling code; other lanes shift by 31, which the mask clears.
                hi_idx = [i + 1 if s + bits > 32 else i for i, s in zip(lo_idx, lo_sh)]
                hi_sh = [32 - s if s + bits > 32 else 31 for s in lo_sh]
                hi = ir(f"shufflevector {wt} {words}, {wt} poison, {self.it} {_consts('i32', hi_idx)}")
                high = ir(f"shl {self.it} {hi}, {_consts('i32', hi_sh)}")
                val = ir(f"or {self.it} {val}, {high}")
            code = ir(f"and {self.it} {val}, {mask}")
            out.append(self.to_float(ir, code))
        return out

    def to_float(self, ir: _Ir, code: str) -> str:
        return ir(f"sitofp {self.it} {code} to {self.vt}")  # codes < 256: exact either way

    def splat(self, ir: _Ir, scalar: str) -> str:
        one = ir(f"insertelement {self.vt} poison, float {scalar}, i64 0")
        return ir(f"shufflevector {self.vt} {one}, {self.vt} poison, <{self.lanes} x i32> zeroinitializer")

    def dequant(self, ir: _Ir, code: str, scale: str, bias: str) -> str:
        # Product then sum, each rounded to float32, as the reference computes them.
        return ir(f"fadd {self.vt} {ir(f'fmul {self.vt} {code}, {scale}')}, {bias}")


def _loop(ir: _Ir, tag: str, count: str, step: int, body) -> None:
    """``for (i = 0; i < count; i += step) body(i)``, with the counter in an alloca (mem2reg)."""
    slot = f"%{tag}.i"
    ir.alloca(slot, "i64", 8)
    ir.raw(f"store i64 0, ptr {slot}, align 8")
    ir.raw(f"br label %{tag}.head")
    ir.raw(f"{tag}.head:")
    i = ir(f"load i64, ptr {slot}, align 8")
    ir.raw(f"br i1 {ir(f'icmp slt i64 {i}, {count}')}, label %{tag}.body, label %{tag}.end")
    ir.raw(f"{tag}.body:")
    body(i)
    ir.raw(f"store i64 {ir(f'add i64 {i}, {step}')}, ptr {slot}, align 8")
    ir.raw(f"br label %{tag}.head")
    ir.raw(f"{tag}.end:")


def render(transpose: bool, bits: int, group_size: int, lanes: int, mr: int) -> str:
    """The module holding ``name(transpose, bits, group_size, lanes, mr)``."""
    assert bits in BITS and group_size in GROUP_SIZES and 1 <= mr
    s = _Shape(bits, group_size, lanes, interleaved(transpose, bits, group_size, lanes))
    w, vt = lanes, s.vt
    fn = name(transpose, bits, group_size, lanes, mr)
    ir = _Ir()
    ir.raw(f"define void @{fn}(ptr noalias nocapture readonly %args, i64 %start, i64 %end) {{")
    ir.raw("entry:")
    ptrs = {}
    for i, arg in enumerate(("out", "x", "w", "scales", "biases", "meta")):
        ptrs[arg] = ir(f"load ptr, ptr {ir(f'getelementptr ptr, ptr %args, i64 {i}')}, align 8")
    meta = ptrs["meta"]
    m_rows = ir(f"load i64, ptr {meta}, align 8")
    n = ir(f"load i64, ptr {ir(f'getelementptr i64, ptr {meta}, i64 1')}, align 8")
    k = ir(f"load i64, ptr {ir(f'getelementptr i64, ptr {meta}, i64 2')}, align 8")
    inner = k if transpose else n
    row_words = ir(f"udiv i64 {ir(f'mul i64 {inner}, {bits}')}, 32")
    row_groups = ir(f"udiv i64 {inner}, {group_size}")
    panel = PANEL_ROWS if transpose else s.block  # panel width: weight rows, or columns
    scratch = ir(f"alloca float, i64 {ir(f'mul i64 {k}, {panel}')}, align 64")
    # Stores of rows or columns past the output's edge go here.
    sink = "%sink"
    ir.alloca(sink, vt, 64)
    accs = [[f"%acc{i}_{j}" for j in range(panel if transpose else s.block // w)] for i in range(mr)]
    for row in accs:
        for a in row:
            ir.alloca(a, vt, 64)
    ir.raw("br label %panels")
    ir.raw("panels:")

    def accumulate(acc, a, b):
        """acc += a * b (one rounding) on the accumulator alloca ``acc``."""
        old = ir(f"load {vt}, ptr {acc}, align 64")
        ir.raw(f"store {vt} {ir(f'call {vt} @llvm.fma.v{w}f32({vt} {a}, {vt} {b}, {vt} {old})')}, ptr {acc}, align 64")

    # A matvec (transposed, one row of x) multiplies each dequantized vector straight into two
    # accumulators per weight row: no panel buffer.
    fused = transpose and mr == 1
    dots = [[f"%dot{r}_{a}" for a in range(2)] for r in range(PANEL_ROWS)] if fused else []
    for row in dots:
        for a in row:
            ir.alloca(a, vt, 64)

    def panel_body(p):
        if transpose:
            _dequant_rows(p)
        else:
            _dequant_columns(p)
        if not fused:
            _loop(ir, "m", m_rows, mr, lambda m0: _tile(p, m0))

    def _dequant_rows(p):
        """Rows p*PANEL_ROWS.. of w (the last one repeated past N) -> scratch[r][K], or (fused) their
        dot products with x's row -> out."""
        first = ir(f"mul i64 {p}, {PANEL_ROWS}")
        last = ir(f"sub i64 {n}, 1")
        chunk = max(group_size, s.block)  # codes of whole groups and whole blocks
        for r in range(PANEL_ROWS):
            row = ir(f"call i64 @llvm.smin.i64(i64 {ir(f'add i64 {first}, {r}')}, i64 {last})")
            wrow = ir(f"getelementptr i32, ptr {ptrs['w']}, i64 {ir(f'mul i64 {row}, {row_words}')}")
            goff = ir(f"mul i64 {row}, {row_groups}")
            srow = ir(f"getelementptr float, ptr {ptrs['scales']}, i64 {goff}")
            brow = ir(f"getelementptr float, ptr {ptrs['biases']}, i64 {goff}")
            drow = ir(f"getelementptr float, ptr {scratch}, i64 {ir(f'mul i64 {k}, {r}')}")
            if fused:
                for a in dots[r]:
                    ir.raw(f"store {vt} zeroinitializer, ptr {a}, align 64")

            def chunk_body(c0, r=r, wrow=wrow, srow=srow, brow=brow, drow=drow):
                g0 = ir(f"udiv i64 {c0}, {group_size}")
                groups = []
                for g in range(chunk // group_size):
                    gi = ir(f"add i64 {g0}, {g}")
                    sc = ir(f"load float, ptr {ir(f'getelementptr float, ptr {srow}, i64 {gi}')}, align 4")
                    bi = ir(f"load float, ptr {ir(f'getelementptr float, ptr {brow}, i64 {gi}')}, align 4")
                    groups.append((s.splat(ir, sc), s.splat(ir, bi)))
                for b in range(chunk // s.block):
                    at = ir(f"add i64 {c0}, {b * s.block}")
                    word = ir(f"udiv i64 {ir(f'mul i64 {at}, {bits}')}, 32")
                    src = ir(f"getelementptr i32, ptr {wrow}, i64 {word}")
                    for v, code in enumerate(s.unpack(ir, src)):
                        sc, bi = groups[(b * s.block + v * w) // group_size]
                        val = s.dequant(ir, code, sc, bi)
                        col = ir(f"add i64 {at}, {v * w}")
                        if fused:
                            a = dots[r][(b * s.block // w + v) % 2]
                            xp = ir(f"getelementptr float, ptr {ptrs['x']}, i64 {col}")
                            xv = ir(f"load {vt}, ptr {xp}, align 4")
                            accumulate(a, val, xv)
                        else:
                            dst = ir(f"getelementptr float, ptr {drow}, i64 {col}")
                            ir.raw(f"store {vt} {val}, ptr {dst}, align 4")

            _loop(ir, f"r{r}", k, chunk, chunk_body)
            if fused:
                pair = [ir(f"load {vt}, ptr {a}, align 64") for a in dots[r]]
                acc = ir(f"fadd {vt} {pair[0]}, {pair[1]}")
                total = ir(f"call reassoc float @llvm.vector.reduce.fadd.v{w}f32(float -0.0, {vt} {acc})")
                col = ir(f"add i64 {first}, {r}")
                dst = ir(f"getelementptr float, ptr {ptrs['out']}, i64 {col}")
                ok = ir(f"icmp slt i64 {col}, {n}")
                ir.raw(f"store float {total}, ptr {ir(f'select i1 {ok}, ptr {dst}, ptr {sink}')}, align 4")

    def _dequant_columns(p):
        """Columns p*block.. of every row of w -> scratch[K][block]."""
        col = ir(f"mul i64 {p}, {s.block}")
        wcol = ir(f"getelementptr i32, ptr {ptrs['w']}, i64 {ir(f'mul i64 {p}, {s.block_words}')}")
        gcol = ir(f"udiv i64 {col}, {group_size}")

        sbase, bbase = ptrs["scales"], ptrs["biases"]

        def row_body(kk):
            src = ir(f"getelementptr i32, ptr {wcol}, i64 {ir(f'mul i64 {kk}, {row_words}')}")
            gbase = ir(f"add i64 {ir(f'mul i64 {kk}, {row_groups}')}, {gcol}")
            groups = {}
            dst_row = ir(f"getelementptr float, ptr {scratch}, i64 {ir(f'mul i64 {kk}, {s.block}')}")
            for v, code in enumerate(s.unpack(ir, src)):
                g = (v * w) // group_size  # block and group both start on the block's first code
                if g not in groups:
                    gi = ir(f"add i64 {gbase}, {g}")
                    sc = ir(f"load float, ptr {ir(f'getelementptr float, ptr {sbase}, i64 {gi}')}, align 4")
                    bi = ir(f"load float, ptr {ir(f'getelementptr float, ptr {bbase}, i64 {gi}')}, align 4")
                    groups[g] = (s.splat(ir, sc), s.splat(ir, bi))
                dst = ir(f"getelementptr float, ptr {dst_row}, i64 {v * w}")
                ir.raw(f"store {vt} {s.dequant(ir, code, *groups[g])}, ptr {dst}, align 4")

        _loop(ir, "kd", k, 1, row_body)

    def _tile(p, m0):
        """mr rows of x (the last one repeated past M) times the panel in scratch."""
        last = ir(f"sub i64 {m_rows}, 1")
        xrows = []
        for i in range(mr):
            row = ir(f"call i64 @llvm.smin.i64(i64 {ir(f'add i64 {m0}, {i}')}, i64 {last})")
            xrows.append(ir(f"getelementptr float, ptr {ptrs['x']}, i64 {ir(f'mul i64 {row}, {k}')}"))
        for row in accs:
            for a in row:
                ir.raw(f"store {vt} zeroinitializer, ptr {a}, align 64")
        if transpose:
            def k_body(kk):
                xs = [ir(f"load {vt}, ptr {ir(f'getelementptr float, ptr {xr}, i64 {kk}')}, align 4") for xr in xrows]
                ws = []
                for j in range(PANEL_ROWS):
                    off = ir(f"add i64 {ir(f'mul i64 {k}, {j}')}, {kk}")
                    ws.append(ir(f"load {vt}, ptr {ir(f'getelementptr float, ptr {scratch}, i64 {off}')}, align 4"))
                for i in range(mr):
                    for j in range(PANEL_ROWS):
                        accumulate(accs[i][j], xs[i], ws[j])

            _loop(ir, "kt", k, w, k_body)
            first = ir(f"mul i64 {p}, {PANEL_ROWS}")
            for i in range(mr):
                ok_m = ir(f"icmp slt i64 {ir(f'add i64 {m0}, {i}')}, {m_rows}")
                orow = ir(f"mul i64 {ir(f'add i64 {m0}, {i}')}, {n}")
                for j in range(PANEL_ROWS):
                    col = ir(f"add i64 {first}, {j}")
                    ok = ir(f"and i1 {ok_m}, {ir(f'icmp slt i64 {col}, {n}')}")
                    acc = ir(f"load {vt}, ptr {accs[i][j]}, align 64")
                    total = ir(f"call reassoc float @llvm.vector.reduce.fadd.v{w}f32(float -0.0, {vt} {acc})")
                    dst = ir(f"getelementptr float, ptr {ptrs['out']}, i64 {ir(f'add i64 {orow}, {col}')}")
                    ir.raw(f"store float {total}, ptr {ir(f'select i1 {ok}, ptr {dst}, ptr {sink}')}, align 4")
        else:
            nv = s.block // w

            def k_body(kk):
                ws = []
                base = ir(f"mul i64 {kk}, {s.block}")
                for v in range(nv):
                    off = ir(f"add i64 {base}, {v * w}")
                    ws.append(ir(f"load {vt}, ptr {ir(f'getelementptr float, ptr {scratch}, i64 {off}')}, align 4"))
                for i in range(mr):
                    xv = ir(f"load float, ptr {ir(f'getelementptr float, ptr {xrows[i]}, i64 {kk}')}, align 4")
                    xs = s.splat(ir, xv)
                    for v in range(nv):
                        accumulate(accs[i][v], xs, ws[v])

            _loop(ir, "kn", k, 1, k_body)
            col = ir(f"mul i64 {p}, {s.block}")
            for i in range(mr):
                ok = ir(f"icmp slt i64 {ir(f'add i64 {m0}, {i}')}, {m_rows}")
                row = ir(f"add i64 {m0}, {i}")
                orow = ir(f"add i64 {ir(f'mul i64 {row}, {n}')}, {col}")
                for v in range(nv):
                    dst = ir(f"getelementptr float, ptr {ptrs['out']}, i64 {ir(f'add i64 {orow}, {v * w}')}")
                    acc = ir(f"load {vt}, ptr {accs[i][v]}, align 64")
                    ir.raw(f"store {vt} {acc}, ptr {ir(f'select i1 {ok}, ptr {dst}, ptr {sink}')}, align 4")

    # for p in [start, end)
    ir.alloca("%p.slot", "i64", 8)
    ir.raw("store i64 %start, ptr %p.slot, align 8")
    ir.raw("br label %p.head")
    ir.raw("p.head:")
    p = ir("load i64, ptr %p.slot, align 8")
    ir.raw(f"br i1 {ir(f'icmp slt i64 {p}, %end')}, label %p.body, label %p.end")
    ir.raw("p.body:")
    panel_body(p)
    ir.raw(f"store i64 {ir(f'add i64 {p}, 1')}, ptr %p.slot, align 8")
    ir.raw("br label %p.head")
    ir.raw("p.end:")
    ir.raw("ret void")
    ir.lines.append("}")
    head = [
        f"declare {vt} @llvm.fma.v{w}f32({vt}, {vt}, {vt})",
        f"declare float @llvm.vector.reduce.fadd.v{w}f32(float, {vt})",
        "declare i64 @llvm.smin.i64(i64, i64)",
        "",
    ]
    entry = ir.lines.index("entry:") + 1
    return "\n".join(head + ir.lines[:entry] + ir.allocas + ir.lines[entry:]) + "\n"
