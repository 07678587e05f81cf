"""The fast training step: the same maths as model.py, fused, in a workspace reused across calls.

`model.loss_and_grads` validates its inputs and then calls `fast_loss_and_grads` here. The
teaching path (model.forward / model.backward and the layer modules) is the specification;
tests/test_fast.py checks that this file agrees with it for every style, in float32 and float64.

What is different from the teaching path, and why (numbers in benchmarks/README.md):

- Workspace. Every activation the backward pass needs, and every temporary, lives in arrays
  allocated once per (config, batch size, dtype, batch part) and written with numpy's `out=`
  arguments (llm.c style). A step that allocates fresh arrays page-faults on every call: glibc
  returns large freed blocks to the OS. The workspaces sit in a small dict, oldest dropped first.
- Two cores. The batch is cut in as many parts as numpy's BLAS has threads; each part's forward
  and backward runs in its own thread with BLAS set to one thread (restored on return), the loss
  is taken on the whole batch in between, and the parts' gradients are added. numpy's per-head
  matmuls and elementwise passes are single-threaded; this puts them on every core.
  Inside `worker_processes()` (the training loop's), parts 1.. run in worker processes instead of
  threads, with the same arithmetic: threads share one interpreter, and the hundreds of small numpy
  calls of a part hold its GIL in turn.
- Fused QKV. W_q | W_k | W_v are copied side by side into one (D, 3 H Dh) buffer, so Q, K, V
  come from one matmul, and dW_q | dW_k | dW_v and the three dX terms from one matmul each.
  The attention scale 1/sqrt(Dh) is folded into the W_q columns of that buffer, so S = Q K^T
  needs no extra pass over the (N, H, T, T) scores; dW_q is scaled back at the end.
- The last block under pool "cls": the head reads the cls token alone, so the last block's output rows of
  the other tokens reach nothing. Only the cls rows go through its queries, scores, W_o, LN2 and MLP (K and V
  still come from every token); the gradients are the same (d(Q scale) is zero off the cls rows). One of
  depth blocks costs a fraction of the others: a step of config (c) took 173 ms against 205 before
  (benchmarks/README.md, 2026-12-02). The teaching path computes every row, as the maths is written.
- No transposed copies: heads are split and merged as strided views (BLAS reads them directly),
  and A V is written straight into O's merged (N, T, H Dh) layout.
- Reductions: row means and sums and bias gradients are matrix-vector products (numpy's
  reductions along a short last axis are ~5x slower); the softmax shift is the global max when
  all scores lie within 80 of each other (`attention.shift_scores`), the row max otherwise.
- Weight gradients X^T dY (thousands of rows, tens of columns) in blocks of 200 rows, the product oriented
  so its result is tall (`linear.weight_grad`): OpenBLAS runs the one long product at a third of its speed.
- LayerNorm keeps xhat and rstd (not the input and the mean), so its backward recomputes nothing;
  GELU's forward also writes gelu'(U), so its backward is one multiply.
- Exact GELU in float32: scipy.special.erf costs ~16 ns an element here (28 ms, 12% of the
  teaching step on config (b)). `phi_float32` evaluates a rational minimax fit of erf (Eigen's
  float32 coefficients, `erf_float32`) with in-place numpy passes, ~6x faster; max error 4.5e-7
  for erf (<= 8 float32 ulps, near |erf| ~ 1), 2.3e-7 for Phi (tests/test_fast.py). float64 keeps
  scipy's erf, so float64 results match the teaching path to ~1e-15.
- Results are fresh arrays: nothing returned aliases the workspace.

The fused kernels live next to their teaching twins (CS231n's fast_layers, llm.c's kernels):
`layernorm.layernorm_forward_fused` / `_backward_fused`, `gelu.gelu_forward_fused` (with
`erf_float32`, `phi_float32`), `attention.softmax_forward_fused` / `_backward_fused`, and the
gemv reductions of `linear`; tests/test_layers.py holds each fused == teaching == torch. What stays
here is orchestration: the workspace, the fused QKV, the batch split across threads. The model
is read from `cfg.arch`'s flags; `check_supported` refuses a flag value this file does not implement.
"""

import contextlib
import os
import subprocess
import sys
import threading
from collections import OrderedDict

import numpy as np

from .attention import SHIFT_RANGE, shift_scores, softmax_backward_fused, softmax_forward_fused  # noqa: F401
from .gelu import _horner, erf_float32, gelu_forward_fused, phi_float32  # noqa: F401  (profile_step, tests)
from .layernorm import layernorm_backward_fused, layernorm_forward_fused
from .linear import col_sum as _col_sum
from .linear import ones as _const
from .linear import weight_grad as _weight_grad
from .loss import cross_entropy_backward, cross_entropy_forward
from .params import param_shapes

# What this file implements, flag by flag (vitlib/arch.py): any other value, or a flag not listed, raises.
SUPPORTED = {
    "patch_layout": ("cpp", "ppc"),
    "patch_norms": (False, True),
    "block_affine": (False, True),
    "final_norm": (False, True),
    "head_norm": (False, True),
    "patch_bias": (False, True),
    "qkv_bias": (False, True),
    "out_bias": (False, True),
    "mlp_bias": (False, True),
    "head_bias": (False, True),
    "gelu": ("none", "tanh"),
    "cls_under_mean": (False, True),
    "w_o": ("always", "unless_identity"),
    "inner_is_dim": (False, True),
    "mlp_is_dim": (False, True),
}
ANY_VALUE = ("norm_eps", "pools", "dim_head_default")  # flags read as numbers / used by ViTConfig only


def check_supported(arch):
    """Raise NotImplementedError for a flag (or flag value) of `arch` that the fast path does not implement."""
    for flag, value in arch.flags().items():
        if flag in ANY_VALUE:
            continue
        if flag not in SUPPORTED:
            raise NotImplementedError(
                f"the fast path does not implement flag {flag!r} (arch {arch.name!r}): use fast=False"
            )
        if value not in SUPPORTED[flag]:
            raise NotImplementedError(
                f"the fast path implements {flag} in {SUPPORTED[flag]}, arch {arch.name!r} has {value!r}: "
                "use fast=False"
            )


MAX_WORKSPACES = 8  # (config, N, dtype, part) combinations kept alive; the least recently used goes first
_WORKSPACES: "OrderedDict[tuple, _Workspace]" = OrderedDict()


class _Workspace:
    """Every array one step writes, for one (config, N, dtype). Names follow STYLE.md."""

    def __init__(self, cfg, N, dtype):
        D, H, M, F = cfg.dim, cfg.heads, cfg.mlp_dim, cfg.patch_dim
        T, Np, L, I = cfg.num_tokens, cfg.num_patches, cfg.depth, cfg.inner_dim
        R = N * T  # rows of the token matrix

        def e(*shape):
            return np.empty(shape, dtype)

        a = cfg.arch
        affine = a.block_affine
        self.P = e(N * Np, F)  # patches
        if a.patch_norms:
            self.P_xhat, self.P_rstd, self.Pn = e(N * Np, F), e(N * Np, 1), e(N * Np, F)
            self.E_xhat, self.E_rstd, self.dP = e(N * Np, D), e(N * Np, 1), e(N * Np, F)
            self.tF = e(N * Np, F)
        self.E = e(N * Np, D)  # patch embeddings, and later dE
        self.tE = e(N * Np, D)
        self.X = e(R, D)  # the residual stream, updated in place block after block
        self.dX = e(R, D)
        self.Wqkv = e(L, D, 3 * I)
        self.xhat1 = [e(R, D) for _ in range(L)]
        self.rstd1 = [e(R, 1) for _ in range(L)]
        self.Z1 = [e(R, D) for _ in range(L)] if affine else self.xhat1
        self.QKV = [e(R, 3 * I) for _ in range(L)]
        self.A = [e(N, H, T, T) for _ in range(L)]
        self.O = [e(R, I) for _ in range(L)]
        self.xhat2 = [e(R, D) for _ in range(L)]
        self.rstd2 = [e(R, 1) for _ in range(L)]
        self.Z2 = [e(R, D) for _ in range(L)] if affine else self.xhat2
        self.G = [e(R, M) for _ in range(L)]
        self.dgelu = [e(R, M) for _ in range(L)]
        if a.final_norm:
            self.xhat_f, self.rstd_f, self.Zf = e(R, D), e(R, 1), e(R, D)
        self.bqkv = e(L, 3 * I) if a.qkv_bias else None
        # scratch, shared by all blocks
        self.tD, self.tD2 = e(R, D), e(R, D)
        self.tI = e(R, I)
        self.tM, self.tM2, self.tM3 = e(R, M), e(R, M), e(R, M)
        self.dQKV = e(R, 3 * I)
        self.dS, self.tS = e(N, H, T, T), e(N, H, T, T)
        self.col1, self.col2 = e(R, 1), e(R, 1)
        self.rowmax, self.rowsum = e(N, H, T, 1), e(N, H, T, 1)

    def nbytes(self):
        seen, total = set(), 0
        for v in self.__dict__.values():
            for a in v if isinstance(v, list) else [v]:
                if isinstance(a, np.ndarray) and id(a) not in seen:
                    seen.add(id(a))
                    total += a.nbytes
        return total


def workspace(cfg, N, dtype, part=0):
    """The workspace of batch part `part` for (cfg, N, dtype), made on first use and kept
    (MAX_WORKSPACES at most)."""
    key = (cfg, cfg.arch, N, np.dtype(dtype), part)  # the arch too: its flags decide which buffers exist
    ws = _WORKSPACES.get(key)
    if ws is None:
        ws = _WORKSPACES[key] = _Workspace(cfg, N, dtype)
        while len(_WORKSPACES) > MAX_WORKSPACES:
            _WORKSPACES.popitem(last=False)
    _WORKSPACES.move_to_end(key)
    return ws


# ---------------------------------------------------------------- strided views of the heads


def _heads(Z, N, T, H, Dh):
    """(R, H Dh) rows -> (N, H, T, Dh) strided view."""
    return Z.reshape(N, T, H, Dh).transpose(0, 2, 1, 3)


def _qkv_heads(QKV, N, T, H, Dh):
    """(R, 3 H Dh) -> three (N, H, T, Dh) strided views."""
    v = QKV.reshape(N, T, 3, H, Dh).transpose(2, 0, 3, 1, 4)
    return v[0], v[1], v[2]


# ---------------------------------------------------------------- LayerNorm of a few rows (N, D), in fresh arrays


def _few_rows_layernorm(X, gamma, beta, eps):
    """layernorm_forward_fused on a few rows (the head's and the cls rows', one per image) -> (Z, xhat, rstd), fresh
    arrays; Z is xhat when there is no gamma."""
    xhat, rstd = np.empty_like(X), np.empty((X.shape[0], 1), X.dtype)
    Z = np.empty_like(X) if gamma is not None else xhat
    layernorm_forward_fused(X, gamma, beta, eps, xhat, rstd, Z, np.empty_like(X), np.empty_like(rstd))
    return Z, xhat, rstd


def _few_rows_layernorm_backward(dZ, xhat, rstd, gamma, dX=None):
    """layernorm_backward_fused on a few rows: dZ is overwritten -> (dgamma, dbeta); the input gradient is added
    into dX, or left in dZ when dX is None."""
    return layernorm_backward_fused(
        dZ, xhat, rstd, gamma, dX, np.empty_like(dZ), np.empty_like(rstd), np.empty_like(rstd)
    )


# ---------------------------------------------------------------- the step


def _forward(params, x, cfg, ws):
    """x (n, C, h, w), one part of the batch -> logits (n, K); what backward needs stays in ws."""
    N = x.shape[0]
    get = params.get
    D, H, Dh, T, Np, L, I = cfg.dim, cfg.heads, cfg.dim_head, cfg.num_tokens, cfg.num_patches, cfg.depth, cfg.inner_dim
    n_cls = cfg.num_cls
    scale = Dh**-0.5
    a = cfg.arch
    eps = a.norm_eps

    # ---- patches and tokens
    C, (ph, pw) = cfg.channels, cfg.patch_size
    Hp, Wp = cfg.image_size[0] // ph, cfg.image_size[1] // pw
    g = x.reshape(N, C, Hp, ph, Wp, pw)
    g = g.transpose(0, 2, 4, 1, 3, 5) if a.patch_layout == "cpp" else g.transpose(0, 2, 4, 3, 5, 1)
    np.copyto(ws.P.reshape(g.shape), g)
    P = ws.P
    if a.patch_norms:
        layernorm_forward_fused(
            P,
            params["ln_patch_in.gamma"],
            params["ln_patch_in.beta"],
            eps,
            ws.P_xhat,
            ws.P_rstd,
            ws.Pn,
            ws.tF,
            ws.col1[: N * Np],
        )
        P = ws.Pn
    np.matmul(P, params["W_patch"], out=ws.E)
    if "b_patch" in params:
        ws.E += params["b_patch"]
    E = ws.E
    if a.patch_norms:
        g_, b_ = params["ln_patch_out.gamma"], params["ln_patch_out.beta"]
        layernorm_forward_fused(E, g_, b_, eps, ws.E_xhat, ws.E_rstd, ws.tE, ws.tE, ws.col1[: N * Np])
        E = ws.tE
    X3 = ws.X.reshape(N, T, D)
    X3[:, :n_cls] = params["cls"]
    X3[:, n_cls:] = E.reshape(N, Np, D)
    X3 += params["pos"]
    X = ws.X

    # ---- blocks
    cls_only = cfg.pool == "cls"  # the head reads the cls token alone: the last block computes the cls rows only
    for b in range(L):
        p = f"blocks.{b}."
        Wqkv = ws.Wqkv[b]
        np.multiply(params[p + "W_q"], scale, out=Wqkv[:, :I])
        Wqkv[:, I : 2 * I] = params[p + "W_k"]
        Wqkv[:, 2 * I :] = params[p + "W_v"]
        ln1_g, ln1_b = get(p + "ln1.gamma"), get(p + "ln1.beta")
        layernorm_forward_fused(X, ln1_g, ln1_b, eps, ws.xhat1[b], ws.rstd1[b], ws.Z1[b], ws.tD, ws.col1)
        np.matmul(ws.Z1[b], Wqkv, out=ws.QKV[b])
        if a.qkv_bias:  # b_q scaled like W_q's columns
            bqkv = ws.bqkv[b]
            np.multiply(params[p + "b_q"], scale, out=bqkv[:I])
            bqkv[I : 2 * I] = params[p + "b_k"]
            bqkv[2 * I :] = params[p + "b_v"]
            ws.QKV[b] += bqkv
        Q, K, V = _qkv_heads(ws.QKV[b], N, T, H, Dh)
        if cls_only and b == L - 1:
            Xc = _cls_block_forward(params, p, cfg, ws, Q, K, V)
            break
        A = ws.A[b]
        np.matmul(Q, K.transpose(0, 1, 3, 2), out=A)
        softmax_forward_fused(A, ws.rowmax, ws.rowsum)
        np.matmul(A, V, out=_heads(ws.O[b], N, T, H, Dh))
        if p + "W_o" in params:
            np.matmul(ws.O[b], params[p + "W_o"], out=ws.tD)
            if p + "b_o" in params:
                ws.tD += params[p + "b_o"]
            X += ws.tD
        else:
            X += ws.O[b]
        ln2_g, ln2_b = get(p + "ln2.gamma"), get(p + "ln2.beta")
        layernorm_forward_fused(X, ln2_g, ln2_b, eps, ws.xhat2[b], ws.rstd2[b], ws.Z2[b], ws.tD, ws.col1)
        U = ws.tM
        np.matmul(ws.Z2[b], params[p + "W_1"], out=U)
        if p + "b_1" in params:
            U += params[p + "b_1"]
        gelu_forward_fused(U, ws.G[b], ws.dgelu[b], a.gelu, ws.tM2, ws.tM3)
        np.matmul(ws.G[b], params[p + "W_2"], out=ws.tD)
        if p + "b_2" in params:
            ws.tD += params[p + "b_2"]
        X += ws.tD

    # ---- final LayerNorm, pooling, head, loss (small: (N, D) arrays are allocated freely)
    if cls_only:  # the cls rows after the last block, (N, D)
        pooled = Xc
        if a.final_norm:
            pooled, ws.cls["xhat_f"], ws.cls["rstd_f"] = _few_rows_layernorm(
                Xc, params["ln_final.gamma"], params["ln_final.beta"], eps
            )
    else:
        Xf = X
        if a.final_norm:
            lnf_g, lnf_b = params["ln_final.gamma"], params["ln_final.beta"]
            layernorm_forward_fused(X, lnf_g, lnf_b, eps, ws.xhat_f, ws.rstd_f, ws.Zf, ws.tD, ws.col1)
            Xf = ws.Zf
        pooled = Xf.reshape(N, T, D).mean(axis=1)
    head_in = pooled
    if a.head_norm:
        head_in, h_xhat, h_rstd = _few_rows_layernorm(pooled, params["ln_head.gamma"], params["ln_head.beta"], eps)
    else:
        h_xhat = h_rstd = None
    logits = head_in @ params["W_head"]
    if "b_head" in params:
        logits += params["b_head"]
    ws.head = (pooled, head_in, h_xhat, h_rstd)
    return logits


# ---------------------------------------------------------------- the last block, when the head reads the cls token


def _cls_block_forward(params, p, cfg, ws, Q, K, V):
    """The last block under pool "cls": no row of its output but the cls token's reaches the loss, so only the cls
    rows go through the attention's queries, W_o, LN2 and the MLP; K and V still come from every token (the cls
    token attends to all of them). Q, K, V: (N, H, T, Dh) views of the block's QKV. -> Xc (N, D), the cls rows
    after the block, a fresh array; what the backward needs is in ws.cls. (N, .) arrays are allocated freely."""
    a, get = cfg.arch, params.get
    N, H, T, Dh = Q.shape
    D, eps, dtype = cfg.dim, a.norm_eps, Q.dtype
    Qc = Q[:, :, :1]  # (N, H, 1, Dh), scaled
    Ac = np.matmul(Qc, K.transpose(0, 1, 3, 2))  # (N, H, 1, T)
    rowsum = np.empty((N, H, 1, 1), dtype)
    softmax_forward_fused(Ac, np.empty_like(rowsum), rowsum)
    Oc = np.matmul(Ac, V).reshape(N, H * Dh)  # (N, H, 1, Dh) -> the merged layout (N, H Dh)
    Xc = ws.X.reshape(N, T, D)[:, 0].copy()  # the cls rows of the residual stream
    if p + "W_o" in params:
        Xc += Oc @ params[p + "W_o"]
        if p + "b_o" in params:
            Xc += params[p + "b_o"]
    else:
        Xc += Oc
    ln2_g, ln2_b = get(p + "ln2.gamma"), get(p + "ln2.beta")
    Z2, xhat2, rstd2 = _few_rows_layernorm(Xc, ln2_g, ln2_b, eps)
    U = Z2 @ params[p + "W_1"]
    if p + "b_1" in params:
        U += params[p + "b_1"]
    G, dgelu = np.empty_like(U), np.empty_like(U)
    gelu_forward_fused(U, G, dgelu, a.gelu, np.empty_like(U), np.empty_like(U))
    Xc += G @ params[p + "W_2"]
    if p + "b_2" in params:
        Xc += params[p + "b_2"]
    ws.cls = dict(Ac=Ac, rowsum=rowsum, Oc=Oc, xhat2=xhat2, rstd2=rstd2, Z2=Z2, G=G, dgelu=dgelu)
    return Xc


def _cls_block_backward(params, p, cfg, ws, dXc, grads):
    """The backward of _cls_block_forward. dXc (N, D), the gradient at the cls rows after the block, is
    overwritten. Writes the block's grads but those of W_q, W_k, W_v and LN1, fills ws.dQKV (d(Q scale), dK, dV;
    d(Q scale) is zero off the cls rows) and sets ws.dX to the residual's share of the gradient at the block's
    input (the cls rows; LN1's share is added by the caller, as for every block)."""
    c, get = ws.cls, params.get
    N, H, _, T = c["Ac"].shape
    D, Dh = cfg.dim, cfg.dim_head
    # MLP: Xc = Xc + G W_2 + b_2
    grads[p + "W_2"] = c["G"].T @ dXc
    if p + "b_2" in params:
        grads[p + "b_2"] = dXc.sum(axis=0)
    dU = dXc @ params[p + "W_2"].T  # dG
    dU *= c["dgelu"]
    grads[p + "W_1"] = c["Z2"].T @ dU
    if p + "b_1" in params:
        grads[p + "b_1"] = dU.sum(axis=0)
    dZ2 = dU @ params[p + "W_1"].T
    ln2_g = get(p + "ln2.gamma")
    dg, db = _few_rows_layernorm_backward(dZ2, c["xhat2"], c["rstd2"], ln2_g, dXc)
    if dg is not None:
        grads[p + "ln2.gamma"], grads[p + "ln2.beta"] = dg, db
    # attention: Xc = Xc + Oc W_o + b_o
    if p + "W_o" in params:
        grads[p + "W_o"] = c["Oc"].T @ dXc
        if p + "b_o" in params:
            grads[p + "b_o"] = dXc.sum(axis=0)
        dOc = dXc @ params[p + "W_o"].T
    else:
        dOc = dXc
    dOh = dOc.reshape(N, H, 1, Dh)
    Q, K, V = _qkv_heads(ws.QKV[cfg.depth - 1], N, T, H, Dh)
    dQ, dK, dV = _qkv_heads(ws.dQKV, N, T, H, Dh)
    Ac = c["Ac"]
    dSc = np.matmul(dOh, V.transpose(0, 1, 3, 2))  # dAc (N, H, 1, T)
    np.matmul(Ac.transpose(0, 1, 3, 2), dOh, out=dV)
    softmax_backward_fused(dSc, Ac, c["rowsum"], np.empty_like(Ac))
    dQ[...] = 0.0
    np.matmul(dSc, K, out=dQ[:, :, :1])  # d(Q scale) at the cls rows
    np.matmul(dSc.transpose(0, 1, 3, 2), Q[:, :, :1], out=dK)
    # the residual: only the cls rows of the block's input get the gradient directly
    ws.dX.fill(0.0)
    ws.dX.reshape(N, T, D)[:, 0] = dXc


def _backward(params, dlogits, cfg, ws):
    """dlogits (n, K) of the part of the batch ws holds -> grads of that part (fresh arrays)."""
    dtype = dlogits.dtype
    N = dlogits.shape[0]
    get = params.get
    D, H, Dh, T, Np, L, I = cfg.dim, cfg.heads, cfg.dim_head, cfg.num_tokens, cfg.num_patches, cfg.depth, cfg.inner_dim
    n_cls = cfg.num_cls
    scale = Dh**-0.5
    a = cfg.arch
    pooled, head_in, h_xhat, h_rstd = ws.head
    P = ws.Pn if a.patch_norms else ws.P
    grads = {}

    # ---- backward: head, pooling, final LayerNorm
    grads["W_head"] = head_in.T @ dlogits
    if "b_head" in params:
        grads["b_head"] = dlogits.sum(axis=0)
    dpooled = dlogits @ params["W_head"].T
    if a.head_norm:
        grads["ln_head.gamma"], grads["ln_head.beta"] = _few_rows_layernorm_backward(
            dpooled, h_xhat, h_rstd, params["ln_head.gamma"]
        )
    dX = ws.dX
    dX3 = dX.reshape(N, T, D)
    cls_only = cfg.pool == "cls"
    if cls_only:  # dpooled is the gradient at the cls rows: the last block's backward starts from it
        dXc = dpooled
        if a.final_norm:
            grads["ln_final.gamma"], grads["ln_final.beta"] = _few_rows_layernorm_backward(
                dXc, ws.cls["xhat_f"], ws.cls["rstd_f"], params["ln_final.gamma"]
            )
    else:
        np.divide(dpooled[:, None, :], T, out=dX3)
        if a.final_norm:
            grads["ln_final.gamma"], grads["ln_final.beta"] = layernorm_backward_fused(
                dX, ws.xhat_f, ws.rstd_f, params["ln_final.gamma"], None, ws.tD, ws.col1, ws.col2
            )

    # ---- backward through the blocks
    for b in reversed(range(L)):
        p = f"blocks.{b}."
        if cls_only and b == L - 1:  # the cls rows only: dQKV, and the gradient at the block's input in dX
            _cls_block_backward(params, p, cfg, ws, dXc, grads)
        else:
            # MLP: X = X + G W_2 + b_2
            grads[p + "W_2"] = _weight_grad(ws.G[b], dX)
            if p + "b_2" in params:
                grads[p + "b_2"] = _col_sum(dX)
            dU = ws.tM
            np.matmul(dX, params[p + "W_2"].T, out=dU)  # dG
            dU *= ws.dgelu[b]
            grads[p + "W_1"] = _weight_grad(ws.Z2[b], dU)
            if p + "b_1" in params:
                grads[p + "b_1"] = _col_sum(dU)
            np.matmul(dU, params[p + "W_1"].T, out=ws.tD)  # dZ2
            ln2_g = get(p + "ln2.gamma")
            dg, db = layernorm_backward_fused(ws.tD, ws.xhat2[b], ws.rstd2[b], ln2_g, dX, ws.tD2, ws.col1, ws.col2)
            if dg is not None:
                grads[p + "ln2.gamma"], grads[p + "ln2.beta"] = dg, db
            # attention: X = X + O W_o + b_o
            if p + "W_o" in params:
                grads[p + "W_o"] = _weight_grad(ws.O[b], dX)
                if p + "b_o" in params:
                    grads[p + "b_o"] = _col_sum(dX)
                dO = ws.tI
                np.matmul(dX, params[p + "W_o"].T, out=dO)
            else:
                dO = dX
            dOh = _heads(dO, N, T, H, Dh)
            Q, K, V = _qkv_heads(ws.QKV[b], N, T, H, Dh)
            dQ, dK, dV = _qkv_heads(ws.dQKV, N, T, H, Dh)
            A, dS = ws.A[b], ws.dS
            np.matmul(dOh, V.transpose(0, 1, 3, 2), out=dS)  # dA
            np.matmul(A.transpose(0, 1, 3, 2), dOh, out=dV)
            softmax_backward_fused(dS, A, ws.rowsum, ws.tS)  # A * (dA - rowsum(A * dA))
            np.matmul(dS, K, out=dQ)  # d(Q scale): Q in the workspace is already scaled
            np.matmul(dS.transpose(0, 1, 3, 2), Q, out=dK)
        dW = _weight_grad(ws.Z1[b], ws.dQKV)
        grads[p + "W_q"] = dW[:, :I] * scale
        grads[p + "W_k"] = dW[:, I : 2 * I].copy()
        grads[p + "W_v"] = dW[:, 2 * I :].copy()
        if a.qkv_bias:
            dbqkv = _col_sum(ws.dQKV)
            grads[p + "b_q"] = dbqkv[:I] * scale
            grads[p + "b_k"] = dbqkv[I : 2 * I].copy()
            grads[p + "b_v"] = dbqkv[2 * I :].copy()
        np.matmul(ws.dQKV, ws.Wqkv[b].T, out=ws.tD)  # dZ1
        ln1_g = get(p + "ln1.gamma")
        dg, db = layernorm_backward_fused(ws.tD, ws.xhat1[b], ws.rstd1[b], ln1_g, dX, ws.tD2, ws.col1, ws.col2)
        if dg is not None:
            grads[p + "ln1.gamma"], grads[p + "ln1.beta"] = dg, db

    # ---- tokens and patches
    grads["pos"] = np.empty((T, D), dtype)
    np.matmul(_const(N, 1.0, dtype), dX.reshape(N, T * D), out=grads["pos"].reshape(-1))
    grads["cls"] = dX3[:, :n_cls].sum(axis=0)
    dE = ws.E  # E is no longer needed: reuse it for dE
    np.copyto(dE.reshape(N, Np, D), dX3[:, n_cls:])
    if a.patch_norms:
        grads["ln_patch_out.gamma"], grads["ln_patch_out.beta"] = layernorm_backward_fused(
            dE, ws.E_xhat, ws.E_rstd, params["ln_patch_out.gamma"], None, ws.tE, ws.col1[: N * Np], ws.col2[: N * Np]
        )
    grads["W_patch"] = _weight_grad(P, dE)
    if "b_patch" in params:
        grads["b_patch"] = _col_sum(dE)
    if a.patch_norms:
        np.matmul(dE, params["W_patch"].T, out=ws.dP)
        np.multiply(ws.dP, ws.P_xhat, out=ws.tF)
        grads["ln_patch_in.gamma"], grads["ln_patch_in.beta"] = _col_sum(ws.tF), _col_sum(ws.dP)
    return grads


# ---------------------------------------------------------------- the step, in THREADS parts of the batch

from concurrent.futures import ThreadPoolExecutor  # noqa: E402  (before the fork hook below)

THREADS = None  # None: as many as the BLAS library is set to use (OPENBLAS_NUM_THREADS ...); 1: no split
MIN_PARALLEL_ROWS = 256  # a batch of fewer token rows (N T) than this runs in one part
_POOL = {}


def _blas():
    """threadpoolctl's controllers of the loaded BLAS libraries (found once; numpy's first), or []."""
    if "blas" not in _POOL:
        try:
            import numpy.linalg  # noqa: F401  (numpy's BLAS is loaded, so threadpoolctl sees it)
            from threadpoolctl import ThreadpoolController

            libs = ThreadpoolController().select(user_api="blas").lib_controllers
            # scipy ships an OpenBLAS of its own: numpy's (the one matmul calls) decides the count
            libs.sort(key=lambda lib: "numpy" not in str(lib.filepath))
            _POOL["blas"] = libs
        except Exception:  # no threadpoolctl, or a BLAS it does not know: one part, BLAS's own threads
            _POOL["blas"] = []
    return _POOL["blas"]


def _threads():
    """How many parts a batch is cut in at most: THREADS, or as many as numpy's BLAS is set to use."""
    if THREADS is not None:
        return max(1, THREADS)
    blas = _blas()
    return blas[0].num_threads if blas else 1


def _parts(N, T):
    """Slices of the batch, one for each thread."""
    threads = max(1, min(_threads(), N))
    if threads == 1 or N * T < MIN_PARALLEL_ROWS:
        return [slice(0, N)]
    bounds = [N * i // threads for i in range(threads + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _run(kind, jobs):
    """_forward(*job) or _backward(*job) (kind "forward" / "backward") for every job: the first in this thread,
    the others in the worker processes if `worker_processes` started them, in the pool's threads otherwise."""
    fn = _forward if kind == "forward" else _backward
    if len(jobs) == 1:
        return [fn(*jobs[0])]
    workers = _POOL.get("workers")
    if workers is not None and len(workers) >= len(jobs) - 1:
        for worker, job in zip(workers, jobs[1:]):
            worker.submit(kind, job)
        first = fn(*jobs[0])
        return [first] + [worker.result() for worker in workers[: len(jobs) - 1]]
    pool = _POOL.get("pool")
    # a forked child inherits the pool object but not its threads: make a new one there
    if pool is None or pool._max_workers < len(jobs) - 1 or _POOL.get("pid") != os.getpid():
        pool = _POOL["pool"] = ThreadPoolExecutor(len(jobs) - 1, thread_name_prefix="vitlib-fast")
        _POOL["pid"] = os.getpid()
    futures = [pool.submit(fn, *job) for job in jobs[1:]]
    first = fn(*jobs[0])
    return [first] + [f.result() for f in futures]


# ---------------------------------------------------------------- the parts in processes

# Threads share one interpreter: every numpy call outside BLAS and the ufunc loops holds the GIL, and this model's
# parts are hundreds of small calls. A worker process has an interpreter of its own; `worker_processes()` starts
# one per part but the first, and the training loop runs in it. On the Fashion-MNIST recipe's step a worker took
# 0.93 of the threads' time (benchmarks/README.md, "Worker processes"): the params and the gradients are pickled
# through its pipe every step.


class _WorkerProcess:
    """A Python process (`worker_main`) that computes batch part `part`'s forward and backward in a workspace of its
    own. The parent sends it, through a pipe, the params and its slice of the batch, later its slice of dlogits,
    and reads back its logits, later its gradients: the same arrays the part's thread would have returned, bit for
    bit. It ends when its pipe closes: when the parent closes it or exits, even by kill -9."""

    def __init__(self, part):
        from multiprocessing.connection import Connection

        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the folder that holds vitlib/
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        code = f"from vitlib.fast import worker_main; worker_main({to_child_r}, {from_child_w}, {part})"
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code], pass_fds=(to_child_r, from_child_w), env=env, stdin=subprocess.DEVNULL
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self.outbox = Connection(to_child_w, readable=False)
        self.inbox = Connection(from_child_r, writable=False)

    def submit(self, kind, job):
        params, a, cfg, _ws = job  # a: the part's images (forward) or its dlogits (backward)
        try:
            self.outbox.send((kind, params if kind == "forward" else None, a, cfg))
        except OSError:
            self.result()  # says why the worker is gone

    def result(self):
        try:
            status, value = self.inbox.recv()
        except (EOFError, OSError):
            code = self.proc.wait()
            raise RuntimeError(f"vitlib.fast: worker process {self.proc.pid} exited (code {code})") from None
        if status != "ok":
            raise RuntimeError(f"vitlib.fast: worker process {self.proc.pid} failed:\n{value}")
        return value

    def close(self):
        for conn in (self.outbox, self.inbox):
            conn.close()  # the worker reads EOF and returns
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover (a worker stuck in a computation)
            self.proc.kill()
            self.proc.wait()


def worker_main(inbox_fd, outbox_fd, part):
    """The worker process's loop: ("forward", params, x, cfg) -> the part's logits, ("backward", None, dlogits, cfg)
    -> its gradients (with the params of the forward before). Returns at EOF. Ctrl-C is the parent's to handle: the
    terminal sends it to the whole process group, and the parent closes the worker on its way out."""
    import signal
    import traceback
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    inbox, outbox = Connection(inbox_fd, writable=False), Connection(outbox_fd, readable=False)
    params = ws = None
    while True:
        try:
            kind, new_params, a, cfg = inbox.recv()
        except (EOFError, OSError):
            return
        try:
            if kind == "forward":
                params, ws = new_params, workspace(cfg, a.shape[0], a.dtype, part=part)
                reply = ("ok", _forward(params, a, cfg, ws))
            else:
                reply = ("ok", _backward(params, a, cfg, ws))
        except Exception:
            reply = ("error", traceback.format_exc())
        try:
            outbox.send(reply)
        except OSError:
            return


@contextlib.contextmanager
def worker_processes():
    """For the with-block, every step (and fast_logits) cut in parts runs parts 1.. in worker processes, not
    threads: as many workers as parts beyond the first (`_parts`: one part per BLAS thread), none when there is one.
    The results are bit for bit those of the threads (tests/test_fast.py). Nested blocks share the outer's workers."""
    if "workers" in _POOL:
        yield
        return
    workers = [_WorkerProcess(part) for part in range(1, _threads())]
    _POOL["workers"] = workers
    try:
        yield
    finally:
        _POOL.pop("workers", None)
        for worker in workers:
            worker.close()


def fast_loss_and_grads(params, x, y, cfg, smoothing=0.0):
    """params checked, x (N, C, h, w) already cast to params' dtype, y int64 (N,), label smoothing checked
    -> (loss, grads).

    Data parallel over threads: with BLAS set to 2 threads, the batch is cut in two halves and
    each half's forward and backward runs in its own thread with single-threaded BLAS (numpy lets
    go of the GIL in BLAS calls and in ufunc loops), so the small per-head matmuls and the
    elementwise passes, single-threaded in numpy, use both cores too. The loss and dlogits are
    computed on the whole batch between the two halves' forward and backward; the parts' weight
    gradients are then added. BLAS's thread count is restored on return.
    """
    with _LOCK:  # the workspaces and BLAS's thread count are shared: one step at a time
        return _step(params, x, y, cfg, smoothing)


_LOCK = threading.Lock()


def _fork_parent():
    _POOL["cold"] = True
    _LOCK.release()


def _fork_child():
    """In a forked child: a free lock and no thread pool (the inherited one has no threads)."""
    global _LOCK
    _LOCK = threading.Lock()
    _POOL.pop("pool", None)
    _POOL.pop("pid", None)
    _POOL.pop("workers", None)  # the parent's: their pipes are its own
    _POOL["cold"] = True


def _warm_blas():
    """OpenBLAS shuts its threads down at every fork and restarts them at the next call; two batch-part
    threads making that first call together deadlock (gemm's level3_lock). One call here restarts them."""
    a = np.ones((64, 64), dtype=np.float64)
    np.matmul(a, a)
    np.matmul(a.astype(np.float32), a.astype(np.float32))
    _POOL["cold"] = False


# Fork (multiprocessing's workers, a kernel's subprocesses) waits until the running step is done: a
# process forked while OpenBLAS's callers are busy hangs, and this module's threads are those callers.
# Registered after concurrent.futures' own hook (imported above), so it runs before that hook:
# `before` hooks run last-registered first, and the step's pool.submit takes that hook's lock.
os.register_at_fork(before=lambda: _LOCK.acquire(), after_in_parent=_fork_parent, after_in_child=_fork_child)


@contextlib.contextmanager
def _batch_parts(x, cfg):
    """The batch's parts and their workspaces, with every BLAS at one thread (restored on exit): no BLAS
    thread may compete with the parts' threads, numpy's BLAS nor scipy's."""
    check_supported(cfg.arch)
    dtype, N = x.dtype, x.shape[0]
    parts = _parts(N, cfg.num_tokens)
    wss = [workspace(cfg, sl.stop - sl.start, dtype, part=i) for i, sl in enumerate(parts)]
    blas = _blas() if len(parts) > 1 else []
    if blas and _POOL.get("cold"):  # the first step after a fork
        _warm_blas()
    saved = [lib.num_threads for lib in blas]
    for lib in blas:
        lib.set_num_threads(1)
    try:
        yield parts, wss
    finally:
        for lib, n in zip(blas, saved):
            lib.set_num_threads(n)


def _forward_parts(params, x, cfg, parts, wss):
    logits = _run("forward", [(params, x[sl], cfg, ws) for sl, ws in zip(parts, wss)])
    return logits[0] if len(parts) == 1 else np.concatenate(logits)


def _step(params, x, y, cfg, smoothing=0.0):
    with _batch_parts(x, cfg) as (parts, wss):
        logits = _forward_parts(params, x, cfg, parts, wss)
        loss, c_loss = cross_entropy_forward(logits, y, smoothing)
        dlogits = cross_entropy_backward(1.0, c_loss)
        part_grads = _run("backward", [(params, dlogits[sl], cfg, ws) for sl, ws in zip(parts, wss)])
    grads = part_grads[0]
    for g in part_grads[1:]:
        for k, v in g.items():
            grads[k] += v
    return loss, {k: grads[k] for k in param_shapes(cfg)}


def fast_logits(params, x, cfg, batch_size=128):
    """params checked, x (N, C, h, w) cast to params' dtype -> logits (N, K), a fresh array: the fast step's
    forward alone, `batch_size` images at a time (the training step's workspaces are reused when its batch
    size is the same). model.logits is its teaching twin (tests/test_fast.py)."""
    out = []
    with _LOCK:
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size]
            with _batch_parts(xb, cfg) as (parts, wss):
                out.append(_forward_parts(params, xb, cfg, parts, wss))
    return np.concatenate(out) if out else np.empty((0, cfg.num_classes), x.dtype)
