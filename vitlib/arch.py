"""The architectures vitlib knows, as data: one `Arch` record of feature flags per style, one table.

Every module reads these flags (`cfg.arch.final_norm`, `cfg.arch.gelu`, ...); none compares style
names. A new architecture is a new row of `ARCHS` (plus its torch names in `vitlib.interop`), and the
tests, tools and benchmarks that iterate over `ARCHS` x its pools test it everywhere. A flag value the
fast path does not implement makes it raise (`vitlib.fast.check_supported`), never fall back.

| flag             | seed   | lucidrains      | vit-pytorch     | hf         | meaning                               |
|------------------|--------|-----------------|-----------------|------------|---------------------------------------|
| patch_layout     | cpp    | ppc             | ppc             | cpp        | patch flattened (c,p1,p2)/(p1,p2,c)   |
| patch_norms      | -      | -               | yes             | -          | LayerNorm before and after W_patch    |
| block_affine     | -      | yes             | yes             | yes        | blocks' LayerNorms have gamma, beta   |
| final_norm       | -      | -               | yes             | yes        | LayerNorm on all tokens after blocks  |
| head_norm        | -      | yes             | -               | -          | LayerNorm on the pooled vector        |
| norm_eps         | 1e-5   | 1e-5            | 1e-5            | 1e-12      | every LayerNorm's epsilon             |
| *_bias           | none   | all but q/k/v   | all but q/k/v   | all        | patch, q/k/v, out, mlp, head biases   |
| gelu             | tanh   | none (erf)      | none (erf)      | none (erf) | torch's `approximate`                 |
| cls_under_mean   | -      | yes             | -               | -          | a cls token also under mean pooling   |
| w_o              | always | unless identity | unless identity | always     | W_o dropped if heads == 1 and Dh == D |
| inner_is_dim     | yes    | -               | -               | -          | heads * dim_head must equal dim       |
| mlp_is_dim       | yes    | -               | -               | -          | mlp_dim must equal dim                |
| dim_head_default | D / H  | 64              | 64              | D / H      | dim_head when the config omits it     |
| pools            | cls    | cls, mean       | cls, mean       | cls        | the poolings the architecture has     |

"hf" is transformers' ViTForImageClassification with its defaults (conv patch embedding = a linear on
(c, p1, p2)-flattened patches, pre-LN blocks with layer_norm_eps 1e-12, q/k/v with biases, exact GELU,
a final LayerNorm, the classifier on the cls token); `vitlib.interop.load_hf` reads its checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

PATCH_LAYOUTS = ("cpp", "ppc")
GELUS = ("none", "tanh")
W_O_RULES = ("always", "unless_identity")


@dataclass(frozen=True)
class Arch:
    name: str
    patch_layout: str = "ppc"
    patch_norms: bool = False
    block_affine: bool = True
    final_norm: bool = False
    head_norm: bool = False
    norm_eps: float = 1e-5
    patch_bias: bool = True
    qkv_bias: bool = False
    out_bias: bool = True
    mlp_bias: bool = True
    head_bias: bool = True
    gelu: str = "none"
    cls_under_mean: bool = True
    w_o: str = "unless_identity"
    inner_is_dim: bool = False
    mlp_is_dim: bool = False
    dim_head_default: int | None = 64  # None: dim // heads
    pools: tuple[str, ...] = ("cls", "mean")

    def __post_init__(self):
        for name, allowed in (("patch_layout", PATCH_LAYOUTS), ("gelu", GELUS), ("w_o", W_O_RULES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"Arch {self.name!r}: {name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not isinstance(self.norm_eps, float) or not self.norm_eps > 0:
            raise ValueError(f"Arch {self.name!r}: norm_eps must be a positive float, got {self.norm_eps!r}")
        if not self.pools or not set(self.pools) <= {"cls", "mean"}:
            raise ValueError(f"Arch {self.name!r}: pools must be a non-empty subset of ('cls', 'mean')")

    def num_cls(self, pool: str) -> int:
        """Number of cls tokens under `pool`: 0 only where mean pooling drops it."""
        return 1 if (pool == "cls" or self.cls_under_mean) else 0

    def has_w_o(self, heads: int, dim_head: int, dim: int) -> bool:
        return self.w_o == "always" or not (heads == 1 and dim_head == dim)

    def flags(self) -> dict:
        """The flags as a plain dict (without the name)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}


ARCHS: dict[str, Arch] = {
    a.name: a
    for a in (
        # the coding exercise's compact ViT: no biases, plain LayerNorm, tanh GELU, all block weights (d, d)
        Arch(
            "seed",
            patch_layout="cpp",
            block_affine=False,
            patch_bias=False,
            out_bias=False,
            mlp_bias=False,
            head_bias=False,
            gelu="tanh",
            w_o="always",
            inner_is_dim=True,
            mlp_is_dim=True,
            dim_head_default=None,
            pools=("cls",),
        ),
        # the forum post's ViT: pre-LN blocks, head = LayerNorm + Linear
        Arch("lucidrains", head_norm=True),
        # vit-pytorch 1.26: LayerNorms around the patch linear, a final LayerNorm, no cls under mean pooling
        Arch("vit-pytorch", patch_norms=True, final_norm=True, cls_under_mean=False),
        # transformers' ViTForImageClassification (its defaults): conv patches, q/k/v biases, LayerNorm eps 1e-12
        Arch(
            "hf",
            patch_layout="cpp",
            final_norm=True,
            norm_eps=1e-12,
            qkv_bias=True,
            w_o="always",
            cls_under_mean=False,
            dim_head_default=None,
            pools=("cls",),
        ),
    )
}
STYLES = tuple(ARCHS)


def get_arch(style: str) -> Arch:
    if style not in ARCHS:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    return ARCHS[style]


def cases(pools=None):
    """(style, pool) for every architecture and every pool it has: what tests, tools and benchmarks run."""
    return [(s, p) for s, a in ARCHS.items() for p in a.pools if pools is None or p in pools]
