"""Exact, lossless maps between vitlib's params (or grads) and torch state dicts.

torch.nn.Linear stores its weight (out, in); vitlib stores W (in, out), so weights are
transposed. lucidrains' `to_qkv` holds [W_q | W_k | W_v] stacked; vitlib keeps the three
apart, because the book follows each one's gradient separately.
"""

import numpy as np

from .arch import ARCHS
from .config import ViTConfig
from .params import param_shapes
from .validate import as_array, check_cfg

# kinds: "T" transpose, "=" same, "qkv" three weights stacked, "1" one leading axis added
_QKV = ("W_q", "W_k", "W_v")


def _lucidrains_names(cfg):
    rows = [("to_patch_embedding.1.weight", "W_patch", "T"), ("to_patch_embedding.1.bias", "b_patch", "=")]
    rows += [("pos_embedding", "pos", "1"), ("cls_token", "cls", "1")]
    for b in range(cfg.depth):
        t, v = f"transformer.layers.{b}.", f"blocks.{b}."
        rows += [(t + "0.norm.weight", v + "ln1.gamma", "="), (t + "0.norm.bias", v + "ln1.beta", "=")]
        rows += [(t + "0.fn.to_qkv.weight", v, "qkv")]
        if cfg.has_w_o:
            rows += [(t + "0.fn.to_out.0.weight", v + "W_o", "T"), (t + "0.fn.to_out.0.bias", v + "b_o", "=")]
        rows += [(t + "1.norm.weight", v + "ln2.gamma", "="), (t + "1.norm.bias", v + "ln2.beta", "=")]
        rows += [(t + "1.fn.net.0.weight", v + "W_1", "T"), (t + "1.fn.net.0.bias", v + "b_1", "=")]
        rows += [(t + "1.fn.net.3.weight", v + "W_2", "T"), (t + "1.fn.net.3.bias", v + "b_2", "=")]
    rows += [("mlp_head.0.weight", "ln_head.gamma", "="), ("mlp_head.0.bias", "ln_head.beta", "=")]
    rows += [("mlp_head.1.weight", "W_head", "T"), ("mlp_head.1.bias", "b_head", "=")]
    return rows


def _vit_pytorch_names(cfg):
    rows = [
        ("to_patch_embedding.1.weight", "ln_patch_in.gamma", "="),
        ("to_patch_embedding.1.bias", "ln_patch_in.beta", "="),
    ]
    rows += [("to_patch_embedding.2.weight", "W_patch", "T"), ("to_patch_embedding.2.bias", "b_patch", "=")]
    rows += [
        ("to_patch_embedding.3.weight", "ln_patch_out.gamma", "="),
        ("to_patch_embedding.3.bias", "ln_patch_out.beta", "="),
    ]
    rows += [("cls_token", "cls", "="), ("pos_embedding", "pos", "=")]
    for b in range(cfg.depth):
        t, v = f"transformer.layers.{b}.", f"blocks.{b}."
        rows += [(t + "0.norm.weight", v + "ln1.gamma", "="), (t + "0.norm.bias", v + "ln1.beta", "=")]
        rows += [(t + "0.to_qkv.weight", v, "qkv")]
        if cfg.has_w_o:
            rows += [(t + "0.to_out.0.weight", v + "W_o", "T"), (t + "0.to_out.0.bias", v + "b_o", "=")]
        rows += [(t + "1.net.0.weight", v + "ln2.gamma", "="), (t + "1.net.0.bias", v + "ln2.beta", "=")]
        rows += [(t + "1.net.1.weight", v + "W_1", "T"), (t + "1.net.1.bias", v + "b_1", "=")]
        rows += [(t + "1.net.4.weight", v + "W_2", "T"), (t + "1.net.4.bias", v + "b_2", "=")]
    rows += [("transformer.norm.weight", "ln_final.gamma", "="), ("transformer.norm.bias", "ln_final.beta", "=")]
    rows += [("mlp_head.weight", "W_head", "T"), ("mlp_head.bias", "b_head", "=")]
    return rows


def _to_torch_layout(tree, rows, shapes):
    missing = [k for k in shapes if k not in tree]
    extra = [k for k in tree if k not in shapes]
    if missing or extra:
        raise ValueError(f"tree does not match the config: missing {missing}, unexpected {extra}")
    arrays = {k: as_array(k, tree[k]) for k in shapes}
    for k, a in arrays.items():
        if a.shape != shapes[k]:
            raise ValueError(f"tree[{k!r}] must have shape {shapes[k]}, got {a.shape}")
    out = {}
    for tname, key, kind in rows:
        if kind == "qkv":
            out[tname] = np.concatenate([arrays[key + n] for n in _QKV], axis=1).T.copy()
        else:
            a = arrays[key]
            out[tname] = a.T.copy() if kind == "T" else (a[None].copy() if kind == "1" else a.copy())
    return out


def _from_torch_layout(state_dict, rows, shapes):
    expected = [r[0] for r in rows]
    missing = [k for k in expected if k not in state_dict]
    extra = [k for k in state_dict if k not in expected]
    if missing or extra:
        raise ValueError(f"state_dict does not match the config: missing {missing}, unexpected {extra}")
    params = {}
    for tname, key, kind in rows:
        a = as_array(tname, state_dict[tname])
        if kind == "qkv":
            W = a.T  # (D, 3 H Dh)
            d, width = shapes[key + "W_q"]
            if W.shape != (d, 3 * width):
                raise ValueError(f"state_dict[{tname!r}] must have shape {(3 * width, d)}, got {a.shape}")
            for i, n in enumerate(_QKV):
                params[key + n] = W[:, i * width : (i + 1) * width].copy()
            continue
        v = a.T if kind == "T" else (a.reshape(a.shape[1:]) if kind == "1" and a.ndim and a.shape[0] == 1 else a)
        if v.shape != shapes[key]:
            raise ValueError(f"state_dict[{tname!r}] does not fit vitlib's {key!r} {shapes[key]}: got {a.shape}")
        params[key] = np.array(v, copy=True)
    return {k: params[k] for k in shapes}  # vitlib's own key order


def _check_style(cfg, style):
    """The converters of one architecture refuse a config of another (their torch names would not fit)."""
    check_cfg(cfg)
    if cfg.arch is not ARCHS[style]:
        raise ValueError(f"this converter needs a config with style={style!r}, got style={cfg.style!r}")


def to_lucidrains(tree, cfg: ViTConfig) -> dict:
    """vitlib params (or grads) -> {forum module's parameter name: numpy array}."""
    _check_style(cfg, "lucidrains")
    return _to_torch_layout(tree, _lucidrains_names(cfg), param_shapes(cfg))


def from_lucidrains(state_dict, cfg: ViTConfig) -> dict:
    """The forum module's state_dict (torch tensors or numpy arrays) -> vitlib params."""
    _check_style(cfg, "lucidrains")
    return _from_torch_layout(state_dict, _lucidrains_names(cfg), param_shapes(cfg))


def to_vit_pytorch(tree, cfg: ViTConfig) -> dict:
    """vitlib params (or grads) -> {vit_pytorch.vit.ViT parameter name: numpy array}."""
    _check_style(cfg, "vit-pytorch")
    return _to_torch_layout(tree, _vit_pytorch_names(cfg), param_shapes(cfg))


def from_vit_pytorch(state_dict, cfg: ViTConfig) -> dict:
    """vit_pytorch.vit.ViT's state_dict (tensors or arrays) -> vitlib params."""
    _check_style(cfg, "vit-pytorch")
    return _from_torch_layout(state_dict, _vit_pytorch_names(cfg), param_shapes(cfg))
