"""Code-generation targets: a triple, a CPU, its features, and the vector shape kernels use there.

``host()`` reads the running CPU through llvmlite (the compiler, not a runtime): AVX-512 gives 512-bit
vectors, AVX2 256, other x86 128; aarch64 uses NEON's 128 bits, or SVE's scalable vectors when the
features ask for ``+sve`` (``<vscale x 4 x float>``: 4 float lanes per 128 bits of the hardware's
vector length, known only at run time).
"""
from __future__ import annotations

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


def host() -> Target:
    """The machine this process runs on."""
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
