"""The digits data set (sklearn's bundled 8x8 handwritten digits) and its augmentation, in numpy.

    x_train, y_train, x_test, y_test = load_digits_split()      # x (N, 1, 8, 8) float32 in [0, 1]
    x_aug = random_shift(x_batch, rng, max_shift=1)              # a new array; x_batch is untouched

Pixels are divided by 16 (their maximum) and nothing else: any further normalisation is the
model's job (the first LayerNorm of every block). The split is sklearn's
train_test_split(test_size=0.2, random_state=0, stratify=y): 1437 training and 360 test images.
"""

import numpy as np


def load_digits_split(dtype=np.float32):
    """-> (x_train, y_train, x_test, y_test); x (N, 1, 8, 8) in `dtype`, y (N,) int64."""
    from sklearn.datasets import load_digits  # bundled with sklearn: nothing is downloaded
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(dtype)[:, None]  # (1797, 1, 8, 8)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return x_train, y_train, x_test, y_test


def random_shift(x, rng, max_shift=1, prob=1.0):
    """Shift each image of x (N, C, h, w), with probability `prob`, by its own random (dy, dx) in
    [-max_shift, max_shift]^2, filling the uncovered border with zeros (the digits' background).
    Returns a new array; the random numbers drawn do not depend on max_shift == 0 or prob."""
    N, _, h, w = x.shape
    s = max_shift
    dy, dx = rng.integers(-s, s + 1, size=(2, N))
    keep = rng.random(N) >= prob
    dy[keep], dx[keep] = 0, 0
    if s == 0:
        return x.copy()
    padded = np.zeros((N, x.shape[1], h + 2 * s, w + 2 * s), dtype=x.dtype)
    padded[:, :, s : s + h, s : s + w] = x
    # image n is the h x w window of its padded copy starting at (s - dy_n, s - dx_n)
    rows = (s - dy)[:, None] + np.arange(h)  # (N, h)
    cols = (s - dx)[:, None] + np.arange(w)  # (N, w)
    return padded[np.arange(N)[:, None, None, None], np.arange(x.shape[1])[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]  # fmt: skip
