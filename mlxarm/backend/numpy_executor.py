"""The numpy executor: interprets any graph through the registry's reference implementations.

It is the oracle for every other backend and the one that runs with nothing but numpy installed.
"""
from __future__ import annotations

import weakref

import numpy as np

from ..core import dtypes as dt
from ..core.device import memory


class NumpyExecutor:
    name = "numpy"

    def info(self) -> dict:
        return {"backend": "numpy", "numpy": np.__version__}

    def run(self, refs) -> None:
        bf16 = dt.bfloat16
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
                with np.errstate(all="ignore"):
                    out = prim.ref(node._params, *[i._data for i in node._inputs])
            if not isinstance(out, np.ndarray):
                out = np.asarray(out, dtype=node._dtype.np_storage)
            if out.shape != node._shape:
                raise RuntimeError(
                    f"[{prim.name}] reference produced shape {out.shape}, expected {node._shape}")
            if out.dtype != node._dtype.np_storage:
                raise RuntimeError(
                    f"[{prim.name}] reference produced dtype {out.dtype}, expected {node._dtype}")
            if out.base is None:
                memory.alloc(out.nbytes)
                weakref.finalize(out, memory.free, out.nbytes)  # lives as long as the buffer
            node._data = out
            node._inputs = ()
            node._params = None
