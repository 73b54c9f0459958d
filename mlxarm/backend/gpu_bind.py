"""A compiled call bound to its state on a GPU executor (``GPUExecutor.bind_call``): replayed as the
launches it made, with no graph.

An LLM's decode step is a few hundred launches. Replayed as a graph (the compiled call's nodes, their
sort and key, then per node the checks of a recorded step and its launch), it costs the host several
times what the GPU spends on it. Bound to its state (the KV cache, which every call writes in place),
a call runs so:

- The first calls are evaluated as graphs while the runtime taps what they do (``tap``: uploads,
  launches, submits); rope and the cache write read the position from its buffer, so that no launch
  changes with it. Each tap becomes a replay (``_Replay``) where it can: one submission,
  at the end; host steps (numpy steps, such as a quantized embedding's gather) reading only the given
  arrays, constants and each other; every state written in place; every fresh result in a buffer of
  its own.
- Where the replays of two consecutive calls agree, launch for launch, but for the buffers each made,
  the later one is the call from then on, and its buffers stay its own (withheld from the runtime's
  pool). A position baked into a launch, or any other choice made on the host from the given arrays,
  makes them differ: the call then stays a graph (``BoundCall`` gets None and lets the state go).
- A replayed call runs the host steps on the given arrays, writes the given arrays and the host steps'
  results into their buffers, submits the launches (Vulkan: the recorded sequence again; OpenCL: the
  launches with their arguments), and reads the fresh results back.
"""
from __future__ import annotations

import weakref

import numpy as np

from ..codegen import lower
from ..core.array import make_node, make_realized
from .gpu_common import root_of

_CAPTURES = 4  # graph calls captured at most before a bound call gives up on replays


def _offset(a: np.ndarray, root: np.ndarray) -> int:
    return a.__array_interface__["data"][0] - root.__array_interface__["data"][0]


class _Capture:
    """What one captured call did besides the runtime's tap: its host steps, and where their inputs
    came from."""

    def __init__(self, given: list, lent: dict, const_roots: set):
        self.failed = None  # why the call cannot be replayed
        self.given = {}  # id(root) -> (given index, root, byte offset of the given array in it)
        for j, x in enumerate(given):
            root = root_of(x)
            if id(root) in self.given or id(root) in const_roots or not x.flags.c_contiguous:
                self.failed = "a given array shares a buffer, or is not contiguous"
            self.given[id(root)] = (j, root, _offset(x, root))
        self.lent = lent  # id(state array) -> references the bound call holds (``GPUExecutor.donates``)
        self.const_roots = const_roots
        self.host = {}  # id(root) -> (host step index, root) of the host steps' results
        self.steps = []  # (prim, params, input sources, shape, dtype, stream, result layout or None)
        self.tap = []  # the runtime's (``tap``)

    def source(self, a: np.ndarray):
        """Where a host step's input ``a`` comes from, or None: (kind, index or the array itself,
        byte offset, shape, strides, numpy dtype)."""
        root = root_of(a)
        if any(s < 0 for s in a.strides):
            return None
        hit = self.given.get(id(root))
        if hit is not None:
            rel = _offset(a, root) - hit[2]
            return None if rel < 0 else ("given", hit[0], rel, a.shape, a.strides, a.dtype)
        hit = self.host.get(id(root))
        if hit is not None:
            return ("host", hit[0], _offset(a, root), a.shape, a.strides, a.dtype)
        if id(root) in self.const_roots:
            return ("const", a, 0, a.shape, a.strides, a.dtype)
        return None

    def before_host_steps(self, nodes: list) -> list:
        return [(n, n._prim, n._params, [(i, i._dtype) for i in n._inputs], n._shape, n._dtype, n._stream)
                for n in nodes]

    def after_host_steps(self, taken: list) -> None:
        for node, prim, params, ins, shape, dtype, stream in taken:
            sources = [(self.source(i._data), d) for i, d in ins]
            if any(s is None for s, _ in sources):
                self.failed = f"host step {prim.name} reads what a kernel wrote"
            out = node._data
            root = root_of(out)
            layout = None
            if id(root) not in self.given and id(root) not in self.host and id(root) not in self.const_roots:
                self.host[id(root)] = (len(self.steps), root)
                layout = (root.nbytes, root.dtype, _offset(out, root), out.shape, out.strides)
            self.steps.append((prim, params, sources, shape, dtype, stream, layout))


class _Replay:
    """A captured call as replayed: host steps, writes, the runtime's launches (``handle``, made when
    the replay is taken: ``adopt``), reads."""

    __slots__ = ("steps", "writes", "launches", "submit", "reads", "state", "handle", "buffers", "own", "key",
                 "__weakref__")

    def adopt(self, rt) -> bool:
        """Take this replay for the call's later calls: its runtime handle made, its buffers withheld
        from the pool; False where the runtime cannot replay it."""
        self.handle = rt.bound_handle(self.submit, self.launches, [w[0] for w in self.writes],
                                      [r[1] for r in self.reads])
        if self.handle is None:
            return False
        rt.withhold(self.buffers)
        return True

    def run(self, ex, given: tuple):
        """Run on ``given`` (realized host arrays in the bound layouts): {tape step: fresh result},
        or None (nothing run) where a host step's result is laid out otherwise than when captured."""
        host = []
        for prim, params, sources, shape, dtype, stream, layout in self.steps:
            ins = []
            for (kind, at, rel, s_shape, s_strides, s_dtype), d in sources:
                if kind == "const":
                    arr = at
                else:
                    base = given[at]._data if kind == "given" else host[at]
                    if base is None or not base.flags.c_contiguous:
                        return None
                    arr = np.ndarray(s_shape, s_dtype, buffer=base.reshape(-1).view(np.uint8), offset=rel,
                                     strides=s_strides)
                ins.append(make_realized(arr, d, stream))
            node = make_node(prim, tuple(ins), params, shape, dtype, stream)
            del ins
            ex.numpy.run([weakref.ref(node)])
            out = node._data
            root = None
            if layout is not None:
                root = root_of(out)
                if (root.nbytes, root.dtype, _offset(out, root), out.shape, out.strides) != layout \
                        or not root.flags.c_contiguous:
                    return None
            host.append(root)
            del node, out
        writes = []
        for buf, kind, at, off in self.writes:
            data = given[at]._data if kind == "given" else host[at]
            if not data.flags.c_contiguous:
                return None
            writes.append((buf, off, data))
        out = {v: np.empty(shape, dtype) for v, _, _, shape, dtype in self.reads}
        ex.rt.run_bound(self.handle, writes, [(buf, off, out[v]) for v, buf, off, _, _ in self.reads])
        for ref, buf in self.state:  # the host copies of the state are stale again
            root = ref()
            if root is not None:
                ex.resident.written(root, buf)
        ex.bound_runs += 1
        return out


def _replay(ex, cap: _Capture, fresh: dict, state_roots: list):
    """The replay of a captured call, or None where it cannot be one."""
    tap = cap.tap
    if cap.failed or not tap or tap[-1][0] != "submit" or sum(e[0] == "submit" for e in tap) != 1:
        return None
    canon: dict = {}  # id(buffer) -> number, in order of first use
    held = []

    def number(buf):
        k = canon.get(id(buf))
        if k is None:
            k = canon[id(buf)] = len(canon)
            held.append(buf)
        return k

    key = [tuple((prim.name, lower.params_token(params) if params is not None else None,
                  tuple((s[0], s[1] if s[0] != "const" else id(s[1]), *s[2:5]) for s, _ in sources), layout)
                 for prim, params, sources, _, _, _, layout in cap.steps)]
    writes, launches = [], []
    for e in tap:
        if e[0] == "upload":  # ("upload", host buffer, device buffer)
            host, buf = e[1], e[2]
            hit = cap.given.get(id(host))
            if hit is not None:
                source = ("given", hit[0], hit[2])
            elif id(host) in cap.host:
                source = ("host", cap.host[id(host)][0], 0)
            elif id(host) in cap.const_roots:
                source = None  # a constant: what it holds now it holds in every call
            else:
                return None  # an upload of anything else (a copy of a view)
            if source is not None:
                writes.append((buf,) + source)
            key.append(("upload", number(buf), source))
        elif e[0] == "launch":  # ("launch", buffers, what else the runtime launched it with)
            launches.append(e)
            key.append(("launch", tuple(number(b) for b in e[1]),
                        tuple(x if isinstance(x, (int, tuple, str)) else id(x) for x in e[2:])))
    reads = []
    for v, node in fresh.items():
        data = node._data
        root = root_of(data)
        if id(root) in cap.given or id(root) in cap.host or id(root) in cap.const_roots \
                or any(root is r for r in state_roots) or not data.flags.c_contiguous:
            return None
        buf = ex.resident.get(root)
        if buf is None:
            return None
        reads.append((v, buf, _offset(data, root), data.shape, data.dtype))
        key.append(("read", v, number(buf), reads[-1][2:]))
    state = []
    for root in state_roots:
        buf = ex.resident.get(root)
        if buf is None:
            return None
        # weakly: a capture writes into a state's buffer only where nothing else holds it
        state.append((weakref.ref(root), buf))
        key.append(("state", number(buf)))
    r = _Replay()
    r.steps, r.writes, r.launches, r.submit, r.reads = tuple(cap.steps), writes, launches, tap[-1], reads
    r.state, r.handle, r.buffers, r.key = state, None, held, tuple(key)
    # what the capture takes from the given arrays and the fresh results (``GPUBound.capture``)
    r.own = list({id(b): b for b in [w[0] for w in writes if w[1] == "given"] + [rd[1] for rd in reads]}.values())
    weakref.finalize(r, _give_back, ex.rt, held, r.own)
    return r


class GPUBound:
    """A compiled call bound to its state on a GPU executor (the module's docstring)."""

    def __init__(self, tape, state: list, state_index: list, tops: list, state_results: dict):
        self.tape = tape
        self.state = [weakref.ref(x) for x in state]  # weakly: ``BoundCall`` holds the state alone
        self.state_index, self.tops = state_index, tops  # where the state and the given arrays go
        self.state_results = state_results  # state input index -> tape step index of its result
        self.const_roots = {id(root_of(c._data)) for step in tape.steps for k, c in step[1]
                            if k == 2 and c._data is not None}
        self.replay = None
        self.last = None  # the replay of the last captured call
        self.captures = 0

    def step(self, ex, given: tuple):
        """One call on ``given``: {tape step index: fresh result}, or None (nothing run, or nothing
        that the caller would not do again)."""
        if self.replay is not None:
            return self.replay.run(ex, given)
        if self.captures >= _CAPTURES:
            return None
        self.captures += 1
        got = self.capture(ex, given)
        if got is None:
            self.captures = _CAPTURES
            return None
        results, replay = got
        if replay is not None and self.last is not None and replay.key == self.last.key \
                and replay.adopt(ex.rt):
            self.replay, self.last = replay, None
        else:
            self.last = replay
        return results

    def capture(self, ex, given: tuple):
        """Evaluate one call as a graph, the runtime tapped: (its fresh results, its replay or None),
        or None where a state was not written in place (the caller runs the call again, which writes
        the same entries)."""
        from ..core.graph import _run

        tape, tops = self.tape, self.tops
        state = [r() for r in self.state]
        if any(x is None or x._data is None for x in state):
            return None
        for x in given:  # the call uploads each given array afresh, into a buffer of its own
            _detach(ex, x, release=True)
        inputs = [None] * (len(state) + len(tops))
        for i, x in zip(self.state_index, state):
            inputs[i] = x
        for i, x in zip(tops, given):
            inputs[i] = x
        lent = {id(x): 1 for x in state}  # ``BoundCall._state``
        # tape step index of each state's result -> the id of the state's host buffer (not the buffer:
        # a reference more would keep the call from writing into it, ``GPUExecutor.donates``)
        state_steps = {self.state_results[i]: id(root_of(x._data)) for i, x in zip(self.state_index, state)}
        del state
        values = tape.record(inputs, False)[1]
        del inputs
        wanted = {v: values[v] for kind, v in tape.outputs if kind == 0}
        del values
        fresh = {v: node for v, node in wanted.items() if v not in state_steps}
        cap = _Capture([x._data for x in given], lent, self.const_roots)
        ex.capture, ex.rt.tap = cap, cap.tap
        try:
            _run(list(wanted.values()), read=list(fresh.values()))
        finally:
            ex.capture = ex.rt.tap = None
        state_roots = [root_of(wanted[v]._data) for v in state_steps]
        if [id(r) for r in state_roots] != list(state_steps.values()):
            return None
        replay = _replay(ex, cap, fresh, state_roots)
        del state_roots
        # copies: ``BoundCall`` counts the buffers it is given, and these were counted when made
        results = {v: node._data.copy() for v, node in fresh.items()}
        for node in fresh.values():
            ex.resident.detach(root_of(node._data), release=replay is None)
        del wanted, fresh, cap
        for x in given:
            _detach(ex, x, release=replay is None)
        return results, replay


def _give_back(rt, buffers: list, own: list) -> None:
    """A replay died: the buffers that arrays left to it while it held them (parked) and the ones it
    took from arrays (``own``: the given arrays' and the fresh results') go back to the runtime's pool
    (a later graph finds them there, and on Vulkan the pipelines bound to them)."""
    rt.withheld.difference_update(id(b) for b in buffers)
    for b in buffers:
        parked = rt.parked.pop(id(b), None)
        if parked is not None:
            rt.release(parked)
    for b in own:
        rt.release(b)


def _detach(ex, x, release: bool) -> None:
    """``x``'s host buffer current and its device copy forgotten (``Resident.detach``)."""
    ex.to_host(x._data)
    ex.resident.detach(root_of(x._data), release)
    ex.located.pop(id(x), None)


def bind(ex, state, inputs: list, free: dict, tops: list):
    """``GPUExecutor.bind_call``: a ``GPUBound`` for the compiled call ``state.tape`` on ``inputs``,
    the ones not at ``tops`` its state; None where the call does not fit (a state input that no
    result updates in place, or one that is not free)."""
    if not state:
        return None
    tape = state.tape
    top_set = set(tops)
    state_index = [i for i in range(len(inputs)) if i not in top_set]
    if len({id(inputs[i]) for i in state_index}) != len(state_index) \
            or any(id(inputs[i]) not in free or inputs[i]._data is None for i in state_index):
        return None
    results: dict = {}
    for kind, v in tape.outputs:
        if kind != 0:
            continue
        prim, refs = tape.steps[v][0], tape.steps[v][1]
        if prim is not None and "in_place" in prim.extra and refs and refs[0][0] == 1 \
                and refs[0][1] in state_index:
            if refs[0][1] in results and results[refs[0][1]] != v:
                return None
            results[refs[0][1]] = v
    if set(results) != set(state_index):
        return None
    return GPUBound(tape, [inputs[i] for i in state_index], state_index, list(tops), results)
