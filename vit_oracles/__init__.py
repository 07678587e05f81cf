"""The torch oracles vitlib is checked against, outside vitlib (which holds no autodiff at all).

One importable home for chapters, tests, tools and benchmarks:

- `vit_oracles` (this package; the names of `vit_oracles.models`): the torch ViTs (the forum's lucidrains ViT,
  the real vit-pytorch, transformers' ViT, the exercise's step), `reference_grads`, the random-parameter recipe;
- `vit_oracles.exercises`: torch autograd's answer to each exercise of `vitlib.grade`;
- `vit_oracles.trap`: the grader's trap that refuses autograd while a reader's function runs.

Importing the package loads no torch: `vit_oracles.models` is imported on the first name asked of the package
(so `import vitlib.grade`, which uses the trap, stays torch-free until a check compares against torch).
"""

import importlib

SUBMODULES = ("models", "exercises", "trap")


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    models = importlib.import_module(f"{__name__}.models")
    try:
        return getattr(models, name)
    except AttributeError:
        raise AttributeError(f"module 'vit_oracles' has no attribute {name!r}") from None


def __dir__():
    models = importlib.import_module(f"{__name__}.models")
    return sorted(set(globals()) | {n for n in vars(models) if not n.startswith("_")})
