"""Quantized matrix-vector products for the GPU backends: ``y = x @ dequantize(w).T`` straight from MLX's
affine packing (``quantize``: each uint32 word of ``w`` holds ``32 / bits`` values, lowest bits first;
element ``k`` of row ``o`` is ``scales[o, k // group] * q + biases[o, k // group]``), as OpenCL C or
GLSL from one body. Bits 2, 4 and 8 (a word never straddles two groups); float32 x, and float32
scales and biases or float16 ones (``half``: a float16 model run in float32), widened as they are read:
OpenCL's ``vload_half``, GLSL's ``unpackHalf2x16`` of the word holding them.

A workgroup computes ``threads / LANES`` outputs of one row of x, ``LANES`` work items per output:
each folds every ``LANES``-th packed word of the weight row (neighbouring work items read
neighbouring words), as ``scale * sum(x * q) + bias * sum(x)`` per word, then a tree in shared
memory sums the lanes. The weights are read once, packed: the kernel is bound by their bandwidth.

Arguments: y (contiguous, rows of N), x, w, scales, biases, then
``N, K, group, ox, sxr, sxc, ow, swr, swc, os, ssr, ssc, ob, sbr, sbc``. The grid is
``(ceil(N / (threads / LANES)), rows of x, 1)``.
"""
from __future__ import annotations

BITS = (2, 4, 8)
LANES = 32
ARGS = ("N", "K", "group", "ox", "sxr", "sxc", "ow", "swr", "swc", "os", "ssr", "ssc", "ob", "sbr", "sbc")


def lanes(threads: int) -> int:
    return min(LANES, threads)


def name(bits: int, threads: int, half: bool = False) -> str:
    return f"qmv_affine_b{bits}_{threads}{'_h' if half else ''}"


def _body(bits: int, threads: int, idx: str) -> list:
    t = lanes(threads)
    per = 32 // bits
    mask = (1 << bits) - 1
    return [
        f"{idx} lid = LID;",
        f"{idx} lane = lid % {t};",
        f"{idx} o = GROUP_X * {threads // t} + lid / {t};",
        f"{idx} m = GROUP_Y;",
        f"{idx} words = K / {per};",
        "float v = 0.0f;",
        "if (o < N) {",
        f"  for ({idx} wi = lane; wi < words; wi += {t}) {{",
        "    uint q = WORD(ow + o * swr + wi * swc);",
        f"    {idx} k0 = wi * {per};",
        "    " + f"{idx} g = k0 / group;",
        "    float s = S(os + o * ssr + g * ssc);",
        "    float b = BZ(ob + o * sbr + g * sbc);",
        f"    {idx} xb = ox + m * sxr + k0 * sxc;",
        "    float dq = 0.0f;",
        "    float dx = 0.0f;",
        f"    for (int e = 0; e < {per}; e++) {{",
        "      float xv = X(xb + e * sxc);",
        f"      dq = fma(xv, TOF((q >> (uint(e) * {bits}u)) & {mask}u), dq);",
        "      dx += xv;",
        "    }",
        "    v = fma(s, dq, fma(b, dx, v));",
        "  }",
        "}",
        "sh[lid] = v;",
        "BARRIER",
        f"for ({idx} h = {t // 2}; h > 0; h >>= 1) {{",
        "  if (lane < h) sh[lid] += sh[lid + h];",
        "  BARRIER",
        "}",
        "if (lane == 0 && o < N) Y(m * N + o) = sh[lid];",
    ]


def source(dialect: str, bits: int, threads: int, half: bool = False) -> str:
    fn = name(bits, threads, half)
    if dialect == "opencl":
        vals = "half" if half else "float"
        params = ["__global float* restrict y_", "__global const float* restrict x_",
                  "__global const uint* restrict w_", f"__global const {vals}* restrict s_",
                  f"__global const {vals}* restrict b_"] + [f"int {a}" for a in ARGS]
        body = [ln.replace("uint(e)", "(uint)e") for ln in _body(bits, threads, "int")]
        reads = ("#define S(i) vload_half(i, s_)", "#define BZ(i) vload_half(i, b_)") if half else \
            ("#define S(i) s_[i]", "#define BZ(i) b_[i]")
        return "\n".join([
            "#define LID ((int)get_local_id(0))", "#define GROUP_X ((int)get_group_id(0))",
            "#define GROUP_Y ((int)get_group_id(1))", "#define BARRIER barrier(CLK_LOCAL_MEM_FENCE);",
            "#define TOF(x) ((float)(x))", "#define WORD(i) w_[i]", "#define X(i) x_[i]", *reads,
            "#define Y(i) y_[i]",
            f"__kernel __attribute__((reqd_work_group_size({threads}, 1, 1))) void {fn}({', '.join(params)}) {{",
            f"  __local float sh[{threads}];",
            *("  " + ln for ln in body), "}", ""])
    vals = "uint" if half else "float"  # float16 pairs in 32-bit words: Vulkan buffers need no 16-bit storage
    decls = [("y_", "float"), ("x_", "float"), ("w_", "uint"), ("s_", vals), ("b_", vals)]
    lines = ["#version 450", f"layout(local_size_x = {threads}) in;"]
    for i, (nm, ty) in enumerate(decls):
        lines.append(f"layout(std430, set = 0, binding = {i}) buffer B{i} {{ {ty} {nm}[]; }};")
    lines.append(f"layout(push_constant) uniform Push {{ {' '.join(f'int p_{a};' for a in ARGS)} }} pc;")
    lines += [f"#define {a} pc.p_{a}" for a in ARGS]
    lines += ["#define LID int(gl_LocalInvocationID.x)", "#define GROUP_X int(gl_WorkGroupID.x)",
              "#define GROUP_Y int(gl_WorkGroupID.y)", "#define BARRIER barrier();", "#define TOF(x) float(x)",
              "#define WORD(i) w_[i]", "#define X(i) x_[i]",
              *(("#define S(i) unpackHalf2x16(s_[(i) >> 1])[(i) & 1]",
                 "#define BZ(i) unpackHalf2x16(b_[(i) >> 1])[(i) & 1]") if half else
                ("#define S(i) s_[i]", "#define BZ(i) b_[i]")),
              "#define Y(i) y_[i]", f"shared float sh[{threads}];", "void main() {",
              *("  " + ln for ln in _body(bits, threads, "int")), "}", ""]
    return "\n".join(lines)
