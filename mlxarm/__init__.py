"""mlxarm: MLX's Python API as a lazy tensor framework that runs anywhere numpy does.

``import mlxarm.core as mx`` is the entry point; ``mlxarm.alias.install()`` (or ``python -m mlxarm run
script.py``) lets unmodified ``import mlx.core as mx`` programs run on it.
"""
__version__ = "0.1.0"

# Run from a source checkout (not installed), the top-level codegen/ and kernels/ folders are
# mlxarm.codegen and mlxarm.kernels, as an installed copy maps them (see pyproject.toml).
def _map_source_tree():
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isfile(os.path.join(root, "pyproject.toml")) and \
            os.path.isfile(os.path.join(root, "codegen", "__init__.py")) and root not in __path__:
        __path__.append(root)


_map_source_tree()
del _map_source_tree
