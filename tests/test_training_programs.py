"""Ordinary MLX training programs on mlxarm: unmodified scripts in the style of mlx-examples run through
the ``mlx`` alias (``python -m mlxarm run``) and through real MLX, and must print the same losses and
parameters; plus the gradients and errors such programs depend on: what maximum/minimum (ReLU, clip,
leaky ReLU...) pass back at a tie, ``sign`` of NaN and -0, the gradients of ``linalg.norm`` (cosine
similarity loss), ``linalg.cross``, small determinants, non-constant padding and an additive attention
mask, and MLX's errors for what has no gradient. Each is checked against real MLX where it is installed
and against the rule MLX implements where it is not.

Both sides start from the same weights (drawn with numpy from a seed) and see the same numpy data;
dropout masks come from mx.random, whose bits mlxarm reproduces (core/random.py), so they match too.
"""
import importlib.util
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mlxarm.core as ma
import mlxarm.nn as mnn
from _backends import skip_reason
from _matrix import on

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = [pytest.param(d, marks=pytest.mark.skipif(bool(skip_reason(d)), reason=f"{d} unavailable: {skip_reason(d)}"))
           for d in ("numpy", "llvm", "opencl", "vulkan")]

# Shared by the programs: weights drawn with numpy (biases zero, as many examples initialize them),
# and the lines the comparison reads ("STEP name numbers...", "CK name sum abs-sum").
PRELUDE = """
import numpy as np
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from functools import partial
from mlx.utils import tree_flatten, tree_unflatten

print("MODULE", mx.__name__)


def init_from_numpy(model, seed, scale):
    rng = np.random.default_rng(seed)
    new = []
    for k, v in tree_flatten(model.parameters()):
        if k.endswith("bias") or k.endswith("running_mean"):
            a = np.zeros(v.shape, np.float32)
        elif k.endswith("running_var"):
            a = np.ones(v.shape, np.float32)
        else:
            a = (rng.standard_normal(v.shape) * scale).astype(np.float32)
        new.append((k, mx.array(a)))
    model.update(tree_unflatten(new))


def checksums(model, tag):
    for k, v in tree_flatten(model.parameters()):
        print(f"CK {tag}.{k} {mx.sum(v).item():.8g} {mx.sum(mx.abs(v)).item():.8g}")
"""

# An MNIST-style conv net: zero background pixels under zero biases give pre-activations of exactly 0,
# where ReLU's gradient convention decides the biases' gradients.
CONVNET = PRELUDE + """
class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm(8)
        self.avg = nn.AvgPool2d(2)
        self.drop = nn.Dropout(0.25)
        self.fc = nn.Linear(8 * 2 * 2, 4)

    def __call__(self, x):
        x = self.pool(nn.relu(self.conv1(x)))
        x = self.avg(nn.relu(self.bn(self.conv2(x))))
        return self.fc(self.drop(x.reshape(x.shape[0], -1)))


def loss_fn(model, x, y):
    return nn.losses.cross_entropy(model(x), y, reduction="mean")


rng = np.random.default_rng(0)
images = np.zeros((48, 16, 16, 1), np.float32)
labels = rng.integers(0, 4, 48)
for i, c in enumerate(labels):
    r, col = 3 + 5 * (c // 2), 3 + 5 * (c % 2)
    images[i, r:r + 5, col:col + 5, 0] = rng.random((5, 5)) + 0.5
X, Y = mx.array(images), mx.array(labels.astype(np.int32))

mx.random.seed(7)
model = ConvNet()
init_from_numpy(model, 1, 0.3)
optimizer = optim.SGD(learning_rate=0.05, momentum=0.9, weight_decay=1e-4)
loss_and_grad = nn.value_and_grad(model, loss_fn)
state = [model.state, optimizer.state, mx.random.state]


@partial(mx.compile, inputs=state, outputs=state)
def step(x, y):
    loss, grads = loss_and_grad(model, x, y)
    optimizer.update(model, grads)
    return loss


model.train()
for s in range(6):
    idx = mx.array(np.arange(s * 16, s * 16 + 16) % 48)
    loss = step(X[idx], Y[idx])
    mx.eval(state)
    print(f"STEP {s} {loss.item():.8g} {model.bn.running_var.sum().item():.8g}")
model.eval()
print(f"STEP eval {mx.mean(mx.argmax(model(X), axis=1) == Y).item():.8g} {loss_fn(model, X, Y).item():.8g}")
checksums(model, "conv")
"""

# A tiny transformer language model as mlx-examples' transformer_lm trains one: causal mask, warmup and
# cosine schedule, AdamW, gradient clipping in a compiled step, weights saved and loaded back.
TRANSFORMER_LM = PRELUDE + """
import os, sys


class TransformerLM(nn.Module):
    def __init__(self, vocab, layers, dims, heads):
        super().__init__()
        self.embedding = nn.Embedding(vocab, dims)
        self.pe = nn.SinusoidalPositionalEncoding(dims)
        self.transformer = nn.TransformerEncoder(layers, dims, heads, norm_first=True)
        self.out_proj = nn.Linear(dims, vocab)

    def __call__(self, x):
        L = x.shape[1]
        mask = nn.MultiHeadAttention.create_additive_causal_mask(L)
        x = self.embedding(x) + self.pe(mx.arange(L))
        return self.out_proj(self.transformer(x, mask))


def loss_fn(model, x, y):
    return nn.losses.cross_entropy(model(x), y, reduction="mean")


vocab, ctx, batch = 40, 12, 6
rng = np.random.default_rng(0)
text = (np.cumsum(rng.integers(0, 3, 2000)) % vocab).astype(np.int32)
model = TransformerLM(vocab, 2, 32, 4)
init_from_numpy(model, 3, 0.2)
schedule = optim.join_schedules([optim.linear_schedule(0.0, 3e-3, 3), optim.cosine_decay(3e-3, 10, 1e-4)], [3])
optimizer = optim.AdamW(learning_rate=schedule, weight_decay=0.01)
loss_and_grad = nn.value_and_grad(model, loss_fn)
state = [model.state, optimizer.state]


@partial(mx.compile, inputs=state, outputs=state)
def step(x, y):
    loss, grads = loss_and_grad(model, x, y)
    grads, norm = optim.clip_grad_norm(grads, max_norm=0.5)
    optimizer.update(model, grads)
    return loss, norm


for s in range(6):
    starts = rng.integers(0, len(text) - ctx - 1, batch)
    x = mx.array(np.stack([text[i:i + ctx] for i in starts]))
    y = mx.array(np.stack([text[i + 1:i + ctx + 1] for i in starts]))
    loss, norm = step(x, y)
    mx.eval(state)
    print(f"STEP {s} {loss.item():.8g} {norm.item():.8g} {optimizer.learning_rate.item():.8g}")

path = os.path.join(sys.argv[1], "weights.safetensors")
model.save_weights(path)
reloaded = TransformerLM(vocab, 2, 32, 4)
reloaded.load_weights(path)
print(f"STEP reload {loss_fn(reloaded, x, y).item():.8g} {loss_fn(model, x, y).item():.8g}")
checksums(model, "lm")
"""


def _real_mlx_importable() -> bool:
    from mlxarm import alias

    try:
        spec = importlib.util.find_spec("mlx")
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.loader.__class__.__module__ != alias.__name__


def _run(tmp_path, source: str, on_mlxarm: bool) -> dict:
    """Runs ``source`` as a script (on mlxarm through the alias, or on real MLX) in a directory with no
    ``mlx`` folder; returns its numbered lines by name."""
    script = tmp_path / "program.py"
    script.write_text(textwrap.dedent(source))
    out = tmp_path / ("mlxarm" if on_mlxarm else "mlx")
    out.mkdir(exist_ok=True)
    command = [sys.executable] + (["-m", "mlxarm", "run", "--override"] if on_mlxarm else []) + [str(script), str(out)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": ROOT, "HOME": os.environ.get("HOME", "/tmp")}
    env.update({k: v for k, v in os.environ.items() if k.startswith("MLXARM_")})
    res = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"MODULE {'mlxarm.core' if on_mlxarm else 'mlx.core'}" in res.stdout.splitlines()
    lines = {}
    for line in res.stdout.splitlines():
        if not line.startswith(("STEP ", "CK ")):
            continue
        kind, name, *numbers = line.split()
        lines[f"{kind} {name}"] = [float(n) for n in numbers]
    return lines


def _assert_same_training(ours: dict, theirs: dict, rtol: float):
    assert list(ours) == list(theirs)
    for key, expected in theirs.items():
        got = ours[key]
        # A checksum's sum may cancel: its scale is the parameter's absolute sum.
        scale = max(map(abs, expected)) if key.startswith("CK") else 0.0
        for g, e in zip(got, expected, strict=True):
            assert abs(g - e) <= rtol * max(abs(e), scale, 1e-3), (key, got, expected)


@pytest.mark.mlx
@pytest.mark.skipif(not _real_mlx_importable(), reason="real MLX not installed")
@pytest.mark.parametrize("program", [CONVNET, TRANSFORMER_LM], ids=["convnet", "transformer_lm"])
def test_training_program_matches_real_mlx(tmp_path, program):
    pytest.importorskip("mlx.core")
    theirs = _run(tmp_path, program, on_mlxarm=False)
    ours = _run(tmp_path, program, on_mlxarm=True)
    _assert_same_training(ours, theirs, rtol=1e-4)


# --- maximum / minimum at a tie: MLX gives the gradient to the second argument ---------------------

def _grad(fn, x):
    return np.array(ma.grad(lambda a: fn(a).sum())(ma.array(x, dtype=ma.float32)))


def test_relu_and_clip_gradients_at_their_kinks_follow_mlx():
    # maximum(a, b) passes the cotangent to a where a > b and to b where a <= b (minimum: a < b, b >= a).
    x = np.array([-1.0, 0.0, 1.0], np.float32)
    np.testing.assert_array_equal(_grad(mnn.relu, x), [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(_grad(lambda a: mnn.leaky_relu(a, 0.5), x), [0.5, 1.0, 1.0])
    np.testing.assert_array_equal(_grad(lambda a: ma.clip(a, 0.0, 1.0), x), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(_grad(mnn.relu6, np.array([0.0, 3.0, 6.0], np.float32)), [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(_grad(lambda a: mnn.prelu(a, ma.array([0.25])), x), [0.25, 1.25, 1.0])
    a, b = ma.array([1.0, 2.0, 3.0]), ma.array([2.0, 2.0, 2.0])
    ga, gb = ma.grad(lambda a, b: ma.maximum(a, b).sum(), argnums=(0, 1))(a, b)
    assert ga.tolist() == [0.0, 0.0, 1.0] and gb.tolist() == [1.0, 1.0, 0.0]
    ga, gb = ma.grad(lambda a, b: ma.minimum(a, b).sum(), argnums=(0, 1))(a, b)
    assert ga.tolist() == [1.0, 0.0, 0.0] and gb.tolist() == [0.0, 1.0, 1.0]
    _, tangent = ma.jvp(lambda a: ma.maximum(a, 0.0), [ma.array(x)], [ma.ones(3)])
    assert tangent[0].tolist() == [0.0, 0.0, 1.0]


_KINKS = {
    "relu": (lambda nn, mx, a: nn.relu(a), [-1.0, 0.0, -0.0, 1.0]),
    "relu6": (lambda nn, mx, a: nn.relu6(a), [0.0, 6.0, 3.0]),
    "leaky_relu": (lambda nn, mx, a: nn.leaky_relu(a), [-1.0, 0.0, -0.0, 1.0]),
    "hard_tanh": (lambda nn, mx, a: nn.hard_tanh(a), [-1.0, 1.0, 0.0]),
    "hardswish": (lambda nn, mx, a: nn.hardswish(a), [-3.0, 3.0, 0.0]),
    "celu": (lambda nn, mx, a: nn.celu(a), [-1.0, 0.0, 1.0]),
    "prelu": (lambda nn, mx, a: nn.prelu(a, mx.array([0.2])), [-1.0, 0.0, 1.0]),
    "clip": (lambda nn, mx, a: mx.clip(a, -1.0, 1.0), [-1.0, 0.0, 1.0, 2.0]),
    "maximum_ties": (lambda nn, mx, a: mx.maximum(a, a[::-1]) * mx.arange(4), [1.0, 2.0, 2.0, 1.0]),
    "minimum_ties": (lambda nn, mx, a: mx.minimum(a[::-1], a) * mx.arange(4), [1.0, 2.0, 2.0, 1.0]),
    "abs": (lambda nn, mx, a: mx.abs(a), [-0.0, 0.0, -2.0]),
}


@pytest.mark.mlx
@pytest.mark.parametrize("name", list(_KINKS))
def test_gradient_at_kinks_matches_mlx(name):
    mx = pytest.importorskip("mlx.core")
    nn = pytest.importorskip("mlx.nn")
    fn, x = _KINKS[name]
    x = np.array(x, np.float32)
    theirs = np.array(mx.grad(lambda a: fn(nn, mx, a).sum())(mx.array(x)))
    ours = np.array(ma.grad(lambda a: fn(mnn, ma, a).sum())(ma.array(x)))
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(np.signbit(ours), np.signbit(theirs))


# --- sign: MLX computes (x > 0) - (x < 0), so NaN and -0.0 give +0.0 --------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_sign_of_nan_and_negative_zero_is_positive_zero(device):
    x = np.array([np.nan, -0.0, 0.0, -2.5, 3.0], np.float32)
    for dtype in (ma.float32, ma.float16, ma.bfloat16):
        got = np.array(on(device, lambda: ma.sign(ma.array(x).astype(dtype))).astype(ma.float32))
        np.testing.assert_array_equal(got, [0.0, 0.0, 0.0, -1.0, 1.0])
        assert not np.signbit(got[:3]).any(), (device, dtype)


# --- linalg.norm and linalg.cross are differentiable, as MLX composes them from ops -------------------

def test_cosine_similarity_loss_trains():
    rng = np.random.default_rng(0)
    a = ma.array(rng.standard_normal((5, 4)).astype(np.float32))
    b = ma.array(rng.standard_normal((5, 4)).astype(np.float32))
    value, g = ma.value_and_grad(lambda a: mnn.losses.cosine_similarity_loss(a, b, reduction="sum"))(a)
    an, bn = np.array(a), np.array(b)
    na, nb = np.linalg.norm(an, axis=1, keepdims=True), np.linalg.norm(bn, axis=1, keepdims=True)
    expected = bn / (na * nb) - an * np.sum(an * bn, axis=1, keepdims=True) / (na ** 3 * nb)
    np.testing.assert_allclose(np.array(g), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(value.item(), np.sum(np.sum(an * bn, 1) / (na * nb).ravel()), rtol=1e-5)


_NORMS = [
    {}, {"axis": 1}, {"axis": (0, 2), "keepdims": True}, {"ord": 1, "axis": -1}, {"ord": 3, "axis": 0},
    {"ord": 0.5, "axis": 1}, {"ord": -2, "axis": 2}, {"ord": math.inf, "axis": 1}, {"ord": -math.inf, "axis": 2},
    {"ord": 0, "axis": 1}, {"ord": "fro", "axis": (2, 0)}, {"ord": 1, "axis": (2, 0)},
    {"ord": -1, "axis": (1, 2), "keepdims": True}, {"ord": math.inf, "axis": (0, 1)},
    {"ord": -math.inf, "axis": (2, 1), "keepdims": True},
]


@pytest.mark.mlx
@pytest.mark.parametrize("kwargs", _NORMS, ids=lambda k: ",".join(f"{a}={v}" for a, v in k.items()) or "l2")
def test_norm_gradient_matches_mlx(kwargs):
    mx = pytest.importorskip("mlx.core")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    t = rng.standard_normal((2, 3, 4)).astype(np.float32)

    def check(lib, a):
        out = lib.linalg.norm(a, **kwargs)
        weights = lib.arange(out.size, dtype=lib.float32).reshape(out.shape) + 1
        return (out * weights).sum()

    theirs = mx.grad(lambda a: check(mx, a))(mx.array(x))
    ours = ma.grad(lambda a: check(ma, a))(ma.array(x))
    np.testing.assert_allclose(np.array(ours), np.array(theirs), rtol=1e-5, atol=1e-6)
    theirs = mx.jvp(lambda a: check(mx, a), [mx.array(x)], [mx.array(t)])[1][0]
    ours = ma.jvp(lambda a: check(ma, a), [ma.array(x)], [ma.array(t)])[1][0]
    np.testing.assert_allclose(ours.item(), theirs.item(), rtol=1e-5, atol=1e-6)


@pytest.mark.mlx
@pytest.mark.parametrize("sizes", [(3, 3), (3, 2), (2, 3), (2, 2)])
def test_cross_gradient_matches_mlx(sizes):
    mx = pytest.importorskip("mlx.core")
    rng = np.random.default_rng(2)
    a = rng.standard_normal((2, sizes[0])).astype(np.float32)
    b = rng.standard_normal((4, 1, sizes[1])).astype(np.float32)

    def f(lib, a, b):
        return (lib.linalg.cross(a, b) ** 2 * lib.array([1.0, 2.0, 3.0])).sum()

    theirs = mx.grad(lambda a, b: f(mx, a, b), argnums=(0, 1))(mx.array(a), mx.array(b))
    ours = ma.grad(lambda a, b: f(ma, a, b), argnums=(0, 1))(ma.array(a), ma.array(b))
    for o, t in zip(ours, theirs):
        np.testing.assert_allclose(np.array(o), np.array(t), rtol=1e-5, atol=1e-6)


@pytest.mark.mlx
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_determinant_gradient_matches_mlx(n):
    # MLX differentiates the cofactor formula it uses up to 3x3; beyond, its LU path has no gradient.
    mx = pytest.importorskip("mlx.core")
    rng = np.random.default_rng(n)
    a = (rng.standard_normal((2, n, n)) + 2 * np.eye(n)).astype(np.float32)

    def f(lib, a):
        sign, logdet = lib.linalg.slogdet(a)
        return (lib.linalg.det(a) * lib.array([1.0, -2.0])).sum() + logdet.sum() + sign.sum()

    try:
        theirs = mx.grad(lambda a: f(mx, a))(mx.array(a))
    except ValueError:
        with pytest.raises(ValueError, match="vjp"):
            ma.grad(lambda a: f(ma, a))(ma.array(a))
        return
    ours = ma.grad(lambda a: f(ma, a))(ma.array(a))
    np.testing.assert_allclose(np.array(ours), np.array(theirs), rtol=1e-5, atol=1e-5)


# --- padding modes other than constant are differentiable (reflect/edge padding in conv nets) ------

@pytest.mark.mlx
@pytest.mark.parametrize("mode", ["edge", "reflect", "symmetric", "constant"])
@pytest.mark.parametrize("widths", [1, [(2, 1), (0, 3)], [(3, 3), (1, 2)]], ids=["1", "2-1,0-3", "3-3,1-2"])
def test_pad_gradient_matches_mlx(mode, widths):
    mx = pytest.importorskip("mlx.core")
    x = (np.arange(12, dtype=np.float32).reshape(3, 4) / 7)

    def f(lib, a):
        padded = lib.pad(a, widths, mode=mode)
        return (padded ** 2 * lib.arange(1, 1 + padded.size).reshape(padded.shape)).sum()

    theirs = mx.grad(lambda a: f(mx, a))(mx.array(x))
    ours = ma.grad(lambda a: f(ma, a))(ma.array(x))
    np.testing.assert_allclose(np.array(ours), np.array(theirs), rtol=1e-6)
    t = np.ones_like(x)
    theirs = mx.jvp(lambda a: f(mx, a), [mx.array(x)], [mx.array(t)])[1][0]
    ours = ma.jvp(lambda a: f(ma, a), [ma.array(x)], [ma.array(t)])[1][0]
    np.testing.assert_allclose(ours.item(), theirs.item(), rtol=1e-6)


# --- a fully unfrozen quantized model: MLX's error types for what has no gradient ------------------

def test_quantized_matmul_gradient_errors_have_mlx_types():
    rng = np.random.default_rng(0)
    w = ma.array(rng.standard_normal((8, 32)).astype(np.float32))
    x = ma.ones((2, 32))
    wq, scales, biases = ma.quantize(w, 32, 4)
    with pytest.raises(RuntimeError, match=r"\[QuantizedMatmul::vjp\] no gradient wrt the quantized weights"):
        ma.grad(lambda w: ma.quantized_matmul(x, w, scales, biases, True, 32, 4).sum())(wq)
    fq, fscales = ma.quantize(w, 32, 4, mode="mxfp4")
    with pytest.raises(ValueError, match=r"no gradient wrt scales in mxfp4 quantization"):
        ma.grad(lambda s: ma.quantized_matmul(x, fq, s, None, True, 32, 4, mode="mxfp4").sum())(fscales)
    index = ma.array([0])
    with pytest.raises(RuntimeError, match=r"\[GatherQMM::vjp\] cannot compute the gradient wrt the indices"):
        ma.grad(lambda i: ma.gather_qmm(x, wq[None], scales[None], biases[None], lhs_indices=i, rhs_indices=i,
                                        transpose=True, group_size=32, bits=4).sum())(index)
    model = mnn.Sequential(mnn.Linear(32, 8))
    mnn.quantize(model, 32, 4)
    model.unfreeze()
    with pytest.raises(RuntimeError, match="no gradient wrt the quantized weights"):
        mnn.value_and_grad(model, lambda m, x: m(x).sum())(model, x)


# --- an additive attention mask is differentiable (learned position biases passed as the mask) ------

def test_attention_mask_gradient_is_that_of_the_explicit_softmax():
    rng = np.random.default_rng(3)
    q, k, v = (ma.array(rng.standard_normal(s).astype(np.float32)) for s in ((1, 2, 3, 4), (1, 2, 5, 4), (1, 2, 5, 4)))
    bias = ma.array(rng.standard_normal((2, 1, 5)).astype(np.float32))
    weights = ma.arange(24, dtype=ma.float32).reshape(1, 2, 3, 4)

    def fused(b):
        return (ma.fast.scaled_dot_product_attention(q, k, v, scale=0.5, mask=b) * weights).sum()

    def explicit(b):
        scores = (q * 0.5) @ k.swapaxes(-1, -2) + b
        return (ma.softmax(scores, axis=-1, precise=True) @ v * weights).sum()

    np.testing.assert_allclose(np.array(ma.grad(fused)(bias)), np.array(ma.grad(explicit)(bias)), rtol=1e-5, atol=1e-6)
    assert float(ma.abs(ma.grad(fused)(bias)).sum()) > 0


@pytest.mark.mlx
def test_attention_mask_gradient_matches_mlx():
    mx = pytest.importorskip("mlx.core")
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((1, 2, 3, 4), (1, 2, 5, 4), (1, 2, 5, 4)))
    bias = rng.standard_normal((3, 5)).astype(np.float32)

    def f(lib, b):
        out = lib.fast.scaled_dot_product_attention(lib.array(q), lib.array(k), lib.array(v), scale=0.5, mask=b)
        return (out * lib.arange(24).reshape(1, 2, 3, 4)).sum()

    theirs = mx.grad(lambda b: f(mx, b))(mx.array(bias))
    ours = ma.grad(lambda b: f(ma, b))(ma.array(bias))
    np.testing.assert_allclose(np.array(ours), np.array(theirs), rtol=1e-5, atol=1e-5)


# --- grad of arguments that hold no array (a model with nothing trainable) --------------------------

def test_gradient_wrt_arguments_without_arrays_is_refused_as_in_mlx():
    x = ma.array([1.0, 2.0])
    for transform in (ma.grad, ma.value_and_grad):
        with pytest.raises(ValueError, match=r"^\[grad\] Must specify at least one argument\.$"):
            transform(lambda params, x: x.sum())({}, x)
        with pytest.raises(ValueError, match=r"^\[grad\] Must specify at least one argument\.$"):
            transform(lambda params: ma.array(1.0))({"layers": [{}, []]})
    model = mnn.QuantizedEmbedding(10, 64, group_size=64, bits=4)  # everything in it is frozen
    with pytest.raises(ValueError, match="Must specify at least one argument"):
        mnn.value_and_grad(model, lambda m, i: m(i).sum())(model, ma.array([1, 2]))
    grads = ma.grad(lambda params, x: (x * 2).sum(), argnums=(0, 1))({"layers": []}, x)
    assert grads[0] == {"layers": []} and grads[1].tolist() == [2.0, 2.0]
