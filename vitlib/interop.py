"""Exact, lossless maps between vitlib's params (or grads) and torch state dicts.

torch.nn.Linear stores its weight (out, in); vitlib stores W (in, out), so weights are
transposed. lucidrains' `to_qkv` holds [W_q | W_k | W_v] stacked; vitlib keeps the three
apart, because the book follows each one's gradient separately. transformers' ViT embeds
patches with a Conv2d whose (D, C, ph, pw) kernel is W_patch (C ph pw, D) transposed and
reshaped: a conv with stride = kernel size is a linear layer on (c, p1, p2)-flattened patches.

`load_hf(folder)` reads a `save_pretrained` folder of transformers' ViTForImageClassification
(config.json + model.safetensors, through safetensors' numpy API: no torch, no pickle).
"""

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .arch import ARCHS
from .config import ViTConfig
from .params import param_shapes
from .validate import FLOATS, as_array, check_cfg

# kinds: "T" transpose, "=" same, "qkv" three weights stacked, "1" one leading axis added,
# "conv" a (D, C, ph, pw) Conv2d kernel <-> W_patch (C ph pw, D)
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


def _hf_names(cfg, legacy=False):
    """transformers' ViTForImageClassification names: 5.x (`vit.layers.b.attention.q_proj`) or, with
    `legacy`, the 4.x checkpoints' (`vit.encoder.layer.b.attention.attention.query`)."""
    e = "vit.embeddings."
    rows = [(e + "cls_token", "cls", "1"), (e + "position_embeddings", "pos", "1")]
    rows += [(e + "patch_embeddings.projection.weight", "W_patch", "conv")]
    rows += [(e + "patch_embeddings.projection.bias", "b_patch", "=")]
    if legacy:
        att, out = (
            ("attention.attention.query", "attention.attention.key", "attention.attention.value"),
            ("attention.output.dense"),
        )
        fc1, fc2, layers = "intermediate.dense", "output.dense", "vit.encoder.layer."
    else:
        att, out = ("attention.q_proj", "attention.k_proj", "attention.v_proj"), "attention.o_proj"
        fc1, fc2, layers = "mlp.fc1", "mlp.fc2", "vit.layers."
    for b in range(cfg.depth):
        t, v = f"{layers}{b}.", f"blocks.{b}."
        rows += [
            (t + "layernorm_before.weight", v + "ln1.gamma", "="),
            (t + "layernorm_before.bias", v + "ln1.beta", "="),
        ]
        for name, n in zip(att, "qkv"):
            rows += [(t + name + ".weight", v + "W_" + n, "T"), (t + name + ".bias", v + "b_" + n, "=")]
        rows += [(t + out + ".weight", v + "W_o", "T"), (t + out + ".bias", v + "b_o", "=")]
        rows += [
            (t + "layernorm_after.weight", v + "ln2.gamma", "="),
            (t + "layernorm_after.bias", v + "ln2.beta", "="),
        ]
        rows += [(t + fc1 + ".weight", v + "W_1", "T"), (t + fc1 + ".bias", v + "b_1", "=")]
        rows += [(t + fc2 + ".weight", v + "W_2", "T"), (t + fc2 + ".bias", v + "b_2", "=")]
    rows += [("vit.layernorm.weight", "ln_final.gamma", "="), ("vit.layernorm.bias", "ln_final.beta", "=")]
    rows += [("classifier.weight", "W_head", "T"), ("classifier.bias", "b_head", "=")]
    return rows


def _conv_kernel(cfg):
    """The Conv2d kernel shape (D, C, ph, pw) of cfg's patch embedding."""
    return (cfg.dim, cfg.channels, *cfg.patch_size)


def _to_torch_layout(tree, rows, shapes, cfg=None):
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
        elif kind == "conv":
            out[tname] = arrays[key].T.reshape(_conv_kernel(cfg)).copy()  # a fresh array, never a view
        else:
            a = arrays[key]
            out[tname] = a.T.copy() if kind == "T" else (a[None].copy() if kind == "1" else a.copy())
    return out


def _check_state_dict(state_dict):
    """A mapping of names to tensors; a torch module (its parameters, not its state dict) is refused."""
    if isinstance(state_dict, Mapping):
        return
    if callable(getattr(state_dict, "state_dict", None)):  # a torch nn.Module, without importing torch
        raise TypeError(
            f"expected a state dict (a dict of tensors), got a torch module ({type(state_dict).__name__}): "
            "pass model.state_dict()"
        )
    raise TypeError(f"expected a state dict (a dict of tensors), got {type(state_dict).__name__}")


def _torch_shape(kind, shape):
    """The shape torch stores for a vitlib array of `shape`: Linear weights (out, in), a leading 1 axis."""
    return tuple(shape[::-1]) if kind == "T" else ((1, *shape) if kind == "1" else tuple(shape))


def _from_torch_layout(state_dict, rows, shapes, cfg=None):
    _check_state_dict(state_dict)
    expected = [r[0] for r in rows]
    missing = [k for k in expected if k not in state_dict]
    extra = [k for k in state_dict if k not in expected]
    if missing or extra:
        raise ValueError(f"state_dict does not match the config: missing {missing}, unexpected {extra}")
    arrays = {}
    for tname, _, _ in rows:
        a = as_array(f"state_dict[{tname!r}]", state_dict[tname])
        if a.dtype.kind == "f" and a.dtype.newbyteorder("=") in FLOATS and a.dtype not in FLOATS:
            a = a.astype(a.dtype.newbyteorder("="))  # big-endian float32/64: the same numbers, native order
        if a.dtype not in FLOATS:  # an int64 (or bool, float16, complex...) tensor is not a trained weight
            raise TypeError(f"state_dict[{tname!r}] must be float32 or float64, got dtype {a.dtype}")
        arrays[tname] = a
    params = {}
    for tname, key, kind in rows:
        a = arrays[tname]
        if kind == "qkv":
            W = a.T  # (D, 3 H Dh)
            d, width = shapes[key + "W_q"]
            if W.shape != (d, 3 * width):
                raise ValueError(
                    f"state_dict[{tname!r}] must have shape (out, in) = {(3 * width, d)} (torch's layout of "
                    f"vitlib's stacked [W_q | W_k | W_v] {(d, 3 * width)}), got {a.shape}"
                )
            for i, n in enumerate(_QKV):
                params[key + n] = W[:, i * width : (i + 1) * width].copy()
            continue
        if kind == "conv":
            if a.shape != _conv_kernel(cfg):
                raise ValueError(
                    f"state_dict[{tname!r}] must have shape (D, C, ph, pw) = {_conv_kernel(cfg)}, got {a.shape}"
                )
            params[key] = a.reshape(cfg.dim, -1).T.copy()  # a fresh array, never a view of the input
            continue
        v = a.T if kind == "T" else (a.reshape(a.shape[1:]) if kind == "1" and a.ndim and a.shape[0] == 1 else a)
        if v.shape != shapes[key]:
            want = _torch_shape(kind, shapes[key])
            layout = "(out, in) = " if kind == "T" else ""
            hint = ""
            if kind == "T" and a.shape == shapes[key] and want != shapes[key]:
                hint = " (transposed: torch.nn.Linear stores its weight (out, in))"
            raise ValueError(
                f"state_dict[{tname!r}] must have shape {layout}{want} (torch's layout of vitlib's "
                f"{key!r} {shapes[key]}), got {a.shape}{hint}"
            )
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
    return _to_torch_layout(tree, _lucidrains_names(cfg), param_shapes(cfg), cfg)


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


def to_hf(tree, cfg: ViTConfig) -> dict:
    """vitlib params (or grads) -> {transformers ViTForImageClassification parameter name: numpy array}."""
    _check_style(cfg, "hf")
    return _to_torch_layout(tree, _hf_names(cfg), param_shapes(cfg), cfg)


def from_hf(state_dict, cfg: ViTConfig) -> dict:
    """transformers ViTForImageClassification's state_dict (tensors or arrays; 5.x names, or a 4.x
    checkpoint's `vit.encoder.layer...` names) -> vitlib params."""
    _check_style(cfg, "hf")
    _check_state_dict(state_dict)
    legacy = any(isinstance(k, str) and k.startswith("vit.encoder.layer.") for k in state_dict)
    return _from_torch_layout(state_dict, _hf_names(cfg, legacy), param_shapes(cfg), cfg)


# transformers' hidden_act names -> vitlib's GELU: only the exact one is the "hf" architecture
_HF_GELU = {"gelu": "none"}
_HF_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
_HF_IGNORED = ("hidden_dropout_prob", "attention_probs_dropout_prob")  # dropout: not part of vitlib's step


def hf_config(d: dict) -> ViTConfig:
    """A transformers ViTConfig (as the dict of its config.json) -> vitlib.ViTConfig(style="hf").
    Raises ValueError naming any option whose maths vitlib's "hf" architecture does not have."""
    if not isinstance(d, dict):
        raise TypeError(f"expected the config.json dict, got {type(d).__name__}")
    if d.get("model_type") != "vit":
        raise ValueError(f"not a transformers ViT: model_type is {d.get('model_type')!r}, expected 'vit'")
    archs = d.get("architectures") or ["ViTForImageClassification"]
    if "ViTForImageClassification" not in archs:
        raise ValueError(f"not a ViT image classifier: architectures {archs}, expected ViTForImageClassification")
    arch = ARCHS["hf"]
    act = d.get("hidden_act", "gelu")
    if act not in _HF_GELU:
        kind = "the tanh GELU" if act in _HF_TANH_GELUS else "an activation"
        raise ValueError(
            f"hidden_act={act!r} ({kind}) is not supported: the 'hf' architecture has the exact GELU 'gelu'"
        )
    if not d.get("qkv_bias", True):
        raise ValueError("qkv_bias=False is not supported: the 'hf' architecture has q/k/v biases")
    eps = d.get("layer_norm_eps", arch.norm_eps)
    if not math.isclose(eps, arch.norm_eps, rel_tol=0, abs_tol=0):
        raise ValueError(f"layer_norm_eps={eps!r} is not supported: the 'hf' architecture has {arch.norm_eps}")
    labels = d.get("id2label")
    num_classes = d.get("num_labels", len(labels) if labels else 2)  # 2: transformers' default, then not saved
    missing = [
        k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size") if k not in d
    ]
    if missing:
        raise ValueError(f"config.json lacks {missing}")
    heads = d["num_attention_heads"]
    return ViTConfig(
        image_size=d.get("image_size", 224),
        patch_size=d.get("patch_size", 16),
        num_classes=num_classes,
        dim=d["hidden_size"],
        depth=d["num_hidden_layers"],
        heads=heads,
        mlp_dim=d["intermediate_size"],
        channels=d.get("num_channels", 3),
        dim_head=d.get("head_dim") or d["hidden_size"] // heads,
        style="hf",
    )


def load_hf(folder):
    """A transformers `save_pretrained` folder of ViTForImageClassification -> (params, cfg).

    Reads config.json and model.safetensors with safetensors' numpy API (no torch, no pickle: a
    pytorch_model.bin is refused). Errors name the problem: no such folder or file, not a ViT image
    classifier, an option vitlib's "hf" architecture does not have, missing, unexpected or misshapen
    tensors. The params keep the checkpoint's dtype (float32 or float64)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder (expected a transformers save_pretrained folder)")
    cfg_file, weights = folder / "config.json", folder / "model.safetensors"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file} not found: a save_pretrained folder has config.json")
    if not weights.is_file():
        other = sorted(
            p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth") or "safetensors" in p.name
        )
        hint = f" (found {other}: only a single model.safetensors is read, never a pickle)" if other else ""
        raise FileNotFoundError(f"{weights} not found{hint}")
    cfg = hf_config(json.loads(cfg_file.read_text()))
    from safetensors.numpy import load_file  # the loader's only dependency beyond numpy

    state = load_file(str(weights))
    bad = sorted({str(v.dtype) for v in state.values() if v.dtype not in (np.float32, np.float64)})
    if bad:
        raise ValueError(f"{weights.name} holds {bad} tensors: vitlib computes in float32 or float64")
    state = {k: v for k, v in state.items() if not k.startswith("vit.pooler.")}  # an unused pooler, if saved
    if len({v.dtype for v in state.values()}) > 1:
        raise ValueError(f"{weights.name} mixes float32 and float64 tensors")
    return from_hf(state, cfg), cfg
