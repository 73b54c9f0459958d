"""The LLVM executor's worker threads: one kernel's index space shared out in native code.

A kernel ``void fn(ptr args, i64 start, i64 end)`` is run over [0, total) in chunks. The calling thread
publishes the job in a shared state block and takes chunks itself; worker threads waiting in native code
take the others. Chunks are claimed with one atomic decrement of a *ticket* that holds the job's
sequence number (high 24 bits) and its chunks left (low 40 bits, biased so that the few decrements past
the last chunk never borrow from the sequence), and a job's fields are read only after a chunk of it is
claimed, so a late worker can never run a chunk of the wrong job or run one twice. The caller waits until
every chunk is done, so a job costs one call from Python and a few cache-line transfers, not a thread
pool's hand-off (tens of microseconds, which a decode step's few hundred small kernels cannot pay).

A worker spins briefly after a job (jobs often come in runs), then sleeps in native code, never going
back to Python (a thread waiting for the GIL would stall the calling thread's Python work) and never
spinning on: on a machine with as many busy threads as cores, a spinning helper takes the core the
calling thread needs. On Linux it sleeps on a futex that the caller rings when it publishes a job and
a helper is asleep (a sleeper count and a bell word, all sequentially consistent, so no wake-up is
lost); elsewhere it naps (``usleep``) between looks. Since the caller takes chunks too, a sleeping
helper only means fewer hands for a job, never a wait for it. The functions are LLVM IR compiled like
the kernels; ``syscall`` and ``usleep`` come from the C library.
"""
from __future__ import annotations

import atexit
import ctypes
import threading

import numpy as np

# int64 words of the state block, each group on its own 64-byte line; the bell is a 32-bit futex word
_TICKET, _DONE, _FN, _ARGS, _TOTAL, _CHUNK, _STOP, _BELL, _SLEEPERS = 0, 8, 16, 17, 18, 19, 24, 32, 40
_WORDS = 48
_BIAS = 1024  # above any number of threads: each one decrements a finished job's ticket at most once
_LIMIT = 1 << 10  # idle spins (a pause each, tens of microseconds in all) before a worker sleeps
_NAP_US = 200  # where there is no futex, a sleeping worker looks at the ticket this often
# futex(2) system call numbers by architecture (Linux and Android), and its private wait/wake operations
_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "arm64": 98, "riscv64": 98, "i386": 240, "i686": 240, "arm": 240,
              "armv7": 240, "armv7a": 240}
_FUTEX_WAIT, _FUTEX_WAKE = 128, 129

_DISPATCH_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                ctypes.c_int64, ctypes.c_int64)
_WORKER_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def _pause(triple: str) -> tuple:
    """(declaration, call) of the spin-wait hint for the target, or empty strings."""
    arch = triple.split("-")[0]
    if arch in ("x86_64", "i686", "i386"):
        return "declare void @llvm.x86.sse2.pause()", "call void @llvm.x86.sse2.pause()"
    if arch in ("aarch64", "arm64"):
        return "declare void @llvm.aarch64.hint(i32)", "call void @llvm.aarch64.hint(i32 1)"
    return "", ""


def _futex(triple: str):
    """The futex system call number where the target is Linux or Android, else None."""
    parts = triple.split("-")
    return _SYS_FUTEX.get(parts[0]) if any(p.startswith(("linux", "android")) for p in parts[1:]) else None


def _sleep(nr) -> str:
    """IR of a worker's sleep: on the futex word while the bell reads %b, or a nap."""
    if nr is None:
        return f"  %slept = call i32 @usleep(i32 {_NAP_US})"
    return (f"  %b64 = zext i32 %b to i64\n"
            f"  %slept = call i64 (i64, ...) @syscall(i64 {nr}, ptr %bellp, i64 {_FUTEX_WAIT}, i64 %b64, ptr null)")


def _wake(nr) -> str:
    if nr is None:
        return ""
    return f"  %woke = call i64 (i64, ...) @syscall(i64 {nr}, ptr %bellp, i64 {_FUTEX_WAKE}, i64 2147483647)"


def render(triple: str) -> str:
    """LLVM IR of ``mlxarm_dispatch``, ``mlxarm_worker`` and ``mlxarm_wake`` for ``triple``."""
    declare, pause = _pause(triple)
    nr = _futex(triple)
    mask = (1 << 40) - 1
    ring = f"""
  %sleepersp = getelementptr i64, ptr %s, i64 {_SLEEPERS}
  %sleepers = load atomic i64, ptr %sleepersp seq_cst, align 8
  %asleep = icmp ne i64 %sleepers, 0
  %wanted = icmp ne i64 %wake, 0
  %call = and i1 %asleep, %wanted
  br i1 %call, label %ring, label %rung
ring:
  %bellp = getelementptr i64, ptr %s, i64 {_BELL}
  %rang = atomicrmw add ptr %bellp, i32 1 seq_cst, align 8
{_wake(nr)}
  br label %rung
rung:"""
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
declare i32 @usleep(i32)
declare i64 @syscall(i64, ...)

define void @mlxarm_dispatch(ptr %s, ptr %fn_in, ptr %args_in, i64 %total_in, i64 %chunk_in, i64 %wake) {{
entry:
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
  store atomic i64 %ticket, ptr %s seq_cst, align 8{ring}
  br label %claim
claim:{claim}
  br i1 %has, label %run, label %wait
run:{chunk_run}
  br label %claim
wait:
  %done = load atomic i64, ptr %donq acquire, align 8
  %all = icmp eq i64 %done, %chunks
  br i1 %all, label %out, label %spin
spin:
  {pause}
  br label %wait
out:
  ret void
}}

define void @mlxarm_worker(ptr %s) {{
entry:
  %seen.a = alloca i64, align 8
  store i64 -1, ptr %seen.a, align 8
  %idle.a = alloca i64, align 8
  store i64 0, ptr %idle.a, align 8
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
  br i1 %tired, label %rest, label %spin
spin:
  {pause}
  br label %wait
rest:
  %sleepersp = getelementptr i64, ptr %s, i64 {_SLEEPERS}
  %in = atomicrmw add ptr %sleepersp, i64 1 seq_cst, align 8
  %bellp = getelementptr i64, ptr %s, i64 {_BELL}
  %b = load atomic i32, ptr %bellp seq_cst, align 8
  %t2 = load atomic i64, ptr %s seq_cst, align 8
  %seq2 = lshr i64 %t2, 40
  %fresh = icmp ne i64 %seq2, %seen
  %stop2 = load atomic i64, ptr %stopp seq_cst, align 8
  %quit2 = icmp ne i64 %stop2, 0
  %awake = or i1 %fresh, %quit2
  br i1 %awake, label %up, label %sleep
sleep:
{_sleep(nr)}
  br label %up
up:
  %out = atomicrmw sub ptr %sleepersp, i64 1 seq_cst, align 8
  store i64 0, ptr %idle.a, align 8
  br label %wait
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

define void @mlxarm_wake(ptr %s) {{
entry:
  %bellp = getelementptr i64, ptr %s, i64 {_BELL}
  %rang = atomicrmw add ptr %bellp, i32 1 seq_cst, align 8
{_wake(nr)}
  ret void
}}
"""


class Workers:
    """``workers - 1`` threads that help the calling thread run kernels (``run``)."""

    def __init__(self, compiler, workers: int):
        self.workers = workers
        self.helpers = workers - 1
        self.compiler = compiler  # it holds the code the helpers run: alive as long as they are
        self._memory = np.zeros(_WORDS + 8, np.int64)  # a 64-byte aligned block inside
        start = (-self._memory.ctypes.data % 64) // 8
        self.state = self._memory[start:start + _WORDS]
        self.state[_TICKET] = _BIAS  # job 0, no chunks: a helper's first look takes nothing
        self.address = self.state.ctypes.data
        source = render(compiler.target.triple)
        self.dispatch_address = compiler.address(source, "mlxarm_dispatch")  # programs call it natively
        self.dispatch = _DISPATCH_FN(self.dispatch_address)
        self.worker = _WORKER_FN(compiler.address(source, "mlxarm_worker"))
        self._wake = _WORKER_FN(compiler.address(source, "mlxarm_wake"))
        self.lock = threading.Lock()  # one job at a time: the state block describes one
        self.threads = [threading.Thread(target=self.worker, args=(self.address,), name=f"mlxarm-llvm-{w}",
                                         daemon=True) for w in range(self.helpers)]
        for t in self.threads:
            t.start()  # in native code from here on (ctypes releases the GIL) until ``stop``
        # Back in Python before the interpreter tears modules (and the compiler) down.
        atexit.register(self.stop, join=True)

    def run(self, fn_address: int, args_address: int, total: int, chunk: int, wake: bool = True) -> bool:
        """Run the kernel at ``fn_address`` over [0, total) in chunks of ``chunk`` units, on this thread
        and the helpers; returns True when all are done. ``wake``: ring sleeping helpers too (worth it
        for a job that takes far longer than a helper takes to wake, else only spinning helpers join,
        as one woken late would hold back the end of the job). Returns False at once, running nothing,
        while another thread is running a job here (the caller then runs the kernel by itself)."""
        if not self.lock.acquire(blocking=False):
            return False
        try:
            self.dispatch(self.address, fn_address, args_address, total, chunk, int(wake))
        finally:
            self.lock.release()
        return True

    def stop(self, join: bool = False) -> None:
        """Let the helpers return (and wait for them with ``join``)."""
        self.state[_STOP] = 1
        self._wake(self.address)
        if join:
            for t in self.threads:
                t.join(timeout=5)
