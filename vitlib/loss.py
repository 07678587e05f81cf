"""Mean softmax cross-entropy (chapter 2), optionally against smoothed labels.

loss = -(1/N) sum_n sum_k t_nk log softmax(logits_n)_k,  t_n = (1 - eps) onehot(y_n) + eps / K
dlogits = (softmax(logits) - t) / N
eps = 0 (the default) is the plain cross-entropy -(1/N) sum_n log softmax(logits_n)[y_n]; eps > 0 is label
smoothing (torch's cross_entropy(..., label_smoothing=eps)). Computed through log-sum-exp, so logits of 1e4 give
a finite loss and gradient.
"""

from typing import NamedTuple

import numpy as np


class CrossEntropyCache(NamedTuple):
    logp: np.ndarray
    y: np.ndarray
    smoothing: float = 0.0


def log_softmax(Z):
    """Z (..., K) -> log softmax over the last axis, shifted by the max so exp never overflows."""
    shifted = Z - Z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def cross_entropy_forward(logits, y, smoothing=0.0):
    """logits (N, K), y (N,) ints, smoothing eps in [0, 1) -> (loss: float, cache)."""
    logp = log_softmax(logits)
    N = logits.shape[0]
    loss = -logp[np.arange(N), y].mean()
    if smoothing:  # (1 - eps) of the true class's term, eps of the mean over the K classes
        loss = (1.0 - smoothing) * loss - smoothing * logp.mean()
    return float(loss), CrossEntropyCache(logp, y, smoothing)


def cross_entropy_backward(dloss, cache):
    """dloss (the upstream gradient of the scalar loss, 1.0 at the top) -> dlogits (N, K)
    = dloss * (probs - t) / N, t = (1 - eps) onehot(y) + eps / K."""
    logp, y, smoothing = cache
    N, K = logp.shape
    dlogits = np.exp(logp)
    if smoothing:
        dlogits -= smoothing / K
    dlogits[np.arange(N), y] -= 1.0 - smoothing
    dlogits *= dloss / N
    return dlogits
