"""``load_quantized``: GGUF block types kept packed as MLX affine triples. The files are written and
the blocks made and decoded by gguf-py (llama.cpp's Python package, the reference implementation of
the formats); every packed weight must dequantize to exactly gguf-py's values."""
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf import quants  # noqa: E402

import mlxarm.core as mx  # noqa: E402
import mlxarm.nn as nn  # noqa: E402
from mlxarm.core.gguf import MalformedFileError, load_quantized  # noqa: E402
from mlxarm.core.ops.quantized import _loader_quantize  # noqa: E402

EPS = np.finfo(np.float32).eps
# type -> (bits, group size, scales' dtype): float32 where a scale is a product (d * sc)
PACKED = {
    "Q4_0": (4, 32, "float16"), "Q4_1": (4, 32, "float16"), "Q5_0": (5, 32, "float16"),
    "Q5_1": (5, 32, "float16"), "Q8_0": (8, 32, "float16"), "Q4_K": (4, 32, "float32"),
    "Q5_K": (5, 32, "float32"), "Q6_K": (6, 16, "float32"),
}


def raw_blocks(rng, name, shape):
    """gguf-py's quantization of random weights where it has a quantizer; random blocks with finite
    super-block scales for the K-quants it only decodes."""
    qtype = Q[name]
    per_block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    try:
        raw = quants.quantize(rng.standard_normal(shape).astype(np.float32), qtype)
    except NotImplementedError:
        raw = rng.integers(0, 256, shape[:-1] + (shape[-1] // per_block * block_bytes,), dtype=np.uint8)
    blocks = raw.reshape(-1, block_bytes)

    def f16(lo, hi):
        return rng.uniform(lo, hi, (len(blocks), 1)).astype(np.float16).view(np.uint8)

    if name in ("Q4_K", "Q5_K"):
        blocks[:, 0:2], blocks[:, 2:4] = f16(-2, 2), f16(0, 1)  # d, dmin
    elif name == "Q6_K":
        blocks[:, 208:210] = f16(-2, 2)
    elif name in ("Q4_0", "Q5_0", "Q8_0"):
        # d * -8 (-16, -128) overflows float16: this tensor's scales and biases must widen to stay exact
        blocks[0, 0:2] = np.array([30000.0], np.float16).view(np.uint8)
    return raw


def write(path, tensors):
    """A GGUF file of (name, raw data, ggml type) entries, written by gguf-py."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("test.value", 7)
    for name, raw, qtype in tensors:
        w.add_tensor(name, raw, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def matmul_bound(x, w):
    """How far two float32 summation orders of x @ w.T may differ: 2 (K + 1) eps sum_k |x w|."""
    return 2 * (x.shape[-1] + 1) * EPS * (np.abs(x) @ np.abs(w).T)


@pytest.mark.parametrize("name", list(PACKED))
def test_blocks_stay_packed_and_exact(tmp_path, name):
    bits, gs, sdtype = PACKED[name]
    rng = np.random.default_rng(len(name) + bits * gs)
    shape = (2, 3, 512) if name == "Q6_K" else (3, 512)  # stacked matrices keep their leading dims
    raw = raw_blocks(rng, name, shape)
    want = quants.dequantize(raw, Q[name]).reshape(shape)
    path = write(tmp_path / "q.gguf", [(f"blk.0.{name}.weight", raw, Q[name])])

    arrays, metadata, quantization = load_quantized(path)
    prefix = f"blk.0.{name}"
    assert sorted(arrays) == sorted(f"{prefix}.{k}" for k in ("weight", "scales", "biases"))
    assert quantization == {f"{prefix}.weight": {"group_size": gs, "bits": bits}}
    assert metadata["test.value"].item() == 7
    w, scales, biases = (arrays[f"{prefix}.{k}"] for k in ("weight", "scales", "biases"))
    assert w.dtype == mx.uint32 and w.shape == shape[:-1] + (shape[-1] * bits // 32,)
    assert scales.shape == biases.shape == shape[:-1] + (shape[-1] // gs,)
    widened = name in ("Q4_0", "Q5_0", "Q8_0")
    assert scales.dtype == biases.dtype == getattr(mx, "float32" if widened else sdtype)

    # Exact scales and biases: dequantized in float32, the values are gguf-py's to the bit.
    got = mx.dequantize(w, scales.astype(mx.float32), biases.astype(mx.float32), group_size=gs, bits=bits)
    np.testing.assert_array_equal(np.array(got), want)

    x = rng.standard_normal((5, shape[-1])).astype(np.float32)
    for i in np.ndindex(*shape[:-2]):
        prod = np.array(mx.quantized_matmul(mx.array(x), w[i], scales[i], biases[i], transpose=True,
                                            group_size=gs, bits=bits))
        assert np.all(np.abs(prod - x @ want[i].T) <= matmul_bound(x, want[i]))


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
def test_float16_scales_when_exact(tmp_path, name):
    """Blocks whose d * step fits float16 keep float16 scales and biases, as mx.load does."""
    rng = np.random.default_rng(1)
    raw = quants.quantize(rng.standard_normal((2, 64)).astype(np.float32), Q[name])
    arrays, _, _ = load_quantized(write(tmp_path / "q.gguf", [("a.weight", raw, Q[name])]))
    assert arrays["a.scales"].dtype == arrays["a.biases"].dtype == mx.float16
    got = mx.dequantize(arrays["a.weight"], arrays["a.scales"].astype(mx.float32),
                        arrays["a.biases"].astype(mx.float32), group_size=32, bits=PACKED[name][0])
    np.testing.assert_array_equal(np.array(got), quants.dequantize(raw, Q[name]))


def is_mapped(a):
    base = a._data
    while base is not None:
        if isinstance(base, np.memmap) or type(base).__name__ == "mmap":
            return True
        base = getattr(base, "base", None)
    return False


def test_plain_types_are_views_of_the_file(tmp_path):
    rng = np.random.default_rng(2)
    v = rng.standard_normal((3, 8)).astype(np.float32)
    bf16 = quants.quantize(v, Q.BF16)
    path = write(tmp_path / "p.gguf", [("f32", v, Q.F32), ("f16", v.astype(np.float16), Q.F16),
                                       ("bf16", bf16, Q.BF16), ("i32", np.arange(6, dtype=np.int32), Q.I32)])
    arrays, _, quantization = load_quantized(path)
    assert quantization == {}
    assert {k: a.dtype for k, a in arrays.items()} == {"f32": mx.float32, "f16": mx.float16,
                                                        "bf16": mx.bfloat16, "i32": mx.int32}
    np.testing.assert_array_equal(np.array(arrays["f32"]), v)
    np.testing.assert_array_equal(np.array(arrays["f16"]), v.astype(np.float16))
    np.testing.assert_array_equal(np.array(arrays["bf16"].astype(mx.float32)), quants.dequantize(bf16, Q.BF16))
    assert all(is_mapped(a) for a in arrays.values())


@pytest.mark.parametrize("name", ["Q2_K", "Q3_K", "Q8_K", "IQ4_NL", "Q8_1"])
def test_unsupported_type_names_tensor_and_type(tmp_path, name):
    per_block, block_bytes = gguf.GGML_QUANT_SIZES[Q[name]]
    raw = np.zeros((2, 256 // per_block * block_bytes), np.uint8)
    path = write(tmp_path / "u.gguf", [("ok.weight", np.zeros((2, 4), np.float32), Q.F32),
                                       ("blk.3.ffn_down.weight", raw, Q[name])])
    with pytest.raises(ValueError, match=rf"'blk\.3\.ffn_down\.weight'.*u\.gguf.* {name}\b"):
        load_quantized(path)


def test_truncated_file_names_file_and_tensor(tmp_path):
    rng = np.random.default_rng(3)
    path = write(tmp_path / "t.gguf", [("first.weight", raw_blocks(rng, "Q4_K", (2, 256)), Q.Q4_K),
                                       ("last.weight", raw_blocks(rng, "Q6_K", (2, 256)), Q.Q6_K)])
    raw = open(path, "rb").read()
    last = gguf.GGUFReader(path).tensors[-1]
    end = last.data_offset + last.n_bytes
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(raw[:end - 1])  # one byte short of the last tensor
    with pytest.raises(MalformedFileError, match=r"'last\.weight'.*cut\.gguf"):
        load_quantized(str(cut))
    for n in range(0, end - 1, 97):  # anywhere: header, metadata, tensor infos or data
        cut.write_bytes(raw[:n])
        with pytest.raises(MalformedFileError, match=r"cut\.gguf"):
            load_quantized(str(cut))


def test_last_dimension_must_hold_whole_blocks(tmp_path):
    """A K-quant row of 32 weights (a file gguf-py would not write): its shape is rewritten here."""
    rng = np.random.default_rng(4)
    path = write(tmp_path / "s.gguf", [("odd.weight", raw_blocks(rng, "Q4_K", (1, 256)), Q.Q4_K)])
    raw = bytearray(open(path, "rb").read())
    dims = np.array([256, 1], "<u8").tobytes()
    at = raw.index(dims)
    raw[at:at + 16] = np.array([32, 8], "<u8").tobytes()  # 32 x 8 weights: as many bytes, no whole row
    (tmp_path / "s.gguf").write_bytes(bytes(raw))
    with pytest.raises(MalformedFileError, match=r"'odd\.weight'.*block size 256"):
        load_quantized(path)


def test_group_16_layers_for_loaders(tmp_path):
    """Q6_K's group size 16 reaches quantized layers through the private loader path only."""
    rng = np.random.default_rng(5)
    raw = raw_blocks(rng, "Q6_K", (4, 256))
    want = quants.dequantize(raw, Q.Q6_K)
    arrays, _, quantization = load_quantized(write(tmp_path / "g.gguf", [("output.weight", raw, Q.Q6_K)]))
    params = quantization["output.weight"]

    with pytest.raises(ValueError, match="group size 16"):
        nn.QuantizedLinear(256, 4, bias=False, **params)
    with pytest.raises(ValueError, match="group size 16"):
        mx.quantize(mx.zeros((4, 256)), group_size=16, bits=6)

    layer = nn.QuantizedLinear(256, 4, bias=True, **params, _loader=True)
    layer.load_weights([("weight", arrays["output.weight"]), ("scales", arrays["output.scales"]),
                        ("biases", arrays["output.biases"]), ("bias", mx.array(np.arange(4.0, dtype=np.float32)))])
    x = rng.standard_normal((3, 256)).astype(np.float32)
    got = np.array(layer(mx.array(x)))
    expected = x @ want.T + np.arange(4.0, dtype=np.float32)
    assert np.all(np.abs(got - expected) <= matmul_bound(x, want) + 2 * EPS * np.abs(expected))

    table = nn.QuantizedEmbedding(4, 256, **params, _loader=True)
    table.load_weights([(k, arrays[f"output.{k}"]) for k in ("weight", "scales", "biases")])
    np.testing.assert_array_equal(np.array(table(mx.array([2, 0]))), want[[2, 0]])


@pytest.mark.parametrize("bits", [4, 6])
def test_loader_quantize_group_16(bits):
    """Each group is quantized on its own, so a group of 16 quantizes as the group of 32 that holds
    it twice does through the public group size 32."""
    w = np.random.default_rng(bits).standard_normal((3, 4, 16)).astype(np.float32)
    wq, scales, biases = _loader_quantize(mx.array(w.reshape(3, 64)), 16, bits)
    assert wq.shape == (3, 64 * bits // 32) and scales.shape == biases.shape == (3, 4)
    twice = mx.quantize(mx.array(np.concatenate([w, w], axis=-1).reshape(3, 128)), group_size=32, bits=bits)
    np.testing.assert_array_equal(np.array(scales), np.array(twice[1]))
    np.testing.assert_array_equal(np.array(biases), np.array(twice[2]))
    got = np.array(mx.dequantize(wq, scales, biases, group_size=16, bits=bits)).reshape(3, 4, 16)
    want = np.array(mx.dequantize(*twice, group_size=32, bits=bits)).reshape(3, 4, 32)[..., :16]
    np.testing.assert_array_equal(got, want)


def _resident_kib(path) -> int:
    """Resident KiB of this process's maps of ``path`` (Linux's /proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a mapping's first line
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                total += int(head[1])
    return total


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/smaps"), reason="needs Linux's /proc/self/smaps")
def test_repacked_blocks_leave_the_file_pages(tmp_path):
    """Once a block-quantized tensor is repacked, its file pages are given back: the file's map keeps
    only what later reads need (a float tensor's view), so loading costs about the repacked weights."""
    rng = np.random.default_rng(9)
    big = raw_blocks(rng, "Q8_0", (512, 4096))  # 2.1 MiB of blocks
    norm = rng.standard_normal(4096).astype(np.float32)
    path = write(tmp_path / "pages.gguf", [("blk.0.w.weight", big, Q.Q8_0), ("blk.0.norm.weight", norm, Q.F32)])
    arrays, _, _ = load_quantized(path)
    assert _resident_kib(path) <= 16 + norm.nbytes // 1024 + 8, _resident_kib(path)
    w = arrays["blk.0.w.weight"]
    expected = quants.dequantize(big, Q.Q8_0).reshape(512, 4096)
    got = mx.dequantize(w, arrays["blk.0.w.scales"], arrays["blk.0.w.biases"], group_size=32, bits=8)
    np.testing.assert_array_equal(np.array(got.astype(mx.float32)), expected)
    np.testing.assert_array_equal(np.array(arrays["blk.0.norm.weight"]), norm)
