"""CPU throughput of fused kernels: mlxarm's LLVM executor against numpy (and MLX when importable).

Workloads over 16M float32 elements: the fused chain ``tanh(a * b + c) * 0.5`` and a full ``sum``.
Prints each time and its ratio to numpy, and writes benchmarks/results/cpu.json.

    python benchmarks/cpu.py [--n 16777216] [--repeat 5]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def best_of(fn, repeat: int) -> float:
    fn()  # warm-up: compiles (or loads from the cache) and faults pages in
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1 << 24)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    os.environ["MLXARM_DEVICE"] = "llvm"
    import mlxarm.core as ma
    from mlxarm.backend import executor

    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal(args.n).astype(np.float32) for _ in range(3))
    xa, xb, xc = ma.array(a), ma.array(b), ma.array(c)
    runs = {
        "chain": {
            "numpy": lambda: np.tanh(a * b + c) * np.float32(0.5),
            "mlxarm-llvm": lambda: ma.eval(ma.tanh(xa * xb + xc) * 0.5),
        },
        "sum": {
            "numpy": lambda: a.sum(),
            "mlxarm-llvm": lambda: ma.eval(ma.sum(xa)),
        },
    }
    try:
        import mlx.core as mx

        ma_, mb_, mc_ = mx.array(a), mx.array(b), mx.array(c)
        runs["chain"]["mlx"] = lambda: mx.eval(mx.tanh(ma_ * mb_ + mc_) * 0.5)
        runs["sum"]["mlx"] = lambda: mx.eval(mx.sum(ma_))
    except ImportError:
        pass
    results = {"n": args.n, "machine": platform.machine(), "cpus": os.cpu_count(),
               "executor": executor("llvm").info(), "workloads": {}}
    for work, impls in runs.items():
        base = best_of(impls["numpy"], args.repeat)
        row = {}
        for name, fn in impls.items():
            t = base if name == "numpy" else best_of(fn, args.repeat)
            row[name] = {"seconds": t, "speedup_vs_numpy": base / t}
            print(f"{work:6s} {name:12s} {t * 1e3:9.2f} ms   x{base / t:5.2f} vs numpy")
        results["workloads"][work] = row
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "cpu.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
