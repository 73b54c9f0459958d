"""Code-generation targets: a triple, a CPU, its features, and the vector shape kernels use there.

``host()`` reads the running CPU through llvmlite (the compiler, not a runtime; the kernel cache keeps
what it said, so a process whose kernels are all cached never imports it): AVX-512 gives 512-bit
vectors, AVX2 256, other x86 128; aarch64 uses NEON's 128 bits, or SVE's scalable vectors when the
features ask for ``+sve`` (``<vscale x 4 x float>``: 4 float lanes per 128 bits of the hardware's
vector length, known only at run time).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import tempfile
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    triple: str
    cpu: str
    features: str  # LLVM's "+a,+b,-c" form
    vector_bits: int  # for a scalable target: bits per vscale unit (128 on SVE)
    scalable: bool = False

    @property
    def lanes(self) -> int:
        """float32 lanes of one vector (per vscale unit on a scalable target)."""
        return max(1, self.vector_bits // 32)

    def has(self, feature: str) -> bool:
        return f"+{feature}" in self.features.split(",")


def _vector_bits_x86(features: set) -> int:
    if "avx512f" in features:
        return 512
    if "avx2" in features:
        return 256
    return 128


def for_triple(triple: str, cpu: str = "generic", features: str = "") -> Target:
    """A target for a triple and a feature string (``+sve`` makes aarch64 scalable)."""
    feats = {f[1:] for f in features.split(",") if f.startswith("+")}
    arch = triple.split("-")[0]
    if arch in ("aarch64", "arm64"):
        if "sve" in feats:
            return Target(triple, cpu, features, 128, scalable=True)
        return Target(triple, cpu, features, 128)
    if arch in ("x86_64", "i686", "i386"):
        return Target(triple, cpu, features, _vector_bits_x86(feats))
    return Target(triple, cpu, features, 128)


def host(directory: str | None = None) -> Target:
    """The machine this process runs on. With a ``directory`` (the kernel cache's), the description is
    kept there under a fingerprint of the machine (``_fingerprint``) and read back by later processes
    without importing llvmlite; a missing, damaged or foreign entry is asked of llvmlite again and
    rewritten."""
    fingerprint = _fingerprint() if directory else None
    path = fingerprint and os.path.join(directory, f"host-{hashlib.sha256(fingerprint.encode()).hexdigest()[:32]}.json")
    if path:
        try:
            with open(path) as f:
                entry = json.load(f)
            if entry.pop("fingerprint") == fingerprint:
                return Target(**entry)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
    target = _ask_llvm()
    if path:
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-host-")
            with os.fdopen(fd, "w") as f:
                json.dump({"fingerprint": fingerprint, **dataclasses.asdict(target)}, f)
            os.replace(tmp, path)
        except OSError:
            pass  # an unwritable cache only costs asking llvmlite next time
    return target


def _fingerprint() -> str | None:
    """What identifies this machine's CPU to LLVM, read without LLVM: the architecture, the CPU's
    lines of /proc/cpuinfo (model, flags or features; not its clock or BogoMIPS, which vary), the
    llvmlite installation (its LLVM names the CPU and its features: where it is, and the size and time
    of its ``__init__.py``, which a reinstall rewrites; cheaper than asking ``importlib.metadata``) and
    the mlxarm version. None where there is no /proc/cpuinfo or no llvmlite (then llvmlite is asked)."""
    import importlib.util

    from .. import __version__

    try:
        origin = importlib.util.find_spec("llvmlite").origin
        installed = os.stat(origin)
        with open("/proc/cpuinfo") as f:
            lines = [line.strip() for line in f
                     if not any(w in line.split(":")[0].lower() for w in ("mhz", "bogomips"))]
    except (OSError, AttributeError, TypeError, ValueError):
        return None
    return "\n".join([platform.machine(), f"llvmlite {origin} {installed.st_size} {installed.st_mtime_ns}",
                      f"mlxarm {__version__}"] + lines)


def _ask_llvm() -> Target:
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    feature_map = llvm.get_host_cpu_features()
    features = feature_map.flatten()
    enabled = {k for k, v in feature_map.items() if v}
    target = for_triple(llvm.get_process_triple(), llvm.get_host_cpu_name(),
                        ",".join(f"+{f}" for f in sorted(enabled)))
    # The full +/- list keeps LLVM from assuming features the CPU lacks.
    return Target(target.triple, target.cpu, features, target.vector_bits, target.scalable)
