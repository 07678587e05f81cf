"""vitlib.variants: post-LN blocks against torch autograd and finite differences; pre-LN == vitlib.model."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_grads_match, exactly_zero
from einops import rearrange

import vitlib
from vitlib import variants
from vitlib.arch import ARCHS, cases


def _sizes(style, pool):
    """A small config of `style` with `pool`, within what its Arch flags allow (rectangular blocks and
    Dh != D / H unless the architecture needs them square)."""
    arch = ARCHS[style]
    d = dict(image_size=4, patch_size=2, num_classes=3, dim=8, depth=2, heads=2, dim_head=3, mlp_dim=12)
    if arch.inner_is_dim:
        d["dim_head"] = d["dim"] // d["heads"]
    if arch.mlp_is_dim:
        d["mlp_dim"] = d["dim"]
    return dict(d, channels=2, pool=pool, style=style)


# every architecture of vitlib.arch.ARCHS x every pool it has, then any special configs on top (none today)
CONFIGS = {f"{style}-{pool}": _sizes(style, pool) for style, pool in cases()}
EXTRA_CONFIGS: dict = {}
CONFIGS.update(EXTRA_CONFIGS)


def make(name, dtype=np.float64, N=3, seed=0):
    cfg = vitlib.ViTConfig(**{"channels": 1, **CONFIGS[name]})
    params = vitlib.init_params(cfg, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 1)
    # LayerNorm scales and shifts away from 1 and 0, so their gradients are tested in general position
    for k in params:
        if k.endswith("gamma"):
            params[k] = (1 + 0.3 * rng.standard_normal(params[k].shape)).astype(dtype)
        elif k.endswith("beta"):
            params[k] = (0.3 * rng.standard_normal(params[k].shape)).astype(dtype)
    x = rng.standard_normal((N, cfg.channels, *cfg.image_size)).astype(dtype)
    y = rng.integers(0, cfg.num_classes, N)
    return cfg, params, x, y


def torch_vit(tp, x, cfg, variant):
    """Plain-torch ViT over vitlib's parameter names, pre-LN or post-LN, read from cfg.arch's flags (absent
    keys skip their term); the autograd oracle."""
    a, get = cfg.arch, tp.get
    H, ph, pw = cfg.heads, *cfg.patch_size
    order = "(c p1 p2)" if a.patch_layout == "cpp" else "(p1 p2 c)"
    P = rearrange(x, f"b c (h p1) (w p2) -> b (h w) {order}", p1=ph, p2=pw)

    def ln(X, key):
        return F.layer_norm(X, X.shape[-1:], get(key + ".gamma"), get(key + ".beta"), eps=a.norm_eps)

    def lin(X, W, b):
        return X @ W + (b if b is not None else 0)

    if a.patch_norms:
        P = ln(P, "ln_patch_in")
    E = lin(P, tp["W_patch"], get("b_patch"))
    if a.patch_norms:
        E = ln(E, "ln_patch_out")
    X = torch.cat([tp["cls"].expand(x.shape[0], -1, -1), E], dim=1) + tp["pos"]
    for b in range(cfg.depth):
        p = lambda n, b=b: get(f"blocks.{b}.{n}")

        def attn(Z, p=p):
            q, k, v = (rearrange(lin(Z, p("W_" + n), p("b_" + n)), "b n (h d) -> b h n d", h=H) for n in "qkv")
            A = torch.softmax(q @ k.transpose(-1, -2) * cfg.dim_head**-0.5, dim=-1)
            O = rearrange(A @ v, "b h n d -> b n (h d)")
            return O if p("W_o") is None else lin(O, p("W_o"), p("b_o"))

        def mlp(Z, p=p):
            return lin(F.gelu(lin(Z, p("W_1"), p("b_1")), approximate=a.gelu), p("W_2"), p("b_2"))

        if variant == "pre":
            X = X + attn(ln(X, f"blocks.{b}.ln1"))
            X = X + mlp(ln(X, f"blocks.{b}.ln2"))
        else:
            X = ln(X + attn(X), f"blocks.{b}.ln1")
            X = ln(X + mlp(X), f"blocks.{b}.ln2")
    if a.final_norm:
        X = ln(X, "ln_final")
    pooled = X[:, 0] if cfg.pool == "cls" else X.mean(dim=1)
    if a.head_norm:
        pooled = ln(pooled, "ln_head")
    return lin(pooled, tp["W_head"], get("b_head"))


def torch_loss_and_grads(params, x, y, cfg, variant):
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    loss = F.cross_entropy(torch_vit(tp, torch.tensor(x), cfg, variant), torch.tensor(y))
    loss.backward()
    return loss.item(), {k: t.grad.numpy() for k, t in tp.items()}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_pre_variant_is_vitlib_model_bit_for_bit(name):
    cfg, params, x, y = make(name)
    loss, grads = vitlib.loss_and_grads(params, x, y, cfg, fast=False)  # the teaching path, vitlib.model
    loss_v, grads_v = variants.loss_and_grads(params, x, y, cfg, "pre")
    assert loss_v == loss
    assert grads_v.keys() == grads.keys()
    for k in grads:
        assert np.array_equal(grads_v[k], grads[k]), k


@pytest.mark.parametrize("variant", variants.VARIANTS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_variants_match_torch_autograd_float64(name, variant):
    cfg, params, x, y = make(name)
    loss, grads = variants.loss_and_grads(params, x, y, cfg, variant)
    t_loss, t_grads = torch_loss_and_grads(params, x, y, cfg, variant)
    assert abs(loss - t_loss) < 1e-12 * max(1.0, abs(t_loss))
    assert all(grads[k].shape == params[k].shape for k in grads)
    assert_grads_match(grads, t_grads, tol=1e-10)  # db_k (zero in exact arithmetic): round-off on both sides


@pytest.mark.parametrize("name", list(CONFIGS))
def test_post_ln_matches_central_differences(name):
    cfg, params, x, y = make(name, N=2)
    _, grads = variants.loss_and_grads(params, x, y, cfg, "post")
    eps = 1e-5
    rng = np.random.default_rng(3)
    numeric, analytic = {}, {}
    for k, p in params.items():
        coords = rng.choice(p.size, size=min(p.size, 4), replace=False)
        numeric[k], analytic[k] = [], []
        for i in coords:
            idx = np.unravel_index(i, p.shape)
            work = dict(params)
            values = []
            for sign in (1, -1):
                shifted = p.copy()
                shifted[idx] += sign * eps
                work[k] = shifted
                values.append(variants.loss_and_grads(work, x, y, cfg, "post")[0])
            numeric[k].append((values[0] - values[1]) / (2 * eps))
            analytic[k].append(grads[k][idx])
    scale = max(float(np.abs(v).max(initial=0.0)) for v in numeric.values())
    for k in params:
        if params[k].size == 0:  # vit-pytorch's cls under mean pooling: (0, D), no coordinate to move
            assert grads[k].shape == params[k].shape, k
            continue
        if exactly_zero(k):  # db_k: zero in exact arithmetic, round-off on both sides
            assert max(np.abs(analytic[k]).max(), np.abs(numeric[k]).max()) < 1e-10 * scale, k
            continue
        assert vitlib.rel_error(analytic[k], numeric[k]) < 1e-6, k


def test_post_ln_block_alone_matches_torch():
    rng = np.random.default_rng(0)
    cfg, params, _, _ = make("lucidrains-cls")
    X = rng.standard_normal((2, 5, cfg.dim))
    dY = rng.standard_normal(X.shape)
    p = lambda n: params.get(f"blocks.0.{n}")
    Y, cache = variants.post_ln_block_forward(X, p, cfg.heads, "none")
    dX, g = variants.post_ln_block_backward(dY, cache)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    tX = torch.tensor(X, requires_grad=True)
    q, k_, v = (rearrange(tX @ tp[f"blocks.0.{w}"], "b n (h d) -> b h n d", h=cfg.heads) for w in ("W_q", "W_k", "W_v"))
    A = torch.softmax(q @ k_.transpose(-1, -2) * cfg.dim_head**-0.5, dim=-1)
    Ya = rearrange(A @ v, "b h n d -> b n (h d)") @ tp["blocks.0.W_o"] + tp["blocks.0.b_o"]
    X1 = F.layer_norm(tX + Ya, (cfg.dim,), tp["blocks.0.ln1.gamma"], tp["blocks.0.ln1.beta"])
    Ym = F.gelu(X1 @ tp["blocks.0.W_1"] + tp["blocks.0.b_1"]) @ tp["blocks.0.W_2"] + tp["blocks.0.b_2"]
    tY = F.layer_norm(X1 + Ym, (cfg.dim,), tp["blocks.0.ln2.gamma"], tp["blocks.0.ln2.beta"])
    tY.backward(torch.tensor(dY))
    assert vitlib.rel_error(Y, tY.detach().numpy()) < 1e-12
    assert vitlib.rel_error(dX, tX.grad.numpy()) < 1e-10
    for name, v in g.items():
        if v is not None:
            assert vitlib.rel_error(v, tp[f"blocks.0.{name}"].grad.numpy()) < 1e-10, name


@pytest.mark.parametrize("variant", variants.VARIANTS)
def test_grad_norms_per_block(variant):
    cfg, params, x, y = make("lucidrains-cls")
    r = variants.grad_norms_per_block(params, x, y, cfg, variant)
    loss, grads = variants.loss_and_grads(params, x, y, cfg, variant)
    assert float(r["loss"]) == loss
    assert r["dX"].shape == (cfg.depth + 1,) and r["dW"].shape == (cfg.depth,)
    for b in range(cfg.depth):
        block = [g for k, g in grads.items() if k.startswith(f"blocks.{b}.")]
        assert np.isclose(r["dW"][b], np.sqrt(sum((g * g).sum() for g in block)), rtol=1e-12)
        assert np.isclose(r["dW.W_q"][b], np.linalg.norm(grads[f"blocks.{b}.W_q"]), rtol=1e-12)
    # the stream entering the last block is pooled: with cls pooling only row 0 carries gradient,
    # and dX_0 (the embeddings) sums into dpos over the batch
    assert np.linalg.norm(grads["pos"]) <= np.sqrt(x.shape[0]) * r["dX"][0] * (1 + 1e-12)


def test_float32_post_ln_runs_in_float32():
    cfg, params, x, y = make("lucidrains-cls", dtype=np.float32)
    loss, grads = variants.loss_and_grads(params, x, y, cfg, "post")
    assert np.isfinite(loss) and all(g.dtype == np.float32 for g in grads.values())


def test_bad_variant_is_named():
    cfg, params, x, y = make("seed-cls")
    with pytest.raises(ValueError, match="variant must be one of"):
        variants.loss_and_grads(params, x, y, cfg, "sandwich")
