"""The Gemma 3 architecture: text model (config ``model_type`` "gemma3_text", GGUF "gemma3") and the
multimodal checkpoint's language model (``model_type`` "gemma3", weights under ``language_model``).

What sets it apart from Llama, with mlx-lm's names and formulas: RMS norms that scale by
``1 + weight``; norms after attention and after the MLP as well as before; per-head ``q_norm`` and
``k_norm``; embeddings scaled by sqrt(hidden_size) (rounded to bfloat16, as the reference does);
a gelu-tanh gated MLP; attention scaled by ``query_pre_attn_scalar``; and layers that attend to a
sliding window of ``sliding_window`` positions with their own rotary base, except every
``sliding_window_pattern``-th layer, which is global."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import mlxarm.core as mx
import mlxarm.nn as nn

from .base import create_attention_mask
from .rope import initialize_rope
from .transformer import MLP, Attention, CausalLM, Decoder, TransformerBlock, default_rope


@dataclass
class ModelArgs:
    hidden_size: int = 1152
    num_hidden_layers: int = 26
    intermediate_size: int = 6912
    num_attention_heads: int = 4
    head_dim: int = 256
    rms_norm_eps: float = 1.0e-6
    vocab_size: int = 262144
    num_key_value_heads: int = 1
    rope_theta: float = 1_000_000.0
    rope_local_base_freq: float = 10_000.0
    query_pre_attn_scalar: float = 256
    sliding_window: int = 512
    sliding_window_pattern: int = 6
    max_position_embeddings: int = 32768
    rope_scaling: Optional[dict] = None
    # Not in Gemma configs: ``sanitize`` ties the output head when a checkpoint has no lm_head.
    tie_word_embeddings: bool = False
    model_type: str = "gemma3_text"

    def is_global(self, layer: int) -> bool:
        return layer % self.sliding_window_pattern == self.sliding_window_pattern - 1


class RMSNorm(nn.Module):
    """RMS norm scaling by ``1 + weight`` (Gemma stores the offset from one)."""

    def __init__(self, dims: int, eps: float = 1e-6):
        super().__init__()
        self.weight = mx.ones((dims,))
        self.eps = eps

    def __call__(self, x):
        return mx.fast.rms_norm(x, 1.0 + self.weight, self.eps)


def block(args: ModelArgs, layer: int) -> TransformerBlock:
    """Layer ``layer``: a sliding layer rotates with its own base and no scaling, a global one as
    configured."""
    if args.is_global(layer):
        rope = default_rope(args)
    else:
        rope = initialize_rope(args.head_dim, args.rope_local_base_freq, False)
    attention = Attention(args, rope, qk_norm=RMSNorm, scale=args.query_pre_attn_scalar ** -0.5)
    return TransformerBlock(args, attention, MLP(args, activation=nn.gelu_approx), norm=RMSNorm, sandwich=True)


class Gemma3Model(Decoder):
    def __init__(self, args: ModelArgs):
        super().__init__(args, lambda i: block(args, i), norm=RMSNorm)
        self.args = args

    def embed(self, inputs):
        # Scaled in the table's dtype, as the reference does, then float32 like the other models.
        h = self.embed_tokens(inputs)
        return (h * mx.array(self.args.hidden_size ** 0.5, mx.bfloat16).astype(h.dtype)).astype(mx.float32)

    def layer_masks(self, h, cache):
        global_mask = create_attention_mask(h, cache)
        window_mask = create_attention_mask(h, cache, window_size=self.args.sliding_window)
        return [global_mask if self.args.is_global(i) else window_mask for i in range(len(self.layers))]


class Model(CausalLM):
    def __init__(self, args: ModelArgs):
        super().__init__(args, Gemma3Model(args))

    def sanitize(self, weights: dict) -> dict:
        if "lm_head.weight" not in weights and not self.args.tie_word_embeddings:
            self.args.tie_word_embeddings = True
            self.pop("lm_head")
        return weights


@dataclass
class MultimodalArgs:
    """A multimodal Gemma 3 config: the language model's settings are under ``text_config``."""
    text_config: dict
    vocab_size: int = 262208
    model_type: str = "gemma3"

    def text_args(self) -> ModelArgs:
        config = dict(self.text_config, vocab_size=self.vocab_size)
        config.setdefault("num_attention_heads", 8)
        config.setdefault("num_key_value_heads", 4)
        fields = ModelArgs.__dataclass_fields__
        return ModelArgs(**{k: v for k, v in config.items() if k in fields and k != "model_type"})


class MultimodalModel(nn.Module):
    """The text part of a multimodal Gemma 3 checkpoint (vision weights are dropped)."""

    def __init__(self, args: MultimodalArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.language_model = Model(args.text_args())

    def __call__(self, inputs, cache=None):
        return self.language_model(inputs, cache)

    def sanitize(self, weights: dict) -> dict:
        prefix = "language_model."
        text = self.language_model.sanitize({k[len(prefix):]: v for k, v in weights.items()
                                             if k.startswith(prefix)})
        vision = ("vision_tower.", "multi_modal_projector.")
        other = {k: v for k, v in weights.items() if not k.startswith((prefix,) + vision)}
        return {**other, **{prefix + k: v for k, v in text.items()}}

    # What generation and the cache ask of a model, answered by the language model.
    layers = property(lambda self: self.language_model.layers)
    head_dim = property(lambda self: self.language_model.head_dim)
    n_kv_heads = property(lambda self: self.language_model.n_kv_heads)
