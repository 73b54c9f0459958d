"""The Qwen2 architecture (Qwen2, Qwen2.5): Llama's decoder with biases on the query, key and value
projections, built with mlx-lm's module names so its safetensors load unchanged."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from . import llama
from .transformer import TransformerArgs


@dataclass
class ModelArgs(TransformerArgs):
    rms_norm_eps: float
    vocab_size: int
    num_key_value_heads: int
    max_position_embeddings: int = 32768
    rope_theta: float = 1000000.0
    rope_traditional: bool = False
    rope_scaling: Optional[dict] = None
    tie_word_embeddings: bool = True
    model_type: str = "qwen2"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class Model(llama.Model):
    qkv_bias = True
