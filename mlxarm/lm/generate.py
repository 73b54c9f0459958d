"""Text generation: prefill in chunks, then one decode step per token against a preallocated
key/value cache, streaming text as whole characters, shaped like mlx-lm's ``stream_generate``.
The decode step is compiled with the cache position as an array input, so its graph keeps one
structure from token to token and executors that record plans replay it."""
from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from typing import Callable, Generator, Optional, Union

import mlxarm.core as mx
from mlxarm.core.compile import _binds_tapes, compile_for_replays
from mlxarm.core.graph import array_leaves, eval_arrays

from .models.cache import KVCache, make_prompt_cache
from .sample import greedy, make_sampler


@dataclass
class GenerationResponse:
    text: str
    token: int
    logprobs: object
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    peak_memory: float
    finish_reason: Optional[str] = None


def generate_step(prompt, model, *, max_tokens: int = 256, sampler: Callable = None,
                  prompt_cache: list = None, prefill_step_size: int = 512,
                  logits_processors: list = None) -> Generator:
    """Yield (token id, log-probabilities) pairs, the first after the whole prompt is consumed.
    ``logits_processors`` (``make_logits_processors``) map (all tokens so far, logits) to logits
    before sampling, as mlx-lm's."""
    sampler = sampler or make_sampler()
    tokens = prompt if isinstance(prompt, mx.array) else mx.array(list(prompt), mx.uint32)
    if tokens.size == 0:
        raise ValueError("the prompt has no tokens")
    if prompt_cache is None:
        # capacity rounded up, so generations of nearby lengths share a compiled decode step
        need = tokens.size + max(max_tokens, 0)
        prompt_cache = make_prompt_cache(model, -(-need // _CAPACITY_STEP) * _CAPACITY_STEP)

    history = []  # the tokens the logits processors see: prompt, then generated ones

    # Greedy sampling (a function of the logits alone) is part of the compiled decode step: one
    # program computes the token and its log-probabilities.
    folded = sampler is greedy and not logits_processors
    decode = _fixed_shape_decode(model, prompt_cache, sample=folded)

    def step(chunk):
        out = decode(chunk) if chunk.size == 1 and decode is not None else None
        if out is not None and folded:
            return out
        logits = out
        if logits is None:
            logits = model(chunk[None], cache=prompt_cache)[:, -1, :]
        if logits_processors:
            history.append(chunk)
            seen = mx.concatenate(history) if len(history) > 1 else chunk
            history[:] = [seen]
            for processor in logits_processors:
                logits = processor(seen, logits)
        return _sampled(logits, sampler)

    while tokens.size > prefill_step_size:
        mx.eval([c.state for c in prompt_cache])
        model(tokens[:prefill_step_size][None], cache=prompt_cache)
        if logits_processors:
            history.append(tokens[:prefill_step_size])
        tokens = tokens[prefill_step_size:]
    try:
        token, logprobs = step(tokens)
        for n in range(max_tokens):
            eval_arrays((token, logprobs), read=(token,))  # a GPU executor sends the token back in the same submission
            value = token.item()
            yield value, logprobs
            if n + 1 < max_tokens:
                token, logprobs = step(mx.array([value], mx.uint32))
    finally:
        if decode is not None:
            decode.release()  # the caches hold the whole generation again


def _sampled(logits, sampler) -> tuple:
    """(the token ``sampler`` picks, the log-probabilities of the first row) for last-position
    ``logits`` (1, vocab)."""
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    return sampler(logprobs), logprobs[0]


# The compiled decode step of the model generated from last, kept for the next generation: (weak
# reference to the model, its parameter arrays' ids, the caches' shapes and dtypes, the step, the box
# holding weak references to the caches it runs on). A generation on caches of the same shapes
# (capacities are rounded, ``_CAPACITY_STEP``) reuses it: no trace, no new program.
_LAST_STEP: list = []
_CAPACITY_STEP = 128


def _fixed_shape_decode(model, caches: list, sample: bool = False):
    """A function running the model on one token at the caches' position, compiled so that every
    call records the same graph: the position is an array input (``models.cache``), and the keys
    and values are the caches' whole buffers. It returns the last position's logits, or with
    ``sample`` (greedy sampling) the token and the log-probabilities. The first call traces it
    (computing its constants, such as float32 copies of quantization scales, once) and, where the
    executor runs programs, captures its program (``compile_for_replays``); from the second call on
    it runs as that program, at once (``now``); once it has,
    the step is bound to the caches (``bind``) and holds their buffers, writing them in place, until
    ``decode.release()`` gives them back (generate_step does when it ends). The step is kept for the
    next generation with the same model (the same parameter arrays) and caches of the same shapes.
    None when the caches are not all plain ``KVCache``s."""
    if not caches or not all(type(c) is KVCache for c in caches):
        return None
    found = []  # [the compiled step, the box holding the caches it runs on], at the first call
    bound = []  # [the step bound to the caches (``BoundCall``), the next position, the capacity]
    binds = [3]  # attempts to bind left (a step that cannot be bound stops trying)

    def release():
        """Give the caches back their buffers and position from the bound step."""
        if bound:
            call, offset, _ = bound
            bound.clear()
            for c, (keys, values) in zip(caches, call.release()[1]):
                c.keys, c.values, c.offset = keys, values, offset

    def bound_step(chunk):
        """The bound step on ``chunk``; None (the caches given their buffers back) where it declines."""
        call, offset, capacity = bound
        out = call(chunk[None], mx.array(offset, mx.int32)) if offset < capacity else None
        if out is not None:
            bound[1] = offset + 1
            return tuple(out) if sample else out[0]
        if offset < capacity and binds[0]:
            binds[0] -= 1  # a bound step that declined counts as a failed attempt
        release()
        return None

    # (``decode`` never refers to itself: a closure in a cycle, holding the caches, would outlive its
    # generation until the garbage collector ran, and the next generation's caches would come first)
    def decode(chunk):
        first = True
        while True:
            if bound:
                out = bound_step(chunk)
                if out is not None:
                    return out
            offset = caches[0].offset
            if any(c.offset != offset for c in caches) or not all(c.reserve(1) for c in caches):
                return None
            if not found:
                found.extend(_decode_step(model, caches, sample))
            step = found[0]
            capacity = caches[0].keys.shape[2]
            args = (chunk[None], mx.array(offset, mx.int32), [(c.keys, c.values) for c in caches])
            for c in caches:  # the step may write the new entry into buffers that only it holds
                c.keys = c.values = None
            result = step.now(*args)  # run at once once the step has its program (see ``now``)
            if result is None and first and binds[0] and _binds_tapes():
                # A GPU executor binds a step traced before (by an earlier generation) before it runs:
                # this call is already the bound call's (``backend.gpu_bind``), with no graph before it.
                first = False
                call = step.bind(*args)
                if call is not None:
                    del args
                    bound[:] = [call, offset, capacity]
                    continue
            break
        ran_now = result is not None
        out, state = step(*args) if result is None else result
        del args, result
        tapes = not ran_now and binds[0] and _binds_tapes()
        if tapes:  # a GPU executor binds the step's tape (``backend.gpu_bind``): its state realized first
            eval_arrays(array_leaves((out, state)), read=array_leaves(out))
        if (ran_now or tapes) and binds[0] and all(c.offset == offset for c in caches):
            # From the next token on, the step is bound to the caches: it writes them in place, and
            # a step costs the host a few arrays, not a pass over every cache (``BoundCall``).
            args = (chunk[None], mx.array(offset + 1, mx.int32), state)
            del state
            call = step.bind(*args)
            state = args[2]
            del args
            binds[0] -= call is None
            if call is not None:
                del state
                bound[:] = [call, offset + 1, capacity]
                return out
        for c, (keys, values) in zip(caches, state):
            c.keys, c.values, c.offset = keys, values, offset + 1
        return out

    decode.release = release
    return decode


def _decode_step(model, caches: list, sample: bool) -> tuple:
    """(compiled step, box) for ``model`` on ``caches``: the last generation's when it fits."""
    from ..utils import tree_flatten

    key = (tuple(id(p) for _, p in tree_flatten(model.parameters())),
           tuple((c.keys.shape, c.keys.dtype, c.values.shape, c.values.dtype) for c in caches), sample)
    held = [weakref.ref(c) for c in caches]  # the step keeps no generation's caches alive
    if _LAST_STEP and _LAST_STEP[0]() is model and _LAST_STEP[1] == key:
        compiled, box = _LAST_STEP[2], _LAST_STEP[3]
        box[0] = held
        return compiled, box
    box = [held]

    def forward(tokens, position, state):  # runs when the step is traced (for new shapes)
        current = [ref() for ref in box[0]]
        saved = [(c.keys, c.values, c.offset) for c in current]
        try:
            for c, (keys, values) in zip(current, state):
                c.keys, c.values, c.offset = keys, values, position
            logits = model(tokens, cache=current)[:, -1, :]
            if sample:
                logits = _sampled(logits, greedy)
            return logits, [(c.keys, c.values) for c in current]
        finally:
            for c, (keys, values, offset) in zip(current, saved):
                c.keys, c.values, c.offset = keys, values, offset

    compiled = compile_for_replays(forward)
    _LAST_STEP[:] = [weakref.ref(model), key, compiled, box]
    return compiled, box


def stream_generate(model, tokenizer, prompt: Union[str, list], max_tokens: int = 256,
                    sampler: Callable = None, **kwargs) -> Generator[GenerationResponse, None, None]:
    """Yield a ``GenerationResponse`` per generated token, ``text`` holding the new characters."""
    if isinstance(prompt, str):
        prompt = tokenizer.encode(prompt, add_special_tokens=not prompt.startswith(tokenizer.bos_token or "\0"))
    prompt = list(prompt)
    detokenizer = tokenizer.detokenizer
    eos = tokenizer.eos_token_ids
    mx.reset_peak_memory()
    start = time.perf_counter()
    prompt_tps = 0.0
    n = 0
    for n, (token, logprobs) in enumerate(generate_step(prompt, model, max_tokens=max_tokens,
                                                        sampler=sampler, **kwargs), start=1):
        if n == 1:
            prompt_time = time.perf_counter() - start
            prompt_tps = len(prompt) / prompt_time
            start = time.perf_counter()
        finish = "stop" if token in eos else ("length" if n == max_tokens else None)
        if token not in eos:
            detokenizer.add_token(token)
        if finish:
            detokenizer.finalize()
        elapsed = time.perf_counter() - start
        yield GenerationResponse(text=detokenizer.last_segment, token=token, logprobs=logprobs,
                                 prompt_tokens=len(prompt), prompt_tps=prompt_tps, generation_tokens=n,
                                 generation_tps=(n - 1) / elapsed if n > 1 and elapsed > 0 else 0.0,
                                 peak_memory=mx.get_peak_memory() / 1e9, finish_reason=finish)
        if finish:
            break


def generate(model, tokenizer, prompt: Union[str, list], max_tokens: int = 256, verbose: bool = False,
             **kwargs) -> str:
    """The generated text; with ``verbose``, printed as it comes, then mlx-lm's speed summary."""
    text = ""
    response = None
    if verbose:
        print("=" * 10)
    for response in stream_generate(model, tokenizer, prompt, max_tokens, **kwargs):
        text += response.text
        if verbose:
            print(response.text, end="", flush=True)
    if verbose:
        print()
        print("=" * 10)
        if response is None:
            print("No text generated for this prompt")
        else:
            print(f"Prompt: {response.prompt_tokens} tokens, {response.prompt_tps:.3f} tokens-per-sec")
            print(f"Generation: {response.generation_tokens} tokens, "
                  f"{response.generation_tps:.3f} tokens-per-sec")
            print(f"Peak memory: {response.peak_memory:.3f} GB")
    return text
