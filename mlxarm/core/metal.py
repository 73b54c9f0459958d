"""``mx.metal``: Apple's Metal backend is never present here, so ``is_available()`` is False; the
memory functions report the same figures as the top-level ones, as MLX's deprecated aliases do."""
from .device import (clear_cache, get_active_memory, get_cache_memory, get_peak_memory,  # noqa: F401
                     reset_peak_memory, set_cache_limit, set_memory_limit, set_wired_limit)


def is_available() -> bool:
    return False


def device_info() -> dict:
    raise RuntimeError("[metal.device_info] Metal is not available on this machine.")


def start_capture(path: str) -> None:
    raise RuntimeError("[metal.start_capture] Metal is not available on this machine.")


def stop_capture() -> None:
    raise RuntimeError("[metal.stop_capture] Metal is not available on this machine.")
