"""OpenCL C renderer: kernel IR to one ``__kernel`` function (``render_c`` does the shared work).

The kernel's arguments are the buffers in buffer order (``__global`` pointers to their storage type),
then one ``long`` element offset per buffer, then the number of output elements. Elementwise kernels
take any global size (a grid-stride loop); reductions run ``workgroup`` work items per group. Where the
device has subgroups (cl_khr_subgroups, OpenCL C 2.0, or OpenCL C 3.0's ``__opencl_c_subgroups``:
``subgroup_std``), sums, maxima and minima of 32- and 64-bit integers and floats combine a workgroup's
results with ``sub_group_reduce_*`` (``render(..., subgroups=True)``; ``render_c.subgroup_tree``); such
sources enable cl_khr_subgroups and build with the OpenCL C version ``subgroup_std`` names.
"""
from __future__ import annotations

from .ir import Kernel
from .render_c import ELEMENTWISE, FLOATS, HALF_HELPERS, HALF_TO_FLOAT, CRenderer, combine_name

_CTYPE = {"bool": "bool", "uint8": "uchar", "int8": "char", "uint16": "ushort", "int16": "short",
          "uint32": "uint", "int32": "int", "uint64": "ulong", "int64": "long", "float16": "float",
          "float32": "float", "bfloat16": "float"}
_STORAGE = {**_CTYPE, "bool": "uchar", "float16": "ushort", "bfloat16": "ushort"}

# A half's bits to float32 by the conversion OpenCL C has built in (``vload_half``, exact: the device's
# own instruction where it has one) in place of the portable helper's bit arithmetic and branches.
_HALF_TO_FLOAT_OPENCL = """float mx_f16_to_f32(uint h) {
  ushort b = (ushort)h;
  return vload_half(0, (const half*)&b);
}
"""

# The macros and helpers every kernel (and the kernel templates, ``kernels.gpu_*``) builds on.
PRELUDE = """#define F2U(x) as_uint(x)
#define U2F(x) as_float(x)
#define RINT(x) rint(x)
#define ISNAN(x) isnan(x)
#define ISINF(x) isinf(x)
#define FABS(x) fabs(x)
#define TO_U(x) convert_uint(x)
#define TO_F(x) convert_float(x)
""" + HALF_HELPERS.replace(HALF_TO_FLOAT, _HALF_TO_FLOAT_OPENCL)


SUBGROUP_PRAGMA = "#pragma OPENCL EXTENSION cl_khr_subgroups : enable\n"
SUBGROUP = {"id": "(long)get_sub_group_id()", "lane": "(long)get_sub_group_local_id()",
            "count": "(long)get_num_sub_groups()", "size": "(long)get_max_sub_group_size()",
            "first": "get_sub_group_id() == 0 && get_sub_group_local_id() == 0"}
_SUBGROUP_OPS = {"sum": "sub_group_reduce_add", "max": "sub_group_reduce_max", "min": "sub_group_reduce_min"}


def subgroup_reduce(op: str, dtype: str, x: str) -> str | None:
    """The subgroup-wide ``op`` of ``x`` (``dtype``'s compute type), or None where OpenCL has none (products,
    bools, 8- and 16-bit integers). A NaN anywhere in the subgroup wins a float max/min explicitly."""
    if op not in _SUBGROUP_OPS or _CTYPE[dtype] not in ("int", "uint", "long", "ulong", "float"):
        return None
    expr = f"{_SUBGROUP_OPS[op]}({x})"
    if dtype in FLOATS and op in ("max", "min"):
        expr = f"(sub_group_any(isnan({x})) ? NAN : {expr})"
    return expr


def subgroup_std(extensions: str, c_version: str, c_features=()) -> str | None:
    """The ``-cl-std`` value under which a device with these extensions, OpenCL C version string
    (``"OpenCL C 2.0 ..."``) and OpenCL C feature names compiles ``sub_group_*`` calls, or None."""
    try:
        major, minor = (int(v) for v in c_version.split()[2].split(".")[:2])
    except (IndexError, ValueError):
        return None
    if major >= 3 and "__opencl_c_subgroups" in c_features:
        return "CL3.0"
    if (major, minor) >= (2, 0) and "cl_khr_subgroups" in extensions.split():
        return "CL2.0"
    return None


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

    LID, GID, NGROUPS = "(long)get_local_id(0)", "(long)get_group_id(0)", "(long)get_num_groups(0)"
    BARRIER = "barrier(CLK_LOCAL_MEM_FENCE);"
    SUBGROUP = SUBGROUP

    def subgroup_reduce(self, op: str, dtype: str, x: str) -> str | None:
        return subgroup_reduce(op, dtype, x)

    def partial_type(self) -> str:
        """The storage type of a reduction's partial results (its accumulator's type)."""
        dtype = self.k.store.value.dtype
        return "int" if dtype == "bool" else _CTYPE[dtype]

    def partial_store(self, index: str, value: str) -> str:
        return f"b0[{index}] = ({self.partial_type()})({value});"

    def partial_load(self, index: str) -> str:
        v = f"part[{index}]"
        return f"({v} != 0)" if self.k.store.value.dtype == "bool" else v

    def render(self, stage: str | None = None) -> str:
        k = self.k
        if k.reduce_op is None:
            body = self.elementwise_body("i", "g", ELEMENTWISE)
            lines = [self.signature() + " {", "  long g = get_global_size(0);",
                     f"  for (long i = get_global_id(0); i < n; i += {ELEMENTWISE} * g) {{",
                     *("    " + ln for ln in body), "  }", "}"]
            return PRELUDE + "\n" + "\n".join(lines) + "\n"
        wg = self.workgroup
        dtype = k.store.value.dtype
        shared_t = "int" if dtype == "bool" else self.ctype(dtype)
        sig = self.signature()[len("__kernel "):]
        if stage == "partial":
            sig = sig.replace(f"__global {_STORAGE[k.store.dtype]}* restrict b0",
                              f"__global {self.partial_type()}* restrict b0", 1)
            sig = sig.replace("(", "_partial(", 1)[:-1] + ", long parts)"
        elif stage == "combine":
            sig = (f"void {combine_name(k)}(__global {_STORAGE[k.store.dtype]}* restrict b0, "
                   f"__global const {self.partial_type()}* restrict part, long o0, long n, long parts)")
        body = self.reduce_body(stage)
        lines = [f"__kernel __attribute__((reqd_work_group_size({wg}, 1, 1))) " + sig + " {",
                 f"  __local {shared_t} sh[{wg}];",
                 *("  " + ln for ln in body), "}"]
        uses_subgroups = self.subgroups and self.subgroup_reduce(k.reduce_op, dtype, "acc") is not None
        return (SUBGROUP_PRAGMA if uses_subgroups else "") + PRELUDE + "\n" + "\n".join(lines) + "\n"


def render(kernel: Kernel, workgroup: int = 64, stage: str | None = None, subgroups: bool = False) -> str:
    """OpenCL C for ``kernel``; a reduction's ``stage`` ("partial", "combine") renders one stage of
    its two-stage form (``CRenderer.reduce_body``): kernels ``<name>_partial`` and
    ``render_c.combine_name(kernel)``. ``subgroups``: the device has subgroups (``subgroup_std``)."""
    r = OpenCLRenderer(kernel)
    r.workgroup = workgroup
    r.subgroups = subgroups
    return r.render(stage)
