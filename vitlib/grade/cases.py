"""Hidden random cases: fresh draws from the seed, every shape different from every other.

Sizes are chosen so no mistake can hide behind a coincidence: H*D_h != D != M, T != D,
K != D, rectangular images and patches, a batch of one and a larger batch, more than one
head and block, float64 throughout. A case that exists to expose one mistake (a square W for
the transposed dW) says so in its label and comes after the general ones.
"""

import zlib
from dataclasses import dataclass, field

import numpy as np

from .names import EXERCISE_NAMES


@dataclass
class Case:
    label: str  # "N=2, T=5, D=6, H=2, D_h=4": printed in the report
    args: tuple  # the reader's positional arguments
    arg_names: tuple
    extra: dict = field(default_factory=dict)


def rng_for(name, seed):
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def _n(rng, *shape, scale=1.0):
    return scale * rng.standard_normal(shape)


def _gamma(rng, D):
    return 1.0 + 0.5 * rng.standard_normal(D)


def softmax_ce_backward(rng):
    names = ("logits", "y")
    out = []
    for N, K, big in ((4, 7, False), (1, 3, False), (3, 5, True)):
        logits = _n(rng, N, K, scale=2.0)
        y = rng.integers(0, K, size=N)
        if big:  # exp(800) overflows float64: only a max-shifted softmax survives
            logits = logits * 3.0 + 800.0
            y = (logits.argmax(axis=1) + 1 + rng.integers(0, K - 1, size=N)) % K  # not the argmax: dlogits not ~0
        label = f"N={N}, K={K}" + (", logits near 800 (exp overflows unless shifted by the row max)" if big else "")
        out.append(Case(label, (logits, y), names))
    return out


def linear_backward(rng):
    names = ("dY", "X", "W", "b")
    cases = []
    N, T, Din, Dout = 2, 3, 5, 4
    cases.append(
        Case(
            f"X (N, T, Din) = ({N}, {T}, {Din}), W ({Din}, {Dout}), with b",
            (_n(rng, N, T, Dout), _n(rng, N, T, Din), _n(rng, Din, Dout), _n(rng, Dout)),
            names,
        )
    )
    N, Din, Dout = 1, 3, 6
    cases.append(
        Case(
            f"X (N, Din) = ({N}, {Din}), W ({Din}, {Dout}), b None",
            (_n(rng, N, Dout), _n(rng, N, Din), _n(rng, Din, Dout), None),
            names,
        )
    )
    N, D = 3, 4
    cases.append(
        Case(
            f"a square W ({D}, {D}), X ({N}, {D}), with b",
            (_n(rng, N, D), _n(rng, N, D), _n(rng, D, D), _n(rng, D)),
            names,
            {"square": True},
        )
    )
    return cases


def pool_backward(rng):
    names = ("dpooled", "X", "pool")
    return [
        Case(f"pool='{pool}', X (N, T, D) = ({N}, {T}, {D})", (_n(rng, N, D), _n(rng, N, T, D), pool), names)
        for pool, N, T, D in (("cls", 3, 5, 4), ("mean", 2, 6, 3), ("mean", 1, 4, 5), ("cls", 1, 3, 2))
    ]


def _gelu(rng):
    names = ("dY", "X")
    return [
        Case("X (2, 3, 5), values in [-4, 4]", (_n(rng, 2, 3, 5), rng.uniform(-4, 4, (2, 3, 5))), names),
        Case("X (1, 7)", (_n(rng, 1, 7), _n(rng, 1, 7, scale=2.0)), names),
    ]


gelu_tanh_backward = gelu_erf_backward = _gelu


def layernorm_backward(rng):
    names = ("dY", "X", "gamma", "beta", "eps")
    N, T, D = 2, 3, 6
    X = _n(rng, N, T, D, scale=2.0) + 1.5  # rows with a mean far from zero: the mean term matters
    c1 = Case(
        f"X (N, T, D) = ({N}, {T}, {D}), with gamma and beta, eps=1e-5",
        (_n(rng, N, T, D), X, _gamma(rng, D), _n(rng, D, scale=0.3), 1e-5),
        names,
    )
    N, D = 1, 5
    c2 = Case(
        f"X (N, D) = ({N}, {D}), gamma and beta None, eps=1e-5",
        (_n(rng, N, D), _n(rng, N, D) - 0.7, None, None, 1e-5),
        names,
    )
    N, D = 4, 3
    c3 = Case(
        f"X ({N}, {D}), with gamma and beta, eps=0.1 (eps must be used, not a fixed 1e-5)",
        (_n(rng, N, D), _n(rng, N, D, scale=0.5), _gamma(rng, D), _n(rng, D, scale=0.3), 0.1),
        names,
    )
    return [c1, c2, c3]


def softmax_backward(rng):
    names = ("dA", "S")
    return [
        Case("S (N, H, T, T') = (2, 3, 4, 5)", (_n(rng, 2, 3, 4, 5), _n(rng, 2, 3, 4, 5, scale=2.0)), names),
        Case("S (1, 6)", (_n(rng, 1, 6), _n(rng, 1, 6, scale=2.0)), names),
    ]


def attention_head_backward(rng):
    names = ("dO", "X", "W_q", "W_k", "W_v")
    cases = []
    for N, T, D, Dh in ((2, 5, 6, 4), (1, 3, 4, 7)):
        W = [_n(rng, D, Dh, scale=D**-0.5 * 1.5) for _ in range(3)]
        cases.append(
            Case(f"X (N, T, D) = ({N}, {T}, {D}), D_h = {Dh}", (_n(rng, N, T, Dh), _n(rng, N, T, D), *W), names)
        )
    return cases


def attention_backward(rng):
    names = ("dY", "X", "W_q", "W_k", "W_v", "W_o", "heads")
    cases = []
    for N, T, D, H, Dh in ((2, 5, 6, 2, 4), (1, 4, 5, 3, 3)):
        W = [_n(rng, D, H * Dh, scale=D**-0.5 * 1.5) for _ in range(3)]
        W_o = _n(rng, H * Dh, D, scale=(H * Dh) ** -0.5)
        cases.append(
            Case(
                f"X (N, T, D) = ({N}, {T}, {D}), H = {H}, D_h = {Dh} (H*D_h = {H * Dh})",
                (_n(rng, N, T, D), _n(rng, N, T, D), *W, W_o, H),
                names,
            )
        )
    return cases


def _block_params(rng, D, H, Dh, M):
    return {
        "ln1_gamma": _gamma(rng, D),
        "ln1_beta": _n(rng, D, scale=0.3),
        "W_q": _n(rng, D, H * Dh, scale=D**-0.5 * 1.5),
        "W_k": _n(rng, D, H * Dh, scale=D**-0.5 * 1.5),
        "W_v": _n(rng, D, H * Dh, scale=D**-0.5),
        "W_o": _n(rng, H * Dh, D, scale=(H * Dh) ** -0.5),
        "b_o": _n(rng, D, scale=0.3),
        "ln2_gamma": _gamma(rng, D),
        "ln2_beta": _n(rng, D, scale=0.3),
        "W_1": _n(rng, D, M, scale=D**-0.5),
        "b_1": _n(rng, M, scale=0.3),
        "W_2": _n(rng, M, D, scale=M**-0.5),
        "b_2": _n(rng, D, scale=0.3),
    }


def _block(rng):
    names = ("dY", "X", "p", "heads", "eps")
    cases = []
    for N, T, D, H, Dh, M in ((2, 5, 6, 2, 4, 7), (1, 3, 4, 2, 3, 5)):
        cases.append(
            Case(
                f"X (N, T, D) = ({N}, {T}, {D}), H = {H}, D_h = {Dh}, M = {M}",
                (_n(rng, N, T, D), _n(rng, N, T, D) + 0.5, _block_params(rng, D, H, Dh, M), H, 1e-5),
                names,
            )
        )
    return cases


postln_block_backward = preln_block_backward = _block


def tokens_backward(rng):
    names = ("dX0", "E", "cls", "pos")
    cases = []
    for N, n_cls, Np, D in ((3, 1, 4, 5), (1, 1, 6, 3), (2, 2, 3, 4)):
        T = n_cls + Np
        cases.append(
            Case(
                f"N = {N}, {n_cls} cls token(s), Np = {Np}, D = {D} (T = {T})",
                (_n(rng, N, T, D), _n(rng, N, Np, D), _n(rng, n_cls, D), _n(rng, T, D)),
                names,
            )
        )
    return cases


_IMAGES = ((2, 3, 4, 6, (2, 3)), (1, 2, 6, 4, (3, 2)), (2, 1, 4, 4, (2, 2)))


def unpatchify(rng):
    names = ("dpatches", "image_shape", "patch_size")
    cases = []
    for N, C, h, w, (ph, pw) in _IMAGES:
        Np, F = (h // ph) * (w // pw), C * ph * pw
        cases.append(
            Case(
                f"images (N, C, H, W) = ({N}, {C}, {h}, {w}), patches ({ph}, {pw})",
                (_n(rng, N, Np, F), (N, C, h, w), (ph, pw)),
                names,
            )
        )
    return cases


def patch_embed_backward(rng):
    names = ("dE", "x", "W_patch", "b_patch", "patch_size")
    cases = []
    for (N, C, h, w, (ph, pw)), D, bias in zip(_IMAGES, (5, 7, 3), (True, False, True)):
        Np, F = (h // ph) * (w // pw), C * ph * pw
        cases.append(
            Case(
                f"images ({N}, {C}, {h}, {w}), patches ({ph}, {pw}), D = {D}" + ("" if bias else ", b_patch None"),
                (_n(rng, N, Np, D), _n(rng, N, C, h, w), _n(rng, F, D), _n(rng, D) if bias else None, (ph, pw)),
                names,
            )
        )
    return cases


def smooth_f(x):
    """A scalar function of an array with every coordinate coupled: numpy or torch."""
    lib = np if isinstance(x, np.ndarray) else __import__("torch")
    return float((lib.sin(x) * x**2).sum() + 0.5 * (x.sum()) ** 2 + (x**3).sum() / 3.0)


def numerical_gradient(rng):
    names = ("f", "x", "eps")
    return [
        Case("x (3, 4), eps = 1e-5", (smooth_f, _n(rng, 3, 4), 1e-5), names),
        Case("x (5,), eps = 1e-4", (smooth_f, _n(rng, 5), 1e-4), names),
    ]


def sgd_step(rng):
    names = ("w", "g", "lr")
    return [
        Case("w (4, 5), lr = 0.1", (_n(rng, 4, 5), _n(rng, 4, 5), 0.1), names),
        Case("w (3,), lr = 0.5", (_n(rng, 3), _n(rng, 3), 0.5), names),
    ]


def momentum_step(rng):
    names = ("w", "g", "buf", "lr", "momentum")
    return [
        Case("first step (buf None), w (4, 5)", (_n(rng, 4, 5), _n(rng, 4, 5), None, 0.1, 0.9), names),
        Case("later step, w (3, 2), momentum = 0.8", (_n(rng, 3, 2), _n(rng, 3, 2), _n(rng, 3, 2), 0.2, 0.8), names),
    ]


def adamw_step(rng):
    names = ("w", "g", "m", "v", "t", "lr", "beta1", "beta2", "eps", "weight_decay")
    w, g = _n(rng, 4, 5), _n(rng, 4, 5)
    c1 = Case(
        "first step t = 1 (m = v = 0), w (4, 5)",
        (w, g, np.zeros((4, 5)), np.zeros((4, 5)), 1, 0.1, 0.9, 0.999, 1e-8, 0.01),
        names,
    )
    w, g = _n(rng, 3, 2), _n(rng, 3, 2)
    m, v = _n(rng, 3, 2, scale=0.3), rng.uniform(0.01, 0.5, (3, 2))
    c2 = Case(
        "step t = 5, w (3, 2), beta1 = 0.8, weight_decay = 0.1", (w, g, m, v, 5, 0.05, 0.8, 0.99, 1e-6, 0.1), names
    )
    return [c1, c2]


def vit_train_step(rng):
    names = ("x", "y", "w_proj", "cls_token", "pos_embed", "blocks_weights", "w_head", "num_heads", "lr", "patch_size")
    cases = []
    for N, C, h, w, P, d, heads, L, K in ((3, 2, 6, 4, 2, 8, 2, 2, 3), (1, 1, 4, 6, 2, 6, 3, 2, 4)):
        T = (h // P) * (w // P) + 1
        F = C * P * P
        args = (
            _n(rng, N, C, h, w),
            rng.integers(0, K, size=N),
            _n(rng, F, d, scale=F**-0.5),
            _n(rng, 1, 1, d),
            _n(rng, 1, T, d, scale=0.5),
            _n(rng, L, 6, d, d, scale=d**-0.5 * 1.2),
            _n(rng, d, K, scale=d**-0.5),
            heads,
            0.5,
            P if N > 1 else None,  # the contract's default: P inferred from w_proj
        )
        cases.append(
            Case(
                f"x (N, C, H, W) = ({N}, {C}, {h}, {w}), patch {P}"
                + ("" if N > 1 else " (patch_size None: inferred from w_proj)")
                + f", d = {d}, {heads} heads, {L} blocks, {K} classes",
                args,
                names,
            )
        )
    return cases


CASES = {name: globals()[name] for name in EXERCISE_NAMES}


def make_cases(name, seed=0):
    return CASES[name](rng_for(name, seed))
