"""Error types and messages against MLX: bad shapes, bad axes, bad dtypes.

Our exception must be an instance of MLX's exception type, and where MLX's message is an "[op] ..."
message ours must be the same text. Cases for ops this build does not provide yet are skipped.
"""
import numpy as np
import pytest

import mlxarm.core as ma

from _matrix import DTYPES, assert_same_outcome, elementwise_primitives, mlx_dtype

pytestmark = pytest.mark.mlx


def A(L, shape, dtype="float32"):
    """A zero array of ``shape`` in library ``L``."""
    npdt = {"bool_": np.bool_, "bfloat16": np.float32}.get(dtype, dtype)
    return L.array(np.zeros(shape, dtype=npdt), dtype=getattr(L, dtype))


CASES = {
    # broadcasting
    "add_shapes": ("add", lambda L: L.add(A(L, (2, 3)), A(L, (4,)))),
    "multiply_3": ("multiply", lambda L: L.multiply(A(L, (2, 3, 4)), A(L, (3, 3, 4)))),
    "operator_shapes": ("add", lambda L: A(L, (2,)) + A(L, (3,))),
    "where_shapes": ("where", lambda L: L.where(A(L, (2,), "bool_"), A(L, (3,)), A(L, (2,)))),
    "broadcast_to_bad": ("broadcast_to", lambda L: L.broadcast_to(A(L, (2, 3)), (4, 3))),
    "broadcast_to_fewer": ("broadcast_to", lambda L: L.broadcast_to(A(L, (2, 3)), (3,))),
    "broadcast_arrays": ("broadcast_arrays", lambda L: L.broadcast_arrays(A(L, (2,)), A(L, (3,)))),
    # matmul
    "matmul_inner": ("matmul", lambda L: L.matmul(A(L, (2, 3)), A(L, (4, 5)))),
    "matmul_0d": ("matmul", lambda L: L.matmul(A(L, ()), A(L, (2,)))),
    "matmul_batch": ("matmul", lambda L: L.matmul(A(L, (2, 2, 3)), A(L, (3, 3, 4)))),
    "matmul_int": ("matmul", lambda L: L.matmul(A(L, (2, 2), "int32"), A(L, (2, 2), "int32"))),
    "matmul_operator": ("matmul", lambda L: A(L, (2, 3)) @ A(L, (2, 3))),
    # reshape family
    "reshape_size": ("reshape", lambda L: L.reshape(A(L, (2, 3)), (4, 2))),
    "reshape_two_infer": ("reshape", lambda L: L.reshape(A(L, (2, 3)), (-1, -1))),
    "reshape_infer_bad": ("reshape", lambda L: L.reshape(A(L, (2, 3)), (-1, 4))),
    "reshape_infer_zero": ("reshape", lambda L: L.reshape(A(L, (0, 3)), (0, -1))),
    "flatten_axes": ("flatten", lambda L: L.flatten(A(L, (2, 3)), 1, 0)),
    "squeeze_non_one": ("squeeze", lambda L: L.squeeze(A(L, (2, 3)), 0)),
    "squeeze_bad_axis": ("squeeze", lambda L: L.squeeze(A(L, (1, 3)), 5)),
    "expand_dims_bad": ("expand_dims", lambda L: L.expand_dims(A(L, (2, 3)), 4)),
    "expand_dims_dup": ("expand_dims", lambda L: L.expand_dims(A(L, (2, 3)), (0, 0))),
    "unflatten_bad": ("unflatten", lambda L: L.unflatten(A(L, (6,)), 0, (4, 2))),
    # joining and splitting
    "concatenate_shapes": ("concatenate", lambda L: L.concatenate([A(L, (2, 3)), A(L, (2, 4))])),
    "concatenate_ndim": ("concatenate", lambda L: L.concatenate([A(L, (2, 3)), A(L, (3,))])),
    "concatenate_axis": ("concatenate", lambda L: L.concatenate([A(L, (2, 3)), A(L, (2, 3))], axis=2)),
    "concatenate_empty": ("concatenate", lambda L: L.concatenate([])),
    "stack_shapes": ("stack", lambda L: L.stack([A(L, (2, 3)), A(L, (3, 2))])),
    "stack_empty": ("stack", lambda L: L.stack([])),
    "stack_axis": ("stack", lambda L: L.stack([A(L, (2,)), A(L, (2,))], axis=3)),
    "split_uneven": ("split", lambda L: L.split(A(L, (5,)), 2)),
    "split_axis": ("split", lambda L: L.split(A(L, (4,)), 2, axis=1)),
    # axes
    "sum_axis": ("sum", lambda L: L.sum(A(L, (2, 3)), axis=2)),
    "sum_negative_axis": ("sum", lambda L: L.sum(A(L, (2, 3)), axis=-3)),
    "sum_dup_axes": ("sum", lambda L: L.sum(A(L, (2, 3)), axis=(0, 0))),
    "max_axis": ("max", lambda L: L.max(A(L, (2, 3)), axis=5)),
    "mean_axis": ("mean", lambda L: L.mean(A(L, (2,)), axis=1)),
    "argmax_axis": ("argmax", lambda L: L.argmax(A(L, (2, 3)), axis=2)),
    "max_empty": ("max", lambda L: L.max(A(L, (0,)))),
    "argmax_empty": ("argmax", lambda L: L.argmax(A(L, (0,)))),
    "cumsum_axis": ("cumsum", lambda L: L.cumsum(A(L, (2, 3)), axis=2)),
    "sort_axis": ("sort", lambda L: L.sort(A(L, (2, 3)), axis=2)),
    "argsort_axis": ("argsort", lambda L: L.argsort(A(L, (2, 3)), axis=-3)),
    "transpose_count": ("transpose", lambda L: L.transpose(A(L, (2, 3)), (0,))),
    "transpose_repeat": ("transpose", lambda L: L.transpose(A(L, (2, 3)), (0, 0))),
    "transpose_range": ("transpose", lambda L: L.transpose(A(L, (2, 3)), (0, 2))),
    "swapaxes_range": ("swapaxes", lambda L: L.swapaxes(A(L, (2, 3)), 0, 2)),
    "moveaxis_range": ("moveaxis", lambda L: L.moveaxis(A(L, (2, 3)), 0, 3)),
    "take_axis": ("take", lambda L: L.take(A(L, (2, 3)), L.array([0]), axis=2)),
    "take_float_index": ("take", lambda L: L.take(A(L, (2, 3)), L.array([0.5]))),
    "diagonal_same": ("diagonal", lambda L: L.diagonal(A(L, (2, 3)), 0, 0, 0)),
    "softmax_axis": ("softmax", lambda L: L.softmax(A(L, (2, 3)), axis=2)),
    "logsumexp_axis": ("logsumexp", lambda L: L.logsumexp(A(L, (2, 3)), axis=-3)),
    "topk_k": ("topk", lambda L: L.topk(A(L, (3,)), 5)),
    "mT_1d": ("swapaxes", lambda L: A(L, (3,)).mT),
    # dtypes
    "bitwise_float": ("bitwise_and", lambda L: L.bitwise_and(A(L, (2,)), A(L, (2,)))),
    "bitwise_operator_float": ("bitwise_or", lambda L: A(L, (2,)) | A(L, (2,))),
    "invert_float": ("bitwise_invert", lambda L: ~A(L, (2,))),
    "shift_float": ("left_shift", lambda L: L.left_shift(A(L, (2,)), A(L, (2,)))),
    "negative_bool": ("negative", lambda L: L.negative(A(L, (2,), "bool_"))),
    "negative_bool_operator": ("negative", lambda L: -A(L, (2,), "bool_")),
    "floor_complex": ("floor", lambda L: L.floor(A(L, (2,), "complex64"))),
    "remainder_complex": ("remainder", lambda L: L.remainder(A(L, (2,), "complex64"), A(L, (2,), "complex64"))),
    "arctan2_complex": ("arctan2", lambda L: L.arctan2(A(L, (2,), "complex64"), A(L, (2,), "complex64"))),
    "erf_complex": ("erf", lambda L: L.erf(A(L, (2,), "complex64"))),
    "sigmoid_complex": ("sigmoid", lambda L: L.sigmoid(A(L, (2,), "complex64"))),
    "astype_bad": ("astype", lambda L: A(L, (2,)).astype("float33")),
    "array_overflow": ("array", lambda L: L.array([300], dtype=L.uint8)),
    "array_ragged": ("array", lambda L: L.array([[1, 2], [3]])),
    "array_bad_type": ("array", lambda L: L.array(["a"])),
    "array_object": ("array", lambda L: L.array(object())),
    "item_many": ("array", lambda L: A(L, (2,)).item()),
    "bool_many": ("array", lambda L: bool(A(L, (2,)))),
    "len_0d": ("array", lambda L: len(A(L, ()))),
    "iter_0d": ("array", lambda L: list(iter(A(L, ())))),
    "getitem_too_many": ("array", lambda L: A(L, (2,))[0, 0]),
    "clip_none": ("clip", lambda L: L.clip(A(L, (2,)), None, None)),
    "arange_step_zero": ("arange", lambda L: L.arange(0, 10, 0)),
    "zeros_negative": ("zeros", lambda L: L.zeros((-1, 2))),
    "full_shapes": ("full", lambda L: L.full((2, 3), L.array([1.0, 2.0]))),
    "eye_negative": ("eye", lambda L: L.eye(-1)),
    "pad_negative": ("pad", lambda L: L.pad(A(L, (2,)), -1)),
    "tile_negative": ("tile", lambda L: L.tile(A(L, (2,)), -1)),
    "repeat_negative": ("repeat", lambda L: L.repeat(A(L, (2,)), -1)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_error_matches_mlx(case):
    mx = pytest.importorskip("mlx.core")
    op, call = CASES[case]
    if op != "array" and not hasattr(ma, op):
        pytest.skip(f"{op} is not provided by this build")
    assert_same_outcome(lambda: call(ma), lambda: call(mx), case)


def _unsupported(kind):
    return [pytest.param(p, d, id=f"{p.name}-{d.name}") for p in elementwise_primitives(kind)
            for d in DTYPES if d not in p.dtypes]


@pytest.mark.parametrize("prim,d", _unsupported("unary") + _unsupported("binary"))
def test_unsupported_dtype_message(prim, d):
    mx = pytest.importorskip("mlx.core")
    n = 1 if prim.kind == "unary" else 2
    x = np.ones((2,), dtype=d.np_compute)
    assert_same_outcome(lambda: getattr(ma, prim.name)(*[ma.array(x, dtype=d)] * n),
                        lambda: getattr(mx, prim.name)(*[mx.array(x, dtype=mlx_dtype(d))] * n),
                        f"{prim.name}({d.name})")
