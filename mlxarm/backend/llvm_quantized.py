"""The LLVM executor's quantized matmul: which ``quantized_matmul`` nodes the packed-weight template
(``kernels.quantized``) runs, and running them: ``bind`` prepares a node's call once for a recorded
eval to repeat, ``matmul`` runs one product on numpy buffers.

A node fits when it is affine, with x, the result and the scales and biases (one dtype for both,
the one the node rounds dequantized weights to, or float16 ones a float32 node widens as it loads
them) each float32, float16 or bfloat16, one 2-D packed
matrix, bits and group size the template knows, and a panel buffer small enough for a worker's stack.
Batched x (..., M, K) is one product with M = the product of the leading dimensions. Everything else
stays on the numpy reference.
"""
from __future__ import annotations

import ctypes
import math
import weakref

import numpy as np

from ..kernels import quantized as template

# The kernel keeps one dequantized panel on the worker thread's stack: well inside any thread's (glibc
# gives 8 MiB, macOS 512 KiB).
_SCRATCH_BYTES = 1 << 18
# Below this many multiply-adds a product runs on the calling thread: a decode step's matvecs read
# their weights at about the memory's speed on one core already, and a second core mostly adds the
# cost of sharing (measured on a 2-core VM: no gain below a vocabulary-sized projection).
_PARALLEL_MIN = 1 << 22


def fits(node, target) -> bool:
    if node._prim is None or node._prim.name != "quantized_matmul":
        return False
    p = node._params
    if p.get("mode") != "affine" or node._dtype.name not in template.DTYPES:
        return False
    x, w, scales, biases = node._inputs
    if w.ndim != 2 or w._dtype.name != "uint32" or x._dtype.name not in template.DTYPES:
        return False
    # The reference rounds code * scale to p["sdtype"] and adding the bias to p["bdtype"]: the
    # template rounds both to one dtype, the scales' or float32 (float16 scales of a float32 product).
    stored, rounded = scales._dtype.name, p.get("sdtype")
    if not (stored == biases._dtype.name and rounded == p.get("bdtype") and stored in template.DTYPES
            and rounded in (stored, "float32")):
        return False
    bits, gs, transpose = p["bits"], p["group_size"], p["transpose"]
    k = x._shape[-1]
    n = node._shape[-1]
    if not (k and n and math.prod(node._shape)):
        return False
    if not template.supported(transpose, n, k, bits, gs):
        return False
    return template.scratch_floats(transpose, k, bits, target.lanes) * 4 <= _SCRATCH_BYTES


def dtypes(node) -> tuple:
    """(x, scales and biases, out[, rounding]): the dtype names the template is rendered for."""
    found = node._inputs[0]._dtype.name, node._inputs[2]._dtype.name, node._dtype.name
    rounded = node._params["sdtype"]
    return found if rounded == found[1] else found + (rounded,)


def _form(executor, transpose: bool, bits: int, group_size: int, lanes: int, m: int, k: int, types: tuple) -> tuple:
    """(register tile rows, codes read a word per lane) of the template function for an M x K product."""
    mr = template.tile_rows(transpose, bits, lanes, m)
    return mr, template.word_lanes(transpose, bits, group_size, lanes, mr, _permutes(executor.target), types, k)


def name(executor, node) -> str:
    """The template function that runs ``node`` (its rows of x decide the register tile)."""
    p = node._params
    lanes, types = executor.target.lanes, dtypes(node)
    mr, words = _form(executor, p["transpose"], p["bits"], p["group_size"], lanes, math.prod(node._shape[:-1]),
                      node._inputs[0]._shape[-1], types)
    return template.name(p["transpose"], p["bits"], p["group_size"], lanes, mr, types, words=words)


def bind(executor, node):
    """A function realizing any node shaped as ``node`` (the same shapes, dtypes and parameters, as a
    replayed eval's are): the template function, its shape array, the thread split and the argument
    array are found once here, so a call fills five addresses and runs the kernel. Products too small
    to pay for the pool stay on the calling thread."""
    p = node._params
    transpose, bits, gs = p["transpose"], p["bits"], p["group_size"]
    shape = node._shape
    k = node._inputs[0]._shape[-1]
    n = shape[-1]
    m = math.prod(shape[:-1])
    lanes = executor.target.lanes
    types, permute = dtypes(node), _permutes(executor.target)
    mr, words = _form(executor, transpose, bits, gs, lanes, m, k, types)
    fn = _function(executor, transpose, bits, gs, lanes, mr, types, words=words)
    interleave = template.x_interleaved(transpose, bits, gs, lanes, mr, permute, types)
    meta = np.array([m, n, k], np.int64)
    args = (ctypes.c_void_p * 6)()
    args[5] = meta.ctypes.data
    units = template.panels(transpose, n, bits, lanes)
    parallel = executor.pool is not None and m * n * k >= _PARALLEL_MIN
    per_unit = m * k * -(-n // units)
    contiguous = np.ascontiguousarray
    address = executor.address
    last = executor.interleaved
    split, realized, empty, storage = executor.split, executor.realized, np.empty, node._dtype.np_storage

    def run_bound(node, meta=meta):  # meta: kept alive with the function
        x, w, scales, biases = [i._data for i in node._inputs]
        if interleave:
            if last[0] is not None and last[0]() is x and last[1] == bits:
                x = last[2]
            else:
                copy = template.interleave_x(x.reshape(m, k), bits, lanes)
                last[0], last[1], last[2], x = weakref.ref(x), bits, copy, copy
        else:
            x = contiguous(x.reshape(m, k))
        if not (w.flags.c_contiguous and scales.flags.c_contiguous and biases.flags.c_contiguous):
            w, scales, biases = contiguous(w), contiguous(scales), contiguous(biases)
        out = empty(shape, storage)
        args[0], args[1], args[2], args[3], args[4] = address(out), address(x), address(w), address(scales), \
            address(biases)
        if parallel:
            split(fn, args, units, per_unit, 1)
        else:
            fn(args, 0, units)
        del x, w, scales, biases
        realized(node, out)

    def native(ins, out):  # rows for a compiled program (``llvm_program``)
        x, w, scales, biases = ins
        if not all(a.flags.c_contiguous for a in ins) or out.shape != shape:
            return None
        rows = []
        if interleave:
            kernel = _interleave_kernel(m, k, bits, lanes, node_x_dtype)
            scratch = ("temp", kernel, x.nbytes, x)
            rows.append((executor.function(kernel), [scratch, x], kernel.out_size,
                         *executor.split_shape(kernel), True))
            x = scratch
        # In a program the workers are awake between rows: any product big enough is shared.
        rows.append((fn, [out, x, w, scales, biases, meta], units, per_unit, 1, True))
        return rows

    node_x_dtype = node._inputs[0]._dtype.name
    run_bound.native = native
    if template.factored(transpose, bits, lanes, mr, permute, types):
        # a program may run this matvec in one call with others of the same x (``llvm_program``); the
        # maker holds no node (a bound function outlives the eval that made it)
        native.joins = (("qmv", bits, gs, lanes, types, k),
                        lambda parts: _function(executor, transpose, bits, gs, lanes, mr, types, parts, words))
    return run_bound


def _interleave_kernel(m: int, k: int, bits: int, lanes: int, dtype: str):
    """``template.interleave_x`` as a copy kernel: x (M, K) to blocks of ``lanes * 8 / bits`` columns
    with column t + j * 8/bits at t * lanes + j."""
    from ..codegen import ir

    per = 8 // bits
    blocks = k // (lanes * per)
    load = ir.Load(1, dtype, (k, lanes * per, 1, per))
    return ir.Kernel(f"interleave_{m}_{k}_b{bits}_l{lanes}_{dtype}", (m, blocks, per, lanes), 4,
                     ir.Store(0, dtype, (k, per * lanes, lanes, 1), load), width=lanes)


def _permutes(target) -> bool:
    """Whether ``target`` permutes 16 float lanes by a vector of indices (AVX-512's ``vpermps``), which
    lets the template look small codes up in a table of their group's values (``template.looked_up``)."""
    return target.triple.split("-")[0] in ("x86_64", "i686", "i386") and target.has("avx512f")


def _function(executor, transpose: bool, bits: int, group_size: int, lanes: int, mr: int,
              dtypes: tuple = template.F32, parts: int = 1, words: bool = False):
    key = ("qmm", transpose, bits, group_size, lanes, mr) + (() if dtypes == template.F32 else (dtypes,)) \
        + (() if parts == 1 else (("parts", parts),)) + (("words",) if words else ())
    fn = executor.functions.get(key)
    if fn is None:
        source = template.render(transpose, bits, group_size, lanes, mr, dtypes, _permutes(executor.target), parts,
                                 words)
        fn = executor.functions[key] = executor.compiler.load(
            source, template.name(transpose, bits, group_size, lanes, mr, dtypes, parts, words))
        executor.sources[key] = source
    return fn


# numpy storage of the template's dtypes (bfloat16 is held as its uint16 bit patterns)
_STORAGE = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16", np.dtype(np.uint16): "bfloat16"}
_NUMPY = {name: dtype for dtype, name in _STORAGE.items()}


def matmul(executor, x: np.ndarray, w: np.ndarray, scales: np.ndarray, biases: np.ndarray, transpose: bool,
           bits: int, group_size: int, lanes: int | None = None, out_dtype: str | None = None) -> np.ndarray:
    """(M, K) x packed ``w`` (MLX's layout) -> (M, N), by the template rendered for ``lanes`` (default:
    the executor's target). x, scales and biases are float32, float16 or bfloat16 (uint16 bit patterns),
    scales and biases alike; the result is ``out_dtype`` (default: x's dtype) in its numpy storage. The
    shapes must already be checked (``fits``)."""
    x, w, scales, biases = (np.ascontiguousarray(a) for a in (x, w, scales, biases))
    if scales.dtype != biases.dtype or x.dtype not in _STORAGE or scales.dtype not in _STORAGE or \
            (out_dtype or "float32") not in template.DTYPES:
        raise TypeError(f"[quantized_matmul] x ({x.dtype}), scales ({scales.dtype}), biases ({biases.dtype}) "
                        f"and out ({out_dtype}): the template takes float32, float16 or bfloat16 (uint16), "
                        "scales and biases alike")
    types = (_STORAGE[x.dtype], _STORAGE[scales.dtype], out_dtype or _STORAGE[x.dtype])
    m, k = x.shape
    n = w.shape[0] if transpose else w.shape[1] * 32 // bits
    lanes = lanes or executor.target.lanes
    mr, words = _form(executor, transpose, bits, group_size, lanes, m, k, types)
    fn = _function(executor, transpose, bits, group_size, lanes, mr, types, words=words)
    if template.x_interleaved(transpose, bits, group_size, lanes, mr, _permutes(executor.target), types):
        x = template.interleave_x(x, bits, lanes)
    out = np.empty((m, n), _NUMPY[types[2]])
    meta = np.array([m, n, k], np.int64)
    addresses = [out.ctypes.data, x.ctypes.data, w.ctypes.data, scales.ctypes.data, biases.ctypes.data,
                 meta.ctypes.data]
    units = template.panels(transpose, n, bits, lanes)
    if m * n * k < _PARALLEL_MIN:
        fn((ctypes.c_void_p * len(addresses))(*addresses), 0, units)
    else:
        executor.split(fn, addresses, units, m * k * -(-n // units), 1)
    return out
