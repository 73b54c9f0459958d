"""The OpenCL executor: fused kernels rendered as OpenCL C (``codegen.render_opencl``) and run through
pyopencl on the first OpenCL device (a GPU when there is one; PoCL gives a CPU device).

One in-order command queue per stream; once there are several, a launch waits on the events of the
kernels that wrote its inputs, so work on different streams stays ordered where it must (one queue
keeps its own launches in order, and a launch then waits on nothing: waiting costs host time).
Program binaries are cached on disk (keyed by the source, the device and its driver version) where
the platform can load them back.
A dead array's buffer of ``_LARGE`` bytes (32 MiB) or more goes back to a pool (by size) once the
submit that may still use it is done, and serves the next upload or kernel output of its size. Only
large ones: on PoCL a fresh buffer below 32 MiB is memory the allocator recycles, faster than a pooled
one, while a larger one is fresh pages (a 64 MiB upload: 43 ms made fresh, 5 ms into a pooled buffer).
The pool holds at most an eighth of the device's memory: sizes that never come back are freed.

Unified memory: on a device whose memory is the host's (``CL_DEVICE_HOST_UNIFIED_MEMORY``: PoCL, Mali,
Adreno report it) buffers are allocated by the driver in host-reachable memory (``CL_MEM_ALLOC_HOST_PTR``)
and large transfers map them and copy into or out of the mapping, with no write or read command;
elsewhere the driver places buffers where it likes and transfers are writes and reads. Smaller transfers
are one write or read either way (map and unmap are two commands: on PoCL 45 us against 15 us for 4 KiB,
the same time from 16 MiB). ``MLXARM_UNIFIED=0`` keeps the second way everywhere. ``CL_MEM_USE_HOST_PTR``
(the host array itself as the buffer) is not used: pyopencl's buffer then holds the host array alive,
and the host array's death is what frees its device buffer (``Resident``).
``MLXARM_DEBUG=2`` prints each kernel's source.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from .. import __version__
from ..codegen import render_c, render_opencl
from ..codegen.render_c import combine_name
from ..kernels import gpu_matmul
from .cache import ObjectCache, default_dir
from .gpu_common import GPUExecutor, reduction_parts

_LARGE = 1 << 25  # bytes from which buffers are pooled and host-allocated buffers are mapped


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
        self.typed: dict = {}  # id(kernel) -> (buffers, scalars, dtype) its scalar arguments are declared as
        self.sources: dict = {}
        self.written: dict = {}  # id(buffer) -> event of the kernel that last wrote it
        self.pool: dict = {}  # (bytes, host-allocated) -> free buffers
        self.dying: list = []  # buffers of dead arrays that recorded work may still use
        self.pooled_bytes = 0
        self.large = _LARGE  # per runtime: tests lower it to run these paths on small arrays
        self.pool_limit = self.device.global_mem_size // 8
        self.compiled = 0
        self.uploads = 0
        self.downloads = 0  # device buffers written to their host arrays
        self.matmul_tiling = gpu_matmul.choose(self.device.max_work_group_size, self.device.local_mem_size,
                                               cpu=not gpus)
        self.max_batch = 1 << 30
        # Subgroup reductions where the device has them (render_opencl.subgroup_std; MLXARM_SUBGROUPS=0: never).
        try:
            features = [f.name for f in self.device.opencl_c_features]
        except (cl.Error, AttributeError):
            features = []
        self.subgroup_std = render_opencl.subgroup_std(self.device.extensions, self.device.opencl_c_version, features) \
            if os.environ.get("MLXARM_SUBGROUPS") != "0" else None
        self.subgroups = self.subgroup_std is not None
        try:
            self.host_memory = bool(self.device.host_unified_memory)
        except cl.Error:  # the query is deprecated since OpenCL 2.0; a driver may refuse it
            self.host_memory = False
        self.unified = self.host_memory and os.environ.get("MLXARM_UNIFIED") != "0"
        self.tap = None  # a list while a bound call is captured: what this runtime did (``gpu_bind``)
        self.withheld: set = set()  # ids of buffers a bound call owns: never pooled
        self.parked: dict = {}  # id -> a withheld buffer whose array died: pooled when the call lets it go

    def info(self) -> dict:
        d = self.device
        return {"device_name": d.name.strip(), "platform": d.platform.name.strip(),
                "driver": d.driver_version, "opencl": d.version,
                "max_work_group_size": d.max_work_group_size, "compute_units": d.max_compute_units,
                "global_memory": d.global_mem_size, "local_memory": d.local_mem_size,
                "emulated": not d.type & self.cl.device_type.GPU, "workgroup": self.workgroup,
                "subgroup_reduce": self.subgroups, "unified_memory": self.unified,
                "matmul_tile": f"{t.bm}x{t.bn}x{t.bk}" if (t := self.matmul_tiling) else None}

    def queue(self, stream=None):
        q = self.queues.get(stream)
        if q is None:
            q = self.queues[stream] = self.cl.CommandQueue(self.context, self.device)
        return q

    # --- memory --------------------------------------------------------------------------------------
    def _flags(self):
        mf = self.cl.mem_flags
        return mf.READ_WRITE | mf.ALLOC_HOST_PTR if self.unified else mf.READ_WRITE

    def _pooled(self, nbytes: int):
        free = self.pool.get((nbytes, self.unified)) if nbytes >= self.large else None
        if not free:
            return None
        # The oldest first: repeated evals then give each buffer the role it had (uploaded into, or
        # written by a kernel and read back). Swapping them doubled a 16 MiB eval on PoCL.
        buf = free.pop(0)
        self.pooled_bytes -= buf.size
        return buf

    def release(self, buf) -> None:
        """Keep a dead array's large buffer for reuse once the recorded work that may still use it has run
        (the driver keeps any buffer alive while enqueued work uses it). A bound call's buffer is
        parked until the call lets it go (``gpu_bind``)."""
        if id(buf) in self.withheld:
            self.parked[id(buf)] = buf
        elif buf.size >= self.large:
            self.dying.append(buf)

    def upload(self, host: np.ndarray):
        """A buffer holding ``host``'s bytes (C-contiguous): a pooled one written now (through a mapping
        where it is host-allocated) where there is one of its size, else a new one made from them."""
        cl = self.cl
        self.uploads += 1
        buf = self._pooled(host.nbytes)
        if buf is None:
            buf = cl.Buffer(self.context, self._flags(), 4) if host.nbytes == 0 else \
                cl.Buffer(self.context, self._flags() | cl.mem_flags.COPY_HOST_PTR, hostbuf=host)
        elif host.nbytes:
            q = self.queue()
            if self._mapped(buf, host.nbytes):
                mapped, _ = cl.enqueue_map_buffer(q, buf, cl.map_flags.WRITE_INVALIDATE_REGION, 0, (host.nbytes,),
                                                  np.uint8, is_blocking=True)
                mapped[:] = host.reshape(-1).view(np.uint8)
                mapped.base.release(q).wait()  # unmapped before a kernel on any queue reads it
            else:
                cl.enqueue_copy(q, buf, host, is_blocking=True)
        if self.tap is not None:
            self.tap.append(("upload", host, buf))
        return buf

    def _mapped(self, buf, nbytes: int) -> bool:
        """Whether a transfer of ``nbytes`` to or from ``buf`` goes through a mapping."""
        return nbytes >= self.large and bool(buf.flags & self.cl.mem_flags.ALLOC_HOST_PTR)

    def alloc(self, nbytes: int):
        return self._pooled(nbytes) or self.cl.Buffer(self.context, self._flags(), max(4, nbytes))

    whole_evals = True  # a prompt's KV cache write and copying reshapes run as kernels (not on Vulkan)

    def begin(self, structure=None) -> None:
        """An eval begins (nothing to do here: the Vulkan runtime counts its submissions)."""

    def submit(self, jobs: list) -> None:
        """Download (device buffer, host array) pairs once the kernels that wrote them are done: a large
        host-allocated buffer is mapped and copied from, any other read into the host array."""
        cl = self.cl
        q = self.queue()
        if self.tap is not None:
            self.tap.append(("submit", tuple(jobs)))
        self.downloads += len(jobs)
        maps, events = [], []
        for buf, host in jobs:
            waits = self._waits([buf])
            if self._mapped(buf, host.nbytes):
                mapped, event = cl.enqueue_map_buffer(q, buf, cl.map_flags.READ, 0, (host.nbytes,), np.uint8,
                                                      wait_for=waits, is_blocking=False)
                maps.append((mapped, host))
            else:
                event = cl.enqueue_copy(q, host, buf, is_blocking=False, wait_for=waits)
            events.append(event)
        cl.wait_for_events(events) if events else None
        for mapped, host in maps:
            host.reshape(-1).view(np.uint8)[:] = mapped
            mapped.base.release(q)
        for queue in self.queues.values():
            queue.finish()
        self.written.clear()
        for buf in self.dying:
            if self.pooled_bytes + buf.size <= self.pool_limit:
                self.pool.setdefault((buf.size, bool(buf.flags & cl.mem_flags.ALLOC_HOST_PTR)), []).append(buf)
                self.pooled_bytes += buf.size
        self.dying = []

    def _waits(self, bufs):
        """The events a launch reading ``bufs`` waits for: those of the kernels that wrote them, where
        they may have run on another queue (one in-order queue keeps its own launches in order)."""
        if len(self.queues) < 2:
            return None
        return [e for e in (self.written.get(id(b)) for b in bufs) if e is not None] or None

    # --- kernels -------------------------------------------------------------------------------------
    def program(self, kernel, debug: int = 0, stage: str | None = None):
        name = kernel.name if stage is None else \
            f"{kernel.name}_partial" if stage == "partial" else combine_name(kernel)
        key = (name if stage == "combine" else (kernel, stage), self.subgroups)
        fn = self.kernels.get(key)
        if fn is None:
            source = render_opencl.render(kernel, self.workgroup, stage, self.subgroups)
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
            std = self.subgroup_std if self.subgroup_std and "cl_khr_subgroups" in source else "CL1.2"
            prog = cl.Program(self.context, source).build(options=[f"-cl-std={std}"])
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
        groups = min(self.max_groups, n if kernel.reduce_op else -(-n // (wg * render_c.ELEMENTWISE)))
        self.written[id(bufs[0])] = self._enqueue(self.queue(stream), fn, bufs, [*offsets, n], np.int64,
                                                  (groups * wg,), (wg,), self._waits(bufs[1:]))

    def launch_two_stage(self, kernel, bufs: list, offsets: list, parts: int, stream=None) -> None:
        """A reduction over few outputs: ``parts`` workgroups per output write partial results (8
        bytes each at most) to a scratch buffer, then one workgroup per output combines them."""
        n = kernel.out_size
        wg = self.workgroup
        scratch = self.alloc(8 * n * parts)
        first = self.program(kernel, 0, "partial")
        q = self.queue(stream)
        event = self._enqueue(q, first, [scratch, *bufs[1:]], [0, *offsets[1:], n, parts], np.int64,
                              (min(self.max_groups, n * parts) * wg,), (wg,), self._waits(bufs[1:]))
        second = self.program(kernel, 0, "combine")
        self.written[id(bufs[0])] = self._enqueue(q, second, [bufs[0], scratch], [offsets[0], n, parts], np.int64,
                                                  (min(self.max_groups, n) * wg,), (wg,), [event])
        self.release(scratch)

    def set_args(self, fn, bufs: list, scalars: list, dtype) -> None:
        """Bind ``bufs`` then the integers ``scalars`` as ``dtype``. The kernel is told its scalar types
        once: pyopencl then packs plain ints directly (about 2 us a call) instead of inspecting
        numpy scalars (about 80 us), which a decode step's few hundred launches would pay each."""
        shape = (len(bufs), len(scalars), dtype)
        if self.typed.get(id(fn)) != shape:
            fn.set_scalar_arg_dtypes([None] * len(bufs) + [dtype] * len(scalars))
            self.typed[id(fn)] = shape
        fn.set_args(*bufs, *scalars)

    def _enqueue(self, q, fn, bufs: list, scalars: list, dtype, size: tuple, local: tuple, waits):
        """Launch ``fn`` on queue ``q`` over ``size`` work items in groups of ``local``; its event."""
        self.set_args(fn, bufs, scalars, dtype)
        event = self.cl.enqueue_nd_range_kernel(q, fn, size, local, wait_for=waits)
        if self.tap is not None:
            self.tap.append(("launch", tuple(bufs), q, fn, tuple(scalars), dtype, size, local))
        return event

    def template_kernel(self, name: str, render, debug: int = 0):
        """Kernel template ``name`` (``render("opencl")`` gives its source), built once."""
        key = ("template", name)
        fn = self.kernels.get(key)
        if fn is None:
            source = render("opencl")
            self.sources[key] = source
            fn = self.kernels[key] = getattr(self.build(source), name)
        if debug > 1:
            print(self.sources[key], file=sys.stderr)
        return fn

    def run_template(self, fn, bufs: list, groups: tuple, threads: int, args: list) -> None:
        """Record template kernel ``fn`` over ``groups`` workgroups of ``threads`` work items; its
        arguments are ``bufs`` (the first one written) and ``args``, integers that fit 32 bits (as
        ``int``, as in GLSL)."""
        size = (groups[0] * threads, groups[1], groups[2])
        self.written[id(bufs[0])] = self._enqueue(self.queue(), fn, bufs, args, np.int32, size, (threads, 1, 1),
                                                  self._waits(bufs[1:]))

    # --- a bound call (``gpu_bind``) -------------------------------------------------------------------
    def withhold(self, bufs) -> None:
        """Keep ``bufs`` out of the pool while a bound call owns them: the ones dead arrays left to it
        are parked (``release``)."""
        held = {id(b) for b in bufs}
        self.withheld |= held
        for b in self.dying:
            if id(b) in held:
                self.parked[id(b)] = b
        self.dying = [b for b in self.dying if id(b) not in held]
        for key, free in self.pool.items():
            kept = [b for b in free if id(b) not in held]
            for b in free:
                if id(b) in held:
                    self.parked[id(b)] = b
                    self.pooled_bytes -= b.size
            self.pool[key] = kept

    def bound_handle(self, submit: tuple, launches: list, written: list, read: list):
        """What ``run_bound`` replays: the tapped launches (on one queue), each on a kernel object of
        its own whose arguments are set once here; None where they cannot be replayed."""
        if len({id(entry[2]) for entry in launches}) > 1:
            return None
        handle = []
        for _, bufs, q, fn, scalars, dtype, size, local in launches:
            own = self.cl.Kernel(fn.program, fn.function_name)
            own.set_scalar_arg_dtypes([None] * len(bufs) + [dtype] * len(scalars))
            own.set_args(*bufs, *scalars)
            handle.append((q, own, size, local))
        return tuple(handle)

    def run_bound(self, handle, writes: list, reads: list) -> None:
        """Replay a bound call: write (buffer, byte offset, contiguous host array) pairs, run the
        launches ``handle`` holds, read (buffer, byte offset, host array) pairs, and wait."""
        cl = self.cl
        q = handle[0][0] if handle else self.queue()
        for buf, off, host in writes:
            cl.enqueue_copy(q, buf, host, dst_offset=off, is_blocking=False)
        enqueue = cl.enqueue_nd_range_kernel
        for lq, fn, size, local in handle:
            enqueue(lq, fn, size, local)
        events = [cl.enqueue_copy(q, host, buf, src_offset=off, is_blocking=False) for buf, off, host in reads]
        cl.wait_for_events(events) if events else None
        q.finish()
        self.downloads += len(reads)


class OpenCLExecutor(GPUExecutor):
    name = "opencl"

    def __init__(self, runtime: OpenCLRuntime | None = None):
        super().__init__(runtime or OpenCLRuntime())
        self.resident.on_drop = self.rt.release


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
