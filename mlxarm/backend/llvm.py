"""The LLVM executor: fused kernels compiled for the host CPU by llvmlite and run on every core.

``run`` plans an eval (``codegen.fuse``), lowers each kernel group when its inputs exist
(``codegen.lower``), renders LLVM IR for the host (``codegen.render_llvm``), and runs the machine code
through ctypes (which releases the GIL) from a thread pool, each worker taking a slice of the output
index space. Nodes no kernel covers run on the numpy executor in between; buffers are numpy arrays
either way, so nothing is copied between the two. Object code is cached on disk (``cache``) and the
loaded functions in memory, keyed by the kernel IR.

``MLXARM_DEBUG=1`` prints the steps of every eval, ``MLXARM_DEBUG=2`` also each kernel's source;
``MLXARM_THREADS`` sets the number of worker threads (default: one per CPU). softmax, rms_norm and
layer_norm over the last axis of float32 data run as row kernels (``codegen.rows``).
"""
from __future__ import annotations

import ctypes
import math
import os
import sys
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import __version__
from ..codegen import fuse, ir, lower, render_llvm, rows
from ..kernels import matmul as gemm_template
from ..codegen import target as targets
from ..core.device import memory
from .cache import ObjectCache
from .numpy_executor import NumpyExecutor, _keeps_graph

_KERNEL_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
# Below this many element-steps a kernel runs on the calling thread: handing work to the pool costs
# more than it saves.
_PARALLEL_MIN = 1 << 16
# Below this many multiply-adds (M*N*K) a float32 matmul stays on numpy: packing costs more than it saves.
_GEMM_MIN = 1 << 15


class CompileError(RuntimeError):
    pass


class Compiler:
    """llvmlite MCJIT for one target, with the disk cache in front of it."""

    def __init__(self, target: targets.Target | None = None, cache: ObjectCache | None = None):
        import llvmlite.binding as llvm

        self.llvm = llvm
        llvm.initialize_all_targets()
        llvm.initialize_all_asmprinters()
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        self.target = target or targets.host()
        self.machine = llvm.Target.from_triple(self.target.triple).create_target_machine(
            cpu=self.target.cpu, features=self.target.features, opt=3, reloc="pic", codemodel="small")
        self.cache = cache or ObjectCache()
        self.engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), self.machine)
        self.lock = threading.Lock()
        self.objects: list = []
        self.compiled = 0

    def object_code(self, source: str) -> bytes:
        key = self.cache.key(source, self.target.triple, self.target.features, __version__)
        obj = self.cache.get(key)
        if obj is not None:
            return obj
        llvm = self.llvm
        try:
            module = llvm.parse_assembly(source)
            module.verify()
            pto = llvm.create_pipeline_tuning_options(speed_level=3)
            pto.loop_vectorization = False  # kernels are vectorized by hand; keep the loops as written
            builder = llvm.create_pass_builder(self.machine, pto)
            builder.getModulePassManager().run(module, builder)
            obj = self.machine.emit_object(module)
        except Exception as e:  # noqa: BLE001 - any LLVM failure is reported with the kept source
            path = self.cache.keep_source(key, source)
            raise CompileError(f"[llvm] Kernel compilation failed: {e}. The generated source is kept "
                               f"at {path}") from e
        self.compiled += 1
        self.cache.put(key, obj)
        return obj

    def load(self, source: str, name: str):
        obj = self.object_code(source)
        with self.lock:
            ref = self.llvm.ObjectFileRef.from_data(obj)
            self.objects.append(ref)  # the engine runs code from this object's memory
            self.engine.add_object_file(ref)
            self.engine.finalize_object()
            addr = self.engine.get_function_address(name)
        if not addr:
            raise CompileError(f"[llvm] Kernel {name} was not found in its object code.")
        return _KERNEL_FN(addr)


class LLVMExecutor:
    name = "llvm"

    def __init__(self, target: targets.Target | None = None, cache: ObjectCache | None = None):
        self.compiler = Compiler(target, cache)
        self.target = self.compiler.target
        self.functions: dict = {}  # kernel IR -> loaded function
        self.sources: dict = {}
        self.plans: dict = {}  # lower.structure key -> (kernel, summary, function, (leaf, byte offset) per input)
        self.workers = int(os.environ.get("MLXARM_THREADS") or 0) or os.cpu_count() or 1
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="mlxarm-llvm") \
            if self.workers > 1 else None
        self.numpy = NumpyExecutor()
        self.kernels_run = 0
        self.last_plan: list = []

    def info(self) -> dict:
        t = self.target
        return {"backend": "llvm", "llvm": ".".join(map(str, self.compiler.llvm.llvm_version_info)),
                "triple": t.triple, "cpu": t.cpu, "vector_bits": t.vector_bits, "threads": self.workers}

    def function(self, kernel: ir.Kernel):
        fn = self.functions.get(kernel)
        if fn is None:
            source = render_llvm.render(kernel, self.target)
            fn = self.functions[kernel] = self.compiler.load(source, kernel.name)
            self.sources[kernel] = source
        return fn

    def row_function(self, kernel: rows.RowKernel):
        fn = self.functions.get(kernel)
        if fn is None:
            source = rows.render(kernel, self.target)
            fn = self.functions[kernel] = self.compiler.load(source, kernel.name)
            self.sources[kernel] = source
        return fn

    def run_rows(self, node, kernel: rows.RowKernel) -> np.ndarray:
        """softmax / rms_norm / layer_norm over the last axis: one row kernel."""
        arrays = [np.ascontiguousarray(i._data) for i in node._inputs]
        out = np.empty(node._shape, np.float32)
        if out.size:
            self.split(self.row_function(kernel), [a.ctypes.data for a in [out] + arrays],
                       out.size // kernel.n, kernel.n, 1)
        return out

    def run(self, refs) -> None:
        nodes = [n for n in (r() for r in refs) if n is not None and n._data is None]
        steps = fuse.plan(nodes, caps=lower.EVERYTHING)
        del nodes
        debug = int(os.environ.get("MLXARM_DEBUG", "0") or 0)
        self.last_plan = []
        for step in steps:
            node = step.node
            if node._data is not None:
                continue
            if step.kind == "numpy" and self.gemm_fits(node):
                self.last_plan.append(("kernel", "gemm"))
                if debug:
                    print(f"[mlxarm] kernel gemm {node._shape}", file=sys.stderr)
                self.realized(node, self.run_matmul(node))
                continue
            row_kernel = rows.match(node, self.target.lanes) if step.kind == "numpy" else None
            if row_kernel is not None:
                self.last_plan.append(("kernel", row_kernel.name))
                if debug:
                    print(f"[mlxarm] kernel {row_kernel.name} {node._shape}", file=sys.stderr)
                self.realized(node, self.run_rows(node, row_kernel))
                continue
            if step.kind == "numpy":
                self.numpy.run([weakref.ref(node)])
                self.last_plan.append(("numpy", node._prim.name if node._prim else "?"))
                if debug:
                    print(f"[mlxarm] numpy  {self.last_plan[-1][1]} {node._shape} {node._dtype.name}",
                          file=sys.stderr)
                continue
            kernel, summary, fn, addresses, keep = self.lowered(node)
            self.last_plan.append(("kernel", summary))
            if debug:
                print(f"[mlxarm] kernel {summary}", file=sys.stderr)
                if debug > 1:
                    print(self.sources[kernel], file=sys.stderr)
            out = np.empty(node._shape, dtype=node._dtype.np_storage)
            if out.size:
                self.launch(fn, kernel, [out.ctypes.data] + addresses)
            del keep
            self.realized(node, out)

    def gemm_fits(self, node) -> bool:
        """A float32 matmul big enough for the packed template to beat its packing cost."""
        if node._prim is None or node._prim.name != "matmul" or node._dtype.name != "float32" \
                or self.target.scalable:
            return False
        a, b = node._inputs
        m, k, n = a._shape[-2], a._shape[-1], b._shape[-1]
        return m * n * k >= _GEMM_MIN and a._dtype.name == "float32" and b._dtype.name == "float32"

    def run_matmul(self, node) -> np.ndarray:
        a, b = (i._data for i in node._inputs)
        batch = node._shape[:-2]
        if not batch:
            return self.gemm(a, b)  # the first M rows of a padded buffer: contiguous, no copy
        a = np.broadcast_to(a, batch + a.shape[-2:])
        b = np.broadcast_to(b, batch + b.shape[-2:])
        out = np.empty(node._shape, np.float32)
        for idx in np.ndindex(*batch):
            out[idx] = self.gemm(a[idx], b[idx])
        return out

    def gemm(self, a: np.ndarray, b: np.ndarray, bias: np.ndarray | None = None, act: str | None = None,
             residual: np.ndarray | None = None) -> np.ndarray:
        """``act(a @ b + bias) + residual`` for float32 (M, K) @ (K, N) (any strides), with
        ``bias`` of shape (N,) and ``residual`` of shape (M, N), by the tiled template
        (``kernels.matmul``) on every worker."""
        m, k = a.shape
        n = b.shape[1]
        if not (m and n and k):
            out = np.zeros((m, n), np.float32) if bias is None else np.broadcast_to(bias, (m, n)).copy()
            if act == "relu":
                np.maximum(out, 0, out=out)
            return out if residual is None else out + residual
        lanes = self.target.lanes
        nr = gemm_template.panel_width(lanes)
        key = ("gemm", lanes, bias is not None, act, residual is not None)
        fn = self.functions.get(key)
        if fn is None:
            source = gemm_template.render(lanes, bias is not None, act, residual is not None)
            fn = self.functions[key] = self.compiler.load(
                source, gemm_template.name(lanes, bias is not None, act, residual is not None))
            self.sources[key] = source
        pa = gemm_template.pack_a(a)
        pb = gemm_template.pack_b(b, nr)
        rows_padded = pa.shape[0] * gemm_template.MR
        c = np.empty((rows_padded, n), np.float32)
        bias = None if bias is None else np.ascontiguousarray(bias, np.float32)
        residual = None if residual is None else np.ascontiguousarray(residual, np.float32)
        meta = np.array([m, n, k, n, n], np.int64)
        addresses = [c.ctypes.data, pa.ctypes.data, pb.ctypes.data,
                     0 if bias is None else bias.ctypes.data, 0 if residual is None else residual.ctypes.data,
                     meta.ctypes.data]
        self.split(fn, addresses, pb.shape[0], 2 * m * k * nr, 1)
        return c[:m]

    def lowered(self, node) -> tuple:
        """(kernel, its summary, function, input addresses, what must stay alive while it runs) for the group
        rooted at ``node``. Lowering is cached by the group's structure (``lower.structure``), so a
        graph shape seen before costs one walk over its nodes: buffers are found again as byte
        offsets into the group's leaves."""
        key, leaves = lower.structure(node)
        plan = self.plans.get(key)
        if plan is None:
            sources: list = []
            kernel, arrays, _ = lower.lower(node, self.target.lanes, sources)
            fn = self.function(kernel) if math.prod(node._shape) else None  # empty: never run
            where = {id(n): i for i, n in enumerate(leaves)}
            offsets = tuple((where[id(n)], off) for n, off in sources)
            # A view that had to copy has no offset: such a group is lowered every time.
            summary = ir.summary(kernel)
            if all(off is not None for _, off in offsets):
                self.plans[key] = (kernel, summary, fn, offsets)
            return kernel, summary, fn, [a.ctypes.data for a in arrays], arrays
        kernel, summary, fn, offsets = plan
        return kernel, summary, fn, [leaves[i]._data.ctypes.data + off for i, off in offsets], None

    def realized(self, node, out: np.ndarray) -> None:
        """Give ``node`` its buffer ``out``, written by a kernel."""
        self.kernels_run += 1
        node._data = out
        if not _keeps_graph():
            # Inputs dying here are freed before the output is counted, as MLX's buffer donation
            # would reuse them.
            node._inputs = ()
            node._params = None
        memory.alloc(out.nbytes)
        weakref.finalize(out, memory.free, out.nbytes)

    def launch(self, fn, kernel: ir.Kernel, addresses: list) -> None:
        per_unit = 1
        for d in kernel.dims[kernel.n_out:]:
            per_unit *= d
        align = kernel.width * 4 if kernel.reduce_op is None else 1
        self.split(fn, addresses, kernel.out_size, per_unit, align)

    def split(self, fn, addresses: list, total: int, per_unit: int, align: int) -> None:
        """Run ``fn`` over [0, total) units of ``per_unit`` element-steps each, in slices of a
        multiple of ``align`` units spread over the workers when the work is big enough. The caller
        keeps the buffers at ``addresses`` alive until this returns."""
        args = (ctypes.c_void_p * len(addresses))(*addresses)
        if self.pool is None or total * per_unit < _PARALLEL_MIN or total < 2:
            fn(args, 0, total)
            return
        parts = min(self.workers, total)
        bounds = [min(total, (total * p // parts + align - 1) // align * align) for p in range(parts)] + [total]
        futures = [self.pool.submit(fn, args, lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]
        for f in futures:
            f.result()


def available() -> str | None:
    """None when llvmlite can be used, else the reason it cannot."""
    try:
        import llvmlite.binding  # noqa: F401
    except ImportError as e:
        return f"llvmlite is not installed ({e})"
    return None
