"""Convolutions (conv1d/2d/3d, conv_general, conv_transpose*, convolve), their gradients and the
nn convolution and upsampling layers, compared with real MLX."""
import itertools

import numpy as np
import pytest

import mlxarm.core as ma
import mlxarm.nn as mnn

TOL = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 6e-2, "float64": 1e-6}


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _call(lib, fn, args, kwargs, dtype="float32"):
    arrs = [lib.array(a).astype(getattr(lib, dtype)) if isinstance(a, np.ndarray) else a for a in args]
    return getattr(lib, fn)(*arrs, **kwargs)


def _compare(fn, args, kwargs, dtype="float32"):
    mx = pytest.importorskip("mlx.core")
    theirs = _call(mx, fn, args, kwargs, dtype)
    ours = _call(ma, fn, args, kwargs, dtype)
    assert ours.shape == theirs.shape, (fn, kwargs)
    assert str(ours.dtype) == str(theirs.dtype)
    tol = TOL[dtype]
    np.testing.assert_allclose(np.array(ours.astype(ma.float32)), np.array(theirs.astype(mx.float32)),
                               rtol=tol, atol=tol, err_msg=f"{fn} {kwargs}")


def test_conv1d_matches_mlx():
    rng = np.random.default_rng(0)
    for c_out, length, k, stride, pad, dil, groups in itertools.product(
            (2, 4), (7, 9), (1, 3), (1, 2, 3), (0, 2, -1), (1, 2), (1, 2)):
        _compare("conv1d", (_rand(rng, 2, length, 4), _rand(rng, c_out, k, 4 // groups)),
                 dict(stride=stride, padding=pad, dilation=dil, groups=groups))


def test_conv2d_conv3d_match_mlx():
    rng = np.random.default_rng(1)
    for kernel, stride, pad, dil, groups in itertools.product(
            ((3, 2), (1, 1)), ((1, 1), (2, 3)), ((0, 0), (1, 2)), ((1, 1), (2, 1)), (1, 2)):
        _compare("conv2d", (_rand(rng, 2, 8, 7, 4), _rand(rng, 4, *kernel, 4 // groups)),
                 dict(stride=stride, padding=pad, dilation=dil, groups=groups))
    for stride, pad, dil in itertools.product((1, 2), (0, 1), (1, (2, 1, 1))):
        _compare("conv3d", (_rand(rng, 1, 5, 6, 5, 3), _rand(rng, 2, 2, 3, 1, 3)),
                 dict(stride=stride, padding=pad, dilation=dil))


def test_conv_general_matches_mlx():
    rng = np.random.default_rng(2)
    x, w = _rand(rng, 1, 8, 7, 4), _rand(rng, 4, 3, 2, 2)
    for stride, pad, kd, idil, flip in itertools.product(
            ([1, 1], [2, 1]), (0, [1, 2], ([0, 1], [2, 0]), ([-1, 1], [2, -1])), (1, [2, 1]),
            (1, [2, 3]), (False, True)):
        _compare("conv_general", (x, w), dict(stride=stride, padding=pad, kernel_dilation=kd,
                                             input_dilation=idil, flip=flip, groups=2))


def test_conv_transpose_matches_mlx():
    rng = np.random.default_rng(3)
    for stride, pad, dil, out_pad, groups in itertools.product((1, 2, 3), (0, 1, 2), (1, 2), (0, 1),
                                                               (1, 2)):
        _compare("conv_transpose1d", (_rand(rng, 2, 6, 4), _rand(rng, 4, 3, 4 // groups)),
                 dict(stride=stride, padding=pad, dilation=dil, output_padding=out_pad, groups=groups))
    for stride, pad, out_pad in itertools.product(((1, 1), (2, 3)), ((0, 0), (1, 2)), (0, (1, 0))):
        _compare("conv_transpose2d", (_rand(rng, 2, 4, 5, 3), _rand(rng, 2, 3, 2, 3)),
                 dict(stride=stride, padding=pad, output_padding=out_pad))
    _compare("conv_transpose3d", (_rand(rng, 1, 3, 4, 3, 2), _rand(rng, 3, 2, 2, 3, 2)),
             dict(stride=2, padding=1, output_padding=1))


@pytest.mark.parametrize("dtypes", [("float16", "float16"), ("bfloat16", "bfloat16"),
                                    ("float16", "float32"), ("bfloat16", "float16"),
                                    ("float32", "int32"), ("float32", "bool_")])
def test_conv_dtype_promotion(dtypes):
    mx = pytest.importorskip("mlx.core")
    rng = np.random.default_rng(4)
    x, w = _rand(rng, 1, 6, 4), (rng.standard_normal((2, 3, 4)) * 3).astype(np.float32)
    outs = [lib.conv1d(lib.array(x).astype(getattr(lib, dtypes[0])),
                       lib.array(w).astype(getattr(lib, dtypes[1])), padding=1) for lib in (mx, ma)]
    assert str(outs[0].dtype) == str(outs[1].dtype)
    tol = TOL.get(str(outs[1].dtype).split(".")[-1], 6e-2)
    np.testing.assert_allclose(np.array(outs[1].astype(ma.float32)),
                               np.array(outs[0].astype(mx.float32)), rtol=tol, atol=tol)


def test_conv_float64():
    mx = pytest.importorskip("mlx.core")
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((1, 6, 2)), rng.standard_normal((3, 3, 2))
    ours = ma.conv1d(ma.array(x, ma.float64), ma.array(w, ma.float64), padding=1, stream=ma.cpu)
    theirs = mx.conv1d(mx.array(x, mx.float64), mx.array(w, mx.float64), padding=1, stream=mx.cpu)
    assert ours.dtype == ma.float64
    # MLX accumulates double-precision convolutions with single-precision accuracy.
    np.testing.assert_allclose(np.array(ours), np.array(theirs), rtol=1e-6, atol=1e-6)
    # Like MLX's CPU backend, dilated double-precision convolutions fail when evaluated.
    with pytest.raises(ValueError, match="unsupported data type"):
        ma.eval(ma.conv1d(ma.array(x, ma.float64), ma.array(w, ma.float64), dilation=2))


def test_conv_errors_match_mlx():
    mx = pytest.importorskip("mlx.core")
    rng = np.random.default_rng(6)
    x = _rand(rng, 1, 5, 4)
    cases = [
        ("conv1d", (x, _rand(rng, 2, 3, 3)), {}),
        ("conv1d", (x, _rand(rng, 3, 3, 2)), {"groups": 2}),
        ("conv1d", (x, _rand(rng, 2, 3, 4)), {"groups": 3}),
        ("conv1d", (x, _rand(rng, 4, 3, 1)), {"groups": 2}),
        ("conv1d", (x, _rand(rng, 2, 6, 4)), {}),
        ("conv1d", (_rand(rng, 5, 4), _rand(rng, 2, 3, 4)), {}),
        ("conv1d", (x, _rand(rng, 3, 4)), {}),
        ("conv1d", (x, _rand(rng, 2, 3, 4)), {"stride": 0}),
        ("conv1d", (x, _rand(rng, 2, 3, 4)), {"dilation": 0}),
        ("conv2d", (x, _rand(rng, 2, 3, 4)), {}),
        ("conv_general", (x, _rand(rng, 2, 3, 4)), {"stride": [1, 2]}),
        ("conv_general", (x, _rand(rng, 2, 3, 4)), {"padding": ([1], [2, 3])}),
        ("conv_general", (x, _rand(rng, 2, 3, 4)), {"padding": (-2, 1)}),
        ("conv_general", (x, _rand(rng, 2, 3, 4)), {"kernel_dilation": [1, 1]}),
        ("conv_general", (x, _rand(rng, 2, 3, 4)), {"input_dilation": 0}),
        ("conv_general", (_rand(rng, 1, 3, 3, 3, 4), _rand(rng, 2, 1, 1, 1, 2)), {"groups": 2}),
        ("conv_general", (_rand(rng, 1, 4), _rand(rng, 1, 4)), {}),
        ("conv_transpose3d", (_rand(rng, 1, 3, 3, 3, 4), _rand(rng, 2, 1, 1, 1, 2)), {"groups": 2}),
        ("convolve", (_rand(rng, 1, 3), _rand(rng, 2)), {}),
        ("convolve", (_rand(rng, 3), _rand(rng, 0)), {}),
        ("convolve", (_rand(rng, 3), _rand(rng, 2)), {"mode": "x"}),
    ]
    for fn, args, kwargs in cases:
        with pytest.raises(Exception) as theirs:
            mx.eval(_call(mx, fn, args, kwargs))
        with pytest.raises(type(theirs.value)) as ours:
            ma.eval(_call(ma, fn, args, kwargs))
        assert str(ours.value) == str(theirs.value), (fn, kwargs)
    for lib in (mx, ma):
        with pytest.raises(ValueError, match="floating point"):
            lib.conv1d(lib.array(x).astype(lib.int32), lib.array(_rand(rng, 2, 3, 4)))
        with pytest.raises(TypeError):
            lib.conv1d(lib.array(x), lib.array(_rand(rng, 2, 3, 4)), stride=(1,))
        with pytest.raises(TypeError):
            lib.conv2d(lib.array(_rand(rng, 1, 5, 5, 4)), lib.array(_rand(rng, 2, 3, 3, 4)),
                       stride=(1, 1, 1))


def test_convolve_matches_numpy_and_mlx():
    rng = np.random.default_rng(7)
    for m, n, mode in [(1, 1, "full"), (25, 5, "full"), (24, 5, "same"), (24, 4, "same"),
                       (24, 4, "valid"), (4, 24, "full"), (5, 25, "same"), (4, 25, "valid")]:
        a, v = _rand(rng, m), _rand(rng, n)
        out = ma.convolve(ma.array(a), ma.array(v), mode=mode)
        np.testing.assert_allclose(np.array(out), np.convolve(a, v, mode=mode), rtol=1e-5, atol=1e-5)
        _compare("convolve", (a, v), {"mode": mode})


def test_conv_is_lazy_and_keeps_views():
    x = ma.ones((1, 5, 2))
    y = ma.conv1d(x, ma.ones((3, 2, 2)))
    assert y._data is None and y.shape == (1, 4, 3)
    np.testing.assert_allclose(np.array(y), np.full((1, 4, 3), 4.0))


def _vjp_both(fn, x, w, kwargs):
    mx = pytest.importorskip("mlx.core")
    outs = []
    for lib in (mx, ma):
        y = _call(lib, fn, (x, w), kwargs)
        cot = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
        _, grads = lib.vjp(lambda a, b: getattr(lib, fn)(a, b, **kwargs),
                           [lib.array(x), lib.array(w)], [lib.array(cot)])
        outs.append([np.array(g) for g in grads])
    for theirs, ours in zip(*outs):
        assert ours.shape == theirs.shape, (fn, kwargs)
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4, err_msg=f"{fn} {kwargs}")


def test_conv_vjp_matches_mlx():
    rng = np.random.default_rng(8)
    for c_out, k, stride, pad, dil, groups in itertools.product((2, 4), (1, 3), (1, 2, 3), (0, 2),
                                                                (1, 2), (1, 2)):
        _vjp_both("conv1d", _rand(rng, 2, 9, 4), _rand(rng, c_out, k, 4 // groups),
                  dict(stride=stride, padding=pad, dilation=dil, groups=groups))
    for stride, pad, kd, flip, groups in itertools.product(
            ([1, 1], [2, 1]), (0, ([0, 1], [2, 0]), ([-1, 1], [2, -1])), (1, [2, 1]), (False, True),
            (1, 2)):
        _vjp_both("conv_general", _rand(rng, 1, 8, 7, 4), _rand(rng, 4, 3, 2, 4 // groups),
                  dict(stride=stride, padding=pad, kernel_dilation=kd, flip=flip, groups=groups))
    _vjp_both("conv_general", _rand(rng, 1, 8, 7, 4), _rand(rng, 4, 3, 2, 4),
              dict(input_dilation=[2, 3], flip=True))
    _vjp_both("conv3d", _rand(rng, 1, 5, 6, 5, 3), _rand(rng, 2, 2, 3, 1, 3), dict(stride=2, padding=1))
    for stride, pad, dil in itertools.product((1, 2, 3), (0, 1), (1, 2)):
        _vjp_both("conv_transpose1d", _rand(rng, 2, 6, 4), _rand(rng, 3, 3, 4),
                  dict(stride=stride, padding=pad, dilation=dil))


def _dense_vjp(fn, x, w, kwargs, cot):
    """Input and weight gradients through the Jacobian built column by column (conv is bilinear)."""
    def column(i, shape, other, first):
        e = np.zeros(int(np.prod(shape)), np.float32)
        e[i] = 1
        e = e.reshape(shape)
        args = (e, other) if first else (other, e)
        return float((np.array(_call(ma, fn, args, kwargs)) * cot).sum())

    dx = np.array([column(i, x.shape, w, True) for i in range(x.size)]).reshape(x.shape)
    dw = np.array([column(i, w.shape, x, False) for i in range(w.size)]).reshape(w.shape)
    return dx, dw


@pytest.mark.parametrize("fn,xs,ws,kwargs", [
    # MLX's own gradient loses input positions in these two configurations; its forward pass does
    # not, so the reference is the Jacobian of the forward pass.
    ("conv_general", (1, 6, 5, 2), (2, 3, 2, 2), dict(padding=[1, 2], input_dilation=[2, 3])),
    ("conv_transpose1d", (2, 6, 2), (3, 3, 2), dict(stride=3, dilation=2, output_padding=1)),
    ("conv1d", (2, 7, 4), (4, 3, 2), dict(stride=2, padding=1, dilation=2, groups=2)),
])
def test_conv_vjp_against_jacobian(fn, xs, ws, kwargs):
    rng = np.random.default_rng(9)
    x, w = _rand(rng, *xs), _rand(rng, *ws)
    y = _call(ma, fn, (x, w), kwargs)
    cot = rng.standard_normal(y.shape).astype(np.float32)
    _, (gx, gw) = ma.vjp(lambda a, b: getattr(ma, fn)(a, b, **kwargs), [ma.array(x), ma.array(w)],
                         [ma.array(cot)])
    dx, dw = _dense_vjp(fn, x, w, kwargs, cot)
    np.testing.assert_allclose(np.array(gx), dx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.array(gw), dw, rtol=1e-4, atol=1e-4)


def test_conv_jvp_is_bilinear():
    rng = np.random.default_rng(10)
    x, w, tx, tw = _rand(rng, 1, 6, 6, 2), _rand(rng, 3, 2, 3, 2), _rand(rng, 1, 6, 6, 2), _rand(rng, 3, 2, 3, 2)
    kwargs = dict(stride=(2, 1), padding=1)
    _, (t,) = ma.jvp(lambda a, b: ma.conv2d(a, b, **kwargs), [ma.array(x), ma.array(w)],
                     [ma.array(tx), ma.array(tw)])
    expected = (ma.conv2d(ma.array(tx), ma.array(w), **kwargs)
                + ma.conv2d(ma.array(x), ma.array(tw), **kwargs))
    np.testing.assert_allclose(np.array(t), np.array(expected), rtol=1e-5, atol=1e-5)


# --- nn layers --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,args,kwargs,in_shape", [
    ("Conv1d", (4, 6, 3), dict(stride=2, padding=1, groups=2), (2, 9, 4)),
    ("Conv1d", (4, 6, 3), dict(bias=False, dilation=2), (2, 9, 4)),
    ("Conv2d", (4, 8, (3, 2)), dict(stride=(2, 1), padding=1, groups=4), (1, 7, 6, 4)),
    ("Conv3d", (2, 3, 2), dict(padding=(1, 0, 1)), (1, 4, 5, 4, 2)),
    ("ConvTranspose1d", (2, 3, 4), dict(stride=2, output_padding=1), (2, 5, 2)),
    ("ConvTranspose2d", (2, 3, (3, 5)), dict(stride=2, padding=(1, 0)), (1, 4, 3, 2)),
    ("ConvTranspose3d", (2, 3, 2), dict(bias=False, output_padding=1, stride=2), (1, 2, 3, 2, 2)),
])
def test_conv_layers_match_mlx(name, args, kwargs, in_shape):
    mx = pytest.importorskip("mlx.core")
    nn = pytest.importorskip("mlx.nn")
    theirs, ours = getattr(nn, name)(*args, **kwargs), getattr(mnn, name)(*args, **kwargs)
    assert repr(ours) == repr(theirs)
    their_params = {k: np.array(v) for k, v in theirs.parameters().items()}
    assert {k: v.shape for k, v in ours.parameters().items()} == \
        {k: v.shape for k, v in their_params.items()}
    ours.update({k: ma.array(v) for k, v in their_params.items()})
    x = np.random.default_rng(11).standard_normal(in_shape).astype(np.float32)
    np.testing.assert_allclose(np.array(ours(ma.array(x))), np.array(theirs(mx.array(x))),
                               rtol=1e-4, atol=1e-4)


def test_conv_layer_init_and_errors():
    conv = mnn.Conv2d(4, 8, 3, groups=2)
    bound = 1 / np.sqrt(2 * 9)
    assert conv.weight.shape == (8, 3, 3, 2)
    assert np.abs(np.array(conv.weight)).max() <= bound
    np.testing.assert_array_equal(np.array(conv.bias), np.zeros(8))
    with pytest.raises(ValueError, match="divisible by the number of groups"):
        mnn.Conv1d(4, 8, 3, groups=3)


@pytest.mark.parametrize("mode,align,antialias", [
    ("nearest", False, False), ("linear", False, False), ("linear", True, False),
    ("cubic", False, False), ("cubic", True, False), ("linear", False, True),
    ("cubic", False, True)])
@pytest.mark.parametrize("scale", [2, (2, 3), (0.5, 1.5), (0.25, 0.7), 1.3])
def test_upsample_matches_mlx(mode, align, antialias, scale):
    mx = pytest.importorskip("mlx.core")
    nn = pytest.importorskip("mlx.nn")
    x = np.random.default_rng(12).standard_normal((2, 8, 6, 3)).astype(np.float32)
    kwargs = dict(scale_factor=scale, mode=mode, align_corners=align, antialias=antialias)
    theirs = nn.Upsample(**kwargs)(mx.array(x))
    ours = mnn.Upsample(**kwargs)(ma.array(x))
    assert ours.shape == theirs.shape and str(ours.dtype) == str(theirs.dtype)
    np.testing.assert_allclose(np.array(ours), np.array(theirs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["int32", "float16", "bfloat16"])
@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_upsample_dtypes_and_1d_3d(dtype, mode):
    mx = pytest.importorskip("mlx.core")
    nn = pytest.importorskip("mlx.nn")
    rng = np.random.default_rng(13)
    for shape, scale in (((1, 5, 2), 2.5), ((1, 3, 4, 2, 1), (2, 0.5, 1.5))):
        x = (rng.standard_normal(shape) * 5).astype(np.float32)
        theirs = nn.Upsample(scale, mode=mode)(mx.array(x).astype(getattr(mx, dtype)))
        ours = mnn.Upsample(scale, mode=mode)(ma.array(x).astype(getattr(ma, dtype)))
        assert ours.shape == theirs.shape and str(ours.dtype) == str(theirs.dtype)
        np.testing.assert_allclose(np.array(ours.astype(ma.float32)),
                                   np.array(theirs.astype(mx.float32)), rtol=1e-2, atol=1e-2)


def test_upsample_repr_and_errors():
    nn = pytest.importorskip("mlx.nn")
    for kwargs in (dict(scale_factor=2), dict(scale_factor=(2, 3), mode="cubic"),
                   dict(scale_factor=0.5, mode="linear", antialias=True)):
        assert repr(mnn.Upsample(**kwargs)) == repr(nn.Upsample(**kwargs))
    for kwargs in (dict(scale_factor=2, mode="area"),
                   dict(scale_factor=2, antialias=True),
                   dict(scale_factor=2, mode="linear", antialias=True, align_corners=True)):
        with pytest.raises(ValueError) as theirs:
            nn.Upsample(**kwargs)
        with pytest.raises(ValueError) as ours:
            mnn.Upsample(**kwargs)
        assert str(ours.value) == str(theirs.value)
    with pytest.raises(ValueError, match="at least 3D"):
        mnn.Upsample(2)(ma.ones((2, 3)))
    with pytest.raises(ValueError, match="One scale per spatial dimension"):
        mnn.Upsample((2, 2))(ma.ones((1, 3, 1)))
