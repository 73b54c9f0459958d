"""The decoder-only transformer every architecture here is built from, with mlx-lm's module names so
its checkpoints load unchanged: grouped-query attention (separate or fused ``qkv_proj`` projections,
optional biases and per-head ``q_norm``/``k_norm``, any rotary embedding), the gated MLP (separate or
fused ``gate_up_proj``), the pre-norm block (optionally also normed after attention and the MLP, as
Gemma does), the decoder stack (``model``: ``embed_tokens``, ``layers``, ``norm``) and the causal LM
around it (``lm_head`` or the tied embedding table). An architecture's file holds its ``ModelArgs``
and chooses among these variants; the fields read here are mlx-lm's config names, which every
architecture's ``ModelArgs`` shares."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import mlxarm.core as mx
import mlxarm.nn as nn

from .base import create_attention_mask, scaled_dot_product_attention
from .rope import initialize_rope


@dataclass
class TransformerArgs:
    """The config fields (mlx-lm's names) every architecture's ``ModelArgs`` starts with; each adds
    its own after them."""
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int


def default_rope(args, base: Optional[float] = None, traditional: bool = False):
    """The rotary embedding of ``args.rope_scaling`` over whole heads (base ``args.rope_theta``
    unless given)."""
    return initialize_rope(args.head_dim, args.rope_theta if base is None else base, traditional,
                           args.rope_scaling, args.max_position_embeddings)


class Attention(nn.Module):
    """Attention of ``num_attention_heads`` query heads over ``num_key_value_heads`` key/value heads
    of ``head_dim``, rotated by ``rope`` at the cache's position. ``scale`` defaults to
    ``head_dim ** -0.5``; ``qk_norm`` is the norm class (dims, eps) applied to each query and key
    head before the rotation, if any."""

    def __init__(self, args, rope, *, bias: bool = False, fused_qkv: bool = False,
                 qk_norm: Optional[type] = None, scale: Optional[float] = None):
        super().__init__()
        dim, head_dim = args.hidden_size, args.head_dim
        self.n_heads, self.n_kv_heads = args.num_attention_heads, args.num_key_value_heads
        self.head_dim = head_dim
        self.scale = head_dim ** -0.5 if scale is None else scale
        q_dim, kv_dim = self.n_heads * head_dim, self.n_kv_heads * head_dim
        if fused_qkv:
            self.qkv_proj = nn.Linear(dim, q_dim + 2 * kv_dim, bias=bias)
        else:
            self.q_proj = nn.Linear(dim, q_dim, bias=bias)
            self.k_proj = nn.Linear(dim, kv_dim, bias=bias)
            self.v_proj = nn.Linear(dim, kv_dim, bias=bias)
        self.o_proj = nn.Linear(q_dim, dim, bias=False)
        if qk_norm is not None:
            self.q_norm = qk_norm(head_dim, eps=args.rms_norm_eps)
            self.k_norm = qk_norm(head_dim, eps=args.rms_norm_eps)
        self.rope = rope

    def _project(self, x):
        if "qkv_proj" in self:
            q_end = self.n_heads * self.head_dim
            return mx.split(self.qkv_proj(x), [q_end, q_end + self.n_kv_heads * self.head_dim], axis=-1)
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def __call__(self, x, mask=None, cache=None):
        B, L, _ = x.shape
        q, k, v = self._project(x)
        q = q.reshape(B, L, self.n_heads, -1)
        k = k.reshape(B, L, self.n_kv_heads, -1)
        if "q_norm" in self:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.transpose(0, 2, 1, 3)
        k = k.transpose(0, 2, 1, 3)
        v = v.reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        if cache is not None:
            q = self.rope(q, offset=cache.offset)
            k = self.rope(k, offset=cache.offset)
            k, v = cache.update_and_fetch(k, v)
        else:
            q, k = self.rope(q), self.rope(k)
        out = scaled_dot_product_attention(q, k, v, cache, self.scale, mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))


class MLP(nn.Module):
    """``down_proj(activation(gate) * up)`` over ``intermediate_size`` hidden units, gate and up
    from two projections or one fused ``gate_up_proj`` (gate first)."""

    def __init__(self, args, activation: Callable = nn.silu, fused: bool = False):
        super().__init__()
        dim, hidden_dim = args.hidden_size, args.intermediate_size
        if fused:
            self.gate_up_proj = nn.Linear(dim, 2 * hidden_dim, bias=False)
        else:
            self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
            self.up_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)
        self.activation = activation

    def __call__(self, x):
        if "gate_up_proj" in self:
            gate, up = mx.split(self.gate_up_proj(x), 2, axis=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(self.activation(gate) * up)


class TransformerBlock(nn.Module):
    """Residual attention then residual MLP, each on the normed input. With ``sandwich`` (Gemma)
    ``post_attention_layernorm`` norms the attention's output and two more norms wrap the MLP;
    without, ``post_attention_layernorm`` is the norm before the MLP."""

    def __init__(self, args, attention, mlp, norm: type = nn.RMSNorm, sandwich: bool = False):
        super().__init__()
        dim, eps = args.hidden_size, args.rms_norm_eps
        self.self_attn = attention
        self.mlp = mlp
        self.input_layernorm = norm(dim, eps=eps)
        self.post_attention_layernorm = norm(dim, eps=eps)
        self.sandwich = sandwich
        if sandwich:
            self.pre_feedforward_layernorm = norm(dim, eps=eps)
            self.post_feedforward_layernorm = norm(dim, eps=eps)

    def __call__(self, x, mask=None, cache=None):
        if self.sandwich:
            # Activations are float32 here, so the float16 overflow clipping of the reference is moot.
            h = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), mask, cache))
            return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))
        h = x + self.self_attn(self.input_layernorm(x), mask, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class Decoder(nn.Module):
    """Embedding, ``num_hidden_layers`` blocks (``block(i)`` builds layer ``i``) and the final norm.
    Subclasses change how tokens are embedded (``embed``) and which mask each layer gets
    (``layer_masks``)."""

    def __init__(self, args, block: Callable[[int], nn.Module], norm: type = nn.RMSNorm):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [block(i) for i in range(args.num_hidden_layers)]
        self.norm = norm(args.hidden_size, eps=args.rms_norm_eps)

    def embed(self, inputs):
        # Quantized tables dequantize to their scales' dtype (float16 in GGUF files); the
        # activations stay in float32 as the reference implementations compute them.
        return self.embed_tokens(inputs).astype(mx.float32)

    def layer_masks(self, h, cache):
        """One mask per layer for hidden states ``h`` at the position of ``cache`` (any layer's:
        every layer's cache holds the same positions)."""
        return [create_attention_mask(h, cache)] * len(self.layers)

    def __call__(self, inputs, cache=None):
        h = self.embed(inputs)
        cache = cache if cache is not None else [None] * len(self.layers)
        for layer, c, mask in zip(self.layers, cache, self.layer_masks(h, cache[0])):
            h = layer(h, mask, c)
        return self.norm(h)


class CausalLM(nn.Module):
    """The language model: the decoder (``model``) and its output head, a separate ``lm_head`` or,
    with ``tie_word_embeddings``, the embedding table itself."""

    def __init__(self, args, model: Decoder):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.model = model
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def __call__(self, inputs, cache=None):
        out = self.model(inputs, cache)
        if self.args.tie_word_embeddings:
            return self.model.embed_tokens.as_linear(out)
        return self.lm_head(out)

    def sanitize(self, weights: dict) -> dict:
        """Checkpoint names mlx-lm drops: the output head of a tied model."""
        if self.args.tie_word_embeddings:
            weights.pop("lm_head.weight", None)
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


def without_rotary_freqs(weights: dict) -> dict:
    """``weights`` without the precomputed rotary frequencies some checkpoints carry (mlx-lm drops
    them: the rotation computes its own)."""
    return {k: v for k, v in weights.items() if "self_attn.rotary_emb.inv_freq" not in k}
