"""Bad input raises a clear TypeError/ValueError naming what was expected and what came;
inputs are never modified."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import random_batch, random_params

import vitlib


@pytest.fixture
def setup(small_cfg):
    params = random_params(small_cfg)
    x, y = random_batch(small_cfg, n=3)
    return small_cfg, params, x, y


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(image_size=7, patch_size=2), ValueError, "divisible"),
        (dict(image_size=(8, 6), patch_size=(2, 4)), ValueError, "width 6 must be divisible by patch width 4"),
        (dict(pool="max"), ValueError, "pool"),
        (dict(style="timm"), ValueError, "style"),
        (dict(dim=0), ValueError, "dim must be >= 1"),
        (dict(depth=-1), ValueError, "depth"),
        (dict(heads=2.0), TypeError, "heads must be an integer"),
        (dict(dim=True), TypeError, "dim"),
        (dict(patch_size=(2, 2, 2)), ValueError, "patch_size"),
        (dict(num_classes="10"), TypeError, "num_classes"),
        (dict(style="seed", mlp_dim=32), ValueError, "mlp_dim == dim"),
        (dict(style="seed", dim_head=8), ValueError, "heads \\* dim_head == dim"),
        (dict(style="seed", pool="mean", mlp_dim=16), ValueError, "pool"),
    ],
)
def test_bad_config(kwargs, error, match):
    base = dict(image_size=8, patch_size=2, num_classes=10, dim=16, depth=2, heads=4, mlp_dim=16)
    with pytest.raises(error, match=match):
        vitlib.ViTConfig(**{**base, **kwargs})


def test_config_is_an_immutable_value():
    a = vitlib.ViTConfig(image_size=8, patch_size=2, num_classes=10, dim=16, depth=2, heads=4, mlp_dim=16)
    b = vitlib.ViTConfig(
        image_size=(8, 8), patch_size=(2, 2), num_classes=10, dim=16, depth=2, heads=4, mlp_dim=16, dim_head=64
    )
    assert a == b and hash(a) == hash(b)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.dim = 3
    import json

    d = json.loads(json.dumps(a.to_dict()))
    assert vitlib.ViTConfig.from_dict(d) == a
    with pytest.raises(ValueError, match="unknown ViTConfig fields"):
        vitlib.ViTConfig.from_dict({**d, "dropout": 0.1})
    assert vitlib.ViTConfig(**{**d, "style": "seed", "mlp_dim": 16, "dim_head": None}).dim_head == 4


def test_dim_head_defaults():
    kw = dict(image_size=8, patch_size=2, num_classes=10, dim=16, depth=2, heads=4, mlp_dim=16)
    assert vitlib.ViTConfig(**kw).dim_head == 64
    assert vitlib.ViTConfig(**kw, style="seed").dim_head == 4


@pytest.mark.parametrize(
    "make_x, error, match",
    [
        (lambda x: x[:, :1], ValueError, "x must have shape"),
        (lambda x: x[:, :, :4], ValueError, "x must have shape"),
        (lambda x: x[0], ValueError, "x must have shape"),
        (lambda x: x[:0], ValueError, "N = 0"),
        (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x), ValueError, "NaN or inf"),
        (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.inf, x), ValueError, "NaN or inf"),
        (lambda x: x.astype(str), TypeError, "real numeric"),
        (lambda x: x.astype(complex), TypeError, "real numeric"),
        (lambda x: x > 0, TypeError, "real numeric"),
    ],
)
def test_bad_images(setup, make_x, error, match):
    cfg, params, x, y = setup
    with pytest.raises(error, match=match):
        vitlib.loss_and_grads(params, make_x(x), y, cfg)


@pytest.mark.parametrize(
    "make_y, error, match",
    [
        (lambda y: y.astype(float), TypeError, "integer class indices"),
        (lambda y: np.array([3.0, 1.0, 0.0]), TypeError, "integer"),
        (lambda y: y > 0, TypeError, "integer"),
        (lambda y: np.array([0, 1, 5]), ValueError, r"\[0, 5\)"),
        (lambda y: np.array([0, -1, 2]), ValueError, r"\[0, 5\)"),
        (lambda y: y[:2], ValueError, "batch of 3"),
        (lambda y: y.reshape(3, 1), ValueError, "shape \\(3,\\)"),
        (lambda y: ["a", "b", "c"], TypeError, "integer"),
    ],
)
def test_bad_labels(setup, make_y, error, match):
    cfg, params, x, y = setup
    with pytest.raises(error, match=match):
        vitlib.loss_and_grads(params, x, make_y(y), cfg)


def test_bad_params(setup):
    cfg, params, x, y = setup
    missing = {k: v for k, v in params.items() if k != "blocks.1.W_k"}
    with pytest.raises(ValueError, match=r"missing \['blocks.1.W_k'\]"):
        vitlib.loss_and_grads(missing, x, y, cfg)
    with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
        vitlib.loss_and_grads({**params, "extra": np.zeros(3)}, x, y, cfg)
    with pytest.raises(ValueError, match=r"params\['W_head'\] must have shape \(8, 5\), got \(5, 8\)"):
        vitlib.loss_and_grads({**params, "W_head": params["W_head"].T.copy()}, x, y, cfg)
    with pytest.raises(ValueError, match="b_head"):  # would broadcast, but is not the documented shape
        vitlib.loss_and_grads({**params, "b_head": params["b_head"][None]}, x, y, cfg)
    with pytest.raises(TypeError, match="mix dtypes"):
        vitlib.loss_and_grads({**params, "pos": params["pos"].astype(np.float32)}, x, y, cfg)
    with pytest.raises(TypeError, match="float32 or float64"):
        vitlib.loss_and_grads({**params, "pos": params["pos"].astype(np.int64)}, x, y, cfg)
    with pytest.raises(TypeError, match="numpy array"):
        vitlib.loss_and_grads({**params, "pos": params["pos"].tolist()}, x, y, cfg)
    with pytest.raises(TypeError, match="ViTConfig"):
        vitlib.loss_and_grads(params, x, y, cfg.to_dict())
    with pytest.raises(TypeError, match="dict"):
        vitlib.loss_and_grads(list(params.values()), x, y, cfg)


def test_torch_inputs_accepted(setup):
    cfg, params, x, y = setup
    loss, grads = vitlib.loss_and_grads(params, torch.tensor(x), torch.tensor(y), cfg)
    assert loss == vitlib.loss_and_grads(params, x, y, cfg)[0]


def test_integer_images_are_cast(setup):
    cfg, params, x, y = setup
    xi = (x * 10).astype(np.int16)
    loss, _ = vitlib.loss_and_grads(params, xi, y, cfg)
    assert loss == vitlib.loss_and_grads(params, xi.astype(np.float64), y, cfg)[0]


def test_inputs_never_modified(setup):
    cfg, params, x, y = setup
    before = ({k: v.copy() for k, v in params.items()}, x.copy(), y.copy())
    for v in (*params.values(), x, y):
        v.setflags(write=False)  # any in-place write would raise
    loss, grads = vitlib.loss_and_grads(params, x, y, cfg)
    new = vitlib.sgd_step(params, grads, lr=0.1)
    m_params, m_state = vitlib.momentum_step(params, grads, vitlib.momentum_init(params), lr=0.1)
    a_params, a_state = vitlib.adamw_step(params, grads, vitlib.adamw_init(params), lr=0.1)
    assert all(np.array_equal(before[0][k], params[k]) for k in params)
    assert np.array_equal(before[1], x) and np.array_equal(before[2], y)
    for k in params:  # new arrays, not views of the old ones
        assert not np.shares_memory(new[k], params[k]) and not np.shares_memory(a_params[k], params[k])
    # the gradients returned are the caller's own: writing to them changes nothing in vitlib
    grads["W_head"][:] = 0
    assert vitlib.rel_error(vitlib.loss_and_grads(params, x, y, cfg)[1]["W_head"], grads["W_head"]) == 1.0


@pytest.mark.parametrize(
    "step",
    [
        lambda p, g: vitlib.sgd_step(p, g, lr=-1.0),
        lambda p, g: vitlib.sgd_step(p, g, lr=float("nan")),
        lambda p, g: vitlib.adamw_step(p, g, vitlib.adamw_init(p), lr=-1.0),
        lambda p, g: vitlib.momentum_step(p, g, vitlib.momentum_init(p), lr=0.1, momentum=-0.5),
    ],
)
def test_bad_hyper_parameters(setup, step):
    cfg, params, x, y = setup
    _, grads = vitlib.loss_and_grads(params, x, y, cfg)
    with pytest.raises(ValueError, match="must be a finite number >= 0"):
        step(params, grads)


def test_optimizer_rejects_mismatched_grads(setup):
    cfg, params, x, y = setup
    _, grads = vitlib.loss_and_grads(params, x, y, cfg)
    with pytest.raises(ValueError, match="missing"):
        vitlib.sgd_step(params, {k: v for k, v in grads.items() if k != "pos"}, lr=0.1)
    with pytest.raises(ValueError, match="shape"):
        vitlib.sgd_step(params, {**grads, "b_head": grads["b_head"][None]}, lr=0.1)
    with pytest.raises(TypeError, match="lr"):
        vitlib.sgd_step(params, grads, lr="0.1")


def test_init_params_is_deterministic_and_checks_its_arguments(small_cfg):
    a, b = vitlib.init_params(small_cfg, seed=3), vitlib.init_params(small_cfg, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["W_patch"], vitlib.init_params(small_cfg, seed=4)["W_patch"])
    assert {k: v.shape for k, v in a.items()} == vitlib.param_shapes(small_cfg)
    assert all(v.dtype == np.float32 for v in a.values())
    with pytest.raises(TypeError, match="float32 or float64"):
        vitlib.init_params(small_cfg, dtype=np.int32)
    with pytest.raises(TypeError, match="ViTConfig"):
        vitlib.init_params(small_cfg.to_dict())


@pytest.mark.parametrize(
    "smoothing, error, match",
    [(1.0, ValueError, r"smoothing must be a finite number in \[0.0, 1.0\), got 1.0"),
     (-0.1, ValueError, "smoothing must be .* got -0.1"), (float("nan"), ValueError, "smoothing must be .* got nan"),
     ("0.1", TypeError, "smoothing must be a real number, got str"), (True, TypeError, "smoothing must be .* bool")],
)  # fmt: skip
def test_bad_label_smoothing(setup, smoothing, error, match):
    cfg, params, x, y = setup
    for fast in (True, False):
        with pytest.raises(error, match=match):
            vitlib.loss_and_grads(params, x, y, cfg, fast=fast, smoothing=smoothing)
