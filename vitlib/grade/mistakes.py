"""The catalogue of known mistakes, for diagnosis: when the reader's answer is wrong, the grader
runs each mistake on the same case, and if one gives the reader's numbers, says which.

Two sources:
- the bug zoo of chapter 13 (`vitlib.bugs.BUGS`), run through vitlib's reference with the bug
  injected (`reference.zoo_injected`): every zoo bug that changes an exercise's answer applies;
- the mistakes below, written in the reader's own signatures (numpy, forward inputs).
Each text says what is wrong in words a student can act on: the wrong line, the right one.
"""

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import erf

from . import reference as R


@dataclass(frozen=True)
class Mistake:
    name: str
    exercise: str
    text: str
    fn: object

    def run(self, args):
        return self.fn(*args)


@dataclass(frozen=True)
class ZooMistake:
    name: str
    exercise: str
    text: str

    def run(self, args):
        with R.zoo_injected(self.name):
            return R.REFERENCES[self.exercise](*args)


# What the zoo's bugs mean, for a student (the zoo's own docstrings are written for chapter 13).
ZOO_TEXT = {
    "linear_backward_missing_transpose": (
        "Your dX equals dY @ W: the transpose is missing. For Y = X W the input gradient is dX = dY @ W.T; a "
        "square W lets dY @ W run, and the numbers come out wrong silently."
    ),
    "tokens_backward_not_summed": (
        "Your dcls / dpos are the FIRST image's slice, dX0[0]: cls and pos are added to every image of the "
        "batch, so their gradients are sums over the batch axis: dpos = dX0.sum(axis=0), dcls = "
        "dX0[:, :n_cls].sum(axis=0)."
    ),
    "attention_backward_heads_not_permuted": (
        "Your heads are merged back WITHOUT the permute: dQ, dK, dV (N, H, T, D_h) were reshaped straight to "
        "(N, T, H*D_h), which mixes tokens with heads. Undo the split exactly: .transpose(0, 2, 1, 3) first, "
        "then reshape (one head hides this mistake)."
    ),
    "attention_backward_dK_missing_transpose": (
        "Your dK is dS @ Q / sqrt(D_h): the transpose of dS is missing. S = Q K^T, so dK = dS^T @ Q / sqrt(D_h) "
        "(per head: dS.transpose(0, 1, 3, 2)). S is (T, T), so no shape ever complains."
    ),
    "softmax_backward_no_subtraction": (
        "Your softmax backward is dS = A * dA: only the Jacobian's diagonal. The entries of a softmax row share "
        "one normaliser, so dS = A * (dA - (dA * A).sum(axis=-1, keepdims=True))."
    ),
    "layernorm_backward_no_mean_term": (
        "Your dX equals LayerNorm's backward WITHOUT the mean term: the gradient through `mean` is missing. "
        "mean depends on X too, so dX = rstd * (dxhat - dxhat.mean(-1, keepdims=True) - xhat * (dxhat * "
        "xhat).mean(-1, keepdims=True))."
    ),
    "gelu_backward_no_product_rule": (
        "Your GELU derivative forgets the product rule: GELU(x) = x * Phi(x), so gelu'(x) = Phi(x) + x * "
        "phi(x) (for the tanh form, the x * d/dx[0.5 (1 + tanh u)] term is missing)."
    ),
    "block_backward_residual_forgotten": (
        "You forgot a residual: after the MLP branch your dX is only the LayerNorm path. X feeds both the skip "
        "connection and LN2, so the gradients add: dX = dY + (LN2's backward of dZ2)."
    ),
}


def zoo_mistakes(exercise):
    out = []
    for name, bug in R.zoo_bugs():
        text = ZOO_TEXT.get(name)
        if text is None:
            doc = getattr(bug, "doc", "") or ""
            text = f"Your answer matches the bug zoo's `{name}`: {doc}"
            wrong, right = getattr(bug, "wrong", None), getattr(bug, "right", None)
            if wrong and right:
                text += f" Wrong: `{wrong}`; right: `{right}`."
        out.append(ZooMistake(name, exercise, text))
    return out


# ------------------------------------------------------------------ helpers (numpy, forward inputs)


def _softmax(Z, axis=-1):
    E = np.exp(Z - Z.max(axis=axis, keepdims=True))
    return E / E.sum(axis=axis, keepdims=True)


def _onehot(y, K):
    Y = np.zeros((len(y), K))
    Y[np.arange(len(y)), y] = 1.0
    return Y


def _split(Z, H):
    N, T, HD = Z.shape
    return Z.reshape(N, T, H, HD // H).transpose(0, 2, 1, 3)


def _merge(Z):
    N, H, T, Dh = Z.shape
    return Z.transpose(0, 2, 1, 3).reshape(N, T, H * Dh)


def _attn(dY, X, W_q, W_k, W_v, W_o, H, scale_dQ=True, scale_dK=True, dV_transpose=True, QKT=False):
    """Multi-head attention backward, numpy, with switches for the catalogued mistakes."""
    Q, K, V = _split(X @ W_q, H), _split(X @ W_k, H), _split(X @ W_v, H)
    Dh = Q.shape[-1]
    s = 1.0 / math.sqrt(Dh)
    if QKT:
        S = Q @ K.T * s  # the mistake itself: .T on a 4-D array reverses every axis
    else:
        S = (Q @ K.transpose(0, 1, 3, 2)) * s
    A = _softmax(S)
    O = _merge(A @ V)
    if W_o is None:
        dO, dW_o = dY, None
    else:
        dW_o = O.reshape(-1, O.shape[-1]).T @ dY.reshape(-1, dY.shape[-1])
        dO = dY @ W_o.T
    dO = _split(dO, H)
    dA = dO @ V.transpose(0, 1, 3, 2)
    dV = (A.transpose(0, 1, 3, 2) if dV_transpose else A) @ dO
    dS = A * (dA - (dA * A).sum(axis=-1, keepdims=True))
    dQ = dS @ K * (s if scale_dQ else 1.0)
    dK = dS.transpose(0, 1, 3, 2) @ Q * (s if scale_dK else 1.0)
    dQ, dK, dV = _merge(dQ), _merge(dK), _merge(dV)
    Xr = X.reshape(-1, X.shape[-1])
    dW_q = Xr.T @ dQ.reshape(-1, dQ.shape[-1])
    dW_k = Xr.T @ dK.reshape(-1, dK.shape[-1])
    dW_v = Xr.T @ dV.reshape(-1, dV.shape[-1])
    dX = dQ @ W_q.T + dK @ W_k.T + dV @ W_v.T
    return dX, dW_q, dW_k, dW_v, dW_o


def _head(**kw):
    return lambda dO, X, W_q, W_k, W_v: _attn(dO, X, W_q, W_k, W_v, None, 1, **kw)[:4]


def _multi(**kw):
    return lambda dY, X, W_q, W_k, W_v, W_o, heads: _attn(dY, X, W_q, W_k, W_v, W_o, heads, **kw)


def _ln(dY, X, gamma, beta, eps, ddof=0, mean_term=True, var_term=True, swap=False, fixed_eps=None, inplace=False):
    """LayerNorm backward, numpy, with switches for the catalogued mistakes."""
    eps = fixed_eps if fixed_eps is not None else eps
    D = X.shape[-1]
    mean = X.mean(axis=-1, keepdims=True)
    if inplace:
        X -= mean  # the mistake: the caller's X is now centred
        Xc = X
    else:
        Xc = X - mean
    var = (Xc * Xc).sum(axis=-1, keepdims=True) / (D - ddof)
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = Xc * rstd
    dxhat = dY * gamma if gamma is not None else dY
    dX = dxhat.copy()
    if mean_term:
        dX = dX - dxhat.mean(axis=-1, keepdims=True)
    if var_term:
        dX = dX - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True)
    dX = rstd * dX
    if gamma is None:
        return dX, None, None
    rows = dY.reshape(-1, D)
    dgamma = (rows * xhat.reshape(rows.shape)).sum(axis=0)
    dbeta = rows.sum(axis=0)
    return (dX, dbeta, dgamma) if swap else (dX, dgamma, dbeta)


def _gelu_tanh_d(X, cubic=True):
    c = math.sqrt(2.0 / math.pi)
    t = np.tanh(c * (X + 0.044715 * X**3))
    du = c * (1.0 + 3.0 * 0.044715 * X**2) if cubic else c
    return 0.5 * (1.0 + t) + 0.5 * X * (1.0 - t * t) * du


def _gelu_erf_d(X):
    return 0.5 * (1.0 + erf(X / math.sqrt(2.0))) + X * np.exp(-0.5 * X * X) / math.sqrt(2.0 * math.pi)


def _patches_cpp(x, patch_size):
    N, C, h, w = x.shape
    ph, pw = patch_size
    g = x.reshape(N, C, h // ph, ph, w // pw, pw).transpose(0, 2, 4, 1, 3, 5)
    return g.reshape(N, (h // ph) * (w // pw), C * ph * pw)


def _unpatchify_cpp(dpatches, image_shape, patch_size):
    N, C, h, w = image_shape
    ph, pw = patch_size
    g = dpatches.reshape(N, h // ph, w // pw, C, ph, pw).transpose(0, 3, 1, 4, 2, 5)
    return np.ascontiguousarray(g).reshape(N, C, h, w)


def _adamw(w, g, m, v, t, lr, b1, b2, eps, wd, correct=True, decoupled=True, eps_inside=False):
    if not decoupled:
        g = g + wd * w
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    mh = m / (1 - b1**t) if correct else m
    vh = v / (1 - b2**t) if correct else v
    w = w * (1 - lr * wd) if decoupled else w
    den = np.sqrt(vh + eps) if eps_inside else np.sqrt(vh) + eps
    return w - lr * mh / den, m, v


def _step_variant(transform):
    """A vit_train_step mistake derived from the reference step: `transform(dw_by_name, args)`
    edits the implied gradients (w_old - w_new) / lr, by piece name."""

    def fn(*args):
        from .exercises import flat_segments

        lr = args[8]
        ref = R.vit_train_step(*args)
        segs, _ = flat_segments(args)
        dw = {
            name: (np.asarray(a, dtype=np.float64).ravel() - ref[lo:hi]).reshape(shape) / lr
            for name, lo, hi, shape, a in segs
        }
        dw = transform(dw, args)
        out = ref.copy()
        for name, lo, hi, _, a in segs:
            out[lo:hi] = np.asarray(a, dtype=np.float64).ravel() - lr * dw[name].ravel()
        return out

    return fn


def _wrong_mlp2_hint(dw, args):
    blocks = args[5]
    for b in range(blocks.shape[0]):
        k = f"blocks[{b}].w_mlp2"
        dw[k] = dw[k] @ blocks[b, 5].T  # gelu_out^T . d_ffn_out . w_mlp2^T
    return dw


def _no_mean(dw, args):
    N = args[0].shape[0]
    return {k: N * v for k, v in dw.items()}


# ------------------------------------------------------------------ the catalogue


def _seed_variant(**kw):
    def fn(*args):
        from vit_oracles.exercises import vit_train_step_intermediates  # torch, outside the reader's call

        return vit_train_step_intermediates(*args, **kw)[0]

    return fn


M = Mistake
_OWN = [
    # chapter 2
    M(
        "ce_no_1_over_N",
        "softmax_ce_backward",
        "Your dlogits is softmax(logits) - onehot(y) without the 1/N: that is the gradient of the SUMMED loss. "
        "The loss is the mean over the batch, so dlogits = (probs - onehot(y)) / N.",
        lambda logits, y: _softmax(logits) - _onehot(y, logits.shape[1]),
    ),
    M(
        "ce_no_onehot",
        "softmax_ce_backward",
        "Your dlogits is softmax(logits) / N: the one-hot term is missing. -log p_y pulls the true class up: "
        "dlogits = (probs - onehot(y)) / N.",
        lambda logits, y: _softmax(logits) / len(y),
    ),
    M(
        "ce_sign",
        "softmax_ce_backward",
        "Your dlogits has the wrong sign: it is (onehot(y) - probs) / N. The loss is MINUS the log-probability, "
        "so dlogits = (probs - onehot(y)) / N.",
        lambda logits, y: (_onehot(y, logits.shape[1]) - _softmax(logits)) / len(y),
    ),
    M(
        "ce_softmax_axis0",
        "softmax_ce_backward",
        "Your softmax is taken over the batch axis (axis=0): each example's probabilities are over its K "
        "classes, the last axis (axis=-1, keepdims=True).",
        lambda logits, y: (_softmax(logits, axis=0) - _onehot(y, logits.shape[1])) / len(y),
    ),
    # chapter 3
    M(
        "linear_dW_transposed",
        "linear_backward",
        "Your dW is transposed: dY^T X is (Dout, Din), the right one is X^T dY, (Din, Dout) like W. A square W "
        "hides this: the shapes agree, the numbers do not.",
        lambda dY, X, W, b: (
            dY @ W.T,
            dY.reshape(-1, dY.shape[-1]).T @ X.reshape(-1, X.shape[-1]),
            None if b is None else dY.reshape(-1, dY.shape[-1]).sum(axis=0),
        ),
    ),
    M(
        "linear_db_mean",
        "linear_backward",
        "Your db is the MEAN of dY over the rows; b is added to every row, so db is their SUM: "
        "dY.reshape(-1, Dout).sum(axis=0).",
        lambda dY, X, W, b: (
            *R.linear_backward(dY, X, W, b)[:2],
            None if b is None else dY.reshape(-1, dY.shape[-1]).mean(axis=0),
        ),
    ),
    M(
        "pool_mean_no_1_over_T",
        "pool_backward",
        "Your mean-pool gradient copies dpooled into every token without the 1/T: pooled = X.mean(axis=1), so "
        "each of the T tokens gets dpooled / T.",
        lambda dpooled, X, pool: R.pool_backward(dpooled, X, pool) * (X.shape[1] if pool == "mean" else 1.0),
    ),
    M(
        "pool_cls_everywhere",
        "pool_backward",
        "Your cls-pool gradient reaches every token: pooled = X[:, 0] reads only token 0, so dX is zero except "
        "dX[:, 0] = dpooled.",
        lambda dpooled, X, pool: (
            np.broadcast_to(dpooled[:, None, :], X.shape).copy() if pool == "cls" else R.pool_backward(dpooled, X, pool)
        ),
    ),
    # chapter 4
    M(
        "gelu_tanh_no_cubic",
        "gelu_tanh_backward",
        "Your tanh-GELU derivative treats u = sqrt(2/pi) (x + 0.044715 x^3) as if du/dx were sqrt(2/pi): the "
        "cubic term's derivative, sqrt(2/pi) * 3 * 0.044715 x^2, is missing.",
        lambda dY, X: dY * _gelu_tanh_d(X, cubic=False),
    ),
    M(
        "gelu_tanh_used_erf",
        "gelu_tanh_backward",
        "You differentiated the EXACT (erf) GELU, Phi(x) + x phi(x); this exercise is the tanh approximation: "
        "differentiate 0.5 x (1 + tanh(u)) itself (they differ by ~1e-3, which the check sees).",
        lambda dY, X: dY * _gelu_erf_d(X),
    ),
    M(
        "gelu_erf_used_tanh",
        "gelu_erf_backward",
        "You differentiated the tanh APPROXIMATION; this exercise is the exact GELU x Phi(x): gelu'(x) = "
        "Phi(x) + x phi(x), with Phi = 0.5 (1 + erf(x / sqrt(2))) and phi the standard normal density.",
        lambda dY, X: dY * _gelu_tanh_d(X),
    ),
    M(
        "gelu_erf_phi_unnormalised",
        "gelu_erf_backward",
        "Your phi(x) is exp(-x^2 / 2) without its 1/sqrt(2 pi): the standard normal density is "
        "exp(-x^2 / 2) / sqrt(2 pi), so gelu'(x) = Phi(x) + x exp(-x^2 / 2) / sqrt(2 pi).",
        lambda dY, X: dY * (0.5 * (1.0 + erf(X / math.sqrt(2.0))) + X * np.exp(-0.5 * X * X)),
    ),
    # chapter 5
    M(
        "ln_dgamma_with_X",
        "layernorm_backward",
        "Your dgamma uses X where xhat belongs: gamma multiplies the NORMALISED input, so dgamma = "
        "sum(dY * xhat) over every axis but the last, xhat = (X - mean) * rstd.",
        lambda dY, X, gamma, beta, eps: (
            lambda r: (r[0], None if gamma is None else (dY * X).reshape(-1, X.shape[-1]).sum(0), r[2])
        )(R.layernorm_backward(dY, X, gamma, beta, eps)),
    ),
    M(
        "ln_ddof1",
        "layernorm_backward",
        "Your forward uses the SAMPLE variance (ddof=1, dividing by D-1; np.var(..., ddof=1) or torch.var's "
        "default) while the backward assumes the population variance: LayerNorm divides by D. Use "
        "X.var(axis=-1, keepdims=True) (ddof=0), or torch.var(..., unbiased=False).",
        lambda dY, X, gamma, beta, eps: _ln(dY, X, gamma, beta, eps, ddof=1),
    ),
    M(
        "ln_no_var_term",
        "layernorm_backward",
        "Your dX is missing the variance term: the gradient through rstd (var depends on X). dX = rstd * (dxhat "
        "- mean(dxhat) - xhat * mean(dxhat * xhat)).",
        lambda dY, X, gamma, beta, eps: _ln(dY, X, gamma, beta, eps, var_term=False),
    ),
    M(
        "ln_no_mean_no_var",
        "layernorm_backward",
        "Your dX is rstd * dxhat: you treated mean and rstd as constants. Both depend on X: dX = rstd * (dxhat "
        "- mean(dxhat) - xhat * mean(dxhat * xhat)).",
        lambda dY, X, gamma, beta, eps: _ln(dY, X, gamma, beta, eps, mean_term=False, var_term=False),
    ),
    M(
        "ln_swapped",
        "layernorm_backward",
        "Your dgamma and dbeta are swapped: gamma multiplies xhat, so dgamma = sum(dY * xhat); beta is added, "
        "so dbeta = sum(dY) (both summed over every axis but the last).",
        lambda dY, X, gamma, beta, eps: _ln(dY, X, gamma, beta, eps, swap=True),
    ),
    M(
        "ln_fixed_eps",
        "layernorm_backward",
        "You use eps = 1e-5 instead of the eps argument: rstd = 1 / sqrt(var + eps) with the eps you are given.",
        lambda dY, X, gamma, beta, eps: _ln(dY, X, gamma, beta, eps, fixed_eps=1e-5),
    ),
    # chapter 6
    M(
        "softmax_wrong_axis_backward",
        "softmax_backward",
        "Your row sum runs over the wrong axis: A is normalised over the LAST axis, so the sum in dS = A * (dA "
        "- (dA * A).sum(axis=-1, keepdims=True)) is over axis=-1 too.",
        lambda dA, S: (lambda A: A * (dA - (dA * A).sum(axis=-2, keepdims=True)))(_softmax(S)),
    ),
    M(
        "softmax_wrong_axis_forward",
        "softmax_backward",
        "Your softmax normalises over the wrong axis: A = softmax(S) over the LAST axis (axis=-1, "
        "keepdims=True), in the forward and in the backward's row sum.",
        lambda dA, S: (lambda A: A * (dA - (dA * A).sum(axis=-2, keepdims=True)))(_softmax(S, axis=-2)),
    ),
    M(
        "softmax_used_S",
        "softmax_backward",
        "You used the scores S where the softmax A belongs: the rule dS = A * (dA - rowsum(dA * A)) needs "
        "A = softmax(S), computed first.",
        lambda dA, S: S * (dA - (dA * S).sum(axis=-1, keepdims=True)),
    ),
    *[
        m
        for ex, make in (("attention_head_backward", _head), ("attention_backward", _multi))
        for m in (
            M(
                f"{ex}_no_scale_dQ",
                ex,
                "Your dQ is missing the 1/sqrt(D_h): S = Q K^T / sqrt(D_h), so the scale multiplies both "
                "gradients, dQ = dS K / sqrt(D_h) and dK = dS^T Q / sqrt(D_h).",
                make(scale_dQ=False),
            ),
            M(
                f"{ex}_no_scale_dK",
                ex,
                "Your dK is missing the 1/sqrt(D_h): S = Q K^T / sqrt(D_h), so dK = dS^T Q / sqrt(D_h) (dQ has "
                "it: it is the same factor).",
                make(scale_dK=False),
            ),
            M(
                f"{ex}_no_scale",
                ex,
                "Your dQ and dK are both missing the 1/sqrt(D_h) of S = Q K^T / sqrt(D_h).",
                make(scale_dQ=False, scale_dK=False),
            ),
            M(
                f"{ex}_dV_no_transpose",
                ex,
                "Your dV is A @ dO: the transpose is missing. O = A V, so dV = A^T dO (per head: "
                "A.transpose(0, 1, 3, 2) @ dO). A is (T, T), so the shapes never object.",
                make(dV_transpose=False),
            ),
            M(
                f"{ex}_QKT_4d",
                ex,
                "`Q @ K.T` on a 4-D array: `.T` reverses EVERY axis, (N, H, T, D_h) -> (D_h, T, H, N). Swap only the "
                "last two: K.transpose(0, 1, 3, 2) or K.swapaxes(-1, -2).",
                make(QKT=True),
            ),
        )
    ],
    # chapter 8
    M(
        "tokens_dpos_not_summed",
        "tokens_backward",
        "Your dpos is the first image's dX0[0] only: pos is added to EVERY image of the batch, so dpos = "
        "dX0.sum(axis=0).",
        lambda dX0, E, cls, pos: (*R.tokens_backward(dX0, E, cls, pos)[:2], dX0[0].copy()),
    ),
    M(
        "tokens_dcls_not_summed",
        "tokens_backward",
        "Your dcls is the first image's slice only: the cls token is copied into every image, so dcls = "
        "dX0[:, :n_cls].sum(axis=0).",
        lambda dX0, E, cls, pos: (lambda r: (r[0], dX0[0, : cls.shape[0]].copy(), r[2]))(
            R.tokens_backward(dX0, E, cls, pos)
        ),
    ),
    M(
        "tokens_mean_not_sum",
        "tokens_backward",
        "Your dcls and dpos are MEANS over the batch; a shared parameter gets the SUM of every image's "
        "gradient: dpos = dX0.sum(axis=0), dcls = dX0[:, :n_cls].sum(axis=0).",
        lambda dX0, E, cls, pos: (
            dX0[:, cls.shape[0] :].copy(),
            dX0[:, : cls.shape[0]].mean(axis=0),
            dX0.mean(axis=0),
        ),
    ),
    M(
        "unpatchify_cpp",
        "unpatchify",
        "Your un-patchify reads each patch as (c, p1, p2), the coding exercise's layout; lucidrains' patchify "
        "flattens (p1, p2, c): reshape dpatches to (N, Hp, Wp, ph, pw, C) and move C back first.",
        _unpatchify_cpp,
    ),
    M(
        "unpatchify_plain_reshape",
        "unpatchify",
        "Your un-patchify is a bare reshape of dpatches to the image's shape: patchify MOVES pixels (a "
        "transpose between reshapes), so undo that permutation: reshape to (N, Hp, Wp, ph, pw, C), transpose "
        "to (N, C, Hp, ph, Wp, pw), reshape to (N, C, H, W).",
        lambda dpatches, image_shape, patch_size: dpatches.reshape(image_shape),
    ),
    M(
        "patch_embed_cpp",
        "patch_embed_backward",
        "Your dx puts the pixels back in the (c, p1, p2) order; these patches are flattened (p1, p2, c) "
        "(lucidrains): un-patchify dP with that layout.",
        lambda dE, x, W, b, ps: (_unpatchify_cpp(dE @ W.T, x.shape, ps), *R.patch_embed_backward(dE, x, W, b, ps)[1:]),
    ),
    # chapter 10
    M(
        "numgrad_forward_difference",
        "numerical_gradient",
        "You use a FORWARD difference (f(x + eps) - f(x)) / eps: its error shrinks like eps, the central "
        "difference's like eps^2. Use (f(x + eps e_i) - f(x - eps e_i)) / (2 eps).",
        lambda f, x, eps: _fd(f, x, eps, central=False),
    ),
    M(
        "numgrad_no_half",
        "numerical_gradient",
        "Your central difference divides by eps instead of 2 eps: x + eps and x - eps are 2 eps apart.",
        lambda f, x, eps: 2.0 * R.numerical_gradient(f, x, eps),
    ),
    # chapter 11
    M(
        "sgd_sign",
        "sgd_step",
        "Your step goes uphill: w + lr g. Gradient DESCENT subtracts: w - lr g.",
        lambda w, g, lr: w + lr * g,
    ),
    M(
        "momentum_ema",
        "momentum_step",
        "Your buffer is an average, momentum buf + (1 - momentum) g (with dampening); torch's SGD momentum adds "
        "the whole gradient: buf = momentum buf + g (and buf = g at the first step).",
        lambda w, g, buf, lr, mom: (lambda b: (w - lr * b, b))(g if buf is None else mom * buf + (1 - mom) * g),
    ),
    M(
        "momentum_zero_first",
        "momentum_step",
        "At the first step your buffer is (1 - momentum) g, as if it had started from zeros with dampening; "
        "torch's SGD sets buf = g at the first step (buf None), then buf = momentum buf + g.",
        lambda w, g, buf, lr, mom: (lambda b: (w - lr * b, b))((1 - mom) * g if buf is None else mom * buf + g),
    ),
    M(
        "momentum_step_with_g",
        "momentum_step",
        "Your weights move by lr g, not by the buffer: with momentum the step is w - lr buf.",
        lambda w, g, buf, lr, mom: (w - lr * g, g if buf is None else mom * buf + g),
    ),
    M(
        "adamw_no_bias_correction",
        "adamw_step",
        "Your step has no bias correction: divide m by (1 - beta1^t) and v by (1 - beta2^t) (t = 1 at the first "
        "step), or the first steps are far too small.",
        lambda w, g, m, v, t, lr, b1, b2, eps, wd: _adamw(w, g, m, v, t, lr, b1, b2, eps, wd, correct=False),
    ),
    M(
        "adamw_l2",
        "adamw_step",
        "You added weight_decay * w to the gradient (Adam with L2): AdamW DECOUPLES the decay, w <- w (1 - lr "
        "weight_decay), and the moments see only g.",
        lambda w, g, m, v, t, lr, b1, b2, eps, wd: _adamw(w, g, m, v, t, lr, b1, b2, eps, wd, decoupled=False),
    ),
    M(
        "adamw_eps_inside",
        "adamw_step",
        "Your eps is inside the square root, sqrt(v_hat + eps); torch's AdamW adds it outside: sqrt(v_hat) + eps.",
        lambda w, g, m, v, t, lr, b1, b2, eps, wd: _adamw(w, g, m, v, t, lr, b1, b2, eps, wd, eps_inside=True),
    ),
    # chapter 14, the coding exercise
    M(
        "seed_wrong_dw_mlp2_hint",
        "vit_train_step",
        "Your dw_mlp2 is gelu_out^T . d_ffn_out . w_mlp2^T: the exercise's own hint, which is wrong. "
        "ffn_out = gelu_out @ w_mlp2, so dw_mlp2 = gelu_out^T @ d_ffn_out (summed over batch and tokens); the "
        "w_mlp2^T belongs to the gradient flowing back, dgelu_out = d_ffn_out @ w_mlp2^T.",
        _step_variant(_wrong_mlp2_hint),
    ),
    M(
        "seed_no_1_over_N",
        "vit_train_step",
        "Every gradient of yours is N times too large: dlogits lacks the 1/N. The loss is the MEAN over the "
        "batch: dlogits = (probs - one_hot(y)) / N.",
        _step_variant(_no_mean),
    ),
    M(
        "seed_gelu_erf",
        "vit_train_step",
        "Your step uses the EXACT (erf) GELU; the coding exercise's model uses the tanh approximation, "
        "0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), in the forward and so in the backward.",
        _seed_variant(gelu="none"),
    ),
    M(
        "seed_patch_layout",
        "vit_train_step",
        "Your patches are flattened (p1, p2, c), lucidrains' order; the exercise flattens each patch (c, p1, "
        "p2): x.reshape(N, C, H/P, P, W/P, P).transpose(0, 2, 4, 1, 3, 5).reshape(N, -1, C*P*P), and dw_proj "
        "(and dx) must use the same order.",
        _seed_variant(layout="ppc"),
    ),
]


def _fd(f, x, eps, central=True):
    xp = np.array(x, dtype=np.float64)
    g = np.zeros_like(xp)
    f0 = f(xp)
    for i in np.ndindex(xp.shape):
        old = xp[i]
        xp[i] = old + eps
        fp = f(xp)
        xp[i] = old
        g[i] = (fp - f0) / eps
    return g


# the in-place mistake is caught by the inputs check, not by its numbers; it is here so the
# tests can run it (a solution that centres X with `X -= mean`)
INPLACE = M(
    "ln_inplace",
    "layernorm_backward",
    "in place",
    lambda dY, X, gamma, beta, eps: _ln(dY, X, gamma, beta, eps, inplace=True),
)

OWN = {m.name: m for m in _OWN}


def candidates(exercise):
    """Every mistake that may explain a wrong answer to `exercise`: its own, then the zoo's."""
    return [m for m in _OWN if m.exercise == exercise] + zoo_mistakes(exercise)
