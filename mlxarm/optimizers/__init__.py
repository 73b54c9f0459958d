"""mlxarm.optimizers: MLX's ``mlx.optimizers`` (optimizers, learning-rate schedules and
gradient clipping)."""
from .optimizers import *  # noqa: F401,F403
from .schedulers import *  # noqa: F401,F403
