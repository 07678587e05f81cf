"""The bug zoo (chapter 13): backward-pass mistakes people really make, and how the checks catch them.

Each bug is one of vitlib's real layer functions broken in one place: a wrapper that feeds it
a wrong input or undoes one of its terms, or, for a one- to three-line function, its broken
twin. No layer's code is copied here. `injected(name)` swaps the bug into the module that looks
the function up at call time, for the duration of a `with` block, and puts the original back
even if the block raises:

    with vitlib.bugs.injected("softmax_backward_no_subtraction"):
        loss, grads = vitlib.bugs.loss_and_grads(params, x, y, cfg)   # wrong gradients
    # vitlib is whole again here

Only the hand-written teaching path (vitlib.model.forward / vitlib.model.backward) is affected,
and `loss_and_grads` below always takes that path. The forward pass is never touched, so the
loss, and any finite-difference gradient, is the same with or without a bug.
"""

import contextlib
import importlib
from dataclasses import dataclass

import numpy as np

from . import attention, model
from .embed import tokens_backward
from .layernorm import layernorm_backward
from .linear import linear_backward
from .loss import cross_entropy_backward, cross_entropy_forward
from .params import param_shapes
from .validate import check_images, check_labels, check_params

# ------------------------------------------------------------------ the broken functions


@contextlib.contextmanager
def _swapped(module, attr, fn):
    """module.attr = fn inside the block (the layer functions look their helpers up at call time)."""
    original = getattr(module, attr)
    setattr(module, attr, fn)
    try:
        yield
    finally:
        setattr(module, attr, original)


def linear_backward_missing_transpose(dY, cache):
    """BUG: dX = dY W instead of dY W^T.

    W is (Din, Dout) and dY (..., Dout), so dY W only runs when Din == Dout. A rectangular W turns
    the bug into a shape error at once; a square W runs and returns wrong numbers silently.
    dW and db are right: the bug corrupts only what flows further back.
    (Built as the real linear_backward handed W^T in place of W: its dX line then computes dY W.)
    """
    return linear_backward(dY, cache._replace(W=cache.W.T))


def tokens_backward_not_summed(dX0, cache):
    """BUG: the broadcast over the batch is never summed back.

    Every image adds the same cls and pos, so their gradients are sums over the batch axis. This
    version takes the first image's slice, dX0[0]: right when N = 1, wrong for any larger batch.
    (Built as the real tokens_backward run on the first image alone for dcls and dpos.)
    """
    dE, _, _ = tokens_backward(dX0, cache)
    _, dcls, dpos = tokens_backward(dX0[:1], cache)  # should be the whole batch
    return dE, dcls, dpos


def _merge_without_permute(Z):
    """(N, H, T, Dh) -> (N, T, H*Dh) by a bare reshape: the heads axis is never moved back."""
    N, H, T, Dh = Z.shape
    return Z.reshape(N, T, H * Dh)  # should be Z.transpose(0, 2, 1, 3).reshape(N, T, H * Dh)


def attention_backward_heads_not_permuted(dY, cache):
    """BUG: dQ, dK, dV (N, H, T, Dh) are merged to (N, T, H*Dh) by a bare reshape.

    The forward pass merged heads as transpose(0, 2, 1, 3) then reshape; a reshape alone reads the
    same memory in the wrong order and mixes tokens with heads. With H = 1 the transpose moves an
    axis of length 1, which is a no-op, so the bug hides.
    (Built as the real attention_backward with its split_heads_backward replaced.)
    """
    with _swapped(attention, "split_heads_backward", _merge_without_permute):
        return attention.attention_backward(dY, cache)


def _scores_backward_no_transpose(dS, Q, K, scale):
    """attention.scores_backward with dK = dS Q scale (should be dS^T Q scale)."""
    return (dS @ K) * scale, (dS @ Q) * scale


def attention_backward_dK_missing_transpose(dY, cache):
    """BUG: dK = dS Q / sqrt(Dh) instead of dS^T Q / sqrt(Dh).

    S = Q K^T is (T, T) per head: square, always. No shape ever objects, in any configuration.
    Only W_k (and everything before it) goes wrong; W_q, W_v and W_o stay right.
    (Built as the real attention_backward with its scores_backward replaced.)
    """
    with _swapped(attention, "scores_backward", _scores_backward_no_transpose):
        return attention.attention_backward(dY, cache)


def softmax_backward_no_subtraction(dA, A):
    """BUG: dS = A * dA, the softmax Jacobian's diagonal only.

    The Jacobian of A = softmax(S) is diag(A) - A A^T; the subtraction term, rowsum(dA * A), is the
    gradient through the normalising sum. Dropping it treats every row of A as if its entries did
    not compete with each other.
    """
    return A * dA  # should be A * (dA - (dA * A).sum(axis=-1, keepdims=True))


def layernorm_backward_no_mean_term(dY, cache):
    """BUG: dX = rstd (dxhat - xhat mean(dxhat xhat)), the mean(dxhat) term dropped.

    That term is the gradient through the row mean: forgetting that `mean` depends on X too.
    (Built as the real layernorm_backward with that one term added back.)
    """
    dX, dgamma, dbeta = layernorm_backward(dY, cache)
    dxhat = dY if cache.gamma is None else dY * cache.gamma
    return dX + cache.rstd * dxhat.mean(axis=-1, keepdims=True), dgamma, dbeta


def gelu_backward_no_product_rule(dY, cache):
    """BUG: g'(x) = Phi(x) for g(x) = x Phi(x), the product rule's x phi(x) term dropped.

    (For the tanh form: 0.5 (1 + tanh u), without the term from u's dependence on x.)
    """
    X, s, kind = cache
    if kind == "tanh":
        return dY * 0.5 * (1.0 + s)
    return dY * s  # should be dY * (s + X * phi(X)), phi the normal density


def block_backward_residual_forgotten(dX, cache):
    """BUG: after the MLP branch, dX = dX_ln2 instead of dX + dX_ln2.

    X feeds both the skip connection and LN2; its gradient is the sum of both paths. Dropping the
    skip path keeps the MLP's own gradients right and starves everything below it.
    (Built as the real block_backward whose first LayerNorm backward, LN2's, returns dX_ln2 - dX:
    the line `dX = dX + dX_ln2` then yields dX_ln2.)
    """
    seen = []

    def ln_backward(dZ, c):
        dX_ln, dgamma, dbeta = layernorm_backward(dZ, c)
        if not seen:  # LN2, the first LayerNorm the block's backward reaches
            dX_ln = dX_ln - dX
        seen.append(c)
        return dX_ln, dgamma, dbeta

    with _swapped(model, "layernorm_backward", ln_backward):
        return _BLOCK_BACKWARD(dX, cache)


_BLOCK_BACKWARD = model.block_backward  # the real one: while the bug is injected, model's name points at the bug


# ------------------------------------------------------------------ the catalogue


@dataclass(frozen=True)
class Bug:
    """One exhibit: which function it replaces, the wrong line and the right one, when it hides."""

    name: str
    target: str  # "module.function" that the bug replaces while injected
    fn: object
    wrong: str
    right: str
    hides_when: str

    @property
    def doc(self) -> str:
        return " ".join(self.fn.__doc__.split())


BUGS = {
    b.name: b
    for b in [
        Bug(
            "linear_backward_missing_transpose",
            "vitlib.model.linear_backward",
            linear_backward_missing_transpose,
            "dX = dY @ W",
            "dX = dY @ W.T",
            "W square (Din == Dout); otherwise it is a shape error",
        ),
        Bug(
            "tokens_backward_not_summed",
            "vitlib.model.tokens_backward",
            tokens_backward_not_summed,
            "dpos = dX0[0]",
            "dpos = dX0.sum(axis=0)",
            "batch of one (N == 1)",
        ),
        Bug(
            "attention_backward_heads_not_permuted",
            "vitlib.model.attention_backward",
            attention_backward_heads_not_permuted,
            "dQ.reshape(N, T, H * Dh)",
            "dQ.transpose(0, 2, 1, 3).reshape(N, T, H * Dh)",
            "one head (H == 1)",
        ),
        Bug(
            "attention_backward_dK_missing_transpose",
            "vitlib.model.attention_backward",
            attention_backward_dK_missing_transpose,
            "dK = dS @ Q * scale",
            "dK = dS^T @ Q * scale",
            "never by shape: S is (T, T)",
        ),
        Bug(
            "softmax_backward_no_subtraction",
            "vitlib.attention.softmax_backward",
            softmax_backward_no_subtraction,
            "dS = A * dA",
            "dS = A * (dA - rowsum(dA * A))",
            "never",
        ),
        Bug(
            "layernorm_backward_no_mean_term",
            "vitlib.model.layernorm_backward",
            layernorm_backward_no_mean_term,
            "rstd * (dxhat - xhat * mean(dxhat * xhat))",
            "rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))",
            "never",
        ),
        Bug(
            "gelu_backward_no_product_rule",
            "vitlib.model.gelu_backward",
            gelu_backward_no_product_rule,
            "dU = dG * Phi(U)",
            "dU = dG * (Phi(U) + U * phi(U))",
            "never",
        ),
        Bug(
            "block_backward_residual_forgotten",
            "vitlib.model.block_backward",
            block_backward_residual_forgotten,
            "dX = dX_ln2",
            "dX = dX + dX_ln2",
            "never",
        ),
    ]
}


def _resolve(target):
    module_name, attr = target.rsplit(".", 1)
    return importlib.import_module(module_name), attr


@contextlib.contextmanager
def injected(name):
    """Within the block, BUGS[name] replaces its target function; the original is restored on
    exit, also when the block raises. Yields the Bug."""
    if name not in BUGS:
        raise KeyError(f"unknown bug {name!r}; the zoo holds {sorted(BUGS)}")
    bug = BUGS[name]
    module, attr = _resolve(bug.target)
    original = getattr(module, attr)
    setattr(module, attr, bug.fn)
    try:
        yield bug
    finally:
        setattr(module, attr, original)


# ------------------------------------------------------------------ running and measuring


def loss_and_grads(params, x, y, cfg):
    """Like vitlib.loss_and_grads, but always on the teaching path: vitlib.model.forward, the
    cross-entropy, vitlib.model.backward, each looked up at call time so an injected bug is used."""
    dtype = check_params(params, cfg)
    x = check_images(x, cfg, dtype)
    y = check_labels(y, x.shape[0], cfg.num_classes)
    logits, caches = model.forward(params, x, cfg)
    loss, c_loss = cross_entropy_forward(logits, y)
    return loss, model.backward(cross_entropy_backward(1.0, c_loss), caches, cfg)


def backward_order(cfg):
    """Parameter names in the order the backward pass reaches them, from the loss down."""
    return list(reversed(param_shapes(cfg)))


def rel_errors(grads, reference):
    """{name: rel_error} per tensor. A reference value is a full array (e.g. torch's .grad) or a
    vitlib.gradcheck.GradCheck (finite differences at some coordinates: compared there)."""
    from .gradcheck import rel_error

    out = {}
    for name, ref in reference.items():
        if hasattr(ref, "coords"):
            ours = np.array([grads[name][c] for c in ref.coords], dtype=np.float64)
            out[name] = rel_error(ours, ref.numeric)
        else:
            out[name] = rel_error(grads[name], ref)
    return out


def first_wrong(errors, cfg, tol=1e-6):
    """The first tensor, walking backward from the loss, whose relative error exceeds tol (or None).
    The bug sits between it and the tensor checked just before it."""
    for name in backward_order(cfg):
        if name in errors and errors[name] > tol:
            return name
    return None
