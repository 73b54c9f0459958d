"""The primitive registry: every primitive is defined here once.

A ``Primitive`` holds everything the rest of the system needs to know about one operation:

* ``infer(inputs, params) -> (shape, dtype)``: the shape/dtype rule (used when a node is recorded);
* ``ref(params, *inputs) -> numpy.ndarray``: the numpy reference implementation (the numpy executor
  runs it; every other backend is tested against it);
* ``vjp``/``jvp``: gradient rules, where defined;
* ``kind``: how code generation lowers it (``unary``, ``binary``, ``ternary``, ``reduce``, ``scan``,
  ``movement``, ``index``, ``sort``, ``linalg``, ``random``, ``kernel``);
* ``dtypes``: the input dtypes it supports (drives the op-by-dtype test matrix and the docs);
* ``compute``: whether ``ref`` sees computed values (bfloat16 widened to float32 and rounded back after)
  or raw storage (movement and indexing ops, which must be bit exact).

Public API functions are registered too (``api``), so the docs' coverage table and the test matrix
come from one place: ``API`` maps each public name to its function and, when it records a single
primitive, that primitive's name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from . import dtypes as dt


@dataclass(eq=False)
class Primitive:
    name: str
    kind: str
    ref: Callable
    infer: Optional[Callable] = None
    dtypes: tuple = tuple(dt.ALL)
    compute: bool = True
    vjp: Optional[Callable] = None
    jvp: Optional[Callable] = None
    # Input domain for generated tests, as (low, high) for real inputs (e.g. log: (0, inf)).
    domain: Optional[tuple] = None
    doc: str = ""
    extra: dict = field(default_factory=dict)

    def __repr__(self):
        return f"Primitive({self.name}, {self.kind})"


PRIMITIVES: dict[str, Primitive] = {}


def register(prim: Primitive) -> Primitive:
    if prim.name in PRIMITIVES:
        raise ValueError(f"primitive {prim.name!r} registered twice")
    PRIMITIVES[prim.name] = prim
    return prim


def get(name: str) -> Primitive:
    return PRIMITIVES[name]


@dataclass(eq=False)
class ApiEntry:
    name: str
    fn: Callable
    primitive: Optional[str] = None  # the primitive it records, when it is a thin wrapper
    module: str = "core"  # 'core', 'random', 'fast', 'linalg', ...


API: dict[tuple, ApiEntry] = {}


def api(name: str | None = None, primitive: str | None = None, module: str = "core"):
    """Decorator: register ``fn`` as public API ``module.name``."""

    def deco(fn):
        n = name or fn.__name__
        API[(module, n)] = ApiEntry(n, fn, primitive, module)
        return fn

    return deco


def public(module: str = "core") -> dict:
    """Public name -> function for one module, in registration order."""
    return {e.name: e.fn for (m, _), e in API.items() if m == module}
