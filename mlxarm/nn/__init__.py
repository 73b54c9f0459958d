"""mlxarm.nn: MLX's ``mlx.nn`` (modules, layers, initializers and losses) over ``mlxarm.core``."""
from . import init, losses
from .layers import *  # noqa: F401,F403
from .utils import average_gradients, value_and_grad
