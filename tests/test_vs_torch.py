"""Every gradient of every style equals torch autograd in float64 to relative error < 1e-10."""

import numpy as np
import pytest
from conftest import assert_grads_match, random_batch, random_params
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vitlib
from vit_oracles import lucidrains_from_cfg, reference_grads, vit_pytorch_from_cfg
from vitlib.arch import ARCHS, STYLES, cases
from vitlib.interop import from_lucidrains, from_vit_pytorch, to_lucidrains, to_vit_pytorch


@st.composite
def configs(draw, style):
    """A random config of `style`, drawn within what its Arch flags allow."""
    arch = ARCHS[style]
    ph = draw(st.integers(1, 3))
    pw = ph if style == "seed" else draw(st.integers(1, 3))  # the exercise's reference takes square patches
    hp, wp = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    heads = draw(st.integers(1, 3))
    # D >= 3: with D = 2 LayerNorm's output is always +-1, so every gradient upstream of it is
    # exactly zero and a relative error would compare round-off with round-off.
    if arch.inner_is_dim:
        dim_head = draw(st.integers(1, 4))
        dim = heads * dim_head
        if dim < 3:
            dim_head, dim = 3, 3 * heads
    else:
        dim = draw(st.integers(3, 8))
        dim_head = draw(st.integers(1, 5))
    mlp_dim = dim if arch.mlp_is_dim else draw(st.integers(1, 10))
    pool = draw(st.sampled_from(arch.pools))
    channels = draw(st.integers(1, 3))
    if arch.patch_norms and channels * ph * pw < 3:
        channels = 3  # vit-pytorch normalises each patch: F = 1 or 2 makes that LayerNorm constant too
    return vitlib.ViTConfig(
        image_size=(hp * ph, wp * pw),
        patch_size=(ph, pw),
        num_classes=draw(st.integers(2, 6)),
        dim=dim,
        depth=draw(st.integers(1, 3)),
        heads=heads,
        mlp_dim=mlp_dim,
        pool=pool,
        channels=channels,
        dim_head=dim_head,
        style=style,
    )


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_against_torch(cfg, n, seed):
    """Both paths' loss and every gradient against the architecture's independent torch reference."""
    params = random_params(cfg, seed=seed)
    x, y = random_batch(cfg, n=n, seed=seed)
    ref_loss, ref_grads = reference_grads(cfg, params, x, y)
    for fast in (True, False):  # the fused default and the teaching path, each against autograd
        loss, grads = vitlib.loss_and_grads(params, x, y, cfg, fast=fast)
        assert abs(loss - ref_loss) <= 1e-12 * max(1.0, abs(ref_loss))
        assert_grads_match(grads, ref_grads)


@pytest.mark.parametrize("style", STYLES)
@SETTINGS
@given(data=st.data())
def test_random_configs_match_autograd(style, data):
    cfg = data.draw(configs(style))
    check_against_torch(cfg, n=data.draw(st.integers(1, 4)), seed=data.draw(st.integers(0, 10_000)))


@pytest.mark.parametrize("style,pool", cases())
@pytest.mark.parametrize(
    "sizes",
    [
        dict(dim=8, heads=2, dim_head=3, mlp_dim=12),  # heads*dim_head != dim, mlp_dim != dim
        dict(dim=6, heads=1, dim_head=6, mlp_dim=6),  # heads == 1 and dim_head == dim: no to_out
        dict(dim=6, heads=3, dim_head=2, mlp_dim=5),  # heads*dim_head == dim with to_out
    ],
    ids=["inner!=dim", "no-to_out", "inner==dim"],
)
@pytest.mark.parametrize("n", [1, 3])
def test_named_cases_match_autograd(style, pool, sizes, n):
    arch = ARCHS[style]
    if (arch.inner_is_dim and sizes["heads"] * sizes["dim_head"] != sizes["dim"]) or (
        arch.mlp_is_dim and sizes["mlp_dim"] != sizes["dim"]
    ):
        pytest.skip(f"style {style!r} does not have these widths")
    patch = (2, 2) if style == "seed" else (3, 2)  # the exercise's reference takes square patches
    cfg = vitlib.ViTConfig(
        image_size=(6, 4), patch_size=patch, num_classes=4, depth=2, pool=pool, channels=3, style=style, **sizes
    )
    check_against_torch(cfg, n=n, seed=n)


def test_no_to_out_means_no_w_o():
    for style in ("lucidrains", "vit-pytorch"):
        cfg = vitlib.ViTConfig(
            image_size=4, patch_size=2, num_classes=3, dim=6, depth=1, heads=1, mlp_dim=6, dim_head=6, style=style
        )
        assert "blocks.0.W_o" not in vitlib.param_shapes(cfg)
    seed_cfg = vitlib.ViTConfig(
        image_size=4, patch_size=2, num_classes=3, dim=6, depth=1, heads=1, mlp_dim=6, style="seed"
    )
    assert "blocks.0.W_o" in vitlib.param_shapes(seed_cfg)  # the exercise always packs w_o


def test_vit_pytorch_mean_pool_has_no_cls_token():
    cfg = vitlib.ViTConfig(
        image_size=4, patch_size=2, num_classes=3, dim=6, depth=1, heads=2, mlp_dim=6, pool="mean", style="vit-pytorch"
    )
    shapes = vitlib.param_shapes(cfg)
    assert shapes["cls"] == (0, 6) and shapes["pos"] == (4, 6)
    module = vit_pytorch_from_cfg(cfg)
    assert tuple(module.cls_token.shape) == (0, 6) and tuple(module.pos_embedding.shape) == (4, 6)


@pytest.mark.parametrize("style", ["lucidrains", "vit-pytorch"])
def test_interop_round_trip_is_exact(style, small_cfg):
    import dataclasses

    cfg = dataclasses.replace(small_cfg, style=style)
    params = random_params(cfg)
    to_torch, from_torch = (
        (to_lucidrains, from_lucidrains) if style == "lucidrains" else (to_vit_pytorch, from_vit_pytorch)
    )
    state = to_torch(params, cfg)
    back = from_torch(state, cfg)
    assert list(back) == list(params)
    for k in params:
        assert back[k].shape == params[k].shape and np.array_equal(back[k], params[k]), k
    # torch tensors work as well as arrays, and the torch module accepts the names and shapes
    import torch

    tensors = {k: torch.tensor(v) for k, v in state.items()}
    assert all(np.array_equal(from_torch(tensors, cfg)[k], params[k]) for k in params)
    module = lucidrains_from_cfg(cfg) if style == "lucidrains" else vit_pytorch_from_cfg(cfg)
    module_state = module.state_dict()
    assert set(module_state) == set(state)
    assert all(tuple(module_state[k].shape) == state[k].shape for k in state)
    round_trip = to_torch(from_torch(module_state, cfg), cfg)
    assert all(np.array_equal(round_trip[k], module_state[k].numpy()) for k in state)


def test_interop_rejects_wrong_state_dict(small_cfg):
    state = to_lucidrains(random_params(small_cfg), small_cfg)
    bad = dict(state)
    bad.pop("mlp_head.1.bias")
    with pytest.raises(ValueError, match="missing"):
        from_lucidrains(bad, small_cfg)
    bad = dict(state, **{"transformer.layers.0.0.fn.to_qkv.weight": np.zeros((5, 8))})
    with pytest.raises(ValueError, match="to_qkv"):
        from_lucidrains(bad, small_cfg)
    with pytest.raises(ValueError, match="style"):
        from_vit_pytorch(state, small_cfg)


@pytest.mark.parametrize("style,pool", cases())
def test_oracle_torch_vit_equals_vitlib(style, pool):
    """vit_oracles.torch_vit (the chapters' functional oracle) computes vitlib's logits and gradients."""
    import torch

    from vit_oracles import torch_vit

    cfg = vitlib.ViTConfig(image_size=(6, 4), patch_size=2, num_classes=5, dim=12, depth=2, heads=3,
                           mlp_dim=12 if ARCHS[style].mlp_is_dim else 7, channels=2, dim_head=4, pool=pool,
                           style=style)  # fmt: skip
    params = random_params(cfg)
    x, y = random_batch(cfg)
    leaves = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    loss = torch.nn.functional.cross_entropy(torch_vit(leaves, torch.tensor(x), cfg), torch.tensor(y))
    loss.backward()
    ours_loss, ours = vitlib.loss_and_grads(params, x, y, cfg, fast=False)
    assert abs(loss.item() - ours_loss) < 1e-12
    assert_grads_match(ours, {k: t.grad.numpy() for k, t in leaves.items()})


def test_randomize_norms_is_a_copy_and_moves_every_norm_and_bias():
    from vit_oracles import randomize_norms

    cfg = vitlib.ViTConfig(image_size=4, patch_size=2, num_classes=3, dim=6, depth=1, heads=2, mlp_dim=6)
    params = vitlib.init_params(cfg, dtype=np.float64)
    before = {k: v.copy() for k, v in params.items()}
    out = randomize_norms(params, seed=3)
    assert all(np.array_equal(params[k], before[k]) for k in params)  # input untouched
    for k, v in out.items():
        moved = not np.array_equal(v, params[k])
        leaf = k.split(".")[-1]
        assert moved == (leaf in ("gamma", "beta") or leaf.startswith("b_")), k
        assert v.dtype == params[k].dtype


@pytest.mark.parametrize(
    "flags",
    [dict(qkv_bias=True), dict(qkv_bias=True, norm_eps=1e-12, final_norm=True), dict(patch_layout="cpp", gelu="tanh")],
    ids=["qkv_bias", "qkv_bias+eps+final_norm", "cpp+tanh"],
)
def test_a_new_architecture_is_one_row_of_the_table(monkeypatch, flags):
    """A variant of lucidrains' ViT made by flags alone (no other code changed): both paths equal autograd through
    the functional oracle, which reads the same flags."""
    import dataclasses

    import torch

    from vit_oracles import torch_vit

    monkeypatch.setitem(ARCHS, "lucidrains", dataclasses.replace(ARCHS["lucidrains"], **flags))
    cfg = vitlib.ViTConfig(image_size=(6, 4), patch_size=2, num_classes=5, dim=10, depth=2, heads=2, mlp_dim=7,
                           channels=2, dim_head=3)  # fmt: skip
    params = random_params(cfg, seed=4)
    if flags.get("qkv_bias"):
        assert "blocks.1.b_k" in params and params["blocks.1.b_q"].shape == (6,)
    x, y = random_batch(cfg, n=3, seed=4)
    leaves = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    loss = torch.nn.functional.cross_entropy(torch_vit(leaves, torch.tensor(x), cfg), torch.tensor(y))
    loss.backward()
    ref = {k: t.grad.numpy() for k, t in leaves.items()}
    for fast in (False, True):
        ours_loss, ours = vitlib.loss_and_grads(params, x, y, cfg, fast=fast)
        assert abs(ours_loss - loss.item()) < 1e-12
        assert_grads_match(ours, ref)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("style,pool", cases()[::2])
def test_label_smoothing_matches_autograd(style, pool, fast):
    """The whole step under label smoothing 0.1 (the Fashion-MNIST recipe's) against torch autograd's
    cross_entropy(label_smoothing=0.1), float64, on both paths."""
    import torch

    from vit_oracles import torch_vit

    cfg = vitlib.ViTConfig(image_size=(6, 4), patch_size=2, num_classes=5, dim=12, depth=2, heads=3,
                           mlp_dim=12 if ARCHS[style].mlp_is_dim else 7, channels=2, dim_head=4, pool=pool,
                           style=style)  # fmt: skip
    params = random_params(cfg)
    x, y = random_batch(cfg, n=4)
    leaves = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    logits = torch_vit(leaves, torch.tensor(x), cfg)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(y), label_smoothing=0.1)
    loss.backward()
    ours_loss, ours = vitlib.loss_and_grads(params, x, y, cfg, fast=fast, smoothing=0.1)
    assert abs(loss.item() - ours_loss) < 1e-12
    assert_grads_match(ours, {k: t.grad.numpy() for k, t in leaves.items()})
    plain = torch.nn.functional.cross_entropy(logits, torch.tensor(y)).item()
    assert abs(plain - ours_loss) > 1e-3  # the smoothing is really applied
