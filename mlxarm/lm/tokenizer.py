"""Tokenizers: BPE over bytes (GPT-2 style) or over characters with SentencePiece's ``▁`` spaces and
``<0xNN>`` byte fallback, built from GGUF metadata (``tokenizer.ggml.*``: model "gpt2" or "llama") or
from a Hugging Face ``tokenizer.json`` + ``tokenizer_config.json`` folder, and written back as such a
folder (``save_pretrained``). Special tokens are matched whole; decoding streams whole characters;
chat templates are rendered by :mod:`mlxarm.lm.chat_template`.

Both sources are held in one form, the pipeline ``tokenizer.json`` describes: normalizer ->
pre-tokenizer -> BPE model -> post-processor, and a decoder. GGUF metadata is translated into that
pipeline (as llama.cpp applies it), so saving is writing the pipeline out.
"""
from __future__ import annotations

import codecs
import heapq
import json
import os
import re
import sys
import unicodedata
from functools import lru_cache

# GGUF token types.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_SPACE = "\u2581"  # SentencePiece's visible space


class TokenizerError(ValueError):
    """A tokenizer description (GGUF metadata or tokenizer.json) that is missing, malformed or not supported."""


# --- regular expressions with Unicode properties ---------------------------------------------------
# Pre-tokenizer patterns are written for Oniguruma/Rust regex (\p{L}, \p{N}, \p{Lu}...), which
# Python's ``re`` lacks: the properties are expanded into character classes built from unicodedata.
# ``\s`` is expanded too, since Python's also matches \x1c-\x1f, which Unicode's White_Space does not.
_WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


# Beyond planes 0-3 only plane 14 (tags, variation selectors) holds characters outside the "other"
# categories (unassigned Cn, private use Co), so the others need not be scanned for L, N, M, P, S, Z.
_ASSIGNED = (range(0x40000), range(0xE0000, 0xF0000))


@lru_cache(maxsize=2)
def _categories(everything: bool = False) -> dict:
    """General category (two letters) -> its code points as sorted runs (first, last): a few thousand
    pairs, where a list of every code point would keep about 10 MB alive."""
    table: dict = {}
    category = unicodedata.category
    for block in ((range(sys.maxunicode + 1),) if everything else _ASSIGNED):
        run, first, last = None, 0, 0
        for cp in block:
            cat = category(chr(cp))
            if cat != run:
                if run is not None:
                    table.setdefault(run, []).append((first, last))
                run, first = cat, cp
            last = cp
        if run is not None:
            table.setdefault(run, []).append((first, last))
    return table


@lru_cache(maxsize=None)
def _class_body(prop: str) -> str:
    """Character-class body (no brackets) of a Unicode general category such as L, N, Lu or M."""
    table = _categories(everything=prop.startswith("C"))
    runs = sorted(r for cat, rs in table.items() if cat == prop or cat[0] == prop for r in rs)
    if not runs:
        raise TokenizerError(f"pre-tokenizer pattern uses the unknown Unicode property \\p{{{prop}}}")
    merged = [list(runs[0])]
    for first, last in runs[1:]:
        if first == merged[-1][1] + 1:  # adjacent runs of two categories of ``prop``
            merged[-1][1] = last
        else:
            merged.append([first, last])
    return "".join(_escape(a) if a == b else f"{_escape(a)}-{_escape(b)}" for a, b in merged)


def _escape(cp: int) -> str:
    return f"\\U{cp:08x}"


_PROPERTY = re.compile(r"\\([pP])\{(?:gc=|General_Category=)?(\w+)\}|\\([pP])([LMNPSZC])")
_LONG_NAMES = {"Letter": "L", "Number": "N", "Mark": "M", "Punctuation": "P", "Symbol": "S",
               "Separator": "Z", "Other": "C", "Uppercase_Letter": "Lu", "Lowercase_Letter": "Ll"}


@lru_cache(maxsize=64)
def compile_pattern(pattern: str):
    """A Python ``re`` pattern equivalent to an Oniguruma pre-tokenizer pattern."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            m = _PROPERTY.match(pattern, i)
            if m:
                negated = (m.group(1) or m.group(3)) == "P"
                prop = _LONG_NAMES.get(m.group(2) or m.group(4), m.group(2) or m.group(4))
                body = _class_body(prop)
                if in_class and negated:
                    raise TokenizerError(f"pre-tokenizer pattern {pattern!r}: \\P{{...}} inside [...] "
                                         "is not supported")
                out.append(body if in_class else f"[{'^' if negated else ''}{body}]")
                i = m.end()
                continue
            nxt = pattern[i + 1:i + 2]
            if nxt == "s":
                out.append(_WHITE_SPACE if in_class else f"[{_WHITE_SPACE}]")
            elif nxt == "S" and not in_class:
                out.append(f"[^{_WHITE_SPACE}]")
            else:
                out.append(pattern[i:i + 2])
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
            out.append(c)
            i += 1
            if pattern[i:i + 1] == "^":
                out.append("^")
                i += 1
            if pattern[i:i + 1] == "]":  # a literal ] first in a class
                out.append("\\]")
                i += 1
            continue
        if c == "]" and in_class:
            in_class = False
        out.append(c)
        i += 1
    try:
        return re.compile("".join(out))
    except re.error as problem:
        raise TokenizerError(f"pre-tokenizer pattern {pattern!r} is not supported: {problem}") from None


# Pre-tokenizer expressions of the ``tokenizer.ggml.pre`` names llama.cpp writes, applied in turn
# (each splits the pieces the previous one left), as Split(..., "Isolated") steps.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
           r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = _LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
_GGUF_PRE = {
    "default": [_GPT2], "gpt2": [_GPT2], "gpt-2": [_GPT2],
    # Digits split one by one first (HF's Digits(individual_digits=True)).
    "smollm": [r"\p{N}", _GPT2], "starcoder": [r"\p{N}", _GPT2], "refact": [r"\p{N}", _GPT2],
    "llama-bpe": [_LLAMA3], "llama3": [_LLAMA3], "qwen2": [_QWEN2], "deepseek-r1-qwen": [_QWEN2],
}


@lru_cache(maxsize=1)
def _byte_symbols() -> tuple:
    """GPT-2's reversible map of the 256 byte values onto printable characters, and back."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    symbols, extra = {}, 0
    for b in range(256):
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return symbols, {c: b for b, c in symbols.items()}


_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


# --- the pipeline steps (tokenizer.json's vocabulary of components) --------------------------------
def _pattern_of(spec: dict, where: str):
    pattern = spec.get("pattern", {})
    if "Regex" in pattern:
        return compile_pattern(pattern["Regex"])
    if "String" in pattern:
        return re.compile(re.escape(pattern["String"]))
    raise TokenizerError(f"{where}: pattern {pattern!r} is neither a Regex nor a String")


def _normalizer(spec, where: str):
    """A function str -> str for a tokenizer.json normalizer (None: identity)."""
    if spec is None:
        return None
    kind = spec.get("type")
    if kind == "Sequence":
        steps = [_normalizer(s, where) for s in spec["normalizers"]]
        steps = [s for s in steps if s is not None]

        def sequence(text):
            for step in steps:
                text = step(text)
            return text
        return sequence
    if kind in ("NFC", "NFD", "NFKC", "NFKD"):
        return lambda text: unicodedata.normalize(kind, text)
    if kind == "Prepend":
        prefix = spec["prepend"]
        return lambda text: prefix + text if text else text
    if kind == "Replace":
        pattern, content = _pattern_of(spec, where), spec["content"]
        return lambda text: pattern.sub(lambda _: content, text)
    if kind == "Lowercase":
        return str.lower
    if kind == "Strip":
        left, right = spec.get("strip_left", True), spec.get("strip_right", True)
        return lambda text: (text.lstrip() if left else text).rstrip() if right else \
            (text.lstrip() if left else text)
    raise TokenizerError(f"{where}: normalizer '{kind}' is not supported "
                         "(supported: Sequence, NFC, NFD, NFKC, NFKD, Prepend, Replace, Lowercase, Strip)")


def _split(pieces: list, pattern, behavior: str = "Isolated", invert: bool = False) -> list:
    """HF's Split on (text, at_start) pieces: matches and the text between them become pieces,
    kept apart, dropped or glued to a neighbour according to ``behavior``."""
    out = []
    for text, at_start in pieces:
        spans, pos = [], 0  # (text, is_match)
        for m in pattern.finditer(text):
            if m.end() == m.start():
                continue
            if m.start() > pos:
                spans.append((text[pos:m.start()], invert))
            spans.append((m.group(), not invert))
            pos = m.end()
        if pos < len(text):
            spans.append((text[pos:], invert))
        if behavior == "Removed":
            spans = [s for s in spans if not s[1]]
        elif behavior == "MergedWithPrevious":
            merged = []
            for s, is_match in spans:
                if is_match and merged:
                    merged[-1] = (merged[-1][0] + s, False)
                else:
                    merged.append((s, False))
            spans = merged
        elif behavior == "MergedWithNext":
            merged, carry = [], ""
            for s, is_match in spans:
                if is_match:
                    carry += s
                else:
                    merged.append((carry + s, False))
                    carry = ""
            if carry:
                merged.append((carry, False))
            spans = merged
        elif behavior == "Contiguous":
            merged = []
            for s, is_match in spans:
                if merged and merged[-1][1] == is_match:
                    merged[-1] = (merged[-1][0] + s, is_match)
                else:
                    merged.append((s, is_match))
            spans = merged
        elif behavior != "Isolated":
            raise TokenizerError(f"Split behavior '{behavior}' is not supported")
        out.extend((s, at_start and n == 0) for n, (s, _) in enumerate(spans))
    return out


def _pre_tokenizer(spec, where: str):
    """A function [(text, at_start)] -> [(text, at_start)] for a tokenizer.json pre-tokenizer."""
    if spec is None:
        return None
    kind = spec.get("type")
    if kind == "Sequence":
        steps = [_pre_tokenizer(s, where) for s in spec["pretokenizers"]]

        def sequence(pieces):
            for step in steps:
                pieces = step(pieces)
            return pieces
        return sequence
    if kind == "Split":
        pattern = _pattern_of(spec, where)
        behavior, invert = spec.get("behavior", "Isolated"), spec.get("invert", False)
        return lambda pieces: _split(pieces, pattern, behavior, invert)
    if kind == "Digits":
        pattern = re.compile(r"\d" if spec.get("individual_digits") else r"\d+")
        return lambda pieces: _split(pieces, pattern)
    if kind == "ByteLevel":
        gpt2 = compile_pattern(_GPT2) if spec.get("use_regex", True) else None
        prefix = spec.get("add_prefix_space", False)
        symbols = _byte_symbols()[0]

        def byte_level(pieces):
            if prefix:
                pieces = [(" " + t if at_start and not t.startswith(" ") else t, at_start) for t, at_start in pieces]
            if gpt2 is not None:
                pieces = _split(pieces, gpt2)
            return [("".join(symbols[b] for b in t.encode("utf-8")), a) for t, a in pieces]
        return byte_level
    if kind == "Metaspace":
        replacement = spec.get("replacement", _SPACE)
        scheme = spec.get("prepend_scheme", "always" if spec.get("add_prefix_space", True) else "never")
        split = spec.get("split", True)
        splitter = re.compile(re.escape(replacement))

        def metaspace(pieces):
            out = []
            for text, at_start in pieces:
                text = text.replace(" ", replacement)
                if (scheme == "always" or (scheme == "first" and at_start)) and not text.startswith(replacement):
                    text = replacement + text
                out.append((text, at_start))
            return _split(out, splitter, "MergedWithNext") if split else out
        return metaspace
    if kind == "Whitespace":
        pattern = re.compile(r"\w+|[^\w\s]+")
        return lambda pieces: _split(pieces, pattern, "Removed", invert=True)
    if kind == "WhitespaceSplit":
        pattern = re.compile(r"\s+")
        return lambda pieces: _split(pieces, pattern, "Removed")
    raise TokenizerError(f"{where}: pre-tokenizer '{kind}' is not supported (supported: Sequence, Split, "
                         "Digits, ByteLevel, Metaspace, Whitespace, WhitespaceSplit)")


def _decoder(spec, where: str) -> tuple:
    """(per-token function str -> bytes, leading characters to strip from the whole text).

    HF decoders map token strings; every one we support either maps one token on its own or
    strips the start of the fused text, so a token's bytes can be streamed."""
    steps, strip = [], ""

    def walk(s):
        nonlocal strip
        if s is None:
            return
        kind = s.get("type")
        if kind == "Sequence":
            for d in s["decoders"]:
                walk(d)
        elif kind == "ByteLevel":
            steps.append("bytelevel")
        elif kind == "Replace":
            pattern = s["pattern"].get("String")
            if pattern is None:
                raise TokenizerError(f"{where}: decoder Replace with a regex is not supported")
            steps.append(("replace", pattern, s["content"]))
        elif kind == "ByteFallback":
            steps.append("bytefallback")
        elif kind == "Fuse":
            pass
        elif kind == "Strip":
            if s.get("stop", 0):
                raise TokenizerError(f"{where}: decoder Strip from the end is not supported")
            strip += s.get("content", " ") * s.get("start", 0)
        elif kind == "Metaspace":
            replacement = s.get("replacement", _SPACE)
            steps.append(("replace", replacement, " "))
            scheme = s.get("prepend_scheme", "always" if s.get("add_prefix_space", True) else "never")
            if scheme != "never":
                strip += " "
        else:
            raise TokenizerError(f"{where}: decoder '{kind}' is not supported (supported: Sequence, "
                                 "ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace)")

    walk(spec)
    byte_of = _byte_symbols()[1]

    def token_bytes(token: str) -> bytes:
        if "bytefallback" in steps:
            m = _BYTE_TOKEN.fullmatch(token)
            if m:
                return bytes([int(m.group(1), 16)])
        for step in steps:
            if step == "bytelevel":
                if all(c in byte_of for c in token):
                    return bytes(byte_of[c] for c in token)
            elif isinstance(step, tuple):
                token = token.replace(step[1], step[2])
        return token.encode("utf-8")

    return token_bytes, strip


class _BPE:
    """BPE: a word's symbols merged pair by pair, the lowest-ranked pair first (leftmost on ties).

    A merge of two vocabulary tokens is ranked under one integer, ``left id * stride + right id``:
    tens of thousands of merges then cost a few megabytes rather than a tuple and two strings each.
    The rare merge of a symbol the vocabulary lacks keeps its (left, right) key (``odd``)."""

    def __init__(self, vocab: dict, merges, unk_id=None, byte_fallback: bool = False,
                 fuse_unk: bool = False, ignore_merges: bool = False):
        self.vocab, self.unk_id = vocab, unk_id
        self.byte_fallback, self.fuse_unk, self.ignore_merges = byte_fallback, fuse_unk, ignore_merges
        self.stride = max(vocab.values(), default=0) + 1
        self.ranks, self.odd = {}, {}
        for rank, (left, right) in enumerate(merges):
            a, b = vocab.get(left), vocab.get(right)
            if a is not None and b is not None:
                self.ranks.setdefault(a * self.stride + b, rank)
            else:
                self.odd.setdefault((left, right), rank)
        self.cache = {}

    def rank(self, left: str, right: str, a: int, b: int):
        """The rank of merging ``left`` and ``right`` (ids ``a`` and ``b``, -1 when not in the
        vocabulary), None when no merge joins them."""
        if a >= 0 and b >= 0:
            return self.ranks.get(a * self.stride + b)
        return self.odd.get((left, right)) if self.odd else None

    def pairs(self, tokens: list) -> list:
        """The merges in rank order, as (left, right) (``tokens``: id -> token)."""
        found = [(r, tokens[k // self.stride], tokens[k % self.stride]) for k, r in self.ranks.items()]
        found += [(r, left, right) for (left, right), r in self.odd.items()]
        return [(left, right) for _, left, right in sorted(found)]

    def __call__(self, word: str) -> list:
        ids = self.cache.get(word)
        if ids is not None:
            return ids
        if self.ignore_merges and word in self.vocab:
            return [self.vocab[word]]
        symbols = list(word)
        vocab, rank_of = self.vocab, self.rank
        sid = [vocab.get(c, -1) for c in symbols]
        n = len(symbols)
        nxt, prv = list(range(1, n + 1)), list(range(-1, n - 1))
        heap = []
        for i in range(n - 1):
            rank = rank_of(symbols[i], symbols[i + 1], sid[i], sid[i + 1])
            if rank is not None:
                heap.append((rank, i, symbols[i], symbols[i + 1]))
        heapq.heapify(heap)
        while heap:
            rank, i, left, right = heapq.heappop(heap)
            j = nxt[i]
            if symbols[i] != left or j >= n or symbols[j] != right:
                continue  # stale: one side was merged since
            symbols[i], symbols[j] = left + right, None
            sid[i] = vocab.get(symbols[i], -1)
            nxt[i] = nxt[j]
            if nxt[j] < n:
                prv[nxt[j]] = i
            p, q = prv[i], nxt[i]
            if p >= 0:
                r = rank_of(symbols[p], symbols[i], sid[p], sid[i])
                if r is not None:
                    heapq.heappush(heap, (r, p, symbols[p], symbols[i]))
            if q < n:
                r = rank_of(symbols[i], symbols[q], sid[i], sid[q])
                if r is not None:
                    heapq.heappush(heap, (r, i, symbols[i], symbols[q]))
        ids, i = [], 0
        while i < n:
            symbol = symbols[i]
            if symbol in vocab:
                ids.append(vocab[symbol])
            elif self.byte_fallback and all(f"<0x{b:02X}>" in vocab for b in symbol.encode("utf-8")):
                ids.extend(vocab[f"<0x{b:02X}>"] for b in symbol.encode("utf-8"))
            elif self.unk_id is not None:
                if not (self.fuse_unk and ids and ids[-1] == self.unk_id):
                    ids.append(self.unk_id)
            else:
                raise TokenizerError(f"symbol {symbol!r} is not in the vocabulary and there is no unknown token")
            i = nxt[i]
        if len(self.cache) < 100_000 and len(word) < 256:
            self.cache[word] = ids
        return ids


class Tokenizer:
    """A tokenizer with the surface of the one mlx-lm wraps: ``encode``/``decode``, ``bos_token``,
    ``eos_token_ids``, a streaming ``detokenizer``, ``apply_chat_template`` and ``save_pretrained``.

    Built from a tokenizer.json-shaped description (``spec``); use :func:`tokenizer_from_gguf` or
    :func:`load_tokenizer` rather than calling this directly."""

    def __init__(self, spec: dict, config: dict = None, source: str = "tokenizer.json",
                 eos_token_ids=None):
        config = config or {}
        self.spec, self.config, self.source = spec, config, source
        model = spec.get("model") or {}
        kind = model.get("type", "BPE" if "merges" in model else None)
        if kind != "BPE":
            raise TokenizerError(f"{source}: tokenizer model '{kind}' is not supported (supported: BPE)")
        for key in ("continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(key):
                raise TokenizerError(f"{source}: BPE with a {key} is not supported")
        vocab = model.get("vocab")
        if not isinstance(vocab, dict) or not isinstance(model.get("merges"), list):
            raise TokenizerError(f"{source}: the BPE model lacks its vocab or merges")
        self.vocab = dict(vocab)
        # the added tokens the model's vocabulary lacks (``save_pretrained`` writes the model's alone)
        self._added_to_vocab = {t["content"] for t in spec.get("added_tokens") or [] if t["content"] not in vocab}
        for token in spec.get("added_tokens") or []:
            self.vocab.setdefault(token["content"], token["id"])
        size = max(self.vocab.values()) + 1 if self.vocab else 0
        self.tokens = [""] * size
        for token, i in self.vocab.items():
            self.tokens[i] = token
        pairs = []
        for merge in model["merges"]:
            pair = tuple(merge.split(" ", 1)) if isinstance(merge, str) else tuple(merge)
            if len(pair) != 2:
                raise TokenizerError(f"{source}: merge {merge!r} is not a pair of symbols")
            pairs.append(pair)
        self._merges_as_text = bool(model["merges"]) and isinstance(model["merges"][0], str)
        unk = model.get("unk_token")
        self.unk_token_id = self.vocab.get(unk) if unk is not None else None
        self._bpe = _BPE(self.vocab, pairs, self.unk_token_id, bool(model.get("byte_fallback")),
                         bool(model.get("fuse_unk")), bool(model.get("ignore_merges")))
        del pairs
        # The vocabulary and the merges live on in the tables above only: ``save_pretrained`` writes
        # them back from there.
        self.spec = {**spec, "model": {k: v for k, v in model.items() if k not in ("vocab", "merges")}}
        self._normalize = _normalizer(spec.get("normalizer"), source)
        self._pre_tokenize = _pre_tokenizer(spec.get("pre_tokenizer"), source)
        self._token_bytes, self._strip = _decoder(spec.get("decoder"), source)
        self._bytes = {}  # token id -> bytes, filled as tokens are decoded

        # Added tokens are matched whole before anything else, longest first.
        self.added_tokens = {t["id"]: t for t in spec.get("added_tokens") or []}
        self.special_ids = {i for i, t in self.added_tokens.items() if t.get("special")}
        alternatives = []
        for t in sorted(self.added_tokens.values(), key=lambda t: len(t["content"]), reverse=True):
            if not t["content"]:
                continue
            alternatives.append((r"\s*" if t.get("lstrip") else "") + "(" + re.escape(t["content"]) + ")"
                                + (r"\s*" if t.get("rstrip") else ""))
        self._added_split = re.compile("|".join(alternatives)) if alternatives else None

        self._prefix, self._suffix = self._post_processor(spec.get("post_processor"))

        def token_id(name):
            value = config.get(name)
            if isinstance(value, dict):
                value = value.get("content")
            return self.vocab.get(value) if isinstance(value, str) else None

        self.bos_token_id = token_id("bos_token")
        self.eos_token_id = token_id("eos_token")
        self.pad_token_id = token_id("pad_token")
        if self.unk_token_id is None:
            self.unk_token_id = token_id("unk_token")
        ids = set(eos_token_ids or [])
        if self.eos_token_id is not None:
            ids.add(self.eos_token_id)
        self.eos_token_ids = ids
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template}
            template = named.get("default") or next(iter(named.values()), None)
        self.chat_template = template

    def _post_processor(self, spec) -> tuple:
        """(ids before, ids after) a single sequence when special tokens are added."""
        if spec is None:
            return [], []
        kind = spec.get("type")
        if kind == "Sequence":
            before, after = [], []
            for s in spec.get("processors", []):
                b, a = self._post_processor(s)
                before, after = before + b, after + a
            return before, after
        if kind in ("ByteLevel",):
            return [], []
        if kind == "TemplateProcessing":
            specials = spec.get("special_tokens", {})
            before, after, seen = [], [], False
            for item in spec.get("single", []):
                if "Sequence" in item:
                    seen = True
                elif "SpecialToken" in item:
                    name = item["SpecialToken"]["id"]
                    ids = specials.get(name, {}).get("ids") or [self.vocab[name]]
                    (after if seen else before).extend(ids)
            return before, after
        if kind in ("BertProcessing", "RobertaProcessing"):
            return [spec["cls"][1]], [spec["sep"][1]]
        raise TokenizerError(f"{self.source}: post-processor '{kind}' is not supported")

    # --- properties mlx-lm's wrapper exposes -----------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def _token(self, i):
        return self.tokens[i] if i is not None else None

    @property
    def bos_token(self):
        return self._token(self.bos_token_id)

    @property
    def eos_token(self):
        return self._token(self.eos_token_id)

    @property
    def unk_token(self):
        return self._token(self.unk_token_id)

    @property
    def pad_token(self):
        return self._token(self.pad_token_id)

    @property
    def add_bos_token(self) -> bool:
        return self.bos_token_id is not None and self.bos_token_id in self._prefix

    @property
    def all_special_tokens(self) -> list:
        return [self.tokens[i] for i in sorted(self.special_ids)]

    def get_vocab(self) -> dict:
        return dict(self.vocab)

    # --- encoding ---------------------------------------------------------------------------------
    def _encode_text(self, text: str, at_start: bool) -> list:
        if self._normalize is not None:
            text = self._normalize(text)
        pieces = [(text, at_start)]
        if self._pre_tokenize is not None:
            pieces = self._pre_tokenize(pieces)
        ids = []
        for piece, _ in pieces:
            if piece:
                ids.extend(self._bpe(piece))
        return ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list:
        """Token ids of ``text``; added (special) tokens written in it are recognized whole."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        ids, pos = [], 0
        if self._added_split is not None:
            for m in self._added_split.finditer(text):
                if m.start() > pos:
                    ids.extend(self._encode_text(text[pos:m.start()], pos == 0))
                content = next(g for g in m.groups() if g is not None)
                ids.append(self.vocab[content])
                pos = m.end()
        if pos < len(text):
            ids.extend(self._encode_text(text[pos:], pos == 0))
        if add_special_tokens:
            ids = self._prefix + ids + self._suffix
        return ids

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": self.encode(text, add_special_tokens)}

    # --- decoding ---------------------------------------------------------------------------------
    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for."""
        data = self._bytes.get(token_id)
        if data is None:  # added tokens go through the decoder too, as HF decodes them
            data = self._bytes[token_id] = self._token_bytes(self.tokens[token_id])
        return data

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        if isinstance(ids, int):
            ids = [ids]
        data = b"".join(self.token_bytes(int(i)) for i in ids
                        if not (skip_special_tokens and int(i) in self.special_ids))
        text = data.decode("utf-8", errors="replace")
        for c in self._strip:
            if not text.startswith(c):
                break
            text = text[1:]
        return text

    def convert_ids_to_tokens(self, ids):
        return self.tokens[ids] if isinstance(ids, int) else [self.tokens[i] for i in ids]

    def convert_tokens_to_ids(self, tokens):
        return self.vocab.get(tokens) if isinstance(tokens, str) else [self.vocab.get(t) for t in tokens]

    @property
    def detokenizer(self) -> "StreamingDetokenizer":
        return StreamingDetokenizer(self)

    # --- chat ---------------------------------------------------------------------------------
    def apply_chat_template(self, messages: list, add_generation_prompt: bool = False, tokenize: bool = True,
                            chat_template: str = None, tools: list = None, **kwargs):
        """The conversation rendered by the model's chat template (jinja2, sandboxed, as HF renders
        it); token ids when ``tokenize``, else the text."""
        from .chat_template import render_chat_template

        template = chat_template or self.chat_template
        if not template:
            raise TokenizerError(f"{self.source}: the tokenizer has no chat template")
        context = {name: getattr(self, name) or "" for name in ("bos_token", "eos_token", "unk_token", "pad_token")}
        context.update(kwargs)
        text = render_chat_template(template, messages, add_generation_prompt=add_generation_prompt,
                                    tools=tools, **context)
        return self.encode(text, add_special_tokens=False) if tokenize else text

    # --- saving -----------------------------------------------------------------------------------
    def save_pretrained(self, folder: str) -> tuple:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into ``folder``,
        as HF ``transformers`` saves a fast tokenizer (and loads it back with AutoTokenizer)."""
        os.makedirs(folder, exist_ok=True)
        spec = dict(self.spec)
        merges = self._bpe.pairs(self.tokens)
        spec["model"] = {**spec["model"],
                         "vocab": {t: i for t, i in self.vocab.items() if t not in self._added_to_vocab},
                         "merges": [f"{a} {b}" for a, b in merges] if self._merges_as_text else
                         [[a, b] for a, b in merges]}
        spec.setdefault("version", "1.0")
        spec.setdefault("truncation", None)
        spec.setdefault("padding", None)
        special_map = {}
        for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
            token = getattr(self, name)
            if token is not None:
                special_map[name] = token
        config = {k: v for k, v in self.config.items() if k not in ("added_tokens_decoder",)}
        config.update(special_map)
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config.setdefault("clean_up_tokenization_spaces", False)
        config.setdefault("model_max_length", 1 << 30)
        if self.chat_template:
            config["chat_template"] = self.chat_template
        config["added_tokens_decoder"] = {
            str(i): {k: t.get(k, d) for k, d in (("content", ""), ("lstrip", False), ("normalized", False),
                                                  ("rstrip", False), ("single_word", False), ("special", False))}
            for i, t in sorted(self.added_tokens.items())}
        paths = []
        for name, content in (("tokenizer.json", spec), ("tokenizer_config.json", config),
                              ("special_tokens_map.json", special_map)):
            path = os.path.join(folder, name)
            with open(path, "w", encoding="utf-8") as f:
                json.dump(content, f, ensure_ascii=False, indent=1 if name != "tokenizer.json" else None)
            paths.append(path)
        return tuple(paths)


class StreamingDetokenizer:
    """Text of a growing token sequence, released only as whole UTF-8 characters."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.reset()

    def reset(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._strip = self.tokenizer._strip
        self.tokens = []
        self.text = ""
        self._segment = ""

    def _add_text(self, new: str):
        while self._strip and new:  # the decoder's leading strip, applied to the text's start only
            if new[0] != self._strip[0]:
                self._strip = ""
                break
            new, self._strip = new[1:], self._strip[1:]
        if new:
            self._strip = ""
        self._segment += new
        self.text += new

    def add_token(self, token_id: int):
        self.tokens.append(token_id)
        self._add_text(self._decoder.decode(self.tokenizer.token_bytes(token_id)))

    def finalize(self):
        self._add_text(self._decoder.decode(b"", final=True))

    @property
    def last_segment(self) -> str:
        segment, self._segment = self._segment, ""
        return segment


# --- GGUF metadata -> pipeline ---------------------------------------------------------------------
def _plain(value):
    return value.tolist() if hasattr(value, "tolist") else value


def _spec_from_gguf(metadata: dict, source: str) -> tuple:
    """(tokenizer.json-shaped spec, tokenizer_config-shaped config) from GGUF metadata, following
    llama.cpp: "gpt2" is byte-level BPE with the ``tokenizer.ggml.pre`` pre-tokenizer, "llama" is
    SentencePiece BPE (merges by token score, ``▁`` spaces, ``<0xNN>`` byte fallback)."""
    model = metadata.get("tokenizer.ggml.model")
    if model is None:
        raise TokenizerError(f"{source}: GGUF metadata has no tokenizer (key 'tokenizer.ggml.model' is missing)")
    if model not in ("gpt2", "llama"):
        raise TokenizerError(f"{source}: tokenizer model '{model}' is not supported "
                             "(supported: gpt2 byte-level BPE, llama SentencePiece BPE)")
    if "tokenizer.ggml.tokens" not in metadata:
        raise TokenizerError(f"{source}: GGUF metadata lacks the tokenizer key 'tokenizer.ggml.tokens'")
    tokens = list(metadata["tokenizer.ggml.tokens"])
    types = _plain(metadata.get("tokenizer.ggml.token_type"))
    types = [int(t) for t in types] if types is not None else [_NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise TokenizerError(f"{source}: tokenizer.ggml.token_type has {len(types)} entries for "
                             f"{len(tokens)} tokens")
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)

    def flag(key, default):
        value = metadata.get(f"tokenizer.ggml.{key}")
        return bool(_plain(value)) if value is not None else default

    def token_id(key):
        value = metadata.get(f"tokenizer.ggml.{key}")
        return int(_plain(value)) if value is not None else None

    added = [{"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": types[i] == _CONTROL}
             for i in range(len(tokens)) if types[i] in (_CONTROL, _USER_DEFINED)]
    unk = token_id("unknown_token_id")
    if model == "gpt2":
        if "tokenizer.ggml.merges" not in metadata:
            raise TokenizerError(f"{source}: GGUF metadata lacks the tokenizer key 'tokenizer.ggml.merges'")
        pre = metadata.get("tokenizer.ggml.pre", "default")
        if pre not in _GGUF_PRE:
            raise TokenizerError(f"{source}: pre-tokenizer '{pre}' is not supported "
                                 f"(supported: {', '.join(sorted(_GGUF_PRE))})")
        steps = [{"type": "Split", "pattern": {"Regex": e}, "behavior": "Isolated", "invert": False}
                 for e in _GGUF_PRE[pre]]
        steps.append({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False})
        bpe = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
               "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
               "vocab": vocab, "merges": list(metadata["tokenizer.ggml.merges"])}
        if pre in ("llama-bpe", "llama3"):
            bpe["ignore_merges"] = True
        spec = {"normalizer": None, "pre_tokenizer": {"type": "Sequence", "pretokenizers": steps},
                "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                            "use_regex": False}, "model": bpe}
        add_bos_default = False
    else:
        scores = _plain(metadata.get("tokenizer.ggml.scores"))
        if scores is None or len(scores) != len(tokens):
            raise TokenizerError(f"{source}: SentencePiece GGUF metadata needs 'tokenizer.ggml.scores', "
                                 "one per token")
        mergeable = [types[i] in (_NORMAL, _UNKNOWN) for i in range(len(tokens))]
        spec = {"normalizer": None, "pre_tokenizer": None,
                "model": {"type": "BPE", "dropout": None,
                          "unk_token": tokens[unk] if unk is not None else None,
                          "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
                          "byte_fallback": _BYTE in types, "ignore_merges": False, "vocab": vocab,
                          "merges": _merges_from_scores(tokens, scores, mergeable, vocab)}}
        space_prefix = flag("add_space_prefix", True)
        # llama.cpp puts the space prefix before every piece of text (also after special tokens),
        # as the legacy HF normalizer Prepend("▁") does; SentencePiece's decoder drops it again.
        normalizers = [{"type": "Replace", "pattern": {"String": " "}, "content": _SPACE}]
        if space_prefix:
            normalizers.insert(0, {"type": "Prepend", "prepend": _SPACE})
        spec["normalizer"] = {"type": "Sequence", "normalizers": normalizers}
        decoders = [{"type": "Replace", "pattern": {"String": _SPACE}, "content": " "},
                    {"type": "ByteFallback"}, {"type": "Fuse"}]
        if space_prefix:
            decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
        spec["decoder"] = {"type": "Sequence", "decoders": decoders}
        add_bos_default = True
    spec["added_tokens"] = added
    bos, eos = token_id("bos_token_id"), token_id("eos_token_id")
    add_bos, add_eos = flag("add_bos_token", add_bos_default), flag("add_eos_token", False)
    single = ([{"SpecialToken": {"id": tokens[bos], "type_id": 0}}] if add_bos and bos is not None else []) + \
             [{"Sequence": {"id": "A", "type_id": 0}}] + \
             ([{"SpecialToken": {"id": tokens[eos], "type_id": 0}}] if add_eos and eos is not None else [])
    pair = single + [dict(s) if "SpecialToken" in s else {"Sequence": {"id": "B", "type_id": 1}} for s in single]
    spec["post_processor"] = {
        "type": "TemplateProcessing", "single": single, "pair": pair,
        "special_tokens": {tokens[i]: {"id": tokens[i], "ids": [i], "tokens": [tokens[i]]}
                           for i in {bos if add_bos else None, eos if add_eos else None} if i is not None}}
    config = {"add_bos_token": add_bos, "add_eos_token": add_eos}
    for name, i in (("bos_token", bos), ("eos_token", eos), ("unk_token", unk),
                    ("pad_token", token_id("padding_token_id"))):
        if i is not None and 0 <= i < len(tokens):
            config[name] = tokens[i]
    template = metadata.get("tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    eos_ids = {i for i in (eos, token_id("eot_token_id"), token_id("eom_token_id")) if i is not None}
    return spec, config, eos_ids


def _merges_from_scores(tokens: list, scores: list, mergeable: list, vocab: dict) -> list:
    """BPE merges equivalent to SentencePiece's merging by score: every split of a token into two
    tokens is a merge, ranked by the merged token's score (highest first)."""
    merges = []
    for i, token in enumerate(tokens):
        if not mergeable[i] or len(token) < 2:
            continue
        for k in range(1, len(token)):
            left, right = token[:k], token[k:]
            if left in vocab and right in vocab:
                merges.append((-scores[i], vocab[left], vocab[right], left, right))
    merges.sort()
    return [[left, right] for _, _, _, left, right in merges]


def tokenizer_from_gguf(metadata: dict, source: str = "GGUF metadata") -> Tokenizer:
    """The tokenizer a GGUF file describes in its ``tokenizer.ggml.*`` metadata."""
    spec, config, eos_ids = _spec_from_gguf(metadata, source)
    return Tokenizer(spec, config, source, eos_token_ids=eos_ids)


class BPETokenizer(Tokenizer):
    """The byte-level BPE tokenizer of GGUF metadata whose ``tokenizer.ggml.model`` is "gpt2"."""

    def __init__(self, metadata: dict):
        model = metadata.get("tokenizer.ggml.model")
        if model is not None and model != "gpt2":
            raise TokenizerError(f"tokenizer model '{model}' is not supported by BPETokenizer "
                                 "(byte-level BPE, 'gpt2'); use tokenizer_from_gguf")
        spec, config, eos_ids = _spec_from_gguf(metadata, "GGUF metadata")
        super().__init__(spec, config, "GGUF metadata", eos_token_ids=eos_ids)


# --- Hugging Face / MLX folders --------------------------------------------------------------------
def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as problem:
        raise TokenizerError(f"{path} is not valid JSON: {problem}") from None


def load_tokenizer(folder: str, eos_token_ids=None) -> Tokenizer:
    """The tokenizer of an MLX / Hugging Face model folder: tokenizer.json with tokenizer_config.json
    (bos/eos tokens, chat template; or chat_template.jinja) and config.json's eos_token_id."""
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No tokenizer.json in {folder}")
    spec = _read_json(path)
    if not isinstance(spec, dict):
        raise TokenizerError(f"{path} does not hold a tokenizer description")
    config = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        extra = os.path.join(folder, name)
        if os.path.isfile(extra):
            config.update(_read_json(extra))
    jinja = os.path.join(folder, "chat_template.jinja")
    if "chat_template" not in config and os.path.isfile(jinja):
        with open(jinja, encoding="utf-8") as f:
            config["chat_template"] = f.read()
    ids = set(eos_token_ids or [])
    model_config = os.path.join(folder, "config.json")
    if not ids and os.path.isfile(model_config):
        eos = _read_json(model_config).get("eos_token_id")
        ids = set(eos) if isinstance(eos, list) else ({eos} if isinstance(eos, int) else set())
    return Tokenizer(spec, config, path, eos_token_ids=ids)
