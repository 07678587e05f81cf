"""The coding exercise's model and step: vitlib against an autograd reference written from its text."""

import numpy as np
import pytest
import torch
from conftest import random_batch, random_params
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import seed_logits, seed_train_step
from test_vs_torch import SETTINGS, configs

import vitlib
from vitlib.seed import vit_classify, vit_train_step


def exercise_args(d=8, heads=2, blocks=2, C=3, P=2, side=4, K=5, n=3, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    T = (side // P) ** 2 + 1
    return dict(
        x=rng.standard_normal((n, C, side, side)).astype(dtype),
        y=rng.integers(0, K, size=n),
        w_proj=(rng.standard_normal((C * P * P, d)) / np.sqrt(C * P * P)).astype(dtype),
        cls_token=rng.standard_normal(d).astype(dtype),
        pos_embed=rng.standard_normal((T, d)).astype(dtype),
        blocks_weights=(rng.standard_normal((blocks, 6, d, d)) / np.sqrt(d)).astype(dtype),
        w_head=(rng.standard_normal((d, K)) / np.sqrt(d)).astype(dtype),
        num_heads=heads,
    )


def torch_args(args):
    return {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in args.items()}


def reference_step(args, lr, P):
    t = torch_args(args)
    return seed_train_step(
        t["x"],
        t["y"],
        t["w_proj"],
        t["cls_token"],
        t["pos_embed"],
        t["blocks_weights"],
        t["w_head"],
        args["num_heads"],
        lr,
        P,
    ).numpy()


@pytest.mark.parametrize("heads", [1, 2, 4])
@pytest.mark.parametrize("blocks", [1, 3])
def test_train_step_equals_autograd_reference(heads, blocks):
    args = exercise_args(heads=heads, blocks=blocks)
    ours = vit_train_step(**args, lr=0.1)
    ref = reference_step(args, 0.1, P=2)
    assert ours.shape == ref.shape == (12 * 8 + 8 + 5 * 8 + blocks * 6 * 64 + 8 * 5,)
    # the update is w - lr*dw: compare the step itself, not just the weights (which would hide small dw errors)
    old = np.concatenate([args[k].ravel() for k in ("w_proj", "cls_token", "pos_embed", "blocks_weights", "w_head")])
    assert vitlib.rel_error(ours - old, ref - old) < 1e-10
    assert np.abs(ours - ref).max() < 1e-12


def test_classify_equals_reference_and_patch_size_is_inferred():
    args = exercise_args(P=2, side=6, C=1)
    args.pop("y")
    ours = vit_classify(**args)
    ref = seed_logits(*torch_args(args).values(), patch_size=2).numpy()
    assert ours.shape == ref.shape == (3, 5)
    assert vitlib.rel_error(ours, ref) < 1e-13
    assert np.array_equal(ours, vit_classify(**args, patch_size=2))


def test_torch_in_torch_out_and_packed_shapes():
    args = exercise_args()
    t = torch_args(args)
    t["cls_token"] = t["cls_token"].reshape(1, 1, -1)
    t["pos_embed"] = t["pos_embed"].reshape(1, *args["pos_embed"].shape)
    out = vit_train_step(**t, lr=0.05)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    assert np.array_equal(out.numpy(), vit_train_step(**args, lr=0.05))
    logits = vit_classify(**{k: v for k, v in t.items() if k != "y"})
    assert isinstance(logits, torch.Tensor) and logits.shape == (3, 5)


def test_float32_in_float32_out():
    args = exercise_args(dtype=np.float32)
    out = vit_train_step(**args, lr=0.1)
    assert out.dtype == np.float32
    ref = reference_step(exercise_args(dtype=np.float64), 0.1, P=2)
    assert np.abs(out - ref).max() < 1e-4


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(pos_embed=np.zeros((4, 8))), ValueError, "pos_embed"),
        (dict(blocks_weights=np.zeros((2, 5, 8, 8))), ValueError, "blocks_weights"),
        (dict(num_heads=3), ValueError, "num_heads"),
        (dict(num_heads=2.0), TypeError, "num_heads"),
        (dict(lr=-0.1), ValueError, "lr"),
        (dict(x=np.zeros((0, 3, 4, 4))), ValueError, "N >= 1"),
        (dict(y=np.array([0.0, 1.0, 2.0])), TypeError, "integer"),
        (dict(w_proj=np.zeros((11, 8))), ValueError, "patch_size"),
        (dict(cls_token=np.zeros(7)), ValueError, "cls_token"),
        (dict(cls_token=np.zeros((8, 1))), ValueError, "cls_token"),
    ],
)
def test_bad_exercise_input(change, error, match):
    args = dict(exercise_args(), lr=0.1)
    args.update(change)
    with pytest.raises(error, match=match):
        vit_train_step(**args)


def test_exercise_inputs_not_modified():
    args = exercise_args()
    copies = {k: v.copy() for k, v in args.items() if isinstance(v, np.ndarray)}
    vit_train_step(**args, lr=0.1)
    vit_classify(**{k: v for k, v in args.items() if k != "y"})
    for k, v in copies.items():
        assert np.array_equal(args[k], v), k


def seed_reference_grads(cfg, params, x, y):
    """Autograd through the exercise's reference, with vitlib's params unpacked into its arguments."""
    d = cfg.dim
    blocks = np.stack(
        [
            np.stack([params[f"blocks.{b}.{n}"] for n in ("W_q", "W_k", "W_v", "W_o", "W_1", "W_2")])
            for b in range(cfg.depth)
        ]
    )
    leaves = {
        "W_patch": params["W_patch"],
        "cls": params["cls"].reshape(d),
        "pos": params["pos"],
        "blocks": blocks,
        "W_head": params["W_head"],
    }
    leaves = {k: torch.tensor(v, requires_grad=True) for k, v in leaves.items()}
    logits = seed_logits(torch.tensor(x), *leaves.values(), num_heads=cfg.heads, patch_size=cfg.patch_size[0])
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(y))
    loss.backward()
    g = {k: v.grad.numpy() for k, v in leaves.items()}
    out = {"W_patch": g["W_patch"], "cls": g["cls"].reshape(1, d), "pos": g["pos"], "W_head": g["W_head"]}
    for b in range(cfg.depth):
        for i, n in enumerate(("W_q", "W_k", "W_v", "W_o", "W_1", "W_2")):
            out[f"blocks.{b}.{n}"] = g["blocks"][b, i]
    return loss.item(), out


@SETTINGS
@given(data=st.data())
def test_seed_style_random_configs_match_autograd(data):
    cfg = data.draw(configs("seed").filter(lambda c: c.patch_size[0] == c.patch_size[1]))
    params = random_params(cfg, seed=data.draw(st.integers(0, 1000)))
    x, y = random_batch(cfg, n=data.draw(st.integers(1, 3)))
    ref_loss, ref = seed_reference_grads(cfg, params, x, y)
    for fast in (True, False):
        loss, grads = vitlib.loss_and_grads(params, x, y, cfg, fast=fast)
        assert abs(loss - ref_loss) < 1e-12 * max(1, abs(ref_loss))
        assert grads.keys() == ref.keys()
        for k in grads:
            assert grads[k].shape == ref[k].shape, k
            assert vitlib.rel_error(grads[k], ref[k]) < 1e-10, k


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 3), st.integers(1, 2))
def test_seed_style_non_square_patches(ph, pw):
    """vitlib's seed style takes (ph, pw) patches too; the (c, p1, p2) order extends directly."""
    cfg = vitlib.ViTConfig(
        image_size=(2 * ph, 3 * pw),
        patch_size=(ph, pw),
        num_classes=3,
        dim=6,
        depth=1,
        heads=2,
        mlp_dim=6,
        channels=2,
        style="seed",
    )
    params = random_params(cfg)
    x, _ = random_batch(cfg)
    patches = vitlib.embed.patchify(x, cfg.patch_size, "cpp")
    n = 1
    # patch (row 1, col 2) of image n holds x[n, :, ph:2ph, 2pw:3pw] flattened as (c, p1, p2)
    assert np.array_equal(patches[n, 1 * 3 + 2], x[n, :, ph : 2 * ph, 2 * pw : 3 * pw].reshape(-1))
    assert vitlib.logits(params, x, cfg).shape == (3, 3)
