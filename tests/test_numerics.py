"""Numerics a user never has to think about."""

import numpy as np
import pytest
import torch
from conftest import lucidrains_reference, random_batch, random_params

import vitlib
from vitlib.layernorm import layernorm_backward, layernorm_forward
from vitlib.loss import cross_entropy_backward, cross_entropy_forward


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_with_huge_logits(dtype):
    logits = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4 - 1.0]], dtype=dtype)
    y = np.array([1, 2])
    loss, cache = cross_entropy_forward(logits, y)
    d = cross_entropy_backward(1.0, cache)
    assert np.isfinite(loss) and np.isfinite(d).all()
    ref = torch.tensor(logits.astype(np.float64), requires_grad=True)
    ref_loss = torch.nn.functional.cross_entropy(ref, torch.tensor(y))
    ref_loss.backward()
    assert loss == pytest.approx(ref_loss.item(), rel=1e-6)
    assert np.allclose(d, ref.grad.numpy(), atol=1e-7)


def test_model_with_huge_logits_stays_finite(small_cfg):
    params = random_params(small_cfg)
    params["W_head"] = params["W_head"] * 1e5
    x, y = random_batch(small_cfg)
    loss, grads = vitlib.loss_and_grads(params, x, y, small_cfg)
    assert np.isfinite(loss) and loss > 100
    assert all(np.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("affine", [True, False])
def test_layernorm_of_a_constant_row_is_finite(dtype, affine):
    X = np.full((2, 3, 8), 3.25, dtype=dtype)
    gamma, beta = (np.linspace(0.5, 2, 8, dtype=dtype), np.ones(8, dtype=dtype)) if affine else (None, None)
    Y, cache = layernorm_forward(X, gamma, beta)
    dX, *_ = layernorm_backward(np.ones_like(X), cache)
    assert np.isfinite(Y).all() and np.isfinite(dX).all()
    assert np.allclose(Y, beta if affine else 0.0)
    assert Y.dtype == dX.dtype == dtype


def test_constant_images_through_the_model(small_cfg):
    """A blank image makes every patch constant: vit-pytorch normalises patches, so this hits var = 0."""
    cfg = vitlib.ViTConfig(
        image_size=4, patch_size=2, num_classes=3, dim=6, depth=1, heads=2, mlp_dim=6, style="vit-pytorch"
    )
    params = random_params(cfg)
    loss, grads = vitlib.loss_and_grads(params, np.zeros((2, 3, 4, 4)), np.array([0, 1]), cfg)
    assert np.isfinite(loss) and all(np.isfinite(g).all() for g in grads.values())


def test_float32_close_to_float64(small_cfg):
    p64 = random_params(small_cfg)
    p32 = {k: v.astype(np.float32) for k, v in p64.items()}
    x, y = random_batch(small_cfg)
    l64, g64 = vitlib.loss_and_grads(p64, x, y, small_cfg)
    l32, g32 = vitlib.loss_and_grads(p32, x.astype(np.float32), y, small_cfg)
    assert abs(l32 - l64) < 1e-5 * abs(l64)
    for k in g64:
        assert g32[k].dtype == np.float32
        assert vitlib.rel_error(g32[k], g64[k]) < 1e-4, k


def test_float32_matches_torch_float32(small_cfg):
    """In float32 both sides round differently; agreement to ~1e-5 is what float32 allows."""
    params = random_params(small_cfg, dtype=np.float32)
    x, y = random_batch(small_cfg, dtype=np.float32)
    _, ours = vitlib.loss_and_grads(params, x, y, small_cfg)
    _, ref = lucidrains_reference(
        small_cfg, {k: v.astype(np.float64) for k, v in params.items()}, x.astype(np.float64), y
    )
    ours_t = vitlib.interop.to_lucidrains(ours, small_cfg)
    assert all(vitlib.rel_error(ours_t[k], ref[k]) < 1e-4 for k in ref)
