"""Compiled programs on the LLVM executor (``backend.llvm_program``): from its second call on, a
compiled function runs as one recorded table of native calls. Its results must be the graph's, on
every call, whatever the function does, and it may write into an input only when nothing else can
see that input."""
import numpy as np
import pytest
from hypothesis import given, settings

pytest.importorskip("llvmlite", reason="the LLVM backend needs llvmlite")

import mlxarm.core as ma  # noqa: E402
from mlxarm.backend import executor  # noqa: E402
from _graphs import apply_steps, graphs, inputs  # noqa: E402


@pytest.fixture
def llvm(monkeypatch):
    monkeypatch.setenv("MLXARM_DEVICE", "llvm")
    return executor("llvm")


def reference(fun, *args):
    """``fun`` uncompiled on the numpy executor."""
    import os

    saved = os.environ.get("MLXARM_DEVICE")
    os.environ["MLXARM_DEVICE"] = "numpy"
    try:
        out = fun(*[ma.array(a) for a in args])
        out = out if isinstance(out, (list, tuple)) else (out,)
        ma.eval(out)
        return [np.array(o) for o in out]
    finally:
        os.environ["MLXARM_DEVICE"] = saved


def calls(llvm, fun, arg_sets, rtol=1e-5, atol=1e-6):
    """Call ``compile(fun)`` on each argument set and compare with the reference; returns how many
    calls ran as a program."""
    compiled = ma.compile(fun)
    ran = llvm.programs_run
    for args in arg_sets:
        got = compiled(*[ma.array(a) for a in args])
        got = got if isinstance(got, (list, tuple)) else (got,)
        ma.eval(got)
        for g, e in zip(got, reference(fun, *args)):
            assert g.shape == e.shape and np.array(g).dtype == e.dtype
            np.testing.assert_allclose(np.array(g), e, rtol=rtol, atol=atol)
    return llvm.programs_run - ran


def values(seed, *shapes):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


FUNCTIONS = {
    "chain": (lambda a, b: ma.tanh(a * b + 1.0) * 0.5, ((64, 33), (64, 33))),
    "reductions": (lambda a, b: (ma.sum(a, axis=0), ma.max(a * b, axis=1), ma.logsumexp(a, axis=-1)),
                   ((8, 40), (8, 40))),
    "softmax and norm": (lambda a, b: (ma.softmax(a, axis=-1), ma.fast.rms_norm(a, b[0], 1e-5)),
                         ((6, 32), (6, 32))),
    "matmul with views": (lambda a, b: (a @ b.T + 1.0).T[3:17:2, ::-1] * 2.0, ((16, 24), (20, 24))),
    "movement": (lambda a, b: ma.concatenate([a[::-1], b[:, 1:3].T.reshape(a.shape[0], -1)[:, :1]], axis=1),
                 ((4, 6), (6, 4))),
    "numpy steps": (lambda a, b: (ma.sort(a, axis=-1), ma.argmax(b, axis=0), ma.cumsum(a, axis=1) * 2),
                    ((5, 7), (5, 7))),
    "several outputs of one value": (lambda a, b: (a + b, a + b, (a + b).sum()), ((3, 4), (3, 4))),
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_compiled_calls_match_the_reference(llvm, name):
    fun, shapes = FUNCTIONS[name]
    assert calls(llvm, fun, [values(seed, *shapes) for seed in range(4)]) == 3


def test_a_call_no_program_can_replay_keeps_its_graph(llvm):
    """A reshape that must copy a transposed intermediate is lowered afresh on every eval: no program
    is built, later calls record their graphs again, and every call computes the graph."""
    fun = lambda a, b: (a @ b.T + 1.0).T.reshape(-1)[3:50:2]  # noqa: E731
    assert calls(llvm, fun, [values(seed, (16, 24), (20, 24)) for seed in range(4)]) == 0
    compiled = ma.compile(fun)
    for seed in range(3):
        out = compiled(*[ma.array(v) for v in values(seed, (16, 24), (20, 24))])
        assert out._prim.name != "compiled_output" or seed == 1  # only the second call tried
        ma.eval(out)


def test_a_function_compiled_for_replays_runs_as_a_program_from_its_first_call(llvm):
    """``compile_for_replays``: the first call is traced and captured into a program at once (no
    graph evaluated first); every call equals the plain function's result."""
    from mlxarm.core.compile import compile_for_replays

    fun = lambda a, b: (ma.tanh(a @ b.T + 1.0) * 0.5, ma.sum(a * a, axis=1))  # noqa: E731
    fast, plain = compile_for_replays(fun), ma.compile(fun)
    for k in range(3):
        args = values(20 + k, (4, 16), (8, 16))
        ran = llvm.programs_run
        got = fast(*[ma.array(v) for v in args])
        ma.eval(got)
        assert llvm.programs_run - ran == 1
        ran = llvm.programs_run
        want = plain(*[ma.array(v) for v in args])
        ma.eval(want)
        assert llvm.programs_run - ran == (0 if k == 0 else 1)  # a plain compile's first call is a graph
        for g, w in zip(got, want):
            np.testing.assert_array_equal(np.array(g), np.array(w))


@settings(max_examples=20, deadline=None)
@given(graphs())
def test_random_compiled_graphs_match_the_reference(recipe):
    import os

    os.environ["MLXARM_DEVICE"] = "llvm"
    rows, cols, steps, seed = recipe
    fun = ma.compile(lambda a, b: apply_steps([a, b], steps))
    for k in range(3):
        a, b = (np.array(x) for x in inputs(rows, cols, seed + k))
        got = fun(ma.array(a), ma.array(b))
        ma.eval(got)
        (expected,) = reference(lambda x, y: apply_steps([x, y], steps), a, b)
        np.testing.assert_allclose(np.array(got), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["int32", "uint32", "int64", "int16"])
def test_row_gathers_wrap_and_clamp_their_indices(llvm, dtype):
    table = values(8, (7, 5))[0]
    picks = [np.array([[0, 6], [3, 1]]), np.array([[2, 2], [5, 0]]), np.array([[1, 4], [6, 3]])]
    if dtype != "uint32":
        picks.append(np.array([[-1, -7], [9, -20]]))  # wrapped, then clamped into range
    fun = lambda t, i: (t[i] * 2.0, t[i[0, 0]])  # noqa: E731
    assert calls(llvm, fun, [(table, p.astype(dtype)) for p in picks], rtol=0, atol=0) == len(picks) - 1


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint32"])
def test_slice_updates_at_any_position(llvm, dtype):
    """The window starts at the position, counted from the end when negative and moved inside the
    array, as the reference does."""
    positions = [0, 3, 5, 9] + ([] if dtype == "uint32" else [-1, -8])
    fun = lambda x, u, p: ma.slice_update(x, u, p, axes=(1,)) + 0.0  # noqa: E731
    arg_sets = [(*values(k, (2, 6, 3), (2, 2, 3)), np.array(p, dtype)) for k, p in enumerate(positions)]
    assert calls(llvm, fun, arg_sets, rtol=0, atol=0) == len(positions) - 1


@pytest.mark.parametrize("bits,group_size,dtypes", [(8, 32, ("float16", "float16")), (4, 64, ("float32", "float32")),
                                                     (2, 32, ("float16", "float32")), (4, 32, ("float32", "float16"))])
def test_affine_dequantize_rounds_as_the_reference(llvm, bits, group_size, dtypes):
    """The native dequantize rounds the product to the scales' dtype and the sum to the result's, bit
    for bit as the reference does (a decode step's embedding row)."""
    rng = np.random.default_rng(bits * group_size)
    arg_sets = []
    for _ in range(3):
        w = ma.array(rng.standard_normal((6, 128)).astype(np.float32) * 3)
        packed, scales, biases = ma.quantize(w, group_size=group_size, bits=bits)
        scales = np.array(scales.astype(getattr(ma, dtypes[0])))
        biases = np.array(biases.astype(getattr(ma, dtypes[1])))
        arg_sets.append((np.array(packed), scales, biases))
    fun = lambda q, s, b: ma.dequantize(q, s, b, group_size=group_size, bits=bits)  # noqa: E731
    assert calls(llvm, fun, arg_sets, rtol=0, atol=0) == 2


def test_an_input_the_caller_holds_is_never_written(llvm):
    fun = ma.compile(lambda x: ma.exp(x) * 2.0)
    for seed in range(4):
        (v,) = values(seed, (256,))
        x = ma.array(v)
        out = fun(x)
        ma.eval(out)
        np.testing.assert_array_equal(np.array(x), v)  # held: its buffer is not the output's
        np.testing.assert_allclose(np.array(out), np.exp(v) * 2, rtol=1e-6)


def test_kv_cache_update_writes_in_place_only_when_the_cache_dies(llvm):
    """The decode-step pattern: the cache goes in, the updated cache comes out. When the caller drops
    the old cache, the update writes into its buffer; when the caller keeps it, it keeps its values."""
    fun = ma.compile(lambda cache, new, pos: (cache := ma.slice_update(cache, new, pos, axes=(1,)),
                                              (cache * 1.0).sum(axis=1))[0:2])
    cache = ma.zeros((2, 8, 4))
    ma.eval(cache)
    expected = np.zeros((2, 8, 4), np.float32)
    for step in range(6):
        new = np.full((2, 1, 4), step + 1, np.float32)
        expected[:, step:step + 1] = new
        before = ma.array(expected) if step % 2 else None  # odd steps: a held copy of the old cache
        held = cache if step == 4 else None  # step 4: the caller keeps the old cache itself
        old = np.array(cache).copy()
        cache, sums = fun(cache, ma.array(new), ma.array(step, ma.int32))
        ma.eval(cache, sums)
        np.testing.assert_array_equal(np.array(cache), expected)
        np.testing.assert_allclose(np.array(sums), expected.sum(axis=1), rtol=1e-6)
        if held is not None:
            np.testing.assert_array_equal(np.array(held), old)
        del before, held


@pytest.mark.parametrize("held", [False, True])
def test_the_capturing_call_writes_a_cache_update_in_place_and_puts_it_back(llvm, held):
    """The call that captures the program updates the cache in place for its own evaluation (the
    copy it would otherwise make doubles a decode step's memory), then puts the written window back:
    the program runs on the cache as it came, a cache the caller holds keeps its values, and the
    result is the reference's."""
    fun = ma.compile(lambda cache, new, pos: (cache := ma.slice_update(cache, new, pos, axes=(1,)),
                                              (cache * 1.0).sum(axis=1), ma.sort(cache[:, :4], axis=1)))
    shape = (4, 1024, 256)  # 4 MiB
    expected = np.zeros(shape, np.float32)
    cache = ma.array(expected)
    ma.eval(cache)
    for step in range(3):  # the second call captures
        new = np.full((4, 1, 256), step + 1, np.float32)
        old = expected.copy()
        expected[:, step:step + 1] = new
        kept = cache if held else None
        ma.reset_peak_memory()
        base = ma.get_active_memory()
        cache, sums, first = fun(cache, ma.array(new), ma.array(step, ma.int32))
        ma.eval(cache, sums, first)
        np.testing.assert_array_equal(np.array(cache), expected)
        np.testing.assert_allclose(np.array(sums), expected.sum(axis=1), rtol=1e-6)
        np.testing.assert_array_equal(np.array(first), np.sort(expected[:, :4], axis=1))  # a view read
        if held:
            np.testing.assert_array_equal(np.array(kept), old)  # the caller's old cache is intact
        elif step == 1:
            # No copy of the cache for the capture, and the program wrote into the dying cache.
            assert ma.get_peak_memory() - base < old.nbytes // 2
        del kept


def test_a_capture_that_wrote_into_an_input_and_built_no_program_computes_again(llvm):
    """Without a program (a reshape of a transposed intermediate must copy), the capturing call's
    results are computed again on the inputs as they came, not read from the written ones."""
    fun = ma.compile(lambda cache, new, a: (
        ma.slice_update(cache, new, ma.array(1, ma.int32), axes=(0,)),
        (a @ a.T + 1.0).T.reshape(-1)[3:50:2]))
    (v,) = values(1, (8, 5))
    for step in range(3):
        base = np.arange(12, dtype=np.float32).reshape(4, 3) + step
        cache = ma.array(base)
        new = np.full((1, 3), -1.0, np.float32)
        got, other = fun(cache, ma.array(new), ma.array(v))
        ma.eval(got, other)
        expected = base.copy()
        expected[1:2] = new
        np.testing.assert_array_equal(np.array(got), expected)
        np.testing.assert_array_equal(np.array(cache), base)  # held: never written
        np.testing.assert_allclose(np.array(other), (v @ v.T + 1.0).T.reshape(-1)[3:50:2], rtol=1e-5)


def test_a_new_input_layout_is_captured_again(llvm):
    fun = ma.compile(lambda a: ma.exp(a) + a.sum())
    (v,) = values(3, (12, 12))
    for x in (v, v, v.T, v.T, v):  # a transposed view has other strides: another program
        a = ma.array(v)
        a = a.T if x is not v else a
        got = fun(a)
        ma.eval(got)
        np.testing.assert_allclose(np.array(got), np.exp(x) + x.sum(), rtol=1e-5)


def test_calls_on_ever_new_layouts_stop_capturing(llvm):
    """A function called on inputs of one shape but a new layout each time keeps a bounded number of
    programs, then records graphs again, computing right throughout."""
    fun = ma.compile(lambda a: ma.exp(a) * 2.0)
    for step in range(1, 13):
        (v,) = values(step, (16 * step, 4))
        a = ma.array(v)[::step]  # (16, 4) rows a new stride apart each call
        got = fun(a)
        ma.eval(got)
        np.testing.assert_allclose(np.array(got), np.exp(v[::step]) * 2, rtol=1e-6)
    (tape,) = fun._cache.values()
    assert tape.program is False  # it stopped capturing


def test_program_nodes_are_expanded_for_an_executor_without_programs(llvm, monkeypatch):
    fun = ma.compile(lambda a, b: (ma.sin(a) * b, ma.sum(a)))
    a, b = values(5, (9, 3), (9, 3))
    for _ in range(2):
        ma.eval(fun(ma.array(a), ma.array(b)))
    out = fun(ma.array(a), ma.array(b))  # program nodes, made while the LLVM executor serves
    assert out[0]._prim.name == "compiled_output"
    monkeypatch.setenv("MLXARM_DEVICE", "numpy")
    ma.eval(out)
    np.testing.assert_allclose(np.array(out[0]), np.sin(a) * b, rtol=1e-6)
    np.testing.assert_allclose(np.array(out[1]), a.sum(), rtol=1e-5)


def test_outputs_evaluated_separately_and_dropped_ones(llvm):
    fun = ma.compile(lambda a: (a * 2.0, a + 1.0, a - 1.0))
    (v,) = values(6, (10,))
    for _ in range(2):
        ma.eval(fun(ma.array(v)))
    doubled, plus, _ = fun(ma.array(v))  # the third result is dropped unevaluated
    ma.eval(plus)
    np.testing.assert_allclose(np.array(plus), v + 1, rtol=1e-6)
    np.testing.assert_allclose(np.array(doubled), v * 2, rtol=1e-6)  # realized with it


@pytest.mark.parametrize("device", ["llvm", "numpy"])
def test_a_result_overwritten_in_place_is_computed_first(llvm, monkeypatch, device):
    """``out[i] = v`` on a result not yet computed makes ``out`` a new node reading the result's old
    value: the program must compute that value (on any executor), not skip it."""
    fun = ma.compile(lambda a: a * 2.0)
    (v,) = values(9, (5, 3))
    for _ in range(2):
        ma.eval(fun(ma.array(v)))
    out = fun(ma.array(v))
    before = out + 1.0  # recorded on the old value
    out[1] = 7.0
    monkeypatch.setenv("MLXARM_DEVICE", device)
    ma.eval(out, before)
    expected = v * 2
    np.testing.assert_allclose(np.array(before), expected + 1, rtol=1e-6)
    expected[1] = 7
    np.testing.assert_allclose(np.array(out), expected, rtol=1e-6)


def _train(compiled: bool, steps: int = 6):
    """Adam on a small MLP, the step compiled with the model's and optimizer's state or not."""
    import mlxarm.nn as nn
    import mlxarm.optimizers as optim
    from mlxarm.utils import tree_flatten

    ma.random.seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    ma.eval(model.parameters())
    opt = optim.Adam(learning_rate=1e-2)
    grad_fn = nn.value_and_grad(model, lambda m, x, y: nn.losses.cross_entropy(m(x), y).mean())
    state = [model.state, opt.state]

    def step(x, y):
        loss, grads = grad_fn(model, x, y)
        opt.update(model, grads)
        return loss

    if compiled:
        step = ma.compile(step, inputs=state, outputs=state)
    rng = np.random.default_rng(1)
    losses = []
    for _ in range(steps):
        loss = step(ma.array(rng.standard_normal((32, 8)).astype(np.float32)),
                    ma.array(rng.integers(0, 4, 32).astype(np.int32)))
        ma.eval(state)
        losses.append(loss.item())
    return losses, [np.array(p) for _, p in tree_flatten(model.parameters())]


def test_a_compiled_training_step_with_state_matches_the_uncompiled_one(llvm):
    """Captured state (the model's parameters, Adam's moments) goes in and comes out of every call;
    a program writes the new values where the old ones die."""
    losses, params = _train(False)
    ran = llvm.programs_run
    compiled_losses, compiled_params = _train(True)
    # The first call creates Adam's moments, so the second call's state has another structure and is
    # traced anew: the third call captures its program and runs it, as do the three after it.
    assert llvm.programs_run - ran == 4
    np.testing.assert_allclose(compiled_losses, losses, rtol=1e-6)
    for got, expected in zip(compiled_params, params):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_gradients_through_a_compiled_function_trace_its_graph(llvm):
    fun = ma.compile(lambda x: ma.sum(ma.sin(x) * x))
    (v,) = values(7, (6,))
    for _ in range(3):
        g = ma.grad(fun)(ma.array(v))
        ma.eval(g)
        np.testing.assert_allclose(np.array(g), np.cos(v) * v + np.sin(v), rtol=1e-5, atol=1e-6)


def test_matvecs_of_one_x_run_as_one_row(llvm):
    """A decode step's query, key and value projections (and gate and up) read the same x: the
    program runs each group as one call of the quantized matvec over its matrices (three matrices at
    most), with every result the separate products' bit for bit; a product of another x (the output
    projection) stays a row of its own."""
    from mlxarm.backend import llvm_program

    rng = np.random.default_rng(3)

    def layer(x, h):
        return tuple(ma.quantized_matmul(x, q, s, b, group_size=32, bits=4) for q, s, b in weights[:4]) \
            + (ma.quantized_matmul(h, *weights[4], group_size=32, bits=4),)

    weights = []
    for n in (64, 24, 24, 40, 96):
        w = ma.array(rng.standard_normal((n, 96 if n != 96 else 64)).astype(np.float32))
        weights.append(ma.quantize(w, group_size=32, bits=4))
    built = []
    build = llvm_program.build

    def noted(*args, **kwargs):
        built.append(build(*args, **kwargs))
        return built[-1]

    arg_sets = [values(seed, (1, 96), (1, 64)) for seed in range(3)]
    compiled = ma.compile(layer)
    gots = []
    try:
        llvm_program.build = noted
        for x, h in arg_sets:
            got = compiled(ma.array(x), ma.array(h))
            ma.eval(got)
            gots.append(got)
    finally:
        llvm_program.build = build
    for (x, h), got in zip(arg_sets, gots):  # each product on its own (no compile)
        want = layer(ma.array(x), ma.array(h))
        ma.eval(want)
        for g, e in zip(got, want):
            np.testing.assert_array_equal(np.array(g), np.array(e))
    assert len(built) == 1
    # x times four matrices: one call of three and one of one; h: one
    assert built[0].native_rows == 3


def _address(a) -> int:
    return a._data.__array_interface__["data"][0]


def test_a_call_run_now_matches_the_lazy_call(llvm):
    """``now`` runs a call at once by its program: None (nothing run) until the program exists,
    then the lazy call's results, realized before any eval. Caches passed in a list the caller let
    go of are updated in their own buffers; one the caller still holds keeps its values."""
    def step(caches, new, pos):
        caches = [ma.slice_update(c, new * (i + 1), pos, axes=(1,)) for i, c in enumerate(caches)]
        return caches, sum(c.sum() for c in caches)

    fun = ma.compile(step)
    caches = [ma.zeros((2, 8, 4)) for _ in range(3)]
    ma.eval(caches)
    expected = [np.zeros((2, 8, 4), np.float32) for _ in range(3)]
    ran_now = 0
    for pos in range(7):
        new = np.full((2, 1, 4), pos + 1, np.float32)
        for i, e in enumerate(expected):
            e[:, pos:pos + 1] = new * (i + 1)
        held = caches[1] if pos == 5 else None  # this step the caller keeps one old cache
        kept = np.array(held).copy() if held is not None else None
        addresses = [_address(c) for c in caches]
        args = (caches, ma.array(new), ma.array(pos, ma.int32))
        del caches
        runs = llvm.programs_run
        got = fun.now(*args)
        if got is None:
            assert llvm.programs_run == runs  # nothing ran
            got = fun(*args)
        else:
            ran_now += 1
            assert llvm.programs_run == runs + 1  # ran before any eval
            assert [_address(c) == a for c, a in zip(got[0], addresses)] == [True, held is None, True]
        del args
        caches, total = got
        ma.eval(caches, total)
        np.testing.assert_array_equal(np.stack([np.array(c) for c in caches]), np.stack(expected))
        np.testing.assert_allclose(np.array(total), sum(e.sum() for e in expected), rtol=1e-6)
        if held is not None:
            np.testing.assert_array_equal(np.array(held), kept)
        del held
    assert ran_now >= 4


def now_or_lazy(fun, *args):
    got = fun.now(*args)
    return fun(*args) if got is None else got


def test_a_call_run_now_lends_no_array_held_outside_its_containers(llvm):
    """An array passed bare, or in a list passed twice, is held by the caller too: ``now`` never
    writes into it, however its references add up."""
    fun = ma.compile(lambda xs, ys, pos: [ma.slice_update(x, ma.ones((1,)), pos, axes=(0,)) for x in xs + ys])
    bare = ma.compile(lambda x, pos: ma.slice_update(x, ma.ones((1,)), pos, axes=(0,)))
    for pos in range(4):
        a = ma.zeros((8,))
        ma.eval(a)
        shared = [a]
        got = now_or_lazy(fun, shared, shared, ma.array(pos, ma.int32))
        ma.eval(got)
        got = now_or_lazy(bare, a, ma.array(pos, ma.int32))
        ma.eval(got)
        np.testing.assert_array_equal(np.array(a), np.zeros(8, np.float32))
        np.testing.assert_array_equal(np.array(got), np.eye(8, dtype=np.float32)[pos])


def test_a_call_run_now_never_lends_an_input_it_returns(llvm):
    """A call returning one of its inputs as it is, beside an update of it: the input keeps its
    values though nothing but the argument list holds it, and the update is a new array."""
    fun = ma.compile(lambda xs, pos: (xs[0], ma.slice_update(xs[0], ma.ones((1,)), pos, axes=(0,))))
    for pos in range(4):
        xs = [ma.zeros((8,))]
        ma.eval(xs)
        same, updated = now_or_lazy(fun, xs, ma.array(pos, ma.int32))
        ma.eval(same, updated)
        np.testing.assert_array_equal(np.array(same), np.zeros(8, np.float32))
        np.testing.assert_array_equal(np.array(updated), np.eye(8, dtype=np.float32)[pos])


def test_a_bound_call_updates_its_state_in_place(llvm):
    """``bind``: None until the program exists; then each call of the ``BoundCall`` runs the program
    on the arrays given anew, writes the state (the caches) in place and returns the other results,
    equal to the lazy calls'; ``release`` gives the state back. A call of the same function on other
    caches in between leaves the bound state right; a call while the caller holds a cache, or with
    an array of another shape, runs nothing."""
    def step(tokens, pos, caches):
        caches = [ma.slice_update(c, tokens * (i + 1.0), pos, axes=(1,)) for i, c in enumerate(caches)]
        return (caches[0] * caches[1]).sum(axis=1), caches

    fun = ma.compile(step)

    def fresh():
        cs = [ma.zeros((2, 8, 4)) for _ in range(2)]
        ma.eval(cs)
        return cs

    def token(pos):
        return ma.array(np.full((2, 1, 4), pos + 1, np.float32))

    def write(expected, pos):
        for i, e in enumerate(expected):
            e[:, pos] = (pos + 1.0) * (i + 1)

    expected = [np.zeros((2, 8, 4), np.float32) for _ in range(2)]
    caches, call, pos = fresh(), None, 0
    while call is None:  # lazy calls, then calls run at once, until the step binds
        assert pos < 4
        args = (token(pos), ma.array(pos, ma.int32), caches)
        del caches
        got = fun.now(*args)
        if got is None:
            assert fun.bind(*args) is None  # no program yet
            got = fun(*args)
        del args
        write(expected, pos)
        caches = got[1]
        ma.eval(caches)
        del got
        pos += 1
        args = (token(pos), ma.array(pos, ma.int32), caches)
        del caches
        ma.eval(ma.ones((3,)) + 1)  # an unrelated eval in between
        call = fun.bind(*args)
        caches = args[2]
        del args
    del caches
    addresses = [_address(c) for c in call._state]
    other, other_expected = fresh(), [np.zeros((2, 8, 4), np.float32) for _ in range(2)]
    for p in range(pos, 8):
        write(expected, p)
        runs = llvm.programs_run
        if p == 5:
            held = call._state[0]  # the caller keeps a cache: the call runs nothing
            assert call(token(p), ma.array(p, ma.int32)) is None and llvm.programs_run == runs
            del held
        assert call(ma.zeros((3, 1, 4)), ma.array(p, ma.int32)) is None and llvm.programs_run == runs
        (total,) = call(token(p), ma.array(p, ma.int32))
        assert llvm.programs_run == runs + 1
        np.testing.assert_allclose(np.array(total), (expected[0] * expected[1]).sum(axis=1), rtol=1e-6)
        if p == 6:  # the same program on other caches, between two bound calls
            args = (token(0), ma.array(0, ma.int32), other)
            del other
            other = now_or_lazy(fun, *args)[1]
            del args
            write(other_expected, 0)
            ma.eval(other)
    total, caches = call.release()
    assert call(token(0), ma.array(0, ma.int32)) is None  # released
    assert [_address(c) for c in caches] == addresses
    np.testing.assert_array_equal(np.stack([np.array(c) for c in caches]), np.stack(expected))
    np.testing.assert_allclose(np.array(total), (expected[0] * expected[1]).sum(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(np.stack([np.array(c) for c in other]), np.stack(other_expected))
