"""Hand-written kernel templates (installed as ``mlxarm.kernels``): sources the renderers
parameterize for what fusion alone cannot make fast (tiled matmul, quantized matvec, attention)."""
