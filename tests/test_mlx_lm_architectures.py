"""mlx-lm's model architectures (mlx-lm from PyPI, unmodified) on mlxarm through the ``mlx`` alias, against
real MLX.

For each architecture a tiny random-weight model (2 layers, hidden size 64, a vocabulary of 300) is built
with real MLX and saved as mlx-lm saves a model (safetensors and config.json): in float32, in float16, and
quantized by mlx-lm to 4 bits (affine, and mxfp4 for a few). One subprocess loads every folder with mlx-lm
under the alias and computes the logits of a batch of two prompts and a greedy ``generate_step``
continuation of the first (prefilled in chunks, so each cache is extended after it holds something; the
gemma3 window is shorter than the prompt, so its rotating cache wraps), and for float32 models
``BatchGenerator``'s continuations of three prompts of different lengths (left-padded batch caches); the
test process computes the same with real MLX.

float32, and mxfp4 (bfloat16 embeddings promoted to float32 by the float16 norms), compute in float32:
logits agree within 1e-4 of their scale and the tokens are the same. float16 and 4-bit affine models
compute in half precision, where the two libraries round differently (MLX's CPU quantized matmul
accumulates in the activations' dtype, mlxarm in float32): their logits must be as accurate as MLX's own
against the same weights computed in float32 (root-mean-square error at most 1.5 times MLX's), their
log-probabilities must agree within 2% of their scale, and their tokens must match up to the first step
where MLX's own choice was a near tie (its margin no larger than the log-probabilities' disagreement).
"""
import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

mlx_lm = pytest.importorskip("mlx_lm")  # the program under test; installed with the dev extra
mx = pytest.importorskip("mlx.core")  # real MLX: builds the models and computes the reference

from mlx.utils import tree_map  # noqa: E402
from mlx_lm.utils import quantize_model, save_config, save_model  # noqa: E402

VOCAB = 300
STEPS = 20
# Projections and embeddings scaled up from their default initialization, so that attention and the MLP
# outweigh the residual stream and greedy decoding does not settle into repeating one token.
GAIN = 3.0
_BASE = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=VOCAB, rms_norm_eps=1e-5, rope_theta=10000.0)
ARCHITECTURES = {
    "llama": dict(_BASE, model_type="llama", tie_word_embeddings=True),
    "mistral": dict(_BASE, model_type="mistral", tie_word_embeddings=False),
    "qwen2": dict(_BASE, model_type="qwen2", tie_word_embeddings=True),
    "qwen3": dict(_BASE, model_type="qwen3", head_dim=32, tie_word_embeddings=False,
                  max_position_embeddings=512),
    # layer 0 slides over 8 positions (a RotatingKVCache), layer 1 attends globally
    "gemma3_text": dict(_BASE, model_type="gemma3_text", head_dim=32, sliding_window=8,
                        sliding_window_pattern=2, query_pre_attn_scalar=32, rope_local_base_freq=10000.0),
    # longrope: SuScaledRoPE's frequencies and input scale
    "phi3": dict(_BASE, model_type="phi3", max_position_embeddings=64, original_max_position_embeddings=16,
                 rope_scaling={"type": "longrope", "short_factor": [1.0 + 0.1 * i for i in range(8)],
                               "long_factor": [1.0 + 0.3 * i for i in range(8)]}),
    # SwitchGLU: gather_mm / gather_qmm, sorted by expert once a batch routes 64 or more tokens
    "qwen3_moe": dict(_BASE, model_type="qwen3_moe", head_dim=32, num_experts=4, num_experts_per_tok=2,
                      moe_intermediate_size=64, decoder_sparse_step=1, mlp_only_layers=[],
                      norm_topk_prob=True, tie_word_embeddings=False, max_position_embeddings=512),
    # layer norms with biases, learned positions, compiled gelu
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_ctx=128, n_positions=128,
                 vocab_size=VOCAB, layer_norm_epsilon=1e-5),
}
# MLX's CPU gather_mm takes float32 only (mlxarm takes every float, as MLX's GPUs), so against the CPU oracle
# MoE has no float16 case.
CASES = [(arch, dtype) for arch in ARCHITECTURES for dtype in ("float32", "float16", "q4")
         if not (arch == "qwen3_moe" and dtype == "float16")]
CASES += [("llama", "mxfp4"), ("qwen3_moe", "mxfp4")]
FLOAT32_COMPUTE = ("float32", "mxfp4")

# Runs each case's model in whichever library ``import mlx.core`` gives: real MLX in the test process,
# mlxarm in the subprocess (``python -m mlxarm run``).
RUNNER = '''
import json, sys
from pathlib import Path
import numpy as np
import mlx.core as mx
from mlx.utils import tree_map
from mlx_lm.generate import BatchGenerator, generate_step
from mlx_lm.utils import load_model


def batch_generate(model, prompts, steps):
    """Greedy continuations of prompts of different lengths decoded together (left-padded batch caches)."""
    gen = BatchGenerator(model, prefill_step_size=16)
    uids = gen.insert(prompts, [steps] * len(prompts))
    tokens = {uid: [] for uid in uids}
    while responses := gen.next_generated():
        for r in responses:
            tokens[r.uid].append(int(r.token))
    gen.close()
    return np.array([tokens[uid] for uid in uids])


def run_case(folder, batch, steps, float32=False, batched=False):
    model, _ = load_model(Path(folder))
    if float32:  # the same weights computed in float32: the reference for the half-precision cases
        model.update(tree_map(lambda w: w.astype(mx.float32) if mx.issubdtype(w.dtype, mx.floating) else w,
                              model.parameters()))
        return {"logits": np.array(model(mx.array(batch)))}
    out = {"logits": np.array(model(mx.array(batch)).astype(mx.float32))}
    gen = list(generate_step(mx.array(batch[0]), model, max_tokens=steps, prefill_step_size=16))
    out["tokens"] = np.array([int(t) for t, _ in gen])
    out["logprobs"] = np.stack([np.array(lp.astype(mx.float32)) for _, lp in gen])
    if batched:
        out["batch_tokens"] = batch_generate(model, [batch[0][:8], batch[1], batch[0][:25]], steps // 2)
    return out


if __name__ == "__main__":
    import traceback

    spec = json.loads(Path(sys.argv[1]).read_text())
    assert mx.__name__ == "mlxarm.core", mx.__name__  # the alias, not real MLX
    out = Path(spec["out"])
    for name in spec["cases"]:
        try:
            found = run_case(Path(spec["root"]) / name, spec["batch"], spec["steps"],
                             batched=name.endswith("-float32"))
        except Exception:  # one case's failure is that case's test result
            (out / (name + ".error")).write_text(traceback.format_exc())
            continue
        np.savez(out / (name + ".npz"), **found)
'''


def _case_name(arch, dtype):
    return f"{arch}-{dtype}"


def _build(root):
    """Save every case's model as mlx-lm saves one; the float16 and quantized models come from the
    float32 one made from the same seed."""
    for seed, (arch, config) in enumerate(ARCHITECTURES.items()):
        module = importlib.import_module("mlx_lm.models." + ("llama" if arch == "mistral" else arch))
        for dtype in [d for a, d in CASES if a == arch]:
            mx.random.seed(seed)
            model = module.Model(module.ModelArgs.from_dict(config))
            model.update(tree_map(lambda w: w * GAIN if w.ndim >= 2 else w, model.parameters()))
            to = mx.float32 if dtype == "float32" else mx.float16
            model.update(tree_map(lambda w: w.astype(to) if mx.issubdtype(w.dtype, mx.floating) else w,
                                  model.parameters()))
            saved = dict(config)
            if dtype in ("q4", "mxfp4"):
                model, saved = quantize_model(model, saved, group_size=32, bits=4,
                                              mode="affine" if dtype == "q4" else "mxfp4")
            mx.eval(model.parameters())
            path = os.path.join(root, _case_name(arch, dtype))
            save_model(path, model)
            save_config(saved, os.path.join(path, "config.json"))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """{case: (MLX's outputs, mlxarm's outputs, MLX's float32 logits for half-precision cases)}."""
    root = tmp_path_factory.mktemp("mlx_lm_models")
    out = tmp_path_factory.mktemp("mlxarm_outputs")
    _build(str(root))
    rng = np.random.default_rng(0)
    batch = rng.integers(0, VOCAB, (2, 40)).tolist()
    names = [_case_name(a, d) for a, d in CASES]
    runner = root / "run_models.py"
    runner.write_text(RUNNER)
    spec = root / "spec.json"
    spec.write_text(json.dumps({"root": str(root), "out": str(out), "cases": names, "batch": batch,
                                "steps": STEPS}))
    proc = subprocess.run([sys.executable, "-m", "mlxarm", "run", "--override", str(runner), str(spec)],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, MLXARM_OVERRIDE_MLX="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    oracle = {"__name__": "mlx_lm_oracle"}
    exec(RUNNER, oracle)  # noqa: S102 - the runner's own source, run here on real MLX
    found = {}
    for (arch, dtype), name in zip(CASES, names):
        theirs = oracle["run_case"](root / name, batch, STEPS, batched=dtype == "float32")
        exact = None if dtype in FLOAT32_COMPUTE else oracle["run_case"](root / name, batch, STEPS,
                                                                          float32=True)
        error = out / (name + ".error")
        ours = {"error": error.read_text()} if error.exists() else dict(np.load(out / (name + ".npz")))
        found[name] = (theirs, ours, exact)
    return found


def _rms(d):
    return float(np.sqrt(np.mean(d * d)))


@pytest.mark.parametrize("arch,dtype", CASES, ids=[_case_name(a, d) for a, d in CASES])
def test_architecture_matches_mlx(results, arch, dtype):
    theirs, ours, exact = results[_case_name(arch, dtype)]
    assert "error" not in ours, ours.get("error")
    scale = np.abs(theirs["logits"]).max()
    logit_err = np.abs(ours["logits"] - theirs["logits"]).max() / scale
    print(f"{arch}-{dtype}: logits max |diff| / max |logit| = {logit_err:.2e}")
    if dtype in FLOAT32_COMPUTE:
        assert logit_err <= 1e-4
        assert ours["tokens"].tolist() == theirs["tokens"].tolist()
        lp_scale = np.abs(theirs["logprobs"]).max()
        assert np.abs(ours["logprobs"] - theirs["logprobs"]).max() <= 1e-4 * lp_scale
        if dtype == "float32":
            assert ours["batch_tokens"].tolist() == theirs["batch_tokens"].tolist()
        return
    ours_err, theirs_err = _rms(ours["logits"] - exact["logits"]), _rms(theirs["logits"] - exact["logits"])
    print(f"   rms error against float32: mlxarm {ours_err / scale:.2e}, MLX {theirs_err / scale:.2e}")
    assert ours_err <= 1.5 * theirs_err
    same = ours["tokens"] == theirs["tokens"]
    first = int(np.argmin(same)) if not same.all() else len(same)
    lp_err = np.abs(ours["logprobs"][:first] - theirs["logprobs"][:first]).max() if first else 0.0
    lp_scale = np.abs(theirs["logprobs"][:first]).max() if first else 1.0
    print(f"   tokens equal for {first} of {len(same)} steps; logprobs max |diff| before: {lp_err:.3f} "
          f"(scale {lp_scale:.1f})")
    assert lp_err <= 2e-2 * lp_scale
    if first < len(same):
        lp = theirs["logprobs"][first]
        gap = lp[theirs["tokens"][first]] - lp[ours["tokens"][first]]
        print(f"   at step {first} MLX preferred its token by {gap:.4f}")
        # a near tie: MLX's margin is within the disagreement its log-probabilities already showed
        assert gap <= max(lp_err, 0.05)
