"""mx.save/savez/savez_compressed/save_safetensors/save_gguf/load against real MLX."""
import io
import os
import pathlib
import struct

import numpy as np
import pytest

import mlxarm.core as mx

ALL = ["bool_", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
       "float16", "float32", "float64", "bfloat16", "complex64"]
SAFETENSORS = [d for d in ALL if d != "float64"]
GGUF = ["float32", "float16", "int8", "int16", "int32"]


def values(name, shape=(3, 4), seed=0):
    rng = np.random.default_rng(seed)
    if name == "bool_":
        return rng.random(shape) > 0.5
    if name == "complex64":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    if name in ("float16", "float32", "float64", "bfloat16"):
        return rng.standard_normal(shape).astype(np.float32)
    info = np.iinfo(getattr(np, name))
    return rng.integers(max(info.min, -1000), min(info.max, 1000), shape).astype(name)


def ours(name, shape=(3, 4), seed=0):
    return mx.array(values(name, shape, seed), dtype=getattr(mx, name))


def theirs(mlx, name, shape=(3, 4), seed=0):
    return mlx.array(values(name, shape, seed), dtype=getattr(mlx, name))


def same(a, b):
    """``a`` (ours) and ``b`` (MLX or ours) hold the same dtype, shape and values."""
    assert str(a.dtype).split(".")[-1] == str(b.dtype).split(".")[-1]
    assert tuple(a.shape) == tuple(b.shape)
    np.testing.assert_array_equal(as_numpy(a), as_numpy(b))


def as_numpy(x):
    if "bfloat16" in str(x.dtype):  # numpy has no bfloat16: compare the exact float32 values
        lib = mx if isinstance(x, mx.array) else pytest.importorskip("mlx.core")
        x = x.astype(lib.float32)
    return np.array(x).reshape(x.shape)


def is_mapped(a):
    base = a._data
    while base is not None:
        if isinstance(base, np.memmap) or type(base).__name__ == "mmap":
            return True
        base = getattr(base, "base", None)
    return False


# --- round trips ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_npy_roundtrip(tmp_path, name):
    for shape in [(3, 4), (), (0, 2), (5,)]:
        a = ours(name, shape)
        mx.save(str(tmp_path / "a"), a)
        b = mx.load(str(tmp_path / "a.npy"))
        same(b, a)
    b = mx.load(str(tmp_path / "a.npy"))
    assert is_mapped(b)


@pytest.mark.parametrize("name", ALL)
def test_npz_roundtrip(tmp_path, name):
    a, b = ours(name), ours(name, (2, 2, 2), 1)
    mx.savez(tmp_path / "s", a, b=b)
    mx.savez_compressed(tmp_path / "c.npz", a, b=b)
    for f in ("s.npz", "c.npz"):
        out = mx.load(str(tmp_path / f))
        assert sorted(out) == ["arr_0", "b"]
        same(out["arr_0"], a)
        same(out["b"], b)
    assert is_mapped(mx.load(str(tmp_path / "s.npz"))["b"])


@pytest.mark.parametrize("name", SAFETENSORS)
def test_safetensors_roundtrip(tmp_path, name):
    arrs = {"x": ours(name), "y.z": ours(name, (0,)), "w": ours(name, (), 2)}
    mx.save_safetensors(str(tmp_path / "m"), arrs, {"k": "v", "é": "ü"})
    out, meta = mx.load(str(tmp_path / "m.safetensors"), return_metadata=True)
    assert meta == {"k": "v", "é": "ü"}
    for k in arrs:
        same(out[k], arrs[k])
    assert is_mapped(out["x"])


def test_safetensors_tensors_load_aligned(tmp_path):
    """MLX writes tensors back to back after a header of any length, so a tensor can start off its
    dtype's alignment: such a tensor loads as an aligned copy (kernels and device buffers need it), the
    others stay mapped. What mx.save_safetensors writes is aligned throughout (widest dtypes first, the
    header padded with spaces), so all of it stays mapped."""
    import json
    import struct

    values = {"a": np.arange(5, dtype=np.uint32), "b": np.array([1.5, -2.0, 3.25], np.float16),
              "c": np.array([7], np.int8)}
    header = {"c": {"dtype": "I8", "shape": [1], "data_offsets": [0, 1]},
              "a": {"dtype": "U32", "shape": [5], "data_offsets": [1, 21]},
              "b": {"dtype": "F16", "shape": [3], "data_offsets": [21, 27]}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-aligned: "a" at byte 1 of it is misaligned
    with open(tmp_path / "m.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + values["c"].tobytes() + values["a"].tobytes()
                + values["b"].tobytes())
    out = mx.load(str(tmp_path / "m.safetensors"))
    for k, v in values.items():
        np.testing.assert_array_equal(np.array(out[k]), v)
        assert out[k]._data.__array_interface__["data"][0] % v.itemsize == 0, k
    assert not is_mapped(out["a"]) and is_mapped(out["c"])

    mx.save_safetensors(str(tmp_path / "ours"), {k: mx.array(v) for k, v in values.items()})
    blob = (tmp_path / "ours.safetensors").read_bytes()
    assert struct.unpack("<Q", blob[:8])[0] % 8 == 0
    out = mx.load(str(tmp_path / "ours.safetensors"))
    for k, v in values.items():
        np.testing.assert_array_equal(np.array(out[k]), v)
        assert is_mapped(out[k]) and out[k]._data.__array_interface__["data"][0] % v.itemsize == 0, k


@pytest.mark.parametrize("name", GGUF)
def test_gguf_roundtrip(tmp_path, name):
    arrs = {"t.weight": ours(name, (2, 3, 4)), "v": ours(name, (7,), 1)}
    meta = {"s": "text", "l": ["a", "bc"], "f": mx.array(1.5), "i": mx.array([1, 2, 3]),
            "u": mx.array([7], dtype=mx.uint8), "b": mx.array(True)}
    mx.save_gguf(pathlib.Path(tmp_path / "g"), arrs, meta)
    out, m = mx.load(str(tmp_path / "g.gguf"), return_metadata=True)
    for k in arrs:
        same(out[k], arrs[k])
    assert m["s"] == "text" and m["l"] == ["a", "bc"]
    for k in ("f", "i", "u", "b"):
        same(m[k], meta[k])
    assert is_mapped(out["v"])


def test_noncontiguous_and_lazy(tmp_path):
    a = mx.reshape(mx.arange(12, dtype=mx.float32), (3, 4)).T + 1
    mx.save(tmp_path / "t.npy", a)
    same(mx.load(str(tmp_path / "t.npy")), a)
    mx.save_safetensors(str(tmp_path / "t.safetensors"), {"a": a})
    same(mx.load(str(tmp_path / "t.safetensors"))["a"], a)


def test_file_objects(tmp_path):
    a = ours("float32")
    buf = io.BytesIO()
    mx.save(buf, a)
    buf.seek(0)
    same(mx.load(buf, format="npy"), a)
    buf = io.BytesIO()
    mx.save_safetensors(buf, {"a": a}, {"x": "y"})
    buf.seek(0)
    out, meta = mx.load(buf, format="safetensors", return_metadata=True)
    same(out["a"], a)
    assert meta == {"x": "y"}
    buf = io.BytesIO()
    mx.savez(buf, a=a)
    buf.seek(0)
    same(mx.load(buf, format="npz")["a"], a)
    with open(tmp_path / "f.npy", "wb") as f:
        mx.save(f, a)
    with open(tmp_path / "f.npy", "rb") as f:
        same(mx.load(f), a)  # format from the file's name


def test_saving_over_a_mapped_file(tmp_path):
    p = str(tmp_path / "w.npy")
    mx.save(p, mx.arange(1000))
    a = mx.load(p)
    mx.save(p, a[:10])  # replaces the file; ``a`` still reads the old contents
    same(a, mx.arange(1000))
    same(mx.load(p), mx.arange(10))
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_api_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown file format"):
        mx.load(str(tmp_path / "a.xyz"))
    with pytest.raises(ValueError, match="infer file format"):
        mx.load(str(tmp_path / "noext"))
    with pytest.raises(ValueError, match="metadata not supported"):
        mx.load(str(tmp_path / "a.npy"), return_metadata=True)
    with pytest.raises(RuntimeError, match="Failed to open"):
        mx.load(str(tmp_path / "missing.npy"))
    with pytest.raises(ValueError, match="Cannot use un-named"):
        mx.savez(str(tmp_path / "z"), mx.array(1), arr_0=mx.array(2))
    with pytest.raises(ValueError, match="Metadata must be"):
        mx.save_safetensors(str(tmp_path / "s"), {"a": mx.array(1)}, {"k": 1})
    with pytest.raises(RuntimeError, match="invalid dtype"):
        mx.save_safetensors(str(tmp_path / "s"), {"a": mx.array(1.0, dtype=mx.float64)})
    with pytest.raises(RuntimeError, match="not supported"):
        mx.save_gguf(str(tmp_path / "g"), {"a": mx.array([1.0], dtype=mx.bfloat16)})
    with pytest.raises(ValueError, match="not support for metadata"):
        mx.save_gguf(str(tmp_path / "g"), {}, {"a": mx.array([1.0], dtype=mx.float16)})
    with pytest.raises(RuntimeError, match="more than one dimension"):
        mx.save_gguf(str(tmp_path / "g"), {}, {"a": mx.zeros((2, 2))})
    with pytest.raises(ValueError, match="must be a string"):
        mx.save_gguf(io.BytesIO(), {})
    with pytest.raises(TypeError):
        mx.save(str(tmp_path / "n"), np.ones(2))
    with open(tmp_path / "obj.npy", "wb") as f:
        np.save(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="obj.npy"):
        mx.load(str(tmp_path / "obj.npy"))


# --- cross-compatibility with MLX ------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_cross_npy_npz(tmp_path, name):
    mlx = pytest.importorskip("mlx.core")
    a, ta = ours(name, (2, 5)), theirs(mlx, name, (2, 5))
    mx.save(str(tmp_path / "o"), a)
    mlx.save(str(tmp_path / "t"), ta)
    assert (tmp_path / "o.npy").read_bytes() == (tmp_path / "t.npy").read_bytes()
    same(mx.load(str(tmp_path / "t.npy")), a)
    same(a, mlx.load(str(tmp_path / "o.npy")))
    mlx.save(str(tmp_path / "tt"), ta.T)  # written in Fortran order
    same(mx.load(str(tmp_path / "tt.npy")), a.T)
    mx.savez_compressed(str(tmp_path / "o"), a, k=a)
    mlx.savez(str(tmp_path / "t"), ta, k=ta)
    for k, v in mlx.load(str(tmp_path / "o.npz")).items():
        same(a, v)
    for k, v in mx.load(str(tmp_path / "t.npz")).items():
        same(v, a)


@pytest.mark.parametrize("name", SAFETENSORS)
def test_cross_safetensors(tmp_path, name):
    mlx = pytest.importorskip("mlx.core")
    a, ta = ours(name), theirs(mlx, name)
    mx.save_safetensors(str(tmp_path / "o"), {"a": a, "b": a[0]}, {"m": "1"})
    mlx.save_safetensors(str(tmp_path / "t"), {"a": ta, "b": ta[0]}, {"m": "1"})
    out, meta = mlx.load(str(tmp_path / "o.safetensors"), return_metadata=True)
    assert meta == {"m": "1"}
    same(a, out["a"])
    same(a[0], out["b"])
    out, meta = mx.load(str(tmp_path / "t.safetensors"), return_metadata=True)
    assert meta == {"m": "1"}
    same(out["a"], a)
    same(out["b"], a[0])


def test_cross_gguf(tmp_path):
    mlx = pytest.importorskip("mlx.core")
    arrs = {n: ours(n, (3, 4)) for n in GGUF}
    tarrs = {n: theirs(mlx, n, (3, 4)) for n in GGUF}
    meta = {"s": "x", "l": ["p", "q"], "e": [], "f": mx.array([1.5, 2]), "i": mx.array(3),
            "b": mx.array([True, False]), "u": mx.array(7, dtype=mx.uint64)}
    tmeta = {"s": "x", "l": ["p", "q"], "e": [], "f": mlx.array([1.5, 2]), "i": mlx.array(3),
             "b": mlx.array([True, False]), "u": mlx.array(7, dtype=mlx.uint64)}
    mx.save_gguf(str(tmp_path / "o"), arrs, meta)
    mlx.save_gguf(str(tmp_path / "t"), tarrs, tmeta)
    for reader, path in ((mlx, "o.gguf"), (mx, "t.gguf")):
        out, m = reader.load(str(tmp_path / path), return_metadata=True)
        for n in GGUF:
            same(arrs[n], out[n])
        assert set(m) == set(meta)
        for k in meta:
            if isinstance(meta[k], (str, list)):
                assert m[k] == meta[k]
            else:
                same(meta[k], m[k])


# --- hand-made GGUF files: every tensor type MLX reads ---------------------------------------------

def gguf_file(tensors, metadata=b"", n_kv=0, alignment=32):
    """GGUF v3 bytes from (name, ggml dims, ggml type, raw data) entries."""
    infos, datas, off = b"", b"", 0
    for name, dims, ttype, data in tensors:
        off += -off % alignment
        datas += b"\0" * (-len(datas) % alignment) + data
        infos += struct.pack("<Q", len(name)) + name.encode() + struct.pack(
            f"<I{len(dims)}QIQ", len(dims), *dims, ttype, off)
        off += len(data)
    head = struct.pack("<4sIQQ", b"GGUF", 3, len(tensors), n_kv) + metadata + infos
    return head + b"\0" * (-len(head) % alignment) + datas


def f16_bytes(v):
    return np.asarray(v, np.float16).tobytes()


def quant_blocks(rng, ttype, nblocks):
    out = b""
    for _ in range(nblocks):
        scale = f16_bytes(rng.uniform(-2, 2))
        if ttype == 2:  # Q4_0
            out += scale + rng.bytes(16)
        elif ttype == 3:  # Q4_1
            out += scale + f16_bytes(rng.uniform(-1, 1)) + rng.bytes(16)
        elif ttype == 8:  # Q8_0
            out += scale + rng.bytes(32)
        elif ttype == 12:  # Q4_K
            out += scale + f16_bytes(rng.uniform(0, 1)) + rng.bytes(140)
        elif ttype == 14:  # Q6_K
            out += rng.bytes(208) + scale
        elif ttype == 10:  # Q2_K
            out += rng.bytes(80) + scale + f16_bytes(rng.uniform(0, 1))
    return out


@pytest.mark.parametrize("ttype,per_block,name", [
    (2, 32, "blk.0.weight"), (3, 32, "blk.1.attn.weight"), (8, 32, "short"),
    (12, 256, "k4"), (14, 256, "k6"), (10, 256, "k2")])
def test_gguf_quantized_like_mlx(tmp_path, ttype, per_block, name):
    mlx = pytest.importorskip("mlx.core")
    rng = np.random.default_rng(ttype)
    dims = (per_block * 2, 3)  # ggml order: 2 blocks per row, 3 rows
    data = quant_blocks(rng, ttype, 6)
    p = tmp_path / "q.gguf"
    p.write_bytes(gguf_file([(name, dims, ttype, data), ("plain", (4,), 0, b"\0" * 16)]))
    want, got = mlx.load(str(p)), mx.load(str(p))
    assert sorted(want) == sorted(got)
    for k in want:
        same(got[k], want[k])


def test_gguf_bf16_and_metadata_types(tmp_path):
    mlx = pytest.importorskip("mlx.core")
    bits = np.array([0x3F80, 0xC049, 0x7F80, 0x0001, 0x4780, 0x7FC0], np.uint16)
    kv = b""
    for i, (vtype, raw) in enumerate([(0, b"\x07"), (1, b"\xf9"), (2, b"\x01\x02"), (3, b"\xff\xff"),
                                      (4, b"\1\0\0\0"), (5, b"\xff\xff\xff\xff"),
                                      (6, struct.pack("<f", 0.25)),
                                      (7, b"\1"), (10, b"\5" + b"\0" * 7), (11, b"\xff" * 8),
                                      (9, struct.pack("<IQ", 5, 2) + struct.pack("<2i", 1, -2)),
                                      (9, struct.pack("<IQ", 7, 3) + b"\1\0\1")]):
        key = f"k{i}".encode()
        kv += struct.pack("<Q", len(key)) + key + struct.pack("<I", vtype) + raw
    p = tmp_path / "b.gguf"
    p.write_bytes(gguf_file([("w", (3, 2), 30, bits.tobytes())], kv, n_kv=12))
    (want, wmeta), (got, gmeta) = mlx.load(str(p), return_metadata=True), \
        mx.load(str(p), return_metadata=True)
    same(got["w"], want["w"])
    assert sorted(wmeta) == sorted(gmeta)
    for k in wmeta:
        same(gmeta[k], wmeta[k])


def test_gguf_float64_metadata(tmp_path):
    # MLX returns float64 metadata as float32 (its reader misplaces what follows, so no oracle).
    kv = b""
    for i, raw in enumerate([struct.pack("<Id", 12, 2.5), struct.pack("<IIQ2d", 9, 12, 2, 1, 3)]):
        kv += struct.pack("<Q", 2) + f"k{i}".encode() + raw
    p = tmp_path / "d.gguf"
    p.write_bytes(gguf_file([("w", (2,), 0, b"\0" * 8)], kv, n_kv=2))
    out, meta = mx.load(str(p), return_metadata=True)
    same(meta["k0"], mx.array(2.5))
    same(meta["k1"], mx.array([1.0, 3.0]))
    same(out["w"], mx.zeros(2))


# --- malformed files: ValueError naming the file, never a crash or a huge allocation ---------------

def _expect_error_or_load(path):
    try:
        out = mx.load(str(path))
    except ValueError as e:
        assert os.path.basename(str(path)) in str(e), str(e)
        return
    mx.eval(list(out.values()) if isinstance(out, dict) else out)


def _good_files(tmp_path):
    a = ours("float32", (4, 5))
    mx.save(str(tmp_path / "good.npy"), a)
    mx.save_safetensors(str(tmp_path / "good.safetensors"), {"a": a, "b": ours("int8")},
                        {"k": "v"})
    mx.save_gguf(str(tmp_path / "good.gguf"), {"a": a, "q": ours("int32", (8,))},
                 {"s": "str", "l": ["x", "yz"], "i": mx.array([1, 2])})
    (tmp_path / "quant.gguf").write_bytes(gguf_file(
        [("q.weight", (64, 2), 2, quant_blocks(np.random.default_rng(0), 2, 4))]))
    return ["good.npy", "good.safetensors", "good.gguf", "quant.gguf"]


def test_truncated_files(tmp_path):
    for name in _good_files(tmp_path):
        raw = (tmp_path / name).read_bytes()
        stem, ext = name.split(".")
        for cut in sorted(set(range(0, len(raw), max(1, len(raw) // 60))) | {len(raw) - 1}):
            p = tmp_path / f"{stem}_cut{cut}.{ext}"
            p.write_bytes(raw[:cut])
            # A .npy cut inside its data loads (lazily, as MLX) and fails when read: either way the
            # error is a ValueError naming the file.
            with pytest.raises(ValueError, match=p.name):
                mx.eval(mx.load(str(p)))


def test_corrupted_headers(tmp_path):
    rng = np.random.default_rng(0)
    for name in _good_files(tmp_path):
        raw = bytearray((tmp_path / name).read_bytes())
        stem, ext = name.split(".")
        header = min(len(raw), 200)
        for i in range(80):
            bad = bytearray(raw)
            pos = int(rng.integers(0, header))
            bad[pos] = bad[pos] ^ (1 << int(rng.integers(0, 8))) if i % 2 else int(rng.integers(256))
            p = tmp_path / f"{stem}_bad{i}.{ext}"
            p.write_bytes(bytes(bad))
            _expect_error_or_load(p)


def test_declared_sizes_beyond_file(tmp_path):
    cases = {}
    hdr = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, ), }"
    cases["huge.npy"] = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr
    cases["deep.npy"] = b"\x93NUMPY\x01\x00" + struct.pack("<H", 20000) + b"(" * 20000
    cases["hlen.npy"] = b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**32 - 1) + b"{}"
    cases["ver.npy"] = b"\x93NUMPY\x03\x00" + struct.pack("<I", 2) + b"{}"
    js = b'{"a":{"dtype":"F32","shape":[1000000000,1000000000],"data_offsets":[0,4000000000000000000]}}'
    cases["huge.safetensors"] = struct.pack("<Q", len(js)) + js
    js = b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    cases["short.safetensors"] = struct.pack("<Q", len(js)) + js + b"\0" * 4
    cases["hlen.safetensors"] = struct.pack("<Q", 2**63) + b"{}"
    cases["json.safetensors"] = struct.pack("<Q", 5) + b"{\"a\":"
    cases["dtype.safetensors"] = struct.pack("<Q", 50) + \
        b'{"a":{"dtype":"F99","shape":[],"data_offsets":[0,4]}}'[:50] + b"\0" * 8
    cases["nest.safetensors"] = struct.pack("<Q", 200000) + b"[" * 200000
    kv = struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 4, 2**61)
    cases["arr.gguf"] = struct.pack("<4sIQQ", b"GGUF", 3, 0, 1) + kv
    kv = struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 8, 2**40)
    cases["strs.gguf"] = struct.pack("<4sIQQ", b"GGUF", 3, 0, 1) + kv
    kv = struct.pack("<Q", 2**62) + b"k"
    cases["key.gguf"] = struct.pack("<4sIQQ", b"GGUF", 3, 0, 1) + kv
    cases["count.gguf"] = struct.pack("<4sIQQ", b"GGUF", 3, 2**63, 2**63)
    cases["dims.gguf"] = gguf_file([("t", (2**40, 2**40), 0, b"")])
    cases["zero.gguf"] = gguf_file([("t", (0, 2**63), 0, b"")])
    cases["type.gguf"] = gguf_file([("t", (4,), 99, b"\0" * 16)])
    cases["q5.gguf"] = gguf_file([("t", (32,), 6, b"\0" * 22)])
    cases["ndim.gguf"] = gguf_file([("t", (1,) * 9, 0, b"\0" * 4)])
    cases["magic.gguf"] = b"GGUX" + b"\0" * 40
    cases["empty.npy"] = b""
    cases["empty.gguf"] = b""
    cases["empty.safetensors"] = b""
    for name, raw in cases.items():
        p = tmp_path / name
        p.write_bytes(raw)
        with pytest.raises(ValueError, match=name):
            mx.eval(mx.load(str(p)))
    with pytest.raises(RuntimeError):  # MLX's type for these too
        mx.load(str(tmp_path / "magic.gguf"))
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ValueError):
        mx.load(str(tmp_path / "bad.npz"))
