"""The Qwen3 (dense) architecture: Llama's decoder with an RMS norm on every query and key head
(``q_norm``, ``k_norm``) before the rotation, built with mlx-lm's module names."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import mlxarm.nn as nn

from .transformer import MLP, Attention, CausalLM, Decoder, TransformerArgs, TransformerBlock, default_rope


@dataclass
class ModelArgs(TransformerArgs):
    rms_norm_eps: float
    vocab_size: int
    num_key_value_heads: int
    max_position_embeddings: int
    head_dim: int
    tie_word_embeddings: bool
    rope_theta: Optional[float] = None
    rope_scaling: Optional[dict] = None
    rope_parameters: Optional[dict] = None
    model_type: str = "qwen3"

    def __post_init__(self):
        # Newer configs nest rope_theta and the scaling under rope_parameters.
        if self.rope_parameters:
            if self.rope_theta is None:
                self.rope_theta = self.rope_parameters.get("rope_theta")
            if self.rope_scaling is None:
                self.rope_scaling = self.rope_parameters
        if self.rope_theta is None:
            raise ValueError("rope_theta is missing from the model config")


class Model(CausalLM):
    def __init__(self, args: ModelArgs):
        def block(i):
            return TransformerBlock(args, Attention(args, default_rope(args), qk_norm=nn.RMSNorm), MLP(args))

        super().__init__(args, Decoder(args, block))
