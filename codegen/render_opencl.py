"""OpenCL C renderer: kernel IR to one ``__kernel`` function (``render_c`` does the shared work).

The kernel's arguments are the buffers in buffer order (``__global`` pointers to their storage type),
then one ``long`` element offset per buffer, then the number of output elements. Elementwise kernels
take any global size (a grid-stride loop); reductions run ``workgroup`` work items per group.
"""
from __future__ import annotations

from .ir import Kernel
from .render_c import HALF_HELPERS, CRenderer

_CTYPE = {"bool": "bool", "uint8": "uchar", "int8": "char", "uint16": "ushort", "int16": "short",
          "uint32": "uint", "int32": "int", "uint64": "ulong", "int64": "long", "float16": "float",
          "float32": "float", "bfloat16": "float"}
_STORAGE = {**_CTYPE, "bool": "uchar", "float16": "ushort", "bfloat16": "ushort"}

_PRELUDE = """#define F2U(x) as_uint(x)
#define U2F(x) as_float(x)
#define RINT(x) rint(x)
#define ISNAN(x) isnan(x)
#define ISINF(x) isinf(x)
#define FABS(x) fabs(x)
#define TO_U(x) convert_uint(x)
#define TO_F(x) convert_float(x)
""" + HALF_HELPERS


class OpenCLRenderer(CRenderer):
    index_type = "long"

    def ctype(self, dtype: str) -> str:
        return _CTYPE[dtype]

    def to(self, ctype: str, expr: str) -> str:
        return f"(({ctype})({expr}))"

    def load_raw(self, buf: int, dtype: str, offset: str) -> str:
        if dtype in ("float16", "bfloat16"):
            return f"(uint)b{buf}[{offset}]"
        return f"b{buf}[{offset}]"

    def store_raw(self, buf: int, dtype: str, offset: str, value: str) -> None:
        self.raw(f"b{buf}[{offset}] = ({_STORAGE[dtype]})({value});")

    def int_cast(self, value: str, src: str, dst: str) -> str:
        return f"({_CTYPE[dst]})({value})"

    def float_to_int(self, value: str, dst: str) -> str:
        return f"({_CTYPE[dst]})convert_long_sat({value})"

    def signature(self) -> str:
        store = self.k.store.buf
        params = [f"__global {'' if b == store else 'const '}{_STORAGE[d]}* restrict b{b}"
                  for b, d in self.bufs.items()]
        params += [f"long o{b}" for b in self.bufs] + ["long n"]
        return f"__kernel void {self.k.name}({', '.join(params)})"

    def render(self) -> str:
        k = self.k
        if k.reduce_op is None:
            body = self.elementwise_body("i")
            lines = [self.signature() + " {",
                     "  for (long i = get_global_id(0); i < n; i += get_global_size(0)) {",
                     *("    " + ln for ln in body), "  }", "}"]
            return _PRELUDE + "\n" + "\n".join(lines) + "\n"
        wg = self.workgroup
        dtype = k.store.value.dtype
        acc_t = self.ctype(dtype)
        shared_t = "int" if dtype == "bool" else acc_t
        head, fold = self.reduce_parts("o", "r")
        ident = self.identity(k.reduce_op, dtype)
        merged = self.combine(k.reduce_op, dtype, "sh[lid]", "sh[lid + s]")
        store = self.reduce_store("o", "acc")
        lines = [f"__kernel __attribute__((reqd_work_group_size({wg}, 1, 1))) " + self.signature()[9:] + " {",
                 f"  __local {shared_t} sh[{wg}];",
                 "  long lid = get_local_id(0);",
                 "  for (long o = get_group_id(0); o < n; o += get_num_groups(0)) {",
                 *("    " + ln for ln in head),
                 f"    {acc_t} acc = {ident};",
                 f"    for (long r = lid; r < {self.reduced_size}; r += {wg}) {{",
                 *("      " + ln for ln in fold), "    }",
                 "    sh[lid] = acc;",
                 "    barrier(CLK_LOCAL_MEM_FENCE);",
                 f"    for (int s = {wg // 2}; s > 0; s >>= 1) {{",
                 f"      if (lid < s) sh[lid] = {merged};",
                 "      barrier(CLK_LOCAL_MEM_FENCE);", "    }",
                 "    if (lid == 0) {", f"      acc = sh[0];",
                 *("      " + ln for ln in store), "    }",
                 "    barrier(CLK_LOCAL_MEM_FENCE);", "  }", "}"]
        return _PRELUDE + "\n" + "\n".join(lines) + "\n"


def render(kernel: Kernel, workgroup: int = 64) -> str:
    r = OpenCLRenderer(kernel)
    r.workgroup = workgroup
    return r.render()
