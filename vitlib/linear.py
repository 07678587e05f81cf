"""Linear layer  Y = X W + b  (chapter 3), and the matrix-vector reductions the fused kernels use.

Shapes: X (..., Din), W (Din, Dout), b (Dout,) or None, Y (..., Dout).
W is stored (Din, Dout), the maths' orientation; torch stores its transpose.

The fast path (vitlib/fast.py) runs the same two lines with `out=` buffers; its reductions are the
gemv helpers at the bottom (`row_mean`, `col_sum`): numpy's reductions along a short last axis are
several times slower than BLAS's matrix-vector product.
"""

from typing import NamedTuple

import numpy as np


class LinearCache(NamedTuple):
    X: np.ndarray
    W: np.ndarray
    has_b: bool


def linear_forward(X, W, b=None):
    """Y = X W + b  ->  (Y, cache)."""
    Y = X @ W
    if b is not None:
        Y += b  # Y is fresh, so in place is safe and saves a temporary
    return Y, LinearCache(X, W, b is not None)


def linear_backward(dY, cache):
    """dY (..., Dout) -> (dX (..., Din), dW (Din, Dout), db (Dout,) or None).

    The shapes tell you the transposes: dW must be (Din, Dout), so it is X^T dY with
    every leading axis summed; dX must be (..., Din), so it is dY W^T.
    """
    X, W, has_b = cache
    dX = dY @ W.T
    dW = X.reshape(-1, X.shape[-1]).T @ dY.reshape(-1, dY.shape[-1])
    db = dY.reshape(-1, dY.shape[-1]).sum(axis=0) if has_b else None
    return dX, dW, db


# ---------------------------------------------------------------- fused twins' reductions (gemv)

_CONSTS = {}


def ones(n, value, dtype):
    """A cached read-only (n,) array full of `value`."""
    key = (n, value, np.dtype(dtype))
    c = _CONSTS.get(key)
    if c is None:
        c = _CONSTS[key] = np.full(n, value, dtype)
        c.flags.writeable = False
    return c


def row_mean(X, out):
    """out (R, 1) = X (R, D) averaged along its rows, as one matrix-vector product."""
    np.matmul(X, ones(X.shape[-1], 1.0 / X.shape[-1], X.dtype), out=out.reshape(-1))


def col_sum(X):
    """X (R, D) summed over its rows, a fresh (D,) array (db of a linear layer, as a gemv)."""
    return ones(X.shape[0], 1.0, X.dtype) @ X
