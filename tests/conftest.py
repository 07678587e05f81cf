"""Shared helpers for the vitlib tests: non-trivial random parameters and torch comparisons."""

import numpy as np
import pytest
import torch
from reference import lucidrains_from_cfg, vit_pytorch_from_cfg  # tests/ is on sys.path under pytest

import vitlib

torch.set_num_threads(1)


def random_params(cfg, seed=0, dtype=np.float64):
    """init_params, then every LayerNorm gamma/beta and bias made random too, so no term can hide
    behind a one or a zero."""
    params = vitlib.init_params(cfg, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 1000)
    out = {}
    for k, v in params.items():
        leaf = k.split(".")[-1]
        if leaf == "gamma":
            v = 1.0 + 0.5 * rng.standard_normal(v.shape)
        elif leaf == "beta" or leaf.startswith("b_"):
            v = 0.3 * rng.standard_normal(v.shape)
        elif k in ("cls", "pos"):
            v = rng.standard_normal(v.shape)
        out[k] = np.asarray(v, dtype=dtype)
    return out


def random_batch(cfg, n=3, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed + 7)
    x = rng.standard_normal((n, cfg.channels, *cfg.image_size)).astype(dtype)
    y = rng.integers(0, cfg.num_classes, size=n)
    return x, y


def torch_state(state_np):
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in state_np.items()}


def torch_loss_and_grads(model, state, x, y):
    """Load `state` (forum/vit-pytorch names) into `model`, run autograd -> (loss, {name: grad ndarray})."""
    model = model.double()
    model.load_state_dict(torch_state(state), strict=True)
    model.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(torch.tensor(x)), torch.tensor(y))
    loss.backward()
    return loss.item(), {k: p.grad.detach().numpy().copy() for k, p in model.named_parameters()}


def lucidrains_reference(cfg, params, x, y):
    return torch_loss_and_grads(lucidrains_from_cfg(cfg), vitlib.interop.to_lucidrains(params, cfg), x, y)


def vit_pytorch_reference(cfg, params, x, y):
    return torch_loss_and_grads(vit_pytorch_from_cfg(cfg), vitlib.interop.to_vit_pytorch(params, cfg), x, y)


def assert_grads_match(ours: dict, theirs: dict, tol=1e-10):
    """Same keys, same shapes (no broadcasting), relative error below tol for every tensor."""
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert ours[k].shape == theirs[k].shape, f"{k}: shape {ours[k].shape} != {theirs[k].shape}"
        err = vitlib.rel_error(ours[k], theirs[k])
        assert err < tol, f"{k}: relative error {err:.2e} >= {tol:.0e}"


@pytest.fixture
def small_cfg():
    return vitlib.ViTConfig(
        image_size=(6, 4), patch_size=2, num_classes=5, dim=8, depth=2, heads=2, mlp_dim=12, channels=2, dim_head=3
    )
