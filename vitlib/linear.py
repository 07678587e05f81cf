"""Linear layer  Y = X W + b  (chapter 3).

Shapes: X (..., Din), W (Din, Dout), b (Dout,) or None, Y (..., Dout).
W is stored (Din, Dout), the maths' orientation; torch stores its transpose.
"""


def linear_forward(X, W, b=None):
    """Y = X W + b  ->  (Y, cache)."""
    Y = X @ W
    if b is not None:
        Y += b  # Y is fresh, so in place is safe and saves a temporary
    return Y, (X, W, b is not None)


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
