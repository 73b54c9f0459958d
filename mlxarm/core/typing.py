"""result_type, promote_types, can_cast: MLX's promotion rules over arrays, dtypes and scalars."""
from __future__ import annotations

from . import dtypes as dt
from .array import array


def promote_types(a, b):
    return dt.promote_types(dt.as_dtype(a), dt.as_dtype(b))


def result_type(*arrays_and_dtypes):
    """The dtype an op over these arrays/dtypes produces (MLX accepts no Python scalars here)."""
    if not arrays_and_dtypes:
        raise ValueError("[result_type] Expected at least one input.")
    out = None
    for x in arrays_and_dtypes:
        if isinstance(x, array):
            d = x._dtype
        elif isinstance(x, dt.Dtype):
            d = x
        else:
            raise ValueError("[result_type] Inputs must be arrays or dtypes.")
        out = d if out is None else dt.promote_types(out, d)
    return out


def can_cast(from_, to) -> bool:
    src = from_._dtype if isinstance(from_, array) else dt.as_dtype(from_)
    to = dt.as_dtype(to)
    return dt.promote_types(src, to) is to
