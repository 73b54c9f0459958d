"""mlxarm.lm tokenizers against the reference libraries: tiny BPE tokenizers trained with HF
``tokenizers`` (byte-level with the GPT-2, SmolLM and Llama-3/Qwen2 pre-tokenizers; SentencePiece-style
with byte fallback) and a SentencePiece BPE model trained with ``sentencepiece``, loaded from
tokenizer.json folders and from GGUF metadata written by ``mx.save_gguf``; ids and decoded text must
match the library's on multilingual text. Also: save_pretrained read back by HF ``transformers``,
chat templates rendered as transformers renders them, and the error paths."""
import functools
import io
import json
import sys

import pytest

import mlxarm.core as mx
from mlxarm.lm.tokenizer import Tokenizer, TokenizerError, compile_pattern, load_tokenizer, tokenizer_from_gguf

CORPUS = """The quick brown fox jumps over the lazy dog. It's 2024; don't panic!   Whitespace   runs\t\ttabs
Le cœur a ses raisons que la raison ne connaît point. Ça va très bien, merci — à bientôt.
Grüße aus München! Die Straße ist schön, übermäßig große Äpfel.
我们一起学习中文。今天天气很好，我们去公园吧！
日本語のテキストです。カタカナとひらがな、漢字を混ぜます。
Привет, как дела? Это русский текст с цифрами 12345.
مرحبا بالعالم، هذه جملة باللغة العربية ٣٤٥.
Emoji: 🤖🎉👩‍👩‍👧 ½ ²
def fibonacci(n):
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)  # recursion
numbers 3.14159 and 1,000,000 and 0x1F; I'LL we've THEY'RE"""
# Texts to encode: each corpus line, the whole corpus, edge cases, and characters never trained on
# (unknown to the vocabulary: byte fallback or byte-level bytes).
TEXTS = CORPUS.split("\n") + [CORPUS, "", " ", " leading", "  two leading", "trailing  ", "\n\n\n",
                              "ɸ unseen ǂ 🦜 ꙮ", "Ünïcödé NFC e\u0301"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


# --- tokenizers trained with the reference libraries (cached: training takes a fraction of a second) ---
@functools.lru_cache(maxsize=None)
def hf_tokenizer(style: str):
    """A tokenizers.Tokenizer trained on CORPUS: byte-level BPE with a pre-tokenizer ``style``
    (gpt2, smollm, llama3, qwen2) or SentencePiece-style BPE with byte fallback ("sp")."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers

    if style == "sp":
        tok = tokenizers.Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
        specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
        trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=specials, show_progress=False)
    else:
        from mlxarm.lm.tokenizer import _LLAMA3, _QWEN2

        tok = tokenizers.Tokenizer(models.BPE(ignore_merges=style == "llama3"))
        if style == "gpt2":
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        elif style == "smollm":
            tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                         pre_tokenizers.ByteLevel(add_prefix_space=False)])
        else:
            pattern = _LLAMA3 if style == "llama3" else _QWEN2
            if style == "qwen2":
                tok.normalizer = normalizers.NFC()
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS] * 3, trainer)
    return tok


def hf_folder(style: str, folder) -> str:
    """``hf_tokenizer(style)`` saved as a model folder (tokenizer.json + tokenizer_config.json)."""
    tok = hf_tokenizer(style)
    tok.save(str(folder / "tokenizer.json"))
    bos, eos = ("<s>", "</s>") if style == "sp" else ("<|im_start|>", "<|im_end|>")
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": bos, "eos_token": eos}))
    return str(folder)


@functools.lru_cache(maxsize=None)
def sentencepiece_model():
    """(SentencePieceProcessor, ModelProto) of a BPE model trained on CORPUS as Llama's is set up:
    byte fallback, no normalization, whitespace kept, a dummy space prefix."""
    spm = pytest.importorskip("sentencepiece")
    from sentencepiece import sentencepiece_model_pb2

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.split("\n") * 3), model_writer=buffer, vocab_size=700, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        character_coverage=0.9995, add_dummy_prefix=True, user_defined_symbols=["<|im_start|>", "<|im_end|>"],
        minloglevel=2)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(buffer.getvalue())
    return spm.SentencePieceProcessor(model_proto=buffer.getvalue()), proto


def gguf_metadata(path, metadata: dict) -> dict:
    """``metadata`` written into a GGUF file by mx.save_gguf and read back."""
    mx.save_gguf(str(path), {"unused": mx.zeros((1,))}, metadata)
    return mx.load(str(path), return_metadata=True)[1]


def sentencepiece_gguf(path, add_bos=True) -> dict:
    sp, proto = sentencepiece_model()
    kind = proto.SentencePiece
    types = {kind.NORMAL: 1, kind.UNKNOWN: 2, kind.CONTROL: 3, kind.USER_DEFINED: 4, kind.UNUSED: 5, kind.BYTE: 6}
    return gguf_metadata(path, {
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": [p.piece for p in proto.pieces],
        "tokenizer.ggml.scores": mx.array([p.score for p in proto.pieces], mx.float32),
        "tokenizer.ggml.token_type": mx.array([types[p.type] for p in proto.pieces], mx.int32),
        "tokenizer.ggml.bos_token_id": mx.array(sp.bos_id(), mx.uint32),
        "tokenizer.ggml.eos_token_id": mx.array(sp.eos_id(), mx.uint32),
        "tokenizer.ggml.unknown_token_id": mx.array(sp.unk_id(), mx.uint32),
        "tokenizer.ggml.add_bos_token": mx.array(add_bos), "tokenizer.ggml.add_space_prefix": mx.array(True)})


def bytelevel_gguf(path, style: str, pre: str) -> dict:
    """The byte-level tokenizer ``hf_tokenizer(style)`` as llama.cpp writes it into a GGUF file."""
    spec = json.loads(hf_tokenizer(style).to_str())
    vocab = spec["model"]["vocab"]
    tokens = [None] * len(vocab)
    for token, i in vocab.items():
        tokens[i] = token
    types = [3 if t in SPECIALS else 1 for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return gguf_metadata(path, {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": mx.array(types, mx.int32), "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": mx.array(1, mx.uint32), "tokenizer.ggml.eos_token_id": mx.array(2, mx.uint32)})


def assert_same_as_hf(ours: Tokenizer, reference, texts=TEXTS):
    for text in texts:
        expected = reference.encode(text).ids
        assert ours.encode(text) == expected, text
        assert ours.decode(expected) == reference.decode(expected, skip_special_tokens=False), text


# --- tokenizer.json folders ------------------------------------------------------------------------
@pytest.mark.parametrize("style", ["gpt2", "smollm", "llama3", "qwen2", "sp"])
def test_tokenizer_json_matches_hf_tokenizers(tmp_path, style):
    pytest.importorskip("tokenizers")
    reference = hf_tokenizer(style)
    ours = load_tokenizer(hf_folder(style, tmp_path))
    assert_same_as_hf(ours, reference, TEXTS + ["<|im_start|>user\nhi<|im_end|>\n", "a<s>b</s>"])
    for text in TEXTS:
        if style != "qwen2" or text.isascii():  # NFC changes the text itself
            assert ours.decode(ours.encode(text)) == text


def test_sentencepiece_style_json_uses_byte_fallback(tmp_path):
    pytest.importorskip("tokenizers")
    ours = load_tokenizer(hf_folder("sp", tmp_path))
    ids = ours.encode("ꙮ")  # never seen in training: its three UTF-8 bytes
    assert ours.convert_ids_to_tokens(ids) == ["\u2581", "<0xEA>", "<0x99>", "<0xAE>"]
    assert ours.decode(ids) == "ꙮ"
    assert (ours.bos_token, ours.eos_token, ours.eos_token_ids) == ("<s>", "</s>", {ours.vocab["</s>"]})


# --- GGUF metadata ---------------------------------------------------------------------------------
def test_sentencepiece_gguf_matches_sentencepiece(tmp_path):
    pytest.importorskip("sentencepiece")
    sp, _ = sentencepiece_model()
    ours = tokenizer_from_gguf(sentencepiece_gguf(tmp_path / "sp.gguf"))
    assert ours.add_bos_token and ours.bos_token_id == sp.bos_id()
    for text in TEXTS:
        expected = sp.encode(text, add_bos=True)
        assert ours.encode(text) == expected, text
        assert ours.decode(expected, skip_special_tokens=True) == sp.decode(expected) == text
        assert ours.encode(text, add_special_tokens=False) == expected[1:]


def test_sentencepiece_gguf_flags_and_special_tokens(tmp_path):
    pytest.importorskip("sentencepiece")
    ours = tokenizer_from_gguf(sentencepiece_gguf(tmp_path / "sp.gguf", add_bos=False))
    assert not ours.add_bos_token
    assert ours.encode("hi") == ours.encode("hi", add_special_tokens=False)
    start = ours.vocab["<|im_start|>"]
    ids = ours.encode("<|im_start|>hi")
    # A special token is matched whole; the text after it gets the space prefix, as llama.cpp does.
    assert ids[0] == start and ids[1:] == ours.encode("hi")
    assert ours.decode(ids) == "<|im_start|> hi"
    detok = ours.detokenizer
    for t in ours.encode("Grüße 🤖 日本"):
        detok.add_token(t)
        assert "\ufffd" not in detok.last_segment
    detok.finalize()
    assert detok.text == "Grüße 🤖 日本"  # the space prefix is dropped while streaming too


@pytest.mark.parametrize("style,pre", [("smollm", "smollm"), ("gpt2", "gpt2"), ("llama3", "llama-bpe"),
                                       ("qwen2", "qwen2")])
def test_bytelevel_gguf_pre_tokenizers_match_hf(tmp_path, style, pre):
    pytest.importorskip("tokenizers")
    ours = tokenizer_from_gguf(bytelevel_gguf(tmp_path / "b.gguf", style, pre))
    reference = hf_tokenizer(style)
    # llama.cpp applies no NFC: compare on text already in NFC.
    import unicodedata
    assert_same_as_hf(ours, reference, [unicodedata.normalize("NFC", t) for t in TEXTS])


def hand_built_metadata() -> dict:
    """A SentencePiece vocabulary written here: "▁hello" and "▁world" score best, 256 byte tokens."""
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + \
        ["\u2581", "h", "e", "l", "o", "w", "r", "d", "ll", "\u2581h", "\u2581w", "or", "\u2581he", "\u2581hell",
         "\u2581hello", "\u2581wor", "ld", "\u2581world"]
    types = [2, 3, 3] + [6] * 256 + [1] * 18
    scores = [0.0] * 259 + [-float(i) for i in range(18)]
    scores[pieces.index("\u2581hello")], scores[pieces.index("\u2581world")] = 5.0, 4.0
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": pieces,
            "tokenizer.ggml.scores": mx.array(scores, mx.float32),
            "tokenizer.ggml.token_type": mx.array(types, mx.int32),
            "tokenizer.ggml.bos_token_id": mx.array(1, mx.uint32),
            "tokenizer.ggml.eos_token_id": mx.array(2, mx.uint32),
            "tokenizer.ggml.unknown_token_id": mx.array(0, mx.uint32)}


def test_hand_built_sentencepiece_gguf(tmp_path):
    """SentencePiece BPE by score: merges pick the best-scored token, spaces become ▁, characters
    outside the vocabulary fall back to <0xNN> tokens."""
    metadata = hand_built_metadata()
    ours = tokenizer_from_gguf(gguf_metadata(tmp_path / "hand.gguf", metadata))
    v = ours.vocab
    assert ours.encode("hello world") == [1, v["\u2581hello"], v["\u2581world"]]
    assert ours.encode("hé", add_special_tokens=False) == [v["\u2581h"], v["<0xC3>"], v["<0xA9>"]]
    assert ours.decode(ours.encode("hello  hé world")) == "<s> hello  hé world"
    assert ours.decode(ours.encode("hello  hé world"), skip_special_tokens=True) == "hello  hé world"
    metadata["tokenizer.ggml.add_space_prefix"] = mx.array(False)
    plain = tokenizer_from_gguf(metadata)
    assert plain.encode("hello", add_special_tokens=False) == [v["h"], v["e"], v["ll"], v["o"]]
    assert plain.decode(plain.encode(" hello world")) == "<s> hello world"


def test_unicode_property_patterns():
    letters = compile_pattern(r"\p{L}+")
    assert letters.fullmatch("GrüßeМир日本語ক")
    assert not letters.search("123 ٣ ½ 🤖")
    assert compile_pattern(r"\p{N}+").fullmatch("123٣½²")
    assert compile_pattern(r"[^\s\p{L}\p{N}]+").fullmatch("!?🤖—")
    assert compile_pattern(r"\P{L}+").fullmatch("12 !")
    # Unicode White_Space, as Oniguruma's \s: not Python's \x1c-\x1f.
    assert compile_pattern(r"\s+").fullmatch("\t\n \u3000\u2009")
    assert not compile_pattern(r"\s").search("\x1c\x1f")


def test_bad_tokenizer_descriptions_are_named(tmp_path):
    with pytest.raises(TokenizerError, match="'bert'.*not supported"):
        tokenizer_from_gguf({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(TokenizerError, match="tokenizer.ggml.scores"):
        tokenizer_from_gguf({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a", "b"]})
    with pytest.raises(TokenizerError, match="pre-tokenizer 'nonesuch'"):
        tokenizer_from_gguf({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a"],
                             "tokenizer.ggml.merges": [], "tokenizer.ggml.pre": "nonesuch"})
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer.json is not valid JSON"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "Unigram", "vocab": []}}))
    with pytest.raises(TokenizerError, match="tokenizer.json.*'Unigram' is not supported"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(TypeError, match="str"):
        tokenizer_from_gguf({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a"],
                             "tokenizer.ggml.merges": []}).encode(b"bytes")


# --- save_pretrained, read by transformers -----------------------------------------------------------
TEMPLATE = """{%- if tools %}{{- '<|im_start|>system\\nTools: ' + tools | tojson + '<|im_end|>\\n' }}{%- endif %}
{%- for message in messages %}
    {%- if message.role not in ['system', 'user', 'assistant'] %}
        {{- raise_exception('unknown role ' + message.role) }}
    {%- endif %}
    {{- '<|im_start|>' + message.role + '\\n' + message.content | trim + '<|im_end|>\\n' }}
{%- endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}
{% endif %}"""
MESSAGES = [{"role": "system", "content": "Réponds en français."}, {"role": "user", "content": " Bonjour 🤖 "},
            {"role": "assistant", "content": "Salut !"}, {"role": "user", "content": "日本語で？"}]
TOOLS = [{"type": "function", "function": {"name": "météo", "parameters": {"ville": "Zürich"}}}]


def test_merges_through_symbols_outside_the_vocabulary_and_their_saved_order(tmp_path):
    """A merge whose symbol the vocabulary lacks ("ab" below, which the reference libraries refuse)
    still applies in rank order, between merges of vocabulary tokens; save_pretrained writes the
    vocabulary and the merges back as they were given, in both merge notations."""
    vocab = {"a": 0, "b": 1, "c": 2, "d": 3, "abc": 4, "cd": 5, "abcd": 6}
    for merges in (["c d", "a b", "ab c", "abc d"], [["c", "d"], ["a", "b"], ["ab", "c"], ["abc", "d"]]):
        spec = {"model": {"type": "BPE", "vocab": vocab, "merges": merges}}
        tok = Tokenizer(spec)
        # "c d" ranks first: "abcd" -> a b cd, then "a b" -> ab cd; "ab cd" is no merge, so it stops
        # there, and "ab" (not in the vocabulary, no unknown token) is an error
        with pytest.raises(TokenizerError, match="'ab'"):
            tok.encode("abcd")
        assert tok.encode("abc") == [4]  # a b c -> ab c -> abc
        assert tok.encode("cd") == [5] and tok.encode("ba") == [1, 0]
        tok.save_pretrained(str(tmp_path))
        model = json.loads((tmp_path / "tokenizer.json").read_text())["model"]
        assert model["vocab"] == vocab and model["merges"] == merges


@pytest.mark.parametrize("source", ["smollm-gguf", "sp-gguf", "sp-json"])
def test_save_pretrained_loads_in_transformers(tmp_path, source):
    pytest.importorskip("jinja2")
    pytest.importorskip("tokenizers")
    pytest.importorskip("sentencepiece")
    transformers = pytest.importorskip("transformers")
    if source == "smollm-gguf":
        ours = tokenizer_from_gguf(bytelevel_gguf(tmp_path / "b.gguf", "smollm", "smollm"))
    elif source == "sp-gguf":
        ours = tokenizer_from_gguf(sentencepiece_gguf(tmp_path / "sp.gguf"))
    else:
        ours = load_tokenizer(hf_folder("sp", tmp_path))
    ours.chat_template = TEMPLATE
    saved = tmp_path / "saved"
    ours.save_pretrained(str(saved))
    reference = transformers.AutoTokenizer.from_pretrained(str(saved))
    back = load_tokenizer(str(saved))
    for text in TEXTS + ["<|im_start|>user\nhi<|im_end|>"]:
        assert ours.encode(text) == reference.encode(text) == back.encode(text), text
        ids = ours.encode(text)
        assert ours.decode(ids) == reference.decode(ids), text
    assert (reference.bos_token, reference.eos_token) == (ours.bos_token, ours.eos_token)
    for kwargs in ({}, {"tools": TOOLS}, {"enable_thinking": False}):
        expected = reference.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False, **kwargs)
        assert ours.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False, **kwargs) == expected
        assert back.apply_chat_template(MESSAGES, add_generation_prompt=True, **kwargs) == ours.encode(
            expected, add_special_tokens=False)
    assert ours.apply_chat_template(MESSAGES[:2], add_generation_prompt=False, tokenize=False) == \
        reference.apply_chat_template(MESSAGES[:2], add_generation_prompt=False, tokenize=False)


def test_chat_template_sandbox_and_errors(tmp_path):
    pytest.importorskip("jinja2")
    from mlxarm.lm.chat_template import ChatTemplateError, render_chat_template

    with pytest.raises(ChatTemplateError, match="unknown role tool"):
        render_chat_template(TEMPLATE, [{"role": "tool", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="does not parse"):
        render_chat_template("{% for m in messages %}", [])
    # The sandbox refuses to reach Python internals through the template.
    with pytest.raises(Exception, match="(?i)unsafe|not safely|access"):
        render_chat_template("{{ messages.__class__.__mro__[1].__subclasses__() }}", [])
    text = render_chat_template("{% for m in messages %}{% generation %}{{ m.content | tojson }}{% endgeneration %}"
                                "{% endfor %}", [{"role": "assistant", "content": "é"}])
    assert text == '"é"'  # HF's generation tag renders its body; tojson keeps non-ASCII text
    year = render_chat_template("{{ strftime_now('%Y') }}", [])
    assert year.isdigit() and len(year) == 4


def test_without_jinja2_encoding_works_and_templates_say_what_to_install(tmp_path, monkeypatch):
    ours = tokenizer_from_gguf(gguf_metadata(tmp_path / "hand.gguf", hand_built_metadata()))
    ours.chat_template = TEMPLATE
    monkeypatch.setitem(sys.modules, "jinja2", None)  # as if jinja2 were not installed
    monkeypatch.setitem(sys.modules, "jinja2.sandbox", None)
    assert ours.decode(ours.encode("hello wörld"), skip_special_tokens=True) == "hello wörld"
    with pytest.raises(ImportError, match="pip install jinja2"):
        ours.apply_chat_template(MESSAGES)
