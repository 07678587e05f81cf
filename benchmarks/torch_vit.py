"""A minimal torch module of lucidrains' ViT (the forum post's), for the benchmark only.

Its state_dict names are the forum module's, so `vitlib.interop.to_lucidrains` loads it.
tests/reference.py's `LucidrainsViT` (the lead's) is preferred when it exists: see `build`.
"""

import sys
from pathlib import Path

import torch
from torch import nn


class PreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm, self.fn = nn.LayerNorm(dim), fn

    def forward(self, x):
        return self.fn(self.norm(x))


class FeedForward(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim), nn.Dropout(0.0)
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
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0)) if project_out else nn.Identity()

    def forward(self, x):
        N, T, _ = x.shape
        q, k, v = (t.reshape(N, T, self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        attn = ((q @ k.transpose(-1, -2)) * self.scale).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(N, T, -1)
        return self.to_out(out)


class Rearrange(nn.Module):
    """'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'"""

    def __init__(self, ph, pw):
        super().__init__()
        self.ph, self.pw = ph, pw

    def forward(self, img):
        N, C, ih, iw = img.shape
        g = img.reshape(N, C, ih // self.ph, self.ph, iw // self.pw, self.pw).permute(0, 2, 4, 3, 5, 1)
        return g.reshape(N, -1, self.ph * self.pw * C)


class LucidrainsViT(nn.Module):
    def __init__(self, *, image_size, patch_size, num_classes, dim, depth, heads, mlp_dim, pool, channels, dim_head):
        super().__init__()
        (ih, iw), (ph, pw) = image_size, patch_size
        num_patches = (ih // ph) * (iw // pw)
        self.to_patch_embedding = nn.Sequential(Rearrange(ph, pw), nn.Linear(channels * ph * pw, dim))
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
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embedding
        for attn, ff in self.transformer.layers:
            x = attn(x) + x
            x = ff(x) + x
        x = x.mean(dim=1) if self.pool == "mean" else x[:, 0]
        return self.mlp_head(x)


def build(cfg, state_dict):
    """A torch module of cfg (style lucidrains) holding state_dict -> (module, where it came from)."""
    kwargs = dict(
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        num_classes=cfg.num_classes,
        dim=cfg.dim,
        depth=cfg.depth,
        heads=cfg.heads,
        mlp_dim=cfg.mlp_dim,
        pool=cfg.pool,
        channels=cfg.channels,
        dim_head=cfg.dim_head,
    )
    tensors = {k: torch.as_tensor(v) for k, v in state_dict.items()}
    tests = Path(__file__).resolve().parent.parent / "tests"
    if (tests / "reference.py").exists():
        sys.path.insert(0, str(tests))
        try:
            import reference

            model = reference.LucidrainsViT(**kwargs)
            model.load_state_dict(tensors)
            return model, "tests/reference.py LucidrainsViT"
        except Exception as exc:  # a different signature: fall back to the module above
            print(f"# tests/reference.py LucidrainsViT unusable ({type(exc).__name__}: {exc}); using torch_vit.py")
        finally:
            sys.path.remove(str(tests))
    model = LucidrainsViT(**kwargs)
    model.load_state_dict(tensors)
    return model, "benchmarks/torch_vit.py LucidrainsViT"
