"""The ``mlxarm-lm`` command line (generate options, the interactive ``chat``, ``--device``, the
loading progress bar, ``convert`` dispatch) and the logits processors behind ``--repetition-penalty``
(mlx-lm's ``make_logits_processors`` semantics), on a tiny random llama written as a GGUF file."""
import importlib.util
import io
import os
import re

import numpy as np
import pytest

import mlxarm.core as mx
from mlxarm.lm.sample import make_logits_processors, make_repetition_penalty



def test_repetition_penalty_follows_mlx_lm():
    """Logits of the last ``context_size`` tokens: positive ones divided by the penalty, negative
    ones multiplied; the others untouched."""
    values = np.array([[2.0, -1.0, 0.5, -3.0, 4.0, 1.5]], np.float32)
    (penalty,) = make_logits_processors(repetition_penalty=1.5, repetition_context_size=3)
    got = np.array(penalty(mx.array([4, 0, 3, 3, 2], mx.uint32), mx.array(values)))
    expected = values.copy()
    expected[0, 3] *= 1.5  # tokens 3 and 2 are the last three; 4 and 0 are too old
    expected[0, 2] /= 1.5
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    untouched = np.array(penalty(mx.array([], mx.uint32), mx.array(values)))
    np.testing.assert_array_equal(untouched, values)


def test_logits_processors_choices():
    assert make_logits_processors() == [] and make_logits_processors(repetition_penalty=0) == []
    (bias,) = make_logits_processors(logit_bias={1: 2.0, 4: -1.0})
    got = np.array(bias(mx.array([0], mx.uint32), mx.zeros((1, 5))))
    np.testing.assert_array_equal(got, [[0, 2, 0, 0, -1]])
    with pytest.raises(ValueError, match="non-negative"):
        make_repetition_penalty(-1.0)


# A tiny llama with random weights and a SentencePiece vocabulary, written as a GGUF file: the
# command line runs on it in milliseconds per token; its answers are compared with the library's.
PIECES = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"] + [f"<0x{b:02X}>" for b in range(256)] + \
    ["\u2581", "a", "b", "c", "d", "e", "\u2581a", "\u2581b", "ab", "cd", "\u2581ab", "\u2581cd", "de", "\u2581de"]
TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
            "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tiny") / "tiny.gguf")
    n, dim, ffn = len(PIECES), 16, 32
    types = [2, 3, 3, 3, 3] + [6] * 256 + [1] * (n - 261)
    metadata = {"general.architecture": "llama", "llama.block_count": mx.array(1, mx.uint32),
                "llama.embedding_length": mx.array(dim, mx.uint32),
                "llama.feed_forward_length": mx.array(ffn, mx.uint32),
                "llama.attention.head_count": mx.array(2, mx.uint32),
                "llama.attention.layer_norm_rms_epsilon": mx.array(1e-5, mx.float32),
                "llama.vocab_size": mx.array(n, mx.uint32),
                "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": PIECES,
                "tokenizer.ggml.scores": mx.array([-float(i) for i in range(n)], mx.float32),
                "tokenizer.ggml.token_type": mx.array(types, mx.int32),
                "tokenizer.ggml.bos_token_id": mx.array(1, mx.uint32),
                "tokenizer.ggml.eos_token_id": mx.array(4, mx.uint32),
                "tokenizer.chat_template": TEMPLATE}
    mx.random.seed(7)
    tensors = {"token_embd.weight": mx.random.normal((n, dim)), "output_norm.weight": mx.ones((dim,)),
               "blk.0.attn_norm.weight": mx.ones((dim,)), "blk.0.ffn_norm.weight": mx.ones((dim,))}
    for name, shape in (("attn_q", (dim, dim)), ("attn_k", (dim, dim)), ("attn_v", (dim, dim)),
                        ("attn_output", (dim, dim)), ("ffn_gate", (ffn, dim)), ("ffn_up", (ffn, dim)),
                        ("ffn_down", (dim, ffn))):
        tensors[f"blk.0.{name}.weight"] = mx.random.normal(shape) * 0.5
    mx.save_gguf(path, tensors, metadata)
    from mlxarm import lm

    model, tokenizer = lm.load(path)
    return path, model, tokenizer


def test_generate_step_gives_processors_the_history(tiny_model):
    """Processors see the whole prompt (also when prefilled in chunks) and every generated token,
    and what they return is what gets sampled."""
    from mlxarm import lm

    _, model, tokenizer = tiny_model
    prompt = tokenizer.encode("ab cd de a b")
    ranked = np.argsort(-np.array(model(mx.array([prompt], mx.uint32))[0, -1]))
    seen = []

    def record(tokens, logits):
        seen.append(np.array(tokens).tolist())
        return logits

    def ban_greedy(tokens, logits):
        if len(seen) == 1:  # first step only: the top token is taken away
            logits[:, int(ranked[0])] = -float("inf")
        return logits

    steps = lm.generate_step(prompt, model, max_tokens=3, prefill_step_size=2,
                             logits_processors=[record, ban_greedy])
    tokens = [t for t, _ in steps]
    assert tokens[0] == ranked[1]
    assert seen == [prompt, prompt + tokens[:1], prompt + tokens[:2]]


def run_cli(args, stdin=None, monkeypatch=None, capsys=None):
    from mlxarm.lm.cli import main

    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def test_generate_with_repetition_penalty_matches_library(tiny_model, capsys):
    from mlxarm import lm

    path, model, tokenizer = tiny_model
    prompt = "ab ab ab cd"
    rc, out, _ = run_cli(["generate", "--model", path, "--prompt", prompt, "--max-tokens", "12",
                          "--ignore-chat-template", "--repetition-penalty", "3", "--repetition-context-size", "6",
                          "--verbose", "false"], capsys=capsys)
    assert rc == 0
    processors = make_logits_processors(repetition_penalty=3.0, repetition_context_size=6)
    expected = lm.generate(model, tokenizer, tokenizer.encode(prompt), max_tokens=12, logits_processors=processors)
    plain = lm.generate(model, tokenizer, tokenizer.encode(prompt), max_tokens=12)
    assert out == expected + "\n"
    assert expected != plain  # the penalty changes this continuation


def test_chat_keeps_history_and_resets(tiny_model, capsys, monkeypatch):
    pytest.importorskip("jinja2")  # the chat template
    from mlxarm import lm

    path, model, tokenizer = tiny_model

    def answer(messages):
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        text = lm.generate(model, tokenizer, prompt, max_tokens=4)
        messages.append({"role": "assistant", "content": text})
        return text

    history = [{"role": "user", "content": "ab cd"}]
    first = answer(history)
    history.append({"role": "user", "content": "de"})
    second = answer(history)  # rendered after the first exchange
    assert second != answer([{"role": "user", "content": "de"}])  # so history matters here
    rc, out, _ = run_cli(["chat", "--model", path, "--max-tokens", "4"], "ab cd\nde\n/reset\nab cd\n",
                         monkeypatch, capsys)
    banner = "Type a message and press enter; /reset starts over, /quit leaves.\n"
    # After /reset the conversation starts afresh; end of input ends the chat.
    assert rc == 0
    assert out == banner + f">> {first}\n>> {second}\n>> (conversation cleared)\n>> {first}\n>> \n"
    rc, out, _ = run_cli(["chat", "--model", path, "--max-tokens", "4"], "ab cd\n/quit\nde\n", monkeypatch, capsys)
    assert rc == 0 and out == banner + f">> {first}\n>> "


def test_generate_system_prompt_template_config_device_and_progress(tiny_model, capsys, monkeypatch):
    pytest.importorskip("jinja2")  # the chat template
    from mlxarm.utils import tree_flatten

    from mlxarm.lm import cli

    path, model, tokenizer = tiny_model
    monkeypatch.delenv("MLXARM_DEVICE", raising=False)
    during = []
    real_generate = cli._generate
    monkeypatch.setattr(cli, "_generate", lambda o: (during.append(os.environ.get("MLXARM_DEVICE")),
                                                     real_generate(o)))
    rc, out, err = run_cli(["generate", "--model", path, "--prompt", "ab", "--max-tokens", "1", "--system-prompt",
                            "cd", "--chat-template-config", '{"unused_option": true}', "--device", "numpy",
                            "--verbose", "true"], capsys=capsys)
    assert rc == 0 and during == ["numpy"] and "MLXARM_DEVICE" not in os.environ
    n = len(tokenizer.apply_chat_template([{"role": "system", "content": "cd"}, {"role": "user", "content": "ab"}],
                                             add_generation_prompt=True))
    assert re.search(r"^Prompt: %d tokens" % n, out, re.M)
    weights = len(tree_flatten(model.parameters()))
    assert err.endswith(f"Loading model [{'#' * 30}] {weights}/{weights} weights\n")


def test_cli_rejects_bad_options(capsys):
    from mlxarm.lm.cli import main

    for args in (["--chat-template-config", "{not json"], ["--chat-template-config", "[1]"],
                 ["--repetition-penalty", "-1"], ["--device", "tpu"], ["--repetition-context-size", "0"]):
        with pytest.raises(SystemExit) as exit_:
            main(["generate", *args])
        assert exit_.value.code == 2, args
    assert "--chat-template-config" in capsys.readouterr().err


def test_convert_dispatch(capsys):
    from mlxarm.lm.cli import main

    if importlib.util.find_spec("mlxarm.lm.convert") is None:
        assert main(["convert", "--help"]) == 1
        assert "convert command is not part of this installation" in capsys.readouterr().err
    else:  # handed to mlxarm.lm.convert.main, whose argument parser answers --help
        with pytest.raises(SystemExit) as exit_:
            main(["convert", "--help"])
        assert exit_.value.code == 0


def test_language_models_run_on_the_default_executor_and_show_compiling(tiny_model, capsys, monkeypatch,
                                                                         tmp_path):
    """Without --device or MLXARM_DEVICE the command runs on the default CPU executor (LLVM when
    llvmlite is installed), and with --verbose a progress bar follows the first compile of kernels."""
    from mlxarm.backend import _EXECUTORS, cpu_backend, executor_for
    from mlxarm.lm import cli

    monkeypatch.delenv("MLXARM_DEVICE", raising=False)
    if cpu_backend() == "llvm":  # an executor with an empty kernel cache: every kernel is compiled
        from mlxarm.backend.cache import ObjectCache
        from mlxarm.backend.llvm import LLVMExecutor

        monkeypatch.setitem(_EXECUTORS, "llvm", LLVMExecutor(cache=ObjectCache(str(tmp_path))))
    during = []
    real_generate = cli._generate
    monkeypatch.setattr(cli, "_generate", lambda o: (during.append(executor_for(None).name), real_generate(o)))
    path, _, _ = tiny_model
    args = ["generate", "--model", path, "--prompt", "ab", "--max-tokens", "2", "--ignore-chat-template",
            "--verbose", "true"]
    rc, _, err = run_cli(args, capsys=capsys)
    assert rc == 0 and during == [cpu_backend()] and "MLXARM_DEVICE" not in os.environ
    if cpu_backend() == "llvm":
        bars = re.findall(r"^Compiling kernels \[#{30}\] (\d+)/(\d+) steps$", err, re.M)
        assert bars and all(done == total for done, total in bars), err
        assert executor_for(None).progress is None  # reset when the command ends
