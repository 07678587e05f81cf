"""Patches, cls token, position embedding and pooling (chapters 1 and 8).

Legend: N batch, C channels, (ph, pw) patch size, Np patches, F = C*ph*pw patch length,
T = n_cls + Np tokens, D model width.

Two patch layouts flatten the same pixels in different orders:
    "cpp": (c, p1, p2) -- the exercise: (N,C,Hp,ph,Wp,pw) -> (N,Hp,Wp,C,ph,pw)
    "ppc": (p1, p2, c) -- lucidrains: 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'
"""

from typing import NamedTuple

import numpy as np


class TokensCache(NamedTuple):
    n_cls: int  # how many cls rows lead the token matrix


class PoolCache(NamedTuple):
    shape: tuple  # (N, T, D) of the pooled token matrix
    pool: str


def patchify(x, patch_size, layout):
    """x (N, C, img_h, img_w) -> patches (N, Np, F), a fresh C-ordered array."""
    N, C, img_h, img_w = x.shape
    ph, pw = patch_size
    Hp, Wp = img_h // ph, img_w // pw
    g = x.reshape(N, C, Hp, ph, Wp, pw)
    if layout == "cpp":
        g = g.transpose(0, 2, 4, 1, 3, 5)  # (N, Hp, Wp, C, ph, pw)
    elif layout == "ppc":
        g = g.transpose(0, 2, 4, 3, 5, 1)  # (N, Hp, Wp, ph, pw, C)
    else:
        raise ValueError(f"layout must be 'cpp' or 'ppc', got {layout!r}")
    return np.ascontiguousarray(g).reshape(N, Hp * Wp, C * ph * pw)


def tokens_forward(E, cls, pos):
    """E (N, Np, D) patch embeddings, cls (n_cls, D), pos (T, D) -> X0 = [cls; E] + pos (N, T, D)."""
    N, _, D = E.shape
    n_cls = cls.shape[0]
    X0 = np.empty((N, n_cls + E.shape[1], D), dtype=E.dtype)
    X0[:, :n_cls] = cls
    X0[:, n_cls:] = E
    X0 += pos
    return X0, TokensCache(n_cls)


def tokens_backward(dX0, cache):
    """-> (dE, dcls, dpos). cls and pos are broadcast over the batch, so their gradients
    are sums over it; pos is added to every token, cls only to the first n_cls."""
    (n_cls,) = cache
    dpos = dX0.sum(axis=0)
    dcls = dX0[:, :n_cls].sum(axis=0)
    dE = dX0[:, n_cls:]
    return dE, dcls, dpos


def pool_forward(X, pool):
    """X (N, T, D) -> pooled (N, D): the cls token's row, or the mean over all T tokens."""
    if pool == "cls":
        return X[:, 0].copy(), PoolCache(X.shape, pool)
    if pool == "mean":
        return X.mean(axis=1), PoolCache(X.shape, pool)
    raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")


def pool_backward(dpooled, cache):
    """-> dX (N, T, D): zero except row 0 for cls; dpooled / T in every row for mean."""
    shape, pool = cache
    if pool == "cls":
        dX = np.zeros(shape, dtype=dpooled.dtype)
        dX[:, 0] = dpooled
        return dX
    return np.broadcast_to(dpooled[:, None, :] / shape[1], shape).copy()
