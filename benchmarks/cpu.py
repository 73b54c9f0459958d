"""CPU throughput and host overhead of mlxarm's LLVM executor against numpy, MLX and PyTorch (those
two when importable, timed in a process of their own started by the run), all on 2 threads.

Workloads: the fused chain ``tanh(a * b + c) * 0.5`` and a full ``sum`` over 16M float32 elements,
row softmax of 4096x4096, matmul 1024^3, matvec 4096x4096, the cost of one eval of 1/10/100/1000
tiny kernels, and the first-call compile of a kernel against loading it from the disk cache. Prints
each time and its ratio to numpy, and for the memory-bound ones (chain, sum, matvec) the share of the
machine's copy bandwidth they reach (``copy_bandwidth``: numpy copying 64 MB into a buffer already
mapped, on both threads); writes benchmarks/results/cpu.json and, when matplotlib is importable,
benchmarks/results/cpu.png.

    python benchmarks/cpu.py [--n 16777216] [--repeat 5]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

THREADS = "2"
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "MLXARM_THREADS"):
    os.environ.setdefault(var, THREADS)  # before numpy loads its BLAS

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def best_of(fn, repeat: int) -> float:
    fn()  # warm-up: compiles (or loads from the cache) and faults pages in
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def copy_bandwidth(repeat: int) -> float:
    """Bytes per second moved (read plus written) by numpy copying 64 MB between buffers already
    mapped, half on each of the two threads."""
    from concurrent.futures import ThreadPoolExecutor

    n = 1 << 24
    src = np.ones(n, np.float32)
    dst = np.zeros(n, np.float32)
    halves = [(dst[:n // 2], src[:n // 2]), (dst[n // 2:], src[n // 2:])]
    with ThreadPoolExecutor(int(THREADS)) as pool:
        def run():
            list(pool.map(lambda pair: np.copyto(*pair), halves))
        return 2 * src.nbytes / best_of(run, repeat * 2)


# bytes each memory-bound workload must move at the least (its inputs read once, its output written)
def _moved(n: int) -> dict:
    return {"chain": 4 * 4 * n, "sum": 4 * n, "matvec": 4 * (4096 * 4096 + 2 * 4096)}


def _softmax_np(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _peers():
    """Importable peers: name -> module."""
    found = {}
    try:
        import mlx.core as mx

        found["mlx"] = mx
    except ImportError:
        pass
    try:
        import torch

        torch.set_num_threads(int(THREADS))
        found["torch"] = torch
    except ImportError:
        pass
    return found


def _mlx_shaped(m, data) -> dict:
    """The workloads written once against MLX's API, for ``mlxarm.core`` and ``mlx.core`` alike."""
    xa, xb, xc, xs, x1, x2, xv = (m.array(t) for t in data)
    return {"chain": lambda: m.eval(m.tanh(xa * xb + xc) * 0.5), "sum": lambda: m.eval(m.sum(xa)),
            "softmax": lambda: m.eval(m.softmax(xs, axis=-1)), "matmul": lambda: m.eval(x1 @ x2),
            "matvec": lambda: m.eval(xs @ xv)}


def workloads(ma, n: int) -> dict:
    """name -> {system: function}: numpy and mlxarm (``ma``), or numpy and the peers (``ma`` None)."""
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal(n).astype(np.float32) for _ in range(3))
    s = rng.standard_normal((4096, 4096)).astype(np.float32)
    m1, m2 = (rng.standard_normal((1024, 1024)).astype(np.float32) for _ in range(2))
    v = rng.standard_normal(4096).astype(np.float32)
    runs = {
        "chain": {"numpy": lambda: np.tanh(a * b + c) * np.float32(0.5)},
        "sum": {"numpy": lambda: a.sum()},
        "softmax": {"numpy": lambda: _softmax_np(s)},
        "matmul": {"numpy": lambda: m1 @ m2},
        "matvec": {"numpy": lambda: s @ v},
    }
    if ma is not None:
        for work, fn in _mlx_shaped(ma, (a, b, c, s, m1, m2, v)).items():
            runs[work]["mlxarm-llvm"] = fn
        return runs
    peers = _peers()
    if "mlx" in peers:
        for work, fn in _mlx_shaped(peers["mlx"], (a, b, c, s, m1, m2, v)).items():
            runs[work]["mlx"] = fn
    if "torch" in peers:
        torch = peers["torch"]
        ta, tb, tc, ts, t1, t2, tv = (torch.from_numpy(t) for t in (a, b, c, s, m1, m2, v))
        runs["chain"]["torch"] = lambda: torch.tanh(ta * tb + tc) * 0.5
        runs["sum"]["torch"] = lambda: ta.sum()
        runs["softmax"]["torch"] = lambda: torch.softmax(ts, dim=-1)
        runs["matmul"]["torch"] = lambda: t1 @ t2
        runs["matvec"]["torch"] = lambda: ts @ tv
    return runs


def tiny_kernel_overhead(ma, repeat: int) -> dict:
    """Seconds for one eval of k independent 8-element kernels (each output is held, so none fuse;
    all are the same kernel, so this is launch overhead, not compilation). A run takes milliseconds
    at most, so the best of at least 20 is taken: the first runs of a structure plan and record it."""
    x = ma.array(np.ones(8, np.float32))
    out = {}
    for k in (1, 10, 100, 1000):
        def run(k=k):
            ma.eval([x + 1 for _ in range(k)])
        out[str(k)] = best_of(run, max(repeat, 20))
    return out


def compile_vs_cached(ma) -> dict:
    """First call of a kernel never seen (compile to object code) against a fresh process's load of
    the same kernel from the disk cache."""
    from mlxarm.backend.cache import ObjectCache
    from mlxarm.backend.llvm import LLVMExecutor

    with tempfile.TemporaryDirectory() as tmp:
        fresh = LLVMExecutor(cache=ObjectCache(tmp))
        x = ma.array(np.arange(4096, dtype=np.float32))
        graph = ma.tanh(ma.exp(x * 1e-3) * 0.5 + ma.sin(x)) - ma.sqrt(x)
        from mlxarm.codegen import lower

        kernel, _, _ = lower.lower(graph, fresh.target.lanes)
        t0 = time.perf_counter()
        fresh.function(kernel)
        cold = time.perf_counter() - t0
        again = LLVMExecutor(cache=ObjectCache(tmp))
        t0 = time.perf_counter()
        again.function(kernel)
        cached = time.perf_counter() - t0
    return {"compile_seconds": cold, "cached_load_seconds": cached}


def plot(results: dict, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    work = results["workloads"]
    names = sorted({impl for row in work.values() for impl in row})
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(names)
    for i, impl in enumerate(names):
        ys = [work[w].get(impl, {}).get("speedup_vs_numpy", 0) for w in work]
        ax.bar([j + i * width for j in range(len(work))], ys, width, label=impl)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(work))], list(work))
    ax.axhline(1.0, color="black", linewidth=0.5)
    ax.set_ylabel("speed-up vs numpy")
    ax.set_title(f"CPU, {THREADS} threads")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return True


def time_systems(impls: dict, repeat: int, skip=("numpy",)) -> dict:
    times = {}
    for name, fn in impls.items():
        if name in skip:
            continue
        # A BLAS's worker threads spin for a while after its last call: each system is timed
        # after they have gone to sleep, not while they share the cores with it.
        time.sleep(0.3)
        times[name] = best_of(fn, repeat)
    return times


def peer_times(n: int, repeat: int) -> dict:
    """The peers' seconds per workload, measured in a process of their own (``--peers``): in one
    process, a peer's runtime slows the others' memory-bound kernels (a matvec here runs a quarter
    slower once MLX is imported), so each side runs where the other is not loaded."""
    import subprocess

    res = subprocess.run([sys.executable, os.path.abspath(__file__), "--peers", "--n", str(n), "--repeat",
                          str(repeat)], capture_output=True, text=True)
    if res.returncode != 0:
        print(f"peers: not measured ({res.stderr.strip()[-300:]})")
        return {}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1 << 24)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--peers", action="store_true", help="time the peers only (a JSON line); used by the run itself")
    args = ap.parse_args()
    if args.peers:
        print(json.dumps({work: time_systems(impls, args.repeat) for work, impls in workloads(None, args.n).items()}))
        return
    others = peer_times(args.n, args.repeat)
    os.environ["MLXARM_DEVICE"] = "llvm"
    import mlxarm.core as ma
    from mlxarm.backend import executor

    results = {"n": args.n, "machine": platform.machine(), "cpus": os.cpu_count(), "threads": int(THREADS),
               "executor": executor("llvm").info(), "workloads": {}}
    bandwidth = results["copy_bytes_per_second"] = copy_bandwidth(args.repeat)
    print(f"copy bandwidth (numpy, {THREADS} threads) {bandwidth / 1e9:.1f} GB/s")
    moved = _moved(args.n)
    for work, impls in workloads(ma, args.n).items():
        base = best_of(impls["numpy"], args.repeat)
        row = {}
        times = {"numpy": base, **time_systems(impls, args.repeat), **others.get(work, {})}
        for name, t in times.items():
            row[name] = {"seconds": t, "speedup_vs_numpy": base / t}
            share = ""
            if work in moved:
                row[name]["share_of_copy_bandwidth"] = moved[work] / t / bandwidth
                share = f"   {100 * moved[work] / t / bandwidth:5.1f}% of copy bandwidth"
            print(f"{work:8s} {name:12s} {t * 1e3:9.2f} ms   x{base / t:5.2f} vs numpy{share}")
        results["workloads"][work] = row
    results["tiny_kernel_eval_seconds"] = tiny_kernel_overhead(ma, args.repeat)
    for k, t in results["tiny_kernel_eval_seconds"].items():
        print(f"eval of {k:>4s} tiny kernels {t * 1e6:10.1f} us")
    results["compile"] = compile_vs_cached(ma)
    print(f"first-call compile {results['compile']['compile_seconds'] * 1e3:.1f} ms, "
          f"from the disk cache {results['compile']['cached_load_seconds'] * 1e3:.2f} ms")
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "cpu.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {path}")
    png = os.path.join(out_dir, "cpu.png")
    if plot(results, png):
        print(f"wrote {png}")


if __name__ == "__main__":
    main()
