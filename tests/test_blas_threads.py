"""``backend.blas.single_threaded``: numpy's OpenBLAS on one thread inside the block (nested blocks too),
its previous thread count back after it."""
import numpy as np

from mlxarm.backend import blas


def test_single_threaded_and_restored():
    found = blas._openblas()
    if found is None:  # numpy built against another BLAS: nothing to change, and nothing changes
        with blas.single_threaded():
            assert blas.threads() is None
        return
    setter, _ = found
    before = blas.threads()
    setter(2)
    try:
        with blas.single_threaded():
            assert blas.threads() == 1
            with blas.single_threaded():
                assert blas.threads() == 1
            assert blas.threads() == 1
            a = np.ones((64, 64), np.float32)
            assert float((a @ a)[0, 0]) == 64.0
        assert blas.threads() == 2
    finally:
        setter(before)
