"""``repr(array)`` exactly as MLX prints it: %g-style numbers, no column padding, and
``...`` summaries (three edge items per axis) for arrays of a thousand elements or more."""
from __future__ import annotations

import numpy as np

_EDGE = 3
_SUMMARIZE_AT = 1000


def _fmt_float(v) -> str:
    return "%g" % v


def _fmt_complex(v) -> str:
    re, im = _fmt_float(v.real), _fmt_float(abs(v.imag))
    sign = "-" if (v.imag < 0 or (v.imag == 0 and np.signbit(v.imag))) else "+"
    return f"{re}{sign}{im}j"


def _formatter(kind):
    if kind == "b":
        return lambda v: "True" if v else "False"
    if kind in "iu":
        return lambda v: str(int(v))
    if kind == "c":
        return _fmt_complex
    return _fmt_float


def _format(x: np.ndarray, fmt, indent: int, summarize: bool) -> str:
    if x.ndim == 0:
        return fmt(x.item() if x.dtype.kind != "c" else complex(x))
    n = x.shape[0]
    if summarize and n > 2 * _EDGE:
        idx = list(range(_EDGE)) + [None] + list(range(n - _EDGE, n))
    else:
        idx = list(range(n))
    if x.ndim == 1:
        items = ["..." if i is None else fmt(x[i].item() if x.dtype.kind != "c" else complex(x[i]))
                 for i in idx]
        return "[" + ", ".join(items) + "]"
    sep = ",\n" + " " * (indent + 1)
    parts = ["..." if i is None else _format(x[i], fmt, indent + 1, summarize) for i in idx]
    return "[" + sep.join(parts) + "]"


def format_array(a) -> str:
    x = a._numpy()
    prefix = "array("
    body = _format(x, _formatter(x.dtype.kind), len(prefix), x.size >= _SUMMARIZE_AT)
    return f"{prefix}{body}, dtype={a._dtype.name})"
