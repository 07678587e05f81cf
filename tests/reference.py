"""Torch references: the oracles vitlib is checked against (never used inside vitlib).

- `LucidrainsViT`: the forum post's ViT, written anew with plain torch ops, with the same
  parameter names (`to_patch_embedding.1.weight`, `transformer.layers.0.0.fn.to_qkv.weight`, ...).
- `seed_loss` / `seed_train_step`: the coding exercise's model and step exactly as its text
  describes them, as torch functions on the exercise's packed arguments.
- `load_vit_pytorch()`: the real vit-pytorch package's `vit.py`, loaded without its
  `__init__` (which imports torchvision, which cannot import beside torch 2.13 here).
"""

import functools
import importlib.util
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


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


def vit_pytorch_from_cfg(cfg):
    """The real vit-pytorch ViT with the sizes of a vitlib ViTConfig."""
    return load_vit_pytorch().ViT(**module_kwargs(cfg))


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


def seed_train_step(x, y, w_proj, cls_token, pos_embed, blocks_weights, w_head, num_heads, lr, patch_size):
    """Autograd reference of vit_train_step: returns the flat updated weights."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (w_proj, cls_token, pos_embed, blocks_weights, w_head)]
    logits = seed_logits(x, *leaves, num_heads, patch_size)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    return torch.cat([(t - lr * t.grad).detach().reshape(-1) for t in leaves])


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
