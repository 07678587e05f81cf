"""vitlib.bugs: every bug in the zoo is caught by the checks, hides exactly where the book says it
hides, and the injection always puts vitlib's own function back."""

import numpy as np
import pytest
from conftest import assert_grads_match, exactly_zero, random_batch, random_params

import vitlib
import vitlib.attention
import vitlib.model
from vit_oracles import reference_grads
from vitlib import bugs
from vitlib.arch import cases


def zoo_cfg(style, pool="cls", **changes):
    """Every linear square (F = D = M = K = H Dh), H > 1: the configuration in which every bug runs."""
    kw = dict(image_size=8, patch_size=4, num_classes=16, dim=16, depth=2, heads=2, mlp_dim=16, channels=1)
    return vitlib.ViTConfig(**{**kw, "dim_head": 8, "pool": pool, "style": style, **changes})


# every architecture of vitlib.arch.ARCHS x every pool it has; ZOO: the one the special cases below use
ZOOS = {f"{style}-{pool}": zoo_cfg(style, pool) for style, pool in cases()}
ZOO = ZOOS["lucidrains-cls"]
# finite differences cost 20x a torch comparison: each bug runs them on one architecture, the bugs taking the
# table's rows in turn (and again from the first bug if the table grows longer than the zoo), so every bug and
# every row is checked and the test time stays that of one row
_BUG_NAMES, _ZOO_NAMES = sorted(bugs.BUGS), list(ZOOS)
FD_CASES = [
    (_BUG_NAMES[i % len(_BUG_NAMES)], _ZOO_NAMES[i % len(_ZOO_NAMES)])
    for i in range(max(len(_BUG_NAMES), len(_ZOO_NAMES)))
]


def torch_grads(cfg, params, x, y):
    return reference_grads(cfg, params, x, y)[1]  # the architecture's own torch reference, vitlib's keys


def without_exact_zeros(errors):
    """db_k is zero in exact arithmetic (round-off on both sides): its relative error says nothing."""
    return {k: v for k, v in errors.items() if not exactly_zero(k)}


def bug_errors(name, cfg, n=3, seed=0):
    params = random_params(cfg, seed=seed)
    x, y = random_batch(cfg, n=n, seed=seed)
    with bugs.injected(name):
        _, grads = bugs.loss_and_grads(params, x, y, cfg)
    return without_exact_zeros(bugs.rel_errors(grads, torch_grads(cfg, params, x, y)))


@pytest.mark.parametrize("zoo", list(ZOOS))
def test_teaching_path_is_right_without_bugs(zoo):
    cfg = ZOOS[zoo]
    params = random_params(cfg)
    x, y = random_batch(cfg)
    _, grads = bugs.loss_and_grads(params, x, y, cfg)
    assert_grads_match(grads, torch_grads(cfg, params, x, y), tol=1e-10)


@pytest.mark.parametrize("zoo", list(ZOOS))
@pytest.mark.parametrize("name", sorted(bugs.BUGS))
def test_every_bug_is_caught_by_torch(name, zoo):
    cfg = ZOOS[zoo]
    errors = bug_errors(name, cfg)
    assert max(errors.values()) > 1e-3, f"{name} went unnoticed in {zoo}: {errors}"
    assert bugs.first_wrong(errors, cfg) is not None


@pytest.mark.parametrize("name, zoo", FD_CASES)
def test_every_bug_is_caught_by_finite_differences(name, zoo):
    cfg = ZOOS[zoo]
    params = random_params(cfg, seed=1)
    x, y = random_batch(cfg, seed=1)
    numeric = vitlib.check_gradients(params, x, y, cfg, max_coords=6)
    with bugs.injected(name):
        _, grads = bugs.loss_and_grads(params, x, y, cfg)
    assert max(without_exact_zeros(bugs.rel_errors(grads, numeric)).values()) > 1e-3


def test_finite_differences_visit_every_bug_and_every_architecture():
    assert {name for name, _ in FD_CASES} == set(bugs.BUGS) and {zoo for _, zoo in FD_CASES} == set(ZOOS)


@pytest.mark.parametrize("name", sorted(bugs.BUGS))
def test_injection_restores_even_on_error(name):
    module, attr = bugs._resolve(bugs.BUGS[name].target)
    original = getattr(module, attr)
    with pytest.raises(RuntimeError, match="boom"):
        with bugs.injected(name) as bug:
            assert getattr(module, attr) is bug.fn is not original
            raise RuntimeError("boom")
    assert getattr(module, attr) is original


def test_unknown_bug_is_named():
    with pytest.raises(KeyError, match="unknown bug"):
        with bugs.injected("no_such_bug"):
            pass


@pytest.mark.parametrize("zoo", list(ZOOS))
def test_vitlib_is_right_again_after_a_bug(zoo):
    cfg = ZOOS[zoo]
    params = random_params(cfg)
    x, y = random_batch(cfg)
    with bugs.injected("softmax_backward_no_subtraction"):
        bugs.loss_and_grads(params, x, y, cfg)
    _, grads = vitlib.loss_and_grads(params, x, y, cfg)
    assert_grads_match(grads, torch_grads(cfg, params, x, y), tol=1e-10)


def test_missing_transpose_is_a_shape_error_when_rectangular():
    cfg = vitlib.ViTConfig(image_size=8, patch_size=4, num_classes=5, dim=16, depth=1, heads=2, mlp_dim=24, channels=1)
    params = random_params(cfg)
    x, y = random_batch(cfg)
    with bugs.injected("linear_backward_missing_transpose"), pytest.raises(ValueError):
        bugs.loss_and_grads(params, x, y, cfg)


def test_broadcast_bug_hides_at_batch_one():
    assert max(bug_errors("tokens_backward_not_summed", ZOO, n=1).values()) < 1e-12
    assert max(bug_errors("tokens_backward_not_summed", ZOO, n=2).values()) > 1e-3


def test_heads_bug_hides_with_one_head():
    cfg = zoo_cfg("lucidrains", heads=1)
    assert max(bug_errors("attention_backward_heads_not_permuted", cfg).values()) < 1e-12


def test_first_wrong_tensor_localises_the_bug():
    errors = bug_errors("attention_backward_dK_missing_transpose", ZOO)
    assert bugs.first_wrong(errors, ZOO) == f"blocks.{ZOO.depth - 1}.W_k"
    for right in ("W_v", "W_o", "b_o", "W_1", "W_2"):
        assert errors[f"blocks.{ZOO.depth - 1}.{right}"] < 1e-12
    errors = bug_errors("tokens_backward_not_summed", ZOO)
    assert {k for k, v in errors.items() if v > 1e-6} == {"pos", "cls"}


def test_rel_errors_against_numpy_arrays_and_order():
    order = bugs.backward_order(ZOO)
    assert order[0] == "b_head" and order[-1] == "W_patch"
    assert sorted(order) == sorted(vitlib.param_shapes(ZOO))
    errors = bugs.rel_errors({"a": np.ones(3)}, {"a": np.ones(3)})
    assert errors == {"a": 0.0}
