"""The Llama architecture (also SmolLM2, TinyLlama, Mistral without sliding windows), built the
way mlx-lm builds it so the same weights and cache conventions apply."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .transformer import (MLP, Attention, CausalLM, Decoder, TransformerArgs, TransformerBlock, default_rope,
                          without_rotary_freqs)


@dataclass
class ModelArgs(TransformerArgs):
    num_key_value_heads: int
    vocab_size: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    head_dim: Optional[int] = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True
    # GGUF files store q/k rows permuted so that rotation pairs are adjacent (llama.cpp's layout):
    # with those weights the traditional (interleaved) rotation is the right one.
    rope_traditional: bool = False
    rope_scaling: Optional[dict] = None
    model_type: str = "llama"

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads


class Model(CausalLM):
    qkv_bias = False  # Qwen2 is this model with biased query/key/value projections

    def __init__(self, args: ModelArgs):
        def block(i):
            rope = default_rope(args, traditional=args.rope_traditional)
            return TransformerBlock(args, Attention(args, rope, bias=self.qkv_bias), MLP(args))

        super().__init__(args, Decoder(args, block))

    def sanitize(self, weights: dict) -> dict:
        """Checkpoint names mlx-lm drops: a tied output head, precomputed rotary frequencies."""
        return without_rotary_freqs(super().sanitize(weights))
