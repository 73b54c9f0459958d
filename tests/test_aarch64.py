"""Kernels for ARM: cross-compile generated kernels for aarch64 (NEON, and SVE/SVE2 as scalable
vectors), check the machine code uses the vector units, then link them into a static C harness and run
it under qemu's user-mode emulation, comparing with numpy."""
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

pytest.importorskip("llvmlite", reason="cross-compiling kernels needs llvmlite")

import mlxarm.core as ma  # noqa: E402
from mlxarm.codegen import lower, render_llvm  # noqa: E402
from mlxarm.codegen.target import for_triple  # noqa: E402

TRIPLE = "aarch64-unknown-linux-gnu"
NEON = for_triple(TRIPLE, "generic", "+neon,+fp-armv8,+fullfp16")
SVE = for_triple(TRIPLE, "generic", "+neon,+fp-armv8,+fullfp16,+sve,+sve2")

# What a static harness needs to run a kernel: its inputs read from files, the kernel run over its index
# space in two calls (as two threads would split the work), the output written to a file.
RUNNER = r"""
typedef void (*kernel_fn)(void **args, int64_t start, int64_t end);

static void *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *p = malloc(n + 64);
    if (fread(p, 1, n, f) != (size_t)n) exit(3);
    fclose(f);
    return p;
}

/* buffer 0 is the output (out_bytes, written to out_path), then the n inputs' files in order */
static int run(kernel_fn kernel, int64_t total, const char *out_path, long out_bytes, int n, char **inputs) {
    void **args = malloc(sizeof(void *) * (n + 1));
    args[0] = calloc(1, out_bytes + 64);
    for (int i = 0; i < n; i++) args[i + 1] = slurp(inputs[i]);
    kernel(args, 0, total / 3);
    kernel(args, total / 3, total);
    FILE *f = fopen(out_path, "wb");
    fwrite(args[0], 1, out_bytes, f);
    fclose(f);
    return 0;
}
"""

HARNESS = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

void KERNEL(void **args, int64_t start, int64_t end);
""" + RUNNER + r"""
/* usage: run TOTAL OUT_PATH OUT_BYTES INPUT... */
int main(int argc, char **argv) {
    return run(KERNEL, atoll(argv[1]), argv[2], atol(argv[3]), argc - 4, argv + 4);
}
"""

TOOLS = ("aarch64-linux-gnu-gcc", "qemu-aarch64-static")


def _machine(target):
    import llvmlite.binding as llvm

    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    return llvm.Target.from_triple(target.triple).create_target_machine(
        cpu=target.cpu, features=target.features, opt=3, reloc="pic")


def optimized_module(source, target):
    """(target machine, ``source`` parsed, verified and optimized for ``target``)."""
    import llvmlite.binding as llvm

    machine = _machine(target)
    module = llvm.parse_assembly(source)
    module.verify()
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    builder = llvm.create_pass_builder(machine, pto)
    builder.getModulePassManager().run(module, builder)
    return machine, module


def _compile(source, target):
    machine, module = optimized_module(source, target)
    return machine.emit_assembly(module), machine.emit_object(module)


def _graphs():
    rng = np.random.default_rng(0)
    a = rng.uniform(-2, 2, (5, 301)).astype(np.float32)
    b = rng.uniform(-2, 2, (301,)).astype(np.float32)
    c = rng.uniform(-2, 2, (5, 1)).astype(np.float32)
    huge = (np.geomspace(1e-3, 1e30, 301) * np.where(np.arange(301) % 2, -1, 1)).astype(np.float32)
    xa, xb, xc, xh = ma.array(a), ma.array(b), ma.array(c), ma.array(huge)
    return {
        # sin and cos of arguments up to 1e30, reduced exactly
        "trig": (ma.sin(xh) * xc + ma.cos(xh), [xh, xc],
                 (np.sin(huge.astype(np.float64)) * c + np.cos(huge.astype(np.float64))).astype(np.float32)),
        "chain": (ma.tanh(xa * xb + xc) * 0.5, [xa, xb, xc], np.tanh(a * b + c) * 0.5),
        "transcendentals": (ma.exp(xa) + ma.sin(xa) * ma.log(ma.abs(xb) + 1) - ma.sigmoid(xc) + ma.erf(xa),
                            [xa, xb, xc],
                            np.exp(a) + np.sin(a) * np.log(np.abs(b) + 1) - 1 / (1 + np.exp(-c))
                            + np.vectorize(__import__("math").erf)(a).astype(np.float32)),
        "reduce": (ma.sum(ma.exp(xa) * xb, axis=-1), [xa, xb], (np.exp(a) * b).sum(-1)),
        "max": (ma.max(xa * xc, axis=1), [xa, xc], (a * c).max(1)),
        # a call of libm's fmodf per element
        "remainder": (ma.remainder(xa, 0.3) * xc, [xa, xc], np.remainder(a, np.float32(0.3)) * c),
    }


def _buffers(y) -> list:
    """The realized arrays a graph reads (inputs and scalar constants)."""
    out, stack, seen = [], [y], set()
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if n._data is not None:
            out.append(n._data)
        else:
            stack.extend(n._inputs)
    return out


def _lowered(name, width):
    y, _, expected = _graphs()[name]
    kernel, views, out = lower.lower(y, width)
    buffers = _buffers(y)
    bases = []
    for v in views:  # every leaf here is its whole buffer (broadcasts only set strides to 0)
        ptr = v.__array_interface__["data"][0]
        (base,) = [b for b in buffers if b.__array_interface__["data"][0] == ptr]
        bases.append(base)
    return kernel, bases, out, expected


@pytest.mark.parametrize("name", ["chain", "reduce"])
def test_neon_assembly_uses_vector_fma(name):
    kernel, _, _, _ = _lowered(name, NEON.lanes)
    asm, _ = _compile(render_llvm.render(kernel, NEON), NEON)
    assert re.search(r"\bfmla\s+v\d+\.4s", asm) or re.search(r"\bfadd\s+v\d+\.4s", asm), asm[:2000]
    assert re.search(r"\bld[r1p]\w*\s+\{?\s*[qv]\d+", asm), asm[:2000]


@pytest.mark.parametrize("name", ["chain", "reduce"])
def test_sve_assembly_uses_scalable_registers(name):
    kernel, _, _, _ = _lowered(name, SVE.lanes)
    source = render_llvm.render(kernel, SVE)
    assert "<vscale x 4 x float>" in source
    asm, _ = _compile(source, SVE)
    assert re.search(r"\b(ld1w\s+\{\s*z\d+\.s|ldr\s+z\d+)", asm), asm[:2000]
    assert re.search(r"\bz\d+\.s\b", asm)
    assert re.search(r"\b(fmla|fmad|fmad)\s+z\d+\.s", asm) or "cntw" in asm or "incw" in asm


@pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                    reason="needs Debian packages gcc-aarch64-linux-gnu and qemu-user-static")
@pytest.mark.parametrize("target", [NEON, SVE], ids=["neon", "sve"])
@pytest.mark.parametrize("name", ["chain", "transcendentals", "trig", "reduce", "max", "remainder"])
def test_runs_under_qemu(tmp_path, target, name):
    kernel, bases, out, expected = _lowered(name, target.lanes)
    got = run_under_qemu(tmp_path, kernel, target, bases, out)
    np.testing.assert_allclose(got, expected, rtol=3e-5, atol=3e-5)


def run_under_qemu(tmp_path, kernel, target, bases, out):
    """``kernel`` compiled for ``target``, linked into the static harness and run on an emulated
    aarch64 CPU (qemu's "max" for SVE) over the input arrays ``bases``: its output, shaped as ``out``."""
    return run_source_under_qemu(tmp_path, render_llvm.render(kernel, target), kernel.name, target,
                                 kernel.out_size, bases, out)


def run_source_under_qemu(tmp_path, source, name, target, units, bases, out):
    """The function ``name`` of LLVM IR ``source`` (the kernels' calling convention) compiled for
    ``target``, linked into the static harness and run on an emulated aarch64 CPU (qemu's "max" for
    SVE) over [0, ``units``), its arguments the output then the arrays ``bases``: the output, shaped as
    ``out`` (an array of its shape and dtype)."""
    _, obj = _compile(source, target)
    (tmp_path / "kernel.o").write_bytes(obj)
    (tmp_path / "harness.c").write_text(HARNESS)
    exe = tmp_path / f"run_{name}"
    subprocess.run(["aarch64-linux-gnu-gcc", "-static", "-O1", f"-DKERNEL={name}", "harness.c",
                    "kernel.o", "-lm", "-o", str(exe)], cwd=tmp_path, check=True, capture_output=True)
    inputs = input_files(tmp_path, bases)
    out_path = tmp_path / "out.bin"
    cpu = "max" if target.scalable else "cortex-a72"
    subprocess.run(["qemu-aarch64-static", "-cpu", cpu, str(exe), str(units), str(out_path),
                    str(out.nbytes)] + inputs, check=True, capture_output=True, timeout=120)
    return np.frombuffer(out_path.read_bytes(), dtype=out.dtype).reshape(out.shape)


def input_files(tmp_path, bases) -> list:
    """The paths of the arrays ``bases`` written to files in ``tmp_path``, as the harnesses read them."""
    paths = []
    for i, base in enumerate(bases):
        path = tmp_path / f"in{i}.bin"
        path.write_bytes(np.ascontiguousarray(base).tobytes())
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("target", [NEON, SVE], ids=["neon", "sve"])
def test_worker_threads_compile_for_aarch64(target):
    """The LLVM executor's dispatcher and worker loop (``llvm_threads``) compile for Linux on aarch64:
    atomics as load-acquire/store-release or LSE instructions, the spin hint as ``yield``, and the
    futex as system call 98."""
    from mlxarm.backend import llvm_threads

    source = llvm_threads.render(target.triple)
    assert "i64 98," in source
    asm, _ = _compile(source, target)
    assert re.search(r"\b(ldaxr|ldar|casal|ldaddal|ldadd\w*|swpal)\b", asm), asm[:2000]
    assert re.search(r"\byield\b", asm)
    assert "mlxarm_dispatch" in asm and "mlxarm_worker" in asm and "mlxarm_wake" in asm


THREADS_HARNESS = r"""
#include <pthread.h>
#include <stdio.h>
extern void mlxarm_dispatch(long *, void *, void *, long, long, long);
extern void mlxarm_worker(long *);
extern void mlxarm_wake(long *);
static void accumulate(void **args, long lo, long hi) {  /* run twice on an element, it would add twice */
    float *out = args[0], *x = args[1];
    for (long i = lo; i < hi; i++) out[i] += 2.0f * x[i] + 1.0f;
}
static long state[64] __attribute__((aligned(64)));
static float x[100000], out[100000];
static void *serve(void *s) { mlxarm_worker(s); return 0; }
int main(void) {
    pthread_t t[3];
    state[0] = 1024;  /* job 0, no chunks */
    for (int i = 0; i < 3; i++) pthread_create(&t[i], 0, serve, state);
    for (int i = 0; i < 100000; i++) x[i] = (float)(i % 97);
    long sizes[] = {1, 7, 1000, 4096, 99999};
    for (int rep = 0; rep < 200; rep++) {
        long n = sizes[rep % 5], chunk = 1 + rep % 13 * 37;
        for (long i = 0; i < n; i++) out[i] = 0;
        void *args[2] = {out, x};
        mlxarm_dispatch(state, (void *)accumulate, args, n, chunk, rep % 2);
        for (long i = 0; i < n; i++)
            if (out[i] != 2.0f * x[i] + 1.0f) { printf("bad %d %ld\n", rep, i); return 1; }
    }
    state[24] = 1;
    mlxarm_wake(state);
    for (int i = 0; i < 3; i++) pthread_join(t[i], 0);
    printf("ok\n");
    return 0;
}
"""


@pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                    reason="needs Debian packages gcc-aarch64-linux-gnu and qemu-user-static")
def test_worker_threads_run_under_qemu(tmp_path):
    """The dispatcher with three helper threads on an emulated aarch64 CPU: every chunk of every job
    runs exactly once, with helpers spinning, asleep on the futex or rung awake, and all return at stop."""
    from mlxarm.backend import llvm_threads

    _, obj = _compile(llvm_threads.render(NEON.triple), NEON)
    (tmp_path / "threads.o").write_bytes(obj)
    (tmp_path / "harness.c").write_text(THREADS_HARNESS)
    exe = tmp_path / "run"
    subprocess.run(["aarch64-linux-gnu-gcc", "-static", "-O1", "-pthread", "harness.c", "threads.o", "-o", str(exe)],
                   cwd=tmp_path, check=True, capture_output=True)
    res = subprocess.run(["qemu-aarch64-static", "-cpu", "cortex-a72", str(exe)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stdout + res.stderr
