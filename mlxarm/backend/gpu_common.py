"""What the GPU executors (OpenCL, Vulkan) share: planning an eval, keeping buffers on the device, and
falling back to numpy.

A ``GPUExecutor`` plans an eval with ``codegen.fuse``, lowers each kernel group with ``codegen.lower``
and hands it to its ``runtime`` (allocate, upload, compile with a disk cache, record a launch, submit,
download). Every array a kernel reads or writes has a device buffer that lives as long as the array's
host buffer (``Resident``): an input already on the device is not uploaded again, and a kernel output
stays on the device for the kernels of later evals. A node is given its host buffer (uninitialised)
as soon as its kernel is recorded, so later groups can be lowered against it; the recorded work is
submitted once, and outputs are downloaded when the eval ends or before a numpy step needs them.

Nodes and kernels the runtime cannot run (a dtype it lacks, a primitive no kernel covers) run on the
numpy executor: their inputs are downloaded first, their outputs uploaded lazily when a kernel reads them.
"""
from __future__ import annotations

import os
import sys
import weakref

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..codegen import fuse, ir, lower, schedule
from ..core.device import memory
from .numpy_executor import NumpyExecutor


def root_of(arr: np.ndarray) -> np.ndarray:
    """The ndarray at the bottom of ``arr``'s chain of views."""
    while isinstance(arr.base, np.ndarray):
        arr = arr.base
    return arr


def extent_copy(arr: np.ndarray) -> tuple:
    """A fresh contiguous buffer holding ``arr``'s elements at ``arr``'s own strides, and the element
    offset of ``arr``'s first element in it (for a view whose memory cannot be uploaded as is)."""
    size = arr.itemsize
    lo = sum(min(0, (n - 1) * s) for n, s in zip(arr.shape, arr.strides))
    hi = sum(max(0, (n - 1) * s) for n, s in zip(arr.shape, arr.strides)) + size
    flat = np.zeros(max(1, (hi - lo) // size), dtype=arr.dtype)
    offset = -lo // size
    view = as_strided(flat[offset:], arr.shape, arr.strides)
    view[...] = arr
    return flat, offset


class Resident:
    """Device buffers keyed by the host buffer they mirror; an entry dies with its host buffer."""

    def __init__(self):
        self.buffers: dict = {}  # id(root) -> device buffer
        self.stale: dict = {}  # id(root) -> (weakref to root, device buffer): host copy not written yet
        self.on_drop = None  # called with a dead host buffer's device buffer

    def get(self, root):
        return self.buffers.get(id(root))

    def put(self, root, buf, host_stale: bool) -> None:
        key = id(root)
        self.buffers[key] = buf
        weakref.finalize(root, self._drop, key)
        if host_stale:
            self.stale[key] = (weakref.ref(root), buf)

    def _drop(self, key) -> None:
        buf = self.buffers.pop(key, None)
        self.stale.pop(key, None)
        if buf is not None and self.on_drop is not None:
            self.on_drop(buf)


class GPUExecutor:
    """An executor over a ``runtime`` that records kernels and transfers and submits them in batches."""

    name = "gpu"

    def __init__(self, runtime):
        self.rt = runtime
        self.resident = Resident()
        self.numpy = NumpyExecutor()
        self.kernels_run = 0
        self.numpy_steps = 0
        self.last_plan: list = []

    def info(self) -> dict:
        return {"backend": self.name, **self.rt.info()}

    # --- device buffers of host arrays -------------------------------------------------------------
    def device_view(self, arr: np.ndarray) -> tuple:
        """(device buffer, element offset of ``arr`` in it) for a kernel input."""
        root = root_of(arr)
        delta = arr.__array_interface__["data"][0] - root.__array_interface__["data"][0]
        if root.flags.c_contiguous and delta % arr.itemsize == 0:
            buf = self.resident.get(root)
            if buf is None:
                buf = self.rt.upload(root)
                self.resident.put(root, buf, host_stale=False)
            return buf, delta // arr.itemsize
        flat, offset = extent_copy(arr)
        return self.rt.upload(flat), offset

    def sync_host(self) -> None:
        """Submit what is recorded and write every pending output into its host buffer."""
        pending = self.resident.stale
        self.resident.stale = {}
        jobs = []
        for ref, buf in pending.values():
            root = ref()
            if root is not None:
                jobs.append((buf, root))
        self.rt.submit(jobs)

    # --- one eval ------------------------------------------------------------------------------------
    def supports(self, kernel: ir.Kernel) -> bool:
        return True

    def run(self, refs) -> None:
        nodes = [n for n in (r() for r in refs) if n is not None and n._data is None]
        steps = fuse.plan(nodes)
        del nodes
        debug = int(os.environ.get("MLXARM_DEBUG", "0") or 0)
        self.last_plan = []
        try:
            for idx in range(len(steps)):
                node, kind = steps[idx].node, steps[idx].kind
                steps[idx] = None  # intermediates die as soon as their consumers are recorded
                if node._data is not None:
                    continue
                if kind == "numpy":
                    self.run_numpy([node], debug)
                    continue
                kernel, arrays, out = self.lower(node)
                if not self.supports(kernel):
                    self.run_numpy(schedule.toposort([node]), debug)
                    continue
                self.last_plan.append(("kernel", ir.summary(kernel)))
                if debug:
                    print(f"[mlxarm] {self.name} kernel {ir.summary(kernel)}", file=sys.stderr)
                if out.size:
                    self.record(kernel, arrays, out, debug)
                    self.kernels_run += 1
                memory.alloc(out.nbytes)
                weakref.finalize(out, memory.free, out.nbytes)
                node._data = out
                node._inputs = ()
                node._params = None
                del arrays, out, node
        finally:
            self.sync_host()

    def lower(self, node) -> tuple:
        """``lower.lower``, after the host copies it needs are written. Lowering applies views to host
        buffers; a view numpy can only make by copying (a reshape of a transpose) copies whatever the
        host buffer holds, so a copy made from an output still on the device is redone after a sync."""
        kernel, arrays, out = lower.lower(node, 1)
        stale = self.resident.stale
        if stale:
            leaves = {id(root_of(leaf._data)) for leaf in _leaves(node)}
            if leaves & stale.keys() and any(id(root_of(a)) not in leaves for a in arrays):
                self.sync_host()
                kernel, arrays, out = lower.lower(node, 1)
        return kernel, arrays, out

    def record(self, kernel, arrays, out, debug) -> None:
        prog = self.rt.program(kernel, debug)
        views = [self.device_view(a) for a in arrays]
        out_buf = self.rt.alloc(out.nbytes)
        self.resident.put(out, out_buf, host_stale=True)
        self.rt.launch(prog, kernel, [out_buf] + [b for b, _ in views], [0] + [o for _, o in views])

    def run_numpy(self, nodes: list, debug: int) -> None:
        stale = self.resident.stale
        if stale and any(id(root_of(i._data)) in stale for n in nodes for i in n._inputs
                         if i._data is not None):
            self.sync_host()
        for n in nodes:
            self.last_plan.append(("numpy", n._prim.name if n._prim else "?"))
            if debug:
                print(f"[mlxarm] {self.name} numpy {self.last_plan[-1][1]} {n._shape} {n._dtype.name}",
                      file=sys.stderr)
        self.numpy_steps += len(nodes)
        self.numpy.run([weakref.ref(n) for n in nodes])


def _leaves(root) -> list:
    """The realized nodes a kernel group rooted at ``root`` reads."""
    out, seen, stack = [], set(), [root]
    while stack:
        n = stack.pop()
        for i in n._inputs:
            if id(i) in seen:
                continue
            seen.add(id(i))
            (out if i._data is not None else stack).append(i)
    return out
