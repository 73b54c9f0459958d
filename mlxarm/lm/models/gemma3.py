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

from .base import create_attention_mask, scaled_dot_product_attention
from .rope import initialize_rope


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


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, layer: int):
        super().__init__()
        dim, head_dim = args.hidden_size, args.head_dim
        self.n_heads, self.n_kv_heads = args.num_attention_heads, args.num_key_value_heads
        self.scale = args.query_pre_attn_scalar ** -0.5
        self.q_proj = nn.Linear(dim, self.n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, self.n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, self.n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * head_dim, dim, bias=False)
        self.q_norm = RMSNorm(head_dim, eps=args.rms_norm_eps)
        self.k_norm = RMSNorm(head_dim, eps=args.rms_norm_eps)
        self.is_sliding = not args.is_global(layer)
        if self.is_sliding:
            self.rope = initialize_rope(head_dim, args.rope_local_base_freq, False)
        else:
            self.rope = initialize_rope(head_dim, args.rope_theta, False, args.rope_scaling,
                                        args.max_position_embeddings)

    def __call__(self, x, mask=None, cache=None):
        B, L, _ = x.shape
        q = self.q_norm(self.q_proj(x).reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3))
        k = self.k_norm(self.k_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3))
        v = self.v_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        if cache is not None:
            q = self.rope(q, offset=cache.offset)
            k = self.rope(k, offset=cache.offset)
            k, v = cache.update_and_fetch(k, v)
        else:
            q, k = self.rope(q), self.rope(k)
        out = scaled_dot_product_attention(q, k, v, cache, self.scale, mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)

    def __call__(self, x):
        return self.down_proj(nn.gelu_approx(self.gate_proj(x)) * self.up_proj(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, layer: int):
        super().__init__()
        eps = args.rms_norm_eps
        self.self_attn = Attention(args, layer)
        self.mlp = MLP(args.hidden_size, args.intermediate_size)
        self.input_layernorm = RMSNorm(args.hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, eps)
        self.pre_feedforward_layernorm = RMSNorm(args.hidden_size, eps)
        self.post_feedforward_layernorm = RMSNorm(args.hidden_size, eps)

    def __call__(self, x, mask=None, cache=None):
        # Activations are float32 here, so the float16 overflow clipping of the reference is moot.
        h = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), mask, cache))
        return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))


class Gemma3Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [TransformerBlock(args, i) for i in range(args.num_hidden_layers)]
        self.norm = RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, inputs, cache=None):
        # Scaled in the table's dtype, as the reference does, then float32 like the other models.
        h = self.embed_tokens(inputs)
        h = (h * mx.array(self.args.hidden_size ** 0.5, mx.bfloat16).astype(h.dtype)).astype(mx.float32)
        cache = cache if cache is not None else [None] * len(self.layers)
        # Every layer's cache holds the same positions, so one of them places both masks.
        global_mask = create_attention_mask(h, cache[0])
        window_mask = create_attention_mask(h, cache[0], window_size=self.args.sliding_window)
        for i, (layer, c) in enumerate(zip(self.layers, cache)):
            h = layer(h, global_mask if self.args.is_global(i) else window_mask, c)
        return self.norm(h)


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.model = Gemma3Model(args)
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def __call__(self, inputs, cache=None):
        out = self.model(inputs, cache)
        if self.args.tie_word_embeddings:
            return self.model.embed_tokens.as_linear(out)
        return self.lm_head(out)

    def sanitize(self, weights: dict) -> dict:
        if "lm_head.weight" not in weights and not self.args.tie_word_embeddings:
            self.args.tie_word_embeddings = True
            self.pop("lm_head")
        return weights

    @property
    def layers(self):
        return self.model.layers

    @property
    def head_dim(self):
        return self.args.head_dim

    @property
    def n_kv_heads(self):
        return self.args.num_key_value_heads


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

    @property
    def layers(self):
        return self.language_model.layers

    @property
    def head_dim(self):
        return self.language_model.head_dim

    @property
    def n_kv_heads(self):
        return self.language_model.n_kv_heads
