"""On-disk cache of compiled kernels (object code), so a kernel compiles once per machine.

Entries live in ``$XDG_CACHE_HOME/mlxarm/llvm`` (or ``~/.cache/mlxarm/llvm``), named by a hash of the
source, the target triple, the CPU features and the mlxarm version. An entry is a magic tag, the
SHA-256 of the object code, then the object code: a damaged entry fails the check, is removed and
rebuilt. Entries are written to a temporary file and renamed into place, so readers in other
processes never see half an entry.
"""
from __future__ import annotations

import hashlib
import os
import tempfile

_MAGIC = b"MLXARM-OBJ1\n"


def default_dir() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "mlxarm", "llvm")


class ObjectCache:
    def __init__(self, directory: str | None = None):
        self.directory = directory or default_dir()
        self.hits = 0
        self.misses = 0
        self.corrupt = 0

    @staticmethod
    def key(source: str, triple: str, features: str, version: str) -> str:
        h = hashlib.sha256()
        for part in (source, triple, features, version):
            h.update(part.encode())
            h.update(b"\0")
        return h.hexdigest()

    def path(self, key: str) -> str:
        return os.path.join(self.directory, key[:2], key + ".o")

    def get(self, key: str) -> bytes | None:
        path = self.path(key)
        try:
            with open(path, "rb") as f:
                blob = f.read()
        except OSError:
            self.misses += 1
            return None
        head = len(_MAGIC) + 32
        obj = blob[head:]
        if not blob.startswith(_MAGIC) or hashlib.sha256(obj).digest() != blob[len(_MAGIC):head]:
            self.corrupt += 1
            self.misses += 1
            try:
                os.unlink(path)
            except OSError:
                pass
            return None
        self.hits += 1
        return obj

    def put(self, key: str, obj: bytes) -> None:
        path = self.path(key)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(_MAGIC + hashlib.sha256(obj).digest() + obj)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only or full cache only costs a recompile next time

    def keep_source(self, key: str, source: str) -> str:
        """Write the source of a kernel that failed to compile; returns its path."""
        path = os.path.join(self.directory, "failed", key + ".ll")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(source)
        return path
