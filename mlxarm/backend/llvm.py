"""The LLVM executor: fused kernels compiled for the host CPU by llvmlite and run on every core.

``run`` plans an eval (``codegen.fuse``), lowers each kernel group when its inputs exist
(``codegen.lower``), renders LLVM IR for the host (``codegen.render_llvm``), and runs the machine code
through ctypes (which releases the GIL); a kernel big enough is shared out in chunks of its output
index space to worker threads waiting in native code (``llvm_threads``). Nodes no kernel covers run on
the numpy executor in between; buffers are numpy arrays either way, so nothing is copied between the
two. Object code is cached on disk (``cache``) and loaded by ``elf_loader`` (llvmlite is imported only to
compile a kernel the cache lacks), the loaded functions kept in memory, keyed by the kernel IR.

Each eval is recorded as a list of actions (a kernel with where each of its buffers comes from, or a call
that realizes one node), kept under its graph's structural key (``fuse.signature``) once that structure
comes a second time. A later eval of that structure (a compiled decode step, a training step) replays
the actions on its own buffers: no planning, no lowering, kernels called with prebuilt argument arrays.
An update primitive whose input buffer nothing else can see writes into it (``run_in_place``), and an
elementwise kernel writes its output into the buffer of an input it reads element for element when
that input dies with the eval (``donor``, ``take``), as MLX donates such a buffer.

While an eval compiles kernels, ``progress`` (when set: the language-model command line sets it) is told
how many of its steps are done. ``MLXARM_DEBUG=1`` prints the steps of every eval planned (one line for
a replay), ``MLXARM_DEBUG=2``
also each kernel's source; ``MLXARM_THREADS`` sets the number of worker threads (default: one per
CPU). softmax, rms_norm and layer_norm over the last axis of float32 data run as row kernels
(``codegen.rows``); affine ``quantized_matmul`` (float32, float16, bfloat16) reads its packed weights
in the quantized template (``llvm_quantized``); float32 ``fast.rope`` and
``fast.scaled_dot_product_attention`` run as
the templates of ``kernels.attention``. Those three are recorded as calls *bound* to their node's
shapes (function, constant arguments and argument array found once), so a replayed call fills in its
buffers' addresses and runs.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import sys
import threading
import weakref
from time import perf_counter

import numpy as np

from .. import __version__
from ..codegen import fuse, ir, lower, render_llvm, rows
from ..kernels import attention as attention_template
from ..kernels import matmul as gemm_template
from ..codegen import target as targets
from ..core.device import count_buffer as count, count_buffers, counted_alone, on_clear_cache
from ..core.errors import CompileError
from ..core.fast import rope_inv_freq
from . import blas
from .cache import ObjectCache
from . import buffers, elf_loader, llvm_program, llvm_quantized, llvm_runtime, llvm_threads
from .buffers import owns
from ..core.compile import PROGRAM, PROGRAM_OUTPUT, finish_program, program_outputs
from .numpy_executor import NumpyExecutor, _keeps_graph

_KERNEL_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
# Below this many element-steps a kernel runs on the calling thread: sharing it out costs more than it
# saves. A chunk a worker claims is at least _CHUNK_MIN element-steps, and there are about
# _CHUNKS_PER_WORKER of them per worker (a descheduled worker leaves its share to the others).
_PARALLEL_MIN = 1 << 14
_CHUNK_MIN = 1 << 12
_CHUNKS_PER_WORKER = 4
# Sleeping workers are woken for kernels of this many element-steps or more (waking one costs tens of
# microseconds); smaller ones are shared only with workers still spinning after the last kernel.
_WAKE_MIN = 1 << 20
# Recorded evals kept for replay (least recently used dropped first; an LLM decode step's plan takes
# about a megabyte), structures seen once remembered by hash, and lowered kernel groups kept (oldest
# dropped first): a program cycling through many graph shapes keeps bounded memory.
_EVALS_KEPT = 32
_EVAL_ARENA_MAX = 1 << 20  # bytes of intermediates a plain eval's program may keep (``capture_eval``)
# Native rows a plain eval's program needs per numpy step to pay: a program runs a numpy step on views
# of its roots and copies the result into place, which costs more than a replay's direct call, while
# it saves a few microseconds per native kernel (an uncompiled training step of a small MLP, 39 rows
# and 12 numpy steps, ran about 5% slower as a program).
_NATIVE_PER_NUMPY_STEP = 8
_SEEN_KEPT = 4096
_GROUPS_KEPT = 4096
# The kinds of a recorded action (LLVMExecutor.action).
_CALL, _KERNEL, _LOWER, _ROWS = 0, 1, 2, 3
# Programs a compiled function keeps, one per input layout (``run_program``): a function called on
# ever new layouts goes back to recording graphs instead of capturing each one.
_LAYOUTS_KEPT = 8
# Below this many multiply-adds (M*N*K) a float32 matmul stays on numpy: packing costs more than it saves.
_GEMM_MIN = 1 << 15
# The attention kernel keeps a row's scores on the worker's stack; rope and attention unroll their loops
# over a head's features.
_ATTENTION_KEYS_MAX = 1 << 16
_HEAD_MAX = 1024


def _address_reader():
    """A function giving a numpy array's data address. ``a.ctypes.data`` takes about a microsecond (it
    builds a ctypes helper each time), which a replayed decode step would pay a thousand times; the
    address is the first field after the object header of numpy's array struct
    (``PyArrayObject_fields.data``, part of numpy's C ABI), read directly in a fifth of that. A probe
    array checks the layout once; ``ctypes.data`` serves if it ever differs."""
    read = ctypes.c_void_p.from_address
    header = object.__basicsize__

    def direct(a) -> int:
        return read(id(a) + header).value or 0

    probe = np.arange(4, dtype=np.float32)[1:]
    return direct if direct(probe) == probe.ctypes.data else (lambda a: a.ctypes.data)


address = _address_reader()


def _debugging() -> bool:
    """Whether ``MLXARM_DEBUG`` asks for output (read each time: it may change between evals)."""
    return os.environ.get("MLXARM_DEBUG", "0") not in ("", "0")




class Compiler:
    """Kernels compiled for one target by llvmlite, with the disk cache in front of it, and loaded by
    ``elf_loader``: llvmlite (and LLVM with it) is imported only when a kernel the cache lacks must be
    compiled (or its version is asked for)."""

    def __init__(self, target: targets.Target | None = None, cache: ObjectCache | None = None):
        self.cache = cache or ObjectCache()
        self.target = target or targets.host(self.cache.directory)
        # The code model is part of every cache key, so it stays what it was when LLVM's JIT loaded
        # the objects: on x86-64, the large one (64-bit absolute addresses: the JIT could map an
        # object's sections over 2 GiB apart). ``elf_loader`` keeps an object in one mapping, where
        # either would do.
        x86_64 = self.target.triple.split("-")[0] == "x86_64"
        self.code_model = "large" if x86_64 else "small"
        self.reloc = "static" if x86_64 else "pic"
        self.loader = elf_loader.Loader()
        self.lock = threading.Lock()
        self.images: dict = {}  # cache key -> elf_loader.Image, mapped as long as this compiler lives
        self.compiled = 0
        llvm_runtime.link(self)

    @functools.cached_property
    def llvm(self):
        """llvmlite's binding module, set up for code generation (imported on the first compile)."""
        import llvmlite.binding as llvm

        llvm.initialize_all_targets()
        llvm.initialize_all_asmprinters()
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        return llvm

    @functools.cached_property
    def machine(self):
        return self.llvm.Target.from_triple(self.target.triple).create_target_machine(
            cpu=self.target.cpu, features=self.target.features, opt=3, reloc=self.reloc,
            codemodel=self.code_model)

    def key(self, source: str) -> str:
        return self.cache.key(source, self.target.triple, self.target.features, f"{__version__} {self.code_model}")

    def object_code(self, source: str, key: str | None = None) -> bytes:
        key = key or self.key(source)
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
        return _KERNEL_FN(self.address(source, name))

    def address(self, source: str, name: str) -> int:
        """The machine code address of function ``name`` of ``source``, compiled and loaded (an
        object is loaded once, however many of its functions are asked for)."""
        key = self.key(source)
        image = self.images.get(key)
        if image is None:
            obj = self.object_code(source, key)  # compiled outside the lock: llvmlite releases the GIL
            with self.lock:
                image = self.images.get(key)
                if image is None:
                    image = self.images[key] = self.loader.load(obj)
        addr = image.address(name)
        if not addr:
            raise CompileError(f"[llvm] Kernel {name} was not found in its object code.")
        return addr


class LLVMExecutor:
    name = "llvm"
    address = staticmethod(address)  # a buffer's data address, for the templates' modules
    runs_programs = True  # compiled calls come as program nodes (``llvm_program``)

    def __init__(self, target: targets.Target | None = None, cache: ObjectCache | None = None):
        self.compiler = Compiler(target, cache)
        self.target = self.compiler.target
        self.functions: dict = {}  # kernel IR -> loaded function
        self.sources: dict = {}
        self.plans: dict = {}  # lower.structure key -> (kernel, summary, function, (leaf, byte offset) per input)
        self.workers = int(os.environ.get("MLXARM_THREADS") or 0) or os.cpu_count() or 1
        # the helper threads kernels are shared out to (``llvm_threads``), None with one worker
        self.pool = llvm_threads.Workers(self.compiler, self.workers) if self.workers > 1 else None
        self.entries: dict = {}  # id(kernel function) -> its machine code address
        self.numpy = NumpyExecutor()
        self.kernels_run = 0
        self.last_plan: list = []
        # fuse.signature key -> (recorded actions, their last_plan), least recently used first
        self.evals: dict = {}
        self.seen: set = set()  # hashes of the structures planned once and not kept
        # loose key (``fuse.LOOSE``) -> which of its loose nodes a plan recorded under it left loose
        self.loosenings: dict = {}
        self.replays = 0
        self.donated = 0  # updates written into their input's buffer (run_in_place)
        self.keep_graph = False  # realized nodes keep their inputs (a transform is tracing)
        self.free_leaves: dict = {}  # fuse.signature's free leaves of the eval running: id -> references
        self.consumers: dict = {}  # node id -> its consumers in the eval being recorded (fuse.uses)
        # progress(done, total) over the steps of an eval that compiles kernels, from its first compile
        self.progress = None
        # [weak reference to an x, bits, its columns interleaved for them] for quantized products
        # reading one x in turn (a layer's q, k and v projections)
        self.interleaved: list = [None, 0, None]
        self.driver = None  # ``llvm_program``'s driver function, compiled when a program is first built
        self.programs_run = 0
        self.eval_programs_run = 0  # replays of plain evals run by their programs (``capture_eval``)
        on_clear_cache(self.release_programs)
        # wall time spent in native code by programs (their driver calls) and replayed kernels
        self.native_seconds = 0.0
        self.capture = None  # a ``llvm_program.Capture`` the eval being recorded fills in

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

    def program_only(self, nodes: list) -> bool:
        """Run an eval that is one compiled call and its outputs (an LLM decode step that samples
        in the step) by its program directly, without a signature or a plan: True when done. The
        call's inputs that nothing outside holds are the eval's free leaves (``donatable``)."""
        views = 0  # views of realized arrays first (the call's ``tokens[None]``), made as numpy views
        for n in nodes:
            if n._prim is PROGRAM:
                break
            if n._prim.name not in lower.VIEWS or n._prim.compute or any(x._data is None for x in n._inputs):
                return False
            views += 1
        else:
            return False
        prog = nodes[views]
        for n in nodes[views + 1:]:
            if n._prim is not PROGRAM_OUTPUT or n._inputs[0] is not prog:
                return False
        n = None
        uses: dict = {}
        for x in prog._inputs:
            uses[id(x)] = uses.get(id(x), 0) + 1
        free = {}
        for x in prog._inputs:  # held by the input tuple (``uses`` times), x and getrefcount's argument
            k = uses[id(x)]
            if sys.getrefcount(x) - 2 == k:
                free[id(x)] = k
        x = None
        self.free_leaves, self.consumers, self.last_plan = free, {}, [("kernel", "program")]
        for n in nodes[:views]:
            self.run_view(n)
        del nodes, n
        self.run_program(prog)
        return True

    def run(self, refs) -> None:
        """Realize the nodes behind ``refs`` (topologically ordered). An eval whose graph has the
        structure of one kept before (``fuse.signature``) replays that eval's recorded actions on
        its own buffers; any other is planned and lowered, and kept when its structure comes the
        second time. numpy's BLAS stays on one thread meanwhile (``blas``): the workers use the cores."""
        with blas.single_threaded():
            self._run(refs)

    def _run(self, refs) -> None:
        nodes = [n for n in (r() for r in refs) if n is not None and n._data is None]
        if not nodes:
            return
        capture = self.capture
        # asked once per eval: it cannot change during one (a capture keeps every buffer apart)
        self.keep_graph = _keeps_graph() or capture is not None
        if capture is None and self.program_only(nodes):
            return
        swaps: list = []
        key, leaves, counted = fuse.signature(nodes, swaps=swaps)
        key = fuse.Structure(key)
        # leaf id -> references from the graph, for leaves nothing outside the graph holds
        self.free_leaves = {id(leaves[i]): counted[3][i] for i in counted[4]}
        if capture is not None:
            capture.leaf_refs = {id(x): n for x, n in zip(leaves, counted[3])}
        recorded = self.evals.pop(key, None) if capture is None else None
        exact = recorded is not None  # found under its own key, not a loose one: params as recorded
        loose = None
        if recorded is None and swaps and capture is None:
            # Another eval's plan may hold for this one: the same graph on other slices of the same
            # buffers (``loose_step``). Which loose nodes it left loose (the others, folded into a
            # kernel, keep their params in the key) is kept under the fully loose key.
            loose = fuse.Structure(fuse.loosened(key.key, swaps))
            kept = self.loosenings.get(loose)
            if kept is not None:
                partial = fuse.Structure(fuse.loosened(key.key, [swaps[j] for j in kept]))
                recorded = self.evals.pop(partial, None)
                if recorded is not None:
                    key = partial
        if recorded is not None:
            self.evals[key] = recorded  # now the most recently used
            actions, self.last_plan, box = recorded
            program = box[0]  # read once: ``clear_cache`` may empty the box from another thread
            if exact and program is not False and len(actions) > 1 and not self.keep_graph:
                if program is not None:
                    self.replays += 1
                    self.run_eval_program(program, nodes, leaves)
                    return
                box[0] = False  # unless the capture below builds one
                if not any("in_place" in n._prim.extra for n in nodes if n._prim is not None):
                    # its first replay: captured, for a program that runs the later ones
                    self.replays += 1
                    outputs = {i: nodes[i] for i in counted[2]}  # held outside the graph already
                    del nodes, leaves, counted
                    self.capture_eval(refs, box, outputs)
                    return
            # weakly: a node lives while something not yet computed reads it, not until the eval ends
            targets = [weakref.ref(nodes[a[1]]) for a in actions]
            del nodes
            self.replays += 1
            if _debugging():
                print(f"[mlxarm] replay {len(actions)} recorded steps", file=sys.stderr)
            self.replay(actions, targets, leaves)
            return
        # The nodes a loose key leaves the params and shapes of; the plan is kept under that key only
        # if it holds for any (``loose_step``): None once it does not.
        loose_ids = {id(n): j for j, n in enumerate(n for n in nodes if n._prim.name in fuse.LOOSE)} \
            if loose is not None else None  # node id -> its index in ``swaps``
        loose_actions: dict = {}  # index of an action realizing a loose node -> the node's in ``swaps``
        uses = fuse.uses(nodes, counted)
        self.consumers = uses[0]  # for ``donor``
        steps = fuse.plan(nodes, caps=lower.EVERYTHING, uses_=uses)
        epilogues, folded = self.gemm_epilogues(steps, *uses)
        position = {id(n): i for i, n in enumerate(nodes)}
        del nodes
        sources = {id(n): (0, i) for i, n in enumerate(leaves)}  # buffer -> where a replay finds it
        numpy_made: set = set()  # sources made by a call (numpy or a template), not a fused kernel
        debug = int(os.environ.get("MLXARM_DEBUG", "0") or 0)
        self.last_plan = []
        actions = []
        progress, compiled = self.progress, self.compiler.compiled
        for index in range(len(steps)):
            if progress is not None and self.compiler.compiled != compiled:
                progress(index, len(steps))  # the steps before this one are done
            # The plan lets go of each step as it comes: a buffer lives while a node not yet computed
            # reads it, not until the eval ends (a long prefill's activations would all stay).
            step, steps[index] = steps[index], None
            node = step.node
            if node._data is not None or id(node) in folded:
                if loose_ids and id(node) in loose_ids:
                    loose_ids = None  # realized by another node's step (which reads its params)
                if node._prim is PROGRAM_OUTPUT and node._data is not None and capture is None:
                    # realized by its program's step: later kernels read it as that step's output
                    sources[id(node)] = (1, len(actions))
                    numpy_made.add((1, len(actions)))
                    actions.append((_CALL, position[id(node)], self.run_program_output, "program output"))
                continue  # realized already, or computed by the matmul template of a later step
            epilogue = epilogues.get(id(node))
            action = self.action(step, position[id(node)], sources, numpy_made) if epilogue is None else \
                (_CALL, position[id(node)], functools.partial(self.run_gemm_epilogue, form=epilogue),
                 f"gemm+{'+'.join(epilogue[2:])}")
            numpy = action[0] == _CALL and action[2] in (self.run_numpy, self.run_view, self.run_in_place)
            if loose_ids is not None and not self.loose_step(action, node, numpy, loose_ids, loose_actions,
                                                              len(actions)):
                loose_ids = None
            self.last_plan.append(("numpy" if numpy else "kernel", action[3]))
            if debug:
                print(f"[mlxarm] {self.last_plan[-1][0]:6} {action[3]} {node._shape} {node._dtype.name}",
                      file=sys.stderr)
                if debug > 1 and action[0] != _CALL and action[2] in self.sources:
                    print(self.sources[action[2]], file=sys.stderr)
            if capture is not None:
                ins = tuple((i._data, i._dtype) for i in node._inputs) if action[0] == _CALL else ()
                entry = [action, node._shape, node._dtype, node._stream, node._prim, node._params, ins]
            self.perform(action, node)
            if capture is not None:
                capture.entries.append(tuple(entry) + (node._data,))
                capture.nodes.append(node)
            sources[id(node)] = (1, len(actions))
            if action[0] == _CALL:
                numpy_made.add((1, len(actions)))
            actions.append(action)
        if progress is not None and self.compiler.compiled != compiled:
            progress(len(steps), len(steps))
        if capture is not None:
            capture.leaves = leaves
            return
        if loose_ids is not None and loose_actions:
            # The plan holds whatever the params and shapes of the loose nodes a dynamic step realized;
            # the others were folded into kernels, which read them as the key says.
            kept = tuple(sorted(loose_actions.values()))
            if len(self.loosenings) >= _SEEN_KEPT:
                self.loosenings.clear()
            self.loosenings[loose] = kept
            key = fuse.Structure(fuse.loosened(key.key, [swaps[j] for j in kept]))
        # A structure is kept on its second sighting: a graph seen once costs a hash, not a recorded
        # plan.
        sighting = key.hash
        if sighting not in self.seen:
            if len(self.seen) >= _SEEN_KEPT:
                self.seen.clear()
            self.seen.add(sighting)
            return
        if len(self.evals) >= _EVALS_KEPT:
            del self.evals[next(iter(self.evals))]  # the least recently used
        # the program a replay of the eval may run (``capture_eval``): None until one is tried, then
        # the program, or False where none serves
        self.evals[key] = (tuple(actions), self.last_plan, [None])

    def action(self, step, pos: int, sources: dict, numpy_made: set) -> tuple:
        """How to realize ``step.node`` (its inputs realized), as a replayable action:
        (_CALL, pos, function of the node, summary), or (_KERNEL, pos, kernel, summary, function,
        ((0, leaf index) or (1, action index), byte offset) per input buffer, (action index,
        strides) per input whose layout a replay checks, its argument array,
        its ``split`` shape or None when the output is empty), or (_LOWER, pos, kernel, summary)
        for a kernel lowered afresh each time (its group reads a copy), or a row kernel shaped like
        a _KERNEL action (_ROWS, ``row_action``)."""
        node = step.node
        if step.kind == "numpy":
            if node._prim is PROGRAM:
                return (_CALL, pos, self.run_program, "program")
            if node._prim is PROGRAM_OUTPUT:
                return (_CALL, pos, self.run_program_output, "program output")
            if self.gemm_fits(node):
                return (_CALL, pos, self.run_gemm, "gemm")
            # The quantized matmul template (llvm_quantized) runs what it fits.
            if llvm_quantized.fits(node, self.target):
                return (_CALL, pos, llvm_quantized.bind(self, node), llvm_quantized.name(self, node))
            bound = self.bind_fast(node)
            if bound is not None:
                return (_CALL, pos, bound, node._prim.name)
            row_kernel = rows.match(node, self.target.lanes)
            if row_kernel is not None:
                return self.row_action(node, pos, row_kernel, sources, numpy_made)
            if node._prim is not None and node._prim.name in lower.VIEWS and not node._prim.compute:
                return (_CALL, pos, self.run_view, node._prim.name)
            if node._prim is not None and "in_place" in node._prim.extra:
                return (_CALL, pos, self.run_in_place, node._prim.name)
            return (_CALL, pos, self.run_numpy, node._prim.name if node._prim else "?")
        key, leaves = lower.structure(node)
        plan = self.plans.get(key)
        if plan is None:
            kernel = self.lowered(node)[0]  # caches the group's plan unless it reads a copy
            plan = self.plans.get(key)
            if plan is None:
                return (_LOWER, pos, kernel, ir.summary(kernel))
        kernel, summary, fn, offsets = plan
        if not all(id(leaves[i]) in sources for i, _ in offsets):  # a buffer no action made
            return (_LOWER, pos, kernel, summary)
        donor = self.donor(node, kernel, offsets, leaves, sources)
        split = (kernel.out_size, *self.split_shape(kernel)) if math.prod(node._shape) else None
        reads = tuple((sources[id(leaves[i])], off) for i, off in offsets)
        # A buffer a call (numpy or a template) made is checked for the layout the kernel was
        # lowered for; a leaf's layout is in the eval's key and a kernel's output is contiguous.
        checks = tuple((where[1], leaves[i]._data.strides) for (i, _), (where, _) in zip(offsets, reads)
                       if where in numpy_made)
        return (_KERNEL, pos, kernel, summary, fn, reads, checks, (ctypes.c_void_p * (1 + len(offsets)))(), split,
                donor)

    @staticmethod
    def loose_step(action: tuple, node, numpy: bool, loose_ids: dict, loose_actions: dict, index: int) -> bool:
        """Whether recorded ``action`` (the ``index``-th) realizes ``node`` right whatever the params and
        shapes of the eval's loose nodes (``fuse.LOOSE``, ids ``loose_ids``) that steps realize: a step
        realizing or reading one must be a call that reads the node when it runs (the numpy reference,
        a view, an update in place, or a bound template marked ``dynamic``), as a kernel bakes its
        inputs' shapes in. A loose node folded into a kernel has no step: the key keeps its params
        (``_run``). Steps realizing loose nodes are noted in ``loose_actions``."""
        dynamic = action[0] == _CALL and (numpy or getattr(action[2], "dynamic", False))
        if action[0] in (_KERNEL, _ROWS):
            reads = action[5]
            if any(where[0] == 1 and where[1] in loose_actions for where, _ in reads):
                return False
        elif not dynamic and any(id(i) in loose_ids for i in node._inputs):
            return False
        j = loose_ids.get(id(node))
        if j is not None:
            if not dynamic:
                return False
            loose_actions[index] = j
        return True

    def donor(self, node, kernel: ir.Kernel, offsets: tuple, leaves: list, sources: dict):
        """(argument slot, group leaf index, eval leaf index) of an input whose buffer the kernel may
        write its output into, or None. The input is a leaf of the eval that nothing outside the
        graph holds and that only this kernel's nodes read (so it dies with the kernel: the group is a
        tree, none of its nodes also feeds another kernel, as a view folded into several does), its
        buffer holds the output (a slice's output keeps the whole buffer, as in MLX), and the kernel
        reads it element for element where it stores (no reduction, the store's strides, offset 0), so
        each element is read before it is overwritten. Whether the buffer itself is free is checked
        when the kernel runs (``take``)."""
        if kernel.reduce_op is not None or not self.free_leaves:
            return None
        size = math.prod(node._shape) * node._dtype.np_storage.itemsize
        loads = read_in_place(kernel)
        reads: dict | None = None
        for slot, (i, off) in enumerate(offsets, start=1):
            leaf = leaves[i]
            refs = self.free_leaves.get(id(leaf))
            if refs is None or off or not loads.get(slot) or leaf._data.nbytes < size \
                    or leaf._dtype.np_storage.itemsize != node._dtype.np_storage.itemsize:
                continue
            # Another argument reading the same memory (the leaf through a second view folded in,
            # or a realized view of it, such as a broadcast element) would see the output's stores.
            if any(j != slot and np.may_share_memory(leaves[k]._data, leaf._data)
                   for j, (k, _) in enumerate(offsets, start=1)):
                continue
            if reads is None:
                reads = _private_reads(node, self.consumers)
                if reads is None:
                    return None
            if reads.get(id(leaf)) == refs:
                return (slot, i, sources[id(leaf)][1])
        return None

    def take(self, leaf, shape: tuple, storage, views: int = 0):
        """(``leaf``'s buffer as the output of a kernel that ``donor`` allowed to write into it,
        whether the memory count has it already) when nothing but ``leaf`` (and ``views`` arrays of
        the caller's) holds the buffer now: no view of it, no weak reference but the memory
        count's (a device mirror, a cached repacking). Else (None, False)."""
        buf = leaf._data
        # held by leaf._data, this frame and getrefcount's argument
        if buf is None or sys.getrefcount(buf) != 3 + views or self.keep_graph or not owns(buf):
            return None, False
        flags = buf.flags
        if not flags.writeable or not flags.c_contiguous:
            return None, False
        del flags
        counted = counted_alone(buf)
        if counted is None:
            return None, False
        self.interleaved[0] = None  # a repacking of the buffer would go stale
        self.donated += 1
        if buf.shape == shape and buf.dtype == storage:
            return buf, counted
        return np.frombuffer(buf, storage, math.prod(shape)).reshape(shape), counted

    def row_action(self, node, pos: int, kernel: rows.RowKernel, sources: dict, numpy_made: set) -> tuple:
        """A row kernel as an action shaped like a fused kernel's (its inputs read whole, at offset
        0), or a call when an input is not contiguous now (the call copies it) or was made by no
        action."""
        if not all(i._data.flags.c_contiguous and id(i) in sources for i in node._inputs):
            return (_CALL, pos, functools.partial(self.run_rows, kernel=kernel), kernel.name)
        reads = tuple((sources[id(i)], 0) for i in node._inputs)
        checks = tuple((where[1], i._data.strides) for i, (where, _) in zip(node._inputs, reads)
                       if where in numpy_made)
        size = math.prod(node._shape)
        split = (size // kernel.n, kernel.n, 1) if size else None
        return (_ROWS, pos, kernel, kernel.name, self.row_function(kernel), reads, checks,
                (ctypes.c_void_p * (1 + len(reads)))(), split, None)

    def perform(self, action: tuple, node) -> None:
        """Run one action on ``node`` while recording (kernels find their buffers through the
        graph; ``replay`` runs kernel actions itself)."""
        if action[0] == _CALL:
            action[2](node)
            return
        if action[0] == _ROWS:
            self.run_rows(node, action[2])
            return
        kernel, _, fn, addresses, keep, leaves = self.lowered(node)
        out, taken = None, False
        donor = action[9] if action[0] == _KERNEL else None
        if donor is not None:
            buf = leaves[donor[1]]._data
            # the donor's own argument may be the buffer or a view of it made for this call
            views = 0 if keep is None else int(keep[donor[0] - 1] is buf or keep[donor[0] - 1].base is buf)
            del buf
            out, taken = self.take(leaves[donor[1]], node._shape, node._dtype.np_storage, views)
        del leaves
        if out is None:
            out = buffers.empty(node._shape, node._dtype.np_storage)
        if out.size:
            self.launch(fn, kernel, [out.ctypes.data] + addresses)
        del keep
        self.realized(node, out, counted=taken)

    def replay(self, actions: tuple, targets: list, leaves: list) -> None:
        """Run recorded ``actions`` on ``targets`` (weak references to the node each realizes) reading
        ``leaves``. A kernel action is called with its prebuilt argument array, refilled with this
        eval's buffer addresses (each buffer's address is looked up once). A node that died before its
        turn is not computed: nothing reads it (a later action reading it would hold it)."""
        found: dict = {}  # (0, leaf index) or (1, action index) -> buffer address
        empty, realized, pool = buffers.empty, self.realized, self.pool
        for index, (action, ref) in enumerate(zip(actions, targets)):
            node = ref()
            if node is None or node._data is not None:
                continue
            kind = action[0]
            if kind == _CALL:
                action[2](node)
                continue
            if kind != _KERNEL and kind != _ROWS:
                self.perform(action, node)
                continue
            fn, reads, checks, args, split, donor = action[4:]
            if checks and any(targets[i]()._data.strides != layout for i, layout in checks):
                # A call laid its buffer out differently this time: run as when recording.
                self.perform((_CALL, None, functools.partial(self.run_rows, kernel=action[2]))
                             if kind == _ROWS else (_LOWER,), node)
                continue
            out, taken = (None, False) if donor is None else \
                self.take(leaves[donor[2]], node._shape, node._dtype.np_storage)
            if out is None:
                out = empty(node._shape, node._dtype.np_storage)
            if split is not None:  # None: an empty output, nothing to run
                slot = 1
                for source, offset in reads:
                    at = found.get(source)
                    if at is None:
                        where, i = source
                        at = found[source] = address((leaves[i] if where == 0 else targets[i]())._data)
                    args[slot] = at + offset
                    slot += 1
                args[0] = found[(1, index)] = address(out)
                total, per_unit, _ = split
                start = perf_counter()
                if pool is None or total * per_unit < _PARALLEL_MIN or total < 2:
                    fn(args, 0, total)
                else:
                    self.split(fn, args, *split)
                self.native_seconds += perf_counter() - start
            realized(node, out, taken)

    def run_numpy(self, node) -> None:
        self.numpy.run([weakref.ref(node)])

    # -- compiled programs (``llvm_program``) ------------------------------------------------------

    def program_driver(self):
        if self.driver is None:
            self.driver = llvm_program._DRIVER_FN(
                self.compiler.address(llvm_program.render_driver(self.target.triple), "mlxarm_program"))
        return self.driver

    def run_program(self, node) -> None:
        """Run one call of a compiled function (a ``compiled_program`` node) and realize its output
        nodes by the program built for its inputs' layouts. The first call of a layout evaluates the
        call's graph, captured to build the program, and then runs the program on the same inputs
        (the capture keeps every buffer apart but for updates of an input only they read, which it
        undoes, so only the program writes into dying inputs); where no program can be built, the
        graph's results serve (evaluated again when the capture wrote into an input)."""
        state, outs = program_outputs(node)
        inputs = node._inputs
        layout = tuple(x._data.strides for x in inputs)
        program = state.programs.get(layout)
        results = None
        if program is None and len(state.programs) >= _LAYOUTS_KEPT:
            state.tape.program = False  # inputs of ever new layouts: later calls record graphs
        elif program is None:  # captured now; the program then runs on the same inputs (and may
            results = self.capture_program(state, inputs, build=True, layout=layout)  # donate them)
            program = state.programs[layout]
        if program:
            results = program.run(self, inputs)
            self.programs_run += 1
        elif results is None:
            results = self.capture_program(state, inputs, build=False, layout=layout)
        for v, o in outs.items():
            buf, counted = results[v]
            self.realized(o, buf, counted=counted)
        finish_program(node)

    def run_call_now(self, state, inputs: list, free: dict):
        """``Program.run``'s results for one call of a compiled function on ``inputs`` (realized, or
        views of realized arrays, which are made here), run at once by the program kept for their
        layout (``compile._Compiled.now``); None where none is kept yet. ``free``: as ``free_leaves``,
        the inputs whose buffers the program may write into."""
        program = self._kept_program(state, inputs)
        if program is None:
            return None
        self.free_leaves, self.consumers, self.last_plan = free, {}, [("kernel", "program")]
        with self._blas_for(program):
            results = program.run(self, inputs)
        self.programs_run += 1
        self.kernels_run += len(results)
        return results

    def _kept_program(self, state, inputs: list):
        """The program kept for ``inputs``' layouts (views of realized arrays among them made first),
        or None."""
        self.keep_graph = _keeps_graph()
        if not self._realize_views(inputs):
            return None
        return state.programs.get(tuple(x._data.strides for x in inputs)) or None

    @staticmethod
    def _blas_for(program):
        """numpy's BLAS on one thread while ``program`` runs steps on numpy (off the workers' cores);
        nothing to switch for a program without them."""
        return blas.single_threaded() if program.python_steps else contextlib.nullcontext()

    def _realize_views(self, arrays) -> bool:
        """Make the unrealized ``arrays`` that are views of realized arrays (``tokens[None]``): False
        (nothing made) when one is anything else."""
        views = [x for x in arrays if x._data is None]
        for x in views:
            if x._prim.name not in lower.VIEWS or x._prim.compute or any(i._data is None for i in x._inputs):
                return False
        for x in views:
            self.run_view(x)
        return True

    def bind_call(self, state, inputs: list, free: dict, tops: list):
        """The program kept for ``inputs``' layouts bound to the buffers of the inputs not at ``tops``
        (``Program.bind``), or None."""
        program = self._kept_program(state, inputs)
        if program is None or self.keep_graph:
            return None
        self.free_leaves = free  # (``donatable``)
        return program.bind(self, inputs, free, tops)

    def run_bound(self, bound, given: tuple, layout: tuple):
        """``bound.step`` on ``given`` when they are realized (or views of realized arrays) in
        ``layout`` (their strides when bound); else None."""
        if not self._realize_views(given) or tuple(x._data.strides for x in given) != layout:
            return None
        with self._blas_for(bound.program):
            results = bound.step(self, given)
        self.programs_run += 1
        self.kernels_run += len(results)
        return results

    def run_program_output(self, node) -> None:
        raise RuntimeError("[compile] A compiled output was reached before its program ran.")

    def capture_eval(self, refs, box: list, outputs: dict) -> None:
        """Run an eval whose plan is recorded as a captured eval, and keep the program built from the
        capture in ``box`` for the later replays of its structure: one call into native code for all
        its kernels, its intermediates in the program's arena, its inputs the eval's leaves and its
        results ``outputs`` (position -> the nodes something outside the graph holds). No program
        (``box`` stays False, and the recorded actions replay) for an eval whose program cannot be
        built, with fewer than ``_NATIVE_PER_NUMPY_STEP`` native rows per numpy step, or whose
        intermediates would keep more than ``_EVAL_ARENA_MAX`` bytes of arena or exceed the cache
        limit: a program pays where an eval is many small kernels, and its arena is cache memory
        for as long as it is kept (``clear_cache`` lets it go). The caller checked that no update is
        written in place (a capture writes into a leaf and puts it back)."""
        capture = llvm_program.Capture()
        self.capture = capture
        try:
            self._run(refs)
        finally:
            self.capture = None
            self.keep_graph = False
        try:
            program = llvm_program.build(self, capture, tuple(capture.leaves), outputs, _EVAL_ARENA_MAX)
            if program.python_steps * _NATIVE_PER_NUMPY_STEP > program.native_rows:
                raise llvm_program.Unsupported(f"{program.python_steps} numpy steps beside "
                                               f"{program.native_rows} native rows")
            box[0] = program
        except llvm_program.Unsupported as e:
            if _debugging():
                print(f"[mlxarm] eval stays a replay: {e}", file=sys.stderr)
        finally:
            capture.let_go(outputs.values())  # the capture kept the graph: let it go, as an eval does

    def release_programs(self) -> None:
        """Let go of the plain evals' programs and their arenas (``clear_cache``): each is captured
        again at its next replay."""
        for recorded in self.evals.values():
            recorded[2][0] = None

    def run_eval_program(self, program, nodes: list, leaves: list) -> None:
        """Realize the held ``nodes`` of an eval by the program its capture built, on ``leaves``."""
        if _debugging():
            print(f"[mlxarm] program of {program.native_rows} kernels, {program.python_steps} numpy steps",
                  file=sys.stderr)
        with self._blas_for(program):
            results = program.run(self, leaves)
        self.eval_programs_run += 1
        self.kernels_run += len(results)
        made = []
        for v, (buf, counted) in results.items():  # ``realized`` for each, inline (no graph kept)
            node = nodes[v]
            node._data = buf
            node._inputs = ()
            node._params = None
            if not counted:
                made.append(buf)
        count_buffers(made)

    def capture_program(self, state, inputs: tuple, build: bool, layout: tuple) -> dict:
        """Evaluate a compiled call's graph (recording it into a capture when ``build``), keep the
        program built from the capture (or False where none can be), and return the results as
        ``Program.run`` does: None after a capture, when the program runs next or the capture wrote
        into an input."""
        from ..codegen.schedule import toposort

        outs, values = state.tape.record(list(inputs), False)
        wanted = {v: values[v] for kind, v in state.tape.outputs if kind == 0}
        del outs, values
        saved = (self.keep_graph, self.free_leaves, self.consumers, self.last_plan, self.capture)
        capture = llvm_program.Capture() if build else None
        self.capture = capture
        try:
            refs = [weakref.ref(n) for n in toposort(list(wanted.values()))]  # only the results held
            self._run(refs)
            if not build:
                return {v: (n._data, True) for v, n in wanted.items()}
            try:
                program = llvm_program.build(self, capture, inputs, wanted)
            except llvm_program.Unsupported as e:
                program = False
                state.tape.program = False  # later calls record their graphs again
                if _debugging():
                    print(f"[mlxarm] compiled call stays a graph: {e}", file=sys.stderr)
            state.programs[layout] = program
        finally:
            self.keep_graph, self.free_leaves, self.consumers, self.last_plan, self.capture = saved
            if capture is not None:
                # Updates the capture wrote into inputs are undone: the program (or, without one,
                # the graph evaluated again) runs on the inputs as they came.
                for buf, window, old in reversed(capture.restores):
                    buf[window] = old
                capture.let_go()  # the capture kept the graph: let it go
        if program or capture.restores:
            # None: the program runs next (nothing here may hold an input it could write into), or,
            # without one, the results read inputs the capture wrote into and are computed again
            return None
        return {v: (n._data, True) for v, n in wanted.items()}

    def donatable(self, x):
        """``x``'s buffer when an update may write into it: nothing outside the eval holds ``x``, and
        nothing but ``x`` holds the buffer (no view, no device mirror; ``take``'s rule); else None."""
        if id(x) not in self.free_leaves:
            return None
        return self.take(x, x._data.shape, x._data.dtype)[0]

    def run_view(self, node) -> None:
        """A movement primitive on a buffer: its reference makes a numpy view (the numpy executor's
        work without its per-node checks; a reference that had to copy is counted as it counts)."""
        src = node._inputs[0]._data
        out = node._prim.ref(node._params, src)
        if out.base is None and out is not src:
            count(out)
        node._data = out
        if not self.keep_graph:
            node._inputs = ()
            node._params = None

    def run_in_place(self, node) -> None:
        """An update primitive (``extra["in_place"]``) writing into its first input's buffer when
        nothing else can see that buffer, as MLX donates a dying input's buffer: a KV cache
        update then writes one position instead of copying the cache. Otherwise the reference
        runs (on a copy)."""
        x = node._inputs[0]
        buf = x._data
        capture = self.capture
        if capture is not None:
            # Capturing: a leaf only this node reads is written in place and put back afterwards
            # (``capture_program``); anything else is copied, as the capture keeps buffers apart.
            region = node._prim.extra.get("region")
            if capture.leaf_refs.get(id(x)) != 1 or region is None or not buf.flags.writeable:
                del x, buf
                self.run_numpy(node)
                return
            del x, buf
            ins = [i._data for i in node._inputs]
            window = region(node._params, *ins)
            capture.restores.append((ins[0], window, ins[0][window].copy()))
            node._data = node._prim.extra["in_place"](node._params, *ins)
            self.interleaved[0] = None
            return
        # x must be a leaf of the eval that nothing outside the graph holds and only this node reads
        # (an array computed earlier in the eval may have consumers still to run, and a count of
        # references cannot tell them from the eval's own); then x is referenced by node._inputs, this
        # frame, getrefcount's argument and the eval's list of its leaves, and buf by x, this frame
        # and getrefcount's argument. One more of either is a user, another node, or a view that
        # would see the write.
        if self.free_leaves.get(id(x)) != 1 or sys.getrefcount(x) > 4 or sys.getrefcount(buf) > 3 \
                or not owns(buf) or not buf.flags.writeable or self.keep_graph:
            del x, buf
            self.run_numpy(node)
            return
        del x, buf
        self.interleaved[0] = None  # a copy of the buffer written here would go stale
        ins = [i._data for i in node._inputs]
        out = node._prim.extra["in_place"](node._params, *ins)
        del ins
        self.donated += 1
        node._data = out
        node._inputs = ()
        node._params = None

    def run_gemm(self, node) -> None:
        self.realized(node, self.run_matmul(node))

    def gemm_epilogues(self, steps: list, consumers: dict, observed: set) -> tuple:
        """The float32 products whose epilogue the matmul template computes (``kernels.matmul``):
        ``addmm`` (alpha and beta 1), ``matmul(a, b) + c``, and either of them under
        ``maximum(., 0)`` (relu), where ``c`` is a bias row of N or a residual of the output's shape,
        realized before the step. Returns ({id(node the template realizes): form}, ids of the nodes
        folded into it, which are never realized: each has that one consumer and nothing outside
        the graph holds it). A form is (the product's position in the add, "addmm" or "matmul",
        "bias" or "residual"[, "relu"]), read again by ``run_gemm_epilogue`` on each node of that
        structure a replay gives it."""
        made = {id(s.node) for s in steps}
        forms: dict = {}
        folded: set = set()

        def private(n) -> bool:
            return n._data is None and consumers.get(id(n)) == 1 and id(n) not in observed

        def joined(out, c):  # how c joins the product: a bias row or a residual (None: neither)
            if c._dtype.name != "float32" or (c._data is None and id(c) not in made):
                return None
            if c._shape == out._shape:
                return "residual"
            shape = c._shape
            while shape and shape[0] == 1:
                shape = shape[1:]
            return "bias" if shape == out._shape[-1:] else None

        for s in steps:
            root = core = s.node
            relu = False
            if root._prim is None or root._dtype.name != "float32":
                continue
            if root._prim.name == "maximum" and len(root._inputs) == 2:
                x, zero = root._inputs
                if zero._data is None or zero._data.size != 1 or x._shape != root._shape or not private(x):
                    continue
                core, relu = x, True
            if core._prim is None or core._dtype.name != "float32":
                continue
            form = None
            if core._prim.name == "addmm":
                c, a, b = core._inputs
                join = joined(core, c)
                if core._params == {"alpha": 1.0, "beta": 1.0} and self.product_fits(a, b) and join:
                    form, chain = (0, "addmm", join), [core]
            elif core._prim.name == "add":
                for i in (0, 1):
                    m, c = core._inputs[i], core._inputs[1 - i]
                    if m._prim is not None and m._prim.name == "matmul" and m._shape == core._shape \
                            and private(m) and self.product_fits(*m._inputs):
                        join = joined(core, c)
                        if join:
                            form, chain = (i, "matmul", join), [m, core]
                            break
            if form is None:
                continue
            forms[id(root)] = form + (("relu",) if relu else ())
            folded.update(id(n) for n in chain if n is not root)
        return forms, folded

    def product_fits(self, a, b) -> bool:
        """(..., M, K) @ (K, N) in float32, big enough for the template: one product over the rows of
        all of a's leading dimensions."""
        if a._dtype.name != "float32" or b._dtype.name != "float32" or len(b._shape) != 2 or len(a._shape) < 2 \
                or self.target.scalable:
            return False
        return math.prod(a._shape[:-1]) * a._shape[-1] * b._shape[-1] >= _GEMM_MIN

    def run_gemm_epilogue(self, node, form: tuple) -> None:
        """Realize ``node`` by one call of the matmul template with the epilogue ``form`` describes
        (``gemm_epilogues``)."""
        at, kind, join = form[:3]
        relu = len(form) > 3
        core = node._inputs[0] if relu else node
        if kind == "addmm":
            c, a, b = core._inputs
        else:
            c = core._inputs[1 - at]
            a, b = core._inputs[at]._inputs
        a, b, c = a._data, b._data, c._data
        threshold = node._inputs[1]._data if relu else None
        act = "relu" if relu and threshold.reshape(-1)[0] == 0 else None  # else another threshold this time
        rows = a.reshape(-1, a.shape[-1])
        out = self.gemm(rows, b, bias=c.reshape(-1) if join == "bias" else None, act=act,
                        residual=c.reshape(rows.shape[0], -1) if join == "residual" else None)
        out = out.reshape(node._shape)
        if relu and act is None:
            out = np.maximum(out, threshold.astype(np.float32).reshape(()))
        self.realized(node, out)

    def bind_fast(self, node):
        """For float32, float16 or bfloat16 ``fast.rope`` (base frequencies) and ``fast.scaled_dot_product_attention``
        (no sinks), a function realizing any node shaped as ``node`` by its kernel
        (``kernels.attention``), its function, constants and argument array found once; else None."""
        name = node._prim.name if node._prim is not None else None
        if name == "rope":
            return self.bind_rope(node)
        if name == "scaled_dot_product_attention":
            return self.bind_attention(node)
        return None

    def template_function(self, kernel, render):
        fn = self.functions.get(kernel)
        if fn is None:
            source = render(kernel, self.target.triple)
            fn = self.functions[kernel] = self.compiler.load(source, kernel.name)
            self.sources[kernel] = source
        return fn

    def bind_rope(self, node):
        p = node._params
        x, offset = node._inputs[:2]
        shape = node._shape
        dtype = node._dtype.name
        if p["freqs"] or dtype not in attention_template.DTYPES or x._dtype.name != dtype \
                or offset._dtype.name not in ("int32", "int64") or shape[-1] > _HEAD_MAX \
                or not math.prod(shape):
            return None
        dims, d = p["dims"], shape[-1]
        bits = 32 if offset._dtype.name == "int32" else 64
        fn = self.template_function(attention_template.Rope(d, dims, p["traditional"], bits, dtype),
                                    attention_template.render_rope)
        storage = node._dtype.np_storage
        inv_freq = rope_inv_freq(p["base"], dims)  # the reference's
        by_batch = int(len(offset._shape) == 1 and offset._shape[0] > 1)
        meta = np.array([shape[-2], math.prod(shape[1:-1]), by_batch], np.int64)
        scale = np.array([p["scale"]], np.float32)
        args = (ctypes.c_void_p * 6)(0, 0, 0, inv_freq.ctypes.data, meta.ctypes.data, scale.ctypes.data)
        rows_ = math.prod(shape[:-1])
        contiguous, split, realized = np.ascontiguousarray, self.split, self.realized

        def run_rope(node, keep=(inv_freq, meta, scale)):
            x, off = (contiguous(i._data) for i in node._inputs)
            out = np.empty(shape, storage)
            args[0], args[1], args[2] = address(out), address(x), address(off)
            split(fn, args, rows_, d, 1)
            del x, off
            realized(node, out)

        def native(ins, out):  # a compiled program's row (``llvm_program``)
            x, off = ins[:2]
            if not (x.flags.c_contiguous and off.flags.c_contiguous):
                return None
            return [(fn, [out, x, off, inv_freq, meta, scale], rows_, d, 1, True)]

        run_rope.native = native
        return run_rope

    def bind_attention(self, node):
        p = node._params
        q, k, v = node._inputs[:3]
        mask = node._inputs[3] if p["mask"] == "array" else None
        B, hq, L, D = q._shape
        hk, S, dv = k._shape[1], k._shape[2], v._shape[3]
        dtype = node._dtype.name
        if p["sinks"] or dtype not in attention_template.DTYPES or any(a._dtype.name != dtype for a in (q, k, v)) \
                or (mask is not None and mask._dtype.name not in ("bool", "float32")) \
                or not (B and hq and L and S and D and dv) or S > _ATTENTION_KEYS_MAX \
                or max(D, dv) > _HEAD_MAX:
            return None
        kind = p["mask"] or "none"
        if kind == "array":
            kind = "bool" if mask._dtype.name == "bool" else "float"
        fn = self.template_function(attention_template.Attention(D, dv, kind, self.target.lanes, dtype),
                                    attention_template.render_attention)
        storage = node._dtype.np_storage
        meta = np.zeros(15, np.int64)
        meta[:5] = (B, hq, hk, L, S)
        scale = np.array([p["scale"]], np.float32)
        args = (ctypes.c_void_p * 7)(0, 0, 0, 0, 0, meta.ctypes.data, scale.ctypes.data)
        layout = [None]  # the strides in ``meta``
        shape = node._shape
        units, per_unit = B * hq * L, S * (D + dv)
        work = [per_unit]  # per unit of this call's number of keys
        contiguous, split, realized = np.ascontiguousarray, self.split, self.realized

        def rows_of(a):  # a buffer whose last axis is contiguous (the kernel takes the others' strides)
            return a if a.strides[-1] == a.itemsize or a.shape[-1] == 1 else contiguous(a)

        def run_attention(node, keep=(meta, scale)):
            ins = node._inputs
            s = ins[1]._shape[2]
            if s != meta[4]:
                # A replay of a plan whose keys were loose (``fuse.LOOSE``: a growing cache's slice)
                # with another number of keys: the kernel takes any within its limit.
                if ins[1]._shape != (B, hk, s, D) or ins[2]._shape != (B, hk, s, dv) \
                        or not 0 < s <= _ATTENTION_KEYS_MAX or (len(ins) > 3 and ins[3]._shape[-1] != s):
                    self.run_numpy(node)
                    return
                meta[4] = s
                work[0] = s * (D + dv)
            q, k, v = contiguous(ins[0]._data), rows_of(ins[1]._data), rows_of(ins[2]._data)
            m = ins[3]._data if len(ins) > 3 else None
            strides = (k.strides, v.strides, None if m is None else m.strides)
            if strides != layout[0]:
                meta[5:11] = [s // k.itemsize for s in k.strides[:3] + v.strides[:3]]
                if m is not None:
                    meta[11:] = [s // m.itemsize for s in m.strides]
                layout[0] = strides
            out = np.empty(shape, storage)
            args[0], args[1], args[2], args[3] = address(out), address(q), address(k), address(v)
            args[4] = 0 if m is None else address(m)
            split(fn, args, units, work[0], 1)
            del q, k, v, m
            realized(node, out)

        def native(ins, out):  # a compiled program's row (``llvm_program``): its strides fixed
            q, k, v = ins[:3]
            m = ins[3] if len(ins) > 3 else None
            if not q.flags.c_contiguous or rows_of(k) is not k or rows_of(v) is not v or k.shape[2] != S:
                return None
            fixed = meta.copy()
            fixed[4] = S
            fixed[5:11] = [s // k.itemsize for s in k.strides[:3] + v.strides[:3]]
            if m is not None:
                fixed[11:] = [s // m.itemsize for s in m.strides]
            return [(fn, [out, q, k, v, m, fixed, scale],
                     units, per_unit, 1, True)]

        run_attention.native = native
        run_attention.dynamic = True  # reads its number of keys from the node (``loose_step``)
        return run_attention

    def run_rows(self, node, kernel: rows.RowKernel) -> None:
        """softmax / rms_norm / layer_norm over the last axis: one row kernel."""
        arrays = [np.ascontiguousarray(i._data) for i in node._inputs]
        out = buffers.empty(node._shape, node._dtype.np_storage)
        if out.size:
            self.split(self.row_function(kernel), [a.ctypes.data for a in [out] + arrays],
                       out.size // kernel.n, kernel.n, 1)
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
            return self.gemm(a, b)
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
        tile = gemm_template.tile(self.target)
        a, b = gemm_template.rows_contiguous(a), gemm_template.rows_contiguous(b)  # read in place
        if m <= tile.mr:
            return self.gemm_few_rows(a, b, bias, act, residual)
        key = ("gemm", tile, bias is not None, act, residual is not None)
        fn = self.functions.get(key)
        if fn is None:
            source = gemm_template.render(tile, bias is not None, act, residual is not None)
            fn = self.functions[key] = self.compiler.load(
                source, gemm_template.name(tile, bias is not None, act, residual is not None))
            self.sources[key] = source
        c = np.empty((m, n), np.float32)
        bias = None if bias is None else np.ascontiguousarray(bias, np.float32)
        residual = None if residual is None else gemm_template.rows_contiguous(residual)
        # Where there are too few column panels to share out, each is cut into row groups of at least
        # 16 row blocks (each group packs its own B slices).
        panels, row_blocks = -(-n // tile.nr), -(-m // tile.mr)
        groups = 1 if self.pool is None else \
            max(1, min(row_blocks // 16, -(-self.workers * _CHUNKS_PER_WORKER // panels)))
        meta = np.array([m, n, k, a.strides[0] // 4, b.strides[0] // 4, n,
                         0 if residual is None else residual.strides[0] // 4, groups], np.int64)
        addresses = [c.ctypes.data, a.ctypes.data, b.ctypes.data,
                     0 if bias is None else bias.ctypes.data, 0 if residual is None else residual.ctypes.data,
                     meta.ctypes.data]
        self.split(fn, addresses, panels * groups, -(-2 * m * k * tile.nr // groups), 1)
        return c

    def gemm_few_rows(self, a: np.ndarray, b: np.ndarray, bias, act, residual) -> np.ndarray:
        """``gemm`` for a few rows of ``a`` (one row block at most): B streamed in row order by the
        few-rows kernel (``kernels.matmul.render_few_rows``), each unit (at least 64 rows of B) into
        its own partial sums, added up here with the epilogue."""
        (m, k), n = a.shape, b.shape[1]
        lanes = self.target.lanes
        key = ("gemm_few_rows", lanes)
        fn = self.functions.get(key)
        if fn is None:
            source = gemm_template.render_few_rows(lanes)
            fn = self.functions[key] = self.compiler.load(source, gemm_template.few_rows_name(lanes))
            self.sources[key] = source
        units = max(1, min(self.workers * _CHUNKS_PER_WORKER, k // 64))
        ldp = -(-n // lanes) * lanes
        partial = np.empty((units, m, ldp), np.float32)
        meta = np.array([m, n, k, a.strides[0] // 4, b.strides[0] // 4, ldp, units], np.int64)
        self.split(fn, [partial.ctypes.data, a.ctypes.data, b.ctypes.data, meta.ctypes.data], units,
                   -(-2 * m * k * n // units), 1)
        c = partial[:, :, :n].sum(axis=0) if units > 1 else partial[0, :, :n].copy()
        if bias is not None:
            c += bias
        if act == "relu":
            np.maximum(c, 0, out=c)  # maximum keeps a NaN, as the template's epilogue does
        if residual is not None:
            c += residual
        return c

    def lowered(self, node) -> tuple:
        """(kernel, its summary, function, input addresses, what must stay alive while it runs, the
        group's leaves) for the group rooted at ``node``. Lowering is cached by the group's structure
        (``lower.structure``), so a graph shape seen before costs one walk over its nodes: buffers are
        found again as byte offsets into the group's leaves."""
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
                if len(self.plans) >= _GROUPS_KEPT:
                    del self.plans[next(iter(self.plans))]  # the oldest
                self.plans[key] = (kernel, summary, fn, offsets)
            return kernel, summary, fn, [a.ctypes.data for a in arrays], arrays, leaves
        kernel, summary, fn, offsets = plan
        return kernel, summary, fn, [address(leaves[i]._data) + off for i, off in offsets], None, leaves

    def realized(self, node, out: np.ndarray, counted: bool = False) -> None:
        """Give ``node`` its buffer ``out``, written by a kernel (``counted``: a donated buffer,
        counted while it lives already)."""
        self.kernels_run += 1
        node._data = out
        if not self.keep_graph:
            # Inputs dying here are freed before the output is counted, as MLX's buffer donation
            # would reuse them.
            node._inputs = ()
            node._params = None
        if not counted:
            count(out)

    def launch(self, fn, kernel: ir.Kernel, addresses: list) -> None:
        self.split(fn, addresses, kernel.out_size, *self.split_shape(kernel))

    @staticmethod
    def split_shape(kernel: ir.Kernel) -> tuple:
        """(element-steps per output unit, slice alignment) of a kernel, for ``split``."""
        per_unit = 1
        for d in kernel.dims[kernel.n_out:]:
            per_unit *= d
        return per_unit, kernel.width * 4 if kernel.reduce_op is None else 1

    def chunk(self, total: int, per_unit: int, align: int) -> int:
        """The units per chunk a job of [0, total) units of ``per_unit`` element-steps each is shared
        out in (a multiple of ``align``), or 0 when it is too small to share (or there are no workers)."""
        if self.pool is None or total * per_unit < _PARALLEL_MIN or total < 2:
            return 0
        chunk = max(-(-total // (self.workers * _CHUNKS_PER_WORKER)), -(-_CHUNK_MIN // max(per_unit, 1)))
        return -(-chunk // align) * align

    def split(self, fn, addresses, total: int, per_unit: int, align: int) -> None:
        """Run ``fn`` over [0, total) units of ``per_unit`` element-steps each, in chunks of a
        multiple of ``align`` units shared out to the workers (``llvm_threads``) when the work is
        big enough. ``addresses`` is a list or a prebuilt ctypes array of them; the caller keeps the
        buffers there alive until this returns."""
        args = addresses if isinstance(addresses, ctypes.Array) else (ctypes.c_void_p * len(addresses))(*addresses)
        chunk = self.chunk(total, per_unit, align)
        if not chunk:
            fn(args, 0, total)
            return
        entry = self.entries.get(id(fn))
        if entry is None:
            if not isinstance(fn, _KERNEL_FN):  # a wrapped function (a profiler's): no address to share
                fn(args, 0, total)
                return
            entry = self.entries[id(fn)] = ctypes.cast(fn, ctypes.c_void_p).value
        if not self.pool.run(entry, ctypes.addressof(args), total, chunk, total * per_unit >= _WAKE_MIN):
            fn(args, 0, total)  # another thread's kernel holds the workers


def read_in_place(kernel: ir.Kernel) -> dict:
    """Per buffer argument of elementwise ``kernel``, whether it reads that buffer element for element
    where it stores its output (every load of it at the store's strides), so an output written into
    the buffer overwrites each element only after reading it."""
    store = kernel.store
    loads: dict = {}
    for e in ir.walk(store.value):
        if isinstance(e, ir.Load):
            loads[e.buf] = loads.get(e.buf, True) and e.strides == store.strides
    return loads


def _private_reads(root, consumers: dict):
    """Per realized buffer's id, the references the group rooted at ``root`` (its unrealized nodes)
    holds to it; None when a node of the group other than ``root`` has another consumer besides
    its one in the group (its buffers are read elsewhere too)."""
    reads: dict = {}
    seen = set()
    stack = [root]
    while stack:
        n = stack.pop()
        k = id(n)
        if n._data is not None:
            reads[k] = reads.get(k, 0) + 1
            continue
        if k in seen:
            continue  # one consumer reading it twice
        if n is not root and consumers.get(k, 0) != 1:
            return None
        seen.add(k)
        stack.extend(n._inputs)
    return reads


def available() -> str | None:
    """None when llvmlite can be used, else the reason it cannot (without importing it: a process
    whose kernels are all cached never does)."""
    import importlib.util

    if importlib.util.find_spec("llvmlite") is None:
        return "llvmlite is not installed"
    return None
