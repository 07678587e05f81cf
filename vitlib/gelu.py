"""GELU, exact (erf) and tanh-approximate (chapter 4).

exact:  g(x) = x * Phi(x),                Phi the standard normal CDF
        g'(x) = Phi(x) + x * phi(x),      phi the standard normal density
tanh:   g(x) = 0.5 x (1 + tanh(u)),       u = sqrt(2/pi) (x + 0.044715 x^3)
        g'(x) = 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)

The fused twin (`gelu_forward_fused`, what the fast path runs) writes g(U) and g'(U) into workspace
buffers in one pass, so its backward is one multiply. In float32 it evaluates Phi with a rational
minimax fit of erf (`phi_float32`, Eigen's float32 coefficients, `erf_float32`): scipy's erf costs
~16 ns an element here; the fit is ~6x faster, with max error 4.5e-7 for erf (<= 8 float32 ulps,
near |erf| ~ 1) and 2.3e-7 for Phi (tests/test_fast.py). float64 keeps scipy's erf.
"""

import math
from typing import NamedTuple

import numpy as np
from scipy.special import erf

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
C3 = 0.044715
KINDS = ("none", "tanh")


class GeluCache(NamedTuple):
    X: np.ndarray
    s: np.ndarray  # tanh(u) for "tanh", Phi(X) for "none"
    kind: str


def gelu_forward(X, approximate="none"):
    """X any shape -> (Y, cache). approximate: "none" (erf, torch's default) or "tanh"."""
    if approximate == "tanh":
        t = np.tanh(SQRT_2_OVER_PI * (X + C3 * X**3))
        return 0.5 * X * (1.0 + t), GeluCache(X, t, "tanh")
    if approximate == "none":
        Phi = 0.5 * (1.0 + erf(X * INV_SQRT_2))
        return X * Phi, GeluCache(X, Phi, "none")
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


# ---------------------------------------------------------------- the fused twin (fast path)

# erf(x) ~ x P(x^2) / Q(x^2) on [-4, 4] (erf rounds to +-1 in float32 outside); Eigen's float32
# minimax coefficients (generic_fast_erf_float), highest power first.
_ERF_P = (
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
_ERF_Q = (
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
)


def _horner(z, coefs, out):
    """out = c0 z^n + c1 z^(n-1) + ... + cn, two in-place passes a coefficient."""
    np.multiply(z, coefs[0], out=out)
    out += coefs[1]
    for c in coefs[2:]:
        out *= z
        out += c
    return out


def erf_float32(x, out, z, p):
    """erf of a float32 array into `out` (which may be x); `z` and `p` are scratch arrays of x's shape."""
    np.clip(x, -4.0, 4.0, out=out)
    np.multiply(out, out, out=z)
    _horner(z, _ERF_P, p)
    out *= p  # x P(x^2)
    _horner(z, _ERF_Q, p)
    out /= p  # x P(x^2) / Q(x^2)
    return out


# Phi(u) = 1/2 + erf(u / sqrt 2) / 2 = 1/2 + u P(u^2) / Q(u^2): the same rational with x = u / sqrt 2
# folded into its coefficients (x^(2k) = u^(2k) / 2^k; the 1/2 and 1/sqrt 2 into P), 3 passes fewer.
_PHI_P = tuple(0.5 * INV_SQRT_2 * c / 2.0 ** (len(_ERF_P) - 1 - k) for k, c in enumerate(_ERF_P))
_PHI_Q = tuple(c / 2.0 ** (len(_ERF_Q) - 1 - k) for k, c in enumerate(_ERF_Q))
_PHI_CLIP = 4.0 * math.sqrt(2.0)


def phi_float32(u, out, z, p):
    """The standard normal CDF Phi(u) of a float32 array into `out`; `z`, `p` scratch of u's shape."""
    np.clip(u, -_PHI_CLIP, _PHI_CLIP, out=out)
    np.multiply(out, out, out=z)
    _horner(z, _PHI_P, p)
    out *= p
    _horner(z, _PHI_Q, p)
    out /= p
    out += 0.5
    np.maximum(out, 0.0, out=out)  # far left the rational overshoots by an ulp: -6e-8, not 0
    return out


def gelu_forward_fused(U, G, dgelu, kind, t, t2):
    """G = gelu(U) and dgelu = gelu'(U), in place; t, t2 scratch of U's shape (U is kept).
    The backward is then dU = dG * dgelu."""
    if kind == "tanh":
        np.multiply(U, U, out=dgelu)
        np.multiply(dgelu, C3, out=t)
        t += 1.0
        t *= U
        t *= SQRT_2_OVER_PI
        np.tanh(t, out=t)
        np.add(t, 1.0, out=G)
        G *= 0.5  # 0.5 (1 + tanh(u))
        dgelu *= 3.0 * C3
        dgelu += 1.0
        dgelu *= 0.5 * SQRT_2_OVER_PI
        dgelu *= U
        np.multiply(t, t, out=t)
        np.subtract(1.0, t, out=t)
        dgelu *= t
        dgelu += G
        G *= U
        return
    if kind != "none":
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if U.dtype == np.float32:
        phi_float32(U, t, t2, G)
    else:
        np.multiply(U, INV_SQRT_2, out=t)
        erf(t, out=t)
        t += 1.0
        t *= 0.5  # Phi(U)
    np.multiply(U, t, out=G)
    np.multiply(U, U, out=dgelu)
    dgelu *= -0.5
    np.exp(dgelu, out=dgelu)
    dgelu *= INV_SQRT_2PI  # phi(U)
    dgelu *= U
    dgelu += t  # Phi + U phi
