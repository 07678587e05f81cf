"""The reference solutions, in the reader's signatures (forward inputs in, gradients out).

This is the ONE file of the grader that calls vitlib's layer functions (`*_forward` ->
(out, cache), `*_backward(dout, cache)`) and knows what they return. If vitlib's layer API
changes (caches as NamedTuples, a tuple from attention_backward, the argument order of
cross_entropy_backward), this file adapts and nothing else in vitlib/grade does.

Every layer function is looked up on its module at call time (`_m.layernorm_backward`, not a
name imported once), so `vitlib.bugs.injected(name)` reaches these references too: that is how
the grader runs the bug zoo's mistakes on the reader's own case (`zoo_outputs`).
"""

import contextlib
import inspect
import math

import numpy as np

from .. import attention as _attn
from .. import embed as _embed
from .. import layernorm as _ln
from .. import model as _m
from .names import EXERCISE_NAMES

BLOCK_KEYS = (
    "ln1_gamma",
    "ln1_beta",
    "W_q",
    "W_k",
    "W_v",
    "W_o",
    "b_o",
    "ln2_gamma",
    "ln2_beta",
    "W_1",
    "b_1",
    "W_2",
    "b_2",
)
# the reader's key -> vitlib's short name inside a block
_VITLIB_NAME = {k: k.replace("_gamma", ".gamma").replace("_beta", ".beta") for k in BLOCK_KEYS}
SEED_BLOCK_ORDER = ("w_q", "w_k", "w_v", "w_o", "w_mlp1", "w_mlp2")


# ------------------------------------------------------------------ adapters to vitlib's API


def _named(grads, names):
    """attention_backward's result (a dict {"dX": ...}, a NamedTuple or a plain tuple in the order
    of `names`) -> {name: value} for `names`."""
    if isinstance(grads, dict):
        return {n: grads.get("d" + n, grads.get(n)) for n in names}
    if hasattr(grads, "_asdict"):
        d = grads._asdict()
        return {n: d.get("d" + n, d.get(n)) for n in names}
    grads = tuple(grads)
    return {n: (grads[i] if i < len(grads) else None) for i, n in enumerate(names)}


_ATTN_NAMES = ("X", "W_q", "W_k", "W_v", "W_o", "b_o")


def _attention_backward(dY, cache):
    return _named(_m.attention_backward(dY, cache), _ATTN_NAMES)


def _ce_backward(cache, dloss=1.0):
    """cross_entropy_backward is (cache, dloss=1) today and (dout, cache) after the API change."""
    fn = _m.cross_entropy_backward
    try:
        first = next(iter(inspect.signature(fn).parameters))
    except (TypeError, ValueError, StopIteration):
        first = "cache"
    return fn(cache, dloss) if first == "cache" else fn(dloss, cache)


# ------------------------------------------------------------------ one reference per exercise


def softmax_ce_backward(logits, y):
    _, cache = _m.cross_entropy_forward(logits, y)
    return _ce_backward(cache)


def linear_backward(dY, X, W, b):
    _, cache = _m.linear_forward(X, W, b)
    return tuple(_m.linear_backward(dY, cache))


def pool_backward(dpooled, X, pool):
    _, cache = _m.pool_forward(X, pool)
    return _m.pool_backward(dpooled, cache)


def gelu_tanh_backward(dY, X):
    _, cache = _m.gelu_forward(X, "tanh")
    return _m.gelu_backward(dY, cache)


def gelu_erf_backward(dY, X):
    _, cache = _m.gelu_forward(X, "none")
    return _m.gelu_backward(dY, cache)


def layernorm_backward(dY, X, gamma, beta, eps):
    _, cache = _m.layernorm_forward(X, gamma, beta, eps)
    return tuple(_m.layernorm_backward(dY, cache))


def softmax_backward(dA, S):
    A = _attn.softmax_forward(S)
    return _attn.softmax_backward(dA, A)


def attention_head_backward(dO, X, W_q, W_k, W_v):
    _, cache = _m.attention_forward(X, W_q, W_k, W_v, None, None, 1)
    g = _attention_backward(dO, cache)
    return g["X"], g["W_q"], g["W_k"], g["W_v"]


def attention_backward(dY, X, W_q, W_k, W_v, W_o, heads):
    _, cache = _m.attention_forward(X, W_q, W_k, W_v, W_o, None, heads)
    g = _attention_backward(dY, cache)
    return g["X"], g["W_q"], g["W_k"], g["W_v"], g["W_o"]


def _attention_parts(X, p, heads):
    """The attention sub-layer's forward quantities, for the intermediates' gradients."""
    H = heads
    Q = _attn.split_heads(X @ p["W_q"], H)
    K = _attn.split_heads(X @ p["W_k"], H)
    V = _attn.split_heads(X @ p["W_v"], H)
    scale = 1.0 / math.sqrt(Q.shape[-1])
    S = (Q @ K.transpose(0, 1, 3, 2)) * scale
    A = _attn.softmax_forward(S)
    O = _attn.merge_heads(A @ V)
    return Q, K, V, S, A, O, scale


def _attention_intermediates(dY_attn, p, parts, inter):
    """Gradients of O, A, S, V, K, Q (heads split: (N, H, T, Dh) and (N, H, T, T)) from dY_attn."""
    Q, K, V, S, A, O, scale = parts
    H = Q.shape[1]
    dO = dY_attn if p.get("W_o") is None else dY_attn @ p["W_o"].T
    inter["O"] = dO
    dOh = _attn.split_heads(dO, H)
    dA = dOh @ V.transpose(0, 1, 3, 2)
    inter["A"] = dA
    inter["V"] = A.transpose(0, 1, 3, 2) @ dOh
    dS = _attn.softmax_backward(dA, A)
    inter["S"] = dS
    inter["K"] = (dS.transpose(0, 1, 3, 2) @ Q) * scale
    inter["Q"] = (dS @ K) * scale


def _block_forward_parts(X, p, heads, eps, post):
    """Forward of a pre-LN or post-LN block through vitlib's layers, keeping every cache."""
    c = {}
    if not post:
        c["Z1"], c["ln1"] = _m.layernorm_forward(X, p["ln1_gamma"], p["ln1_beta"], eps)
        att_in = c["Z1"]
    else:
        att_in = X
    c["Y_attn"], c["attn"] = _m.attention_forward(att_in, p["W_q"], p["W_k"], p["W_v"], p["W_o"], p["b_o"], heads)
    c["parts"] = _attention_parts(att_in, p, heads)
    if not post:
        X1 = X + c["Y_attn"]
        c["Z2"], c["ln2"] = _m.layernorm_forward(X1, p["ln2_gamma"], p["ln2_beta"], eps)
        mlp_in = c["Z2"]
    else:
        X1, c["ln1"] = _m.layernorm_forward(X + c["Y_attn"], p["ln1_gamma"], p["ln1_beta"], eps)
        mlp_in = X1
    c["U"], c["fc1"] = _m.linear_forward(mlp_in, p["W_1"], p["b_1"])
    c["G"], c["gelu"] = _m.gelu_forward(c["U"], "none")
    c["Y_mlp"], c["fc2"] = _m.linear_forward(c["G"], p["W_2"], p["b_2"])
    if post:
        _, c["ln2"] = _m.layernorm_forward(X1 + c["Y_mlp"], p["ln2_gamma"], p["ln2_beta"], eps)
    return c


def _mlp_backward(dY_mlp, c, g, inter):
    inter["Y_mlp"] = dY_mlp
    dG, g["W_2"], g["b_2"] = _m.linear_backward(dY_mlp, c["fc2"])
    inter["G"] = dG
    dU = _m.gelu_backward(dG, c["gelu"])
    inter["U"] = dU
    dmlp_in, g["W_1"], g["b_1"] = _m.linear_backward(dU, c["fc1"])
    return dmlp_in


def _attn_backward_into(dY_attn, c, p, g, inter):
    inter["Y_attn"] = dY_attn
    ga = _attention_backward(dY_attn, c["attn"])
    for k in ("W_q", "W_k", "W_v", "W_o", "b_o"):
        g[k] = ga[k]
    _attention_intermediates(dY_attn, p, c["parts"], inter)
    return ga["X"]


def preln_block_backward(dY, X, p, heads, eps, with_intermediates=True):
    """X' = X1 + MLP(LN2(X1)), X1 = X + Attn(LN1(X)): every gradient, intermediates included."""
    c = _block_forward_parts(X, p, heads, eps, post=False)
    g, inter = {}, {}
    dZ2 = _mlp_backward(dY, c, g, inter)
    inter["Z2"] = dZ2
    dX1_ln, g["ln2_gamma"], g["ln2_beta"] = _m.layernorm_backward(dZ2, c["ln2"])
    dX1 = dY + dX1_ln
    inter["X1"] = dX1
    dZ1 = _attn_backward_into(dX1, c, p, g, inter)
    inter["Z1"] = dZ1
    dX_ln, g["ln1_gamma"], g["ln1_beta"] = _m.layernorm_backward(dZ1, c["ln1"])
    out = {"X": dX1 + dX_ln, **{k: g[k] for k in BLOCK_KEYS}}
    vitlib_block = _vitlib_block(dY, X, p, heads, eps)
    if vitlib_block is not None:
        # vitlib's own block_backward gives the gradients, so a zoo bug that replaces the whole
        # block (block_backward_*) reaches this reference too
        out.update(vitlib_block)
    if with_intermediates:
        out.update(inter)
    return out


def _vitlib_block(dY, X, p, heads, eps):
    """vitlib.model.block_forward/backward on the reader's p, or None where that API cannot take
    this case (an older block_forward without an eps argument, at another eps)."""
    get = lambda name: p.get(_inverse_name(name))
    try:
        takes_eps = "eps" in inspect.signature(_m.block_forward).parameters
    except (TypeError, ValueError):
        takes_eps = False
    if takes_eps:
        _, cache = _m.block_forward(X, get, heads, "none", eps=eps)
    elif eps == _ln.EPS:
        _, cache = _m.block_forward(X, get, heads, "none")
    else:
        return None
    dX, g = _m.block_backward(dY, cache)
    return {"X": dX, **{k: g.get(_VITLIB_NAME[k]) for k in BLOCK_KEYS}}


def _inverse_name(name):
    for k, v in _VITLIB_NAME.items():
        if v == name:
            return k
    return None


def postln_block_backward(dY, X, p, heads, eps, with_intermediates=True):
    """X1 = LN1(X + Attn(X)), X' = LN2(X1 + MLP(X1)): every gradient passes a LayerNorm."""
    c = _block_forward_parts(X, p, heads, eps, post=True)
    g, inter = {}, {}
    dR2, g["ln2_gamma"], g["ln2_beta"] = _m.layernorm_backward(dY, c["ln2"])
    inter["R2"] = dR2
    dX1_mlp = _mlp_backward(dR2, c, g, inter)
    dX1 = dR2 + dX1_mlp
    inter["X1"] = dX1
    dR1, g["ln1_gamma"], g["ln1_beta"] = _m.layernorm_backward(dX1, c["ln1"])
    inter["R1"] = dR1
    dX_attn = _attn_backward_into(dR1, c, p, g, inter)
    out = {"X": dR1 + dX_attn, **{k: g[k] for k in BLOCK_KEYS}}
    if with_intermediates:
        out.update(inter)
    return out


def tokens_backward(dX0, E, cls, pos):
    _, n_cls = _m.tokens_forward(E, cls, pos)
    return tuple(_m.tokens_backward(dX0, n_cls))


def _patchify(x, patch_size):
    return _embed.patchify(x, tuple(patch_size), "ppc")


def unpatchify(dpatches, image_shape, patch_size):
    """The adjoint of patchify is its inverse permutation: the same reshape/transpose, undone."""
    N, C, img_h, img_w = image_shape
    ph, pw = patch_size
    Hp, Wp = img_h // ph, img_w // pw
    g = dpatches.reshape(N, Hp, Wp, ph, pw, C).transpose(0, 5, 1, 3, 2, 4)
    return np.ascontiguousarray(g).reshape(N, C, img_h, img_w)


def patch_embed_backward(dE, x, W_patch, b_patch, patch_size):
    P = _patchify(x, patch_size)
    _, cache = _m.linear_forward(P, W_patch, b_patch)
    dP, dW, db = _m.linear_backward(dE, cache)
    return unpatchify(dP, x.shape, patch_size), dW, db


def numerical_gradient(f, x, eps):
    """Central differences, one coordinate at a time, on a private copy of x."""
    xp = np.array(x, dtype=np.float64)
    g = np.zeros_like(xp)
    for i in np.ndindex(xp.shape):
        old = xp[i]
        xp[i] = old + eps
        fp = f(xp)
        xp[i] = old - eps
        fm = f(xp)
        xp[i] = old
        g[i] = (fp - fm) / (2.0 * eps)
    return g


def _opt_step(step, w, g, state, **kw):
    from .. import optim as _optim

    return getattr(_optim, step)({"w": w}, {"w": g}, state, **kw)


def sgd_step(w, g, lr):
    from .. import optim as _optim

    return _optim.sgd_step({"w": w}, {"w": g}, lr)["w"]


def momentum_step(w, g, buf, lr, momentum):
    state = {"step": 0 if buf is None else 1, "buf": {} if buf is None else {"w": buf}}
    new, state = _opt_step("momentum_step", w, g, state, lr=lr, momentum=momentum)
    return new["w"], state["buf"]["w"]


def adamw_step(w, g, m, v, t, lr, beta1, beta2, eps, weight_decay):
    state = {"step": t - 1, "m": {"w": m}, "v": {"w": v}}
    new, state = _opt_step("adamw_step", w, g, state, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)
    return new["w"], state["m"]["w"], state["v"]["w"]


def _seed_params(x, w_proj, cls_token, pos_embed, blocks_weights, w_head, num_heads, patch_size):
    """The exercise's arguments -> (cfg, vitlib params, the packed block order): vitlib.seed's own unpacking."""
    from .. import seed as _seed

    cfg, params, _, _ = _seed._unpack(x, w_proj, cls_token, pos_embed, blocks_weights, w_head, num_heads, patch_size)
    return cfg, params, _seed._BLOCK_ORDER


def vit_train_step(x, y, w_proj, cls_token, pos_embed, blocks_weights, w_head, num_heads, lr, patch_size=None):
    """The coding exercise's step on vitlib's teaching path (model.forward / model.backward, looked
    up at call time, so a zoo bug injected into vitlib.model reaches it)."""
    cfg, params, names = _seed_params(x, w_proj, cls_token, pos_embed, blocks_weights, w_head, num_heads, patch_size)
    logits, caches = _m.forward(params, x, cfg)
    _, c_loss = _m.cross_entropy_forward(logits, y)
    grads = _m.backward(_ce_backward(c_loss), caches, cfg)
    new = {k: p - lr * grads[k] for k, p in params.items()}
    blocks = np.stack([np.stack([new[f"blocks.{b}.{n}"] for n in names]) for b in range(cfg.depth)])
    return np.concatenate(
        [new["W_patch"].ravel(), new["cls"].ravel(), new["pos"].ravel(), blocks.ravel(), new["W_head"].ravel()]
    )


def intermediates(exercise, args):
    """The intermediate gradients of an attention exercise (heads split: (N, H, T, D_h), (N, H, T, T))."""
    if exercise == "attention_head_backward":
        dY, X, W_q, W_k, W_v = args
        W_o, heads = None, 1
    elif exercise == "attention_backward":
        dY, X, W_q, W_k, W_v, W_o, heads = args
    else:
        return {}
    p = {"W_q": W_q, "W_k": W_k, "W_v": W_v, "W_o": W_o}
    inter = {}
    _attention_intermediates(dY, p, _attention_parts(X, p, heads), inter)
    return inter


REFERENCES = {name: globals()[name] for name in EXERCISE_NAMES}


# ------------------------------------------------------------------ the bug zoo on a case


def zoo_bugs():
    """vitlib.bugs.BUGS as (name, bug) pairs, or nothing if the zoo's interface changed."""
    try:
        from .. import bugs as _bugs

        return list(_bugs.BUGS.items())
    except Exception:  # the zoo is being restructured elsewhere: grading still works without it
        return []


@contextlib.contextmanager
def zoo_injected(name):
    from .. import bugs as _bugs

    with _bugs.injected(name) as bug:
        yield bug


def zoo_outputs(exercise, args):
    """[(bug_name, bug, output)] for every zoo bug whose injection changes this exercise's
    reference output on these arguments (a bug in a function the exercise never calls is skipped
    by the caller, which compares with the clean reference)."""
    ref = REFERENCES[exercise]
    out = []
    for name, bug in zoo_bugs():
        try:
            with zoo_injected(name):
                result = ref(*args)
        except Exception:  # a bug that breaks on this case's shapes is not the reader's mistake here
            continue
        out.append((name, bug, result))
    return out
