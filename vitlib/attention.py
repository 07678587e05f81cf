"""Multi-head self-attention and its softmax (chapter 6).

Legend: N batch, T tokens, D model width, H heads, Dh head width.
    Q = X W_q,  K = X W_k,  V = X W_v                 (N, T, H*Dh), split to (N, H, T, Dh)
    S = Q K^T / sqrt(Dh)                              scores            (N, H, T, T)
    A = softmax(S)  over the last axis                attention weights (N, H, T, T)
    O = A V, heads merged back                        (N, T, H*Dh)
    Y = O W_o + b_o                                   (N, T, D); identity when W_o is None
Backward, in reverse:
    dO = dY W_o^T,  dW_o = O^T dY,  db_o = sum dY
    dA = dO V^T,    dV = A^T dO
    dS = A * (dA - rowsum(dA * A))                    the softmax Jacobian-vector product
    dQ = dS K / sqrt(Dh),  dK = dS^T Q / sqrt(Dh)
    dW_q = X^T dQ,  dW_k = X^T dK,  dW_v = X^T dV,  dX = dQ W_q^T + dK W_k^T + dV W_v^T
So W_q and W_k learn only through the scores S, and W_v only through the values V.
"""

import numpy as np


def softmax_forward(S):
    """Row softmax over the last axis, max-shifted so it never overflows."""
    E = np.exp(S - S.max(axis=-1, keepdims=True))
    return E / E.sum(axis=-1, keepdims=True)


def softmax_backward(dA, A):
    """dS = A * (dA - sum_j dA_j A_j): the Jacobian diag(A) - A A^T applied to dA."""
    return A * (dA - (dA * A).sum(axis=-1, keepdims=True))


def split_heads(Z, H):
    """(N, T, H*Dh) -> (N, H, T, Dh): head h owns columns h*Dh:(h+1)*Dh, as in 'b n (h d)'."""
    N, T, HDh = Z.shape
    return Z.reshape(N, T, H, HDh // H).transpose(0, 2, 1, 3)


def merge_heads(Z):
    """(N, H, T, Dh) -> (N, T, H*Dh): the inverse of split_heads."""
    N, H, T, Dh = Z.shape
    return Z.transpose(0, 2, 1, 3).reshape(N, T, H * Dh)


def attention_forward(X, W_q, W_k, W_v, W_o, b_o, heads):
    """X (N, T, D); W_q, W_k, W_v (D, H*Dh); W_o (H*Dh, D) or None; b_o (D,) or None."""
    H = heads
    Dh = W_q.shape[1] // H
    scale = Dh**-0.5
    Q, K, V = split_heads(X @ W_q, H), split_heads(X @ W_k, H), split_heads(X @ W_v, H)
    S = (Q @ K.transpose(0, 1, 3, 2)) * scale
    A = softmax_forward(S)
    O = merge_heads(A @ V)
    if W_o is None:
        Y = O
    else:
        Y = O @ W_o
        if b_o is not None:
            Y += b_o
    return Y, (X, W_q, W_k, W_v, W_o, b_o is not None, Q, K, V, A, O, scale)


def attention_backward(dY, cache):
    """dY (N, T, D) -> dict with dX and dW_q, dW_k, dW_v, dW_o, db_o (None where absent)."""
    X, W_q, W_k, W_v, W_o, has_b_o, Q, K, V, A, O, scale = cache
    H = Q.shape[1]
    D = X.shape[-1]
    rows = dY.reshape(-1, dY.shape[-1])
    if W_o is None:
        dO, dW_o, db_o = dY, None, None
    else:
        dW_o = O.reshape(-1, O.shape[-1]).T @ rows
        db_o = rows.sum(axis=0) if has_b_o else None
        dO = dY @ W_o.T
    dO = split_heads(dO, H)  # heads split again, exactly as O was merged
    dA = dO @ V.transpose(0, 1, 3, 2)
    dV = A.transpose(0, 1, 3, 2) @ dO
    dS = softmax_backward(dA, A)
    dQ = (dS @ K) * scale
    dK = (dS.transpose(0, 1, 3, 2) @ Q) * scale
    dQ, dK, dV = merge_heads(dQ), merge_heads(dK), merge_heads(dV)
    Xr = X.reshape(-1, D)
    dW_q = Xr.T @ dQ.reshape(-1, dQ.shape[-1])
    dW_k = Xr.T @ dK.reshape(-1, dK.shape[-1])
    dW_v = Xr.T @ dV.reshape(-1, dV.shape[-1])
    dX = dQ @ W_q.T + dK @ W_k.T + dV @ W_v.T  # X feeds three branches: their gradients add
    return {"dX": dX, "dW_q": dW_q, "dW_k": dW_k, "dW_v": dW_v, "dW_o": dW_o, "db_o": db_o}


def attention_weights(cache):
    """A (N, H, T, T) from an attention cache: the one place that knows the cache's layout."""
    return cache[9]
