"""Building a model from a GGUF file: metadata -> architecture config, GGUF tensor names -> the
model's parameter names, quantized tensors handed to quantized layers as they are stored."""
from __future__ import annotations

import os
import re

import mlxarm.core as mx
import mlxarm.nn as nn

from .models import ARCHITECTURES

_LAYER_TENSORS = {  # GGUF per-block tensor -> parameter path inside model.layers[N]
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                   "output": "lm_head"}
_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|scales|biases|bias)$")
_GLOBAL = re.compile(r"(\w+)\.(weight|scales|biases|bias)$")


class ModelLoadError(ValueError):
    """A model file that loads but does not describe a model we can build."""


def _scalar(metadata: dict, key: str, path: str, default=None):
    if key not in metadata:
        if default is not None:
            return default
        raise ModelLoadError(f"GGUF file {path} lacks the metadata key '{key}'")
    value = metadata[key]
    return value.item() if hasattr(value, "item") else value


def model_args_from_gguf(metadata: dict, path: str = "<gguf>", has_output: bool = False):
    """The architecture's ``ModelArgs`` from GGUF metadata (llama.cpp's key names)."""
    arch = metadata.get("general.architecture")
    if arch is None:
        raise ModelLoadError(f"GGUF file {path} lacks the metadata key 'general.architecture'")
    if arch not in ARCHITECTURES:
        raise ModelLoadError(f"GGUF file {path} has model architecture '{arch}', which is not "
                             f"supported (supported: {', '.join(sorted(ARCHITECTURES))})")
    scaling = metadata.get(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none",):
        raise ModelLoadError(f"GGUF file {path} uses rope scaling '{scaling}', which is not supported")

    def get(key, default=None):
        return _scalar(metadata, f"{arch}.{key}", path, default)

    heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab = get("vocab_size", len(tokens) if tokens else None)
    return ARCHITECTURES[arch].ModelArgs(
        model_type=arch,
        hidden_size=hidden,
        num_hidden_layers=int(get("block_count")),
        intermediate_size=int(get("feed_forward_length")),
        num_attention_heads=heads,
        num_key_value_heads=int(get("attention.head_count_kv", heads)),
        vocab_size=int(vocab) if vocab is not None else int(get("vocab_size")),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        head_dim=int(get("attention.key_length", hidden // heads)),
        max_position_embeddings=int(get("context_length", 2048)),
        tie_word_embeddings=not has_output,
        rope_traditional=True,
    )


def _parameter_name(gguf_name: str, path: str) -> str:
    m = _BLOCK.match(gguf_name)
    if m:
        block, tensor, kind = m.groups()
        if tensor not in _LAYER_TENSORS:
            raise ModelLoadError(f"GGUF file {path} has tensor '{gguf_name}', unknown to this architecture")
        return f"model.layers.{block}.{_LAYER_TENSORS[tensor]}.{kind}"
    m = _GLOBAL.match(gguf_name)
    if m and m.group(1) in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[m.group(1)]}.{m.group(2)}"
    raise ModelLoadError(f"GGUF file {path} has tensor '{gguf_name}', unknown to this architecture")


def _quantization(weights: dict, prefix: str, in_dims: int):
    """(group_size, bits) of a packed weight from its shapes, as MLX's GGUF loader lays it out."""
    packed, scales = weights[f"{prefix}.weight"], weights[f"{prefix}.scales"]
    return {"group_size": in_dims // scales.shape[-1], "bits": packed.shape[-1] * 32 // in_dims}


def load_gguf(path: str):
    """(model, metadata) from a GGUF file; quantized tensors stay quantized."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No GGUF model file at {path}")
    weights, metadata = mx.load(path, return_metadata=True)
    if not isinstance(metadata, dict) or not metadata:
        raise ModelLoadError(f"{path} is not a GGUF model file (no metadata)")
    args = model_args_from_gguf(metadata, path, has_output="output.weight" in weights)
    arch = ARCHITECTURES[args.model_type]
    weights = {_parameter_name(k, path): v for k, v in weights.items()}

    expected = {"model.embed_tokens.weight", "model.norm.weight"}
    for i in range(args.num_hidden_layers):
        expected.update(f"model.layers.{i}.{p}.weight" for p in _LAYER_TENSORS.values())
    missing = sorted(expected - weights.keys(), key=_natural)
    if missing:
        raise ModelLoadError(f"GGUF file {path} lacks the tensors {', '.join(missing[:4])}"
                             + (f" and {len(missing) - 4} more" if len(missing) > 4 else ""))

    model = arch.Model(args)
    dims = _input_dims(model)

    def quantized(module_path, module):
        if f"{module_path}.scales" not in weights:
            return False
        return _quantization(weights, module_path, dims[module_path])

    nn.quantize(model, class_predicate=quantized)
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as problem:
        raise ModelLoadError(f"GGUF file {path} does not match its declared configuration: {problem}") from None
    model.eval()
    return model, metadata


def _input_dims(model) -> dict:
    dims = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            dims[name] = module.weight.shape[1]
        elif isinstance(module, nn.Embedding):
            dims[name] = module.weight.shape[1]
    return dims


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
