"""What the GPU executors (OpenCL, Vulkan) share: planning an eval, keeping buffers on the device, falling
back to numpy, and replaying recorded evals.

A ``GPUExecutor`` plans an eval with ``codegen.fuse``, lowers each kernel group with ``codegen.lower``
and hands it to its ``runtime`` (allocate, upload, compile with a disk cache, record a launch, submit,
download). Every array a kernel reads or writes has a device buffer that lives as long as the array's
host buffer (``Resident``): an input already on the device is not uploaded again, and a kernel output
stays on the device for the kernels of later evals. A node is given its host buffer (uninitialised)
as soon as its kernel is recorded, so later groups can be lowered against it; the recorded work is
submitted once when the eval ends. An output stays on the device only (``Resident.stale``) until the
host reads it (``to_host``, through ``core.graph.host_data``), a numpy step reads it, or another
executor runs an eval (``backend.run_order``): a chain of evals moves no data back to the host. The
outputs an eval is told the host reads next (``run``'s ``read``) come back in its own submission.

A reduction into few outputs runs in two stages (``reduction_parts``): many workgroups per output
write partial results, a second kernel combines them. Matmul, softmax/rms_norm/layer_norm and
argmax/argmin over the last axis, affine quantized matvec, rope, attention and the KV cache's
slice_update, which fusion cannot make fast, run as kernel templates (``kernels.gpu_matmul``,
``gpu_rows``, ``gpu_argmax``, ``gpu_qmv``, ``gpu_attention``, ``gpu_update``) through the runtime's
template launch. Views (reshape, transpose, ...) of buffers still on the device stay views, read by
kernels through the same buffer.

Nodes and kernels the runtime cannot run (a dtype it lacks, a primitive no kernel covers) run on the
numpy executor: their inputs are downloaded first, their outputs uploaded lazily when a kernel reads them.

Replay. Planning and lowering cost far more host time than recording a launch (an LLM decode step:
about 500 kernels, most of them templates), so each eval is recorded as a list of steps, kept under
its graph's structural key (``fuse.signature``: primitives, params, shapes, dtypes, the leaves'
layouts) once that structure comes a second time, as the LLVM executor keeps its evals. A later eval
of that structure (a compiled decode step) replays the steps on its own buffers: a fused kernel
(``_Fused``) finds each input buffer again as a byte offset from the first element of an eval leaf
or of an earlier step's output, a template (``_Template``) as a byte offset from one of its node's
inputs; only the device buffers, their element offsets, the outputs and what a template reads on the
host (a slice update's start indices, unless one value read from its buffer) are found again. What a step decided from more
than the structure is checked before it launches (the layout of an input a numpy step made, a buffer
numpy cannot hand over as it is, offsets past 32 bits, a template's decision on the host values or
on whether an input's buffer is free); a step whose check fails, and a step no replay covers (numpy,
a group that read a copy), runs as when recording.
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
from ..kernels import gpu_argmax, gpu_attention, gpu_matmul, gpu_qmv, gpu_rows, gpu_update
from . import device_writers
from .numpy_executor import NumpyExecutor


# Primitives a kernel template (``kernels.gpu_*``) may run.
_TEMPLATES = frozenset({"matmul", "quantized_matmul", *rows.OPS, *gpu_argmax.OPS, *lower.VIEWS, "rope",
                        "scaled_dot_product_attention", "dynamic_slice_update", "slice_update"})
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


class _Mirror(weakref.ref):
    """A weak reference to a host buffer with a device mirror (``Resident``), under ``key``: its id."""
    __slots__ = ("key",)


class Resident:
    """Device buffers keyed by the host buffer they mirror; an entry dies with its host buffer."""

    def __init__(self):
        self.buffers: dict = {}  # id(root) -> device buffer
        self.refs: dict = {}  # id(root) -> _Mirror of root, whose death drops the entry
        self.stale: dict = {}  # id(root) -> (weakref to root, device buffer): host copy not written yet
        self.on_drop = None  # called with a dead host buffer's device buffer

    def get(self, root):
        return self.buffers.get(id(root))

    def put(self, root, buf, host_stale: bool) -> None:
        key = id(root)
        ref = _Mirror(root, self._drop)
        ref.key = key
        self.buffers[key] = buf
        self.refs[key] = ref
        if host_stale:
            self.stale[key] = (ref, buf)

    def written(self, root, buf) -> None:
        """A kernel wrote ``root``'s device buffer ``buf`` in place: its host copy is stale."""
        self.stale[id(root)] = (self.refs.get(id(root)) or weakref.ref(root), buf)

    def detach(self, root, release: bool) -> None:
        """Forget ``root``'s device buffer (its host copy is current): handed to ``on_drop`` when
        ``release``, else kept by whoever took it (a bound call, ``gpu_bind``)."""
        key = id(root)
        self.refs.pop(key, None)
        self.stale.pop(key, None)
        buf = self.buffers.pop(key, None)
        if release and buf is not None and self.on_drop is not None:
            self.on_drop(buf)

    def _drop(self, ref) -> None:
        key = ref.key
        if self.refs.get(key) is not ref:
            return  # an entry made since for another buffer of the same id
        del self.refs[key]
        buf = self.buffers.pop(key, None)
        self.stale.pop(key, None)
        if buf is not None and self.on_drop is not None:
            self.on_drop(buf)


# Recorded evals kept for replay (least recently used dropped first) and structures seen once
# remembered by hash, as the LLVM executor keeps them.
_EVALS_KEPT = 32
_SEEN_KEPT = 4096
# Template arguments (offsets, strides, sizes) are 32-bit integers.
_INT32 = 2 ** 31
# How a recorded step is replayed: as when recording (``_FRESH``), on numpy, as a view, as a fused
# kernel (``_Fused``) or as a template (``_Template``).
_FRESH, _NUMPY, _VIEW, _FUSED, _TEMPLATE = range(5)
OUT = -1  # a template launch's buffer: the node's output


class _Located(weakref.ref):
    """A weak reference to an eval leaf's host array holding where ``locate`` found it (``key``: the
    array's id, under which ``GPUExecutor.located`` keeps it while the array lives)."""
    __slots__ = ("key", "loc")


class _Fused:
    """A fused kernel as a replay launches it again: per input buffer its source (``(0, i)``: the eval's
    leaf i, ``(1, k)``: the output of recorded step k), the byte offset of the array the kernel reads
    from that source's first element and the element size its offset counts in; the layout (step,
    strides) a source made by a numpy or view step must have, as the kernel was lowered for it."""
    __slots__ = ("kernel", "prog", "reads", "checks", "shape", "storage")

    def __init__(self, kernel, prog, reads, checks, shape, storage):
        self.kernel, self.prog, self.reads, self.checks = kernel, prog, reads, checks
        self.shape, self.storage = shape, storage


class _Fill:
    """An integer argument filled in per launch: the element offset of view ``view`` times ``scale``,
    or (``view`` None) item ``value`` of the values the template's ``guard`` gives."""
    __slots__ = ("view", "scale", "value")

    def __init__(self, view, scale: int = 1, value: int = 0):
        self.view, self.scale, self.value = view, scale, value


class _Template:
    """A node run as kernel template launches: built by its ``run_*`` method (``GPUExecutor.bind`` adds
    the buffers it reads, ``launch`` the launches), launched by ``GPUExecutor.fire`` and again by each
    replay (``relaunch_template``).

    A view is (input index or None for a constant array, byte offset from that input's first element
    or the constant array, element size, alignment its offset was checked for or 0, whether it had it,
    where a replay finds the input's buffer (as ``_Fused`` reads)).
    A launch is (template kernel, buffers: view indices or ``OUT``, workgroups, threads, integer
    arguments, (position, view, scale, value) of each argument filled in per launch). ``guard(node)``,
    when set, gives the values a replay reads on the host, or None when a decision the runner made from
    them no longer holds. ``into``: the view whose buffer the output is (an update in place).
    ``layouts``: (input index, strides) of each input a numpy or view step made, as when recording."""
    __slots__ = ("label", "shape", "storage", "views", "locs", "launches", "guard", "into", "layouts",
                 "replayable")

    def __init__(self, node, label: str):
        self.label = label
        self.shape, self.storage = node._shape, node._dtype.np_storage
        self.views: list = []
        self.locs: list = []  # (device buffer, element offset) per view, for the first launch only
        self.launches: list = []
        self.guard = None
        self.into = None
        self.layouts = None
        self.replayable = True

    def offset(self, view: int, scale: int = 1) -> _Fill:
        return _Fill(view, scale)

    def value(self, k: int) -> _Fill:
        return _Fill(None, 1, k)

    def launch(self, name: str, render, bufs: list, groups: tuple, threads: int, args: list) -> None:
        """Add a launch of template ``name`` (``render(dialect)`` gives its source); ``args`` are ints
        or ``offset``/``value`` fills."""
        fills = tuple((pos, a.view, a.scale, a.value) for pos, a in enumerate(args) if type(a) is _Fill)
        args = tuple(0 if type(a) is _Fill else _int32(a) for a in args)
        self.launches.append(((name, render), tuple(bufs), groups, threads, args, fills))


def _int32(v) -> int:
    """``v`` as a 32-bit argument: bit patterns above 2**31 travel as their negative twins."""
    v = int(v)
    return v if -_INT32 <= v < _INT32 else (v + _INT32) % (2 * _INT32) - _INT32


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
        # fuse.signature key -> recorded steps, least recently used first
        self.evals: dict = {}
        self.seen: set = set()  # hashes of the structures planned once and not kept
        self.replays = 0
        self.fallbacks = 0  # replayed steps whose check failed, run as when recording
        self.where: dict = {}  # id(node) -> where a replay finds its buffer, while recording
        self.numpy_made: set = set()  # recorded steps whose output a numpy or view step made
        self.leaves = None  # the eval's leaves (fuse.signature) while it runs
        self.leaf_ids = None
        self.located: dict = {}  # id(array) -> _Located, for eval leaves (weights live across evals)
        self.capture = None  # a bound call's capture while one runs (``gpu_bind``)
        self.bound_runs = 0  # calls of bound calls replayed as their launches (``gpu_bind``)
        device_writers.append(self)

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

    def locate(self, arr: np.ndarray):
        """(device buffer, byte offset of ``arr``'s first element in it, elements of its host buffer)
        where ``device_view`` hands ``arr``'s host buffer over as it is (C-contiguous), else None."""
        root = arr
        while isinstance(root.base, np.ndarray):
            root = root.base
        if not root.flags.c_contiguous:
            return None
        delta = 0 if root is arr else \
            arr.__array_interface__["data"][0] - root.__array_interface__["data"][0]
        buf = self.resident.get(root)
        if buf is None:
            buf = self.rt.upload(root)
            self.resident.put(root, buf, host_stale=False)
        return buf, delta, root.size

    def leaf_location(self, arr: np.ndarray):
        """``locate(arr)`` for an eval leaf, kept while ``arr`` lives: a model's weights are the leaves
        of every decode step."""
        ref = self.located.get(id(arr))
        if ref is not None and ref() is arr:
            return ref.loc
        loc = self.locate(arr)
        if loc is not None:
            ref = _Located(arr, self._forget)
            ref.key, ref.loc = id(arr), loc
            self.located[ref.key] = ref
        return loc

    def _forget(self, ref) -> None:
        if self.located.get(ref.key) is ref:
            del self.located[ref.key]

    def _drop_extent(self, key) -> None:
        hit = self.extents.pop(key, None)
        if hit is not None and self.resident.on_drop is not None:
            self.resident.on_drop(hit[1])

    def sync_host(self, keys=None, final: bool = False) -> None:
        """Submit what is recorded and write pending outputs into their host buffers: those of the host
        buffers whose ids are in ``keys``, or every one (None). With ``keys`` and none of them pending,
        it submits only when ``final`` (the eval's end)."""
        stale = self.resident.stale
        if keys is None:
            pending, self.resident.stale = stale, {}
        else:
            pending = {k: stale.pop(k) for k in keys if k in stale}
            if not pending and not final:
                return  # nothing of these is on the device only: no need to wait for the recorded work
        jobs = []
        for ref, buf in pending.values():
            root = ref()
            if root is not None:
                jobs.append((buf, root))
        self.rt.submit(jobs)

    def to_host(self, data: np.ndarray) -> None:
        """Write ``data``'s host buffer where its contents are on the device only (``core.graph.host_data``)."""
        stale = self.resident.stale
        if stale:
            key = id(root_of(data))
            if key in stale:
                self.sync_host((key,))

    # --- a compiled call bound to its state (``gpu_bind``) ---------------------------------------------
    binds_tapes = True  # binds a compiled call's tape, with no program of it (``compile._Compiled.bind``)

    def bind_call(self, state, inputs: list, free: dict, tops: list):
        """``gpu_bind.bind``: the call of ``state.tape`` on ``inputs`` bound to the inputs not at
        ``tops`` (its state, written in place by every call), or None."""
        from . import gpu_bind

        if not self._realize_views(inputs):
            return None
        return gpu_bind.bind(self, state, inputs, free, tops)

    def _realize_views(self, arrays) -> bool:
        """Make the unrealized ``arrays`` that are views of realized arrays (``tokens[None]``) on the
        host: False (stopping there) at one that is anything else."""
        for x in arrays:
            if x._data is None and (x._prim is None or x._prim.name not in lower.VIEWS
                                    or any(i._data is None for i in x._inputs) or not self.run_view(x, 0)):
                return False
        return True

    def run_bound(self, bound, given: tuple, layout: tuple):
        """One call of ``bound`` on ``given`` when they are realized (or views of realized arrays,
        made here) in ``layout`` (their strides when bound): {tape step index: fresh result}, or None."""
        if not self._realize_views(given) or tuple(x._data.strides for x in given) != layout:
            return None
        return bound.step(self, given)

    # --- one eval ------------------------------------------------------------------------------------
    def supports(self, kernel: ir.Kernel) -> bool:
        return True

    def run(self, refs, read=()) -> None:
        """Realize the nodes behind ``refs`` (topologically ordered): an eval whose graph has the
        structure of one kept before replays its recorded steps; any other is planned, lowered and
        recorded, and kept when its structure comes the second time. The outputs stay on the device,
        but for the nodes in ``read`` (the host reads them next), written to the host in the same
        submission."""
        nodes = [n for n in (r() for r in refs) if n is not None and n._data is None]
        if not nodes:
            return
        debug = int(os.environ.get("MLXARM_DEBUG", "0") or 0)
        try:
            key, leaves, counted = fuse.signature(nodes)
        except AttributeError:
            # an unrealized input that ``nodes`` lacks (a caller that hands over the roots only): the
            # plan fuses it in, and the eval is not kept
            key, leaves, counted = None, [], None
        key = fuse.Structure(key)
        self.rt.begin(key.hash if counted is not None else None)
        self.leaves, self.leaf_ids = leaves, None
        recorded = self.evals.pop(key, None) if counted is not None else None
        try:
            if recorded is not None:
                self.evals[key] = recorded  # now the most recently used
                # weakly: a node lives while something not yet computed reads it, not until the eval ends
                targets = [weakref.ref(nodes[step[1]]) for step in recorded]
                del nodes
                self.replays += 1
                if debug:
                    print(f"[mlxarm] {self.name} replay {len(recorded)} recorded steps", file=sys.stderr)
                self.replay(recorded, targets, leaves, debug)
                return
            steps = fuse.plan(nodes, caps=CAPS, uses_=counted and fuse.uses(nodes, counted))
            position = {id(n): i for i, n in enumerate(nodes)}
            del nodes
            recorded = self.record(steps, position, leaves, debug)
        finally:
            self.leaves = self.leaf_ids = None
            self.where = {}
            # outputs stay on the device until the host reads them (``to_host``)
            self.sync_host({id(root_of(n._data)) for n in read if n._data is not None}, final=True)
        # A structure is kept on its second sighting: a graph seen once costs a hash, not a recording.
        if counted is None:
            return
        if key.hash not in self.seen:
            if len(self.seen) >= _SEEN_KEPT:
                self.seen.clear()
            self.seen.add(key.hash)
            return
        if len(self.evals) >= _EVALS_KEPT:
            del self.evals[next(iter(self.evals))]  # the least recently used
        self.evals[key] = recorded

    def record(self, steps: list, position: dict, leaves: list, debug: int) -> tuple:
        """Realize the planned ``steps``; returns them as recorded steps: (how, node position, step
        kind, ``_Fused`` or ``_Template`` or None, the ``last_plan`` entries it made)."""
        self.last_plan = []
        self.where = {id(n): (0, i) for i, n in enumerate(leaves)}
        self.numpy_made = set()
        recorded = []
        for idx in range(len(steps)):
            node, kind = steps[idx].node, steps[idx].kind
            steps[idx] = None  # intermediates die as soon as their consumers are recorded
            mark = len(self.last_plan)
            how, what = (_FRESH, None) if node._data is not None else self.step(node, kind, debug)
            if how in (_FRESH, _NUMPY, _VIEW):
                self.numpy_made.add(len(recorded))
            self.where[id(node)] = (1, len(recorded))
            recorded.append((how, position[id(node)], kind, what, tuple(self.last_plan[mark:])))
            del node, what
        return tuple(recorded)

    def step(self, node, kind: str, debug: int) -> tuple:
        """Realize one planned step, as when recording; returns how a replay runs it again (``_FRESH``,
        ``_NUMPY``, ``_VIEW``, ``_FUSED`` or ``_TEMPLATE``) and its ``_Fused`` or ``_Template``."""
        if kind == "numpy":
            if node._prim is not None and node._prim.name in lower.VIEWS and self.run_view(node, debug):
                return _VIEW, None
            done = self.run_template(node, debug)
            if done is False:
                self.run_numpy([node], debug)
                return _NUMPY, None
            return (_FRESH, None) if done is True else (_TEMPLATE, done)
        sources: list = []
        kernel, arrays, out = self.lower(node, sources)
        if not self.supports(kernel):
            self.run_numpy(schedule.toposort([node]), debug)
            return _FRESH, None
        self.last_plan.append(("kernel", ir.summary(kernel)))
        if debug:
            print(f"[mlxarm] {self.name} kernel {ir.summary(kernel)}", file=sys.stderr)
        what = None
        if out.size:
            what = self.launch_fused(kernel, arrays, out, sources, debug)
            self.kernels_run += 1
        count_buffer(out)
        node._data = out
        node._inputs = ()
        node._params = None
        return (_FUSED, what) if what is not None else (_FRESH, None)

    def lower(self, node, sources: list | None = None) -> tuple:
        """``lower.lower``, after the host copies it needs are written. Lowering applies views to host
        buffers; a view numpy can only make by copying (a reshape of a transpose) copies whatever the
        host buffer holds, so a copy made from an output still on the device is redone after a sync.
        ``sources`` receives, per input buffer, its leaf node and byte offset (``lower.lower``)."""
        kernel, arrays, out = lower.lower(node, 1, sources)
        stale = self.resident.stale
        if stale:
            leaves = {id(root_of(leaf._data)) for leaf in _leaves(node)}
            if leaves & stale.keys() and any(id(root_of(a)) not in leaves for a in arrays):
                self.sync_host(leaves)
                if sources is not None:
                    sources.clear()
                kernel, arrays, out = lower.lower(node, 1, sources)
        return kernel, arrays, out

    def launch_fused(self, kernel, arrays, out, sources: list, debug: int):
        """Launch a fused kernel; returns it as a ``_Fused`` for replays, or None where a replay must
        lower the group again (it read a copy, or a buffer numpy cannot hand over as it is)."""
        prog = self.rt.program(kernel, debug)
        views = [self.device_view(a) for a in arrays]
        out_buf = self.rt.alloc(out.nbytes)
        self.resident.put(out, out_buf, host_stale=True)
        self.rt.launch(prog, kernel, [out_buf] + [b for b, _ in views], [0] + [o for _, o in views])
        reads, checks = [], []
        for (leaf, rel), arr, (buf, off) in zip(sources, arrays, views):
            where = self.where.get(id(leaf))
            if rel is None or where is None:
                return None
            loc = self.locate(leaf._data)  # what a replay finds: it must be what was launched
            if loc is None or loc[0] is not buf or (loc[1] + rel) % arr.itemsize \
                    or (loc[1] + rel) // arr.itemsize != off:
                return None
            reads.append((where, rel, arr.itemsize))
            if where[0] == 1 and where[1] in self.numpy_made:
                checks.append((where[1], leaf._data.strides))
        return _Fused(kernel, prog, tuple(reads), tuple(checks), out.shape, out.dtype)

    # --- replay ----------------------------------------------------------------------------------------
    def replay(self, recorded: tuple, targets: list, leaves: list, debug: int) -> None:
        """Run ``recorded`` steps on ``targets`` (weak references to the node each realizes) reading
        ``leaves``. A node that died before its turn is not computed: nothing reads it."""
        self.last_plan = plan = []
        for (how, _, kind, what, entries), ref in zip(recorded, targets):
            node = ref()
            if node is None or node._data is not None:
                continue
            if how == _TEMPLATE:
                if self.relaunch_template(what, node):
                    plan.extend(entries)
                    continue
            elif how == _FUSED:
                if self.relaunch_fused(what, node, leaves, targets):
                    plan.extend(entries)
                    continue
            elif how == _VIEW:
                if not self.run_view(node, debug):
                    self.run_numpy([node], debug)
                continue
            elif how == _NUMPY:
                self.run_numpy([node], debug)
                continue
            if how != _FRESH:
                self.fallbacks += 1
            self.step(node, kind, debug)

    def relaunch_fused(self, f: _Fused, node, leaves: list, targets: list) -> bool:
        """Launch recorded fused kernel ``f`` for ``node``; False (nothing done) where a check fails."""
        for k, strides in f.checks:
            if targets[k]()._data.strides != strides:
                return False  # a numpy step laid its output out differently this time
        bufs, offsets = [None], [0]
        for source, rel, size in f.reads:
            where, i = source
            loc = self.leaf_location(leaves[i]._data) if where == 0 else self.locate(targets[i]()._data)
            if loc is None:
                return False
            at = loc[1] + rel
            if at % size:
                return False
            bufs.append(loc[0])
            offsets.append(at // size)
        out = np.empty(f.shape, f.storage)
        bufs[0] = self.rt.alloc(out.nbytes)
        self.resident.put(out, bufs[0], host_stale=True)
        self.rt.launch(f.prog, f.kernel, bufs, offsets)
        self.kernels_run += 1
        count_buffer(out)
        node._data = out
        node._inputs = ()
        node._params = None
        return True

    def relaunch_template(self, t: _Template, node) -> bool:
        """Launch recorded template ``t`` for ``node``; False (nothing done) where a check fails."""
        values = ()
        if t.guard is not None:
            values = t.guard(node)  # first: it may count references to the inputs
            if values is None:
                return False
        ins = node._inputs
        for i, strides in t.layouts:
            if ins[i]._data.strides != strides:
                return False  # a numpy step laid its output out differently this time
        locs = []
        for i, rel, size, align, aligned, source in t.views:
            if i is None:
                locs.append(self.device_view(rel))
                continue
            loc = self.leaf_location(ins[i]._data) if source[0] == 0 else self.locate(ins[i]._data)
            if loc is None or loc[2] >= _INT32:
                return False
            at = loc[1] + rel
            if at % size:
                return False
            at //= size
            if align and (at % align == 0) != aligned:
                return False
            locs.append((loc[0], at))
        self.launch_template(node, t, locs, values)
        return True

    # --- kernel templates --------------------------------------------------------------------------
    def run_template(self, node, debug: int):
        """Record ``node`` as a hand-written kernel (``kernels.gpu_*``) when one covers it: matmul
        (float32, float16, bfloat16), float32 softmax/rms_norm/layer_norm and argmax/argmin over the
        last axis, affine quantized matvec, rope and attention (float32, float16), slice_update at
        array positions (1-, 2- or 4-byte elements). Returns False when none covers it, else its ``_Template`` for
        replays (True where a replay must run it afresh)."""
        name = node._prim.name if node._prim is not None else None
        # a reshape that is no view (``run_view`` tried first) is copied; other views are not templates
        if name not in _TEMPLATES or (name in lower.VIEWS and name != "reshape"):
            return False
        # Template arguments (offsets, strides) are 32-bit integers.
        if not all(root_of(i._data).size < _INT32 for i in node._inputs) \
                or np.prod(node._shape, dtype=np.int64) >= _INT32:
            return False
        if name == "reshape":
            return self.run_reshape_copy(node, debug)
        if name == "matmul":
            return self.run_matmul(node, debug)
        if name in rows.OPS:
            return self.run_rows(node, debug)
        if name in gpu_argmax.OPS:
            return self.run_argmax(node, debug)
        if name == "quantized_matmul":
            return self.run_qmv(node, debug)
        if name == "rope":
            return self.run_rope(node, debug)
        if name == "scaled_dot_product_attention":
            return self.run_sdpa(node, debug)
        if name == "dynamic_slice_update":
            return self.run_slice_update(node, debug)
        if name == "slice_update":
            return self.run_static_slice_update(node, debug)
        return False

    def bind(self, t: _Template, node, index, arr: np.ndarray, align: int = 0) -> tuple:
        """Add ``arr`` (a view of the buffer of ``node``'s input ``index``; ``index`` None: a constant
        array) to the buffers template ``t`` reads; returns (its view number, its element offset).
        ``align``: a launch depends on whether the offset is a multiple of it (replays check it)."""
        buf, off = self.device_view(arr)
        if index is None:
            t.views.append((None, arr, arr.itemsize, 0, False, None))
        else:
            # what a replay finds (``relaunch_template``) must be what is launched now
            data = node._inputs[index]._data
            source = self.where.get(id(node._inputs[index]))
            loc = self.locate(data)
            rel = arr.__array_interface__["data"][0] - data.__array_interface__["data"][0]
            if source is None or loc is None or loc[0] is not buf or (loc[1] + rel) % arr.itemsize \
                    or (loc[1] + rel) // arr.itemsize != off or root_of(arr) is not root_of(data):
                t.replayable = False
            del data
            t.views.append((index, rel, arr.itemsize, align, bool(align) and off % align == 0, source))
        t.locs.append((buf, off))
        return len(t.views) - 1, off

    def fire(self, node, t: _Template, debug: int, values: tuple = ()):
        """Launch template ``t``, built for ``node`` by its runner (``values``: what ``t.guard`` would
        give now); returns ``t`` for replays, or True where a replay must run the node afresh."""
        self.last_plan.append(("kernel", t.label))
        if debug:
            print(f"[mlxarm] {self.name} kernel {t.label}", file=sys.stderr)
        t.launches = [(self.rt.template_kernel(*launch[0], debug),) + launch[1:] for launch in t.launches]
        made = self.numpy_made
        layouts = []
        for k, i in enumerate(node._inputs):
            source = self.where.get(id(i))
            if source is None:
                t.replayable = False
            elif source[0] == 1 and source[1] in made:
                layouts.append((k, i._data.strides))
        t.layouts = tuple(layouts)
        locs, t.locs = t.locs, None
        self.launch_template(node, t, locs, values)
        return t if t.replayable else True

    def launch_template(self, node, t: _Template, locs: list, values: tuple) -> None:
        """Make ``node``'s output (or take its input's buffer, ``t.into``) and launch ``t`` on the
        buffers and offsets ``locs`` of its views."""
        if t.into is not None:
            out, out_buf = node._inputs[0]._data, locs[t.into][0]
            if t.launches:
                self.resident.written(out, out_buf)
        else:
            out, out_buf = np.empty(t.shape, t.storage), None
            if out.size:
                out_buf = self.rt.alloc(out.nbytes)
                self.resident.put(out, out_buf, host_stale=True)
        if out_buf is not None and t.launches:
            self.kernels_run += 1
            run = self.rt.run_template
            for kernel, bufs, groups, threads, args, fills in t.launches:
                if fills:
                    args = list(args)
                    for pos, view, scale, k in fills:
                        args[pos] = values[k] if view is None else \
                            locs[view][1] if scale == 1 else _int32(locs[view][1] * scale)
                run(kernel, [out_buf if b == OUT else locs[b][0] for b in bufs], groups, threads, args)
        if t.into is None:
            count_buffer(out)
        node._data = out
        node._inputs = ()
        node._params = None

    def run_matmul(self, node, debug: int):
        tiling = self.rt.matmul_tiling
        a, b = node._inputs
        dtype = node._dtype.name
        if tiling is None or dtype not in gpu_matmul.DTYPES or not (dtype == a._dtype.name == b._dtype.name):
            return False
        batch = node._shape[:-2]
        m, n = node._shape[-2:]
        ad = np.broadcast_to(a._data, batch + a._data.shape[-2:])
        bd = np.broadcast_to(b._data, batch + b._data.shape[-2:])
        del a, b
        inner = batch[-1] if batch else 1
        if inner > self.rt.max_batch:
            return False
        # float16 on cooperative matrices where the Vulkan device has them (kernels.gpu_matmul.coop_glsl).
        coop = getattr(self.rt, "coop_tiling", None) if dtype == "float16" else None
        t = _Template(node, f"gemm_{dtype}{' coopmat' if coop else ''} {node._shape}")
        if m * n * int(np.prod(batch, dtype=np.int64)):
            for idx, at in _outer_batches(batch, m * n * inner):
                a3 = ad[idx] if batch else ad[None]
                b3 = bd[idx] if batch else bd[None]
                # the cooperative-matrix kernel's vec variant needs offsets in whole 8-element steps
                (va, aoff), (vb, boff) = self.bind(t, node, 0, a3, 8 if coop else 0), \
                    self.bind(t, node, 1, b3, 8 if coop else 0)
                sa = [st // a3.itemsize for st in a3.strides]
                sb = [st // b3.itemsize for st in b3.strides]
                k = a3.shape[-1]
                a_rows, b_rows = abs(sa[2]) == 1 or k == 1, abs(sb[2]) == 1 or n == 1
                args = [m, n, k, at, t.offset(va), *sa, t.offset(vb), *sb]
                if coop:
                    vec = gpu_matmul.coop_vec_ok(k, n, aoff, sa, boff, sb)
                    t.launch(gpu_matmul.coop_name(coop, vec, a_rows, b_rows),
                             lambda dialect, vec=vec, a_rows=a_rows, b_rows=b_rows:
                             gpu_matmul.coop_glsl(coop, vec, a_rows, b_rows),
                             [OUT, va, vb], (-(-n // coop.bn), -(-m // coop.bm), inner), coop.threads, args)
                    continue
                t.launch(gpu_matmul.name(tiling, a_rows, b_rows, dtype),
                         lambda dialect, a_rows=a_rows, b_rows=b_rows:
                         gpu_matmul.source(dialect, tiling, a_rows, b_rows, dtype),
                         [OUT, va, vb], (-(-n // tiling.bn), -(-m // tiling.bm), inner), tiling.threads, args)
        del ad, bd
        return self.fire(node, t, debug)

    def run_rows(self, node, debug: int):
        rk = rows.match(node, 1, ("float32",))  # the GPU row templates are float32
        if rk is None:
            return False
        got = self._row_template(node, rk.n, f"{rk.op} rows of {rk.n}")
        if got is None:
            return False
        t, x, vx = got
        threads = self.rt.workgroup
        if vx is not None:
            bufs, args = [OUT, vx], []
            index = 1
            for present in (rk.weight, rk.bias):  # (offset, stride) of the weight, then of the bias
                if present:
                    vec = node._inputs[index]._data
                    v, _ = self.bind(t, node, index, vec)
                    index += 1
                    bufs.append(v)
                    args += [t.offset(v), vec.strides[0] // 4]
                else:
                    args += [0, 0]
            eps_bits = int(np.array(rk.eps, np.float32).view(np.uint32))
            sg = getattr(self.rt, "subgroups", False)
            groups, lead = self._row_grid(t, x, vx)
            t.launch(gpu_rows.name(rk.op, rk.weight, rk.bias, threads, sg),
                     lambda dialect: gpu_rows.source(dialect, rk.op, rk.weight, rk.bias, threads, sg),
                     bufs, groups, threads, [*lead, *args, eps_bits])
        del x
        return self.fire(node, t, debug)

    def _row_template(self, node, n: int, label: str):
        """(template, ``node``'s input 0 viewed as rows of ``n``, its view number in the template or None
        when it is empty), or None where numpy cannot view the input as rows without copying."""
        x = _rows_view(node._inputs[0]._data, n)
        if x is None:
            return None
        t = _Template(node, label)
        return t, x, (self.bind(t, node, 0, x)[0] if x.size else None)

    def _row_grid(self, t: _Template, x: np.ndarray, vx) -> tuple:
        """(workgroups, leading arguments) of a row template over float32 rows ``x`` (rows, n), bound
        as view ``vx``: a workgroup per row up to the device's limit; rows, n, x's offset and its row
        and column strides."""
        return (min(x.shape[0], self.rt.max_groups), 1, 1), \
            [x.shape[0], x.shape[1], t.offset(vx), x.strides[0] // 4, x.strides[1] // 4]

    def run_argmax(self, node, debug: int):
        """argmax/argmin of float32 data over its last axis (one row per output element)."""
        op = node._prim.name
        src = node._inputs[0]
        x = src._data
        axes = node._params["axes"]
        if src._dtype.name != "float32" or node._dtype.name != "uint32" or x.ndim == 0 or len(axes) != 1 \
                or axes[0] % x.ndim != x.ndim - 1 or x.shape[-1] == 0:
            return False
        n = x.shape[-1]
        del x
        got = self._row_template(node, n, f"{op} rows of {n}")
        if got is None:
            return False
        t, xr, vx = got
        if vx is not None:
            threads = self.rt.workgroup
            groups, lead = self._row_grid(t, xr, vx)
            t.launch(gpu_argmax.name(op, threads), lambda dialect: gpu_argmax.source(dialect, op, threads),
                     [OUT, vx], groups, threads, lead)
        del xr
        return self.fire(node, t, debug)

    def run_qmv(self, node, debug: int):
        p = node._params
        if p["mode"] != "affine" or not p["transpose"] or p["bits"] not in gpu_qmv.BITS \
                or len(node._inputs) != 4 or node._dtype.name != "float32":
            return False
        x, w, scales, biases = (i._data for i in node._inputs)
        # float32 scales and biases, or float16 ones the product widens (``quantized_matmul``)
        half = scales.dtype == biases.dtype == np.float16 and p["sdtype"] == p["bdtype"] == "float32"
        if w.ndim != 2 or x.dtype != np.float32 or not (half or scales.dtype == biases.dtype == np.float32):
            return False
        k = x.shape[-1]
        x2 = _rows_view(x, k)
        if x2 is None or x2.shape[0] > self.rt.max_batch:
            return False
        threads = self.rt.workgroup
        per_group = threads // gpu_qmv.lanes(threads)
        n = w.shape[0]
        t = _Template(node, f"qmv_b{p['bits']} {node._shape}")
        if x2.shape[0] * n:
            args = [n, k, p["group_size"]]
            bufs = [OUT]
            for index, v in enumerate((x2, w, scales, biases)):
                view, _ = self.bind(t, node, index, v)
                bufs.append(view)
                args += [t.offset(view), v.strides[0] // v.itemsize, v.strides[1] // v.itemsize]
            bits = p["bits"]
            t.launch(gpu_qmv.name(bits, threads, half), lambda dialect: gpu_qmv.source(dialect, bits, threads, half),
                     bufs, (-(-n // per_group), x2.shape[0], 1), threads, args)
        del x, w, scales, biases, x2
        return self.fire(node, t, debug)

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

    def run_rope(self, node, debug: int):
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
        # The kernel reads the offset from its buffer, so that its launch is the same at every position
        # (a bound decode step replays it, ``gpu_bind``).
        t = _Template(node, f"rope_{dtype} {node._shape}")
        if x.size:
            vx, _ = self.bind(t, node, 0, xv)
            vf, _ = self.bind(t, node, 2 if p["freqs"] else None, freqs)
            vo, _ = self.bind(t, node, 1, off)
            bufs = [OUT, vx, vo, vf]
            words = off.itemsize // 4  # an int64 offset is read by its low word
            o_args = [t.offset(vo, words), off.strides[0] // 4 if off.ndim == 1 and off.size > 1 else 0]
            scale_bits = int(np.array(p["scale"], np.float32).view(np.int32))
            size = x.size
            args = [size, D, p["dims"], L, M, t.offset(vx), *(st // x.itemsize for st in xv.strides), *o_args,
                    t.offset(vf), scale_bits]
            groups = min(-(-size // (per * threads)), self.rt.max_groups)
            traditional, has_freqs = p["traditional"], p["freqs"]
            t.launch(gpu_attention.rope_name(traditional, has_freqs, dtype, threads),
                     lambda dialect: gpu_attention.rope_source(dialect, traditional, has_freqs, dtype, threads),
                     bufs, (groups, 1, 1), threads, args)
        del x, off, xv, freqs
        return self.fire(node, t, debug)

    def run_sdpa(self, node, debug: int):
        p = node._params
        dtype = node._dtype.name
        if p["sinks"] or dtype not in gpu_attention.DTYPES:
            return False
        q, k, v = (i._data for i in node._inputs[:3])
        mask = p["mask"] or "none"
        if mask == "array":
            m = node._inputs[3]._data
            mask = "bool" if m.dtype == np.bool_ else "float" if m.dtype == q.dtype else None
            del m
            if mask is None:
                return False
        B, Hq, L, D = q.shape
        S, Dv = k.shape[2], v.shape[3]
        cap = gpu_attention.head_capacity(D, Dv)
        if cap > 1024 or not (q.dtype == k.dtype == v.dtype == node._dtype.np_storage):
            return False
        threads = self.rt.workgroup
        t = _Template(node, f"sdpa_{mask}_{dtype} {node._shape} keys {S}")
        rows_ = B * Hq * L
        if rows_ * Dv:
            arrays = [q, k, v] + ([node._inputs[3]._data] if mask in ("bool", "float") else [])
            args = [Hq // k.shape[1], L, S, D, Dv, int(np.array(p["scale"], np.float32).view(np.int32))]
            bufs = [OUT]
            for index, a in enumerate(arrays):
                view, _ = self.bind(t, node, index, a)
                bufs.append(view)
                args += [t.offset(view), *(st // a.itemsize for st in a.strides)]
            args += [0] * (len(gpu_attention.SDPA_ARGS) - 2 - len(args))
            args += [Hq, rows_]
            t.launch(gpu_attention.sdpa_name(mask, cap, dtype, threads),
                     lambda dialect: gpu_attention.sdpa_source(dialect, mask, cap, dtype, threads),
                     bufs, (min(rows_, self.rt.max_groups), 1, 1), threads, args)
            del arrays, a
        del q, k, v
        return self.fire(node, t, debug)

    def run_reshape_copy(self, node, debug: int):
        """A reshape of an input no view can reshape (``x.transpose(...).reshape(...)``, attention's
        heads joined): the input's elements in row-major order, copied into a fresh contiguous buffer by
        the ``slice_update`` template's copy mode with an empty window, so that the input can stay on the
        device (numpy's copy would read it on the host); not on a runtime that keeps an eval's tensors
        apart until it submits (``whole_evals``)."""
        if not self.rt.whole_evals:
            return False
        x = node._inputs[0]._data
        size = x.itemsize
        if 8 * size not in gpu_update.BITS or x.ndim > gpu_update.RANK or any(st % size for st in x.strides):
            return False
        zeros = (0,) * (gpu_update.RANK - x.ndim)
        space = (1,) * (gpu_update.RANK - x.ndim) + x.shape
        t = _Template(node, f"reshape_copy {node._shape}")
        if x.size:
            vx, _ = self.bind(t, node, 0, x)
            self._launch_update(t, "copy", size, [OUT, vx, vx], space, (0,) * 4, (0,) * 4, 0, (0,) * 4,
                                t.offset(vx), zeros + tuple(st // size for st in x.strides),
                                zeros + lower.contiguous_strides(x.shape), x.size)
        del x
        return self.fire(node, t, debug)

    def run_static_slice_update(self, node, debug: int):
        """``slice_update`` at fixed positions (``cache[..., i:j, :] = kv``, a prompt's write into a KV
        cache) by the ``dynamic_slice_update`` template, where its index is a box (ints and unit-step
        slices): into the input's own buffer when nothing else can see it, else into a fresh output.
        Anything else stays on numpy, and so does every one on a runtime that keeps an eval's tensors
        apart until it submits (``whole_evals``)."""
        if not self.rt.whole_evals:
            return False
        donate = self.donates(node)  # first: it counts the references to the input
        x, upd = (i._data for i in node._inputs)
        box = _box(node._params["index"], x.shape)
        size = x.itemsize
        if box is None or 8 * size not in gpu_update.BITS or x.ndim > gpu_update.RANK or upd.itemsize != size \
                or any(st % size for st in upd.strides):
            return False
        begin, lengths, kept = box
        # the update comes broadcast to the box's slice axes (``indexing._fit_update``)
        if upd.shape != tuple(n for n, k in zip(lengths, kept) if k):
            return False
        strides = iter(st // size for st in upd.strides)
        u_strides = [next(strides) if k else 0 for k in kept]  # 0 along an int's axis
        pad = (1,) * (gpu_update.RANK - x.ndim)
        zeros = (0,) * (gpu_update.RANK - x.ndim)
        u_shape, u_strides = pad + tuple(lengths), zeros + tuple(u_strides)
        begin = zeros + tuple(begin)
        x_strides = zeros + tuple(st // size for st in x.strides)
        t = _Template(node, f"slice_update_{'into' if donate else 'copy'} {node._shape}")
        t.guard = lambda node, donate=donate: () if self.donates(node) == donate else None
        self._bind_update(t, node, donate, x, upd, begin, u_shape, u_strides, x_strides, int(np.prod(lengths)))
        del x, upd
        return self.fire(node, t, debug)

    def donates(self, node) -> bool:
        """Whether ``dynamic_slice_update`` ``node`` may write into its input's own buffer: nothing else
        can see it (as ``llvm.run_in_place`` decides, MLX's buffer donation). Called before its
        caller holds the input or its buffer."""
        x_node = node._inputs[0]
        x = x_node._data
        if self.leaf_ids is None:
            self.leaf_ids = {id(leaf) for leaf in self.leaves or ()}
        # x_node is held by node._inputs, this frame and getrefcount's argument, and by the eval's list
        # of leaves when it is one; x by x_node, this frame and getrefcount's argument. One more of
        # either is a user, another node or a view.
        held = 4 if id(x_node) in self.leaf_ids else 3
        if self.capture is not None:
            held += self.capture.lent.get(id(x_node), 0)  # a bound call's state, held by the call
        return sys.getrefcount(x_node) <= held and sys.getrefcount(x) <= 3 and x.base is None \
            and x.flags.writeable and x.flags.c_contiguous

    def window(self, node, axes: tuple, pad: tuple):
        """The start of ``dynamic_slice_update`` ``node``'s window, read on the host (padded with
        ``pad``), or None while its start indices are still on the device."""
        x, upd, start = (i._data for i in node._inputs)
        if id(root_of(start)) in self.resident.stale:
            return None
        return pad + window_start(axes, start, x.shape, upd.shape)

    def run_slice_update(self, node, debug: int):
        """``dynamic_slice_update`` (a KV cache's write) written into the input's own device buffer
        when nothing else can see it (``donates``), else into a fresh output. The start indices are
        the caller's position: one value is read by the kernel from its buffer, several on the host."""
        donate = self.donates(node)  # first: it counts the references to the input
        x, upd, start = (i._data for i in node._inputs)
        size = x.itemsize
        stale = id(root_of(start)) in self.resident.stale
        # The kernel reads a one-element start from its buffer (``gpu_update``'s positioned variant), so
        # that its launch is the same at every position (a bound decode step replays it, ``gpu_bind``);
        # any other start is read here and passed as arguments.
        axes = node._params["axes"]
        positioned = start.size == 1 and len(axes) == 1 and self.start_readable(start)
        if 8 * size not in gpu_update.BITS or x.ndim > gpu_update.RANK or upd.itemsize != size \
                or (stale and not positioned):
            return False
        pad = (1,) * (gpu_update.RANK - x.ndim)
        zeros = (0,) * (gpu_update.RANK - x.ndim)
        u_shape = pad + upd.shape
        u_strides = zeros + tuple(st // size for st in upd.strides)
        x_strides = zeros + tuple(st // size for st in x.strides)
        t = _Template(node, f"slice_update_{'into' if donate else 'copy'} {node._shape}")
        if positioned:
            def guard(node, donate=donate):  # the same decision on this replay's buffers and start
                ok = self.donates(node) == donate and self.start_readable(node._inputs[2]._data)
                return () if ok else None

            vs, _ = self.bind(t, node, 2, start)
            axis = len(pad) + axes[0]
            position = (vs, [axis, x.shape[axes[0]], start.itemsize // 4, t.offset(vs)])
            begin, values = [0] * gpu_update.RANK, ()
        else:
            def guard(node, donate=donate):  # the same decision on this replay's buffers, and the window
                if self.donates(node) != donate:
                    return None
                return self.window(node, axes, zeros)

            position = None
            begin = [t.value(d) for d in range(gpu_update.RANK)]  # the window's start, read per launch
            values = self.window(node, axes, zeros)
        t.guard = guard
        self._bind_update(t, node, donate, x, upd, begin, u_shape, u_strides, x_strides, upd.size, position)
        del x, upd, start
        return self.fire(node, t, debug, values)

    def start_readable(self, start: np.ndarray) -> bool:
        """Whether the positioned slice update's kernel reads the one-element ``start`` right: it reads
        32 bits, so an int32, or an int64 on the host whose value fits them."""
        if start.dtype == np.int32:
            return True
        return start.dtype == np.int64 and id(root_of(start)) not in self.resident.stale \
            and -_INT32 <= int(start.reshape(-1)[0]) < _INT32

    def _bind_update(self, t: _Template, node, donate: bool, x, upd, begin, u_shape, u_strides, x_strides,
                     total: int, position=None) -> None:
        """The launch of a slice update of ``x`` by ``upd`` (``total`` elements in its window at ``begin``;
        shapes and strides padded to the template's rank): into ``x``'s own buffer (``donate``), else into
        a fresh output. ``position``: (view of the start buffer, its ``POSITION_ARGS``) for the variant
        that reads the start there."""
        size = x.itemsize
        pad = (1,) * (gpu_update.RANK - x.ndim)
        zeros = (0,) * (gpu_update.RANK - x.ndim)
        if donate:
            vx, _ = self.bind(t, node, 0, x)
            t.into = vx
            if total:
                vu, _ = self.bind(t, node, 1, upd)
                self._launch_update(t, "into", size, [vx, vu], u_shape, begin, u_shape, t.offset(vu), u_strides,
                                    0, (0,) * 4, x_strides, total, position)
        elif x.size:
            vx, _ = self.bind(t, node, 0, x)
            vu, _ = self.bind(t, node, 1, upd)
            self._launch_update(t, "copy", size, [OUT, vx, vu], pad + x.shape, begin, u_shape, t.offset(vu),
                                u_strides, t.offset(vx), x_strides, zeros + lower.contiguous_strides(x.shape),
                                x.size, position)

    def _launch_update(self, t: _Template, mode, size, bufs, space, begin, u_shape, uoff, u_strides, xoff, x_strides,
                       o_strides, total, position=None) -> None:
        threads = self.rt.workgroup
        bits = 8 * size
        args = [*space, *begin, *u_shape, uoff, *u_strides, xoff, *x_strides, *o_strides, total]
        positioned = position is not None
        if positioned:
            bufs = [*bufs, position[0]]
            args += position[1]
        t.launch(gpu_update.name(mode, bits, threads, positioned),
                 lambda dialect: gpu_update.source(dialect, mode, bits, threads, positioned),
                 bufs, (min(-(-total // threads), self.rt.max_groups), 1, 1), threads, args)

    def run_numpy(self, nodes: list, debug: int) -> None:
        stale = self.resident.stale
        if stale:
            self.sync_host({id(root_of(i._data)) for n in nodes for i in n._inputs if i._data is not None})
        for n in nodes:
            self.last_plan.append(("numpy", n._prim.name if n._prim else "?"))
            if debug:
                print(f"[mlxarm] {self.name} numpy {self.last_plan[-1][1]} {n._shape} {n._dtype.name}",
                      file=sys.stderr)
        self.numpy_steps += len(nodes)
        taken = self.capture.before_host_steps(nodes) if self.capture is not None else None
        self.numpy.run([weakref.ref(n) for n in nodes])
        if taken is not None:
            self.capture.after_host_steps(taken)


def _box(template: tuple, shape: tuple):
    """(start, length, kept) per axis of an array of ``shape`` for a ``slice_update``'s index template
    (``indexing._parse``'s: per axis an int within it or a slice, Ellipsis expanded, None for a new
    axis), ``kept`` for a slice's axis, which the update has; None where a new axis or a step other
    than 1 makes it no box."""
    if len(template) != len(shape):  # a new axis
        return None
    begin, lengths, kept = [], [], []
    for e, n in zip(template, shape):
        if isinstance(e, slice):
            start, stop, step = e.indices(n)
            if step != 1:
                return None
            begin.append(start)
            lengths.append(max(0, stop - start))
            kept.append(True)
        elif isinstance(e, int):
            begin.append(e)
            lengths.append(1)
            kept.append(False)
        else:
            return None
    return begin, lengths, kept


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
