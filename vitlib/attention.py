"""Multi-head self-attention and its softmax (chapter 6).

Legend: N batch, T tokens, D model width, H heads, Dh head width.
    Q = X W_q + b_q,  K = X W_k + b_k,  V = X W_v + b_v   (N, T, H*Dh), split to (N, H, T, Dh);
                                                          the b's only where the architecture has them
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
    db_q = sum dQ,  db_k = sum dK,  db_v = sum dV     (sums over batch and tokens)
So W_q and W_k learn only through the scores S, and W_v only through the values V. And db_k is
zero in exact arithmetic: b_k adds q.b_k to every score of a row, and softmax ignores a shift.

The fused twins of the softmax (`softmax_forward_fused`, `softmax_backward_fused`) are what the
fast path runs, in place in its workspace; tests/test_layers.py holds fused == teaching == torch.
"""

from typing import NamedTuple

import numpy as np

from .linear import ones


class AttentionCache(NamedTuple):
    X: np.ndarray
    W_q: np.ndarray
    W_k: np.ndarray
    W_v: np.ndarray
    W_o: np.ndarray | None
    has_b_o: bool
    Q: np.ndarray  # (N, H, T, Dh)
    K: np.ndarray
    V: np.ndarray
    A: np.ndarray  # (N, H, T, T)
    O: np.ndarray  # (N, T, H*Dh)
    scale: float
    has_b_qkv: bool = False


class AttentionGrads(NamedTuple):
    dX: np.ndarray
    dW_q: np.ndarray
    dW_k: np.ndarray
    dW_v: np.ndarray
    dW_o: np.ndarray | None
    db_o: np.ndarray | None
    db_q: np.ndarray | None = None
    db_k: np.ndarray | None = None
    db_v: np.ndarray | None = None


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


def split_heads_backward(dZ):
    """The adjoint of split_heads (a permutation) is its inverse: merge the heads of the gradient."""
    return merge_heads(dZ)


def scores_backward(dS, Q, K, scale):
    """S = Q K^T * scale  ->  (dQ, dK) = (dS K * scale, dS^T Q * scale)."""
    dQ = (dS @ K) * scale
    dK = (dS.transpose(0, 1, 3, 2) @ Q) * scale
    return dQ, dK


def _bias_sum(dZ):
    """db of a linear layer: dZ (N, T, width) summed over batch and tokens."""
    return dZ.reshape(-1, dZ.shape[-1]).sum(axis=0)


def attention_forward(X, W_q, W_k, W_v, W_o, b_o, heads, b_q=None, b_k=None, b_v=None):
    """X (N, T, D); W_q, W_k, W_v (D, H*Dh); W_o (H*Dh, D) or None; b_o (D,) or None;
    b_q, b_k, b_v (H*Dh,), all three or none."""
    H = heads
    Dh = W_q.shape[1] // H
    scale = Dh**-0.5
    has_b_qkv = b_q is not None
    if has_b_qkv != (b_k is not None) or has_b_qkv != (b_v is not None):
        raise ValueError("b_q, b_k and b_v come together: give all three or none")
    Zq, Zk, Zv = X @ W_q, X @ W_k, X @ W_v
    if has_b_qkv:
        Zq += b_q
        Zk += b_k
        Zv += b_v
    Q, K, V = split_heads(Zq, H), split_heads(Zk, H), split_heads(Zv, H)
    S = (Q @ K.transpose(0, 1, 3, 2)) * scale
    A = softmax_forward(S)
    O = merge_heads(A @ V)
    if W_o is None:
        Y = O
    else:
        Y = O @ W_o
        if b_o is not None:
            Y += b_o
    return Y, AttentionCache(X, W_q, W_k, W_v, W_o, b_o is not None, Q, K, V, A, O, scale, has_b_qkv)


def attention_backward(dY, cache):
    """dY (N, T, D) -> AttentionGrads(dX, dW_q, dW_k, dW_v, dW_o, db_o, db_q, db_k, db_v), None where absent."""
    X, W_q, W_k, W_v, W_o, has_b_o, Q, K, V, A, O, scale, has_b_qkv = cache
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
    dQ, dK = scores_backward(dS, Q, K, scale)
    dQ, dK, dV = split_heads_backward(dQ), split_heads_backward(dK), split_heads_backward(dV)
    Xr = X.reshape(-1, D)
    dW_q = Xr.T @ dQ.reshape(-1, dQ.shape[-1])
    dW_k = Xr.T @ dK.reshape(-1, dK.shape[-1])
    dW_v = Xr.T @ dV.reshape(-1, dV.shape[-1])
    dX = dQ @ W_q.T + dK @ W_k.T + dV @ W_v.T  # X feeds three branches: their gradients add
    db_q, db_k, db_v = (_bias_sum(dQ), _bias_sum(dK), _bias_sum(dV)) if has_b_qkv else (None, None, None)
    return AttentionGrads(dX, dW_q, dW_k, dW_v, dW_o, db_o, db_q, db_k, db_v)


def attention_weights(cache):
    """A (N, H, T, T) from an attention cache."""
    return cache.A


# ---------------------------------------------------------------- the fused twins (fast path)

SHIFT_RANGE = 80.0  # exp(-80) = 1.8e-35 is a normal number in float32 (and float64)


def shift_scores(S, rowmax):
    """S -= a shift that makes exp(S) safe, in place. Softmax does not depend on the shift.

    The teaching path subtracts each row's max; numpy's max along a short last axis costs
    several times a whole pass, while the max and min of the whole array cost a few percent of
    one. When all scores lie within SHIFT_RANGE, subtracting the global max is as safe: every
    exp lands in [exp(-80), 1], so none overflows and no row underflows to all zeros. Otherwise
    (or with a NaN or inf: the comparison is then False) rows are shifted by their own max.
    """
    hi, lo = S.max(), S.min()
    if hi - lo < SHIFT_RANGE:
        S -= hi
    else:
        np.max(S, axis=-1, keepdims=True, out=rowmax)
        S -= rowmax


def softmax_forward_fused(S, rowmax, rowsum):
    """S (N, H, T, T) -> A = softmax(S) in place (S's buffer); rowmax, rowsum (N, H, T, 1) work buffers.
    The row sums are a matrix-vector product."""
    T = S.shape[-1]
    shift_scores(S, rowmax)
    np.exp(S, out=S)
    np.matmul(S.reshape(-1, T), ones(T, 1.0, S.dtype), out=rowsum.reshape(-1))
    S /= rowsum


def softmax_backward_fused(dA, A, rowsum, scratch):
    """dA (N, H, T, T) -> dS = A * (dA - rowsum(dA * A)) in place (dA's buffer); rowsum (N, H, T, 1)
    and scratch (A's shape) work buffers."""
    T = A.shape[-1]
    dA *= A  # A * dA
    np.matmul(dA.reshape(-1, T), ones(T, 1.0, A.dtype), out=rowsum.reshape(-1))
    np.multiply(A, rowsum, out=scratch)
    dA -= scratch  # A * dA - A rowsum(A * dA)
