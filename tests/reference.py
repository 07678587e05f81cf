"""The torch oracles moved to `vit_oracles` (one home for tests, chapters, tools and benchmarks);
this module re-exports them for old imports."""

from vit_oracles import (  # noqa: F401
    Attention,
    FeedForward,
    LucidrainsViT,
    Patchify,
    PreNorm,
    load_vit_pytorch,
    lucidrains_from_cfg,
    module_kwargs,
    seed_extract_patches,
    seed_gelu,
    seed_layer_norm,
    seed_logits,
    seed_loss,
    seed_loss_and_grads,
    seed_train_step,
    vit_pytorch_from_cfg,
)
