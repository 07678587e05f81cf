"""Parameter names, shapes and initialisation.

One table, in the order the forward pass uses them (b: block index 0..depth-1):

| key                    | shape        | styles                    | torch name (lucidrains)              |
|------------------------|--------------|---------------------------|--------------------------------------|
| ln_patch_in.gamma/beta | (F,)         | vit-pytorch               | -                                    |
| W_patch                | (F, D)       | all                       | to_patch_embedding.1.weight^T        |
| b_patch                | (D,)         | lucidrains, vit-pytorch   | to_patch_embedding.1.bias            |
| ln_patch_out.gamma/beta| (D,)         | vit-pytorch               | -                                    |
| cls                    | (n_cls, D)   | all (n_cls = 0 for vit-pytorch mean pooling) | cls_token         |
| pos                    | (T, D)       | all                       | pos_embedding                        |
| blocks.b.ln1.gamma/beta| (D,)         | lucidrains, vit-pytorch   | transformer.layers.b.0.norm.*        |
| blocks.b.W_q/W_k/W_v   | (D, H*Dh)    | all                       | ...0.fn.to_qkv.weight^T, split in 3   |
| blocks.b.W_o           | (H*Dh, D)    | all unless H == 1 and Dh == D (not seed) | ...to_out.0.weight^T  |
| blocks.b.b_o           | (D,)         | as W_o, not seed          | ...to_out.0.bias                     |
| blocks.b.ln2.gamma/beta| (D,)         | lucidrains, vit-pytorch   | transformer.layers.b.1.norm.*        |
| blocks.b.W_1, b_1      | (D, M), (M,) | all (no b_1 in seed)      | transformer.layers.b.1.fn.net.0.*    |
| blocks.b.W_2, b_2      | (M, D), (D,) | all (no b_2 in seed)      | transformer.layers.b.1.fn.net.3.*    |
| ln_final.gamma/beta    | (D,)         | vit-pytorch               | -                                    |
| ln_head.gamma/beta     | (D,)         | lucidrains                | mlp_head.0.*                         |
| W_head                 | (D, K)       | all                       | mlp_head.1.weight^T                  |
| b_head                 | (K,)         | lucidrains, vit-pytorch   | mlp_head.1.bias                      |
"""

import numpy as np

from .config import ViTConfig


def param_shapes(cfg: ViTConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter key of `cfg`'s model and its shape, in forward order (read from cfg.arch's flags)."""
    D, F, M, K, HDh = cfg.dim, cfg.patch_dim, cfg.mlp_dim, cfg.num_classes, cfg.inner_dim
    a = cfg.arch
    s: dict[str, tuple[int, ...]] = {}
    if a.patch_norms:
        s["ln_patch_in.gamma"] = s["ln_patch_in.beta"] = (F,)
    s["W_patch"] = (F, D)
    if a.patch_bias:
        s["b_patch"] = (D,)
    if a.patch_norms:
        s["ln_patch_out.gamma"] = s["ln_patch_out.beta"] = (D,)
    s["cls"] = (cfg.num_cls, D)
    s["pos"] = (cfg.num_tokens, D)
    for b in range(cfg.depth):
        p = f"blocks.{b}."
        if a.block_affine:
            s[p + "ln1.gamma"] = s[p + "ln1.beta"] = (D,)
        for n in ("q", "k", "v"):
            s[p + "W_" + n] = (D, HDh)
            if a.qkv_bias:
                s[p + "b_" + n] = (HDh,)
        if cfg.has_w_o:
            s[p + "W_o"] = (HDh, D)
            if a.out_bias:
                s[p + "b_o"] = (D,)
        if a.block_affine:
            s[p + "ln2.gamma"] = s[p + "ln2.beta"] = (D,)
        s[p + "W_1"] = (D, M)
        if a.mlp_bias:
            s[p + "b_1"] = (M,)
        s[p + "W_2"] = (M, D)
        if a.mlp_bias:
            s[p + "b_2"] = (D,)
    if a.final_norm:
        s["ln_final.gamma"] = s["ln_final.beta"] = (D,)
    if a.head_norm:
        s["ln_head.gamma"] = s["ln_head.beta"] = (D,)
    s["W_head"] = (D, K)
    if a.head_bias:
        s["b_head"] = (K,)
    return s


def init_params(cfg: ViTConfig, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    """Deterministic for a seed. Weights W (fan_in, fan_out) and biases ~ U(+-1/sqrt(fan_in)),
    torch.nn.Linear's default; LayerNorm gamma = 1, beta = 0; cls and pos ~ N(0, 0.02^2)."""
    if not isinstance(cfg, ViTConfig):
        raise TypeError(f"cfg must be a vitlib.ViTConfig, got {type(cfg).__name__}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    rng = np.random.default_rng(seed)
    params = {}
    shapes = param_shapes(cfg)
    fan_in = {k: v[0] for k, v in shapes.items() if k.split(".")[-1].startswith("W_")}
    for key, shape in shapes.items():
        leaf = key.split(".")[-1]
        if leaf == "gamma":
            value = np.ones(shape)
        elif leaf == "beta":
            value = np.zeros(shape)
        elif key in ("cls", "pos"):
            value = 0.02 * rng.standard_normal(shape)
        else:  # W_x, or its bias b_x which shares W_x's fan-in
            w_key = key if leaf.startswith("W_") else key[: -len(leaf)] + "W_" + leaf[2:]
            bound = 1.0 / np.sqrt(fan_in[w_key])
            value = rng.uniform(-bound, bound, shape)
        params[key] = value.astype(dtype)
    return params
