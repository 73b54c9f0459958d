"""mlxarm.core: MLX's ``mlx.core`` API over a lazy graph.

Everything public here is assembled from the registry (``registry.API``), the dtype module, the
device module and the graph's eval functions; nothing computes until ``eval``.
"""
from . import dtypes as _dtypes
from .array import array, _bind_ops
from .dtypes import (Dtype, DtypeCategory, bool_, uint8, uint16, uint32, uint64, int8, int16, int32,
                     int64, float16, float32, float64, bfloat16, complex64, complexfloating, floating,
                     inexact, signedinteger, unsignedinteger, integer, number, generic, finfo, iinfo,
                     issubdtype, isdtype)
from .device import (Device, DeviceType, Stream, cpu, gpu, default_device, set_default_device,
                     default_stream, set_default_stream, new_stream, stream, StreamContext,
                     get_active_memory, get_peak_memory, reset_peak_memory, get_cache_memory,
                     clear_cache, set_memory_limit, set_cache_limit, set_wired_limit, device_info)
from .graph import eval, async_eval, synchronize
from .registry import public as _public
from . import ops as _ops_pkg
from . import transforms as _transforms  # noqa: F401  (registers grad, vjp, ...)

_bind_ops(_ops_pkg)
globals().update(_public("core"))

from . import random  # noqa: E402
from . import fast  # noqa: E402
from . import linalg  # noqa: E402
from . import vmap as _vmap, compile as _compile  # noqa: E402,F401  (batching rules need every op)
from . import export as _export  # noqa: E402,F401  (export_function, import_function, exporter)
from . import fft  # noqa: E402
from . import io as _io  # noqa: E402,F401
from . import metal, cuda  # noqa: E402
from . import distributed  # noqa: E402
globals().update(_public("core"))  # vmap, compile
globals().update(_public("io"))  # load, save, savez, ... (registered by io)
from .typing import result_type, can_cast  # noqa: E402

newaxis = None
pi = 3.141592653589793
e = 2.718281828459045
euler_gamma = 0.5772156649015329
inf = float("inf")
nan = float("nan")
Inf = Infinity = infty = inf
NAN = NaN = nan
PINF = inf
NINF = float("-inf")

__version__ = "0.1.0"


def is_available(device) -> bool:
    d = device if isinstance(device, Device) else Device(device, 0)
    from .device import gpu_available

    return d.type is cpu or gpu_available()


# Public names computed once: the MLX coverage table and the alias use it.
__all__ = sorted(n for n in globals() if not n.startswith("_"))
