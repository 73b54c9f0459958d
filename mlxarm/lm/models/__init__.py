"""Model architectures by GGUF/``config.json`` name, and the key/value cache they share."""
from . import llama

ARCHITECTURES = {"llama": llama}
