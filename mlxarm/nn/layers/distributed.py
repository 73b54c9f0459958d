"""Tensor-parallel linear layers and parameter sharding (MLX's ``mlx.nn.layers.distributed``).

A layer sharded "all-to-sharded" keeps a slice of the output features (rows of the weight) and leaves
its result sharded across the group; "sharded-to-all" keeps a slice of the input features (columns)
and sums the partial products over the group. mlxarm runs in one process (``mx.distributed`` is a
group of one), so every process holds the whole weight and the communication is the identity, but the
slicing arithmetic is the general one: ``shard_inplace``/``shard_linear`` give the parameters rank
``r`` of ``N`` would hold.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import mlxarm.core as mx

from ...utils import tree_map_with_path
from .base import Module
from .linear import Linear

SHARDINGS = ("all-to-sharded", "sharded-to-all")


def sum_gradients(group):
    """Identity whose gradient is summed over ``group`` (the identity for a group of one)."""
    if group.size() == 1:
        return lambda x: x

    @mx.custom_function
    def identity(x):
        return x

    @identity.vjp
    def identity(x, cotangent, _):
        return mx.distributed.all_sum(cotangent, group=group)

    return identity


def _segments_of(weight, segments, axis):
    """``weight`` cut along ``axis`` into ``segments`` (a count, split indices, or fractions)."""
    if isinstance(segments, int) or isinstance(segments[0], int):
        return mx.split(weight, segments, axis=axis)
    size = weight.shape[axis]
    return mx.split(weight, [int(f * size) for f in segments], axis=axis)


def _sharded_tree(parameters: dict, axis_of: Callable, group) -> dict:
    """Each parameter's rank-``r`` shard: every segment cut in ``N`` parts along the axis ``axis_of``
    names (or kept whole when it returns None), the rank's part of each segment joined again."""
    group = group or mx.distributed.init()
    n, rank = group.size(), group.rank()

    def shard(path, weight):
        if not isinstance(weight, mx.array):
            return weight
        rule = axis_of(path, weight)
        if rule is None:
            return weight
        if isinstance(rule, int):
            axis, segments = rule, 1
        elif isinstance(rule, tuple):
            axis, segments = rule
        else:
            raise ValueError("The sharding function should return int or tuple[int, list]")
        parts = [mx.split(seg, n, axis=axis)[rank] for seg in _segments_of(weight, segments, axis)]
        return mx.contiguous(mx.concatenate(parts, axis=axis))

    return tree_map_with_path(shard, parameters)


def _output_rule(segments):
    """Shard a fully connected layer's outputs: weight rows (axis -2 of a matrix) and the bias."""
    return lambda path, w: (-1, segments) if path.endswith("bias") else (max(w.ndim - 2, 0), segments)


def _input_rule(segments):
    """Shard a fully connected layer's inputs: weight columns; the bias stays whole."""
    return lambda path, w: None if path.endswith("bias") else (-1, segments)


def _check_sharding(sharding) -> None:
    if sharding not in SHARDINGS:
        raise ValueError(f"Sharding type sharding={sharding!r} not supported, choose one of "
                         f"'all-to-sharded' or 'sharded-to-all'")


def shard_inplace(module: Module, sharding: Union[str, Callable], *, segments: Union[int, list] = 1,
                  group=None) -> None:
    """Replace ``module``'s parameters by this rank's shards (``sharding`` is one of ``SHARDINGS`` or a
    callable ``(path, weight) -> axis | (axis, segments) | None``)."""
    if isinstance(sharding, str):
        _check_sharding(sharding)
        sharding = _output_rule(segments) if sharding == "all-to-sharded" else _input_rule(segments)
    module.update(_sharded_tree(module.parameters(), sharding, group))


def shard_linear(module: Module, sharding: str, *, segments: Union[int, list] = 1, group=None) -> Module:
    """A new sharded layer made from a ``Linear`` or ``QuantizedLinear`` (the original is unchanged)."""
    _check_sharding(sharding)
    dense = isinstance(module, Linear)
    if sharding == "all-to-sharded":
        cls = AllToShardedLinear if dense else QuantizedAllToShardedLinear
    else:
        cls = ShardedToAllLinear if dense else QuantizedShardedToAllLinear
    return cls.from_linear(module, segments=segments, group=group) if dense else \
        cls.from_quantized_linear(module, segments=segments, group=group)


class _Sharded(Module):
    """What the four sharded layers share: the group, the divisibility check and the initial weight."""

    shards_outputs = True  # all-to-sharded; False: sharded-to-all

    def _setup(self, input_dims, output_dims, group):
        self.group = group or mx.distributed.init()
        n = self.group.size()
        if self.shards_outputs and output_dims % n:
            raise ValueError(f"Cannot shard the output of size {output_dims} across {n} devices.")
        if not self.shards_outputs and input_dims % n:
            raise ValueError(f"The input of size {input_dims} cannot be sharded across {n} devices.")
        shape = (output_dims // n, input_dims) if self.shards_outputs else (output_dims, input_dims // n)
        scale = math.sqrt(1.0 / input_dims)
        return shape, scale

    def _dims(self, in_dims, out_dims):
        n = self.group.size()
        return (in_dims, out_dims * n) if self.shards_outputs else (in_dims * n, out_dims)

    def _communicate_in(self, x):
        return sum_gradients(self.group)(x) if self.shards_outputs else x

    def _communicate_out(self, x):
        x = x if self.shards_outputs else mx.distributed.all_sum(x, group=self.group)
        return x + self["bias"] if "bias" in self else x

    @classmethod
    def _rule(cls, segments):
        return _output_rule(segments) if cls.shards_outputs else _input_rule(segments)


class AllToShardedLinear(_Sharded):
    """``x @ W.T + b`` for this rank's slice of the output features; the result stays sharded and the
    input's gradient is summed over the group."""

    def __init__(self, input_dims: int, output_dims: int, bias: bool = True, group=None):
        super().__init__()
        shape, scale = self._setup(input_dims, output_dims, group)
        self.weight = mx.random.uniform(low=-scale, high=scale, shape=shape)
        if bias:
            self.bias = mx.random.uniform(low=-scale, high=scale, shape=shape[:1])

    def _extra_repr(self) -> str:
        in_dims, out_dims = self._dims(self.weight.shape[1], self.weight.shape[0])
        return f"input_dims={in_dims}, output_dims={out_dims}, bias={'bias' in self}"

    def __call__(self, x):
        return self._communicate_out(self._communicate_in(x) @ self["weight"].T)

    @classmethod
    def from_linear(cls, linear_layer: Module, *, segments: Union[int, list] = 1, group=None):
        group = group or mx.distributed.init()
        output_dims, input_dims = linear_layer.weight.shape
        layer = cls(input_dims, output_dims, "bias" in linear_layer, group)
        layer.update(_sharded_tree(linear_layer.parameters(), cls._rule(segments), group))
        return layer


class ShardedToAllLinear(AllToShardedLinear):
    """``x @ W.T`` on this rank's slice of the input features, summed over the group, plus the bias: every
    rank ends with the whole result."""

    shards_outputs = False

    def __init__(self, input_dims: int, output_dims: int, bias: bool = True, group=None):
        Module.__init__(self)
        shape, scale = self._setup(input_dims, output_dims, group)
        self.weight = mx.random.uniform(low=-scale, high=scale, shape=shape)
        if bias:
            self.bias = mx.random.uniform(low=-scale, high=scale, shape=(output_dims,))


class QuantizedAllToShardedLinear(_Sharded):
    """The quantized ``AllToShardedLinear``: frozen packed weights (see ``mx.quantize``)."""

    def __init__(self, input_dims: int, output_dims: int, bias: bool = True, group_size: int = 64, bits: int = 4,
                 mode: str = "affine", group=None):
        super().__init__()
        self.group_size, self.bits, self.mode = group_size, bits, mode
        shape, scale = self._setup(input_dims, output_dims, group)
        weight = mx.random.uniform(low=-scale, high=scale, shape=shape)
        self.weight, self.scales, *biases = mx.quantize(weight, group_size, bits, mode=mode)
        self.biases = biases[0] if biases else None
        if bias:
            self.bias = mx.zeros((shape[0] if self.shards_outputs else output_dims,))
        self.freeze()

    def unfreeze(self, *args, **kwargs):
        """Unfreeze contained modules; this layer's own parameters stay frozen."""
        super().unfreeze(*args, **kwargs)
        self.freeze(recurse=False)

    def _extra_repr(self) -> str:
        in_dims, out_dims = self._dims(self.weight.shape[1] * 32 // self.bits, self.weight.shape[0])
        return (f"input_dims={in_dims}, output_dims={out_dims}, bias={'bias' in self}, "
                f"group_size={self.group_size}, bits={self.bits}, mode={self.mode}")

    def __call__(self, x):
        x = mx.quantized_matmul(self._communicate_in(x), self["weight"], scales=self["scales"],
                                biases=self.get("biases"), transpose=True, group_size=self.group_size,
                                bits=self.bits, mode=self.mode)
        return self._communicate_out(x)

    @classmethod
    def from_quantized_linear(cls, quantized_linear_layer: Module, *, segments: Union[int, list] = 1,
                              group=None):
        group = group or mx.distributed.init()
        q = quantized_linear_layer
        output_dims, packed = q.weight.shape
        layer = cls(packed * 32 // q.bits, output_dims, "bias" in q, group_size=q.group_size, bits=q.bits,
                    mode=getattr(q, "mode", "affine"), group=group)
        layer.update(_sharded_tree(q.parameters(), cls._rule(segments), group))
        return layer


class QuantizedShardedToAllLinear(QuantizedAllToShardedLinear):
    """The quantized ``ShardedToAllLinear``: frozen packed weights (see ``mx.quantize``)."""

    shards_outputs = False


class FullyShardedModule(Module):
    """``module`` with every parameter sharded along axis 0 across ``group``, gathered for each call.

    With mlxarm's single-process group nothing is sharded: calls go straight to ``module``."""

    def __init__(self, module: Module, group=None, compute_dtype: Optional[mx.Dtype] = None):
        super().__init__()
        self.group = group or mx.distributed.init()
        if self.group.size() != 1:
            raise ValueError("mlxarm's distributed groups have one process; nothing can be sharded.")
        self.module = module
        self.compute_dtype = compute_dtype

    def _cast(self, fn, *args, **kwargs):
        if self.compute_dtype is None:
            return fn(*args, **kwargs)
        saved = self.module.parameters()
        self.module.update(tree_map_with_path(
            lambda _, a: a.astype(self.compute_dtype) if isinstance(a, mx.array) else a, saved))
        try:
            return fn(*args, **kwargs)
        finally:
            self.module.update(saved)

    def __call__(self, *args, **kwargs):
        return self._cast(self.module, *args, **kwargs)

    def as_linear(self, *args, **kwargs):
        return self._cast(self.module.as_linear, *args, **kwargs)


def fully_shard(module: Module, *, group=None, compute_dtype: Optional[mx.Dtype] = None) -> Module:
    """``module`` wrapped in a ``FullyShardedModule``; a group of one process returns ``module`` itself."""
    group = group or mx.distributed.init()
    if group.size() == 1 or isinstance(module, FullyShardedModule):
        return module
    return FullyShardedModule(module, group=group, compute_dtype=compute_dtype)
