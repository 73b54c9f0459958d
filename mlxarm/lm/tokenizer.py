"""Tokenizers from GGUF metadata: byte-level BPE (``tokenizer.ggml.model`` "gpt2") with the
pre-tokenizer llama.cpp names in ``tokenizer.ggml.pre``, special tokens matched whole, streaming
detokenization and chat templates."""
from __future__ import annotations

import codecs
import re
import sys
import unicodedata
from functools import lru_cache

# GGUF token types.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


@lru_cache(maxsize=1)
def _unicode_classes() -> tuple:
    """Regex class bodies for \\p{L} and \\p{N}, which Python's ``re`` lacks."""
    letters, numbers = [], []
    for cp in range(sys.maxunicode + 1):
        cat = unicodedata.category(chr(cp))
        if cat[0] == "L":
            letters.append(cp)
        elif cat[0] == "N":
            numbers.append(cp)
    return _ranges(letters), _ranges(numbers)


def _ranges(codepoints: list) -> str:
    parts, start, prev = [], codepoints[0], codepoints[0]
    for cp in codepoints[1:] + [None]:
        if cp is not None and cp == prev + 1:
            prev = cp
            continue
        parts.append(re.escape(chr(start)) if start == prev
                     else f"{re.escape(chr(start))}-{re.escape(chr(prev))}")
        if cp is not None:
            start = prev = cp
    return "".join(parts)


# Pre-tokenizer expressions, written with \p{L}/\p{N} and expanded for ``re``. Each entry is a
# list applied in turn, as llama.cpp does: every expression splits the pieces the previous left.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
           r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = _LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
_PRE_TOKENIZERS = {
    "default": [_GPT2], "gpt2": [_GPT2], "gpt-2": [_GPT2],
    # Digits split one by one first (the HF Digits(individual_digits=True) pre-tokenizer).
    "smollm": [r"\p{N}", _GPT2], "starcoder": [r"\p{N}", _GPT2], "refact": [r"\p{N}", _GPT2],
    "llama-bpe": [_LLAMA3], "llama3": [_LLAMA3], "qwen2": [_QWEN2],
}


def _compile(expression: str):
    letters, numbers = _unicode_classes()
    expression = expression.replace(r"[^\s\p{L}\p{N}]", f"[^\\s{letters}{numbers}]")
    expression = expression.replace(r"[^\r\n\p{L}\p{N}]", f"[^\\r\\n{letters}{numbers}]")
    expression = expression.replace(r"\p{L}", f"[{letters}]").replace(r"\p{N}", f"[{numbers}]")
    return re.compile(expression)


@lru_cache(maxsize=1)
def _byte_symbols() -> tuple:
    """GPT-2's reversible map of the 256 byte values onto printable characters, and back."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    symbols, extra = {}, 0
    for b in range(256):
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return symbols, {c: b for b, c in symbols.items()}


class TokenizerError(ValueError):
    """A tokenizer description (GGUF metadata) that is missing or not supported."""


class BPETokenizer:
    """A byte-level BPE tokenizer from GGUF metadata, with the encode/decode/chat-template surface
    of the tokenizer mlx-lm wraps."""

    def __init__(self, metadata: dict):
        model = metadata.get("tokenizer.ggml.model")
        if model is None:
            raise TokenizerError("GGUF metadata has no tokenizer (key 'tokenizer.ggml.model' is missing)")
        if model != "gpt2":
            raise TokenizerError(f"tokenizer model '{model}' is not supported (supported: gpt2 byte-level BPE)")
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
            if key not in metadata:
                raise TokenizerError(f"GGUF metadata lacks the tokenizer key '{key}'")
        self.tokens = list(metadata["tokenizer.ggml.tokens"])
        self.vocab = {t: i for i, t in enumerate(self.tokens)}
        types = metadata.get("tokenizer.ggml.token_type")
        self.token_types = ([int(t) for t in types.tolist()] if types is not None
                            else [_NORMAL] * len(self.tokens))
        self.merge_ranks = {}
        for rank, merge in enumerate(metadata["tokenizer.ggml.merges"]):
            left, _, right = merge.partition(" ")
            self.merge_ranks[(left, right)] = rank

        pre = metadata.get("tokenizer.ggml.pre", "default")
        if pre not in _PRE_TOKENIZERS:
            raise TokenizerError(f"pre-tokenizer '{pre}' is not supported "
                                 f"(supported: {', '.join(sorted(_PRE_TOKENIZERS))})")
        self.pre_tokenizer = pre
        self._splitters = [_compile(e) for e in _PRE_TOKENIZERS[pre]]

        def token_id(key):
            value = metadata.get(f"tokenizer.ggml.{key}")
            return int(value.item()) if value is not None else None

        self.bos_token_id = token_id("bos_token_id")
        self.eos_token_id = token_id("eos_token_id")
        self.unk_token_id = token_id("unknown_token_id")
        self.pad_token_id = token_id("padding_token_id")
        flag = metadata.get("tokenizer.ggml.add_bos_token")
        self.add_bos_token = bool(flag.item()) if flag is not None else False
        self.eos_token_ids = {i for i in (self.eos_token_id, token_id("eot_token_id"), token_id("eom_token_id"))
                              if i is not None}
        self.chat_template = metadata.get("tokenizer.chat_template")

        self.special_ids = {i for i, t in enumerate(self.token_types) if t in (_CONTROL, _USER_DEFINED)}
        specials = sorted((self.tokens[i] for i in self.special_ids if self.tokens[i]), key=len, reverse=True)
        self._special_split = (re.compile("(" + "|".join(map(re.escape, specials)) + ")")
                               if specials else None)
        self._byte_of = _byte_symbols()[1]
        self._symbol_of = _byte_symbols()[0]
        self._bpe_cache = {}

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def bos_token(self):
        return self.tokens[self.bos_token_id] if self.bos_token_id is not None else None

    @property
    def eos_token(self):
        return self.tokens[self.eos_token_id] if self.eos_token_id is not None else None

    # --- encoding ---------------------------------------------------------------------------------
    def _pre_tokenize(self, text: str) -> list:
        pieces = [text]
        for splitter in self._splitters:
            split = []
            for piece in pieces:
                pos = 0
                for m in splitter.finditer(piece):
                    if m.start() > pos:
                        split.append(piece[pos:m.start()])
                    if m.end() > m.start():
                        split.append(m.group())
                    pos = m.end()
                if pos < len(piece):
                    split.append(piece[pos:])
            pieces = split
        return pieces

    def _bpe(self, piece: str) -> list:
        cached = self._bpe_cache.get(piece)
        if cached is not None:
            return cached
        word = [self._symbol_of[b] for b in piece.encode("utf-8")]
        ranks = self.merge_ranks
        while len(word) > 1:
            best, best_rank = None, None
            for pair in zip(word, word[1:]):
                rank = ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best, best_rank = pair, rank
            if best is None:
                break
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == best[0] and word[i + 1] == best[1]:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        ids = []
        for symbol in word:
            if symbol in self.vocab:
                ids.append(self.vocab[symbol])
            elif self.unk_token_id is not None:
                ids.append(self.unk_token_id)
            else:
                raise TokenizerError(f"symbol {symbol!r} is not in the vocabulary and there is no unknown token")
        if len(self._bpe_cache) < 100_000:
            self._bpe_cache[piece] = ids
        return ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list:
        """Token ids of ``text``; special tokens written in it are recognized whole."""
        ids = [self.bos_token_id] if add_special_tokens and self.add_bos_token and self.bos_token_id is not None else []
        segments = self._special_split.split(text) if self._special_split else [text]
        for n, segment in enumerate(segments):
            if n % 2:
                ids.append(self.vocab[segment])
            elif segment:
                for piece in self._pre_tokenize(segment):
                    ids.extend(self._bpe(piece))
        return ids

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": self.encode(text, add_special_tokens)}

    # --- decoding ---------------------------------------------------------------------------------
    def token_bytes(self, token_id: int) -> bytes:
        token = self.tokens[token_id]
        if token_id in self.special_ids:
            return token.encode("utf-8")
        byte_of = self._byte_of
        return bytes(byte_of[c] for c in token if c in byte_of) if all(c in byte_of for c in token) \
            else token.encode("utf-8")

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        if isinstance(ids, int):
            ids = [ids]
        data = b"".join(self.token_bytes(int(i)) for i in ids
                        if not (skip_special_tokens and int(i) in self.special_ids))
        return data.decode("utf-8", errors="replace")

    def convert_ids_to_tokens(self, ids):
        return self.tokens[ids] if isinstance(ids, int) else [self.tokens[i] for i in ids]

    @property
    def detokenizer(self) -> "StreamingDetokenizer":
        return StreamingDetokenizer(self)

    # --- chat ---------------------------------------------------------------------------------
    def apply_chat_template(self, messages: list, add_generation_prompt: bool = True,
                            tokenize: bool = True, chat_template: str = None, **kwargs):
        """The conversation rendered by the model's chat template (a sandboxed jinja2 environment
        when jinja2 is installed, else the ChatML format the template describes)."""
        text = render_chat(chat_template or self.chat_template, messages,
                           add_generation_prompt=add_generation_prompt,
                           bos_token=self.bos_token or "", eos_token=self.eos_token or "", **kwargs)
        return self.encode(text, add_special_tokens=False) if tokenize else text


class StreamingDetokenizer:
    """Text of a growing token sequence, released only as whole UTF-8 characters."""

    def __init__(self, tokenizer: BPETokenizer):
        self.tokenizer = tokenizer
        self.reset()

    def reset(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.tokens = []
        self.text = ""
        self._segment = ""

    def add_token(self, token_id: int):
        self.tokens.append(token_id)
        new = self._decoder.decode(self.tokenizer.token_bytes(token_id))
        self._segment += new
        self.text += new

    def finalize(self):
        tail = self._decoder.decode(b"", final=True)
        self._segment += tail
        self.text += tail

    @property
    def last_segment(self) -> str:
        segment, self._segment = self._segment, ""
        return segment


_DEFAULT_SYSTEM = re.compile(r"messages\[0\]\['role'\] != 'system'.*?'<\|im_start\|>system\n(.*?)<\|im_end\|>",
                             re.S)


def render_chat(template, messages: list, add_generation_prompt: bool = True, **context) -> str:
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        return _render_chatml(template, messages, add_generation_prompt)
    if not template:
        return _render_chatml(template, messages, add_generation_prompt)

    def raise_exception(message):
        raise ValueError(f"chat template error: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                             **context)


def _render_chatml(template, messages: list, add_generation_prompt: bool) -> str:
    """ChatML (``<|im_start|>role\\n...<|im_end|>``), with the default system message the
    template inserts when the conversation has none."""
    parts = []
    default = _DEFAULT_SYSTEM.search(template or "")
    if default and messages and messages[0]["role"] != "system":
        parts.append(f"<|im_start|>system\n{default.group(1)}<|im_end|>\n")
    for m in messages:
        parts.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def tokenizer_from_gguf(metadata: dict) -> BPETokenizer:
    return BPETokenizer(metadata)
