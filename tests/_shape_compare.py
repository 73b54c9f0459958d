"""Running one expression in both libraries and comparing results, or errors (type and message)."""
import numpy as np

import mlxarm.core as ma


def _to_numpy(lib, x):
    if x.dtype == lib.bfloat16:
        x = x.astype(lib.float32)
    return np.array(x)


def outcome(lib, expr: str, env: dict):
    """What ``expr`` gives with ``mx`` bound to ``lib``: a nested description, or the error."""
    scope = {"mx": lib, "np": np}
    scope.update({k: (v(lib) if callable(v) else v) for k, v in env.items()})
    try:
        return _describe(lib, eval(expr, scope))
    except Exception as e:  # noqa: BLE001 - the error is the outcome
        return ("error", type(e).__name__, str(e).split("\n")[0])


def _describe(lib, r):
    if isinstance(r, lib.array):
        return ("array", tuple(r.shape), str(r.dtype), _to_numpy(lib, r))
    if isinstance(r, (list, tuple)):
        return (type(r).__name__, [_describe(lib, x) for x in r])
    if type(r).__name__ == "Dtype":
        return ("value", str(r))
    return ("value", r)


def assert_same(ours, theirs, expr, rtol=0.0, atol=0.0):
    if theirs[0] == "error":
        assert ours[0] == "error", f"{expr}: MLX raised {theirs[1]}: {theirs[2]}, we gave {ours}"
        mine, their_type = ours[1], theirs[1]
        ok = mine == their_type or (mine == "DtypeError" and their_type in
                                    ("TypeError", "ValueError", "RuntimeError")) \
            or (mine == "AxisError" and their_type in ("IndexError", "ValueError"))
        assert ok, f"{expr}: {mine} vs MLX {their_type}"
        if their_type != "TypeError" and theirs[2] != "std::bad_cast":
            assert ours[2] == theirs[2], f"{expr}: message {ours[2]!r} vs MLX {theirs[2]!r}"
        return
    assert ours[0] == theirs[0], f"{expr}: {ours} vs MLX {theirs}"
    if theirs[0] == "array":
        assert ours[1] == theirs[1], f"{expr}: shape {ours[1]} vs MLX {theirs[1]}"
        assert ours[2] == theirs[2], f"{expr}: dtype {ours[2]} vs MLX {theirs[2]}"
        np.testing.assert_allclose(ours[3], theirs[3], rtol=rtol, atol=atol, equal_nan=True,
                                   err_msg=expr)
    elif theirs[0] in ("list", "tuple"):
        assert len(ours[1]) == len(theirs[1]), f"{expr}: {len(ours[1])} results vs {len(theirs[1])}"
        for o, t in zip(ours[1], theirs[1]):
            assert_same(o, t, expr, rtol, atol)
    else:
        assert ours == theirs, f"{expr}: {ours} vs MLX {theirs}"


def check(mx, expr: str, env: dict | None = None, rtol=0.0, atol=0.0):
    env = env or {}
    assert_same(outcome(ma, expr, env), outcome(mx, expr, env), expr, rtol, atol)


def check_cases(mx, prim, dtype):
    """Every case a primitive publishes, for one dtype, against MLX."""
    rng = np.random.default_rng(0)
    mlx_dtype = getattr(mx, dtype.name if dtype.name != "bool" else "bool_")

    def convert(obj, lib):
        if isinstance(obj, np.ndarray):
            if obj.dtype == dtype.np_compute or obj.dtype == np.bool_:
                return lib.array(obj, dtype=mlx_dtype if lib is mx else dtype)
            return lib.array(obj)
        if isinstance(obj, (list, tuple)):
            return type(obj)(convert(o, lib) for o in obj)
        if isinstance(obj, dict):
            return {k: convert(v, lib) for k, v in obj.items()}
        if hasattr(obj, "np_storage") and lib is mx:
            return getattr(mx, obj.name if obj.name != "bool" else "bool_")
        return obj

    for name, args, kwargs in prim.extra["cases"](rng, dtype):
        expr = f"{name}{args!r:.60}{kwargs} [{dtype.name}]"
        results = []
        for lib in (ma, mx):
            try:
                r = getattr(lib, name)(*convert(args, lib), **convert(kwargs, lib))
                results.append(_describe(lib, r))
            except Exception as e:  # noqa: BLE001
                results.append(("error", type(e).__name__, str(e).split("\n")[0]))
        assert_same(results[0], results[1], expr)
