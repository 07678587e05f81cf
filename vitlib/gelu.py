"""GELU, exact (erf) and tanh-approximate (chapter 4).

exact:  g(x) = x * Phi(x),                Phi the standard normal CDF
        g'(x) = Phi(x) + x * phi(x),      phi the standard normal density
tanh:   g(x) = 0.5 x (1 + tanh(u)),       u = sqrt(2/pi) (x + 0.044715 x^3)
        g'(x) = 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
"""

import math

import numpy as np
from scipy.special import erf

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
C3 = 0.044715


def gelu_forward(X, approximate="none"):
    """X any shape -> (Y, cache). approximate: "none" (erf, torch's default) or "tanh"."""
    if approximate == "tanh":
        t = np.tanh(SQRT_2_OVER_PI * (X + C3 * X**3))
        return 0.5 * X * (1.0 + t), (X, t, "tanh")
    if approximate == "none":
        Phi = 0.5 * (1.0 + erf(X * INV_SQRT_2))
        return X * Phi, (X, Phi, "none")
    raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")


def gelu_backward(dY, cache):
    """dY -> dX = dY * g'(X); the cache holds tanh(u) or Phi(X) so nothing is recomputed twice."""
    X, s, kind = cache
    if kind == "tanh":
        dgelu = 0.5 * (1.0 + s) + 0.5 * X * (1.0 - s * s) * SQRT_2_OVER_PI * (1.0 + 3.0 * C3 * X * X)
    else:
        phi = INV_SQRT_2PI * np.exp(-0.5 * X * X)
        dgelu = s + X * phi
    return dY * dgelu
