"""Random graphs of elementwise, broadcast, reduction and movement ops, for comparing executors."""
import numpy as np
from hypothesis import strategies as st

import mlxarm.core as ma

_UNARY = ["exp", "tanh", "sin", "abs", "negative", "sigmoid", "square"]
_BINARY = ["add", "subtract", "multiply", "maximum", "minimum"]


@st.composite
def graphs(draw, max_steps: int = 8):
    """A recipe: shapes, then a list of ops applied to a stack of arrays."""
    rows = draw(st.integers(1, 9))
    cols = draw(st.integers(1, 40))
    steps = draw(st.lists(st.tuples(st.sampled_from(["unary", "binary", "transpose", "slice", "bcast",
                                                     "reduce", "where", "reshape"]),
                                    st.integers(0, 1000)), min_size=1, max_size=max_steps))
    seed = draw(st.integers(0, 2 ** 16))
    return rows, cols, steps, seed


def build_graph(rows, cols, steps, seed):
    return apply_steps(inputs(rows, cols, seed), steps)


def inputs(rows, cols, seed) -> list:
    """The recipe's two arrays: (rows, cols) and (cols,)."""
    rng = np.random.default_rng(seed)
    return [ma.array(rng.uniform(-2, 2, (rows, cols)).astype(np.float32)),
            ma.array(rng.uniform(-2, 2, (cols,)).astype(np.float32))]


def apply_steps(base: list, steps):
    """The recipe's ops applied to ``base`` (``inputs``' two arrays, or placeholders for them)."""
    cols = base[1].shape[0]
    x = base[0]
    for kind, k in steps:
        if kind == "unary":
            op = _UNARY[k % len(_UNARY)]
            if op == "sin":
                # A difference of an ulp or two in sin's argument (two exp implementations) is an absolute
                # difference of that size in its result, which near a root of sin is all of the result:
                # exp(x) near 7 differs by about 1e-6, past the GPU comparison's absolute tolerance. The
                # comparison is meant for well-conditioned chains: arguments within +-pi (an ulp there is
                # 2.4e-7).
                x = ma.clip(x, -np.pi, np.pi)
            x = getattr(ma, op)(x)
        elif kind == "binary":
            other = base[1] if x.ndim and x.shape[-1] == cols else base[0][..., :1].reshape(-1)[:1]
            x = getattr(ma, _BINARY[k % len(_BINARY)])(x, other)
        elif kind == "transpose" and x.ndim >= 2:
            x = x.T
        elif kind == "slice" and x.ndim >= 1 and x.shape[0] > 1:
            x = x[k % 2::1 + k % 3]
        elif kind == "bcast":
            x = ma.broadcast_to(x, (2,) + x.shape)
        elif kind == "reduce" and x.ndim >= 1:
            x = [ma.sum, ma.max, ma.min][k % 3](x, axis=k % x.ndim)
        elif kind == "where":
            x = ma.where(x > 0, x, x * 0.5)
        elif kind == "reshape":
            x = x.reshape(-1)
        x = ma.clip(x, -1e3, 1e3)
    return x
