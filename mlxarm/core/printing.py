"""``repr(array)`` exactly as MLX prints it, and MLX's print options (``set_printoptions``,
``get_printoptions``, ``printoptions``, ``PrintOptions``).

Numbers print %g-style (or fixed with ``precision`` decimals once one is set), with no column
padding; every axis longer than six is summarized by its first and last three entries.
"""
from __future__ import annotations

import math

import numpy as np

from .registry import api

_EDGE = 3


@api()
class PrintOptions:
    """The options used to print arrays: ``precision`` is the number of decimals, -1 for MLX's
    default %g formatting."""

    def __init__(self):
        self.precision = -1


_options = PrintOptions()


@api()
def set_printoptions(precision: int = -1) -> None:
    _options.precision = int(precision)


@api()
def get_printoptions() -> PrintOptions:
    out = PrintOptions()
    out.precision = _options.precision
    return out


class _PrintOptionsContext:
    def __init__(self, precision: int):
        self._precision = int(precision)
        self._saved = None

    def __enter__(self):
        self._saved = _options.precision
        _options.precision = self._precision
        return self

    def __exit__(self, *exc):
        _options.precision = self._saved
        return False


@api()
def printoptions(precision: int = -1) -> _PrintOptionsContext:
    return _PrintOptionsContext(precision)


def _float_formatter(precision: int):
    pattern = "%g" if precision == -1 else f"%.{precision if precision >= 0 else 6}f"

    def fmt(v) -> str:
        if v != v:
            return "-nan" if math.copysign(1.0, v) < 0 else "nan"
        return pattern % v
    return fmt


def _formatter(kind):
    if kind == "b":
        return lambda v: "True" if v else "False"
    if kind in "iu":
        return lambda v: str(int(v))
    real = _float_formatter(_options.precision)
    if kind == "c":
        def fmt(v) -> str:
            v = complex(v)
            # MLX writes the sign of a negative imaginary part in place of '+', any other as is
            # (so a negative-zero or NaN imaginary part prints as '+-0j' / '+-nanj').
            imag = f"-{real(-v.imag)}" if v.imag < 0 else f"+{real(v.imag)}"
            return f"{real(v.real)}{imag}j"
        return fmt
    return lambda v: real(float(v))


def _format(x: np.ndarray, fmt, indent: int) -> str:
    if x.ndim == 0:
        return fmt(x[()])
    n = x.shape[0]
    idx = list(range(_EDGE)) + [None] + list(range(n - _EDGE, n)) if n > 2 * _EDGE else range(n)
    if x.ndim == 1:
        return "[" + ", ".join("..." if i is None else fmt(x[i]) for i in idx) + "]"
    sep = ",\n" + " " * (indent + 1)
    return "[" + sep.join("..." if i is None else _format(x[i], fmt, indent + 1) for i in idx) + "]"


def format_array(a) -> str:
    x = a._numpy()
    prefix = "array("
    body = _format(x, _formatter(x.dtype.kind), len(prefix))
    return f"{prefix}{body}, dtype={a._dtype.name})"
