"""``mx.compile``: trace a function once per input signature and replay the recorded graph.

The first call with a given signature (the tree structure and constants of the arguments, and the
shape and dtype of every array; only the number of dimensions when ``shapeless``) calls the function
on placeholder inputs. The graph it records between the placeholders and the outputs becomes a
template: a list of (primitive, params, shape, dtype, stream) steps. Every call, the first included,
re-records the template's steps on the real inputs, so the result is the same graph the uncompiled
function would build (and evaluates identically), while Python side effects of the function happen
only while tracing. ``inputs``/``outputs`` name captured state (e.g. ``mx.random.state``, a model's
parameters): its arrays are extra inputs, and its final values extra outputs written back after
every call.

With ``shapeless=True`` a replay on new shapes re-infers each step's shape (``shapeless_shape``).

From the second call on (the first traces and runs the graph as usual), where the executor runs
*programs* (the LLVM executor: ``backend.llvm_program``) and no transformation is tracing, a call records
no graph: one ``compiled_program`` node reads the call's inputs and one ``compiled_output`` node per
result reads it. The executor runs the whole call when it meets the program node, realizing the output
nodes with it. An executor without programs expands such nodes back into the graph first
(``expand_programs``).
"""
from __future__ import annotations

import functools
import itertools
import struct
import sys
import threading
import weakref

import numpy as np

from . import dtypes as _dt
from .array import array, make_node, make_realized, note_inputs
from .device import count_buffer, current_stream
from .registry import Primitive, api, register
from .graph import (_in_transform, _transforming, array_leaves, bind_program, eval_arrays, run_bound,
                    run_program_now, tracing)
from .vmap import TRACE_INPUT, trace_input, placeholder_slot, in_tracing
from .ops._base import broadcast_shapes

_enabled = [True]

_ARRAY, _LIST, _TUPLE, _DICT, _NONE = "a", "l", "t", "d", "n"


@api()
def disable_compile() -> None:
    """Make ``mx.compile`` functions run uncompiled (MLX ``mlx.core.disable_compile``)."""
    _enabled[0] = False


@api()
def enable_compile() -> None:
    """Undo ``disable_compile`` (MLX ``mlx.core.enable_compile``)."""
    _enabled[0] = True


def _signature(tree, arrays: list, key: list) -> None:
    """Append the arrays of ``tree`` to ``arrays`` and its structure and constants to ``key``."""
    if isinstance(tree, array):
        arrays.append(tree)
        key.append(_ARRAY)
    elif isinstance(tree, (list, tuple)):
        key.append((_LIST if isinstance(tree, list) else _TUPLE, len(tree)))
        for x in tree:
            if type(x) is array:  # the common leaf, without a call (a decode step has a few hundred)
                arrays.append(x)
                key.append(_ARRAY)
            else:
                _signature(x, arrays, key)
    elif isinstance(tree, dict):
        key.append((_DICT, len(tree)))
        for k, v in tree.items():
            key.append(k)
            _signature(v, arrays, key)
    elif tree is None:
        key.append(_NONE)
    elif isinstance(tree, (bool, int)):
        key.append(("i", int(tree)))
    elif isinstance(tree, float):
        key.append(("f", struct.pack("d", tree)))
    elif isinstance(tree, str):
        key.append(("s", tree))
    else:
        raise ValueError("[compile] Function arguments must be trees of arrays or constants (floats, "
                         f"ints, strings, or None), but received type {_type_name(tree)}.")


def _type_name(obj) -> str:
    t = type(obj)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _state_arrays(tree) -> list:
    """The arrays of captured state (non-array leaves are ignored)."""
    return array_leaves(tree)


def _fill_state(tree, values) -> None:
    """Write ``values`` (an iterator) over the array leaves of captured state, in place."""
    def walk(t):
        if isinstance(t, list):
            for i, x in enumerate(t):
                if isinstance(x, array):
                    t[i] = next(values)
                else:
                    walk(x)
        elif isinstance(t, tuple):
            for x in t:
                if isinstance(x, array):
                    raise ValueError("[compile] Captured state in a tuple cannot be updated.")
                walk(x)
        elif isinstance(t, dict) or (hasattr(t, "items") and callable(t.items)):
            for k, x in list(t.items()):
                if isinstance(x, array):
                    t[k] = next(values)
                else:
                    walk(x)

    walk(tree)


def _replace_state(tree, old_to_new: dict) -> None:
    """Put back the original arrays where placeholders still sit in captured state (an argument
    updated in place is the same object but no longer a placeholder)."""
    def walk(t):
        if isinstance(t, list):
            for i, x in enumerate(t):
                if isinstance(x, array):
                    if id(x) in old_to_new and x._prim is TRACE_INPUT:
                        t[i] = old_to_new[id(x)]
                else:
                    walk(x)
        elif isinstance(t, tuple):
            for x in t:
                walk(x)
        elif isinstance(t, dict) or (hasattr(t, "items") and callable(t.items)):
            for k, x in list(t.items()):
                if isinstance(x, array):
                    if id(x) in old_to_new and x._prim is TRACE_INPUT:
                        t[k] = old_to_new[id(x)]
                else:
                    walk(x)

    walk(tree)


def _output_structure(tree, arrays: list):
    """A picklable-free description of ``tree`` with its arrays replaced by slots."""
    if isinstance(tree, array):
        arrays.append(tree)
        return _Slot(len(arrays) - 1)
    if isinstance(tree, list):
        return [_output_structure(x, arrays) for x in tree]
    if isinstance(tree, tuple):
        items = [_output_structure(x, arrays) for x in tree]
        if type(tree) is tuple:
            return tuple(items)
        return _Rebuild(type(tree), items)
    if isinstance(tree, dict):
        return {k: _output_structure(v, arrays) for k, v in tree.items()}
    return tree


class _Slot:
    __slots__ = ("i",)

    def __init__(self, i):
        self.i = i


class _Rebuild:
    __slots__ = ("cls", "items")

    def __init__(self, cls, items):
        self.cls, self.items = cls, items


def _fill_structure(s, outs):
    if isinstance(s, _Slot):
        return outs[s.i]
    if isinstance(s, list):
        return [_fill_structure(x, outs) for x in s]
    if isinstance(s, tuple):
        return tuple(_fill_structure(x, outs) for x in s)
    if isinstance(s, _Rebuild):
        items = [_fill_structure(x, outs) for x in s.items]
        return s.cls(*items) if hasattr(s.cls, "_fields") else s.cls(items)
    if isinstance(s, dict):
        return {k: _fill_structure(v, outs) for k, v in s.items()}
    return s


class _Tape:
    """A traced graph: steps in dependency order, each reading placeholders, constants or earlier
    steps; outputs name steps, inputs or constants. ``calls`` counts the calls replayed; ``program``
    is the call's program state (``_Program``), None before the first program call, False where
    programs are not used."""

    __slots__ = ("steps", "outputs", "structure", "num_outputs", "in_shapes", "calls", "program")

    def __init__(self, steps, outputs, structure, num_outputs, in_shapes):
        self.steps, self.outputs, self.structure = steps, outputs, structure
        self.num_outputs, self.in_shapes = num_outputs, in_shapes
        self.calls = 0
        self.program = None

    def replay(self, inputs: list, shapeless: bool) -> list:
        return self.record(inputs, shapeless)[0]

    def record(self, inputs: list, shapeless: bool) -> tuple:
        """(the outputs, the node of every step) recorded on ``inputs``."""
        values: list = []
        reinfer = shapeless and any(x._shape != s for x, s in zip(inputs, self.in_shapes))
        for prim, refs, params, shape, dtype, stream, traced_in in self.steps:
            # _value inlined: this loop records every node of a compiled call (an LLM decode step).
            ins = tuple([values[v] if k == 0 else inputs[v] if k == 1 else v for k, v in refs])
            if reinfer:
                shape, params = shapeless_shape(prim, ins, params, shape, traced_in)
            values.append(make_node(prim, ins, params, shape, dtype, stream))
        return [_value(r, inputs, values) for r in self.outputs], values


# --- programs ---------------------------------------------------------------------------------------

def _program_ref(params, *inputs):
    raise RuntimeError("[compile] A compiled program node reached an executor without programs; it "
                       "should have been expanded (expand_programs).")


PROGRAM = register(Primitive(
    "compiled_program", "program", _program_ref, compute=False,
    doc="One call of a compiled function, run whole by an executor that runs programs; its results "
        "are its ``compiled_output`` nodes.",
    extra={"cases": lambda rng, dtype: []}))
PROGRAM_OUTPUT = register(Primitive(
    "compiled_output", "program", _program_ref, compute=False,
    doc="A result of a ``compiled_program`` node, realized when the program runs.",
    extra={"cases": lambda rng, dtype: []}))

# id(program node) -> (weak reference to it, its tape's program state, {tape step index: weak reference
# to its output node}): what the executor realizes when it runs the node (the state lives as long as a
# node of its is pending). An entry goes when its node is run or dies.
PENDING: dict = {}
_EMPTY_SHAPE = (0,)
_NUMBERS = itertools.count()


class _Program:
    """A tape's program state: the params its nodes share (so the graphs of all calls have one
    structure) and the executor's programs, by input layout. The params hold a number, not the
    state: caches of params (``lower.params_token``) must not keep a compiled function alive."""

    __slots__ = ("tape", "params", "output_params", "programs", "__weakref__")

    def __init__(self, tape: _Tape):
        self.tape = tape
        self.params = {"program": next(_NUMBERS)}
        self.output_params: dict = {}
        self.programs: dict = {}  # the executor's: input strides -> its program or False

    def __repr__(self):
        return f"<compiled program of {len(self.tape.steps)} steps>"


def _programs_here() -> bool:
    from ..backend import executor_for

    return getattr(executor_for(None), "runs_programs", False)


def _binds_tapes() -> bool:
    from ..backend import executor_for

    return getattr(executor_for(None), "binds_tapes", False)


def _call_outputs(tape: _Tape, inputs: list, output) -> tuple:
    """(the flat outputs of one call, {tape step index: its array}): one array per step the call
    returns (``output(step index)``), and the inputs and constants it returns as they are."""
    outs: list = []
    made: dict = {}
    for kind, v in tape.outputs:
        if kind == 0:
            o = made.get(v)
            if o is None:
                o = made[v] = output(v)
            outs.append(o)
        else:
            outs.append(inputs[v] if kind == 1 else v)
    return outs, made


def _program_call(tape: _Tape, inputs: list) -> list:
    """The outputs of one call as program nodes (see the module's docstring)."""
    state = tape.program
    if state is None:
        state = tape.program = _Program(tape)
    stream = tape.steps[-1][5]
    node = make_node(PROGRAM, tuple(inputs), state.params, _EMPTY_SHAPE, _dt.uint8, stream)

    def output(v):
        step = tape.steps[v]
        params = state.output_params.get(v)
        if params is None:
            params = state.output_params[v] = {"index": v}
        return make_node(PROGRAM_OUTPUT, (node,), params, step[3], step[4], step[5])

    outs, made = _call_outputs(tape, inputs, output)
    key = id(node)
    PENDING[key] = (weakref.ref(node, lambda _, key=key: PENDING.pop(key, None)), state,
                    {v: weakref.ref(o) for v, o in made.items()})
    return outs


def repoint_output(node, snapshot) -> None:
    """``node``, an unrealized output of a program node, is being overwritten in place (``a[i] = v``):
    its program realizes ``snapshot``, the node's old value, instead."""
    entry = PENDING.get(id(node._inputs[0]))
    if entry is not None:
        outs = entry[2]
        for v, ref in outs.items():
            if ref() is node:
                outs[v] = weakref.ref(snapshot)


def program_outputs(node) -> tuple:
    """(the tape's program state, {tape step index: output node still alive and unrealized}) of
    program node ``node``, which stops being pending."""
    entry = PENDING.pop(id(node))
    found = {}
    for v, ref in entry[2].items():
        o = ref()
        if o is not None and o._data is None:
            found[v] = o
    return entry[1], found


_DONE = np.empty(0, np.uint8)


def finish_program(node) -> None:
    """Mark program node ``node`` run: its outputs hold the results."""
    node._data = _DONE
    node._inputs = ()
    node._params = None


def expand_programs(order: list) -> bool:
    """Put the recorded graph back in place of every unrealized program node of ``order`` (for an
    executor without programs): each output node becomes its step's node. True when one was found."""
    found = False
    for node in order:
        if node._prim is not PROGRAM or node._data is not None:
            continue
        found = True
        state, outs = program_outputs(node)
        _, values = state.tape.record(list(node._inputs), False)
        for v, o in outs.items():
            step = values[v]
            o._prim, o._inputs, o._params = step._prim, step._inputs, step._params
            note_inputs(o)
        finish_program(node)
    return found


def _value(ref, inputs, values):
    kind, v = ref
    if kind == 0:
        return values[v]
    if kind == 1:
        return inputs[v]
    return v


def _trace(fun, args, kwargs, inputs, captured_inputs, captured_outputs, num_args, num_kwargs,
           shapeless: bool = False):
    token = object()
    placeholders = [trace_input(x._shape, x._dtype, i, token) for i, x in enumerate(inputs)]
    it = iter(placeholders)
    from .vmap import rebuild

    t_args = rebuild(args, it)
    t_kwargs = rebuild(kwargs, it)
    state_ph = placeholders[num_args + num_kwargs:]
    if captured_inputs is not None:
        _fill_state(captured_inputs, iter(state_ph))
    try:
        with tracing(allow_eval=False, shapeless=shapeless):
            result = fun(*t_args, **t_kwargs)
        out_arrays: list = []
        structure = _output_structure(result, out_arrays)
        num_outputs = len(out_arrays)
        if captured_outputs is not None:  # read before the placeholders are put back
            out_arrays.extend(_state_arrays(captured_outputs))
    finally:
        if captured_inputs is not None:
            _replace_state(captured_inputs, {id(p): x for p, x in
                                             zip(state_ph, inputs[num_args + num_kwargs:])})
    tape = _record_tape(out_arrays, token, inputs, structure, num_outputs)
    if not _transforming.no_eval:
        # The trace's constants are the same every call: computed once here, every replay reads
        # them as buffers, so the graphs of all calls have one structure (an executor that records
        # plans replays from the first call on).
        eval_arrays(_lazy_constants(tape))
    return tape


def _lazy_constants(tape: _Tape) -> list:
    """The unevaluated constants the tape's steps and outputs read."""
    refs = [r for step in tape.steps for r in step[1]] + list(tape.outputs)
    found = {id(v): v for kind, v in refs if kind == 2 and isinstance(v, array) and v._data is None}
    return list(found.values())


def _record_tape(outputs, token, inputs, structure, num_outputs) -> _Tape:
    originals = {id(x) for x in inputs}
    index: dict = {}  # id(node) -> ref
    keep = []
    steps = []
    seen: dict = {}

    for root in outputs:
        stack = [(root, False)]
        while stack:
            node, ready = stack.pop()
            key = id(node)
            if key in index:
                continue
            if key in originals:
                raise ValueError("[compile] Attempting to compile a function with uncaptured inputs "
                                 "is not allowed.")
            slot = placeholder_slot(node, token)
            if slot is not None:
                index[key] = (1, slot)
                keep.append(node)
                continue
            if node._data is not None or not node._inputs:
                index[key] = (2, node)
                continue
            if not ready:
                stack.append((node, True))
                stack.extend((x, False) for x in node._inputs if id(x) not in index)
                continue
            refs = tuple(index[id(x)] for x in node._inputs)
            keep.append(node)
            if all(r[0] == 2 for r in refs):  # no placeholder behind it: a constant of the trace
                index[key] = (2, node)
                continue
            # Identical steps on identical inputs are recorded once (common subexpressions).
            signature = (node._prim.name, tuple(r if r[0] != 2 else (2, id(r[1])) for r in refs),
                         repr(node._params), node._shape, node._dtype, node._stream)
            if signature in seen:
                index[key] = seen[signature]
                continue
            index[key] = seen[signature] = (0, len(steps))
            steps.append((node._prim, refs, node._params, node._shape, node._dtype, node._stream,
                          tuple(x._shape for x in node._inputs)))
    out_refs = [index[id(o)] for o in outputs]
    return _Tape(steps, out_refs, structure, num_outputs, tuple(x._shape for x in inputs))


def _array_count(tree) -> int:
    """How many arrays ``_signature`` finds in ``tree``."""
    found: list = []
    _signature(tree, found, [])
    return len(found)


def _container_refs(tree, held: dict, seen: set) -> None:
    """Add to ``held`` (array id -> count) the references that the lists, tuples and dicts of
    ``tree`` hold to arrays, each container counted once however often it appears."""
    if isinstance(tree, array) or id(tree) in seen:
        return
    if isinstance(tree, (list, tuple)):
        items = tree
    elif isinstance(tree, dict):
        items = tree.values()
    else:
        return
    seen.add(id(tree))
    for x in items:
        if isinstance(x, array):
            held[id(x)] = held.get(id(x), 0) + 1
        else:
            _container_refs(x, held, seen)


class _Compiled:
    """The callable ``mx.compile`` returns."""

    def __init__(self, fun, inputs, outputs, shapeless, program_first: bool = False):
        self._fun = fun
        self._captured_inputs = inputs
        self._captured_outputs = outputs
        self._shapeless = bool(shapeless)
        # a first call already runs as a program (``compile_for_replays``), not as a graph first
        self._program_first = program_first
        self._cache: dict = {}
        self._last_now = None  # (key, tape) of the last ``now`` or ``bind``
        self._lock = threading.RLock()
        functools.update_wrapper(self, fun)

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        return functools.partial(self, obj)

    def _key(self, args: tuple, kwargs: dict) -> tuple:
        """(inputs, cache key, number of array arguments, number of array keyword arguments) of a
        call."""
        inputs: list = []
        key: list = []
        _signature(args, inputs, key)
        num_args = len(inputs)
        _signature(kwargs, inputs, key)
        num_kwargs = len(inputs) - num_args
        if self._captured_inputs is not None:
            inputs.extend(_state_arrays(self._captured_inputs))
        if self._shapeless:
            key.extend((x.ndim, x._dtype) for x in inputs)
        else:
            key.extend((x._shape, x._dtype) for x in inputs)
        # a trace records its steps on the default stream, so one traced in another thread or under
        # another stream (or device) is not replayed here (MLX keys its cache the same way)
        key.append(current_stream())
        return inputs, tuple(key), num_args, num_kwargs

    def _free(self, args: tuple, inputs: list, tape) -> dict:
        """id -> uses of the inputs whose buffers a call may write into: a free input is held by
        ``inputs`` (once per use), by the containers inside ``args``, and by nothing else. (An array
        passed bare is held by ``args`` and the caller's frame too, so it is never lent.) An input
        the call returns as it is never is."""
        uses: dict = {}
        for x in inputs:
            uses[id(x)] = uses.get(id(x), 0) + 1
        returned = {id(inputs[v]) for kind, v in tape.outputs if kind == 1}
        held: dict = {}
        seen: set = set()
        for item in args:
            _container_refs(item, held, seen)
        free = {}
        for x in inputs:
            k = uses[id(x)]
            if x._data is not None and sys.getrefcount(x) - 2 == k + held.get(id(x), 0) \
                    and id(x) not in returned:
                free[id(x)] = k
        x = item = None
        return free

    def _with_program(self, args: tuple, tape_only: bool = False):
        """(inputs, tape) of a call on ``args`` (no keyword arguments) whose tape has programs from the
        executor, for ``now`` and ``bind``; None when there are none yet, or the call would not be
        compiled (compile disabled, a transformation tracing, captured state). ``tape_only``: a
        traced tape serves without programs (for an executor that binds tapes, ``bind``)."""
        if not _enabled[0] or in_tracing() or _in_transform() or self._captured_inputs is not None \
                or self._captured_outputs is not None:
            return None
        inputs, key, _, _ = self._key(args, {})
        last = self._last_now
        if last is not None and last[0] == key:  # a decode step's key: compared, not hashed again
            tape = last[1]
        else:
            tape = self._cache.get(key)
            self._last_now = None if tape is None else (key, tape)
        if tape_only and tape is not None and tape.steps:
            if tape.program is None:
                tape.program = _Program(tape)
            return inputs, tape
        state = None if tape is None else tape.program
        if not state or not state.programs:
            return None
        return inputs, tape

    def now(self, *args):
        """The call's result computed at once by the executor's program, realized: where the
        executor runs programs directly (``run_call_now``), this signature's program exists for the
        inputs' layouts, and every input is realized. Else None, and nothing was run.

        The result is the one ``__call__`` and an eval would give, less the graph between them: an
        LLM's decode step has a few hundred arrays in and out (its KV cache), and building, sorting
        and realizing their nodes costs a large share of the step's host time. As in an eval, an
        input that nothing but ``args``'s own containers holds (a list of caches the caller has let
        go of) may lend its buffer to an output."""
        found = self._with_program(args)
        if found is None:
            return None
        inputs, tape = found
        state = tape.program
        free = self._free(args, inputs, tape)
        results = run_program_now(state, inputs, free)
        if results is None:
            return None
        tape.calls += 1
        # An output written into a lent input's buffer is that input's array: nothing else holds
        # it, so it serves as the new array (and a decode step makes no new array per cache).
        lent = {id(x._data): x for x in inputs if id(x) in free}

        def output(v):
            buf, counted = results[v]
            step = tape.steps[v]
            o = lent.pop(id(buf), None) if counted else None
            if o is None or o._data is not buf or o._shape != step[3] or o._dtype is not step[4] \
                    or o._stream is not step[5]:
                if not counted:
                    count_buffer(buf)
                o = make_realized(buf, step[4], step[5])
            return o

        outs = _call_outputs(tape, inputs, output)[0]
        return _fill_structure(tape.structure, outs[:tape.num_outputs])

    def bind(self, *args):
        """This call's program bound to its state, for calls that update the same state in place
        one after the other (an LLM's decode steps and their KV cache), or None.

        ``args`` is a call as ``now`` takes it: its arrays inside containers are the *state*, every
        one free (nothing but the containers holds it) and written in place by the program into the
        result that updates it; its bare arrays are given anew on each call of the returned
        ``BoundCall``. Nothing runs here. From now on the ``BoundCall`` holds the state. An executor
        that binds tapes (``binds_tapes``: the GPU executors, ``backend.gpu_bind``) binds the traced
        call itself, with no program."""
        found = self._with_program(args, tape_only=_binds_tapes())
        if found is None:
            return None
        inputs, tape = found
        state = tape.program
        tops: list = []  # indices of the bare arrays among the inputs
        n = 0
        for item in args:
            if isinstance(item, array):
                tops.append(n)
                n += 1
            else:
                n += _array_count(item)
        item = None
        free = self._free(args, inputs, tape)
        bound = bind_program(state, inputs, free, tops)
        if bound is None:
            return None
        return BoundCall(tape, inputs, tops, *bound)

    def __call__(self, *args, **kwargs):
        if not _enabled[0] or in_tracing():
            return self._fun(*args, **kwargs)
        inputs, key, num_args, num_kwargs = self._key(args, kwargs)
        with self._lock:
            tape = self._cache.get(key)
            if tape is None:
                tape = _trace(self._fun, args, kwargs, inputs, self._captured_inputs,
                              self._captured_outputs, num_args, num_kwargs, self._shapeless)
                self._cache[key] = tape
        outs = None
        if (tape.calls or self._program_first) and tape.program is not False and tape.steps \
                and not _in_transform() \
                and all(x._shape == s for x, s in zip(inputs, tape.in_shapes)):
            if _programs_here():
                outs = _program_call(tape, inputs)
        tape.calls += 1
        if outs is None:
            outs = tape.replay(inputs, self._shapeless)
        if self._captured_outputs is not None:
            _fill_state(self._captured_outputs, iter(outs[tape.num_outputs:]))
        return _fill_structure(tape.structure, outs[:tape.num_outputs])


class BoundCall:
    """A compiled call bound to its state (``_Compiled.bind``). Each call takes the bare arrays of the
    bound call anew (same shapes, dtypes and layouts), runs the program, which writes the state in
    place, and returns the results that are not state, in the order of the function's outputs; it
    returns None, running nothing, when anything else holds a state array now or the arrays given
    do not fit. ``release`` ends the binding and gives the state back."""

    def __init__(self, tape, inputs: list, tops: list, ex, bound):
        self._tape, self._ex, self._bound = tape, ex, bound
        self._given = [(inputs[i]._shape, inputs[i]._dtype) for i in tops]
        self._layout = tuple(inputs[i]._data.strides for i in tops)
        state_index = [i for i in range(len(inputs)) if i not in tops]
        self._state = [inputs[i] for i in state_index]  # the state's only references from now on
        state_of = {v: state_index.index(i) for i, v in bound.state_results.items()}
        self._plan = []  # per output of the function: ("state", j), ("fresh", step), ("given", k), ("const", c)
        for kind, v in tape.outputs:
            if kind == 0:
                self._plan.append(("state", state_of[v]) if v in state_of else ("fresh", v))
            else:  # a state input is never returned as it is (it would not be free)
                self._plan.append(("given", tops.index(v)) if kind == 1 else ("const", v))
        self._last: list | None = None

    def __call__(self, *given):
        state = self._state
        if state is None or len(given) != len(self._given) \
                or any(x._shape != s or x._dtype is not d for x, (s, d) in zip(given, self._given)):
            return None
        # held by ``self._state`` and getrefcount's argument, by nothing else
        if any(n != 2 for n in map(sys.getrefcount, state)):
            return None
        results = run_bound(self._ex, self._bound, given, self._layout)
        if results is None:
            return None
        steps = self._tape.steps
        outs = []
        made: dict = {}
        for kind, v in self._plan:
            if kind == "fresh":
                o = made.get(v)
                if o is None:
                    buf = results[v]
                    count_buffer(buf)
                    o = made[v] = make_realized(buf, steps[v][4], steps[v][5])
                outs.append(o)
            elif kind == "given":
                outs.append(given[v])
            elif kind == "const":
                outs.append(v)
        self._tape.calls += 1
        self._last = outs
        return outs

    def release(self):
        """End the binding: the function's whole result as the last call made it (None for the
        results that are not state when no call ran), its state in place."""
        state, self._state = self._state, None
        if state is None:
            return None
        last = iter(self._last or [None] * sum(1 for kind, _ in self._plan if kind != "state"))
        outs = [state[v] if kind == "state" else next(last) for kind, v in self._plan]
        return _fill_structure(self._tape.structure, outs[:self._tape.num_outputs])


@api()
def compile(fun, inputs=None, outputs=None, shapeless: bool = False):
    """Compile ``fun``: trace it once per input signature and replay the graph (MLX
    ``mlx.core.compile``)."""
    return _Compiled(fun, inputs, outputs, shapeless)


def compile_for_replays(fun):
    """``compile(fun)`` for a function called many times on inputs of one layout (a decode step):
    where the executor runs programs, its first call is already captured into one, rather than
    evaluated as a graph and captured on the second call, which evaluates the graph once more."""
    return _Compiled(fun, None, None, False, program_first=True)


# --- shapeless replay: each step's shape from its new inputs -----------------------------------------

def shapeless_shape(prim, ins, params, shape, traced_in):
    """(shape, params) of a traced step replayed on inputs of new shapes.

    A rule is ``rule(inputs, params, traced_shape, traced_input_shapes) -> (shape, params)``;
    steps whose inputs kept their traced shapes keep their traced shape and params.
    """
    if all(x._shape == s for x, s in zip(ins, traced_in)):
        return shape, params
    rule = prim.extra.get("shapeless") or _SHAPELESS.get(prim.name) or _SHAPELESS_KIND.get(prim.kind)
    if rule is None:
        return shape, params
    return rule(ins, params, shape, traced_in)


def _same_as_input(ins, params, shape, traced_in):
    return ins[0]._shape, params


def _broadcasting(ins, params, shape, traced_in):
    return broadcast_shapes(*[x._shape for x in ins]), params


def _reduced(ins, params, shape, traced_in):
    s = ins[0]._shape
    axes = params["axes"]
    if params["keepdims"]:
        return tuple(1 if i in axes else n for i, n in enumerate(s)), params
    return tuple(n for i, n in enumerate(s) if i not in axes), params


def _matmul(ins, params, shape, traced_in):
    a, b = ins[-2]._shape, ins[-1]._shape
    out = broadcast_shapes(a[:-2], b[:-2]) + (a[-2], b[-1])
    if len(ins) == 3:
        out = broadcast_shapes(out, ins[0]._shape)
    return out, params


def _transpose(ins, params, shape, traced_in):
    s = ins[0]._shape
    return tuple(s[a] for a in params["axes"]), params


def _unit_axes_map(src, dst):
    """For a reshape that only inserts or removes unit axes: the source axis of each destination
    axis (None for an inserted one), else None."""
    out = []
    i = 0
    for n in dst:
        if i < len(src) and src[i] == n:
            out.append(i)
            i += 1
        elif n == 1:
            out.append(None)
        else:
            while i < len(src) and src[i] == 1:
                i += 1
            if i < len(src) and src[i] == n:
                out.append(i)
                i += 1
            else:
                return None
    if any(n != 1 for n in src[i:]):
        return None
    return out


def _reshape(ins, params, shape, traced_in):
    new_in = ins[0]._shape
    if "unit_axes" in params:
        new = list(new_in)
        for ax in params["unit_axes"]:
            new.insert(ax, 1)
        new = tuple(new)
        return new, dict(params, shape=new)
    mapping = _unit_axes_map(traced_in[0], shape)
    if mapping is not None and len(new_in) == len(traced_in[0]):
        kept = {m for m in mapping if m is not None}
        if all(new_in[i] == 1 for i in range(len(new_in)) if i not in kept):
            new = tuple(1 if m is None else new_in[m] for m in mapping)
            return new, dict(params, shape=new)
    size = 1
    for n in ins[0]._shape:
        size *= n
    target = 1
    for n in shape:
        target *= n
    if size == target:
        return shape, params
    infer = params.get("infer")
    if infer is not None:
        rest = 1
        for i, n in enumerate(shape):
            if i != infer:
                rest *= n
        if rest and size % rest == 0:
            new = shape[:infer] + (size // rest,) + shape[infer + 1:]
            return new, dict(params, shape=new)
        new = shape[:infer] + ((size // rest) if rest else 0,) + shape[infer + 1:]
        shape = new
    fmt = "(" + ",".join(str(n) for n in shape) + ")"
    raise ValueError(f"[reshape] Cannot reshape array of size {size} into shape {fmt}.")


def _broadcast_to(ins, params, shape, traced_in):
    s = ins[0]._shape
    if broadcast_shapes(s, shape) != shape:
        raise ValueError(f"[broadcast_to] Cannot broadcast array of shape {s} to {shape}.")
    return shape, params


def _strided_slice(ins, params, shape, traced_in):
    """A slice that took a whole axis when traced takes the whole new axis (MLX's slice of a whole axis
    is the array itself, so ``x[..., None]`` is an expand_dims there). A partial slice or an index of an
    axis whose size changed cannot follow it: MLX's Slice cannot infer its shape either."""
    new_in, old_in = ins[0]._shape, traced_in[0]
    index, new, ax = [], [], 0
    for e in params["index"]:
        if e is None:
            new.append(1)
        else:
            n, old = new_in[ax], old_in[ax]
            if n != old:
                if isinstance(e, slice) and e.step > 0 and e.start == 0 and e.stop >= old:
                    e = slice(0, n, e.step)
                elif isinstance(e, slice) and e.step < 0 and e.start >= old - 1 and e.stop is None:
                    e = slice(n - 1, None, e.step)
                else:
                    raise ValueError("[Primitive::output_shapes] Slice cannot infer output shapes.")
            if isinstance(e, slice):
                new.append(len(range(n)[e]))
            ax += 1
        index.append(e)
    return tuple(new) + new_in[ax:], dict(params, index=tuple(index))


def _gather(ins, params, shape, traced_in):
    from .ops.indexing import _result_shape

    return _result_shape(params["index"], ins[1:]), params


def _full(ins, params, shape, traced_in):
    if len(ins) < 2:  # a fill of a fixed shape
        return shape, params
    new = broadcast_shapes(ins[1]._shape, ins[0]._shape)  # full_like: the shape of the array it is like
    return new, dict(params, shape=new)


def _gather_mm(ins, params, shape, traced_in):
    a, b, lhs, rhs = (x._shape for x in ins)
    return broadcast_shapes(lhs, rhs) + (a[-2], b[-1]), params


def _gather_qmm(ins, params, shape, traced_in):
    x = ins[0]._shape
    new = broadcast_shapes(ins[-2]._shape, ins[-1]._shape) + (x[-2] if len(x) > 1 else 1, params["n"])
    return new, dict(params, shape=new)


def _take_along_axis(ins, params, shape, traced_in):
    a, idx = ins[0]._shape, ins[1]._shape
    ax = params["axis"]
    new = broadcast_shapes(a[:ax] + (idx[ax],) + a[ax + 1:], idx)
    return new, dict(params, shape=new)


_SHAPELESS_KIND = {"unary": _same_as_input, "binary": _broadcasting, "ternary": _broadcasting,
                   "reduce": _reduced, "scan": _same_as_input,
                   "index": _same_as_input}  # updates (scatter, slice_update) keep their target's shape
_SHAPELESS = {"matmul": _matmul, "addmm": _matmul, "transpose": _transpose, "reshape": _reshape,
              "broadcast_to": _broadcast_to, "strided_slice": _strided_slice, "sort": _same_as_input,
              "argsort": _same_as_input, "contiguous": _same_as_input, "copy": _same_as_input, "gather": _gather,
              "take_along_axis": _take_along_axis, "full": _full, "gather_mm": _gather_mm,
              "gather_qmm": _gather_qmm}
