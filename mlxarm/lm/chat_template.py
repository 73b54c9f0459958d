"""Chat templates: jinja2 templates (from GGUF ``tokenizer.chat_template`` or tokenizer_config.json)
rendered in a sandbox with the environment HF ``transformers`` gives them (trim_blocks, lstrip_blocks,
``raise_exception``, ``strftime_now``, a ``tojson`` that keeps non-ASCII text), so prompts are
byte-identical to mlx-lm's. jinja2 is optional (``pip install jinja2`` or the ``lm`` extra): without
it everything else works and rendering raises an ImportError saying so."""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache


class ChatTemplateError(ValueError):
    """A chat template that raised (``raise_exception``) or failed to render."""


def _jinja():
    try:
        import jinja2  # noqa: F401
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ImportError("rendering the chat template needs jinja2: pip install jinja2 "
                          "(or pip install 'mlxarm[lm]')") from None
    return ImmutableSandboxedEnvironment


def _generation_tag():
    """``{% generation %}...{% endgeneration %}``, which HF's templates use to mark the assistant's
    text for training masks: rendered as its body."""
    from jinja2 import nodes
    from jinja2.ext import Extension

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    return Generation


@lru_cache(maxsize=16)
def _compiled(template: str):
    environment_class = _jinja()
    import jinja2
    from jinja2.ext import loopcontrols

    def raise_exception(message):
        raise ChatTemplateError(f"chat template error: {message}")

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    env = environment_class(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _generation_tag()])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as problem:
        raise ChatTemplateError(f"chat template does not parse: {problem} (line {problem.lineno})") from None


def render_chat_template(template: str, messages: list, add_generation_prompt: bool = False,
                         tools: list = None, **context) -> str:
    """The text of ``messages`` (a list of {"role", "content"} dicts) under ``template``."""
    if not isinstance(messages, (list, tuple)) or not all(isinstance(m, dict) for m in messages):
        raise TypeError("messages must be a list of dicts with 'role' and 'content'")
    _jinja()  # before the cache, so a missing jinja2 is reported even for a template seen before
    compiled = _compiled(template)
    import jinja2

    try:
        return compiled.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                               tools=tools, **context)
    except jinja2.TemplateError as problem:
        raise ChatTemplateError(f"chat template failed to render: {problem}") from None
