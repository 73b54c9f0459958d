"""mx.distributed as a group of one process, and the sharded linear layers built on it: each sharded
layer computes what the layer it was made from computes."""
import numpy as np
import pytest

import mlxarm.core as mx
import mlxarm.nn as nn


def test_singleton_group():
    g = mx.distributed.init()
    assert (g.rank(), g.size()) == (0, 1)
    assert mx.distributed.init() is g
    assert not mx.distributed.is_available()
    with pytest.raises(RuntimeError):
        g.split(0)
    with pytest.raises(RuntimeError):
        mx.distributed.init(strict=True)
    with pytest.raises(ValueError, match="bogus"):
        mx.distributed.init(backend="bogus")


@pytest.mark.parametrize("op", ["all_sum", "all_max", "all_min", "all_gather", "sum_scatter"])
def test_collectives_of_one_process_return_the_input(op):
    x = mx.array([[1.5, -2.0], [3.0, 4.0]])
    y = getattr(mx.distributed, op)(x)
    assert y.dtype == x.dtype and y.shape == x.shape
    np.testing.assert_array_equal(np.array(y), np.array(x))
    i = mx.array([1, 2], mx.int8)
    assert getattr(mx.distributed, op)(i).dtype == mx.int8


def test_point_to_point_has_no_peer():
    with pytest.raises(ValueError, match="singleton"):
        mx.distributed.send(mx.array([1.0]), 0)
    with pytest.raises(ValueError, match="singleton"):
        mx.distributed.recv((1,), mx.float32, 0)
    with pytest.raises(ValueError, match="singleton"):
        mx.distributed.recv_like(mx.array([1.0]), 0)


@pytest.mark.parametrize("sharding", ["all-to-sharded", "sharded-to-all"])
@pytest.mark.parametrize("bias", [True, False])
def test_sharded_linear_computes_the_original(sharding, bias):
    mx.random.seed(1)
    lin = nn.Linear(32, 24, bias=bias)
    x = mx.random.normal((3, 32))
    sharded = nn.layers.distributed.shard_linear(lin, sharding)
    assert type(sharded).__name__ == ("AllToShardedLinear" if sharding == "all-to-sharded"
                                      else "ShardedToAllLinear")
    np.testing.assert_allclose(np.array(sharded(x)), np.array(lin(x)), rtol=1e-6, atol=1e-6)
    q = nn.QuantizedLinear.from_linear(lin, group_size=32, bits=4)
    qs = nn.layers.distributed.shard_linear(q, sharding, segments=3 if sharding == "all-to-sharded" else 1)
    assert type(qs).__name__.startswith("Quantized")
    np.testing.assert_allclose(np.array(qs(x)), np.array(q(x)), rtol=1e-6, atol=1e-6)
    assert "input_dims=32, output_dims=24" in repr(qs)


def test_gradients_pass_through_sharded_layers():
    mx.random.seed(2)
    lin = nn.Linear(8, 6)
    sharded = nn.AllToShardedLinear.from_linear(lin)
    x = mx.random.normal((2, 8))
    g1 = mx.grad(lambda v: lin(v).sum())(x)
    g2 = mx.grad(lambda v: sharded(v).sum())(x)
    np.testing.assert_allclose(np.array(g2), np.array(g1), rtol=1e-6)


def test_shard_inplace_and_bad_sharding():
    mx.random.seed(3)
    lin = nn.Linear(8, 6)
    before = np.array(lin.weight)
    nn.layers.distributed.shard_inplace(lin, "all-to-sharded", segments=[0.5])
    np.testing.assert_array_equal(np.array(lin.weight), before)
    with pytest.raises(ValueError, match="not supported"):
        nn.layers.distributed.shard_linear(lin, "sideways")
    assert nn.fully_shard(lin) is lin


def test_gradient_reductions_of_one_process():
    grads = {"w": mx.array([3.0, 4.0]), "b": [mx.array([0.0])]}
    assert nn.average_gradients(grads) is grads
    clipped, norm = nn.utils.clip_grad_norm_sharded(grads, max_norm=1.0)
    assert norm.item() == pytest.approx(5.0)
    np.testing.assert_allclose(np.array(clipped["w"]), [0.6, 0.8], rtol=1e-5)
