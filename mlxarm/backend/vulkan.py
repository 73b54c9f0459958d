"""The Vulkan executor: fused kernels rendered as GLSL compute shaders (``codegen.render_glsl``),
compiled to SPIR-V by ``glslangValidator -V`` (cached on disk) and run through Kompute (``kp``).

All work of one eval is recorded into one Kompute sequence (uploads, every dispatch, downloads) and
submitted once: Kompute puts a buffer barrier before each dispatch, so dependent dispatches are
ordered. Device buffers are 32-bit word tensors holding any dtype's bytes; they stay on the device
across evals and go back to a pool (by size) when their host array dies, so repeated evals reuse both
buffers and the pipelines bound to them.

``MLXARM_VK_VALIDATION=1`` enables the Khronos validation layer and raises on any message it reports.
"""
from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from .. import __version__
from ..codegen import render_glsl
from .cache import ObjectCache, default_dir
from .gpu_common import GPUExecutor

_PIPELINES = 512  # pipelines kept bound to their buffers, least recently used dropped first


class VulkanValidationError(RuntimeError):
    pass


def _words(nbytes: int) -> int:
    return max(1, -(-nbytes // 4))


class VulkanRuntime:
    def __init__(self, cache: ObjectCache | None = None, device: int = 0):
        self.validation_log = None
        if os.environ.get("MLXARM_VK_VALIDATION") == "1":
            self.validation_log = _enable_validation()
        import kp

        self.kp = kp
        self.manager = kp.Manager(device)
        self.props = self.manager.get_device_properties()
        self.workgroup = min(256, self.props["max_work_group_invocations"])
        if "llvmpipe" in self.props["device_name"]:
            self.workgroup = 64
        self.max_groups = min(65535, self.props["max_work_group_count"][0])
        self.cache = cache or ObjectCache(default_dir().replace("llvm", "vulkan"))
        self.glslang = shutil.which("glslangValidator")
        self.spirv: dict = {}
        self.sources: dict = {}
        self.pipelines: collections.OrderedDict = collections.OrderedDict()
        self.pool: dict = {}  # words -> free tensors
        self.sequence = None
        self.pending_uploads: list = []
        self.dying: list = []
        self.compiled = 0
        self.uploads = 0
        self.submits = 0
        self.dispatches = 0

    def info(self) -> dict:
        p = self.props
        return {"device_name": p["device_name"], "driver": "vulkan (kompute)",
                "max_work_group_invocations": p["max_work_group_invocations"],
                "max_work_group_size": tuple(p["max_work_group_size"]),
                "max_work_group_count": tuple(p["max_work_group_count"])}

    # --- memory --------------------------------------------------------------------------------------
    def _tensor(self, words: int):
        free = self.pool.get(words)
        if free:
            return free.pop()
        return self.manager.tensor_t(np.zeros(words, np.uint32))

    def release(self, tensor) -> None:
        """Keep a dead array's tensor for reuse once the recorded work that may still use it has run."""
        self.dying.append(tensor)

    def upload(self, host: np.ndarray):
        self.uploads += 1
        raw = host.reshape(-1).view(np.uint8) if host.nbytes else np.zeros(0, np.uint8)
        t = self._tensor(_words(raw.nbytes))
        t.data().view(np.uint8)[:raw.nbytes] = raw
        self.pending_uploads.append(t)
        return t

    def alloc(self, nbytes: int):
        return self._tensor(_words(nbytes))

    def _seq(self):
        if self.sequence is None:
            self.sequence = self.manager.sequence()
        if self.pending_uploads:
            self.sequence.record(self.kp.OpTensorSyncDevice(self.pending_uploads))
            self.pending_uploads = []
        return self.sequence

    def submit(self, jobs: list) -> None:
        """Run everything recorded, then copy (device tensor, host array) pairs to the host."""
        if self.sequence is None and not jobs and not self.pending_uploads:
            return
        seq = self._seq()
        if jobs:
            seq.record(self.kp.OpTensorSyncLocal([t for t, _ in jobs]))
        seq.eval()
        self.submits += 1
        self.sequence = None
        for t in self.dying:
            self.pool.setdefault(t.size(), []).append(t)
        self.dying = []
        self.check_validation()
        for t, host in jobs:
            host.reshape(-1).view(np.uint8)[:] = t.data().view(np.uint8)[:host.nbytes]

    # --- kernels -------------------------------------------------------------------------------------
    def program(self, kernel, debug: int = 0):
        spirv = self.spirv.get(kernel)
        if spirv is None:
            source = render_glsl.render(kernel, self.workgroup)
            self.sources[kernel] = source
            spirv = self.spirv[kernel] = self.compile(source)
        if debug > 1:
            print(self.sources[kernel], file=sys.stderr)
        return spirv

    def compile(self, source: str) -> bytes:
        key = self.cache.key(source, "spirv", "glslang", __version__)
        spirv = self.cache.get(key)
        if spirv is not None:
            return spirv
        if self.glslang is None:
            raise RuntimeError("[vulkan] glslangValidator was not found on PATH.")
        with tempfile.TemporaryDirectory(prefix="mlxarm-glsl-") as tmp:
            src, out = os.path.join(tmp, "k.comp"), os.path.join(tmp, "k.spv")
            with open(src, "w") as f:
                f.write(source)
            res = subprocess.run([self.glslang, "-V", "--quiet", src, "-o", out], capture_output=True,
                                 text=True)
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
        groups = min(self.max_groups, n if kernel.reduce_op else -(-n // self.workgroup))
        push = np.array(list(offsets) + [n], dtype=np.uint32)
        key = (kernel, groups, tuple(id(b) for b in bufs))
        algo = self.pipelines.get(key)
        if algo is None:
            algo = self.manager.algorithm(bufs, spirv, (groups, 1, 1), np.zeros(0, np.uint32), push)
            self.pipelines[key] = (algo, bufs)
            if len(self.pipelines) > _PIPELINES:
                self.pipelines.popitem(last=False)
        else:
            self.pipelines.move_to_end(key)
            algo = algo[0]
        self._seq().record(self.kp.OpAlgoDispatch(algo, push))
        self.dispatches += 1

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


def _enable_validation() -> str:
    """Turn the Khronos validation layer on for this process; its messages go to the returned file."""
    fd, path = tempfile.mkstemp(prefix="mlxarm-vk-validation-", suffix=".log")
    os.close(fd)
    layers = os.environ.get("VK_INSTANCE_LAYERS", "")
    if "VK_LAYER_KHRONOS_validation" not in layers:
        os.environ["VK_INSTANCE_LAYERS"] = ":".join(filter(None, [layers, "VK_LAYER_KHRONOS_validation"]))
    os.environ["VK_KHRONOS_VALIDATION_DEBUG_ACTION"] = "VK_DBG_LAYER_ACTION_LOG_MSG"
    os.environ["VK_KHRONOS_VALIDATION_LOG_FILENAME"] = path
    os.environ["VK_KHRONOS_VALIDATION_REPORT_FLAGS"] = "error,warn"
    return path


class VulkanExecutor(GPUExecutor):
    name = "vulkan"

    def __init__(self, runtime: VulkanRuntime | None = None):
        super().__init__(runtime or VulkanRuntime())
        self.resident.on_drop = self.rt.release

    def supports(self, kernel) -> bool:
        return render_glsl.supported(kernel)


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
