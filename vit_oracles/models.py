"""The torch oracles vitlib is checked against: one importable home for chapters, tests, tools and benchmarks.

This module is *oracle* code, outside vitlib: it uses torch and torch's autograd, and vitlib never imports it
(`import vitlib` loads no torch; `import vit_oracles.models` does). A test holds that no engine module imports it.

- `LucidrainsViT` (with `Attention`, `PreNorm`, `FeedForward`, `Patchify`): the forum post's ViT, written anew
  with plain torch ops and the post's parameter names (`to_patch_embedding.1.weight`,
  `transformer.layers.0.0.fn.to_qkv.weight`, ...). `lucidrains_from_cfg(cfg)` builds one with a config's sizes.
- `load_vit_pytorch()`: the real vit-pytorch package's `vit.py`, loaded without its `__init__` (which imports
  torchvision, which cannot import beside torch 2.13 here); `vit_pytorch_from_cfg(cfg)`.
- `seed_logits` / `seed_loss` / `seed_train_step` / `seed_loss_and_grads`: the coding exercise's model and step
  exactly as its text describes them, as torch functions on the exercise's packed arguments.
- `torch_vit(p, x, cfg)`: the whole ViT forward in plain torch ops on vitlib's own parameter keys.
- `randomize_norms(params, seed)`: the "random LayerNorm scales and biases" recipe (numpy, vitlib keys);
  `randomize_module(model, seed)` is the same recipe on a torch module.
- `hf_from_cfg(cfg)`: transformers' ViTForImageClassification with the sizes of an "hf" config (transformers
  imported here, lazily), `hf_config_dict(cfg)` its config.
- `torch_loss_and_grads(model, state, x, y)` and `reference_grads(cfg, params, x, y)`: autograd's loss and
  gradients, the latter in vitlib's keys.
"""

import functools
import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitlib import interop

GAMMA_SCALE = 0.5  # gamma ~ 1 + GAMMA_SCALE * N(0, 1)
BIAS_SCALE = 0.3  # beta and every bias ~ BIAS_SCALE * N(0, 1)


# ---------------------------------------------------------------- random parameters (the recipe)


def randomize_norms(params, seed=0, scale=GAMMA_SCALE, bias_scale=BIAS_SCALE, embeddings=False):
    """A copy of `params` (vitlib keys) with every LayerNorm gamma ~ 1 + scale N(0,1), every beta and bias
    ~ bias_scale N(0,1), so that no term of a backward pass can hide behind a one or a zero (torch and
    `init_params` start LayerNorms at gamma = 1, beta = 0). With `embeddings=True`, cls and pos ~ N(0, 1) too.
    Weights are kept; dtypes are kept; the input dict is not modified."""
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of arrays, got {type(params).__name__}")
    rng = np.random.default_rng(seed + 1000)
    out = {}
    for k, v in params.items():
        v = np.asarray(v)
        leaf = k.split(".")[-1]
        if leaf == "gamma":
            new = 1.0 + scale * rng.standard_normal(v.shape)
        elif leaf == "beta" or leaf.startswith("b_"):
            new = bias_scale * rng.standard_normal(v.shape)
        elif embeddings and k in ("cls", "pos"):
            new = rng.standard_normal(v.shape)
        else:
            new = v.copy()
        out[k] = new.astype(v.dtype)
    return out


def randomize_module(model, seed=0, scale=GAMMA_SCALE, bias_scale=BIAS_SCALE):
    """`randomize_norms` for a torch module, in place: every nn.LayerNorm's weight ~ 1 + scale N(0,1), its bias
    and every nn.Linear's bias ~ bias_scale N(0,1). Returns the module."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm) and m.weight is not None:
                m.weight.copy_(1 + scale * torch.randn(m.weight.shape, generator=gen, dtype=m.weight.dtype))
                m.bias.copy_(bias_scale * torch.randn(m.bias.shape, generator=gen, dtype=m.bias.dtype))
            elif isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.copy_(bias_scale * torch.randn(m.bias.shape, generator=gen, dtype=m.bias.dtype))
    return model


# ---------------------------------------------------------------- the forum post's ViT (lucidrains)


def _pair(t):
    return tuple(t) if isinstance(t, (tuple, list)) else (t, t)


class Patchify(nn.Module):
    """'b c (h p1) (w p2) -> b (h w) (p1 p2 c)' without einops."""

    def __init__(self, ph, pw):
        super().__init__()
        self.ph, self.pw = ph, pw

    def forward(self, img):
        b, c, H, W = img.shape
        x = img.reshape(b, c, H // self.ph, self.ph, W // self.pw, self.pw)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (H // self.ph) * (W // self.pw), self.ph * self.pw * c)


class PreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.norm(x))


class FeedForward(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        # indices 0 and 3 hold the Linears, as in the post (2 and 4 were Dropout there)
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Identity(), nn.Linear(hidden, dim), nn.Identity()
        )

    def forward(self, x):
        return self.net(x)


class Attention(nn.Module):
    def __init__(self, dim, heads, dim_head):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.scale = heads, dim_head**-0.5
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        project_out = not (heads == 1 and dim_head == dim)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Identity()) if project_out else nn.Identity()

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        attn = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, -1)
        return self.to_out(out)


class LucidrainsViT(nn.Module):
    def __init__(
        self, *, image_size, patch_size, num_classes, dim, depth, heads, mlp_dim, pool="cls", channels=3, dim_head=64
    ):
        super().__init__()
        (ih, iw), (ph, pw) = _pair(image_size), _pair(patch_size)
        num_patches = (ih // ph) * (iw // pw)
        self.to_patch_embedding = nn.Sequential(Patchify(ph, pw), nn.Linear(channels * ph * pw, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.transformer = nn.Module()
        self.transformer.layers = nn.ModuleList(
            nn.ModuleList([PreNorm(dim, Attention(dim, heads, dim_head)), PreNorm(dim, FeedForward(dim, mlp_dim))])
            for _ in range(depth)
        )
        self.pool = pool
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def forward(self, img):
        x = self.to_patch_embedding(img)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        for attn, ff in self.transformer.layers:
            x = attn(x) + x
            x = ff(x) + x
        x = x.mean(dim=1) if self.pool == "mean" else x[:, 0]
        return self.mlp_head(x)


def module_kwargs(cfg):
    """A vitlib ViTConfig as the keyword arguments of lucidrains' and vit-pytorch's ViT (same names)."""
    d = cfg.to_dict()
    del d["style"]
    return {**d, "image_size": cfg.image_size, "patch_size": cfg.patch_size}


def lucidrains_from_cfg(cfg):
    """A LucidrainsViT with the sizes of a vitlib ViTConfig."""
    return LucidrainsViT(**module_kwargs(cfg))


# ---------------------------------------------------------------- the real vit-pytorch


@functools.cache
def load_vit_pytorch():
    """vit_pytorch/vit.py as a module, without vit_pytorch/__init__.py (torchvision)."""
    spec = importlib.util.find_spec("vit_pytorch")
    if spec is None:
        raise ImportError("vit-pytorch is not installed (make installs it with --no-deps)")
    path = Path(next(iter(spec.submodule_search_locations))) / "vit.py"
    module_spec = importlib.util.spec_from_file_location("vit_pytorch_vit", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def vit_pytorch_from_cfg(cfg):
    """The real vit-pytorch ViT with the sizes of a vitlib ViTConfig."""
    return load_vit_pytorch().ViT(**module_kwargs(cfg))


# ---------------------------------------------------------------- transformers' ViT


def hf_config_dict(cfg):
    """The transformers ViTConfig keywords of a vitlib "hf" config (dropout 0, like vitlib's step)."""
    return dict(
        image_size=list(cfg.image_size),
        patch_size=list(cfg.patch_size),
        num_channels=cfg.channels,
        hidden_size=cfg.dim,
        num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.heads,
        head_dim=cfg.dim_head,
        intermediate_size=cfg.mlp_dim,
        num_labels=cfg.num_classes,
        hidden_act="gelu",
        layer_norm_eps=cfg.arch.norm_eps,
        qkv_bias=cfg.arch.qkv_bias,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def hf_from_cfg(cfg, **overrides):
    """transformers.ViTForImageClassification with the sizes of a vitlib "hf" config, randomly initialised.
    Attention runs through torch's sdpa, which keeps float64 (transformers' "eager" path takes its softmax
    in float32)."""
    from transformers import ViTConfig as HFViTConfig
    from transformers import ViTForImageClassification

    hf_cfg = HFViTConfig(**{**hf_config_dict(cfg), **overrides})
    hf_cfg._attn_implementation = "sdpa"
    return ViTForImageClassification(hf_cfg)


# ---------------------------------------------------------------- autograd's gradients


def _as_tensor(v, dtype=torch.float64):
    return v.to(dtype) if isinstance(v, torch.Tensor) else torch.tensor(np.asarray(v), dtype=dtype)


def torch_loss_and_grads(model, state, x, y, dtype=torch.float64):
    """Load `state` (the module's own names, numpy or torch values) into `model` cast to `dtype` (float64 by
    default), run F.cross_entropy and autograd -> (loss, {name: grad ndarray}). `state=None` keeps the
    module's weights."""
    model = model.to(dtype)
    if state is not None:
        model.load_state_dict({k: _as_tensor(v, dtype) for k, v in state.items()}, strict=True)
    model.zero_grad()
    out = model(_as_tensor(x, dtype))
    out = getattr(out, "logits", out)  # transformers returns an output record
    loss = F.cross_entropy(out, torch.as_tensor(np.asarray(y)))
    loss.backward()
    return loss.item(), {k: p.grad.detach().numpy().copy() for k, p in model.named_parameters()}


_MODULES = {
    "lucidrains": (lucidrains_from_cfg, interop.to_lucidrains, interop.from_lucidrains),
    "vit-pytorch": (vit_pytorch_from_cfg, interop.to_vit_pytorch, interop.from_vit_pytorch),
    "hf": (hf_from_cfg, interop.to_hf, interop.from_hf),
}


def _seed_reference(cfg, params, x, y):
    (ph, pw), d = cfg.patch_size, cfg.dim
    if ph != pw:
        raise ValueError(f"the exercise's reference takes square patches, got patch_size={cfg.patch_size}")
    blocks = np.stack([np.stack([params[f"blocks.{b}.{n}"] for n in SEED_BLOCK_ORDER]) for b in range(cfg.depth)])
    args = dict(w_proj=params["W_patch"], cls_token=params["cls"].reshape(1, 1, d), pos_embed=params["pos"][None],
                blocks_weights=blocks, w_head=params["W_head"])  # fmt: skip
    return seed_loss_and_grads(args, x, y, cfg.heads, ph)


_FUNCTIONAL = {"seed": _seed_reference}  # references written as functions of vitlib's own keys


def reference_grads(cfg, params, x, y, names="vitlib"):
    """Autograd's (loss, grads) at vitlib `params`, in float64, from the independent torch model of `cfg`'s
    architecture: the exercise's text (seed), the forum's module (lucidrains), vit-pytorch's ViT, or
    transformers' ViTForImageClassification (hf). `names="vitlib"` returns vitlib's keys, `names="torch"`
    the torch model's own parameter names."""
    if cfg.style in _FUNCTIONAL:
        return _FUNCTIONAL[cfg.style](cfg, params, x, y)
    if cfg.style not in _MODULES:
        raise ValueError(f"no torch reference for style {cfg.style!r}; expected one of {[*_FUNCTIONAL, *_MODULES]}")
    build, to_torch, from_torch = _MODULES[cfg.style]
    loss, grads = torch_loss_and_grads(build(cfg), to_torch(params, cfg), x, y)
    return loss, (from_torch(grads, cfg) if names == "vitlib" else grads)


# ---------------------------------------------------------------- the whole forward on vitlib's keys


def torch_vit(p, x, cfg):
    """The ViT forward of any architecture in plain torch ops, read from `cfg.arch`'s flags; p: vitlib's keys ->
    tensors (absent keys skip their term). Differentiate it with autograd by passing leaves that require grad."""
    a = cfg.arch
    (ph, pw), H = cfg.patch_size, cfg.heads
    N, C, Hi, Wi = x.shape
    g = x.reshape(N, C, Hi // ph, ph, Wi // pw, pw)
    g = g.permute(0, 2, 4, 1, 3, 5) if a.patch_layout == "cpp" else g.permute(0, 2, 4, 3, 5, 1)
    P = g.reshape(N, (Hi // ph) * (Wi // pw), C * ph * pw)  # (c p1 p2) or (p1 p2 c)

    def ln(Z, k):
        return F.layer_norm(Z, Z.shape[-1:], p.get(k + ".gamma"), p.get(k + ".beta"), eps=a.norm_eps)

    def lin(Z, w, b):
        return Z @ p[w] + (p[b] if b in p else 0)

    def heads(Z):  # 'b n (h d) -> b h n d'
        return Z.reshape(N, Z.shape[1], H, -1).transpose(1, 2)

    if a.patch_norms:
        P = ln(P, "ln_patch_in")
    X = lin(P, "W_patch", "b_patch")
    if a.patch_norms:
        X = ln(X, "ln_patch_out")
    X = torch.cat([p["cls"].expand(N, -1, -1), X], dim=1) + p["pos"]
    for b in range(cfg.depth):
        k = f"blocks.{b}."
        Z = ln(X, k + "ln1")
        Q, K, V = (heads(lin(Z, k + "W_" + n, k + "b_" + n)) for n in ("q", "k", "v"))
        A = torch.softmax(Q @ K.transpose(-1, -2) * cfg.dim_head**-0.5, dim=-1)
        O = (A @ V).transpose(1, 2).reshape(N, X.shape[1], -1)  # 'b h n d -> b n (h d)'
        X = X + (lin(O, k + "W_o", k + "b_o") if k + "W_o" in p else O)
        U = lin(ln(X, k + "ln2"), k + "W_1", k + "b_1")
        X = X + lin(F.gelu(U, approximate=a.gelu), k + "W_2", k + "b_2")
    if a.final_norm:
        X = ln(X, "ln_final")
    pooled = X[:, 0] if cfg.pool == "cls" else X.mean(dim=1)
    if a.head_norm:
        pooled = ln(pooled, "ln_head")
    return lin(pooled, "W_head", "b_head")


# ---------------------------------------------------------------- the exercise, as its text says


def seed_layer_norm(x):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5)


def seed_gelu(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def seed_extract_patches(x, P):
    """(N, C, H, W) -> (N, Np, C*P*P) in (c, p1, p2) order: reshape (N,C,Hp,P,Wp,P), permute (N,Hp,Wp,C,P,P)."""
    N, C, H, W = x.shape
    g = x.reshape(N, C, H // P, P, W // P, P).permute(0, 2, 4, 1, 3, 5)
    return g.reshape(N, (H // P) * (W // P), C * P * P)


def seed_logits(x, w_proj, cls_token, pos_embed, blocks_weights, w_head, num_heads, patch_size):
    N = x.shape[0]
    d = w_proj.shape[1]
    dh = d // num_heads
    patches = seed_extract_patches(x, patch_size) @ w_proj
    seq = torch.cat([cls_token.reshape(1, 1, d).expand(N, 1, d), patches], dim=1) + pos_embed.reshape(1, -1, d)
    T = seq.shape[1]
    for w in blocks_weights:
        w_q, w_k, w_v, w_o, w_mlp1, w_mlp2 = w
        norm1 = seed_layer_norm(seq)
        Q, K, V = (
            (norm1 @ m).reshape(N, T, num_heads, dh).transpose(1, 2) for m in (w_q, w_k, w_v)
        )  # heads split as 'b n (h d) -> b h n d'
        attn = torch.softmax(Q @ K.transpose(-1, -2) / math.sqrt(dh), dim=-1)
        seq = seq + (attn @ V).transpose(1, 2).reshape(N, T, d) @ w_o
        norm2 = seed_layer_norm(seq)
        seq = seq + seed_gelu(norm2 @ w_mlp1) @ w_mlp2
    return seq[:, 0, :] @ w_head


def seed_loss(x, y, w_proj, cls_token, pos_embed, blocks_weights, w_head, num_heads, patch_size):
    """The exercise's loss: F.cross_entropy (mean over the batch) of `seed_logits`."""
    return F.cross_entropy(
        seed_logits(x, w_proj, cls_token, pos_embed, blocks_weights, w_head, num_heads, patch_size), y
    )


SEED_BLOCK_ORDER = ("W_q", "W_k", "W_v", "W_o", "W_1", "W_2")  # the exercise's packing of blocks_weights


def seed_loss_and_grads(args, x, y, num_heads, patch_size):
    """Autograd on the exercise's packed arguments `args` (w_proj, cls_token, pos_embed, blocks_weights, w_head;
    numpy) -> (loss, grads in vitlib's seed-style keys)."""
    leaves = {k: _as_tensor(args[k]).requires_grad_(True) for k in ("w_proj", "cls_token", "pos_embed",
                                                                     "blocks_weights", "w_head")}  # fmt: skip
    loss = seed_loss(_as_tensor(x), torch.as_tensor(np.asarray(y)), *leaves.values(), num_heads, patch_size)
    loss.backward()
    g = {k: t.grad.numpy() for k, t in leaves.items()}
    d = g["w_proj"].shape[1]
    grads = {"W_patch": g["w_proj"], "cls": g["cls_token"].reshape(1, d), "pos": g["pos_embed"].reshape(-1, d)}
    for b in range(g["blocks_weights"].shape[0]):
        for i, name in enumerate(SEED_BLOCK_ORDER):
            grads[f"blocks.{b}.{name}"] = g["blocks_weights"][b, i]
    grads["W_head"] = g["w_head"]
    return loss.item(), grads


def seed_train_step(x, y, w_proj, cls_token, pos_embed, blocks_weights, w_head, num_heads, lr, patch_size):
    """Autograd reference of vit_train_step: returns the flat updated weights."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (w_proj, cls_token, pos_embed, blocks_weights, w_head)]
    loss = seed_loss(x, y, *leaves, num_heads, patch_size)
    loss.backward()
    return torch.cat([(t - lr * t.grad).detach().reshape(-1) for t in leaves])
