"""``mx.distributed``: MLX's collective-communication API for a single process.

mlxarm has no multi-process backend (no MPI, ring, NCCL or JACCL), so ``is_available()`` is False and
``init()`` returns the singleton group MLX itself returns when no backend is available (``init(strict=True)``
raises, as MLX does). On a group of one process the collectives are what MLX computes there: ``all_sum``,
``all_max``, ``all_min``, ``all_gather`` and ``sum_scatter`` give their input back, and point-to-point
``send``/``recv`` have no peer to talk to. Programs written for several machines (mlx-lm's pipeline and
tensor-parallel paths) thereby run unchanged on one.
"""
from __future__ import annotations

from .ops._base import api, to_array

BACKENDS = ("any", "mpi", "ring", "nccl", "jaccl")


class Group:
    """A communication group: this process alone (rank 0 of 1)."""

    def rank(self) -> int:
        return 0

    def size(self) -> int:
        return 1

    def split(self, color: int, key: int = -1) -> "Group":
        raise RuntimeError("Cannot split the distributed group further.")

    def __repr__(self) -> str:
        return "Group(rank=0, size=1)"


_WORLD = Group()


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"[distributed] The only valid values for backend are 'any', 'mpi', 'nccl', 'jaccl' "
                         f"and 'ring' but '{backend}' was provided.")


@api(module="distributed")
def is_available(backend: str = "any") -> bool:
    """Whether a multi-process backend can be initialized: never, in mlxarm."""
    _check_backend(backend)
    return False


@api(module="distributed")
def init(strict: bool = False, backend: str = "any", *, all_gather_factory=None) -> Group:
    """The global group: the singleton group (``strict=True`` raises, since no backend exists)."""
    _check_backend(backend)
    if strict:
        name = "any backend" if backend == "any" else backend.upper() if backend == "mpi" else backend
        raise RuntimeError(f"Cannot initialize {name}: mlxarm runs in a single process "
                           f"(no distributed backend is available).")
    return _WORLD


def _group(group) -> Group:
    if group is not None and not isinstance(group, Group):
        raise TypeError(f"[distributed] group must be a Group, not {type(group).__name__}.")
    return group or _WORLD


def _identity(x, group, stream):
    from .ops.elementwise import copy

    _group(group)
    return copy(to_array(x), stream=stream)


@api(module="distributed")
def all_sum(x, *, group=None, stream=None):
    """Sum of ``x`` over the group's processes: ``x`` itself on one process."""
    return _identity(x, group, stream)


@api(module="distributed")
def all_max(x, *, group=None, stream=None):
    """Elementwise maximum of ``x`` over the group: ``x`` itself on one process."""
    return _identity(x, group, stream)


@api(module="distributed")
def all_min(x, *, group=None, stream=None):
    """Elementwise minimum of ``x`` over the group: ``x`` itself on one process."""
    return _identity(x, group, stream)


@api(module="distributed")
def all_gather(x, *, group=None, stream=None):
    """``x`` of every process concatenated along the first axis: ``x`` itself on one process."""
    return _identity(x, group, stream)


@api(module="distributed")
def sum_scatter(x, *, group=None, stream=None):
    """The sum over the group, scattered in equal parts along the first axis: ``x`` on one process."""
    return _identity(x, group, stream)


def _no_peer(op: str, group) -> None:
    _group(group)
    raise ValueError(f"Cannot {op} a singleton group")


@api(module="distributed")
def send(x, dst: int, *, group=None, stream=None):
    """Send ``x`` to process ``dst``: a group of one has no other process."""
    _no_peer("send to", group)


@api(module="distributed")
def recv(shape, dtype, src: int, *, group=None, stream=None):
    """Receive an array from process ``src``: a group of one has no other process."""
    _no_peer("recv from", group)


@api(module="distributed")
def recv_like(x, src: int, *, group=None, stream=None):
    """Receive an array shaped like ``x`` from process ``src``: a group of one has no other process."""
    _no_peer("recv from", group)
