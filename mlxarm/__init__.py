"""mlxarm: MLX's Python API as a lazy tensor framework that runs anywhere numpy does.

``import mlxarm.core as mx`` is the entry point; ``mlxarm.alias.install()`` (or ``python -m mlxarm run
script.py``) lets unmodified ``import mlx.core as mx`` programs run on it.
"""
__version__ = "0.1.0"
