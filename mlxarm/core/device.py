"""Devices, streams and memory accounting, with MLX's names.

A Device is (type, index); a Stream is (device, index). Every recorded node carries the stream it was
recorded on; executors are chosen per device type. ``mx.cpu``/``mx.gpu`` are ``DeviceType`` members as
in MLX. The memory figures count the bytes of realized buffers that are alive right now.

Streams follow MLX's threading rules: the default device is process wide, but each thread has its own
default stream per device. A stream made by ``new_stream`` belongs to the thread that made it
(evaluating work queued on it from another thread, or after that thread's ``clear_streams``, is an
error); ``new_thread_unsafe_stream`` streams and the default streams may be used from any thread; a
``ThreadLocalStream`` stands for a separate stream in each thread that uses it.
"""
from __future__ import annotations

import enum
import os
import platform
import threading
import weakref

from .registry import api


class DeviceType(enum.Enum):
    cpu = 0
    gpu = 1

    def __repr__(self):
        return f"DeviceType.{self.name}"

    __str__ = __repr__


cpu = DeviceType.cpu
gpu = DeviceType.gpu


class Device:
    __slots__ = ("type", "index")

    def __init__(self, type: DeviceType, index: int = 0):
        if not isinstance(type, DeviceType):
            raise TypeError(f"Device type must be mlx.core.cpu or mlx.core.gpu, got {type!r}.")
        self.type = type
        self.index = index

    def __eq__(self, other):
        if isinstance(other, DeviceType):
            return self.type is other
        return isinstance(other, Device) and self.type is other.type and self.index == other.index

    def __hash__(self):
        return hash((self.type, self.index))

    def __repr__(self):
        return f"Device({self.type.name}, {self.index})"


class Stream:
    __slots__ = ("device", "index")

    def __init__(self, device: Device, index: int = 0):
        self.device = device
        self.index = index

    def __eq__(self, other):
        return type(other) is Stream and self.device == other.device and self.index == other.index

    def __hash__(self):
        return hash((self.device, self.index))

    def __repr__(self):
        return f"Stream({self.device!r}, {self.index})"


@api(name="ThreadLocalStream")
class ThreadLocalStream:
    """A stream that is a different ``Stream`` in each thread that uses it."""

    __slots__ = ("device", "index")

    def __init__(self, device: Device, index: int):
        self.device = device
        self.index = index

    def __eq__(self, other):
        return type(other) is ThreadLocalStream and self.device == other.device and self.index == other.index

    def __hash__(self):
        return hash((self.device, self.index))

    def __repr__(self):
        return f"ThreadLocalStream({self.device!r}, {self.index})"


def gpu_available() -> bool:
    """Whether a GPU executor is available (none in the reference build: see the backends)."""
    from ..backend import available_gpu_backend

    return available_gpu_backend() is not None


class _ThreadState(threading.local):
    def __init__(self):
        self.defaults = {}  # Device -> this thread's default stream on it
        self.owned = set()  # indices of the thread-bound streams usable in this thread
        self.local = {}  # ThreadLocalStream index -> this thread's stream for it
        self.device = None  # override inside ``with mx.stream(...)``
        self.current = None  # cache of the current stream, valid while ``epoch`` matches
        self.epoch = -1


_tl = _ThreadState()
_global_device = [None]
# Bumped whenever the process-wide default device changes, invalidating every thread's cached stream.
_epoch = [0]
_lock = threading.Lock()
_next_index = [0]
_next_local_index = [0]
# Indices of streams bound to the thread that made them (``new_stream``), and their devices.
_bound: set = set()


def _default_device_init() -> Device:
    return Device(gpu if gpu_available() else cpu, 0)


def default_device() -> Device:
    d = _tl.device
    if d is not None:
        return d
    d = _global_device[0]
    if d is None:
        d = _global_device[0] = _default_device_init()
    return d


def _as_device(d) -> Device:
    if isinstance(d, Device):
        return d
    if isinstance(d, DeviceType):
        return Device(d, 0)
    raise TypeError(f"Expected a Device or DeviceType, got {type(d).__name__}.")


def _require_backend(d: Device, message: str) -> None:
    if d.type is gpu and not gpu_available():
        raise ValueError(message)


def set_default_device(device) -> None:
    d = _as_device(device)
    _require_backend(d, "[set_default_device] Cannot set gpu device without gpu backend.")
    _global_device[0] = d
    _tl.device = None
    _epoch[0] += 1


def _make_stream(d: Device, bound: bool) -> Stream:
    with _lock:
        s = Stream(d, _next_index[0])
        _next_index[0] += 1
        if bound:
            _bound.add(s.index)
    if bound:
        _tl.owned.add(s.index)
    return s


def default_stream(device) -> Stream:
    d = _as_device(device)
    s = _tl.defaults.get(d)
    if s is None:
        _require_backend(d, "[default_stream] Cannot get gpu stream without gpu backend.")
        s = _tl.defaults[d] = _make_stream(d, bound=False)
    return s


def new_stream(device) -> Stream:
    d = _as_device(device)
    _require_backend(d, "[new_stream] Cannot make gpu stream without gpu backend.")
    return _make_stream(d, bound=True)


@api()
def new_thread_unsafe_stream(device) -> Stream:
    """A new stream that may be used from any thread."""
    d = _as_device(device)
    _require_backend(d, "[new_stream] Cannot make gpu stream without gpu backend.")
    return _make_stream(d, bound=False)


@api()
def new_thread_local_stream(device) -> ThreadLocalStream:
    """A stream that is unique per thread: each thread using it gets its own."""
    d = _as_device(device)
    with _lock:
        s = ThreadLocalStream(d, _next_local_index[0])
        _next_local_index[0] += 1
    return s


def _from_thread_local(s: ThreadLocalStream) -> Stream:
    out = _tl.local.get(s.index)
    if out is None:
        out = _tl.local[s.index] = new_stream(s.device)
    return out


def set_default_stream(stream: Stream) -> None:
    if isinstance(stream, ThreadLocalStream):
        stream = _from_thread_local(stream)
    _require_backend(stream.device, "[set_default_stream] Cannot set gpu stream without gpu backend.")
    _tl.defaults[stream.device] = stream
    _tl.current = None


@api()
def clear_streams() -> None:
    """Destroy all streams created in the current thread."""
    _tl.owned.clear()


def check_stream_usable(s: Stream) -> None:
    """Raise as MLX does when work on ``s`` is evaluated in a thread that cannot run it."""
    if s.index in _bound and s.index not in _tl.owned:
        raise RuntimeError(f"There is no Stream({s.device.type.name}, {s.index}) in current thread.")


def current_stream() -> Stream:
    tl = _tl
    s = tl.current
    if s is not None and tl.epoch == _epoch[0]:
        return s
    s = default_stream(default_device())
    tl.current, tl.epoch = s, _epoch[0]
    return s


def resolve_stream(s) -> Stream:
    """The ``stream=`` argument of every op: None, a Stream, a ThreadLocalStream, a Device or a type."""
    if s is None:
        return current_stream()
    if type(s) is Stream:
        return s
    if type(s) is ThreadLocalStream:
        return _from_thread_local(s)
    return default_stream(_as_device(s))


class StreamContext:
    """``with mx.stream(s):`` makes ``s`` (a Stream or Device) the default inside the block."""

    def __init__(self, s):
        if s is None:
            raise TypeError(
                "__init__(): incompatible function arguments. The following argument "
                "types are supported:\n    1. __init__(self, s: mlx.core.Stream | mlx.core.ThreadLocalStream"
                " | mlx.core.Device | mlx.core.DeviceType) -> None\n\nInvoked with types: "
                "mlx.core.StreamContext, NoneType")
        self._s = s
        self._saved = []

    def __enter__(self):
        target = resolve_stream(self._s)
        tl = _tl
        self._saved.append((tl.device, tl.defaults.get(target.device)))
        tl.device = target.device
        tl.defaults[target.device] = target
        tl.current = None

    def __exit__(self, *exc):
        tl = _tl
        device, previous = self._saved.pop()
        target_device = tl.device
        tl.device = device
        if previous is None:
            tl.defaults.pop(target_device, None)
        else:
            tl.defaults[target_device] = previous
        tl.current = None
        return False


def stream(s) -> StreamContext:
    if s is None:
        raise TypeError(
            "stream(): incompatible function arguments. The following argument types are supported:\n"
            "    1. stream(s: mlx.core.Stream | mlx.core.ThreadLocalStream | mlx.core.Device | "
            "mlx.core.DeviceType) -> mlx.core.StreamContext\n\nInvoked with types: NoneType")
    return StreamContext(s)


def _type_name(x) -> str:
    t = type(x)
    return f"mlx.core.{t.__name__}" if t.__module__.startswith("mlxarm.core") else t.__name__


# --- devices ------------------------------------------------------------------------------------

@api()
def device_count(device_type) -> int:
    """Number of available devices of ``device_type``."""
    if not isinstance(device_type, DeviceType):
        raise TypeError(
            "device_count(): incompatible function arguments. The following argument types are "
            "supported:\n    1. device_count(device_type: mlx.core.DeviceType) -> int\n\n"
            f"Invoked with types: {_type_name(device_type)}")
    if device_type is cpu:
        return 1
    return 1 if gpu_available() else 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and ": " in line:
                    return line.split(": ", 1)[1].rstrip("\n")
    except OSError:
        pass
    return platform.machine() or "unknown"


_CPU_INFO: dict = {}


def device_info(d=None) -> dict:
    """Properties of a device (the default one when ``d`` is None): MLX's ``device_name`` and
    ``architecture``, then which executor runs its work."""
    d = default_device() if d is None else _as_device(d)
    if d.type is gpu and not gpu_available():
        return {}  # MLX reports nothing for a GPU it does not have
    from ..backend import executor_for

    if not _CPU_INFO:
        _CPU_INFO.update(device_name=_cpu_name(), architecture=platform.machine() or "unknown")
    ex = executor_for(d)
    info = dict(_CPU_INFO, device=repr(d), executor=ex.name, memory_size=_total_ram())
    info.update(ex.info())
    return info


# --- memory accounting ------------------------------------------------------------------------

class MemoryStats:
    """Bytes of live realized buffers, the peak since reset, and the limits."""

    def __init__(self):
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.limit = int(0.8 * _total_ram()) or 1 << 33
        self.cache_limit = self.limit  # as MLX: freed buffers may be kept up to the memory limit

    def alloc(self, n: int):
        with self.lock:
            self.active += n
            if self.active > self.peak:
                self.peak = self.active

    def free(self, n: int):
        with self.lock:
            self.active -= n


def _total_ram() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


memory = MemoryStats()


class _Counted(weakref.ref):
    """A buffer's weak reference that returns its bytes to the memory count when the buffer dies
    (``weakref.finalize`` does the same at several times the cost per buffer)."""
    __slots__ = ("nbytes",)


_counted: dict = {}  # id -> the references alive, until their buffers die


def _uncount(ref: _Counted, counted=_counted, free=memory.free) -> None:
    # bound at definition: buffers may die while the interpreter tears the module's globals down
    counted.pop(id(ref), None)
    free(ref.nbytes)


def count_buffer(data) -> None:
    """Count ``data`` (a buffer an executor made, or a loaded array: MLX's allocator counts the
    buffer it reads a file into) as allocated for as long as it lives."""
    n = data.nbytes
    memory.alloc(n)
    ref = _Counted(data, _uncount)
    ref.nbytes = n
    _counted[id(ref)] = ref


def count_buffers(buffers) -> None:
    """``count_buffer`` for each of ``buffers``, made together (one eval's outputs): the peak is
    the same, as nothing dies between their allocations."""
    total = 0
    new, counted = _Counted, _counted
    for data in buffers:
        n = data.nbytes
        total += n
        ref = new(data, _uncount)
        ref.nbytes = n
        counted[id(ref)] = ref
    memory.alloc(total)


def counted_alone(data):
    """Whether the memory count holds ``data`` (True or False) when no other weak reference does (a
    device mirror, a cached repacking: something that would see a write into it); else None."""
    refs = weakref.getweakrefcount(data)
    if not refs:
        return False
    if refs == 1 and type(weakref.getweakrefs(data)[0]) is _Counted:
        return True
    return None


def get_active_memory() -> int:
    return memory.active


def get_peak_memory() -> int:
    return memory.peak


def reset_peak_memory() -> None:
    with memory.lock:
        memory.peak = 0


_reserved: dict = {}  # id(weak reference) -> (it, bytes): buffers kept between evals for reuse


def reserve_buffer(data) -> None:
    """Count ``data`` as cache memory for as long as it lives: memory an executor keeps between evals
    to reuse (a compiled program's arena), as MLX's buffer cache, not an array's."""
    ref = weakref.ref(data, lambda r: _reserved.pop(id(r), None))
    _reserved[id(ref)] = (ref, data.nbytes)


def get_cache_memory() -> int:
    """Bytes kept for reuse: freed large buffers (``backend.buffers``) and what executors reserve."""
    from ..backend import buffers

    return buffers.cached_bytes() + sum(n for _, n in list(_reserved.values()))


def cache_room(n: int) -> bool:
    """Whether ``n`` more bytes of cache memory stay within the cache limit."""
    return get_cache_memory() + n <= memory.cache_limit


# weak references to the methods that let go of what an executor keeps only to be faster (the
# programs of plain evals, ``LLVMExecutor.release_programs``): called by ``clear_cache``
_releasers: list = []


def on_clear_cache(method) -> None:
    """Have ``clear_cache`` (and a cache limit below what is kept) call bound ``method``."""
    _releasers.append(weakref.WeakMethod(method))


def _release() -> None:
    for ref in list(_releasers):
        method = ref()
        if method is None:
            _releasers.remove(ref)
        else:
            method()


def clear_cache() -> None:
    from ..backend import buffers

    buffers.clear()
    _release()


def set_memory_limit(limit: int) -> int:
    with memory.lock:
        prev, memory.limit = memory.limit, int(limit)
    return prev


@api()
def get_memory_limit() -> int:
    """The memory limit in bytes (by default 80% of the machine's memory)."""
    return memory.limit


def set_cache_limit(limit: int) -> int:
    from ..backend import buffers

    with memory.lock:
        prev, memory.cache_limit = memory.cache_limit, int(limit)
    if buffers.cached_bytes() > memory.cache_limit:
        buffers.clear()
    if get_cache_memory() > memory.cache_limit:
        _release()
    return prev


def set_wired_limit(limit: int) -> int:
    # Wired memory is a GPU notion: on the CPU the limit is ignored and the previous one is always 0.
    return 0
