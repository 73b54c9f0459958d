"""``nn.losses``: loss functions computed from predictions and targets, with the
``reduction`` (``"none"``, ``"mean"`` or ``"sum"``) applied last."""
from __future__ import annotations

import math
from typing import Literal, Optional, get_args

import mlxarm.core as mx

Reduction = Literal["none", "mean", "sum"]


def _reduce(loss: mx.array, reduction: Reduction = "none"):
    if reduction == "mean":
        return mx.mean(loss)
    if reduction == "sum":
        return mx.sum(loss)
    if reduction == "none":
        return loss
    raise ValueError(f"Invalid reduction. Must be one of {get_args(Reduction)}.")


def _check_same_shape(first_name, first, second_name, second):
    if first.shape != second.shape:
        raise ValueError(f"{first_name.capitalize()} shape {first.shape} does not match {second_name} shape "
                         f"{second.shape}.")


def _apply_weights(loss, weights):
    if weights is None:
        return loss
    if weights.shape != loss.shape:
        raise ValueError(f"Weights with shape {weights.shape} is not the same as output loss "
                         f"with shape {loss.shape}.")
    return loss * weights


def cross_entropy(logits: mx.array, targets: mx.array, weights: Optional[mx.array] = None,
                  axis: int = -1, label_smoothing: float = 0.0,
                  reduction: Reduction = "none") -> mx.array:
    """Cross entropy of ``logits`` against class indices (``targets`` without ``axis``) or
    class probabilities (``targets`` shaped like ``logits``)."""
    if label_smoothing < 0 or label_smoothing >= 1:
        raise ValueError(f"Label smoothing must be in [0, 1), got {label_smoothing}.")
    targets_are_probs = targets.ndim == logits.ndim
    expected = list(logits.shape)
    if not targets_are_probs:
        expected.pop(axis)
    if targets.shape != tuple(expected):
        raise ValueError(f"Targets shape {targets.shape} does not match logits shape "
                         f"{logits.shape}.")
    logits = logits - mx.stop_gradient(mx.max(logits, axis=axis, keepdims=True))
    if targets_are_probs:
        score = mx.sum(logits * targets, axis=axis)
    else:
        score = mx.take_along_axis(logits, mx.expand_dims(targets, axis), axis).squeeze(axis)
    logsumexp_logits = mx.logsumexp(logits, axis=axis)
    if label_smoothing > 0:
        smoothed = -logits.mean(axis=axis) * label_smoothing
        loss = logsumexp_logits - (1 - label_smoothing) * score + smoothed
    else:
        loss = logsumexp_logits - score
    return _reduce(_apply_weights(loss, weights), reduction)


def binary_cross_entropy(inputs: mx.array, targets: mx.array, weights: Optional[mx.array] = None,
                         with_logits: bool = True, reduction: Reduction = "mean") -> mx.array:
    """Binary cross entropy of logits (or probabilities with ``with_logits=False``, whose
    logs are clipped at -100)."""
    _check_same_shape("inputs", inputs, "targets", targets)
    if with_logits:
        loss = mx.logaddexp(0.0, inputs) - inputs * targets
    else:
        log_p = mx.clip(mx.log(inputs), a_min=-100, a_max=None)
        log_not_p = mx.clip(mx.log(1 - inputs), a_min=-100, a_max=None)
        loss = -(targets * log_p + (1 - targets) * log_not_p)
    return _reduce(_apply_weights(loss, weights), reduction)


def l1_loss(predictions: mx.array, targets: mx.array, reduction: Reduction = "mean") -> mx.array:
    """Absolute error."""
    _check_same_shape("predictions", predictions, "targets", targets)
    return _reduce(mx.abs(predictions - targets), reduction)


def mse_loss(predictions: mx.array, targets: mx.array,
             reduction: Reduction = "mean") -> mx.array:
    """Squared error."""
    _check_same_shape("predictions", predictions, "targets", targets)
    return _reduce(mx.square(predictions - targets), reduction)


def nll_loss(inputs: mx.array, targets: mx.array, axis: int = -1,
             reduction: Reduction = "none") -> mx.array:
    """Negative log likelihood of class ``targets`` given log probabilities ``inputs``."""
    loss = -mx.take_along_axis(inputs, mx.expand_dims(targets, axis), axis).squeeze(axis)
    return _reduce(loss, reduction)


def gaussian_nll_loss(inputs: mx.array, targets: mx.array, vars: mx.array, full: bool = False,
                      eps: float = 1e-6, reduction: Reduction = "mean") -> mx.array:
    """Negative log likelihood of ``targets`` under normals of mean ``inputs`` and variance
    ``vars`` (clamped below at ``eps``); ``full`` adds the constant term."""
    _check_same_shape("inputs", inputs, "targets", targets)
    _check_same_shape("inputs", inputs, "vars", vars)
    vars = mx.maximum(vars, eps)
    loss = 0.5 * (mx.log(vars) + mx.square(targets - inputs) / vars)
    if full:
        loss = loss + 0.5 * math.log(2 * math.pi)
    return _reduce(loss, reduction)


def kl_div_loss(inputs: mx.array, targets: mx.array, axis: int = -1,
                reduction: Reduction = "none") -> mx.array:
    """KL divergence from log probabilities ``inputs`` to log probabilities ``targets``."""
    return _reduce(mx.sum(mx.exp(targets) * (targets - inputs), axis), reduction)


def smooth_l1_loss(predictions: mx.array, targets: mx.array, beta: float = 1.0,
                   reduction: Reduction = "mean") -> mx.array:
    """Squared error (over ``2 * beta``) below ``beta``, absolute error minus ``beta / 2``
    above."""
    _check_same_shape("predictions", predictions, "targets", targets)
    diff = mx.abs(predictions - targets)
    loss = mx.where(diff < beta, 0.5 * mx.square(diff) / beta, mx.abs(diff) - 0.5 * beta)
    return _reduce(loss, reduction)


def triplet_loss(anchors: mx.array, positives: mx.array, negatives: mx.array, axis: int = -1,
                 p: int = 2, margin: float = 1.0, eps: float = 1e-6,
                 reduction: Reduction = "none") -> mx.array:
    """``max(d(a, p) - d(a, n) + margin, 0)`` with ``p``-norm distances along ``axis``."""

    def distance(other):
        return mx.power(mx.power(mx.abs(anchors - other), p).sum(axis) + eps, 1.0 / p)

    loss = mx.maximum(distance(positives) - distance(negatives) + margin, 0)
    return _reduce(loss, reduction)


def hinge_loss(inputs: mx.array, targets: mx.array, reduction: Reduction = "none") -> mx.array:
    """``max(1 - inputs * targets, 0)`` for targets in {-1, 1}."""
    return _reduce(mx.maximum(1 - inputs * targets, 0), reduction)


def huber_loss(inputs: mx.array, targets: mx.array, delta: float = 1.0,
               reduction: Reduction = "none") -> mx.array:
    """Quadratic for errors up to ``delta``, linear beyond."""
    abs_errors = mx.abs(inputs - targets)
    quadratic = mx.minimum(abs_errors, delta)
    linear = abs_errors - quadratic
    return _reduce(0.5 * quadratic**2 + delta * linear, reduction)


def log_cosh_loss(inputs: mx.array, targets: mx.array, reduction: Reduction = "none") -> mx.array:
    """``log(cosh(inputs - targets))``, computed stably."""
    errors = inputs - targets
    return _reduce(mx.logaddexp(errors, -errors) - math.log(2), reduction)


def cosine_similarity_loss(x1: mx.array, x2: mx.array, axis: int = 1, eps: float = 1e-8,
                           reduction: Reduction = "none") -> mx.array:
    """Cosine similarity of ``x1`` and ``x2`` along ``axis`` (norm product floored at
    ``eps``)."""
    norms = mx.linalg.norm(x1, axis=axis) * mx.linalg.norm(x2, axis=axis)
    loss = mx.sum(x1 * x2, axis=axis) / mx.maximum(norms, eps)
    return _reduce(loss, reduction)


def margin_ranking_loss(inputs1: mx.array, inputs2: mx.array, targets: mx.array,
                        margin: float = 0.0, reduction: Reduction = "none") -> mx.array:
    """``max(0, -targets * (inputs1 - inputs2) + margin)``."""
    if not (inputs1.shape == inputs2.shape == targets.shape):
        raise ValueError(
            "The shapes of the arguments do not match. The provided shapes are "
            f"inputs1.shape={inputs1.shape}, inputs2.shape={inputs2.shape}, and "
            f"targets.shape={targets.shape}.")
    loss = mx.maximum(0, -targets * (inputs1 - inputs2) + margin)
    return _reduce(loss, reduction)
