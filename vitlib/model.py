"""The whole ViT: forward over the blocks, backward through them in reverse (chapter 9).

Every forward line returns a cache; every backward line undoes one forward line, in
reverse order, and is named after it (d<name>). All architectures share this file: it reads
the flags of `cfg.arch` (vitlib/arch.py), and a `None` parameter (no bias, no LayerNorm scale,
no W_o) simply skips its term.
"""

from typing import NamedTuple

import numpy as np

from .attention import attention_backward, attention_forward, attention_weights
from .config import ViTConfig
from .embed import patchify, pool_backward, pool_forward, tokens_backward, tokens_forward
from .gelu import gelu_backward, gelu_forward
from .layernorm import EPS, layernorm_backward, layernorm_forward
from .linear import linear_backward, linear_forward
from .loss import cross_entropy_backward, cross_entropy_forward
from .validate import check_images, check_labels, check_params, check_scalar


class BlockCache(NamedTuple):
    ln1: tuple
    attn: tuple
    ln2: tuple
    fc1: tuple
    gelu: tuple
    fc2: tuple


def block_forward(X, p, heads, gelu="none", eps=EPS):
    """One pre-LN block: X = X + Attn(LN1(X)); X = X + MLP(LN2(X)).  X (N, T, D).

    `p` maps the block's short names (W_q, ln1.gamma, ...) to arrays; absent ones are None.
    """
    Z1, c_ln1 = layernorm_forward(X, p("ln1.gamma"), p("ln1.beta"), eps)
    Ya, c_attn = attention_forward(Z1, p("W_q"), p("W_k"), p("W_v"), p("W_o"), p("b_o"), heads,
                                   b_q=p("b_q"), b_k=p("b_k"), b_v=p("b_v"))  # fmt: skip
    X = X + Ya  # residual 1
    Z2, c_ln2 = layernorm_forward(X, p("ln2.gamma"), p("ln2.beta"), eps)
    U, c_fc1 = linear_forward(Z2, p("W_1"), p("b_1"))
    G, c_gelu = gelu_forward(U, gelu)
    Ym, c_fc2 = linear_forward(G, p("W_2"), p("b_2"))
    X = X + Ym  # residual 2
    return X, BlockCache(c_ln1, c_attn, c_ln2, c_fc1, c_gelu, c_fc2)


ATTENTION_PARAMS = ("W_q", "W_k", "W_v", "W_o", "b_o", "b_q", "b_k", "b_v")


def block_backward(dX, cache):
    """dX (N, T, D) -> (dX into the block, grads by short name)."""
    c_ln1, c_attn, c_ln2, c_fc1, c_gelu, c_fc2 = cache
    g = {}
    # residual 2: dX flows unchanged past the add, and also into the MLP branch
    dG, g["W_2"], g["b_2"] = linear_backward(dX, c_fc2)
    dU = gelu_backward(dG, c_gelu)
    dZ2, g["W_1"], g["b_1"] = linear_backward(dU, c_fc1)
    dX_ln2, g["ln2.gamma"], g["ln2.beta"] = layernorm_backward(dZ2, c_ln2)
    dX = dX + dX_ln2  # the two paths into X meet again: gradients add
    # residual 1: the same pattern around attention
    ga = attention_backward(dX, c_attn)
    for name in ATTENTION_PARAMS:
        g[name] = getattr(ga, "d" + name)
    dX_ln1, g["ln1.gamma"], g["ln1.beta"] = layernorm_backward(ga.dX, c_ln1)
    dX = dX + dX_ln1
    return dX, g


def forward(params, x, cfg: ViTConfig, block=None):
    """logits (N, K) and the cache for `backward`. x must already be validated and cast.
    `block` swaps in another block with block_forward's signature (chapter 7's post-LN block)."""
    block = block or block_forward  # looked up at call time, so chapter 13 can swap in a broken one
    a = cfg.arch
    get = params.get
    eps = a.norm_eps
    caches = {}
    P = patchify(x, cfg.patch_size, a.patch_layout)  # (N, Np, F)
    if a.patch_norms:
        P, caches["ln_patch_in"] = layernorm_forward(P, get("ln_patch_in.gamma"), get("ln_patch_in.beta"), eps)
    E, caches["patch"] = linear_forward(P, params["W_patch"], get("b_patch"))  # (N, Np, D)
    if a.patch_norms:
        E, caches["ln_patch_out"] = layernorm_forward(E, get("ln_patch_out.gamma"), get("ln_patch_out.beta"), eps)
    X, caches["tokens"] = tokens_forward(E, params["cls"], params["pos"])  # (N, T, D)
    caches["blocks"] = []
    for b in range(cfg.depth):
        X, c = block(X, lambda name, b=b: get(f"blocks.{b}.{name}"), cfg.heads, a.gelu, eps)
        caches["blocks"].append(c)
    if a.final_norm:
        X, caches["ln_final"] = layernorm_forward(X, get("ln_final.gamma"), get("ln_final.beta"), eps)
    pooled, caches["pool"] = pool_forward(X, cfg.pool)  # (N, D)
    if a.head_norm:
        pooled, caches["ln_head"] = layernorm_forward(pooled, get("ln_head.gamma"), get("ln_head.beta"), eps)
    logits, caches["head"] = linear_forward(pooled, params["W_head"], get("b_head"))  # (N, K)
    return logits, caches


def backward(dlogits, caches, cfg: ViTConfig, block=None):
    """dlogits (N, K) -> grads, a dict with exactly the params' keys and shapes."""
    block = block or block_backward
    a = cfg.arch
    grads = {}
    dpooled, grads["W_head"], grads["b_head"] = linear_backward(dlogits, caches["head"])
    if a.head_norm:
        dpooled, grads["ln_head.gamma"], grads["ln_head.beta"] = layernorm_backward(dpooled, caches["ln_head"])
    dX = pool_backward(dpooled, caches["pool"])
    if a.final_norm:
        dX, grads["ln_final.gamma"], grads["ln_final.beta"] = layernorm_backward(dX, caches["ln_final"])
    for b in reversed(range(cfg.depth)):
        dX, g = block(dX, caches["blocks"][b])
        grads.update({f"blocks.{b}.{name}": v for name, v in g.items()})
    dE, grads["cls"], grads["pos"] = tokens_backward(dX, caches["tokens"])
    if a.patch_norms:
        dE, grads["ln_patch_out.gamma"], grads["ln_patch_out.beta"] = layernorm_backward(dE, caches["ln_patch_out"])
    dP, grads["W_patch"], grads["b_patch"] = linear_backward(dE, caches["patch"])
    if a.patch_norms:
        _, grads["ln_patch_in.gamma"], grads["ln_patch_in.beta"] = layernorm_backward(dP, caches["ln_patch_in"])
    return {k: v for k, v in grads.items() if v is not None}  # absent params have no gradient


def logits(params, x, cfg: ViTConfig, fast: bool = False) -> np.ndarray:
    """The forward pass alone, with full input checks: x (N, C, img_h, img_w) -> (N, K).
    fast: True runs the fast step's forward (vitlib/fast.py, fast_logits), in batches of 128 on every core."""
    dtype = check_params(params, cfg)
    x = check_images(x, cfg, dtype)
    if fast:
        from .fast import fast_logits

        return fast_logits(params, x, cfg)
    return forward(params, x, cfg)[0]


def attention_maps(params, x, cfg: ViTConfig) -> list[np.ndarray]:
    """The attention weights A of every block, a list of depth arrays (N, H, T, T); row i of
    A[n, h] is how token i of image n spreads its attention over the T tokens in head h."""
    dtype = check_params(params, cfg)
    _, caches = forward(params, check_images(x, cfg, dtype), cfg)
    return [attention_weights(c.attn) for c in caches["blocks"]]


def loss_and_grads(params, x, y, cfg: ViTConfig, fast: bool = True, smoothing: float = 0.0):
    """Mean softmax cross-entropy of the batch and its gradient for every parameter.

    params: dict from `init_params` (all float32 or all float64; the computation uses that dtype)
    x: (N, C, img_h, img_w) real array;  y: (N,) integer class indices.
    fast: True runs vitlib/fast.py, the same maths fused in a workspace reused across calls
    (tests/test_fast.py holds it to the teaching path); False runs the three lines below.
    smoothing: label smoothing eps in [0, 1): the targets are (1 - eps) onehot(y) + eps / K (vitlib.loss).
    Returns (loss: float, grads: dict with params' keys and shapes). Inputs are not modified;
    the grads are fresh arrays owned by the caller.
    """
    dtype = check_params(params, cfg)
    x = check_images(x, cfg, dtype)
    y = check_labels(y, x.shape[0], cfg.num_classes)
    smoothing = check_scalar("smoothing", smoothing, below=1.0)
    if fast:
        from .fast import fast_loss_and_grads

        return fast_loss_and_grads(params, x, y, cfg, smoothing)
    out, caches = forward(params, x, cfg)
    loss, c_loss = cross_entropy_forward(out, y, smoothing)
    grads = backward(cross_entropy_backward(1.0, c_loss), caches, cfg)
    return loss, grads
