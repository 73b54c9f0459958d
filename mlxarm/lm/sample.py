"""Token samplers and logits processors shaped like mlx-lm's ``make_sampler`` and
``make_logits_processors``: greedy, temperature, top-k, top-p and min-p sampling drawing from
``mx.random`` (so ``mx.random.seed`` makes them reproducible); logit bias and the repetition penalty."""
from __future__ import annotations

import math

import mlxarm.core as mx


def apply_top_k(logprobs, top_k: int):
    if top_k <= 0 or top_k >= logprobs.shape[-1]:
        return logprobs
    kth = mx.expand_dims(mx.sort(logprobs, axis=-1)[..., -top_k], -1)
    return mx.where(logprobs >= kth, logprobs, -math.inf)


def apply_top_p(logprobs, top_p: float):
    """Keep the smallest set of most likely tokens whose probabilities sum to at least ``top_p``."""
    if not 0.0 < top_p < 1.0:
        return logprobs
    probs = mx.softmax(logprobs, axis=-1)
    ascending = mx.sort(probs, axis=-1)
    mass_above = 1.0 - mx.cumsum(ascending, axis=-1)  # of the tokens likelier than each one
    threshold = mx.min(mx.where(mass_above < top_p, ascending, 2.0), axis=-1, keepdims=True)
    return mx.where(probs >= threshold, logprobs, -math.inf)


def apply_min_p(logprobs, min_p: float, min_tokens_to_keep: int = 1):
    if min_p <= 0.0:
        return logprobs
    top = mx.max(logprobs, axis=-1, keepdims=True)
    keep = logprobs >= top + math.log(min_p)
    if min_tokens_to_keep > 1:
        kth = mx.expand_dims(mx.sort(logprobs, axis=-1)[..., -min_tokens_to_keep], -1)
        keep = keep | (logprobs >= kth)
    return mx.where(keep, logprobs, -math.inf)


def greedy(logprobs):
    """The most likely token: a function of the log-probabilities alone (no random state), so the
    compiled decode step computes it (``generate_step``)."""
    return mx.argmax(logprobs, axis=-1)


def make_sampler(temp: float = 0.0, top_p: float = 0.0, min_p: float = 0.0,
                 min_tokens_to_keep: int = 1, top_k: int = 0):
    """A function from log-probabilities (..., vocab) to sampled token ids (...)."""
    if temp == 0:
        return greedy

    def sampler(logprobs):
        logprobs = apply_top_k(logprobs, top_k)
        logprobs = apply_top_p(logprobs, top_p)
        logprobs = apply_min_p(logprobs, min_p, min_tokens_to_keep)
        return mx.random.categorical(logprobs * (1.0 / temp), axis=-1)

    return sampler


def make_repetition_penalty(penalty: float, context_size: int = 20):
    """A logits processor dividing the positive logits (multiplying the negative ones) of the tokens
    among the last ``context_size`` by ``penalty``, as mlx-lm's (CTRL's sign-aware penalty)."""
    if not isinstance(penalty, (int, float)) or penalty < 0:
        raise ValueError(f"penalty must be a non-negative float, got {penalty}")

    def repetition_penalty_processor(tokens, logits):
        if len(tokens) > 0:
            tokens = tokens[-context_size:]
            selected = logits[:, tokens]
            logits[:, tokens] = mx.where(selected < 0, selected * penalty, selected / penalty)
        return logits

    return repetition_penalty_processor


def make_logits_processors(logit_bias: dict = None, repetition_penalty: float = None,
                           repetition_context_size: int = 20) -> list:
    """Processors ``(tokens so far, logits (1, vocab)) -> logits`` for ``generate_step``'s
    ``logits_processors``: an additive ``logit_bias`` {token id: bias} and a repetition penalty
    (none when it is None or 0)."""
    processors = []
    if logit_bias:
        indices = mx.array(list(logit_bias.keys()), mx.uint32)
        values = mx.array(list(logit_bias.values()), mx.float32)
        processors.append(lambda _, logits: logits.at[:, indices].add(values))
    if repetition_penalty is not None and repetition_penalty != 0:
        processors.append(make_repetition_penalty(repetition_penalty, repetition_context_size))
    return processors
