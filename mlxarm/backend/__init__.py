"""Executors behind one narrow interface, and the choice between them.

An executor realizes a list of nodes in order: ``run(nodes)`` sets each node's ``_data``. The numpy
executor (``numpy_executor``) is the reference and needs nothing but numpy; the code-generating
backends plug in here. ``MLXARM_DEVICE`` picks one explicitly.
"""
from __future__ import annotations

import os

from .numpy_executor import NumpyExecutor

_EXECUTORS: dict = {}
KNOWN = ("numpy", "llvm", "opencl", "vulkan")


def _make(name: str):
    if name == "numpy":
        return NumpyExecutor()
    if name == "llvm":
        from .llvm import LLVMExecutor  # needs llvmlite, so only when asked for

        return LLVMExecutor()
    if name == "opencl":
        from .opencl import OpenCLExecutor  # needs pyopencl and an OpenCL driver

        return OpenCLExecutor()
    if name == "vulkan":
        from .vulkan import VulkanExecutor  # needs kp and a Vulkan driver

        return VulkanExecutor()
    raise ValueError(f"MLXARM_DEVICE={name!r} is not an executor this build knows (known: {', '.join(KNOWN)}).")


def executor(name: str):
    if name not in _EXECUTORS:
        _EXECUTORS[name] = _make(name)
    return _EXECUTORS[name]


def available_gpu_backend():
    """Name of the GPU executor to use, or None (none is built into this release yet)."""
    return None


def executor_for(device):
    forced = os.environ.get("MLXARM_DEVICE")
    if forced:
        return executor(forced)
    return executor("numpy")


def run_order(refs) -> None:
    """Realize weak references to nodes in order, each with its stream's executor."""
    ex = executor_for(None)
    ex.run(refs)
