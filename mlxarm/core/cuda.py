"""``mx.cuda``: MLX's CUDA backend; mlxarm reaches NVIDIA GPUs through Vulkan and OpenCL instead."""


def is_available() -> bool:
    return False
