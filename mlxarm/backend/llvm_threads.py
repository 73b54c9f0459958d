"""The LLVM executor's worker threads: one kernel's index space shared out in native code.

A kernel ``void fn(ptr args, i64 start, i64 end)`` is run over [0, total) in chunks. The calling thread
publishes the job in a shared state block and takes chunks itself; worker threads waiting in native code
take the others. Chunks are claimed with one atomic decrement of a *ticket* that holds the job's
sequence number (high 24 bits) and its chunks left (low 40 bits, biased so that the few decrements past
the last chunk never borrow from the sequence), and a job's fields are read only after a chunk of it is
claimed, so a late worker can never run a chunk of the wrong job or run one twice. The caller waits until
every chunk is done, so a job costs one call from Python and a few cache-line transfers, not a thread
pool's hand-off (tens of microseconds, which a decode step's few hundred small kernels cannot pay).

A worker spins while jobs keep coming, then parks: it returns to Python and waits on its event, which
the calling thread sets on its next job. Since the caller takes chunks too, a parked or descheduled
worker only means fewer hands, never a stall. The functions are LLVM IR compiled like the kernels.
"""
from __future__ import annotations

import atexit
import ctypes
import threading

import numpy as np

_TICKET, _DONE, _FN, _ARGS, _TOTAL, _CHUNK, _STOP, _PARKED = 0, 8, 16, 17, 18, 19, 24, 32  # int64 words
_WORDS_PER_WORKER = 8  # a parked flag per worker, each on its own 64-byte line
_BIAS = 1024  # above any number of threads: each one decrements a finished job's ticket at most once
_LIMIT = 1 << 15  # idle spins (a pause each, about a millisecond in all) before a worker parks

_DISPATCH_FN = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)
_WORKER_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)


def _pause(triple: str) -> tuple:
    """(declaration, call) of the spin-wait hint for the target, or empty strings."""
    arch = triple.split("-")[0]
    if arch in ("x86_64", "i686", "i386"):
        return "declare void @llvm.x86.sse2.pause()", "call void @llvm.x86.sse2.pause()"
    if arch in ("aarch64", "arm64"):
        return "declare void @llvm.aarch64.hint(i32)", "call void @llvm.aarch64.hint(i32 1)"
    return "", ""


def render(triple: str) -> str:
    """LLVM IR of ``mlxarm_dispatch`` and ``mlxarm_worker`` for ``triple``."""
    declare, pause = _pause(triple)
    mask = (1 << 40) - 1
    claim = f"""
  %old = atomicrmw sub ptr %s, i64 1 acq_rel, align 8
  %left = and i64 %old, {mask}
  %rem = sub i64 %left, {_BIAS}
  %has = icmp sgt i64 %rem, 0"""
    chunk_run = f"""
  %idx = sub i64 %rem, 1
  %fnp = getelementptr i64, ptr %s, i64 {_FN}
  %fn = load ptr, ptr %fnp, align 8
  %argsp = getelementptr i64, ptr %s, i64 {_ARGS}
  %args = load ptr, ptr %argsp, align 8
  %totalp = getelementptr i64, ptr %s, i64 {_TOTAL}
  %total = load i64, ptr %totalp, align 8
  %chunkp = getelementptr i64, ptr %s, i64 {_CHUNK}
  %chunk = load i64, ptr %chunkp, align 8
  %lo = mul i64 %idx, %chunk
  %hi0 = add i64 %lo, %chunk
  %short = icmp slt i64 %hi0, %total
  %hi = select i1 %short, i64 %hi0, i64 %total
  call void %fn(ptr %args, i64 %lo, i64 %hi)
  %donep = getelementptr i64, ptr %s, i64 {_DONE}
  %d = atomicrmw add ptr %donep, i64 1 release, align 8"""
    return f"""
{declare}

define i64 @mlxarm_dispatch(ptr %s, ptr %fn_in, ptr %args_in, i64 %total_in, i64 %chunk_in, i64 %workers) {{
entry:
  %n.a = alloca i64, align 8
  %w.a = alloca i64, align 8
  %fnq = getelementptr i64, ptr %s, i64 {_FN}
  store ptr %fn_in, ptr %fnq, align 8
  %argsq = getelementptr i64, ptr %s, i64 {_ARGS}
  store ptr %args_in, ptr %argsq, align 8
  %totalq = getelementptr i64, ptr %s, i64 {_TOTAL}
  store i64 %total_in, ptr %totalq, align 8
  %chunkq = getelementptr i64, ptr %s, i64 {_CHUNK}
  store i64 %chunk_in, ptr %chunkq, align 8
  %donq = getelementptr i64, ptr %s, i64 {_DONE}
  store atomic i64 0, ptr %donq monotonic, align 8
  %span = add i64 %total_in, %chunk_in
  %span1 = sub i64 %span, 1
  %chunks = udiv i64 %span1, %chunk_in
  %t = load atomic i64, ptr %s monotonic, align 8
  %seq = lshr i64 %t, 40
  %seq1 = add i64 %seq, 1
  %seqm = and i64 %seq1, {(1 << 24) - 1}
  %high = shl i64 %seqm, 40
  %low = add i64 %chunks, {_BIAS}
  %ticket = or i64 %high, %low
  store atomic i64 %ticket, ptr %s release, align 8
  br label %claim
claim:{claim}
  br i1 %has, label %run, label %wait
run:{chunk_run}
  br label %claim
wait:
  %done = load atomic i64, ptr %donq acquire, align 8
  %all = icmp eq i64 %done, %chunks
  br i1 %all, label %count, label %spin
spin:
  {pause}
  br label %wait
count:
  store i64 0, ptr %n.a, align 8
  store i64 0, ptr %w.a, align 8
  br label %parked
parked:
  %w = load i64, ptr %w.a, align 8
  %more = icmp slt i64 %w, %workers
  br i1 %more, label %flag, label %out
flag:
  %off0 = mul i64 %w, {_WORDS_PER_WORKER}
  %off = add i64 %off0, {_PARKED}
  %fp = getelementptr i64, ptr %s, i64 %off
  %f = load atomic i64, ptr %fp monotonic, align 8
  %n = load i64, ptr %n.a, align 8
  %n1 = add i64 %n, %f
  store i64 %n1, ptr %n.a, align 8
  %w1 = add i64 %w, 1
  store i64 %w1, ptr %w.a, align 8
  br label %parked
out:
  %r = load i64, ptr %n.a, align 8
  ret i64 %r
}}

define void @mlxarm_worker(ptr %s, i64 %me) {{
entry:
  %seen.a = alloca i64, align 8
  store i64 -1, ptr %seen.a, align 8
  %idle.a = alloca i64, align 8
  store i64 0, ptr %idle.a, align 8
  %off0 = mul i64 %me, {_WORDS_PER_WORKER}
  %off = add i64 %off0, {_PARKED}
  %flag = getelementptr i64, ptr %s, i64 %off
  store atomic i64 0, ptr %flag release, align 8
  %stopp = getelementptr i64, ptr %s, i64 {_STOP}
  br label %wait
wait:
  %t = load atomic i64, ptr %s acquire, align 8
  %seq = lshr i64 %t, 40
  %seen = load i64, ptr %seen.a, align 8
  %new = icmp ne i64 %seq, %seen
  br i1 %new, label %claim, label %idle
idle:
  %stop = load atomic i64, ptr %stopp monotonic, align 8
  %quit = icmp ne i64 %stop, 0
  br i1 %quit, label %exit, label %count
count:
  %i = load i64, ptr %idle.a, align 8
  %i1 = add i64 %i, 1
  store i64 %i1, ptr %idle.a, align 8
  %tired = icmp ugt i64 %i1, {_LIMIT}
  br i1 %tired, label %park, label %spin
spin:
  {pause}
  br label %wait
park:
  store atomic i64 1, ptr %flag release, align 8
  br label %exit
exit:
  ret void
claim:
  store i64 0, ptr %idle.a, align 8{claim}
  br i1 %has, label %run, label %none
none:
  %oseq = lshr i64 %old, 40
  store i64 %oseq, ptr %seen.a, align 8
  br label %wait
run:{chunk_run}
  br label %claim
}}
"""


class Workers:
    """``workers - 1`` threads that help the calling thread run kernels (``run``)."""

    def __init__(self, compiler, workers: int):
        self.workers = workers
        self.helpers = workers - 1
        words = _PARKED + _WORDS_PER_WORKER * max(1, self.helpers) + 8
        self._memory = np.zeros(words + 8, np.int64)  # a 64-byte aligned block inside
        start = (-self._memory.ctypes.data % 64) // 8
        self.state = self._memory[start:start + words]
        self.address = self.state.ctypes.data
        source = render(compiler.target.triple)
        self.dispatch = _DISPATCH_FN(compiler.address(source, "mlxarm_dispatch"))
        self.worker = _WORKER_FN(compiler.address(source, "mlxarm_worker"))
        self.state[[_PARKED + _WORDS_PER_WORKER * w for w in range(self.helpers)]] = 1  # not started yet
        self.lock = threading.Lock()  # one job at a time: the state block describes one
        self.events = [threading.Event() for _ in range(self.helpers)]
        self.threads = [threading.Thread(target=self._serve, args=(w,), name=f"mlxarm-llvm-{w}", daemon=True)
                        for w in range(self.helpers)]
        for t in self.threads:
            t.start()
        atexit.register(self.stop)

    def _serve(self, w: int) -> None:
        event, state = self.events[w], self.state
        while True:
            event.wait()
            event.clear()
            if state[_STOP]:
                return
            self.worker(self.address, w)  # returns when parked (or stopped); ctypes releases the GIL

    def run(self, fn_address: int, args_address: int, total: int, chunk: int) -> bool:
        """Run the kernel at ``fn_address`` over [0, total) in chunks of ``chunk`` units, on this thread
        and the helpers; returns True when all are done. Helpers that had parked are woken for the next
        job. Returns False at once, running nothing, while another thread is running a job here (the
        caller then runs the kernel by itself)."""
        if not self.lock.acquire(blocking=False):
            return False
        try:
            parked = self.dispatch(self.address, fn_address, args_address, total, chunk, self.helpers)
        finally:
            self.lock.release()
        if parked:
            state = self.state
            for w in range(self.helpers):
                if state[_PARKED + _WORDS_PER_WORKER * w]:
                    self.events[w].set()
        return True

    def stop(self) -> None:
        self.state[_STOP] = 1
        for e in self.events:
            e.set()
