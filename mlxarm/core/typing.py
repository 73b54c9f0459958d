"""result_type, promote_types, can_cast: MLX's promotion rules over arrays, dtypes and scalars."""
from __future__ import annotations

from . import dtypes as dt
from .array import array


def promote_types(a, b):
    return dt.promote_types(dt.as_dtype(a), dt.as_dtype(b))


def result_type(*arrays_and_dtypes):
    """The dtype an op over these arrays/dtypes produces (MLX accepts no Python scalars here)."""
    if not arrays_and_dtypes:
        raise ValueError("[result_type] At least one array or dtype is required.")
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
    if isinstance(from_, array):
        src = from_._dtype
    elif isinstance(from_, dt.Dtype):
        src = from_
    else:
        raise ValueError("[can_cast] `from_` must be an array or a dtype.")
    if not isinstance(to, dt.Dtype):
        raise TypeError(f"can_cast(): incompatible function arguments: `to` must be a Dtype, "
                        f"got {type(to).__name__}.")
    return dt.promote_types(src, to) is to
