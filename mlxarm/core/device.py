"""Devices, streams and memory accounting, with MLX's names.

A Device is (type, index); a Stream is (device, index). Every recorded node carries the stream it was
recorded on; executors are chosen per device type. ``mx.cpu``/``mx.gpu`` are ``DeviceType`` members as
in MLX. The memory figures count the bytes of realized buffers that are alive right now.
"""
from __future__ import annotations

import contextlib
import enum
import threading


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
        return isinstance(other, Stream) and self.device == other.device and self.index == other.index

    def __hash__(self):
        return hash((self.device, self.index))

    def __repr__(self):
        return f"Stream({self.device!r}, {self.index})"


def gpu_available() -> bool:
    """Whether a GPU executor is available (none in the reference build: see the backends)."""
    from ..backend import available_gpu_backend

    return available_gpu_backend() is not None


class _State(threading.local):
    def __init__(self):
        self.device = None  # per-thread override (inside ``with mx.stream(...)``)
        self.stream = None


_state = _State()
# The process-wide default device and its default stream; ``current_stream`` is on every op's path,
# so the stream is cached here rather than looked up.
_global = {"device": None, "stream": None}
_streams: dict = {}
_stream_lock = threading.Lock()


def _default_device_init() -> Device:
    return Device(gpu if gpu_available() else cpu, 0)


def default_device() -> Device:
    if _state.device is not None:
        return _state.device
    if _global["device"] is None:
        _global["device"] = _default_device_init()
    return _global["device"]


def _as_device(d) -> Device:
    if isinstance(d, Device):
        return d
    if isinstance(d, DeviceType):
        return Device(d, 0)
    raise TypeError(f"Expected a Device or DeviceType, got {type(d).__name__}.")


def _check_device(d: Device):
    if d.type is gpu and not gpu_available():
        raise ValueError("[set_default_device] No GPU backend is available on this machine.")


def set_default_device(device) -> None:
    d = _as_device(device)
    _check_device(d)
    _global["device"] = d
    _global["stream"] = default_stream(d)
    _state.device = None
    _state.stream = None


def default_stream(device) -> Stream:
    d = _as_device(device)
    with _stream_lock:
        if d not in _streams:
            _streams[d] = [Stream(d, 0)]
        return _streams[d][0]


def new_stream(device) -> Stream:
    d = _as_device(device)
    default_stream(d)
    with _stream_lock:
        s = Stream(d, len(_streams[d]) + sum(len(v) for k, v in _streams.items() if k != d))
        _streams[d].append(s)
        return s


def set_default_stream(stream: Stream) -> None:
    _state.stream = stream
    _state.device = stream.device


def current_stream() -> Stream:
    s = _state.stream
    if s is not None:
        return s
    s = _global["stream"]
    if s is None:
        s = _global["stream"] = default_stream(default_device())
    return s


def resolve_stream(s) -> Stream:
    """The ``stream=`` argument of every op: None, a Stream, a Device or a DeviceType."""
    if s is None:
        return current_stream()
    if isinstance(s, Stream):
        return s
    d = _as_device(s)
    _check_device(d)
    return default_stream(d)


class StreamContext:
    """``with mx.stream(s):`` makes ``s`` (a Stream or Device) the default inside the block."""

    def __init__(self, s):
        self._target = resolve_stream(s)
        self._saved = []

    def __enter__(self):
        self._saved.append((_state.device, _state.stream))
        _state.stream = self._target
        _state.device = self._target.device
        return self

    def __exit__(self, *exc):
        _state.device, _state.stream = self._saved.pop()
        return False


def stream(s) -> StreamContext:
    return StreamContext(s)


# --- memory accounting ------------------------------------------------------------------------

class MemoryStats:
    """Bytes of live realized buffers, the peak since reset, and the limit."""

    def __init__(self):
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.limit = 0
        self.cache_limit = 0
        self.wired_limit = 0

    def alloc(self, n: int):
        with self.lock:
            self.active += n
            if self.active > self.peak:
                self.peak = self.active

    def free(self, n: int):
        with self.lock:
            self.active -= n


memory = MemoryStats()


def _total_ram() -> int:
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def get_active_memory() -> int:
    return memory.active


def get_peak_memory() -> int:
    return memory.peak


def reset_peak_memory() -> None:
    with memory.lock:
        memory.peak = memory.active


def get_cache_memory() -> int:
    # The numpy executor hands freed buffers straight back to the allocator: nothing is cached.
    return 0


def clear_cache() -> None:
    return None


def set_memory_limit(limit: int) -> int:
    prev = memory.limit or int(_total_ram() * 1.5)
    memory.limit = int(limit)
    return prev


def get_memory_limit() -> int:
    return memory.limit or int(_total_ram() * 1.5)


def set_cache_limit(limit: int) -> int:
    prev = memory.cache_limit or get_memory_limit()
    memory.cache_limit = int(limit)
    return prev


def set_wired_limit(limit: int) -> int:
    prev = memory.wired_limit
    memory.wired_limit = int(limit)
    return prev


def device_info() -> dict:
    from ..backend import executor_for

    d = default_device()
    ex = executor_for(d)
    info = {"device": repr(d), "executor": ex.name, "memory_size": _total_ram()}
    info.update(ex.info())
    return info
