"""Text generation: prefill in chunks, then one decode step per token against a preallocated
key/value cache, streaming text as whole characters, shaped like mlx-lm's ``stream_generate``."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Generator, Optional, Union

import mlxarm.core as mx

from .models.cache import make_prompt_cache
from .sample import make_sampler


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
                  prompt_cache: list = None, prefill_step_size: int = 512) -> Generator:
    """Yield (token id, log-probabilities) pairs, the first after the whole prompt is consumed."""
    sampler = sampler or make_sampler()
    tokens = prompt if isinstance(prompt, mx.array) else mx.array(list(prompt), mx.uint32)
    if tokens.size == 0:
        raise ValueError("the prompt has no tokens")
    if prompt_cache is None:
        prompt_cache = make_prompt_cache(model, tokens.size + max(max_tokens, 0))

    def step(chunk):
        logits = model(chunk[None], cache=prompt_cache)[:, -1, :]
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        return sampler(logprobs), logprobs[0]

    while tokens.size > prefill_step_size:
        mx.eval([c.state for c in prompt_cache])
        model(tokens[:prefill_step_size][None], cache=prompt_cache)
        tokens = tokens[prefill_step_size:]
    token, logprobs = step(tokens)
    for n in range(max_tokens):
        mx.eval(token, logprobs)
        value = token.item()
        yield value, logprobs
        if n + 1 < max_tokens:
            token, logprobs = step(mx.array([value], mx.uint32))


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
