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


# vitlib holds no autodiff at all. The torch oracles (the torch ViTs, each exercise's autograd answer, the grader's
# autograd trap) live outside it, in the top-level package vit_oracles. Only the grader (vitlib/grade/, which
# compares a reader's function with torch's answer) may import vit_oracles, lazily; no engine module may.
GRADER = VITLIB / "grade"


def engine_modules():
    return [p for p in VITLIB.rglob("*.py") if GRADER not in p.parents]


def test_engine_modules_are_everything_but_the_grader():
    assert VITLIB / "model.py" in engine_modules() and VITLIB / "fast.py" in engine_modules()
    assert GRADER / "engine.py" not in engine_modules()
    assert not (VITLIB / "oracles.py").exists(), "the torch oracles live in vit_oracles/, outside vitlib"


def test_no_autodiff_in_the_source():
    """Every module of vitlib, the grader included: no attribute access to an autodiff entry point, no import of one."""
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


def _imported_modules(source, package):
    """Every module `source` imports, as absolute dotted names (relative imports resolved from `package`)."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(x for x in (base, node.module or "") if x)
            names += [module] + [f"{module}.{a.name}" for a in node.names]
    return names


def _imports_an_oracle(source, package):
    return [
        n
        for n in _imported_modules(source, package)
        if n == "vit_oracles" or n.startswith(("vit_oracles.", "vitlib.grade"))
    ]


CLI = VITLIB / "__main__.py"  # `python -m vitlib grade FILE` dispatches to the grader: a command line, not the engine


def test_no_engine_module_imports_the_oracles():
    for path in engine_modules():
        if path == CLI:
            continue
        package = ".".join(("vitlib", *path.relative_to(VITLIB).parent.parts))
        found = _imports_an_oracle(path.read_text(), package)
        assert not found, f"{path.relative_to(VITLIB)} imports {found}: oracle code is for tests, chapters, tools"


def test_the_import_scan_can_fail():
    """Each way an engine module could import the oracles is caught; an ordinary import is not."""
    sources = [
        "import vit_oracles",
        "from vit_oracles import torch_vit",
        "from vit_oracles.exercises import ORACLES",
        "from vitlib.grade import check",
        "from .grade.reference import x",
        "from .. import grade",
    ]
    for source in sources:
        package = "vitlib.sub" if source.startswith("from ..") else "vitlib"
        assert _imports_an_oracle(source, package), source
    assert not _imports_an_oracle("from .linear import linear_forward\nimport numpy", "vitlib")


def test_importing_vitlib_loads_no_oracle():
    import subprocess

    code = "import sys, vitlib\nassert 'vit_oracles' not in sys.modules and 'vitlib.grade' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True)
