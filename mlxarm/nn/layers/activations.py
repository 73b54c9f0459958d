"""Activation functions (``nn.relu``, ``nn.gelu``, ...) and their ``Module`` wrappers
(``nn.ReLU``, ``nn.GELU``, ...)."""
from __future__ import annotations

import math

import mlxarm.core as mx

from .base import Module


def sigmoid(x):
    r"""Element-wise logistic sigmoid :math:`1 / (1 + e^{-x})`."""
    return mx.sigmoid(x)


def relu(x):
    """Rectified linear unit: ``max(x, 0)``."""
    return mx.maximum(x, 0)


def relu2(x):
    """Squared ReLU: ``max(x, 0) ** 2``."""
    return mx.square(mx.maximum(x, 0))


def relu6(x):
    """ReLU clipped at 6: ``min(max(x, 0), 6)``."""
    return mx.minimum(mx.maximum(x, 0), 6.0)


def leaky_relu(x, negative_slope=0.01):
    """``max(negative_slope * x, x)``."""
    return mx.maximum(negative_slope * x, x)


def log_softmax(x, axis=-1):
    """``x - logsumexp(x)`` along ``axis``, shifted by the max for stability."""
    x = x - mx.stop_gradient(mx.max(x, axis=axis, keepdims=True))
    return x - mx.logsumexp(x, axis=axis, keepdims=True)


def elu(x, alpha=1.0):
    """Exponential linear unit: ``x`` if ``x > 0`` else ``alpha * (exp(x) - 1)``."""
    return mx.where(x > 0, x, alpha * (mx.exp(x) - 1))


def softmax(x, axis=-1):
    """Softmax along ``axis``."""
    return mx.softmax(x, axis=axis)


def softplus(x):
    """``log(1 + exp(x))``."""
    return mx.logaddexp(x, 0)


def softsign(x):
    """``x / (1 + |x|)``."""
    return mx.divide(x, 1 + mx.abs(x))


def softshrink(x, lambd: float = 0.5):
    """Shrink towards 0 by ``lambd``; values within ``lambd`` of 0 become 0."""
    return mx.where(mx.abs(x) > lambd, x - mx.sign(x) * lambd, 0)


def celu(x, alpha=1.0):
    """Continuously differentiable ELU."""
    return mx.maximum(x, 0.0) + alpha * (mx.exp(mx.minimum(x, 0.0) / alpha) - 1)


def silu(x):
    """Sigmoid linear unit (swish): ``x * sigmoid(x)``."""
    return x * mx.sigmoid(x)


def log_sigmoid(x):
    """``log(sigmoid(x))``, as ``-softplus(-x)``."""
    return -softplus(-x)


def gelu(x) -> mx.array:
    r"""Gaussian error linear unit, exact: :math:`x \Phi(x)` through ``erf``."""
    return x * (1 + mx.erf(x / math.sqrt(2))) / 2


def gelu_approx(x):
    """GELU's tanh approximation."""
    return 0.5 * x * (1 + mx.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def gelu_fast_approx(x):
    """GELU's sigmoid approximation: ``x * sigmoid(1.702 * x)``."""
    return x * mx.sigmoid(1.702 * x)


def glu(x: mx.array, axis: int = -1) -> mx.array:
    """Gated linear unit: split ``x`` in halves ``a, b`` along ``axis``; ``a * sigmoid(b)``."""
    a, b = mx.split(x, indices_or_sections=2, axis=axis)
    return a * mx.sigmoid(b)


def step(x: mx.array, threshold: float = 0.0):
    """1 where ``x >= threshold`` else 0."""
    return mx.where(x >= threshold, 1, 0)


def selu(x):
    """Scaled ELU."""
    return elu(x, 1.67326) * 1.0507


def prelu(x: mx.array, alpha: mx.array) -> mx.array:
    """Parametric ReLU: ``max(0, x) + alpha * min(0, x)``."""
    return mx.maximum(0, x) + alpha * mx.minimum(0, x)


def mish(x: mx.array) -> mx.array:
    """``x * tanh(softplus(x))``."""
    return x * mx.tanh(softplus(x))


def hardswish(x):
    """``x * min(max(x + 3, 0), 6) / 6``."""
    return x * mx.minimum(mx.maximum(x + 3, 0), 6) / 6


def hard_tanh(x, min_val=-1.0, max_val=1.0):
    """``x`` clipped to ``[min_val, max_val]``."""
    return mx.minimum(mx.maximum(x, min_val), max_val)


def hard_shrink(x, lambd=0.5):
    """``x`` where ``|x| > lambd`` else 0."""
    return mx.where(mx.abs(x) > lambd, x, 0)


def softmin(x, axis=-1):
    """``softmax(-x)`` along ``axis``."""
    return mx.softmax(-x, axis=axis)


def tanh(x):
    """Hyperbolic tangent."""
    return mx.tanh(x)


def _activation_module(fn, doc):
    """A parameter-free ``Module`` class whose call applies ``fn``."""

    def __call__(self, x):
        return fn(x)

    return {"__call__": __call__, "__doc__": doc, "__module__": __name__}


Sigmoid = type("Sigmoid", (Module,), _activation_module(sigmoid, "Applies ``sigmoid``."))
Mish = type("Mish", (Module,), _activation_module(mish, "Applies ``mish``."))
ReLU = type("ReLU", (Module,), _activation_module(relu, "Applies ``relu``."))
ReLU2 = type("ReLU2", (Module,), _activation_module(relu2, "Applies ``relu2``."))
ReLU6 = type("ReLU6", (Module,), _activation_module(relu6, "Applies ``relu6``."))
Softmax = type("Softmax", (Module,), _activation_module(softmax, "Applies ``softmax``."))
Softplus = type("Softplus", (Module,), _activation_module(softplus, "Applies ``softplus``."))
Softsign = type("Softsign", (Module,), _activation_module(softsign, "Applies ``softsign``."))
SiLU = type("SiLU", (Module,), _activation_module(silu, "Applies ``silu``."))
LogSoftmax = type("LogSoftmax", (Module,),
                  _activation_module(log_softmax, "Applies ``log_softmax``."))
LogSigmoid = type("LogSigmoid", (Module,),
                  _activation_module(log_sigmoid, "Applies ``log_sigmoid``."))
Tanh = type("Tanh", (Module,), _activation_module(tanh, "Applies ``tanh``."))
Hardswish = type("Hardswish", (Module,), _activation_module(hardswish, "Applies ``hardswish``."))
SELU = type("SELU", (Module,), _activation_module(selu, "Applies ``selu``."))
HardTanh = type("HardTanh", (Module,), _activation_module(hard_tanh, "Applies ``hard_tanh``."))
Softmin = type("Softmin", (Module,), _activation_module(softmin, "Applies ``softmin``."))


class GLU(Module):
    """Applies ``glu`` along ``axis``."""

    def __init__(self, axis: int = -1):
        super().__init__()
        self.axis = axis

    def __call__(self, x):
        return glu(x=x, axis=self.axis)


class LeakyReLU(Module):
    """Applies ``leaky_relu`` with ``negative_slope``."""

    def __init__(self, negative_slope=1e-2):
        super().__init__()
        self._negative_slope = negative_slope

    def __call__(self, x):
        return leaky_relu(x, self._negative_slope)


class ELU(Module):
    """Applies ``elu`` with ``alpha``."""

    def __init__(self, alpha=1.0):
        super().__init__()
        self._alpha = alpha

    def __call__(self, x):
        return elu(x, self._alpha)


class CELU(Module):
    """Applies ``celu`` with ``alpha``."""

    def __init__(self, alpha=1.0):
        super().__init__()
        self._alpha = alpha

    def __call__(self, x):
        return celu(x, self._alpha)


class Softshrink(Module):
    """Applies ``softshrink`` with ``lambd``."""

    def __init__(self, lambd=0.5):
        super().__init__()
        self.lambd = lambd

    def __call__(self, x):
        return softshrink(x, self.lambd)


class HardShrink(Module):
    """Applies ``hard_shrink`` with ``lambd``."""

    def __init__(self, lambd=0.5):
        super().__init__()
        self.lambd = lambd

    def __call__(self, x):
        return hard_shrink(x, self.lambd)


class Step(Module):
    """Applies ``step`` with ``threshold``."""

    def __init__(self, threshold: float = 0.0):
        super().__init__()
        self.threshold = threshold

    def __call__(self, x: mx.array):
        return step(x, self.threshold)


class PReLU(Module):
    """Parametric ReLU with a learned slope ``weight`` of ``num_parameters`` entries."""

    def __init__(self, num_parameters=1, init=0.25):
        super().__init__()
        self.weight = mx.full([num_parameters], init)

    def __call__(self, x: mx.array):
        return prelu(x, self.weight)


class GELU(Module):
    """Applies GELU: ``approx`` is ``"none"`` (exact), ``"precise"``/``"tanh"`` (tanh
    approximation) or ``"fast"`` (sigmoid approximation)."""

    _APPROXIMATIONS = ["none", "precise", "tanh", "fast"]

    def __init__(self, approx="none"):
        super().__init__()
        if approx not in self._APPROXIMATIONS:
            raise ValueError(f"The approximation should be in {self._APPROXIMATIONS} but "
                             f"'{approx}' was given")
        self._approx = approx

    def __call__(self, x):
        if self._approx == "none":
            return gelu(x)
        if self._approx in ("precise", "tanh"):
            return gelu_approx(x)
        return gelu_fast_approx(x)
