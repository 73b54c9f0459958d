"""Affine quantized matmul as LLVM IR: ``out = x @ dequant(w).T`` (transposed, the LLM case) or
``x @ dequant(w)``, reading MLX's packed weights directly.

Packing is MLX's (``mlxarm.core.ops.quantized``): each weight row is a little-endian stream of
``bits``-wide codes in uint32 words, first code in the lowest bits; a value is ``code * scale + bias``
with one scale and bias per ``group_size`` consecutive codes of a row. The kernel computes that
product and that sum as two separate float32 operations (never fused), each rounded to the scales'
dtype as MLX rounds them, so every dequantized weight is bit-identical to the numpy reference's; only
the order of the float32 accumulation differs. The exception is a transposed matvec whose weights are
float32 values (``factored``), the decode step of a float32 model: it computes a group's terms as
``scale * sum(code * x) + bias * sum(x)``, as MLX's GPU kernels do, which differs from the weights'
products by float32 roundings and costs a conversion and a multiply-add per weight.

x, the scales and biases (one dtype for both) and the output are each float32, float16 or bfloat16
(``DTYPES``; bfloat16 arrives as its uint16 bit patterns). Scales and biases stored as float16 or
bfloat16 may be rounded to (computed in) float32 instead: a fourth dtype names it. Everything is
widened to float32 as it is loaded (bfloat16 is the top half of a float32, float16 goes through
``fpext``), products are summed in float32, and the output is rounded to nearest even when it is stored
(``_Values``).

Codes are unpacked a *block* at a time: the fewest codes that fill whole vectors and start on a word
boundary (``block_codes``). Within a block every lane's word and shift are constants, so one vector
load, a constant shuffle per vector and per-lane shifts (plus a second shuffle for the 3-, 5- and
6-bit codes that straddle words) give ``lanes`` codes. The transposed product's 2- and 4-bit codes
are cheaper read *interleaved*, a byte per lane, with x's columns reordered to match (``interleaved``),
and a float32 matvec's a *word per lane* where K allows (``word_lanes``): code j of every word masked
in place, x's columns gathered and prescaled by powers of two to match, no widening shuffle.
Where the target can permute 16 lanes by a vector of indices (AVX-512), a transposed product's codes
of at most 4 bits are *looked up* in a vector of their group's dequantized values instead
(``looked_up``): one permute per vector in place of the conversion, product, sum and roundings.
Vectors are fixed-width (the target's float32 lanes): the constant shuffles have no scalable-vector
form, so an SVE target gets its 128-bit NEON shape.

Work is split in *panels*: ``PANEL_ROWS`` weight rows (transposed) or one block of weight columns
(not transposed), spread over the worker threads. A product of several rows of x dequantizes each
panel once into a float32 buffer on the stack (``scratch_floats``; the caller keeps it small) and
reuses it for every row of x, ``mr`` rows at a time with ``mr`` x panel accumulators in registers. The
transposed matvec (decode, M = 1) multiplies each dequantized vector straight into its row's
accumulators, reading every packed word once; the factored one first widens x into the stack buffer
(its columns gathered in the interleaved order, prescaled where codes are masked but not shifted) with
each group's sum of x after it, then reads the codes of ``lanes`` groups at a time with their scales
and biases as vectors (``_dot_rows``). One call of it may take up to ``PARTS`` weight matrices of the
same K (``parts``), their panels one after another: a program runs the products of one x so.

Arguments (``args``, pointers): out (M, N), x (M, K), packed w, scales, biases (one per group), a pointer
to int64 ``[M, N, K]``; ``[start, end)`` is a range of panels.
"""
from __future__ import annotations

from math import gcd

from .ir_text import IrText as _Ir
from .ir_text import Values as _Values
from .ir_text import consts as _consts

BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (16, 32, 64, 128)
DTYPES = ("float32", "float16", "bfloat16")
F32 = ("float32",) * 3  # (x, scales and biases, out): the dtypes of a float32 product
PANEL_ROWS = 4  # weight rows per panel (transposed): x rows are read once per 4 outputs
PARTS = 3  # weight matrices one matvec call may take (attention's query, key and value projections)


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


def looked_up(transpose: bool, bits: int, lanes: int, permute: bool) -> bool:
    """Whether a transposed product's codes index a table of their group's dequantized values (lane c:
    code c's value, computed once per group and row) instead of each being converted, scaled, offset
    and rounded: where the target permutes 16 float lanes by a vector of indices (``permute``: x86's
    AVX-512 ``vpermps``; LLVM IR has no target-independent variable shuffle) and every code indexes a
    lane. The table holds the very values the arithmetic would give."""
    return permute and transpose and lanes == 16 and (1 << bits) <= lanes


def rounding(dtypes: tuple) -> str:
    """The dtype a function's dequantized weights are rounded to (``render``'s ``dtypes``)."""
    return dtypes[3] if len(dtypes) > 3 else dtypes[1]


def factored(transpose: bool, bits: int, lanes: int, mr: int, permute: bool, dtypes: tuple = F32) -> bool:
    """Whether a function multiplies each group of codes by x as codes, ``scale * sum(code * x) +
    bias * sum(x)`` (as MLX's GPU kernels do): a conversion and a multiply-add per weight instead of
    four operations. That is a transposed matvec whose codes are not looked up and whose dequantized
    weights are float32 values: the two forms then differ by float32 roundings, as two orders of the
    sum do. (Weights rounded to half precision keep MLX's CPU arithmetic, which rounds each.) Such a
    function reads x in x's own order: the caller does not ``interleave_x`` it."""
    return transpose and mr == 1 and not looked_up(transpose, bits, lanes, permute) \
        and rounding(dtypes) == "float32"


def x_interleaved(transpose: bool, bits: int, group_size: int, lanes: int, mr: int, permute: bool,
                  dtypes: tuple = F32) -> bool:
    """Whether the caller passes x through ``interleave_x`` for this function."""
    return interleaved(transpose, bits, group_size, lanes) \
        and not factored(transpose, bits, lanes, mr, permute, dtypes)


def word_lanes(transpose: bool, bits: int, group_size: int, lanes: int, mr: int, permute: bool,
               dtypes: tuple, k: int) -> bool:
    """Whether a ``factored`` matvec of K columns reads its codes a *word per lane*: each vector load
    takes ``lanes`` whole words, and vector j of them holds every word's code j, masked in place (or
    shifted down once), with x's columns gathered and prescaled to match. That leaves out the
    widening shuffle a byte per lane needs, for 2- and 4-bit codes where K is a whole number of such
    blocks. A block wider than a group multiplies its sums by a vector of its lanes' scales. On a
    Zen 3 core, the 4-bit matvecs of a decode step ran 12% faster so (8-bit codes: no difference)."""
    return bits in (2, 4) and factored(transpose, bits, lanes, mr, permute, dtypes) \
        and k % (lanes * 32 // bits) == 0


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


def name(transpose: bool, bits: int, group_size: int, lanes: int, mr: int, dtypes: tuple = F32,
         parts: int = 1, words: bool = False) -> str:
    """The function's name; ``dtypes`` is (x, scales and biases, out), named when any is not float32,
    and the dtype products round to when it is not the scales' (``render``); ``parts``, when more
    than one, the weight matrices it multiplies x by."""
    tail = "" if dtypes == F32 else "_" + "_".join(_SHORT[d] for d in dtypes[:3])
    if len(dtypes) > 3:
        tail += "_r" + _SHORT[dtypes[3]]
    if parts > 1:
        tail += f"_p{parts}"
    if words:
        tail += "_w"
    return f"qmm_{'t' if transpose else 'n'}_b{bits}_g{group_size}_l{lanes}_m{mr}{tail}"


_SHORT = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}


class _Shape:
    def __init__(self, bits: int, group_size: int, lanes: int, interleave: bool, scales: _Values,
                 lookup: bool = False, words: bool = False):
        self.bits, self.gs, self.lanes, self.interleave = bits, group_size, lanes, interleave and not words
        self.scales = scales
        self.lookup = lookup
        self.words = words
        self.per = 32 // bits  # codes per word
        if words:
            self.block = lanes * self.per
        else:
            self.block = lanes * 8 // bits if self.interleave else block_codes(bits, lanes)
        self.block_words = self.block * bits // 32
        self.vt = f"<{lanes} x float>"
        self.it = f"<{lanes} x i32>"

    def unpack(self, ir: _Ir, src: str, scaled: bool = False) -> list:
        """Codes (one vector per ``lanes`` codes, as ``weights`` takes them) of the block of words at
        ``src``; interleaved: vector t holds the codes t, t + 8/bits, t + 2*8/bits... (lane j: byte j's
        t-th code); words (``word_lanes``): vector j holds every word's code j. ``scaled`` (interleaved;
        always for words): vector t holds its codes times ``2 ** (t * bits)``,
        masked in place and not shifted down (``prescale`` gives the factors x is multiplied by)."""
        bits, w, nw = self.bits, self.lanes, self.block_words
        if self.words:  # a word per lane: vector j holds each word's code j, masked in place
            assert scaled
            words = ir(f"load {self.it}, ptr {src}, align 4")
            high = None
            out = []
            for j in range(self.per):
                at = j * bits
                if at + bits == 32:  # the top code: shifted down, never a negative int
                    code = ir(f"lshr {self.it} {words}, {_consts('i32', [at] * w)}")
                else:
                    src_w = words
                    if at >= 16:  # the high half, shifted down once: x is prescaled by at most 2 ** -14
                        if high is None:
                            high = ir(f"lshr {self.it} {words}, {_consts('i32', [16] * w)}")
                        src_w, at = high, at - 16
                    code = ir(f"and {self.it} {src_w}, {_consts('i32', [((1 << bits) - 1) << at] * w)}")
                out.append(self.lanes_of(ir, code))
            return out
        if self.interleave or bits == 8:  # a byte per lane (8-bit codes: in order, one vector)
            wide = ir(f"zext <{w} x i8> {ir(f'load <{w} x i8>, ptr {src}, align 1')} to {self.it}")
            if bits == 8:
                return [self.lanes_of(ir, wide)]
            out = []
            for t in range(8 // bits):
                if scaled:
                    code = ir(f"and {self.it} {wide}, {_consts('i32', [((1 << bits) - 1) << (t * bits)] * w)}")
                else:
                    shifted = ir(f"lshr {self.it} {wide}, {_consts('i32', [t * bits] * w)}") if t else wide
                    code = ir(f"and {self.it} {shifted}, {_consts('i32', [(1 << bits) - 1] * w)}")
                out.append(self.lanes_of(ir, code))
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
            out.append(self.lanes_of(ir, code))
        return out

    def prescale(self, v: int) -> float:
        """The factor x's vector ``v`` of a block is multiplied by for ``unpack(scaled=True)``'s codes."""
        if self.words:
            at = (v % self.per) * self.bits
            return 1.0 if at + self.bits == 32 else 2.0 ** -(at - 16 if at >= 16 else at)
        return 2.0 ** -((v % (8 // self.bits)) * self.bits) if self.interleave else 1.0

    def lanes_of(self, ir: _Ir, code: str) -> str:
        """Integer codes as ``weights`` takes them: floats, or (``lookup``) the table's lane indices."""
        if self.lookup:
            return code
        return ir(f"sitofp {self.it} {code} to {self.vt}")  # codes < 256: exact either way

    def group(self, ir: _Ir, scale: str, bias: str):
        """What ``weights`` needs of a group with this scale and bias (float32 scalars): both splat,
        or (``lookup``) the table of its dequantized values, lane c holding code c's."""
        scale, bias = self.splat(ir, scale), self.splat(ir, bias)
        if self.lookup:
            return self.dequant(ir, _consts("float", [f"{float(c):e}" for c in range(self.lanes)]), scale, bias)
        return scale, bias

    def weights(self, ir: _Ir, code: str, group) -> str:
        """The dequantized weights of a vector of codes (from ``unpack``) of one group."""
        if self.lookup:
            return ir(f"call {self.vt} @llvm.x86.avx512.permvar.sf.512({self.vt} {group}, {self.it} {code})")
        return self.dequant(ir, code, *group)

    def splat(self, ir: _Ir, scalar: str) -> str:
        one = ir(f"insertelement {self.vt} poison, float {scalar}, i64 0")
        return ir(f"shufflevector {self.vt} {one}, {self.vt} poison, <{self.lanes} x i32> zeroinitializer")

    def dequant(self, ir: _Ir, code: str, scale: str, bias: str) -> str:
        # Product then sum, each rounded to float32 and then to the scales' dtype, as the numpy
        # reference and MLX's CPU kernel compute them.
        prod = self.scales.round(ir, ir(f"fmul {self.vt} {code}, {scale}"), self.lanes)
        return self.scales.round(ir, ir(f"fadd {self.vt} {prod}, {bias}"), self.lanes)


def _gather(ir: _Ir, vectors: list, w: int, lanes: list) -> str:
    """The vector whose lane j is lane ``lanes[j]`` of the concatenation of ``vectors`` (each of ``w``
    floats, their count a power of two)."""
    size = w
    while len(vectors) > 1:  # concatenated pairwise
        vectors = [ir(f"shufflevector <{size} x float> {a}, <{size} x float> {b}, "
                      f"<{2 * size} x i32> {_consts('i32', range(2 * size))}")
                   for a, b in zip(vectors[::2], vectors[1::2])]
        size *= 2
    return ir(f"shufflevector <{size} x float> {vectors[0]}, <{size} x float> poison, "
              f"<{len(lanes)} x i32> {_consts('i32', lanes)}")


def _loop(ir: _Ir, tag: str, count: str, step: int, body, start: str = "0") -> None:
    """``for (i = start; i < count; i += step) body(i)``, with the counter in an alloca (mem2reg)."""
    slot = f"%{tag}.i"
    ir.alloca(slot, "i64", 8)
    ir.raw(f"store i64 {start}, ptr {slot}, align 8")
    ir.raw(f"br label %{tag}.head")
    ir.raw(f"{tag}.head:")
    i = ir(f"load i64, ptr {slot}, align 8")
    ir.raw(f"br i1 {ir(f'icmp slt i64 {i}, {count}')}, label %{tag}.body, label %{tag}.end")
    ir.raw(f"{tag}.body:")
    body(i)
    ir.raw(f"store i64 {ir(f'add i64 {i}, {step}')}, ptr {slot}, align 8")
    ir.raw(f"br label %{tag}.head")
    ir.raw(f"{tag}.end:")


def render(transpose: bool, bits: int, group_size: int, lanes: int, mr: int, dtypes: tuple = F32,
           permute: bool = False, parts: int = 1, words: bool = False) -> str:
    """The module holding ``name(transpose, bits, group_size, lanes, mr, dtypes, parts)``; ``dtypes``
    is (x, scales and biases, out), and optionally the dtype dequantized weights are rounded to when
    it is not the scales' (float32 for float16 scales of a float32 product); ``permute``: the target
    has AVX-512's 16-lane ``vpermps`` (see ``looked_up``). ``parts`` (a ``factored`` matvec only):
    weight matrices of the same K, shape and dtypes that x is multiplied by in one call (``PARTS``).
    ``words`` (a ``factored`` matvec only): codes read a word per lane (``word_lanes``)."""
    assert bits in BITS and group_size in GROUP_SIZES and 1 <= mr
    assert parts == 1 or factored(transpose, bits, lanes, mr, permute, dtypes)
    xv, sv, ov = (_Values(d) for d in dtypes[:3])
    rounded = _Values(rounding(dtypes))
    assert not words or factored(transpose, bits, lanes, mr, permute, dtypes)
    s = _Shape(bits, group_size, lanes, interleaved(transpose, bits, group_size, lanes), rounded,
               looked_up(transpose, bits, lanes, permute), words)
    w, vt = lanes, s.vt
    fn = name(transpose, bits, group_size, lanes, mr, dtypes, parts, words)
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
    # (out, w, scales, biases, N) of each weight matrix: the first from the usual arguments
    matrices = [(ptrs["out"], ptrs["w"], ptrs["scales"], ptrs["biases"], n)]
    for j in range(1, parts):
        slots = [ir(f"load ptr, ptr {ir(f'getelementptr ptr, ptr %args, i64 {6 + 4 * (j - 1) + i}')}, align 8")
                 for i in range(4)]
        matrices.append((*slots, ir(f"load i64, ptr {ir(f'getelementptr i64, ptr {meta}, i64 {2 + j}')}, align 8")))
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
            ir.alloca(a, vt, 64)  # (``_dot_rows``: the second holds one float)

    # A matvec's group of codes is multiplied by x as codes (scale * sum(code * x) + bias * sum(x)),
    # as MLX's GPU kernels compute it: a conversion and a multiply-add per weight. (Where codes are
    # looked up, the table gives each weight at the cost of one permute instead.)
    factored_ = factored(transpose, bits, lanes, mr, permute, dtypes)
    per_group = group_size // w  # vectors of x per group

    def panel_body(p):
        if factored_ and parts > 1:
            # the matrix panel p falls in (the panels of the matrices before it come first)
            chosen, first, offset = list(matrices[0]), "0", "0"
            for j in range(1, parts):
                panels_before = ir(f"udiv i64 {ir(f'add i64 {matrices[j - 1][4]}, {PANEL_ROWS - 1}')}, {PANEL_ROWS}")
                first = ir(f"add i64 {first}, {panels_before}")
                past = ir(f"icmp sge i64 {p}, {first}")
                chosen = [ir(f"select i1 {past}, {ty} {new}, {ty} {old}")
                          for ty, new, old in zip(("ptr",) * 4 + ("i64",), matrices[j], chosen)]
                offset = ir(f"select i1 {past}, i64 {first}, i64 {offset}")
            _dot_rows(ir(f"sub i64 {p}, {offset}"), *chosen)
        elif factored_:
            _dot_rows(p, *matrices[0])
        elif transpose:
            _dequant_rows(p)
        else:
            _dequant_columns(p)
        if not fused:
            _loop(ir, "m", m_rows, mr, lambda m0: _tile(p, m0))

    def _row_of(first, r, last, wp, sp, bp) -> tuple:
        """(codes, scales, biases) of weight row ``first + r`` (row ``last`` past it)."""
        row = ir(f"call i64 @llvm.smin.i64(i64 {ir(f'add i64 {first}, {r}')}, i64 {last})")
        goff = ir(f"mul i64 {row}, {row_groups}")
        return (ir(f"getelementptr i32, ptr {wp}, i64 {ir(f'mul i64 {row}, {row_words}')}"),
                ir(f"getelementptr {sv.element}, ptr {sp}, i64 {goff}"),
                ir(f"getelementptr {sv.element}, ptr {bp}, i64 {goff}"))

    def _store_row(value, first, r, out, n) -> None:
        """Store row ``first + r``'s result (into the sink past N)."""
        col = ir(f"add i64 {first}, {r}")
        dst = ir(f"getelementptr {ov.element}, ptr {out}, i64 {col}")
        ov.store(ir, value, ir(f"select i1 {ir(f'icmp slt i64 {col}, {n}')}, ptr {dst}, ptr {sink}"))

    def _dequant_rows(p):
        """Rows p*PANEL_ROWS.. of w (the last one repeated past N) -> scratch[r][K], or (fused) their
        dot products with x's row -> out."""
        first = ir(f"mul i64 {p}, {PANEL_ROWS}")
        last = ir(f"sub i64 {n}, 1")
        chunk = max(group_size, s.block)  # codes of whole groups and whole blocks
        for r in range(PANEL_ROWS):
            wrow, srow, brow = _row_of(first, r, last, ptrs["w"], ptrs["scales"], ptrs["biases"])
            drow = ir(f"getelementptr float, ptr {scratch}, i64 {ir(f'mul i64 {k}, {r}')}")
            if fused:
                for a in dots[r]:
                    ir.raw(f"store {vt} zeroinitializer, ptr {a}, align 64")

            def chunk_body(c0, r=r, wrow=wrow, srow=srow, brow=brow, drow=drow):
                g0 = ir(f"udiv i64 {c0}, {group_size}")
                groups = []
                for g in range(chunk // group_size):
                    gi = ir(f"add i64 {g0}, {g}")
                    sc = sv.load(ir, ir(f"getelementptr {sv.element}, ptr {srow}, i64 {gi}"))
                    bi = sv.load(ir, ir(f"getelementptr {sv.element}, ptr {brow}, i64 {gi}"))
                    groups.append(s.group(ir, sc, bi))
                for b in range(chunk // s.block):
                    at = ir(f"add i64 {c0}, {b * s.block}")
                    word = ir(f"udiv i64 {ir(f'mul i64 {at}, {bits}')}, 32")
                    src = ir(f"getelementptr i32, ptr {wrow}, i64 {word}")
                    for v, code in enumerate(s.unpack(ir, src)):
                        val = s.weights(ir, code, groups[(b * s.block + v * w) // group_size])
                        col = ir(f"add i64 {at}, {v * w}")
                        if fused:
                            a = dots[r][(b * s.block // w + v) % 2]
                            xp = ir(f"getelementptr {xv.element}, ptr {ptrs['x']}, i64 {col}")
                            accumulate(a, val, xv.load(ir, xp, w))
                        else:
                            dst = ir(f"getelementptr float, ptr {drow}, i64 {col}")
                            ir.raw(f"store {vt} {val}, ptr {dst}, align 4")

            _loop(ir, f"r{r}", k, chunk, chunk_body)
            if fused:
                pair = [ir(f"load {vt}, ptr {a}, align 64") for a in dots[r]]
                acc = ir(f"fadd {vt} {pair[0]}, {pair[1]}")
                _store_row(ir(f"call reassoc float @llvm.vector.reduce.fadd.v{w}f32(float -0.0, {vt} {acc})"),
                           first, r, ptrs["out"], n)

    def _dot_rows(p, out, wp, sp, bp, n):
        """Rows p*PANEL_ROWS.. of w (the last one repeated past N) times x -> out, each group's codes
        multiplied by x (``xf``: widened, and prescaled where ``unpack(scaled=True)`` leaves codes in
        place) and summed, then scaled, plus the group's bias times its sum of x (``xsum``).

        ``lanes`` groups at a time, their scales and biases read as vectors: lane g of the biases
        times lane g of the sums of x accumulates in a vector, and group g's sum of products is scaled by
        lane g of the scales (a broadcast of a register lane, NEON's multiply-add by element); the
        groups past the last whole ``lanes`` read a scale and a bias each. Row by row: streams of
        several rows at once read memory measurably slower (a vocabulary-sized 8-bit projection: 8
        against 14 GB/s on one x86 core)."""
        first = ir(f"mul i64 {p}, {PANEL_ROWS}")
        last = ir(f"sub i64 {n}, 1")
        chunk = max(group_size, s.block)  # codes of whole groups and whole blocks
        span = w * group_size  # codes of ``lanes`` groups: whole chunks
        full = ir(f"mul i64 {ir(f'udiv i64 {row_groups}, {w}')}, {span}")  # codes read ``lanes`` groups at a time
        total_slot, offset_slot = dots[0]
        sums_slot = dots[1][0]  # the vector of bias * sum of x

        def codes_at(wrow, c0, at):
            """The codes of the chunk ``at`` codes past ``c0`` (blocks start on words)."""
            codes = []
            first_bit = ir(f"mul nuw i64 {c0}, {bits}")
            base = ir(f"getelementptr i32, ptr {wrow}, i64 {ir(f'lshr exact i64 {first_bit}, 5')}")
            for b in range(chunk // s.block):
                word = (at + b * s.block) * bits // 32
                codes += s.unpack(ir, ir(f"getelementptr i32, ptr {base}, i64 {word}") if word else base, scaled=True)
            return codes

        def group_dot(codes, c0, at, vs):
            """sum(code * x) of the vectors ``vs`` of the chunk ``at`` codes past ``c0``, as a vector
            (in two sums where there are many: a chain of dependent multiply-adds is slower)."""
            accs = [None, None] if len(vs) >= 8 else [None]
            for i, v in enumerate(vs):
                xp = ir(f"getelementptr float, ptr {xf}, i64 {ir(f'add i64 {c0}, {at + v * w}')}")
                x = ir(f"load {vt}, ptr {xp}, align 4")
                acc = accs[i % len(accs)]
                accs[i % len(accs)] = ir(f"fmul {vt} {codes[v]}, {x}") if acc is None else \
                    ir(f"call {vt} @llvm.fma.v{w}f32({vt} {codes[v]}, {vt} {x}, {vt} {acc})")
            return accs[0] if len(accs) == 1 else ir(f"fadd {vt} {accs[0]}, {accs[1]}")

        def units(at):
            """(vectors, group of each lane, counted from the chunk's first) of the chunk ``at`` codes
            past the span's first: one group each, or (words wider than a group) the whole chunk."""
            if s.words and s.block > group_size:
                return [(range(chunk // w), [(at + i * s.per) // group_size for i in range(w)])]
            return [(range(g * per_group, (g + 1) * per_group), [(at + g * group_size) // group_size] * w)
                    for g in range(chunk // group_size)]

        for r in range(PANEL_ROWS):
            wrow, srow, brow = _row_of(first, r, last, wp, sp, bp)
            for slot in (total_slot, sums_slot):
                ir.raw(f"store {vt} zeroinitializer, ptr {slot}, align 64")
            ir.raw(f"store float 0.0, ptr {offset_slot}, align 4")

            def span_body(c0, wrow=wrow, srow=srow, brow=brow):
                g0 = ir(f"udiv i64 {c0}, {group_size}")
                scales = sv.load(ir, ir(f"getelementptr {sv.element}, ptr {srow}, i64 {g0}"), w)
                biases = sv.load(ir, ir(f"getelementptr {sv.element}, ptr {brow}, i64 {g0}"), w)
                xs = ir(f"load {vt}, ptr {ir(f'getelementptr float, ptr {xsum}, i64 {g0}')}, align 4")
                sums = ir(f"load {vt}, ptr {sums_slot}, align 64")
                ir.raw(f"store {vt} {ir(f'call {vt} @llvm.fma.v{w}f32({vt} {biases}, {vt} {xs}, {vt} {sums})')}, "
                       f"ptr {sums_slot}, align 64")
                total = ir(f"load {vt}, ptr {total_slot}, align 64")
                for at in range(0, span, chunk):
                    codes = codes_at(wrow, c0, at)
                    for vs, lanes_ in units(at):
                        scale = ir(f"shufflevector {vt} {scales}, {vt} poison, <{w} x i32> {_consts('i32', lanes_)}")
                        total = ir(f"call {vt} @llvm.fma.v{w}f32({vt} {group_dot(codes, c0, at, vs)}, {vt} {scale}, "
                                   f"{vt} {total})")
                ir.raw(f"store {vt} {total}, ptr {total_slot}, align 64")

            def chunk_body(c0, wrow=wrow, srow=srow, brow=brow):
                g0 = ir(f"udiv i64 {c0}, {group_size}")
                codes = codes_at(wrow, c0, 0)
                total = ir(f"load {vt}, ptr {total_slot}, align 64")
                offset = ir(f"load float, ptr {offset_slot}, align 4")
                splats = []
                for g in range(chunk // group_size):
                    gi = ir(f"add i64 {g0}, {g}")
                    splats.append(s.splat(ir, sv.load(ir, ir(f"getelementptr {sv.element}, ptr {srow}, i64 {gi}"))))
                    bi = sv.load(ir, ir(f"getelementptr {sv.element}, ptr {brow}, i64 {gi}"))
                    xs = ir(f"load float, ptr {ir(f'getelementptr float, ptr {xsum}, i64 {gi}')}, align 4")
                    offset = ir(f"call float @llvm.fma.f32(float {bi}, float {xs}, float {offset})")
                for vs, lanes_ in units(0):
                    scale = splats[lanes_[0]]
                    for g in sorted(set(lanes_))[1:]:  # lanes of the later groups of a chunk of words
                        scale = ir(f"shufflevector {vt} {scale}, {vt} {splats[g]}, <{w} x i32> "
                                   f"{_consts('i32', [w + i if lanes_[i] == g else i for i in range(w)])}")
                    total = ir(f"call {vt} @llvm.fma.v{w}f32({vt} {group_dot(codes, c0, 0, vs)}, {vt} {scale}, "
                               f"{vt} {total})")
                ir.raw(f"store {vt} {total}, ptr {total_slot}, align 64")
                ir.raw(f"store float {offset}, ptr {offset_slot}, align 4")

            _loop(ir, f"rs{r}", full, span, span_body)
            _loop(ir, f"rc{r}", k, chunk, chunk_body, start=full)
            acc = ir(f"fadd {vt} {ir(f'load {vt}, ptr {total_slot}, align 64')}, "
                     f"{ir(f'load {vt}, ptr {sums_slot}, align 64')}")
            part = ir(f"call reassoc float @llvm.vector.reduce.fadd.v{w}f32(float -0.0, {vt} {acc})")
            _store_row(ir(f"fadd float {part}, {ir(f'load float, ptr {offset_slot}, align 4')}"), first, r, out, n)

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
                    sc = sv.load(ir, ir(f"getelementptr {sv.element}, ptr {sbase}, i64 {gi}"))
                    bi = sv.load(ir, ir(f"getelementptr {sv.element}, ptr {bbase}, i64 {gi}"))
                    groups[g] = s.group(ir, sc, bi)
                dst = ir(f"getelementptr float, ptr {dst_row}, i64 {v * w}")
                ir.raw(f"store {vt} {s.weights(ir, code, groups[g])}, ptr {dst}, align 4")

        _loop(ir, "kd", k, 1, row_body)

    def _tile(p, m0):
        """mr rows of x (the last one repeated past M) times the panel in scratch."""
        last = ir(f"sub i64 {m_rows}, 1")
        xrows = []
        for i in range(mr):
            row = ir(f"call i64 @llvm.smin.i64(i64 {ir(f'add i64 {m0}, {i}')}, i64 {last})")
            xrows.append(ir(f"getelementptr {xv.element}, ptr {ptrs['x']}, i64 {ir(f'mul i64 {row}, {k}')}"))
        for row in accs:
            for a in row:
                ir.raw(f"store {vt} zeroinitializer, ptr {a}, align 64")
        if transpose:
            def k_body(kk):
                xs = [xv.load(ir, ir(f"getelementptr {xv.element}, ptr {xr}, i64 {kk}"), w) for xr in xrows]
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
                    dst = ir(f"getelementptr {ov.element}, ptr {ptrs['out']}, i64 {ir(f'add i64 {orow}, {col}')}")
                    ov.store(ir, total, ir(f"select i1 {ok}, ptr {dst}, ptr {sink}"))
        else:
            nv = s.block // w

            def k_body(kk):
                ws = []
                base = ir(f"mul i64 {kk}, {s.block}")
                for v in range(nv):
                    off = ir(f"add i64 {base}, {v * w}")
                    ws.append(ir(f"load {vt}, ptr {ir(f'getelementptr float, ptr {scratch}, i64 {off}')}, align 4"))
                for i in range(mr):
                    xs = s.splat(ir, xv.load(ir, ir(f"getelementptr {xv.element}, ptr {xrows[i]}, i64 {kk}")))
                    for v in range(nv):
                        accumulate(accs[i][v], xs, ws[v])

            _loop(ir, "kn", k, 1, k_body)
            col = ir(f"mul i64 {p}, {s.block}")
            for i in range(mr):
                ok = ir(f"icmp slt i64 {ir(f'add i64 {m0}, {i}')}, {m_rows}")
                row = ir(f"add i64 {m0}, {i}")
                orow = ir(f"add i64 {ir(f'mul i64 {row}, {n}')}, {col}")
                for v in range(nv):
                    dst = ir(f"getelementptr {ov.element}, ptr {ptrs['out']}, i64 {ir(f'add i64 {orow}, {v * w}')}")
                    acc = ir(f"load {vt}, ptr {accs[i][v]}, align 64")
                    ov.store(ir, acc, ir(f"select i1 {ok}, ptr {dst}, ptr {sink}"), w)

    xf = xsum = None
    if factored_:
        # x widened (and prescaled) once into the panel buffer, its group sums after it.
        xf = scratch
        xsum = ir(f"getelementptr float, ptr {scratch}, i64 {k}")

        unit = max(group_size, s.block)  # codes of whole groups and whole blocks

        def prepare(u):
            base = ir(f"mul i64 {u}, {unit}")
            xs = []  # the unit's vectors of x, in x's order
            for v in range(unit // w):
                col = ir(f"add i64 {base}, {v * w}")
                xs.append(xv.load(ir, ir(f"getelementptr {xv.element}, ptr {ptrs['x']}, i64 {col}"), w))
            for g in range(unit // group_size):
                total = xs[g * per_group]
                for x in xs[g * per_group + 1:(g + 1) * per_group]:
                    total = ir(f"fadd {vt} {total}, {x}")
                part = ir(f"call reassoc float @llvm.vector.reduce.fadd.v{w}f32(float -0.0, {vt} {total})")
                gi = ir(f"add i64 {ir(f'mul i64 {u}, {unit // group_size}')}, {g}")
                ir.raw(f"store float {part}, ptr {ir(f'getelementptr float, ptr {xsum}, i64 {gi}')}, align 4")
            per = s.block // w  # vectors of a block
            for b0 in range(0, unit // w, per):
                block = xs[b0:b0 + per]
                if s.words:  # vector j of the block: lane i holds its column i * per + j
                    block = [_gather(ir, block, w, [i * per + j for i in range(w)]) for j in range(per)]
                elif s.interleave:  # vector t of the block: its columns t, t + per, t + 2 * per...
                    block = [_gather(ir, block, w, [t + j * per for j in range(w)]) for t in range(per)]
                for v, x in enumerate(block, b0):
                    factor = s.prescale(v)
                    if factor != 1.0:
                        x = ir(f"fmul {vt} {x}, {_consts('float', [repr(factor)] * w)}")
                    dst = ir(f"getelementptr float, ptr {xf}, i64 {ir(f'add i64 {base}, {v * w}')}")
                    ir.raw(f"store {vt} {x}, ptr {dst}, align 4")

        _loop(ir, "xg", ir(f"udiv i64 {k}, {unit}"), 1, prepare)
    elif fused and xv.dtype != "float32":
        # x widened once into the (otherwise unused) panel buffer: each of its vectors is read once
        # per weight row.
        def widen(i):
            src = ir(f"getelementptr {xv.element}, ptr {ptrs['x']}, i64 {i}")
            dst = ir(f"getelementptr float, ptr {scratch}, i64 {i}")
            ir.raw(f"store {vt} {xv.load(ir, src, w)}, ptr {dst}, align 4")

        _loop(ir, "xw", k, w, widen)
        ptrs["x"], xv = scratch, _Values("float32")  # what _dequant_rows reads from here on

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
        "declare float @llvm.fma.f32(float, float, float)",
    ] + ([f"declare {vt} @llvm.x86.avx512.permvar.sf.512({vt}, {s.it})"] if s.lookup else []) + [
        "",
    ]
    entry = ir.lines.index("entry:") + 1
    return "\n".join(head + ir.lines[:entry] + ir.allocas + ir.lines[entry:]) + "\n"
