"""Executors behind one narrow interface, and the choice between them.

An executor realizes a list of nodes in order: ``run(nodes)`` sets each node's ``_data``. The numpy
executor (``numpy_executor``) is the reference and needs nothing but numpy; the code-generating
backends plug in here. ``mx.cpu`` runs on the LLVM executor when llvmlite is installed and works
(``cpu_backend``), else on numpy. ``MLXARM_DEVICE`` picks one explicitly.

``mx.gpu`` is the best GPU backend on a real GPU (``available_gpu_backend``: Vulkan first, then
OpenCL), and the default device when there is one. Devices emulated on the CPU (Mesa's lavapipe,
PoCL's CPU device) never count as a GPU: they run only when ``MLXARM_DEVICE`` names their backend.
"""
from __future__ import annotations

import os

_EXECUTORS: dict = {}
# Executors whose kernels may leave an output's current contents on the device only (the GPU
# executors): a host read of a realized array asks each of them to write its host buffer first
# (``core.graph.host_data``), and an eval on another executor has them write all of theirs.
device_writers: list = []
KNOWN = ("numpy", "llvm", "opencl", "vulkan")


def _make(name: str):
    if name == "numpy":
        from .numpy_executor import NumpyExecutor  # imported here: it imports mlxarm.core, which asks
        # this module for the default device while it is being imported

        return NumpyExecutor()
    if name == "llvm":
        from .llvm import LLVMExecutor  # needs llvmlite, so only when asked for

        return LLVMExecutor()
    if name == "opencl":
        from .opencl import OpenCLExecutor  # needs pyopencl and an OpenCL driver

        return OpenCLExecutor()
    if name == "vulkan":
        from .vulkan import VulkanExecutor, VulkanRuntime  # needs kp and a Vulkan driver

        # The real GPU when there is one (even if an emulated device is listed first).
        return VulkanExecutor(VulkanRuntime(device=_GPU[1] if available_gpu_backend() == "vulkan" else 0))
    raise ValueError(f"MLXARM_DEVICE={name!r} is not an executor this build knows (known: {', '.join(KNOWN)}).")


def executor(name: str):
    if name not in _EXECUTORS:
        _EXECUTORS[name] = _make(name)
    return _EXECUTORS[name]


_GPU: list = []  # [backend name or None, its device index], once probed
_CPU_EXECUTORS = ("numpy", "llvm")


def available_gpu_backend():
    """Name of the executor that runs ``mx.gpu`` ("vulkan" or "opencl") when this machine has a
    real GPU one of them can drive, else None. Probed once per process (about half a second, and the
    drivers' libraries stay loaded), and not at all while ``MLXARM_DEVICE`` names a CPU executor or
    when the system has no GPU device node (``gpu_device_nodes``)."""
    if os.environ.get("MLXARM_DEVICE") in _CPU_EXECUTORS:
        return None
    if not _GPU:
        found = (_probe_vulkan() or _probe_opencl()) if gpu_device_nodes() else None
        _GPU.extend(found or (None, 0))
    return _GPU[0]


# Device nodes through which Linux and Android GPU drivers reach the hardware: DRM render nodes (Mesa,
# AMD, Intel, Arm, Qualcomm's freedreno), NVIDIA's proprietary driver, Qualcomm's KGSL (Adreno) and Arm's
# Mali kernel driver. A machine with none of them has no GPU a Vulkan or OpenCL driver could drive.
_GPU_NODES = ("/dev/dri/renderD*", "/dev/nvidia[0-9]*", "/dev/kgsl*", "/dev/mali*")


def gpu_device_nodes() -> list:
    """The GPU device nodes present (empty on a machine without a GPU, where probing the drivers would
    only load the CPU-emulated ones: lavapipe and PoCL cost about 80 MB of memory and 0.2 s)."""
    import glob

    return [path for pattern in _GPU_NODES for path in glob.glob(pattern)]


def _probe_vulkan():
    """("vulkan", device index) for the first Vulkan device that is not emulated on the CPU."""
    import shutil

    try:
        import kp

        from .vulkan import is_emulated
    except ImportError:
        return None
    if shutil.which("glslangValidator") is None:
        return None
    try:
        manager = kp.Manager()
    except Exception:  # noqa: BLE001 - no usable Vulkan driver
        return None
    try:
        devices = manager.list_devices()
    finally:
        manager.destroy()
    for index, props in enumerate(devices):
        if not is_emulated(props["device_name"]):
            return "vulkan", index
    return None


def _probe_opencl():
    try:
        import pyopencl as cl
    except ImportError:
        return None
    try:
        if any(d.type & cl.device_type.GPU for p in cl.get_platforms() for d in p.get_devices()):
            return "opencl", 0
    except cl.Error:
        pass
    return None


_CPU: list = []  # the CPU executor's name, once chosen


def cpu_backend() -> str:
    """"llvm" when llvmlite is installed and compiles for this CPU, else "numpy" (chosen once)."""
    if not _CPU:
        from .llvm import available

        name = "numpy"
        if available() is None:
            try:
                executor("llvm")
                name = "llvm"
            except Exception as e:  # noqa: BLE001 - any failure to set LLVM up leaves numpy serving
                import warnings

                warnings.warn(f"mlxarm: the LLVM executor could not start ({e}); mx.cpu runs on numpy.",
                              RuntimeWarning, stacklevel=2)
        _CPU.append(name)
    return _CPU[0]


_DEFAULT_DEVICE: list = []  # core.device.default_device, imported at the first call (the core imports this)


def executor_for(device):
    """The executor for work on ``device`` (None: the default device): ``MLXARM_DEVICE`` when set,
    else the GPU backend for ``mx.gpu`` and ``cpu_backend`` for ``mx.cpu``."""
    forced = os.environ.get("MLXARM_DEVICE")
    if forced:
        return executor(forced)
    if device is None:
        if not _DEFAULT_DEVICE:
            from ..core.device import default_device

            _DEFAULT_DEVICE.append(default_device)
        device = _DEFAULT_DEVICE[0]()
    if getattr(getattr(device, "type", None), "name", None) == "gpu":
        name = available_gpu_backend()
        if name is not None:
            return executor(name)
    return executor(cpu_backend())


def _host_data_for(ex) -> None:
    """Outputs other executors than ``ex`` left on the device, written to their host buffers."""
    for other in device_writers:
        if other is not ex and other.resident.stale:
            other.sync_host()


def run_program_now(state, inputs: list, free: dict):
    """``core.graph.run_program_now`` on the default executor, when it runs programs directly."""
    ex = executor_for(None)
    run = getattr(ex, "run_call_now", None)
    if run is None:
        return None
    _host_data_for(ex)
    return run(state, inputs, free)


def bind_program(state, inputs: list, free: dict, tops: list):
    """``core.graph.bind_program`` on the default executor, when it binds programs."""
    ex = executor_for(None)
    bind = getattr(ex, "bind_call", None)
    if bind is None:
        return None
    _host_data_for(ex)
    bound = bind(state, inputs, free, tops)
    return None if bound is None else (ex, bound)


def run_bound(ex, bound, given: tuple, layout: tuple):
    """``core.graph.run_bound``: ``given`` run by ``ex``'s ``bound`` program, when ``ex`` is still
    the default executor."""
    if executor_for(None) is not ex:
        return None
    _host_data_for(ex)
    return ex.run_bound(bound, given, layout)


def run_order(refs, read=()) -> None:
    """Realize weak references to nodes in order, each with its stream's executor. Outputs another
    executor left on the device are written to their host buffers first. ``read``: nodes the host
    reads next, which a GPU executor writes to their host buffers in the eval's own submission."""
    ex = executor_for(None)
    _host_data_for(ex)
    if read and ex in device_writers:
        ex.run(refs, read)
    else:
        ex.run(refs)
