"""Shared helpers for the vitlib tests: non-trivial random parameters and torch comparisons."""

import numpy as np
import pytest
import torch

import vitlib
from vit_oracles import (  # noqa: F401  (re-exported for the tests)
    lucidrains_from_cfg,
    randomize_norms,
    torch_loss_and_grads,
    vit_pytorch_from_cfg,
)

torch.set_num_threads(1)


def random_params(cfg, seed=0, dtype=np.float64):
    """init_params, then every LayerNorm gamma/beta and bias made random too (and cls, pos), so no term can
    hide behind a one or a zero: `vit_oracles.randomize_norms`."""
    return randomize_norms(vitlib.init_params(cfg, seed=seed, dtype=dtype), seed=seed, embeddings=True)


def random_batch(cfg, n=3, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed + 7)
    x = rng.standard_normal((n, cfg.channels, *cfg.image_size)).astype(dtype)
    y = rng.integers(0, cfg.num_classes, size=n)
    return x, y


def lucidrains_reference(cfg, params, x, y):
    """Autograd of the forum's module at vitlib `params` -> (loss, grads by the module's names)."""
    return torch_loss_and_grads(lucidrains_from_cfg(cfg), vitlib.interop.to_lucidrains(params, cfg), x, y)


def vit_pytorch_reference(cfg, params, x, y):
    """Autograd of the real vit-pytorch ViT at vitlib `params` -> (loss, grads by its names)."""
    return torch_loss_and_grads(vit_pytorch_from_cfg(cfg), vitlib.interop.to_vit_pytorch(params, cfg), x, y)


def exactly_zero(name):
    """Gradients that are zero in exact arithmetic: db_k (softmax is shift-invariant along a row, and b_k
    shifts row i of the scores by q_i . b_k). Both sides hold round-off there, so a relative error is noise."""
    return name.endswith((".b_k", ".k_proj.bias", ".attention.key.bias"))  # vitlib, transformers 5.x, 4.x names


def assert_grads_match(ours: dict, theirs: dict, tol=1e-10):
    """Same keys, same shapes (no broadcasting), relative error below tol for every tensor; a gradient that is
    zero in exact arithmetic must be round-off on both sides: below tol times the largest gradient entry."""
    assert ours.keys() == theirs.keys()
    scale = max(float(np.abs(v).max(initial=0.0)) for v in theirs.values())
    for k in ours:
        assert ours[k].shape == theirs[k].shape, f"{k}: shape {ours[k].shape} != {theirs[k].shape}"
        if exactly_zero(k):
            worst = max(float(np.abs(ours[k]).max(initial=0.0)), float(np.abs(theirs[k]).max(initial=0.0)))
            assert worst < tol * scale, f"{k}: {worst:.2e} is not round-off (largest gradient entry {scale:.2e})"
            continue
        err = vitlib.rel_error(ours[k], theirs[k])
        assert err < tol, f"{k}: relative error {err:.2e} >= {tol:.0e}"


@pytest.fixture
def small_cfg():
    return vitlib.ViTConfig(
        image_size=(6, 4), patch_size=2, num_classes=5, dim=8, depth=2, heads=2, mlp_dim=12, channels=2, dim_head=3
    )


@pytest.fixture(scope="session")
def fake_fashion_dir(tmp_path_factory):
    """Four uncompressed idx files of Fashion-MNIST's official sizes (60,000 + 10,000 images of 28 x 28), random
    pixels and labels: a stand-in for Debian's dataset-fashion-mnist, passed as VITLIB_FASHION_MNIST_DIR.
    Class k's images are brighter in row block k, so a model can learn something from them."""
    folder = tmp_path_factory.mktemp("fashion")
    rng = np.random.default_rng(0)
    for stem, n in (("train", 60000), ("t10k", 10000)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 128, (n, 28, 28)).astype(np.uint8)
        for k in range(10):
            x[y == k, 2 * k + 4 : 2 * k + 6] += 127
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            magic = 0x0800 | arr.ndim
            head = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
            (folder / f"{stem}-{kind}-ubyte").write_bytes(head + arr.tobytes())
    return folder
