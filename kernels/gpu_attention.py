"""Rotary embedding and attention for the GPU backends: ``fast.rope`` (float32 and float16) and
``fast.scaled_dot_product_attention`` (float32 and float16), as OpenCL C or GLSL from one body each.
Half data is read and written as bits (``mx_f16_to_f32``, ``mx_f32_to_f16``: round to nearest even)
and computed in float32, as the references compute it.

Both follow the numpy references in ``mlxarm.core.fast`` in float32. Rope's angle is ``(position +
offset) * scale * inv_freq`` (``inv_freq`` is the host's ``base ** (-2i / dims)``, or ``1 / freqs``) and
its rotation ``a cos - b sin``, ``a sin + b cos``. GPU ``sin``/``cos`` are only accurate near zero (GLSL
leaves large arguments to the implementation), so the float32 angle is first reduced modulo 2 pi
(Cody and Waite's method: ``_REDUCE``) to within about a float32 ulp of pi. Attention scales q first,
masks with the lowest finite float (a boolean or causal mask) or adds a float mask, and takes
``exp(score - max)`` weights; keys are visited in chunks of ``CHUNK`` scores held in shared memory,
the running maximum rescaling what earlier chunks summed (one chunk covers a decode step's cache, so
there the result is the reference's up to the order of float32 sums and one division per output
instead of one per weight).

``rope``: one work item per output element (float32) or pair of elements (float16: a 32-bit word, so
a GLSL invocation never shares a word with another). Arguments: out (contiguous), x (any strides, seen
as (B, M, L, D)), the offsets (int32 words: an int64 offset is read by its low word; read from their
buffer even when one value, so that a decode step's launch is the same at every position), the
frequencies (``inv_freq``, or ``freqs`` when the kernel
divides), then ``ROPE_ARGS``.

``sdpa``: one workgroup per query row (a grid-stride loop over the rows (b, h, l)). Arguments: out
(B, Hq, L, Dv) contiguous, q, k, v (any strides), the mask when there is one (bool bytes or the data's
float type, any strides),
then ``SDPA_ARGS`` (element offsets and strides, ``scale`` as float32 bits).
"""
from __future__ import annotations

from ..codegen import render_glsl, render_opencl

DTYPES = ("float32", "float16")
_TAGS = {"float32": "f32", "float16": "f16"}
ROPE_ARGS = ("n", "D", "dims", "L", "M", "ox", "sxb", "sxm", "sxl", "sxd", "oo", "so", "of", "scale_bits")
MASKS = ("none", "causal", "bool", "float")
SDPA_ARGS = ("rep", "L", "S", "D", "Dv", "scale_bits", "oq", "sqb", "sqh", "sql", "sqd", "ok", "skb", "skh",
             "sks", "skd", "ov", "svb", "svh", "svs", "svd", "om", "smb", "smh", "sml", "sms", "Hq", "rows")
CHUNK = 1024  # scores of one chunk of keys, in shared memory (4 KiB)

# 2 pi as C1 + C2 + C3 + C4: the first three have 8 significant bits, so ``k * Ci`` is exact for every
# k below 2^16 (angles up to about 400000) on any device, fused multiply-add or not; C4 is the float32
# nearest to the rest. 1 / (2 pi) picks k.
_TWO_PI = ("0x40c90000u", "0x3afd0000u", "0x36aa0000u", "0x31885a31u")
_INV_TWO_PI = "0x3e22f983u"
_REDUCE = "\n".join(["float mx_reduce_angle(float t) {",
                      f"  float k = RINT(t * U2F({_INV_TWO_PI}));",
                      "  float r = t;",
                      *(f"  r = r - k * U2F({c});" for c in _TWO_PI),
                      "  return r;", "}"])


def head_capacity(d: int, dv: int) -> int:
    """The shared q buffer's size for head dims ``d``, ``dv``: a power of two of at least 64."""
    cap = 64
    while cap < max(d, dv):
        cap *= 2
    return cap


# --- rope --------------------------------------------------------------------------------------------

def rope_name(traditional: bool, freqs: bool, dtype: str, threads: int) -> str:
    return f"rope_{int(traditional)}{int(freqs)}_{_TAGS[dtype]}_{threads}"


def _rope_value(traditional: bool, freqs: bool, idx: str) -> list:
    """``v`` = output element ``e`` (its row from x at ``xr``, feature ``j``)."""
    if traditional:
        pair = [f"{idx} i = j >> 1;", f"{idx} ja = j & ~1;", f"bool first = (j & 1) == 0;"]
    else:
        pair = [f"{idx} hd = dims >> 1;", "bool first = j < hd;", f"{idx} i = first ? j : j - hd;",
                f"{idx} ja = i;"]
    inv = "1.0f / F(of + i)" if freqs else "F(of + i)"
    jb = "ja + 1" if traditional else "ja + hd"
    return [
        "float v = X(xr + j * sxd);",
        "if (j < dims) {",
        *("  " + ln for ln in pair),
        f"  float inv = {inv};",
        "  float theta = pos * inv;",
        "  float r = mx_reduce_angle(theta);",
        "  float c = cos(r);",
        "  float s = sin(r);",
        "  float a = X(xr + ja * sxd);",
        f"  float b = X(xr + ({jb}) * sxd);",
        "  float ac = a * c;",
        "  float bs = b * s;",
        "  float as_ = a * s;",
        "  float bc = b * c;",
        "  v = first ? ac - bs : as_ + bc;",
        "}",
    ]


def _rope_body(traditional: bool, freqs: bool, per: int, idx: str) -> list:
    lines = [f"for ({idx} w = GID; w * {per} < n; w += GSIZE) {{", f"float vals[{per}];"]
    lines += [f"for (int k = 0; k < {per}; k++) {{",
              f"  {idx} e = w * {per} + k;",
              "  vals[k] = 0.0f;",
              "  if (e < n) {",
              f"    {idx} j = e % D;",
              f"    {idx} t = e / D;",
              f"    {idx} l = t % L;",
              "    t = t / L;",
              f"    {idx} m = t % M;",
              f"    {idx} bi = t / M;",
              f"    {idx} xr = ox + bi * sxb + m * sxm + l * sxl;",
              "    float pos = (TOF(l) + TOF(OFFSET(bi))) * U2F(uint(scale_bits));",
              *("    " + ln for ln in _rope_value(traditional, freqs, idx)),
              "    vals[k] = v;",
              "  }",
              "}"]
    lines += ["STORE(w)"]
    return [lines[0]] + ["  " + ln for ln in lines[1:]] + ["}"]


def rope_source(dialect: str, traditional: bool, freqs: bool, dtype: str, threads: int) -> str:
    """The offsets are read from their buffer (``oo``, ``so``: its word offset and stride per batch
    element)."""
    fn = rope_name(traditional, freqs, dtype, threads)
    offset = "#define OFFSET(bi) off_[oo + (bi) * so]"
    per = 1 if dtype == "float32" else 2
    body = _rope_body(traditional, freqs, per, "int")
    if dialect == "opencl":
        st = "float" if dtype == "float32" else "ushort"
        params = [f"__global {st}* restrict out_", f"__global const {st}* restrict x_",
                  "__global const int* restrict off_", "__global const float* restrict f_"]
        params += [f"int {a}" for a in ROPE_ARGS]
        if dtype == "float32":
            io = ["#define X(i) x_[i]", "#define STORE(w) if ((w) < n) out_[w] = vals[0];"]
        else:
            io = ["#define X(i) mx_f16_to_f32((uint)x_[i])",
                  "#define STORE(w) { if (2 * (w) < n) out_[2 * (w)] = (ushort)mx_f32_to_f16(vals[0]); "
                  "if (2 * (w) + 1 < n) out_[2 * (w) + 1] = (ushort)mx_f32_to_f16(vals[1]); }"]
        body = [ln.replace("uint(scale_bits)", "(uint)scale_bits") for ln in body]
        return "\n".join([
            render_opencl.PRELUDE, "#pragma OPENCL FP_CONTRACT OFF", _REDUCE,
            "#define GID ((int)get_global_id(0))", "#define GSIZE ((int)get_global_size(0))",
            "#define TOF(x) ((float)(x))",
            offset, "#define F(i) f_[i]", *io,
            f"__kernel __attribute__((reqd_work_group_size({threads}, 1, 1))) void {fn}({', '.join(params)}) {{",
            *("  " + ln for ln in body), "}", ""])
    st = "float" if dtype == "float32" else "uint"
    bufs = [f"writeonly buffer B0 {{ {st} out_[]; }};", f"readonly buffer B1 {{ {st} x_[]; }};",
            "readonly buffer B2 { int off_[]; };", "readonly buffer B3 { float f_[]; };"]
    if dtype == "float32":
        io = ["#define X(i) x_[i]", "#define STORE(w) if ((w) < n) out_[w] = vals[0];"]
    else:
        io = ["#define X(i) mx_f16_to_f32((x_[(i) >> 1] >> (uint((i) & 1) * 16u)) & 0xFFFFu)",
              "#define STORE(w) if (2 * (w) < n) out_[w] = (mx_f32_to_f16(vals[0]) & 0xFFFFu) | "
              "((2 * (w) + 1 < n ? mx_f32_to_f16(vals[1]) & 0xFFFFu : 0u) << 16);"]
    return "\n".join([
        render_glsl.PRELUDE, _REDUCE, f"layout(local_size_x = {threads}) in;",
        *(f"layout(std430, set = 0, binding = {i}) {b}" for i, b in enumerate(bufs)),
        f"layout(push_constant) uniform Push {{ {' '.join(f'int p_{a};' for a in ROPE_ARGS)} }} pc;",
        *(f"#define {a} pc.p_{a}" for a in ROPE_ARGS),
        "#define GID int(gl_GlobalInvocationID.x)",
        f"#define GSIZE (int(gl_NumWorkGroups.x) * {threads})", "#define TOF(x) float(x)",
        offset, "#define F(i) f_[i]", *io,
        "void main() {", *("  " + ln for ln in body), "}", ""])


# --- attention -----------------------------------------------------------------------------------------

def sdpa_name(mask: str, cap: int, dtype: str, threads: int) -> str:
    return f"sdpa_{mask}_{cap}_{_TAGS[dtype]}_{threads}"


def _tree(op: str, threads: int) -> list:
    merged = "mx_max(red[lid], red[lid + h])" if op == "max" else "red[lid] + red[lid + h]"
    return ["red[lid] = part;", "BARRIER",
            f"for (int h = {threads // 2}; h > 0; h >>= 1) {{",
            f"  if (lid < h) red[lid] = {merged};", "  BARRIER", "}"]


def _sdpa_body(mask: str, cap: int, threads: int) -> list:
    acc = -(-cap // threads)
    masked = {"none": [],
              "causal": ["if (j > l + S - L) s = LOWEST;"],
              "bool": ["if (MASK(mrow + j * sms) == 0u) s = LOWEST;"],
              "float": ["s = s + MASK(mrow + j * sms);"]}[mask]
    lines = [
        "int l = row % L;",
        "int hq = (row / L) % Hq;",
        "int bi = row / (L * Hq);",
        "int hk = hq / rep;",
        "float scale = U2F(uint(scale_bits));",
        "int qrow = oq + bi * sqb + hq * sqh + l * sql;",
        "for (int d = lid; d < D; d += %d) qs[d] = Q(qrow + d * sqd) * scale;" % threads,
        "int kb = ok + bi * skb + hk * skh;",
        "int vb = ov + bi * svb + hk * svh;",
        "int mrow = om + bi * smb + hq * smh + l * sml;",
        f"float acc[{acc}];",
        f"for (int i = 0; i < {acc}; i++) acc[i] = 0.0f;",
        "float top = NEG_INF;",
        "float total = 0.0f;",
        "BARRIER",
        f"for (int c0 = 0; c0 < S; c0 += {CHUNK}) {{",
        f"  int cn = min({CHUNK}, S - c0);",
        "  float part = NEG_INF;",
        f"  for (int jj = lid; jj < cn; jj += {threads}) {{",
        "    int j = c0 + jj;",
        "    int kr = kb + j * sks;",
        "    float s = 0.0f;",
        "    for (int d = 0; d < D; d++) s = s + qs[d] * K(kr + d * skd);",
        *("    " + ln for ln in masked),
        "    sc[jj] = s;",
        "    part = mx_max(part, s);",
        "  }",
        *("  " + ln for ln in _tree("max", threads)),
        "  float peak = mx_max(top, red[0]);",
        "  BARRIER",
        # exp(-inf - -inf) would be NaN: while every score so far is -inf, nothing is weighted.
        "  bool none_yet = peak == NEG_INF;",
        "  float corr = (top == peak || none_yet) ? 1.0f : exp(top - peak);",
        "  part = 0.0f;",
        f"  for (int jj = lid; jj < cn; jj += {threads}) {{",
        "    float wgt = none_yet ? 0.0f : exp(sc[jj] - peak);",
        "    sc[jj] = wgt;",
        "    part = part + wgt;",
        "  }",
        *("  " + ln for ln in _tree("sum", threads)),
        "  total = total * corr + red[0];",
        "  top = peak;",
        f"  for (int i = 0; i < {acc}; i++) {{",
        f"    int d = lid + i * {threads};",
        "    if (d < Dv) {",
        "      float a = acc[i] * corr;",
        "      int vr = vb + c0 * svs + d * svd;",
        "      for (int jj = 0; jj < cn; jj++) a = a + sc[jj] * V(vr + jj * svs);",
        "      acc[i] = a;",
        "    }",
        "  }",
        "  BARRIER",
        "}",
        "int orow = row * Dv;",
        f"for (int i = 0; i < {acc}; i++) {{",
        f"  int d = lid + i * {threads};",
        # A row whose every score is -inf is NaN, as exp(-inf - -inf) makes it in the reference.
        "  if (d < Dv) STORE_OUT(orow + d, top == NEG_INF ? U2F(0x7FC00000u) : acc[i] / total);",
        "}",
    ]
    loop = ["int lid = LID;", "for (int row = GROUP; row < rows; row += NGROUPS) {"]
    return loop + ["  " + ln for ln in lines] + ["}"]


def sdpa_source(dialect: str, mask: str, cap: int, dtype: str, threads: int) -> str:
    fn = sdpa_name(mask, cap, dtype, threads)
    body = _sdpa_body(mask, cap, threads)
    shared = [f"{{sh}} float qs[{cap}];", f"{{sh}} float sc[{CHUNK}];", f"{{sh}} float red[{threads}];"]
    f16 = dtype == "float16"
    if dialect == "opencl":
        st = "ushort" if f16 else "float"
        params = [f"__global {st}* restrict out_"] + [f"__global const {st}* restrict {p}_" for p in "qkv"]
        if mask == "bool":
            params.append("__global const uchar* restrict m_")
        elif mask == "float":
            params.append(f"__global const {st}* restrict m_")
        params += [f"int {a}" for a in SDPA_ARGS]
        body = [ln.replace("uint(scale_bits)", "(uint)scale_bits") for ln in body]
        load = "mx_f16_to_f32((uint){p}_[i])" if f16 else "{p}_[i]"
        loads = [f"#define {p.upper()}(i) {load.format(p=p)}" for p in "qkv"]
        loads += {"bool": ["#define MASK(i) ((uint)m_[i])"], "float": [f"#define MASK(i) {load.format(p='m')}"]}.get(
            mask, [])
        store = "#define STORE_OUT(i, v) out_[i] = " + ("(ushort)mx_f32_to_f16(v)" if f16 else "(v)")
        return "\n".join([
            render_opencl.PRELUDE, "#pragma OPENCL FP_CONTRACT OFF",
            "#define LID ((int)get_local_id(0))", "#define GROUP ((int)get_group_id(0))",
            "#define NGROUPS ((int)get_num_groups(0))", "#define BARRIER barrier(CLK_LOCAL_MEM_FENCE);",
            "#define NEG_INF (-INFINITY)", "#define LOWEST (-FLT_MAX)", *loads, store,
            f"__kernel __attribute__((reqd_work_group_size({threads}, 1, 1))) void {fn}({', '.join(params)}) {{",
            *("  " + ln.format(sh="__local") for ln in shared),
            *("  " + ln for ln in body), "}", ""])
    # GLSL binds 32-bit words: a half is one of a word's two bit fields, and as the neighbouring output
    # may belong to another workgroup (odd Dv), a half is stored with atomics on its bits.
    st = "uint" if f16 else "float"
    bufs = [f"{'' if f16 else 'writeonly '}buffer B0 {{ {st} out_[]; }};"]
    bufs += [f"readonly buffer B{i + 1} {{ {st} {p}_[]; }};" for i, p in enumerate("qkv")]
    if mask == "bool":
        bufs.append("readonly buffer B4 { uint m_[]; };")
    elif mask == "float":
        bufs.append(f"readonly buffer B4 {{ {st} m_[]; }};")
    load = "mx_f16_to_f32(({p}_[(i) >> 1] >> (uint((i) & 1) * 16u)) & 0xFFFFu)" if f16 else "{p}_[i]"
    loads = [f"#define {p.upper()}(i) {load.format(p=p)}" for p in "qkv"]
    loads += {"bool": ["#define MASK(i) ((m_[(i) >> 2] >> (uint((i) & 3) * 8u)) & 0xFFu)"],
              "float": [f"#define MASK(i) {load.format(p='m')}"]}.get(mask, [])
    if f16:
        store = ("#define STORE_OUT(i, v) { int w_ = (i) >> 1; uint s_ = uint((i) & 1) * 16u; "
                 "atomicAnd(out_[w_], ~(0xFFFFu << s_)); atomicOr(out_[w_], (mx_f32_to_f16(v) & 0xFFFFu) << s_); }")
    else:
        store = "#define STORE_OUT(i, v) out_[i] = (v)"
    return "\n".join([
        render_glsl.PRELUDE, f"layout(local_size_x = {threads}) in;",
        *(f"layout(std430, set = 0, binding = {i}) {b}" for i, b in enumerate(bufs)),
        f"layout(push_constant) uniform Push {{ {' '.join(f'int p_{a};' for a in SDPA_ARGS)} }} pc;",
        *(f"#define {a} pc.p_{a}" for a in SDPA_ARGS),
        "#define LID int(gl_LocalInvocationID.x)", "#define GROUP int(gl_WorkGroupID.x)",
        "#define NGROUPS int(gl_NumWorkGroups.x)", "#define BARRIER barrier();",
        "#define NEG_INF uintBitsToFloat(0xFF800000u)", "#define LOWEST uintBitsToFloat(0xFF7FFFFFu)",
        *loads, store, *(ln.format(sh="shared") for ln in shared),
        "void main() {", *("  " + ln for ln in body), "}", ""])
