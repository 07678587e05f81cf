"""Central finite differences agree with the hand-written gradient for every parameter tensor."""

import numpy as np
import pytest
from conftest import exactly_zero, random_batch, random_params

import vitlib
from vitlib.arch import ARCHS, STYLES, cases


def tiny(style, pool="cls"):
    arch = ARCHS[style]
    if arch.inner_is_dim or arch.mlp_is_dim:  # the exercise's square blocks
        return vitlib.ViTConfig(
            image_size=4, patch_size=2, num_classes=3, dim=4, depth=2, heads=2, mlp_dim=4, channels=2, style=style
        )
    return vitlib.ViTConfig(
        image_size=(4, 2),
        patch_size=(2, 1),
        num_classes=3,
        dim=4,
        depth=2,
        heads=2,
        mlp_dim=5,
        channels=2,
        dim_head=3,
        pool=pool,
        style=style,
    )


@pytest.mark.parametrize("style, pool", cases())  # every architecture x every pool it has
def test_every_coordinate_of_every_tensor(style, pool):
    cfg = tiny(style, pool)
    params = random_params(cfg, seed=3)
    x, y = random_batch(cfg, n=2, seed=3)
    for fast in (True, False):  # the fused path and the teaching path
        results = vitlib.check_gradients(params, x, y, cfg, fast=fast)
        assert set(results) == set(params)
        scale = max(float(np.abs(r.numeric).max(initial=0.0)) for r in results.values())
        for name, r in results.items():
            assert len(r.coords) == params[name].size, name  # tiny model: all coordinates
            if exactly_zero(name):  # db_k: zero in exact arithmetic, round-off on both sides
                assert max(np.abs(r.analytic).max(), np.abs(r.numeric).max()) < 1e-10 * scale, name
                continue
            assert r.max_rel_error < 1e-7, f"{name}: {r.max_rel_error:.2e}"


def test_sampled_coordinates_for_bigger_models():
    cfg = vitlib.ViTConfig(
        image_size=8, patch_size=2, num_classes=4, dim=16, depth=1, heads=2, mlp_dim=16, channels=1, dim_head=8
    )
    params = random_params(cfg)
    x, y = random_batch(cfg, n=2)
    results = vitlib.check_gradients(params, x, y, cfg, max_coords=5, names=["blocks.0.W_q", "pos"])
    assert set(results) == {"blocks.0.W_q", "pos"}
    assert all(len(r.coords) == 5 and len(set(r.coords)) == 5 for r in results.values())
    assert all(r.max_rel_error < 1e-7 for r in results.values())


def test_gradcheck_catches_a_wrong_gradient(monkeypatch):
    """A check that cannot fail proves nothing: break one gradient and watch it flag that tensor only."""
    cfg = tiny("lucidrains")
    params = random_params(cfg)
    x, y = random_batch(cfg, n=2)
    real = vitlib.gradcheck.loss_and_grads

    def broken(*args, **kwargs):
        loss, grads = real(*args, **kwargs)
        grads["blocks.1.W_v"] = grads["blocks.1.W_v"] * 1.01
        return loss, grads

    monkeypatch.setattr(vitlib.gradcheck, "loss_and_grads", broken)
    results = vitlib.check_gradients(params, x, y, cfg)
    bad = {k for k, r in results.items() if r.max_rel_error > 1e-4}
    assert bad == {"blocks.1.W_v"}


@pytest.mark.parametrize("style", STYLES)
def test_directional_check(style):
    cfg = vitlib.ViTConfig(
        image_size=8, patch_size=2, num_classes=10, dim=32, depth=3, heads=4, mlp_dim=32, channels=1, style=style
    )
    params = random_params(cfg)
    x, y = random_batch(cfg, n=4)
    analytic, numeric, err = vitlib.directional_check(params, x, y, cfg)
    assert err < 1e-7 and abs(analytic) > 1e-6
    assert vitlib.directional_check(params, x, y, cfg, seed=1)[0] != analytic  # a different direction


def test_float32_gradcheck_is_looser_but_sane():
    cfg = tiny("lucidrains")
    params = random_params(cfg, dtype=np.float32)
    x, y = random_batch(cfg, n=2)
    _, _, err = vitlib.directional_check(params, x, y, cfg)
    assert err < 1e-2


def test_gradcheck_does_not_modify_params():
    cfg = tiny("vit-pytorch")
    params = random_params(cfg)
    before = {k: v.copy() for k, v in params.items()}
    x, y = random_batch(cfg, n=2)
    vitlib.check_gradients(params, x, y, cfg, names=["W_patch"])
    vitlib.directional_check(params, x, y, cfg)
    assert all(np.array_equal(before[k], params[k]) for k in params)


def test_rel_error_compares_shapes():
    with pytest.raises(ValueError, match="shapes"):
        vitlib.rel_error(np.zeros((3, 1)), np.zeros(3))
    assert vitlib.rel_error(np.ones(3), np.ones(3)) == 0.0
    assert vitlib.rel_error(np.array([1.0, 2.0]), np.array([1.0, 2.2])) == pytest.approx(0.2 / 2.2)


def test_cmp_prints_and_catches_broadcast_shapes(capsys):
    import torch

    a = np.arange(6.0).reshape(2, 3)
    assert vitlib.cmp("same", a, torch.tensor(a)) == 0.0
    assert "exact: True" in capsys.readouterr().out
    # a (1, 3) "gradient" broadcasts against (2, 3) in allclose, but it is the wrong answer
    assert vitlib.cmp("broadcast", a[:1], a) == float("inf")
    assert "SHAPE MISMATCH" in capsys.readouterr().out
    assert 0 < vitlib.cmp("off", a + 1e-3, a) < 1e-3
    assert "close: False" in capsys.readouterr().out
