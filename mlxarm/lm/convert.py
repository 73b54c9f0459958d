"""``mlxarm-lm convert``: a GGUF file (or a Hugging Face / MLX model folder) to an MLX-format folder
that mlx-lm loads as it loads its own (``config.json`` with mlx-lm's keys and ``model_type``,
``model.safetensors``, a ``quantization`` block when layers are quantized, the tokenizer files).

Llama's query/key rows go back to Hugging Face's order (llama.cpp permutes them), so the folder
uses the default, non-traditional rotation as every mlx-lm Llama folder does. Layers stored
quantized in the GGUF file stay as they are unless ``-q`` asks for a new quantization."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from collections import Counter

import mlxarm.core as mx
import mlxarm.nn as nn
from mlxarm.utils import tree_flatten, tree_map

from .gguf_model import MLX_GROUP_SIZES, build_model, mlx_weights_from_gguf, read_gguf
from .folder import load_model

DTYPES = {"float16": mx.float16, "bfloat16": mx.bfloat16, "float32": mx.float32}
# What a model folder's tokenizer consists of, copied as it is when converting a folder.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "generation_config.json", "tokenizer.model", "vocab.json", "merges.txt")


def _unpermute_rows(w, n_heads: int):
    """Hugging Face's row order from llama.cpp's (which interleaves each head's two halves)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _from_gguf(path: str, dequantize: bool):
    """(model, config, GGUF metadata) of a GGUF file, in the layout MLX folders use."""
    weights, metadata, quantization = read_gguf(path)
    args, weights, layers = mlx_weights_from_gguf(weights, metadata, path, quantization)
    if args.model_type == "llama":
        for name, heads in (("q_proj", args.num_attention_heads), ("k_proj", args.num_key_value_heads)):
            for i in range(args.num_hidden_layers):
                for kind in ("weight", "scales", "biases"):
                    key = f"model.layers.{i}.self_attn.{name}.{kind}"
                    if key in weights:
                        weights[key] = _unpermute_rows(weights[key], heads)
        args.rope_traditional = False
    for prefix, settings in list(layers.items()):
        # A new quantization starts from the float values; MLX's layers (so mlx-lm) take group
        # sizes 32-128 only, so Q6_K's 16-weight groups become float16, as MLX's own loader does.
        if dequantize or settings["group_size"] not in MLX_GROUP_SIZES:
            w, s, b = (weights.pop(f"{prefix}.{k}") for k in ("weight", "scales", "biases"))
            values = mx.dequantize(w, s.astype(mx.float32), b.astype(mx.float32), **settings)
            weights[f"{prefix}.weight"] = values if dequantize else values.astype(mx.float16)
            del layers[prefix]
    model = build_model(args, weights, f"GGUF file {path}", layers.__getitem__)
    config = {k: v for k, v in dataclasses.asdict(model.args).items() if v is not None}
    for key in ("bos_token_id", "eos_token_id"):  # mlx-lm reads the end-of-sequence id from here
        value = metadata.get(f"tokenizer.ggml.{key}")
        if value is not None:
            config[key] = int(value.item())
    return model, config, metadata


def convert(model_path: str, mlx_path: str, quantize: bool = False, q_bits: int = 4,
            q_group_size: int = 64, dtype: str = None) -> dict:
    """Write the MLX folder ``mlx_path`` for ``model_path``, a GGUF file or a model folder
    (``config.json`` and safetensors, as Hugging Face and mlx-lm write them); returns its config."""
    if not os.path.exists(model_path):
        raise FileNotFoundError(f"No model file or folder at {model_path}")
    if os.path.exists(mlx_path):
        raise FileExistsError(f"Cannot save to the path {mlx_path} as it already exists")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype '{dtype}' is not one of {', '.join(DTYPES)}")
    metadata = None
    if os.path.isdir(model_path):
        model, config = load_model(model_path)
        config = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
        if quantize and _quantization_config(model):
            raise ValueError(f"{model_path} is already quantized; -q needs a model with float weights")
    else:
        model, config, metadata = _from_gguf(model_path, dequantize=quantize)

    if dtype is not None:
        model.update(tree_map(lambda v: v.astype(DTYPES[dtype]) if mx.issubdtype(v.dtype, mx.floating) else v,
                              model.parameters()))
    if quantize:
        # As mlx-lm does: every layer that can be quantized, unless its rows don't split into groups.
        nn.quantize(model, q_group_size, q_bits, class_predicate=lambda p, m: hasattr(m, "to_quantized")
                    and m.weight.shape[-1] % q_group_size == 0)
    quantization = _quantization_config(model)
    if quantization:
        config["quantization"] = quantization
        config["quantization_config"] = quantization  # the key Hugging Face tools read

    os.makedirs(mlx_path)
    mx.save_safetensors(os.path.join(mlx_path, "model.safetensors"), dict(tree_flatten(model.parameters())),
                        metadata={"format": "mlx"})
    with open(os.path.join(mlx_path, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=4, sort_keys=True)
    if metadata is not None:
        _save_tokenizer(metadata, model_path, mlx_path)
    else:
        for name in TOKENIZER_FILES:
            if os.path.isfile(os.path.join(model_path, name)):
                shutil.copy(os.path.join(model_path, name), mlx_path)
    return config


def _quantization_config(model):
    """mlx-lm's ``quantization`` block: the commonest (group_size, bits) and per-layer overrides."""
    layers = {name: (m.group_size, m.bits) for name, m in model.named_modules()
              if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))}
    if not layers:
        return None
    (group_size, bits), _ = Counter(layers.values()).most_common(1)[0]
    block = {"group_size": group_size, "bits": bits, "mode": "affine"}
    for name, (g, b) in sorted(layers.items()):
        if (g, b) != (group_size, bits):
            block[name] = {"group_size": g, "bits": b}
    return block


def _save_tokenizer(metadata: dict, gguf_path: str, folder: str) -> None:
    """tokenizer.json and its companions, from the GGUF file's tokenizer (when it has one)."""
    from .tokenizer import TokenizerError, tokenizer_from_gguf

    try:
        tokenizer = tokenizer_from_gguf(metadata, gguf_path)
    except TokenizerError as problem:
        print(f"mlxarm-lm convert: no tokenizer files written: {problem}", file=sys.stderr)
        return
    tokenizer.save_pretrained(folder)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlxarm-lm convert",
                                     description="Convert a GGUF model file or a Hugging Face model folder "
                                                 "to an MLX-format folder, quantizing it if asked.")
    parser.add_argument("--model", default=None,
                        help="the GGUF file, or model folder (config.json and safetensors), to convert "
                             "(default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--mlx-path", default="mlx_model", help="the folder to write (must not exist)")
    parser.add_argument("-q", "--quantize", action="store_true", help="quantize the model's layers")
    parser.add_argument("--q-bits", type=int, default=4, help="bits per weight when quantizing")
    parser.add_argument("--q-group-size", type=int, default=64, help="weights per scale when quantizing")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="type of the float weights (default: as stored)")
    return parser


def main(argv=None) -> int:
    options = _parser().parse_args(argv)
    try:
        if options.model is None:
            from . import default_model_path

            options.model = default_model_path()
        convert(options.model, options.mlx_path, options.quantize, options.q_bits, options.q_group_size,
                options.dtype)
    except (FileNotFoundError, FileExistsError, ValueError) as problem:
        print(f"mlxarm-lm convert: {problem}", file=sys.stderr)
        return 1
    return 0
