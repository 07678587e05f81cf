"""LayerNorm over the last axis, with or without scale and shift (chapter 5).

Forward, per row x of length D:
    mean = x.mean(),  var = ((x - mean)**2).mean()   (population variance)
    rstd = 1 / sqrt(var + eps)
    xhat = (x - mean) * rstd
    y    = gamma * xhat + beta          (affine)   or   y = xhat   (seed style)

The teaching cache holds exactly what llm.c's layernorm keeps: the input, mean and rstd; xhat is
recomputed in the backward pass from them. Its fused twin (`layernorm_forward_fused`, what the
fast path runs) writes xhat and rstd into workspace buffers instead, so its backward recomputes
nothing; tests/test_layers.py holds fused == teaching == torch.
"""

from typing import NamedTuple

import numpy as np

from .linear import col_sum, row_mean

EPS = 1e-5  # torch's nn.LayerNorm default; an architecture's own eps is cfg.arch.norm_eps


class LayerNormCache(NamedTuple):
    X: np.ndarray
    gamma: np.ndarray | None
    mean: np.ndarray
    rstd: np.ndarray


def layernorm_forward(X, gamma=None, beta=None, eps=EPS):
    """X (..., D), gamma/beta (D,) or None -> (Y (..., D), cache)."""
    mean = X.mean(axis=-1, keepdims=True)
    Xc = X - mean
    var = (Xc * Xc).mean(axis=-1, keepdims=True)
    # A constant row has var = 0: rstd = 1/sqrt(eps) stays finite and xhat = 0.
    rstd = 1.0 / np.sqrt(var + eps)
    Y = Xc * rstd
    if gamma is not None:
        Y = Y * gamma + beta
    return Y, LayerNormCache(X, gamma, mean, rstd)


def layernorm_backward(dY, cache):
    """dY (..., D) -> (dX (..., D), dgamma (D,) or None, dbeta (D,) or None).

    dX = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),  dxhat = gamma * dY.
    The mean(dxhat) term is the gradient through `mean`; the xhat term the one through `var`.
    """
    X, gamma, mean, rstd = cache
    xhat = (X - mean) * rstd
    if gamma is not None:
        rows = dY.reshape(-1, dY.shape[-1])
        dgamma = (rows * xhat.reshape(rows.shape)).sum(axis=0)
        dbeta = rows.sum(axis=0)
        dxhat = dY * gamma
    else:
        dgamma = dbeta = None
        dxhat = dY
    dX = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dX, dgamma, dbeta


# ---------------------------------------------------------------- the fused twin (fast path)


def layernorm_forward_fused(X, gamma, beta, eps, xhat, rstd, Z, scratch, col):
    """The same forward on rows X (R, D), in place: writes xhat (R, D), rstd (R, 1) and
    Z = gamma xhat + beta (Z is not written without gamma: xhat is the output then).
    `scratch` (R, D) and `col` (R, 1) are work buffers."""
    row_mean(X, col)
    np.subtract(X, col, out=xhat)
    np.multiply(xhat, xhat, out=scratch)
    row_mean(scratch, rstd)
    rstd += eps
    np.sqrt(rstd, out=rstd)
    np.divide(1.0, rstd, out=rstd)
    xhat *= rstd
    if gamma is not None:
        np.multiply(xhat, gamma, out=Z)
        Z += beta


def layernorm_backward_fused(dZ, xhat, rstd, gamma, dX, scratch, col1, col2):
    """The same backward from the fused forward's xhat, rstd. dZ (R, D) is overwritten ->
    (dgamma, dbeta) or (None, None); the input gradient is added into dX, or left in dZ when
    dX is None."""
    dgamma = dbeta = None
    if gamma is not None:
        np.multiply(dZ, xhat, out=scratch)
        dgamma, dbeta = col_sum(scratch), col_sum(dZ)
        dZ *= gamma  # dxhat
    row_mean(dZ, col1)
    np.multiply(dZ, xhat, out=scratch)
    row_mean(scratch, col2)
    np.multiply(xhat, col2, out=scratch)
    dZ -= col1
    dZ -= scratch
    dZ *= rstd
    if dX is not None:
        dX += dZ
    return dgamma, dbeta
