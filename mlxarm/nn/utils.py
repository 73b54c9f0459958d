"""``nn`` helpers that bind function transforms to a module's parameters: ``value_and_grad`` and
``checkpoint``."""
from __future__ import annotations

from functools import wraps
from typing import Callable, Optional

import mlxarm.core as mx

from .layers.base import Module


def value_and_grad(model: Module, fn: Callable):
    """Transform ``fn`` into one that also returns the gradient of its (first) output with respect
    to ``model.trainable_parameters()``; ``fn`` is called with the model updated to them."""

    def with_parameters(params, *args, **kwargs):
        model.update(params)
        return fn(*args, **kwargs)

    value_and_grad_fn = mx.value_and_grad(with_parameters)

    @wraps(fn)
    def wrapped(*args, **kwargs):
        return value_and_grad_fn(model.trainable_parameters(), *args, **kwargs)

    return wrapped


def checkpoint(module: Module, fn: Optional[Callable] = None):
    """Recompute ``fn`` (by default the module's ``__call__``) in the backward pass instead of
    keeping its intermediates."""
    if fn is None:
        fn = module.__call__

    def with_parameters(params, *args, **kwargs):
        module.update(params)
        return fn(*args, **kwargs)

    checkpointed = mx.checkpoint(with_parameters)

    @wraps(fn)
    def wrapped(*args, **kwargs):
        return checkpointed(module.trainable_parameters(), *args, **kwargs)

    return wrapped
