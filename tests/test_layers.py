"""Each layer's hand-written backward against torch autograd, in float64, shapes compared."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vitlib
from vitlib.attention import (
    attention_backward,
    attention_forward,
    merge_heads,
    softmax_backward,
    softmax_forward,
    split_heads,
)
from vitlib.embed import patchify, pool_backward, pool_forward, tokens_backward, tokens_forward
from vitlib.gelu import gelu_backward, gelu_forward
from vitlib.layernorm import layernorm_backward, layernorm_forward
from vitlib.linear import linear_backward, linear_forward

rng = np.random.default_rng(0)


def t(a):
    return torch.tensor(a, requires_grad=True)


def close(ours, theirs, tol=1e-12):
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else theirs
    assert ours.shape == theirs.shape, f"shape {ours.shape} != {theirs.shape}"
    assert vitlib.rel_error(ours, theirs) < tol


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(5,), (3, 4)])
def test_linear(bias, lead):
    X, W, b = rng.standard_normal((*lead, 6)), rng.standard_normal((6, 7)), rng.standard_normal(7) if bias else None
    dY = rng.standard_normal((*lead, 7))
    Y, cache = linear_forward(X, W, b)
    dX, dW, db = linear_backward(dY, cache)
    Xt, Wt, bt = t(X), t(W), t(b) if bias else None
    Yt = Xt @ Wt + (bt if bias else 0)
    Yt.backward(torch.tensor(dY))
    close(Y, Yt)
    close(dX, Xt.grad)
    close(dW, Wt.grad)
    if bias:
        close(db, bt.grad)  # (7,), not (1, 7) or (5, 7): the sum over every leading axis
    else:
        assert db is None


@pytest.mark.parametrize("affine", [True, False])
def test_layernorm(affine):
    X = rng.standard_normal((3, 4, 6)) * 3 + 1
    gamma, beta = (rng.standard_normal(6), rng.standard_normal(6)) if affine else (None, None)
    dY = rng.standard_normal(X.shape)
    Y, cache = layernorm_forward(X, gamma, beta)
    X_, _, mean, rstd = cache
    assert X_ is X and mean.shape == rstd.shape == (3, 4, 1)  # the cache: input, mean and rstd only
    dX, dgamma, dbeta = layernorm_backward(dY, cache)
    Xt = t(X)
    gt, bt = (t(gamma), t(beta)) if affine else (None, None)
    Yt = F.layer_norm(Xt, (6,), gt, bt, eps=1e-5)
    Yt.backward(torch.tensor(dY))
    close(Y, Yt)
    close(dX, Xt.grad, 1e-11)
    if affine:
        close(dgamma, gt.grad)
        close(dbeta, bt.grad)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(approximate):
    X = np.linspace(-6, 6, 101).reshape(1, -1) * rng.uniform(0.5, 1.5, (3, 1))
    dY = rng.standard_normal(X.shape)
    Y, cache = gelu_forward(X, approximate)
    Xt = t(X)
    Yt = F.gelu(Xt, approximate=approximate)
    Yt.backward(torch.tensor(dY))
    close(Y, Yt, 1e-14)
    close(gelu_backward(dY, cache), Xt.grad, 1e-14)
    with pytest.raises(ValueError, match="approximate"):
        gelu_forward(X, "sigmoid")


def test_softmax_jvp():
    S = rng.standard_normal((2, 3, 5, 5)) * 4
    dA = rng.standard_normal(S.shape)
    A = softmax_forward(S)
    St = t(S)
    torch.softmax(St, -1).backward(torch.tensor(dA))
    close(A, torch.softmax(torch.tensor(S), -1))
    close(softmax_backward(dA, A), St.grad)
    assert np.isfinite(softmax_forward(np.array([[1e4, -1e4, 0.0]]))).all()


def test_heads_split_and_merge_are_inverse_and_match_einops_order():
    Z = rng.standard_normal((2, 5, 12))
    Zh = split_heads(Z, 3)
    assert Zh.shape == (2, 3, 5, 4)
    assert np.array_equal(Zh[1, 2, 4], Z[1, 4, 8:12])  # head h owns columns h*Dh:(h+1)*Dh
    assert np.array_equal(merge_heads(Zh), Z)


@pytest.mark.parametrize(
    "heads, dh, w_o, b_o, b_qkv",
    [(3, 2, True, True, False), (2, 5, True, False, False), (1, 6, False, False, False), (2, 4, True, True, True)],
)
def test_attention(heads, dh, w_o, b_o, b_qkv):
    N, T, D = 2, 5, 6
    X = rng.standard_normal((N, T, D))
    W = {n: rng.standard_normal((D, heads * dh)) / 2 for n in ("W_q", "W_k", "W_v")}
    B = {n: rng.standard_normal(heads * dh) for n in ("b_q", "b_k", "b_v")} if b_qkv else {}
    W_o = rng.standard_normal((heads * dh, D)) if w_o else None
    bias = rng.standard_normal(D) if b_o else None
    dY = rng.standard_normal((N, T, D))
    Y, cache = attention_forward(X, W["W_q"], W["W_k"], W["W_v"], W_o, bias, heads, **B)
    g = attention_backward(dY, cache)
    Xt, Wt, Bt = t(X), {n: t(v) for n, v in W.items()}, {n: t(v) for n, v in B.items()}
    Wot, bot = (t(W_o) if w_o else None), (t(bias) if b_o else None)

    def heads_of(Z):
        return Z.reshape(N, T, heads, dh).transpose(1, 2)

    Q, K, V = (heads_of(Xt @ Wt["W_" + n] + (Bt["b_" + n] if b_qkv else 0)) for n in ("q", "k", "v"))
    O = (torch.softmax(Q @ K.transpose(-1, -2) / dh**0.5, -1) @ V).transpose(1, 2).reshape(N, T, heads * dh)
    Yt = O @ Wot if w_o else O
    if b_o:
        Yt = Yt + bot
    Yt.backward(torch.tensor(dY))
    close(Y, Yt)
    close(g.dX, Xt.grad)
    for n in ("W_q", "W_k", "W_v"):
        close(getattr(g, "d" + n), Wt[n].grad)
    for n in ("b_q", "b_v"):
        if b_qkv:
            close(getattr(g, "d" + n), Bt[n].grad)  # db_q = sum dQ, db_v = sum dV
        else:
            assert getattr(g, "d" + n) is None
    if b_qkv:  # softmax is shift-invariant along a row: b_k shifts every score of row i by q_i . b_k
        assert np.abs(g.db_k).max() < 1e-12 * np.abs(g.db_q).max()
        assert np.abs(Bt["b_k"].grad.numpy()).max() < 1e-12 * np.abs(g.db_q).max()
    if w_o:
        close(g.dW_o, Wot.grad)
    else:
        assert g.dW_o is None
    if b_o:
        close(g.db_o, bot.grad)
    else:
        assert g.db_o is None


def test_attention_refuses_partial_qkv_biases():
    X, W = rng.standard_normal((1, 2, 4)), rng.standard_normal((4, 4))
    with pytest.raises(ValueError, match="b_q, b_k and b_v"):
        attention_forward(X, W, W, W, None, None, 2, b_q=np.zeros(4))


def test_wq_wk_learn_only_through_the_scores():
    """With all queries equal (one token), softmax over one key is 1 whatever S is: dW_q = dW_k = 0,
    while W_v still learns. The forum's question in one assert."""
    X = rng.standard_normal((2, 1, 4))
    Ws = [rng.standard_normal((4, 4)) for _ in range(4)]
    _, cache = attention_forward(X, *Ws, None, 2)
    g = attention_backward(rng.standard_normal((2, 1, 4)), cache)
    assert np.abs(g.dW_q).max() == 0 and np.abs(g.dW_k).max() == 0
    assert np.abs(g.dW_v).max() > 0


@pytest.mark.parametrize("layout, order", [("cpp", "(c p1 p2)"), ("ppc", "(p1 p2 c)")])
def test_patchify_layouts(layout, order):
    x = rng.standard_normal((2, 3, 6, 4))
    P = patchify(x, (3, 2), layout)
    assert P.shape == (2, 4, 18)
    patch = x[1, :, 3:6, 2:4]  # image 1, patch row 1, patch col 1 -> index 1*2+1
    expected = patch.reshape(-1) if layout == "cpp" else patch.transpose(1, 2, 0).reshape(-1)
    assert np.array_equal(P[1, 3], expected), order


@pytest.mark.parametrize("n_cls", [0, 1])
def test_tokens(n_cls):
    E = rng.standard_normal((3, 4, 5))
    cls, pos = rng.standard_normal((n_cls, 5)), rng.standard_normal((4 + n_cls, 5))
    dX0 = rng.standard_normal((3, 4 + n_cls, 5))
    X0, cache = tokens_forward(E, cls, pos)
    dE, dcls, dpos = tokens_backward(dX0, cache)
    Et, ct, pt = t(E), t(cls), t(pos)
    X0t = torch.cat([ct.expand(3, n_cls, 5), Et], dim=1) + pt
    X0t.backward(torch.tensor(dX0))
    close(X0, X0t)
    close(dE, Et.grad)
    close(dcls, ct.grad)  # (n_cls, D): summed over the batch, never left (N, n_cls, D)
    close(dpos, pt.grad)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_pool(pool):
    X = rng.standard_normal((3, 4, 5))
    d = rng.standard_normal((3, 5))
    out, cache = pool_forward(X, pool)
    Xt = t(X)
    (Xt[:, 0] if pool == "cls" else Xt.mean(1)).backward(torch.tensor(d))
    close(pool_backward(d, cache), Xt.grad)
    before = X.copy()
    out[:] = 0  # the pooled rows are a new array: writing to them leaves X alone
    assert np.array_equal(X, before)


def test_attention_maps_are_row_stochastic_and_match_torch():
    from conftest import random_batch, random_params

    from vit_oracles import lucidrains_from_cfg

    cfg = vitlib.ViTConfig(image_size=4, patch_size=2, num_classes=3, dim=6, depth=2, heads=2, mlp_dim=5, dim_head=3)
    params = random_params(cfg)
    x, _ = random_batch(cfg, n=2)
    maps = vitlib.attention_maps(params, x, cfg)
    assert len(maps) == 2 and all(A.shape == (2, 2, 5, 5) for A in maps)
    assert all(np.allclose(A.sum(-1), 1.0) for A in maps)
    model = lucidrains_from_cfg(cfg).double()
    model.load_state_dict({k: torch.tensor(v) for k, v in vitlib.interop.to_lucidrains(params, cfg).items()})
    seen = []
    for layer in model.transformer.layers:  # capture softmax(S) of each block from torch's own forward
        attn = layer[0].fn
        layer[0].norm.register_forward_hook(lambda m, i, o, attn=attn: seen.append(_torch_attention(attn, o)))
    model(torch.tensor(x))
    for ours, theirs in zip(maps, seen):
        close(ours, theirs)


def _torch_attention(attn, z):
    b, n, _ = z.shape
    q, k, _ = (t.reshape(b, n, attn.heads, -1).transpose(1, 2) for t in attn.to_qkv(z).chunk(3, dim=-1))
    return torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)


# ---------------------------------------------------------------- fused twin == teaching == torch, per layer
# The fast path's kernels (vitlib/fast.py orchestrates them) against the teaching layer and torch, one
# parametrized test per layer: a fused kernel that goes wrong is found here, not only end to end.

FUSED_TOL = {np.float64: 1e-12, np.float32: 3e-6}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("affine, eps", [(True, 1e-5), (False, 1e-5), (True, 1e-12)])
def test_layernorm_fused(affine, eps, dtype):
    from vitlib.layernorm import layernorm_backward_fused, layernorm_forward_fused

    R, D = 12, 7
    X = (rng.standard_normal((R, D)) * 3 + 1).astype(dtype)
    gamma, beta = (
        ((1 + rng.standard_normal(D)).astype(dtype), rng.standard_normal(D).astype(dtype)) if affine else (None, None)
    )
    dY = rng.standard_normal((R, D)).astype(dtype)
    Y, cache = layernorm_forward(X, gamma, beta, eps)
    dX, dg, db = layernorm_backward(dY, cache)
    xhat, Z, scratch = (np.empty((R, D), dtype) for _ in range(3))
    rstd, col, col2 = (np.empty((R, 1), dtype) for _ in range(3))
    layernorm_forward_fused(X, gamma, beta, eps, xhat, rstd, Z, scratch, col)
    Yf = Z if affine else xhat
    dZ, dXf = dY.copy(), np.zeros((R, D), dtype)
    dgf, dbf = layernorm_backward_fused(dZ, xhat, rstd, gamma, dXf, scratch, col, col2)
    Xt = t(X.astype(np.float64))
    gt, bt = (t(gamma.astype(np.float64)), t(beta.astype(np.float64))) if affine else (None, None)
    F.layer_norm(Xt, (D,), gt, bt, eps).backward(torch.tensor(dY.astype(np.float64)))
    tol = FUSED_TOL[dtype]
    for fused, teaching, ref in [(Yf, Y, F.layer_norm(Xt, (D,), gt, bt, eps)), (dXf, dX, Xt.grad)]:
        close(fused, teaching, tol)
        close(fused.astype(np.float64), ref, tol)
    if affine:
        for fused, teaching, ref in [(dgf, dg, gt.grad), (dbf, db, bt.grad)]:
            close(fused, teaching, tol)
            close(fused.astype(np.float64), ref, tol)
    else:
        assert dgf is dbf is dg is None


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["none", "tanh"])
def test_gelu_fused(kind, dtype):
    from vitlib.gelu import gelu_forward_fused

    U = (rng.standard_normal((9, 11)) * 3).astype(dtype)
    dG = rng.standard_normal(U.shape).astype(dtype)
    G, cache = gelu_forward(U, kind)
    dU = gelu_backward(dG, cache)
    Gf, dgelu, s1, s2 = (np.empty_like(U) for _ in range(4))
    gelu_forward_fused(U, Gf, dgelu, kind, s1, s2)
    Ut = t(U.astype(np.float64))
    Gt = F.gelu(Ut, approximate=kind)
    Gt.backward(torch.tensor(dG.astype(np.float64)))
    tol = FUSED_TOL[dtype]
    for fused, teaching, ref in [(Gf, G, Gt), (dG * dgelu, dU, Ut.grad)]:
        close(fused, teaching, tol)
        close(fused.astype(np.float64), ref, tol)


def test_gelu_fused_refuses_an_unknown_kind():
    from vitlib.gelu import gelu_forward_fused

    U = np.ones((2, 2))
    with pytest.raises(ValueError, match="kind"):
        gelu_forward_fused(U, np.empty_like(U), np.empty_like(U), "erf", np.empty_like(U), np.empty_like(U))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("spread", [3.0, 200.0])  # within SHIFT_RANGE (global shift) and beyond (row max)
def test_softmax_fused(spread, dtype):
    from vitlib.attention import softmax_backward_fused, softmax_forward_fused

    S = (rng.standard_normal((2, 3, 5, 5)) * spread).astype(dtype)
    dA = rng.standard_normal(S.shape).astype(dtype)
    A = softmax_forward(S)
    dS = softmax_backward(dA, A)
    Af = S.copy()
    rowmax, rowsum = np.empty((2, 3, 5, 1), dtype), np.empty((2, 3, 5, 1), dtype)
    softmax_forward_fused(Af, rowmax, rowsum)
    dSf = dA.copy()
    softmax_backward_fused(dSf, Af, rowsum, np.empty_like(S))
    St = t(S.astype(np.float64))
    At = torch.softmax(St, -1)
    At.backward(torch.tensor(dA.astype(np.float64)))
    tol = FUSED_TOL[dtype]
    close(Af, A, tol)
    close(Af.astype(np.float64), At, tol)
    # dS = A * dA - A rowsum(A * dA) cancels where a row is near one-hot (spread 200): measure its error
    # against the size of the two terms, |A * dA|, not against the small difference
    size = np.abs(A * dA).max()
    assert np.abs(dSf - dS).max() < tol * size
    assert np.abs(dSf.astype(np.float64) - St.grad.numpy()).max() < tol * size


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_linear_reductions_fused(dtype):
    """The gemv reductions the fused kernels use: row means and db = column sums."""
    from vitlib.linear import col_sum, row_mean

    X = rng.standard_normal((13, 6)).astype(dtype)
    W = rng.standard_normal((6, 4)).astype(dtype)
    dY = rng.standard_normal((13, 4)).astype(dtype)
    _, _, db = linear_backward(dY, linear_forward(X, W, np.zeros(4, dtype))[1])
    out = np.empty((13, 1), dtype)
    row_mean(X, out)
    Xt, bt = t(X.astype(np.float64)), t(np.zeros(4))
    (Xt @ torch.tensor(W.astype(np.float64)) + bt).backward(torch.tensor(dY.astype(np.float64)))
    tol = FUSED_TOL[dtype]
    close(col_sum(dY), db, tol)
    close(col_sum(dY).astype(np.float64), bt.grad, tol)
    close(out, X.mean(axis=1, keepdims=True), tol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rows", [7, 399, 400, 401, 3250])  # below one block, one block, two, a remainder
@pytest.mark.parametrize("din, dout", [(6, 19), (19, 6), (8, 8)])  # both orientations of the product
def test_weight_grad_fused(dtype, rows, din, dout):
    """dW in blocks of rows (linear.weight_grad) == linear_backward's X^T dY == torch's, C-contiguous and fresh."""
    from vitlib.linear import weight_grad

    rng = np.random.default_rng([rows, din, dout])  # its own draws, whatever ran before it in this process
    X = rng.standard_normal((rows, din)).astype(dtype)
    W = rng.standard_normal((din, dout)).astype(dtype)
    dY = rng.standard_normal((rows, dout)).astype(dtype)
    X0, dY0 = X.copy(), dY.copy()
    _, dW, _ = linear_backward(dY, linear_forward(X, W)[1])
    Xt = t(X.astype(np.float64))
    Wt = t(W.astype(np.float64))
    (Xt @ Wt).backward(torch.tensor(dY.astype(np.float64)))
    got = weight_grad(X, dY)
    assert got.dtype == dtype and got.flags.c_contiguous and got.shape == (din, dout)
    assert not np.shares_memory(got, X) and not np.shares_memory(got, dY)
    tol = FUSED_TOL[dtype]
    close(got, dW, tol)
    close(got.astype(np.float64), Wt.grad, tol)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(dY, dY0)
    # a wrong answer is caught: the last row dropped (the remainder's product) is far outside the tolerance
    assert vitlib.rel_error(weight_grad(X[:-1], dY[:-1]), dW) > 1e3 * tol


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.9])
def test_cross_entropy_with_label_smoothing(smoothing):
    """Loss and dlogits against torch's cross_entropy(label_smoothing=eps), and dlogits against central
    differences of our own loss."""
    from vitlib.loss import cross_entropy_backward, cross_entropy_forward

    rng = np.random.default_rng(11)  # not the module's generator: the other tests' draws stay as they were
    Z, y = 3.0 * rng.standard_normal((6, 5)), rng.integers(0, 5, 6)
    loss, cache = cross_entropy_forward(Z, y, smoothing)
    dZ = cross_entropy_backward(0.7, cache)
    Zt = t(Z)
    ref = F.cross_entropy(Zt, torch.tensor(y), label_smoothing=smoothing)
    (0.7 * ref).backward()
    assert vitlib.rel_error(np.array(loss), ref.detach().numpy()) < 1e-12
    close(dZ, Zt.grad)
    h, fd = 1e-6, np.zeros_like(Z)
    for idx in np.ndindex(Z.shape):
        Zp, Zm = Z.copy(), Z.copy()
        Zp[idx] += h
        Zm[idx] -= h
        up, down = cross_entropy_forward(Zp, y, smoothing)[0], cross_entropy_forward(Zm, y, smoothing)[0]
        fd[idx] = 0.7 * (up - down) / (2 * h)
    assert vitlib.rel_error(dZ, fd) < 1e-7


def test_label_smoothing_changes_the_gradient():
    """eps > 0 is not the plain loss: a grader of the smoothed gradient must see the difference."""
    from vitlib.loss import cross_entropy_backward, cross_entropy_forward

    Z, y = np.random.default_rng(12).standard_normal((4, 3)), np.array([0, 1, 2, 0])
    plain = cross_entropy_backward(1.0, cross_entropy_forward(Z, y)[1])
    smooth = cross_entropy_backward(1.0, cross_entropy_forward(Z, y, 0.1)[1])
    assert vitlib.rel_error(plain, smooth) > 1e-3
    assert np.allclose(smooth.sum(axis=1), 0.0)  # each row still sums to zero: the targets sum to one
