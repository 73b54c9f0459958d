"""Quantized layers: ``QuantizedLinear``, ``QuantizedEmbedding`` and ``nn.quantize`` over a model."""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import mlxarm.core as mx
from mlxarm.core.ops.quantized import _loader_quantize
from mlxarm.utils import tree_map_with_path

from .base import Module

_MODE_DEFAULTS = {"affine": (64, 4), "mxfp4": (32, 4), "nvfp4": (16, 4), "mxfp8": (32, 8)}


def _defaults_for_mode(mode, group_size, bits):
    if mode not in _MODE_DEFAULTS:
        raise ValueError(f"Invalid quantization mode '{mode}'. Valid modes are: {', '.join(_MODE_DEFAULTS)}.")
    gs, b = _MODE_DEFAULTS[mode]
    return group_size or gs, bits or b


def _quantize_weight(weight, group_size, bits, mode, loader):
    """``mx.quantize``, or with ``loader`` (model loaders only) the private version that also takes
    group size 16, the group size of GGUF's Q6_K blocks."""
    if loader:
        if mode != "affine":
            raise ValueError(f"Model loaders make affine quantized layers only, not '{mode}'.")
        return _loader_quantize(weight, group_size, bits)
    return mx.quantize(weight, group_size, bits, mode=mode)


def quantize(model: Module, group_size: int = None, bits: int = None, *, mode: str = "affine",
             quantize_input: bool = False,
             class_predicate: Optional[Callable[[str, Module], Union[bool, dict]]] = None):
    """Replace, in place, the leaf modules the predicate picks (by default every one with a
    ``to_quantized`` method) by their quantized versions. A predicate may return a dict of
    ``to_quantized`` arguments instead of ``True``."""
    class_predicate = class_predicate or (lambda _, m: hasattr(m, "to_quantized"))

    def maybe_quantize(path, m):
        choice = class_predicate(path, m)
        if not choice:
            return m
        if not hasattr(m, "to_quantized"):
            raise ValueError(f"Unable to quantize model of type {type(m)}")
        if isinstance(choice, bool):
            kwargs = {"group_size": group_size, "bits": bits, "mode": mode}
            if quantize_input:
                kwargs["quantize_input"] = quantize_input
            return m.to_quantized(**kwargs)
        if isinstance(choice, dict):
            kwargs = dict(choice)
            if "quantize_input" in kwargs and not kwargs["quantize_input"]:
                kwargs.pop("quantize_input")
            return m.to_quantized(**kwargs)
        raise ValueError("``class_predicate`` must return a bool or a dict of parameters to pass to "
                         "``to_quantized``")

    leaves = tree_map_with_path(maybe_quantize, model.leaf_modules(), is_leaf=Module.is_module)
    model.update_modules(leaves)


class QuantizedEmbedding(Module):
    """``Embedding`` with a quantized (frozen) table: ``weight``, ``scales`` and, for "affine",
    ``biases``. ``_loader=True`` is private to model loaders: it allows group size 16."""

    def __init__(self, num_embeddings: int, dims: int, group_size: int = None, bits: int = None,
                 mode: str = "affine", *, _loader: bool = False):
        super().__init__()
        self.group_size, self.bits = _defaults_for_mode(mode, group_size, bits)
        self.mode = mode
        weight = mx.random.normal(shape=(num_embeddings, dims), scale=math.sqrt(1 / dims))
        self.weight, self.scales, *biases = _quantize_weight(weight, group_size, bits, mode, _loader)
        self.biases = biases[0] if biases else None
        self.num_embeddings = num_embeddings
        self.dims = dims
        self.freeze()

    def __call__(self, x):
        biases = self.get("biases")
        return mx.dequantize(self["weight"][x], scales=self["scales"][x],
                             biases=biases[x] if biases is not None else None, group_size=self.group_size,
                             bits=self.bits, mode=self.mode)

    def as_linear(self, x):
        """The table as a quantized linear layer (``x @ weight.T``), e.g. for tied output logits."""
        return mx.quantized_matmul(x, self["weight"], scales=self["scales"], biases=self.get("biases"),
                                   transpose=True, group_size=self.group_size, bits=self.bits, mode=self.mode)

    def _extra_repr(self):
        return (f"{self.num_embeddings}, {self.dims}, group_size={self.group_size}, bits={self.bits}, "
                f"mode={self.mode}")

    @classmethod
    def from_embedding(cls, embedding_layer: Module, group_size: int = None, bits: int = None,
                       mode: str = "affine", *, _loader: bool = False):
        num_embeddings, dims = embedding_layer.weight.shape
        ql = cls(num_embeddings, dims, group_size, bits, mode=mode, _loader=_loader)
        ql.weight, ql.scales, *biases = _quantize_weight(embedding_layer.weight, group_size, bits, mode, _loader)
        ql.biases = biases[0] if biases else None
        return ql


class QuantizedLinear(Module):
    """``Linear`` with a quantized (frozen) weight: ``weight``, ``scales``, ``biases`` (for "affine")
    and an optional ``bias``. ``_loader=True`` is private to model loaders: it allows group size 16."""

    def __init__(self, input_dims: int, output_dims: int, bias: bool = True, group_size: int = None,
                 bits: int = None, mode: str = "affine", *, _loader: bool = False):
        super().__init__()
        self.group_size, self.bits = _defaults_for_mode(mode, group_size, bits)
        self.mode = mode
        scale = math.sqrt(1 / input_dims)
        weight = mx.random.uniform(low=-scale, high=scale, shape=(output_dims, input_dims))
        self.weight, self.scales, *biases = _quantize_weight(weight, group_size, bits, mode, _loader)
        self.biases = biases[0] if biases else None
        if bias:
            self.bias = mx.zeros((output_dims,))
        self.freeze()

    def _extra_repr(self):
        out_dims, in_dims = self.weight.shape
        in_dims = (in_dims * 32) // self.bits
        return (f"input_dims={in_dims}, output_dims={out_dims}, bias={'bias' in self}, "
                f"group_size={self.group_size}, bits={self.bits}, mode={self.mode}")

    def __call__(self, x):
        x = mx.quantized_matmul(x, self["weight"], scales=self["scales"], biases=self.get("biases"),
                                transpose=True, group_size=self.group_size, bits=self.bits, mode=self.mode)
        if "bias" in self:
            x = x + self["bias"]
        return x

    @classmethod
    def from_linear(cls, linear_layer: Module, group_size: int = None, bits: int = None, mode: str = "affine",
                    *, _loader: bool = False):
        output_dims, input_dims = linear_layer.weight.shape
        ql = cls(input_dims, output_dims, False, group_size, bits, mode=mode, _loader=_loader)
        ql.weight, ql.scales, *biases = _quantize_weight(linear_layer.weight, group_size, bits, mode, _loader)
        ql.biases = biases[0] if biases else None
        if "bias" in linear_layer:
            ql.bias = linear_layer.bias
        return ql


class QQLinear(Module):
    """A bias-free linear layer that quantizes its input too (``mx.qqmm``). Training keeps the
    weight in full precision (quantized on the fly); ``eval()`` stores it quantized with ``scales``."""

    def __init__(self, input_dims: int, output_dims: int, group_size: int = None, bits: int = None,
                 mode: str = "nvfp4"):
        super().__init__()
        self.group_size, self.bits = _defaults_for_mode(mode, group_size, bits)
        self.mode = mode
        scale = math.sqrt(1 / input_dims)
        self.weight = mx.random.uniform(low=-scale, high=scale, shape=(output_dims, input_dims))
        self._quantized = False

    def _extra_repr(self):
        out_dims, in_dims = self.weight.shape
        if self.weight.dtype == mx.uint32:
            in_dims = (in_dims * 32) // self.bits
        return (f"input_dims={in_dims}, output_dims={out_dims}, group_size={self.group_size}, "
                f"bits={self.bits}, mode={self.mode}")

    def quantize(self):
        if not self._quantized:
            self.weight, self.scales = mx.quantize(self.weight, self.group_size, self.bits, mode=self.mode)
            self._quantized = True

    def dequantize(self):
        if self._quantized:
            self.weight = mx.dequantize(self.weight, scales=self.scales, group_size=self.group_size,
                                        bits=self.bits, mode=self.mode)
            self.__delattr__("scales")
            self._quantized = False

    def _set_training_mode(self, mode: bool):
        super()._set_training_mode(mode)
        if self.training:
            self.dequantize()
        else:
            self.quantize()

    def __call__(self, x):
        return mx.qqmm(x, self["weight"], scales=self.get("scales"), group_size=self.group_size, bits=self.bits,
                       mode=self.mode)

    @classmethod
    def from_linear(cls, linear_layer: Module, group_size: int = None, bits: int = None, mode: str = "nvfp4"):
        output_dims, input_dims = linear_layer.weight.shape
        if linear_layer.get("bias") is not None:
            raise NotImplementedError("QQLinear does not support bias yet.")
        ql = cls(input_dims, output_dims, group_size, bits, mode=mode)
        ql.weight = linear_layer.weight
        ql.train(linear_layer.training)
        return ql
