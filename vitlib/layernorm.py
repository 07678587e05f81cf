"""LayerNorm over the last axis, with or without scale and shift (chapter 5).

Forward, per row x of length D:
    mean = x.mean(),  var = ((x - mean)**2).mean()   (population variance)
    rstd = 1 / sqrt(var + eps)
    xhat = (x - mean) * rstd
    y    = gamma * xhat + beta          (affine)   or   y = xhat   (seed style)

The cache holds exactly what llm.c's layernorm keeps: the input, mean and rstd.
xhat is recomputed in the backward pass from them.
"""

import numpy as np

EPS = 1e-5


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
    return Y, (X, gamma, mean, rstd)


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
