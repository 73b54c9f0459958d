"""The numpy executor: interprets any graph through the registry's reference implementations.

It is the oracle for every other backend and the one that runs with nothing but numpy installed.

Memory is counted as MLX's allocator would count it with buffer donation: an elementwise node whose
input buffer dies with it reuses that buffer in MLX, so the inputs are released before the new
buffer is counted, and a chain of elementwise ops over a temporary never raises the peak.
"""
from __future__ import annotations

import numpy as np

from ..core import dtypes as dt
from ..core.device import count_buffer

_ELEMENTWISE = frozenset(("unary", "binary", "ternary"))


_TRANSFORMS: list = []  # core.transforms, imported at the first call (it imports the executors' callers)


def _keeps_graph() -> bool:
    """While a transform traces a function, realized nodes keep their inputs for the walk after."""
    if not _TRANSFORMS:
        from ..core import transforms

        _TRANSFORMS.append(transforms)
    return _TRANSFORMS[0].tracing_depth > 0


class NumpyExecutor:
    name = "numpy"

    def info(self) -> dict:
        return {"backend": "numpy", "numpy": np.__version__}

    def run(self, refs) -> None:
        bf16 = dt.bfloat16
        keep_graph = _keeps_graph()
        for ref in refs:
            node = ref()
            if node is None or node._data is not None:
                continue  # nobody needs it any more, or another path realized it
            prim = node._prim
            if prim.compute:
                ins = [dt.bf16_to_f32(i._data) if i._dtype is bf16 else i._data for i in node._inputs]
                with np.errstate(all="ignore"):
                    out = prim.ref(node._params, *ins)
                out = dt.to_storage(out, node._dtype)
            else:
                ins = [i._data for i in node._inputs]
                with np.errstate(all="ignore"):
                    out = prim.ref(node._params, *ins)
            del ins
            if not isinstance(out, np.ndarray):
                out = np.asarray(out, dtype=node._dtype.np_storage)
            if out.shape != node._shape:
                raise RuntimeError(
                    f"[{prim.name}] reference produced shape {out.shape}, expected {node._shape}")
            if out.dtype != node._dtype.np_storage:
                raise RuntimeError(
                    f"[{prim.name}] reference produced dtype {out.dtype}, expected {node._dtype}")
            node._data = out
            # A new buffer, not a view and not an input handed back unchanged (already counted).
            owns = out.base is None and not any(out is i._data for i in node._inputs)
            if owns and not keep_graph and prim.kind in _ELEMENTWISE:
                node._inputs = ()  # inputs dying here are freed first: MLX donates their buffer
            if owns:
                count_buffer(out)  # while the buffer lives
            if not keep_graph:
                node._inputs = ()
                node._params = None
