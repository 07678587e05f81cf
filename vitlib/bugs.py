"""The bug zoo (chapter 13): backward-pass mistakes people really make, and how the checks catch them.

Each bug is a small broken copy of one of vitlib's layer backward functions, with a docstring
saying what is wrong. `injected(name)` swaps it into the module that looks the function up at
call time, for the duration of a `with` block, and puts the original back even if the block
raises:

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

from .attention import merge_heads, softmax_backward, split_heads
from .layernorm import layernorm_backward
from .linear import linear_backward
from .loss import cross_entropy_backward, cross_entropy_forward
from .params import param_shapes
from .validate import check_images, check_labels, check_params

# ------------------------------------------------------------------ the broken functions


def linear_backward_missing_transpose(dY, cache):
    """BUG: dX = dY W instead of dY W^T.

    W is (Din, Dout) and dY (..., Dout), so dY W only runs when Din == Dout. A rectangular W turns
    the bug into a shape error at once; a square W runs and returns wrong numbers silently.
    dW and db are right: the bug corrupts only what flows further back.
    """
    X, W, has_b = cache
    dX = dY @ W  # should be dY @ W.T
    dW = X.reshape(-1, X.shape[-1]).T @ dY.reshape(-1, dY.shape[-1])
    db = dY.reshape(-1, dY.shape[-1]).sum(axis=0) if has_b else None
    return dX, dW, db


def tokens_backward_not_summed(dX0, n_cls):
    """BUG: the broadcast over the batch is never summed back.

    Every image adds the same cls and pos, so their gradients are sums over the batch axis. This
    version takes the first image's slice, dX0[0]: right when N = 1, wrong for any larger batch.
    """
    dpos = dX0[0]  # should be dX0.sum(axis=0)
    dcls = dX0[0, :n_cls]  # should be dX0[:, :n_cls].sum(axis=0)
    dE = dX0[:, n_cls:]
    return dE, dcls, dpos


def _merge_without_permute(Z):
    """(N, H, T, Dh) -> (N, T, H*Dh) by a bare reshape: the heads axis is never moved back."""
    N, H, T, Dh = Z.shape
    return Z.reshape(N, T, H * Dh)  # should be Z.transpose(0, 2, 1, 3).reshape(N, T, H * Dh)


def _attention_backward(dY, cache, merge=merge_heads, transpose_dS=True):
    """vitlib.attention.attention_backward, with two places where the bugs below go wrong."""
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
    dO = split_heads(dO, H)
    dA = dO @ V.transpose(0, 1, 3, 2)
    dV = A.transpose(0, 1, 3, 2) @ dO
    dS = softmax_backward(dA, A)
    dQ = (dS @ K) * scale
    dK = ((dS.transpose(0, 1, 3, 2) if transpose_dS else dS) @ Q) * scale
    dQ, dK, dV = merge(dQ), merge(dK), merge(dV)
    Xr = X.reshape(-1, D)
    dW_q = Xr.T @ dQ.reshape(-1, dQ.shape[-1])
    dW_k = Xr.T @ dK.reshape(-1, dK.shape[-1])
    dW_v = Xr.T @ dV.reshape(-1, dV.shape[-1])
    dX = dQ @ W_q.T + dK @ W_k.T + dV @ W_v.T
    return {"dX": dX, "dW_q": dW_q, "dW_k": dW_k, "dW_v": dW_v, "dW_o": dW_o, "db_o": db_o}


def attention_backward_heads_not_permuted(dY, cache):
    """BUG: dQ, dK, dV (N, H, T, Dh) are merged to (N, T, H*Dh) by a bare reshape.

    The forward pass merged heads as transpose(0, 2, 1, 3) then reshape; a reshape alone reads the
    same memory in the wrong order and mixes tokens with heads. With H = 1 the transpose moves an
    axis of length 1, which is a no-op, so the bug hides.
    """
    return _attention_backward(dY, cache, merge=_merge_without_permute)


def attention_backward_dK_missing_transpose(dY, cache):
    """BUG: dK = dS Q / sqrt(Dh) instead of dS^T Q / sqrt(Dh).

    S = Q K^T is (T, T) per head: square, always. No shape ever objects, in any configuration.
    Only W_k (and everything before it) goes wrong; W_q, W_v and W_o stay right.
    """
    return _attention_backward(dY, cache, transpose_dS=False)


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
    """
    X, gamma, mean, rstd = cache
    xhat = (X - mean) * rstd
    if gamma is not None:
        rows = dY.reshape(-1, dY.shape[-1])
        dgamma = (rows * xhat.reshape(rows.shape)).sum(axis=0)
        dbeta = rows.sum(axis=0)
        dxhat = dY * gamma
    else:
        dgamma = dbeta = None
        dxhat = dY
    dX = rstd * (dxhat - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))  # missing - dxhat.mean(...)
    return dX, dgamma, dbeta


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
    """
    from .attention import attention_backward
    from .gelu import gelu_backward

    c_ln1, c_attn, c_ln2, c_fc1, c_gelu, c_fc2 = cache
    g = {}
    dG, g["W_2"], g["b_2"] = linear_backward(dX, c_fc2)
    dU = gelu_backward(dG, c_gelu)
    dZ2, g["W_1"], g["b_1"] = linear_backward(dU, c_fc1)
    dX_ln2, g["ln2.gamma"], g["ln2.beta"] = layernorm_backward(dZ2, c_ln2)
    dX = dX_ln2  # should be dX + dX_ln2
    ga = attention_backward(dX, c_attn)
    for name in ("W_q", "W_k", "W_v", "W_o", "b_o"):
        g[name] = ga["d" + name]
    dX_ln1, g["ln1.gamma"], g["ln1.beta"] = layernorm_backward(ga["dX"], c_ln1)
    dX = dX + dX_ln1
    return dX, g


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
    from . import model

    dtype = check_params(params, cfg)
    x = check_images(x, cfg, dtype)
    y = check_labels(y, x.shape[0], cfg.num_classes)
    logits, caches = model.forward(params, x, cfg)
    loss, c_loss = cross_entropy_forward(logits, y)
    return loss, model.backward(cross_entropy_backward(c_loss), caches, cfg)


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
