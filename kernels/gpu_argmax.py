"""argmax and argmin of float32 rows for the GPU backends (the last axis of an array numpy can view as
rows), as OpenCL C or GLSL from one body: an LLM's greedy token taken where its logits are, so a
decode step does not stop to bring them to the host.

One workgroup per row (a grid-stride loop over rows): each work item scans a strided share of the row
keeping its best (value, index), then a tree in shared memory combines the work items' candidates. The
answer is numpy's: the first index of the extreme value, or of the first NaN where the row has one.

Arguments: out (uint32, one per row), x, then ``rows, n, ox, sx_row, sx_col``.
"""
from __future__ import annotations

OPS = ("argmax", "argmin")
ARGS = ("rows", "n", "ox", "sxr", "sxc")


def name(op: str, threads: int) -> str:
    return f"rows_{op}_{threads}"


def _better(op: str) -> str:
    """``int better(float v, int i, float bv, int bi, int none)``: whether candidate (v, i) replaces the
    best so far (bv, bi); an index of ``none`` (the row's length) stands for no element."""
    cmp = ">" if op == "argmax" else "<"
    return (f"int better(float v, int i, float bv, int bi, int none) {{\n"
            f"  if (i >= none) return 0;\n"
            f"  if (bi >= none) return 1;\n"
            f"  bool vn = isnan(v), bn = isnan(bv);\n"
            f"  if (vn || bn) return (vn && !bn) || (vn && bn && i < bi) ? 1 : 0;\n"
            f"  return (v {cmp} bv || (v == bv && i < bi)) ? 1 : 0;\n"
            f"}}")


def _body(threads: int) -> list:
    return ["int lid = LID;",
            "for (int r = GROUP; r < rows; r += NGROUPS) {",
            "  int base = ox + r * sxr;",
            "  float bv = 0.0f;",
            "  int bi = n;",
            f"  for (int j = lid; j < n; j += {threads}) {{",
            "    float v = X(base + j * sxc);",
            "    if (better(v, j, bv, bi, n) != 0) { bv = v; bi = j; }",
            "  }",
            "  shv[lid] = bv;",
            "  shi[lid] = bi;",
            "  BARRIER",
            f"  for (int s = {threads // 2}; s > 0; s >>= 1) {{",
            "    if (lid < s && better(shv[lid + s], shi[lid + s], shv[lid], shi[lid], n) != 0) {",
            "      shv[lid] = shv[lid + s];",
            "      shi[lid] = shi[lid + s];",
            "    }",
            "    BARRIER",
            "  }",
            "  if (lid == 0) OUT(r) = UINT(shi[0]);",
            "  BARRIER",
            "}"]


def source(dialect: str, op: str, threads: int) -> str:
    """The kernel in ``dialect`` ("opencl" or "glsl")."""
    fn = name(op, threads)
    if dialect == "opencl":
        params = ["__global uint* restrict out_", "__global const float* restrict x_"] + [f"int {a}" for a in ARGS]
        return "\n".join([
            "#define LID ((int)get_local_id(0))", "#define GROUP ((int)get_group_id(0))",
            "#define NGROUPS ((int)get_num_groups(0))", "#define BARRIER barrier(CLK_LOCAL_MEM_FENCE);",
            "#define X(i) x_[i]", "#define OUT(i) out_[i]", "#define UINT(x) ((uint)(x))",
            _better(op),
            f"__kernel __attribute__((reqd_work_group_size({threads}, 1, 1))) void {fn}({', '.join(params)}) {{",
            f"  __local float shv[{threads}];", f"  __local int shi[{threads}];",
            *("  " + ln for ln in _body(threads)), "}", ""])
    lines = ["#version 450", f"layout(local_size_x = {threads}) in;",
             "layout(std430, set = 0, binding = 0) buffer B0 { uint out_[]; };",
             "layout(std430, set = 0, binding = 1) buffer B1 { float x_[]; };",
             f"layout(push_constant) uniform Push {{ {' '.join(f'int p_{a};' for a in ARGS)} }} pc;"]
    lines += [f"#define {a} pc.p_{a}" for a in ARGS]
    lines += ["#define LID int(gl_LocalInvocationID.x)", "#define GROUP int(gl_WorkGroupID.x)",
              "#define NGROUPS int(gl_NumWorkGroups.x)", "#define BARRIER barrier();",
              "#define X(i) x_[i]", "#define OUT(i) out_[i]", "#define UINT(x) uint(x)",
              _better(op), f"shared float shv[{threads}];", f"shared int shi[{threads}];", "void main() {",
              *("  " + ln for ln in _body(threads)), "}", ""]
    return "\n".join(lines)
