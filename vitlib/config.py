"""ViTConfig: the hyper-parameters of one ViT, as an immutable value.

Keyword names are lucidrains' (`image_size`, `patch_size`, `dim`, `depth`, `heads`,
`mlp_dim`, `pool`, `channels`, `dim_head`) plus `style`, which picks the architecture: a row of
`vitlib.arch.ARCHS`, whose feature flags every module reads (`cfg.arch`):

- ``"seed"``: the compact ViT of the coding exercise (no biases, LayerNorm without
  scale/shift, tanh GELU, cls pooling, head on the raw cls token).
- ``"lucidrains"``: the ViT of the forum post (pre-LN blocks with affine LayerNorm,
  exact GELU, biases, head = LayerNorm + Linear).
- ``"vit-pytorch"``: the ViT of vit-pytorch 1.26 (LayerNorm around the patch projection,
  LayerNorm inside each branch, a final LayerNorm over all tokens, head = one Linear,
  no cls token under mean pooling).
- ``"hf"``: transformers' ViTForImageClassification (conv patches, q/k/v biases, LayerNorm
  eps 1e-12, a final LayerNorm, classifier on the cls token).
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

from .arch import STYLES, Arch, get_arch  # noqa: F401  (STYLES: the names, re-exported)

POOLS = ("cls", "mean")


def _pair(name, value):
    """An int or an (h, w) pair of ints -> (h, w); TypeError/ValueError otherwise."""
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2:
        raise ValueError(f"{name} must be an int or a pair (h, w), got {value!r}")
    for v in items:
        _check_int(name, v)
    return tuple(int(v) for v in items)


def _check_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


@dataclass(frozen=True)
class ViTConfig:
    image_size: int | tuple[int, int]
    patch_size: int | tuple[int, int]
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    pool: str = "cls"
    channels: int = 3
    dim_head: int | None = None
    style: str = "lucidrains"

    def __post_init__(self):
        arch = get_arch(self.style)
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
        image, patch = _pair("image_size", self.image_size), _pair("patch_size", self.patch_size)
        # Normalise so that ViTConfig(image_size=8) == ViTConfig(image_size=(8, 8)).
        object.__setattr__(self, "image_size", image)
        object.__setattr__(self, "patch_size", patch)
        # numpy integers (sizes computed with numpy, as notebooks do) become Python ints, so that
        # to_dict() is JSON data; numpy bools and floats are refused by _check_int like Python's.
        for name in ("num_classes", "dim", "depth", "heads", "mlp_dim", "channels"):
            _check_int(name, getattr(self, name))
            object.__setattr__(self, name, int(getattr(self, name)))
        if self.dim_head is None:
            default = self.dim // self.heads if arch.dim_head_default is None else arch.dim_head_default
            object.__setattr__(self, "dim_head", default)
        _check_int("dim_head", self.dim_head)
        object.__setattr__(self, "dim_head", int(self.dim_head))
        for axis, (i, p) in enumerate(zip(image, patch)):
            if i % p:
                side = ("height", "width")[axis]
                raise ValueError(
                    f"image {side} {i} must be divisible by patch {side} {p} (image_size={image}, patch_size={patch})"
                )
        if arch.inner_is_dim and self.heads * self.dim_head != self.dim:
            raise ValueError(
                f"style {self.style!r} needs heads * dim_head == dim, got {self.heads} * {self.dim_head} != {self.dim}"
            )
        if arch.mlp_is_dim and self.mlp_dim != self.dim:
            raise ValueError(
                f"style {self.style!r} needs mlp_dim == dim (all six block weights are (d, d)), "
                f"got mlp_dim={self.mlp_dim}, dim={self.dim}"
            )
        if self.pool not in arch.pools:
            raise ValueError(f"style {self.style!r} pools by {arch.pools}: pool must be one of them, got {self.pool!r}")

    @property
    def arch(self) -> Arch:
        """The architecture's feature flags (vitlib.arch.ARCHS[style])."""
        return get_arch(self.style)

    # ---- derived sizes (the book's legend: Np patches, T tokens, F patch length) ----
    @property
    def num_patches(self) -> int:
        """Np: the number of patches."""
        (ih, iw), (ph, pw) = self.image_size, self.patch_size
        return (ih // ph) * (iw // pw)

    @property
    def patch_dim(self) -> int:
        """F = C * ph * pw: the length of one flattened patch."""
        return self.channels * self.patch_size[0] * self.patch_size[1]

    @property
    def num_cls(self) -> int:
        """How many cls tokens: 0 only for vit-pytorch under mean pooling."""
        return self.arch.num_cls(self.pool)

    @property
    def num_tokens(self) -> int:
        """T = Np + number of cls tokens."""
        return self.num_patches + self.num_cls

    @property
    def inner_dim(self) -> int:
        """H * Dh: the width of Q, K and V."""
        return self.heads * self.dim_head

    @property
    def has_w_o(self) -> bool:
        """lucidrains and vit-pytorch drop the output projection when heads == 1 and Dh == D."""
        return self.arch.has_w_o(self.heads, self.dim_head, self.dim)

    # ---- serialisation ----
    def to_dict(self) -> dict:
        """A plain dict (JSON-ready: pairs become lists)."""
        d = dataclasses.asdict(self)
        d["image_size"], d["patch_size"] = list(self.image_size), list(self.patch_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ViTConfig:
        if not isinstance(d, dict):
            raise TypeError(f"ViTConfig.from_dict expects a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown ViTConfig fields {sorted(unknown)}; expected a subset of {sorted(names)}")
        return cls(**d)
