"""Plan capture and replay on the LLVM executor: an eval whose graph has the structure of an earlier
one runs that eval's recorded steps on its own buffers. Replays must give what a fresh plan gives,
also when the buffers change, and a structurally different graph must be planned afresh; the cache
of recorded evals stays bounded; a compiled decode step of a language model replays. From its first
replay a structure runs as a program (one native call for its kernels) where one pays, with the same
results. Quantized products reading one x share its interleaved copy only while x's buffer and bits
are unchanged."""
import numpy as np
import pytest
from hypothesis import given, settings

pytest.importorskip("llvmlite", reason="the LLVM backend needs llvmlite")

import mlxarm.core as ma  # noqa: E402
from mlxarm.backend import executor, llvm as llvm_backend  # noqa: E402
from mlxarm.lm import KVCache, generate_step  # noqa: E402
from mlxarm.lm.models import llama  # noqa: E402
from _graphs import apply_steps, graphs, inputs  # noqa: E402


@pytest.fixture
def llvm(monkeypatch):
    monkeypatch.setenv("MLXARM_DEVICE", "llvm")
    return executor("llvm")


def data(seed, *shapes):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def mixed(a, b, w):
    """Fused elementwise kernels, a reduction with an epilogue, numpy steps between kernels
    (cumsum, a materialized view), a matvec, a float32 gemm and a row kernel (softmax)."""
    h = ma.tanh(a * b + 1.0)
    c = ma.cumsum(h, axis=1)
    n = c / ma.sqrt(ma.sum(c * c, axis=1, keepdims=True) + 1e-3)
    v = n @ w[:, :1]
    g = n.T[:16] @ n[:, :16]
    return ma.softmax(g, axis=-1), v, ma.max(n, axis=0)


def numpy_reference(fn, arrays):
    import os

    old = os.environ.get("MLXARM_DEVICE")
    os.environ["MLXARM_DEVICE"] = "numpy"
    try:
        outs = fn(*[ma.array(x) for x in arrays])
        ma.eval(outs)
        return [np.array(o) for o in outs]
    finally:
        os.environ["MLXARM_DEVICE"] = old


def run(fn, arrays):
    outs = fn(*[ma.array(x) for x in arrays])
    ma.eval(outs)
    return [np.array(o) for o in outs]


def test_replay_matches_a_fresh_plan_on_new_buffers(llvm):
    shapes = ((48, 40), (40,), (40, 8))
    first = data(0, *shapes)
    fresh = run(mixed, first)
    run(mixed, data(9, *shapes))  # the structure's second sighting: its plan is kept
    replays = llvm.replays
    for seed in (1, 2, 3):  # new values in new buffers: the same structure replays
        arrays = data(seed, *shapes)
        got = run(mixed, arrays)
        assert llvm.replays == replays + seed
        for g, r in zip(got, numpy_reference(mixed, arrays)):
            np.testing.assert_allclose(g, r, rtol=2e-5, atol=2e-5)
    again = run(mixed, first)  # a replay on the first inputs repeats the fresh result exactly
    assert llvm.replays == replays + 4
    for g, f in zip(again, fresh):
        np.testing.assert_array_equal(g, f)


def test_structurally_different_graphs_are_planned_afresh(llvm):
    x, y = data(4, (12, 10), (12, 10))
    for _ in range(3):  # kept, then replayed
        run(lambda a, b: (ma.exp(a) + b,), [x, y])
    replays = llvm.replays
    cases = [
        (lambda a, b: (ma.exp(a) - b,), [x, y], lambda: [np.exp(x) - y]),  # another op
        (lambda a, b: (ma.exp(a) + b,), [x[:, :6], y[:, :6]],  # another shape
         lambda: [np.exp(x[:, :6]) + y[:, :6]]),
        (lambda a, b: (ma.exp(a) + a,), [x, y], lambda: [np.exp(x) + x]),  # other wiring
        (lambda a, b: (ma.exp(a) + b.astype(ma.float16),), [x, y],  # another dtype on the way
         lambda: [np.exp(x) + y.astype(np.float16).astype(np.float32)]),
    ]
    for fn, arrays, expected in cases:
        got = run(fn, arrays)
        for g, e in zip(got, expected()):
            np.testing.assert_allclose(g, e, rtol=1e-3, atol=1e-3)
    # Another layout of a realized buffer: a transposed view, evaluated on its own first.
    a = ma.array(np.ascontiguousarray(x.T)).T
    ma.eval(a)
    got = ma.exp(a) + ma.array(y)
    ma.eval(got)
    np.testing.assert_allclose(np.array(got), np.exp(x) + y, rtol=1e-5)
    assert llvm.replays == replays


def test_an_intermediate_held_outside_changes_the_plan(llvm):
    """Whether the caller holds an intermediate decides what gets a buffer, so it is part of the
    structure: holding one must not replay the plan made when nobody held it."""
    x, y = data(5, (8, 16), (16,))
    a, b = ma.array(x), ma.array(y)
    for _ in range(3):  # kept, then replayed
        out = ma.sum(ma.exp(a * b), axis=1)
        ma.eval(out)
    replays = llvm.replays
    t = ma.exp(a * b)
    out = ma.sum(t, axis=1)
    ma.eval(out)
    assert llvm.replays == replays and t._data is not None  # materialized for its holder
    np.testing.assert_allclose(np.array(t), np.exp(x * y), rtol=1e-5)
    np.testing.assert_allclose(np.array(out), np.exp(x * y).sum(1), rtol=1e-5)


def test_many_small_kernels_run_as_one_program_from_the_first_replay(llvm):
    """An eval seen twice replays; its first replay captures a program, and every later one runs
    all its kernels (and its numpy steps) by that program on the eval's own buffers: results as a
    fresh plan's, an intermediate the caller holds is realized, and one held by nobody is not."""
    shapes = ((6, 5), (5,), (5, 8))

    def small(a, b, w):
        h = ma.tanh(a * b + 1.0)
        outs = [ma.exp(h * k) for k in range(12)]  # held: none fuses into another
        c = ma.cumsum(h, axis=1)  # a numpy step between kernels
        return outs + [ma.sum(c * c, axis=1), ma.max(c * w[:, 0], axis=1)]

    for seed in (0, 1):  # planned, then kept
        run(small, data(seed, *shapes))
    before, replays = llvm.eval_programs_run, llvm.replays
    for seed in (2, 3, 4, 5):  # captured, then run by the program
        arrays = data(seed, *shapes)
        got = run(small, arrays)
        for g, r in zip(got, numpy_reference(small, arrays)):
            np.testing.assert_allclose(g, r, rtol=2e-5, atol=2e-5)
    assert llvm.replays - replays == 4
    assert llvm.eval_programs_run - before == 3
    a, b, w = (ma.array(x) for x in data(6, *shapes))
    held = ma.tanh(a * b + 1.0)  # the same graph but with an intermediate held: another structure
    outs = [ma.exp(held * k) for k in range(12)]
    ma.eval(outs)
    assert llvm.eval_programs_run - before == 3 and held._data is not None
    x, y, _ = data(6, *shapes)
    np.testing.assert_allclose(np.array(held), np.tanh(x * y + 1), rtol=1e-5, atol=1e-6)
    for k, o in zip(range(12), outs):
        np.testing.assert_allclose(np.array(o), np.exp(np.tanh(x * y + 1) * k), rtol=1e-5, atol=1e-6)


@settings(max_examples=12, deadline=None)
@given(graphs(max_steps=10))
def test_random_graphs_repeated_agree_with_the_reference(recipe):
    """A random graph evaluated on new inputs four times (planned, kept, captured, run as a program
    where one is built), every step's result held: each eval gives the reference's results."""
    import os

    rows, cols, steps, seed = recipe

    def prefixes(base):
        return [apply_steps(base, steps[:i]) for i in range(1, len(steps) + 1)]

    old = os.environ.get("MLXARM_DEVICE")
    os.environ["MLXARM_DEVICE"] = "llvm"  # (hypothesis runs the body many times per fixture)
    try:
        for k in range(4):
            a, b = (np.array(x) for x in inputs(rows, cols, seed + k))
            got = prefixes([ma.array(a), ma.array(b)])
            ma.eval(got)
            for g, e in zip(got, numpy_reference(lambda x, y: prefixes([x, y]), [a, b])):
                np.testing.assert_allclose(np.array(g), e, rtol=1e-5, atol=1e-6)
    finally:
        if old is None:
            os.environ.pop("MLXARM_DEVICE", None)
        else:
            os.environ["MLXARM_DEVICE"] = old


def test_an_eval_program_writes_into_dying_inputs_only(llvm):
    """A program may give an output the buffer of an input that dies with the eval (as a replay
    would); an input the caller still holds keeps its values."""
    def step(x):
        return ma.exp(x) * 2.0 + 1.0, ma.sin(x) * 0.5

    def held_and_dying(seed):
        (v,) = data(seed, (64,))
        kept = ma.array(v)
        outs = step(kept)  # ``kept`` is held here: its buffer is never written
        ma.eval(outs)
        np.testing.assert_array_equal(np.array(kept), v)
        np.testing.assert_allclose(np.array(outs[0]), np.exp(v) * 2 + 1, rtol=1e-5)
        donated = llvm.donated
        outs = step(ma.array(v))  # a dying input: the program may write into it
        ma.eval(outs)
        np.testing.assert_allclose(np.array(outs[0]), np.exp(v) * 2 + 1, rtol=1e-5)
        np.testing.assert_allclose(np.array(outs[1]), np.sin(v) * 0.5, rtol=1e-5, atol=1e-7)
        return llvm.donated - donated

    for seed in range(3):  # each structure planned, kept, captured
        held_and_dying(seed)
    before = llvm.eval_programs_run
    for seed in (3, 4):
        assert held_and_dying(seed) == 1
    assert llvm.eval_programs_run - before == 4


def test_an_eval_with_large_intermediates_or_an_in_place_update_keeps_replaying(llvm):
    """No program where its arena would keep more than ``_EVAL_ARENA_MAX`` bytes of intermediates,
    where a slice update writes into a leaf in place, or where numpy steps outweigh the native rows:
    their recorded actions replay."""
    n = llvm_backend._EVAL_ARENA_MAX // 4 + 1024
    before = llvm.eval_programs_run
    for seed in range(4):
        (x,) = data(seed, (n,))
        a = ma.array(x)
        ma.eval(a)
        out = ma.sum(ma.cumsum(a * 2.0, axis=0))  # the product and the cumsum are intermediates
        ma.eval(out)
        np.testing.assert_allclose(np.array(out), np.cumsum(x * 2).sum(), rtol=1e-3)
    for seed in range(4):
        (x,) = data(seed, (16, 8))
        cache = ma.array(np.zeros((16, 8), np.float32)) + 0.0
        cache[3:5] = ma.array(x[:2]) * 2.0
        ma.eval(cache)
        want = np.zeros((16, 8), np.float32)
        want[3:5] = x[:2] * 2
        np.testing.assert_array_equal(np.array(cache), want)
    for seed in range(4):
        x, y = data(seed, (8, 8), (8, 8))
        a, b = ma.array(x), ma.array(y)
        out = ma.cumsum(ma.cumsum(a * b, axis=0) + 1.0, axis=1)  # numpy, kernel, numpy
        ma.eval(out)
        np.testing.assert_allclose(np.array(out), np.cumsum(np.cumsum(x * y, axis=0) + 1, axis=1), rtol=1e-5)
    assert llvm.eval_programs_run == before


def test_eval_programs_arenas_are_cache_memory_that_clear_cache_frees(llvm):
    """The arena of an eval's program (its intermediates) counts as cache memory; ``clear_cache``
    lets the programs go, and under a cache limit too small for it no program is kept."""
    def graph(a):
        h = ma.cumsum(a * 2.0, axis=0)  # two intermediates, in the arena
        return [ma.sum(ma.exp(h * (k * 1e-3))) for k in range(1, 9)] + [ma.max(h)]

    ma.clear_cache()
    empty = ma.get_cache_memory()
    arrays = [data(seed, (4096,))[0] for seed in range(4)]
    for x in arrays:
        got = graph(ma.array(x))
        ma.eval(got)
    assert ma.get_cache_memory() >= empty + 2 * 4096 * 4
    ma.clear_cache()
    assert ma.get_cache_memory() == empty
    before = llvm.eval_programs_run
    old = ma.set_cache_limit(0)
    try:
        for x in arrays:
            got = graph(ma.array(x))
            ma.eval(got)
            h = np.cumsum(x * 2)
            np.testing.assert_allclose(np.array(got[0]), np.exp(h * 1e-3).sum(), rtol=1e-4)
        assert llvm.eval_programs_run == before and ma.get_cache_memory() == empty
    finally:
        ma.set_cache_limit(old)


def test_recorded_evals_are_bounded(llvm):
    for n in range(1, llvm_backend._EVALS_KEPT + 20):
        for _ in range(2):  # each shape twice, so each is kept
            (got,) = run(lambda a: (ma.sin(a) * 2.0,), [np.full((n,), 0.5, np.float32)])
            np.testing.assert_allclose(got, np.sin(np.full((n,), 0.5, np.float32)) * 2, rtol=1e-6)
    assert len(llvm.evals) == llvm_backend._EVALS_KEPT
    assert len(llvm.seen) <= llvm_backend._SEEN_KEPT and len(llvm.plans) <= llvm_backend._GROUPS_KEPT


def test_compiled_function_runs_as_a_program(llvm):
    """The first call traces and evaluates the graph, the second captures its program and every
    later call runs that program: no graph is recorded for it."""
    f = ma.compile(lambda a, b: ma.softmax(a @ b + 1.0, axis=-1).sum(axis=0))
    x, w = data(6, (4, 32), (32, 64))
    for _ in range(2):  # traced, captured
        ma.eval(f(ma.array(x), ma.array(w)))
    ran = llvm.programs_run
    for seed in (7, 8):
        x, w = data(seed, (4, 32), (32, 64))
        got = f(ma.array(x), ma.array(w))
        assert got._prim.name == "compiled_output"
        ma.eval(got)
        z = x @ w + 1
        e = np.exp(z - z.max(-1, keepdims=True))
        np.testing.assert_allclose(np.array(got), (e / e.sum(-1, keepdims=True)).sum(0), rtol=1e-5, atol=1e-6)
    assert llvm.programs_run == ran + 2


def tiny_llama(seed=0):
    args = llama.ModelArgs(hidden_size=32, num_hidden_layers=2, intermediate_size=48, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=40, rope_theta=10000.0)
    ma.random.seed(seed)
    model = llama.Model(args)
    ma.eval(model.parameters())
    return model


def decode_with_growing_cache(model, prompt, steps):
    """Greedy decode as mlx-lm writes it: a cache that grows, positions as Python ints."""
    cache = [KVCache() for _ in model.layers]
    logits = model(ma.array([prompt], ma.uint32), cache=cache)[:, -1, :]
    out = []
    for _ in range(steps):
        logprobs = logits - ma.logsumexp(logits, axis=-1, keepdims=True)
        token = int(np.argmax(np.array(logprobs)[0]))
        out.append((token, np.array(logprobs)[0]))
        logits = model(ma.array([[token]], ma.uint32), cache=cache)[:, -1, :]
    return out


def test_decode_steps_run_as_a_program_and_match_the_growing_cache(llvm):
    model = tiny_llama()
    prompt = [3, 17, 5, 9, 22]
    expected = decode_with_growing_cache(model, prompt, 6)
    ran, donated = llvm.programs_run, llvm.donated
    got = list(generate_step(prompt, model, max_tokens=6))
    # Five decode steps: the first traces the compiled step and captures its program (and runs it),
    # and every one runs that program. The first run, the second step (run at once) and the binding
    # after it each take every layer's key and value buffers to write into; the bound steps write
    # into the buffers they hold (``test_a_bound_call_updates_its_state_in_place``).
    assert llvm.programs_run - ran == 5
    assert llvm.donated - donated >= 3 * 2 * len(model.layers)
    assert [t for t, _ in got] == [t for t, _ in expected]
    for (_, g), (_, e) in zip(got, expected):
        np.testing.assert_allclose(np.array(g), e, rtol=1e-5, atol=1e-5)


def test_a_later_generation_reuses_the_decode_step_until_the_weights_change(llvm):
    """Generations with one model on caches of one shape share the compiled decode step (its program
    runs from their first step); new weight arrays make a new step, which computes with them."""
    model = tiny_llama()
    prompt = [3, 17, 5, 9, 22]
    first = [t for t, _ in generate_step(prompt, model, max_tokens=6)]
    ran = llvm.programs_run
    again = [t for t, _ in generate_step(prompt, model, max_tokens=5)]  # capacity rounds to the same
    assert again == first[:5]
    assert llvm.programs_run - ran == 4  # every decode step of it, none traced or captured
    from mlxarm.utils import tree_flatten, tree_unflatten

    model.update(tree_unflatten([(k, -v if k.endswith("proj.weight") else v)
                                 for k, v in tree_flatten(model.parameters())]))
    expected = [t for t, _ in decode_with_growing_cache(model, prompt, 6)]
    assert expected != first  # the new weights change the continuation
    assert [t for t, _ in generate_step(prompt, model, max_tokens=6)] == expected


def test_slice_update_writes_into_a_dying_buffer_only(llvm):
    """A dynamic slice update donates its input's buffer when nothing else can see it (a KV cache
    step); a buffer the user, another node or a view still reads is copied instead."""
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    update = np.full((1, 6), -1.0, np.float32)
    expected = base.copy()
    expected[2] = -1

    cache = ma.array(base)
    ma.eval(cache)
    donated = llvm.donated
    cache = ma.slice_update(cache, ma.array(update), ma.array(2), axes=(0,))  # the old one dies
    ma.eval(cache)
    assert llvm.donated == donated + 1
    np.testing.assert_array_equal(np.array(cache), expected)

    held = ma.array(base)
    ma.eval(held)
    out = ma.slice_update(held, ma.array(update), ma.array(2), axes=(0,))
    ma.eval(out)
    np.testing.assert_array_equal(np.array(held), base)  # the holder still sees its values
    np.testing.assert_array_equal(np.array(out), expected)
    assert llvm.donated == donated + 1

    a = ma.array(base)
    view = a[1:3]
    ma.eval(a, view)
    out = ma.slice_update(a, ma.array(update), ma.array(2), axes=(0,))
    del a
    ma.eval(out)
    np.testing.assert_array_equal(np.array(view), base[1:3])  # a view of the buffer is untouched
    np.testing.assert_array_equal(np.array(out), expected)
    assert llvm.donated == donated + 1

    a = ma.array(base)
    ma.eval(a)
    out = ma.slice_update(a, ma.array(update), ma.array(2), axes=(0,)) + ma.sum(a, axis=0)
    del a
    ma.eval(out)  # another node reads the old buffer in the same eval (donated once that ran)
    np.testing.assert_array_equal(np.array(out), expected + base.sum(0))

    a = ma.array(base)
    ma.eval(a)
    donated = llvm.donated
    out = ma.slice_update(a, ma.array(update), ma.array(2), axes=(0,))
    later = a * 2.0  # realized after the update: it must read the old values
    del a
    ma.eval(later, out)  # the update is ordered first
    assert llvm.last_plan[0] == ("numpy", "dynamic_slice_update")
    np.testing.assert_array_equal(np.array(later), base * 2)
    np.testing.assert_array_equal(np.array(out), expected)
    assert llvm.donated == donated


def test_quantized_products_after_an_in_place_update_read_the_new_values(llvm):
    """Quantized products reading one x reuse its interleaved copy; an update written into that
    x's buffer (a donated slice_update) must not leave a later product reading the old values."""
    rng = np.random.default_rng(12)
    w = rng.standard_normal((32, 64)).astype(np.float32)
    wq, scales, biases = (np.array(a) for a in ma.quantize(ma.array(w), group_size=32, bits=4))
    x0 = rng.standard_normal((1, 64)).astype(np.float32)
    upd = rng.standard_normal((1, 8)).astype(np.float32)

    def step(x, u):
        args = [ma.array(a) for a in (wq, scales, biases)]
        h = x * 2.0
        a = ma.quantized_matmul(h, *args, transpose=True, group_size=32, bits=4)
        h2 = ma.slice_update(h, u + a[:, :8], ma.array(8, ma.int32), axes=(1,))  # after a: h dies
        b = ma.quantized_matmul(h2, *args, transpose=True, group_size=32, bits=4)
        return a, b

    for _ in range(3):  # recorded, kept, replayed
        donated = llvm.donated
        got = run(step, [x0, upd])
        want = numpy_reference(step, [x0, upd])
        for g, r in zip(got, want):
            np.testing.assert_allclose(g, r, rtol=2e-5, atol=2e-5)
        assert not np.allclose(got[0], got[1])
    assert llvm.donated > donated  # the update wrote into h's buffer


def test_quantized_products_of_other_bits_on_one_x(llvm):
    """Products of one x with 4-bit and 2-bit weights (a mixed-precision model) each read x laid
    out for their own bits."""
    rng = np.random.default_rng(13)
    weights = []
    for bits in (4, 2, 4):
        w = rng.standard_normal((16, 64)).astype(np.float32)
        weights.append((bits, [np.array(a) for a in ma.quantize(ma.array(w), group_size=64, bits=bits)]))
    x0 = rng.standard_normal((1, 64)).astype(np.float32)

    def step(x):
        h = x + 1.0
        return [ma.quantized_matmul(h, *[ma.array(a) for a in packed], transpose=True, group_size=64, bits=bits)
                for bits, packed in weights]

    for _ in range(3):  # recorded, kept, replayed
        for g, r in zip(run(step, [x0]), numpy_reference(step, [x0])):
            np.testing.assert_allclose(g, r, rtol=2e-5, atol=2e-5)


def _numpy_attention(q, k, v, scale):
    s = (q @ np.swapaxes(k, -1, -2)) * scale
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def test_uncompiled_steps_on_a_growing_cache_replay_one_plan(llvm):
    """A decode step written as mlx-lm writes it (the cache updated at the position by ``cache[...,
    n:n+1, :] = kv`` and attention over ``cache[..., :n+1, :]``) differs from the last step only in
    those slices' bounds and shapes: from the third step on it replays one plan, and every step
    computes what numpy computes on the same cache (through the output projection and the last
    position's row of a quantized projection, ``quantized_matmul(h, w, ...)[:, -1, :]``)."""
    rng = np.random.default_rng(7)
    heads, dims, capacity = 2, 16, 16
    qw, scales, biases = ma.quantize(ma.array(rng.standard_normal((40, heads * dims)).astype(np.float32)), 32)
    w = np.array(ma.dequantize(qw, scales, biases, 32)).T
    keys = ma.zeros((1, heads, capacity, dims))
    values = ma.zeros((1, heads, capacity, dims))
    ref_k = np.zeros((1, heads, capacity, dims), np.float32)
    ref_v = np.zeros_like(ref_k)
    replays = []
    for n in range(8):
        q, k, v = (rng.standard_normal((1, heads, 1, dims)).astype(np.float32) for _ in range(3))
        ref_k[..., n:n + 1, :], ref_v[..., n:n + 1, :] = k, v
        keys[..., n:n + 1, :] = ma.array(k)
        values[..., n:n + 1, :] = ma.array(v)
        out = ma.fast.scaled_dot_product_attention(ma.array(q) * 1.0, keys[..., :n + 1, :], values[..., :n + 1, :],
                                                   scale=0.5)
        logits = ma.quantized_matmul(out.reshape(1, 1, heads * dims), qw, scales, biases, group_size=32)[:, -1, :]
        before = llvm.replays
        ma.eval(logits)
        replays.append(llvm.replays - before)
        want = _numpy_attention(q, ref_k[..., :n + 1, :], ref_v[..., :n + 1, :], 0.5)
        np.testing.assert_allclose(np.array(logits), want.reshape(1, heads * dims) @ w, rtol=1e-5, atol=1e-5)
    assert replays[3:] == [1] * 5


def test_slices_a_kernel_reads_are_part_of_the_replayed_structure(llvm):
    """Slices of other bounds but one shape: folded into a kernel, or realized and read by one, the
    kernel was made for their offsets and layout, so each eval computes its own slice."""
    x = np.arange(64, dtype=np.float32)
    a = ma.array(x)
    for start in range(0, 40, 5):
        folded = ma.sum(a[start:start + 8] * 2.0)  # the slice is an index expression of the kernel
        assert float(folded) == float((x[start:start + 8] * 2).sum())
    for start in range(0, 40, 5):
        view = a[start:start + 8:2]
        scaled = view * 3.0  # reads the realized view
        ma.eval(view, scaled)
        np.testing.assert_array_equal(np.array(scaled), x[start:start + 8:2] * 3)
    for n in range(1, 9):
        grown = a[:n] + 1.0  # another shape: another kernel
        np.testing.assert_array_equal(np.array(grown), x[:n] + 1)


def test_setitem_writes_into_a_dying_buffer_only(llvm):
    """``cache[..., n:n+1, :] = kv`` (mlx-lm's KV cache update) writes into the cache's buffer when nothing
    else can see it, and copies it when a view of the old cache is still held."""
    base = np.arange(2 * 6 * 4, dtype=np.float32).reshape(2, 6, 4)
    update = np.full((2, 1, 4), -1.0, np.float32)
    cache = ma.array(base)
    ma.eval(cache)
    expected = base.copy()
    donated = llvm.donated
    for n in range(3):
        cache[:, n:n + 1, :] = ma.array(update * (n + 1))
        expected[:, n:n + 1, :] = update * (n + 1)
        ma.eval(cache)
        np.testing.assert_array_equal(np.array(cache), expected)
    assert llvm.donated - donated == 3
    old = cache[:, :2, :]  # a view of the buffer the next update would write into
    ma.eval(old)
    seen = np.array(old).copy()
    cache[:, 1:2, :] = ma.array(update * 7)
    expected[:, 1:2, :] = update * 7
    ma.eval(cache)
    np.testing.assert_array_equal(np.array(old), seen)
    np.testing.assert_array_equal(np.array(cache), expected)
    assert llvm.donated - donated == 3
