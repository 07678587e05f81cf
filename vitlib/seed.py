"""The coding exercise's interface: flat arguments, packed block weights, one flat output.

    blocks_weights (num_blocks, 6, d, d) = [w_q, w_k, w_v, w_o, w_mlp1, w_mlp2] per block
    vit_train_step -> concat(w_proj, cls_token, pos_embed, blocks_weights, w_head), flattened

Numpy in, numpy out; torch in, torch out. Everything runs through vitlib's style="seed"
model, so this file only packs and unpacks.
"""

import math

import numpy as np

from .config import ViTConfig
from .model import forward, loss_and_grads
from .optim import sgd_step
from .validate import FLOATS, as_array, check_images, check_scalar

_BLOCK_ORDER = ("W_q", "W_k", "W_v", "W_o", "W_1", "W_2")


def _unpack(x, w_proj, cls_token, pos_embed, blocks_weights, w_head, num_heads, patch_size):
    """The exercise's arguments -> (cfg, vitlib params, x as numpy, a torch tensor or None)."""
    everything = (x, w_proj, cls_token, pos_embed, blocks_weights, w_head)
    torch_like = next((a for a in everything if hasattr(a, "detach")), None)  # any torch input: torch out
    arrays = {
        "w_proj": w_proj,
        "cls_token": cls_token,
        "pos_embed": pos_embed,
        "blocks_weights": blocks_weights,
        "w_head": w_head,
    }
    arrays = {k: as_array(k, v) for k, v in arrays.items()}
    for k, a in arrays.items():
        if a.dtype.kind == "f" and a.dtype.newbyteorder("=") in FLOATS:
            arrays[k] = a = a.astype(a.dtype.newbyteorder("="))  # big-endian -> native, the same numbers
        if a.dtype not in FLOATS:
            raise TypeError(f"{k} must be a float32 or float64 array, got dtype {a.dtype}")
    dtype = np.result_type(*arrays.values())
    w_proj, cls_token, pos_embed, blocks, w_head = (a.astype(dtype) for a in arrays.values())
    x_arr = as_array("x", x)
    if x_arr.ndim != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got {x_arr.shape}")
    C = x_arr.shape[1]
    if w_proj.ndim != 2:
        raise ValueError(f"w_proj must have shape (C*P*P, d), got {w_proj.shape}")
    d = w_proj.shape[1]
    if blocks.ndim != 4 or blocks.shape[1:] != (6, d, d):
        raise ValueError(f"blocks_weights must have shape (num_blocks, 6, {d}, {d}), got {blocks.shape}")
    if blocks.shape[0] < 1:
        raise ValueError("blocks_weights must hold at least one block, got 0")
    if patch_size is None:
        P = math.isqrt(w_proj.shape[0] // C) if w_proj.shape[0] % C == 0 else 0
        if P < 1 or C * P * P != w_proj.shape[0]:
            raise ValueError(f"cannot infer patch_size: w_proj has {w_proj.shape[0]} rows, not C*P*P with C={C}")
        patch_size = P
    elif isinstance(patch_size, (int, np.integer)) and not isinstance(patch_size, bool) and patch_size >= 1:
        if C * patch_size * patch_size != w_proj.shape[0]:
            raise ValueError(
                f"w_proj must have C*P*P = {C}*{patch_size}*{patch_size} = {C * patch_size**2} rows for "
                f"patch_size={patch_size}, got {w_proj.shape[0]}"
            )
    if isinstance(num_heads, bool) or not isinstance(num_heads, (int, np.integer)):
        raise TypeError(f"num_heads must be an integer, got {type(num_heads).__name__}")
    if num_heads < 1 or d % num_heads:
        raise ValueError(f"num_heads must be >= 1 and divide d={d}, got {num_heads}")
    if w_head.ndim != 2 or w_head.shape[0] != d:
        raise ValueError(f"w_head must have shape ({d}, num_classes), got {w_head.shape}")
    cfg = ViTConfig(
        image_size=tuple(x_arr.shape[2:]),
        patch_size=patch_size,
        num_classes=w_head.shape[1],
        dim=d,
        depth=blocks.shape[0],
        heads=int(num_heads),
        mlp_dim=d,
        channels=C,
        style="seed",
    )
    if cls_token.shape not in ((d,), (1, d), (1, 1, d)):
        raise ValueError(f"cls_token must have shape ({d},), (1, {d}) or (1, 1, {d}), got {cls_token.shape}")
    T = cfg.num_tokens
    if pos_embed.shape not in ((T, d), (1, T, d)):
        raise ValueError(
            f"pos_embed must have shape ({T}, {d}) or (1, {T}, {d}) (T = patches + 1), got {pos_embed.shape}"
        )
    params = {"W_patch": w_proj, "cls": cls_token.reshape(1, d), "pos": pos_embed.reshape(T, d)}
    for b in range(cfg.depth):
        for i, name in enumerate(_BLOCK_ORDER):
            params[f"blocks.{b}.{name}"] = blocks[b, i]
    params["W_head"] = w_head
    return cfg, params, x_arr, torch_like


def _like(result, torch_like):
    if torch_like is None:
        return result
    import torch  # only reached when the caller passed torch tensors

    return torch.from_numpy(np.ascontiguousarray(result))


def vit_classify(x, w_proj, cls_token, pos_embed, blocks_weights, w_head, num_heads, patch_size=None):
    """-> logits (N, num_classes), same array type as the inputs."""
    cfg, params, x_arr, torch_like = _unpack(
        x, w_proj, cls_token, pos_embed, blocks_weights, w_head, num_heads, patch_size
    )
    x_arr = check_images(x_arr, cfg, params["W_patch"].dtype)
    return _like(forward(params, x_arr, cfg)[0], torch_like)


def vit_train_step(x, y, w_proj, cls_token, pos_embed, blocks_weights, w_head, num_heads, lr, patch_size=None):
    """One SGD step on mean softmax cross-entropy -> the updated weights, flat:
    [w_proj, cls_token, pos_embed, blocks_weights, w_head], each flattened in C order."""
    cfg, params, x_arr, torch_like = _unpack(
        x, w_proj, cls_token, pos_embed, blocks_weights, w_head, num_heads, patch_size
    )
    lr = check_scalar("lr", lr)
    _, grads = loss_and_grads(params, x_arr, as_array("y", y), cfg)
    new = sgd_step(params, grads, lr)
    blocks = np.stack([np.stack([new[f"blocks.{b}.{n}"] for n in _BLOCK_ORDER]) for b in range(cfg.depth)])
    flat = np.concatenate(
        [new["W_patch"].ravel(), new["cls"].ravel(), new["pos"].ravel(), blocks.ravel(), new["W_head"].ravel()]
    )
    return _like(flat, torch_like)
