"""``mlx.core.fft``: transforms, sizes/axes/norms, shifts, frequencies and gradients, compared with
real MLX."""
import itertools

import numpy as np
import pytest

import mlxarm.core as ma

RNG = np.random.default_rng(0)
REAL = RNG.standard_normal((4, 6, 5)).astype(np.float32)
CPLX = (REAL + 1j * RNG.standard_normal((4, 6, 5))).astype(np.complex64)


def _outcome(lib, name, x, kwargs):
    fn = getattr(lib.fft, name)
    try:
        out = fn(lib.array(x) if isinstance(x, np.ndarray) else x, **kwargs)
        lib.eval(out)
        return out
    except Exception as e:  # noqa: BLE001 - compared with MLX's exception
        return e


def _compare(name, x, tol=1e-4, **kwargs):
    mx = pytest.importorskip("mlx.core")
    theirs, ours = _outcome(mx, name, x, kwargs), _outcome(ma, name, x, kwargs)
    if isinstance(theirs, Exception):
        assert isinstance(ours, type(theirs)), (name, kwargs, theirs, ours)
        if str(theirs).startswith("[") and isinstance(theirs, ValueError):
            assert str(ours) == str(theirs)
        return
    assert not isinstance(ours, Exception), (name, kwargs, ours)
    assert ours.shape == theirs.shape and str(ours.dtype) == str(theirs.dtype), (name, kwargs)
    np.testing.assert_allclose(np.array(ours), np.array(theirs), rtol=tol, atol=tol,
                               err_msg=f"{name} {kwargs}")


@pytest.mark.parametrize("name", ["fft", "ifft", "rfft", "irfft"])
@pytest.mark.parametrize("x", [REAL, CPLX, REAL.astype(np.int32), REAL.astype(np.float16)],
                         ids=["float32", "complex64", "int32", "float16"])
def test_one_axis_transforms(name, x):
    for n, axis, norm in itertools.product((None, 3, 8), (-1, 0, 1, 3, -4),
                                           ("backward", "ortho", "forward")):
        _compare(name, x, n=n, axis=axis, norm=norm)


@pytest.mark.parametrize("name", ["fft2", "ifft2", "rfft2", "irfft2", "fftn", "ifftn", "rfftn",
                                  "irfftn"])
def test_many_axes_transforms(name):
    for x in (REAL, CPLX):
        for s, axes, norm in itertools.product((None, (3, 8), (4,)),
                                               (None, (0, 1), (2, 0), (1,), (0, 0), (0, 5), ()),
                                               ("backward", "ortho", "forward")):
            _compare(name, x, s=s, axes=axes, norm=norm)


def test_matches_numpy():
    for name in ("fft", "ifft", "fft2", "ifft2", "fftn", "ifftn"):
        np.testing.assert_allclose(np.array(getattr(ma.fft, name)(ma.array(CPLX))),
                                   getattr(np.fft, name)(CPLX), rtol=1e-4, atol=1e-4)
    for name in ("rfft", "rfft2", "rfftn"):
        np.testing.assert_allclose(np.array(getattr(ma.fft, name)(ma.array(REAL))),
                                   getattr(np.fft, name)(REAL), rtol=1e-4, atol=1e-4)
    spectrum = np.fft.rfftn(REAL, axes=(2, 0))
    np.testing.assert_allclose(np.array(ma.fft.irfftn(ma.array(spectrum), axes=(2, 0))),
                               np.fft.irfftn(spectrum, axes=(2, 0)), rtol=1e-4, atol=1e-4)
    for n in (17, 47, 1153, 4096):
        x = RNG.standard_normal((3, n)).astype(np.float32)
        np.testing.assert_allclose(np.array(ma.fft.rfft(ma.array(x))), np.fft.rfft(x),
                                   rtol=1e-4, atol=1e-3)


def test_views_and_laziness():
    a = ma.array(CPLX[0])
    np.testing.assert_allclose(np.array(ma.fft.fft(a[:, ::2])), np.fft.fft(CPLX[0][:, ::2]),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.array(ma.fft.fft(a.T)), np.fft.fft(CPLX[0].T), rtol=1e-5, atol=1e-5)
    out = ma.fft.fft(a)
    assert out._data is None and out.dtype == ma.complex64


def test_errors():
    mx = pytest.importorskip("mlx.core")
    _compare("irfftn", np.float32(3.0) * np.ones((), np.float32))
    _compare("fft", REAL, norm="invalid")
    _compare("ifft2", REAL, norm="bad")
    _compare("fft", REAL, n=0)
    _compare("fftn", REAL, s=(3, 3))
    _compare("fft2", REAL, s=(3, 3), axes=None)
    _compare("fftn", REAL, s=(2,), axes=(0, 1))
    _compare("fftn", REAL, axes=(1, 1))
    for lib in (mx, ma):
        with pytest.raises(TypeError):
            lib.fft.fft([1.0, 2.0])
        # MLX 0.32 raises IndexError for out-of-range axes, later versions ValueError: ours is both.
        with pytest.raises(IndexError):
            lib.fft.fft(lib.array(REAL), axis=3)
    with pytest.raises(ValueError):
        ma.fft.fftn(ma.array(REAL), axes=(0, 3))


def test_shifts():
    for name in ("fftshift", "ifftshift"):
        for axes in (None, 0, 1, -1, [0, 2], [-3], [], (1,)):
            _compare(name, CPLX, axes=axes)
            np.testing.assert_array_equal(np.array(getattr(ma.fft, name)(ma.array(REAL), axes=axes)),
                                          getattr(np.fft, name)(REAL, axes=axes))
        _compare(name, np.ones((), np.float32))
        _compare(name, np.zeros((0,), np.float32))
        with pytest.raises(ValueError, match=rf"\[{name}\] Invalid axis 3"):
            getattr(ma.fft, name)(ma.array(REAL), axes=[3])
        with pytest.raises(IndexError):
            getattr(ma.fft, name)(ma.array(REAL), axes=-4)


def test_frequencies():
    mx = pytest.importorskip("mlx.core")
    for n, d in [(1, 1.0), (4, 0.5), (5, 0.25), (8, -0.5), (6, 1.0), (7, 0.3)]:
        for name in ("fftfreq", "rfftfreq"):
            ours, theirs = getattr(ma.fft, name)(n, d=d), getattr(mx.fft, name)(n, d=d)
            assert ours.dtype == ma.float32
            np.testing.assert_array_equal(np.array(ours), np.array(theirs))
            np.testing.assert_array_equal(np.array(ours), getattr(np.fft, name)(n, d).astype(np.float32))
    for name in ("fftfreq", "rfftfreq"):
        for n, d in ((0, 1.0), (-1, 1.0), (4, 0.0)):
            with pytest.raises(ValueError) as theirs:
                getattr(mx.fft, name)(n, d)
            with pytest.raises(ValueError) as ours:
                getattr(ma.fft, name)(n, d)
            assert str(ours.value) == str(theirs.value)


def _fft_kwargs(name, axes, sized):
    if name in ("fft", "ifft", "rfft", "irfft"):
        return {"axis": axes[0], **({"n": 5} if sized else {})}
    return {"axes": axes, **({"s": [5] * len(axes)} if sized else {})}


@pytest.mark.parametrize("name", ["fft", "ifft", "rfft", "irfft", "fftn", "ifftn", "rfftn", "irfftn"])
def test_gradients_match_mlx(name):
    mx = pytest.importorskip("mlx.core")
    for shape, axes, sized in itertools.product(((4, 4), (2, 7), (3, 6)), ((-1,), (-2, -1), (0,)),
                                                (False, True)):
        if name in ("fft", "ifft", "rfft", "irfft") and len(axes) > 1:
            continue
        kwargs = _fft_kwargs(name, axes, sized)
        x = RNG.standard_normal(shape).astype(np.float32)
        if not name.startswith("rfft"):
            x = (x + 1j * RNG.standard_normal(shape)).astype(np.complex64)
        results = []
        for lib in (mx, ma):
            fn = getattr(lib.fft, name)
            grad = lib.grad(lambda a: (lib.abs(fn(a, **kwargs)) ** 2).sum())(lib.array(x))
            y = fn(lib.array(x), **kwargs)
            cot = np.full(y.shape, 0.5 + 0.25j if y.dtype == lib.complex64 else 0.5)
            cot = lib.array(cot.astype(np.complex64 if y.dtype == lib.complex64 else np.float32))
            vjp = lib.vjp(lambda a: fn(a, **kwargs), [lib.array(x)], [cot])[1][0]
            results.append((np.array(grad), np.array(vjp)))
        for theirs, ours in zip(*results):
            assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
            np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-3, err_msg=f"{name} {kwargs}")


@pytest.mark.parametrize("name", ["fftn", "ifftn", "rfftn", "irfftn"])
def test_jvp_is_the_transform_of_the_tangent(name):
    # MLX's own jvp of irfftn drops the requested output size; ours keeps it.
    for axes, s in (((-1,), None), ((0, 1), None), ((-1,), (5,)), ((1, 0), (5, 3))):
        x = REAL if name == "rfftn" else CPLX
        t = (x * 0.5 + 1).astype(x.dtype)
        fn = lambda a: getattr(ma.fft, name)(a, s=s, axes=axes)  # noqa: E731
        out = ma.jvp(fn, [ma.array(x)], [ma.array(t)])[1][0]
        expected = fn(ma.array(t))
        assert out.shape == expected.shape
        np.testing.assert_allclose(np.array(out), np.array(expected), rtol=1e-5, atol=1e-5)
