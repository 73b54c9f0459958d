"""``Sequential``: calls its modules (or callables) in order."""
from .base import Module


class Sequential(Module):
    """Applies ``modules`` one after the other; they are kept in ``self.layers``."""

    def __init__(self, *modules):
        super().__init__()
        self.layers = list(modules)

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x
