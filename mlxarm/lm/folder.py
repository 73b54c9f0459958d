"""Loading MLX-format model folders as mlx-lm writes them: ``config.json`` (``model_type`` picks the
architecture; a ``quantization`` block with per-layer overrides marks quantized layers) and the
weights in ``model*.safetensors`` (listed by ``model.safetensors.index.json`` when there is one)."""
from __future__ import annotations

import dataclasses
import glob
import json
import os

import mlxarm.core as mx

from .gguf_model import ModelLoadError, build_model
from .models import ARCHITECTURES

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"


def load_config(folder: str) -> dict:
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(path):
        raise ModelLoadError(f"model folder {folder} has no {CONFIG_FILE}")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as problem:
        raise ModelLoadError(f"{path} is not a readable JSON file: {problem}") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path} does not hold a JSON object")
    return config


def model_args(config: dict, config_path: str = CONFIG_FILE):
    """The architecture's ``ModelArgs`` from a config: keys it does not know are ignored, as
    mlx-lm's ``from_dict`` does."""
    model_type = config.get("model_type")
    if model_type is None:
        raise ModelLoadError(f"{config_path} has no 'model_type'")
    if model_type not in ARCHITECTURES:
        raise ModelLoadError(f"{config_path} has model_type '{model_type}', which is not supported "
                             f"(supported: {', '.join(sorted(ARCHITECTURES))})")
    cls = ARCHITECTURES[model_type].ModelArgs
    fields = {f.name: f for f in dataclasses.fields(cls)}
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    absent = [n for n in required if n not in config]
    if absent:
        raise ModelLoadError(f"{config_path} lacks {', '.join(repr(n) for n in absent)}, which "
                             f"model_type '{model_type}' needs")
    try:
        return cls(**{k: v for k, v in config.items() if k in fields})
    except (TypeError, ValueError, KeyError) as problem:
        raise ModelLoadError(f"{config_path} does not describe a valid {model_type} model: {problem}") from None


def weight_files(folder: str) -> list:
    """The safetensors files holding the model's weights."""
    index = os.path.join(folder, INDEX_FILE)
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as problem:
            raise ModelLoadError(f"{index} is not a safetensors index (needs a 'weight_map'): {problem}") from None
        files = [os.path.join(folder, n) for n in names]
        for path in files:
            if not os.path.isfile(path):
                raise ModelLoadError(f"{index} lists {os.path.basename(path)}, which is not in {folder}")
        return files
    files = sorted(glob.glob(os.path.join(folder, "model*.safetensors")))
    if not files:
        raise ModelLoadError(f"model folder {folder} has no model*.safetensors weight file")
    return files


def load_weights(folder: str):
    """(weights by name, the file each came from)."""
    weights, origin = {}, {}
    for path in weight_files(folder):
        try:
            arrays = mx.load(path)
        except (ValueError, RuntimeError, OSError) as problem:
            raise ModelLoadError(f"{path} is not a readable safetensors file: {problem}") from None
        for name, value in arrays.items():
            if name in weights:
                raise ModelLoadError(f"{path} and {origin[name]} both hold the weight '{name}'")
            weights[name] = value
            origin[name] = path
    return weights, origin


def load_model(folder: str):
    """(model, config) from an MLX-format model folder."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"No model folder at {folder}")
    config = load_config(folder)
    config_path = os.path.join(folder, CONFIG_FILE)
    args = model_args(config, config_path)
    weights, origin = load_weights(folder)
    quantization = config.get("quantization")
    other = config.get("quantization_config")
    if quantization is None and isinstance(other, dict) and "quant_method" in other:
        raise ModelLoadError(f"{config_path}: quantization method '{other['quant_method']}' is not "
                             "supported (MLX's own quantization is)")
    settings = None
    if quantization is not None:
        if not isinstance(quantization, dict) or not {"group_size", "bits"} <= quantization.keys():
            raise ModelLoadError(f"{config_path}: 'quantization' needs 'group_size' and 'bits'")
        default = {"group_size": quantization["group_size"], "bits": quantization["bits"],
                   "mode": quantization.get("mode", "affine")}

        def settings(path):
            # mlx-lm writes per-layer choices under the layer's path: a dict of settings or false.
            override = quantization.get(path, True)
            return default if override is True else override

    model = build_model(args, weights, f"model folder {folder}", settings, origin)
    return model, config
