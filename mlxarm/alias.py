"""The ``mlx`` alias: lets unmodified ``import mlx.core as mx`` programs run on mlxarm.

``install()`` puts a finder at the front of ``sys.meta_path`` that answers for ``mlx`` (an empty
package, like MLX's namespace package) and maps ``mlx.<sub>...`` to ``mlxarm.<sub>...`` for the
packages MLX ships: ``core`` (with ``random``, ``fast``, ``linalg``), ``nn``, ``optimizers`` and
``utils``. The names resolve to mlxarm's own module objects, so ``mlx.core is mlxarm.core``.

A real MLX installation is never shadowed by accident: ``install`` refuses while one is importable
unless ``override=True`` or the environment sets ``MLXARM_OVERRIDE_MLX=1``. Overriding sets aside
any ``mlx`` modules already imported; ``uninstall`` puts them back.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import sys

__all__ = ["install", "uninstall"]

# mlx.<name> -> mlxarm.<name>; deeper names (mlx.nn.layers.linear, ...) follow their package.
MAPPED_PACKAGES = ("core", "nn", "optimizers", "utils")
OVERRIDE_ENV = "MLXARM_OVERRIDE_MLX"


class _PackageLoader(importlib.abc.Loader):
    """Creates the top-level ``mlx`` package: empty; its submodules come from the finder."""

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__doc__ = "mlx, provided by mlxarm (see mlxarm.alias)."


class _AliasLoader(importlib.abc.Loader):
    """Loads ``mlx.X`` by importing ``mlxarm.X`` and putting that very module under the alias name.

    The import system re-reads ``sys.modules`` after ``exec_module``, so the mlxarm module is what
    the importer gets, and its own ``__name__``/``__spec__`` stay untouched.
    """

    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        sys.modules[module.__name__] = importlib.import_module(self.target)


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "mlx":
            return importlib.util.spec_from_loader("mlx", _PackageLoader(), is_package=True)
        head, _, rest = fullname.partition(".")
        if head != "mlx" or rest.partition(".")[0] not in MAPPED_PACKAGES:
            return None
        real_name = "mlxarm." + rest
        try:
            real = importlib.util.find_spec(real_name)
        except ModuleNotFoundError as missing:
            # A missing mlxarm package on the mapped path (e.g. no mlxarm.nn) means no such mlx module;
            # any other missing module is a real error inside mlxarm and must surface.
            if missing.name and (real_name == missing.name or real_name.startswith(missing.name + ".")):
                return None
            raise
        if real is None:
            return None
        return importlib.util.spec_from_loader(
            fullname, _AliasLoader(real_name), is_package=real.submodule_search_locations is not None)


_finder: _AliasFinder | None = None
# Real ``mlx`` modules that were imported before an overriding install, restored by uninstall.
_set_aside: dict = {}


def _is_mlx_name(name: str) -> bool:
    return name == "mlx" or name.startswith("mlx.")


def _real_mlx_location():
    """Where a real (non-alias) MLX would be imported from, or None when there is none."""
    try:
        spec = importlib.util.find_spec("mlx")
    except (ImportError, ValueError):
        return None
    if spec is None or isinstance(spec.loader, _PackageLoader):
        return None
    locations = list(spec.submodule_search_locations or [])
    return locations[0] if locations else (spec.origin or "mlx")


def install(override: bool = False) -> None:
    """Make ``import mlx...`` resolve to mlxarm (idempotent).

    Raises ``RuntimeError`` when a real MLX is importable, unless ``override`` is true or the
    environment variable ``MLXARM_OVERRIDE_MLX`` is ``1``.
    """
    global _finder
    if _finder is not None:
        return
    override = override or os.environ.get(OVERRIDE_ENV, "") == "1"
    if not override:
        location = _real_mlx_location()
        if location is not None:
            raise RuntimeError(
                f"A real MLX is importable (from {location}); the mlx alias would shadow it. "
                f"Use mlxarm.core directly, or pass override=True (python -m mlxarm run --override, "
                f"or set {OVERRIDE_ENV}=1) to run on mlxarm anyway.")
    for name in [n for n in sys.modules if _is_mlx_name(n)]:
        _set_aside[name] = sys.modules.pop(name)
    _finder = _AliasFinder()
    sys.meta_path.insert(0, _finder)
    importlib.invalidate_caches()


def uninstall() -> None:
    """Remove the alias: forget the aliased ``mlx`` modules and restore any real ones set aside."""
    global _finder
    if _finder is None:
        return
    sys.meta_path.remove(_finder)
    _finder = None
    for name in [n for n in sys.modules if _is_mlx_name(n)]:
        del sys.modules[name]
    sys.modules.update(_set_aside)
    _set_aside.clear()
    importlib.invalidate_caches()
