"""10 steps of vitlib's SGD, SGD with momentum and AdamW equal torch.optim's to 1e-10 (float64)."""

import numpy as np
import pytest
import torch
from conftest import random_batch, random_params
from reference import lucidrains_from_cfg

import vitlib
from vitlib.interop import from_lucidrains, to_lucidrains

STEPS = 10


def run_vitlib(cfg, params, x, y, kind, hp):
    if kind == "sgd":
        for _ in range(STEPS):
            params = vitlib.sgd_step(params, vitlib.loss_and_grads(params, x, y, cfg)[1], lr=hp["lr"])
        return params
    init, step = (
        (vitlib.momentum_init, vitlib.momentum_step) if kind == "momentum" else (vitlib.adamw_init, vitlib.adamw_step)
    )
    state = init(params)
    for _ in range(STEPS):
        params, state = step(params, vitlib.loss_and_grads(params, x, y, cfg)[1], state, **hp)
    assert state["step"] == STEPS
    return params


def run_torch(cfg, params, x, y, kind, hp):
    model = lucidrains_from_cfg(cfg).double()
    model.load_state_dict({k: torch.tensor(v) for k, v in to_lucidrains(params, cfg).items()})
    if kind == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=hp["lr"])
    elif kind == "momentum":
        opt = torch.optim.SGD(model.parameters(), **hp)
    else:
        opt = torch.optim.AdamW(
            model.parameters(), lr=hp["lr"], betas=hp["betas"], eps=hp["eps"], weight_decay=hp["weight_decay"]
        )
    xt, yt = torch.tensor(x), torch.tensor(y)
    for _ in range(STEPS):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return from_lucidrains(model.state_dict(), cfg)


@pytest.mark.parametrize(
    "kind, hp",
    [
        ("sgd", dict(lr=0.1)),
        ("momentum", dict(lr=0.05, momentum=0.9)),
        ("momentum", dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True)),
        ("momentum", dict(lr=0.05, momentum=0.8, dampening=0.1)),
        ("adamw", dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)),
        ("adamw", dict(lr=0.003, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.0)),
    ],
)
def test_ten_steps_equal_torch_optim(small_cfg, kind, hp):
    params = random_params(small_cfg, seed=5)
    x, y = random_batch(small_cfg, n=4, seed=5)
    ours = run_vitlib(small_cfg, params, x, y, kind, hp)
    theirs = run_torch(small_cfg, params, x, y, kind, hp)
    for k in params:
        assert ours[k].shape == theirs[k].shape
        moved = theirs[k] - params[k]
        assert np.abs(moved).max() > 0, k  # every tensor really trained
        # the total update, not the weights, is what must agree: weights would hide a small update error
        assert vitlib.rel_error(ours[k] - params[k], moved) < 1e-10, k


def test_adamw_no_decay_keys(small_cfg):
    params = random_params(small_cfg)
    zero = {k: np.zeros_like(v) for k, v in params.items()}
    state = vitlib.adamw_init(params)
    new, _ = vitlib.adamw_step(params, zero, state, lr=0.1, weight_decay=0.5, no_decay={"pos"})
    assert np.array_equal(new["pos"], params["pos"])
    assert np.allclose(new["W_head"], params["W_head"] * (1 - 0.05))


def test_optimizer_state_is_not_mutated(small_cfg):
    params = random_params(small_cfg)
    x, y = random_batch(small_cfg)
    _, grads = vitlib.loss_and_grads(params, x, y, small_cfg)
    state = vitlib.adamw_init(params)
    m_before = {k: v.copy() for k, v in state["m"].items()}
    _, new_state = vitlib.adamw_step(params, grads, state, lr=0.1)
    assert state["step"] == 0 and all(np.array_equal(state["m"][k], m_before[k]) for k in m_before)
    assert new_state["step"] == 1
    mstate = vitlib.momentum_init(params)
    _, m1 = vitlib.momentum_step(params, grads, mstate, lr=0.1)
    _, m2 = vitlib.momentum_step(params, grads, m1, lr=0.1)
    assert mstate == {"step": 0, "buf": {}}
    assert not np.shares_memory(m1["buf"]["pos"], m2["buf"]["pos"]) and not np.shares_memory(
        m1["buf"]["pos"], grads["pos"]
    )


def test_float32_stays_float32(small_cfg):
    params = random_params(small_cfg, dtype=np.float32)
    x, y = random_batch(small_cfg)
    loss, grads = vitlib.loss_and_grads(params, x, y, small_cfg)
    assert all(g.dtype == np.float32 for g in grads.values())
    for new in (
        vitlib.sgd_step(params, grads, lr=0.1),
        vitlib.momentum_step(params, grads, vitlib.momentum_init(params), lr=0.1)[0],
        vitlib.adamw_step(params, grads, vitlib.adamw_init(params), lr=0.1)[0],
    ):
        assert all(v.dtype == np.float32 for v in new.values())
