"""Pre-LN against post-LN blocks, and gradient norms per block (chapter 7).

pre-LN  (ViT, lucidrains, the exercise):   X' = X + f(LN(X))          -- vitlib.model.block_forward
post-LN (the original Transformer, 2017):  X' = LN(X + f(X))           -- post_ln_block_forward here

Both blocks read the same parameters by the same short names (ln1.*, W_q, ..., ln2.*, W_1, ...),
so one params dict from `init_params` drives either variant: in post-LN, ln1 normalises the
stream after the attention residual and ln2 after the MLP residual.

`forward` / `backward` run the whole ViT with either block (variant="pre" gives exactly
vitlib.model.forward / backward, which the tests check bit for bit); `backward` can also
record dX at every block boundary, which `grad_norms_per_block` turns into the figure's numbers.
"""

import numpy as np

from . import model
from .attention import attention_backward, attention_forward
from .config import ViTConfig
from .gelu import gelu_backward, gelu_forward
from .layernorm import EPS, layernorm_backward, layernorm_forward
from .linear import linear_backward, linear_forward
from .loss import cross_entropy_backward, cross_entropy_forward
from .model import ATTENTION_PARAMS, BlockCache, block_backward, block_forward
from .validate import check_images, check_labels, check_params

VARIANTS = ("pre", "post")


def post_ln_block_forward(X, p, heads, gelu="none", eps=EPS):
    """One post-LN block: X = LN1(X + Attn(X)); X = LN2(X + MLP(X)).  X (N, T, D).

    `p` maps the block's short names (W_q, ln1.gamma, ...) to arrays; absent ones are None.
    """
    Ya, c_attn = attention_forward(X, p("W_q"), p("W_k"), p("W_v"), p("W_o"), p("b_o"), heads,
                                   b_q=p("b_q"), b_k=p("b_k"), b_v=p("b_v"))  # fmt: skip
    X, c_ln1 = layernorm_forward(X + Ya, p("ln1.gamma"), p("ln1.beta"), eps)  # residual 1, then LN1
    U, c_fc1 = linear_forward(X, p("W_1"), p("b_1"))
    G, c_gelu = gelu_forward(U, gelu)
    Ym, c_fc2 = linear_forward(G, p("W_2"), p("b_2"))
    X, c_ln2 = layernorm_forward(X + Ym, p("ln2.gamma"), p("ln2.beta"), eps)  # residual 2, then LN2
    return X, BlockCache(ln1=c_ln1, attn=c_attn, ln2=c_ln2, fc1=c_fc1, gelu=c_gelu, fc2=c_fc2)


def post_ln_block_backward(dX, cache):
    """dX (N, T, D) -> (dX into the block, grads by short name). Every gradient, the
    residual path included, now passes through a LayerNorm backward."""
    c_ln1, c_attn, c_ln2, c_fc1, c_gelu, c_fc2 = cache  # the same named cache as the pre-LN block
    g = {}
    dR, g["ln2.gamma"], g["ln2.beta"] = layernorm_backward(dX, c_ln2)  # R = X1 + MLP(X1)
    dG, g["W_2"], g["b_2"] = linear_backward(dR, c_fc2)
    dU = gelu_backward(dG, c_gelu)
    dX1, g["W_1"], g["b_1"] = linear_backward(dU, c_fc1)
    dX1 = dR + dX1  # the residual path and the MLP path into X1 add
    dR, g["ln1.gamma"], g["ln1.beta"] = layernorm_backward(dX1, c_ln1)  # R = X + Attn(X)
    ga = attention_backward(dR, c_attn)
    for name in ATTENTION_PARAMS:
        g[name] = getattr(ga, "d" + name)
    return dR + ga.dX, g  # the residual path and the attention path into X add


_BLOCKS = {"pre": (block_forward, block_backward), "post": (post_ln_block_forward, post_ln_block_backward)}


def _blocks(variant):
    if variant not in _BLOCKS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return _BLOCKS[variant]


def forward(params, x, cfg: ViTConfig, variant="pre"):
    """logits (N, K) and caches, with pre-LN or post-LN blocks: vitlib.model.forward with
    another block swapped in. x must already be validated and cast."""
    return model.forward(params, x, cfg, block=_blocks(variant)[0])


def backward(dlogits, caches, cfg: ViTConfig, variant="pre", trace=None):
    """dlogits (N, K) -> grads (params' keys). If `trace` is a list, it receives dX at every
    block boundary, output side first: dX_depth (into the last block), ..., dX_0 (the embeddings)."""
    block_bwd = _blocks(variant)[1]
    if trace is not None:
        inner = block_bwd

        def block_bwd(dX, cache):
            if not trace:
                trace.append(dX)  # the gradient entering the last block
            dX, g = inner(dX, cache)
            trace.append(dX)  # the gradient leaving this block, entering the one below
            return dX, g

    return model.backward(dlogits, caches, cfg, block=block_bwd)


def loss_and_grads(params, x, y, cfg: ViTConfig, variant="pre"):
    """vitlib.loss_and_grads with the chosen block: (mean cross-entropy, grads)."""
    dtype = check_params(params, cfg)
    x = check_images(x, cfg, dtype)
    y = check_labels(y, x.shape[0], cfg.num_classes)
    out, caches = forward(params, x, cfg, variant)
    loss, c_loss = cross_entropy_forward(out, y)
    return loss, backward(cross_entropy_backward(1.0, c_loss), caches, cfg, variant)


def forward_post_ln(params, x, cfg: ViTConfig):
    """The whole ViT with post-LN blocks: logits (N, K) and caches."""
    return forward(params, x, cfg, "post")


def backward_post_ln(dlogits, caches, cfg: ViTConfig):
    """The backward of `forward_post_ln`: dlogits -> grads."""
    return backward(dlogits, caches, cfg, "post")


def grad_norms_per_block(params, x, y, cfg: ViTConfig, variant="pre"):
    """Gradient norms of one batch, block by block, for the pre-LN or the post-LN model.

    Returns a dict of numpy arrays:
      "dX":  (depth + 1,)  ||dL/dX_b||, X_b the residual stream entering block b (X_depth leaves the last block)
      "dW":  (depth,)      the norm of all of block b's parameter gradients together
      "dW.<name>": (depth,) the norm of one parameter's gradient (W_q, W_1, ln1.gamma, ...) per block
      "loss": the batch's loss (a 0-d array)
    """
    dtype = check_params(params, cfg)
    x = check_images(x, cfg, dtype)
    y = check_labels(y, x.shape[0], cfg.num_classes)
    out, caches = forward(params, x, cfg, variant)
    loss, c_loss = cross_entropy_forward(out, y)
    trace = []
    grads = backward(cross_entropy_backward(1.0, c_loss), caches, cfg, variant, trace)
    result = {"loss": np.array(loss), "dX": np.array([np.linalg.norm(d) for d in reversed(trace)])}
    names = [k.split(".", 2)[2] for k in grads if k.startswith("blocks.0.")]
    for name in names:
        result["dW." + name] = np.array([np.linalg.norm(grads[f"blocks.{b}.{name}"]) for b in range(cfg.depth)])
    result["dW"] = np.sqrt(sum(result["dW." + name] ** 2 for name in names))
    return result
