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


# X^T dY over many rows (R = N T, thousands) and few columns: OpenBLAS's sgemm runs this shape (long inner
# dimension) at 10-13 GFLOP/s on one core here, against ~30 for the forward's X W. Cut into blocks of 200 rows, and
# with the product oriented so that its result has more rows than columns, it runs at 27-30 (benchmarks/README.md,
# "weight gradients"; blocks of 320 rows, or a (64, 192) result, are as slow as no blocks at all on this machine).
WEIGHT_GRAD_ROWS = 200


def weight_grad(X, dY):
    """dW (Din, Dout) = X (R, Din)^T dY (R, Dout), the fused twin of linear_backward's `X.T @ dY`. A fresh
    C-contiguous array: for Din < Dout computed as (dY^T X)^T, in blocks of WEIGHT_GRAD_ROWS rows (_row_blocks)."""
    if X.shape[1] < dY.shape[1]:
        return np.ascontiguousarray(_row_blocks(dY, X).T)
    return _row_blocks(X, dY)


def _row_blocks(X, dY):
    """X^T dY as one batched matmul over blocks of WEIGHT_GRAD_ROWS rows, the blocks' products summed (then the
    rows left over)."""
    R, rows = X.shape[0], WEIGHT_GRAD_ROWS
    c = R // rows
    if c < 2:
        return X.T @ dY
    Xb = X[: c * rows].reshape(c, rows, X.shape[1])
    dYb = dY[: c * rows].reshape(c, rows, dY.shape[1])
    dW = np.matmul(Xb.transpose(0, 2, 1), dYb).sum(axis=0)
    if c * rows < R:
        dW += X[c * rows :].T @ dY[c * rows :]
    return dW


def col_sum(X):
    """X (R, D) summed over its rows, a fresh (D,) array (db of a linear layer, as a gemv)."""
    return ones(X.shape[0], 1.0, X.dtype) @ X
