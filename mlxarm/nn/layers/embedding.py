"""``Embedding``: a lookup table of ``dims``-vectors, also usable as a tied output layer."""
from __future__ import annotations

import math

import mlxarm.core as mx

from .base import Module


class Embedding(Module):
    """Maps integer ids to rows of ``weight`` (``(num_embeddings, dims)``, normal with std
    ``1/sqrt(dims)`` at start)."""

    def __init__(self, num_embeddings: int, dims: int):
        super().__init__()
        self.weight = mx.random.normal(shape=(num_embeddings, dims), scale=math.sqrt(1 / dims))

    def _extra_repr(self):
        return f"{self.weight.shape[0]}, {self.weight.shape[1]}"

    def __call__(self, x):
        return self.weight[x]

    def as_linear(self, x):
        """Use the table as a linear layer (``x @ weight.T``), e.g. for tied output logits."""
        return x @ self.weight.T

    def to_quantized(self, group_size: int = None, bits: int = None, mode: str = "affine",
                     quantize_input: bool = False):
        """A ``QuantizedEmbedding`` approximation of this table."""
        from .quantized import QuantizedEmbedding

        if quantize_input:
            raise ValueError("Quantized input is not supported for Embedding.")
        return QuantizedEmbedding.from_embedding(self, group_size, bits, mode)
