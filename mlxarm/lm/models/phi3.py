"""The Phi-3 architecture: Llama's decoder with one fused query/key/value projection (``qkv_proj``)
and one fused gate/up projection (``gate_up_proj``), optional partial rotary dimensions and the
"longrope" scaling of its long-context variants, with mlx-lm's names."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import mlxarm.nn as nn

from .rope import SuScaledRoPE
from .transformer import MLP, Attention, CausalLM, Decoder, TransformerArgs, TransformerBlock


@dataclass
class ModelArgs(TransformerArgs):
    rms_norm_eps: float
    vocab_size: int
    num_key_value_heads: Optional[int] = None
    rope_theta: float = 10000.0
    rope_traditional: bool = False
    rope_scaling: Optional[dict] = None
    partial_rotary_factor: float = 1.0
    max_position_embeddings: int = 131072
    original_max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    model_type: str = "phi3"

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.rope_scaling:
            if not {"long_factor", "type"} <= self.rope_scaling.keys():
                raise ValueError("rope_scaling must contain the keys 'type' and 'long_factor'")
            if self.rope_scaling["type"] not in ("longrope", "su", "linear"):
                raise ValueError(f"rope scaling type '{self.rope_scaling['type']}' is not supported "
                                 "(supported: linear, su, longrope)")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def phi3_rope(args: ModelArgs):
    """Rotation of the first ``partial_rotary_factor`` of each head: longrope, or plain/linear."""
    rope_dim = int(args.head_dim * args.partial_rotary_factor)
    scaling = args.rope_scaling
    if scaling and scaling["type"] in ("longrope", "su"):
        return SuScaledRoPE(rope_dim, args.rope_theta, args.max_position_embeddings,
                            args.original_max_position_embeddings, scaling["long_factor"])
    scale = 1 / scaling["factor"] if scaling else 1.0
    return nn.RoPE(rope_dim, traditional=args.rope_traditional, base=args.rope_theta, scale=scale)


class Model(CausalLM):
    def __init__(self, args: ModelArgs):
        def block(i):
            attention = Attention(args, phi3_rope(args), fused_qkv=True)
            return TransformerBlock(args, attention, MLP(args, fused=True))

        super().__init__(args, Decoder(args, block))
