"""Torch autograd oracles: each exercise's forward written in torch, differentiated by autograd.

The grader compares the reader's answer with vitlib's reference AND with these, so a bug in
vitlib cannot make a wrong answer pass. torch is imported inside the functions only: `import
vitlib.grade` loads no torch; the first check that needs the oracle does.
"""

import math

import numpy as np

from vitlib.grade.names import EXERCISE_NAMES


def _torch():
    import torch

    return torch


def _t(a, grad=True):
    torch = _torch()
    if a is None:
        return None
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def _np(t):
    return None if t is None else t.detach().numpy().copy()


def _grads(out, dout, inputs):
    """Vector-Jacobian product by autograd: the gradients of sum(out * dout) for the inputs."""
    torch = _torch()
    live = [i for i in inputs if i is not None]
    gs = torch.autograd.grad(out, live, grad_outputs=dout, allow_unused=True)
    it = iter(gs)
    res = []
    for i in inputs:
        if i is None:
            res.append(None)
        else:
            g = next(it)
            res.append(np.zeros(tuple(i.shape)) if g is None else _np(g))
    return res


def softmax_ce_backward(logits, y):
    torch = _torch()
    z = _t(logits)
    loss = torch.nn.functional.cross_entropy(z, torch.as_tensor(np.asarray(y), dtype=torch.long))
    return _grads(loss, None, [z])[0]


def linear_backward(dY, X, W, b):
    X_, W_, b_ = _t(X), _t(W), _t(b)
    Y = X_ @ W_ + (b_ if b_ is not None else 0.0)
    return tuple(_grads(Y, _t(dY, False), [X_, W_, b_]))


def pool_backward(dpooled, X, pool):
    X_ = _t(X)
    out = X_[:, 0] if pool == "cls" else X_.mean(dim=1)
    return _grads(out, _t(dpooled, False), [X_])[0]


def _gelu(dY, X, approximate):
    torch = _torch()
    X_ = _t(X)
    return _grads(torch.nn.functional.gelu(X_, approximate=approximate), _t(dY, False), [X_])[0]


def gelu_tanh_backward(dY, X):
    return _gelu(dY, X, "tanh")


def gelu_erf_backward(dY, X):
    return _gelu(dY, X, "none")


def layernorm_backward(dY, X, gamma, beta, eps):
    torch = _torch()
    X_, g_, b_ = _t(X), _t(gamma), _t(beta)
    Y = torch.nn.functional.layer_norm(X_, (X.shape[-1],), g_, b_, eps)
    return tuple(_grads(Y, _t(dY, False), [X_, g_, b_]))


def softmax_backward(dA, S):
    torch = _torch()
    S_ = _t(S)
    return _grads(torch.softmax(S_, dim=-1), _t(dA, False), [S_])[0]


def _split(Z, H):
    N, T, HD = Z.shape
    return Z.reshape(N, T, H, HD // H).permute(0, 2, 1, 3)


def _merge(Z):
    N, H, T, Dh = Z.shape
    return Z.permute(0, 2, 1, 3).reshape(N, T, H * Dh)


def _attention(X, W_q, W_k, W_v, W_o, b_o, H, keep=None):
    torch = _torch()
    Q, K, V = _split(X @ W_q, H), _split(X @ W_k, H), _split(X @ W_v, H)
    S = Q @ K.transpose(-1, -2) / math.sqrt(Q.shape[-1])
    A = torch.softmax(S, dim=-1)
    O = _merge(A @ V)
    Y = O if W_o is None else O @ W_o + (b_o if b_o is not None else 0.0)
    if keep is not None:
        for name, t in (("Q", Q), ("K", K), ("V", V), ("S", S), ("A", A), ("O", O), ("Y_attn", Y)):
            t.retain_grad()
            keep[name] = t
    return Y


def attention_head_backward(dO, X, W_q, W_k, W_v):
    ins = [_t(a) for a in (X, W_q, W_k, W_v)]
    Y = _attention(*ins, None, None, 1)
    return tuple(_grads(Y, _t(dO, False), ins))


def attention_backward(dY, X, W_q, W_k, W_v, W_o, heads):
    ins = [_t(a) for a in (X, W_q, W_k, W_v, W_o)]
    Y = _attention(*ins, None, heads)
    return tuple(_grads(Y, _t(dY, False), ins))


def _block(dY, X, p, heads, eps, post):
    torch = _torch()
    F = torch.nn.functional
    X_ = _t(X)
    P = {k: _t(v) for k, v in p.items()}
    D = X.shape[-1]
    keep = {}

    def ln(Z, which):
        return F.layer_norm(Z, (D,), P[which + "_gamma"], P[which + "_beta"], eps)

    def hold(name, t):
        t.retain_grad()
        keep[name] = t
        return t

    if not post:
        Z1 = hold("Z1", ln(X_, "ln1"))
        Ya = _attention(Z1, P["W_q"], P["W_k"], P["W_v"], P["W_o"], P["b_o"], heads, keep)
        X1 = hold("X1", X_ + Ya)
        Z2 = hold("Z2", ln(X1, "ln2"))
        U = hold("U", Z2 @ P["W_1"] + P["b_1"])
        G = hold("G", F.gelu(U))
        Ym = hold("Y_mlp", G @ P["W_2"] + P["b_2"])
        out = X1 + Ym
    else:
        Ya = _attention(X_, P["W_q"], P["W_k"], P["W_v"], P["W_o"], P["b_o"], heads, keep)
        R1 = hold("R1", X_ + Ya)
        X1 = hold("X1", ln(R1, "ln1"))
        U = hold("U", X1 @ P["W_1"] + P["b_1"])
        G = hold("G", F.gelu(U))
        Ym = hold("Y_mlp", G @ P["W_2"] + P["b_2"])
        R2 = hold("R2", X1 + Ym)
        out = ln(R2, "ln2")
    out.backward(_t(dY, False))
    res = {"X": _np(X_.grad), **{k: _np(v.grad) for k, v in P.items()}}
    res.update({k: _np(v.grad) for k, v in keep.items()})
    return res


def preln_block_backward(dY, X, p, heads, eps):
    return _block(dY, X, p, heads, eps, post=False)


def postln_block_backward(dY, X, p, heads, eps):
    return _block(dY, X, p, heads, eps, post=True)


def tokens_backward(dX0, E, cls, pos):
    torch = _torch()
    E_, c_, p_ = _t(E), _t(cls), _t(pos)
    N = E.shape[0]
    X0 = torch.cat([c_.unsqueeze(0).expand(N, -1, -1), E_], dim=1) + p_
    return tuple(_grads(X0, _t(dX0, False), [E_, c_, p_]))


def _patchify(x, patch_size):
    N, C, h, w = x.shape
    ph, pw = patch_size
    # 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'
    g = x.reshape(N, C, h // ph, ph, w // pw, pw).permute(0, 2, 4, 3, 5, 1)
    return g.reshape(N, (h // ph) * (w // pw), ph * pw * C)


def unpatchify(dpatches, image_shape, patch_size):
    x_ = _t(np.zeros(image_shape))
    return _grads(_patchify(x_, patch_size), _t(dpatches, False), [x_])[0]


def patch_embed_backward(dE, x, W_patch, b_patch, patch_size):
    x_, W_, b_ = _t(x), _t(W_patch), _t(b_patch)
    E = _patchify(x_, patch_size) @ W_ + (b_ if b_ is not None else 0.0)
    return tuple(_grads(E, _t(dE, False), [x_, W_, b_]))


def numerical_gradient(f, x, eps):
    """The exact gradient (autograd of f itself): central differences must land within O(eps^2)."""
    torch = _torch()
    x_ = _t(x)
    y = (torch.sin(x_) * x_**2).sum() + 0.5 * x_.sum() ** 2 + (x_**3).sum() / 3.0
    return _grads(y, None, [x_])[0]


def _optim_step(make, w, g, state=None):
    torch = _torch()
    p = torch.nn.Parameter(torch.tensor(np.asarray(w, dtype=np.float64)))
    opt = make([p])
    p.grad = torch.tensor(np.asarray(g, dtype=np.float64))
    if state is not None:
        opt.state[p].update(state(torch))
    opt.step()
    return p, opt.state[p]


def sgd_step(w, g, lr):
    torch = _torch()
    p, _ = _optim_step(lambda ps: torch.optim.SGD(ps, lr=lr), w, g)
    return _np(p)


def momentum_step(w, g, buf, lr, momentum):
    torch = _torch()
    state = None if buf is None else (lambda t: {"momentum_buffer": t.tensor(np.asarray(buf, dtype=np.float64))})
    p, st = _optim_step(lambda ps: torch.optim.SGD(ps, lr=lr, momentum=momentum), w, g, state)
    return _np(p), _np(st["momentum_buffer"])


def adamw_step(w, g, m, v, t, lr, beta1, beta2, eps, weight_decay):
    torch = _torch()

    def state(tt):
        return {
            "step": tt.tensor(float(t - 1)),
            "exp_avg": tt.tensor(np.asarray(m, dtype=np.float64)),
            "exp_avg_sq": tt.tensor(np.asarray(v, dtype=np.float64)),
        }

    make = lambda ps: torch.optim.AdamW(ps, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)
    p, st = _optim_step(make, w, g, state)
    return _np(p), _np(st["exp_avg"]), _np(st["exp_avg_sq"])


def vit_train_step(x, y, w_proj, cls_token, pos_embed, blocks_weights, w_head, num_heads, lr, patch_size=None):
    """The coding exercise's forward, in torch, from its text: LayerNorm without scale and shift
    (eps 1e-5), tanh GELU, patches flattened (c, p1, p2), cls token classified."""
    return vit_train_step_intermediates(
        x, y, w_proj, cls_token, pos_embed, blocks_weights, w_head, num_heads, lr, patch_size
    )[0]


def vit_train_step_intermediates(
    x,
    y,
    w_proj,
    cls_token,
    pos_embed,
    blocks_weights,
    w_head,
    num_heads,
    lr,
    patch_size=None,
    gelu="tanh",
    layout="cpp",
):
    """-> (flat updated weights, {intermediate: its gradient}) in the exercise's names. `gelu` and
    `layout` exist for the catalogue of mistakes (the exact GELU, lucidrains' patch order)."""
    torch = _torch()
    F = torch.nn.functional
    N, C, h, w = x.shape
    d = w_proj.shape[1]
    P = patch_size or math.isqrt(w_proj.shape[0] // C)
    ws = [_t(a) for a in (w_proj, cls_token, pos_embed, blocks_weights, w_head)]
    wp, cls, pos, blocks, wh = ws
    keep = {}

    def hold(name, t):
        t.retain_grad()
        keep[name] = t
        return t

    xt = torch.tensor(np.asarray(x, dtype=np.float64))
    g = xt.reshape(N, C, h // P, P, w // P, P)
    g = g.permute(0, 2, 4, 1, 3, 5) if layout == "cpp" else g.permute(0, 2, 4, 3, 5, 1)
    g = g.reshape(N, -1, C * P * P)
    patches = hold("patches", g @ wp)
    seq = torch.cat([cls.reshape(1, 1, d).expand(N, 1, d), patches], dim=1) + pos.reshape(1, -1, d)
    H = num_heads
    for b in range(blocks.shape[0]):
        w_q, w_k, w_v, w_o, w1, w2 = (blocks[b, i] for i in range(6))
        z = hold(f"blocks[{b}].norm1", F.layer_norm(seq, (d,), eps=1e-5))
        parts = {}
        attn_out = hold(f"blocks[{b}].attn_out", _attention(z, w_q, w_k, w_v, w_o, None, H, parts))
        keep[f"blocks[{b}].attn"] = parts["A"]
        seq = seq + attn_out
        z = hold(f"blocks[{b}].norm2", F.layer_norm(seq, (d,), eps=1e-5))
        gelu_out = hold(f"blocks[{b}].gelu_out", F.gelu(z @ w1, approximate=gelu))
        seq = seq + hold(f"blocks[{b}].ffn_out", gelu_out @ w2)
    cls_repr = hold("cls_repr", seq[:, 0])
    logits = hold("logits", cls_repr @ wh)
    loss = F.cross_entropy(logits, torch.as_tensor(np.asarray(y), dtype=torch.long))
    loss.backward()
    flat = np.concatenate([(_np(p) - lr * _np(p.grad)).ravel() for p in ws])
    return flat, {k: _np(v.grad) for k, v in keep.items()}


ORACLES = {name: globals()[name] for name in EXERCISE_NAMES}
