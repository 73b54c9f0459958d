"""mlxarm.optimizers against MLX's mlx.optimizers: several update steps on the same parameter
and gradient trees, schedules, gradient clipping and optimizer state."""
import numpy as np
import pytest

import mlxarm.core as mx
import mlxarm.nn as nn
import mlxarm.optimizers as optim
from mlxarm.utils import tree_flatten, tree_map


@pytest.fixture(scope="module")
def real():
    core = pytest.importorskip("mlx.core")
    import mlx.optimizers
    import mlx.utils
    return core, mlx.optimizers, mlx.utils


def numpy_tree(rng, scale=1.0):
    return {"w": rng.standard_normal((3, 4)).astype(np.float32) * scale,
            "layers": [rng.standard_normal((5,)).astype(np.float32) * scale,
                       {"k": rng.standard_normal((2, 3, 4)).astype(np.float32) * scale}]}


def as_arrays(tree, module):
    return tree_map(module.array, tree)


def assert_trees_close(ours, theirs, real_utils, rtol=1e-5, atol=1e-6):
    # Sorted: MLX's tree_merge (used by MultiOptimizer) builds dicts in set order.
    got = sorted(tree_flatten(ours), key=lambda kv: kv[0])
    expected = sorted(real_utils.tree_flatten(theirs), key=lambda kv: kv[0])
    assert [k for k, _ in got] == [k for k, _ in expected]
    for (k, a), (_, b) in zip(got, expected):
        assert a.shape == tuple(b.shape), k
        assert str(a.dtype).split(".")[-1] == str(b.dtype).split(".")[-1], k
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=rtol, atol=atol, err_msg=k)


CONFIGS = [
    ("SGD", (0.1,), {}),
    ("SGD", (0.1,), {"momentum": 0.9, "weight_decay": 0.01, "dampening": 0.1}),
    ("SGD", (0.05,), {"momentum": 0.9, "nesterov": True}),
    ("RMSprop", (0.01,), {}),
    ("RMSprop", (0.01,), {"alpha": 0.9, "eps": 1e-6}),
    ("Adagrad", (0.1,), {}),
    ("AdaDelta", (1.0,), {"rho": 0.95}),
    ("Adam", (0.01,), {}),
    ("Adam", (0.01,), {"betas": [0.8, 0.99], "bias_correction": True}),
    ("AdamW", (0.01,), {}),
    ("AdamW", (0.01,), {"weight_decay": 0.1, "bias_correction": True}),
    ("Adamax", (0.01,), {}),
    ("Lion", (0.001,), {}),
    ("Lion", (0.001,), {"weight_decay": 0.1}),
    ("Adafactor", (), {}),
    ("Adafactor", (0.01,), {"relative_step": False, "beta_1": 0.9, "weight_decay": 0.1}),
    ("Adafactor", (), {"warmup_init": True, "scale_parameter": False}),
    ("Muon", (0.02,), {}),
    ("Muon", (0.02,), {"nesterov": False, "weight_decay": 0.0, "ns_steps": 3}),
]


@pytest.mark.mlx
@pytest.mark.parametrize("name,args,kwargs", CONFIGS,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CONFIGS)])
def test_updates_match_mlx(real, name, args, kwargs):
    core, real_optim, real_utils = real
    rng = np.random.default_rng(1)
    params = numpy_tree(rng)
    ours_opt = getattr(optim, name)(*args, **kwargs)
    theirs_opt = getattr(real_optim, name)(*args, **kwargs)
    ours_p, theirs_p = as_arrays(params, mx), as_arrays(params, core)
    for _ in range(4):
        grads = numpy_tree(rng, 0.5)
        ours_p = ours_opt.apply_gradients(as_arrays(grads, mx), ours_p)
        theirs_p = theirs_opt.apply_gradients(as_arrays(grads, core), theirs_p)
        assert_trees_close(ours_p, theirs_p, real_utils, rtol=2e-5, atol=2e-6)
    assert_trees_close(ours_opt.state, theirs_opt.state, real_utils, rtol=2e-5, atol=2e-6)
    assert int(ours_opt.step.item()) == 4 and ours_opt.step.dtype == mx.uint64


@pytest.mark.mlx
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_updates(real, dtype):
    core, real_optim, real_utils = real
    rng = np.random.default_rng(2)
    params = numpy_tree(rng)
    for name, kwargs in (("Adam", {"bias_correction": True}), ("SGD", {"momentum": 0.9})):
        ours_opt, theirs_opt = getattr(optim, name)(0.01, **kwargs), getattr(real_optim, name)(
            0.01, **kwargs)
        ours_p = tree_map(lambda x: mx.array(x).astype(getattr(mx, dtype)), params)
        theirs_p = tree_map(lambda x: core.array(x).astype(getattr(core, dtype)), params)
        for _ in range(3):
            grads = numpy_tree(rng)
            ours_p = ours_opt.apply_gradients(
                tree_map(lambda x: mx.array(x).astype(getattr(mx, dtype)), grads), ours_p)
            theirs_p = theirs_opt.apply_gradients(
                tree_map(lambda x: core.array(x).astype(getattr(core, dtype)), grads), theirs_p)
        assert_trees_close(tree_map(lambda x: x.astype(mx.float32), ours_p),
                           real_utils.tree_map(lambda x: x.astype(core.float32), theirs_p),
                           real_utils, rtol=1e-2, atol=1e-2)
        assert {v.dtype for _, v in tree_flatten(ours_p)} == {getattr(mx, dtype)}


SCHEDULES = [
    ("exponential_decay", (0.1, 0.9)),
    ("step_decay", (0.1, 0.5, 2)),
    ("cosine_decay", (0.1, 5)),
    ("cosine_decay", (0.1, 5, 0.01)),
    ("linear_schedule", (0.0, 0.1, 4)),
]


@pytest.mark.mlx
def test_schedules(real):
    core, real_optim, _ = real
    for name, args in SCHEDULES:
        ours, theirs = getattr(optim, name)(*args), getattr(real_optim, name)(*args)
        for step in range(8):
            got = ours(mx.array(step, mx.uint64))
            expected = theirs(core.array(step, core.uint64))
            np.testing.assert_allclose(np.array(got), np.array(expected), rtol=1e-6,
                                       err_msg=f"{name} {step}")
    ours = optim.join_schedules([optim.linear_schedule(0, 0.1, 3), optim.cosine_decay(0.1, 5)],
                                [3])
    theirs = real_optim.join_schedules([real_optim.linear_schedule(0, 0.1, 3),
                                        real_optim.cosine_decay(0.1, 5)], [3])
    for step in range(10):
        np.testing.assert_allclose(np.array(ours(mx.array(step))),
                                   np.array(theirs(core.array(step))), rtol=1e-6)


@pytest.mark.mlx
def test_scheduled_learning_rate(real):
    core, real_optim, real_utils = real
    rng = np.random.default_rng(3)
    params = numpy_tree(rng)
    ours_opt = optim.Adam(optim.cosine_decay(0.1, 3))
    theirs_opt = real_optim.Adam(real_optim.cosine_decay(0.1, 3))
    ours_p, theirs_p = as_arrays(params, mx), as_arrays(params, core)
    for _ in range(5):
        grads = numpy_tree(rng)
        ours_p = ours_opt.apply_gradients(as_arrays(grads, mx), ours_p)
        theirs_p = theirs_opt.apply_gradients(as_arrays(grads, core), theirs_p)
        np.testing.assert_allclose(np.array(ours_opt.learning_rate),
                                   np.array(theirs_opt.learning_rate), rtol=1e-6)
    assert_trees_close(ours_p, theirs_p, real_utils)
    ours_opt.learning_rate = 0.5
    assert ours_opt.learning_rate.dtype == mx.float32


@pytest.mark.mlx
def test_clip_grad_norm(real):
    core, real_optim, real_utils = real
    grads = numpy_tree(np.random.default_rng(4))
    for max_norm in (0.5, 100.0):
        got, got_norm = optim.clip_grad_norm(as_arrays(grads, mx), max_norm)
        expected, expected_norm = real_optim.clip_grad_norm(as_arrays(grads, core), max_norm)
        assert_trees_close(got, expected, real_utils)
        np.testing.assert_allclose(np.array(got_norm), np.array(expected_norm), rtol=1e-6)
    half = {"a": mx.array([3.0, 4.0], mx.float16)}
    clipped, norm = optim.clip_grad_norm(half, 1.0)
    assert clipped["a"].dtype == mx.float16 and abs(norm.item() - 5.0) < 1e-3
    with pytest.raises(ValueError, match="max_norm should be >=0"):
        optim.clip_grad_norm(half, -1.0)


@pytest.mark.mlx
def test_multi_optimizer(real):
    core, real_optim, real_utils = real
    rng = np.random.default_rng(5)
    params = numpy_tree(rng)

    def build(o):
        return o.MultiOptimizer([o.Adam(0.01), o.SGD(0.1)], [lambda path, g: "layers" in path])

    ours_opt, theirs_opt = build(optim), build(real_optim)
    ours_p, theirs_p = as_arrays(params, mx), as_arrays(params, core)
    for _ in range(3):
        grads = numpy_tree(rng)
        ours_p = ours_opt.apply_gradients(as_arrays(grads, mx), ours_p)
        theirs_p = theirs_opt.apply_gradients(as_arrays(grads, core), theirs_p)
    assert_trees_close(ours_p, theirs_p, real_utils)
    assert_trees_close(ours_opt.state, theirs_opt.state, real_utils)
    with pytest.raises(ValueError, match="Given 0 filters but 1 needed."):
        optim.MultiOptimizer([optim.SGD(0.1), optim.SGD(0.1)])


def test_update_model_and_state_handling():
    mx.random.seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    before = tree_flatten(model.parameters())
    grads = tree_map(mx.ones_like, model.parameters())
    opt = optim.SGD(learning_rate=0.5)
    opt.init(model.trainable_parameters())
    assert opt.state["layers"][1] == {} and opt.state["layers"][0]["weight"]["v"].shape == (2, 3)
    opt.update(model, grads)
    for (k, old), (_, new) in zip(before, tree_flatten(model.parameters())):
        np.testing.assert_allclose(np.array(new), np.array(old) - 0.5, rtol=1e-6, err_msg=k)
    state = opt.state
    fresh = optim.SGD(learning_rate=0.5)
    fresh.state = state
    assert int(fresh.step.item()) == 1
    fresh.update(model, grads)
    assert int(fresh.step.item()) == 2


def test_constructor_errors():
    with pytest.raises(ValueError, match="Nesterov momentum requires a momentum and zero "
                                         "dampening."):
        optim.SGD(0.1, nesterov=True)
    with pytest.raises(ValueError, match=r"Adam beta2 should be in \[0, 1\), 1.0 was provided"):
        optim.Adam(0.1, betas=[0.9, 1.0])
    with pytest.raises(ValueError, match="RMSprop epsilon should be >0"):
        optim.RMSprop(0.1, eps=0.0)
    with pytest.raises(ValueError, match="step_size must be greater than 0, but got 0."):
        optim.step_decay(0.1, 0.9, 0)
    with pytest.raises(ValueError, match="Received 2 boundaries but expected 1."):
        optim.join_schedules([optim.exponential_decay(0.1, 0.9)] * 2, [1, 2])
