"""Model architectures by ``config.json`` ``model_type`` (mlx-lm's names), each an object with
``ModelArgs`` and ``Model`` (GGUF architecture names map onto these in ``gguf_model.py``), and what
they share: the transformer they are all variants of (``transformer.py``), masks and the attention
call (``base.py``), the key/value cache (``cache.py``) and rotary embeddings (``rope.py``)."""
from types import SimpleNamespace

from . import gemma3, llama, phi3, qwen2, qwen3

ARCHITECTURES = {
    "llama": llama,
    "mistral": llama,  # mlx-lm maps Mistral configs onto its Llama model
    "qwen2": qwen2,
    "qwen3": qwen3,
    "gemma3_text": gemma3,
    "gemma3": SimpleNamespace(ModelArgs=gemma3.MultimodalArgs, Model=gemma3.MultimodalModel),
    "phi3": phi3,
}
