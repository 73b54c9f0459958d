"""The Vulkan executor: fused kernels rendered as GLSL compute shaders (``codegen.render_glsl``),
compiled to SPIR-V by ``glslangValidator -V`` (cached on disk) and run through Kompute (``kp``).

All work of one eval is recorded into one Kompute sequence (uploads, every dispatch, downloads) and
submitted once: Kompute puts a buffer barrier before each dispatch, so dependent dispatches are
ordered. Device buffers are 32-bit word tensors holding any dtype's bytes; they stay on the device
across evals and go back to a pool (by size) when their host array dies, so repeated evals reuse both
buffers and the pipelines bound to them.

Unified memory: where the device's memory is the host's (an integrated GPU such as Mali or Adreno, or
a CPU implementation such as lavapipe: ``VkPhysicalDeviceType`` INTEGRATED_GPU or CPU), tensors are
host-visible (``kp.TensorTypes.host``, mapped for their whole life): an upload is a memcpy into the
mapped tensor and a download a memcpy out of it, with no staging buffer and no transfer command (Kompute
records nothing for such tensors in OpTensorSyncDevice/OpTensorSyncLocal). Elsewhere tensors are
device-local with a mapped staging buffer, copied by those operations. ``MLXARM_UNIFIED=0`` keeps the
staged path everywhere. Kompute records no host-read barrier for a host-visible tensor; the fence wait
that ends each submit is what orders the kernels' writes before the host reads them.

``MLXARM_VK_VALIDATION=1`` enables the Khronos validation layer and raises on any message it reports.
"""
from __future__ import annotations

import atexit
import collections
import os
import shutil
import sys
import tempfile

import numpy as np

from .. import __version__
from ..codegen import render_glsl
from ..codegen.render_c import combine_name
from ..kernels import gpu_matmul
from . import vulkan_device
from .cache import ObjectCache, default_dir
from .gpu_common import GPUExecutor, reduction_parts

# Pipelines kept bound to their buffers, least recently used dropped first. A replayed LLM decode step
# dispatches about 500 kernels, on the same tensors each step (``_tensor``) or on one of two sets, so
# a real GPU keeps enough for several such structures; an emulated device (lavapipe) builds each
# pipeline as machine code in host memory and keeps fewer, still more than one step's.
_PIPELINES, _PIPELINES_EMULATED = 4096, 1024


class VulkanValidationError(RuntimeError):
    pass


# Structures of eval whose tensor requests are remembered (``VulkanRuntime._tensor``): more than the
# executors keep recorded evals of.
_SLOT_SPACES = 64

# Dispatch operations kept per pipeline, one per distinct set of push constants (a rope's position changes
# every step: the oldest are dropped).
_OPS_PER_PIPELINE = 8
_SEQUENCES_KEPT = 8  # recorded submissions kept to be submitted again (``VulkanRuntime._run``)
_UPLOAD, _DOWNLOAD = "upload", "download"


def _push_words(push) -> np.ndarray:
    """Push constants as 32-bit words: the low 32 bits of each, negatives as two's complement."""
    return np.array(push, dtype=np.int64).astype(np.uint32)


def _words(nbytes: int) -> int:
    return max(1, -(-nbytes // 4))


# VkPhysicalDeviceType of devices whose memory is the host's: INTEGRATED_GPU, CPU.
_HOST_MEMORY_DEVICES = (1, 4)


class VulkanRuntime:
    # Pipelines are bound to tensors, and a tensor that dies mid-submission is reused only after it: an
    # eval recorded whole (a prompt's, 500 kernels) makes a tensor and a pipeline for nearly every
    # output, where numpy steps between its parts (each a submit) recycle them. On the H100 the second
    # eval of a 128-token prompt took 0.84 s whole (540 pipelines built) against 0.20 s in 91 submits
    # (4 built), so the KV cache's prompt write and the reshapes that copy stay numpy steps here
    # (``GPUExecutor.run_static_slice_update``, ``run_reshape_copy``).
    whole_evals = False

    def __init__(self, cache: ObjectCache | None = None, device: int = 0):
        self.validation_log = None
        if os.environ.get("MLXARM_VK_VALIDATION") == "1":
            self.validation_log = _enable_validation()
        import kp

        self.kp = kp
        # What kp does not report (vulkan_device): subgroup operations, shared memory, cooperative
        # matrices. MLXARM_SUBGROUPS=0 / MLXARM_COOPMAT=0 turn their use off.
        self.caps = vulkan_device.query(device)
        coop = self.caps.coop_f16() if os.environ.get("MLXARM_COOPMAT") != "0" else None
        self.compiler = (coop and vulkan_device.glslang(coopmat=True)) or vulkan_device.glslang()
        if coop and self.compiler != vulkan_device.glslang(coopmat=True):
            coop = None  # no glslangValidator here knows GL_KHR_cooperative_matrix
        self.manager = kp.Manager(device, [], list(vulkan_device.COOPMAT_EXTENSIONS) if coop else [])
        self.props = self.manager.get_device_properties()
        self.coop_tiling = gpu_matmul.coop_tiling((coop.m, coop.n, coop.k) if coop else None, self.caps.subgroup_size,
                                                  self.props["max_work_group_invocations"], self.caps.max_shared_bytes)
        self.subgroups = self.caps.subgroup_arithmetic and os.environ.get("MLXARM_SUBGROUPS") != "0"
        # SPIR-V 1.3 (subgroup operations, cooperative matrices) where the device has Vulkan 1.1.
        self.spirv_target = "vulkan1.1" if self.caps.api_version >= (1, 1) else "vulkan1.0"
        self.workgroup = min(256, self.props["max_work_group_invocations"])
        if is_emulated(self.props["device_name"]):
            self.workgroup = 64
        self.max_groups = min(65535, self.props["max_work_group_count"][0])
        # About how many workgroups keep the device busy (what a two-stage reduction aims for).
        cpu = is_emulated(self.props["device_name"])
        self.parallel_groups = 64 if cpu else 4096
        # Workgroups of an elementwise kernel at most (``launch``): on a GPU, one per workgroup's
        # share of the elements up to the dispatch limit (on the H100 a 512 MB copy took 0.39 to 0.75
        # ms spread over 4096 workgroups, 0.38 over 65535); on a CPU, ``parallel_groups``.
        self.elementwise_groups = self.parallel_groups if cpu else self.max_groups
        # Shared memory as the loader reports it (vulkan_device); where it could not be asked, what
        # desktop and phone GPUs offer (32 KiB or more; Vulkan's minimum is 16 KiB).
        self.matmul_tiling = gpu_matmul.choose(self.props["max_work_group_invocations"],
                                               self.caps.max_shared_bytes or (16384 if cpu else 32768), cpu)
        self.max_batch = self.props["max_work_group_count"][2]
        # Host-visible tensors where the device shares the host's memory (the loader's device type;
        # a CPU implementation by its name where the loader could not be asked).
        self.host_memory = self.caps.device_type in _HOST_MEMORY_DEVICES or cpu
        self.unified = self.host_memory and os.environ.get("MLXARM_UNIFIED") != "0"
        self.cache = cache or ObjectCache(default_dir().replace("llvm", "vulkan"))
        self.spirv: dict = {}
        self.sources: dict = {}
        self.pipelines: collections.OrderedDict = collections.OrderedDict()
        self.pipelines_kept = _PIPELINES_EMULATED if is_emulated(self.props["device_name"]) else _PIPELINES
        self.pool: dict = {}  # (words, host-visible) -> free tensors
        self.requests = 0  # tensors asked for since the last submit
        self.submission = 0  # submits since the eval began (``begin``)
        # per structure of eval (``begin``), least recently used first: (submission, request number) ->
        # the tensors it got the last two times
        self.slot_spaces: collections.OrderedDict = collections.OrderedDict()
        self.slots: dict = {}
        self.sequence = None  # a sequence the next submit records into (a caller's), instead of its own
        self.pending: list = []  # what the next submit runs: operations and (_UPLOAD/_DOWNLOAD, tensors)
        self.recorded: collections.OrderedDict = collections.OrderedDict()  # (``_run``) key -> (sequence, items)
        self.resubmits = 0  # submissions that ran a kept sequence again
        self.pending_uploads: list = []
        self.dying: list = []
        self.tap = None  # a list while a bound call is captured: what this runtime did (``gpu_bind``)
        self.withheld: set = set()  # ids of tensors a bound call owns: never pooled
        self.parked: dict = {}  # id -> a withheld tensor whose array died: pooled when the call lets it go
        self.compiled = 0
        self.uploads = 0
        self.downloads = 0  # device buffers written to their host arrays
        self.submits = 0
        self.dispatches = 0
        self.pipelines_built = 0
        self.operations_made = 0  # dispatch operations (one per pipeline and set of push constants)

    def info(self) -> dict:
        p = self.props
        t = self.matmul_tiling
        return {"device_name": p["device_name"], "driver": "vulkan (kompute)",
                "emulated": is_emulated(p["device_name"]),
                "max_work_group_invocations": p["max_work_group_invocations"],
                "max_work_group_size": tuple(p["max_work_group_size"]),
                "max_work_group_count": tuple(p["max_work_group_count"]),
                "workgroup": self.workgroup,
                "matmul_tile": f"{t.bm}x{t.bn}x{t.bk}" if t else None,
                "unified_memory": self.unified,
                "subgroup_size": self.caps.subgroup_size, "subgroup_reduce": self.subgroups,
                "cooperative_matrix": (f"float16 matmul: {c.sm}x{c.sn}x{c.sk} float16 -> float32 matrices, "
                                       f"{c.bm}x{c.bn} workgroup tiles" if (c := self.coop_tiling) else None)}

    # --- memory --------------------------------------------------------------------------------------
    def _tensor(self, words: int, init: np.ndarray | None = None):
        """A tensor of ``words`` words from the pool, or a new one holding ``init`` (zeros when None):
        host-visible while ``unified`` is on, device-local with a staging buffer otherwise.

        Pipelines are bound to their tensors, so the n-th tensor a submission asks for is the one the
        last submission's n-th request got when that one is free again, else the one the submission
        before got (an output that outlives a step): a replayed decode step then dispatches on the
        same tensors, or on one of two sets, and finds its pipelines built, instead of building
        hundreds a step on tensors shuffled by the pool. Requests are counted per submission of an
        eval: an eval that submits twice (a numpy step reads a kernel's output) keeps the first
        submission's tensors apart from the second's; and per structure of eval (``begin``), so that a
        prompt's eval and the decode steps between two prompts do not take each other's."""
        slot = (self.submission, self.requests)
        self.requests += 1
        free = self.pool.get((words, self.unified))
        got = self.slots.get(slot)
        if free:
            t = None
            for wish in got or ():
                if wish is not None and wish in free:  # kp tensors compare by identity
                    t = free.pop(free.index(wish))
                    break
            if t is None:
                t = free.pop()
        else:
            kind = self.kp.TensorTypes.host if self.unified else self.kp.TensorTypes.device
            t = self.manager.tensor_t(np.zeros(words, np.uint32) if init is None else init, kind)
        if got is None or got[0] is not t:
            self.slots[slot] = (t, got[0] if got else None)
        return t

    def _staged(self, tensor) -> bool:
        """Whether ``tensor`` is device-local: its data reaches the host through its staging buffer."""
        return tensor.tensor_type() != self.kp.TensorTypes.host

    def release(self, tensor) -> None:
        """Keep a dead array's tensor for reuse once the recorded work that may still use it has run. A
        bound call's tensor is parked until the call lets it go (``gpu_bind``)."""
        if id(tensor) in self.withheld:
            self.parked[id(tensor)] = tensor
        else:
            self.dying.append(tensor)

    def upload(self, host: np.ndarray):
        """A tensor holding ``host``'s bytes (C-contiguous): written into its mapped memory now (a new
        tensor is made from them, with no zero fill); a device-local one is copied from its staging
        buffer by the next submit."""
        self.uploads += 1
        raw = host.reshape(-1).view(np.uint8) if host.nbytes else np.zeros(0, np.uint8)
        words = _words(raw.nbytes)
        fresh = not self.pool.get((words, self.unified))
        t = self._tensor(words, raw.view(np.uint32) if fresh and raw.nbytes == 4 * words else None)
        if not fresh or raw.nbytes != 4 * words:
            t.data().view(np.uint8)[:raw.nbytes] = raw
        if self._staged(t):
            self.pending_uploads.append(t)
        if self.tap is not None:
            self.tap.append(("upload", host, t))
        return t

    def alloc(self, nbytes: int):
        return self._tensor(_words(nbytes))

    def begin(self, structure=None) -> None:
        """An eval begins: its submissions count from 0, and its tensor requests are remembered under
        ``structure``, the hash of its graph's structure (None: one not kept) (``_tensor``)."""
        self.submission = 0
        slots = self.slot_spaces.pop(structure, None)
        if slots is None:
            slots = {}
            if len(self.slot_spaces) >= _SLOT_SPACES:
                self.slot_spaces.popitem(last=False)
        self.slot_spaces[structure] = self.slots = slots

    def _flush_uploads(self) -> None:
        if self.pending_uploads:
            self.pending.append((_UPLOAD, tuple(self.pending_uploads)))
            self.pending_uploads = []

    def submit(self, jobs: list) -> None:
        """Run everything recorded, then copy (device tensor, host array) pairs to the host (from the
        tensor's mapped memory: its staging buffer, filled by the submit, or the host-visible tensor)."""
        self.downloads += len(jobs)
        staged = [t for t, _ in jobs if self._staged(t)]
        self._flush_uploads()
        if staged:
            self.pending.append((_DOWNLOAD, tuple(staged)))
        if self.tap is not None:
            self.tap.append(("submit", tuple(jobs), tuple(self.pending)))
        if self.pending:
            self._run(self.pending)
            self.submits += 1
        self.pending = []
        for t in self.dying:
            self.pool.setdefault((t.size(), not self._staged(t)), []).append(t)
        self.dying = []
        self.requests = 0  # the next submission's requests count from 0 (``_tensor``)
        self.submission += 1
        self.check_validation()
        for t, host in jobs:
            host.reshape(-1).view(np.uint8)[:] = t.data().view(np.uint8)[:host.nbytes]

    def _run(self, items: list) -> None:
        """Submit ``items`` (dispatch operations, and (_UPLOAD or _DOWNLOAD, tensors) copies) and wait.

        A submission that runs the very operations on the very tensors of one kept before (a replayed
        decode step, whose launches are the same at every position) submits that one's command buffer
        again: recording costs the host about 10 microseconds a dispatch on the H100 (Kompute records a
        barrier per tensor), and submitting a recorded buffer again costs the submit alone. The kept
        sequences hold their operations and tensors, so the identities in a key stay theirs."""
        seq = self.sequence
        if seq is not None:  # a caller's sequence (with timestamps, say): recorded into, not kept
            self.sequence = None
            self._record(seq, items)
            seq.eval()
            return
        key = tuple(id(i) if type(i) is not tuple else (i[0], *map(id, i[1])) for i in items)
        kept = self.recorded.get(key)
        if kept is not None:
            self.recorded.move_to_end(key)
            kept[0].eval()
            self.resubmits += 1
            return
        seq = self.manager.sequence()
        self._record(seq, items)
        seq.eval()
        self.recorded[key] = (seq, items)
        if len(self.recorded) > _SEQUENCES_KEPT:
            self.recorded.popitem(last=False)

    def _record(self, seq, items: list) -> None:
        kp = self.kp
        for i in items:
            if type(i) is tuple:
                seq.record((kp.OpTensorSyncDevice if i[0] == _UPLOAD else kp.OpTensorSyncLocal)(list(i[1])))
            else:
                seq.record(i)

    # --- kernels -------------------------------------------------------------------------------------
    def program(self, kernel, debug: int = 0, stage: str | None = None):
        key = (combine_name(kernel) if stage == "combine" else (kernel, stage), self.subgroups)
        spirv = self.spirv.get(key)
        if spirv is None:
            source = render_glsl.render(kernel, self.workgroup, stage, self.subgroups)
            self.sources[key] = source
            spirv = self.spirv[key] = self.compile(source)
        if debug > 1:
            print(self.sources[key], file=sys.stderr)
        return spirv

    def compile(self, source: str) -> bytes:
        key = self.cache.key(source, "spirv", f"glslang {self.spirv_target}", __version__)
        spirv = self.cache.get(key)
        if spirv is not None:
            return spirv
        if self.compiler is None:
            raise RuntimeError("[vulkan] glslangValidator was not found on PATH.")
        with tempfile.TemporaryDirectory(prefix="mlxarm-glsl-") as tmp:
            src, out = os.path.join(tmp, "k.comp"), os.path.join(tmp, "k.spv")
            with open(src, "w") as f:
                f.write(source)
            res = self.compiler.run(["-V", "--target-env", self.spirv_target, "--quiet", src, "-o", out])
            if res.returncode != 0:
                path = self.cache.keep_source(key, source)
                raise RuntimeError(f"[vulkan] Shader compilation failed: {res.stdout.strip()} "
                                   f"{res.stderr.strip()}. The generated source is kept at {path}")
            with open(out, "rb") as f:
                spirv = f.read()
        self.compiled += 1
        self.cache.put(key, spirv)
        return spirv

    def launch(self, spirv: bytes, kernel, bufs: list, offsets: list, stream=None) -> None:
        n = kernel.out_size
        parts = reduction_parts(kernel, self.workgroup, self.parallel_groups) if kernel.reduce_op else 1
        if parts > 1:
            # Few outputs: ``parts`` workgroups per output write partial results to a scratch
            # tensor, then one workgroup per output combines them.
            scratch = self._tensor(n * parts)
            self.dispatch(self.program(kernel, 0, "partial"), (kernel, "partial"), [scratch] + bufs[1:],
                          min(self.max_groups, n * parts), [0] + list(offsets[1:]) + [n, parts])
            self.dispatch(self.program(kernel, 0, "combine"), combine_name(kernel), [bufs[0], scratch],
                          min(self.max_groups, n), [offsets[0], n, parts])
            self.release(scratch)
            return
        # An elementwise kernel loops over its index space (a grid-stride loop), each thread taking
        # ``render_glsl.ELEMENTWISE`` elements a step, in up to ``elementwise_groups`` workgroups.
        groups = min(self.max_groups, n) if kernel.reduce_op else \
            min(self.elementwise_groups, -(-n // (self.workgroup * render_glsl.ELEMENTWISE)))
        self.dispatch(spirv, kernel, bufs, groups, list(offsets) + [n])

    def dispatch(self, spirv: bytes, name, bufs: list, groups, push: list) -> None:
        """Record one dispatch of ``groups`` workgroups (an int, or x, y, z) with 32-bit push
        constants (negative integers travel as their two's complement bits)."""
        groups = (groups, 1, 1) if isinstance(groups, int) else tuple(groups)
        key = (name, id(spirv), groups, tuple(map(id, bufs)))  # spirv: the same kernel, subgroups on or off
        entry = self.pipelines.get(key)
        if entry is None:
            algo = self.manager.algorithm(bufs, spirv, groups, np.zeros(0, np.uint32), _push_words(push))
            # (pipeline, its tensors (kept alive), its dispatch operations by push constants)
            entry = self.pipelines[key] = (algo, bufs, {})
            self.pipelines_built += 1
            if len(self.pipelines) > self.pipelines_kept:
                self.pipelines.popitem(last=False)
        else:
            self.pipelines.move_to_end(key)
        # A replayed step dispatches a pipeline with the push constants of the last step (or of a few):
        # the operation made then is recorded again (making one costs tens of microseconds on the H100).
        ops = entry[2]
        values = tuple(push)
        op = ops.get(values)
        if op is None:
            if len(ops) >= _OPS_PER_PIPELINE:
                ops.clear()
            op = ops[values] = self.kp.OpAlgoDispatch(entry[0], _push_words(push))
            self.operations_made += 1
        if self.pending_uploads:
            self._flush_uploads()
        self.pending.append(op)
        self.dispatches += 1
        if self.tap is not None:
            self.tap.append(("launch", tuple(bufs), id(spirv), groups, values))

    def template_kernel(self, name: str, render, debug: int = 0) -> tuple:
        """Kernel template ``name`` (``render("glsl")`` gives its shader), compiled once: (SPIR-V, its
        pipelines' key)."""
        key = ("template", name)
        spirv = self.spirv.get(key)
        if spirv is None:
            source = render("glsl")
            self.sources[key] = source
            spirv = self.spirv[key] = self.compile(source)
        if debug > 1:
            print(self.sources[key], file=sys.stderr)
        return spirv, key

    def run_template(self, kernel: tuple, bufs: list, groups: tuple, threads: int, args: list) -> None:
        """Record template ``kernel`` (``template_kernel``; its workgroup size is ``threads``) over
        ``groups`` workgroups; ``bufs`` bind in order, ``args`` are its 32-bit push constants."""
        self.dispatch(kernel[0], kernel[1], bufs, groups, args)

    # --- a bound call (``gpu_bind``) -------------------------------------------------------------------
    def withhold(self, tensors) -> None:
        """Keep ``tensors`` out of the pool while a bound call owns them: the ones dead arrays left to
        it are parked (``release``)."""
        held = {id(t) for t in tensors}
        self.withheld |= held
        for free in [self.dying, *self.pool.values()]:
            for t in free:
                if id(t) in held:
                    self.parked[id(t)] = t
        self.dying = [t for t in self.dying if id(t) not in held]
        for key, free in self.pool.items():
            self.pool[key] = [t for t in free if id(t) not in held]

    def bound_handle(self, submit: tuple, launches: list, written: list, read: list):
        """What ``run_bound`` replays: a sequence recorded once from the tapped submission ``submit``
        (its uploads, dispatches and downloads); None where it would not carry the ``written`` tensors
        to the device or the ``read`` ones back (a staged tensor its submission did not copy)."""
        items = submit[2]
        synced = {_UPLOAD: set(), _DOWNLOAD: set()}
        for i in items:
            if type(i) is tuple:
                synced[i[0]].update(map(id, i[1]))
        if any(self._staged(t) and id(t) not in synced[_UPLOAD] for t in written) \
                or any(self._staged(t) and id(t) not in synced[_DOWNLOAD] for t in read):
            return None
        seq = self.manager.sequence()
        self._record(seq, list(items))
        return seq, items

    def run_bound(self, handle, writes: list, reads: list) -> None:
        """Replay a bound call: write (tensor, byte offset, contiguous host array) pairs into the
        tensors' mapped memory, submit the recorded sequence, and read (tensor, byte offset, host
        array) pairs back."""
        for t, off, host in writes:
            t.data().view(np.uint8)[off:off + host.nbytes] = host.reshape(-1).view(np.uint8)
        handle[0].eval()
        self.submits += 1
        self.resubmits += 1
        self.check_validation()
        for t, off, host in reads:
            host.reshape(-1).view(np.uint8)[:] = t.data().view(np.uint8)[off:off + host.nbytes]
        self.downloads += len(reads)

    def check_validation(self) -> None:
        if self.validation_log is None:
            return
        try:
            with open(self.validation_log) as f:
                text = f.read()
        except OSError:
            return
        if text.strip():
            open(self.validation_log, "w").close()
            raise VulkanValidationError(f"[vulkan] The validation layer reported: {text.strip()[:2000]}")


def validation_layer() -> str | None:
    """The manifest of the Khronos validation layer where the Vulkan loader looks for it, or None."""
    dirs = [d for d in os.environ.get("VK_LAYER_PATH", "").split(":") if d]
    data_dirs = [os.environ.get("XDG_DATA_HOME", os.path.expanduser("~/.local/share"))]
    data_dirs += os.environ.get("XDG_DATA_DIRS", "/usr/local/share:/usr/share").split(":")
    dirs += [os.path.join(d, "vulkan", "explicit_layer.d") for d in data_dirs + ["/etc"] if d]
    for d in dirs:
        path = os.path.join(d, "VkLayer_khronos_validation.json")
        if os.path.exists(path):
            return path
    return None


def _enable_validation() -> str:
    """Turn the Khronos validation layer on for this process; its messages go to the returned file.
    The layer's settings go both into a settings file (``VK_LAYER_SETTINGS_PATH``, what layers up to
    1.3.2xx read) and into the environment variables newer layers read. The loader ignores a layer it
    cannot find, so a missing layer is an error here rather than validation silently off."""
    if validation_layer() is None:
        raise RuntimeError("[vulkan] MLXARM_VK_VALIDATION=1, but the Khronos validation layer "
                           "(VkLayer_khronos_validation.json) is not installed where the Vulkan loader looks.")
    fd, path = tempfile.mkstemp(prefix="mlxarm-vk-validation-", suffix=".log")
    os.close(fd)
    folder = tempfile.mkdtemp(prefix="mlxarm-vk-layer-")
    atexit.register(_remove_validation_files, path, folder)
    layers = os.environ.get("VK_INSTANCE_LAYERS", "")
    if "VK_LAYER_KHRONOS_validation" not in layers:
        os.environ["VK_INSTANCE_LAYERS"] = ":".join(filter(None, [layers, "VK_LAYER_KHRONOS_validation"]))
    settings = {"debug_action": "VK_DBG_LAYER_ACTION_LOG_MSG", "log_filename": path, "report_flags": "error,warn"}
    with open(os.path.join(folder, "vk_layer_settings.txt"), "w") as f:
        f.writelines(f"khronos_validation.{k} = {v}\n" for k, v in settings.items())
    os.environ["VK_LAYER_SETTINGS_PATH"] = os.path.join(folder, "vk_layer_settings.txt")
    for k, v in settings.items():
        os.environ[f"VK_KHRONOS_VALIDATION_{k.upper()}"] = v
    return path


def _remove_validation_files(log: str, folder: str) -> None:
    """At exit: the layer's settings, and its log unless it holds a message (kept for inspection)."""
    shutil.rmtree(folder, ignore_errors=True)
    try:
        if not os.path.getsize(log):
            os.remove(log)
    except OSError:
        pass


class VulkanExecutor(GPUExecutor):
    name = "vulkan"

    def __init__(self, runtime: VulkanRuntime | None = None):
        super().__init__(runtime or VulkanRuntime())
        self.resident.on_drop = self.rt.release

    def supports(self, kernel) -> bool:
        return render_glsl.supported(kernel)


def is_emulated(device_name: str) -> bool:
    """Whether a Vulkan device is a CPU implementation (Mesa's lavapipe, SwiftShader)."""
    return any(tag in device_name.lower() for tag in ("llvmpipe", "lavapipe", "swiftshader"))


def available() -> str | None:
    """None when a Vulkan device can be used through kp, else the reason it cannot."""
    try:
        import kp
    except ImportError as e:
        return f"kp (Kompute) is not installed ({e})"
    if shutil.which("glslangValidator") is None:
        return "glslangValidator is not on PATH"
    try:
        kp.Manager().get_device_properties()
    except Exception as e:  # noqa: BLE001 - any driver failure means no usable device
        return f"no Vulkan device is usable ({e})"
    return None
