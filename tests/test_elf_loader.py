"""The ELF loader (``elf_loader``): kernels' object code loaded without LLVM.

A process whose kernels are all in the disk cache never imports llvmlite; one that must compile imports
it for that alone. Objects of both code models the loader meets run here, their pages protected as the
loader promises. aarch64 objects (the executor's kernels for NEON and SVE2, and a module with constant
pools, data, a call between two functions, a call into libm through a stub and a function reached
through the GOT, in the small and the large code model) are relocated here to a fixed address and run
in a static harness under qemu that maps the image at that address, its external functions the
harness's own. Malformed objects, unknown relocations and unknown symbols raise ``LoadError``.
"""
import ctypes
import json
import mmap
import os
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("llvmlite", reason="compiling kernels needs llvmlite")

from mlxarm.backend import elf_loader  # noqa: E402
from mlxarm.backend.cache import ObjectCache  # noqa: E402
from mlxarm.backend.elf_loader import LoadError  # noqa: E402
from mlxarm.backend.llvm import CompileError, Compiler  # noqa: E402
from mlxarm.codegen import render_llvm  # noqa: E402
from mlxarm.codegen import target as targets  # noqa: E402
from test_aarch64 import NEON, RUNNER, SVE, TOOLS, _lowered, input_files  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(
    platform.machine().lower())
NAMES = {t: entry[0] for table in elf_loader._RELOCATIONS.values() for t, entry in table.items()}

# out[i] = (fmodf(x[i], 0.75) + atan2f(x[i], 1.5) * scale[i % 4]) * 1.1f for i in [start, end), and
# mixed_count += 1 per element: a call to another global function of the module, which jumps to libm's
# fmodf (a tail call, through a stub), a libm function's address (through the GOT in position-independent
# code), a constant, data and bss, and 64 KiB of (zero) constants read in between, so that the data lies
# beyond the reach of ADRP's low two bits of pages.
MIXED = r"""
@scale = internal global [4 x float] [float 1.0, float 2.0, float 3.0, float 4.0]
@pad = internal constant [16384 x float] zeroinitializer
@mixed_count = global i64 0
declare float @fmodf(float, float)
declare float @atan2f(float, float)

define float @mixed_helper(float %x) noinline {
  %r = tail call float @fmodf(float %x, float 0.75)
  ret float %r
}

define void @mixed(ptr %args, i64 %start, i64 %end) {
entry:
  %out = load ptr, ptr %args
  %inp = getelementptr ptr, ptr %args, i64 1
  %in = load ptr, ptr %inp
  %slot = alloca ptr
  store volatile ptr @atan2f, ptr %slot
  %fn = load volatile ptr, ptr %slot
  %empty = icmp sge i64 %start, %end
  br i1 %empty, label %done, label %loop
loop:
  %i = phi i64 [ %start, %entry ], [ %i1, %loop ]
  %xp = getelementptr float, ptr %in, i64 %i
  %x = load float, ptr %xp
  %h = call float @mixed_helper(float %x)
  %a = call float %fn(float %x, float 1.5)
  %k = and i64 %i, 3
  %sp = getelementptr [4 x float], ptr @scale, i64 0, i64 %k
  %s = load float, ptr %sp
  %as = fmul float %a, %s
  %v = fadd float %h, %as
  %pi = and i64 %i, 16383
  %pp = getelementptr [16384 x float], ptr @pad, i64 0, i64 %pi
  %pv = load float, ptr %pp
  %v0 = fadd float %v, %pv
  %w = fmul float %v0, 0x3FF19999A0000000
  %op = getelementptr float, ptr %out, i64 %i
  store float %w, ptr %op
  %c = load i64, ptr @mixed_count
  %c1 = add i64 %c, 1
  store i64 %c1, ptr @mixed_count
  %i1 = add i64 %i, 1
  %more = icmp slt i64 %i1, %end
  br i1 %more, label %loop, label %done
done:
  ret void
}
"""

# The relocations MIXED must contain per architecture and (code model, relocation model): the ones
# each case exists to run.
MIXED_RELOCATIONS = {
    ("x86_64", "small", "pic"): {"R_X86_64_PC32", "R_X86_64_PLT32", "R_X86_64_REX_GOTPCRELX"},
    ("x86_64", "large", "static"): {"R_X86_64_64"},
    ("aarch64", "small", "pic"): {"R_AARCH64_CALL26", "R_AARCH64_JUMP26", "R_AARCH64_ADR_PREL_PG_HI21",
                                  "R_AARCH64_ADD_ABS_LO12_NC", "R_AARCH64_ADR_GOT_PAGE", "R_AARCH64_LD64_GOT_LO12_NC"},
    ("aarch64", "large", "static"): {"R_AARCH64_CALL26", "R_AARCH64_JUMP26", "R_AARCH64_MOVW_UABS_G0_NC",
                                     "R_AARCH64_MOVW_UABS_G1_NC", "R_AARCH64_MOVW_UABS_G2_NC", "R_AARCH64_MOVW_UABS_G3",
                                     "R_AARCH64_ADR_GOT_PAGE", "R_AARCH64_LD64_GOT_LO12_NC"},
}
MODELS = [("small", "pic"), ("large", "static")]
TRIPLES = {"x86_64": "x86_64-unknown-linux-gnu", "aarch64": "aarch64-unknown-linux-gnu"}


def _mixed_expected(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    scale = np.array([1.0, 2.0, 3.0, 4.0])[np.arange(x.size) % 4]
    return (np.fmod(x, 0.75) + np.arctan2(x, 1.5) * scale) * float(np.float32(1.1))


def _emit(source: str, arch: str, codemodel: str, reloc: str, features: str = "") -> bytes:
    import llvmlite.binding as llvm

    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    machine = llvm.Target.from_triple(TRIPLES[arch]).create_target_machine(
        cpu="generic", features=features, opt=3, reloc=reloc, codemodel=codemodel)
    return machine.emit_object(llvm.parse_assembly(source))


def _relocations(obj: bytes) -> set:
    parsed = elf_loader.parse(obj)
    return {NAMES.get(r.type, r.type) for rs in parsed.relocations.values() for r in rs}


# --- a process with its kernels cached ----------------------------------------------------------

_SCRIPT = r"""
import json, sys
import numpy as np
import mlxarm.core as mx
from mlxarm.backend import executor

rng = np.random.default_rng(0)
a = mx.array(rng.standard_normal((300, 70)).astype(np.float32))
b = mx.array(rng.standard_normal((70, 50)).astype(np.float32))
c = mx.array(np.linspace(-4, 4, 1 << 18, dtype=np.float32))
out = {"chain": mx.tanh(a * 2 + 1) * 0.5, "sum": mx.sum(mx.exp(a * 0.1), axis=1), "matmul": a @ b,
       "softmax": mx.softmax(a, axis=-1), "libm": mx.remainder(c, 0.3) * 2 + mx.arctan2(c, c + 1),
       "half": (a * 3).astype(mx.float16)}
mx.eval(*out.values())
np.savez(sys.argv[1], **{k: np.array(v) for k, v in out.items()})
print(json.dumps({"llvmlite": "llvmlite" in sys.modules, "compiled": executor("llvm").compiler.compiled}))
"""


def _expected() -> dict:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 70)).astype(np.float32)
    b = rng.standard_normal((70, 50)).astype(np.float32)
    c = np.linspace(-4, 4, 1 << 18, dtype=np.float32)
    e = np.exp(a - a.max(-1, keepdims=True))
    return {"chain": np.tanh(a * 2 + 1) * 0.5, "sum": np.exp(a * np.float32(0.1)).sum(1), "matmul": a @ b,
            "softmax": e / e.sum(-1, keepdims=True),
            "libm": np.remainder(c, np.float32(0.3)) * 2 + np.arctan2(c, c + 1), "half": (a * 3).astype(np.float16)}


def test_cached_kernels_run_without_llvmlite(tmp_path):
    """A first process compiles its kernels (importing llvmlite) and loads them through the ELF loader;
    a second one finds them all in the cache, with the host's description, and never imports llvmlite.
    Both compute what numpy does, on two threads (the kernels big enough are shared out)."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), MLXARM_DEVICE="llvm", MLXARM_THREADS="2",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    expected = _expected()
    runs = []
    for i in range(2):
        res = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / f"out{i}.npz")], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
        got = np.load(tmp_path / f"out{i}.npz")
        for name, ref in expected.items():
            np.testing.assert_allclose(got[name].astype(np.float64), ref.astype(np.float64), rtol=2e-5, atol=2e-5,
                                       err_msg=name)
    assert runs[0]["llvmlite"] and runs[0]["compiled"] > 0, runs
    assert not runs[1]["llvmlite"] and runs[1]["compiled"] == 0, runs
    assert list((tmp_path / "cache" / "mlxarm" / "llvm").glob("host-*.json"))


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="the host is fingerprinted from /proc/cpuinfo")
def test_host_description_is_kept(tmp_path, monkeypatch):
    """``host`` asks llvmlite once and keeps the answer; a damaged or foreign entry is asked again and
    rewritten."""
    real = targets._ask_llvm()
    asked = []
    monkeypatch.setattr(targets, "_ask_llvm", lambda: asked.append(1) or real)
    assert targets.host(str(tmp_path)) == real and len(asked) == 1
    assert targets.host(str(tmp_path)) == real and len(asked) == 1
    (entry,) = tmp_path.glob("host-*.json")
    entry.write_text('{"fingerprint": ')
    assert targets.host(str(tmp_path)) == real and len(asked) == 2
    kept = json.loads(entry.read_text())
    entry.write_text(json.dumps(dict(kept, fingerprint=kept["fingerprint"] + " elsewhere", cpu="other")))
    assert targets.host(str(tmp_path)) == real and len(asked) == 3
    monkeypatch.setattr(targets, "_fingerprint", lambda: "another machine")
    assert targets.host(str(tmp_path)) == real and len(asked) == 4
    assert len(list(tmp_path.glob("host-*.json"))) == 2


# --- objects loaded and run here ----------------------------------------------------------------

def _protections(base: int, size: int) -> dict:
    """Offset in the mapping at ``base`` -> the permissions of its pages (/proc/self/maps)."""
    found = {}
    with open("/proc/self/maps") as f:
        for line in f:
            span, perms = line.split()[:2]
            lo, hi = (int(v, 16) for v in span.split("-"))
            for page in range(max(lo, base), min(hi, base + size), mmap.PAGESIZE):
                found[page - base] = perms[:3]
    return found


@pytest.mark.skipif(HOST is None or not os.path.exists("/proc/self/maps"),
                    reason="loads objects for x86-64 or aarch64 Linux")
@pytest.mark.parametrize("model", MODELS, ids=["small-pic", "large-static"])
def test_objects_load_and_run(model):
    """MIXED in either code model runs from one mapping: code and stubs read+execute, constants and the
    GOT read-only, data writable (the kernel counts its elements in a global)."""
    obj = _emit(MIXED, HOST, *model)
    assert MIXED_RELOCATIONS[(HOST, *model)] <= _relocations(obj)
    image = elf_loader.Loader().load(obj)
    fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)(image.address("mixed"))
    x = np.linspace(-3, 3, 37, dtype=np.float32)
    out = np.zeros_like(x)
    args = (ctypes.c_void_p * 2)(out.ctypes.data, x.ctypes.data)
    fn(args, 0, 20)
    fn(args, 20, 37)
    np.testing.assert_allclose(out, _mixed_expected(x), rtol=1e-6, atol=1e-6)
    assert ctypes.c_int64.from_address(image.address("mixed_count")).value == 37
    where = elf_loader.layout(elf_loader.parse(obj), mmap.PAGESIZE)
    pages = _protections(image.base, image.size)
    assert sorted(pages) == list(range(0, where.size, mmap.PAGESIZE))
    assert where.code and where.constants > where.code and where.size > where.constants
    for offset, perms in pages.items():
        assert perms == ("r-x" if offset < where.code else "r--" if offset < where.constants else "rw-"), pages


def test_an_object_is_loaded_once(tmp_path):
    compiler = Compiler(cache=ObjectCache(str(tmp_path)))
    loaded = len(compiler.images)
    kernel = compiler.address(MIXED, "mixed")
    helper = compiler.address(MIXED, "mixed_helper")
    assert compiler.address(MIXED, "mixed") == kernel and len(compiler.images) == loaded + 1
    (image,) = [i for i in compiler.images.values() if i.base <= kernel < i.base + i.size]
    assert image.base <= helper < image.base + image.size


# --- errors -------------------------------------------------------------------------------------

def test_malformed_objects_raise():
    """Any truncation of an object, garbage, or bytes of it flipped at random: a LoadError naming the
    backend, or (for some flips) an image, never another exception."""
    obj = _emit(MIXED, "x86_64", "large", "static")
    for n in range(0, len(obj)):
        with pytest.raises(LoadError, match=r"^\[llvm\] Malformed object code"):
            elf_loader.parse(obj[:n])
    rng = np.random.default_rng(0)
    for junk in (b"", b"\x7fELF", rng.bytes(4096), obj[:16] + rng.bytes(len(obj) - 16)):
        with pytest.raises(LoadError, match=r"^\[llvm\] "):
            elf_loader.Loader().load(junk)
    for _ in range(400):
        bad = bytearray(obj)
        for at in rng.integers(0, len(obj), rng.integers(1, 4)):
            bad[at] = rng.integers(0, 256)
        try:
            parsed = elf_loader.parse(bytes(bad))
            elf_loader.link(parsed, elf_loader.layout(parsed), 1 << 32, lambda name: 1 << 40)
        except LoadError as e:
            assert str(e).startswith("[llvm] ")


def test_unknown_relocation_raises():
    """x86-64's large position-independent model (the executor uses the static one) addresses through
    the GOT by relocations the loader does not apply: named by number, not applied."""
    obj = _emit(MIXED, "x86_64", "large", "pic")
    parsed = elf_loader.parse(obj)
    with pytest.raises(LoadError, match=r"^\[llvm\] Object code has relocation type (25|27|29)\b"):
        elf_loader.link(parsed, elf_loader.layout(parsed), 1 << 32, lambda name: 1 << 40)


@pytest.mark.skipif(HOST is None, reason="loads objects for x86-64 or aarch64 Linux")
def test_unknown_symbol_and_foreign_machine_raise(tmp_path):
    source = """
declare float @mlxarm_no_such_function(float)
define void @k_missing(ptr %args, i64 %start, i64 %end) {
  %p = load ptr, ptr %args
  %x = load float, ptr %p
  %y = call float @mlxarm_no_such_function(float %x)
  store float %y, ptr %p
  ret void
}
"""
    compiler = Compiler(cache=ObjectCache(str(tmp_path)))
    with pytest.raises(LoadError, match=r"^\[llvm\] .*'mlxarm_no_such_function'") as info:
        compiler.load(source, "k_missing")
    assert isinstance(info.value, CompileError)
    other = "aarch64" if HOST == "x86_64" else "x86_64"
    with pytest.raises(LoadError, match=r"^\[llvm\] Object code for machine \d+ cannot run"):
        elf_loader.Loader().load(_emit(MIXED, other, "small", "pic"))


# --- aarch64 objects linked here, run under qemu ------------------------------------------------

BASE = 0x3000000000  # where the harness maps an image: far beyond ±128 MiB of its own code

LOADER_HARNESS = r"""
#define _GNU_SOURCE
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE MAP_FIXED
#endif

""" + RUNNER + r"""
static const struct { const char *name; void *address; } offered[] = {
    {"expf", (void *)expf}, {"fmodf", (void *)fmodf}, {"atan2f", (void *)atan2f}, {"sincosf", (void *)sincosf},
    {"memcpy", (void *)memcpy}, {"memmove", (void *)memmove}, {"memset", (void *)memset},
};

/* usage: run BASE SIZE CODE CONSTANTS ENTRY UNITS OUT_PATH OUT_BYTES INPUT...
   Prints the functions it offers ("name address" lines, then "end"), reads an image of SIZE bytes linked
   for address BASE from stdin, maps it there, makes [0, CODE) read+execute and [CODE, CONSTANTS)
   read-only, and runs the function at offset ENTRY over [0, UNITS) in two calls: buffer 0 is the
   output (OUT_BYTES, written to OUT_PATH), then the inputs in order. */
int main(int argc, char **argv) {
    for (size_t i = 0; i < sizeof offered / sizeof offered[0]; i++)
        printf("%s %lx\n", offered[i].name, (unsigned long)offered[i].address);
    printf("end\n");
    fflush(stdout);
    uintptr_t base = strtoull(argv[1], 0, 0);
    size_t size = strtoull(argv[2], 0, 0), code = strtoull(argv[3], 0, 0), constants = strtoull(argv[4], 0, 0);
    unsigned char *image = mmap((void *)base, size, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (image == MAP_FAILED || (uintptr_t)image != base) { perror("mmap"); return 4; }
    for (size_t got = 0; got < size;) {
        ssize_t n = read(0, image + got, size - got);
        if (n <= 0) { perror("read"); return 5; }
        got += n;
    }
    if (code && mprotect(image, code, PROT_READ | PROT_EXEC)) { perror("mprotect"); return 6; }
    if (constants > code && mprotect(image + code, constants - code, PROT_READ)) { perror("mprotect"); return 6; }
    __builtin___clear_cache((char *)image, (char *)image + code);
    kernel_fn kernel = (kernel_fn)(image + strtoull(argv[5], 0, 0));
    return run(kernel, atoll(argv[6]), argv[7], atol(argv[8]), argc - 9, argv + 9);
}
"""

needs_cross_tools = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                                       reason="needs Debian packages gcc-aarch64-linux-gnu and qemu-user-static")


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loader_harness")
    (folder / "harness.c").write_text(LOADER_HARNESS)
    subprocess.run(["aarch64-linux-gnu-gcc", "-static", "-O1", "harness.c", "-lm", "-o", "run"], cwd=folder,
                   check=True, capture_output=True)
    return folder / "run"


def run_linked(harness, tmp_path, obj: bytes, name: str, units: int, bases: list, out: np.ndarray) -> np.ndarray:
    """Function ``name`` of aarch64 object ``obj`` linked by ``elf_loader.link`` for address BASE,
    mapped there by the harness under qemu (its external functions the harness's own, as it reports
    them) and run over [0, ``units``) with the output then the arrays ``bases`` as arguments: the
    output, shaped as ``out``."""
    parsed = elf_loader.parse(obj)
    where = elf_loader.layout(parsed)  # 4 KiB pages, as qemu's
    inputs = input_files(tmp_path, bases)
    out_path = tmp_path / "out.bin"
    proc = subprocess.Popen(["qemu-aarch64-static", "-cpu", "max", str(harness), hex(BASE), str(where.size),
                             str(where.code), str(where.constants), str(elf_loader.exports(parsed, where)[name]),
                             str(units), str(out_path), str(out.nbytes)] + inputs,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        offered = {}
        for line in proc.stdout:
            if line.strip() == b"end":
                break
            symbol, address = line.split()
            offered[symbol.decode()] = int(address, 16)
        image = elf_loader.link(parsed, where, BASE, offered.__getitem__)
        _, err = proc.communicate(bytes(image), timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err.decode()
    return np.frombuffer(out_path.read_bytes(), dtype=out.dtype).reshape(out.shape)


@needs_cross_tools
@pytest.mark.parametrize("target", [NEON, SVE], ids=["neon", "sve2"])
@pytest.mark.parametrize("name", ["chain", "transcendentals", "trig", "reduce", "max", "remainder"])
def test_aarch64_kernels_run_relocated(harness, tmp_path, target, name):
    """The executor's kernels for aarch64, compiled as the executor compiles them (``Compiler``), linked
    here and run from the harness's mapping; ``remainder`` calls libm's fmodf through a stub."""
    kernel, bases, out, expected = _lowered(name, target.lanes)
    obj = Compiler(target, ObjectCache(str(tmp_path / "cache"))).object_code(render_llvm.render(kernel, target))
    if name == "remainder":
        parsed = elf_loader.parse(obj)
        assert [parsed.symbols[i].name for i in elf_loader.layout(parsed).stubs] == ["fmodf"]
    got = run_linked(harness, tmp_path, obj, kernel.name, kernel.out_size, bases, out)
    np.testing.assert_allclose(got, expected, rtol=3e-5, atol=3e-5)


@needs_cross_tools
@pytest.mark.parametrize("model", MODELS, ids=["small-pic", "large-static"])
def test_aarch64_relocations_run(harness, tmp_path, model):
    """MIXED for aarch64 in either code model: page-relative and absolute (MOVW) addresses, a call
    between its own functions, stubs and the GOT, run from the harness's mapping."""
    obj = _emit(MIXED, "aarch64", *model, features="+neon")
    assert MIXED_RELOCATIONS[("aarch64", *model)] <= _relocations(obj)
    x = np.linspace(-3, 3, 37, dtype=np.float32)
    got = run_linked(harness, tmp_path, obj, "mixed", x.size, [x], np.zeros_like(x))
    np.testing.assert_allclose(got, _mixed_expected(x), rtol=1e-6, atol=1e-6)

