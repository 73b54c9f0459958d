"""Quantized matvec on the LLVM executor: the packed-weight template (``kernels.quantized``) against
the numpy reference, on the shapes of SmolLM2-135M's decode step (a 576x1536 4-bit group-32 layer and
the 49152x576 8-bit group-32 output projection; w is N x K), on 2 threads. Prints milliseconds per product and
the bandwidth in packed weight bytes per second. ``--cpu-time`` times the template by the calling
thread's CPU time on one thread, which other processes busy on the same cores do not inflate.
``--dtype`` is the dtype of x, the scales, the biases and the result (float16 and bfloat16: an MLX
model's half-precision layers).

    python benchmarks/quantized.py [--repeat 20] [--m 1] [--cpu-time] [--dtype float32|float16|bfloat16]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

THREADS = "1" if "--cpu-time" in sys.argv else "2"  # one: everything runs on the timed thread
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "MLXARM_THREADS"):
    os.environ[var] = THREADS if THREADS == "1" else os.environ.get(var, THREADS)  # before numpy loads BLAS

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHAPES = [((576, 1536), 4, 32), ((49152, 576), 8, 32)]  # (N, K) of w, bits, group size


def best_of(fn, repeat: int, clock=time.perf_counter) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--m", type=int, default=1, help="rows of x (1: decode)")
    ap.add_argument("--cpu-time", action="store_true", help="one thread, timed by its CPU time")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = ap.parse_args()
    import mlxarm.core as mx
    from mlxarm.backend import executor
    from mlxarm.backend import llvm_quantized
    from mlxarm.core import dtypes as dt
    from mlxarm.core.ops.quantized import _quantized_matmul_ref

    ex = executor("llvm")
    d = dt.as_dtype(args.dtype)
    # The template reads each dtype's storage (bfloat16: uint16 bit patterns), the reference its
    # float32 values.
    storage = dt.f32_to_bf16 if d is dt.bfloat16 else (lambda a: a.astype(d.np_storage))
    values = dt.bf16_to_f32 if d is dt.bfloat16 else (lambda a: a.astype(np.float32))
    rng = np.random.default_rng(0)
    for (n, k), bits, gs in SHAPES:
        w = mx.array(rng.standard_normal((n, k), np.float32)).astype(d)
        wq, s, b = (np.array(a) for a in (q.view(mx.uint16) if q.dtype == mx.bfloat16 else q
                                          for q in mx.quantize(w, group_size=gs, bits=bits)))
        x = storage(rng.standard_normal((args.m, k)).astype(np.float32))
        p = {"transpose": True, "bits": bits, "group_size": gs, "mode": "affine", "n": n, "vdtype": d.name,
             "sdtype": d.name, "bdtype": d.name}
        xf, sf, bf = values(x), values(s), values(b)
        clock = time.thread_time if args.cpu_time else time.perf_counter
        t_kernel = best_of(lambda: llvm_quantized.matmul(ex, x, wq, s, b, True, bits, gs), args.repeat, clock)
        t_numpy = best_of(lambda: _quantized_matmul_ref(p, xf, wq, sf, bf), max(1, args.repeat // 5), clock)
        got = values(llvm_quantized.matmul(ex, x, wq, s, b, True, bits, gs))
        err = np.abs(got - values(storage(_quantized_matmul_ref(p, xf, wq, sf, bf)))).max()
        print(f"{n}x{k} {bits}-bit g{gs} {d.name} M={args.m}: template {t_kernel * 1e3:.3f} ms "
              f"({wq.nbytes / t_kernel / 1e9:.1f} GB/s packed), numpy {t_numpy * 1e3:.2f} ms, "
              f"x{t_numpy / t_kernel:.1f}, max |diff| {err:.1e}")


if __name__ == "__main__":
    main()
