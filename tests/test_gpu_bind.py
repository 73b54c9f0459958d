"""A compiled call bound to its state on the GPU executors (``backend.gpu_bind``): after two calls
evaluated as graphs (captured), each call replays the launches the captures made, with no graph. Each
test compares a bound call with the same calls evaluated as graphs: a compiled step writing caches in
place, reading arrays given anew (which stay intact once the call is done with them) and returning
fresh results; and an LLM's decode step (a quantized embedding gathered on the host, the cache written
at an array position), with the token sampled on the device and outside it."""
import gc

import numpy as np
import pytest

import mlxarm.core as ma
from _backends import skip_reason
from _matrix import on
from _tiny_lm import tiny_llama
from mlxarm.backend import executor, gpu_bind, gpu_common

_bind = gpu_bind.bind

DEVICES = [pytest.param(d, marks=pytest.mark.skipif(bool(skip_reason(d)), reason=f"{d} unavailable: {skip_reason(d)}"))
           for d in ("opencl", "vulkan")]


def _step(tokens, pos, caches):
    caches = [ma.slice_update(c, tokens * (i + 1.0), pos, axes=(1,)) for i, c in enumerate(caches)]
    return (caches[0] * caches[1]).sum(axis=1) + ma.exp(tokens[:, 0] * 0.01), caches


@pytest.mark.parametrize("device", DEVICES)
def test_a_bound_call_replays_its_launches(device):
    """Calls 1 and 2 of the ``BoundCall`` are captured, later ones replayed (``bound_runs``, no graph
    replayed); every result matches numpy's; a given array used again afterwards holds its own values
    (its device copy was the call's, and was let go); the state comes back written (``release``)."""
    ex = executor(device)
    fun = ma.compile(_step)
    rng = np.random.default_rng(0)
    tokens = [rng.standard_normal((2, 1, 4)).astype(np.float32) for _ in range(8)]
    expected = [np.zeros((2, 8, 4), np.float32) for _ in range(2)]

    def run(f):
        return on(device, f)

    caches = run(lambda: [ma.zeros((2, 8, 4)) for _ in range(2)])
    args = (ma.array(tokens[0]), ma.array(0, ma.int32), caches)
    del caches
    out, caches = run(lambda: fun(*args))
    del args
    for i, e in enumerate(expected):
        e[:, 0] = tokens[0][:, 0] * (i + 1)
    args = (ma.array(tokens[1]), ma.array(1, ma.int32), caches)
    del caches
    call = run(lambda: fun.bind(*args))
    assert call is not None
    del args
    given = []
    for p in range(1, 8):
        for i, e in enumerate(expected):
            e[:, p] = tokens[p][:, 0] * (i + 1)
        runs, replays = ex.bound_runs, ex.replays
        given.append(ma.array(tokens[p]))
        (total,) = run(lambda: call(given[-1], ma.array(p, ma.int32)))
        want = (expected[0] * expected[1]).sum(axis=1) + np.exp(tokens[p][:, 0] * 0.01)
        np.testing.assert_allclose(np.array(total), want, rtol=1e-5, atol=1e-6)
        if p >= 3:
            assert ex.bound_runs == runs + 1 and ex.replays == replays, "a call after two captures replays"
    # the arrays given earlier, used again: their own values, not the last call's
    again = run(lambda: [g * 1.0 for g in given])
    for g, t in zip(again, tokens[1:]):
        np.testing.assert_array_equal(np.array(g), t)
    state = call.release()[1]
    for c, e in zip(state, expected):
        np.testing.assert_array_equal(np.array(c), e)
    del call
    gc.collect()
    assert not ex.rt.withheld and not ex.rt.parked, "a call let go gives its buffers back"


@pytest.mark.parametrize("device", DEVICES)
def test_bind_declines_state_not_written_in_place(device, monkeypatch):
    """A state input that no result updates in place (here a new array is computed from it) cannot
    be bound: ``bind`` gives None and the calls stay graphs."""
    fun = ma.compile(lambda x, caches: (x * 2.0, [c + x for c in caches]))
    caches = on(device, lambda: [ma.zeros((4,)) for _ in range(2)])
    args = (ma.array(np.ones(4, np.float32)), caches)
    del caches
    out, caches = on(device, lambda: fun(*args))
    del args
    args = (ma.array(np.ones(4, np.float32)), caches)
    del caches
    with monkeypatch.context() as m:
        asked = []
        m.setattr(gpu_bind, "bind", lambda *a: asked.append(a) or _bind(*a))
        assert on(device, lambda: fun.bind(*args)) is None
    assert asked, "the executor was asked to bind the call"


def _generate(device, model, sampler, bind: bool, monkeypatch):
    from mlxarm.lm.generate import generate_step

    with monkeypatch.context() as m:
        m.setattr(gpu_common.GPUExecutor, "binds_tapes", bind)
        return on(device, lambda: [(t, np.array(lp)) for t, lp in
                                   generate_step(list(range(5, 17)), model, max_tokens=12, sampler=sampler)])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sampling", ["greedy", "forced"])
def test_bound_decode_steps_match_graph_steps(device, sampling, monkeypatch):
    """``generate_step``'s decode steps bound (replayed from the fourth on; in a later generation,
    which binds the step before its first call, from the third) against the same steps as graphs: the
    same tokens and the same log-probabilities, bit for bit (the same kernels run on the same data). ``greedy`` samples in the step (token and log-probabilities come back); ``forced``
    returns the logits and feeds back tokens picked outside (so the gathered rows change each step)."""
    from mlxarm.lm.sample import greedy

    model = tiny_llama()
    ex = executor(device)
    picks = [7, 300, 41, 41, 2, 150, 99, 318, 0, 64, 5, 200]

    def sampler_for():
        if sampling == "greedy":
            return greedy
        it = iter(picks)
        return lambda logprobs: ma.array([next(it)], ma.uint32)

    runs = ex.bound_runs
    bound = _generate(device, model, sampler_for(), True, monkeypatch)
    assert ex.bound_runs - runs >= 12 - 4, "the decode steps after the captures were replayed"
    runs = ex.bound_runs
    graph = _generate(device, model, sampler_for(), False, monkeypatch)
    assert ex.bound_runs == runs
    # a later generation binds the step traced by the first one before its first decode step
    again = _generate(device, model, sampler_for(), True, monkeypatch)
    assert ex.bound_runs - runs >= 12 - 3
    for got in (bound, again):
        assert [t for t, _ in got] == [t for t, _ in graph]
        for (_, a), (_, b) in zip(got, graph):
            np.testing.assert_array_equal(a, b)
    if sampling == "forced":
        assert [t for t, _ in bound] == picks
