"""What the GPU executors (OpenCL, Vulkan) share: planning an eval, keeping buffers on the device, and
falling back to numpy.

A ``GPUExecutor`` plans an eval with ``codegen.fuse``, lowers each kernel group with ``codegen.lower``
and hands it to its ``runtime`` (allocate, upload, compile with a disk cache, record a launch, submit,
download). Every array a kernel reads or writes has a device buffer that lives as long as the array's
host buffer (``Resident``): an input already on the device is not uploaded again, and a kernel output
stays on the device for the kernels of later evals. A node is given its host buffer (uninitialised)
as soon as its kernel is recorded, so later groups can be lowered against it; the recorded work is
submitted once, and outputs are downloaded when the eval ends or before a numpy step needs them.

A reduction into few outputs runs in two stages (``reduction_parts``): many workgroups per output
write partial results, a second kernel combines them. Matmul, softmax/rms_norm/layer_norm over the
last axis, affine quantized matvec, rope, attention and the KV cache's slice_update, which fusion
cannot make fast, run as kernel templates (``kernels.gpu_matmul``, ``gpu_rows``, ``gpu_qmv``,
``gpu_attention``, ``gpu_update``) through the runtime's ``template`` launch. Views (reshape,
transpose, ...) of buffers still on the device stay views, read by kernels through the same buffer.

Nodes and kernels the runtime cannot run (a dtype it lacks, a primitive no kernel covers) run on the
numpy executor: their inputs are downloaded first, their outputs uploaded lazily when a kernel reads them.
"""
from __future__ import annotations

import os
import sys
import weakref

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..codegen import fuse, ir, lower, rows, schedule
from ..core.device import count_buffer
from ..core.fast import rope_inv_freq
from ..core.ops.indexing import window_start
from ..kernels import gpu_attention, gpu_matmul, gpu_qmv, gpu_rows, gpu_update
from .numpy_executor import NumpyExecutor


# Primitives a kernel template (``kernels.gpu_*``) may run.
_TEMPLATES = frozenset({"matmul", "quantized_matmul", *rows.OPS, *lower.VIEWS, "rope",
                        "scaled_dot_product_attention", "dynamic_slice_update"})
# What the C-style renderers cover: the portable ops and reductions, and all/any (min/max over bools).
CAPS = (lower.PORTABLE[0] | {"all", "any"}, lower.PORTABLE[1])


def reduced_size(kernel: ir.Kernel) -> int:
    n = 1
    for d in kernel.dims[kernel.n_out:]:
        n *= d
    return n


# A workgroup of a two-stage reduction's first stage folds at least this many elements per work item,
# and the second stage at most this many partial results per work item.
PER_ITEM = 4
COMBINE_PER_ITEM = 16


def reduction_parts(kernel: ir.Kernel, workgroup: int, groups: int) -> int:
    """How many workgroups share each output element of a reduction. One workgroup per output
    element leaves the device idle when there are few outputs (a full sum runs on one workgroup), so
    the reduced space of each is then cut into ``parts`` chunks reduced by separate workgroups and
    combined by a second kernel (``CRenderer.reduce_body``). ``groups`` is about how many
    workgroups fill the device."""
    n = kernel.out_size
    if n >= groups // 2:
        return 1
    parts = min(reduced_size(kernel) // (PER_ITEM * workgroup), max(1, groups // n), COMBINE_PER_ITEM * workgroup)
    return parts if parts > 1 else 1


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

    def written(self, root, buf) -> None:
        """A kernel wrote ``root``'s device buffer ``buf`` in place: its host copy is stale."""
        self.stale[id(root)] = (weakref.ref(root), buf)

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
        self.extents: dict = {}  # (id(buffer), byte offset, shape, strides, dtype) -> (its ref, device buffer, offset)
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
        # A view numpy cannot hand over as it is (the element offset in its buffer is not whole, as in a
        # safetensors file whose tensors start anywhere): its extent is uploaded once, kept while the
        # buffer lives (buffers are not written once uploaded, as above).
        key = (id(root), delta, arr.shape, arr.strides, arr.dtype.str)
        hit = self.extents.get(key)
        if hit is not None and hit[0]() is root:
            return hit[1], hit[2]
        flat, offset = extent_copy(arr)
        buf = self.rt.upload(flat)
        if hit is None:
            weakref.finalize(root, self._drop_extent, key)
        self.extents[key] = (weakref.ref(root), buf, offset)
        return buf, offset

    def _drop_extent(self, key) -> None:
        hit = self.extents.pop(key, None)
        if hit is not None and self.resident.on_drop is not None:
            self.resident.on_drop(hit[1])

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
        steps = fuse.plan(nodes, caps=CAPS)
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
                    if not self.run_template(node, debug):
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
                count_buffer(out)
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

    # --- kernel templates --------------------------------------------------------------------------
    def run_template(self, node, debug: int) -> bool:
        """Record ``node`` as a hand-written kernel (``kernels.gpu_*``) when one covers it: matmul
        (float32, float16, bfloat16), float32 softmax/rms_norm/layer_norm over the last axis, affine
        quantized matvec, rope and attention (float32, float16), slice_update at array positions
        (1-, 2- or 4-byte elements); a movement primitive numpy makes as a view becomes that view, with no
        download."""
        name = node._prim.name if node._prim is not None else None
        if name not in _TEMPLATES:
            return False
        # Template arguments (offsets, strides) are 32-bit integers.
        if not all(root_of(i._data).size < 2 ** 31 for i in node._inputs) \
                or np.prod(node._shape, dtype=np.int64) >= 2 ** 31:
            return False
        if name == "matmul":
            return self.run_matmul(node, debug)
        if name in rows.OPS:
            return self.run_rows(node, debug)
        if name == "quantized_matmul":
            return self.run_qmv(node, debug)
        if name in lower.VIEWS:
            return self.run_view(node, debug)
        if name == "rope":
            return self.run_rope(node, debug)
        if name == "scaled_dot_product_attention":
            return self.run_sdpa(node, debug)
        if name == "dynamic_slice_update":
            return self.run_slice_update(node, debug)
        return False

    def template_output(self, node, label: str, debug: int):
        """The host array and device buffer of a template's output (the buffer stays on the device)."""
        self.last_plan.append(("kernel", label))
        if debug:
            print(f"[mlxarm] {self.name} kernel {label}", file=sys.stderr)
        out = np.empty(node._shape, node._dtype.np_storage)
        buf = None
        if out.size:
            buf = self.rt.alloc(out.nbytes)
            self.resident.put(out, buf, host_stale=True)
            self.kernels_run += 1
        return out, buf

    def realized(self, node, out) -> bool:
        count_buffer(out)
        node._data = out
        node._inputs = ()
        node._params = None
        return True

    def run_matmul(self, node, debug: int) -> bool:
        t = self.rt.matmul_tiling
        a, b = node._inputs
        dtype = node._dtype.name
        if t is None or dtype not in gpu_matmul.DTYPES or not (dtype == a._dtype.name == b._dtype.name):
            return False
        batch = node._shape[:-2]
        m, n = node._shape[-2:]
        ad = np.broadcast_to(a._data, batch + a._data.shape[-2:])
        bd = np.broadcast_to(b._data, batch + b._data.shape[-2:])
        inner = batch[-1] if batch else 1
        if inner > self.rt.max_batch:
            return False
        # float16 on cooperative matrices where the Vulkan device has them (kernels.gpu_matmul.coop_glsl).
        coop = getattr(self.rt, "coop_tiling", None) if dtype == "float16" else None
        out, out_buf = self.template_output(node, f"gemm_{dtype}{' coopmat' if coop else ''} {node._shape}", debug)
        if out_buf is not None:
            for idx, at in _outer_batches(batch, m * n * inner):
                a3 = ad[idx] if batch else ad[None]
                b3 = bd[idx] if batch else bd[None]
                (abuf, aoff), (bbuf, boff) = self.device_view(a3), self.device_view(b3)
                sa = [st // a3.itemsize for st in a3.strides]
                sb = [st // b3.itemsize for st in b3.strides]
                k = a3.shape[-1]
                a_rows, b_rows = abs(sa[2]) == 1 or k == 1, abs(sb[2]) == 1 or n == 1
                if coop:
                    vec = gpu_matmul.coop_vec_ok(k, n, aoff, sa, boff, sb)
                    self.rt.template(gpu_matmul.coop_name(coop, vec, a_rows, b_rows),
                                     lambda dialect: gpu_matmul.coop_glsl(coop, vec, a_rows, b_rows),
                                     [out_buf, abuf, bbuf], (-(-n // coop.bn), -(-m // coop.bm), inner), coop.threads,
                                     [m, n, k, at, aoff, *sa, boff, *sb], debug)
                    continue
                self.rt.template(gpu_matmul.name(t, a_rows, b_rows, dtype),
                                 lambda dialect: gpu_matmul.source(dialect, t, a_rows, b_rows, dtype),
                                 [out_buf, abuf, bbuf], (-(-n // t.bn), -(-m // t.bm), inner), t.threads,
                                 [m, n, k, at, aoff, *sa, boff, *sb], debug)
        return self.realized(node, out)

    def run_rows(self, node, debug: int) -> bool:
        rk = rows.match(node, 1)
        if rk is None:
            return False
        x = _rows_view(node._inputs[0]._data, rk.n)
        if x is None:
            return False
        extra = [i._data for i in node._inputs[1:]]
        threads = self.rt.workgroup
        out, out_buf = self.template_output(node, f"{rk.op} rows of {rk.n}", debug)
        if out_buf is not None:
            xbuf, xoff = self.device_view(x)
            bufs, args = [out_buf, xbuf], []
            for present in (rk.weight, rk.bias):  # (offset, stride) of the weight, then of the bias
                if present:
                    vec = extra.pop(0)
                    vbuf, voff = self.device_view(vec)
                    bufs.append(vbuf)
                    args += [voff, vec.strides[0] // 4]
                else:
                    args += [0, 0]
            eps_bits = int(np.array(rk.eps, np.float32).view(np.uint32))
            sg = getattr(self.rt, "subgroups", False)
            self.rt.template(gpu_rows.name(rk.op, rk.weight, rk.bias, threads, sg),
                             lambda dialect: gpu_rows.source(dialect, rk.op, rk.weight, rk.bias, threads, sg),
                             bufs, (min(x.shape[0], self.rt.max_groups), 1, 1), threads,
                             [x.shape[0], rk.n, xoff, x.strides[0] // 4, x.strides[1] // 4, *args, eps_bits], debug)
        return self.realized(node, out)

    def run_qmv(self, node, debug: int) -> bool:
        p = node._params
        if p["mode"] != "affine" or not p["transpose"] or p["bits"] not in gpu_qmv.BITS \
                or len(node._inputs) != 4 or node._dtype.name != "float32":
            return False
        x, w, scales, biases = (i._data for i in node._inputs)
        if w.ndim != 2 or x.dtype != np.float32 or scales.dtype != np.float32 or biases.dtype != np.float32:
            return False
        k = x.shape[-1]
        x2 = _rows_view(x, k)
        if x2 is None or x2.shape[0] > self.rt.max_batch:
            return False
        threads = self.rt.workgroup
        per_group = threads // gpu_qmv.lanes(threads)
        n = w.shape[0]
        out, out_buf = self.template_output(node, f"qmv_b{p['bits']} {node._shape}", debug)
        if out_buf is not None:
            views = [self.device_view(v) for v in (x2, w, scales, biases)]
            args = [n, k, p["group_size"]]
            for (_, off), v in zip(views, (x2, w, scales, biases)):
                args += [off, v.strides[0] // v.itemsize, v.strides[1] // v.itemsize]
            self.rt.template(gpu_qmv.name(p["bits"], threads),
                             lambda dialect: gpu_qmv.source(dialect, p["bits"], threads),
                             [out_buf] + [b for b, _ in views], (-(-n // per_group), x2.shape[0], 1), threads,
                             args, debug)
        return self.realized(node, out)

    def run_view(self, node, debug: int) -> bool:
        """A movement primitive whose reference makes a numpy view: the view of a host buffer whose
        contents may still be on the device (kernels read it through the same device buffer), so no
        download. A reference that had to copy ran on stale data: the numpy step redoes it."""
        if node._prim.compute or len(node._inputs) != 1:
            return False
        src = node._inputs[0]._data
        out = node._prim.ref(node._params, src)
        if root_of(out) is not root_of(src):
            return False
        self.last_plan.append(("view", node._prim.name))
        if debug:
            print(f"[mlxarm] {self.name} view {node._prim.name} {node._shape}", file=sys.stderr)
        node._data = out
        node._inputs = ()
        node._params = None
        return True

    def run_rope(self, node, debug: int) -> bool:
        p = node._params
        dtype = node._dtype.name
        x, off = node._inputs[0]._data, node._inputs[1]._data
        if dtype not in gpu_attention.DTYPES or off.dtype.kind not in "iu" or off.itemsize not in (4, 8):
            return False
        B, L, D = x.shape[0], x.shape[-2], x.shape[-1]
        M = int(np.prod(x.shape[1:-2], dtype=np.int64))
        xv = x.reshape(B, M, L, D)
        if root_of(xv) is not root_of(x):
            return False
        freqs = node._inputs[2]._data if p["freqs"] else _inv_freq(p["base"], p["dims"])
        threads = self.rt.workgroup
        per = 1 if dtype == "float32" else 2
        # One offset on the host is an argument; offsets per batch element, or computed on the device,
        # are read from their buffer.
        offsets = off.size != 1 or id(root_of(off)) in self.resident.stale \
            or not -2 ** 31 <= int(off.reshape(-1)[0]) < 2 ** 31
        out, out_buf = self.template_output(node, f"rope_{dtype} {node._shape}", debug)
        if out_buf is not None:
            (xbuf, xoff), (fbuf, foff) = self.device_view(xv), self.device_view(freqs)
            bufs = [out_buf, xbuf, fbuf]
            if offsets:
                obuf, ooff = self.device_view(off)
                bufs.insert(2, obuf)
                words = off.itemsize // 4  # an int64 offset is read by its low word
                o_args = [ooff * words, off.strides[0] // 4 if off.ndim == 1 and off.size > 1 else 0]
            else:
                o_args = [int(off.reshape(-1)[0]), 0]
            scale_bits = int(np.array(p["scale"], np.float32).view(np.int32))
            args = [out.size, D, p["dims"], L, M, xoff, *(st // x.itemsize for st in xv.strides), *o_args, foff,
                    scale_bits]
            groups = min(-(-out.size // (per * threads)), self.rt.max_groups)
            self.rt.template(gpu_attention.rope_name(p["traditional"], p["freqs"], offsets, dtype, threads),
                             lambda dialect: gpu_attention.rope_source(dialect, p["traditional"], p["freqs"],
                                                                      offsets, dtype, threads),
                             bufs, (groups, 1, 1), threads, args, debug)
        return self.realized(node, out)

    def run_sdpa(self, node, debug: int) -> bool:
        p = node._params
        dtype = node._dtype.name
        if p["sinks"] or dtype not in gpu_attention.DTYPES:
            return False
        q, k, v = (i._data for i in node._inputs[:3])
        mask = p["mask"] or "none"
        if mask == "array":
            m = node._inputs[3]._data
            mask = "bool" if m.dtype == np.bool_ else "float" if m.dtype == q.dtype else None
            if mask is None:
                return False
        B, Hq, L, D = q.shape
        S, Dv = k.shape[2], v.shape[3]
        cap = gpu_attention.head_capacity(D, Dv)
        if cap > 1024 or not (q.dtype == k.dtype == v.dtype == node._dtype.np_storage):
            return False
        threads = self.rt.workgroup
        out, out_buf = self.template_output(node, f"sdpa_{mask}_{dtype} {node._shape} keys {S}", debug)
        if out_buf is not None:
            arrays = [q, k, v] + ([node._inputs[3]._data] if mask in ("bool", "float") else [])
            views = [self.device_view(a) for a in arrays]
            args = [Hq // k.shape[1], L, S, D, Dv, int(np.array(p["scale"], np.float32).view(np.int32))]
            for (_, offset), a in zip(views, arrays):
                args += [offset, *(st // a.itemsize for st in a.strides)]
            args += [0] * (len(gpu_attention.SDPA_ARGS) - 2 - len(args))
            rows = B * Hq * L
            args += [Hq, rows]
            self.rt.template(gpu_attention.sdpa_name(mask, cap, dtype, threads),
                             lambda dialect: gpu_attention.sdpa_source(dialect, mask, cap, dtype, threads),
                             [out_buf] + [b for b, _ in views], (min(rows, self.rt.max_groups), 1, 1), threads,
                             args, debug)
        return self.realized(node, out)

    def run_slice_update(self, node, debug: int) -> bool:
        """``dynamic_slice_update`` (a KV cache's write) written into the input's own device buffer
        when nothing else can see it (as ``llvm.run_in_place`` decides, MLX's buffer donation), else
        into a fresh output. The start indices are read on the host: they are the caller's position."""
        x_node = node._inputs[0]
        x, upd, start = (i._data for i in node._inputs)
        size = x.itemsize
        if 8 * size not in gpu_update.BITS or x.ndim > gpu_update.RANK or upd.itemsize != size \
                or id(root_of(start)) in self.resident.stale:
            return False
        begin = window_start(node._params["axes"], start, x.shape, upd.shape)
        pad = (1,) * (gpu_update.RANK - x.ndim)
        zeros = (0,) * (gpu_update.RANK - x.ndim)
        u_shape = pad + upd.shape
        u_strides = zeros + tuple(st // size for st in upd.strides)
        begin = zeros + begin
        # x is held by node._inputs, this frame and getrefcount's argument; its buffer by x, this
        # frame and getrefcount's argument. One more of either is a user, another node or a view.
        donate = sys.getrefcount(x_node) <= 3 and sys.getrefcount(x) <= 3 and x.base is None \
            and x.flags.writeable and x.flags.c_contiguous
        del x_node
        if donate:
            self.last_plan.append(("kernel", f"slice_update_into {node._shape}"))
            if debug:
                print(f"[mlxarm] {self.name} kernel slice_update_into {node._shape}", file=sys.stderr)
            total = upd.size
            if total:
                (xbuf, _), (ubuf, uoff) = self.device_view(x), self.device_view(upd)
                self.resident.written(x, xbuf)
                self._launch_update("into", size, [xbuf, ubuf], u_shape, begin, u_shape, uoff, u_strides, 0,
                                    (0,) * 4, zeros + tuple(st // size for st in x.strides), total, debug)
                self.kernels_run += 1
            node._data = x
            node._inputs = ()
            node._params = None
            return True
        out, out_buf = self.template_output(node, f"slice_update_copy {node._shape}", debug)
        if out_buf is not None:
            (xbuf, xoff), (ubuf, uoff) = self.device_view(x), self.device_view(upd)
            self._launch_update("copy", size, [out_buf, xbuf, ubuf], pad + x.shape, begin, u_shape, uoff,
                                u_strides, xoff, zeros + tuple(st // size for st in x.strides),
                                zeros + tuple(st // size for st in out.strides), out.size, debug)
        return self.realized(node, out)

    def _launch_update(self, mode, size, bufs, space, begin, u_shape, uoff, u_strides, xoff, x_strides, o_strides,
                       total, debug) -> None:
        threads = self.rt.workgroup
        bits = 8 * size
        args = [*space, *begin, *u_shape, uoff, *u_strides, xoff, *x_strides, *o_strides, total]
        self.rt.template(gpu_update.name(mode, bits, threads),
                         lambda dialect: gpu_update.source(dialect, mode, bits, threads), bufs,
                         (min(-(-total // threads), self.rt.max_groups), 1, 1), threads, args, debug)

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


def _rows_view(arr: np.ndarray, n: int):
    """``arr`` as a (rows, n) view (any strides), or None where numpy would have to copy."""
    if n == 0 or arr.size == 0:
        return arr.reshape(-1, max(n, 1))[:0] if n else None
    flat = arr.reshape(-1, n)
    return flat if np.shares_memory(flat, arr) else None


_INV_FREQ: dict = {}


def _inv_freq(base: float, dims: int) -> np.ndarray:
    """Rope's inverse frequencies (``fast.rope_inv_freq``), kept per (base, dims) so that their device
    buffer is uploaded once."""
    key = (base, dims)
    arr = _INV_FREQ.get(key)
    if arr is None:
        arr = _INV_FREQ[key] = rope_inv_freq(base, dims)
    return arr


def _outer_batches(batch: tuple, per_outer: int):
    """(index into the batch dims but the last, element offset of that index's output) pairs: a
    template covers the last batch dim in one launch."""
    if len(batch) <= 1:
        yield (), 0
        return
    for k, idx in enumerate(np.ndindex(*batch[:-1])):
        yield idx, k * per_outer


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
