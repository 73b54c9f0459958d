"""Framework overhead: the cost of recording and evaluating tiny graphs, next to real MLX and numpy.

    python benchmarks/overhead.py [--out benchmarks/results/overhead.json] [--repeat 5]

Three measurements, each on 4-element float32 arrays so that arithmetic is negligible and the time is
the framework's own:

* record:   one lazy ``a + b`` (no evaluation); numpy's column is its eager ``a + b``;
* eval-1:   record ``a + b`` and evaluate it;
* eval-1000: record a chain of 1000 adds and evaluate the result (reported per graph).

Each is timed ``--repeat`` times and the best run is kept. Prints a table with ratios, writes JSON
to ``--out`` and, when matplotlib is importable, a bar chart next to it (same name, ``.png``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import mlxarm  # noqa: E402
import mlxarm.core as ma  # noqa: E402

CHAIN = 1000
BENCHMARKS = ("record", "eval-1", f"eval-{CHAIN}")
UNITS = {"record": "us/op", "eval-1": "us/graph", f"eval-{CHAIN}": "us/graph"}


def _real_mlx():
    try:
        import mlx.core as mx
    except ImportError:
        return None
    return mx if mx.__name__ == "mlx.core" else None


def _best_us(fn, number, repeat) -> float:
    """Best of ``repeat`` runs of ``number`` calls, in microseconds per call."""
    fn()  # warm-up: imports, caches, first-call paths
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, time.perf_counter() - t0)
    return best / number * 1e6


def _lazy_suite(lib):
    """Benchmarks for a lazy framework with MLX's API (mlxarm.core or mlx.core)."""
    a = lib.array(np.arange(4, dtype=np.float32))
    b = lib.array(np.ones(4, dtype=np.float32))
    lib.eval(a, b)

    def record():
        return a + b

    def eval_one():
        lib.eval(a + b)

    def eval_chain():
        x = a
        for _ in range(CHAIN):
            x = x + b
        lib.eval(x)

    return {"record": record, "eval-1": eval_one, f"eval-{CHAIN}": eval_chain}


def _numpy_suite():
    a = np.arange(4, dtype=np.float32)
    b = np.ones(4, dtype=np.float32)

    def add():
        return a + b

    def chain():
        x = a
        for _ in range(CHAIN):
            x = x + b
        return x

    return {"record": add, "eval-1": add, f"eval-{CHAIN}": chain}


def _check_results_agree(mx):
    """The chains compute the same thing everywhere (guards against timing a broken path)."""
    expected = np.arange(4, dtype=np.float32) + CHAIN
    for lib in filter(None, (ma, mx)):
        x = lib.array(np.arange(4, dtype=np.float32))
        for _ in range(CHAIN):
            x = x + lib.array(np.ones(4, dtype=np.float32))
        np.testing.assert_allclose(np.array(x), expected)


def run(repeat: int) -> dict:
    mx = _real_mlx()
    _check_results_agree(mx)
    number = {"record": 20000, "eval-1": 5000, f"eval-{CHAIN}": 10}
    suites = {"mlxarm": _lazy_suite(ma), "numpy": _numpy_suite()}
    if mx is not None:
        suites["mlx"] = _lazy_suite(mx)
    timings = {bench: {name: _best_us(suite[bench], number[bench], repeat)
                       for name, suite in suites.items()}
               for bench in BENCHMARKS}
    return {
        "meta": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "mlxarm": mlxarm.__version__,
            "mlxarm_executor": ma.device_info().get("executor"),
            "numpy": np.__version__,
            "mlx": mx.__version__ if mx is not None else None,
            "repeat": repeat,
            "number": number,
            "chain_length": CHAIN,
        },
        "units": UNITS,
        "results_us": timings,
    }


def _table(report) -> str:
    libs = [lib for lib in ("mlxarm", "mlx", "numpy") if lib in report["results_us"]["record"]]
    header = ["benchmark", "unit"] + [f"{lib}" for lib in libs]
    header += [f"mlxarm/{lib}" for lib in libs if lib != "mlxarm"]
    rows = []
    for bench in BENCHMARKS:
        t = report["results_us"][bench]
        row = [bench, UNITS[bench]] + [f"{t[lib]:.2f}" for lib in libs]
        row += [f"{t['mlxarm'] / t[lib]:.1f}x" for lib in libs if lib != "mlxarm"]
        rows.append(row)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.rjust(w) if i > 1 else c.ljust(w)  # noqa: E731
                              for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def _chart(report, path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    results = report["results_us"]
    libs = list(results["record"])
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(libs)
    for i, lib in enumerate(libs):
        ax.bar([j + i * width for j in range(len(BENCHMARKS))], [results[b][lib] for b in BENCHMARKS],
               width, label=lib)
    ax.set_xticks([j + width * (len(libs) - 1) / 2 for j in range(len(BENCHMARKS))])
    ax.set_xticklabels([f"{b}\n({UNITS[b]})" for b in BENCHMARKS])
    ax.set_yscale("log")
    ax.set_ylabel("microseconds (log scale)")
    ax.set_title("Framework overhead on 4-element float32 arrays")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "overhead.json"),
                        help="where to write the JSON results (the chart goes next to it)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per benchmark (best kept)")
    options = parser.parse_args(argv)

    report = run(options.repeat)
    meta = report["meta"]
    print(f"mlxarm {meta['mlxarm']} ({meta['mlxarm_executor']} executor), numpy {meta['numpy']}, "
          f"MLX {meta['mlx'] or 'not installed'}, Python {meta['python']} on {meta['machine']}")
    print(_table(report))

    os.makedirs(os.path.dirname(os.path.abspath(options.out)), exist_ok=True)
    with open(options.out, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    print(f"wrote {options.out}")
    png = os.path.splitext(options.out)[0] + ".png"
    if _chart(report, png):
        print(f"wrote {png}")
    else:
        print("matplotlib is not installed: no chart written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
