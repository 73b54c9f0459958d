"""Rotary embedding and attention as LLVM IR: ``fast.rope`` and ``fast.scaled_dot_product_attention``
for float32, float16 or bfloat16 data (``DTYPES``: loaded and widened to float32, the result rounded
once as it is stored, which is what the references compute: float32 arithmetic, one cast at the end), a
query row per unit of work, as the LLVM executor runs them in a decode step.

Both follow the numpy references in ``mlxarm.core.fast`` operation for operation in float32: rope's
angle is ``(position + offset) * scale * inv_freq`` and its rotation ``a cos - b sin``, ``a sin + b cos``
(no fused multiply-adds); attention scales q first, masks with the lowest finite float (a boolean or
causal mask) or adds a float mask, subtracts the row's maximum before ``exp`` and divides each weight by
the row's sum before weighting v. Only the order of the float32 sums (the dot products, the softmax
total) differs from the references'.

The head dimensions are constants of a kernel (its loops over them are unrolled into ``width``-lane
vectors and a scalar tail); batch, heads, sequence lengths and strides are read at run time from an
int64 array, so one kernel serves every position of a growing cache.

``rope`` arguments (pointers): out, x (contiguous, rows of ``d`` floats), offset (int32 or int64, one
per batch element or one for all), inv_freq (``dims / 2`` floats), int64 ``[L, rows per batch element,
offset per batch element (0 or 1)]``, float32 ``[scale]``; units are rows of x.

``sdpa`` arguments (pointers): out (B, Hq, L, Dv), q (B, Hq, L, D) contiguous, k (B, Hk, S, D) and v
(B, Hk, S, Dv) with any strides but their last, the mask (bool as bytes, or float32; any strides),
int64 ``[B, Hq, Hk, L, S, k strides (3), v strides (3), mask strides (4)]`` in elements, float32
``[scale]``; units are query rows (b, h, l). Scores are kept in a stack buffer of S floats.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..codegen.render_llvm import _Lanes
from .ir_text import IrText, Values

MASKS = ("none", "causal", "bool", "float")  # a float mask is float32
DTYPES = ("float32", "float16", "bfloat16")
LOWEST = "0xC7EFFFFFE0000000"  # the lowest finite float32, as LLVM writes a float constant


@dataclass(frozen=True)
class Rope:
    d: int  # row length (the input's last dimension)
    dims: int  # features rotated (even, <= d)
    traditional: bool
    offset_bits: int  # 32 or 64
    dtype: str = "float32"  # of x and the output (DTYPES)

    @property
    def name(self) -> str:
        kind = "" if self.dtype == "float32" else f"_{self.dtype}"
        return f"rope_{self.d}_{self.dims}_{int(self.traditional)}_i{self.offset_bits}{kind}"


@dataclass(frozen=True)
class Attention:
    d: int  # q/k head dimension
    dv: int  # v head dimension
    mask: str  # one of MASKS
    width: int  # float32 vector lanes
    dtype: str = "float32"  # of q, k, v and the output (DTYPES)

    @property
    def name(self) -> str:
        kind = "" if self.dtype == "float32" else f"_{self.dtype}"
        return f"sdpa_{self.d}_{self.dv}_{self.mask}_{self.width}{kind}"


class _Ir(IrText):
    """``IrText`` with the float load the rope and attention templates use."""

    def load(self, base: str, index) -> str:
        """The float at ``base[index]``."""
        return self(f"load float, ptr {self.at('float', base, index)}, align 4")


class _Emitter:
    """What ``render_llvm``'s lane emitters write through (``emit``, ``declare``), on an ``IrText``: the
    templates compute exp as the elementwise kernels do."""

    def __init__(self, ir: IrText):
        self.emit, self.raw = ir, ir.raw
        self.declares: set = set()

    def declare(self, text: str) -> None:
        self.declares.add(f"declare {text}")


def _chunks(n: int, width: int):
    """(first element, lanes) pieces covering [0, n): whole vectors, then single floats."""
    full = n // width * width
    return [(j, width) for j in range(0, full, width)] + [(j, 1) for j in range(full, n)]


def _vty(lanes: int) -> str:
    return "float" if lanes == 1 else f"<{lanes} x float>"


def _splat(ir: _Ir, value: str, lanes: int) -> str:
    if lanes == 1:
        return value
    one = ir(f"insertelement <{lanes} x float> poison, float {value}, i64 0")
    return ir(f"shufflevector <{lanes} x float> {one}, <{lanes} x float> poison, <{lanes} x i32> zeroinitializer")


def _hsum(ir: _Ir, v: str, lanes: int) -> str:
    """The lanes of ``v`` added pairwise."""
    while lanes > 2:
        half = lanes // 2
        lo = ir(f"shufflevector <{lanes} x float> {v}, <{lanes} x float> poison, <{half} x i32> "
                "<" + ", ".join(f"i32 {i}" for i in range(half)) + ">")
        hi = ir(f"shufflevector <{lanes} x float> {v}, <{lanes} x float> poison, <{half} x i32> "
                "<" + ", ".join(f"i32 {i}" for i in range(half, lanes)) + ">")
        v = ir(f"fadd {_vty(half)} {lo}, {hi}")
        lanes = half
    if lanes == 1:
        return v
    return ir(f"fadd float {ir(f'extractelement <2 x float> {v}, i64 0')}, "
              f"{ir(f'extractelement <2 x float> {v}, i64 1')}")


def render_rope(k: Rope, triple: str) -> str:
    ir = _Ir()
    data = Values(k.dtype)
    half = k.dims // 2
    out, x, offsets, inv_freq, meta = (ir.arg(i) for i in range(5))
    scale = ir("load float, ptr " + ir.arg(5) + ", align 4")
    length, per_batch, by_batch = (ir(f"load i64, ptr {ir.at('i64', meta, i)}, align 8") for i in range(3))
    cos = ir.slot(f"[{half} x float]")
    sin = ir.slot(f"[{half} x float]")
    last = ir.slot("float")
    ir.raw(f"store float 0x7FF8000000000000, ptr {last}")  # NaN: the first row computes its angles
    ity = f"i{k.offset_bits}"

    def row(r):
        l_ = ir(f"srem i64 {r}, {length}")
        b = ir(f"sdiv i64 {r}, {per_batch}")
        which = ir(f"mul i64 {b}, {by_batch}")
        off = ir(f"sitofp {ity} {ir(f'load {ity}, ptr {ir.at(ity, offsets, which)}, align 4')} to float")
        lf = ir(f"uitofp i64 {l_} to float")
        pos = ir(f"fmul float {ir(f'fadd float {lf}, {off}')}, {scale}")
        same = ir(f"fcmp oeq float {pos}, {ir(f'load float, ptr {last}')}")
        ir.raw(f"br i1 {same}, label %rotate, label %angles")
        ir.raw("angles:")
        ir.raw(f"store float {pos}, ptr {last}")
        for i in range(half):  # rows of one position (heads of one token) share their angles
            theta = ir(f"fmul float {pos}, {ir.load(inv_freq, i)}")
            ir.raw(f"store float {ir(f'call float @llvm.cos.f32(float {theta})')}, ptr {ir.at('float', cos, i)}")
            ir.raw(f"store float {ir(f'call float @llvm.sin.f32(float {theta})')}, ptr {ir.at('float', sin, i)}")
        ir.raw("br label %rotate")
        ir.raw("rotate:")
        base = ir(f"mul i64 {r}, {k.d}")
        src = ir.at(data.element, x, base)
        dst = ir.at(data.element, out, base)
        for i in range(half):
            ia, ib = (2 * i, 2 * i + 1) if k.traditional else (i, i + half)
            a, b_ = (data.load(ir, ir.at(data.element, src, j)) for j in (ia, ib))
            c, s = ir.load(cos, i), ir.load(sin, i)
            ra = ir(f"fsub float {ir(f'fmul float {a}, {c}')}, {ir(f'fmul float {b_}, {s}')}")
            rb = ir(f"fadd float {ir(f'fmul float {a}, {s}')}, {ir(f'fmul float {b_}, {c}')}")
            data.store(ir, ra, ir.at(data.element, dst, ia))
            data.store(ir, rb, ir.at(data.element, dst, ib))
        if k.d > k.dims:  # the features past dims pass through
            ir.raw(f"call void @llvm.memcpy.p0.p0.i64(ptr {ir.at(data.element, dst, k.dims)}, "
                   f"ptr {ir.at(data.element, src, k.dims)}, i64 {data.size * (k.d - k.dims)}, i1 false)")

    ir.loop("row", "%start", "%end", row)
    ir.raw("ret void")
    return (f'; mlxarm rope kernel\ntarget triple = "{triple}"\n\n'
            + ir.module(k.name, ["declare float @llvm.cos.f32(float)", "declare float @llvm.sin.f32(float)",
                                 "declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)"]))


def render_attention(k: Attention, triple: str) -> str:
    ir = _Ir()
    w = k.width
    data = Values(k.dtype)
    el = data.element

    def load(base, j, n):  # n elements of q, k or v from base[j], as float32
        return data.load(ir, ir.at(el, base, j), None if n == 1 else n)
    out, q, keys, values, mask, meta = (ir.arg(i) for i in range(6))
    scale = ir("load float, ptr " + ir.arg(6) + ", align 4")
    (_, hq, hk, length, s_len, kb, kh, ks, vb, vh, vs, mb, mh, ml, ms) = (
        ir(f"load i64, ptr {ir.at('i64', meta, i)}, align 8") for i in range(15))
    group = ir(f"sdiv i64 {hq}, {hk}")
    # S scores on the stack (the caller bounds S), allocated once in the entry block.
    ir.raw(f"%scores = alloca float, i64 {s_len}, align 16")
    top_slot, total_slot, totals_slot = ir.slot("float"), ir.slot("float"), ir.slot(_vty(w))
    acc_slots = [(j, n, ir.slot(_vty(n))) for j, n in _chunks(k.dv, w)]
    lowest = LOWEST
    exps = _Emitter(ir)

    def row(r):
        l_ = ir(f"srem i64 {r}, {length}")
        bh = ir(f"sdiv i64 {r}, {length}")
        h = ir(f"srem i64 {bh}, {hq}")
        b = ir(f"sdiv i64 {bh}, {hq}")
        g = ir(f"sdiv i64 {h}, {group}")
        kbase = ir.at(el, keys, ir(f"add i64 {ir(f'mul i64 {b}, {kb}')}, {ir(f'mul i64 {g}, {kh}')}"))
        vbase = ir.at(el, values, ir(f"add i64 {ir(f'mul i64 {b}, {vb}')}, {ir(f'mul i64 {g}, {vh}')}"))
        qrow = ir.at(el, q, ir(f"mul i64 {r}, {k.d}"))
        orow = ir.at(el, out, ir(f"mul i64 {r}, {k.dv}"))
        qs = []
        for j, n in _chunks(k.d, w):  # q * scale, held in registers for every key
            v = load(qrow, j, n)
            qs.append((j, n, ir(f"fmul {_vty(n)} {v}, {_splat(ir, scale, n)}")))
        if k.mask == "causal":
            last = ir(f"add i64 {l_}, {ir(f'sub i64 {s_len}, {length}')}")
        if k.mask in ("bool", "float"):
            mhl = ir(f"add i64 {ir(f'mul i64 {h}, {mh}')}, {ir(f'mul i64 {l_}, {ml}')}")
            mrow = ir(f"add i64 {ir(f'mul i64 {b}, {mb}')}, {mhl}")
        ir.raw(f"store float 0xFFF0000000000000, ptr {top_slot}")

        def score(s):
            # A key a causal or boolean mask hides scores the lowest float whatever its dot product:
            # its row of keys is not read (the tail of a cache not written yet, the future of a
            # prompt chunk).
            if k.mask == "causal":
                hidden = ir(f"icmp sgt i64 {s}, {last}")
            elif k.mask == "bool":
                ms_ = ir(f"mul i64 {s}, {ms}")
                m = ir(f"load i8, ptr {ir.at('i8', mask, ir(f'add i64 {mrow}, {ms_}'))}")
                hidden = ir(f"icmp eq i8 {m}, 0")
            if k.mask in ("causal", "bool"):
                ir.raw(f"br i1 {hidden}, label %score.hidden, label %score.dot")
                ir.raw("score.dot:")
            krow = ir.at(el, kbase, ir(f"mul i64 {s}, {ks}"))
            parts = []
            tail = []
            for j, n, qv in qs:
                kv = load(krow, j, n)
                (parts if n > 1 else tail).append(ir(f"fmul {_vty(n)} {qv}, {kv}"))
            while len(parts) > 1:  # a tree of adds: the vector products are independent
                parts = [ir(f"fadd {_vty(w)} {a}, {c}") for a, c in zip(parts[::2], parts[1::2])] + \
                        (parts[-1:] if len(parts) % 2 else [])
            dot = _hsum(ir, parts[0], w) if parts else "0.0"
            for t in tail:
                dot = ir(f"fadd float {dot}, {t}")
            if k.mask in ("causal", "bool"):
                ir.raw("br label %score.join")
                ir.raw("score.hidden:")
                ir.raw("br label %score.join")
                ir.raw("score.join:")
                dot = ir(f"phi float [{dot}, %score.dot], [{lowest}, %score.hidden]")
            elif k.mask == "float":
                m = ir.load(mask, ir(f"add i64 {mrow}, {ir(f'mul i64 {s}, {ms}')}"))
                dot = ir(f"fadd float {dot}, {m}")
            ir.raw(f"store float {dot}, ptr {ir.at('float', '%scores', s)}, align 4")
            top = ir(f"call float @llvm.maximum.f32(float {ir(f'load float, ptr {top_slot}')}, float {dot})")
            ir.raw(f"store float {top}, ptr {top_slot}")

        ir.loop("score", "0", s_len, score)
        top = ir(f"load float, ptr {top_slot}")
        ir.raw(f"store float 0.0, ptr {total_slot}")

        # exp(score - max) over ``w`` scores at a time (the elementwise kernels' exp), summed in
        # ``w`` lanes, then one at a time for the last S mod w
        lanes = _Lanes(exps, w)
        ir.raw(f"store {_vty(w)} zeroinitializer, ptr {totals_slot}")
        top_v = _splat(ir, top, w)

        def weights(c):
            p = ir.at("float", "%scores", ir(f"mul i64 {c}, {w}"))
            e = lanes.exp(ir(f"fsub {_vty(w)} {ir(f'load {_vty(w)}, ptr {p}, align 4')}, {top_v}"))
            ir.raw(f"store {_vty(w)} {e}, ptr {p}, align 4")
            sum_ = ir(f"load {_vty(w)}, ptr {totals_slot}")
            ir.raw(f"store {_vty(w)} {ir(f'fadd {_vty(w)} {sum_}, {e}')}, ptr {totals_slot}")

        whole = ir(f"sdiv i64 {s_len}, {w}")
        ir.loop("weights", "0", whole, weights)
        ir.raw(f"store float {_hsum(ir, ir(f'load {_vty(w)}, ptr {totals_slot}'), w)}, ptr {total_slot}")
        one = _Lanes(exps, None)

        def weight(s):
            p = ir.at("float", "%scores", s)
            e = one.exp(ir(f"fsub float {ir(f'load float, ptr {p}')}, {top}"))
            ir.raw(f"store float {e}, ptr {p}")
            total = ir(f"fadd float {ir(f'load float, ptr {total_slot}')}, {e}")
            ir.raw(f"store float {total}, ptr {total_slot}")

        ir.loop("weight", ir(f"mul i64 {whole}, {w}"), s_len, weight)
        total = ir(f"load float, ptr {total_slot}")
        for j, n, slot in acc_slots:
            ir.raw(f"store {_vty(n)} {'zeroinitializer' if n > 1 else '0.0'}, ptr {slot}")

        def accumulate(s):
            score = ir.at("float", "%scores", s)
            p = ir(f"fdiv float {ir(f'load float, ptr {score}')}, {total}")
            # A weight of exactly zero (a hidden key, unless every key is) adds nothing to a finite
            # value: its row of values is not read.
            ir.raw(f"br i1 {ir(f'fcmp oeq float {p}, 0.0')}, label %acc.next, label %acc.add")
            ir.raw("acc.add:")
            vrow = ir.at(el, vbase, ir(f"mul i64 {s}, {vs}"))
            for j, n, slot in acc_slots:
                vv = load(vrow, j, n)
                t = ir(f"fmul {_vty(n)} {_splat(ir, p, n)}, {vv}")
                acc = ir(f"fadd {_vty(n)} {ir(f'load {_vty(n)}, ptr {slot}')}, {t}")
                ir.raw(f"store {_vty(n)} {acc}, ptr {slot}")
            ir.raw("br label %acc.next")
            ir.raw("acc.next:")

        ir.loop("acc", "0", s_len, accumulate)
        for j, n, slot in acc_slots:
            data.store(ir, ir(f"load {_vty(n)}, ptr {slot}"), ir.at(el, orow, j), None if n == 1 else n)

    ir.loop("row", "%start", "%end", row)
    ir.raw("ret void")
    return (f'; mlxarm attention kernel\ntarget triple = "{triple}"\n\n'
            + ir.module(k.name, sorted(exps.declares | {"declare float @llvm.maximum.f32(float, float)"})))
