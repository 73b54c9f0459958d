"""The OpenCL executor: fused kernels rendered as OpenCL C (``codegen.render_opencl``) and run through
pyopencl on the first OpenCL device (a GPU when there is one; PoCL gives a CPU device).

One in-order command queue per stream; a launch waits on the events of the kernels that wrote its
inputs, so work on different streams stays ordered where it must. Program binaries are cached on disk
(keyed by the source, the device and its driver version) where the platform can load them back.
``MLXARM_DEBUG=2`` prints each kernel's source.
"""
from __future__ import annotations

import sys

import numpy as np

from .. import __version__
from ..codegen import render_opencl
from ..codegen.render_c import combine_name
from ..kernels import gpu_matmul
from .cache import ObjectCache, default_dir
from .gpu_common import GPUExecutor, reduction_parts


class OpenCLRuntime:
    def __init__(self, cache: ObjectCache | None = None):
        import pyopencl as cl

        self.cl = cl
        devices = [d for p in cl.get_platforms() for d in p.get_devices()]
        if not devices:
            raise RuntimeError("[opencl] No OpenCL device was found.")
        gpus = [d for d in devices if d.type & cl.device_type.GPU]
        self.device = (gpus or devices)[0]
        self.context = cl.Context([self.device])
        self.queues: dict = {}
        self.workgroup = min(256 if gpus else 64, self.device.max_work_group_size)
        self.max_groups = 4096 if gpus else 256
        self.cache = cache or ObjectCache(default_dir().replace("llvm", "opencl"))
        self.kernels: dict = {}
        self.sources: dict = {}
        self.written: dict = {}  # id(buffer) -> event of the kernel that last wrote it
        self.compiled = 0
        self.uploads = 0
        self.matmul_tiling = gpu_matmul.choose(self.device.max_work_group_size, self.device.local_mem_size,
                                               cpu=not gpus)
        self.max_batch = 1 << 30

    def info(self) -> dict:
        d = self.device
        return {"device_name": d.name.strip(), "platform": d.platform.name.strip(),
                "driver": d.driver_version, "opencl": d.version,
                "max_work_group_size": d.max_work_group_size, "compute_units": d.max_compute_units,
                "global_memory": d.global_mem_size, "local_memory": d.local_mem_size,
                "emulated": not d.type & self.cl.device_type.GPU, "workgroup": self.workgroup,
                "matmul_tile": f"{t.bm}x{t.bn}x{t.bk}" if (t := self.matmul_tiling) else None}

    def queue(self, stream=None):
        q = self.queues.get(stream)
        if q is None:
            q = self.queues[stream] = self.cl.CommandQueue(self.context, self.device)
        return q

    # --- memory --------------------------------------------------------------------------------------
    def upload(self, host: np.ndarray):
        mf = self.cl.mem_flags
        self.uploads += 1
        if host.nbytes == 0:
            return self.cl.Buffer(self.context, mf.READ_WRITE, 4)
        return self.cl.Buffer(self.context, mf.READ_WRITE | mf.COPY_HOST_PTR, hostbuf=host)

    def alloc(self, nbytes: int):
        return self.cl.Buffer(self.context, self.cl.mem_flags.READ_WRITE, max(4, nbytes))

    def submit(self, jobs: list) -> None:
        """Download (device buffer, host array) pairs once the kernels that wrote them are done."""
        q = self.queue()
        events = [self.cl.enqueue_copy(q, host, buf, is_blocking=False,
                                       wait_for=self._waits([buf]))
                  for buf, host in jobs]
        self.cl.wait_for_events(events) if events else None
        for queue in self.queues.values():
            queue.finish()
        self.written.clear()

    def _waits(self, bufs) -> list:
        return [e for e in (self.written.get(id(b)) for b in bufs) if e is not None]

    # --- kernels -------------------------------------------------------------------------------------
    def program(self, kernel, debug: int = 0, stage: str | None = None):
        name = kernel.name if stage is None else \
            f"{kernel.name}_partial" if stage == "partial" else combine_name(kernel)
        key = name if stage == "combine" else (kernel, stage)
        fn = self.kernels.get(key)
        if fn is None:
            source = render_opencl.render(kernel, self.workgroup, stage)
            self.sources[key] = source
            fn = self.kernels[key] = getattr(self.build(source), name)
        if debug > 1:
            print(self.sources[key], file=sys.stderr)
        return fn

    def build(self, source: str):
        cl = self.cl
        d = self.device
        key = self.cache.key(source, d.name, d.driver_version, __version__)
        binary = self.cache.get(key)
        if binary is not None:
            try:
                return cl.Program(self.context, [d], [binary]).build()
            except cl.Error:
                pass  # a binary the driver no longer accepts: rebuild from source
        try:
            prog = cl.Program(self.context, source).build(options=["-cl-std=CL1.2"])
        except cl.Error as e:
            path = self.cache.keep_source(key, source)
            raise RuntimeError(f"[opencl] Kernel compilation failed: {e}. The generated source is kept "
                               f"at {path}") from e
        self.compiled += 1
        binaries = prog.get_info(cl.program_info.BINARIES)
        if binaries and binaries[0]:
            self.cache.put(key, bytes(binaries[0]))
        return prog

    def launch(self, fn, kernel, bufs: list, offsets: list, stream=None) -> None:
        n = kernel.out_size
        wg = self.workgroup
        parts = reduction_parts(kernel, wg, self.max_groups) if kernel.reduce_op else 1
        if parts > 1:
            self.launch_two_stage(kernel, bufs, offsets, parts, stream)
            return
        groups = min(self.max_groups, n if kernel.reduce_op else -(-n // wg))
        fn.set_args(*bufs, *[np.int64(o) for o in offsets], np.int64(n))
        event = self.cl.enqueue_nd_range_kernel(self.queue(stream), fn, (groups * wg,), (wg,),
                                                wait_for=self._waits(bufs[1:]) or None)
        self.written[id(bufs[0])] = event

    def launch_two_stage(self, kernel, bufs: list, offsets: list, parts: int, stream=None) -> None:
        """A reduction over few outputs: ``parts`` workgroups per output write partial results (8
        bytes each at most) to a scratch buffer, then one workgroup per output combines them."""
        n = kernel.out_size
        wg = self.workgroup
        scratch = self.alloc(8 * n * parts)
        first = self.program(kernel, 0, "partial")
        first.set_args(scratch, *bufs[1:], np.int64(0), *[np.int64(o) for o in offsets[1:]], np.int64(n),
                       np.int64(parts))
        q = self.queue(stream)
        event = self.cl.enqueue_nd_range_kernel(q, first, (min(self.max_groups, n * parts) * wg,), (wg,),
                                                wait_for=self._waits(bufs[1:]) or None)
        second = self.program(kernel, 0, "combine")
        second.set_args(bufs[0], scratch, np.int64(offsets[0]), np.int64(n), np.int64(parts))
        self.written[id(bufs[0])] = self.cl.enqueue_nd_range_kernel(
            q, second, (min(self.max_groups, n) * wg,), (wg,), wait_for=[event])


    def template(self, name: str, render, bufs: list, groups: tuple, threads: int, args: list,
                 debug: int = 0) -> None:
        """Record kernel template ``name`` (``render("opencl")`` gives its source) over ``groups``
        workgroups of ``threads`` work items; its arguments are ``bufs`` (the first one written) and
        the integers ``args`` (as ``int``, as in GLSL)."""
        key = ("template", name)
        fn = self.kernels.get(key)
        if fn is None:
            source = render("opencl")
            self.sources[key] = source
            fn = self.kernels[key] = getattr(self.build(source), name)
        if debug > 1:
            print(self.sources[key], file=sys.stderr)
        fn.set_args(*bufs, *[np.int32(v) for v in args])
        size = (groups[0] * threads, groups[1], groups[2])
        self.written[id(bufs[0])] = self.cl.enqueue_nd_range_kernel(self.queue(), fn, size, (threads, 1, 1),
                                                                    wait_for=self._waits(bufs[1:]) or None)


class OpenCLExecutor(GPUExecutor):
    name = "opencl"

    def __init__(self, runtime: OpenCLRuntime | None = None):
        super().__init__(runtime or OpenCLRuntime())


def available() -> str | None:
    """None when an OpenCL device can be used, else the reason it cannot."""
    try:
        import pyopencl as cl
    except ImportError as e:
        return f"pyopencl is not installed ({e})"
    try:
        if not any(p.get_devices() for p in cl.get_platforms()):
            return "no OpenCL device was found"
    except cl.Error as e:
        return f"no OpenCL platform is usable ({e})"
    return None
