"""Saving and loading arrays: ``.npy``, ``.npz``, ``.safetensors`` and ``.gguf`` (MLX's ``mx.load``,
``mx.save``, ``mx.savez``, ``mx.savez_compressed``, ``mx.save_safetensors``, ``mx.save_gguf``).

Files named by path are memory-mapped copy-on-write and arrays are views of the mapping, so
loading a large file reads only what is used. Every size a header declares is checked against the
bytes actually present before anything is allocated; malformed input raises
``MalformedFileError`` (a ValueError and a RuntimeError) naming the file. Nothing is unpickled.
Saving to a path writes a temporary file and renames it over the target, so arrays still mapped
from the old file stay valid.
"""
from __future__ import annotations

import ast
import itertools
import json
import mmap
import os
import re
import zipfile
import zlib

import numpy as np

from . import dtypes as dt
from .array import array, make_node, make_realized
from .device import count_buffer, resolve_stream
from .errors import DtypeError
from .gguf import ByteReader, MalformedFileError, read_gguf, write_gguf
from .registry import Primitive, api, register

__all__ = ["MalformedFileError"]

_NPY_MAGIC = b"\x93NUMPY"
_NPY_DESCR = re.compile(r"^([<>|=]?)([a-zA-Z])(\d+)$")
_NPY_DTYPES = {
    ("b", 1): dt.bool_, ("u", 1): dt.uint8, ("u", 2): dt.uint16, ("u", 4): dt.uint32,
    ("u", 8): dt.uint64, ("i", 1): dt.int8, ("i", 2): dt.int16, ("i", 4): dt.int32,
    ("i", 8): dt.int64, ("f", 2): dt.float16, ("f", 4): dt.float32, ("f", 8): dt.float64,
    ("c", 8): dt.complex64, ("V", 2): dt.bfloat16,
}

_ST_DTYPES = {
    "F32": dt.float32, "F16": dt.float16, "BF16": dt.bfloat16, "I64": dt.int64,
    "I32": dt.int32, "I16": dt.int16, "I8": dt.int8, "U64": dt.uint64, "U32": dt.uint32,
    "U16": dt.uint16, "U8": dt.uint8, "BOOL": dt.bool_, "C64": dt.complex64,
    # 8-bit floats have no MLX dtype: their bytes load as uint8.
    "F8_E4M3": dt.uint8, "F8_E8M0": dt.uint8,
}
_ST_NAMES = {d: n for n, d in _ST_DTYPES.items() if d is not dt.uint8 or n == "U8"}
_ST_MAX_HEADER = 100_000_000  # the reference implementation's limit

_temp_names = itertools.count()


# --- files -----------------------------------------------------------------------------------

def _is_path(file) -> bool:
    return isinstance(file, (str, os.PathLike))


def _is_readable(file) -> bool:
    return all(hasattr(file, a) for a in ("readinto", "seek", "tell", "closed"))


def _is_writable(file) -> bool:
    return all(hasattr(file, a) for a in ("write", "seek", "tell", "closed"))


def _label(file) -> str:
    if _is_path(file):
        return os.fspath(file)
    name = getattr(file, "name", None)
    return name if isinstance(name, str) else "python file object"


def _map_file(path: str, prefix: str) -> np.ndarray:
    """The whole file as a uint8 array backed by a private (copy-on-write) memory map."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            with open(path, "rb"):
                return np.zeros(0, np.uint8)
        return np.memmap(path, dtype=np.uint8, mode="c", shape=(size,)).view(np.ndarray)
    except OSError as e:
        raise MalformedFileError(f"[{prefix}] Failed to open file {path} ({e.strerror})") from None


def _read_stream(f) -> np.ndarray:
    """What is left in a binary file object, as a writable uint8 array of exactly that length."""
    chunks = []
    while True:
        chunk = f.read(1 << 24)
        if not chunk:
            break
        if not isinstance(chunk, (bytes, bytearray)):
            raise ValueError("[load] Input must be a file-like object opened in binary mode, "
                             "or string")
        chunks.append(chunk)
    return np.frombuffer(bytearray(b"".join(chunks)), np.uint8)


def _source(file, prefix: str) -> np.ndarray:
    if _is_path(file):
        return _map_file(os.fspath(file), prefix)
    if _is_readable(file):
        return _read_stream(file)
    raise ValueError(f"[{prefix}] Input must be a file-like object, or string")


def _with_suffix(file, suffix: str) -> str:
    path = os.fspath(file)
    return path if path.endswith(suffix) else path + suffix


def _write_path(path: str, write) -> None:
    """Write through ``write(f)`` into a fresh file renamed over ``path`` once complete."""
    tmp = f"{path}.{os.getpid()}.{next(_temp_names)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _write_to(file, suffix: str, prefix: str, write) -> None:
    if _is_path(file):
        _write_path(_with_suffix(file, suffix), write)
    elif _is_writable(file):
        write(file)
    else:
        raise ValueError(f"[{prefix}] Input must be a file-like object, or string")


def _check_array(a, prefix: str, what: str) -> array:
    if not isinstance(a, array):
        raise DtypeError(f"[{prefix}] {what} must be an array, got {type(a).__name__}.")
    return a


def _canonical(values: np.ndarray) -> np.ndarray:
    """Bool bytes other than 0/1 read as True (a copy only when there are any)."""
    if values.dtype == np.bool_ and values.size and values.view(np.uint8).max() > 1:
        return values.view(np.uint8) != 0
    return values


# --- .npy ------------------------------------------------------------------------------------

def _npy_descr(dtype) -> str:
    if dtype is dt.bfloat16:
        return "<V2"
    return f"{'|' if dtype.size == 1 else '<'}{dtype.np_storage.kind}{dtype.size}"


def _npy_write(f, a: array) -> None:
    data = a._realized()
    fortran = data.flags.f_contiguous
    body = np.ascontiguousarray(data.T if fortran else data)
    shape = "".join(f"{d}, " for d in a.shape)
    header = (f"{{'descr': '{_npy_descr(a.dtype)}', 'fortran_order': {fortran}, "
              f"'shape': ({shape})}}")
    v1 = len(header) + 15 < 0xFFFF
    # The padding rule of MLX's writer, kept so files are byte-identical to MLX's.
    header += " " * ((6 + 2 + (2 + 2 * v1) + len(header) + 1) % 16) + "\n"
    raw = header.encode("latin1")
    f.write(_NPY_MAGIC + (b"\x01\x00" + len(raw).to_bytes(2, "little") if v1
                          else b"\x02\x00" + len(raw).to_bytes(4, "little")))
    f.write(raw)
    if body.size:
        f.write(body.data.cast("B"))


def _npy_parse(buf: np.ndarray, label: str, stream, path=None) -> array:
    r = ByteReader(buf, label, "load")
    if len(buf) < 8 or buf[:6].tobytes() != _NPY_MAGIC:
        r.fail("Invalid npy header (bad magic)")
    if buf[6] not in (1, 2):
        r.fail(f"Unsupported npy format version {buf[6]}")
    r.pos = 8
    header_len = r.unpack("<H" if buf[6] == 1 else "<I", "npy header length")[0]
    text = r.take(header_len, "npy header").tobytes().decode("latin1")
    try:
        header = ast.literal_eval(text)
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
        r.fail("Invalid npy header (not a Python literal)")
    if (not isinstance(header, dict)
            or set(header) != {"descr", "fortran_order", "shape"}
            or not isinstance(header["descr"], str)
            or not isinstance(header["fortran_order"], bool)
            or not isinstance(header["shape"], tuple)
            or not all(type(s) is int for s in header["shape"])):
        r.fail("Invalid npy header (expected 'descr', 'fortran_order' and 'shape')")
    m = _NPY_DESCR.match(header["descr"])
    dtype = m and _NPY_DTYPES.get((m.group(2), int(m.group(3))))
    if dtype is None:
        r.fail(f"Unsupported array protocol type-string: {header['descr']}")
    shape = header["shape"]
    n = r.check_shape(shape, "Array")
    order = "F" if header["fortran_order"] else "C"
    byteorder = ">" if m.group(1) == ">" and dtype.size > 1 else "<"
    if n * dtype.size > r.remaining and path is not None:
        # MLX reads array data when it is evaluated: a file cut short fails then, not here.
        params = {"path": path, "offset": r.pos, "byteorder": byteorder, "order": order,
                  "shape": tuple(shape), "dtype": dtype}
        return make_node(READ, (), params, tuple(shape), dtype, stream)
    data = r.take(n * dtype.size, "Array data")
    values = _npy_values(data, dtype, byteorder)
    count_buffer(values)
    return make_realized(values.reshape(shape, order=order), dtype, stream)


def _npy_values(data: np.ndarray, dtype, byteorder: str) -> np.ndarray:
    if byteorder == ">":
        kind = "u" if dtype is dt.bfloat16 else dtype.np_storage.kind
        return data.view(f">{kind}{dtype.size}").astype(dtype.np_storage)
    return _canonical(data.view(dtype.np_storage))


def _read_ref(params) -> np.ndarray:
    shape, dtype = params["shape"], params["dtype"]
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.size
    path = params["path"]
    with open(path, "rb") as f:
        held = os.fstat(f.fileno()).st_size - params["offset"]
        if held < nbytes:
            raise MalformedFileError(f"[read] Unable to read from file {path}: the header declares "
                                     f"{nbytes} bytes of data but the file holds {max(held, 0)}.")
        f.seek(params["offset"])
        raw = f.read(nbytes)
    if len(raw) < nbytes:
        raise MalformedFileError(f"[read] Unable to read from file {path}: it ended after "
                                 f"{len(raw)} of {nbytes} bytes of data.")
    values = _npy_values(np.frombuffer(bytearray(raw), np.uint8), dtype, params["byteorder"])
    return values.reshape(shape, order=params["order"])


READ = register(Primitive(
    "load", "movement", _read_ref,
    compute=False, doc="Array data read from a file when evaluated (.npy files by path).",
    extra={"cases": lambda rng, dtype: []}))


# --- .npz ------------------------------------------------------------------------------------

def _zip_member_span(buf: np.ndarray, info: zipfile.ZipInfo, label: str):
    """Where a stored (uncompressed) member's bytes lie in the archive's buffer."""
    r = ByteReader(buf, label, "load_npz")
    r.pos = info.header_offset
    local = r.take(30, f"local header of '{info.filename}'").tobytes()
    if local[:4] != b"PK\x03\x04":
        r.fail(f"Bad local header for '{info.filename}'")
    r.pos += int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
    start = r.pos
    r.take(info.compress_size, f"Member '{info.filename}'")
    return start, start + info.compress_size


def _load_npz(file, stream) -> dict:
    label = _label(file)
    if _is_readable(file):
        at = file.tell()
        is_zip = zipfile.is_zipfile(file)
        file.seek(at)
    else:
        is_zip = _is_path(file) and zipfile.is_zipfile(os.fspath(file))
    if not is_zip:
        raise MalformedFileError("[load_npz] Input must be a zip file or a file-like object that "
                                 f"can be opened with zipfile.ZipFile ({label} is not)")
    buf = _map_file(os.fspath(file), "load_npz") if _is_path(file) else None
    out = {}
    try:
        with zipfile.ZipFile(os.fspath(file) if buf is not None else file) as zf:
            for info in zf.infolist():
                if buf is not None and info.compress_type == zipfile.ZIP_STORED:
                    start, end = _zip_member_span(buf, info, label)
                    member = buf[start:end]
                else:
                    member = np.frombuffer(bytearray(zf.read(info)), np.uint8)
                key = info.filename
                if len(key) > 4 and key.endswith(".npy"):
                    key = key[:-4]
                out[key] = _npy_parse(member, f"{label}[{info.filename}]", stream)
    except MalformedFileError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError,
            RuntimeError) as e:  # RuntimeError: zipfile's "encrypted member"
        raise MalformedFileError(f"[load_npz] Invalid zip file {label}: {e}") from None
    return out


def _savez(file, args, kwargs, compressed: bool) -> None:
    arrays = dict(kwargs)
    for i, a in enumerate(args):
        name = f"arr_{i}"
        if name in arrays:
            raise ValueError(f"[savez] Cannot use un-named variables and keyword {name}")
        arrays[name] = a
    for k, a in arrays.items():
        _check_array(a, "savez", f"'{k}'")
    compression = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED

    def write(f):
        with zipfile.ZipFile(f, mode="w", compression=compression, allowZip64=True) as zf:
            for k, a in arrays.items():
                with zf.open(k + ".npy", mode="w", force_zip64=True) as member:
                    _npy_write(member, a)

    if _is_path(file):
        _write_path(_with_suffix(file, ".npz"), write)
    else:
        write(file)


# --- .safetensors ----------------------------------------------------------------------------

def _load_safetensors(buf: np.ndarray, label: str, stream):
    r = ByteReader(buf, label, "load_safetensors")
    header_len = r.u64("JSON header length")
    if header_len == 0 or header_len >= _ST_MAX_HEADER:
        r.fail(f"Invalid json header length {header_len}")
    raw = r.take(header_len, "JSON header")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        r.fail("Invalid json header (not valid JSON)")
    if not isinstance(header, dict):
        r.fail("Invalid json metadata (not an object)")
    base = r.pos
    arrays, metadata = {}, {}
    for key, entry in header.items():
        if key == "__metadata__":
            if entry is None:  # what MLX writes when there is no metadata
                continue
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                r.fail("Invalid __metadata__ (must map strings to strings)")
            metadata.update(entry)
            continue
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
            r.fail(f"Tensor '{key}' needs 'dtype', 'shape' and 'data_offsets'")
        dtype = _ST_DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
        if dtype is None:
            r.fail(f"Tensor '{key}' has unsupported dtype {entry['dtype']!r}")
        shape, offsets = entry["shape"], entry["data_offsets"]
        if not isinstance(shape, list) or not all(type(s) is int for s in shape):
            r.fail(f"Tensor '{key}' has invalid shape {shape!r}")
        shape = tuple(shape)
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(o) is int and o >= 0 for o in offsets)):
            r.fail(f"Tensor '{key}' data_offsets must be 2 non-negative integers, got {offsets!r}")
        nbytes = r.check_shape(shape, f"Tensor '{key}'") * dtype.size
        begin, end = offsets
        if end < begin or end - begin != nbytes:
            r.fail(f"Tensor '{key}' invalid data offsets ({begin}, {end}). "
                   f"Expecting {nbytes} bytes")
        if base + end > len(buf):
            r.fail(f"Tensor '{key}' invalid data offsets ({begin}, {end}) exceeding the size of "
                   f"the file")
        raw = buf[base + begin:base + end]
        if raw.__array_interface__["data"][0] % dtype.size:
            # MLX writes tensors back to back after a header of any length, so a tensor may start off
            # its dtype's alignment, which kernels and device buffers need (a misaligned view would
            # be copied at each use). Such a tensor is copied once, and the mapped file pages behind
            # it let go, so memory stays near the file's size.
            data = np.empty(nbytes // dtype.size, dtype.np_storage)
            data.view(np.uint8)[:] = raw
            _release_pages(buf, base + begin, base + end)
        else:
            data = raw.view(dtype.np_storage)
        del raw
        data = _canonical(data)
        count_buffer(data)
        arrays[key] = make_realized(data.reshape(shape), dtype, stream)
    return arrays, metadata


def _release_pages(buf: np.ndarray, begin: int, end: int) -> None:
    """Drop the pages wholly inside bytes [begin, end) of a mapped file (``_map_file``) from this
    process's memory (they are read again from the file if touched; nothing writes them)."""
    mapped = buf.base
    while mapped is not None and not isinstance(mapped, mmap.mmap):
        mapped = getattr(mapped, "base", None)
    if mapped is None or not hasattr(mapped, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    first, last = -(-begin // mmap.PAGESIZE) * mmap.PAGESIZE, end // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        mapped.madvise(mmap.MADV_DONTNEED, first, last - first)


def _safetensors_write(f, arrays: dict, metadata: dict) -> None:
    # Widest dtypes first and the header padded with spaces to 8 bytes (as the format allows), so every
    # tensor starts on its dtype's alignment and loads without a copy (``_load_safetensors``).
    names = sorted(arrays, key=lambda k: (-arrays[k].dtype.size, k))
    header = {"__metadata__": metadata}
    datas, offset = [], 0
    for k in names:
        a = arrays[k]
        if a.dtype not in _ST_NAMES:
            raise DtypeError("[save_safetensors] received invalid dtype.")
        header[k] = {"dtype": _ST_NAMES[a.dtype], "shape": list(a.shape),
                     "data_offsets": [offset, offset + a.nbytes]}
        datas.append(np.ascontiguousarray(a._realized()))
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    raw = text.encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    f.write(len(raw).to_bytes(8, "little"))
    f.write(raw)
    for d in datas:
        if d.size:
            f.write(d.data.cast("B"))


# --- public API ------------------------------------------------------------------------------

@api(module="io")
def save(file, arr) -> None:
    """Save an array to a binary file in ``.npy`` format (``.npy`` is appended to a path
    without it)."""
    _check_array(arr, "save", "arr")
    _write_to(file, ".npy", "save", lambda f: _npy_write(f, arr))


@api(module="io")
def savez(file, *args, **kwargs) -> None:
    """Save several arrays to an uncompressed ``.npz`` archive; positional arrays are named
    ``arr_0``, ``arr_1``, ..."""
    _savez(file, args, kwargs, compressed=False)


@api(module="io")
def savez_compressed(file, *args, **kwargs) -> None:
    """Save several arrays to a compressed (deflate) ``.npz`` archive."""
    _savez(file, args, kwargs, compressed=True)


@api(module="io")
def save_safetensors(file, arrays, metadata=None) -> None:
    """Save a dict of arrays (and optional string metadata) in ``.safetensors`` format."""
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError("[save_safetensors] Metadata must be a dictionary with string keys "
                         "and values")
    arrays = dict(arrays)
    for k, a in arrays.items():
        _check_array(a, "save_safetensors", f"'{k}'")
    _write_to(file, ".safetensors", "save_safetensors",
              lambda f: _safetensors_write(f, arrays, metadata))


@api(module="io")
def save_gguf(file, arrays, metadata=None) -> None:
    """Save a dict of arrays in ``.gguf`` format with metadata values that are strings, lists
    of strings or scalar/1-D arrays."""
    if not _is_path(file):
        raise ValueError("[save_gguf] Input must be a string")
    arrays = dict(arrays)
    for k, a in arrays.items():
        _check_array(a, "save_gguf", f"'{k}'")
    _write_path(_with_suffix(file, ".gguf"), lambda f: write_gguf(f, arrays, metadata or {}))


@api(module="io")
def load(file, /, format=None, return_metadata=False, *, stream=None):
    """Load array(s) from a ``.npy``, ``.npz``, ``.safetensors`` or ``.gguf`` file; the format
    comes from the extension unless ``format`` is given."""
    if format is None:
        if _is_path(file):
            name = os.fspath(file)
        elif _is_readable(file):
            name = file.name
        else:
            raise ValueError("[load] Input must be a file-like object opened in binary mode, "
                             "or string")
        if "." not in name:
            raise ValueError("[load] Could not infer file format from extension")
        format = name.rsplit(".", 1)[1]
    if return_metadata and format in ("npy", "npz"):
        raise ValueError(f"[load] metadata not supported for format {format}")
    s = resolve_stream(stream)
    label = _label(file)
    if format == "npy":
        return _npy_parse(_source(file, "load_npy"), label, s,
                          os.path.abspath(os.fspath(file)) if _is_path(file) else None)
    if format == "npz":
        return _load_npz(file, s)
    if format == "safetensors":
        arrays, metadata = _load_safetensors(_source(file, "load_safetensors"), label, s)
    elif format == "gguf":
        if not _is_path(file):
            raise ValueError("[load_gguf] Input must be a string")
        arrays, metadata = read_gguf(_map_file(os.fspath(file), "load_gguf"), label, s)
    else:
        raise ValueError(f"[load] Unknown file format {format}")
    return (arrays, metadata) if return_metadata else arrays
