"""``slice_update`` at array positions (the ``dynamic_slice_update`` primitive a KV cache writes with) for
the GPU backends, as OpenCL C or GLSL from one body. Elements are moved as 8-, 16- or 32-bit integers,
so every dtype of those sizes is copied bit for bit; arrays have at most 4 dimensions (fewer are padded
with leading ones). GLSL binds 32-bit words: a narrower element is a bit field of one, read by shifting
and written with atomics on its bits, as neighbouring elements of a word may belong to other work items.

Two modes. ``into``: one work item per update element writes it into the destination's own buffer
(the executor donates the input's buffer, as MLX does, when nothing else can see it), so a decode step
writes one cache position. ``copy``: one work item per output element writes a fresh contiguous output,
taking the update inside the window and the input elsewhere.

Arguments: out, x (``copy`` only), update, then ``ARGS``: the iteration space ``n0..n3`` (the update's
shape for ``into``, the output's for ``copy``), the window's clamped start ``b0..b3`` and shape
``u0..u3``, the update's element offset and strides, the input's (``copy``), the output's strides and
the number of work items.

A *positioned* variant reads the window's start along one axis from a buffer holding it (an int32, or
an int64 by its low word) bound after the update, as ``window_start`` does: along axis ``pa`` (of the
padded four) the start is the value at element ``os`` (``sw`` words an element), from the end when
negative, moved so that the window lies inside the input's extent ``px``; ``b{d}`` on the other axes.
A decode step's cache write then launches with the same arguments at every position (Vulkan makes an
operation per set of push constants), and a start still on the device is read there. Its arguments
stay within the 128 bytes of push constants every Vulkan device offers.
"""
from __future__ import annotations

MODES = ("into", "copy")
BITS = (8, 16, 32)
RANK = 4
ARGS = ("n0", "n1", "n2", "n3", "b0", "b1", "b2", "b3", "u0", "u1", "u2", "u3", "ou", "su0", "su1", "su2", "su3",
        "ox", "sx0", "sx1", "sx2", "sx3", "so0", "so1", "so2", "so3", "total")


POSITION_ARGS = ("pa", "px", "sw", "os")


def name(mode: str, bits: int, threads: int, positioned: bool = False) -> str:
    return f"slice_update_{mode}_b{bits}_{threads}{'_p' if positioned else ''}"


def _body(mode: str, positioned: bool = False) -> list:
    lines = []
    if positioned:  # the window's start along axis pa, from the start buffer
        lines += ["int v_ = START(os * sw);", "if (v_ < 0) v_ += px;",
                  "v_ = min(max(v_, 0), px - (pa == 0 ? u0 : pa == 1 ? u1 : pa == 2 ? u2 : u3));",
                  *(f"int b{d} = pa == {d} ? v_ : pb{d};" for d in range(RANK))]
    lines += ["for (int e = GID; e < total; e += GSIZE) {",
             "  int t = e;",
             "  int i3 = t % n3; t = t / n3;",
             "  int i2 = t % n2; t = t / n2;",
             "  int i1 = t % n1;",
             "  int i0 = t / n1;"]
    if mode == "into":
        lines += ["  STORE((i0 + b0) * so0 + (i1 + b1) * so1 + (i2 + b2) * so2 + (i3 + b3) * so3, "
                  "UPD(ou + i0 * su0 + i1 * su1 + i2 * su2 + i3 * su3));"]
    else:
        lines += ["  int r0 = i0 - b0;", "  int r1 = i1 - b1;", "  int r2 = i2 - b2;", "  int r3 = i3 - b3;",
                  "  bool inside = r0 >= 0 && r0 < u0 && r1 >= 0 && r1 < u1 && r2 >= 0 && r2 < u2 "
                  "&& r3 >= 0 && r3 < u3;",
                  "  STORE(i0 * so0 + i1 * so1 + i2 * so2 + i3 * so3, inside ? "
                  "UPD(ou + r0 * su0 + r1 * su1 + r2 * su2 + r3 * su3) : "
                  "X(ox + i0 * sx0 + i1 * sx1 + i2 * sx2 + i3 * sx3));"]
    return lines + ["}"]


def _arg_names(positioned: bool) -> tuple:
    """The 32-bit arguments in order; a positioned variant's static starts are ``pb0..pb3``."""
    if not positioned:
        return ARGS
    return tuple(f"p{a}" if a in ("b0", "b1", "b2", "b3") else a for a in ARGS) + POSITION_ARGS


def source(dialect: str, mode: str, bits: int, threads: int, positioned: bool = False) -> str:
    fn = name(mode, bits, threads, positioned)
    names = ["out_"] + (["x_"] if mode == "copy" else []) + ["u_"]
    args = _arg_names(positioned)
    body = _body(mode, positioned)
    if dialect == "opencl":
        ty = {8: "uchar", 16: "ushort", 32: "uint"}[bits]
        params = [f"__global {ty}* restrict out_"] + [f"__global const {ty}* restrict {nm}" for nm in names[1:]]
        if positioned:
            params.append("__global const int* restrict s_")
        params += [f"int {a}" for a in args]
        return "\n".join([
            "#define GID ((int)get_global_id(0))", "#define GSIZE ((int)get_global_size(0))",
            "#define STORE(i, v) out_[i] = (v)", "#define UPD(i) u_[i]", "#define X(i) x_[i]",
            "#define START(i) s_[i]",
            f"__kernel __attribute__((reqd_work_group_size({threads}, 1, 1))) void {fn}({', '.join(params)}) {{",
            *("  " + ln for ln in body), "}", ""])
    if bits == 32:
        macros = ["#define STORE(i, v) out_[i] = (v)", "#define UPD(i) u_[i]", "#define X(i) x_[i]"]
    else:
        per, mask = 32 // bits, (1 << bits) - 1
        field = f"(({{p}}[(i) / {per}] >> (uint((i) % {per}) * {bits}u)) & {mask}u)"
        macros = [f"#define UPD(i) {field.format(p='u_')}", f"#define X(i) {field.format(p='x_')}",
                  f"#define STORE(i, v) {{ int w_ = (i) / {per}; uint s_ = uint((i) % {per}) * {bits}u; "
                  f"atomicAnd(out_[w_], ~({mask}u << s_)); atomicOr(out_[w_], (v) << s_); }}"]
    if positioned:
        names = names + ["s_"]
        macros = macros + ["#define START(i) int(s_[i])"]
    access = ["" if bits < 32 else "writeonly "] + ["readonly "] * (len(names) - 1)
    bufs = [f"{acc}buffer B{i} {{ uint {nm}[]; }};" for i, (acc, nm) in enumerate(zip(access, names))]
    return "\n".join([
        "#version 450", f"layout(local_size_x = {threads}) in;",
        *(f"layout(std430, set = 0, binding = {i}) {b}" for i, b in enumerate(bufs)),
        f"layout(push_constant) uniform Push {{ {' '.join(f'int p_{a};' for a in args)} }} pc;",
        *(f"#define {a} pc.p_{a}" for a in args),
        "#define GID int(gl_GlobalInvocationID.x)", f"#define GSIZE (int(gl_NumWorkGroups.x) * {threads})",
        *macros, "void main() {", *("  " + ln for ln in body), "}", ""])
