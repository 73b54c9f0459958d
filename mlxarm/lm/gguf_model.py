"""Building a model from a GGUF file: llama.cpp's metadata keys -> the architecture's ``ModelArgs``,
llama.cpp's tensor names -> mlx-lm's parameter names, and the conventions llama.cpp changes on
conversion undone (Gemma's norms stored as ``1 + weight``; Llama 3.1's and Phi-3's rotary scaling
stored as factor tensors, read back as ``rope_scaling``). Block-quantized tensors, K-quants
included, reach quantized layers packed as they are stored (``mlxarm.core.gguf.load_quantized``).

Llama's query/key rows stay in llama.cpp's permuted order (rotation pairs adjacent), which the
traditional rotation reads correctly; ``convert.py`` restores Hugging Face's order for MLX folders."""
from __future__ import annotations

import os
import re

import numpy as np

import mlxarm.core as mx
import mlxarm.nn as nn
from mlxarm.core.gguf import load_quantized
from mlxarm.utils import tree_flatten

from .models import ARCHITECTURES

# GGUF architecture -> config model_type of the module that builds it.
GGUF_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3_text",
                      "phi3": "phi3"}

_BLOCK_TENSORS = {  # GGUF per-block tensor -> parameter path inside model.layers[N]
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_QK_NORM = {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
_ARCH_BLOCK_TENSORS = {
    "llama": _BLOCK_TENSORS,
    "qwen2": _BLOCK_TENSORS,
    "qwen3": {**_BLOCK_TENSORS, **_QK_NORM},
    # Gemma 3 norms both sides of attention and of the MLP; llama.cpp's "ffn_norm" is the one before.
    "gemma3": {**_BLOCK_TENSORS, **_QK_NORM, "ffn_norm": "pre_feedforward_layernorm",
               "post_attention_norm": "post_attention_layernorm",
               "post_ffw_norm": "post_feedforward_layernorm"},
    # Phi-3 keeps its fused projections; llama.cpp's "ffn_up" holds gate and up stacked.
    "phi3": {"attn_norm": "input_layernorm", "attn_qkv": "self_attn.qkv_proj",
             "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
             "ffn_up": "mlp.gate_up_proj", "ffn_down": "mlp.down_proj"},
}
_GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# Rotary factor tensors outside the architecture that reads them (Llama 3.1's, Phi-3's).
_UNSUPPORTED_TENSORS = {"rope_freqs": "rotary frequency factors (rope_freqs)",
                        "rope_factors_long": "long-context rotary factors (rope_factors_long)",
                        "rope_factors_short": "long-context rotary factors (rope_factors_short)"}
MLX_GROUP_SIZES = (32, 64, 128)  # what mx.quantize, so MLX's and mlx-lm's quantized layers, take
_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|scales|biases|bias)$")
_GLOBAL = re.compile(r"(\w+)\.(weight|scales|biases|bias)$")


class ModelLoadError(ValueError):
    """A model file or folder that does not describe a model we can build."""


def _scalar(metadata: dict, key: str, path: str, default=None):
    if key not in metadata:
        if default is not None:
            return default
        raise ModelLoadError(f"GGUF file {path} lacks the metadata key '{key}'")
    value = metadata[key]
    if hasattr(value, "dtype") and value.dtype == mx.float32:
        # Float metadata is float32: its shortest decimal form gives back the configured 1e-05.
        return float(str(np.float32(value.item())))
    return value.item() if hasattr(value, "item") else value


def gguf_architecture(metadata: dict, path: str = "<gguf>") -> str:
    """The GGUF ``general.architecture``, checked to be one we build."""
    arch = metadata.get("general.architecture")
    if arch is None:
        raise ModelLoadError(f"GGUF file {path} lacks the metadata key 'general.architecture'")
    if arch not in GGUF_ARCHITECTURES:
        raise ModelLoadError(f"GGUF file {path} has model architecture '{arch}', which is not "
                             f"supported (supported: {', '.join(sorted(GGUF_ARCHITECTURES))})")
    return arch


def model_args_from_gguf(metadata: dict, path: str = "<gguf>", has_output: bool = False):
    """The architecture's ``ModelArgs`` from GGUF metadata (llama.cpp's key names)."""
    arch = gguf_architecture(metadata, path)

    def get(key, default=None):
        return _scalar(metadata, f"{arch}.{key}", path, default)

    scaling_type = get("rope.scaling.type", "none")
    if scaling_type == "none":
        scaling = None
    elif scaling_type == "linear":
        scaling = {"type": "linear", "factor": float(get("rope.scaling.factor"))}
    else:
        raise ModelLoadError(f"GGUF file {path} uses rope scaling '{scaling_type}', which is not supported "
                             "(supported: none, linear)")
    heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    head_dim = int(get("attention.key_length", hidden // heads))
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab = get("vocab_size", len(tokens) if tokens else None)
    common = dict(
        hidden_size=hidden,
        num_hidden_layers=int(get("block_count")),
        intermediate_size=int(get("feed_forward_length")),
        num_attention_heads=heads,
        num_key_value_heads=int(get("attention.head_count_kv", heads)),
        vocab_size=int(vocab) if vocab is not None else int(get("vocab_size")),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        max_position_embeddings=int(get("context_length", 2048)),
        tie_word_embeddings=not has_output,
    )
    model_type = GGUF_ARCHITECTURES[arch]
    module = ARCHITECTURES[model_type]
    if arch == "llama":
        return module.ModelArgs(**common, model_type=model_type, head_dim=head_dim, rope_scaling=scaling,
                                rope_traditional=True)
    if arch == "qwen2":
        return module.ModelArgs(**common, model_type=model_type, rope_scaling=scaling)
    if arch == "qwen3":
        return module.ModelArgs(**common, model_type=model_type, head_dim=head_dim, rope_scaling=scaling)
    if arch == "gemma3":
        layers = common["num_hidden_layers"]
        return module.ModelArgs(
            **common, model_type=model_type, head_dim=head_dim, rope_scaling=scaling,
            sliding_window=int(get("attention.sliding_window")),
            # llama.cpp fixes these for Gemma 3 (newer files may state them).
            sliding_window_pattern=int(get("attention.sliding_window_pattern", 6)),
            rope_local_base_freq=float(get("rope.freq_base_swa", 10000.0)),
            # Gemma 3 27B (62 layers) scales queries by hidden/heads rather than the head size.
            query_pre_attn_scalar=float(hidden // heads if layers == 62 else head_dim))
    # phi3
    rotary = int(get("rope.dimension_count", head_dim))
    original = int(get("rope.scaling.original_context_length", common["max_position_embeddings"]))
    return module.ModelArgs(**common, model_type=model_type, rope_scaling=scaling,
                            partial_rotary_factor=rotary / head_dim, original_max_position_embeddings=original)


def parameter_name(gguf_name: str, arch: str, path: str = "<gguf>") -> str:
    """The mlx-lm parameter name of GGUF tensor ``gguf_name`` in architecture ``arch``."""
    m = _BLOCK.match(gguf_name)
    if m:
        block, tensor, kind = m.groups()
        table = _ARCH_BLOCK_TENSORS[arch]
        if tensor in table:
            return f"model.layers.{block}.{table[tensor]}.{kind}"
    m = _GLOBAL.match(gguf_name)
    if m and m.group(1) in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[m.group(1)]}.{m.group(2)}"
    if m and m.group(1) in _UNSUPPORTED_TENSORS:
        raise ModelLoadError(f"GGUF file {path} has {_UNSUPPORTED_TENSORS[m.group(1)]}, which are not supported")
    raise ModelLoadError(f"GGUF file {path} has tensor '{gguf_name}', unknown to the {arch} architecture")


def read_gguf(path: str, on_metadata=None):
    """(tensors, metadata, {tensor name: quantization}) of a GGUF file: block-quantized tensors
    (Q4_0 ... Q8_0 and the K-quants) stay packed as MLX affine triples. ``on_metadata(metadata)``
    runs once the metadata is read, before the tensors are."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No GGUF model file at {path}")

    def check(metadata):
        if not isinstance(metadata, dict) or not metadata:
            raise ModelLoadError(f"{path} is not a GGUF model file (no metadata)")
        if on_metadata is not None:
            on_metadata(metadata)

    return load_quantized(path, on_metadata=check)


def mlx_weights_from_gguf(weights: dict, metadata: dict, path: str = "<gguf>", quantization: dict = None):
    """(ModelArgs, weights under mlx-lm's parameter names, {layer path: quantization}) from a GGUF
    file's tensors, metadata and per-tensor quantization (``read_gguf``)."""
    arch = gguf_architecture(metadata, path)
    args = model_args_from_gguf(metadata, path, has_output="output.weight" in weights)
    if arch == "llama" and "rope_freqs.weight" in weights:
        weights = dict(weights)
        args.rope_scaling = _llama3_scaling(weights.pop("rope_freqs.weight"), args, path)
    if arch == "phi3" and "rope_factors_long.weight" in weights:
        # Phi-3's longrope: mlx-lm rotates with the long factors at every length.
        weights = dict(weights)
        long = weights.pop("rope_factors_long.weight")
        short = weights.pop("rope_factors_short.weight", long)
        args.rope_scaling = {"type": "longrope", "long_factor": _floats(long), "short_factor": _floats(short)}
    renamed = {parameter_name(k, arch, path): v for k, v in weights.items()}
    if arch == "gemma3":
        # llama.cpp stores Gemma's norm weights with the 1 of ``1 + weight`` already added.
        renamed = {k: (v.astype(mx.float32) - 1 if k.endswith("norm.weight") else v)
                   for k, v in renamed.items()}
    layers = {parameter_name(k, arch, path)[:-len(".weight")]: q for k, q in (quantization or {}).items()}
    return args, renamed, layers


def _floats(a) -> list:
    """A float32 vector as the decimal floats a config would list."""
    return [float(str(v)) for v in np.asarray(a.astype(mx.float32), dtype=np.float32)]


def _llama3_scaling(rope_freqs, args, path: str) -> dict:
    """The Llama 3.1 ``rope_scaling`` whose per-frequency factors llama.cpp stored as
    ``rope_freqs``: the stretch is the largest factor; the other settings are the ones every
    Llama 3.x release uses, checked against the stored factors."""
    factors = np.asarray(rope_freqs.astype(mx.float32), dtype=np.float64)
    scaling = {"rope_type": "llama3", "factor": float(str(np.float32(factors.max()))),
               "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    dims = args.head_dim
    wavelens = 2 * np.pi * args.rope_theta ** (np.arange(0, dims, 2) / dims)
    old = scaling["original_max_position_embeddings"]
    smooth = (old / wavelens - 1.0) / (4.0 - 1.0)
    expected = np.where(wavelens < old / 4.0, 1.0, np.where(
        wavelens > old / 1.0, scaling["factor"], 1 / ((1 - smooth) / scaling["factor"] + smooth)))
    if factors.shape != expected.shape or not np.allclose(factors, expected, rtol=1e-3):
        raise ModelLoadError(f"GGUF file {path} has rotary frequency factors (rope_freqs) that are not "
                             "Llama 3's scaling, which is the only one supported")
    return scaling


def build_model(args, weights: dict, source: str, quantization=None, origin: dict = None):
    """``Model(args)`` holding ``weights``: layers whose weights come with ``scales`` become quantized
    layers (with ``quantization(path)``'s settings, or settings read off the packed shapes), and
    missing, extra or misshapen weights raise ``ModelLoadError`` naming ``source`` (or the file
    ``origin`` names for the weight)."""
    origin = origin or {}
    model = ARCHITECTURES[args.model_type].Model(args)
    if hasattr(model, "sanitize"):
        weights = model.sanitize(weights)
    expected = {k for k, _ in tree_flatten(model.parameters())}
    missing = sorted(expected - weights.keys(), key=_natural)
    if missing:
        raise ModelLoadError(f"{source} lacks the weights {', '.join(missing[:4])}"
                             + (f" and {len(missing) - 4} more" if len(missing) > 4 else ""))
    dims = input_dims(model)
    quantization = quantization or (lambda p: packed_quantization(weights, p, dims[p]))
    wanted = {}

    def quantized(module_path, module):
        if f"{module_path}.scales" not in weights or module_path not in dims:
            return False
        wanted[module_path] = settings = quantization(module_path)
        if not settings:
            return False
        if settings["group_size"] not in MLX_GROUP_SIZES:
            return dict(settings, group_size=MLX_GROUP_SIZES[0])  # resized below
        return settings

    nn.quantize(model, class_predicate=quantized)
    # A quantized layer starts from ``mx.quantize`` of a random matrix, which takes MLX's group
    # sizes only; a smaller one (Q6_K's 16) is set afterwards: the quantized kernels take any size.
    for module_path, module in model.named_modules():
        group_size = (wanted.get(module_path) or {}).get("group_size")
        if group_size is not None and group_size != module.group_size:
            groups = module.scales.shape[-1] * module.group_size // group_size
            module.scales = mx.zeros(module.scales.shape[:-1] + (groups,), module.scales.dtype)
            module.biases = mx.zeros(module.biases.shape[:-1] + (groups,), module.biases.dtype)
            module.group_size = group_size
    extra = sorted(weights.keys() - {k for k, _ in tree_flatten(model.parameters())}, key=_natural)
    if extra:
        raise ModelLoadError(f"{source} has weights the {args.model_type} model does not use: "
                             f"{', '.join(extra[:4])}" + (f" and {len(extra) - 4} more" if len(extra) > 4 else ""))
    for name, param in tree_flatten(model.parameters()):
        if tuple(weights[name].shape) != tuple(param.shape):
            raise ModelLoadError(f"{origin.get(name, source)}: weight '{name}' has shape "
                                 f"{tuple(weights[name].shape)}, but the configuration needs {tuple(param.shape)}")
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as problem:
        raise ModelLoadError(f"{source} does not match its declared configuration: {problem}") from None
    model.eval()
    return model


def packed_quantization(weights: dict, prefix: str, in_dims: int) -> dict:
    """(group_size, bits) of a packed weight from its shapes."""
    packed, scales = weights[f"{prefix}.weight"], weights[f"{prefix}.scales"]
    return {"group_size": in_dims // scales.shape[-1], "bits": packed.shape[-1] * 32 // in_dims}


def load_gguf(path: str, on_metadata=None):
    """(model, metadata) from a GGUF file; quantized tensors stay quantized. ``on_metadata(metadata)``
    runs once the metadata is read, before the tensors are."""
    weights, metadata, quantization = read_gguf(path, on_metadata)
    args, weights, layers = mlx_weights_from_gguf(weights, metadata, path, quantization)
    return build_model(args, weights, f"GGUF file {path}", layers.__getitem__), metadata


def input_dims(model) -> dict:
    dims = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            dims[name] = module.weight.shape[1]
    return dims


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
