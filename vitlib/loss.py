"""Mean softmax cross-entropy (chapter 2).

loss = -(1/N) sum_n log softmax(logits_n)[y_n]
dlogits = (softmax(logits) - onehot(y)) / N
Computed through log-sum-exp, so logits of 1e4 give a finite loss and gradient.
"""

from typing import NamedTuple

import numpy as np


class CrossEntropyCache(NamedTuple):
    logp: np.ndarray
    y: np.ndarray


def log_softmax(Z):
    """Z (..., K) -> log softmax over the last axis, shifted by the max so exp never overflows."""
    shifted = Z - Z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def cross_entropy_forward(logits, y):
    """logits (N, K), y (N,) ints -> (loss: float, cache)."""
    logp = log_softmax(logits)
    N = logits.shape[0]
    loss = -logp[np.arange(N), y].mean()
    return float(loss), CrossEntropyCache(logp, y)


def cross_entropy_backward(dloss, cache):
    """dloss (the upstream gradient of the scalar loss, 1.0 at the top) -> dlogits (N, K)
    = dloss * (probs - onehot(y)) / N."""
    logp, y = cache
    N = logp.shape[0]
    dlogits = np.exp(logp)
    dlogits[np.arange(N), y] -= 1.0
    dlogits *= dloss / N
    return dlogits
