"""The backward pass is written by hand: no autograd of any library runs inside vitlib."""

import ast
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_batch, random_params

import vitlib

VITLIB = Path(vitlib.__file__).parent


def test_torch_autograd_never_called(monkeypatch, small_cfg):
    def forbidden(*args, **kwargs):
        raise AssertionError("autograd was called inside vitlib")

    monkeypatch.setattr(torch.autograd, "backward", forbidden)
    monkeypatch.setattr(torch.autograd, "grad", forbidden)
    monkeypatch.setattr(torch.Tensor, "backward", forbidden)
    params = random_params(small_cfg)
    x, y = random_batch(small_cfg)
    with torch.autograd.set_grad_enabled(False):  # a tensor with grad history could not even be built
        _, grads = vitlib.loss_and_grads(params, torch.tensor(x), torch.tensor(y), small_cfg)
    assert all(isinstance(g, np.ndarray) for g in grads.values())
    with pytest.raises(AssertionError, match="autograd"):  # the trap itself works
        torch.zeros(1, requires_grad=True).sum().backward()


def test_vitlib_core_does_not_import_torch_or_jax(small_cfg):
    """Importing vitlib and taking a step must not need torch at all."""
    import subprocess

    code = (
        "import sys, numpy as np, vitlib\n"
        "cfg = vitlib.ViTConfig(image_size=4, patch_size=2, num_classes=3, dim=6, depth=1, heads=2, mlp_dim=6)\n"
        "p = vitlib.init_params(cfg)\n"
        "vitlib.loss_and_grads(p, np.zeros((2, 3, 4, 4)), np.array([0, 1]), cfg)\n"
        "assert 'torch' not in sys.modules and 'jax' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_autodiff_in_the_source():
    banned = {"backward", "grad", "autograd", "vjp", "jvp", "value_and_grad"}
    for path in VITLIB.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in banned:
                base = ast.unparse(node.value)
                assert not any(m in base for m in ("torch", "jax", "loss", "tensor")), (
                    f"{path.name}: {ast.unparse(node)}"
                )
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.startswith(("jax", "autograd", "torch.autograd")) for n in names), (
                    f"{path.name} imports {names}"
                )
