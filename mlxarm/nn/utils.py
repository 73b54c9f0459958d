"""``nn`` helpers that bind function transforms to a module's parameters (``value_and_grad``,
``checkpoint``) and the gradient reductions of data-parallel training (``average_gradients``,
``clip_grad_norm_sharded``)."""
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


def average_gradients(gradients, group=None, all_reduce_size: int = 32 * 1024 ** 2, communication_stream=None):
    """``gradients`` averaged over the processes of ``group`` (the global group by default). mlxarm's
    groups hold one process, so the average is the gradients themselves; ``all_reduce_size`` (how
    many bytes to batch into one collective) has nothing to batch."""
    from ..utils import tree_map

    group = group or mx.distributed.init()
    n = group.size()
    if n == 1:
        return gradients
    return tree_map(lambda g: mx.distributed.all_sum(g, group=group, stream=communication_stream) / n, gradients)


def clip_grad_norm_sharded(gradients, max_norm: float, group=None):
    """``optimizers.clip_grad_norm`` for gradients sharded over ``group``: the squared norms are summed
    over the group before scaling. Returns the scaled gradients and the global norm."""
    from ..utils import tree_map, tree_reduce

    group = group or mx.distributed.init()
    local = tree_reduce(lambda acc, g: acc + g.square().sum(), gradients, 0.0)
    norm = mx.sqrt(mx.distributed.all_sum(local, group=group))
    normalizer = mx.minimum(max_norm / (norm + 1e-6), 1.0)
    return tree_map(lambda g: g * normalizer, gradients), norm
