"""The grader's trap: while a reader's function runs, torch's and jax's differentiation entry points record the
call and raise, so a solution that asks autograd for its gradients fails with that reason. Oracle code: it lives
here, outside vitlib, and imports no torch (it patches torch only if the reader's code already imported it)."""

import contextlib
import sys


class HandWrittenOnly(RuntimeError):
    pass


@contextlib.contextmanager
def hand_written_only(calls):
    """Replace torch's and jax's differentiation entry points by a function that records the call
    and raises, for as long as the reader's function runs."""
    targets = []
    torch = sys.modules.get("torch")
    if torch is not None:
        ag = torch.autograd
        targets += [
            (ag, "grad", "torch.autograd.grad"),
            (ag, "backward", "torch.autograd.backward"),
            (ag, "_engine_run_backward", "torch.autograd.grad"),
            (torch.Tensor, "backward", "Tensor.backward()"),
        ]
        fn_mod = getattr(torch, "func", None)
        for attr in ("grad", "grad_and_value", "vjp", "jacrev", "jacfwd"):
            targets.append((fn_mod, attr, f"torch.func.{attr}"))
        agf = getattr(ag, "functional", None)
        for attr in ("jacobian", "vjp", "vjp", "hessian"):
            targets.append((agf, attr, f"torch.autograd.functional.{attr}"))
    jax = sys.modules.get("jax")
    if jax is not None:
        for attr in ("grad", "value_and_grad", "vjp", "jacrev", "jacfwd"):
            targets.append((jax, attr, f"jax.{attr}"))
    saved = []
    for obj, attr, label in targets:
        if obj is None or not hasattr(obj, attr):
            continue

        def refuse(*args, _label=label, **kwargs):
            calls.append(_label)
            raise HandWrittenOnly(f"{_label} is not allowed here: write the backward by hand")

        saved.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, refuse)
    try:
        yield
    finally:
        for obj, attr, orig in reversed(saved):
            setattr(obj, attr, orig)
