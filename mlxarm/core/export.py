"""Function export and import: ``mx.export_function``, ``mx.import_function`` and ``mx.exporter``.

Owns the ``.mlxfn`` file format of mlxarm. A function is traced as ``mx.compile`` traces it
(``compile._trace``) once per input signature; the file holds every trace's steps and the constants
they read, and an imported function replays the matching trace (``compile._Tape``), so its results
are those of calling the original function. Constants are kept unfolded (a step whose inputs are all
constants is stored as a step) so a large constant shared by several traces is written once.

The format is safe to read (no pickle, nothing evaluated)::

    b"MLXARMFN" | version: u32 LE | header length: u64 LE | header: UTF-8 JSON | constants' bytes

The header is ``{"shapeless", "metadata", "constants": [{"dtype", "shape", "offset", "nbytes"}],
"functions": [{"kwarg_keys", "inputs": [[shape, dtype]], "steps", "outputs"}]}``; a step is
``[primitive name, refs, params, shape, dtype, device type, traced input shapes]`` and a ref is
``[0, step]``, ``[1, input]`` or ``[2, constant]``. Params are tagged JSON values (``_encode``).
Reading checks every field and size against the file and raises ``MalformedFileError`` naming the
file and the problem.
"""
from __future__ import annotations

import base64
import json
import os
import struct

import numpy as np

from . import dtypes as dt
from .array import array, make_realized
from .compile import _Rebuild, _Slot, _Tape, _trace
from .device import Device, DeviceType, default_stream
from .gguf import MalformedFileError
from .graph import eval_arrays, tracing
from .registry import PRIMITIVES, api

MAGIC = b"MLXARMFN"
VERSION = 1
_PREAMBLE = struct.Struct("<8sIQ")
_MAX_PARAM_ARRAY = 1 << 16  # elements of a numpy array held in params (index lists, tables)
_DTYPES = {d.name: d for d in dt.ALL}
_NP_DTYPES = {np.dtype(t).str for t in "?bBhHiIlLefdFD"}  # numpy dtypes params may hold
_PROGRAM_NODES = ("compiled_program", "compiled_output")  # never exported: they stand for graphs
_INPUTS_ERROR = (" Inputs can either be a variable number of positional and keyword arrays or a "
                 "single tuple and/or dictionary of arrays.")


def _extract_inputs(args: tuple, kwargs: dict, prefix: str) -> tuple:
    """(positional arrays, keyword arrays) from MLX's accepted call forms, else ValueError."""
    def arrays(seq):
        ok = isinstance(seq, (list, tuple)) and all(isinstance(x, array) for x in seq)
        return list(seq) if ok else None

    def keywords(d):
        ok = isinstance(d, dict) and all(isinstance(k, str) and isinstance(v, array)
                                         for k, v in d.items())
        return dict(d) if ok else None

    pos, kw = None, None
    if not args:
        pos, kw = [], keywords(kwargs)
    elif isinstance(args[0], array):
        pos, kw = arrays(args), keywords(kwargs)
    elif len(args) == 1 and not kwargs:
        pos, kw = arrays(args[0]), {}
        if pos is None:
            pos, kw = [], keywords(args[0])
    elif len(args) == 2 and not kwargs:
        pos, kw = arrays(args[0]), keywords(args[1])
    if pos is None or kw is None:
        raise ValueError(prefix + _INPUTS_ERROR)
    return pos, kw


# --- params as tagged JSON ----------------------------------------------------------------------

def _encode(v):
    """A JSON value for a step's param: plain for None, bools, ints and strings; tagged otherwise."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return {"t": "float", "v": float.hex(v)}
    if isinstance(v, tuple):
        return {"t": "tuple", "v": [_encode(x) for x in v]}
    if isinstance(v, list):
        return {"t": "list", "v": [_encode(x) for x in v]}
    if isinstance(v, dict):
        return {"t": "dict", "v": [[_encode(k), _encode(x)] for k, x in v.items()]}
    if isinstance(v, slice):
        return {"t": "slice", "v": [_encode(v.start), _encode(v.stop), _encode(v.step)]}
    if isinstance(v, dt.Dtype):
        return {"t": "dtype", "v": v.name}
    if v is Ellipsis:
        return {"t": "ellipsis"}
    if isinstance(v, np.dtype) and v.str in _NP_DTYPES:
        return {"t": "npdtype", "v": v.str}
    if isinstance(v, (np.ndarray, np.generic)) and v.dtype.str in _NP_DTYPES \
            and v.size <= _MAX_PARAM_ARRAY:
        a = np.ascontiguousarray(v)
        return {"t": "ndarray" if isinstance(v, np.ndarray) else "npscalar", "dtype": a.dtype.str,
                "shape": list(a.shape), "v": base64.b64encode(a.tobytes()).decode("ascii")}
    raise ValueError(f"[export_function] Cannot export a parameter of type {type(v).__name__}.")


def _encode_params(prim, params):
    try:
        return _encode(params)
    except ValueError as e:
        raise ValueError(f"{e} (in a {prim.name} step)") from None


def _decode(v, bad):
    if v is None or isinstance(v, (bool, str, int)):
        return v
    if not isinstance(v, dict) or not isinstance(v.get("t"), str):
        bad(f"invalid parameter value {str(v)[:40]}")
    t, x = v["t"], v.get("v")
    if t == "float" and isinstance(x, str):
        try:
            return float.fromhex(x)
        except ValueError:
            bad(f"invalid float {x[:40]!r}")
    if t in ("tuple", "list") and isinstance(x, list):
        items = [_decode(i, bad) for i in x]
        return tuple(items) if t == "tuple" else items
    if t == "dict" and isinstance(x, list) and all(isinstance(p, list) and len(p) == 2 for p in x):
        return {_hashable(_decode(k, bad), bad): _decode(i, bad) for k, i in x}
    if t == "slice" and isinstance(x, list) and len(x) == 3:
        return slice(*(_decode(i, bad) for i in x))
    if t == "dtype":
        return _dtype(x, bad)
    if t == "ellipsis":
        return Ellipsis
    if t == "npdtype" and x in _NP_DTYPES:
        return np.dtype(x)
    if t in ("ndarray", "npscalar") and isinstance(x, str):
        npdt, shape = v.get("dtype"), _shape(v.get("shape"), bad)
        if npdt not in _NP_DTYPES:
            bad(f"invalid parameter array dtype {str(npdt)[:20]}")
        raw = base64.b64decode(x.encode("ascii"), validate=True) if len(x) <= 4 * _MAX_PARAM_ARRAY else b""
        a = np.frombuffer(raw, np.dtype(npdt))
        if a.size != _size(shape):
            bad("parameter array size does not match its shape")
        a = a.reshape(shape).copy()
        return a[()] if t == "npscalar" else a
    bad(f"unknown parameter tag {str(t)[:20]!r}")


def _hashable(k, bad):
    try:
        hash(k)
    except TypeError:
        bad("unhashable dictionary key in a parameter")
    return k


def _dtype(name, bad):
    d = _DTYPES.get(name) if isinstance(name, str) else None
    if d is None:
        bad(f"unknown dtype {str(name)[:20]!r}")
    return d


def _shape(s, bad) -> tuple:
    if not isinstance(s, list) or len(s) > 64 or not all(type(n) is int and n >= 0 for n in s):
        bad(f"invalid shape {str(s)[:40]}")
    return tuple(s)


def _size(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# --- export -------------------------------------------------------------------------------------

@api(name="FunctionExporter")
class FunctionExporter:
    """Exports traces of one function to a file (or to a callback), one per input signature; made by
    ``mx.exporter``. The file is rewritten complete after every trace."""

    def __init__(self, target, fun, shapeless: bool, metadata: str):
        self._target, self._fun, self._shapeless = target, fun, bool(shapeless)
        self._metadata = metadata
        self._functions: list = []  # dicts for the header
        self._signatures: list = []  # (kwarg keys, [(shape, dtype)]) of each trace
        self._constants: list = []  # arrays, in file order
        self._constant_index: dict = {}  # id(array) -> index (the arrays above keep ids unique)
        self._closed = False
        if not callable(target):
            self._write()  # fails now when the file cannot be created, as MLX does

    def close(self) -> None:
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __call__(self, *args, **kwargs):
        pos, kw = _extract_inputs(args, kwargs, "[export_function]")
        self._export(pos, kw)

    def _export(self, pos: list, kw: dict) -> None:
        if self._closed:
            raise RuntimeError("[export_function] Attempting to write after exporting is closed.")
        keys = sorted(kw)
        inputs = pos + [kw[k] for k in keys]
        if _find(self._signatures, self._shapeless, pos, {k: kw[k] for k in keys}) is not None:
            raise RuntimeError("[export_function] Attempting to export a function twice with the same "
                               "signature is not allowed.")
        with tracing(allow_eval=False):  # keeps the trace's constants unfolded (see module doc)
            tape = _trace(self._fun, tuple(pos), {k: kw[k] for k in keys}, inputs, None, None,
                          len(pos), len(keys), self._shapeless)
        _check_outputs(tape.structure)
        steps, outputs = self._flatten(tape)
        signature = (keys, [(x._shape, x._dtype) for x in inputs])
        if callable(self._target):
            self._callback(signature, steps, outputs)
            self._signatures.append(signature)
            return
        self._functions.append({
            "kwarg_keys": keys, "inputs": [[list(s), d.name] for s, d in signature[1]],
            "steps": [[p.name, [list(r) for r in refs], _encode_params(p, params), list(shape),
                       dtype.name, stream.device.type.name, [list(s) for s in traced]]
                      for p, refs, params, shape, dtype, stream, traced in steps],
            "outputs": [list(r) for r in outputs]})
        self._signatures.append(signature)
        self._write()

    def _flatten(self, tape: _Tape) -> tuple:
        """The tape's steps and outputs with constants as indices into the file's constant table;
        a lazy constant becomes the steps that compute it from realized arrays."""
        steps: list = []
        made: dict = {}  # id(lazy constant node) -> its ref

        def const(node) -> tuple:
            if node._data is not None:
                i = self._constant_index.get(id(node))
                if i is None:
                    i = self._constant_index[id(node)] = len(self._constants)
                    self._constants.append(node)
                return (2, i)
            stack = [node]
            while stack:  # depth first, without recursion: lazy chains can be long
                n = stack[-1]
                if id(n) in made:
                    stack.pop()
                    continue
                if n._prim.name in _PROGRAM_NODES:  # a pending compiled call: export its value
                    eval_arrays([n])
                    made[id(n)] = const(n)
                    continue
                pending = [x for x in n._inputs if x._data is None and id(x) not in made]
                if pending:
                    stack.extend(pending)
                    continue
                stack.pop()
                refs = tuple(made[id(x)] if id(x) in made else const(x) for x in n._inputs)
                made[id(n)] = (0, len(steps))
                steps.append((n._prim, refs, n._params, n._shape, n._dtype, n._stream,
                              tuple(x._shape for x in n._inputs)))
            return made[id(node)]

        index: list = []
        for prim, refs, params, shape, dtype, stream, traced in tape.steps:
            refs = tuple((0, index[v]) if k == 0 else (1, v) if k == 1 else const(v) for k, v in refs)
            index.append(len(steps))
            steps.append((prim, refs, params, shape, dtype, stream, traced))
        outputs = [(0, index[v]) if k == 0 else (1, v) if k == 1 else const(v)
                   for k, v in tape.outputs]
        return steps, outputs

    def _write(self) -> None:
        offsets, offset = [], 0
        for c in self._constants:
            offsets.append({"dtype": c._dtype.name, "shape": list(c._shape), "offset": offset,
                            "nbytes": c.nbytes})
            offset += c.nbytes
        header = json.dumps({"shapeless": self._shapeless, "metadata": self._metadata,
                             "constants": offsets, "functions": self._functions},
                            separators=(",", ":")).encode("utf-8")
        with open(self._target, "wb") as f:
            f.write(_PREAMBLE.pack(MAGIC, VERSION, len(header)))
            f.write(header)
            for c in self._constants:
                f.write(np.ascontiguousarray(c._realized()).tobytes())

    def _callback(self, signature, steps, outputs) -> None:
        """Describe one trace to the callback, in MLX's terms (see ``_MLX_NAMES``)."""
        keys, ins = signature
        names: dict = {}

        def name(key):
            if key not in names:
                i, s = len(names), ""
                while True:
                    s = chr(ord("A") + i % 26) + s
                    i = i // 26 - 1
                    if i < 0:
                        break
                names[key] = s
            return names[key]

        def data(refs):
            return [(name(r), shape_of(r), dtype_of(r)) for r in refs]

        def shape_of(r):
            return ins[r[1]][0] if r[0] == 1 else steps[r[1]][3] if r[0] == 0 else \
                self._constants[r[1]]._shape

        def dtype_of(r):
            return ins[r[1]][1] if r[0] == 1 else steps[r[1]][4] if r[0] == 0 else \
                self._constants[r[1]]._dtype

        self._target({"type": "inputs", "inputs": data([(1, i) for i in range(len(ins))])})
        first_kw = len(ins) - len(keys)
        self._target({"type": "keyword_inputs",
                      "keywords": [(k, name((1, first_kw + j))) for j, k in enumerate(keys)]})
        self._target({"type": "outputs", "outputs": data(outputs)})
        used = sorted({r[1] for s in steps for r in s[1] if r[0] == 2}
                      | {r[1] for r in outputs if r[0] == 2})
        self._target({"type": "constants",
                      "constants": [(name((2, i)), self._constants[i]) for i in used]})
        for i, (prim, refs, params, shape, dtype, *_rest) in enumerate(steps):
            mlx_name, arguments = _mlx_primitive(prim.name, params, dtype)
            self._target({"type": "primitive", "inputs": data(refs), "outputs": data([(0, i)]),
                          "name": mlx_name, "arguments": arguments})


# MLX's primitive class names and state where they differ from ours (the callback speaks MLX);
# other primitives are named in CamelCase with their params' values as arguments.
_MLX_NAMES = {"astype": ("AsType", lambda p, d: [d]), "log": ("Log", lambda p, d: [2]),
              "log2": ("Log", lambda p, d: [0]), "log10": ("Log", lambda p, d: [1]),
              "matmul": ("Matmul", lambda p, d: []), "argsort": ("ArgSort", None),
              "logaddexp": ("LogAddExp", None), "arccos": ("ArcCos", None),
              "arcsin": ("ArcSin", None), "arctan": ("ArcTan", None)}


def _mlx_primitive(name: str, params, dtype) -> tuple:
    mlx_name, state = _MLX_NAMES.get(name, (None, None))
    mlx_name = mlx_name or "".join(w.capitalize() for w in name.split("_"))
    if state is not None:
        return mlx_name, state(params, dtype)
    return mlx_name, list(params.values()) if isinstance(params, dict) else []


def _check_outputs(structure) -> None:
    """MLX exports functions returning one array or a flat tuple or list of arrays."""
    items = structure.items if isinstance(structure, _Rebuild) else structure
    if isinstance(structure, _Slot) or (isinstance(items, (list, tuple))
                                        and all(isinstance(x, _Slot) for x in items)):
        return
    raise ValueError("[export_function] Outputs can be either a single array, a tuple, or a list of "
                     "arrays.")


def _find(signatures: list, shapeless: bool, pos: list, kw: dict):
    """The index of the trace whose inputs match (MLX's rule: the same keywords, dtypes and ranks,
    and shapes unless shapeless), else None."""
    given = pos + [kw[k] for k in sorted(kw)]
    for i, (keys, ins) in enumerate(signatures):
        if len(ins) != len(given) or any(k not in kw for k in keys):
            continue
        if all(x._dtype == d and x.ndim == len(s) and (shapeless or x._shape == s)
               for x, (s, d) in zip(given, ins)):
            return i
    return None


@api()
def exporter(file, fun, *, shapeless: bool = False, metadata=None) -> FunctionExporter:
    """A callable that exports one trace of ``fun`` per call to ``file`` (MLX ``mx.exporter``)."""
    return FunctionExporter(_path(file), fun, shapeless, _metadata(metadata))


@api()
def export_function(file_or_callback, fun, *args, shapeless: bool = False, metadata=None,
                    **kwargs) -> None:
    """Trace ``fun`` on the example arrays and save it to a file, or describe it to a callback
    (MLX ``mx.export_function``)."""
    metadata = _metadata(metadata)
    pos, kw = _extract_inputs(args, kwargs, "[export_function]")
    if callable(file_or_callback):
        if metadata:
            raise ValueError("[export_function] The metadata argument is only supported when "
                             "exporting to a file, not when using a callback.")
        FunctionExporter(file_or_callback, fun, shapeless, "")._export(pos, kw)
        return
    FunctionExporter(_path(file_or_callback), fun, shapeless, metadata)._export(pos, kw)


def _path(file) -> str:
    if not isinstance(file, (str, os.PathLike)):
        raise TypeError(f"[export_function] Expected a file path, got {type(file).__name__}.")
    return os.fspath(file)


def _metadata(metadata) -> str:
    if metadata is None:
        return ""
    if not isinstance(metadata, str):
        raise TypeError(f"[export_function] metadata must be a string, got {type(metadata).__name__}.")
    return metadata


# --- import -------------------------------------------------------------------------------------

class ImportedFunction:
    """A function read by ``mx.import_function``: call it like the exported function (positional
    and keyword arrays, or a tuple and/or dict of arrays); it returns a tuple of arrays."""

    def __init__(self, path: str, shapeless: bool, signatures: list, tapes: list):
        self._path, self._shapeless = path, shapeless
        self._signatures, self._tapes = signatures, tapes

    def __call__(self, *args, **kwargs) -> tuple:
        pos, kw = _extract_inputs(args, kwargs, "[import_function::call]")
        i = _find(self._signatures, self._shapeless, pos, kw)
        if i is None:
            given = [f"   {j + 1}: {x.shape} {x.dtype}" for j, x in enumerate(pos)]
            given += [f'   "{k}": {kw[k].shape} {kw[k].dtype}' for k in sorted(kw)]
            traced = [f" {j + 1}. {len(ins) - len(keys)} positional inputs, keywords {keys}: "
                      f"{[(tuple(s), d) for s, d in ins]}" for j, (keys, ins) in enumerate(self._signatures)]
            raise ValueError("[import_function::call] No imported function found which matches the "
                             f"given {len(pos)} positional inputs and {len(kw)} keyword inputs:\n"
                             + "\n".join(given) + "\nThe available functions are:\n" + "\n".join(traced))
        inputs = pos + [kw[k] for k in sorted(kw)]
        return tuple(self._tapes[i].replay(inputs, self._shapeless))

    def __repr__(self):
        return f"<imported function from {self._path!r}: {len(self._tapes)} trace(s)>"


@api()
def import_function(file, return_metadata: bool = False):
    """Read a function saved by ``export_function`` or ``exporter`` (MLX ``mx.import_function``)."""
    path = os.fspath(file)
    with open(path, "rb") as f:
        buf = bytearray(f.read())
    fn, metadata = _read(path, buf)
    return (fn, metadata) if return_metadata else fn


def _read(path: str, buf: bytearray) -> tuple:
    def bad(problem):
        raise MalformedFileError(f"[import_function] '{path}' is not a valid mlxarm function file: "
                                 f"{problem}.")

    if len(buf) < _PREAMBLE.size:
        bad(f"truncated ({len(buf)} bytes)")
    magic, version, header_len = _PREAMBLE.unpack_from(buf)
    if magic != MAGIC:
        bad("bad magic bytes")
    if version != VERSION:
        bad(f"unsupported version {version} (this reads version {VERSION})")
    start = _PREAMBLE.size + header_len
    if header_len > len(buf) - _PREAMBLE.size:
        bad(f"truncated: the header needs {header_len} bytes, {len(buf) - _PREAMBLE.size} remain")
    try:
        header = json.loads(buf[_PREAMBLE.size:start].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        bad(f"corrupt header ({type(e).__name__})")
    if not isinstance(header, dict) or not {"shapeless", "metadata", "constants", "functions"} <= set(header):
        bad("the header lacks required fields")
    shapeless, metadata = header["shapeless"], header["metadata"]
    if not isinstance(shapeless, bool) or not isinstance(metadata, str):
        bad("invalid shapeless flag or metadata")
    if not isinstance(header["constants"], list) or not isinstance(header["functions"], list):
        bad("invalid constants or functions")
    data_len = len(buf) - start
    constants = []
    for c in header["constants"]:
        if not isinstance(c, dict):
            bad("invalid constant entry")
        d, shape = _dtype(c.get("dtype"), bad), _shape(c.get("shape"), bad)
        off, n = c.get("offset"), c.get("nbytes")
        if type(off) is not int or type(n) is not int or off < 0 or n != _size(shape) * d.size:
            bad("invalid constant size or offset")
        if off + n > data_len:
            bad(f"truncated: a constant needs bytes {off}..{off + n} of {data_len} data bytes")
        storage = np.frombuffer(buf, d.np_storage, count=n // d.size, offset=start + off)
        constants.append(make_realized(storage.reshape(shape), d, default_stream(Device(DeviceType.cpu))))
    signatures, tapes = [], []
    try:
        for fn in header["functions"]:
            signature, tape = _read_function(fn, constants, bad)
            signatures.append(signature)
            tapes.append(tape)
    except RecursionError:
        bad("parameters nested too deeply")
    return ImportedFunction(path, shapeless, signatures, tapes), metadata


def _read_function(fn, constants: list, bad) -> tuple:
    if not isinstance(fn, dict):
        bad("invalid function entry")
    keys, ins, steps_in, outs = (fn.get(k) for k in ("kwarg_keys", "inputs", "steps", "outputs"))
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        bad("invalid keyword names")
    if not isinstance(ins, list) or not all(isinstance(x, list) and len(x) == 2 for x in ins) \
            or len(keys) > len(ins):
        bad("invalid inputs")
    ins = [(_shape(s, bad), _dtype(d, bad)) for s, d in ins]
    if not isinstance(steps_in, list) or not isinstance(outs, list):
        bad("invalid steps or outputs")
    streams: dict = {}

    def ref(r, n_steps):
        if not (isinstance(r, list) and len(r) == 2 and all(type(v) is int for v in r)):
            bad(f"invalid reference {str(r)[:40]}")
        k, v = r
        limit = {0: n_steps, 1: len(ins), 2: len(constants)}.get(k)
        if limit is None or not 0 <= v < limit:
            bad(f"reference {r} out of range")
        return (k, constants[v]) if k == 2 else (k, v)

    steps = []
    for s in steps_in:
        if not isinstance(s, list) or len(s) != 7:
            bad("invalid step")
        name, refs, params, shape, dtype, device, traced = s
        prim = PRIMITIVES.get(name) if isinstance(name, str) else None
        if prim is None or name in _PROGRAM_NODES or name == "trace_input":
            bad(f"unknown primitive {str(name)[:40]!r}")
        if not isinstance(refs, list) or not isinstance(traced, list) or len(traced) != len(refs):
            bad(f"invalid inputs of a {name} step")
        if device not in DeviceType.__members__:
            bad(f"unknown device {str(device)[:20]!r}")
        if device not in streams:
            streams[device] = default_stream(Device(DeviceType[device]))
        steps.append((prim, tuple(ref(r, len(steps)) for r in refs), _decode(params, bad),
                      _shape(shape, bad), _dtype(dtype, bad), streams[device],
                      tuple(_shape(t, bad) for t in traced)))
    outputs = [ref(r, len(steps)) for r in outs]
    tape = _Tape(steps, outputs, None, len(outputs), tuple(s for s, _ in ins))
    return (keys, ins), tape
