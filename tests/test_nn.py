"""mlxarm.nn against MLX's mlx.nn: parameter trees, layer outputs with shared weights,
activations, losses, initializers and the Module API."""
import os

import numpy as np
import pytest

import mlxarm.core as mx
import mlxarm.nn as nn
from mlxarm.utils import tree_flatten


@pytest.fixture(scope="module")
def real():
    core = pytest.importorskip("mlx.core")
    import mlx.nn
    import mlx.utils
    return core, mlx.nn, mlx.utils


def shapes(tree, flatten):
    return [(k, tuple(v.shape), str(v.dtype).split(".")[-1]) for k, v in flatten(tree)]


def copy_weights(ours, theirs, real_utils):
    """Give ``ours`` the parameters of the MLX module ``theirs``."""
    flat = real_utils.tree_flatten(theirs.parameters())
    ours.load_weights([(k, mx.array(np.array(v))) for k, v in flat])


def close(a, b, rtol=1e-5, atol=1e-5):
    a_np, b_np = np.array(a), np.array(b)
    assert a.shape == tuple(b.shape)
    assert str(a.dtype).split(".")[-1] == str(b.dtype).split(".")[-1]
    np.testing.assert_allclose(a_np, b_np, rtol=rtol, atol=atol)


RNG = np.random.default_rng(0)


def data(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


# Each case: a module factory (called with the nn module), and its call's input arrays.
LAYER_CASES = {
    "linear": (lambda n: n.Linear(4, 3), [data(2, 5, 4)]),
    "linear_nobias": (lambda n: n.Linear(4, 3, bias=False), [data(5, 4)]),
    "bilinear": (lambda n: n.Bilinear(3, 4, 5), [data(2, 3), data(2, 4)]),
    "embedding": (lambda n: n.Embedding(10, 4), [np.array([[1, 2], [9, 0]], np.int32)]),
    "layer_norm": (lambda n: n.LayerNorm(6), [data(3, 6)]),
    "layer_norm_noaffine": (lambda n: n.LayerNorm(6, affine=False), [data(3, 6)]),
    "layer_norm_nobias": (lambda n: n.LayerNorm(6, bias=False), [data(3, 6)]),
    "rms_norm": (lambda n: n.RMSNorm(6, eps=1e-6), [data(2, 3, 6)]),
    "group_norm": (lambda n: n.GroupNorm(2, 6), [data(2, 3, 3, 6)]),
    "group_norm_pt": (lambda n: n.GroupNorm(3, 6, pytorch_compatible=True), [data(2, 4, 6)]),
    "instance_norm": (lambda n: n.InstanceNorm(4, affine=True), [data(2, 3, 3, 4)]),
    "batch_norm": (lambda n: n.BatchNorm(4), [data(5, 4)]),
    "batch_norm_eval": (lambda n: n.BatchNorm(4).eval(), [data(2, 3, 4)]),
    "prelu": (lambda n: n.PReLU(), [data(3, 4)]),
    "sequential": (lambda n: n.Sequential(n.Linear(4, 8), n.GELU(), n.Linear(8, 2)),
                   [data(3, 4)]),
    "mha": (lambda n: n.MultiHeadAttention(8, 2), [data(2, 5, 8)] * 3),
    "mha_bias": (lambda n: n.MultiHeadAttention(8, 4, key_input_dims=6, value_dims=12,
                                                 bias=True),
                 [data(2, 5, 8), data(2, 3, 6), data(2, 3, 6)]),
    "encoder": (lambda n: n.TransformerEncoder(2, 8, 2), [data(2, 5, 8), None]),
    "encoder_post": (lambda n: n.TransformerEncoderLayer(8, 2, norm_first=False),
                     [data(2, 5, 8), None]),
    "decoder": (lambda n: n.TransformerDecoderLayer(8, 2),
                [data(2, 4, 8), data(2, 5, 8), None, None]),
    "rope": (lambda n: n.RoPE(4), [data(1, 2, 5, 6)]),
    "rope_traditional": (lambda n: n.RoPE(6, traditional=True, base=100), [data(2, 5, 6)]),
    "sinusoidal": (lambda n: n.SinusoidalPositionalEncoding(8), [data(2, 5)]),
    "sinusoidal_cos": (lambda n: n.SinusoidalPositionalEncoding(2, cos_first=True,
                                                                 full_turns=True), [data(5)]),
    "alibi": (lambda n: n.ALiBi(), [data(1, 3, 4, 4)]),
    "dropout_eval": (lambda n: n.Dropout(0.3).eval(), [data(3, 4)]),
    "identity": (lambda n: n.Identity(3, x=1), [data(2)]),
    "max_pool1d": (lambda n: n.MaxPool1d(3, stride=2, padding=1), [data(2, 9, 3)]),
    "avg_pool1d": (lambda n: n.AvgPool1d(2), [data(2, 8, 3)]),
    "max_pool2d": (lambda n: n.MaxPool2d(2), [data(1, 4, 6, 2)]),
    "avg_pool2d": (lambda n: n.AvgPool2d((2, 3), stride=(1, 2), padding=(1, 0)),
                   [data(2, 5, 7, 3)]),
    "max_pool3d": (lambda n: n.MaxPool3d(2, stride=1), [data(1, 3, 4, 3, 2)]),
    "avg_pool3d": (lambda n: n.AvgPool3d(2), [data(1, 4, 4, 2, 2)]),
    "rnn": (lambda n: n.RNN(3, 4, nonlinearity=n.relu), [data(2, 5, 3), data(2, 4)]),
    "rnn_nobias": (lambda n: n.RNN(3, 4, bias=False), [data(5, 3)]),
    "gru": (lambda n: n.GRU(3, 4), [data(2, 5, 3)]),
    "gru_hidden": (lambda n: n.GRU(3, 4), [data(2, 5, 3), data(2, 4)]),
    "gru_nobias": (lambda n: n.GRU(3, 4, bias=False), [data(5, 3), data(4)]),
    "lstm": (lambda n: n.LSTM(3, 4), [data(2, 5, 3)]),
    "lstm_state": (lambda n: n.LSTM(3, 4, bias=False), [data(2, 5, 3), data(2, 4), data(2, 4)]),
}


@pytest.mark.mlx
@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_layer_matches_mlx(real, name):
    core, real_nn, real_utils = real
    factory, inputs = LAYER_CASES[name]
    theirs, ours = factory(real_nn), factory(nn)
    assert shapes(ours.parameters(), tree_flatten) == shapes(theirs.parameters(),
                                                             real_utils.tree_flatten)
    if not name.startswith("rnn"):  # an RNN's repr shows its nonlinearity's address
        assert repr(ours) == repr(theirs)
    copy_weights(ours, theirs, real_utils)
    expected = theirs(*[None if x is None else core.array(x) for x in inputs])
    got = ours(*[None if x is None else mx.array(x) for x in inputs])
    if isinstance(got, tuple):
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            close(g, e, rtol=1e-4, atol=1e-5)
    else:
        close(got, expected, rtol=1e-4, atol=1e-5)
    # Layers that update state while called (BatchNorm's running statistics).
    assert shapes(ours.parameters(), tree_flatten) == shapes(theirs.parameters(),
                                                             real_utils.tree_flatten)
    for (k, a), (_, b) in zip(tree_flatten(ours.parameters()),
                              real_utils.tree_flatten(theirs.parameters())):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.mlx
def test_causal_mask_and_embedding_as_linear(real):
    core, real_nn, real_utils = real
    for dtype in ("float32", "float16"):
        close(nn.MultiHeadAttention.create_additive_causal_mask(4, getattr(mx, dtype)),
              real_nn.MultiHeadAttention.create_additive_causal_mask(4, getattr(core, dtype)))
    theirs, ours = real_nn.Embedding(6, 4), nn.Embedding(6, 4)
    copy_weights(ours, theirs, real_utils)
    x = data(3, 4)
    close(ours.as_linear(mx.array(x)), theirs.as_linear(core.array(x)))
    close(nn.ALiBi.create_alibi_slope(6), real_nn.ALiBi.create_alibi_slope(6))
    close(nn.ALiBi.create_alibi_matrix(5, 5, 3, offset=2),
          real_nn.ALiBi.create_alibi_matrix(5, 5, 3, offset=2))


@pytest.mark.mlx
def test_seeded_initialization_matches(real):
    core, real_nn, real_utils = real
    for factory in (lambda n: n.Linear(5, 3), lambda n: n.Embedding(7, 4),
                    lambda n: n.MultiHeadAttention(4, 2, bias=True)):
        core.random.seed(11)
        mx.random.seed(11)
        theirs, ours = factory(real_nn), factory(nn)
        for (k, a), (_, b) in zip(tree_flatten(ours.parameters()),
                                  real_utils.tree_flatten(theirs.parameters())):
            np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-6, atol=1e-6, err_msg=k)


@pytest.mark.mlx
@pytest.mark.parametrize("p", [0.5, 0.1])
def test_dropout_training(real, p):
    core, real_nn, _ = real
    x = data(4, 6)
    core.random.seed(5)
    mx.random.seed(5)
    close(nn.Dropout(p)(mx.array(x)), real_nn.Dropout(p)(core.array(x)))
    x = data(2, 3, 3, 4)
    close(nn.Dropout2d(p)(mx.array(x)), real_nn.Dropout2d(p)(core.array(x)))
    x = data(2, 2, 3, 3, 4)
    close(nn.Dropout3d(p)(mx.array(x)), real_nn.Dropout3d(p)(core.array(x)))


def test_constructor_errors():
    with pytest.raises(ValueError, match=r"dropout probability 1 is not in \[0, 1\)"):
        nn.Dropout(1)
    with pytest.raises(ValueError, match=r"\[LayerNorm\] 'eps' must be positive"):
        nn.LayerNorm(3, eps=0)
    with pytest.raises(ValueError, match="evenly divisible"):
        nn.GroupNorm(4, 6)
    with pytest.raises(ValueError, match="divisible by the number of heads"):
        nn.MultiHeadAttention(6, 4)
    with pytest.raises(ValueError, match="approximation should be in"):
        nn.GELU("bad")
    with pytest.raises(ValueError, match="Expected 3 or 4 dimensions"):
        nn.Dropout2d()(mx.zeros((2, 3)))


ACTIVATIONS = ["sigmoid", "relu", "relu2", "relu6", "leaky_relu", "log_softmax", "elu",
               "softmax", "softplus", "softsign", "softshrink", "celu", "silu", "log_sigmoid",
               "gelu", "gelu_approx", "gelu_fast_approx", "glu", "step", "selu", "mish",
               "hardswish", "hard_tanh", "hard_shrink", "softmin", "tanh"]
ACTIVATION_MODULES = ["Sigmoid", "Mish", "ReLU", "ReLU2", "ReLU6", "LeakyReLU", "ELU",
                      "Softmax", "Softplus", "Softsign", "Softshrink", "CELU", "SiLU",
                      "LogSoftmax", "LogSigmoid", "GELU", "Tanh", "Hardswish", "Step", "SELU",
                      "HardTanh", "HardShrink", "Softmin", "GLU"]


@pytest.mark.mlx
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float16", 2e-3),
                                       ("bfloat16", 2e-2)])
def test_activations(real, dtype, tol):
    core, real_nn, _ = real
    x = data(3, 8) * 3
    x[0, :3] = [0.0, 0.5, -0.5]
    ours_x, their_x = mx.array(x).astype(getattr(mx, dtype)), core.array(x).astype(
        getattr(core, dtype))
    for name in ACTIVATIONS:
        got, expected = getattr(nn, name)(ours_x), getattr(real_nn, name)(their_x)
        assert got.dtype.size == expected.dtype.size, name
        np.testing.assert_allclose(np.array(got.astype(mx.float32)),
                                   np.array(expected.astype(core.float32)), rtol=tol, atol=tol,
                                   err_msg=name)
    for name in ACTIVATION_MODULES:
        got, expected = getattr(nn, name)()(ours_x), getattr(real_nn, name)()(their_x)
        np.testing.assert_allclose(np.array(got.astype(mx.float32)),
                                   np.array(expected.astype(core.float32)), rtol=tol, atol=tol,
                                   err_msg=name)
    for approx in ("precise", "tanh", "fast"):
        close(nn.GELU(approx)(mx.array(x)), real_nn.GELU(approx)(core.array(x)))
    alpha = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], np.float32)
    close(nn.prelu(mx.array(x), mx.array(alpha)), real_nn.prelu(core.array(x),
                                                                 core.array(alpha)))
    close(nn.leaky_relu(mx.array(x), 0.2), real_nn.leaky_relu(core.array(x), 0.2))
    close(nn.glu(mx.array(x[:2]), axis=0), real_nn.glu(core.array(x[:2]), axis=0))
    close(nn.step(mx.array(x), 0.5), real_nn.step(core.array(x), 0.5))


def loss_cases():
    logits, probs = data(4, 5), np.abs(data(4, 5))
    probs /= probs.sum(-1, keepdims=True)
    labels = np.array([0, 3, 4, 1], np.int32)
    p, t = data(3, 4), data(3, 4)
    unit = 1 / (1 + np.exp(-data(3, 4)))
    signs = np.sign(data(3, 4)).astype(np.float32)
    w = np.abs(data(4))
    return [
        ("cross_entropy", (logits, labels), {}),
        ("cross_entropy", (logits, labels), {"reduction": "mean", "label_smoothing": 0.1}),
        ("cross_entropy", (logits, probs), {"reduction": "sum"}),
        ("cross_entropy", (logits.T.copy(), labels), {"axis": 0, "weights": w}),
        ("binary_cross_entropy", (p, (t > 0).astype(np.float32)), {}),
        ("binary_cross_entropy", (unit, (t > 0).astype(np.float32)),
         {"with_logits": False, "reduction": "none"}),
        ("l1_loss", (p, t), {}),
        ("mse_loss", (p, t), {"reduction": "sum"}),
        ("nll_loss", (logits, labels), {"reduction": "mean"}),
        ("gaussian_nll_loss", (p, t, np.abs(t)), {"full": True}),
        ("kl_div_loss", (np.log(probs), np.log(probs[::-1].copy())), {}),
        ("smooth_l1_loss", (p, t), {"beta": 0.5}),
        ("triplet_loss", (p, t, unit), {"reduction": "mean"}),
        ("hinge_loss", (p, signs), {}),
        ("huber_loss", (p, t), {"delta": 0.7}),
        ("log_cosh_loss", (p, t), {"reduction": "sum"}),
        ("cosine_similarity_loss", (p, t), {}),
        ("margin_ranking_loss", (p, t, signs), {"margin": 0.1}),
    ]


@pytest.mark.mlx
def test_losses(real):
    core, real_nn, _ = real
    for name, args, kwargs in loss_cases():
        kw_ours = {k: mx.array(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
        kw_theirs = {k: core.array(v) if isinstance(v, np.ndarray) else v
                     for k, v in kwargs.items()}
        got = getattr(nn.losses, name)(*map(mx.array, args), **kw_ours)
        expected = getattr(real_nn.losses, name)(*map(core.array, args), **kw_theirs)
        assert got.shape == tuple(expected.shape), name
        np.testing.assert_allclose(np.array(got), np.array(expected), rtol=1e-5, atol=1e-5,
                                   err_msg=name)


def test_loss_errors():
    a, b = mx.zeros((2, 3)), mx.zeros((3, 2))
    with pytest.raises(ValueError, match=r"Predictions shape \(2, 3\) does not match targets"):
        nn.losses.mse_loss(a, b)
    with pytest.raises(ValueError, match="Invalid reduction"):
        nn.losses.l1_loss(a, a, reduction="avg")
    with pytest.raises(ValueError, match="Targets shape"):
        nn.losses.cross_entropy(a, mx.zeros((3,), mx.int32))
    with pytest.raises(ValueError, match="Label smoothing"):
        nn.losses.cross_entropy(a, mx.zeros((2,), mx.int32), label_smoothing=1.0)


@pytest.mark.mlx
def test_initializers(real):
    core, real_nn, _ = real
    target = (mx.zeros((4, 6)), core.zeros((4, 6)))
    cases = [("constant", (0.5,), {}), ("normal", (1.0, 2.0), {}), ("uniform", (-1, 2), {}),
             ("identity", (), {}), ("glorot_normal", (), {}), ("glorot_uniform", (), {}),
             ("he_normal", (), {}), ("he_uniform", (), {}), ("sparse", (0.5,), {})]
    for name, args, kwargs in cases:
        if name == "identity":
            arrays = (mx.zeros((3, 3)), core.zeros((3, 3)))
        else:
            arrays = target
        core.random.seed(2)
        mx.random.seed(2)
        got = getattr(nn.init, name)(*args, **kwargs)(arrays[0])
        expected = getattr(real_nn.init, name)(*args, **kwargs)(arrays[1])
        close(got, expected, rtol=1e-5, atol=1e-6)
    core.random.seed(2)
    mx.random.seed(2)
    close(nn.init.he_normal()(target[0], mode="fan_out", gain=2.0),
          real_nn.init.he_normal()(target[1], mode="fan_out", gain=2.0))
    q = nn.init.orthogonal()(mx.zeros((3, 5)))
    np.testing.assert_allclose(np.array(q @ q.T), np.eye(3), atol=1e-5)
    with pytest.raises(ValueError, match="at least 2 dimensional"):
        nn.init.glorot_uniform()(mx.zeros((3,)))


# -- Module API -------------------------------------------------------------------------------

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(3, 4)
        self.blocks = [nn.Linear(4, 4), {"norm": nn.LayerNorm(4), "scale": mx.ones((4,))}]
        self._hidden = mx.zeros((2,))
        self.width = 4
        self.act = nn.relu

    def __call__(self, x):
        x = nn.relu(self.encoder(x))
        x = self.blocks[1]["norm"](self.blocks[0](x))
        return x * self.blocks[1]["scale"]


def test_attribute_rules():
    net = Net()
    assert set(net.keys()) == {"encoder", "blocks", "_hidden"}
    assert net.width == 4 and "width" not in net
    assert net._hidden.shape == (2,)
    net.width = mx.zeros((1,))  # an array replaces the plain attribute
    assert "width" in net and net.width.shape == (1,)
    net.width = 7
    assert "width" not in net and net.width == 7
    del net.width
    with pytest.raises(AttributeError):
        net.width
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        net.missing
    assert net.state is net and net.training


def test_parameters_and_children():
    net = Net()
    flat = dict(tree_flatten(net.parameters()))
    assert set(flat) == {"encoder.weight", "encoder.bias", "blocks.0.weight", "blocks.0.bias",
                         "blocks.1.norm.weight", "blocks.1.norm.bias", "blocks.1.scale"}
    children = net.children()
    assert set(children) == {"encoder", "blocks"} and children["blocks"][0] is net.blocks[0]
    assert [k for k, _ in net.named_modules()] == ["", "blocks.1.norm", "blocks.0", "encoder"]
    assert len(net.modules()) == 4
    leaves = tree_flatten(net.leaf_modules(), is_leaf=nn.Module.is_module)
    assert sorted(k for k, _ in leaves) == ["blocks.0", "blocks.1.norm", "encoder"]


@pytest.mark.mlx
def test_module_trees_match_mlx(real):
    core, real_nn, real_utils = real

    def build(n, c):
        class M(n.Module):
            def __init__(self):
                super().__init__()
                self.a = n.Linear(2, 3)
                self.b = [n.Sequential(n.ReLU(), n.Linear(3, 3)), {"x": c.zeros((2,)),
                                                                    "y": [n.LayerNorm(3)]}]
                self._c = c.zeros((1,))
        return M()

    ours, theirs = build(nn, mx), build(real_nn, core)
    for method in ("parameters", "trainable_parameters", "children", "leaf_modules"):
        got = tree_flatten(getattr(ours, method)(), is_leaf=nn.Module.is_module)
        expected = real_utils.tree_flatten(getattr(theirs, method)(),
                                           is_leaf=real_nn.Module.is_module)
        assert [k for k, _ in got] == [k for k, _ in expected], method
    assert [k for k, _ in ours.named_modules()] == [k for k, _ in theirs.named_modules()]
    for m in (ours, theirs):
        m.freeze()
        m.unfreeze(keys=["bias"])
        m.b[0].freeze(keys="weight", recurse=False)
    got = tree_flatten(ours.trainable_parameters())
    expected = real_utils.tree_flatten(theirs.trainable_parameters())
    assert [k for k, _ in got] == [k for k, _ in expected]
    assert repr(ours) == repr(theirs)


def test_freeze_unfreeze():
    net = Net()
    net.freeze()
    assert tree_flatten(net.trainable_parameters()) == []
    net.unfreeze(keys="bias")
    assert sorted(k for k, _ in tree_flatten(net.trainable_parameters())) == [
        "blocks.0.bias", "blocks.1.norm.bias", "encoder.bias"]
    net.unfreeze()
    net.encoder.freeze(keys=["weight"])
    assert "weight" not in net.trainable_parameters()["encoder"]
    with pytest.raises(KeyError, match="Module doesn't contain member nope."):
        net.freeze(keys="nope", strict=True)
    net.freeze(keys="bias", strict=True)  # exists in some module of the tree
    bn = nn.BatchNorm(3)
    bn.unfreeze()
    assert set(bn.trainable_parameters()) == {"weight", "bias"}


def test_update_and_apply():
    net = Net()
    net.update({"encoder": {"bias": mx.full((4,), 2.0)}, "blocks": [{}, {"scale": mx.zeros((4,))}]})
    assert np.array(net.encoder.bias).tolist() == [2.0] * 4
    assert np.array(net.blocks[1]["scale"]).tolist() == [0.0] * 4
    with pytest.raises(ValueError, match='Module does not have parameter named "nope".'):
        net.update({"nope": mx.zeros((1,))})
    with pytest.raises(ValueError, match="Received invalid type: int."):
        net.update({"encoder": {"bias": 3}})
    with pytest.raises(ValueError, match="List index 2 is out of bounds for destination of length 2."):
        net.update({"blocks": [{}, {}, {}, {}, {}, {}]})
    net.update({"nope": 1}, strict=False)
    net.apply(lambda p: p * 0)
    assert all(float(mx.sum(mx.abs(v)).item()) == 0 for _, v in tree_flatten(net.parameters()))
    net.set_dtype(mx.float16)
    assert {v.dtype for _, v in tree_flatten(net.parameters())} == {mx.float16}
    ints = nn.Module()
    ints.idx = mx.arange(3)
    ints.w = mx.zeros((2,))
    ints.set_dtype(mx.bfloat16)
    assert ints.idx.dtype == mx.int32 and ints.w.dtype == mx.bfloat16
    ints.set_dtype(mx.float32, predicate=None)
    assert ints.idx.dtype == mx.float32


def test_update_modules_and_training_mode():
    net = Net()
    replacement = nn.Linear(4, 4, bias=False)
    net.update_modules({"blocks": [replacement]})
    assert net.blocks[0] is replacement
    with pytest.raises(ValueError, match='Module does not have sub-module named "x".'):
        net.update_modules({"x": nn.Identity()})
    net.eval()
    assert all(not m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    x = mx.ones((2, 3))
    assert net(x).shape == (2, 4)


@pytest.mark.mlx
@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_save_load_weights(real, tmp_path, suffix):
    core, real_nn, real_utils = real
    path = os.path.join(tmp_path, "w" + suffix)
    ours = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    ours.save_weights(path)
    theirs = real_nn.Sequential(real_nn.Linear(3, 4), real_nn.ReLU(), real_nn.Linear(4, 2))
    theirs.load_weights(path)
    again = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).load_weights(path)
    x = data(5, 3)
    close(again(mx.array(x)), theirs(core.array(x)))
    close(ours(mx.array(x)), theirs(core.array(x)))
    theirs_path = os.path.join(tmp_path, "theirs.npz")
    theirs.save_weights(theirs_path)
    again.load_weights(theirs_path)
    close(again(mx.array(x)), theirs(core.array(x)))


def test_load_weights_strict():
    lin = nn.Linear(2, 3)
    with pytest.raises(ValueError, match="Missing 1 parameters: \nbias."):
        lin.load_weights([("weight", mx.zeros((3, 2)))])
    with pytest.raises(ValueError, match="Received 1 parameters not in model: \nextra."):
        lin.load_weights([("weight", mx.zeros((3, 2))), ("bias", mx.zeros((3,))),
                          ("extra", mx.zeros((1,)))])
    with pytest.raises(ValueError, match=r"Expected shape \(3,\) but received shape \(2,\) "
                                         "for parameter bias"):
        lin.load_weights([("weight", mx.zeros((3, 2))), ("bias", mx.zeros((2,)))])
    lin.load_weights([("weight", mx.zeros((3, 2)))], strict=False)
    assert float(mx.sum(lin.weight).item()) == 0.0
    with pytest.raises(ValueError, match="Unsupported file extension"):
        lin.save_weights("w.bin")
