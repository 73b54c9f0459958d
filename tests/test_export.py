"""Function export and import (``mx.export_function``, ``mx.import_function``, ``mx.exporter``):
round trips equal direct calls, shapeless and multi-trace files pick the right trace, bad inputs
raise ValueError, and damaged files raise an error naming the file and the problem."""
import json
import math
import os
import struct
import zlib

import numpy as np
import pytest

import mlxarm.core as mx
import mlxarm.nn as nn
from mlxarm.core import dtypes as dt
from mlxarm.core.export import MAGIC, MalformedFileError
from mlxarm.core.graph import array_leaves
from mlxarm.core.registry import PRIMITIVES
from mlxarm.core.vmap import rebuild
from _matrix import convert_args, resolve


def _np(a):
    return np.array(a)


def _equal(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(_np(a), _np(b), equal_nan=True)


def test_round_trip_equals_direct_call(tmp_path):
    path = str(tmp_path / "f.mlxfn")
    w = mx.random.normal((8, 5), key=mx.random.key(1))

    def fun(x, idx, *, scale):
        h = mx.softmax(x @ w, axis=-1) * scale
        y = mx.take(h, idx, axis=0)[:, 1:4]  # gather params and slices
        return mx.clip(y, -math.inf, 0.3), h.sum(axis=1, keepdims=True).astype(mx.float16)

    x = mx.random.normal((6, 8), key=mx.random.key(2))
    idx = mx.array([5, 0, 2])
    scale = mx.array(2.5)
    mx.export_function(path, fun, x, idx, scale=scale)
    imported = mx.import_function(path)
    for args in [(x, idx, scale), (x * 3, mx.array([1, 1, 4]), mx.array(-1.0))]:
        out = imported(*args[:2], scale=args[2])
        expected = fun(*args[:2], scale=args[2])
        assert isinstance(out, tuple) and len(out) == 2
        assert all(_equal(o, e) for o, e in zip(out, expected))
    # the tuple/dict call form is the same call
    assert _equal(imported((x, idx), {"scale": scale})[0], fun(x, idx, scale=scale)[0])


def test_every_published_case_round_trips(tmp_path):
    """Each primitive's test cases (``extra["cases"]``), exported with their arrays as inputs:
    every kind of param survives the file and the replay equals the direct call."""
    path = str(tmp_path / "f.mlxfn")
    checked = set()
    for prim in PRIMITIVES.values():
        if "cases" not in prim.extra:
            continue
        d = dt.float32 if dt.float32 in prim.dtypes else prim.dtypes[0]
        rng = np.random.default_rng(zlib.crc32(prim.name.encode()))
        for name, args, kwargs in prim.extra["cases"](rng, d):
            args, kwargs = convert_args(args, d, mx), convert_args(kwargs, d, mx)
            leaves = array_leaves((args, kwargs))

            def fun(*xs, name=name, args=args, kwargs=kwargs):
                it = iter(xs)
                out = resolve(mx, name)(*rebuild(args, it), **rebuild(kwargs, it))
                return out if isinstance(out, mx.array) else array_leaves(out)

            try:
                expected = fun(*leaves)
                mx.eval(expected)
            except (ValueError, TypeError, IndexError):
                continue  # a case that checks an error
            mx.export_function(path, fun, *leaves)
            out = mx.import_function(path)(*leaves)
            expected = [expected] if isinstance(expected, mx.array) else expected
            assert len(out) == len(expected), name
            for o, e in zip(out, expected):
                o, e = (x.astype(mx.float32) if x.dtype == mx.bfloat16 else x for x in (o, e))
                assert _equal(o, e), f"{name}({args}, {kwargs})"
            checked.add(prim.name)
    assert len(checked) > 60  # most primitives publish cases


def test_file_is_not_pickle_and_starts_with_magic(tmp_path):
    path = tmp_path / "f.mlxfn"
    mx.export_function(str(path), lambda x: x + 1, mx.array([1.0]))
    raw = path.read_bytes()
    assert raw[:8] == MAGIC and not raw.startswith(b"\x80")


def test_keyword_order_does_not_matter(tmp_path):
    path = str(tmp_path / "f.mlxfn")
    mx.export_function(path, lambda a, b: a - 2 * b, b=mx.array(1.0), a=mx.array(1.0))
    f = mx.import_function(path)
    assert f(a=mx.array(5.0), b=mx.array(1.0))[0].item() == 3.0
    assert f(b=mx.array(1.0), a=mx.array(5.0))[0].item() == 3.0
    with pytest.raises(ValueError):
        f(mx.array(5.0), b=mx.array(1.0))  # a was exported as a keyword


def test_shapeless_replays_on_new_shapes(tmp_path):
    path = str(tmp_path / "f.mlxfn")
    conv = nn.Conv1d(3, 4, kernel_size=3, stride=2, padding=1)
    mx.eval(conv.parameters())

    def fun(x, y):
        return mx.maximum(conv(x), 0).sum(axis=1) @ (y.T @ y)

    mx.export_function(path, fun, mx.zeros((2, 9, 3)), mx.zeros((5, 4)), shapeless=True)
    f = mx.import_function(path)
    for n, l, m in [(2, 9, 5), (1, 20, 3), (3, 4, 7)]:
        x = mx.random.normal((n, l, 3), key=mx.random.key(l))
        y = mx.random.normal((m, 4), key=mx.random.key(m))
        (out,) = f(x, y)
        np.testing.assert_allclose(_np(out), _np(fun(x, y)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="No imported function"):
        f(mx.zeros((2, 9)), mx.zeros((5, 4)))  # rank differs
    with pytest.raises(ValueError):
        f(mx.zeros((2, 9, 3), mx.float16), mx.zeros((5, 4)))  # dtype differs


def test_exporter_keeps_several_traces(tmp_path):
    path = str(tmp_path / "f.mlxfn")
    big = mx.arange(64 * 64, dtype=mx.float32).reshape(64, 64)
    mx.eval(big)

    def fun(*args, bias=None):
        out = big + sum(args)
        return out if bias is None else (out + bias, bias)

    with mx.exporter(path, fun, metadata="several") as export:
        export()
        export(mx.array(1.0))
        export(mx.array([1.0] * 64), mx.array(2.0))
        export(mx.array(1.0), bias=mx.array(3))
        with pytest.raises(RuntimeError, match="twice"):
            export(mx.array(7.0))
    with pytest.raises(RuntimeError, match="closed"):
        export(mx.array([1.0, 2.0]))
    # the large constant is stored once for the four traces
    assert os.path.getsize(path) < big.nbytes + 8192

    f, metadata = mx.import_function(path, return_metadata=True)
    assert metadata == "several"
    assert _equal(f()[0], big + 0)
    assert _equal(f(mx.array(5.0))[0], big + 5.0)
    v = mx.arange(64, dtype=mx.float32)
    assert _equal(f(v, mx.array(1.0))[0], big + v + 1.0)
    out = f(mx.array(1.0), bias=mx.array(4))
    assert len(out) == 2 and _equal(out[0], big + 1.0 + 4) and out[1].item() == 4
    with pytest.raises(ValueError):
        f(mx.array([1.0, 2.0]))  # no trace of this shape


def test_constants_of_every_kind_round_trip(tmp_path):
    path = str(tmp_path / "f.mlxfn")
    half = mx.array([1.5, -2.25, 3.0], dtype=mx.bfloat16)
    cplx = mx.array([1 + 2j, -3j, 0.5])
    mask = mx.array([True, False, True])
    double = mx.compile(lambda a: a * 2)
    double(mx.array([1.0, 2.0, 3.0]))
    lazy = double(mx.array([4.0, 5.0, 6.0]))  # unevaluated: a compiled call's result

    def fun(x):
        return (x.astype(mx.bfloat16) * half, x * cplx, mx.where(mask, x, lazy), lazy[::-1] + 1)

    x = mx.array([0.5, 1.0, -2.0])
    mx.export_function(path, fun, x)
    expected = fun(x)
    out = mx.import_function(path)(x)
    assert len(out) == 4
    for o, e in zip(out, expected):
        assert o.dtype == e.dtype and _equal(o.astype(mx.complex64), e.astype(mx.complex64))


def test_random_constants_round_trip(tmp_path):
    path = str(tmp_path / "f.mlxfn")
    mx.random.seed(11)
    mx.export_function(path, lambda: mx.random.uniform(shape=(4,)))
    (out,) = mx.import_function(path)()
    mx.random.seed(11)
    assert _equal(out, mx.random.uniform(shape=(4,)))


@pytest.mark.parametrize("args, kwargs", [
    (("hi",), {}),
    ((mx.array(1.0), "hi"), {}),
    (([[mx.array(1.0)]],), {}),
    ((mx.array(1.0),), {"y": 2.0}),
    (((mx.array(1.0),), {"y": mx.array(1.0)}, mx.array(2.0)), {}),
])
def test_export_rejects_non_array_inputs(tmp_path, args, kwargs):
    with pytest.raises(ValueError, match="Inputs can either be"):
        mx.export_function(str(tmp_path / "f.mlxfn"), lambda *a, **k: a[0], *args, **kwargs)


@pytest.mark.parametrize("result", [lambda x: (x, 1), lambda x: [x, [x]], lambda x: {"a": x},
                                    lambda x: None])
def test_export_rejects_non_array_outputs(tmp_path, result):
    with pytest.raises(ValueError, match="Outputs can be"):
        mx.export_function(str(tmp_path / "f.mlxfn"), result, mx.array(1.0))


def test_imported_call_checks_inputs(tmp_path):
    path = str(tmp_path / "f.mlxfn")
    mx.export_function(path, lambda x, y: x * y, mx.zeros((2,)), mx.zeros((2,)))
    f = mx.import_function(path)
    for bad in [(mx.zeros((2,)), 1.0), (mx.zeros((2,)),) * 3, (mx.zeros((2,)), [mx.zeros((2,))]),
                (mx.zeros((3,)), mx.zeros((2,))), (mx.zeros((2,), mx.int32), mx.zeros((2,)))]:
        with pytest.raises(ValueError):
            f(*bad)


def test_metadata_must_be_a_string(tmp_path):
    with pytest.raises(TypeError):
        mx.export_function(str(tmp_path / "f.mlxfn"), lambda x: x, mx.array(1), metadata={"a": 1})
    with pytest.raises(ValueError):
        mx.export_function(lambda d: None, lambda x: x, mx.array(1), metadata="m")


def test_callback_describes_the_trace():
    seen = []
    mx.export_function(seen.append, lambda x, y: mx.exp(x * y).astype(mx.int32), mx.array(1.0),
                       y=mx.array(2.0))
    by_type = {d["type"]: d for d in seen}
    assert len(by_type["inputs"]["inputs"]) == 2 and len(by_type["outputs"]["outputs"]) == 1
    assert [k for k, _ in by_type["keyword_inputs"]["keywords"]] == ["y"]
    assert by_type["constants"]["constants"] == []
    prims = [(d["name"], d["arguments"]) for d in seen if d["type"] == "primitive"]
    assert prims == [("Multiply", []), ("Exp", []), ("AsType", [mx.int32])]


# --- damaged files ---------------------------------------------------------------------------------

def _exported(tmp_path):
    path = tmp_path / "f.mlxfn"
    c = mx.array([[1.0, 2.0], [3.0, 4.0]])
    mx.export_function(str(path), lambda x: (x @ c)[:, ::-1] + float("nan"), mx.zeros((1, 2)))
    return path


def _rewrite(path, edit):
    raw = path.read_bytes()
    n = struct.unpack_from("<Q", raw, 12)[0]
    header = json.loads(raw[20:20 + n])
    edit(header)
    text = json.dumps(header).encode()
    path.write_bytes(raw[:12] + struct.pack("<Q", len(text)) + text + raw[20 + n:])


def test_exported_file_round_trips_nan_and_slices(tmp_path):
    f = mx.import_function(str(_exported(tmp_path)))
    out = _np(f(mx.array([[1.0, 1.0]]))[0])
    assert out.shape == (1, 2) and np.isnan(out).all()


@pytest.mark.parametrize("damage, problem", [
    (lambda p: p.write_bytes(p.read_bytes()[:10]), "truncated"),
    (lambda p: p.write_bytes(p.read_bytes()[:-4]), "truncated"),
    (lambda p: p.write_bytes(p.read_bytes()[:40]), "truncated"),
    (lambda p: p.write_bytes(b"XXXXXXXX" + p.read_bytes()[8:]), "magic"),
    (lambda p: p.write_bytes(p.read_bytes()[:8] + b"\x09" + p.read_bytes()[9:]), "version"),
    (lambda p: p.write_bytes(p.read_bytes()[:20] + b"[" + p.read_bytes()[21:]), "header"),
    (lambda p: _rewrite(p, lambda h: h["functions"][0]["steps"][0].__setitem__(0, "os.system")),
     "unknown primitive"),
    (lambda p: _rewrite(p, lambda h: h["constants"][0].__setitem__("dtype", "object")), "dtype"),
    (lambda p: _rewrite(p, lambda h: h["constants"][0].__setitem__("shape", [1 << 40, 1 << 40])),
     "size"),
    (lambda p: _rewrite(p, lambda h: h["functions"][0]["outputs"][0].__setitem__(1, 99)), "range"),
    (lambda p: _rewrite(p, lambda h: h["functions"][0]["steps"][-1].__setitem__(2, {"t": "pickle"})),
     "tag"),
])
def test_damaged_file_names_file_and_problem(tmp_path, damage, problem):
    path = _exported(tmp_path)
    damage(path)
    with pytest.raises(MalformedFileError, match=problem) as info:
        mx.import_function(str(path))
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)
