"""The catalogue: every exercise's signature, one-line statement, chapter and output layout."""

from dataclasses import dataclass, field

from .names import EXERCISE_NAMES
from .reference import BLOCK_KEYS, SEED_BLOCK_ORDER


@dataclass(frozen=True)
class Exercise:
    name: str
    chapter: int
    signature: str
    statement: str
    outputs: tuple  # names of the outputs, in the order the function returns them
    kind: str = "tuple"  # "array" (one array), "tuple", "dict" (keys = outputs), "flat" (the step's vector)
    updates: dict = field(default_factory=dict)  # output -> argument: compare the step out - arg, not out
    intermediates: tuple = ()  # optional extra gradients the reader may return, in backward order
    check_order: tuple = ()  # the order rows are checked (backward order); default: outputs
    tol64: float = 1e-8
    tol32: float = 1e-4
    torch_tol: float | None = None  # tolerance against torch when the reference is itself approximate

    @property
    def rows_order(self):
        return self.check_order or self.outputs


_ATT_INTER = ("O", "A", "V", "S", "K", "Q")
_PRE_INTER = ("Y_mlp", "G", "U", "Z2", "X1", "Y_attn", *_ATT_INTER, "Z1")
_POST_INTER = ("R2", "Y_mlp", "G", "U", "X1", "R1", "Y_attn", *_ATT_INTER)
_PRE_ORDER = (
    "W_2",
    "b_2",
    "W_1",
    "b_1",
    "ln2_gamma",
    "ln2_beta",
    "W_o",
    "b_o",
    "W_v",
    "W_k",
    "W_q",
    "ln1_gamma",
    "ln1_beta",
    "X",
)
_POST_ORDER = (
    "ln2_gamma",
    "ln2_beta",
    "W_2",
    "b_2",
    "W_1",
    "b_1",
    "ln1_gamma",
    "ln1_beta",
    "W_o",
    "b_o",
    "W_v",
    "W_k",
    "W_q",
    "X",
)

_LIST = [
    Exercise(
        "softmax_ce_backward",
        2,
        "softmax_ce_backward(logits, y) -> dlogits",
        "The gradient of the mean softmax cross-entropy over the batch: logits (N, K), y (N,) class indices.",
        ("dlogits",),
        kind="array",
    ),
    Exercise(
        "linear_backward",
        3,
        "linear_backward(dY, X, W, b) -> (dX, dW, db)",
        "Y = X W + b with X (..., Din), W (Din, Dout), b (Dout,) or None (then db is None).",
        ("dX", "dW", "db"),
    ),
    Exercise(
        "pool_backward",
        3,
        "pool_backward(dpooled, X, pool) -> dX",
        'Pooling X (N, T, D) to (N, D): pool "cls" takes X[:, 0], "mean" the mean over all T tokens.',
        ("dX",),
        kind="array",
    ),
    Exercise(
        "gelu_tanh_backward",
        4,
        "gelu_tanh_backward(dY, X) -> dX",
        "Y = 0.5 X (1 + tanh(sqrt(2/pi) (X + 0.044715 X^3))), elementwise.",
        ("dX",),
        kind="array",
    ),
    Exercise(
        "gelu_erf_backward",
        4,
        "gelu_erf_backward(dY, X) -> dX",
        "Y = X Phi(X), the exact GELU (Phi the standard normal CDF), elementwise.",
        ("dX",),
        kind="array",
    ),
    Exercise(
        "layernorm_backward",
        5,
        "layernorm_backward(dY, X, gamma, beta, eps) -> (dX, dgamma, dbeta)",
        "LayerNorm over the last axis of X (..., D), population variance; gamma, beta (D,) or None "
        "(then dgamma, dbeta are None).",
        ("dX", "dgamma", "dbeta"),
    ),
    Exercise(
        "softmax_backward",
        6,
        "softmax_backward(dA, S) -> dS",
        "A = softmax(S) over the last axis, S of any shape (..., T).",
        ("dS",),
        kind="array",
    ),
    Exercise(
        "attention_head_backward",
        6,
        "attention_head_backward(dO, X, W_q, W_k, W_v) -> (dX, dW_q, dW_k, dW_v)",
        "One head: X (N, T, D), W_q/W_k/W_v (D, D_h), O = softmax(Q K^T / sqrt(D_h)) V. Optionally return a "
        "5th item, a dict of the gradients of 'A', 'V', 'S', 'K', 'Q'.",
        ("dX", "dW_q", "dW_k", "dW_v"),
        intermediates=("A", "V", "S", "K", "Q"),
    ),
    Exercise(
        "attention_backward",
        6,
        "attention_backward(dY, X, W_q, W_k, W_v, W_o, heads) -> (dX, dW_q, dW_k, dW_v, dW_o)",
        "Multi-head self-attention without biases: W_q/W_k/W_v (D, H*D_h), W_o (H*D_h, D), Y = O W_o. "
        "Optionally return a 6th item, a dict of the gradients of 'O', 'A', 'V', 'S', 'K', 'Q'.",
        ("dX", "dW_q", "dW_k", "dW_v", "dW_o"),
        intermediates=_ATT_INTER,
    ),
    Exercise(
        "postln_block_backward",
        7,
        "postln_block_backward(dY, X, p, heads, eps) -> dict",
        "The post-LN block X1 = LN1(X + Attn(X)), Y = LN2(X1 + MLP(X1)), exact GELU; return {'X': dX, "
        "every key of p: its gradient}, optionally with intermediates (Exercise.intermediates).",
        ("X", *BLOCK_KEYS),
        kind="dict",
        intermediates=_POST_INTER,
        check_order=_POST_ORDER,
    ),
    Exercise(
        "tokens_backward",
        8,
        "tokens_backward(dX0, E, cls, pos) -> (dE, dcls, dpos)",
        "X0 = concat(cls (n_cls, D) broadcast over the batch, E (N, Np, D)) along tokens, + pos (T, D).",
        ("dE", "dcls", "dpos"),
    ),
    Exercise(
        "unpatchify",
        8,
        "unpatchify(dpatches, image_shape, patch_size) -> dx",
        "The adjoint of lucidrains' patchify 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)': dpatches (N, Np, F), "
        "image_shape (N, C, H, W), patch_size (ph, pw).",
        ("dx",),
        kind="array",
    ),
    Exercise(
        "patch_embed_backward",
        8,
        "patch_embed_backward(dE, x, W_patch, b_patch, patch_size) -> (dx, dW_patch, db_patch)",
        "E = patchify(x) W_patch + b_patch, patchify as in unpatchify's statement, patch_size (ph, pw), "
        "b_patch (D,) or None (then db_patch is None).",
        ("dx", "dW_patch", "db_patch"),
    ),
    Exercise(
        "preln_block_backward",
        9,
        "preln_block_backward(dY, X, p, heads, eps) -> dict",
        "The pre-LN block X1 = X + Attn(LN1(X)), Y = X1 + MLP(LN2(X1)), exact GELU; return {'X': dX, "
        "every key of p: its gradient}, optionally with intermediates (Exercise.intermediates).",
        ("X", *BLOCK_KEYS),
        kind="dict",
        intermediates=_PRE_INTER,
        check_order=_PRE_ORDER,
    ),
    Exercise(
        "numerical_gradient",
        10,
        "numerical_gradient(f, x, eps) -> g",
        "Central differences (f(x + eps e_i) - f(x - eps e_i)) / (2 eps) of a scalar function f at x, for every i.",
        ("g",),
        kind="array",
        torch_tol=1e-6,
    ),
    Exercise(
        "sgd_step",
        11,
        "sgd_step(w, g, lr) -> w",
        "Plain SGD: w - lr g, returned as a new array.",
        ("w",),
        kind="array",
        updates={"w": "w"},
    ),
    Exercise(
        "momentum_step",
        11,
        "momentum_step(w, g, buf, lr, momentum) -> (w, buf)",
        "torch.optim.SGD with momentum: buf = g at the first step (buf None), else momentum buf + g; w - lr buf.",
        ("w", "buf"),
        updates={"w": "w"},
    ),
    Exercise(
        "adamw_step",
        11,
        "adamw_step(w, g, m, v, t, lr, beta1, beta2, eps, weight_decay) -> (w, m, v)",
        "One torch.optim.AdamW step, t its number (1 at the first): decoupled decay, both moments, bias correction.",
        ("w", "m", "v"),
        updates={"w": "w"},
    ),
    Exercise(
        "vit_train_step",
        14,
        "vit_train_step(x, y, w_proj, cls_token, pos_embed, blocks_weights, w_head, num_heads, lr, "
        "patch_size=None) -> flat updated weights",
        "The coding exercise: one SGD step of the seed ViT (blocks_weights (num_blocks, 6, d, d) = "
        "[w_q, w_k, w_v, w_o, w_mlp1, w_mlp2]), returning concat(w_proj, cls_token, pos_embed, "
        "blocks_weights, w_head) flattened. Optionally return (flat, {name: gradient}) with some of "
        "'logits', 'cls_repr', 'blocks[b].ffn_out', 'gelu_out', 'norm2', 'attn_out', 'attn' (the softmax "
        "weights), 'norm1', 'patches' (after w_proj).",
        (),
        kind="flat",
    ),
]

EXERCISES = {e.name: e for e in _LIST}
if set(EXERCISES) != set(EXERCISE_NAMES):  # one list of names keys the cases, references and oracles
    raise RuntimeError(f"vitlib.grade: EXERCISES and EXERCISE_NAMES differ: {set(EXERCISES) ^ set(EXERCISE_NAMES)}")


SEED_BLOCK_INTERMEDIATES = ("ffn_out", "gelu_out", "norm2", "attn_out", "attn", "norm1")


def seed_intermediates(num_blocks):
    """The step's optional intermediates, in backward order, in the exercise's own names: the reader
    may return (flat, {"logits": dlogits, "blocks[1].gelu_out": dgelu_out, ...})."""
    names = ["logits", "cls_repr"]
    for b in reversed(range(num_blocks)):
        names += [f"blocks[{b}].{n}" for n in SEED_BLOCK_INTERMEDIATES]
    return names + ["patches"]


def flat_segments(args):
    """The step's flat output as named pieces [(name, shape, argument array)], in backward order:
    w_head first, then each block from the last (w_mlp2 ... w_q), then pos, cls, w_proj."""
    x, y, w_proj, cls_token, pos_embed, blocks, w_head = args[:7]
    pieces = [("w_proj", w_proj), ("cls_token", cls_token), ("pos_embed", pos_embed)]
    for b in range(blocks.shape[0]):
        for i, n in enumerate(SEED_BLOCK_ORDER):
            pieces.append((f"blocks[{b}].{n}", blocks[b, i]))
    pieces.append(("w_head", w_head))
    offsets, start = {}, 0
    for name, a in pieces:
        offsets[name] = (start, start + a.size, a.shape, a)
        start += a.size
    order = ["w_head"]
    for b in reversed(range(blocks.shape[0])):
        order += [f"blocks[{b}].{n}" for n in ("w_mlp2", "w_mlp1", "w_o", "w_v", "w_k", "w_q")]
    order += ["pos_embed", "cls_token", "w_proj"]
    return [(n, *offsets[n]) for n in order], start
