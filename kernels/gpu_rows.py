"""Row kernels for the GPU backends: softmax, rms_norm and layer_norm of float32 data over the last axis
(the operations ``codegen.rows.match`` picks), as OpenCL C or GLSL from one body.

One workgroup per row (a grid-stride loop over rows): its work items fold strided shares of the row,
a tree in shared memory combines them (or, where the device has subgroup arithmetic, subgroup
reductions do: ``codegen.render_c.subgroup_tree``), and the row's statistics never leave the workgroup. The
arithmetic is the numpy references' in float32: softmax is ``exp(x - max) / sum``, rms_norm
``x / sqrt(sum(x * x) / n + eps) * w``, layer_norm ``(x - mean) / sqrt(sum((x - mean)^2) / n + eps)
* w + b``, with NaN-propagating max.

Arguments: out (contiguous rows), x, then weight and bias when the kernel has them, then
``rows, n, ox, sx_row, sx_col, ow, sw, ob, sb, eps_bits`` (the float32 bits of ``eps``).
"""
from __future__ import annotations

from ..codegen import render_c, render_glsl, render_opencl

ARGS = ("rows", "n", "ox", "sxr", "sxc", "ow", "sw", "ob", "sb", "eps_bits")


def name(op: str, weight: bool, bias: bool, threads: int, subgroups: bool = False) -> str:
    return f"rows_{op}_{int(weight)}{int(bias)}_{threads}{'_sg' if subgroups else ''}"


def _tree(op: str, threads: int, idx: str, dialect: str | None) -> list:
    """Combine ``v`` over the workgroup into ``sh[0]`` (every work item reads it after); ``dialect``:
    with that dialect's subgroup reductions, None: a tree in shared memory."""
    if dialect is not None:
        mod = render_glsl if dialect == "glsl" else render_opencl
        merge = (lambda a, b: f"mx_max({a}, {b})") if op == "max" else (lambda a, b: f"{a} + {b}")
        ident = "NEG_INF" if op == "max" else "0.0f"
        tree = render_c.subgroup_tree(mod.SUBGROUP, idx, "v", ident, merge, mod.subgroup_reduce(op, "float32", "v"),
                                      "BARRIER")
        return tree + ["BARRIER", f"if ({mod.SUBGROUP['first']}) sh[0] = v;", "BARRIER"]
    merged = "mx_max(sh[lid], sh[lid + s])" if op == "max" else "sh[lid] + sh[lid + s]"
    return ["sh[lid] = v;", "BARRIER",
            f"for ({idx} s = {threads // 2}; s > 0; s >>= 1) {{",
            f"  if (lid < s) sh[lid] = {merged};", "  BARRIER", "}"]


def _body(op: str, weight: bool, bias: bool, threads: int, idx: str, sg: str | None = None) -> list:
    def fold(init, expr, comb):
        return [f"v = {init};", f"for ({idx} j = lid; j < n; j += {threads}) v = {comb.format(x=expr)};"]

    x = "X(base + j * sxc)"
    lines = [f"{idx} lid = LID;", "float eps = EPS;",
             f"for ({idx} r = GROUP; r < rows; r += NGROUPS) {{",
             f"  {idx} base = ox + r * sxr;",
             f"  {idx} obase = r * n;",
             "  float v;"]
    body = []
    if op == "softmax":
        body += fold("NEG_INF", x, "mx_max(v, {x})") + _tree("max", threads, idx, sg)
        body += ["float peak = sh[0];", "BARRIER"]
        body += fold("0.0f", f"exp({x} - peak)", "v + {x}") + _tree("sum", threads, idx, sg)
        body += ["float total = sh[0];", "BARRIER",
                 f"for ({idx} j = lid; j < n; j += {threads}) OUT(obase + j) = exp({x} - peak) / total;"]
    else:
        shift = "0.0f"
        if op == "layer_norm":
            body += fold("0.0f", x, "v + {x}") + _tree("sum", threads, idx, sg)
            body += ["float mean = sh[0] / TOF(n);", "BARRIER"]
            shift = "mean"
        body += fold("0.0f", f"({x} - {shift})", "v + {x} * {x}") + _tree("sum", threads, idx, sg)
        body += ["float root = sqrt(sh[0] / TOF(n) + eps);", "BARRIER"]
        value = f"({x} - {shift}) / root"
        if weight:
            value = f"{value} * W(ow + j * sw)"
        if bias:
            value = f"{value} + BIAS(ob + j * sb)"
        body += [f"for ({idx} j = lid; j < n; j += {threads}) OUT(obase + j) = {value};"]
    return lines + ["  " + ln for ln in body] + ["}"]


_MAX = "float mx_max(float a, float b) { return (a > b || isnan(a)) ? a : b; }"


def source(dialect: str, op: str, weight: bool, bias: bool, threads: int, subgroups: bool = False) -> str:
    """The kernel in ``dialect`` ("opencl" or "glsl"); ``subgroups``: the device has subgroup
    arithmetic (the runtime's ``subgroups``)."""
    fn = name(op, weight, bias, threads, subgroups)
    sg = dialect if subgroups else None
    if dialect == "opencl":
        bufs = ["__global float* restrict out_", "__global const float* restrict x_"]
        bufs += ["__global const float* restrict w_"] if weight else []
        bufs += ["__global const float* restrict b_"] if bias else []
        params = bufs + [f"int {a}" for a in ARGS]
        return "\n".join([
            *([render_opencl.SUBGROUP_PRAGMA.strip()] if subgroups else []),
            "#define LID ((int)get_local_id(0))", "#define GROUP ((int)get_group_id(0))",
            "#define NGROUPS ((int)get_num_groups(0))", "#define BARRIER barrier(CLK_LOCAL_MEM_FENCE);",
            "#define NEG_INF (-INFINITY)", "#define EPS as_float((uint)eps_bits)", "#define TOF(x) ((float)(x))",
            "#define X(i) x_[i]", "#define W(i) w_[i]", "#define BIAS(i) b_[i]", "#define OUT(i) out_[i]",
            _MAX,
            f"__kernel __attribute__((reqd_work_group_size({threads}, 1, 1))) void {fn}({', '.join(params)}) {{",
            f"  __local float sh[{threads}];",
            *("  " + ln for ln in _body(op, weight, bias, threads, "int", sg)), "}", ""])
    names = ["out_", "x_"] + (["w_"] if weight else []) + (["b_"] if bias else [])
    lines = ["#version 450", *([render_glsl.SUBGROUP_EXTENSIONS.strip()] if subgroups else []),
             f"layout(local_size_x = {threads}) in;"]
    for i, nm in enumerate(names):
        lines.append(f"layout(std430, set = 0, binding = {i}) buffer B{i} {{ float {nm}[]; }};")
    lines.append(f"layout(push_constant) uniform Push {{ {' '.join(f'int p_{a};' for a in ARGS)} }} pc;")
    lines += [f"#define {a} pc.p_{a}" for a in ARGS]
    lines += ["#define LID int(gl_LocalInvocationID.x)", "#define GROUP int(gl_WorkGroupID.x)",
              "#define NGROUPS int(gl_NumWorkGroups.x)", "#define BARRIER barrier();",
              "#define NEG_INF uintBitsToFloat(0xFF800000u)", "#define EPS uintBitsToFloat(uint(eps_bits))",
              "#define TOF(x) float(x)",
              "#define X(i) x_[i]", "#define W(i) w_[i]", "#define BIAS(i) b_[i]", "#define OUT(i) out_[i]",
              _MAX, f"shared float sh[{threads}];", "void main() {",
              *("  " + ln for ln in _body(op, weight, bias, threads, "int", sg)), "}", ""]
    return "\n".join(lines)
